//! What a southbound driver (MQTT, CoAP, HTTP) needs from the rest of the gateway, as traits
//! the daemon implements: check who a sensor is, and hand over its messages durably. Drivers
//! depend on these and on nothing else of the gateway.

use std::{future::Future, net::IpAddr};

use crate::{AuthRequest, Identity, Telemetry};

/// Why a message could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The outbox is full (`when_full = "reject"`): MQTT v5 0x97, CoAP 5.03, HTTP 503.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The message is larger than a record may be: MQTT v5 0x95, CoAP 4.13, HTTP 413.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The store cannot take messages now (closed, failed): retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Takes a sensor's message; resolves only once it is committed (durable per the store's
/// sync policy). Only then may the driver acknowledge it to the sensor.
pub trait Ingest: Send + Sync + 'static {
    fn publish(&self, telemetry: Telemetry)
    -> impl Future<Output = Result<(), IngestError>> + Send;
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials prove this identity (canonical device name, even when an alias or a
    /// unique username was presented).
    Pass(Identity),
    /// Wrong or unknown credentials.
    Fail,
    /// Too many failed attempts from this identifier or address: refused without checking.
    RateLimited,
}

/// Checks what a sensor presents. `peer` is the source address, for rate limiting.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate(
        &self,
        request: &AuthRequest,
        peer: Option<IpAddr>,
    ) -> impl Future<Output = AuthOutcome> + Send;
}
