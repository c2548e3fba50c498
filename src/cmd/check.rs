//! `check --config FILE [--send-test-event]`: validates the configuration, shows what each
//! entry matches now, reaches each intake, and prints what `run` would do. Every problem is
//! listed with its fix; the exit status is non-zero if there is any.
//!
//! Reaching the intake stores nothing in the customer's SIEM: a `GET` of the endpoint takes
//! the path a batch takes (DNS, proxy, TLS with the CA and client certificate) and cannot be
//! stored. Whether the key is accepted only a stored event tells: `--send-test-event` posts
//! one record labelled `"kind":"KubeAuditShipperCheck"` (with the host, the version and the
//! time) per distinct intake and key.

use crate::batch::IntakeFormat;
use crate::config::{Config, Webhook};
use crate::intake::{Answer, Sender};
use crate::run::{spool_dir, webhook_spool_dir};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// What `check` does at the intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakeCheck {
    /// Reach the endpoint with a request that cannot store anything.
    Reach,
    /// Also post one labelled record, which the intake stores: the only way to know that
    /// the key is accepted (`--send-test-event`).
    SendTestEvent,
}

/// Runs the checks, printing to stdout. `Ok(true)` when everything is fine.
pub fn run(config: &Path, mode: IntakeCheck) -> Result<bool, String> {
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
        match (&cfg.proxy, env_proxy(&cfg.intake_url)) {
            (Some(p), _) => format!(", proxy {}", without_credentials(p)),
            (None, Some(p)) => format!(", proxy {} from the environment", without_credentials(&p)),
            (None, None) => String::new(),
        }
    );
    println!(
        "batches: up to {} bytes / {} events / {:?} linger, gzip level {}, {:?} form",
        cfg.batch.max_bytes, cfg.batch.max_events, cfg.batch.linger, cfg.batch.level, cfg.format
    );
    println!("{}", intake_format_line(&cfg));
    check_state_dir(&cfg, &mut problems);
    match cfg.metrics_address {
        Some(a) => println!("metrics: http://{a}/metrics and /healthz"),
        None => println!("metrics: off"),
    }

    let mut keys_sent = Vec::new();
    for (i, l) in cfg.logfiles.iter().enumerate() {
        println!(
            "logfiles[{i}]: {} (key from {}, {} rule(s))",
            l.filepath,
            l.key_source,
            l.rules.len()
        );
        check_files(&l.filepath, &mut problems);
        print_spool(cfg.spool_share(), &spool_dir(&cfg.state_dir, &l.filepath));
        check_intake(&cfg, l, mode, &mut keys_sent, &mut problems);
    }
    if let Some(w) = &cfg.webhook {
        check_webhook(&cfg, w, &mut problems);
        check_intake(&cfg, &w.entry, mode, &mut keys_sent, &mut problems);
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

/// The webhook input: its TLS files load, its address can be bound (unless the service
/// already holds it), and where its spool goes.
fn check_webhook(cfg: &Config, w: &Webhook, problems: &mut Vec<String>) {
    let scheme = if w.tls.is_some() { "https" } else { "http" };
    println!(
        "webhook: {scheme}://{} (key from {}, {} rule(s), bodies up to {} bytes{})",
        w.listen,
        w.entry.key_source,
        w.entry.rules.len(),
        w.max_body_bytes,
        if w.client_ca.is_some() {
            ", client certificate required"
        } else {
            ""
        }
    );
    if let Some((cert, key)) = &w.tls {
        match crate::http::tls::server_config(cert, key, w.client_ca.as_deref()) {
            Ok(_) => println!("  TLS: certificate {} and its key load", cert.display()),
            Err(e) => problems.push(format!("webhook: {e}")),
        }
    }
    match std::net::TcpListener::bind(w.listen) {
        Ok(_) => println!("  listen: {} is free", w.listen),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && lock_is_held(&cfg.state_dir) => {
            println!("  listen: {} is in use, by the running service", w.listen)
        }
        Err(e) => problems.push(format!(
            "webhook: cannot listen on {}: {e}; choose a free address in `webhook.listen`",
            w.listen
        )),
    }
    print_spool(cfg.spool_share(), &webhook_spool_dir(&cfg.state_dir));
}

/// Where an input's spool is, its share of the cap, and whether `run` will create it.
fn print_spool(cap: u64, dir: &Path) {
    let created = if dir.is_dir() {
        ""
    } else {
        "; `run` creates it"
    };
    println!("  spool: {} (cap {cap} bytes{created})", dir.display());
}

/// What `run` would do with the state directory, found without changing anything: `check`
/// may run on a production node beside the service, and must not create directories or
/// files there (nor take the service's lock).
/// Which endpoint `run` posts to and what time each event carries there: the one setting
/// that changes what the intake stores as the events' time.
fn intake_format_line(cfg: &Config) -> String {
    match cfg.intake_format {
        IntakeFormat::Array => format!(
            "intake_format: {} (POST /array, each event with its own requestReceivedTimestamp)",
            cfg.intake_format.name()
        ),
        IntakeFormat::PlainBatch => format!(
            "intake_format: {} (POST /plain/batch, one time per request, a batch spanning at most {:?} of event time)",
            cfg.intake_format.name(),
            cfg.batch.max_spread
        ),
    }
}

fn check_state_dir(cfg: &Config, problems: &mut Vec<String>) {
    let dir = &cfg.state_dir;
    let fix = "create it for the service's user (mode 0700), or set `state_dir:` to a \
               writable directory";
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match writable(dir) {
            Ok(()) => println!(
                "state_dir: {} (exists, writable by this user{})",
                dir.display(),
                if lock_is_held(dir) {
                    "; in use by a running kube-audit-shipper"
                } else {
                    ""
                }
            ),
            Err(e) => problems.push(format!(
                "state_dir {}: not writable by this user ({e}); {fix}",
                dir.display()
            )),
        },
        Ok(_) => problems.push(format!(
            "state_dir {}: exists and is not a directory; {fix}",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let existing = dir
                .ancestors()
                .skip(1)
                .find(|a| a.is_dir())
                .unwrap_or(Path::new("/"));
            match writable(existing) {
                Ok(()) => println!(
                    "state_dir: {} does not exist; `run` will create it (mode 0700) in {} \
                     (writable by this user)",
                    dir.display(),
                    existing.display()
                ),
                Err(e) => problems.push(format!(
                    "state_dir {}: does not exist, and `run` cannot create it: {} is not \
                     writable by this user ({e}); {fix}",
                    dir.display(),
                    existing.display()
                )),
            }
        }
        Err(e) => problems.push(format!("state_dir {}: {e}; {fix}", dir.display())),
    }
}

/// Whether this user may create entries in `dir` (the kernel's verdict for the effective
/// user, including a read-only filesystem), without creating one.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a running service holds the state directory's lock (probed on a read-only
/// descriptor, released at once; a missing lock file means no).
fn lock_is_held(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is dropped with the file.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// What the pattern matches now, and why nothing when nothing: the directory and the errno
/// that hide the files (the same diagnosis `run` logs and `/healthz` reports).
fn check_files(pattern: &str, problems: &mut Vec<String>) {
    use crate::tail::access::{AUDIT_LOG_OFF, DirProblem, Unreadable, diagnose_dir, literal_dir};
    let paths = match glob::glob(pattern) {
        Ok(paths) => paths,
        Err(e) => {
            problems.push(format!("filepath {pattern:?}: bad pattern ({e})"));
            return;
        }
    };
    let (mut matched, mut unlisted) = (0, 0);
    for p in paths {
        match p {
            Ok(p) => {
                matched += 1;
                match std::fs::File::open(&p).and_then(|f| f.metadata()) {
                    Ok(m) => println!("  matches {} ({} bytes)", p.display(), m.len()),
                    Err(e) => {
                        let u = Unreadable::new(&p, &e);
                        problems.push(format!("{u}; {}", u.hint()));
                    }
                }
            }
            Err(e) => {
                unlisted += 1;
                let u = Unreadable::new(e.path(), e.error());
                problems.push(format!("filepath {pattern}: cannot list {u}; {}", u.hint()));
            }
        }
    }
    if matched > 0 || unlisted > 0 {
        return;
    }
    problems.push(match diagnose_dir(&literal_dir(Path::new(pattern))) {
        Some(DirProblem::Unreadable(u)) => {
            format!("filepath {pattern}: nothing can be read: {u}; {}", u.hint())
        }
        Some(DirProblem::Missing(p)) => format!(
            "filepath {pattern}: no file matches now: {} does not exist; {AUDIT_LOG_OFF}",
            p.display()
        ),
        None => format!("filepath {pattern}: no file matches now; {AUDIT_LOG_OFF}"),
    });
}

/// The proxy the sender takes from the environment (`ALL_PROXY`, `HTTPS_PROXY`,
/// `HTTP_PROXY`, lower case too) for this intake, unless `NO_PROXY` exempts it: the same
/// reading as the sender's, so that what is printed is what is used.
fn env_proxy(intake_url: &str) -> Option<String> {
    let proxy = ureq::Proxy::try_from_env()?;
    let exempt = intake_url
        .parse::<ureq::http::Uri>()
        .is_ok_and(|u| proxy.is_no_proxy(&u));
    (!exempt).then(|| proxy.uri().to_string())
}

/// A proxy URL as it may be printed: `user:password@` replaced by `***@` (the output of
/// `check` is pasted into tickets).
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// Reaches the intake of one `logfiles` entry; with [`IntakeCheck::SendTestEvent`], posts
/// the test record once per distinct intake and key (`keys_sent` remembers them).
fn check_intake(
    cfg: &Config,
    l: &crate::config::LogFile,
    mode: IntakeCheck,
    keys_sent: &mut Vec<(String, String)>,
    problems: &mut Vec<String>,
) {
    let intake = cfg.intake(l);
    let sender = match Sender::new(&intake) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("intake settings: {e}"));
            return;
        }
    };
    let reached = probe(cfg, l, &sender, problems);
    let _ = std::io::stdout().flush();
    if !reached || mode != IntakeCheck::SendTestEvent {
        return;
    }
    let pair = (intake.url.clone(), intake.key.clone());
    if keys_sent.contains(&pair) {
        println!("  intake: same intake and key as an entry above; no second test record");
        return;
    }
    keys_sent.push(pair);
    send_test_event(cfg, l, &sender, problems);
    let _ = std::io::stdout().flush();
}

