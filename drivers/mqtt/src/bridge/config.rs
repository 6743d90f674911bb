//! The `[[bridge]]` config tables: one per site broker, each with `[[bridge.mapping]]`
//! entries. Every key, with its default:
//!
//! ```toml
//! [[bridge]]
//! name = "site-broker"             # names the bridge in logs and the status JSON
//! url = "mqtt://192.168.1.10:1883" # the site broker: mqtt://host[:port] or mqtts://host[:port]
//! client_id = "gatewayd-gw1"       # the bridge's client id; its session on the site broker is
//!                                  # kept (clean session off) so unacknowledged messages survive
//! # username = "gateway"           # login at the site broker, if it wants one
//! # password = "..."               # or password_file = "/etc/gatewayd/bridge.secret"
//! # ca_file = "/etc/gatewayd/site-ca.pem"   # mqtts://: CA of the broker (default: system roots)
//! keep_alive = "30s"
//! reconnect_max = "30s"            # reconnect backoff starts at 500 ms and doubles up to this
//!
//! [[bridge.mapping]]
//! name = "legacy-sensors"          # the interworking descriptor's name
//! topic = "sensors/{device}/{channel}"     # '+', '#', {device} (required), {channel}
//! # channel = "telemetry"         # the channel when the topic has no {channel}
//! # application = "my-app"        # default: the gateway's application
//! devices = "known"                # "known" (the gateway knows the device), "any", or a list
//! # commands = "sensors/{device}/commands/{command}"   # where commands are published
//! # data_objects = ["temperature"] # what the devices send, for the descriptor
//! # description = "..."           # free text for the descriptor
//! ```

use std::{path::PathBuf, time::Duration};

use gw_model::{AppId, Channel, DeviceId, Secret};
use serde::{Deserialize, Serialize};

use super::template::{CommandTemplate, TopicTemplate};

/// Why a `[[bridge]]` table is unusable; `key` is relative to the table (`mapping[0].topic`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct BridgeConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> BridgeConfigError {
    BridgeConfigError { key: key.into(), reason: reason.into() }
}

/// One `[[bridge]]` table: a site broker and how its topics map to devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: String,
    pub url: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "gw_model::serde_util::duration")]
    pub keep_alive: Duration,
    #[serde(default = "default_reconnect_max", with = "gw_model::serde_util::duration")]
    pub reconnect_max: Duration,
    #[serde(default)]
    pub mapping: Vec<MappingConfig>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// One `[[bridge.mapping]]`: a topic template, the identities it yields, and where commands go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    pub name: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<AppId>,
    pub devices: DevicePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_objects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Which devices a mapping accepts: `"known"`, `"any"`, or a list of device names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Only devices the gateway knows (registry, static devices, local accounts), by name or
    /// alias; the canonical name is used.
    Known,
    /// Any device name the topic carries.
    Any,
    /// Exactly these devices.
    List(Vec<DeviceId>),
}

impl Serialize for DevicePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Known => s.serialize_str("known"),
            Self::Any => s.serialize_str("any"),
            Self::List(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DevicePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<DeviceId>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("devices must be \"known\", \"any\" or a list of device names")
        })? {
            Raw::Word(w) if w == "known" => Ok(Self::Known),
            Raw::Word(w) if w == "any" => Ok(Self::Any),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "devices = {w:?}: use \"known\", \"any\" or a list of device names"
            ))),
            Raw::List(list) => Ok(Self::List(list)),
        }
    }
}

