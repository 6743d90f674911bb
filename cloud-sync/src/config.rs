//! The `[cloud]` section: where the gateway sends its sensors' messages, and how.

use std::{path::PathBuf, time::Duration};

use gw_model::{ByteSize, Secret, UplinkLimits};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{CloudError, mqtt::inbox::CommandTopicTemplate, topic::TopicTemplate};

/// Which upstream protocol the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudKind {
    /// Drogue Cloud's HTTP endpoint: `POST {url}/v1/{channel}?as={device}`.
    DrogueHttp,
    /// Drogue Cloud's MQTT endpoint: one connection as the gateway, QoS 1 publishes to
    /// `<channel>/<device>`.
    DrogueMqtt,
    /// Any MQTT 3.1.1 broker: QoS 1 publishes to the `topic` template.
    Mqtt,
}

impl CloudKind {
    pub fn label(self) -> &'static str {
        match self {
            CloudKind::DrogueHttp => "drogue-http",
            CloudKind::DrogueMqtt => "drogue-mqtt",
            CloudKind::Mqtt => "mqtt",
        }
    }

    /// The largest message the kind's cloud takes when `max_message` is not set.
    pub fn default_max_message(self) -> u64 {
        match self {
            CloudKind::DrogueHttp => 64 * 1024,
            CloudKind::DrogueMqtt => 16 * 1024,
            CloudKind::Mqtt => 256 * 1024 * 1024,
        }
    }

    fn is_mqtt(self) -> bool {
        matches!(self, CloudKind::DrogueMqtt | CloudKind::Mqtt)
    }
}

/// Where an MQTT uplink connects, from `url = "mqtt[s]://host[:port]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// `[cloud]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub kind: CloudKind,
    /// drogue-http: the endpoint's base URL, `https://http.example.com`. drogue-mqtt, mqtt:
    /// the broker, `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).
    pub url: String,
    /// mqtt: the topic template; placeholders `{app}`, `{device}`, `{channel}`, `{gateway}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// mqtt: where the broker publishes commands, e.g.
    /// `site/{gateway}/command/{device}/{command}`: `/`-separated levels, one `{device}` and
    /// one `{command}` level, `{app}` and `{gateway}` filled in. The gateway subscribes the
    /// levels before the first placeholder plus `#` (QoS 1). An empty device level, or the
    /// gateway's own name, addresses the gateway itself (`resync`, `set-log-level`, ...).
    /// Unset: the uplink takes no commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_topic: Option<String>,
    /// drogue-http: add the time the gateway received a reading to JSON object payloads as
    /// this member (`"received_at": "2026-12-07T10:00:00.123Z"`), unless the object has it
    /// already. Drogue's HTTP endpoint stamps a message with its own arrival time and takes
    /// no time from the sender, so this is the way a buffered reading keeps its time there.
    /// Other payloads travel unchanged; unset (default): nothing is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_field: Option<String>,
    /// drogue-mqtt, mqtt: the MQTT version, "3.1.1" or "5". With 5, each PUBLISH carries the
    /// record's content type (property) and the time the gateway received it (user property
    /// `received_at`, RFC 3339 UTC), and the broker's PUBACK reasons count (0x87 parks the
    /// device, like a 403).
    #[serde(default)]
    pub protocol: crate::mqtt::wire::Protocol,
    /// mqtt: the user name to log in with (none: no login). The drogue kinds always log in
    /// as the gateway, `<gateway>@<app>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// drogue-mqtt, mqtt: the MQTT client id; default `<gateway>@<app>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The gateway's password in the cloud (development only) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// ... or the file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
    /// PEM file of the CA(s) to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// mqtt over TLS: a PEM client certificate (chain) to present ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// ... and its PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Requests (or, for MQTT, publishes awaiting their PUBACK) in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one request may take before it counts as failed and is retried.
    #[serde(default = "default_timeout", with = "gw_model::serde_util::duration")]
    pub timeout: Duration,
    /// drogue-http: how long a publish, once sent, waits for the cloud's answer. Drogue answers
    /// only once Kafka confirmed the message, which may take up to its 300 s delivery timeout;
    /// giving up sooner sends again a message Drogue still delivers (a duplicate, counted as a
    /// possible one). `timeout` bounds connecting.
    #[serde(default = "default_publish_timeout", with = "gw_model::serde_util::duration")]
    pub publish_timeout: Duration,
    /// First retry delay after a transient failure; doubles per failure (with jitter).
    #[serde(default = "default_retry_min", with = "gw_model::serde_util::duration")]
    pub retry_min: Duration,
    /// Longest retry delay.
    #[serde(default = "default_retry_max", with = "gw_model::serde_util::duration")]
    pub retry_max: Duration,
    /// How often devices the cloud refused (403) are tried again.
    #[serde(default = "default_parked_retry", with = "gw_model::serde_util::duration")]
    pub parked_retry: Duration,
    /// How long a device may stay refused by the cloud (parked, no record of it taken since)
    /// before its records are dropped as expired, so that records that can never be delivered
    /// stop filling the quota. `0s`: never.
    #[serde(default = "default_parked_max_age", with = "gw_model::serde_util::duration")]
    pub parked_max_age: Duration,
    /// drogue-http: the longest the cloud is asked to wait for a command (`ct=`) on a publish
    /// of a sensor that waits itself.
    #[serde(default = "default_command_wait_max", with = "gw_model::serde_util::duration")]
    pub command_wait_max: Duration,
    /// drogue-http: the gateway's own command poll. The gateway posts a heartbeat as itself
    /// to `heartbeat_channel` with `ct=` this long, again as soon as it is answered, so the
    /// cloud can hand it its own commands (Drogue gives a device that names no gateway its
    /// commands only on a request that waits). `0s` turns it off.
    #[serde(default = "default_command_poll", with = "gw_model::serde_util::duration")]
    pub command_poll: Duration,
    /// drogue-http: the channel of the gateway's heartbeat (uptime, outbox depth, sensors).
    #[serde(default = "default_heartbeat_channel")]
    pub heartbeat_channel: String,
    /// The largest message the cloud takes; larger ones are refused before they are
    /// acknowledged (HTTP 413, CoAP 4.13, MQTT PUBACK 0x95). drogue-http: the payload (Drogue's
    /// HTTP endpoint answers 413 above 64 KiB); drogue-mqtt: the whole PUBLISH, topic included
    /// (Drogue's MQTT endpoint closes the connection above 16 KiB); mqtt: the whole PUBLISH.
    /// Default per kind: 64KiB, 16KiB, 256MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message: Option<ByteSize>,
}

