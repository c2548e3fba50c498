//! What a pattern's files look like from the service's side: followed, matching nothing, or
//! there but unreadable. The input half of health (DESIGN.md §9): a security pipeline that
//! ships nothing because it cannot read its input must say so, not look idle.
//!
//! The tailer records an [`Access`] at every full listing; `check` uses [`diagnose_dir`] on
//! the same directories, so both name the same directory and errno.

use std::io;
use std::path::{Path, PathBuf};

/// The likely cause of a `filepath` that matches nothing, for the operator.
pub const AUDIT_LOG_OFF: &str = "is audit logging on (kube-apiserver --audit-log-path, k3s \
                                 --kube-apiserver-arg=audit-log-path=...)?";

/// A path that could not be listed, looked up or opened, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub path: PathBuf,
    pub kind: io::ErrorKind,
    /// The error as the OS worded it, e.g. "Permission denied (os error 13)".
    pub error: String,
}

impl Unreadable {
    pub fn new(path: &Path, e: &io::Error) -> Unreadable {
        Unreadable {
            path: path.to_owned(),
            kind: e.kind(),
            error: e.to_string(),
        }
    }

    /// What to do about it, for the operator.
    pub fn hint(&self) -> &'static str {
        match self.kind {
            io::ErrorKind::PermissionDenied => {
                "run the service as root, or give its user read access to the audit log \
                 directory and files (CAP_DAC_READ_SEARCH does both)"
            }
            _ => "check the path and the filesystem",
        }
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// The state of one pattern as of the tailer's last full listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Files open (the current one and rotated ones still being read).
    pub following: usize,
    /// Files the last listing found under the followed name (the current name, not rotated
    /// ones): one may be there and not followed, read to its end and known.
    pub matched: usize,
    /// Directories or files the listing or an open could not read. A file that vanished
    /// between the listing and the open (a rotation) is not one.
    pub unreadable: Vec<Unreadable>,
    /// Directories of the pattern that do not exist.
    pub missing: Vec<PathBuf>,
}

/// The verdict health and the log work from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Some file of the pattern is followed, or is there and already read.
    Following,
    /// Nothing matches and nothing failed: audit logging is off, or its directory does not
    /// exist yet (the first missing directory, if any).
    NoMatch { missing: Option<PathBuf> },
    /// Nothing is followed and something could not be read: the first such path.
    Blocked(Unreadable),
}

impl Access {
    pub fn reading(&self) -> Reading {
        if self.following > 0 {
            Reading::Following
        } else if let Some(u) = self.unreadable.first() {
            Reading::Blocked(u.clone())
        } else if self.matched > 0 {
            Reading::Following
        } else {
            Reading::NoMatch {
                missing: self.missing.first().cloned(),
            }
        }
    }
}

/// Why `dir` cannot be listed, naming the path at fault: the directory itself, the first
/// component that is missing (or not a directory), or the first ancestor that cannot be
/// searched (a mode-000 parent makes every path below it fail with EACCES). `None` when it
/// can be listed.
pub fn diagnose_dir(dir: &Path) -> Option<DirProblem> {
    let e = std::fs::read_dir(dir).err()?;
    let mut walked = PathBuf::new();
    for part in dir.components() {
        let parent = walked.clone();
        walked.push(part);
        match std::fs::metadata(&walked) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Some(DirProblem::Missing(walked)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Some(DirProblem::Missing(walked));
            }
            // The parent is what cannot be searched.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && parent != Path::new("") => {
                return Some(DirProblem::Unreadable(Unreadable::new(&parent, &e)));
            }
            Err(e) => return Some(DirProblem::Unreadable(Unreadable::new(&walked, &e))),
        }
    }
    Some(match e.kind() {
        io::ErrorKind::NotFound => DirProblem::Missing(dir.to_owned()),
        _ => DirProblem::Unreadable(Unreadable::new(dir, &e)),
    })
}

/// The directory part of a path pattern up to its first component with a wildcard: where a
/// pattern that matches nothing is diagnosed. `/var/log/*/audit-*.log` gives `/var/log`.
pub fn literal_dir(pattern: &Path) -> PathBuf {
    let dir = pattern.parent().unwrap_or(Path::new(""));
    let fixed: PathBuf = dir
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect();
    if fixed.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        fixed
    }
}

/// See [`diagnose_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirProblem {
    /// This path (the directory or an ancestor) does not exist, or is not a directory.
    Missing(PathBuf),
    Unreadable(Unreadable),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kas-access-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_missing_directory_names_the_first_missing_component() {
        let d = tmp("missing");
        assert_eq!(diagnose_dir(&d), None);
        let deep = d.join("a/b/c");
        assert_eq!(diagnose_dir(&deep), Some(DirProblem::Missing(d.join("a"))));
        std::fs::write(d.join("file"), b"x").unwrap();
        assert_eq!(
            diagnose_dir(&d.join("file/sub")),
            Some(DirProblem::Missing(d.join("file")))
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_literal_directory_stops_at_the_first_wildcard() {
        let dir = |p: &str| literal_dir(Path::new(p));
        assert_eq!(dir("/var/log/*/audit.log"), PathBuf::from("/var/log"));
        assert_eq!(
            dir("/var/log/kubernetes/audit*.log"),
            PathBuf::from("/var/log/kubernetes")
        );
        assert_eq!(dir("audit.log"), PathBuf::from("."));
        assert_eq!(dir("/*/audit.log"), PathBuf::from("/"));
    }

    #[test]
    fn reading_prefers_following_then_blocked_then_no_match() {
        let u = Unreadable::new(
            Path::new("/var/log/kubernetes"),
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        let mut a = Access {
            following: 0,
            matched: 1,
            unreadable: vec![u.clone()],
            missing: vec![PathBuf::from("/x")],
        };
        // Listed but not openable: blocked.
        assert_eq!(a.reading(), Reading::Blocked(u.clone()));
        assert!(u.to_string().contains("Permission denied"), "{u}");
        assert!(u.hint().contains("root"));
        a.following = 1;
        assert_eq!(a.reading(), Reading::Following);
        a.following = 0;
        a.unreadable.clear();
        // There, read to its end and not followed: not "no match".
        assert_eq!(a.reading(), Reading::Following);
        a.matched = 0;
        assert_eq!(
            a.reading(),
            Reading::NoMatch {
                missing: Some(PathBuf::from("/x"))
            }
        );
    }

    #[test]
    fn an_unsearchable_directory_is_named_with_its_errno() {
        // Root reads through any mode: the kernel's answer is what is checked, so only a
        // non-root run sees EACCES; as root the directory is simply readable.
        let d = tmp("mode000");
        let locked = d.join("audit");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let got = diagnose_dir(&locked.join("sub"));
        let root = unsafe { libc::geteuid() } == 0;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        if root {
            assert_eq!(got, Some(DirProblem::Missing(locked.join("sub"))));
        } else {
            match got {
                Some(DirProblem::Unreadable(u)) => {
                    assert_eq!(u.kind, io::ErrorKind::PermissionDenied, "{u}");
                    assert_eq!(u.path, locked, "the unsearchable parent is named");
                }
                other => panic!("{other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
