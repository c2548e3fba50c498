//! Configuration: the YAML file given to `run` and `check` (DESIGN.md §8).
//!
//! The Sekoia agent's snippet works unchanged — `logfiles:` entries with `filepath` and
//! `intakekey` — and every other key is optional with a safe default. Keys are flat, in the
//! agent's style (`HTTPProxyURL`, `OptimizationRules` keep its spelling).
//!
//! Errors name the key and the line: unknown keys and ill-typed values are refused by the
//! YAML deserializer (which reports the position), and every value with a range is checked
//! inside its own `Deserialize`, so its error carries the position too. The intake key is
//! a secret: no error or `Debug` output contains it.

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
        let at = |e: yaml_serde::Error| format!("config {}: {e}", path.display());
        let raw: RawConfig = yaml_serde::from_str(text).map_err(at)?;
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(needle))
                .map_or(String::new(), |n| format!(" (line {})", n + 1))
        };
        let err = |key: &str, msg: String| {
            format!("config {}{}: {key}: {msg}", path.display(), line_of(key))
        };

        if raw.logfiles.is_empty() {
            return Err(err(
                "logfiles",
                "at least one entry is needed (`- filepath: ...` with `intakekey: ...`)".into(),
            ));
        }
        let intake_url = match (raw.intake_url, raw.region) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "intake_url",
                    "give either `intake_url` or `region`, not both".into(),
                ));
            }
            (Some(url), None) => url.0,
            (None, Some(region)) => region.0,
            (None, None) => region_url("fra1").unwrap_or_default().to_string(),
        };

        let top_rules = rules(
            raw.optimization_rules.unwrap_or_default(),
            "OptimizationRules",
        );
        let mut logfiles = Vec::new();
        for (i, entry) in raw.logfiles.into_iter().enumerate() {
            let (key, key_source) = entry
                .key(path)
                .map_err(|msg| err(&format!("logfiles[{i}]"), msg))?;
            let mut rules = top_rules.clone();
            rules.extend(self::rules(
                entry.optimization_rules.unwrap_or_default(),
                &format!("logfiles[{i}].OptimizationRules"),
            ));
            if logfiles
                .iter()
                .any(|l: &LogFile| l.filepath == entry.filepath)
            {
                return Err(err(
                    "- filepath",
                    format!("{:?} is listed twice", entry.filepath),
                ));
            }
            logfiles.push(LogFile {
                filepath: entry.filepath,
                key,
                key_source,
                rules,
            });
        }

        let mut batch = BatchLimits::default();
        if let Some(b) = raw.batch_max_bytes {
            if b.0 > MAX_BODY_BYTES || b.0 < 1024 {
                return Err(err(
                    "batch_max_bytes",
                    format!(
                        "{} bytes: expected 1 KiB to 10 MiB (the intake's request limit)",
                        b.0
                    ),
                ));
            }
            batch.max_bytes = b.0 as usize;
        }
        if let Some(n) = raw.batch_max_events {
            batch.max_events = n.0;
        }
        if let Some(s) = raw.batch_linger_secs {
            batch.linger = s.0;
        }
        if let Some(l) = raw.gzip_level {
            batch.level = l.0;
        }
        let spool_max_bytes = raw.spool_max_bytes.map_or(256 * 1024 * 1024, |b| b.0);
        // A batch must fit in one log file's share of the spool, or it could never be stored
        // and reading would stop for good.
        let share = spool_max_bytes / logfiles.len() as u64;
        let need = 4 * batch.max_bytes as u64;
        if share < need {
            return Err(err(
                "spool_max_bytes",
                format!(
                    "{spool_max_bytes} bytes for {} log file(s) leaves {share} each; each needs at \
                     least 4 × batch_max_bytes = {need}",
                    logfiles.len()
                ),
            ));
        }
        let client_cert = match (raw.client_cert, raw.client_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err("client_cert", "needs `client_key` too".into()));
            }
            (None, Some(_)) => {
                return Err(err("client_key", "needs `client_cert` too".into()));
            }
        };
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

