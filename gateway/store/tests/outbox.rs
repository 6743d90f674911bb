//! Behaviour of the outbox through its public API.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::{collections::HashMap, fs::OpenOptions};

use common::*;
use gw_model::{AppId, DeviceId};
use gw_store::{Outbox, StoreConfig, StoreError, WhenFull};

#[tokio::test]
async fn round_trips_records_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &StoreConfig::default()).unwrap();
    let mut seqs = Vec::new();
    for n in 0..3 {
        seqs.push(outbox.append(&telemetry("sensor1", n)).await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let mut reader = outbox.reader();
    let batch = reader.next(10).await.unwrap();
    assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    assert_eq!(batch[2].1, telemetry("sensor1", 2));
    for (seq, _) in &batch {
        reader.ack(*seq);
    }
    let stats = outbox.stats();
    assert_eq!(stats.records_queued(), 0);
    assert_eq!(stats.records_committed(), 3);
    assert!(stats.bytes_written() > 3 * 60, "{stats:?}");
    outbox.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &StoreConfig::default()).unwrap();
    let mut tasks = Vec::new();
    for p in 0..500u64 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..4 {
                outbox.append(&telemetry(&format!("d{}", p % 7), p * 10 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = outbox.stats();
    assert_eq!(stats.records_committed(), 2000);
    assert!(stats.commits() * 10 < 2000, "commits {} for 2000 records", stats.commits());
    assert!(stats.syncs() <= stats.commits() + 1, "{stats:?}");
    outbox.close().unwrap();
}

async fn write_records(dir: &std::path::Path, count: u64) {
    let outbox = Outbox::open(dir, &StoreConfig::default()).unwrap();
    for n in 0..count {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    outbox.close().unwrap();
}

async fn reopen_and_drain(dir: &std::path::Path) -> (Vec<u64>, gw_store::OutboxStats) {
    let outbox = Outbox::open(dir, &StoreConfig::default()).unwrap();
    let stats = outbox.stats();
    let mut reader = outbox.reader();
    let got = ns(&drain(&outbox, &mut reader).await);
    outbox.close().unwrap();
    (got, stats)
}

#[tokio::test]
async fn recovers_every_record_before_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    write_records(&dir, 20).await;
    let file = segment_files(&dir).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    // cut the last record in half
    OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 30).unwrap();
    let (got, _) = reopen_and_drain(&dir).await;
    assert_eq!(got, (0..19).collect::<Vec<_>>());
    // and the store keeps working after the cut
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    outbox.append(&telemetry("sensor1", 99)).await.unwrap();
    let mut reader = outbox.reader();
    assert_eq!(ns(&drain(&outbox, &mut reader).await), [99]);
    outbox.close().unwrap();
}

#[tokio::test]
async fn recovers_every_record_before_flipped_bytes_in_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    write_records(&dir, 20).await;
    let file = segment_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 8..] {
        *b ^= 0xa5;
    }
    std::fs::write(&file, &bytes).unwrap();
    let (got, _) = reopen_and_drain(&dir).await;
    assert_eq!(got, (0..19).collect::<Vec<_>>());
}

#[tokio::test]
async fn skips_and_counts_a_corrupt_record_in_an_old_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = small(WhenFull::Reject);
    let outbox = Outbox::open(&dir, &config).unwrap();
    for n in 0..200 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    outbox.close().unwrap();
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "expected several segments, got {}", files.len());
    // flip a byte in the middle of the first segment
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();

    let outbox = Outbox::open(&dir, &config).unwrap();
    assert_eq!(outbox.stats().corrupt_skipped(), 1);
    let mut reader = outbox.reader();
    let got = ns(&drain(&outbox, &mut reader).await);
    assert_eq!(got.len(), 199, "exactly the damaged record is missing");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*got.last().unwrap(), 199);
    outbox.close().unwrap();
}

