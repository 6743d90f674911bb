//! The gateway's credential chain: who may connect as which sensor. Devices synced from the
//! cloud registry are kept in a [`CredentialCache`] that holds password *hashes* only and is
//! persisted as a checksummed snapshot in the data dir, loaded before any network call; local
//! [`Accounts`] hold app-scoped accounts (technicians, locally provisioned sensors); an
//! optional legacy `CheckLogin` service is asked last and its accounts are migrated into the
//! local accounts. [`CredentialChain`] ties them together behind
//! [`gw_model::Authenticate`], with a brute-force [`Limiter`] in front and a bounded memory of
//! recent successful verifications so reconnect storms do not re-run argon2.
//!
//! # Use from the daemon
//!
//! ```no_run
//! # async fn wiring(devices: Vec<gw_model::registry::Device>) -> Result<(), gw_auth::AuthError> {
//! use gw_auth::{AuthConfig, CredentialChain};
//! let config = AuthConfig::default(); // the [auth] section
//! let data_dir = std::path::Path::new("/var/lib/gatewayd");
//! // at start-up, before any network call: loads credentials.snap and accounts.snap
//! let chain = CredentialChain::open(&config, data_dir)?.with_static_devices(&[])?;
//! // after each registry sync: hash, save the snapshot, swap (removed devices lose access)
//! chain.replace_devices(devices).await?;
//! // drivers get `chain.clone()` as their `gw_model::Authenticate`
//! # Ok(()) }
//! ```
//!
//! `gatewayd accounts add|list|reset|remove` open [`Accounts`] on
//! `<data_dir>/`[`chain::ACCOUNTS_FILE`] with [`AuthConfig::hash_params`]; a running daemon
//! sees the changes after [`Accounts::reload`] (or a restart).
//!
//! # Layout
//! - [`config`]: the `[auth]` config section, [`AuthConfig`], every key documented.
//! - [`hash`]: [`HashParams`] and [`StoredHash`]: argon2id hashing, bcrypt / sha512-crypt /
//!   argon2id verification.
//! - [`cache`]: [`CredentialCache`]: built from registry devices, matched with Drogue's rules,
//!   saved to and loaded from its snapshot file.
//! - [`accounts`]: [`Accounts`]: the local accounts file (add, list, reset, remove,
//!   set_password: a migrated account becomes native).
//! - [`legacy`]: [`LegacyLogin`]: the client of the old `CheckLogin` service.
//! - [`limiter`]: [`Limiter`]: pure exponential lockout per identifier and per address.
//! - `verified`: the keyed (HMAC-SHA256) memory of successful verifications.
//! - [`chain`]: [`CredentialChain`]: the order, the blocking-pool discipline, the wiring.
//! - [`error`]: [`AuthError`], the crate's one error type.

pub mod accounts;
pub mod cache;
pub mod chain;
pub mod config;
pub mod error;
pub mod hash;
pub mod legacy;
pub mod limiter;

mod verified;

pub use accounts::{Account, Accounts};
pub use cache::CredentialCache;
pub use chain::{CredentialChain, StaticDevice};
pub use config::{AuthConfig, LegacyApp};
pub use error::AuthError;
pub use hash::{HashParams, StoredHash};
pub use legacy::LegacyLogin;
pub use limiter::{Limiter, LimiterKey};