fn rules(raw: Vec<RawRule>, at: &str) -> Vec<Rule> {
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| Rule {
            name: r.name.unwrap_or_else(|| format!("{at}[{i}]")),
            filters: r.filters,
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    logfiles: Vec<RawLogFile>,
    region: Option<Region>,
    intake_url: Option<Url>,
    state_dir: Option<PathBuf>,
    spool_max_bytes: Option<Bytes>,
    batch_max_bytes: Option<Bytes>,
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
    /// The key and where it came from.
    fn key(&self, config: &Path) -> Result<(String, String), String> {
        let given = [
            self.intakekey.is_some(),
            self.intakekey_file.is_some(),
            self.intakekey_env.is_some(),
        ];
        let (key, source) = match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(format!(
                    "{}: no intake key; add `intakekey: <key>` (or `intakekey_file: PATH`, or \
                     `intakekey_env: VARIABLE`)",
                    self.filepath
                ));
            }
            1 => {
                if let Some(k) = &self.intakekey {
                    (k.0.clone(), "intakekey".to_string())
                } else if let Some(file) = &self.intakekey_file {
                    let file = config
                        .parent()
                        .map_or_else(|| file.clone(), |dir| dir.join(file));
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| format!("intakekey_file {}: {e}", file.display()))?;
                    (
                        text.trim().to_string(),
                        format!("intakekey_file {}", file.display()),
                    )
                } else {
                    let var = self.intakekey_env.as_deref().unwrap_or_default();
                    let key = std::env::var(var).map_err(|_| {
                        format!("intakekey_env: the environment variable {var} is not set")
                    })?;
                    (key.trim().to_string(), format!("intakekey_env {var}"))
                }
            }
            _ => {
                return Err(
                    "give one of intakekey, intakekey_file, intakekey_env, not several".into(),
                );
            }
        };
        if key.is_empty() {
            return Err(format!("{source}: the intake key is empty"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{source}: the intake key holds spaces or characters that cannot go in an HTTP \
                 header"
            ));
        }
        Ok((key, source))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    #[allow(dead_code)] // checked when read: only 1 exists
    action: Action,
    filters: Vec<Filter>,
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawFilter {
            field: String,
            operator: String,
            value: Option<Scalar>,
        }
        let raw = RawFilter::deserialize(d)?;
        let field = EcsField::parse(&raw.field).ok_or_else(|| {
            let names: Vec<&str> = filter::FIELDS.iter().map(|(n, _)| *n).collect();
            de::Error::custom(format!(
                "field {:?} is not an ECS field of this parser; known: {}",
                raw.field,
                names.join(", ")
            ))
        })?;
        let op = Operator::parse(&raw.operator).ok_or_else(|| {
            let names: Vec<&str> = filter::OPERATORS.iter().map(|(n, _)| *n).collect();
            de::Error::custom(format!(
                "operator {:?} is unknown; known: {}",
                raw.operator,
                names.join(", ")
            ))
        })?;
        let value = match (raw.value, op.needs_value()) {
            (Some(v), true) => v.0,
            (None, false) => String::new(),
            (None, true) => {
                return Err(de::Error::custom(format!(
                    "operator {:?} needs a `value`",
                    raw.operator
                )));
            }
            (Some(_), false) => {
                return Err(de::Error::custom(format!(
                    "operator {:?} takes no `value`",
                    raw.operator
                )));
            }
        };
        Ok(Filter::new(field, op, value))
    }
}

/// The inline intake key. The seed page's placeholder `{intake key}` is a YAML mapping: say
/// so instead of "invalid type: map".
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
                Ok(KeyText(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<KeyText, A::Error> {
                Err(de::Error::custom(
                    "intakekey is a YAML mapping, not a key: `{intake key}` is the placeholder \
                     of Sekoia's page; replace it with your intake key (quoted if it starts \
                     with a special character)",
                ))
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

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("10 MB"), Ok(10_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
