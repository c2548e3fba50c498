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
    /// Generations after the cursor's that were seen under a key: (key, size seen, final).
    /// One missing at a restart was pruned while the shipper was down: its loss is reported
    /// under its name even where the time window cannot cover it (a clock stepped back).
    pub pending: Vec<(Key, u64, bool)>,
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
    /// Ended by a reported loss: what it had left is accounted for.
    reported: bool,
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
            reported: false,
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

mod observe;
mod start;
pub mod unseen;

impl LogPlan {
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
        s.reported = true;
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
            // restart, every key after that one is unread, so it is found by its key. With
            // none before it (a first start on an empty log), there is no cursor: a restart
            // reads every generation not known from its start, which loses nothing committed.
            // (Not reported then: that file rotated and pruned while the shipper was down.)
            Some(s) if unrecognisable(s) => self.last_settled.clone(),
            Some(s) => Some(cursor_of(s)),
            None => self.last_settled.clone(),
        };
        let cursor_gen = cursor.as_ref().map(|c| c.generation);
        let pending = self
            .slots
            .iter()
            .filter(|s| !s.reported)
            .filter_map(|s| Some((s.key?, s.size_seen.max(s.read), s.end.is_some())))
            .filter(|(k, _, _)| cursor_gen != Some(Gen::Backup(*k)))
            .collect();
        Saved {
            cursor,
            known: self.known.clone(),
            pending,
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
