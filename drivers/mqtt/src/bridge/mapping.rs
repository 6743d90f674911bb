//! A validated `[[bridge.mapping]]`: routes a site-broker topic to an identity and a channel,
//! renders command topics for its devices, and describes itself as an interworking stub
//! (name, protocol, identity handling, data objects) for the status page.

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError},
    time::SystemTime,
};

use bytes::Bytes;
use gw_model::{
    AppId, Channel, CommandName, DeviceId, Identity, KnownDevices, Telemetry, Timestamp,
};
use serde::Serialize;

use super::{
    config::{BridgeConfigError, DevicePolicy, MappingConfig},
    template::{CommandTemplate, MatchError, TopicTemplate},
};

/// Devices remembered per mapping as having published through it (command targets).
const MAX_SEEN: usize = 10_000;

/// How a mapping describes itself, after the interworking protostub descriptor: it connects a
/// legacy domain (the site broker) that does not speak the gateway's protocols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterworkingDescriptor {
    pub name: String,
    /// Always true: the mapping talks to a legacy domain.
    pub interworking: bool,
    /// The legacy domain's protocol and where it is.
    pub protocol: &'static str,
    pub broker: String,
    /// The subscription on the site broker and the template it is read with.
    pub subscription: String,
    pub topic: String,
    pub identity: IdentityHandling,
    /// The channel: `"{channel}"` when the topic names it, else the fixed one.
    pub channel: String,
    /// What the devices send (from config; the channel when none is given).
    pub data_objects: Vec<String>,
    /// Where commands are published, if the mapping takes commands.
    pub commands: Option<String>,
    pub description: Option<String>,
}

/// How a mapping turns a topic into an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityHandling {
    /// The device comes from the topic's `{device}` segment; the site broker's own login is
    /// the bridge's, not the device's.
    pub source: &'static str,
    pub application: String,
    /// `"known"`, `"any"`, or the admitted devices.
    pub devices: serde_json::Value,
    /// Whether the mapping also proxies the legacy domain's identity provider: never, the
    /// gateway trusts the site broker's topics as configured.
    pub idp_proxy: bool,
}

/// Where a topic goes.
#[derive(Debug)]
pub(super) enum Route {
    /// Store as this telemetry; the index of the mapping that took it.
    Ingest(usize, Telemetry),
    /// The topic does not fit this mapping (another may take it).
    NoMatch,
    /// A retained message replayed at subscription.
    Retained,
    /// The topic fits but names no valid device or channel.
    BadTopic(String),
    /// The device is not one the mapping admits.
    UnknownDevice(String),
}

pub(super) struct Mapping {
    index: usize,
    topic: TopicTemplate,
    channel: Option<Channel>,
    app: AppId,
    devices: DevicePolicy,
    commands: Option<CommandTemplate>,
    seen: Mutex<HashSet<DeviceId>>,
    descriptor: InterworkingDescriptor,
}

impl Mapping {
    pub fn new(
        index: usize,
        config: &MappingConfig,
        default_app: &AppId,
        url: &str,
    ) -> Result<Self, BridgeConfigError> {
        let prefix = |e: BridgeConfigError| BridgeConfigError {
            key: format!("mapping[{index}].{}", e.key),
            reason: e.reason,
        };
        let topic = config.topic_template().map_err(prefix)?;
        let commands = config.command_template().map_err(prefix)?;
        let app = config.application.clone().unwrap_or_else(|| default_app.clone());
        let channel_text = match &config.channel {
            Some(c) => c.to_string(),
            None => "{channel}".to_owned(),
        };
        let data_objects = if config.data_objects.is_empty() {
            vec![channel_text.clone()]
        } else {
            config.data_objects.clone()
        };
        let devices = match &config.devices {
            DevicePolicy::Known => serde_json::json!("known"),
            DevicePolicy::Any => serde_json::json!("any"),
            DevicePolicy::List(l) => {
                serde_json::json!(l.iter().map(DeviceId::as_str).collect::<Vec<_>>())
            }
        };
        let descriptor = InterworkingDescriptor {
            name: config.name.clone(),
            interworking: true,
            protocol: "mqtt",
            broker: url.to_owned(),
            subscription: topic.filter(),
            topic: topic.to_string(),
            identity: IdentityHandling {
                source: "topic {device} segment",
                application: app.to_string(),
                devices,
                idp_proxy: false,
            },
            channel: channel_text,
            data_objects,
            commands: commands.as_ref().map(ToString::to_string),
            description: config.description.clone(),
        };
        Ok(Self {
            index,
            topic,
            channel: config.channel.clone(),
            app,
            devices: config.devices.clone(),
            commands,
            seen: Mutex::new(HashSet::new()),
            descriptor,
        })
    }

    pub fn filter(&self) -> String {
        self.topic.filter()
    }

    pub fn descriptor(&self) -> &InterworkingDescriptor {
        &self.descriptor
    }

