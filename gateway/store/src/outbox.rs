//! [`Outbox`]: opening, appending with group commit, stats, closing.

use std::{
    fmt,
    fs::File,
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use gw_model::Telemetry;
use tokio::sync::{Notify, watch};

use crate::{
    OutboxReader, OutboxStats, StoreConfig, StoreError, WhenFull,
    committer::{Committer, initial_progress},
    dirlock,
    faults::{FaultPlan, Faults},
    format::{self, MAX_BODY_LEN, RECORD_HEADER_LEN},
    recover,
    reserve::RESERVE_LEN,
    shared::{Batch, Counters, Meta, Pending, Run, Shared, lock},
    space,
    stats::DeviceStats,
};

/// A record's sequence number: increasing in append order, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    pub const fn new(seq: u64) -> Self {
        Self(seq)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Owns the committer thread and the directory's lock; the last handle to go (outbox clone
/// or reader) stops it.
pub(crate) struct Handle {
    pub shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
}

impl Handle {
    /// Commits what is pending, stops the committer, waits for it and releases the
    /// directory's lock. Idempotent.
    fn shutdown(&self) -> Result<(), StoreError> {
        {
            let mut p = lock(&self.shared.pending);
            if p.run == Run::Open {
                p.run = Run::Closing;
            }
            p.committer_idle = false;
            self.shared.wake.notify_one();
        }
        if let Some(thread) = lock(&self.thread).take() {
            // a panic in the committer is reported like an I/O failure below
            let _ = thread.join();
        }
        drop(lock(&self.lock).take());
        match lock(&self.shared.pending).run {
            Run::Failed => Err(self.shared.stopped_error(Run::Failed)),
            _ => Ok(()),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The durable outbox. Cheap to clone; open it once per directory and share the clones.
#[derive(Clone)]
pub struct Outbox {
    handle: Arc<Handle>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.handle.shared.dir).finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` (the daemon passes `<data_dir>/outbox`): locks
    /// the directory against other processes, recovers every valid record, cuts off a torn
    /// tail, frees what is fully acknowledged, and starts the committer thread. `max_bytes`
    /// is clamped to what the filesystem can hold (with a warning). Blocking: call it before
    /// serving, or from `spawn_blocking`.
    ///
    /// Fails with [`StoreError::Locked`] if another process has the directory open.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Outbox, StoreError> {
        Self::open_inner(dir, config, None)
    }

    /// [`open`](Self::open), with every write, fdatasync, truncation, segment creation and
    /// recovery read first put to `plan` (tests: disk full, short writes, I/O errors).
    pub fn open_with_faults(
        dir: &Path,
        config: &StoreConfig,
        plan: FaultPlan,
    ) -> Result<Outbox, StoreError> {
        Self::open_inner(dir, config, Some(plan))
    }

    fn open_inner(dir: &Path, config: &StoreConfig, faults: Faults) -> Result<Outbox, StoreError> {
        config.validate()?;
        recover::create_dir(dir)?;
        let dir_lock = dirlock::lock(dir)?;
        let recover::Recovered {
            index,
            head,
            next_seq,
            devices,
            disk_bytes,
            corrupt,
            segments_skipped,
            reserve,
        } = recover::recover(dir, &faults)?;
        let reserve_missing = RESERVE_LEN.saturating_sub(reserve.capacity());
        let max_bytes = space::clamp(dir, config.max_bytes.bytes(), disk_bytes, reserve_missing);
        let last_seq = next_seq - 1;
        let (progress, _) = watch::channel(initial_progress(last_seq));
        let device_count = u32::try_from(index.device_count()).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            config: config.clone(),
            max_bytes,
            faults,
            segment_target: (max_bytes / 8).clamp(8 * 1024, 32 * 1024 * 1024),
            max_record: usize::try_from(max_bytes / 4).unwrap_or(usize::MAX).min(MAX_BODY_LEN),
            pending: Mutex::new(Pending {
                batch: Batch::default(),
                next_seq,
                devices,
                device_count,
                run: Run::Open,
                committer_idle: false,
            }),
            wake: Condvar::new(),
            progress,
            index: Mutex::new(index),
            recent: Mutex::new(crate::recent::Recent::new(
                usize::try_from(config.read_cache.bytes()).unwrap_or(usize::MAX),
            )),
            deliverable: Notify::new(),
            counters: Counters::default(),
            failure: Mutex::new(None),
            rejected: Mutex::default(),
            pressure: gw_model::Pressure::new(),
        });
        Counters::add(&shared.counters.disk_bytes, disk_bytes);
        Counters::add(&shared.counters.corrupt_skipped, corrupt);
        Counters::add(&shared.counters.segments_skipped, segments_skipped);
        let mut committer = Committer::new(Arc::clone(&shared), head, last_seq, reserve);
        committer.start()?;
        let thread = std::thread::Builder::new()
            .name("gw-outbox-commit".to_owned())
            .spawn(move || committer.run())
            .map_err(StoreError::Spawn)?;
        Ok(Outbox {
            handle: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(dir_lock)),
            }),
        })
    }

    /// Appends `t` and resolves once it is committed per the sync policy (`always`: after
    /// fdatasync; `interval`: after `write()`). Only then may the sensor be acknowledged.
    ///
    /// Fails with [`StoreError::QuotaExceeded`] when full under `when_full = "reject"`. If the
    /// future is dropped early, the record may still be committed (at-least-once).
    pub async fn append(&self, t: &Telemetry) -> Result<Seq, StoreError> {
        let shared = &self.handle.shared;
        let seq = self.enqueue(t)?;
        let mut rx = shared.progress.subscribe();
        let progress = match rx
            .wait_for(|p| {
                p.durable >= seq
                    || p.run != Run::Open && p.run != Run::Closing
                    || p.rejections > 0 && shared.is_rejected(seq)
            })
            .await
        {
            Ok(p) => *p,
            Err(_) => return Err(StoreError::Closed),
        };
        // a refused batch's seqs may be passed by a later batch's durable mark: look first
        if progress.rejections > 0 && shared.is_rejected(seq) {
            return Err(StoreError::DiskFull);
        }
        if progress.durable >= seq { Ok(Seq(seq)) } else { Err(shared.stopped_error(progress.run)) }
    }

    /// Encodes `t` into the forming batch and returns its seq. No allocation unless the device
    /// is new or the batch buffer grows.
    fn enqueue(&self, t: &Telemetry) -> Result<u64, StoreError> {
        let shared = &self.handle.shared;
        let mut p = lock(&shared.pending);
        if p.run != Run::Open {
            return Err(shared.stopped_error(p.run));
        }
        let seq = p.next_seq;
        let start = p.batch.buf.len();
        let len =
            format::append_data_record(&mut p.batch.buf, seq, t).map_err(StoreError::Encode)?;
        if len - RECORD_HEADER_LEN > shared.max_record {
            p.batch.buf.truncate(start);
            return Err(StoreError::RecordTooLarge { size: len, max: shared.max_record });
        }
        if shared.config.when_full == WhenFull::Reject {
            let used = Counters::get(&shared.counters.disk_bytes) + p.batch.buf.len() as u64;
            let max = shared.max_bytes;
            if used > max {
                p.batch.buf.truncate(start);
                return Err(StoreError::QuotaExceeded { used: used - len as u64, max });
            }
        }
        let dev = p.intern(&t.app, &t.device);
        p.next_seq += 1;
        let meta = Meta {
            seq,
            dev,
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(u32::MAX),
        };
        p.batch.metas.push(meta);
        shared.wake_committer(&mut p);
        Ok(seq)
    }

    /// A reader for the uplink. Meant for a single consumer; several readers share the queue.
    pub fn reader(&self) -> OutboxReader {
        OutboxReader::new(Arc::clone(&self.handle))
    }

    /// Counters for the status page.
    /// Records not yet acknowledged by the cloud (cheap: the index's counter).
    pub fn records_queued(&self) -> u64 {
        lock(&self.handle.shared.index).live_records()
    }

    pub fn stats(&self) -> OutboxStats {
        let shared = &self.handle.shared;
        let c = &shared.counters;
        let idx = lock(&shared.index);
        let devices = idx
            .devices()
            .filter(|d| d.queued > 0 || d.dropped > 0 || d.expired > 0 || d.too_old > 0 || d.parked)
            .map(|d| DeviceStats {
                app: d.app.clone(),
                device: d.device.clone(),
                queued: d.queued as u64,
                dropped: d.dropped,
                expired: d.expired,
                too_old: d.too_old,
                parked: d.parked,
            })
            .collect::<Vec<_>>();
        let oldest = idx.oldest();
        let expired = devices.iter().map(|d: &DeviceStats| d.expired).sum();
        let too_old = devices.iter().map(|d: &DeviceStats| d.too_old).sum();
        let stats = OutboxStats {
            records_queued: idx.live_records(),
            bytes_queued: idx.live_bytes(),
            in_flight: idx.in_flight() as u64,
            disk_bytes: Counters::get(&c.disk_bytes),
            max_bytes: shared.max_bytes,
            segments: idx.segment_count() as u64,
            bytes_written: Counters::get(&c.bytes_written),
            commits: Counters::get(&c.commits),
            records_committed: Counters::get(&c.records_committed),
            syncs: Counters::get(&c.syncs),
            dropped: Counters::get(&c.dropped),
            expired,
            too_old,
            corrupt_skipped: Counters::get(&c.corrupt_skipped),
            segments_skipped: Counters::get(&c.segments_skipped),
            rejected_disk_full: Counters::get(&c.rejected_disk_full),
            records_read_back: Counters::get(&c.read_back),
            oldest_age_seconds: None,
            slowing_senders: shared.pressure.is_on(),
            devices,
        };
        drop(idx);
        stats.with_oldest(oldest)
    }

    /// Commits everything pending (and fdatasyncs it), stops the committer thread and joins
    /// it. Other clones and readers then get [`StoreError::Closed`]. Blocks for one sync.
    pub fn close(self) -> Result<(), StoreError> {
        self.handle.shutdown()
    }
}

/// The outbox is where southbound drivers hand their messages: `publish` resolves once the
/// record is committed per the sync policy.
impl gw_model::Ingest for Outbox {
    fn pressure(&self) -> &gw_model::Pressure {
        &self.handle.shared.pressure
    }

    async fn publish(&self, telemetry: Telemetry) -> Result<(), gw_model::IngestError> {
        use gw_model::IngestError;
        match self.append(&telemetry).await {
            Ok(_) => Ok(()),
            Err(e @ (StoreError::QuotaExceeded { .. } | StoreError::DiskFull)) => {
                Err(IngestError::QuotaExceeded(e.to_string()))
            }
            Err(e @ StoreError::RecordTooLarge { .. }) => Err(IngestError::TooLarge(e.to_string())),
            Err(e) => Err(IngestError::Unavailable(e.to_string())),
        }
    }
}
