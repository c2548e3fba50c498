//! Any bytes as a cursor file, through `Cursors::load`. The first byte picks the mode: even,
//! the rest of the input is the file as is; odd, the rest is the body and the target appends
//! the `sum` line a save would write (FNV-1a 64 of the body), so the parser's body checks are
//! reached. Loading must not panic or fail; a damaged file gives `LoadProblem::Corrupt` with a
//! non-empty reason, nothing loaded, and the file moved (bytes unchanged) to `<name>.corrupt`;
//! a file of the current format that loads must round-trip through a save; one of the
//! previous format must turn into cursors (`upgrade`) for the log of each of its entries.
#![no_main]

use kube_audit_shipper::tail::cursor::{Cursors, LoadProblem, Loaded, upgrade};
use kube_audit_shipper::tail::generation::Names;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NAME: &str = "cursors";

/// One directory per fuzzing process, on tmpfs (the store fsyncs every save).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(format!("/dev/shm/kas-fuzz-cursors-{}", std::process::id()));
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
fn clean(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list the fuzz directory") {
        let path = entry.expect("list the fuzz directory").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("clean the fuzz directory");
        } else {
            std::fs::remove_file(&path).expect("clean the fuzz directory");
        }
    }
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
    std::fs::write(&path, &file).expect("write the cursor file");

    let (store, loaded, problem) = Cursors::load(dir, NAME).expect("load does not fail on content");
    match problem {
        Some(LoadProblem::Missing) => panic!("the file exists but load says Missing"),
        Some(LoadProblem::Corrupt { reason, moved_to }) => {
            assert!(!reason.is_empty(), "a corrupt file needs a reason");
            assert_eq!(moved_to, dir.join(format!("{NAME}.corrupt")));
            assert!(!path.exists(), "the damaged file must be moved away");
            assert_eq!(std::fs::read(&moved_to).expect("moved file"), file);
            assert!(matches!(loaded, Loaded::Nothing));
        }
        None => match loaded {
            Loaded::Nothing => panic!("a file that loads without a problem loads something"),
            Loaded::Cursors(logs) => {
                let refs: Vec<(&Path, _)> = logs.iter().map(|(p, s)| (p.as_path(), s)).collect();
                store.save(1, &refs).expect("save");
                let (_, again, problem) = Cursors::load(dir, NAME).expect("load what was saved");
                assert!(problem.is_none(), "a saved file must load: {problem:?}");
                match again {
                    Loaded::Cursors(again) => assert_eq!(again, logs),
                    other => panic!("saved cursors load as {other:?}"),
                }
            }
            Loaded::V1 { saved_at, entries } => {
                for e in &entries {
                    if let Some(names) = Names::of(&e.path) {
                        let _ = upgrade(&entries, saved_at, &names, &[]);
                    }
                }
            }
        },
    }
});
