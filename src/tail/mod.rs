//! Tail: follows kube-apiserver audit logs across rotation, compression and restarts
//! (DESIGN.md §2, §3), in the split of Fluent Bit's `in_tail`:
//!
//! - [`file`]: file identity (device, inode, fingerprint) and the byte source (plain/gzip);
//! - [`checkpoint`]: the committed offsets, stored durably;
//! - [`watch`]: the inotify wake-up;
//! - this module: the scanner that matches names to files and the reader that drains them.
//!
//! How files are followed:
//! - Every file whose name matches the pattern is followed, and so are its backups: names of
//!   lumberjack's form `<stem>-<UTC time><ext>[.gz]` only (see `BACKUP_TIME`). A followed
//!   file whose name no longer leads to it (renamed by rotation, deleted) is *rotated*: it is
//!   still read through
//!   its open descriptor — renamed and deleted files stay readable on Linux, and with
//!   `--audit-log-compress` the uncompressed backup lives only milliseconds — until its end,
//!   and then left. Files are read oldest first, so a rotated file is drained before the new
//!   one is started, and lines come out in write order.
//! - Nothing is recorded for what is merely read. The pipeline calls [`Tailer::commit`] with
//!   a line's [`Position`] once that line is durable downstream, and [`Tailer::save`] makes
//!   the commits durable. A restart resumes every file at its committed offset: in the plain
//!   file if it is still there (matched by inode and fingerprint), inside its `.gz` if it was
//!   compressed meanwhile (matched by fingerprint of the decompressed start).
//! - After a restart, rotated backups newer than the last save that the checkpoint does not
//!   know were written while the shipper was down: they are read from their start. Older
//!   unknown backups predate the shipper and are left alone.
//! - What cannot be read is reported as a [`Gap`], never silently skipped: a file deleted
//!   (pruned by `--audit-log-maxbackup`) before it was read to its end while the shipper was
//!   down, a file truncated in place, a rotated file given up because too many were open, a
//!   read error, files created, rotated and pruned while the reader was stalled (counted
//!   through inotify, see `UnseenCheck`). The size is exact when the file's final size was
//!   known.
//! - A directory mid-rotation is a moving target: a listing is retaken when a name leads to
//!   another inode than listed, a `.gz` next to its uncompressed twin is that twin, a missed
//!   file that cannot be identified yet is looked at again before anything newer is read,
//!   and a checkpointed file that start-up cannot open is searched by the next scans
//!   (`Orphan`) before it is reported deleted.

pub mod access;
pub mod checkpoint;
pub mod file;
pub mod watch;

use crate::lines::{Item, LineReader};
use access::{Access, DirProblem, Unreadable};
use checkpoint::{Checkpoints, Entry, LoadProblem};
use file::{FileId, Fingerprint, Source, dev_ino, fingerprint_file, is_gz, prefix};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use watch::Watcher;

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
    /// Where the checkpoint file lives.
    pub state_dir: PathBuf,
    /// The checkpoint file's name in `state_dir`.
    pub checkpoint_name: String,
    pub start_at: StartAt,
    /// Longest line passed on; longer ones are reported as [`TailEvent::TooLong`].
    pub max_line: usize,
    /// How often names are re-scanned and files re-checked without an inotify event.
    pub rescan_every: Duration,
    /// Rotated files kept open for draining; past this the oldest is given up (a gap).
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

/// A line's place: its file (a serial valid for this run) and the offset just past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub serial: u64,
    pub end: u64,
}

/// What the tailer hands to the pipeline.
#[derive(Debug)]
pub enum TailEvent<'a> {
    /// One line without its newline: `buf[..len]`, followed in `buf` by parser padding.
    Line {
        buf: &'a mut [u8],
        len: usize,
        path: &'a Path,
        offset: u64,
        pos: Position,
    },
    /// A line longer than `max_line`, skipped (its bytes were not kept).
    TooLong {
        path: &'a Path,
        offset: u64,
        len: u64,
        pos: Position,
    },
    /// Bytes that will never be read.
    Gap(Gap),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub path: PathBuf,
    /// Unread bytes lost (a lower bound when `exact` is false).
    pub bytes: u64,
    pub exact: bool,
    pub reason: GapReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The file was deleted (or replaced) before it was read to its end.
    Deleted,
    /// The file was truncated in place (copytruncate) past what had been read.
    Truncated,
    /// A rotated file was given up: too many rotated files were open.
    TooManyRotated,
    /// Reading failed.
    Unreadable(String),
    /// This many files were created under the followed name, rotated and deleted without
    /// ever being seen by a scan (the reader fell behind by more than the backups kept):
    /// their size is unknown. Detected by counting inotify's creations of the name.
    Unseen { files: u64 },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match &self.reason {
            GapReason::Deleted => "deleted before it was read to its end".to_string(),
            GapReason::Truncated => "truncated in place".to_string(),
            GapReason::TooManyRotated => "too many rotated files open".to_string(),
            GapReason::Unreadable(e) => format!("unreadable: {e}"),
            GapReason::Unseen { files } => format!(
                "{files} file(s) created, rotated and deleted before they could be opened \
                 (the reader fell behind by more than the backups kept); size unknown"
            ),
        };
        let bound = if self.exact { "" } else { "at least " };
        write!(
            f,
            "{}: {why}; {bound}{} bytes lost",
            self.path.display(),
            self.bytes
        )
    }
}

/// One followed file.
struct Tracked {
    serial: u64,
    id: FileId,
    path: PathBuf,
    reader: LineReader<Source>,
    /// Its name no longer leads to it: read to the end, then leave.
    rotated: bool,
}

impl Tracked {
    /// Bytes of the file consumed so far (yielded plus a buffered partial line).
    fn consumed(&self) -> u64 {
        self.reader.offset() + self.reader.pending()
    }
}

/// A file found by a scan.
struct Candidate {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_micros: i64,
    gz: bool,
    /// Its name matches the pattern (a current file, not only a rotated sibling).
    current: bool,
    /// Fingerprints computed so far, by prefix length.
    fps: Vec<(u32, Option<Fingerprint>)>,
    /// Reading its start failed (a `.gz` still being written, a file gone meanwhile).
    unreadable: bool,
}

