//! Synchronous tests of the session rules: no sockets, time as an argument.

use super::*;
use crate::packet::{Login, SubscribeFilter, Unsubscribe};
use gw_model::PresentedCredential;

fn config() -> SessionConfig {
    SessionConfig {
        default_app: AppId::new("gw-app").unwrap(),
        max_inflight: 4,
        max_packet_size: 1024,
        connect_timeout: Duration::from_secs(10),
    }
}

fn identity() -> Identity {
    "sensor1@app".parse().unwrap()
}

fn connect_packet(v: Version) -> Connect {
    let mut c = Connect::new(v, "cid");
    c.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
    c.keep_alive = 10;
    c
}

/// A session connected as sensor1@app at `t0`.
fn connected(v: Version, t0: Instant) -> Session {
    let mut s = Session::new(config(), t0, Timestamp::from_millis(1_000));
    let a = s.handle_packet(Packet::Connect(connect_packet(v)), t0);
    assert!(matches!(&a[..], [Action::Authenticate(r)] if r.identity() == identity()));
    let a = s.auth_done(AuthOutcome::Pass(identity()), t0);
    assert!(matches!(&a[0], Action::Send(Packet::ConnAck(c)) if c.code == ConnectCode::Success));
    assert_eq!(a[1], Action::Connected(identity()));
    s
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Packet {
    let mut p = Publish::new(topic, qos, Bytes::from_static(b"{\"t\":1}"));
    p.pkid = pkid;
    Packet::Publish(p)
}

fn token_of(actions: &[Action]) -> IngestToken {
    match actions {
        [Action::Ingest { token, .. }] => *token,
        other => panic!("expected one ingest, got {other:?}"),
    }
}

fn puback(pkid: u16, reason: PubAckReason) -> Action {
    Action::Send(Packet::PubAck(PubAck { pkid, reason }))
}

#[test]
fn refuses_wrong_credentials_with_the_version_codes() {
    let t0 = Instant::now();
    for (outcome, code) in [
        (AuthOutcome::Fail, ConnectCode::BadUserNamePassword),
        (AuthOutcome::RateLimited, ConnectCode::QuotaExceeded),
        (AuthOutcome::Forbidden, ConnectCode::NotAuthorized),
    ] {
        let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
        s.handle_packet(Packet::Connect(connect_packet(Version::V5)), t0);
        assert!(!s.wants_read(), "no reading while the login is checked");
        let a = s.auth_done(outcome, t0);
        assert_eq!(
            a,
            vec![
                Action::Send(Packet::ConnAck(ConnAck::new(code))),
                Action::Close(CloseReason::LoginRefused(code))
            ]
        );
        assert!(s.is_closed());
    }
}

#[test]
fn refuses_persistent_sessions_and_missing_login_as_drogue() {
    let t0 = Instant::now();
    let mut c = connect_packet(Version::V311);
    c.clean_session = false;
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    let a = s.handle_packet(Packet::Connect(c), t0);
    assert_eq!(a[0], Action::Send(Packet::ConnAck(ConnAck::new(ConnectCode::BadUserNamePassword))));
    let mut c = connect_packet(Version::V311);
    c.login = None;
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    let a = s.handle_packet(Packet::Connect(c), t0);
    assert!(matches!(a[1], Action::Close(CloseReason::LoginRefused(_))));
}

#[test]
fn bare_device_name_uses_the_gateway_application() {
    let t0 = Instant::now();
    let mut c = connect_packet(Version::V311);
    c.login = Some(Login { username: "sensor9".into(), password: "pw".into() });
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    let a = s.handle_packet(Packet::Connect(c), t0);
    assert!(
        matches!(&a[..], [Action::Authenticate(r)] if r.identity().to_string() == "sensor9@gw-app")
    );
}

#[test]
fn client_certificate_logs_in_only_without_username_and_password() {
    let t0 = Instant::now();
    let cert = ClientCertificate {
        subject: "CN=sensor1, O=Acme".into(),
        common_name: Some("sensor1".into()),
    };
    // no login: the certificate names the device, in the gateway's application
    let mut c = connect_packet(Version::V5);
    c.login = None;
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    s.set_client_certificate(cert.clone());
    let a = s.handle_packet(Packet::Connect(c), t0);
    match &a[..] {
        [Action::Authenticate(r)] => {
            assert_eq!(r.app, "gw-app");
            assert_eq!(
                r.credential,
                PresentedCredential::ClientCertificate {
                    subject: "CN=sensor1, O=Acme".into(),
                    common_name: Some("sensor1".into()),
                }
            );
        }
        other => panic!("expected a certificate login, got {other:?}"),
    }
    // with username and password, those log in, whatever the certificate says
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    s.set_client_certificate(cert);
    let a = s.handle_packet(Packet::Connect(connect_packet(Version::V311)), t0);
    assert!(matches!(&a[..], [Action::Authenticate(r)]
        if r.identity() == identity() && matches!(r.credential, PresentedCredential::Password(_))));
}

#[test]
fn connect_timeout_and_first_packet_not_connect() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
    assert!(s.tick(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(
        s.tick(t0 + Duration::from_secs(10)),
        vec![Action::Close(CloseReason::ConnectTimeout)]
    );
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    assert_eq!(
        s.handle_packet(Packet::PingReq, t0),
        vec![Action::Close(CloseReason::ProtocolError)]
    );
}

#[test]
fn puback_only_after_ingest_and_in_packet_order() {
    let t0 = Instant::now();
    let mut s = connected(Version::V311, t0);
    let a = s.handle_packet(publish("temperature", QoS::AtLeastOnce, 1), t0);
    let Action::Ingest { token: t1, telemetry } = &a[0] else { panic!("{a:?}") };
    assert_eq!(telemetry.channel, "temperature");
    assert_eq!(telemetry.device, "sensor1");
    assert_eq!(telemetry.received_at, Timestamp::from_millis(1_000));
    let t1 = *t1;
    let t2 = token_of(&s.handle_packet(publish("humidity", QoS::AtLeastOnce, 2), t0));
    assert_eq!(s.inflight(), 2);
    // the second completes first: nothing may be acknowledged yet
    assert!(s.ingest_done(t2, Ok(()), t0).is_empty());
    assert_eq!(
        s.ingest_done(t1, Ok(()), t0),
        vec![puback(1, PubAckReason::Success), puback(2, PubAckReason::Success)]
    );
    assert_eq!(s.inflight(), 0);
}

#[test]
fn window_is_bounded_by_max_inflight() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let tokens: Vec<_> =
        (1..=4).map(|i| token_of(&s.handle_packet(publish("t", QoS::AtMostOnce, i), t0))).collect();
    assert!(!s.wants_read());
    // QoS 0 completions send nothing but free the window
    assert!(s.ingest_done(tokens[0], Ok(()), t0).is_empty());
    assert!(s.wants_read());
}

#[test]
fn v5_refusals_are_puback_reasons() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let t = token_of(&s.handle_packet(publish("temperature", QoS::AtLeastOnce, 1), t0));
    assert_eq!(
        s.ingest_done(t, Err(IngestError::QuotaExceeded("full".into())), t0),
        vec![puback(1, PubAckReason::QuotaExceeded)]
    );
    assert_eq!(
        s.handle_packet(publish("temperature/other-device", QoS::AtLeastOnce, 2), t0),
        vec![puback(2, PubAckReason::NotAuthorized)]
    );
    assert_eq!(
        s.handle_packet(publish("bad channel!", QoS::AtLeastOnce, 3), t0),
        vec![puback(3, PubAckReason::TopicNameInvalid)]
    );
    assert_eq!(
        s.handle_packet(publish("a/b/c", QoS::AtLeastOnce, 4), t0),
        vec![puback(4, PubAckReason::TopicNameInvalid)]
    );
    let mut bad_json = Publish::new("t", QoS::AtLeastOnce, Bytes::from_static(b"{nope"));
    bad_json.pkid = 5;
    bad_json.content_type = Some("application/json".into());
    assert_eq!(
        s.handle_packet(Packet::Publish(bad_json), t0),
        vec![puback(5, PubAckReason::PayloadFormatInvalid)]
    );
    // publishing as itself with the device segment is fine
    token_of(&s.handle_packet(publish("temperature/sensor1", QoS::AtLeastOnce, 6), t0));
    // a QoS 0 refusal is dropped without an answer
    assert!(s.handle_packet(publish("x/other", QoS::AtMostOnce, 0), t0).is_empty());
    assert!(!s.is_closed());
}

