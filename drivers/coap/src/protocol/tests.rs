//! The core's rules, synchronously: time is a value the tests advance.

use super::*;
use crate::wire::{AUTH_OPTION, decode, option_values};
use bytes::Bytes;
use coap_lite::CoapOption;
use gw_model::{CommandName, DeviceId, Timestamp};
use proptest::prelude::*;

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn config() -> CoreConfig {
    CoreConfig::new(&CoapConfig::default(), AppId::new("app").unwrap())
}

fn core_with(tweak: impl FnOnce(&mut CoreConfig)) -> (Core, Arc<Counters>) {
    let mut c = config();
    tweak(&mut c);
    let counters = Arc::new(Counters::default());
    (Core::new(c, counters.clone(), 42), counters)
}

fn core() -> (Core, Arc<Counters>) {
    core_with(|_| {})
}

const AUTH: &str = "Basic c2Vuc29yMUBhcHA6cHc"; // sensor1@app:pw, unpadded

struct Req {
    kind: MessageType,
    mid: u16,
    method: RequestType,
    path: Vec<&'static str>,
    query: Vec<&'static str>,
    auth: Option<&'static str>,
    block1: Option<Block>,
    block2: Option<Block>,
    payload: Vec<u8>,
}

fn post(mid: u16) -> Req {
    Req {
        kind: MessageType::Confirmable,
        mid,
        method: RequestType::Post,
        path: vec!["v1", "temp"],
        query: vec![],
        auth: Some(AUTH),
        block1: None,
        block2: None,
        payload: b"21.5".to_vec(),
    }
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(self.kind);
        p.header.code = MessageClass::Request(self.method);
        p.header.message_id = self.mid;
        p.set_token(vec![0xaa, (self.mid & 0xff) as u8]);
        for s in &self.path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for q in &self.query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(a) = self.auth {
            p.add_option(CoapOption::Unknown(AUTH_OPTION), a.as_bytes().to_vec());
        }
        if let Some(b) = self.block1 {
            p.add_option(CoapOption::Block1, b.encode());
        }
        if let Some(b) = self.block2 {
            p.add_option(CoapOption::Block2, b.encode());
        }
        p.payload.clone_from(&self.payload);
        p.to_bytes_unlimited().unwrap()
    }
}

fn feed(core: &mut Core, bytes: &[u8], now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    core.on_datagram(peer(), bytes, now, &mut out);
    out
}

fn sent(out: &[Output]) -> Vec<Packet> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { datagram, .. } => Some(decode(datagram).unwrap()),
            Output::Process(_) => None,
        })
        .collect()
}

fn jobs(out: &[Output]) -> Vec<Job> {
    out.iter()
        .filter_map(|o| match o {
            Output::Process(j) => Some((**j).clone()),
            Output::Send { .. } => None,
        })
        .collect()
}

/// Feeds a block request; the first of several blocks is a credential check, answered here
/// as passed. What the core then sends, and the jobs it hands out.
fn feed_block(core: &mut Core, bytes: &[u8], now: Instant) -> (Vec<Packet>, Vec<Job>) {
    let out = feed(core, bytes, now);
    let mut sent_now = sent(&out);
    let mut handed = Vec::new();
    for job in jobs(&out) {
        if job.kind == JobKind::Authenticate {
            assert!(sent_now.is_empty(), "nothing is answered before the check");
            sent_now = answer(core, job.id, Answer::Authenticated, now);
        } else {
            handed.push(job);
        }
    }
    (sent_now, handed)
}

fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn answer(core: &mut Core, job: JobId, a: Answer, now: Instant) -> Vec<Packet> {
    let mut out = Vec::new();
    core.on_answer(job, a, now, &mut out);
    sent(&out)
}

fn command(name: &str, payload: &[u8]) -> Command {
    Command {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new("sensor1").unwrap(),
        name: CommandName::new(name).unwrap(),
        content_type: Some("application/json".into()),
        payload: Bytes::copy_from_slice(payload),
        created_at: Timestamp::from_millis(0),
        expires_at: None,
    }
}

