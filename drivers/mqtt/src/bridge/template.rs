//! Topic templates of the legacy broker bridge: which site-broker topics a mapping takes and
//! what device and channel each one names ([`TopicTemplate`]), and where a command for a
//! bridged device is published ([`CommandTemplate`]).
//!
//! A template is a topic split at `/`; each segment is a literal, `+` (any one segment),
//! `#` (any rest, last segment only) or a placeholder that is a whole segment: `{device}`,
//! `{channel}` in topic templates, `{device}`, `{command}` in command templates. Each
//! placeholder may appear once. `sensors/{device}/{channel}` subscribes to `sensors/+/+`;
//! `plant1/+/{device}/telemetry` subscribes to `plant1/+/+/telemetry`.

use std::{fmt, str::FromStr};

use gw_model::{Channel, CommandName, DeviceId};

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template is empty")]
    Empty,
    #[error("segment {index} ({segment:?}): {reason}")]
    Segment { index: usize, segment: String, reason: &'static str },
    #[error("{{{0}}} appears more than once")]
    Repeated(&'static str),
    #[error("{{{0}}} is required")]
    Missing(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `+`
    Any,
    /// `#`, last only.
    Rest,
    Device,
    Channel,
    Command,
}

impl Segment {
    fn parse(index: usize, s: &str, allowed: &[&'static str]) -> Result<Self, TemplateError> {
        let bad = |reason| Err(TemplateError::Segment { index, segment: s.to_owned(), reason });
        match s {
            "+" => Ok(Self::Any),
            "#" => Ok(Self::Rest),
            _ if s.starts_with('{') && s.ends_with('}') => {
                let name = &s[1..s.len() - 1];
                match allowed.iter().find(|a| **a == name) {
                    Some(&"device") => Ok(Self::Device),
                    Some(&"channel") => Ok(Self::Channel),
                    Some(&"command") => Ok(Self::Command),
                    _ => bad(placeholder_list(allowed)),
                }
            }
            _ if s.contains(['{', '}']) => bad("a placeholder must be a whole segment"),
            _ if s.contains(['+', '#']) => bad("'+' and '#' must be whole segments"),
            _ if s.contains('\0') => bad("NUL is not allowed in a topic"),
            _ => Ok(Self::Literal(s.to_owned())),
        }
    }

    fn placeholder(&self) -> Option<&'static str> {
        match self {
            Self::Device => Some("device"),
            Self::Channel => Some("channel"),
            Self::Command => Some("command"),
            _ => None,
        }
    }
}

fn placeholder_list(allowed: &[&'static str]) -> &'static str {
    if allowed.contains(&"command") {
        "unknown placeholder: use {device} or {command}"
    } else {
        "unknown placeholder: use {device} or {channel}"
    }
}

fn parse_segments(text: &str, allowed: &[&'static str]) -> Result<Vec<Segment>, TemplateError> {
    if text.is_empty() {
        return Err(TemplateError::Empty);
    }
    let parts: Vec<&str> = text.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = Segment::parse(i, part, allowed)?;
        if seg == Segment::Rest && i + 1 != parts.len() {
            return Err(TemplateError::Segment {
                index: i,
                segment: (*part).to_owned(),
                reason: "'#' may only be the last segment",
            });
        }
        if let Some(name) = seg.placeholder()
            && out.iter().any(|s: &Segment| s.placeholder() == Some(name))
        {
            return Err(TemplateError::Repeated(name));
        }
        out.push(seg);
    }
    Ok(out)
}

fn write_segments(segments: &[Segment], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            f.write_str("/")?;
        }
        match s {
            Segment::Literal(l) => f.write_str(l)?,
            Segment::Any => f.write_str("+")?,
            Segment::Rest => f.write_str("#")?,
            other => write!(f, "{{{}}}", other.placeholder().unwrap_or_default())?,
        }
    }
    Ok(())
}

/// Which topics a mapping takes, and where in the topic the device (and channel) stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    segments: Vec<Segment>,
}

/// What a matching topic names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    pub device: DeviceId,
    /// `None` when the template has no `{channel}` (the mapping fixes it).
    pub channel: Option<Channel>,
}

