//! The `drogue/v1` topic dialect (contracts/drogue-cloud.md §2), pure: publish topics
//! `<channel>` and `<channel>/<device>`, the command filters a device may subscribe to, and
//! the topic a routed command is delivered on.

/// Where a PUBLISH goes: a channel, as the sender itself or on behalf of another device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PublishTopic<'a> {
    pub channel: &'a str,
    /// The device named in the topic (name, alias or unique username); `None`: yourself.
    pub as_device: Option<&'a str>,
}

/// Parses a `drogue/v1` publish topic; `None` is "topic name invalid": an empty channel or
/// device, or a third segment.
pub(crate) fn parse_publish(topic: &str) -> Option<PublishTopic<'_>> {
    let mut parts = topic.split('/');
    let channel = parts.next().filter(|c| !c.is_empty())?;
    let as_device = match parts.next() {
        None => None,
        Some("") => return None,
        Some(d) => Some(d),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(PublishTopic { channel, as_device })
}

/// What an accepted command subscription selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CommandSub {
    /// `command/inbox/#` or `command/inbox/+/#`: own commands and every proxied device's.
    All,
    /// `command/inbox//#`: own commands only.
    Own,
    /// `command/inbox/<device>/#`: commands for that device routed via this connection.
    Device(String),
}

/// The command subscription a filter asks for; `None`: not accepted (SUBACK failure).
pub(crate) fn parse_filter(filter: &str) -> Option<CommandSub> {
    match filter.strip_prefix("command/inbox/")? {
        "#" | "+/#" => Some(CommandSub::All),
        "/#" => Some(CommandSub::Own),
        rest => {
            let device = rest.strip_suffix("/#")?;
            let valid = !device.is_empty() && !device.contains(['/', '+', '#']);
            valid.then(|| CommandSub::Device(device.to_owned()))
        }
    }
}

/// The topic a command for `device` (`me` when it is the connection's own) is delivered on,
/// given the connection's subscriptions; `None`: not subscribed. A command is delivered
/// once however many subscriptions select it.
pub(crate) fn delivery_topic<'a>(
    subs: impl IntoIterator<Item = &'a CommandSub> + Clone,
    me: &str,
    device: &str,
    command: &str,
) -> Option<String> {
    let has = |want: &dyn Fn(&CommandSub) -> bool| subs.clone().into_iter().any(want);
    let own = device == me;
    if own && has(&|s| matches!(s, CommandSub::All | CommandSub::Own)) {
        return Some(format!("command/inbox//{command}"));
    }
    let selected = has(&|s| match s {
        CommandSub::All => !own,
        CommandSub::Own => false,
        CommandSub::Device(d) => d == device,
    });
    selected.then(|| format!("command/inbox/{device}/{command}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_topics_channel_first() {
        assert_eq!(parse_publish("temp"), Some(PublishTopic { channel: "temp", as_device: None }));
        assert_eq!(
            parse_publish("temp/sensor1"),
            Some(PublishTopic { channel: "temp", as_device: Some("sensor1") })
        );
        for bad in ["", "/x", "temp/", "temp/s1/extra", "a//b"] {
            assert_eq!(parse_publish(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_command_inbox_filters_are_accepted() {
        assert_eq!(parse_filter("command/inbox/#"), Some(CommandSub::All));
        assert_eq!(parse_filter("command/inbox/+/#"), Some(CommandSub::All));
        assert_eq!(parse_filter("command/inbox//#"), Some(CommandSub::Own));
        assert_eq!(parse_filter("command/inbox/s1/#"), Some(CommandSub::Device("s1".into())));
        for bad in [
            "#",
            "command/#",
            "command/inbox/s1/set",
            "command/inbox//set",
            "command/inbox/s1/+",
            "command/inbox/a/b/#",
            "command/inbox/+/set",
            "temp",
        ] {
            assert_eq!(parse_filter(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn delivery_follows_the_table() {
        let all = [CommandSub::All];
        assert_eq!(delivery_topic(&all, "gw", "gw", "c").as_deref(), Some("command/inbox//c"));
        assert_eq!(delivery_topic(&all, "gw", "s1", "c").as_deref(), Some("command/inbox/s1/c"));
        let own = [CommandSub::Own];
        assert_eq!(delivery_topic(&own, "gw", "gw", "c").as_deref(), Some("command/inbox//c"));
        assert_eq!(delivery_topic(&own, "gw", "s1", "c"), None);
        let one = [CommandSub::Device("s1".into())];
        assert_eq!(delivery_topic(&one, "gw", "s1", "c").as_deref(), Some("command/inbox/s1/c"));
        assert_eq!(delivery_topic(&one, "gw", "s2", "c"), None);
        assert_eq!(delivery_topic(&one, "gw", "gw", "c"), None);
        let none: [CommandSub; 0] = [];
        assert_eq!(delivery_topic(&none, "gw", "gw", "c"), None);
    }
}
