//! The durable command queue: commands from the cloud for sensors that are not connected,
//! kept until the sensor makes contact or the command expires.
//!
//! One append-only log, `<dir>/commands.log`, written and fdatasync'd before a call returns,
//! so a command [`push`](CommandQueue::push) accepted survives `kill -9` and power loss, and a
//! command [`take`](CommandQueue::take) handed out is not handed out again after a restart.
//! Syncs are grouped, as the outbox's are: a call writes its records under the queue's lock,
//! then waits outside it until a sync covers them; one thread syncs for everything written so
//! far while the others wait, so calls from many threads at once share fdatasyncs.
//!
//! ```text
//! file   = magic "GWCMDQ1\0" | record*
//! record = len u32 LE | crc u32 LE (CRC-32 of body) | body (postcard Entry)
//! Entry  = Add { id, command } | Remove { id }
//! ```
//!
//! Opening replays the log in order (an `Add` of an id already removed puts it back: that is
//! how [`restore`](CommandQueue::restore) is written) and cuts a torn tail left by a crash at
//! the last intact record. When the log has grown to more than twice what is live (and past
//! [`COMPACT_MIN_BYTES`]), it is rewritten with only the live commands: temp file, fsync,
//! rename, fsync of the directory.
//!
//! A command handed to a channel that confirms receipt (an MQTT session: the sensor's PUBACK)
//! is [`lend`](CommandQueue::lend)t instead: it stays on disk, marked in memory so it is not
//! handed out twice, until [`settle`](CommandQueue::settle) removes it (the sensor has it) or
//! [`unlend`](CommandQueue::unlend) makes it available again in its place (the session ended
//! first). A restart forgets the marks: what was lent is delivered again (at least once).
//!
//! Bounds: `max_per_device` commands per device, `max_total` and `max_bytes` (payload bytes)
//! over all devices; memory holds exactly the live commands. Time is an argument: every call
//! that may drop expired commands takes `now` and returns what it dropped, so the caller can
//! count and report it.

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
};

use gw_model::{Command, Identity, Timestamp};
use serde::{Deserialize, Serialize};

use crate::StoreError;

const MAGIC: &[u8; 8] = b"GWCMDQ1\0";
const RECORD_HEADER: usize = 8;
/// The largest record body the log accepts (a command payload is bounded far below this).
const MAX_RECORD: usize = 16 * 1024 * 1024;
/// The log is never compacted while it is smaller than this.
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024;
/// The file name of the log inside the queue's directory.
pub const LOG_FILE: &str = "commands.log";

/// The queue's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Commands waiting for one device.
    pub max_per_device: usize,
    /// Commands waiting over all devices.
    pub max_total: usize,
    /// Payload bytes waiting over all devices.
    pub max_bytes: u64,
}

/// A command in the queue, with the id the log knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedCommand {
    pub id: u64,
    pub command: Command,
}

/// What [`CommandQueue::take`] found: the oldest unexpired command of the device, and the
/// expired ones it dropped on the way.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub command: Option<QueuedCommand>,
    pub expired: Vec<Command>,
}

/// The queue's contents at one moment, for the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Commands waiting.
    pub queued: usize,
    /// Their payload bytes.
    pub bytes: u64,
    /// The log file's size.
    pub log_bytes: u64,
    /// Commands waiting per device, sorted by device.
    pub devices: Vec<(Identity, usize)>,
}

#[derive(Serialize, Deserialize)]
enum Entry {
    Add { id: u64, command: Command },
    Remove { id: u64 },
}

/// The durable command queue. All methods block on file I/O (one fdatasync per call that
/// changes the queue): call them from a blocking thread.
pub struct CommandQueue {
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: std::sync::Condvar,
}

/// The group commit's state: how many writes are durable, whether a sync is under way.
#[derive(Default)]
struct SyncState {
    /// Writes (counted as [`Inner::written`] counts them) covered by a completed sync.
    durable: u64,
    syncing: bool,
    /// fdatasyncs done.
    syncs: u64,
}

struct Inner {
    path: PathBuf,
    dir: PathBuf,
    file: std::sync::Arc<File>,
    /// Writes appended to the log so far (the group commit's clock).
    written: u64,
    limits: QueueLimits,
    devices: HashMap<Identity, VecDeque<QueuedCommand>>,
    total: usize,
    bytes: u64,
    next_id: u64,
    log_bytes: u64,
    /// Encoded size of the live `Add` records, to decide on compaction.
    live_log_bytes: u64,
    /// Where each live id is, and the size of its `Add` record.
    index: HashMap<u64, (Identity, u64)>,
    /// Set after a failed write: the file may end in a partial record; nothing more is
    /// appended until the queue is reopened (which cuts it).
    failed: Option<String>,
    /// Ids lent out and not yet settled or given back (memory only).
    lent: std::collections::HashSet<u64>,
}

