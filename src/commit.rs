//! Commit points: how far into each file the tailer may record progress (DESIGN.md §2.1).
//!
//! **Invariant.** A file's committed position never passes the start of a line that is not
//! durable yet. A line is durable when its batch is in the spool (fsynced, renamed), or when it
//! needs nothing downstream (ignored by a rule). Lines of one file go into two batches
//! (critical and bulk) that seal and are stored at different times, and sealed batches may wait
//! for the spool (full of critical data, disk errors), so "the last line read" is not a commit
//! point: the point is the *start* of the file's oldest line still in an open batch or in a
//! sealed batch not stored yet; with none, the end of the last line read.
//!
//! A restart resumes each file at its committed position, so the invariant is what makes a
//! crash lose nothing: every line after the point is read again (a duplicate at worst), and
//! every line before it is in the spool or was ignored.
//!
//! Files are named by the tailer's serial ([`Position::serial`]); offsets are byte offsets in
//! the file's content.

use crate::tail::Position;

/// Per file (serial): one offset.
type Marks = Vec<(u64, u64)>;

/// Each file's first line in one batch: travels with the batch from sealing to storing.
#[derive(Debug, Default)]
pub struct BatchMarks(Marks);

/// The bookkeeping of one pipeline: the open batches' marks and how far each file was read.
#[derive(Debug, Default)]
pub struct Commits {
    /// Per open batch (by slot): each file's first line in it.
    open: [Marks; 2],
    /// Per file: the end of its last line read, until the file is fully committed.
    read_upto: Marks,
}

/// Keeps the smallest offset per file.
fn keep_first(marks: &mut Marks, serial: u64, offset: u64) {
    match marks.iter_mut().find(|(s, _)| *s == serial) {
        Some(m) => m.1 = m.1.min(offset),
        None => marks.push((serial, offset)),
    }
}

/// Keeps the largest offset per file.
fn keep_last(marks: &mut Marks, serial: u64, end: u64) {
    match marks.iter_mut().find(|(s, _)| *s == serial) {
        Some(m) => m.1 = m.1.max(end),
        None => marks.push((serial, end)),
    }
}

impl Commits {
    /// The line `start..end` of file `serial` went into the open batch of `slot`.
    pub fn batched(&mut self, slot: usize, serial: u64, start: u64, end: u64) {
        keep_first(&mut self.open[slot], serial, start);
        keep_last(&mut self.read_upto, serial, end);
    }

    /// The line ending at `end` needs nothing downstream (ignored by a rule): it is durable
    /// as soon as every line before it is.
    pub fn settled(&mut self, serial: u64, end: u64) {
        keep_last(&mut self.read_upto, serial, end);
    }

    /// The open batch of `slot` was sealed: its marks go with it until the spool has it.
    pub fn seal(&mut self, slot: usize) -> BatchMarks {
        BatchMarks(std::mem::take(&mut self.open[slot]))
    }

