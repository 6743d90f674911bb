//! The committer thread: the only writer of segment files. It takes the batch that formed
//! while it was busy, writes it with one `write()`, fdatasyncs it (per the sync policy), then
//! publishes the new durable watermark and files the records in the index. While it syncs, the
//! next batch forms behind it; it starts the next commit as soon as the sync returns.

use std::{io::Write, ops::Range, sync::Arc, time::Instant};

use tracing::{debug, error, warn};

use crate::{
    StoreError, SyncPolicy, WhenFull,
    format::{self, SEGMENT_HEADER_LEN},
    index::{DevIdx, Pos, SegmentInfo},
    recover::{self, Head},
    shared::{Batch, Counters, Meta, Progress, REJECTED_KEPT, Run, Shared, lock},
};

pub(crate) struct Committer {
    shared: Arc<Shared>,
    head: Head,
    /// Highest data seq written to a segment.
    last_written: u64,
    /// Written but not yet fdatasync'd (sync = "interval").
    dirty: bool,
    last_sync: Instant,
    batch: Batch,
    positions: Vec<(DevIdx, Pos)>,
    ranges: Vec<Range<u64>>,
}

impl Committer {
    pub fn new(shared: Arc<Shared>, head: Head, last_written: u64) -> Self {
        Self {
            shared,
            head,
            last_written,
            dirty: false,
            last_sync: Instant::now(),
            batch: Batch::default(),
            positions: Vec::new(),
            ranges: Vec::new(),
        }
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
                match self.commit() {
                    Ok(()) => {}
                    Err(e) if is_out_of_space(&e) => self.refuse_batch(&e)?,
                    Err(e) => return Err(e),
                }
            }
            if self.dirty
                && (closing || self.last_sync.elapsed() >= self.shared.config.sync_interval)
            {
                self.sync()?;
            }
            if closing {
                return Ok(());
            }
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
        if let Err(e) = self.write_batch(&metas) {
            // the batch as it was, for refuse_batch (disk full) or the failure report
            self.batch.metas = metas;
            self.last_written = written_before;
            return Err(e);
        }