impl std::fmt::Debug for CommandQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("CommandQueue")
            .field("path", &inner.path)
            .field("queued", &inner.total)
            .finish()
    }
}

fn identity(c: &Command) -> Identity {
    Identity::new(c.app.clone(), c.device.clone())
}

fn encode(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let body = postcard::to_stdvec(entry).map_err(StoreError::CommandEncode)?;
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits the records off `bytes` (the file after its magic); returns the entries and the
/// length of the intact prefix. Scanning stops at the first short, oversized, damaged or
/// undecodable record: everything after it is a torn tail.
fn scan(bytes: &[u8]) -> (Vec<(Entry, u64)>, usize) {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(body) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else { break };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(entry) = postcard::from_bytes::<Entry>(body) else { break };
        let size = (RECORD_HEADER + len) as u64;
        entries.push((entry, size));
        at += RECORD_HEADER + len;
    }
    (entries, at)
}

impl CommandQueue {
    /// Opens (or creates) the queue in `dir`: replays the log, cuts a torn tail, and keeps
    /// every command it holds, even above `limits` (they apply to new commands only).
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<Self, StoreError> {
        crate::recover::create_dir(dir)?;
        let path = dir.join(LOG_FILE);
        let io_err = |source| StoreError::CommandLog { path: path.clone(), source };
        if !path.exists() {
            write_atomically(&path, dir, MAGIC)?;
        }
        let mut file =
            OpenOptions::new().read(true).append(true).mode(0o600).open(&path).map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(StoreError::CommandLogCorrupt {
                path,
                reason: "not a gatewayd command log (bad magic)",
            });
        }
        let (entries, intact) = scan(&bytes[MAGIC.len()..]);
        let intact = (MAGIC.len() + intact) as u64;
        if intact < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), kept = intact, cut = bytes.len() as u64 - intact,
                "command log: torn tail cut after a crash");
            file.set_len(intact).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
        }
        let mut inner = Inner {
            dir: dir.to_owned(),
            file: std::sync::Arc::new(file),
            written: 0,
            limits,
            devices: HashMap::new(),
            total: 0,
            bytes: 0,
            next_id: 1,
            log_bytes: intact,
            live_log_bytes: 0,
            index: HashMap::new(),
            failed: None,
            lent: std::collections::HashSet::new(),
            path,
        };
        for (entry, size) in entries {
            match entry {
                Entry::Add { id, command } => {
                    inner.next_id = inner.next_id.max(id + 1);
                    inner.insert(QueuedCommand { id, command }, size);
                }
                Entry::Remove { id } => {
                    inner.next_id = inner.next_id.max(id + 1);
                    inner.remove_id(id);
                }
            }
        }
        inner.maybe_compact()?;
        Ok(Self {
            inner: Mutex::new(inner),
            sync: Mutex::new(SyncState::default()),
            synced: std::sync::Condvar::new(),
        })
    }

    /// Waits until the writes up to `ticket` are on disk: syncs itself when no other thread
    /// is syncing, else waits for that sync (and, if it did not cover `ticket`, the next).
    fn durable(&self, ticket: u64) -> Result<(), StoreError> {
        let mut state = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                drop(state);
                let (file, upto, path) = {
                    let inner = self.lock();
                    if let Some(reason) = &inner.failed {
                        let reason = reason.clone();
                        drop(inner);
                        self.end_sync(None);
                        return Err(StoreError::CommandLogFailed { reason });
                    }
                    (std::sync::Arc::clone(&inner.file), inner.written, inner.path.clone())
                };
                let result = file.sync_data();
                if let Err(source) = &result {
                    self.lock().failed = Some(source.to_string());
                }
                self.end_sync(result.is_ok().then_some(upto));
                result.map_err(|source| StoreError::CommandLog { path, source })?;
                state = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state = self.synced.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ends a sync (`Some(upto)`: the writes up to `upto` are durable) and wakes the waiters.
    fn end_sync(&self, upto: Option<u64>) {
        let mut state = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        state.syncing = false;
        if let Some(upto) = upto {
            state.durable = state.durable.max(upto);
            state.syncs += 1;
        }
        drop(state);
        self.synced.notify_all();
    }

    /// fdatasyncs done since the queue was opened.
    pub fn syncs(&self) -> u64 {
        self.sync.lock().unwrap_or_else(PoisonError::into_inner).syncs
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `command` for its device, durably: on disk before this returns. Refused when
    /// it has already expired at `now`, or when a bound would be passed.
    pub fn push(&self, command: Command, now: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        if command.is_expired(now) {
            return Err(StoreError::CommandExpired);
        }
        let device = identity(&command);
        let on_device = inner.devices.get(&device).map_or(0, VecDeque::len);
        if on_device >= inner.limits.max_per_device {
            return Err(StoreError::CommandQueueFull {
                device: device.to_string(),
                max: inner.limits.max_per_device,
            });
        }
        let size = command.payload.len() as u64;
        if inner.total >= inner.limits.max_total
            || inner.bytes.saturating_add(size) > inner.limits.max_bytes
        {
            return Err(StoreError::CommandStoreFull {
                queued: inner.total,
                bytes: inner.bytes,
                max: inner.limits.max_total,
                max_bytes: inner.limits.max_bytes,
            });
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.add(QueuedCommand { id, command })?;
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)?;
        Ok(id)
    }

    /// Takes the oldest unexpired command of `device` that is not lent out, removing it
    /// durably, and drops (also durably) the expired ones in front of it.
    pub fn take(&self, device: &Identity, now: Timestamp) -> Result<Taken, StoreError> {
        let mut inner = self.lock();
        let taken = inner.oldest(device, now);
        let mut removed: Vec<u64> = taken.1.iter().map(|q| q.id).collect();
        removed.extend(taken.0.as_ref().map(|q| q.id));
        inner.remove_durably(&removed)?;
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)?;
        Ok(Taken { command: taken.0, expired: taken.1.into_iter().map(|q| q.command).collect() })
    }

    /// Lends the oldest unexpired command of `device` that is not lent out already: it stays
    /// queued (on disk) until [`settle`](Self::settle) or [`unlend`](Self::unlend). Expired
    /// commands in front of it are dropped durably.
    pub fn lend(&self, device: &Identity, now: Timestamp) -> Result<Taken, StoreError> {
        let mut inner = self.lock();
        let (command, expired) = inner.oldest(device, now);
        let ids: Vec<u64> = expired.iter().map(|q| q.id).collect();
        inner.remove_durably(&ids)?;
        if let Some(q) = &command {
            inner.lent.insert(q.id);
        }
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)?;
        Ok(Taken { command, expired: expired.into_iter().map(|q| q.command).collect() })
    }

    /// The lent command `id` reached its sensor: removed durably. Nothing happens for an id
    /// that is no longer queued.
    pub fn settle(&self, id: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.lent.remove(&id);
        if !inner.index.contains_key(&id) {
            return Ok(());
        }
        inner.remove_durably(&[id])?;
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)
    }

    /// The lent command `id` did not reach its sensor: available again, in its place.
    pub fn unlend(&self, id: u64) {
        self.lock().lent.remove(&id);
    }

    /// Commands of `device` that can be handed out now (queued and not lent out).
    pub fn available_of(&self, device: &Identity) -> usize {
        let inner = self.lock();
        inner
            .devices
            .get(device)
            .map_or(0, |q| q.iter().filter(|c| !inner.lent.contains(&c.id)).count())
    }

    /// Puts back a command [`take`](Self::take) handed out that could not be delivered after
    /// all, in its old place (before anything queued after it).
    pub fn restore(&self, command: QueuedCommand) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.index.contains_key(&command.id) {
            return Ok(());
        }
        inner.add(command)?;
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)
    }

    /// Drops (durably) every command expired at `now` that is not lent out, and returns them.
    pub fn expire(&self, now: Timestamp) -> Result<Vec<Command>, StoreError> {
        let mut inner = self.lock();
        let mut expired = Vec::new();
        let mut ids = Vec::new();
        for queue in inner.devices.values() {
            for q in
                queue.iter().filter(|q| q.command.is_expired(now) && !inner.lent.contains(&q.id))
            {
                ids.push(q.id);
                expired.push(q.command.clone());
            }
        }
        inner.remove_durably(&ids)?;
        let ticket = inner.written;
        drop(inner);
        self.durable(ticket)?;
        Ok(expired)
    }

    /// The earliest expiry of a waiting command.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        let inner = self.lock();
        inner.devices.values().flatten().filter_map(|q| q.command.expires_at).min()
    }

    /// Commands waiting for `device` (expired ones included until they are dropped).
    pub fn len_of(&self, device: &Identity) -> usize {
        self.lock().devices.get(device).map_or(0, VecDeque::len)
    }

    /// Commands waiting over all devices.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The devices that have commands waiting.
    pub fn devices(&self) -> Vec<Identity> {
        self.lock().devices.keys().cloned().collect()
    }

    /// The commands waiting for `device`, oldest first (for inspection; they stay queued).
    pub fn peek_all(&self, device: &Identity) -> Vec<QueuedCommand> {
        self.lock().devices.get(device).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn stats(&self) -> QueueStats {
        let inner = self.lock();
        let mut devices: Vec<_> =
            inner.devices.iter().map(|(id, q)| (id.clone(), q.len())).collect();
        devices.sort();
        QueueStats { queued: inner.total, bytes: inner.bytes, log_bytes: inner.log_bytes, devices }
    }
}

