//! What an uplink tells the status page: its state, its last error, its counters.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkState {
    /// Nothing sent yet.
    Starting,
    /// The last request reached the cloud (MQTT: the connection is up).
    Connected,
    /// The last request failed transiently; retrying with backoff.
    Retrying,
}

/// Shared between the uplink and the web side; every field is updated as it happens.
#[derive(Debug)]
pub struct UplinkStatus {
    kind: &'static str,
    url: String,
    inner: Mutex<Inner>,
    sent: AtomicU64,
    failures: AtomicU64,
    dead_letters: AtomicU64,
    parked: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: UplinkState,
    last_error: Option<(SystemTime, String)>,
    last_success: Option<SystemTime>,
    parked_devices: BTreeSet<String>,
}

/// A point-in-time copy for `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkSnapshot {
    pub kind: &'static str,
    pub url: String,
    pub state: UplinkState,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub last_success_at_ms: Option<u64>,
    /// Records the cloud accepted.
    pub sent: u64,
    /// Transient failures (retried).
    pub failures: u64,
    /// Records the cloud rejected for good (406 and other permanent 4xx), dropped and counted.
    pub dead_letters: u64,
    /// Times a device was parked because the cloud refused it (403).
    pub parked_events: u64,
    /// Devices currently parked, `device@app`.
    pub parked_devices: Vec<String>,
}

fn ms(t: SystemTime) -> u64 {
    gw_model::Timestamp::from_system(t).as_millis()
}

impl UplinkStatus {
    pub fn new(kind: &'static str, url: String) -> Self {
        Self {
            kind,
            url,
            inner: Mutex::new(Inner {
                state: UplinkState::Starting,
                last_error: None,
                last_success: None,
                parked_devices: BTreeSet::new(),
            }),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            parked: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.state = UplinkState::Connected;
        inner.last_success = Some(SystemTime::now());
    }

    /// The connection is up (MQTT: CONNACK received); nothing sent yet on it.
    pub fn record_connected(&self) {
        self.lock().state = UplinkState::Connected;
    }

    pub fn record_failure(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.state = UplinkState::Retrying;
        inner.last_error = Some((SystemTime::now(), error));
    }

    pub fn record_dead_letter(&self, error: String) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        self.lock().last_error = Some((SystemTime::now(), error));
    }

    pub fn record_parked(&self, device: String, error: String) {
        self.parked.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.parked_devices.insert(device);
        inner.last_error = Some((SystemTime::now(), error));
    }

    pub fn clear_parked(&self) {
        self.lock().parked_devices.clear();
    }

    pub fn snapshot(&self) -> UplinkSnapshot {
        let inner = self.lock();
        UplinkSnapshot {
            kind: self.kind,
            url: self.url.clone(),
            state: inner.state,
            last_error: inner.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_at_ms: inner.last_error.as_ref().map(|(t, _)| ms(*t)),
            last_success_at_ms: inner.last_success.map(ms),
            sent: self.sent.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            parked_events: self.parked.load(Ordering::Relaxed),
            parked_devices: inner.parked_devices.iter().cloned().collect(),
        }
    }
}
