//! The pipeline stage both inputs feed: extract → filter → classify → form → batch → spool,
//! with the commit bookkeeping of the lines in flight (DESIGN.md §1, §2).
//!
//! Durability, end to end (DESIGN.md §2.1): a line's position is committed to the tailer only
//! when everything read before it in its file is durable — spooled, filtered, or accounted as
//! a loss. Critical and bulk batches interleave the lines of one file, so a file's commit point
//! is the *start* of its oldest line still waiting in an open batch or in a batch the spool
//! has not taken yet (full spool, disk error); with none waiting, the end of the last line
//! read. A webhook request has no position to commit: its answer waits until the batches
//! holding its events are stored ([`crate::webhook`]).
//!
//! Backpressure (DESIGN.md §2.4, §6): while a sealed batch cannot be stored (only critical
//! data left under the cap, or a write error) the input pauses: the file input stops
//! reading, the webhook answers 503.
//!
//! - [`Stage`]: one input's extract → spool path, whatever the input.
//! - [`file::FilePipeline`]: a `logfiles:` entry: a tailer feeding a stage.

pub mod file;

use crate::batch::{Batcher, IntakeFormat, Sealed, escape_event};
use crate::commit::{BatchMarks, Commits};
use crate::config::{Config, LogFile};
use crate::extract::{Event, Extractor, Format, MAX_EVENT_BYTES};
use crate::filter::{self, Rule};
use crate::metrics::{FileMetrics, now_micros};
use crate::records::{self, Loss};
use crate::spool::{Class, Segment, Spool, Stored, classify};
use crate::tail::{Position, TailEvent};
use crate::timestamp::parse_micros;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Warnings about single lines (not an audit event, over `max_line_bytes`) per file and
/// minute. A log full of garbage must not flood journald on a small node; every line is
/// still counted in the metrics and reported in-band, so only the log is thinned.
const LINE_WARNINGS_PER_MINUTE: u32 = 10;

/// The budget of [`LINE_WARNINGS_PER_MINUTE`].
pub(crate) struct LineWarnings {
    window: Instant,
    used: u32,
    held_back: u64,
}

impl LineWarnings {
    const WINDOW: Duration = Duration::from_secs(60);

