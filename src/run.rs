//! The service: wires tail → extract → filter → batch → spool on the reader thread, and
//! spool → intake on one sender thread per `logfiles:` entry (DESIGN.md §1, §2).
//!
//! Durability, end to end (DESIGN.md §2.1): a line's position is committed to the tailer only
//! when everything read before it in its file is durable — spooled, filtered, or accounted as
//! a loss. Critical and bulk batches interleave the lines of one file, so a file's commit point
//! is the *start* of its oldest line still waiting in an open batch or in a batch the spool
//! has not taken yet (full spool, disk error); with none waiting, the end of the last line
//! read. The tailer saves commits to disk after each spooled batch.
//!
//! Backpressure (DESIGN.md §2.4, §6): while a sealed batch cannot be stored (only critical
//! data left under the cap, or a write error) reading pauses; the tailer keeps scanning so a
//! rotated file stays open, and storing is retried every 200 ms.
//!
//! The reader thread sleeps in one mio poll on every tailer's inotify descriptor and a
//! signalfd (SIGTERM, SIGINT, SIGHUP), with the next batch deadline or rescan as timeout.
//! SIGTERM/SIGINT: seal the open batches, store them, commit, save, return — the sender may
//! be in the middle of a request; its segment stays in the spool and is sent again next time.

use crate::batch::{Batcher, IntakeFormat, Sealed, escape_event};
use crate::commit::{BatchMarks, Commits};
use crate::config::{Config, LogFile};
use crate::extract::{Event, Extractor, Format, MAX_EVENT_BYTES};
use crate::filter::{self, Rule};
use crate::intake::{Sender, Step};
use crate::metrics::{FileMetrics, INPUT_GRACE, InputState, Metrics, now_micros};
use crate::records::{self, Loss};
use crate::spool::{Class, Segment, Spool, Stored, classify};
use crate::tail::access::{AUDIT_LOG_OFF, Reading};
use crate::tail::{Position, TailConfig, TailEvent, Tailer};
use crate::timestamp::parse_micros;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How often a paused reader retries storing.
const RETRY_STORE: Duration = Duration::from_millis(200);
/// Longest sleep of the reader loop (the tailer also rescans on its own interval).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Commits of filtered-only progress are saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Least time between two reads woken by inotify. The API server writes line by line: without
/// this, every line would cost a wake-up, a read and a stat per file (measured with the demo:
/// 4,000 wake-ups/s made the loop, not the parsing, the main cost). Batches linger for
/// seconds anyway, and rotated files are held open, so the delay loses nothing.
const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(50);
/// After this long with nothing read and no batch open, freed memory goes back to the system.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(2);
/// Longest park of a waiting sender between two heartbeats.
const SENDER_BEAT: Duration = Duration::from_secs(10);
/// How long a stop waits for the senders to finish their current step.
const SENDER_GRACE: Duration = Duration::from_secs(2);

/// Warnings about single lines (not an audit event, over `max_line_bytes`) per file and
/// minute. A log full of garbage must not flood journald on a small node; every line is
/// still counted in the metrics and reported in-band, so only the log is thinned.
const LINE_WARNINGS_PER_MINUTE: u32 = 10;

/// The budget of [`LINE_WARNINGS_PER_MINUTE`].
struct LineWarnings {
    window: Instant,
    used: u32,
    held_back: u64,
}

impl LineWarnings {
    const WINDOW: Duration = Duration::from_secs(60);

    fn new() -> LineWarnings {
        LineWarnings {
            window: Instant::now(),
            used: 0,
            held_back: 0,
        }
    }

    /// Whether one more line warning about `file` may be logged now. Says so once when the
    /// budget runs out, and how many were held back when the next window's first one comes.
    fn allow(&mut self, file: &Path) -> bool {
        if self.window.elapsed() >= Self::WINDOW {
            if self.held_back > 0 {
                log::warn!(
                    "{}: {} more bad lines in the last minute were not logged one by one",
                    file.display(),
                    self.held_back
                );
            }
            *self = LineWarnings::new();
        }
        if self.used < LINE_WARNINGS_PER_MINUTE {
            self.used += 1;
            return true;
        }
        if self.held_back == 0 {
            log::warn!(
                "{}: more than {LINE_WARNINGS_PER_MINUTE} bad lines this minute; the rest are \
                 counted (kas_lines_rejected_total, kas_lines_too_long_total) and reported \
                 in-band, not logged one by one",
                file.display()
            );
        }
        self.held_back += 1;
        false
    }
}

