//! The values: the intake key, and the scalars read as text and checked inside their
//! `Deserialize` (so that an error carries the value's line and column).

use super::MAX_BODY_BYTES;
use super::regions::{region_names, region_url};
use crate::batch::IntakeFormat;
use crate::extract::Format;
use crate::filter::{self, EcsField, Operator};
use crate::tail::StartAt;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What makes a text unfit to be an intake key (and the words that say so, after "is" or
/// after "the key in X"). The text itself is never part of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum KeyFault {
    Empty,
    Placeholder,
    NotHeader,
}

/// Why the seed page's placeholder is not a key and what to do; the same words whether YAML
/// read it as a mapping (unquoted) or as a string (quoted).
const PLACEHOLDER: &str = "`{intake key}` is the placeholder of Sekoia's page; replace it with \
                           your intake key (quoted if it starts with a special character)";

impl fmt::Display for KeyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFault::Empty => f.write_str("is empty; write the intake key there"),
            KeyFault::Placeholder => write!(f, "is not a key: {PLACEHOLDER}"),
            KeyFault::NotHeader => f.write_str(
                "holds spaces or characters that cannot go in an HTTP header; copy the intake \
                 key again from Sekoia's intake page",
            ),
        }
    }
}

pub(super) fn key_fault(key: &str) -> Option<KeyFault> {
    if key.is_empty() {
        Some(KeyFault::Empty)
    } else if key.starts_with('{') && key.ends_with('}') {
        Some(KeyFault::Placeholder)
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Some(KeyFault::NotHeader)
    } else {
        None
    }
}

/// The inline intake key, checked when read (so the error has its line). The seed page's
/// placeholder `{intake key}` is a YAML mapping, or a string when quoted: both get its
/// explanation, instead of "invalid type: map" or "holds spaces".
pub(super) struct KeyText(pub(super) String);

