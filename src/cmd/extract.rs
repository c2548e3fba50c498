//! `kube-audit-shipper extract`: audit-log lines in, one output line per event out.
//!
//! A filter for pipelines and for looking at what would be shipped. Bad lines are reported on
//! stderr with file and line number and skipped (or, with `--strict`, end the run), so the
//! output always holds exactly the input's events, in order. Every run ends with a summary
//! line on stderr; the caller turns a run that skipped anything into exit status 1.

use crate::extract::{ExtractError, Extractor, Format};
use crate::lines::{Item, LineReader};
use flate2::read::MultiGzDecoder;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};

pub struct Options {
    pub format: Format,
    pub strict: bool,
    pub max_line: usize,
    /// Input files; `-` or none means stdin.
    pub files: Vec<String>,
}

/// Why a line was skipped: one count each in the [`Summary`]. Declared in the order of
/// [`Skip::ALL`]: the discriminant indexes the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    NotJson,
    Truncated,
    NotUtf8,
    NotAnObject,
    TooDeep,
    TooLong,
}

impl Skip {
    /// In the order the summary lists them.
    const ALL: [Skip; 6] = [
        Skip::NotJson,
        Skip::Truncated,
        Skip::NotUtf8,
        Skip::NotAnObject,
        Skip::TooDeep,
        Skip::TooLong,
    ];

    fn of(e: &ExtractError) -> Skip {
        match e {
            ExtractError::InvalidUtf8 => Skip::NotUtf8,
            ExtractError::TooDeep => Skip::TooDeep,
            ExtractError::NotAnObject(_) => Skip::NotAnObject,
            ExtractError::Truncated(_) => Skip::Truncated,
            ExtractError::OpenStringOrControl | ExtractError::Invalid { .. } => Skip::NotJson,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Skip::NotJson => "not JSON",
            Skip::Truncated => "cut short",
            Skip::NotUtf8 => "not UTF-8",
            Skip::NotAnObject => "not a JSON object",
            Skip::TooDeep => "nested too deep",
            Skip::TooLong => "too long",
        }
    }
}

/// Counts of one run; its `Display` is the closing summary line.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    /// Events written trimmed to the per-event limit (counted in `events` too).
    pub trimmed: u64,
    /// Lines skipped, by [`Skip`] (indexed in the order of [`Skip::ALL`]).
    skipped: [u64; Skip::ALL.len()],
    /// Inputs whose gzip data broke off (what came before was read).
    pub corrupt_inputs: u64,
    /// `--strict` ended the run at a bad line or a corrupt input.
    pub stopped: bool,
}

impl Summary {
    /// Lines skipped for `why`.
    pub fn skipped_for(&self, why: Skip) -> u64 {
        self.skipped[why as usize]
    }

    /// Lines skipped for any reason.
    pub fn skipped(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Whether every line of every input was an event (exit status 0).
    pub fn clean(&self) -> bool {
        self.skipped() == 0 && self.corrupt_inputs == 0 && !self.stopped
    }
}

/// `n` and the noun, singular or plural.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Summary {
    /// `extract: 1495 events written; 3 lines skipped (2 not JSON, 1 too long)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "extract: {} written",
            count(self.events, "event", "events")
        )?;
        if self.trimmed > 0 {
            write!(f, " ({} trimmed to the size limit)", self.trimmed)?;
        }
        match self.skipped() {
            0 => f.write_str("; no lines skipped")?,
            n => {
                write!(f, "; {} skipped (", count(n, "line", "lines"))?;
                let reasons = Skip::ALL
                    .iter()
                    .filter(|&&why| self.skipped_for(why) > 0)
                    .map(|&why| format!("{} {}", self.skipped_for(why), why.label()));
                f.write_str(&reasons.collect::<Vec<_>>().join(", "))?;
                f.write_str(")")?;
            }
        }
        if self.corrupt_inputs > 0 {
            let inputs = count(self.corrupt_inputs, "input", "inputs");
            write!(
                f,
                "; {inputs} with corrupt gzip data, read up to the damage"
            )?;
        }
        if self.stopped {
            f.write_str("; stopped there (--strict)")?;
        }
        Ok(())
    }
}

/// What ended a run early, apart from `--strict` (see [`Summary::stopped`]).
#[derive(Debug)]
pub enum Failure {
    /// An input could not be opened.
    Open { name: String, error: io::Error },
    /// An input could not be read (other than corrupt gzip data, which is counted).
    Read { name: String, error: io::Error },
    /// Writing the output failed (a closed pipe among others).
    Output(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Open { name, error } => write!(f, "{name}: {error}"),
            Failure::Read { name, error } => write!(f, "{name}: reading: {error}"),
            Failure::Output(error) => write!(f, "writing output: {error}"),
        }
    }
}

