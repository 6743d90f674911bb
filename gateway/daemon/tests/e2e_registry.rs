//! The registry decides who may log in: devices synced from the dev cloud authenticate through
//! the real gatewayd, keep doing so with the cloud gone (from the on-disk snapshot), and lose
//! access when the registry no longer names the gateway.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{Running, have_mosquitto_clients, status, write};
use gw_devcloud::{DevCloud, Seed, seed::device_with};
use gw_model::registry::Device;
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";

fn config(dir: &Path, cloud: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [registry]\nurl = {cloud:?}\ntoken = \"api-token\"\ninterval = \"200ms\"\ntimeout = \"2s\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

async fn post(client: &reqwest::Client, web: &str, user: &str, pw: &str) -> u16 {
    client
        .post(format!("http://{web}/v1/temperature"))
        .basic_auth(user, Some(pw))
        .body("21")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until the sensor gets `want`, or fails after 15 s.
async fn until_status(client: &reqwest::Client, web: &str, user: &str, pw: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = post(client, web, user, pw).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{user}: still {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_devices_log_in_offline_too_and_lose_access_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    // the providers RFC's rules, which Drogue Cloud (and so, by default, the dev cloud and the
    // gateway) does not implement: neither device is synced or acknowledged
    let providers: Device = serde_json::from_value(serde_json::json!({
        "metadata": {"application": APP, "name": "via-providers"},
        "spec": {"providers": ["gw1"], "credentials": {"credentials": [{"pass": "pw-providers"}]}}
    }))
    .unwrap();
    let selected: Device = serde_json::from_value(serde_json::json!({
        "metadata": {"application": APP, "name": "via-labels"},
        "spec": {"providerSelector": {"group": "site-b"},
                 "credentials": {"credentials": [{"pass": "pw-labels"}]}}
    }))
    .unwrap();
    let mut gw1 = device_with(APP, "gw1", Some("gw-secret"), &[]);
    gw1.metadata.labels.insert("group".into(), "site-b".into());
    let seed = Seed::new()
        .user("admin", "api-token")
        .application(APP)
        .device(gw1)
        .sensor(APP, "listed", Some("pw-listed"), &["gw1"])
        .sensor(APP, "other-gateway", Some("pw-other"), &["gw2"])
        .sensor(APP, "no-rule", Some("pw-none"), &[])
        .device(providers)
        .device(selected);
    let stop_cloud = CancellationToken::new();
    let cloud =
        DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, stop_cloud.clone()).await.unwrap();
    let cfg = config(dir.path(), &cloud.url());
    let client = reqwest::Client::new();

    {
        let gw = Running::start(&cfg, None);
        let web = gw.web_addr();
        until_status(&client, &web, "listed@my-app", "pw-listed", 202).await;
        for (user, pw) in [
            ("via-providers@my-app", "pw-providers"),
            ("via-labels@my-app", "pw-labels"),
            ("no-rule@my-app", "pw-none"),
            ("other-gateway@my-app", "pw-other"),
        ] {
            assert_eq!(post(&client, &web, user, pw).await, 403, "{user}");
        }
        assert_eq!(post(&client, &web, "listed@my-app", "wrong").await, 403);
        // the same through the MQTT endpoint, with the real mosquitto client
        let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
        if have_mosquitto_clients() {
            let publish = |user: &str, pw: &str| {
                mosquitto("mosquitto_pub", &port, user, pw, &["-q", "1", "-t", "t", "-m", "1"])
                    .output()
                    .unwrap()
                    .status
                    .success()
            };
            assert!(publish("listed@my-app", "pw-listed"), "matchNames device over MQTT");
            assert!(!publish("via-providers@my-app", "pw-providers"), "RFC providers over MQTT");
            assert!(!publish("other-gateway@my-app", "pw-other"), "another gateway's device");
        }
        let status = status(&client, &web).await;
        assert_eq!(status["registry"]["devices"], 1, "{status}");
    } // gatewayd stopped (killed)

    // the snapshot holds no plain password and only its owner may read it
    let snapshot = dir.path().join("data").join(gw_auth::chain::CACHE_FILE);
    let bytes = std::fs::read(&snapshot).unwrap();
    let pw = "pw-listed";
    assert!(!bytes.windows(pw.len()).any(|w| w == pw.as_bytes()), "{pw} in the snapshot");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // the cloud goes away; after a restart the sensors still log in from the snapshot
    stop_cloud.cancel();
    cloud.stopped().await;
    {
        let gw = Running::start(&cfg, None);
        let web = gw.web_addr();
        assert_eq!(post(&client, &web, "listed@my-app", "pw-listed").await, 202);
        assert_eq!(post(&client, &web, "via-providers@my-app", "pw-providers").await, 403);
        assert_eq!(post(&client, &web, "other-gateway@my-app", "pw-other").await, 403);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_registry_stops_listing_loses_access_within_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let seed = Seed::new()
        .user("admin", "api-token")
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "listed", Some("pw-listed"), &["gw1"]);
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();
    until_status(&client, &web, "listed@my-app", "pw-listed", 202).await;

    cloud.apply_device(device_with(APP, "listed", Some("pw-listed"), &["gw2"])).unwrap();
    let revoked = Instant::now();
    until_status(&client, &web, "listed@my-app", "pw-listed", 403).await;
    eprintln!("access revoked {:?} after the registry change", revoked.elapsed());
}

fn mosquitto(
    tool: &str,
    port: &str,
    user: &str,
    pw: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut c = std::process::Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-u", user, "-P", pw]).args(extra);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sessions_of_a_device_the_registry_drops_are_closed() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = Seed::new()
        .user("admin", "api-token")
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "listed", Some("pw-listed"), &["gw1"])
        .sensor(APP, "other-gateway", Some("pw-other"), &["gw2"]);
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let web = gw.web_addr();
    let port = gw.listener_addr("mqtt").rsplit_once(':').unwrap().1.to_owned();
    let client = reqwest::Client::new();
    until_status(&client, &web, "listed@my-app", "pw-listed", 202).await;

    // a registry device publishes over MQTT; a device of another gateway is refused
    let publish = |user: &str, pw: &str| {
        mosquitto("mosquitto_pub", &port, user, pw, &["-q", "1", "-t", "temperature", "-m", "21"])
            .output()
            .unwrap()
    };
    assert!(publish("listed@my-app", "pw-listed").status.success());
    assert!(!publish("other-gateway@my-app", "pw-other").status.success());

    // a subscribed session of `listed` is closed when the registry drops it
    let mut sub =
        mosquitto("mosquitto_sub", &port, "listed@my-app", "pw-listed", &["-t", "command/inbox/#"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status(&client, &web).await;
        if status["mqtt"]["sessions"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber never connected: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cloud.apply_device(device_with(APP, "listed", Some("pw-listed"), &["gw2"])).unwrap();
    let revoked = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the revoked session stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut sub.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!(
        "session closed {:?} after the registry change ({status:?}): {stderr}",
        revoked.elapsed()
    );
    // mosquitto_sub ends (with status 0 on a v5 DISCONNECT from the server); the gateway says why
    let line = gw.wait_for("access revoked by the registry", Duration::from_secs(5));
    assert!(line.contains("listed@my-app"), "{line}");
    assert!(!publish("listed@my-app", "pw-listed").status.success(), "no new login either");
}
