//! rumqttc clients: takeover, keep-alive expiry with the last will, and v5 quota exceeded.

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, v5};

use super::*;

fn options(client_id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials("sensor1@app", "pw");
    o
}

/// Polls until CONNACK.
async fn connected(eventloop: &mut EventLoop) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(rumqttc::Packet::ConnAck(ack)) = eventloop.poll().await.unwrap()
            {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                return;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_second_connection_takes_over_and_the_first_gets_its_will_published() {
    let h = Harness::start().await;
    let mut first = options("first", h.addr);
    first.set_last_will(LastWill::new("gone", "first lost", rumqttc::QoS::AtLeastOnce, false));
    let (_c1, mut ev1) = AsyncClient::new(first, 10);
    connected(&mut ev1).await;
    let (c2, mut ev2) = AsyncClient::new(options("second", h.addr), 10);
    connected(&mut ev2).await;
    // the first connection is closed by the endpoint
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            if ev1.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the older connection was not closed");
    let wills = h.ingest.wait_for(1).await;
    assert_eq!((wills[0].channel.as_str(), &wills[0].payload[..]), ("gone", &b"first lost"[..]));
    // the newer one still works
    c2.publish("temperature", rumqttc::QoS::AtLeastOnce, false, "2").await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(rumqttc::Packet::PubAck(_)) = ev2.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .unwrap();
    let stats = h.stats.snapshot();
    assert_eq!((stats.takeovers, stats.sessions, stats.wills), (1, 1, 1));
    h.stop().await;
}

#[tokio::test]
async fn keep_alive_expiry_publishes_the_will() {
    let h = Harness::start().await;
    let mut o = options("sleepy", h.addr);
    o.set_keep_alive(Duration::from_secs(1));
    o.set_last_will(LastWill::new("lwt", "bye", rumqttc::QoS::AtMostOnce, false));
    let (_client, mut ev) = AsyncClient::new(o, 10);
    connected(&mut ev).await;
    // stop polling: no PINGREQ goes out; the endpoint gives up after 1.5 s
    let wills = h.ingest.wait_for(1).await;
    assert_eq!((wills[0].channel.as_str(), &wills[0].payload[..]), ("lwt", &b"bye"[..]));
    assert_eq!(wills[0].device.as_str(), "sensor1");
    let stats = h.stats.snapshot();
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.devices[0].1.disconnects, 1);
    drop(ev);
    h.stop().await;
}

#[tokio::test]
async fn v5_quota_exceeded_comes_back_as_puback_0x97() {
    let h = Harness::start().await;
    h.ingest.quota_exceeded.store(true, Ordering::SeqCst);
    let mut o = v5::MqttOptions::new("v5", h.addr.ip().to_string(), h.addr.port());
    o.set_credentials("sensor1@app", "pw");
    let (client, mut ev) = v5::AsyncClient::new(o, 10);
    client.publish("temperature", v5::mqttbytes::QoS::AtLeastOnce, false, "x").await.unwrap();
    let ack = tokio::time::timeout(DEADLINE, async {
        loop {
            if let v5::Event::Incoming(v5::mqttbytes::v5::Packet::PubAck(ack)) =
                ev.poll().await.unwrap()
            {
                return ack;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ack.reason, v5::mqttbytes::v5::PubAckReason::QuotaExceeded);
    // the connection stays up: the next message is stored once the outbox has room
    h.ingest.quota_exceeded.store(false, Ordering::SeqCst);
    client.publish("temperature", v5::mqttbytes::QoS::AtLeastOnce, false, "y").await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let v5::Event::Incoming(v5::mqttbytes::v5::Packet::PubAck(ack)) =
                ev.poll().await.unwrap()
            {
                assert_eq!(ack.reason, v5::mqttbytes::v5::PubAckReason::Success);
                return;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&h.ingest.records()[0].payload[..], b"y");
    h.stop().await;
}
