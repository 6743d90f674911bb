//! Freeing space and keeping acknowledgements when there is none: deleting fully acknowledged
//! segments, cutting a fully acknowledged head back to its header, ack checkpoints, the
//! reserve, and dropping the oldest segments under `when_full = "drop-oldest"`.

use std::ops::Range;

use tracing::{debug, warn};

use super::{Committer, error_chain, write_head};
use crate::{
    StoreError,
    faults::{self, FaultPoint},
    format::{self, SEGMENT_HEADER_LEN},
    index::SegmentInfo,
    recover::{self, is_out_of_space},
    shared::{Counters, lock},
};

const HEADER_LEN: u64 = SEGMENT_HEADER_LEN as u64;

impl Committer {
    /// Frees what is fully acknowledged. Segments other than the head whose records are all
    /// acknowledged are deleted; if an older segment stays, the acks that lived in them are
    /// first recorded again (a checkpoint). The head is cut back to its header once nothing
    /// in it is live, when it holds a quarter of a segment or the disk ran short. Needs no
    /// free space: deleting and truncating never allocate, and a checkpoint that does not fit
    /// on the disk goes to the reserve.
    pub(super) fn reclaim(&mut self) -> Result<(), StoreError> {
        let finished = lock(&self.shared.index).take_finished_segments(self.head.base);
        if !finished.is_empty() {
            let oldest = lock(&self.shared.index).oldest_segment();
            if finished.iter().any(|(base, _)| oldest.is_some_and(|o| o < *base)) {
                self.persist_checkpoint()?;
            }
            for (_, seg) in &finished {
                self.delete(seg)?;
            }
            recover::sync_dir(&self.shared.dir)?;
        }
        let worth_it = self.short_of_space
            || self.head.len >= (self.shared.segment_target / 4).max(HEADER_LEN + 1);
        if self.head.len > HEADER_LEN
            && worth_it
            && lock(&self.shared.index).segment_live(self.head.base) == 0
        {
            self.reclaim_head()?;
        }
        Ok(())
    }

    /// Cuts the head, whose records are all acknowledged, back to its header, then records
    /// the acks it held that may still matter (and the highest seq written) in a checkpoint.
    fn reclaim_head(&mut self) -> Result<(), StoreError> {
        let faults = &self.shared.faults;
        if let Err(e) = faults::set_len(faults, &self.head.file, HEADER_LEN) {
            warn!(segment = %self.head.path.display(), cause = %e, "cannot cut the acknowledged head segment back; trying again later");
            return if faults::is_no_space(&e) {
                Ok(())
            } else {
                Err(StoreError::Truncate {
                    path: self.head.path.clone(),
                    len: HEADER_LEN,
                    source: e,
                })
            };
        }
        let freed = self.head.len - HEADER_LEN;
        Counters::sub(&self.shared.counters.disk_bytes, freed);
        debug!(segment = %self.head.path.display(), bytes = freed, "acknowledged head segment cut back");
        self.head.len = HEADER_LEN;
        self.good_len = HEADER_LEN;
        self.cut_owed = None;
        self.dirty = true; // the truncation is synced with the checkpoint
        self.short_of_space = false;
        self.persist_checkpoint()
    }

