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
use super::file::{FINGERPRINT_LEN, Source, dev_ino, fingerprint_file};
use super::generation::{FdName, Names};
use super::listing::{confirms, event_time, fingerprint_path, list};
use super::plan::{Eof, Gen, Listing, LogPlan, Lost, Serials};
use super::reader::{Reader, deliver, now_micros};
use super::{Gap, GapReason, Polled, Position, TailEvent};
use crate::lines::{Item, LineReader};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

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
        let mut confirm = |g, fp| confirms(dir_names, listing, g, fp);
        let anomalies = self.plan.anomalies;
        let found = self
            .plan
            .observe(&self.listing, &names, &mut confirm, serials);
        if self.plan.anomalies > anomalies {
            log::warn!(
                "{}: a backup's time is before one already read (did the clock step back?); \
                 it is read now, after the file being read",
                self.names.live_path().display()
            );
        }
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
