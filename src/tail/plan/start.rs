//! Where a log's reading starts: a first start, or a resume from the stored cursor.

use super::{Cursor, FirstStart, Gen, Listing, LogPlan, Lost, Saved, Serials, Slot};
use crate::tail::generation::Key;

/// The generations seen after the cursor's and gone now: pruned while the shipper was down.
fn pruned_pending(pending: &[(Key, u64, bool)], listing: &Listing) -> Vec<Lost> {
    pending
        .iter()
        .filter(|(k, _, _)| listing.get(*k).is_none())
        .map(|&(k, size, final_size)| Lost {
            generation: Gen::Backup(k),
            offset: 0,
            bytes: size,
            exact: final_size,
            truncated: false,
            only_window: false,
            window_from: None,
            next: None,
        })
        .collect()
}

impl LogPlan {
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
    ) -> (LogPlan, Vec<Lost>) {
        let mut plan = LogPlan {
            known: saved.known,
            ..LogPlan::default()
        };
        plan.known.sort_unstable();
        let mut losses = pruned_pending(&saved.pending, listing);
        let Some(c) = saved.cursor else {
            plan.adopt_unknown(listing, serials);
            return (plan, losses);
        };
        let found = plan.find_cursor(&c, listing, confirm);
        let mut lost = match found {
            Some((generation, truncated)) => {
                plan.resume_in(&c, generation, truncated, listing, serials)
            }
            None => Some(Lost {
                generation: c.generation,
                offset: c.committed,
                bytes: c.size_seen.saturating_sub(c.committed),
                exact: c.final_size,
                truncated: false,
                only_window: false,
                window_from: Some(c.last_time),
                next: None,
            }),
        };
        plan.adopt_unknown(listing, serials);
        if let Some(l) = lost.as_mut().filter(|l| l.next.is_none()) {
            l.next = plan.slots.first().map(|s| s.serial);
        }
        losses.splice(0..0, lost);
        (plan, losses)
    }

    /// Follows the cursor's generation, found as `generation`, from where it was committed.
    /// What is lost (a truncation, or a file too short to be recognised) is returned.
    fn resume_in(
        &mut self,
        c: &Cursor,
        generation: Gen,
        truncated: bool,
        listing: &Listing,
        serials: &mut Serials,
    ) -> Option<Lost> {
        let rotated = matches!(c.generation, Gen::Live(_)) && matches!(generation, Gen::Backup(_));
        // A live file too short to be recognised, rotated while we were down: the oldest
        // unknown key is read as it, from 0 (at least once) rather than at an offset into what
        // may be another generation, and whatever went before that key is reported as
        // possibly lost (the file may have been pruned, and that key be a later one).
        let unrecognised = rotated && !c.fp.identifies();
        let start = if truncated || unrecognised {
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
        slot.size_seen = slot.size_seen.max(c.size_seen);
        let lost = (truncated || unrecognised).then(|| Lost {
            generation: if unrecognised {
                c.generation
            } else {
                generation
            },
            offset: c.committed,
            bytes: if truncated {
                c.size_seen.saturating_sub(c.committed)
            } else {
                0
            },
            exact: false,
            truncated,
            only_window: unrecognised,
            window_from: unrecognised.then_some(c.last_time),
            next: Some(slot.serial),
        });
        self.slots.push(slot);
        lost
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
                    // Same inode and same start: ours (shorter than committed: truncated in
                    // place). Another start: the inode was freed and reused by a new file.
                    let g = Gen::Live(ino);
                    if confirm(g) {
                        return Some((g, size < c.committed));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::file::Fingerprint;
    use crate::tail::plan::Listed;

    fn cursor_on_live(committed: u64) -> Saved {
        Saved {
            cursor: Some(Cursor {
                generation: Gen::Live((1, 5)),
                committed,
                size_seen: committed,
                final_size: false,
                fp: Fingerprint { len: 1024, hash: 7 },
                last_time: None,
            }),
            known: Vec::new(),
            pending: Vec::new(),
        }
    }

    #[test]
    fn a_reused_inode_is_not_the_cursors_file_its_start_says_so() {
        let key = Key::parse(b"2026-11-24T14-35-36.770").unwrap();
        let listing = Listing {
            backups: vec![Listed {
                key,
                plain: Some((1, 6)),
                gz: false,
            }],
            // The plain backup was deleted and its inode reused by the new live file.
            live: Some(((1, 5), 100)),
        };
        let mut confirm = |g| g == Gen::Backup(key);
        let (plan, lost) = LogPlan::resume(
            cursor_on_live(300),
            &listing,
            &mut confirm,
            &mut Serials::default(),
        );
        assert_eq!(lost, vec![]);
        let first = &plan.slots[0];
        assert_eq!((first.key, first.start), (Some(key), 300));
        assert_eq!(plan.slots[1].ino, Some((1, 5)));
        assert_eq!(plan.slots[1].start, 0);
    }

    #[test]
    fn the_same_file_shorter_than_committed_was_truncated() {
        let listing = Listing {
            backups: Vec::new(),
            live: Some(((1, 5), 100)),
        };
        let mut confirm = |g| g == Gen::Live((1, 5));
        let (plan, lost) = LogPlan::resume(
            cursor_on_live(300),
            &listing,
            &mut confirm,
            &mut Serials::default(),
        );
        let [lost] = &lost[..] else {
            panic!("a truncation is one loss: {lost:?}")
        };
        assert!(lost.truncated && !lost.exact);
        assert_eq!((plan.slots.len(), plan.slots[0].start), (1, 0));
    }
}