/// The reachability probe: a `GET` of the endpoint, which no intake stores (the POST of an
/// empty batch that `check` used to send reached the customer's SIEM). Any HTTP answer
/// proves DNS, the proxy and TLS (roots or `ca_file`, the client certificate); only a
/// refusal of the key is a problem, since what an intake answers to a GET is not
/// documented. Returns whether the endpoint answered with anything but a key refusal.
fn probe(
    cfg: &Config,
    l: &crate::config::LogFile,
    sender: &Sender,
    problems: &mut Vec<String>,
) -> bool {
    match sender.probe() {
        Ok(code @ (401 | 403 | 422)) => {
            problems.push(format!(
                "{}: the intake refuses the key (HTTP {code} to a GET, which stores nothing); \
                 copy the intake key from the SEKOIA.IO intake page into {}",
                l.filepath, l.key_source
            ));
            false
        }
        Ok(code) => {
            println!(
                "  intake: reachable over TLS (HTTP {code} to a GET, which stores nothing); \
                 the key is verified only by a stored record: `check --send-test-event`"
            );
            // Neither is proof of a wrong URL (what an intake answers to a GET is not
            // documented), so they are warnings; `--send-test-event` settles it.
            if code == 404 {
                println!(
                    "  warning: HTTP 404 may mean a wrong path in intake_url {}",
                    cfg.intake_url
                );
            } else if (300..400).contains(&code) {
                println!(
                    "  warning: HTTP {code} is a redirect, and `run` follows none: intake_url {} \
                     may be wrong",
                    cfg.intake_url
                );
            }
            true
        }
        Err(e) => {
            problems.push(format!(
                "intake {}: unreachable ({e}); check DNS, the network, HTTPProxyURL or \
                 HTTPS_PROXY, ca_file and client_cert",
                cfg.intake_url
            ));
            false
        }
    }
}

