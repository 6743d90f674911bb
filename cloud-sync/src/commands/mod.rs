//! Command intake: the three ways Drogue Cloud hands the gateway commands for the devices it
//! proxies (contracts/drogue-cloud.md §4), all ending in one [`CommandIntake`] that passes
//! each command to the daemon's command router (a [`CommandSink`]) and counts what became of
//! it.
//!
//! - [`push`]: the external push endpoint, `POST /api/commands/v1/push` (Drogue's default
//!   body), as an axum router the daemon mounts on its web listener.
//! - the MQTT subscription of the `drogue-mqtt` uplink (`command/inbox/#`), in
//!   [`crate::mqtt`].
//! - HTTP command waits (`ct=`) of the `drogue-http` uplink, in [`crate::drogue_http`].

pub mod push;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use gw_model::{Command, CommandOutcome, CommandSink, Identity, Timestamp};
use serde::Serialize;

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The external push endpoint.
    Push,
    /// The Drogue MQTT uplink's `command/inbox/#` subscription.
    Mqtt,
    /// The answer to an uplink HTTP publish that waited (`ct=`).
    HttpWait,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Push => "push",
            Via::Mqtt => "mqtt",
            Via::HttpWait => "http-wait",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

type Submitting<'a> = Pin<Box<dyn Future<Output = CommandOutcome> + Send + 'a>>;

/// [`CommandSink`] made object safe, so the intakes need no type parameter.
trait DynSink: Send + Sync + 'static {
    fn submit_boxed(&self, command: Command) -> Submitting<'_>;
    fn wait_ended_since(&self, device: &Identity, since: Timestamp) -> bool;
}

impl<S: CommandSink> DynSink for S {
    fn submit_boxed(&self, command: Command) -> Submitting<'_> {
        Box::pin(self.submit(command))
    }

    fn wait_ended_since(&self, device: &Identity, since: Timestamp) -> bool {
        CommandSink::wait_ended_since(self, device, since)
    }
}

/// The one door every intake passes commands through: submits to the command router and counts
/// the outcome per source (the router logs each command's fate). Cheap to clone.
#[derive(Clone)]
pub struct CommandIntake {
    sink: Arc<dyn DynSink>,
    stats: Arc<IntakeStats>,
}

impl fmt::Debug for CommandIntake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandIntake").field("stats", &self.stats.snapshot()).finish()
    }
}

impl CommandIntake {
    pub fn new<S: CommandSink>(sink: Arc<S>) -> Self {
        Self { sink, stats: Arc::new(IntakeStats::default()) }
    }

    /// Hands `command` to the router and resolves with its outcome once the router decided
    /// (delivered, durably queued, or refused).
    pub async fn submit(&self, via: Via, command: Command) -> CommandOutcome {
        let (app, device, name) =
            (command.app.clone(), command.device.clone(), command.name.clone());
        let size = command.payload.len();
        let outcome = self.sink.submit_boxed(command).await;
        self.stats.count(via, &outcome);
        // The router logs every command's fate; this line only adds where it came from.
        tracing::debug!(%via, %app, %device, command = %name, size, ?outcome, "command from the cloud");
        outcome
    }

    /// Whether the sensor's request of `since` that waits for a command has had its answer
    /// (see [`CommandSink::wait_ended_since`]).
    pub fn wait_ended_since(&self, device: &Identity, since: Timestamp) -> bool {
        self.sink.wait_ended_since(device, since)
    }

    /// Counts a request the push endpoint refused before it became a command (bad caller,
    /// bad body).
    pub(crate) fn count_refused_request(&self, unauthorized: bool) {
        let counter =
            if unauthorized { &self.stats.unauthorized } else { &self.stats.bad_requests };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> IntakeSnapshot {
        self.stats.snapshot()
    }
}

#[derive(Debug, Default)]
struct IntakeStats {
    push: AtomicU64,
    mqtt: AtomicU64,
    http_wait: AtomicU64,
    delivered: AtomicU64,
    queued: AtomicU64,
    unknown_device: AtomicU64,
    too_large: AtomicU64,
    queue_full: AtomicU64,
    rejected: AtomicU64,
    unauthorized: AtomicU64,
    bad_requests: AtomicU64,
}

impl IntakeStats {
    fn count(&self, via: Via, outcome: &CommandOutcome) {
        let source = match via {
            Via::Push => &self.push,
            Via::Mqtt => &self.mqtt,
            Via::HttpWait => &self.http_wait,
        };
        source.fetch_add(1, Ordering::Relaxed);
        let fate = match outcome {
            CommandOutcome::Delivered => &self.delivered,
            CommandOutcome::Queued => &self.queued,
            CommandOutcome::UnknownDevice => &self.unknown_device,
            CommandOutcome::TooLarge => &self.too_large,
            CommandOutcome::QueueFull => &self.queue_full,
            CommandOutcome::Rejected(_) => &self.rejected,
        };
        fate.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IntakeSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IntakeSnapshot {
            received_push: get(&self.push),
            received_mqtt: get(&self.mqtt),
            received_http_wait: get(&self.http_wait),
            delivered: get(&self.delivered),
            queued: get(&self.queued),
            unknown_device: get(&self.unknown_device),
            too_large: get(&self.too_large),
            queue_full: get(&self.queue_full),
            rejected: get(&self.rejected),
            push_unauthorized: get(&self.unauthorized),
            push_bad_requests: get(&self.bad_requests),
        }
    }
}

/// What the intakes counted, for `/api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IntakeSnapshot {
    /// Commands taken from the external push endpoint.
    pub received_push: u64,
    /// Commands taken from the MQTT uplink's `command/inbox/#` subscription.
    pub received_mqtt: u64,
    /// Commands that came back on uplink HTTP publishes that waited (`ct=`).
    pub received_http_wait: u64,
    /// The router delivered them at once.
    pub delivered: u64,
    /// The router queued them durably.
    pub queued: u64,
    /// For devices this gateway does not proxy.
    pub unknown_device: u64,
    pub too_large: u64,
    /// Refused because the device's queue or the store was full.
    pub queue_full: u64,
    /// Refused for another reason (e.g. already expired).
    pub rejected: u64,
    /// Push requests with a missing or wrong secret or client certificate (401/403).
    pub push_unauthorized: u64,
    /// Push requests whose body was not a valid command (400). Bodies over the size limit are
    /// refused (413) before they are read whole and are not counted here.
    pub push_bad_requests: u64,
}
