//! [`OutboxReader`]: at-least-once, fair, per-device-ordered draining for the uplink.

use std::{fmt, os::unix::fs::FileExt, sync::Arc};

use gw_model::{AppId, DeviceId, Telemetry};
use tracing::warn;

use crate::{
    Seq, StoreError,
    format::{self, KIND_DATA},
    index::Picked,
    outbox::Handle,
    recent::Hot,
    shared::{Counters, Run, Shared, lock},
};

/// Hands out committed records and takes the uplink's verdict on each.
///
/// Every record handed out by [`next`](Self::next) must get exactly one of [`ack`](Self::ack),
/// [`nack`](Self::nack) or [`park`](Self::park). A device has at most one batch in flight: its
/// next records are handed out only once every record of its previous batch is resolved, so a
/// device's records leave in seq order as long as the uplink sends each batch's records of one
/// device in the order given and nacks the rest after a failure.
pub struct OutboxReader {
    acker: Acker,
}

/// The verdict half of a reader, cheap to clone into the uplink's request tasks.
#[derive(Clone)]
pub struct Acker {
    handle: Arc<Handle>,
}

impl fmt::Debug for OutboxReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxReader").finish_non_exhaustive()
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker").finish_non_exhaustive()
    }
}

impl OutboxReader {
    pub(crate) fn new(handle: Arc<Handle>) -> Self {
        Self { acker: Acker { handle } }
    }

    fn shared(&self) -> &Shared {
        &self.acker.handle.shared
    }

    /// Waits until at least one record is deliverable and returns up to `max` of them,
    /// round-robin across devices (each device gives at most `ceil(max / ready devices)`),
    /// oldest first within a device. Never returns a record that is in flight.
    pub async fn next(&mut self, max: usize) -> Result<Vec<(Seq, Telemetry)>, StoreError> {
        loop {
            let notified = self.shared().deliverable.notified();
            let picked = lock(&self.shared().index).take_batch(max);
            if !picked.is_empty() {
                let out = self.read(picked).await?;
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            let run = self.shared().progress.borrow().run;
            if run != Run::Open {
                return Err(self.shared().stopped_error(run));
            }
            notified.await;
        }
    }

    /// Decodes the picked records from the read cache where they still are; the others are
    /// read from their segments (page cache, usually) off the runtime.
    async fn read(&self, picked: Vec<Picked>) -> Result<Vec<(Seq, Telemetry)>, StoreError> {
        let hot: Vec<Option<Hot>> = {
            let mut recent = lock(&self.shared().recent);
            picked.iter().map(|p| recent.take(p.pos.seq)).collect()
        };
        if hot.iter().all(Option::is_some) {
            return Ok(read_hot(self.shared(), picked, hot));
        }
        let seqs: Vec<u64> = picked.iter().map(|p| p.pos.seq).collect();
        let shared = Arc::clone(&self.acker.handle.shared);
        let reading = tokio::task::spawn_blocking(move || read_records(&shared, picked)).await;
        match reading {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                for seq in seqs {
                    self.acker.nack(Seq::new(seq));
                }
                Err(e)
            }
            Err(_) => {
                for seq in seqs {
                    self.acker.nack(Seq::new(seq));
                }
                Err(StoreError::Closed)
            }
        }
    }

    /// A clonable handle for verdicts, for tasks that finish requests concurrently.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// The cloud accepted `seq`. See [`Acker::ack`].
    pub fn ack(&self, seq: Seq) {
        self.acker.ack(seq);
    }

    /// Transient failure. See [`Acker::nack`].
    pub fn nack(&self, seq: Seq) {
        self.acker.nack(seq);
    }

    /// The cloud refused the record's device. See [`Acker::park`].
    pub fn park(&self, seq: Seq) {
        self.acker.park(seq);
    }

    /// See [`Acker::unpark`].
    pub fn unpark(&self, app: &AppId, device: &DeviceId) {
        self.acker.unpark(app, device);
    }

    /// See [`Acker::unpark_all`].
    pub fn unpark_all(&self) {
        self.acker.unpark_all();
    }
}

impl Acker {
    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The cloud accepted `seq`: it is never handed out again. The ack is persisted with the
    /// next commit; if it is lost in a crash, the record is sent once more (a duplicate).
    /// Unknown seqs (already resolved, or dropped) are ignored.
    pub fn ack(&self, seq: Seq) {
        let (known, ready) = lock(&self.shared().index).ack(seq.get());
        if known {
            self.shared().persist_acks([seq.get()]);
        }
        if ready {
            self.shared().deliverable.notify_one();
        }
    }

    /// Transient failure: `seq` goes back to its place at the head of its device's queue and
    /// is handed out again once the device's other in-flight records are resolved.
    pub fn nack(&self, seq: Seq) {
        if lock(&self.shared().index).nack(seq.get()) {
            self.shared().deliverable.notify_one();
        }
    }

    /// The cloud refused `seq`'s device (HTTP 403): the record goes back to the head of its
    /// device's queue and the device is parked, its records kept, until
    /// [`unpark`](Self::unpark) or [`unpark_all`](Self::unpark_all). Other devices keep flowing.
    pub fn park(&self, seq: Seq) {
        lock(&self.shared().index).park(seq.get(), std::time::Instant::now());
    }

