//! The endpoint against real, independent clients: `mosquitto_pub`/`mosquitto_sub`, Python
//! `paho-mqtt` 2.x, rumqttc, and a raw codec client for timing-exact checks. The gateway side
//! is an in-test `Ingest` (records in memory; can refuse with "quota exceeded" or hold
//! messages back) and an in-test `Authenticate` (a map of `device@app` → password).
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use gw_driver_mqtt::{
    Codec, Commands, Connect, Delivery, Login, MqttConfig, MqttEndpoint, Packet, PubAck,
    PubAckReason, Publish, QoS, Stats, Version, read_packet, write_packet,
};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, CommandName, Identity, Ingest, IngestError,
    PresentedCredential, Telemetry,
};
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    process::Command,
    sync::{Semaphore, watch},
};
use tokio_util::sync::CancellationToken;

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct TestIngest {
    records: Mutex<Vec<Telemetry>>,
    count: Option<watch::Sender<usize>>,
    /// Calls that arrived (held or not).
    calls: Option<watch::Sender<usize>>,
    quota_exceeded: AtomicBool,
    /// When set, each publish waits for a permit.
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// Payloads in the order the publishes reached the ingest (their first poll: where the
    /// outbox takes a record's seq).
    arrivals: Mutex<Vec<Bytes>>,
    /// When set, the n-th publish takes the n-th delay before it is stored.
    delays: Mutex<std::collections::VecDeque<Duration>>,
}

impl TestIngest {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            count: Some(watch::channel(0).0),
            calls: Some(watch::channel(0).0),
            ..Self::default()
        })
    }

    fn records(&self) -> Vec<Telemetry> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were stored.
    async fn wait_for(&self, n: usize) -> Vec<Telemetry> {
        let mut rx = self.count.as_ref().unwrap().subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} messages expected, got {:?}", self.records()))
            .unwrap();
        self.records()
    }

    async fn wait_for_calls(&self, n: usize) {
        let mut rx = self.calls.as_ref().unwrap().subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= n)).await.unwrap().unwrap();
    }
}

impl Ingest for TestIngest {
    async fn publish(&self, telemetry: Telemetry) -> Result<(), IngestError> {
        self.arrivals.lock().unwrap().push(telemetry.payload.clone());
        let delay = self.delays.lock().unwrap().pop_front();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.calls.as_ref().unwrap().send_modify(|c| *c += 1);
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        if self.quota_exceeded.load(Ordering::SeqCst) {
            return Err(IngestError::QuotaExceeded("test outbox full".into()));
        }
        self.records.lock().unwrap().push(telemetry);
        self.count.as_ref().unwrap().send_modify(|c| *c += 1);
        Ok(())
    }
}

struct TestAuth(HashMap<String, String>);

impl Authenticate for TestAuth {
    async fn authenticate(&self, request: &AuthRequest, _peer: Option<IpAddr>) -> AuthOutcome {
        match &request.credential {
            PresentedCredential::Password(pw) if pw.expose() == "limited" => {
                AuthOutcome::RateLimited
            }
            PresentedCredential::Password(pw)
                if self.0.get(&request.identity().to_string()).map(String::as_str)
                    == Some(pw.expose()) =>
            {
                AuthOutcome::Pass(request.identity())
            }
            _ => AuthOutcome::Fail,
        }
    }
}

