//! Spool: the durable queue of sealed batches between the reader and the sender
//! (DESIGN.md §2, §6).
//!
//! Invariants owned here:
//! - A segment is in the spool only once it is complete on disk: written to `tmp/`, fsynced,
//!   renamed into the spool directory, directory fsynced ([`Spool::store`]). Only then may the
//!   caller commit the read positions of its lines.
//! - A segment leaves the spool only by [`Spool::ack`] (the intake answered 2xx), by
//!   [`Spool::split`] (its halves are durable before it is removed), by eviction under the
//!   byte cap (bulk only, counted, reported), by quarantine (corrupt, counted, reported), or
//!   into the dead-letter folder `refused/` ([`Spool::dead_letter`], a single event the
//!   intake refuses, counted and reported by the sender; see [`refused`]).
//! - Memory does not grow with the backlog: the queue holds one small record per segment;
//!   the bytes stay on disk, capped by `cap_bytes`. When the cap is reached the oldest bulk
//!   segments are evicted; when only critical data remains, [`Spool::store`] refuses
//!   ([`Stored::Full`]) and the reader must pause: the audit log itself is then the buffer.
//! - Order: critical before bulk, oldest first within each class. A split's halves take the
//!   place of the original.
//!
//! A segment is the exact gzip body POSTed to the intake. Its metadata lives in its name:
//! `<order>-<class c|b>-<earliest event time, unix µs, or "none">-<events>.gz` for a
//! `/plain/batch` body, `…-<events>.array.gz` for an `/array` body, where order is a
//! 20-digit sequence number followed by `a`/`b` per split level. Segments written before
//! `/array` existed all have the first form, so a spool left by an older version is sent
//! as it was written (to `/plain/batch`, with its earliest time in the header) whatever the
//! current `intake_format`. Files are 0600: an `/array` body holds the intake key.

pub mod class;
pub mod refused;

pub use class::{Class, classify};
pub use refused::Refusal;

use crate::batch::{IntakeFormat, Sealed};
use crate::durable;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Orders are sequence numbers below this (2^63): a billion batches a second for 292 years.
const MAX_SEQ: u64 = 1 << 63;

/// One spooled batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Sorts segments of a class in send order.
    pub order: String,
    pub class: Class,
    /// The body's form, so the endpoint to send it to.
    pub format: IntakeFormat,
    pub earliest: Option<i64>,
    pub events: u32,
    pub bytes: u64,
}

impl Segment {
    pub fn file_name(&self) -> String {
        let ts = self
            .earliest
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        let ext = match self.format {
            IntakeFormat::PlainBatch => "gz",
            IntakeFormat::Array => "array.gz",
        };
        format!(
            "{}-{}-{ts}-{}.{ext}",
            self.order,
            self.class.letter(),
            self.events
        )
    }

    /// The segment a file name stands for: only a name that [`Segment::file_name`] gives
    /// back exactly (the spool reads a segment by that name; `002` for `2` would be listed
    /// but never found). The earliest time may be negative (an event stamped before 1970).
    pub fn parse(name: &str, bytes: u64) -> Option<Segment> {
        let stem = name.strip_suffix(".gz")?;
        let (stem, format) = match stem.strip_suffix(".array") {
            Some(s) => (s, IntakeFormat::Array),
            None => (stem, IntakeFormat::PlainBatch),
        };
        let (order, rest) = stem.split_once('-')?;
        let (class, rest) = rest.split_once('-')?;
        let class = match class {
            "c" => Class::Critical,
            "b" => Class::Bulk,
            _ => return None,
        };
        let (earliest, events) = rest.rsplit_once('-')?;
        let earliest = match earliest {
            "none" => None,
            t => Some(t.parse().ok()?),
        };
        let events = events.parse().ok()?;
        let digits = order.get(..20)?;
        let valid = digits.bytes().all(|b| b.is_ascii_digit())
            && order[20..].bytes().all(|b| b == b'a' || b == b'b')
            // Far beyond any count of batches: a stray, which would leave no order for the
            // next segment.
            && digits.parse::<u64>().is_ok_and(|n| n < MAX_SEQ);
        if !valid {
            return None;
        }
        let seg = Segment {
            order: order.to_owned(),
            class,
            format,
            earliest,
            events,
            bytes,
        };
        (seg.file_name() == name).then_some(seg)
    }
}

