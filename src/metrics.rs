//! Metrics: counters shared by the reader and sender threads, exported in the Prometheus
//! text format on `/metrics`, and the `/healthz` verdict (DESIGN.md §2.5, §9).
//!
//! Accounting invariant (DESIGN.md §2.5), per log file and per run: every line read ends in
//! exactly one of
//!
//! ```text
//! lines_read = events_filtered + lines_rejected + lines_too_long + lines_spooled + lines_batched
//! ```
//!
//! where `lines_batched` are lines in a batch not yet sealed (zero after a clean stop), and
//! the spooled lines then end as shipped, evicted or quarantined (or still queued). Rejected
//! lines are still forwarded, wrapped and marked, so they are spooled and shipped as events
//! too; gap records are events of their own. Hence the spool-side counters count *events*
//! (`events_spooled = lines_spooled + lines_rejected + gap_records`), and a test checks the
//! sums (tests/e2e.rs).
//!
//! The endpoints run on [`crate::http`] with [`LIMITS`]: at most 4 connections, 5 s to
//! send a request, no request body. A slow or hostile client delays other scrapers by at
//! most that and never touches the pipeline, which only updates atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A counter or gauge.
#[derive(Debug, Default)]
pub struct Value(AtomicU64);

impl Value {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Attempts by outcome, in the order of [`crate::intake::Health::attempts`].
pub const ATTEMPT_OUTCOMES: [&str; 6] = [
    "accepted",
    "too_large",
    "busy",
    "key_refused",
    "failed",
    "refused",
];

/// The numbers of one `logfiles:` entry.
#[derive(Debug, Default)]
pub struct FileMetrics {
    pub file: String,
    // Reader side.
    pub lines_read: Value,
    pub bytes_read: Value,
    pub events_filtered: Value,
    /// Per rule, in config order: (rule name, events it ignored).
    pub rule_hits: Vec<(String, Value)>,
    /// Not an audit event (not JSON, not an object): forwarded wrapped and marked.
    pub lines_rejected: Value,
    /// Over `max_line_bytes`: skipped, reported by a gap record.
    pub lines_too_long: Value,
    pub lines_spooled: Value,
    pub events_truncated: Value,
    pub events_spooled: Value,
    pub batches_spooled: Value,
    pub bytes_spooled_raw: Value,
    pub bytes_spooled_wire: Value,
    pub gap_records: Value,
    /// Bytes of the audit log lost before they were read (rotation, truncation, too long).
    pub bytes_lost: Value,
    pub events_evicted: Value,
    pub segments_evicted: Value,
    pub spool_write_errors: Value,
    /// 1 while the last attempt to store a batch failed (disk full, read-only, …).
    pub spool_write_failing: Value,
    /// Failed checkpoint saves (retried; reading goes on, a restart re-reads more).
    pub checkpoint_save_errors: Value,
    pub reader_paused: Value,
    // Sender side.
    pub events_shipped: Value,
    pub segments_shipped: Value,
    pub bytes_wire_shipped: Value,
    pub segments_split: Value,
    pub segments_quarantined: Value,
    pub attempts: [Value; 6],
    pub key_refused: Value,
    /// Events of accepted segments without an id in the intake's answer.
    pub events_refused_by_intake: Value,
    /// Accepted segments whose answer was not `{"event_ids":[…]}`.
    pub segments_unconfirmed: Value,
    /// Single events refused twice and moved to `refused/` (or dropped at its cap).
    pub events_dead_lettered: Value,
    /// Of those, not kept: `refused/` was at its cap.
    pub dead_letters_dropped: Value,
    /// Bytes in `refused/`.
    pub refused_bytes: Value,
    /// HTTP status with which every request is refused (configuration), 0 otherwise.
    pub intake_refusing: Value,
    // Spool gauges (updated by the sender after each step).
    pub spool_bytes: Value,
    pub spool_critical_segments: Value,
    pub spool_bulk_segments: Value,
    /// Earliest event time of the next segment to send (unix µs), 0 when none.
    pub next_event_micros: Value,
    /// Last time (unix µs) the spool was empty or a segment was delivered.
    pub last_progress_micros: Value,
    /// Last time (unix µs) the sender loop came round (a step done, or a wait slice over).
    pub sender_beat_micros: Value,
    /// Whether the input can be read (set by the reader after each scan).
    pub input: Input,
}

/// The reader's view of its `filepath`, for `/healthz` and the metrics.
#[derive(Debug, Default)]
pub struct Input {
    /// Files open (current and rotated).
    pub files_followed: Value,
    /// Backups found with a key out of write order (the clock stepped backwards).
    pub out_of_order: Value,
    /// [`InputState`] as a number.
    pub state: Value,
    /// Since when (unix µs) `state` holds.
    pub since_micros: Value,
    /// The operator's explanation of a bad state (path, errno, what to do).
    pub reason: Mutex<String>,
}

/// See [`Input::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputState {
    Following = 0,
    /// No file matches (and nothing failed): audit logging off, or not there yet.
    NoMatch = 1,
    /// No file is followed and something could not be read.
    Blocked = 2,
}

