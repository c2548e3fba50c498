//! Reading one generation: its line reader, and the hand-off of each line to the pipeline
//! with the time of an event noted now and then (the start of a loss window).

use super::file::Source;
use super::listing::event_time;
use super::{Polled, Position, TailEvent};
use crate::lines::{Item, LineReader};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// An event's time is noted at most once per this many bytes read.
const TIME_SAMPLE_EVERY: u64 = 64 * 1024;

/// The generation being read.
pub struct Reader {
    pub serial: u64,
    pub path: PathBuf,
    pub gz: bool,
    pub lines: LineReader<Source>,
    pub next_sample: u64,
}

impl Reader {
    pub fn consumed(&self) -> u64 {
        self.lines.offset() + self.lines.pending()
    }

    pub fn plain_len(&self) -> Option<u64> {
        self.lines
            .get_ref()
            .plain()?
            .metadata()
            .ok()
            .map(|m| m.len())
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Hands one item of generation `serial` to the pipeline, noting an event time every
/// [`TIME_SAMPLE_EVERY`] bytes. `terminated`: it ended with a newline.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    item: Item<'_>,
    serial: u64,
    path: &Path,
    terminated: bool,
    on: &mut impl FnMut(TailEvent<'_>),
    polled: &mut Polled,
    next_sample: &mut u64,
    times: &mut VecDeque<(u64, u64, i64)>,
) {
    polled.lines += 1;
    match item {
        Item::Line(line) => {
            polled.bytes += line.end - line.offset;
            if line.end > *next_sample
                && let Some(t) = event_time(&line.buf[..line.len])
            {
                times.push_back((serial, line.end, t));
                *next_sample = line.end + TIME_SAMPLE_EVERY;
            }
            on(TailEvent::Line {
                pos: Position {
                    serial,
                    end: line.end,
                },
                offset: line.offset,
                len: line.len,
                buf: line.buf,
                path,
            });
        }
        Item::TooLong { offset, len, .. } => {
            let end = offset + len + u64::from(terminated);
            polled.bytes += end - offset;
            on(TailEvent::TooLong {
                path,
                offset,
                len,
                pos: Position { serial, end },
            });
        }
    }
}
