//! Real crashes: a child process appends in a loop, printing every seq the outbox reported
//! durable, and is killed with SIGKILL at a random moment; reopening must find every printed
//! record. The child is this test binary itself, running the ignored `crash_child` test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use common::*;
use gw_store::{Outbox, StoreConfig, SyncPolicy};
use rand::Rng;

const DIR_ENV: &str = "GW_STORE_CRASH_CHILD_DIR";
const SYNC_ENV: &str = "GW_STORE_CRASH_CHILD_SYNC";

fn config(sync: SyncPolicy) -> StoreConfig {
    StoreConfig { sync, sync_interval: Duration::from_millis(200), ..StoreConfig::default() }
}

#[test]
#[ignore = "the child process of kill9_never_loses_acknowledged_records"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let sync = match std::env::var(SYNC_ENV).as_deref() {
        Ok("interval") => SyncPolicy::Interval,
        _ => SyncPolicy::Always,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async move {
        let outbox = Outbox::open(dir.as_ref(), &config(sync)).unwrap();
        // n values continue across rounds so that every record is unique
        let base = outbox.stats().records_queued() * 1000 + rand::rng().random_range(0..1000);
        let counter = Arc::new(AtomicU64::new(base * 1000));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let outbox = outbox.clone();
            let counter = Arc::clone(&counter);
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let seq = outbox.append(&telemetry(&format!("d{}", n % 5), n)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "durable {seq} {n}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        // the writers run until the parent kills this process
        for t in tasks {
            let _: () = t.await.unwrap();
        }
    });
}

#[test]
fn kill9_never_loses_acknowledged_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let exe = std::env::current_exe().unwrap();
    let mut promised: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    for round in 0..10 {
        let sync = if round % 3 == 2 { "interval" } else { "always" };
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, &dir)
            .env(SYNC_ENV, sync)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                if parts.next() != Some("durable") {
                    continue;
                }
                // a line cut by the kill fails to parse and is not a promise
                let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
                let n = parts.next().and_then(|s| s.parse::<u64>().ok());
                if let (Some(seq), Some(n)) = (seq, n) {
                    let _ = tx.send((seq, n));
                }
            }
        });
        // let it get going, then kill it at a random moment
        let first = rx.recv_timeout(Duration::from_secs(20)).expect("child printed nothing");
        let mut this_round = vec![first];
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(20..400)));
        child.kill().unwrap();
        child.wait().unwrap();
        lines.join().unwrap();
        this_round.extend(rx.try_iter());
        for (seq, n) in &this_round {
            assert!(promised.insert(*seq, *n).is_none(), "seq {seq} reported twice");
        }

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let outbox = Outbox::open(&dir, &StoreConfig::default()).unwrap();
            let total = outbox.stats().records_queued() as usize;
            let mut reader = outbox.reader();
            // with max >= 5 x everything, each of the 5 devices hands out all of its records at once
            let all = if total == 0 { Vec::new() } else { reader.next(total * 5).await.unwrap() };
            let found: HashMap<u64, u64> = all.iter().map(|(s, t)| (s.get(), n_of(t))).collect();
            for (seq, n) in &promised {
                assert_eq!(
                    found.get(seq),
                    Some(n),
                    "round {round} ({sync}): durable seq {seq} lost"
                );
            }
            drop(reader);
            outbox.close().unwrap();
        });
        eprintln!(
            "round {round} ({sync}): {} promised so far, {} this round",
            promised.len(),
            this_round.len()
        );
    }
    assert!(promised.len() >= 10);
    assert!(started.elapsed() < Duration::from_secs(120));
}
