//! A spool directory holding one file of any name and content (and, optionally, a segment
//! stored through `Batcher` and `Spool::store`), reopened with `Spool::open` and drained.
//! Input: flags, a time byte, a name length N, N bytes of file name, then the body (also the
//! stored batch's events, one per line). Flags: 1 = store a batch first, 2 = critical (else
//! bulk), 4 = the batch's events have a time (the time byte, signed, × 10^12 µs).
//!
//! `open` must not panic or fail: files whose names are not segments go to `quarantine/`.
//! Then every listed segment, oldest first, must read either `Ok` (the file's bytes, which
//! gunzip completely; the stored batch's are its gzip bytes and gunzip to its body; then
//! acknowledged) or `Err(reason)` with a non-empty reason (then quarantined: the file moves
//! to `quarantine/`). Each step removes exactly that segment from the queue, `bytes()` is
//! always the sum of the sizes of the files left in the spool, the spool ends empty, and the
//! stored batch was read back.
//!
//! The inputs in regressions/spool/ are what it found first (a negative earliest time, a
//! long non-UTF-8 name, a non-canonical name, a stray sharing an order, the largest order);
//! each failed until its fix, and `tests/spool.rs` keeps them as a test.
#![no_main]

use flate2::read::MultiGzDecoder;
use kube_audit_shipper::batch::{BatchLimits, Batcher};
use kube_audit_shipper::spool::{Class, Spool, Stored};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CAP: u64 = 1 << 30;

/// One directory per fuzzing process, on tmpfs (the spool fsyncs every change).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(format!("/dev/shm/kas-fuzz-spool-{}", std::process::id())))
}

/// A name the file system takes for a plain file in the spool directory (not one of the
/// spool's own subdirectories).
fn usable(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains(&b'/')
        && !name.contains(&0)
        && ![&b"."[..], b"..", b"tmp", b"quarantine"].contains(&name)
}

/// Sizes of the plain files directly in the spool directory, by name.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list the spool") {
        let entry = entry.expect("list the spool");
        let meta = entry.metadata().expect("stat a spool file");
        if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
    out
}

fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    MultiGzDecoder::new(body).read_to_end(&mut out)?;
    Ok(out)
}

fn queued(spool: &Spool) -> usize {
    spool.segments(Class::Critical) + spool.segments(Class::Bulk)
}

fn check_bytes(spool: &Spool, dir: &Path) {
    let on_disk: u64 = files(dir).iter().map(|(_, n)| n).sum();
    assert_eq!(spool.bytes(), on_disk, "bytes() against the files left");
}

fuzz_target!(|data: &[u8]| {
    let [flags, time, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n).min(rest.len());
    let (name, body) = rest.split_at(n);
    let dir = dir();
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("clean {dir:?}: {e}"),
        _ => {}
    }
    std::fs::create_dir_all(dir).expect("create the spool directory");

    // A segment stored through the API, as the service writes them.
    let mut stored = None;
    if flags & 1 != 0 {
        let class = if flags & 2 != 0 {
            Class::Critical
        } else {
            Class::Bulk
        };
        let ts = (flags & 4 != 0).then(|| i64::from(*time as i8) * 1_000_000_000_000);
        let mut batcher = Batcher::new(BatchLimits {
            max_bytes: usize::MAX,
            max_events: u32::MAX,
            linger: Duration::from_secs(3600),
            max_spread: Duration::from_secs(1),
            level: 1,
        });
        let now = Instant::now();
        for event in body.split(|&b| b == b'\n') {
            assert!(batcher.add(class, event, ts, now).expect("batch").is_none());
        }
        let sealed = batcher.seal(class).expect("seal").expect("a batch");
        let mut spool = Spool::open(dir, CAP).expect("open an empty spool");
        let Stored::Written(seg) = spool.store(&sealed).expect("store") else {
            panic!("a small batch must fit under the cap");
        };
        stored = Some((seg.file_name(), sealed.gz));
    }

    // Whatever else lands in the directory.
    if usable(name) {
        let junk = dir.join(OsStr::from_bytes(name));
        std::fs::write(&junk, body).expect("write the file");
        if stored.as_ref().is_some_and(|(s, _)| s.as_bytes() == name) {
            stored = None; // Overwritten.
        }
    }

    let mut spool = Spool::open(dir, CAP).expect("open never fails on file names or content");
    let listed = queued(&spool);
    assert_eq!(
        files(dir).len(),
        listed,
        "every file left in the spool is listed"
    );
    let in_quarantine = std::fs::read_dir(dir.join("quarantine"))
        .expect("quarantine/")
        .count();
    assert_eq!(spool.stats.quarantined, in_quarantine as u64);
    check_bytes(&spool, dir);

    let mut stored_read = false;
    for _ in 0..listed {
        let seg = spool.next().cloned().expect("a listed segment");
        let file = seg.file_name();
        let before = queued(&spool);
        match spool.read(&seg) {
            Err(e) => panic!("reading listed segment {file:?}: {e}"),
            Ok(Ok(read)) => {
                let on_disk = std::fs::read(dir.join(&file)).expect("the segment's file");
                assert_eq!(read, on_disk);
                let text = gunzip(&read).expect("a segment read Ok gunzips completely");
                if let Some((name, gz)) = &stored
                    && *name == file
                {
                    assert_eq!(&read, gz, "the stored segment reads back identical");
                    assert_eq!(text, body, "the stored segment holds the batch's events");
                    stored_read = true;
                }
                spool.ack(&seg).expect("ack");
                assert!(!dir.join(&file).exists(), "an acked segment is deleted");
            }
            Ok(Err(reason)) => {
                assert!(!reason.is_empty(), "a corrupt segment needs a reason");
                spool.quarantine(&seg, &reason).expect("quarantine");
                assert!(
                    !dir.join(&file).exists(),
                    "a quarantined segment leaves the spool"
                );
                assert!(
                    dir.join("quarantine").join(&file).is_file(),
                    "and is kept aside"
                );
            }
        }
        assert_eq!(
            queued(&spool),
            before - 1,
            "exactly {file:?} leaves the queue"
        );
        assert_ne!(spool.next(), Some(&seg), "{file:?} is still next");
        check_bytes(&spool, dir);
    }
    assert!(spool.is_empty(), "the spool is drained");
    assert_eq!(spool.bytes(), 0);
    if let Some((name, _)) = &stored {
        assert!(stored_read, "the stored segment {name:?} was not read back");
    }
});
