//! The command API and Drogue's routing: internal delivery, external push, the spec.core
//! quirk.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::{APP, Cloud, Receiver, TIMEOUT, basic, seed};
use gw_devcloud::seed::device_with;
use reqwest::{Method, StatusCode, header};
use serde_json::json;

fn command_path(device: &str, command: &str) -> String {
    format!("/api/command/v1alpha1/apps/{APP}/devices/{device}?command={command}")
}

#[tokio::test]
async fn external_push_gets_drogues_default_body() {
    let rx = Receiver::start(axum::http::StatusCode::NO_CONTENT).await;
    let mut gw = device_with(APP, "gw-push", Some("pw"), &[]);
    gw.spec.commands = Some(
        serde_json::from_value(json!({"commands":[
            {"external":{"url":"http://127.0.0.1:9/never"}},
            {"external":{"url": rx.url(), "headers":{"X-Token":"abc"}}}]}))
        .unwrap(),
    );
    let seed = seed().device(gw).sensor(APP, "s3", None, &["gw1", "gw-push"]);
    let c = Cloud::start(seed).await;
    let resp = c
        .api(Method::POST, &command_path("s3", "set-temp"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"t":21}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let payload = base64::engine::general_purpose::STANDARD.encode(r#"{"t":21}"#);
    assert_eq!(
        rx.bodies(),
        [json!({"application": APP, "device": "s3", "command": "set-temp", "payload": payload})]
    );
    assert_eq!(rx.received.lock().unwrap()[0].0["x-token"], "abc");
    // pushed exclusively: nothing went on the bus for gw1, even though it comes first
    assert_eq!(c.cloud.command_subscribers(), 0);
}

#[tokio::test]
async fn failed_push_is_406() {
    let rx = Receiver::start(axum::http::StatusCode::INTERNAL_SERVER_ERROR).await;
    let seed = seed()
        .password_device(APP, "gw-push", "pw")
        .push_endpoint(APP, "gw-push", &rx.url())
        .sensor(APP, "s3", None, &["gw-push"]);
    let c = Cloud::start(seed).await;
    let resp = c.api(Method::POST, &command_path("s3", "x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(rx.bodies().len(), 1);
}

#[tokio::test]
async fn internal_delivery_reaches_device_and_gateway_waiters() {
    let c = Cloud::start(seed()).await;
    let mut sub = c.cloud.subscribe_commands();
    // the sensor itself waits too (no as=)
    let http = c.http.clone();
    let url = c.url("/v1/poll?ct=20");
    let sensor = tokio::spawn(async move {
        http.post(url)
            .header(header::AUTHORIZATION, basic("sensor1@my-app", "s1-pass", true))
            .send()
            .await
            .unwrap()
    });
    c.until_command_waiters(2).await;
    let resp =
        c.api(Method::POST, &command_path("sensor1", "reboot")).body("now").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let got = tokio::time::timeout(TIMEOUT, sensor).await.unwrap().unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["command"], "reboot");
    assert_eq!(got.text().await.unwrap(), "now");
    // one command per target: the device, then its gateway
    let mut senders = Vec::new();
    for _ in 0..2 {
        let cmd = tokio::time::timeout(TIMEOUT, sub.recv()).await.unwrap().unwrap();
        assert_eq!(cmd.device, "sensor1");
        senders.push(cmd.sender);
    }
    assert_eq!(senders, ["sensor1", "gw1"]);
}

#[tokio::test]
async fn unknown_device_is_406_and_api_needs_auth() {
    let c = Cloud::start(seed()).await;
    let resp = c.api(Method::POST, &command_path("nobody", "x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    let resp = c.http.post(c.url(&command_path("sensor1", "x"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Drogue's inverted `spec.core` check: a `core` section without `disabled: true` makes a
/// device count as disabled for commands, and such a gateway is skipped.
#[tokio::test]
async fn spec_core_quirk() {
    let rx = Receiver::start(axum::http::StatusCode::OK).await;
    let mut core_sensor = device_with(APP, "core-sensor", None, &["gw1"]);
    core_sensor.spec.other.insert("core".into(), json!({"disabled": false}));
    let mut inverted = device_with(APP, "inverted", None, &[]);
    inverted.spec.other.insert("core".into(), json!({"disabled": true}));
    let mut core_gw = device_with(APP, "core-gw", Some("pw"), &[]);
    core_gw.spec.other.insert("core".into(), json!({}));
    let seed = seed()
        .device(core_sensor)
        .device(inverted)
        .device(core_gw)
        .push_endpoint(APP, "core-gw", &rx.url())
        .sensor(APP, "behind-core-gw", None, &["core-gw"]);
    let c = Cloud::start(seed).await;

    let status = |device: &'static str| {
        let req = c.api(Method::POST, &command_path(device, "x"));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status("core-sensor").await, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(status("inverted").await, StatusCode::ACCEPTED, "disabled:true counts as enabled");
    // the gateway with spec.core is skipped: internal delivery instead of its push endpoint
    assert_eq!(status("behind-core-gw").await, StatusCode::ACCEPTED);
    assert!(rx.bodies().is_empty());
}
