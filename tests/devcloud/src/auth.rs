//! Device authentication with Drogue's semantics (contracts/drogue-cloud.md §6): the
//! application must exist and be enabled, the device is looked up by alias, the presented
//! credential is matched against the stored ones, and `as` is authorized only for a device
//! whose `spec.gatewaySelector.matchNames` names the gateway's canonical name (with the
//! seed's `providers_rfc`, also the RFC's `spec.providers` and `spec.providerSelector`): the
//! rule is [`gw_model::registry::ProxyRules`], the one the gateway's sync applies.

use gw_model::{
    AuthRequest, PresentedCredential,
    registry::{Application, Credential, Device, PasswordSpec, ProxyRules, TaggedPassword},
};
use sha_crypt::{PasswordVerifier, ShaCrypt};

use crate::registry::Registry;

/// A device that authenticated, and the device it publishes as (itself without `as`).
#[derive(Clone, Debug)]
pub(crate) struct Authenticated {
    pub app: Application,
    pub device: Device,
    pub as_device: Device,
}

/// Authenticates `req` (and authorizes `as_id` if given). `None` means "Authentication
/// failed", whatever the reason, as Drogue answers. Hash checks run on the blocking pool.
pub(crate) async fn authenticate(
    registry: &Registry,
    req: AuthRequest,
    as_id: Option<&str>,
) -> Option<Authenticated> {
    let app = registry.get_app(req.app.as_str())?;
    if app.metadata.deletion_timestamp.is_some() || app_disabled(&app) {
        return None;
    }
    let device = registry.find_device(req.app.as_str(), req.device.as_str())?;
    if device.is_being_deleted() {
        return None;
    }
    let presented_id = req.device.as_str().to_owned();
    let checked = device.clone();
    let ok = tokio::task::spawn_blocking(move || {
        credential_matches(&checked, &presented_id, &req.credential)
    })
    .await
    .unwrap_or(false);
    if !ok {
        return None;
    }
    let as_device = match as_id {
        None => device.clone(),
        Some(id) if id == device.metadata.name => device.clone(),
        Some(id) => {
            let target = registry.find_device(app.metadata.name.as_str(), id)?;
            if !may_act_as(&device, &target, registry.rules()) {
                return None;
            }
            target
        }
    };
    Some(Authenticated { app, device, as_device })
}

