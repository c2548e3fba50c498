//! Compact JSON output written straight from a simd-json tape into a reusable byte buffer.
//!
//! Both output forms (`audit` and `ecs`) are built from the same primitives. Every write
//! appends to `out`, which the caller reuses across events, so once it has grown to the
//! largest event seen nothing here allocates.
//!
//! Two ideas carry the module:
//! - **Rollback.** A value that turns out to be unwanted (empty in the `ecs` form, or past a
//!   byte budget when an event is being trimmed) is removed by truncating `out` back to the
//!   mark taken before it was written. No look-ahead pass is needed.
//! - **Limits in one place.** [`Limits`] says how much a write may produce; the default
//!   writes values verbatim.

use simd_json::{Node, StaticNode};
use std::io::Write;

/// How large a value may be written. The default imposes nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Strings longer than this many bytes are cut at a character boundary.
    pub string_cap: usize,
    /// No array element or object member is kept if it would make `out` longer than this
    /// (minus one byte per still-open container for its closing bracket).
    pub hard_end: usize,
}

impl Limits {
    pub const NONE: Limits = Limits {
        string_cap: usize::MAX,
        hard_end: usize::MAX,
    };

    /// Whether these are [`Limits::NONE`].
    pub fn is_none(&self) -> bool {
        self.string_cap == usize::MAX && self.hard_end == usize::MAX
    }
}

/// Writes tape values. `drop_empty` implements the `ecs` rule that empty strings, nulls and
/// empty objects/arrays do not appear (recursively: an object whose members are all empty is
/// itself empty).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ValueWriter {
    pub drop_empty: bool,
    pub limits: Limits,
}

/// Number of tape nodes the value starting at `nodes[i]` occupies (itself included).
#[inline]
pub(crate) fn span(nodes: &[Node<'_>], i: usize) -> usize {
    match nodes[i] {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

impl ValueWriter {
    /// Appends the value at `nodes[i]`. Returns `false` (with `out` unchanged) when the value
    /// was dropped: empty under `drop_empty`, or over the byte limit.
    pub fn value(&self, nodes: &[Node<'_>], i: usize, out: &mut Vec<u8>, depth: usize) -> bool {
        let mark = out.len();
        let kept = match nodes[i] {
            Node::String(s) => {
                if self.drop_empty && s.is_empty() {
                    false
                } else {
                    string(out, s, self.limits.string_cap);
                    true
                }
            }
            Node::Static(v) => {
                if self.drop_empty && matches!(v, StaticNode::Null) {
                    false
                } else {
                    scalar(out, v);
                    true
                }
            }
            Node::Array { .. } => {
                let mut unlimited = usize::MAX;
                self.array(nodes, i, out, depth, &mut unlimited)
            }
            Node::Object { len, .. } => {
                out.push(b'{');
                let mut j = i + 1;
                let mut written = 0usize;
                for _ in 0..len {
                    let member = out.len();
                    if written > 0 {
                        out.push(b',');
                    }
                    let key = key_str(nodes, j);
                    string(out, key, self.limits.string_cap);
                    out.push(b':');
                    if self.value(nodes, j + 1, out, depth + 1) && self.fits(out, depth + 1) {
                        written += 1;
                    } else {
                        out.truncate(member);
                    }
                    j += 1 + span(nodes, j + 1);
                }
                out.push(b'}');
                written > 0 || !self.drop_empty
            }
        };
        if !kept || out.len() > self.limits.hard_end {
            out.truncate(mark);
            return false;
        }
        true
    }

    /// Whether `out` still leaves room for the closing brackets of the `open` containers
    /// that are open at this point.
    #[inline]
    pub fn fits(&self, out: &[u8], open: usize) -> bool {
        out.len().saturating_add(open) <= self.limits.hard_end
    }

    /// Appends the array at `nodes[i]` keeping elements, in order, only while they fit in
    /// `budget` bytes; what they take is subtracted from it. A value that is not an array is
    /// written by [`ValueWriter::value`]. Returns `false` (nothing written) when the value was
    /// dropped.
    pub fn bulky_array(
        &self,
        nodes: &[Node<'_>],
        i: usize,
        out: &mut Vec<u8>,
        depth: usize,
        budget: &mut usize,
    ) -> bool {
        if !matches!(nodes[i], Node::Array { .. }) {
            return self.value(nodes, i, out, depth);
        }
        let mark = out.len();
        let kept = self.array(nodes, i, out, depth, budget);
        if !kept {
            out.truncate(mark);
        }
        kept
    }

    /// Writes the array at `nodes[i]`, elements in document order while they fit in
    /// `budget` bytes and under the hard limit (once one does not, later ones would leave a
    /// hole, so the array ends there). Returns whether the array is kept; the caller removes
    /// it if not.
    fn array(
        &self,
        nodes: &[Node<'_>],
        i: usize,
        out: &mut Vec<u8>,
        depth: usize,
        budget: &mut usize,
    ) -> bool {
        let Node::Array { len, .. } = nodes[i] else {
            return false;
        };
        out.push(b'[');
        let mut j = i + 1;
        let mut written = 0usize;
        for _ in 0..len {
            let element = out.len();
            if written > 0 {
                out.push(b',');
            }
            let kept = self.value(nodes, j, out, depth + 1);
            let cost = out.len() - element;
            if kept && cost <= *budget && self.fits(out, depth + 1) {
                *budget -= cost;
                written += 1;
            } else {
                out.truncate(element);
                if kept {
                    break;
                }
            }
            j += span(nodes, j);
        }
        out.push(b']');
        written > 0 || !self.drop_empty
    }
}

/// The key at `nodes[j]`. simd-json only produces string keys; anything else would be a
/// tape invariant violation, written as an empty key rather than panicking.
#[inline]
pub(crate) fn key_str<'i>(nodes: &[Node<'i>], j: usize) -> &'i str {
    match nodes[j] {
        Node::String(k) => k,
        _ => "",
    }
}

/// Appends a JSON number, boolean or null.
pub(crate) fn scalar(out: &mut Vec<u8>, v: StaticNode) {
    // Writing into a Vec cannot fail; `write!` on integers does not allocate.
    let _ = match v {
        StaticNode::I64(n) => write!(out, "{n}"),
        StaticNode::U64(n) => write!(out, "{n}"),
        // Debug keeps a fraction or exponent ("1.0", "1e300") so a float stays a float and
        // huge values stay short; a JSON tape never holds NaN or infinities.
        StaticNode::F64(n) => write!(out, "{n:?}"),
        StaticNode::Bool(true) => out.write_all(b"true"),
        StaticNode::Bool(false) => out.write_all(b"false"),
        StaticNode::Null => out.write_all(b"null"),
    };
}

/// Bytes that cannot appear raw inside a JSON string: `"`, `\` and the C0 controls.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Index of the first byte of `bytes` that must be escaped.
///
/// Most strings in an audit event need no escaping, so this scans eight bytes per step
/// (SWAR, portable to every target): a byte is flagged when it is below 0x20 or equal to
/// `"` or `\`. The zero-byte trick can flag bytes *after* a true hit through its borrow, never
/// before one, so the lowest flag is exact.
#[inline]
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let control = x.wrapping_sub(LO * 0x20) & !x;
        let quote = (x ^ (LO * u64::from(b'"'))).wrapping_sub(LO) & !(x ^ (LO * u64::from(b'"')));
        let backslash =
            (x ^ (LO * u64::from(b'\\'))).wrapping_sub(LO) & !(x ^ (LO * u64::from(b'\\')));
        let hits = (control | quote | backslash) & HI;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&b| NEEDS_ESCAPE[b as usize])
        .map(|i| at + i)
}

/// Appends `s` as a JSON string, cut to at most `cap` bytes of content (at a character
/// boundary). Non-ASCII text is written as UTF-8, which JSON allows; only what must be
/// escaped is.
pub fn string(out: &mut Vec<u8>, s: &str, cap: usize) {
    let s = if s.len() > cap {
        &s[..s.floor_char_boundary(cap)]
    } else {
        s
    };
    string_of_bytes(out, s.as_bytes());
}

/// Appends `bytes` (UTF-8 text, such as a JSON document this crate wrote) as one JSON
/// string, escaping only what must be. This is how an event becomes the `json` member of
/// an `/array` entry: one scan of the finished output, into a buffer the caller reuses, so
/// nothing is parsed again and nothing is allocated once the buffer has grown. Since a
/// JSON document holds no raw control character outside `\t`, `\r` and `\n` (whitespace),
/// its escaped form is at most twice as long (each `"` and `\\` doubles).
pub fn string_of_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut rest = bytes;
    out.reserve(rest.len() + rest.len() / 8 + 2);
    out.push(b'"');
    while let Some(i) = first_to_escape(rest) {
        out.extend_from_slice(&rest[..i]);
        escape(out, rest[i]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

#[cold]
fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]),
    }
}

