//! The committer thread: the only writer of segment files. It takes the batch that formed
//! while it was busy, writes it with one `pwrite()` at the head's committed length, fdatasyncs
//! it (per the sync policy), then publishes the new durable watermark and files the records in
//! the index. While it syncs, the next batch forms behind it; it starts the next commit as soon
//! as the sync returns.
//!
//! When the disk is full, a batch is refused whole or from the point it stopped being durable
//! (a roll syncs what came before it): the head is cut back to exactly what it held, and the
//! batch's acknowledgements go to the reserve instead (`reclaim`). After every commit, refused
//! or not, the committer frees what is fully acknowledged.

mod reclaim;

use std::{ops::Range, sync::Arc, time::Instant};

use tracing::{debug, error, warn};

use crate::{
    StoreError, SyncPolicy, WhenFull,
    faults::{self, FaultPoint},
    format::{self, SEGMENT_HEADER_LEN},
    index::{DevIdx, Pos},
    recover::{self, Head, is_out_of_space},
    reserve::Reserve,
    shared::{Batch, Counters, Meta, Progress, REJECTED_KEPT, Run, Shared, lock},
};

pub(crate) struct Committer {
    shared: Arc<Shared>,
    head: Head,
    /// Highest data seq committed to a segment (during a write: written so far).
    last_written: u64,
    /// Written but not yet fdatasync'd (sync = "interval").
    dirty: bool,
    last_sync: Instant,
    batch: Batch,
    positions: Vec<(DevIdx, Pos)>,
    ranges: Vec<Range<u64>>,
    /// Head length up to which everything is committed: what a refusal cuts back to.
    good_len: u64,
    /// Records of the batch being written that are committed already (a roll synced them).
    committed: usize,
    /// Cutting the head back to this length failed; it is owed before the next write.
    cut_owed: Option<u64>,
    reserve: Reserve,
    /// The acks on disk may lack some that the index knows (a refusal or a deletion could not
    /// record them): the next write to the head carries a full ack checkpoint.
    checkpoint_owed: bool,
    /// A write was refused for lack of space since the head was last reclaimed.
    short_of_space: bool,
    scratch: Vec<u8>,
}

impl Committer {
    pub fn new(shared: Arc<Shared>, head: Head, last_written: u64, reserve: Reserve) -> Self {
        let good_len = head.len;
        Self {
            shared,
            head,
            last_written,
            dirty: false,
            last_sync: Instant::now(),
            batch: Batch::default(),
            positions: Vec::new(),
            ranges: Vec::new(),
            good_len,
            committed: 0,
            cut_owed: None,
            reserve,
            checkpoint_owed: false,
            // at open, reclaim a fully acknowledged head whatever its size
            short_of_space: true,
            scratch: Vec::new(),
        }
    }

    /// Frees what recovery found fully acknowledged, before the outbox takes records.
    pub fn start(&mut self) -> Result<(), StoreError> {
        self.reclaim()
    }

    /// Runs until closed or failed. A failure stops the outbox: every waiting and later
    /// `append` gets [`StoreError::CommitterFailed`]; reopening recovers what was durable.
    pub fn run(mut self) {
        let result = self.run_loop();
        let run = match &result {
            Ok(()) => Run::Closed,
            Err(e) => {
                error!(cause = %error_chain(e), "outbox committer stopped");
                *lock(&self.shared.failure) = Some(error_chain(e));
                Run::Failed
            }
        };
        lock(&self.shared.pending).run = run;
        self.shared.progress.send_modify(|p| p.run = run);
        self.shared.deliverable.notify_one();
    }

