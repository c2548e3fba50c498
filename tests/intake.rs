//! The sender against the intake emulator over real HTTPS on 127.0.0.1: every response
//! class of DESIGN.md §7, TLS with a private CA and mutual TLS, an outage long enough to hit
//! the spool cap, a restart with a full spool — and the key never in any log line.

mod support;

use kube_audit_shipper::batch::{BatchLimits, Batcher, IntakeFormat, Sealed, escape_event};
use kube_audit_shipper::intake::{CONFIG_RETRY, IntakeConfig, KEY_REFUSED_RETRY, Sender, Step};
use kube_audit_shipper::spool::{Class, Spool, Stored};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::intake::{AnswerBody, Emulator, Fault, Options};

const KEY: &str = "test-intake-key-5f1c";

/// Every log line of the process, to check that the key never appears.
static LOG: OnceLock<Mutex<String>> = OnceLock::new();

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = format!("{} {}\n", r.level(), r.args());
        LOG.get_or_init(Default::default)
            .lock()
            .unwrap()
            .push_str(&line);
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        log::set_boxed_logger(Box::new(Capture)).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kas-intake-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(emu: &Emulator, key: &str) -> IntakeConfig {
    IntakeConfig {
        url: emu.url.clone(),
        key: key.to_string(),
        ca_file: Some(emu.ca_file.clone()),
        client_cert: None,
        proxy: None,
        timeout: Duration::from_secs(5),
        level: 3,
    }
}

fn sealed(class: Class, tag: &str, n: usize, ts: i64) -> Sealed {
    let limits = BatchLimits {
        max_events: 100_000,
        max_bytes: usize::MAX,
        max_spread: Duration::from_secs(3600),
        ..BatchLimits::default()
    };
    let mut b = Batcher::new(limits);
    for i in 0..n {
        let event = format!(
            "{{\"auditID\":\"{tag}-{i}\",\"verb\":\"get\",\"pad\":\"{}\"}}",
            "p".repeat(100 + i % 50)
        );
        b.add(class, event.as_bytes(), Some(ts + i as i64), Instant::now())
            .unwrap();
    }
    b.seal(class).unwrap().unwrap()
}

/// As [`sealed`], an `/array` batch made with `key`; every third event has no time.
fn sealed_array(class: Class, tag: &str, n: usize, ts: i64, key: &str) -> Sealed {
    let limits = BatchLimits {
        max_events: 100_000,
        max_bytes: usize::MAX,
        ..BatchLimits::default()
    };
    let mut b = Batcher::with_format(limits, IntakeFormat::Array, key);
    let mut escaped = Vec::new();
    for i in 0..n {
        let event = format!(
            "{{\"auditID\":\"{tag}-{i}\",\"verb\":\"get\",\"pad\":\"{}\"}}",
            "p".repeat(100 + i % 50)
        );
        escape_event(&mut escaped, event.as_bytes());
        let time = (i % 3 != 2).then_some(ts + i as i64 * 3_600_000_000);
        b.add(class, &escaped, time, Instant::now()).unwrap();
    }
    b.seal(class).unwrap().unwrap()
}

fn store(spool: &Mutex<Spool>, b: &Sealed) {
    assert!(matches!(
        spool.lock().unwrap().store(b).unwrap(),
        Stored::Written(_)
    ));
}

/// Delivers until the spool is empty; returns the waits asked for.
fn drain(sender: &mut Sender, spool: &Mutex<Spool>, max_steps: usize) -> Vec<Duration> {
    let mut waits = Vec::new();
    for _ in 0..max_steps {
        match sender.deliver_next(spool) {
            Step::Idle => return waits,
            Step::Progress => {}
            Step::Wait(d) => waits.push(d),
        }
    }
    panic!("spool not drained after {max_steps} steps: {waits:?}");
}

fn ids(events: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|e| e[12..e.find("\",").unwrap()].to_string())
        .collect()
}

