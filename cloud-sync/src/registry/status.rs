//! What the registry sync tells the status page.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryState {
    /// No listing finished yet.
    Starting,
    /// The last listing succeeded.
    Synced,
    /// The last listing failed; the previous set (if any) stays published.
    Failing,
}

/// Shared between the sync loop and the web side.
#[derive(Debug)]
pub struct RegistryStatus {
    url: String,
    events_url: Option<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: RegistryState,
    last_sync: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
    devices: usize,
    listed: usize,
    invalid: usize,
    syncs: u64,
    failures: u64,
    generation: u64,
    events_error: Option<String>,
    events_seen: u64,
}

/// A point-in-time copy for `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RegistrySnapshot {
    pub url: String,
    pub state: RegistryState,
    /// When the last listing succeeded.
    pub last_sync_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    /// Devices in the published set (those this gateway may act for).
    pub devices: usize,
    /// Devices the last successful listing returned, before filtering.
    pub listed: usize,
    /// Devices of the last listing skipped because they did not parse.
    pub invalid: usize,
    /// Successful listings.
    pub syncs: u64,
    /// Failed listings.
    pub failures: u64,
    /// Generation of the published set (0: nothing published yet).
    pub generation: u64,
    pub events_url: Option<String>,
    /// The event stream's last error, cleared when it answers again.
    pub events_error: Option<String>,
    /// Registry events of this application seen on the stream.
    pub events_seen: u64,
}

fn ms(t: SystemTime) -> u64 {
    gw_model::Timestamp::from_system(t).as_millis()
}

/// What one successful listing found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncCounts {
    pub devices: usize,
    pub listed: usize,
    pub invalid: usize,
    pub generation: u64,
}

impl RegistryStatus {
    pub fn new(url: String, events_url: Option<String>) -> Self {
        Self {
            url,
            events_url,
            inner: Mutex::new(Inner {
                state: RegistryState::Starting,
                last_sync: None,
                last_error: None,
                devices: 0,
                listed: 0,
                invalid: 0,
                syncs: 0,
                failures: 0,
                generation: 0,
                events_error: None,
                events_seen: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record_sync(&self, at: SystemTime, counts: SyncCounts) {
        let mut inner = self.lock();
        inner.state = RegistryState::Synced;
        inner.last_sync = Some(at);
        inner.devices = counts.devices;
        inner.listed = counts.listed;
        inner.invalid = counts.invalid;
        inner.generation = counts.generation;
        inner.syncs += 1;
    }

    pub(crate) fn record_failure(&self, error: String) {
        let mut inner = self.lock();
        inner.state = RegistryState::Failing;
        inner.last_error = Some((SystemTime::now(), error));
        inner.failures += 1;
    }

    pub(crate) fn record_events_error(&self, error: Option<String>) {
        self.lock().events_error = error;
    }

    pub(crate) fn record_event(&self) {
        self.lock().events_seen += 1;
    }

    pub fn state(&self) -> RegistryState {
        self.lock().state
    }

    pub fn snapshot(&self) -> RegistrySnapshot {
        let inner = self.lock();
        RegistrySnapshot {
            url: self.url.clone(),
            state: inner.state,
            last_sync_at_ms: inner.last_sync.map(ms),
            last_error: inner.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_at_ms: inner.last_error.as_ref().map(|(t, _)| ms(*t)),
            devices: inner.devices,
            listed: inner.listed,
            invalid: inner.invalid,
            syncs: inner.syncs,
            failures: inner.failures,
            generation: inner.generation,
            events_url: self.events_url.clone(),
            events_error: inner.events_error.clone(),
            events_seen: inner.events_seen,
        }
    }
}
