//! The endpoint's shared state across connections: the registry of live sessions by device
//! (one per device: a newer connection takes over), the [`Commands`] handle the daemon pushes
//! commands through, and the counters behind [`EndpointStats`].

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use gw_model::{CommandName, Identity};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A command on its way into one session.
#[derive(Debug)]
pub(crate) struct PushedCommand {
    pub name: CommandName,
    pub payload: Bytes,
    /// Sent when the sensor has it; dropped unsent when it is lost on the way.
    pub receipt: Option<crate::session::Receipt>,
}

/// One live session, as the registry knows it.
struct Entry {
    conn: u64,
    /// Cancelled to make the session end (takeover, revocation).
    kick: CancellationToken,
    /// Set before `kick` is cancelled when the device's access was revoked.
    revoked: Arc<AtomicBool>,
    commands: mpsc::Sender<PushedCommand>,
    subscribed: Arc<AtomicBool>,
}

/// Connects and disconnects of one device since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceConnections {
    pub connected: bool,
    pub connects: u64,
    pub disconnects: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    live: Mutex<HashMap<Identity, Entry>>,
    devices: Mutex<HashMap<Identity, DeviceConnections>>,
    pub counters: Counters,
    subscribed: SubscribeEvents,
}

/// Announces sessions that just subscribed to their commands (see [`Commands::subscriptions`]).
struct SubscribeEvents(tokio::sync::broadcast::Sender<Identity>);

/// Subscription events a slow listener may fall behind by before it misses some.
const SUBSCRIBE_EVENTS: usize = 256;

impl Default for SubscribeEvents {
    fn default() -> Self {
        Self(tokio::sync::broadcast::Sender::new(SUBSCRIBE_EVENTS))
    }
}

/// The endpoint's counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub refused_connections: AtomicU64,
    pub evicted_connections: AtomicU64,
    pub refused_logins: AtomicU64,
    pub bad_frames: AtomicU64,
    pub takeovers: AtomicU64,
    pub publishes: AtomicU64,
    pub commands_delivered: AtomicU64,
    pub wills: AtomicU64,
}

/// What a registered session gets back.
pub(crate) struct Registration {
    pub commands: mpsc::Receiver<PushedCommand>,
    pub subscribed: Arc<AtomicBool>,
}

/// Commands queued towards one session before [`Commands::push`] reports it full.
const COMMAND_QUEUE: usize = 16;

impl Registry {
    /// Registers `identity`'s session, kicking out an older one of the same device.
    pub fn register(
        &self,
        identity: &Identity,
        conn: u64,
        kick: CancellationToken,
        revoked: Arc<AtomicBool>,
    ) -> Registration {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let subscribed = Arc::new(AtomicBool::new(false));
        let entry = Entry { conn, kick, revoked, commands: tx, subscribed: subscribed.clone() };
        let old = lock(&self.live).insert(identity.clone(), entry);
        if let Some(old) = old {
            tracing::info!(device = %identity, "MQTT session taken over by a new connection");
            self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
            old.kick.cancel();
        }
        let mut devices = lock(&self.devices);
        let d = devices.entry(identity.clone()).or_default();
        d.connects += 1;
        d.connected = true;
        Registration { commands: rx, subscribed }
    }

    /// Ends `identity`'s live session because it lost its access. Returns whether one was live.
    pub fn revoke(&self, identity: &Identity) -> bool {
        match lock(&self.live).get(identity) {
            Some(entry) => {
                entry.revoked.store(true, Ordering::Release);
                entry.kick.cancel();
                true
            }
            None => false,
        }
    }

    /// Removes the session `conn` of `identity` (unless a newer one replaced it).
    pub fn unregister(&self, identity: &Identity, conn: u64) {
        let mut live = lock(&self.live);
        let current = live.get(identity).is_some_and(|e| e.conn == conn);
        if current {
            live.remove(identity);
        }
        let still_connected = live.contains_key(identity);
        drop(live);
        let mut devices = lock(&self.devices);
        let d = devices.entry(identity.clone()).or_default();
        d.disconnects += 1;
        d.connected = still_connected;
    }

    /// `identity`'s session has just subscribed to its commands (it had no command
    /// subscription before).
    pub fn subscribed(&self, identity: &Identity) {
        // nobody listening is fine: then nobody holds commands for later
        let _ = self.subscribed.0.send(identity.clone());
    }

