//! MQTT QoS 1 forwarding, side by side in one run: sensors → gatewayd (durable outbox, PUBACK
//! after fdatasync, generic MQTT uplink) → upstream mosquitto, against sensors → mosquitto
//! bridge (`topic # out 1`) → the same upstream mosquitto, and sensors straight into the
//! upstream (its ceiling). A QoS 1 subscriber on the upstream counts every message exactly, per
//! publisher and sequence; a message is lost when its publisher got the PUBACK and the
//! subscriber never saw it. Also the MQTT client pieces the other scenarios use.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::bail;
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

use crate::util::{self, Gatewayd, Proc, Table, pct, ratio, thousands};

pub const APP: &str = "bench";
const MAX_PACKET: usize = 1 << 20;
/// How long to wait for forwarded messages after the load stops.
const DRAIN: Duration = Duration::from_secs(20);
/// Each cell's run id, carried in every payload.
static NEXT_RUN: AtomicU32 = AtomicU32::new(1);
/// The header every payload starts with: `P`, run, publisher, sequence, send time in µs.
const HEADER: usize = 21;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `P`, run (u32), publisher (u32), sequence (u32), send time in µs since the epoch (u64),
/// padding to `size`. The run id keeps a late arrival of an earlier cell from counting.
pub fn payload(run: u32, publisher: u32, seq: u32, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER));
    b.put_u8(b'P');
    b.put_u32(run);
    b.put_u32(publisher);
    b.put_u32(seq);
    b.put_u64(now_us());
    b.resize(size.max(HEADER), b'x');
    b.freeze()
}

fn parse(p: &[u8]) -> Option<(u32, u32, u32, u64)> {
    if p.len() < HEADER || p[0] != b'P' {
        return None;
    }
    let u32_at = |i: usize| p.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes);
    let ts = p.get(13..21).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)?;
    Some((u32_at(1)?, u32_at(5)?, u32_at(9)?, ts))
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------- counting

/// What arrived, exactly: a bit per (publisher, sequence).
#[derive(Default)]
pub struct Counts {
    /// The run being counted; arrivals of other runs are only counted as `stale`.
    pub run: u32,
    pub stale: u64,
    pub last_any: Option<Instant>,
    seen: HashMap<u32, Seen>,
    pub received: u64,
    pub duplicates: u64,
    /// Arrivals with a lower sequence than one that arrived before them from the same
    /// publisher (one device's order broken).
    pub reordered: u64,
    /// Sequences below this are a backlog's: [`Counts::backlog_last`] tracks them.
    pub backlog_below: u32,
    pub backlog_received: u64,
    pub backlog_last: Option<Instant>,
    pub other: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub latencies_us: Vec<u64>,
}

/// One publisher's arrivals: a bit per sequence, and the highest sequence so far.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    high: Option<u32>,
}

