//! The checkpoint store: per file, the offset the pipeline has *committed* (DESIGN.md §2.1).
//!
//! Invariants owned here:
//! - An entry's `committed` offset only moves forward, and only through
//!   [`Checkpoints::commit`], which the pipeline calls once the data up to it is durable
//!   downstream. What was merely read is never recorded.
//! - [`Checkpoints::save`] replaces the file durably (`durable::replace`: tmp, fsync,
//!   rename, fsync dir; mode 0600), so a crash leaves either the old or the new state.
//! - A file that is damaged (bad header, bad line, checksum mismatch) is never trusted: it is
//!   moved aside as `<name>.corrupt`, reported, and the tailer starts as on a first start.
//!
//! Format (text, one entry per line, so an operator can read it):
//! ```text
//! kube-audit-shipper checkpoints 1
//! saved <unix µs>
//! file <dev> <ino> <fp len> <fp hash hex> <committed> <size seen> <final 0|1> <done 0|1> <path, %-escaped>
//! sum <FNV-1a 64 hex of every byte above>
//! ```

use super::file::{FileId, Fingerprint};
use crate::durable;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const HEADER: &str = "kube-audit-shipper checkpoints 1";

/// Entries for files fully read and committed are kept (to recognise those files, or their
/// `.gz`, after a restart) up to this many, oldest dropped first.
const MAX_DONE: usize = 256;

/// One file's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Stable handle for this run (not stored): positions name their file by it.
    pub serial: u64,
    pub id: FileId,
    /// Everything before this offset is durable downstream.
    pub committed: u64,
    /// The file's size when last looked at.
    pub size_seen: u64,
    /// `size_seen` is final: the file was rotated away or left, it will not grow.
    pub final_size: bool,
    /// Read, committed to its end, and left. Kept only to recognise the file again.
    pub done: bool,
    /// Last known name (informational; files are matched by identity).
    pub path: PathBuf,
}

/// Why a checkpoint file was not used.
#[derive(Debug)]
pub enum LoadProblem {
    Missing,
    /// Damaged; moved aside to the given path.
    Corrupt {
        reason: String,
        moved_to: PathBuf,
    },
}

pub struct Checkpoints {
    dir: PathBuf,
    name: String,
    pub entries: Vec<Entry>,
    /// When the loaded state was saved (unix µs); `None` on a first start.
    pub saved_at: Option<i64>,
    next_serial: u64,
    dirty: bool,
}

