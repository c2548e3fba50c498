//! The `audit` output form: the event pruned to what the Sekoia Kubernetes parser reads, plus
//! the security context an analyst reading the stored event needs.
//!
//! Keys keep their original order and values their original types, so the intake parses the
//! pruned event exactly as it would the full one (`ecs(audit(e)) == ecs(e)`, tested in
//! `tests/equivalence.rs`) while the bulky parts (`managedFields`, most of the request and
//! response bodies) never leave the node.
//!
//! [`KEEP`] is the single statement of what is kept. It must cover every path that
//! `fields.rs` locates for the `ecs` form; the equivalence test fails if it does not.

use super::json::{Limits, ValueWriter, clean_member_key, key_str, span};
use simd_json::Node;

/// What to keep of a value.
#[derive(Debug)]
pub(crate) enum Keep {
    /// The value as it is.
    Whole,
    /// An object reduced to these members (a value of another type is kept whole, so odd
    /// input is never silently lost). Omitted when none of the members is present.
    Only(&'static [(&'static str, Keep)]),
    /// A pod spec array (`containers`, `volumes`): kept whole, but the first thing given up,
    /// element by element, when the event has to be trimmed to the size limit.
    Bulky,
}

use Keep::{Bulky, Only, Whole};

/// The kept paths, in the order kube-apiserver writes them (see [`rule`]): DESIGN.md §4's
/// table, plus `kind`, `apiVersion`, `level`, `stage` and `stageTimestamp` for the analyst
/// who reads the stored event, plus `hostPID`/`hostIPC`, which the spool classifies as
/// critical, plus the small security context the parser does not map but an investigation
/// needs (DESIGN.md §4): `user`, `impersonatedUser`, `objectRef`, `responseStatus` and
/// `annotations` whole, and a binding's `subjects` and `roleRef`. The stored event is the
/// analyst's only copy; what is cut here is the request and response bodies, where the bytes
/// are.
pub(crate) static KEEP: &[(&str, Keep)] = &[
    ("kind", Whole),
    ("apiVersion", Whole),
    ("level", Whole),
    ("auditID", Whole),
    ("stage", Whole),
    ("requestURI", Whole),
    ("verb", Whole),
    // Who acted, whole: `extra` carries the credential id, the node or pod a token was bound
    // to, and the scopes. An investigation asks for exactly that.
    ("user", Whole),
    ("impersonatedUser", Whole),
    ("sourceIPs", Whole),
    ("userAgent", Whole),
    // What was acted on, whole (its `uid` and `resourceVersion` pin the exact object).
    ("objectRef", Whole),
    // The answer, whole: `reason` and `message` say why a request was denied or failed.
    ("responseStatus", Whole),
    (
        "requestObject",
        Only(&[
            (
                "spec",
                Only(&[
                    ("containers", Bulky),
                    ("volumes", Bulky),
                    ("hostNetwork", Whole),
                    ("hostPID", Whole),
                    ("hostIPC", Whole),
                ]),
            ),
            // A (Cluster)RoleBinding: who was granted the role, and which role (`kind`
            // tells a ClusterRole from a namespaced Role of the same name).
            ("subjects", Whole),
            ("roleRef", Whole),
        ]),
    ),
    (
        "responseObject",
        Only(&[("metadata", Only(&[("name", Whole)]))]),
    ),
    ("requestReceivedTimestamp", Whole),
    ("stageTimestamp", Whole),
    // Every annotation: besides the authorizer's decision and reason the parser reads, the
    // admission plugins' verdicts (`pod-security.kubernetes.io/enforce-policy`,
    // `.../audit-violations`) and the authenticator's credential id. A few hundred bytes.
    ("annotations", Whole),
];

