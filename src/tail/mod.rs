//! Tail: follows kube-apiserver audit logs across rotation, compression, pruning and
//! restarts (DESIGN.md §2, §3), on lumberjack's generations:
//!
//! - [`generation`]: a backup's key (the time in its name) and the names of one log;
//! - [`plan`]: every decision, with no I/O: the order of generations, when one is complete,
//!   where a restart resumes, what is lost; model-checked in `model.rs`;
//! - [`log`]: one log's I/O around the plan (listing, held descriptors, reading);
//! - [`cursor`]: the stored cursors (and the upgrade from the previous format);
//! - [`file`]: the byte source (plain or gzip at an offset) and fingerprints;
//! - [`watch`]: the inotify wake-up; [`access`]: what cannot be read, for health.
//!
//! Nothing is recorded for what is merely read: the pipeline calls [`Tailer::commit`] with a
//! line's [`Position`] once that line is durable downstream, and [`Tailer::save`] makes the
//! commits durable.
//!
//! **Identity and its limits.** A log is a live name (`audit.log`) in a directory. Its
//! generations are the lumberjack backups `<stem>-<UTC time><ext>[.gz]` (by key) and the live
//! file (by device and inode until it is rotated and gets its key). Other writers matched by
//! a glob (logrotate `copytruncate`, numbered `.1 .2` renames, plain appends) have only the
//! live file: it is followed by device and inode; a rename to a non-lumberjack name is read
//! to its end through the open descriptor, but after a restart such a file is not searched
//! for (its unread rest is reported as a lower bound); a truncation is reported and the file
//! read again from its start. A `.gz` of another writer is not read. The key of a generation
//! read through its descriptor comes from `/proc/self/fd`: without `/proc`, a file compressed
//! before a listing saw its plain backup is read again from its `.gz` after a restart.

pub mod access;
pub mod cursor;
mod discover;
mod event;
pub mod file;
pub mod generation;
mod listing;
mod log;
#[cfg(test)]
mod model;
pub mod plan;
mod reader;
pub mod watch;

use access::{Access, Unreadable};
use cursor::{Cursors, LoadProblem, Loaded};
use file::Fingerprint;
use generation::Names;
use log::Log;
use plan::unseen::{UnseenCheck, Verdict};
use plan::{FirstStart, LogPlan, Saved, Serials};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use watch::Watcher;

pub use event::{Gap, GapReason, Polled, Position, TailEvent};

/// Where to start in a file met on the very first start (no checkpoint at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Clone, Debug)]
pub struct TailConfig {
    /// A path, or a glob (`*`, `?`, `[...]`) in any component.
    pub pattern: String,
    /// Where the cursor file lives.
    pub state_dir: PathBuf,
    /// The cursor file's name in `state_dir`.
    pub checkpoint_name: String,
    pub start_at: StartAt,
    /// Longest line passed on; longer ones are reported as [`TailEvent::TooLong`].
    pub max_line: usize,
    /// How often names are re-scanned without an inotify event.
    pub rescan_every: Duration,
    /// Descriptors held per log for generations waiting to be read (oldest first); newer
    /// ones are opened by name when their turn comes.
    pub max_rotated_open: usize,
    /// Bytes read per [`Tailer::poll`] at most, so a backlog does not starve the caller.
    pub read_budget: usize,
}

impl TailConfig {
    pub fn new(pattern: &str, state_dir: &Path) -> TailConfig {
        TailConfig {
            pattern: pattern.to_owned(),
            state_dir: state_dir.to_owned(),
            checkpoint_name: format!(
                "checkpoints-{:016x}",
                Fingerprint::of(pattern.as_bytes()).hash
            ),
            start_at: StartAt::Beginning,
            max_line: crate::lines::DEFAULT_MAX_LINE,
            rescan_every: Duration::from_secs(1),
            max_rotated_open: 16,
            read_budget: 4 * 1024 * 1024,
        }
    }
}

fn bad_pattern(pattern: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("file pattern {pattern:?}: {e}"),
    )
}