struct Harness {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ingest: Arc<TestIngest>,
    commands: Commands,
    stats: Stats,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut MqttConfig)) -> Self {
        let mut config = MqttConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_inflight: 8,
            ..MqttConfig::default()
        };
        tweak(&mut config);
        let auth = TestAuth(HashMap::from([
            ("sensor1@app".to_owned(), "pw".to_owned()),
            ("sensor2@app".to_owned(), "pw2".to_owned()),
        ]));
        let ingest = TestIngest::new();
        let endpoint =
            MqttEndpoint::bind(&config, Arc::new(auth), ingest.clone(), AppId::new("app").unwrap())
                .await
                .unwrap();
        let (addr, tls_addr) = (endpoint.local_addr(), endpoint.tls_addr());
        let (commands, stats) = (endpoint.commands(), endpoint.stats());
        let token = CancellationToken::new();
        let task = tokio::spawn(endpoint.run(token.clone()));
        Self { addr, tls_addr, ingest, commands, stats, token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.unwrap().unwrap();
    }

    /// Waits until `n` sessions are live (a client that exited may not be gone yet).
    async fn wait_sessions(&self, n: usize) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while self.stats.snapshot().sessions != n {
            assert!(tokio::time::Instant::now() < until, "sessions never reached {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Pushes a command until the device's subscription is in place.
    async fn push_when_subscribed(&self, device: &str, name: &str, payload: &'static [u8]) {
        let id: Identity = device.parse().unwrap();
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            match self.commands.push(&id, CommandName::new(name).unwrap(), Bytes::from(payload)) {
                Delivery::Queued => return,
                other => {
                    assert!(tokio::time::Instant::now() < until, "never subscribed: {other:?}")
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn mosquitto(program: &str, addr: SocketAddr, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn output(mut c: Command) -> std::process::Output {
    tokio::time::timeout(DEADLINE, c.output()).await.expect("client timed out").unwrap()
}

#[tokio::test]
async fn mosquitto_pub_v311_and_v5_reach_the_ingest_as_the_sensor() {
    let h = Harness::start().await;
    for (i, version) in ["mqttv311", "mqttv5"].into_iter().enumerate() {
        let payload = format!("{{\"temp\":{i}}}");
        let out = output(mosquitto(
            "mosquitto_pub",
            h.addr,
            &["-V", version, "-u", "sensor1@app", "-P", "pw", "-t", "temperature", "-q", "1"]
                .into_iter()
                .chain(["-m", payload.as_str()])
                .collect::<Vec<_>>(),
        ))
        .await;
        assert!(out.status.success(), "{version}: {}", String::from_utf8_lossy(&out.stderr));
        // the PUBACK came after the ingest: the message is there when the client is done
        let got = h.ingest.records();
        let t = got.last().unwrap();
        assert_eq!(got.len(), i + 1);
        assert_eq!(
            (t.app.as_str(), t.device.as_str(), t.channel.as_str()),
            ("app", "sensor1", "temperature")
        );
        assert_eq!(&t.payload[..], payload.as_bytes());
        // no content type declared: a JSON payload is recognised, as Drogue does
        assert_eq!(t.content_type.as_deref(), Some("application/json"));
    }
    let out = output(mosquitto(
        "mosquitto_pub",
        h.addr,
        &[
            "-V",
            "mqttv5",
            "-u",
            "sensor1@app",
            "-P",
            "pw",
            "-t",
            "status",
            "-q",
            "1",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-m",
            "{\"ok\":true}",
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = h.ingest.records().pop().unwrap();
    assert_eq!(
        (t.channel.as_str(), t.content_type.as_deref()),
        ("status", Some("application/json"))
    );
    let stats = h.stats.snapshot();
    assert_eq!(stats.publishes, 3);
    assert_eq!(stats.devices[0].1.connects, 3);
    h.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_wrong_password_gets_the_refusal_text() {
    let h = Harness::start().await;
    // wrong password: v3 code 4, v5 0x86; rate limited: v3 code 5, v5 0x87
    for (version, password, text) in [
        ("mqttv311", "wrong", "Connection Refused: bad user name or password"),
        ("mqttv5", "wrong", "Bad User Name or Password"),
        ("mqttv311", "limited", "Connection Refused: not authorised"),
        ("mqttv5", "limited", "Quota exceeded"),
    ] {
        let out = output(mosquitto(
            "mosquitto_pub",
            h.addr,
            &["-V", version, "-u", "sensor1@app", "-P", password, "-t", "t", "-q", "1", "-m", "x"],
        ))
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(text), "{version} {password}: {stderr}");
    }
    assert!(h.ingest.records().is_empty());
    assert_eq!(h.stats.snapshot().refused_logins, 4);
    h.stop().await;
}

#[tokio::test]
async fn mosquitto_sub_receives_commands_on_both_filters() {
    let h = Harness::start().await;
    for (filter, qos) in [("command/inbox/#", "1"), ("command/inbox//#", "0")] {
        let mut sub = mosquitto(
            "mosquitto_sub",
            h.addr,
            &["-V", "mqttv311", "-u", "sensor1@app", "-P", "pw", "-t", filter, "-q", qos],
        );
        sub.args(["-C", "1", "-v"]);
        let child = sub.spawn().unwrap();
        h.push_when_subscribed("sensor1@app", "set-led", b"on").await;
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "command/inbox//set-led on");
        h.wait_sessions(0).await;
    }
    assert_eq!(h.stats.snapshot().commands_delivered, 2);
    h.stop().await;
}

/// The Python venv with paho-mqtt 2.x: `$PAHO_VENV`, or one made in a temp dir. `None`
/// (with a skip line) when pip cannot install it, unless `CI` is set.
async fn paho_python(dir: &std::path::Path) -> Option<PathBuf> {
    let venv = match std::env::var_os("PAHO_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let venv = dir.join("venv");
            let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().await;
            let installed = match made {
                Ok(s) if s.success() => {
                    Command::new(venv.join("bin/pip"))
                        .args(["install", "-q", "paho-mqtt>=2,<3"])
                        .status()
                        .await
                }
                other => other,
            };
            if !installed.is_ok_and(|s| s.success()) {
                assert!(std::env::var_os("CI").is_none(), "CI: cannot install paho-mqtt");
                println!("SKIP: paho-mqtt not installable (offline?)");
                return None;
            }
            venv
        }
    };
    Some(venv.join("bin/python"))
}

const PAHO_SCRIPT: &str = r#"
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, version = int(sys.argv[1]), sys.argv[2]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-" + version, protocol=proto)
c.username_pw_set("sensor1@app", "pw")
got = []
c.on_message = lambda cl, ud, msg: got.append(msg)
if proto == mqtt.MQTTv5:
    c.connect("127.0.0.1", port, keepalive=30, clean_start=True)
else:
    c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
props = None
if proto == mqtt.MQTTv5:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
info = c.publish("temperature", '{"paho":' + version + '}', qos=1, properties=props)
info.wait_for_publish(timeout=10)
assert info.is_published(), "no PUBACK"
result, mid = c.subscribe("command/inbox//#", qos=1)
assert result == mqtt.MQTT_ERR_SUCCESS
import time
deadline = time.time() + 15
while not got and time.time() < deadline:
    time.sleep(0.01)
assert got, "no command"
print("command", got[0].topic, got[0].payload.decode(), flush=True)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test]
async fn paho_v311_and_v5_publish_and_receive_commands() {
    let dir = tempfile::tempdir().unwrap();
    let Some(python) = paho_python(dir.path()).await else { return };
    let script = dir.path().join("client.py");
    std::fs::write(&script, PAHO_SCRIPT).unwrap();
    let h = Harness::start().await;
    for (i, version) in ["3", "5"].into_iter().enumerate() {
        let child = Command::new(&python)
            .arg(&script)
            .args([h.addr.port().to_string(), version.to_owned()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        h.push_when_subscribed("sensor1@app", "reboot", b"now").await;
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
        assert!(out.status.success(), "paho {version}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "command command/inbox//reboot now"
        );
        let got = h.ingest.wait_for(i + 1).await;
        let t = &got[i];
        assert_eq!((t.device.as_str(), t.channel.as_str()), ("sensor1", "temperature"));
        assert_eq!(&t.payload[..], format!("{{\"paho\":{version}}}").as_bytes());
        // declared on v5, recognised from the JSON payload on 3.1.1
        assert_eq!(t.content_type.as_deref(), Some("application/json"));
        h.wait_sessions(0).await;
    }
    h.stop().await;
}

/// A raw client: CONNECT as sensor1@app with `version`, CONNACK read.
async fn raw_connect(addr: SocketAddr, version: Version) -> (TcpStream, Codec, BytesMut) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let codec = Codec::new(version, 1 << 20);
    let mut c = Connect::new(version, "raw");
    c.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
    write_packet(&mut s, &codec, &Packet::Connect(c)).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = read_packet(&mut s, &mut buf, &codec).await.unwrap();
    assert!(
        matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == gw_driver_mqtt::ConnectCode::Success)
    );
    (s, codec, buf)
}

#[tokio::test]
async fn puback_waits_for_the_ingest() {
    let h = Harness::start().await;
    let gate = Arc::new(Semaphore::new(0));
    *h.ingest.gate.lock().unwrap() = Some(gate.clone());
    let (mut s, codec, mut buf) = raw_connect(h.addr, Version::V311).await;
    for pkid in [1, 2] {
        let mut p = Publish::new("temperature", QoS::AtLeastOnce, Bytes::from_static(b"1"));
        p.pkid = pkid;
        write_packet(&mut s, &codec, &Packet::Publish(p)).await.unwrap();
    }
    // both are with the ingest, neither is stored: no PUBACK may have been sent
    h.ingest.wait_for_calls(2).await;
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.peek(&mut probe)).await;
    assert!(early.is_err(), "a PUBACK arrived before the ingest resolved");
    gate.add_permits(2);
    for pkid in [1, 2] {
        let got = tokio::time::timeout(DEADLINE, read_packet(&mut s, &mut buf, &codec))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some(Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success })));
    }
    assert_eq!(h.ingest.records().len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn command_push_says_why_it_cannot_deliver() {
    let h = Harness::start().await;
    let id: Identity = "sensor1@app".parse().unwrap();
    let push = || h.commands.push(&id, CommandName::new("c").unwrap(), Bytes::new());
    assert_eq!(push(), Delivery::NotConnected);
    let (s, _, _) = raw_connect(h.addr, Version::V5).await;
    h.wait_sessions(1).await;
    assert_eq!(push(), Delivery::NotSubscribed);
    assert!(!h.commands.is_subscribed(&id));
    drop(s);
    h.wait_sessions(0).await;
    assert_eq!(push(), Delivery::NotConnected);
    let stats = h.stats.snapshot();
    let (who, conns) = &stats.devices[0];
    assert_eq!((who, conns.connected, conns.connects, conns.disconnects), (&id, false, 1, 1));
    h.stop().await;
}

#[tokio::test]
async fn bad_frames_are_counted_and_the_endpoint_keeps_serving() {
    let h = Harness::start().await;
    let (mut s, _codec, _buf) = raw_connect(h.addr, Version::V311).await;
    // a reserved packet type (0): malformed
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x00, 0x00]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    let mut junk = TcpStream::connect(h.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(DEADLINE, junk.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(h.stats.snapshot().bad_frames, 2);
    raw_connect(h.addr, Version::V5).await;
    h.stop().await;
}

#[tokio::test]
async fn a_login_beyond_max_connections_gets_server_unavailable() {
    let h = Harness::with(|c| c.max_connections = 1).await;
    let (_first, _, _) = raw_connect(h.addr, Version::V311).await;
    let mut second = TcpStream::connect(h.addr).await.unwrap();
    let codec = Codec::new(Version::V311, 1 << 20);
    let mut c = Connect::new(Version::V311, "second");
    c.login = Some(Login { username: "sensor2@app".into(), password: "pw2".into() });
    write_packet(&mut second, &codec, &Packet::Connect(c)).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = tokio::time::timeout(DEADLINE, read_packet(&mut second, &mut buf, &codec))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == gw_driver_mqtt::ConnectCode::ServerUnavailable),
        "{ack:?}"
    );
    assert_eq!(h.stats.snapshot().refused_connections, 1);
    assert_eq!(h.stats.snapshot().refused_logins, 0);
    h.stop().await;
}

/// A socket from `source` (a loopback address of its own) to `addr`.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn idle_strangers_push_out_only_each_other_never_a_sensor() {
    let h = Harness::with(|c| {
        c.max_unauthenticated = 8;
        c.max_unauthenticated_per_address = 3;
    })
    .await;
    // a sensor mid-login holds its place while strangers pile up
    let mut sensor = TcpStream::connect(h.addr).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect_from([127, 0, 0, 2], h.addr).await);
    }
    for i in 0..10u8 {
        idle.push(connect_from([127, 0, 0, 3 + i % 3], h.addr).await);
    }
    let codec = Codec::new(Version::V311, 1 << 20);
    let mut c = Connect::new(Version::V311, "late");
    c.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
    write_packet(&mut sensor, &codec, &Packet::Connect(c)).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = tokio::time::timeout(DEADLINE, read_packet(&mut sensor, &mut buf, &codec))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == gw_driver_mqtt::ConnectCode::Success)
    );
    // and one that connects only now gets in too
    let (_s, _, _) = raw_connect(h.addr, Version::V5).await;
    let evicted = h.stats.snapshot().evicted_connections;
    assert!(evicted >= 40, "evicted {evicted}");
    // the strangers' sockets were closed: most read EOF now
    let mut closed = 0;
    for mut s in idle {
        let mut rest = Vec::new();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut rest)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 40, "closed {closed}");
    h.stop().await;
}

