//! `kube-audit-shipper bench FILE`: what shipping this audit log would cost on this machine.
//!
//! Meant to be run by an operator on the node itself (an ARM k3s server, say) with a real
//! audit log. It reports, as medians over several rounds of per-thread CPU time:
//! - the ceiling set by reading and splitting lines (nothing can be faster);
//! - the full extraction path to the `audit` and `ecs` forms, and `audit` plus gzip;
//! - bytes raw → `audit` → gzip at several levels;
//! - the event rate found in the file's `requestReceivedTimestamp`s and the share of one core
//!   that extraction plus compression would take at that rate.

use crate::extract::{Extractor, Format};
use crate::lines::{Item, LineReader};
use crate::timestamp::parse_micros;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

pub struct Options {
    pub file: String,
    pub rounds: usize,
    /// gzip level of the `audit + gzip` path.
    pub level: u32,
}

/// Batches are compressed as the spool does: one gzip member per ~1 MiB of events.
const BATCH_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy)]
enum Path {
    Split,
    Extract(Format),
    ExtractGzip(Format, u32),
}

/// One timed pass over the file.
#[derive(Clone, Copy, Default)]
struct Sample {
    cpu: Duration,
    wall: Duration,
    out_bytes: u64,
    gz_bytes: u64,
}

/// What is in the file (counted on the first pass).
#[derive(Default)]
struct Census {
    lines: u64,
    events: u64,
    bad: u64,
    truncated: u64,
    raw_bytes: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

pub fn run(opts: &Options) -> Result<(), String> {
    let mut census = Census::default();
    pass(&opts.file, Path::Extract(Format::Audit), Some(&mut census))?;
    if census.events == 0 {
        return Err(format!(
            "{}: no audit events found ({} lines, {} not events)",
            opts.file, census.lines, census.bad
        ));
    }
    let stdout = std::io::stdout();
    let mut o = BufWriter::new(stdout.lock());
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let _ = writeln!(o, "kube-audit-shipper bench: {}", opts.file);
    let _ = writeln!(
        o,
        "  input        {} lines, {:.2} MB, {} events (mean {} B), {} not events, {} over {} bytes",
        census.lines,
        mb(census.raw_bytes),
        census.events,
        census.raw_bytes / census.events,
        census.bad,
        census.truncated,
        crate::extract::MAX_EVENT_BYTES,
    );
    let _ = writeln!(o, "  cpu          {}", cpu_description());
    let _ = writeln!(
        o,
        "  throughput   median of {} rounds, CPU time of one thread (wall time in brackets)",
        opts.rounds
    );

    let paths: [(&str, Path); 4] = [
        ("read + split lines (ceiling)", Path::Split),
        ("extract → audit", Path::Extract(Format::Audit)),
        ("extract → ecs", Path::Extract(Format::Ecs)),
        (
            "extract → audit → gzip",
            Path::ExtractGzip(Format::Audit, opts.level),
        ),
    ];
    let mut full_path = Sample::default();
    for (label, path) in paths {
        let s = median(opts.rounds, || pass(&opts.file, path, None))?;
        let secs = s.cpu.as_secs_f64().max(1e-9);
        let label = match path {
            Path::ExtractGzip(..) => format!("{label} -{}", opts.level),
            _ => label.to_string(),
        };
        let _ = writeln!(
            o,
            "    {label:<34} {:>8.1} MB/s {:>11.0} events/s  [{:.1} MB/s]",
            mb(census.raw_bytes) / secs,
            census.events as f64 / secs,
            mb(census.raw_bytes) / s.wall.as_secs_f64().max(1e-9),
        );
        if let Path::ExtractGzip(..) = path {
            full_path = s;
        }
    }

    let audit = pass(&opts.file, Path::Extract(Format::Audit), None)?.out_bytes;
    let pct = |part: u64| 100.0 * part as f64 / census.raw_bytes as f64;
    let _ = writeln!(
        o,
        "  bytes        raw {:.2} MB → audit {:.2} MB ({:.1}% of raw)",
        mb(census.raw_bytes),
        mb(audit),
        pct(audit)
    );
    for level in [1, 3, 6, 9] {
        let s = pass(&opts.file, Path::ExtractGzip(Format::Audit, level), None)?;
        let gzip_cpu = s.cpu.as_secs_f64();
        let _ = writeln!(
            o,
            "    audit → gzip -{level}: {:.3} MB, {:.2}% of raw, {:.1}:1 (extract + gzip {:.1} MB/s of raw)",
            mb(s.gz_bytes),
            pct(s.gz_bytes),
            census.raw_bytes as f64 / s.gz_bytes.max(1) as f64,
            mb(census.raw_bytes) / gzip_cpu.max(1e-9),
        );
    }

    let spooled = spool_pass(&opts.file)?;
    let _ = writeln!(
        o,
        "  spool        {} segments ({} critical) as the batcher cuts them (≤1 MiB, ≤1000 events, ≤1 s of event time, critical apart): {:.3} MB, {:.2}% of raw, {:.0} B/event",
        spooled.segments,
        spooled.critical_segments,
        mb(spooled.bytes),
        pct(spooled.bytes),
        spooled.bytes as f64 / census.events as f64
    );

    match (census.first_ts, census.last_ts) {
        (Some(first), Some(last)) if last > first => {
            let span = (last - first) as f64 / 1e6;
            let rate = census.events as f64 / span;
            let cpu_per_event = full_path.cpu.as_secs_f64() / census.events as f64;
            let _ = writeln!(
                o,
                "  event rate   {rate:.1} events/s ({} events over {span:.1} s of requestReceivedTimestamp)",
                census.events
            );
            let _ = writeln!(
                o,
                "  cpu share    {:.3}% of one core for extract → audit → gzip -{} at that rate",
                100.0 * rate * cpu_per_event,
                opts.level
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "  event rate   unknown: the events' requestReceivedTimestamps span no time"
            );
        }
    }
    o.flush().map_err(|e| format!("writing output: {e}"))
}

/// What the spool would hold for the file.
#[derive(Default)]
struct Spooled {
    segments: u64,
    critical_segments: u64,
    bytes: u64,
}

/// Extract → classify → batch with the default limits (linger aside: the file is read at
/// once, so only size, count and event-time spread cut batches).
fn spool_pass(file: &str) -> Result<Spooled, String> {
    use crate::batch::{BatchLimits, Batcher};
    use crate::spool::{Class, classify};
    let f = File::open(file).map_err(|e| format!("{file}: {e}"))?;
    let mut lines = LineReader::new(f);
    let mut extractor = Extractor::new();
    let mut batcher = Batcher::new(BatchLimits::default());
    let mut out = Vec::new();
    let mut spooled = Spooled::default();
    let mut count = |sealed: crate::batch::Sealed| {
        spooled.segments += 1;
        spooled.critical_segments += u64::from(sealed.class == Class::Critical);
        spooled.bytes += sealed.gz.len() as u64;
    };
    let now = Instant::now();
    loop {
        let item = lines.next_item().map_err(|e| format!("{file}: {e}"))?;
        let line = match item {
            None => break,
            Some(Item::Line(line)) => line,
            Some(Item::TooLong { .. }) => continue,
        };
        let Ok(mut event) = extractor.parse(line.buf, line.len) else {
            continue;
        };
        out.clear();
        event.write(Format::Audit, &mut out);
        let class = classify(&event);
        let ts = event.request_received().and_then(parse_micros);
        drop(event);
        let sealed = batcher
            .add(class, &out, ts, now)
            .map_err(|e| format!("gzip: {e}"))?;
        sealed.into_iter().for_each(&mut count);
    }
    batcher
        .seal_all()
        .map_err(|e| format!("gzip: {e}"))?
        .into_iter()
        .for_each(&mut count);
    Ok(spooled)
}

/// The run with the median CPU time of `rounds` runs.
fn median(rounds: usize, mut f: impl FnMut() -> Result<Sample, String>) -> Result<Sample, String> {
    let mut samples = (0..rounds.max(1))
        .map(|_| f())
        .collect::<Result<Vec<_>, _>>()?;
    samples.sort_by_key(|s| s.cpu);
    Ok(samples[samples.len() / 2])
}

fn pass(file: &str, path: Path, mut census: Option<&mut Census>) -> Result<Sample, String> {
    let f = File::open(file).map_err(|e| format!("{file}: {e}"))?;
    let mut lines = LineReader::new(f);
    let mut extractor = Extractor::new();
    let mut out = Vec::with_capacity(BATCH_BYTES * 2);
    let mut gz = Vec::with_capacity(BATCH_BYTES);
    let mut sample = Sample::default();
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    loop {
        let item = lines.next_item().map_err(|e| format!("{file}: {e}"))?;
        let line = match item {
            None => break,
            Some(Item::TooLong { len, .. }) => {
                if let Some(c) = census.as_deref_mut() {
                    c.lines += 1;
                    c.bad += 1;
                    c.raw_bytes += len + 1;
                }
                continue;
            }
            Some(Item::Line(line)) => line,
        };
        let (buf, len, end_len) = (line.buf, line.len, line.end - line.offset);
        if let Some(c) = census.as_deref_mut() {
            c.lines += 1;
            c.raw_bytes += end_len;
        }
        let format = match path {
            Path::Split => continue,
            Path::Extract(format) | Path::ExtractGzip(format, _) => format,
        };
        match extractor.parse(buf, len) {
            Ok(mut event) => {
                let written = event.write(format, &mut out);
                out.push(b'\n');
                if let Some(c) = census.as_deref_mut() {
                    c.events += 1;
                    c.truncated += u64::from(written.truncated);
                    if let Some(t) = event.request_received().and_then(parse_micros) {
                        c.first_ts = Some(c.first_ts.map_or(t, |f| f.min(t)));
                        c.last_ts = Some(c.last_ts.map_or(t, |l| l.max(t)));
                    }
                }
            }
            Err(_) => {
                if let Some(c) = census.as_deref_mut() {
                    c.bad += 1;
                }
            }
        }
        if out.len() >= BATCH_BYTES {
            seal(&mut out, &mut gz, path, &mut sample)?;
        }
    }
    seal(&mut out, &mut gz, path, &mut sample)?;
    sample.cpu = thread_cpu_time().saturating_sub(cpu);
    sample.wall = wall.elapsed();
    Ok(sample)
}

/// Ends a batch: counts its bytes and, on the gzip path, compresses it as one member.
fn seal(
    out: &mut Vec<u8>,
    gz: &mut Vec<u8>,
    path: Path,
    sample: &mut Sample,
) -> Result<(), String> {
    sample.out_bytes += out.len() as u64;
    if let Path::ExtractGzip(_, level) = path
        && !out.is_empty()
    {
        gz.clear();
        let mut enc = GzEncoder::new(&mut *gz, Compression::new(level));
        enc.write_all(out)
            .and_then(|()| enc.try_finish())
            .map_err(|e| format!("gzip: {e}"))?;
        drop(enc);
        sample.gz_bytes += gz.len() as u64;
    }
    out.clear();
    Ok(())
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The architecture, the SIMD implementation simd-json selected at run time, and the CPU
/// features that selection depends on.
pub fn cpu_description() -> String {
    let implementation = simd_json::Deserializer::algorithm();
    #[cfg(target_arch = "x86_64")]
    let features = format!(
        "avx2 {}, pclmulqdq {}, sse4.2 {}",
        yes(std::is_x86_feature_detected!("avx2")),
        yes(std::is_x86_feature_detected!("pclmulqdq")),
        yes(std::is_x86_feature_detected!("sse4.2")),
    );
    #[cfg(target_arch = "aarch64")]
    let features = format!(
        "neon {}",
        yes(std::arch::is_aarch64_feature_detected!("neon"))
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let features = String::from("no SIMD path in simd-json for this architecture");
    format!(
        "{}, simd-json implementation {implementation} ({features})",
        std::env::consts::ARCH
    )
}

#[allow(dead_code)]
fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
