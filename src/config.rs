//! Configuration: the YAML file given to `run` and `check` (DESIGN.md §8).
//!
//! The Sekoia agent's snippet works unchanged — `logfiles:` entries with `filepath` and
//! `intakekey` — and every other key is optional with a safe default. Keys are flat, in the
//! agent's style (`HTTPProxyURL`, `OptimizationRules` keep its spelling).
//!
//! Errors name the key, what is wrong and how to fix it, and the line and column where the
//! YAML parser found the key: unknown keys and ill-typed values are refused by the YAML
//! deserializer (which reports the position), every value with a range is checked inside
//! its own `Deserialize`, so its error carries the position too, and a check that needs
//! several values, a key file or the environment asks the parser where the key is
//! (`locate`). The intake key is a secret: no error or `Debug` output contains it.

use crate::batch::BatchLimits;
use crate::extract::Format;
use crate::filter::{self, EcsField, Filter, Operator, Rule};
use crate::intake::{IntakeConfig, region_url};
use crate::tail::StartAt;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The intake refuses request bodies of 10 MiB or more (DESIGN.md §5).
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024 - 1;

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub logfiles: Vec<LogFile>,
    /// Base URL of the intake.
    pub intake_url: String,
    pub state_dir: PathBuf,
    /// Spool bytes for all log files together (each gets an equal share).
    pub spool_max_bytes: u64,
    pub batch: BatchLimits,
    pub format: Format,
    pub start_at: StartAt,
    pub max_line_bytes: usize,
    pub request_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub proxy: Option<String>,
    /// `None`: metrics are off.
    pub metrics_address: Option<SocketAddr>,
    pub unhealthy_after: Duration,
    /// Problems that do not stop the service (a world-readable key), for the caller to log.
    pub warnings: Vec<String>,
}

/// One `logfiles:` entry.
#[derive(Clone)]
pub struct LogFile {
    pub filepath: String,
    pub key: String,
    /// Where the key came from (for messages; never the key itself).
    pub key_source: String,
    /// The top-level rules, then this entry's own.
    pub rules: Vec<Rule>,
}

impl fmt::Debug for LogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogFile")
            .field("filepath", &self.filepath)
            .field("key", &"<redacted>")
            .field("key_source", &self.key_source)
            .field("rules", &self.rules)
            .finish()
    }
}

impl Config {
    /// Reads and checks `path`. The error text is ready for the operator: file, line, key,
    /// what is wrong and how to fix it.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        let mut cfg = Config::parse(&text, path)?;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o044 != 0 && cfg.logfiles.iter().any(|l| l.key_source == "intakekey") {
            cfg.warnings.push(format!(
                "{} holds an intake key and is readable by other users (mode {:o}); \
                 run `chmod 600 {}`",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            ));
        }
        for l in &cfg.logfiles {
            if let Some(file) = l.key_source.strip_prefix("intakekey_file ")
                && let Ok(m) = std::fs::metadata(file)
                && m.mode() & 0o044 != 0
            {
                cfg.warnings.push(format!(
                    "intake key file {file} is readable by other users (mode {:o}); \
                     run `chmod 600 {file}`",
                    m.mode() & 0o777
                ));
            }
        }
        Ok(cfg)
    }

    /// Checks the YAML text of a configuration; `path` names it in messages and is the base
    /// of relative key files.
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        Config::check(text, path).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// `parse`, with its error as a value.
    fn check(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut raw: RawConfig =
            yaml_serde::from_str(text).map_err(|e| ConfigError::from_yaml(e, text))?;
        let entries = std::mem::take(&mut raw.logfiles);
        if entries.is_empty() {
            return Err(refuse(text, &[Step::Key("logfiles")], Problem::NoLogfiles));
        }
        let intake_url = match (raw.intake_url.take(), raw.region.take()) {
            (Some(_), Some(_)) => {
                return Err(refuse(
                    text,
                    &[Step::Key("intake_url")],
                    Problem::RegionAndUrl,
                ));
            }
            (Some(url), None) => url.0,
            (None, Some(region)) => region.0,
            (None, None) => region_url("fra1").unwrap_or_default().to_string(),
        };
        let top_rules = rules(
            raw.optimization_rules.take().unwrap_or_default(),
            text,
            &[Step::Key("OptimizationRules")],
        )?;
        let logfiles = logfiles(entries, &top_rules, text, path)?;
        let (batch, spool_max_bytes) = batch_and_spool(&raw, logfiles.len(), text)?;
        let client_cert = client_cert(raw.client_cert, raw.client_key, text)?;
        Ok(Config {
            source: path.to_owned(),
            logfiles,
            intake_url,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/kube-audit-shipper")),
            spool_max_bytes,
            batch,
            format: raw.output.map_or(Format::Audit, |o| o.0),
            start_at: raw.start_at.map_or(StartAt::Beginning, |s| s.0),
            max_line_bytes: raw
                .max_line_bytes
                .map_or(crate::lines::DEFAULT_MAX_LINE, |b| b.0 as usize),
            request_timeout: raw
                .request_timeout_secs
                .map_or(Duration::from_secs(30), |s| s.0),
            ca_file: raw.ca_file,
            client_cert,
            proxy: raw.http_proxy_url.map(|p| p.0),
            metrics_address: match raw.metrics_address {
                None => Some(SocketAddr::from(([127, 0, 0, 1], 9880))),
                Some(m) => m.0,
            },
            unhealthy_after: raw
                .unhealthy_after_secs
                .map_or(Duration::from_secs(900), |s| s.0),
            warnings: Vec::new(),
        })
    }

    /// The intake settings for one log file.
    pub fn intake(&self, logfile: &LogFile) -> IntakeConfig {
        IntakeConfig {
            url: self.intake_url.clone(),
            key: logfile.key.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            proxy: self.proxy.clone(),
            timeout: self.request_timeout,
            level: self.batch.level,
        }
    }

    /// Spool bytes for each log file.
    pub fn spool_share(&self) -> u64 {
        self.spool_max_bytes / self.logfiles.len().max(1) as u64
    }
}

