//! `check` at the intake, against the HTTPS intake emulator (issue 15, item 6): it reaches the
//! endpoint through DNS, TLS, the CA and the client certificate without storing anything in
//! the customer's SIEM, and `--send-test-event` stores exactly one labelled record per
//! intake and key. (`check` through a proxy is in `tests/proxy.rs`; the rest of `check`, the
//! files and the state directory, in `tests/e2e.rs`.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::intake::{Emulator, Fault, Options};

/// The binary under test, as in `tests/e2e.rs`.
fn bin() -> PathBuf {
    std::env::var_os("KAS_E2E_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kube-audit-shipper")),
        PathBuf::from,
    )
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kas-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    dir
}

/// A config with one `logfiles` entry (and log file) per key in `keys`, the intake at `url`
/// trusted through `ca`, and `extra` appended.
fn config(dir: &Path, url: &str, ca: &Path, keys: &[&str], extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let mut text = String::from("logfiles:\n");
    for (i, key) in keys.iter().enumerate() {
        let log = dir.join(format!("logs/audit-{i}.log"));
        std::fs::write(&log, "").unwrap();
        text += &format!("  - filepath: {}\n    intakekey: {key}\n", log.display());
    }
    text += &format!(
        "intake_url: {url}\nca_file: {}\nstate_dir: {}\n{extra}",
        ca.display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// `check --config FILE ARGS...` with no proxy in its environment: exit status and stdout.
fn check(cfg: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "--config"]).arg(cfg).args(args);
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn key() -> String {
    Options::default().key
}

/// Nothing was stored, and no request carried anything that could be.
fn stored_nothing(intake: &Emulator, out: &str) {
    assert!(intake.events().is_empty(), "{out}");
    for r in intake.requests() {
        assert_eq!((r.body_bytes, r.events), (0, 0), "{r:?}\n{out}");
    }
}

#[test]
fn check_reaches_the_intake_and_stores_nothing() {
    let dir = workdir("reach");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "  intake: reachable over TLS (HTTP 200 to a GET, which stores nothing); the key is \
             verified only by a stored record: `check --send-test-event`\n"
        ),
        "{out}"
    );
    assert!(!out.contains("key accepted"), "{out}");
    assert!(
        out.contains("\nintake_format: array (POST /array, each event with its own "),
        "{out}"
    );
    assert_eq!(intake.requests().len(), 1, "one probe");
    stored_nothing(&intake, &out);

    // An intake that checks the key before the method: a refusal is named, still nothing
    // stored, and the key is not printed.
    let cfg = config(&dir, &intake.url, &intake.ca_file, &["wrong-key-3c1"], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the intake refuses the key (HTTP 401 to a GET, which stores nothing)"),
        "{out}"
    );
    assert!(!out.contains("wrong-key-3c1"), "{out}");
    stored_nothing(&intake, &out);

    // The other format is named with the time spread of its batches.
    let extra = "intake_format: plain_batch\nevent_time_spread: 2\n";
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], extra);
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\nintake_format: plain_batch (POST /plain/batch, one time per request, a batch spanning at most 2s of event time)\n"),
        "{out}"
    );

    // Whatever else the endpoint answers, it was reached: DNS, TLS and the route work.
    intake.force_status(Some(405));
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("HTTP 405 to a GET"), "{out}");
    intake.force_status(Some(404));
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("  warning: HTTP 404 may mean a wrong path in intake_url"),
        "{out}"
    );
    intake.force_status(Some(308));
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("  warning: HTTP 308 is a redirect, and `run` follows none"),
        "{out}"
    );
    stored_nothing(&intake, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_fails_on_the_network_the_ca_and_the_client_certificate() {
    let dir = workdir("tls");
    let options = Options {
        require_client_cert: true,
        ..Options::default()
    };
    let intake = Emulator::start(&dir.join("intake"), options);
    let impostor = Emulator::start(&dir.join("impostor"), Options::default());

    // Nobody listening.
    let nobody = format!(
        "https://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let cfg = config(&dir, &nobody, &intake.ca_file, &[&key()], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("intake {nobody}: unreachable (")),
        "{out}"
    );

    // A server the configured CA did not sign: never sent anything.
    let cfg = config(&dir, &impostor.url, &intake.ca_file, &[&key()], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unreachable ("), "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    assert!(impostor.state.lock().unwrap().connections > 0);
    assert!(
        impostor.requests().is_empty(),
        "a request to an untrusted server"
    );

    // Mutual TLS: refused without the client certificate, through with it.
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], "");
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unreachable ("), "{out}");
    assert!(intake.requests().is_empty());
    let (cert, cert_key) = &intake.client_cert;
    let mtls = format!(
        "client_cert: {}\nclient_key: {}\n",
        cert.display(),
        cert_key.display()
    );
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], &mtls);
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("reachable over TLS (HTTP 200"), "{out}");
    assert!(intake.state.lock().unwrap().client_cert_seen);
    stored_nothing(&intake, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_test_event_stores_one_labelled_record_per_intake_and_key() {
    let dir = workdir("send");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    // Two entries with the same key: one record, not two.
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key(), &key()], "");
    let (code, out) = check(&cfg, &["--send-test-event"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("  intake: key accepted: one test record stored (kind KubeAuditShipperCheck"),
        "{out}"
    );
    assert!(
        out.contains("same intake and key as an entry above; no second test record"),
        "{out}"
    );
    let events = intake.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let record = support::json(&events[0]);
    assert_eq!(record["kind"], "KubeAuditShipperCheck");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(record["host"], host.trim());
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("check --send-test-event") && m.contains(host.trim())),
        "{record}"
    );
    // The record's time is a real RFC 3339 time, and the one the batch is stamped with.
    let time = record["time"].as_str().unwrap();
    assert!(
        kube_audit_shipper::timestamp::parse_micros(time).is_some(),
        "{time}"
    );
    let posted: Vec<_> = intake
        .requests()
        .into_iter()
        .filter(|r| r.body_bytes > 0)
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].timestamp.as_deref(), Some(time));
    assert!(posted[0].gzip);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_test_event_reports_a_refused_record() {
    let dir = workdir("refused");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let cfg = config(&dir, &intake.url, &intake.ca_file, &[&key()], "");
    // The probe passes, the record is refused: by key (422, the intake's answer to an
    // invalid key or subscription), then by another status.
    intake.script([Fault::Pass, Fault::Status(422)]);
    let (code, out) = check(&cfg, &["--send-test-event"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the intake refuses the key (HTTP 422 to the test record)"),
        "{out}"
    );
    intake.script([Fault::Pass, Fault::Status(500)]);
    let (code, out) = check(&cfg, &["--send-test-event"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("the test record was not accepted (HTTP 500)"),
        "{out}"
    );
    assert!(intake.events().is_empty());

    // A key refused at the probe: no record is posted at all.
    let cfg = config(&dir, &intake.url, &intake.ca_file, &["wrong-key-9d2"], "");
    let before = intake.requests().len();
    let (code, out) = check(&cfg, &["--send-test-event"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("HTTP 401 to a GET"), "{out}");
    assert_eq!(intake.requests().len(), before + 1, "only the probe");
    assert!(intake.events().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
