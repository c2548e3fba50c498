//! `kube-audit-shipper extract`: audit-log lines in, one output line per event out.
//!
//! A filter for pipelines and for looking at what would be shipped. Bad lines are reported on
//! stderr with file and line number and skipped (or, with `--strict`, end the run), so the
//! output always holds exactly the input's events, in order.

use crate::extract::{Extractor, Format};
use crate::lines::{Item, LineReader};
use std::fs::File;
use std::io::{self, Read, Write};

pub struct Options {
    pub format: Format,
    pub strict: bool,
    pub max_line: usize,
    /// Input files; `-` or none means stdin.
    pub files: Vec<String>,
}

/// Counts of one run.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub skipped: u64,
    pub truncated: u64,
}

/// What ended a run early.
pub enum Failure {
    /// A bad line under `--strict` (already reported).
    Strict,
    /// An input could not be opened or read.
    Input(String),
    /// Writing the output failed (a closed pipe among others).
    Output(io::Error),
}

/// Output is flushed in blocks of about this size.
const FLUSH_AT: usize = 256 * 1024;

pub fn run(opts: &Options) -> Result<Summary, Failure> {
    let stdout = io::stdout();
    let mut sink = stdout.lock();
    let mut out = Vec::with_capacity(FLUSH_AT * 2);
    let mut extractor = Extractor::new();
    let mut summary = Summary::default();
    let stdin_only = [String::from("-")];
    let files = if opts.files.is_empty() {
        &stdin_only[..]
    } else {
        &opts.files[..]
    };
    for name in files {
        let src: Box<dyn Read> = if name == "-" {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(name).map_err(|e| Failure::Input(format!("{name}: {e}")))?)
        };
        let label = if name == "-" {
            "<stdin>"
        } else {
            name.as_str()
        };
        let mut lines = LineReader::with_max_line(src, opts.max_line);
        loop {
            let item = lines
                .next_item()
                .map_err(|e| Failure::Input(format!("{label}: {e}")))?;
            let problem = match item {
                None => break,
                Some(Item::TooLong { line_no, len, .. }) => Some((
                    line_no,
                    format!(
                        "line of {len} bytes is over the maximum of {} bytes",
                        opts.max_line
                    ),
                )),
                Some(Item::Line(line)) => {
                    if line.bytes().iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let line_no = line.line_no;
                    let raw_len = line.len;
                    match extractor.extract(line.buf, line.len, opts.format, &mut out) {
                        Ok(written) => {
                            out.push(b'\n');
                            summary.events += 1;
                            if written.truncated {
                                summary.truncated += 1;
                                eprintln!(
                                    "kube-audit-shipper: {label}:{line_no}: event of {raw_len} bytes trimmed to the {}-byte limit",
                                    extractor.max_event_bytes()
                                );
                            }
                            None
                        }
                        Err(e) => Some((line_no, e.to_string())),
                    }
                }
            };
            if let Some((line_no, why)) = problem {
                summary.skipped += 1;
                eprintln!("kube-audit-shipper: {label}:{line_no}: skipped: {why}");
                if opts.strict {
                    flush(&mut sink, &mut out)?;
                    return Err(Failure::Strict);
                }
            }
            if out.len() >= FLUSH_AT {
                flush(&mut sink, &mut out)?;
            }
        }
    }
    flush(&mut sink, &mut out)?;
    Ok(summary)
}

fn flush(sink: &mut impl Write, out: &mut Vec<u8>) -> Result<(), Failure> {
    let r = sink.write_all(out).and_then(|()| sink.flush());
    out.clear();
    r.map_err(Failure::Output)
}
