//! Serde helpers shared by every crate's config section.

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
