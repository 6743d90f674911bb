//! CoAP sensors, side by side in one run: N sensors (N = 1, 32, 256, 1,000), each its own UDP
//! socket with one CON POST in flight, (a) against the real `gatewayd` binary, which answers
//! 2.04 only after its durable outbox commit (`sync = "always"`), each request carrying option
//! 4209 with the sensor's own credentials, and (b) against libcoap's `coap-server-notls -d 10`
//! on the same machine (POST to a dynamic resource created first with PUT; without 4209, which
//! it rejects as an unknown critical option).
//!
//! `cargo bench -p gatewayd --bench coap_load` (env `BENCH_SECONDS`, default 3, per cell;
//! `BENCH_SENSORS`, default `1,32,256,1000`). The load generator runs on one thread so that it
//! takes the same share of the two cores in both columns.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::net::UdpSocket;

const APP: &str = "bench";
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A CON request: header, 2-byte token, options (Uri-Path, Content-Format, 4209), payload.
fn request(mid: u16, path: &str, auth: Option<&str>, method: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x42, method, (mid >> 8) as u8, mid as u8, (mid >> 8) as u8, mid as u8];
    let mut last = 0u16;
    let mut option = |b: &mut Vec<u8>, number: u16, value: &[u8]| {
        let delta = number - last;
        last = number;
        let nib = |v: usize| {
            if v < 13 {
                v
            } else if v < 269 {
                13
            } else {
                14
            }
        };
        let (d, l) = (nib(usize::from(delta)), nib(value.len()));
        b.push(((d << 4) | l) as u8);
        for (v, n) in [(usize::from(delta), d), (value.len(), l)] {
            match n {
                13 => b.push((v - 13) as u8),
                14 => b.extend_from_slice(&((v - 269) as u16).to_be_bytes()),
                _ => {}
            }
        }
        b.extend_from_slice(value);
    };
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        option(&mut b, 11, segment.as_bytes());
    }
    option(&mut b, 12, &[50]); // application/json
    if let Some(a) = auth {
        option(&mut b, 4209, a.as_bytes());
    }
    if !payload.is_empty() {
        b.push(0xff);
        b.extend_from_slice(payload);
    }
    b
}

struct Cell {
    ok: u64,
    failed: u64,
    retransmits: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// What one sensor did: latencies of its answered requests, failures, retransmissions.
#[derive(Default)]
struct Sensor {
    lat: Vec<Duration>,
    failed: u64,
    retransmits: u64,
}

/// One request until its final answer: retransmitted per RFC 7252 (2 s, doubling, 4 times);
/// an empty ACK means a separate response follows, which is acknowledged.
async fn exchange(socket: &UdpSocket, req: &[u8], want: u8, s: &mut Sensor) -> bool {
    let mid = [req[2], req[3]];
    let token = [req[4], req[5]];
    let mut buf = [0u8; 1500];
    let mut timeout = ACK_TIMEOUT;
    socket.send(req).await.unwrap();
    for attempt in 0..=4 {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(Ok(n)) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await else {
                break;
            };
            if n < 4 {
                continue;
            }
            let kind = (buf[0] >> 4) & 3;
            let code = buf[1];
            if kind == 2 && buf[2..4] == mid && code == 0 {
                continue; // empty ACK: the answer comes separately
            }
            if n >= 6 && buf[4..6] == token {
                if kind == 0 {
                    // a separate CON response: acknowledge it
                    socket.send(&[0x60, 0, buf[2], buf[3]]).await.unwrap();
                }
                return code == want;
            }
        }
        if attempt < 4 {
            s.retransmits += 1;
            timeout *= 2;
            socket.send(req).await.unwrap();
        }
    }
    false
}

