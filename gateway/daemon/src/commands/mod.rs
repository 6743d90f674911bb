//! The command router: every command the cloud hands the gateway (external push, the Drogue
//! MQTT uplink's `command/inbox`, Drogue HTTP command waits) comes in through
//! [`CommandSink::submit`], and leaves towards its sensor by the first way that works:
//!
//! 1. a command for the gateway itself (`[gateway] name`) is carried out by the daemon
//!    ([`gateway`]: `resync`, `set-log-level`, `reboot`, `update`);
//! 2. a device this gateway does not proxy (registry cache, `[[devices]]`, local accounts) is
//!    refused ([`CommandOutcome::UnknownDevice`]);
//! 3. when nothing is queued for the sensor yet: a request of the sensor waiting for a command
//!    (HTTP/CoAP `ct`) gets it in its answer, or its bridge publishes it
//!    ([`CommandOutcome::Delivered`]);
//! 4. otherwise it goes into the durable [`CommandQueue`] with its expiry (the command's own,
//!    or now + `[commands] ttl`) ([`CommandOutcome::Queued`]), on disk before the answer.
//!
//! Queued commands leave on the sensor's next contact: an MQTT subscription to its commands
//! (the endpoint reports it), its next HTTP/CoAP request ([`CommandSource::next_command`],
//! even without `ct`), or a waiting request. An MQTT session gets a command *lent*: it stays
//! in the queue until the session's receipt says the sensor has it (its PUBACK at QoS 1), and
//! is available again, in its place, when the session ends first; so a command for a
//! subscribed sensor is queued (durably) too, then published at once. A sweeper drops expired
//! commands and retries MQTT sessions whose command queue was full. Every fate is recorded in
//! [`Outcomes`].
//!
//! # Layout
//! - [`config`]: the `[commands]` section.
//! - [`outcomes`]: logging, counting, listing and reporting what became of each command.
//! - [`gateway`]: commands for the gateway itself.
//! - `waiters`: requests waiting for a command.

pub mod config;
pub mod gateway;
pub mod outcomes;
mod waiters;

