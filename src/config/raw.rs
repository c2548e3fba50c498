//! The configuration as written: the keys the YAML file may hold, each value checked when read.

use super::error::{ConfigError, Problem};
use super::locate::{Step, refuse};
use super::values::{
    Action, BatchBytes, Bytes, FieldName, IntakeFormatName, KeyText, Level, LineBytes, Listen,
    MaxEvents, MetricsAddress, OpName, Output, Proxy, Region, Scalar, Secs, Spread, Start, Url,
    key_fault,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)] // missing or empty: the same explanation
    pub(super) logfiles: Vec<RawLogFile>,
    pub(super) region: Option<Region>,
    pub(super) intake_url: Option<Url>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) spool_max_bytes: Option<Bytes>,
    pub(super) batch_max_bytes: Option<BatchBytes>,
    pub(super) batch_max_events: Option<MaxEvents>,
    pub(super) batch_linger_secs: Option<Secs>,
    pub(super) gzip_level: Option<Level>,
    pub(super) intake_format: Option<IntakeFormatName>,
    pub(super) event_time_spread: Option<Spread>,
    pub(super) output: Option<Output>,
    pub(super) start_at: Option<Start>,
    pub(super) max_line_bytes: Option<LineBytes>,
    pub(super) request_timeout_secs: Option<Secs>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
    #[serde(rename = "HTTPProxyURL")]
    pub(super) http_proxy_url: Option<Proxy>,
    pub(super) metrics_address: Option<MetricsAddress>,
    pub(super) unhealthy_after_secs: Option<Secs>,
    pub(super) webhook: Option<RawWebhook>,
    #[serde(rename = "OptimizationRules")]
    pub(super) optimization_rules: Option<Vec<RawRule>>,
    // The Sekoia Endpoint Agent's own keys (`AGENT_KEYS`), any value: read and warned about.
    roles: Option<IgnoredAny>,
    #[serde(rename = "EventBufferCacheSize")]
    event_buffer_cache_size: Option<IgnoredAny>,
    #[serde(rename = "EnableDNSResolutions")]
    enable_dns_resolutions: Option<IgnoredAny>,
    #[serde(rename = "HashesExcludedPaths")]
    hashes_excluded_paths: Option<IgnoredAny>,
    #[serde(rename = "LogMaxSize")]
    log_max_size: Option<IgnoredAny>,
    #[serde(rename = "LogMaxBackups")]
    log_max_backups: Option<IgnoredAny>,
    #[serde(rename = "LogCompress")]
    log_compress: Option<IgnoredAny>,
    #[serde(rename = "RemoteOptimizationRules")]
    remote_optimization_rules: Option<IgnoredAny>,
}

/// Where the agent's own log goes instead.
const OWN_LOG: &str = "this program logs to stderr, for journald or the container runtime";

/// The Sekoia Endpoint Agent's documented top-level keys that do nothing here, and what does
/// instead (empty: nothing). Source: the agent's configuration page (Sekoia's documentation,
/// "Sekoia.io Endpoint Agent"), as collected in ../shared/SEKOIA-INTAKE.md. A file written
/// for the agent loads, with one warning for each of these; `logfiles`, `HTTPProxyURL` and
/// `OptimizationRules` are the agent's keys too, and do work here.
pub(super) const AGENT_KEYS: &[(&str, &str)] = &[
    ("roles", "only the files in `logfiles` are shipped"),
    (
        "EventBufferCacheSize",
        "the on-disk buffer here is `spool_max_bytes`",
    ),
    ("EnableDNSResolutions", ""),
    ("HashesExcludedPaths", ""),
    ("LogMaxSize", OWN_LOG),
    ("LogMaxBackups", OWN_LOG),
    ("LogCompress", OWN_LOG),
    (
        "RemoteOptimizationRules",
        "rules are not fetched from the platform; copy them into `OptimizationRules`",
    ),
];

