//! Commands on the MQTT uplinks. The gateway subscribes one filter after every CONNACK and
//! reads the device and the command from each topic by a [`CommandTopic`] template:
//! - drogue-mqtt: `command/inbox/{device}/{command}`, subscribed as `command/inbox/#`; Drogue
//!   delivers `command/inbox/<device>/<command>` for each device the gateway proxies and
//!   `command/inbox//<command>` for the gateway itself (contracts/drogue-cloud.md §2).
//! - mqtt (a generic broker): `[cloud] command_topic`, e.g.
//!   `site/{gateway}/command/{device}/{command}`, subscribed as `site/gw1/command/#`.
//!
//! In both, an empty device level, or the gateway's own name, means the gateway itself.

use std::{fmt, str::FromStr};

use gw_model::{CommandName, DeviceId, Identity};

/// The Drogue MQTT endpoint's command topics.
pub const DROGUE: &str = "command/inbox/{device}/{command}";

/// Where a command published on the inbox goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTopic {
    /// The device the command is for (the gateway's own name for an empty device level).
    pub device: DeviceId,
    pub command: CommandName,
}

/// One `/`-separated level of a command topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Text(String),
    Device,
    Command,
}

/// A command topic template: literal levels, `{app}` and `{gateway}` (filled in with the
/// gateway's own), and exactly one `{device}` and one `{command}` level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTopic {
    levels: Vec<Level>,
    /// The subscription: the levels before the first placeholder, then `#`.
    filter: String,
}

/// Why a command topic template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTopicError(String);

impl fmt::Display for CommandTopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A template as written, before the gateway's names fill it in (checked at config load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTopicTemplate(String);

impl FromStr for CommandTopicTemplate {
    type Err = CommandTopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let gw = Identity::new("app".parse().expect("app"), "gw".parse().expect("gw"));
        CommandTopic::new(s, &gw)?;
        Ok(Self(s.to_owned()))
    }
}

impl CommandTopicTemplate {
    /// The template for this gateway.
    pub fn for_gateway(&self, gateway: &Identity) -> CommandTopic {
        CommandTopic::new(&self.0, gateway).expect("checked when parsed")
    }
}

impl CommandTopic {
    /// Drogue's `command/inbox/{device}/{command}`, subscribed as `command/inbox/#`.
    pub fn drogue(gateway: &Identity) -> Self {
        Self::new(DROGUE, gateway).expect("a valid template")
    }

    /// Parses `template` for `gateway`.
    pub fn new(template: &str, gateway: &Identity) -> Result<Self, CommandTopicError> {
        let bad = |why: String| CommandTopicError(format!("{template:?}: {why}"));
        if template.is_empty() || template.starts_with('$') {
            return Err(bad("must not be empty or start with '$'".into()));
        }
        if template.chars().any(|c| matches!(c, '+' | '#') || c.is_control()) {
            return Err(bad("holds a wildcard or a control character".into()));
        }
        let mut levels = Vec::new();
        for level in template.split('/') {
            levels.push(match level {
                "{device}" => Level::Device,
                "{command}" => Level::Command,
                "{app}" => Level::Text(gateway.app().as_str().to_owned()),
                "{gateway}" => Level::Text(gateway.device().as_str().to_owned()),
                text if text.contains(['{', '}']) => {
                    return Err(bad(format!(
                        "level {text:?}: a placeholder ({{device}}, {{command}}, {{app}}, \
                         {{gateway}}) must be a whole level"
                    )));
                }
                text => Level::Text(text.to_owned()),
            });
        }
        for (want, name) in [(Level::Device, "{device}"), (Level::Command, "{command}")] {
            if levels.iter().filter(|l| **l == want).count() != 1 {
                return Err(bad(format!("needs exactly one {name} level")));
            }
        }
        let mut filter = String::new();
        for level in &levels {
            let Level::Text(text) = level else { break };
            filter.push_str(text);
            filter.push('/');
        }
        filter.push('#');
        Ok(Self { levels, filter })
    }

