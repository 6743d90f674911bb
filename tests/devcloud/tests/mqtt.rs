//! The device MQTT endpoint against independent clients (`mosquitto_pub`/`mosquitto_sub`)
//! and a raw client on gw-driver-mqtt's codec for what those cannot drive (keep-alive, last
//! will, session slot, reason codes).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::Output,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use common::{ADMIN, APP, Cloud, TIMEOUT, seed};
use gw_devcloud::{CloudEvent, events::TYPE_EVENT};
use gw_driver_mqtt::{
    Codec, ConnAck, Connect, ConnectCode, Disconnect, Login, Packet, PubAck, PubAckReason, Publish,
    QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, Version, Will, read_packet, write_packet,
};
use tokio::{net::TcpStream, process::Command};

/// Whether the mosquitto clients are installed; without them a test is skipped, unless
/// `CI` is set, where that is a failure.
fn have_mosquitto() -> bool {
    let found = std::process::Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "mosquitto clients are missing (CI is set)");
        eprintln!("SKIP: mosquitto_pub/mosquitto_sub not installed");
    }
    found
}

/// Runs a mosquitto client against the cloud's MQTT endpoint, bounded by `TIMEOUT`.
async fn mosquitto(c: &Cloud, bin: &str, args: &[&str]) -> Output {
    let addr = c.cloud.mqtt_addr();
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(bin)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto client did not finish in time")
    .unwrap();
    eprintln!(
        "{bin} {args:?} -> {:?}\n  stdout: {}\n  stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn telemetry(events: &[CloudEvent]) -> Vec<&CloudEvent> {
    events.iter().filter(|e| e.kind == TYPE_EVENT).collect()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn mosquitto_pub_publishes_as_itself_in_both_versions() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    for v in ["mqttv311", "mqttv5"] {
        let user = format!("sensor1@{APP}");
        let args =
            ["-V", v, "-u", &user, "-P", "s1-pass", "-t", "temp", "-q", "1", "-m", r#"{"t":1}"#];
        let out = mosquitto(&c, "mosquitto_pub", &args).await;
        assert!(out.status.success(), "{v}: {}", text(&out));
    }
    // PUBACK comes only after the event is logged: no waiting needed here
    let events = c.cloud.events();
    let got = telemetry(&events);
    assert_eq!(got.len(), 2, "{events:#?}");
    for e in got {
        assert_eq!(e.subject, "temp");
        assert_eq!(e.device.as_deref(), Some("sensor1"));
        assert_eq!(e.sender.as_deref(), Some("sensor1"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.data, Some(serde_json::json!({"t": 1})));
    }
}

#[tokio::test]
async fn v5_content_type_becomes_datacontenttype() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    let user = format!("sensor1@{APP}");
    let args = [
        "-V",
        "mqttv5",
        "-u",
        &user,
        "-P",
        "s1-pass",
        "-t",
        "log",
        "-q",
        "1",
        "-m",
        "hello",
        "-D",
        "publish",
        "content-type",
        "text/plain",
    ];
    assert!(mosquitto(&c, "mosquitto_pub", &args).await.status.success());
    let events = c.cloud.events();
    let e = telemetry(&events)[0];
    assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(e.payload(), b"hello");
}

#[tokio::test]
async fn gateway_publishes_on_behalf_of_a_proxied_sensor() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    let user = format!("gw1@{APP}");
    for v in ["mqttv311", "mqttv5"] {
        let args =
            ["-V", v, "-u", &user, "-P", "gw-secret", "-t", "temp/sensor1", "-q", "1", "-m", "{}"];
        assert!(mosquitto(&c, "mosquitto_pub", &args).await.status.success());
    }
    let events = c.cloud.events();
    let got = telemetry(&events);
    assert_eq!(got.len(), 2);
    for e in got {
        assert_eq!((e.device.as_deref(), e.sender.as_deref()), (Some("sensor1"), Some("gw1")));
        assert_eq!(e.subject, "temp");
        assert_eq!(e.source, format!("drogue://{APP}/sensor1"));
    }
}

#[tokio::test]
async fn publishing_for_an_unlisted_sensor_is_refused() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    let user = format!("gw1@{APP}");
    let args = [
        "-V",
        "mqttv5",
        "-u",
        &user,
        "-P",
        "gw-secret",
        "-t",
        "temp/sensor2",
        "-q",
        "1",
        "-m",
        "{}",
    ];
    let out = mosquitto(&c, "mosquitto_pub", &args).await;
    // mosquitto_pub 2.0 reports a failed PUBACK as a warning and still exits 0
    assert!(text(&out).contains("Publish 1 failed: Not authorized"), "{}", text(&out));
    // 3.1.1: the connection is closed instead of a PUBACK
    let args = [
        "-V",
        "mqttv311",
        "-u",
        &user,
        "-P",
        "gw-secret",
        "-t",
        "temp/sensor2",
        "-q",
        "1",
        "-m",
        "{}",
    ];
    let out = mosquitto(&c, "mosquitto_pub", &args).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(telemetry(&c.cloud.events()).is_empty());
}