/// The recurring problems [`Stage::complain`] logs, each on its own clock.
#[derive(Clone, Copy)]
enum Problem {
    SpoolFull = 0,
    SpoolWrite = 1,
    CheckpointSave = 2,
    /// Nothing of the `filepath` can be read (a directory or file refuses the service).
    InputBlocked = 3,
    /// Some file or directory cannot be read while others are followed.
    InputUnreadable = 4,
    /// No file matches the `filepath`.
    NoMatch = 5,
}

impl Problem {
    const COUNT: usize = 6;

    /// Least time between two logs of the problem. A missing audit log may be a choice
    /// (audit logging not turned on yet): said every 10 minutes, not every 30 s.
    fn period(self) -> Duration {
        match self {
            Problem::NoMatch => Duration::from_secs(600),
            _ => Duration::from_secs(30),
        }
    }
}

fn slot(class: Class) -> usize {
    match class {
        Class::Critical => 0,
        Class::Bulk => 1,
    }
}

/// Re-renders an event whose escaped form is over [`MAX_EVENT_BYTES`] (an `/array` entry)
/// until it fits. The output is at most `limit` bytes and its escaped form at most twice
/// that, so the second attempt, at half the limit, always fits; the first, scaled by how
/// much escaping grew this event, nearly always does and keeps more of it.
#[cold]
fn refit(event: &mut Event<'_>, format: Format, out: &mut Vec<u8>, escaped: &mut Vec<u8>) {
    let grown = escaped.len().saturating_sub(2).max(1) as u64;
    let scaled = (out.len() as u64 * (MAX_EVENT_BYTES as u64 - 1024) / grown) as usize;
    for limit in [scaled, MAX_EVENT_BYTES / 2] {
        out.clear();
        event.write_within(format, out, limit);
        if escape_event(escaped, out) <= MAX_EVENT_BYTES {
            return;
        }
    }
}

/// A sealed batch on its way to the spool.
struct Pending {
    sealed: Sealed,
    marks: BatchMarks,
    /// Audit lines in it (the rest are records).
    lines: u64,
}

/// Everything of one log file's pipeline except the tailer (so the tailer's callback can
/// borrow it mutably).
struct Stage {
    extractor: Extractor,
    batcher: Batcher,
    spool: Arc<Mutex<Spool>>,
    format: Format,
    rules: Vec<Rule>,
    m: Arc<FileMetrics>,
    host: String,
    out: Vec<u8>,
    /// `/array`: `out` as a JSON string, the form the batcher takes.
    escaped: Vec<u8>,
    raw: Vec<u8>,
    commits: Commits,
    open_lines: [u64; 2],
    backlog: VecDeque<Pending>,
    evicted: Vec<Segment>,
    /// Something was spooled since the last save.
    stored: bool,
    /// Positions moved without a batch (filtered lines) since the last save.
    moved: bool,
    sender: Option<Thread>,
    /// When each recurring problem was last logged, by [`Problem`].
    last_error_log: [Option<Instant>; Problem::COUNT],
    line_warnings: LineWarnings,
    /// An input problem was logged (so its end is, too).
    input_complained: bool,
}

struct Pipeline {
    name: String,
    tailer: Tailer,
    stage: Stage,
    last_save: Instant,
    /// What [`Pipeline::observe_input`] last published.
    last_reading: Option<Reading>,
}

