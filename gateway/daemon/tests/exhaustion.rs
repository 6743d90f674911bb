//! Strangers cannot exhaust the gateway. The real binary, under `prlimit --nofile=1024` (the
//! soft limit systemd gives a service by default, here as the hard limit too), is attacked
//! from a loopback address of its own (127.0.0.2) with raw sockets and no credentials, one
//! attack after the other, while legitimate sensors of the site (127.0.0.1) publish with the
//! independent clients they would use: mosquitto_pub, coap-client-notls and curl. Sensors that
//! published before the attack and sensors that appear during it must both get through.
//!
//! 1. CoAP peer flood: credential-less POSTs, each from a new source port.
//! 2. Slowloris on the web listener: 1,100 sockets that send nothing or a header line every
//!    few seconds, reopened as they are closed.
//! 3. MQTT connection slots: 1,100 idle TCP connections, reopened as they are closed.
//! 4. CoAP block-wise memory: first blocks of large uploads, without and with bad credentials.
//! 5. Log flooding: refused MQTT CONNECTs, refused HTTP posts and CoAP posts as fast as the
//!    attacker can send them.
//!
//! For each: at least 99 % of the legitimate publishes succeed on every protocol, the
//! gateway's RSS grows by less than [`RSS_GROWTH_BOUND`], and its log by less than 1 MB per
//! minute. The numbers are printed (`--nocapture`) for docs/security.md.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{BIN, Running, have_mosquitto_clients, write};
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const SENSORS: usize = 100;
/// Legitimate publishes per protocol during one attack, at least (one per sensor).
const LEGIT: usize = 100;

/// How long each attack runs: `GATEWAYD_ATTACK_SECONDS` (8 by default; 60 for the numbers in
/// docs/security.md). The legitimate sensors publish round after round until it is over.
fn attack_time() -> Duration {
    let secs = std::env::var("GATEWAYD_ATTACK_SECONDS").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(8))
}
/// How much the gateway's resident memory may grow during one attack (docs/security.md).
const RSS_GROWTH_BOUND: u64 = 48 * 1024 * 1024;
/// The attacker's own address.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

fn have_tools() -> bool {
    let ok = have_mosquitto_clients()
        && Command::new("coap-client-notls").arg("-h").output().is_ok()
        && Command::new("prlimit").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_pub, coap-client-notls or prlimit missing in CI"
        );
        eprintln!("SKIP: mosquitto-clients, libcoap3-bin or prlimit not installed");
    }
    ok
}

fn password(i: usize) -> String {
    format!("pw-s{i}")
}

struct Site {
    gw: Running,
    web: String,
    mqtt: String,
    coap: String,
    /// Summary lines of the rate-limited warnings seen so far.
    summaries: std::sync::Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
    _cloud: DevCloud,
    _rt: tokio::runtime::Runtime,
}

impl Site {
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.gw.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Bytes the gateway logged since the last call.
    fn log_bytes(&self) -> u64 {
        let mut n = 0;
        while let Ok(line) = self.gw.lines.try_recv() {
            n += line.len() as u64 + 1;
            if line.contains("not logged one by one") {
                self.summaries.lock().unwrap().push(line);
            }
        }
        n
    }
}

/// What the legitimate sensors saw during one attack.
#[derive(Default)]
struct Legit {
    ok: [usize; 3],
    tries: [usize; 3],
    latencies: [Vec<Duration>; 3],
    failures: Vec<String>,
}

const PROTOCOLS: [&str; 3] = ["mqtt", "coap", "http"];

impl Legit {
    fn record(&mut self, protocol: usize, took: Duration, result: Result<(), String>) {
        self.tries[protocol] += 1;
        match result {
            Ok(()) => {
                self.ok[protocol] += 1;
                self.latencies[protocol].push(took);
            }
            Err(e) => self.failures.push(format!("{}: {e}", PROTOCOLS[protocol])),
        }
    }

