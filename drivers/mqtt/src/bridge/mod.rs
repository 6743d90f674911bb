//! The legacy broker bridge (interworking): for sites whose sensors already publish to a
//! broker of their own, the gateway connects to that broker as a client (rumqttc, TLS on
//! rustls for `mqtts://`), subscribes at QoS 1 to each mapping's topic template, and hands
//! every message to the [`Ingest`] as the device the topic names.
//!
//! Nothing the site broker delivered is lost: the bridge keeps its session on the broker
//! (clean session off, a fixed `client_id`) and acknowledges a message (PUBACK, manual acks)
//! only after the outbox has committed it, in the order the messages arrived. A message whose
//! commit failed for a passing reason (outbox full, store unavailable) is retried with backoff
//! and stays unacknowledged meanwhile; if the connection drops first, the broker delivers it
//! again. Duplicates after a reconnect or a crash are possible (at least once).
//!
//! Messages that are acknowledged without being stored, each counted: topics that name no
//! valid device or channel, devices the mapping does not admit, retained messages replayed at
//! subscription (they are old values, not new readings), and messages larger than a record
//! may be.
//!
//! Commands for bridged devices are published back to the site broker at QoS 1 through the
//! mapping's command template ([`BridgeCommands::push`]).
//!
//! # Layout
//! - [`config`]: the `[[bridge]]` tables, [`BridgeConfig`] and [`MappingConfig`].
//! - [`template`]: topic and command templates.
//! - `mapping`: a validated mapping: routing a topic to an identity, its descriptor.
//! - this module: [`Bridge`] (the connection task), [`BridgeCommands`], [`BridgeStatus`].

pub mod config;
mod mapping;
pub mod template;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use gw_model::{AppId, CommandName, Identity, Ingest, IngestError, KnownDevices, Secret};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{BridgeConfig, BridgeConfigError, BrokerUrl, DevicePolicy, MappingConfig};
pub use mapping::InterworkingDescriptor;
use mapping::{Mapping, Route};

/// Messages from the site broker being stored at once; the bridge stops reading beyond this.
const MAX_PENDING: usize = 256;
/// The largest packet exchanged with the site broker.
const MAX_PACKET: usize = 1024 * 1024;
/// How long a command publish may wait for room in the connection's queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, how long committed messages get to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Why a bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid [[bridge]] {name:?}: {source}")]
    Config {
        name: String,
        #[source]
        source: BridgeConfigError,
    },
    #[error("bridge {name:?}: cannot load TLS CA from {}: {reason}", path.display())]
    Tls { name: String, path: std::path::PathBuf, reason: String },
}

/// One bridge to a site broker, ready to [`run`](Bridge::run).
pub struct Bridge<K, I> {
    shared: Arc<Shared<K, I>>,
    eventloop: EventLoop,
    reconnect_max: Duration,
}

struct Shared<K, I> {
    name: String,
    client: AsyncClient,
    mappings: Vec<Mapping>,
    known: Arc<K>,
    ingest: Arc<I>,
    state: Arc<State>,
}

/// What the bridge reports; shared with [`BridgeStatus`] and [`BridgeCommands`].
struct State {
    name: String,
    url: String,
    connected: AtomicBool,
    /// The site broker confirmed every mapping's subscription (SUBACK, or a kept session).
    subscribed: AtomicBool,
    /// Bumped at every CONNACK: acknowledgements of an older connection are not sent.
    generation: AtomicU64,
    messages: AtomicU64,
    dropped_topic: AtomicU64,
    dropped_device: AtomicU64,
    dropped_retained: AtomicU64,
    dropped_too_large: AtomicU64,
    retries: AtomicU64,
    reconnects: AtomicU64,
    commands_published: AtomicU64,
    commands_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    descriptors: Vec<InterworkingDescriptor>,
}

impl State {
    fn error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }
}