/// A refused configuration: which key, what is wrong with it (and how to fix it), and where
/// the YAML parser found it. The operator's text is made only by `Display`, at the edge
/// (`Config::parse`, which adds the file's name).
#[derive(Debug)]
struct ConfigError {
    /// The key as a YAML path (`logfiles[1].intakekey`); empty when `problem` is the YAML
    /// deserializer's message, which starts with the path itself.
    key: String,
    problem: Problem,
    /// Line and column, from 1; `None` if the file does not have the key (an error about a
    /// missing key) or a syntax error's message already says where.
    at: Option<(usize, usize)>,
}

/// What is wrong. None holds an intake key.
#[derive(Debug)]
enum Problem {
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
    SpoolTooSmall {
        spool: u64,
        logfiles: usize,
        share: u64,
        need: u64,
    },
    NoClientKey,
    NoClientCert,
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
}

impl ConfigError {
    /// The YAML deserializer's error for `text`. Its position is kept apart, so that it is
    /// always printed: yaml_serde leaves out "line 1 column 1" (a misspelled first key).
    fn from_yaml(e: yaml_serde::Error, text: &str) -> ConfigError {
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

/// "unknown key", the closest known key if one is close, and the known keys.
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
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
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
                "at least one entry is needed (`- filepath: ...` with `intakekey: ...`)",
            ),
            Problem::RegionAndUrl => f.write_str("give either `intake_url` or `region`, not both"),
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
        }
    }
}

