//! The crate's one error type.

use std::io;

use crate::packet::Version;

/// Why a packet could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
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
}