impl<K: KnownDevices, I: Ingest> Bridge<K, I> {
    /// Validates `config` (templates, URL), loads the TLS CA if any and prepares the client.
    /// Mappings without an `application` use `default_app`; `known` answers `devices = "known"`.
    pub fn new(
        config: &BridgeConfig,
        password: Option<Secret>,
        default_app: &AppId,
        known: Arc<K>,
        ingest: Arc<I>,
    ) -> Result<Self, BridgeError> {
        let config_err = |source| BridgeError::Config { name: config.name.clone(), source };
        config.validate().map_err(config_err)?;
        let broker = config.broker().map_err(config_err)?;
        let mut mappings = Vec::with_capacity(config.mapping.len());
        for (index, m) in config.mapping.iter().enumerate() {
            mappings.push(Mapping::new(index, m, default_app, &config.url).map_err(config_err)?);
        }
        let mut options = MqttOptions::new(&config.client_id, &broker.host, broker.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &config.username {
            let pw = password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
            options.set_credentials(user, pw);
        }
        if broker.tls {
            let tls = tls_config(config)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        let (client, eventloop) = AsyncClient::new(options, 64);
        let state = Arc::new(State {
            name: config.name.clone(),
            url: config.url.clone(),
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            dropped_topic: AtomicU64::new(0),
            dropped_device: AtomicU64::new(0),
            dropped_retained: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            commands_published: AtomicU64::new(0),
            commands_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            descriptors: mappings.iter().map(|m| m.descriptor().clone()).collect(),
        });
        Ok(Self {
            shared: Arc::new(Shared {
                name: config.name.clone(),
                client,
                mappings,
                known,
                ingest,
                state,
            }),
            eventloop,
            reconnect_max: config.reconnect_max,
        })
    }

    /// The handle that publishes commands for this bridge's devices.
    pub fn commands(&self) -> BridgeCommands {
        let shared: Arc<dyn CommandTarget> = self.shared.clone();
        BridgeCommands { bridges: vec![shared] }
    }

    /// The handle to the bridge's counters and descriptors.
    pub fn status(&self) -> BridgeStatus {
        BridgeStatus { state: self.shared.state.clone() }
    }

    /// Connects, subscribes and forwards until `token` is cancelled; reconnects with backoff.
    /// At shutdown, messages already handed to the outbox get a moment to be acknowledged.
    pub async fn run(self, token: CancellationToken) {
        let Self { shared, mut eventloop, reconnect_max } = self;
        let tasks = TaskTracker::new();
        let pending = Arc::new(Semaphore::new(MAX_PENDING));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(acknowledge(shared.clone(), ack_rx));
        let mut backoff = BACKOFF_MIN;
        let mut subscribed_once = false;
        let filters: Vec<SubscribeFilter> = shared
            .mappings
            .iter()
            .map(|m| SubscribeFilter::new(m.filter(), QoS::AtLeastOnce))
            .collect();
        tracing::info!(bridge = %shared.name, url = %shared.state.url, "bridge starting");
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                () = token.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let state = &shared.state;
                    state.generation.fetch_add(1, Ordering::AcqRel);
                    state.connected.store(true, Ordering::Release);
                    backoff = BACKOFF_MIN;
                    tracing::info!(bridge = %shared.name, session_present = ack.session_present,
                        "bridge connected to the site broker");
                    if !subscribed_once || !ack.session_present {
                        if let Err(e) = shared.client.try_subscribe_many(filters.clone()) {
                            state.error(format!("cannot subscribe: {e}"));
                        }
                        subscribed_once = true;
                    } else {
                        state.subscribed.store(true, Ordering::Release);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    use rumqttc::SubscribeReasonCode;
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        let message = "the site broker refused a subscription".to_owned();
                        tracing::warn!(bridge = %shared.name, codes = ?ack.return_codes, "{message}");
                        shared.state.error(message);
                    } else {
                        shared.state.subscribed.store(true, Ordering::Release);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let permit = tokio::select! {
                        p = pending.clone().acquire_owned() => p,
                        () = token.cancelled() => break,
                    };
                    let Ok(permit) = permit else { break };
                    let (done_tx, done_rx) = oneshot::channel();
                    let generation = shared.state.generation.load(Ordering::Acquire);
                    let route = shared.route(&publish);
                    let ticket = Ticket { publish, generation, done: done_rx };
                    if ack_tx.send(ticket).is_err() {
                        break;
                    }
                    let (shared, stop) = (shared.clone(), token.clone());
                    let mut store = Box::pin(async move {
                        let ack = shared.store(route, reconnect_max, &stop).await;
                        let _ = done_tx.send(ack);
                        drop(permit);
                    });
                    // The first poll hands the message to the outbox (its place in the order
                    // is taken then): done here, in the order the site broker delivered, so
                    // a device's messages keep their order (spawned tasks may first run in
                    // any order). Only the wait for durability runs apart.
                    let first = store
                        .as_mut()
                        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                    if first.is_pending() {
                        tasks.spawn(store);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let state = &shared.state;
                    state.subscribed.store(false, Ordering::Release);
                    if state.connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(bridge = %shared.name, cause = %e, "bridge lost the site broker");
                    } else {
                        tracing::debug!(bridge = %shared.name, cause = %e, "bridge cannot connect");
                    }
                    state.error(describe(&e));
                    state.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(jitter(backoff)) => {}
                        () = token.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(reconnect_max);
                }
            }
        }
        // Drain: let stores finish, keep the connection polled so their acks go out.
        tasks.close();
        drop(ack_tx);
        let drained = async {
            let mut acker = acker;
            loop {
                tokio::select! {
                    r = &mut acker => { let _ = r; break; }
                    e = eventloop.poll() => if e.is_err() { break },
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
        shared.state.connected.store(false, Ordering::Release);
        shared.state.subscribed.store(false, Ordering::Release);
        if shared.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(e) = eventloop.poll().await {
                    if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = e {
                        break;
                    }
                }
            })
            .await;
        }
        tracing::info!(bridge = %shared.name, "bridge stopped");
    }
}

