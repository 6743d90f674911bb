//! The command intakes against real peers: the push endpoint with `curl` and with the dev
//! cloud's external push; the Drogue MQTT uplink's `command/inbox/#` subscription against the
//! dev cloud's MQTT endpoint and against a scripted broker (QoS 1 acknowledgements); the
//! Drogue HTTP uplink's command waits against the dev cloud's HTTP endpoint. The command
//! router is a test sink whose outcome depends on the device.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use gw_cloud_sync::{
    CloudConfig, CloudKind, CommandIntake, Uplink,
    commands::push::{self, PushConfig},
};
use gw_devcloud::{CommandOutcome as CloudOutcome, DevCloud, Seed, seed::device_with};
use gw_model::{
    AppId, Channel, Command, CommandOutcome, CommandSink, DeviceId, Identity, Secret, Telemetry,
    Timestamp,
};
use gw_store::{Outbox, StoreConfig, SyncPolicy};
use rumqttc::mqttbytes::{
    QoS,
    v4::{ConnAck, ConnectReturnCode, Packet, Publish, SubAck, SubscribeReasonCode},
};
use serde_json::json;
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const GW: &str = "gw1";
const TOKEN: &str = "push-s3cret";
const PATIENCE: Duration = Duration::from_secs(20);

/// The command router stand-in: what it answers depends on the device.
#[derive(Default)]
struct TestSink {
    got: Mutex<Vec<Command>>,
}

impl TestSink {
    fn got(&self) -> Vec<Command> {
        self.got.lock().unwrap().clone()
    }
}

impl CommandSink for TestSink {
    async fn submit(&self, command: Command) -> CommandOutcome {
        let outcome = match command.device.as_str() {
            "sensor1" | GW => CommandOutcome::Delivered,
            "sleeper" => CommandOutcome::Queued,
            "full" => CommandOutcome::QueueFull,
            "huge" => CommandOutcome::TooLarge,
            "late" => CommandOutcome::Rejected("the command has expired".into()),
            _ => CommandOutcome::UnknownDevice,
        };
        self.got.lock().unwrap().push(command);
        outcome
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gateway() -> Identity {
    Identity::new(AppId::new(APP).unwrap(), DeviceId::new(GW).unwrap())
}

// ---- push endpoint ----------------------------------------------------------------------

/// Serves the push router on 127.0.0.1:0.
async fn push_server(max_body: usize) -> (SocketAddr, Arc<TestSink>, CommandIntake) {
    let sink = Arc::new(TestSink::default());
    let intake = CommandIntake::new(Arc::clone(&sink));
    let config = PushConfig {
        token: Secret::new(TOKEN),
        require_client_cert: false,
        max_body,
        replay_window: std::time::Duration::from_secs(60),
    };
    let app = push::router(intake.clone(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, sink, intake)
}

fn have_curl() -> bool {
    let found = std::process::Command::new("curl").arg("--version").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "curl is required under CI");
        eprintln!("SKIP: curl not installed");
    }
    found
}

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// POSTs `body` with `curl`, plus `extra` arguments; returns status, headers and body.
async fn curl(url: &str, body: &str, extra: &[&str]) -> Answer {
    let tmp = TempDir::new().unwrap();
    let (body_file, out_file) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::write(&body_file, body).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(&out_file)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let headers = String::from_utf8(out.stdout).unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = std::fs::read_to_string(&out_file).unwrap_or_default();
    Answer { status, headers: headers.to_ascii_lowercase(), body }
}

fn push_body(device: &str, command: &str, payload: &[u8]) -> String {
    use base64::Engine;
    json!({
        "application": APP,
        "device": device,
        "command": command,
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
    })
    .to_string()
}

const BEARER: &str = "Authorization: Bearer push-s3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refuses_a_missing_or_wrong_secret() {
    if !have_curl() {
        return;
    }
    let (addr, sink, intake) = push_server(64 * 1024).await;
    let url = format!("http://{addr}{}", push::PATH);
    let body = push_body("sensor1", "set", b"1");