#[test]
fn accepted_batches_are_deleted_in_order_on_one_connection() {
    capture_logs();
    let dir = tmpdir("ok");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let t0 = 1_795_532_127_763_391;
    store(&spool, &sealed(Class::Bulk, "b1", 3, t0 + 5));
    store(&spool, &sealed(Class::Critical, "c1", 2, t0));
    store(&spool, &sealed(Class::Bulk, "b2", 1, t0 + 9));
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    let waits = drain(&mut sender, &spool, 10);
    assert!(waits.is_empty());
    assert_eq!(
        ids(&emu.events()),
        ["c1-0", "c1-1", "b1-0", "b1-1", "b1-2", "b2-0"]
    );
    let reqs = emu.requests();
    assert!(reqs.iter().all(|r| r.gzip && r.status == 200));
    assert_eq!(
        reqs[0].timestamp.as_deref(),
        Some("2026-11-24T14:55:27.763391Z")
    );
    assert_eq!(emu.state.lock().unwrap().connections, 1, "keep-alive");
    assert!(spool.lock().unwrap().is_empty());
    assert_eq!(
        (
            sender.health.delivered_segments,
            sender.health.delivered_events
        ),
        (3, 6)
    );
}

#[test]
fn a_refused_key_keeps_everything_and_retries_slowly_until_fixed() {
    capture_logs();
    for status in [401, 422] {
        let dir = tmpdir(&format!("key{status}"));
        let emu = Emulator::start(
            &dir.join("emu"),
            Options {
                wrong_key_status: status,
                ..Options::default()
            },
        );
        let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
        store(&spool, &sealed(Class::Critical, "c", 4, 0));
        let mut wrong = Sender::new(&config(&emu, "wrong-key-value-91a")).unwrap();
        assert_eq!(wrong.deliver_next(&spool), Step::Wait(KEY_REFUSED_RETRY));
        assert_eq!(wrong.health.key_refused, Some(status));
        assert_eq!(
            spool.lock().unwrap().segments(Class::Critical),
            1,
            "nothing dropped"
        );
        assert!(emu.events().is_empty());
        // The operator fixes the key.
        let mut right = Sender::new(&config(&emu, KEY)).unwrap();
        drain(&mut right, &spool, 5);
        assert_eq!(emu.events().len(), 4);
        let logs = LOG.get().unwrap().lock().unwrap().clone();
        assert!(logs.contains(&format!("refused the intake key (HTTP {status})")));
        assert!(
            !logs.contains("wrong-key-value-91a") && !logs.contains(KEY),
            "key in logs"
        );
    }
}

#[test]
fn too_large_requests_are_split_until_they_pass() {
    capture_logs();
    let dir = tmpdir("413");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.state.lock().unwrap().max_body = 2_000; // ~12 events per request at most
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    store(&spool, &sealed(Class::Bulk, "s", 40, 0));
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    drain(&mut sender, &spool, 50);
    let want: Vec<String> = (0..40).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids(&emu.events()), want, "every event once, in order");
    assert!(sender.health.split_segments >= 3);
    assert!(emu.requests().iter().any(|r| r.status == 413));
}

#[test]
fn busy_and_failing_intakes_are_retried_with_backoff_and_nothing_is_lost() {
    capture_logs();
    let dir = tmpdir("faults");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    store(&spool, &sealed(Class::Critical, "f", 50, 0));
    emu.script([
        Fault::RetryAfter(429, 7),
        Fault::Status(503),
        Fault::Status(500),
        Fault::ResetMidBody,
        Fault::Status(502),
        Fault::Delay(Duration::from_millis(1500)), // longer than the client's timeout
    ]);
    let mut cfg = config(&emu, KEY);
    cfg.timeout = Duration::from_millis(800);
    let mut sender = Sender::new(&cfg).unwrap();
    let mut steps = Vec::new();
    for _ in 0..7 {
        steps.push(sender.deliver_next(&spool));
    }
    assert_eq!(
        steps[0],
        Step::Wait(Duration::from_secs(7)),
        "Retry-After honoured"
    );
    // Backoff: doubling from 1 s with ±25% jitter for 503 (no Retry-After), 500, reset, 502.
    for (i, step) in steps[1..5].iter().enumerate() {
        let Step::Wait(d) = step else {
            panic!("{step:?}")
        };
        let base = Duration::from_secs(1 << i);
        assert!(
            *d >= base.mul_f64(0.74) && *d <= base.mul_f64(1.26),
            "attempt {i}: {d:?}"
        );
    }
    assert!(
        matches!(steps[5], Step::Wait(_)),
        "timeout is a failure: {:?}",
        steps[5]
    );
    assert_eq!(steps[6], Step::Progress);
    // The delayed request may have been processed after the client gave up: at-least-once.
    let got = ids(&emu.events());
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(
        unique,
        (0..50).map(|i| format!("f-{i}")).collect::<Vec<_>>()
    );
    assert!(spool.lock().unwrap().is_empty());
    assert_eq!(sender.health.consecutive_failures, 0);
}

