//! The acknowledgement reserve: a file of fixed size (`acks.reserve`, [`RESERVE_LEN`]) written
//! full of zeros once, then only ever overwritten in place, so writing to it never needs a
//! block the filesystem may not have. When the disk is full and acknowledgements cannot be
//! appended to the head segment, the committer writes them here instead; the next successful
//! write to the head carries a full ack checkpoint, and the reserve is emptied again.
//!
//! ```text
//! header  "GWACKRSV" | generation u64 LE                                     16 bytes
//! record  the segment framing, kind 2 (acks), seq = the generation            17 + 16 n bytes
//! ```
//!
//! Records are read from the header on, up to the first that is not whole, not an ack record
//! or of another generation. Emptying the reserve writes a header with the next generation:
//! one 16-byte overwrite, after which every older record is ignored.

use std::{
    fs::{File, OpenOptions},
    io,
    ops::Range,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::{
    faults::{self, FaultPoint, Faults},
    format::{self, KIND_ACKS},
};

pub(crate) const RESERVE_FILE: &str = "acks.reserve";
/// Size of the reserve: an ack checkpoint of about 8,000 ranges fits.
pub(crate) const RESERVE_LEN: u64 = 128 * 1024;
const MAGIC: &[u8; 8] = b"GWACKRSV";
const HEADER_LEN: u64 = 16;

/// The reserve as the committer holds it.
#[derive(Debug)]
pub(crate) struct Reserve {
    /// `None`: it could not be created (the disk was full at the first open).
    file: Option<File>,
    path: PathBuf,
    capacity: u64,
    generation: u64,
    /// Where the next record goes.
    pos: u64,
}

/// What the reserve held at open.
#[derive(Debug, Default)]
pub(crate) struct ReservedAcks {
    pub ranges: Vec<Range<u64>>,
    /// One above the highest acknowledged seq it names (0 if none).
    pub seq_end: u64,
}

impl Reserve {
    /// Opens the reserve in `dir`, creating it (full size, synced) if it is missing. Never
    /// fails: a reserve that cannot be created or read is reported and done without (the
    /// outbox then loses only the protection it gives: acks kept in memory during a disk-full
    /// episode may be sent again after a crash).
    pub fn open(dir: &Path, faults: &Faults) -> (Reserve, ReservedAcks) {
        let path = dir.join(RESERVE_FILE);
        let mut reserve = Reserve { file: None, path, capacity: 0, generation: 1, pos: HEADER_LEN };
        match std::fs::read(&reserve.path) {
            Ok(buf) => {
                let acks = reserve.adopt(&buf);
                (reserve, acks)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Err(e) = reserve.create(faults) {
                    warn!(
                        file = %reserve.path.display(),
                        cause = %e,
                        "cannot create the acknowledgement reserve; acknowledgements may be sent again after a crash while the disk is full"
                    );
                    let _ = std::fs::remove_file(&reserve.path);
                }
                (reserve, ReservedAcks::default())
            }
            Err(e) => {
                warn!(file = %reserve.path.display(), cause = %e, "cannot read the acknowledgement reserve; going without it");
                (reserve, ReservedAcks::default())
            }
        }
    }

    fn create(&mut self, faults: &Faults) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut bytes = vec![0u8; usize::try_from(RESERVE_LEN).unwrap_or(usize::MAX)];
        bytes[..HEADER_LEN as usize].copy_from_slice(&header(self.generation));
        faults::write_at(faults, FaultPoint::ReserveWrite, &file, &bytes, 0)?;
        file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        info!(file = %self.path.display(), bytes = RESERVE_LEN, "acknowledgement reserve created");
        self.capacity = RESERVE_LEN;
        self.file = Some(file);
        Ok(())
    }

    /// Takes an existing reserve file: its generation, its records, its size.
    fn adopt(&mut self, buf: &[u8]) -> ReservedAcks {
        let mut acks = ReservedAcks::default();
        let file = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                warn!(file = %self.path.display(), cause = %e, "cannot open the acknowledgement reserve; going without it");
                return acks;
            }
        };
        self.capacity = buf.len() as u64;
        if self.capacity < HEADER_LEN {
            return acks; // too small to hold anything: unusable
        }
        if buf.get(..8) != Some(MAGIC.as_slice()) {
            warn!(file = %self.path.display(), "acknowledgement reserve header damaged; starting it afresh");
            // in place: the file's blocks exist already
            if let Err(e) = std::os::unix::fs::FileExt::write_all_at(&file, &header(1), 0) {
                warn!(file = %self.path.display(), cause = %e, "cannot repair the acknowledgement reserve; going without it");
                return acks;
            }
            self.file = Some(file);
            return acks;
        }
        self.file = Some(file);
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&buf[8..16]);
        self.generation = u64::from_le_bytes(generation);
        let mut offset = HEADER_LEN as usize;
        while let Some(frame) = format::parse_at(buf, offset, self.generation) {
            if frame.kind != KIND_ACKS || frame.seq != self.generation {
                break;
            }
            for r in format::ack_ranges(frame.body) {
                acks.seq_end = acks.seq_end.max(r.end);
                acks.ranges.push(r);
            }
            offset = frame.offset + frame.len();
        }
        self.pos = offset as u64;
        acks
    }

    /// Whether it holds acknowledgements not yet known to be in a segment.
    pub fn holds_acks(&self) -> bool {
        self.pos > HEADER_LEN
    }

    /// The generation its records must carry (their seq field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes `record` (an ack record of this generation) after the ones it holds, synced.
    /// `Ok(false)`: there is no reserve or no room left in it.
    pub fn append(&mut self, record: &[u8], faults: &Faults) -> io::Result<bool> {
        let at = self.pos;
        self.write(record, at, faults)
    }

    /// Replaces everything it holds with `records` (a full checkpoint), synced.
    /// `Ok(false)`: there is no reserve or `records` does not fit.
    pub fn rewrite(&mut self, records: &[u8], faults: &Faults) -> io::Result<bool> {
        self.write(records, HEADER_LEN, faults)
    }

    fn write(&mut self, bytes: &[u8], at: u64, faults: &Faults) -> io::Result<bool> {
        let Some(file) = &self.file else { return Ok(false) };
        if at + bytes.len() as u64 > self.capacity {
            return Ok(false);
        }
        faults::write_at(faults, FaultPoint::ReserveWrite, file, bytes, at)?;
        faults::sync_data(faults, FaultPoint::ReserveWrite, file)?;
        self.pos = at + bytes.len() as u64;
        Ok(true)
    }

    /// Empties it (its acknowledgements are now in a segment, or no longer needed): a header
    /// with the next generation, synced.
    pub fn reset(&mut self, faults: &Faults) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.holds_acks() && self.pos == HEADER_LEN {
            return Ok(());
        }
        let next = self.generation + 1;
        faults::write_at(faults, FaultPoint::ReserveWrite, file, &header(next), 0)?;
        faults::sync_data(faults, FaultPoint::ReserveWrite, file)?;
        self.generation = next;
        self.pos = HEADER_LEN;
        Ok(())
    }

    /// Bytes the reserve occupies on disk.
    pub fn capacity(&self) -> u64 {
        if self.file.is_some() { self.capacity } else { 0 }
    }
}

