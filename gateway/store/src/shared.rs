//! State shared by producers, the committer thread and the reader: the forming batch, the
//! durable watermark, the index and the counters. Lock order: never hold `pending` and `index`
//! at once.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use gw_model::{AppId, DeviceId};
use tokio::sync::{Notify, watch};

use crate::{
    StoreConfig,
    faults::Faults,
    index::{DevIdx, Index},
};

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// before anything in it can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the committer accepts and commits records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Run {
    Open,
    /// `close` was called: commit what is pending, then stop.
    Closing,
    Closed,
    /// An I/O error stopped the committer; the reason is in [`Shared::failure`].
    Failed,
}

/// What producers wait on: everything at or below `durable` is committed per the sync policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub durable: u64,
    pub run: Run,
    /// Batches refused so far (the disk was full); their seqs are in [`Shared::rejected`].
    pub rejections: u64,
}

/// One record in the forming batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub seq: u64,
    pub dev: DevIdx,
    /// Offset of the record in the batch buffer.
    pub start: u32,
    pub len: u32,
}

/// The batch that forms while the committer is busy.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub buf: Vec<u8>,
    pub metas: Vec<Meta>,
    pub acks: Vec<u64>,
    pub new_devices: Vec<(AppId, DeviceId)>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.metas.clear();
        self.acks.clear();
        self.new_devices.clear();
    }
}

/// Producer-side state, behind one mutex.
#[derive(Debug)]
pub(crate) struct Pending {
    pub batch: Batch,
    pub next_seq: u64,
    pub devices: HashMap<AppId, HashMap<DeviceId, DevIdx>>,
    pub device_count: DevIdx,
    pub run: Run,
    /// The committer is waiting on the condvar and needs a wake-up.
    pub committer_idle: bool,
}

impl Pending {
    /// The device's number, registering it (and queueing its name for the index) if new.
    pub fn intern(&mut self, app: &AppId, device: &DeviceId) -> DevIdx {
        if let Some(idx) = self.devices.get(app.as_str()).and_then(|m| m.get(device.as_str())) {
            return *idx;
        }
        let idx = self.device_count;
        self.device_count += 1;
        self.devices.entry(app.clone()).or_default().insert(device.clone(), idx);
        self.batch.new_devices.push((app.clone(), device.clone()));
        idx
    }

    pub fn has_work(&self) -> bool {
        !self.batch.metas.is_empty() || !self.batch.acks.is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bytes_written: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub records_committed: AtomicU64,
    pub syncs: AtomicU64,
    pub dropped: AtomicU64,
    pub corrupt_skipped: AtomicU64,
    /// Segment files recovery skipped whole (unreadable or stray).
    pub segments_skipped: AtomicU64,
    /// Records refused because the disk was full.
    pub rejected_disk_full: AtomicU64,
    /// Records the reader read back from their segments (not from the read cache).
    pub read_back: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        // saturating: a miscount must never wrap the quota check
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: StoreConfig,
    /// The quota in force: `config.max_bytes`, or less if the filesystem cannot hold that.
    pub max_bytes: u64,
    /// Injected I/O faults (tests only; `None` in production).
    pub faults: Faults,
    /// A segment is rolled once it would grow past this.
    pub segment_target: u64,
    /// Largest record (header included) accepted by `append`.
    pub max_record: usize,
    pub pending: Mutex<Pending>,
    pub wake: Condvar,
    pub progress: watch::Sender<Progress>,
    pub index: Mutex<Index>,
    /// The latest committed records, for the reader (`[store] read_cache`).
    pub recent: Mutex<crate::recent::Recent>,
    /// Signalled when a record may have become deliverable.
    pub deliverable: Notify,
    pub counters: Counters,
    pub failure: Mutex<Option<String>>,
    /// The seq ranges of the latest batches refused because the disk was full (inclusive),
    /// newest last, at most [`REJECTED_KEPT`].
    pub rejected: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Flow control towards the sensors (`[store] max_lag`), set by the daemon.
    pub pressure: gw_model::Pressure,
}

/// Refused ranges remembered for producers still to look: a producer would have to sleep
/// through this many refused batches to miss its own.
pub(crate) const REJECTED_KEPT: usize = 1024;

impl Shared {
    /// Queues acknowledged seqs for the next ack record and wakes the committer if idle.
    pub fn persist_acks(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut p = lock(&self.pending);
        p.batch.acks.extend(seqs);
        self.wake_committer(&mut p);
    }

    pub fn wake_committer(&self, p: &mut Pending) {
        if p.committer_idle {
            p.committer_idle = false;
            self.wake.notify_one();
        }
    }

    /// The error that stopped the committer, for producers and the reader.
    /// Whether `seq` was in a batch refused because the disk was full.
    pub fn is_rejected(&self, seq: u64) -> bool {
        lock(&self.rejected).iter().any(|(from, to)| (*from..=*to).contains(&seq))
    }

    pub fn stopped_error(&self, run: Run) -> crate::StoreError {
        match run {
            Run::Failed => crate::StoreError::CommitterFailed {
                reason: lock(&self.failure).clone().unwrap_or_default(),
            },
            _ => crate::StoreError::Closed,
        }
    }
}
