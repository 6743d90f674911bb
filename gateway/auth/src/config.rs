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
//! # The old installation's CheckLogin endpoint; absent = no legacy migration.
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

/// The `[auth]` section; see the module docs for every key and its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_login_url: Option<String>,
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
            legacy_timeout: Duration::from_secs(5),
            max_failures: 5,
            lockout_min: Duration::from_secs(1),
            lockout_max: Duration::from_secs(300),
            limiter_entries: 10_000,
            verified_cache_entries: 10_000,
        }
    }
}

impl AuthConfig {
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