use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use gw_model::{Command, CommandOutcome, CommandSink, CommandSource, Identity, Timestamp};
use gw_store::{CommandQueue, QueueLimits, QueueStats, QueuedCommand, StoreError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use config::CommandsConfig;
pub use outcomes::{Fate, OutcomeCounts, OutcomeRecord, Outcomes, Reporter, Via};

use crate::commands::{gateway::GatewayCommands, waiters::Waiters};

/// How often the sweeper looks for expired commands and full MQTT sessions at the latest.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Queued commands of bridged devices are offered to their bridge every this many sweeps.
const BRIDGE_RETRY_SWEEPS: u64 = 10;

/// Says whether a device is one this gateway proxies, and its canonical identity (a command
/// may name an alias).
pub type Directory = Arc<dyn Fn(&Identity) -> Option<Identity> + Send + Sync>;

/// The command router. Cheap to clone; every clone is the same router.
#[derive(Clone)]
pub struct CommandRouter {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Identity,
    ttl: Duration,
    max_payload: u64,
    queue: Arc<CommandQueue>,
    directory: Directory,
    mqtt: OnceLock<gw_driver_mqtt::Commands>,
    bridge: OnceLock<gw_driver_mqtt::BridgeCommands>,
    waiters: Waiters,
    outcomes: Outcomes,
    own: GatewayCommands,
    /// Serializes moving queued commands into live sessions, so they keep their order.
    pump: tokio::sync::Mutex<()>,
    /// Wakes the sweeper when something was queued (a new, earlier expiry).
    queued: tokio::sync::Notify,
    /// When a command for a device the gateway did not know last asked for a resync.
    unknown_resync: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long a command for a device the gateway does not know waits for a registry resync to
/// bring it (a device created a moment ago) before it is refused as unknown.
pub const UNKNOWN_DEVICE_WAIT: Duration = Duration::from_secs(2);
/// At most one resync per this long is asked for by commands for unknown devices.
const UNKNOWN_RESYNC_EVERY: Duration = Duration::from_secs(1);

/// The router's state for `/api/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct CommandsStatus {
    pub queued: usize,
    pub queued_bytes: u64,
    pub log_bytes: u64,
    /// Requests waiting for a command now.
    pub waiting_requests: usize,
    pub counts: OutcomeCounts,
    /// Commands waiting per device.
    pub devices: Vec<DeviceQueue>,
    /// Recent outcomes, newest first.
    pub recent: Vec<OutcomeRecord>,
    /// The log filter a `set-log-level` command set, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceQueue {
    pub device: String,
    pub application: String,
    pub queued: usize,
}

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

impl CommandRouter {
    /// Opens the durable queue in `<data_dir>/commands/` (blocking: call it from a blocking
    /// thread) and builds the router for `gateway`.
    pub fn open(
        gateway: Identity,
        config: &CommandsConfig,
        data_dir: &Path,
        directory: Directory,
    ) -> Result<Self, StoreError> {
        let limits = QueueLimits {
            max_per_device: config.max_per_device,
            max_total: config.max_total,
            max_bytes: config.max_bytes.bytes(),
        };
        let queue = CommandQueue::open(&data_dir.join("commands"), limits)?;
        Ok(Self {
            inner: Arc::new(Inner {
                gateway,
                ttl: config.ttl,
                max_payload: config.max_payload.bytes(),
                queue: Arc::new(queue),
                directory,
                mqtt: OnceLock::new(),
                bridge: OnceLock::new(),
                waiters: Waiters::default(),
                outcomes: Outcomes::new(config.recent),
                own: GatewayCommands::new(config.reboot_command.clone()),
                pump: tokio::sync::Mutex::new(()),
                queued: tokio::sync::Notify::new(),
                unknown_resync: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Routes commands to the MQTT endpoint's sessions (set once).
    pub fn attach_mqtt(&self, commands: gw_driver_mqtt::Commands) {
        if self.inner.mqtt.set(commands).is_err() {
            tracing::warn!("MQTT endpoint attached to the command router twice");
        }
    }

    /// Routes commands for devices behind the legacy broker bridges to their site brokers
    /// (set once). A bridged device counts as proxied even when no registry lists it.
    pub fn attach_bridges(&self, bridges: gw_driver_mqtt::BridgeCommands) {
        if self.inner.bridge.set(bridges).is_err() {
            tracing::warn!("bridges attached to the command router twice");
        }
    }

    /// Lets the `resync` gateway command reach the registry sync.
    pub fn attach_resync(&self, handle: gw_cloud_sync::ResyncHandle) {
        self.inner.own.set_resync(handle);
    }

    /// Lets the `update` gateway command install bundles (`[update]`).
    pub fn attach_updater(&self, updater: std::sync::Arc<crate::update::Updater>) {
        self.inner.own.set_updater(updater);
    }

    /// Reports every outcome upstream as well (`[commands] report_channel`).
    pub fn report_to(&self, reporter: Reporter) {
        self.inner.outcomes.report_to(reporter);
    }

    /// Commands waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.inner.queue.len()
    }

    pub fn status(&self) -> CommandsStatus {
        let QueueStats { queued, bytes, log_bytes, devices } = self.inner.queue.stats();
        CommandsStatus {
            queued,
            queued_bytes: bytes,
            log_bytes,
            waiting_requests: self.inner.waiters.count(),
            counts: self.inner.outcomes.counts(),
            devices: devices
                .into_iter()
                .map(|(id, queued)| DeviceQueue {
                    device: id.device().to_string(),
                    application: id.app().to_string(),
                    queued,
                })
                .collect(),
            recent: self.inner.outcomes.recent(),
            log_filter: self.inner.own.log_filter(),
        }
    }

    /// Runs the sweeper until `stop`: drops expired commands (counted), moves queued commands
    /// into MQTT sessions that subscribed or have room again. Returns an error when a `reboot`
    /// command asked the daemon to stop for a restart.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut restart = self.inner.own.restart_requested();
        let mut subscribed = self.inner.mqtt.get().map(gw_driver_mqtt::Commands::subscriptions);
        let mut sweeps = 0u64;
        loop {
            let next = self.inner.queue.next_expiry().map_or(SWEEP_INTERVAL, |at| {
                let ms = at.as_millis().saturating_sub(now().as_millis());
                Duration::from_millis(ms).min(SWEEP_INTERVAL)
            });
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                requested = async { restart.wait_for(|r| *r).await.is_ok() } => {
                    if requested {
                        // let the answer to the command leave first
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        anyhow::bail!("restart requested by the reboot gateway command");
                    }
                }
                device = next_subscription(&mut subscribed) => {
                    match device {
                        Some(device) => self.pump(&device).await,
                        None => subscribed = None,
                    }
                    continue;
                }
                () = self.inner.queued.notified() => continue,
                () = tokio::time::sleep(next) => {}
            }
            sweeps += 1;
            self.sweep(sweeps.is_multiple_of(BRIDGE_RETRY_SWEEPS)).await;
        }
    }

    /// Drops expired commands and retries MQTT delivery of queued ones (and bridge delivery
    /// when `bridges`).
    async fn sweep(&self, bridges: bool) {
        let queue = self.inner.queue.clone();
        let at = now();
        match tokio::task::spawn_blocking(move || queue.expire(at)).await {
            Ok(Ok(expired)) => {
                for c in expired {
                    self.inner.outcomes.record(&c, Fate::Expired);
                }
            }
            Ok(Err(e)) => tracing::error!(cause = %e, "cannot drop expired commands"),
            Err(e) => tracing::error!(cause = %e, "dropping expired commands panicked"),
        }
        for device in self.inner.queue.devices() {
            let subscribed = self.inner.mqtt.get().is_some_and(|m| m.is_subscribed(&device));
            if subscribed || (bridges && self.bridged(&device)) {
                self.pump(&device).await;
            }
        }
    }

    fn bridged(&self, device: &Identity) -> bool {
        self.inner.bridge.get().is_some_and(|b| b.is_bridged(device))
    }

    /// Takes the oldest queued command of `device` (blocking I/O off the async threads),
    /// recording the expired ones dropped on the way; with `lend`, it stays queued (lent out).
    async fn take_or_lend(&self, device: &Identity, lend: bool) -> Option<QueuedCommand> {
        let (queue, id) = (self.inner.queue.clone(), device.clone());
        let at = now();
        let taken = tokio::task::spawn_blocking(move || {
            if lend { queue.lend(&id, at) } else { queue.take(&id, at) }
        });
        let taken = match taken.await {
            Ok(Ok(taken)) => taken,
            Ok(Err(e)) => {
                tracing::error!(device = %device, cause = %e, "cannot take a queued command");
                return None;
            }
            Err(e) => {
                tracing::error!(device = %device, cause = %e, "taking a queued command panicked");
                return None;
            }
        };
        for c in &taken.expired {
            self.inner.outcomes.record(c, Fate::Expired);
        }
        taken.command
    }

    async fn take(&self, device: &Identity) -> Option<QueuedCommand> {
        self.take_or_lend(device, false).await
    }

    /// Waits for the receipt of a command lent to an MQTT session: removes it from the queue
    /// once the sensor has it, or makes it available again (in its place) when the session
    /// ended first; it then leaves at the sensor's next subscription.
    fn watch_receipt(&self, lent: QueuedCommand, receipt: tokio::sync::oneshot::Receiver<()>) {
        let router = self.clone();
        tokio::spawn(async move {
            let queue = router.inner.queue.clone();
            let device = format!("{}@{}", lent.command.device, lent.command.app);
            if receipt.await.is_err() {
                queue.unlend(lent.id);
                tracing::info!(%device, command = %lent.command.name,
                    "MQTT session ended before the sensor acknowledged the command; kept queued");
                return;
            }
            let id = lent.id;
            match tokio::task::spawn_blocking(move || queue.settle(id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(%device, cause = %e, "cannot remove a delivered command")
                }
                Err(e) => {
                    tracing::error!(%device, cause = %e, "removing a delivered command panicked")
                }
            }
            router.inner.outcomes.record(&lent.command, Fate::Delivered { via: Via::Mqtt });
        });
    }

    async fn restore(&self, command: QueuedCommand) {
        let queue = self.inner.queue.clone();
        let device = format!("{}@{}", command.command.device, command.command.app);
        match tokio::task::spawn_blocking(move || queue.restore(command)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%device, cause = %e, "cannot put a command back"),
            Err(e) => tracing::error!(%device, cause = %e, "putting a command back panicked"),
        }
    }

    /// Moves queued commands of `device` into its live channels: waiting requests first, then
    /// a subscribed MQTT session (lent until its receipt), then its bridge, until nothing is
    /// left to hand out or no channel takes more.
    async fn pump(&self, device: &Identity) {
        let _order = self.inner.pump.lock().await;
        while self.inner.queue.available_of(device) > 0 {
            let waiting = self.inner.waiters.has(device);
            let mqtt = self.inner.mqtt.get().filter(|m| m.is_subscribed(device));
            let bridge = self.inner.bridge.get().filter(|b| b.is_bridged(device));
            if waiting {
                let Some(q) = self.take(device).await else { return };
                let delivered = q.command.clone();
                match self.inner.waiters.hand(device, q.command) {
                    None => {
                        self.inner.outcomes.record(&delivered, Fate::Delivered { via: Via::Wait })
                    }
                    // the request went away meanwhile: back in its place, and on
                    Some(back) => self.restore(QueuedCommand { id: q.id, command: back }).await,
                }
                continue;
            }
            if let Some(mqtt) = mqtt {
                let Some(q) = self.take_or_lend(device, true).await else { return };
                let (receipt, has_it) = tokio::sync::oneshot::channel();
                let (name, payload) = (q.command.name.clone(), q.command.payload.clone());
                match mqtt.push_with_receipt(device, name, payload, Some(receipt)) {
                    gw_driver_mqtt::Delivery::Queued => {
                        self.watch_receipt(q, has_it);
                        continue;
                    }
                    other => {
                        self.inner.queue.unlend(q.id);
                        tracing::debug!(%device, delivery = ?other,
                            "MQTT session cannot take the command now");
                    }
                }
            }
            let Some(bridge) = bridge else { return };
            let Some(q) = self.take(device).await else { return };
            match self.live(device, &q.command, Some(bridge)).await {
                Some(via) => self.inner.outcomes.record(&q.command, Fate::Delivered { via }),
                None => {
                    self.restore(q).await;
                    return;
                }
            }
        }
    }

    /// Offers `command` to the device's bridge; how it left, if it did.
    async fn live(
        &self,
        device: &Identity,
        command: &Command,
        bridge: Option<&gw_driver_mqtt::BridgeCommands>,
    ) -> Option<Via> {
        if let Some(bridge) = bridge {
            match bridge.push(device, &command.name, command.payload.clone()).await {
                gw_driver_mqtt::BridgePush::Published { .. } => return Some(Via::Bridge),
                other => tracing::debug!(%device, outcome = ?other,
                    "bridge cannot take the command now"),
            }
        }
        None
    }

    /// A command handed to a waiter that went away: back through the router (it was on disk
    /// no more, or never).
    fn give_back(&self, command: Command) {
        let router = self.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(device = %command.device, command = %command.name,
                "command handed to a request that went away cannot be requeued (no runtime)");
            return;
        };
        handle.spawn(async move {
            tracing::info!(device = %command.device, command = %command.name,
                "request went away before answering with its command; routing it again");
            router.submit(command).await;
        });
    }

    /// A device the gateway does not know may have been created in the registry a moment
    /// ago (the sync polls every `[registry] interval`; Drogue publishes changes only to
    /// Kafka): asks for a resync (at most one per second) and waits up to
    /// [`UNKNOWN_DEVICE_WAIT`] for the device to appear. `None` without a registry.
    async fn after_resync(&self, target: &Identity) -> Option<Identity> {
        let resync = self.inner.own.resync_handle()?;
        {
            let mut last = self.inner.unknown_resync.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= UNKNOWN_RESYNC_EVERY) {
                *last = Some(std::time::Instant::now());
                tracing::info!(device = %target, "command for a device the gateway does not know; asking the registry now");
                resync.resync();
            }
        }
        let deadline = tokio::time::Instant::now() + UNKNOWN_DEVICE_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(found) = (self.inner.directory)(target) {
                return Some(found);
            }
        }
        None
    }

    async fn route(&self, mut command: Command) -> Fate {
        let at = now();
        if command.expires_at.is_none() {
            command.expires_at = Some(at.saturating_add(self.inner.ttl));
        }
        if command.is_expired(at) {
            return Fate::Rejected("the command expired before it reached the gateway".into());
        }
        let target = Identity::new(command.app.clone(), command.device.clone());
        let known = if target == self.inner.gateway {
            Some(target.clone())
        } else {
            (self.inner.directory)(&target)
                .or_else(|| self.bridged(&target).then(|| target.clone()))
        };
        let known = match known {
            Some(t) => Some(t),
            None => self.after_resync(&target).await,
        };
        let Some(target) = known else { return Fate::UnknownDevice };
        if command.payload.len() as u64 > self.inner.max_payload {
            return Fate::TooLarge;
        }
        if target == self.inner.gateway {
            return match self.inner.own.handle(&command).await {
                Ok(()) => Fate::Delivered { via: Via::Gateway },
                Err(reason) => Fate::Rejected(reason),
            };
        }
        command.device = target.device().clone();
        if self.inner.queue.len_of(&target) == 0 {
            command = match self.inner.waiters.hand(&target, command) {
                None => return Fate::Delivered { via: Via::Wait },
                Some(back) => back,
            };
            // a subscribed MQTT session gets it from the queue (lent until the sensor's PUBACK)
            let mqtt = self.inner.mqtt.get().is_some_and(|m| m.is_subscribed(&target));
            let bridge = self.inner.bridge.get().filter(|b| b.is_bridged(&target));
            if !mqtt && let Some(via) = self.live(&target, &command, bridge).await {
                return Fate::Delivered { via };
            }
        }
        let queue = self.inner.queue.clone();
        let queued = command.clone();
        let fate = match tokio::task::spawn_blocking(move || queue.push(queued, at)).await {
            Ok(Ok(_)) => Fate::Queued,
            Ok(Err(StoreError::CommandQueueFull { .. } | StoreError::CommandStoreFull { .. })) => {
                Fate::QueueFull
            }
            Ok(Err(StoreError::CommandExpired)) => {
                Fate::Rejected("the command expired before it was queued".into())
            }
            Ok(Err(e)) => {
                tracing::error!(device = %target, cause = %e, "cannot queue a command");
                Fate::QueueFull
            }
            Err(e) => {
                tracing::error!(device = %target, cause = %e, "queueing a command panicked");
                Fate::QueueFull
            }
        };
        if fate == Fate::Queued {
            self.inner.queued.notify_one();
            // a request or a subscription may have come in meanwhile
            self.inner.outcomes.record(&command, Fate::Queued);
            self.pump(&target).await;
            return Fate::Queued;
        }
        fate
    }
}

