//! Framing: the protocol-version sniffer for the first CONNECT, and [`Codec`], which reads
//! and writes [`Packet`]s of one version over a `BytesMut` with a maximum packet size.

use bytes::BytesMut;

use crate::{
    CodecError,
    packet::{Packet, Version},
    v4, v5,
};

/// The first byte of CONNECT (type 1, flags 0).
const CONNECT_BYTE: u8 = 0x10;

/// Reads and writes packets of one protocol version. `max_packet_size` bounds the whole
/// size (fixed header included, as MQTT 5 counts it) of every packet read or written; a
/// longer incoming packet is refused from its fixed header, before its body is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    version: Version,
    max_packet_size: usize,
}

impl Codec {
    pub fn new(version: Version, max_packet_size: usize) -> Self {
        Self { version, max_packet_size }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Takes one packet off the front of `buf`. `Ok(None)`: not a whole packet yet (nothing
    /// is consumed). A malformed packet is an error; the connection cannot continue after it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let Some(len) = frame_len(buf, self.max_packet_size)? else { return Ok(None) };
        let mut frame = buf.split_to(len);
        if connect_flags(&frame).is_some_and(|flags| flags & 0x01 != 0) {
            // MQTT-3.1.2-3 (3.1.1) and 3.1.2.3 (5): the server must treat it as malformed
            return Err(CodecError::Malformed {
                version: self.version,
                reason: "reserved CONNECT flag set".into(),
            });
        }
        let packet = match self.version {
            Version::V311 => v4::read(&mut frame)?,
            Version::V5 => v5::read(&mut frame)?,
        };
        if !frame.is_empty() {
            return Err(CodecError::Malformed {
                version: self.version,
                reason: format!("{} bytes after {}", frame.len(), packet.name()),
            });
        }
        Ok(Some(packet))
    }

    /// Appends `packet` to `buf`. Fails without writing if the packet is larger than the
    /// maximum or cannot be expressed in this version (a v5 property or failure reason on
    /// 3.1.1).
    pub fn encode(&self, packet: &Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
        let mark = buf.len();
        let result = match self.version {
            Version::V311 => v4::write(packet, buf, self.max_packet_size),
            Version::V5 => v5::write(packet, buf, self.max_packet_size),
        };
        if result.is_err() {
            buf.truncate(mark);
        }
        result
    }
}

/// The length of the packet at the front of `buf` from its fixed header, once all of it is
/// in `buf`; an error if the header is malformed or announces more than `max` bytes.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut remaining = 0usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        remaining |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err(CodecError::MalformedHeader { reason: "remaining length over 4 bytes" });
        }
    }
    let size = at + remaining;
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// The connect flags of the CONNECT at the front of `frame` (a whole frame), if it is one:
/// after the fixed header, the protocol name and the protocol level.
fn connect_flags(frame: &[u8]) -> Option<u8> {
    if *frame.first()? != CONNECT_BYTE {
        return None;
    }
    let header = 1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_len = usize::from(u16::from_be_bytes([*frame.get(header)?, *frame.get(header + 1)?]));
    frame.get(header + 2 + name_len + 1).copied()
}

