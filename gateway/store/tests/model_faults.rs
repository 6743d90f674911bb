//! Property test: the model test's appends, verdicts and reopens, with a full disk and short
//! writes injected at random into every write, fdatasync, segment creation and truncation of
//! the committer. Every record whose append returned `Ok` is delivered exactly as written
//! until acked (also across reopens), no refused record is ever delivered, no corruption is
//! ever counted, and once the faults clear the outbox takes records again, also after a
//! reopen.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use common::*;
use gw_store::{
    ByteSize, Fault, FaultPlan, FaultPoint, Outbox, OutboxReader, Seq, StoreConfig, StoreError,
    SyncPolicy,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    Next(u8),
    Ack(usize),
    Nack(usize),
    /// From now on, write call `k` fails (with this fault) if bit `k % 32` is set.
    Faults(u32, bool),
    Clear,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3).prop_map(Op::Append),
        3 => (1u8..16).prop_map(Op::Next),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
        2 => ((any::<u32>(), any::<u32>()).prop_map(|(a, b)| a & b), any::<bool>())
            .prop_map(|(bits, short)| Op::Faults(bits, short)),
        1 => Just(Op::Clear),
        1 => Just(Op::Reopen),
    ]
}

/// The faults in force, shared with the outbox's plan.
#[derive(Default)]
struct Injector {
    bits: u32,
    fault: Option<Fault>,
    calls: u32,
    /// A failed truncation is transient: the next one goes through.
    truncate_failed: bool,
}

fn plan(injector: &Arc<Mutex<Injector>>) -> FaultPlan {
    let injector = Arc::clone(injector);
    FaultPlan::new(move |point| {
        let mut s = injector.lock().unwrap();
        let fault = s.fault?;
        if !matches!(
            point,
            FaultPoint::Append
                | FaultPoint::Sync
                | FaultPoint::AckWrite
                | FaultPoint::Roll
                | FaultPoint::Truncate
        ) {
            return None;
        }
        let k = s.calls % 32;
        s.calls = s.calls.wrapping_add(1);
        if point == FaultPoint::Truncate && std::mem::take(&mut s.truncate_failed) {
            return None;
        }
        let fail = s.bits >> k & 1 == 1;
        if fail && point == FaultPoint::Truncate {
            s.truncate_failed = true;
        }
        fail.then_some(fault)
    })
}

#[derive(Default)]
struct Model {
    /// Accepted (append returned Ok), not acked: seq -> n.
    live: BTreeMap<u64, u64>,
    /// Handed out and unresolved.
    in_flight: Vec<u64>,
    refused: HashSet<u64>,
    acked: HashSet<u64>,
    next_n: u64,
}

fn check_stats(outbox: &Outbox) {
    let stats = outbox.stats();
    assert_eq!(stats.corrupt_skipped(), 0, "{stats:?}");
    assert_eq!(stats.segments_skipped(), 0, "{stats:?}");
}

async fn run(ops: Vec<Op>, sync: SyncPolicy, max_bytes: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config =
        StoreConfig { sync, max_bytes: ByteSize::new(max_bytes), ..StoreConfig::default() };
    let injector = Arc::new(Mutex::new(Injector::default()));
    let mut outbox = Outbox::open_with_faults(&dir, &config, plan(&injector)).unwrap();
    let mut reader: OutboxReader = outbox.reader();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append(d) => {
                let n = m.next_n;
                m.next_n += 1;
                let faulty = injector.lock().unwrap().fault.is_some();
                match outbox.append(&telemetry(&format!("d{d}"), n)).await {
                    Ok(seq) => {
                        m.live.insert(seq.get(), n);
                    }
                    Err(StoreError::QuotaExceeded { .. }) => {
                        m.refused.insert(n);
                    }
                    Err(StoreError::DiskFull) if faulty => {
                        m.refused.insert(n);
                    }
                    Err(e) => panic!("append {n} (faults on: {faulty}): {e}"),
                }
            }
            Op::Next(max) => {
                let waiting = m.live.keys().any(|s| !m.in_flight.contains(s));
                if !waiting || !m.in_flight.is_empty() {
                    continue; // a device with a batch in flight gets no second one
                }
                let batch = reader.next(usize::from(max)).await.unwrap();
                for (seq, t) in &batch {
                    let n = n_of(t);
                    assert!(!m.refused.contains(&n), "delivered refused record {n}");
                    assert!(!m.acked.contains(&seq.get()), "delivered acked seq {seq}");
                    assert_eq!(m.live.get(&seq.get()), Some(&n), "seq {seq} is not {n}");
                    assert_eq!(*t, telemetry(t.device.as_ref(), n), "changed on disk");
                    m.in_flight.push(seq.get());
                }
            }
            Op::Ack(i) | Op::Nack(i) if !m.in_flight.is_empty() => {
                let seq = m.in_flight.remove(i % m.in_flight.len());
                if matches!(op, Op::Ack(_)) {
                    reader.ack(Seq::new(seq));
                    m.live.remove(&seq);
                    m.acked.insert(seq);
                } else {
                    reader.nack(Seq::new(seq));
                }
            }
            Op::Ack(_) | Op::Nack(_) => {}
            Op::Faults(bits, short) => {
                let mut s = injector.lock().unwrap();
                s.bits = bits;
                s.fault = Some(if short { Fault::ShortWrite } else { Fault::NoSpace });
            }
            Op::Clear => injector.lock().unwrap().fault = None,
            Op::Reopen => {
                drop(reader);
                outbox.close().unwrap();
                outbox = Outbox::open_with_faults(&dir, &config, plan(&injector)).unwrap();
                reader = outbox.reader();
                m.in_flight.clear();
            }
        }
        check_stats(&outbox);
    }

    // the faults clear; after a reopen exactly the accepted, unacked records come back
    injector.lock().unwrap().fault = None;
    drop(reader);
    outbox.close().unwrap();
    let outbox = Outbox::open(&dir, &config).unwrap();
    check_stats(&outbox);
    let mut reader = outbox.reader();
    let got: BTreeMap<u64, u64> =
        drain(&outbox, &mut reader).await.iter().map(|(s, t)| (s.get(), n_of(t))).collect();
    assert_eq!(got, m.live, "every accepted record not acked, and nothing else");
    drop(reader);
    outbox.close().unwrap();

    // and it takes records again: a reopen frees what was acknowledged
    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader = outbox.reader();
    for n in 0..20 {
        outbox.append(&telemetry("after", 1_000_000 + n)).await.unwrap();
    }
    assert_eq!(ns(&drain(&outbox, &mut reader).await), (1_000_000..1_000_020).collect::<Vec<_>>());
    check_stats(&outbox);
    drop(reader);
    outbox.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn never_loses_or_delivers_refused_records_under_disk_faults(
        ops in proptest::collection::vec(op(), 1..80),
        interval in any::<bool>(),
        small in any::<bool>(),
    ) {
        let sync = if interval { SyncPolicy::Interval } else { SyncPolicy::Always };
        let max_bytes = if small { 64 * 1024 } else { 1 << 20 };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, sync, max_bytes));
    }
}