impl Stage {
    fn handle(&mut self, ev: TailEvent<'_>) {
        match ev {
            TailEvent::Line {
                buf,
                len,
                path,
                offset,
                pos,
            } => {
                self.m.lines_read.inc();
                self.m.bytes_read.add(pos.end - offset);
                self.line(buf, len, path, offset, pos);
            }
            TailEvent::TooLong {
                path,
                offset,
                len,
                pos,
            } => {
                self.m.lines_read.inc();
                self.m.bytes_read.add(pos.end - offset);
                self.m.lines_too_long.inc();
                self.m.bytes_lost.add(len);
                if self.line_warnings.allow(path) {
                    log::warn!(
                        "{}: line at offset {offset} is {len} bytes, over max_line_bytes; \
                         skipped and reported as a gap",
                        path.display()
                    );
                }
                let loss = Loss {
                    reason: "line_too_long",
                    file: path,
                    bytes: len,
                    exact: true,
                    events: Some(1),
                    offset: Some(offset),
                    first_event_at: None,
                    window: None,
                    detail: None,
                };
                self.record(&loss, Some((pos.serial, offset, pos.end)));
            }
            TailEvent::Gap(gap) => {
                self.m.bytes_lost.add(gap.bytes);
                log::warn!("gap: {gap}");
                let unseen;
                let (reason, detail) = match &gap.reason {
                    crate::tail::GapReason::Deleted => ("deleted_before_read", None),
                    crate::tail::GapReason::Truncated => ("truncated", None),
                    crate::tail::GapReason::Unreadable(e) => ("unreadable", Some(e.as_str())),
                    crate::tail::GapReason::Unseen { files } => {
                        unseen = format!("{files} file(s) rotated and deleted unseen");
                        ("deleted_unseen", Some(unseen.as_str()))
                    }
                };
                let loss = Loss {
                    reason,
                    file: &gap.path,
                    bytes: gap.bytes,
                    exact: gap.exact,
                    events: None,
                    offset: (!matches!(gap.reason, crate::tail::GapReason::Unseen { .. }))
                        .then_some(gap.offset),
                    first_event_at: None,
                    window: gap.lost_until.map(|until| (gap.lost_from, until)),
                    detail,
                };
                self.record(&loss, None);
            }
        }
    }

    fn line(&mut self, buf: &mut [u8], len: usize, path: &Path, offset: u64, pos: Position) {
        // The parser rewrites the line in place: keep the bytes for a line that is not an
        // event (forwarded as is) and for the raw output form.
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        self.out.clear();
        let max = self.extractor.max_event_bytes();
        let (class, ts, is_event) = match self.extractor.parse(buf, len) {
            Ok(mut event) => {
                if let Some(i) = filter::ignored_by(&self.rules, &event) {
                    self.m.events_filtered.inc();
                    self.m.rule_hits[i].1.inc();
                    self.commits.settled(pos.serial, pos.end);
                    self.moved = true;
                    return;
                }
                let class = classify(&event);
                let ts = event.request_received().and_then(parse_micros);
                let format = match self.format {
                    Format::Raw => Format::Audit,
                    f => f,
                };
                let mut truncated = false;
                if self.format == Format::Raw && self.raw.len() <= max {
                    self.out.extend_from_slice(&self.raw);
                } else {
                    truncated = event.write(format, &mut self.out).truncated;
                }
                // `/array`: the limit holds for the event as a JSON string, which escaping
                // makes longer (at most twice, `json_string_of_bytes`).
                if self.batcher.format() == IntakeFormat::Array
                    && escape_event(&mut self.escaped, &self.out) > MAX_EVENT_BYTES
                {
                    refit(&mut event, format, &mut self.out, &mut self.escaped);
                    truncated = true;
                }
                if truncated {
                    self.m.events_truncated.inc();
                }
                (class, ts, true)
            }
            Err(e) => {
                let e = e.pinpoint(&self.raw);
                self.m.lines_rejected.inc();
                if self.line_warnings.allow(path) {
                    log::warn!(
                        "{}: line at offset {offset} is not an audit event ({e}); forwarded as \
                         an unparsed record",
                        path.display()
                    );
                }
                // Escaped, a record at most doubles: half the limit keeps it within.
                let room = match self.batcher.format() {
                    IntakeFormat::Array => MAX_EVENT_BYTES / 2,
                    IntakeFormat::PlainBatch => max,
                };
                records::unparsed(
                    &mut self.out,
                    &self.host,
                    path,
                    offset,
                    &e.to_string(),
                    &self.raw,
                    room,
                );
                self.escaped.clear();
                // Unknown content: never evicted. Its time is when it was read (in `/array`
                // it is the entry's own; `/plain/batch` keeps the batch's events' time).
                let read_at = match self.batcher.format() {
                    IntakeFormat::Array => Some(now_micros() as i64),
                    IntakeFormat::PlainBatch => None,
                };
                (Class::Critical, read_at, false)
            }
        };
        self.add(class, ts, Some((pos.serial, offset, pos.end)), is_event);
    }

    /// Queues a gap record.
    fn record(&mut self, loss: &Loss<'_>, mark: Option<(u64, u64, u64)>) {
        let now = now_micros() as i64;
        self.out.clear();
        self.escaped.clear();
        records::gap(&mut self.out, &self.host, loss, now);
        self.m.gap_records.inc();
        self.add(
            Class::Critical,
            Some(
                loss.first_event_at
                    .or(loss.window.and_then(|w| w.0))
                    .unwrap_or(now),
            ),
            mark,
            false,
        );
    }

