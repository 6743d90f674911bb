//! The `[mqtt]` config section, owned by this crate. Every key, with its default:
//!
//! ```toml
//! [mqtt]
//! listen = "0.0.0.0:1883"          # plain MQTT; port 0 = any free port (the bound address is logged)
//! # tls_listen = "0.0.0.0:8883"    # MQTT over TLS; needs cert_file and key_file
//! # cert_file = "/etc/gatewayd/mqtt.pem"     # server certificate chain, PEM
//! # key_file = "/etc/gatewayd/mqtt.key"      # its private key, PEM (PKCS#8, PKCS#1 or SEC1)
//! # client_ca_file = "/etc/gatewayd/mqtt-client-ca.pem"  # TLS: ask sensors for a client
//!                                  # certificate signed by this CA (optional for them); a sensor
//!                                  # without username and password logs in with it
//! max_packet_size = "256KiB"       # largest MQTT packet accepted (fixed header included);
//!                                  # "64KiB", "1MiB", or a plain integer of bytes
//! max_connections = 1024           # logged-in sessions at once over both listeners; a login
//!                                  # beyond it gets CONNACK "server unavailable" (also the
//!                                  # listen queue, 128-4096)
//! max_unauthenticated = 256        # connections not yet logged in (TLS handshake, CONNECT,
//!                                  # login), a pool apart: a full pool closes the oldest
//!                                  # connection of the address holding the most
//! max_unauthenticated_per_address = 16   # of them per source address (IPv6: per /64); the
//!                                  # address's oldest is closed for a newer one
//! max_inflight = 32                # publishes of one connection awaiting the outbox (and QoS 1
//!                                  # commands awaiting the sensor's PUBACK); reading pauses when full
//! connect_packet_timeout = "5s"    # time from accept (or the TLS handshake) to a whole CONNECT
//! connect_timeout = "10s"          # time from accept to CONNACK (TLS handshake, CONNECT, login)
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::MqttError;

/// The largest packet MQTT can express: a remaining length of 268,435,455 plus a 5-byte
/// fixed header.
const MQTT_MAX_PACKET: u64 = 268_435_460;
/// Below this, a CONNECT with credentials and a will may not fit.
const MIN_PACKET: u64 = 128;

/// The `[mqtt]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub max_packet_size: PacketSize,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_address: usize,
    pub max_inflight: usize,
    #[serde(with = "gw_model::serde_util::duration")]
    pub connect_packet_timeout: Duration,
    #[serde(with = "gw_model::serde_util::duration")]
    pub connect_timeout: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_listen: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            max_packet_size: PacketSize::new(256 * 1024),
            max_connections: 1024,
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 16,
            max_inflight: 32,
            connect_packet_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl MqttConfig {
    /// Checks what serde cannot: TLS material present when TLS is on, limits in range.
    pub fn validate(&self) -> Result<(), MqttError> {
        let bad = |key, reason: &str| Err(MqttError::Config { key, reason: reason.to_owned() });
        if self.tls_listen.is_some() {
            if self.cert_file.is_none() {
                return bad("cert_file", "tls_listen is set: a server certificate is required");
            }
            if self.key_file.is_none() {
                return bad("key_file", "tls_listen is set: a private key is required");
            }
        }
        if self.client_ca_file.is_some() && self.tls_listen.is_none() {
            return bad("client_ca_file", "client certificates need tls_listen");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be longer than 0s");
        }
        if self.connect_packet_timeout.is_zero() {
            return bad("connect_packet_timeout", "must be longer than 0s");
        }
        if self.max_unauthenticated == 0 {
            return bad("max_unauthenticated", "must be at least 1");
        }
        if self.max_unauthenticated_per_address == 0 {
            return bad("max_unauthenticated_per_address", "must be at least 1");
        }
        let size = self.max_packet_size.bytes();
        if !(MIN_PACKET..=MQTT_MAX_PACKET).contains(&size) {
            return bad(
                "max_packet_size",
                &format!("{size} bytes is outside {MIN_PACKET}..={MQTT_MAX_PACKET}"),
            );
        }
        Ok(())
    }
}

/// A packet size, written `"256KiB"`, `"1MiB"`, `"500kB"` or as a plain integer of bytes: the
/// size type every config section shares.
pub use gw_model::ByteSize as PacketSize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_defaults() {
        let c: MqttConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            tls_listen = "127.0.0.1:0"
            cert_file = "/c.pem"
            key_file = "/k.pem"
            client_ca_file = "/ca.pem"
            max_packet_size = "64KiB"
            max_connections = 10
            max_inflight = 4
            connect_timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.max_packet_size.bytes(), 65536);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        c.validate().unwrap();
        let d: MqttConfig = toml::from_str("max_packet_size = 1000").unwrap();
        assert_eq!(d.max_packet_size.bytes(), 1000);
        assert_eq!(d.listen.port(), 1883);
        assert_eq!(MqttConfig::default().max_packet_size.to_string(), "256KiB");
        // the default round-trips through TOML
        let text = toml::to_string(&MqttConfig::default()).unwrap();
        assert_eq!(toml::from_str::<MqttConfig>(&text).unwrap(), MqttConfig::default());
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values_by_name() {
        let e = toml::from_str::<MqttConfig>("port = 1").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let e = toml::from_str::<MqttConfig>("max_packet_size = \"12 parsecs\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let c: MqttConfig = toml::from_str("tls_listen = \"0.0.0.0:8883\"").unwrap();
        assert!(matches!(c.validate(), Err(MqttError::Config { key: "cert_file", .. })));
        let c = MqttConfig { client_ca_file: Some("/ca.pem".into()), ..MqttConfig::default() };
        assert!(matches!(c.validate(), Err(MqttError::Config { key: "client_ca_file", .. })));
        let c = MqttConfig { max_inflight: 0, ..MqttConfig::default() };
        assert!(matches!(c.validate(), Err(MqttError::Config { key: "max_inflight", .. })));
    }
}
