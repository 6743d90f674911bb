//! What a gateway costs to keep: idle memory with 10,000 devices in the credential cache
//! (synced from a registry), memory with 1,000 sensors connected, the time from start to ready,
//! the reconnect storm (1,000 sensors logging in at once, right after a restart and again on a
//! running gateway), and the binary's size. Side by side with mosquitto holding the same
//! 10,000 users in a `password_file` (hashed by `mosquitto_passwd -U`, its own format).

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use gw_devcloud::{DevCloud, Seed};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    mqtt::{self, APP},
    util::{self, Gatewayd, MOSQUITTO, Proc, Table, ratio, rss_kib, thousands},
};

const GATEWAY: &str = "gw1";

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Waits a moment for the process to settle, then reads its RSS.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_kib(pid)
}

/// How long a storm of logins took: until the last CONNACK, and for the median sensor.
#[derive(Clone, Copy)]
struct Storm {
    all: Duration,
    p50: Duration,
}

/// `n` sensors connect at once; returns how long until every one had its CONNACK (and the
/// median), with the connections (held open).
async fn storm(
    addr: SocketAddr,
    n: usize,
    login: &impl Fn(usize) -> (String, String),
) -> anyhow::Result<(Storm, Vec<TcpStream>)> {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (user, pass) = login(i);
        tasks.spawn(async move {
            let connected = mqtt::connect(addr, &format!("storm{i}"), Some((&user, &pass))).await;
            connected.map(|(s, _)| (s, t0.elapsed()))
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        let (stream, took) = r??;
        held.push(stream);
        times.push(took.as_micros() as u64);
    }
    let p50 = Duration::from_micros(util::pct(&mut times, 0.5, 1.0) as u64);
    Ok((Storm { all: t0.elapsed(), p50 }, held))
}

/// RSS idle, a cold storm, RSS with the sensors connected, then a warm storm: the same steps
/// for gatewayd and for mosquitto.
async fn connected_steps(
    pid: u32,
    addr: SocketAddr,
    sensors: usize,
    login: impl Fn(usize) -> (String, String),
) -> anyhow::Result<(u64, u64, Storm, Storm)> {
    let idle_kib = settled_rss(pid).await;
    let (cold, held) = storm(addr, sensors, &login).await?;
    let connected_kib = settled_rss(pid).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (warm, held) = storm(addr, sensors, &login).await?;
    drop(held);
    Ok((idle_kib, connected_kib, cold, warm))
}

struct Side {
    first_ready: Option<Duration>,
    ready: Duration,
    idle_kib: u64,
    connected_kib: u64,
    cold: Storm,
    warm: Storm,
    binary: u64,
}

fn gatewayd_config(dir: &Path, cloud: &DevCloud, token: &str) -> String {
    let url = cloud.url();
    format!(
        "[gateway]\nname = \"{GATEWAY}\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = \"gwpw\"\n\n\
         [registry]\nurl = {url:?}\ntoken = {token:?}\ninterval = \"1h\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\nmax_connections = 20000\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"bench-api-token-0123\"\n",
        dir.join("footprint-data").display().to_string()
    )
}

async fn registry_devices(gw: &Gatewayd) -> u64 {
    gw.status().await.ok().and_then(|s| s["credentials"]["registry_devices"].as_u64()).unwrap_or(0)
}

async fn gatewayd_side(dir: &Path, devices: usize, sensors: usize) -> anyhow::Result<Side> {
    let token = "bench-token";
    let mut seed =
        Seed::new().user("admin", token).application(APP).password_device(APP, GATEWAY, "gwpw");
    for i in 0..devices {
        seed = seed.sensor(APP, &format!("s{i}"), Some("pw"), &[GATEWAY]);
    }
    let shutdown = CancellationToken::new();
    let cloud =
        DevCloud::start(SocketAddr::from(([127, 0, 0, 1], 0)), seed, shutdown.child_token())
            .await
            .context("cannot start the dev cloud")?;
    let config = gatewayd_config(dir, &cloud, token);

    // first start: the registry sync hashes every device's password (argon2id, the defaults)
    let gw = Gatewayd::start(
        dir,
        "footprint-gatewayd",
        &config,
        &["mqtt", "web"],
        Duration::from_secs(60),
    )?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while registry_devices(&gw).await < devices as u64 {
        if Instant::now() > deadline {
            bail!("gatewayd did not cache {devices} devices within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_ready = gw.started.elapsed();
    drop(gw);

    // restart: the snapshot holds the cache; this is a gateway's normal boot
    let gw = Gatewayd::start(
        dir,
        "footprint-gatewayd",
        &config,
        &["mqtt", "web"],
        Duration::from_secs(60),
    )?;
    let ready = gw.ready(Duration::from_secs(60)).await?;
    if registry_devices(&gw).await < devices as u64 {
        bail!("the restarted gateway did not load its credential snapshot");
    }
    let login = |i: usize| (format!("s{i}@{APP}"), "pw".to_owned());
    let (idle_kib, connected_kib, cold, warm) =
        connected_steps(gw.proc.pid(), gw.addr("mqtt")?, sensors, login).await?;
    let binary = std::fs::metadata(util::gatewayd_bin()?)?.len();
    drop(gw);
    shutdown.cancel();
    Ok(Side { first_ready: Some(first_ready), ready, idle_kib, connected_kib, cold, warm, binary })
}

async fn mosquitto_side(dir: &Path, devices: usize, sensors: usize) -> anyhow::Result<Side> {
    let passwords = dir.join("footprint-mosquitto.passwd");
    let plain: String = (0..devices).map(|i| format!("s{i}:pw\n")).collect();
    std::fs::write(&passwords, plain)?;
    let status = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(&passwords)
        .status()
        .context("mosquitto_passwd (package mosquitto) is needed")?;
    if !status.success() {
        bail!("mosquitto_passwd -U failed");
    }
    let t0 = Instant::now();
    let (p, addr): (Proc, SocketAddr) = util::mosquitto(
        dir,
        "footprint-mosquitto",
        &format!("allow_anonymous false\npassword_file {}\n", passwords.display()),
    )?;
    // util::mosquitto returns once the port accepts connections
    let ready = t0.elapsed();
    let login = |i: usize| (format!("s{i}"), "pw".to_owned());
    let (idle_kib, connected_kib, cold, warm) =
        connected_steps(p.pid(), addr, sensors, login).await?;
    let binary = std::fs::metadata(MOSQUITTO)?.len();
    Ok(Side { first_ready: None, ready, idle_kib, connected_kib, cold, warm, binary })
}

/// The shared libraries a binary loads (`ldd`), with their total size.
fn libraries(bin: &Path) -> (usize, u64) {
    let out = Command::new("ldd").arg(bin).output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let libs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("=>").nth(1)?.split_whitespace().next().map(str::to_owned))
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .collect();
    (libs.len(), libs.iter().sum())
}

pub async fn scenario(dir: &Path, devices: usize, sensors: usize) -> anyhow::Result<()> {
    println!(
        "\n## Footprint: memory, start-up, reconnect storm, binary\n\n{} devices in the \
         credential cache (gatewayd: synced from the dev cloud's registry, argon2id with the \
         `[auth]` defaults; mosquitto: the same users in a `password_file`), then {} sensors \
         connect at once over MQTT (\"cold\": right after the start; \"warm\": again, on the \
         running process).",
        thousands(devices as f64),
        thousands(sensors as f64)
    );
    let g = gatewayd_side(dir, devices, sensors).await?;
    let m = mosquitto_side(dir, devices, sensors).await?;
    let table =
        Table::new("Footprint", &["measure", "gatewayd", "mosquitto", "gatewayd ÷ mosquitto"]);
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    table.row(&[
        format!(
            "first start until {} devices are cached (registry sync, hashing)",
            thousands(devices as f64)
        ),
        g.first_ready.map_or("–".into(), secs),
        "–".into(),
        String::new(),
    ]);
    table.row(&[
        "start until ready (restart with the cache)".into(),
        secs(g.ready),
        secs(m.ready),
        ratio(g.ready.as_secs_f64(), m.ready.as_secs_f64()),
    ]);
    table.row(&[
        format!("RSS idle, {} devices, MiB", thousands(devices as f64)),
        mib(g.idle_kib),
        mib(m.idle_kib),
        ratio(g.idle_kib as f64, m.idle_kib as f64),
    ]);
    table.row(&[
        format!("RSS with {} sensors connected, MiB", thousands(sensors as f64)),
        mib(g.connected_kib),
        mib(m.connected_kib),
        ratio(g.connected_kib as f64, m.connected_kib as f64),
    ]);
    let n = thousands(sensors as f64);
    for (name, g, m) in [("cold", g.cold, m.cold), ("warm", g.warm, m.warm)] {
        table.row(&[
            format!("reconnect storm, {n} at once, {name}: until all are connected"),
            secs(g.all),
            secs(m.all),
            ratio(g.all.as_secs_f64(), m.all.as_secs_f64()),
        ]);
        table.row(&[
            format!("reconnect storm, {n} at once, {name}: median sensor's CONNACK"),
            secs(g.p50),
            secs(m.p50),
            ratio(g.p50.as_secs_f64(), m.p50.as_secs_f64()),
        ]);
    }
    let gw_bin = util::gatewayd_bin()?;
    let (g_libs, g_lib_bytes) = libraries(&gw_bin);
    let (m_libs, m_lib_bytes) = libraries(Path::new(MOSQUITTO));
    table.row(&[
        "binary size (stripped), MiB".into(),
        format!("{:.1}", g.binary as f64 / 1048576.0),
        format!("{:.2}", m.binary as f64 / 1048576.0),
        ratio(g.binary as f64, m.binary as f64),
    ]);
    table.row(&[
        "shared libraries loaded (count, MiB)".into(),
        format!("{g_libs}, {:.1}", g_lib_bytes as f64 / 1048576.0),
        format!("{m_libs}, {:.1}", m_lib_bytes as f64 / 1048576.0),
        String::new(),
    ]);
    let stripped = Command::new("file")
        .arg(&gw_bin)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("stripped")
                && !String::from_utf8_lossy(&o.stdout).contains("not stripped")
        })
        .unwrap_or(false);
    if !stripped {
        println!("\n(note: {} is not stripped; the release profile strips it)", gw_bin.display());
    }
    Ok(())
}
