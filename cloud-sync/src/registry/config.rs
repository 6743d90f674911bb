//! The `[registry]` section: where the gateway lists the devices it may act for.

use std::{path::PathBuf, time::Duration};

use gw_model::Secret;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::CloudError;

/// `[registry]`. Without it, the gateway knows only `[[devices]]` and local accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry API's base URL, `https://api.example.com` (the part before
    /// `/api/registry/v1alpha1`).
    pub url: String,
    /// The API token (development only) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// ... or the file holding it. Sent as `Authorization: Bearer <token>`, or with `user`
    /// set as Basic `user:token`; Drogue accepts both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<Spanned<PathBuf>>,
    /// The API user the token belongs to: switches to Basic `user:token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A label selector (`k=v,!k2,k3 in (a,b)`) passed as `labels=` to narrow the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// How often the registry is listed (±10 % jitter).
    #[serde(default = "default_interval", with = "gw_model::serde_util::duration")]
    pub interval: Duration,
    /// Devices asked for per request (`limit=`); at least 2 (pages overlap by one device).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// PEM file of the CA(s) to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long one request may take.
    #[serde(default = "default_timeout", with = "gw_model::serde_util::duration")]
    pub timeout: Duration,
    /// An event log polled as `GET {events_url}?since=N` (the dev cloud's
    /// `/api/devcloud/v1/events`) about every second; an `io.drogue.registry.v1` event of the
    /// gateway's application triggers a resync at once. Drogue itself offers these events on
    /// its MQTT and WebSocket integrations; consuming those is future work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    /// Also keep devices that name the gateway through the providers RFC: `spec.providers`
    /// (gateway names) or `spec.providerSelector` (labels of the gateway's own device, read
    /// from the registry at each listing). Only for a cloud that implements the RFC: Drogue
    /// Cloud authorizes `as=` and routes commands by `spec.gatewaySelector.matchNames` alone,
    /// so with this on against Drogue, their messages would be acknowledged and then refused.
    #[serde(default)]
    pub providers_rfc: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_page_size() -> usize {
    100
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The largest `page_size` accepted.
const MAX_PAGE_SIZE: usize = 10_000;

fn bad(key: &'static str, reason: impl Into<String>) -> CloudError {
    CloudError::RegistryConfig { key, reason: reason.into() }
}

fn check_http_url(key: &'static str, url: &str) -> Result<(), CloudError> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(['?', '#']) => {
            Ok(())
        }
        _ => Err(bad(key, format!("{url:?} is not an http:// or https:// URL"))),
    }
}

impl RegistryConfig {
    /// A config for `url` with the token inline and every other key at its default (tests,
    /// the demo).
    pub fn new(url: impl Into<String>, token: Secret) -> Self {
        Self {
            url: url.into(),
            token: Some(token),
            token_file: None,
            user: None,
            labels: None,
            interval: default_interval(),
            page_size: default_page_size(),
            ca_file: None,
            timeout: default_timeout(),
            events_url: None,
            providers_rfc: false,
        }
    }

    /// The rule deciding which listed devices the gateway may act for.
    pub fn proxy_rules(&self) -> gw_model::registry::ProxyRules {
        gw_model::registry::ProxyRules { providers_rfc: self.providers_rfc }
    }

    /// Checks what serde cannot; errors name the key, `registry.<key>`.
    pub fn validate(&self) -> Result<(), CloudError> {
        check_http_url("url", &self.url)?;
        if let Some(events) = &self.events_url {
            check_http_url("events_url", events)?;
        }
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => return Err(bad("token", "set token or token_file, not both")),
            // a registry that needs no token: nothing is sent (a user name needs one)
            (None, None) if self.user.is_some() => {
                return Err(bad("user", "needs token_file or token (the password sent with it)"));
            }
            (Some(t), None) if t.expose().trim().is_empty() => {
                return Err(bad("token", "must not be empty"));
            }
            _ => {}
        }
        if let Some(user) = &self.user
            && (user.is_empty() || user.contains(':'))
        {
            return Err(bad("user", "must be a non-empty name without ':'"));
        }
        if let Some(labels) = &self.labels
            && labels.trim().is_empty()
        {
            return Err(bad("labels", "must not be empty (leave it out to list every device)"));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(bad("interval", "must be at least 100ms"));
        }
        if !(2..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(bad(
                "page_size",
                format!("{} is outside 2..={MAX_PAGE_SIZE}", self.page_size),
            ));
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must not be 0"));
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_keys_with_defaults() {
        let c: RegistryConfig = toml::from_str(
            "url = \"https://api.example.com\"\ntoken_file = \"/etc/gatewayd/registry.token\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!((c.page_size, c.timeout), (100, Duration::from_secs(10)));
        let full = r#"
            url = "http://127.0.0.1:8080/"
            token = "t"
            user = "admin"
            labels = "site=berlin,!retired"
            interval = "30s"
            page_size = 50
            ca_file = "/etc/gatewayd/ca.pem"
            timeout = "5s"
            events_url = "http://127.0.0.1:8080/api/devcloud/v1/events"
            providers_rfc = true
        "#;
        let c: RegistryConfig = toml::from_str(full).unwrap();
        c.validate().unwrap();
        assert!(c.proxy_rules().providers_rfc);
        assert_eq!(c.base(), "http://127.0.0.1:8080");
        assert!(toml::from_str::<RegistryConfig>("url = \"http://x\"\ntokens = \"t\"\n").is_err());
    }

    /// Makes a valid config invalid in one key.
    type Breaker = fn(&mut RegistryConfig);

    #[test]
    fn errors_name_the_registry_key() {
        let ok = RegistryConfig::new("http://127.0.0.1:1", "t".into());
        ok.validate().unwrap();
        let key_of = |c: &RegistryConfig| c.validate().unwrap_err().to_string();
        let cases: [(&str, Breaker); 10] = [
            ("registry.url", |c| c.url = "ftp://x".into()),
            ("registry.url", |c| c.url = "https://".into()),
            ("registry.events_url", |c| c.events_url = Some("x".into())),
            ("registry.user", |c| {
                c.token = None;
                c.user = Some("op".into());
            }),
            ("registry.token", |c| c.token = Some(" ".into())),
            ("registry.user", |c| c.user = Some("a:b".into())),
            ("registry.labels", |c| c.labels = Some("".into())),
            ("registry.interval", |c| c.interval = Duration::from_millis(10)),
            ("registry.page_size", |c| c.page_size = 1),
            ("registry.timeout", |c| c.timeout = Duration::ZERO),
        ];
        for (key, break_it) in cases {
            let mut c = ok.clone();
            break_it(&mut c);
            let err = key_of(&c);
            assert!(err.starts_with(&format!("{key}: ")), "{key}: {err}");
        }
    }
}