fn default_concurrency() -> usize {
    32
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(330)
}
fn default_retry_min() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
fn default_parked_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_parked_retry() -> Duration {
    Duration::from_secs(60)
}
fn default_command_wait_max() -> Duration {
    Duration::from_secs(60)
}

fn default_command_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_heartbeat_channel() -> String {
    "gatewayd-heartbeat".to_owned()
}

impl CloudConfig {
    /// A config for `url` with every other key at its default (tests, the demo).
    pub fn new(kind: CloudKind, url: impl Into<String>, password: Secret) -> Self {
        Self {
            kind,
            url: url.into(),
            topic: None,
            command_topic: None,
            protocol: crate::mqtt::wire::Protocol::V311,
            received_at_field: None,
            username: None,
            client_id: None,
            password: Some(password),
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            publish_timeout: default_publish_timeout(),
            retry_min: default_retry_min(),
            retry_max: default_retry_max(),
            parked_retry: default_parked_retry(),
            parked_max_age: default_parked_max_age(),
            command_wait_max: default_command_wait_max(),
            command_poll: default_command_poll(),
            heartbeat_channel: default_heartbeat_channel(),
            max_message: None,
        }
    }

    /// The largest message the cloud takes: `max_message`, or the kind's default.
    pub fn max_message(&self) -> u64 {
        self.max_message.map_or_else(|| self.kind.default_max_message(), ByteSize::bytes)
    }

