//! What a look at the directory changes: generations found, keys learned, pruned keys
//! forgotten.

use super::{DevIno, Gen, Listed, Listing, LogPlan, MAX_KNOWN, Serials, Slot};
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
        if let Some(ino) = self.new_live(listing, &[]) {
            self.slots
                .push(Slot::new(serials.take(), None, Some(ino), 0));
        }
    }

    /// The listing's live file, if it is a generation no slot follows yet. It is followed by
    /// a slot without a key (not rotated yet) with its inode, or by one with a key whose plain
    /// inode is held open in `names` (the live name was looked up just before the rotation).
    /// A keyed slot whose inode is not held does not follow it: once its plain backup is
    /// deleted (compressed, pruned), the filesystem may give its inode number to the next
    /// file, and ext4 gives it to the next `audit.log` (found under load: that file was not
    /// counted as found until the keyed generation was read, and the creation count reported
    /// it as created and deleted unseen). A backup of the listing with the live inode says the
    /// live name was looked up before a rotation: not a new file either. (Without `/proc`,
    /// `names` is empty: a live name looked up before a rotation whose plain backup is already
    /// gone from the directory read is taken for a new file once; the next listing drops it.)
    fn new_live(&self, listing: &Listing, names: &[(u64, FdName)]) -> Option<DevIno> {
        let (ino, _) = listing.live?;
        // A descriptor on the plain file (a `.gz`'s name is elsewhere: it holds another inode).
        let held = |serial| {
            let plain = |n: &FdName| *n != FdName::Elsewhere;
            names.iter().any(|(s, n)| *s == serial && plain(n))
        };
        let followed = self
            .slots
            .iter()
            .any(|s| s.end.is_none() && s.ino == Some(ino) && (s.key.is_none() || held(s.serial)));
        let renamed = listing.backups.iter().any(|b| b.plain == Some(ino));
        (!followed && !renamed).then_some(ino)
    }

    /// Whether a slot already is this backup (by key, or by the plain file's inode). Only
    /// generations without a key and not read to their end are matched by inode: a finished
    /// one may wait for its commits, and a keyed one be held as its `.gz`, while its plain
    /// file is deleted and the inode reused by a new file (found under qemu: the new
    /// `audit.log` went unfollowed until then, and was counted as unseen).
    fn follows(&self, b: &Listed) -> bool {
        self.slots.iter().any(|s| {
            s.key == Some(b.key)
                || (s.key.is_none() && s.end.is_none() && b.plain.is_some() && s.ino == b.plain)
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
        if let Some(ino) = self.new_live(listing, names) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::plan::FirstStart;
    use crate::tail::plan::unseen::{UnseenCheck, Verdict};

    fn key(s: &str) -> Key {
        Key::parse(s.as_bytes()).unwrap()
    }

    fn listed(key: Key, plain: Option<DevIno>) -> Listed {
        let gz = plain.is_none();
        Listed { key, plain, gz }
    }

    /// The e2e crash-point test's false "deleted unseen" (ext4, under load): a restart lists
    /// `k1`'s plain backup (inode 10) mid-compression, and holds it as its `.gz`; the plain
    /// one is deleted, and the next `audit.log` gets inode 10 while `k1` waits to be read.
    #[test]
    fn a_new_live_file_on_the_inode_of_a_deleted_backup_is_found() {
        let k1 = key("2026-11-24T14-00-00.001");
        let k2 = key("2026-11-24T14-00-00.002");
        let mut serials = Serials::default();
        let start = Listing {
            backups: vec![listed(k1, Some((1, 10)))],
            live: Some(((1, 11), 500)),
        };
        let mut plan = LogPlan::first_start(&start, FirstStart::Beginning, &mut serials);
        let live_serial = plan.slots[1].serial;
        let mut check = UnseenCheck::default();
        // audit.log (inode 11, read now) rotated to k2; the new audit.log has inode 10.
        check.created(1);
        let after = Listing {
            backups: vec![listed(k1, None), listed(k2, Some((1, 11)))],
            live: Some(((1, 10), 0)),
        };
        // k1 is held as its .gz: the I/O layer names every descriptor it holds.
        let names = [
            (plan.slots[0].serial, FdName::Elsewhere),
            (live_serial, FdName::Backup(k2)),
        ];
        for _ in 0..2 {
            plan.observe(&after, &names, &mut |_, _| false, &mut serials);
            assert_eq!(check.listed(plan.found), Verdict::Balanced);
        }
        let new = plan.slots.last().map(|s| (s.key, s.ino));
        assert_eq!(new, Some((None, Some((1, 10)))), "{:?}", plan.slots);
    }

    /// The live name looked up just before a rotation, the directory read after it (and
    /// after the compression): the inode is the held, rotated generation, not a new file.
    #[test]
    fn a_live_inode_held_under_its_key_is_not_a_new_file() {
        let k2 = key("2026-11-24T14-00-00.002");
        let mut serials = Serials::default();
        let start = Listing {
            backups: Vec::new(),
            live: Some(((1, 11), 500)),
        };
        let mut plan = LogPlan::first_start(&start, FirstStart::Beginning, &mut serials);
        let names = [(plan.slots[0].serial, FdName::Backup(k2))];
        let raced = Listing {
            backups: vec![listed(k2, None)],
            live: Some(((1, 11), 500)),
        };
        plan.observe(&raced, &names, &mut |_, _| false, &mut serials);
        assert_eq!(plan.found, 0);
        assert_eq!(plan.slots.len(), 1, "{:?}", plan.slots);
        assert_eq!(plan.slots[0].key, Some(k2));
    }
}