pub struct Tailer {
    cfg: TailConfig,
    /// The file-name component of the pattern.
    name: glob::Pattern,
    /// The directory part of the pattern (may hold globs).
    dir_pattern: PathBuf,
    logs: Vec<Log>,
    store: Cursors,
    /// Stored states of logs not followed now (their files are gone for the moment).
    dormant: Vec<(PathBuf, Saved)>,
    /// What was last written, to skip saves that change nothing.
    last_saved: Vec<(PathBuf, Saved)>,
    /// A first start or an upgrade is written once even with nothing to record.
    must_write: bool,
    /// The previous format's entries, until every log they name is followed.
    v1: Option<(i64, Vec<cursor::V1Entry>)>,
    first_start: bool,
    serials: Serials,
    watcher: Option<Watcher>,
    paused: bool,
    last_scan: Instant,
    rescan: bool,
    gaps: Vec<Gap>,
    unseen: Option<UnseenCheck>,
    access: Access,
}

impl Tailer {
    /// Loads the cursors and finds where to resume. A missing or damaged cursor file is not
    /// an error: it is returned for the caller to report, and reading starts per
    /// [`TailConfig::start_at`].
    pub fn open(cfg: TailConfig) -> io::Result<(Tailer, Option<LoadProblem>)> {
        let pattern = Path::new(&cfg.pattern);
        let file_name = pattern
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad_pattern(&cfg.pattern, "does not end in a file name"))?;
        let dir_pattern = match pattern.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let literal_name = (!file_name.contains(['*', '?', '['])).then(|| file_name.to_owned());
        let name = glob::Pattern::new(file_name).map_err(|e| bad_pattern(&cfg.pattern, e))?;
        let (store, loaded, problem) = Cursors::load(&cfg.state_dir, &cfg.checkpoint_name)?;
        let watcher = match Watcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                ::log::warn!(
                    "inotify unavailable ({e}); following {} by periodic scans only",
                    cfg.pattern
                );
                None
            }
        };
        let (dormant, v1) = match loaded {
            Loaded::Nothing => (Vec::new(), None),
            Loaded::Cursors(logs) => (logs, None),
            Loaded::V1 { saved_at, entries } => (Vec::new(), Some((saved_at, entries))),
        };
        let mut tailer = Tailer {
            name,
            dir_pattern,
            logs: Vec::new(),
            store,
            first_start: problem.is_some(),
            // From the end, a first start must be written at once: a second first start would
            // take what was rotated meanwhile for history. From the beginning, a start that
            // ends before its first commit is saved is simply a first start again.
            must_write: (problem.is_some() && cfg.start_at == StartAt::End) || v1.is_some(),
            // What is stored: a start that changes nothing does not write it again.
            last_saved: dormant.clone(),
            dormant,
            v1,
            serials: Serials::default(),
            watcher,
            paused: false,
            last_scan: Instant::now(),
            rescan: false,
            gaps: Vec::new(),
            unseen: None,
            access: Access::default(),
            cfg,
        };
        tailer.discover();
        if tailer.first_start && !tailer.must_write {
            // Nothing to store before the first commit (see `must_write`).
            tailer.last_saved = tailer.state();
        } else {
            // A first start from the end, an upgrade, or losses found at resume.
            tailer.save()?;
        }
        if let (Some(w), Some(name)) = (tailer.watcher.as_mut(), literal_name) {
            // Count creations from here on (what start-up listed is the baseline).
            w.count_creations_of(std::ffi::OsStr::new(&name));
            if let Err(e) = w.drain() {
                ::log::debug!("inotify read: {e}");
            }
            tailer.unseen = Some(UnseenCheck::default());
        }
        tailer.rescan = true;
        Ok((tailer, problem))
    }

    /// Starts following one log: from its stored cursor, else as on a first start.
    fn start_log(&mut self, path: &Path) {
        let Some(names) = Names::of(path) else { return };
        let listing = match listing::list(&names) {
            Ok(l) => l,
            Err(e) => {
                self.access.unreadable.push(Unreadable::new(&names.dir, &e));
                return;
            }
        };
        let stored = match self.dormant.iter().position(|(p, _)| p == path) {
            Some(i) => Some(self.dormant.remove(i).1),
            None => self.v1.as_ref().map(|(saved_at, entries)| {
                let disk = backup_times(&names, &listing);
                cursor::upgrade(entries, *saved_at, &names, &disk)
            }),
        };
        let (plan, listing, losses) = match stored {
            Some(saved) => self.resume_log(&names, listing, saved),
            None => {
                // A log that appeared after the first start is new: read from its start.
                let at = match self.cfg.start_at {
                    StartAt::End if self.first_start => FirstStart::End,
                    _ => FirstStart::Beginning,
                };
                let plan = LogPlan::first_start(&listing, at, &mut self.serials);
                (plan, listing, Vec::new())
            }
        };
        ::log::debug!(
            "following {} ({} backups there)",
            path.display(),
            listing.backups.len()
        );
        let mut log = Log::new(names, plan, listing, self.cfg.max_line);
        // Held at once: a rotation must not take the cursor's file away unseen.
        log.hold(self.cfg.max_rotated_open, &mut self.access);
        for lost in losses {
            let gap = log.gap(&lost, GapReason::Deleted, reader::now_micros());
            self.gaps.push(gap);
        }
        self.logs.push(log);
    }

    /// The plan of a log resumed from its stored state, the listing it was made from, and
    /// what was lost while the shipper was down.
    fn resume_log(
        &mut self,
        names: &Names,
        mut listing: plan::Listing,
        saved: Saved,
    ) -> (LogPlan, plan::Listing, Vec<plan::Lost>) {
        let referenced: Vec<generation::Key> = saved
            .cursor
            .iter()
            .filter_map(|c| match c.generation {
                plan::Gen::Backup(k) => Some(k),
                plan::Gen::Live(_) => None,
            })
            .chain(saved.pending.iter().map(|p| p.0))
            .collect();
        listing::confirm_keys(names, &mut listing, &referenced);
        if let Some(plan::Gen::Live(ino)) = saved.cursor.as_ref().map(|c| c.generation)
            && listing.live.is_none_or(|(live, _)| live != ino)
        {
            // Rotated while we were down, under a key not known yet: a second read of the
            // directory covers a first one that missed it mid-compression.
            if let Ok(again) = listing::list(names) {
                listing::merge(&mut listing, again);
            }
        }
        let path = names.live_path();
        ::log::debug!("{}: resuming at {:?}", path.display(), saved.cursor);
        let fp = saved.cursor.as_ref().map(|c| c.fp);
        let mut by_fp = |g| {
            let yes = fp.is_none_or(|fp| listing::confirms(names, &listing, g, fp));
            ::log::debug!("{}: is {g:?} the cursor's ({fp:?})? {yes}", path.display());
            yes
        };
        let (plan, losses) = LogPlan::resume(saved, &listing, &mut by_fp, &mut self.serials);
        (plan, listing, losses)
    }

    /// Reads what is new and hands it to `on`, oldest generation first. While paused it reads
    /// nothing but still looks at the directories and holds new generations open: a file
    /// created during the pause must be held before rotation and pruning take it away.
    pub fn poll(&mut self, mut on: impl FnMut(TailEvent<'_>)) -> Polled {
        let mut polled = Polled::default();
        if let Some(w) = self.watcher.as_mut() {
            match w.drain() {
                Ok(wake) => self.take_wake(wake),
                Err(e) => ::log::debug!("inotify read: {e}"),
            }
        }
        if self.rescan || self.last_scan.elapsed() >= self.cfg.rescan_every {
            self.scan();
        }
        for gap in self.gaps.drain(..) {
            on(TailEvent::Gap(gap));
        }
        if self.paused {
            return polled;
        }
        let (budget, held) = (self.cfg.read_budget, self.cfg.max_rotated_open);
        for log in &mut self.logs {
            log.read(
                &mut on,
                &mut polled,
                budget,
                &mut self.serials,
                held,
                &mut self.access,
            );
            if polled.more {
                break;
            }
        }
        polled
    }

    /// Lists every log's directory (and the pattern's, for new logs).
    fn scan(&mut self) {
        self.rescan = false;
        self.last_scan = Instant::now();
        self.discover();
        let held = self.cfg.max_rotated_open;
        for log in &mut self.logs {
            log.observe(&mut self.serials, held, &mut self.access);
        }
        self.access.matched = self.logs.iter().filter(|l| l.matched()).count();
        self.check_unseen();
    }

    fn take_wake(&mut self, wake: watch::Wake) {
        self.rescan |= wake.names_changed;
        if let Some(u) = self.unseen.as_mut() {
            if wake.overflow {
                ::log::warn!(
                    "inotify queue overflow: a file of {} created and deleted unseen would go unreported",
                    self.cfg.pattern
                );
                u.overflowed(self.logs.iter().map(|l| l.plan.found).sum());
            } else {
                u.created(wake.created);
            }
        }
    }

    /// Reports generations created under the followed name that no listing has found (see
    /// [`UnseenCheck`]).
    fn check_unseen(&mut self) {
        let found: i64 = self.logs.iter().map(|l| l.plan.found).sum();
        let Some(u) = self.unseen.as_mut() else {
            return;
        };
        match u.listed(found) {
            Verdict::Balanced => {}
            Verdict::LookAgain => self.rescan = true,
            Verdict::Unseen(files) => self.gaps.push(Gap {
                path: PathBuf::from(&self.cfg.pattern),
                offset: 0,
                bytes: 0,
                exact: false,
                reason: GapReason::Unseen { files },
                lost_from: None,
                lost_until: None,
            }),
        }
    }

    /// Waits for the watcher (or the rescan interval) to say there is something to read.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let until_scan = self
            .cfg
            .rescan_every
            .saturating_sub(self.last_scan.elapsed());
        let timeout = timeout.min(until_scan);
        match self.watcher.as_mut() {
            Some(w) => {
                let wake = w.wait(timeout)?;
                self.take_wake(wake);
            }
            None => std::thread::sleep(timeout),
        }
        Ok(())
    }

    /// The inotify descriptor, for an event loop (`None` without inotify). After it turns
    /// readable, call [`Tailer::wait`] with a zero timeout to take the events.
    pub fn watch_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.watcher.as_ref().map(|w| w.as_raw_fd())
    }

    /// Stops reading (backpressure). Keep calling [`Tailer::poll`] while paused: it holds
    /// new generations open so that nothing rotates away meanwhile.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Everything before `pos` is durable downstream.
    pub fn commit(&mut self, pos: Position) {
        if let Some(log) = self
            .logs
            .iter_mut()
            .find(|l| l.plan.slot(pos.serial).is_some())
        {
            log.commit(pos);
        }
    }

    /// Makes the commits durable (only when something changed).
    pub fn save(&mut self) -> io::Result<()> {
        let all = self.state();
        if all == self.last_saved && !self.must_write {
            return Ok(());
        }
        let refs: Vec<(&Path, &Saved)> = all.iter().map(|(p, s)| (p.as_path(), s)).collect();
        self.store.save(reader::now_micros(), &refs)?;
        self.last_saved = all;
        self.v1 = None;
        self.must_write = false;
        Ok(())
    }

    /// What would be stored now, per log (generations committed to their end are left).
    fn state(&mut self) -> Vec<(PathBuf, Saved)> {
        let mut all: Vec<(PathBuf, Saved)> = self
            .logs
            .iter_mut()
            .map(|l| (l.names.live_path(), l.plan.settle()))
            .collect();
        all.extend(self.dormant.iter().cloned());
        all
    }

    /// Number of files currently open.
    pub fn open_files(&self) -> usize {
        self.logs.iter().map(Log::open_files).sum()
    }

    /// What can be read of the pattern, as of the last listing (see [`access`]).
    pub fn access(&mut self) -> &Access {
        self.access.following = self.open_files();
        &self.access
    }

    /// Generations found out of write order (a clock stepped backwards), since start.
    pub fn anomalies(&self) -> u64 {
        self.logs.iter().map(|l| l.plan.anomalies).sum()
    }
}

/// The backups of a log with their modification times (unix µs), for [`cursor::upgrade`].
fn backup_times(names: &Names, listing: &plan::Listing) -> Vec<(generation::Key, i64)> {
    listing
        .backups
        .iter()
        .map(|b| {
            let path = names.backup_path(b.key, b.plain.is_none());
            let mtime = std::fs::metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64);
            (b.key, mtime)
        })
        .collect()
}