impl Candidate {
    fn fingerprint(&mut self, len: u32) -> Option<Fingerprint> {
        if let Some((_, fp)) = self.fps.iter().find(|(l, _)| *l == len) {
            return *fp;
        }
        let fp = match Source::open_at(&self.path, 0).and_then(|src| prefix(src, len as usize)) {
            Ok(fp) => fp,
            Err(_) => {
                self.unreadable = true;
                None
            }
        };
        self.fps.push((len, fp));
        fp
    }

    /// Whether its start can be read now, so that it can be told apart from the files
    /// already known. A `.gz` being written cannot (its stream ends early).
    fn identifiable(&mut self) -> bool {
        self.fingerprint(file::FINGERPRINT_LEN as u32);
        !self.unreadable
    }

    /// Whether this is the file of `id`: same inode and start (plain files) or, for `.gz`,
    /// same decompressed start — only if `id`'s fingerprint is long enough to tell files
    /// apart by content (an empty file's fingerprint would match every `.gz`).
    fn is(&mut self, id: &FileId) -> bool {
        let by_inode = !self.gz && (self.dev, self.ino) == (id.dev, id.ino);
        if !(by_inode || self.gz && id.fp.identifies()) {
            return false;
        }
        self.fingerprint(id.fp.len) == Some(id.fp)
    }

    /// Whether this has the same content start as `id` (a copy, a `.gz`), when `id`'s
    /// fingerprint is long enough to say so.
    fn same_content(&mut self, id: &FileId) -> bool {
        id.fp.identifies() && self.fingerprint(id.fp.len) == Some(id.fp)
    }
}

pub struct Tailer {
    cfg: TailConfig,
    /// The file-name component of the pattern, and its rotated forms.
    name: glob::Pattern,
    rotated_names: [glob::Pattern; 2],
    /// The directory part of the pattern (may hold globs).
    dir_pattern: PathBuf,
    files: Vec<Tracked>,
    store: Checkpoints,
    watcher: Option<Watcher>,
    paused: bool,
    last_scan: Instant,
    rescan: bool,
    gaps: Vec<Gap>,
    /// When this tailer started (unix µs): a backup modified since then that is not known
    /// was written while running and missed by the scans (see [`Tailer::scan`]).
    opened_at: i64,
    /// When the last full listing began (unix µs). Every file modified before it was found
    /// by that listing and is in the store, deliberately skipped, reported, or still
    /// deferred or pending (see [`Tailer::horizon`]).
    listed_at: i64,
    /// Rotated siblings already recognised as known, by (device, inode, mtime): saves
    /// fingerprinting them again at every scan.
    known_siblings: Vec<(u64, u64, i64)>,
    orphans: Vec<Orphan>,
    /// Missed rotated files that a scan could not identify yet, by (device, inode, mtime),
    /// with the number of scans so far; while there are any, current files are not read
    /// (they are newer, and lines come out in write order).
    deferred: Vec<((u64, u64, i64), u32)>,
    pending: std::collections::VecDeque<Pending>,
    /// The count of files created under the followed name against the files found; `None`
    /// without inotify or when the name is a glob.
    unseen: Option<UnseenCheck>,
    /// What the last full listing and the opens after it could not read (see [`access`]).
    access: Access,
}

/// Invariant: every file created under the followed name after start-up is either found by a
/// scan (followed as the current file or as a missed rotated sibling) or reported. inotify
/// counts the creations; a scan lists the directory after taking the events, so a created file
/// is in its listing unless it is already gone. A shortfall that lasts [`UNSEEN_SCANS`] scans
/// (not a file caught mid-rename, found by the next scan) is reported as a gap. Files found
/// without a counted creation (created just before start-up) only make the count a lower
/// bound; a queue overflow resets it.
#[derive(Default)]
struct UnseenCheck {
    created: u64,
    found: u64,
    reported: u64,
    short_scans: u32,
}

const UNSEEN_SCANS: u32 = 3;

/// A file start-up found to read but has not opened yet: backups beyond the open-file budget
/// wait here (oldest first) rather than be given up, and current files are not read while
/// any wait (they are newer).
struct Pending {
    path: PathBuf,
    gz: bool,
    offset: u64,
    serial: Option<u64>,
    rotated: bool,
    expect: Option<(u64, u64)>,
    size: u64,
    mtime_micros: i64,
}

/// A checkpointed, unfinished file that start-up could not open: not found in the listing, or
/// renamed or compressed between the listing and the open. A directory mid-rotation looks
/// like that for a moment, so the scans look for it (and resume it at its committed offset)
/// before, after [`ORPHAN_MISSES`] scans without it, it is taken for deleted and reported.
struct Orphan {
    serial: u64,
    misses: u32,
}

const ORPHAN_MISSES: u32 = 3;

/// Scans a missed file may stay unidentifiable (a `.gz` being written) before it is read
/// anyway (a damaged `.gz` then gives an `Unreadable` gap instead of holding reading up).
const MAX_DEFERRALS: u32 = 5;

/// What one [`Tailer::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub lines: u64,
    pub bytes: u64,
    /// The read budget ran out with data left: poll again before waiting.
    pub more: bool,
}

/// File times come from a coarse kernel clock (a tick, a few ms) while "now" is fine: a file
/// written just after an instant can carry a time just before it. Comparisons of a file's
/// time with an instant allow this much.
const CLOCK_SLACK_MICROS: i64 = 2_000_000;

/// How many times a directory that changes while listed is listed again.
const LISTING_ATTEMPTS: usize = 4;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn mtime_micros(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as i64)
}

/// A file that vanished between the scan and the open was renamed or compressed meanwhile:
/// the next scan finds it under its new name. Anything else is recorded in the [`Access`]
/// (the caller logs it, rate-limited, and health reports it): a scan retries every second,
/// and a warning each time would flood the log.
fn cannot_follow(access: &mut Access, path: &Path, e: &io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        log::debug!("{} vanished before it was opened: {e}", path.display());
    } else {
        log::debug!("cannot follow {}: {e}", path.display());
        if !access.unreadable.iter().any(|u| u.path == path) {
            access.unreadable.push(Unreadable::new(path, e));
        }
    }
}

/// The `.gz` candidates whose uncompressed twin (the same name without `.gz`) is a candidate
/// too: compression is in progress, and the `.gz` is that file's content (complete or not).
fn gz_twins(candidates: &[Candidate]) -> Vec<PathBuf> {
    candidates
        .iter()
        .filter(|c| !c.gz)
        .map(|c| gz_twin_of(&c.path))
        .filter(|gz| candidates.iter().any(|c| c.gz && &c.path == gz))
        .collect()
}

