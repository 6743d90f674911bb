//! The durable command queue: push and take latency (each one write + fdatasync) beside the
//! disk's own fdatasync, and how long reopening a full queue takes. `cargo bench -p gw-store
//! --bench commands` (set `GW_BENCH_DIR` to measure another disk). Prints a table; see
//! docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gw_model::{AppId, Command, CommandName, DeviceId, Identity, Timestamp};
use gw_store::{CommandQueue, QueueLimits};

const PAYLOAD: usize = 100;
const OPS: usize = 500;
const FULL: usize = 10_000;

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn summary(mut lat: Vec<u32>, elapsed: Duration) -> String {
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    lat.sort_unstable();
    format!(
        "{rate:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    )
}

fn raw_fdatasync(dir: &Path) -> String {
    let path = dir.join("raw-sync.bin");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let record = [0x5au8; PAYLOAD];
    let mut lat = Vec::with_capacity(OPS);
    let start = Instant::now();
    for _ in 0..OPS {
        let t = Instant::now();
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let out = summary(lat, start.elapsed());
    std::fs::remove_file(&path).unwrap();
    out
}

fn command(device: usize, i: usize) -> Command {
    Command {
        app: AppId::new("bench").unwrap(),
        device: DeviceId::new(format!("sensor{device}")).unwrap(),
        name: CommandName::new(format!("set-{i}")).unwrap(),
        content_type: Some("application/json".into()),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
        created_at: Timestamp::from_millis(1_700_000_000_000),
        expires_at: Some(Timestamp::from_millis(1_800_000_000_000)),
    }
}

fn main() {
    let base = std::env::var_os("GW_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let limits = QueueLimits { max_per_device: FULL, max_total: FULL, max_bytes: 1 << 30 };
    println!(
        "command queue, {PAYLOAD}-byte payloads, {OPS} operations each, in {}",
        dir.path().display()
    );
    println!("  raw append + fdatasync   {}", raw_fdatasync(dir.path()));

    let q = CommandQueue::open(&dir.path().join("q"), limits).unwrap();
    let mut lat = Vec::with_capacity(OPS);
    let start = Instant::now();
    for i in 0..OPS {
        let t = Instant::now();
        q.push(command(i % 10, i), now).unwrap();
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    println!("  push (queued, durable)   {}", summary(lat, start.elapsed()));
    let mut lat = Vec::with_capacity(OPS);
    let start = Instant::now();
    for i in 0..OPS {
        let device = Identity::new(
            AppId::new("bench").unwrap(),
            DeviceId::new(format!("sensor{}", i % 10)).unwrap(),
        );
        let t = Instant::now();
        assert!(q.take(&device, now).unwrap().command.is_some());
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    println!("  take (removed, durable)  {}", summary(lat, start.elapsed()));
    drop(q);

    // a full queue: 10,000 commands over 100 devices, then reopened (replay)
    let full = dir.path().join("full");
    let q = CommandQueue::open(&full, limits).unwrap();
    let start = Instant::now();
    for i in 0..FULL {
        q.push(command(i % 100, i), now).unwrap();
    }
    let filled = start.elapsed();
    let log = q.stats().log_bytes;
    drop(q);
    let start = Instant::now();
    let q = CommandQueue::open(&full, limits).unwrap();
    let reopened = start.elapsed();
    assert_eq!(q.len(), FULL);
    println!(
        "  {FULL} commands queued in {:.1} s; log {} KiB; reopen (replay) {:.1} ms",
        filled.as_secs_f64(),
        log / 1024,
        reopened.as_secs_f64() * 1000.0
    );
}