    /// Drops, for good, the records of every device the cloud has refused for `max_age`
    /// without taking one of its records since (a device that is no longer allowed, whose
    /// records can never be delivered): they stop counting against the quota. Each is counted
    /// as expired for its device; returns how many per device.
    pub fn expire_parked(&self, max_age: std::time::Duration) -> Vec<(AppId, DeviceId, u64)> {
        let expired = lock(&self.shared().index).expire_parked(max_age, std::time::Instant::now());
        let mut counts = Vec::with_capacity(expired.len());
        for (app, device, seqs) in expired {
            counts.push((app, device, seqs.len() as u64));
            self.shared().persist_acks(seqs);
        }
        counts
    }

    /// Drops, for good, the queued records the gateway received more than `max_age` ago
    /// (`[store] max_age`), oldest first per device, at most `limit` of them; each is counted
    /// as too old for its device. Records in flight are left to their verdict, and records
    /// stamped by a clock that was not set (age unknown) are kept. Blocks on reads of the
    /// records' receive times: call it from a blocking thread. Returns how many per device.
    pub fn expire_older_than(
        &self,
        max_age: std::time::Duration,
        limit: usize,
    ) -> Vec<(AppId, DeviceId, u64)> {
        let now = gw_model::Timestamp::from_system(std::time::SystemTime::now()).as_millis();
        let cutoff = now.saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
        let fronts = lock(&self.shared().index).fronts();
        let mut counts = Vec::new();
        let mut budget = limit;
        for (dev, front) in fronts {
            let mut seqs = Vec::new();
            let mut next = Some(front);
            while let Some(p) = next.take() {
                if budget == 0 {
                    break;
                }
                let old = crate::stats::received_at(&p)
                    .is_some_and(|at| at.is_trusted() && at.as_millis() < cutoff);
                if !old {
                    break;
                }
                next = lock(&self.shared().index).drop_too_old(dev, p.pos.seq);
                seqs.push(p.pos.seq);
                budget -= 1;
            }
            if seqs.is_empty() {
                continue;
            }
            let name = lock(&self.shared().index).device_name(dev);
            if let Some((app, device)) = name {
                counts.push((app, device, seqs.len() as u64));
            }
            self.shared().persist_acks(seqs);
        }
        if !counts.is_empty() {
            // dropping records may make room and end a device's wait on its head
            self.shared().deliverable.notify_one();
        }
        counts
    }

    /// Releases a parked device (e.g. after a registry resync shows it allowed again).
    pub fn unpark(&self, app: &AppId, device: &DeviceId) {
        if lock(&self.shared().index).unpark(app, device) {
            self.shared().deliverable.notify_one();
        }
    }

    /// Releases every parked device.
    pub fn unpark_all(&self) {
        if lock(&self.shared().index).unpark_all() {
            self.shared().deliverable.notify_one();
        }
    }

    /// Puts every record that was handed out and has no verdict yet back in its place, as if
    /// each had been nacked. For an uplink that stops while the outbox stays open (a restart of
    /// the uplink alone): its successor is handed those records again. Late verdicts for them
    /// are ignored.
    pub fn release_in_flight(&self) {
        if lock(&self.shared().index).release_in_flight() {
            self.shared().deliverable.notify_one();
        }
    }
}

/// Decodes records from the read cache (they were checked as they were written).
fn read_hot(shared: &Shared, picked: Vec<Picked>, hot: Vec<Option<Hot>>) -> Vec<(Seq, Telemetry)> {
    let mut out = Vec::with_capacity(picked.len());
    let mut damaged = Vec::new();
    for (p, h) in picked.iter().zip(hot) {
        let seq = p.pos.seq;
        let decoded = h.and_then(|h| {
            format::parse_at(&h.buf[..h.start + h.len], h.start, seq - 1)
                .filter(|f| f.seq == seq && f.kind == KIND_DATA)
                .and_then(|f| format::decode_telemetry(f.body))
        });
        match decoded {
            Some(t) => out.push((Seq::new(seq), t)),
            None => damaged.push(seq),
        }
    }
    skip_damaged(shared, damaged);
    out
}

/// Reads and checks each record; a damaged one is skipped, counted and treated as resolved.
fn read_records(shared: &Shared, picked: Vec<Picked>) -> Result<Vec<(Seq, Telemetry)>, StoreError> {
    let mut out = Vec::with_capacity(picked.len());
    let mut buf = Vec::new();
    let mut damaged = Vec::new();
    Counters::add(&shared.counters.read_back, picked.len() as u64);
    for p in picked {
        buf.resize(p.pos.len as usize, 0);
        let seq = p.pos.seq;
        if let Err(source) = p.file.read_exact_at(&mut buf, u64::from(p.pos.offset)) {
            return Err(StoreError::Read { path: shared.dir.clone(), source });
        }
        let decoded = format::parse_at(&buf, 0, seq - 1)
            .filter(|f| f.seq == seq && f.kind == KIND_DATA)
            .and_then(|f| format::decode_telemetry(f.body));
        match decoded {
            Some(t) => out.push((Seq::new(seq), t)),
            None => damaged.push(seq),
        }
    }
    skip_damaged(shared, damaged);
    Ok(out)
}

/// Records that do not decode are resolved (never sent), counted and logged.
fn skip_damaged(shared: &Shared, damaged: Vec<u64>) {
    if !damaged.is_empty() {
        for &seq in &damaged {
            warn!(seq, "outbox record damaged; skipped");
        }
        let mut idx = lock(&shared.index);
        for &seq in &damaged {
            idx.ack(seq);
        }
        drop(idx);
        Counters::add(&shared.counters.corrupt_skipped, damaged.len() as u64);
        shared.persist_acks(damaged);
        shared.deliverable.notify_one();
    }
}
