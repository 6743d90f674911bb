#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use gw_model::{AppId, CommandName, DeviceId};

use super::*;

fn id(device: &str) -> Identity {
    Identity::new(AppId::new("app").unwrap(), DeviceId::new(device).unwrap())
}

fn command(device: &str, name: &str, ttl: Option<Duration>) -> Command {
    let created = now();
    Command {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        name: CommandName::new(name).unwrap(),
        content_type: None,
        payload: Bytes::from_static(b"{\"on\":true}"),
        created_at: created,
        expires_at: ttl.map(|t| created.saturating_add(t)),
    }
}

fn directory(known: &[&str]) -> Directory {
    let known: HashSet<Identity> = known.iter().map(|d| id(d)).collect();
    Arc::new(move |d: &Identity| known.contains(d).then(|| d.clone()))
}

fn router(dir: &Path, config: &CommandsConfig) -> CommandRouter {
    CommandRouter::open(id("gw1"), config, dir, directory(&["s1", "s2"])).unwrap()
}

fn small() -> CommandsConfig {
    CommandsConfig { max_per_device: 2, max_total: 3, recent: 5, ..CommandsConfig::default() }
}

#[tokio::test]
async fn refuses_unknown_devices_and_too_large_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let config = CommandsConfig { max_payload: gw_model::ByteSize::new(4), ..small() };
    let r = router(dir.path(), &config);
    assert_eq!(r.submit(command("nobody", "set", None)).await, CommandOutcome::UnknownDevice);
    assert_eq!(r.submit(command("s1", "set", None)).await, CommandOutcome::TooLarge);
    let status = r.status();
    assert_eq!(status.counts.unknown_device, 1);
    assert_eq!(status.counts.too_large, 1);
    assert_eq!(status.queued, 0);
    assert_eq!(status.recent[0].outcome, "too-large");
    assert_eq!(status.recent[1].outcome, "unknown-device");
}

#[tokio::test]
async fn queues_for_an_offline_sensor_and_hands_it_out_on_next_contact_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    assert_eq!(r.submit(command("s1", "first", None)).await, CommandOutcome::Queued);
    assert_eq!(r.submit(command("s1", "second", None)).await, CommandOutcome::Queued);
    assert_eq!(r.submit(command("s1", "third", None)).await, CommandOutcome::QueueFull);
    let c = r.next_command(&id("s1"), Duration::ZERO).await.unwrap();
    assert_eq!(c.name, "first");
    // the default ttl was applied
    assert!(c.expires_at.unwrap() > c.created_at.saturating_add(Duration::from_secs(3500)));
    assert_eq!(r.next_command(&id("s1"), Duration::ZERO).await.unwrap().name, "second");
    assert_eq!(r.next_command(&id("s1"), Duration::ZERO).await, None);
    let counts = r.status().counts;
    assert_eq!((counts.queued, counts.delivered, counts.queue_full), (2, 2, 1));
    assert_eq!(r.status().recent[0].via, Some(Via::Contact));
}

#[tokio::test]
async fn a_waiting_request_gets_the_command_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.next_command(&id("s1"), Duration::from_secs(20)).await })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while r.status().waiting_requests == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(r.submit(command("s1", "set", None)).await, CommandOutcome::Delivered);
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(got.unwrap().name, "set");
    assert_eq!(r.status().waiting_requests, 0);
    assert_eq!(r.status().recent[0].via, Some(Via::Wait));
    assert_eq!(r.queued(), 0);
}

#[tokio::test]
async fn a_wait_that_runs_out_returns_none_and_leaves_no_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    assert_eq!(r.next_command(&id("s1"), Duration::from_millis(50)).await, None);
    assert_eq!(r.status().waiting_requests, 0);
    assert_eq!(r.submit(command("s1", "set", None)).await, CommandOutcome::Queued);
}

#[tokio::test]
async fn a_command_handed_to_a_request_that_went_away_is_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let (id_, rx) = r.inner.waiters.register(&id("s1"));
    let waiting = Waiting { router: &r, device: &id("s1"), id: id_, rx };
    assert_eq!(r.submit(command("s1", "set", None)).await, CommandOutcome::Delivered);
    drop(waiting); // the request was dropped before it answered
    tokio::time::timeout(Duration::from_secs(10), async {
        while r.queued() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(r.next_command(&id("s1"), Duration::ZERO).await.unwrap().name, "set");
}

#[tokio::test]
async fn expired_commands_are_not_delivered_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let c = command("s1", "short", Some(Duration::from_millis(100)));
    assert_eq!(r.submit(c).await, CommandOutcome::Queued);
    assert_eq!(
        r.submit(command("s2", "short", Some(Duration::from_millis(100)))).await,
        CommandOutcome::Queued
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    // on contact
    assert_eq!(r.next_command(&id("s1"), Duration::ZERO).await, None);
    assert_eq!(r.status().counts.expired, 1);
    // by the sweeper
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(r.clone().run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while r.status().counts.expired < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(r.queued(), 0);
    stop.cancel();
    sweeper.await.unwrap().unwrap();
    // an already expired command is refused outright
    let mut late = command("s1", "late", None);
    late.expires_at = Some(Timestamp::from_millis(1));
    assert!(matches!(r.submit(late).await, CommandOutcome::Rejected(_)));
}

#[tokio::test]
async fn the_queue_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = router(dir.path(), &small());
        assert_eq!(r.submit(command("s2", "kept", None)).await, CommandOutcome::Queued);
    }
    let r = router(dir.path(), &small());
    assert_eq!(r.status().devices[0].device, "s2");
    assert_eq!(r.next_command(&id("s2"), Duration::ZERO).await.unwrap().name, "kept");
}