/// How much of a decompressed body [`Spool::read_with_head`] keeps: the array's opening,
/// the first entry's `{"intake_key":` and a key (intake keys are short tokens).
pub const HEAD: usize = 512;

/// A segment read and checked ([`Spool::read_with_head`]).
pub struct Checked {
    /// The gzip body, as POSTed.
    pub body: Vec<u8>,
    /// The first [`HEAD`] bytes of the decompressed body.
    pub head: Vec<u8>,
}

/// Keeps the first [`HEAD`] bytes written to it, counts the rest away.
struct Head(Vec<u8>);

impl Write for Head {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = HEAD.saturating_sub(self.0.len()).min(buf.len());
        self.0.extend_from_slice(&buf[..room]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How every `/array` entry this crate writes begins.
pub const ENTRY_OPEN: &[u8] = b"{\"intake_key\":";

/// An entry without its opening and key: from just after the key's closing quote.
fn entry_after_key(entry: &[u8]) -> Option<&[u8]> {
    let key = entry.strip_prefix(ENTRY_OPEN)?.strip_prefix(b"\"")?;
    let mut i = 0;
    while i < key.len() {
        match key[i] {
            b'\\' => i += 2,
            b'"' => return Some(&key[i + 1..]),
            _ => i += 1,
        }
    }
    None
}

/// The entries of an `/array` body this crate wrote (`[{"intake_key":…},{…}]`), each
/// without its separator. Each entry starts with `{"intake_key":`, and that text cannot
/// occur elsewhere in the body: inside a JSON string every `"` is escaped, so `{"` only
/// appears where an entry opens. Anything else (not an array of such entries) gives no
/// entry, and the segment is then not split.
fn array_entries(body: &[u8]) -> Vec<&[u8]> {
    const OPEN: &[u8] = ENTRY_OPEN;
    let inner = match body {
        [b'[', inner @ .., b']'] => inner,
        _ => return Vec::new(),
    };
    let starts: Vec<usize> = memchr::memmem::find_iter(inner, OPEN).collect();
    if starts.first() != Some(&0) {
        return Vec::new();
    }
    let mut entries = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        // The next entry's start is preceded by the comma that separates them.
        let end = starts.get(i + 1).map_or(inner.len(), |&next| next - 1);
        entries.push(&inner[start..end]);
    }
    entries
}

/// The segments queued in a spool directory, in send order, read without changing anything
/// (for `kube-audit-shipper spool list`; files that are not segments are left out).
pub fn queued(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // Sent and deleted meanwhile (a listing beside the running service): not waiting.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(seg) = entry
            .file_name()
            .to_str()
            .filter(|_| meta.is_file())
            .and_then(|n| Segment::parse(n, meta.len()))
        {
            found.push(seg);
        }
    }
    found.sort_by(|a, b| (q(a.class), &a.order).cmp(&(q(b.class), &b.order)));
    Ok(found)
}

/// What [`Spool::store`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Written(Segment),
    /// Over the cap with only critical data left (or a batch larger than the cap): nothing
    /// was written; pause reading and retry after segments are acknowledged.
    Full,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub written: u64,
    pub acked: u64,
    pub evicted_segments: u64,
    pub evicted_events: u64,
    pub quarantined: u64,
    /// Segments moved to `refused/` (each a single event).
    pub dead_lettered: u64,
    /// Of those, not kept: the folder was at its cap.
    pub dead_letters_dropped: u64,
}

/// What [`Spool::dead_letter`] did with the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLettered {
    /// Kept in `refused/`.
    Kept,
    /// The folder was at its cap: deleted.
    Dropped,
}

/// A write hook, for tests that inject disk errors (ENOSPC) into segment writes.
pub type WriteFault = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

pub struct Spool {
    dir: PathBuf,
    cap: u64,
    queues: [VecDeque<Segment>; 2],
    bytes: u64,
    /// Bytes in `refused/`, and their cap.
    refused_bytes: u64,
    refused_cap: u64,
    next_seq: u64,
    pub stats: SpoolStats,
    evicted: Vec<Segment>,
    fault: Option<WriteFault>,
}