/// How long nothing of a `filepath` may be readable before `/healthz` fails: long enough for
/// a rotation's instant without a current file, short against an operator's mistake.
pub const INPUT_GRACE: Duration = Duration::from_secs(10);

impl Input {
    /// Records the state and its explanation; the time it began moves only when the state
    /// itself changes (a new reason for the same state does not restart the grace).
    pub fn set(&self, state: InputState, now_micros: u64, reason: String) {
        match self.reason.lock() {
            Ok(mut r) => *r = reason,
            Err(poisoned) => *poisoned.into_inner() = reason,
        }
        if self.state.get() != state as u64 || self.since_micros.get() == 0 {
            self.state.set(state as u64);
            self.since_micros.set(now_micros);
        }
    }

    /// The explanation recorded with the current state.
    pub fn reason_text(&self) -> String {
        match self.reason.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl FileMetrics {
    pub fn new(file: &str, rules: &[String]) -> FileMetrics {
        let m = FileMetrics {
            file: file.to_string(),
            rule_hits: rules
                .iter()
                .map(|r| (r.clone(), Value::default()))
                .collect(),
            ..FileMetrics::default()
        };
        m.last_progress_micros.set(now_micros());
        m.sender_beat_micros.set(now_micros());
        m
    }

    fn spool_segments(&self) -> u64 {
        self.spool_critical_segments.get() + self.spool_bulk_segments.get()
    }
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug)]
pub struct Metrics {
    pub files: Vec<Arc<FileMetrics>>,
    pub unhealthy_after: Duration,
    pub started_micros: u64,
    /// Last time (unix µs) the reader loop came round.
    pub reader_beat_micros: Value,
    /// `/livez` fails when a loop has not come round for this long (see [`Metrics::liveness`]).
    pub stuck_after: Duration,
    /// The webhook input's own counters, when it is on.
    pub webhook: Option<Arc<crate::webhook::WebhookMetrics>>,
}

impl Metrics {
    pub fn new(files: Vec<Arc<FileMetrics>>, unhealthy_after: Duration) -> Metrics {
        let now = now_micros();
        let m = Metrics {
            files,
            unhealthy_after,
            started_micros: now,
            reader_beat_micros: Value::default(),
            stuck_after: Duration::from_secs(120),
            webhook: None,
        };
        m.reader_beat_micros.set(now);
        m
    }

    /// `Ok` while the process makes progress, else why not: the liveness verdict, for a
    /// supervisor that restarts the process (the kubelet's liveness probe). It fails only
    /// when a loop is stuck — the reader has not come back to its poll, or a sender to its
    /// next step, for [`Metrics::stuck_after`] — never for an outside problem (intake down,
    /// key refused, disk full, unreadable input) that a restart cannot fix: those fail
    /// `/healthz`, which is for alerting.
    pub fn liveness(&self, now_micros: u64) -> Result<(), String> {
        let limit = self.stuck_after.as_micros() as u64;
        let mut stuck = Vec::new();
        let reader = now_micros.saturating_sub(self.reader_beat_micros.get());
        if reader > limit {
            stuck.push(format!(
                "the reader loop has not come round for {} s",
                reader / 1_000_000
            ));
        }
        if let Some(w) = &self.webhook {
            let beat = now_micros.saturating_sub(w.beat_micros.get());
            if beat > limit {
                stuck.push(format!(
                    "the webhook's pipeline has not come round for {} s",
                    beat / 1_000_000
                ));
            }
        }
        for f in &self.files {
            let sender = now_micros.saturating_sub(f.sender_beat_micros.get());
            if sender > limit {
                stuck.push(format!(
                    "{}: the sender has not come round for {} s",
                    f.file,
                    sender / 1_000_000
                ));
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck.join("\n"))
        }
    }

