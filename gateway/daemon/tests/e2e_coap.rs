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
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

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
