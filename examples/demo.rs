//! The quick start: `cargo run --release --example demo`.
//!
//! Runs the real service (`kube-audit-shipper run`, release build, as a child process)
//! against a local HTTPS intake emulator (certificates made at start), while an
//! apiserver-like writer replays the real audit events of `tests/fixtures/` — fresh
//! auditIDs, current timestamps — into an `audit.log` that rotates and compresses the way
//! kube-apiserver's does. Then it stops the service with SIGTERM and prints what happened:
//! events written and received, lost (must be 0), duplicates, raw bytes → bytes on the wire,
//! and the service's CPU time and peak RSS (from wait4).
//!
//! Options (environment): DEMO_EVENTS (default 40000), DEMO_RATE events/s (default 4000),
//! DEMO_ROTATE_MB (default 4), DEMO_BACKUPS (default 5), DEMO_PACE (the events'
//! `requestReceivedTimestamp`: `now` (default) the time of writing; a number of milliseconds
//! between consecutive events; or `fixture`, the fixture's own times, a quiet cluster's
//! history, repeated end to end), DEMO_INTAKE_FORMAT (`array` (default) or `plain_batch`).
//! `benches/e2e.sh` runs it at ≥ 500 MB as fast as the writer goes, at three paces.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::apiserver::AuditWriter;
use support::intake::{Emulator, Options};

/// What the events' `requestReceivedTimestamp` is (DEMO_PACE).
enum Pace {
    /// The time of writing (as `fresh_event` sets it).
    Now,
    /// Consecutive events this many microseconds apart, ending about now.
    Every(i64),
    /// The fixture's own times (each sample's, from the earliest), its span repeated end
    /// to end.
    Fixture { offsets: Vec<i64>, span: i64 },
}

impl Pace {
    fn from_env(samples: &[String]) -> Pace {
        match std::env::var("DEMO_PACE").as_deref() {
            Err(_) | Ok("now") => Pace::Now,
            Ok("fixture") => {
                let times: Vec<i64> = samples
                    .iter()
                    .map(|s| {
                        support::apiserver::get_string(s, "requestReceivedTimestamp")
                            .and_then(kube_audit_shipper::timestamp::parse_micros)
                            .unwrap_or(0)
                    })
                    .collect();
                let first = times.iter().copied().min().unwrap_or(0);
                let last = times.iter().copied().max().unwrap_or(0);
                Pace::Fixture {
                    offsets: times.iter().map(|t| t - first).collect(),
                    span: last - first + 1_000_000,
                }
            }
            Ok(ms) => match ms.parse::<f64>() {
                Ok(ms) if ms > 0.0 => Pace::Every((ms * 1000.0) as i64),
                _ => panic!("DEMO_PACE: expected now, fixture or milliseconds, got {ms:?}"),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Pace::Now => "the time of writing".into(),
            Pace::Every(us) => format!("{} ms apart", *us as f64 / 1000.0),
            Pace::Fixture { .. } => "the fixture's own pace".into(),
        }
    }

    /// Sets event `i`'s times (the line is sample `i` made fresh).
    fn stamp(&self, line: &mut String, i: u64) {
        // A fixed origin: the same run of events gets the same times.
        let origin = 1_795_000_000_000_000;
        let t = match self {
            Pace::Now => return,
            Pace::Every(us) => origin + i as i64 * us,
            Pace::Fixture { offsets, span } => {
                let n = offsets.len().max(1) as u64;
                origin + (i / n) as i64 * span + offsets[(i % n) as usize]
            }
        };
        let t = kube_audit_shipper::timestamp::format_micros(t);
        support::apiserver::set_string(line, "requestReceivedTimestamp", &t);
        support::apiserver::set_string(line, "stageTimestamp", &t);
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let events = env_or("DEMO_EVENTS", 40_000);
    let rate = env_or("DEMO_RATE", 4_000).max(1);
    let rotate_mb = env_or("DEMO_ROTATE_MB", 4).max(1);
    let backups = env_or("DEMO_BACKUPS", 5) as usize;
    let intake_format = std::env::var("DEMO_INTAKE_FORMAT").unwrap_or_else(|_| "array".into());
    let work = std::env::temp_dir().join(format!("kube-audit-shipper-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work directory");

    eprintln!("building the release binary…");
    let binary = build_binary();

    let intake = Emulator::start(&work.join("intake"), Options::default());
    let key = Options::default().key;
    let logs = work.join("logs");
    let mut writer = AuditWriter::new(&logs, rotate_mb * 1024 * 1024, backups, true);
    let metrics_port = free_port();
    let config = work.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "logfiles:\n  - filepath: {}\n    intakekey: {key}\nintake_url: {}\nca_file: {}\n\
             state_dir: {}\nmetrics_address: 127.0.0.1:{metrics_port}\n\
             intake_format: {intake_format}\n",
            writer.path().display(),
            intake.url,
            intake.ca_file.display(),
            work.join("state").display()
        ),
    )
    .expect("config");
    // It holds a key: private, as the service expects (it warns otherwise).
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("config mode");
    let mut child = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start kube-audit-shipper");

    // Replay the real samples with fresh IDs and times, at `rate` events/s.
    let samples = support::corpus::samples();
    let pace = Pace::from_env(&samples);
    let mut written: HashMap<String, u32> = HashMap::new();
    let mut raw_bytes = 0u64;
    let started = Instant::now();
    eprintln!(
        "writing {events} audit events at {rate}/s into {} (rotating at {rotate_mb} MiB, {backups} gzip backups)…",
        writer.path().display()
    );
    for i in 0..events {
        let (mut line, identity) = support::apiserver::fresh_event(&samples, std::process::id(), i);
        pace.stamp(&mut line, i);
        *written.entry(identity).or_default() += 1;
        raw_bytes += line.len() as u64 + 1;
        writer.write_line(&line);
        let due = started + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let write_secs = started.elapsed().as_secs_f64();

    // Wait until every event arrived (or 120 s); counted from the accepted requests, which is
    // cheap (the event list itself is large).
    let deadline = Instant::now() + Duration::from_secs(120);
    let accepted = || -> usize {
        intake
            .requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.events)
            .sum()
    };
    while accepted() < written.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let pid = child.id() as libc::pid_t;
    // Idle: caught up, nothing to write; what a quiet node costs.
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN);
    let metrics = http_get(metrics_port, "/metrics");
    // SAFETY: signalling and reaping our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, usage) = wait4(pid);
    let _ = child.try_wait();

