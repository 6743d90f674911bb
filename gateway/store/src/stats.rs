//! A snapshot of the outbox's counters for the status page and `/metrics`.

use gw_model::{AppId, DeviceId};
use serde::Serialize;

/// Counters of one device that has records queued, drops, or is parked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    pub(crate) app: AppId,
    pub(crate) device: DeviceId,
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    pub(crate) expired: u64,
    /// Records of this device dropped because they waited longer than `[store] max_age`.
    pub(crate) too_old: u64,
    pub(crate) parked: bool,
}

impl DeviceStats {
    pub fn app(&self) -> &AppId {
        &self.app
    }
    pub fn device(&self) -> &DeviceId {
        &self.device
    }
    /// Records of this device not yet acknowledged by the cloud (in flight included).
    pub fn queued(&self) -> u64 {
        self.queued
    }
    /// Records of this device dropped by `when_full = "drop-oldest"` since the outbox opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Records of this device dropped because the cloud refused it for `[cloud]
    /// parked_max_age`.
    pub fn expired(&self) -> u64 {
        self.expired
    }
    /// Records of this device dropped because they waited longer than `[store] max_age`.
    pub fn too_old(&self) -> u64 {
        self.too_old
    }
    pub fn parked(&self) -> bool {
        self.parked
    }
}

/// Outbox counters at one instant. Counts since open unless said otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    pub(crate) records_queued: u64,
    pub(crate) bytes_queued: u64,
    pub(crate) in_flight: u64,
    pub(crate) disk_bytes: u64,
    pub(crate) max_bytes: u64,
    pub(crate) segments: u64,
    pub(crate) bytes_written: u64,
    pub(crate) commits: u64,
    pub(crate) records_committed: u64,
    pub(crate) syncs: u64,
    pub(crate) dropped: u64,
    pub(crate) expired: u64,
    /// Records dropped because they waited longer than `[store] max_age`, all devices.
    pub(crate) too_old: u64,
    pub(crate) corrupt_skipped: u64,
    pub(crate) segments_skipped: u64,
    pub(crate) rejected_disk_full: u64,
    /// Records handed to the uplink that were read back from their segments rather than
    /// taken from the read cache (a backlog, a retry, a restart).
    pub(crate) records_read_back: u64,
    /// How long ago the gateway received the oldest record not yet acknowledged; none when
    /// nothing waits or its receive time is from a clock that was not set.
    pub(crate) oldest_age_seconds: Option<u64>,
    /// Whether flow control slows the sensors now (`[store] max_lag`).
    pub(crate) slowing_senders: bool,
    pub(crate) devices: Vec<DeviceStats>,
}

/// When the gateway received the record at `p`, read from its segment; `None` when it cannot
/// be read (a damaged record is the reader's to skip).
pub(crate) fn received_at(p: &crate::index::Picked) -> Option<gw_model::Timestamp> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; p.pos.len as usize];
    p.file.read_exact_at(&mut buf, u64::from(p.pos.offset)).ok()?;
    crate::format::parse_at(&buf, 0, p.pos.seq - 1)
        .filter(|f| f.seq == p.pos.seq && f.kind == crate::format::KIND_DATA)
        .and_then(|f| crate::format::decode_telemetry(f.body))
        .map(|t| t.received_at)
}

impl OutboxStats {
    /// Fills in the age of `oldest` (read from its segment: its receive time).
    pub(crate) fn with_oldest(mut self, oldest: Option<crate::index::Picked>) -> Self {
        let received = oldest.as_ref().and_then(received_at).filter(|at| at.is_trusted());
        let now = gw_model::Timestamp::from_system(std::time::SystemTime::now()).as_millis();
        self.oldest_age_seconds = received.map(|at| now.saturating_sub(at.as_millis()) / 1000);
        self
    }

    /// How long ago the oldest record not yet acknowledged was received (seconds).
    pub fn oldest_age_seconds(&self) -> Option<u64> {
        self.oldest_age_seconds
    }

    /// Records not yet acknowledged by the cloud, in flight included.
    pub fn records_queued(&self) -> u64 {
        self.records_queued
    }
    /// On-disk size of those records.
    pub fn bytes_queued(&self) -> u64 {
        self.bytes_queued
    }
    /// Records handed to the uplink and not yet acked, nacked or parked.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }
    /// Size of the segment files: what counts against `max_bytes`.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }
    /// The quota in force: the configured `max_bytes`, or less if the filesystem cannot hold it.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
    pub fn segments(&self) -> u64 {
        self.segments
    }
    /// Bytes written to segment files since open (for an SD-card wear estimate).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }
    /// Group commits that carried records.
    pub fn commits(&self) -> u64 {
        self.commits
    }
    pub fn records_committed(&self) -> u64 {
        self.records_committed
    }
    /// fdatasync calls.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }
    /// Average records per group commit.
    pub fn records_per_commit(&self) -> f64 {
        if self.commits == 0 { 0.0 } else { self.records_committed as f64 / self.commits as f64 }
    }
    /// Records dropped by `when_full = "drop-oldest"`, all devices.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Records dropped because their device stayed refused by the cloud (parked) longer than
    /// `[cloud] parked_max_age`, all devices still known to the outbox.
    pub fn expired(&self) -> u64 {
        self.expired
    }
    /// Records dropped because they waited longer than `[store] max_age`.
    pub fn too_old(&self) -> u64 {
        self.too_old
    }
    /// Damaged records or regions skipped at open or on read.
    pub fn corrupt_skipped(&self) -> u64 {
        self.corrupt_skipped
    }
    /// Segment files skipped whole at open: unreadable, or stray (no record, and named inside
    /// an older segment or without a header). They are left in place.
    pub fn segments_skipped(&self) -> u64 {
        self.segments_skipped
    }
    /// Records refused because the disk was full (their senders were told so).
    pub fn rejected_disk_full(&self) -> u64 {
        self.rejected_disk_full
    }
    /// Records handed to the uplink that were read back from their segments, not taken from
    /// the read cache (`[store] read_cache`): a backlog larger than it, a retry, a restart.
    pub fn records_read_back(&self) -> u64 {
        self.records_read_back
    }
    /// Devices with queued records, drops, or parked.
    pub fn devices(&self) -> &[DeviceStats] {
        &self.devices
    }
    /// The parked devices.
    pub fn parked(&self) -> impl Iterator<Item = &DeviceStats> {
        self.devices.iter().filter(|d| d.parked)
    }
}
