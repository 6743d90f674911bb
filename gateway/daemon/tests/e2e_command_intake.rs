//! End to end, the three ways Drogue hands the gateway a command, each started at the dev
//! cloud's command API (`POST /api/command/v1alpha1/apps/{app}/devices/{device}?command=`)
//! and ending at a real client of the real gatewayd: the external push (the gateway device has
//! `spec.commands`), the Drogue MQTT uplink's `command/inbox/#` subscription, and the Drogue
//! HTTP uplink's command wait relaying a sensor's own `ct=`. Also: the push endpoint of the
//! running binary refuses a missing or wrong secret and an unknown device.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Running, have_mosquitto_clients, write};
use gw_devcloud::{DevCloud, Seed};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const API_TOKEN: &str = "api-token";
const PUSH_TOKEN: &str = "push-s3cret";
const PATIENCE: Duration = Duration::from_secs(20);

fn seed() -> Seed {
    Seed::new()
        .user("admin", API_TOKEN)
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "sensor1", None, &["gw1"])
}

/// The gateway's config; with `push`, `[web] push_token` lets the cloud push commands (and
/// then no `ct=` is relayed upstream: Drogue answers no wait with a pushed device's command).
fn config(dir: &Path, cloud: &str, push: bool) -> String {
    let push = if push { format!("push_token = \"{PUSH_TOKEN}\"\n") } else { String::new() };
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n{cloud}\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n{push}\n\
         [log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

fn drogue_http(cloud: &DevCloud) -> String {
    format!(
        "[cloud]\nkind = \"drogue-http\"\nurl = {:?}\npassword = \"gw-secret\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n",
        cloud.url()
    )
}

/// Sends a command through the dev cloud's command API, as `drg cmd` would.
async fn send_command(cloud: &DevCloud, device: &str, command: &str, payload: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!(
            "{}/api/command/v1alpha1/apps/{APP}/devices/{device}?command={command}",
            cloud.url()
        ))
        .basic_auth("admin", Some(API_TOKEN))
        .header("content-type", "text/plain")
        .body(payload.to_owned())
        .send()
        .await
        .unwrap()
        .status()
}

/// `mosquitto_sub` as sensor1, subscribed to its commands, exiting after the first one.
fn subscribe_as_sensor1(port: &str) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-q", "1", "-i", "sub-sensor1"])
        .args(["-u", "sensor1@my-app", "-P", "pw1", "-t", "command/inbox/#", "-v"])
        .args(["-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The line `mosquitto_sub -v` printed (topic, space, payload).
async fn received(sub: std::process::Child) -> String {
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway's MQTT endpoint reports sensor1 subscribed to its commands.
async fn sensor1_subscribed(gw: &Running) {
    gw.wait_for("\"device\":\"sensor1@my-app\"", PATIENCE);
}

async fn curl_push(web: &str, body: &str, auth: Option<&str>) -> u16 {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/json",
    ]);
    if let Some(auth) = auth {
        cmd.args(["-H", &format!("Authorization: {auth}")]);
    }
    let out = cmd
        .args(["--data", body, &format!("http://{web}/api/commands/v1/push")])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_from_the_dev_cloud_reaches_mosquitto_sub() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), stop.clone()).await.unwrap();
    let gw = Running::start(&config(dir.path(), &drogue_http(&cloud), true), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    // Drogue pushes to a gateway whose registry entry names an external endpoint
    let mut device = cloud.device(APP, "gw1").unwrap();
    device.spec.commands = Some(
        serde_json::from_value(serde_json::json!({"commands": [{"external": {
            "url": format!("http://{web}/api/commands/v1/push"),
            "headers": {"Authorization": format!("Bearer {PUSH_TOKEN}")},
        }}]}))
        .unwrap(),
    );
    cloud.apply_device(device).unwrap();

    let sub = subscribe_as_sensor1(&port);
    sensor1_subscribed(&gw).await;
    assert_eq!(send_command(&cloud, "sensor1", "set-temp", "21").await, StatusCode::OK);
    assert_eq!(received(sub).await, "command/inbox//set-temp 21");

    // the running binary's push endpoint refuses bad callers and strangers
    let body = |device: &str| {
        format!(r#"{{"application":"{APP}","device":"{device}","command":"x","payload":"MQ=="}}"#)
    };
    assert_eq!(curl_push(&web, &body("sensor1"), None).await, 401);
    assert_eq!(curl_push(&web, &body("sensor1"), Some("Bearer wrong")).await, 403);
    let bearer = format!("Bearer {PUSH_TOKEN}");
    assert_eq!(curl_push(&web, &body("stranger"), Some(&bearer)).await, 404);
    assert_eq!(curl_push(&web, "{oops", Some(&bearer)).await, 400);
    // sensor1 is offline now: queued
    assert_eq!(curl_push(&web, &body("sensor1"), Some(&bearer)).await, 202);
    let status = common::status(&reqwest::Client::new(), &web).await;
    let intake = &status["command_intake"];
    assert_eq!(intake["received_push"], 3, "{intake}");
    assert_eq!(intake["push_unauthorized"], 2, "{intake}");
    assert_eq!(intake["unknown_device"], 1, "{intake}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drogue_mqtt_subscription_reaches_mosquitto_sub() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), stop.clone()).await.unwrap();
    let uplink = format!(
        "[cloud]\nkind = \"drogue-mqtt\"\nurl = {:?}\npassword = \"gw-secret\"\nretry_min = \"50ms\"\n",
        cloud.mqtt_url()
    );
    let gw = Running::start(&config(dir.path(), &uplink, true), None);
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    until("the uplink's command subscription", || cloud.command_subscribers() > 0).await;

    let sub = subscribe_as_sensor1(&port);
    sensor1_subscribed(&gw).await;
    // no external endpoint: Drogue publishes internally, to the device and its gateway
    assert_eq!(send_command(&cloud, "sensor1", "set-interval", "10").await, StatusCode::ACCEPTED);
    assert_eq!(received(sub).await, "command/inbox//set-interval 10");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_wait_relays_the_sensors_ct_and_answers_it_with_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), stop.clone()).await.unwrap();
    let gw = Running::start(&config(dir.path(), &drogue_http(&cloud), false), None);
    let web = gw.web_addr();
    // the gateway's own command poll waits at the cloud first (a wildcard in Drogue: it would
    // also get sensor1's command, which it leaves to sensor1's own wait)
    until("the gateway's command poll waiting", || cloud.command_subscribers() > 0).await;

    // the sensor waits up to 10 s for a command in the answer to its reading
    let sensor = tokio::process::Command::new("curl")
        .args(["-s", "-i", "-u", "sensor1@my-app:pw1", "-H", "Content-Type: application/json"])
        .args(["--data", r#"{"temp":21}"#, &format!("http://{web}/v1/temperature?ct=10")])
        .output();
    let sensor = tokio::spawn(sensor);
    // the uplink relays the wait: its publish as sensor1 waits at the cloud
    until("the uplink waiting at the cloud", || cloud.command_subscribers() > 1).await;
    assert_eq!(send_command(&cloud, "sensor1", "set-temp", "22").await, StatusCode::ACCEPTED);
    let out = tokio::time::timeout(PATIENCE, sensor).await.unwrap().unwrap().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\ncommand: set-temp\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n22"), "{answer}");
    let events = cloud.wait_for_events(1, PATIENCE).await;
    assert!(events.iter().any(|e| e.device.as_deref() == Some("sensor1")), "{events:?}");
    stop.cancel();
}

/// A pushed command's own TTL (`ttl` field) reaches the queue: with the sensor offline both
/// commands are queued (202); after 2 s the one with a 1 s TTL has expired (counted) and only
/// the other is delivered when the sensor subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_ttl_expires_a_queued_command() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), stop.clone()).await.unwrap();
    let gw = Running::start(&config(dir.path(), &drogue_http(&cloud), true), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let bearer = format!("Bearer {PUSH_TOKEN}");
    let push = |command: &str, ttl: &str| {
        format!(
            r#"{{"application":"{APP}","device":"sensor1","command":"{command}","payload":"MQ==","ttl":"{ttl}"}}"#
        )
    };
    assert_eq!(curl_push(&web, &push("short", "1s"), Some(&bearer)).await, 202);
    assert_eq!(curl_push(&web, &push("long", "1h"), Some(&bearer)).await, 202);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let sub = subscribe_as_sensor1(&port);
    assert_eq!(received(sub).await, "command/inbox//long 1");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = common::status(&client, &web).await;
        let counts = &status["commands"]["counts"];
        if counts["expired"] == 1 {
            assert_eq!(counts["delivered"], 1, "{counts}");
            break;
        }
        assert!(Instant::now() < deadline, "never counted as expired: {counts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
}

/// A CoAP sensor's `ct=` travels with its message too: the uplink waits upstream as the
/// sensor, and the command the cloud returns answers the sensor's request with 2.05 and the
/// command name in option 4210.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_sensor_wait_is_relayed_and_answered_with_option_4210() {
    let ok = Command::new("coap-client-notls").arg("-h").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "coap-client-notls missing in CI");
        eprintln!("SKIP: coap-client-notls not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), stop.clone()).await.unwrap();
    let uplink = format!("{}\n[coap]\nlisten = \"127.0.0.1:0\"\n", drogue_http(&cloud));
    let gw = Running::start(&config(dir.path(), &uplink, false), None);
    let coap = gw.listener_addr("coap");
    // the gateway's own command poll waits at the cloud first: only a second waiter is the
    // uplink's publish as sensor1 (counting the first would send the command to nobody)
    until("the gateway's command poll waiting", || cloud.command_subscribers() > 0).await;

    use base64::Engine;
    let auth = format!(
        "4209,Basic {}",
        base64::engine::general_purpose::STANDARD.encode("sensor1@my-app:pw1")
    );
    let sensor = tokio::process::Command::new("coap-client-notls")
        .args(["-m", "post", "-B", "30", "-v", "7", "-O", &auth, "-O", "15,ct=10"])
        .args(["-e", r#"{"temp":21}"#, &format!("coap://{coap}/v1/temperature")])
        .output();
    let sensor = tokio::spawn(sensor);
    until("the uplink waiting at the cloud", || cloud.command_subscribers() > 1).await;
    assert_eq!(send_command(&cloud, "sensor1", "set", "22").await, StatusCode::ACCEPTED);
    let out = tokio::time::timeout(PATIENCE, sensor).await.unwrap().unwrap().unwrap();
    let (stdout, debug) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let debug = format!("{debug}{stdout}");
    assert!(debug.contains("2.05"), "{debug}");
    assert!(debug.contains("4210:\\x73\\x65\\x74"), "option 4210 = \"set\": {debug}");
    assert!(debug.contains("2.05 response:\n22"), "the payload is the command body: {debug}");
    stop.cancel();
}
