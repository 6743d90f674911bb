//! Property tests of the session state machine: arbitrary sequences of packets, raw bytes
//! through the codec, completions, commands and clock ticks never panic it; a QoS 1 PUBLISH
//! is never acknowledged with success before its ingest resolved Ok; PUBACKs leave in packet
//! order; and nothing but a CONNACK is sent before the login succeeded.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use gw_driver_mqtt::{
    Action, Codec, Connect, Disconnect, DisconnectReason, Login, Packet, PubAck, PubAckReason,
    Publish, QoS, Session, SessionConfig, Subscribe, SubscribeFilter, Unsubscribe, Version,
};
use gw_model::{AppId, AuthOutcome, CommandName, IngestError, Timestamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Packet(Packet),
    Bytes(Vec<u8>),
    /// Complete the n-th outstanding ingest (modulo their number), Ok or quota exceeded.
    Complete(usize, bool),
    Auth(u8),
    Command,
    Tick(u64),
    Lost,
    TakenOver,
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn publish() -> impl Strategy<Value = Packet> {
    let topic = prop_oneof![
        Just("temperature".to_owned()),
        Just("t/sensor1".to_owned()),
        Just("t/other".to_owned()),
        Just("a/b/c".to_owned()),
        Just("bad topic".to_owned()),
        "[a-z/]{0,8}",
    ];
    let ct = proptest::option::of(prop_oneof![
        Just("application/json".to_owned()),
        Just("text/plain".to_owned())
    ]);
    let payload =
        prop_oneof![Just(b"{\"a\":1}".to_vec()), proptest::collection::vec(any::<u8>(), 0..8)];
    (topic, qos(), 1u16..6, ct, payload, proptest::option::weighted(0.05, 1u16..3)).prop_map(
        |(topic, qos, pkid, content_type, payload, topic_alias)| {
            let mut p = Publish::new(topic, qos, Bytes::from(payload));
            p.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
            p.content_type = content_type;
            p.topic_alias = topic_alias;
            Packet::Publish(p)
        },
    )
}

fn packet() -> impl Strategy<Value = Packet> {
    let filter = prop_oneof![
        Just("command/inbox/#".to_owned()),
        Just("command/inbox//#".to_owned()),
        Just("command/inbox/+/#".to_owned()),
        "[a-z/#+]{0,10}",
    ];
    prop_oneof![
        6 => publish(),
        1 => (1u16..10, filter.clone(), qos(), proptest::option::weighted(0.1, 1usize..5)).prop_map(
            |(pkid, path, qos, subscription_id)| Packet::Subscribe(Subscribe {
                pkid,
                filters: vec![SubscribeFilter { path, qos }],
                subscription_id,
            })
        ),
        1 => (1u16..10, filter).prop_map(|(pkid, f)| Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters: vec![f]
        })),
        1 => Just(Packet::PingReq),
        1 => (1u16..10).prop_map(|pkid| Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success })),
        1 => prop_oneof![
            Just(DisconnectReason::NormalDisconnection),
            Just(DisconnectReason::DisconnectWithWillMessage)
        ]
        .prop_map(|reason| Packet::Disconnect(Disconnect { reason })),
        1 => Just(Packet::PubRel(1)),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Connect(Connect::new(Version::V311, "again"))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => packet().prop_map(Op::Packet),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Bytes),
        6 => (any::<usize>(), proptest::bool::weighted(0.8)).prop_map(|(i, ok)| Op::Complete(i, ok)),
        1 => (0u8..3).prop_map(Op::Auth),
        1 => Just(Op::Command),
        1 => (0u64..20_000).prop_map(Op::Tick),
        1 => prop_oneof![Just(Op::Lost), Just(Op::TakenOver)],
    ]
}

fn connect(v: Version, clean: bool) -> Connect {
    let mut c = Connect::new(v, "cid");
    c.clean_session = clean;
    c.keep_alive = 5;
    c.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
    c
}

/// What the test knows of the session, to check what it does.
#[derive(Default)]
struct Model {
    /// Outstanding ingests: token → packet id of a QoS 1 publish (None for QoS 0 and wills).
    outstanding: Vec<(gw_driver_mqtt::IngestToken, Option<u16>)>,
    /// Successful ingests per packet id, not yet acknowledged.
    stored: HashMap<u16, usize>,
    /// QoS 1 publishes that entered the window, in packet order.
    expected_acks: Vec<u16>,
    acked: usize,
    logged_in: bool,
}

