//! The tailer's decisions for one log, with no I/O (DESIGN.md §3): which generation to read
//! next, when one is complete, where a restart resumes, and what is lost. The I/O layer
//! (`log.rs`) lists the directory, stats the live file, reads descriptor names and file
//! contents, and feeds what it saw here; `model.rs` drives this against a model of the writer
//! through random interleavings of every writer and reader step.
//!
//! Identity: a generation is its [`Key`] once it has one (it was rotated), and the live file's
//! (device, inode) before. A cursor's fingerprint (the first line, up to 1 KiB) only confirms
//! a candidate found by key or inode, never searches.
//!
//! Invariants owned here:
//! - **Order.** Generations are read in write order: the cursor's first, then unknown keys in
//!   key order, then live files in the order they appeared. A key found later than a
//!   generation it precedes (a clock stepped backwards, a listing that missed a name) is still
//!   read, after the one being read, and counted in [`LogPlan::anomalies`].
//! - **Completeness.** A generation is complete (read to its end and left) only once its
//!   descriptor no longer has the live name (lumberjack closes before it renames), or when it
//!   is read from a `.gz` (written whole before the plain backup is deleted).
//! - **Unread = unknown.** Every key that is not in `known` is unread. `known` holds the keys
//!   committed to their end and, on a first start, the history that was already there.
//! - **The cursor** is the oldest generation not committed to its end: a restart resumes there
//!   and reads every later generation again from its start (at least once).
//! - **Loss** is reported once, at the generation it happened to: its unread rest (exact when
//!   its final size was seen, else a lower bound) and, when the cursor's generation is gone,
//!   the time window from its last committed event to the first event still on disk (other
//!   generations may have been pruned with it, and only their time can name them).

use super::file::Fingerprint;
use super::generation::{FdName, Key};

pub type DevIno = (u64, u64);

/// One backup in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: Key,
    /// The plain backup's (device, inode), if the plain file is there.
    pub plain: Option<DevIno>,
    pub gz: bool,
}

/// A look at one log's directory: backups sorted by key, and the live file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub backups: Vec<Listed>,
    /// The live file's (device, inode) and size.
    pub live: Option<(DevIno, u64)>,
}

impl Listing {
    pub fn get(&self, key: Key) -> Option<&Listed> {
        self.backups.iter().find(|b| b.key == key)
    }
}

/// A generation, as the cursor names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gen {
    Backup(Key),
    Live(DevIno),
}

/// Where a restart resumes: stored durably per log (see `cursor.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub generation: Gen,
    pub committed: u64,
    pub size_seen: u64,
    /// `size_seen` is the generation's final size.
    pub final_size: bool,
    pub fp: Fingerprint,
    /// The time of an event at or before `committed` (unix µs), for the loss window.
    pub last_time: Option<i64>,
}

/// What is stored per log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Saved {
    pub cursor: Option<Cursor>,
    /// Keys read to their end and committed, or history at the first start; sorted.
    pub known: Vec<Key>,
}

/// A generation lost before it was read to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub generation: Gen,
    /// Where in the generation the loss starts.
    pub offset: u64,
    /// The rest lost: exact when `exact`, else a lower bound.
    pub bytes: u64,
    pub exact: bool,
    pub truncated: bool,
    /// The generation itself may be whole (it was read on): only the window is reported.
    pub only_window: bool,
    /// Other generations may have gone with it: the loss is also the time window from
    /// this (unix µs, `None` if unknown) to the first event of `next`.
    pub window_from: Option<Option<i64>>,
    /// The generation read next (its first event closes the window).
    pub next: Option<u64>,
}

/// One generation the plan follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub serial: u64,
    pub key: Option<Key>,
    pub ino: Option<DevIno>,
    /// Reading starts here (the committed offset for the cursor's generation).
    pub start: u64,
    /// Consumed by the reader so far.
    pub read: u64,
    pub committed: u64,
    pub size_seen: u64,
    /// Read to its end: its final size.
    pub end: Option<u64>,
    pub fp: Fingerprint,
    pub last_time: Option<i64>,
}

impl Slot {
    fn new(serial: u64, key: Option<Key>, ino: Option<DevIno>, start: u64) -> Slot {
        Slot {
            serial,
            key,
            ino,
            start,
            read: start,
            committed: start,
            size_seen: start,
            end: None,
            fp: Fingerprint::of(&[]),
            last_time: None,
        }
    }

