//! The spool's contract (DESIGN.md §2, §6): durable segments, critical before bulk and
//! oldest first, a byte cap that evicts bulk (counted) and then refuses (backpressure),
//! corrupt segments quarantined, disk errors leaving nothing behind, 413 splits in place,
//! refused events dead-lettered to `refused/` up to its cap and resent in their place.

use flate2::read::MultiGzDecoder;
use kube_audit_shipper::batch::{BatchLimits, Batcher, IntakeFormat, Sealed, escape_event};
use kube_audit_shipper::spool::{Class, Spool, Stored};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kas-spool-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A sealed batch of `n` events named `{tag}-{i}`, each about `size` bytes.
fn batch(class: Class, tag: &str, n: usize, size: usize) -> Sealed {
    let limits = BatchLimits {
        max_events: 100_000,
        max_bytes: usize::MAX,
        ..BatchLimits::default()
    };
    let mut b = Batcher::new(limits);
    let now = Instant::now();
    for i in 0..n {
        // Incompressible-ish padding so sizes on disk are predictable.
        let pad: String = (0..size)
            .map(|j| (b'a' + ((i * 31 + j * 17) % 26) as u8) as char)
            .collect();
        let ts = Some(1_795_532_127_000_000 + i as i64);
        assert!(
            b.add(
                class,
                format!("{{\"e\":\"{tag}-{i}\",\"p\":\"{pad}\"}}").as_bytes(),
                ts,
                now
            )
            .unwrap()
            .is_none()
        );
    }
    b.seal(class).unwrap().unwrap()
}

fn events(spool: &Spool, seg: &kube_audit_shipper::spool::Segment) -> Vec<String> {
    let body = spool.read(seg).unwrap().unwrap();
    let mut text = String::new();
    MultiGzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    text.split('\n')
        .map(|l| l[6..l.find("\",").unwrap()].to_string())
        .collect()
}

fn written(s: Stored) -> kube_audit_shipper::spool::Segment {
    match s {
        Stored::Written(seg) => seg,
        Stored::Full => panic!("spool full"),
    }
}

#[test]
fn critical_first_oldest_first_and_it_survives_a_restart() {
    let dir = tmpdir("order");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    spool.store(&batch(Class::Bulk, "b1", 3, 10)).unwrap();
    spool.store(&batch(Class::Critical, "c1", 2, 10)).unwrap();
    spool.store(&batch(Class::Bulk, "b2", 1, 10)).unwrap();
    spool.store(&batch(Class::Critical, "c2", 1, 10)).unwrap();
    // An unfinished write from a crash, and a stray file.
    std::fs::write(
        dir.join("tmp").join("00000000000000000099-c-none-1.gz"),
        b"partial",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), b"?").unwrap();
    drop(spool);

    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.join("tmp")).unwrap().count(),
        0,
        "tmp cleaned"
    );
    assert!(dir.join("quarantine").join("notes.txt").exists());
    let mut order = Vec::new();
    while let Some(seg) = spool.next().cloned() {
        let mode = std::fs::metadata(dir.join(seg.file_name()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        order.push(events(&spool, &seg)[0].clone());
        spool.ack(&seg).unwrap();
    }
    assert_eq!(order, ["c1-0", "c2-0", "b1-0", "b2-0"]);
    assert!(spool.is_empty() && spool.bytes() == 0);
    // The next batch after a restart continues the sequence (order survives restarts).
    let seg = written(spool.store(&batch(Class::Bulk, "b3", 1, 10)).unwrap());
    assert!(seg.order.as_str() > "00000000000000000003");
}

#[test]
fn the_cap_evicts_oldest_bulk_counted_then_pushes_back() {
    let dir = tmpdir("cap");
    let one = batch(Class::Bulk, "probe", 20, 200).gz.len() as u64;
    // Room for about five segments.
    let mut spool = Spool::open(&dir, one * 5 + one / 2).unwrap();
    for i in 0..4 {
        written(
            spool
                .store(&batch(Class::Bulk, &format!("b{i}"), 20, 200))
                .unwrap(),
        );
    }
    written(spool.store(&batch(Class::Critical, "c0", 20, 200)).unwrap());
    // Full: each new critical batch evicts the oldest bulk one.
    for i in 1..5 {
        written(
            spool
                .store(&batch(Class::Critical, &format!("c{i}"), 20, 200))
                .unwrap(),
        );
    }
    assert_eq!(spool.segments(Class::Bulk), 0);
    assert_eq!(
        (spool.stats.evicted_segments, spool.stats.evicted_events),
        (4, 80)
    );
    let evicted: Vec<u32> = spool.take_evicted().iter().map(|s| s.events).collect();
    assert_eq!(evicted, [20, 20, 20, 20]);
    // Only critical data left: refused, nothing written, nothing lost.
    let files_before = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        spool.store(&batch(Class::Critical, "c5", 20, 200)).unwrap(),
        Stored::Full
    );
    assert_eq!(
        spool.store(&batch(Class::Bulk, "b9", 20, 200)).unwrap(),
        Stored::Full
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), files_before);
    assert!(spool.bytes() <= one * 5 + one / 2);
    // Acknowledging frees room again.
    let first = spool.next().cloned().unwrap();
    assert_eq!(events(&spool, &first)[0], "c0-0");
    spool.ack(&first).unwrap();
    written(spool.store(&batch(Class::Critical, "c5", 20, 200)).unwrap());
}

