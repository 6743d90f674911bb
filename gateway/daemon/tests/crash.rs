//! SIGKILL under load: every message gatewayd acknowledged (202) reaches the cloud after a
//! restart, however often the process is killed; duplicates are counted and bounded.
//!
//! `GATEWAYD_CRASH_ROUNDS` sets the number of kills (default 10).

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Running, status, write};
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const SENSORS: usize = 4;
const POSTERS_PER_SENSOR: usize = 4;
/// The uplink's requests in flight: what a kill can leave sent-but-unacknowledged.
const CONCURRENCY: usize = 32;
/// Acks ride along with the next group commit, so a kill also loses the acks made during one
/// commit cycle (write + fdatasync): at this machine's ~10k msg/s uplink rate and a slow-phase
/// commit of up to ~25 ms, about 256.
const ACKS_PER_COMMIT_CYCLE: usize = 256;

fn config(dir: &Path, cloud: &str) -> String {
    let mut text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         concurrency = {CONCURRENCY}\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,gatewayd::wiring=info\"\n",
        dir.join("data").display().to_string()
    );
    for s in 0..SENSORS {
        text.push_str(&format!("\n[[devices]]\nname = \"s{s}\"\npassword = \"pw{s}\"\n"));
    }
    write(dir, "gatewayd.toml", &text)
}

/// Posts messages `{"s":sensor,"n":k}` for one sensor until the gateway stops answering,
/// recording every k that was acknowledged with 202.
async fn post_until_dead(
    web: String,
    sensor: usize,
    next: Arc<Mutex<Vec<u64>>>,
    acked: Arc<Mutex<BTreeSet<(usize, u64)>>>,
) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for _ in 0..100_000 {
        let n = {
            let mut next = next.lock().unwrap();
            next[sensor] += 1;
            next[sensor]
        };
        let r = client
            .post(format!("http://{web}/v1/crash"))
            .basic_auth(format!("s{sensor}@{APP}"), Some(format!("pw{sensor}")))
            .header("content-type", "application/json")
            .body(format!("{{\"s\":{sensor},\"n\":{n}}}"))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => {
                acked.lock().unwrap().insert((sensor, n));
            }
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => return, // killed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_under_load() {
    let rounds: usize =
        std::env::var("GATEWAYD_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let mut seed =
        Seed::new().user("admin", "t").application(APP).password_device(APP, "gw1", "gw-secret");
    for s in 0..SENSORS {
        seed = seed.sensor(APP, &format!("s{s}"), None, &["gw1"]);
    }
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
    let cfg = config(dir.path(), &cloud.url());
    let next = Arc::new(Mutex::new(vec![0u64; SENSORS]));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..rounds {
        let mut gw = Running::start(&cfg, None);
        let web = gw.web_addr();
        let mut load = tokio::task::JoinSet::new();
        for sensor in 0..SENSORS {
            for _ in 0..POSTERS_PER_SENSOR {
                load.spawn(post_until_dead(web.clone(), sensor, next.clone(), acked.clone()));
            }
        }
        let wait = Duration::from_millis(300 + rand::random::<u64>() % 900);
        tokio::time::sleep(wait).await;
        gw.child.kill().unwrap(); // SIGKILL
        gw.child.wait().unwrap();
        while load.join_next().await.is_some() {}
        eprintln!(
            "round {round}: killed after {wait:?}; {} acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    // A last, clean start drains what is left.
    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    let acked = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (received, counts) = loop {
        let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
        for e in cloud.events().iter().filter(|e| e.kind == "io.drogue.event.v1") {
            let d = e.data.as_ref().unwrap();
            let key = (d["s"].as_u64().unwrap() as usize, d["n"].as_u64().unwrap());
            *counts.entry(key).or_default() += 1;
        }
        let received: BTreeSet<_> = counts.keys().copied().collect();
        if acked.is_subset(&received) || Instant::now() > deadline {
            break (received, counts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lost: Vec<_> = acked.difference(&received).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let unacked_delivered = received.difference(&acked).count();
    eprintln!(
        "{rounds} kills: {} acknowledged, {} lost, {} received ({} more than once: {duplicates} duplicates), \
         {unacked_delivered} delivered without an acknowledgement reaching the sensor",
        acked.len(),
        lost.len(),
        received.len(),
        counts.values().filter(|c| **c > 1).count(),
    );
    assert!(acked.len() > rounds * 10, "the load generator got too few acknowledgements");
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // Each kill can leave the uplink's in-flight window sent but not yet acknowledged to the
    // outbox, and the acks of the commit cycle under way unwritten: that is what may be sent
    // twice.
    let bound = rounds * (CONCURRENCY + ACKS_PER_COMMIT_CYCLE);
    assert!(duplicates <= bound, "{duplicates} duplicates after {rounds} kills (bound {bound})");

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = status(&client, &web).await;
    while status["outbox"]["records_queued"] != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = common::status(&client, &web).await;
    }
    assert_eq!(status["outbox"]["records_queued"], 0, "{status}");
}
