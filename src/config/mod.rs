//! Configuration: the YAML file given to `run` and `check` (DESIGN.md §8).
//!
//! The Sekoia agent's snippet works unchanged — `logfiles:` entries with `filepath` and
//! `intakekey` — and every other key is optional with a safe default. Keys are flat, in the
//! agent's style (`HTTPProxyURL`, `OptimizationRules` keep its spelling). The agent's whole
//! config file loads too: a rule's `uuid` names it, and the agent's other documented keys
//! (`raw::AGENT_KEYS`) are accepted with one warning each, since they do nothing here.
//!
//! Errors name the key, what is wrong and how to fix it, and the line and column where the
//! YAML parser found the key: unknown keys and ill-typed values are refused by the YAML
//! deserializer (which reports the position), every value with a range is checked inside
//! its own `Deserialize`, so its error carries the position too, and a check that needs
//! several values, a key file or the environment asks the parser where the key is
//! (`locate`). The intake key is a secret: no error or `Debug` output contains it.

mod error;
mod locate;
mod raw;
mod regions;
mod values;

pub use regions::{REGIONS, region_url};
pub use values::parse_bytes;

use crate::batch::{BatchLimits, IntakeFormat};
use crate::extract::Format;
use crate::filter::{Filter, Rule};
use crate::intake::IntakeConfig;
use crate::tail::StartAt;
use error::{ConfigError, Problem};
use locate::{Step, key_name, refuse};
use raw::{RawConfig, RawLogFile, RawRule, RawWebhook};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest request body, before compression: the intake refuses 10 MiB (10,485,760
/// bytes) or more, and Sekoia's SDK cuts its requests below that (DESIGN.md §5). Bounds
/// `batch_max_bytes` here and every batch in [`crate::batch`].
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
    /// Includes `event_time_spread` (`max_spread`), used by `plain_batch` only.
    pub batch: BatchLimits,
    /// Which endpoint and body: `/array` (default) or `/plain/batch`.
    pub intake_format: IntakeFormat,
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
    /// The audit webhook input (`webhook:`), off when `None`.
    pub webhook: Option<Webhook>,
    /// Problems that do not stop the service (a world-readable key), for the caller to log.
    pub warnings: Vec<String>,
}

/// The `webhook:` section: where the API server posts its audit events.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub listen: SocketAddr,
    /// Server certificate and key (PEM); `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CAs (PEM) whose client certificates are required (the API server's); TLS only.
    pub client_ca: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Its key and rules, as a `logfiles` entry's; `filepath` is [`WEBHOOK_ID`].
    pub entry: LogFile,
}

/// The webhook's name where a log file's pattern would be: its spool directory, its metrics'
/// `file` label, the `file` of its records.
pub const WEBHOOK_ID: &str = "webhook";

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
        if entries.is_empty() && raw.webhook.is_none() {
            return Err(refuse(text, &[Step::Key("logfiles")], Problem::NoLogfiles));
        }
        let intake_url = intake_url(&mut raw, text)?;
        let warnings = agent_warnings(&raw, text, path);
        let top_rules = rules(
            raw.optimization_rules.take().unwrap_or_default(),
            text,
            &[Step::Key("OptimizationRules")],
        )?;
        let logfiles = logfiles(entries, &top_rules, text, path)?;
        let webhook = match raw.webhook.take() {
            Some(w) => Some(webhook(w, &top_rules, text, path)?),
            None => None,
        };
        let inputs = logfiles.len() + usize::from(webhook.is_some());
        let (batch, spool_max_bytes) = batch_and_spool(&raw, inputs, text)?;
        let intake_format = raw
            .intake_format
            .as_ref()
            .map_or_else(IntakeFormat::default, |f| f.0);
        if raw.event_time_spread.is_some() && intake_format != IntakeFormat::PlainBatch {
            return Err(refuse(
                text,
                &[Step::Key("event_time_spread")],
                Problem::SpreadWithoutPlainBatch,
            ));
        }
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
            intake_format,
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
            webhook,
            warnings,
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

    /// Spool bytes for each input (a log file, the webhook).
    pub fn spool_share(&self) -> u64 {
        let inputs = self.logfiles.len() + usize::from(self.webhook.is_some());
        self.spool_max_bytes / inputs.max(1) as u64
    }
}

