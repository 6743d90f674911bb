//! The `[store]` section of the daemon's config, owned by this crate.
//!
//! ```toml
//! [store]
//! max_bytes = "256MiB"      # "1GiB", "500kB", or a plain integer of bytes
//! when_full = "reject"      # reject | drop-oldest
//! sync = "always"           # always (ack after fdatasync) | interval (ack after write)
//! sync_interval = "1s"      # with sync = "interval": how often to fdatasync
//! max_age = "0s"            # drop records waiting longer than this; 0s: keep them all
//! max_lag = "2s"            # flow control while the cloud is up; 0s: none
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Smallest accepted `max_bytes`: eight segments of 8 KiB.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;

/// The `[store]` config section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Upper bound of the outbox's segment files on disk.
    pub max_bytes: ByteSize,
    /// What `append` does when the outbox is full.
    pub when_full: WhenFull,
    /// When a message counts as committed.
    pub sync: SyncPolicy,
    /// With `sync = "interval"`: how often the written data is fdatasync'd.
    #[serde(with = "gw_model::serde_util::duration")]
    pub sync_interval: Duration,
    /// Records that waited longer than this since the gateway received them are dropped
    /// (counted per device as `too_old`). `0s` (the default): telemetry waits for the cloud
    /// as long as the quota lets it. Records of a device the cloud refuses have their own
    /// limit, `[cloud] parked_max_age`.
    #[serde(with = "gw_model::serde_util::duration")]
    pub max_age: Duration,
    /// Flow control while the cloud is reachable: when more records wait than the uplink
    /// forwards in this long (and at least [`MIN_LAG_RECORDS`]), and they keep growing, the
    /// sensors are slowed (MQTT reading pauses, CoAP 5.03 with Max-Age, HTTP 503 with
    /// Retry-After) until the backlog is back within it. While the cloud is unreachable
    /// nothing is slowed: store-and-forward takes everything up to `max_bytes`. `0s`: never.
    #[serde(with = "gw_model::serde_util::duration")]
    pub max_lag: Duration,
    /// Memory for the latest committed records, which the uplink takes from there instead of
    /// reading them back from their segments. A backlog larger than this (an outage, a slow
    /// cloud) and everything after a restart is read from disk. `0B`: always from disk.
    pub read_cache: ByteSize,
}

/// Flow control never starts for fewer records waiting than this, however slow the uplink.
pub const MIN_LAG_RECORDS: u64 = 1000;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::new(256 * 1024 * 1024),
            when_full: WhenFull::Reject,
            sync: SyncPolicy::Always,
            sync_interval: Duration::from_secs(1),
            max_age: Duration::ZERO,
            max_lag: Duration::from_secs(2),
            read_cache: ByteSize::new(4 * 1024 * 1024),
        }
    }
}

impl StoreConfig {
    /// Checks the values that serde cannot: a lower bound on `max_bytes`, a non-zero interval.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.max_bytes.bytes() < MIN_MAX_BYTES {
            return Err(StoreError::InvalidConfig {
                key: "max_bytes",
                reason: format!(
                    "{} is below the minimum of {}",
                    self.max_bytes,
                    ByteSize::new(MIN_MAX_BYTES)
                ),
            });
        }
        if self.sync == SyncPolicy::Interval && self.sync_interval.is_zero() {
            return Err(StoreError::InvalidConfig {
                key: "sync_interval",
                reason: "must be greater than zero with sync = \"interval\"".to_owned(),
            });
        }
        Ok(())
    }
}

/// What to do when the outbox is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// `append` fails with [`StoreError::QuotaExceeded`]; the sensor is told to retry later.
    Reject,
    /// The oldest unacknowledged records are dropped (and counted per device) to make room.
    DropOldest,
}

/// When a record counts as committed, i.e. when `append` resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// After fdatasync: survives power loss.
    Always,
    /// After `write()` reached the OS: survives a crash of gatewayd, not a power loss within
    /// `sync_interval`.
    Interval,
}

pub use gw_model::ByteSize;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sizes_with_units() {
        let cases = [
            ("256MiB", 256 << 20),
            ("1GiB", 1 << 30),
            ("500kB", 500_000),
            ("500 KB", 500_000),
            ("64KiB", 65_536),
            ("12", 12),
            ("7B", 7),
            ("2TiB", 2 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>().unwrap().bytes(), bytes, "{text}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_clear_errors() {
        let err = "12 parsecs".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("unknown unit") && err.contains("12 parsecs"), "{err}");
        let err = "MiB".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("whole number"), "{err}");
        let err = "1.5GiB".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
        let err = "99999999999TiB".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("64 bits"), "{err}");
        assert!("-5".parse::<ByteSize>().is_err());
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let text = toml::to_string(&StoreConfig::default()).unwrap();
        assert!(text.contains("max_bytes = \"256MiB\""), "{text}");
        assert!(text.contains("when_full = \"reject\""), "{text}");
        assert!(text.contains("sync = \"always\""), "{text}");
        assert!(text.contains("sync_interval = \"1s\""), "{text}");
        let back: StoreConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, StoreConfig::default());
    }

    #[test]
    fn reads_every_key() {
        let c: StoreConfig = toml::from_str(
            "max_bytes = 1048576\nwhen_full = \"drop-oldest\"\nsync = \"interval\"\nsync_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.max_bytes.bytes(), 1 << 20);
        assert_eq!(c.when_full, WhenFull::DropOldest);
        assert_eq!(c.sync, SyncPolicy::Interval);
        assert_eq!(c.sync_interval, Duration::from_millis(250));
        let empty: StoreConfig = toml::from_str("").unwrap();
        assert_eq!(empty, StoreConfig::default());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_naming_them() {
        let err = toml::from_str::<StoreConfig>("max_byte = \"1MiB\"").unwrap_err().to_string();
        assert!(err.contains("max_byte"), "{err}");
        let err = toml::from_str::<StoreConfig>("when_full = \"drop\"").unwrap_err().to_string();
        assert!(err.contains("drop-oldest"), "{err}");
        let err =
            toml::from_str::<StoreConfig>("max_bytes = \"1 furlong\"").unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
        let err =
            toml::from_str::<StoreConfig>("sync_interval = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn validate_rejects_tiny_quota_and_zero_interval() {
        let c = StoreConfig { max_bytes: ByteSize::new(1000), ..StoreConfig::default() };
        assert!(matches!(c.validate(), Err(StoreError::InvalidConfig { key: "max_bytes", .. })));
        let c = StoreConfig {
            sync: SyncPolicy::Interval,
            sync_interval: Duration::ZERO,
            ..StoreConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(StoreError::InvalidConfig { key: "sync_interval", .. })
        ));
        assert!(StoreConfig::default().validate().is_ok());
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<u64>()) {
            let size = ByteSize::new(bytes);
            prop_assert_eq!(size.to_string().parse::<ByteSize>().unwrap(), size);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,20}") {
            let _ = text.parse::<ByteSize>();
        }
    }
}
