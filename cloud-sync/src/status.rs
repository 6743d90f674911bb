//! What an uplink tells the status page: its state, its last error, its counters.

use std::{
    collections::{BTreeMap, VecDeque},
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
    /// The cloud refused the gateway's own credentials: nothing can be sent until the
    /// gateway's password (`[cloud] password_file`) is fixed; every device's records wait.
    GatewayRefused,
}

/// How many dead letters the status keeps with their reasons.
const RECENT_DEAD_LETTERS: usize = 20;

/// A device whose records wait because the cloud refused it, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Parked {
    /// `device@app`.
    pub device: String,
    pub reason: String,
    pub since_ms: u64,
}

/// A record the cloud rejected for good, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// `device@app`.
    pub device: String,
    pub reason: String,
    pub at_ms: u64,
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
    possible_duplicates: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: UplinkState,
    last_error: Option<(SystemTime, String)>,
    last_success: Option<SystemTime>,
    /// `device@app` → (reason, since).
    parked_devices: BTreeMap<String, (String, SystemTime)>,
    recent_dead_letters: VecDeque<DeadLetter>,
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
    /// The parked devices with the cloud's reason.
    pub parked: Vec<Parked>,
    /// The last dead letters, newest last, with the cloud's reason.
    pub recent_dead_letters: Vec<DeadLetter>,
    /// Records sent again after an attempt whose outcome is unknown (a timeout after the
    /// request went out, a connection lost with the record in flight): the cloud may hold
    /// them twice.
    pub possible_duplicates: u64,
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
                parked_devices: BTreeMap::new(),
                recent_dead_letters: VecDeque::new(),
            }),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            possible_duplicates: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the cloud accepted since start (cheap: one atomic load).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the cloud is reachable now (the last request reached it, or the MQTT
    /// connection is up).
    pub fn is_connected(&self) -> bool {
        self.lock().state == UplinkState::Connected
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

    pub fn record_dead_letter(&self, device: String, error: String) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut inner = self.lock();
        if inner.recent_dead_letters.len() == RECENT_DEAD_LETTERS {
            inner.recent_dead_letters.pop_front();
        }
        inner.recent_dead_letters.push_back(DeadLetter {
            device,
            reason: error.clone(),
            at_ms: ms(now),
        });
        inner.last_error = Some((now, error));
    }

    pub fn record_parked(&self, device: String, error: String) {
        self.parked.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.parked_devices.entry(device).or_insert_with(|| (error.clone(), now));
        inner.last_error = Some((now, error));
    }

    /// A record goes out again after an attempt whose outcome is unknown.
    pub fn record_possible_duplicate(&self) {
        self.possible_duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// The cloud refused the gateway's own credentials.
    pub fn record_gateway_refused(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.state = UplinkState::GatewayRefused;
        inner.last_error = Some((SystemTime::now(), error));
    }

    /// Whether the last word from the cloud was a refusal of the gateway's own credentials.
    pub fn gateway_refused(&self) -> bool {
        self.lock().state == UplinkState::GatewayRefused
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
            parked_devices: inner.parked_devices.keys().cloned().collect(),
            parked: inner
                .parked_devices
                .iter()
                .map(|(device, (reason, since))| Parked {
                    device: device.clone(),
                    reason: reason.clone(),
                    since_ms: ms(*since),
                })
                .collect(),
            recent_dead_letters: inner.recent_dead_letters.iter().cloned().collect(),
            possible_duplicates: self.possible_duplicates.load(Ordering::Relaxed),
        }
    }
}