/// Reads the protocol version from the start of a connection, which must be a CONNECT:
/// its protocol name and level (4 = 3.1.1, 5 = 5). `Ok(None)`: more bytes are needed.
/// Any other first packet, protocol name or level is an error; for
/// [`CodecError::UnsupportedProtocol`] a server answers with a 3.1.1 CONNACK "unacceptable
/// protocol version".
pub fn sniff_version(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first != CONNECT_BYTE {
        return Err(CodecError::NotConnect { first_byte: first });
    }
    // remaining length: 1 to 4 bytes, 7 bits each
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err(CodecError::MalformedHeader { reason: "remaining length over 4 bytes" });
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(at), buf.get(at + 1)) else { return Ok(None) };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Err(CodecError::MalformedHeader { reason: "protocol name too long" });
    }
    let name_start = at + 2;
    let Some(&level) = buf.get(name_start + name_len) else { return Ok(None) };
    let name = &buf[name_start..name_start + name_len];
    match Version::from_level(level) {
        Some(v) if name == b"MQTT" => Ok(Some(v)),
        _ => Err(CodecError::UnsupportedProtocol {
            name: String::from_utf8_lossy(name).into_owned(),
            level,
        }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::packet::{
        ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Login, PubAck, PubAckReason,
        Publish, QoS, SubAck, SubAckCode, Subscribe, SubscribeFilter, Will,
    };

    fn encoded(codec: Codec, p: &Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        codec.encode(p, &mut buf).unwrap();
        buf
    }

    fn connect(v: Version) -> Connect {
        let mut c = Connect::new(v, "sensor1@app");
        c.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
        c.will = Some(Will {
            topic: "lwt".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            content_type: None,
        });
        c
    }

    #[test]
    fn a_reserved_connect_flag_is_malformed_in_both_versions() {
        for v in [Version::V311, Version::V5] {
            let codec = Codec::new(v, 1024);
            let good = encoded(codec, &Packet::Connect(Connect::new(v, "a")));
            assert!(matches!(codec.decode(&mut good.clone()), Ok(Some(Packet::Connect(_)))));
            let mut bad = good.clone();
            bad[9] |= 0x01; // the connect flags follow "MQTT" and the level
            assert!(
                matches!(codec.decode(&mut bad), Err(CodecError::Malformed { ref reason, .. }) if reason.contains("reserved")),
                "{v:?}"
            );
        }
    }

    #[test]
    fn a_v5_receive_maximum_of_0_is_malformed() {
        let codec = Codec::new(Version::V5, 1024);
        // CONNECT "MQTT" 5, clean start, keep alive 60, properties: Receive Maximum (0x21) 0
        let mut buf = BytesMut::from(
            &[0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 0, 0, 1, b'a'][..],
        );
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Malformed { ref reason, .. }) if reason.contains("Receive Maximum")
        ));
        let mut ok = BytesMut::from(
            &[0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 5, 0, 1, b'a'][..],
        );
        assert!(matches!(codec.decode(&mut ok), Ok(Some(Packet::Connect(_)))));
    }

    #[test]
    fn sniffs_both_versions_from_a_partial_connect() {
        for v in [Version::V311, Version::V5] {
            let buf = encoded(Codec::new(v, 1024), &Packet::Connect(connect(v)));
            // the level is byte 8 for a one-byte remaining length
            assert_eq!(sniff_version(&buf[..8]).unwrap(), None);
            assert_eq!(sniff_version(&buf[..9]).unwrap(), Some(v));
            assert_eq!(sniff_version(&buf).unwrap(), Some(v));
        }
    }

    #[test]
    fn sniff_refuses_other_first_packets_and_protocols() {
        assert!(matches!(
            sniff_version(&[0x30, 0x00]),
            Err(CodecError::NotConnect { first_byte: 0x30 })
        ));
        // MQTT 3.1: "MQIsdp" level 3
        let v31 = [0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert!(matches!(
            sniff_version(&v31),
            Err(CodecError::UnsupportedProtocol { level: 3, .. })
        ));
        let v6 = [0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 6];
        assert!(matches!(
            sniff_version(&v6),
            Err(CodecError::UnsupportedProtocol { level: 6, .. })
        ));
        assert!(sniff_version(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert_eq!(sniff_version(&[]).unwrap(), None);
        assert_eq!(sniff_version(&[0x10, 0x80]).unwrap(), None);
    }

    #[test]
    fn decodes_packets_split_at_any_byte() {
        for v in [Version::V311, Version::V5] {
            let codec = Codec::new(v, 1024);
            let mut p = Publish::new("temp", QoS::AtLeastOnce, Bytes::from_static(b"{\"t\":1}"));
            p.pkid = 7;
            let whole = encoded(codec, &Packet::Publish(p.clone()));
            for cut in 0..whole.len() {
                let mut buf = BytesMut::from(&whole[..cut]);
                assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed");
                buf.extend_from_slice(&whole[cut..]);
                assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Publish(p.clone())));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn refuses_oversized_packets_from_the_header() {
        for v in [Version::V311, Version::V5] {
            let codec = Codec::new(v, 16);
            // only the fixed header of a 1000-byte PUBLISH has arrived
            let mut buf = BytesMut::from(&[0x30u8, 0xe8, 0x07][..]);
            assert!(matches!(codec.decode(&mut buf), Err(CodecError::TooLarge { size: 1003, .. })));
            let big = Packet::Publish(Publish::new("t", QoS::AtMostOnce, vec![0u8; 64]));
            let mut out = BytesMut::from(&b"keep"[..]);
            assert!(matches!(codec.encode(&big, &mut out), Err(CodecError::TooLarge { .. })));
            assert_eq!(&out[..], b"keep");
        }
    }

    #[test]
    fn v5_reasons_and_properties_are_kept() {
        let codec = Codec::new(Version::V5, 1024);
        let mut p = Publish::new("temp", QoS::AtLeastOnce, Bytes::from_static(b"x"));
        p.pkid = 1;
        p.content_type = Some("application/json".into());
        for packet in [
            Packet::Publish(p),
            Packet::PubAck(PubAck { pkid: 1, reason: PubAckReason::NotAuthorized }),
            Packet::ConnAck(ConnAck::new(ConnectCode::BadUserNamePassword)),
            Packet::Disconnect(Disconnect { reason: DisconnectReason::KeepAliveTimeout }),
            Packet::ConnAck(ConnAck {
                max_packet_size: Some(1024),
                receive_max: Some(8),
                max_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                ..ConnAck::new(ConnectCode::Success)
            }),
        ] {
            let mut buf = encoded(codec, &packet);
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(packet.clone()),
                "{buf:x?} {packet:?}"
            );
        }
        // on the wire: PUBACK reason 0x87, CONNACK reason 0x86
        let buf = encoded(
            codec,
            &Packet::PubAck(PubAck { pkid: 1, reason: PubAckReason::NotAuthorized }),
        );
        assert_eq!(buf[4], 0x87);
        let buf = encoded(codec, &Packet::ConnAck(ConnAck::new(ConnectCode::BadUserNamePassword)));
        assert_eq!(buf[3], 0x86);
    }

    #[test]
    fn v311_codes_on_the_wire() {
        let codec = Codec::new(Version::V311, 1024);
        let buf = encoded(codec, &Packet::ConnAck(ConnAck::new(ConnectCode::BadUserNamePassword)));
        assert_eq!(&buf[..], [0x20, 0x02, 0x00, 0x04]);
        let sub = SubAck {
            pkid: 3,
            codes: vec![SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure],
        };
        assert_eq!(&encoded(codec, &Packet::SubAck(sub))[..], [0x90, 0x04, 0, 3, 0x00, 0x80]);
        let refused = Packet::PubAck(PubAck { pkid: 1, reason: PubAckReason::NotAuthorized });
        assert!(matches!(
            codec.encode(&refused, &mut BytesMut::new()),
            Err(CodecError::NotRepresentable { .. })
        ));
    }

    #[test]
    fn v5_short_disconnect_and_puback_are_read() {
        let codec = Codec::new(Version::V5, 1024);
        let mut buf = BytesMut::from(&[0xE0u8, 0x00, 0x40, 0x02, 0x00, 0x05][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Disconnect(Disconnect::normal())));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Packet::PubAck(PubAck { pkid: 5, reason: PubAckReason::Success }))
        );
    }

    #[test]
    fn connect_of_the_other_version_is_refused() {
        let v5 = encoded(Codec::new(Version::V5, 1024), &Packet::Connect(connect(Version::V5)));
        assert!(Codec::new(Version::V311, 1024).decode(&mut v5.clone()).is_err());
        let v4 = encoded(Codec::new(Version::V311, 1024), &Packet::Connect(connect(Version::V311)));
        assert!(Codec::new(Version::V5, 1024).decode(&mut v4.clone()).is_err());
    }

    #[test]
    fn subscribe_with_identifier_on_v5() {
        let codec = Codec::new(Version::V5, 1024);
        let s = Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: vec![SubscribeFilter { path: "command/inbox/#".into(), qos: QoS::AtMostOnce }],
            subscription_id: Some(4),
        });
        assert_eq!(codec.decode(&mut encoded(codec, &s)).unwrap(), Some(s));
    }
}
