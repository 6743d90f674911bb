//! CoAP CON POST, side by side in one run: N sensors, each its own UDP socket with one CON POST
//! in flight, (a) against gatewayd, which answers 2.04 only after its durable outbox commit,
//! each request carrying option 4209 with the sensor's own credentials, and (b) against libcoap's
//! `coap-server-notls -d 10` (POST to a dynamic resource created first with PUT; without 4209,
//! which it rejects as an unknown critical option). The load generator runs on one thread of its
//! own runtime so that it takes the same share of the two cores in both columns.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::net::UdpSocket;

use crate::{
    mqtt::APP,
    util::{self, Gatewayd, Proc, Table, cpu_secs, ratio, thousands},
};

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
    let _ = socket.send(req).await;
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
                    let _ = socket.send(&[0x60, 0, buf[2], buf[3]]).await;
                }
                return code == want;
            }
        }
        if attempt < 4 {
            s.retransmits += 1;
            timeout *= 2;
            let _ = socket.send(req).await;
        }
    }
    false
}

/// `sensors` sockets, one CON POST in flight each, for `secs`.
async fn load(
    server: SocketAddr,
    sensors: usize,
    secs: f64,
    gatewayd: bool,
) -> anyhow::Result<Cell> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sensors {
        let stop = stop.clone();
        tasks.spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(server).await?;
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
            Ok::<_, std::io::Error>(s)
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut failed, mut retransmits) = (0, 0);
    while let Some(s) = tasks.join_next().await {
        let s = s??;
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
    Ok(Cell { ok: all.len() as u64, failed, retransmits, secs, p50: q(0.50), p99: q(0.99) })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// libcoap's server with dynamic resources; `/load` created with PUT before the run.
async fn start_libcoap() -> anyhow::Result<(Proc, SocketAddr)> {
    let port = util::free_udp_port();
    let child = Command::new("coap-server-notls")
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("coap-server-notls (Debian libcoap3-bin) is needed for this benchmark")?;
    let child = Proc(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let mut s = Sensor::default();
    // until it listens, a connected socket sees the ICMP refusals as receive errors
    for mid in 1..100u16 {
        // 2.01 Created (or 2.04 Changed when it exists already)
        let put = request(mid, "/load", None, 3, b"{}");
        socket.send(&put).await?;
        let mut buf = [0u8; 1500];
        match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 4 && (buf[1] == 0x41 || buf[1] == 0x44) => {
                let post = request(mid + 100, "/load", None, 2, b"{}");
                if !exchange(&socket, &post, 0x44, &mut s).await {
                    bail!("coap-server-notls refused POST /load");
                }
                return Ok((child, addr));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {}
        }
    }
    bail!("coap-server-notls did not create /load")
}

fn start_gatewayd(dir: &Path, sensors: usize) -> anyhow::Result<Gatewayd> {
    let config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [store]\nmax_bytes = \"4GiB\"\nsync = \"always\"\n\n\
         [coap]\nlisten = \"127.0.0.1:0\"\nrate_limit = 1000000\nrate_burst = 1000000\n\n\
         [auth]\nargon2_memory_kib = 64\n\n[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"bench-api-token-0123\"\n{}",
        dir.join("coap-data").display().to_string(),
        (0..sensors)
            .map(|s| format!("\n[[devices]]\nname = \"s{s}\"\npassword = \"pw\"\n"))
            .collect::<String>()
    );
    Gatewayd::start(dir, "coap-gatewayd", &config, &["coap", "web"], Duration::from_secs(120))
}

async fn outbox_commits(gw: &Gatewayd) -> anyhow::Result<u64> {
    Ok(gw.status().await?["outbox"]["commits"].as_u64().unwrap_or(0))
}

/// N = each of `counts`; the generator on its own current-thread runtime.
pub fn scenario(dir: &Path, secs: f64, counts: &[usize]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(dir, secs, counts))
}

