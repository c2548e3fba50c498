//! Extraction throughput: this project's extractor against a serde_json borrowed-struct
//! baseline and the simd-json DOM, on the same generated corpus, in the same run.
//!
//! `cargo bench --bench extract` (env `BENCH_ROUNDS`, default 9; `BENCH_EVENTS`, default
//! 20000). Each round runs every variant over the whole corpus; the reported figure is the
//! median round, measured in CPU time of this thread so other load on the machine matters
//! less. Every variant gets each line copied into a reused buffer first (simd-json parses in
//! place and needs a fresh copy; serde_json does not, so the copy slightly favours the
//! baseline).

#[path = "../tests/support/corpus.rs"]
mod corpus;

use kube_audit_shipper::cmd::bench::{cpu_description, thread_cpu_time};
use kube_audit_shipper::extract::{Extractor, Format};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use simd_json::prelude::*;
use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

// --- the baseline: serde_json into borrowed structs of the same fields -------------------

#[derive(Deserialize, Serialize)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct AuditEvent<'a> {
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    kind: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    api_version: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    level: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        rename = "auditID",
        skip_serializing_if = "str::is_empty"
    )]
    audit_id: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    stage: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        rename = "requestURI",
        skip_serializing_if = "str::is_empty"
    )]
    request_uri: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    verb: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "User::is_empty")]
    user: User<'a>,
    #[serde(borrow, default, skip_serializing_if = "User::is_empty")]
    impersonated_user: User<'a>,
    #[serde(
        borrow,
        default,
        rename = "sourceIPs",
        skip_serializing_if = "Option::is_none"
    )]
    source_ips: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    user_agent: Cow<'a, str>,
    #[serde(borrow, default)]
    object_ref: ObjectRef<'a>,
    #[serde(default)]
    response_status: Status,
    #[serde(borrow, default)]
    request_object: RequestObject<'a>,
    #[serde(borrow, default)]
    response_object: ResponseObject<'a>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    request_received_timestamp: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    stage_timestamp: Cow<'a, str>,
    #[serde(borrow, default)]
    annotations: Annotations<'a>,
}

impl User<'_> {
    fn is_empty(&self) -> bool {
        self.username.is_empty() && self.uid.is_empty() && self.groups.is_none()
    }
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
struct User<'a> {
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    username: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    uid: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    groups: Option<&'a RawValue>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    name: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    resource: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    namespace: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    subresource: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    api_group: Cow<'a, str>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
struct Status {
    #[serde(default)]
    code: Option<i64>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct RequestObject<'a> {
    #[serde(borrow, default)]
    spec: Spec<'a>,
    #[serde(borrow, default)]
    role_ref: Named<'a>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    containers: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    volumes: Option<&'a RawValue>,
    #[serde(default)]
    host_network: Option<bool>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
struct ResponseObject<'a> {
    #[serde(borrow, default)]
    metadata: Named<'a>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
struct Named<'a> {
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    name: Cow<'a, str>,
}

#[derive(Deserialize, Serialize, Default)]
#[allow(dead_code)]
struct Annotations<'a> {
    #[serde(
        borrow,
        default,
        rename = "authorization.k8s.io/decision",
        skip_serializing_if = "str::is_empty"
    )]
    decision: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        rename = "authorization.k8s.io/reason",
        skip_serializing_if = "str::is_empty"
    )]
    reason: Cow<'a, str>,
}

// --- the variants --------------------------------------------------------------------------

type Variant = fn(&[Vec<u8>], &mut State) -> usize;

struct State {
    buf: Vec<u8>,
    out: Vec<u8>,
    /// The default extractor: the `audit` writer copies byte ranges of the line.
    extractor: Extractor,
    /// The `audit` writer re-serialising everything from the tape (the writer before).
    tape_writer: Extractor,
    buffers: simd_json::Buffers,
}

/// Copies a line into the reused buffer, padded as the line reader leaves it.
fn load<'a>(buf: &'a mut Vec<u8>, line: &[u8]) -> &'a mut Vec<u8> {
    buf.clear();
    buf.extend_from_slice(line);
    buf.resize(line.len() + simd_json::INPUT_PADDING, 0);
    buf
}

fn ours(lines: &[Vec<u8>], s: &mut State, format: Format, ranges: bool) -> usize {
    let mut n = 0;
    let x = if ranges {
        &mut s.extractor
    } else {
        &mut s.tape_writer
    };
    for line in lines {
        let buf = load(&mut s.buf, line);
        s.out.clear();
        x.extract(buf, line.len(), format, &mut s.out).unwrap();
        n += s.out.len();
    }
    n
}

fn ours_audit(lines: &[Vec<u8>], s: &mut State) -> usize {
    ours(lines, s, Format::Audit, true)
}

fn ours_audit_tape(lines: &[Vec<u8>], s: &mut State) -> usize {
    ours(lines, s, Format::Audit, false)
}

fn ours_ecs(lines: &[Vec<u8>], s: &mut State) -> usize {
    ours(lines, s, Format::Ecs, true)
}

/// Parse and locate the fields only: the same work the baseline does.
fn ours_locate(lines: &[Vec<u8>], s: &mut State) -> usize {
    locate(lines, s, false)
}

/// As `ours_locate`, plus the copy of the line the byte-range writer needs: its cost alone.
fn ours_locate_copy(lines: &[Vec<u8>], s: &mut State) -> usize {
    locate(lines, s, true)
}

fn locate(lines: &[Vec<u8>], s: &mut State, copy: bool) -> usize {
    let mut n = 0;
    let x = if copy {
        &mut s.extractor
    } else {
        &mut s.tape_writer
    };
    for line in lines {
        let buf = load(&mut s.buf, line);
        let event = x.parse(buf, line.len()).unwrap();
        n += event.verb().map_or(0, str::len) + event.audit_id().map_or(0, str::len);
        n += black_box(event.fields())
            .user_name
            .map_or(0, |i| i as usize);
    }
    n
}