/// The error for an `intakekey` YAML did not read as a string, without its value.
fn not_text<E: de::Error>(what: &str) -> Result<KeyText, E> {
    Err(E::custom(format!(
        "intakekey is {what}; quote the key: \"...\""
    )))
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the intake key as a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                match key_fault(v) {
                    Some(fault) => Err(E::custom(format!("intakekey {fault}"))),
                    None => Ok(KeyText(v.to_string())),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<KeyText, A::Error> {
                Err(de::Error::custom(format!(
                    "intakekey is a YAML mapping, not a key: {PLACEHOLDER}"
                )))
            }
            // Any other scalar: serde's own message would quote the value, a secret.
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeyText, E> {
                not_text("a number")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeyText, E> {
                not_text("a number")
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<KeyText, E> {
                not_text("a number")
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<KeyText, E> {
                not_text("a number")
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyText, E> {
                not_text("a number")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyText, E> {
                not_text("a boolean")
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<KeyText, E> {
                not_text("not text")
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Err(E::custom("intakekey is empty"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Defines a newtype read from a YAML scalar (as text) and checked by `$check`. The check runs
/// inside the deserializer's visitor, so its error carries the value's line and column.
macro_rules! checked {
    ($name:ident($ty:ty), $check:expr) => {
        pub(super) struct $name(pub(super) $ty);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let check: fn(&str) -> Result<$ty, String> = $check;
                d.deserialize_any(ScalarVisitor(move |s: &str| check(s).map($name)))
            }
        }
    };
}

/// Visits any scalar as text and hands it to a check.
struct ScalarVisitor<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for ScalarVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number or a boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a number, got {s:?}"))
}

checked!(Region(String), |r| region_url(r)
    .map(str::to_string)
    .ok_or_else(|| format!(
        "{r:?} is not a region: expected {} (or set intake_url)",
        region_names()
    )));
checked!(Url(String), |u| {
    if u.starts_with("https://") || u.starts_with("http://") {
        Ok(u.trim_end_matches('/').to_string())
    } else {
        Err(format!("{u:?}: expected an https:// URL"))
    }
});

/// The host of an `http://` or `https://` URL: after the scheme, up to the first `/`, `\`,
/// `?` or `#`, without user info (up to the last `@`) or port; an IPv6 address without its
/// brackets. A backslash ends it too, as it does for WHATWG parsers, so that a host cannot
/// hide behind one (`http://intake.example\@127.0.0.1` is `intake.example`).
pub(super) fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    }
}

/// A loopback host: `localhost`, 127.0.0.0/8 or ::1, written as such (no other spelling of
/// an address, no name that resolves there).
pub(super) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

checked!(Proxy(String), |u| {
    if u.starts_with("http://") || u.starts_with("https://") || u.starts_with("socks") {
        Ok(u.to_string())
    } else {
        Err(format!("{u:?}: expected http://HOST:PORT"))
    }
});
checked!(MaxEvents(u32), |s| {
    let n: u32 = number(s)?;
    if (1..=100_000).contains(&n) {
        Ok(n)
    } else {
        Err(format!("expected 1 to 100000, got {n}"))
    }
});
checked!(Secs(Duration), |s| {
    let secs: f64 = number(s)?;
    if secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "expected more than 0 and at most 86400 seconds, got {s}"
        ))
    }
});
checked!(Level(u32), |s| {
    let n: u32 = number(s)?;
    if (1..=9).contains(&n) {
        Ok(n)
    } else {
        Err(format!("expected 1 (fastest) to 9 (smallest), got {n}"))
    }
});
checked!(IntakeFormatName(IntakeFormat), |s| match s {
    "array" => Ok(IntakeFormat::Array),
    "plain_batch" => Ok(IntakeFormat::PlainBatch),
    _ => Err(format!("expected array or plain_batch, got {s:?}")),
});
// Seconds of event time one `/plain/batch` request may span: 0 (every batch one instant)
// to an hour (beyond that the header's single time says little of the events).
checked!(Spread(Duration), |s| {
    let secs: f64 = number(s)?;
    if (0.0..=3600.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("expected 0 to 3600 seconds, got {s}"))
    }
});
checked!(Output(Format), |s| s
    .parse::<Format>()
    .map_err(|e| e.to_string()));
checked!(Start(StartAt), |s| match s {
    "beginning" => Ok(StartAt::Beginning),
    "end" => Ok(StartAt::End),
    _ => Err(format!("expected beginning or end, got {s:?}")),
});
checked!(LineBytes(u64), |s| {
    let b = parse_bytes(s)?;
    if (4096..=256 * 1024 * 1024).contains(&b) {
        Ok(b)
    } else {
        Err(format!("expected 4 KiB to 256 MiB, got {b}"))
    }
});
checked!(MetricsAddress(Option<SocketAddr>), |s| {
    if s == "off" || s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("expected IP:PORT (e.g. 127.0.0.1:9880) or off, got {s:?}"))
});
checked!(Listen(SocketAddr), |s| s.parse().map_err(|_| format!(
    "expected IP:PORT to listen on (e.g. 127.0.0.1:9881), got {s:?}"
)));
checked!(Bytes(u64), parse_bytes);
// The batch size is checked here, not after: the error then carries the value's position.
checked!(BatchBytes(u64), |s| {
    let b = parse_bytes(s)?;
    if (1024..=MAX_BODY_BYTES).contains(&b) {
        Ok(b)
    } else {
        Err(format!(
            "{b} bytes: expected 1 KiB to 10 MiB (the intake's request limit)"
        ))
    }
});
checked!(FieldName(EcsField), |s| EcsField::parse(s).ok_or_else(
    || {
        let names: Vec<&str> = filter::FIELDS.iter().map(|(n, _)| *n).collect();
        format!(
            "field {s:?} is not an ECS field of this parser; known: {}",
            names.join(", ")
        )
    }
));
// The operator and its name (for messages).
checked!(OpName((Operator, String)), |s| Operator::parse(s)
    .map(|op| (op, s.to_string()))
    .ok_or_else(|| {
        let names: Vec<&str> = filter::OPERATORS.iter().map(|(n, _)| *n).collect();
        format!("operator {s:?} is unknown; known: {}", names.join(", "))
    }));
// A YAML string, number or boolean, as text (a filter's value).
checked!(Scalar(String), |s| Ok(s.to_string()));
checked!(Action(()), |s| match s {
    "1" => Ok(()),
    _ => Err(format!(
        "only 1 (ignore the matching events) is supported, got {s}"
    )),
});

// A byte count: an integer, or a string with a unit (`512KiB`, `256MiB`, `1GiB`, `10MB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a byte count such as 1048576 or \"256MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls_and_which_are_loopback() {
        for (url, host, loopback) in [
            ("http://127.0.0.1:8443", "127.0.0.1", true),
            ("http://127.9.8.7/relay", "127.9.8.7", true),
            ("http://localhost:9000/x?y=1", "localhost", true),
            ("http://LOCALHOST", "LOCALHOST", true),
            ("http://[::1]:8080/", "::1", true),
            ("http://user:pw@127.0.0.1/x", "127.0.0.1", true),
            ("http://intake.sekoia.io", "intake.sekoia.io", false),
            ("http://10.0.0.1:80", "10.0.0.1", false),
            ("http://127.0.0.1.nip.io", "127.0.0.1.nip.io", false),
            (
                "http://localhost.example.com",
                "localhost.example.com",
                false,
            ),
            ("http://127.0.0.1@intake.example", "intake.example", false),
            ("http://intake.example\\@127.0.0.1", "intake.example", false),
            ("http://[::ffff:127.0.0.1]", "::ffff:127.0.0.1", false),
            ("http://127.1", "127.1", false),
            ("http://", "", false),
        ] {
            assert_eq!(url_host(url), host, "{url}");
            assert_eq!(is_loopback(url_host(url)), loopback, "{url}");
        }
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("10 MB"), Ok(10_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