impl Model {
    fn check(&mut self, actions: &[Action]) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Send(Packet::PubAck(ack)) => {
                    prop_assert!(self.logged_in);
                    prop_assert_eq!(
                        Some(&ack.pkid),
                        self.expected_acks.get(self.acked),
                        "PUBACK out of order"
                    );
                    self.acked += 1;
                    if ack.reason == PubAckReason::Success {
                        let n = self.stored.entry(ack.pkid).or_default();
                        prop_assert!(*n > 0, "PUBACK {} before its ingest resolved Ok", ack.pkid);
                        *n -= 1;
                    }
                }
                Action::Send(Packet::ConnAck(_)) | Action::Close(_) => {}
                Action::Connected(_) => self.logged_in = true,
                Action::Send(other) => prop_assert!(self.logged_in, "{other:?} before login"),
                _ => {}
            }
        }
        Ok(())
    }
}

fn run(version: Version, clean: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = SessionConfig {
        default_app: AppId::new("gw").unwrap(),
        max_inflight: 3,
        max_packet_size: 256,
        connect_timeout: Duration::from_secs(10),
    };
    let codec = Codec::new(version, 256);
    let mut now = Instant::now();
    let mut s = Session::new(config, now, Timestamp::from_millis(0));
    let mut m = Model::default();
    let a = s.handle_packet(Packet::Connect(connect(version, clean)), now);
    m.check(&a)?;
    let led = CommandName::new("led").unwrap();
    for op in ops {
        let actions = match op {
            Op::Packet(p) => {
                let qos1 = match &p {
                    Packet::Publish(p) if p.qos == QoS::AtLeastOnce => Some(p.pkid),
                    _ => None,
                };
                let was_connected = s.identity().is_some();
                let a = s.handle_packet(p, now);
                if let Some(pkid) = qos1
                    && was_connected
                    && !a.iter().any(|x| matches!(x, Action::Close(_)))
                {
                    m.expected_acks.push(pkid);
                }
                for x in &a {
                    if let Action::Ingest { token, .. } = x {
                        m.outstanding.push((*token, qos1));
                    }
                }
                a
            }
            Op::Bytes(bytes) => {
                let mut buf = BytesMut::from(&bytes[..]);
                match codec.decode(&mut buf) {
                    Ok(Some(Packet::Publish(_))) | Ok(None) => Vec::new(),
                    Ok(Some(p)) => s.handle_packet(p, now),
                    Err(e) => s.bad_frame(&e, now),
                }
            }
            Op::Complete(i, ok) => {
                if m.outstanding.is_empty() {
                    Vec::new()
                } else {
                    let (token, pkid) = m.outstanding.remove(i % m.outstanding.len());
                    let result = if ok {
                        if let Some(p) = pkid {
                            *m.stored.entry(p).or_default() += 1;
                        }
                        Ok(())
                    } else {
                        Err(IngestError::QuotaExceeded("full".into()))
                    };
                    s.ingest_done(token, result, now)
                }
            }
            Op::Auth(k) => {
                let outcome = match k {
                    0 => AuthOutcome::Pass("sensor1@app".parse().unwrap()),
                    1 => AuthOutcome::Fail,
                    _ => AuthOutcome::RateLimited,
                };
                s.auth_done(outcome, now)
            }
            Op::Command => {
                if s.accepts_commands() {
                    s.command(&led, Bytes::from_static(b"on"), None)
                } else {
                    Vec::new()
                }
            }
            Op::Tick(ms) => {
                now += Duration::from_millis(ms);
                s.tick(now)
            }
            Op::Lost => s.connection_lost(now),
            Op::TakenOver => s.taken_over(now),
        };
        m.check(&actions)?;
        prop_assert!(s.inflight() <= 3);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_inputs_never_panic_and_never_ack_early(
        v5 in any::<bool>(),
        clean in proptest::bool::weighted(0.95),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let version = if v5 { Version::V5 } else { Version::V311 };
        run(version, clean, ops)?;
    }

    #[test]
    fn arbitrary_bytes_after_login_never_panic(
        v5 in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let version = if v5 { Version::V5 } else { Version::V311 };
        let codec = Codec::new(version, 256);
        let now = Instant::now();
        let config = SessionConfig {
            default_app: AppId::new("gw").unwrap(),
            max_inflight: 2,
            max_packet_size: 256,
            connect_timeout: Duration::from_secs(10),
        };
        let mut s = Session::new(config, now, Timestamp::from_millis(0));
        s.handle_packet(Packet::Connect(connect(version, true)), now);
        s.auth_done(AuthOutcome::Pass("sensor1@app".parse().unwrap()), now);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut tokens = Vec::new();
        while !s.is_closed() {
            let actions = match codec.decode(&mut buf) {
                Ok(Some(p)) => s.handle_packet(p, now),
                Ok(None) => break,
                Err(e) => s.bad_frame(&e, now),
            };
            for a in actions {
                if let Action::Ingest { token, .. } = a {
                    tokens.push(token);
                }
            }
            if !s.wants_read() {
                for t in tokens.drain(..) {
                    s.ingest_done(t, Ok(()), now);
                }
            }
        }
    }
}