impl Inner {
    /// The oldest unexpired command of `device` not lent out, and the expired ones (not lent
    /// out) in front of it; nothing is removed.
    fn oldest(
        &self,
        device: &Identity,
        now: Timestamp,
    ) -> (Option<QueuedCommand>, Vec<QueuedCommand>) {
        let mut expired = Vec::new();
        for q in self.devices.get(device).into_iter().flatten() {
            if self.lent.contains(&q.id) {
                continue;
            }
            if q.command.is_expired(now) {
                expired.push(q.clone());
            } else {
                return (Some(q.clone()), expired);
            }
        }
        (None, expired)
    }

    /// Inserts into memory in id order (`record` is the size of its `Add` record); nothing
    /// happens if the id is live already.
    fn insert(&mut self, q: QueuedCommand, record: u64) {
        if self.index.contains_key(&q.id) {
            return;
        }
        let device = identity(&q.command);
        let queue = self.devices.entry(device.clone()).or_default();
        let at = queue.partition_point(|c| c.id < q.id);
        self.index.insert(q.id, (device, record));
        self.total += 1;
        self.bytes += q.command.payload.len() as u64;
        self.live_log_bytes += record;
        queue.insert(at, q);
    }

    fn remove_id(&mut self, id: u64) -> Option<QueuedCommand> {
        self.lent.remove(&id);
        let (device, record) = self.index.remove(&id)?;
        let queue = self.devices.get_mut(&device)?;
        let at = queue.partition_point(|c| c.id < id);
        let q = queue.remove(at)?;
        if queue.is_empty() {
            self.devices.remove(&device);
        }
        self.total -= 1;
        self.bytes -= q.command.payload.len() as u64;
        self.live_log_bytes = self.live_log_bytes.saturating_sub(record);
        Some(q)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(reason) = &self.failed {
            return Err(StoreError::CommandLogFailed { reason: reason.clone() });
        }
        // synced by the caller through the group commit ([`CommandQueue::durable`])
        let result = (&*self.file).write_all(bytes);
        if let Err(source) = result {
            self.failed = Some(source.to_string());
            return Err(StoreError::CommandLog { path: self.path.clone(), source });
        }
        self.log_bytes += bytes.len() as u64;
        self.written += 1;
        Ok(())
    }

