//! The crate's one error type, [`CoapError`]: why the endpoint cannot start or its socket
//! failed. A sensor's bad datagram is never an error of this kind: the protocol core answers
//! or counts it.

use std::{io, net::SocketAddr};

/// Why the CoAP endpoint cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum CoapError {
    /// A `[coap]` setting is unusable.
    #[error("invalid [coap] config: {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot bind CoAP listener on udp {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("CoAP socket failed")]
    Io(#[from] io::Error),
}
