//! QoS 1 forwarding of 100-byte MQTT publishes, side by side in one run:
//! (a) the real `gatewayd` binary: MQTT endpoint → durable outbox (`sync = "always"`, PUBACK
//!     after fdatasync) → generic MQTT uplink (`[cloud] kind = "mqtt"`), and
//! (b) mosquitto as a bridge: a second mosquitto with a `connection` block forwarding `#` at
//!     QoS 1,
//! both into the same upstream. The load generator and the upstream sink are in this file:
//! N publishers with W QoS 1 publishes in flight each; the sink is a minimal MQTT server that
//! acknowledges every publish and counts exactly, per publisher, what arrived; its own ceiling
//! is measured in the same run by loading it directly. A message is lost when a publisher got
//! its PUBACK and it never reached the sink. Then the best cell is repeated with a real
//! mosquitto as the upstream (counted through its `$SYS` counter), and end-to-end latency
//! p50/p99 is measured at paced 1,000 and 10,000 msg/s with a QoS 1 subscriber on it.
//!
//! `cargo bench -p gatewayd --bench mqtt_bridge` (env `BENCH_SECONDS`, default 2, per cell;
//! `BENCH_CELLS=100x32,10x32` runs only those cells of the matrix; the whole run takes about
//! 3-4 minutes). Needs `/usr/sbin/mosquitto`. Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener as StdListener},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::{
    Error as MqttError, QoS,
    v4::{
        ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, SubAck, Subscribe,
        SubscribeReasonCode,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const APP: &str = "bench";
const PAYLOAD: usize = 100;
const MAX_PACKET: usize = 1 << 20;
const MAX_PUBLISHERS: usize = 100;
/// How long to wait for forwarded messages after the load stops.
const DRAIN: Duration = Duration::from_secs(15);
/// Each cell's run id, carried in every payload.
static NEXT_RUN: AtomicU32 = AtomicU32::new(1);

// ---------------------------------------------------------------- payload

/// `P`, run (u32), publisher (u32), sequence (u32), send time in µs since the epoch (u64),
/// padding. The run id keeps a late arrival of an earlier cell from counting in this one.
fn payload(run: u32, publisher: u32, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PAYLOAD);
    b.put_u8(b'P');
    b.put_u32(run);
    b.put_u32(publisher);
    b.put_u32(seq);
    b.put_u64(now_us());
    b.resize(PAYLOAD, b'x');
    b.freeze()
}

