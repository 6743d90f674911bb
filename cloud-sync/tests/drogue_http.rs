//! The Drogue HTTP uplink against the dev cloud: a real outbox in a temp dir, the real uplink
//! loop, and the dev cloud's device endpoint (contracts/drogue-cloud.md §1), checked through
//! the events the cloud logged, the requests it answered, the outbox stats and the uplink
//! status.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
};
use bytes::Bytes;
use gw_cloud_sync::{CloudConfig, CloudError, CloudKind, Uplink, UplinkState, UplinkStatus};
use gw_devcloud::{CloudEvent, DevCloud, DevCloudError, Seed, events::TYPE_EVENT, seed};
use gw_model::{AppId, Channel, DeviceId, Identity, Secret, Telemetry, Timestamp};
use gw_store::{Outbox, StoreConfig, SyncPolicy};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const GW: &str = "gw1";
const GW_PASSWORD: &str = "gw-secret";
/// Longest wait for anything the uplink should do; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(15);
const PARKED_RETRY: Duration = Duration::from_millis(300);

/// What one sensor sends: where, and how its records are labelled.
struct Stream {
    device: &'static str,
    channel: &'static str,
    suffix: Option<&'static str>,
    content_type: &'static str,
    schema: Option<&'static str>,
}

impl Stream {
    fn json(device: &'static str) -> Self {
        Self {
            device,
            channel: "telemetry",
            suffix: None,
            content_type: "application/json",
            schema: None,
        }
    }

    fn body(&self, n: u64) -> Value {
        json!({ "device": self.device, "n": n })
    }

    /// The `n`-th record of this sensor; `n` is in the JSON payload.
    fn record(&self, n: u64) -> Telemetry {
        self.record_with(n, Bytes::from(self.body(n).to_string()))
    }

    fn record_with(&self, n: u64, payload: Bytes) -> Telemetry {
        Telemetry {
            app: AppId::new(APP).unwrap(),
            device: DeviceId::new(self.device).unwrap(),
            channel: Channel::new(self.channel).unwrap(),
            suffix: self.suffix.map(str::to_owned),
            content_type: Some(self.content_type.to_owned()),
            data_schema: self.schema.map(str::to_owned),
            received_at: Timestamp::from_millis(1_700_000_000_000 + n),
            payload,
            command_wait: None,
        }
    }
}

/// One request the cloud answered: the `as=` device and the status.
#[derive(Clone, Debug)]
struct Seen {
    device: String,
    status: u16,
}

#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<Seen>>>);

impl Requests {
    fn count(&self, device: &str, status: Option<u16>) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter().filter(|s| s.device == device && status.is_none_or(|c| s.status == c)).count()
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn record_request(State(log): State<Requests>, req: Request, next: Next) -> Response {
    let device = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("as="))
        .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    let response = next.run(req).await;
    log.0.lock().unwrap().push(Seen { device, status: response.status().as_u16() });
    response
}

/// The dev cloud, served through a front that records every request it answers.
struct Cloud {
    dev: DevCloud,
    url: String,
    requests: Requests,
    stop: CancellationToken,
}

