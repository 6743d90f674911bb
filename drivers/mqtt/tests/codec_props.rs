//! Property tests of the codec: arbitrary and corrupted bytes never panic the reader, and
//! encode → decode round-trips CONNECT, PUBLISH, PUBACK, SUBSCRIBE and SUBACK in both
//! versions.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use gw_driver_mqtt::{
    Codec, Connect, Login, Packet, PubAck, PubAckReason, Publish, QoS, SubAck, SubAckCode,
    Subscribe, SubscribeFilter, Version, Will, sniff_version,
};
use proptest::prelude::*;

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9/_@ -]{1,40}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

/// A v5-only value: `None` on 3.1.1.
fn v5_only<T: std::fmt::Debug + Clone + 'static>(
    v: Version,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    match v {
        Version::V311 => Just(None).boxed(),
        Version::V5 => proptest::option::of(s).boxed(),
    }
}

fn connect(v: Version) -> impl Strategy<Value = Packet> {
    let login = proptest::option::of(("[a-z0-9@.]{1,20}", "[ -~]{0,20}"))
        .prop_map(|l| l.map(|(username, password)| Login { username, password }));
    let will = proptest::option::of((
        topic(),
        payload(),
        qos(),
        any::<bool>(),
        v5_only(v, "[a-z/+]{1,20}"),
    ))
    .prop_map(|w| {
        w.map(|(topic, payload, qos, retain, content_type)| Will {
            topic,
            payload,
            qos,
            retain,
            content_type,
        })
    });
    (
        "[a-zA-Z0-9@-]{0,23}",
        any::<bool>(),
        any::<u16>(),
        login,
        will,
        v5_only(v, any::<u32>()),
        v5_only(v, 1u32..),
    )
        .prop_map(move |(client_id, clean_session, keep_alive, login, will, se, mps)| {
            Packet::Connect(Connect {
                version: v,
                client_id,
                clean_session,
                keep_alive,
                login,
                will,
                session_expiry: se,
                max_packet_size: mps,
            })
        })
}

fn publish(v: Version) -> impl Strategy<Value = Packet> {
    (
        topic(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        1u16..,
        payload(),
        v5_only(v, "[a-z/+.-]{1,30}"),
        v5_only(v, 1u16..),
    )
        .prop_map(|(topic, qos, retain, dup, pkid, payload, content_type, topic_alias)| {
            let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
            Packet::Publish(Publish {
                topic,
                qos,
                retain,
                dup,
                pkid,
                payload,
                content_type,
                topic_alias,
            })
        })
}

fn puback(v: Version) -> BoxedStrategy<Packet> {
    let reason = match v {
        Version::V311 => Just(PubAckReason::Success).boxed(),
        Version::V5 => prop_oneof![
            Just(PubAckReason::Success),
            Just(PubAckReason::NoMatchingSubscribers),
            Just(PubAckReason::UnspecifiedError),
            Just(PubAckReason::ImplementationSpecificError),
            Just(PubAckReason::NotAuthorized),
            Just(PubAckReason::TopicNameInvalid),
            Just(PubAckReason::PacketIdentifierInUse),
            Just(PubAckReason::QuotaExceeded),
            Just(PubAckReason::PayloadFormatInvalid),
        ]
        .boxed(),
    };
    (1u16.., reason).prop_map(|(pkid, reason)| Packet::PubAck(PubAck { pkid, reason })).boxed()
}

fn subscribe(v: Version) -> impl Strategy<Value = Packet> {
    let filter = ("[a-z0-9/+#]{1,30}", qos()).prop_map(|(path, qos)| SubscribeFilter { path, qos });
    (1u16.., proptest::collection::vec(filter, 1..5), v5_only(v, 1usize..268_435_455)).prop_map(
        |(pkid, filters, subscription_id)| {
            Packet::Subscribe(Subscribe { pkid, filters, subscription_id })
        },
    )
}

fn suback() -> impl Strategy<Value = Packet> {
    let code = prop_oneof![qos().prop_map(SubAckCode::Granted), Just(SubAckCode::Failure)];
    (1u16.., proptest::collection::vec(code, 1..5))
        .prop_map(|(pkid, codes)| Packet::SubAck(SubAck { pkid, codes }))
}

fn packet() -> impl Strategy<Value = (Version, Packet)> {
    version().prop_flat_map(|v| {
        prop_oneof![connect(v), publish(v), puback(v), subscribe(v), suback()]
            .prop_map(move |p| (v, p))
    })
}

/// Decodes everything in `buf` until it is empty, incomplete, or an error; must not panic.
fn drain(codec: Codec, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut budget = bytes.len() + 1;
    while budget > 0 {
        budget -= 1;
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trips((v, p) in packet()) {
        let codec = Codec::new(v, 1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(&p, &mut buf).unwrap();
        let sniffed = sniff_version(&buf);
        if matches!(p, Packet::Connect(_)) {
            prop_assert_eq!(sniffed.unwrap(), Some(v));
        }
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(v in version(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = sniff_version(&bytes);
        drain(Codec::new(v, 4096), &bytes);
    }

    /// Bytes that start like a packet of a real type with a consistent length reach the
    /// per-packet parsers, where random bytes alone rarely get.
    #[test]
    fn framed_garbage_never_panics(v in version(), kind in 1u8..16, flags in 0u8..16,
                                   body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = vec![(kind << 4) | flags, u8::try_from(body.len().min(127)).unwrap()];
        bytes.extend_from_slice(&body[..body.len().min(127)]);
        drain(Codec::new(v, 4096), &bytes);
    }

    /// Valid packets with one byte changed or cut short.
    #[test]
    fn corrupted_packets_never_panic((v, p) in packet(), at in any::<prop::sample::Index>(),
                                     byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let codec = Codec::new(v, 1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(&p, &mut buf).unwrap();
        let mut bytes = buf.to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        drain(codec, &bytes);
        let _ = sniff_version(&bytes);
        let cut = cut.index(bytes.len());
        drain(codec, &bytes[..cut]);
    }
}
