//! An acknowledgement is a promise at every edge, run against the real binary with independent
//! clients (curl, mosquitto_pub) and the dev cloud behaving as Drogue Cloud does: what the
//! cloud can never take is refused before the acknowledgement, a record the cloud keeps
//! refusing parks its device alone, a slow cloud gets each message once, a wrong gateway
//! password is reported as that, and a relayed command wait holds nothing back.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{BIN, Running, have_mosquitto_clients, status, write};
use gw_devcloud::{
    CloudEvent, DevCloud, Seed,
    events::{TYPE_CONNECTION, TYPE_EVENT},
};
use tokio_util::sync::CancellationToken;

const APP: &str = "app";

/// The dev cloud with the gateway `gw1` and registry sensors `s0`..`s<n>` it may act for.
async fn cloud(sensors: usize) -> DevCloud {
    let mut seed = Seed::new().application(APP).password_device(APP, "gw1", "gw-secret");
    for i in 0..sensors {
        seed = seed.sensor(APP, &format!("s{i}"), None, &["gw1"]);
    }
    DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new()).await.unwrap()
}

/// A gateway config with static devices `s<i>` / `pw<i>` (and `rogue` / `pw-rogue`, which the
/// cloud does not know), `[cloud]` from `cloud`, and `extra` sections.
fn config(dir: &Path, sensors: usize, cloud: &str, extra: &str) -> String {
    let mut text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n{cloud}\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n{extra}\n\
         [log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"rogue\"\npassword = \"pw-rogue\"\n",
        dir.join("data").display().to_string()
    );
    for i in 0..sensors {
        text.push_str(&format!("\n[[devices]]\nname = \"s{i}\"\npassword = \"pw{i}\"\n"));
    }
    write(dir, "gatewayd.toml", &text)
}

fn drogue_http(url: &str, password: &str) -> String {
    format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = {password:?}\n\
         retry_min = \"50ms\"\nretry_max = \"300ms\"\n"
    )
}

fn drogue_mqtt(url: &str) -> String {
    format!(
        "[cloud]\nkind = \"drogue-mqtt\"\nurl = {url:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"300ms\"\ntimeout = \"3s\"\n"
    )
}

fn telemetry(cloud: &DevCloud) -> Vec<CloudEvent> {
    cloud.events().into_iter().filter(|e| e.kind == TYPE_EVENT).collect()
}

fn telemetry_of(cloud: &DevCloud, device: &str) -> Vec<CloudEvent> {
    telemetry(cloud).into_iter().filter(|e| e.device.as_deref() == Some(device)).collect()
}