impl Checkpoints {
    /// Loads `dir/name`. A missing or damaged file gives an empty store and says why.
    pub fn load(dir: &Path, name: &str) -> io::Result<(Checkpoints, Option<LoadProblem>)> {
        durable::create_dir(dir)?;
        let mut store = Checkpoints {
            dir: dir.to_owned(),
            name: name.to_owned(),
            entries: Vec::new(),
            saved_at: None,
            next_serial: 1,
            dirty: false,
        };
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A first start: the next save writes even with nothing to record, so that
                // a restart knows when this one began (see `saved_at`).
                store.dirty = true;
                return Ok((store, Some(LoadProblem::Missing)));
            }
            Err(e) => return Err(e),
        };
        match parse(&bytes) {
            Ok((saved_at, entries)) => {
                store.saved_at = Some(saved_at);
                for mut e in entries {
                    e.serial = store.next_serial;
                    store.next_serial += 1;
                    store.entries.push(e);
                }
                Ok((store, None))
            }
            Err(reason) => {
                let moved_to = dir.join(format!("{name}.corrupt"));
                std::fs::rename(&path, &moved_to)?;
                durable::sync_dir(dir)?;
                store.dirty = true;
                Ok((store, Some(LoadProblem::Corrupt { reason, moved_to })))
            }
        }
    }

    pub fn get(&self, serial: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.serial == serial)
    }

    fn get_mut(&mut self, serial: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.serial == serial)
    }

    /// Adds an entry for a newly followed file; returns its serial.
    pub fn add(&mut self, mut entry: Entry) -> u64 {
        entry.serial = self.next_serial;
        self.next_serial += 1;
        self.dirty = true;
        self.entries.push(entry);
        self.next_serial - 1
    }

    /// Records that everything before `offset` of the file `serial` is durable downstream.
    pub fn commit(&mut self, serial: u64, offset: u64) {
        let Some(e) = self.get_mut(serial) else {
            return;
        };
        let mut changed = false;
        if offset > e.committed {
            e.committed = offset;
            changed = true;
        }
        changed |= Self::settle(e);
        self.dirty |= changed;
    }

    /// Updates what is known of the file `serial`.
    pub fn observe(&mut self, serial: u64, size: u64, final_size: bool, id: FileId, path: &Path) {
        let Some(e) = self.get_mut(serial) else {
            return;
        };
        let mut changed = false;
        if e.size_seen != size || e.final_size != final_size || e.id != id || e.path != path {
            e.size_seen = size;
            e.final_size = final_size;
            e.id = id;
            path.clone_into(&mut e.path);
            changed = true;
        }
        changed |= Self::settle(e);
        self.dirty |= changed;
    }

    /// A file that will not grow and is committed to its end is done.
    fn settle(e: &mut Entry) -> bool {
        if e.final_size && e.committed >= e.size_seen && !e.done {
            e.done = true;
            return true;
        }
        false
    }

    /// Forgets the file `serial` (it is gone and its loss was reported).
    pub fn remove(&mut self, serial: u64) {
        self.entries.retain(|e| e.serial != serial);
        self.dirty = true;
    }

    /// Writes the state durably if it changed since the last save.
    pub fn save(&mut self, now_micros: i64) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.trim_done();
        let text = render(now_micros, &self.entries);
        durable::replace(&self.dir, &self.name, text.as_bytes())?;
        self.dirty = false;
        Ok(())
    }

    /// Drops the oldest `done` entries beyond [`MAX_DONE`].
    fn trim_done(&mut self) {
        let done = self.entries.iter().filter(|e| e.done).count();
        if done <= MAX_DONE {
            return;
        }
        let mut excess = done - MAX_DONE;
        self.entries.retain(|e| {
            if e.done && excess > 0 {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    Fingerprint::of(bytes).hash
}

fn escape_path(p: &Path, out: &mut String) {
    for &b in p.as_os_str().as_bytes() {
        if b <= b' ' || b == b'%' || b >= 0x7f {
            let _ = write!(out, "%{b:02x}");
        } else {
            out.push(b as char);
        }
    }
}

fn unescape_path(s: &str) -> Result<PathBuf, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad %-escape in path")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape in path")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

fn render(saved_at: i64, entries: &[Entry]) -> String {
    let mut s = format!("{HEADER}\nsaved {saved_at}\n");
    for e in entries {
        let _ = write!(
            s,
            "file {} {} {} {:016x} {} {} {} {} ",
            e.id.dev,
            e.id.ino,
            e.id.fp.len,
            e.id.fp.hash,
            e.committed,
            e.size_seen,
            u8::from(e.final_size),
            u8::from(e.done)
        );
        escape_path(&e.path, &mut s);
        s.push('\n');
    }
    let sum = fnv(s.as_bytes());
    let _ = writeln!(s, "sum {sum:016x}");
    s
}

fn parse(bytes: &[u8]) -> Result<(i64, Vec<Entry>), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_end = text.rfind("sum ").ok_or("no checksum line")?;
    let (body, sum_line) = text.split_at(body_end);
    let sum = sum_line.trim_end().strip_prefix("sum ").unwrap_or_default();
    let sum = u64::from_str_radix(sum, 16).map_err(|_| "bad checksum line".to_string())?;
    if sum != fnv(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err("unknown header".into());
    }
    let saved_at = lines
        .next()
        .and_then(|l| l.strip_prefix("saved "))
        .and_then(|v| v.parse().ok())
        .ok_or("bad 'saved' line")?;
    let mut entries = Vec::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("bad entry {}", n + 1);
        let rest = line.strip_prefix("file ").ok_or_else(bad)?;
        let mut f = rest.splitn(10, ' ');
        let mut num = |radix: u32| -> Result<u64, String> {
            f.next()
                .and_then(|v| u64::from_str_radix(v, radix).ok())
                .ok_or_else(bad)
        };
        let (dev, ino, fp_len, fp_hash) = (num(10)?, num(10)?, num(10)?, num(16)?);
        let (committed, size_seen, final_size, done) = (num(10)?, num(10)?, num(10)?, num(10)?);
        let path = unescape_path(f.next().ok_or_else(bad)?)?;
        entries.push(Entry {
            serial: 0,
            id: FileId {
                dev,
                ino,
                fp: Fingerprint {
                    len: u32::try_from(fp_len).map_err(|_| bad())?,
                    hash: fp_hash,
                },
            },
            committed,
            size_seen,
            final_size: final_size == 1,
            done: done == 1,
            path,
        });
    }
    Ok((saved_at, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            serial: 0,
            id: FileId {
                dev: 2049,
                ino: 100 + n,
                fp: Fingerprint {
                    len: 1024,
                    hash: 0xdead_beef_0000_0000 + n,
                },
            },
            committed: 1000 * n,
            size_seen: 2000 * n,
            final_size: n.is_multiple_of(2),
            done: false,
            path: PathBuf::from(format!("/var/log/kube apiserver/audit-{n}%.log")),
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kas-ckpt-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trips_and_commits_only_forward() {
        let dir = tmpdir("rt");
        let (mut store, problem) = Checkpoints::load(&dir, "ckpt").unwrap();
        assert!(matches!(problem, Some(LoadProblem::Missing)));
        let a = store.add(entry(1));
        store.add(entry(2));
        store.commit(a, 5000);
        store.commit(a, 10); // backwards: ignored
        store.save(42).unwrap();
        let (loaded, problem) = Checkpoints::load(&dir, "ckpt").unwrap();
        assert!(problem.is_none());
        assert_eq!(loaded.saved_at, Some(42));
        assert_eq!(loaded.entries[0].committed, 5000);
        assert_eq!(
            loaded.entries[1],
            Entry {
                serial: loaded.entries[1].serial,
                ..entry(2)
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_moved_aside_not_trusted() {
        let dir = tmpdir("bad");
        let (mut store, _) = Checkpoints::load(&dir, "ckpt").unwrap();
        store.add(entry(3));
        store.save(1).unwrap();
        let good = std::fs::read(dir.join("ckpt")).unwrap();
        let mut flipped = good.clone();
        let at = good.iter().position(|&b| b == b'3').unwrap();
        flipped[at] = b'4';
        for damaged in [
            flipped,
            good[..good.len() / 2].to_vec(),
            b"garbage".to_vec(),
            vec![0xff; 10],
        ] {
            std::fs::write(dir.join("ckpt"), &damaged).unwrap();
            let (store, problem) = Checkpoints::load(&dir, "ckpt").unwrap();
            assert!(store.entries.is_empty() && store.saved_at.is_none());
            match problem {
                Some(LoadProblem::Corrupt { moved_to, .. }) => {
                    assert_eq!(std::fs::read(&moved_to).unwrap(), damaged);
                }
                other => panic!("{other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_becomes_done_once_final_and_committed_to_its_end() {
        let dir = tmpdir("done");
        let (mut store, _) = Checkpoints::load(&dir, "ckpt").unwrap();
        let mut e = entry(2);
        e.final_size = false;
        let serial = store.add(e.clone());
        store.commit(serial, e.size_seen);
        assert!(!store.get(serial).unwrap().done, "the file may still grow");
        store.observe(serial, e.size_seen, true, e.id, &e.path);
        assert!(store.get(serial).unwrap().done);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
