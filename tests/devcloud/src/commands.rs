//! Commands (contracts/drogue-cloud.md §4): Drogue's routing of a command to a device, its
//! gateways, or a gateway's external HTTP endpoint, and the in-process command bus that
//! device endpoints subscribe to.
//!
//! The bus is a broadcast channel of [`RoutedCommand`]s. Each endpoint that waits for
//! commands (the HTTP `ct` waiter here, an MQTT session later) subscribes and keeps the ones
//! its [`CommandFilter`] selects. Nothing is buffered for endpoints that are not subscribed,
//! as in Drogue.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use gw_model::registry::{Device, ExternalEndpoint};
use tokio::sync::broadcast;

use crate::{DevCloudError, registry::Registry};

/// Commands in flight on the bus before slow subscribers start to miss some.
const BUS_CAPACITY: usize = 1024;

/// One command as published internally: for `device`, routed via `sender` (the device itself
/// or one of its gateways).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedCommand {
    pub app: String,
    pub device: String,
    pub sender: String,
    pub command: String,
    pub content_type: Option<String>,
    pub payload: Bytes,
}

/// Which routed commands a waiting endpoint receives: Drogue's
/// `CommandFilter::proxied_device(app, sender, device)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandFilter {
    app: String,
    sender: String,
    /// `None`: every device routed via `sender` (the wildcard).
    device: Option<String>,
}

impl CommandFilter {
    /// Commands for `device` routed via `sender`. When `device == sender` (no `as`), Drogue
    /// widens this to a wildcard: the sender also receives the commands of every device it
    /// proxies.
    pub fn proxied_device(app: &str, sender: &str, device: &str) -> Self {
        let device = (device != sender).then(|| device.to_owned());
        Self { app: app.to_owned(), sender: sender.to_owned(), device }
    }

    pub fn matches(&self, cmd: &RoutedCommand) -> bool {
        cmd.app == self.app
            && cmd.sender == self.sender
            && self.device.as_ref().is_none_or(|d| *d == cmd.device)
    }
}

/// The in-process command bus.
pub(crate) struct CommandBus {
    tx: broadcast::Sender<RoutedCommand>,
}

