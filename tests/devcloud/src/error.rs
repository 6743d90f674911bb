//! The crate's one error type.

use std::{io, net::SocketAddr, path::PathBuf};

/// Why the dev cloud could not start, load its seed, or carry out a registry or command
/// operation. The HTTP layer maps each variant to the status code Drogue Cloud answers with.
#[derive(Debug, thiserror::Error)]
pub enum DevCloudError {
    #[error("cannot bind the dev cloud listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot read seed file {path}")]
    ReadSeed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("seed file {path} is not valid: {reason}")]
    ParseSeed { path: PathBuf, reason: String },
    #[error("invalid seed: {0}")]
    InvalidSeed(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("precondition failed: {0}")]
    Conflict(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("label selector {selector:?} is invalid: {reason}")]
    BadSelector { selector: String, reason: String },
    #[error("device {device:?} is not enabled for commands")]
    NotEnabled { device: String },
    #[error("external command push to {url} failed: {reason}")]
    Push { url: String, reason: String },
}
