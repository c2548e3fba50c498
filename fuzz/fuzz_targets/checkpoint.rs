//! Any bytes as a checkpoint file, through `Checkpoints::load`. The first byte picks the mode:
//! even, the rest of the input is the file as is; odd, the rest is the body and the target
//! appends the `sum` line `render` would write (FNV-1a 64 of the body), so the parser's body
//! checks are reached. Loading must not panic or fail; a damaged file gives
//! `LoadProblem::Corrupt` with a non-empty reason, an empty store, and the file moved (bytes
//! unchanged) to `<name>.corrupt`; a file that loads must round-trip: a fresh store holding
//! the same entries, saved at a new time, loads back to equal entries (serials aside, after
//! the store's trimming of `done` entries beyond 256) and that `saved_at`.
#![no_main]

use kube_audit_shipper::tail::checkpoint::{Checkpoints, Entry, LoadProblem};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

const NAME: &str = "ckpt";

/// Mirrors the store's private `MAX_DONE`: `save` keeps at most this many `done` entries.
const MAX_DONE: usize = 256;

/// One directory per fuzzing process, on tmpfs (the store fsyncs every save).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(format!(
            "/dev/shm/kas-fuzz-checkpoint-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).expect("create the fuzz directory");
        d
    })
}

/// FNV-1a 64, as the store's checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Removes whatever an earlier iteration (or a save's temporary file) left.
fn clean(dir: &PathBuf) {
    for entry in std::fs::read_dir(dir).expect("list the fuzz directory") {
        let path = entry.expect("list the fuzz directory").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("clean the fuzz directory");
        } else {
            std::fs::remove_file(&path).expect("clean the fuzz directory");
        }
    }
}

/// What `save` keeps of `entries`: all but the oldest `done` ones beyond [`MAX_DONE`],
/// serials cleared (a load numbers entries afresh).
fn expected(entries: &[Entry]) -> Vec<Entry> {
    let done = entries.iter().filter(|e| e.done).count();
    let mut excess = done.saturating_sub(MAX_DONE);
    entries
        .iter()
        .filter(|e| {
            if e.done && excess > 0 {
                excess -= 1;
                false
            } else {
                true
            }
        })
        .map(|e| Entry {
            serial: 0,
            ..e.clone()
        })
        .collect()
}

fn without_serials(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|e| Entry {
            serial: 0,
            ..e.clone()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut f = rest.to_vec();
        f.extend_from_slice(format!("sum {:016x}\n", fnv1a64(rest)).as_bytes());
        f
    };
    let dir = dir();
    clean(dir);
    let path = dir.join(NAME);
    std::fs::write(&path, &file).expect("write the checkpoint file");

    let (store, problem) = Checkpoints::load(dir, NAME).expect("load does not fail on content");
    match problem {
        Some(LoadProblem::Missing) => panic!("the file exists but load says Missing"),
        Some(LoadProblem::Corrupt { reason, moved_to }) => {
            assert!(!reason.is_empty(), "a corrupt file needs a reason");
            assert_eq!(moved_to, dir.join(format!("{NAME}.corrupt")));
            assert!(!path.exists(), "the damaged file must be moved away");
            assert_eq!(std::fs::read(&moved_to).expect("moved file"), file);
            assert!(store.entries.is_empty() && store.saved_at.is_none());
        }
        None => {
            let loaded_at = store
                .saved_at
                .expect("a loaded store knows when it was saved");
            let want = expected(&store.entries);
            // A fresh store (the file gone: a first start) with the same entries.
            std::fs::remove_file(&path).expect("remove the loaded file");
            let (mut fresh, problem) = Checkpoints::load(dir, NAME).expect("load a missing file");
            assert!(matches!(problem, Some(LoadProblem::Missing)), "{problem:?}");
            for e in &store.entries {
                fresh.add(e.clone());
            }
            let saved_at = loaded_at.wrapping_add(1);
            fresh.save(saved_at).expect("save");
            let (again, problem) = Checkpoints::load(dir, NAME).expect("load what was saved");
            assert!(problem.is_none(), "a saved file must load: {problem:?}");
            assert_eq!(again.saved_at, Some(saved_at));
            assert_eq!(without_serials(&again.entries), want);
        }
    }
});