    pub(crate) fn new() -> LineWarnings {
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
pub(crate) enum Problem {
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

pub(crate) fn slot(class: Class) -> usize {
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
pub(crate) struct Pending {
    pub(crate) sealed: Sealed,
    pub(crate) marks: BatchMarks,
    /// Audit lines in it (the rest are records).
    pub(crate) lines: u64,
}

/// Everything of one log file's pipeline except the tailer (so the tailer's callback can
/// borrow it mutably).
pub(crate) struct Stage {
    pub(crate) extractor: Extractor,
    pub(crate) batcher: Batcher,
    pub(crate) spool: Arc<Mutex<Spool>>,
    pub(crate) format: Format,
    pub(crate) rules: Vec<Rule>,
    pub(crate) m: Arc<FileMetrics>,
    pub(crate) host: String,
    pub(crate) out: Vec<u8>,
    /// `/array`: `out` as a JSON string, the form the batcher takes.
    pub(crate) escaped: Vec<u8>,
    pub(crate) raw: Vec<u8>,
    pub(crate) commits: Commits,
    pub(crate) open_lines: [u64; 2],
    pub(crate) backlog: VecDeque<Pending>,
    pub(crate) evicted: Vec<Segment>,
    /// Something was spooled since the last save.
    pub(crate) stored: bool,
    /// Positions moved without a batch (filtered lines) since the last save.
    pub(crate) moved: bool,
    pub(crate) sender: Option<Thread>,
    /// When each recurring problem was last logged, by [`Problem`].
    pub(crate) last_error_log: [Option<Instant>; Problem::COUNT],
    pub(crate) line_warnings: LineWarnings,
    /// An input problem was logged (so its end is, too).
    pub(crate) input_complained: bool,
    /// A batch was lost to a batching error since the webhook last looked (a file's lines
    /// are simply not committed; a webhook request must not be answered 200).
    pub(crate) batch_lost: bool,
}

impl Stage {
    /// A stage for the input `entry` (its key and rules), storing into `spool`.
    pub(crate) fn new(
        cfg: &Config,
        entry: &LogFile,
        spool: Spool,
        m: Arc<FileMetrics>,
        host: &str,
    ) -> Stage {
        Stage {
            extractor: Extractor::new(),
            batcher: Batcher::with_format(cfg.batch, cfg.intake_format, &entry.key),
            spool: Arc::new(Mutex::new(spool)),
            format: cfg.format,
            rules: entry.rules.clone(),
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
            batch_lost: false,
        }
    }

    /// Compressing into memory does not fail; if it ever does, the batch is gone: a file's
    /// positions are not committed (its lines are read again after a restart), and the
    /// webhook answers 503 for the requests in flight ([`Stage::batch_lost`]).
    #[cold]
    fn batching_failed(&mut self, e: &dyn std::fmt::Display) {
        log::error!("batching failed: {e}");
        self.batch_lost = true;
    }

    /// Seals every open batch and hands it to the spool, with the gap records of what
    /// that evicts; `false` when something could not be stored (it stays in the backlog).
    pub(crate) fn seal_everything(&mut self) -> bool {
        loop {
            match self.batcher.seal_all() {
                Ok(batches) => {
                    for b in batches {
                        self.seal(slot(b.class), b);
                    }
                }
                Err(e) => self.batching_failed(&e),
            }
            if self.evicted.is_empty() {
                return self.backlog.is_empty();
            }
            self.report_evictions();
        }
    }
    pub(crate) fn handle(&mut self, ev: TailEvent<'_>) {
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
                self.line(buf, len, path, offset, Some((pos.serial, offset, pos.end)));
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

    /// One audit line from `origin` (a file, or a webhook request) at byte `offset`; `mark`
    /// is its (file serial, start, end) when its position is committed to a tailer.
    pub(crate) fn line(
        &mut self,
        buf: &mut [u8],
        len: usize,
        origin: &Path,
        offset: u64,
        mark: Option<(u64, u64, u64)>,
    ) {
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
                    if let Some((serial, _, end)) = mark {
                        self.commits.settled(serial, end);
                    }
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
                if self.line_warnings.allow(origin) {
                    log::warn!(
                        "{}: line at offset {offset} is not an audit event ({e}); forwarded as \
                         an unparsed record",
                        origin.display()
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
                    origin,
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
        self.add(class, ts, mark, is_event);
    }

    /// Queues a gap record.
    pub(crate) fn record(&mut self, loss: &Loss<'_>, mark: Option<(u64, u64, u64)>) {
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
    pub(crate) fn add(
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
            // See `batching_failed`.
            Err(e) => self.batching_failed(&e),
        }
        if let Some((serial, start, end)) = mark {
            self.commits.batched(k, serial, start, end);
        }
        if is_event {
            self.open_lines[k] += 1;
        }
    }

    /// A batch of slot `k` was sealed: hand it to the spool with its marks.
    pub(crate) fn seal(&mut self, k: usize, sealed: Sealed) {
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
    pub(crate) fn flush(&mut self) {
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
    pub(crate) fn complain(&mut self, problem: Problem, what: impl FnOnce() -> String) {
        let last = &mut self.last_error_log[problem as usize];
        if last.is_none_or(|t| t.elapsed() >= problem.period()) {
            log::error!("{}", what());
            *last = Some(Instant::now());
        }
    }

    /// Turns evicted segments into gap records (which may seal and evict more).
    pub(crate) fn report_evictions(&mut self) {
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
    pub(crate) fn seal_due(&mut self, now: Instant) {
        match self.batcher.due(now) {
            Ok(batches) => {
                for b in batches {
                    self.seal(slot(b.class), b);
                }
            }
            Err(e) => self.batching_failed(&e),
        }
    }

    /// Where each file may be committed now (see [`crate::commit`]).
    pub(crate) fn commit_points(&mut self) -> Vec<Position> {
        self.commits.points(self.backlog.iter().map(|p| &p.marks))
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