    let missing = curl(&url, &body, &[]).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.headers.contains("www-authenticate: bearer"), "{}", missing.headers);
    assert!(missing.headers.contains("www-authenticate: basic"), "{}", missing.headers);
    let basic = curl(&url, &body, &["-u", "gw1:push-s3creT"]).await;
    assert_eq!(basic.status, 403, "Basic with a wrong token as password");
    let wrong = curl(&url, &body, &["-H", "Authorization: Bearer push-s3creT"]).await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let empty = curl(&url, &body, &["-H", "Authorization: Bearer"]).await;
    assert_eq!(empty.status, 401, "a Bearer scheme without a token: {}", empty.body);
    assert!(sink.got().is_empty(), "nothing reached the router");
    assert_eq!(intake.stats().push_unauthorized, 4);

    let right = curl(&url, &body, &["-H", "Authorization: bearer push-s3cret"]).await;
    assert_eq!(right.status, 200, "the scheme is case-insensitive: {}", right.body);
    // Drogue's `headers` may hold Basic credentials: the token is the password
    let basic = push_body("sensor1", "set", b"2");
    let right = curl(&url, &basic, &["-u", "drogue:push-s3cret"]).await;
    assert_eq!(right.status, 200, "Basic with the token as password: {}", right.body);
    assert_eq!(sink.got().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_push_is_not_queued_again() {
    if !have_curl() {
        return;
    }
    let (addr, sink, _) = push_server(64 * 1024).await;
    let url = format!("http://{addr}{}", push::PATH);
    // Drogue's default body: the same body within the replay window is a replay
    let reboot = push_body("sleeper", "reboot", b"");
    assert_eq!(curl(&url, &reboot, &["-H", BEARER]).await.status, 202);
    for _ in 0..2 {
        let again = curl(&url, &reboot, &["-H", BEARER]).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert!(again.body.contains("duplicate"), "{}", again.body);
    }
    // named pushes: once per id, whatever the body
    let named = |id: &str, payload: &str| {
        json!({"application": APP, "device": "sleeper", "command": "set", "payload": payload, "id": id})
            .to_string()
    };
    assert_eq!(curl(&url, &named("c-1", "MQ=="), &["-H", BEARER]).await.status, 202);
    let again = curl(&url, &named("c-1", "Mg=="), &["-H", BEARER]).await;
    assert!(again.body.contains("duplicate"), "{}", again.body);
    let by_header = push_body("sleeper", "set", b"3");
    assert_eq!(
        curl(&url, &by_header, &["-H", BEARER, "-H", "X-Command-Id: c-1"]).await.status,
        200
    );
    assert_eq!(
        curl(&url, &by_header, &["-H", BEARER, "-H", "X-Command-Id: c-2"]).await.status,
        202
    );
    // dated pushes: refused when far off the clock
    let dated = |at: u64| {
        json!({"application": APP, "device": "sleeper", "command": "dated", "timestamp": at})
            .to_string()
    };
    let stale = curl(&url, &dated(1_000_000_000), &["-H", BEARER]).await;
    assert_eq!(stale.status, 403, "{}", stale.body);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(curl(&url, &dated(now), &["-H", BEARER]).await.status, 202);
    assert!(curl(&url, &dated(now), &["-H", BEARER]).await.body.contains("duplicate"));
    let got: Vec<String> = sink.got().iter().map(|c| c.name.as_str().to_owned()).collect();
    assert_eq!(got, ["reboot", "set", "set", "dated"], "each command once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_answers_the_routers_outcome() {
    if !have_curl() {
        return;
    }
    let (addr, sink, intake) = push_server(64 * 1024).await;
    let url = format!("http://{addr}{}", push::PATH);
    let cases = [
        ("sensor1", 200, "delivered"),
        ("sleeper", 202, "queued"),
        ("nobody", 404, "UnknownDevice"),
        ("huge", 413, "PayloadTooLarge"),
        ("full", 503, "QueueFull"),
        ("late", 422, "expired"),
    ];
    for (device, status, text) in cases {
        let a = curl(&url, &push_body(device, "set-temp", br#"{"t":21}"#), &["-H", BEARER]).await;
        assert_eq!(a.status, status, "{device}: {}", a.body);
        assert!(a.body.contains(text), "{device}: {}", a.body);
        if device == "full" {
            assert!(a.headers.contains("retry-after: 30"), "{}", a.headers);
        }
    }
    let got = sink.got();
    assert_eq!(got.len(), cases.len());
    let first = &got[0];
    assert_eq!((first.app.as_str(), first.device.as_str()), (APP, "sensor1"));
    assert_eq!(first.name.as_str(), "set-temp");
    assert_eq!(&first.payload[..], br#"{"t":21}"#);
    assert_eq!(first.expires_at, None);
    let s = intake.stats();
    assert_eq!((s.received_push, s.delivered, s.queued, s.unknown_device), (6, 1, 1, 1));
    assert_eq!((s.too_large, s.queue_full, s.rejected), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refuses_bad_bodies_and_oversized_ones() {
    if !have_curl() {
        return;
    }
    let (addr, sink, intake) = push_server(1024).await;
    let url = format!("http://{addr}{}", push::PATH);
    let bad = [
        "{not json".to_owned(),
        json!({"device": "sensor1", "command": "x"}).to_string(),
        json!({"application": APP, "device": "a/b", "command": "x"}).to_string(),
        json!({"application": APP, "device": "sensor1", "command": "x y"}).to_string(),
        json!({"application": APP, "device": "sensor1", "command": "x", "payload": "%%%"})
            .to_string(),
        json!({"application": APP, "device": "sensor1", "command": "x", "ttl": "soon"}).to_string(),
    ];
    for body in &bad {
        let a = curl(&url, body, &["-H", BEARER]).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.body.contains("BadRequest"), "{}", a.body);
    }
    let big = push_body("sensor1", "x", &vec![b'x'; 2048]);
    let a = curl(&url, &big, &["-H", BEARER]).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(sink.got().is_empty());
    assert_eq!(intake.stats().push_bad_requests, bad.len() as u64);

    // payload missing or null: an empty command
    for body in [
        json!({"application": APP, "device": "sensor1", "command": "ping"}),
        json!({"application": APP, "device": "sensor1", "command": "ping", "payload": null}),
    ] {
        let a = curl(&url, &body.to_string(), &["-H", BEARER]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert!(sink.got().iter().all(|c| c.payload.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sets_the_expiry_from_the_ttl_field_or_header() {
    if !have_curl() {
        return;
    }
    let (addr, sink, _) = push_server(64 * 1024).await;
    let url = format!("http://{addr}{}", push::PATH);
    let before = Timestamp::from_system(std::time::SystemTime::now()).as_millis();
    let with_field = json!({"application": APP, "device": "sleeper", "command": "x", "ttl": "1s"});
    assert_eq!(curl(&url, &with_field.to_string(), &["-H", BEARER]).await.status, 202);
    let plain = push_body("sleeper", "y", b"");
    let a = curl(&url, &plain, &["-H", BEARER, "-H", "X-Command-TTL: 1h"]).await;
    assert_eq!(a.status, 202);
    let after = Timestamp::from_system(std::time::SystemTime::now()).as_millis();
    let got = sink.got();
    let ttl = |c: &Command| c.expires_at.unwrap().as_millis() - c.created_at.as_millis();
    assert_eq!(ttl(&got[0]), 1000);
    assert_eq!(ttl(&got[1]), 3_600_000);
    assert!((before..=after).contains(&got[0].created_at.as_millis()));
}

/// Drogue's own external push (the dev cloud's command API, gateway with `spec.commands` and
/// the Bearer secret in its `headers`) reaches the router through the push endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_clouds_external_push_reaches_the_router() {
    let (addr, sink, _) = push_server(64 * 1024).await;
    let mut gw = device_with(APP, GW, Some("gw-secret"), &[]);
    gw.spec.commands = Some(
        serde_json::from_value(json!({"commands": [{"external": {
            "url": format!("http://{addr}{}", push::PATH),
            "headers": {"Authorization": format!("Bearer {TOKEN}")},
        }}]}))
        .unwrap(),
    );
    let seed = Seed::new().application(APP).device(gw).sensor(APP, "sensor1", None, &[GW]).sensor(
        APP,
        "stranger",
        None,
        &[GW],
    );
    let stop = CancellationToken::new();
    let cloud = DevCloud::start(([127, 0, 0, 1], 0).into(), seed, stop.clone()).await.unwrap();

    let outcome = cloud
        .send_command(
            APP,
            "sensor1",
            "set-temp",
            Some("application/json"),
            Bytes::from("{\"t\":5}"),
        )
        .await
        .unwrap();
    assert_eq!(outcome, CloudOutcome::Pushed { gateway: GW.into() });
    let got = sink.got();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].device.as_str(), got[0].name.as_str()), ("sensor1", "set-temp"));
    assert_eq!(&got[0].payload[..], b"{\"t\":5}");

    // a device the gateway does not act for: 404 from the gateway, a failed push for Drogue
    let refused = cloud.send_command(APP, "stranger", "x", None, Bytes::new()).await;
    assert!(refused.unwrap_err().to_string().contains("404"));
    stop.cancel();
}

// ---- MQTT subscription ------------------------------------------------------------------

fn open_outbox(tmp: &TempDir) -> Outbox {
    let config = StoreConfig {
        sync: SyncPolicy::Interval,
        sync_interval: Duration::from_millis(20),
        ..StoreConfig::default()
    };
    Outbox::open(&tmp.path().join("outbox"), &config).unwrap()
}

struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: &CloudConfig, intake: CommandIntake, outbox: &Outbox) -> Self {
        let uplink = Uplink::new(config, &gateway(), Secret::new("gw-secret"))
            .unwrap()
            .with_commands(intake);
        let token = CancellationToken::new();
        let (reader, stop) = (outbox.reader(), token.clone());
        let task = tokio::spawn(async move { uplink.run(reader, stop).await.unwrap() });
        Self { token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

fn cloud_seed() -> Seed {
    Seed::new()
        .application(APP)
        .password_device(APP, GW, "gw-secret")
        .sensor(APP, "sensor1", None, &[GW])
        .sensor(APP, "sleeper", None, &[GW])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_mqtt_takes_commands_for_sensors_and_for_the_gateway() {
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start(([127, 0, 0, 1], 0).into(), cloud_seed(), stop.clone()).await.unwrap();
    let tmp = TempDir::new().unwrap();
    let outbox = open_outbox(&tmp);
    let sink = Arc::new(TestSink::default());
    let intake = CommandIntake::new(Arc::clone(&sink));
    let mut config = CloudConfig::new(CloudKind::DrogueMqtt, cloud.mqtt_url(), "gw-secret".into());
    config.retry_min = Duration::from_millis(50);
    let uplink = Running::start(&config, intake.clone(), &outbox);
    wait_until("the uplink's command subscription", || cloud.command_subscribers() > 0).await;

    for (device, command, payload) in
        [("sensor1", "set-temp", "21"), ("sleeper", "wake", ""), (GW, "resync", "now")]
    {
        cloud
            .send_command(APP, device, command, Some("text/plain"), Bytes::from(payload))
            .await
            .unwrap();
    }
    wait_until("three commands", || sink.got().len() >= 3).await;
    let got: Vec<_> = sink
        .got()
        .iter()
        .map(|c| (c.app.to_string(), c.device.to_string(), c.name.to_string(), c.payload.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (APP.into(), "sensor1".into(), "set-temp".into(), Bytes::from("21")),
            (APP.into(), "sleeper".into(), "wake".into(), Bytes::new()),
            (APP.into(), GW.into(), "resync".into(), Bytes::from("now")),
        ]
    );
    assert_eq!(intake.stats().received_mqtt, 3);

    // publishing still works beside the subscription
    let t = Telemetry::new(
        AppId::new(APP).unwrap(),
        DeviceId::new("sensor1").unwrap(),
        Channel::new("temp").unwrap(),
        Timestamp::from_millis(1),
        Bytes::from("\"x\""),
    );
    outbox.append(&t).await.unwrap();
    wait_until("the record sent", || outbox.stats().records_queued() == 0).await;
    uplink.stop().await;
    stop.cancel();
}

/// The generic MQTT kind stays publish-only: no subscription even with an intake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_mqtt_does_not_subscribe() {
    let (addr, mut broker) = ScriptedBroker::bind().await;
    let tmp = TempDir::new().unwrap();
    let outbox = open_outbox(&tmp);
    let mut config = CloudConfig::new(CloudKind::Mqtt, format!("mqtt://{addr}"), "".into());
    config.password = None;
    config.topic = Some("site/{device}/{channel}".into());
    let intake = CommandIntake::new(Arc::new(TestSink::default()));
    let uplink = Running::start(&config, intake, &outbox);
    broker.accept().await;
    let t = Telemetry::new(
        AppId::new(APP).unwrap(),
        DeviceId::new("sensor1").unwrap(),
        Channel::new("temp").unwrap(),
        Timestamp::from_millis(1),
        Bytes::from("1"),
    );
    outbox.append(&t).await.unwrap();
    match broker.read().await {
        Packet::Publish(p) => assert_eq!(p.topic, "site/sensor1/temp"),
        other => panic!("expected the PUBLISH first, got {other:?}"),
    }
    uplink.stop().await;
}

/// A broker played by the test, packet by packet, to see exactly what the uplink sends.
struct ScriptedBroker {
    listener: TcpListener,
    stream: Option<tokio::net::TcpStream>,
    buf: BytesMut,
}

impl ScriptedBroker {
    async fn bind() -> (SocketAddr, Self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, Self { listener, stream: None, buf: BytesMut::new() })
    }

    /// Accepts the uplink: CONNECT, then CONNACK.
    async fn accept(&mut self) {
        let (stream, _) =
            tokio::time::timeout(PATIENCE, self.listener.accept()).await.unwrap().unwrap();
        self.stream = Some(stream);
        self.buf.clear();
        assert!(matches!(self.read().await, Packet::Connect(..)));
        self.write(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))).await;
    }

    async fn read(&mut self) -> Packet {
        self.try_read(PATIENCE).await.expect("a packet from the uplink")
    }

    async fn try_read(&mut self, within: Duration) -> Option<Packet> {
        let deadline = Instant::now() + within;
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the uplink: {e}"),
            }
            let stream = self.stream.as_mut().unwrap();
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) => panic!("the uplink closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("{e}"),
            }
        }
    }

    async fn write(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).unwrap();
        self.stream.as_mut().unwrap().write_all(&out).await.unwrap();
    }
}

/// QoS 1 commands are acknowledged only once the router took them: refused ones get no
/// PUBACK (the broker may redeliver); the gateway's own commands arrive on
/// `command/inbox//<cmd>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_mqtt_acknowledges_only_commands_the_router_took() {
    let (addr, mut broker) = ScriptedBroker::bind().await;
    let tmp = TempDir::new().unwrap();
    let outbox = open_outbox(&tmp);
    let sink = Arc::new(TestSink::default());
    let intake = CommandIntake::new(Arc::clone(&sink));
    let config = CloudConfig::new(CloudKind::DrogueMqtt, format!("mqtt://{addr}"), "pw".into());
    let uplink = Running::start(&config, intake.clone(), &outbox);

    broker.accept().await;
    let Packet::Subscribe(sub) = broker.read().await else { panic!("expected SUBSCRIBE") };
    assert_eq!(sub.filters[0].path, "command/inbox/#");
    assert_eq!(sub.filters[0].qos, QoS::AtLeastOnce);
    broker
        .write(Packet::SubAck(SubAck::new(
            sub.pkid,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        )))
        .await;
    let commands = [
        (10, "command/inbox/sensor1/set-temp"),
        (11, "command/inbox/nobody/set-temp"),
        (12, "command/inbox/full/set-temp"),
        (13, "command/inbox//reboot"),
        (14, "command/inbox/sleeper/wake"),
    ];
    for (pkid, topic) in commands {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, format!("{pkid}"));
        p.pkid = pkid;
        broker.write(Packet::Publish(p)).await;
    }
    let mut acked = Vec::new();
    while let Some(packet) = broker.try_read(Duration::from_secs(2)).await {
        match packet {
            Packet::PubAck(ack) => acked.push(ack.pkid),
            Packet::PingReq => {}
            other => panic!("unexpected {other:?}"),
        }
        if acked.len() == 3 {
            // give a wrongly sent PUBACK for 11 or 12 time to show up
            if let Some(p) = broker.try_read(Duration::from_millis(500)).await {
                assert!(matches!(p, Packet::PingReq), "unexpected {p:?} after the three PUBACKs");
            }
            break;
        }
    }
    assert_eq!(acked, [10, 13, 14], "in order, and none for refused commands");
    let devices: Vec<_> = sink.got().iter().map(|c| c.device.to_string()).collect();
    assert_eq!(devices, ["sensor1", "nobody", "full", GW, "sleeper"]);
    let s = intake.stats();
    assert_eq!((s.received_mqtt, s.unknown_device, s.queue_full), (5, 1, 1));

    // after a reconnect it subscribes again
    drop(broker.stream.take());
    broker.accept().await;
    assert!(matches!(broker.read().await, Packet::Subscribe(_)));
    uplink.stop().await;
}

