//! Validated names. Each is checked once when it is made from text, after which it is just a
//! string that is known to be good, shared: a clone (every message carries its device's and
//! application's names) is a reference count, not a copy.
//!
//! | type          | length     | characters                                                        |
//! |---------------|------------|-------------------------------------------------------------------|
//! | [`AppId`]     | 1..=63     | ASCII letters, digits, `-`, `_`, `.`; first and last a letter or digit |
//! | [`DeviceId`]  | 1..=256    | any Unicode except control characters and `/ + # @`; no leading or trailing space |
//! | [`Channel`]   | 1..=128    | ASCII letters, digits, `-`, `_`, `.`, `~`, `:`; not `.` or `..`    |
//! | [`CommandName`] | 1..=128  | as [`Channel`]                                                    |
//!
//! Why these sets: a device name becomes an MQTT topic level (`<channel>/<device>`,
//! `command/inbox/<device>/<cmd>`), so it cannot hold topic separators or wildcards, and `@`
//! separates it from the application in `device@app`. Drogue allows aliases such as
//! `CN=sensor1, O=Org`, so spaces, `=` and `,` are allowed inside a device name. Channels and
//! command names travel in URL paths, MQTT topics and CoAP options, so they keep to URL-safe
//! ASCII.

use std::{borrow::Borrow, fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// The rule one kind of name follows.
struct Rule {
    kind: &'static str,
    max: usize,
    allowed: &'static str,
    char_ok: fn(char) -> bool,
    /// First and last character must be ASCII alphanumeric.
    alnum_edges: bool,
    /// First and last character must not be whitespace.
    no_space_edges: bool,
    /// The name becomes a URL path segment upstream: `.` and `..` are refused.
    no_dot_segment: bool,
}

/// Whether `segment` is a URL dot segment, `.` or `..`, in the forms a URL parser resolves
/// (RFC 3986 §5.2.4 and the WHATWG URL standard, which also reads `%2e` as a dot).
pub fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    matches!(lower.as_str(), "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.")
}

fn check(rule: &Rule, value: &str) -> Result<(), ModelError> {
    if value.is_empty() {
        return Err(ModelError::Empty { kind: rule.kind });
    }
    if value.len() > rule.max {
        return Err(ModelError::TooLong { kind: rule.kind, len: value.len(), max: rule.max });
    }
    if let Some(ch) = value.chars().find(|c| !(rule.char_ok)(*c)) {
        return Err(ModelError::BadChar {
            kind: rule.kind,
            value: value.to_owned(),
            ch,
            allowed: rule.allowed,
        });
    }
    let first = value.chars().next();
    let last = value.chars().next_back();
    let edge_bad = |c: Option<char>| match c {
        Some(c) => {
            (rule.alnum_edges && !c.is_ascii_alphanumeric())
                || (rule.no_space_edges && c.is_whitespace())
        }
        None => false,
    };
    if edge_bad(first) || edge_bad(last) {
        return Err(ModelError::BadEdge { kind: rule.kind, value: value.to_owned() });
    }
    if rule.no_dot_segment && is_dot_segment(value) {
        return Err(ModelError::DotSegment { kind: rule.kind, value: value.to_owned() });
    }
    Ok(())
}

fn app_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A device (or account) name may hold `@`: an e-mail address is an account name of a
/// migratory application. Where a name and its application travel as one string, the last
/// `@` separates them when the first does not ([`crate::Identity::parse`]).
fn device_char(c: char) -> bool {
    !c.is_control() && !matches!(c, '/' | '+' | '#')
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':')
}

const APP: Rule = Rule {
    kind: "application name",
    max: 63,
    allowed: "ASCII letters, digits, '-', '_', '.'",
    char_ok: app_char,
    alnum_edges: true,
    no_space_edges: false,
    no_dot_segment: false,
};
const DEVICE: Rule = Rule {
    kind: "device name",
    max: 256,
    allowed: "anything but control characters and '/', '+', '#'",
    char_ok: device_char,
    alnum_edges: false,
    no_space_edges: true,
    no_dot_segment: false,
};
const CHANNEL: Rule = Rule {
    kind: "channel",
    max: 128,
    allowed: "ASCII letters, digits, '-', '_', '.', '~', ':'",
    char_ok: name_char,
    alnum_edges: false,
    no_space_edges: false,
    no_dot_segment: true,
};
const COMMAND: Rule = Rule { kind: "command name", ..CHANNEL };

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `value` against this name's rule.
            pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
                let value = value.into();
                check(&$rule, &value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ModelError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ModelError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // checked and copied once from the input (a record read back, a config file)
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($rule.kind)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        check(&$rule, v).map_err(E::custom)?;
                        Ok($name(Arc::from(v)))
                    }
                }
                d.deserialize_str(Text)
            }
        }
    };
}

