//! One log's I/O: lists its directory, holds its generations' descriptors, reads them, and
//! feeds what it saw to the decisions of [`plan`](super::plan).
//!
//! - Each generation found is opened at once and its descriptor held (at most
//!   `max_held`, oldest first): a held file stays readable after it is renamed, compressed
//!   away or pruned, so a reader that falls behind does not lose it.
//! - A descriptor's name (`/proc/self/fd/N`) says when the live file was rotated and under
//!   which key; the end of a rotated file is its end (lumberjack closes before renaming).
//! - The time of an event near every 64 KiB is noted while reading, so that the cursor can
//!   say when its last committed event happened (the start of a loss window).

use super::access::{Access, Unreadable};
use super::file::{FINGERPRINT_LEN, Fingerprint, Source, dev_ino, fingerprint_file, prefix};
use super::generation::{FdName, Named, Names};
use super::plan::{Eof, Gen, Listed, Listing, LogPlan, Lost, Serials};
use super::{Gap, GapReason, Polled, Position, TailEvent};
use crate::lines::{Item, LineReader};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An event's time is noted at most once per this many bytes read.
const TIME_SAMPLE_EVERY: u64 = 64 * 1024;

/// The generation being read.
struct Reader {
    serial: u64,
    path: PathBuf,
    gz: bool,
    lines: LineReader<Source>,
    next_sample: u64,
}

impl Reader {
    fn consumed(&self) -> u64 {
        self.lines.offset() + self.lines.pending()
    }

    fn plain_len(&self) -> Option<u64> {
        self.lines
            .get_ref()
            .plain()?
            .metadata()
            .ok()
            .map(|m| m.len())
    }
}

/// A descriptor held for a generation not being read yet.
struct Held {
    serial: u64,
    file: File,
    gz: bool,
    path: PathBuf,
}

pub struct Log {
    pub names: Names,
    pub plan: LogPlan,
    held: Vec<Held>,
    reader: Option<Reader>,
    /// (serial, line end, event time µs), oldest first.
    times: VecDeque<(u64, u64, i64)>,
    listing: Listing,
    max_line: usize,
}

/// Where the time of an audit event is, and how it starts.
const TIME_KEY: &[u8] = b"\"requestReceivedTimestamp\":\"";

/// The `requestReceivedTimestamp` of an audit event line, if it has one.
pub fn event_time(line: &[u8]) -> Option<i64> {
    let at = memchr::memmem::find(line, TIME_KEY)? + TIME_KEY.len();
    let rest = &line[at..];
    let end = memchr::memchr(b'"', rest)?;
    crate::timestamp::parse_micros(std::str::from_utf8(&rest[..end]).ok()?)
}

/// Lists a log's directory: the live file first, then the backups (a rotation in between
/// shows the renamed file under its key, never under neither name).
pub fn list(names: &Names) -> io::Result<Listing> {
    let live = match fs::metadata(names.live_path()) {
        Ok(m) if m.is_file() => Some((dev_ino(&m), m.len())),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut backups: Vec<Listed> = Vec::new();
    for entry in fs::read_dir(&names.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(Named::Backup { key, gz }) = name.to_str().and_then(|n| names.classify(n)) else {
            continue;
        };
        let plain = if gz {
            None
        } else {
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => Some(dev_ino(&m)),
                _ => continue,
            }
        };
        match backups.iter_mut().find(|b| b.key == key) {
            Some(b) if gz => b.gz = true,
            Some(b) => b.plain = plain,
            None => backups.push(Listed { key, plain, gz }),
        }
    }
    backups.sort_by_key(|b| b.key);
    Ok(Listing { backups, live })
}