#[tokio::test]
async fn refused_connects_are_bad_user_name_or_password() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    let user = format!("sensor1@{APP}");
    for v in ["mqttv311", "mqttv5"] {
        let args = ["-V", v, "-u", &user, "-P", "wrong", "-t", "temp", "-q", "1", "-m", "{}"];
        let out = mosquitto(&c, "mosquitto_pub", &args).await;
        assert!(!out.status.success());
        let t = text(&out).to_lowercase();
        assert!(t.contains("bad user name or password") || t.contains("not authorised"), "{t}");
        // clean session false
        let args = [
            "-V", v, "-c", "-i", "keep-me", "-u", &user, "-P", "s1-pass", "-t", "temp", "-q", "1",
            "-m", "{}",
        ];
        let out = mosquitto(&c, "mosquitto_pub", &args).await;
        assert!(!out.status.success());
        let t = text(&out).to_lowercase();
        assert!(t.contains("bad user name or password") || t.contains("not authorised"), "{t}");
    }
    assert!(c.cloud.events().is_empty(), "no session, no event");
}

#[tokio::test]
async fn username_with_client_id_credentials() {
    if !have_mosquitto() {
        return;
    }
    let seed = seed().device(
        serde_json::from_value(serde_json::json!({
            "metadata": {"application": APP, "name": "dev-u"},
            "spec": {"authentication": {"credentials": [{"user": {"username": "alice", "password": "pw"}}]}}
        }))
        .unwrap(),
    );
    let c = Cloud::start(seed).await;
    let id = format!("dev-u@{APP}");
    let args = [
        "-V", "mqttv311", "-i", &id, "-u", "alice", "-P", "pw", "-t", "temp", "-q", "1", "-m", "1",
    ];
    assert!(mosquitto(&c, "mosquitto_pub", &args).await.status.success());
    assert_eq!(telemetry(&c.cloud.events())[0].device.as_deref(), Some("dev-u"));
}