impl Counts {
    fn record(&mut self, m: (u32, u32, u32, u64), now: Instant, now_us: u64) {
        let (run, publisher, seq, sent_us) = m;
        self.last_any = Some(now);
        if run != self.run {
            self.stale += 1;
            return;
        }
        let seen = self.seen.entry(publisher).or_default();
        let fresh = set_bit(&mut seen.bits, seq);
        if fresh {
            self.received += 1;
            if seen.high.is_some_and(|h| seq < h) {
                self.reordered += 1;
            }
            seen.high = seen.high.max(Some(seq));
        } else {
            self.duplicates += 1;
        }
        if seq < self.backlog_below {
            self.backlog_last = Some(now);
            self.backlog_received += u64::from(fresh);
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.latencies_us.push(now_us.saturating_sub(sent_us));
    }

    /// How many of `published`'s acknowledged sequences never arrived.
    pub fn lost(&self, published: &[Published]) -> u64 {
        published
            .iter()
            .map(|p| {
                let seen = self.seen.get(&p.publisher).map_or(&[][..], |s| s.bits.as_slice());
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
            .sum()
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

pub type Shared = Arc<Mutex<Counts>>;

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
            let written = match Packet::read(&mut rbuf, MAX_PACKET) {
                Ok(Packet::Publish(p)) => {
                    match parse(&p.payload) {
                        Some(m) => batch.push(m),
                        None => lock(&counts).other += 1,
                    }
                    if p.qos == QoS::AtLeastOnce {
                        PubAck::new(p.pkid).write(&mut wbuf).map(drop)
                    } else {
                        Ok(())
                    }
                }
                Ok(Packet::Connect(_)) if server => {
                    ConnAck::new(ConnectReturnCode::Success, false).write(&mut wbuf).map(drop)
                }
                Ok(Packet::Subscribe(s)) if server => {
                    let codes =
                        s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce));
                    SubAck::new(s.pkid, codes.collect()).write(&mut wbuf).map(drop)
                }
                Ok(Packet::PingReq) if server => {
                    wbuf.put_slice(&[0xD0, 0]);
                    Ok(())
                }
                Ok(Packet::Disconnect) => return,
                Ok(_) => Ok(()),
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(e) => {
                    eprintln!("counting: bad packet, connection dropped: {e:?}");
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
        if !batch.is_empty() {
            let mut c = lock(&counts);
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

/// A minimal MQTT server that acknowledges and counts every publish (the drain scenario's
/// upstream, started late on a port chosen early).
pub fn counting_server(listener: TcpListener, counts: &Shared) {
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(counting_loop(s, c.clone(), true));
        }
    });
}

/// Connects and waits for a successful CONNACK (at most 20 s), trying up to 3 times as a real
/// client would when a connection is dropped or left unanswered (a broker's full listen
/// backlog); a refused login is not retried.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut last = None;
    for _ in 0..3 {
        match connect_once(addr, client_id, login).await {
            Ok(c) => return Ok(c),
            Err(Refused(e)) => return Err(e),
            Err(Failed(e)) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{client_id}: no connection")))
}

enum ConnectError {
    Refused(anyhow::Error),
    Failed(anyhow::Error),
}
use ConnectError::{Failed, Refused};

async fn connect_once(
    addr: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(TcpStream, BytesMut), ConnectError> {
    let failed = |e: anyhow::Error| Failed(e.context(format!("{client_id}: connect {addr}")));
    let io = |e: std::io::Error| failed(e.into());
    let fut = TcpStream::connect(addr);
    let mut s = match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(r) => r.map_err(io)?,
        Err(_) => return Err(failed(anyhow::anyhow!("TCP connect timed out"))),
    };
    s.set_nodelay(true).map_err(io)?;
    let mut connect = Connect::new(client_id);
    connect.keep_alive = 120;
    if let Some((u, p)) = login {
        connect.login = Some(Login::new(u, p));
    }
    let mut wbuf = BytesMut::new();
    connect.write(&mut wbuf).map_err(|e| Refused(anyhow::anyhow!("{e:?}")))?;
    s.write_all(&wbuf).await.map_err(io)?;
    let mut rbuf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, s.read_buf(&mut rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(failed(anyhow::anyhow!("no CONNACK"))),
        }
        match Packet::read(&mut rbuf, MAX_PACKET) {
            Ok(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => return Ok((s, rbuf)),
            Ok(Packet::ConnAck(a)) => {
                return Err(Refused(anyhow::anyhow!("{client_id}: refused: {:?}", a.code)));
            }
            Err(MqttError::InsufficientBytes(_)) => continue,
            other => return Err(Refused(anyhow::anyhow!("{client_id}: {other:?}"))),
        }
    }
}

/// A QoS 1 subscriber on a broker, counting.
pub async fn subscriber(addr: SocketAddr, filter: &str) -> anyhow::Result<Shared> {
    let (mut s, mut rbuf) = connect(addr, &format!("bench-sub-{}", now_us()), None).await?;
    let mut buf = BytesMut::new();
    let mut sub = Subscribe::new(filter, QoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    s.write_all(&buf).await?;
    loop {
        if let Ok(Packet::SubAck(_)) = Packet::read(&mut rbuf, MAX_PACKET) {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut rbuf)).await;
        if !matches!(n, Ok(Ok(n)) if n > 0) {
            bail!("subscriber: no SUBACK");
        }
    }
    let counts = Shared::default();
    tokio::spawn(counting_loop(s, counts.clone(), false));
    Ok(counts)
}

// ---------------------------------------------------------------- load generator

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// gatewayd: publishers log in as `p<i>@bench` and publish to the channel `bench`;
    /// otherwise anonymous to `bench/p<i>`.
    pub gatewayd: bool,
}

/// One publisher's result: the sequences its broker acknowledged.
pub struct Published {
    pub publisher: u32,
    acked: Vec<u64>,
    pub acked_count: u64,
    /// The server closed the connection before the load ended (e.g. a full store).
    pub closed: bool,
}

/// How a load runs.
#[derive(Clone, Copy)]
pub struct Load {
    pub publishers: usize,
    pub window: usize,
    pub size: usize,
    /// Stop each publisher after this many messages (None: until the time is up).
    pub per_publisher: Option<u32>,
    /// Offered messages per second per publisher (None: as fast as the window allows).
    pub rate: Option<f64>,
    /// The first sequence number each publisher sends (a load that continues an earlier one).
    pub first_seq: u32,
}

/// Publishes with `window` in flight until `stop` (or its quota is sent and acknowledged).
async fn publisher(
    run: u32,
    i: u32,
    target: Target,
    load: Load,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Published> {
    let user = format!("p{i}@{APP}");
    let login = target.gatewayd.then_some((user.as_str(), "pw"));
    let (mut s, mut rbuf) = connect(target.addr, &format!("p{i}"), login).await?;
    let topic = if target.gatewayd { "bench".to_owned() } else { format!("bench/p{i}") };
    let mut wbuf = BytesMut::new();
    let mut inflight: HashMap<u16, u32> = HashMap::with_capacity(load.window);
    let mut acked = Vec::new();
    let mut acked_count = 0;
    let mut seq = load.first_seq;
    let mut stop_seen: Option<Instant> = None;
    let quota = load.per_publisher.map_or(u32::MAX, |n| load.first_seq.saturating_add(n));
    let mut closed = false;
    let started = Instant::now();
    // paced: the messages due by now (a publisher that fell behind catches up within its window)
    let due = |now: Instant| -> u32 {
        load.rate.map_or(u32::MAX, |r| {
            load.first_seq + (now.duration_since(started).as_secs_f64() * r) as u32 + 1
        })
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed) || seq >= quota;
        if stopping && stop_seen.is_none() {
            stop_seen = Some(Instant::now());
        }
        let due_now = due(Instant::now());
        while !stopping && inflight.len() < load.window && seq < quota && seq < due_now {
            let pkid = (seq % 65_535) as u16 + 1;
            let mut p = Publish::from_bytes(
                topic.as_str(),
                QoS::AtLeastOnce,
                payload(run, i, seq, load.size),
            );
            p.pkid = pkid;
            p.write(&mut wbuf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            inflight.insert(pkid, seq);
            seq += 1;
        }
        if !wbuf.is_empty() {
            if s.write_all(&wbuf).await.is_err() {
                closed = true;
                break;
            }
            wbuf.clear();
        }
        if stopping && (inflight.is_empty() || stop_seen.is_some_and(|t| t.elapsed() > DRAIN)) {
            break;
        }
        // paced: wake for the next message due
        let wait = match load.rate {
            Some(r) if !stopping && inflight.len() < load.window => {
                let next = started + Duration::from_secs_f64(f64::from(seq - load.first_seq) / r);
                next.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))
            }
            _ => Duration::from_millis(50),
        };
        let read = tokio::time::timeout(wait, s.read_buf(&mut rbuf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = !stopping;
                break;
            }
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
                    Err(e) => bail!("publisher {i}: {e:?}"),
                }
            },
            Err(_) => {}
        }
    }
    let _ = s.write_all(&[0xE0, 0]).await;
    Ok(Published { publisher: i, acked, acked_count, closed })
}

