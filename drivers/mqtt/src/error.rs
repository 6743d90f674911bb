//! The crate's one error type, [`MqttError`]: codec failures (the connection cannot continue)
//! and the endpoint's start-up failures (config, bind, TLS material).

use std::{io, net::SocketAddr, path::PathBuf};

use crate::packet::Version;

/// Why a packet could not be read or written, or why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("the first packet is not a CONNECT (first byte {first_byte:#04x})")]
    NotConnect { first_byte: u8 },
    #[error("malformed fixed header: {reason}")]
    MalformedHeader { reason: &'static str },
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed MQTT {version} packet: {reason}")]
    Malformed { version: Version, reason: String },
    #[error("{what} cannot be expressed in MQTT {version}")]
    NotRepresentable { version: Version, what: &'static str },
    #[error("the peer closed the connection in the middle of a packet")]
    UnexpectedEof,
    #[error("MQTT connection I/O failed")]
    Io(#[from] io::Error),
    /// A `[mqtt]` setting is unusable.
    #[error("invalid [mqtt] config: {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot bind MQTT listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot load MQTT TLS {what} from {}: {reason}", path.display())]
    Tls { what: &'static str, path: PathBuf, reason: String },
}

/// The codec's name for [`MqttError`] (the crate has one error type; codec functions only
/// return its codec variants).
pub type CodecError = MqttError;
