//! The outbox after an outage: sensors publish a backlog of N messages (default 1,000,000)
//! while the upstream is down, every one acknowledged; then the upstream comes up and the
//! backlog drains. Measured: how fast the backlog was taken in (acked msg/s), how long the
//! drain took from the upstream's start and from the uplink's first delivery, the drain rate,
//! and what of the acknowledged backlog never arrived. The same for a mosquitto bridge with
//! its queue limits removed (`max_queued_messages 0`, `max_queued_bytes 0`), so it keeps the
//! backlog in memory.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
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
    rss_peak_kib: u64,
}

impl Drained {
    /// What arrived of the backlog per second, from the first delivery to the last.
    fn drain_per_s(&self) -> f64 {
        (self.acked - self.lost) as f64 / self.span.as_secs_f64().max(1e-3)
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
) -> anyhow::Result<Drained> {
    let counts = Shared::default();
    let run_id = mqtt::new_run(&counts).await;
    let _ = run_id;
    let per = messages.div_ceil(PUBLISHERS) as u32;
    let load = Load {
        publishers: PUBLISHERS,
        window: mqtt::WINDOW,
        size: SIZE,
        per_publisher: Some(per),
        rate: None,
    };
    let (published, secs) = mqtt::publish(run_id, target, load, 3600.0).await?;
    let acked: u64 = published.iter().map(|p| p.acked_count).sum();
    eprintln!("backlog of {acked} acknowledged in {secs:.1} s; starting the upstream");
    let mut rss_peak_kib = rss_kib(pid);
    if let Some(gw) = gw {
        let queued = gw.status().await?["outbox"]["records_queued"].as_u64().unwrap_or(0);
        if queued < acked {
            bail!("gatewayd acknowledged {acked} but holds only {queued} in its outbox");
        }
    }
    // the upstream comes up: the counting server takes over the port and the run id
    let listener = TcpListener::bind(upstream).await?;
    let started = Instant::now();
    let sink = counts;
    mqtt::counting_server(listener, &sink);
    let deadline = started + limit;
    let mut last = (0u64, Instant::now());
    loop {
        let received = sink.lock().map(|c| c.received).unwrap_or(0);
        rss_peak_kib = rss_peak_kib.max(rss_kib(pid));
        if received >= acked || Instant::now() > deadline {
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
    let c = std::mem::take(&mut *sink.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let (first, last) = match (c.first, c.last) {
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
        rss_peak_kib,
    })
}

pub async fn scenario(dir: &Path, messages: usize) -> anyhow::Result<()> {
    println!(
        "\n## Outbox drain after an outage\n\n{} messages of {SIZE} bytes from {PUBLISHERS} \
         publishers (QoS 1, {} in flight each), every one acknowledged while the upstream is \
         down; then a counting MQTT server starts on the upstream's port.",
        thousands(messages as f64),
        mqtt::WINDOW
    );
    let table = Table::new(
        "Backlog drain",
        &[
            "path",
            "backlog acked",
            "taken in msg/s",
            "drain time from upstream start s",
            "drain time from first delivery s",
            "drain msg/s",
            "lost",
            "dup",
            "peak RSS MiB",
            "gatewayd ÷ bridge (drain msg/s)",
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
    let g = backlog(
        &Target { addr: gw.addr("mqtt")?, gatewayd: true },
        gw_up,
        gw.proc.pid(),
        messages,
        Some(&gw),
        Duration::from_secs(900),
    )
    .await?;
    drop(gw);
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
    let b = backlog(
        &Target { addr: br_addr, gatewayd: false },
        br_up,
        br.pid(),
        messages,
        None,
        Duration::from_secs(900),
    )
    .await?;
    for (name, d, vs) in [
        ("gatewayd (on disk)", &g, ratio(g.drain_per_s(), b.drain_per_s())),
        ("mosquitto bridge (in memory)", &b, String::new()),
    ] {
        table.row(&[
            name.into(),
            thousands(d.acked as f64),
            thousands(d.ingest_per_s),
            format!("{:.1}", d.total.as_secs_f64()),
            format!("{:.1}", d.span.as_secs_f64()),
            thousands(d.drain_per_s()),
            thousands(d.lost as f64),
            d.duplicates.to_string(),
            format!("{:.0}", d.rss_peak_kib as f64 / 1024.0),
            vs,
        ]);
    }
    println!(
        "\n(\"drain time from upstream start\" includes each one's reconnect delay; the ratio \
         compares drain rates. The bridge keeps its backlog in memory and loses it on a \
         restart.)"
    );
    Ok(())
}