/// Runs `mosquitto_sub -C 1` as `gw1`, sends a command once it subscribed, and returns what
/// it printed (`topic payload`).
async fn receive_one_command(c: &Cloud, version: &str, filter: &str, device: &str) -> String {
    let addr = c.cloud.mqtt_addr();
    let user = format!("gw1@{APP}");
    // the previous subscriber's session must be gone, or its count hides the new one
    let deadline = Instant::now() + TIMEOUT;
    while c.cloud.command_subscribers() > 0 {
        assert!(Instant::now() < deadline, "an earlier subscriber did not go away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let child = Command::new("mosquitto_sub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-V", version, "-u", &user, "-P", "gw-secret", "-t", filter, "-C", "1", "-v"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    c.until_command_waiters(1).await;
    let payload = Bytes::from_static(br#"{"t":21}"#);
    c.cloud.send_command(APP, device, "set-temp", None, payload).await.unwrap();
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn mosquitto_sub_receives_commands_for_proxied_and_own_device() {
    if !have_mosquitto() {
        return;
    }
    let c = Cloud::start(seed()).await;
    let got = receive_one_command(&c, "mqttv311", "command/inbox/#", "sensor1").await;
    assert_eq!(got, r#"command/inbox/sensor1/set-temp {"t":21}"#);
    let got = receive_one_command(&c, "mqttv311", "command/inbox/#", "gw1").await;
    assert_eq!(got, r#"command/inbox//set-temp {"t":21}"#);
    let got = receive_one_command(&c, "mqttv5", "command/inbox/sensor1/#", "sensor1").await;
    assert_eq!(got, r#"command/inbox/sensor1/set-temp {"t":21}"#);
    let got = receive_one_command(&c, "mqttv5", "command/inbox//#", "gw1").await;
    assert_eq!(got, r#"command/inbox//set-temp {"t":21}"#);
}

/// A raw MQTT client on the codec.
struct Raw {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Raw {
    async fn connect(c: &Cloud, connect: Connect) -> (Self, ConnAck) {
        let stream = TcpStream::connect(c.cloud.mqtt_addr()).await.unwrap();
        let codec = Codec::new(connect.version, 1 << 20);
        let mut raw = Self { stream, codec, buf: BytesMut::new() };
        raw.send(Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) {
        write_packet(&mut self.stream, &self.codec, &p).await.unwrap();
    }

    /// The next packet, `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        let read = read_packet(&mut self.stream, &mut self.buf, &self.codec);
        tokio::time::timeout(TIMEOUT, read).await.expect("no packet in time").ok().flatten()
    }
}

fn login(v: Version, device: &str, password: &str) -> Connect {
    let mut c = Connect::new(v, "raw");
    c.login = Some(Login { username: format!("{device}@{APP}"), password: password.into() });
    c
}

fn publish(topic: &str, pkid: u16) -> Packet {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, Bytes::from_static(b"{}"));
    p.pkid = pkid;
    Packet::Publish(p)
}

/// Waits (bounded) for an event that `pred` selects.
async fn wait_event(c: &Cloud, pred: impl Fn(&CloudEvent) -> bool) -> CloudEvent {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(e) = c.cloud.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(Instant::now() < deadline, "no such event within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn v5_publish_failures_are_puback_reasons() {
    let c = Cloud::start(seed()).await;
    let (mut gw, ack) = Raw::connect(&c, login(Version::V5, "gw1", "gw-secret")).await;
    assert_eq!(ack.code, ConnectCode::Success);
    for (topic, reason) in [
        ("temp/sensor2", PubAckReason::NotAuthorized),
        ("temp/nobody", PubAckReason::NotAuthorized),
        ("temp/sensor1/extra", PubAckReason::TopicNameInvalid),
        ("temp/sensor1", PubAckReason::Success),
    ] {
        gw.send(publish(topic, 7)).await;
        assert_eq!(gw.recv().await, Some(Packet::PubAck(PubAck { pkid: 7, reason })), "{topic}");
    }
    assert_eq!(telemetry(&c.cloud.events()).len(), 1);
}

#[tokio::test]
async fn v311_rejected_qos1_publish_closes_the_connection() {
    let c = Cloud::start(seed()).await;
    let (mut gw, _) = Raw::connect(&c, login(Version::V311, "gw1", "gw-secret")).await;
    gw.send(publish("temp/sensor2", 1)).await;
    assert_eq!(gw.recv().await, None);
}

#[tokio::test]
async fn only_command_inbox_subscriptions_are_granted_at_qos0() {
    let c = Cloud::start(seed()).await;
    for v in [Version::V311, Version::V5] {
        let (mut gw, _) = Raw::connect(&c, login(v, "gw1", "gw-secret")).await;
        let filters =
            ["command/inbox/#", "temp/#", "command/inbox//#", "command/inbox/sensor1/set"];
        let sub = Subscribe {
            pkid: 3,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter { path: (*f).into(), qos: QoS::AtLeastOnce })
                .collect(),
            subscription_id: None,
        };
        gw.send(Packet::Subscribe(sub)).await;
        let granted = SubAckCode::Granted(QoS::AtMostOnce);
        let codes = vec![granted, SubAckCode::Failure, granted, SubAckCode::Failure];
        assert_eq!(gw.recv().await, Some(Packet::SubAck(SubAck { pkid: 3, codes })));
        gw.send(Packet::Disconnect(Disconnect::normal())).await;
        assert_eq!(gw.recv().await, None);
    }
}

#[tokio::test]
async fn one_live_session_per_device() {
    let c = Cloud::start(seed()).await;
    let (mut first, ack) = Raw::connect(&c, login(Version::V5, "sensor1", "s1-pass")).await;
    assert_eq!(ack.code, ConnectCode::Success);
    let (_, second) = Raw::connect(&c, login(Version::V311, "sensor1", "s1-pass")).await;
    assert_eq!(second.code, ConnectCode::BadUserNamePassword);
    first.send(Packet::Disconnect(Disconnect::normal())).await;
    assert_eq!(first.recv().await, None);
    // the slot is free once the first session's end was logged
    wait_event(&c, |e| {
        e.subject == "connection" && e.data == Some(serde_json::json!({"connected": false}))
    })
    .await;
    let (_, third) = Raw::connect(&c, login(Version::V311, "sensor1", "s1-pass")).await;
    assert_eq!(third.code, ConnectCode::Success);
}

#[tokio::test]
async fn keep_alive_timeout_closes_and_publishes_the_will() {
    let c = Cloud::start(seed()).await;
    let mut connect = login(Version::V5, "sensor1", "s1-pass");
    connect.keep_alive = 1;
    connect.will = Some(Will {
        topic: "status".into(),
        payload: Bytes::from_static(br#"{"online":false}"#),
        qos: QoS::AtMostOnce,
        retain: false,
        content_type: None,
    });
    let started = Instant::now();
    let (mut s, _) = Raw::connect(&c, connect).await;
    // silence: the server gives up after 1.5 x keep-alive, telling a v5 client why
    let reason = gw_driver_mqtt::DisconnectReason::KeepAliveTimeout;
    assert_eq!(s.recv().await, Some(Packet::Disconnect(Disconnect { reason })));
    assert_eq!(s.recv().await, None);
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
    let will = wait_event(&c, |e| e.subject == "status").await;
    assert_eq!(will.device.as_deref(), Some("sensor1"));
    assert_eq!(will.data, Some(serde_json::json!({"online": false})));
}

#[tokio::test]
async fn normal_disconnect_discards_the_will_and_ping_keeps_alive() {
    let c = Cloud::start(seed()).await;
    let mut connect = login(Version::V311, "sensor1", "s1-pass");
    connect.keep_alive = 1;
    connect.will = Some(Will {
        topic: "status".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        content_type: None,
    });
    let (mut s, _) = Raw::connect(&c, connect).await;
    // pings every 0.5 s keep a 1 s keep-alive session up past its 1.5 s limit
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.send(Packet::PingReq).await;
        assert_eq!(s.recv().await, Some(Packet::PingResp));
    }
    s.send(Packet::Disconnect(Disconnect::normal())).await;
    assert_eq!(s.recv().await, None);
    wait_event(&c, |e| e.data == Some(serde_json::json!({"connected": false}))).await;
    assert!(c.cloud.events().iter().all(|e| e.subject != "status"), "will discarded");
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused() {
    let c = Cloud::start(seed()).await;
    let mut stream = TcpStream::connect(c.cloud.mqtt_addr()).await.unwrap();
    // MQTT 3.1: "MQIsdp" level 3
    let connect = [0x10, 0x0e, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0];
    tokio::io::AsyncWriteExt::write_all(&mut stream, &connect).await.unwrap();
    let codec = Codec::new(Version::V311, 1024);
    let mut buf = BytesMut::new();
    let got = read_packet(&mut stream, &mut buf, &codec).await.unwrap();
    assert_eq!(got, Some(Packet::ConnAck(ConnAck::new(ConnectCode::UnsupportedProtocolVersion))));
}

#[tokio::test]
async fn discovery_lists_the_mqtt_endpoint() {
    let c = Cloud::start(seed()).await;
    let info: serde_json::Value = c
        .http
        .get(c.url("/api/console/v1alpha1/info"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let addr = c.cloud.mqtt_addr();
    assert_eq!(
        info["mqtt"],
        serde_json::json!({"host": addr.ip().to_string(), "port": addr.port()})
    );
    assert_eq!(c.cloud.mqtt_url(), format!("mqtt://{addr}"));
}