    /// What one record may be to travel on this uplink; checked before it is acknowledged.
    pub fn limits(&self) -> UplinkLimits {
        let max = usize::try_from(self.max_message()).unwrap_or(usize::MAX);
        match self.kind {
            // room for the receive time the uplink may add
            CloudKind::DrogueHttp => UplinkLimits::payload(
                max.saturating_sub(
                    self.received_at_field
                        .as_deref()
                        .map_or(0, crate::drogue_http::received_at_overhead),
                ),
            ),
            // the topic is `<channel>/<device>`: the packet's size is known at ingest
            CloudKind::DrogueMqtt => UplinkLimits { max_payload: max, max_packet: Some(max) },
            // the topic comes from a template; the payload alone is checked at ingest and the
            // whole packet when it is sent
            CloudKind::Mqtt => UplinkLimits::payload(max),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), CloudError> {
        if self.kind.is_mqtt() {
            self.validate_mqtt()?;
        } else {
            let url = self.url.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() <= "https://".len()
            {
                return Err(CloudError::Config {
                    key: "url",
                    reason: format!("{:?} is not an http:// or https:// URL", self.url),
                });
            }
        }
        if gw_model::Channel::new(&self.heartbeat_channel).is_err() {
            return Err(CloudError::Config {
                key: "heartbeat_channel",
                reason: format!("{:?} is not a channel name", self.heartbeat_channel),
            });
        }
        let only_mqtt: [(&'static str, bool); 4] = [
            ("topic", self.topic.is_some()),
            ("command_topic", self.command_topic.is_some()),
            ("username", self.username.is_some()),
            ("client_cert_file", self.client_cert_file.is_some()),
        ];
        for (key, set) in only_mqtt {
            if set && self.kind != CloudKind::Mqtt {
                return Err(CloudError::Config {
                    key,
                    reason: format!("is for kind = \"mqtt\", not {:?}", self.kind.label()),
                });
            }
        }
        if let Some(field) = &self.received_at_field {
            if self.kind != CloudKind::DrogueHttp {
                return Err(CloudError::Config {
                    key: "received_at_field",
                    reason: "is for kind = \"drogue-http\"; the MQTT kinds carry the time with protocol = \"5\"".into(),
                });
            }
            if field.is_empty() || field.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
                return Err(CloudError::Config {
                    key: "received_at_field",
                    reason:
                        "must be a non-empty name without control characters, quotes or backslashes"
                            .into(),
                });
            }
        }
        if self.protocol != crate::mqtt::wire::Protocol::V311 && !self.kind.is_mqtt() {
            return Err(CloudError::Config {
                key: "protocol",
                reason: "is for the MQTT kinds".into(),
            });
        }
        if self.client_id.is_some() && !self.kind.is_mqtt() {
            return Err(CloudError::Config {
                key: "client_id",
                reason: "is for the MQTT kinds".into(),
            });
        }
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Err(CloudError::Config {
                key: "concurrency",
                reason: format!("{} is outside 1..=4096", self.concurrency),
            });
        }
        if self.timeout.is_zero() {
            return Err(CloudError::Config { key: "timeout", reason: "must not be 0".into() });
        }
        if self.publish_timeout.is_zero() {
            return Err(CloudError::Config {
                key: "publish_timeout",
                reason: "must not be 0".into(),
            });
        }
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(CloudError::Config {
                key: "password",
                reason: "set password or password_file, not both".into(),
            }),
            (None, None) if self.kind == CloudKind::Mqtt => Ok(()),
            (None, None) => Err(CloudError::Config {
                key: "password_file",
                reason: "the gateway needs its cloud password (password_file or password)".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl CloudConfig {
    /// Whether a password was configured (`password` or `password_file`).
    pub fn has_password(&self) -> bool {
        self.password.is_some() || self.password_file.is_some()
    }

    /// The broker of an MQTT kind, from `url`.
    pub fn broker(&self) -> Result<Broker, CloudError> {
        let bad =
            |why: &str| CloudError::Config { key: "url", reason: format!("{:?} {why}", self.url) };
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
        Ok(Broker { host: host.to_owned(), port, tls })
    }

    /// The parsed `topic` template (kind = "mqtt").
    pub fn topic_template(&self) -> Result<TopicTemplate, CloudError> {
        let topic = self.topic.as_deref().ok_or_else(|| CloudError::Config {
            key: "topic",
            reason:
                "kind = \"mqtt\" needs a topic template, e.g. \"site/{app}/{device}/{channel}\""
                    .into(),
        })?;
        topic.parse().map_err(|e: crate::topic::TemplateError| CloudError::Config {
            key: "topic",
            reason: e.to_string(),
        })
    }

    /// The parsed `command_topic` (kind = "mqtt"), if set.
    pub fn command_topic(&self) -> Result<Option<CommandTopicTemplate>, CloudError> {
        self.command_topic
            .as_deref()
            .map(|t| {
                t.parse().map_err(|e: crate::mqtt::inbox::CommandTopicError| CloudError::Config {
                    key: "command_topic",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    fn validate_mqtt(&self) -> Result<(), CloudError> {
        let broker = self.broker()?;
        if self.kind == CloudKind::Mqtt {
            self.topic_template()?;
            self.command_topic()?;
            if self.username.is_none() && self.has_password() {
                return Err(CloudError::Config {
                    key: "username",
                    reason: "a password needs a username".into(),
                });
            }
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65535)
        {
            return Err(CloudError::Config {
                key: "client_id",
                reason: "must be 1 to 65535 bytes".into(),
            });
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(CloudError::Config {
                key: "client_key_file",
                reason: "set both client_cert_file and client_key_file, or neither".into(),
            });
        }
        if !broker.tls {
            let tls_only = [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
            ];
            if let Some((key, _)) = tls_only.into_iter().find(|(_, set)| *set) {
                return Err(CloudError::Config {
                    key,
                    reason: format!("needs an mqtts:// url, not {:?}", self.url),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_url_and_password() {
        let mut c = CloudConfig::new(CloudKind::DrogueHttp, "http://127.0.0.1:1", "pw".into());
        assert!(c.validate().is_ok());
        c.url = "ftp://x".into();
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.url"));
        c.url = "https://x".into();
        c.password = None;
        assert!(c.validate().unwrap_err().to_string().contains("password_file"));
    }

    #[test]
    fn unknown_kind_lists_the_supported_ones() {
        let err = toml::from_str::<CloudConfig>("kind = \"carrier-pigeon\"\nurl = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("drogue-http"), "{err}");
    }

    fn mqtt(url: &str) -> CloudConfig {
        let mut c = CloudConfig::new(CloudKind::Mqtt, url, "pw".into());
        c.password = None;
        c.topic = Some("site/{app}/{device}/{channel}".into());
        c
    }

    #[test]
    fn parses_broker_urls_with_default_ports() {
        let b = |u: &str| mqtt(u).broker();
        assert_eq!(b("mqtt://h").unwrap(), Broker { host: "h".into(), port: 1883, tls: false });
        assert_eq!(b("mqtts://h/").unwrap(), Broker { host: "h".into(), port: 8883, tls: true });
        assert_eq!(b("mqtt://h:1").unwrap().port, 1);
        assert_eq!(
            b("mqtt://[::1]:99").unwrap(),
            Broker { host: "::1".into(), port: 99, tls: false }
        );
        assert_eq!(b("mqtts://[::1]").unwrap().port, 8883);
        for bad in
            ["http://h", "mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://h/path", "mqtt://u@h"]
        {
            assert!(b(bad).unwrap_err().to_string().starts_with("cloud.url"), "{bad}");
        }
    }

    #[test]
    fn a_command_topic_is_for_the_generic_kind_and_must_name_device_and_command() {
        let mut c = mqtt("mqtt://127.0.0.1:1883");
        c.command_topic = Some("site/{gateway}/command/{device}/{command}".into());
        c.validate().unwrap();
        let gw = gw_model::Identity::new("a".parse().unwrap(), "gw1".parse().unwrap());
        let topic = c.command_topic().unwrap().unwrap().for_gateway(&gw);
        assert_eq!(topic.filter(), "site/gw1/command/#");
        c.command_topic = Some("site/{device}".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("cloud.command_topic") && e.contains("{command}"), "{e}");
        let mut d = CloudConfig::new(CloudKind::DrogueMqtt, "mqtt://h", "pw".into());
        d.command_topic = Some("x/{device}/{command}".into());
        let e = d.validate().unwrap_err().to_string();
        assert!(e.starts_with("cloud.command_topic") && e.contains("not \"drogue-mqtt\""), "{e}");
    }

    #[test]
    fn validates_the_mqtt_keys() {
        let mut c = mqtt("mqtt://127.0.0.1:1883");
        assert!(c.validate().is_ok(), "no password and no username is fine for mqtt");
        c.topic = Some("site/{nope}/{device}".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("cloud.topic") && e.contains("{nope}"), "{e}");
        c.topic = Some("site/#".into());
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.topic"));
        c.topic = None;
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.topic"));
        c.topic = Some("{device}".into());
        c.password = Some("pw".into());
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.username"));
        c.username = Some("u".into());
        assert!(c.validate().is_ok());
        c.ca_file = Some("/ca.pem".into());
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.ca_file"));
        c.url = "mqtts://h".into();
        c.client_cert_file = Some("/c.pem".into());
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.client_key_file"));
        c.client_key_file = Some("/k.pem".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_the_documented_mqtt_keys() {
        let text = r#"
            kind = "mqtt"
            url = "mqtts://mqtt.example.com"
            topic = "site/{app}/{device}/{channel}"
            username = "gateway-1"
            client_id = "gw1@my-app"
            password = "change-me"
            ca_file = "/etc/gatewayd/ca.pem"
            client_cert_file = "/etc/gatewayd/client.pem"
            client_key_file = "/etc/gatewayd/client.key"
        "#;
        let c: CloudConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kind, CloudKind::Mqtt);
        assert_eq!(c.broker().unwrap().port, 8883);
        let drogue: CloudConfig =
            toml::from_str("kind = \"drogue-mqtt\"\nurl = \"mqtt://h\"\npassword = \"x\"\n")
                .unwrap();
        drogue.validate().unwrap();
        assert!(
            toml::from_str::<CloudConfig>("kind = \"mqtt\"\nurl = \"mqtt://h\"\ntopics = \"x\"\n")
                .is_err()
        );
    }

    #[test]
    fn drogue_mqtt_needs_a_password_and_takes_no_topic() {
        let mut c =
            CloudConfig::new(CloudKind::DrogueMqtt, "mqtts://mqtt.example.com", "pw".into());
        assert!(c.validate().is_ok());
        c.topic = Some("{device}".into());
        assert!(c.validate().unwrap_err().to_string().starts_with("cloud.topic"));
        c.topic = None;
        c.password = None;
        assert!(c.validate().unwrap_err().to_string().contains("password"));
        let http = CloudConfig::new(CloudKind::DrogueHttp, "mqtt://h", "pw".into());
        assert!(http.validate().unwrap_err().to_string().starts_with("cloud.url"));
    }
}
