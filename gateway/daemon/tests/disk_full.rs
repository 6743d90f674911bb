//! A full disk against the real binary (issue 24): an 8 MiB tmpfs as the data dir with 3 MB
//! of other data on it; the cloud fails every publish while sensors fill the disk (HTTP 503,
//! MQTT PUBACK 0x97 once full); the cloud comes back and drains while the disk is still full;
//! the other data goes. Every acknowledged message reaches the cloud, and afterwards traffic
//! of twice the partition's size is all accepted and delivered. The same with a `kill -9` and
//! a restart in the middle. Also: a second gatewayd on the same data dir is refused naming the
//! first, and a stray segment file does not stop start-up.
//!
//! The tmpfs lives in a mount namespace held by a `sleep` that `unshare -m` starts; gatewayd
//! runs in it through `nsenter`, so it can be killed and started again on the same mount.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{BIN, Running, have_mosquitto_clients, status, write};
use gw_devcloud::{CloudEvent, DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "app";
const PARTITION: u64 = 8 << 20;
const PAD: usize = 4000;

fn seed(sensors: usize) -> Seed {
    let mut seed = Seed::new().user("admin", "token").application(APP).password_device(
        APP,
        "gw1",
        "gw-secret",
    );
    for i in 0..sensors {
        seed = seed.sensor(APP, &format!("s{i}"), None, &["gw1"]);
    }
    seed
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A config with sensors `s<i>` / `pw<i>`, the web and MQTT listeners on port 0, and `extra`.
fn config(dir: &Path, data: &Path, sensors: usize, extra: &str) -> String {
    let mut text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n{extra}\n",
        data.display().to_string()
    );
    for i in 0..sensors {
        text.push_str(&format!("\n[[devices]]\nname = \"s{i}\"\npassword = \"pw{i}\"\n"));
    }
    write(dir, "gatewayd.toml", &text)
}

fn cloud_section(url: &str) -> String {
    format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"300ms\"\ntimeout = \"2s\"\n"
    )
}

async fn publish(client: &reqwest::Client, web: &str, sensor: usize, i: u64, pad: usize) -> u16 {
    let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(pad));
    match client
        .post(format!("http://{web}/v1/temp"))
        .basic_auth(format!("s{sensor}@{APP}"), Some(format!("pw{sensor}")))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// One MQTT v5 QoS 1 publish as sensor `s1`: whether it was acknowledged, and what
/// mosquitto_pub said.
fn mqtt_publish(port: &str, i: u64, pad: usize) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1", "-i", "disk-full-s1"])
        .args(["-u", &format!("s1@{APP}"), "-P", "pw1", "-t", "temp"])
        .args(["-m", &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(pad))])
        .output()
        .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !said.contains("failed"), said)
}

fn mqtt_port(gw: &Running) -> String {
    gw.listener_addr("mqtt").rsplit(':').next().unwrap().to_owned()
}

fn telemetry(cloud: &DevCloud) -> Vec<CloudEvent> {
    cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect()
}

/// `(sensor, i)` of every telemetry event.
fn keys(events: &[CloudEvent]) -> BTreeSet<(String, u64)> {
    events
        .iter()
        .map(|e| {
            let data = e.data.as_ref().unwrap();
            (e.device.clone().unwrap(), data["i"].as_u64().unwrap())
        })
        .collect()
}

/// Waits until every key in `want` has reached the cloud, or `timeout`.
async fn wait_delivered(
    cloud: &DevCloud,
    want: &BTreeSet<(String, u64)>,
    timeout: Duration,
) -> BTreeSet<(String, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = keys(&telemetry(cloud));
        if want.is_subset(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the outbox holds nothing, or `timeout`; returns the last status.
async fn wait_drained(client: &reqwest::Client, web: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(client, web).await;
        if s["outbox"]["records_queued"] == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether this machine lets the test mount a small tmpfs in a mount namespace of its own.
fn can_mount_tmpfs() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!("mount -t tmpfs -o size=1m none {}", dir.path().display()))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI: cannot mount a tmpfs in a mount namespace");
        eprintln!("SKIP: no tmpfs in a mount namespace here (needs root)");
    }
    ok
}