/// The fingerprint of a file's start (decompressed for `.gz`), over up to 1 KiB.
pub fn fingerprint_path(path: &Path, gz: bool) -> io::Result<Fingerprint> {
    let f = File::open(path)?;
    if !gz {
        return fingerprint_file(&f);
    }
    let mut src = Source::from_file(f, true, 0)?;
    let mut buf = Vec::with_capacity(FINGERPRINT_LEN);
    io::Read::read_to_end(
        &mut io::Read::take(&mut src, FINGERPRINT_LEN as u64),
        &mut buf,
    )?;
    Ok(Fingerprint::of(&buf))
}

impl Log {
    pub fn new(names: Names, plan: LogPlan, listing: Listing, max_line: usize) -> Log {
        Log {
            names,
            plan,
            held: Vec::new(),
            reader: None,
            times: VecDeque::new(),
            listing,
            max_line,
        }
    }

    /// The path a generation is found under now (a backup's plain name if it is there).
    fn path_of(&self, serial: u64) -> Option<(PathBuf, bool)> {
        let slot = self.plan.slot(serial)?;
        match slot.key {
            Some(k) => {
                let b = self.listing.get(k);
                let gz = b.is_some_and(|b| b.plain.is_none() && b.gz);
                Some((self.names.backup_path(k, gz), gz))
            }
            None => Some((self.names.live_path(), false)),
        }
    }

    /// Whether the file at the start of the cursor's candidate `gen` starts like `fp`.
    pub fn confirms(names: &Names, listing: &Listing, generation: Gen, fp: Fingerprint) -> bool {
        let candidates = match generation {
            Gen::Live(_) => vec![(names.live_path(), false)],
            // The plain backup may be compressed and deleted since the listing: its .gz is
            // whole then.
            Gen::Backup(k) if listing.get(k).is_some() => vec![
                (names.backup_path(k, false), false),
                (names.backup_path(k, true), true),
            ],
            Gen::Backup(_) => return false,
        };
        for (path, gz) in candidates {
            let got = File::open(&path)
                .and_then(|f| Source::from_file(f, gz, 0))
                .and_then(|src| prefix(src, fp.len as usize));
            match got {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Ok(Some(got)) => return got == fp,
                _ => return false,
            }
        }
        false
    }

    /// Looks at the directory, learns where open generations went, and holds new ones.
    pub fn observe(&mut self, serials: &mut Serials, max_held: usize, access: &mut Access) {
        match list(&self.names) {
            Ok(l) => self.listing = l,
            Err(e) => {
                log::debug!("cannot list {}: {e}", self.names.dir.display());
                if e.kind() != io::ErrorKind::NotFound {
                    access.unreadable.push(Unreadable::new(&self.names.dir, &e));
                }
                return;
            }
        }
        let mut names: Vec<(u64, FdName)> = Vec::new();
        for h in &self.held {
            names.extend(FdName::of(h.file.as_raw_fd(), &self.names).map(|n| (h.serial, n)));
        }
        if let Some(r) = &self.reader
            && let Some(f) = r.lines.get_ref().plain()
        {
            names.extend(FdName::of(f.as_raw_fd(), &self.names).map(|n| (r.serial, n)));
        }
        let (dir_names, listing) = (&self.names, &self.listing);
        let mut confirm = |g, fp| Log::confirms(dir_names, listing, g, fp);
        let found = self
            .plan
            .observe(&self.listing, &names, &mut confirm, serials);
        for serial in &found {
            log::debug!(
                "{}: new generation {:?} (serial {serial})",
                self.names.live_path().display(),
                self.plan.slot(*serial).map(|s| (s.key, s.ino))
            );
        }
        self.hold(max_held, access);
    }