    /// Where `topic` goes under this mapping.
    pub fn route<K: KnownDevices + ?Sized>(&self, topic: &str, payload: Bytes, known: &K) -> Route {
        let matched = match self.topic.matches(topic) {
            Ok(m) => m,
            Err(MatchError::NoMatch) => return Route::NoMatch,
            Err(MatchError::Invalid(reason)) => {
                return Route::BadTopic(format!("{topic:?}: {reason}"));
            }
        };
        let Some(channel) = matched.channel.or_else(|| self.channel.clone()) else {
            return Route::BadTopic(format!("{topic:?}: no channel"));
        };
        let device = match &self.devices {
            DevicePolicy::Any => matched.device,
            DevicePolicy::List(list) if list.contains(&matched.device) => matched.device,
            DevicePolicy::List(_) => return Route::UnknownDevice(matched.device.to_string()),
            DevicePolicy::Known => match known.resolve(&self.app, matched.device.as_str()) {
                Some(identity) if identity.app() == &self.app => identity.device().clone(),
                _ => return Route::UnknownDevice(matched.device.to_string()),
            },
        };
        let content_type = crate::session::content_type_of(None, &payload);
        let now = Timestamp::from_system(SystemTime::now());
        let mut telemetry = Telemetry::new(self.app.clone(), device, channel, now, payload);
        telemetry.content_type = content_type;
        Route::Ingest(self.index, telemetry)
    }

    /// Remembers that `device` published through this mapping.
    pub fn saw(&self, device: &DeviceId) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < MAX_SEEN || seen.contains(device) {
            seen.insert(device.clone());
        }
    }

    /// The topic a command for `device` goes to, if this mapping takes commands for it: a
    /// device in its `devices` list, or one that published through it since start.
    pub fn command_topic(&self, device: &Identity, command: &CommandName) -> Option<String> {
        let template = self.commands.as_ref()?;
        if device.app() != &self.app {
            return None;
        }
        let listed = matches!(&self.devices, DevicePolicy::List(l) if l.contains(device.device()));
        let seen =
            || self.seen.lock().unwrap_or_else(PoisonError::into_inner).contains(device.device());
        (listed || seen()).then(|| template.render(device.device(), command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Known(Vec<(&'static str, &'static str)>);

    impl KnownDevices for Known {
        fn resolve(&self, app: &AppId, device: &str) -> Option<Identity> {
            self.0
                .iter()
                .find(|(alias, _)| *alias == device)
                .map(|(_, name)| Identity::new(app.clone(), DeviceId::new(*name).unwrap()))
        }
    }

    fn mapping(topic: &str, channel: Option<&str>, devices: DevicePolicy) -> Mapping {
        let mut c = MappingConfig::new("m", topic, devices);
        c.channel = channel.map(|c| Channel::new(c).unwrap());
        c.commands = Some("sensors/{device}/commands/{command}".into());
        Mapping::new(0, &c, &AppId::new("app").unwrap(), "mqtt://site").unwrap()
    }

    fn ingest(r: Route) -> Telemetry {
        match r {
            Route::Ingest(_, t) => t,
            other => panic!("not routed: {other:?}"),
        }
    }

    #[test]
    fn known_devices_resolve_aliases_to_canonical_names() {
        let m = mapping("sensors/{device}/{channel}", None, DevicePolicy::Known);
        let known = Known(vec![("s7", "s7"), ("old-7", "s7")]);
        let t = ingest(m.route("sensors/old-7/temp", Bytes::from_static(b"{}"), &known));
        assert_eq!((t.device.as_str(), t.channel.as_str()), ("s7", "temp"));
        assert_eq!(t.content_type.as_deref(), Some("application/json"));
        assert!(matches!(
            m.route("sensors/s8/temp", Bytes::new(), &known),
            Route::UnknownDevice(d) if d == "s8"
        ));
        assert!(matches!(m.route("other/s7/temp", Bytes::new(), &known), Route::NoMatch));
        assert!(matches!(m.route("sensors/s7/te mp", Bytes::new(), &known), Route::BadTopic(_)));
    }

    #[test]
    fn allow_list_and_fixed_channel() {
        let m = mapping(
            "plant1/+/{device}/telemetry",
            Some("telemetry"),
            DevicePolicy::List(vec![DeviceId::new("s9").unwrap()]),
        );
        let none = Known(vec![]);
        let t = ingest(m.route("plant1/hall/s9/telemetry", Bytes::from_static(b"\x01"), &none));
        assert_eq!((t.device.as_str(), t.channel.as_str()), ("s9", "telemetry"));
        assert_eq!(t.content_type.as_deref(), Some("application/octet-stream"));
        assert!(matches!(
            m.route("plant1/hall/s1/telemetry", Bytes::new(), &none),
            Route::UnknownDevice(_)
        ));
        // listed devices take commands from the start
        let s9 = Identity::new(AppId::new("app").unwrap(), DeviceId::new("s9").unwrap());
        let cmd = CommandName::new("reboot").unwrap();
        assert_eq!(m.command_topic(&s9, &cmd).unwrap(), "sensors/s9/commands/reboot");
        let other_app = Identity::new(AppId::new("x").unwrap(), DeviceId::new("s9").unwrap());
        assert_eq!(m.command_topic(&other_app, &cmd), None);
    }

    #[test]
    fn any_device_takes_commands_once_seen() {
        let m = mapping("sensors/{device}/{channel}", None, DevicePolicy::Any);
        let s1 = Identity::new(AppId::new("app").unwrap(), DeviceId::new("s1").unwrap());
        let cmd = CommandName::new("set").unwrap();
        assert_eq!(m.command_topic(&s1, &cmd), None);
        m.saw(s1.device());
        assert_eq!(m.command_topic(&s1, &cmd).unwrap(), "sensors/s1/commands/set");
        let d = m.descriptor();
        assert_eq!(d.subscription, "sensors/+/+");
        assert_eq!(d.data_objects, vec!["{channel}".to_owned()]);
        assert!(d.interworking);
    }
}
