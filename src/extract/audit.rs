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
        let Some(keep) = rule(rules, key, &mut cursor) else {
            continue;
        };
        let member = out.len();
        // `key` equals a rule's name, and those need no escaping.
        clean_member_key(out, written, key);
        let kept = match keep {
            Whole => w.value(nodes, v, out, depth + 1),
            Only(inner) if matches!(nodes[v], Node::Object { .. }) => {
                object(w, nodes, v, inner, out, bulky_budget, depth + 1)
            }
            Only(_) => w.value(nodes, v, out, depth + 1),
            Bulky => w.bulky_array(nodes, v, out, depth + 1, bulky_budget),
        };
        if kept && w.fits(out, depth + 1) {
            written += 1;
        } else {
            out.truncate(member);
        }
    }
    if written == 0 && depth > 0 {
        out.truncate(start);
        return false;
    }
    out.push(b'}');
    true
}
