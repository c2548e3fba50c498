//! `spool --config FILE list | resend [SEGMENT…|--all] | drop SEGMENT…|--all`: what waits in
//! each input's spool (`logfiles:` entries, the webhook), what the intake refused (the
//! dead-letter folder `refused/`, see [`crate::spool::refused`]), and, after the cause is fixed, re-queue
//! (`resend`) or delete (`drop`) dead-lettered segments.
//!
//! `list` only reads: it may run beside the service (it then shows a snapshot). `resend` and
//! `drop` change the spool, which the running service owns: they take the state directory's
//! lock, as `run` does (`<state_dir>/lock`, `flock`), and refuse with a clear message while
//! the service holds it; holding it meanwhile keeps a service from starting halfway through.
//! A resent segment goes back under its own name, so it takes its old place in the order
//! (critical first, oldest first) and is sent at the service's next start.

use crate::config::Config;
use crate::run::{spool_dir, webhook_spool_dir};
use crate::spool::{self, Class, Segment, refused};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    List,
    /// Re-queue these dead-lettered segments (by file name), or all when empty.
    Resend(Vec<String>),
    /// Delete these dead-lettered segments, or all with `all`.
    Drop {
        names: Vec<String>,
        all: bool,
    },
}

#[derive(Debug)]
pub enum SpoolCmdError {
    Config(String),
    /// A running service holds the state directory.
    Busy {
        state_dir: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Named segments that are in no `refused/` folder.
    Unknown(Vec<String>),
    /// `drop` without names or `--all`.
    NothingNamed,
}

impl fmt::Display for SpoolCmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolCmdError::Config(e) => write!(f, "{e}"),
            SpoolCmdError::Busy { state_dir } => write!(
                f,
                "state_dir {} is in use by a running kube-audit-shipper (lock {}): stop the \
                 service first (e.g. `systemctl stop kube-audit-shipper`), then run this \
                 again; `spool list` works while it runs",
                state_dir.display(),
                state_dir.join("lock").display()
            ),
            SpoolCmdError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SpoolCmdError::Unknown(names) => write!(
                f,
                "not in any refused/ folder: {} (`spool list` shows them)",
                names.join(", ")
            ),
            SpoolCmdError::NothingNamed => write!(
                f,
                "drop deletes events for good: name the segments (as `spool list` shows them) \
                 or say --all"
            ),
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SpoolCmdError + '_ {
    move |source| SpoolCmdError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs the action, printing to stdout.
pub fn run(config: &Path, action: &Action) -> Result<(), SpoolCmdError> {
    let cfg = Config::load(config).map_err(SpoolCmdError::Config)?;
    if !cfg.state_dir.exists() {
        println!(
            "state_dir {} does not exist: nothing is spooled",
            cfg.state_dir.display()
        );
        return Ok(());
    }
    let dirs: Vec<(String, PathBuf)> = cfg
        .logfiles
        .iter()
        .map(|l| (l.filepath.clone(), spool_dir(&cfg.state_dir, &l.filepath)))
        .chain(
            cfg.webhook
                .as_ref()
                .map(|w| (w.entry.filepath.clone(), webhook_spool_dir(&cfg.state_dir))),
        )
        .collect();
    match action {
        Action::List => {
            if held_by_service(&cfg.state_dir) {
                println!("(the service is running: a snapshot)");
            }
            for (file, dir) in &dirs {
                list(file, dir)?;
            }
            Ok(())
        }
        Action::Resend(names) => {
            let _lock = take_lock(&cfg.state_dir)?;
            let done = each_refused(&dirs, names, names.is_empty(), refused::resend)?;
            println!("{done} segment(s) re-queued; they are sent when the service (re)starts");
            Ok(())
        }
        Action::Drop { names, all } => {
            if names.is_empty() && !all {
                return Err(SpoolCmdError::NothingNamed);
            }
            let _lock = take_lock(&cfg.state_dir)?;
            let done = each_refused(&dirs, names, *all, refused::drop)?;
            println!("{done} segment(s) deleted");
            Ok(())
        }
    }
}

/// Applies `f` to the dead-lettered segments named (all of them with `all`), after checking
/// that every name exists. Returns how many.
fn each_refused(
    dirs: &[(String, PathBuf)],
    names: &[String],
    all: bool,
    mut f: impl FnMut(&Path, &Segment) -> io::Result<()>,
) -> Result<usize, SpoolCmdError> {
    let mut chosen = Vec::new();
    let mut unknown: Vec<String> = names.to_vec();
    for (file, dir) in dirs {
        for r in refused::list(dir).map_err(io_at(dir))? {
            let name = r.segment.file_name();
            let named = unknown.iter().position(|n| *n == name);
            if let Some(i) = named {
                unknown.remove(i);
            }
            if all || named.is_some() {
                chosen.push((file, dir, r.segment));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(SpoolCmdError::Unknown(unknown));
    }
    for (file, dir, seg) in &chosen {
        f(dir, seg).map_err(io_at(dir))?;
        println!("{file}: {}", seg.file_name());
    }
    Ok(chosen.len())
}

/// Prints one entry's spool: what waits (by class), what was refused, what is quarantined.
fn list(file: &str, dir: &Path) -> Result<(), SpoolCmdError> {
    println!("{file}\n  spool {}", dir.display());
    let queued = spool::queued(dir).map_err(io_at(dir))?;
    let sum = |class: Option<Class>| {
        let segs: Vec<&Segment> = queued
            .iter()
            .filter(|s| class.is_none_or(|c| s.class == c))
            .collect();
        let events: u64 = segs.iter().map(|s| u64::from(s.events)).sum();
        let bytes: u64 = segs.iter().map(|s| s.bytes).sum();
        (segs.len(), events, bytes)
    };
    let (n, events, bytes) = sum(None);
    let (cn, ce, _) = sum(Some(Class::Critical));
    let (bn, be, _) = sum(Some(Class::Bulk));
    println!(
        "  waiting: {n} segment(s), {events} event(s), {bytes} bytes (critical {cn} / {ce} \
         events, bulk {bn} / {be} events)"
    );
    if let Some(first) = queued.first() {
        println!("    next: {}", first.file_name());
    }
    let refused = refused::list(dir).map_err(io_at(dir))?;
    let bytes: u64 = refused.iter().map(|r| r.segment.bytes).sum();
    println!(
        "  refused: {} segment(s), {bytes} bytes{}",
        refused.len(),
        if refused.is_empty() {
            ""
        } else {
            " (`spool resend` re-queues, `spool drop` deletes)"
        }
    );
    for r in &refused {
        let why = r.why.as_ref().map_or_else(
            || "(no note)".to_string(),
            |w| format!("HTTP {}: {}", w.status, w.answer),
        );
        println!(
            "    {} ({} event(s), {} bytes) {why}",
            r.segment.file_name(),
            r.segment.events,
            r.segment.bytes
        );
    }
    let quarantined = std::fs::read_dir(dir.join("quarantine")).map_or(0, |d| d.count());
    if quarantined > 0 {
        println!(
            "  quarantined: {quarantined} file(s) in {} (corrupt, or refused as too large)",
            dir.join("quarantine").display()
        );
    }
    Ok(())
}

/// Whether a running service holds the state directory (probed, released at once).
fn held_by_service(state_dir: &Path) -> bool {
    let Ok(file) = File::open(state_dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is released with the file.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Takes the state directory's lock as `run` does, or says that the service holds it.
fn take_lock(state_dir: &Path) -> Result<File, SpoolCmdError> {
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(SpoolCmdError::Busy {
            state_dir: state_dir.to_owned(),
        });
    }
    Ok(file)
}
