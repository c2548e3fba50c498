//! An audit-log writer that rotates the way kube-apiserver's file backend does (observed on
//! v1.36 with `--audit-log-maxsize`, DESIGN.md §3): a line is never split across files; when
//! the next line would pass the size limit the file is renamed to
//! `audit-<UTC YYYY-MM-DDTHH-MM-SS.mmm>.log` and a new `audit.log` is created with mode 0600;
//! with compression the backup is gzipped to `<backup>.gz` and the uncompressed one deleted
//! right after; backups beyond `max_backup` are deleted, oldest first; a restarted server
//! appends to the existing `audit.log`.
#![allow(dead_code)]

use flate2::Compression;
use flate2::write::GzEncoder;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct AuditWriter {
    pub dir: PathBuf,
    pub max_size: u64,
    pub max_backup: usize,
    pub compress: bool,
    file: File,
    size: u64,
    /// Fake UTC clock for backup names, in ms; strictly increasing so names never collide.
    clock_ms: u64,
    pub rotations: usize,
    /// Every backup name ever created, in order, with its final size.
    pub backups: Vec<(PathBuf, u64)>,
}

impl AuditWriter {
    pub fn new(dir: &Path, max_size: u64, max_backup: usize, compress: bool) -> AuditWriter {
        fs::create_dir_all(dir).unwrap();
        let file = open(&dir.join("audit.log"));
        let size = file.metadata().unwrap().len();
        AuditWriter {
            dir: dir.to_owned(),
            max_size,
            max_backup,
            compress,
            file,
            size,
            clock_ms: 14 * 3_600_000,
            rotations: 0,
            backups: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Writes one line (a newline is added) in one write call, rotating first if needed.
    pub fn write_line(&mut self, line: &str) {
        self.write_bytes(line.as_bytes());
    }

    /// [`AuditWriter::write_line`] for any bytes (a newline inside makes two lines).
    pub fn write_bytes(&mut self, line: &[u8]) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate();
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf).unwrap();
        self.size += len;
    }

    pub fn rotate(&mut self) {
        self.clock_ms += 1 + self.rotations as u64 % 7;
        let t = self.clock_ms;
        let name = format!(
            "audit-2026-11-24T{:02}-{:02}-{:02}.{:03}.log",
            t / 3_600_000 % 24,
            t / 60_000 % 60,
            t / 1000 % 60,
            t % 1000
        );
        let backup = self.dir.join(&name);
        fs::rename(self.path(), &backup).unwrap();
        self.file = open(&self.path());
        self.backups.push((backup.clone(), self.size));
        self.size = 0;
        self.rotations += 1;
        if self.compress {
            let gz_path = self.dir.join(format!("{name}.gz"));
            let mut gz = GzEncoder::new(File::create(&gz_path).unwrap(), Compression::fast());
            gz.write_all(&fs::read(&backup).unwrap()).unwrap();
            gz.finish().unwrap();
            fs::remove_file(&backup).unwrap();
        }
        self.prune();
    }

    fn prune(&mut self) {
        let mut backups: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("audit-") && (n.ends_with(".log") || n.ends_with(".log.gz"))
            })
            .collect();
        backups.sort(); // the timestamp in the name orders them
        while backups.len() > self.max_backup {
            fs::remove_file(backups.remove(0)).unwrap();
        }
    }

    /// The API server restarts: it reopens `audit.log` and appends.
    pub fn restart(&mut self) {
        self.file = open(&self.path());
        self.size = self.file.metadata().unwrap().len();
    }

    /// Bytes in the current file.
    pub fn size(&self) -> u64 {
        self.size
    }
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .unwrap()
}

/// A line carrying its sequence number, padded to about `size` bytes.
pub fn line(seq: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// The sequence number of a line made by [`line`].
pub fn seq_of(line: &[u8]) -> u64 {
    let s = std::str::from_utf8(line).expect("UTF-8 line");
    let start = s.find("\"seq\":").expect("a seq line") + 6;
    let end = start + s[start..].find(',').unwrap();
    s[start..end].parse().unwrap()
}

/// Replaces the JSON string value of `key` in a compact audit line.
pub fn set_string(line: &mut String, key: &str, value: &str) {
    let pat = format!("\"{key}\":\"");
    if let Some(start) = line.find(&pat).map(|i| i + pat.len())
        && let Some(len) = line[start..].find('"')
    {
        line.replace_range(start..start + len, value);
    }
}

/// The string value of `key` in a compact audit line.
pub fn get_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Sample `i` (cyclically) made a new event: auditID unique to (`tag`, `i`), times now.
/// Returns the line and its identity, `auditID/stage`.
pub fn fresh_event(samples: &[String], tag: u32, i: u64) -> (String, String) {
    let mut line = samples[(i as usize) % samples.len()].clone();
    let id = format!("{tag:08x}-0000-4000-8000-{i:012x}");
    set_string(&mut line, "auditID", &id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let t = kube_audit_shipper::timestamp::format_micros(now);
    set_string(&mut line, "requestReceivedTimestamp", &t);
    set_string(&mut line, "stageTimestamp", &t);
    let stage = get_string(&line, "stage").unwrap_or_default().to_string();
    (line, format!("{id}/{stage}"))
}