    fn snapshot(&self) -> EndpointStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut devices: Vec<_> =
            lock(&self.devices).iter().map(|(id, d)| (id.clone(), *d)).collect();
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        EndpointStats {
            sessions: lock(&self.live).len(),
            accepted_connections: get(&c.accepted),
            refused_connections: get(&c.refused_connections),
            evicted_connections: get(&c.evicted_connections),
            refused_logins: get(&c.refused_logins),
            bad_frames: get(&c.bad_frames),
            takeovers: get(&c.takeovers),
            publishes: get(&c.publishes),
            commands_delivered: get(&c.commands_delivered),
            wills: get(&c.wills),
            devices,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The handle the daemon pushes commands for connected sensors through. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    registry: Arc<Registry>,
}

/// What became of a pushed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued to the device's live session, which has a command subscription; it is published
    /// on `command/inbox//<command>` at the granted QoS.
    Queued,
    /// The device has no live MQTT session.
    NotConnected,
    /// The device is connected but has not subscribed to `command/inbox/...`.
    NotSubscribed,
    /// The session's command queue is full (the sensor is not reading): try later.
    Full,
}

impl Commands {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Ends `device`'s live session, if any, because it may no longer log in (removed from
    /// the registry): v5 clients get DISCONNECT 0x87 (not authorized). Returns whether a
    /// session was live.
    pub fn disconnect(&self, device: &Identity) -> bool {
        self.registry.revoke(device)
    }

    /// Pushes command `name` with `payload` to `device`'s live session.
    pub fn push(&self, device: &Identity, name: CommandName, payload: Bytes) -> Delivery {
        self.push_with_receipt(device, name, payload, None)
    }

    /// As [`push`](Self::push); when it is [`Delivery::Queued`], `receipt` is sent once the
    /// sensor has the command (its PUBACK at QoS 1, handed to the socket at QoS 0) and dropped
    /// unsent if the session ends first, so the caller can keep the command until then.
    pub fn push_with_receipt(
        &self,
        device: &Identity,
        name: CommandName,
        payload: Bytes,
        receipt: Option<crate::session::Receipt>,
    ) -> Delivery {
        let live = lock(&self.registry.live);
        let Some(entry) = live.get(device) else { return Delivery::NotConnected };
        if !entry.subscribed.load(Ordering::Relaxed) {
            return Delivery::NotSubscribed;
        }
        match entry.commands.try_send(PushedCommand { name, payload, receipt }) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::NotConnected,
        }
    }

    /// Devices whose session has just subscribed to `command/inbox/...` (and had no command
    /// subscription before), so that commands held for them can be pushed now. A receiver that
    /// falls more than 256 events behind gets `Lagged` and should look at every device it holds
    /// commands for ([`is_subscribed`](Self::is_subscribed)).
    pub fn subscriptions(&self) -> tokio::sync::broadcast::Receiver<Identity> {
        self.registry.subscribed.0.subscribe()
    }

    /// Whether `device` has a live session with a command subscription.
    pub fn is_subscribed(&self, device: &Identity) -> bool {
        lock(&self.registry.live).get(device).is_some_and(|e| e.subscribed.load(Ordering::Relaxed))
    }
}

/// A handle to the endpoint's counters. Cheap to clone.
#[derive(Clone)]
pub struct Stats {
    registry: Arc<Registry>,
}

impl Stats {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The counters now.
    pub fn snapshot(&self) -> EndpointStats {
        self.registry.snapshot()
    }
}

/// The endpoint's counters at one moment, for the status page and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Sessions connected now (past CONNACK).
    pub sessions: usize,
    pub accepted_connections: u64,
    /// Logins that passed while `max_connections` sessions were open (CONNACK "server
    /// unavailable").
    pub refused_connections: u64,
    /// Connections not yet logged in that were closed to make room for newer ones (a full
    /// `max_unauthenticated` pool or per-address share).
    pub evicted_connections: u64,
    /// CONNECTs answered with a refusal (bad credentials, rate limited, no clean session).
    pub refused_logins: u64,
    /// Connections closed for a packet that could not be decoded or was too large.
    pub bad_frames: u64,
    pub takeovers: u64,
    /// Messages handed to the ingest and committed.
    pub publishes: u64,
    pub commands_delivered: u64,
    /// Last wills handed to the ingest.
    pub wills: u64,
    /// Per device, sorted: connected now, connects and disconnects since start.
    pub devices: Vec<(Identity, DeviceConnections)>,
}