    fn generation(&self) -> Gen {
        match (self.key, self.ino) {
            (Some(k), _) => Gen::Backup(k),
            (None, Some(ino)) => Gen::Live(ino),
            // Every slot is made with a key or an inode.
            (None, None) => Gen::Live((0, 0)),
        }
    }

    fn settled(&self) -> bool {
        self.end.is_some_and(|end| self.committed >= end)
    }
}

/// Where reading starts on a first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    Beginning,
    End,
}

/// What the reader does at the end of what it could read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eof {
    /// The generation is live: wait for more.
    Wait,
    /// It is complete: read what is left, then [`LogPlan::finished`].
    Drain,
}

/// Serial numbers shared by all logs of a tailer (positions name their generation by it).
#[derive(Debug, Default)]
pub struct Serials(u64);

impl Serials {
    pub fn take(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// `known` stays below this many keys: those no longer on disk are dropped first; past it,
/// unknown keys older than every known one are history (a limit: with more backups than
/// this on disk, the oldest would otherwise be read again).
const MAX_KNOWN: usize = 4096;

#[derive(Debug, Default)]
pub struct LogPlan {
    /// Generations not yet committed to their end, in write order.
    pub slots: Vec<Slot>,
    known: Vec<Key>,
    /// The cursor of the last generation settled, kept when no other follows it.
    last_settled: Option<Cursor>,
    /// Generations found by [`LogPlan::observe`] (new live files, unknown keys), less those
    /// forgotten (see `find_rotated`): checked against the count of files created.
    pub found: i64,
    /// Keys found out of write order (see the module doc).
    pub anomalies: u64,
}

fn insert_known(known: &mut Vec<Key>, key: Key) {
    if let Err(i) = known.binary_search(&key) {
        known.insert(i, key);
    }
}

impl LogPlan {
    /// No stored state. From the beginning: every backup still on disk (oldest first), then
    /// the live file. From the end: the backups are history, the live file is read from its
    /// current end.
    pub fn first_start(listing: &Listing, at: FirstStart, serials: &mut Serials) -> LogPlan {
        let mut plan = LogPlan::default();
        match at {
            FirstStart::Beginning => plan.adopt_unknown(listing, serials),
            FirstStart::End => {
                plan.known = listing.backups.iter().map(|b| b.key).collect();
                plan.known.sort_unstable();
                if let Some((ino, size)) = listing.live {
                    plan.slots
                        .push(Slot::new(serials.take(), None, Some(ino), size));
                }
            }
        }
        plan
    }

    /// Resumes from stored state. `confirm` says whether a candidate file (live, or the
    /// backup of a key) starts with the cursor's fingerprint.
    pub fn resume(
        saved: Saved,
        listing: &Listing,
        confirm: &mut dyn FnMut(Gen) -> bool,
        serials: &mut Serials,
    ) -> (LogPlan, Option<Lost>) {
        let mut plan = LogPlan {
            known: saved.known,
            ..LogPlan::default()
        };
        plan.known.sort_unstable();
        let Some(c) = saved.cursor else {
            plan.adopt_unknown(listing, serials);
            return (plan, None);
        };
        let found = plan.find_cursor(&c, listing, confirm);
        let mut lost = None;
        let rotated =
            matches!(c.generation, Gen::Live(_)) && matches!(found, Some((Gen::Backup(_), _)));
        if rotated && !c.fp.identifies() {
            // A live file too short to be recognised, rotated while we were down: the oldest
            // unknown key is read as it, and whatever went before that key is reported as
            // possibly lost (the file may have been pruned, and that key be a later one).
            lost = Some(Lost {
                generation: c.generation,
                offset: c.committed,
                bytes: 0,
                exact: false,
                truncated: false,
                only_window: true,
                window_from: Some(c.last_time),
                next: None,
            });
        }
        match found {
            Some((generation, truncated)) => {
                // Not recognised by its start: read from 0 (at least once) rather than resume
                // at an offset into what may be another generation.
                let start = if truncated || (rotated && !c.fp.identifies()) {
                    0
                } else {
                    c.committed
                };
                let (key, ino) = match generation {
                    Gen::Backup(k) => (Some(k), listing.get(k).and_then(|b| b.plain)),
                    Gen::Live(ino) => (None, Some(ino)),
                };
                let mut slot = Slot::new(serials.take(), key, ino, start);
                slot.fp = c.fp;
                slot.last_time = c.last_time;
                if let Some(l) = lost.as_mut() {
                    l.next = Some(slot.serial);
                }
                if truncated {
                    lost = Some(Lost {
                        generation,
                        offset: c.committed,
                        bytes: c.size_seen.saturating_sub(c.committed),
                        exact: false,
                        truncated: true,
                        only_window: false,
                        window_from: None,
                        next: Some(slot.serial),
                    });
                }
                plan.slots.push(slot);
            }
            None => {
                lost = Some(Lost {
                    generation: c.generation,
                    offset: c.committed,
                    bytes: c.size_seen.saturating_sub(c.committed),
                    exact: c.final_size,
                    truncated: false,
                    only_window: false,
                    window_from: Some(c.last_time),
                    next: None,
                });
            }
        }
        plan.adopt_unknown(listing, serials);
        if let Some(l) = lost.as_mut().filter(|l| l.next.is_none()) {
            l.next = plan.slots.first().map(|s| s.serial);
        }
        (plan, lost)
    }

    /// The cursor's generation in the listing, and whether it was truncated in place.
    fn find_cursor(
        &self,
        c: &Cursor,
        listing: &Listing,
        confirm: &mut dyn FnMut(Gen) -> bool,
    ) -> Option<(Gen, bool)> {
        match c.generation {
            Gen::Backup(k) => listing.get(k).and_then(|_| {
                let g = Gen::Backup(k);
                confirm(g).then_some((g, false))
            }),
            Gen::Live(ino) => {
                if let Some((live, size)) = listing.live
                    && live == ino
                {
                    let g = Gen::Live(ino);
                    if size < c.committed {
                        return Some((g, true));
                    }
                    if confirm(g) {
                        return Some((g, false));
                    }
                }
                // Rotated while we were down: it is one of the unknown keys (the oldest, unless
                // the clock stepped), recognised by its start.
                let mut unknown = listing
                    .backups
                    .iter()
                    .filter(|b| !self.is_known(b.key))
                    .map(|b| Gen::Backup(b.key));
                if c.fp.identifies() {
                    unknown.find(|&g| confirm(g)).map(|g| (g, false))
                } else {
                    // Too short to be recognised: see `resume`.
                    unknown.next().map(|g| (g, false))
                }
            }
        }
    }

    fn is_known(&self, key: Key) -> bool {
        self.known.binary_search(&key).is_ok()
    }

    /// Adds every unknown key not followed yet (key order), then the live file.
    fn adopt_unknown(&mut self, listing: &Listing, serials: &mut Serials) {
        for b in &listing.backups {
            if !self.is_known(b.key) && !self.follows(b) {
                let slot = Slot::new(serials.take(), Some(b.key), b.plain, 0);
                self.slots.push(slot);
            }
        }
        if let Some((ino, _)) = listing.live
            && !self.slots.iter().any(|s| s.ino == Some(ino))
        {
            self.slots
                .push(Slot::new(serials.take(), None, Some(ino), 0));
        }
    }

    /// Whether a slot already is this backup (by key, or by the plain file's inode).
    fn follows(&self, b: &Listed) -> bool {
        self.slots
            .iter()
            .any(|s| s.key == Some(b.key) || (b.plain.is_some() && s.ino == b.plain))
    }

    /// A new look at the directory (and, for open generations, the names of their
    /// descriptors). Returns the serials of the generations found.
    pub fn observe(
        &mut self,
        listing: &Listing,
        names: &[(u64, FdName)],
        confirm: &mut dyn FnMut(Gen, Fingerprint) -> bool,
        serials: &mut Serials,
    ) -> Vec<u64> {
        for &(serial, name) in names {
            if let (FdName::Backup(k), Some(s)) = (name, self.slot_mut(serial)) {
                s.key.get_or_insert(k);
            }
        }
        for b in &listing.backups {
            if let Some(s) = self
                .slots
                .iter_mut()
                .find(|s| s.key.is_none() && b.plain.is_some() && s.ino == b.plain)
            {
                s.key = Some(b.key);
            }
        }
        self.find_rotated(listing, confirm);
        let mut added = Vec::new();
        let oldest_known = self.known.first().copied();
        for b in &listing.backups {
            if self.is_known(b.key) || self.follows(b) {
                continue;
            }
            if self.known.len() >= MAX_KNOWN && oldest_known.is_some_and(|o| b.key < o) {
                continue;
            }
            let slot = Slot::new(serials.take(), Some(b.key), b.plain, 0);
            added.push(slot.serial);
            self.place(slot);
        }
        if let Some((ino, _)) = listing.live
            && !self.slots.iter().any(|s| s.ino == Some(ino))
        {
            let slot = Slot::new(serials.take(), None, Some(ino), 0);
            added.push(slot.serial);
            self.slots.push(slot);
        }
        self.found += added.len() as i64;
        self.forget_pruned(listing);
        added
    }

    /// A live generation rotated before its descriptor was opened (or with `/proc` unread)
    /// has no key yet: it is the oldest unknown key not followed, confirmed by its start. One
    /// that cannot be recognised by its start (nothing of it read yet) is forgotten: its key,
    /// if it is still there, is adopted as unknown and read from its start, and if it was
    /// pruned, the count of created files reports it.
    fn find_rotated(
        &mut self,
        listing: &Listing,
        confirm: &mut dyn FnMut(Gen, Fingerprint) -> bool,
    ) {
        let live = listing.live.map(|(ino, _)| ino);
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.key.is_some() || s.end.is_some() || s.ino.is_none() || s.ino == live {
                i += 1;
                continue;
            }
            if !s.fp.identifies() && s.read == 0 {
                // Counted or not (a resumed one), it is a generation still to be found.
                self.slots.remove(i);
                self.found -= 1;
                continue;
            }
            let fp = s.fp;
            let found = listing
                .backups
                .iter()
                .filter(|b| !self.is_known(b.key) && !self.follows(b))
                .map(|b| b.key)
                .find(|&k| fp.identifies() && confirm(Gen::Backup(k), fp));
            if let Some(k) = found {
                self.slots[i].key = Some(k);
            }
            i += 1;
        }
    }

    /// Inserts a backup found by a listing in key order, but never before a generation
    /// already being read.
    fn place(&mut self, slot: Slot) {
        let key = slot.key;
        let by_key = self
            .slots
            .iter()
            .position(|s| s.key.is_none() || s.key > key)
            .unwrap_or(self.slots.len());
        let floor = self
            .slots
            .iter()
            .rposition(|s| s.read > s.start || s.end.is_some())
            .map_or(0, |i| i + 1);
        if by_key < floor || self.known.last().is_some_and(|&k| Some(k) > key) {
            self.anomalies += 1;
        }
        self.slots.insert(by_key.max(floor), slot);
    }

    /// Keys no longer on disk cannot come back: they leave `known`.
    fn forget_pruned(&mut self, listing: &Listing) {
        if self.known.len() < MAX_KNOWN / 2 {
            return;
        }
        self.known.retain(|k| listing.get(*k).is_some());
        let excess = self.known.len().saturating_sub(MAX_KNOWN);
        self.known.drain(..excess);
    }

    fn slot_mut(&mut self, serial: u64) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.serial == serial)
    }

    pub fn slot(&self, serial: u64) -> Option<&Slot> {
        self.slots.iter().find(|s| s.serial == serial)
    }

    /// The generation to read now.
    pub fn current(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.end.is_none())
    }

    /// The reader consumed `slot` up to `upto`.
    pub fn read(&mut self, serial: u64, upto: u64, size: u64) {
        if let Some(s) = self.slot_mut(serial) {
            s.read = s.read.max(upto);
            s.size_seen = s.size_seen.max(size).max(upto);
        }
    }

    /// The fingerprint of the generation's start, once read.
    pub fn set_fp(&mut self, serial: u64, fp: Fingerprint) {
        if let Some(s) = self.slot_mut(serial) {
            s.fp = fp;
        }
    }

    /// The reader is at the end of what `serial` has. `gz`: it is read from its `.gz`;
    /// `name`: its descriptor's name (`None` without `/proc`); `live`: the live file now.
    pub fn at_eof(
        &mut self,
        serial: u64,
        gz: bool,
        name: Option<FdName>,
        live: Option<DevIno>,
    ) -> Eof {
        let Some(s) = self.slot_mut(serial) else {
            return Eof::Wait;
        };
        // A backup is complete: lumberjack closes a file before it renames it.
        if gz || s.key.is_some() {
            return Eof::Drain;
        }
        match name {
            Some(FdName::Live) => Eof::Wait,
            Some(FdName::Backup(k)) => {
                s.key.get_or_insert(k);
                Eof::Drain
            }
            Some(FdName::Elsewhere) => Eof::Drain,
            None if live == s.ino => Eof::Wait,
            None => Eof::Drain,
        }
    }

    /// The generation was read to its end, `end` bytes.
    pub fn finished(&mut self, serial: u64, end: u64) {
        if let Some(s) = self.slot_mut(serial) {
            s.read = end;
            s.size_seen = end;
            s.end = Some(end);
        }
    }

    /// The generation cannot be read on (gone before it was opened, a read error): what the
    /// reader had not consumed is lost. It counts as read to where the reader was.
    pub fn lost(&mut self, serial: u64) -> Option<Lost> {
        let s = self.slot_mut(serial)?;
        let bytes = s.size_seen.saturating_sub(s.read);
        let lost = Lost {
            generation: s.generation(),
            offset: s.read,
            bytes,
            exact: false,
            truncated: false,
            only_window: false,
            window_from: None,
            next: None,
        };
        s.end = Some(s.read);
        Some(lost)
    }

    /// The live file was truncated in place: what was past the reader is lost (a lower
    /// bound: it may have grown before the truncation). The generation read so far ends
    /// where the reader was; the file is followed on from 0 as a new one (its offsets
    /// restart, and commits of the old lines still arrive under the old serial).
    pub fn truncated(&mut self, serial: u64, serials: &mut Serials) -> Option<(Lost, u64)> {
        let i = self.slots.iter().position(|s| s.serial == serial)?;
        let s = &mut self.slots[i];
        let lost = Lost {
            generation: s.generation(),
            offset: s.read,
            bytes: s.size_seen.saturating_sub(s.read),
            exact: false,
            truncated: true,
            only_window: false,
            window_from: None,
            next: None,
        };
        s.end = Some(s.read);
        let again = Slot::new(serials.take(), None, s.ino, 0);
        let new_serial = again.serial;
        self.slots.insert(i + 1, again);
        Some((lost, new_serial))
    }

    /// Everything of `serial` before `offset` is durable downstream.
    pub fn commit(&mut self, serial: u64, offset: u64) {
        if let Some(s) = self.slot_mut(serial) {
            s.committed = s.committed.max(offset);
        }
    }

    /// Records the time of an event of `serial` at or before its committed offset.
    pub fn set_time(&mut self, serial: u64, time: i64) {
        if let Some(s) = self.slot_mut(serial) {
            s.last_time = Some(time);
        }
    }

    /// Leaves the generations committed to their end (their keys become known) and says what
    /// to store.
    pub fn settle(&mut self) -> Saved {
        while self.slots.first().is_some_and(Slot::settled) {
            let s = self.slots.remove(0);
            if let Some(k) = s.key {
                insert_known(&mut self.known, k);
            }
            if let Some(next) = self.slots.first_mut() {
                // The loss window of the next starts where this one ended, until it has
                // committed events of its own.
                next.last_time = next.last_time.or(s.last_time);
            }
            self.last_settled = Some(cursor_of(&s));
        }
        let cursor = match self.slots.first() {
            // A live file that cannot be recognised by its start yet (empty, or shorter than
            // a line) and has nothing committed is named by the generation before it: after a
            // restart, every key after that one is unread, so it is found by its key.
            Some(s) if unrecognisable(s) && self.last_settled.is_some() => {
                self.last_settled.clone()
            }
            Some(s) => Some(cursor_of(s)),
            None => self.last_settled.clone(),
        };
        Saved {
            cursor,
            known: self.known.clone(),
        }
    }
}

fn unrecognisable(s: &Slot) -> bool {
    s.key.is_none() && s.committed == 0 && !s.fp.identifies()
}

fn cursor_of(s: &Slot) -> Cursor {
    Cursor {
        generation: s.generation(),
        committed: s.committed,
        size_seen: s.size_seen.max(s.read),
        final_size: s.end.is_some(),
        fp: s.fp,
        last_time: s.last_time,
    }
}
