//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong outside a login attempt (a login only passes or fails).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing a snapshot file (cache or accounts) failed, or it is damaged.
    #[error(transparent)]
    Snapshot(#[from] gw_store::StoreError),

    #[error("cannot decode {what} from {path}")]
    Decode {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// Argon2 parameters outside what the algorithm accepts.
    #[error("invalid [auth] argon2 parameters: {0}")]
    Params(String),

    #[error("cannot hash a password: {0}")]
    Hash(String),

    #[error("invalid [auth] {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    #[error("cannot build the legacy login client")]
    Client(#[source] reqwest::Error),

    #[error("account {0} already exists")]
    AccountExists(String),

    #[error("no account {0}")]
    NoSuchAccount(String),

    /// The blocking pool task hashing a password did not finish (runtime shutting down).
    #[error("password hashing task failed")]
    Join(#[source] tokio::task::JoinError),
}
