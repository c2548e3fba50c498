//! Crash points: test-only kills inside the durability steps, so that each window between
//! two steps is provably covered by the crash tests (issue: "kill points inside the
//! durability steps"). `KAS_CRASH_AT=<point>:<n>` makes the process SIGKILL itself the
//! `n`-th time it reaches `<point>`. The points:
//!
//! - `spool_segment_synced`: a batch's segment is written and fsynced under `tmp/`, not yet
//!   renamed into the spool (the batch is not durable; its lines are not committed);
//! - `spool_segment_stored`: the segment is renamed and the directory fsynced, the lines'
//!   commit is not yet saved (they are read again after the restart: duplicates);
//! - `state_file_synced`: a checkpoint's new content is fsynced under its tmp name, not yet
//!   renamed over the old one (the old one is used after the restart);
//! - `intake_accepted`: the intake answered 2xx, the segment is not yet deleted (it is sent
//!   again after the restart: duplicates).
//!
//! Only debug builds (what `cargo test` runs) read the variable; in release builds
//! [`crash_point`] is empty and inlined away.

/// Kills the process here if `KAS_CRASH_AT` names this point and this is its `n`-th hit.
#[cfg(debug_assertions)]
pub fn crash_point(point: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let value = std::env::var("KAS_CRASH_AT").ok()?;
        let (name, nth) = value.split_once(':')?;
        Some((name.to_string(), nth.parse().ok()?))
    });
    let Some((name, nth)) = plan else { return };
    if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        log::warn!("KAS_CRASH_AT: killing the process at {point}");
        // SAFETY: sends a signal to this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_point(_point: &str) {}