    /// Adds `self.out` to the batch of `class`; `mark` is the line's (file, start, end);
    /// `is_event`: an audit event (counted as a spooled line), not a record.
    fn add(
        &mut self,
        class: Class,
        ts: Option<i64>,
        mark: Option<(u64, u64, u64)>,
        is_event: bool,
    ) {
        let k = slot(class);
        let body_form = match self.batcher.format() {
            IntakeFormat::PlainBatch => &self.out,
            IntakeFormat::Array => {
                // Events come escaped from `line`; records (small, see `line`) are here.
                if self.escaped.is_empty() {
                    escape_event(&mut self.escaped, &self.out);
                }
                &self.escaped
            }
        };
        match self.batcher.add(class, body_form, ts, Instant::now()) {
            Ok(Some(sealed)) => self.seal(k, sealed),
            Ok(None) => {}
            // Compressing into memory does not fail; if it ever does, the batch is gone and
            // the positions are not committed: the lines are read again after a restart.
            Err(e) => log::error!("batching failed: {e}"),
        }
        if let Some((serial, start, end)) = mark {
            self.commits.batched(k, serial, start, end);
        }
        if is_event {
            self.open_lines[k] += 1;
        }
    }

    /// A batch of slot `k` was sealed: hand it to the spool with its marks.
    fn seal(&mut self, k: usize, sealed: Sealed) {
        let marks = self.commits.seal(k);
        let lines = std::mem::take(&mut self.open_lines[k]);
        self.backlog.push_back(Pending {
            sealed,
            marks,
            lines,
        });
        self.flush();
    }

    /// Stores waiting batches in order until the spool refuses one.
    fn flush(&mut self) {
        while let Some(p) = self.backlog.front() {
            let result = {
                let mut spool = match self.spool.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let r = spool.store(&p.sealed);
                self.evicted.extend(spool.take_evicted());
                r
            };
            match result {
                Ok(Stored::Written(_)) => {
                    self.m.spool_write_failing.set(0);
                    let m = &self.m;
                    m.events_spooled.add(u64::from(p.sealed.events));
                    m.lines_spooled.add(p.lines);
                    m.batches_spooled.inc();
                    m.bytes_spooled_raw.add(p.sealed.raw_bytes);
                    m.bytes_spooled_wire.add(p.sealed.gz.len() as u64);
                    self.backlog.pop_front();
                    self.stored = true;
                    if let Some(t) = &self.sender {
                        t.unpark();
                    }
                }
                Ok(Stored::Full) => {
                    self.complain(Problem::SpoolFull, || {
                        "spool full of critical events: reading paused until the intake takes \
                         some (the audit log is the buffer meanwhile)"
                            .to_string()
                    });
                    break;
                }
                Err(e) => {
                    self.m.spool_write_errors.inc();
                    self.m.spool_write_failing.set(1);
                    self.complain(Problem::SpoolWrite, || {
                        format!("cannot write to the spool: {e}; retrying")
                    });
                    break;
                }
            }
        }
        self.m
            .reader_paused
            .set(u64::from(!self.backlog.is_empty()));
    }

    /// Logs a recurring problem at most every [`Problem::period`] (each kind on its own
    /// clock, so one does not hide another).
    fn complain(&mut self, problem: Problem, what: impl FnOnce() -> String) {
        let last = &mut self.last_error_log[problem as usize];
        if last.is_none_or(|t| t.elapsed() >= problem.period()) {
            log::error!("{}", what());
            *last = Some(Instant::now());
        }
    }

    /// Turns evicted segments into gap records (which may seal and evict more).
    fn report_evictions(&mut self) {
        while !self.evicted.is_empty() {
            for seg in std::mem::take(&mut self.evicted) {
                self.m.events_evicted.add(u64::from(seg.events));
                self.m.segments_evicted.inc();
                let name = seg.file_name();
                let file = PathBuf::from(&self.m.file);
                let loss = Loss {
                    reason: "evicted",
                    file: &file,
                    bytes: seg.bytes,
                    exact: true,
                    events: Some(u64::from(seg.events)),
                    offset: None,
                    first_event_at: seg.earliest,
                    window: None,
                    detail: Some(&name),
                };
                self.record(&loss, None);
            }
        }
    }

