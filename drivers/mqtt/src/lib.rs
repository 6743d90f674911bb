//! gatewayd's southbound MQTT driver: the endpoint sensors connect to over MQTT 3.1.1 and 5
//! (TCP and TLS) as they would to Drogue Cloud's MQTT endpoint (contracts/drogue-cloud.md §2).
//! A sensor logs in as `device@app`, publishes to `<channel>` at QoS 0 or 1 and gets its
//! PUBACK only once the gateway's [`Ingest`](gw_model::Ingest) has made the message durable;
//! it subscribes to `command/inbox/#` and receives the commands the daemon pushes through
//! [`Commands`]. The protocol rules live in a pure per-connection state machine
//! ([`Session`]: packets, completions and time in, actions out); the socket loop around it is
//! thin. Underneath is one codec for both versions (rumqttc's `mqttbytes`), which refuses
//! oversized packets from their fixed header; malformed input is an error, never a panic.
//!
//! # Layout
//! - [`config`]: the `[mqtt]` config section, [`MqttConfig`] (every key documented there).
//! - [`session`]: the pure protocol state machine, [`Session`], and its [`Action`]s; the
//!   endpoint's rules (refusal codes, QoS, will, takeover) are documented there.
//! - [`server`]: [`MqttEndpoint`]: listeners, one task per connection, TLS, shutdown.
//! - `registry`: live sessions by device (takeover), the [`Commands`] handle, [`Stats`].
//! - [`packet`]: the version-neutral packet model ([`Packet`], [`Connect`], [`Publish`], ...).
//! - [`codec`]: [`sniff_version`] and [`Codec`] (decode/encode over `BytesMut`).
//! - `v4`, `v5`: conversions between the model and rumqttc's packets of each version.
//! - [`io`]: [`read_connect`], [`read_packet`], [`write_packet`].
//! - [`error`]: the crate's one error type, [`MqttError`] (also named [`CodecError`]).
//! - [`bridge`]: the legacy broker bridge: a client of a site's own broker whose topics map
//!   to identities by template ([`Bridge`], [`BridgeCommands`], `[[bridge]]` config).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bridge;
pub mod codec;
pub mod config;
pub mod error;
pub mod io;
pub mod packet;
mod registry;
pub mod server;
pub mod session;
mod v4;
mod v5;

pub use bridge::{Bridge, BridgeCommands, BridgeConfig, BridgePush, BridgeStatus};
pub use codec::{Codec, sniff_version};
pub use config::{MqttConfig, PacketSize};
pub use error::{CodecError, MqttError};
pub use io::{read_connect, read_packet, write_packet};
pub use packet::{
    ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Login, Packet, PubAck,
    PubAckReason, Publish, QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe, Version, Will,
};
pub use registry::{Commands, Delivery, DeviceConnections, EndpointStats, Stats};
pub use server::MqttEndpoint;
pub use session::{Action, ClientCertificate, CloseReason, IngestToken, Session, SessionConfig};

/// The default maximum packet size (remaining length): 256 KiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