/// "lost of acknowledged", and how many connections the server closed, if any.
fn lost_text(r: &Run) -> String {
    let text = format!("{} of {}", thousands(r.lost as f64), thousands(r.acked as f64));
    match r.closed {
        0 => text,
        n => format!("{text} ({n} connections closed by the server)"),
    }
}

/// The outcome of one load.
pub struct Run {
    pub acked: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Arrivals behind a later message of the same publisher.
    pub reordered: u64,
    /// Seconds the load ran.
    pub secs: f64,
    /// Arrivals between the first and the last, per second.
    pub forwarded_per_s: f64,
    pub latencies_us: Vec<u64>,
    /// Publishers whose connection the server closed during the load.
    pub closed: usize,
}

/// Waits until `counts` has been quiet for half a second (at most [`DRAIN`]), then starts a
/// new run id on it.
pub async fn new_run(counts: &Shared) -> u32 {
    let settle = Instant::now() + DRAIN;
    loop {
        let last_any = lock(counts).last_any;
        if last_any.is_none_or(|t| t.elapsed() > Duration::from_millis(500))
            || Instant::now() > settle
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    *lock(counts) = Counts { run: run_id, ..Counts::default() };
    run_id
}

/// Starts the publishers of `load` against `target` for run `run_id`; stops them after `secs`
/// (or when each has sent its quota) and returns what each had acknowledged.
pub async fn publish(
    run_id: u32,
    target: &Target,
    load: Load,
    secs: f64,
) -> anyhow::Result<(Vec<Published>, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let r = publish_until(run_id, target, load, stop).await;
    timer.abort();
    r
}

/// [`publish`] until `stop` is set (or each publisher has sent its quota).
pub async fn publish_until(
    run_id: u32,
    target: &Target,
    load: Load,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Published>, f64)> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..load.publishers {
        tasks.spawn(publisher(run_id, i as u32, target.clone(), load, stop.clone()));
    }
    let t0 = Instant::now();
    let mut published = Vec::with_capacity(load.publishers);
    while let Some(p) = tasks.join_next().await {
        published.push(p??);
    }
    Ok((published, t0.elapsed().as_secs_f64()))
}

