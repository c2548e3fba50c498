//! The cursor store: per log, where a restart resumes (DESIGN.md §2.1, §3).
//!
//! Invariants owned here:
//! - What is stored comes from [`LogPlan::settle`](super::plan::LogPlan::settle): a cursor
//!   never passes a line that is not durable downstream.
//! - [`Cursors::save`] replaces the file durably (`durable::replace`: tmp, fsync, rename,
//!   fsync dir; mode 0600), so a crash leaves either the old or the new state.
//! - A damaged file (bad header, bad line, checksum mismatch) is never trusted: it is moved
//!   aside as `<name>.corrupt`, reported, and the tailer starts as on a first start.
//! - A file of the previous format (`checkpoints 1`: one entry per file, by inode) is read
//!   once and turned into cursors by [`upgrade`]; the next save writes the new format.
//!
//! Format (text, so an operator can read it):
//! ```text
//! kube-audit-shipper cursors 2
//! saved <unix µs>
//! log <live path, %-escaped>
//! cursor live <dev> <ino> <committed> <size seen> <final 0|1> <fp len> <fp hash hex> <time µs|->
//! cursor backup <key> <committed> … (as above)       (or no cursor line: nothing read yet)
//! known <key> <key> …                                  (keys read to their end, or history)
//! pending <key>:<size seen>:<final 0|1> …              (keys seen after the cursor's)
//! sum <FNV-1a 64 hex of every byte above>
//! ```

use super::file::{FileId, Fingerprint};
use super::generation::{Key, Names, live_name_of_backup};
use super::plan::{Cursor, Gen, Saved};
use crate::durable;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const HEADER: &str = "kube-audit-shipper cursors 2";
const HEADER_V1: &str = "kube-audit-shipper checkpoints 1";

/// Why a stored file was not used.
#[derive(Debug)]
pub enum LoadProblem {
    Missing,
    /// Damaged; moved aside to the given path.
    Corrupt {
        reason: String,
        moved_to: PathBuf,
    },
}

/// One file's entry in the previous format.
#[derive(Clone, Debug, PartialEq)]
pub struct V1Entry {
    pub id: FileId,
    pub committed: u64,
    pub size_seen: u64,
    pub final_size: bool,
    pub done: bool,
    pub path: PathBuf,
}

/// What was loaded.
#[derive(Debug, Default)]
pub enum Loaded {
    #[default]
    Nothing,
    Cursors(Vec<(PathBuf, Saved)>),
    /// The previous format, with its save time, to [`upgrade`] against the directory.
    V1 {
        saved_at: i64,
        entries: Vec<V1Entry>,
    },
}

pub struct Cursors {
    dir: PathBuf,
    name: String,
}

impl Cursors {
    /// Loads `dir/name`. A missing or damaged file gives nothing and says why.
    pub fn load(dir: &Path, name: &str) -> io::Result<(Cursors, Loaded, Option<LoadProblem>)> {
        durable::create_dir(dir)?;
        let store = Cursors {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((store, Loaded::Nothing, Some(LoadProblem::Missing)));
            }
            Err(e) => return Err(e),
        };
        match parse(&bytes) {
            Ok(loaded) => Ok((store, loaded, None)),
            Err(reason) => {
                let moved_to = dir.join(format!("{name}.corrupt"));
                std::fs::rename(&path, &moved_to)?;
                durable::sync_dir(dir)?;
                let problem = LoadProblem::Corrupt { reason, moved_to };
                Ok((store, Loaded::Nothing, Some(problem)))
            }
        }
    }

    /// Writes every log's state durably.
    pub fn save(&self, now_micros: i64, logs: &[(&Path, &Saved)]) -> io::Result<()> {
        let text = render(now_micros, logs);
        durable::replace(&self.dir, &self.name, text.as_bytes())
    }
}

