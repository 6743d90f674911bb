//! Commands through the real `gatewayd` binary, one at a time (commands are rare; this is
//! their latency, not a throughput race):
//! (a) push for a sensor that is away: `POST /api/commands/v1/push` answered 202 once the
//!     command is on disk;
//! (b) push for a sensor whose HTTP request waits with `ct=30`: from the push until the
//!     sensor's 200 + `command:` answer arrives (the push answers 200);
//! (c) the sensor's next publish carrying a queued command (200, one durable removal) beside
//!     a plain publish (202, one outbox commit).
//!
//! `cargo bench -p gatewayd --bench commands_e2e` (env `BENCH_COMMANDS`, default 200).

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;

const APP: &str = "bench";
const DEVICES: usize = 10;

fn quantiles(mut lat: Vec<Duration>) -> String {
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("n {:>4}  p50 {:>6.2} ms  p99 {:>6.2} ms", lat.len(), ms(q(0.5)), ms(q(0.99)))
}

fn push_body(device: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "application": APP, "device": device, "command": "set",
        "payload": base64::engine::general_purpose::STANDARD.encode(format!("{{\"i\":{i}}}")),
    })
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_COMMANDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\npush_token = \"t\"\n\n[log]\nformat = \"json\"\n",
        dir.path().join("data").display().to_string()
    );
    for d in 0..DEVICES {
        config.push_str(&format!("\n[[devices]]\nname = \"s{d}\"\npassword = \"pw\"\n"));
    }
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn,gatewayd=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut web = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("\"listener\":\"web\"") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            web = Some(v["addr"].as_str().unwrap().to_owned());
            break;
        }
    }
    let web = web.expect("gatewayd printed no web listener");
    let push_url = format!("http://{web}/api/commands/v1/push");
    let client = reqwest::Client::new();

    // (a) queued for sensors that are away
    let mut queued = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = client
            .post(&push_url)
            .bearer_auth("t")
            .json(&push_body(&format!("s{}", i % DEVICES), i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        queued.push(t.elapsed());
    }

    // (c) each sensor's next publishes carry them; then plain publishes
    let publish = |device: String| {
        client
            .post(format!("http://{web}/v1/bench"))
            .basic_auth(format!("{device}@{APP}"), Some("pw"))
            .header("content-type", "application/json")
            .body("{\"t\":21}")
            .send()
    };
    let mut carrying = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = publish(format!("s{}", i % DEVICES)).await.unwrap();
        assert_eq!(r.status(), 200);
        carrying.push(t.elapsed());
    }
    let mut plain = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = publish(format!("s{}", i % DEVICES)).await.unwrap();
        assert_eq!(r.status(), 202);
        plain.push(t.elapsed());
    }

    // (b) delivered to a waiting request
    let mut delivered = Vec::with_capacity(n);
    for i in 0..n {
        let device = format!("s{}", i % DEVICES);
        let waiting = {
            let (client, web, device) = (client.clone(), web.clone(), device.clone());
            tokio::spawn(async move {
                let r = client
                    .post(format!("http://{web}/v1/bench?ct=30"))
                    .basic_auth(format!("{device}@{APP}"), Some("pw"))
                    .body("1")
                    .send()
                    .await
                    .unwrap();
                (r.status(), Instant::now())
            })
        };
        // until the request waits (the status lists it)
        loop {
            let s: serde_json::Value = client
                .get(format!("http://{web}/api/v1/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["commands"]["waiting_requests"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        let r = client.post(&push_url).bearer_auth("t").json(&push_body(&device, i)).send().await;
        assert_eq!(r.unwrap().status(), 200);
        let (status, at) = waiting.await.unwrap();
        assert_eq!(status, 200);
        delivered.push(at - t);
    }

    println!("commands through gatewayd (sync = always), one at a time");
    println!("  (a) push, sensor away: 202 (queued)      {}", quantiles(queued));
    println!("  (b) push to a waiting request: answered  {}", quantiles(delivered));
    println!("  (c) publish carrying a queued command    {}", quantiles(carrying));
    println!("      plain publish (202)                  {}", quantiles(plain));
    let _ = child.kill();
    let _ = child.wait();
}
