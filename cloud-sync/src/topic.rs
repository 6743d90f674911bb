//! Topic templates for the generic MQTT uplink: `site/{app}/{device}/{channel}`.
//!
//! Placeholders are `{app}`, `{device}`, `{channel}` and `{gateway}` (the gateway's own name).
//! A template is checked once, at config load; rendering cannot fail, because the ids that
//! fill it never hold `/`, `+`, `#` (gw-model checks them at the edge).

use std::{fmt, str::FromStr};

use gw_model::{Identity, Telemetry};

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    App,
    Device,
    Channel,
    Gateway,
}

impl Part {
    fn name(&self) -> &str {
        match self {
            Part::Text(t) => t,
            Part::App => "{app}",
            Part::Device => "{device}",
            Part::Channel => "{channel}",
            Part::Gateway => "{gateway}",
        }
    }
}

/// Why a template was refused; the config error names `cloud.topic` around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(reason: impl Into<String>) -> TemplateError {
    TemplateError(reason.into())
}

impl FromStr for TopicTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(err("the topic template is empty"));
        }
        if s.starts_with('$') {
            return Err(err("topics starting with '$' are reserved for the broker"));
        }
        if let Some(c) = s.chars().find(|c| matches!(c, '+' | '#')) {
            return Err(err(format!(
                "{s:?} holds the wildcard '{c}', which a published topic must not contain"
            )));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(err(format!("{s:?} holds a control character")));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(err(format!("{s:?} has a '}}' without its '{{'")));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| err(format!("{s:?} has a '{{' without its '}}'")))?;
                    parts.push(match &after[..end] {
                        "app" => Part::App,
                        "device" => Part::Device,
                        "channel" => Part::Channel,
                        "gateway" => Part::Gateway,
                        other => {
                            return Err(err(format!(
                                "unknown placeholder {{{other}}} in {s:?}; \
                                 known: {{app}}, {{device}}, {{channel}}, {{gateway}}"
                            )));
                        }
                    });
                    rest = &after[end + 1..];
                }
            }
        }
        if !parts.contains(&Part::Device) {
            return Err(err(format!(
                "{s:?} has no {{device}}: the sensors' messages could not be told apart"
            )));
        }
        Ok(Self { parts })
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts.iter().try_for_each(|p| f.write_str(p.name()))
    }
}

impl TopicTemplate {
    /// The topic for `t`, sent by the gateway `gateway`.
    pub fn render(&self, gateway: &Identity, t: &Telemetry) -> String {
        let mut topic = String::with_capacity(64);
        for part in &self.parts {
            topic.push_str(match part {
                Part::Text(text) => text,
                Part::App => t.app.as_str(),
                Part::Device => t.device.as_str(),
                Part::Channel => t.channel.as_str(),
                Part::Gateway => gateway.device().as_str(),
            });
        }
        topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> Telemetry {
        Telemetry {
            app: "my-app".parse().unwrap(),
            device: "sensor 1".parse().unwrap(),
            channel: "temp".parse().unwrap(),
            suffix: None,
            content_type: None,
            data_schema: None,
            received_at: gw_model::Timestamp::from_millis(0),
            payload: bytes::Bytes::from_static(b"{}"),
            command_wait: None,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let gw = Identity::new("my-app".parse().unwrap(), "gw1".parse().unwrap());
        let t: TopicTemplate = "site/{gateway}/{app}/{device}/{channel}".parse().unwrap();
        assert_eq!(t.render(&gw, &telemetry()), "site/gw1/my-app/sensor 1/temp");
        let t: TopicTemplate = "{device}".parse().unwrap();
        assert_eq!(t.render(&gw, &telemetry()), "sensor 1");
        let t: TopicTemplate = "x-{device}-{channel}y".parse().unwrap();
        assert_eq!(t.render(&gw, &telemetry()), "x-sensor 1-tempy");
    }

    #[test]
    fn display_round_trips() {
        for s in ["site/{app}/{device}/{channel}", "{gateway}/{device}", "a{device}b"] {
            assert_eq!(s.parse::<TopicTemplate>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_wildcards_unknown_placeholders_and_broken_braces() {
        for (template, says) in [
            ("site/+/{device}", "wildcard '+'"),
            ("site/{device}/#", "wildcard '#'"),
            ("site/{dev}/x", "unknown placeholder {dev}"),
            ("site/{device", "without its '}'"),
            ("site/device}", "without its '{'"),
            ("site/{app}", "no {device}"),
            ("$SYS/{device}", "reserved"),
            ("", "empty"),
        ] {
            let e = template.parse::<TopicTemplate>().unwrap_err().to_string();
            assert!(e.contains(says), "{template:?}: {e}");
        }
    }
}
