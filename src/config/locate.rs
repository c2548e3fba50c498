//! Keys as YAML paths, and where the parser finds them in the text.

use super::error::{ConfigError, Problem};
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// One step of a YAML path from the document's root.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `logfiles[1].intakekey`.
pub(super) fn key_name(path: &[Step]) -> String {
    let mut name = String::new();
    for step in path {
        match step {
            Step::Key(k) if name.is_empty() => name.push_str(k),
            Step::Key(k) => {
                name.push('.');
                name.push_str(k);
            }
            Step::Index(i) => name.push_str(&format!("[{i}]")),
        }
    }
    name
}

/// The error for a check made after deserialisation (one that needs several values, a key
/// file or the environment), at the key (or list entry) `path` where the parser finds it.
pub(super) fn refuse(text: &str, path: &[Step], problem: Problem) -> ConfigError {
    ConfigError {
        key: key_name(path),
        problem,
        at: locate(text, path),
    }
}

// Positions of checks made after deserialisation. yaml_serde has no span type (no
// `Spanned<T>`), and a `Deserialize` impl cannot ask its deserializer where it is: only an
// error returned while a value is deserialized gets that value's position. So the checks of
// one value run inside its `Deserialize` (`checked!`, `KeyText`), and the checks that need
// several values, a file or the environment run afterwards; when one fails, `locate` reads
// the text again with a seed that walks to the key and fails *there*, on purpose, so that
// yaml_serde's error carries the key's line and column. This costs a second parse on the
// error path only, and the position is the parser's own (no text search: a comment, a
// value or an earlier entry holding the same words cannot mislead it).

/// The error message of `locate`'s deliberate failure.
const FOUND: &str = "\u{0}found by locate";

/// Line and column (from 1) of the key at the end of `path` (or of the list entry, when the
/// path ends with an index), as the YAML parser finds them; `None` if the text lacks it.
fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    locate_nth(text, path, 1)
}

/// `locate`, for the `nth` (from 1) of the keys that end `path` in their mapping.
pub(super) fn locate_nth(text: &str, path: &[Step], nth: usize) -> Option<(usize, usize)> {
    use serde::de::DeserializeSeed;
    let e = Locate { path, nth }
        .deserialize(yaml_serde::Deserializer::from_str(text))
        .err()?;
    let l = e.location().filter(|_| e.to_string().contains(FOUND))?;
    Some((l.line(), l.column()))
}

/// Walks `path`, skipping everything else, to the `nth` of its last keys.
#[derive(Clone, Copy)]
struct Locate<'a> {
    path: &'a [Step<'a>],
    nth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            Some(_) => d.deserialize_any(self),
            None => d.deserialize_any(Here),
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a list")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.path.split_first() else {
            return Ok(());
        };
        let mut seen = 0;
        loop {
            let seed = KeyIs {
                want,
                last: rest.is_empty() && seen + 1 == self.nth,
            };
            match map.next_key_seed(seed)? {
                None => return Ok(()),
                Some(true) if !rest.is_empty() => {
                    map.next_value_seed(Locate { path: rest, ..self })?;
                }
                Some(hit) => {
                    seen += usize::from(hit);
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.path.split_first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<de::IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate { path: rest, ..self })?;
        Ok(())
    }
}

/// A mapping key: is it the one wanted? If it is the last step, fails there.
#[derive(Clone, Copy)]
struct KeyIs<'a> {
    want: &'a str,
    last: bool,
}

impl<'de> de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.want, self.last) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }
}

/// The list entry wanted: fails on whatever it is. Every `visit_*` left to its default
/// refuses the value with "invalid type: ..., expected {expecting}", so `expecting` holds
/// the marker.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FOUND)
    }
}