fn parse(p: &[u8]) -> Option<(u32, u32, u32, u64)> {
    if p.len() != PAYLOAD || p[0] != b'P' {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
    let ts = u64::from_be_bytes(p[13..21].try_into().unwrap());
    Some((u32_at(1), u32_at(5), u32_at(9), ts))
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

// ---------------------------------------------------------------- counting

/// What arrived, exactly: a bit per (publisher, sequence).
#[derive(Default)]
struct Counts {
    /// The cell being counted; arrivals of other runs are only counted as `stale`.
    run: u32,
    stale: u64,
    last_any: Option<Instant>,
    seen: HashMap<u32, Vec<u64>>,
    received: u64,
    duplicates: u64,
    other: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    latencies_us: Vec<u64>,
}

impl Counts {
    fn record(&mut self, m: (u32, u32, u32, u64), now: Instant, now_us: u64) {
        let (run, publisher, seq, sent_us) = m;
        self.last_any = Some(now);
        if run != self.run {
            self.stale += 1;
            return;
        }
        if set_bit(self.seen.entry(publisher).or_default(), seq) {
            self.received += 1;
        } else {
            self.duplicates += 1;
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.latencies_us.push(now_us.saturating_sub(sent_us));
    }
}

/// Sets a bit; returns whether it was clear.
fn set_bit(bits: &mut Vec<u64>, i: u32) -> bool {
    let (word, bit) = ((i / 64) as usize, i % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was = bits[word] & (1 << bit) != 0;
    bits[word] |= 1 << bit;
    !was
}

fn has_bit(bits: &[u64], i: u32) -> bool {
    bits.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

type Shared = Arc<Mutex<Counts>>;

/// Reads packets from `stream`, acknowledges QoS 1 publishes, counts what it recognises.
/// `server`: answer CONNECT/SUBSCRIBE/PINGREQ as a broker would.
async fn counting_loop(mut stream: TcpStream, counts: Shared, server: bool) {
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut batch = Vec::with_capacity(1024);
    loop {
        match stream.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (now, now_us) = (Instant::now(), now_us());
        loop {
            match Packet::read(&mut rbuf, MAX_PACKET) {
                Ok(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        PubAck::new(p.pkid).write(&mut wbuf).unwrap();
                    }
                    match parse(&p.payload) {
                        Some(m) => batch.push(m),
                        None => counts.lock().unwrap().other += 1,
                    }
                }
                Ok(Packet::Connect(_)) if server => {
                    ConnAck::new(ConnectReturnCode::Success, false).write(&mut wbuf).unwrap();
                }
                Ok(Packet::Subscribe(s)) if server => {
                    let codes =
                        s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce));
                    SubAck::new(s.pkid, codes.collect()).write(&mut wbuf).unwrap();
                }
                Ok(Packet::PingReq) if server => wbuf.put_slice(&[0xD0, 0]),
                Ok(Packet::Disconnect) => return,
                Ok(_) => {}
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(e) => panic!("sink: bad packet: {e:?}"),
            }
        }
        if !batch.is_empty() {
            let mut c = counts.lock().unwrap();
            for m in batch.drain(..) {
                c.record(m, now, now_us);
            }
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}

/// The minimal counting MQTT server every path forwards into.
struct Sink {
    addr: SocketAddr,
    counts: Shared,
}

impl Sink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Shared::default();
        let c = counts.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(counting_loop(s, c.clone(), true));
            }
        });
        Self { addr, counts }
    }
}

/// A QoS 1 subscriber on a real broker, counting like the sink.
async fn subscriber(addr: SocketAddr, filter: &str) -> Shared {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = BytesMut::new();
    Connect::new("bench-subscriber").write(&mut buf).unwrap();
    let mut sub = Subscribe::new(filter, QoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    // CONNACK and SUBACK
    let mut rbuf = BytesMut::new();
    let mut acks = 0;
    while acks < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut rbuf)).await;
        assert!(matches!(n, Ok(Ok(n)) if n > 0), "subscriber: no CONNACK/SUBACK");
        while let Ok(p) = Packet::read(&mut rbuf, MAX_PACKET) {
            acks += matches!(p, Packet::ConnAck(_) | Packet::SubAck(_)) as usize;
        }
    }
    let counts = Shared::default();
    tokio::spawn(counting_loop(s, counts.clone(), false));
    counts
}

// ---------------------------------------------------------------- load generator

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// gatewayd: publishers log in as `p<i>@bench`; the topic is the channel.
    gatewayd: bool,
}

/// One publisher's result: the sequences its broker acknowledged.
struct Published {
    publisher: u32,
    acked: Vec<u64>,
    acked_count: u64,
}

