//! End to end: the real binary (`kube-audit-shipper run`) as a subprocess, an apiserver-like
//! writer that rotates and compresses, and the HTTPS intake emulator on 127.0.0.1.
//!
//! - every auditID+stage arrives, filters apply, bad lines arrive as records, the counters
//!   add up (DESIGN.md §2.5), metrics and /healthz answer real and garbage requests, SIGTERM
//!   stops cleanly and a restart sends nothing twice;
//! - SIGKILL at random moments under load: nothing lost (`KAS_E2E_KILLS`, default 8; the
//!   long version is `KAS_E2E_KILLS=200 cargo test --release --test e2e sigkill -- --nocapture`);
//! - a crash inside each durability step (debug builds: `KAS_CRASH_AT`, src/fault.rs);
//! - damaged and junk lines at volume: every line in exactly one counter, memory bounded,
//!   the log thinned (`KAS_E2E_MUTATED_LINES`, default 20,000; the long version is
//!   `KAS_E2E_MUTATED_LINES=1000000 cargo test --release --test e2e mutated -- --nocapture`);
//! - an outage longer than the spool cap: bulk evicted and reported, critical all delivered,
//!   each gap record at the time of its loss;
//! - events a day old replayed after an outage arrive with their own time (`/array`, the
//!   default, which every test here goes through), a bad line with the time it was read;
//!   events and records that escaping would take past 250,000 bytes are cut to fit;
//! - every intake fault of DESIGN.md §7 in turn (5xx, 400, reset, timeout, 429/503 with and
//!   without `Retry-After`, 413), a refused connection, an untrusted certificate, and a
//!   refused key (401, 403, 422): retried, health fails for the key, nothing dropped;
//! - a full disk (a 1 MiB tmpfs) and a read-only state directory (a read-only bind mount),
//!   at start and while running: clear errors, reading paused, state intact, nothing lost
//!   (these need root to mount; they say "skipped" and pass otherwise);
//! - `check` against the emulator.

mod support;
#[path = "e2e/webhook.rs"]
mod webhook;

use kube_audit_shipper::extract::{Extractor, MAX_EVENT_BYTES};
use kube_audit_shipper::spool::{Class, classify};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::apiserver::{AuditWriter, fresh_event, get_string, set_string};
use support::corpus::{Rng, samples};
use support::intake::{Emulator, Fault, Options};

/// The binary under test: the one cargo built with this test, or `KAS_E2E_BIN` (CI points it
/// at the static musl release binary, the one users run; see `.ci/run`).
fn bin() -> PathBuf {
    std::env::var_os("KAS_E2E_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kube-audit-shipper")),
        PathBuf::from,
    )
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kas-e2e-{name}-{}", std::process::id()));
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

/// Writes a config for one log file and returns its path.
fn config(dir: &Path, log: &Path, intake: &Emulator, key: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "logfiles:\n  - filepath: {}\n    intakekey: {key}\nintake_url: {}\nca_file: {}\n\
         state_dir: {}\nbatch_linger_secs: 0.3\n{extra}",
        log.display(),
        intake.url,
        intake.ca_file.display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// An OptimizationRules entry that ignores watches.
const IGNORE_WATCHES: &str = "OptimizationRules:\n  - name: watches\n    action: 1\n    \
    filters:\n      - field: event.action\n        operator: \"==\"\n        value: watch\n";

/// A test's intake emulator, apiserver-like writer (in `dir/logs`) and config, with metrics
/// on a free port.
struct Rig {
    intake: Emulator,
    writer: AuditWriter,
    port: u16,
    cfg: PathBuf,
}

/// `writer` is (maximum file size, backups kept, gzip); `extra` is appended to the config.
fn rig(dir: &Path, writer: (u64, usize, bool), extra: &str) -> Rig {
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let writer = AuditWriter::new(&dir.join("logs"), writer.0, writer.1, writer.2);
    let port = free_port();
    let extra = format!("metrics_address: 127.0.0.1:{port}\n{extra}");
    let cfg = config(
        dir,
        &writer.path(),
        &intake,
        &Options::default().key,
        &extra,
    );
    Rig {
        intake,
        writer,
        port,
        cfg,
    }
}

/// The service as a child process, killed if the test fails before stopping it.
struct Service(Option<Child>);

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(config: &Path) -> Service {
    start_with(config, &[])
}

fn start_with(config: &Path, env: &[(&str, &str)]) -> Service {
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("KAS_E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(log) = child.stderr.take() {
        forward_log(log);
    }
    Service(Some(child))
}

/// Copies the service's log into this test's captured output: shown when the test fails (or
/// with `--nocapture`), not on the terminal of a passing run. The thread inherits the test's
/// output capture and ends when the service closes its stderr.
fn forward_log(log: std::process::ChildStderr) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(log)
            .split(b'\n')
            .map_while(Result::ok)
        {
            eprintln!("service: {}", String::from_utf8_lossy(&line));
        }
    });
}

/// The service with its stderr (the log) going to `log`.
fn start_logged(config: &Path, log: &Path) -> Service {
    Service(Some(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    ))
}

/// For the crash tests: a work dir, the intake emulator and a config without metrics.
fn crash_rig(name: &str) -> (PathBuf, Emulator, PathBuf) {
    let dir = workdir(name);
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let log = dir.join("logs").join("audit.log");
    let cfg = config(
        &dir,
        &log,
        &intake,
        &Options::default().key,
        "metrics_address: \"off\"\n",
    );
    (dir, intake, cfg)
}

