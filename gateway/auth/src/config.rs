//! The `[auth]` config section.
//!
//! ```toml
//! [auth]
//! # argon2id parameters for every password hashed on the gateway (plain registry passwords,
//! # local accounts, migrated legacy accounts). Chosen so 1,000 sensors reconnecting at once
//! # after a reboot are all verified in < 5 s on a 2-core board (docs/benchmarks.md):
//! # one verification takes ~3 ms there. Raising them slows every cold login in proportion.
//! argon2_memory_kib = 4096          # memory per hash, KiB (>= 8)
//! argon2_iterations = 1             # passes over the memory (>= 1)
//! argon2_parallelism = 1            # lanes (>= 1); hashes already run in parallel, one per core
//! # Migratory applications (seeds/003): each with the CheckLogin URL of its old installation.
//! # Only identities of a listed application are ever sent to its service; a login the service
//! # confirms becomes a local account of that application. None listed = no migration.
//! # [[auth.legacy]]
//! # application = "my-app"          # the gateway's application (sensors) ...
//! # url = "https://legacy.example.com/api/login"
//! # [[auth.legacy]]
//! # application = "technicians"     # ... or web.technician_app, which also needs:
//! # url = "https://old-portal.example.com/api/login"
//! # technicians = true              # its accounts open the status page: off by default
//! # The same as one [[auth.legacy]] for the gateway's application (older configs):
//! # legacy_login_url = "https://legacy.example.com/api/login"
//! legacy_timeout = "5s"             # per legacy request; a timeout fails the login (closed)
//! max_failures = 5                  # failed attempts per identifier / source address before lockout
//! lockout_min = "1s"                # first lockout; doubles with each further failure
//! lockout_max = "5m"                # longest lockout
//! limiter_entries = 10000           # identifiers + addresses the limiter remembers (oldest evicted)
//! verified_cache_entries = 10000    # remembered successful verifications (HMAC keys, no secrets)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AuthError, HashParams};

/// One `[[auth.legacy]]`: a migratory application and its old installation's CheckLogin URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyApp {
    pub application: String,
    pub url: String,
    /// Needed (and only allowed) for the technicians' application: its migrated accounts log
    /// in to the status page.
    #[serde(default)]
    pub technicians: bool,
}

/// The `[auth]` section; see the module docs for every key and its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// The legacy service of the gateway's own application (the same as one `[[auth.legacy]]`
    /// naming `gateway.application`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_login_url: Option<String>,
    /// The migratory applications, each with its own service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legacy: Vec<LegacyApp>,
    #[serde(with = "gw_model::serde_util::duration")]
    pub legacy_timeout: Duration,
    pub max_failures: u32,
    #[serde(with = "gw_model::serde_util::duration")]
    pub lockout_min: Duration,
    #[serde(with = "gw_model::serde_util::duration")]
    pub lockout_max: Duration,
    pub limiter_entries: usize,
    pub verified_cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 4096,
            argon2_iterations: 1,
            argon2_parallelism: 1,
            legacy_login_url: None,
            legacy: Vec::new(),
            legacy_timeout: Duration::from_secs(5),
            max_failures: 5,
            lockout_min: Duration::from_secs(1),
            lockout_max: Duration::from_secs(300),
            limiter_entries: 10_000,
            verified_cache_entries: 10_000,
        }
    }
}

/// Checks the migratory applications against the gateway's roles: each is the gateway's
/// application (sensors) or the technicians' (which needs `technicians = true`), listed once
/// (`None` stands for `legacy_login_url`, the gateway's application).
pub(crate) fn check_legacy_roles<'a>(
    entries: impl Iterator<Item = (Option<&'a gw_model::AppId>, bool)>,
    sensor_app: &gw_model::AppId,
    technician_app: &gw_model::AppId,
) -> Result<(), AuthError> {
    let bad = |key, reason: String| Err(AuthError::InvalidConfig { key, reason });
    let mut sensor_listed = 0;
    for (app, technicians) in entries {
        let Some(app) = app else {
            sensor_listed += 1;
            continue;
        };
        if app == technician_app && !technicians {
            return bad(
                "legacy",
                format!(
                    "{app:?} is the technicians' application: its migrated accounts would open the status page; set technicians = true to allow that"
                ),
            );
        }
        if app == sensor_app {
            if technicians {
                return bad(
                    "legacy",
                    format!("technicians = true is for the technicians' application, not {app:?}"),
                );
            }
            sensor_listed += 1;
        } else if app != technician_app {
            return bad(
                "legacy",
                format!(
                    "{app:?} is neither the gateway's application ({sensor_app:?}) nor the technicians' ({technician_app:?}); only their identities log in here"
                ),
            );
        }
    }
    if sensor_listed > 1 {
        return bad(
            "legacy",
            format!(
                "{sensor_app:?} has more than one legacy service (legacy_login_url and [[auth.legacy]]); keep one"
            ),
        );
    }
    Ok(())
}