    /// Opens and holds the oldest generations not open yet, up to `max_held` descriptors.
    pub fn hold(&mut self, max_held: usize, access: &mut Access) {
        let reading = self.reader.as_ref().map(|r| r.serial);
        let waiting: Vec<u64> = self
            .plan
            .slots
            .iter()
            .filter(|s| s.end.is_none() && Some(s.serial) != reading)
            .map(|s| s.serial)
            .filter(|s| !self.held.iter().any(|h| h.serial == *s))
            .collect();
        for serial in waiting {
            if self.held.len() >= max_held {
                break;
            }
            match self.open_slot(serial) {
                Ok(Some(h)) => self.held.push(h),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    if let Some((path, _)) = self.path_of(serial) {
                        access.unreadable.push(Unreadable::new(&path, &e));
                    }
                }
            }
        }
    }

    /// Opens a generation by its name now. `None`: the live name leads to another file (it
    /// was rotated: the next listing finds it under its key).
    fn open_slot(&self, serial: u64) -> io::Result<Option<Held>> {
        let Some(slot) = self.plan.slot(serial) else {
            return Ok(None);
        };
        let (path, gz) = self.path_of(serial).ok_or(io::ErrorKind::NotFound)?;
        let file = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && slot.key.is_some() && !gz => {
                // Compressed and deleted since the listing: the .gz is whole now.
                let k = slot.key.ok_or(io::ErrorKind::NotFound)?;
                let gz_path = self.names.backup_path(k, true);
                let file = File::open(&gz_path)?;
                return Ok(Some(Held {
                    serial,
                    file,
                    gz: true,
                    path: gz_path,
                }));
            }
            other => other?,
        };
        if !gz && slot.key.is_none() && slot.ino != Some(dev_ino(&file.metadata()?)) {
            return Ok(None);
        }
        Ok(Some(Held {
            serial,
            file,
            gz,
            path,
        }))
    }

    /// Starts reading the current generation.
    fn open_reader(&mut self, serial: u64) -> io::Result<Option<Reader>> {
        let held = match self.held.iter().position(|h| h.serial == serial) {
            Some(i) => Some(self.held.remove(i)),
            None => self.open_slot(serial)?,
        };
        let Some(h) = held else {
            return Ok(None);
        };
        let start = self.plan.slot(serial).map_or(0, |s| s.start);
        let fp = if h.gz {
            fingerprint_path(&h.path, true)?
        } else {
            fingerprint_file(&h.file)?
        };
        let source = Source::from_file(h.file, h.gz, start)?;
        log::debug!(
            "reading {} from byte {start} (serial {serial})",
            h.path.display()
        );
        if self.plan.slot(serial).is_some_and(|s| s.fp.len < fp.len) {
            self.plan.set_fp(serial, fp);
        }
        Ok(Some(Reader {
            serial,
            path: h.path,
            gz: h.gz,
            lines: LineReader::with_max_line(source, self.max_line)
                .following()
                .starting_at(start),
            next_sample: start,
        }))
    }

    /// A loss, as the pipeline gets it.
    pub fn gap(&self, lost: &Lost, reason: GapReason, now: i64) -> Gap {
        let path = match lost.generation {
            Gen::Backup(k) => {
                let gz = self.listing.get(k).is_none_or(|b| b.plain.is_none());
                self.names.backup_path(k, gz)
            }
            Gen::Live(_) => self.names.live_path(),
        };
        let window = lost.window_from.map(|from| {
            let until = lost
                .next
                .and_then(|s| self.first_event_time(s))
                .unwrap_or(now);
            // A line can carry a time a few ms before the line above it (stages of requests
            // finish out of order): one second of margin keeps every lost event inside.
            (from.map(|t| t - 1_000_000), until + 1_000_000)
        });
        Gap {
            path,
            offset: lost.offset,
            bytes: lost.bytes,
            exact: lost.exact,
            reason: if lost.truncated {
                GapReason::Truncated
            } else {
                reason
            },
            lost_from: window.and_then(|w| w.0),
            lost_until: window.map(|w| w.1),
        }
    }

    /// The time of the first event of a generation (read from its start).
    fn first_event_time(&self, serial: u64) -> Option<i64> {
        let (path, gz) = self.path_of(serial)?;
        let src = File::open(&path)
            .and_then(|f| Source::from_file(f, gz, 0))
            .ok()?;
        let mut lines = LineReader::with_max_line(src, self.max_line);
        for _ in 0..16 {
            match lines.next_item() {
                Ok(Some(Item::Line(l))) => {
                    if let Some(t) = event_time(l.bytes()) {
                        return Some(t);
                    }
                }
                Ok(Some(Item::TooLong { .. })) => {}
                _ => return None,
            }
        }
        None
    }

    /// Commits `pos` and notes the time of the latest event known at or before it. Older
    /// samples are dropped (the time only needs to be a lower bound of what follows).
    pub fn commit(&mut self, pos: Position) {
        self.plan.commit(pos.serial, pos.end);
        let mut best = None;
        for (i, &(serial, end, time)) in self.times.iter().enumerate() {
            if serial == pos.serial {
                if end > pos.end {
                    break;
                }
                best = Some((i, time));
            }
        }
        if let Some((i, time)) = best {
            self.times.drain(..i);
            self.plan.set_time(pos.serial, time);
        }
    }

    /// Reads the generations in order, up to the budget.
    pub fn read(
        &mut self,
        on: &mut impl FnMut(TailEvent<'_>),
        polled: &mut Polled,
        budget: usize,
        serials: &mut Serials,
        max_held: usize,
        access: &mut Access,
    ) {
        loop {
            let Some(serial) = self.plan.current().map(|s| s.serial) else {
                return;
            };
            if self.reader.as_ref().map(|r| r.serial) != Some(serial) {
                self.reader = None;
                match self.open_reader(serial) {
                    Ok(Some(r)) => self.reader = Some(r),
                    Ok(None) => {
                        // The live name leads elsewhere: learn where ours went first.
                        self.observe(serials, max_held, access);
                        if self.reader.is_none()
                            && self.open_reader(serial).ok().flatten().is_none()
                        {
                            self.give_up(serial, GapReason::Deleted, on);
                        }
                        continue;
                    }
                    Err(e) => {
                        let reason = if e.kind() == io::ErrorKind::NotFound {
                            GapReason::Deleted
                        } else {
                            GapReason::Unreadable(e.to_string())
                        };
                        self.give_up(serial, reason, on);
                        continue;
                    }
                }
            }
            match self.read_current(on, polled, budget) {
                Err(e) => {
                    self.give_up(serial, GapReason::Unreadable(e.to_string()), on);
                    continue;
                }
                Ok(false) => {
                    polled.more = true;
                    return;
                }
                Ok(true) => {}
            }
            match self.at_end(serials, on, polled) {
                Ok(true) => {
                    // A generation left: the next may not be known yet.
                    self.observe(serials, max_held, access);
                }
                Ok(false) => return,
                Err(e) => self.give_up(serial, GapReason::Unreadable(e.to_string()), on),
            }
        }
    }

    /// Reads lines of the current generation; `Ok(true)` at its end, `Ok(false)` when the
    /// budget ran out first.
    fn read_current(
        &mut self,
        on: &mut impl FnMut(TailEvent<'_>),
        polled: &mut Polled,
        budget: usize,
    ) -> io::Result<bool> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(true);
        };
        let at_end = loop {
            if polled.bytes >= budget as u64 {
                break false;
            }
            match r.lines.next_item()? {
                None => break true,
                Some(item) => deliver(
                    item,
                    r.serial,
                    &r.path,
                    true,
                    on,
                    polled,
                    &mut r.next_sample,
                    &mut self.times,
                ),
            }
        };
        let size = r.plain_len().unwrap_or(0);
        self.plan.read(r.serial, r.consumed(), size);
        // The fingerprint grows with the file until it covers FINGERPRINT_LEN bytes: a
        // cursor is recognised by its start only once that start can tell files apart.
        if let Some(f) = r.lines.get_ref().plain()
            && self
                .plan
                .slot(r.serial)
                .is_some_and(|s| (s.fp.len as u64) < size.min(FINGERPRINT_LEN as u64))
            && let Ok(fp) = fingerprint_file(f)
        {
            self.plan.set_fp(r.serial, fp);
        }
        Ok(at_end)
    }

    /// At the end of what the current generation has: wait, or drain and leave it (`true`).
    fn at_end(
        &mut self,
        serials: &mut Serials,
        on: &mut impl FnMut(TailEvent<'_>),
        polled: &mut Polled,
    ) -> io::Result<bool> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(false);
        };
        let serial = r.serial;
        if let Some(size) = r.plain_len()
            && size < r.consumed()
        {
            log::debug!("{} truncated; read again from 0", r.path.display());
            self.reader = None;
            if let Some((lost, _)) = self.plan.truncated(serial, serials) {
                on(TailEvent::Gap(self.gap(
                    &lost,
                    GapReason::Truncated,
                    now_micros(),
                )));
            }
            return Ok(true);
        }
        let name = r
            .lines
            .get_ref()
            .plain()
            .and_then(|f| FdName::of(f.as_raw_fd(), &self.names));
        let live = if name.is_none() {
            fs::metadata(self.names.live_path())
                .ok()
                .map(|m| dev_ino(&m))
        } else {
            None
        };
        match self.plan.at_eof(serial, r.gz, name, live) {
            Eof::Wait => Ok(false),
            Eof::Drain => {
                // Complete: what is there now is all there is.
                let times = &mut self.times;
                while let Some(item) = r.lines.next_item()? {
                    deliver(
                        item,
                        serial,
                        &r.path,
                        true,
                        on,
                        polled,
                        &mut r.next_sample,
                        times,
                    );
                }
                if let Some(item) = r.lines.take_partial() {
                    deliver(
                        item,
                        serial,
                        &r.path,
                        false,
                        on,
                        polled,
                        &mut r.next_sample,
                        times,
                    );
                }
                let end = r.lines.offset();
                log::debug!("{} read to its end ({end} bytes); left", r.path.display());
                self.plan.finished(serial, end);
                self.reader = None;
                Ok(true)
            }
        }
    }

    /// The current generation cannot be read on: report what is lost and go to the next.
    fn give_up(&mut self, serial: u64, reason: GapReason, on: &mut impl FnMut(TailEvent<'_>)) {
        self.reader = None;
        self.held.retain(|h| h.serial != serial);
        if let Some(lost) = self.plan.lost(serial) {
            let gap = self.gap(&lost, reason, now_micros());
            on(TailEvent::Gap(gap));
        }
    }

    /// Descriptors open for this log.
    pub fn open_files(&self) -> usize {
        self.held.len() + usize::from(self.reader.is_some())
    }

    pub fn matched(&self) -> bool {
        self.listing.live.is_some()
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Hands one item of generation `serial` to the pipeline, noting an event time every
/// [`TIME_SAMPLE_EVERY`] bytes. `terminated`: it ended with a newline.
#[allow(clippy::too_many_arguments)]
fn deliver(
    item: Item<'_>,
    serial: u64,
    path: &Path,
    terminated: bool,
    on: &mut impl FnMut(TailEvent<'_>),
    polled: &mut Polled,
    next_sample: &mut u64,
    times: &mut VecDeque<(u64, u64, i64)>,
) {
    polled.lines += 1;
    match item {
        Item::Line(line) => {
            polled.bytes += line.end - line.offset;
            if line.end > *next_sample
                && let Some(t) = event_time(&line.buf[..line.len])
            {
                times.push_back((serial, line.end, t));
                *next_sample = line.end + TIME_SAMPLE_EVERY;
            }
            on(TailEvent::Line {
                pos: Position {
                    serial,
                    end: line.end,
                },
                offset: line.offset,
                len: line.len,
                buf: line.buf,
                path,
            });
        }
        Item::TooLong { offset, len, .. } => {
            let end = offset + len + u64::from(terminated);
            polled.bytes += end - offset;
            on(TailEvent::TooLong {
                path,
                offset,
                len,
                pos: Position { serial, end },
            });
        }
    }
}