    fn p99(&self, protocol: usize) -> Duration {
        let mut l = self.latencies[protocol].clone();
        l.sort();
        l.get((l.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
    }
}

fn mqtt_publish(mqtt: &str, sensor: usize, n: usize) -> Result<(), String> {
    let (host, port) = mqtt.rsplit_once(':').unwrap();
    let out = Command::new("mosquitto_pub")
        .args(["-h", host, "-p", port, "-V", "mqttv311", "-q", "1"])
        .args(["-i", &format!("legit-{sensor}-{n}"), "-u", &format!("s{sensor}@{APP}")])
        .args(["-P", &password(sensor), "-t", "temperature", "-m", &format!("{{\"n\":{n}}}")])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn coap_publish(coap: &str, sensor: usize, payload: &str) -> Result<(), String> {
    let auth =
        format!("4209,Basic {}", STANDARD.encode(format!("s{sensor}@{APP}:{}", password(sensor))));
    let file =
        std::env::temp_dir().join(format!("exhaustion-coap-{}-{sensor}", std::process::id()));
    std::fs::write(&file, payload).unwrap();
    let out = Command::new("coap-client-notls")
        .args(["-B", "20", "-m", "post", "-b", "1024", "-O", &auth, "-f"])
        .arg(&file)
        .arg(format!("coap://{coap}/v1/temperature"))
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // coap-client prints the code of an error answer (4.xx, 5.xx); a 2.04 prints nothing
    let refused = text.split_whitespace().any(|w| w.starts_with("4.") || w.starts_with("5."));
    if out.status.success() && !refused && !text.contains("timeout") {
        Ok(())
    } else {
        Err(text.trim().to_owned())
    }
}

fn http_publish(web: &str, sensor: usize, n: usize) -> Result<(), String> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
        .args(["-u", &format!("s{sensor}@{APP}:{}", password(sensor))])
        .args(["-H", "content-type: application/json", "-d", &format!("{{\"n\":{n}}}")])
        .arg(format!("http://{web}/v1/temperature"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if code == "202" { Ok(()) } else { Err(format!("HTTP {code}")) }
}

fn healthz(web: &str) -> Result<(), String> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
        .arg(format!("http://{web}/healthz"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if code == "200" { Ok(()) } else { Err(format!("/healthz: HTTP {code}")) }
}

/// The legitimate load: `LEGIT` publishes per protocol, round robin over the sensors (the
/// first half published before the attack, the second half appears during it), and more
/// rounds until `until`. `block`: CoAP payloads large enough for a block-wise upload.
fn legit_load(site: &Site, block: bool, until: Instant) -> Legit {
    let mut legit = Legit::default();
    for n in (0..).take_while(|n| *n < LEGIT || Instant::now() < until) {
        // at most 20 rounds a second: 100 sensors that each report every few seconds
        let round = Instant::now();
        let sensor = n % SENSORS + 1;
        let t = Instant::now();
        let r = mqtt_publish(&site.mqtt, sensor, n);
        legit.record(0, t.elapsed(), r);
        let payload = if block {
            format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(3000))
        } else {
            format!("{{\"n\":{n}}}")
        };
        let t = Instant::now();
        let r = coap_publish(&site.coap, sensor, &payload);
        legit.record(1, t.elapsed(), r);
        let t = Instant::now();
        let r = http_publish(&site.web, sensor, n).and_then(|()| healthz(&site.web));
        legit.record(2, t.elapsed(), r);
        if let Some(rest) = Duration::from_millis(50).checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    legit
}

fn attacker_tcp(addr: &str) -> Option<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((ATTACKER, 0)).into()).ok()?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2)).ok()?;
    let s: TcpStream = socket.into();
    s.set_nonblocking(true).ok()?;
    Some(s)
}

fn attacker_udp() -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((ATTACKER, 0))).unwrap()
}

