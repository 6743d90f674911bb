//! MQTT 3.1.1: conversions between [`Packet`] and rumqttc's v4 packets, and framing.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as wire, Protocol, v4 as w};

use crate::{
    CodecError,
    packet::{
        ConnAck, Connect, ConnectCode, Disconnect, Login, Packet, PubAck, PubAckReason, Publish,
        QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe, Version, Will,
    },
};

const V: Version = Version::V311;

/// Reads the one whole packet at the front of `buf` (the codec checked its frame).
pub(crate) fn read(buf: &mut BytesMut) -> Result<Packet, CodecError> {
    from_wire(w::Packet::read(buf, usize::MAX).map_err(malformed)?)
}

/// Appends one packet to `buf` if it is at most `max` bytes long.
pub(crate) fn write(packet: &Packet, buf: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    let packet = to_wire(packet)?;
    let size = packet.size();
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    packet.write(buf, usize::MAX).map(drop).map_err(malformed)
}

fn malformed(e: wire::Error) -> CodecError {
    CodecError::Malformed { version: V, reason: e.to_string() }
}

fn not_representable(what: &'static str) -> CodecError {
    CodecError::NotRepresentable { version: V, what }
}

fn qos_in(q: wire::QoS) -> QoS {
    match q {
        wire::QoS::AtMostOnce => QoS::AtMostOnce,
        wire::QoS::AtLeastOnce => QoS::AtLeastOnce,
        wire::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_out(q: QoS) -> wire::QoS {
    match q {
        QoS::AtMostOnce => wire::QoS::AtMostOnce,
        QoS::AtLeastOnce => wire::QoS::AtLeastOnce,
        QoS::ExactlyOnce => wire::QoS::ExactlyOnce,
    }
}

fn from_wire(p: w::Packet) -> Result<Packet, CodecError> {
    Ok(match p {
        w::Packet::Connect(c) => {
            if c.protocol != Protocol::V4 {
                return Err(CodecError::Malformed {
                    version: V,
                    reason: "CONNECT of another protocol level".to_owned(),
                });
            }
            Packet::Connect(Connect {
                version: V,
                client_id: c.client_id,
                clean_session: c.clean_session,
                keep_alive: c.keep_alive,
                login: c.login.map(|l| Login { username: l.username, password: l.password }),
                will: c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos_in(w.qos),
                    retain: w.retain,
                    content_type: None,
                }),
                session_expiry: None,
                max_packet_size: None,
            })
        }
        w::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            code: match a.code {
                w::ConnectReturnCode::Success => ConnectCode::Success,
                w::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectCode::UnsupportedProtocolVersion
                }
                w::ConnectReturnCode::BadClientId => ConnectCode::ClientIdentifierNotValid,
                w::ConnectReturnCode::ServiceUnavailable => ConnectCode::ServerUnavailable,
                w::ConnectReturnCode::BadUserNamePassword => ConnectCode::BadUserNamePassword,
                w::ConnectReturnCode::NotAuthorized => ConnectCode::NotAuthorized,
            },
            max_packet_size: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
        }),
        w::Packet::Publish(p) => Packet::Publish(Publish {
            topic: p.topic,
            qos: qos_in(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            payload: p.payload,
            content_type: None,
            topic_alias: None,
        }),
        w::Packet::PubAck(a) => {
            Packet::PubAck(PubAck { pkid: a.pkid, reason: PubAckReason::Success })
        }
        w::Packet::PubRec(a) => Packet::PubRec(a.pkid),
        w::Packet::PubRel(a) => Packet::PubRel(a.pkid),
        w::Packet::PubComp(a) => Packet::PubComp(a.pkid),
        w::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter { path: f.path, qos: qos_in(f.qos) })
                .collect(),
            subscription_id: None,
        }),
        w::Packet::SubAck(a) => Packet::SubAck(SubAck {
            pkid: a.pkid,
            codes: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    w::SubscribeReasonCode::Success(q) => SubAckCode::Granted(qos_in(q)),
                    w::SubscribeReasonCode::Failure => SubAckCode::Failure,
                })
                .collect(),
        }),
        w::Packet::Unsubscribe(u) => {
            Packet::Unsubscribe(Unsubscribe { pkid: u.pkid, filters: u.topics })
        }
        w::Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck { pkid: a.pkid, filters: 0 }),
        w::Packet::PingReq => Packet::PingReq,
        w::Packet::PingResp => Packet::PingResp,
        w::Packet::Disconnect => Packet::Disconnect(Disconnect::normal()),
    })
}

