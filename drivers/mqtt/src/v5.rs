//! MQTT 5: conversions between [`Packet`] and rumqttc's v5 packets, and framing.

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::{QoS as WQoS, v5 as w};

use crate::{
    CodecError,
    packet::{
        ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Login, Packet, PubAck,
        PubAckReason, Publish, QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, UnsubAck,
        Unsubscribe, Version, Will,
    },
};

const V: Version = Version::V5;

/// DISCONNECT with remaining length 0: reason "normal", no properties (MQTT 5 §3.14.2.1).
/// rumqttc refuses it, so it is read here.
const SHORT_DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Reads the one whole packet at the front of `buf` (the codec checked its frame).
pub(crate) fn read(buf: &mut BytesMut) -> Result<Packet, CodecError> {
    if buf.starts_with(&SHORT_DISCONNECT) {
        let _ = buf.split_to(SHORT_DISCONNECT.len());
        return Ok(Packet::Disconnect(Disconnect::normal()));
    }
    // DISCONNECT with a reason code and no property length (MQTT 5 §3.14.2.2.1: absent
    // means 0), which rumqttc writes but does not read.
    if let [0xE0, 0x01, code] = buf[..] {
        let reason = DisconnectReason::try_from(code).map_err(malformed)?;
        buf.clear();
        return Ok(Packet::Disconnect(Disconnect { reason }));
    }
    from_wire(w::Packet::read(buf, None).map_err(malformed)?)
}

/// Appends one packet to `buf` if it is at most `max` bytes long.
pub(crate) fn write(packet: &Packet, buf: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    if let Packet::PubAck(PubAck { pkid, reason: PubAckReason::PacketTooLarge }) = packet {
        // rumqttc's v5 codec has no 0x95 PUBACK reason (mosquitto sends it for a message
        // above its size limit): PUBACK, remaining length 3, packet id, reason code.
        buf.extend_from_slice(&[0x40, 3]);
        buf.extend_from_slice(&pkid.to_be_bytes());
        buf.extend_from_slice(&[0x95]);
        return Ok(());
    }
    let packet = to_wire(packet);
    let size = packet.size();
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    packet.write(buf, None).map(drop).map_err(malformed)
}

/// rumqttc does not export its v5 error type; its message is kept.
fn malformed(e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed { version: V, reason: e.to_string() }
}

fn qos_in(q: WQoS) -> QoS {
    match q {
        WQoS::AtMostOnce => QoS::AtMostOnce,
        WQoS::AtLeastOnce => QoS::AtLeastOnce,
        WQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_out(q: QoS) -> WQoS {
    match q {
        QoS::AtMostOnce => WQoS::AtMostOnce,
        QoS::AtLeastOnce => WQoS::AtLeastOnce,
        QoS::ExactlyOnce => WQoS::ExactlyOnce,
    }
}

fn utf8(bytes: Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| CodecError::Malformed { version: V, reason: format!("{what} is not UTF-8") })
}

fn from_wire(p: w::Packet) -> Result<Packet, CodecError> {
    Ok(match p {
        w::Packet::Connect(c, will, login) => {
            let props = c.properties.as_ref();
            if props.and_then(|p| p.receive_maximum) == Some(0) {
                // MQTT 5 §3.1.2.11.3: a Receive Maximum of 0 is a protocol error
                return Err(CodecError::Malformed {
                    version: V,
                    reason: "Receive Maximum 0 in CONNECT".into(),
                });
            }
            let will = match will {
                None => None,
                Some(will) => Some(Will {
                    topic: utf8(will.topic, "will topic")?,
                    payload: will.message,
                    qos: qos_in(will.qos),
                    retain: will.retain,
                    content_type: will.properties.and_then(|p| p.content_type),
                }),
            };
            Packet::Connect(Connect {
                version: V,
                client_id: c.client_id,
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                login: login.map(|l| Login { username: l.username, password: l.password }),
                will,
                session_expiry: props.and_then(|p| p.session_expiry_interval),
                max_packet_size: props.and_then(|p| p.max_packet_size),
            })
        }
        w::Packet::ConnAck(a) => {
            let props = a.properties.as_ref();
            Packet::ConnAck(ConnAck {
                session_present: a.session_present,
                code: connect_code_in(a.code),
                max_packet_size: props.and_then(|p| p.max_packet_size),
                receive_max: props.and_then(|p| p.receive_max),
                max_qos: props.and_then(|p| p.max_qos).map(|q| match q {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                }),
                retain_available: props.and_then(|p| p.retain_available).map(|r| r != 0),
            })
        }
        w::Packet::Publish(p) => {
            let props = p.properties.unwrap_or_else(empty_publish_properties);
            Packet::Publish(Publish {
                topic: utf8(p.topic, "topic")?,
                qos: qos_in(p.qos),
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                payload: p.payload,
                content_type: props.content_type,
                topic_alias: props.topic_alias,
            })
        }
        w::Packet::PubAck(a) => {
            Packet::PubAck(PubAck { pkid: a.pkid, reason: puback_reason_in(a.reason) })
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
            subscription_id: s.properties.and_then(|p| p.id),
        }),
        w::Packet::SubAck(a) => Packet::SubAck(SubAck {
            pkid: a.pkid,
            codes: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    w::SubscribeReasonCode::Success(q) => SubAckCode::Granted(qos_in(q)),
                    _ => SubAckCode::Failure,
                })
                .collect(),
        }),
        w::Packet::Unsubscribe(u) => {
            Packet::Unsubscribe(Unsubscribe { pkid: u.pkid, filters: u.filters })
        }
        w::Packet::UnsubAck(a) => {
            Packet::UnsubAck(UnsubAck { pkid: a.pkid, filters: a.reasons.len() })
        }
        w::Packet::PingReq(_) => Packet::PingReq,
        w::Packet::PingResp(_) => Packet::PingResp,
        w::Packet::Disconnect(d) => Packet::Disconnect(Disconnect { reason: d.reason_code }),
        w::Packet::Auth(_) => {
            return Err(CodecError::NotRepresentable { version: V, what: "AUTH" });
        }
    })
}

