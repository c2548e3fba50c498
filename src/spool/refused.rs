//! The dead-letter folder of a spool: `<spool>/refused/` (DESIGN.md §7).
//!
//! A segment lands here only when it holds a **single event** that the intake refused with a
//! permanent status (a 4xx other than the key's, 413 and 429, or a 3xx) twice, with other
//! segments accepted in between (the decision is [`crate::intake::Judge`]'s): that event is
//! what the intake does not want, and keeping it at the head of the queue would stall
//! everything behind it. It is kept on disk, not sent, counted and reported in-band, until an
//! operator runs `kube-audit-shipper spool resend` (moved back into the queue) or `spool drop`.
//!
//! Each segment `<name>` comes with a note `<name>.why`: its first line is the HTTP status,
//! the rest the first [`ANSWER_BYTES`] of the intake's answer (the intake key, should the
//! answer echo it, is replaced by `<intake key>`). The folder is capped in bytes
//! ([`Spool::refused_cap`]): past the cap the event is not kept (counted and reported as such).
//!
//! [`Spool::refused_cap`]: super::Spool::refused_cap

use super::Segment;
use crate::durable;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The folder's name inside a spool.
pub const DIR: &str = "refused";

/// How much of the intake's answer is kept and reported.
pub const ANSWER_BYTES: usize = 200;

/// Suffix of a dead-lettered segment's note.
const NOTE: &str = ".why";

/// Why the intake refused a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The first [`ANSWER_BYTES`] of the answer, on one line, without the key.
    pub answer: String,
}

impl Refusal {
    /// The refusal of an answer `body` with `status`; `key` is blanked out of the text.
    pub fn new(status: u16, body: &[u8], key: &str) -> Refusal {
        // The key is blanked out before the cut, so that no part of it survives the cut.
        let mut text = String::from_utf8_lossy(body).into_owned();
        if !key.is_empty() {
            text = text.replace(key, "<intake key>");
        }
        let mut end = text.len().min(ANSWER_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let answer = text[..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Refusal { status, answer }
    }

    fn note(&self) -> String {
        format!("{}\n{}\n", self.status, self.answer)
    }

    fn parse(text: &str) -> Option<Refusal> {
        let (status, rest) = text.split_once('\n')?;
        Some(Refusal {
            status: status.trim().parse().ok()?,
            answer: rest.trim_end_matches('\n').to_string(),
        })
    }
}

/// A dead-lettered segment, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub segment: Segment,
    /// `None` when its note is missing or unreadable.
    pub why: Option<Refusal>,
}

pub fn dir(spool: &Path) -> PathBuf {
    spool.join(DIR)
}

/// Writes the note (durably), then moves the segment's file into the folder. A crash between
/// the two leaves a note without a segment (ignored) or, before the note, the segment still
/// queued: never a segment lost.
pub(super) fn keep(spool: &Path, seg: &Segment, why: &Refusal) -> io::Result<()> {
    let name = seg.file_name();
    let folder = dir(spool);
    durable::replace(&folder, &format!("{name}{NOTE}"), why.note().as_bytes())?;
    fs::rename(spool.join(&name), folder.join(&name))?;
    durable::sync_dir(&folder)
}

/// Bytes of the segments in the folder (notes aside).
pub fn bytes(spool: &Path) -> io::Result<u64> {
    Ok(list(spool)?.iter().map(|r| r.segment.bytes).sum())
}

/// The dead-lettered segments of a spool, oldest first; nothing when there is no folder.
pub fn list(spool: &Path) -> io::Result<Vec<Refused>> {
    let folder = dir(spool);
    let entries = match fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(segment) = meta
            .is_file()
            .then(|| Segment::parse(name, meta.len()))
            .flatten()
        else {
            continue;
        };
        let why = fs::read_to_string(folder.join(format!("{name}{NOTE}")))
            .ok()
            .and_then(|t| Refusal::parse(&t));
        out.push(Refused { segment, why });
    }
    out.sort_by(|a, b| a.segment.order.cmp(&b.segment.order));
    Ok(out)
}

/// Moves a dead-lettered segment back into the queue (its name keeps its place in the order)
/// and removes its note. Only while no service uses the spool (the caller holds the lock).
pub fn resend(spool: &Path, seg: &Segment) -> io::Result<()> {
    let name = seg.file_name();
    let folder = dir(spool);
    fs::rename(folder.join(&name), spool.join(&name))?;
    durable::sync_dir(spool)?;
    remove_note(&folder, &name)
}

/// Deletes a dead-lettered segment and its note.
pub fn drop(spool: &Path, seg: &Segment) -> io::Result<()> {
    let name = seg.file_name();
    let folder = dir(spool);
    fs::remove_file(folder.join(&name))?;
    remove_note(&folder, &name)
}

fn remove_note(folder: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(folder.join(format!("{name}{NOTE}"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    durable::sync_dir(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_200_bytes_on_one_line_without_the_key() {
        let body = format!("<html>\nbad key-123 here{}</html>", "x".repeat(400));
        let r = Refusal::new(404, body.as_bytes(), "key-123");
        assert!(r.answer.starts_with("<html> bad <intake key> here"));
        assert!(!r.answer.contains('\n'));
        assert!(r.answer.len() <= ANSWER_BYTES);
        assert_eq!(Refusal::parse(&r.note()), Some(r));
        assert_eq!(Refusal::parse("nope"), None);
    }
}
