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
}