fn to_wire(p: &Packet) -> Result<w::Packet, CodecError> {
    Ok(match p {
        Packet::Connect(c) => {
            if c.session_expiry.is_some() || c.max_packet_size.is_some() {
                return Err(not_representable("a CONNECT property"));
            }
            if c.will.as_ref().is_some_and(|w| w.content_type.is_some()) {
                return Err(not_representable("a will content type"));
            }
            w::Packet::Connect(w::Connect {
                protocol: Protocol::V4,
                keep_alive: c.keep_alive,
                client_id: c.client_id.clone(),
                clean_session: c.clean_session,
                last_will: c.will.as_ref().map(|will| w::LastWill {
                    topic: will.topic.clone(),
                    message: will.payload.clone(),
                    qos: qos_out(will.qos),
                    retain: will.retain,
                }),
                login: c.login.as_ref().map(|l| w::Login {
                    username: l.username.clone(),
                    password: l.password.clone(),
                }),
            })
        }
        Packet::ConnAck(a) => {
            // v3.1.1 has no code for these; "server unavailable" is the closest refusal.
            let code = match a.code {
                ConnectCode::Success => w::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocolVersion => {
                    w::ConnectReturnCode::RefusedProtocolVersion
                }
                ConnectCode::ClientIdentifierNotValid => w::ConnectReturnCode::BadClientId,
                ConnectCode::ServerUnavailable
                | ConnectCode::UnspecifiedError
                | ConnectCode::ProtocolError => w::ConnectReturnCode::ServiceUnavailable,
                ConnectCode::BadUserNamePassword => w::ConnectReturnCode::BadUserNamePassword,
                ConnectCode::NotAuthorized | ConnectCode::QuotaExceeded => {
                    w::ConnectReturnCode::NotAuthorized
                }
            };
            w::Packet::ConnAck(w::ConnAck::new(code, a.session_present))
        }
        Packet::Publish(p) => {
            if p.content_type.is_some() || p.topic_alias.is_some() {
                return Err(not_representable("a PUBLISH property"));
            }
            w::Packet::Publish(w::Publish {
                dup: p.dup,
                qos: qos_out(p.qos),
                retain: p.retain,
                topic: p.topic.clone(),
                pkid: p.pkid,
                payload: p.payload.clone(),
            })
        }
        Packet::PubAck(a) => {
            if a.reason != PubAckReason::Success {
                return Err(not_representable("a PUBACK failure reason"));
            }
            w::Packet::PubAck(w::PubAck::new(a.pkid))
        }
        Packet::PubRec(id) => w::Packet::PubRec(w::PubRec::new(*id)),
        Packet::PubRel(id) => w::Packet::PubRel(w::PubRel::new(*id)),
        Packet::PubComp(id) => w::Packet::PubComp(w::PubComp::new(*id)),
        Packet::Subscribe(s) => {
            if s.subscription_id.is_some() {
                return Err(not_representable("a subscription identifier"));
            }
            w::Packet::Subscribe(w::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .iter()
                    .map(|f| w::SubscribeFilter::new(f.path.clone(), qos_out(f.qos)))
                    .collect(),
            })
        }
        Packet::SubAck(a) => w::Packet::SubAck(w::SubAck::new(
            a.pkid,
            a.codes
                .iter()
                .map(|c| match c {
                    SubAckCode::Granted(q) => w::SubscribeReasonCode::Success(qos_out(*q)),
                    SubAckCode::Failure => w::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::Unsubscribe(u) => {
            w::Packet::Unsubscribe(w::Unsubscribe { pkid: u.pkid, topics: u.filters.clone() })
        }
        Packet::UnsubAck(a) => w::Packet::UnsubAck(w::UnsubAck::new(a.pkid)),
        Packet::PingReq => w::Packet::PingReq,
        Packet::PingResp => w::Packet::PingResp,
        // v3.1.1 DISCONNECT carries no reason; a server closes the connection instead.
        Packet::Disconnect(_) => w::Packet::Disconnect,
    })
}