        if !metas.is_empty() {
            let became_ready = {
                let mut idx = lock(&shared.index);
                let mut any = false;
                for (dev, pos) in self.positions.drain(..) {
                    any |= idx.push(dev, pos);
                }
                any
            };
            Counters::add(&shared.counters.commits, 1);
            Counters::add(&shared.counters.records_committed, metas.len() as u64);
            let last = self.last_written;
            shared.progress.send_modify(|p| p.durable = last);
            if became_ready {
                shared.deliverable.notify_one();
            }
        }
        self.batch.metas = metas;
        self.delete_finished()
    }

    /// Writes a batch's records (rolling segments as needed) and its acknowledgements, then
    /// syncs per the policy.
    fn write_batch(&mut self, metas: &[Meta]) -> Result<(), StoreError> {
        // data records, rolling to a new segment where one would pass the target size
        self.positions.clear();
        let mut chunk_start = 0usize;
        let mut chunk_offset = self.head.len;
        for m in metas {
            let start = m.start as usize;
            let in_segment = chunk_offset + (start - chunk_start) as u64;
            if in_segment > SEGMENT_HEADER_LEN as u64
                && in_segment + u64::from(m.len) > self.shared.segment_target
            {
                self.write(chunk_start..start)?;
                self.roll(m.seq)?;
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
        self.write(chunk_start..self.batch.buf.len())?;
        match self.shared.config.sync {
            SyncPolicy::Always => self.sync()?,
            SyncPolicy::Interval
                if self.last_sync.elapsed() >= self.shared.config.sync_interval =>
            {
                self.sync()?
            }
            SyncPolicy::Interval => {}
        }
        Ok(())
    }

    /// The disk is full: the batch's records are refused (their producers get
    /// [`StoreError::DiskFull`], nothing of them is acknowledged), whatever part of the batch
    /// reached the head segment is cut off again, and its acknowledgements wait for the next
    /// commit. The outbox stays open; once space returns, commits succeed again.
    fn refuse_batch(&mut self, cause: &StoreError) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (self.batch.metas.first(), self.batch.metas.last()) else {
            // only acknowledgements: keep them for the next commit
            let acks = std::mem::take(&mut self.batch.acks);
            lock(&self.shared.pending).batch.acks.extend(acks);
            return Ok(());
        };
        let (from, to, records) = (first.seq, last.seq, self.batch.metas.len());
        let file = &self.head.file;
        file.set_len(self.head.len).map_err(|source| StoreError::Truncate {
            path: self.head.path.clone(),
            len: self.head.len,
            source,
        })?;
        self.positions.clear();
        let acks = std::mem::take(&mut self.batch.acks);
        lock(&self.shared.pending).batch.acks.extend(acks);
        {
            let mut rejected = lock(&self.shared.rejected);
            rejected.push_back((from, to));
            while rejected.len() > REJECTED_KEPT {
                rejected.pop_front();
            }
        }
        Counters::add(&self.shared.counters.rejected_disk_full, records as u64);
        warn!(records, cause = %error_chain(cause), "disk full: messages refused, the outbox stays open");
        self.shared.progress.send_modify(|p| p.rejections += 1);
        Ok(())
    }

    fn write(&mut self, range: Range<usize>) -> Result<(), StoreError> {
        if range.is_empty() {
            return Ok(());
        }
        let bytes = &self.batch.buf[range];
        (&*self.head.file)
            .write_all(bytes)
            .map_err(|source| StoreError::Write { path: self.head.path.clone(), source })?;
        self.head.len += bytes.len() as u64;
        self.dirty = true;
        Counters::add(&self.shared.counters.bytes_written, bytes.len() as u64);
        Counters::add(&self.shared.counters.disk_bytes, bytes.len() as u64);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.head
                .file
                .sync_data()
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
        let head = recover::create_segment(&self.shared.dir, base)?;
        Counters::add(&self.shared.counters.bytes_written, head.len);
        Counters::add(&self.shared.counters.disk_bytes, head.len);
        lock(&self.shared.index).add_segment(head.base, head.path.clone(), Arc::clone(&head.file));
        debug!(segment = %head.path.display(), "new outbox segment");
        self.head = head;
        Ok(())
    }

    /// `when_full = "drop-oldest"`: drops whole oldest segments until `incoming` more bytes fit.
    fn make_room(&mut self, incoming: u64) -> Result<(), StoreError> {
        let max = self.shared.config.max_bytes.bytes();
        while Counters::get(&self.shared.counters.disk_bytes) + incoming > max {
            let dropped = lock(&self.shared.index).drop_oldest_segment(self.head.base);
            match dropped {
                Some((seg, records)) => {
                    warn!(segment = %seg.path.display(), records, "outbox full: dropped oldest records");
                    Counters::add(&self.shared.counters.dropped, records);
                    self.delete(&seg)?;
                }
                None if self.head.len > SEGMENT_HEADER_LEN as u64 => {
                    // everything is in the head: close it so that it can be dropped
                    let next = self.batch.metas.first().map_or(self.last_written + 1, |m| m.seq);
                    self.roll(next)?;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Deletes segments whose records are all acknowledged. If an older segment stays, its
    /// acknowledgements are first re-recorded in the head (they may live in the segment that
    /// goes away).
    fn delete_finished(&mut self) -> Result<(), StoreError> {
        let finished = lock(&self.shared.index).take_finished_segments(self.head.base);
        if finished.is_empty() {
            return Ok(());
        }
        for (base, seg) in &finished {
            let oldest = lock(&self.shared.index).oldest_segment();
            if let Some(oldest) = oldest.filter(|o| o < base) {
                let live = lock(&self.shared.index).live_between(oldest, *base);
                self.checkpoint_acks(oldest, *base, &live)?;
            }
            self.delete(seg)?;
        }
        recover::sync_dir(&self.shared.dir)
    }

    /// Writes (and syncs) an ack record covering every seq in `from..to` that is not `live`.
    fn checkpoint_acks(&mut self, from: u64, to: u64, live: &[u64]) -> Result<(), StoreError> {
        let mut ranges = Vec::with_capacity(live.len() + 1);
        let mut start = from;
        for &s in live {
            if s > start {
                ranges.push(start..s);
            }
            start = s + 1;
        }
        if start < to {
            ranges.push(start..to);
        }
        self.batch.buf.clear();
        format::append_ack_record(&mut self.batch.buf, self.last_written, &ranges);
        self.write(0..self.batch.buf.len())?;
        self.sync()
    }

    fn delete(&self, seg: &SegmentInfo) -> Result<(), StoreError> {
        let len = seg.file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&seg.path)
            .map_err(|source| StoreError::Delete { path: seg.path.clone(), source })?;
        Counters::sub(&self.shared.counters.disk_bytes, len);
        debug!(segment = %seg.path.display(), "deleted outbox segment");
        Ok(())
    }
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

/// Whether an error means the disk (or the file size limit, or a quota) has no room.
fn is_out_of_space(e: &StoreError) -> bool {
    let source = match e {
        StoreError::Write { source, .. }
        | StoreError::Sync { source, .. }
        | StoreError::Open { source, .. }
        | StoreError::Truncate { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}
