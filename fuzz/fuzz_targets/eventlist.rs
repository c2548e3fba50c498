//! Any bytes as a webhook request body, through `webhook::eventlist::split`.
//!
//! Always: no panic; the same answer when the output vector is reused (it is cleared); on
//! `Ok`, every item range is non-empty, in bounds, after the previous one (increasing, not
//! overlapping), starts where a JSON value can start and neither starts nor ends with
//! whitespace; an error's byte position is within the body or at its end.
//!
//! When serde_json accepts the whole body as JSON (UTF-8, nesting under its limit of 128),
//! `split` must give exactly what a model of its documented rules gives on that document:
//! not an object → `NotAnObject`; otherwise the top-level members in order, keys compared as
//! written (a key spelt with an escape matches nothing), the last `kind`/`apiVersion` taken
//! as its raw string content (not decoded; a value that is not a string: its first 40 bytes
//! as written), the first `items` member an array or `null`, else `NoItems` at once, and a
//! second `items` member `TwoItems` at once; then the kind, version and items checks in
//! that order. The items must
//! be the same values, byte for byte (serde_json's raw spans). Only a body nested deeper than
//! `split`'s limit (96 levels below the envelope) may give `TooDeep` instead.
//!
//! The other direction is weaker on purpose: `split` checks structure only (bad escapes,
//! bad numbers, invalid UTF-8 inside a value are the extractor's business), so its `Ok` on a
//! body serde_json refuses is not a failure.
#![no_main]

use kube_audit_shipper::webhook::eventlist::{ListError, split};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// `split`'s nesting limit (values deeper than this many containers are refused).
const MAX_DEPTH: usize = 96;

/// A member name as the parser met it: as written (no escape), or decoded from escapes.
enum Key<'a> {
    Plain(&'a str),
    Escaped,
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Plain(s))
            }
            fn visit_str<E>(self, _: &str) -> Result<Key<'de>, E> {
                Ok(Key::Escaped)
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level members of an object, in order, duplicates kept.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What `split` must answer for a valid JSON document (see the module doc): the items'
/// texts, or the error.
fn model(text: &str) -> Result<Vec<&str>, ListError> {
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(ListError::NotAnObject);
    }
    let members: Members =
        serde_json::from_str(text).expect("an object that serde_json accepted as a value");
    let (mut kind, mut version, mut items, mut found) = (None, None, Vec::new(), false);
    for (key, value) in members.0 {
        let Key::Plain(key) = key else { continue };
        let raw = value.get();
        let content = || match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(inner) => inner.to_string(),
            None => String::from_utf8_lossy(&raw.as_bytes()[..raw.len().min(40)]).into_owned(),
        };
        match key {
            "kind" => kind = Some(content()),
            "apiVersion" => version = Some(content()),
            // Where the key is does not matter here (serde gives no offsets): see `same`.
            "items" if found => return Err(ListError::TwoItems { at: 0 }),
            "items" if raw.starts_with('[') => {
                let elements: Vec<&RawValue> =
                    serde_json::from_str(raw).expect("an array serde_json accepted");
                items.extend(elements.into_iter().map(RawValue::get));
                found = true;
            }
            "items" if raw == "null" => found = true,
            "items" => return Err(ListError::NoItems),
            _ => {}
        }
    }
    if kind.as_deref() != Some("EventList") {
        return Err(ListError::Kind(kind));
    }
    match version.as_deref() {
        Some("audit.k8s.io/v1" | "audit.k8s.io/v1beta1") => {}
        _ => return Err(ListError::ApiVersion(version)),
    }
    if !found {
        return Err(ListError::NoItems);
    }
    Ok(items)
}

/// The most containers around any value of a valid JSON document (the top-level value: 0).
fn depth(text: &[u8]) -> usize {
    let (mut level, mut max, mut i) = (0usize, 0usize, 0);
    while i < text.len() {
        match text[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
            b']' | b'}' => level -= 1,
            c => {
                max = max.max(level);
                match c {
                    b'{' | b'[' => level += 1,
                    b'"' => {
                        i += 1;
                        while text[i] != b'"' {
                            i += if text[i] == b'\\' { 2 } else { 1 };
                        }
                    }
                    _ => {}
                }
            }
        }
        i += 1;
    }
    max
}

fn check_ranges(body: &[u8], items: &[Range<usize>]) {
    let mut after = 0;
    for r in items {
        assert!(r.start < r.end, "empty item {r:?}");
        assert!(
            r.end <= body.len(),
            "item {r:?} past the body ({})",
            body.len()
        );
        assert!(
            r.start >= after,
            "item {r:?} overlaps or precedes the one before"
        );
        let first = body[r.start];
        assert!(
            matches!(first, b'"' | b'{' | b'[' | b'+' | b'-' | b'.')
                || first.is_ascii_alphanumeric(),
            "item {r:?} starts with {first:#04x}"
        );
        let last = body[r.end - 1];
        assert!(
            !matches!(last, b' ' | b'\t' | b'\n' | b'\r'),
            "item {r:?} ends with whitespace"
        );
        after = r.end;
    }
}

fuzz_target!(|body: &[u8]| {
    let mut items = Vec::new();
    let got = split(body, &mut items);
    match &got {
        Ok(()) => check_ranges(body, &items),
        Err(ListError::Syntax { at, what }) => {
            assert!(*at <= body.len(), "syntax error at {at} past the body");
            assert!(!what.is_empty());
        }
        // `at` is where the too-deep value starts, which may be the end of a cut body.
        Err(ListError::TooDeep { at }) => assert!(*at <= body.len(), "too deep at {at}"),
        Err(_) => {}
    }
    // The vector is cleared: reusing it (filled) gives the same answer.
    let mut again = vec![0..1; 3];
    assert_eq!(split(body, &mut again), got);
    if got.is_ok() {
        assert_eq!(again, items);
    }

    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return;
    }
    let want = model(text);
    let got_texts = got.map(|()| {
        items
            .iter()
            .map(|r| &text[r.clone()])
            .collect::<Vec<&str>>()
    });
    if depth(body) > MAX_DEPTH && matches!(got_texts, Err(ListError::TooDeep { .. })) {
        return;
    }
    // The model cannot place a second `items` key; `split`'s position of it is not compared.
    let got_texts = got_texts.map_err(|e| match e {
        ListError::TwoItems { .. } => ListError::TwoItems { at: 0 },
        e => e,
    });
    assert_eq!(
        got_texts, want,
        "split disagrees with serde_json on valid JSON"
    );
});