/// A site broker address from `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BridgeConfig {
    /// A bridge to `url` with one mapping and every other key at its default (tests).
    pub fn new(name: &str, url: &str, client_id: &str, mapping: MappingConfig) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            client_id: client_id.to_owned(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            keep_alive: default_keep_alive(),
            reconnect_max: default_reconnect_max(),
            mapping: vec![mapping],
        }
    }

    /// Parses `url`.
    pub fn broker(&self) -> Result<BrokerUrl, BridgeConfigError> {
        let bad = |why: &str| err("url", format!("{:?} {why}", self.url));
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = self.url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(bad("is not an mqtt:// or mqtts:// URL"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("must be mqtt[s]://host[:port], without path or user"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse::<u16>().ok().filter(|p| *p != 0);
                (host, port.ok_or_else(|| bad("has an invalid port"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(BrokerUrl { host: host.to_owned(), port, tls })
    }

    /// Checks what serde cannot: the URL, credentials, and every mapping's templates.
    pub fn validate(&self) -> Result<(), BridgeConfigError> {
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty"));
        }
        let broker = self.broker()?;
        if self.client_id.is_empty() || self.client_id.len() > 65535 {
            return Err(err("client_id", "must be 1 to 65535 bytes"));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(err("password_file", "set password or password_file, not both"));
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            return Err(err("username", "a password needs a username"));
        }
        if self.ca_file.is_some() && !broker.tls {
            return Err(err("ca_file", format!("needs an mqtts:// url, not {:?}", self.url)));
        }
        if !(1..=65535).contains(&self.keep_alive.as_secs()) {
            return Err(err("keep_alive", "must be 1s to 65535s"));
        }
        if self.reconnect_max < Duration::from_millis(500) {
            return Err(err("reconnect_max", "must be at least 500ms"));
        }
        if self.mapping.is_empty() {
            return Err(err("mapping", "a bridge needs at least one [[bridge.mapping]]"));
        }
        for (i, m) in self.mapping.iter().enumerate() {
            m.validate().map_err(|e| err(format!("mapping[{i}].{}", e.key), e.reason))?;
            if self.mapping[..i].iter().any(|o| o.name == m.name) {
                return Err(err(
                    format!("mapping[{i}].name"),
                    format!("{:?} is used twice", m.name),
                ));
            }
        }
        Ok(())
    }
}

impl MappingConfig {
    /// A mapping of `topic` with no channel, app or commands set (tests).
    pub fn new(name: &str, topic: &str, devices: DevicePolicy) -> Self {
        Self {
            name: name.to_owned(),
            topic: topic.to_owned(),
            channel: None,
            application: None,
            devices,
            commands: None,
            data_objects: Vec::new(),
            description: None,
        }
    }

    /// The parsed topic template.
    pub fn topic_template(&self) -> Result<TopicTemplate, BridgeConfigError> {
        TopicTemplate::parse(&self.topic).map_err(|e| err("topic", e.to_string()))
    }

    /// The parsed command template, if commands are configured.
    pub fn command_template(&self) -> Result<Option<CommandTemplate>, BridgeConfigError> {
        self.commands
            .as_deref()
            .map(CommandTemplate::parse)
            .transpose()
            .map_err(|e| err("commands", e.to_string()))
    }

    fn validate(&self) -> Result<(), BridgeConfigError> {
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty"));
        }
        let topic = self.topic_template()?;
        match (topic.has_channel(), &self.channel) {
            (true, Some(_)) => {
                return Err(err("channel", "the topic's {channel} names the channel already"));
            }
            (false, None) => {
                return Err(err(
                    "channel",
                    "the topic has no {channel}: set the channel its messages go to",
                ));
            }
            _ => {}
        }
        if let DevicePolicy::List(list) = &self.devices
            && list.is_empty()
        {
            return Err(err("devices", "an empty list admits no device"));
        }
        self.command_template()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BridgeConfig {
        toml::from_str(text).unwrap()
    }

    const GOOD: &str = r#"
        name = "site"
        url = "mqtts://broker.local"
        client_id = "gw1-bridge"
        username = "gw"
        password = "pw"
        ca_file = "/ca.pem"
        keep_alive = "10s"
        reconnect_max = "5s"
        [[mapping]]
        name = "a"
        topic = "sensors/{device}/{channel}"
        devices = "known"
        commands = "sensors/{device}/commands/{command}"
        data_objects = ["temperature"]
        description = "old sensors"
        [[mapping]]
        name = "b"
        topic = "plant1/+/{device}/telemetry"
        channel = "telemetry"
        application = "plant"
        devices = ["s1", "s2"]
    "#;

    #[test]
    fn reads_every_key() {
        let c = parse(GOOD);
        c.validate().unwrap();
        assert_eq!(
            c.broker().unwrap(),
            BrokerUrl { host: "broker.local".into(), port: 8883, tls: true }
        );
        assert_eq!(c.mapping[0].devices, DevicePolicy::Known);
        assert_eq!(
            c.mapping[1].devices,
            DevicePolicy::List(vec![DeviceId::new("s1").unwrap(), DeviceId::new("s2").unwrap()])
        );
        assert_eq!(c.keep_alive, Duration::from_secs(10));
        let again: BridgeConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_the_key() {
        let check = |edit: &dyn Fn(&mut BridgeConfig), key: &str, text: &str| {
            let mut c = parse(GOOD);
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(text), "{e}");
        };
        check(&|c| c.url = "http://x".into(), "url", "not an mqtt://");
        check(&|c| c.url = "mqtt://x:0".into(), "url", "invalid port");
        check(&|c| c.mapping[0].topic = "sensors/{channel}".into(), "mapping[0].topic", "{device}");
        check(&|c| c.mapping[1].channel = None, "mapping[1].channel", "has no {channel}");
        check(
            &|c| c.mapping[0].channel = Some(Channel::new("x").unwrap()),
            "mapping[0].channel",
            "names the channel already",
        );
        check(
            &|c| c.mapping[0].commands = Some("a/+/{device}".into()),
            "mapping[0].commands",
            "no wildcards",
        );
        check(&|c| c.mapping[1].name = "a".into(), "mapping[1].name", "used twice");
        check(&|c| c.mapping.clear(), "mapping", "at least one");
        check(&|c| c.url = "mqtt://x".into(), "ca_file", "mqtts://");
        check(&|c| c.username = None, "username", "needs a username");
        check(
            &|c| c.mapping[1].devices = DevicePolicy::List(vec![]),
            "mapping[1].devices",
            "empty",
        );
    }

    #[test]
    fn bad_device_policy_is_explained() {
        let text = GOOD.replace("devices = \"known\"", "devices = \"all\"");
        let e = toml::from_str::<BridgeConfig>(&text).unwrap_err().to_string();
        assert!(e.contains("\"known\", \"any\""), "{e}");
        let text = GOOD.replace("client_id", "clientid");
        assert!(toml::from_str::<BridgeConfig>(&text).is_err());
    }
}
