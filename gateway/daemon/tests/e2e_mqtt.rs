//! End to end over MQTT: real mosquitto clients publish to the real gatewayd, which forwards
//! to the dev cloud as each sensor.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Running, have_mosquitto_clients, status, write};
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

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
    let seed = Seed::new().application(APP).password_device(APP, "gw1", "gw-secret").sensor(
        APP,
        "sensor1",
        None,
        &["gw1"],
    );
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
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
    let seed = Seed::new().application(APP).password_device(APP, "gw1", "gw-secret").sensor(
        APP,
        "sensor1",
        None,
        &["gw1"],
    );
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got: Vec<u64> = cloud
            .events()
            .iter()
            .filter(|e| e.subject == "seq")
            .filter_map(|e| {
                use base64::Engine as _;
                let raw = e
                    .data_base64
                    .as_deref()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                e.data
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .or_else(|| String::from_utf8(raw?).ok()?.trim().parse().ok())
            })
            .collect();
        if got.len() >= 2 * N || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let want: Vec<u64> = (0..2 * N as u64).collect();
    let out_of_order = got.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(out_of_order, 0, "{out_of_order} out of order");
    assert_eq!(got, want);
}