#[test]
fn tls_needs_the_right_ca_and_client_certificate() {
    capture_logs();
    let dir = tmpdir("tls");
    let emu = Emulator::start(
        &dir.join("emu"),
        Options {
            require_client_cert: true,
            ..Options::default()
        },
    );
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    store(&spool, &sealed(Class::Critical, "t", 2, 0));
    // Built-in roots: the private CA is unknown.
    let mut cfg = config(&emu, KEY);
    cfg.ca_file = None;
    let mut untrusting = Sender::new(&cfg).unwrap();
    assert!(matches!(untrusting.deliver_next(&spool), Step::Wait(_)));
    // Right CA, no client certificate: refused in the handshake.
    let mut no_cert = Sender::new(&config(&emu, KEY)).unwrap();
    assert!(matches!(no_cert.deliver_next(&spool), Step::Wait(_)));
    assert!(emu.events().is_empty());
    // Right CA and client certificate.
    let mut cfg = config(&emu, KEY);
    cfg.client_cert = Some(emu.client_cert.clone());
    let mut mtls = Sender::new(&cfg).unwrap();
    assert_eq!(mtls.deliver_next(&spool), Step::Progress);
    assert_eq!(emu.events().len(), 2);
    assert!(emu.state.lock().unwrap().client_cert_seen);
    // Bad files are named in the error.
    let mut cfg = config(&emu, KEY);
    cfg.ca_file = Some(dir.join("missing.pem"));
    let err = Sender::new(&cfg).err().unwrap();
    assert!(err.contains("missing.pem"), "{err}");
}

#[test]
fn an_outage_past_the_spool_cap_delivers_every_critical_event_and_counts_evicted_bulk() {
    capture_logs();
    let dir = tmpdir("outage");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let probe = sealed(Class::Bulk, "probe", 20, 0).gz.len() as u64;
    let spool = Mutex::new(Spool::open(&dir.join("spool"), probe * 12).unwrap());
    // "Ten minutes" of production while the intake answers 503: as many critical batches as
    // bulk ones, more than the cap holds.
    emu.script((0..1000).map(|_| Fault::Status(503)));
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    let (mut critical, mut bulk, mut refused) = (0u64, 0u64, 0u64);
    for i in 0..40 {
        let class = if i % 2 == 0 {
            Class::Critical
        } else {
            Class::Bulk
        };
        let b = sealed(class, &format!("{}{i}", class.letter()), 20, i);
        match spool.lock().unwrap().store(&b).unwrap() {
            Stored::Written(_) if class == Class::Critical => critical += 20,
            Stored::Written(_) => bulk += 20,
            // Only critical data left: the reader would pause; this batch stays unread.
            Stored::Full => refused += 1,
        }
        assert!(matches!(sender.deliver_next(&spool), Step::Wait(_)));
    }
    let evicted = spool.lock().unwrap().stats.evicted_events;
    assert!(evicted > 0, "the cap was hit");
    assert!(refused > 0, "backpressure once only critical data was left");
    // The intake comes back.
    emu.state.lock().unwrap().script.clear();
    drain(&mut sender, &spool, 100);
    let got = ids(&emu.events());
    let got_critical = got.iter().filter(|id| id.starts_with('c')).count() as u64;
    let got_bulk = got.iter().filter(|id| id.starts_with('b')).count() as u64;
    assert_eq!(
        got_critical, critical,
        "every spooled critical event delivered"
    );
    assert_eq!(
        got_bulk + evicted,
        bulk,
        "bulk delivered + evicted = bulk spooled"
    );
    eprintln!(
        "outage: {critical} critical delivered, {got_bulk} bulk delivered, {evicted} bulk evicted, {refused} batches refused (backpressure)"
    );
}

