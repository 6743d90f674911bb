//! The `[coap]` config section, owned by this crate. Every key, with its default:
//!
//! ```toml
//! [coap]
//! listen = "0.0.0.0:5683"          # UDP; port 0 = any free port (the bound address is logged)
//! socket_buffer = "4MiB"           # the socket's receive and send buffers (the kernel caps them
//!                                  # at net.core.rmem_max / wmem_max)
//! max_message_size = "64KiB"       # largest message a sensor may upload (block-wise reassembled)
//! block_memory_per_peer = "128KiB" # reassembly buffers and pending Block2 bodies of one peer
//! block_memory_total = "16MiB"     # the same over all peers
//! block_size = 1024                # Block2 size for large command payloads: 16..1024, a power of 2
//! max_exchanges = 100000           # answers remembered for duplicate detection, over all peers
//! max_exchanges_per_peer = 256     # the same per peer (the oldest of a peer is forgotten first)
//! exchange_lifetime = "247s"       # how long an answer is remembered (RFC 7252 EXCHANGE_LIFETIME)
//! max_in_flight = 4096             # requests being processed at once (outbox commit, command waits)
//! max_in_flight_per_peer = 16      # the same per peer
//! max_peers = 20000                # peers with state (exchanges, reassembly, rate limit) at once
//! rate_limit = 100                 # new requests per second and peer (token bucket) ...
//! rate_burst = 200                 # ... with this burst; more are answered 4.29 with Max-Age
//! max_command_wait = "60s"         # upper bound of a request's `ct=` wait
//! piggyback_timeout = "1s"         # answer not ready by then: empty ACK now, separate response later
//! ack_timeout = "2s"               # first retransmission of a separate CON response (RFC 7252)
//! max_retransmit = 4               # retransmissions of a separate response before giving up
//! ```

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::CoapError;

pub use gw_model::ByteSize;

/// The `[coap]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    pub listen: SocketAddr,
    pub socket_buffer: ByteSize,
    pub max_message_size: ByteSize,
    pub block_memory_per_peer: ByteSize,
    pub block_memory_total: ByteSize,
    pub block_size: u16,
    pub max_exchanges: usize,
    pub max_exchanges_per_peer: usize,
    #[serde(with = "gw_model::serde_util::duration")]
    pub exchange_lifetime: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_per_peer: usize,
    pub max_peers: usize,
    pub rate_limit: u32,
    pub rate_burst: u32,
    #[serde(with = "gw_model::serde_util::duration")]
    pub max_command_wait: Duration,
    #[serde(with = "gw_model::serde_util::duration")]
    pub piggyback_timeout: Duration,
    #[serde(with = "gw_model::serde_util::duration")]
    pub ack_timeout: Duration,
    pub max_retransmit: u32,
}

impl Default for CoapConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5683)),
            socket_buffer: ByteSize::new(4 * 1024 * 1024),
            max_message_size: ByteSize::new(64 * 1024),
            block_memory_per_peer: ByteSize::new(128 * 1024),
            block_memory_total: ByteSize::new(16 * 1024 * 1024),
            block_size: 1024,
            max_exchanges: 100_000,
            max_exchanges_per_peer: 256,
            exchange_lifetime: Duration::from_secs(247),
            max_in_flight: 4096,
            max_in_flight_per_peer: 16,
            max_peers: 20_000,
            rate_limit: 100,
            rate_burst: 200,
            max_command_wait: Duration::from_secs(60),
            piggyback_timeout: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
        }
    }
}

impl CoapConfig {
    /// Checks what serde cannot: limits in range and consistent with each other.
    pub fn validate(&self) -> Result<(), CoapError> {
        let bad = |key, reason: String| Err(CoapError::Config { key, reason });
        if !(16..=1024).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return bad(
                "block_size",
                format!("{} is not a power of 2 in 16..=1024", self.block_size),
            );
        }
        if self.socket_buffer.bytes() < 64 * 1024 || self.socket_buffer.bytes() > 1 << 30 {
            return bad("socket_buffer", format!("{} is outside 64KiB..=1GiB", self.socket_buffer));
        }
        let message = self.max_message_size.bytes();
        if message < 1024 {
            return bad(
                "max_message_size",
                format!("{message} bytes is below the minimum of 1KiB"),
            );
        }
        if self.block_memory_per_peer.bytes() < message {
            return bad(
                "block_memory_per_peer",
                "must be at least max_message_size (one upload must fit)".into(),
            );
        }
        if self.block_memory_total.bytes() < self.block_memory_per_peer.bytes() {
            return bad("block_memory_total", "must be at least block_memory_per_peer".into());
        }
        for (key, value) in [
            ("max_exchanges", self.max_exchanges),
            ("max_exchanges_per_peer", self.max_exchanges_per_peer),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_per_peer", self.max_in_flight_per_peer),
            ("max_peers", self.max_peers),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.rate_limit == 0 {
            return bad("rate_limit", "must be at least 1 request per second".into());
        }
        if self.rate_burst == 0 {
            return bad("rate_burst", "must be at least 1".into());
        }
        for (key, value) in [
            ("exchange_lifetime", self.exchange_lifetime),
            ("piggyback_timeout", self.piggyback_timeout),
            ("ack_timeout", self.ack_timeout),
        ] {
            if value.is_zero() {
                return bad(key, "must be longer than 0s".into());
            }
        }
        if self.max_retransmit > 10 {
            return bad("max_retransmit", format!("{} is above 10", self.max_retransmit));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_defaults() {
        let c: CoapConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            socket_buffer = "1MiB"
            max_message_size = "8KiB"
            block_memory_per_peer = "16KiB"
            block_memory_total = "1MiB"
            block_size = 256
            max_exchanges = 10
            max_exchanges_per_peer = 2
            exchange_lifetime = "10s"
            max_in_flight = 3
            max_in_flight_per_peer = 1
            max_peers = 5
            rate_limit = 7
            rate_burst = 9
            max_command_wait = "5s"
            piggyback_timeout = "200ms"
            ack_timeout = "1s"
            max_retransmit = 2
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_message_size.bytes(), 8192);
        assert_eq!(c.piggyback_timeout, Duration::from_millis(200));
        assert_eq!(c.block_size, 256);
        let d = CoapConfig::default();
        d.validate().unwrap();
        assert_eq!(d.listen.port(), 5683);
        let text = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<CoapConfig>(&text).unwrap(), d);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values_by_name() {
        let e = toml::from_str::<CoapConfig>("port = 1").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let c = CoapConfig { block_size: 1000, ..CoapConfig::default() };
        assert!(matches!(c.validate(), Err(CoapError::Config { key: "block_size", .. })));
        let c = CoapConfig { block_memory_per_peer: ByteSize::new(1024), ..CoapConfig::default() };
        assert!(matches!(
            c.validate(),
            Err(CoapError::Config { key: "block_memory_per_peer", .. })
        ));
        let c = CoapConfig { max_exchanges: 0, ..CoapConfig::default() };
        assert!(matches!(c.validate(), Err(CoapError::Config { key: "max_exchanges", .. })));
        let c = CoapConfig { ack_timeout: Duration::ZERO, ..CoapConfig::default() };
        assert!(matches!(c.validate(), Err(CoapError::Config { key: "ack_timeout", .. })));
    }
}
