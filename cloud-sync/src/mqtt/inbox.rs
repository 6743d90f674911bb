//! Commands on the Drogue MQTT uplink: the gateway subscribes `command/inbox/#` and Drogue
//! delivers `command/inbox/<device>/<command>` for each device it proxies and
//! `command/inbox//<command>` for the gateway itself (contracts/drogue-cloud.md §2).

use gw_model::{CommandName, DeviceId};

/// The filter the Drogue MQTT uplink subscribes after every CONNACK.
pub const FILTER: &str = "command/inbox/#";

/// Where a command published on the inbox goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTopic {
    /// The device the command is for (the gateway's own name for `command/inbox//<cmd>`).
    pub device: DeviceId,
    pub command: CommandName,
}

/// Parses `command/inbox/<device>/<command>`; an empty device means `gateway`.
pub fn parse(topic: &str, gateway: &DeviceId) -> Result<InboxTopic, String> {
    let rest = topic
        .strip_prefix("command/inbox/")
        .ok_or_else(|| format!("{topic:?} is not under command/inbox/"))?;
    let (device, command) = rest
        .split_once('/')
        .ok_or_else(|| format!("{topic:?} is not command/inbox/<device>/<command>"))?;
    let device = if device.is_empty() {
        gateway.clone()
    } else {
        DeviceId::new(device).map_err(|e| format!("{topic:?}: {e}"))?
    };
    let command = CommandName::new(command).map_err(|e| format!("{topic:?}: {e}"))?;
    Ok(InboxTopic { device, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> DeviceId {
        DeviceId::new("gw1").unwrap()
    }

    #[test]
    fn routes_device_and_gateway_commands() {
        let t = parse("command/inbox/sensor1/set-temp", &gw()).unwrap();
        assert_eq!((t.device.as_str(), t.command.as_str()), ("sensor1", "set-temp"));
        let own = parse("command/inbox//reboot", &gw()).unwrap();
        assert_eq!((own.device.as_str(), own.command.as_str()), ("gw1", "reboot"));
        let alias = parse("command/inbox/CN=s1, O=Org/x", &gw()).unwrap();
        assert_eq!(alias.device.as_str(), "CN=s1, O=Org");
    }

    #[test]
    fn refuses_other_topics() {
        for bad in [
            "telemetry/sensor1",
            "command/inbox/sensor1",
            "command/inbox/sensor1/a/b",
            "command/inbox/sensor1/",
            "command/outbox/sensor1/x",
            "command/inbox/ sensor1/x",
        ] {
            assert!(parse(bad, &gw()).is_err(), "{bad}");
        }
    }
}