impl CommandBus {
    pub(crate) fn new() -> Self {
        Self { tx: broadcast::Sender::new(BUS_CAPACITY) }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RoutedCommand> {
        self.tx.subscribe()
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    fn publish(&self, cmd: RoutedCommand) {
        // No subscriber means nobody is waiting: the command is lost, as in Drogue.
        let _ = self.tx.send(cmd);
    }
}

/// Receives the next command `filter` selects, skipping others and surviving lag.
pub(crate) async fn next_matching(
    rx: &mut broadcast::Receiver<RoutedCommand>,
    filter: &CommandFilter,
) -> Option<RoutedCommand> {
    loop {
        match rx.recv().await {
            Ok(cmd) if filter.matches(&cmd) => return Some(cmd),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// How a command was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Pushed to a gateway's external endpoint, which answered 2xx (HTTP 200).
    Pushed { gateway: String },
    /// Published on the bus for the device and each enabled gateway (HTTP 202).
    Delivered { targets: Vec<String> },
}

/// A command request, as the command API receives it.
pub(crate) struct CommandRequest<'a> {
    pub app: &'a str,
    pub device: &'a str,
    pub command: &'a str,
    pub content_type: Option<String>,
    pub payload: Bytes,
}

/// Drogue's "enabled" check for commands, **including its quirk** (CL
/// `src/registry/v1/data/device/mod.rs`, `attribute!(DeviceSpecCore[DeviceEnabled])`): when a
/// `spec.core` section exists, the attribute returns `core.disabled` itself, so
/// `{"core":{}}` and `{"core":{"disabled":false}}` count as *disabled* and
/// `{"core":{"disabled":true}}` as enabled. Devices without `spec.core` are enabled. This is
/// reproduced on purpose so the gateway is tested against what Drogue really does.
pub(crate) fn command_enabled(device: &Device) -> bool {
    match device.spec.other.get("core") {
        Some(core) => core.get("disabled").and_then(serde_json::Value::as_bool).unwrap_or(false),
        None => true,
    }
}

/// Routes a command as Drogue's `process_command` does.
pub(crate) async fn route(
    registry: &Registry,
    bus: &CommandBus,
    client: &reqwest::Client,
    req: CommandRequest<'_>,
) -> Result<CommandOutcome, DevCloudError> {
    registry
        .get_app(req.app)
        .ok_or_else(|| DevCloudError::NotFound { kind: "application", name: req.app.to_owned() })?;
    let device = registry
        .get_device(req.app, req.device)
        .ok_or_else(|| DevCloudError::NotFound { kind: "device", name: req.device.to_owned() })?;
    if !command_enabled(&device) {
        return Err(DevCloudError::NotEnabled { device: req.device.to_owned() });
    }
    let mut targets = vec![device.metadata.name.clone()];
    for gateway in registry.gateways_of(req.app, &device) {
        let name = &gateway.metadata.name;
        if !command_enabled(&gateway) {
            continue;
        }
        if let Some(endpoint) = gateway.external_endpoint() {
            // The first gateway with an external endpoint gets the command exclusively.
            push(client, endpoint, &req).await?;
            return Ok(CommandOutcome::Pushed { gateway: name.clone() });
        }
        targets.push(name.clone());
    }
    for sender in &targets {
        bus.publish(RoutedCommand {
            app: req.app.to_owned(),
            device: device.metadata.name.clone(),
            sender: sender.clone(),
            command: req.command.to_owned(),
            content_type: req.content_type.clone(),
            payload: req.payload.clone(),
        });
    }
    Ok(CommandOutcome::Delivered { targets })
}

/// Installs the process-wide rustls crypto provider (ring) that the workspace's reqwest
/// (`rustls-no-provider`) needs before any client is built. Harmless when one is installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTP client for external pushes. Drogue sets no timeout; a generous one keeps a dead
/// receiver from hanging a test forever.
pub(crate) fn push_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Pushes to an external endpoint with Drogue's default body
/// `{"application","device","command","payload": base64}`.
async fn push(
    client: &reqwest::Client,
    endpoint: &ExternalEndpoint,
    req: &CommandRequest<'_>,
) -> Result<(), DevCloudError> {
    let fail = |reason: String| DevCloudError::Push { url: endpoint.url.clone(), reason };
    if let Some(kind) = &endpoint.kind {
        // TTN senders (`ttn`, `ttnv2`, `ttnv3`) are not implemented by the dev cloud.
        return Err(fail(format!("endpoint type {kind:?} is not supported by the dev cloud")));
    }
    let method = endpoint.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| fail(format!("bad method: {e}")))?;
    let body = serde_json::json!({
        "application": req.app,
        "device": req.device,
        "command": req.command,
        "payload": base64::engine::general_purpose::STANDARD.encode(&req.payload),
    });
    let mut request = client.request(method, &endpoint.url).json(&body);
    for (name, value) in &endpoint.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.map_err(|e| fail(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(fail(format!("endpoint answered {}", response.status())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(spec: serde_json::Value) -> Device {
        serde_json::from_value(json!({"metadata":{"application":"a","name":"d"},"spec":spec}))
            .unwrap()
    }

    #[test]
    fn spec_core_quirk_inverts_enabled() {
        assert!(command_enabled(&device(json!({}))));
        assert!(!command_enabled(&device(json!({"core":{}}))));
        assert!(!command_enabled(&device(json!({"core":{"disabled":false}}))));
        assert!(command_enabled(&device(json!({"core":{"disabled":true}}))));
    }

    #[test]
    fn filter_without_as_is_a_wildcard_for_the_sender() {
        let cmd = |device: &str, sender: &str| RoutedCommand {
            app: "a".into(),
            device: device.into(),
            sender: sender.into(),
            command: "c".into(),
            content_type: None,
            payload: Bytes::new(),
        };
        let own = CommandFilter::proxied_device("a", "gw", "gw");
        assert!(own.matches(&cmd("s1", "gw")) && own.matches(&cmd("gw", "gw")));
        assert!(!own.matches(&cmd("s1", "s1")));
        let one = CommandFilter::proxied_device("a", "gw", "s1");
        assert!(one.matches(&cmd("s1", "gw")));
        assert!(!one.matches(&cmd("s2", "gw")) && !one.matches(&cmd("s1", "s1")));
        assert!(!CommandFilter::proxied_device("b", "gw", "s1").matches(&cmd("s1", "gw")));
    }
}