/// The intake's base URL: `intake_url`, else the region's. Plain `http://` only to a
/// loopback address: anywhere else the key would cross the network in clear text.
fn intake_url(raw: &mut RawConfig, text: &str) -> Result<String, ConfigError> {
    let url = match (raw.intake_url.take(), raw.region.take()) {
        (Some(_), Some(_)) => {
            return Err(refuse(
                text,
                &[Step::Key("intake_url")],
                Problem::RegionAndUrl,
            ));
        }
        (Some(url), None) => url.0,
        (None, Some(region)) => return Ok(region.0),
        (None, None) => {
            return Ok(region_url(regions::DEFAULT_REGION)
                .unwrap_or_default()
                .to_string());
        }
    };
    if url.starts_with("http://") {
        let host = values::url_host(&url);
        if !values::is_loopback(host) {
            let host = host.to_string();
            return Err(refuse(
                text,
                &[Step::Key("intake_url")],
                Problem::PlainHttp { host },
            ));
        }
    }
    Ok(url)
}

/// One warning for each of the Sekoia agent's keys that have no effect here, with its line,
/// in the file's order. (`refuse` only places the message: nothing is refused.)
fn agent_warnings(raw: &RawConfig, text: &str, path: &Path) -> Vec<String> {
    let mut found: Vec<ConfigError> = raw
        .agent_keys()
        .into_iter()
        .map(|(key, instead)| refuse(text, &[Step::Key(key)], Problem::AgentOnly { instead }))
        .collect();
    found.sort_by_key(|w| w.at);
    found
        .iter()
        .map(|w| format!("config {}: {w}", path.display()))
        .collect()
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

/// The `webhook:` section, checked: TLS files in pairs, a client CA only with TLS.
fn webhook(
    raw: RawWebhook,
    top_rules: &[Rule],
    text: &str,
    path: &Path,
) -> Result<Webhook, ConfigError> {
    let at =
        |key: &'static str, problem| refuse(text, &[Step::Key("webhook"), Step::Key(key)], problem);
    let (key, key_source) = raw.key(path, text)?;
    let tls = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(at(
                "cert_file",
                Problem::WebhookHalfTls {
                    missing: "key_file",
                },
            ));
        }
        (None, Some(_)) => {
            return Err(at(
                "key_file",
                Problem::WebhookHalfTls {
                    missing: "cert_file",
                },
            ));
        }
    };
    let listen = raw
        .listen
        .map_or(SocketAddr::from(([127, 0, 0, 1], 9881)), |l| l.0);
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(at("listen", Problem::WebhookPlainHttp { listen }));
    }
    if raw.client_ca_file.is_some() && tls.is_none() {
        return Err(at("client_ca_file", Problem::ClientCaWithoutTls));
    }
    let max_body_bytes = raw.max_body_bytes.map_or(64 * 1024 * 1024, |b| b.0);
    if !(1024..=1024 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(at(
            "max_body_bytes",
            Problem::WebhookBody {
                bytes: max_body_bytes,
            },
        ));
    }
    let mut rules = top_rules.to_vec();
    rules.extend(self::rules(
        raw.optimization_rules.unwrap_or_default(),
        text,
        &[Step::Key("webhook"), Step::Key("OptimizationRules")],
    )?);
    Ok(Webhook {
        listen,
        tls,
        client_ca: raw.client_ca_file,
        max_body_bytes: max_body_bytes as usize,
        entry: LogFile {
            filepath: WEBHOOK_ID.to_string(),
            key,
            key_source,
            rules,
        },
    })
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
    if let Some(s) = &raw.event_time_spread {
        batch.max_spread = s.0;
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
/// by its `uuid` (the agent's identifier), else after its place.
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
            name: r
                .name
                .or(r.uuid.map(|u| u.0))
                .unwrap_or_else(|| format!("{}[{i}]", key_name(at))),
            filters,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests;
