//! The MQTT uplinks against a real mosquitto (Debian mosquitto 2.0): a real outbox in a temp
//! dir, the real uplink loop and connection, and `mosquitto_sub` as an independent subscriber.
//! Every broker runs on free 127.0.0.1 ports with its config in a temp dir and is killed on
//! drop. Without mosquitto installed the tests print a skip line, or fail when `CI` is set.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use gw_cloud_sync::{CloudConfig, CloudKind, Uplink, UplinkState, UplinkStatus};
use gw_devcloud::{DevCloud, Seed, events::TYPE_EVENT};
use gw_model::{AppId, Channel, DeviceId, Identity, Secret, Telemetry, Timestamp};
use gw_store::{Outbox, StoreConfig, SyncPolicy};
use tempfile::TempDir;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const APP: &str = "my-app";
const GW: &str = "gw1";
/// The broker's in-flight window towards the subscriber (mosquitto's default): after a
/// broker restart it may deliver this many messages to the subscriber a second time.
const SUB_WINDOW: usize = 20;
/// Longest wait for anything; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(20);

/// False (after a skip line) when mosquitto is missing; panics instead under CI.
fn have_mosquitto(test: &str) -> bool {
    let found = Path::new(MOSQUITTO).exists()
        && Command::new("mosquitto_sub").arg("--help").output().is_ok()
        && Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{test}: mosquitto is required under CI");
        eprintln!("SKIP {test}: mosquitto / mosquitto-clients not installed");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mosquitto on two 127.0.0.1 ports: `port` for the uplink (configured by the test) and
/// `sub_port`, anonymous and plain, for the subscriber.
struct Broker {
    dir: PathBuf,
    port: u16,
    sub_port: u16,
    child: Option<Child>,
}

impl Broker {
    /// `listener` is the config of the uplink's listener after its `listener` line.
    fn start(dir: &Path, listener: &str) -> Self {
        let (port, sub_port) = (free_port(), free_port());
        let conf = format!(
            "per_listener_settings true\n\
             user root\n\
             persistence true\n\
             persistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\n\
             set_tcp_nodelay true\n\
             max_queued_messages 0\n\
             max_inflight_messages {SUB_WINDOW}\n\
             listener {sub_port} 127.0.0.1\n\
             allow_anonymous true\n\
             listener {port} 127.0.0.1\n\
             {listener}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut broker = Self { dir: dir.to_owned(), port, sub_port, child: None };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        while [self.port, self.sub_port]
            .iter()
            .any(|p| TcpStream::connect(("127.0.0.1", *p)).is_err())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clean stop (SIGTERM): mosquitto saves the subscriber's queued messages.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mosquitto_sub -v -q 1` with a persistent session (it survives a clean broker restart),
/// collecting `topic payload` lines.
struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    async fn start(broker: &Broker, filter: &str) -> Self {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.sub_port.to_string()])
            .args(["-v", "-q", "1", "-c", "-i", "test-sub", "-t", filter, "-t", "probe"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let sub = Self { child, lines };
        // Subscribed once a probe published after the start comes through.
        let deadline = Instant::now() + PATIENCE;
        while !sub.lines().iter().any(|l| l.starts_with("probe ")) {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &broker.sub_port.to_string()])
                .args(["-q", "1", "-t", "probe", "-m", "x"])
                .status()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sub
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// `(topic, payload)` of every message but the probes.
    fn messages(&self) -> Vec<(String, String)> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_owned(), p.to_owned())))
            .filter(|(t, _)| t != "probe")
            .collect()
    }

    async fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.messages().len() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {n} messages arrived",
                self.messages().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(device: &str, channel: &str, n: u64) -> Telemetry {
    Telemetry {
        app: AppId::new(APP).unwrap(),
        device: DeviceId::new(device).unwrap(),
        channel: Channel::new(channel).unwrap(),
        suffix: None,
        content_type: Some("text/plain".into()),
        data_schema: None,
        received_at: Timestamp::from_millis(1_700_000_000_000 + n),
        // A JSON string, so Drogue's endpoint keeps it as JSON data.
        payload: Bytes::from(format!("\"{device}:{n}\"")),
        command_wait: None,
    }
}

fn open_outbox(tmp: &TempDir) -> Outbox {
    let config = StoreConfig {
        sync: SyncPolicy::Interval,
        sync_interval: Duration::from_millis(20),
        ..StoreConfig::default()
    };
    Outbox::open(&tmp.path().join("outbox"), &config).unwrap()
}

