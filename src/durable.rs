//! Durable file replacement: the one way state reaches disk (DESIGN.md §2, §6).
//!
//! `write tmp → fsync → rename → fsync dir`: after [`replace`] returns, the new content is
//! on disk under its final name, and a crash at any point before leaves the old content
//! intact. Files are created with mode 0600: checkpoints and spool segments can name
//! security-relevant paths and hold audit data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `dir/name` with `bytes`, durably. The temporary file is `dir/.name.tmp`; it is
/// removed again when writing or renaming fails (a full disk must not keep a half-written copy), and the
/// error names the file.
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(at(&tmp, e));
    }
    crate::fault::crash_point("state_file_synced");
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(at(&target, e));
    }
    sync_dir(dir)
}

/// The error, with the path it happened at (same kind).
pub fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at(dir, e))
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_atomically_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("kas-durable-{}", std::process::id()));
        create_dir(&dir).unwrap();
        replace(&dir, "state", b"one").unwrap();
        replace(&dir, "state", b"two").unwrap();
        assert_eq!(fs::read(dir.join("state")).unwrap(), b"two");
        let mode = fs::metadata(dir.join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join(".state.tmp").exists());
        // A failed write leaves neither a temporary file nor a changed target, and says where.
        fs::create_dir(dir.join("occupied")).unwrap();
        let e = replace(&dir, "occupied", b"three").unwrap_err();
        assert!(e.to_string().contains("occupied"), "{e}");
        assert!(!dir.join(".occupied.tmp").exists());
        assert!(dir.join("occupied").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
