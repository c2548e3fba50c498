//! What the tailer hands to the pipeline: lines with their positions, and losses.

use std::path::{Path, PathBuf};

/// A line's place: its generation (a serial valid for this run) and the offset just past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub serial: u64,
    pub end: u64,
}

/// What the tailer hands to the pipeline.
#[derive(Debug)]
pub enum TailEvent<'a> {
    /// One line without its newline: `buf[..len]`, followed in `buf` by parser padding.
    Line {
        buf: &'a mut [u8],
        len: usize,
        path: &'a Path,
        offset: u64,
        pos: Position,
    },
    /// A line longer than `max_line`, skipped (its bytes were not kept).
    TooLong {
        path: &'a Path,
        offset: u64,
        len: u64,
        pos: Position,
    },
    /// Bytes that will never be read.
    Gap(Gap),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The generation the loss happened to (a backup's last name, or the live name).
    pub path: PathBuf,
    /// Where in it the loss starts (its uncompressed content).
    pub offset: u64,
    /// Unread bytes of it lost from there (a lower bound when `exact` is false).
    pub bytes: u64,
    pub exact: bool,
    pub reason: GapReason,
    /// When other generations may have been lost with it (pruned while the shipper was
    /// down): every event of this log whose `requestReceivedTimestamp` lies in
    /// `lost_from..=lost_until` (unix µs) and did not arrive is covered by this record.
    /// `lost_from` is `None` when the time of the last committed event is unknown.
    pub lost_from: Option<i64>,
    pub lost_until: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The generation was deleted (pruned) before it was read to its end.
    Deleted,
    /// The file was truncated in place (copytruncate) past what had been read.
    Truncated,
    /// Reading failed.
    Unreadable(String),
    /// This many generations were created under the followed name, rotated and deleted
    /// without ever being seen (the reader fell behind by more than the backups kept):
    /// their size is unknown. Detected by counting inotify's creations of the name.
    Unseen { files: u64 },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match &self.reason {
            GapReason::Deleted => "deleted before it was read to its end".to_string(),
            GapReason::Truncated => "truncated in place".to_string(),
            GapReason::Unreadable(e) => format!("unreadable: {e}"),
            GapReason::Unseen { files } => format!(
                "{files} file(s) created, rotated and deleted before they could be opened \
                 (the reader fell behind by more than the backups kept); size unknown"
            ),
        };
        let bound = if self.exact { "" } else { "at least " };
        write!(
            f,
            "{}: {why}; {bound}{} bytes lost",
            self.path.display(),
            self.bytes
        )?;
        if let Some(until) = self.lost_until {
            let from = self.lost_from.map_or(
                "an unknown time".to_string(),
                crate::timestamp::format_micros,
            );
            write!(
                f,
                "; with any other events of this log from {from} to {}",
                crate::timestamp::format_micros(until)
            )?;
        }
        Ok(())
    }
}

/// What one [`Tailer::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub lines: u64,
    pub bytes: u64,
    /// The read budget ran out with data left: poll again before waiting.
    pub more: bool,
}