impl RawConfig {
    /// The agent's keys (`AGENT_KEYS`) this file holds, with what does instead.
    pub(super) fn agent_keys(&self) -> Vec<(&'static str, &'static str)> {
        let given = |key: &str| match key {
            "roles" => self.roles.is_some(),
            "EventBufferCacheSize" => self.event_buffer_cache_size.is_some(),
            "EnableDNSResolutions" => self.enable_dns_resolutions.is_some(),
            "HashesExcludedPaths" => self.hashes_excluded_paths.is_some(),
            "LogMaxSize" => self.log_max_size.is_some(),
            "LogMaxBackups" => self.log_max_backups.is_some(),
            "LogCompress" => self.log_compress.is_some(),
            "RemoteOptimizationRules" => self.remote_optimization_rules.is_some(),
            _ => false,
        };
        AGENT_KEYS
            .iter()
            .copied()
            .filter(|(key, _)| given(key))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogFile {
    pub(super) filepath: String,
    intakekey: Option<KeyText>,
    intakekey_file: Option<PathBuf>,
    intakekey_env: Option<String>,
    #[serde(rename = "OptimizationRules")]
    pub(super) optimization_rules: Option<Vec<RawRule>>,
}

impl RawLogFile {
    /// The key and where it came from; this is entry `i` of `text` (for the errors' places).
    pub(super) fn key(
        &self,
        config: &Path,
        text: &str,
        i: usize,
    ) -> Result<(String, String), ConfigError> {
        let keys = KeyKeys {
            intakekey: &self.intakekey,
            intakekey_file: &self.intakekey_file,
            intakekey_env: &self.intakekey_env,
        };
        keys.read(
            config,
            text,
            &[Step::Key("logfiles"), Step::Index(i)],
            &self.filepath,
        )
    }
}

/// The `webhook:` section (off when absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) listen: Option<Listen>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) client_ca_file: Option<PathBuf>,
    pub(super) max_body_bytes: Option<Bytes>,
    intakekey: Option<KeyText>,
    intakekey_file: Option<PathBuf>,
    intakekey_env: Option<String>,
    #[serde(rename = "OptimizationRules")]
    pub(super) optimization_rules: Option<Vec<RawRule>>,
}

impl RawWebhook {
    /// The webhook's intake key and where it came from.
    pub(super) fn key(&self, config: &Path, text: &str) -> Result<(String, String), ConfigError> {
        let keys = KeyKeys {
            intakekey: &self.intakekey,
            intakekey_file: &self.intakekey_file,
            intakekey_env: &self.intakekey_env,
        };
        keys.read(config, text, &[Step::Key("webhook")], "the audit webhook")
    }
}

/// The three ways to give an intake key, as an entry (`logfiles` item, `webhook`) holds them.
struct KeyKeys<'a> {
    intakekey: &'a Option<KeyText>,
    intakekey_file: &'a Option<PathBuf>,
    intakekey_env: &'a Option<String>,
}

impl KeyKeys<'_> {
    /// The key and where it came from. `at` is the entry's place in `text`, `label` names
    /// the entry in the message when no key is given.
    fn read(
        &self,
        config: &Path,
        text: &str,
        at: &[Step],
        label: &str,
    ) -> Result<(String, String), ConfigError> {
        let here = |key: &'static str, problem| {
            let mut path = at.to_vec();
            path.push(Step::Key(key));
            refuse(text, &path, problem)
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
            return Err(here(second, Problem::SeveralKeys));
        }
        if let Some(k) = self.intakekey {
            // Checked when read (`KeyText`).
            return Ok((k.0.clone(), "intakekey".to_string()));
        }
        let (key, from, source) = if let Some(file) = self.intakekey_file {
            let file = config
                .parent()
                .map_or_else(|| file.clone(), |dir| dir.join(file));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                let error = e.to_string();
                here(
                    "intakekey_file",
                    Problem::KeyFile {
                        file: file.clone(),
                        error,
                    },
                )
            })?;
            let source = format!("intakekey_file {}", file.display());
            (text, file.display().to_string(), ("intakekey_file", source))
        } else if let Some(var) = self.intakekey_env {
            let key = std::env::var(var)
                .map_err(|_| here("intakekey_env", Problem::EnvUnset { var: var.clone() }))?;
            let source = format!("intakekey_env {var}");
            (key, format!("${var}"), ("intakekey_env", source))
        } else {
            return Err(refuse(
                text,
                at,
                Problem::NoIntakeKey {
                    filepath: label.to_string(),
                },
            ));
        };
        let key = key.trim().to_string();
        match key_fault(&key) {
            Some(fault) => Err(here(source.0, Problem::BadKey { from, fault })),
            None => Ok((key, source.1)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    /// The agent's identifier of the rule; names it when `name` is not given.
    pub(super) uuid: Option<Scalar>,
    #[allow(dead_code)] // checked when read: only 1 exists
    action: Action,
    pub(super) filters: Vec<RawFilter>,
}

/// A filter as written. The field and the operator are checked when read; whether the
/// operator takes a value is checked after (it needs both keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    pub(super) field: FieldName,
    pub(super) operator: OpName,
    pub(super) value: Option<Scalar>,
}
