//! What a southbound driver (MQTT, CoAP, HTTP) needs from the rest of the gateway, as traits
//! the daemon implements: check who a sensor is, and hand over its messages durably. Drivers
//! depend on these and on nothing else of the gateway.

use std::{future::Future, net::IpAddr, time::Duration};

use crate::{AppId, AuthRequest, Command, Identity, Telemetry, Timestamp};

/// Why a message could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The outbox is full (`when_full = "reject"`): MQTT v5 0x97, CoAP 5.03, HTTP 503.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The message is larger than a record (or the uplink) may be: MQTT v5 0x95, CoAP 4.13,
    /// HTTP 413.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// Metadata the uplink could never carry (a content type with control characters, an
    /// overlong data schema): MQTT v5 0x99, CoAP 4.00, HTTP 400.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The store cannot take messages now (closed, failed): retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Takes a sensor's message; resolves only once it is committed (durable per the store's
/// sync policy). Only then may the driver acknowledge it to the sensor.
pub trait Ingest: Send + Sync + 'static {
    fn publish(&self, telemetry: Telemetry)
    -> impl Future<Output = Result<(), IngestError>> + Send;

    /// Whether senders should be slowed now (see [`Pressure`]); never, by default.
    fn pressure(&self) -> &Pressure {
        &NO_PRESSURE
    }
}

/// Flow control towards the sensors. The daemon turns it on while the records waiting for a
/// *connected* cloud exceed `[store] max_lag` of forwarding and keep growing (the uplink
/// falls behind the sensors), and off once they shrink, or the cloud is unreachable (then
/// store-and-forward takes everything up to the quota). While it is on, drivers slow their
/// senders instead of queueing more: MQTT stops reading (the sensors' TCP windows fill, their
/// publishes wait), CoAP answers 5.03 with Max-Age, HTTP 503 with Retry-After. Nothing already
/// acknowledged is affected.
#[derive(Debug, Default)]
pub struct Pressure {
    on: std::sync::atomic::AtomicBool,
}

/// The pressure of an [`Ingest`] that never pushes back.
pub static NO_PRESSURE: Pressure = Pressure::new();

impl Pressure {
    /// How long a refused CoAP or HTTP sender is asked to wait (Max-Age, Retry-After).
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);

    pub const fn new() -> Self {
        Self { on: std::sync::atomic::AtomicBool::new(false) }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets it; returns whether that changed it.
    pub fn set(&self, on: bool) -> bool {
        self.on.swap(on, std::sync::atomic::Ordering::Relaxed) != on
    }
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials prove this identity (canonical device name, even when an alias or a
    /// unique username was presented).
    Pass(Identity),
    /// Wrong or unknown credentials.
    Fail,
    /// Too many failed attempts from this identifier or address: refused without checking.
    RateLimited,
    /// Not an identity that may act here at all, whatever its secret: another application's,
    /// or a technician's at a sensor endpoint (and a sensor's at the status page). Refused
    /// before any secret is checked (MQTT not authorized, CoAP 4.03, HTTP 403).
    Forbidden,
}

/// Checks what a sensor presents. `peer` is the source address, for rate limiting.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate(
        &self,
        request: &AuthRequest,
        peer: Option<IpAddr>,
    ) -> impl Future<Output = AuthOutcome> + Send;
}

/// Commands waiting for a device, for drivers that hand them over in the answer to the
/// device's own request (CoAP 2.05 with option 4210, HTTP 200 with a `command:` header). The
/// daemon's command router implements it.
pub trait CommandSource: Send + Sync + 'static {
    /// Takes the oldest unexpired command for `device`: one queued while it slept, or else one
    /// that arrives within `wait` (`Duration::ZERO`: only what is queued now). A command this
    /// returns counts as delivered, so the driver must put it in its answer.
    fn next_command(
        &self,
        device: &Identity,
        wait: Duration,
    ) -> impl Future<Output = Option<Command>> + Send;
}

/// What became of a command the cloud handed the gateway. The push endpoint answers with it
/// (200, 202, 404, 413, 503), and an MQTT intake acknowledges upstream only for
/// [`Delivered`](CommandOutcome::Delivered) and [`Queued`](CommandOutcome::Queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Handed to the device's live connection (or handled by the gateway itself).
    Delivered,
    /// Stored durably for the device until it makes contact or the command expires.
    Queued,
    /// The device is not one this gateway proxies.
    UnknownDevice,
    /// The command is larger than the gateway takes.
    TooLarge,
    /// The device's queue (or the store) is full: try again later.
    QueueFull,
    /// Refused for another reason (e.g. the command had already expired).
    Rejected(String),
}

impl CommandOutcome {
    /// Whether the cloud may forget the command: it was delivered or durably queued.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Delivered | Self::Queued)
    }
}

/// Takes commands from the cloud (external push, MQTT `command/inbox`, HTTP command waits) and
/// resolves once the command was delivered or durably queued, or refused. The daemon's command
/// router implements it; the cloud-sync intakes depend only on this.
pub trait CommandSink: Send + Sync + 'static {
    fn submit(&self, command: Command) -> impl Future<Output = CommandOutcome> + Send;

    /// Whether `device`'s request that arrived at `since` and waits for a command (`ct=`) has
    /// had its answer already (a command, or its wait ran out): an uplink then stops waiting
    /// upstream on its behalf. `false` when not known.
    fn wait_ended_since(&self, _device: &Identity, _since: Timestamp) -> bool {
        false
    }
}

/// The devices the gateway knows and may act for (synced registry, static devices, local
/// accounts), without checking any credential. Drivers that take identities from something
/// other than a login (the legacy broker bridge's topics, a verified client certificate) ask
/// it whether a device is one of the gateway's. The credential chain implements it.
pub trait KnownDevices: Send + Sync + 'static {
    /// The canonical identity of `device` (a name or an alias) in `app`, if the gateway
    /// knows it.
    fn resolve(&self, app: &AppId, device: &str) -> Option<Identity>;
}
