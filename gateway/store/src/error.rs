//! The crate's one error type.

use std::{io, path::PathBuf};

/// Everything that can go wrong in the store. Variants carry the path or value involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The outbox holds `max_bytes` already and `when_full = "reject"`: the drivers answer
    /// MQTT 0x97 / CoAP 5.03 / HTTP 503.
    #[error("outbox quota exceeded: {used} of {max} bytes in use")]
    QuotaExceeded { used: u64, max: u64 },

    /// One message is larger than a record may be.
    #[error("message of {size} bytes is larger than the outbox record limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },

    #[error("cannot encode telemetry for the outbox")]
    Encode(#[source] postcard::Error),

    #[error("cannot create outbox directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot list outbox directory {path}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot open segment {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read segment {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write segment {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot fdatasync {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot truncate the torn tail of segment {path} to {len} bytes")]
    Truncate {
        path: PathBuf,
        len: u64,
        #[source]
        source: io::Error,
    },

    #[error("cannot delete segment {path}")]
    Delete {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another process (or another open outbox in this one) holds the directory's lock.
    #[error("outbox directory {} is in use by {}", dir.display(), holder_text(*holder))]
    Locked { dir: PathBuf, holder: Option<u32> },

    #[error("cannot lock the outbox directory with {path}")]
    LockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot start the outbox committer thread")]
    Spawn(#[source] io::Error),

    /// The committer hit an I/O error and stopped; nothing is acknowledged any more. Reopening
    /// the outbox (restarting the daemon) recovers everything that was durable.
    #[error("the outbox committer stopped after an error: {reason}")]
    CommitterFailed { reason: String },

    /// The disk had no room for the record; nothing of it was kept. The outbox stays open and
    /// takes records again once space returns. Sensors see "quota exceeded".
    #[error("the disk is full: the message was not stored")]
    DiskFull,

    /// The outbox was closed.
    #[error("the outbox is closed")]
    Closed,

    /// A configuration value is outside what the store accepts.
    #[error("invalid [store] {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    #[error("cannot write snapshot {path}")]
    SnapshotWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read snapshot {path}")]
    SnapshotRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The snapshot is truncated, damaged, of another kind or from a newer gatewayd.
    #[error("snapshot {path} is unusable: {reason}")]
    SnapshotCorrupt { path: PathBuf, reason: &'static str },

    /// The device has `max_per_device` commands waiting already.
    #[error("command queue of {device} is full ({max} commands waiting)")]
    CommandQueueFull { device: String, max: usize },

    /// The queue holds `max_total` commands or `max_bytes` payload bytes already.
    #[error(
        "command queue is full: {queued} commands of {max}, {bytes} payload bytes of {max_bytes}"
    )]
    CommandStoreFull { queued: usize, bytes: u64, max: usize, max_bytes: u64 },

    /// The command's expiry has passed already: there is nothing to queue.
    #[error("the command has expired")]
    CommandExpired,

    #[error("cannot encode a command for the command log")]
    CommandEncode(#[source] postcard::Error),

    #[error("command log {path}")]
    CommandLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A write to the command log failed earlier; reopening (restarting the daemon) cuts
    /// what may be partial and recovers everything that was durable.
    #[error("the command log stopped after a failed write: {reason}")]
    CommandLogFailed { reason: String },

    #[error("command log {path} is unusable: {reason}")]
    CommandLogCorrupt { path: PathBuf, reason: &'static str },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_owned(),
    }
}
