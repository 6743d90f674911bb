//! The registry API: CRUD, paging, label selectors, optimistic locking, API auth.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cloud, TIMEOUT, seed};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const DEVICES: &str = "/api/registry/v1alpha1/apps/my-app/devices";

async fn names(c: &Cloud, query: &str) -> Result<Vec<String>, StatusCode> {
    let resp = c.api(Method::GET, &format!("{DEVICES}?{query}")).send().await.unwrap();
    if resp.status() != StatusCode::OK {
        return Err(resp.status());
    }
    let list: Vec<Value> = resp.json().await.unwrap();
    Ok(list.iter().map(|d| d["metadata"]["name"].as_str().unwrap().to_owned()).collect())
}

async fn create(c: &Cloud, name: &str, labels: Value) -> reqwest::Response {
    let body = json!({"metadata":{"application":"my-app","name":name,"labels":labels}});
    c.api(Method::POST, DEVICES).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn lists_page_by_name() {
    let c = Cloud::start(seed()).await;
    for n in ["d3", "d1", "d2"] {
        assert_eq!(create(&c, n, json!({})).await.status(), StatusCode::CREATED);
    }
    // seeded: gw1, sensor1, sensor2
    assert_eq!(names(&c, "").await.unwrap(), ["d1", "d2", "d3", "gw1", "sensor1", "sensor2"]);
    assert_eq!(names(&c, "limit=2").await.unwrap(), ["d1", "d2"]);
    assert_eq!(names(&c, "limit=2&offset=2").await.unwrap(), ["d3", "gw1"]);
    assert_eq!(names(&c, "offset=5").await.unwrap(), ["sensor2"]);
    assert_eq!(names(&c, "offset=9").await.unwrap(), Vec::<String>::new());
    let apps: Value = c
        .api(Method::GET, "/api/registry/v1alpha1/apps")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(apps[0]["metadata"]["name"], "my-app");
}

#[tokio::test]
async fn every_label_selector_form() {
    let c = Cloud::start(seed()).await;
    create(&c, "a", json!({"zone":"north","tier":"edge"})).await;
    create(&c, "b", json!({"zone":"south"})).await;
    create(&c, "c", json!({"zone":"east","tier":"core"})).await;
    let q = |s: &str| format!("labels={}", s.replace(' ', "%20").replace('!', "%21"));
    assert_eq!(names(&c, &q("tier")).await.unwrap(), ["a", "c"]);
    assert_eq!(names(&c, &q("!zone")).await.unwrap(), ["gw1", "sensor1", "sensor2"]);
    assert_eq!(names(&c, &q("zone=south")).await.unwrap(), ["b"]);
    assert_eq!(names(&c, &q("zone,zone!=south")).await.unwrap(), ["a", "c"]);
    assert_eq!(names(&c, &q("zone in (north,east)")).await.unwrap(), ["a", "c"]);
    assert_eq!(names(&c, &q("zone,zone notin (north,east)")).await.unwrap(), ["b"]);
    assert_eq!(names(&c, &q("zone in (north,east),tier=core")).await.unwrap(), ["c"]);
    assert_eq!(names(&c, &q("zone in (north")).await, Err(StatusCode::BAD_REQUEST));
}

#[tokio::test]
async fn create_get_replace_delete_with_optimistic_locking() {
    let c = Cloud::start(seed()).await;
    let resp = create(&c, "bar/baz", json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(location, format!("{DEVICES}/bar%2Fbaz"));
    assert_eq!(create(&c, "bar/baz", json!({})).await.status(), StatusCode::CONFLICT);

    let dev: Value = c.api(Method::GET, &location).send().await.unwrap().json().await.unwrap();
    let meta = &dev["metadata"];
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().unwrap().len() == 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    let first_version = meta["resourceVersion"].as_str().unwrap().to_owned();

    let mut updated = dev.clone();
    updated["spec"] = json!({"alias": ["bb"]});
    let resp = c.api(Method::PUT, &location).json(&updated).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let now: Value = c.api(Method::GET, &location).send().await.unwrap().json().await.unwrap();
    assert_eq!(now["metadata"]["generation"], 2);
    assert_ne!(now["metadata"]["resourceVersion"], first_version.as_str());
    assert_eq!(now["spec"]["alias"], json!(["bb"]));

    // the stale version loses
    let resp = c.api(Method::PUT, &location).json(&updated).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // the path must match the metadata
    let resp = c.api(Method::PUT, &format!("{DEVICES}/other")).json(&now).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let stale = json!({"preconditions":{"resourceVersion": first_version}});
    let resp = c.api(Method::DELETE, &location).json(&stale).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let fresh = json!({"preconditions":{"uid": now["metadata"]["uid"],
        "resourceVersion": now["metadata"]["resourceVersion"]}});
    let resp = c.api(Method::DELETE, &location).json(&fresh).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c.api(Method::GET, &location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // each change logged an io.drogue.registry.v1 event: create, update, delete
    let events = c.cloud.wait_for_events(3, TIMEOUT).await;
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!((e.kind.as_str(), e.subject.as_str()), ("io.drogue.registry.v1", "devices"));
        assert_eq!(e.device.as_deref(), Some("bar/baz"));
        assert!(e.data.is_none() && e.data_base64.is_none());
    }
}

#[tokio::test]
async fn applications_crud() {
    let c = Cloud::start(seed()).await;
    let apps = "/api/registry/v1alpha1/apps";
    let resp =
        c.api(Method::POST, apps).json(&json!({"metadata":{"name":"two"}})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()[header::LOCATION], "/api/registry/v1alpha1/apps/two");
    let app: Value =
        c.api(Method::GET, &format!("{apps}/two")).send().await.unwrap().json().await.unwrap();
    let mut stale = app.clone();
    stale["metadata"]["resourceVersion"] = json!("old");
    let resp = c.api(Method::PUT, &format!("{apps}/two")).json(&stale).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = c.api(Method::PUT, &format!("{apps}/two")).json(&app).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c.api(Method::DELETE, &format!("{apps}/two")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c.api(Method::GET, &format!("{apps}/two")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_needs_a_token() {
    let c = Cloud::start(seed()).await;
    let resp = c.http.get(c.url(DEVICES)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c.http.get(c.url(DEVICES)).basic_auth("admin", Some("wrong")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // a device's credentials are no API token
    let resp = c
        .http
        .get(c.url(DEVICES))
        .basic_auth("gw1@my-app", Some("gw-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c.http.get(c.url(DEVICES)).bearer_auth("admin-token").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
