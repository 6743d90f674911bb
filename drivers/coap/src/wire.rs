//! The CoAP message format on top of coap-lite: decoding a datagram with the checks RFC 7252
//! §3 asks for beyond what coap-lite does, encoding answers, the Block1/Block2 option value
//! (RFC 7959 §2.2) and the Content-Format numbers the gateway maps to MIME types.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

/// Drogue's option carrying `Basic base64(device@app:password)`.
pub const AUTH_OPTION: u16 = 4209;
/// Drogue's option carrying the command name in a 2.05 answer.
pub const COMMAND_OPTION: u16 = 4210;

/// The options this endpoint understands. Any other critical (odd-numbered) option in a
/// request is answered 4.02 Bad Option, as RFC 7252 §5.4.1 requires.
const KNOWN_OPTIONS: [u16; 12] = [
    3,  // Uri-Host
    4,  // ETag
    7,  // Uri-Port
    11, // Uri-Path
    12, // Content-Format
    15, // Uri-Query
    17, // Accept
    23, // Block2
    27, // Block1
    28, // Size2
    60, // Size1
    AUTH_OPTION,
];

/// Why a datagram is not a CoAP message this endpoint can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than 4 bytes, or a version other than 1: ignored silently (RFC 7252 §3).
    NotCoap,
    /// A CoAP header, but the rest does not parse: a CON gets a Reset.
    Format { con: bool, message_id: u16 },
}

/// Decodes a datagram. The header is checked first so that a message whose options do not
/// parse can still be rejected by its message id.
pub fn decode(datagram: &[u8]) -> Result<Packet, Malformed> {
    if datagram.len() < 4 || datagram[0] >> 6 != 1 {
        return Err(Malformed::NotCoap);
    }
    let con = (datagram[0] >> 4) & 0b11 == 0;
    let message_id = u16::from_be_bytes([datagram[2], datagram[3]]);
    let format = Malformed::Format { con, message_id };
    let tkl = usize::from(datagram[0] & 0x0f);
    if tkl > 8 {
        return Err(format);
    }
    let packet = Packet::from_bytes(datagram).map_err(|_| format)?;
    match packet.header.code {
        // An empty message is the 4-byte header alone (RFC 7252 §4.1).
        MessageClass::Empty if datagram.len() != 4 => Err(format),
        MessageClass::Reserved(_) => Err(format),
        _ => Ok(packet),
    }
}

/// The first unknown critical option of a request, if any.
pub fn unknown_critical_option(packet: &Packet) -> Option<u16> {
    packet.options().map(|(n, _)| *n).find(|n| n % 2 == 1 && !KNOWN_OPTIONS.contains(n))
}

/// The values of an option by number.
pub fn option_values(packet: &Packet, number: u16) -> impl Iterator<Item = &Vec<u8>> {
    packet.get_option(CoapOption::from(number)).into_iter().flatten()
}

/// An unsigned option value (network byte order, leading zeros stripped), as RFC 7252 §3.2
/// encodes uint options; `None` when longer than `max_len` bytes.
pub fn uint_value(value: &[u8], max_len: usize) -> Option<u32> {
    if value.len() > max_len || value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Encodes a uint option value in the fewest bytes.
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// A Block1 or Block2 option value: block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// Block size is `2^(szx + 4)`; 0..=6 (7 is BERT, for CoAP over TCP only).
    pub szx: u8,
}

impl Block {
    /// Parses an option value; `None` for more than 3 bytes or SZX 7.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let raw = uint_value(value, 3)?;
        let szx = u8::try_from(raw & 0x7).ok()?;
        if szx == 7 {
            return None;
        }
        Some(Self { num: raw >> 4, more: raw & 0x8 != 0, szx })
    }

    pub fn encode(self) -> Vec<u8> {
        encode_uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }

    pub fn size(self) -> usize {
        1 << (usize::from(self.szx) + 4)
    }

    /// The SZX of a block size that is a power of two in 16..=1024.
    pub fn szx_of(size: u16) -> u8 {
        u8::try_from(size.clamp(16, 1024).trailing_zeros().saturating_sub(4)).unwrap_or(6)
    }

    /// Where this block starts in the body (`None` on overflow).
    pub fn offset(self) -> Option<usize> {
        usize::try_from(self.num).ok()?.checked_mul(self.size())
    }
}

/// Content-Format numbers and their MIME types (the CoAP Content-Formats registry, the
/// entries sensors use).
const FORMATS: [(u16, &str); 18] = [
    (0, "text/plain; charset=utf-8"),
    (40, "application/link-format"),
    (41, "application/xml"),
    (42, "application/octet-stream"),
    (47, "application/exi"),
    (50, "application/json"),
    (51, "application/json-patch+json"),
    (52, "application/merge-patch+json"),
    (60, "application/cbor"),
    (61, "application/cwt"),
    (62, "application/multipart-core"),
    (63, "application/cbor-seq"),
    (110, "application/senml+json"),
    (111, "application/sensml+json"),
    (112, "application/senml+cbor"),
    (113, "application/sensml+cbor"),
    (11542, "application/vnd.oma.lwm2m+tlv"),
    (11543, "application/vnd.oma.lwm2m+json"),
];