/// Runs `load` for `secs` against `target`, then waits until `counts` holds everything
/// acknowledged (at most [`DRAIN`]) and compares.
pub async fn run(target: &Target, load: Load, secs: f64, counts: &Shared) -> anyhow::Result<Run> {
    let run_id = new_run(counts).await;
    let (published, load_secs) = publish(run_id, target, load, secs).await?;
    let acked: u64 = published.iter().map(|p| p.acked_count).sum();
    let deadline = Instant::now() + DRAIN;
    let mut last = (0, Instant::now());
    loop {
        let received = lock(counts).received;
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
    let c = std::mem::take(&mut *lock(counts));
    lock(counts).last_any = c.last_any;
    let lost = c.lost(&published);
    let span = match (c.first, c.last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => load_secs,
    };
    Ok(Run {
        closed: published.iter().filter(|p| p.closed).count(),
        acked,
        lost,
        duplicates: c.duplicates,
        reordered: c.reordered,
        secs: load_secs,
        forwarded_per_s: c.received as f64 / span,
        latencies_us: c.latencies_us,
    })
}

// ---------------------------------------------------------------- processes

/// A mosquitto bridge forwarding `#` at QoS 1 to `upstream`, configured as its manual shows.
pub fn bridge(
    dir: &Path,
    name: &str,
    upstream: SocketAddr,
    extra: &str,
) -> anyhow::Result<(Proc, SocketAddr)> {
    util::mosquitto(
        dir,
        name,
        &format!(
            "allow_anonymous true\nconnection upstream\naddress {upstream}\ntopic # out 1\n\
             try_private false\nnotifications false\ncleansession true\n\
             bridge_protocol_version mqttv311\nrestart_timeout 1\n{extra}"
        ),
    )
}

/// The upstream broker: a mosquitto that neither limits in-flight messages to its subscriber
/// nor drops queued ones, so that it is never where a message gets lost.
pub fn upstream(dir: &Path, name: &str) -> anyhow::Result<(Proc, SocketAddr)> {
    util::mosquitto(
        dir,
        name,
        "allow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 0\n",
    )
}

/// The `[[devices]]` p0..p{n} with password `pw`.
pub fn devices(n: usize) -> String {
    (0..n).map(|i| format!("\n[[devices]]\nname = \"p{i}\"\npassword = \"pw\"\n")).collect()
}

/// gatewayd with the generic MQTT uplink into `upstream` (`bench/{device}/{channel}`) and
/// `n` static devices; `extra` is added to the config. Every publisher comes from 127.0.0.1,
/// so the per-address share of connections still logging in is the whole pool (with the
/// default 16, a burst of 100 connects evicts its own oldest while they log in).
pub fn gatewayd(
    dir: &Path,
    name: &str,
    upstream: SocketAddr,
    n: usize,
    extra: &str,
) -> anyhow::Result<Gatewayd> {
    let config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"mqtt\"\nurl = \"mqtt://{upstream}\"\ntopic = \"bench/{{device}}/{{channel}}\"\n\
         concurrency = 1024\nretry_min = \"100ms\"\nretry_max = \"1s\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\nmax_inflight = 32\nmax_connections = 20000\n\
         max_unauthenticated = 2048\nmax_unauthenticated_per_address = 2048\n\n\
         [auth]\nargon2_memory_kib = 64\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"bench-api-token-0123\"\n{extra}\n{}",
        dir.join(name).display().to_string(),
        devices(n)
    );
    Gatewayd::start(dir, name, &config, &["mqtt", "web"], Duration::from_secs(120))
}

