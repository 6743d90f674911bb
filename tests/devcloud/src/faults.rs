//! Faults a test can switch on while the dev cloud runs, to make it behave as the real
//! services do on a bad day: a downstream (Kafka) that fails every publish with a server
//! error, or one that holds each publish before confirming it.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::Duration,
};

/// The switches; every one is off by default. Shared by the HTTP and MQTT device endpoints.
#[derive(Debug, Default)]
pub struct Faults {
    /// A status answered to every authenticated HTTP publish instead of accepting it; 0 = off.
    publish_status: AtomicU16,
    /// How long an accepted publish waits before it is logged and answered.
    publish_delay: Mutex<Option<Duration>>,
    /// Publishes that reached the endpoint and were authenticated (accepted or not).
    publishes_seen: AtomicU64,
    /// Every HTTP request as `METHOD path?query`, oldest first (the last [`REQUEST_LOG`]).
    requests: Mutex<std::collections::VecDeque<String>>,
}

/// How many requests [`Faults::requests`] keeps.
pub const REQUEST_LOG: usize = 10_000;

impl Faults {
    /// Answers every authenticated HTTP publish with `status` (e.g. 500, 503) without logging
    /// an event; `None` restores normal answers.
    pub fn set_publish_status(&self, status: Option<u16>) {
        self.publish_status.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Holds every accepted HTTP publish for `delay` before it is logged and
    /// answered, as Drogue does while Kafka is slow to confirm; `None` answers at once.
    pub fn set_publish_delay(&self, delay: Option<Duration>) {
        *self.publish_delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// How many authenticated publishes the endpoints have seen, whatever they answered.
    pub fn publishes_seen(&self) -> u64 {
        self.publishes_seen.load(Ordering::SeqCst)
    }

    pub(crate) fn publish_status(&self) -> Option<u16> {
        match self.publish_status.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub(crate) fn publish_delay(&self) -> Option<Duration> {
        *self.publish_delay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every HTTP request the cloud received (the last 10,000), as `METHOD path?query`: what
    /// a test checks to know no request went anywhere it should not.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub(crate) fn saw_request(&self, line: String) {
        let mut log = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(line);
    }

    pub(crate) fn saw_publish(&self) {
        self.publishes_seen.fetch_add(1, Ordering::SeqCst);
    }
}
