//! The body the API server posts: an `audit.k8s.io/v1` (or `v1beta1`) `EventList`. This
//! finds each item's bytes, so that an item takes exactly the path of a log line (parsed in
//! place by the extractor, forwarded as an unparsed record when it is not an event).
//!
//! The envelope is checked structurally in one pass — strings, brackets, colons and commas
//! — and its `kind` and `apiVersion` compared; values are not decoded. An item's own
//! content is checked by the extractor when it is parsed, so a bad item spoils only itself
//! (DESIGN: "one bad item inside a good list is forwarded as an unparsed record"), while a
//! body whose structure is broken is refused whole (400) and the API server keeps it.
//! Keys are compared as written: a key spelt with escapes (`"k\u0069nd"`) is not
//! recognised, which the API server never writes.

use memchr::memchr2;
use std::fmt;
use std::ops::Range;

/// Deepest nesting accepted (the extractor's own limit is 64 below an item).
const MAX_DEPTH: usize = 96;

/// Why a body is not an `EventList`.
#[derive(Debug, PartialEq, Eq)]
pub enum ListError {
    /// Not JSON at byte `at`: `what` was expected.
    Syntax {
        at: usize,
        what: &'static str,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep {
        at: usize,
    },
    NotAnObject,
    /// `kind` is missing or not `EventList`.
    Kind(Option<String>),
    /// `apiVersion` is missing or not an audit one.
    ApiVersion(Option<String>),
    /// `items` is missing, or not an array (or null).
    NoItems,
    /// A second `items` key, at byte `at`.
    TwoItems {
        at: usize,
    },
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Syntax { at, what } => write!(f, "not JSON: expected {what} at byte {at}"),
            ListError::TooDeep { at } => {
                write!(f, "nested deeper than {MAX_DEPTH} levels at byte {at}")
            }
            ListError::NotAnObject => f.write_str("not a JSON object"),
            ListError::Kind(k) => write!(
                f,
                "kind is {}, expected \"EventList\" (the API server's audit webhook body)",
                shown(k)
            ),
            ListError::ApiVersion(v) => write!(
                f,
                "apiVersion is {}, expected \"audit.k8s.io/v1\" or \"audit.k8s.io/v1beta1\"",
                shown(v)
            ),
            ListError::NoItems => f.write_str("no `items` array"),
            ListError::TwoItems { at } => write!(f, "a second `items` key at byte {at}"),
        }
    }
}

fn shown(v: &Option<String>) -> String {
    v.as_ref()
        .map_or_else(|| "missing".to_string(), |s| format!("{s:?}"))
}

impl std::error::Error for ListError {}

/// Fills `items` with the byte range of each item of the `EventList` in `body`, in order.
pub fn split(body: &[u8], items: &mut Vec<Range<usize>>) -> Result<(), ListError> {
    items.clear();
    let s = Scanner { b: body };
    let mut i = s.ws(0);
    if s.b.get(i) != Some(&b'{') {
        return Err(ListError::NotAnObject);
    }
    let (mut kind, mut version, mut found_items) = (None, None, false);
    i = s.ws(i + 1);
    if s.b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key_at = i;
            let key_end = s.string(i)?;
            let key = &s.b[key_at + 1..key_end - 1];
            i = s.expect(s.ws(key_end), b':', "':'")?;
            i = s.ws(i);
            let value_at = i;
            match key {
                // JSON parsers keep the last of a repeated key; which list was meant is not
                // for this one to guess.
                b"items" if found_items => return Err(ListError::TwoItems { at: key_at }),
                b"items" => {
                    i = s.items(i, items)?;
                    found_items = true;
                }
                _ => i = s.value(i, 1)?,
            }
            // A string's text without its quotes; any other value as written (`5`, `{…}`).
            let text = || {
                let v = &s.b[value_at..i];
                let v = match v {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => &v[..v.len().min(40)],
                };
                String::from_utf8_lossy(v).into_owned()
            };
            match key {
                b"kind" => kind = Some(text()),
                b"apiVersion" => version = Some(text()),
                _ => {}
            }
            i = s.ws(i);
            match s.b.get(i) {
                Some(b',') => i = s.ws(i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(syntax(i, "',' or '}'")),
            }
        }
    }
    let i = s.ws(i);
    if i != s.b.len() {
        return Err(syntax(i, "the end of the body"));
    }
    if kind.as_deref() != Some("EventList") {
        return Err(ListError::Kind(kind));
    }
    match version.as_deref() {
        Some("audit.k8s.io/v1" | "audit.k8s.io/v1beta1") => {}
        _ => return Err(ListError::ApiVersion(version)),
    }
    if !found_items {
        return Err(ListError::NoItems);
    }
    Ok(())
}

fn syntax(at: usize, what: &'static str) -> ListError {
    ListError::Syntax { at, what }
}

struct Scanner<'a> {
    b: &'a [u8],
}