async fn next_subscription(
    rx: &mut Option<tokio::sync::broadcast::Receiver<Identity>>,
) -> Option<Identity> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(r) = rx else { return std::future::pending().await };
    loop {
        match r.recv().await {
            Ok(device) => return Some(device),
            // missed some: the sweep that follows finds them
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return None,
        }
    }
}

impl CommandSink for CommandRouter {
    async fn submit(&self, command: Command) -> CommandOutcome {
        let recorded = command.clone();
        let fate = self.route(command).await;
        if fate != Fate::Queued {
            // Queued is recorded before the pump, so that it comes before its delivery
            self.inner.outcomes.record(&recorded, fate.clone());
        }
        match fate {
            Fate::Delivered { .. } => CommandOutcome::Delivered,
            Fate::Queued => CommandOutcome::Queued,
            Fate::UnknownDevice => CommandOutcome::UnknownDevice,
            Fate::TooLarge => CommandOutcome::TooLarge,
            Fate::QueueFull => CommandOutcome::QueueFull,
            Fate::Expired => CommandOutcome::Rejected("expired".into()),
            Fate::Rejected(reason) => CommandOutcome::Rejected(reason),
        }
    }

    fn wait_ended_since(&self, device: &Identity, since: Timestamp) -> bool {
        self.inner.waiters.ended_since(device, since)
    }
}

