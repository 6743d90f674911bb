//! The `[commands]` config section: how long commands wait for a sensor, the queue's bounds,
//! where outcomes are reported, and what `reboot` runs.

use std::time::Duration;

use gw_model::{ByteSize, Channel};
use serde::{Deserialize, Serialize};

/// `[commands]`: the command router and its durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// How long a command waits for its sensor when the cloud sets no expiry of its own.
    #[serde(default = "default_ttl", with = "gw_model::serde_util::duration")]
    pub ttl: Duration,
    /// Commands waiting for one sensor; more are refused (push: 503).
    #[serde(default = "default_max_per_device")]
    pub max_per_device: usize,
    /// Commands waiting over all sensors.
    #[serde(default = "default_max_total")]
    pub max_total: usize,
    /// Payload bytes waiting over all sensors.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Largest command payload taken (push: 413).
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Outcomes kept for the status page, newest first.
    #[serde(default = "default_recent")]
    pub recent: usize,
    /// When set, every command's outcome is also sent upstream as telemetry of the gateway
    /// itself on this channel (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_channel: Option<Channel>,
    /// What the `reboot` gateway command runs (program and arguments). Without it, `reboot`
    /// stops gatewayd with a failure exit code so that its supervisor (systemd
    /// `Restart=on-failure`) starts it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_command: Vec<String>,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_per_device: default_max_per_device(),
            max_total: default_max_total(),
            max_bytes: default_max_bytes(),
            max_payload: default_max_payload(),
            recent: default_recent(),
            report_channel: None,
            reboot_command: Vec::new(),
        }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_per_device() -> usize {
    100
}

fn default_max_total() -> usize {
    10_000
}

fn default_max_bytes() -> ByteSize {
    ByteSize::new(16 * 1024 * 1024)
}

fn default_max_payload() -> ByteSize {
    ByteSize::new(64 * 1024)
}

fn default_recent() -> usize {
    50
}

impl CommandsConfig {
    /// Checks the values serde cannot: `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.ttl.is_zero() {
            return Err(("ttl", "must be longer than 0s".into()));
        }
        if self.max_per_device == 0 {
            return Err(("max_per_device", "must be at least 1".into()));
        }
        if self.max_total < self.max_per_device {
            return Err(("max_total", "must be at least max_per_device".into()));
        }
        if self.max_payload.bytes() == 0 {
            return Err(("max_payload", "must be at least 1 byte".into()));
        }
        if self.max_bytes.bytes() < self.max_payload.bytes() {
            return Err(("max_bytes", "must be at least max_payload".into()));
        }
        if self.recent > 10_000 {
            return Err(("recent", "at most 10000 outcomes are kept".into()));
        }
        if self.reboot_command.first().is_some_and(|p| p.trim().is_empty()) {
            return Err(("reboot_command", "the program name is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert_eq!(CommandsConfig::default().validate(), Ok(()));
        let c: CommandsConfig = toml::from_str("ttl = \"0s\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "ttl");
        let c: CommandsConfig = toml::from_str("max_per_device = 10\nmax_total = 5").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "max_total");
        let c: CommandsConfig = toml::from_str("max_bytes = \"1KiB\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "max_bytes");
        let c: CommandsConfig = toml::from_str("reboot_command = [\"\"]").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "reboot_command");
        assert!(toml::from_str::<CommandsConfig>("report_channel = \"a/b\"").is_err());
        assert!(toml::from_str::<CommandsConfig>("colour = 1").is_err());
    }
}