impl Cloud {
    async fn start(seed: Seed) -> Cloud {
        let stop = CancellationToken::new();
        let dev = DevCloud::start(localhost(0), seed, stop.clone()).await.unwrap();
        let requests = Requests::default();
        let app =
            dev.router().layer(middleware::from_fn_with_state(requests.clone(), record_request));
        let listener = tokio::net::TcpListener::bind(localhost(0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await.unwrap();
        });
        Cloud { dev, url, requests, stop }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The gateway and the given sensors, each listing the gateway in `matchNames`.
fn seed_with(sensors: &[&str]) -> Seed {
    let mut seed = Seed::new().application(APP).password_device(APP, GW, GW_PASSWORD);
    for s in sensors {
        seed = seed.sensor(APP, s, None, &[GW]);
    }
    seed
}

fn open_outbox(tmp: &TempDir) -> Outbox {
    let config = StoreConfig {
        sync: SyncPolicy::Interval,
        sync_interval: Duration::from_millis(20),
        ..StoreConfig::default()
    };
    Outbox::open(&tmp.path().join("outbox"), &config).unwrap()
}

/// Appends `per_device` records of each stream, interleaved: 0 of each, then 1 of each, ...
async fn append_interleaved(outbox: &Outbox, streams: &[Stream], per_device: u64) {
    for n in 0..per_device {
        for s in streams {
            outbox.append(&s.record(n)).await.unwrap();
        }
    }
}

/// A running uplink.
struct Running {
    status: Arc<UplinkStatus>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), CloudError>>,
}

impl Running {
    fn start(outbox: &Outbox, url: &str, password: &str) -> Running {
        let mut config = CloudConfig::new(CloudKind::DrogueHttp, url, Secret::new(password));
        config.timeout = Duration::from_secs(5);
        config.retry_min = Duration::from_millis(10);
        config.retry_max = Duration::from_millis(150);
        config.parked_retry = PARKED_RETRY;
        let gateway = Identity::new(AppId::new(APP).unwrap(), DeviceId::new(GW).unwrap());
        let uplink = Uplink::new(&config, &gateway, Secret::new(password)).unwrap();
        let status = uplink.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(uplink.run(outbox.reader(), stop.clone()));
        Running { status, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(PATIENCE, self.task).await;
        ended.expect("the uplink stops when cancelled").unwrap().unwrap();
    }
}

/// Polls `ready` until it holds; fails the test after [`PATIENCE`].
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the cloud logged `n` events in all (telemetry and registry changes); returns
/// the telemetry events.
async fn telemetry_after(cloud: &DevCloud, n: usize) -> Vec<CloudEvent> {
    let events = cloud.wait_for_events(n, PATIENCE).await;
    events.into_iter().filter(|e| e.kind == TYPE_EVENT).collect()
}

fn telemetry_of(cloud: &DevCloud) -> Vec<CloudEvent> {
    cloud.events().into_iter().filter(|e| e.kind == TYPE_EVENT).collect()
}

/// The `n`s one device's events carried, in arrival order.
fn sequence(events: &[CloudEvent], device: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.device.as_deref() == Some(device))
        .map(|e| e.data.as_ref().and_then(|d| d["n"].as_u64()).expect("a JSON payload with n"))
        .collect()
}

fn check_event(e: &CloudEvent, s: &Stream) {
    assert_eq!(e.application, APP);
    assert_eq!(e.device.as_deref(), Some(s.device), "{e:?}");
    assert_eq!(e.sender.as_deref(), Some(GW), "sent by the gateway: {e:?}");
    assert_eq!(e.subject, s.channel, "{e:?}");
    assert_eq!(e.datacontenttype.as_deref(), Some(s.content_type), "{e:?}");
    assert_eq!(e.dataschema.as_deref(), s.schema, "{e:?}");
}

fn queued(outbox: &Outbox) -> u64 {
    outbox.stats().records_queued()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_exactly_once_in_device_order_as_the_sensor() {
    const PER_DEVICE: u64 = 700;
    let streams = [
        Stream {
            device: "sensor-a",
            channel: "temperature",
            suffix: None,
            content_type: "application/json",
            schema: Some("urn:acme:temperature:1"),
        },
        Stream {
            device: "sensor b",
            channel: "hum.v1",
            suffix: Some("room/3"),
            content_type: "application/json; charset=utf-8",
            schema: None,
        },
        Stream {
            device: "sensör-c",
            channel: "state:x~y",
            suffix: None,
            content_type: "text/json",
            schema: Some("https://schemas.example.com/state?v=2&lang=en+us"),
        },
    ];
    let names: Vec<&str> = streams.iter().map(|s| s.device).collect();
    let cloud = Cloud::start(seed_with(&names)).await;
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    let started = Instant::now();
    let uplink = Running::start(&outbox, &cloud.url, GW_PASSWORD);
    append_interleaved(&outbox, &streams, PER_DEVICE).await;

    let total = streams.len() * PER_DEVICE as usize;
    let events = telemetry_after(&cloud.dev, total).await;
    eventually("the outbox is drained", || queued(&outbox) == 0).await;
    let elapsed = started.elapsed();

    let events_now = telemetry_of(&cloud.dev);
    assert_eq!(events_now.len(), total, "one event per record, no more");
    let expected: Vec<u64> = (0..PER_DEVICE).collect();
    for s in &streams {
        assert_eq!(
            sequence(&events, s.device),
            expected,
            "{}: each record once, in order",
            s.device
        );
    }
    for e in &events {
        let s = streams.iter().find(|s| e.device.as_deref() == Some(s.device)).unwrap();
        check_event(e, s);
        let n = e.data.as_ref().unwrap()["n"].as_u64().unwrap();
        assert_eq!(e.data.as_ref(), Some(&s.body(n)), "payload passed through");
    }
    assert_eq!(cloud.requests.total(), total, "one request per record");
    let stats = outbox.stats();
    assert_eq!((stats.records_queued(), stats.in_flight()), (0, 0), "{stats:?}");
    assert!(stats.devices().is_empty(), "{stats:?}");
    let status = uplink.status.snapshot();
    assert_eq!(status.sent, total as u64, "{status:?}");
    assert_eq!((status.failures, status.dead_letters, status.parked_events), (0, 0, 0));
    assert_eq!(status.state, UplinkState::Connected);
    eprintln!("{total} records delivered in {elapsed:?}");
    uplink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_device_is_parked_and_never_stalls_the_others() {
    const PER_DEVICE: u64 = 100;
    let refused = "sensor-refused";
    let streams = [Stream::json("sensor-a"), Stream::json(refused), Stream::json("sensor-b")];
    // the refused sensor lists another gateway only: the cloud answers 403 for it
    let seed = seed_with(&["sensor-a", "sensor-b"]).sensor(APP, refused, None, &["gw2"]);
    let cloud = Cloud::start(seed).await;
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    let started = Instant::now();
    let uplink = Running::start(&outbox, &cloud.url, GW_PASSWORD);
    append_interleaved(&outbox, &streams, PER_DEVICE).await;

    let events = telemetry_after(&cloud.dev, 2 * PER_DEVICE as usize).await;
    let expected: Vec<u64> = (0..PER_DEVICE).collect();
    assert_eq!(sequence(&events, "sensor-a"), expected);
    assert_eq!(sequence(&events, "sensor-b"), expected);
    assert!(sequence(&events, refused).is_empty());

    let refused_at = format!("{refused}@{APP}");
    eventually("the refused sensor is parked in the outbox and the status", || {
        let stats = outbox.stats();
        let parked: Vec<_> = stats.parked().map(|d| (d.device().as_str(), d.queued())).collect();
        let status = uplink.status.snapshot();
        // the status counts a record just after the outbox has its ack: wait for both
        parked == [(refused, PER_DEVICE)]
            && stats.records_queued() == PER_DEVICE
            && status.parked_devices == [refused_at.clone()]
            && status.sent == 2 * PER_DEVICE
    })
    .await;
    let status = uplink.status.snapshot();
    assert!(status.parked_events >= 1, "{status:?}");
    assert!(status.last_error.as_deref().unwrap_or("").contains("403"), "{status:?}");
    assert_eq!((status.sent, status.dead_letters), (2 * PER_DEVICE, 0), "{status:?}");
    // parked, not hammered: one refused request at first, then at most one per release
    let refusals = cloud.requests.count(refused, Some(403));
    let releases = (started.elapsed().as_millis() / PARKED_RETRY.as_millis()) as usize;
    assert!(
        refusals >= 1 && refusals <= releases + 1,
        "{refusals} refusals in {releases} releases"
    );
    assert_eq!(cloud.requests.count(refused, None), refusals, "nothing of it got through");

    // the cloud now lets the gateway act for it: after the next release, everything arrives
    cloud.dev.apply_device(seed::device_with(APP, refused, None, &[GW])).unwrap();
    let events =
        telemetry_after(&cloud.dev, 2 * PER_DEVICE as usize + 1 + PER_DEVICE as usize).await;
    assert_eq!(sequence(&events, refused), expected, "the parked records, once each, in order");
    for e in events.iter().filter(|e| e.device.as_deref() == Some(refused)) {
        check_event(e, &streams[1]);
    }
    eventually("the outbox is drained", || queued(&outbox) == 0).await;
    assert_eq!(telemetry_of(&cloud.dev).len(), 3 * PER_DEVICE as usize);
    assert_eq!(outbox.stats().parked().count(), 0);
    eventually("the status no longer lists it", || {
        uplink.status.snapshot().parked_devices.is_empty()
    })
    .await;
    uplink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_payload_is_dead_lettered_not_retried() {
    const RECORDS: u64 = 12;
    const BAD: u64 = 5;
    let s = Stream::json("sensor-a");
    let cloud = Cloud::start(seed_with(&[s.device])).await;
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    for n in 0..RECORDS {
        let record = if n == BAD {
            s.record_with(n, Bytes::from_static(b"{\"n\": 5, \"device\": "))
        } else {
            s.record(n)
        };
        outbox.append(&record).await.unwrap();
    }
    let uplink = Running::start(&outbox, &cloud.url, GW_PASSWORD);

    let events = telemetry_after(&cloud.dev, RECORDS as usize - 1).await;
    eventually("the outbox is drained", || queued(&outbox) == 0).await;
    let expected: Vec<u64> = (0..RECORDS).filter(|n| *n != BAD).collect();
    assert_eq!(sequence(&events, s.device), expected, "the records after it still arrive");
    assert_eq!(telemetry_of(&cloud.dev).len(), expected.len());
    assert_eq!(cloud.requests.count(s.device, Some(406)), 1, "the bad record is sent once");
    assert_eq!(cloud.requests.total(), RECORDS as usize, "nothing is sent twice");
    let status = uplink.status.snapshot();
    assert_eq!(status.dead_letters, 1, "{status:?}");
    assert_eq!((status.sent, status.failures, status.parked_events), (RECORDS - 1, 0, 0));
    assert!(status.last_error.as_deref().unwrap_or("").contains("406"), "{status:?}");
    let stats = outbox.stats();
    assert_eq!((stats.records_queued(), stats.in_flight()), (0, 0), "{stats:?}");
    uplink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_down_then_back_drains_everything_in_order() {
    const PER_DEVICE: u64 = 60;
    let streams = [Stream::json("sensor-a"), Stream::json("sensor-b"), Stream::json("sensor-c")];
    let total = streams.len() as u64 * PER_DEVICE;
    let port = std::net::TcpListener::bind(localhost(0)).unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    let uplink = Running::start(&outbox, &url, GW_PASSWORD);
    append_interleaved(&outbox, &streams, PER_DEVICE).await;

    eventually("the uplink has failed a few times", || uplink.status.snapshot().failures >= 3)
        .await;
    let status = uplink.status.snapshot();
    assert_eq!(status.state, UplinkState::Retrying, "{status:?}");
    assert_eq!((status.sent, status.dead_letters, status.parked_events), (0, 0, 0));
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(queued(&outbox), total, "nothing is dropped while the cloud is down");

    let stop = CancellationToken::new();
    let _stop_cloud = stop.clone().drop_guard();
    let names: Vec<&str> = streams.iter().map(|s| s.device).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let cloud = loop {
        match DevCloud::start(localhost(port), seed_with(&names), stop.clone()).await {
            Ok(cloud) => break cloud,
            Err(e @ DevCloudError::Bind { .. }) if Instant::now() < deadline => {
                eprintln!("rebinding {port}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot start the dev cloud on {port}: {e}"),
        }
    };

    let events = telemetry_after(&cloud, total as usize).await;
    eventually("the outbox is drained", || queued(&outbox) == 0).await;
    let expected: Vec<u64> = (0..PER_DEVICE).collect();
    for s in &streams {
        assert_eq!(sequence(&events, s.device), expected, "{}", s.device);
    }
    assert_eq!(telemetry_of(&cloud).len(), total as usize, "each record once");
    let status = uplink.status.snapshot();
    assert_eq!(status.state, UplinkState::Connected, "{status:?}");
    assert_eq!(status.sent, total, "{status:?}");
    uplink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_gateway_password_is_reported_as_such_and_parks_no_device() {
    const PER_DEVICE: u64 = 20;
    let streams = [Stream::json("sensor-a"), Stream::json("sensor-b"), Stream::json("sensor-c")];
    let total = streams.len() as u64 * PER_DEVICE;
    let names: Vec<&str> = streams.iter().map(|s| s.device).collect();
    let cloud = Cloud::start(seed_with(&names)).await;
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    append_interleaved(&outbox, &streams, PER_DEVICE).await;
    let uplink = Running::start(&outbox, &cloud.url, "not-the-password");

    // Drogue's 403 is the same for both causes: the uplink checks its own login and says
    // which it is, instead of parking one sensor after the other
    eventually("the uplink reports the gateway refused", || {
        uplink.status.snapshot().state == UplinkState::GatewayRefused
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = uplink.status.snapshot();
    assert_eq!(status.state, UplinkState::GatewayRefused, "{status:?}");
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("gateway's own credentials"),
        "{status:?}"
    );
    assert!(status.parked_devices.is_empty(), "no device is to blame: {status:?}");
    assert_eq!(outbox.stats().parked().count(), 0);
    assert_eq!((status.sent, status.dead_letters, status.parked_events), (0, 0, 0), "{status:?}");
    assert!(telemetry_of(&cloud.dev).is_empty());
    let requests = cloud.requests.0.lock().unwrap().clone();
    assert!(requests.iter().all(|s| s.status == 403), "{requests:?}");
    assert_eq!(queued(&outbox), total, "nothing lost");
    uplink.stop().await;

    // nothing lost for real: after a restart with the right password, all of it arrives
    outbox.close().unwrap();
    let outbox = open_outbox(&tmp);
    assert_eq!(queued(&outbox), total, "still queued after a restart");
    let uplink = Running::start(&outbox, &cloud.url, GW_PASSWORD);
    let events = telemetry_after(&cloud.dev, total as usize).await;
    let expected: Vec<u64> = (0..PER_DEVICE).collect();
    for s in &streams {
        assert_eq!(sequence(&events, s.device), expected, "{}", s.device);
    }
    eventually("the outbox is drained", || queued(&outbox) == 0).await;
    uplink.stop().await;
}

/// The volume check: 100,000 messages from 50 sensors reach the dev cloud exactly once, in
/// per-device order, each as its sensor and sent by the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_arrive_exactly_once_in_device_order() {
    const SENSORS: usize = 50;
    const PER_DEVICE: u64 = 2_000;
    let names: Vec<&'static str> =
        (0..SENSORS).map(|i| &*Box::leak(format!("sensor-{i}").into_boxed_str())).collect();
    let streams: Vec<Stream> = names.iter().map(|n| Stream::json(n)).collect();
    let cloud = Cloud::start(seed_with(&names)).await;
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&tmp);
    append_interleaved(&outbox, &streams, PER_DEVICE).await;
    let started = Instant::now();
    let uplink = Running::start(&outbox, &cloud.url, GW_PASSWORD);
    let total = SENSORS * PER_DEVICE as usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while queued(&outbox) > 0 {
        assert!(Instant::now() < deadline, "{} records left", queued(&outbox));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let events = telemetry_of(&cloud.dev);
    assert_eq!(events.len(), total, "one event per record, no more");
    let expected: Vec<u64> = (0..PER_DEVICE).collect();
    for s in &streams {
        assert_eq!(sequence(&events, s.device), expected, "{}: once each, in order", s.device);
    }
    for e in &events {
        assert_eq!(e.sender.as_deref(), Some(GW), "{e:?}");
    }
    assert_eq!(cloud.requests.total(), total, "one request per record");
    eprintln!(
        "{total} records through the HTTP uplink in {elapsed:?} ({:.0}/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    uplink.stop().await;
}