#[tokio::test]
async fn gateway_commands_are_carried_out_or_rejected_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let outcome = r.submit(command("gw1", "resync", None)).await;
    assert!(
        matches!(&outcome, CommandOutcome::Rejected(m) if m.contains("registry")),
        "{outcome:?}"
    );
    let outcome = r.submit(command("gw1", "dance", None)).await;
    assert!(matches!(&outcome, CommandOutcome::Rejected(m) if m.contains("dance")), "{outcome:?}");
    let mut bad = command("gw1", "set-log-level", None);
    bad.payload = Bytes::from_static(b"[[[");
    assert!(matches!(r.submit(bad).await, CommandOutcome::Rejected(_)));
    assert_eq!(r.status().counts.rejected, 3);
    assert_eq!(r.queued(), 0, "gateway commands are never queued");
}

#[tokio::test]
async fn resync_reaches_the_registry_sync_and_reboot_runs_the_configured_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("rebooted");
    let config = CommandsConfig {
        reboot_command: vec!["touch".into(), marker.display().to_string()],
        ..small()
    };
    let r = router(dir.path(), &config);
    assert_eq!(r.submit(command("gw1", "reboot", None)).await, CommandOutcome::Delivered);
    assert!(marker.exists());
    let failing = CommandsConfig { reboot_command: vec!["false".into()], ..small() };
    let dir2 = tempfile::tempdir().unwrap();
    let r = router(dir2.path(), &failing);
    let outcome = r.submit(command("gw1", "reboot", None)).await;
    assert!(matches!(&outcome, CommandOutcome::Rejected(m) if m.contains("failed")), "{outcome:?}");
}

#[tokio::test]
async fn reboot_without_a_command_stops_the_router_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let stop = CancellationToken::new();
    let run = tokio::spawn(r.clone().run(stop.clone()));
    assert_eq!(r.submit(command("gw1", "reboot", None)).await, CommandOutcome::Delivered);
    let result = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert!(result.unwrap_err().to_string().contains("reboot"));
}

#[tokio::test]
async fn recent_outcomes_are_bounded_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    for i in 0..8 {
        r.submit(command("nobody", &format!("c{i}"), None)).await;
    }
    let recent = r.status().recent;
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0].command, "c7");
    assert_eq!(recent[4].command, "c3");
}

struct AnyLogin;

impl gw_model::Authenticate for AnyLogin {
    async fn authenticate(
        &self,
        request: &gw_model::AuthRequest,
        _peer: Option<std::net::IpAddr>,
    ) -> gw_model::AuthOutcome {
        gw_model::AuthOutcome::Pass(request.identity())
    }
}

struct Discard;

impl gw_model::Ingest for Discard {
    async fn publish(&self, _t: gw_model::Telemetry) -> Result<(), gw_model::IngestError> {
        Ok(())
    }
}

/// The next command a rumqttc client receives: topic and payload.
async fn next_publish(ev: &mut rumqttc::EventLoop) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev.poll().await.unwrap()
            {
                return (p.topic, p.payload.to_vec());
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mqtt_sessions_get_commands_at_once_or_as_soon_as_they_subscribe_kept_until_puback() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(dir.path(), &small());
    let config: gw_driver_mqtt::MqttConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
    let endpoint = gw_driver_mqtt::MqttEndpoint::bind(
        &config,
        Arc::new(AnyLogin),
        Arc::new(Discard),
        AppId::new("app").unwrap(),
    )
    .await
    .unwrap();
    let addr = endpoint.local_addr();
    r.attach_mqtt(endpoint.commands());
    let stop = CancellationToken::new();
    let server = tokio::spawn(endpoint.run(stop.clone()));
    let sweeper = tokio::spawn(r.clone().run(stop.clone()));

    // away: queued
    assert_eq!(r.submit(command("s1", "while-away", None)).await, CommandOutcome::Queued);
    let mut opts = rumqttc::MqttOptions::new("s1@app", addr.ip().to_string(), addr.port());
    opts.set_credentials("s1@app", "pw");
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 16);
    client.subscribe("command/inbox//#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    // subscribing takes what was queued
    let (topic, payload) = next_publish(&mut ev).await;
    assert_eq!(topic, "command/inbox//while-away");
    assert_eq!(payload, b"{\"on\":true}");
    // subscribed: queued (durably) and published at once
    assert_eq!(r.submit(command("s1", "now", None)).await, CommandOutcome::Queued);
    assert_eq!(next_publish(&mut ev).await.0, "command/inbox//now");
    // delivered only with the sensor's PUBACK (rumqttc sends it as the event loop runs on)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.status().counts.delivered < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", r.status().counts);
        let _ = tokio::time::timeout(Duration::from_millis(20), ev.poll()).await;
    }
    let status = r.status();
    assert_eq!((status.counts.queued, status.counts.delivered), (2, 2));
    assert_eq!(status.queued, 0);
    assert!(status.recent.iter().take(2).all(|o| o.via == Some(Via::Mqtt)), "{:?}", status.recent);

    stop.cancel();
    server.await.unwrap();
    sweeper.await.unwrap().unwrap();
}