/// A file already gone is what removing or moving it wanted anyway.
fn gone_is_fine(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn q(class: Class) -> usize {
    match class {
        Class::Critical => 0,
        Class::Bulk => 1,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`: removes unfinished `tmp/` files, quarantines
    /// files that are not segments, and queues the rest in order.
    pub fn open(dir: &Path, cap_bytes: u64) -> io::Result<Spool> {
        for sub in ["", "tmp", "quarantine", refused::DIR] {
            durable::create_dir(&dir.join(sub))?;
        }
        for entry in fs::read_dir(dir.join("tmp"))? {
            fs::remove_file(entry?.path())?;
        }
        let mut spool = Spool {
            dir: dir.to_owned(),
            cap: cap_bytes,
            queues: [VecDeque::new(), VecDeque::new()],
            bytes: 0,
            refused_bytes: refused::bytes(dir)?,
            // A slice of the spool's share: room for dozens of events of 250,000 bytes at
            // the default cap, without letting refusals take the disk meant for the queue.
            refused_cap: cap_bytes / 8,
            next_seq: 0,
            stats: SpoolStats::default(),
            evicted: Vec::new(),
            fault: None,
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name();
            let shown = name.to_string_lossy();
            match name.to_str().and_then(|n| Segment::parse(n, meta.len())) {
                Some(seg) => found.push(seg),
                // A stray file must not stop the service: moved aside if it can be, else
                // left where it is (it is not a segment, so it is never sent).
                None => match fs::rename(entry.path(), dir.join("quarantine").join(&name)) {
                    Ok(()) => {
                        log::error!("spool: {shown} is not a segment; moved to quarantine/");
                        spool.stats.quarantined += 1;
                    }
                    Err(e) => log::error!("spool: {shown} is not a segment; left in place: {e}"),
                },
            }
        }
        found.sort_by(|a, b| a.order.cmp(&b.order));
        for seg in found {
            let seq: u64 = seg.order[..20].parse().unwrap_or(0);
            spool.next_seq = spool.next_seq.max(seq.saturating_add(1));
            spool.bytes += seg.bytes;
            spool.queues[q(seg.class)].push_back(seg);
        }
        durable::sync_dir(dir)?;
        Ok(spool)
    }

    /// Replaces how segment data is written (tests: simulate a full disk).
    #[doc(hidden)]
    pub fn set_write_fault(&mut self, fault: Option<WriteFault>) {
        self.fault = fault;
    }

    /// Stores a sealed batch durably, evicting the oldest bulk segments if the cap needs it.
    /// On an I/O error nothing is stored (no partial segment is left) and the batch is
    /// still the caller's: keep it and retry.
    pub fn store(&mut self, batch: &Sealed) -> io::Result<Stored> {
        let need = batch.gz.len() as u64;
        if need > self.cap {
            return Ok(Stored::Full);
        }
        while self.bytes + need > self.cap && !self.queues[q(Class::Bulk)].is_empty() {
            self.evict_oldest_bulk()?;
        }
        if self.bytes + need > self.cap {
            return Ok(Stored::Full);
        }
        let seg = Segment {
            order: format!("{:020}", self.next_seq),
            class: batch.class,
            format: batch.format,
            earliest: batch.earliest,
            events: batch.events,
            bytes: need,
        };
        self.write_segment(&seg, &batch.gz)?;
        self.next_seq += 1;
        self.insert(seg.clone());
        self.stats.written += 1;
        Ok(Stored::Written(seg))
    }

    fn write_segment(&mut self, seg: &Segment, data: &[u8]) -> io::Result<()> {
        let name = seg.file_name();
        let tmp = self.dir.join("tmp").join(&name);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            match self.fault.as_mut() {
                Some(fault) => fault(data)?,
                None => f.write_all(data)?,
            }
            f.sync_all()?;
            crate::fault::crash_point("spool_segment_synced");
            fs::rename(&tmp, self.dir.join(&name))?;
            durable::sync_dir(&self.dir)?;
            crate::fault::crash_point("spool_segment_stored");
            Ok(())
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            durable::at(&tmp, e)
        })
    }

    fn insert(&mut self, seg: Segment) {
        self.bytes += seg.bytes;
        let queue = &mut self.queues[q(seg.class)];
        let at = queue.partition_point(|s| s.order < seg.order);
        queue.insert(at, seg);
    }

    fn remove_file(&mut self, seg: &Segment) -> io::Result<()> {
        gone_is_fine(fs::remove_file(self.dir.join(seg.file_name())))?;
        self.forget(seg)
    }

    /// After the segment's file was removed or moved: make that durable, drop it from the
    /// queue.
    fn forget(&mut self, seg: &Segment) -> io::Result<()> {
        durable::sync_dir(&self.dir)?;
        // By the whole segment: a stray file may share another's order.
        self.queues[q(seg.class)].retain(|s| s != seg);
        self.bytes -= seg.bytes.min(self.bytes);
        Ok(())
    }

    fn evict_oldest_bulk(&mut self) -> io::Result<()> {
        let Some(seg) = self.queues[q(Class::Bulk)].front().cloned() else {
            return Ok(());
        };
        self.remove_file(&seg)?;
        log::warn!(
            "spool full: evicted bulk segment {} ({} events)",
            seg.file_name(),
            seg.events
        );
        self.stats.evicted_segments += 1;
        self.stats.evicted_events += u64::from(seg.events);
        self.evicted.push(seg);
        Ok(())
    }

    /// The next segment to send: the oldest critical one, else the oldest bulk one.
    pub fn next(&self) -> Option<&Segment> {
        self.queues[0].front().or_else(|| self.queues[1].front())
    }

    /// The first segment in send order that is not in `skip` (the sender's refused ones
    /// waiting for evidence, see [`crate::intake::Judge`]).
    pub fn next_except(&self, skip: &[Segment]) -> Option<&Segment> {
        self.queues.iter().flatten().find(|s| !skip.contains(s))
    }

    /// The `i`-th segment in send order, wrapping around (the sender probes a different one
    /// at each slow retry while every request is refused).
    pub fn nth_wrapping(&self, i: usize) -> Option<&Segment> {
        let n = self.queues[0].len() + self.queues[1].len();
        if n == 0 {
            return None;
        }
        self.queues.iter().flatten().nth(i % n)
    }

    /// Whether the segment is still queued (a held one may have been evicted meanwhile).
    pub fn contains(&self, seg: &Segment) -> bool {
        self.queues[q(seg.class)].contains(seg)
    }

    /// Moves a segment the intake refuses into `refused/` with `why` (see [`refused`]), or
    /// deletes it when the folder is at its cap. Either way it leaves the queue.
    pub fn dead_letter(&mut self, seg: &Segment, why: &Refusal) -> io::Result<DeadLettered> {
        let outcome = if self.refused_bytes + seg.bytes <= self.refused_cap {
            refused::keep(&self.dir, seg, why)?;
            self.refused_bytes += seg.bytes;
            self.forget(seg)?;
            DeadLettered::Kept
        } else {
            self.remove_file(seg)?;
            self.stats.dead_letters_dropped += 1;
            DeadLettered::Dropped
        };
        self.stats.dead_lettered += 1;
        Ok(outcome)
    }

    /// Bytes in `refused/`.
    pub fn refused_bytes(&self) -> u64 {
        self.refused_bytes
    }

    /// The byte cap of `refused/` (an eighth of the spool's cap unless set).
    pub fn refused_cap(&self) -> u64 {
        self.refused_cap
    }

    pub fn set_refused_cap(&mut self, cap: u64) {
        self.refused_cap = cap;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment's body, checked: a gzip stream that decompresses completely with valid
    /// CRCs and lengths. `Err(reason)` means corrupt (then [`Spool::quarantine`] it).
    pub fn read(&self, seg: &Segment) -> io::Result<Result<Vec<u8>, String>> {
        Ok(self.read_with_head(seg)?.map(|c| c.body))
    }

    /// As [`Spool::read`], with the first [`HEAD`] bytes of the decompressed body (an
    /// `/array` body's first entry opens with the key it was written with).
    pub fn read_with_head(&self, seg: &Segment) -> io::Result<Result<Checked, String>> {
        let body = fs::read(self.dir.join(seg.file_name()))?;
        let mut head = Head(Vec::new());
        let check = io::copy(&mut MultiGzDecoder::new(&body[..]), &mut head);
        Ok(match check {
            Ok(_) if !body.is_empty() => Ok(Checked { body, head: head.0 }),
            Ok(_) => Err("empty".to_string()),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Rewrites an `/array` segment so that every entry carries `key_json` (the key as a
    /// JSON string), in place and durably (written to `tmp/`, renamed over the old file).
    /// The key is written into the body when the batch is made; when the operator replaces
    /// a refused key, what was spooled under the old one must go with the new one, or it
    /// would be refused forever. Returns the segment as it now is (its size changed).
    pub fn rekey(&mut self, seg: &Segment, key_json: &[u8], level: u32) -> io::Result<Segment> {
        let mut text = Vec::new();
        MultiGzDecoder::new(&fs::read(self.dir.join(seg.file_name()))?[..])
            .read_to_end(&mut text)?;
        let entries = array_entries(&text);
        if seg.format != IntakeFormat::Array || entries.len() != seg.events as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not an /array body of {} entries",
                    seg.file_name(),
                    seg.events
                ),
            ));
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(level));
        gz.write_all(b"[")?;
        for (i, entry) in entries.iter().enumerate() {
            let rest = entry_after_key(entry).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "an entry without its key")
            })?;
            if i > 0 {
                gz.write_all(b",")?;
            }
            gz.write_all(ENTRY_OPEN)?;
            gz.write_all(key_json)?;
            gz.write_all(rest)?;
        }
        gz.write_all(b"]")?;
        let body = gz.finish()?;
        let new = Segment {
            bytes: body.len() as u64,
            ..seg.clone()
        };
        // Same name: the rename replaces the old file atomically.
        self.write_segment(&new, &body)?;
        self.forget(seg)?;
        self.insert(new.clone());
        Ok(new)
    }

    /// The intake accepted the segment: delete it.
    pub fn ack(&mut self, seg: &Segment) -> io::Result<()> {
        self.remove_file(seg)?;
        self.stats.acked += 1;
        Ok(())
    }

    /// Moves a corrupt segment out of the queue, into `quarantine/`, for inspection.
    pub fn quarantine(&mut self, seg: &Segment, reason: &str) -> io::Result<()> {
        let name = seg.file_name();
        log::error!("spool: segment {name} is corrupt ({reason}); moved to quarantine/");
        let quarantined = self.dir.join("quarantine").join(&name);
        gone_is_fine(fs::rename(self.dir.join(&name), quarantined))?;
        self.forget(seg)?;
        self.stats.quarantined += 1;
        Ok(())
    }

    /// Replaces a segment by two, each with half of its events, in its place in the order
    /// (the intake refused the request as too large). The halves are durable before the
    /// original is removed. `Ok(None)`: it holds a single event and cannot be split.
    pub fn split(&mut self, seg: &Segment, level: u32) -> io::Result<Option<(Segment, Segment)>> {
        let mut text = Vec::new();
        MultiGzDecoder::new(&fs::read(self.dir.join(seg.file_name()))?[..])
            .read_to_end(&mut text)?;
        let items = match seg.format {
            IntakeFormat::PlainBatch => text.split(|&b| b == b'\n').collect(),
            IntakeFormat::Array => array_entries(&text),
        };
        if items.len() < 2 {
            return Ok(None);
        }
        let (first, second) = items.split_at(items.len() / 2);
        let mut halves = Vec::new();
        for (suffix, part) in [("a", first), ("b", second)] {
            let mut gz = GzEncoder::new(Vec::new(), Compression::new(level));
            match seg.format {
                IntakeFormat::PlainBatch => gz.write_all(&part.join(&b"\n"[..]))?,
                IntakeFormat::Array => {
                    gz.write_all(b"[")?;
                    gz.write_all(&part.join(&b","[..]))?;
                    gz.write_all(b"]")?;
                }
            }
            let body = gz.finish()?;
            let half = Segment {
                order: format!("{}{suffix}", seg.order),
                class: seg.class,
                format: seg.format,
                earliest: seg.earliest,
                events: part.len() as u32,
                bytes: body.len() as u64,
            };
            self.write_segment(&half, &body)?;
            halves.push(half);
        }
        self.remove_file(seg)?;
        let (b, a) = (halves.pop(), halves.pop());
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(None);
        };
        self.insert(a.clone());
        self.insert(b.clone());
        Ok(Some((a, b)))
    }

    /// Segments evicted since the last call (for gap records).
    pub fn take_evicted(&mut self) -> Vec<Segment> {
        std::mem::take(&mut self.evicted)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn segments(&self, class: Class) -> usize {
        self.queues[q(class)].len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }
}
