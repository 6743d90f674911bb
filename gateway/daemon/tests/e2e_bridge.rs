//! End to end through the legacy broker bridge: a real mosquitto plays the site broker,
//! `mosquitto_pub` publishes as a site sensor does, and the real gatewayd forwards what the
//! bridge took to the dev cloud as that sensor; a command the cloud pushes for that sensor
//! goes through the command router and the bridge to the mapping's command topic, where
//! `mosquitto_sub` receives it. `/api/v1/status` shows the bridge's counters and its mappings'
//! interworking descriptors.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../../drivers/mqtt/tests/common/mod.rs"]
mod site;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::{Running, status, write};
use site::{Mosquitto, have_mosquitto};
use tokio::io::AsyncReadExt as _;

const APP: &str = "my-app";
const PATIENCE: Duration = Duration::from_secs(20);

fn config(dir: &Path, cloud: &str, site: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {data:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\npush_token = \"push-secret\"\n\n\
         [log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"s7\"\npassword = \"pw7\"\n\n\
         [[bridge]]\nname = \"site\"\nurl = {site:?}\nclient_id = \"gw1-bridge\"\n\
         reconnect_max = \"1s\"\n\n\
         [[bridge.mapping]]\nname = \"legacy-sensors\"\ntopic = \"sensors/{{device}}/{{channel}}\"\n\
         devices = \"known\"\ncommands = \"sensors/{{device}}/commands/{{command}}\"\n\
         data_objects = [\"temperature\"]\n",
        data = dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

async fn wait_status(
    web: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = status(&client, web).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_broker_messages_reach_the_cloud_as_the_topics_device() {
    if !have_mosquitto("site_broker_messages_reach_the_cloud_as_the_topics_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site_dir = tempfile::tempdir().unwrap();
    let site = Mosquitto::start(site_dir.path(), "allow_anonymous true\nlog_type all");
    let cloud = common::cloud_with(APP, &["s7"]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), &site.url()), None);
    let web = gw.web_addr();
    let s = wait_status(&web, "bridge subscribed", |s| s["bridges"][0]["subscribed"] == true).await;
    let mapping = &s["bridges"][0]["mappings"][0];
    assert_eq!(mapping["name"], "legacy-sensors", "{s}");
    assert_eq!(mapping["interworking"], true);
    assert_eq!(mapping["protocol"], "mqtt");
    assert_eq!(mapping["subscription"], "sensors/+/+");
    assert_eq!(mapping["identity"]["devices"], "known");
    assert_eq!(mapping["identity"]["application"], APP);
    assert_eq!(mapping["data_objects"], serde_json::json!(["temperature"]));
    assert_eq!(mapping["commands"], "sensors/{device}/commands/{command}");

    let port = site.addr.port().to_string();
    for (topic, payload) in [("sensors/s7/temp", r#"{"temp":21.5}"#), ("sensors/s99/temp", "1")] {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic, "-m", payload])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let deadline = Instant::now() + PATIENCE;
    let events = loop {
        let events: Vec<_> =
            cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect();
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].device.as_deref(), Some("s7"));
    assert_eq!(events[0].sender.as_deref(), Some("gw1"));
    assert_eq!(events[0].subject, "temp");
    assert_eq!(events[0].data, Some(serde_json::json!({ "temp": 21.5 })));

    let s = wait_status(&web, "unknown device counted", |s| {
        s["bridges"][0]["dropped_unknown_device"] == 1
    })
    .await;
    let bridge = &s["bridges"][0];
    assert_eq!(bridge["messages"], 1, "{s}");
    assert_eq!(bridge["connected"], true, "{s}");
    assert_eq!(bridge["name"], "site", "{s}");

    // a command for s7, pushed by the cloud, is published on the mapping's command topic
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", "sensors/+/commands/#"])
        .args(["-v", "-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !site.log().contains("sensors/+/commands/#") {
        assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe: {}", site.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = serde_json::json!({
        "application": APP, "device": "s7", "command": "set-interval",
        "payload": base64::engine::general_purpose::STANDARD.encode(r#"{"seconds":5}"#),
    });
    let pushed = reqwest::Client::new()
        .post(format!("http://{web}/api/commands/v1/push"))
        .bearer_auth("push-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(pushed.status().is_success(), "{:?}", pushed.text().await);
    let mut out = String::new();
    let mut stdout = sub.stdout.take().unwrap();
    tokio::time::timeout(PATIENCE, stdout.read_to_string(&mut out)).await.unwrap().unwrap();
    assert_eq!(out.trim(), r#"sensors/s7/commands/set-interval {"seconds":5}"#);
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["bridges"][0]["commands_published"], 1, "{s}");

    // the site broker goes away: the status says so, with the error
    drop(site);
    let s = wait_status(&web, "bridge disconnected", |s| {
        s["bridges"][0]["connected"] == false && s["bridges"][0]["reconnects"] != 0
    })
    .await;
    assert!(s["bridges"][0]["last_error"].is_string(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_sensors_messages_keep_their_order_through_the_bridge() {
    if !have_mosquitto("a_site_sensors_messages_keep_their_order_through_the_bridge") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site_dir = tempfile::tempdir().unwrap();
    let site = Mosquitto::start(site_dir.path(), "allow_anonymous true");
    let cloud = common::cloud_with(APP, &["s7"]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), &site.url()), None);
    let web = gw.web_addr();
    wait_status(&web, "bridge subscribed", |s| s["bridges"][0]["subscribed"] == true).await;
    // one site sensor, 20 QoS 1 messages in flight to the site broker
    const N: u64 = 400;
    let lines: String = (0..N).map(|i| format!("{i}\n")).collect();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &site.addr.port().to_string(), "-q", "1", "-l"])
        .args(["-t", "sensors/s7/seq"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let got = common::wait_numbers(&cloud, "seq", N as usize).await;
    common::assert_in_order(&got, N, "through the bridge");
}
