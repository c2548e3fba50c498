//! `check --config FILE`: validates the configuration, shows what each entry matches now,
//! reaches each intake, and prints what `run` would do. Every problem is listed with its
//! fix; the exit status is non-zero if there is any.

use crate::config::Config;
use crate::intake::{Answer, Sender};
use crate::run::spool_dir;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// Runs the checks, printing to stdout. `Ok(true)` when everything is fine.
pub fn run(config: &Path) -> Result<bool, String> {
    let cfg = Config::load(config)?;
    let mut problems: Vec<String> = Vec::new();
    println!("config {}: valid", config.display());
    for w in &cfg.warnings {
        println!("  warning: {w}");
    }
    println!(
        "intake: {} (timeout {}s{}{}{})",
        cfg.intake_url,
        cfg.request_timeout.as_secs(),
        cfg.ca_file
            .as_ref()
            .map_or(String::new(), |c| format!(", CA {}", c.display())),
        cfg.client_cert.as_ref().map_or(String::new(), |c| format!(
            ", client cert {}",
            c.0.display()
        )),
        cfg.proxy
            .as_ref()
            .map_or(String::new(), |p| format!(", proxy {p}"))
    );
    println!(
        "batches: up to {} bytes / {} events / {:?} linger, gzip level {}, {:?} form",
        cfg.batch.max_bytes, cfg.batch.max_events, cfg.batch.linger, cfg.batch.level, cfg.format
    );
    check_state_dir(&cfg, &mut problems);
    match cfg.metrics_address {
        Some(a) => println!("metrics: http://{a}/metrics and /healthz"),
        None => println!("metrics: off"),
    }

    for (i, l) in cfg.logfiles.iter().enumerate() {
        println!(
            "logfiles[{i}]: {} (key from {}, {} rule(s))",
            l.filepath,
            l.key_source,
            l.rules.len()
        );
        check_files(&l.filepath, &mut problems);
        let spool = spool_dir(&cfg.state_dir, &l.filepath);
        println!(
            "  spool: {} (cap {} bytes)",
            spool.display(),
            cfg.spool_share()
        );
        check_intake(&cfg, l, &mut problems);
    }
    if problems.is_empty() {
        println!(
            "\nok: `kube-audit-shipper run --config {}` would ship as above",
            config.display()
        );
        Ok(true)
    } else {
        println!("\n{} problem(s):", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        Ok(false)
    }
}

fn check_state_dir(cfg: &Config, problems: &mut Vec<String>) {
    let dir = &cfg.state_dir;
    let probe = dir.join(".check-probe");
    let result = crate::durable::create_dir(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => println!("state_dir: {} (writable)", dir.display()),
        Err(e) => problems.push(format!(
            "state_dir {}: not writable ({e}); create it for the service's user, or set \
             `state_dir:` to a writable directory",
            dir.display()
        )),
    }
}

fn check_files(pattern: &str, problems: &mut Vec<String>) {
    let paths: Vec<_> = match glob::glob(pattern) {
        Ok(paths) => paths.flatten().collect(),
        Err(e) => {
            problems.push(format!("filepath {pattern:?}: bad pattern ({e})"));
            return;
        }
    };
    if paths.is_empty() {
        problems.push(format!(
            "filepath {pattern}: no file matches now; is audit logging on \
             (kube-apiserver --audit-log-path, k3s --kube-apiserver-arg=audit-log-path=...)?"
        ));
    }
    for p in paths {
        match std::fs::File::open(&p).and_then(|f| f.metadata()) {
            Ok(m) => println!("  matches {} ({} bytes)", p.display(), m.len()),
            Err(e) => problems.push(format!(
                "{}: cannot be read ({e}); run as root or with CAP_DAC_READ_SEARCH",
                p.display()
            )),
        }
    }
}

/// TLS handshake and an authenticated POST of an empty batch.
fn check_intake(cfg: &Config, l: &crate::config::LogFile, problems: &mut Vec<String>) {
    let sender = match Sender::new(&cfg.intake(l)) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("intake settings: {e}"));
            return;
        }
    };
    let empty = GzEncoder::new(Vec::new(), Compression::fast())
        .finish()
        .unwrap_or_default();
    match sender.post(&empty, None) {
        Answer::Accepted => println!("  intake: reachable, key accepted (empty batch probe)"),
        Answer::KeyRefused(code) => problems.push(format!(
            "{}: the intake refuses the key (HTTP {code}); copy the intake key from the \
             SEKOIA.IO intake page into {}",
            l.filepath, l.key_source
        )),
        Answer::Status(code) => println!(
            "  intake: reachable over TLS; the key is not verified (HTTP {code} to an empty probe)"
        ),
        Answer::TooLarge | Answer::Busy(_) => {
            println!("  intake: reachable over TLS; busy or refusing the probe, key not verified")
        }
        Answer::Failed(e) => problems.push(format!(
            "intake {}: unreachable ({e}); check the network, HTTPProxyURL, ca_file",
            cfg.intake_url
        )),
    }
    let _ = std::io::stdout().flush();
}
