//! The outbox after an outage: sensors publish a backlog of N messages (default 1,000,000)
//! while the upstream is down, every one acknowledged; then the upstream comes up and the
//! backlog drains. Measured: how fast the backlog was taken in (acked msg/s), how long the
//! drain took from the upstream's start and from the uplink's first delivery, the drain rate,
//! and what of the acknowledged backlog never arrived. The same for a mosquitto bridge with
//! its queue limits removed (`max_queued_messages 0`, `max_queued_bytes 0`), so it keeps the
//! backlog in memory.
//!
//! Each forwarder is pinned to CPU 0, this process (load and upstream) to CPU 1, as in the
//! paced cells. With `live`, the same publishers keep sending at that rate (continuing their
//! sequences) from the upstream's start until the backlog has arrived, so one device's live
//! messages must come after its backlog; the upstream counts any arrival behind a later one of
//! the same publisher as out of order.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;

use crate::{
    mqtt::{self, Load, Shared, Target},
    util::{self, Gatewayd, Table, ratio, rss_kib, thousands},
};

const PUBLISHERS: usize = 100;
const SIZE: usize = 100;

struct Drained {
    ingest_per_s: f64,
    acked: u64,
    /// From the upstream's start to the last arrival.
    total: Duration,
    /// From the first arrival to the last.
    span: Duration,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    /// Live messages acknowledged during the drain.
    live_acked: u64,
    /// Why the live load failed, if it did (the forwarder did not take its connections).
    live_error: Option<String>,
    rss_peak_kib: u64,
    /// What gatewayd's status showed during the drain: the most records queued, the oldest
    /// age then, and the highest forwarding rate (`throughput.out_per_second`).
    status_seen: Option<(u64, u64, f64)>,
}

impl Drained {
    /// What arrived of the backlog per second, from the first delivery to the backlog's last.
    fn drain_per_s(&self) -> f64 {
        (self.acked - self.lost.min(self.acked)) as f64 / self.span.as_secs_f64().max(1e-3)
    }
}