    fn run_loop(&mut self) -> Result<(), StoreError> {
        loop {
            let closing = self.take_batch();
            if !self.batch.metas.is_empty() || !self.batch.acks.is_empty() {
                self.commit()?;
            }
            if closing && self.checkpoint_owed {
                // the last chance to record acks that only the index knows
                self.persist_checkpoint()?;
            }
            if closing && self.cut_owed.is_some() {
                // a refused batch must not come back at the next open
                if let Err(e) = self.ensure_cut() {
                    warn!(segment = %self.head.path.display(), cause = %error_chain(&e), "closing with a refused batch not cut off the head: it may be delivered after all");
                }
            }
            if self.dirty
                && (closing || self.last_sync.elapsed() >= self.shared.config.sync_interval)
            {
                self.sync_quietly()?;
            }
            if closing {
                return Ok(());
            }
        }
    }

    /// The periodic (and closing) sync. A lack of space is not fatal: `sync = "interval"`
    /// acknowledged the data after write(), it is in the page cache as that policy promises,
    /// and the next sync tries again.
    fn sync_quietly(&mut self) -> Result<(), StoreError> {
        match self.sync() {
            Ok(()) => Ok(()),
            Err(e) if is_out_of_space(&e) => {
                warn!(cause = %error_chain(&e), "fdatasync failed for lack of space; retrying later");
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for work and swaps the forming batch with the committer's empty one. Returns
    /// whether the outbox is closing (the batch then holds everything left).
    fn take_batch(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut p = lock(&shared.pending);
        loop {
            if p.has_work() || p.run != Run::Open {
                break;
            }
            p.committer_idle = true;
            if self.dirty {
                let due = self.last_sync + self.shared.config.sync_interval;
                let now = Instant::now();
                if now >= due {
                    break;
                }
                p = shared
                    .wake
                    .wait_timeout(p, due - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            } else {
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        }
        p.committer_idle = false;
        self.batch.clear();
        std::mem::swap(&mut p.batch, &mut self.batch);
        p.run != Run::Open
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        if !self.batch.new_devices.is_empty() {
            let mut idx = lock(&shared.index);
            for (app, device) in self.batch.new_devices.drain(..) {
                idx.add_device(app, device);
            }
        }
        if shared.config.when_full == WhenFull::DropOldest {
            self.make_room(self.batch.buf.len() as u64)?;
        }

        let metas = std::mem::take(&mut self.batch.metas);
        let written_before = self.last_written;
        self.committed = 0;
        self.good_len = self.head.len;
        self.positions.clear();
        let mut result = self.ensure_cut();
        if result.is_ok() {
            result = self.write_batch(&metas, written_before);
        }
        let outcome = match result {
            Ok(()) => {
                self.keep_recent(&metas);
                self.file_records(&metas, metas.len());
                Ok(())
            }
            Err(e) if is_out_of_space(&e) => self.refuse(&metas, written_before, &e),
            Err(e) => Err(e),
        };
        self.batch.metas = metas;
        outcome?;
        self.reclaim()
    }

    /// Writes a batch's records (rolling segments as needed), its acknowledgements and, if
    /// one is owed, an ack checkpoint, then syncs per the policy. On error, `committed` says
    /// how many records (a prefix) are committed all the same.
    fn write_batch(&mut self, metas: &[Meta], written_before: u64) -> Result<(), StoreError> {
        let mut chunk_start = 0usize;
        let mut chunk_offset = self.head.len;
        for (i, m) in metas.iter().enumerate() {
            let start = m.start as usize;
            let in_segment = chunk_offset + (start - chunk_start) as u64;
            if in_segment > SEGMENT_HEADER_LEN as u64
                && in_segment + u64::from(m.len) > self.shared.segment_target
            {
                self.write(chunk_start..start, FaultPoint::Append)?;
                self.sync()?;
                // everything before `m` is durable now, whatever happens to the rest
                self.committed = i;
                self.good_len = self.head.len;
                self.roll(m.seq)?;
                self.good_len = self.head.len;
                chunk_start = start;
                chunk_offset = self.head.len;
            }
            let offset = chunk_offset + (start - chunk_start) as u64;
            let offset = u32::try_from(offset).unwrap_or(u32::MAX);
            self.positions.push((m.dev, Pos { seq: m.seq, offset, len: m.len }));
            self.last_written = m.seq;
        }
        // acknowledgements ride along in the same write
        if !self.batch.acks.is_empty() {
            format::to_ranges(&mut self.batch.acks, &mut self.ranges);
            format::append_ack_record(&mut self.batch.buf, self.last_written, &self.ranges);
        }
        let checkpoint = self.checkpoint_owed || self.reserve.holds_acks();
        if checkpoint {
            // only records filed before this batch: the batch's own are not in the index yet
            let ranges = lock(&self.shared.index).checkpoint_ranges(written_before + 1);
            format::append_ack_records(&mut self.batch.buf, self.last_written, &ranges);
        }
        let point = if metas.is_empty() { FaultPoint::AckWrite } else { FaultPoint::Append };
        self.write(chunk_start..self.batch.buf.len(), point)?;
        match self.shared.config.sync {
            // A write of acknowledgements only waits for the next sync (the next batch's, or
            // `sync_interval` later): a power cut before it costs duplicates, never a record,
            // and the batches behind it do not wait for a sync of their own.
            SyncPolicy::Always if metas.is_empty() && !checkpoint => {}
            SyncPolicy::Always => self.sync()?,
            SyncPolicy::Interval
                if checkpoint || self.last_sync.elapsed() >= self.shared.config.sync_interval =>
            {
                self.sync()?
            }
            SyncPolicy::Interval => {}
        }
        self.committed = metas.len();
        self.good_len = self.head.len;
        if checkpoint {
            self.checkpoint_owed = false;
            self.reset_reserve();
        }
        Ok(())
    }

    /// Hands a copy of the committed records' bytes to the read cache, before the reader
    /// hears of them, so the uplink decodes them from memory.
    fn keep_recent(&self, metas: &[Meta]) {
        let Some(last) = metas.last() else { return };
        let end = (last.start as usize + last.len as usize).min(self.batch.buf.len());
        let bytes = self.batch.buf[..end].to_vec();
        lock(&self.shared.recent).insert(bytes, metas.iter().map(|m| (m.seq, m.start, m.len)));
    }

    /// Files the first `n` records of the batch in the index and tells their producers.
    fn file_records(&mut self, metas: &[Meta], n: usize) {
        let Some(last) = n.checked_sub(1).and_then(|i| metas.get(i)) else { return };
        let shared = &self.shared;
        let became_ready = {
            let mut idx = lock(&shared.index);
            let mut any = false;
            for &(dev, pos) in self.positions.iter().take(n) {
                any |= idx.push(dev, pos);
            }
            any
        };
        Counters::add(&shared.counters.commits, 1);
        Counters::add(&shared.counters.records_committed, n as u64);
        let last = last.seq;
        shared.progress.send_modify(|p| p.durable = last);
        if became_ready {
            shared.deliverable.notify_one();
        }
    }

    /// The disk is full: the batch's records from the first one not durable on are refused
    /// (their producers get [`StoreError::DiskFull`], nothing of them is acknowledged), the
    /// head is cut back to exactly what it held before them, the records before them are
    /// committed, and the batch's acknowledgements go to the reserve. The outbox stays open;
    /// once space returns, commits succeed again.
    fn refuse(
        &mut self,
        metas: &[Meta],
        written_before: u64,
        cause: &StoreError,
    ) -> Result<(), StoreError> {
        let n = self.committed;
        self.cut_back()?;
        self.last_written =
            n.checked_sub(1).and_then(|i| metas.get(i)).map_or(written_before, |m| m.seq);
        self.file_records(metas, n);
        if let (Some(first), Some(last)) = (metas.get(n), metas.last()) {
            let records = metas.len() - n;
            {
                let mut rejected = lock(&self.shared.rejected);
                rejected.push_back((first.seq, last.seq));
                while rejected.len() > REJECTED_KEPT {
                    rejected.pop_front();
                }
            }
            Counters::add(&self.shared.counters.rejected_disk_full, records as u64);
            warn!(records, committed = n, cause = %error_chain(cause), "disk full: messages refused, the outbox stays open");
            self.shared.progress.send_modify(|p| p.rejections += 1);
        } else {
            debug!(cause = %error_chain(cause), "disk full: acknowledgements go to the reserve");
        }
        if !self.batch.acks.is_empty() {
            self.keep_acks_aside();
        }
        self.short_of_space = true;
        Ok(())
    }

    /// Cuts the head back to `good_len`: whatever a failed write left after it goes. If the
    /// cut itself fails for lack of space, it is owed and retried before the next write.
    fn cut_back(&mut self) -> Result<(), StoreError> {
        let cut = self.head.len.saturating_sub(self.good_len);
        Counters::sub(&self.shared.counters.disk_bytes, cut);
        self.head.len = self.good_len;
        self.cut_owed = Some(self.good_len);
        match self.ensure_cut() {
            Ok(()) => Ok(()),
            Err(e) if is_out_of_space(&e) => {
                warn!(segment = %self.head.path.display(), cause = %error_chain(&e), "cannot cut a refused batch off the head yet; refusing until it is");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Performs an owed cut (truncation, synced; if only the sync fails, the next sync of
    /// the head makes it durable).
    fn ensure_cut(&mut self) -> Result<(), StoreError> {
        let Some(len) = self.cut_owed else { return Ok(()) };
        let faults = &self.shared.faults;
        faults::set_len(faults, &self.head.file, len).map_err(|source| StoreError::Truncate {
            path: self.head.path.clone(),
            len,
            source,
        })?;
        self.cut_owed = None;
        if let Err(e) = faults::sync_data(faults, FaultPoint::Sync, &self.head.file) {
            debug!(segment = %self.head.path.display(), cause = %e, "cut not synced yet");
            self.dirty = true;
        }
        Ok(())
    }

    fn write(&mut self, range: Range<usize>, point: FaultPoint) -> Result<(), StoreError> {
        if range.is_empty() {
            return Ok(());
        }
        write_head(&self.shared, &mut self.head, &self.batch.buf[range], point)?;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            faults::sync_data(&self.shared.faults, FaultPoint::Sync, &self.head.file)
                .map_err(|source| StoreError::Sync { path: self.head.path.clone(), source })?;
            Counters::add(&self.shared.counters.syncs, 1);
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Closes the head (synced) and starts a new segment whose first record is `base`.
    fn roll(&mut self, base: u64) -> Result<(), StoreError> {
        self.sync()?;
        let head = recover::create_segment(&self.shared.dir, base, &self.shared.faults)?;
        Counters::add(&self.shared.counters.bytes_written, head.len);
        Counters::add(&self.shared.counters.disk_bytes, head.len);
        lock(&self.shared.index).add_segment(head.base, head.path.clone(), Arc::clone(&head.file));
        debug!(segment = %head.path.display(), "new outbox segment");
        self.head = head;
        Ok(())
    }
}

/// Writes `bytes` at the head's committed length (never after stray bytes a failed write
/// may have left) and counts them.
fn write_head(
    shared: &Shared,
    head: &mut Head,
    bytes: &[u8],
    point: FaultPoint,
) -> Result<(), StoreError> {
    faults::write_at(&shared.faults, point, &head.file, bytes, head.len)
        .map_err(|source| StoreError::Write { path: head.path.clone(), source })?;
    head.len += bytes.len() as u64;
    Counters::add(&shared.counters.bytes_written, bytes.len() as u64);
    Counters::add(&shared.counters.disk_bytes, bytes.len() as u64);
    Ok(())
}

/// The progress value a freshly opened outbox starts with.
pub(crate) fn initial_progress(last_seq: u64) -> Progress {
    Progress { durable: last_seq, run: Run::Open, rejections: 0 }
}

fn error_chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