/// Publishes with `window` in flight until `stop`; with `pace`, one message per interval.
async fn publisher(
    run: u32,
    i: u32,
    target: Target,
    window: usize,
    stop: Arc<AtomicBool>,
    pace: Option<Duration>,
) -> Published {
    let mut s = TcpStream::connect(target.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut connect = Connect::new(format!("p{i}"));
    connect.keep_alive = 60;
    let topic = if target.gatewayd {
        connect.login = Some(Login::new(format!("p{i}@{APP}"), "pw"));
        "bench".to_owned()
    } else {
        format!("bench/p{i}")
    };
    let mut wbuf = BytesMut::new();
    connect.write(&mut wbuf).unwrap();
    s.write_all(&wbuf).await.unwrap();
    wbuf.clear();
    let mut rbuf = BytesMut::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut rbuf)).await;
        assert!(matches!(n, Ok(Ok(n)) if n > 0), "publisher {i}: no CONNACK");
        match Packet::read(&mut rbuf, MAX_PACKET) {
            Ok(Packet::ConnAck(a)) => {
                assert_eq!(a.code, ConnectReturnCode::Success, "publisher {i} refused");
                break;
            }
            Err(MqttError::InsufficientBytes(_)) => continue,
            other => panic!("publisher {i}: {other:?}"),
        }
    }
    let mut inflight: HashMap<u16, u32> = HashMap::with_capacity(window);
    let mut acked = Vec::new();
    let mut acked_count = 0;
    let mut seq = 0u32;
    let started = tokio::time::Instant::now();
    let mut stop_seen: Option<tokio::time::Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && stop_seen.is_none() {
            stop_seen = Some(tokio::time::Instant::now());
        }
        let due = pace.map(|p| started + p * seq);
        while !stopping
            && inflight.len() < window
            && due.is_none_or(|d| d <= tokio::time::Instant::now())
        {
            let pkid = (seq % 65_535) as u16 + 1;
            let mut p = Publish::from_bytes(topic.as_str(), QoS::AtLeastOnce, payload(run, i, seq));
            p.pkid = pkid;
            p.write(&mut wbuf).unwrap();
            inflight.insert(pkid, seq);
            seq += 1;
            if pace.is_some() {
                break;
            }
        }
        if !wbuf.is_empty() {
            s.write_all(&wbuf).await.unwrap();
            wbuf.clear();
        }
        if stopping && (inflight.is_empty() || stop_seen.unwrap().elapsed() > DRAIN) {
            break;
        }
        // wait for acks; a paced publisher wakes for its next send, everyone checks `stop`
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        let wake = pace.map_or(soon, |p| (started + p * seq).min(soon));
        let read = tokio::time::timeout_at(wake, s.read_buf(&mut rbuf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => loop {
                match Packet::read(&mut rbuf, MAX_PACKET) {
                    Ok(Packet::PubAck(a)) => {
                        if let Some(seq) = inflight.remove(&a.pkid) {
                            set_bit(&mut acked, seq);
                            acked_count += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(MqttError::InsufficientBytes(_)) => break,
                    Err(e) => panic!("publisher {i}: {e:?}"),
                }
            },
            Err(_) => {}
        }
    }
    let _ = s.write_all(&[0xE0, 0]).await;
    Published { publisher: i, acked, acked_count }
}

/// The outcome of one cell.
struct Run {
    acked: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    secs: f64,
    /// Sink-side rate: arrivals between the first and last.
    forwarded_per_s: f64,
    latencies_us: Vec<u64>,
}

/// Runs N publishers × W in flight for `secs` against `target`, then waits for `counts` to
/// hold everything acknowledged (at most [`DRAIN`]), and compares.
async fn run(
    target: &Target,
    n: usize,
    w: usize,
    secs: f64,
    pace: Option<Duration>,
    counts: &Shared,
    counts_arrivals: bool,
) -> Run {
    // start from quiet: nothing of an earlier cell still arriving (at most DRAIN)
    let settle = Instant::now() + DRAIN;
    loop {
        let last_any = counts.lock().unwrap().last_any;
        if last_any.is_none_or(|t| t.elapsed() > Duration::from_millis(500))
            || Instant::now() > settle
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    *counts.lock().unwrap() = Counts { run: run_id, ..Counts::default() };
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(publisher(run_id, i as u32, target.clone(), w, stop.clone(), pace));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut published = Vec::new();
    while let Some(p) = tasks.join_next().await {
        published.push(p.unwrap());
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let acked: u64 = published.iter().map(|p| p.acked_count).sum();
    // wait until every acknowledged message arrived, or nothing arrived for a while
    let deadline = Instant::now() + if counts_arrivals { DRAIN } else { Duration::ZERO };
    let mut last = (0, Instant::now());
    loop {
        let received = counts.lock().unwrap().received;
        if received >= acked || Instant::now() > deadline {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = std::mem::take(&mut *counts.lock().unwrap());
    // what still arrives belongs to no cell, but keeps the next one waiting until quiet
    counts.lock().unwrap().last_any = c.last_any;
    if c.stale > 0 {
        eprintln!("({} late arrivals of earlier cells ignored)", c.stale);
    }
    let lost = published
        .iter()
        .map(|p| {
            let seen = c.seen.get(&p.publisher).map(Vec::as_slice).unwrap_or(&[]);
            let mut lost = 0u64;
            for (word_i, word) in p.acked.iter().enumerate() {
                for bit in 0..64 {
                    let seq = (word_i * 64 + bit) as u32;
                    if word & (1 << bit) != 0 && !has_bit(seen, seq) {
                        lost += 1;
                    }
                }
            }
            lost
        })
        .sum();
    // the sink-side rate: from the first arrival to the last
    let span = match (c.first, c.last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => load_secs,
    };
    Run {
        acked,
        received: c.received,
        lost,
        duplicates: c.duplicates,
        secs: load_secs,
        forwarded_per_s: c.received as f64 / span,
        latencies_us: c.latencies_us,
    }
}

// ---------------------------------------------------------------- processes

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mosquitto on a free port with `extra` config; returns its address.
fn mosquitto(dir: &Path, name: &str, extra: &str) -> (Proc, SocketAddr) {
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "user root\nlog_dest file {}/{name}.log\nset_tcp_nodelay true\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child =
            Command::new(MOSQUITTO).arg("-c").arg(&conf).stderr(Stdio::null()).spawn().unwrap();
        let mut p = Proc(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return (p, addr);
            }
            if p.0.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.0.kill();
    }
    panic!("mosquitto {name} did not start");
}

/// A mosquitto bridge: forwards `#` at QoS 1 to `upstream`.
fn bridge(dir: &Path, name: &str, upstream: SocketAddr) -> (Proc, SocketAddr) {
    mosquitto(
        dir,
        name,
        &format!(
            "connection upstream\naddress {upstream}\ntopic # out 1\ntry_private false\n\
             notifications false\ncleansession true\nbridge_protocol_version mqttv311\n\
             restart_timeout 1\n"
        ),
    )
}

/// gatewayd with the generic MQTT uplink into `upstream`; returns its MQTT and web address.
fn gatewayd(dir: &Path, name: &str, upstream: SocketAddr) -> (Proc, SocketAddr, String) {
    let data = dir.join(name);
    let mut config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"mqtt\"\nurl = \"mqtt://{upstream}\"\ntopic = \"bench/{{device}}/{{channel}}\"\n\
         concurrency = 1024\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\nmax_inflight = 32\n\n\
         [auth]\nargon2_memory_kib = 64\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,gatewayd::wiring=info\"\n",
        data.display().to_string()
    );
    for i in 0..MAX_PUBLISHERS {
        config.push_str(&format!("\n[[devices]]\nname = \"p{i}\"\npassword = \"pw\"\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let (mut mqtt, mut web) = (None, None);
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match v["listener"].as_str() {
            Some("mqtt") => mqtt = v["addr"].as_str().map(|a| a.parse().unwrap()),
            Some("web") => web = v["addr"].as_str().map(str::to_owned),
            _ => {}
        }
        if mqtt.is_some() && web.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(|l| eprintln!("gatewayd: {l}")));
    (Proc(child), mqtt.expect("gatewayd MQTT address"), web.unwrap())
}

async fn outbox_stats(web: &str) -> serde_json::Value {
    let s: serde_json::Value =
        reqwest::get(format!("http://{web}/api/v1/status")).await.unwrap().json().await.unwrap();
    s["outbox"].clone()
}

/// Waits (at most 2 minutes) until gatewayd's outbox holds nothing unacknowledged.
async fn wait_drained(web: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if outbox_stats(web).await["records_queued"].as_u64() == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("gatewayd's outbox did not drain within 2 minutes");
}

/// The `$SYS/broker/publish/messages/received` counter of a mosquitto (`sys_interval 1`),
/// once it has stopped moving.
async fn sys_received(addr: SocketAddr) -> u64 {
    let read = || async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        Connect::new(format!("bench-sys-{}", now_us())).write(&mut buf).unwrap();
        let mut sub = Subscribe::new("$SYS/broker/publish/messages/received", QoS::AtMostOnce);
        sub.pkid = 1;
        sub.write(&mut buf).unwrap();
        s.write_all(&buf).await.unwrap();
        let mut rbuf = BytesMut::new();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut rbuf)).await;
            assert!(matches!(n, Ok(Ok(n)) if n > 0), "no $SYS counter from mosquitto");
            while let Ok(p) = Packet::read(&mut rbuf, MAX_PACKET) {
                if let Packet::Publish(p) = p {
                    return std::str::from_utf8(&p.payload).unwrap().trim().parse::<u64>().unwrap();
                }
            }
        }
    };
    let mut last = read().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// p50 of `n` append + fdatasync rounds of 100 bytes in `dir`: the disk's commit latency.
fn fdatasync_p50(dir: &Path, n: usize) -> Duration {
    let mut f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        f.write_all(&[0u8; PAYLOAD]).unwrap();
        f.sync_data().unwrap();
        t.push(s.elapsed());
    }
    t.sort();
    t[n / 2]
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
}

// ---------------------------------------------------------------- main

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert!(Path::new(MOSQUITTO).exists(), "the benchmark needs {MOSQUITTO}");
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let commit = fdatasync_p50(d, 200);
    println!("fdatasync p50 on the data dir's disk: {:.2} ms", commit.as_secs_f64() * 1e3);

    let sink = Sink::start().await;
    let direct = Target { addr: sink.addr, gatewayd: false };
    let (_gw, gw_addr, gw_web) = gatewayd(d, "gw-sink", sink.addr);
    let (_br, br_addr) = bridge(d, "bridge-sink", sink.addr);
    let paths = [
        ("gatewayd", Target { addr: gw_addr, gatewayd: true }),
        ("mosquitto bridge", Target { addr: br_addr, gatewayd: false }),
    ];
    // let both paths connect upstream before measuring
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("\nSink ceiling (publishers straight into the counting sink):\n");
    println!("| N | W | acked msg/s | received msg/s | lost |");
    println!("|---:|---:|---:|---:|---:|");
    let mut ceiling = 0f64;
    for (n, w) in [(1, 32), (10, 32), (100, 32)] {
        let r = run(&direct, n, w, secs, None, &sink.counts, true).await;
        ceiling = ceiling.max(r.forwarded_per_s);
        println!(
            "| {n} | {w} | {:.0} | {:.0} | {} |",
            r.acked as f64 / r.secs,
            r.forwarded_per_s,
            r.lost
        );
    }

    println!("\nQoS 1, 100-byte payloads, {secs} s per cell, into the counting sink:\n");
    println!(
        "| N | W | path | acked msg/s | forwarded msg/s | lost (acked, never arrived) | dup | commit latency | bound N×W/commit msg/s |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut best: HashMap<&str, (f64, usize, usize)> = HashMap::new();
    // BENCH_CELLS="100x32,10x32" restricts the matrix (e.g. to profile one cell)
    let cells = std::env::var("BENCH_CELLS").ok();
    let wanted = |n: usize, w: usize| {
        cells.as_deref().is_none_or(|c| c.split(',').any(|x| x.trim() == format!("{n}x{w}")))
    };
    for n in [1usize, 10, 100] {
        for w in [1usize, 8, 32] {
            if !wanted(n, w) {
                continue;
            }
            for (name, target) in &paths {
                let before = if target.gatewayd { Some(outbox_stats(&gw_web).await) } else { None };
                let r = run(target, n, w, secs, None, &sink.counts, true).await;
                // the durable path's bound: N × W in flight, each waiting one commit; the
                // commit latency is the observed time per group commit during the cell
                let bound = match before {
                    Some(b) => {
                        let a = outbox_stats(&gw_web).await;
                        let delta = |k: &str| {
                            a[k].as_u64().unwrap_or(0).saturating_sub(b[k].as_u64().unwrap_or(0))
                        };
                        let (commits, recs) = (delta("commits").max(1), delta("records_committed"));
                        let latency = r.secs / commits as f64;
                        format!(
                            "{:.2} ms, {:.0} records/commit | {:.0}",
                            latency * 1e3,
                            recs as f64 / commits as f64,
                            (n * w) as f64 / latency
                        )
                    }
                    None => "n/a | n/a".to_owned(),
                };
                println!(
                    "| {n} | {w} | {name} | {:.0} | {:.0} | {} of {} | {} | {bound} |",
                    r.acked as f64 / r.secs,
                    r.forwarded_per_s,
                    r.lost,
                    r.acked,
                    r.duplicates
                );
                if r.lost == 0 && r.received > 0 {
                    let e = best.entry(name).or_insert((0.0, n, w));
                    if r.forwarded_per_s > e.0 {
                        *e = (r.forwarded_per_s, n, w);
                    }
                }
            }
        }
    }
    println!("\nsink ceiling: {ceiling:.0} msg/s");
    let (gw_best, bridge_best) =
        (best.get("gatewayd").copied(), best.get("mosquitto bridge").copied());
    if let (Some(g), Some(b)) = (gw_best, bridge_best) {
        println!(
            "best lossless: gatewayd {:.0} msg/s (N={}, W={}), mosquitto bridge {:.0} msg/s (N={}, W={}): ratio {:.2}",
            g.0,
            g.1,
            g.2,
            b.0,
            b.1,
            b.2,
            g.0 / b.0
        );
    }
    drop((paths, _gw, _br));

    // the best cells again, into a real mosquitto upstream (counted by its $SYS counter)
    let (_up, up_addr) = mosquitto(d, "upstream", "sys_interval 1");
    let (_gw2, gw2_addr, gw2_web) = gatewayd(d, "gw-up", up_addr);
    let (_br2, br2_addr) = bridge(d, "bridge-up", up_addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "\nBest lossless cell of each path, into a real mosquitto upstream (no subscriber):\n"
    );
    println!("| path | N | W | acked msg/s | upstream received msg/s | acked − received |");
    println!("|---|---:|---:|---:|---:|---:|");
    let up_paths = [
        ("gatewayd", Target { addr: gw2_addr, gatewayd: true }, gw_best, Some(gw2_web)),
        ("mosquitto bridge", Target { addr: br2_addr, gatewayd: false }, bridge_best, None),
    ];
    let no_sink = Shared::default();
    for (name, target, cell, web) in &up_paths {
        let Some((_, n, w)) = cell else { continue };
        let before = sys_received(up_addr).await;
        let t0 = Instant::now();
        let r = run(target, *n, *w, secs, None, &no_sink, false).await;
        // gatewayd forwards its backlog after the load: until its outbox is empty
        let busy = match web {
            Some(web) => {
                wait_drained(web).await;
                t0.elapsed().as_secs_f64()
            }
            None => r.secs,
        };
        let got = sys_received(up_addr).await - before;
        println!(
            "| {name} | {n} | {w} | {:.0} | {:.0} (over {busy:.1} s) | {} |",
            r.acked as f64 / r.secs,
            got as f64 / busy,
            r.acked as i64 - got as i64
        );
    }

    // latency with a subscriber on the upstream mosquitto, paced
    let sub = subscriber(up_addr, "bench/#").await;
    println!(
        "\nEnd-to-end latency, paced, 10 publishers, QoS 1 subscriber on the upstream mosquitto:\n"
    );
    println!("| path | rate msg/s | received | lost | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, target, _, _) in &up_paths {
        for rate in [1_000u64, 10_000] {
            let per = Duration::from_secs_f64(10.0 / rate as f64);
            let mut r = run(target, 10, 32, secs, Some(per), &sub, true).await;
            println!(
                "| {name} | {rate} | {} | {} | {:.2} | {:.2} |",
                r.received,
                r.lost,
                pct(&mut r.latencies_us, 0.50),
                pct(&mut r.latencies_us, 0.99)
            );
        }
    }
}