/// A message waiting for its acknowledgement: sent once `done` says so.
struct Ticket {
    publish: rumqttc::Publish,
    generation: u64,
    done: oneshot::Receiver<bool>,
}

/// Acknowledges messages in the order they arrived, each once its store has finished.
async fn acknowledge<K, I>(shared: Arc<Shared<K, I>>, mut rx: mpsc::UnboundedReceiver<Ticket>) {
    while let Some(ticket) = rx.recv().await {
        let Ok(ack) = ticket.done.await else { continue };
        let current = shared.state.generation.load(Ordering::Acquire);
        // a message of an older connection is delivered again by the broker: no ack now
        if ack && ticket.generation == current {
            let _ = shared.client.ack(&ticket.publish).await;
        }
    }
}

impl<K: KnownDevices, I: Ingest> Shared<K, I> {
    fn route(&self, publish: &rumqttc::Publish) -> Route {
        if publish.retain {
            return Route::Retained;
        }
        let topic = publish.topic.as_str();
        let mut last = Route::BadTopic(format!("{topic:?} matches no mapping"));
        for m in &self.mappings {
            match m.route(topic, publish.payload.clone(), self.known.as_ref()) {
                Route::NoMatch => continue,
                r @ Route::Ingest(..) => return r,
                other => last = other,
            }
        }
        last
    }