/// Output is flushed in blocks of about this size.
const FLUSH_AT: usize = 256 * 1024;

/// Bad lines listed one by one in a row from one input before the rest of that input's are
/// only counted: a binary file given by mistake must not bury the terminal.
const LISTED_IN_A_ROW: u32 = 20;

/// gzip's first two bytes (RFC 1952, ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Runs `extract`. The summary line has been printed when this returns `Ok`.
pub fn run(opts: &Options) -> Result<Summary, Failure> {
    let stdout = io::stdout();
    let mut run = Run {
        opts,
        sink: stdout.lock(),
        out: Vec::with_capacity(FLUSH_AT * 2),
        extractor: Extractor::new(),
        summary: Summary::default(),
    };
    let stdin_only = [String::from("-")];
    let files = if opts.files.is_empty() {
        &stdin_only[..]
    } else {
        &opts.files[..]
    };
    for name in files {
        run.input(name)?;
        if run.summary.stopped {
            break;
        }
    }
    run.flush()?;
    eprintln!("kube-audit-shipper: {}", run.summary);
    Ok(run.summary)
}

/// What one line of input was.
enum Seen {
    Event,
    /// Empty or only whitespace: ignored, neither an event nor a bad line.
    Blank,
    /// Skipped: why, and the text of its report.
    Skipped(Skip, String),
}

struct Run<'a> {
    opts: &'a Options,
    sink: io::StdoutLock<'static>,
    out: Vec<u8>,
    extractor: Extractor,
    summary: Summary,
}

impl Run<'_> {
    /// Reads one input to its end (or to corrupt gzip data, or to a bad line under
    /// `--strict`).
    fn input(&mut self, name: &str) -> Result<(), Failure> {
        let (label, src): (&str, Box<dyn Read>) = if name == "-" {
            ("<stdin>", Box::new(io::stdin().lock()))
        } else {
            let file = File::open(name).map_err(|error| Failure::Open {
                name: name.to_owned(),
                error,
            })?;
            (name, Box::new(file))
        };
        let read_error = |error| Failure::Read {
            name: label.to_owned(),
            error,
        };
        let (src, gz) = gunzip_if_gzip(src).map_err(read_error)?;
        let mut lines = LineReader::with_max_line(src, self.opts.max_line);
        let mut reports = Reports::default();
        let mut last_line = 0;
        loop {
            let item = match lines.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) if gz && is_corrupt_gzip(&e) => {
                    reports.finish(label);
                    self.corrupt_gzip(label, last_line, &e);
                    return Ok(());
                }
                Err(e) => return Err(read_error(e)),
            };
            let (line_no, seen) = self.item(label, item);
            last_line = line_no;
            match seen {
                Seen::Blank => {}
                Seen::Event => reports.good_line(),
                Seen::Skipped(why, text) => {
                    self.summary.skipped[why as usize] += 1;
                    reports.bad_line(label, line_no, &text);
                    if self.opts.strict {
                        self.summary.stopped = true;
                        return Ok(());
                    }
                }
            }
            if self.out.len() >= FLUSH_AT {
                self.flush()?;
            }
        }
        reports.finish(label);
        Ok(())
    }

    /// Reports and counts an input whose gzip data broke off after `last_line`. What was
    /// decompressed before is kept (a backup cut by a full disk still has its events); a
    /// partial line at the damage is dropped with the rest.
    fn corrupt_gzip(&mut self, label: &str, last_line: u64, e: &io::Error) {
        let at = match last_line {
            0 => "before its first line".to_owned(),
            n => format!("after line {n}"),
        };
        eprintln!(
            "kube-audit-shipper: {label}: corrupt gzip data {at} ({e}); the rest of this input \
             is skipped"
        );
        self.summary.corrupt_inputs += 1;
        self.summary.stopped = self.opts.strict;
    }

    /// Writes the event of one line; returns its number and what it was.
    fn item(&mut self, label: &str, item: Item<'_>) -> (u64, Seen) {
        let line = match item {
            Item::TooLong { line_no, len, .. } => {
                let max = self.opts.max_line;
                let text = format!("line of {len} bytes is over the maximum of {max} bytes");
                return (line_no, Seen::Skipped(Skip::TooLong, text));
            }
            Item::Line(line) => line,
        };
        let line_no = line.line_no;
        if line.bytes().iter().all(u8::is_ascii_whitespace) {
            return (line_no, Seen::Blank);
        }
        let raw_len = line.len;
        match self
            .extractor
            .extract(line.buf, line.len, self.opts.format, &mut self.out)
        {
            Ok(written) => {
                self.out.push(b'\n');
                self.summary.events += 1;
                if written.truncated {
                    self.summary.trimmed += 1;
                    eprintln!(
                        "kube-audit-shipper: {label}:{line_no}: event of {raw_len} bytes trimmed to the {}-byte limit",
                        self.extractor.max_event_bytes()
                    );
                }
                (line_no, Seen::Event)
            }
            Err(e) => (line_no, Seen::Skipped(Skip::of(&e), e.to_string())),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        let r = self
            .sink
            .write_all(&self.out)
            .and_then(|()| self.sink.flush());
        self.out.clear();
        r.map_err(Failure::Output)
    }
}