/// A request waiting for a command; gives back a command handed to it if it goes away
/// before taking it.
struct Waiting<'a> {
    router: &'a CommandRouter,
    device: &'a Identity,
    id: u64,
    rx: tokio::sync::oneshot::Receiver<Command>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.router.inner.waiters.remove(self.device, self.id, now());
        self.rx.close();
        if let Ok(command) = self.rx.try_recv() {
            self.router.give_back(command);
        }
    }
}

impl CommandSource for CommandRouter {
    async fn next_command(&self, device: &Identity, wait: Duration) -> Option<Command> {
        if self.inner.queue.len_of(device) > 0 {
            let _order = self.inner.pump.lock().await;
            if let Some(q) = self.take(device).await {
                self.inner.outcomes.record(&q.command, Fate::Delivered { via: Via::Contact });
                return Some(q.command);
            }
        }
        if wait.is_zero() {
            return None;
        }
        let (id, rx) = self.inner.waiters.register(device);
        let mut waiting = Waiting { router: self, device, id, rx };
        // something may have been queued between the look above and the registration
        if self.inner.queue.len_of(device) > 0 {
            self.pump(device).await;
        }
        let command = match tokio::time::timeout(wait, &mut waiting.rx).await {
            Ok(Ok(command)) => Some(command),
            Ok(Err(_)) => None,
            Err(_) => {
                waiting.rx.close();
                waiting.rx.try_recv().ok()
            }
        };
        drop(waiting);
        command
    }
}

#[cfg(test)]
mod tests;