#[test]
fn a_restart_with_a_full_spool_sends_everything() {
    capture_logs();
    let dir = tmpdir("restart");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    {
        let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
        for i in 0..10 {
            store(&spool, &sealed(Class::Critical, &format!("r{i}"), 10, 0));
        }
    } // the process dies here
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    drain(&mut sender, &spool, 20);
    let want: Vec<String> = (0..10)
        .flat_map(|i| (0..10).map(move |j| format!("r{i}-{j}")))
        .collect();
    assert_eq!(ids(&emu.events()), want);
}

#[test]
fn the_key_is_never_shown() {
    let dir = tmpdir("secret");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let cfg = config(&emu, KEY);
    assert!(!format!("{cfg:?}").contains(KEY));
}

#[test]
fn array_batches_go_to_array_with_each_event_s_time_over_one_connection_and_one_lookup() {
    capture_logs();
    let dir = tmpdir("array");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let t0 = 1_795_532_127_763_391;
    for i in 0..20 {
        store(
            &spool,
            &sealed_array(Class::Bulk, &format!("a{i}"), 3, t0, KEY),
        );
    }
    // By name, so that the resolver has a name to look up.
    let mut cfg = config(&emu, KEY);
    cfg.url = cfg.url.replace("127.0.0.1", "localhost");
    let mut sender = Sender::new(&cfg).unwrap();
    assert!(drain(&mut sender, &spool, 30).is_empty());
    let reqs = emu.requests();
    assert_eq!(reqs.len(), 20);
    assert!(
        reqs.iter()
            .all(|r| r.path == "/array" && r.gzip && r.status == 200)
    );
    assert!(reqs.iter().all(|r| r.timestamp.is_none()), "no header time");
    let timed = emu.timed_events();
    assert_eq!(timed.len(), 60);
    // Each event with its own time (an hour apart), or none.
    let times: Vec<Option<&str>> = timed[..3].iter().map(|(_, t)| t.as_deref()).collect();
    assert_eq!(
        times,
        [
            Some("2026-11-24T14:55:27.763391Z"),
            Some("2026-11-24T15:55:27.763391Z"),
            None
        ]
    );
    assert_eq!(ids(&emu.events())[..3], ["a0-0", "a0-1", "a0-2"]);
    // One TLS handshake and one DNS lookup for twenty requests: the agent's connection is
    // kept alive and the resolver's answer reused (ureq would otherwise look the name up,
    // on a new thread, before every request).
    assert_eq!(emu.connections(), 1, "one TLS connection");
    assert_eq!(sender.dns_lookups(), 1, "one DNS lookup");
}

#[test]
fn a_transport_failure_makes_the_next_request_look_the_name_up_again() {
    capture_logs();
    let dir = tmpdir("array-reset");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.script([Fault::ResetMidBody]);
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    store(&spool, &sealed_array(Class::Bulk, "r", 5, 0, KEY));
    let mut cfg = config(&emu, KEY);
    cfg.url = cfg.url.replace("127.0.0.1", "localhost");
    let mut sender = Sender::new(&cfg).unwrap();
    assert_eq!(drain(&mut sender, &spool, 10).len(), 1, "one failure");
    assert_eq!(sender.dns_lookups(), 2);
    assert_eq!(emu.events().len(), 5);
}

