//! The MQTT uplinks' wire protocol: 3.1.1 or 5 (`[cloud] protocol`). The session thinks in
//! 3.1.1 packets; with MQTT 5 this module writes them as their v5 forms and reads the broker's
//! v5 packets back into them, keeping what v5 adds that the uplink acts on: a PUBACK's failure
//! reason (a refusal, not an acceptance) and a command's content type.
//!
//! A v5 PUBLISH carries properties between its packet id and its payload. The publisher puts
//! them there itself ([`publish_properties`]): the record's PUBLISH payload starts with the
//! encoded property block, so that written as 3.1.1 it is byte for byte the v5 PUBLISH, its
//! size (checked against `max_message`) included. Such a PUBLISH never leaves the uplink.

use bytes::{Bytes, BytesMut};
use rumqttc::{
    mqttbytes::{self, QoS, v4},
    v5::mqttbytes::{self as mqtt5, v5},
};
use serde::{Deserialize, Serialize};

use crate::uplink::Verdict;

/// The MQTT version the uplink speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// The user property that carries the time the gateway received a reading (RFC 3339, UTC,
/// milliseconds), on MQTT 5 uplinks.
pub const RECEIVED_AT: &str = "received_at";

/// What the broker sent, in the session's terms.
#[derive(Debug)]
pub(crate) enum Incoming {
    Packet(v4::Packet),
    /// A v5 PUBACK with a failure reason: the record's verdict.
    Refused {
        pkid: u16,
        verdict: Verdict,
    },
    /// A v5 DISCONNECT from the broker, with its reason.
    Disconnected(String),
}

/// Encodes the v5 PUBLISH property block (its length first) that [`Protocol::V5`] records
/// carry at the start of their payload; see the module docs.
pub fn publish_properties(content_type: Option<&str>, received_at: Option<&str>) -> BytesMut {
    let mut props = v5::PublishProperties {
        content_type: content_type.map(str::to_owned),
        ..Default::default()
    };
    if let Some(at) = received_at {
        props.user_properties.push((RECEIVED_AT.to_owned(), at.to_owned()));
    }
    let mut buf = BytesMut::with_capacity(64);
    if props.write(&mut buf).is_err() {
        // only a property block longer than MQTT's 256 MiB limit fails: none at all then
        buf.clear();
        buf.extend_from_slice(&[0]);
    }
    buf
}

fn qos5(q: QoS) -> mqtt5::QoS {
    match q {
        QoS::AtMostOnce => mqtt5::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqtt5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqtt5::QoS::ExactlyOnce,
    }
}

fn qos4(q: mqtt5::QoS) -> QoS {
    match q {
        mqtt5::QoS::AtMostOnce => QoS::AtMostOnce,
        mqtt5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqtt5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl Protocol {
    /// Writes `packet` into `buf` in this protocol.
    pub(crate) fn write(
        self,
        packet: &v4::Packet,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot encode {}: {e}", name(packet));
        if self == Protocol::V311 {
            return packet.write(buf, max).map(drop).map_err(|e| fail(&e));
        }
        let v5_packet = match packet {
            // already in its v5 form (see the module docs)
            v4::Packet::Publish(_) => {
                return packet.write(buf, max).map(drop).map_err(|e| fail(&e));
            }
            v4::Packet::Connect(c) => v5::Packet::Connect(
                v5::Connect {
                    keep_alive: c.keep_alive,
                    client_id: c.client_id.clone(),
                    clean_start: c.clean_session,
                    properties: None,
                },
                None,
                c.login.as_ref().map(|l| v5::Login::new(l.username.clone(), l.password.clone())),
            ),
            v4::Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .iter()
                    .map(|f| v5::Filter::new(f.path.clone(), qos5(f.qos)))
                    .collect(),
                properties: None,
            }),
            v4::Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck::new(a.pkid, None)),
            v4::Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
            v4::Packet::Disconnect => v5::Packet::Disconnect(v5::Disconnect::new(
                v5::DisconnectReasonCode::NormalDisconnection,
            )),
            other => return Err(format!("the uplink does not send {}", name(other))),
        };
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        v5_packet.write(buf, Some(max)).map(drop).map_err(|e| fail(&e))
    }

    /// Reads the next packet from `buf`; `Ok(None)` until a whole one is there.
    pub(crate) fn read(self, buf: &mut BytesMut, max: usize) -> Result<Option<Incoming>, String> {
        if self == Protocol::V311 {
            return match v4::Packet::read(buf, max) {
                Ok(p) => Ok(Some(Incoming::Packet(p))),
                Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
        let packet = match v5::Packet::read(buf, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
            Ok(p) => p,
            Err(mqtt5::Error::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let packet = match packet {
            v5::Packet::ConnAck(ack) => {
                let code = match ack.code {
                    v5::ConnectReturnCode::Success => v4::ConnectReturnCode::Success,
                    v5::ConnectReturnCode::BadUserNamePassword => {
                        v4::ConnectReturnCode::BadUserNamePassword
                    }
                    v5::ConnectReturnCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    other => return Err(format!("the broker refused the connection: {other:?}")),
                };
                v4::Packet::ConnAck(v4::ConnAck { session_present: ack.session_present, code })
            }
            v5::Packet::PubAck(ack) => match ack.reason {
                v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers => {
                    v4::Packet::PubAck(v4::PubAck { pkid: ack.pkid })
                }
                reason => {
                    let why = format!("the broker answered PUBACK {reason:?}");
                    let verdict = match reason {
                        v5::PubAckReason::NotAuthorized => Verdict::Refused(why),
                        v5::PubAckReason::TopicNameInvalid
                        | v5::PubAckReason::PayloadFormatInvalid => Verdict::Rejected(why),
                        _ => Verdict::Transient(why),
                    };
                    return Ok(Some(Incoming::Refused { pkid: ack.pkid, verdict }));
                }
            },
            v5::Packet::SubAck(ack) => v4::Packet::SubAck(v4::SubAck {
                pkid: ack.pkid,
                return_codes: ack
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        v5::SubscribeReasonCode::Success(q) => {
                            v4::SubscribeReasonCode::Success(qos4(*q))
                        }
                        _ => v4::SubscribeReasonCode::Failure,
                    })
                    .collect(),
            }),
            v5::Packet::Publish(p) => {
                let topic = String::from_utf8(p.topic.to_vec())
                    .map_err(|_| "a PUBLISH topic that is not UTF-8".to_owned())?;
                let mut publish = v4::Publish::from_bytes(topic, qos4(p.qos), p.payload);
                publish.pkid = p.pkid;
                publish.dup = p.dup;
                publish.retain = p.retain;
                v4::Packet::Publish(publish)
            }
            v5::Packet::PingResp(_) => v4::Packet::PingResp,
            v5::Packet::Disconnect(d) => {
                let reason = d.properties.and_then(|p| p.reason_string).unwrap_or_default();
                return Ok(Some(Incoming::Disconnected(format!("{:?} {reason}", d.reason_code))));
            }
            other => return Err(format!("unexpected packet from the broker: {other:?}")),
        };
        Ok(Some(Incoming::Packet(packet)))
    }
}

fn name(p: &v4::Packet) -> &'static str {
    match p {
        v4::Packet::Connect(_) => "CONNECT",
        v4::Packet::Publish(_) => "PUBLISH",
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::Subscribe(_) => "SUBSCRIBE",
        v4::Packet::PingReq => "PINGREQ",
        v4::Packet::Disconnect => "DISCONNECT",
        _ => "a packet",
    }
}