#[tokio::test]
async fn a_socket_that_sends_no_connect_is_closed_after_connect_packet_timeout() {
    let h = Harness::with(|c| c.connect_packet_timeout = Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x10]).await.unwrap(); // the first byte of a CONNECT, then nothing
    let mut rest = Vec::new();
    let r = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the endpoint kept a half CONNECT");
    assert!(started.elapsed() < Duration::from_secs(5));
    h.stop().await;
}

#[tokio::test]
async fn idle_connection_without_connect_is_closed() {
    let h = Harness::with(|c| c.connect_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the endpoint kept an idle connection");
    h.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(made.success());
    let (c, k) = (cert.clone(), key.clone());
    let h = Harness::with(move |config| {
        config.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        config.cert_file = Some(c);
        config.key_file = Some(k);
    })
    .await;
    let tls = h.tls_addr.unwrap();
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &tls.port().to_string(), "--cafile"])
        .arg(&cert)
        .args(["-V", "mqttv5", "-u", "sensor1@app", "-P", "pw", "-t", "secure", "-q", "1"])
        .args(["-m", "over tls"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = output(c).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = h.ingest.records().pop().unwrap();
    assert_eq!((t.channel.as_str(), &t.payload[..]), ("secure", &b"over tls"[..]));
    h.stop().await;
}

#[tokio::test]
async fn tls_without_a_key_is_a_clear_error() {
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        cert_file: Some("/nonexistent/cert.pem".into()),
        key_file: Some("/nonexistent/key.pem".into()),
        ..MqttConfig::default()
    };
    let auth = Arc::new(TestAuth(HashMap::new()));
    let err = MqttEndpoint::bind(&config, auth, TestIngest::new(), AppId::new("app").unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[path = "endpoint/rumqttc_clients.rs"]
mod rumqttc_clients;

#[path = "endpoint/pipeline_props.rs"]
mod pipeline_props;
