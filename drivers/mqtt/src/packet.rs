//! One packet model for MQTT 3.1.1 and 5. It holds what an MQTT endpoint acts on; the
//! version-specific fields (v5 properties an endpoint needs) are `Option`s that MQTT 3.1.1
//! leaves `None`. Other v5 properties (user properties, response topic, correlation data,
//! subscription options) are not kept.

use std::fmt;

use bytes::Bytes;

/// The MQTT protocol version of a connection, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5, protocol level 5.
    V5,
}

impl Version {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    /// The version for a protocol level byte, if supported.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            4 => Some(Version::V311),
            5 => Some(Version::V5),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        })
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// An MQTT control packet of either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    /// QoS 2 flow: PUBREC, PUBREL, PUBCOMP, by packet id (v5 reason codes are not kept).
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
}

impl Packet {
    /// The packet's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
        }
    }
}

/// CONNECT. `clean_session` is v5's Clean Start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    pub login: Option<Login>,
    pub will: Option<Will>,
    /// v5 Session Expiry Interval, seconds.
    pub session_expiry: Option<u32>,
    /// v5: the largest packet the client accepts.
    pub max_packet_size: Option<u32>,
}

impl Connect {
    /// A CONNECT with a clean session, keep-alive 60 s, no login and no will.
    pub fn new(version: Version, client_id: impl Into<String>) -> Self {
        Self {
            version,
            client_id: client_id.into(),
            clean_session: true,
            keep_alive: 60,
            login: None,
            will: None,
            session_expiry: None,
            max_packet_size: None,
        }
    }
}

/// User name and password of CONNECT. An absent field is empty (as rumqttc reads it).
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The last will of CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 Content Type will property.
    pub content_type: Option<String>,
}

/// Why a CONNECT was answered as it was. v3.1.1 has only the first six; the others are
/// sent as their closest v3.1.1 code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectCode {
    Success,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    ServerUnavailable,
    BadUserNamePassword,
    NotAuthorized,
    /// v5 only (0x97, too many failed logins); v3.1.1 sends "not authorized".
    QuotaExceeded,
    /// v5 only (0x80); v3.1.1 sends "server unavailable".
    UnspecifiedError,
    /// v5 only (0x82); v3.1.1 sends "server unavailable".
    ProtocolError,
}

/// CONNACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectCode,
    /// v5: the largest packet the server accepts.
    pub max_packet_size: Option<u32>,
    /// v5 Receive Maximum: QoS 1 publishes the server takes in flight.
    pub receive_max: Option<u16>,
    /// v5 Maximum QoS (0 or 1; absent means 2).
    pub max_qos: Option<QoS>,
    /// v5 Retain Available.
    pub retain_available: Option<bool>,
}

impl ConnAck {
    pub fn new(code: ConnectCode) -> Self {
        Self {
            session_present: false,
            code,
            max_packet_size: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
        }
    }
}

/// PUBLISH. `pkid` is 0 for QoS 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub payload: Bytes,
    /// v5 Content Type property.
    pub content_type: Option<String>,
    /// v5 Topic Alias property (an endpoint that advertises no aliases refuses it).
    pub topic_alias: Option<u16>,
}

impl Publish {
    pub fn new(topic: impl Into<String>, qos: QoS, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            qos,
            retain: false,
            dup: false,
            pkid: 0,
            payload: payload.into(),
            content_type: None,
            topic_alias: None,
        }
    }
}

/// The outcome of a QoS 1 PUBLISH. v3.1.1 can only say `Success`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubAckReason {
    Success,
    NoMatchingSubscribers,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    PayloadFormatInvalid,
    /// 0x95: the message is larger than the gateway (or its uplink) takes. MQTT 5 lists it for
    /// DISCONNECT only; mosquitto answers an oversized PUBLISH's PUBACK with it, and clients
    /// read it as a refusal.
    PacketTooLarge,
}

/// PUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    pub pkid: u16,
    pub reason: PubAckReason,
}

/// One topic filter of SUBSCRIBE (v5 subscription options are read as defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub path: String,
    pub qos: QoS,
}

/// SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<SubscribeFilter>,
    /// v5 Subscription Identifier.
    pub subscription_id: Option<usize>,
}

/// The answer to one filter of SUBSCRIBE. A failure is 0x80 in both versions; v5's
/// specific failure codes are read as `Failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubAckCode {
    Granted(QoS),
    Failure,
}

/// SUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub codes: Vec<SubAckCode>,
}

/// UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

/// UNSUBACK. v5 carries one reason per filter: `filters` successes are written, and on
/// reading, `filters` counts the reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub filters: usize,
}

/// DISCONNECT with its v5 reason code; v3.1.1 has none and reads as normal (0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: DisconnectReason,
}

/// The v5 DISCONNECT reason codes, as rumqttc names them.
pub use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as DisconnectReason;

impl Disconnect {
    pub fn normal() -> Self {
        Self { reason: DisconnectReason::NormalDisconnection }
    }
}
