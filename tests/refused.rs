//! Refusals through the real binary (`kube-audit-shipper run` as a subprocess, the HTTPS
//! intake emulator on 127.0.0.1), DESIGN.md §7:
//! - one event the intake refuses (400) inside a stream: dead-lettered to `refused/`,
//!   reported in-band, everything else delivered once, health stays good, the counters add
//!   up; `spool list` shows it, `spool resend` refuses while the service runs, and after a
//!   stop re-queues it so that the next start delivers it;
//! - an answer with fewer `event_ids` than events: the difference counted and reported by a
//!   `refused_by_intake` record; a 2xx answer that is not `{"event_ids":[…]}`: counted as
//!   unconfirmed, nothing sent twice; in each case every line in exactly one counter;
//! - a wrong `intake_url` (404 for everything): configuration, health fails naming the
//!   status, nothing dead-lettered, every line still spooled.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::apiserver::{AuditWriter, fresh_event};
use support::corpus::samples;
use support::intake::{AnswerBody, Emulator, Options, POISON_ANSWER};

fn bin() -> PathBuf {
    std::env::var_os("KAS_E2E_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kube-audit-shipper")),
        PathBuf::from,
    )
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kas-refused-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for one log file, 0600, with metrics on `port`.
fn config(dir: &Path, log: &Path, url: &str, ca: &Path, port: u16) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "logfiles:\n  - filepath: {}\n    intakekey: {}\nintake_url: {url}\nca_file: {}\n\
         state_dir: {}\nbatch_linger_secs: 0.3\nbatch_max_events: 50\n\
         metrics_address: 127.0.0.1:{port}\n",
        log.display(),
        Options::default().key,
        ca.display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// The service, killed if the test fails before stopping it; its log goes to `log`.
struct Service(Option<Child>);

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(cfg: &Path, log: &Path) -> Service {
    Service(Some(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    ))
}