fn serde_struct(lines: &[Vec<u8>], s: &mut State) -> usize {
    let mut n = 0;
    for line in lines {
        let buf = load(&mut s.buf, line);
        let e: AuditEvent = serde_json::from_slice(&buf[..line.len()]).unwrap();
        n += e.verb.len() + e.audit_id.len() + e.user.username.len();
        black_box(&e);
    }
    n
}

/// The baseline's full path: deserialize, then write the extracted fields back as JSON
/// (what the `audit` form does, without its guarantees on key order and odd shapes).
fn serde_roundtrip(lines: &[Vec<u8>], s: &mut State) -> usize {
    let mut n = 0;
    for line in lines {
        let buf = load(&mut s.buf, line);
        let e: AuditEvent = serde_json::from_slice(&buf[..line.len()]).unwrap();
        s.out.clear();
        serde_json::to_writer(&mut s.out, &e).unwrap();
        n += s.out.len();
    }
    n
}

fn simd_dom(lines: &[Vec<u8>], s: &mut State) -> usize {
    let mut n = 0;
    for line in lines {
        let buf = load(&mut s.buf, line);
        let v = simd_json::to_borrowed_value_with_buffers(&mut buf[..line.len()], &mut s.buffers)
            .unwrap();
        for path in [
            &["verb"][..],
            &["auditID"],
            &["user", "username"],
            &["user", "uid"],
            &["objectRef", "resource"],
            &["objectRef", "name"],
            &["annotations", "authorization.k8s.io/decision"],
            &["requestReceivedTimestamp"],
            &["userAgent"],
            &["requestURI"],
        ] {
            let mut cur = Some(&v);
            for k in path {
                cur = cur.and_then(|c| c.get(*k));
            }
            n += cur.and_then(|c| c.as_str()).map_or(0, str::len);
        }
        n += v
            .get("responseStatus")
            .and_then(|s| s.get("code"))
            .and_then(|c| c.as_i64())
            .unwrap_or(0) as usize;
        black_box(&v);
    }
    n
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!("cpu: {}", cpu_description());
    println!("rounds: {rounds} (median of per-round CPU time; variants interleaved)");
    let generated: Vec<Vec<u8>> = corpus::corpus(42, events)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    run("generated corpus", &generated, rounds);
    // The real kube-apiserver events, repeated to a comparable volume.
    let samples = corpus::samples();
    let repeat = (events / samples.len()).max(1);
    let real: Vec<Vec<u8>> = (0..repeat)
        .flat_map(|_| samples.iter().map(|l| l.clone().into_bytes()))
        .collect();
    run(&format!("real samples ×{repeat}"), &real, rounds);
}

fn run(title: &str, lines: &[Vec<u8>], rounds: usize) {
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let big = lines.iter().filter(|l| l.len() >= 50_000).count();
    let mut sorted: Vec<usize> = lines.iter().map(Vec::len).collect();
    sorted.sort_unstable();
    println!(
        "\n{title}: {} events, {:.1} MB, mean {} B, median {} B, {} events ≥ 50 KB (max {} B)",
        lines.len(),
        bytes as f64 / 1e6,
        bytes / lines.len(),
        sorted[sorted.len() / 2],
        big,
        sorted[sorted.len() - 1]
    );

    let variants: [(&str, Variant); 8] = [
        ("serde_json borrowed struct (baseline)", serde_struct),
        ("serde_json struct → JSON (full path)", serde_roundtrip),
        ("simd-json DOM (to_borrowed_value)", simd_dom),
        ("ours: parse + locate fields", ours_locate),
        ("ours: parse + locate + copy of the line", ours_locate_copy),
        ("ours: extract → audit, tape writer", ours_audit_tape),
        ("ours: extract → audit, byte ranges", ours_audit),
        ("ours: extract → ecs (full path)", ours_ecs),
    ];
    // BENCH_ONLY=substring runs just the matching variants (for profiling one of them);
    // ratios are then relative to the first one run.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let variants: Vec<(&str, Variant)> = variants
        .into_iter()
        .filter(|(name, _)| name.contains(&only))
        .collect();
    let mut state = State {
        buf: Vec::new(),
        out: Vec::new(),
        extractor: Extractor::new(),
        tape_writer: Extractor::new().with_byte_ranges(false),
        buffers: simd_json::Buffers::new(64 * 1024),
    };
    // Interleaved rounds: drifting machine load hits every variant alike.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // Warm-up; the output bytes of each variant (for the writers: the size of the form).
    let outs: Vec<usize> = variants
        .iter()
        .map(|(_, f)| black_box(f(lines, &mut state)))
        .collect();
    for _ in 0..rounds {
        for (i, (_, f)) in variants.iter().enumerate() {
            let start = thread_cpu_time();
            black_box(f(lines, &mut state));
            times[i].push(thread_cpu_time() - start);
        }
    }
    let median = |t: &mut Vec<Duration>| {
        t.sort();
        t[t.len() / 2].as_secs_f64()
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!(
        "{:<40} {:>10} {:>12} {:>12} {:>10} {:>12}",
        "variant", "MB/s", "events/s", "vs baseline", "median s", "out bytes"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        println!(
            "{:<40} {:>10.1} {:>12.0} {:>11.2}x {:>10.4} {:>12}",
            name,
            bytes as f64 / 1e6 / medians[i],
            lines.len() as f64 / medians[i],
            medians[0] / medians[i],
            medians[i],
            outs[i]
        );
    }
}