fn header(generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&generation.to_le_bytes());
    h
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one-range ack lists are the point
mod tests {
    use super::*;

    fn record(generation: u64, ranges: &[Range<u64>]) -> Vec<u8> {
        let mut buf = Vec::new();
        format::append_ack_record(&mut buf, generation, ranges);
        buf
    }

    #[test]
    fn keeps_acks_across_reopen_until_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut r, acks) = Reserve::open(tmp.path(), &None);
        assert!(acks.ranges.is_empty());
        assert_eq!(r.capacity(), RESERVE_LEN);
        assert!(r.append(&record(r.generation(), &[1..5]), &None).unwrap());
        assert!(r.append(&record(r.generation(), &[7..9]), &None).unwrap());
        drop(r);
        let (mut r, acks) = Reserve::open(tmp.path(), &None);
        assert_eq!(acks.ranges, [1..5, 7..9]);
        assert_eq!(acks.seq_end, 9);
        assert!(r.holds_acks());
        r.reset(&None).unwrap();
        // a record of the old generation after the header is ignored from now on
        drop(r);
        let (r, acks) = Reserve::open(tmp.path(), &None);
        assert!(acks.ranges.is_empty() && !r.holds_acks(), "{acks:?}");
        assert_eq!(std::fs::metadata(tmp.path().join(RESERVE_FILE)).unwrap().len(), RESERVE_LEN);
    }

    #[test]
    fn refuses_what_does_not_fit_and_rewrites_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut r, _) = Reserve::open(tmp.path(), &None);
        let g = r.generation();
        let big: Vec<Range<u64>> = (0..9000u64).map(|i| i * 3..i * 3 + 1).collect();
        assert!(!r.append(&record(g, &big), &None).unwrap(), "9,000 ranges do not fit");
        assert!(r.append(&record(g, &[1..2]), &None).unwrap());
        assert!(r.rewrite(&record(g, &[1..20]), &None).unwrap());
        drop(r);
        let (_, acks) = Reserve::open(tmp.path(), &None);
        assert_eq!(acks.ranges, [1..20]);
    }

    #[test]
    fn a_torn_record_ends_what_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut r, _) = Reserve::open(tmp.path(), &None);
        let g = r.generation();
        assert!(r.append(&record(g, &[1..2]), &None).unwrap());
        let plan = Some(crate::FaultPlan::new(|_| Some(crate::faults::Fault::ShortWrite)));
        assert!(r.append(&record(g, &[5..6]), &plan).is_err());
        drop(r);
        let (_, acks) = Reserve::open(tmp.path(), &None);
        assert_eq!(acks.ranges, [1..2]);
    }

    #[test]
    fn a_full_disk_at_creation_means_no_reserve_and_no_stray_file() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = Some(crate::FaultPlan::new(|_| Some(crate::faults::Fault::ShortWrite)));
        let (mut r, _) = Reserve::open(tmp.path(), &plan);
        assert_eq!(r.capacity(), 0);
        assert!(!r.append(&record(1, &[1..2]), &None).unwrap());
        assert!(!tmp.path().join(RESERVE_FILE).exists());
    }
}