#[test]
fn a_refusal_waits_for_earlier_publishes() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let t1 = token_of(&s.handle_packet(publish("temperature", QoS::AtLeastOnce, 1), t0));
    assert!(s.handle_packet(publish("a/b/c", QoS::AtLeastOnce, 2), t0).is_empty());
    assert_eq!(
        s.ingest_done(t1, Ok(()), t0),
        vec![puback(1, PubAckReason::Success), puback(2, PubAckReason::TopicNameInvalid)]
    );
}

#[test]
fn v311_closes_on_a_refused_qos1_publish_and_keeps_earlier_acks() {
    let t0 = Instant::now();
    let mut s = connected(Version::V311, t0);
    let t1 = token_of(&s.handle_packet(publish("temperature", QoS::AtLeastOnce, 1), t0));
    let t2 = token_of(&s.handle_packet(publish("temperature", QoS::AtLeastOnce, 2), t0));
    assert!(s.ingest_done(t2, Err(IngestError::QuotaExceeded("full".into())), t0).is_empty());
    let a = s.ingest_done(t1, Ok(()), t0);
    assert_eq!(a[0], puback(1, PubAckReason::Success));
    assert_eq!(a.last(), Some(&Action::Close(CloseReason::PublishRefused)));
    assert!(a.iter().all(|x| *x != puback(2, PubAckReason::Success)));
    // a foreign device topic closes too
    let mut s = connected(Version::V311, t0);
    let a = s.handle_packet(publish("temperature/other", QoS::AtMostOnce, 0), t0);
    assert_eq!(a.last(), Some(&Action::Close(CloseReason::PublishRefused)));
    // a QoS 0 message the store refused is dropped
    let mut s = connected(Version::V311, t0);
    let t = token_of(&s.handle_packet(publish("temperature", QoS::AtMostOnce, 0), t0));
    assert!(s.ingest_done(t, Err(IngestError::QuotaExceeded("full".into())), t0).is_empty());
    assert!(!s.is_closed());
}