    /// The filter subscribed after every CONNACK.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The device and command of a command published on `topic`; an empty device level, or
    /// the gateway's own name, is the gateway itself.
    pub fn parse(&self, topic: &str, gateway: &DeviceId) -> Result<InboxTopic, String> {
        let mut parts = topic.split('/');
        let (mut device, mut command) = (None, None);
        for level in &self.levels {
            let Some(part) = parts.next() else {
                return Err(format!("{topic:?} is shorter than the command topic"));
            };
            match level {
                Level::Text(text) if text == part => {}
                Level::Text(text) => {
                    return Err(format!("{topic:?} has {part:?} where {text:?} belongs"));
                }
                Level::Device => device = Some(part),
                Level::Command => command = Some(part),
            }
        }
        if parts.next().is_some() {
            return Err(format!("{topic:?} is longer than the command topic"));
        }
        let (Some(device), Some(command)) = (device, command) else {
            return Err(format!("{topic:?} names no device or command"));
        };
        let device = if device.is_empty() {
            gateway.clone()
        } else {
            DeviceId::new(device).map_err(|e| format!("{topic:?}: {e}"))?
        };
        let command = CommandName::new(command).map_err(|e| format!("{topic:?}: {e}"))?;
        Ok(InboxTopic { device, command })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Identity {
        Identity::new("my-app".parse().unwrap(), "gw1".parse().unwrap())
    }

    #[test]
    fn drogue_routes_device_and_gateway_commands() {
        let t = CommandTopic::drogue(&gw());
        assert_eq!(t.filter(), "command/inbox/#");
        let me = gw().device().clone();
        let s = t.parse("command/inbox/sensor1/set-temp", &me).unwrap();
        assert_eq!((s.device.as_str(), s.command.as_str()), ("sensor1", "set-temp"));
        let own = t.parse("command/inbox//reboot", &me).unwrap();
        assert_eq!((own.device.as_str(), own.command.as_str()), ("gw1", "reboot"));
        let alias = t.parse("command/inbox/CN=s1, O=Org/x", &me).unwrap();
        assert_eq!(alias.device.as_str(), "CN=s1, O=Org");
        for bad in [
            "telemetry/sensor1",
            "command/inbox/sensor1",
            "command/inbox/sensor1/a/b",
            "command/inbox/sensor1/",
            "command/outbox/sensor1/x",
            "command/inbox/ sensor1/x",
        ] {
            assert!(t.parse(bad, &me).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_site_template_fills_in_the_gateway_and_subscribes_its_prefix() {
        let t = CommandTopic::new("site/{app}/{gateway}/cmd/{device}/{command}", &gw()).unwrap();
        assert_eq!(t.filter(), "site/my-app/gw1/cmd/#");
        let me = gw().device().clone();
        let s = t.parse("site/my-app/gw1/cmd/sensor1/set-led", &me).unwrap();
        assert_eq!((s.device.as_str(), s.command.as_str()), ("sensor1", "set-led"));
        let own = t.parse("site/my-app/gw1/cmd/gw1/resync", &me).unwrap();
        assert_eq!(own.device.as_str(), "gw1");
        assert!(t.parse("site/my-app/gw2/cmd/sensor1/x", &me).is_err(), "another gateway's");
        let first = CommandTopic::new("{command}/to/{device}", &gw()).unwrap();
        assert_eq!(first.filter(), "#");
        let s = first.parse("blink/to/s2", &me).unwrap();
        assert_eq!((s.device.as_str(), s.command.as_str()), ("s2", "blink"));
    }

    #[test]
    fn refuses_templates_that_cannot_name_a_command() {
        for (template, says) in [
            ("site/{device}", "exactly one {command}"),
            ("site/{command}", "exactly one {device}"),
            ("site/{device}/{device}/{command}", "exactly one {device}"),
            ("site/x{device}/{command}", "whole level"),
            ("site/{dev}/{command}", "whole level"),
            ("site/+/{device}/{command}", "wildcard"),
            ("$SYS/{device}/{command}", "'$'"),
            ("", "empty"),
        ] {
            let e = template.parse::<CommandTopicTemplate>().unwrap_err().to_string();
            assert!(e.contains(says), "{template:?}: {e}");
        }
    }
}
