//! Generations: how lumberjack (the log writer of kube-apiserver and k3s) names a log's
//! history, and the one identity the tailer gives each piece of it (DESIGN.md §3).
//!
//! A log `<dir>/<stem><ext>` (`audit.log`) is rotated by renaming it to
//! `<stem>-<UTC 2006-01-02T15-04-05.000><ext>` (a *backup*); `--audit-log-compress` then writes
//! `<backup>.gz` completely and deletes the plain backup; pruning deletes the oldest backups by
//! the time in their names. So a backup's [`Key`] (the time in its name) names one
//! *generation* for its whole life: plain or compressed, it never changes, it is unique (the
//! writer's clock has millisecond resolution and one rotation per name), and keys sort in write
//! order (unless the clock stepped backwards: see `plan`). The live file is the generation
//! after the newest key.
//!
//! Only names of exactly that form are backups: `audit-dense100.log` or `audit-old.log.gz`
//! beside `audit.log` are not its history.

use std::path::{Path, PathBuf};

/// Length of the time in a backup's name: `2006-01-02T15-04-05.000`.
pub const KEY_LEN: usize = 23;

/// A backup's time, as written in its name. Fixed width, so byte order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; KEY_LEN]);

impl Key {
    /// Parses exactly `YYYY-MM-DDTHH-MM-SS.mmm`.
    pub fn parse(s: &[u8]) -> Option<Key> {
        if s.len() != KEY_LEN {
            return None;
        }
        let shape = b"0000-00-00T00-00-00.000";
        for (&c, &want) in s.iter().zip(shape) {
            let ok = if want == b'0' {
                c.is_ascii_digit()
            } else {
                c == want
            };
            if !ok {
                return None;
            }
        }
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(s);
        Some(Key(k))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators get in (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or("?")
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of one log: the live file and its backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub dir: PathBuf,
    /// The live file's name (`audit.log`).
    pub live: String,
    stem: String,
    ext: String,
}

/// What a name in a log's directory is to that log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Live,
    Backup { key: Key, gz: bool },
}

impl Names {
    /// The names of the log whose live file is `path`.
    pub fn of(path: &Path) -> Option<Names> {
        let live = path.file_name()?.to_str()?.to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let (stem, ext) = split_ext(&live);
        Some(Names {
            dir,
            stem: stem.to_owned(),
            ext: ext.to_owned(),
            live,
        })
    }

    pub fn live_path(&self) -> PathBuf {
        self.dir.join(&self.live)
    }

    pub fn backup_path(&self, key: Key, gz: bool) -> PathBuf {
        let gz = if gz { ".gz" } else { "" };
        self.dir
            .join(format!("{}-{}{}{gz}", self.stem, key.as_str(), self.ext))
    }

    /// What `name` (a file name in [`Names::dir`]) is to this log, if anything.
    pub fn classify(&self, name: &str) -> Option<Named> {
        if name == self.live {
            return Some(Named::Live);
        }
        let (name, gz) = match name.strip_suffix(".gz") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let rest = name.strip_prefix(&self.stem)?.strip_prefix('-')?;
        let key = rest.strip_suffix(self.ext.as_str())?;
        Some(Named::Backup {
            key: Key::parse(key.as_bytes())?,
            gz,
        })
    }
}

/// `audit.log` → (`audit`, `.log`); a name without a dot has no extension.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    }
}

/// If `name` is some log's lumberjack backup, that log's live name: a glob such as `*.log`
/// matches backups too, and they are history of their log, not logs of their own.
pub fn live_name_of_backup(name: &str) -> Option<String> {
    let plain = name.strip_suffix(".gz").unwrap_or(name);
    let (stem_key, ext) = split_ext(plain);
    let cut = stem_key.len().checked_sub(KEY_LEN + 1)?;
    let (stem, dash_key) = stem_key.split_at(cut);
    let key = dash_key.strip_prefix('-')?;
    Key::parse(key.as_bytes())?;
    (!stem.is_empty()).then(|| format!("{stem}{ext}"))
}