#[test]
fn qos2_is_refused_per_version() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let a = s.handle_packet(publish("t", QoS::ExactlyOnce, 1), t0);
    assert_eq!(
        a[0],
        Action::Send(Packet::Disconnect(Disconnect { reason: DisconnectReason::QoSNotSupported }))
    );
    assert_eq!(a.last(), Some(&Action::Close(CloseReason::QoSNotSupported)));
    let mut s = connected(Version::V311, t0);
    let a = s.handle_packet(publish("t", QoS::ExactlyOnce, 1), t0);
    assert_eq!(a, vec![Action::Close(CloseReason::QoSNotSupported)]);
}

#[test]
fn content_type_is_kept() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let mut p = Publish::new("t", QoS::AtMostOnce, Bytes::from_static(b"[1, 2]"));
    p.content_type = Some("application/json".into());
    let a = s.handle_packet(Packet::Publish(p), t0);
    let [Action::Ingest { telemetry, .. }] = &a[..] else { panic!("{a:?}") };
    assert_eq!(telemetry.content_type.as_deref(), Some("application/json"));
}

#[test]
fn without_a_declared_content_type_json_is_recognised_as_drogue_does() {
    let t0 = Instant::now();
    for (payload, expected) in [
        (&b"{\"t\": 21}"[..], "application/json"),
        (&b"21.5"[..], "application/json"),
        (&b"\x01\x02 not json"[..], "application/octet-stream"),
    ] {
        let mut s = connected(Version::V311, t0);
        let p = Publish::new("t", QoS::AtMostOnce, Bytes::copy_from_slice(payload));
        let a = s.handle_packet(Packet::Publish(p), t0);
        let [Action::Ingest { telemetry, .. }] = &a[..] else { panic!("{a:?}") };
        assert_eq!(telemetry.content_type.as_deref(), Some(expected), "{payload:?}");
    }
}

