//! Steady state allocates nothing: after one warm-up pass over the corpus (buffers grow to
//! the largest event), extracting every event again, in every output form, performs zero
//! heap allocations — and so does turning each into what an `/array` entry carries: the
//! event escaped as a JSON string and its time as RFC 3339. This file holds a single test
//! so the global counter sees only it.

mod support;

use kube_audit_shipper::batch::escape_event;
use kube_audit_shipper::extract::{Extractor, Format};
use kube_audit_shipper::lines::{Item, LineReader};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use support::corpus;

/// Counts allocations (including reallocations) made while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One pass: the whole log through the line reader and the extractor, as the tailer will
/// run it. Returns the number of events.
/// Buffers an `/array` entry's parts are written into, reused from event to event.
#[derive(Default)]
struct Entry {
    escaped: Vec<u8>,
    time: Vec<u8>,
}

fn pass<'l>(
    log: &'l [u8],
    x: &mut Extractor,
    reader_buf: &mut Option<LineReader<&'l [u8]>>,
    out: &mut Vec<u8>,
    format: Format,
    mut entry: Option<&mut Entry>,
) -> u64 {
    // The reader is created once (its buffer is the allocation), then re-pointed at the log.
    let reader = reader_buf.get_or_insert_with(|| LineReader::new(log));
    reader.reset(log);
    let mut events = 0;
    while let Some(item) = reader.next_item().unwrap() {
        if let Item::Line(line) = item {
            out.clear();
            x.extract(line.buf, line.len, format, out).unwrap();
            if let Some(entry) = entry.as_deref_mut() {
                // As the reader thread does for `/array` (src/run.rs, src/batch.rs).
                escape_event(&mut entry.escaped, out);
                entry.time.clear();
                kube_audit_shipper::timestamp::write_micros(
                    &mut entry.time,
                    1_795_532_127_763_391 + events as i64,
                );
                assert!(entry.escaped.len() > out.len());
            }
            events += 1;
        }
    }
    events
}

#[test]
fn extraction_allocates_nothing_in_steady_state() {
    // Varied events: real samples (up to 83 KB), the seed, and generated ones of every shape
    // including 50–250 KB RequestResponse bodies and oversized events that get trimmed.
    let mut lines = corpus::samples();
    lines.extend(corpus::seed_raw());
    lines.extend(corpus::corpus(2024, 9000));
    let huge = format!(
        r#"{{"verb":"create","requestObject":{{"spec":{{"containers":[{}]}}}}}}"#,
        vec![r#"{"name":"c","command":["a very long argument indeed"]}"#; 8000].join(",")
    );
    lines.push(huge);
    let log = lines.join("\n").into_bytes();
    assert!(lines.len() >= 10_000);

    let mut x = Extractor::new();
    let mut reader = None;
    let mut out = Vec::new();
    let mut entry = Entry::default();
    // The forms, and the `audit` form turned into `/array` entries.
    let runs = [
        (Format::Audit, false),
        (Format::Ecs, false),
        (Format::Raw, false),
        (Format::Audit, true),
    ];
    COUNTING.store(true, Ordering::SeqCst);
    for (format, array) in runs {
        let e = array.then_some(&mut entry);
        pass(&log, &mut x, &mut reader, &mut out, format, e); // warm-up: buffers grow here
    }
    COUNTING.store(false, Ordering::SeqCst);
    // The counter is live: growing the buffers was seen.
    assert!(ALLOCS.load(Ordering::SeqCst) > 0);
    for (format, array) in runs {
        ALLOCS.store(0, Ordering::SeqCst);
        BYTES.store(0, Ordering::SeqCst);
        let e = array.then_some(&mut entry);
        COUNTING.store(true, Ordering::SeqCst);
        let events = pass(&log, &mut x, &mut reader, &mut out, format, e);
        COUNTING.store(false, Ordering::SeqCst);
        let (allocs, bytes) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        eprintln!(
            "{format:?} (array {array}): {events} events, {allocs} allocations, {bytes} bytes"
        );
        assert_eq!(events, lines.len() as u64);
        assert_eq!(
            (allocs, bytes),
            (0, 0),
            "{format:?} (array {array}): allocations in steady state"
        );
    }
}