/// `src` as it is, or decompressed when it starts with the gzip magic, whatever its name
/// (a rotated backup renamed, a copy, a pipe). Returns whether it is gzip.
///
/// Every member is read (`MultiGzDecoder`), as the tailer reads rotated backups
/// (`tail::file::Source`); that reader itself is not used here because it seeks, which stdin
/// and pipes cannot, and knows gzip by the `.gz` name.
fn gunzip_if_gzip<'a>(mut src: Box<dyn Read + 'a>) -> io::Result<(Box<dyn Read + 'a>, bool)> {
    let mut head = [0u8; 2];
    let mut got = 0;
    while got < head.len() {
        match src.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // The sniffed bytes go back in front of the rest.
    let whole = io::Cursor::new(head).take(got as u64).chain(src);
    if got == head.len() && head == GZIP_MAGIC {
        Ok((Box::new(MultiGzDecoder::new(whole)), true))
    } else {
        Ok((Box::new(whole), false))
    }
}

/// Whether a read error of a gzip input is its data (a bad header, a corrupt deflate
/// stream, a checksum mismatch, a cut-off member) rather than the device.
fn is_corrupt_gzip(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// The bad-line reports of one input: listed until [`LISTED_IN_A_ROW`] come in a row, then
/// only counted for the rest of that input.
#[derive(Default)]
struct Reports {
    in_a_row: u32,
    quiet: bool,
    held_back: u64,
    first_held: u64,
    last_held: u64,
}

impl Reports {
    fn good_line(&mut self) {
        self.in_a_row = 0;
    }

    fn bad_line(&mut self, label: &str, line_no: u64, why: &str) {
        if !self.quiet && self.in_a_row == LISTED_IN_A_ROW {
            self.quiet = true;
            eprintln!(
                "kube-audit-shipper: {label}: {LISTED_IN_A_ROW} bad lines in a row; the rest of \
                 this input's bad lines are counted, not listed"
            );
        }
        if self.quiet {
            if self.held_back == 0 {
                self.first_held = line_no;
            }
            self.held_back += 1;
            self.last_held = line_no;
            return;
        }
        self.in_a_row += 1;
        eprintln!("kube-audit-shipper: {label}:{line_no}: skipped: {why}");
    }

    /// The end of the input: says how many reports were held back.
    fn finish(&self, label: &str) {
        if self.held_back > 0 {
            eprintln!(
                "kube-audit-shipper: {label}: {} not listed (lines {} to {})",
                count(self.held_back, "more bad line", "more bad lines"),
                self.first_held,
                self.last_held
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_reason_once_in_a_fixed_order() {
        let mut s = Summary {
            events: 1495,
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "extract: 1495 events written; no lines skipped"
        );
        assert!(s.clean());
        s.skipped[Skip::TooLong as usize] = 1;
        s.skipped[Skip::NotJson as usize] = 2;
        assert_eq!(
            s.to_string(),
            "extract: 1495 events written; 3 lines skipped (2 not JSON, 1 too long)"
        );
        assert!(!s.clean());
        let s = Summary {
            events: 1,
            trimmed: 1,
            corrupt_inputs: 1,
            stopped: true,
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "extract: 1 event written (1 trimmed to the size limit); no lines skipped; \
             1 input with corrupt gzip data, read up to the damage; stopped there (--strict)"
        );
        assert!(!s.clean());
    }

    #[test]
    fn gzip_is_told_by_its_magic_and_short_inputs_pass_through() {
        for plain in [&b""[..], b"x", b"\x1f", b"{\"a\":1}\n"] {
            let (mut src, gz) = gunzip_if_gzip(Box::new(plain)).unwrap();
            let mut back = Vec::new();
            src.read_to_end(&mut back).unwrap();
            assert!(!gz);
            assert_eq!(back, plain);
        }
    }
}
