//! The refused configuration: what is wrong, where, and its text for the operator; the
//! YAML deserializer's messages about unknown and duplicate keys, made readable.

use super::locate::{Step, key_name, locate_nth};
use super::raw::AGENT_KEYS;
use super::values::KeyFault;
use std::fmt;
use std::path::PathBuf;

/// A refused configuration: which key, what is wrong with it (and how to fix it), and where
/// the YAML parser found it. The operator's text is made only by `Display`, at the edge
/// (`Config::parse`, which adds the file's name).
#[derive(Debug)]
pub(super) struct ConfigError {
    /// The key as a YAML path (`logfiles[1].intakekey`); empty when `problem` is the YAML
    /// deserializer's message, which starts with the path itself.
    pub(super) key: String,
    pub(super) problem: Problem,
    /// Line and column, from 1; `None` if the file does not have the key (an error about a
    /// missing key) or a syntax error's message already says where.
    pub(super) at: Option<(usize, usize)>,
}

/// What is wrong. None holds an intake key.
#[derive(Debug)]
pub(super) enum Problem {
    /// The YAML deserializer's message: a syntax error, a wrong type, or a value refused by
    /// the check inside its `Deserialize` (with its path, without its position).
    Yaml(String),
    /// A key this mapping does not take, with the keys it does take.
    UnknownKey {
        name: String,
        expected: Vec<String>,
    },
    NoLogfiles,
    RegionAndUrl,
    /// `event_time_spread` with the `/array` format, where it would do nothing.
    SpreadWithoutPlainBatch,
    SpoolTooSmall {
        spool: u64,
        logfiles: usize,
        share: u64,
        need: u64,
    },
    NoClientKey,
    NoClientCert,
    /// `webhook:` has a certificate or a key without the other.
    WebhookHalfTls {
        missing: &'static str,
    },
    /// A plain-HTTP webhook on an address other hosts reach: audit events in clear text.
    WebhookPlainHttp {
        listen: std::net::SocketAddr,
    },
    /// `webhook.client_ca_file` without a server certificate.
    ClientCaWithoutTls,
    WebhookBody {
        bytes: u64,
    },
    NoIntakeKey {
        filepath: String,
    },
    SeveralKeys,
    KeyFile {
        file: PathBuf,
        error: String,
    },
    EnvUnset {
        var: String,
    },
    /// A key read from a file or the environment (`from` says which) that cannot be one.
    BadKey {
        from: String,
        fault: KeyFault,
    },
    /// A key given twice in one mapping.
    Duplicate,
    /// The same `filepath` as entry `first`.
    ListedTwice {
        filepath: String,
        first: usize,
    },
    NeedsValue(String),
    TakesNoValue(String),
    /// An `http://` intake URL to a host that is not a loopback address: the intake key
    /// would cross the network in clear text.
    PlainHttp {
        host: String,
    },
    /// A warning, not an error: a key of the Sekoia Endpoint Agent's configuration, accepted
    /// so that the agent's file loads, that does nothing here; `instead` says what does.
    AgentOnly {
        instead: &'static str,
    },
}

impl ConfigError {
    /// The YAML deserializer's error for `text`. Its position is kept apart, so that it is
    /// always printed: yaml_serde leaves out "line 1 column 1" (a misspelled first key).
    pub(super) fn from_yaml(e: yaml_serde::Error, text: &str) -> ConfigError {
        let mut msg = e.to_string();
        let mut at = e.location().map(|l| (l.line(), l.column()));
        if let Some((line, column)) = at {
            let suffix = format!(" at line {line} column {column}");
            if let Some(m) = msg.strip_suffix(&suffix) {
                msg.truncate(m.len());
            } else if msg.contains(" at line ") || msg.contains(" at position ") {
                at = None; // a syntax error: libyaml's message says where, and in what
            }
        }
        if let Some((key, name, expected)) = unknown_key(&msg) {
            let problem = Problem::UnknownKey { name, expected };
            return ConfigError { key, problem, at };
        }
        if let Some((path, name)) = duplicate_key(&msg) {
            // serde reports it at the mapping's start: point at the second one instead.
            let mut steps = path.map_or(Some(Vec::new()), steps).unwrap_or_default();
            steps.push(Step::Key(name));
            let problem = Problem::Duplicate;
            let key = key_name(&steps);
            let at = locate_nth(text, &steps, 2).or(at);
            return ConfigError { key, problem, at };
        }
        let problem = Problem::Yaml(msg);
        ConfigError {
            key: String::new(),
            problem,
            at,
        }
    }
}