    /// `Ok` when healthy, else every reason.
    pub fn health(&self, now_micros: u64) -> Result<(), String> {
        let mut problems = Vec::new();
        for f in &self.files {
            let code = f.key_refused.get();
            if code != 0 {
                problems.push(format!(
                    "{}: the intake refuses the intake key (HTTP {code})",
                    f.file
                ));
            }
            let code = f.intake_refusing.get();
            if code != 0 {
                problems.push(format!(
                    "{}: the intake refuses every request (HTTP {code}): check intake_url, \
                     region and proxy",
                    f.file
                ));
            }
            if f.spool_write_failing.get() == 1 {
                problems.push(format!(
                    "{}: the spool cannot be written (see the log); reading is paused",
                    f.file
                ));
            }
            if let Some(p) = self.input_problem(f, now_micros) {
                problems.push(p);
            }
            let stalled = now_micros.saturating_sub(f.last_progress_micros.get());
            if f.spool_segments() > 0 && stalled > self.unhealthy_after.as_micros() as u64 {
                problems.push(format!(
                    "{}: the spool ({} segments) has not drained for {} s",
                    f.file,
                    f.spool_segments(),
                    stalled / 1_000_000
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Nothing of the file's pattern has been readable for [`INPUT_GRACE`], or nothing has
    /// matched it for `unhealthy_after` (audit logging off).
    fn input_problem(&self, f: &FileMetrics, now_micros: u64) -> Option<String> {
        let state = f.input.state.get();
        let lasted = now_micros.saturating_sub(f.input.since_micros.get());
        if state == InputState::Blocked as u64 && lasted >= INPUT_GRACE.as_micros() as u64 {
            Some(format!(
                "{}: nothing can be read for {} s: {}",
                f.file,
                lasted / 1_000_000,
                f.input.reason_text()
            ))
        } else if state == InputState::NoMatch as u64
            && lasted > self.unhealthy_after.as_micros() as u64
        {
            Some(format!(
                "{}: no file has matched for {} s: {}",
                f.file,
                lasted / 1_000_000,
                f.input.reason_text()
            ))
        } else {
            None
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, now_micros: u64) -> String {
        let mut out = String::with_capacity(8192);
        type Get = fn(&FileMetrics) -> u64;
        let series: &[(&str, &str, &str, Get)] = &[
            (
                "lines_read_total",
                "counter",
                "Lines read from the audit log.",
                |f| f.lines_read.get(),
            ),
            (
                "bytes_read_total",
                "counter",
                "Bytes of audit log read.",
                |f| f.bytes_read.get(),
            ),
            (
                "events_filtered_total",
                "counter",
                "Events ignored by OptimizationRules.",
                |f| f.events_filtered.get(),
            ),
            (
                "lines_rejected_total",
                "counter",
                "Lines that are not audit events (forwarded wrapped and marked).",
                |f| f.lines_rejected.get(),
            ),
            (
                "lines_too_long_total",
                "counter",
                "Lines over max_line_bytes (skipped, reported as gaps).",
                |f| f.lines_too_long.get(),
            ),
            (
                "lines_spooled_total",
                "counter",
                "Audit events written to the spool.",
                |f| f.lines_spooled.get(),
            ),
            (
                "events_truncated_total",
                "counter",
                "Events trimmed to the intake's per-event limit (250,000 bytes).",
                |f| f.events_truncated.get(),
            ),
            (
                "events_spooled_total",
                "counter",
                "Events written to the spool (audit events, rejected lines, gap records).",
                |f| f.events_spooled.get(),
            ),
            (
                "batches_spooled_total",
                "counter",
                "Batches written to the spool.",
                |f| f.batches_spooled.get(),
            ),
            (
                "bytes_spooled_raw_total",
                "counter",
                "Uncompressed bytes of the spooled batches.",
                |f| f.bytes_spooled_raw.get(),
            ),
            (
                "bytes_spooled_wire_total",
                "counter",
                "Compressed bytes of the spooled batches.",
                |f| f.bytes_spooled_wire.get(),
            ),
            (
                "gap_records_total",
                "counter",
                "Gap records queued for the intake.",
                |f| f.gap_records.get(),
            ),
            (
                "bytes_lost_total",
                "counter",
                "Audit-log bytes lost before being read (lower bound).",
                |f| f.bytes_lost.get(),
            ),
            (
                "events_evicted_total",
                "counter",
                "Bulk events evicted under the spool cap.",
                |f| f.events_evicted.get(),
            ),
            (
                "segments_evicted_total",
                "counter",
                "Bulk segments evicted under the spool cap.",
                |f| f.segments_evicted.get(),
            ),
            (
                "spool_write_errors_total",
                "counter",
                "Failed spool writes (retried).",
                |f| f.spool_write_errors.get(),
            ),
            (
                "checkpoint_save_errors_total",
                "counter",
                "Failed checkpoint saves (retried).",
                |f| f.checkpoint_save_errors.get(),
            ),
            (
                "reader_paused",
                "gauge",
                "1 while reading is paused: the spool is full of critical events or cannot be written.",
                |f| f.reader_paused.get(),
            ),
            (
                "files_followed",
                "gauge",
                "Files of the filepath open for reading (the current one and rotated ones).",
                |f| f.input.files_followed.get(),
            ),
            (
                "generations_out_of_order_total",
                "counter",
                "Backups whose time in the name is before one already read (the node's clock stepped back): read anyway, after the one being read.",
                |f| f.input.out_of_order.get(),
            ),
            (
                "input_state",
                "gauge",
                "0 while a file is followed, 1 while no file matches, 2 while nothing can be read (see /healthz for why).",
                |f| f.input.state.get(),
            ),
            (
                "events_shipped_total",
                "counter",
                "Events the intake accepted (2xx).",
                |f| f.events_shipped.get(),
            ),
            (
                "segments_shipped_total",
                "counter",
                "Segments the intake accepted (2xx).",
                |f| f.segments_shipped.get(),
            ),
            (
                "bytes_wire_total",
                "counter",
                "Compressed bytes the intake accepted.",
                |f| f.bytes_wire_shipped.get(),
            ),
            (
                "segments_split_total",
                "counter",
                "Segments split after a 413.",
                |f| f.segments_split.get(),
            ),
            (
                "segments_quarantined_total",
                "counter",
                "Corrupt or unsendable segments quarantined.",
                |f| f.segments_quarantined.get(),
            ),
            (
                "intake_key_refused",
                "gauge",
                "HTTP status of the last key refusal, 0 when accepted.",
                |f| f.key_refused.get(),
            ),
            ("spool_bytes", "gauge", "Bytes in the spool.", |f| {
                f.spool_bytes.get()
            }),
            (
                "events_refused_by_intake_total",
                "counter",
                "Events of accepted segments that got no id in the intake's answer.",
                |f| f.events_refused_by_intake.get(),
            ),
            (
                "segments_unconfirmed_total",
                "counter",
                "Segments accepted (2xx) with an answer that is not {\"event_ids\":[...]}.",
                |f| f.segments_unconfirmed.get(),
            ),
            (
                "events_dead_lettered_total",
                "counter",
                "Single events the intake refused twice, moved to refused/ (or dropped at its cap).",
                |f| f.events_dead_lettered.get(),
            ),
            (
                "dead_letters_dropped_total",
                "counter",
                "Dead-lettered events not kept: refused/ was at its cap.",
                |f| f.dead_letters_dropped.get(),
            ),
            ("refused_bytes", "gauge", "Bytes in refused/.", |f| {
                f.refused_bytes.get()
            }),
            (
                "intake_refusing",
                "gauge",
                "HTTP status with which the intake refuses every request (configuration), 0 otherwise.",
                |f| f.intake_refusing.get(),
            ),
        ];
        for (name, kind, help, get) in series {
            family(&mut out, name, kind, help);
            for f in &self.files {
                sample(&mut out, name, &[("file", &f.file)], get(f));
            }
        }
        family(
            &mut out,
            "spool_segments",
            "gauge",
            "Segments in the spool, by class.",
        );
        for f in &self.files {
            for (class, v) in [
                ("critical", &f.spool_critical_segments),
                ("bulk", &f.spool_bulk_segments),
            ] {
                sample(
                    &mut out,
                    "spool_segments",
                    &[("file", &f.file), ("class", class)],
                    v.get(),
                );
            }
        }
        family(
            &mut out,
            "send_attempts_total",
            "counter",
            "POSTs to the intake, by outcome.",
        );
        for f in &self.files {
            for (outcome, v) in ATTEMPT_OUTCOMES.iter().zip(&f.attempts) {
                sample(
                    &mut out,
                    "send_attempts_total",
                    &[("file", &f.file), ("outcome", outcome)],
                    v.get(),
                );
            }
        }
        family(
            &mut out,
            "rule_ignored_total",
            "counter",
            "Events ignored, by OptimizationRules rule.",
        );
        for f in &self.files {
            for (rule, v) in &f.rule_hits {
                sample(
                    &mut out,
                    "rule_ignored_total",
                    &[("file", &f.file), ("rule", rule)],
                    v.get(),
                );
            }
        }
        family(
            &mut out,
            "backlog_age_seconds",
            "gauge",
            "Age of the oldest unsent event (by its time), 0 when the spool is empty.",
        );
        for f in &self.files {
            let t = f.next_event_micros.get();
            let age = if t == 0 {
                0
            } else {
                now_micros.saturating_sub(t) / 1_000_000
            };
            sample(&mut out, "backlog_age_seconds", &[("file", &f.file)], age);
        }
        if let Some(w) = &self.webhook {
            w.render(&mut out);
        }
        family(&mut out, "healthy", "gauge", "1 when /healthz passes.");
        sample(
            &mut out,
            "healthy",
            &[],
            u64::from(self.health(now_micros).is_ok()),
        );
        family(&mut out, "uptime_seconds", "gauge", "Seconds since start.");
        sample(
            &mut out,
            "uptime_seconds",
            &[],
            now_micros.saturating_sub(self.started_micros) / 1_000_000,
        );
        out
    }
}

pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP kas_{name} {help}\n# TYPE kas_{name} {kind}");
}

pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: u64) {
    out.push_str("kas_");
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in val.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&v.to_string());
    out.push('\n');
}

/// Scrapers and probes: a few at a time, one request per connection, each answered in one
/// short exchange.
pub const LIMITS: crate::http::Limits = crate::http::Limits {
    keep_alive: false,
    max_connections: 4,
    idle: Duration::from_secs(5),
    request: Duration::from_secs(5),
};

/// `/metrics`, `/healthz` and `/livez` over [`crate::http`]. The pipeline only updates
/// atomics, so a slow or hostile client never touches it.
pub struct Endpoints(pub Arc<Metrics>);

impl crate::http::Handler for Endpoints {
    fn body_limit(&self, _method: &str, _path: &str) -> usize {
        0
    }

    fn handle(&self, request: crate::http::Request) -> crate::http::Response {
        use crate::http::Response;
        if request.method != "GET" && request.method != "HEAD" {
            return Response::text(405, "only GET\n");
        }
        let verdict = |v: Result<(), String>| match v {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        };
        match request.path.as_str() {
            "/metrics" => Response {
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                ..Response::text(200, self.0.render(now_micros()))
            },
            "/healthz" => verdict(self.0.health(now_micros())),
            "/livez" => verdict(self.0.liveness(now_micros())),
            _ => Response::text(404, "try /metrics, /healthz or /livez\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_on_a_refused_key_and_a_stalled_spool() {
        let f = Arc::new(FileMetrics::new("/var/log/audit.log", &[]));
        let m = Metrics::new(vec![f.clone()], Duration::from_secs(60));
        let now = f.last_progress_micros.get();
        assert!(m.health(now).is_ok());
        f.spool_bulk_segments.set(3);
        assert!(m.health(now + 59_000_000).is_ok());
        let e = m.health(now + 61_000_000).unwrap_err();
        assert!(e.contains("has not drained for 61 s"), "{e}");
        f.spool_bulk_segments.set(0);
        assert!(m.health(now + 61_000_000).is_ok(), "an empty spool is fine");
        f.key_refused.set(401);
        let e = m.health(now).unwrap_err();
        assert!(e.contains("HTTP 401"), "{e}");
    }

    #[test]
    fn health_fails_when_nothing_can_be_read_after_a_grace_and_on_no_match_after_the_limit() {
        let f = Arc::new(FileMetrics::new("/var/log/audit.log", &[]));
        let m = Metrics::new(vec![f.clone()], Duration::from_secs(60));
        let t0 = 1_000_000_000;
        let why = "/var/log/kubernetes: Permission denied (os error 13)";
        f.input.set(InputState::Blocked, t0, why.to_string());
        assert!(m.health(t0 + 9_000_000).is_ok(), "within the grace");
        let e = m.health(t0 + 10_000_000).unwrap_err();
        assert_eq!(
            e,
            "/var/log/audit.log: nothing can be read for 10 s: \
             /var/log/kubernetes: Permission denied (os error 13)"
        );
        assert!(m.render(t0 + 10_000_000).contains("kas_healthy 0\n"));
        // A new reason for the same state: reported, the time kept.
        let file = "/var/log/kubernetes/audit.log: Permission denied (os error 13)";
        f.input
            .set(InputState::Blocked, t0 + 10_500_000, file.to_string());
        let e = m.health(t0 + 10_500_000).unwrap_err();
        assert!(e.contains("for 10 s: /var/log/kubernetes/audit.log"), "{e}");
        f.input
            .set(InputState::Following, t0 + 11_000_000, String::new());
        assert!(m.health(t0 + 11_000_000).is_ok());
        f.input.set(
            InputState::NoMatch,
            t0 + 12_000_000,
            "/var/log/kubernetes does not exist".into(),
        );
        assert!(m.health(t0 + 72_000_000).is_ok(), "up to unhealthy_after");
        let e = m.health(t0 + 73_000_000).unwrap_err();
        assert!(e.contains("no file has matched for 61 s"), "{e}");
    }

    #[test]
    fn liveness_fails_only_when_a_loop_is_stuck() {
        let f = Arc::new(FileMetrics::new("/var/log/audit.log", &[]));
        let mut m = Metrics::new(vec![f.clone()], Duration::from_secs(60));
        m.stuck_after = Duration::from_secs(30);
        let now = m.reader_beat_micros.get();
        f.sender_beat_micros.set(now);
        // Outside problems fail health, not liveness.
        f.key_refused.set(401);
        f.spool_write_failing.set(1);
        assert!(m.health(now).is_err());
        assert!(m.liveness(now + 30_000_000).is_ok());
        let e = m.liveness(now + 31_000_000).unwrap_err();
        assert!(
            e.contains("the reader loop has not come round for 31 s"),
            "{e}"
        );
        m.reader_beat_micros.set(now + 31_000_000);
        f.sender_beat_micros.set(now + 31_000_000);
        assert!(m.liveness(now + 31_000_000).is_ok());
        let e = m.liveness(now + 62_000_000).unwrap_err();
        assert!(
            e.contains("/var/log/audit.log: the sender has not come round"),
            "{e}"
        );
    }

    #[test]
    fn exposition_has_one_family_header_and_escaped_labels() {
        let f = Arc::new(FileMetrics::new(
            "/logs/\"odd\"\\name",
            &["kube-proxy".into()],
        ));
        f.lines_read.add(5);
        f.rule_hits[0].1.inc();
        let m = Metrics::new(vec![f], Duration::from_secs(60));
        let text = m.render(now_micros());
        assert!(text.contains("kas_lines_read_total{file=\"/logs/\\\"odd\\\"\\\\name\"} 5\n"));
        assert!(text.contains(
            "kas_rule_ignored_total{file=\"/logs/\\\"odd\\\"\\\\name\",rule=\"kube-proxy\"} 1\n"
        ));
        assert_eq!(
            text.matches("# TYPE kas_lines_read_total counter").count(),
            1
        );
        assert!(text.contains("kas_healthy 1\n"));
    }
}