/// An apiserver-like writer in a thread: ~2,000 events/s, 1 MiB files, gzip, enough backups
/// to outlive the restarts. Set the flag to stop it; it returns the identities written and
/// its rotations.
fn spawn_writer(
    logs: PathBuf,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<(Vec<String>, usize)>,
) {
    let stop_writing = Arc::new(AtomicBool::new(false));
    let flag = stop_writing.clone();
    let handle = std::thread::spawn(move || {
        let samples = samples();
        let mut w = AuditWriter::new(&logs, 1024 * 1024, 200, true);
        let mut ids = Vec::new();
        let mut i = 0u64;
        while !flag.load(Ordering::SeqCst) {
            for _ in 0..40 {
                let (line, id) = fresh_event(&samples, 2, i);
                w.write_line(&line);
                ids.push(id);
                i += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ids, w.rotations)
    });
    (stop_writing, handle)
}

/// After the crashes: a normal run delivers everything; returns (events, lost, duplicates,
/// most copies of one event, records).
fn deliver_all_after_crashes(
    cfg: &Path,
    intake: &Emulator,
    ids: &[String],
) -> (usize, usize, u32, u32, Vec<serde_json::Value>) {
    let child = start(cfg);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (events, records) = received(intake);
        let missing: Vec<usize> = (0..ids.len())
            .filter(|&i| !events.contains_key(&ids[i]))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {} events missing, first indexes {:?}, last {:?}; records {records:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(5)],
            missing.last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let (events, records) = received(intake);
    let lost = ids.iter().filter(|id| !events.contains_key(*id)).count();
    let dups = duplicates(&events);
    let most = events.values().max().copied().unwrap_or(0);
    (ids.len(), lost, dups, most, records)
}

/// SIGTERM, then the exit status and how long the stop took.
fn stop(mut service: Service) -> (Option<i32>, Duration) {
    let mut child = service.0.take().unwrap();
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), t.elapsed());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (None, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn http(port: u16, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `GET /metrics` with a real HTTP client; the value of `name` (summed over labels).
fn metrics(port: u16) -> HashMap<String, u64> {
    // The service may still be starting: retry a refused connection for a while.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match ureq::get(&url).call() {
            Ok(mut r) => break r.body_mut().read_to_string().unwrap(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    };
    let mut out = HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = line.rsplit_once(' ').unwrap();
        // Counters and gauges are integers; a histogram's sum (seconds) is not needed here.
        let Ok(v) = v.parse::<u64>() else {
            assert!(series.ends_with("_sum"), "{line}");
            continue;
        };
        let name = series.split('{').next().unwrap().to_string();
        *out.entry(name).or_default() += v;
        // A labelled series is also kept under its labels, e.g. `kas_x{outcome="busy"}`
        // (the `file` label dropped: these tests have one file).
        if let Some((_, labels)) = series.split_once('{') {
            let rest: Vec<&str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.starts_with("file="))
                .collect();
            if !rest.is_empty() {
                let key = format!(
                    "{}{{{}}}",
                    series.split('{').next().unwrap(),
                    rest.join(",")
                );
                *out.entry(key).or_default() += v;
            }
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

/// Waits until every one of `ids` has arrived.
fn wait_delivered(what: &str, intake: &Emulator, ids: &[String], limit: Duration) {
    wait_for(what, limit, || {
        let (events, _) = received(intake);
        ids.iter().all(|id| events.contains_key(id))
    });
}

/// Copies beyond the first, over all events.
fn duplicates(events: &HashMap<String, u32>) -> u32 {
    events.values().map(|n| n - 1).sum()
}

/// Received audit events by identity, and the records.
fn received(intake: &Emulator) -> (HashMap<String, u32>, Vec<serde_json::Value>) {
    let mut events = HashMap::new();
    let mut records = Vec::new();
    for e in intake.events() {
        let v = support::json(&e);
        match v["kind"].as_str() {
            Some("KubeAuditShipperGap" | "KubeAuditShipperUnparsed") => records.push(v),
            _ => {
                let id = format!(
                    "{}/{}",
                    v["auditID"].as_str().unwrap(),
                    v["stage"].as_str().unwrap()
                );
                *events.entry(id).or_default() += 1;
            }
        }
    }
    (events, records)
}

#[test]
fn ships_every_event_with_filters_records_metrics_and_a_clean_stop() {
    let dir = workdir("ship");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(
        &dir,
        (512 * 1024, 20, true),
        &format!("max_line_bytes: 96KiB\n{IGNORE_WATCHES}"),
    );
    let child = start(&cfg);
    let samples = samples();
    let mut expected = HashSet::new();
    let mut filtered = 0;
    let n = 6000u64;
    for i in 0..n {
        let (line, id) = fresh_event(&samples, 1, i);
        if get_string(&line, "verb") == Some("watch") {
            filtered += 1;
        } else {
            expected.insert(id);
        }
        writer.write_line(&line);
        if i == n / 3 {
            writer.write_line("this is not an audit event \"at all\"");
        }
        if i == n / 2 {
            writer.write_line(&format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000)));
        }
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(writer.rotations >= 10, "rotations: {}", writer.rotations);
    wait_for("every event", Duration::from_secs(60), || {
        let (events, records) = received(&intake);
        let done = events.len() >= expected.len() && records.len() >= 2;
        if !done {
            eprintln!(
                "{} of {} events, {} records; {:?}",
                events.len(),
                expected.len(),
                records.len(),
                metrics(port)
            );
        }
        done
    });
    let (events, records) = received(&intake);
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !events.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(events.len(), expected.len(), "filtered events were shipped");
    assert!(
        events.values().all(|&n| n == 1),
        "duplicates without a crash"
    );
    let unparsed = records
        .iter()
        .find(|r| r["kind"] == "KubeAuditShipperUnparsed")
        .expect("the bad line as a record");
    assert_eq!(
        unparsed["kube_audit_shipper"]["line"],
        "this is not an audit event \"at all\""
    );
    let gap = records
        .iter()
        .find(|r| r["kind"] == "KubeAuditShipperGap")
        .expect("a gap record for the long line");
    assert_eq!(gap["kube_audit_shipper"]["reason"], "line_too_long");
    assert_eq!(gap["kube_audit_shipper"]["lost_bytes"], 100_010);
    for r in &records {
        assert!(!r.to_string().contains(&Options::default().key));
    }

    // The counters add up (every line read is in exactly one of them) once the last
    // batch has lingered out and been delivered.
    let lines = n + 2;
    let settled = |m: &HashMap<String, u64>| {
        !m.is_empty()
            && m["kas_lines_read_total"] == lines
            && m["kas_events_shipped_total"] == m["kas_events_spooled_total"]
            && m["kas_lines_read_total"]
                == m["kas_events_filtered_total"]
                    + m["kas_lines_rejected_total"]
                    + m["kas_lines_too_long_total"]
                    + m["kas_lines_spooled_total"]
    };
    let mut last = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !settled(&last) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        last = metrics(port);
    }
    let m = metrics(port);
    assert!(settled(&m), "{m:?}");
    assert_eq!(m["kas_events_filtered_total"], filtered);
    assert_eq!(m["kas_rule_ignored_total"], filtered);
    assert_eq!(m["kas_lines_rejected_total"], 1);
    assert_eq!(m["kas_lines_too_long_total"], 1);
    assert_eq!(
        m["kas_events_spooled_total"],
        m["kas_lines_spooled_total"] + m["kas_lines_rejected_total"] + m["kas_gap_records_total"]
    );
    assert_eq!(m["kas_events_shipped_total"], intake.events().len() as u64);
    assert_eq!(m["kas_healthy"], 1);

    // The endpoint: health, and garbage that must not stop it.
    assert!(http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    assert!(http(port, b"\x00\x01\x02 garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(http(port, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(port, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(http(port, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    // A client that connects and says nothing is dropped after the timeout.
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(metrics(port)["kas_lines_read_total"], lines);
    drop(silent);

    let (code, took) = stop(child);
    assert_eq!(code, Some(0), "SIGTERM must exit 0");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");

    // A restart resumes after the committed lines: nothing is sent again.
    let before = intake.events().len();
    let child = start(&cfg);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert_eq!(
        intake.events().len(),
        before,
        "a clean restart re-sent events"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    let kills: usize = std::env::var("KAS_E2E_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let (dir, intake, cfg) = crash_rig("kill");
    let (stop_writing, writer) = spawn_writer(dir.join("logs"));
    let mut rng = Rng::new(0x5eed_0001);
    for _ in 0..kills {
        let mut child = start(&cfg).0.take().unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    stop_writing.store(true, Ordering::SeqCst);
    let (ids, rotations) = writer.join().unwrap();
    let (n, lost, dups, most, records) = deliver_all_after_crashes(&cfg, &intake, &ids);
    eprintln!(
        "sigkill: {kills} kills, {n} events in {rotations} rotations, lost {lost}, \
         duplicates {dups} (at most {most} copies of one event), gap records {}",
        records.len()
    );
    assert_eq!(lost, 0);
    // No gap of any kind: a restart during the gzip of a backup resumes inside the `.gz`.
    assert!(records.is_empty(), "records: {records:?}");
    // Duplicates come only from the windows in flight at each kill.
    assert!(dups as usize <= kills * 2000, "{dups} duplicates");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash inside each durability step (`src/fault.rs`): the process kills itself at the
/// chosen point, is restarted, and in the end every event arrives.
#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "crash points are compiled into debug builds only"
)]
fn a_crash_inside_each_durability_step_loses_nothing() {
    if std::env::var_os("KAS_E2E_BIN").is_some() {
        // A release binary (what KAS_E2E_BIN names in CI) has no crash points: the test
        // would wait for crashes that never come. The debug binary's run covers it.
        eprintln!("skipped: KAS_E2E_BIN is set; crash points exist in debug builds only");
        return;
    }
    let points = [
        "spool_segment_synced",
        "spool_segment_stored",
        "state_file_synced",
        "intake_accepted",
    ];
    let (dir, intake, cfg) = crash_rig("crashpoints");
    let (stop_writing, writer) = spawn_writer(dir.join("logs"));
    for point in points {
        for nth in ["1", "3"] {
            let mut service = start_with(&cfg, &[("KAS_CRASH_AT", &format!("{point}:{nth}"))]);
            let mut child = service.0.take().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "{point}:{nth} never reached");
                std::thread::sleep(Duration::from_millis(20));
            };
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{point}:{nth}: {status}"
            );
        }
    }
    stop_writing.store(true, Ordering::SeqCst);
    let (ids, rotations) = writer.join().unwrap();
    let (n, lost, dups, most, records) = deliver_all_after_crashes(&cfg, &intake, &ids);
    eprintln!(
        "crash points: {} crashes, {n} events in {rotations} rotations, lost {lost}, \
         duplicates {dups} (at most {most} copies of one event), gap records {}",
        points.len() * 2,
        records.len()
    );
    assert_eq!(lost, 0);
    assert!(records.is_empty(), "records: {records:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Whether a process's memory figures are its own: under qemu-user (the ARM suite on an x86_64
/// host, started through binfmt_misc) the process is the emulator, and its RSS holds qemu's
/// translation cache and the state of every thread that ever ran, which grows with run time
/// whatever the program does. The kernel names the interpreter as the executable then.
fn native_memory(pid: u32) -> Result<(), String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) if n.starts_with("qemu-") => Err(format!("the process runs under {n}")),
        _ => Ok(()),
    }
}

#[test]
fn mutated_lines_at_volume_are_all_accounted_for_in_bounded_memory() {
    // DESIGN.md §2.4 and §2.5 under bad input: a log where most lines are damaged events or
    // junk. `KAS_E2E_MUTATED_LINES` sets the count (the long version:
    // `KAS_E2E_MUTATED_LINES=1000000 cargo test --release --test e2e mutated -- --nocapture`).
    let n: u64 = std::env::var("KAS_E2E_MUTATED_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = workdir("mutated");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(
        &dir,
        (4 * 1024 * 1024, 40, false),
        &format!("max_line_bytes: 64KiB\n{IGNORE_WATCHES}"),
    );
    let log = dir.join("service.log");
    let child = start_logged(&cfg, &log);
    let pid = child.0.as_ref().unwrap().id();
    let samples = samples();
    let mut rng = Rng::new(2026);
    // Intact events that must arrive (the filter's watches aside).
    let mut intact = Vec::new();
    let mut too_long = 0u64;
    let mut rss_early = 0;
    let mut line = Vec::new();
    for i in 0..n {
        let (event, id) = fresh_event(&samples, 8, i);
        line.clear();
        let mut wanted = None;
        match rng.below(100) {
            0..40 => {
                if get_string(&event, "verb") != Some("watch") {
                    wanted = Some(id);
                }
                line.extend_from_slice(event.as_bytes());
            }
            40..80 => {
                line.extend_from_slice(event.as_bytes());
                support::corpus::mutate(&mut rng, &mut line);
            }
            80..95 => {
                for _ in 0..rng.below(200) {
                    line.push(rng.next() as u8);
                }
            }
            _ => line.extend_from_slice(rng.pick(&[
                &b"{}"[..],
                b"[]",
                b"null",
                b"\"just a string\"",
                b"{\"verb\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
                b"{\"kind\":\"Event\",\"verb\":\"get\",\"user\":{\"username\":\"\\ud800\"}}",
                b"\xef\xbb\xbf{\"kind\":\"Event\"}",
                b"\r",
            ])),
        }
        if i % 1000 == 999 {
            line.clear();
            wanted = None;
            line.extend_from_slice(b"{\"pad\":\"");
            line.resize(70_000, b'x');
            line.extend_from_slice(b"\"}");
        }
        // Over max_line_bytes (some real events are, too): skipped and reported as a gap.
        if line.len() > 64 * 1024 {
            too_long += 1;
        } else if let Some(id) = wanted {
            intact.push(id);
        }
        // One line per line: a newline inside would split it.
        for b in line.iter_mut().filter(|b| **b == b'\n') {
            *b = b' ';
        }
        writer.write_bytes(&line);
        if i % 1000 == 999 {
            // Keep the writer within 20,000 lines (about 30 MB) of the reader, so rotation
            // (40 backups of 4 MiB) never deletes an unread file: this test is about bad
            // lines, not gaps.
            while i + 1 - metrics(port)["kas_lines_read_total"] > 20_000 {
                std::thread::sleep(Duration::from_millis(20));
            }
            if rss_early == 0 && i + 1 >= n / 10 {
                rss_early = rss_kib(pid).0;
            }
        }
    }
    let settled = |m: &HashMap<String, u64>| {
        m["kas_lines_read_total"] == n
            && m["kas_lines_read_total"]
                == m["kas_events_filtered_total"]
                    + m["kas_lines_rejected_total"]
                    + m["kas_lines_too_long_total"]
                    + m["kas_lines_spooled_total"]
            && m["kas_events_shipped_total"] == m["kas_events_spooled_total"]
            // Every record made is spooled (none still lingering in the open batch).
            && m["kas_events_spooled_total"]
                == m["kas_lines_spooled_total"]
                    + m["kas_lines_rejected_total"]
                    + m["kas_gap_records_total"]
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let m = loop {
        let m = metrics(port);
        if settled(&m) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the counters do not add up: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (rss, peak) = rss_kib(pid);
    let memory_is_own = native_memory(pid);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));

    let delivered = intake.events();
    let (mut unparsed, mut gaps, mut events) = (0u64, 0u64, HashSet::new());
    for e in &delivered {
        let v: serde_json::Value = serde_json::from_str(e).expect("every event sent is JSON");
        assert!(v.is_object(), "{e}");
        match v["kind"].as_str() {
            Some("KubeAuditShipperUnparsed") => unparsed += 1,
            Some("KubeAuditShipperGap") => {
                assert_eq!(v["kube_audit_shipper"]["reason"], "line_too_long", "{e}");
                gaps += 1;
            }
            _ => {
                if let (Some(id), Some(stage)) = (v["auditID"].as_str(), v["stage"].as_str()) {
                    events.insert(format!("{id}/{stage}"));
                }
            }
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let logged_lines = text.lines().count();
    let summary = format!(
        "mutated: {n} lines ({} MB): spooled {} filtered {} rejected {} too long {}; \
         {} events delivered ({} intact all there), {unparsed} unparsed records, {gaps} gap \
         records; RSS {} KiB after 10% of the lines, {rss} KiB at the end, peak {peak} KiB \
         ({}); {logged_lines} log lines\n",
        m["kas_bytes_read_total"] / 1_000_000,
        m["kas_lines_spooled_total"],
        m["kas_events_filtered_total"],
        m["kas_lines_rejected_total"],
        m["kas_lines_too_long_total"],
        delivered.len(),
        intact.len(),
        rss_early,
        match &memory_is_own {
            Ok(()) => "native: asserted".to_string(),
            Err(why) => format!("not asserted: {why}"),
        },
    );
    // Straight to the process's stderr, past the test harness's capture: CI's log shows the
    // memory figures of every run, native and emulated.
    let _ = std::io::stderr().lock().write_all(summary.as_bytes());
    assert_eq!(m["kas_events_shipped_total"], delivered.len() as u64);
    assert_eq!(m["kas_lines_too_long_total"], too_long);
    assert_eq!(gaps, too_long);
    assert_eq!(unparsed, m["kas_lines_rejected_total"]);
    assert!(m["kas_lines_rejected_total"] > n / 3, "{m:?}");
    let missing = intact.iter().filter(|id| !events.contains(*id)).count();
    assert_eq!(missing, 0, "intact events lost");
    // Bounded memory: no growth with the input beyond the buffers' high-water marks (a
    // generous bound; the measured peak is printed above). Asserted only where the figures
    // are the service's own (see `native_memory`); printed in any case.
    if memory_is_own.is_ok() {
        assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
        assert!(
            rss < rss_early + 16 * 1024,
            "RSS grew from {rss_early} to {rss} KiB"
        );
    }
    // A bounded log.
    assert!(
        logged_lines < 200,
        "{logged_lines} log lines:\n{}",
        &text[..text.len().min(4000)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_outage_past_the_spool_cap_evicts_bulk_only_and_reports_it() {
    let dir = workdir("outage");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(
        &dir,
        (4 * 1024 * 1024, 20, false),
        "batch_max_bytes: 16KiB\nspool_max_bytes: 160KiB\n",
    );
    intake.force_status(Some(503));
    let child = start(&cfg);
    let samples = samples();
    let mut x = Extractor::new();
    let (mut critical, mut all) = (Vec::new(), Vec::new());
    for i in 0..6000u64 {
        let (line, id) = fresh_event(&samples, 3, i);
        let mut buf = line.clone().into_bytes();
        let len = buf.len();
        if classify(&x.parse(&mut buf, len).unwrap()) == Class::Critical {
            critical.push(id.clone());
        }
        all.push(id);
        writer.write_line(&line);
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_for("evictions", Duration::from_secs(30), || {
        metrics(port)["kas_segments_evicted_total"] > 0
    });
    std::thread::sleep(Duration::from_secs(1));
    intake.force_status(None);
    wait_for("the spool to drain", Duration::from_secs(60), || {
        let m = metrics(port);
        m["kas_spool_bytes"] == 0
            && m["kas_reader_paused"] == 0
            && m["kas_lines_read_total"] == all.len() as u64
            // Every line spooled (none still lingering in an open batch).
            && m["kas_lines_spooled_total"] == all.len() as u64
            && m["kas_events_shipped_total"] + m["kas_events_evicted_total"]
                == m["kas_events_spooled_total"]
            // Every eviction's gap record was made, spooled (not still lingering in the
            // open batch) and therefore shipped.
            && m["kas_gap_records_total"] == m["kas_segments_evicted_total"]
            && m["kas_events_spooled_total"]
                == m["kas_lines_spooled_total"] + m["kas_gap_records_total"]
    });
    let m = metrics(port);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let (events, records) = received(&intake);
    let missing_critical = critical
        .iter()
        .filter(|id| !events.contains_key(*id))
        .count();
    let evicted_reported: u64 = records
        .iter()
        .filter(|r| r["kube_audit_shipper"]["reason"] == "evicted")
        .map(|r| r["kube_audit_shipper"]["lost_events"].as_u64().unwrap())
        .sum();
    let missing = all.iter().filter(|id| !events.contains_key(*id)).count() as u64;
    eprintln!(
        "outage: {} events ({} critical), {} evicted in {} segments, {} gap records, \
         missing {missing}",
        all.len(),
        critical.len(),
        m["kas_events_evicted_total"],
        m["kas_segments_evicted_total"],
        records.len()
    );
    assert_eq!(missing_critical, 0, "critical events lost");
    assert!(m["kas_events_evicted_total"] > 0);
    // Every missing event is accounted for by an eviction, reported in-band.
    assert_eq!(missing, m["kas_events_evicted_total"]);
    assert_eq!(evicted_reported, missing);
    // Each gap record carries the time of its loss (the evicted events' earliest).
    for (event, time) in intake.timed_events() {
        let v = support::json(&event);
        if v["kind"] == "KubeAuditShipperGap" {
            let first = v["kube_audit_shipper"]["first_event_at"].as_str();
            assert_eq!(time.as_deref(), first, "{event}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_event_replayed_after_an_outage_carries_its_own_time() {
    // Events from a day ago, a minute apart, read while the intake is down; delivered after
    // it returns. Through `/array` each keeps its own `requestReceivedTimestamp` as its time
    // at the intake, not the time it was sent; a line that is not an event keeps the time it
    // was read.
    let dir = workdir("replay-time");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(&dir, (4 * 1024 * 1024, 20, false), "");
    intake.force_status(Some(503));
    let child = start(&cfg);
    let samples = samples();
    let now =
        kube_audit_shipper::timestamp::parse_micros(&kube_audit_shipper::timestamp::format_micros(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64,
        ))
        .unwrap();
    let day_ago = now - 86_400_000_000;
    let mut want = HashMap::new();
    for i in 0..300u64 {
        let (mut line, id) = fresh_event(&samples, 9, i);
        let t = kube_audit_shipper::timestamp::format_micros(day_ago + i as i64 * 60_000_000);
        set_string(&mut line, "requestReceivedTimestamp", &t);
        writer.write_line(&line);
        want.insert(id, t);
    }
    writer.write_line("not an audit event");
    wait_for("everything spooled", Duration::from_secs(30), || {
        let m = metrics(port);
        m["kas_lines_read_total"] == 301 && m["kas_events_spooled_total"] == 301
    });
    let outage_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    intake.force_status(None);
    wait_delivered(
        "the replay",
        &intake,
        &want.keys().cloned().collect::<Vec<_>>(),
        Duration::from_secs(30),
    );
    wait_for("the unparsed record", Duration::from_secs(30), || {
        received(&intake).1.len() == 1
    });
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let mut checked = 0;
    for (event, time) in intake.timed_events() {
        let v = support::json(&event);
        if v["kind"] == "KubeAuditShipperUnparsed" {
            // Read before the intake came back.
            let t = kube_audit_shipper::timestamp::parse_micros(time.as_deref().unwrap()).unwrap();
            assert!(t >= now && t < outage_end, "unparsed record at {time:?}");
            continue;
        }
        let id = format!(
            "{}/{}",
            v["auditID"].as_str().unwrap(),
            v["stage"].as_str().unwrap()
        );
        assert_eq!(time.as_ref(), Some(&want[&id]), "{id}");
        checked += 1;
    }
    assert_eq!(checked, 300);
    assert!(intake.requests().iter().all(|r| r.path == "/array"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_that_escaping_makes_too_large_are_trimmed_to_fit_not_refused() {
    // In an `/array` entry the event is a JSON string: every `"` and `\\` doubles. The
    // intake's 250,000-byte limit is held on that escaped text (the emulator refuses more
    // with a 413), so an event of 140 KB of escaped quotes, within the limit as it is, must be cut
    // further; a bad line of quotes, forwarded as a record, too.
    let dir = workdir("escaped-limit");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(&dir, (4 * 1024 * 1024, 20, false), "output: raw\n");
    let child = start(&cfg);
    let samples = samples();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let (line, id) = fresh_event(&samples, 11, i);
        // Big ones and small ones, in turn.
        let line = if i % 2 == 0 {
            line.replacen('{', &format!("{{\"pad\":\"{}\",", "\\\"".repeat(70_000)), 1)
        } else {
            line
        };
        writer.write_line(&line);
        ids.push(id);
    }
    writer.write_line(&"\"".repeat(300_000));
    wait_delivered("every event", &intake, &ids, Duration::from_secs(30));
    wait_for("the unparsed record", Duration::from_secs(30), || {
        received(&intake).1.len() == 1
    });
    let m = metrics(port);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert!(
        intake.requests().iter().all(|r| r.status == 200),
        "nothing refused"
    );
    assert_eq!(m["kas_events_truncated_total"], 3);
    for (event, _) in intake.timed_events() {
        let escaped = serde_json::to_string(&event).unwrap().len() - 2;
        assert!(escaped <= MAX_EVENT_BYTES, "{escaped}");
    }
    let (_, records) = received(&intake);
    assert_eq!(records[0]["kube_audit_shipper"]["truncated"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_intake_fault_is_retried_and_loses_nothing() {
    // DESIGN.md §7 through the binary: each fault class once, separated by normal answers so
    // the backoff starts over each time (it doubles from 1 s on consecutive failures).
    let dir = workdir("faults");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(
        &dir,
        (1024 * 1024, 20, false),
        "batch_max_events: 40\nrequest_timeout_secs: 1\n",
    );
    let timeout_fault = Duration::from_millis(2500);
    let script = [
        Fault::Status(500),
        Fault::Pass,
        Fault::Status(502),
        Fault::Pass,
        Fault::Status(400),
        Fault::Pass,
        Fault::ResetMidBody,
        Fault::Pass,
        Fault::Delay(timeout_fault),
        Fault::Pass,
        Fault::RetryAfter(429, 2),
        Fault::Pass,
        Fault::RetryAfter(503, 1),
        Fault::Pass,
        Fault::Status(503), // no Retry-After: backoff
        Fault::Pass,
        Fault::Status(413),
    ];
    intake.script(script.clone());
    // The events are written first, so the spool holds more segments than the script has
    // steps and every step meets a real batch.
    let samples = samples();
    let ids: Vec<String> = (0..2000)
        .map(|i| {
            let (line, id) = fresh_event(&samples, 6, i);
            writer.write_line(&line);
            id
        })
        .collect();
    let log = dir.join("service.log");
    let child = start_logged(&cfg, &log);
    wait_delivered("every event", &intake, &ids, Duration::from_secs(90));
    let m = metrics(port);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));

    let mut requests = intake.requests();
    // In arrival order (the delayed answer is recorded after later requests).
    requests.sort_by_key(|r| r.at);
    assert!(intake.state.lock().unwrap().script.is_empty());
    let (events, records) = received(&intake);
    let dups = duplicates(&events);
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    eprintln!(
        "faults: {} events in {} requests, statuses {:?}…, {dups} duplicates, metrics: \
         accepted {} too_large {} busy {} failed {} split {}",
        ids.len(),
        requests.len(),
        &statuses[..statuses.len().min(24)],
        m["kas_send_attempts_total{outcome=\"accepted\"}"],
        m["kas_send_attempts_total{outcome=\"too_large\"}"],
        m["kas_send_attempts_total{outcome=\"busy\"}"],
        m["kas_send_attempts_total{outcome=\"failed\"}"],
        m["kas_segments_split_total"],
    );
    assert!(records.is_empty(), "records: {records:?}");
    // Only the batch whose answer came after the client's timeout may arrive twice.
    assert!(dups <= 40, "{dups} duplicates");
    assert_eq!(m["kas_send_attempts_total{outcome=\"too_large\"}"], 1);
    assert_eq!(m["kas_segments_split_total"], 1);
    assert_eq!(m["kas_send_attempts_total{outcome=\"busy\"}"], 3);
    // 500, 502, the reset and the timeout (the server's late 200 is not seen).
    assert_eq!(m["kas_send_attempts_total{outcome=\"failed\"}"], 4);
    // The 400: a permanent refusal, held aside while others pass, then accepted on retry.
    assert_eq!(m["kas_send_attempts_total{outcome=\"refused\"}"], 1);
    assert_eq!(m["kas_events_dead_lettered_total"], 0);
    assert_eq!(m["kas_send_attempts_total{outcome=\"key_refused\"}"], 0);
    // Retry-After is honoured: the next request comes no sooner than it asked.
    let mut honoured = 0;
    for pair in requests.windows(2) {
        if let Some(secs) = pair[0].retry_after {
            let waited = pair[1].at.duration_since(pair[0].at);
            assert!(
                waited >= Duration::from_secs(secs) - Duration::from_millis(50),
                "waited {waited:?} after Retry-After: {secs}"
            );
            honoured += 1;
        }
    }
    assert_eq!(honoured, 2);
    let text = std::fs::read_to_string(&log).unwrap();
    for said in [
        "HTTP 500",
        "HTTP 502",
        "HTTP 400",
        "intake busy",
        "split in two",
    ] {
        assert!(
            text.contains(said),
            "the log does not say {said:?}:\n{text}"
        );
    }
    assert!(
        !text.contains(&Options::default().key),
        "the key is in the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_absent_or_untrusted_intake_is_retried_and_sent_nothing() {
    // Connection refused, then a server whose certificate the configured CA did not sign:
    // both are transport failures (backoff, forever). Nothing may reach the untrusted server;
    // once the configuration is right, everything is delivered exactly once.
    let dir = workdir("transport");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let impostor = Emulator::start(&dir.join("impostor"), Options::default());
    let mut writer = AuditWriter::new(&dir.join("logs"), 1024 * 1024, 20, false);
    let port = free_port();
    let samples = samples();
    let ids: Vec<String> = (0..300)
        .map(|i| {
            let (line, id) = fresh_event(&samples, 7, i);
            writer.write_line(&line);
            id
        })
        .collect();
    let key = Options::default().key;
    let config_for = |url: &str, ca: &Path| {
        let path = config(
            &dir,
            &writer.path(),
            &intake,
            &key,
            &format!("metrics_address: 127.0.0.1:{port}\n"),
        );
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&intake.url, url)
            .replace(
                &intake.ca_file.display().to_string(),
                &ca.display().to_string(),
            );
        std::fs::write(&path, text).unwrap();
        path
    };
    let failed = || metrics(port)["kas_send_attempts_total{outcome=\"failed\"}"];
    let nobody = format!("https://127.0.0.1:{}", free_port());
    let log = dir.join("service.log");
    for (what, url) in [
        ("refused", nobody.as_str()),
        ("untrusted", impostor.url.as_str()),
    ] {
        let cfg = config_for(url, &intake.ca_file);
        let child = start_logged(&cfg, &log);
        wait_for(
            &format!("{what}: a failed attempt"),
            Duration::from_secs(20),
            || failed() >= 1,
        );
        let m = metrics(port);
        assert_eq!(
            m["kas_healthy"], 1,
            "{what}: one failure is not yet unhealthy"
        );
        let (code, _) = stop(child);
        assert_eq!(code, Some(0));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("sending failed"), "{what}: {text}");
        assert!(!text.contains(&key), "the key is in the log");
        if what == "untrusted" {
            assert!(text.to_lowercase().contains("certificate"), "{text}");
            assert!(impostor.state.lock().unwrap().connections > 0);
        }
    }
    assert!(
        impostor.events().is_empty(),
        "events sent to an untrusted server"
    );
    assert!(impostor.requests().is_empty());
    assert!(intake.events().is_empty());

    let cfg = config_for(&intake.url, &intake.ca_file);
    let child = start(&cfg);
    wait_delivered("delivery", &intake, &ids, Duration::from_secs(30));
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let (events, records) = received(&intake);
    assert!(events.values().all(|&n| n == 1), "duplicates");
    assert!(records.is_empty(), "{records:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_key_fails_health_keeps_everything_and_a_fixed_key_delivers_it() {
    // The three answers that mean "key or subscription refused" (DESIGN.md §7).
    for status in [401, 403, 422] {
        refused_key_then_fixed(status);
    }
}

fn refused_key_then_fixed(status: u16) {
    let dir = workdir(&format!("key-{status}"));
    let options = Options {
        wrong_key_status: status,
        ..Options::default()
    };
    let intake = Emulator::start(&dir.join("intake"), options);
    let mut writer = AuditWriter::new(&dir.join("logs"), 1024 * 1024, 20, false);
    let port = free_port();
    let extra = format!("metrics_address: 127.0.0.1:{port}\n");
    let cfg = config(&dir, &writer.path(), &intake, "wrong-key", &extra);
    let child = start(&cfg);
    let samples = samples();
    let ids: Vec<String> = (0..500)
        .map(|i| {
            let (line, id) = fresh_event(&samples, 4, i + u64::from(status) * 1000);
            writer.write_line(&line);
            id
        })
        .collect();
    wait_for("the key refusal", Duration::from_secs(20), || {
        metrics(port)["kas_intake_key_refused"] == u64::from(status)
    });
    let health = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("refuses the intake key"), "{health}");
    assert!(!health.contains("wrong-key"));
    // Not a reason to restart the process: liveness passes.
    let live = http(port, b"GET /livez HTTP/1.1\r\n\r\n");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert!(intake.events().is_empty());

    let cfg = config(
        &dir,
        &writer.path(),
        &intake,
        &Options::default().key,
        &extra,
    );
    let child = start(&cfg);
    wait_for(
        "delivery with the fixed key",
        Duration::from_secs(30),
        || {
            let (events, _) = received(&intake);
            ids.iter().all(|id| events.contains_key(id))
        },
    );
    assert!(http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A mount made by a test (root only), undone on drop even if the test fails.
struct Mounted(PathBuf);

impl Mounted {
    /// `mount` with these arguments, the target last; `None` when not permitted (not root).
    fn new(args: &[&str], target: &Path) -> Option<Mounted> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting {} needs root", target.display());
            return None;
        }
        std::fs::create_dir_all(target).unwrap();
        let status = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?} {}", target.display());
        Some(Mounted(target.to_owned()))
    }

    /// A bind mount of `dir` onto itself, made read-only.
    fn read_only(dir: &Path) -> Option<Mounted> {
        let m = Mounted::new(&["--bind", &dir.display().to_string()], dir)?;
        let status = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only {}", dir.display());
        Some(m)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` up to `leave` free bytes with a file; returns its path.
fn fill_disk(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
    path
}

/// The state directory after a failure: every segment a complete gzip stream, every
/// checkpoint file loadable, and, once the service has stopped (`stopped`), no temporary
/// file (while it runs, its next attempt may be writing one).
fn check_state_intact(state: &Path, stopped: bool) -> usize {
    let mut segments = 0;
    for entry in std::fs::read_dir(state.join("spool")).unwrap() {
        let spool = entry.unwrap().path();
        let tmp: Vec<_> = std::fs::read_dir(spool.join("tmp")).unwrap().collect();
        assert!(
            !stopped || tmp.is_empty(),
            "left in {}/tmp: {tmp:?}",
            spool.display()
        );
        for seg in std::fs::read_dir(&spool).unwrap() {
            let seg = seg.unwrap().path();
            if seg.is_file() {
                let body = std::fs::read(&seg).unwrap();
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap_or_else(|e| panic!("{}: {e}", seg.display()));
                segments += 1;
            }
        }
    }
    for entry in std::fs::read_dir(state).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "left: {}", path.display());
        if path.is_file() && name != "lock" && name != "filler" {
            // Loaded from a copy: a damaged file would be moved aside.
            let copy = state.parent().unwrap().join("checkpoint-copy");
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            std::fs::copy(&path, copy.join(&name)).unwrap();
            let (_, _, problem) =
                kube_audit_shipper::tail::cursor::Cursors::load(&copy, &name).unwrap();
            assert!(problem.is_none(), "{}: {problem:?}", path.display());
        }
    }
    segments
}

#[test]
fn a_full_disk_pauses_reading_and_resumes_without_loss_or_corruption() {
    let dir = workdir("enospc");
    let state = dir.join("state");
    let tmpfs_args = ["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"];
    let Some(_tmpfs) = Mounted::new(&tmpfs_args, &state) else {
        return;
    };
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(&dir, (1024 * 1024, 30, false), "batch_max_bytes: 16KiB\n");
    intake.force_status(Some(503));
    let log = dir.join("service.log");
    let mut child = start_logged(&cfg, &log);
    metrics(port);
    let filler = fill_disk(&state, 48 * 1024);
    let samples = samples();
    let mut ids = Vec::new();
    for i in 0..4000 {
        let (line, id) = fresh_event(&samples, 9, i);
        writer.write_line(&line);
        ids.push(id);
    }
    wait_for("a failed spool write", Duration::from_secs(30), || {
        let m = metrics(port);
        m["kas_spool_write_errors_total"] > 0 && m["kas_reader_paused"] == 1
    });
    let m = metrics(port);
    assert!(m["kas_lines_read_total"] < ids.len() as u64, "{m:?}");
    assert!(
        child.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "exited"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot write to the spool") && text.contains("No space left on device"),
        "{text}"
    );
    assert!(
        text.contains(&state.display().to_string()),
        "the path: {text}"
    );
    let health = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("spool cannot be written"), "{health}");
    let segments = check_state_intact(&state, false);

    // Space comes back and the intake with it: everything arrives, nothing is reported lost.
    std::fs::remove_file(&filler).unwrap();
    intake.force_status(None);
    wait_delivered("every event", &intake, &ids, Duration::from_secs(60));
    assert!(http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let (events, records) = received(&intake);
    let dups = duplicates(&events);
    eprintln!(
        "enospc: {} events, {segments} segments on the full disk, {} failed writes, {} failed \
         checkpoint saves, {dups} duplicates",
        ids.len(),
        m["kas_spool_write_errors_total"],
        m["kas_checkpoint_save_errors_total"]
    );
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(dups, 0);
    check_state_intact(&state, true);
    drop(_tmpfs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_state_dir_stops_the_start_clearly_and_is_survived_while_running() {
    let dir = workdir("readonly");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = rig(&dir, (1024 * 1024, 30, false), "");
    let log = dir.join("service.log");

    // At start: a clear error and exit 1, not a crash loop on half-made state.
    let Some(ro) = Mounted::read_only(&state) else {
        return;
    };
    let mut child = start_logged(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running on a read-only state_dir"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2), "the exit status of an error");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("state_dir") && text.contains("Read-only file system"),
        "{text}"
    );
    drop(ro);

    // While running: writes fail, reading pauses, nothing is lost once it is writable again.
    let samples = samples();
    let mut ids = Vec::new();
    let mut write = |from: u64, to: u64, ids: &mut Vec<String>| {
        for i in from..to {
            let (line, id) = fresh_event(&samples, 10, i);
            writer.write_line(&line);
            ids.push(id);
        }
    };
    let child = start_logged(&cfg, &log);
    write(0, 500, &mut ids);
    wait_delivered("the first events", &intake, &ids, Duration::from_secs(30));
    let ro = Mounted::read_only(&state).unwrap();
    write(500, 2500, &mut ids);
    wait_for("a failed spool write", Duration::from_secs(30), || {
        let m = metrics(port);
        m["kas_spool_write_errors_total"] > 0 && m["kas_reader_paused"] == 1
    });
    let m = metrics(port);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Read-only file system"), "{text}");
    let health = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.contains("spool cannot be written"), "{health}");
    drop(ro);
    wait_delivered("every event", &intake, &ids, Duration::from_secs(60));
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let (events, records) = received(&intake);
    let dups = duplicates(&events);
    eprintln!(
        "read-only: {} events, {} failed spool writes, {} failed checkpoint saves, {dups} \
         duplicates",
        ids.len(),
        m["kas_spool_write_errors_total"],
        m["kas_checkpoint_save_errors_total"]
    );
    assert!(records.is_empty(), "{records:?}");
    check_state_intact(&state, true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_reports_the_plan_and_each_problem_with_its_fix() {
    let dir = workdir("check");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let writer = AuditWriter::new(&dir.join("logs"), 1024 * 1024, 5, false);
    let run_check = |cfg: &Path| {
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let good = config(&dir, &writer.path(), &intake, &Options::default().key, "");
    let (code, out) = run_check(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("reachable over TLS (HTTP 200 to a GET, which stores nothing)"),
        "{out}"
    );
    assert!(intake.events().is_empty(), "check stored something: {out}");
    assert!(out.contains("matches"), "{out}");
    // check changes nothing: it says what `run` would create instead of creating it.
    let state = dir.join("state");
    assert!(!state.exists(), "check created {}", state.display());
    assert!(
        out.contains(&format!(
            "state_dir: {} does not exist; `run` will create it (mode 0700) in {} (writable \
             by this user)",
            state.display(),
            dir.display()
        )),
        "{out}"
    );
    assert!(out.contains("; `run` creates it)"), "{out}");

    // The Sekoia agent's own keys: one warning each (lines 8 and 9), and the check passes.
    let agent = config(
        &dir,
        &writer.path(),
        &intake,
        &Options::default().key,
        "EventBufferCacheSize: 200\nRemoteOptimizationRules: true\n",
    );
    let (code, out) = run_check(&agent);
    assert_eq!(code, Some(0), "{out}");
    let warning = format!(
        "  warning: config {}: {{}}: a key of the Sekoia Endpoint Agent; it has no effect here",
        agent.display()
    );
    for (key, rest) in [
        (
            "EventBufferCacheSize",
            " (the on-disk buffer here is `spool_max_bytes`) at line 8 column 1\n",
        ),
        (
            "RemoteOptimizationRules",
            " (rules are not fetched from the platform; copy them into `OptimizationRules`) at \
             line 9 column 1\n",
        ),
    ] {
        let line = warning.replace("{}", key) + rest;
        assert!(out.contains(&line), "{line:?} in {out}");
    }
    assert_eq!(out.matches("  warning: ").count(), 2, "{out}");

    let bad = config(&dir, &dir.join("nowhere/audit.log"), &intake, "wrong", "");
    let (code, out) = run_check(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refuses the key"), "{out}");
    assert!(out.contains("no file matches"), "{out}");
    assert!(
        !out.contains("wrong\n") && !out.contains(": wrong"),
        "{out}"
    );

    std::fs::write(
        &bad,
        "logfiles:\n  - filepath: /x\n    intakekey: {intake key}\n",
    )
    .unwrap();
    let (code, out) = run_check(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("placeholder") && out.contains("line 3"),
        "{out}"
    );

    // The key would cross the network in clear text.
    std::fs::write(
        &bad,
        "logfiles:\n  - filepath: /x\n    intakekey: k\nintake_url: http://intake.example:8080\n",
    )
    .unwrap();
    let (code, out) = run_check(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out,
        format!(
            "config {}: intake_url: plain http:// to \"intake.example\" would send the intake \
             key in clear text; http:// is accepted only for a loopback address (127.0.0.0/8, \
             ::1, localhost: tests, a local relay): use https:// at line 4 column 1\n",
            bad.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The user the service runs as in the permission tests: root reads through any mode, so as
/// root the service is started as `nobody` (65534), as the systemd unit's own user would be.
fn service_user() -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0).then_some(65534)
}

/// Makes `path` belong to the service user (when the tests run as root).
fn give_to_service_user(path: &Path) {
    if let Some(uid) = service_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `kube-audit-shipper ARGS` as the service user, with its stderr going to `log`.
fn spawn_as_service_user(args: &[&str], config: &Path, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    // The checkout may sit under a directory only its owner can enter (`mktemp -d` is
    // 0700): the service user runs a copy of the binary from the work dir instead.
    let exe = match (service_user(), config.parent()) {
        (Some(_), Some(dir)) => {
            let copy = dir.join("kube-audit-shipper-for-service-user");
            if !copy.exists() {
                std::fs::copy(bin(), &copy).unwrap();
                chmod(&copy, 0o755);
            }
            copy
        }
        _ => bin(),
    };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(uid) = service_user() {
        cmd.uid(uid).gid(uid);
    }
    cmd.spawn().unwrap()
}

/// A work dir the service user can use: the config, its state_dir and the CA are theirs or
/// readable to them.
fn permission_rig(name: &str) -> (PathBuf, Rig) {
    let dir = workdir(name);
    chmod(&dir, 0o755);
    let r = rig(&dir, (1024 * 1024, 5, false), "");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    give_to_service_user(&state);
    give_to_service_user(&r.cfg);
    (dir, r)
}

/// The service logs a lasting problem once, then at most every 30 s (it used to be every
/// scan, once a second): a slow machine may see the next line, never a flood.
fn assert_logged_once_per_period(log: &Path, needle: &str, since: Instant) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let n = text.lines().filter(|l| l.contains(needle)).count() as u64;
    let most = 1 + since.elapsed().as_secs() / 30;
    assert!(
        (1..=most).contains(&n),
        "{n} lines with {needle:?} in {:?} (expected 1 to {most}):\n{text}",
        since.elapsed()
    );
}

fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn an_unreadable_audit_directory_or_file_is_named_logged_sparingly_and_fails_health() {
    // Issue 12, items 5 and 6: a pipeline that ships nothing because it cannot read its
    // input names the path and the errno in `check`, in `run`'s log (rate-limited) and in
    // /healthz, and recovers by itself once the permissions are fixed.
    let (dir, r) = permission_rig("unreadable");
    let Rig {
        intake,
        mut writer,
        port,
        cfg,
    } = r;
    let samples = samples();
    let mut ids = Vec::new();
    for i in 0..200 {
        let (line, id) = fresh_event(&samples, 12, i);
        writer.write_line(&line);
        ids.push(id);
    }
    let logs = dir.join("logs");
    chmod(&logs, 0o000);

    // check: the directory and the errno, not "no file matches".
    let check_log = dir.join("check.log");
    let out = spawn_as_service_user(&["check", "--config"], &cfg, &check_log)
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let named = format!(
        "filepath {}: nothing can be read: {}: Permission denied (os error 13); run the \
         service as root, or give its user read access",
        writer.path().display(),
        logs.display()
    );
    assert!(text.contains(&named), "{text}");
    assert!(!text.contains("no file matches"), "{text}");

    // run: named in the log once (not every second), health fails after the grace,
    // liveness does not (a restart would not help).
    let log = dir.join("service.log");
    let started = Instant::now();
    let child = Service(Some(spawn_as_service_user(
        &["run", "--config"],
        &cfg,
        &log,
    )));
    wait_for("the input state", Duration::from_secs(10), || {
        metrics(port)["kas_input_state"] == 2
    });
    let logged = format!(
        "nothing can be read, nothing is shipped: {}: Permission denied (os error 13)",
        logs.display()
    );
    wait_for("health to fail", Duration::from_secs(15), || {
        http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503")
    });
    let health = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(health.contains("nothing can be read for "), "{health}");
    assert!(
        health.contains(&format!(
            "{}: Permission denied (os error 13)",
            logs.display()
        )),
        "{health}"
    );
    assert_eq!(metrics(port)["kas_healthy"], 0);
    assert!(http(port, b"GET /livez HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    assert_logged_once_per_period(&log, &logged, started);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert!(intake.events().is_empty());

    // The directory readable, the file not: one line in 5 s (it was one a second).
    chmod(&logs, 0o755);
    chmod(&writer.path(), 0o000);
    let log = dir.join("service-2.log");
    let started = Instant::now();
    let child = Service(Some(spawn_as_service_user(
        &["run", "--config"],
        &cfg,
        &log,
    )));
    std::thread::sleep(Duration::from_secs(5));
    let denied = format!(
        "{}: Permission denied (os error 13)",
        writer.path().display()
    );
    assert_logged_once_per_period(&log, &denied, started);
    assert_eq!(metrics(port)["kas_input_state"], 2);

    // Fixed: everything is delivered, health passes, the log says so.
    chmod(&writer.path(), 0o644);
    wait_delivered(
        "delivery after the fix",
        &intake,
        &ids,
        Duration::from_secs(30),
    );
    wait_for("health", Duration::from_secs(5), || {
        http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200")
    });
    assert_eq!(metrics(port)["kas_input_state"], 0);
    assert_eq!(metrics(port)["kas_files_followed"], 1);
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert_eq!(count_lines(&log, "following 1 file(s) now"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_filepath_that_matches_nothing_fails_health_after_unhealthy_after_secs() {
    // Issue 12, item 5: audit logging off (the directory does not exist) looks idle, not
    // healthy, once it has lasted `unhealthy_after_secs`.
    let dir = workdir("nomatch");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let port = free_port();
    let absent = dir.join("audit-logs");
    let cfg = config(
        &dir,
        &absent.join("audit.log"),
        &intake,
        &Options::default().key,
        &format!("metrics_address: 127.0.0.1:{port}\nunhealthy_after_secs: 2\n"),
    );
    let child = start(&cfg);
    assert_eq!(metrics(port)["kas_input_state"], 1);
    wait_for("health to fail", Duration::from_secs(10), || {
        http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503")
    });
    let health = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(
        health.contains(&format!(
            "{} does not exist; is audit logging on (kube-apiserver --audit-log-path",
            absent.display()
        )),
        "{health}"
    );
    assert!(health.contains("no file has matched for "), "{health}");
    // Audit logging turned on: followed, shipped, healthy.
    let mut writer = AuditWriter::new(&absent, 1024 * 1024, 5, false);
    let samples = samples();
    let (line, id) = fresh_event(&samples, 13, 0);
    writer.write_line(&line);
    wait_delivered("the first event", &intake, &[id], Duration::from_secs(20));
    wait_for("health", Duration::from_secs(5), || {
        http(port, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200")
    });
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
