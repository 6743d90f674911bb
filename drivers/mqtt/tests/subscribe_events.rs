//! The endpoint announces a session's first command subscription
//! ([`Commands::subscriptions`]), so that commands held for a sensor while it was away can be
//! pushed the moment it subscribes. Tested with rumqttc as the sensor.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use gw_driver_mqtt::{Delivery, MqttConfig, MqttEndpoint};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, CommandName, DeviceId, Identity, Ingest,
    IngestError, Telemetry,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::broadcast::error::TryRecvError;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

struct AnyLogin;

impl Authenticate for AnyLogin {
    async fn authenticate(&self, request: &AuthRequest, _peer: Option<IpAddr>) -> AuthOutcome {
        AuthOutcome::Pass(request.identity())
    }
}

struct Discard;

impl Ingest for Discard {
    async fn publish(&self, _telemetry: Telemetry) -> Result<(), IngestError> {
        Ok(())
    }
}

fn sensor() -> Identity {
    Identity::new(AppId::new("app").unwrap(), DeviceId::new("s1").unwrap())
}

fn client(addr: std::net::SocketAddr) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new("s1@app", addr.ip().to_string(), addr.port());
    opts.set_credentials("s1@app", "pw");
    opts.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(opts, 16)
}

/// Polls the client until `want` matches an incoming packet.
async fn until(ev: &mut EventLoop, want: impl Fn(&Packet) -> bool) -> Packet {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(p) = ev.poll().await.unwrap()
                && want(&p)
            {
                return p;
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn announces_the_first_command_subscription_of_each_session() {
    let config: MqttConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
    let endpoint = MqttEndpoint::bind(
        &config,
        Arc::new(AnyLogin),
        Arc::new(Discard),
        AppId::new("app").unwrap(),
    )
    .await
    .unwrap();
    let addr = endpoint.local_addr();
    let commands = endpoint.commands();
    let mut events = commands.subscriptions();
    let stop = CancellationToken::new();
    let server = tokio::spawn(endpoint.run(stop.clone()));

    let (c, mut ev) = client(addr);
    until(&mut ev, |p| matches!(p, Packet::ConnAck(_))).await;
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty, "no event before SUBSCRIBE");

    c.subscribe("command/inbox//#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |p| matches!(p, Packet::SubAck(_))).await;
    let device = tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap();
    assert_eq!(device, sensor());
    // the event means the session takes commands now: what the router does with it
    let name = CommandName::new("set").unwrap();
    assert_eq!(commands.push(&sensor(), name, Bytes::from_static(b"on")), Delivery::Queued);
    let Packet::Publish(p) = until(&mut ev, |p| matches!(p, Packet::Publish(_))).await else {
        unreachable!()
    };
    assert_eq!(p.topic, "command/inbox//set");
    assert_eq!(&p.payload[..], b"on");

    // a second filter in the same session is not a new event
    c.subscribe("command/inbox/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |p| matches!(p, Packet::SubAck(_))).await;
    // after dropping every command filter, subscribing again is
    c.unsubscribe("command/inbox//#").await.unwrap();
    until(&mut ev, |p| matches!(p, Packet::UnsubAck(_))).await;
    c.unsubscribe("command/inbox/#").await.unwrap();
    until(&mut ev, |p| matches!(p, Packet::UnsubAck(_))).await;
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
    c.subscribe("command/inbox/#", QoS::AtMostOnce).await.unwrap();
    until(&mut ev, |p| matches!(p, Packet::SubAck(_))).await;
    let device = tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap();
    assert_eq!(device, sensor());

    // a new connection (clean session) subscribing is announced again
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(DEADLINE, async { while ev.poll().await.is_ok() {} }).await;
    let (c2, mut ev2) = client(addr);
    until(&mut ev2, |p| matches!(p, Packet::ConnAck(_))).await;
    c2.subscribe("command/inbox//#", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev2, |p| matches!(p, Packet::SubAck(_))).await;
    let device = tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap();
    assert_eq!(device, sensor());
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);

    stop.cancel();
    tokio::time::timeout(DEADLINE, server).await.unwrap().unwrap();
}