#[test]
fn too_large_array_requests_are_split_until_they_pass() {
    capture_logs();
    let dir = tmpdir("array-413");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.state.lock().unwrap().max_body = 3_000;
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    store(&spool, &sealed_array(Class::Bulk, "s", 40, 0, KEY));
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    drain(&mut sender, &spool, 50);
    let want: Vec<String> = (0..40).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids(&emu.events()), want, "every event once, in order");
    assert!(sender.health.split_segments >= 3);
    assert!(emu.requests().iter().any(|r| r.status == 413));
    // Split halves keep each event's own time.
    let timed = emu.timed_events();
    assert!(timed[2].1.is_none() && timed[3].1.is_some());
}

#[test]
fn a_spool_written_before_array_is_sent_to_plain_batch_with_its_time() {
    // A segment as the previous version wrote it: `<order>-<class>-<earliest µs>-<events>.gz`,
    // the newline-joined `/plain/batch` body. The configuration now says `/array`; the old
    // segment still goes where it was made for, with its header time, then the new ones.
    capture_logs();
    let dir = tmpdir("upgrade");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let spool_dir = dir.join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let old_body =
        "{\"auditID\":\"old-0\",\"verb\":\"get\"}\n{\"auditID\":\"old-1\",\"verb\":\"get\"}";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(3));
    std::io::Write::write_all(&mut gz, old_body.as_bytes()).unwrap();
    let name = "00000000000000000007-c-1795532127763391-2.gz";
    std::fs::write(spool_dir.join(name), gz.finish().unwrap()).unwrap();
    let spool = Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap());
    store(&spool, &sealed_array(Class::Critical, "new", 2, 0, KEY));
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    assert!(drain(&mut sender, &spool, 10).is_empty());
    let reqs = emu.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/plain/batch", "/array"]);
    assert_eq!(
        reqs[0].timestamp.as_deref(),
        Some("2026-11-24T14:55:27.763391Z")
    );
    assert_eq!(ids(&emu.events()), ["old-0", "old-1", "new-0", "new-1"]);
    assert!(spool.lock().unwrap().is_empty());
}

#[test]
fn the_key_in_an_array_body_is_never_logged_even_when_refused() {
    capture_logs();
    let dir = tmpdir("array-secret");
    let options = Options {
        wrong_key_status: 422,
        ..Options::default()
    };
    let emu = Emulator::start(&dir.join("emu"), options);
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let wrong = "wrong-array-key-93d1";
    store(&spool, &sealed_array(Class::Critical, "k", 3, 0, wrong));
    let mut sender = Sender::new(&config(&emu, wrong)).unwrap();
    assert_eq!(sender.deliver_next(&spool), Step::Wait(KEY_REFUSED_RETRY));
    assert_eq!(sender.health.key_refused, Some(422));
    // The operator fixes the key: the spooled body is rewritten with it and delivered.
    let mut fixed = Sender::new(&config(&emu, KEY)).unwrap();
    assert!(drain(&mut fixed, &spool, 10).is_empty());
    assert_eq!(ids(&emu.events()), ["k-0", "k-1", "k-2"]);
    let log = LOG.get_or_init(Default::default).lock().unwrap().clone();
    assert!(log.contains("rewritten with the current one"), "{log}");
    assert!(!log.contains(wrong) && !log.contains(KEY));
}

/// An `/array` batch of the given events (each a JSON object), made with [`KEY`].
fn array_of(class: Class, events: &[String], ts: i64) -> Sealed {
    let limits = BatchLimits {
        max_events: 100_000,
        max_bytes: usize::MAX,
        ..BatchLimits::default()
    };
    let mut b = Batcher::with_format(limits, IntakeFormat::Array, KEY);
    let mut escaped = Vec::new();
    for (i, event) in events.iter().enumerate() {
        escape_event(&mut escaped, event.as_bytes());
        b.add(class, &escaped, Some(ts + i as i64), Instant::now())
            .unwrap();
    }
    b.seal(class).unwrap().unwrap()
}

/// `n` events `tag-0` … `tag-{n-1}`; those whose index is in `marked` carry `mark`.
fn events(tag: &str, n: usize, marked: &[usize], mark: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let pad = if marked.contains(&i) { mark } else { "p" };
            format!("{{\"auditID\":\"{tag}-{i}\",\"verb\":\"get\",\"pad\":\"{pad}\"}}")
        })
        .collect()
}

