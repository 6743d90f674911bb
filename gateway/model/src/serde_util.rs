//! Serde helpers and value types shared by every crate's config section.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

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
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ModelError::InvalidSize { value: s.to_owned(), reason };
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

/// A `Duration` written as humantime text: `"30s"`, `"1m 30s"`, `"250ms"`.
///
/// Use as `#[serde(with = "gw_model::serde_util::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like \"30s\", \"5m\" or \"250ms\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super::duration")]
        d: Duration,
    }

    #[test]
    fn durations_round_trip_as_text() {
        let t: T = serde_json::from_str(r#"{"d":"1m 30s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(90));
        let back: T = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let err = serde_json::from_str::<T>(r#"{"d":"soon"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid duration \"soon\"") && err.contains("30s"), "{err}");
    }
}