/// An application with `spec.core.disabled: true` refuses every device.
fn app_disabled(app: &Application) -> bool {
    app.spec
        .get("core")
        .and_then(|c| c.get("disabled"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// Whether `gateway` may publish as `target` under `rules`: the target is not being deleted
/// and names the gateway's canonical name (aliases do not count) or, under the RFC, selects
/// its labels.
pub(crate) fn may_act_as(gateway: &Device, target: &Device, rules: ProxyRules) -> bool {
    target.is_proxied_by(&gateway.metadata, rules)
}

/// Matches a presented credential against the device's stored ones. `presented_id` is the
/// name the device was addressed by (name, alias or unique username).
pub(crate) fn credential_matches(
    device: &Device,
    presented_id: &str,
    presented: &PresentedCredential,
) -> bool {
    let name = device.metadata.name.as_str();
    device.credentials().iter().any(|stored| match (presented, stored) {
        (PresentedCredential::Password(pw), Credential::Pass(p)) => {
            password_matches(p, pw.expose())
        }
        (PresentedCredential::Password(pw), Credential::User(u)) => {
            let applies =
                if u.is_unique() { u.username == presented_id } else { u.username == name };
            applies && password_matches(&u.password, pw.expose())
        }
        (PresentedCredential::UsernamePassword { username, password }, Credential::User(u)) => {
            u.username == *username && password_matches(&u.password, password.expose())
        }
        (PresentedCredential::UsernamePassword { username, password }, Credential::Pass(p)) => {
            username == name && password_matches(p, password.expose())
        }
        _ => false,
    })
}

/// Checks a password against its stored form: plain, bcrypt, or sha512-crypt (`$6$`).
pub(crate) fn password_matches(stored: &PasswordSpec, presented: &str) -> bool {
    match stored.tagged() {
        TaggedPassword::Plain(p) => constant_time_eq(p.as_bytes(), presented.as_bytes()),
        TaggedPassword::Bcrypt(hash) => bcrypt::verify(presented, &hash).unwrap_or(false),
        TaggedPassword::Sha512(hash) => {
            hash.starts_with("$6$")
                && ShaCrypt::SHA512.verify_password(presented.as_bytes(), hash.as_str()).is_ok()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gw_model::{AppId, BasicCredentials, DeviceId, Secret};
    use serde_json::json;

    use super::*;
    use crate::events::EventLog;

    /// sha512-crypt of "Hello world!" with salt "saltstring" (the reference test vector).
    const SHA512_HELLO: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";

    fn registry(devices: serde_json::Value) -> Registry {
        registry_with(devices, ProxyRules::DROGUE)
    }

    fn registry_with(devices: serde_json::Value, rules: ProxyRules) -> Registry {
        let r = Registry::new(Arc::new(EventLog::new(10))).with_rules(rules);
        let apps = vec![serde_json::from_value(json!({"metadata":{"name":"app"}})).unwrap()];
        r.seed(apps, serde_json::from_value(devices).unwrap()).unwrap();
        r
    }

    fn dev(name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"metadata":{"application":"app","name":name},"spec":spec})
    }

    fn creds(list: serde_json::Value) -> serde_json::Value {
        json!({"authentication":{"credentials":list}})
    }

    fn pw(device: &str, password: &str) -> AuthRequest {
        AuthRequest {
            app: AppId::new("app").unwrap(),
            device: DeviceId::new(device).unwrap(),
            credential: PresentedCredential::Password(Secret::new(password)),
        }
    }

    fn user(device: &str, username: &str, password: &str) -> AuthRequest {
        AuthRequest {
            credential: PresentedCredential::UsernamePassword {
                username: username.to_owned(),
                password: Secret::new(password),
            },
            ..pw(device, "")
        }
    }

    async fn ok(r: &Registry, req: AuthRequest) -> bool {
        authenticate(r, req, None).await.is_some()
    }

    #[tokio::test]
    async fn plain_password() {
        let r = registry(json!([dev("d", creds(json!([{"pass":"secret"}])))]));
        assert!(ok(&r, pw("d", "secret")).await);
        let r2 = registry(json!([dev("d", creds(json!([{"pass":{"plain":"secret"}}])))]));
        assert!(ok(&r2, pw("d", "secret")).await);
    }

    #[tokio::test]
    async fn wrong_password() {
        let r = registry(json!([dev("d", creds(json!([{"pass":"secret"}])))]));
        assert!(!ok(&r, pw("d", "Secret")).await);
        assert!(!ok(&r, pw("d", "")).await);
    }

    #[tokio::test]
    async fn bcrypt_hash() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let r = registry(json!([dev("d", creds(json!([{"pass":{"bcrypt":hash}}])))]));
        assert!(ok(&r, pw("d", "secret")).await);
        assert!(!ok(&r, pw("d", "secret2")).await);
    }

    #[tokio::test]
    async fn sha512_crypt_hash() {
        let r = registry(json!([dev("d", creds(json!([{"pass":{"sha512":SHA512_HELLO}}])))]));
        assert!(ok(&r, pw("d", "Hello world!")).await);
        assert!(!ok(&r, pw("d", "Hello world")).await);
        // a sha256-crypt hash is not accepted where sha512 is declared
        let r = registry(json!([dev("d", creds(json!([{"pass":{"sha512":"$5$salt$abc"}}])))]));
        assert!(!ok(&r, pw("d", "x")).await);
    }

    #[tokio::test]
    async fn alias_authenticates_as_the_canonical_device() {
        let r = registry(json!([dev(
            "d",
            json!({"alias":["alt"],
            "authentication":{"credentials":[{"pass":"pw"}]}})
        )]));
        let a = authenticate(&r, pw("alt", "pw"), None).await.unwrap();
        assert_eq!(a.device.metadata.name, "d");
        assert_eq!(a.as_device.metadata.name, "d");
    }

    #[tokio::test]
    async fn user_credentials() {
        let r = registry(json!([
            dev("d", creds(json!([{"user":{"username":"u","password":"p"}}]))),
            dev("e", creds(json!([{"user":{"username":"uniq","password":"q","unique":true}}]))),
            dev("f", creds(json!([{"user":{"username":"f","password":"r"}}]))),
        ]));
        assert!(ok(&r, user("d", "u", "p")).await);
        assert!(!ok(&r, user("d", "u", "x")).await);
        assert!(!ok(&r, user("d", "v", "p")).await);
        // a unique username is an alias: password login by that name
        assert!(ok(&r, pw("uniq", "q")).await);
        // a non-unique user matches a password login only when username == device name
        assert!(!ok(&r, pw("d", "p")).await);
        assert!(ok(&r, pw("f", "r")).await);
    }

    #[tokio::test]
    async fn username_login_matches_pass_only_for_own_name() {
        let r = registry(json!([dev("d", creds(json!([{"pass":"pw"}])))]));
        assert!(ok(&r, user("d", "d", "pw")).await);
        assert!(!ok(&r, user("d", "other", "pw")).await);
    }

    #[tokio::test]
    async fn unknown_app_and_unknown_device() {
        let r = registry(json!([dev("d", creds(json!([{"pass":"pw"}])))]));
        let mut req = pw("d", "pw");
        req.app = AppId::new("other").unwrap();
        assert!(!ok(&r, req).await);
        assert!(!ok(&r, pw("nobody", "pw")).await);
    }

    #[tokio::test]
    async fn device_being_deleted() {
        let r = registry(json!([{"metadata":{"application":"app","name":"d",
            "deletionTimestamp":"2023-01-01T00:00:00Z"},"spec":creds(json!([{"pass":"pw"}]))}]));
        assert!(!ok(&r, pw("d", "pw")).await);
    }

    #[tokio::test]
    async fn as_requires_match_names_with_canonical_gateway_name() {
        let devices = json!([
            {"metadata":{"application":"app","name":"gw","labels":{"group":"site-b"}},
             "spec":{"alias":["gw-alias"],"authentication":{"credentials":[{"pass":"pw"}]}}},
            dev("s1", json!({"gatewaySelector":{"matchNames":["gw"]}})),
            dev("s2", json!({"gatewaySelector":{"matchNames":["gw-alias"]}})),
            dev("s3", json!({"providers":["gw"]})),
            dev("s4", json!({})),
            dev("s5", json!({"providerSelector":{"group":"site-b"}})),
            dev("s6", json!({"providerSelector":{"group":"site-c"}})),
        ]);
        let rfc = registry_with(devices.clone(), ProxyRules::PROVIDERS_RFC);
        assert!(authenticate(&rfc, pw("gw", "pw"), Some("s3")).await.is_some(), "RFC providers");
        assert!(authenticate(&rfc, pw("gw", "pw"), Some("s5")).await.is_some(), "RFC selector");
        assert!(authenticate(&rfc, pw("gw", "pw"), Some("s6")).await.is_none(), "other labels");
        assert!(authenticate(&rfc, pw("gw", "pw"), Some("s4")).await.is_none());
        let r = registry(devices);
        let a = authenticate(&r, pw("gw", "pw"), Some("s1")).await.unwrap();
        assert_eq!(
            (a.device.metadata.name.as_str(), a.as_device.metadata.name.as_str()),
            ("gw", "s1")
        );
        assert!(
            authenticate(&r, pw("gw", "pw"), Some("s2")).await.is_none(),
            "alias in matchNames"
        );
        for rfc_only in ["s3", "s5"] {
            assert!(authenticate(&r, pw("gw", "pw"), Some(rfc_only)).await.is_none(), "{rfc_only}");
        }
        assert!(authenticate(&r, pw("gw", "pw"), Some("s4")).await.is_none());
        assert!(authenticate(&r, pw("gw", "pw"), Some("nobody")).await.is_none());
        assert!(authenticate(&r, pw("gw", "bad"), Some("s1")).await.is_none());
        // as = self needs no selector
        assert!(authenticate(&r, pw("gw", "pw"), Some("gw")).await.is_some());
    }

    #[tokio::test]
    async fn http_rows_feed_authentication() {
        let r = registry(json!([dev("d", creds(json!([{"pass":"pw"}])))]));
        let basic = BasicCredentials::new("d@app", "pw");
        let req = AuthRequest::from_http(basic, None, None, None).unwrap();
        assert!(ok(&r, req).await);
    }
}