/// serde's message about the key `x` (`what` is "unknown field `" or "duplicate field `")
/// after yaml_serde's path if any: the path (`None`: the top level), `x`, and the rest.
/// Only a whole message: a path of known keys and indices, then serde's words (a value
/// quoted by another message could hold the same words).
fn about_key<'m>(msg: &'m str, what: &str) -> Option<(Option<&'m str>, &'m str, &'m str)> {
    let (prefix, rest) = msg.split_once(what)?;
    let (name, rest) = rest.split_once('`')?;
    let path = match prefix.strip_suffix(": ") {
        Some(path) if !path.is_empty() && !path.contains(' ') => Some(path),
        _ if prefix.is_empty() => None,
        _ => return None,
    };
    Some((path, name, rest))
}

/// serde's "unknown field `x`, expected one of `a`, `b`", as the key's path, its name and
/// the expected keys. Other messages: `None`, and they are shown as they are.
fn unknown_key(msg: &str) -> Option<(String, String, Vec<String>)> {
    let (path, name, rest) = about_key(msg, "unknown field `")?;
    if !(rest.starts_with(", expected ") || rest == ", there are no fields") {
        return None;
    }
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    let key = match path {
        Some(path) => format!("{path}.{name}"),
        None => name.to_string(),
    };
    Some((key, name.to_string(), expected))
}

/// serde's "duplicate field `x`": the path of its mapping and `x`.
fn duplicate_key(msg: &str) -> Option<(Option<&str>, &str)> {
    match about_key(msg, "duplicate field `")? {
        (path, name, "") => Some((path, name)),
        _ => None,
    }
}

/// yaml_serde's path (`logfiles[1].OptimizationRules[0]`) as steps; `None` if a part is not
/// a key or an index (yaml_serde writes `?` for a key it cannot name).
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        match pieces.next() {
            Some(name) if !name.is_empty() && name != "?" => steps.push(Step::Key(name)),
            _ => return None,
        }
        for index in pieces {
            steps.push(Step::Index(index.strip_suffix(']')?.parse().ok()?));
        }
    }
    Some(steps)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.problem)?;
        if let Some((line, column)) = self.at {
            write!(f, " at line {line} column {column}")?;
        }
        Ok(())
    }
}

/// "unknown key", the closest known key if one is close, and the known keys (without the
/// Sekoia agent's, which are accepted but do nothing here).
fn unknown_key_text(f: &mut fmt::Formatter<'_>, name: &str, expected: &[String]) -> fmt::Result {
    f.write_str("unknown key")?;
    let close = expected
        .iter()
        .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d);
    if let Some((_, k)) = close {
        write!(f, ", did you mean `{k}`?")?;
    }
    if expected.is_empty() {
        return f.write_str("; this mapping takes no keys");
    }
    let list: Vec<String> = expected
        .iter()
        .filter(|k| !AGENT_KEYS.iter().any(|(agent, _)| agent == k))
        .map(|k| format!("`{k}`"))
        .collect();
    write!(f, " (the keys here are {})", list.join(", "))
}

