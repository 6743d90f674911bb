//! The device HTTP endpoint, driven with curl-equivalent reqwest calls.
#![allow(clippy::unwrap_used)]

mod common;

use common::{APP, Cloud, TIMEOUT, basic, seed};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

const AUTH_FAILED: &str =
    r#"{"code":403,"error":"AuthenticationError","message":"Authentication failed"}"#;

#[tokio::test]
async fn gateway_publishes_as_listed_sensor() {
    let c = Cloud::start(seed()).await;
    let resp = c
        .http
        .post(c.url("/v1/telemetry?as=sensor1"))
        .header(header::AUTHORIZATION, basic("gw1@my-app", "gw-secret", true))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"temp":21.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let events = c.cloud.wait_for_events(1, TIMEOUT).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.kind, "io.drogue.event.v1");
    assert_eq!(e.subject, "telemetry");
    assert_eq!(e.device.as_deref(), Some("sensor1"));
    assert_eq!(e.sender.as_deref(), Some("gw1"));
    assert_eq!(e.source, "drogue://my-app/sensor1");
    assert_eq!(e.partitionkey.as_deref(), Some("my-app/gw1"));
    assert_eq!(e.data, Some(json!({"temp": 21.5})));
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));

    // the same event over HTTP
    let page: Value = c
        .http
        .get(c.url("/api/devcloud/v1/events?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["device"], "sensor1");
    assert_eq!(page["next"], 1);
    let later: Value = c
        .http
        .get(c.url("/api/devcloud/v1/events?since=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(later["events"], json!([]));
}

async fn status_and_body(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn gateway_as_unlisted_sensor_is_403_with_drogues_json() {
    let c = Cloud::start(seed()).await;
    let resp = c
        .http
        .post(c.url("/v1/telemetry?as=sensor2"))
        .header(header::AUTHORIZATION, basic("gw1@my-app", "gw-secret", true))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_body(resp).await, (StatusCode::FORBIDDEN, AUTH_FAILED.to_owned()));
    assert!(c.cloud.events().is_empty());
}

#[tokio::test]
async fn wrong_password_and_missing_auth_are_403() {
    let c = Cloud::start(seed()).await;
    for auth in [Some(basic("gw1@my-app", "wrong", true)), Some("Bearer x".into()), None] {
        let mut req = c.http.post(c.url("/v1/telemetry")).body("x");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(status_and_body(resp).await, (StatusCode::FORBIDDEN, AUTH_FAILED.to_owned()));
    }
}

#[tokio::test]
async fn unpadded_basic_is_accepted() {
    let c = Cloud::start(seed()).await;
    let header_value = basic("sensor1@my-app", "s1-pass", false);
    assert_ne!(header_value, basic("sensor1@my-app", "s1-pass", true), "test needs padding");
    let resp = c
        .http
        .post(c.url("/v1/telemetry"))
        .header(header::AUTHORIZATION, header_value)
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let e = &c.cloud.wait_for_events(1, TIMEOUT).await[0];
    assert_eq!((e.device.as_deref(), e.sender.as_deref()), (Some("sensor1"), Some("sensor1")));
    assert_eq!(e.data_base64.as_deref(), Some("cmF3"));
}

#[tokio::test]
async fn trailing_slash_and_suffix_keep_the_channel() {
    let c = Cloud::start(seed()).await;
    for path in ["/v1/temp/", "/v1/temp/a/b"] {
        let resp = c
            .http
            .post(c.url(path))
            .header(header::AUTHORIZATION, basic("sensor1@my-app", "s1-pass", true))
            .body("1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{path}");
    }
    let events = c.cloud.wait_for_events(2, TIMEOUT).await;
    let subjects: Vec<_> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["temp", "temp"]);
}

#[tokio::test]
async fn query_rows_of_basic_auth() {
    let c = Cloud::start(seed()).await;
    // application= with the bare device name; device= with user@app (pass matches own name)
    let cases = [
        ("/v1/t?application=my-app", basic("sensor1", "s1-pass", true)),
        ("/v1/t?application=my-app&device=sensor1", basic("sensor1", "s1-pass", true)),
        ("/v1/t?device=sensor1", basic("sensor1@my-app", "s1-pass", true)),
    ];
    for (path, auth) in cases {
        let resp =
            c.http.post(c.url(path)).header(header::AUTHORIZATION, auth).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{path}");
    }
    // device= names another device: its username check fails
    let resp = c
        .http
        .post(c.url("/v1/t?application=my-app&device=sensor2"))
        .header(header::AUTHORIZATION, basic("sensor1", "s1-pass", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_query_is_400_and_bad_json_is_406() {
    let c = Cloud::start(seed()).await;
    let auth = basic("sensor1@my-app", "s1-pass", true);
    for path in ["/v1/t?ct=soon", "/v1/t?colour=red"] {
        let resp =
            c.http.post(c.url(path)).header(header::AUTHORIZATION, &auth).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    let resp = c
        .http
        .post(c.url("/v1/t?data_schema=urn:x"))
        .header(header::AUTHORIZATION, &auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    assert!(c.cloud.events().is_empty());
}

#[tokio::test]
async fn ct_returns_a_command_routed_via_the_gateway() {
    let c = Cloud::start(seed()).await;
    let url = c.url("/v1/poll?as=sensor1&ct=20");
    let http = c.http.clone();
    let waiter = tokio::spawn(async move {
        http.post(url)
            .header(header::AUTHORIZATION, basic("gw1@my-app", "gw-secret", true))
            .send()
            .await
            .unwrap()
    });
    c.until_command_waiters(1).await;
    let resp = c
        .api(
            reqwest::Method::POST,
            "/api/command/v1alpha1/apps/my-app/devices/sensor1?command=set-temp",
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"target":22}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let got = tokio::time::timeout(TIMEOUT, waiter).await.unwrap().unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["command"], "set-temp");
    assert!(got.headers().get(header::CONTENT_TYPE).is_none(), "Drogue sends no content type");
    assert_eq!(got.text().await.unwrap(), r#"{"target":22}"#);
}

#[tokio::test]
async fn ct_without_a_command_answers_202_after_the_wait() {
    let c = Cloud::start(seed()).await;
    let resp = c
        .http
        .post(c.url(&format!("/v1/poll?commandTimeout=1&application={APP}")))
        .header(header::AUTHORIZATION, basic("sensor2", "s2-secret", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}