/// The audit events (by auditID) and the records the emulator stored.
fn split_records(emu: &Emulator) -> (Vec<String>, Vec<serde_json::Value>) {
    let (mut audit, mut records) = (Vec::new(), Vec::new());
    for e in emu.events() {
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        match v["auditID"].as_str() {
            Some(id) => audit.push(id.to_string()),
            None => records.push(v),
        }
    }
    (audit, records)
}

fn log_text() -> String {
    LOG.get_or_init(Default::default).lock().unwrap().clone()
}

#[test]
fn short_event_ids_are_counted_and_reported_in_band() {
    capture_logs();
    let dir = tmpdir("short-ids");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.state.lock().unwrap().drop_marked = Some("OVERSIZE".into());
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let t0 = 1_795_532_127_763_391;
    store(
        &spool,
        &array_of(Class::Bulk, &events("s", 10, &[3, 7], "OVERSIZE"), t0),
    );
    let seg = spool.lock().unwrap().next().unwrap().file_name();
    let mut sender = Sender::new(&config(&emu, KEY))
        .unwrap()
        .with_origin("node-1", "/var/log/audit.log");
    assert!(drain(&mut sender, &spool, 10).is_empty());
    let h = &sender.health;
    assert_eq!(h.events_refused, 2);
    assert_eq!(h.records_spooled, 1, "one record, once per segment");
    // 8 of the segment's events, then the record's.
    assert_eq!(h.delivered_events, 8 + 1);
    let (audit, records) = split_records(&emu);
    assert_eq!(audit.len(), 8);
    assert_eq!(records.len(), 1);
    let k = &records[0]["kube_audit_shipper"];
    assert_eq!(k["reason"], "refused_by_intake");
    assert_eq!(k["lost_events"], 2);
    assert_eq!(k["segment"], seg.as_str());
    assert_eq!(k["file"], "/var/log/audit.log");
    assert_eq!(k["first_event_at"], "2026-11-24T14:55:27.763391Z");
    // The record went to the endpoint of the segment's form, with the events' time.
    let last = emu.requests().pop().unwrap();
    assert_eq!(last.path, "/array");
    assert_eq!(
        emu.timed_events().last().unwrap().1.as_deref(),
        Some("2026-11-24T14:55:27.763391Z")
    );
    assert_eq!(emu.state.lock().unwrap().dropped, 2);
    assert!(log_text().contains("returned ids for 8 of its 10 events"));
}

#[test]
fn a_2xx_answer_that_is_not_event_ids_is_counted_unconfirmed() {
    capture_logs();
    let dir = tmpdir("unconfirmed");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    for (i, body) in [AnswerBody::NotJson, AnswerBody::Empty]
        .into_iter()
        .enumerate()
    {
        emu.state.lock().unwrap().answer = body;
        store(
            &spool,
            &array_of(Class::Bulk, &events(&format!("u{i}"), 3, &[], ""), 0),
        );
        assert!(drain(&mut sender, &spool, 5).is_empty());
        assert_eq!(sender.health.segments_unconfirmed, i as u64 + 1);
    }
    // Accepted with a 2xx: deleted (sending again would duplicate what was stored), and
    // counted as shipped; nothing is reported as lost.
    assert!(spool.lock().unwrap().is_empty());
    assert_eq!(sender.health.delivered_events, 6);
    assert_eq!(sender.health.records_spooled, 0);
    assert_eq!(emu.events().len(), 6);
    assert!(log_text().contains("delivery of its 3 events is unconfirmed"));
}