/// A mount namespace with an 8 MiB tmpfs on `data` and 3 MB of other data on it, held open by
/// a sleeping process until dropped.
struct SmallDisk {
    holder: Child,
    data: String,
}

impl SmallDisk {
    fn new(data: &Path) -> Self {
        let data = data.display().to_string();
        let mut holder = Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={PARTITION} none {data} && \
                 dd if=/dev/zero of={data}/other.bin bs=1000000 count=3 2>/dev/null && \
                 echo ready && exec sleep 600"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the tmpfs was not mounted");
        Self { holder, data }
    }

    /// `cmd` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", program]);
        cmd
    }

    fn start_gatewayd(&self, config: &str) -> Running {
        let mut cmd = self.command(BIN);
        cmd.args(["run", "--config", config]);
        Running::spawn(cmd)
    }

    fn delete_other_data(&self) {
        let ok = self.command("rm").arg(format!("{}/other.bin", self.data)).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// What the sensors were told.
#[derive(Default)]
struct Acked {
    http: Vec<u64>,
    mqtt: Vec<u64>,
    next_http: u64,
    next_mqtt: u64,
}

impl Acked {
    fn keys(&self) -> BTreeSet<(String, u64)> {
        let http = self.http.iter().map(|i| ("s0".to_owned(), *i));
        http.chain(self.mqtt.iter().map(|i| ("s1".to_owned(), *i))).collect()
    }

    /// `n` HTTP posts, each of which must be accepted.
    async fn post_all(&mut self, client: &reqwest::Client, web: &str, n: u64, phase: &str) {
        for _ in 0..n {
            let i = self.next_http;
            self.next_http += 1;
            assert_eq!(publish(client, web, 0, i, PAD).await, 202, "{phase}: post {i}");
            self.http.push(i);
        }
    }

    fn mqtt_all(&mut self, port: Option<&str>, n: u64, phase: &str) {
        let Some(port) = port else { return };
        for _ in 0..n {
            let i = self.next_mqtt;
            self.next_mqtt += 1;
            let (ok, said) = mqtt_publish(port, i, 10);
            assert!(ok, "{phase}: MQTT publish {i}: {said}");
            self.mqtt.push(i);
        }
    }
}

/// The sequence of issue 24 point 1; with `restart`, gatewayd is killed (-9) and started
/// again on the same tmpfs once the disk is full.
async fn disk_full_sequence(restart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cloud_addr = free_addr();
    let cloud = DevCloud::start(cloud_addr, seed(2), CancellationToken::new()).await.unwrap();
    cloud.faults().set_publish_status(Some(500));
    let disk = SmallDisk::new(&data);
    // the default max_bytes (256 MiB) is far above the partition: the outbox clamps it
    let cfg = config(dir.path(), &data, 2, &cloud_section(&format!("http://{cloud_addr}")));
    let mut gw = disk.start_gatewayd(&cfg);
    let mut web = gw.web_addr();
    let mqtt = have_mosquitto_clients().then(|| mqtt_port(&gw));
    let client = reqwest::Client::new();
    let s = status(&client, &web).await;
    let max = s["outbox"]["max_bytes"].as_u64().unwrap();
    assert!(max < PARTITION - 3_000_000, "max_bytes clamped to the partition: {s}");

    // The cloud fails every publish while sensors fill the disk.
    let mut acked = Acked::default();
    acked.mqtt_all(mqtt.as_deref(), 5, "before the disk fills");
    let mut refused = None;
    for _ in 0..3_000 {
        let i = acked.next_http;
        acked.next_http += 1;
        match publish(&client, &web, 0, i, PAD).await {
            202 => acked.http.push(i),
            code => {
                refused = Some(code);
                break;
            }
        }
    }
    assert_eq!(refused, Some(503), "a full outbox is a quota error to sensors");
    assert!(acked.http.len() > 200, "{} accepted before the disk filled", acked.http.len());
    if let Some(port) = mqtt.as_deref() {
        // what still fits is acknowledged (and must arrive); then PUBACK 0x97
        let mut refusal = None;
        for _ in 0..100 {
            let i = acked.next_mqtt;
            acked.next_mqtt += 1;
            match mqtt_publish(port, i, PAD) {
                (true, _) => acked.mqtt.push(i),
                (false, said) => {
                    refusal = Some(said);
                    break;
                }
            }
        }
        let said = refusal.expect("MQTT publishes refused once the disk is full");
        assert!(said.contains("Quota exceeded"), "MQTT once full: {said}");
    }

    if restart {
        gw.signal("-KILL");
        gw.wait_exit(Duration::from_secs(10));
        gw = disk.start_gatewayd(&cfg);
        web = gw.web_addr();
        let s = status(&client, &web).await;
        assert_eq!(s["outbox"]["segments_skipped"], 0, "{s}");
    }

    // The cloud comes back and drains while the disk is still full.
    cloud.faults().set_publish_status(None);
    let s = wait_drained(&client, &web, Duration::from_secs(120)).await;
    assert_eq!(s["outbox"]["records_queued"], 0, "drained with the disk full: {s}");
    acked.post_all(&client, &web, 20, "drained, the disk still full").await;
    let mqtt = if restart && mqtt.is_some() { Some(mqtt_port(&gw)) } else { mqtt };
    acked.mqtt_all(mqtt.as_deref(), 5, "drained, the disk still full");

    // The other data goes.
    disk.delete_other_data();
    acked.post_all(&client, &web, 20, "after the other data went").await;
    acked.mqtt_all(mqtt.as_deref(), 5, "after the other data went");

    // Every acknowledged message arrives: 0 lost.
    let want = acked.keys();
    let got = wait_delivered(&cloud, &want, Duration::from_secs(120)).await;
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {lost:?}",
        lost.len(),
        want.len()
    );

    // Then twice the partition's size, all accepted and delivered.
    let before = acked.next_http;
    let big = 2 * PARTITION / PAD as u64 + 100;
    acked.post_all(&client, &web, big, "twice the partition").await;
    let want = acked.keys();
    let got = wait_delivered(&cloud, &want, Duration::from_secs(300)).await;
    let lost = want.difference(&got).count();
    assert_eq!(lost, 0, "{lost} of the {} posts after {before} lost", big);
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["corrupt_skipped"], 0, "{s}");
    assert!(s["outbox"]["rejected_disk_full"].as_u64().is_some(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drained_while_full_loses_nothing_and_takes_twice_the_partition_after() {
    if !can_mount_tmpfs() {
        return;
    }
    disk_full_sequence(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_a_kill_9_and_a_restart_on_the_full_disk() {
    if !can_mount_tmpfs() {
        return;
    }
    disk_full_sequence(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gatewayd_on_the_same_data_dir_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("data"), 1, "");
    let first = Running::start(&cfg, None);
    let web = first.web_addr();
    let mut second = Running::start(&cfg, None);
    let code = second.wait_exit(Duration::from_secs(20));
    assert!(!code.success(), "the second gatewayd exited with {code}");
    // everything it wrote (the reader ends at its end of stderr)
    let said: Vec<String> =
        std::iter::from_fn(|| second.lines.recv_timeout(Duration::from_secs(5)).ok()).collect();
    let needle = format!("is in use by process {}", first.child.id());
    assert!(said.iter().any(|l| l.contains(&needle)), "no {needle:?} in {said:#?}");
    // the first one is unharmed
    let client = reqwest::Client::new();
    assert_eq!(publish(&client, &web, 0, 1, 10).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_header_only_segment_does_not_stop_start_up_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), &data, 1, "");
    let client = reqwest::Client::new();
    let mut gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    for i in 0..10 {
        assert_eq!(publish(&client, &web, 0, i, 10).await, 202);
    }
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    // a header-only segment named inside the first one
    let mut header = b"GWOUTBOX".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(data.join("outbox/seg-00000000000000000005.log"), header).unwrap();

    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["segments_skipped"], 1, "{s}");
    assert_eq!(s["outbox"]["records_queued"], 10, "{s}");
    assert_eq!(publish(&client, &web, 0, 10, 10).await, 202);
}
