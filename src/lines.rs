//! Splits a byte stream into lines for the parser, in bounded memory.
//!
//! Invariants owned here:
//! - Every yielded line is followed, in the same buffer, by at least [`INPUT_PADDING`] bytes,
//!   so simd-json parses it in place without copying it first.
//! - Memory is bounded by the maximum line size: a longer line is not buffered; it is reported
//!   once ([`Item::TooLong`], with its offset and full length) and skipped up to its newline,
//!   after which the stream is back in step.
//! - Offsets are absolute byte positions in the stream, so a caller can commit "everything up
//!   to `end`" as a checkpoint.
//! - A final line without a newline is yielded only at end of input ([`Line::terminated`] is
//!   then `false`). In *follow* mode (a file being written) end of input is only "nothing
//!   more yet": the partial line stays buffered until its newline arrives, or until the
//!   caller gives up on the file and takes it with [`LineReader::take_partial`].

use simd_json::INPUT_PADDING;
use std::io::{self, Read};

/// Default maximum line: the longest audit event expected from an API server (DESIGN.md §3).
pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;

const INITIAL_CAPACITY: usize = 64 * 1024;

/// Reads lines from `R`.
pub struct LineReader<R> {
    src: R,
    /// `buf[start..end]` is unconsumed data; `buf.len() >= end + INPUT_PADDING` always.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the newline search resumes (`start..scan` holds none).
    scan: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    line_no: u64,
    max_line: usize,
    eof: bool,
    follow: bool,
    /// Inside an over-long line: (its start offset, bytes skipped so far).
    skipping: Option<(u64, u64)>,
}

/// One item of the stream.
#[derive(Debug)]
pub enum Item<'a> {
    Line(Line<'a>),
    /// A line longer than the maximum, skipped. `len` excludes the newline.
    TooLong {
        line_no: u64,
        offset: u64,
        len: u64,
    },
}

/// A line, without its `\n` (and without a `\r` before it).
#[derive(Debug)]
pub struct Line<'a> {
    /// `buf[..len]` is the line; `buf[len..]` is padding the parser may read but not the line.
    pub buf: &'a mut [u8],
    pub len: usize,
    /// 1-based line number.
    pub line_no: u64,
    /// Stream offset of the line's first byte.
    pub offset: u64,
    /// Stream offset just past the line's newline (or its last byte at end of input).
    pub end: u64,
    /// Whether the line ended with a newline.
    pub terminated: bool,
}

impl<'a> Line<'a> {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<R: Read> LineReader<R> {
    pub fn new(src: R) -> Self {
        Self::with_max_line(src, DEFAULT_MAX_LINE)
    }

    /// `max_line` is the longest line (without newline) that is yielded.
    pub fn with_max_line(src: R, max_line: usize) -> Self {
        LineReader {
            src,
            buf: vec![0; INITIAL_CAPACITY.min(max_line + 1) + INPUT_PADDING],
            start: 0,
            end: 0,
            scan: 0,
            offset: 0,
            line_no: 0,
            max_line: max_line.max(1),
            eof: false,
            follow: false,
            skipping: None,
        }
    }

    /// Follow mode: end of input means "nothing more yet" (see the module docs).
    pub fn following(mut self) -> Self {
        self.follow = true;
        self
    }

    /// In follow mode, the buffered partial line (or the end of an over-long one), for
    /// when the file is left for good. `None` when nothing is pending.
    pub fn take_partial(&mut self) -> Option<Item<'_>> {
        self.finish()
    }

    /// The source being read.
    pub fn get_ref(&self) -> &R {
        &self.src
    }

    /// Bytes read but not yet yielded (a partial line).
    pub fn pending(&self) -> u64 {
        (self.end - self.start) as u64 + self.skipping.map_or(0, |(_, n)| n)
    }

    /// Starts counting offsets at `offset` (the stream was already positioned there).
    pub fn starting_at(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Reads from `src` from now on, starting over at offset 0 and line 1 (the buffer is
    /// kept, so a reader can be reused without allocating).
    pub fn reset(&mut self, src: R) {
        self.src = src;
        self.start = 0;
        self.end = 0;
        self.scan = 0;
        self.offset = 0;
        self.line_no = 0;
        self.eof = false;
        self.skipping = None;
    }

    /// Stream offset of the first byte not yet yielded.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next line, `None` at end of input. I/O errors other than `Interrupted` are
    /// returned as they are; the reader can be called again after them.
    pub fn next_item(&mut self) -> io::Result<Option<Item<'_>>> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[self.scan..self.end]) {
                let nl = self.scan + pos;
                let line_start = self.start;
                let consumed = (nl + 1 - line_start) as u64;
                let line_offset = self.offset;
                self.start = nl + 1;
                self.scan = self.start;
                self.offset += consumed;
                self.line_no += 1;
                if let Some((offset, skipped)) = self.skipping.take() {
                    return Ok(Some(Item::TooLong {
                        line_no: self.line_no,
                        offset,
                        len: skipped + (nl - line_start) as u64,
                    }));
                }
                let mut len = nl - line_start;
                if len > 0 && self.buf[line_start + len - 1] == b'\r' {
                    len -= 1;
                }
                return Ok(Some(Item::Line(Line {
                    buf: &mut self.buf[line_start..],
                    len,
                    line_no: self.line_no,
                    offset: line_offset,
                    end: self.offset,
                    terminated: true,
                })));
            }
            self.scan = self.end;

            if self.eof {
                if self.follow {
                    self.eof = false;
                    return Ok(None);
                }
                return Ok(self.finish());
            }
            let pending = self.end - self.start;
            if self.skipping.is_some() || pending > self.max_line {
                // Over-long: drop what is buffered, remember only how much.
                let (_, skipped) = self.skipping.get_or_insert((self.offset, 0));
                *skipped += pending as u64;
                self.offset += pending as u64;
                self.start = 0;
                self.end = 0;
                self.scan = 0;
            }
            self.make_room();
            let n = loop {
                let space = self.buf.len() - INPUT_PADDING;
                match self.src.read(&mut self.buf[self.end..space]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            // Bytes past `end` may hold an old line: harmless padding for the parser.
            self.end += n;
        }
    }

    /// At end of input: the unterminated last line, or the end of an over-long one.
    fn finish(&mut self) -> Option<Item<'_>> {
        let pending = self.end - self.start;
        if let Some((offset, skipped)) = self.skipping.take() {
            self.line_no += 1;
            self.offset += pending as u64;
            self.start = self.end;
            return Some(Item::TooLong {
                line_no: self.line_no,
                offset,
                len: skipped + pending as u64,
            });
        }
        if pending == 0 {
            return None;
        }
        let line_start = self.start;
        let line_offset = self.offset;
        self.line_no += 1;
        self.offset += pending as u64;
        self.start = self.end;
        self.scan = self.end;
        if pending > self.max_line {
            return Some(Item::TooLong {
                line_no: self.line_no,
                offset: line_offset,
                len: pending as u64,
            });
        }
        Some(Item::Line(Line {
            buf: &mut self.buf[line_start..],
            len: pending,
            line_no: self.line_no,
            offset: line_offset,
            end: self.offset,
            terminated: false,
        }))
    }

