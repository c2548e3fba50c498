//! A test of its own binary: it needs the filesystem to hand a just-freed inode to the next
//! file created, which other tests creating files in parallel would take first.
//!
//! Found by the rotation storm under load: a file recorded while empty, rotated, left and
//! pruned gave its inode to a new file, which the tailer then took for the old one and
//! skipped (248 lines silently lost).

mod support;

use kube_audit_shipper::tail::{TailConfig, TailEvent, Tailer};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::apiserver::{line, seq_of};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kas-inode-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// Polls (committing everything) until `n` lines were seen; the sequence numbers and gaps.
fn read_until(t: &mut Tailer, seqs: &mut Vec<u64>, gaps: &mut usize, n: usize) {
    let start = Instant::now();
    while seqs.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out with lines {seqs:?}"
        );
        let mut positions = Vec::new();
        t.poll(|ev| match ev {
            TailEvent::Line { buf, len, pos, .. } => {
                seqs.push(seq_of(&buf[..len]));
                positions.push(pos);
            }
            TailEvent::Gap(_) => *gaps += 1,
            TailEvent::TooLong { .. } => {}
        });
        for p in positions {
            t.commit(p);
        }
        t.wait(Duration::from_millis(20)).unwrap();
    }
}

#[test]
fn a_new_file_on_the_inode_of_a_pruned_empty_backup_is_read() {
    let logs = tmpdir("logs");
    let state = tmpdir("state");
    let current = logs.join("audit.log");
    std::fs::write(&current, b"").unwrap();
    let mut cfg = TailConfig::new(current.to_str().unwrap(), &state);
    cfg.rescan_every = Duration::from_millis(200);
    let (mut t, _) = Tailer::open(cfg).unwrap();
    let (mut seqs, mut gaps) = (Vec::new(), 0);
    t.poll(|_| {});
    // Rotated while empty, drained, left; then pruned.
    let first = logs.join("audit-2026-11-24T14-00-00.001.log");
    std::fs::rename(&current, &first).unwrap();
    append(&current, format!("{}\n", line(0, 300)).as_bytes());
    read_until(&mut t, &mut seqs, &mut gaps, 1);
    let freed = std::fs::metadata(&first).unwrap().ino();
    std::fs::remove_file(&first).unwrap();
    // A new file on the freed inode, written and rotated before the next scan.
    let mut reused = None;
    for i in 0..200 {
        let p = logs.join(format!("tmp-{i}"));
        std::fs::write(&p, b"").unwrap();
        if std::fs::metadata(&p).unwrap().ino() == freed {
            reused = Some(p);
            break;
        }
    }
    let reused = reused.expect("this test needs a filesystem that reuses a freed inode");
    let second = logs.join("audit-2026-11-24T14-00-00.002.log");
    let lines: String = (1..4).map(|seq| format!("{}\n", line(seq, 300))).collect();
    append(&reused, lines.as_bytes());
    std::fs::rename(&reused, &second).unwrap();
    read_until(&mut t, &mut seqs, &mut gaps, 4);
    assert_eq!(seqs, [0, 1, 2, 3]);
    assert_eq!(gaps, 0);
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::remove_dir_all(&state);
}
