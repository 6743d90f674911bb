//! Small whole-file snapshots (the credential cache, the local accounts): versioned,
//! checksummed, and replaced atomically so a reader sees the old file or the new one, never a
//! torn mix, even after power loss.
//!
//! ```text
//! magic "GWSNAP1\0" (8) | kind (4) | version u32 LE | payload len u64 LE | crc u32 LE | payload
//! crc = CRC-32 (IEEE) of kind | version | len | payload
//! ```
//!
//! [`write`] writes `<path>.tmp` (mode 0600), fsyncs it, renames it over `path` and fsyncs the
//! directory. [`read`] returns `Ok(None)` when the file does not exist and
//! [`StoreError::SnapshotCorrupt`] when it is truncated, damaged, of another kind or of a
//! version newer than the caller understands.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::StoreError;

const MAGIC: &[u8; 8] = b"GWSNAP1\0";
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4;

/// A snapshot read back: the version it was written with, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u32,
    pub payload: Vec<u8>,
}

fn crc(kind: &[u8; 4], version: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(&version.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The bytes of a snapshot file.
pub fn encode(kind: &[u8; 4], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(kind);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc(kind, version, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses snapshot bytes; `Err(reason)` when they are not a whole, intact snapshot of `kind`
/// with a version of at most `max_version`.
pub fn decode(bytes: &[u8], kind: &[u8; 4], max_version: u32) -> Result<Snapshot, &'static str> {
    let header = bytes.get(..HEADER_LEN).ok_or("shorter than the header")?;
    if &header[..8] != MAGIC {
        return Err("not a gatewayd snapshot (bad magic)");
    }
    if &header[8..12] != kind {
        return Err("a snapshot of another kind");
    }
    let word = |r: std::ops::Range<usize>| header.get(r).unwrap_or_default();
    let version = u32::from_le_bytes(word(12..16).try_into().map_err(|_| "bad header")?);
    let len = u64::from_le_bytes(word(16..24).try_into().map_err(|_| "bad header")?);
    let stored_crc = u32::from_le_bytes(word(24..28).try_into().map_err(|_| "bad header")?);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err("truncated or extended: payload length does not match the header");
    }
    if crc(kind, version, payload) != stored_crc {
        return Err("checksum mismatch");
    }
    if version > max_version {
        return Err("written by a newer version of gatewayd");
    }
    Ok(Snapshot { version, payload: payload.to_vec() })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Atomically replaces `path` with a snapshot of `payload`: temp file (0600), fsync, rename,
/// fsync of the directory. The directory is created (0700 is left to the data dir's owner).
pub fn write(path: &Path, kind: &[u8; 4], version: u32, payload: &[u8]) -> Result<(), StoreError> {
    let err = |source: io::Error| StoreError::SnapshotWrite { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(err)?;
    }
    let tmp = tmp_path(path);
    let bytes = encode(kind, version, payload);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        // A temp file left by a crash keeps its old mode: force 0600.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Reads the snapshot at `path`: `Ok(None)` if there is none, an error if it is damaged.
pub fn read(path: &Path, kind: &[u8; 4], max_version: u32) -> Result<Option<Snapshot>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::SnapshotRead { path: path.to_owned(), source }),
    };
    decode(&bytes, kind, max_version)
        .map(Some)
        .map_err(|reason| StoreError::SnapshotCorrupt { path: path.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KIND: &[u8; 4] = b"test";

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/snap.bin");
        write(&path, KIND, 3, b"hello").unwrap();
        let snap = read(&path, KIND, 3).unwrap().unwrap();
        assert_eq!(snap, Snapshot { version: 3, payload: b"hello".to_vec() });
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp_path(&path).exists(), "the temp file is renamed away");
        write(&path, KIND, 3, b"second").unwrap();
        assert_eq!(read(&path, KIND, 3).unwrap().unwrap().payload, b"second");
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&dir.path().join("nothing"), KIND, 1).unwrap(), None);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let bytes = encode(KIND, 1, b"some payload bytes");
        assert!(decode(&bytes, KIND, 1).is_ok());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], KIND, 1).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b, KIND, 1).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn other_kind_and_newer_version_are_refused() {
        let bytes = encode(KIND, 2, b"x");
        assert!(decode(&bytes, b"othr", 2).is_err());
        assert!(decode(&bytes, KIND, 1).is_err());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.bin");
        write(&path, KIND, 1, b"payload").unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 2);
        fs::write(&path, bytes).unwrap();
        let err = read(&path, KIND, 1).unwrap_err();
        assert!(matches!(err, StoreError::SnapshotCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("snap.bin"), "{err}");
    }
}