/// Waits (at most `timeout`) until gatewayd's outbox holds nothing unacknowledged.
pub async fn wait_drained(gw: &Gatewayd, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if gw.status().await?["outbox"]["records_queued"].as_u64() == Some(0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("gatewayd's outbox did not drain within {timeout:?}")
}

// ---------------------------------------------------------------- the scenario

pub const PUBLISHERS: [usize; 4] = [1, 10, 100, 1000];
pub const SIZES: [usize; 2] = [100, 4096];
/// Messages in flight per publisher: paho's and mosquitto_pub's default maximum.
pub const WINDOW: usize = 20;

/// What the forwarded messages go into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Upstream {
    /// A real mosquitto, counted by a QoS 1 subscriber on it.
    Mosquitto,
    /// A minimal counting MQTT server (to find gatewayd's own limit; its ceiling is measured).
    Sink,
}

/// The matrix of one forwarding run.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub publishers: Vec<usize>,
    pub windows: Vec<usize>,
    pub sizes: Vec<usize>,
    pub upstream: Upstream,
}

impl Default for Matrix {
    fn default() -> Self {
        Self {
            publishers: PUBLISHERS.to_vec(),
            windows: vec![WINDOW],
            sizes: SIZES.to_vec(),
            upstream: Upstream::Mosquitto,
        }
    }
}

