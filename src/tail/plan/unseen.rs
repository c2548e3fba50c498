//! The check that no generation came and went unseen: inotify counts the files created under
//! the live name, listings find generations ([`LogPlan::found`](super::LogPlan::found)), and
//! a shortfall that lasts two listings is reported.
//!
//! Invariant: every generation created under the followed name after start-up is found by a
//! listing (as the live file or under its key) or reported. A listing taken after the count
//! sees every file created before it unless it is gone. A shortfall is reported only once it
//! lasts two listings (a directory read while a file was renamed and compressed can miss both
//! its names once). Files found without a counted creation (created just before start-up)
//! make the count a lower bound; a queue overflow resets it. Never over-reported: `found`
//! must count each generation created after start-up once it is listed (see `observe`), so
//! that a shortfall means generations no listing saw.

/// What a listing says about the creations counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every creation counted was found.
    Balanced,
    /// Short for the first time: look again before reporting.
    LookAgain,
    /// This many generations were created and deleted unseen (reported once).
    Unseen(u64),
}

#[derive(Clone, Debug, Default)]
pub struct UnseenCheck {
    created: u64,
    reported: u64,
    short_before: bool,
}

impl UnseenCheck {
    /// inotify counted `n` more files created under the live name.
    pub fn created(&mut self, n: u64) {
        self.created += n;
    }

    /// The inotify queue overflowed: creations were lost, the count restarts at what was
    /// found (what was lost meanwhile goes unreported).
    pub fn overflowed(&mut self, found: i64) {
        self.created = (found + self.reported as i64).max(0) as u64;
    }

    /// After a listing of every log, with `found` summed over their plans.
    pub fn listed(&mut self, found: i64) -> Verdict {
        let short = self.pending(found);
        if short == 0 {
            self.short_before = false;
            return Verdict::Balanced;
        }
        if !self.short_before {
            self.short_before = true;
            return Verdict::LookAgain;
        }
        self.reported += short;
        self.short_before = false;
        Verdict::Unseen(short)
    }

    /// The shortfall not reported yet, after a listing that found `found`.
    pub fn pending(&self, found: i64) -> u64 {
        (self.created as i64 - found - self.reported as i64).max(0) as u64
    }

    /// Generations reported unseen so far.
    pub fn reported(&self) -> u64 {
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortfall_is_reported_once_it_lasts_two_listings() {
        let mut u = UnseenCheck::default();
        u.created(2);
        assert_eq!(u.listed(2), Verdict::Balanced);
        u.created(1);
        assert_eq!(u.listed(2), Verdict::LookAgain);
        assert_eq!(u.listed(3), Verdict::Balanced, "found at the second look");
        u.created(2);
        assert_eq!(u.listed(3), Verdict::LookAgain);
        assert_eq!(u.listed(3), Verdict::Unseen(2));
        assert_eq!(u.listed(3), Verdict::Balanced, "reported once");
        assert_eq!(u.reported(), 2);
    }
}
