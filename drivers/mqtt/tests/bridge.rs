//! The legacy broker bridge against a real mosquitto as the site broker: `mosquitto_pub`
//! publishes as the site's sensors do, `mosquitto_sub` receives the commands the bridge
//! publishes. The gateway side is an in-test `Ingest` (records in memory; can refuse with
//! "quota exceeded" or hold messages back) and an in-test list of known devices.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::{Mosquitto, have_mosquitto};
use gw_driver_mqtt::{
    Bridge, BridgeCommands, BridgeConfig, BridgePush, BridgeStatus,
    bridge::{DevicePolicy, MappingConfig},
};
use gw_model::{
    AppId, Channel, CommandName, DeviceId, Identity, Ingest, IngestError, KnownDevices, Telemetry,
};
use tokio::{process::Command, sync::watch};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

struct TestIngest {
    records: Mutex<Vec<Telemetry>>,
    count: watch::Sender<usize>,
    calls: watch::Sender<usize>,
    quota_exceeded: AtomicBool,
    /// Every publish hangs (a store that never commits).
    hang: AtomicBool,
}

impl TestIngest {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            records: Mutex::default(),
            count: watch::channel(0).0,
            calls: watch::channel(0).0,
            quota_exceeded: AtomicBool::new(false),
            hang: AtomicBool::new(false),
        })
    }

    async fn wait_for(&self, n: usize) -> Vec<Telemetry> {
        let mut rx = self.count.subscribe();
        let waited = tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= n)).await;
        let records = self.records.lock().unwrap().clone();
        assert!(waited.is_ok(), "{n} messages expected, got {records:?}");
        records
    }

    async fn wait_for_calls(&self, n: usize) {
        let mut rx = self.calls.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= n)).await.unwrap().unwrap();
    }
}

impl Ingest for TestIngest {
    async fn publish(&self, telemetry: Telemetry) -> Result<(), IngestError> {
        self.calls.send_modify(|c| *c += 1);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.quota_exceeded.load(Ordering::SeqCst) {
            return Err(IngestError::QuotaExceeded("test outbox full".into()));
        }
        self.records.lock().unwrap().push(telemetry);
        self.count.send_modify(|c| *c += 1);
        Ok(())
    }
}

/// Devices the gateway knows: name → aliases.
struct Known(Vec<(&'static str, &'static str)>);

impl KnownDevices for Known {
    fn resolve(&self, app: &AppId, device: &str) -> Option<Identity> {
        self.0
            .iter()
            .find(|(name, alias)| *name == device || *alias == device)
            .map(|(name, _)| Identity::new(app.clone(), DeviceId::new(*name).unwrap()))
    }
}

fn app() -> AppId {
    AppId::new("my-app").unwrap()
}

fn config(site: &Mosquitto, client_id: &str) -> BridgeConfig {
    let mut sensors =
        MappingConfig::new("sensors", "sensors/{device}/{channel}", DevicePolicy::Known);
    sensors.commands = Some("sensors/{device}/commands/{command}".into());
    let mut plant = MappingConfig::new("plant", "plant1/+/{device}/telemetry", DevicePolicy::Any);
    plant.channel = Some(Channel::new("telemetry").unwrap());
    let mut c = BridgeConfig::new("site", &site.url(), client_id, sensors);
    c.mapping.push(plant);
    c.reconnect_max = Duration::from_secs(1);
    c
}

struct Running {
    commands: BridgeCommands,
    status: BridgeStatus,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: &BridgeConfig, ingest: Arc<TestIngest>) -> Self {
        let known = Arc::new(Known(vec![("s7", "old-s7")]));
        let bridge = Bridge::new(config, None, &app(), known, ingest).unwrap();
        let (commands, status) = (bridge.commands(), bridge.status());
        let token = CancellationToken::new();
        let task = tokio::spawn(bridge.run(token.clone()));
        Self { commands, status, token, task }
    }

    async fn wait_subscribed(&self) {
        tokio::time::timeout(DEADLINE, async {
            while !self.status.snapshot().subscribed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("bridge never subscribed: {:?}", self.status.snapshot()));
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.unwrap().unwrap();
    }
}

