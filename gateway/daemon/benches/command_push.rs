//! Rate and latency of the command push endpoint of the real `gatewayd` binary: keep-alive
//! connections post Drogue's default body (Bearer secret, 100-byte payload) for offline sensors,
//! so every command is queued durably before its 202; and, as the endpoint's own ceiling, for a
//! device the gateway does not proxy (404, nothing stored).
//!
//! `cargo bench -p gatewayd --bench command_push` (env `BENCH_SECONDS`, default 3, per cell).

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

use base64::Engine;

const APP: &str = "bench";
const SENSORS: usize = 256;
const TOKEN: &str = "bench-push-token";

struct Cell {
    answered: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// `conns` tasks with one push in flight each for `secs`; task i pushes for `device(i)` and
/// expects `status`.
async fn load(
    url: &str,
    conns: usize,
    secs: f64,
    device: fn(usize) -> String,
    status: u16,
) -> Cell {
    let client = reqwest::Client::builder().pool_max_idle_per_host(conns).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let payload = base64::engine::general_purpose::STANDARD.encode([b'x'; 100]);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (client, stop, url) = (client.clone(), stop.clone(), url.to_owned());
        let body = serde_json::json!({
            "application": APP, "device": device(c), "command": "set", "payload": payload,
        })
        .to_string();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), status, "{}", r.text().await.unwrap_or_default());
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
    Cell { answered: all.len() as u64, secs, p50: q(0.50), p99: q(0.99) }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\npush_token = \"{TOKEN}\"\n\n\
         [commands]\nmax_per_device = 1000000\nmax_total = 1000000\nmax_bytes = \"4GiB\"\n\n\
         [log]\nformat = \"json\"\nlevel = \"error,gatewayd::wiring=info\"\n",
        dir.path().join("data").display().to_string(),
    );
    for s in 0..SENSORS {
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
    std::thread::spawn(move || lines.for_each(|l| eprintln!("gatewayd: {l}")));
    let url = format!("{web}/api/commands/v1/push");

    println!("Command push, Drogue's default body with a 100-byte payload, {secs} s per cell");
    println!("| conns | command for | answer | pushes/s | p50 ms | p99 ms |");
    println!("|---:|---|---|---:|---:|---:|");
    for conns in [1usize, 32, 256] {
        let cell = load(&url, conns, secs, |c| format!("stranger{c}"), 404).await;
        println!(
            "| {conns} | a device not proxied | 404 | {:.0} | {} | {} |",
            cell.answered as f64 / cell.secs,
            ms(cell.p50),
            ms(cell.p99)
        );
        let cell = load(&url, conns, secs, |c| format!("s{c}"), 202).await;
        println!(
            "| {conns} | an offline sensor (queued durably) | 202 | {:.0} | {} | {} |",
            cell.answered as f64 / cell.secs,
            ms(cell.p50),
            ms(cell.p99)
        );
    }
    let status: serde_json::Value =
        reqwest::get(format!("{web}/api/v1/status")).await.unwrap().json().await.unwrap();
    eprintln!("intake: {}", status["command_intake"]);
    let _ = gw.kill();
    let _ = gw.wait();
}