#[test]
fn keep_alive_expires_after_one_and_a_half_times() {
    let t0 = Instant::now();
    let mut c = connect_packet(Version::V5);
    c.will = Some(Will {
        topic: "lwt".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        content_type: None,
    });
    let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
    s.handle_packet(Packet::Connect(c), t0);
    s.auth_done(AuthOutcome::Pass(identity()), t0);
    let t5 = t0 + Duration::from_secs(5);
    assert_eq!(s.handle_packet(Packet::PingReq, t5), vec![Action::Send(Packet::PingResp)]);
    assert_eq!(s.next_deadline(), Some(t5 + Duration::from_secs(15)));
    assert!(s.tick(t5 + Duration::from_millis(14_999)).is_empty());
    let a = s.tick(t5 + Duration::from_secs(15));
    assert_eq!(
        a[0],
        Action::Send(Packet::Disconnect(Disconnect { reason: DisconnectReason::KeepAliveTimeout }))
    );
    let Action::PublishWill(will) = &a[1] else { panic!("{a:?}") };
    assert_eq!((will.channel.as_str(), &will.payload[..]), ("lwt", &b"gone"[..]));
    assert_eq!(will.received_at, Timestamp::from_millis(20_000));
    assert_eq!(a[2], Action::Close(CloseReason::KeepAliveTimeout));
}

#[test]
fn keep_alive_is_paused_while_the_window_is_full() {
    let t0 = Instant::now();
    let mut s = connected(Version::V311, t0);
    let tokens: Vec<_> = (1..=4)
        .map(|i| token_of(&s.handle_packet(publish("t", QoS::AtLeastOnce, i), t0)))
        .collect();
    // a stalled outbox for a minute is not the client's fault
    assert_eq!(s.next_deadline(), None);
    let t60 = t0 + Duration::from_secs(60);
    assert!(s.tick(t60).is_empty());
    s.ingest_done(tokens[0], Ok(()), t60);
    assert_eq!(s.next_deadline(), Some(t60 + Duration::from_secs(15)));
}

#[test]
fn will_only_on_unclean_end_and_only_to_a_valid_channel() {
    let t0 = Instant::now();
    let with_will = |topic: &str| {
        let mut c = connect_packet(Version::V5);
        c.will = Some(Will {
            topic: topic.into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            content_type: None,
        });
        let mut s = Session::new(config(), t0, Timestamp::from_millis(0));
        s.handle_packet(Packet::Connect(c), t0);
        s.auth_done(AuthOutcome::Pass(identity()), t0);
        s
    };
    let mut s = with_will("lwt");
    assert_eq!(
        s.handle_packet(Packet::Disconnect(Disconnect::normal()), t0),
        vec![Action::Close(CloseReason::ClientDisconnect)]
    );
    let mut s = with_will("lwt");
    let a = s.handle_packet(
        Packet::Disconnect(Disconnect { reason: DisconnectReason::DisconnectWithWillMessage }),
        t0,
    );
    assert!(matches!(a[0], Action::PublishWill(_)));
    let mut s = with_will("lwt");
    let a = s.taken_over(t0);
    assert!(matches!(a[1], Action::PublishWill(_)), "{a:?}");
    let mut s = with_will("not/a channel");
    assert_eq!(s.connection_lost(t0), vec![Action::Close(CloseReason::Lost)]);
}