/// The rule for `key`, searched from `cursor` (just past the previous match) round to it.
///
/// The rules are listed in the order kube-apiserver writes the keys (its Go struct order), so
/// for a real event the next key is almost always found at the first probe, where a search
/// from the start would cost about half the list per key.
#[inline]
fn rule<'k>(rules: &'k [(&'static str, Keep)], key: &str, cursor: &mut usize) -> Option<&'k Keep> {
    let n = rules.len();
    for probe in 0..n {
        let i = (*cursor + probe) % n;
        let (name, keep) = &rules[i];
        if name.len() == key.len() && *name == key {
            *cursor = i + 1;
            return Some(keep);
        }
    }
    None
}

/// Writes the pruned event whose root object is `nodes[0]`.
///
/// `bulky_budget` is how many bytes the [`Keep::Bulky`] arrays may take together, shared and
/// spent in document order (`usize::MAX` when not trimming).
pub(crate) fn write(
    nodes: &[Node<'_>],
    out: &mut Vec<u8>,
    limits: Limits,
    bulky_budget: &mut usize,
) {
    let w = ValueWriter {
        drop_empty: false,
        limits,
    };
    // The root is an object: `Extractor::parse` rejects anything else.
    object(&w, nodes, 0, KEEP, out, bulky_budget, 0);
}

/// Writes the object at `nodes[i]` reduced to `rules`. Returns `false` (nothing written)
/// when no member survived.
fn object(
    w: &ValueWriter,
    nodes: &[Node<'_>],
    i: usize,
    rules: &[(&'static str, Keep)],
    out: &mut Vec<u8>,
    bulky_budget: &mut usize,
    depth: usize,
) -> bool {
    let Node::Object { len, .. } = nodes[i] else {
        return false;
    };
    let start = out.len();
    out.push(b'{');
    let mut written = 0;
    let mut cursor = 0;
    let mut j = i + 1;
    for _ in 0..len {
        let key = key_str(nodes, j);
        let v = j + 1;
        j += 1 + span(nodes, v);
        if let Some(keep) = rule(rules, key, &mut cursor) {
            written += member(w, nodes, key, v, keep, out, bulky_budget, depth) as usize;
        }
    }
    if written == 0 && depth > 0 {
        out.truncate(start);
        return false;
    }
    out.push(b'}');
    true
}

/// Writes the member `key` (whose value is `nodes[v]`) of an object at `depth` as `keep`
/// says, preceded by a comma unless `out` ends with the object's `{`. Returns whether it
/// was kept (nothing is written otherwise).
#[allow(clippy::too_many_arguments)]
fn member(
    w: &ValueWriter,
    nodes: &[Node<'_>],
    key: &str,
    v: usize,
    keep: &Keep,
    out: &mut Vec<u8>,
    bulky_budget: &mut usize,
    depth: usize,
) -> bool {
    let mark = out.len();
    let first = out.last() == Some(&b'{');
    // `key` equals a rule's name, and those need no escaping.
    clean_member_key(out, usize::from(!first), key);
    let kept = match keep {
        Whole => w.value(nodes, v, out, depth + 1),
        Only(inner) if matches!(nodes[v], Node::Object { .. }) => {
            object(w, nodes, v, inner, out, bulky_budget, depth + 1)
        }
        Only(_) => w.value(nodes, v, out, depth + 1),
        Bulky => w.bulky_array(nodes, v, out, depth + 1, bulky_budget),
    };
    if kept && w.fits(out, depth + 1) {
        true
    } else {
        out.truncate(mark);
        false
    }
}

/// The line as it was before simd-json parsed it (in place), and where the parsed buffer
/// starts: a string on the tape points into that buffer at the offset its text has in the
/// line, so a key's offset in `bytes` is its address minus `base`.
#[derive(Clone, Copy)]
pub(crate) struct Original<'o> {
    pub bytes: &'o [u8],
    pub base: usize,
}

impl Original<'_> {
    /// Offset of the opening quote of the key `key` (a string of the parsed tape), checked
    /// against the copy. `exact` also checks the key's text (a kept key has no escape, so
    /// it reads the same in the line): the first member of a copied range must be exactly
    /// where its key says. `None` if anything does not match (the caller falls back).
    #[inline]
    fn key_quote(&self, key: &str, exact: bool) -> Option<usize> {
        let at = (key.as_ptr() as usize).checked_sub(self.base)?;
        let quote = at.checked_sub(1)?;
        if self.bytes.get(quote) != Some(&b'"') {
            return None;
        }
        if exact {
            let end = at.checked_add(key.len())?;
            if self.bytes.get(at..end)? != key.as_bytes() || self.bytes.get(end) != Some(&b'"') {
                return None;
            }
        }
        Some(quote)
    }

    /// Offset of the root object's closing `}` (the line may end in whitespace).
    fn root_end(&self) -> Option<usize> {
        let at = self.bytes.iter().rposition(|b| !b.is_ascii_whitespace())?;
        (self.bytes[at] == b'}').then_some(at)
    }

    /// Appends the members in `bytes[from..to]`: whole `"key":value` pairs separated by
    /// commas, followed by whitespace and (when `to` is the next key) the comma before it,
    /// which are dropped.
    fn copy_members(&self, out: &mut Vec<u8>, from: usize, to: usize) {
        let mut range = &self.bytes[from..to];
        while let [rest @ .., last] = range {
            if last.is_ascii_whitespace() || *last == b',' {
                range = rest;
            } else {
                break;
            }
        }
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        extend_unescaping_html(out, range);
    }
}

/// Appends `json` (whole members: every `\` in it is inside a string) with the escapes Go's
/// encoder uses for `&`, `<` and `>` (`\u0026`, `\u003c`, `\u003e`; kube-apiserver writes
/// every `&` of a `requestURI` so) written as the characters, as the tape writer writes them:
/// 6 bytes each, and 7 once the event is escaped into an `/array` entry, against 1. Other
/// escapes are copied as they are (the same JSON string).
fn extend_unescaping_html(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    while let Some(i) = memchr::memchr(b'\\', rest) {
        let html = match rest.get(i + 1..i + 6) {
            Some(b"u0026") => Some(b'&'),
            Some(b"u003c") => Some(b'<'),
            Some(b"u003e") => Some(b'>'),
            _ => None,
        };
        // An escape is `\` and one character (`\u` then four hex digits, none a `\`):
        // stepping over two bytes keeps the scan on escape starts.
        let (end, skip) = match html {
            Some(_) => (i, i + 6),
            None => ((i + 2).min(rest.len()), (i + 2).min(rest.len())),
        };
        out.extend_from_slice(&rest[..end]);
        out.extend(html);
        rest = &rest[skip..];
    }
    out.extend_from_slice(rest);
}

/// Writes the same pruned event as [`write`] without limits, copying each run of members
/// kept [whole](Keep::Whole) from the original line as one byte range instead of
/// re-serialising it from the tape; the members kept in part are written from the tape as
/// [`write`] does. The result is the same JSON value: ranges keep the line's own spelling of
/// numbers, of whitespace inside a value and of escapes other than Go's `\u0026`, `\u003c`
/// and `\u003e` (so the real samples come out byte for byte as from [`write`]; Go's
/// `\u2028` would not). Returns `false`, with `out` unchanged, when the key opening a run of
/// copied members is not spelled in the line as its rule names it (an escaped spelling such
/// as `"ki\u006ed"`), or a key is not found in the copy where the tape says (not seen for a
/// line simd-json parsed); the caller then uses [`write`].
pub(crate) fn write_ranges(nodes: &[Node<'_>], line: Original<'_>, out: &mut Vec<u8>) -> bool {
    let Node::Object { len, .. } = nodes[0] else {
        return false;
    };
    let Some(root_end) = line.root_end() else {
        return false;
    };
    let w = ValueWriter {
        drop_empty: false,
        limits: Limits::NONE,
    };
    let start = out.len();
    out.push(b'{');
    // Start of the run of whole members not yet copied.
    let mut run: Option<usize> = None;
    let (mut cursor, mut j, mut unlimited) = (0, 1, usize::MAX);
    for _ in 0..len {
        let key = key_str(nodes, j);
        let v = j + 1;
        j += 1 + span(nodes, v);
        let keep = rule(KEEP, key, &mut cursor);
        let Some(quote) = line.key_quote(key, keep.is_some() && run.is_none()) else {
            out.truncate(start);
            return false;
        };
        match keep {
            Some(Whole) => {
                run.get_or_insert(quote);
            }
            other => {
                if let Some(from) = run.take() {
                    line.copy_members(out, from, quote);
                }
                if let Some(keep) = other {
                    member(&w, nodes, key, v, keep, out, &mut unlimited, 0);
                }
            }
        }
    }
    if let Some(from) = run {
        line.copy_members(out, from, root_end);
    }
    out.push(b'}');
    true
}

#[cfg(test)]
mod tests {
    use super::extend_unescaping_html;

    fn unescaped(json: &str) -> String {
        let mut out = Vec::new();
        extend_unescaping_html(&mut out, json.as_bytes());
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    #[test]
    fn only_gos_html_escapes_become_characters() {
        assert_eq!(
            unescaped(r#""u":"a\u0026b\u003cc\u003e","v":1"#),
            r#""u":"a&b<c>","v":1"#
        );
        // An escaped backslash before `u0026` is text, not an escape.
        assert_eq!(unescaped(r#""u":"\\u0026\\\u0026""#), r#""u":"\\u0026\\&""#);
        // Other escapes are kept as written, including other `\u` and upper-case hex.
        assert_eq!(
            unescaped(r#""u":"\"\n\u00e9\u2028\u003C\/""#),
            r#""u":"\"\n\u00e9\u2028\u003C\/""#
        );
        // A cut escape at the very end (not valid JSON, never given) does not panic.
        assert_eq!(unescaped("\"a\\"), "\"a\\");
        assert_eq!(unescaped("\"a\\u00"), "\"a\\u00");
    }
}
