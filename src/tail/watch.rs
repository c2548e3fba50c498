//! The fs watcher: inotify on the directories that hold the followed files.
//!
//! inotify is used only as a wake-up: it says "something was written" (read the files) or
//! "names changed" (rescan), never which line or which file, so a missed or coalesced event
//! costs latency, not data. The periodic stat scan of the tailer is the fallback for
//! filesystems without inotify and for queue overflows.
//!
//! One watch per directory covers every file in it, including files that do not exist yet
//! (the new `audit.log` after a rotation) and renamed ones.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What woke the watcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// A file was written to.
    pub modified: bool,
    /// A file was created, renamed or deleted, or events were lost: names must be rescanned.
    pub names_changed: bool,
    /// Files created under the name given to [`Watcher::count_creations_of`].
    pub created: u64,
    /// The kernel's event queue overflowed: events (and creations) were lost.
    pub overflow: bool,
}

impl Wake {
    pub fn any(&self) -> bool {
        self.modified || self.names_changed
    }
}

pub struct Watcher {
    inotify: Inotify,
    dirs: Vec<(PathBuf, WatchDescriptor)>,
    buf: Vec<u8>,
    counted_name: Option<std::ffi::OsString>,
}

impl Watcher {
    pub fn new() -> io::Result<Watcher> {
        Ok(Watcher {
            inotify: Inotify::init()?,
            dirs: Vec::new(),
            buf: vec![0; 16 * 1024],
            counted_name: None,
        })
    }

    /// Counts the files created under this name (in any watched directory) in
    /// [`Wake::created`]: the tailer's check that no file came and went unseen.
    pub fn count_creations_of(&mut self, name: &std::ffi::OsStr) {
        self.counted_name = Some(name.to_owned());
    }

    /// Watches `dir` (once; watching a directory again is a no-op).
    pub fn watch_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.dirs.iter().any(|(d, _)| d == dir) {
            return Ok(());
        }
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        let wd = self.inotify.watches().add(dir, mask)?;
        self.dirs.push((dir.to_owned(), wd));
        Ok(())
    }

    /// Forgets directories that are no longer watched by the kernel (deleted or moved).
    fn forget(&mut self, wd: &WatchDescriptor) {
        self.dirs.retain(|(_, w)| w != wd);
    }

    /// Reads every pending event without blocking and says what they amount to.
    pub fn drain(&mut self) -> io::Result<Wake> {
        let mut wake = Wake::default();
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wake),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut gone = Vec::new();
            for event in events {
                if event.mask.contains(EventMask::MODIFY) {
                    wake.modified = true;
                } else {
                    wake.names_changed = true;
                }
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    wake.overflow = true;
                }
                if event.mask.contains(EventMask::CREATE)
                    && event.name.is_some()
                    && event.name == self.counted_name.as_deref()
                {
                    wake.created += 1;
                }
                if event
                    .mask
                    .intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    gone.push(event.wd.clone());
                }
            }
            for wd in gone {
                self.forget(&wd);
            }
        }
    }

    /// Blocks until an event arrives or `timeout` passes, then drains.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Wake> {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.drain()
    }
}

impl AsRawFd for Watcher {
    /// For registering with an event loop (mio `SourceFd`); readable when events wait.
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }
}
