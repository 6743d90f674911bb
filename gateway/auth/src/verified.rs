//! Keyed fingerprints with a random per-process HMAC-SHA256 key: the memory of successful
//! verifications (so a reconnect does not re-run argon2) and the change detection of synced
//! devices. Neither is ever written to disk, and neither holds a secret: only HMAC outputs.

use std::{
    collections::{HashMap, VecDeque},
    sync::OnceLock,
};

use gw_model::{AuthRequest, Identity, PresentedCredential};
use ring::{hmac, rand::SystemRandom};
use serde::Serialize;

use crate::{AuthError, cache::presented_password};

static KEY: OnceLock<hmac::Key> = OnceLock::new();

fn key() -> Result<&'static hmac::Key, AuthError> {
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let k = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
        .map_err(|_| AuthError::Hash("the system random generator failed".into()))?;
    Ok(KEY.get_or_init(|| k))
}

fn mac(parts: &[&[u8]]) -> Result<[u8; 32], AuthError> {
    let mut ctx = hmac::Context::with_key(key()?);
    for p in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// The keyed fingerprint of a value (its JSON), for change detection.
pub(crate) fn fingerprint<T: Serialize>(value: &T) -> Result<[u8; 32], AuthError> {
    let json = serde_json::to_vec(value)
        .map_err(|source| AuthError::Encode { what: "device fingerprint", source })?;
    mac(&[b"fingerprint", &json])
}

/// The keyed hash of a login attempt: application, presented id, credential form, secret.
pub(crate) fn attempt_key(req: &AuthRequest) -> Result<[u8; 32], AuthError> {
    let (form, username): (&[u8], Option<&str>) = match &req.credential {
        PresentedCredential::Password(_) => (b"pass", None),
        PresentedCredential::UsernamePassword { username, .. } => (b"user", Some(username)),
        PresentedCredential::ClientCertificate { subject, .. } => (b"cert", Some(subject)),
    };
    mac(&[
        b"attempt",
        req.app.as_str().as_bytes(),
        req.device.as_str().as_bytes(),
        form,
        username.unwrap_or_default().as_bytes(),
        presented_password(req).as_bytes(),
    ])
}

/// Successful verifications: attempt key → (canonical identity, device generation); at most
/// `cap` entries, the oldest evicted first.
#[derive(Debug)]
pub(crate) struct VerifiedCache {
    cap: usize,
    map: HashMap<[u8; 32], (Identity, u64)>,
    order: VecDeque<[u8; 32]>,
}

impl VerifiedCache {
    pub(crate) fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), map: HashMap::new(), order: VecDeque::new() }
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<&(Identity, u64)> {
        self.map.get(key)
    }

    pub(crate) fn insert(&mut self, key: [u8; 32], identity: Identity, generation: u64) {
        if self.map.insert(key, (identity, generation)).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8; 32]) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use gw_model::{AppId, DeviceId, Secret};

    use super::*;

    fn req(device: &str, pw: &str) -> AuthRequest {
        AuthRequest {
            app: AppId::new("app").unwrap(),
            device: DeviceId::new(device).unwrap(),
            credential: PresentedCredential::Password(Secret::new(pw)),
        }
    }

    #[test]
    fn attempt_keys_differ_by_every_part_and_hide_the_secret() {
        let a = attempt_key(&req("d", "pw")).unwrap();
        assert_eq!(a, attempt_key(&req("d", "pw")).unwrap());
        assert_ne!(a, attempt_key(&req("d", "pw2")).unwrap());
        assert_ne!(a, attempt_key(&req("e", "pw")).unwrap());
        assert!(!a.windows(2).any(|w| w == b"pw"));
    }

    #[test]
    fn capped_with_oldest_evicted() {
        let mut c = VerifiedCache::new(2);
        let id = Identity::new(AppId::new("app").unwrap(), DeviceId::new("d").unwrap());
        c.insert([1; 32], id.clone(), 1);
        c.insert([2; 32], id.clone(), 1);
        c.insert([3; 32], id, 1);
        assert_eq!(c.len(), 2);
        assert!(c.get(&[1; 32]).is_none());
        assert!(c.get(&[3; 32]).is_some());
    }
}
