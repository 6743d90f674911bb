//! The `[store]` section of the daemon's config, owned by this crate.
//!
//! ```toml
//! [store]
//! max_bytes = "256MiB"      # "1GiB", "500kB", or a plain integer of bytes
//! when_full = "reject"      # reject | drop-oldest
//! sync = "always"           # always (ack after fdatasync) | interval (ack after write)
//! sync_interval = "1s"      # with sync = "interval": how often to fdatasync
//! ```

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(256 * 1024 * 1024),
            when_full: WhenFull::Reject,
            sync: SyncPolicy::Always,
            sync_interval: Duration::from_secs(1),
        }
    }
}

impl StoreConfig {
    /// Checks the values that serde cannot: a lower bound on `max_bytes`, a non-zero interval.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.max_bytes.0 < MIN_MAX_BYTES {
            return Err(StoreError::InvalidConfig {
                key: "max_bytes",
                reason: format!(
                    "{} is below the minimum of {}",
                    self.max_bytes,
                    ByteSize(MIN_MAX_BYTES)
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

/// A number of bytes, written in config as `"256MiB"`, `"1GiB"`, `"500kB"` or a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

const UNITS: [(&str, u64); 11] = [
    ("B", 1),
    ("kB", 1000),
    ("KB", 1000),
    ("KiB", 1 << 10),
    ("MB", 1000 * 1000),
    ("MiB", 1 << 20),
    ("GB", 1000 * 1000 * 1000),
    ("GiB", 1 << 30),
    ("TB", 1000 * 1000 * 1000 * 1000),
    ("TiB", 1 << 40),
    ("", 1),
];

impl FromStr for ByteSize {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| StoreError::InvalidSize { value: s.to_owned(), reason };
        let text = s.trim();
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        if number.is_empty() {
            return Err(bad("expected a whole number followed by a unit such as MiB"));
        }
        let unit = unit.trim_start();
        let Some(&(_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(bad("unknown unit; use B, kB, KiB, MB, MiB, GB, GiB, TB or TiB"));
        };
        let number: u64 = number.parse().map_err(|_| bad("number too large"))?;
        number.checked_mul(factor).map(ByteSize).ok_or_else(|| bad("size does not fit in 64 bits"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, factor) in
            [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Durations as humantime text (`"1s"`, `"250ms"`).
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

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