fn to_wire(p: &Packet) -> w::Packet {
    match p {
        Packet::Connect(c) => {
            let properties =
                (c.session_expiry.is_some() || c.max_packet_size.is_some()).then(|| {
                    w::ConnectProperties {
                        session_expiry_interval: c.session_expiry,
                        max_packet_size: c.max_packet_size,
                        ..w::ConnectProperties::new()
                    }
                });
            let will = c.will.as_ref().map(|will| w::LastWill {
                topic: Bytes::copy_from_slice(will.topic.as_bytes()),
                message: will.payload.clone(),
                qos: qos_out(will.qos),
                retain: will.retain,
                properties: will.content_type.clone().map(|ct| w::LastWillProperties {
                    delay_interval: None,
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: Some(ct),
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                }),
            });
            let login = c.login.as_ref().map(|l| w::Login::new(&l.username, &l.password));
            let connect = w::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id.clone(),
                clean_start: c.clean_session,
                properties,
            };
            w::Packet::Connect(connect, will, login)
        }
        Packet::ConnAck(a) => w::Packet::ConnAck(w::ConnAck {
            session_present: a.session_present,
            code: connect_code_out(a.code),
            properties: (a.max_packet_size.is_some()
                || a.receive_max.is_some()
                || a.max_qos.is_some()
                || a.retain_available.is_some())
            .then(|| w::ConnAckProperties {
                max_packet_size: a.max_packet_size,
                receive_max: a.receive_max,
                max_qos: a.max_qos.map(|q| q as u8),
                retain_available: a.retain_available.map(u8::from),
                ..empty_connack_properties()
            }),
        }),
        Packet::Publish(p) => {
            let properties = (p.content_type.is_some() || p.topic_alias.is_some()).then(|| {
                w::PublishProperties {
                    content_type: p.content_type.clone(),
                    topic_alias: p.topic_alias,
                    ..empty_publish_properties()
                }
            });
            w::Packet::Publish(w::Publish {
                dup: p.dup,
                qos: qos_out(p.qos),
                retain: p.retain,
                topic: Bytes::copy_from_slice(p.topic.as_bytes()),
                pkid: p.pkid,
                payload: p.payload.clone(),
                properties,
            })
        }
        Packet::PubAck(a) => w::Packet::PubAck(w::PubAck {
            pkid: a.pkid,
            reason: puback_reason_out(a.reason),
            properties: None,
        }),
        Packet::PubRec(id) => w::Packet::PubRec(w::PubRec::new(*id, None)),
        Packet::PubRel(id) => w::Packet::PubRel(w::PubRel::new(*id, None)),
        Packet::PubComp(id) => w::Packet::PubComp(w::PubComp::new(*id, None)),
        Packet::Subscribe(s) => w::Packet::Subscribe(w::Subscribe {
            pkid: s.pkid,
            filters: s.filters.iter().map(|f| w::Filter::new(&f.path, qos_out(f.qos))).collect(),
            properties: s
                .subscription_id
                .map(|id| w::SubscribeProperties { id: Some(id), user_properties: Vec::new() }),
        }),
        Packet::SubAck(a) => w::Packet::SubAck(w::SubAck {
            pkid: a.pkid,
            return_codes: a
                .codes
                .iter()
                .map(|c| match c {
                    SubAckCode::Granted(q) => w::SubscribeReasonCode::Success(qos_out(*q)),
                    SubAckCode::Failure => w::SubscribeReasonCode::Unspecified,
                })
                .collect(),
            properties: None,
        }),
        Packet::Unsubscribe(u) => w::Packet::Unsubscribe(w::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.clone(),
            properties: None,
        }),
        Packet::UnsubAck(a) => w::Packet::UnsubAck(w::UnsubAck {
            pkid: a.pkid,
            reasons: vec![w::UnsubAckReason::Success; a.filters],
            properties: None,
        }),
        Packet::PingReq => w::Packet::PingReq(w::PingReq),
        Packet::PingResp => w::Packet::PingResp(w::PingResp),
        Packet::Disconnect(d) => w::Packet::Disconnect(w::Disconnect::new(d.reason)),
    }
}