    /// Seals batches that have lingered long enough.
    fn seal_due(&mut self, now: Instant) {
        match self.batcher.due(now) {
            Ok(batches) => {
                for b in batches {
                    self.seal(slot(b.class), b);
                }
            }
            Err(e) => log::error!("batching failed: {e}"),
        }
    }

    /// Where each file may be committed now (see [`crate::commit`]).
    fn commit_points(&mut self) -> Vec<Position> {
        self.commits.points(self.backlog.iter().map(|p| &p.marks))
    }
}

impl Pipeline {
    fn open(cfg: &Config, logfile: &LogFile, host: &str) -> Result<Pipeline, String> {
        let mut tc = TailConfig::new(&logfile.filepath, &cfg.state_dir);
        tc.start_at = cfg.start_at;
        tc.max_line = cfg.max_line_bytes;
        let id = tc
            .checkpoint_name
            .trim_start_matches("checkpoints-")
            .to_string();
        let spool_dir = spool_dir(&cfg.state_dir, &logfile.filepath);
        let spool = Spool::open(&spool_dir, cfg.spool_share())
            .map_err(|e| format!("spool {}: {e}", spool_dir.display()))?;
        if !spool.is_empty() {
            log::info!(
                "{}: {} segments ({} bytes) left in the spool; sending them first",
                logfile.filepath,
                spool.segments(Class::Critical) + spool.segments(Class::Bulk),
                spool.bytes()
            );
        }
        let (tailer, problem) =
            Tailer::open(tc).map_err(|e| format!("{}: {e}", logfile.filepath))?;
        match problem {
            Some(crate::tail::cursor::LoadProblem::Missing) => log::info!(
                "{}: no checkpoint yet (state {id}); starting at the {}",
                logfile.filepath,
                match cfg.start_at {
                    crate::tail::StartAt::Beginning => "beginning",
                    crate::tail::StartAt::End => "end",
                }
            ),
            Some(crate::tail::cursor::LoadProblem::Corrupt { reason, moved_to }) => {
                log::error!(
                    "{}: checkpoint damaged ({reason}); moved to {}; starting over",
                    logfile.filepath,
                    moved_to.display()
                )
            }
            None => {}
        }
        let rules: Vec<String> = logfile.rules.iter().map(|r| r.name.clone()).collect();
        let m = Arc::new(FileMetrics::new(&logfile.filepath, &rules));
        let mut pipeline = Pipeline {
            name: logfile.filepath.clone(),
            tailer,
            stage: Stage {
                extractor: Extractor::new(),
                batcher: Batcher::with_format(cfg.batch, cfg.intake_format, &logfile.key),
                spool: Arc::new(Mutex::new(spool)),
                format: cfg.format,
                rules: logfile.rules.clone(),
                m,
                host: host.to_string(),
                out: Vec::new(),
                escaped: Vec::new(),
                raw: Vec::new(),
                commits: Commits::default(),
                open_lines: [0, 0],
                backlog: VecDeque::new(),
                evicted: Vec::new(),
                stored: false,
                moved: false,
                sender: None,
                last_error_log: [None; Problem::COUNT],
                line_warnings: LineWarnings::new(),
                input_complained: false,
            },
            last_save: Instant::now(),
            last_reading: None,
        };
        // Health and the log know the input's state from the start, before /metrics serves.
        pipeline.observe_input();
        Ok(pipeline)
    }

    /// Reads what is there (up to a budget), seals what is due, stores, commits.
    /// Returns whether more is waiting to be read at once.
    fn step(&mut self) -> bool {
        let stage = &mut self.stage;
        stage.flush();
        self.tailer.set_paused(!stage.backlog.is_empty());
        let polled = self.tailer.poll(|ev| stage.handle(ev));
        stage.seal_due(Instant::now());
        stage.report_evictions();
        self.commit(false);
        self.observe_input();
        polled.more && self.stage.backlog.is_empty()
    }

