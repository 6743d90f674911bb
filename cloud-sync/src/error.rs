//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud.{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot read CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate")]
    CaPem {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("TLS: {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the outbox failed under the uplink")]
    Store(#[from] gw_store::StoreError),
    #[error("registry.{key}: {reason}")]
    RegistryConfig { key: &'static str, reason: String },
    #[error("registry request {url} failed")]
    RegistryRequest {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry answered {status} to {url}{hint}")]
    RegistryStatus { url: String, status: u16, hint: &'static str },
    #[error("registry sent a body that is not a device list ({url})")]
    RegistryBody {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the registry listing changed under the paging ({reason}); listed nothing")]
    RegistryShifted { reason: String },
    #[error("event stream {url}: {reason}")]
    Events { url: String, reason: String },
}