/// What the kernel says an open descriptor's file is called now (`/proc/self/fd/N`): the
/// name it was opened by, the backup it was renamed to, or neither (deleted, or renamed to
/// a name that is not this log's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdName {
    Live,
    Backup(Key),
    Elsewhere,
}

impl FdName {
    /// Reads the descriptor's name. Unknown when `/proc` is not mounted.
    pub fn of(fd: std::os::fd::RawFd, names: &Names) -> Option<FdName> {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        Some(FdName::from_target(&target, names))
    }

    /// A deleted file's name ends in ` (deleted)`. A plain backup deleted after its `.gz` was
    /// written is still that backup; a deleted live file is no longer anywhere.
    pub fn from_target(target: &Path, names: &Names) -> FdName {
        let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
            return FdName::Elsewhere;
        };
        let name = name.strip_suffix(" (deleted)").unwrap_or(name);
        // A relative or symlinked directory in the pattern makes the parent differ from the
        // kernel's: compare the directories by identity then.
        let parent = target.parent();
        if parent != Some(names.dir.as_path()) && !same_dir(parent, &names.dir) {
            return FdName::Elsewhere;
        }
        match names.classify(name) {
            Some(Named::Live) if !target.to_string_lossy().ends_with(" (deleted)") => FdName::Live,
            Some(Named::Backup { key, gz: false }) => FdName::Backup(key),
            _ => FdName::Elsewhere,
        }
    }
}

fn same_dir(a: Option<&Path>, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(a), Ok(mb)) = (a, std::fs::metadata(b)) else {
        return false;
    };
    std::fs::metadata(a).is_ok_and(|ma| (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn only_lumberjack_names_are_backups() {
        let n = Names::of(Path::new("/var/log/audit/audit.log")).unwrap();
        let k = key("2026-11-24T14-35-36.770");
        assert_eq!(n.classify("audit.log"), Some(Named::Live));
        assert_eq!(
            n.classify("audit-2026-11-24T14-35-36.770.log"),
            Some(Named::Backup { key: k, gz: false })
        );
        assert_eq!(
            n.classify("audit-2026-11-24T14-35-36.770.log.gz"),
            Some(Named::Backup { key: k, gz: true })
        );
        for other in [
            "audit-dense100.log",
            "audit-old.log.gz",
            "audit-2026-11-24T14-35-36.77.log",
            "audit-2026-11-24T14:35:36.770.log",
            "audit-2026-11-24T14-35-36.770.json",
            "audit.log.1",
            "other-2026-11-24T14-35-36.770.log",
        ] {
            assert_eq!(n.classify(other), None, "{other}");
        }
        assert_eq!(
            n.backup_path(k, true),
            Path::new("/var/log/audit/audit-2026-11-24T14-35-36.770.log.gz")
        );
    }

    #[test]
    fn keys_sort_in_time_order_and_backups_name_their_log() {
        assert!(key("2026-11-24T14-35-36.770") < key("2026-11-24T14-35-36.771"));
        assert!(key("2026-11-24T23-59-59.999") < key("2026-11-25T00-00-00.000"));
        assert_eq!(
            live_name_of_backup("audit-2026-11-24T14-35-36.770.log.gz").as_deref(),
            Some("audit.log")
        );
        assert_eq!(live_name_of_backup("audit-dense100.log"), None);
        assert_eq!(live_name_of_backup("-2026-11-24T14-35-36.770.log"), None);
    }

    #[test]
    fn a_descriptor_name_says_where_the_file_went() {
        let n = Names::of(Path::new("/logs/audit.log")).unwrap();
        let k = key("2026-11-24T14-35-36.770");
        let at = |s: &str| FdName::from_target(Path::new(s), &n);
        assert_eq!(at("/logs/audit.log"), FdName::Live);
        assert_eq!(
            at("/logs/audit-2026-11-24T14-35-36.770.log"),
            FdName::Backup(k)
        );
        // Deleted after its .gz was written: still that generation.
        assert_eq!(
            at("/logs/audit-2026-11-24T14-35-36.770.log (deleted)"),
            FdName::Backup(k)
        );
        assert_eq!(at("/logs/audit.log (deleted)"), FdName::Elsewhere);
        assert_eq!(at("/logs/audit.log.1"), FdName::Elsewhere);
    }
}
