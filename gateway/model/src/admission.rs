//! What the configured uplink can carry, checked before a message is acknowledged: a sensor
//! gets a refusal it can act on (413 / 4.13 / PUBACK 0x95, or 400 / 4.00 / 0x99 for metadata)
//! instead of an acknowledgement for a record the cloud can never take.
//!
//! Metadata becomes an HTTP header (content type), a query value or CloudEvent attribute
//! (data schema), or a path (suffix) upstream; control characters or overlong values in any
//! of them would fail later, in the uplink, after the sensor was told the message is safe.

use crate::{IngestError, Telemetry};

/// The longest content type taken (RFC 6838 limits each part to 127 characters).
pub const MAX_CONTENT_TYPE: usize = 256;
/// The longest data schema taken (a URI).
pub const MAX_DATA_SCHEMA: usize = 1024;
/// The longest suffix taken (path segments after the channel).
pub const MAX_SUFFIX: usize = 1024;

/// What one record may be for the uplink it will travel on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkLimits {
    /// The largest payload the uplink delivers.
    pub max_payload: usize,
    /// For an uplink that sends one MQTT PUBLISH of `<channel>/<device>` per record: the
    /// largest packet the broker takes (fixed header, topic, packet id and payload).
    pub max_packet: Option<usize>,
}

impl UplinkLimits {
    /// No limit but the payload's.
    pub const fn payload(max_payload: usize) -> Self {
        Self { max_payload, max_packet: None }
    }

    /// Whether `t` can travel on this uplink; the refusal names what is wrong.
    pub fn admit(&self, t: &Telemetry) -> Result<(), IngestError> {
        check_metadata(t)?;
        let len = t.payload.len();
        if len > self.max_payload {
            return Err(IngestError::TooLarge(format!(
                "{len} bytes is more than the uplink delivers ({} bytes)",
                self.max_payload
            )));
        }
        if let Some(max) = self.max_packet {
            let size = publish_size(t);
            if size > max {
                return Err(IngestError::TooLarge(format!(
                    "a {size}-byte MQTT packet is more than the cloud takes ({max} bytes)"
                )));
            }
        }
        Ok(())
    }
}

/// The size of the QoS 1 PUBLISH of `<channel>/<device>` carrying `t`.
pub fn publish_size(t: &Telemetry) -> usize {
    let topic = t.channel.as_str().len() + 1 + t.device.as_str().len();
    let remaining = 2 + topic + 2 + t.payload.len();
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Content type, data schema and suffix: printable, bounded, and (for the content type) one
/// `type/subtype` with optional parameters.
pub fn check_metadata(t: &Telemetry) -> Result<(), IngestError> {
    if let Some(ct) = &t.content_type {
        check_text("content type", ct, MAX_CONTENT_TYPE)?;
        let essence = ct.split(';').next().unwrap_or("").trim();
        let valid = essence.split_once('/').is_some_and(|(ty, sub)| token(ty) && token(sub));
        if !valid {
            return Err(IngestError::Invalid(format!(
                "content type {:?} is not a type/subtype",
                ct
            )));
        }
    }
    if let Some(schema) = &t.data_schema {
        check_text("data schema", schema, MAX_DATA_SCHEMA)?;
    }
    if let Some(suffix) = &t.suffix {
        check_text("suffix", suffix, MAX_SUFFIX)?;
        if let Some(dot) = suffix.split('/').find(|s| crate::ids::is_dot_segment(s)) {
            return Err(IngestError::Invalid(format!(
                "suffix {suffix:?} holds the dot segment {dot:?}, which would leave the path"
            )));
        }
    }
    Ok(())
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), IngestError> {
    if value.len() > max {
        return Err(IngestError::Invalid(format!(
            "{what} of {} bytes is longer than {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(IngestError::Invalid(format!("{what} {value:?} holds control characters")));
    }
    Ok(())
}

/// An RFC 6838 restricted name: letters, digits and `!#$&-^_.+`.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Timestamp;

    fn record(payload: usize) -> Telemetry {
        Telemetry::new(
            "app".parse().unwrap(),
            "sensor1".parse().unwrap(),
            "temp".parse().unwrap(),
            Timestamp::from_millis(0),
            Bytes::from(vec![b'x'; payload]),
        )
    }

    #[test]
    fn refuses_a_payload_above_the_uplinks_limit() {
        let limits = UplinkLimits::payload(64 * 1024);
        assert_eq!(limits.admit(&record(64 * 1024)), Ok(()));
        assert!(matches!(limits.admit(&record(64 * 1024 + 1)), Err(IngestError::TooLarge(_))));
    }

    #[test]
    fn counts_the_topic_against_an_mqtt_packet_limit() {
        let limits = UplinkLimits { max_payload: usize::MAX, max_packet: Some(16 * 1024) };
        // 1 + 2 (length) + 2 + "temp/sensor1" (12) + 2 = 19 bytes around the payload
        assert_eq!(publish_size(&record(100)), 1 + 1 + 2 + 12 + 2 + 100);
        assert_eq!(limits.admit(&record(16 * 1024 - 19)), Ok(()));
        assert!(matches!(limits.admit(&record(16 * 1024 - 18)), Err(IngestError::TooLarge(_))));
    }

    #[test]
    fn refuses_metadata_that_cannot_become_a_header_or_path() {
        let limits = UplinkLimits::payload(1000);
        let mut t = record(1);
        for bad in ["text/plain\r\nx-evil: 1", "text/plain\n", "json", "", "a/b\u{7f}"] {
            t.content_type = Some(bad.into());
            assert!(matches!(limits.admit(&t), Err(IngestError::Invalid(_))), "{bad:?}");
        }
        for good in ["application/json", "text/plain; charset=utf-8", "application/vnd.a+json"] {
            t.content_type = Some(good.into());
            assert_eq!(limits.admit(&t), Ok(()), "{good:?}");
        }
        t.content_type = None;
        t.data_schema = Some("urn:x\u{0}".into());
        assert!(matches!(limits.admit(&t), Err(IngestError::Invalid(_))));
        t.data_schema = Some("x".repeat(MAX_DATA_SCHEMA + 1));
        assert!(matches!(limits.admit(&t), Err(IngestError::Invalid(_))));
        t.data_schema = None;
        t.suffix = Some("a/b\tc".into());
        assert!(matches!(limits.admit(&t), Err(IngestError::Invalid(_))));
        for escape in ["..", "a/../../admin", ".", "x/%2e%2e", "%2E./y", "a/.%2e"] {
            t.suffix = Some(escape.into());
            assert!(matches!(limits.admit(&t), Err(IngestError::Invalid(_))), "{escape:?}");
        }
        t.suffix = Some("a/b.c/..d".into());
        assert_eq!(limits.admit(&t), Ok(()), "dots inside a segment are fine");
    }
}