#[test]
fn one_refused_event_is_dead_lettered_while_the_rest_flows_and_can_be_resent() {
    capture_logs();
    let dir = tmpdir("dead-letter");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.state.lock().unwrap().poison = Some("POISON".into());
    let spool_dir = dir.join("spool");
    let spool = Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap());
    // The bad event inside a batch of 40, behind it two other batches.
    store(
        &spool,
        &array_of(Class::Critical, &events("c", 40, &[17], "POISON"), 0),
    );
    store(&spool, &array_of(Class::Bulk, &events("b", 10, &[], ""), 0));
    store(&spool, &sealed_array(Class::Bulk, "a", 5, 0, KEY));
    let mut sender = Sender::new(&config(&emu, KEY))
        .unwrap()
        .with_origin("node-1", "/var/log/audit.log");
    assert!(drain(&mut sender, &spool, 200).is_empty(), "never waits");
    let (audit, records) = split_records(&emu);
    let mut want: Vec<String> = (0..40)
        .filter(|&i| i != 17)
        .map(|i| format!("c-{i}"))
        .chain((0..10).map(|i| format!("b-{i}")))
        .chain((0..5).map(|i| format!("a-{i}")))
        .collect();
    let mut got = audit.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every other event once");
    let requests = emu.requests();
    let refused = requests.iter().filter(|r| r.status == 400).count();
    eprintln!(
        "dead letter: {} requests ({refused} refused) to isolate 1 event of 40 behind which 2 \
         segments waited",
        requests.len()
    );
    // A bisection with one retry per level: about 3 requests per halving.
    assert!(requests.len() <= 3 * 7 + 4, "{}", requests.len());
    let h = &sender.health;
    assert_eq!(h.events_dead_lettered, 1);
    assert_eq!(h.intake_refusing, None);
    assert_eq!(h.delivered_events, 54 + 1);
    // Kept in refused/ with its status and answer.
    let refused = kube_audit_shipper::spool::refused::list(&spool_dir).unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].segment.events, 1);
    let why = refused[0].why.clone().unwrap();
    assert_eq!(why.status, 400);
    assert_eq!(why.answer, support::intake::POISON_ANSWER);
    // Reported in-band with the status and the answer.
    assert_eq!(records.len(), 1);
    let k = &records[0]["kube_audit_shipper"];
    assert_eq!(k["reason"], "refused_by_intake");
    assert_eq!(k["lost_events"], 1);
    assert_eq!(k["status"], 400);
    assert_eq!(k["answer"], support::intake::POISON_ANSWER);
    assert!(k["dead_letter"].as_str().unwrap().contains("/refused/"));
    assert_eq!(k["segment"], refused[0].segment.file_name().as_str());
    assert!(!log_text().contains(KEY));
    // The operator fixes the cause and resends it (what `spool resend` does).
    drop(spool);
    emu.state.lock().unwrap().poison = None;
    kube_audit_shipper::spool::refused::resend(&spool_dir, &refused[0].segment).unwrap();
    let spool = Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap());
    assert!(drain(&mut sender, &spool, 5).is_empty());
    let (audit, _) = split_records(&emu);
    assert_eq!(audit.iter().filter(|id| *id == "c-17").count(), 1);
    assert!(
        kube_audit_shipper::spool::refused::list(&spool_dir)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_wrong_url_is_configuration_health_fails_and_nothing_is_dead_lettered() {
    capture_logs();
    for segments in [1usize, 4] {
        let dir = tmpdir(&format!("wrong-url-{segments}"));
        let emu = Emulator::start(&dir.join("emu"), Options::default());
        let spool_dir = dir.join("spool");
        let spool = Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap());
        for i in 0..segments {
            store(
                &spool,
                &sealed_array(Class::Bulk, &format!("w{i}"), 20, 0, KEY),
            );
        }
        let mut cfg = config(&emu, KEY);
        cfg.url = format!("{}/not-the-intake", emu.url);
        let mut sender = Sender::new(&cfg).unwrap();
        let mut steps = Vec::new();
        while steps.len() < 10 {
            let step = sender.deliver_next(&spool);
            steps.push(step.clone());
            if step == Step::Wait(CONFIG_RETRY) {
                break;
            }
        }
        assert_eq!(steps.last(), Some(&Step::Wait(CONFIG_RETRY)), "{steps:?}");
        assert!(steps.len() <= 4, "decided within a few requests: {steps:?}");
        assert_eq!(sender.health.intake_refusing, Some(404));
        // The slow retries stay refused, probing other segments; nothing set aside.
        for _ in 0..3 {
            assert_eq!(sender.deliver_next(&spool), Step::Wait(CONFIG_RETRY));
        }
        let queued = kube_audit_shipper::spool::queued(&spool_dir).unwrap();
        let held: u32 = queued.iter().map(|s| s.events).sum();
        assert_eq!(held as usize, 20 * segments, "every event still queued");
        assert!(
            kube_audit_shipper::spool::refused::list(&spool_dir)
                .unwrap()
                .is_empty()
        );
        assert_eq!(sender.health.events_dead_lettered, 0);
        assert!(emu.events().is_empty());
        let log = log_text();
        assert!(
            log.contains(&format!(
                "intake {}/not-the-intake refuses every request with HTTP 404",
                emu.url
            )),
            "{log}"
        );
        // Fixed (the right URL, after a restart): everything goes.
        let mut fixed = Sender::new(&config(&emu, KEY)).unwrap();
        assert!(drain(&mut fixed, &spool, 20).is_empty());
        assert_eq!(emu.events().len(), 20 * segments);
        assert_eq!(fixed.health.records_spooled, 0);
    }
}

