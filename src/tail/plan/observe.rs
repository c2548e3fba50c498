//! What a look at the directory changes: generations found, keys learned, pruned keys
//! forgotten.

use super::{Gen, Listed, Listing, LogPlan, MAX_KNOWN, Serials, Slot};
use crate::tail::file::Fingerprint;
use crate::tail::generation::{FdName, Key};

impl LogPlan {
    pub(super) fn is_known(&self, key: Key) -> bool {
        self.known.binary_search(&key).is_ok()
    }

    /// Adds every unknown key not followed yet (key order), then the live file.
    pub(super) fn adopt_unknown(&mut self, listing: &Listing, serials: &mut Serials) {
        for b in &listing.backups {
            if !self.is_known(b.key) && !self.follows(b) {
                let slot = Slot::new(serials.take(), Some(b.key), b.plain, 0);
                self.slots.push(slot);
            }
        }
        if let Some((ino, _)) = listing.live
            && !self
                .slots
                .iter()
                .any(|s| s.end.is_none() && s.ino == Some(ino))
        {
            self.slots
                .push(Slot::new(serials.take(), None, Some(ino), 0));
        }
    }

    /// Whether a slot already is this backup (by key, or by the plain file's inode). Only
    /// generations not read to their end are matched by inode: a finished one may wait for
    /// its commits while its file is deleted and the inode reused by a new file (found under
    /// qemu: the new `audit.log` went unfollowed until then, and was counted as unseen).
    fn follows(&self, b: &Listed) -> bool {
        self.slots.iter().any(|s| {
            s.key == Some(b.key) || (s.end.is_none() && b.plain.is_some() && s.ino == b.plain)
        })
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
            if let Some(s) = self.slots.iter_mut().find(|s| {
                s.key.is_none() && s.end.is_none() && b.plain.is_some() && s.ino == b.plain
            }) {
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
            && !self
                .slots
                .iter()
                .any(|s| s.end.is_none() && s.ino == Some(ino))
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

    /// Inserts a backup found by a listing in key order, but never before a generation with
    /// progress (read from, or resumed at an offset: it may hold the stored cursor).
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
            .rposition(|s| s.read > 0 || s.end.is_some())
            .map_or(0, |i| i + 1);
        if by_key < floor || self.known.last().is_some_and(|&k| Some(k) > key) {
            self.anomalies += 1;
        }
        self.slots.insert(by_key.max(floor), slot);
    }

    /// Keys no longer on disk cannot come back: they leave `known`, which so stays about as
    /// long as the backups kept. Only keys older than the oldest listed one are dropped:
    /// lumberjack prunes oldest first, while the backup a directory read can miss (its `.gz`
    /// created behind the read, its plain name deleted ahead of it) is the newest one.
    fn forget_pruned(&mut self, listing: &Listing) {
        if let Some(oldest) = listing
            .backups
            .first()
            .filter(|_| listing.backups.len() > 1)
        {
            let gone = self.known.partition_point(|k| *k < oldest.key);
            self.known.drain(..gone);
        }
        let excess = self.known.len().saturating_sub(MAX_KNOWN);
        self.known.drain(..excess);
    }
}