    /// Ensures free space after `end` for the next read: moves pending data to the front,
    /// and grows the buffer (up to one maximum line) when pending data fills it.
    fn make_room(&mut self) {
        let capacity = self.buf.len() - INPUT_PADDING;
        if self.end < capacity {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.scan -= self.start;
            self.end -= self.start;
            self.start = 0;
            if self.end < capacity {
                return;
            }
        }
        // Full of one partial line: grow, but never past what one line may need.
        let limit = self.max_line + 1;
        let new_capacity = (capacity * 2).min(limit).max(capacity + 1);
        self.buf.resize(new_capacity + INPUT_PADDING, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], max_line: usize, chunk: usize) -> Vec<String> {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = LineReader::with_max_line(Chunked(input, chunk), max_line);
        let mut got = Vec::new();
        while let Some(item) = r.next_item().unwrap() {
            got.push(match item {
                Item::Line(l) => {
                    assert!(
                        l.buf.len() >= l.len + INPUT_PADDING,
                        "padding after every line"
                    );
                    format!(
                        "{}@{}..{}{}",
                        String::from_utf8_lossy(l.bytes()),
                        l.offset,
                        l.end,
                        if l.terminated { "" } else { "(eof)" }
                    )
                }
                Item::TooLong {
                    line_no,
                    offset,
                    len,
                } => format!("TooLong#{line_no}@{offset}+{len}"),
            });
        }
        assert_eq!(r.offset(), input.len() as u64, "every byte accounted for");
        got
    }

    #[test]
    fn splits_lines_with_offsets_in_any_chunking() {
        let input = b"a\r\nbc\n\nlast";
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                collect(input, 100, chunk),
                ["a@0..3", "bc@3..6", "@6..7", "last@7..11(eof)"],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn over_long_lines_are_reported_and_skipped_in_bounded_memory() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(b"\nfine\n");
        input.extend(std::iter::repeat_n(b'y', 50));
        for chunk in [1, 16, 4096] {
            assert_eq!(
                collect(&input, 40, chunk),
                [
                    "ok@0..3",
                    "TooLong#2@3+1000",
                    "fine@1004..1009",
                    "TooLong#4@1009+50"
                ],
                "chunk {chunk}"
            );
        }
        let mut r = LineReader::with_max_line(&input[..], 40);
        while r.next_item().unwrap().is_some() {}
        assert!(r.buf.len() <= 41 + INPUT_PADDING + INITIAL_CAPACITY.min(41));
    }

    #[test]
    fn follow_mode_holds_a_partial_line_until_its_newline() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("kas-follow-{}", std::process::id()));
        let mut writer = std::fs::File::create(&path).unwrap();
        let mut r = LineReader::new(std::fs::File::open(&path).unwrap()).following();
        let next = |r: &mut LineReader<std::fs::File>| match r.next_item().unwrap() {
            Some(Item::Line(l)) => Some(String::from_utf8_lossy(l.bytes()).into_owned()),
            None => None,
            other => panic!("{other:?}"),
        };
        writer.write_all(b"one\ntw").unwrap();
        assert_eq!(next(&mut r).as_deref(), Some("one"));
        assert_eq!(next(&mut r), None, "partial line held back");
        assert_eq!((r.offset(), r.pending()), (4, 2));
        writer.write_all(b"o\nthr").unwrap();
        assert_eq!(next(&mut r).as_deref(), Some("two"));
        assert_eq!(next(&mut r), None);
        match r.take_partial() {
            Some(Item::Line(l)) => {
                assert_eq!(
                    (l.bytes(), l.terminated, l.offset, l.end),
                    (&b"thr"[..], false, 8, 11)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(r.take_partial().is_none());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_line_exactly_at_the_maximum_is_kept() {
        let line = "z".repeat(40);
        let input = format!("{line}\n{line}");
        for chunk in [1, 5, 64] {
            assert_eq!(
                collect(input.as_bytes(), 40, chunk),
                [format!("{line}@0..41"), format!("{line}@41..81(eof)")]
            );
        }
    }
}