/// Publishes the backlog into `target` while nothing listens on `upstream`, then starts the
/// counting upstream there and waits (at most `limit`) for the backlog.
async fn backlog(
    target: &Target,
    upstream: SocketAddr,
    pid: u32,
    messages: usize,
    gw: Option<&Gatewayd>,
    limit: Duration,
    live: Option<f64>,
) -> anyhow::Result<Drained> {
    let counts = Shared::default();
    let run_id = mqtt::new_run(&counts).await;
    let per = messages.div_ceil(PUBLISHERS) as u32;
    let load = Load {
        publishers: PUBLISHERS,
        window: mqtt::WINDOW,
        size: SIZE,
        per_publisher: Some(per),
        rate: None,
        first_seq: 0,
    };
    let (published, secs) =
        mqtt::publish(run_id, target, load, 3600.0).await.context("the backlog's load")?;
    let acked: u64 = published.iter().map(|p| p.acked_count).sum();
    eprintln!("backlog of {acked} acknowledged in {secs:.1} s; starting the upstream");
    let mut rss_peak_kib = rss_kib(pid);
    if let Some(gw) = gw {
        let queued = gw.status().await?["outbox"]["records_queued"].as_u64().unwrap_or(0);
        if queued < acked {
            bail!("gatewayd acknowledged {acked} but holds only {queued} in its outbox");
        }
    }
    if let Ok(mut c) = counts.lock() {
        c.backlog_below = per;
    }
    // the upstream comes up: the counting server takes over the port and the run id; the
    // live load (if any) starts with it
    let listener = TcpListener::bind(upstream).await?;
    let started = Instant::now();
    let sink = counts;
    mqtt::counting_server(listener, &sink);
    let stop_live = Arc::new(AtomicBool::new(false));
    let live_task = live.map(|rate| {
        let live_load = Load {
            per_publisher: None,
            rate: Some(rate / PUBLISHERS as f64),
            first_seq: per,
            ..load
        };
        let (target, stop) = (target.clone(), stop_live.clone());
        tokio::spawn(async move { mqtt::publish_until(run_id, &target, live_load, stop).await })
    });
    let deadline = started + limit;
    let mut last = (0u64, Instant::now());
    let mut status_seen: Option<(u64, u64, f64)> = None;
    let mut next_status = Instant::now();
    loop {
        let (received, backlog_in) =
            sink.lock().map(|c| (c.received, c.backlog_received)).unwrap_or((0, 0));
        rss_peak_kib = rss_peak_kib.max(rss_kib(pid));
        if let Some(gw) = gw.filter(|_| Instant::now() >= next_status) {
            next_status = Instant::now() + Duration::from_millis(500);
            if let Ok(st) = gw.status().await {
                let queued = st["outbox"]["records_queued"].as_u64().unwrap_or(0);
                let age = st["outbox"]["oldest_age_seconds"].as_u64().unwrap_or(0);
                let out = st["throughput"]["out_per_second"].as_f64().unwrap_or(0.0);
                let seen = status_seen.get_or_insert((queued, age, out));
                if queued > seen.0 {
                    (seen.0, seen.1) = (queued, age);
                }
                seen.2 = seen.2.max(out);
            }
        }
        // `received` counts live arrivals too
        if backlog_in >= acked || Instant::now() > deadline {
            break;
        }
        if last.1.elapsed() > Duration::from_secs(5) && received == last.0 {
            eprintln!("drain: {received} of {acked} arrived so far");
            if let Some(gw) = gw {
                let st = gw.status().await.unwrap_or_default();
                eprintln!("gatewayd: cloud {} outbox {}", st["cloud"], st["outbox"]);
            }
            last.1 = Instant::now();
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if received > 0 && last.1.elapsed() > Duration::from_secs(10) {
            break;
        } else if received == 0 && started.elapsed() > Duration::from_secs(60) {
            eprintln!("drain: nothing arrived within 60 s of the upstream's start");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_live.store(true, Ordering::Relaxed);
    let mut published = published;
    let mut live_acked = 0;
    let mut live_error = None;
    if let Some(task) = live_task {
        match task.await? {
            Ok((live_published, _)) => {
                live_acked = live_published.iter().map(|p| p.acked_count).sum();
                published.extend(live_published);
            }
            Err(e) => {
                eprintln!("drain: the live load failed: {e:#}");
                live_error = Some(format!("{e:#}"));
            }
        }
        // what the live load had acknowledged last arrives too
        let want = acked + live_acked;
        let until = Instant::now() + Duration::from_secs(30);
        while sink.lock().map(|c| c.received).unwrap_or(0) < want && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let c = std::mem::take(&mut *sink.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let (first, last) = match (c.first, c.backlog_last) {
        (Some(a), Some(b)) => (a, b),
        _ => (started, started),
    };
    Ok(Drained {
        ingest_per_s: acked as f64 / secs,
        acked,
        total: last.saturating_duration_since(started),
        span: last.saturating_duration_since(first),
        lost: c.lost(&published),
        duplicates: c.duplicates,
        reordered: c.reordered,
        live_acked,
        live_error,
        rss_peak_kib,
        status_seen,
    })
}

pub async fn scenario(dir: &Path, messages: usize, live: Option<f64>) -> anyhow::Result<()> {
    println!(
        "\n## Outbox drain after an outage\n\n{} messages of {SIZE} bytes from {PUBLISHERS} \
         publishers (QoS 1, {} in flight each), every one acknowledged while the upstream is \
         down; then a counting MQTT server starts on the upstream's port{}. Each forwarder is \
         pinned to CPU 0, the load and the upstream (this process) to CPU 1.",
        thousands(messages as f64),
        mqtt::WINDOW,
        match live {
            Some(r) => format!(
                ", and the same publishers keep sending {} msg/s in all (continuing their \
                 sequences) until the backlog has arrived",
                thousands(r)
            ),
            None => String::new(),
        }
    );
    mqtt::pin(std::process::id(), "1")?;
    let table = Table::new(
        "Backlog drain",
        &[
            "path",
            "backlog acked",
            "taken in msg/s",
            "drain time from upstream start s",
            "drain time from first delivery s",
            "drain msg/s",
            "live acked",
            "lost",
            "dup",
            "out of order",
            "peak RSS MiB",
        ],
    );
    let gw_up = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
    let gw = mqtt::gatewayd(
        dir,
        "drain-gatewayd",
        gw_up,
        PUBLISHERS,
        "\n[store]\nmax_bytes = \"8GiB\"\n",
    )?;
    mqtt::pin(gw.proc.pid(), "0")?;
    let g = backlog(
        &Target { addr: gw.addr("mqtt")?, gatewayd: true },
        gw_up,
        gw.proc.pid(),
        messages,
        Some(&gw),
        Duration::from_secs(900),
        live,
    )
    .await?;
    drop(gw);
    row(&table, "gatewayd (on disk)", &g);
    let br_up = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
    // a persistent bridge session (cleansession false): with a clean one, mosquitto drops
    // what it queued for the upstream while the link was down
    let (br, br_addr) = util::mosquitto(
        dir,
        "drain-bridge",
        &format!(
            "allow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\n\
             connection upstream\naddress {br_up}\ntopic # out 1\ntry_private false\n\
             notifications false\ncleansession false\nbridge_protocol_version mqttv311\n\
             restart_timeout 1\n"
        ),
    )?;
    mqtt::pin(br.pid(), "0")?;
    let b = backlog(
        &Target { addr: br_addr, gatewayd: false },
        br_up,
        br.pid(),
        messages,
        None,
        Duration::from_secs(900),
        live,
    )
    .await?;
    row(&table, "mosquitto bridge (in memory)", &b);
    println!("\ndrain rate, gatewayd ÷ bridge: {}", ratio(g.drain_per_s(), b.drain_per_s()));
    if let Some((queued, age, out)) = g.status_seen {
        println!(
            "\ngatewayd's status during the drain: up to {} records queued (oldest {age} s), \
             forwarding at up to {} msg/s (`throughput.out_per_second`, polled every 0.5 s)",
            thousands(queued as f64),
            thousands(out)
        );
    }
    println!(
        "\n(\"drain time from upstream start\" includes each one's reconnect delay; the ratio \
         compares drain rates: the backlog's arrivals from the first delivery to its last. The \
         bridge keeps its backlog in memory and loses it on a restart.)"
    );
    Ok(())
}

fn row(table: &Table, name: &str, d: &Drained) {
    table.row(&[
        name.into(),
        thousands(d.acked as f64),
        thousands(d.ingest_per_s),
        format!("{:.1}", d.total.as_secs_f64()),
        format!("{:.1}", d.span.as_secs_f64()),
        thousands(d.drain_per_s()),
        match &d.live_error {
            Some(e) => format!("failed: {e}"),
            None => thousands(d.live_acked as f64),
        },
        thousands(d.lost as f64),
        d.duplicates.to_string(),
        thousands(d.reordered as f64),
        format!("{:.0}", d.rss_peak_kib as f64 / 1024.0),
    ]);
}
