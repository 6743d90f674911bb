//! The gateway's image tooling: signed update bundles after RAUC's design, and their A/B
//! installation. A **bundle** is one file holding a TOML **manifest** (the `compatible` string
//! of the boards it is for, a semver `version`, the build date, and each image's slot class,
//! size and SHA-256), an ed25519 **signature** of the manifest, and the image payload. Signing
//! is mandatory: a bundle is trusted only when a public key of the gateway's **keyring** (a
//! directory, `/etc/gatewayd/keys/`) verifies it, and its images only when their hashes match
//! the signed manifest. Installing streams the rootfs image into the **inactive slot** while
//! hashing it, and only then tells the boot loader to **try** that slot once; the booted system
//! marks it **good** after it has been healthy for a while, otherwise the next reset falls back.
//!
//! # Layout
//!
//! - [`manifest`]: the manifest's TOML, parsed and checked (fuzzed).
//! - [`bundle`]: the bundle file format, keys, signing, the keyring, verification.
//! - [`bootenv`]: the boot loader environment behind one trait: GRUB (`grub-editenv`, or the
//!   block read and written natively where that tool is missing),
//!   U-Boot (`fw_printenv`/`fw_setenv`) and a plain key=value file.
//! - [`disk`]: the flashable GPT disk image (provision FAT, slots A and B, data).
//! - [`provision`]: `provision.toml` checked and imported (secrets into the data partition).
//! - [`slots`]: the A/B boot state kept in that environment, install to the inactive slot,
//!   mark-good, rollback, and the health gate that decides when a tried slot is good.

pub mod bootenv;
pub mod bundle;
pub mod disk;
pub mod manifest;
pub mod provision;
pub mod slots;

use std::{io, path::PathBuf};

pub use bootenv::{BootEnv, FileEnv, GrubEnv, UbootEnv};
pub use bundle::{Bundle, Keyring, SecretKey};
pub use manifest::{Image, Manifest};
pub use slots::{BootState, HealthGate, InstallOptions, Installed, Slot, SlotSystem};

/// Everything that can go wrong with a bundle, a key or an installation.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("{path}: not an update bundle ({reason})")]
    NotABundle { path: PathBuf, reason: String },
    #[error("{path}: the bundle is not signed by a key of the keyring {keyring} (signer {key_id})")]
    UntrustedSigner { path: PathBuf, keyring: PathBuf, key_id: String },
    #[error(
        "{path}: bad signature: the manifest was changed after signing, or the signature is corrupt (signer {key_id})"
    )]
    BadSignature { path: PathBuf, key_id: String },
    #[error("bundle is for {bundle:?}, this board is {board:?}")]
    Incompatible { bundle: String, board: String },
    #[error(
        "bundle version {bundle} is older than the installed {installed}; pass --force to downgrade"
    )]
    Downgrade { bundle: semver::Version, installed: semver::Version },
    #[error("image {name}: SHA-256 {actual} does not match the manifest's {expected}")]
    HashMismatch { name: String, expected: String, actual: String },
    #[error("image {name}: the bundle ends {missing} bytes before the image's size")]
    Truncated { name: String, missing: u64 },
    #[error(
        "the booted slot {0} has not been marked good yet; install again once it is (or after a reset back to the good slot)"
    )]
    BootedSlotOnTrial(Slot),
    #[error("key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("keyring {path}: {reason}")]
    Keyring { path: PathBuf, reason: String },
    #[error("provision.toml: {0}")]
    Provision(String),
    #[error("disk image: {0}")]
    Disk(String),
    #[error("boot loader environment: {0}")]
    Env(String),
    #[error("cannot run {tool}: {source}")]
    Tool {
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed { tool: String, status: String, stderr: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// Lower-case hex of bytes (hashes, key ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `compatible` string of a board profile: `gatewayd-<profile name>`.
pub fn compatible_for(profile: &gw_board::Profile) -> String {
    format!("gatewayd-{}", profile.name)
}