#[test]
fn con_post_is_answered_2_04_piggybacked_only_after_the_answer() {
    let (mut c, counters) = core();
    let now = Instant::now();
    let out = feed(&mut c, &post(1).bytes(), now);
    assert!(sent(&out).is_empty(), "nothing is acknowledged before the outbox commit");
    let job = jobs(&out).pop().unwrap();
    assert_eq!(job.publish.channel, "temp");
    assert_eq!(job.publish.auth.identity().to_string(), "sensor1@app");
    assert_eq!(&job.publish.payload[..], b"21.5");
    let replies = answer(&mut c, job.id, Answer::Stored, now);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header.get_type(), MessageType::Acknowledgement);
    assert_eq!(replies[0].header.message_id, 1);
    assert_eq!(replies[0].get_token(), &[0xaa, 1]);
    assert_eq!(code(&replies[0]), ResponseType::Changed);
    assert_eq!(counters.stored.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn duplicate_con_is_never_processed_twice_and_gets_the_same_answer() {
    let (mut c, _) = core();
    let now = Instant::now();
    let out = feed(&mut c, &post(7).bytes(), now);
    let job = jobs(&out).pop().unwrap();
    // retransmission while the job runs: empty ACK, no second job
    let dup = feed(&mut c, &post(7).bytes(), now + Duration::from_millis(10));
    assert!(jobs(&dup).is_empty());
    let acks = sent(&dup);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].header.code, MessageClass::Empty);
    assert_eq!(acks[0].header.get_type(), MessageType::Acknowledgement);
    // the answer now goes out as a separate CON response
    let replies = answer(&mut c, job.id, Answer::Stored, now);
    assert_eq!(replies[0].header.get_type(), MessageType::Confirmable);
    assert_ne!(replies[0].header.message_id, 7);
    assert_eq!(replies[0].get_token(), &[0xaa, 7]);
    // later duplicates: no job, the empty ACK again
    let dup = feed(&mut c, &post(7).bytes(), now + Duration::from_secs(5));
    assert!(jobs(&dup).is_empty());
    assert_eq!(sent(&dup)[0].header.code, MessageClass::Empty);
}

