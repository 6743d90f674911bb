//! The cloud's command push endpoint on the web listener (`POST /api/commands/v1/push`, built
//! by gw-cloud-sync) and the `[web]` keys that configure it and HTTPS:
//!
//! - `push_token` / `push_token_file`: the Bearer secret Drogue sends (set it in the gateway
//!   device's `spec.commands` external endpoint `headers`). Without one the endpoint is not
//!   mounted at all (404): an unauthenticated command door is never opened by default.
//! - `cert_file` + `key_file`: the web listener serves HTTPS (all of its routes).
//! - `push_client_ca_file`: the push endpoint also requires a client certificate issued by this
//!   CA (mTLS); the other routes do not ask for one. Needs HTTPS.
//! - `push_max_bytes`: the largest push body; larger ones get 413.

use gw_cloud_sync::{
    CommandIntake,
    commands::push::{self, PushConfig},
};
use gw_model::Secret;

use crate::{
    config::{ConfigError, WebConfig, read_secret},
    web_tls::WebTls,
};

/// Checks the push and HTTPS keys of `[web]` and reads the push secret, if any.
pub fn resolve(web: &WebConfig, text: &str, origin: &str) -> Result<Option<Secret>, ConfigError> {
    let invalid = |key: &str, message: &str| ConfigError::Invalid {
        path: origin.to_owned(),
        key: format!("web.{key}"),
        message: message.to_owned(),
    };
    if web.cert_file.is_some() != web.key_file.is_some() {
        return Err(invalid("key_file", "set both cert_file and key_file for HTTPS, or neither"));
    }
    if web.push_client_ca_file.is_some() && web.cert_file.is_none() {
        return Err(invalid(
            "push_client_ca_file",
            "client certificates need HTTPS: set cert_file and key_file",
        ));
    }
    let token = match (&web.push_token, &web.push_token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid("push_token", "set push_token or push_token_file, not both"));
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(file)) => Some(read_secret(file, "web.push_token_file", text, origin)?),
        (None, None) => None,
    };
    if token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
        return Err(invalid("push_token", "must not be empty"));
    }
    if web.push_client_ca_file.is_some() && token.is_none() {
        return Err(invalid(
            "push_client_ca_file",
            "is for the push endpoint, which needs push_token or push_token_file",
        ));
    }
    if web.push_max_bytes.bytes() == 0 {
        return Err(invalid("push_max_bytes", "must be above 0"));
    }
    Ok(token)
}

/// The push route, when a push secret is configured; `None` leaves it unmounted (404).
pub fn router(
    web: &WebConfig,
    token: Option<Secret>,
    intake: CommandIntake,
) -> Option<axum::Router> {
    let token = token?;
    let config = PushConfig {
        token,
        require_client_cert: web.push_client_ca_file.is_some(),
        max_body: usize::try_from(web.push_max_bytes.bytes()).unwrap_or(usize::MAX),
        replay_window: web.push_replay_window,
    };
    if web.cert_file.is_none() {
        tracing::warn!(
            path = push::PATH,
            "the command push secret travels in clear over plain HTTP: anyone on the network path can read it and push commands; set [web] cert_file and key_file"
        );
    }
    tracing::info!(
        path = push::PATH,
        client_certificate = config.require_client_cert,
        "command push endpoint enabled"
    );
    Some(push::router(intake, config))
}

/// The web listener's TLS, when `cert_file` and `key_file` are set.
pub fn tls(web: &WebConfig) -> anyhow::Result<Option<WebTls>> {
    match (&web.cert_file, &web.key_file) {
        (Some(cert), Some(key)) => {
            Ok(Some(WebTls::load(cert, key, web.push_client_ca_file.as_deref())?))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(web: &str) -> Result<crate::config::Loaded, String> {
        let text = format!("[gateway]\nname = \"gw1\"\napplication = \"app\"\n[web]\n{web}");
        Config::from_str_at(&text, "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn push_is_off_without_a_secret_and_reads_the_secret_file() {
        assert!(load("").unwrap().push_token.is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("push.token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let loaded =
            load(&format!("push_token_file = {:?}\n", file.display().to_string())).unwrap();
        assert_eq!(loaded.push_token.unwrap().expose(), "s3cret");
        let err = load("push_token_file = \"/nonexistent/push.token\"\n").unwrap_err();
        assert!(err.starts_with("x.toml:5: web.push_token_file"), "{err}");
    }

    struct Nobody;

    impl gw_model::CommandSink for Nobody {
        async fn submit(&self, _: gw_model::Command) -> gw_model::CommandOutcome {
            gw_model::CommandOutcome::UnknownDevice
        }
    }

    #[test]
    fn the_endpoint_is_mounted_only_with_a_secret() {
        let intake = || gw_cloud_sync::CommandIntake::new(std::sync::Arc::new(Nobody));
        let loaded = load("").unwrap();
        assert!(super::router(&loaded.config.web, loaded.push_token, intake()).is_none());
        let loaded = load("push_token = \"s3cret\"\n").unwrap();
        assert!(super::router(&loaded.config.web, loaded.push_token, intake()).is_some());
    }

    #[test]
    fn refuses_inconsistent_keys_naming_them() {
        let cases = [
            ("push_token = \"a\"\npush_token_file = \"/x\"\n", "web.push_token"),
            ("push_token = \" \"\n", "web.push_token"),
            ("cert_file = \"/c.pem\"\n", "web.key_file"),
            ("push_token = \"a\"\npush_client_ca_file = \"/ca.pem\"\n", "web.push_client_ca_file"),
            (
                "cert_file = \"/c\"\nkey_file = \"/k\"\npush_client_ca_file = \"/ca.pem\"\n",
                "web.push_client_ca_file",
            ),
            ("push_token = \"a\"\npush_max_bytes = 0\n", "web.push_max_bytes"),
        ];
        for (web, key) in cases {
            let err = load(web).unwrap_err();
            assert!(err.contains(key), "{web}: {err}");
        }
    }
}
