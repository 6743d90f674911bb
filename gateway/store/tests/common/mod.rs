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
