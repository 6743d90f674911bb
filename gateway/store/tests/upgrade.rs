//! Outbox files written by an older gatewayd stay readable after an upgrade: records whose
//! `Telemetry` predates `command_wait` are drained like any other.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use gw_model::Timestamp;
use gw_store::{Outbox, StoreConfig};
use serde::Serialize;

/// `Telemetry` as gatewayd 0.1 encoded it (no `command_wait`).
#[derive(Serialize)]
struct TelemetryV1 {
    app: String,
    device: String,
    channel: String,
    suffix: Option<String>,
    content_type: Option<String>,
    data_schema: Option<String>,
    received_at: u64,
    #[serde(with = "serde_bytes_as_bytes")]
    payload: Vec<u8>,
}

mod serde_bytes_as_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// A segment file as documented in gw-store's format module: header, then data records
/// `len | crc | seq | kind 1 | postcard body`.
fn old_segment(records: &[TelemetryV1]) -> Vec<u8> {
    let mut file = Vec::new();
    file.extend_from_slice(b"GWOUTBOX");
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    for (i, r) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        let body = postcard::to_stdvec(r).unwrap();
        let len = u32::try_from(body.len()).unwrap();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&seq.to_le_bytes());
        crc.update(&[1]);
        crc.update(&body);
        file.extend_from_slice(&len.to_le_bytes());
        file.extend_from_slice(&crc.finalize().to_le_bytes());
        file.extend_from_slice(&seq.to_le_bytes());
        file.push(1);
        file.extend_from_slice(&body);
    }
    file
}

fn v1(device: &str, n: u64) -> TelemetryV1 {
    TelemetryV1 {
        app: "app".into(),
        device: device.into(),
        channel: "temp".into(),
        suffix: (n == 1).then(|| "a/b".into()),
        content_type: Some("application/json".into()),
        data_schema: None,
        received_at: 1_700_000_000_000 + n,
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

#[tokio::test]
async fn drains_records_written_before_command_wait_existed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::outbox_dir(&tmp);
    std::fs::create_dir_all(&dir).unwrap();
    let old = [v1("s1", 0), v1("s1", 1), v1("s2", 2)];
    std::fs::write(dir.join("seg-00000000000000000001.log"), old_segment(&old)).unwrap();

    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    assert_eq!(outbox.stats().records_queued(), 3);
    let mut reader = outbox.reader();
    let batch =
        tokio::time::timeout(Duration::from_secs(10), reader.next(10)).await.unwrap().unwrap();
    let mut got: Vec<_> = batch.iter().map(|(_, t)| t.clone()).collect();
    got.sort_by_key(|t| t.received_at);
    assert_eq!(got.len(), 3, "{got:?}");
    for (t, o) in got.iter().zip(&old) {
        assert_eq!(
            (t.app.as_str(), t.device.as_str(), t.channel.as_str()),
            ("app", o.device.as_str(), "temp")
        );
        assert_eq!(t.suffix, o.suffix);
        assert_eq!(t.content_type, o.content_type);
        assert_eq!(t.received_at, Timestamp::from_millis(o.received_at));
        assert_eq!(&t.payload[..], &o.payload[..]);
        assert_eq!(t.command_wait, None);
    }

    // new records go behind the old ones and keep their wait
    let mut fresh = common::telemetry("s3", 9);
    fresh.command_wait = Some(Duration::from_secs(5));
    gw_model::Ingest::publish(&outbox, fresh.clone()).await.unwrap();
    let acker = reader.acker();
    for (seq, _) in &batch {
        acker.ack(*seq);
    }
    let next =
        tokio::time::timeout(Duration::from_secs(10), reader.next(10)).await.unwrap().unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, fresh);
    outbox.close().unwrap();
}