    /// Where each file read since the last call may be committed now, given the sealed
    /// batches the spool has not taken yet. A file with nothing waiting is fully committed
    /// by the point returned and forgotten until its next line.
    pub fn points<'a>(&mut self, waiting: impl Iterator<Item = &'a BatchMarks>) -> Vec<Position> {
        let mut first: Marks = Vec::new();
        let sealed = waiting.flat_map(|b| b.0.iter());
        for &(serial, start) in self.open.iter().flatten().chain(sealed) {
            keep_first(&mut first, serial, start);
        }
        let points = self
            .read_upto
            .iter()
            .map(|&(serial, end)| Position {
                serial,
                end: first
                    .iter()
                    .find(|(s, _)| *s == serial)
                    .map_or(end, |f| f.1),
            })
            .collect();
        self.read_upto
            .retain(|(serial, _)| first.iter().any(|(s, _)| s == serial));
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn pos(serial: u64, end: u64) -> Position {
        Position { serial, end }
    }

    #[test]
    fn a_line_in_an_open_batch_holds_its_file_back_at_its_start() {
        let mut c = Commits::default();
        c.batched(1, 7, 0, 100); // bulk
        c.batched(0, 7, 100, 250); // critical
        c.settled(7, 300); // ignored by a rule
        assert_eq!(c.points(std::iter::empty()), vec![pos(7, 0)]);
        // The bulk batch is sealed and waits for the spool: still held at 0.
        let bulk = c.seal(1);
        assert_eq!(c.points([&bulk].into_iter()), vec![pos(7, 0)]);
        // Stored: the critical line (100..250) holds the file now.
        assert_eq!(c.points(std::iter::empty()), vec![pos(7, 100)]);
        let critical = c.seal(0);
        drop(critical); // stored at once
        assert_eq!(c.points(std::iter::empty()), vec![pos(7, 300)]);
        // Fully committed: nothing more to say about the file.
        assert_eq!(c.points(std::iter::empty()), vec![]);
    }

    #[test]
    fn files_are_held_back_independently() {
        let mut c = Commits::default();
        c.batched(1, 1, 500, 600);
        c.settled(2, 40);
        let mut points = c.points(std::iter::empty());
        points.sort_by_key(|p| p.serial);
        assert_eq!(points, vec![pos(1, 500), pos(2, 40)]);
    }

    /// A small deterministic generator (the crate has no test-only RNG dependency).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// What the pipeline does, in random order: lines of three files go to either batch or
    /// are ignored, batches seal, sealed batches are stored in order or wait. After every
    /// step the points returned must never pass the start of a line that is not durable, and
    /// once everything is durable every file must be committed to its end.
    #[test]
    fn model_no_point_passes_a_line_that_is_not_durable() {
        for seed in 1..=2_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut c = Commits::default();
            // The model: per line (file, start, end, durable?), in read order; the lines of
            // each open batch and of each sealed batch waiting for the spool.
            let mut lines: Vec<(u64, u64, u64, bool)> = Vec::new();
            let mut open: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
            let mut waiting: VecDeque<(BatchMarks, Vec<usize>)> = VecDeque::new();
            let mut read = [0u64; 3];
            let mut committed = [0u64; 3];
            for _ in 0..rng.below(60) + 1 {
                match rng.below(10) {
                    0..6 => {
                        let file = rng.below(3);
                        let (start, end) =
                            (read[file as usize], read[file as usize] + 1 + rng.below(50));
                        read[file as usize] = end;
                        let slot = rng.below(3) as usize;
                        if slot == 2 {
                            c.settled(file, end);
                            lines.push((file, start, end, true));
                        } else {
                            c.batched(slot, file, start, end);
                            open[slot].push(lines.len());
                            lines.push((file, start, end, false));
                        }
                    }
                    6 | 7 => {
                        let slot = rng.below(2) as usize;
                        let marks = c.seal(slot);
                        waiting.push_back((marks, std::mem::take(&mut open[slot])));
                    }
                    _ => {
                        if let Some((_, members)) = waiting.pop_front() {
                            for i in members {
                                lines[i].3 = true;
                            }
                        }
                    }
                }
                for p in c.points(waiting.iter().map(|(m, _)| m)) {
                    let f = p.serial as usize;
                    assert!(p.end >= committed[f], "seed {seed}: a point went backwards");
                    committed[f] = p.end;
                }
                for &(file, start, _, durable) in &lines {
                    assert!(
                        durable || committed[file as usize] <= start,
                        "seed {seed}: file {file} committed to {} past a line at {start} that \
                         is not durable",
                        committed[file as usize]
                    );
                }
            }
            // Everything sealed and stored: every file is committed to its end.
            for (slot, members) in open.iter_mut().enumerate() {
                waiting.push_back((c.seal(slot), std::mem::take(members)));
            }
            waiting.clear();
            for p in c.points(std::iter::empty()) {
                committed[p.serial as usize] = p.end;
            }
            assert_eq!(committed, read, "seed {seed}");
        }
    }
}