/// One step of a YAML path from the document's root.
#[derive(Clone, Copy, Debug)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `logfiles[1].intakekey`.
fn key_name(path: &[Step]) -> String {
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
fn refuse(text: &str, path: &[Step], problem: Problem) -> ConfigError {
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
fn locate_nth(text: &str, path: &[Step], nth: usize) -> Option<(usize, usize)> {
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

/// The `logfiles` entries, each with its key and rules (the top-level ones first).
fn logfiles(
    entries: Vec<RawLogFile>,
    top_rules: &[Rule],
    text: &str,
    path: &Path,
) -> Result<Vec<LogFile>, ConfigError> {
    let mut logfiles: Vec<LogFile> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let (key, key_source) = entry.key(path, text, i)?;
        let mut rules = top_rules.to_vec();
        rules.extend(self::rules(
            entry.optimization_rules.unwrap_or_default(),
            text,
            &[
                Step::Key("logfiles"),
                Step::Index(i),
                Step::Key("OptimizationRules"),
            ],
        )?);
        if let Some(first) = logfiles.iter().position(|l| l.filepath == entry.filepath) {
            return Err(refuse(
                text,
                &[Step::Key("logfiles"), Step::Index(i), Step::Key("filepath")],
                Problem::ListedTwice {
                    filepath: entry.filepath,
                    first,
                },
            ));
        }
        logfiles.push(LogFile {
            filepath: entry.filepath,
            key,
            key_source,
            rules,
        });
    }
    Ok(logfiles)
}

/// The batch limits and the spool size. A batch must fit in one log file's share of the
/// spool, or it could never be stored and reading would stop for good.
fn batch_and_spool(
    raw: &RawConfig,
    logfiles: usize,
    text: &str,
) -> Result<(BatchLimits, u64), ConfigError> {
    let mut batch = BatchLimits::default();
    if let Some(b) = &raw.batch_max_bytes {
        batch.max_bytes = b.0 as usize;
    }
    if let Some(n) = &raw.batch_max_events {
        batch.max_events = n.0;
    }
    if let Some(s) = &raw.batch_linger_secs {
        batch.linger = s.0;
    }
    if let Some(l) = &raw.gzip_level {
        batch.level = l.0;
    }
    let spool = raw
        .spool_max_bytes
        .as_ref()
        .map_or(256 * 1024 * 1024, |b| b.0);
    let share = spool / logfiles.max(1) as u64;
    let need = 4 * batch.max_bytes as u64;
    if share >= need {
        return Ok((batch, spool));
    }
    // Point at what the operator wrote: the spool size, else the batch size, else the list.
    let key = if raw.spool_max_bytes.is_some() {
        "spool_max_bytes"
    } else if raw.batch_max_bytes.is_some() {
        "batch_max_bytes"
    } else {
        "logfiles"
    };
    Err(refuse(
        text,
        &[Step::Key(key)],
        Problem::SpoolTooSmall {
            spool,
            logfiles,
            share,
            need,
        },
    ))
}

/// The certificate and key for mutual TLS: both or neither.
fn client_cert(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    text: &str,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(refuse(
            text,
            &[Step::Key("client_cert")],
            Problem::NoClientKey,
        )),
        (None, Some(_)) => Err(refuse(
            text,
            &[Step::Key("client_key")],
            Problem::NoClientCert,
        )),
    }
}

/// The rules of one `OptimizationRules` list, found at `at`; a rule without a name is named
/// after its place.
fn rules(raw: Vec<RawRule>, text: &str, at: &[Step]) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let mut filters = Vec::with_capacity(r.filters.len());
        for (j, f) in r.filters.into_iter().enumerate() {
            let mut here = at.to_vec();
            here.extend([Step::Index(i), Step::Key("filters"), Step::Index(j)]);
            let (op, name) = f.operator.0;
            let value = match (f.value, op.needs_value()) {
                (Some(v), true) => v.0,
                (None, false) => String::new(),
                (None, true) => return Err(refuse(text, &here, Problem::NeedsValue(name))),
                (Some(_), false) => {
                    here.push(Step::Key("value"));
                    return Err(refuse(text, &here, Problem::TakesNoValue(name)));
                }
            };
            filters.push(Filter::new(f.field.0, op, value));
        }
        rules.push(Rule {
            name: r.name.unwrap_or_else(|| format!("{}[{i}]", key_name(at))),
            filters,
        });
    }
    Ok(rules)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)] // missing or empty: the same explanation
    logfiles: Vec<RawLogFile>,
    region: Option<Region>,
    intake_url: Option<Url>,
    state_dir: Option<PathBuf>,
    spool_max_bytes: Option<Bytes>,
    batch_max_bytes: Option<BatchBytes>,
    batch_max_events: Option<MaxEvents>,
    batch_linger_secs: Option<Secs>,
    gzip_level: Option<Level>,
    output: Option<Output>,
    start_at: Option<Start>,
    max_line_bytes: Option<LineBytes>,
    request_timeout_secs: Option<Secs>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(rename = "HTTPProxyURL")]
    http_proxy_url: Option<Proxy>,
    metrics_address: Option<MetricsAddress>,
    unhealthy_after_secs: Option<Secs>,
    #[serde(rename = "OptimizationRules")]
    optimization_rules: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogFile {
    filepath: String,
    intakekey: Option<KeyText>,
    intakekey_file: Option<PathBuf>,
    intakekey_env: Option<String>,
    #[serde(rename = "OptimizationRules")]
    optimization_rules: Option<Vec<RawRule>>,
}