    /// Records every ack the index knows for the segments on disk (one checkpoint covering
    /// the oldest segment's base up to the last written seq), in the head, synced. If the
    /// disk has no room, in the reserve; if that cannot hold it either, it stays owed.
    pub(super) fn persist_checkpoint(&mut self) -> Result<(), StoreError> {
        let ranges = lock(&self.shared.index).checkpoint_ranges(self.last_written + 1);
        self.scratch.clear();
        format::append_ack_records(&mut self.scratch, self.last_written, &ranges);
        self.good_len = self.head.len;
        let mut written = self.ensure_cut();
        if written.is_ok() {
            let point = FaultPoint::AckWrite;
            written = write_head(&self.shared, &mut self.head, &self.scratch, point);
            if written.is_ok() {
                self.dirty = true;
                written = self.sync();
            }
        }
        match written {
            Ok(()) => {
                self.good_len = self.head.len;
                self.checkpoint_owed = false;
                self.reset_reserve();
                Ok(())
            }
            Err(e) if is_out_of_space(&e) => {
                debug!(cause = %error_chain(&e), "no room for an ack checkpoint in the head");
                self.cut_back()?;
                self.checkpoint_aside(&ranges);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The acknowledgements of a refused batch: appended to the reserve; if it is full, the
    /// reserve is rewritten with a full checkpoint; if even that does not fit, they stay in
    /// memory (owed), and only a crash before the next successful commit sends them again.
    pub(super) fn keep_acks_aside(&mut self) {
        if !self.checkpoint_owed {
            format::to_ranges(&mut self.batch.acks, &mut self.ranges);
            let mut record = Vec::with_capacity(17 + 16 * self.ranges.len());
            format::append_ack_records(&mut record, self.reserve.generation(), &self.ranges);
            match self.reserve.append(&record, &self.shared.faults) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(cause = %e, "cannot write acknowledgements to the reserve"),
            }
        }
        let ranges = lock(&self.shared.index).checkpoint_ranges(self.last_written + 1);
        self.checkpoint_aside(&ranges);
    }

    /// Replaces the reserve's content with a full checkpoint.
    fn checkpoint_aside(&mut self, ranges: &[Range<u64>]) {
        let mut records = Vec::with_capacity(17 + 16 * ranges.len());
        format::append_ack_records(&mut records, self.reserve.generation(), ranges);
        match self.reserve.rewrite(&records, &self.shared.faults) {
            Ok(true) => self.checkpoint_owed = false,
            Ok(false) => {
                if !self.checkpoint_owed {
                    warn!(
                        ranges = ranges.len(),
                        "acknowledgements do not fit the reserve: kept in memory until the disk has room (a crash before then sends them again)"
                    );
                }
                self.checkpoint_owed = true;
            }
            Err(e) => {
                warn!(cause = %e, "cannot write an ack checkpoint to the reserve: kept in memory until the disk has room");
                self.checkpoint_owed = true;
            }
        }
    }

    /// The head holds every ack the reserve held: the reserve is emptied.
    pub(super) fn reset_reserve(&mut self) {
        if self.reserve.holds_acks()
            && let Err(e) = self.reserve.reset(&self.shared.faults)
        {
            warn!(cause = %e, "cannot empty the acknowledgement reserve; trying again with the next checkpoint");
        }
    }

    /// `when_full = "drop-oldest"`: drops whole oldest segments until `incoming` more bytes fit.
    pub(super) fn make_room(&mut self, incoming: u64) -> Result<(), StoreError> {
        let max = self.shared.max_bytes;
        while Counters::get(&self.shared.counters.disk_bytes) + incoming > max {
            let dropped = lock(&self.shared.index).drop_oldest_segment(self.head.base);
            match dropped {
                Some((seg, records)) => {
                    warn!(segment = %seg.path.display(), records, "outbox full: dropped oldest records");
                    Counters::add(&self.shared.counters.dropped, records);
                    self.delete(&seg)?;
                }
                None if self.head.len > HEADER_LEN => {
                    // everything is in the head: close it so that it can be dropped
                    let next = self.batch.metas.first().map_or(self.last_written + 1, |m| m.seq);
                    match self.roll(next) {
                        Ok(()) => {}
                        Err(e) if is_out_of_space(&e) => break, // the write is refused below
                        Err(e) => return Err(e),
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    pub(super) fn delete(&self, seg: &SegmentInfo) -> Result<(), StoreError> {
        let len = seg.file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&seg.path)
            .map_err(|source| StoreError::Delete { path: seg.path.clone(), source })?;
        Counters::sub(&self.shared.counters.disk_bytes, len);
        debug!(segment = %seg.path.display(), "deleted outbox segment");
        Ok(())
    }
}