#[test]
fn a_corrupt_segment_is_quarantined_and_the_queue_goes_on() {
    let dir = tmpdir("corrupt");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    let bad = written(
        spool
            .store(&batch(Class::Critical, "bad", 50, 100))
            .unwrap(),
    );
    written(
        spool
            .store(&batch(Class::Critical, "good", 5, 100))
            .unwrap(),
    );
    let path = dir.join(bad.file_name());
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    drop(spool);

    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    let seg = spool.next().cloned().unwrap();
    let reason = spool.read(&seg).unwrap().expect_err("corruption detected");
    spool.quarantine(&seg, &reason).unwrap();
    assert_eq!(spool.stats.quarantined, 1);
    assert!(dir.join("quarantine").join(bad.file_name()).exists());
    let next = spool.next().cloned().unwrap();
    assert_eq!(events(&spool, &next)[0], "good-0");
}

#[test]
fn a_full_disk_leaves_nothing_behind_and_recovers() {
    let dir = tmpdir("enospc");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    spool.set_write_fault(Some(Box::new(|_| {
        Err(std::io::Error::from_raw_os_error(libc_enospc()))
    })));
    let b = batch(Class::Critical, "x", 10, 100);
    let err = spool.store(&b).unwrap_err();
    // The error keeps its kind and says which file it was writing.
    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(
        err.to_string()
            .contains(&dir.join("tmp").display().to_string()),
        "{err}"
    );
    assert!(spool.is_empty());
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0
    );
    // Space again: the same batch (still the caller's) is stored.
    spool.set_write_fault(None);
    let seg = written(spool.store(&b).unwrap());
    assert_eq!(events(&spool, &seg).len(), 10);
}

fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux
}

#[test]
fn split_replaces_a_segment_by_halves_in_its_place() {
    let dir = tmpdir("split");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    let big = written(spool.store(&batch(Class::Bulk, "s", 5, 10)).unwrap());
    written(spool.store(&batch(Class::Bulk, "later", 1, 10)).unwrap());
    let (a, b) = spool.split(&big, 3).unwrap().unwrap();
    assert_eq!((a.events, b.events), (2, 3));
    assert!(!dir.join(big.file_name()).exists());
    let (aa, ab) = spool.split(&a, 3).unwrap().unwrap();
    let mut order = Vec::new();
    while let Some(seg) = spool.next().cloned() {
        order.extend(events(&spool, &seg));
        if seg.events == 1 {
            assert!(
                spool.split(&seg, 3).unwrap().is_none(),
                "single events are not split"
            );
        }
        spool.ack(&seg).unwrap();
    }
    assert_eq!(order, ["s-0", "s-1", "s-2", "s-3", "s-4", "later-0"]);
    assert_eq!((aa.events, ab.events), (1, 1));
    // Reopened, the split names still sort in place.
    drop(spool);
}