pub async fn scenario(dir: &Path, secs: f64, m: &Matrix) -> anyhow::Result<()> {
    let max = m.publishers.iter().copied().max().unwrap_or(1);
    let commit = util::fdatasync_p50(dir, 200)?;
    let (_up, up_addr, counts, how) = match m.upstream {
        Upstream::Mosquitto => {
            let (p, addr) = upstream(dir, "mqtt-upstream")?;
            let counts = subscriber(addr, "bench/#").await?;
            (Some(p), addr, counts, "an upstream mosquitto, a QoS 1 subscriber on it counting")
        }
        Upstream::Sink => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let counts = Shared::default();
            counting_server(listener, &counts);
            (None, addr, counts, "a counting MQTT server")
        }
    };
    println!(
        "\n## MQTT QoS 1 forwarding into {}\n\n\
         W QoS 1 publishes in flight per publisher, {secs} s per cell after a warm-up (every \
         publisher logs in and sends W first), {how} exactly per publisher and sequence; \
         latency = publisher's send → arrival upstream. fdatasync p50 on this disk: {:.2} ms. \
         \"lost\" = the publisher had the PUBACK and the message never arrived.",
        match m.upstream {
            Upstream::Mosquitto => "an upstream mosquitto",
            Upstream::Sink => "a counting sink",
        },
        commit.as_secs_f64() * 1e3
    );
    // room for the backlog of the biggest cells (1,000 × 4 KiB at full speed for seconds):
    // the scenario measures forwarding, not the quota
    let gw = gatewayd(dir, "mqtt-gatewayd", up_addr, max, "\n[store]\nmax_bytes = \"8GiB\"\n")?;
    let (_br, br_addr) = bridge(dir, "mqtt-bridge", up_addr, "")?;
    // both paths connect upstream before the first cell
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paths = [
        ("gatewayd", Target { addr: gw.addr("mqtt")?, gatewayd: true }),
        ("mosquitto bridge", Target { addr: br_addr, gatewayd: false }),
        ("direct (ceiling)", Target { addr: up_addr, gatewayd: false }),
    ];
    let table = Table::new(
        "MQTT QoS 1 forwarding",
        &[
            "publishers",
            "W",
            "payload B",
            "path",
            "acked msg/s",
            "forwarded msg/s",
            "lost (acked, never arrived)",
            "dup",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "gatewayd ÷ bridge",
        ],
    );
    // best lossless forwarded rate per payload size: (gatewayd, bridge)
    let mut best: Vec<(usize, f64, f64)> = m.sizes.iter().map(|&s| (s, 0.0, 0.0)).collect();
    for (si, &size) in m.sizes.iter().enumerate() {
        for &n in &m.publishers {
            for &window in &m.windows {
                let load = Load {
                    publishers: n,
                    window,
                    size,
                    per_publisher: None,
                    rate: None,
                    first_seq: 0,
                };
                let mut gw_rate = None;
                for (name, target) in &paths {
                    // warm-up: logins (gatewayd checks each password once) and connections
                    run(target, Load { per_publisher: Some(window as u32), ..load }, 0.5, &counts)
                        .await?;
                    let mut r = run(target, load, secs, &counts).await?;
                    if target.gatewayd {
                        wait_drained(&gw, Duration::from_secs(120)).await?;
                    }
                    let vs = match *name {
                        "gatewayd" => {
                            gw_rate = Some(r.forwarded_per_s);
                            if r.lost == 0 {
                                best[si].1 = best[si].1.max(r.forwarded_per_s);
                            }
                            String::new()
                        }
                        "mosquitto bridge" => {
                            if r.lost == 0 {
                                best[si].2 = best[si].2.max(r.forwarded_per_s);
                            }
                            gw_rate.map_or(String::new(), |g| ratio(g, r.forwarded_per_s))
                        }
                        _ => String::new(),
                    };
                    table.row(&[
                        n.to_string(),
                        window.to_string(),
                        size.to_string(),
                        name.to_string(),
                        thousands(r.acked as f64 / r.secs),
                        thousands(r.forwarded_per_s),
                        lost_text(&r),
                        r.duplicates.to_string(),
                        format!("{:.1}", pct(&mut r.latencies_us, 0.50, 1e3)),
                        format!("{:.1}", pct(&mut r.latencies_us, 0.99, 1e3)),
                        format!("{:.1}", pct(&mut r.latencies_us, 0.999, 1e3)),
                        vs,
                    ]);
                }
            }
        }
    }
    println!();
    for (size, g, b) in best {
        println!(
            "best lossless {size}-byte rate: gatewayd {} msg/s, mosquitto bridge {} msg/s: {}",
            thousands(g),
            thousands(b),
            ratio(g, b)
        );
    }
    Ok(())
}

/// Pins every thread of `pid` (and those it starts later) to `cpus` (taskset's list: "0",
/// "0,1").
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("taskset could not pin process {pid} to CPUs {cpus}");
    }
    Ok(())
}