/// The payload of a [`Protocol::V5`] record's PUBLISH: the property block, then `payload`.
pub fn v5_payload(properties: &[u8], payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(properties.len() + payload.len());
    buf.extend_from_slice(properties);
    buf.extend_from_slice(payload);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v5_publish_with_properties_reads_back_with_its_properties_and_payload() {
        let props = publish_properties(Some("application/json"), Some("2026-12-07T10:00:00.000Z"));
        let mut publish = v4::Publish::from_bytes(
            "site/s1/temp",
            QoS::AtLeastOnce,
            v5_payload(&props, b"{\"t\":1}"),
        );
        publish.pkid = 7;
        let mut buf = BytesMut::new();
        Protocol::V5.write(&v4::Packet::Publish(publish), &mut buf, 1 << 20).unwrap();
        let v5::Packet::Publish(read) = v5::Packet::read(&mut buf, None).unwrap() else { panic!() };
        assert_eq!((read.pkid, &read.payload[..]), (7, &b"{\"t\":1}"[..]));
        let p = read.properties.unwrap();
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            p.user_properties,
            [(RECEIVED_AT.to_owned(), "2026-12-07T10:00:00.000Z".to_owned())]
        );
        // no properties at all: one zero byte
        assert_eq!(&publish_properties(None, None)[..], &[0]);
    }

    #[test]
    fn v5_pubacks_with_failure_reasons_are_verdicts() {
        for (reason, refused) in [
            (v5::PubAckReason::NotAuthorized, "refused"),
            (v5::PubAckReason::PayloadFormatInvalid, "rejected"),
            (v5::PubAckReason::QuotaExceeded, "transient"),
        ] {
            let mut ack = v5::PubAck::new(3, None);
            ack.reason = reason;
            let mut buf = BytesMut::new();
            v5::Packet::PubAck(ack).write(&mut buf, None).unwrap();
            let Some(Incoming::Refused { pkid: 3, verdict }) =
                Protocol::V5.read(&mut buf, 1024).unwrap()
            else {
                panic!("{reason:?}")
            };
            let kind = match verdict {
                Verdict::Refused(_) => "refused",
                Verdict::Rejected(_) => "rejected",
                Verdict::Transient(_) => "transient",
                _ => "other",
            };
            assert_eq!(kind, refused, "{reason:?}");
        }
        let mut ok = v5::PubAck::new(4, None);
        ok.reason = v5::PubAckReason::NoMatchingSubscribers;
        let mut buf = BytesMut::new();
        v5::Packet::PubAck(ok).write(&mut buf, None).unwrap();
        assert!(matches!(
            Protocol::V5.read(&mut buf, 1024).unwrap(),
            Some(Incoming::Packet(v4::Packet::PubAck(v4::PubAck { pkid: 4 })))
        ));
        assert!(Protocol::V5.read(&mut BytesMut::new(), 1024).unwrap().is_none());
    }
}
