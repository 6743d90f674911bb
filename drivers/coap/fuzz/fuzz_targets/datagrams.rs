//! Datagrams from several peers into the protocol core, interleaved with job answers (stored,
//! a command with a large payload, a refusal) and clock ticks. The core must not panic, must
//! never hand out one (peer, message id) as two jobs, and its tables must stay within their
//! configured bounds whatever arrives.
#![no_main]

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use gw_driver_coap::{
    Answer, CoapConfig, Core, CoreConfig, Output, Refusal, Stats, stats::Counters,
};
use gw_model::{AppId, ByteSize, Command, CommandName, DeviceId, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(app) = AppId::new("app") else { return };
    let config = CoapConfig {
        max_message_size: ByteSize::new(4096),
        block_memory_per_peer: ByteSize::new(8192),
        block_memory_total: ByteSize::new(16384),
        max_exchanges: 64,
        max_exchanges_per_peer: 16,
        max_in_flight: 8,
        max_in_flight_per_peer: 4,
        max_peers: 6,
        block_size: 64,
        ..CoapConfig::default()
    };
    let counters = Arc::new(Counters::default());
    let stats = Stats::new(counters.clone());
    let mut core = Core::new(CoreConfig::new(&config, app.clone()), counters, 7);
    let mut now = Instant::now();
    let mut jobs = Vec::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut steps = 0;
    while let Some((&op, tail)) = rest.split_first() {
        steps += 1;
        if steps > 256 {
            break;
        }
        rest = tail;
        match op % 4 {
            0 | 1 => {
                // a datagram: peer from the op byte, length from the next byte
                let Some((&len, tail)) = rest.split_first() else { break };
                let len = usize::from(len).min(tail.len());
                let (datagram, tail) = tail.split_at(len);
                rest = tail;
                let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(op >> 5)));
                core.on_datagram(peer, datagram, now, &mut out);
            }
            2 => {
                if !jobs.is_empty() {
                    let job: gw_driver_coap::Job = jobs.remove(usize::from(op >> 2) % jobs.len());
                    let answer = match op >> 6 {
                        0 => Answer::Stored,
                        1 => {
                            let (Ok(device), Ok(name)) =
                                (DeviceId::new("sensor1"), CommandName::new("fw"))
                            else {
                                return;
                            };
                            Answer::Command(Command {
                                app: app.clone(),
                                device,
                                name,
                                content_type: Some("application/cbor".into()),
                                payload: Bytes::from(vec![0x5a; 300]),
                                created_at: Timestamp::from_millis(0),
                                expires_at: None,
                            })
                        }
                        _ => Answer::Refused(Refusal::bad_request("no")),
                    };
                    core.on_answer(job.id, answer, now, &mut out);
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(op) * 40);
                core.on_tick(now, &mut out);
            }
        }
        for o in out.drain(..) {
            if let Output::Process(job) = o {
                jobs.push(*job);
            }
        }
        let s = stats.snapshot();
        assert!(s.in_flight <= 8, "in flight {}", s.in_flight);
        assert!(s.exchanges <= 64 + 8, "exchanges {}", s.exchanges);
        assert!(s.peers <= 6, "peers {}", s.peers);
        // uploads are bounded by the total; kept Block2 bodies (commands already taken) add
        // at most one per in-flight answer
        assert!(s.block_bytes <= 16384 + 8 * 600, "block bytes {}", s.block_bytes);
    }
    let ids: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), jobs.len());
});