    fn add(&mut self, q: QueuedCommand) -> Result<(), StoreError> {
        let record = encode(&Entry::Add { id: q.id, command: q.command.clone() })?;
        self.append(&record)?;
        self.insert(q, record.len() as u64);
        Ok(())
    }

    fn remove_durably(&mut self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for &id in ids {
            records.extend(encode(&Entry::Remove { id })?);
        }
        self.append(&records)?;
        for &id in ids {
            self.remove_id(id);
        }
        self.maybe_compact()
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        if self.log_bytes < COMPACT_MIN_BYTES || self.log_bytes <= 2 * self.live_log_bytes {
            return Ok(());
        }
        let mut all: Vec<&QueuedCommand> = self.devices.values().flatten().collect();
        all.sort_by_key(|q| q.id);
        let mut bytes = MAGIC.to_vec();
        for q in all {
            bytes.extend(encode(&Entry::Add { id: q.id, command: q.command.clone() })?);
        }
        write_atomically(&self.path, &self.dir, &bytes)?;
        let io_err = |source| StoreError::CommandLog { path: self.path.clone(), source };
        // the new file was synced whole: every write so far is durable in it (a sync still
        // running on the old file covers nothing that is not also here)
        self.file =
            std::sync::Arc::new(OpenOptions::new().append(true).open(&self.path).map_err(io_err)?);
        tracing::debug!(path = %self.path.display(), before = self.log_bytes,
            after = bytes.len(), "command log compacted");
        self.log_bytes = bytes.len() as u64;
        self.live_log_bytes = self.log_bytes - MAGIC.len() as u64;
        Ok(())
    }
}

/// Replaces `path` with `bytes`: temp file (0600), fsync, rename, fsync of `dir`.
fn write_atomically(path: &Path, dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source: io::Error| StoreError::CommandLog { path: path.to_owned(), source };
    let tmp = path.with_extension("log.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
