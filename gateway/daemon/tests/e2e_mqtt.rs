//! End to end over MQTT: real mosquitto clients publish to the real gatewayd, which forwards
//! to the dev cloud as each sensor.

#![allow(clippy::unwrap_used)]

#[path = "../../../drivers/mqtt/tests/common/mod.rs"]
mod broker;
mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Running, have_mosquitto_clients, status, write};

const APP: &str = "my-app";

fn config(dir: &Path, cloud: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n\
         [log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

fn mosquitto_pub(
    port: &str,
    version: &str,
    password: &str,
    extra: &[&str],
) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", version, "-q", "1", "-i", "pub-test"])
        .args(["-u", "sensor1@my-app", "-P", password, "-t", "temperature"])
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reaches_the_cloud_as_the_sensor() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let port = mqtt.rsplit_once(':').unwrap().1.to_owned();

    let out = mosquitto_pub(&port, "mqttv311", "pw1", &["-m", r#"{"v":311}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = mosquitto_pub(
        &port,
        "mqttv5",
        "pw1",
        &["-m", r#"{"v":5}"#, "-D", "publish", "content-type", "application/json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<_> =
            cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect();
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 2, "{events:?}");
    for (e, v) in events.iter().zip([311, 5]) {
        assert_eq!(e.device.as_deref(), Some("sensor1"));
        assert_eq!(e.sender.as_deref(), Some("gw1"));
        assert_eq!(e.subject, "temperature");
        assert_eq!(e.data, Some(serde_json::json!({ "v": v })));
    }
    assert_eq!(events[1].datacontenttype.as_deref(), Some("application/json"));

    // a wrong password: the client's own words for it
    let out = mosquitto_pub(&port, "mqttv311", "wrong", &["-m", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad user name or password"), "{stderr}");
    let out = mosquitto_pub(&port, "mqttv5", "wrong", &["-m", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Bad User Name or Password"), "{stderr}");

    // the status page counts the sessions and refusals
    let status = status(&reqwest::Client::new(), &web).await;
    assert_eq!(status["mqtt"]["publishes"], 2, "{status}");
    assert_eq!(status["mqtt"]["refused_logins"], 2, "{status}");
}

/// One sensor's messages keep their order end to end: `mosquitto_pub -l` keeps 20 QoS 1
/// publishes in flight, and the dev cloud receives them in the order they were published, over
/// MQTT 3.1.1 and 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_messages_arrive_in_the_order_it_published_them() {
    if !have_mosquitto_clients() {
        return;
    }
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    const N: usize = 300;
    for (round, version) in ["mqttv311", "mqttv5"].into_iter().enumerate() {
        use std::io::Write as _;
        let lines: String = (0..N).map(|i| format!("{}\n", round * N + i)).collect();
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1", "-l"])
            .args(["-i", "order-test", "-u", "sensor1@my-app", "-P", "pw1", "-t", "seq"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "{version}");
    }
    let got = common::wait_numbers(&cloud, "seq", 2 * N).await;
    common::assert_in_order(&got, 2 * N as u64, "mosquitto_pub -l");
}

/// Publishes `first..first+n` at QoS 1 over MQTT `version` (311 or 5) with 20 in flight; prints
/// how many PUBACKs came.
const PAHO_IN_FLIGHT: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, user, password, version, first, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-order-" + version, protocol=protocol)
c.username_pw_set(user, password)
c.max_inflight_messages_set(20)
c.max_queued_messages_set(0)
acked = 0
done = threading.Event()
def on_publish(client, userdata, mid, reason_code, properties):
    global acked
    acked += 1
    if acked == n:
        done.set()
c.on_publish = on_publish
c.connect("127.0.0.1", port)
c.loop_start()
for i in range(first, first + n):
    c.publish("seq", str(i).encode(), qos=1)
done.wait(60)
print(acked, flush=True)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_with_20_in_flight_keeps_its_order_over_3_1_1_and_5() {
    let Some(python) = common::paho_python() else { return };
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    const N: u64 = 300;
    for (round, version) in ["311", "5"].into_iter().enumerate() {
        let first = (round as u64 * N).to_string();
        let out = tokio::process::Command::new(&python)
            .args(["-c", PAHO_IN_FLIGHT, &port, "sensor1@my-app", "pw1", version, &first])
            .arg(N.to_string())
            .output()
            .await
            .unwrap();
        let acked = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            acked.trim(),
            N.to_string(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = common::wait_numbers(&cloud, "seq", 2 * N as usize).await;
    common::assert_in_order(&got, 2 * N, "paho-mqtt");
}

/// Sends `first..first+n` as one mosquitto_pub -l session (20 in flight).
fn mosquitto_pub_lines(port: &str, first: u64, n: u64) {
    use std::io::Write as _;
    let lines: String = (first..first + n).map(|i| format!("{i}\n")).collect();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-q", "1", "-l"])
        .args(["-i", "order-restart", "-u", "sensor1@my-app", "-P", "pw1", "-t", "seq"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_a_cloud_outage_and_a_gateway_restart() {
    if !have_mosquitto_clients() {
        return;
    }
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &cloud.url());
    const N: u64 = 200;
    // the cloud takes the first 100, then refuses for a while: the rest waits in the outbox
    let mut gw = Running::start(&config, None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    mosquitto_pub_lines(&port, 0, N / 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (common::numbers_on(&cloud, "seq").len() as u64) < N / 2 {
        assert!(Instant::now() < deadline, "the first messages did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cloud.faults().set_publish_status(Some(503));
    mosquitto_pub_lines(&port, N / 2, N / 2);
    // killed with messages queued; the next process goes on where it left off
    gw.signal("-KILL");
    gw.wait_exit(Duration::from_secs(10));
    let gw = Running::start(&config, None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    mosquitto_pub_lines(&port, N, N);
    cloud.faults().set_publish_status(None);
    let got = common::wait_numbers(&cloud, "seq", 2 * N as usize).await;
    // a request cut by the kill may repeat a message; none may overtake another
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "in order across the outage and the restart");
    sorted.dedup();
    assert_eq!(sorted, (0..2 * N).collect::<Vec<_>>(), "every message arrived");
}

/// `mosquitto_sub` on `site/#` (QoS 1) of `upstream` with `extra` arguments, once mosquitto
/// logged the subscription; its stdout is piped.
async fn site_subscriber(upstream: &broker::Mosquitto, extra: &[&str]) -> tokio::process::Child {
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &upstream.addr.port().to_string(), "-q", "1"])
        .args(["-t", "site/#"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upstream.log().contains("site/#") {
        assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub
}

/// The gateway of [`config`] with `cloud` as its `[cloud]` section instead.
fn config_with_cloud(dir: &Path, cloud: &str) -> String {
    let path = config(dir, "http://unused");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[cloud]").unwrap();
    let end = text[start..].find("\n\n").unwrap() + start;
    write(dir, "gatewayd.toml", &format!("{}{cloud}{}", &text[..start], &text[end..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_into_the_drogue_mqtt_and_the_generic_mqtt_uplink() {
    if !have_mosquitto_clients() || !broker::have_mosquitto("order_into_mqtt_uplinks") {
        return;
    }
    const N: u64 = 300;
    // Drogue's MQTT endpoint (the dev cloud's), as the gateway device, over MQTT 5 (3.1.1 is
    // the default, which e2e_commands uses)
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"drogue-mqtt\"\nprotocol = \"5\"\nurl = {:?}\npassword = \"gw-secret\"\nretry_min = \"50ms\"",
        cloud.mqtt_url()
    );
    let gw = Running::start(&config_with_cloud(dir.path(), &section), None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    mosquitto_pub_lines(&port, 0, N);
    let got = common::wait_numbers(&cloud, "seq", N as usize).await;
    common::assert_in_order(&got, N, "drogue-mqtt");
    // MQTT 5 carries the sensor's content type upstream (3.1.1 cannot: it would arrive as
    // application/octet-stream)
    let out = mosquitto_pub(
        &port,
        "mqttv5",
        "pw1",
        &["-D", "publish", "content-type", "text/plain", "-m", "hello"],
    );
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let note = loop {
        let events = cloud.events();
        if let Some(e) = events.into_iter().find(|e| e.subject == "temperature") {
            break e;
        }
        assert!(Instant::now() < deadline, "the text/plain reading never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(note.datacontenttype.as_deref(), Some("text/plain"), "{note:?}");
    drop(gw);

    // any MQTT broker: a real mosquitto, read with mosquitto_sub
    let site_dir = tempfile::tempdir().unwrap();
    let upstream = broker::Mosquitto::start(site_dir.path(), "allow_anonymous true\nlog_type all");
    let mut sub = site_subscriber(&upstream, &["-C", &N.to_string(), "-W", "30"]).await;
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"mqtt\"\nurl = {:?}\ntopic = \"site/{{app}}/{{device}}/{{channel}}\"\nretry_min = \"50ms\"",
        upstream.url()
    );
    let gw = Running::start(&config_with_cloud(dir.path(), &section), None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    mosquitto_pub_lines(&port, 0, N);
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(sub.stdout.as_mut().unwrap(), &mut out).await.unwrap();
    let got: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "mqtt: in order, each once");
}

/// The generic uplink into a real mosquitto with a `command_topic`: a command published there
/// for a sensor reaches the sensor's `mosquitto_sub`, and one for the gateway's own name
/// (`set-log-level`) changes its log filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_mqtt_uplink_takes_commands_on_its_command_topic() {
    if !have_mosquitto_clients() || !broker::have_mosquitto("generic_command_topic") {
        return;
    }
    let site_dir = tempfile::tempdir().unwrap();
    let upstream = broker::Mosquitto::start(site_dir.path(), "allow_anonymous true\nlog_type all");
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"mqtt\"\nurl = {:?}\ntopic = \"site/{{gateway}}/data/{{device}}/{{channel}}\"\n\
         command_topic = \"site/{{gateway}}/command/{{device}}/{{command}}\"\nretry_min = \"50ms\"",
        upstream.url()
    );
    let gw = Running::start(&config_with_cloud(dir.path(), &section), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upstream.log().contains("site/gw1/command/#") {
        assert!(Instant::now() < deadline, "the gateway did not subscribe: {}", upstream.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-i", "sensor1@my-app"])
        .args(["-u", "sensor1@my-app", "-P", "pw1", "-t", "command/inbox//#", "-v"])
        .args(["-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&client, &web).await["mqtt"]["sessions"] != 1 {
        assert!(Instant::now() < deadline, "the sensor never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let site_pub = |topic: &str, payload: &str| {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &upstream.addr.port().to_string(), "-q", "1"])
            .args(["-t", topic, "-m", payload])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    site_pub("site/gw1/command/sensor1/set-led", "{\"on\":true}");
    let out = tokio::time::timeout(Duration::from_secs(25), sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "command/inbox//set-led {\"on\":true}");

    site_pub("site/gw1/command/gw1/set-log-level", "debug");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&client, &web).await;
        if s["commands"]["log_filter"] == "debug" {
            break;
        }
        assert!(Instant::now() < deadline, "set-log-level never arrived: {}", s["commands"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long the outage of the receive-time tests lasts (`GATEWAYD_OUTAGE_SECONDS`, 60 s).
fn outage() -> Duration {
    let secs = std::env::var("GATEWAYD_OUTAGE_SECONDS").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(60))
}

/// Parses the RFC 3339 time the uplinks write (`2026-12-07T10:00:00.123Z`).
fn parse_time(text: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// A reading stored while the upstream broker refused the gateway reaches it, once let in,
/// with the time the gateway received it (MQTT 5 user property `received_at`), not the time
/// it was forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_stored_during_an_outage_reaches_an_mqtt5_upstream_with_its_receive_time() {
    if !have_mosquitto_clients() || !broker::have_mosquitto("mqtt5_receive_time") {
        return;
    }
    let site_dir = tempfile::tempdir().unwrap();
    let passwords = site_dir.path().join("passwd");
    let passwd = |user: &str, pw: &str| {
        let made = Command::new("mosquitto_passwd")
            .arg("-c")
            .arg("-b")
            .arg(&passwords)
            .args([user, pw])
            .status()
            .unwrap();
        assert!(made.success());
    };
    // the gateway's login is unknown to the broker: the outage
    passwd("someone-else", "x");
    let upstream = broker::Mosquitto::start(
        site_dir.path(),
        &format!("allow_anonymous true\npassword_file {}\nlog_type all", passwords.display()),
    );
    let outage = outage();
    let wait = (outage.as_secs() + 60).to_string();
    let sub =
        site_subscriber(&upstream, &["-V", "mqttv5", "-F", "%P|%p", "-C", "1", "-W", &wait]).await;
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"mqtt\"\nprotocol = \"5\"\nurl = {:?}\nusername = \"gw\"\npassword = \"pw\"\n\
         topic = \"site/{{device}}/{{channel}}\"\nretry_min = \"50ms\"\nretry_max = \"1s\"",
        upstream.url()
    );
    let gw = Running::start(&config_with_cloud(dir.path(), &section), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&client, &web).await["uplink"]["failures"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the broker never refused the gateway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = std::time::SystemTime::now();
    let out = mosquitto_pub(&port, "mqttv5", "pw1", &["-m", r#"{"t":21.5}"#]);
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(outage).await;
    // the status shows how long the oldest reading has waited, /metrics too
    let s = status(&client, &web).await;
    let waited =
        s["outbox"]["oldest_age_seconds"].as_u64().unwrap_or_else(|| panic!("{}", s["outbox"]));
    assert!(waited + 1 >= outage.as_secs(), "oldest waited {waited} s: {}", s["outbox"]);
    assert_eq!(s["gateway"]["clock_set"], true);
    let metrics = common::metrics(&client, &web).await;
    assert!(metrics.contains("gatewayd_outbox_oldest_age_seconds "), "{metrics}");
    // the broker lets the gateway in: the stored reading goes out now
    passwd("gw", "pw");
    upstream.reload();
    let out = tokio::time::timeout(outage + Duration::from_secs(60), sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let forwarded = std::time::SystemTime::now();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (props, payload) = line.split_once('|').unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(payload, r#"{"t":21.5}"#);
    let at = props.strip_prefix("received_at:").unwrap_or_else(|| panic!("{line:?}"));
    let at = parse_time(at);
    let off = at.duration_since(received).unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(2),
        "received_at {at:?} is not the receive time {received:?}"
    );
    assert!(forwarded.duration_since(at).unwrap() >= outage, "forwarded after the outage");
}

/// The Drogue HTTP uplink, with `received_at_field`, adds the receive time to a JSON object
/// reading stored while the cloud answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drogue_http_uplink_adds_the_receive_time_to_json_objects_when_asked() {
    if !have_mosquitto_clients() {
        return;
    }
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    cloud.faults().set_publish_status(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {:?}\npassword = \"gw-secret\"\n\
         received_at_field = \"received_at\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"",
        cloud.url()
    );
    let gw = Running::start(&config_with_cloud(dir.path(), &section), None);
    let _ = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let received = std::time::SystemTime::now();
    let out = mosquitto_pub(&port, "mqttv311", "pw1", &["-m", r#"{"t":21.5}"#]);
    assert!(out.status.success(), "{out:?}");
    let held = Duration::from_secs(3);
    tokio::time::sleep(held).await;
    cloud.faults().set_publish_status(None);
    // the sensor's reading (the gateway's heartbeat may come first)
    let deadline = Instant::now() + Duration::from_secs(20);
    let reading = loop {
        if let Some(e) = cloud.all_events().into_iter().find(|e| e.subject == "temperature") {
            break e;
        }
        assert!(Instant::now() < deadline, "the reading never arrived: {:?}", cloud.all_events());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events = [reading];
    let data = events[0].data.clone().unwrap();
    assert_eq!(data["t"], 21.5, "{data}");
    let at = parse_time(data["received_at"].as_str().unwrap());
    let off = at.duration_since(received).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(2), "received_at {at:?} vs {received:?}");
    // the cloud's own time is when it arrived
    let arrived = parse_time(&events[0].time);
    assert!(arrived.duration_since(at).unwrap() >= held, "{arrived:?} {at:?}");
}

/// Flow control (`[store] max_lag`): with the cloud reachable but slow, a sensor publishing
/// faster than the uplink forwards is slowed (its publishes wait in TCP) instead of the
/// backlog growing without bound; HTTP senders get 503 with Retry-After meanwhile. Once the
/// cloud keeps up again everything arrives, in order, and nobody is slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_uplink_slows_the_sensors_instead_of_growing_the_backlog() {
    if !have_mosquitto_clients() {
        return;
    }
    const N: u64 = 4000;
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    cloud.faults().set_publish_delay(Some(Duration::from_millis(2)));
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {:?}\npassword = \"gw-secret\"\nconcurrency = 4\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"",
        cloud.url()
    );
    let cfg = config_with_cloud(dir.path(), &section);
    let text = std::fs::read_to_string(&cfg).unwrap() + "\n[store]\nmax_lag = \"1s\"\n";
    let cfg = write(dir.path(), "gatewayd.toml", &text);
    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let publisher = std::thread::spawn(move || mosquitto_pub_lines(&port, 0, N));
    let client = reqwest::Client::new();
    let (mut most, mut slowed, mut busy) = (0u64, false, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !publisher.is_finished() {
        assert!(Instant::now() < deadline, "the publisher never finished");
        let s = status(&client, &web).await;
        most = most.max(s["outbox"]["records_queued"].as_u64().unwrap());
        if s["outbox"]["slowing_senders"] == true {
            slowed = true;
            if busy.is_none() {
                let r = client
                    .post(format!("http://{web}/v1/other"))
                    .basic_auth("sensor1@my-app", Some("pw1"))
                    .body("1")
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                busy = Some((r.status().as_u16(), retry));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.join().unwrap();
    assert!(slowed, "flow control never slowed the sensor (backlog peaked at {most})");
    // the bound is 1,000 records (one sensor's records go one at a time: a few hundred per
    // second), plus what arrives between two looks of the controller
    assert!(most < 3000, "the backlog grew to {most} of {N} records");
    if let Some((code, retry)) = busy {
        // an HTTP publish that raced the end of the pressure is taken (202)
        assert!(code == 503 && retry.as_deref() == Some("1") || code == 202, "{code} {retry:?}");
    }
    cloud.faults().set_publish_delay(None);
    let got = common::wait_numbers(&cloud, "seq", N as usize).await;
    common::assert_in_order(&got, N, "slowed mosquitto_pub -l");
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["slowing_senders"], false, "{}", s["outbox"]);
    eprintln!("backlog peaked at {most} records under flow control");
}