    /// Stores a routed message, retrying passing failures; returns whether to acknowledge it
    /// (false only when the bridge stops before the message could be stored).
    async fn store(&self, route: Route, retry_max: Duration, stop: &CancellationToken) -> bool {
        let state = &self.state;
        let (index, telemetry) = match route {
            Route::Ingest(index, telemetry) => (index, telemetry),
            Route::NoMatch => {
                state.dropped_topic.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Route::Retained => {
                state.dropped_retained.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Route::BadTopic(reason) => {
                tracing::debug!(bridge = %self.name, %reason, "bridged message dropped");
                state.dropped_topic.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Route::UnknownDevice(device) => {
                tracing::info!(bridge = %self.name, %device,
                    "bridged message dropped: the mapping does not admit this device");
                state.dropped_device.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match self.ingest.publish(telemetry.clone()).await {
                Ok(()) => {
                    state.messages.fetch_add(1, Ordering::Relaxed);
                    self.mappings[index].saw(&telemetry.device);
                    return true;
                }
                Err(IngestError::TooLarge(reason) | IngestError::Invalid(reason)) => {
                    tracing::warn!(bridge = %self.name, device = %telemetry.device, %reason,
                        "bridged message dropped: the uplink cannot carry it");
                    state.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    state.retries.fetch_add(1, Ordering::Relaxed);
                    state.error(format!("outbox: {e}"));
                    tracing::warn!(bridge = %self.name, device = %telemetry.device, cause = %e,
                        "bridged message not stored yet; retrying, unacknowledged");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return false,
                    }
                    wait = (wait * 2).min(retry_max);
                }
            }
        }
    }
}

fn tls_config(config: &BridgeConfig) -> Result<Arc<rustls::ClientConfig>, BridgeError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let bad = |reason: String| BridgeError::Tls {
                name: config.name.clone(),
                path: path.clone(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls {
            name: config.name.clone(),
            path: config.ca_file.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("connection refused: {code:?}"),
        other => other.to_string(),
    }
}

/// `d` plus up to a quarter of it, so many gateways do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let quarter = d.as_millis() / 4;
    let extra = u64::try_from(quarter).unwrap_or(0);
    d + Duration::from_millis(rand_below(extra.max(1)))
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % n
}

/// What became of a command for a bridged device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgePush {
    /// No mapping with a command template has this device.
    NotBridged,
    /// Published at QoS 1 to the site broker on `topic` (handed to the bridge's connection).
    Published { topic: String },
    /// The device is bridged, but the command could not be published now (site broker not
    /// connected, the connection's queue full): keep it and try later.
    Unavailable(String),
}

trait CommandTarget: Send + Sync {
    fn target(&self, device: &Identity, command: &CommandName) -> Option<String>;
    fn client(&self) -> &AsyncClient;
    fn state(&self) -> &State;
}

impl<K: KnownDevices, I: Ingest> CommandTarget for Shared<K, I> {
    fn target(&self, device: &Identity, command: &CommandName) -> Option<String> {
        self.mappings.iter().find_map(|m| m.command_topic(device, command))
    }
    fn client(&self) -> &AsyncClient {
        &self.client
    }
    fn state(&self) -> &State {
        &self.state
    }
}

/// Publishes commands for bridged devices to their site broker; the daemon's command router
/// calls it. Covers one or more bridges ([`merge`](Self::merge)); cheap to clone.
#[derive(Clone, Default)]
pub struct BridgeCommands {
    bridges: Vec<Arc<dyn CommandTarget>>,
}

impl BridgeCommands {
    /// Adds the bridges of `other`.
    pub fn merge(&mut self, other: BridgeCommands) {
        self.bridges.extend(other.bridges);
    }

    /// Whether any bridge has a mapping that takes commands for `device`: a device listed in
    /// a mapping's `devices`, or one seen publishing through it since start.
    pub fn is_bridged(&self, device: &Identity) -> bool {
        let probe = CommandName::new("probe").ok();
        probe.is_some_and(|c| self.bridges.iter().any(|b| b.target(device, &c).is_some()))
    }

    /// Publishes `command` with `payload` for `device` through the first mapping that has it.
    pub async fn push(
        &self,
        device: &Identity,
        command: &CommandName,
        payload: Bytes,
    ) -> BridgePush {
        let Some((bridge, topic)) =
            self.bridges.iter().find_map(|b| b.target(device, command).map(|t| (b, t)))
        else {
            return BridgePush::NotBridged;
        };
        let state = bridge.state();
        if !state.connected.load(Ordering::Acquire) {
            state.commands_failed.fetch_add(1, Ordering::Relaxed);
            return BridgePush::Unavailable(format!(
                "bridge {:?} is not connected to its site broker",
                state.name
            ));
        }
        let publish =
            bridge.client().publish_bytes(topic.clone(), QoS::AtLeastOnce, false, payload);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => {
                state.commands_published.fetch_add(1, Ordering::Relaxed);
                tracing::info!(bridge = %state.name, %device, %command, %topic,
                    "command published to the site broker");
                BridgePush::Published { topic }
            }
            Ok(Err(e)) => {
                state.commands_failed.fetch_add(1, Ordering::Relaxed);
                BridgePush::Unavailable(format!("bridge {:?}: {e}", state.name))
            }
            Err(_) => {
                state.commands_failed.fetch_add(1, Ordering::Relaxed);
                BridgePush::Unavailable(format!("bridge {:?}: connection queue full", state.name))
            }
        }
    }
}

/// A handle to one bridge's counters and descriptors. Cheap to clone.
#[derive(Clone)]
pub struct BridgeStatus {
    state: Arc<State>,
}

/// One bridge at one moment, for `/api/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct BridgeSnapshot {
    pub name: String,
    pub url: String,
    pub connected: bool,
    /// Every mapping's subscription is in place on the site broker.
    pub subscribed: bool,
    /// Messages committed to the outbox.
    pub messages: u64,
    /// Acknowledged without storing: topic naming no valid device/channel.
    pub dropped_bad_topic: u64,
    /// Acknowledged without storing: a device the mapping does not admit.
    pub dropped_unknown_device: u64,
    /// Acknowledged without storing: retained messages replayed at subscription.
    pub dropped_retained: u64,
    /// Acknowledged without storing: larger than an outbox record may be.
    pub dropped_too_large: u64,
    /// Store attempts that failed for a passing reason and were retried.
    pub store_retries: u64,
    /// Connection attempts that failed or connections lost.
    pub reconnects: u64,
    pub commands_published: u64,
    pub commands_failed: u64,
    pub last_error: Option<String>,
    pub mappings: Vec<InterworkingDescriptor>,
}

impl BridgeStatus {
    pub fn snapshot(&self) -> BridgeSnapshot {
        let s = &self.state;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BridgeSnapshot {
            name: s.name.clone(),
            url: s.url.clone(),
            connected: s.connected.load(Ordering::Acquire),
            subscribed: s.subscribed.load(Ordering::Acquire),
            messages: get(&s.messages),
            dropped_bad_topic: get(&s.dropped_topic),
            dropped_unknown_device: get(&s.dropped_device),
            dropped_retained: get(&s.dropped_retained),
            dropped_too_large: get(&s.dropped_too_large),
            store_retries: get(&s.retries),
            reconnects: get(&s.reconnects),
            commands_published: get(&s.commands_published),
            commands_failed: get(&s.commands_failed),
            last_error: s.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            mappings: s.descriptors.clone(),
        }
    }
}
