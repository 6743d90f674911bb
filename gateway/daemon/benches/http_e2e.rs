//! End-to-end rate of HTTP sensors: many keep-alive connections post 100-byte JSON readings
//! (a) straight to the dev cloud's HTTP endpoint (the sink's own ceiling, no gateway) and
//! (b) to the real `gatewayd` binary, which acknowledges each after its durable outbox commit
//! and forwards it to the same dev cloud as the sensor.
//!
//! `cargo bench -p gatewayd --bench http_e2e` (env `BENCH_SECONDS`, default 3, per cell).

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "bench";
const MAX_SENSORS: usize = 256;

struct Cell {
    accepted: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// `conns` tasks, one request in flight each, sensor i on connection i, for `secs`.
async fn load(base: &str, conns: usize, secs: f64) -> Cell {
    let client = reqwest::Client::builder().pool_max_idle_per_host(conns).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (client, stop, url) = (client.clone(), stop.clone(), format!("{base}/v1/bench"));
        tasks.spawn(async move {
            let user = format!("s{c}@{APP}");
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = format!("{{\"n\":{n:>10},\"pad\":\"{}\"}}", "x".repeat(70));
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .basic_auth(&user, Some("pw"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(l) = tasks.join_next().await {
        all.extend(l.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Cell { accepted: all.len() as u64, secs, p50: q(0.50), p99: q(0.99) }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let mut seed =
        Seed::new().user("admin", "t").application(APP).password_device(APP, "gw1", "gwpw");
    for s in 0..MAX_SENSORS {
        seed = seed.sensor(APP, &format!("s{s}"), Some("pw"), &["gw1"]);
    }
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {:?}\npassword = \"gwpw\"\nconcurrency = 64\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,gatewayd::wiring=info\"\n",
        dir.path().join("data").display().to_string(),
        cloud.url()
    );
    for s in 0..MAX_SENSORS {
        config.push_str(&format!("\n[[devices]]\nname = \"s{s}\"\npassword = \"pw\"\n"));
    }
    let config_path = dir.path().join("gatewayd.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["run", "--config", config_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines().map_while(Result::ok);
    let mut web = None;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["listener"] == "web" {
            web = Some(format!("http://{}", v["addr"].as_str().unwrap()));
            break;
        }
    }
    let web = web.expect("gatewayd reported its web address");
    // keep reading, and show, what gatewayd logs (warnings and worse)
    std::thread::spawn(move || lines.for_each(|l| eprintln!("gatewayd: {l}")));

    println!(
        "HTTP sensors, 100-byte JSON, one request in flight per connection, {secs} s per cell"
    );
    println!("| conns | path | accepted msg/s | p50 ms | p99 ms | cloud events/s (end to end) |");
    println!("|---:|---|---:|---:|---:|---:|");
    for conns in [1usize, 32, 256] {
        let before = cloud.event_count() as usize;
        let direct = load(&cloud.url(), conns, secs).await;
        let direct_rate = direct.accepted as f64 / direct.secs;
        println!(
            "| {conns} | sensors → dev cloud (no gateway) | {:.0} | {} | {} | {:.0} |",
            direct_rate,
            ms(direct.p50),
            ms(direct.p99),
            (cloud.event_count() as usize - before) as f64 / direct.secs
        );

        let before = cloud.event_count() as usize;
        let t0 = Instant::now();
        let via = load(&web, conns, secs).await;
        // wait for the gateway to drain everything it acknowledged
        let deadline = Instant::now() + Duration::from_secs(120);
        while cloud.event_count() as usize - before < via.accepted as usize
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = cloud.event_count() as usize - before;
        let e2e = delivered as f64 / t0.elapsed().as_secs_f64();
        println!(
            "| {conns} | sensors → gatewayd (durable ack) → dev cloud | {:.0} | {} | {} | {:.0} |",
            via.accepted as f64 / via.secs,
            ms(via.p50),
            ms(via.p99),
            e2e
        );
        assert!(
            delivered >= via.accepted as usize,
            "lost messages: {delivered} < {}",
            via.accepted
        );
        let status: serde_json::Value =
            reqwest::get(format!("{web}/api/v1/status")).await.unwrap().json().await.unwrap();
        eprintln!(
            "uplink after {conns} conns: drained in {:?}; failures {} last error {}",
            t0.elapsed(),
            status["uplink"]["failures"],
            status["uplink"]["last_error"]
        );
    }
    let _ = gw.kill();
    let _ = gw.wait();
}
