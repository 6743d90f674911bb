//! The registry sync against the dev cloud's registry API (contracts/drogue-cloud.md §5): which
//! devices are kept, paging, label selectors, removal by polling and by registry events, the
//! cloud going away and coming back, and the two ways to present the API token.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gw_cloud_sync::{
    CloudError, RegistryConfig, RegistryState, RegistryStatus, RegistrySync, SyncedDevices,
};
use gw_devcloud::{DevCloud, Seed, seed::device_with};
use gw_model::{Identity, Secret, registry::Device};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const GW: &str = "gw1";
const USER: &str = "admin";
const TOKEN: &str = "registry-token";
/// Longest wait for anything the sync should do; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(15);
const SHORT: Duration = Duration::from_millis(200);

type Published = watch::Receiver<Option<Arc<SyncedDevices>>>;

fn gateway() -> Identity {
    format!("{GW}@{APP}").parse().unwrap()
}

fn base_seed() -> Seed {
    Seed::new().user(USER, TOKEN).application(APP).password_device(APP, GW, "gw-secret")
}

fn sensor(name: &str, gateways: &[&str]) -> Device {
    device_with(APP, name, Some("pw"), gateways)
}

fn labelled(name: &str, labels: &[(&str, &str)]) -> Device {
    let mut d = sensor(name, &[GW]);
    d.metadata.labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    d
}

async fn start(seed: Seed, shutdown: &CancellationToken) -> DevCloud {
    DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, shutdown.clone()).await.unwrap()
}

fn config(url: &str) -> RegistryConfig {
    let mut c = RegistryConfig::new(url, Secret::new(TOKEN));
    c.interval = SHORT;
    c
}

fn names(set: &SyncedDevices) -> Vec<&str> {
    set.devices.iter().map(|d| d.metadata.name.as_str()).collect()
}

/// Waits until the published set satisfies `pred`, and returns it.
async fn wait_set(
    rx: &mut Published,
    what: &str,
    pred: impl Fn(&SyncedDevices) -> bool,
) -> Arc<SyncedDevices> {
    let found =
        tokio::time::timeout(PATIENCE, rx.wait_for(|v| v.as_ref().is_some_and(|s| pred(s))))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    found.clone().unwrap()
}

/// Waits until the status satisfies `pred` (polled: the status has no change signal).
async fn wait_status(status: &RegistryStatus, what: &str, pred: impl Fn(&RegistryStatus) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred(status) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", status.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(sync: RegistrySync, token: &CancellationToken) -> JoinHandle<()> {
    tokio::spawn(sync.run(token.clone()))
}

async fn delete_device(cloud: &DevCloud, name: &str) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/api/registry/v1alpha1/apps/{APP}/devices/{name}", cloud.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

/// With `providers_rfc`, `spec.providers` and a `spec.providerSelector` matching the gateway
/// device's labels count too; a selector for other labels does not.
#[tokio::test]
async fn providers_rfc_keeps_providers_and_selected_devices() {
    let shutdown = CancellationToken::new();
    let mut gw = device_with(APP, GW, Some("gw-secret"), &[]);
    gw.metadata.labels.insert("group".into(), "site-b".into());
    let mut providers = sensor("by-providers", &[]);
    providers.spec.providers = Some(vec![GW.into()]);
    let select = |name: &str, group: &str| {
        let mut d = sensor(name, &[]);
        d.spec.provider_selector =
            Some(serde_json::json!({ "group": group }).as_object().unwrap().clone());
        d
    };
    let seed = Seed::new()
        .user(USER, TOKEN)
        .application(APP)
        .device(gw)
        .device(providers)
        .device(select("by-labels", "site-b"))
        .device(select("other-labels", "site-c"))
        .device(sensor("by-selector", &[GW]))
        .providers_rfc(true);
    let cloud = start(seed, &shutdown).await;
    let mut cfg = config(&cloud.url());
    cfg.providers_rfc = true;
    let sync = RegistrySync::new(&cfg, &gateway(), Secret::new(TOKEN)).unwrap();
    let report = sync.sync_once().await.unwrap();
    assert_eq!(report.pages, 2, "the gateway's own device, then one page");
    let set = sync.subscribe().borrow().clone().unwrap();
    assert_eq!(names(&set), ["by-labels", "by-providers", "by-selector"]);

    // the same registry under Drogue's rule: only matchNames
    let sync = RegistrySync::new(&config(&cloud.url()), &gateway(), Secret::new(TOKEN)).unwrap();
    sync.sync_once().await.unwrap();
    assert_eq!(names(&sync.subscribe().borrow().clone().unwrap()), ["by-selector"]);
    shutdown.cancel();
}