    let mut received: HashMap<String, u32> = HashMap::new();
    for e in intake.events() {
        let v = support::json(&e);
        let id = v["auditID"].as_str().unwrap_or_default();
        let stage = v["stage"].as_str().unwrap_or_default();
        *received.entry(format!("{id}/{stage}")).or_default() += 1;
    }
    let lost = written
        .keys()
        .filter(|k| !received.contains_key(*k))
        .count();
    let dups: u32 = received.values().map(|n| n.saturating_sub(1)).sum();
    let requests = intake.requests();
    let wire: usize = requests
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.body_bytes)
        .sum();
    let cpu = usage.ru_utime.tv_sec as f64
        + usage.ru_utime.tv_usec as f64 / 1e6
        + usage.ru_stime.tv_sec as f64
        + usage.ru_stime.tv_usec as f64 / 1e6;
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("kas_{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_string()
    };

    println!();
    println!("kube-audit-shipper demo — {}", binary.display());
    println!(
        "  audit log       {} events, {:.1} MB raw, {} rotations (gzip), {:.1} s of writing",
        written.len(),
        raw_bytes as f64 / 1e6,
        writer.rotations,
        write_secs
    );
    println!(
        "  intake received {} events in {} requests ({} accepted)",
        received.len(),
        requests.len(),
        requests.iter().filter(|r| r.status == 200).count()
    );
    println!(
        "  event times     {} · intake_format {intake_format}",
        pace.describe()
    );
    println!("  lost            {lost}");
    println!("  duplicates      {dups}");
    println!(
        "  raw → wire      {:.1} MB → {:.2} MB ({:.2}% of raw)",
        raw_bytes as f64 / 1e6,
        wire as f64 / 1e6,
        100.0 * wire as f64 / raw_bytes as f64
    );
    println!(
        "  service CPU     {cpu:.2} s ({:.2} CPU-s per GB of audit log)",
        cpu / (raw_bytes as f64 / 1e9)
    );
    println!(
        "  service peak RSS {:.1} MiB · idle RSS {:.1} MiB (3 s after catching up)",
        usage.ru_maxrss as f64 / 1024.0,
        idle_rss_kib / 1024.0
    );
    println!(
        "  delivered       all {} events {delivered_secs:.1} s after the first write ({:.0} events/s, {:.1} MB/s of raw log)",
        written.len(),
        written.len() as f64 / delivered_secs,
        raw_bytes as f64 / 1e6 / delivered_secs
    );
    println!(
        "  metrics         lines_read {} · shipped {} · filtered {} · rejected {} · gap records {}",
        metric("lines_read_total"),
        metric("events_shipped_total"),
        metric("events_filtered_total"),
        metric("lines_rejected_total"),
        metric("gap_records_total")
    );
    println!("  exit            {status} after SIGTERM");
    let _ = std::fs::remove_dir_all(&work);
    if lost > 0 || status != 0 {
        std::process::exit(1);
    }
}

/// Builds the release binary with the cargo that runs this example. `cargo run --example`
/// builds the library but not the service binary, whose fat-LTO link takes tens of seconds on
/// a small machine: cargo's progress goes to stderr so the wait is visible.
fn build_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!("demo: building the service (cargo build --release --bin kube-audit-shipper)");
    let started = Instant::now();
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "kube-audit-shipper"])
        .current_dir(manifest)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build failed");
    eprintln!(
        "demo: service built in {:.1} s; writing the audit log and shipping it",
        started.elapsed().as_secs_f64()
    );
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), PathBuf::from);
    target.join("release").join("kube-audit-shipper")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Waits for the child; its exit status and resource usage.
fn wait4(pid: libc::pid_t) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage)
}