async fn mosquitto_pub(site: &Mosquitto, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &site.addr.port().to_string()])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn site_messages_reach_the_ingest_as_the_topics_device() {
    if !have_mosquitto("site_messages_reach_the_ingest_as_the_topics_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = Mosquitto::start(dir.path(), "allow_anonymous true");
    let ingest = TestIngest::new();
    let bridge = Running::start(&config(&site, "gw1-bridge"), ingest.clone());
    bridge.wait_subscribed().await;

    mosquitto_pub(&site, "sensors/s7/temp", "{\"temp\":21.5}").await;
    mosquitto_pub(&site, "sensors/old-s7/humidity", "40").await; // an alias
    mosquitto_pub(&site, "sensors/stranger/temp", "1").await; // not a known device
    mosquitto_pub(&site, "plant1/hall3/p9/telemetry", "raw").await;
    let records = ingest.wait_for(3).await;
    let seen: Vec<_> =
        records.iter().map(|t| (t.app.as_str(), t.device.as_str(), t.channel.as_str())).collect();
    assert!(seen.contains(&("my-app", "s7", "temp")), "{seen:?}");
    assert!(seen.contains(&("my-app", "s7", "humidity")), "{seen:?}");
    assert!(seen.contains(&("my-app", "p9", "telemetry")), "{seen:?}");
    let temp = records.iter().find(|t| t.channel == "temp").unwrap();
    assert_eq!(temp.payload, Bytes::from_static(b"{\"temp\":21.5}"));
    assert_eq!(temp.content_type.as_deref(), Some("application/json"));

    tokio::time::timeout(DEADLINE, async {
        while bridge.status.snapshot().dropped_unknown_device < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let s = bridge.status.snapshot();
    assert_eq!(s.messages, 3, "{s:?}");
    assert!(s.connected && s.last_error.is_none(), "{s:?}");
    assert_eq!(s.mappings.len(), 2);
    assert_eq!(s.mappings[0].subscription, "sensors/+/+");
    assert_eq!(s.mappings[1].channel, "telemetry");
    assert_eq!(ingest.records.lock().unwrap().len(), 3, "the stranger was not stored");
    bridge.stop().await;
}

#[tokio::test]
async fn commands_are_published_on_the_mappings_template() {
    if !have_mosquitto("commands_are_published_on_the_mappings_template") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = Mosquitto::start(dir.path(), "allow_anonymous true\nlog_type all");
    let ingest = TestIngest::new();
    let bridge = Running::start(&config(&site, "gw1-bridge"), ingest.clone());
    bridge.wait_subscribed().await;
    let s7 = Identity::new(app(), DeviceId::new("s7").unwrap());
    let cmd = CommandName::new("set-interval").unwrap();
    // not bridged until it has published through a mapping with a command template
    assert!(!bridge.commands.is_bridged(&s7));
    assert_eq!(bridge.commands.push(&s7, &cmd, Bytes::new()).await, BridgePush::NotBridged);
    mosquitto_pub(&site, "sensors/s7/temp", "20").await;
    ingest.wait_for(1).await;
    assert!(bridge.commands.is_bridged(&s7));
    // p9 comes through the plant mapping, which has no command template
    mosquitto_pub(&site, "plant1/a/p9/telemetry", "1").await;
    ingest.wait_for(2).await;
    let p9 = Identity::new(app(), DeviceId::new("p9").unwrap());
    assert_eq!(bridge.commands.push(&p9, &cmd, Bytes::new()).await, BridgePush::NotBridged);

    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &site.addr.port().to_string()])
        .args(["-q", "1", "-t", "sensors/+/commands/#", "-v", "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the subscriber is ready once the site broker logged its subscription
    tokio::time::timeout(DEADLINE, async {
        while !site.log().contains("sensors/+/commands/#") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let pushed = bridge.commands.push(&s7, &cmd, Bytes::from_static(b"{\"seconds\":5}")).await;
    assert_eq!(pushed, BridgePush::Published { topic: "sensors/s7/commands/set-interval".into() });
    let out = tokio::time::timeout(DEADLINE, async {
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        sub.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        out
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "sensors/s7/commands/set-interval {\"seconds\":5}");
    assert_eq!(bridge.status.snapshot().commands_published, 1);

    // with the site broker gone, a push says so instead of pretending
    drop(site);
    tokio::time::timeout(DEADLINE, async {
        while bridge.status.snapshot().connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(matches!(
        bridge.commands.push(&s7, &cmd, Bytes::new()).await,
        BridgePush::Unavailable(_)
    ));
    let s = bridge.status.snapshot();
    assert!(s.reconnects >= 1 && s.last_error.is_some(), "{s:?}");
    bridge.stop().await;
}

/// A message is acknowledged to the site broker only once stored: a bridge that stops while
/// the store hangs leaves it unacknowledged, and the next bridge with the same client id gets
/// it again. A store refused for a passing reason is retried until it succeeds.
#[tokio::test]
async fn nothing_the_site_broker_delivered_is_lost() {
    if !have_mosquitto("nothing_the_site_broker_delivered_is_lost") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = Mosquitto::start(dir.path(), "allow_anonymous true");
    let config = config(&site, "gw1-durable");

    let hanging = TestIngest::new();
    hanging.hang.store(true, Ordering::SeqCst);
    let first = Running::start(&config, hanging.clone());
    first.wait_subscribed().await;
    mosquitto_pub(&site, "sensors/s7/temp", "first").await;
    hanging.wait_for_calls(1).await;
    first.stop().await; // never committed, never acknowledged

    let ingest = TestIngest::new();
    ingest.quota_exceeded.store(true, Ordering::SeqCst);
    let second = Running::start(&config, ingest.clone());
    ingest.wait_for_calls(2).await; // delivered again, refused twice
    assert!(ingest.records.lock().unwrap().is_empty());
    assert!(second.status.snapshot().store_retries >= 2);
    ingest.quota_exceeded.store(false, Ordering::SeqCst);
    let records = ingest.wait_for(1).await;
    assert_eq!(records[0].payload, Bytes::from_static(b"first"));
    assert_eq!(records[0].device, "s7");
    second.stop().await;

    // acknowledged now: a third bridge of the same session does not get it again
    let third_ingest = TestIngest::new();
    let third = Running::start(&config, third_ingest.clone());
    third.wait_subscribed().await;
    mosquitto_pub(&site, "sensors/s7/temp", "second").await;
    let records = third_ingest.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records_after = third_ingest.records.lock().unwrap().clone();
    assert_eq!(records_after.len(), 1, "{records_after:?}");
    assert_eq!(records[0].payload, Bytes::from_static(b"second"));
    third.stop().await;
}

#[tokio::test]
async fn bad_templates_are_refused_naming_the_key() {
    let mut c = BridgeConfig::new(
        "site",
        "mqtt://127.0.0.1:1",
        "id",
        MappingConfig::new("m", "sensors/+/{channel}", DevicePolicy::Any),
    );
    let known = Arc::new(Known(vec![]));
    let e = Bridge::new(&c, None, &app(), known.clone(), TestIngest::new()).err().unwrap();
    assert_eq!(
        e.to_string(),
        "invalid [[bridge]] \"site\": mapping[0].topic: {device} is required"
    );
    c.mapping[0].topic = "sensors/{device}/{channel}".into();
    c.mapping[0].commands = Some("cmd/#".into());
    let e = Bridge::new(&c, None, &app(), known, TestIngest::new()).err().unwrap();
    assert!(e.to_string().contains("mapping[0].commands"), "{e}");
}

/// Runs openssl in `dir`; false (after a skip line) when it is missing outside CI.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl").current_dir(dir).args(args).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "openssl is required under CI");
            eprintln!("SKIP: openssl not installed");
            false
        }
    }
}

/// mqtts://: the bridge verifies the site broker's certificate against `ca_file`.
#[tokio::test]
async fn bridges_a_site_broker_over_tls() {
    if !have_mosquitto("bridges_a_site_broker_over_tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]]
        .concat();
    if !openssl(d, &[&ca[..], &["-subj", "/CN=site-ca"]].concat()) {
        return;
    }
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let csr = [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr"]].concat();
    assert!(openssl(d, &[&csr[..], &["-subj", "/CN=127.0.0.1"]].concat()));
    assert!(openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]
    ));
    let p = |f: &str| d.join(f).display().to_string();
    let site = Mosquitto::start(
        d,
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}",
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    );
    let mut config = config(&site, "gw1-tls");
    config.url = format!("mqtts://{}", site.addr);
    config.ca_file = Some(d.join("ca.pem"));
    let ingest = TestIngest::new();
    let bridge = Running::start(&config, ingest.clone());
    bridge.wait_subscribed().await;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &site.addr.port().to_string(), "--cafile", &p("ca.pem")])
        .args(["-q", "1", "-t", "sensors/s7/temp", "-m", "over tls"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    let records = ingest.wait_for(1).await;
    assert_eq!((records[0].device.as_str(), &records[0].payload[..]), ("s7", &b"over tls"[..]));
    bridge.stop().await;

    // a bridge that trusts another CA does not get in, and says why in its status
    let mut wrong = config.clone();
    let other =
        [&["req", "-x509"][..], &ec, &["-keyout", "o.key", "-out", "other.pem", "-days", "2"]]
            .concat();
    assert!(openssl(d, &[&other[..], &["-subj", "/CN=other-ca"]].concat()));
    wrong.ca_file = Some(d.join("other.pem"));
    let refused = Running::start(&wrong, TestIngest::new());
    tokio::time::timeout(DEADLINE, async {
        while refused.status.snapshot().last_error.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let s = refused.status.snapshot();
    assert!(!s.connected, "{s:?}");
    refused.stop().await;
}