#[test]
fn odd_names_and_times_found_by_fuzzing_never_stop_or_confuse_the_spool() {
    // Each case was a fuzz/fuzz_targets/spool.rs finding (fuzz/regressions/spool/).
    use std::os::unix::ffi::OsStrExt;
    let dir = tmpdir("odd-names");
    let gz = |text: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    // An event stamped before 1970: its segment is named with a negative time and must be
    // read back after a restart, not quarantined.
    let mut old = Batcher::new(BatchLimits::default());
    old.add(
        Class::Critical,
        b"{\"e\":\"1969\"}",
        Some(-1_000_000_000_000),
        Instant::now(),
    )
    .unwrap();
    let sealed = old.seal(Class::Critical).unwrap().unwrap();
    let stored = {
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        written(spool.store(&sealed).unwrap())
    };
    assert!(stored.file_name().contains("--1000000000000-"));
    // Strays: a non-UTF-8 name longer than 255 bytes once made lossy, a name with a
    // non-canonical number, one that shares the stored segment's order, the largest order.
    let mut long = vec![0xda];
    long.extend([0xff; 86]);
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(&long)), b"x").unwrap();
    let padded = "00000000000000000006-b-17342800000000-002.gz";
    std::fs::write(dir.join(padded), gz("{\"e\":\"padded\"}")).unwrap();
    let same_order = format!("{}-b-none-1.gz", stored.order);
    std::fs::write(dir.join(&same_order), gz("{\"e\":\"same-order\"}")).unwrap();
    let largest = "18446744073709551615-b-none-1.gz";
    std::fs::write(dir.join(largest), gz("{\"e\":\"largest\"}")).unwrap();

    let mut spool = Spool::open(&dir, 1 << 20).unwrap();
    assert!(dir.join("quarantine").join(padded).exists());
    assert!(dir.join("quarantine").join(largest).exists());
    let mut sent = Vec::new();
    while let Some(seg) = spool.next().cloned() {
        let on_disk: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".gz")))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(spool.bytes(), on_disk);
        let body = spool.read(&seg).unwrap().unwrap();
        let mut text = String::new();
        MultiGzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        sent.push(text);
        spool.ack(&seg).unwrap();
    }
    assert_eq!(spool.bytes(), 0);
    sent.sort();
    assert_eq!(sent, ["{\"e\":\"1969\"}", "{\"e\":\"same-order\"}"]);
    // New segments still get an order after the largest one seen.
    let mut b = Batcher::new(BatchLimits::default());
    b.add(Class::Bulk, b"{}", None, Instant::now()).unwrap();
    spool.store(&b.seal(Class::Bulk).unwrap().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An `/array` batch of `n` events `{tag}-{i}`, with the key `key`.
fn array_batch(class: Class, tag: &str, n: usize, key: &str) -> Sealed {
    let mut b = Batcher::with_format(BatchLimits::default(), IntakeFormat::Array, key);
    let mut escaped = Vec::new();
    for i in 0..n {
        escape_event(
            &mut escaped,
            format!("{{\"e\":\"{tag}-{i}\",\"q\":\"\\\"{{\"}}").as_bytes(),
        );
        b.add(
            class,
            &escaped,
            Some(1_795_532_127_000_000 + i as i64),
            Instant::now(),
        )
        .unwrap();
    }
    b.seal(class).unwrap().unwrap()
}

/// The entries of an `/array` segment: (key, event's `e`, time).
fn array_events(
    spool: &Spool,
    seg: &kube_audit_shipper::spool::Segment,
) -> Vec<(String, String, String)> {
    let body = spool.read(seg).unwrap().unwrap();
    let mut text = String::new();
    MultiGzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    entries
        .iter()
        .map(|e| {
            let event: serde_json::Value =
                serde_json::from_str(e["json"].as_str().unwrap()).unwrap();
            (
                e["intake_key"].as_str().unwrap().to_string(),
                event["e"].as_str().unwrap().to_string(),
                e["timestamp"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn array_segments_keep_their_form_across_a_restart_split_and_rekey() {
    let dir = tmpdir("array");
    let seg = {
        let mut spool = Spool::open(&dir, 1 << 30).unwrap();
        written(
            spool
                .store(&array_batch(Class::Critical, "a", 5, "old-key"))
                .unwrap(),
        )
    };
    assert!(
        seg.file_name().ends_with("-5.array.gz"),
        "{}",
        seg.file_name()
    );
    let mode = std::fs::metadata(dir.join(seg.file_name()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the body holds the key");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    assert_eq!(spool.next(), Some(&seg), "found again, as /array");
    assert_eq!(seg.format, IntakeFormat::Array);
    // Split: halves of whole entries, still /array, each entry with its own time.
    let (a, b) = spool.split(&seg, 3).unwrap().unwrap();
    assert_eq!((a.format, a.events, b.events), (IntakeFormat::Array, 2, 3));
    let first = array_events(&spool, &a);
    assert_eq!(
        first[1],
        (
            "old-key".into(),
            "a-1".into(),
            "2026-11-24T14:55:27.000001Z".into()
        )
    );
    // Rekey: every entry gets the new key, nothing else changes.
    let before = array_events(&spool, &b);
    let b2 = spool.rekey(&b, br#""new\"key""#, 3).unwrap();
    assert_eq!(b2.file_name(), b.file_name());
    let after = array_events(&spool, &b2);
    assert_eq!(after.len(), 3);
    for (x, y) in before.iter().zip(&after) {
        assert_eq!((y.0.as_str(), &y.1, &y.2), ("new\"key", &x.1, &x.2));
    }
    let on_disk = std::fs::metadata(dir.join(b2.file_name())).unwrap().len();
    assert_eq!(b2.bytes, on_disk);
    assert_eq!(spool.bytes(), a.bytes + b2.bytes);
    // A plain segment is not rekeyed (its key is in a header).
    let plain = written(spool.store(&batch(Class::Bulk, "p", 2, 10)).unwrap());
    assert!(spool.rekey(&plain, b"\"k\"", 3).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_event_is_kept_in_refused_up_to_its_cap_and_resent_in_its_place() {
    use kube_audit_shipper::spool::{DeadLettered, Refusal, queued, refused};
    let dir = tmpdir("refused");
    let mut spool = Spool::open(&dir, 1 << 30).unwrap();
    let a = written(spool.store(&batch(Class::Critical, "a", 1, 2000)).unwrap());
    let b = written(spool.store(&batch(Class::Bulk, "b", 1, 2000)).unwrap());
    let c = written(spool.store(&batch(Class::Bulk, "c", 3, 100)).unwrap());
    // The sender's choices: the first not held aside, the i-th wrapping around.
    assert_eq!(spool.next_except(std::slice::from_ref(&a)), Some(&b));
    assert_eq!(spool.nth_wrapping(4), Some(&b));
    let why = Refusal::new(400, b"{\"message\":\"bad event\"}", "k");
    spool.set_refused_cap(a.bytes + b.bytes / 2);
    assert_eq!(spool.dead_letter(&a, &why).unwrap(), DeadLettered::Kept);
    // Past the cap: not kept (deleted), counted.
    assert_eq!(spool.dead_letter(&b, &why).unwrap(), DeadLettered::Dropped);
    assert_eq!(spool.stats.dead_lettered, 2);
    assert_eq!(spool.stats.dead_letters_dropped, 1);
    assert_eq!(spool.refused_bytes(), a.bytes);
    assert_eq!(spool.next(), Some(&c));
    assert!(!spool.contains(&a) && !spool.contains(&b));
    drop(spool);
    // What `spool list` reads, without changing anything.
    assert_eq!(queued(&dir).unwrap(), vec![c.clone()]);
    let listed = refused::list(&dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].segment, a);
    assert_eq!(listed[0].why.as_ref(), Some(&why));
    // A restart counts the folder's bytes and does not take its files for strays.
    let spool = Spool::open(&dir, 1 << 30).unwrap();
    assert_eq!(spool.refused_bytes(), a.bytes);
    assert_eq!(spool.stats.quarantined, 0);
    assert_eq!(spool.refused_cap(), (1 << 30) / 8);
    drop(spool);
    // Resent: back in the queue at its old place (critical, first).
    refused::resend(&dir, &a).unwrap();
    let spool = Spool::open(&dir, 1 << 30).unwrap();
    assert_eq!(spool.next(), Some(&a));
    assert_eq!(events(&spool, &a), ["a-0"]);
    assert_eq!(spool.refused_bytes(), 0);
    assert!(refused::list(&dir).unwrap().is_empty());
    let mode = std::fs::metadata(dir.join(refused::DIR))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "refused/ is private: {mode:o}");
}
