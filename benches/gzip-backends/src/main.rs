//! gzip back ends at equal wire size, on the bodies the shipper sends.
//!
//! Input: the `audit` form, one event per line (`kube-audit-shipper extract --format audit
//! FILE`), repeated REPEAT times. It is cut into `/array` bodies as `src/batch.rs` cuts them
//! (≤ 1 MiB before gzip, ≤ 1,000 events; each entry `{"intake_key":…,"json":"<the event as
//! a JSON string>","timestamp":…}`), then every body is compressed by each back end and level.
//! Rounds are interleaved; each figure is the median round of this thread's CPU time.
//!
//! - `zlib-rs` (flate2, as the shipper uses it): streamed in 32 KiB writes, as the batcher
//!   stages them, so a batch never holds its uncompressed body.
//! - `libdeflate` (libdeflater): one call on the whole body (it has no streaming API, so the
//!   batcher would have to keep the whole uncompressed body: up to 1 MiB per open batch).
//! - `miniz_oxide`: one call on the whole body, plus the CRC-32 a gzip member carries.
//!
//! Repeating the input does not help any of them: deflate looks back 32 KiB, and one pass of
//! the fixture's `audit` form is over 1 MB.

use std::io::{Read, Write};
use std::time::Duration;

const MAX_BODY: usize = 1024 * 1024;
const MAX_EVENTS: usize = 1000;
const STAGE: usize = 32 * 1024;

#[derive(Clone, Copy)]
enum Backend {
    ZlibRs(u32),
    Libdeflate(i32),
    Miniz(u8),
}

impl Backend {
    fn name(self) -> String {
        match self {
            Backend::ZlibRs(l) => format!("zlib-rs (flate2) -{l}, streamed"),
            Backend::Libdeflate(l) => format!("libdeflate -{l}, whole body"),
            Backend::Miniz(l) => format!("miniz_oxide -{l}, whole body"),
        }
    }

    /// The gzip member (or, for miniz_oxide, the deflate stream and its CRC) of `body`;
    /// returns its size.
    fn compress(self, body: &[u8], out: &mut Vec<u8>, ld: &mut Option<libdeflater::Compressor>) -> usize {
        out.clear();
        match self {
            Backend::ZlibRs(level) => {
                let mut gz = flate2::write::GzEncoder::new(
                    std::mem::take(out),
                    flate2::Compression::new(level),
                );
                for chunk in body.chunks(STAGE) {
                    gz.write_all(chunk).expect("to memory");
                }
                *out = gz.finish().expect("to memory");
            }
            Backend::Libdeflate(level) => {
                let c = ld.get_or_insert_with(|| {
                    libdeflater::Compressor::new(
                        libdeflater::CompressionLvl::new(level).expect("level 1-12"),
                    )
                });
                out.resize(c.gzip_compress_bound(body.len()), 0);
                let n = c.gzip_compress(body, out).expect("bound is enough");
                out.truncate(n);
            }
            Backend::Miniz(level) => {
                *out = miniz_oxide::deflate::compress_to_vec(body, level);
                let crc = crc32fast::hash(body);
                out.extend_from_slice(&crc.to_le_bytes());
                // A gzip member also has a 10-byte header and the length: 18 bytes in all.
                return out.len() + 14;
            }
        }
        out.len()
    }
}

fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The `/array` bodies for these events, cut as the batcher cuts them.
fn bodies(events: &[&str], repeat: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Vec<u8> = Vec::with_capacity(MAX_BODY);
    let mut n = 0;
    let mut micros: u64 = 1_780_000_000_000_000;
    for e in (0..repeat).flat_map(|_| events.iter()) {
        micros += 1000;
        let json = serde_json::to_string(e).expect("a string");
        let entry = format!(
            "{{\"intake_key\":\"0123456789abcdefghijklmnopqrstuv\",\"json\":{json},\"timestamp\":\"2026-06-01T00:{:02}:{:02}.{:06}Z\"}}",
            micros / 60_000_000 % 60,
            micros / 1_000_000 % 60,
            micros % 1_000_000
        );
        if n > 0 && (body.len() + 1 + entry.len() + 1 > MAX_BODY || n >= MAX_EVENTS) {
            body.push(b']');
            out.push(std::mem::replace(&mut body, Vec::with_capacity(MAX_BODY)));
            n = 0;
        }
        body.push(if n == 0 { b'[' } else { b',' });
        body.extend_from_slice(entry.as_bytes());
        n += 1;
    }
    if n > 0 {
        body.push(b']');
        out.push(body);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: gzip-backends AUDIT_NDJSON [REPEAT] [ROUNDS]");
        std::process::exit(2);
    };
    let repeat: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let events: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let bodies = bodies(&events, repeat);
    let total: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "{} events ×{repeat} → {} bodies, {:.1} MB before gzip (mean {} B); {rounds} rounds, median",
        events.len(),
        bodies.len(),
        total as f64 / 1e6,
        total / bodies.len()
    );
    let backends = [
        Backend::ZlibRs(1),
        Backend::ZlibRs(2),
        Backend::ZlibRs(3),
        Backend::ZlibRs(4),
        Backend::ZlibRs(6),
        Backend::Libdeflate(1),
        Backend::Libdeflate(2),
        Backend::Libdeflate(3),
        Backend::Libdeflate(4),
        Backend::Libdeflate(6),
        Backend::Miniz(1),
        Backend::Miniz(3),
        Backend::Miniz(6),
    ];
    let mut ld: Vec<Option<libdeflater::Compressor>> = backends.iter().map(|_| None).collect();
    let mut out = Vec::with_capacity(MAX_BODY);
    let mut wire = vec![0usize; backends.len()];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); backends.len()];
    // Warm-up, sizes, and a check that each gzip member decodes to the body.
    for (i, b) in backends.iter().enumerate() {
        for body in &bodies {
            wire[i] += b.compress(body, &mut out, &mut ld[i]);
            if !matches!(b, Backend::Miniz(_)) {
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&out[..])
                    .read_to_end(&mut back)
                    .expect("a gzip member");
                assert!(back == *body, "{} does not round-trip", b.name());
            }
        }
    }
    for _ in 0..rounds {
        for (i, b) in backends.iter().enumerate() {
            let t = thread_cpu();
            for body in &bodies {
                std::hint::black_box(b.compress(body, &mut out, &mut ld[i]));
            }
            times[i].push(thread_cpu() - t);
        }
    }
    let base = {
        let t = &mut times[2];
        t.sort();
        t[t.len() / 2].as_secs_f64()
    };
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>12}",
        "back end", "CPU ms/MB", "MB/s", "wire %", "CPU vs -3"
    );
    for (i, b) in backends.iter().enumerate() {
        times[i].sort();
        let s = times[i][times[i].len() / 2].as_secs_f64();
        println!(
            "{:<34} {:>10.2} {:>10.1} {:>7.2}% {:>11.2}x",
            b.name(),
            s * 1e3 / (total as f64 / 1e6),
            total as f64 / 1e6 / s,
            100.0 * wire[i] as f64 / total as f64,
            s / base
        );
    }
}
