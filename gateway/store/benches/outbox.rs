//! Outbox throughput and ack latency against the disk's own fdatasync rate, measured in the
//! same run and the same directory. `cargo bench -p gw-store` (set `GW_BENCH_DIR` to measure
//! another disk). Prints a table; see docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gw_model::{AppId, Channel, DeviceId, Telemetry, Timestamp};
use gw_store::{ByteSize, Outbox, StoreConfig};

const PAYLOAD: usize = 100;
const RAW_SECS: u64 = 2;
const RUN_SECS: u64 = 3;

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Append 100 bytes + fdatasync in a loop: the physical limit of a durable ack.
fn raw_fdatasync(dir: &Path) -> (f64, f64, f64) {
    let path = dir.join("raw-sync.bin");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let record = [0x5au8; PAYLOAD];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(RAW_SECS) {
        let t = Instant::now();
        file.write_all(&record).unwrap();
        file.sync_data().unwrap();
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort_unstable();
    std::fs::remove_file(&path).unwrap();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn telemetry(device: usize) -> Telemetry {
    Telemetry {
        app: AppId::new("bench").unwrap(),
        device: DeviceId::new(format!("sensor{device}")).unwrap(),
        channel: Channel::new("temp").unwrap(),
        suffix: None,
        content_type: None,
        data_schema: None,
        received_at: Timestamp::from_millis(1_700_000_000_000),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
        command_wait: None,
    }
}

struct Row {
    producers: usize,
    rate: f64,
    mb_s: f64,
    p50: f64,
    p99: f64,
    per_commit: f64,
    syncs_s: f64,
}

fn outbox_run(dir: &Path, producers: usize) -> Row {
    let config = StoreConfig { max_bytes: ByteSize::new(4 << 30), ..StoreConfig::default() };
    let outbox = Outbox::open(dir, &config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(RUN_SECS);
    let start = Instant::now();
    let mut lat: Vec<u32> = rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let t = telemetry(p % 64);
                    let mut lat = Vec::with_capacity(4096);
                    while Instant::now() < deadline {
                        let began = Instant::now();
                        outbox.append(&t).await.unwrap();
                        lat.push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let stats = outbox.stats();
    outbox.close().unwrap();
    lat.sort_unstable();
    Row {
        producers,
        rate: lat.len() as f64 / elapsed,
        mb_s: stats.bytes_written() as f64 / elapsed / 1e6,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        per_commit: stats.records_per_commit(),
        syncs_s: stats.syncs() as f64 / elapsed,
    }
}

fn main() {
    let base = std::env::var_os("GW_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let (sync_rate, sync_p50, sync_p99) = raw_fdatasync(tmp.path());
    println!("disk: {} (append {PAYLOAD} B + fdatasync, {RAW_SECS} s)", tmp.path().display());
    println!("raw fdatasync: {sync_rate:.0}/s, p50 {sync_p50:.2} ms, p99 {sync_p99:.2} ms");
    println!();
    println!(
        "| producers | records/s | MB/s written | ack p50 ms | ack p99 ms | records/commit | outbox syncs/s | limit (N / sync p50) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for producers in [1, 32, 256, 1024] {
        let dir = tmp.path().join(format!("outbox-{producers}"));
        let row = outbox_run(&dir, producers);
        let limit = row.producers as f64 / (sync_p50 / 1000.0);
        println!(
            "| {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {:.2} |",
            row.producers,
            row.rate,
            row.mb_s,
            row.p50,
            row.p99,
            row.per_commit,
            row.syncs_s,
            limit,
            row.rate / limit
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let (after_rate, after_p50, after_p99) = raw_fdatasync(tmp.path());
    println!();
    println!(
        "raw fdatasync again after the runs: {after_rate:.0}/s, p50 {after_p50:.2} ms, p99 {after_p99:.2} ms"
    );
}
