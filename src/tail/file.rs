//! File identity and the byte source of one followed file.
//!
//! Identity is (device, inode) plus a fingerprint of the first bytes (DESIGN.md §3): the
//! inode says "this is the file I had open", the fingerprint guards against an inode that
//! was freed and reused by a new file, and alone it recognises a file that was compressed
//! to `.gz` (new inode, same decompressed content). Audit events carry their `auditID`
//! within the first ~150 bytes, so 1 KiB of prefix tells any two audit logs apart.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// How many leading bytes the fingerprint covers (fewer while the file is shorter).
pub const FINGERPRINT_LEN: usize = 1024;

/// A file is recognised by content alone (its `.gz`, a copy) only with at least this many
/// bytes fingerprinted: every audit log starts with the same ~80 bytes
/// (`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":…,"auditID":`); what tells
/// two files apart, the first auditID, ends within ~130. A shorter fingerprint (a file
/// seen while still empty or mid-way through its first line) only confirms an inode.
pub const MIN_CONTENT_MATCH: u32 = 200;

/// FNV-1a 64 of a file's first `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Fingerprint {
            len: bytes.len() as u32,
            hash,
        }
    }

    /// Whether it covers enough bytes to recognise a file by content alone
    /// ([`MIN_CONTENT_MATCH`]).
    pub fn identifies(&self) -> bool {
        self.len >= MIN_CONTENT_MATCH
    }
}

/// The fingerprint of `src`'s first `len` bytes, or `None` if it has fewer.
pub fn prefix(mut src: impl Read, len: usize) -> io::Result<Option<Fingerprint>> {
    let mut buf = [0u8; FINGERPRINT_LEN];
    let want = len.min(FINGERPRINT_LEN);
    let mut got = 0;
    while got < want {
        match src.read(&mut buf[got..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Fingerprint::of(&buf[..want])))
}

/// The fingerprint of an open plain file, over as much of [`FINGERPRINT_LEN`] as it has.
pub fn fingerprint_file(f: &File) -> io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_LEN];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Fingerprint::of(&buf[..got]))
}

/// Who a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub fp: Fingerprint,
}

/// (device, inode) of an open file or a path.
pub fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

pub fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Where a followed file's bytes come from: the file itself, or its gzip-compressed
/// backup read from the start (offsets are always those of the uncompressed content).
pub enum Source {
    Plain(File),
    Gz(Box<MultiGzDecoder<File>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gz(d) => d.read(buf),
        }
    }
}

impl Source {
    /// Opens `path` positioned at uncompressed `offset` (for `.gz`, by decompressing and
    /// discarding up to it). Fails with `UnexpectedEof` if the content is shorter.
    pub fn open_at(path: &Path, offset: u64) -> io::Result<Source> {
        let f = File::open(path)?;
        Source::from_file(f, is_gz(path), offset)
    }

    pub fn from_file(mut f: File, gz: bool, offset: u64) -> io::Result<Source> {
        if !gz {
            f.seek(SeekFrom::Start(offset))?;
            return Ok(Source::Plain(f));
        }
        let mut d = Box::new(MultiGzDecoder::new(f));
        let skipped = io::copy(&mut (&mut d).take(offset), &mut io::sink())?;
        if skipped < offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("compressed content ends at {skipped}, before offset {offset}"),
            ));
        }
        Ok(Source::Gz(d))
    }

    /// The plain file, when this is one.
    pub fn plain(&self) -> Option<&File> {
        match self {
            Source::Plain(f) => Some(f),
            Source::Gz(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn gz_and_plain_copies_share_a_fingerprint_and_offsets() {
        let dir = std::env::temp_dir().join(format!("kas-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        std::fs::write(dir.join("a.log"), &content).unwrap();
        let mut gz = GzEncoder::new(
            File::create(dir.join("a.log.gz")).unwrap(),
            Compression::fast(),
        );
        gz.write_all(&content).unwrap();
        gz.finish().unwrap();

        let plain = fingerprint_file(&File::open(dir.join("a.log")).unwrap()).unwrap();
        assert_eq!(plain.len as usize, FINGERPRINT_LEN);
        let from_gz = prefix(
            Source::open_at(&dir.join("a.log.gz"), 0).unwrap(),
            plain.len as usize,
        )
        .unwrap();
        assert_eq!(from_gz, Some(plain));

        let mut rest = String::new();
        Source::open_at(&dir.join("a.log.gz"), 7 * 10)
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        assert!(rest.starts_with("line 10\n"));
        assert!(Source::open_at(&dir.join("a.log.gz"), content.len() as u64 + 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