#[tokio::test]
async fn replays_unacked_records_after_reopen_but_not_acked_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    for n in 0..100 {
        outbox.append(&telemetry(&format!("d{}", n % 4), n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let batch = reader.next(40).await.unwrap();
    assert_eq!(batch.len(), 40);
    // ack every other one, in reverse order; the rest stay in flight at the "crash"
    let mut acked = Vec::new();
    for (seq, t) in batch.iter().rev().step_by(2) {
        reader.ack(*seq);
        acked.push(n_of(t));
    }
    drop(reader);
    outbox.close().unwrap();

    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    let mut reader = outbox.reader();
    let mut got = ns(&drain(&outbox, &mut reader).await);
    got.sort_unstable();
    let expected: Vec<u64> = (0..100).filter(|n| !acked.contains(n)).collect();
    assert_eq!(got, expected);
    outbox.close().unwrap();
}

#[tokio::test]
async fn reject_policy_refuses_when_full_and_stays_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = small(WhenFull::Reject);
    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut accepted = 0u64;
    let mut rejected = false;
    for n in 0..10_000 {
        match outbox.append(&telemetry("sensor1", n)).await {
            Ok(_) => accepted += 1,
            Err(StoreError::QuotaExceeded { used, max }) => {
                assert_eq!(max, 64 * 1024);
                assert!(used <= max);
                rejected = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(rejected && accepted > 100, "accepted {accepted}");
    assert!(outbox.stats().disk_bytes() <= 64 * 1024);
    outbox.close().unwrap();

    // readable after reopen; draining frees whole segments (the committer deletes them after
    // persisting the acks, at the latest on close), so appends are accepted again
    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader = outbox.reader();
    let got = drain(&outbox, &mut reader).await;
    assert_eq!(ns(&got), (0..accepted).collect::<Vec<_>>());
    drop(reader);
    outbox.close().unwrap();
    let outbox = Outbox::open(&dir, &config).unwrap();
    assert!(outbox.stats().disk_bytes() < 16 * 1024, "{:?}", outbox.stats());
    outbox.append(&telemetry("sensor1", 0)).await.unwrap();
    outbox.close().unwrap();
}

#[tokio::test]
async fn drop_oldest_policy_drops_and_counts_per_device() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = small(WhenFull::DropOldest);
    let outbox = Outbox::open(&dir, &config).unwrap();
    for n in 0..3000 {
        let device = if n < 1000 { "old" } else { "new" };
        outbox.append(&telemetry(device, n)).await.unwrap();
    }
    let stats = outbox.stats();
    assert!(stats.disk_bytes() <= 64 * 1024 + 16 * 1024, "{stats:?}");
    let dropped: HashMap<String, u64> =
        stats.devices().iter().map(|d| (d.device().to_string(), d.dropped())).collect();
    assert_eq!(dropped["old"], 1000, "all of the oldest device's records went first");
    assert!(stats.dropped() > 1000);
    assert_eq!(stats.dropped(), dropped.values().sum::<u64>());
    assert_eq!(stats.records_queued() + stats.dropped(), 3000);
    let queued = stats.records_queued();
    outbox.close().unwrap();

    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader = outbox.reader();
    let got = ns(&drain(&outbox, &mut reader).await);
    assert_eq!(got.len() as u64, queued);
    assert_eq!(got, (3000 - queued..3000).collect::<Vec<_>>(), "the newest survive, in order");
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_chatty_device_does_not_starve_a_quiet_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = StoreConfig { sync: gw_store::SyncPolicy::Interval, ..StoreConfig::default() };
    let outbox = Outbox::open(&outbox_dir(&tmp), &config).unwrap();
    for n in 0..10_000 {
        outbox.append(&telemetry("chatty", n)).await.unwrap();
    }
    for n in 0..10 {
        outbox.append(&telemetry("quiet", 20_000 + n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let batch = reader.next(64).await.unwrap();
    let quiet: Vec<u64> =
        batch.iter().filter(|(_, t)| t.device == "quiet").map(|(_, t)| n_of(t)).collect();
    assert_eq!(quiet, (20_000..20_010).collect::<Vec<_>>(), "quiet device served in batch 1");
    let chatty: Vec<u64> =
        batch.iter().filter(|(_, t)| t.device == "chatty").map(|(_, t)| n_of(t)).collect();
    assert_eq!(chatty, (0..32).collect::<Vec<_>>());
    outbox.close().unwrap();
}

#[tokio::test]
async fn keeps_device_order_under_out_of_order_acks_and_nacks() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &StoreConfig::default()).unwrap();
    for n in 0..30 {
        outbox.append(&telemetry(&format!("d{}", n % 3), n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let mut delivered: HashMap<String, Vec<u64>> = HashMap::new();
    let mut round = 0u64;
    while outbox.stats().records_queued() > 0 {
        round += 1;
        assert!(round < 200);
        let batch = reader.next(6).await.unwrap();
        // the uplink sends in the order given and stops a device at its first failure: in odd
        // rounds each device's first record fails, so its later ones are nacked too
        let mut failed_devices = std::collections::HashSet::new();
        let mut verdicts = Vec::new();
        for (seq, t) in &batch {
            let device = t.device.to_string();
            let fails = round % 2 == 1 && !delivered_any(&batch, &device, *seq)
                || failed_devices.contains(&device);
            if fails {
                failed_devices.insert(device);
            } else {
                delivered.entry(device).or_default().push(n_of(t));
            }
            verdicts.push((*seq, fails));
        }
        // verdicts arrive in reverse
        for (seq, fails) in verdicts.into_iter().rev() {
            if fails {
                reader.nack(seq);
            } else {
                reader.ack(seq);
            }
        }
    }
    for (device, ns) in delivered {
        let mut expected = ns.clone();
        expected.sort_unstable();
        assert_eq!(ns, expected, "{device} delivered out of order");
        assert_eq!(ns.len(), 10, "{device}");
    }
    outbox.close().unwrap();
}

/// Whether `seq` is not its device's first record in `batch`.
fn delivered_any(
    batch: &[(gw_store::Seq, gw_model::Telemetry)],
    device: &str,
    seq: gw_store::Seq,
) -> bool {
    batch.iter().any(|(s, t)| t.device == device && *s < seq)
}

#[tokio::test]
async fn parked_device_waits_until_unparked_while_others_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &StoreConfig::default()).unwrap();
    for n in 0..4 {
        outbox.append(&telemetry("banned", n)).await.unwrap();
        outbox.append(&telemetry("fine", 100 + n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let batch = reader.next(4).await.unwrap();
    for (seq, t) in &batch {
        if t.device == "banned" {
            reader.park(*seq);
        } else {
            reader.ack(*seq);
        }
    }
    let mut fine = Vec::new();
    while outbox.stats().records_queued() > 4 {
        for (seq, t) in reader.next(10).await.unwrap() {
            assert_eq!(t.device, "fine", "a parked device's record was handed out");
            reader.ack(seq);
            fine.push(n_of(&t));
        }
    }
    assert_eq!(fine.len(), 2);
    let stats = outbox.stats();
    let parked: Vec<String> = stats.parked().map(|d| d.device().to_string()).collect();
    assert_eq!(parked, ["banned"]);
    assert_eq!(stats.records_queued(), 4);

    reader.unpark(&AppId::new("app").unwrap(), &DeviceId::new("banned").unwrap());
    let got = ns(&drain(&outbox, &mut reader).await);
    assert_eq!(got, [0, 1, 2, 3]);
    assert_eq!(outbox.stats().parked().count(), 0);
    outbox.close().unwrap();
}

#[tokio::test]
async fn deletes_acked_segments_and_keeps_acks_of_a_pinned_old_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = small(WhenFull::Reject);
    let outbox = Outbox::open(&dir, &config).unwrap();
    // a parked device pins the first segment; everything else gets acked
    for n in 0..3 {
        outbox.append(&telemetry("pinned", n)).await.unwrap();
    }
    for n in 3..300 {
        outbox.append(&telemetry("busy", n)).await.unwrap();
    }
    let segments_before = segment_files(&dir).len();
    assert!(segments_before >= 4, "{segments_before}");
    let mut reader = outbox.reader();
    let first = reader.next(3).await.unwrap();
    for (seq, t) in &first {
        if t.device == "pinned" {
            reader.park(*seq);
        } else {
            reader.ack(*seq);
        }
    }
    while outbox.stats().records_queued() > 3 {
        for (seq, _) in reader.next(100).await.unwrap() {
            reader.ack(seq);
        }
    }
    drop(reader);
    outbox.close().unwrap();
    let segments_after = segment_files(&dir).len();
    assert!(segments_after <= 2, "{segments_after} segments remain");

    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader = outbox.reader();
    let got = ns(&drain(&outbox, &mut reader).await);
    assert_eq!(got, [0, 1, 2], "only the pinned device's records come back");
    outbox.close().unwrap();
    assert_eq!(segment_files(&dir).len(), 1);
}

#[tokio::test]
async fn appends_after_close_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &StoreConfig::default()).unwrap();
    let other = outbox.clone();
    outbox.close().unwrap();
    assert!(matches!(other.append(&telemetry("a", 1)).await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn rejects_records_larger_than_a_quarter_of_the_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&outbox_dir(&tmp), &small(WhenFull::Reject)).unwrap();
    let mut t = telemetry("a", 1);
    t.payload = bytes::Bytes::from(vec![0u8; 20_000]);
    assert!(matches!(outbox.append(&t).await, Err(StoreError::RecordTooLarge { .. })));
    outbox.append(&telemetry("a", 2)).await.unwrap();
    outbox.close().unwrap();
}

#[tokio::test]
async fn interval_sync_acks_after_write_and_syncs_later() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = StoreConfig {
        sync: gw_store::SyncPolicy::Interval,
        sync_interval: std::time::Duration::from_secs(3600),
        ..StoreConfig::default()
    };
    let outbox = Outbox::open(&dir, &config).unwrap();
    for n in 0..50 {
        outbox.append(&telemetry("a", n)).await.unwrap();
    }
    assert_eq!(outbox.stats().syncs(), 0, "no fdatasync before the interval");
    outbox.close().unwrap();
    let (got, _) = reopen_and_drain(&dir).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

/// What was just committed is handed to the uplink from memory; a nacked record, a backlog
/// larger than `read_cache` and everything after a reopen are read back from the segments,
/// identical either way.
#[tokio::test]
async fn just_committed_records_come_from_memory_and_the_rest_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    for n in 0..50 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let batch = reader.next(20).await.unwrap();
    assert_eq!(batch.len(), 20);
    assert_eq!(batch[3].1, telemetry("sensor1", 3));
    assert_eq!(outbox.stats().records_read_back(), 0, "taken from memory");
    // a retry is read back from disk, the same record
    for (seq, _) in &batch[1..] {
        reader.ack(*seq);
    }
    reader.nack(batch[0].0);
    let again = reader.next(1).await.unwrap();
    assert_eq!(again[0], batch[0]);
    assert_eq!(outbox.stats().records_read_back(), 1);
    reader.ack(again[0].0);
    drop(reader);
    outbox.close().unwrap();

    // after a reopen nothing is in memory
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    let mut reader = outbox.reader();
    let got = ns(&drain(&outbox, &mut reader).await);
    assert_eq!(got, (20..50).collect::<Vec<_>>());
    assert_eq!(outbox.stats().records_read_back(), 30);
    drop(reader);
    outbox.close().unwrap();

    // a read cache smaller than one commit keeps nothing
    let dir = tmp.path().join("tiny");
    let config = StoreConfig { read_cache: gw_store::ByteSize::new(0), ..StoreConfig::default() };
    let outbox = Outbox::open(&dir, &config).unwrap();
    for n in 0..5 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    let got = reader.next(10).await.unwrap();
    let want: Vec<_> = (0..5).map(|n| telemetry("sensor1", n)).collect();
    assert_eq!(got.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), want);
    assert_eq!(outbox.stats().records_read_back(), 5);
    outbox.close().unwrap();
}