/// Why a topic that fits the template's shape names no valid device or channel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("the topic does not fit the template")]
    NoMatch,
    #[error("{0}")]
    Invalid(String),
}

impl TopicTemplate {
    /// Parses a topic template; `{device}` is required, `{channel}` optional.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let segments = parse_segments(text, &["device", "channel"])?;
        if !segments.contains(&Segment::Device) {
            return Err(TemplateError::Missing("device"));
        }
        Ok(Self { segments })
    }

    /// Whether the template names the channel (`{channel}`).
    pub fn has_channel(&self) -> bool {
        self.segments.contains(&Segment::Channel)
    }

    /// The subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Rest => "#",
                _ => "+",
            })
            .collect();
        parts.join("/")
    }

    /// Matches a concrete topic: the device (and channel) it names.
    pub fn matches(&self, topic: &str) -> Result<Matched, MatchError> {
        let mut device = None;
        let mut channel = None;
        let mut parts = topic.split('/');
        for seg in &self.segments {
            if *seg == Segment::Rest {
                // MQTT: `a/#` also matches `a`
                return finish(device, channel);
            }
            let Some(part) = parts.next() else { return Err(MatchError::NoMatch) };
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return Err(MatchError::NoMatch),
                Segment::Any => {}
                Segment::Device => device = Some(part),
                Segment::Channel => channel = Some(part),
                Segment::Rest | Segment::Command => return Err(MatchError::NoMatch),
            }
        }
        if parts.next().is_some() {
            return Err(MatchError::NoMatch);
        }
        finish(device, channel)
    }
}

fn finish(device: Option<&str>, channel: Option<&str>) -> Result<Matched, MatchError> {
    let device = device.ok_or(MatchError::NoMatch)?;
    let device = DeviceId::new(device).map_err(|e| MatchError::Invalid(e.to_string()))?;
    let channel =
        channel.map(Channel::new).transpose().map_err(|e| MatchError::Invalid(e.to_string()))?;
    Ok(Matched { device, channel })
}

impl FromStr for TopicTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_segments(&self.segments, f)
    }
}

/// Where a command for a bridged device is published: literals, `{device}` (required) and
/// `{command}`; no wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandTemplate {
    segments: Vec<Segment>,
}

impl CommandTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let segments = parse_segments(text, &["device", "command"])?;
        if let Some((index, seg)) =
            segments.iter().enumerate().find(|(_, s)| matches!(s, Segment::Any | Segment::Rest))
        {
            let segment = if *seg == Segment::Any { "+" } else { "#" };
            return Err(TemplateError::Segment {
                index,
                segment: segment.to_owned(),
                reason: "a command is published to one topic: no wildcards",
            });
        }
        if !segments.contains(&Segment::Device) {
            return Err(TemplateError::Missing("device"));
        }
        Ok(Self { segments })
    }

    /// The topic for `command` to `device`.
    pub fn render(&self, device: &DeviceId, command: &CommandName) -> String {
        let parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Device => device.as_str(),
                Segment::Command => command.as_str(),
                Segment::Any | Segment::Rest | Segment::Channel => "",
            })
            .collect();
        parts.join("/")
    }
}