#[test]
fn subscriptions_and_command_delivery() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let name = CommandName::new("set-led").unwrap();
    assert!(!s.accepts_commands());
    let filters = [
        ("command/inbox/#", QoS::AtMostOnce),
        ("command/inbox//#", QoS::AtLeastOnce),
        ("command/inbox/+/#", QoS::ExactlyOnce),
        ("command/inbox/other/#", QoS::AtMostOnce),
        ("#", QoS::AtMostOnce),
    ];
    let sub = Subscribe {
        pkid: 7,
        filters: filters
            .iter()
            .map(|(p, q)| SubscribeFilter { path: (*p).into(), qos: *q })
            .collect(),
        subscription_id: None,
    };
    let a = s.handle_packet(Packet::Subscribe(sub), t0);
    let expected = SubAck {
        pkid: 7,
        codes: vec![
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Failure,
            SubAckCode::Failure,
        ],
    };
    assert_eq!(a, vec![Action::Send(Packet::SubAck(expected))]);
    assert!(s.accepts_commands());
    let (receipt, mut has_it) = tokio::sync::oneshot::channel();
    let a = s.command(&name, Bytes::from_static(b"on"), Some(receipt));
    let [Action::Send(Packet::Publish(p))] = &a[..] else { panic!("{a:?}") };
    assert_eq!(
        (p.topic.as_str(), p.qos, &p.payload[..]),
        ("command/inbox//set-led", QoS::AtLeastOnce, &b"on"[..])
    );
    let first = p.pkid;
    // four unacknowledged QoS 1 commands fill the window
    for _ in 0..3 {
        s.command(&name, Bytes::new(), None);
    }
    assert!(!s.accepts_commands());
    assert!(has_it.try_recv().is_err(), "no receipt before the sensor's PUBACK");
    s.handle_packet(Packet::PubAck(PubAck { pkid: first, reason: PubAckReason::Success }), t0);
    assert_eq!(has_it.try_recv(), Ok(()), "the receipt comes with the PUBACK");
    assert!(s.accepts_commands());
    // QoS 0 once only the QoS 0 subscription is left
    let unsub = Unsubscribe {
        pkid: 8,
        filters: vec!["command/inbox//#".into(), "command/inbox/+/#".into()],
    };
    s.handle_packet(Packet::Unsubscribe(unsub), t0);
    let (receipt, mut has_it) = tokio::sync::oneshot::channel();
    let a = s.command(&name, Bytes::new(), Some(receipt));
    assert!(matches!(&a[..], [Action::Send(Packet::Publish(p))] if p.qos == QoS::AtMostOnce));
    assert_eq!(has_it.try_recv(), Ok(()), "QoS 0: handed to the socket");
}

#[test]
fn a_command_unacknowledged_when_the_session_ends_loses_its_receipt() {
    let t0 = Instant::now();
    let mut s = connected(Version::V311, t0);
    let sub = Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter { path: "command/inbox//#".into(), qos: QoS::AtLeastOnce }],
        subscription_id: None,
    };
    s.handle_packet(Packet::Subscribe(sub), t0);
    let (receipt, mut has_it) = tokio::sync::oneshot::channel();
    let a = s.command(&CommandName::new("c").unwrap(), Bytes::new(), Some(receipt));
    assert!(matches!(&a[..], [Action::Send(Packet::Publish(_))]), "{a:?}");
    s.connection_lost(t0);
    drop(s);
    assert_eq!(has_it.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Closed));
}

#[test]
fn v5_subscription_identifiers_are_refused() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let sub = Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter { path: "command/inbox/#".into(), qos: QoS::AtMostOnce }],
        subscription_id: Some(3),
    };
    let a = s.handle_packet(Packet::Subscribe(sub), t0);
    assert_eq!(
        a,
        vec![Action::Send(Packet::SubAck(SubAck { pkid: 1, codes: vec![SubAckCode::Failure] }))]
    );
    assert!(!s.is_subscribed());
}

#[test]
fn bad_frames_and_protocol_errors_close() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let a = s.bad_frame(&MqttError::TooLarge { size: 5000, max: 1024 }, t0);
    assert_eq!(
        a,
        vec![
            Action::Send(Packet::Disconnect(Disconnect {
                reason: DisconnectReason::PacketTooLarge
            })),
            Action::Close(CloseReason::BadFrame)
        ]
    );
    let mut s = connected(Version::V311, t0);
    let a = s.handle_packet(Packet::Connect(connect_packet(Version::V311)), t0);
    assert_eq!(a, vec![Action::Close(CloseReason::ProtocolError)]);
    // after close, nothing more happens
    assert!(s.handle_packet(Packet::PingReq, t0).is_empty());
    assert!(s.tick(t0 + Duration::from_secs(100)).is_empty());
}

#[test]
fn json_check_matches_serde() {
    assert!(is_json(b" {\"a\": [1, 2.5, null]} "));
    assert!(!is_json(b"{\"a\": }"));
    assert!(!is_json(b""));
}

#[test]
fn revoked_session_is_told_not_authorized_and_closed() {
    let t0 = Instant::now();
    let mut s = connected(Version::V5, t0);
    let a = s.revoked(t0);
    assert!(
        a.contains(&Action::Send(Packet::Disconnect(Disconnect {
            reason: DisconnectReason::NotAuthorized
        }))),
        "{a:?}"
    );
    assert_eq!(a.last(), Some(&Action::Close(CloseReason::Revoked)));
}