/// Turns the previous format's entries for the log `names` into its state. `disk`: the
/// backups there now, with their modification times (unix µs).
///
/// The previous format kept one entry per file: its oldest unfinished entry becomes the
/// cursor (by key when its last name was a backup's, else by inode); finished entries' keys
/// are known; a backup there now that no entry names is history if it was last modified
/// before the save (the previous format's own rule), else it was written since and is read.
pub fn upgrade(entries: &[V1Entry], saved_at: i64, names: &Names, disk: &[(Key, i64)]) -> Saved {
    let mine: Vec<&V1Entry> = entries
        .iter()
        .filter(|e| log_of(&e.path).is_some_and(|p| p == names.live_path()))
        .collect();
    let key_of = |e: &V1Entry| -> Option<Key> {
        let name = e.path.file_name()?.to_str()?;
        match names.classify(name)? {
            super::generation::Named::Backup { key, .. } => Some(key),
            super::generation::Named::Live => None,
        }
    };
    let mut unfinished: Vec<&V1Entry> = mine.iter().copied().filter(|e| !e.done).collect();
    // Backups (oldest key first) before the live file.
    unfinished.sort_by_key(|e| (key_of(e).is_none(), key_of(e)));
    let cursor = unfinished.first().map(|e| Cursor {
        generation: key_of(e).map_or(Gen::Live((e.id.dev, e.id.ino)), Gen::Backup),
        committed: e.committed,
        size_seen: e.size_seen,
        final_size: e.final_size,
        fp: e.id.fp,
        last_time: None,
    });
    let named: Vec<Key> = mine.iter().filter_map(|e| key_of(e)).collect();
    let unread: Vec<Key> = unfinished.iter().filter_map(|e| key_of(e)).collect();
    let mut known: Vec<Key> = disk
        .iter()
        .filter(|(k, mtime)| !unread.contains(k) && (named.contains(k) || *mtime < saved_at))
        .map(|(k, _)| *k)
        .collect();
    known.extend(mine.iter().filter(|e| e.done).filter_map(|e| key_of(e)));
    known.sort_unstable();
    known.dedup();
    Saved {
        cursor,
        known,
        pending: Vec::new(),
    }
}

/// The live path of the log a file of the previous format belonged to.
fn log_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let live = live_name_of_backup(name).unwrap_or_else(|| name.to_owned());
    Some(path.with_file_name(live))
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

fn render(saved_at: i64, logs: &[(&Path, &Saved)]) -> String {
    let mut s = format!("{HEADER}\nsaved {saved_at}\n");
    for (path, saved) in logs {
        s.push_str("log ");
        escape_path(path, &mut s);
        s.push('\n');
        if let Some(c) = &saved.cursor {
            match c.generation {
                Gen::Live((dev, ino)) => {
                    let _ = write!(s, "cursor live {dev} {ino}");
                }
                Gen::Backup(k) => {
                    let _ = write!(s, "cursor backup {k}");
                }
            }
            let time = c.last_time.map_or("-".to_string(), |t| t.to_string());
            let _ = writeln!(
                s,
                " {} {} {} {} {:016x} {time}",
                c.committed,
                c.size_seen,
                u8::from(c.final_size),
                c.fp.len,
                c.fp.hash
            );
        }
        s.push_str("known");
        for k in &saved.known {
            s.push(' ');
            s.push_str(k.as_str());
        }
        s.push_str("\npending");
        for (k, size, final_size) in &saved.pending {
            let _ = write!(s, " {k}:{size}:{}", u8::from(*final_size));
        }
        s.push('\n');
    }
    let sum = fnv(s.as_bytes());
    let _ = writeln!(s, "sum {sum:016x}");
    s
}

/// The body (checked against its sum) and its header.
fn checked(bytes: &[u8]) -> Result<(&str, &str), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_end = text.rfind("sum ").ok_or("no checksum line")?;
    let (body, sum_line) = text.split_at(body_end);
    let sum = sum_line.trim_end().strip_prefix("sum ").unwrap_or_default();
    let sum = u64::from_str_radix(sum, 16).map_err(|_| "bad checksum line".to_string())?;
    if sum != fnv(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    let header = body.lines().next().unwrap_or_default();
    Ok((header, body))
}