async fn run(dir: &Path, secs: f64, counts: &[usize]) -> anyhow::Result<()> {
    let max = counts.iter().copied().max().unwrap_or(1);
    // one core each, as the paced MQTT cells: the servers on CPU 0, this generator on CPU 1
    // (gatewayd starts on CPU 1 only, so its runtime has one worker, then moves to CPU 0)
    crate::mqtt::pin(std::process::id(), "1")?;
    let gw = start_gatewayd(dir, max)?;
    crate::mqtt::pin(gw.proc.pid(), "0")?;
    let gw_addr = gw.addr("coap")?;
    // the first request waits until the static devices are hashed
    let mut warm = Sensor::default();
    let probe = UdpSocket::bind("127.0.0.1:0").await?;
    probe.connect(gw_addr).await?;
    let auth = format!("Basic {}", STANDARD.encode(format!("s0@{APP}:pw")));
    if !exchange(&probe, &request(1, "/v1/bench", Some(&auth), 2, b"{}"), 0x44, &mut warm).await {
        bail!("gatewayd did not accept the first CoAP POST");
    }
    let (libcoap, libcoap_addr) = start_libcoap().await?;
    crate::mqtt::pin(libcoap.pid(), "0")?;
    println!(
        "\n## CoAP CON POST\n\n100-byte JSON, N sensors with one CON request in flight each, \
         {secs} s per cell; gatewayd checks option 4209 and answers after fdatasync, libcoap \
         keeps the resource in memory. Each server pinned to CPU 0, the generator to CPU 1."
    );
    let table = Table::new(
        "CoAP CON POST",
        &[
            "N",
            "server",
            "answered req/s",
            "p50 ms",
            "p99 ms",
            "failed",
            "retransmits",
            "server CPU",
            "generator CPU",
            "commit cycle ms",
            "disk bound max(1, N/2) ÷ fdatasync p50",
            "gatewayd ÷ libcoap",
        ],
    );
    let me = std::process::id();
    for &n in counts {
        // every sensor's first login is checked against its hash (not timed)
        load(gw_addr, n, 0.5, true).await?;
        let (cpu0, commits0, gen0) =
            (cpu_secs(gw.proc.pid()), outbox_commits(&gw).await?, cpu_secs(me));
        let g = load(gw_addr, n, secs, true).await?;
        let (cpu1, commits1, gen1) =
            (cpu_secs(gw.proc.pid()), outbox_commits(&gw).await?, cpu_secs(me));
        let commit_cycle = g.secs / commits1.saturating_sub(commits0).max(1) as f64;
        // what the disk allows a durable answer: a commit carries about half of what is in
        // flight (the other half forms while it syncs), and takes at least one fdatasync
        let sync = util::fdatasync_p50(dir, 200)?.as_secs_f64().max(1e-6);
        let bound = (n as f64 / 2.0).max(1.0) / sync;
        let (cpu2, gen2) = (cpu_secs(libcoap.pid()), cpu_secs(me));
        let l = load(libcoap_addr, n, secs, false).await?;
        let (cpu3, gen3) = (cpu_secs(libcoap.pid()), cpu_secs(me));
        let (g_rate, l_rate) = (g.ok as f64 / g.secs, l.ok as f64 / l.secs);
        table.row(&[
            n.to_string(),
            "gatewayd (4209, ack after fdatasync)".into(),
            thousands(g_rate),
            ms(g.p50),
            ms(g.p99),
            g.failed.to_string(),
            g.retransmits.to_string(),
            format!("{:.0} %", (cpu1 - cpu0) / g.secs * 100.0),
            format!("{:.0} %", (gen1 - gen0) / g.secs * 100.0),
            format!("{:.2}", commit_cycle * 1e3),
            format!(
                "{} ({:.2} ms; gatewayd at {:.0} %)",
                thousands(bound),
                sync * 1e3,
                100.0 * g_rate / bound
            ),
            ratio(g_rate, l_rate),
        ]);
        table.row(&[
            n.to_string(),
            "coap-server-notls -d 10 (in memory)".into(),
            thousands(l_rate),
            ms(l.p50),
            ms(l.p99),
            l.failed.to_string(),
            l.retransmits.to_string(),
            format!("{:.0} %", (cpu3 - cpu2) / l.secs * 100.0),
            format!("{:.0} %", (gen3 - gen2) / l.secs * 100.0),
            "–".into(),
            "–".into(),
            String::new(),
        ]);
    }
    Ok(())
}
