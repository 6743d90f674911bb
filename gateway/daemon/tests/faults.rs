//! Faults a gateway in the field meets, run against the real binary: a full disk, a cloud that
//! accepts connections but never answers, a sensor that stops reading and HTTP clients that
//! never finish their request, malformed input on every listener from many connections at once,
//! and a cloud outage at a steady rate. In each, nothing acknowledged is lost and everyone else
//! keeps being served.
//!
//! `GATEWAYD_SOAK=1` runs the long form (each phase twenty times longer).

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{BIN, Running, have_mosquitto_clients, status, write};
use gw_devcloud::{CloudEvent, DevCloud, Seed};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const APP: &str = "app";

/// How much longer the soak form runs each phase.
fn scale() -> u32 {
    if std::env::var_os("GATEWAYD_SOAK").is_some() { 20 } else { 1 }
}

fn seed(sensors: usize) -> Seed {
    let mut seed = Seed::new().user("admin", "token").application(APP).password_device(
        APP,
        "gw1",
        "gw-secret",
    );
    for i in 0..sensors {
        seed = seed.sensor(APP, &format!("s{i}"), None, &["gw1"]);
    }
    seed
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A config with `sensors` static devices `s<i>` / `pw<i>` and `extra` sections.
fn config(dir: &Path, data: &Path, sensors: usize, extra: &str) -> String {
    let mut text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\nadmin_password = \"unused\"\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n{extra}\n",
        data.display().to_string()
    );
    text = text.replace("admin_password = \"unused\"\n", "");
    for i in 0..sensors {
        text.push_str(&format!("\n[[devices]]\nname = \"s{i}\"\npassword = \"pw{i}\"\n"));
    }
    write(dir, "gatewayd.toml", &text)
}

fn cloud_section(url: &str) -> String {
    format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"300ms\"\ntimeout = \"1s\"\n"
    )
}