impl fmt::Display for CommandTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_segments(&self.segments, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> TopicTemplate {
        TopicTemplate::parse(s).unwrap()
    }

    #[test]
    fn device_and_channel_from_the_topic() {
        let m = t("sensors/{device}/{channel}").matches("sensors/s7/temp").unwrap();
        assert_eq!(m.device, "s7");
        assert_eq!(m.channel.unwrap(), "temp");
        assert_eq!(t("sensors/{device}/{channel}").filter(), "sensors/+/+");
        assert_eq!(
            t("sensors/{device}/{channel}").matches("sensors/s7/temp/x"),
            Err(MatchError::NoMatch)
        );
        assert_eq!(t("sensors/{device}/{channel}").matches("sensors/s7"), Err(MatchError::NoMatch));
        assert_eq!(
            t("sensors/{device}/{channel}").matches("other/s7/temp"),
            Err(MatchError::NoMatch)
        );
    }

    #[test]
    fn wildcards_and_fixed_channel() {
        let tpl = t("plant1/+/{device}/telemetry");
        assert!(!tpl.has_channel());
        assert_eq!(tpl.filter(), "plant1/+/+/telemetry");
        let m = tpl.matches("plant1/hall3/s9/telemetry").unwrap();
        assert_eq!((m.device.as_str(), m.channel), ("s9", None));
        let rest = t("site/{device}/#");
        assert_eq!(rest.filter(), "site/+/#");
        assert_eq!(rest.matches("site/s1/a/b/c").unwrap().device, "s1");
        assert_eq!(rest.matches("site/s1").unwrap().device, "s1");
    }

    #[test]
    fn invalid_names_in_the_topic_are_reported() {
        let tpl = t("sensors/{device}/{channel}");
        assert!(matches!(tpl.matches("sensors//temp"), Err(MatchError::Invalid(_))));
        assert!(matches!(tpl.matches("sensors/s1/te mp"), Err(MatchError::Invalid(_))));
    }

    #[test]
    fn refuses_bad_templates_with_the_reason() {
        let e = |s: &str| TopicTemplate::parse(s).unwrap_err().to_string();
        assert_eq!(e(""), "the template is empty");
        assert_eq!(e("sensors/{channel}"), "{device} is required");
        assert_eq!(e("{device}/{device}"), "{device} appears more than once");
        assert!(e("a/#/{device}").contains("'#' may only be the last segment"), "{}", e("a/#/b"));
        assert!(e("a/x{device}").contains("whole segment"));
        assert!(e("a/b+/{device}").contains("whole segments"));
        assert!(e("a/{dev}/{device}").contains("unknown placeholder"));
        assert!(e("a/{command}/{device}").contains("unknown placeholder"));
        let c = |s: &str| CommandTemplate::parse(s).unwrap_err().to_string();
        assert!(c("a/+/{device}").contains("no wildcards"));
        assert_eq!(c("a/{command}"), "{device} is required");
        assert!(c("a/{channel}/{device}").contains("unknown placeholder"));
    }

    #[test]
    fn renders_command_topics() {
        let c = CommandTemplate::parse("sensors/{device}/commands/{command}").unwrap();
        let topic =
            c.render(&DeviceId::new("s7").unwrap(), &CommandName::new("set-interval").unwrap());
        assert_eq!(topic, "sensors/s7/commands/set-interval");
        assert_eq!(c.to_string(), "sensors/{device}/commands/{command}");
    }

    proptest! {
        /// A topic built from a template's own shape matches it and names what was put in;
        /// the template's text round-trips.
        #[test]
        fn built_topics_match_and_templates_round_trip(
            prefix in proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
            wild in proptest::collection::vec("[a-z0-9]{1,6}", 0..2),
            device in "[A-Za-z0-9_.-]{1,12}",
            channel in "[A-Za-z0-9_.~:-]{1,12}".prop_filter("a dot segment is no channel", |c| c != "." && c != ".."),
            device_first in any::<bool>(),
        ) {
            let mut tpl = prefix.clone();
            let mut topic = prefix.clone();
            for w in &wild {
                tpl.push("+".to_owned());
                topic.push(w.clone());
            }
            let (a, b) = if device_first {
                (("{device}", device.clone()), ("{channel}", channel.clone()))
            } else {
                (("{channel}", channel.clone()), ("{device}", device.clone()))
            };
            tpl.push(a.0.to_owned());
            topic.push(a.1);
            tpl.push(b.0.to_owned());
            topic.push(b.1);
            let text = tpl.join("/");
            let template = TopicTemplate::parse(&text).unwrap();
            prop_assert_eq!(template.to_string(), text);
            let m = template.matches(&topic.join("/")).unwrap();
            prop_assert_eq!(m.device.as_str(), device.as_str());
            let got = m.channel.unwrap();
            prop_assert_eq!(got.as_str(), channel.as_str());
            // one more segment never matches (no '#')
            prop_assert_eq!(template.matches(&format!("{}/x", topic.join("/"))), Err(MatchError::NoMatch));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}", topic in "\\PC{0,40}") {
            if let Ok(t) = TopicTemplate::parse(&text) {
                let _ = t.matches(&topic);
                let _ = t.filter();
            }
            let _ = CommandTemplate::parse(&text);
        }
    }
}
