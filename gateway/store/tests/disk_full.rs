//! A full disk, short writes, stray and unreadable segment files, and a second process: the
//! outbox keeps every acknowledged record, refuses cleanly, frees what is acknowledged without
//! needing space, and takes records again once the fault is gone, also after a reopen.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use gw_store::{Fault, FaultPoint, Outbox, StoreConfig, StoreError};

fn head_segment(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = segment_files(dir).pop().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[tokio::test]
async fn a_refused_acknowledgement_write_leaves_the_head_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let switch = Switch::default();
    let outbox = Outbox::open_with_faults(&dir, &StoreConfig::default(), switch.plan()).unwrap();
    for n in 0..5 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    let (_, before) = head_segment(&dir);
    let reserve_writes = switch.calls(FaultPoint::ReserveWrite).0; // its creation
    // the cloud takes the first; its ack record is cut short by a full disk (one ack, so one
    // commit batch: a second batch could land after the fault is gone, on the head)
    switch.once(FaultPoint::AckWrite, Fault::ShortWrite);
    let mut reader = outbox.reader();
    let batch = reader.next(1).await.unwrap();
    reader.ack(batch[0].0);
    // the acknowledgements went to the reserve: the head was cut back first
    switch.wait_calls(FaultPoint::ReserveWrite, reserve_writes + 1);
    let (_, after) = head_segment(&dir);
    assert_eq!(after, before, "a refused acknowledgement write leaves the head as it was");

    // later appends land where the index says they are
    for n in 5..8 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    let got = drain(&outbox, &mut reader).await;
    assert_eq!(ns(&got), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(got[4].1, telemetry("sensor1", 5), "delivered exactly as written");
    let stats = outbox.stats();
    assert_eq!(stats.corrupt_skipped(), 0, "{stats:?}");
    drop(reader);
    outbox.close().unwrap();

    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    assert_eq!(outbox.stats().records_queued(), 0, "the acks survived in the reserve");
    assert_eq!(outbox.stats().corrupt_skipped(), 0);
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_refused_data_write_leaves_the_head_byte_identical_and_is_not_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let switch = Switch::default();
    let outbox = Outbox::open_with_faults(&dir, &StoreConfig::default(), switch.plan()).unwrap();
    outbox.append(&telemetry("sensor1", 0)).await.unwrap();
    let (_, before) = head_segment(&dir);
    for fault in [Fault::ShortWrite, Fault::NoSpace] {
        switch.once(FaultPoint::Append, fault);
        let err = outbox.append(&telemetry("sensor1", 1)).await.unwrap_err();
        assert!(matches!(err, StoreError::DiskFull), "{err}");
        assert_eq!(head_segment(&dir).1, before, "{fault:?}");
    }
    // a write that succeeds but whose fdatasync fails is refused and cut off as well
    switch.once(FaultPoint::Sync, Fault::NoSpace);
    assert!(matches!(outbox.append(&telemetry("sensor1", 1)).await, Err(StoreError::DiskFull)));
    assert_eq!(head_segment(&dir).1, before, "after a failed sync");
    outbox.append(&telemetry("sensor1", 2)).await.unwrap();
    let mut reader = outbox.reader();
    assert_eq!(ns(&drain(&outbox, &mut reader).await), [0, 2]);
    assert_eq!(outbox.stats().rejected_disk_full(), 3);
    drop(reader);
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_full_disk_drained_frees_the_head_and_takes_records_again_also_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let switch = Switch::default();
    let config = StoreConfig::default();
    let outbox = Outbox::open_with_faults(&dir, &config, switch.plan()).unwrap();
    for n in 0..50 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    // the disk fills: nothing can be appended, not even acknowledgements
    for point in [FaultPoint::Append, FaultPoint::AckWrite, FaultPoint::Roll] {
        switch.arm(point, Fault::NoSpace);
    }
    assert!(matches!(outbox.append(&telemetry("sensor1", 50)).await, Err(StoreError::DiskFull)));
    // the cloud drains everything while the disk is still full
    let mut reader = outbox.reader();
    assert_eq!(drain(&outbox, &mut reader).await.len(), 50);
    drop(reader);
    outbox.close().unwrap();
    let (_, head) = head_segment(&dir);
    assert_eq!(head.len(), 16, "the acknowledged head was cut back to its header");

    // a restart while the disk is still full: nothing comes back, the outbox opens
    let outbox = Outbox::open_with_faults(&dir, &config, switch.plan()).unwrap();
    assert_eq!(outbox.stats().records_queued(), 0, "the acks were kept in the reserve");
    assert!(matches!(outbox.append(&telemetry("sensor1", 51)).await, Err(StoreError::DiskFull)));
    // space returns: records are taken again without a restart
    switch.clear();
    for n in 52..60 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    let mut reader = outbox.reader();
    assert_eq!(ns(&drain(&outbox, &mut reader).await), (52..60).collect::<Vec<_>>());
    let stats = outbox.stats();
    assert_eq!((stats.corrupt_skipped(), stats.segments_skipped()), (0, 0), "{stats:?}");
    drop(reader);
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_batch_refused_after_a_roll_keeps_what_the_roll_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let switch = Switch::default();
    let config = small(gw_store::WhenFull::Reject); // 8 KiB segments
    let outbox = Outbox::open_with_faults(&dir, &config, switch.plan()).unwrap();
    // one batch that rolls: the new segment cannot be created
    switch.arm(FaultPoint::Roll, Fault::NoSpace);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move { (n, outbox.append(&telemetry("d", n)).await) }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        let (n, result) = t.await.unwrap();
        match result {
            Ok(_) => accepted.push(n),
            Err(StoreError::DiskFull | StoreError::QuotaExceeded { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!accepted.is_empty() && accepted.len() < 200, "{} accepted", accepted.len());
    switch.clear();
    let mut reader = outbox.reader();
    let mut got = ns(&drain(&outbox, &mut reader).await);
    got.sort_unstable();
    assert_eq!(got, accepted, "exactly the accepted records");
    drop(reader);
    outbox.close().unwrap();
    let outbox = Outbox::open(&dir, &config).unwrap();
    assert_eq!(outbox.stats().records_queued(), 0, "nothing refused comes back after a reopen");
    assert_eq!(outbox.stats().corrupt_skipped(), 0);
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_stray_header_only_segment_inside_an_older_one_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    for n in 0..20 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    outbox.close().unwrap();
    let (first, bytes) = head_segment(&dir);
    // a header-only file whose name puts it at seq 5, inside the first segment; and a file
    // too short for a header
    std::fs::write(dir.join("seg-00000000000000000005.log"), &bytes[..16]).unwrap();
    std::fs::write(dir.join("seg-00000000000000000007.log"), b"GWOUT").unwrap();

    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    let stats = outbox.stats();
    assert_eq!(stats.segments_skipped(), 2, "{stats:?}");
    assert_eq!(stats.corrupt_skipped(), 0, "{stats:?}");
    outbox.append(&telemetry("sensor1", 20)).await.unwrap();
    let mut reader = outbox.reader();
    let got = drain(&outbox, &mut reader).await;
    assert_eq!(ns(&got), (0..21).collect::<Vec<_>>(), "every record, read from its own file");
    drop(reader);
    outbox.close().unwrap();
    assert!(!first.exists(), "the acknowledged segment is deleted");
    assert!(dir.join("seg-00000000000000000005.log").exists(), "a stray file is left in place");
}

#[tokio::test]
async fn an_unreadable_segment_is_skipped_counted_and_its_seqs_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    for n in 0..10 {
        outbox.append(&telemetry("sensor1", n)).await.unwrap();
    }
    outbox.close().unwrap();

    // the only segment cannot be read at this open
    let switch = Switch::default();
    switch.once(FaultPoint::RecoveryRead, Fault::Io);
    let outbox = Outbox::open_with_faults(&dir, &StoreConfig::default(), switch.plan()).unwrap();
    assert_eq!(outbox.stats().segments_skipped(), 1);
    assert_eq!(outbox.stats().records_queued(), 0);
    let seq = outbox.append(&telemetry("sensor1", 10)).await.unwrap();
    assert!(seq.get() > 10, "seq {seq} may belong to the unreadable segment");
    // its acknowledgement must not cover the unreadable segment's seqs
    let mut reader = outbox.reader();
    assert_eq!(ns(&drain(&outbox, &mut reader).await), [10]);
    drop(reader);
    outbox.close().unwrap();

    // readable again: its records are all there, none acknowledged by the checkpoint
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    assert_eq!(outbox.stats().segments_skipped(), 0);
    let mut reader = outbox.reader();
    assert_eq!(ns(&drain(&outbox, &mut reader).await), (0..10).collect::<Vec<_>>());
    drop(reader);
    outbox.close().unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_directory_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
    let err = Outbox::open(&dir, &StoreConfig::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { holder: Some(pid), .. } if pid == std::process::id()),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("is in use by process {}", std::process::id())));
    outbox.close().unwrap();
    Outbox::open(&dir, &StoreConfig::default()).unwrap().close().unwrap();
}

#[test]
fn created_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    Outbox::open(&dir, &StoreConfig::default()).unwrap().close().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}