/// The `.gz` that holds the file of `id` when its plain backup was listed mid-compression
/// and deleted before its start could be read: lumberjack deletes the plain file only after
/// its `.gz` is complete, so the twin listed as incomplete (and set aside as the plain file's
/// copy) is whole now and is the file. Without this, start-up took the entry for gone and the
/// `.gz` for a file never read, and read it again from its start.
fn compressed_meanwhile(
    candidates: &mut [Candidate],
    claimed: &mut [bool],
    id: &FileId,
) -> Option<usize> {
    let plain = candidates
        .iter()
        .position(|c| !c.gz && (c.dev, c.ino) == (id.dev, id.ino) && c.unreadable)?;
    if fs::symlink_metadata(&candidates[plain].path).is_ok() {
        return None;
    }
    let gz = gz_twin_of(&candidates[plain].path);
    let k = candidates.iter().position(|c| c.gz && c.path == gz)?;
    let twin = &mut candidates[k];
    twin.fps.clear();
    twin.unreadable = false;
    if !twin.is(id) {
        return None;
    }
    log::debug!(
        "{} was compressed while listed: resuming in {}",
        candidates[plain].path.display(),
        gz.display()
    );
    // Both names are this file: neither is new.
    claimed[k] = true;
    claimed[plain] = true;
    Some(k)
}

/// `<path>.gz`: where a compressed backup of `path` is written.
fn gz_twin_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// The time in a backup's name, as lumberjack (kube-apiserver's and k3s's log writer) writes
/// it: `<stem>-<UTC 2006-01-02T15-04-05.000><ext>`, then `.gz` once compressed. Only such
/// names are this log's backups: another file that starts with the stem (`audit-dense100.log`,
/// a second policy's log) is not its history.
const BACKUP_TIME: &str =
    "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]-[0-9][0-9]-[0-9][0-9].[0-9][0-9][0-9]";

fn bad_pattern(pattern: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("file pattern {pattern:?}: {e}"),
    )
}

