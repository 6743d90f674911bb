//! Property test: random appends, verdicts and reopens against a simple model. An appended
//! (durable) record is never lost until acked, an acked record never returns after a clean
//! reopen, and a device's records are never handed out out of order.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use common::*;
use gw_store::{Outbox, OutboxReader, Seq, StoreConfig, SyncPolicy};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    Next(u8),
    Ack(usize),
    Nack(usize),
    Park(usize),
    UnparkAll,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(Op::Append),
        3 => (1u8..8).prop_map(Op::Next),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
        1 => any::<usize>().prop_map(Op::Park),
        1 => Just(Op::UnparkAll),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// Appended, not acked: seq -> (device, n).
    live: BTreeMap<u64, (String, u64)>,
    /// Handed out and unresolved, in hand-out order.
    in_flight: Vec<(u64, String)>,
    parked: HashSet<String>,
    next_n: u64,
}

impl Model {
    fn busy(&self, device: &str) -> bool {
        self.in_flight.iter().any(|(_, d)| d == device)
    }

    fn deliverable(&self) -> bool {
        self.live.iter().any(|(seq, (d, _))| {
            !self.parked.contains(d)
                && !self.busy(d)
                && !self.in_flight.iter().any(|(s, _)| s == seq)
        })
    }

    /// The device's live records not in flight, oldest first.
    fn waiting(&self, device: &str) -> Vec<u64> {
        self.live
            .iter()
            .filter(|(s, (d, _))| d == device && !self.in_flight.iter().any(|(f, _)| f == *s))
            .map(|(s, _)| *s)
            .collect()
    }
}

async fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = outbox_dir(&tmp);
    let config = StoreConfig { sync: SyncPolicy::Interval, ..StoreConfig::default() };
    let mut outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader: OutboxReader = outbox.reader();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append(d) => {
                let device = format!("d{d}");
                let n = m.next_n;
                m.next_n += 1;
                let seq = outbox.append(&telemetry(&device, n)).await.unwrap();
                m.live.insert(seq.get(), (device, n));
            }
            Op::Next(max) => {
                if !m.deliverable() {
                    continue;
                }
                let batch = reader.next(usize::from(max)).await.unwrap();
                assert!(!batch.is_empty() && batch.len() <= usize::from(max));
                let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
                for (seq, t) in &batch {
                    let (device, n) =
                        m.live.get(&seq.get()).expect("handed out an acked or unknown record");
                    assert_eq!(*n, n_of(t));
                    assert!(!m.parked.contains(device), "parked device {device} served");
                    per_device.entry(device.clone()).or_default().push(seq.get());
                }
                for (device, seqs) in per_device {
                    assert!(!m.busy(&device), "{device} got a second batch in flight");
                    let waiting = m.waiting(&device);
                    assert_eq!(seqs, waiting[..seqs.len()], "{device} out of order");
                }
                m.in_flight.extend(batch.iter().map(|(s, t)| (s.get(), t.device.to_string())));
            }
            Op::Ack(i) | Op::Nack(i) | Op::Park(i) if !m.in_flight.is_empty() => {
                let (seq, device) = m.in_flight.remove(i % m.in_flight.len());
                match op {
                    Op::Ack(_) => {
                        reader.ack(Seq::new(seq));
                        m.live.remove(&seq);
                    }
                    Op::Nack(_) => reader.nack(Seq::new(seq)),
                    _ => {
                        reader.park(Seq::new(seq));
                        m.parked.insert(device);
                    }
                }
            }
            Op::Ack(_) | Op::Nack(_) | Op::Park(_) => {}
            Op::UnparkAll => {
                reader.unpark_all();
                m.parked.clear();
            }
            Op::Reopen => {
                drop(reader);
                outbox.close().unwrap();
                outbox = Outbox::open(&dir, &config).unwrap();
                reader = outbox.reader();
                // in-flight and parked state is not persisted: all of it is deliverable again
                m.in_flight.clear();
                m.parked.clear();
            }
        }
    }
    drop(reader);
    outbox.close().unwrap();

    // after a final reopen, exactly the unacked records come back, each device in order
    let outbox = Outbox::open(&dir, &config).unwrap();
    let mut reader = outbox.reader();
    let got = drain(&outbox, &mut reader).await;
    let got_seqs: BTreeMap<u64, u64> = got.iter().map(|(s, t)| (s.get(), n_of(t))).collect();
    let expected: BTreeMap<u64, u64> = m.live.iter().map(|(s, (_, n))| (*s, *n)).collect();
    assert_eq!(got_seqs, expected);
    let mut last: HashMap<String, u64> = HashMap::new();
    for (seq, t) in &got {
        if let Some(prev) = last.insert(t.device.to_string(), seq.get()) {
            assert!(prev < seq.get(), "device {} reordered", t.device);
        }
    }
    drop(reader);
    outbox.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn never_loses_or_reorders_against_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
