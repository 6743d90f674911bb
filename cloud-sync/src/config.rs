//! The `[cloud]` section: where the gateway sends its sensors' messages, and how.

use std::{path::PathBuf, time::Duration};

use gw_model::Secret;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::CloudError;

/// Which upstream protocol the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudKind {
    /// Drogue Cloud's HTTP endpoint: `POST {url}/v1/{channel}?as={device}`.
    DrogueHttp,
}

/// `[cloud]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub kind: CloudKind,
    /// drogue-http: the endpoint's base URL, `https://http.example.com`.
    pub url: String,
    /// The gateway's password in the cloud (development only) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// ... or the file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
    /// PEM file of the CA(s) to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Requests (or publishes) in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one request may take before it counts as failed and is retried.
    #[serde(default = "default_timeout", with = "gw_model::serde_util::duration")]
    pub timeout: Duration,
    /// First retry delay after a transient failure; doubles per failure (with jitter).
    #[serde(default = "default_retry_min", with = "gw_model::serde_util::duration")]
    pub retry_min: Duration,
    /// Longest retry delay.
    #[serde(default = "default_retry_max", with = "gw_model::serde_util::duration")]
    pub retry_max: Duration,
    /// How often devices the cloud refused (403) are tried again.
    #[serde(default = "default_parked_retry", with = "gw_model::serde_util::duration")]
    pub parked_retry: Duration,
}

fn default_concurrency() -> usize {
    32
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_min() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
fn default_parked_retry() -> Duration {
    Duration::from_secs(60)
}

impl CloudConfig {
    /// A config for `url` with every other key at its default (tests, the demo).
    pub fn new(kind: CloudKind, url: impl Into<String>, password: Secret) -> Self {
        Self {
            kind,
            url: url.into(),
            password: Some(password),
            password_file: None,
            ca_file: None,
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            retry_min: default_retry_min(),
            retry_max: default_retry_max(),
            parked_retry: default_parked_retry(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), CloudError> {
        let url = self.url.trim_end_matches('/');
        let ok_scheme = match self.kind {
            CloudKind::DrogueHttp => url.starts_with("http://") || url.starts_with("https://"),
        };
        if !ok_scheme || url.len() <= "https://".len() {
            return Err(CloudError::Config {
                key: "url",
                reason: format!("{:?} is not an http:// or https:// URL", self.url),
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
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(CloudError::Config {
                key: "password",
                reason: "set password or password_file, not both".into(),
            }),
            (None, None) => Err(CloudError::Config {
                key: "password_file",
                reason: "the gateway needs its cloud password (password_file or password)".into(),
            }),
            _ => Ok(()),
        }
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
}