validated_name!(
    /// An application (Drogue's tenant): `my-app`.
    AppId,
    APP
);
validated_name!(
    /// A device's name within its application: `sensor1`. Also the form aliases and unique
    /// usernames take when a sensor presents them.
    DeviceId,
    DEVICE
);
validated_name!(
    /// The channel a message is published on: `temperature`.
    Channel,
    CHANNEL
);
validated_name!(
    /// The name of a command for a device: `set-temp`.
    CommandName,
    COMMAND
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_names() {
        assert!(AppId::new("my-app").is_ok());
        assert!(DeviceId::new("sensor1").is_ok());
        assert!(DeviceId::new("CN=sensor1, O=Org").is_ok());
        assert!(Channel::new("temperature").is_ok());
        assert!(CommandName::new("port:1").is_ok());
    }

    #[test]
    fn rejects_empty_and_long_with_kind_in_message() {
        let err = DeviceId::new("").unwrap_err();
        assert_eq!(err.to_string(), "device name must not be empty");
        let err = AppId::new("a".repeat(64)).unwrap_err();
        assert!(err.to_string().contains("at most 63"), "{err}");
    }

    #[test]
    fn rejects_topic_separators_in_device() {
        for bad in ["a/b", "a+b", "a#", "tab\there", " lead", "trail "] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rejects_dot_segments_as_channels_and_commands() {
        for dot in [".", ".."] {
            assert!(matches!(Channel::new(dot), Err(ModelError::DotSegment { .. })), "{dot:?}");
            assert!(CommandName::new(dot).is_err(), "{dot:?}");
        }
        assert!(Channel::new("...").is_ok() && Channel::new(".temp").is_ok());
        for dot in [".", "..", "%2e", "%2E%2e", ".%2E", "%2e."] {
            assert!(is_dot_segment(dot), "{dot:?}");
        }
        assert!(!is_dot_segment("...") && !is_dot_segment("a.") && !is_dot_segment("%2e%2e%2e"));
    }

    #[test]
    fn rejects_bad_app_edges() {
        assert!(matches!(AppId::new("-app"), Err(ModelError::BadEdge { .. })));
        assert!(matches!(AppId::new("app."), Err(ModelError::BadEdge { .. })));
        assert!(matches!(AppId::new("my app"), Err(ModelError::BadChar { ch: ' ', .. })));
    }

    #[test]
    fn deserialize_checks_rule() {
        let ok: Channel = serde_json::from_str("\"temp\"").unwrap();
        assert_eq!(ok, "temp");
        let err = serde_json::from_str::<Channel>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("channel"), "{err}");
    }

    proptest! {
        #[test]
        fn app_round_trips(s in "[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?") {
            let id = AppId::new(s.clone()).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(id.as_str().parse::<AppId>().unwrap(), id);
        }

        #[test]
        fn device_round_trips(s in "[^\\p{Cc}/+#@\\s]([^\\p{Cc}/+#@]{0,30}[^\\p{Cc}/+#@\\s])?") {
            let id = DeviceId::new(s.clone()).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        }

        #[test]
        fn channel_round_trips(s in "[A-Za-z0-9._~:-]{1,128}".prop_filter("dot segment", |s| s != "." && s != "..")) {
            let ch = Channel::new(s.clone()).unwrap();
            prop_assert_eq!(ch.as_str(), s.as_str());
        }

        #[test]
        fn channel_rejects_any_disallowed_char(
            pre in "[a-z]{0,5}", bad in "[/+# ?&=%@\\p{Cc}]", post in "[a-z]{0,5}"
        ) {
            let s = format!("{pre}{bad}{post}");
            prop_assert!(Channel::new(s.clone()).is_err());
            prop_assert!(CommandName::new(s).is_err());
        }

        #[test]
        fn device_rejects_any_disallowed_char(
            pre in "[a-z]{1,5}", bad in "[/+#\\p{Cc}]", post in "[a-z]{1,5}"
        ) {
            let s = format!("{pre}{bad}{post}");
            prop_assert!(DeviceId::new(s).is_err());
        }

        #[test]
        fn accepted_text_is_kept_verbatim(s in "\\PC{0,80}") {
            if let Ok(id) = AppId::new(s.clone()) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(s.len() <= 63 && s.chars().all(app_char));
            }
            if let Ok(id) = DeviceId::new(s.clone()) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!s.contains(['/', '+', '#']));
            }
            if let Ok(ch) = Channel::new(s.clone()) {
                prop_assert!(ch.as_str().chars().all(name_char));
            }
        }
    }
}