fn connect_code_in(c: w::ConnectReturnCode) -> ConnectCode {
    use w::ConnectReturnCode as C;
    match c {
        C::Success => ConnectCode::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            ConnectCode::UnsupportedProtocolVersion
        }
        C::BadClientId | C::ClientIdentifierNotValid => ConnectCode::ClientIdentifierNotValid,
        C::ServiceUnavailable | C::ServerUnavailable => ConnectCode::ServerUnavailable,
        C::BadUserNamePassword => ConnectCode::BadUserNamePassword,
        C::NotAuthorized => ConnectCode::NotAuthorized,
        C::QuotaExceeded => ConnectCode::QuotaExceeded,
        C::ProtocolError => ConnectCode::ProtocolError,
        _ => ConnectCode::UnspecifiedError,
    }
}

fn connect_code_out(c: ConnectCode) -> w::ConnectReturnCode {
    use w::ConnectReturnCode as C;
    match c {
        ConnectCode::Success => C::Success,
        ConnectCode::UnsupportedProtocolVersion => C::UnsupportedProtocolVersion,
        ConnectCode::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
        ConnectCode::ServerUnavailable => C::ServerUnavailable,
        ConnectCode::BadUserNamePassword => C::BadUserNamePassword,
        ConnectCode::NotAuthorized => C::NotAuthorized,
        ConnectCode::QuotaExceeded => C::QuotaExceeded,
        ConnectCode::UnspecifiedError => C::UnspecifiedError,
        ConnectCode::ProtocolError => C::ProtocolError,
    }
}

fn puback_reason_in(r: w::PubAckReason) -> PubAckReason {
    use w::PubAckReason as R;
    match r {
        R::Success => PubAckReason::Success,
        R::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
        R::UnspecifiedError => PubAckReason::UnspecifiedError,
        R::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
        R::NotAuthorized => PubAckReason::NotAuthorized,
        R::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        R::PacketIdentifierInUse => PubAckReason::PacketIdentifierInUse,
        R::QuotaExceeded => PubAckReason::QuotaExceeded,
        R::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    }
}

fn puback_reason_out(r: PubAckReason) -> w::PubAckReason {
    use w::PubAckReason as R;
    match r {
        PubAckReason::Success => R::Success,
        PubAckReason::NoMatchingSubscribers => R::NoMatchingSubscribers,
        PubAckReason::UnspecifiedError => R::UnspecifiedError,
        PubAckReason::ImplementationSpecificError => R::ImplementationSpecificError,
        PubAckReason::NotAuthorized => R::NotAuthorized,
        PubAckReason::TopicNameInvalid => R::TopicNameInvalid,
        PubAckReason::PacketIdentifierInUse => R::PacketIdentifierInUse,
        PubAckReason::QuotaExceeded => R::QuotaExceeded,
        PubAckReason::PayloadFormatInvalid => R::PayloadFormatInvalid,
        // written by hand in `write`
        PubAckReason::PacketTooLarge => R::ImplementationSpecificError,
    }
}

fn empty_publish_properties() -> w::PublishProperties {
    w::PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    }
}

fn empty_connack_properties() -> w::ConnAckProperties {
    w::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