    /// Publishes whether the `filepath` can be read (health) and logs what cannot,
    /// rate-limited: an operator's mistake (permissions, audit logging off) must be visible,
    /// and a scan every second must not turn it into a flood.
    fn observe_input(&mut self) {
        let now = now_micros();
        let access = self.tailer.access();
        let reading = access.reading();
        let also_unreadable = access.unreadable.first().cloned();
        let m = self.stage.m.clone();
        m.input.files_followed.set(access.following as u64);
        m.input.out_of_order.set(self.tailer.anomalies());
        let was = m.input.state.get();
        let pattern = &self.name;
        let state = match &reading {
            Reading::Following => InputState::Following,
            Reading::NoMatch { .. } => InputState::NoMatch,
            Reading::Blocked(_) => InputState::Blocked,
        };
        if self.last_reading.as_ref() != Some(&reading) {
            m.input.set(state, now, describe_input(pattern, &reading));
            self.last_reading = Some(reading.clone());
        }
        let lasted = Duration::from_micros(now.saturating_sub(m.input.since_micros.get()));
        match reading {
            Reading::Following => {
                if was != InputState::Following as u64 && self.stage.input_complained {
                    log::info!(
                        "{pattern}: following {} file(s) now",
                        m.input.files_followed.get()
                    );
                }
                self.stage.input_complained = false;
                if let Some(u) = also_unreadable {
                    self.stage.complain(Problem::InputUnreadable, || {
                        format!("{pattern}: cannot read {u}; {}", u.hint())
                    });
                }
            }
            Reading::Blocked(_) => {
                self.stage.input_complained = true;
                self.stage.complain(Problem::InputBlocked, || {
                    format!(
                        "{pattern}: nothing can be read, nothing is shipped: {}",
                        m.input.reason_text()
                    )
                });
            }
            // A rotation can leave no current file for an instant: only a lasting absence
            // is worth a line.
            Reading::NoMatch { .. } if lasted >= INPUT_GRACE => {
                self.stage.input_complained = true;
                self.stage.complain(Problem::NoMatch, || {
                    format!("{pattern}: {}; waiting for it", m.input.reason_text())
                });
            }
            Reading::NoMatch { .. } => {}
        }
    }

    fn commit(&mut self, force: bool) {
        let stage = &mut self.stage;
        let due = stage.stored || (stage.moved && self.last_save.elapsed() >= SAVE_EVERY);
        if !(due || force) {
            return;
        }
        for pos in stage.commit_points() {
            self.tailer.commit(pos);
        }
        match self.tailer.save() {
            Ok(()) => {
                stage.stored = false;
                stage.moved = false;
                self.last_save = Instant::now();
            }
            Err(e) => {
                stage.m.checkpoint_save_errors.inc();
                stage.complain(Problem::CheckpointSave, || {
                    format!("cannot save the checkpoint: {e}; retrying")
                });
            }
        }
    }

    /// Stop: seal and store what is open, commit, save.
    fn finish(&mut self) {
        let stage = &mut self.stage;
        match stage.batcher.seal_all() {
            Ok(batches) => {
                for b in batches {
                    stage.seal(slot(b.class), b);
                }
            }
            Err(e) => log::error!("batching failed: {e}"),
        }
        stage.report_evictions();
        if let Ok(batches) = stage.batcher.seal_all() {
            for b in batches {
                stage.seal(slot(b.class), b);
            }
        }
        if !stage.backlog.is_empty() {
            log::warn!(
                "{}: {} batches could not be spooled (spool full); their lines stay uncommitted \
                 and are read again at the next start",
                self.name,
                stage.backlog.len()
            );
        }
        self.commit(true);
    }

    fn deadline(&self) -> Option<Instant> {
        self.stage.batcher.next_deadline()
    }
}

/// The operator's explanation of a `filepath` that cannot be read or matches nothing (for
/// the log and `/healthz`).
fn describe_input(pattern: &str, reading: &Reading) -> String {
    match reading {
        Reading::Following => String::new(),
        Reading::Blocked(u) => format!("{u}; {}", u.hint()),
        Reading::NoMatch { missing: Some(dir) } => {
            format!("{} does not exist; {AUDIT_LOG_OFF}", dir.display())
        }
        Reading::NoMatch { missing: None } => format!("no file matches {pattern}; {AUDIT_LOG_OFF}"),
    }
}

/// Where the spool of a log file lives: `<state_dir>/spool/<id of the file pattern>`.
pub fn spool_dir(state_dir: &Path, filepath: &str) -> PathBuf {
    let tc = TailConfig::new(filepath, state_dir);
    state_dir
        .join("spool")
        .join(tc.checkpoint_name.trim_start_matches("checkpoints-"))
}