#[test]
fn duplicate_after_piggybacked_answer_gets_identical_bytes() {
    let (mut c, counters) = core();
    let now = Instant::now();
    let job = jobs(&feed(&mut c, &post(9).bytes(), now)).pop().unwrap();
    let mut out = Vec::new();
    c.on_answer(job.id, Answer::Stored, now, &mut out);
    let Output::Send { datagram: first, .. } = &out[0] else { panic!() };
    let dup = feed(&mut c, &post(9).bytes(), now + Duration::from_secs(100));
    let Output::Send { datagram: again, .. } = &dup[0] else { panic!() };
    assert_eq!(first, again);
    assert_eq!(counters.duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
    // after EXCHANGE_LIFETIME the id is new again
    let mut out = Vec::new();
    c.on_tick(now + Duration::from_secs(248), &mut out);
    let later = feed(&mut c, &post(9).bytes(), now + Duration::from_secs(249));
    assert_eq!(jobs(&later).len(), 1);
}

#[test]
fn slow_answer_gets_empty_ack_then_retransmitted_separate_response() {
    let (mut c, counters) = core();
    let t0 = Instant::now();
    let job = jobs(&feed(&mut c, &post(3).bytes(), t0)).pop().unwrap();
    assert!(c.next_deadline().unwrap() <= t0 + Duration::from_secs(1));
    let mut out = Vec::new();
    c.on_tick(t0 + Duration::from_secs(1), &mut out);
    let acks = sent(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].header.get_type(), acks[0].header.message_id),
        (MessageType::Acknowledgement, 3)
    );
    let replies =
        answer(&mut c, job.id, Answer::Command(command("set", b"{}")), t0 + Duration::from_secs(2));
    let resp = &replies[0];
    assert_eq!(resp.header.get_type(), MessageType::Confirmable);
    assert_eq!(code(resp), ResponseType::Content);
    assert_eq!(option_values(resp, COMMAND_OPTION).next().unwrap(), b"set");
    // retransmitted with doubling timeouts until max_retransmit, then given up
    let mut times = Vec::new();
    let mut now = t0 + Duration::from_secs(2);
    for _ in 0..100 {
        let Some(d) = c.next_deadline() else { break };
        if d > now + Duration::from_secs(200) {
            break;
        }
        now = d.max(now);
        let mut out = Vec::new();
        c.on_tick(now, &mut out);
        for p in sent(&out) {
            assert_eq!(p.header.message_id, resp.header.message_id);
            times.push(now);
        }
        if counters.gave_up.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            break;
        }
    }
    assert_eq!(times.len(), 4, "max_retransmit = 4");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|w| w[1] >= w[0] * 2 - Duration::from_millis(1)), "{gaps:?}");
    assert_eq!(counters.gave_up.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn ack_from_sensor_stops_retransmission() {
    let (mut c, counters) = core();
    let t0 = Instant::now();
    let job = jobs(&feed(&mut c, &post(3).bytes(), t0)).pop().unwrap();
    c.on_tick(t0 + Duration::from_secs(1), &mut Vec::new());
    let resp = answer(&mut c, job.id, Answer::Stored, t0 + Duration::from_secs(1)).remove(0);
    let ack = Reply::empty(MessageType::Acknowledgement, resp.header.message_id).encode();
    feed(&mut c, &ack, t0 + Duration::from_secs(2));
    let mut out = Vec::new();
    c.on_tick(t0 + Duration::from_secs(60), &mut out);
    assert!(sent(&out).is_empty());
    assert_eq!(counters.retransmissions.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn non_request_is_answered_non() {
    let (mut c, _) = core();
    let now = Instant::now();
    let req = Req { kind: MessageType::NonConfirmable, ..post(11) };
    let job = jobs(&feed(&mut c, &req.bytes(), now)).pop().unwrap();
    let replies = answer(&mut c, job.id, Answer::Stored, now);
    assert_eq!(replies[0].header.get_type(), MessageType::NonConfirmable);
    assert_eq!(code(&replies[0]), ResponseType::Changed);
    assert!(
        jobs(&feed(&mut c, &req.bytes(), now)).is_empty(),
        "a NON duplicate is not stored twice"
    );
}

#[test]
fn refusals_are_answered_at_once_with_a_diagnostic() {
    let (mut c, _) = core();
    let now = Instant::now();
    let cases: Vec<(Req, ResponseType)> = vec![
        (Req { auth: None, ..post(20) }, ResponseType::Unauthorized),
        (Req { auth: Some("Basic !!!"), ..post(21) }, ResponseType::Unauthorized),
        (Req { path: vec!["v2", "x"], ..post(22) }, ResponseType::NotFound),
        (Req { method: RequestType::Get, ..post(23) }, ResponseType::MethodNotAllowed),
        (Req { query: vec!["nope=1"], ..post(24) }, ResponseType::BadRequest),
    ];
    for (req, want) in cases {
        let out = feed(&mut c, &req.bytes(), now);
        assert!(jobs(&out).is_empty());
        let replies = sent(&out);
        assert_eq!(code(&replies[0]), want);
        assert!(!replies[0].payload.is_empty(), "diagnostic payload for {want:?}");
    }
    // an unknown critical option: 4.02
    let mut p = decode(&post(25).bytes()).unwrap();
    p.add_option(CoapOption::Unknown(9999), b"x".to_vec());
    let out = feed(&mut c, &p.to_bytes_unlimited().unwrap(), now);
    assert_eq!(code(&sent(&out)[0]), ResponseType::BadOption);
    // the job's refusal: 4.03, 5.03 with Max-Age
    let job = jobs(&feed(&mut c, &post(26).bytes(), now)).pop().unwrap();
    let r = answer(
        &mut c,
        job.id,
        Answer::Refused(Refusal::new(ResponseType::Forbidden, "authentication failed")),
        now,
    );
    assert_eq!(code(&r[0]), ResponseType::Forbidden);
    assert_eq!(r[0].payload, b"authentication failed");
}

#[test]
fn garbage_is_counted_and_a_malformed_con_gets_a_reset() {
    let (mut c, counters) = core();
    let now = Instant::now();
    assert!(feed(&mut c, &[1, 2], now).is_empty());
    let out = feed(&mut c, &[0x40, 0x02, 0x12, 0x34, 0xf0], now);
    let r = sent(&out);
    assert_eq!((r[0].header.get_type(), r[0].header.message_id), (MessageType::Reset, 0x1234));
    // a CON ping gets a Reset too
    let out = feed(&mut c, &[0x40, 0x00, 0x00, 0x05], now);
    assert_eq!(sent(&out)[0].header.get_type(), MessageType::Reset);
    assert_eq!(counters.malformed.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn block1_upload_is_reassembled_and_processed_once() {
    let (mut c, counters) = core();
    let now = Instant::now();
    let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut job = None;
    for (i, chunk) in body.chunks(1024).enumerate() {
        let num = i as u32;
        let more = (i + 1) * 1024 < body.len();
        let req = Req {
            block1: Some(Block { num, more, szx: 6 }),
            payload: chunk.to_vec(),
            ..post(100 + i as u16)
        };
        let (r, handed) = feed_block(&mut c, &req.bytes(), now);
        if more {
            assert_eq!(code(&r[0]), ResponseType::Continue);
            assert_eq!(
                Block::parse(option_values(&r[0], BLOCK1).next().unwrap()).unwrap(),
                Block { num, more: true, szx: 6 }
            );
            assert!(counters.block_bytes.load(std::sync::atomic::Ordering::Relaxed) >= 1024);
        } else {
            job = handed.into_iter().next();
        }
    }
    let job = job.unwrap();
    assert_eq!(&job.publish.payload[..], &body[..]);
    let r = answer(&mut c, job.id, Answer::Stored, now);
    assert_eq!(code(&r[0]), ResponseType::Changed);
    assert_eq!(
        Block::parse(option_values(&r[0], BLOCK1).next().unwrap()).unwrap(),
        Block { num: 3, more: false, szx: 6 }
    );
}

#[test]
fn block1_above_the_limit_is_4_13_with_size1() {
    let (mut c, _) = core_with(|c| c.max_message_size = 2048);
    let now = Instant::now();
    for num in 0..2u32 {
        let req = Req {
            block1: Some(Block { num, more: true, szx: 6 }),
            payload: vec![0; 1024],
            ..post(200 + num as u16)
        };
        assert_eq!(code(&feed_block(&mut c, &req.bytes(), now).0[0]), ResponseType::Continue);
    }
    let req = Req {
        block1: Some(Block { num: 2, more: true, szx: 6 }),
        payload: vec![0; 1024],
        ..post(202)
    };
    let r = sent(&feed(&mut c, &req.bytes(), now)).remove(0);
    assert_eq!(code(&r), ResponseType::RequestEntityTooLarge);
    assert_eq!(option_values(&r, SIZE1).next().unwrap(), &wire::encode_uint(2048));
}

#[test]
fn large_command_is_sent_block2_and_continuations_served() {
    let (mut c, _) = core();
    let now = Instant::now();
    let payload: Vec<u8> = (0..2500u32).map(|i| (i % 256) as u8).collect();
    let job =
        jobs(&feed(&mut c, &Req { query: vec!["ct=5"], ..post(300) }.bytes(), now)).pop().unwrap();
    let first = answer(&mut c, job.id, Answer::Command(command("fw", &payload)), now).remove(0);
    assert_eq!(code(&first), ResponseType::Content);
    let b = Block::parse(option_values(&first, BLOCK2).next().unwrap()).unwrap();
    assert_eq!(b, Block { num: 0, more: true, szx: 6 });
    let mut got = first.payload.clone();
    for num in 1..3u32 {
        let req = Req {
            query: vec!["ct=5"],
            block2: Some(Block { num, more: false, szx: 6 }),
            payload: vec![],
            ..post(300 + num as u16)
        };
        let out = feed(&mut c, &req.bytes(), now);
        assert!(jobs(&out).is_empty(), "a continuation is not a new publish");
        let r = sent(&out).remove(0);
        assert_eq!(option_values(&r, COMMAND_OPTION).next().unwrap(), b"fw");
        let b = Block::parse(option_values(&r, BLOCK2).next().unwrap()).unwrap();
        assert_eq!(b.more, num < 2);
        got.extend_from_slice(&r.payload);
    }
    assert_eq!(got, payload);
}

#[test]
fn rate_limit_answers_4_29_with_max_age_and_keeps_no_state() {
    let (mut c, counters) = core_with(|c| {
        c.rate_limit = 1.0;
        c.rate_burst = 2.0;
    });
    let now = Instant::now();
    assert_eq!(jobs(&feed(&mut c, &post(1).bytes(), now)).len(), 1);
    assert_eq!(jobs(&feed(&mut c, &post(2).bytes(), now)).len(), 1);
    let r = sent(&feed(&mut c, &post(3).bytes(), now)).remove(0);
    assert_eq!(code(&r), ResponseType::TooManyRequests);
    assert!(option_values(&r, MAX_AGE).next().is_some());
    assert_eq!(counters.rate_limited.load(std::sync::atomic::Ordering::Relaxed), 1);
    // a second later a token is back: the same message id is now taken
    assert_eq!(jobs(&feed(&mut c, &post(3).bytes(), now + Duration::from_secs(1))).len(), 1);
}

#[test]
fn in_flight_limits_answer_5_03() {
    let (mut c, counters) = core_with(|c| c.max_in_flight_per_peer = 2);
    let now = Instant::now();
    for mid in 0..2 {
        assert_eq!(jobs(&feed(&mut c, &post(mid).bytes(), now)).len(), 1);
    }
    let r = sent(&feed(&mut c, &post(2).bytes(), now)).remove(0);
    assert_eq!(code(&r), ResponseType::ServiceUnavailable);
    assert_eq!(counters.busy.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn exchange_table_is_bounded_per_peer_and_in_total() {
    let (mut c, counters) = core_with(|c| {
        c.max_exchanges = 50;
        c.max_exchanges_per_peer = 10;
        c.rate_burst = 1e9;
    });
    let now = Instant::now();
    for mid in 0..100u16 {
        let job = jobs(&feed(&mut c, &post(mid).bytes(), now)).pop().unwrap();
        answer(&mut c, job.id, Answer::Stored, now);
    }
    assert!(counters.exchanges.load(std::sync::atomic::Ordering::Relaxed) <= 10);
    for port in 0..20u16 {
        let p: SocketAddr = format!("127.0.0.2:{}", 1000 + port).parse().unwrap();
        for mid in 0..10u16 {
            let mut out = Vec::new();
            c.on_datagram(p, &post(mid).bytes(), now, &mut out);
            let job = jobs(&out).pop().unwrap();
            c.on_answer(job.id, Answer::Stored, now, &mut Vec::new());
        }
    }
    assert!(counters.exchanges.load(std::sync::atomic::Ordering::Relaxed) <= 50);
    // idle peers are forgotten once their exchanges expire
    c.on_tick(now + Duration::from_secs(300), &mut Vec::new());
    assert_eq!(counters.exchanges.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(counters.peers.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// What a sensor may do to the core, for the property tests.
#[derive(Debug, Clone)]
enum Step {
    Datagram(u8, Vec<u8>),
    Post(u8, u16, bool),
    Answer(usize),
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(p, d)| Step::Datagram(p, d)),
        (0u8..4, 0u16..8, any::<bool>()).prop_map(|(p, m, con)| Step::Post(p, m, con)),
        (0usize..8).prop_map(Step::Answer),
        (0u16..5000).prop_map(Step::Tick),
    ]
}

proptest! {
    /// Arbitrary datagrams, requests, answers and time never panic; a (peer, message id) is
    /// never handed out as a job twice within the exchange lifetime; every job is answered
    /// exactly when its answer arrives (nothing acknowledges a POST before its answer).
    #[test]
    fn no_panic_no_double_job_no_early_ack(steps in proptest::collection::vec(step(), 1..80)) {
        let (mut c, _) = core_with(|c| { c.rate_burst = 1e9; c.piggyback_timeout = Duration::from_secs(3600); });
        let t0 = Instant::now();
        let mut now = t0;
        let mut open: Vec<Job> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut answered = std::collections::HashSet::new();
        let mut keys = std::collections::HashMap::new();
        for s in steps {
            let mut out = Vec::new();
            match s {
                Step::Datagram(p, d) => {
                    let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(p)));
                    c.on_datagram(peer, &d, now, &mut out);
                }
                Step::Post(p, mid, con) => {
                    let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(p)));
                    let kind = if con { MessageType::Confirmable } else { MessageType::NonConfirmable };
                    c.on_datagram(peer, &Req { kind, ..post(mid) }.bytes(), now, &mut out);
                    // before its answer a POST is never answered 2.04 (only empty ACKs)
                    for p in sent(&out) {
                        if p.header.code == MessageClass::Response(ResponseType::Changed) {
                            prop_assert!(answered.contains(&(peer, mid)), "2.04 before the answer");
                        }
                    }
                    for j in jobs(&out) {
                        // the whole run is shorter than the exchange lifetime
                        prop_assert!(seen.insert((peer, mid)), "{peer} {mid} handed out twice");
                        keys.insert(j.id, (peer, mid));
                    }
                }
                Step::Answer(i) => {
                    if !open.is_empty() {
                        let job = open.remove(i % open.len());
                        if let Some(k) = keys.get(&job.id) {
                            answered.insert(*k);
                        }
                        c.on_answer(job.id, Answer::Stored, now, &mut out);
                        prop_assert!(sent(&out).iter().any(|p| p.header.code == MessageClass::Response(ResponseType::Changed)));
                    }
                }
                Step::Tick(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    c.on_tick(now, &mut out);
                }
            }
            open.extend(jobs(&out));
        }
        prop_assert!(now - t0 < Duration::from_secs(247));
        let keys: std::collections::HashSet<_> = open.iter().map(|j| j.id).collect();
        prop_assert_eq!(keys.len(), open.len());
    }

    /// An upload split into blocks of any size arrives whole.
    #[test]
    fn block1_reassembles_any_split(len in 1usize..5000, szx in 0u8..7) {
        let (mut c, _) = core_with(|c| c.rate_burst = 1e9);
        let now = Instant::now();
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let size = 1usize << (szx + 4);
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        let mut got = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let req = Req { block1: Some(Block { num: i as u32, more, szx }), payload: chunk.to_vec(), ..post(i as u16) };
            let (r, handed) = feed_block(&mut c, &req.bytes(), now);
            if more {
                prop_assert_eq!(code(&r[0]), ResponseType::Continue);
            } else {
                got = handed.into_iter().next();
            }
        }
        let got = got.unwrap();
        prop_assert_eq!(&got.publish.payload[..], &body[..]);
    }
}

#[test]
fn duplicate_mid_property_holds_for_jobs() {
    // the property test above checks ids; here the rule itself: same (peer, mid) → one job
    let (mut c, _) = core();
    let now = Instant::now();
    let mut total = 0;
    for _ in 0..5 {
        total += jobs(&feed(&mut c, &post(77).bytes(), now)).len();
    }
    assert_eq!(total, 1);
}

fn gauge(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn strangers_without_credentials_leave_no_peer_and_no_exchange() {
    let (mut c, counters) = core_with(|c| c.max_peers = 100);
    let now = Instant::now();
    // a flood from 20,000 (spoofable) source ports, no option 4209
    for i in 0..20_000u32 {
        let stranger =
            SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1024 + (i % 60_000) as u16));
        let mut out = Vec::new();
        c.on_datagram(stranger, &Req { auth: None, ..post(i as u16) }.bytes(), now, &mut out);
        assert_eq!(code(&sent(&out)[0]), ResponseType::Unauthorized);
        assert!(jobs(&out).is_empty());
    }
    assert_eq!(gauge(&counters.peers), 0);
    assert_eq!(gauge(&counters.exchanges), 0);
    // a sensor that comes now is served at once
    let job = jobs(&feed(&mut c, &post(1).bytes(), now)).pop().expect("a job for the sensor");
    let r = answer(&mut c, job.id, Answer::Stored, now);
    assert_eq!(code(&r[0]), ResponseType::Changed);
    // the sensor's answer is remembered: its retransmission gets the same datagram, no job
    let out = feed(&mut c, &post(1).bytes(), now);
    assert!(jobs(&out).is_empty());
    assert_eq!(code(&sent(&out)[0]), ResponseType::Changed);
    assert_eq!(gauge(&counters.peers), 1);
}

#[test]
fn a_failed_login_is_answered_and_forgotten() {
    let (mut c, counters) = core();
    let now = Instant::now();
    let job = jobs(&feed(&mut c, &post(5).bytes(), now)).pop().unwrap();
    assert_eq!(gauge(&counters.peers), 1, "a peer is known while its job runs");
    let refused = Refusal::new(ResponseType::Forbidden, "authentication failed");
    let r = answer(&mut c, job.id, Answer::Refused(refused), now);
    assert_eq!(code(&r[0]), ResponseType::Forbidden);
    assert_eq!(gauge(&counters.peers), 0);
    assert_eq!(gauge(&counters.exchanges), 0);
    // a retransmission is checked again (a new job), not served from memory
    assert_eq!(jobs(&feed(&mut c, &post(5).bytes(), now)).len(), 1);
}

#[test]
fn a_block_wise_upload_starts_only_after_its_first_blocks_credentials_pass() {
    let (mut c, counters) = core();
    let now = Instant::now();
    let first = |mid, auth| Req {
        block1: Some(Block { num: 0, more: true, szx: 6 }),
        payload: vec![7; 1024],
        auth,
        ..post(mid)
    };
    // no credentials on block 0: 4.01, nothing kept
    let r = sent(&feed(&mut c, &first(10, None).bytes(), now));
    assert_eq!(code(&r[0]), ResponseType::Unauthorized);
    assert_eq!(gauge(&counters.block_bytes), 0);
    // credentials that fail: 4.03, nothing kept
    let out = feed(&mut c, &first(11, Some(AUTH)).bytes(), now);
    assert!(sent(&out).is_empty(), "block 0 waits for its check");
    let job = jobs(&out).pop().unwrap();
    assert_eq!(job.kind, JobKind::Authenticate);
    assert!(job.publish.payload.is_empty());
    assert_eq!(gauge(&counters.block_bytes), 0, "nothing is kept before the check");
    let refused = Refusal::new(ResponseType::Forbidden, "authentication failed");
    let r = answer(&mut c, job.id, Answer::Refused(refused), now);
    assert_eq!(code(&r[0]), ResponseType::Forbidden);
    assert_eq!(gauge(&counters.block_bytes), 0);
    assert_eq!(gauge(&counters.peers), 0);
    // a later block with no upload in progress: 4.08
    let next = Req { block1: Some(Block { num: 1, more: false, szx: 6 }), ..post(12) };
    let r = sent(&feed(&mut c, &next.bytes(), now));
    assert_eq!(code(&r[0]), ResponseType::RequestEntityIncomplete);
    assert_eq!(gauge(&counters.block_bytes), 0);
    // credentials that pass: block 0 is kept and answered 2.31
    let (r, _) = feed_block(&mut c, &first(13, Some(AUTH)).bytes(), now);
    assert_eq!(code(&r[0]), ResponseType::Continue);
    assert!(gauge(&counters.block_bytes) >= 1024);
}
