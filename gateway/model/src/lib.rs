//! The domain model of gatewayd: the names and records every other crate speaks in. It does no
//! I/O and knows nothing of tokio; everything here is checked once, at the edge where text or
//! bytes from the outside become a value, so the rest of the gateway never re-validates.
//!
//! # Layout
//! - [`ids`]: validated newtypes [`AppId`], [`DeviceId`], [`Channel`], [`CommandName`].
//! - [`identity`]: `device@app` identities and the credentials a sensor presents, parsed from
//!   every Drogue username form (HTTP Basic rows, MQTT CONNECT forms).
//! - [`message`]: [`Telemetry`] from sensors and [`Command`]s for them, with [`Timestamp`].
//! - [`registry`]: Drogue's registry device model, round-tripping its JSON.
//! - [`southbound`]: the traits drivers use: [`Authenticate`] sensors, [`Ingest`] their messages,
//!   take waiting commands from a [`CommandSource`]; intakes hand cloud commands to a
//!   [`CommandSink`].
//! - [`admission`]: what the configured uplink can carry ([`UplinkLimits`]), checked before
//!   a message is acknowledged.
//! - [`serde_util`]: serde helpers config sections share (durations such as `"30s"`).
//! - [`error`]: the crate's one error type.

pub mod admission;
pub mod error;
pub mod identity;
pub mod ids;
pub mod message;
pub mod registry;
pub mod serde_util;
pub mod southbound;

pub use admission::UplinkLimits;
pub use error::ModelError;
pub use identity::{
    AuthRequest, BasicCredentials, Identity, PresentedCredential, PublishQuery, Secret,
    split_identity,
};
pub use ids::{AppId, Channel, CommandName, DeviceId};
pub use message::{Command, Telemetry, Timestamp, is_json_content_type};
pub use serde_util::ByteSize;
pub use southbound::{
    AuthOutcome, Authenticate, CommandOutcome, CommandSink, CommandSource, Ingest, IngestError,
    KnownDevices, Pressure,
};