/// Levenshtein distance, for suggesting a misspelled key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Yaml(msg) => f.write_str(msg),
            Problem::UnknownKey { name, expected } => unknown_key_text(f, name, expected),
            Problem::NoLogfiles => f.write_str(
                "at least one entry is needed (`- filepath: ...` with `intakekey: ...`), unless a \
                 `webhook:` section is the input",
            ),
            Problem::RegionAndUrl => f.write_str("give either `intake_url` or `region`, not both"),
            Problem::SpreadWithoutPlainBatch => f.write_str(
                "`event_time_spread` only applies with `intake_format: plain_batch` (with the \
                 default `array` every event carries its own time); remove it or set the format",
            ),
            Problem::SpoolTooSmall {
                spool,
                logfiles,
                share,
                need,
            } => write!(
                f,
                "a spool of {spool} bytes for {logfiles} log file(s) leaves {share} each; each \
                 needs at least 4 × batch_max_bytes = {need}: raise spool_max_bytes or lower \
                 batch_max_bytes"
            ),
            Problem::NoClientKey => f.write_str("needs `client_key` too"),
            Problem::NoClientCert => f.write_str("needs `client_cert` too"),
            Problem::WebhookHalfTls { missing } => write!(
                f,
                "needs `{missing}` too: TLS takes a certificate and its key (or give neither \
                 for plain HTTP on a loopback address)"
            ),
            Problem::WebhookPlainHttp { listen } => write!(
                f,
                "{listen} is not a loopback address: without TLS the audit events would cross \
                 the network in clear text; add `cert_file` and `key_file` (and \
                 `client_ca_file` for the API server's certificate), or listen on 127.0.0.1"
            ),
            Problem::ClientCaWithoutTls => f.write_str(
                "client certificates need TLS: add `cert_file` and `key_file`, or remove \
                 `client_ca_file`",
            ),
            Problem::WebhookBody { bytes } => write!(
                f,
                "{bytes} bytes: expected 1 KiB to 1 GiB (an EventList of \
                 --audit-webhook-batch-max-size events; the default is 64 MiB)"
            ),
            Problem::NoIntakeKey { filepath } => write!(
                f,
                "{filepath}: no intake key; add `intakekey: <key>` (or `intakekey_file: PATH`, \
                 or `intakekey_env: VARIABLE`)"
            ),
            Problem::SeveralKeys => {
                f.write_str("give one of intakekey, intakekey_file, intakekey_env, not several")
            }
            Problem::KeyFile { file, error } => {
                write!(f, "cannot read {}: {error}", file.display())
            }
            Problem::EnvUnset { var } => {
                write!(f, "the environment variable {var} is not set")
            }
            Problem::BadKey { from, fault } => write!(f, "the key in {from} {fault}"),
            Problem::Duplicate => f.write_str("given twice; keep one"),
            Problem::ListedTwice { filepath, first } => write!(
                f,
                "{filepath:?} is listed twice (also logfiles[{first}]); give each file once"
            ),
            Problem::NeedsValue(op) => write!(f, "operator {op:?} needs a `value`"),
            Problem::TakesNoValue(op) => {
                write!(f, "operator {op:?} takes no `value`; remove it")
            }
            Problem::PlainHttp { host } => write!(
                f,
                "plain http:// to {host:?} would send the intake key in clear text; http:// is \
                 accepted only for a loopback address (127.0.0.0/8, ::1, localhost: tests, a \
                 local relay): use https://"
            ),
            Problem::AgentOnly { instead } => {
                f.write_str("a key of the Sekoia Endpoint Agent; it has no effect here")?;
                if !instead.is_empty() {
                    write!(f, " ({instead})")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serdes_whole_unknown_field_message_is_rewritten() {
        assert_eq!(
            unknown_key("logfiles[0]: unknown field `x`, expected `filepath`"),
            Some((
                "logfiles[0].x".to_string(),
                "x".to_string(),
                vec!["filepath".to_string()]
            ))
        );
        assert_eq!(
            duplicate_key("logfiles[1]: duplicate field `intakekey`"),
            Some((Some("logfiles[1]"), "intakekey"))
        );
        assert_eq!(duplicate_key("duplicate field `region`, or not"), None);
        assert!(matches!(
            steps("logfiles[1].OptimizationRules[0]").as_deref(),
            Some([
                Step::Key("logfiles"),
                Step::Index(1),
                Step::Key("OptimizationRules"),
                Step::Index(0)
            ])
        ));
        assert!(steps("logfiles[1].?").is_none());
        // A value quoted in another message.
        assert_eq!(
            unknown_key("start_at: expected beginning or end, got \"unknown field `x`, y\""),
            None
        );
    }
}