fn parse(bytes: &[u8]) -> Result<Loaded, String> {
    let (header, body) = checked(bytes)?;
    let mut lines = body.lines().skip(1);
    let saved_at: i64 = lines
        .next()
        .and_then(|l| l.strip_prefix("saved "))
        .and_then(|v| v.parse().ok())
        .ok_or("bad 'saved' line")?;
    match header {
        HEADER => parse_v2(lines).map(Loaded::Cursors),
        HEADER_V1 => parse_v1(lines).map(|entries| Loaded::V1 { saved_at, entries }),
        _ => Err("unknown header".into()),
    }
}

fn parse_v2<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<(PathBuf, Saved)>, String> {
    let mut logs: Vec<(PathBuf, Saved)> = Vec::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("bad line {}", n + 3);
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "log" => logs.push((unescape_path(rest)?, Saved::default())),
            "cursor" => {
                let last = logs.last_mut().ok_or_else(bad)?;
                last.1.cursor = Some(parse_cursor(rest).ok_or_else(bad)?);
            }
            "known" => {
                let last = logs.last_mut().ok_or_else(bad)?;
                for k in rest.split(' ').filter(|k| !k.is_empty()) {
                    last.1.known.push(Key::parse(k.as_bytes()).ok_or_else(bad)?);
                }
                last.1.known.sort_unstable();
            }
            "pending" => {
                let last = logs.last_mut().ok_or_else(bad)?;
                for p in rest.split(' ').filter(|p| !p.is_empty()) {
                    last.1.pending.push(parse_pending(p).ok_or_else(bad)?);
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(logs)
}

/// `<key>:<size seen>:<final 0|1>`.
fn parse_pending(p: &str) -> Option<(Key, u64, bool)> {
    let mut f = p.split(':');
    let key = Key::parse(f.next()?.as_bytes())?;
    let size = f.next()?.parse().ok()?;
    let final_size = f.next()? == "1";
    f.next().is_none().then_some((key, size, final_size))
}

fn parse_cursor(rest: &str) -> Option<Cursor> {
    let mut f = rest.split(' ');
    let generation = match f.next()? {
        "live" => Gen::Live((f.next()?.parse().ok()?, f.next()?.parse().ok()?)),
        "backup" => Gen::Backup(Key::parse(f.next()?.as_bytes())?),
        _ => return None,
    };
    let committed = f.next()?.parse().ok()?;
    let size_seen = f.next()?.parse().ok()?;
    let final_size = f.next()? == "1";
    let fp = Fingerprint {
        len: f.next()?.parse().ok()?,
        hash: u64::from_str_radix(f.next()?, 16).ok()?,
    };
    let last_time = match f.next()? {
        "-" => None,
        t => Some(t.parse().ok()?),
    };
    f.next().is_none().then_some(Cursor {
        generation,
        committed,
        size_seen,
        final_size,
        fp,
        last_time,
    })
}

fn parse_v1<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<V1Entry>, String> {
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
        let fp = Fingerprint {
            len: u32::try_from(fp_len).map_err(|_| bad())?,
            hash: fp_hash,
        };
        entries.push(V1Entry {
            id: FileId { dev, ino, fp },
            committed,
            size_seen,
            final_size: final_size == 1,
            done: done == 1,
            path,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s.as_bytes()).unwrap()
    }

    fn tmpdir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kas-cursor-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trips() {
        let dir = tmpdir("rt");
        let (store, loaded, problem) = Cursors::load(&dir, "c").unwrap();
        assert!(matches!(loaded, Loaded::Nothing));
        assert!(matches!(problem, Some(LoadProblem::Missing)));
        let a = Saved {
            cursor: Some(Cursor {
                generation: Gen::Live((2049, 77)),
                committed: 500,
                size_seen: 900,
                final_size: false,
                fp: Fingerprint {
                    len: 300,
                    hash: 0xabc,
                },
                last_time: Some(1_795_000_000_000_000),
            }),
            known: vec![
                key("2026-11-24T14-35-36.770"),
                key("2026-11-24T14-35-37.001"),
            ],
            pending: vec![(key("2026-11-24T14-35-38.000"), 4096, true)],
        };
        let b = Saved {
            cursor: Some(Cursor {
                generation: Gen::Backup(key("2026-11-24T14-35-36.770")),
                committed: 0,
                size_seen: 0,
                final_size: true,
                fp: Fingerprint::of(&[]),
                last_time: None,
            }),
            known: vec![],
            pending: vec![],
        };
        let c = Saved::default();
        let pa = PathBuf::from("/var/log/kube apiserver/audit%.log");
        let (pb, pc) = (PathBuf::from("/b/audit.log"), PathBuf::from("/c/audit.log"));
        store.save(42, &[(&pa, &a), (&pb, &b), (&pc, &c)]).unwrap();
        let (_, loaded, problem) = Cursors::load(&dir, "c").unwrap();
        assert!(problem.is_none());
        match loaded {
            Loaded::Cursors(logs) => assert_eq!(logs, vec![(pa, a), (pb, b), (pc, c)]),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_moved_aside_not_trusted() {
        let dir = tmpdir("bad");
        let (store, _, _) = Cursors::load(&dir, "c").unwrap();
        let s = Saved {
            cursor: None,
            known: vec![key("2026-11-24T14-35-36.773")],
            pending: vec![],
        };
        store.save(1, &[(Path::new("/x/audit.log"), &s)]).unwrap();
        let good = std::fs::read(dir.join("c")).unwrap();
        let mut flipped = good.clone();
        let at = good.iter().position(|&b| b == b'3').unwrap();
        flipped[at] = b'4';
        for damaged in [
            flipped,
            good[..good.len() / 2].to_vec(),
            b"garbage".to_vec(),
            vec![0xff; 10],
        ] {
            std::fs::write(dir.join("c"), &damaged).unwrap();
            let (_, loaded, problem) = Cursors::load(&dir, "c").unwrap();
            assert!(matches!(loaded, Loaded::Nothing));
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
    fn the_previous_format_becomes_a_cursor_and_known_keys() {
        let names = Names::of(Path::new("/logs/audit.log")).unwrap();
        let (k1, k2, k3, k4) = (
            key("2026-11-24T14-00-00.000"),
            key("2026-11-24T14-00-01.000"),
            key("2026-11-24T14-00-02.000"),
            key("2026-11-24T14-00-03.000"),
        );
        let fp = Fingerprint { len: 1024, hash: 9 };
        let entry = |path: &str, committed, done| V1Entry {
            id: FileId {
                dev: 1,
                ino: committed,
                fp,
            },
            committed,
            size_seen: 5000,
            final_size: true,
            done,
            path: PathBuf::from(path),
        };
        let entries = vec![
            entry("/logs/audit-2026-11-24T14-00-01.000.log.gz", 5000, true),
            entry("/logs/audit-2026-11-24T14-00-02.000.log", 1200, false),
            entry("/logs/audit.log", 0, false),
            entry("/other/audit.log", 7, false),
        ];
        // k1 predates the last save (history); k4 was written after it.
        let disk = [(k1, 10), (k2, 20), (k3, 30), (k4, 200)];
        let saved = upgrade(&entries, 100, &names, &disk);
        let c = saved.cursor.unwrap();
        assert_eq!(
            (c.generation, c.committed, c.fp),
            (Gen::Backup(k3), 1200, fp)
        );
        assert_eq!(saved.known, vec![k1, k2]);
    }
}
