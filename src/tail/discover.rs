//! Which logs a pattern names: the directories it matches, and in them the live names
//! (a glob such as `*.log` also matches backups, which belong to their log).

use super::Tailer;
use super::access::{self, Unreadable};
use super::generation::live_name_of_backup;
use std::path::{Path, PathBuf};

impl Tailer {
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
            Some(access::DirProblem::Missing(p)) => self.access.missing.push(p),
            Some(access::DirProblem::Unreadable(u)) => self.access.unreadable.push(u),
            None => {}
        }
    }

    /// The live paths of the logs in `dir`: names matching the pattern that are not a
    /// backup of another matching name, and the logs of matching backups.
    fn logs_in(&mut self, dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                ::log::debug!("cannot list {}: {e}", dir.display());
                self.note_dir_problem(dir);
                return found;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let live = match live_name_of_backup(name) {
                Some(live) if self.name.matches(&live) => live,
                _ if self.name.matches(name) && !name.ends_with(".gz") => name.to_owned(),
                _ => continue,
            };
            let path = dir.join(live);
            if !found.contains(&path) {
                found.push(path);
            }
        }
        found
    }

    /// Finds the logs of the pattern and starts following those not followed yet.
    pub(super) fn discover(&mut self) {
        self.access.unreadable.clear();
        self.access.missing.clear();
        let mut paths = Vec::new();
        for dir in self.dirs() {
            if let Some(w) = self.watcher.as_mut()
                && let Err(e) = w.watch_dir(&dir)
            {
                ::log::debug!("cannot watch {}: {e}", dir.display());
            }
            paths.extend(self.logs_in(&dir));
        }
        for path in paths {
            if !self.logs.iter().any(|l| l.names.live_path() == path) {
                self.start_log(&path);
            }
        }
    }
}