impl RawLogFile {
    /// The key and where it came from; this is entry `i` of `text` (for the errors' places).
    fn key(&self, config: &Path, text: &str, i: usize) -> Result<(String, String), ConfigError> {
        let at = |key: &'static str, problem| {
            refuse(
                text,
                &[Step::Key("logfiles"), Step::Index(i), Step::Key(key)],
                problem,
            )
        };
        let given: Vec<&'static str> = [
            ("intakekey", self.intakekey.is_some()),
            ("intakekey_file", self.intakekey_file.is_some()),
            ("intakekey_env", self.intakekey_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, g)| g.then_some(k))
        .collect();
        if let [_, second, ..] = given[..] {
            return Err(at(second, Problem::SeveralKeys));
        }
        if let Some(k) = &self.intakekey {
            // Checked when read (`KeyText`).
            return Ok((k.0.clone(), "intakekey".to_string()));
        }
        let (key, from, source) = if let Some(file) = &self.intakekey_file {
            let file = config
                .parent()
                .map_or_else(|| file.clone(), |dir| dir.join(file));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                let error = e.to_string();
                at(
                    "intakekey_file",
                    Problem::KeyFile {
                        file: file.clone(),
                        error,
                    },
                )
            })?;
            let source = format!("intakekey_file {}", file.display());
            (text, file.display().to_string(), ("intakekey_file", source))
        } else if let Some(var) = &self.intakekey_env {
            let key = std::env::var(var)
                .map_err(|_| at("intakekey_env", Problem::EnvUnset { var: var.clone() }))?;
            let source = format!("intakekey_env {var}");
            (key, format!("${var}"), ("intakekey_env", source))
        } else {
            return Err(refuse(
                text,
                &[Step::Key("logfiles"), Step::Index(i)],
                Problem::NoIntakeKey {
                    filepath: self.filepath.clone(),
                },
            ));
        };
        let key = key.trim().to_string();
        match key_fault(&key) {
            Some(fault) => Err(at(source.0, Problem::BadKey { from, fault })),
            None => Ok((key, source.1)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    #[allow(dead_code)] // checked when read: only 1 exists
    action: Action,
    filters: Vec<RawFilter>,
}

/// A filter as written. The field and the operator are checked when read; whether the
/// operator takes a value is checked after (it needs both keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    field: FieldName,
    operator: OpName,
    value: Option<Scalar>,
}

/// What makes a text unfit to be an intake key (and the words that say so, after "is" or
/// after "the key in X"). The text itself is never part of it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyFault {
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

fn key_fault(key: &str) -> Option<KeyFault> {
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
struct KeyText(String);

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
        struct $name($ty);
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
        "{r:?} is not a region: expected fra1, fra2, mco1, uae1 or usa1 (or set intake_url)"
    )));