/// `sensors` sockets, one CON POST in flight each, for `secs`.
async fn load(server: SocketAddr, sensors: usize, secs: f64, gatewayd: bool) -> Cell {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sensors {
        let stop = stop.clone();
        tasks.spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(server).await.unwrap();
            let auth = format!("Basic {}", STANDARD.encode(format!("s{i}@{APP}:pw")));
            let (path, auth) =
                if gatewayd { ("/v1/bench", Some(auth.as_str())) } else { ("/load", None) };
            let mut s = Sensor::default();
            let mut mid = (i as u16).wrapping_mul(7919);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                mid = mid.wrapping_add(1);
                let body = format!("{{\"n\":{n:>10},\"pad\":\"{}\"}}", "x".repeat(70));
                let req = request(mid, path, auth, 2, body.as_bytes());
                let t = Instant::now();
                if exchange(&socket, &req, 0x44, &mut s).await {
                    s.lat.push(t.elapsed());
                } else {
                    s.failed += 1;
                }
            }
            s
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut failed, mut retransmits) = (0, 0);
    while let Some(s) = tasks.join_next().await {
        let s = s.unwrap();
        all.extend(s.lat);
        failed += s.failed;
        retransmits += s.retransmits;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Cell { ok: all.len() as u64, failed, retransmits, secs, p50: q(0.50), p99: q(0.99) }
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// libcoap's server with dynamic resources; `/load` created with PUT before the run.
async fn start_libcoap() -> (Child, SocketAddr) {
    let port = free_udp_port();
    let child = Command::new("coap-server-notls")
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-server-notls (Debian libcoap3-bin) is needed for this benchmark");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let mut s = Sensor::default();
    // until it listens, a connected socket sees the ICMP refusals as receive errors
    for mid in 1..100u16 {
        // 2.01 Created (or 2.04 Changed when it exists already)
        let put = request(mid, "/load", None, 3, b"{}");
        socket.send(&put).await.unwrap();
        let mut buf = [0u8; 1500];
        match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 4 && (buf[1] == 0x41 || buf[1] == 0x44) => {
                let post = request(mid + 100, "/load", None, 2, b"{}");
                assert!(exchange(&socket, &post, 0x44, &mut s).await, "POST /load refused");
                return (child, addr);
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {}
        }
    }
    panic!("coap-server-notls did not create /load");
}

fn start_gatewayd(dir: &std::path::Path, sensors: usize) -> (Child, SocketAddr, String) {
    let mut config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [store]\nmax_bytes = \"4GiB\"\nsync = \"always\"\n\n\
         [coap]\nlisten = \"127.0.0.1:0\"\nrate_limit = 1000000\nrate_burst = 1000000\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,gatewayd::wiring=info\"\n",
        dir.join("data").display().to_string()
    );
    for s in 0..sensors {
        config.push_str(&format!("\n[[devices]]\nname = \"s{s}\"\npassword = \"pw\"\n"));
    }
    let path = dir.join("gatewayd.toml");
    std::fs::write(&path, config).unwrap();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines().map_while(Result::ok);
    let (mut coap, mut web) = (None, None);
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match v["listener"].as_str() {
            Some("coap") => coap = v["addr"].as_str().map(|a| a.parse().unwrap()),
            Some("web") => web = v["addr"].as_str().map(|a| format!("http://{a}")),
            _ => {}
        }
        if coap.is_some() && web.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(|l| eprintln!("gatewayd: {l}")));
    (gw, coap.expect("gatewayd reported its CoAP address"), web.unwrap())
}

async fn outbox_commits(web: &str) -> u64 {
    let status: serde_json::Value =
        reqwest::get(format!("{web}/api/v1/status")).await.unwrap().json().await.unwrap();
    status["outbox"]["commits"].as_u64().unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let counts: Vec<usize> = std::env::var("BENCH_SENSORS")
        .unwrap_or_else(|_| "1,32,256,1000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let max = counts.iter().copied().max().unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, gw_addr, web) = start_gatewayd(dir.path(), max);
    // the credential chain hashes every static device at start-up; wait until it answers
    let mut warm = Sensor::default();
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(gw_addr).await.unwrap();
    let auth = format!("Basic {}", STANDARD.encode(format!("s0@{APP}:pw")));
    assert!(
        exchange(&probe, &request(1, "/v1/bench", Some(&auth), 2, b"{}"), 0x44, &mut warm).await
    );
    let (mut libcoap, libcoap_addr) = start_libcoap().await;

    println!(
        "CoAP CON POST, 100-byte JSON, N sensors with one request in flight each, {secs} s per cell"
    );
    println!(
        "| N | server | answered req/s | p50 ms | p99 ms | failed | retransmits | server CPU | generator CPU | durable bound N ÷ commit latency |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        // first round: every sensor's first login is checked against its hash (not timed)
        load(gw_addr, n, 0.5, true).await;
        let me = std::process::id();
        let (cpu0, commits0, gen0) = (cpu_secs(gw.id()), outbox_commits(&web).await, cpu_secs(me));
        let g = load(gw_addr, n, secs, true).await;
        let (cpu1, commits1, gen1) = (cpu_secs(gw.id()), outbox_commits(&web).await, cpu_secs(me));
        let commit_latency = g.secs / (commits1 - commits0).max(1) as f64;
        println!(
            "| {n} | gatewayd (4209, ack after fdatasync) | {:.0} | {} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} (commit {:.2} ms) |",
            g.ok as f64 / g.secs,
            ms(g.p50),
            ms(g.p99),
            g.failed,
            g.retransmits,
            (cpu1 - cpu0) / g.secs * 100.0,
            (gen1 - gen0) / g.secs * 100.0,
            n as f64 / commit_latency,
            commit_latency * 1000.0,
        );
        let (cpu0, gen0) = (cpu_secs(libcoap.id()), cpu_secs(me));
        let l = load(libcoap_addr, n, secs, false).await;
        let (cpu1, gen1) = (cpu_secs(libcoap.id()), cpu_secs(me));
        println!(
            "| {n} | coap-server-notls -d 10 (no 4209, in memory) | {:.0} | {} | {} | {} | {} | {:.0} % | {:.0} % | – |",
            l.ok as f64 / l.secs,
            ms(l.p50),
            ms(l.p99),
            l.failed,
            l.retransmits,
            (cpu1 - cpu0) / l.secs * 100.0,
            (gen1 - gen0) / l.secs * 100.0,
        );
    }
    let _ = gw.kill();
    let _ = gw.wait();
    let _ = libcoap.kill();
    let _ = libcoap.wait();
}
