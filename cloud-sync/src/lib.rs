//! The cloud side of gatewayd: uplinks that drain the durable outbox to the cloud, sending
//! each message *as* the sensor it came from, and acknowledging a record to the outbox only
//! once the cloud accepted it; and the registry sync, which lists the devices the gateway may
//! act for; and the command intake, which takes the cloud's commands for those devices (pushed,
//! subscribed over MQTT, or waited for over HTTP) and hands them to the command router.
//!
//! # Layout
//! - [`config`]: the `[cloud]` config section.
//! - [`uplink`]: the uplink loop shared by every kind: pulls fair batches from the outbox,
//!   keeps each device's records in order, acks, retries, parks, dead-letters.
//! - [`drogue_http`]: Drogue Cloud's HTTP endpoint, `POST /v1/{channel}?as={device}`.
//! - [`mqtt`]: the MQTT uplinks (Drogue's MQTT endpoint, any broker): a pure publisher
//!   session (packet ids, in flight, keep-alive) and a thin socket loop around it.
//! - [`commands`]: the command intake: [`CommandIntake`] (counts, hands commands to the
//!   router) and the external push endpoint's axum router.
//! - [`registry`]: the registry sync and its `[registry]` section: lists the application's
//!   devices, keeps those naming this gateway, publishes the set; polls and watches events.
//! - [`topic`]: topic templates for the generic MQTT uplink.
//! - [`tls`]: rustls client configs (ring) for the MQTT uplinks.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`status`]: what an uplink reports to the status page.
//! - [`error`]: the crate's one error type.

pub mod backoff;
pub mod commands;
pub mod config;
pub mod drogue_http;
pub mod error;
pub mod mqtt;
pub mod registry;
pub mod status;
pub mod tls;
pub mod topic;
pub mod uplink;

pub use commands::{CommandIntake, IntakeSnapshot, Via};
pub use config::{CloudConfig, CloudKind};
pub use error::CloudError;
pub use registry::{
    DeviceChanges, RegistryConfig, RegistrySnapshot, RegistryState, RegistryStatus, RegistrySync,
    ResyncHandle, SyncReport, SyncedDevices,
};
pub use status::{UplinkSnapshot, UplinkState, UplinkStatus};
pub use uplink::Uplink;