/// SIGTERM, then the exit code.
fn stop(mut service: Service) -> Option<i32> {
    let mut child = service.0.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spool_cmd(cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["spool", "--config"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    Some((r.status().as_u16(), r.body_mut().read_to_string().ok()?))
}

/// The metrics, summed over labels (one file here); empty while the service starts.
fn metrics(port: u16) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Some((_, body)) = get(port, "/metrics") else {
        return out;
    };
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((series, v)) = line.rsplit_once(' ') {
            let name = series.split('{').next().unwrap_or(series).to_string();
            *out.entry(name).or_default() += v.parse::<u64>().unwrap_or(0);
        }
    }
    out
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Audit events received, by auditID, and the records.
fn received(intake: &Emulator) -> (HashMap<String, u32>, Vec<serde_json::Value>) {
    let (mut events, mut records) = (HashMap::new(), Vec::new());
    for e in intake.events() {
        let v = support::json(&e);
        match v["auditID"].as_str() {
            Some(id) => *events.entry(id.to_string()).or_default() += 1,
            None => records.push(v),
        }
    }
    (events, records)
}

/// Every line in exactly one counter, and every spooled event shipped, refused,
/// dead-lettered or still `queued` in the spool (DESIGN.md §2.5).
fn counters_add_up(m: &HashMap<String, u64>, lines: u64, queued: u64) -> bool {
    let v = |k: &str| m.get(k).copied().unwrap_or(0);
    !m.is_empty()
        && v("kas_lines_read_total") == lines
        && v("kas_lines_read_total")
            == v("kas_events_filtered_total")
                + v("kas_lines_rejected_total")
                + v("kas_lines_too_long_total")
                + v("kas_lines_spooled_total")
        && v("kas_events_spooled_total")
            == v("kas_lines_spooled_total")
                + v("kas_lines_rejected_total")
                + v("kas_gap_records_total")
        && v("kas_events_spooled_total")
            == v("kas_events_shipped_total")
                + v("kas_events_evicted_total")
                + v("kas_events_refused_by_intake_total")
                + v("kas_events_dead_lettered_total")
                + queued
}

#[test]
fn one_refused_event_is_dead_lettered_the_rest_flows_and_spool_resend_delivers_it() {
    let dir = workdir("dead-letter");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let mut writer = AuditWriter::new(&dir.join("logs"), 1 << 20, 10, false);
    let port = free_port();
    let cfg = config(&dir, &writer.path(), &intake.url, &intake.ca_file, port);
    let samples = samples();
    let n = 300u64;
    let ids: Vec<String> = (0..n)
        .map(|i| {
            let (line, _) = fresh_event(&samples, 0x15, i);
            writer.write_line(&line);
            support::json(&line)["auditID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The intake refuses (400) any request holding this one event.
    let bad = ids[150].clone();
    intake.state.lock().unwrap().poison = Some(bad.clone());
    let log = dir.join("service.log");
    let service = start(&cfg, &log);
    wait_for(
        "the rest delivered, the bad event dead-lettered",
        Duration::from_secs(60),
        || {
            let (events, records) = received(&intake);
            let m = metrics(port);
            ids.iter()
                .filter(|id| **id != bad)
                .all(|id| events.contains_key(id))
                && records.len() == 1
                && counters_add_up(&m, n, 0)
                && m.get("kas_events_dead_lettered_total") == Some(&1)
        },
    );
    let (events, records) = received(&intake);
    assert!(events.values().all(|&c| c == 1), "duplicates");
    assert!(!events.contains_key(&bad));
    let k = &records[0]["kube_audit_shipper"];
    assert_eq!(k["reason"], "refused_by_intake");
    assert_eq!(k["status"], 400);
    assert_eq!(k["answer"], POISON_ANSWER);
    assert_eq!(k["lost_events"], 1);
    let m = metrics(port);
    assert_eq!(m["kas_intake_refusing"], 0);
    assert!(m["kas_refused_bytes"] > 0);
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));

    // While the service runs: `list` shows it, `resend` refuses.
    let listed = spool_cmd(&cfg, &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.status.success(), "{text}");
    assert!(text.contains("refused: 1 segment(s)"), "{text}");
    assert!(text.contains("HTTP 400: {\"message\""), "{text}");
    let busy = spool_cmd(&cfg, &["resend"]);
    assert_eq!(busy.status.code(), Some(1));
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(
        err.contains("in use by a running kube-audit-shipper"),
        "{err}"
    );
    assert_eq!(stop(service), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(&Options::default().key),
        "the key in the log"
    );
    assert!(text.contains("moved to refused/"), "{text}");

    // The cause is fixed; the operator re-queues it and starts the service again.
    intake.state.lock().unwrap().poison = None;
    let dropped = spool_cmd(&cfg, &["drop"]);
    assert_eq!(dropped.status.code(), Some(1), "drop needs names or --all");
    let resent = spool_cmd(&cfg, &["resend"]);
    let out = String::from_utf8_lossy(&resent.stdout).to_string();
    assert!(resent.status.success(), "{out}");
    assert!(out.contains("1 segment(s) re-queued"), "{out}");
    let service = start(&cfg, &dir.join("service2.log"));
    wait_for("the resent event", Duration::from_secs(30), || {
        received(&intake).0.contains_key(&bad)
    });
    assert_eq!(stop(service), Some(0));
    let listed = spool_cmd(&cfg, &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(text.contains("refused: 0 segment(s)"), "{text}");
    assert!(text.contains("waiting: 0 segment(s)"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_intake_url_fails_health_and_dead_letters_nothing() {
    let dir = workdir("wrong-url");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let mut writer = AuditWriter::new(&dir.join("logs"), 1 << 20, 10, false);
    let port = free_port();
    let url = format!("{}/wrong/prefix", intake.url);
    let cfg = config(&dir, &writer.path(), &url, &intake.ca_file, port);
    let samples = samples();
    let n = 200u64;
    for i in 0..n {
        writer.write_line(&fresh_event(&samples, 0x16, i).0);
    }
    let log = dir.join("service.log");
    let service = start(&cfg, &log);
    wait_for(
        "health failing for the refusals",
        Duration::from_secs(60),
        || {
            get(port, "/healthz").is_some_and(|(s, body)| {
                s == 503 && body.contains("refuses every request (HTTP 404)")
            })
        },
    );
    // Nothing leaves the spool: all `n` events are still queued.
    wait_for("every line spooled", Duration::from_secs(30), || {
        counters_add_up(&metrics(port), n, n)
    });
    let m = metrics(port);
    assert_eq!(m["kas_intake_refusing"], 404);
    assert_eq!(m["kas_events_dead_lettered_total"], 0);
    assert_eq!(m["kas_events_shipped_total"], 0);
    assert_eq!(m["kas_gap_records_total"], 0);
    assert_eq!(stop(service), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("intake {url} refuses every request with HTTP 404")),
        "{text}"
    );
    let listed = spool_cmd(&cfg, &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(text.contains("refused: 0 segment(s)"), "{text}");
    assert!(text.contains(&format!(", {n} event(s)")), "{text}");
    assert!(intake.events().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the service over `n` fresh events (tag `tag`) with the emulator set up by `setup`,
/// until every line is in exactly one counter and the spool is empty; returns the metrics,
/// the emulator and the ids.
fn run_until_settled(
    name: &str,
    tag: u32,
    n: u64,
    setup: impl FnOnce(&Emulator, &[String]),
    settled: impl Fn(&HashMap<String, u64>) -> bool,
) -> (HashMap<String, u64>, Emulator, Vec<String>) {
    let dir = workdir(name);
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let mut writer = AuditWriter::new(&dir.join("logs"), 1 << 20, 10, false);
    let port = free_port();
    let cfg = config(&dir, &writer.path(), &intake.url, &intake.ca_file, port);
    let samples = samples();
    let ids: Vec<String> = (0..n)
        .map(|i| {
            let (line, _) = fresh_event(&samples, tag, i);
            writer.write_line(&line);
            support::json(&line)["auditID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    setup(&intake, &ids);
    let service = start(&cfg, &dir.join("service.log"));
    let mut last = HashMap::new();
    wait_for("the counters to settle", Duration::from_secs(60), || {
        last = metrics(port);
        counters_add_up(&last, n, 0) && settled(&last)
    });
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(stop(service), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
    (last, intake, ids)
}

#[test]
fn events_without_an_id_in_the_answer_are_counted_and_reported() {
    let (m, intake, ids) = run_until_settled(
        "short-ids",
        0x17,
        300,
        |intake, ids| {
            // The intake stores every event of a batch but this one (as it does with one over
            // its size limit), and answers ids for the others.
            intake.state.lock().unwrap().drop_marked = Some(ids[10].clone());
        },
        |m| m.get("kas_events_refused_by_intake_total") == Some(&1),
    );
    assert_eq!(m["kas_events_dead_lettered_total"], 0);
    assert_eq!(m["kas_segments_unconfirmed_total"], 0);
    let (events, records) = received(&intake);
    assert_eq!(events.len(), ids.len() - 1);
    assert!(!events.contains_key(&ids[10]));
    assert_eq!(records.len(), 1, "{records:?}");
    let k = &records[0]["kube_audit_shipper"];
    assert_eq!(k["reason"], "refused_by_intake");
    assert_eq!(k["lost_events"], 1);
    assert!(k["segment"].as_str().unwrap().ends_with(".array.gz"));
    assert_eq!(m["kas_gap_records_total"], 1);
}

#[test]
fn accepted_answers_that_are_not_event_ids_are_counted_unconfirmed() {
    let (m, intake, ids) = run_until_settled(
        "unconfirmed",
        0x18,
        300,
        |intake, _| intake.state.lock().unwrap().answer = AnswerBody::NotJson,
        |m| m.get("kas_events_shipped_total") == Some(&300),
    );
    // Every segment accepted (2xx) is counted as shipped and as unconfirmed; nothing is
    // reported lost, nothing sent twice.
    assert!(m["kas_segments_unconfirmed_total"] > 0);
    assert_eq!(
        m["kas_segments_unconfirmed_total"],
        m["kas_segments_shipped_total"]
    );
    assert_eq!(m["kas_events_refused_by_intake_total"], 0);
    assert_eq!(m["kas_gap_records_total"], 0);
    let (events, records) = received(&intake);
    assert_eq!(events.len(), ids.len());
    assert!(events.values().all(|&c| c == 1));
    assert!(records.is_empty());
}