checked!(Url(String), |u| {
    if u.starts_with("https://") || u.starts_with("http://") {
        Ok(u.trim_end_matches('/').to_string())
    } else {
        Err(format!("{u:?}: expected an https:// URL"))
    }
});
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

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/kas/config.yaml"))
    }

    #[test]
    fn the_seed_snippet_works_with_a_real_key() {
        let cfg = parse(
            "logfiles:\n    - filepath: /var/log/kubernetes/apiserver/audit.log  # Path to the file to watch\n      intakekey: 0a1b2c3d-key  # Intake key to use to send the events\n",
        )
        .unwrap();
        assert_eq!(cfg.logfiles.len(), 1);
        assert_eq!(cfg.logfiles[0].key, "0a1b2c3d-key");
        assert_eq!(cfg.intake_url, "https://intake.sekoia.io");
        assert_eq!(cfg.spool_max_bytes, 256 << 20);
        assert_eq!(
            cfg.metrics_address,
            Some(SocketAddr::from(([127, 0, 0, 1], 9880)))
        );
        assert!(!format!("{cfg:?}").contains("0a1b2c3d-key"));
    }

    #[test]
    fn a_key_that_yaml_reads_as_another_scalar_is_refused_without_echoing_it() {
        // Found by fuzz/fuzz_targets/config.rs: serde's own message quoted the float.
        for value in ["12345.678", "1234567890123", "true", "1e300", "-42"] {
            let e = parse(&format!(
                "logfiles:\n  - filepath: /x/audit.log\n    intakekey: {value}\n"
            ))
            .unwrap_err();
            assert!(!e.contains(value), "{value}: {e}");
            assert!(e.contains("quote the key"), "{value}: {e}");
        }
    }

    #[test]
    fn the_seed_placeholder_gets_a_helpful_error() {
        let e = parse("logfiles:\n  - filepath: /x/audit.log\n    intakekey: {intake key}\n")
            .unwrap_err();
        assert!(e.contains("placeholder"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nspool_max: 1\n").unwrap_err();
        assert!(e.contains("spool_max") && e.contains("line 4"), "{e}");
        let e =
            parse("logfiles:\n  - filepath: /x\n    intakekey: k\n\ngzip_level: 12\n").unwrap_err();
        assert!(
            e.contains("gzip_level") && e.contains("got 12") && e.contains("line 5"),
            "{e}"
        );
        let e =
            parse("logfiles:\n  - filepath: /x\n    intakekey: k\nregion: mars1\n").unwrap_err();
        assert!(e.contains("mars1") && e.contains("line 4"), "{e}");
        let e = parse(
            "logfiles:\n  - filepath: /x\n    intakekey: k\nOptimizationRules:\n  - action: 1\n    filters:\n      - {field: user.nam, operator: \"==\", value: x}\n",
        )
        .unwrap_err();
        assert!(e.contains("user.nam") && e.contains("line 7"), "{e}");
        let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nspool_max_bytes: 1MiB\n")
            .unwrap_err();
        assert!(e.contains("spool_max_bytes") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn options_and_rules() {
        let cfg = parse(
            r#"
logfiles:
  - filepath: /var/lib/rancher/k3s/server/logs/audit.log
    intakekey: "k1"
    OptimizationRules:
      - action: 1
        filters:
          - field: http.response.status_code
            operator: "<"
            value: 300
  - filepath: /other/audit*.log
    intakekey: k2
region: usa1
spool_max_bytes: 64MiB
batch_max_bytes: 512KiB
batch_linger_secs: 0.5
output: ecs
start_at: end
metrics_address: "off"
HTTPProxyURL: http://proxy:3128
OptimizationRules:
  - name: kube-proxy reads
    action: 1
    filters:
      - field: user.name
        operator: "=="
        value: system:kube-proxy
      - field: event.action
        operator: "not contains"
        value: delete
"#,
        )
        .unwrap();
        assert_eq!(
            cfg.intake_url,
            "https://intake.usa1.sekoia.io/api/v1/intake-http"
        );
        assert_eq!(cfg.batch.max_bytes, 512 * 1024);
        assert_eq!(cfg.batch.linger, Duration::from_millis(500));
        assert_eq!(cfg.format, Format::Ecs);
        assert_eq!(cfg.start_at, StartAt::End);
        assert_eq!(cfg.metrics_address, None);
        assert_eq!(cfg.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(cfg.spool_share(), 32 << 20);
        assert_eq!(cfg.logfiles[0].rules.len(), 2);
        assert_eq!(cfg.logfiles[0].rules[0].name, "kube-proxy reads");
        assert_eq!(
            cfg.logfiles[0].rules[1].name,
            "logfiles[0].OptimizationRules[0]"
        );
        assert_eq!(cfg.logfiles[1].rules.len(), 1);
    }

    #[test]
    fn keys_from_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("kas-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "file-key\n").unwrap();
        let path = dir.join("config.yaml");
        let cfg = Config::parse(
            "logfiles:\n  - filepath: /x\n    intakekey_file: key\n",
            &path,
        )
        .unwrap();
        assert_eq!(cfg.logfiles[0].key, "file-key");
        let e = Config::parse(
            "logfiles:\n  - filepath: /x\n    intakekey_env: KAS_TEST_UNSET_VARIABLE\n",
            &path,
        )
        .unwrap_err();
        assert!(e.contains("KAS_TEST_UNSET_VARIABLE is not set"), "{e}");
        let e = Config::parse(
            "logfiles:\n  - filepath: /x\n    intakekey: a\n    intakekey_file: key\n",
            &path,
        )
        .unwrap_err();
        assert!(e.contains("not several"), "{e}");
        let e = Config::parse("logfiles:\n  - filepath: /x\n", &path).unwrap_err();
        assert!(e.contains("no intake key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const AT: &str = "config /etc/kas/config.yaml: ";

    #[test]
    fn a_quoted_placeholder_gets_the_same_explanation_as_the_unquoted_one() {
        let explanation = "not a key: `{intake key}` is the placeholder of Sekoia's page; \
                           replace it with your intake key (quoted if it starts with a special \
                           character) at line 3 column 16";
        for quoted in ["\"{intake key}\"", "'{intake key}'"] {
            let e = parse(&format!(
                "logfiles:\n  - filepath: /x/audit.log\n    intakekey: {quoted}\n"
            ))
            .unwrap_err();
            assert_eq!(
                e,
                format!("{AT}logfiles[0].intakekey: intakekey is {explanation}")
            );
        }
        let e = parse("logfiles:\n  - filepath: /x/audit.log\n    intakekey: {intake key}\n")
            .unwrap_err();
        assert_eq!(
            e,
            format!("{AT}logfiles[0].intakekey: intakekey is a YAML mapping, {explanation}")
        );
    }

    #[test]
    fn a_misspelled_key_has_its_line_and_column() {
        // The first key: yaml_serde's own message leaves out "line 1 column 1".
        let e = parse("logfile:\n  - filepath: /x\n    intakekey: k\n").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{AT}logfile: unknown key, did you mean `logfiles`? (the keys here are \
                 `logfiles`, `region`, `intake_url`, "
            )),
            "{e}"
        );
        assert!(
            e.ends_with("`OptimizationRules`) at line 1 column 1"),
            "{e}"
        );
        let e =
            parse("logfiles:\n  - filepath: /x\n    intakekey: k\n\nregoin: fra1\n").unwrap_err();
        assert!(
            e.starts_with(&format!("{AT}regoin: unknown key, did you mean `region`? ")),
            "{e}"
        );
        assert!(e.ends_with(") at line 5 column 1"), "{e}");
        // Nothing close: no suggestion.
        let e =
            parse("logfiles:\n  - filepath: /x\n    intakekey: k\n    color: red\n").unwrap_err();
        assert_eq!(
            e,
            format!(
                "{AT}logfiles[0].color: unknown key (the keys here are `filepath`, \
                 `intakekey`, `intakekey_file`, `intakekey_env`, `OptimizationRules`) at line 4 \
                 column 5"
            )
        );
    }

    #[test]
    fn errors_in_the_second_logfiles_entry_are_at_its_lines() {
        let two = |second: &str| {
            parse(&format!(
                "logfiles:\n  - filepath: /x\n    intakekey: k1\n  - filepath: {second}\n"
            ))
            .unwrap_err()
        };
        assert_eq!(
            two("/y\n    intakeky: k2"),
            format!(
                "{AT}logfiles[1].intakeky: unknown key, did you mean `intakekey`? (the keys \
                 here are `filepath`, `intakekey`, `intakekey_file`, `intakekey_env`, \
                 `OptimizationRules`) at line 5 column 5"
            )
        );
        assert_eq!(
            two("/y"),
            format!(
                "{AT}logfiles[1]: /y: no intake key; add `intakekey: <key>` (or \
                 `intakekey_file: PATH`, or `intakekey_env: VARIABLE`) at line 4 column 5"
            )
        );
        assert_eq!(
            two("/x\n    intakekey: k2"),
            format!(
                "{AT}logfiles[1].filepath: \"/x\" is listed twice (also logfiles[0]); give \
                 each file once at line 4 column 5"
            )
        );
        assert_eq!(
            two("/y\n    intakekey_env: KAS_TEST_UNSET_VARIABLE"),
            format!(
                "{AT}logfiles[1].intakekey_env: the environment variable \
                 KAS_TEST_UNSET_VARIABLE is not set at line 5 column 5"
            )
        );
        assert_eq!(
            two("/y\n    intakekey: k2\n    intakekey_file: key"),
            format!(
                "{AT}logfiles[1].intakekey_file: give one of intakekey, intakekey_file, \
                 intakekey_env, not several at line 6 column 5"
            )
        );
        assert_eq!(
            two("/y\n    intakekey: k2\n    OptimizationRules: []\n    intakekey: k3"),
            format!("{AT}logfiles[1].intakekey: given twice; keep one at line 7 column 5")
        );
        assert_eq!(
            two("/y\n    intakekey: \" k2\""),
            format!(
                "{AT}logfiles[1].intakekey: intakekey holds spaces or characters that cannot \
                 go in an HTTP header; copy the intake key again from Sekoia's intake page at \
                 line 5 column 16"
            )
        );
    }

    #[test]
    fn a_bad_value_in_a_rule_of_the_second_entry_is_at_its_line() {
        let rule = |filter: &str| {
            format!("      - action: 1\n        filters:\n          - field: user.name\n{filter}")
        };
        let good = rule("            operator: \"==\"\n            value: a\n");
        let two = |filter: &str| {
            parse(&format!(
                "logfiles:\n  - filepath: /x\n    intakekey: k\n    OptimizationRules:\n{good}  \
                 - filepath: /y\n    intakekey: k\n    OptimizationRules:\n{}",
                rule(filter)
            ))
            .unwrap_err()
        };
        // Line 16 is the second entry's operator; line 8 the first's.
        let e = two("            operator: \"=~\"\n            value: a\n");
        assert!(
            e.starts_with(&format!(
                "{AT}logfiles[1].OptimizationRules[0].filters[0].operator: operator \"=~\" is \
                 unknown; known: ==, !=, "
            )),
            "{e}"
        );
        assert!(e.ends_with(" at line 16 column 23"), "{e}");
        assert_eq!(
            two("            operator: exists\n            value: a\n"),
            format!(
                "{AT}logfiles[1].OptimizationRules[0].filters[0].value: operator \"exists\" \
                 takes no `value`; remove it at line 17 column 13"
            )
        );
        assert_eq!(
            two("            operator: \"==\"\n"),
            format!(
                "{AT}logfiles[1].OptimizationRules[0].filters[0]: operator \"==\" needs a \
                 `value` at line 15 column 13"
            )
        );
    }

    #[test]
    fn checks_of_several_keys_are_where_the_parser_finds_the_key() {
        // The comment mentions `intake_url` first: a text search found line 1.
        let e = parse(
            "# intake_url: set region or intake_url, not both\nregion: fra1\nlogfiles:\n  - \
             filepath: /x\n    intakekey: k\nintake_url: https://intake.example\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            format!(
                "{AT}intake_url: give either `intake_url` or `region`, not both at line 6 \
                 column 1"
            )
        );
        let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nclient_key: /k.pem\n")
            .unwrap_err();
        assert_eq!(
            e,
            format!("{AT}client_key: needs `client_cert` too at line 4 column 1")
        );
        let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nbatch_max_bytes: 20MiB\n")
            .unwrap_err();
        assert_eq!(
            e,
            format!(
                "{AT}batch_max_bytes: 20971520 bytes: expected 1 KiB to 10 MiB (the intake's \
                 request limit) at line 4 column 18"
            )
        );
        let e = parse(
            "spool_max_bytes: 6MiB\nlogfiles:\n  - filepath: /x\n    intakekey: k\n  - \
             filepath: /y\n    intakekey: k\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            format!(
                "{AT}spool_max_bytes: a spool of 6291456 bytes for 2 log file(s) leaves \
                 3145728 each; each needs at least 4 × batch_max_bytes = 4194304: raise \
                 spool_max_bytes or lower batch_max_bytes at line 1 column 1"
            )
        );
        let e =
            parse("region: fra1\nlogfiles:\n  - filepath: /x\n    intakekey: k\nregion: usa1\n")
                .unwrap_err();
        assert_eq!(
            e,
            format!("{AT}region: given twice; keep one at line 5 column 1")
        );
        let e = parse("logfiles: []\n").unwrap_err();
        assert_eq!(
            e,
            format!(
                "{AT}logfiles: at least one entry is needed (`- filepath: ...` with \
                 `intakekey: ...`) at line 1 column 1"
            )
        );
    }

    #[test]
    fn a_key_file_that_holds_no_key_is_named_and_not_echoed() {
        let dir = std::env::temp_dir().join(format!("kas-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let text = "logfiles:\n  - filepath: /x\n    intakekey: k\n  - filepath: /y\n    \
                    intakekey_file: key\n";
        let at = format!("config {}: logfiles[1].intakekey_file: ", path.display());
        let line = " at line 5 column 5";
        let key = dir.join("key");
        std::fs::write(&key, "{intake key}\n").unwrap();
        let e = Config::parse(text, &path).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{at}the key in {} is not a key: `{{intake key}}` is the placeholder of \
                 Sekoia's page; replace it with your intake key (quoted if it starts with a \
                 special character){line}",
                key.display()
            )
        );
        std::fs::write(&key, "secret with spaces\n").unwrap();
        let e = Config::parse(text, &path).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.starts_with(&at) && e.ends_with(line), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = Config::parse(text, &path).unwrap_err();
        assert!(
            e.starts_with(&format!("{at}cannot read {}: ", key.display())),
            "{e}"
        );
        assert!(e.ends_with(line), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("10 MB"), Ok(10_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