impl Tailer {
    /// Loads the checkpoints and finds where to resume. A missing or damaged checkpoint
    /// file is not an error: it is returned for the caller to report, and reading starts
    /// per [`TailConfig::start_at`].
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
        let (stem, ext) = match file_name.rfind('.') {
            Some(dot) if dot > 0 => (&file_name[..dot], &file_name[dot..]),
            _ => (file_name, ""),
        };
        let literal_name = (!file_name.contains(['*', '?', '['])).then(|| file_name.to_owned());
        let compile = |p: &str| glob::Pattern::new(p).map_err(|e| bad_pattern(&cfg.pattern, e));
        let name = compile(file_name)?;
        let rotated_names = [
            compile(&format!("{stem}-{BACKUP_TIME}{ext}"))?,
            compile(&format!("{stem}-{BACKUP_TIME}{ext}.gz"))?,
        ];
        let (store, problem) = Checkpoints::load(&cfg.state_dir, &cfg.checkpoint_name)?;
        let watcher = match Watcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "inotify unavailable ({e}); following {} by periodic scans only",
                    cfg.pattern
                );
                None
            }
        };
        let mut tailer = Tailer {
            name,
            rotated_names,
            dir_pattern,
            files: Vec::new(),
            store,
            watcher,
            paused: false,
            last_scan: Instant::now(),
            rescan: false,
            gaps: Vec::new(),
            opened_at: now_micros(),
            listed_at: now_micros(),
            known_siblings: Vec::new(),
            orphans: Vec::new(),
            deferred: Vec::new(),
            pending: std::collections::VecDeque::new(),
            unseen: None,
            access: Access::default(),
            cfg,
        };
        tailer.recover()?;
        // A first start is saved at once: if it ends before its first commit, the next start
        // is not a first start again (which would skip the backups rotated meanwhile as
        // history) but reads every backup written since this moment.
        if problem.is_some() {
            tailer.save()?;
        }
        // Count creations from here on (what start-up listed is the baseline).
        if let (Some(w), Some(name)) = (tailer.watcher.as_mut(), literal_name) {
            w.count_creations_of(std::ffi::OsStr::new(&name));
            if let Err(e) = w.drain() {
                log::debug!("inotify read: {e}");
            }
            tailer.rescan = true;
            tailer.unseen = Some(UnseenCheck::default());
        }
        Ok((tailer, problem))
    }

    /// The directories the pattern can match in. A glob's unreadable directories are
    /// recorded in the [`Access`].
    fn dirs(&mut self) -> Vec<PathBuf> {
        let text = self.dir_pattern.to_string_lossy().into_owned();
        if !text.contains(['*', '?', '[']) {
            return vec![self.dir_pattern.clone()];
        }
        let Ok(paths) = glob::glob(&text) else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        for p in paths {
            match p {
                Ok(p) if p.is_dir() => dirs.push(p),
                Ok(_) => {}
                Err(e) => self
                    .access
                    .unreadable
                    .push(Unreadable::new(e.path(), e.error())),
            }
        }
        if dirs.is_empty() && self.access.unreadable.is_empty() {
            // Nothing matched: say which part of the pattern is missing or unreadable.
            self.note_dir_problem(&access::literal_dir(Path::new(&self.cfg.pattern)));
        }
        dirs
    }

    /// Records why `dir` (which could not be listed) cannot be, if it cannot.
    fn note_dir_problem(&mut self, dir: &Path) {
        match access::diagnose_dir(dir) {
            Some(DirProblem::Missing(p)) => self.access.missing.push(p),
            Some(DirProblem::Unreadable(u)) => self.access.unreadable.push(u),
            None => {}
        }
    }

    /// Every file in the pattern's directories that matches it, or is a rotated form of it.
    fn candidates(&mut self, with_rotated: bool) -> Vec<Candidate> {
        if with_rotated {
            self.listed_at = now_micros();
            self.access.unreadable.clear();
            self.access.missing.clear();
        }
        let mut found = Vec::new();
        for dir in self.dirs() {
            if let Some(w) = self.watcher.as_mut()
                && let Err(e) = w.watch_dir(&dir)
            {
                log::debug!("cannot watch {}: {e}", dir.display());
            }
            // A listing is a snapshot of names, and each file is then looked up by name: a
            // rotation in between makes a name lead to another file than listed (or to none),
            // and the renamed file is missing from the listing. Start-up would take that file
            // for deleted, so the directory is listed again until names and files agree.
            for attempt in 1..=LISTING_ATTEMPTS {
                let before = found.len();
                match self.list_dir(&dir, with_rotated, &mut found) {
                    Ok(true) => break,
                    Ok(false) if attempt < LISTING_ATTEMPTS => found.truncate(before),
                    Ok(false) => log::debug!("{} keeps changing while listed", dir.display()),
                    Err(e) => {
                        log::debug!("cannot list {}: {e}", dir.display());
                        self.note_dir_problem(&dir);
                        break;
                    }
                }
            }
        }
        if with_rotated {
            self.access.matched = found.iter().filter(|c| c.current).count();
        }
        found
    }

    /// Adds the candidates of one directory to `found`; `Ok(false)` if it changed meanwhile.
    fn list_dir(
        &mut self,
        dir: &Path,
        with_rotated: bool,
        found: &mut Vec<Candidate>,
    ) -> io::Result<bool> {
        use std::os::unix::fs::DirEntryExt;
        let mut stable = true;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let current = self.name.matches(name);
            let rotated = with_rotated && self.rotated_names.iter().any(|p| p.matches(name));
            if !current && !rotated {
                continue;
            }
            let path = entry.path();
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    stable = false;
                    continue;
                }
                Err(e) => {
                    self.access.unreadable.push(Unreadable::new(&path, &e));
                    continue;
                }
            };
            if !meta.is_file() {
                continue;
            }
            let (dev, ino) = dev_ino(&meta);
            let symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
            if !symlink && entry.ino() != ino {
                stable = false;
            }
            found.push(Candidate {
                gz: is_gz(&path),
                path,
                dev,
                ino,
                size: meta.len(),
                mtime_micros: mtime_micros(&meta),
                current,
                fps: Vec::new(),
                unreadable: false,
            });
        }
        Ok(stable)
    }

    /// Start-up: resume checkpointed files, pick up what was written while down, report
    /// what was lost. See the module docs for the rules.
    fn recover(&mut self) -> io::Result<()> {
        let mut candidates = self.candidates(true);
        let saved_at = self.store.saved_at;
        // A `.gz` being written next to its twin is that twin: only the twin is considered.
        let twins = gz_twins(&candidates);
        let mut claimed: Vec<bool> = candidates.iter().map(|c| twins.contains(&c.path)).collect();
        // (candidate, offset, entry serial) in no particular order yet.
        let mut resume: Vec<(usize, u64, u64)> = Vec::new();
        let entries: Vec<Entry> = self.store.entries.clone();
        for e in &entries {
            // Prefer the plain file over its compressed copy.
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by_key(|&i| candidates[i].gz);
            let found = order
                .into_iter()
                .find(|&i| !claimed[i] && candidates[i].is(&e.id))
                .or_else(|| compressed_meanwhile(&mut candidates, &mut claimed, &e.id));
            log::debug!(
                "checkpoint of {} (inode {}, committed {} of {} bytes): {}",
                e.path.display(),
                e.id.ino,
                e.committed,
                e.size_seen,
                found.map_or("not found".into(), |i| candidates[i]
                    .path
                    .display()
                    .to_string())
            );
            match found {
                Some(i) => {
                    claimed[i] = true;
                    // Its other copy (plain and .gz both present mid-compression) is the
                    // same content: claim it too so it is not read as a new file.
                    let gz = candidates[i].gz;
                    for (j, c) in candidates.iter_mut().enumerate() {
                        if !claimed[j] && c.gz != gz && c.same_content(&e.id) {
                            claimed[j] = true;
                        }
                    }
                    if !e.done {
                        resume.push((i, e.committed, e.serial));
                    }
                }
                None if e.done => self.store.remove(e.serial),
                // Not found now, but the directory may be mid-rotation (a name that vanished
                // between the listing and the fingerprint, a `.gz` still being written): the
                // scans look for it before it is taken for deleted.
                None => self.orphans.push(Orphan {
                    serial: e.serial,
                    misses: 0,
                }),
            }
        }
        // Unknown files: current ones are new since the last save (or, on a first start,
        // start per `start_at`); rotated ones count only if written after the last save.
        let mut fresh: Vec<(usize, u64)> = Vec::new();
        for (i, c) in candidates.iter_mut().enumerate() {
            if claimed[i] {
                continue;
            }
            let offset = match saved_at {
                None if c.current => match self.cfg.start_at {
                    StartAt::Beginning => 0,
                    StartAt::End if !c.gz => c.size,
                    StartAt::End => continue,
                },
                None => continue,
                Some(saved) if c.current || c.mtime_micros > saved - CLOCK_SLACK_MICROS => 0,
                Some(_) => continue,
            };
            claimed[i] = true;
            fresh.push((i, offset));
        }
        // A plain and a .gz copy of one unknown file (mid-compression): keep the plain one.
        let mut follow: Vec<(usize, u64, Option<u64>)> = resume
            .into_iter()
            .map(|(i, off, s)| (i, off, Some(s)))
            .collect();
        let full = file::FINGERPRINT_LEN as u32;
        let mut plain_fps: Vec<Fingerprint> = Vec::new();
        for &(j, _) in &fresh {
            if !candidates[j].gz {
                plain_fps.extend(candidates[j].fingerprint(full));
            }
        }
        for &(i, off) in &fresh {
            let dup = candidates[i].gz
                && candidates[i]
                    .fingerprint(full)
                    .is_some_and(|fp| plain_fps.contains(&fp));
            if !dup {
                follow.push((i, off, None));
            }
        }
        // Oldest first; current files after rotated ones. Modification times are coarse
        // (a kernel tick), so backups written within one tick tie: the name breaks the tie,
        // and `audit-<UTC time>.log` names sort in rotation order.
        follow.sort_by(|&(a, _, _), &(b, _, _)| {
            let key = |i: usize| {
                (
                    candidates[i].current,
                    candidates[i].mtime_micros,
                    &candidates[i].path,
                )
            };
            key(a).cmp(&key(b))
        });
        for (i, offset, serial) in follow {
            let c = &candidates[i];
            let p = Pending {
                path: c.path.clone(),
                gz: c.gz,
                offset,
                serial,
                rotated: !c.current,
                expect: Some((c.dev, c.ino)).filter(|_| !c.gz),
                size: c.size,
                mtime_micros: c.mtime_micros,
            };
            // Backups beyond the open-file budget wait their turn, unopened.
            if p.rotated && self.rotated_open() >= self.cfg.max_rotated_open {
                self.pending.push_back(p);
            } else {
                self.open_recovered(p);
            }
        }
        self.last_scan = Instant::now();
        self.rescan |= !self.orphans.is_empty();
        Ok(())
    }

    fn rotated_open(&self) -> usize {
        self.files.iter().filter(|t| t.rotated).count()
    }

    /// Opens backups waiting in `pending` while the open-file budget allows, oldest first.
    fn open_pending(&mut self) {
        while !self.pending.is_empty() && self.rotated_open() < self.cfg.max_rotated_open {
            if let Some(p) = self.pending.pop_front() {
                self.open_recovered(p);
            }
        }
    }

    /// Whether `c` is a backup waiting in `pending` (or the `.gz` of one).
    fn is_pending(&self, c: &Candidate) -> bool {
        self.pending
            .iter()
            .any(|p| p.path == c.path || c.gz && !p.gz && gz_twin_of(&p.path) == c.path)
    }

    /// Follows a file found at start-up. One that moved since the listing is looked for by
    /// the next scans (checkpointed) or taken in its `.gz` (compressed meanwhile); one that
    /// is gone is reported.
    fn open_recovered(&mut self, p: Pending) {
        let result = self.follow(&p.path, p.gz, p.offset, p.serial, p.rotated, p.expect);
        let moved = match &result {
            Ok(None) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
            Ok(Some(_)) => false,
        };
        if let (true, Some(s)) = (moved, p.serial) {
            // Renamed (or compressed) since the listing: the scans look for it again.
            self.orphans.push(Orphan {
                serial: s,
                misses: 0,
            });
            self.rescan = true;
            return;
        }
        if moved && !p.rotated {
            // A current file rotated since the listing: the next scan finds it as a backup.
            self.rescan = true;
            return;
        }
        if matches!(result, Ok(None)) {
            // Renamed since the listing (a backup being compressed keeps its name until its
            // `.gz` is complete): the next scan sorts it out.
            self.rescan = true;
            return;
        }
        if moved {
            if !p.gz {
                // Compressed since the listing: the same content, under `<name>.gz`.
                let gz = gz_twin_of(&p.path);
                if self
                    .follow(&gz, true, p.offset, None, true, None)
                    .is_ok_and(|s| s.is_some())
                {
                    return;
                }
            }
            self.gaps.push(Gap {
                bytes: if p.gz {
                    0
                } else {
                    p.size.saturating_sub(p.offset)
                },
                exact: !p.gz,
                reason: GapReason::Deleted,
                path: p.path,
            });
            return;
        }
        if let Err(e) = result {
            cannot_follow(&mut self.access, &p.path, &e);
            if let Some(s) = p.serial {
                let entry = self.store.get(s).cloned();
                if let Some(entry) = entry {
                    self.gaps.push(Gap {
                        path: p.path.clone(),
                        bytes: entry.size_seen.saturating_sub(entry.committed),
                        exact: entry.final_size,
                        reason: GapReason::Unreadable(e.to_string()),
                    });
                    self.store.remove(s);
                }
            }
        }
    }

    /// Starts following `path` at `offset`, for entry `serial` (a new entry if `None`).
    /// `expect` is the (device, inode) a scan saw under `path`: if the name leads elsewhere
    /// by the time it is opened (rotated in between), nothing is followed; the next scan
    /// sorts it out.
    fn follow(
        &mut self,
        path: &Path,
        gz: bool,
        offset: u64,
        serial: Option<u64>,
        rotated: bool,
        expect: Option<(u64, u64)>,
    ) -> io::Result<Option<u64>> {
        let f = File::open(path)?;
        let meta = f.metadata()?;
        let (dev, ino) = dev_ino(&meta);
        if expect.is_some_and(|e| e != (dev, ino)) {
            self.rescan = true;
            return Ok(None);
        }
        let id = match serial.and_then(|s| self.store.get(s)) {
            // Resumed: keep the identity it was recorded with (a .gz has a new inode, but
            // this is the same content).
            Some(e) => e.id,
            None => FileId {
                dev,
                ino,
                fp: if gz {
                    prefix(Source::open_at(path, 0)?, file::FINGERPRINT_LEN)?
                        .unwrap_or(Fingerprint::of(&[]))
                } else {
                    fingerprint_file(&f)?
                },
            },
        };
        let source = Source::from_file(f, gz, offset)?;
        let serial = match serial {
            Some(s) => s,
            None => self.store.add(Entry {
                serial: 0,
                id,
                committed: offset,
                size_seen: if gz { offset } else { meta.len() },
                final_size: false,
                done: false,
                path: path.to_owned(),
            }),
        };
        log::debug!(
            "following {} (inode {ino}) from byte {offset}",
            path.display()
        );
        let reader = LineReader::with_max_line(source, self.cfg.max_line)
            .following()
            .starting_at(offset);
        let tracked = Tracked {
            serial,
            id,
            path: path.to_owned(),
            reader,
            // A compressed backup never grows: read it to its end and leave.
            rotated: rotated || gz,
        };
        if tracked.rotated {
            // Older than any current file: read before them, to keep write order.
            let at = self
                .files
                .iter()
                .position(|t| !t.rotated)
                .unwrap_or(self.files.len());
            self.files.insert(at, tracked);
        } else {
            self.files.push(tracked);
        }
        Ok(Some(serial))
    }

    /// Matches names to followed files. New files under a matching name are followed from
    /// their start; followed files no longer found under a matching name are rotated.
    ///
    /// Rotated-name siblings are checked too: one that is not known (not followed, not in the
    /// checkpoints) but was modified since this tailer started was created *and* rotated
    /// between two scans (a stalled reader, a fast rotation). It is followed from its start,
    /// ahead of the current file, instead of being lost without a trace.
    fn scan(&mut self) {
        // A followed file's `.gz` is recognised by the fingerprint: take it now if it was
        // taken while the file was short (it is read through the open descriptor, so a file
        // renamed or deleted since still gives it).
        for k in 0..self.files.len() {
            self.refresh_fingerprint(k);
        }
        let mut candidates = self.candidates(true);
        let mut orphans = std::mem::take(&mut self.orphans);
        let plain_twins = gz_twins(&candidates);
        let mut themselves = self.listed_as_themselves(&mut candidates);
        let mut seen: Vec<u64> = Vec::new();
        // Current names first: they decide which followed files are rotated.
        for c in candidates.iter_mut().filter(|c| c.current) {
            if let Some(t) = self
                .files
                .iter_mut()
                .find(|t| !t.reader_is_gz() && (t.id.dev, t.id.ino) == (c.dev, c.ino))
            {
                seen.push(t.serial);
                if t.path != c.path {
                    t.path = c.path.clone();
                }
                continue;
            }
            if let Some(serial) = self.adopt(c, &mut orphans, false) {
                seen.push(serial);
                continue;
            }
            if self.is_known(c, &themselves) {
                log::debug!("{} is a file already read; not followed", c.path.display());
                continue;
            }
            match self.follow(&c.path, c.gz, 0, None, false, Some((c.dev, c.ino))) {
                Ok(serial) => {
                    if serial.is_some() {
                        self.found_new_file();
                        themselves.push((c.dev, c.ino));
                    }
                    seen.extend(serial);
                }
                Err(e) => cannot_follow(&mut self.access, &c.path, &e),
            }
        }
        for t in &mut self.files {
            if !seen.contains(&t.serial) {
                if !t.rotated {
                    log::debug!("{} was rotated; reading it to its end", t.path.display());
                }
                t.rotated = true;
            }
        }
        // Rotated siblings: new names of followed files, and missed files, oldest first (each
        // missed one goes in before the current files, so this keeps write order).
        candidates.sort_by(|a, b| (a.mtime_micros, &a.path).cmp(&(b.mtime_micros, &b.path)));
        let mut still_known = Vec::new();
        let mut deferred = Vec::new();
        for c in candidates.iter_mut().filter(|c| !c.current) {
            let key = (c.dev, c.ino, c.mtime_micros);
            if let Some(t) = self.files.iter_mut().find(|t| t.rotated && c.is(&t.id)) {
                t.path = c.path.clone();
                still_known.push(key);
                continue;
            }
            if self.is_pending(c) {
                still_known.push(key);
                continue;
            }
            let compressing = c.gz && plain_twins.contains(&c.path);
            if !compressing && self.adopt(c, &mut orphans, true).is_some() {
                continue;
            }
            if c.mtime_micros < self.opened_at - CLOCK_SLACK_MICROS
                || self.known_siblings.contains(&key)
            {
                still_known.push(key);
                continue;
            }
            if self.is_known(c, &themselves) {
                still_known.push(key);
                continue;
            }
            // Not known, but perhaps not yet identifiable: a `.gz` whose uncompressed twin is
            // still there is being written, and is that twin's content; a start that cannot be
            // read (a `.gz` being written under another scheme) cannot be compared. Both are
            // looked at again at the next scan.
            if compressing || !c.identifiable() {
                let scans = 1 + self
                    .deferred
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(0, |(_, n)| *n);
                if scans <= MAX_DEFERRALS {
                    deferred.push((key, scans));
                    continue;
                }
                log::warn!(
                    "{} cannot be identified (a damaged .gz?); reading it from its start",
                    c.path.display()
                );
            }
            let expect = Some((c.dev, c.ino)).filter(|_| !c.gz);
            match self.follow(&c.path, c.gz, 0, None, true, expect) {
                Ok(Some(_)) => {
                    self.found_new_file();
                    if !c.gz {
                        themselves.push((c.dev, c.ino));
                    }
                    log::info!(
                        "{} was created and rotated between two scans; reading it from its start",
                        c.path.display()
                    );
                }
                // Renamed or deleted meanwhile: the next scan finds it under its new name.
                Ok(None) => deferred.push((key, 1)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => deferred.push((key, 1)),
                Err(e) => cannot_follow(&mut self.access, &c.path, &e),
            }
        }
        self.known_siblings = still_known;
        self.rescan |= !deferred.is_empty();
        self.deferred = deferred;
        for mut o in orphans {
            o.misses += 1;
            log::debug!(
                "checkpointed {} not found yet (scan {} of {ORPHAN_MISSES}); candidates {:?}",
                self.store
                    .get(o.serial)
                    .map_or(Path::new("?"), |e| &e.path)
                    .display(),
                o.misses,
                candidates
                    .iter()
                    .map(|c| (c.path.file_name(), c.ino, c.size, c.unreadable))
                    .collect::<Vec<_>>()
            );
            if o.misses < ORPHAN_MISSES {
                self.orphans.push(o);
                self.rescan = true;
                continue;
            }
            if let Some(e) = self.store.get(o.serial).cloned() {
                // Gone. A file that never held data when last seen cannot have lost any that
                // was known; otherwise report what is known (a lower bound unless its final
                // size was).
                let lost = e.size_seen.saturating_sub(e.committed);
                if lost > 0 || (!e.final_size && e.size_seen > 0) {
                    self.gaps.push(Gap {
                        path: e.path.clone(),
                        bytes: lost,
                        exact: e.final_size,
                        reason: GapReason::Deleted,
                    });
                }
                self.store.remove(o.serial);
            }
        }
        self.check_unseen();
        self.last_scan = Instant::now();
    }

    /// Resumes the orphan that `c` is, if any, at its committed offset.
    fn adopt(
        &mut self,
        c: &mut Candidate,
        orphans: &mut Vec<Orphan>,
        rotated: bool,
    ) -> Option<u64> {
        let k = orphans
            .iter()
            .position(|o| self.store.get(o.serial).is_some_and(|e| c.is(&e.id)))?;
        let committed = self.store.get(orphans[k].serial)?.committed;
        let expect = Some((c.dev, c.ino)).filter(|_| !c.gz);
        match self.follow(
            &c.path,
            c.gz,
            committed,
            Some(orphans[k].serial),
            rotated,
            expect,
        ) {
            Ok(Some(serial)) => {
                orphans.remove(k);
                Some(serial)
            }
            Ok(None) => None,
            Err(e) => {
                cannot_follow(&mut self.access, &c.path, &e);
                None
            }
        }
    }

    /// Whether `c` is a file already followed or read: the same file, or a copy of one by
    /// the content of its start. A `.gz` can only be recognised that way. A plain file is a
    /// copy (copytruncate) only of a file still followed, and only when that file is no
    /// longer listed as itself (`themselves`, see [`Tailer::listed_as_themselves`]): a file
    /// that merely starts with the same bytes as one read before (the same long first line,
    /// say) is a new file to read, not a copy to skip.
    fn is_known(&self, c: &mut Candidate, themselves: &[(u64, u64)]) -> bool {
        let copy_of = |c: &mut Candidate, id: &FileId, followed: bool| {
            let may_be_copy = c.gz || (followed && !themselves.contains(&(id.dev, id.ino)));
            may_be_copy && c.same_content(id)
        };
        self.files
            .iter()
            .any(|t| c.is(&t.id) || copy_of(c, &t.id, true))
            || self.store.entries.iter().any(|e| {
                // A file read to its end and left never changes size again: a plain file of
                // another size under its inode and start is a new file in a recycled inode
                // that happens to start alike.
                let same_size = c.gz || !e.done || c.size == e.size_seen;
                (same_size && c.is(&e.id)) || copy_of(c, &e.id, false)
            })
    }

    /// The followed and checkpointed files that a plain candidate still is: same inode,
    /// same start.
    fn listed_as_themselves(&self, candidates: &mut [Candidate]) -> Vec<(u64, u64)> {
        let ids = self
            .files
            .iter()
            .map(|t| t.id)
            .chain(self.store.entries.iter().map(|e| e.id));
        let mut out = Vec::new();
        for id in ids {
            if candidates.iter_mut().any(|c| !c.gz && c.is(&id)) {
                out.push((id.dev, id.ino));
            }
        }
        out
    }

    /// Reads what is new and hands it to `on`, oldest file first. While paused it reads
    /// nothing but still scans names and opens new files: a file created during the pause
    /// must be held open before rotation and pruning take it away.
    pub fn poll(&mut self, mut on: impl FnMut(TailEvent<'_>)) -> Polled {
        for gap in self.gaps.drain(..) {
            on(TailEvent::Gap(gap));
        }
        let mut polled = Polled::default();
        // Events that arrived since the last wait (one non-blocking read).
        if let Some(w) = self.watcher.as_mut() {
            match w.drain() {
                Ok(wake) => self.take_wake(wake),
                Err(e) => log::debug!("inotify read: {e}"),
            }
        }
        if self.rescan || self.last_scan.elapsed() >= self.cfg.rescan_every {
            self.rescan = false;
            self.scan();
        }
        // Paused, or looking for a checkpointed file that start-up could not open yet: its
        // rest comes before anything newer, so nothing is read until it is found or given up.
        if self.paused || !self.orphans.is_empty() {
            self.limit_rotated(&mut on);
            return polled;
        }
        self.open_pending();
        let hold_current = !self.deferred.is_empty() || !self.pending.is_empty();
        let mut k = 0;
        while k < self.files.len() {
            if hold_current && !self.files[k].rotated {
                // A missed older file is not identified yet (see `deferred`).
                k += 1;
                continue;
            }
            let outcome = read_file(
                &mut self.files[k],
                &mut on,
                &mut polled,
                self.cfg.read_budget,
            );
            let t = &mut self.files[k];
            match outcome {
                Ok(at_end) => {
                    let size = match t.reader_plain_len() {
                        Some(size) => size,
                        None => t.consumed(),
                    };
                    if !t.rotated && size < t.consumed() {
                        // Truncated in place: what it held past what we read is gone.
                        let lost = t.consumed().saturating_sub(t.reader.offset());
                        on(TailEvent::Gap(Gap {
                            path: t.path.clone(),
                            bytes: lost,
                            exact: false,
                            reason: GapReason::Truncated,
                        }));
                        let (path, serial) = (t.path.clone(), t.serial);
                        let id = t.id;
                        self.store
                            .observe(serial, t.reader.offset(), true, id, &path);
                        self.files.remove(k);
                        if let Err(e) = self.follow(&path, false, 0, None, false, None) {
                            cannot_follow(&mut self.access, &path, &e);
                        }
                        continue;
                    }
                    self.refresh_fingerprint(k);
                    let t = &mut self.files[k];
                    let (serial, id, path) = (t.serial, t.id, t.path.clone());
                    if t.rotated && at_end {
                        // Left for good: a last line without newline is still a line.
                        deliver_partial(t, &mut on, &mut polled);
                        let end = t.reader.offset();
                        log::debug!("{} read to its end ({end} bytes); left", path.display());
                        self.store.observe(serial, end, true, id, &path);
                        self.files.remove(k);
                        continue;
                    }
                    self.store.observe(serial, size, false, id, &path);
                    if !at_end {
                        polled.more = true;
                        break;
                    }
                }
                Err(e) => {
                    let lost = t
                        .reader_plain_len()
                        .unwrap_or(0)
                        .saturating_sub(t.consumed());
                    on(TailEvent::Gap(Gap {
                        path: t.path.clone(),
                        bytes: lost,
                        exact: false,
                        reason: GapReason::Unreadable(e.to_string()),
                    }));
                    let (serial, id, path, end) =
                        (t.serial, t.id, t.path.clone(), t.reader.offset());
                    self.store.observe(serial, end, true, id, &path);
                    self.files.remove(k);
                    continue;
                }
            }
            k += 1;
        }
        self.limit_rotated(&mut on);
        // Backups still waiting to be opened: come back at once.
        polled.more |= !self.pending.is_empty();
        polled
    }

    /// Gives up the oldest rotated files beyond `max_rotated_open`.
    fn limit_rotated(&mut self, on: &mut impl FnMut(TailEvent<'_>)) {
        while self.files.iter().filter(|t| t.rotated).count() > self.cfg.max_rotated_open {
            let Some(k) = self.files.iter().position(|t| t.rotated) else {
                break;
            };
            let t = self.files.remove(k);
            let size = t.reader_plain_len().unwrap_or(t.consumed());
            on(TailEvent::Gap(Gap {
                path: t.path.clone(),
                bytes: size.saturating_sub(t.reader.offset()),
                exact: t.reader_plain_len().is_some(),
                reason: GapReason::TooManyRotated,
            }));
            self.store
                .observe(t.serial, t.reader.offset(), true, t.id, &t.path);
        }
    }

    /// A fingerprint taken while the file was short is retaken once it is long enough, so
    /// that after a restart the file is recognised by a full-length prefix.
    fn refresh_fingerprint(&mut self, k: usize) {
        let t = &mut self.files[k];
        if t.id.fp.len as usize >= file::FINGERPRINT_LEN {
            return;
        }
        if let Some(f) = t.reader.get_ref().plain()
            && let Ok(fp) = fingerprint_file(f)
            && fp.len > t.id.fp.len
        {
            t.id.fp = fp;
        }
    }

    fn take_wake(&mut self, wake: watch::Wake) {
        self.rescan |= wake.names_changed;
        if let Some(u) = self.unseen.as_mut() {
            if wake.overflow {
                log::warn!(
                    "inotify queue overflow: a file of {} created and deleted unseen would go unreported",
                    self.cfg.pattern
                );
                u.created = u.found + u.reported;
            } else {
                u.created += wake.created;
            }
        }
    }

    /// Reports files created under the followed name that no scan has found (see
    /// [`UnseenCheck`]).
    fn check_unseen(&mut self) {
        let Some(u) = self.unseen.as_mut() else {
            return;
        };
        let short = u.created.saturating_sub(u.found + u.reported);
        if short == 0 {
            u.short_scans = 0;
            return;
        }
        u.short_scans += 1;
        if u.short_scans < UNSEEN_SCANS {
            self.rescan = true;
            return;
        }
        u.reported += short;
        u.short_scans = 0;
        self.gaps.push(Gap {
            path: PathBuf::from(&self.cfg.pattern),
            bytes: 0,
            exact: false,
            reason: GapReason::Unseen { files: short },
        });
    }

    fn found_new_file(&mut self) {
        if let Some(u) = self.unseen.as_mut() {
            u.found += 1;
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

    /// Stops reading (backpressure). Keep calling [`Tailer::poll`] while paused: it opens
    /// new files so that nothing rotates away meanwhile (up to `max_rotated_open`).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Everything before `pos` is durable downstream.
    pub fn commit(&mut self, pos: Position) {
        self.store.commit(pos.serial, pos.end);
    }

    /// Makes the commits durable.
    pub fn save(&mut self) -> io::Result<()> {
        self.store.save(self.horizon())
    }

    /// The time saved with the checkpoints, which the next start takes as "every backup
    /// modified before this is known or history" (a backup modified after it and not in the
    /// store is read from its start). The time of the save itself would be wrong: a backup
    /// created, rotated and compressed between two scans is unknown until the next scan,
    /// and a save in between would declare it history. So it is the start of the last
    /// listing, and earlier still for files that listing found but did not take yet
    /// (deferred, or queued beyond the open-file budget).
    fn horizon(&self) -> i64 {
        let deferred = self.deferred.iter().map(|((_, _, mtime), _)| *mtime);
        let pending = self.pending.iter().map(|p| p.mtime_micros);
        deferred
            .chain(pending)
            .map(|m| m - 1)
            .fold(self.listed_at, i64::min)
    }

    /// Number of files currently open.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// What can be read of the pattern, as of the last full listing (see [`access`]).
    pub fn access(&mut self) -> &Access {
        self.access.following = self.files.len();
        &self.access
    }
}

impl Tracked {
    fn reader_is_gz(&self) -> bool {
        self.reader.get_ref().plain().is_none()
    }

    /// Current size of a plain file (by its descriptor), `None` for `.gz`.
    fn reader_plain_len(&self) -> Option<u64> {
        self.reader
            .get_ref()
            .plain()?
            .metadata()
            .ok()
            .map(|m| m.len())
    }
}

/// Reads lines from one file until its end or the budget. `Ok(true)` at the end.
fn read_file(
    t: &mut Tracked,
    on: &mut impl FnMut(TailEvent<'_>),
    polled: &mut Polled,
    budget: usize,
) -> io::Result<bool> {
    loop {
        if polled.bytes >= budget as u64 {
            return Ok(false);
        }
        match t.reader.next_item()? {
            None => return Ok(true),
            Some(item) => deliver(item, t.serial, &t.path, true, on, polled),
        }
    }
}

/// A file left for good: its last line, if it has no newline, is still a line.
fn deliver_partial(t: &mut Tracked, on: &mut impl FnMut(TailEvent<'_>), polled: &mut Polled) {
    if let Some(item) = t.reader.take_partial() {
        deliver(item, t.serial, &t.path, false, on, polled);
    }
}

/// Hands one item of file `serial` to the pipeline. `terminated`: it ended with a newline.
fn deliver(
    item: Item<'_>,
    serial: u64,
    path: &Path,
    terminated: bool,
    on: &mut impl FnMut(TailEvent<'_>),
    polled: &mut Polled,
) {
    polled.lines += 1;
    match item {
        Item::Line(line) => {
            polled.bytes += line.end - line.offset;
            on(TailEvent::Line {
                pos: Position {
                    serial,
                    end: line.end,
                },
                offset: line.offset,
                len: line.len,
                buf: line.buf,
                path,
            });
        }
        Item::TooLong { offset, len, .. } => {
            let end = offset + len + u64::from(terminated);
            polled.bytes += end - offset;
            on(TailEvent::TooLong {
                path,
                offset,
                len,
                pos: Position { serial, end },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn a_gz_is_recognised_by_content_only_with_enough_of_it() {
        let dir = std::env::temp_dir().join(format!("kas-tail-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..100)
            .flat_map(|i| format!("{{\"seq\":{i}}}\n").into_bytes())
            .collect();
        let gz_path = dir.join("audit-x.log.gz");
        let mut gz = GzEncoder::new(File::create(&gz_path).unwrap(), Compression::fast());
        gz.write_all(&content).unwrap();
        gz.finish().unwrap();
        let meta = fs::metadata(&gz_path).unwrap();
        let (dev, ino) = dev_ino(&meta);
        let mut c = Candidate {
            path: gz_path,
            dev,
            ino,
            size: meta.len(),
            mtime_micros: 0,
            gz: true,
            current: false,
            fps: Vec::new(),
            unreadable: false,
        };
        let id = |fp| FileId { dev: 1, ino: 2, fp };
        // A file seen while empty (or with a few bytes) must not match any .gz.
        assert!(!c.is(&id(Fingerprint::of(&[]))));
        assert!(!c.is(&id(Fingerprint::of(&content[..50]))));
        assert!(!c.same_content(&id(Fingerprint::of(&[]))));
        // With enough content, the .gz of that content is recognised, another is not.
        assert!(c.is(&id(Fingerprint::of(&content[..300]))));
        assert!(!c.is(&id(Fingerprint::of(&content[1..301]))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
