//! The devices configured on the gateway itself (`[[devices]]`), checked against what a
//! sensor presents. The registry cache and the rest of the credential chain come on top.

use std::collections::HashMap;

use gw_model::{AppId, AuthRequest, DeviceId, Identity, PresentedCredential};

use crate::config::ResolvedDevice;

/// Static devices by `(app, name)`.
#[derive(Debug, Default)]
pub struct StaticAccounts {
    devices: HashMap<(AppId, DeviceId), gw_model::Secret>,
}

impl StaticAccounts {
    pub fn new(devices: &[ResolvedDevice]) -> Self {
        Self {
            devices: devices
                .iter()
                .map(|d| ((d.app.clone(), d.name.clone()), d.password.clone()))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The identity the request proves, if it proves one. A password credential names the
    /// device; a username credential matches when the username is the device's name (as
    /// Drogue matches a stored password for it).
    pub fn verify(&self, req: &AuthRequest) -> Option<Identity> {
        let stored = self.devices.get(&(req.app.clone(), req.device.clone()))?;
        let presented = match &req.credential {
            PresentedCredential::Password(p) => p,
            PresentedCredential::UsernamePassword { username, password } => {
                if username != req.device.as_str() {
                    return None;
                }
                password
            }
        };
        constant_time_eq(stored.expose().as_bytes(), presented.expose().as_bytes())
            .then(|| req.identity())
    }
}

impl gw_model::Authenticate for StaticAccounts {
    async fn authenticate(
        &self,
        request: &AuthRequest,
        _peer: Option<std::net::IpAddr>,
    ) -> gw_model::AuthOutcome {
        match self.verify(request) {
            Some(identity) => gw_model::AuthOutcome::Pass(identity),
            None => gw_model::AuthOutcome::Fail,
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_model::BasicCredentials;

    fn accounts() -> StaticAccounts {
        StaticAccounts::new(&[ResolvedDevice {
            app: "app".parse().unwrap(),
            name: "s1".parse().unwrap(),
            password: "pw".into(),
        }])
    }

    fn req(user: &str, pw: &str, device: Option<&str>) -> AuthRequest {
        AuthRequest::from_http(BasicCredentials::new(user, pw), None, device, None).unwrap()
    }

    #[test]
    fn accepts_right_password_only() {
        let a = accounts();
        assert_eq!(a.verify(&req("s1@app", "pw", None)).unwrap().to_string(), "s1@app");
        assert!(a.verify(&req("s1@app", "pW", None)).is_none());
        assert!(a.verify(&req("s1@app", "pw2", None)).is_none());
        assert!(a.verify(&req("s2@app", "pw", None)).is_none());
        assert!(a.verify(&req("s1@other", "pw", None)).is_none());
    }

    #[test]
    fn username_form_needs_the_device_name() {
        let a = accounts();
        assert!(a.verify(&req("s1@app", "pw", Some("s1"))).is_some());
        assert!(a.verify(&req("someone@app", "pw", Some("s1"))).is_none());
    }

    #[test]
    fn constant_time_eq_compares_lengths_too() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
