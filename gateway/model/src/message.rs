//! What flows through the gateway: telemetry from sensors upstream, commands from the cloud
//! down to sensors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{AppId, Channel, CommandName, DeviceId};

/// Milliseconds since the Unix epoch. Time comes into the model as a value; the model never
/// reads a clock itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

/// 2024-01-01T00:00:00Z: a wall clock earlier than this was never set (see
/// [`Timestamp::is_trusted`]).
pub const TRUSTED_SINCE_MS: u64 = 1_704_067_200_000;

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// A wall-clock time; times before 1970 become 0.
    pub fn from_system(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Whether this time can come from a clock that was set: not before 2024-01-01. A board
    /// without a real-time clock starts in 1970 until NTP sets it; readings stamped then keep
    /// that mark, and uplinks send no receive time for them rather than a wrong one.
    pub const fn is_trusted(self) -> bool {
        self.0 >= TRUSTED_SINCE_MS
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(add))
    }
}

/// Whether a MIME type is JSON: `application/json`, `text/json` or `*/*+json`, parameters
/// and case ignored. Drogue validates such bodies (406 when they do not parse).
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// One message a sensor handed the gateway, on its way to the cloud as that sensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    pub app: AppId,
    pub device: DeviceId,
    pub channel: Channel,
    /// Path segments after the channel (`/v1/temp/a/b` gives `a/b`); kept as metadata.
    pub suffix: Option<String>,
    /// MIME type as the sensor sent it (HTTP `Content-Type`, MQTT v5 content type, CoAP
    /// Content-Format).
    pub content_type: Option<String>,
    /// Becomes the CloudEvent `dataschema` upstream.
    pub data_schema: Option<String>,
    pub received_at: Timestamp,
    pub payload: Bytes,
    /// How long the sensor waits for a command in the answer to this message (HTTP or CoAP
    /// `ct=`), counted from `received_at`. An uplink that can wait upstream (Drogue HTTP
    /// `ct=`) waits for what is left of it. Records written before this field existed decode
    /// with `None` (gw-store reads both layouts).
    pub command_wait: Option<Duration>,
}

impl Telemetry {
    /// A message with no suffix, content type, data schema or command wait; set those fields
    /// as needed.
    pub fn new(
        app: AppId,
        device: DeviceId,
        channel: Channel,
        received_at: Timestamp,
        payload: Bytes,
    ) -> Self {
        Self {
            app,
            device,
            channel,
            suffix: None,
            content_type: None,
            data_schema: None,
            received_at,
            payload,
            command_wait: None,
        }
    }
}

/// A command for a device, from the cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub app: AppId,
    pub device: DeviceId,
    pub name: CommandName,
    pub content_type: Option<String>,
    pub payload: Bytes,
    pub created_at: Timestamp,
    /// After this instant the command is dropped undelivered (and counted as expired).
    pub expires_at: Option<Timestamp>,
}

impl Command {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn telemetry() -> impl Strategy<Value = Telemetry> {
        (
            "[a-z0-9]{1,10}",
            "[a-zA-Z0-9_-]([a-zA-Z0-9 _-]{0,10}[a-z])?",
            "[a-z]{1,10}",
            proptest::option::of("[a-z/]{1,10}"),
            proptest::option::of("[a-z]+/[a-z+]+"),
            proptest::option::of("\\PC{0,20}"),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of(0u64..100_000),
        )
            .prop_map(|(app, dev, ch, suffix, ct, ds, ts, payload, wait)| Telemetry {
                app: AppId::new(app).unwrap(),
                device: DeviceId::new(dev).unwrap(),
                channel: Channel::new(ch).unwrap(),
                suffix,
                content_type: ct,
                data_schema: ds,
                received_at: Timestamp::from_millis(ts),
                payload: Bytes::from(payload),
                command_wait: wait.map(Duration::from_millis),
            })
    }

    proptest! {
        #[test]
        fn telemetry_round_trips_through_postcard(t in telemetry()) {
            let bytes = postcard::to_stdvec(&t).unwrap();
            let back: Telemetry = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, t);
        }

        #[test]
        fn postcard_decode_of_garbage_is_an_error_or_valid(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            // decoding re-validates every id, so whatever decodes is a well-formed record
            if let Ok(t) = postcard::from_bytes::<Telemetry>(&bytes) {
                prop_assert!(AppId::new(t.app.as_str()).is_ok());
                prop_assert!(Channel::new(t.channel.as_str()).is_ok());
            }
        }
    }

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(is_json_content_type("text/json"));
        assert!(!is_json_content_type("application/cbor"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type(""));
    }

    #[test]
    fn command_expiry_is_inclusive() {
        let c = Command {
            app: AppId::new("a").unwrap(),
            device: DeviceId::new("d").unwrap(),
            name: CommandName::new("set").unwrap(),
            content_type: None,
            payload: Bytes::new(),
            created_at: Timestamp::from_millis(0),
            expires_at: Some(Timestamp::from_millis(1000)),
        };
        assert!(!c.is_expired(Timestamp::from_millis(999)));
        assert!(c.is_expired(Timestamp::from_millis(1000)));
    }

    #[test]
    fn timestamp_converts_from_system_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_system(t).as_millis(), 1_700_000_000_123);
        assert_eq!(Timestamp::from_system(t).to_system(), t);
        assert_eq!(
            Timestamp::from_millis(5).saturating_add(Duration::from_secs(1)).as_millis(),
            1005
        );
    }
}
