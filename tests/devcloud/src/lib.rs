//! A Drogue-Cloud-compatible cloud for development, demos and tests. It serves, on one HTTP
//! listener, Drogue's device endpoint (`POST /v1/{channel}` with Basic auth, `as=` and
//! `ct=`), the device registry, the command API with Drogue's routing (internal delivery or
//! a gateway's external push endpoint), the discovery documents `drg` reads, and an event log
//! of CloudEvents that tests read in-process or over HTTP; on a second listener, Drogue's
//! device MQTT endpoint (3.1.1 and 5, `drogue/v1` dialect, commands on `command/inbox`).
//! It follows
//! `contracts/drogue-cloud.md`, quirks included, so the gateway is tested against what Drogue
//! really does. Run it in-process with [`DevCloud::start`], or as the `devcloud` binary.
//!
//! # Layout
//! - [`seed`]: the initial state (API users, applications, devices) from a file or a builder.
//! - `registry`: applications and devices with Drogue's create/replace/delete rules.
//! - `labels`: Drogue's label selector.
//! - `auth`: device authentication and `as` authorization.
//! - [`commands`]: command routing, external pushes, and the in-process command bus.
//! - [`events`]: CloudEvents and the bounded event log.
//! - `http`: the axum router: device endpoint, registry and command API, discovery.
//! - `mqtt`: the device MQTT endpoint: sessions, `drogue/v1` topics, command delivery.
//! - `util`: ids, timestamps, percent-encoding.
//! - [`faults`]: switches that make the endpoints fail or stall as the real services can.
//! - [`error`]: the crate's one error type.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod auth;
pub mod commands;
pub mod error;
pub mod events;
mod faults;
mod http;
mod labels;
mod mqtt;
mod registry;
pub mod seed;
mod util;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use gw_model::registry::Device;
use tokio::{sync::broadcast, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use commands::{CommandFilter, CommandOutcome, RoutedCommand};
pub use error::DevCloudError;
pub use events::{CloudEvent, EventPage};
pub use faults::Faults;
pub use seed::{Seed, User};

use crate::{
    commands::{CommandBus, CommandRequest},
    events::{DEFAULT_EVENT_CAPACITY, EventLog},
    http::Shared,
    registry::Registry,
};

/// A running dev cloud: its bound address and shared state. It stops when the cancellation
/// token passed to [`DevCloud::start`] fires.
pub struct DevCloud {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    mqtt: JoinHandle<()>,
}

/// The channel of gatewayd's heartbeat (`[cloud] heartbeat_channel`'s default).
pub const HEARTBEAT_CHANNEL: &str = "gatewayd-heartbeat";

impl DevCloud {
    /// Binds `listen` for HTTP and a free port on the same IP for MQTT, loads `seed`, and
    /// serves until `shutdown` is cancelled.
    pub async fn start(
        listen: SocketAddr,
        seed: Seed,
        shutdown: CancellationToken,
    ) -> Result<DevCloud, DevCloudError> {
        let mqtt_listen = SocketAddr::new(listen.ip(), 0);
        Self::start_with_mqtt(listen, mqtt_listen, seed, shutdown).await
    }

    /// As [`DevCloud::start`], with the MQTT endpoint on `mqtt_listen` (port 0 picks a free
    /// port).
    pub async fn start_with_mqtt(
        listen: SocketAddr,
        mqtt_listen: SocketAddr,
        seed: Seed,
        shutdown: CancellationToken,
    ) -> Result<DevCloud, DevCloudError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| DevCloudError::Bind { addr: listen, source })?;
        let addr =
            listener.local_addr().map_err(|source| DevCloudError::Bind { addr: listen, source })?;
        let mqtt_listener = tokio::net::TcpListener::bind(mqtt_listen)
            .await
            .map_err(|source| DevCloudError::Bind { addr: mqtt_listen, source })?;
        let mqtt_addr = mqtt_listener
            .local_addr()
            .map_err(|source| DevCloudError::Bind { addr: mqtt_listen, source })?;
        let events = Arc::new(EventLog::new(DEFAULT_EVENT_CAPACITY));
        let rules = gw_model::registry::ProxyRules { providers_rfc: seed.providers_rfc };
        let registry = Registry::new(events.clone()).with_rules(rules);
        registry.seed(seed.applications, seed.devices)?;
        let shared = Arc::new(Shared {
            registry,
            events,
            bus: CommandBus::new(),
            users: seed.users,
            client: commands::push_client(),
            base_url: format!("http://{addr}"),
            mqtt_addr,
            shutdown: shutdown.clone(),
            faults: Faults::default(),
        });
        let mqtt = mqtt::serve(mqtt_listener, shared.clone());
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(cause = %e, "dev cloud server failed");
            }
        });
        tracing::info!(url = %shared.base_url, mqtt = %mqtt::url(mqtt_addr), "dev cloud listening");
        Ok(DevCloud { addr, shared, server, mqtt })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the device MQTT endpoint.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.shared.mqtt_addr
    }

    /// The device MQTT endpoint as `mqtt://127.0.0.1:PORT`.
    pub fn mqtt_url(&self) -> String {
        mqtt::url(self.shared.mqtt_addr)
    }

    /// A snapshot of the retained events, oldest first, without the heartbeats gatewayd's
    /// drogue-http uplink posts as the gateway on [`HEARTBEAT_CHANNEL`] (its command poll):
    /// what the sensors sent and the cloud's own events. [`DevCloud::all_events`] has them too.
    pub fn events(&self) -> Vec<CloudEvent> {
        let mut events = self.shared.events.snapshot();
        events.retain(|e| e.subject != HEARTBEAT_CHANNEL);
        events
    }

    /// Every retained event, oldest first, heartbeats included.
    pub fn all_events(&self) -> Vec<CloudEvent> {
        self.shared.events.snapshot()
    }

    /// How many events have been logged since start (telemetry, connection and registry
    /// events), without copying them.
    pub fn event_count(&self) -> u64 {
        self.shared.events.total()
    }

    /// Waits until at least `n` events other than gatewayd's heartbeats are retained (as
    /// [`DevCloud::events`] lists them), or `timeout` passes, and returns them either way.
    pub async fn wait_for_events(&self, n: usize, timeout: Duration) -> Vec<CloudEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let total = self.shared.events.total() as usize;
            let events = self.events();
            if events.len() >= n || left.is_zero() {
                return events;
            }
            // the next event of any kind, then look again
            let _ = self.shared.events.wait_for(total + 1, left).await;
        }
    }

    /// A device as the registry holds it.
    pub fn device(&self, app: &str, name: &str) -> Option<Device> {
        self.shared.registry.get_device(app, name)
    }

    /// Creates a device, or replaces it without preconditions; logs a registry event.
    pub fn apply_device(&self, device: Device) -> Result<(), DevCloudError> {
        self.shared.registry.apply_device(device)
    }

    /// Sends a command as the command API does, with the same routing.
    pub async fn send_command(
        &self,
        app: &str,
        device: &str,
        command: &str,
        content_type: Option<&str>,
        payload: Bytes,
    ) -> Result<CommandOutcome, DevCloudError> {
        let req = CommandRequest {
            app,
            device,
            command,
            content_type: content_type.map(str::to_owned),
            payload,
        };
        let s = &self.shared;
        commands::route(&s.registry, &s.bus, &s.client, req).await
    }

    /// Subscribes to internally delivered commands (for another device endpoint, such as an
    /// MQTT one); select with [`CommandFilter`].
    pub fn subscribe_commands(&self) -> broadcast::Receiver<RoutedCommand> {
        self.shared.bus.subscribe()
    }

    /// How many endpoints are currently waiting for commands (HTTP `ct` requests and other
    /// subscribers); lets tests send a command only once a waiter is ready.
    pub fn command_subscribers(&self) -> usize {
        self.shared.bus.subscribers()
    }

    /// The fault switches: make publishes fail or stall while the dev cloud runs.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The router, to mount elsewhere; it shares this dev cloud's state.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Waits for the server to finish after the shutdown token fired.
    pub async fn stopped(self) {
        let _ = self.server.await;
        let _ = self.mqtt.await;
    }
}
