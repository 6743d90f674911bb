//! gatewayd's southbound MQTT driver. For now it holds the MQTT codec the endpoint is built
//! on: one [`Packet`] model for MQTT 3.1.1 and 5 (the version is a parameter of the
//! [`Codec`], never a second API), a sniffer that reads the protocol level from the first
//! CONNECT, framing over a `BytesMut` that refuses packets above a maximum size from their
//! fixed header, and async helpers to read and write packets on tokio streams. The wire
//! format is rumqttc's `mqttbytes` (v4 and v5); malformed input is an error, never a panic.
//!
//! # Layout
//! - [`packet`]: the version-neutral packet model ([`Packet`], [`Connect`], [`Publish`], ...).
//! - [`codec`]: [`sniff_version`] and [`Codec`] (decode/encode over `BytesMut`).
//! - `v4`, `v5`: conversions between the model and rumqttc's packets of each version.
//! - [`io`]: [`read_connect`], [`read_packet`], [`write_packet`].
//! - [`error`]: the crate's one error type, [`CodecError`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod codec;
pub mod error;
pub mod io;
pub mod packet;
mod v4;
mod v5;

pub use codec::{Codec, sniff_version};
pub use error::CodecError;
pub use io::{read_connect, read_packet, write_packet};
pub use packet::{
    ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Login, Packet, PubAck,
    PubAckReason, Publish, QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe, Version, Will,
};

/// The default maximum packet size (remaining length): 256 KiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