/// Appends `"key":` preceded by a comma unless it is the first member (`members == 0`).
/// Only for keys known to need no escaping: the names of this crate's own rules and fields.
#[inline]
pub(crate) fn clean_member_key(out: &mut Vec<u8>, members: usize, key: &str) {
    debug_assert!(first_to_escape(key.as_bytes()).is_none(), "{key:?}");
    if members > 0 {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s, usize::MAX);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_what_json_requires_and_nothing_else() {
        assert_eq!(escaped("plain"), r#""plain""#);
        assert_eq!(escaped("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(escaped("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(escaped("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(
            escaped("é ü 日本 \u{2028} </script> &"),
            "\"é ü 日本 \u{2028} </script> &\""
        );
    }

    #[test]
    fn the_word_scan_finds_exactly_the_first_byte_to_escape() {
        // Every position and every byte value, in words and in the tail, after clean
        // bytes and after high bytes (which must not be flagged).
        for len in 1..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    for filler in [b'a', 0xc3, 0x7f, 0xff] {
                        let mut v = vec![filler; len];
                        v[at] = b;
                        let want = v.iter().position(|&c| NEEDS_ESCAPE[c as usize]);
                        assert_eq!(first_to_escape(&v), want, "{v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_document_escaped_as_a_string_reads_back_the_same_and_at_most_doubles() {
        let doc = r#"{"a":"q\"uote\\ \u0001 \n","b":[1,2.5,null],"c":"é"}"#.as_bytes();
        let mut out = Vec::new();
        string_of_bytes(&mut out, doc);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.as_bytes(), doc);
        assert!(out.len() - 2 <= 2 * doc.len());
        // Raw tabs between tokens are whitespace JSON allows; they escape too.
        out.clear();
        string_of_bytes(&mut out, b"{\t\"k\":1}");
        assert_eq!(out, br#""{\t\"k\":1}""#);
    }

    #[test]
    fn string_cap_cuts_at_a_character_boundary() {
        let mut out = Vec::new();
        string(&mut out, "aé日", 4); // 'a' (1) + 'é' (2) + '日' (3): 4 bytes end inside '日'
        assert_eq!(out, "\"aé\"".as_bytes());
    }

    #[test]
    fn floats_stay_floats_and_short() {
        let mut out = Vec::new();
        scalar(&mut out, StaticNode::F64(1.0));
        out.push(b' ');
        scalar(&mut out, StaticNode::F64(1e300));
        out.push(b' ');
        scalar(&mut out, StaticNode::I64(-3));
        assert_eq!(out, b"1.0 1e300 -3");
    }
}
