//! End to end through the real binary: sensors post with `curl` to gatewayd, which forwards
//! to the dev cloud as each sensor; the cloud going away and coming back; the demo.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use common::{BIN, Running, status, write};
use gw_devcloud::{CloudEvent, DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";

fn seed() -> Seed {
    Seed::new()
        .user("admin", "token")
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "sensor1", Some("unused-in-cloud"), &["gw1"])
        .sensor(APP, "sensor2", None, &["gw1"])
}

fn gateway_config(dir: &Path, cloud_url: &str, extra_web: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud_url:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n{extra_web}\n\n[log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n\n\
         [[devices]]\nname = \"sensor2\"\npassword = \"secret2\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

/// Runs curl, returning (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn telemetry(events: &[CloudEvent]) -> Vec<&CloudEvent> {
    events.iter().filter(|e| e.kind == "io.drogue.event.v1").collect()
}

async fn wait_telemetry(cloud: &DevCloud, n: usize) -> Vec<CloudEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = cloud.events();
        if telemetry(&events).len() >= n || Instant::now() > deadline {
            return events.into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_publish_reaches_the_cloud_as_the_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), CancellationToken::new())
        .await
        .unwrap();
    let config = gateway_config(dir.path(), &cloud.url(), "max_message_bytes = \"1KiB\"");
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let url = format!("http://{web}/v1/temperature");

    let (code, body) = curl(&[
        "-u",
        "sensor1@my-app:pw1",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"t":21}"#,
        &url,
    ]);
    assert_eq!(code, 202, "{body}");
    let events = wait_telemetry(&cloud, 1).await;
    let e = &events[0];
    assert_eq!(e.device.as_deref(), Some("sensor1"));
    assert_eq!(e.sender.as_deref(), Some("gw1"));
    assert_eq!(e.subject, "temperature");
    assert_eq!(e.application, APP);
    assert_eq!(e.data, Some(serde_json::json!({"t": 21})));

    // wrong password: Drogue's 403 body
    let (code, body) = curl(&["-u", "sensor1@my-app:nope", "-d", "x", &url]);
    assert_eq!(code, 403);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"code":403,"error":"AuthenticationError","message":"Authentication failed"})
    );
    // no credentials at all
    assert_eq!(curl(&["-d", "x", &url]).0, 403);
    // publishing as another device
    assert_eq!(curl(&["-u", "sensor1@my-app:pw1", "-d", "x", &format!("{url}?as=sensor2")]).0, 403);

    // unpadded Basic, as Drogue's own clients send it; trailing slash as its gateway example
    let raw = "sensor2@my-app:secret2";
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw);
    assert!(base64::engine::general_purpose::STANDARD.encode(raw).ends_with('='));
    let (code, _) = curl(&[
        "-H",
        &format!("Authorization: Basic {unpadded}"),
        "-H",
        "Content-Type: text/plain",
        "-d",
        "hello",
        &format!("http://{web}/v1/temp/"),
    ]);
    assert_eq!(code, 202);

    // not JSON although it says so; too large; bad channel
    let (code, _) = curl(&[
        "-u",
        "sensor1@my-app:pw1",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{nope",
        &url,
    ]);
    assert_eq!(code, 406);
    let big = "x".repeat(2048);
    assert_eq!(curl(&["-u", "sensor1@my-app:pw1", "-d", &big, &url]).0, 413);
    assert_eq!(
        curl(&["-u", "sensor1@my-app:pw1", "-d", "x", &format!("http://{web}/v1/a%20b")]).0,
        400
    );

    let events = wait_telemetry(&cloud, 2).await;
    assert_eq!(events.len(), 2, "only the accepted messages reach the cloud: {events:?}");
    let e = &events[1];
    assert_eq!((e.device.as_deref(), e.subject.as_str()), (Some("sensor2"), "temp"));
    assert_eq!(e.payload(), b"hello");
    assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_outage_buffers_then_drains_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // a port with nothing listening: the cloud is down
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cloud_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = gateway_config(dir.path(), &format!("http://{cloud_addr}"), "");
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();

    const PER_SENSOR: usize = 40;
    for i in 0..PER_SENSOR {
        for (sensor, pw) in [("sensor1", "pw1"), ("sensor2", "secret2")] {
            let r = client
                .post(format!("http://{web}/v1/seq"))
                .basic_auth(format!("{sensor}@{APP}"), Some(pw))
                .header("content-type", "application/json")
                .body(format!("{{\"i\":{i}}}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    }
    // while the cloud is down the depth stays up and the uplink says why
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = status(&client, &web).await;
        if s["uplink"]["failures"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["outbox"]["records_queued"], (2 * PER_SENSOR) as u64, "{s}");
    assert_eq!(s["uplink"]["state"], "retrying", "{s}");
    assert!(s["uplink"]["last_error"].as_str().is_some(), "{s}");

    // the cloud comes back on the same address
    let cloud = DevCloud::start(cloud_addr, seed(), CancellationToken::new()).await.unwrap();
    let events = wait_telemetry(&cloud, 2 * PER_SENSOR).await;
    assert_eq!(events.len(), 2 * PER_SENSOR);
    for sensor in ["sensor1", "sensor2"] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.device.as_deref() == Some(sensor))
            .map(|e| e.data.as_ref().unwrap()["i"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..PER_SENSOR as u64).collect::<Vec<_>>(), "{sensor} out of order");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&client, &web).await;
        if s["outbox"]["records_queued"] == 0 {
            assert_eq!(s["uplink"]["state"], "connected", "{s}");
            assert_eq!(s["uplink"]["sent"], (2 * PER_SENSOR) as u64, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "outbox did not drain: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn demo_starts_cloud_and_gateway_and_its_sensors_reach_the_cloud() {
    let mut child = Command::new(BIN)
        .args(["demo", "--duration", "30s", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut gateway = None;
    let mut admin_password = None;
    let mut events = None;
    let mut curl_line = None;
    for line in stdout.lines().map_while(Result::ok).take(40) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status", "page", url, "(log", "in", "as", "admin,", "password", pw] => {
                gateway = Some(url.to_string());
                admin_password = Some(pw.trim_end_matches(')').to_string());
            }
            ["cloud", "event", "log", url] => events = Some(url.to_string()),
            ["curl", "-i", ..] => curl_line = Some(line.clone()),
            ["Stop", ..] => break,
            _ => {}
        }
    }
    let (gateway, events) = (gateway.expect("gateway URL printed"), events.expect("event log URL"));
    let client = common::blocking_client();
    assert_eq!(client.get(format!("{gateway}healthz")).status(), 200);
    // the printed status page password logs in
    let web = gateway.trim_start_matches("http://").trim_end_matches('/');
    let jar = tempfile::tempdir().unwrap();
    let password = admin_password.expect("status page password printed");
    let login = common::status_page_login(web, &jar.path().join("jar"), "admin", &password);
    assert_eq!(login, 303, "the demo's printed admin password logs in");

    // the printed curl hint works as printed
    let curl_line = curl_line.expect("curl hint printed");
    let args: Vec<String> = shell_words(&curl_line)[1..].to_vec();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _) = curl(&args);
    assert_eq!(code, 202);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "demo sensors did not reach the cloud: {seen:?}");
        let page: serde_json::Value =
            serde_json::from_str(&client.get(format!("{events}?since=0")).text()).unwrap();
        for e in page["events"].as_array().unwrap() {
            // the sensors' readings (not the gateway's own heartbeat)
            if e["type"] == "io.drogue.event.v1"
                && e["sender"] == "gw1"
                && e["subject"] == "temperature"
            {
                seen.insert(e["device"].as_str().unwrap().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["sensor1", "sensor2", "sensor3"]);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits a printed command line the way a shell would for the quoting the demo uses.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.trim().chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Posts 1 KiB messages for sensor1 until the gateway answers something other than 202 or
/// `limit` were accepted; returns (accepted, the first other response).
async fn fill(client: &reqwest::Client, web: &str, limit: usize) -> (usize, Option<(u16, String)>) {
    for i in 0..limit {
        let r = client
            .post(format!("http://{web}/v1/fill"))
            .basic_auth(format!("sensor1@{APP}"), Some("pw1"))
            .header("content-type", "application/json")
            .body(format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)))
            .send()
            .await
            .unwrap();
        if r.status() != 202 {
            return (i, Some((r.status().as_u16(), r.text().await.unwrap())));
        }
    }
    (limit, None)
}

fn closed_port_url() -> (SocketAddr, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (addr, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_rejects_with_503_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud_addr, cloud_url) = closed_port_url();
    let mut config = std::fs::read_to_string(gateway_config(dir.path(), &cloud_url, "")).unwrap();
    config.push_str("\n[store]\nmax_bytes = \"64KiB\"\nwhen_full = \"reject\"\n");
    let config = write(dir.path(), "reject.toml", &config);
    let client = reqwest::Client::new();

    let accepted = {
        let gw = Running::start(&config, None);
        let web = gw.web_addr();
        let (accepted, refused) = fill(&client, &web, 1000).await;
        let (code, body) = refused.expect("a 64 KiB outbox fills up");
        assert_eq!(code, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "QuotaExceeded", "{body}");
        assert!(accepted > 10, "only {accepted} accepted");
        accepted
    }; // gatewayd killed here

    // the store is readable after the restart and still holds every acknowledged message
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let s = status(&client, &web).await;
    assert_eq!(s["outbox"]["records_queued"], accepted as u64, "{s}");
    let cloud = DevCloud::start(cloud_addr, seed(), CancellationToken::new()).await.unwrap();
    let events = wait_telemetry(&cloud, accepted).await;
    let seqs: Vec<u64> =
        events.iter().map(|e| e.data.as_ref().unwrap()["i"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..accepted as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_accepting_and_counts_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cloud_url) = closed_port_url();
    let mut config = std::fs::read_to_string(gateway_config(dir.path(), &cloud_url, "")).unwrap();
    config.push_str("\n[store]\nmax_bytes = \"64KiB\"\nwhen_full = \"drop-oldest\"\n");
    let config = write(dir.path(), "drop.toml", &config);
    let client = reqwest::Client::new();
    let queued = {
        let gw = Running::start(&config, None);
        let web = gw.web_addr();
        let (accepted, refused) = fill(&client, &web, 300).await;
        assert_eq!((accepted, refused.map(|r| r.0)), (300, None), "drop-oldest never refuses");
        let s = status(&client, &web).await;
        let dropped = s["outbox"]["dropped"].as_u64().unwrap();
        let queued = s["outbox"]["records_queued"].as_u64().unwrap();
        assert!(dropped > 0, "{s}");
        assert_eq!(dropped + queued, 300, "{s}");
        let device = &s["outbox"]["devices"][0];
        assert_eq!(
            (device["device"].as_str(), device["dropped"].as_u64()),
            (Some("sensor1"), Some(dropped)),
            "{s}"
        );
        queued
    };
    let gw = Running::start(&config, None);
    let s = status(&client, &gw.web_addr()).await;
    assert_eq!(s["outbox"]["records_queued"], queued, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_posts_on_one_keep_alive_connection_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed(), CancellationToken::new())
        .await
        .unwrap();
    let gw = Running::start(&gateway_config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    // one curl, 200 posts one after the other on one connection
    const N: u64 = 200;
    let mut requests = String::new();
    for i in 0..N {
        requests.push_str(&format!(
            "url = \"http://{web}/v1/seq\"\nuser = \"sensor1@{APP}:pw1\"\ndata = \"{i}\"\n\
             header = \"content-type: application/json\"\noutput = \"/dev/null\"\n\
             write-out = \"%{{http_code}}\\n\"\nnext\n"
        ));
    }
    let config = write(dir.path(), "curl.config", &requests);
    let out = Command::new("curl").args(["-s", "-S", "--config", &config]).output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "202").count() as u64, N, "{codes}");
    let events = wait_telemetry(&cloud, N as usize).await;
    let got: Vec<u64> = events
        .iter()
        .filter(|e| e.subject == "seq")
        .filter_map(|e| e.data.as_ref().and_then(serde_json::Value::as_u64))
        .collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}

/// `[store] max_age`: readings the cloud could not take within it are dropped and counted per
/// device, so they stop filling the quota; younger ones are kept and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_the_store_max_age_are_dropped_and_counted() {
    let cloud = common::cloud_with("my-app", &["sensor1", "sensor2"]).await;
    cloud.faults().set_publish_status(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [store]\nmax_age = \"2s\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n\n[[devices]]\nname = \"sensor2\"\npassword = \"pw2\"\n",
        dir.path().join("data").display().to_string(),
        cloud.url()
    );
    let cfg = common::write(dir.path(), "gatewayd.toml", &text);
    let gw = common::Running::start(&cfg, None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();
    let post = |user: &'static str, pw: &'static str, n: u32| {
        let (client, web) = (client.clone(), web.clone());
        async move {
            client
                .post(format!("http://{web}/v1/seq"))
                .basic_auth(user, Some(pw))
                .header("content-type", "application/json")
                .body(n.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for n in 0..3 {
        assert_eq!(post("sensor1@my-app", "pw1", n).await, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = common::status(&client, &web).await;
        if s["outbox"]["too_old"] == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "not expired: {}", s["outbox"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["outbox"]["records_queued"], 0, "{}", s["outbox"]);
    let dev = s["outbox"]["devices"].as_array().unwrap();
    let one = dev.iter().find(|d| d["device"] == "sensor1").unwrap_or_else(|| panic!("{dev:?}"));
    assert_eq!(one["too_old"], 3);
    let metrics = common::metrics(&client, &web).await;
    assert!(metrics.contains("gatewayd_outbox_too_old_total 3"), "{metrics}");
    let line = gw.wait_for("max_age", Duration::from_secs(5));
    assert!(line.contains("sensor1"), "{line}");
    // a fresh reading is kept and delivered once the cloud is back
    assert_eq!(post("sensor2@my-app", "pw2", 7).await, 202);
    cloud.faults().set_publish_status(None);
    let got = common::wait_numbers(&cloud, "seq", 1).await;
    assert_eq!(got, [7]);
}