/// The sender loop of one log file: deliver, update the metrics, wait as told.
fn send_loop(
    mut sender: Sender,
    spool: Arc<Mutex<Spool>>,
    m: Arc<FileMetrics>,
    stop: Arc<AtomicBool>,
) {
    // Gap records the sender spooled (refusals): events of the spool like the reader's.
    let mut records = 0;
    while !stop.load(Ordering::SeqCst) {
        m.sender_beat_micros.set(now_micros());
        let step = sender.deliver_next(&spool);
        let h = &sender.health;
        let new_records = h.records_spooled - records;
        records = h.records_spooled;
        m.gap_records.add(new_records);
        m.events_spooled.add(new_records);
        m.events_refused_by_intake.set(h.events_refused);
        m.segments_unconfirmed.set(h.segments_unconfirmed);
        m.events_dead_lettered.set(h.events_dead_lettered);
        m.intake_refusing
            .set(u64::from(h.intake_refusing.unwrap_or(0)));
        m.events_shipped.set(h.delivered_events);
        m.segments_shipped.set(h.delivered_segments);
        m.bytes_wire_shipped.set(h.delivered_bytes);
        m.segments_split.set(h.split_segments);
        m.key_refused.set(u64::from(h.key_refused.unwrap_or(0)));
        for (v, n) in m.attempts.iter().zip(h.attempts) {
            v.set(n);
        }
        {
            let s = match spool.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            m.spool_bytes.set(s.bytes());
            m.spool_critical_segments
                .set(s.segments(Class::Critical) as u64);
            m.spool_bulk_segments.set(s.segments(Class::Bulk) as u64);
            m.segments_quarantined.set(s.stats.quarantined);
            m.dead_letters_dropped.set(s.stats.dead_letters_dropped);
            m.refused_bytes.set(s.refused_bytes());
            m.next_event_micros.set(
                s.next()
                    .and_then(|seg| seg.earliest)
                    .map_or(0, |t| t.max(0) as u64),
            );
        }
        match step {
            Step::Progress => m.last_progress_micros.set(now_micros()),
            Step::Idle => {
                m.last_progress_micros.set(now_micros());
                // Woken by the reader after it stores a batch.
                thread::park_timeout(Duration::from_secs(1));
            }
            Step::Wait(d) => {
                let until = Instant::now() + d;
                while !stop.load(Ordering::SeqCst) {
                    // A backoff lasts up to minutes: beat in slices, for /livez.
                    m.sender_beat_micros.set(now_micros());
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    thread::park_timeout(left.min(SENDER_BEAT));
                }
            }
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and read from a signalfd.
struct Signals(OwnedFd);

impl Signals {
    /// Must run before any thread is started (threads inherit the mask).
    fn block() -> io::Result<Signals> {
        // SAFETY: plain libc calls on a local, initialised signal set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals(OwnedFd::from_raw_fd(fd)))
        }
    }

    /// The signals received since the last call.
    fn take(&self) -> Vec<i32> {
        let mut got = Vec::new();
        loop {
            // SAFETY: reading into a properly sized, zeroed signalfd_siginfo.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return got;
            }
            got.push(info.ssi_signo as i32);
        }
    }
}

/// Holds the state directory for this process (a second instance would corrupt it).
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, String> {
    crate::durable::create_dir(dir).map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "state_dir {} is in use by another kube-audit-shipper (lock {})",
            dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Runs the service until SIGTERM/SIGINT. Errors are for the operator (start-up problems).
pub fn run(cfg: &Config) -> Result<(), String> {
    let signals = Signals::block().map_err(|e| format!("signals: {e}"))?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let host = records::hostname();
    let mut pipelines = Vec::new();
    for logfile in &cfg.logfiles {
        pipelines.push(Pipeline::open(cfg, logfile, &host)?);
    }
    let mut metrics = Metrics::new(
        pipelines.iter().map(|p| p.stage.m.clone()).collect(),
        cfg.unhealthy_after,
    );
    // A sender's step is at most one request (bounded by the timeout) and a few spool
    // writes; a reader's step is a bounded read and a few spool writes.
    metrics.stuck_after =
        (cfg.request_timeout * 2 + Duration::from_secs(60)).max(Duration::from_secs(120));
    let metrics = Arc::new(metrics);
    if let Some(addr) = cfg.metrics_address {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("metrics_address {addr}: {e}"))?;
        let metrics = metrics.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics::serve(listener, metrics))
            .map_err(|e| format!("metrics thread: {e}"))?;
        log::info!("metrics on http://{addr}/metrics, health on /healthz, liveness on /livez");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders: Vec<JoinHandle<()>> = Vec::new();
    for (p, logfile) in pipelines.iter_mut().zip(&cfg.logfiles) {
        let sender = Sender::new(&cfg.intake(logfile))
            .map_err(|e| format!("intake: {e}"))?
            .with_origin(&host, &logfile.filepath);
        let (spool, m, stop) = (p.stage.spool.clone(), p.stage.m.clone(), stop.clone());
        let handle = thread::Builder::new()
            .name("sender".into())
            .spawn(move || send_loop(sender, spool, m, stop))
            .map_err(|e| format!("sender thread: {e}"))?;
        p.stage.sender = Some(handle.thread().clone());
        senders.push(handle);
    }
    log::info!(
        "shipping {} to {} ({:?} form, state in {})",
        cfg.logfiles
            .iter()
            .map(|l| l.filepath.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.intake_url,
        cfg.format,
        cfg.state_dir.display()
    );

    let result = reader_loop(&mut pipelines, &signals, &metrics);
    for p in &mut pipelines {
        p.finish();
    }
    stop.store(true, Ordering::SeqCst);
    let grace = Instant::now() + SENDER_GRACE;
    for h in &senders {
        h.thread().unpark();
    }
    for h in senders {
        // A sender in the middle of a request is left to the process exit; its segment
        // stays spooled and is sent again at the next start.
        while !h.is_finished() && Instant::now() < grace {
            thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    log::info!("stopped: open batches spooled, positions saved");
    result
}

fn reader_loop(
    pipelines: &mut [Pipeline],
    signals: &Signals,
    metrics: &Metrics,
) -> Result<(), String> {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().map_err(|e| format!("mio: {e}"))?;
    let signal_token = Token(usize::MAX);
    let sfd: RawFd = signals.0.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&sfd), signal_token, Interest::READABLE)
        .map_err(|e| format!("mio: {e}"))?;
    for (i, p) in pipelines.iter().enumerate() {
        if let Some(fd) = p.tailer.watch_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                .map_err(|e| format!("mio: {e}"))?;
        }
    }
    let mut events = Events::with_capacity(16);
    let mut last_busy = Instant::now();
    let mut trimmed = false;
    loop {
        metrics.reader_beat_micros.set(now_micros());
        let last_read = Instant::now();
        let mut more = false;
        for p in pipelines.iter_mut() {
            more |= p.step();
        }
        let busy = more
            || pipelines
                .iter()
                .any(|p| !p.stage.batcher.is_empty() || !p.stage.backlog.is_empty());
        if busy {
            last_busy = Instant::now();
            trimmed = false;
        } else if !trimmed && last_busy.elapsed() >= IDLE_TRIM_AFTER {
            return_free_memory();
            trimmed = true;
        }
        for sig in signals.take() {
            if sig == libc::SIGHUP {
                log::info!("SIGHUP ignored (restart to reload the configuration)");
            } else {
                log::info!("signal {sig}: stopping");
                return Ok(());
            }
        }
        if more {
            continue;
        }
        let now = Instant::now();
        let mut timeout = MAX_SLEEP;
        for p in pipelines.iter() {
            if let Some(d) = p.deadline() {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            if !p.stage.backlog.is_empty() {
                timeout = timeout.min(RETRY_STORE);
            }
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("mio poll: {e}")),
        }
        // Let writes accumulate (see MIN_WAKE_INTERVAL); a backlog (`more`) is not slowed.
        let since = last_read.elapsed();
        if since < MIN_WAKE_INTERVAL {
            thread::sleep(MIN_WAKE_INTERVAL - since);
        }
        // Readiness is edge-triggered: each tailer drains its inotify queue in step().
    }
}

/// Gives freed heap memory back to the system. An edge node spends most of its time idle
/// between bursts; glibc keeps what a burst's batches, gzip states and TLS records freed in
/// its arenas (about 3 MiB measured with the demo), so the idle RSS would stay at the burst's
/// peak. musl's allocator unmaps large freed blocks itself, so there is nothing to do there.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_warnings_are_limited_per_minute_and_the_rest_counted() {
        let file = Path::new("/logs/audit.log");
        let mut w = LineWarnings::new();
        let allowed = (0..25).filter(|_| w.allow(file)).count();
        assert_eq!(allowed, LINE_WARNINGS_PER_MINUTE as usize);
        assert_eq!(w.held_back, 15);
        // A new minute: the budget is back and the count starts over.
        w.window -= LineWarnings::WINDOW;
        assert!(w.allow(file));
        assert_eq!((w.used, w.held_back), (1, 0));
    }
}