async fn publish(client: &reqwest::Client, web: &str, sensor: usize, body: String) -> u16 {
    match client
        .post(format!("http://{web}/v1/temp"))
        .basic_auth(format!("s{sensor}@{APP}"), Some(format!("pw{sensor}")))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn telemetry(cloud: &DevCloud) -> Vec<CloudEvent> {
    cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect()
}

async fn wait_events(cloud: &DevCloud, n: usize, timeout: Duration) -> Vec<CloudEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = telemetry(cloud);
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(sensor, i)` of every telemetry event.
fn keys(events: &[CloudEvent]) -> Vec<(String, u64)> {
    events
        .iter()
        .map(|e| {
            let data = e.data.as_ref().unwrap();
            (e.device.clone().unwrap(), data["i"].as_u64().unwrap())
        })
        .collect()
}

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether this machine lets the test mount a small tmpfs in a mount namespace of its own.
fn can_mount_tmpfs() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!("mount -t tmpfs -o size=1m none {}", dir.path().display()))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI: cannot mount a tmpfs in a mount namespace");
        eprintln!("SKIP: no tmpfs in a mount namespace here (needs root)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_quota_errors_keeps_what_it_acknowledged_and_recovers() {
    if !can_mount_tmpfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cloud_addr = free_addr();
    // the outbox's own limit is far above the disk: the disk fills first
    let extra = format!(
        "{}\n[store]\nmax_bytes = \"64MiB\"\n",
        cloud_section(&format!("http://{cloud_addr}"))
    );
    let cfg = config(dir.path(), &data, 1, &extra);
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"]).arg(format!(
        "mount -t tmpfs -o size=512k none {} && exec {BIN} run --config {cfg}",
        data.display()
    ));
    let gw = Running::spawn(cmd);
    let web = gw.web_addr();
    let client = reqwest::Client::new();

    // Fill the disk: every 202 is a promise, and the first refusal is a quota error.
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..2000u64 {
        let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(2000));
        match publish(&client, &web, 0, body).await {
            202 => acked.push(i),
            code => {
                refusal = Some((i, code));
                break;
            }
        }
    }
    let (refused, code) = refusal.expect("a 512 KiB disk fills before 4 MB of messages");
    assert_eq!(code, 503, "a full disk is a quota error to sensors");
    assert!(acked.len() > 50, "{} accepted before the disk filled", acked.len());
    let s = status(&client, &web).await;
    assert!(s["outbox"]["rejected_disk_full"].as_u64().unwrap() >= 1, "{s}");
    // still alive and answering while full
    assert_eq!(client.get(format!("http://{web}/healthz")).send().await.unwrap().status(), 200);

    // Space returns: the same outbox takes messages again.
    let pid = gw.child.id().to_string();
    let grown = Command::new("nsenter")
        .args(["-t", &pid, "-m", "mount", "-o", "remount,size=16m"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(grown.success());
    for i in refused..refused + 20 {
        let body = format!("{{\"i\":{i}}}");
        assert_eq!(publish(&client, &web, 0, body).await, 202, "after space returned");
        acked.push(i);
    }

    // Everything acknowledged reaches the cloud, in order; nothing refused does.
    let cloud = DevCloud::start(cloud_addr, seed(1), CancellationToken::new()).await.unwrap();
    let events = wait_events(&cloud, acked.len(), Duration::from_secs(60)).await;
    let got: Vec<u64> = keys(&events).into_iter().map(|(_, i)| i).collect();
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, acked, "every acknowledged message, in order, and only those");
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["corrupt_skipped"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_that_accepts_but_never_answers_stalls_nobody() {
    // the cloud: accepts TCP connections and never says a word
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            holder.lock().unwrap().push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = cloud_section(&format!("http://{silent_addr}"));
    let gw = Running::start(&config(dir.path(), &dir.path().join("data"), 4, &extra), None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();
    let rss_before = rss_kib(gw.child.id());

    let per_sensor = 100 * scale() as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..4 {
        let (client, web) = (client.clone(), web.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..per_sensor {
                ok += u64::from(publish(&client, &web, s, format!("{{\"i\":{i}}}")).await == 202);
            }
            ok
        }));
    }
    // meanwhile the gateway's own pages answer promptly
    for _ in 0..10 {
        let t = Instant::now();
        let r = client.get(format!("http://{web}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(1), "healthz took {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert_eq!(accepted, 4 * per_sensor, "every message accepted while the cloud hangs");
    assert!(
        started.elapsed() < Duration::from_secs(30 * u64::from(scale())),
        "sensors were held up: {:?}",
        started.elapsed()
    );
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["records_queued"], 4 * per_sensor, "{s}");
    assert_ne!(s["uplink"]["state"], "connected", "{s}");
    assert!(!held.lock().unwrap().is_empty(), "the gateway did try the silent cloud");
    let rss_after = rss_kib(gw.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    accept.abort();
}

/// A v3.1.1 CONNECT for `user` / `password` with a clean session.
fn mqtt_connect(user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60]);
    for field in [user, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    encode_len(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

fn encode_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// SUBSCRIBE to `command/inbox/#` at QoS 1.
fn mqtt_subscribe() -> Vec<u8> {
    let filter = b"command/inbox/#";
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter);
    body.push(1);
    let mut packet = vec![0x82];
    encode_len(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_that_stops_reading_and_unfinished_requests_hold_up_no_one() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = "[mqtt]\nlisten = \"127.0.0.1:0\"\n\n[web]\npush_token = \"push-secret\"\n";
    // [web] appears twice otherwise: fold the push token into the generated section
    let cfg = config(dir.path(), &dir.path().join("data"), 2, "[mqtt]\nlisten = \"127.0.0.1:0\"\n");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n",
        "[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\npush_token = \"push-secret\"\n",
    );
    let _ = extra;
    std::fs::write(&cfg, text).unwrap();
    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let client = reqwest::Client::new();
    let rss_before = rss_kib(gw.child.id());

    // s1 connects, subscribes to its commands and never reads again
    let mut stuck = tokio::net::TcpStream::connect(&mqtt).await.unwrap();
    stuck.write_all(&mqtt_connect("s1@app", "pw1")).await.unwrap();
    stuck.write_all(&mqtt_subscribe()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 50 HTTP clients start a request and never finish it
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(&web).await.unwrap();
        c.write_all(b"POST /v1/temp HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n{\"i\":")
            .await
            .unwrap();
        slow.push(c);
    }

    // The cloud sends s1 command after command (1 KiB each): its socket fills, then its
    // session queue, then its durable queue; the push answers say so, and nothing grows
    // without bound.
    let payload = base64_of(&vec![b'c'; 1024]);
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..(400 * scale()) {
        // each push names itself: the same body again would be taken for a replay
        let r = client
            .post(format!("http://{web}/api/commands/v1/push"))
            .bearer_auth("push-secret")
            .json(&serde_json::json!({"application": APP, "device": "s1", "command": "fill", "payload": payload, "id": format!("fill-{i}")}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        *answers.entry(r.status().as_u16()).or_insert(0u32) += 1;
    }
    assert!(answers.keys().all(|c| [200, 202, 503].contains(c)), "{answers:?}");
    assert!(answers.contains_key(&503), "the bounded queues fill up: {answers:?}");

    // Everyone else is served as usual.
    for i in 0..20 {
        assert_eq!(publish(&client, &web, 0, format!("{{\"i\":{i}}}")).await, 202);
    }
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    let ok = Command::new("mosquitto_pub")
        .args(["-h", host, "-p", port, "-u", "s0@app", "-P", "pw0", "-q", "1", "-t", "temp"])
        .args(["-m", "{\"i\":99}"])
        .status()
        .unwrap();
    assert!(ok.success(), "another MQTT sensor publishes");
    let rss_after = rss_kib(gw.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let s = status(&client, &web).await;
    assert!(s["commands"]["queued"].as_u64().unwrap() <= 100, "per-device bound: {s}");
    drop(slow);
    drop(stuck);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// A connection to `addr` from the attacker's own loopback address (127.0.0.2): the listeners
/// share their connection slots per source address, so a flood from the sensor's own address
/// would compete with it for that address's share (docs/security.md).
async fn stranger(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    socket.connect(addr.parse().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_from_many_connections_leaves_the_gateway_serving() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[mqtt]\nlisten = \"127.0.0.1:0\"\n\n[coap]\nlisten = \"127.0.0.1:0\"\n";
    let gw = Running::start(&config(dir.path(), &dir.path().join("data"), 2, extra), None);
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let coap = gw.listener_addr("coap");
    let client = reqwest::Client::new();
    let rss_before = rss_kib(gw.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    let mut attackers = Vec::new();
    for n in 0..12u64 {
        let (stop, sent, mqtt, web, coap) =
            (stop.clone(), sent.clone(), mqtt.clone(), web.clone(), coap.clone());
        attackers.push(tokio::spawn(async move {
            let mut noise = Noise(0x9E37_79B9_7F4A_7C15 ^ (n + 1));
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let len = 1 + noise.fill(1)[0] as usize * 4;
                let junk = noise.fill(len);
                match n % 3 {
                    // MQTT: random frames, and a CONNECT claiming a huge body
                    0 => {
                        if let Ok(mut c) = stranger(&mqtt).await {
                            let _ = c.write_all(&junk).await;
                            let _ = c.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await;
                        }
                    }
                    // CoAP: random datagrams, some with a CON header in front
                    1 => {
                        let mut d = junk.clone();
                        if d.len() > 4 && n % 2 == 0 {
                            d[0] = 0x40;
                            d[1] = 0x02;
                        }
                        let _ = udp.send_to(&d, &coap).await;
                    }
                    // HTTP: garbage, lies about lengths, broken credentials
                    _ => {
                        if let Ok(mut c) = stranger(&web).await {
                            let req: &[u8] = match junk[0] % 3 {
                                0 => &junk,
                                1 => b"POST /v1/t HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                                _ => b"POST /v1/t HTTP/1.1\r\nAuthorization: Basic !!!\r\nContent-Length: 2\r\n\r\n{}",
                            };
                            let _ = c.write_all(req).await;
                        }
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }

    // Legitimate traffic keeps flowing the whole time.
    let until = Instant::now() + Duration::from_secs(4 * u64::from(scale()));
    let mut i = 0u64;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let t0 = Instant::now();
        assert_eq!(publish(&client, &web, 0, format!("{{\"i\":{i}}}")).await, 202, "message {i}");
        slowest = slowest.max(t0.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{i} legitimate messages during the attack, the slowest took {slowest:?}; {} attacks",
        sent.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 500, "the attack ran");
    assert!(i > 20);

    // Still alive, and every protocol still works for real clients.
    assert!(gw.child.id() > 0);
    assert_eq!(client.get(format!("http://{web}/healthz")).send().await.unwrap().status(), 200);
    if have_mosquitto_clients() {
        // the attack's last connections may still fill `max_connections` for a moment: a
        // refused sensor reconnects, as real ones do
        let (host, port) = mqtt.rsplit_once(':').unwrap();
        let mut tries = 0;
        let ok = loop {
            tries += 1;
            let ok = Command::new("mosquitto_pub")
                .args(["-h", host, "-p", port, "-u", "s1@app", "-P", "pw1", "-q", "1"])
                .args(["-t", "temp", "-m", "{\"after\":true}"])
                .status()
                .unwrap();
            if ok.success() || tries == 10 {
                break ok;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(ok.success(), "MQTT after the attack ({tries} tries)");
    }
    let coap_client = ["coap-client-notls", "coap-client"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok());
    if let Some(bin) = coap_client {
        let (host, port) = coap.rsplit_once(':').unwrap();
        let basic = base64_of(b"s1@app:pw1");
        let out = Command::new(bin)
            .args(["-m", "post", "-O", &format!("4209,Basic {basic}"), "-e", "{\"after\":1}"])
            .arg(format!("coap://{host}:{port}/v1/temp"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CoAP after the attack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI: coap-client missing");
    }
    let s = status(&client, &web).await;
    assert!(s["mqtt"]["bad_frames"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["outbox"]["records_queued"].as_u64().unwrap(),
        i + 1 + u64::from(have_mosquitto_clients()),
        "{s}"
    );
    let rss_after = rss_kib(gw.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A TCP relay in front of the cloud that the test cuts and restores, so that one dev cloud
/// (and one event log) sees the whole run.
struct Link {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    async fn start(upstream: SocketAddr) -> Self {
        let mut link = Self { addr: free_addr(), upstream, task: None };
        link.restore().await;
        link
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every relayed connection.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_outage_at_a_steady_rate_loses_nothing_and_keeps_order() {
    let outage = Duration::from_secs(3 * u64::from(scale()));
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(4), CancellationToken::new())
        .await
        .unwrap();
    let mut link = Link::start(cloud.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = cloud_section(&format!("http://{}", link.addr));
    let gw = Running::start(&config(dir.path(), &dir.path().join("data"), 4, &extra), None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();

    // 100 messages/s spread over 4 sensors, before, during and after the outage
    let sending = Arc::new(AtomicBool::new(true));
    let producer = {
        let (client, web, sending) = (client.clone(), web.clone(), sending.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = [0u64; 4];
            let mut n = 0usize;
            while sending.load(Ordering::Relaxed) {
                tick.tick().await;
                let s = n % 4;
                let code = publish(&client, &web, s, format!("{{\"i\":{}}}", next[s])).await;
                assert_eq!(code, 202, "sensor {s} message {}", next[s]);
                next[s] += 1;
                n += 1;
            }
            next
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.cut().await;
    tokio::time::sleep(outage / 2).await;
    let s = status(&client, &web).await;
    assert_ne!(s["uplink"]["state"], "connected", "the outage is seen: {s}");
    tokio::time::sleep(outage / 2).await;
    link.restore().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sending.store(false, Ordering::Relaxed);
    let sent = producer.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&client, &web).await;
        if s["outbox"]["records_queued"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox did not drain: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = telemetry(&cloud);
    for (sensor, &count) in sent.iter().enumerate() {
        let name = format!("s{sensor}");
        let seqs: Vec<u64> =
            keys(&events).into_iter().filter(|(d, _)| *d == name).map(|(_, i)| i).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{name}: in order (a cut request may repeat, never overtake)");
        let unique: BTreeSet<u64> = seqs.into_iter().collect();
        assert_eq!(unique, (0..count).collect::<BTreeSet<_>>(), "{name}: every message arrived");
    }
}