#[tokio::test]
async fn keeps_devices_naming_the_gateway_across_pages() {
    let shutdown = CancellationToken::new();
    let mut providers = sensor("by-providers", &[]);
    providers.spec.providers = Some(vec!["gw0".into(), GW.into()]);
    let mut deleting = sensor("being-deleted", &[GW]);
    deleting.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    let mut seed = base_seed()
        .device(sensor("by-selector", &["gw0", GW]))
        .device(providers)
        .device(sensor("other-gateway", &["gw2"]))
        .device(sensor("no-gateway", &[]))
        .device(deleting);
    for n in 0..250 {
        seed = seed.device(sensor(&format!("bulk-{n:03}"), &[GW]));
    }
    let cloud = start(seed, &shutdown).await;
    let sync = RegistrySync::new(&config(&cloud.url()), &gateway(), Secret::new(TOKEN)).unwrap();
    let rx = sync.subscribe();
    assert!(rx.borrow().is_none(), "nothing before the first listing");

    let report = sync.sync_once().await.unwrap();
    // 256 devices in pages of 100 overlapping by one: offsets 0, 99, 198
    assert_eq!((report.listed, report.pages, report.devices), (256, 3, 251));
    assert!(report.published);
    let set = rx.borrow().clone().unwrap();
    assert_eq!(set.generation, 1);
    let kept = names(&set);
    assert!(kept.contains(&"by-selector"), "{kept:?}");
    // Drogue's rule (the default): spec.providers names nobody
    for absent in ["by-providers", "other-gateway", "no-gateway", "being-deleted", GW] {
        assert!(!kept.contains(&absent), "{absent} kept");
    }
    assert_eq!(kept.iter().filter(|n| n.starts_with("bulk-")).count(), 250);
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    assert!(set.get("bulk-249").is_some());

    // nothing changed: nothing new is published
    let again = sync.sync_once().await.unwrap();
    assert!(!again.published);
    assert!(Arc::ptr_eq(&set, rx.borrow().as_ref().unwrap()));
    let status = sync.status().snapshot();
    assert_eq!((status.state, status.devices, status.syncs), (RegistryState::Synced, 251, 2));
    assert!(status.last_sync_at_ms.is_some() && status.last_error.is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn label_selector_limits_the_set() {
    let shutdown = CancellationToken::new();
    let seed = base_seed()
        .device(labelled("north-1", &[("zone", "north")]))
        .device(labelled("east-1", &[("zone", "east")]))
        .device(labelled("east-old", &[("zone", "east"), ("retired", "yes")]))
        .device(labelled("south-1", &[("zone", "south")]))
        .device(sensor("unlabelled", &[GW]));
    let cloud = start(seed, &shutdown).await;
    let mut c = config(&cloud.url());
    c.labels = Some("zone in (north,east),!retired".into());
    c.page_size = 2;
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    let report = sync.sync_once().await.unwrap();
    assert_eq!(report.listed, 2);
    let set = sync.subscribe().borrow().clone().unwrap();
    assert_eq!(names(&set), ["east-1", "north-1"]);

    c.labels = Some("zone=south".into());
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    sync.sync_once().await.unwrap();
    assert_eq!(names(&sync.subscribe().borrow().clone().unwrap()), ["south-1"]);
    shutdown.cancel();
}

#[tokio::test]
async fn removal_in_the_registry_is_published_within_an_interval() {
    let shutdown = CancellationToken::new();
    let seed = base_seed()
        .device(sensor("stays", &[GW]))
        .device(sensor("deleted", &[GW]))
        .device(sensor("reassigned", &[GW]));
    let cloud = start(seed, &shutdown).await;
    let sync = RegistrySync::new(&config(&cloud.url()), &gateway(), Secret::new(TOKEN)).unwrap();
    let mut rx = sync.subscribe();
    let task = spawn(sync, &shutdown);
    let first = wait_set(&mut rx, "the first set", |s| s.len() == 3).await;

    let changed_at = Instant::now();
    delete_device(&cloud, "deleted").await;
    cloud.apply_device(sensor("reassigned", &["gw2"])).unwrap();
    let after = wait_set(&mut rx, "the removals", |s| names(s) == ["stays"]).await;
    let took = changed_at.elapsed();
    // one interval (+10 % jitter) and the listing itself; generous for a loaded machine
    assert!(took < SHORT * 3 + Duration::from_millis(1500), "took {took:?}");
    assert!(after.generation > first.generation);
    let changes = after.changes_since(Some(&first));
    assert_eq!(changes.removed, ["deleted", "reassigned"]);
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn registry_event_resyncs_long_before_the_interval() {
    let shutdown = CancellationToken::new();
    let seed = base_seed().device(sensor("stays", &[GW])).device(sensor("deleted", &[GW]));
    let cloud = start(seed, &shutdown).await;
    let mut c = config(&cloud.url());
    c.interval = Duration::from_secs(60);
    c.events_url = Some(format!("{}/api/devcloud/v1/events", cloud.url()));
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    let status = sync.status();
    let mut rx = sync.subscribe();
    let task = spawn(sync, &shutdown);
    wait_set(&mut rx, "the first set", |s| s.len() == 2).await;

    let changed_at = Instant::now();
    delete_device(&cloud, "deleted").await;
    let after = wait_set(&mut rx, "the removal", |s| names(s) == ["stays"]).await;
    let took = changed_at.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(after.generation, 2);

    // a burst of changes is served by few listings, not one each
    let syncs_before = status.snapshot().syncs;
    for n in 0..20 {
        cloud.apply_device(sensor(&format!("burst-{n}"), &[GW])).unwrap();
    }
    wait_set(&mut rx, "the burst", |s| s.len() == 21).await;
    let snap = status.snapshot();
    assert!(snap.syncs - syncs_before <= 4, "{} listings for one burst", snap.syncs - syncs_before);
    assert!(snap.events_seen >= 21 && snap.events_error.is_none(), "{snap:?}");
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn resync_handle_lists_at_once() {
    let shutdown = CancellationToken::new();
    let cloud = start(base_seed().device(sensor("first", &[GW])), &shutdown).await;
    let mut c = config(&cloud.url());
    c.interval = Duration::from_secs(60);
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    let handle = sync.resync_handle();
    let mut rx = sync.subscribe();
    let task = spawn(sync, &shutdown);
    wait_set(&mut rx, "the first set", |s| s.len() == 1).await;
    cloud.apply_device(sensor("second", &[GW])).unwrap();
    handle.resync();
    let set = wait_set(&mut rx, "the resync", |s| s.len() == 2).await;
    assert_eq!(names(&set), ["first", "second"]);
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

/// Serves the dev cloud's router on `addr` until the returned token is cancelled; lets a test
/// close the registry's port and open it again with the same state.
async fn serve_front(
    cloud: &DevCloud,
    addr: SocketAddr,
) -> (SocketAddr, CancellationToken, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let router = cloud.router();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await
            .unwrap();
    });
    (bound, stop, task)
}

#[tokio::test]
async fn cloud_down_keeps_the_previous_set_and_recovers() {
    let shutdown = CancellationToken::new();
    let cloud = start(base_seed().device(sensor("s1", &[GW])), &shutdown).await;
    let (addr, stop, front) = serve_front(&cloud, "127.0.0.1:0".parse().unwrap()).await;
    let sync =
        RegistrySync::new(&config(&format!("http://{addr}")), &gateway(), Secret::new(TOKEN))
            .unwrap();
    let status = sync.status();
    let mut rx = sync.subscribe();
    let task = spawn(sync, &shutdown);
    let first = wait_set(&mut rx, "the first set", |s| s.len() == 1).await;

    stop.cancel();
    tokio::time::timeout(PATIENCE, front).await.unwrap().unwrap();
    let failures = status.snapshot().failures;
    wait_status(&status, "a failed listing", |s| {
        s.state() == RegistryState::Failing && s.snapshot().failures > failures
    })
    .await;
    let snap = status.snapshot();
    let error = snap.last_error.clone().unwrap();
    assert!(error.contains(&addr.to_string()), "{error}");
    assert!(snap.last_sync_at_ms.is_some() && snap.devices == 1, "{snap:?}");
    assert!(Arc::ptr_eq(&first, rx.borrow().as_ref().unwrap()), "the previous set stays");

    // a change while the port is closed is published once it opens again
    cloud.apply_device(sensor("s2", &[GW])).unwrap();
    let (_, stop, _front) = serve_front(&cloud, addr).await;
    let set = wait_set(&mut rx, "the set after recovery", |s| s.len() == 2).await;
    assert_eq!((set.generation, names(&set)), (2, vec!["s1", "s2"]));
    wait_status(&status, "synced again", |s| s.state() == RegistryState::Synced).await;
    shutdown.cancel();
    stop.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn bearer_and_basic_tokens_work_and_a_wrong_one_publishes_nothing() {
    let shutdown = CancellationToken::new();
    let cloud = start(base_seed().device(sensor("s1", &[GW])), &shutdown).await;
    let bearer = RegistrySync::new(&config(&cloud.url()), &gateway(), Secret::new(TOKEN)).unwrap();
    assert_eq!(bearer.sync_once().await.unwrap().devices, 1);

    let mut basic = config(&cloud.url());
    basic.user = Some(USER.into());
    let sync = RegistrySync::new(&basic, &gateway(), Secret::new(TOKEN)).unwrap();
    assert_eq!(sync.sync_once().await.unwrap().devices, 1);

    for (user, token) in [(None, "wrong"), (Some("someone-else"), TOKEN), (Some(USER), "wrong")] {
        let mut c = config(&cloud.url());
        c.user = user.map(str::to_owned);
        let sync = RegistrySync::new(&c, &gateway(), Secret::new(token)).unwrap();
        let err = sync.sync_once().await.unwrap_err();
        assert!(matches!(err, CloudError::RegistryStatus { status: 401, .. }), "{err}");
        assert!(sync.subscribe().borrow().is_none(), "nothing published");
        let snap = sync.status().snapshot();
        assert_eq!(snap.state, RegistryState::Failing);
        let error = snap.last_error.unwrap();
        assert!(error.contains("401") && error.contains("registry.token"), "{error}");
        assert!(!error.contains(token) || token == TOKEN, "the token is not shown");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn unknown_application_is_an_error_not_an_empty_set() {
    let shutdown = CancellationToken::new();
    let cloud = start(base_seed().device(sensor("s1", &[GW])), &shutdown).await;
    let other: Identity = format!("{GW}@no-such-app").parse().unwrap();
    let sync = RegistrySync::new(&config(&cloud.url()), &other, Secret::new(TOKEN)).unwrap();
    let err = sync.sync_once().await.unwrap_err();
    assert!(matches!(err, CloudError::RegistryStatus { status: 404, .. }), "{err}");
    assert!(sync.subscribe().borrow().is_none());
    shutdown.cancel();
}

/// A registry that misbehaves on purpose, for what the dev cloud does not do.
#[derive(Clone, Copy, PartialEq)]
enum Quirk {
    /// Deletes the first device right before answering the first request at an offset > 0,
    /// as a concurrent DELETE would.
    DeleteDuringPaging,
    /// Ignores `offset` and always answers the first page.
    IgnoreOffset,
    /// Answers as listed.
    None,
}

struct Fake {
    devices: std::sync::Mutex<Vec<serde_json::Value>>,
    quirk: Quirk,
    requests: std::sync::atomic::AtomicUsize,
}

async fn fake_registry(
    devices: Vec<serde_json::Value>,
    quirk: Quirk,
    shutdown: &CancellationToken,
) -> (String, Arc<Fake>) {
    use axum::{
        Json,
        extract::{Query, State},
        routing::get,
    };
    #[derive(serde::Deserialize)]
    struct Page {
        limit: usize,
        offset: usize,
    }
    async fn list(
        State(fake): State<Arc<Fake>>,
        Query(q): Query<Page>,
    ) -> Json<Vec<serde_json::Value>> {
        let n = fake.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut devices = fake.devices.lock().unwrap();
        if fake.quirk == Quirk::DeleteDuringPaging && q.offset > 0 && n == 1 {
            devices.remove(0);
        }
        let offset = if fake.quirk == Quirk::IgnoreOffset { 0 } else { q.offset };
        Json(devices.iter().skip(offset).take(q.limit).cloned().collect())
    }
    let fake = Arc::new(Fake {
        devices: std::sync::Mutex::new(devices),
        quirk,
        requests: std::sync::atomic::AtomicUsize::new(0),
    });
    let router = axum::Router::new()
        .route("/api/registry/v1alpha1/apps/{app}/devices", get(list))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let until = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await
            .unwrap();
    });
    (url, fake)
}

fn fake_device(name: &str) -> serde_json::Value {
    serde_json::json!({"metadata":{"application":APP,"name":name,"uid":format!("uid-{name}")},
        "spec":{"gatewaySelector":{"matchNames":[GW]}}})
}

#[tokio::test]
async fn a_listing_shifted_by_a_concurrent_delete_starts_over() {
    let shutdown = CancellationToken::new();
    let devices = (0..7).map(|n| fake_device(&format!("d{n}"))).collect();
    let (url, fake) = fake_registry(devices, Quirk::DeleteDuringPaging, &shutdown).await;
    let mut c = config(&url);
    c.page_size = 3;
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    let report = sync.sync_once().await.unwrap();
    // Without the overlap check, d3 would be skipped: d0 went away before offset 2 was read.
    let set = sync.subscribe().borrow().clone().unwrap();
    assert_eq!(names(&set), ["d1", "d2", "d3", "d4", "d5", "d6"]);
    assert_eq!(report.listed, 6);
    // 2 requests of the shifted pass, then 3 of the complete one (offsets 0, 2, 4)
    assert_eq!(fake.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    shutdown.cancel();
}

#[tokio::test]
async fn a_registry_ignoring_offset_is_an_error_not_a_loop() {
    let shutdown = CancellationToken::new();
    let devices = (0..5).map(|n| fake_device(&format!("d{n}"))).collect();
    let (url, _) = fake_registry(devices, Quirk::IgnoreOffset, &shutdown).await;
    let mut c = config(&url);
    c.page_size = 2;
    let sync = RegistrySync::new(&c, &gateway(), Secret::new(TOKEN)).unwrap();
    let err = tokio::time::timeout(PATIENCE, sync.sync_once()).await.unwrap().unwrap_err();
    assert!(matches!(err, CloudError::RegistryShifted { .. }), "{err}");
    assert!(sync.subscribe().borrow().is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn devices_that_do_not_parse_are_skipped_and_counted() {
    let shutdown = CancellationToken::new();
    let devices = vec![
        fake_device("a"),
        serde_json::json!({"metadata":{"application":APP,"name":"b","colour":"red"}}),
        serde_json::json!({"metadata":{"application":"elsewhere","name":"c"},
            "spec":{"gatewaySelector":{"matchNames":[GW]}}}),
        fake_device("d"),
    ];
    let (url, _) = fake_registry(devices, Quirk::None, &shutdown).await;
    let sync = RegistrySync::new(&config(&url), &gateway(), Secret::new(TOKEN)).unwrap();
    let report = sync.sync_once().await.unwrap();
    assert_eq!((report.listed, report.invalid, report.devices), (4, 2, 2));
    assert_eq!(names(&sync.subscribe().borrow().clone().unwrap()), ["a", "d"]);
    assert_eq!(sync.status().snapshot().invalid, 2);
    shutdown.cancel();
}

#[tokio::test]
async fn a_registry_that_needs_no_token_is_asked_without_authorization() {
    let shutdown = CancellationToken::new();
    let cloud = start(base_seed().device(sensor("s1", &[GW])), &shutdown).await;
    // a front that lets the gateway in without credentials (a registry on a trusted network):
    // it records what the gateway sent and adds the cloud's token itself
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let router = cloud.router().layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            let record = Arc::clone(&record);
            async move {
                let sent = req.headers().get("authorization").map(|v| v.as_bytes().to_vec());
                record.lock().unwrap().push(sent);
                let bearer = format!("Bearer {TOKEN}").parse().unwrap();
                req.headers_mut().insert("authorization", bearer);
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let sync = RegistrySync::new(&config(&format!("http://{addr}")), &gateway(), None).unwrap();
    assert_eq!(sync.sync_once().await.unwrap().devices, 1);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty() && seen.iter().all(Option::is_none), "{seen:?}");
    // a user name without a token is a config error
    let mut c = config(&cloud.url());
    c.user = Some(USER.into());
    let err = RegistrySync::new(&c, &gateway(), None).err().unwrap().to_string();
    assert!(err.contains("user") && err.contains("token"), "{err}");
    shutdown.cancel();
}
