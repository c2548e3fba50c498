//! What is on disk for one log: its listing, and the starts of its files (fingerprints,
//! the time of an event) used to confirm a cursor's generation and to date a loss.

use super::file::{FINGERPRINT_LEN, Fingerprint, Source, dev_ino, fingerprint_file, prefix};
use super::generation::{Key, Named, Names};
use super::plan::{Gen, Listed, Listing};
use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Where the time of an audit event is, and how it starts.
const TIME_KEY: &[u8] = b"\"requestReceivedTimestamp\":\"";

/// The `requestReceivedTimestamp` of an audit event line, if it has one.
pub fn event_time(line: &[u8]) -> Option<i64> {
    let at = memchr::memmem::find(line, TIME_KEY)? + TIME_KEY.len();
    let rest = &line[at..];
    let end = memchr::memchr(b'"', rest)?;
    crate::timestamp::parse_micros(std::str::from_utf8(&rest[..end]).ok()?)
}

/// Lists a log's directory: the live file first, then the backups (a rotation in between
/// shows the renamed file under its key, never under neither name).
pub fn list(names: &Names) -> io::Result<Listing> {
    let live = match fs::metadata(names.live_path()) {
        Ok(m) if m.is_file() => Some((dev_ino(&m), m.len())),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut backups: Vec<Listed> = Vec::new();
    for entry in fs::read_dir(&names.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(Named::Backup { key, gz }) = name.to_str().and_then(|n| names.classify(n)) else {
            continue;
        };
        let plain = if gz {
            None
        } else {
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => Some(dev_ino(&m)),
                _ => continue,
            }
        };
        match backups.iter_mut().find(|b| b.key == key) {
            Some(b) if gz => b.gz = true,
            Some(b) => b.plain = plain,
            None => backups.push(Listed { key, plain, gz }),
        }
    }
    backups.sort_by_key(|b| b.key);
    Ok(Listing { backups, live })
}

/// Adds to `listing` the backups of `keys` that are there but the directory read missed. A
/// directory read is not atomic: while a backup is compressed, its `.gz` can be created behind
/// the read's position and its plain name deleted ahead of it, so neither is returned. A
/// lookup by name is atomic, and one of the two names always exists (the `.gz` is written
/// whole before the plain backup is deleted): the keys a restart depends on are looked up.
pub fn confirm_keys(names: &Names, listing: &mut Listing, keys: &[Key]) {
    for &key in keys {
        if listing.get(key).is_some() {
            continue;
        }
        let plain = match fs::metadata(names.backup_path(key, false)) {
            Ok(m) if m.is_file() => Some(dev_ino(&m)),
            _ => None,
        };
        let gz = plain.is_none() && fs::metadata(names.backup_path(key, true)).is_ok();
        if plain.is_some() || gz {
            log::debug!("{key}: missed by the directory read, found by name");
            listing.backups.push(Listed { key, plain, gz });
        }
    }
    listing.backups.sort_by_key(|b| b.key);
}

/// Adds the backups of a second listing that the first missed.
pub fn merge(listing: &mut Listing, other: Listing) {
    for b in other.backups {
        if listing.get(b.key).is_none() {
            listing.backups.push(b);
        }
    }
    listing.backups.sort_by_key(|b| b.key);
}

/// The fingerprint of a file's start (decompressed for `.gz`), over up to 1 KiB.
pub fn fingerprint_path(path: &Path, gz: bool) -> io::Result<Fingerprint> {
    let f = File::open(path)?;
    if !gz {
        return fingerprint_file(&f);
    }
    let mut src = Source::from_file(f, true, 0)?;
    let mut buf = Vec::with_capacity(FINGERPRINT_LEN);
    io::Read::read_to_end(
        &mut io::Read::take(&mut src, FINGERPRINT_LEN as u64),
        &mut buf,
    )?;
    Ok(Fingerprint::of(&buf))
}

pub fn confirms(names: &Names, listing: &Listing, generation: Gen, fp: Fingerprint) -> bool {
    let candidates = match generation {
        Gen::Live(_) => vec![(names.live_path(), false)],
        // The plain backup may be compressed and deleted since the listing: its .gz is
        // whole then.
        Gen::Backup(k) if listing.get(k).is_some() => vec![
            (names.backup_path(k, false), false),
            (names.backup_path(k, true), true),
        ],
        Gen::Backup(_) => return false,
    };
    for (path, gz) in candidates {
        let got = File::open(&path)
            .and_then(|f| Source::from_file(f, gz, 0))
            .and_then(|src| prefix(src, fp.len as usize));
        match got {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Ok(Some(got)) => return got == fp,
            _ => return false,
        }
    }
    false
}