impl Scanner<'_> {
    fn ws(&self, mut i: usize) -> usize {
        while matches!(self.b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    fn expect(&self, i: usize, byte: u8, what: &'static str) -> Result<usize, ListError> {
        match self.b.get(i) {
            Some(&c) if c == byte => Ok(i + 1),
            _ => Err(syntax(i, what)),
        }
    }

    /// The end (after the closing quote) of the string starting at `i`.
    fn string(&self, i: usize) -> Result<usize, ListError> {
        let mut j = self.expect(i, b'"', "a string")?;
        loop {
            match memchr2(b'"', b'\\', &self.b[j.min(self.b.len())..]) {
                None => return Err(syntax(self.b.len(), "the end of a string")),
                Some(k) if self.b[j + k] == b'"' => return Ok(j + k + 1),
                // An escape: skip the escaped byte (`\"` does not end the string).
                Some(k) => j += k + 2,
            }
        }
    }

    /// The end of the value starting at `i`, `depth` levels down.
    fn value(&self, i: usize, depth: usize) -> Result<usize, ListError> {
        if depth > MAX_DEPTH {
            return Err(ListError::TooDeep { at: i });
        }
        match self.b.get(i) {
            Some(b'"') => self.string(i),
            Some(b'{') => self.members(i, depth),
            Some(b'[') => self.elements(i, depth, |_| {}),
            _ => {
                let len = self.b[i.min(self.b.len())..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
                    .count();
                if len == 0 {
                    return Err(syntax(i, "a value"));
                }
                Ok(i + len)
            }
        }
    }

    /// The end of the object starting at `i`.
    fn members(&self, i: usize, depth: usize) -> Result<usize, ListError> {
        let mut i = self.ws(i + 1);
        if self.b.get(i) == Some(&b'}') {
            return Ok(i + 1);
        }
        loop {
            i = self.ws(self.string(i)?);
            i = self.ws(self.expect(i, b':', "':'")?);
            i = self.ws(self.value(i, depth + 1)?);
            match self.b.get(i) {
                Some(b',') => i = self.ws(i + 1),
                Some(b'}') => return Ok(i + 1),
                _ => return Err(syntax(i, "',' or '}'")),
            }
        }
    }

    /// The end of the array starting at `i`; `each` gets every element's range.
    fn elements(
        &self,
        i: usize,
        depth: usize,
        mut each: impl FnMut(Range<usize>),
    ) -> Result<usize, ListError> {
        let mut i = self.ws(i + 1);
        if self.b.get(i) == Some(&b']') {
            return Ok(i + 1);
        }
        loop {
            let end = self.value(i, depth + 1)?;
            each(i..end);
            i = self.ws(end);
            match self.b.get(i) {
                Some(b',') => i = self.ws(i + 1),
                Some(b']') => return Ok(i + 1),
                _ => return Err(syntax(i, "',' or ']'")),
            }
        }
    }

    /// `items`: an array (its elements' ranges go to `items`) or `null` (none).
    fn items(&self, i: usize, items: &mut Vec<Range<usize>>) -> Result<usize, ListError> {
        match self.b.get(i) {
            Some(b'[') => self.elements(i, 1, |r| items.push(r)),
            Some(b'n') if self.b[i..].starts_with(b"null") => Ok(i + 4),
            _ => Err(ListError::NoItems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(body: &str) -> Result<Vec<&str>, ListError> {
        let mut items = Vec::new();
        split(body.as_bytes(), &mut items)?;
        Ok(items.into_iter().map(|r| &body[r]).collect())
    }

    #[test]
    fn items_are_found_whatever_the_envelope_holds_around_them() {
        let body = r#" {"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{"x":[1,{"y":"}"}]},
            "items":[{"a":"b\"]"} , {"c":[1,2,{}]},"not an object",{}] } "#;
        assert_eq!(
            ranges(body).unwrap(),
            [
                r#"{"a":"b\"]"}"#,
                r#"{"c":[1,2,{}]}"#,
                r#""not an object""#,
                "{}"
            ]
        );
        let beta = r#"{"items":null,"apiVersion":"audit.k8s.io/v1beta1","kind":"EventList"}"#;
        assert_eq!(ranges(beta).unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn a_body_that_is_not_an_event_list_is_refused_with_its_reason() {
        let ok = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#;
        assert!(ranges(ok).is_ok());
        let cases = [
            ("[]", ListError::NotAnObject),
            ("", ListError::NotAnObject),
            (
                r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","items":[]}"#,
                ListError::Kind(Some("Event".into())),
            ),
            (
                r#"{"apiVersion":"audit.k8s.io/v1","items":[]}"#,
                ListError::Kind(None),
            ),
            (
                r#"{"kind":"EventList","apiVersion":"v1","items":[]}"#,
                ListError::ApiVersion(Some("v1".into())),
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1"}"#,
                ListError::NoItems,
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":{}}"#,
                ListError::NoItems,
            ),
            (&ok[..ok.len() - 1], syntax(ok.len() - 1, "',' or '}'")),
            (
                r#"{"kind":"EventList","items":[{"a":1}{"b":2}]}"#,
                syntax(36, "',' or ']'"),
            ),
            (r#"{"kind" "EventList"}"#, syntax(8, "':'")),
            (r#"{"kind":"EventList}"#, syntax(19, "the end of a string")),
            (
                &format!("{ok} x"),
                syntax(ok.len() + 1, "the end of the body"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(ranges(body).err(), Some(want), "{body}");
        }
        let deep = format!(
            r#"{{"kind":"EventList","items":[{}{}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(ranges(&deep), Err(ListError::TooDeep { .. })));
    }
}