/// Waits up to `timeout` for `device` to have `n` telemetry events in the cloud.
async fn wait_events(cloud: &DevCloud, device: &str, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let got = telemetry_of(cloud, device).len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `mosquitto_pub -d` as `user`, QoS 1; returns its debug output (stdout and stderr).
fn mosquitto_pub(port: &str, version: &str, user: &str, password: &str, args: &[&str]) -> String {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", version, "-q", "1", "-d", "-t", "temp"])
        .args(["-u", user, "-P", password, "-i", &format!("pub-{user}")])
        .args(args)
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `mosquitto_pub -l` as `user`, QoS 1: one message per line of `lines`.
fn mosquitto_pub_lines(port: &str, user: &str, password: &str, lines: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "temp", "-l"])
        .args(["-u", user, "-P", password, "-i", &format!("lines-{user}")])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Publishes one QoS 1 message over MQTT 5 with paho, with `content_type`; prints the PUBACK's
/// reason code.
const PAHO_CONTENT_TYPE: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, user, password, content_type = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
done = threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-ct", protocol=mqtt.MQTTv5)
c.username_pw_set(user, password)
def on_publish(client, userdata, mid, reason_code, properties):
    print(reason_code.value, flush=True)
    done.set()
c.on_publish = on_publish
c.connect("127.0.0.1", port)
c.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.ContentType = content_type
c.publish("temp", b'{"i":0}', qos=1, properties=props)
done.wait(10)
c.loop_stop()
"#;

/// The reason code of the PUBACK `mosquitto_pub -d` printed, e.g. `RC:153`.
fn puback_code(debug: &str) -> Option<u8> {
    let line = debug.lines().find(|l| l.contains("received PUBACK"))?;
    let rc = line.split("RC:").nth(1)?;
    rc.trim_end_matches(')').trim().parse().ok()
}

async fn post(web: &str, sensor: &str, password: &str, query: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{web}/v1/temp{query}"))
        .basic_auth(format!("{sensor}@{APP}"), Some(password))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn json_of_size(n: usize) -> Vec<u8> {
    let pad = n.saturating_sub(12);
    format!("{{\"pad\":\"{}\"}}", "x".repeat(pad)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_cannot_become_a_header_is_refused_and_jams_nothing() {
    if !have_mosquitto_clients() {
        return;
    }
    let Some(python) = common::paho_python() else { return };
    let cloud = cloud(2).await;
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Running::start(&config(dir.path(), 2, &drogue_http(&cloud.url(), "gw-secret"), ""), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();

    // an MQTT v5 content type with a line break (paho sends it; mosquitto_pub refuses to):
    // refused with 0x99, never acknowledged
    let out = Command::new(&python)
        .args(["-c", PAHO_CONTENT_TYPE, &port, "s0@app", "pw0", "text/plain\r\nx-evil: 1"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), "153", "{printed} {}", String::from_utf8_lossy(&out.stderr));
    // the same over HTTP, in the data schema that becomes a query value upstream
    let code = post(&web, "s0", "pw0", "?data_schema=urn%3Ax%0D%0Ay", b"{}".to_vec()).await;
    assert_eq!(code, 400);

    // the other sensor's messages flow at once, and s0's next ones too
    let lines: String = (0..300).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let started = Instant::now();
    mosquitto_pub_lines(&port, "s1@app", "pw1", &lines);
    mosquitto_pub_lines(&port, "s0@app", "pw0", &lines);
    assert_eq!(wait_events(&cloud, "s1", 300, Duration::from_secs(20)).await, 300);
    assert_eq!(wait_events(&cloud, "s0", 300, Duration::from_secs(20)).await, 300);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "600 messages took {took:?}");
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["uplink"]["failures"], 0, "nothing was retried: {s}");
    assert_eq!(s["uplink"]["dead_letters"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_http_cloud_cannot_take_is_refused_before_the_ack() {
    let cloud = cloud(1).await;
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Running::start(&config(dir.path(), 1, &drogue_http(&cloud.url(), "gw-secret"), ""), None);
    let web = gw.web_addr();
    // Drogue's HTTP endpoint takes 64 KiB: 100 KB is refused here, 60 KB goes through
    assert_eq!(post(&web, "s0", "pw0", "", json_of_size(100_000)).await, 413);
    assert_eq!(post(&web, "s0", "pw0", "", json_of_size(60_000)).await, 202);
    assert_eq!(wait_events(&cloud, "s0", 1, Duration::from_secs(20)).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["uplink"]["dead_letters"], 0, "{s}");
    assert_eq!(telemetry_of(&cloud, "s0").len(), 1);
    // the limit is documented in the printed default config
    let printed = Command::new(BIN).arg("print-config").output().unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("max_message"), "{printed}");
    assert!(printed.contains("publish_timeout = \"330s\""), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_drogues_mqtt_packet_limit_is_refused_before_the_ack() {
    if !have_mosquitto_clients() {
        return;
    }
    let cloud = cloud(1).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(&config(dir.path(), 1, &drogue_mqtt(&cloud.mqtt_url()), ""), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let big = dir.path().join("big.json");
    std::fs::write(&big, json_of_size(20_000)).unwrap();
    let small = dir.path().join("small.json");
    std::fs::write(&small, json_of_size(10_000)).unwrap();
    let big = big.display().to_string();
    let small = small.display().to_string();

    let out = mosquitto_pub(&port, "mqttv5", "s0@app", "pw0", &["-f", &big]);
    assert_eq!(puback_code(&out), Some(0x95), "{out}");
    let out = mosquitto_pub(&port, "mqttv5", "s0@app", "pw0", &["-f", &small]);
    assert_eq!(puback_code(&out), Some(0), "{out}");
    assert_eq!(wait_events(&cloud, "s0", 1, Duration::from_secs(20)).await, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connects = cloud.events().iter().filter(|e| e.kind == TYPE_CONNECTION).count();
    assert!(connects <= 2, "the uplink reconnected: {connects} connection events");
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["uplink"]["dead_letters"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_drogue_closes_the_mqtt_connection_on_parks_its_device_alone() {
    if !have_mosquitto_clients() {
        return;
    }
    let cloud = cloud(1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = write(dir.path(), "admin.secret", "admin-pw\n");
    let web_extra = format!("admin_password_file = {admin:?}\n");
    let gw =
        Running::start(&config(dir.path(), 1, &drogue_mqtt(&cloud.mqtt_url()), &web_extra), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();

    // `rogue` is a local device the cloud does not let the gateway act for: Drogue closes the
    // connection on its publish (MQTT 3.1.1 has no way to refuse one)
    let out = mosquitto_pub(&port, "mqttv311", "rogue@app", "pw-rogue", &["-m", "{\"r\":1}"]);
    assert!(out.contains("received PUBACK"), "{out}");
    let lines: String = (0..50).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    mosquitto_pub_lines(&port, "s0@app", "pw0", &lines);

    assert_eq!(wait_events(&cloud, "s0", 50, Duration::from_secs(30)).await, 50);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let s = status(&client, &web).await;
        let parked = s["uplink"]["parked"].as_array().cloned().unwrap_or_default();
        if !parked.is_empty() || Instant::now() > deadline {
            break parked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["device"], "rogue@app");
    assert!(parked[0]["reason"].as_str().unwrap().contains("closed the connection"), "{parked:?}");
    // the storm is over: no more connections than the strikes took
    let before = cloud.events().iter().filter(|e| e.kind == TYPE_CONNECTION).count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cloud.events().iter().filter(|e| e.kind == TYPE_CONNECTION).count();
    assert_eq!(before, after, "the uplink keeps reconnecting");
    assert!(after <= 2 * 5, "{after} connection events");
    // each of s0's messages reached the cloud (the order of one MQTT sensor's messages is
    // the data path's own promise, tested with it)
    let got: std::collections::BTreeSet<u64> = telemetry_of(&cloud, "s0")
        .iter()
        .map(|e| e.data.as_ref().unwrap()["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..50).collect());
    assert!(telemetry_of(&cloud, "rogue").is_empty());

    // the technician sees the parked device and the cloud's reason on the overview
    let jar = dir.path().join("jar");
    assert_eq!(common::status_page_login(&web, &jar, "admin", "admin-pw"), 303);
    let page = Command::new("curl")
        .args(["-s", "--max-time", "10", "-b"])
        .arg(&jar)
        .arg(format!("http://{web}/"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    let held = page.split("id=\"parked\"").nth(1).expect("a parked devices table");
    assert!(held.contains("rogue@app") && held.contains("closed the connection"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cloud_gets_each_message_once() {
    let cloud = cloud(1).await;
    // Drogue answers once Kafka confirmed; here that takes 12 s, more than gatewayd's old
    // request timeout and far less than Drogue's own delivery timeout
    cloud.faults().set_publish_delay(Some(Duration::from_secs(12)));
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Running::start(&config(dir.path(), 1, &drogue_http(&cloud.url(), "gw-secret"), ""), None);
    let web = gw.web_addr();
    assert_eq!(post(&web, "s0", "pw0", "", b"{\"i\":1}".to_vec()).await, 202);
    assert_eq!(wait_events(&cloud, "s0", 1, Duration::from_secs(30)).await, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(telemetry_of(&cloud, "s0").len(), 1, "sent more than once");
    // one request for s0's message (the gateway's own heartbeats aside)
    let for_s0 = cloud.faults().requests().iter().filter(|r| r.contains("as=s0")).count();
    assert_eq!(for_s0, 1, "{:?}", cloud.faults().requests());
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["uplink"]["possible_duplicates"], 0, "{s}");
    assert_eq!(s["uplink"]["sent"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_gateway_password_is_reported_as_that_and_parks_no_sensor() {
    let cloud = cloud(3).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(
        &config(dir.path(), 3, &drogue_http(&cloud.url(), "not-the-password"), ""),
        None,
    );
    let web = gw.web_addr();
    for s in 0..3 {
        let body = format!("{{\"s\":{s}}}").into_bytes();
        assert_eq!(post(&web, &format!("s{s}"), &format!("pw{s}"), "", body).await, 202);
    }
    gw.wait_for("the cloud refused the gateway's own credentials", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["uplink"]["state"], "gateway-refused", "{s}");
    assert_eq!(s["uplink"]["parked_devices"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["outbox"]["records_queued"], 3, "all kept: {s}");
    assert!(telemetry(&cloud).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_push_a_sensors_wait_holds_back_none_of_its_messages() {
    let cloud = cloud(1).await;
    let dir = tempfile::tempdir().unwrap();
    let push = "push_token = \"push-secret\"\n";
    let gw =
        Running::start(&config(dir.path(), 1, &drogue_http(&cloud.url(), "gw-secret"), push), None);
    let web = gw.web_addr();
    // the sensor waits 10 s for a command on its first message; its second follows at once
    let waiting = {
        let web = web.clone();
        tokio::spawn(async move { post(&web, "s0", "pw0", "?ct=10", b"{\"i\":1}".to_vec()).await })
    };
    assert_eq!(wait_events(&cloud, "s0", 1, Duration::from_secs(10)).await, 1);
    let started = Instant::now();
    assert_eq!(post(&web, "s0", "pw0", "", b"{\"i\":2}".to_vec()).await, 202);
    assert_eq!(wait_events(&cloud, "s0", 2, Duration::from_secs(15)).await, 2);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the second message waited {took:?} upstream");
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_device_the_cloud_keeps_refusing_expire_and_free_the_quota() {
    let cloud = cloud(1).await;
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "{}parked_retry = \"300ms\"\nparked_max_age = \"2s\"\n",
        drogue_http(&cloud.url(), "gw-secret")
    );
    let gw = Running::start(&config(dir.path(), 1, &section, ""), None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();
    // rogue is known to the gateway, not to the cloud: 403, parked
    for i in 0..3 {
        assert_eq!(post(&web, "rogue", "pw-rogue", "", format!("{{\"i\":{i}}}").into()).await, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&client, &web).await;
        if s["uplink"]["parked_devices"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "rogue was never parked: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // after parked_max_age its records are dropped, counted, and no longer queued
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = status(&client, &web).await;
        if s["outbox"]["expired"] == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "the parked records did not expire: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["outbox"]["records_queued"], 0, "{s}");
    assert_eq!(s["outbox"]["bytes_queued"], 0, "{s}");
    let rogue = s["outbox"]["devices"].as_array().unwrap().iter().find(|d| d["device"] == "rogue");
    assert_eq!(rogue.map(|d| d["expired"].clone()), Some(serde_json::json!(3)), "{s}");
    let metrics = common::metrics(&client, &web).await;
    assert!(metrics.contains("gatewayd_outbox_expired_total 3"), "{metrics}");
    // a device the cloud takes keeps flowing, and nothing of rogue is sent again
    assert_eq!(post(&web, "s0", "pw0", "", b"{\"i\":1}".to_vec()).await, 202);
    assert_eq!(wait_events(&cloud, "s0", 1, Duration::from_secs(20)).await, 1);
    assert!(telemetry_of(&cloud, "rogue").is_empty());
}