/// The MIME type of a Content-Format number, if registered here.
pub fn content_type_of(format: u16) -> Option<&'static str> {
    FORMATS.iter().find(|(n, _)| *n == format).map(|(_, t)| *t)
}

/// The Content-Format number of a MIME type (parameters ignored except for `text/plain`, which
/// maps to 0 whatever its charset).
pub fn format_of(content_type: &str) -> Option<u16> {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    FORMATS.iter().find(|(_, t)| t.split(';').next().unwrap_or("") == essence).map(|(n, _)| *n)
}

/// A message the endpoint sends.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: MessageType,
    pub code: MessageClass,
    pub message_id: u16,
    pub token: Vec<u8>,
    /// Options in any order (encoded sorted by number).
    pub options: Vec<(u16, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl Reply {
    pub fn response(code: ResponseType) -> Self {
        Self {
            kind: MessageType::Acknowledgement,
            code: MessageClass::Response(code),
            message_id: 0,
            token: Vec::new(),
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// An empty ACK or Reset for `message_id`.
    pub fn empty(kind: MessageType, message_id: u16) -> Self {
        Self {
            kind,
            code: MessageClass::Empty,
            message_id,
            token: Vec::new(),
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    pub fn option(mut self, number: u16, value: Vec<u8>) -> Self {
        self.options.push((number, value));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut packet = Packet::new();
        packet.header.set_version(1);
        packet.header.set_type(self.kind);
        packet.header.code = self.code;
        packet.header.message_id = self.message_id;
        // tokens come from decoded requests: at most 8 bytes
        let token = self.token.iter().take(8).copied().collect();
        packet.set_token(token);
        let mut options = self.options.clone();
        options.sort_by_key(|(n, _)| *n);
        for (number, value) in options {
            packet.add_option(CoapOption::from(number), value);
        }
        packet.payload.clone_from(&self.payload);
        // Without a size limit encoding cannot fail; an empty datagram is never sent.
        packet.to_bytes_unlimited().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_short_and_wrong_version_silently() {
        assert_eq!(decode(&[]).unwrap_err(), Malformed::NotCoap);
        assert_eq!(decode(&[0x40, 0x02]).unwrap_err(), Malformed::NotCoap);
        assert_eq!(decode(&[0x80, 0x02, 0, 1]).unwrap_err(), Malformed::NotCoap);
    }

    #[test]
    fn bad_options_or_token_are_format_errors_with_the_message_id() {
        // CON POST, token length 9
        assert_eq!(
            decode(&[0x49, 0x02, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap_err(),
            Malformed::Format { con: true, message_id: 0x1234 }
        );
        // option delta 15 (reserved) in a NON
        assert_eq!(
            decode(&[0x50, 0x02, 0, 7, 0xf1, 0]).unwrap_err(),
            Malformed::Format { con: false, message_id: 7 }
        );
        // empty message with a payload marker
        assert!(matches!(decode(&[0x40, 0x00, 0, 1, 0xff]), Err(Malformed::Format { .. })));
        // reserved class 1.xx
        assert!(matches!(decode(&[0x40, 0x21, 0, 1]), Err(Malformed::Format { .. })));
    }

    #[test]
    fn block_values_round_trip_and_sizes() {
        let b = Block { num: 5, more: true, szx: 6 };
        assert_eq!(Block::parse(&b.encode()), Some(b));
        assert_eq!(b.size(), 1024);
        assert_eq!(b.offset(), Some(5120));
        assert_eq!(Block::parse(&[]), Some(Block { num: 0, more: false, szx: 0 }));
        assert_eq!(Block::parse(&[0x0f]), None, "SZX 7 is BERT");
        assert_eq!(Block::parse(&[1, 2, 3, 4]), None);
        assert_eq!(Block::szx_of(1024), 6);
        assert_eq!(Block::szx_of(16), 0);
        assert_eq!(Block::szx_of(64), 2);
    }

    #[test]
    fn content_formats_map_both_ways() {
        assert_eq!(content_type_of(50), Some("application/json"));
        assert_eq!(content_type_of(60), Some("application/cbor"));
        assert_eq!(content_type_of(9999), None);
        assert_eq!(format_of("application/json; charset=utf-8"), Some(50));
        assert_eq!(format_of("text/plain"), Some(0));
        assert_eq!(format_of("Application/CBOR"), Some(60));
        assert_eq!(format_of("application/x-unknown"), None);
    }

    #[test]
    fn replies_encode_and_decode() {
        let bytes = Reply::response(ResponseType::Content)
            .option(COMMAND_OPTION, b"set".to_vec())
            .option(12, encode_uint(50))
            .encode();
        let p = decode(&bytes).unwrap();
        assert_eq!(p.header.code, MessageClass::Response(ResponseType::Content));
        assert_eq!(option_values(&p, COMMAND_OPTION).next().unwrap(), b"set");
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(256), vec![1, 0]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn block_round_trips(num in 0u32..(1 << 20), more: bool, szx in 0u8..7) {
            let b = Block { num, more, szx };
            prop_assert_eq!(Block::parse(&b.encode()), Some(b));
        }
    }
}
