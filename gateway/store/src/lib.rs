//! The durable outbox of gatewayd: a crash-safe, bounded, append-only queue of sensor
//! [`Telemetry`](gw_model::Telemetry) in segment files under `<data_dir>/outbox/`. A sensor
//! is acknowledged only once its message is committed; producers hand records to one committer
//! thread that writes and fdatasyncs them in groups (one sync in flight, the next batch forming
//! behind it). The uplink drains the outbox through a reader that hands out records fairly
//! across devices, keeps each device's order, survives parked devices, and persists acks so
//! that after a crash only unacknowledged records are sent again. See
//! `docs/design/outbox.md` for the file format, recovery and the delivery contract. Beside
//! it, the [`CommandQueue`] keeps commands for sensors that are not connected, durably, with
//! bounds and expiry.
//!
//! # Layout
//! - [`config`]: the `[store]` config section, [`StoreConfig`], and the size parser.
//! - [`outbox`]: [`Outbox`]: open (recovery), `append` with group commit, stats, close.
//! - [`reader`]: [`OutboxReader`] and [`Acker`]: fair draining, ack / nack / park / unpark.
//! - [`stats`]: [`OutboxStats`], the snapshot for the status page.
//! - [`commands`]: [`CommandQueue`], the durable command queue (an fsync'd append log with
//!   per-device and total bounds, expiry and compaction).
//! - [`snapshot`]: versioned, checksummed, atomically replaced small files (credential cache,
//!   accounts), mode 0600.
//! - [`error`]: [`StoreError`], the crate's one error type.
//! - [`faults`]: [`FaultPlan`], injectable filesystem faults for tests (ENOSPC, short writes,
//!   EIO at chosen points); production runs without one.
//! - `format`: segment and record framing, checksums, and the damage-tolerant scanner.
//! - `recover`: opening a directory: scanning segments, cutting torn tails, applying acks.
//! - `committer`: the committer thread: batching, writing, syncing, rolling segments,
//!   refusing batches the disk has no room for; `committer::reclaim`: deleting acknowledged
//!   segments, cutting back an acknowledged head, ack checkpoints, dropping the oldest.
//! - `reserve`: the preallocated acknowledgement reserve, written in place when the disk is full.
//! - `dirlock`: the directory lock (`LOCK`, flock, holder's pid).
//! - `space`: the free-space clamp of `max_bytes`.
//! - `index`: the in-memory index: per-device queues, round-robin, in-flight, parked.
//! - `recent`: the latest commits' records in memory (`read_cache`), so the uplink does not
//!   read what was just written back from disk.
//! - `shared`: state shared between producers, the committer and the reader.

pub mod commands;
pub mod config;
pub mod error;
pub mod faults;
pub mod outbox;
pub mod reader;
pub mod snapshot;
pub mod stats;

mod committer;
mod dirlock;
mod format;
mod index;
mod recent;
mod recover;
mod reserve;
mod shared;
mod space;

pub use commands::{CommandQueue, QueueLimits, QueueStats, QueuedCommand, Taken};
pub use config::{ByteSize, MIN_LAG_RECORDS, StoreConfig, SyncPolicy, WhenFull};
pub use error::StoreError;
pub use faults::{Fault, FaultPlan, FaultPoint};
pub use outbox::{Outbox, Seq};
pub use reader::{Acker, OutboxReader};
pub use stats::{DeviceStats, OutboxStats};