/// The paced cells of MQTT forwarding: `publishers` × `window` QoS 1 publishes in flight at
/// each offered rate, gatewayd (`kind = "mqtt"`, `sync = "always"`) and a mosquitto bridge
/// each pinned to CPU 0, the load, the upstream mosquitto and its counting subscriber on CPU 1,
/// interleaved per rate. Prints forwarded msg/s, lost, CPU µs per forwarded message and
/// upstream latency for both, and each one's best sustained lossless rate.
pub async fn paced(
    dir: &Path,
    secs: f64,
    rates: &[f64],
    publishers: usize,
    window: usize,
    size: usize,
    gatewayd_cpus: &str,
) -> anyhow::Result<()> {
    // gatewayd sizes its runtime by the CPUs it may use when it starts: it starts with
    // `gatewayd_cpus`, everything else of this run stays on CPU 1
    pin(std::process::id(), gatewayd_cpus)?;
    // the upstream is a counting MQTT server in this process (CPU 1): cheaper than a mosquitto
    // with a subscriber, so the load's core is not what limits the forwarders
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let up_addr = listener.local_addr()?;
    let counts = Shared::default();
    counting_server(listener, &counts);
    let gw = gatewayd(
        dir,
        "paced-gatewayd",
        up_addr,
        publishers,
        "\n[store]\nmax_bytes = \"8GiB\"\nsync = \"always\"\n",
    )?;
    pin(gw.proc.pid(), gatewayd_cpus)?;
    pin(std::process::id(), "1")?;
    // the bridge queues without limit (mosquitto drops beyond 1,000 queued messages by
    // default), so that its lossless rate is its forwarding capacity
    let (br, br_addr) =
        bridge(dir, "paced-bridge", up_addr, "max_queued_messages 0\nmax_inflight_messages 0\n")?;
    pin(br.pid(), "0")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "\n## MQTT QoS 1 forwarding, paced\n\n{publishers} publishers × {window} in flight, \
         {size}-byte payloads, {secs} s per cell; gatewayd pinned to CPU {gatewayd_cpus}, the \
         mosquitto bridge to CPU 0, the load and a counting upstream MQTT server (this process) \
         on CPU 1. CPU = the forwarder's own user + system time; latency = publisher's send → \
         arrival upstream."
    );
    let table = Table::new(
        "paced MQTT forwarding",
        &[
            "offered msg/s",
            "path",
            "forwarded msg/s",
            "lost",
            "out of order",
            "CPU %",
            "CPU µs/msg",
            "p50 ms",
            "p99 ms",
        ],
    );
    let paths = [
        ("gatewayd", Target { addr: gw.addr("mqtt")?, gatewayd: true }, gw.proc.pid()),
        ("mosquitto bridge", Target { addr: br_addr, gatewayd: false }, br.pid()),
    ];
    let mut best = [0.0f64; 2];
    for &rate in rates {
        for (i, (name, target, pid)) in paths.iter().enumerate() {
            let load = Load {
                publishers,
                window,
                size,
                per_publisher: None,
                rate: Some(rate / publishers as f64),
                first_seq: 0,
            };
            run(
                target,
                Load { per_publisher: Some(window as u32), rate: None, ..load },
                0.5,
                &counts,
            )
            .await?;
            if target.gatewayd {
                wait_drained(&gw, Duration::from_secs(120)).await?;
            }
            let cpu0 = util::cpu_secs(*pid);
            let t0 = Instant::now();
            let mut r = run(target, load, secs, &counts).await?;
            if target.gatewayd {
                wait_drained(&gw, Duration::from_secs(300)).await?;
            }
            let cpu = util::cpu_secs(*pid) - cpu0;
            let wall = t0.elapsed().as_secs_f64();
            let forwarded = r.forwarded_per_s;
            // sustained: nothing lost, and (nearly) all that was offered went through
            if r.lost == 0 && forwarded >= 0.95 * rate {
                best[i] = best[i].max(forwarded);
            }
            let delivered = r.acked.max(1) as f64;
            table.row(&[
                thousands(rate),
                name.to_string(),
                thousands(forwarded),
                lost_text(&r),
                thousands(r.reordered as f64),
                format!("{:.0}", 100.0 * cpu / wall),
                format!("{:.1}", cpu * 1e6 / delivered),
                format!("{:.1}", pct(&mut r.latencies_us, 0.50, 1e3)),
                format!("{:.1}", pct(&mut r.latencies_us, 0.99, 1e3)),
            ]);
        }
    }
    println!(
        "\nbest sustained lossless rate: gatewayd {} msg/s, mosquitto bridge {} msg/s: {}",
        thousands(best[0]),
        thousands(best[1]),
        ratio(best[0], best[1])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_at_every_size() {
        for size in [0, 21, 100, 4096] {
            let p = payload(7, 3, 99, size);
            assert_eq!(p.len(), size.max(HEADER));
            let (run, publisher, seq, ts) = parse(&p).unwrap_or_default();
            assert_eq!((run, publisher, seq), (7, 3, 99));
            assert!(ts > 0);
        }
        assert_eq!(parse(b"Pshort"), None);
        assert_eq!(parse(&[b'Q'; 40]), None);
    }

    #[test]
    fn loss_counts_acked_messages_that_never_arrived() {
        let mut c = Counts { run: 1, ..Counts::default() };
        let now = Instant::now();
        for seq in [0, 1, 3] {
            c.record((1, 0, seq, 0), now, 0);
        }
        c.record((1, 0, 3, 0), now, 0);
        c.record((2, 0, 2, 0), now, 0);
        assert_eq!((c.received, c.duplicates, c.stale), (3, 1, 1));
        let mut acked = Vec::new();
        for seq in 0..4 {
            set_bit(&mut acked, seq);
        }
        let published = [Published { publisher: 0, acked, acked_count: 4, closed: false }];
        assert_eq!(c.lost(&published), 1, "sequence 2 was acked and never arrived");
    }
}
