//! Where a log's reading starts: a first start, or a resume from the stored cursor.

use super::{Cursor, FirstStart, Gen, Listing, LogPlan, Lost, Saved, Serials, Slot};

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
        (plan, lost)
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
}