/// Posts one record that says what it is, so that the key is verified end to end and the
/// analyst who finds it in the SIEM knows where it came from.
fn send_test_event(
    cfg: &Config,
    l: &crate::config::LogFile,
    sender: &Sender,
    problems: &mut Vec<String>,
) {
    let now = crate::metrics::now_micros() as i64;
    let host = crate::records::hostname();
    let record = test_record(&host, now);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    let body = match gz.write_all(&record).and_then(|()| gz.finish()) {
        Ok(body) => body,
        Err(e) => {
            problems.push(format!("compressing the test record: {e}"));
            return;
        }
    };
    let time = crate::timestamp::format_micros(now);
    match sender.post(&body, Some(now)) {
        Answer::Accepted => println!(
            "  intake: key accepted: one test record stored (kind {TEST_KIND}, host {host}, \
             time {time})"
        ),
        Answer::KeyRefused(code) => problems.push(format!(
            "{}: the intake refuses the key (HTTP {code} to the test record); copy the intake \
             key from the SEKOIA.IO intake page into {}",
            l.filepath, l.key_source
        )),
        Answer::Failed(e) => problems.push(format!(
            "intake {}: the test record was not sent ({e})",
            cfg.intake_url
        )),
        other => problems.push(format!(
            "intake {}: the test record was not accepted ({})",
            cfg.intake_url,
            match other {
                Answer::TooLarge => "HTTP 413".to_string(),
                Answer::Busy(_) => "busy: HTTP 429 or 503; try again later".to_string(),
                Answer::Status(code) => format!("HTTP {code}"),
                _ => "unexpected answer".to_string(),
            }
        )),
    }
}