/// `per_device` records for each device, each device appended in order by its own task.
async fn fill(outbox: &Outbox, devices: &[String], channel: &str, per_device: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for d in devices {
        let (outbox, d, channel) = (outbox.clone(), d.clone(), channel.to_owned());
        tasks.spawn(async move {
            for n in 0..per_device {
                outbox.append(&record(&d, &channel, n)).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn gateway() -> Identity {
    Identity::new(AppId::new(APP).unwrap(), DeviceId::new(GW).unwrap())
}

fn mqtt_config(url: String, topic: &str) -> CloudConfig {
    let mut c = CloudConfig::new(CloudKind::Mqtt, url, Secret::new(""));
    c.password = None;
    c.topic = Some(topic.into());
    c.concurrency = 64;
    c.retry_min = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(500);
    c.timeout = Duration::from_secs(5);
    c
}

struct Running {
    status: Arc<UplinkStatus>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(config: &CloudConfig, password: &str, outbox: &Outbox) -> Self {
        let uplink = Uplink::new(config, &gateway(), Secret::new(password)).unwrap();
        let status = uplink.status();
        let token = CancellationToken::new();
        let reader = outbox.reader();
        let stop = token.clone();
        let task = tokio::spawn(async move { uplink.run(reader, stop).await.unwrap() });
        Self { status, token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per device, the numbers received in arrival order (from payloads `device:n`), checking
/// each message's topic is `expected_topic(device)`.
fn by_device(
    messages: &[(String, String)],
    expected_topic: impl Fn(&str) -> String,
) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for (topic, payload) in messages {
        let (device, n) = payload.trim_matches('"').split_once(':').unwrap();
        assert_eq!(topic, &expected_topic(device), "payload {payload}");
        seen.entry(device.to_owned()).or_default().push(n.parse().unwrap());
    }
    seen
}

fn devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sensor-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_mqtt_delivers_every_record_once_in_order_on_templated_topics() {
    if !have_mosquitto("generic_mqtt_delivers_every_record_once_in_order_on_templated_topics") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let broker = Broker::start(tmp.path(), "allow_anonymous true");
    let sub = Subscriber::start(&broker, "site/#").await;
    let outbox = open_outbox(&tmp);
    // The volume check: 100,000 records.
    let devices = devices(20);
    let per_device = 5_000;
    fill(&outbox, &devices, "temp", per_device).await;

    let started = Instant::now();
    let config = mqtt_config(
        format!("mqtt://127.0.0.1:{}", broker.port),
        "site/{gateway}/{app}/{device}/{channel}",
    );
    let uplink = Running::start(&config, "", &outbox);
    let total = devices.len() * per_device as usize;
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    let elapsed = started.elapsed();
    sub.wait_for(total, "all records").await;
    eprintln!("{total} records acked by mosquitto in {elapsed:?}");

    // Nothing more arrives: exactly once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = by_device(&sub.messages(), |d| format!("site/{GW}/{APP}/{d}/temp"));
    assert_eq!(seen.len(), devices.len());
    for (device, ns) in &seen {
        assert_eq!(ns, &(0..per_device).collect::<Vec<_>>(), "{device}: once each, in order");
    }
    let status = uplink.status.snapshot();
    assert_eq!(status.sent, total as u64);
    assert_eq!(status.failures, 0);
    assert_eq!(status.state, UplinkState::Connected);
    assert_eq!(status.kind, "mqtt");
    uplink.stop().await;
    let log = broker.log();
    assert!(
        log.contains(&format!("as {GW}@{APP} (p2, c1, k30)")),
        "client id, clean session, keep-alive: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing_and_bounds_duplicates() {
    if !have_mosquitto("broker_restart_mid_stream_loses_nothing_and_bounds_duplicates") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let mut broker = Broker::start(tmp.path(), "allow_anonymous true");
    let sub = Subscriber::start(&broker, "t/#").await;
    let outbox = open_outbox(&tmp);
    let devices = devices(8);
    let per_device = 1000;
    fill(&outbox, &devices, "c", per_device).await;
    let total = devices.len() * per_device as usize;

    let mut config = mqtt_config(format!("mqtt://127.0.0.1:{}", broker.port), "t/{device}");
    config.concurrency = 32;
    let uplink = Running::start(&config, "", &outbox);
    sub.wait_for(total / 4, "the first quarter").await;
    broker.stop();
    let delivered_before = sub.messages().len();
    wait_until("the uplink noticing", || uplink.status.snapshot().state == UplinkState::Retrying)
        .await;
    broker.restart();
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    sub.wait_for(total, "all records after the restart").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let messages = sub.messages();
    let seen = by_device(&messages, |d| format!("t/{d}"));
    let duplicates = messages.len() - total;
    eprintln!(
        "restart after {delivered_before} of {total}: {} delivered, {duplicates} duplicates",
        messages.len()
    );
    // The uplink repeats at most its in-flight window; the broker may repeat its own window
    // towards the subscriber, which it had persisted unacknowledged.
    assert!(duplicates <= config.concurrency + SUB_WINDOW, "duplicates bounded by the windows");
    for (device, ns) in &seen {
        // First deliveries are complete and in order; a duplicate only repeats a record
        // that was in flight when the connection dropped.
        let mut first = Vec::new();
        for n in ns {
            if !first.contains(n) {
                first.push(*n);
            }
        }
        assert_eq!(first, (0..per_device).collect::<Vec<_>>(), "{device}");
    }
    let status = uplink.status.snapshot();
    assert!(status.failures > 0, "the outage is counted");
    assert!(status.last_error.is_some());
    assert_eq!(status.state, UplinkState::Connected);
    uplink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_username_and_password_from_a_mosquitto_password_file() {
    if !have_mosquitto("logs_in_with_username_and_password_from_a_mosquitto_password_file") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let passwords = tmp.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["uplink", "s3cret"])
        .status()
        .unwrap();
    assert!(made.success());
    let listener = format!("allow_anonymous false\npassword_file {}", passwords.display());
    let broker = Broker::start(tmp.path(), &listener);
    let sub = Subscriber::start(&broker, "auth/#").await;
    let outbox = open_outbox(&tmp);
    fill(&outbox, &devices(2), "c", 50).await;

    let mut config = mqtt_config(format!("mqtt://127.0.0.1:{}", broker.port), "auth/{device}");
    config.username = Some("uplink".into());
    config.password = Some(Secret::new("wrong"));
    // Its own outbox: records a stopped uplink held stay in flight until a process restart.
    let other = TempDir::new().unwrap();
    let other_outbox = open_outbox(&other);
    fill(&other_outbox, &devices(1), "c", 5).await;
    let refused = Running::start(&config, "wrong", &other_outbox);
    wait_until("a refused login", || refused.status.snapshot().failures > 0).await;
    let error = refused.status.snapshot().last_error.unwrap();
    assert!(error.contains("refused the connection: NotAuthorized"), "{error}");
    refused.stop().await;
    assert_eq!(other_outbox.stats().records_queued(), 5, "nothing was acked");

    config.password = Some(Secret::new("s3cret"));
    let uplink = Running::start(&config, "s3cret", &outbox);
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    sub.wait_for(100, "all records").await;
    assert_eq!(uplink.status.snapshot().sent, 100);
    uplink.stop().await;
    assert!(broker.log().contains("u'uplink'"), "{}", broker.log());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_pki(dir: &Path) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "openssl is required under CI");
        eprintln!("SKIP tls test: openssl not installed");
        return false;
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"],
    ]
    .concat());
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "gw1")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]]
            .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_generated_ca_and_a_client_certificate() {
    if !have_mosquitto("tls_with_a_generated_ca_and_a_client_certificate") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let pki = tmp.path();
    if !make_pki(pki) {
        return;
    }
    let p = |f: &str| pki.join(f).display().to_string();
    let listener = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        p("ca.pem"),
        p("server.pem"),
        p("server.key")
    );
    let broker = Broker::start(tmp.path(), &listener);
    let sub = Subscriber::start(&broker, "tls/#").await;
    let outbox = open_outbox(&tmp);
    fill(&outbox, &devices(3), "c", 100).await;

    let mut config =
        mqtt_config(format!("mqtts://127.0.0.1:{}", broker.port), "tls/{device}/{channel}");
    config.ca_file = Some(pki.join("ca.pem"));
    config.client_cert_file = Some(pki.join("client.pem"));
    config.client_key_file = Some(pki.join("client.key"));
    let uplink = Running::start(&config, "", &outbox);
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    sub.wait_for(300, "all records").await;
    let seen = by_device(&sub.messages(), |d| format!("tls/{d}/c"));
    assert!(seen.values().all(|ns| ns == &(0..100).collect::<Vec<_>>()));
    uplink.stop().await;

    // Without the client certificate the broker refuses the handshake.
    fill(&outbox, &devices(1), "c", 1).await;
    config.client_cert_file = None;
    config.client_key_file = None;
    let refused = Running::start(&config, "", &outbox);
    wait_until("a failed handshake", || refused.status.snapshot().failures > 0).await;
    assert_eq!(outbox.stats().records_queued(), 1);
    refused.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_mqtt_publishes_channel_slash_device_as_the_gateway() {
    if !have_mosquitto("drogue_mqtt_publishes_channel_slash_device_as_the_gateway") {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let passwords = tmp.path().join("passwd");
    let user = format!("{GW}@{APP}");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args([user.as_str(), "gw-secret"])
        .status()
        .unwrap();
    assert!(made.success());
    let listener = format!("allow_anonymous false\npassword_file {}", passwords.display());
    let broker = Broker::start(tmp.path(), &listener);
    let sub = Subscriber::start(&broker, "telemetry/#").await;
    let outbox = open_outbox(&tmp);
    fill(&outbox, &devices(3), "telemetry", 20).await;

    let mut config = CloudConfig::new(
        CloudKind::DrogueMqtt,
        format!("mqtt://127.0.0.1:{}", broker.port),
        Secret::new("gw-secret"),
    );
    config.retry_min = Duration::from_millis(50);
    let uplink = Running::start(&config, "gw-secret", &outbox);
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    sub.wait_for(60, "all records").await;
    let seen = by_device(&sub.messages(), |d| format!("telemetry/{d}"));
    assert!(seen.values().all(|ns| ns == &(0..20).collect::<Vec<_>>()));
    assert_eq!(uplink.status.snapshot().kind, "drogue-mqtt");
    uplink.stop().await;
    let log = broker.log();
    assert!(log.contains(&format!("as {user} (p2, c1, k30, u'{user}')")), "{log}");
}

/// Throughput into mosquitto with no subscriber (so the sink is not the limit). Run in
/// release: `cargo test -p gw-cloud-sync --release --test mqtt_uplink -- --ignored --nocapture`;
/// `BENCH_RECORDS`, `BENCH_DEVICES`, `BENCH_CONCURRENCY` override the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release"]
async fn throughput_into_mosquitto() {
    if !have_mosquitto("throughput_into_mosquitto") {
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (records, n_devices, concurrency) =
        (env("BENCH_RECORDS", 200_000), env("BENCH_DEVICES", 100), env("BENCH_CONCURRENCY", 256));
    let tmp = TempDir::new().unwrap();
    let broker = Broker::start(tmp.path(), "allow_anonymous true");
    let outbox = open_outbox(&tmp);
    let devices = devices(n_devices);
    fill(&outbox, &devices, "bench", (records / n_devices) as u64).await;
    let total = outbox.stats().records_queued();

    let mut config = mqtt_config(format!("mqtt://127.0.0.1:{}", broker.port), "b/{device}");
    config.concurrency = concurrency;
    let started = Instant::now();
    let uplink = Running::start(&config, "", &outbox);
    wait_until("every record acked", || outbox.stats().records_queued() == 0).await;
    let elapsed = started.elapsed();
    eprintln!(
        "{total} records, {n_devices} devices, concurrency {concurrency}: {elapsed:?}, {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(uplink.status.snapshot().sent, total);
    uplink.stop().await;
}

/// Drogue MQTT against the dev cloud's MQTT endpoint: events about each sensor, sent by the
/// gateway, in order (contracts/drogue-cloud.md §2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_mqtt_against_the_dev_cloud_sends_as_each_sensor() {
    // The volume check: 100,000 records from 10 sensors.
    const PER_DEVICE: u64 = 10_000;
    let devices = devices(10);
    let mut seed = Seed::new().application(APP).password_device(APP, GW, "gw-secret");
    for d in &devices {
        seed = seed.sensor(APP, d, None, &[GW]);
    }
    let stop = CancellationToken::new();
    let cloud = DevCloud::start(([127, 0, 0, 1], 0).into(), seed, stop.clone()).await.unwrap();
    let tmp = TempDir::new().unwrap();
    let outbox = open_outbox(&tmp);
    fill(&outbox, &devices, "telemetry", PER_DEVICE).await;

    let mut config =
        CloudConfig::new(CloudKind::DrogueMqtt, cloud.mqtt_url(), Secret::new("gw-secret"));
    config.retry_min = Duration::from_millis(50);
    let uplink = Running::start(&config, "gw-secret", &outbox);
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while outbox.stats().records_queued() > 0 {
        assert!(Instant::now() < deadline, "{:?}", outbox.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = devices.len() * PER_DEVICE as usize;
    eprintln!("{total} records through drogue-mqtt into the dev cloud in {:?}", started.elapsed());
    let events: Vec<_> = cloud.events().into_iter().filter(|e| e.kind == TYPE_EVENT).collect();
    assert_eq!(events.len(), total);
    for d in &devices {
        let ns: Vec<String> = events
            .iter()
            .filter(|e| e.device.as_deref() == Some(d.as_str()))
            .inspect(|e| {
                assert_eq!(e.sender.as_deref(), Some(GW), "{e:?}");
                assert_eq!(e.subject, "telemetry", "{e:?}");
                assert_eq!(e.application, APP);
            })
            .map(|e| e.data.as_ref().and_then(|v| v.as_str()).unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..PER_DEVICE).map(|n| format!("{d}:{n}")).collect();
        assert_eq!(ns, expected, "{d}: every record once, in order");
    }
    assert_eq!(uplink.status.snapshot().sent, total as u64);
    uplink.stop().await;
    stop.cancel();
}