impl AuthConfig {
    /// Checks the migratory applications against the gateway's application and the
    /// technicians' (the daemon calls this at config load).
    pub fn validate_roles(
        &self,
        sensor_app: &gw_model::AppId,
        technician_app: &gw_model::AppId,
    ) -> Result<(), AuthError> {
        let apps: Vec<(gw_model::AppId, bool)> = self
            .legacy
            .iter()
            .filter_map(|l| {
                gw_model::AppId::new(l.application.as_str()).ok().map(|a| (a, l.technicians))
            })
            .collect();
        let gateway = self.legacy_login_url.iter().map(|_| (None, false));
        let listed = apps.iter().map(|(a, t)| (Some(a), *t));
        check_legacy_roles(gateway.chain(listed), sensor_app, technician_app)
    }

    /// The argon2id parameters, checked.
    pub fn hash_params(&self) -> Result<HashParams, AuthError> {
        HashParams::new(self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism)
    }

    /// Checks every value; the daemon calls this at config load so errors name the key.
    pub fn validate(&self) -> Result<(), AuthError> {
        self.hash_params()?;
        let bad = |key, reason: &str| Err(AuthError::InvalidConfig { key, reason: reason.into() });
        if let Some(url) = &self.legacy_login_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("legacy_login_url", "must be an http:// or https:// URL");
        }
        let mut seen = Vec::new();
        for l in &self.legacy {
            if !(l.url.starts_with("http://") || l.url.starts_with("https://")) {
                return bad("legacy.url", "must be an http:// or https:// URL");
            }
            if gw_model::AppId::new(l.application.as_str()).is_err() {
                return bad("legacy.application", "must be an application name");
            }
            if seen.contains(&l.application) {
                return bad("legacy.application", "each application may be listed once");
            }
            seen.push(l.application.clone());
        }
        if self.legacy_timeout.is_zero() {
            return bad("legacy_timeout", "must be more than 0s");
        }
        if self.max_failures == 0 {
            return bad("max_failures", "must be at least 1");
        }
        if self.lockout_min.is_zero() || self.lockout_max < self.lockout_min {
            return bad("lockout_max", "lockout_min must be > 0s and lockout_max >= lockout_min");
        }
        if self.limiter_entries == 0 || self.verified_cache_entries == 0 {
            return bad(
                "limiter_entries",
                "limiter_entries and verified_cache_entries must be > 0",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_section_parses_and_defaults_fill_the_rest() {
        let c: AuthConfig = toml::from_str(
            r#"argon2_memory_kib = 8192
               legacy_login_url = "http://127.0.0.1:9/api/login"
               legacy_timeout = "2s"
               lockout_max = "10m""#,
        )
        .unwrap();
        assert_eq!(c.argon2_memory_kib, 8192);
        assert_eq!(c.legacy_timeout, Duration::from_secs(2));
        assert_eq!(c.lockout_max, Duration::from_secs(600));
        assert_eq!(c.max_failures, 5);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<AuthConfig>("argon2_memory = 1").unwrap_err().to_string();
        assert!(err.contains("argon2_memory"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = AuthConfig { argon2_memory_kib: 1, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("argon2"));
        let c = AuthConfig { legacy_login_url: Some("ftp://x".into()), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("legacy_login_url"));
        let c = AuthConfig { max_failures: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("max_failures"));
    }

    #[test]
    fn default_round_trips_through_toml() {
        let c = AuthConfig::default();
        let back: AuthConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