#[test]
fn a_refused_record_about_a_refusal_is_not_reported_again() {
    // An intake that refuses the event and also the record that reports it: the record is
    // dead-lettered too, but no record about the record follows (that would never end).
    capture_logs();
    let dir = tmpdir("record-loop");
    let emu = Emulator::start(&dir.join("emu"), Options::default());
    emu.state.lock().unwrap().poison = Some("refused_by_intake".into());
    let spool_dir = dir.join("spool");
    let spool = Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap());
    store(
        &spool,
        &array_of(
            Class::Critical,
            &events("c", 8, &[5], "refused_by_intake"),
            0,
        ),
    );
    // Enough other segments that one is left to pass between the record's two refusals
    // (the bisection takes three as evidence).
    for i in 0..6 {
        store(
            &spool,
            &sealed_array(Class::Bulk, &format!("b{i}"), 2, 0, KEY),
        );
    }
    let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
    assert!(drain(&mut sender, &spool, 100).is_empty());
    assert_eq!(sender.health.records_spooled, 1);
    assert_eq!(sender.health.events_dead_lettered, 2);
    let (audit, records) = split_records(&emu);
    assert_eq!(audit.len(), 7 + 12);
    assert!(records.is_empty());
    let refused = kube_audit_shipper::spool::refused::list(&spool_dir).unwrap();
    assert_eq!(refused.len(), 2);
    assert!(log_text().contains("own refused_by_intake record: not reported again"));
}

#[test]
fn a_redirect_or_other_permanent_refusal_once_costs_a_retry_and_loses_nothing() {
    // Redirects are not followed: a 3xx is an answer (a refusal), not a transport error.
    capture_logs();
    for status in [302, 400, 405, 415] {
        let dir = tmpdir(&format!("once-{status}"));
        let emu = Emulator::start(&dir.join("emu"), Options::default());
        emu.script([Fault::Status(status)]);
        let spool = Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap());
        store(&spool, &sealed_array(Class::Critical, "x", 4, 0, KEY));
        store(&spool, &sealed_array(Class::Bulk, "y", 1, 0, KEY));
        let mut sender = Sender::new(&config(&emu, KEY)).unwrap();
        assert_eq!(sender.deliver_next(&spool), Step::Progress, "held aside");
        assert_eq!(sender.health.attempts[5], 1, "{status} counted as refused");
        assert!(drain(&mut sender, &spool, 10).is_empty());
        let mut got = ids(&emu.events());
        got.sort();
        assert_eq!(got, ["x-0", "x-1", "x-2", "x-3", "y-0"], "{status}");
        assert_eq!(sender.health.events_dead_lettered, 0);
        assert_eq!(sender.health.split_segments, 0);
    }
}
