//! What became of each command: one log line with structured fields, a counter per fate, a
//! bounded list of recent outcomes for the status page, and (optionally) a JSON report sent
//! upstream through the outbox as telemetry of the gateway itself.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use gw_model::{Channel, Command, Identity, Ingest, Telemetry, Timestamp};
use serde::Serialize;

/// The fate of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Handed to the sensor (or carried out by the gateway itself); `via` names how.
    Delivered { via: Via },
    /// Stored durably until the sensor makes contact.
    Queued,
    /// Dropped undelivered: its expiry passed while it waited.
    Expired,
    /// Refused: the device is not one this gateway proxies.
    UnknownDevice,
    /// Refused: the payload is larger than `max_payload`.
    TooLarge,
    /// Refused: a queue bound was reached (or the queue cannot store now).
    QueueFull,
    /// Refused for another reason.
    Rejected(String),
}

/// How a command reached its sensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Published to the sensor's MQTT session on `command/inbox//<command>`.
    Mqtt,
    /// In the answer to a request that was waiting for it (HTTP/CoAP `ct`).
    Wait,
    /// In the answer to the sensor's next request (HTTP/CoAP), taken from the queue.
    Contact,
    /// Through the legacy broker bridge.
    Bridge,
    /// Carried out by the gateway itself.
    Gateway,
}

impl Via {
    /// The name used in logs, the status JSON and reports (docs/commands.md).
    pub fn name(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Wait => "wait",
            Self::Contact => "contact",
            Self::Bridge => "bridge",
            Self::Gateway => "gateway",
        }
    }
}

impl Fate {
    /// The name used in logs, the status JSON and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Queued => "queued",
            Self::Expired => "expired",
            Self::UnknownDevice => "unknown-device",
            Self::TooLarge => "too-large",
            Self::QueueFull => "queue-full",
            Self::Rejected(_) => "rejected",
        }
    }

    fn slot(&self) -> usize {
        match self {
            Self::Delivered { .. } => 0,
            Self::Queued => 1,
            Self::Expired => 2,
            Self::UnknownDevice => 3,
            Self::TooLarge => 4,
            Self::QueueFull => 5,
            Self::Rejected(_) => 6,
        }
    }
}

/// One outcome, as listed on the status page and reported upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutcomeRecord {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    pub application: String,
    pub device: String,
    pub command: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Counters since start, one per fate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub delivered: u64,
    pub queued: u64,
    pub expired: u64,
    pub unknown_device: u64,
    pub too_large: u64,
    pub queue_full: u64,
    pub rejected: u64,
    /// Outcome reports that could not be put into the outbox.
    pub reports_failed: u64,
}

/// Where reports go: the outbox, on a channel, as the gateway.
pub struct Reporter {
    pub outbox: gw_store::Outbox,
    pub channel: Channel,
    pub gateway: Identity,
}

/// The outcome book-keeping of the router.
pub struct Outcomes {
    counts: [AtomicU64; 7],
    reports_failed: std::sync::Arc<AtomicU64>,
    recent: Mutex<VecDeque<OutcomeRecord>>,
    capacity: usize,
    reporter: OnceLock<std::sync::Arc<Reporter>>,
}

impl Outcomes {
    pub fn new(capacity: usize) -> Self {
        Self {
            counts: Default::default(),
            reports_failed: Default::default(),
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            reporter: OnceLock::new(),
        }
    }

    /// Sends every later outcome upstream through `reporter` as well (set once).
    pub fn report_to(&self, reporter: Reporter) {
        if self.reporter.set(std::sync::Arc::new(reporter)).is_err() {
            tracing::warn!("command outcome reporter set twice; keeping the first");
        }
    }

    /// Logs, counts, lists and (if configured) reports the fate of `command`.
    pub fn record(&self, command: &Command, fate: Fate) {
        let (via, reason) = match &fate {
            Fate::Delivered { via } => (Some(*via), None),
            Fate::Rejected(reason) => (None, Some(reason.clone())),
            _ => (None, None),
        };
        let outcome = fate.name();
        match &fate {
            Fate::Delivered { .. } | Fate::Queued => tracing::info!(
                app = %command.app, device = %command.device, command = %command.name,
                outcome, via = via.map_or("", Via::name), "command outcome"),
            _ => tracing::warn!(
                app = %command.app, device = %command.device, command = %command.name,
                outcome, reason = reason.as_deref().unwrap_or(""), "command outcome"),
        }
        let record = OutcomeRecord {
            at: Timestamp::from_system(SystemTime::now()).as_millis(),
            application: command.app.to_string(),
            device: command.device.to_string(),
            command: command.name.to_string(),
            outcome,
            via,
            reason,
        };
        if self.capacity > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= self.capacity {
                recent.pop_back();
            }
            recent.push_front(record.clone());
        }
        // counted once listed: a status that reads the counts and then the list never shows
        // an outcome counted but missing from the list
        self.counts[fate.slot()].fetch_add(1, Ordering::Release);
        if let Some(reporter) = self.reporter.get() {
            self.report(reporter.clone(), record);
        }
    }

    fn report(&self, reporter: std::sync::Arc<Reporter>, record: OutcomeRecord) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let failed = self.reports_failed.clone();
        let payload = match serde_json::to_vec(&record) {
            Ok(p) => Bytes::from(p),
            Err(_) => return,
        };
        let telemetry = Telemetry {
            app: reporter.gateway.app().clone(),
            device: reporter.gateway.device().clone(),
            channel: reporter.channel.clone(),
            suffix: None,
            content_type: Some("application/json".into()),
            data_schema: None,
            received_at: Timestamp::from_millis(record.at),
            payload,
            command_wait: None,
        };
        handle.spawn(async move {
            if let Err(e) = reporter.outbox.publish(telemetry).await {
                failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cause = %e, device = %record.device, command = %record.command,
                    "command outcome report not stored");
            }
        });
    }

    pub fn counts(&self) -> OutcomeCounts {
        let get = |i: usize| self.counts[i].load(Ordering::Acquire);
        OutcomeCounts {
            delivered: get(0),
            queued: get(1),
            expired: get(2),
            unknown_device: get(3),
            too_large: get(4),
            queue_full: get(5),
            rejected: get(6),
            reports_failed: self.reports_failed.load(Ordering::Relaxed),
        }
    }

    /// The recent outcomes, newest first.
    pub fn recent(&self) -> Vec<OutcomeRecord> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}