/// A CoAP CON POST to `/v1/<resource>`; `block1`: the option value of a first block (the
/// payload then 1024 bytes).
fn coap_datagram(mid: u16, auth: Option<&str>, block1: Option<u8>, resource: &str) -> Vec<u8> {
    let payload: &[u8] = if block1.is_some() { &[b'a'; 1024] } else { b"{\"x\":1}" };
    common::coap_post(mid, resource, auth, block1, payload)
}

/// Attack 1: credential-less CoAP POSTs, each from a new source port (~5,000 a second).
fn coap_peer_flood(coap: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let target: SocketAddr = coap.parse().unwrap();
    let mut mid = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for _ in 0..50 {
            let s = attacker_udp();
            mid = mid.wrapping_add(1);
            let _ = s.send_to(&coap_datagram(mid, None, None, "temperature"), target);
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(rest) = Duration::from_millis(10).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Keeps `count` attacker sockets open to `addr`, reopening closed ones; every `every`, half
/// of them send `line` (the other half never send anything).
fn hold_sockets(
    addr: String,
    count: usize,
    line: &'static [u8],
    every: Duration,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) {
    let mut sockets: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut last_line = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let send_now = last_line.elapsed() >= every;
        if send_now {
            last_line = Instant::now();
        }
        for (i, slot) in sockets.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let alive = match slot {
                Some(s) => {
                    let mut b = [0u8; 64];
                    let closed = match s.read(&mut b) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    let failed = send_now && i % 2 == 0 && s.write_all(line).is_err();
                    !(closed || failed)
                }
                None => false,
            };
            if !alive {
                *slot = attacker_tcp(&addr);
                if slot.is_some() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Attack 4: first blocks of 1 KiB (more to come) to ever new resources, from new ports;
/// one in ten with credentials that do not pass.
fn coap_block_flood(coap: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let target: SocketAddr = coap.parse().unwrap();
    let bad = format!("Basic {}", STANDARD.encode(format!("s1@{APP}:wrong")));
    let mut mid = 0u16;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let s = attacker_udp();
        for _ in 0..20 {
            mid = mid.wrapping_add(1);
            n += 1;
            let auth = n.is_multiple_of(10).then_some(bad.as_str());
            // Block1 num 0, more, szx 6 (1024 bytes): 0b0000_1110
            let d = coap_datagram(mid, auth, Some(0x0e), &format!("r{n}"));
            let _ = s.send_to(&d, target);
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(rest) = Duration::from_millis(10).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Attack 5: refused connections and requests on every protocol, as fast as they go.
fn refusal_flood(site: (String, String, String), stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let (mqtt, web, coap) = site;
    let coap: SocketAddr = coap.parse().unwrap();
    let udp = attacker_udp();
    let bad = format!("Basic {}", STANDARD.encode("nobody@my-app:x"));
    let mut mid = 0u16;
    while !stop.load(Ordering::Relaxed) {
        // a CONNECT that is not MQTT
        if let Some(mut s) = attacker_tcp(&mqtt) {
            let _ = s.write_all(b"\x10\x05junk!");
        }
        // an HTTP post with credentials that do not pass
        if let Some(mut s) = attacker_tcp(&web) {
            let req = format!(
                "POST /v1/temperature HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            let _ = s.write_all(req.as_bytes());
        }
        for _ in 0..10 {
            mid = mid.wrapping_add(1);
            let _ = udp.send_to(&coap_datagram(mid, Some(&bad), None, "temperature"), coap);
            let _ = udp.send_to(&coap_datagram(mid.wrapping_add(30_000), None, None, "t"), coap);
        }
        sent.fetch_add(22, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start_site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut seed = Seed::new().user("admin", "api-token").application(APP).password_device(
        APP,
        "gw1",
        "gw-secret",
    );
    for i in 1..=SENSORS {
        seed = seed.sensor(APP, &format!("s{i}"), Some(&password(i)), &["gw1"]);
    }
    let cloud = rt.block_on(async {
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
            .await
            .unwrap()
    });
    let url = cloud.url();
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = \"gw-secret\"\n\n\
         [registry]\nurl = {url:?}\ntoken = \"api-token\"\ninterval = \"1s\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[coap]\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = {:?}\n\n[log]\nformat = \"json\"\n",
        dir.path().join("data").display().to_string(),
        common::API_TOKEN,
    );
    let config = write(dir.path(), "gatewayd.toml", &text);
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024", "--", BIN, "run", "--config", &config]);
    let gw = Running::spawn(cmd);
    // logged before the listeners bind: the caps were fitted to 1,024 descriptors
    let caps = gw.wait_for("connection cap lowered", Duration::from_secs(20));
    assert!(caps.contains("LimitNOFILE"), "{caps}");
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let coap = gw.listener_addr("coap");
    Site {
        gw,
        web,
        mqtt,
        coap,
        summaries: std::sync::Mutex::default(),
        _dir: dir,
        _cloud: cloud,
        _rt: rt,
    }
}

/// Runs `attack` beside the legitimate load and checks and prints the outcome.
fn under_attack(
    site: &Site,
    name: &str,
    block: bool,
    attack: impl FnOnce(Arc<AtomicBool>, Arc<AtomicU64>) + Send + 'static,
) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let rss_before = site.rss();
    site.log_bytes();
    let started = Instant::now();
    let attacker = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || attack(stop, count))
    };
    // the attack takes hold before the sensors come
    std::thread::sleep(Duration::from_secs(2));
    let legit = legit_load(site, block, started + attack_time());
    let rss_peak = site.rss();
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let took = started.elapsed();
    let logged = site.log_bytes();
    let per_minute = logged as f64 * 60.0 / took.as_secs_f64();
    let line = format!(
        "{name}: {} attack packets/connections in {:.1} s; legit ok mqtt {}/{} (p99 {} ms), coap {}/{} (p99 {} ms), http+healthz {}/{} (p99 {} ms); RSS {:.1} -> {:.1} MiB; log {:.0} KB/min",
        count.load(Ordering::Relaxed),
        took.as_secs_f64(),
        legit.ok[0],
        legit.tries[0],
        legit.p99(0).as_millis(),
        legit.ok[1],
        legit.tries[1],
        legit.p99(1).as_millis(),
        legit.ok[2],
        legit.tries[2],
        legit.p99(2).as_millis(),
        rss_before as f64 / 1048576.0,
        rss_peak as f64 / 1048576.0,
        per_minute / 1000.0,
    );
    eprintln!("{line}");
    for (p, name_p) in PROTOCOLS.iter().enumerate() {
        assert!(
            legit.ok[p] * 100 >= legit.tries[p] * 99,
            "{name}: {name_p}: {} of {} legitimate publishes failed: {:?}",
            legit.tries[p] - legit.ok[p],
            legit.tries[p],
            legit.failures
        );
    }
    assert!(
        rss_peak < rss_before + RSS_GROWTH_BOUND,
        "{name}: RSS grew from {rss_before} to {rss_peak}"
    );
    assert!(per_minute < 1_000_000.0, "{name}: the log grew by {per_minute:.0} bytes a minute");
    line
}

#[test]
fn strangers_cannot_exhaust_the_gateway() {
    if !have_tools() {
        return;
    }
    // the attacker holds more sockets than the default soft limit allows
    gw_net::fds::raise_limit();
    let site = start_site();
    // the sensors of the first half publish once before any attack (and the registry has
    // synced them)
    let deadline = Instant::now() + Duration::from_secs(30);
    for sensor in 1..=SENSORS / 2 {
        while let Err(e) = mqtt_publish(&site.mqtt, sensor, 0) {
            assert!(Instant::now() < deadline, "the sensors never got in: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        coap_publish(&site.coap, sensor, "{\"n\":0}").unwrap();
        http_publish(&site.web, sensor, 0).unwrap();
    }

    let mut report = Vec::new();
    let coap = site.coap.clone();
    report.push(under_attack(&site, "CoAP peer flood", false, move |stop, n| {
        coap_peer_flood(coap, stop, n)
    }));
    let web = site.web.clone();
    report.push(under_attack(&site, "slowloris (web)", false, move |stop, n| {
        hold_sockets(web, 1100, b"X-Slow: 1\r\n", Duration::from_secs(5), stop, n)
    }));
    let mqtt = site.mqtt.clone();
    report.push(under_attack(&site, "idle MQTT connections", false, move |stop, n| {
        hold_sockets(mqtt, 1100, b"", Duration::from_secs(3600), stop, n)
    }));
    let coap = site.coap.clone();
    report.push(under_attack(&site, "CoAP first blocks", true, move |stop, n| {
        coap_block_flood(coap, stop, n)
    }));
    let targets = (site.mqtt.clone(), site.web.clone(), site.coap.clone());
    report.push(under_attack(&site, "refusal flood (log)", false, move |stop, n| {
        refusal_flood(targets, stop, n)
    }));
    // busy under the floods is not unhealthy: every accept loop still runs
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            &format!("Authorization: Bearer {}", common::API_TOKEN),
        ])
        .arg(format!("http://{}/api/v1/status", site.web))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 3, "{listeners:?}");
    assert!(listeners.iter().all(|l| l["accepting"] == true), "{listeners:?}");
    // the summaries name the attacker
    std::thread::sleep(gw_net::Throttle::INTERVAL + Duration::from_secs(1));
    site.log_bytes();
    let summaries = site.summaries.lock().unwrap().clone();
    assert!(summaries.iter().any(|l| l.contains("127.0.0.2")), "{summaries:?}");
    eprintln!("{}", report.join("\n"));
}

/// Reads until the gateway closes `s` (or `limit` passes); whether it closed, and when.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn slow_web_clients_are_closed_after_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n\n\
         [log]\nformat = \"json\"\n\n[[devices]]\nname = \"s1\"\npassword = \"pw-s1\"\n",
        dir.path().join("data").display().to_string()
    );
    let gw = Running::start(&write(dir.path(), "gatewayd.toml", &text), None);
    let web = gw.web_addr();
    // nothing at all, and a header line every 300 ms: closed after header_timeout
    let mut silent = TcpStream::connect(&web).unwrap();
    let mut trickle = TcpStream::connect(&web).unwrap();
    trickle.write_all(b"POST /v1/t HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut closed = None;
    while started.elapsed() < Duration::from_secs(5) && closed.is_none() {
        std::thread::sleep(Duration::from_millis(300));
        if trickle.write_all(b"X-Slow: 1\r\n").is_err() {
            closed = Some(started.elapsed());
        }
    }
    let took = closed.expect("a header trickling in was never cut off");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let took = closed_within(&mut silent, Duration::from_secs(5)).expect("a silent socket is kept");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // a body trickling in: the request fails after body_timeout, the connection closes
    let mut body = TcpStream::connect(&web).unwrap();
    let auth = STANDARD.encode(format!("s1@{APP}:pw-s1"));
    let head = format!(
        "POST /v1/t HTTP/1.1\r\nHost: gw\r\nAuthorization: Basic {auth}\r\nContent-Length: 100\r\n\r\n{{"
    );
    body.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    body.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while started.elapsed() < Duration::from_secs(5) {
        let _ = body.write_all(b" ");
        let mut buf = [0u8; 512];
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3), "the trickling body was never cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 202 "), "a body that never arrived is not stored: {answer}");
    // and a client that takes its time within the limits is served
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", &format!("s1@{APP}:pw-s1")])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(format!("http://{web}/v1/t"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");
}