/// The `kind` of the test record.
pub const TEST_KIND: &str = "KubeAuditShipperCheck";

/// The test record: one JSON object, no newline.
fn test_record(host: &str, now_micros: i64) -> Vec<u8> {
    use crate::extract::json_string;
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(TEST_KIND.as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    let message = format!(
        "kube-audit-shipper on {host}: test record sent by `kube-audit-shipper check \
         --send-test-event`; not an audit event"
    );
    json_string(&mut out, &message, usize::MAX);
    out.extend_from_slice(b",\"host\":");
    json_string(&mut out, host, usize::MAX);
    out.extend_from_slice(b",\"version\":");
    json_string(&mut out, env!("CARGO_PKG_VERSION"), usize::MAX);
    out.extend_from_slice(b",\"time\":");
    json_string(
        &mut out,
        &crate::timestamp::format_micros(now_micros),
        usize::MAX,
    );
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::{TEST_KIND, test_record, without_credentials};

    #[test]
    fn the_test_record_is_one_labelled_json_object_whatever_the_host_name() {
        let record = test_record("node \"7\"\\é", 1_764_288_000_000_000);
        assert!(!record.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&record).expect("valid JSON");
        assert_eq!(v["kind"], TEST_KIND);
        assert_eq!(v["host"], "node \"7\"\\é");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["time"], "2025-11-28T00:00:00.000000Z");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
    }

    #[test]
    fn proxy_credentials_are_not_printed() {
        assert_eq!(
            without_credentials("http://bob:s3cret@proxy.local:3128"),
            "http://***@proxy.local:3128"
        );
        assert_eq!(
            without_credentials("http://proxy.local:3128/"),
            "http://proxy.local:3128/"
        );
        assert_eq!(without_credentials("bob:pw@p:1"), "***@p:1");
    }
}
