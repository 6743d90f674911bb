//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, dead_code)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use bytes::Bytes;
use gw_model::{AppId, Channel, DeviceId, Telemetry, Timestamp};
use gw_store::{ByteSize, Outbox, OutboxReader, Seq, StoreConfig, WhenFull};

pub fn telemetry(device: &str, n: u64) -> Telemetry {
    Telemetry {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        channel: Channel::new("temp").unwrap(),
        suffix: None,
        content_type: Some("application/json".to_owned()),
        data_schema: None,
        received_at: Timestamp::from_millis(1_700_000_000_000 + n),
        payload: Bytes::from(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(40))),
        command_wait: None,
    }
}

/// The `n` a record was made with.
pub fn n_of(t: &Telemetry) -> u64 {
    t.received_at.as_millis() - 1_700_000_000_000
}

pub fn small(when_full: WhenFull) -> StoreConfig {
    StoreConfig { max_bytes: ByteSize::new(64 * 1024), when_full, ..StoreConfig::default() }
}

pub fn outbox_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("outbox")
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Takes everything deliverable, acking each record, until nothing is queued.
pub async fn drain(outbox: &Outbox, reader: &mut OutboxReader) -> Vec<(Seq, Telemetry)> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        if outbox.stats().records_queued() == 0 {
            break;
        }
        let batch = reader.next(256).await.unwrap();
        for (seq, _) in &batch {
            reader.ack(*seq);
        }
        out.extend(batch);
    }
    out
}

pub fn ns(records: &[(Seq, Telemetry)]) -> Vec<u64> {
    records.iter().map(|(_, t)| n_of(t)).collect()
}

/// A switchable fault plan for tests: faults armed per point, and a log of every call.
#[derive(Clone, Default)]
pub struct Switch {
    state: std::sync::Arc<(std::sync::Mutex<SwitchState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct SwitchState {
    armed: std::collections::HashMap<gw_store::FaultPoint, gw_store::Fault>,
    /// Faults that fire once, in order, at their point.
    once: Vec<(gw_store::FaultPoint, gw_store::Fault)>,
    calls: Vec<(gw_store::FaultPoint, bool)>,
}

impl Switch {
    pub fn plan(&self) -> gw_store::FaultPlan {
        let state = self.state.clone();
        gw_store::FaultPlan::new(move |point| {
            let mut s = state.0.lock().unwrap();
            let fault = match s.once.iter().position(|(p, _)| *p == point) {
                Some(i) => Some(s.once.remove(i).1),
                None => s.armed.get(&point).copied(),
            };
            s.calls.push((point, fault.is_some()));
            state.1.notify_all();
            fault
        })
    }

    /// Every call at `point` fails with `fault` until [`clear`](Self::clear).
    pub fn arm(&self, point: gw_store::FaultPoint, fault: gw_store::Fault) {
        self.state.0.lock().unwrap().armed.insert(point, fault);
    }

    /// The next call at `point` fails with `fault`.
    pub fn once(&self, point: gw_store::FaultPoint, fault: gw_store::Fault) {
        self.state.0.lock().unwrap().once.push((point, fault));
    }

    pub fn clear(&self) {
        let mut s = self.state.0.lock().unwrap();
        s.armed.clear();
        s.once.clear();
    }

    /// Calls seen so far at `point`, and how many of them failed.
    pub fn calls(&self, point: gw_store::FaultPoint) -> (usize, usize) {
        let s = self.state.0.lock().unwrap();
        let at: Vec<bool> = s.calls.iter().filter(|(p, _)| *p == point).map(|(_, f)| *f).collect();
        (at.len(), at.iter().filter(|f| **f).count())
    }

    /// Waits (for the committer thread's call, at most 10 s) until `point` has been called
    /// `n` times.
    pub fn wait_calls(&self, point: gw_store::FaultPoint, n: usize) {
        let (lock, cv) = &*self.state;
        let s = lock.lock().unwrap();
        let count = |s: &SwitchState| s.calls.iter().filter(|(p, _)| *p == point).count();
        let (s, _) =
            cv.wait_timeout_while(s, std::time::Duration::from_secs(10), |s| count(s) < n).unwrap();
        assert!(count(&s) >= n, "{point:?} was not called {n} times within 10 s");
    }
}