// ---- HTTP waits -------------------------------------------------------------------------

fn waiting_record(device: &str, wait: Duration) -> Telemetry {
    let mut t = Telemetry::new(
        AppId::new(APP).unwrap(),
        DeviceId::new(device).unwrap(),
        Channel::new("temp").unwrap(),
        Timestamp::from_system(std::time::SystemTime::now()),
        Bytes::from("{\"t\":1}"),
    );
    t.content_type = Some("application/json".into());
    t.command_wait = Some(wait);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_http_waits_for_a_command_for_the_device_it_publishes_as() {
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start(([127, 0, 0, 1], 0).into(), cloud_seed(), stop.clone()).await.unwrap();
    let tmp = TempDir::new().unwrap();
    let outbox = open_outbox(&tmp);
    let sink = Arc::new(TestSink::default());
    let intake = CommandIntake::new(Arc::clone(&sink));
    let config = CloudConfig::new(CloudKind::DrogueHttp, cloud.url(), "gw-secret".into());
    let uplink = Running::start(&config, intake.clone(), &outbox);

    outbox.append(&waiting_record("sensor1", Duration::from_secs(15))).await.unwrap();
    wait_until("the publish waiting upstream", || cloud.command_subscribers() > 0).await;
    assert_eq!(outbox.stats().records_queued(), 1, "the record is in flight while it waits");
    let outcome =
        cloud.send_command(APP, "sensor1", "set-temp", None, Bytes::from("22")).await.unwrap();
    assert!(matches!(outcome, CloudOutcome::Delivered { .. }), "{outcome:?}");
    wait_until("the command at the router", || !sink.got().is_empty()).await;
    let got = sink.got();
    assert_eq!((got[0].device.as_str(), got[0].name.as_str()), ("sensor1", "set-temp"));
    assert_eq!(&got[0].payload[..], b"22");
    assert_eq!(intake.stats().received_http_wait, 1);
    wait_until("the record acknowledged", || outbox.stats().records_queued() == 0).await;
    let events = cloud.wait_for_events(1, PATIENCE).await;
    assert!(events.iter().any(|e| e.device.as_deref() == Some("sensor1")));

    // a record without a wait does not wait; one whose wait is over neither
    let mut old = waiting_record("sleeper", Duration::from_secs(1));
    old.received_at = Timestamp::from_millis(1);
    outbox.append(&old).await.unwrap();
    let mut none = waiting_record("sleeper", Duration::from_secs(1));
    none.command_wait = None;
    outbox.append(&none).await.unwrap();
    let started = Instant::now();
    wait_until("both sent", || outbox.stats().records_queued() == 0).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(sink.got().len(), 1);
    uplink.stop().await;
    stop.cancel();
}
