//! End to end over CoAP: libcoap's `coap-client-notls` posts to the real gatewayd with option
//! 4209, and the dev cloud's event log shows the message as the sensor.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use common::{Running, status, write};

const APP: &str = "my-app";

fn config(dir: &Path, cloud: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [coap]\nlisten = \"127.0.0.1:0\"\n\n[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n\
         [log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

/// Whether `coap-client-notls` is installed; in CI its absence fails the test.
fn have_coap_client() -> bool {
    let ok = Command::new("coap-client-notls").arg("-h").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "coap-client-notls missing in CI");
        eprintln!("SKIP: coap-client-notls (libcoap3-bin) not installed");
    }
    ok
}

fn coap_post(addr: &str, user_pw: &str, payload: &str) -> String {
    let auth = format!("4209,Basic {}", STANDARD_NO_PAD.encode(user_pw));
    let out = Command::new("coap-client-notls")
        .args(["-B", "15", "-m", "post", "-t", "50", "-O", &auth, "-e", payload])
        .arg(format!("coap://{addr}/v1/temperature"))
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_post_reaches_the_cloud_as_the_sensor() {
    if !have_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url()), None);
    let web = gw.web_addr();
    let coap = gw.listener_addr("coap");

    let out = coap_post(&coap, "sensor1@my-app:pw1", r#"{"v":1}"#);
    assert!(!out.contains("4."), "{out}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<_> =
            cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect();
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].device.as_deref(), Some("sensor1"));
    assert_eq!(events[0].sender.as_deref(), Some("gw1"));
    assert_eq!(events[0].subject, "temperature");
    assert_eq!(events[0].datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(events[0].data, Some(serde_json::json!({ "v": 1 })));

    // wrong credentials: 4.03 with its diagnostic, nothing stored
    let out = coap_post(&coap, "sensor1@my-app:wrong", "x");
    assert!(out.contains("4.03"), "{out}");

    let status = status(&reqwest::Client::new(), &web).await;
    assert_eq!(status["coap"]["stored"], 1, "{status}");
    assert_eq!(status["coap"]["auth_refused"], 1, "{status}");
    let listed = status["listeners"].as_array().unwrap();
    assert!(listed.iter().any(|l| l["name"] == "coap"), "{status}");
}

/// A CON POST of `payload` to `/v1/seq` with message id and token `mid`.
fn con_post(mid: u16, auth: &str, payload: &[u8]) -> Vec<u8> {
    common::coap_post(mid, "seq", Some(auth), None, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_coap_messages_in_flight_arrive_in_the_order_it_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = common::cloud_with(APP, &["sensor1"]).await;
    // room for 20 requests of one peer in flight, and no rate limit in the way
    let text = std::fs::read_to_string(config(dir.path(), &cloud.url())).unwrap().replace(
        "[coap]\nlisten = \"127.0.0.1:0\"\n",
        "[coap]\nlisten = \"127.0.0.1:0\"\nmax_in_flight_per_peer = 32\nrate_burst = 10000\n",
    );
    let gw = Running::start(&write(dir.path(), "gatewayd.toml", &text), None);
    let _ = gw.web_addr();
    let coap = gw.listener_addr("coap");
    // one sensor (one source port), requests sent in order, 20 in flight: a new one goes out
    // as soon as any answer came back
    const N: u16 = 400;
    const WINDOW: u16 = 20;
    let auth = format!("Basic {}", STANDARD_NO_PAD.encode("sensor1@my-app:pw1"));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(&coap).await.unwrap();
    let (mut sent, mut stored) = (0u16, 0u16);
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.len() < usize::from(N) {
        assert!(Instant::now() < deadline, "{} of {N} answered", answered.len());
        while sent < N && sent < stored + WINDOW {
            socket.send(&con_post(sent, &auth, sent.to_string().as_bytes())).await.unwrap();
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let p = coap_lite::Packet::from_bytes(&buf[..n]).unwrap();
                let code = p.header.code;
                if code == coap_lite::MessageClass::Response(coap_lite::ResponseType::Changed)
                    && answered.insert(p.header.message_id)
                {
                    stored += 1;
                }
            }
            // an answer lost on the way: send the oldest unanswered again (same message id)
            _ => {
                let oldest = (0..sent).find(|m| !answered.contains(m)).unwrap();
                socket.send(&con_post(oldest, &auth, oldest.to_string().as_bytes())).await.unwrap();
            }
        }
    }
    let got = common::wait_numbers(&cloud, "seq", usize::from(N)).await;
    common::assert_in_order(&got, u64::from(N), "CoAP, 20 in flight");
}
