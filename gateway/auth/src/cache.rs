//! The registry credential cache: the devices this gateway proxies, with their credentials as
//! hashes only, matched with Drogue's rules (contracts/drogue-cloud.md §6).
//!
//! Building it hashes every plain registry password (`{"pass": "pw"}`, `{"pass": {"plain":
//! ..}}` and plain `user` passwords) with argon2id; bcrypt and sha512-crypt hashes are kept as
//! they are. Devices being deleted, and `psk`/`cert` credentials, are left out. Lookups go by
//! the canonical name, each alias, and the username of each `unique: true` user credential.
//! A disabled device (`spec.core.disabled`) is kept without credentials: it is known, so no
//! later source answers for its name, and it matches no password and no device lookup.
//!
//! The snapshot file (`credentials.snap` in the data dir) is a [`gw_store::snapshot`] of kind
//! `cred`, version 1, whose payload is JSON `{"devices": [{"app", "name", "aliases",
//! "credentials": [{"pass": {"argon2": "$argon2id$..."}} | {"user": {"username", "password",
//! "unique"}}]}], "revision": {"uid", "resource_version"}}]}` (`revision` only when the
//! registry gave the device both; snapshots without it load too).
//!
//! A sync re-hashes only new or changed devices. Within one process an unchanged device is
//! told by a keyed fingerprint of its credentials (never written to disk). After a restart the
//! fingerprints are gone, so a device loaded from the snapshot counts as unchanged when the
//! registry still reports the `uid` and `resourceVersion` it was hashed from: Drogue's registry
//! gives every write of a device a new `resourceVersion` and a re-created device a new `uid`.
//! Without that, every boot would re-hash every plain password (about 20 s of CPU for 10,000
//! devices here, minutes on a small board) while sensors log in.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use gw_model::{
    AuthRequest, PresentedCredential,
    registry::{Credential, Device, PasswordSpec, TaggedPassword},
};
use serde::{Deserialize, Serialize};

use crate::{AuthError, HashParams, StoredHash, verified};

const KIND: &[u8; 4] = b"cred";
const VERSION: u32 = 1;

/// Every cached device gets a process-unique generation; a remembered verification is valid
/// only while the device still has the generation it was verified against.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CachedCredential {
    Pass(StoredHash),
    User { username: String, password: StoredHash, unique: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedDevice {
    app: String,
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    credentials: Vec<CachedCredential>,
    /// `spec.core.disabled`: refused on every protocol and for commands.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    #[serde(skip)]
    generation: u64,
    /// HMAC (per-process key) of the registry's credentials, to tell an unchanged device at
    /// the next sync without re-hashing it. Memory only: unknown after a load.
    #[serde(skip)]
    fingerprint: Option<[u8; 32]>,
    /// The registry object the hashes were made from (not secret; kept in the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<Revision>,
}

/// A device's identity and version in the registry: both change whenever its credentials can
/// have changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Revision {
    uid: String,
    resource_version: String,
}

impl Revision {
    fn of(device: &Device) -> Option<Self> {
        let (uid, version) = (&device.metadata.uid, &device.metadata.resource_version);
        (!uid.is_empty() && !version.is_empty())
            .then(|| Self { uid: uid.clone(), resource_version: version.clone() })
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    devices: Vec<CachedDevice>,
}

/// What the cache says about a login attempt, before any hash is checked.
#[derive(Debug)]
pub(crate) struct Candidates {
    /// The canonical device name.
    pub name: String,
    pub generation: u64,
    /// The stored hashes the presented password may match (possibly none).
    pub hashes: Vec<StoredHash>,
}

/// The devices synced from the registry, by `(app, canonical name)`, with an alias index.
#[derive(Debug, Default)]
pub struct CredentialCache {
    devices: BTreeMap<(String, String), CachedDevice>,
    /// `(app, name | alias | unique username)` → canonical name.
    index: HashMap<(String, String), String>,
}

impl CredentialCache {
    /// Builds the cache from the synced devices, hashing every plain password with argon2id.
    /// CPU-heavy (one argon2 hash per plain password): call it off the async threads.
    pub fn from_devices(devices: &[Device], params: &HashParams) -> Result<Self, AuthError> {
        Self::rebuild(devices, params, None)
    }

    /// Builds the cache, reusing the hashed entries of `previous` for devices whose registry
    /// credentials did not change since it was built (so a periodic sync does not re-hash).
    pub(crate) fn rebuild(
        devices: &[Device],
        params: &HashParams,
        previous: Option<&CredentialCache>,
    ) -> Result<Self, AuthError> {
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            if device.is_being_deleted() {
                continue;
            }
            let Some(app) = device.metadata.application.clone() else { continue };
            let name = device.metadata.name.clone();
            let disabled = device.is_disabled();
            let fingerprint = verified::fingerprint(&(
                &app,
                &name,
                &device.spec.alias,
                device.credentials(),
                disabled,
            ))?;
            let revision = Revision::of(device);
            let reused =
                previous.and_then(|p| p.devices.get(&(app.clone(), name.clone()))).filter(|old| {
                    match old.fingerprint {
                        Some(known) => known == fingerprint,
                        // loaded from the snapshot: the registry's own version tells
                        None => old.revision.is_some() && old.revision == revision,
                    }
                });
            if let Some(old) = reused {
                out.push(CachedDevice { fingerprint: Some(fingerprint), revision, ..old.clone() });
                continue;
            }
            let mut credentials = Vec::new();
            for c in device.credentials().iter().filter(|_| !disabled) {
                match c {
                    Credential::Pass(p) => {
                        credentials.push(CachedCredential::Pass(stored(p, params)?))
                    }
                    Credential::User(u) => credentials.push(CachedCredential::User {
                        username: u.username.clone(),
                        password: stored(&u.password, params)?,
                        unique: u.is_unique(),
                    }),
                    Credential::Psk(_) | Credential::Cert(_) => {}
                }
            }
            out.push(CachedDevice {
                app,
                name,
                aliases: device.spec.alias.clone().unwrap_or_default(),
                credentials,
                disabled,
                generation: next_generation(),
                fingerprint: Some(fingerprint),
                revision,
            });
        }
        Ok(Self::index(out))
    }

    fn index(list: Vec<CachedDevice>) -> Self {
        let mut devices = BTreeMap::new();
        for d in list {
            devices.insert((d.app.clone(), d.name.clone()), d);
        }
        let mut index = HashMap::new();
        // Canonical names first, so an alias never shadows another device's name.
        for (app, name) in devices.keys() {
            index.insert((app.clone(), name.clone()), name.clone());
        }
        for ((app, name), d) in &devices {
            let unique_users = d.credentials.iter().filter_map(|c| match c {
                CachedCredential::User { username, unique: true, .. } => Some(username),
                _ => None,
            });
            for alias in d.aliases.iter().chain(unique_users) {
                let key = (app.clone(), alias.clone());
                if let Some(other) = index.get(&key).filter(|other| *other != name) {
                    tracing::warn!(app = %app, alias = %alias, device = %name, other = %other,
                        "alias already names another device; ignored");
                    continue;
                }
                index.insert(key, name.clone());
            }
        }
        Self { devices, index }
    }

    /// The number of cached devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Every cached device as `(app, canonical name)`, sorted.
    pub fn devices(&self) -> impl Iterator<Item = (&str, &str)> {
        self.devices.keys().map(|(a, n)| (a.as_str(), n.as_str()))
    }

    /// The canonical name of the device `id` (name, alias or unique username) in `app`;
    /// `None` for a disabled device too.
    pub fn resolve(&self, app: &str, id: &str) -> Option<&str> {
        let name = self.lookup(app, id)?;
        let disabled =
            self.devices.get(&(app.to_owned(), name.to_owned())).is_some_and(|d| d.disabled);
        (!disabled).then_some(name)
    }

    /// Like [`Self::resolve`], disabled devices included.
    fn lookup(&self, app: &str, id: &str) -> Option<&str> {
        self.index.get(&(app.to_owned(), id.to_owned())).map(String::as_str)
    }

    /// Whether the device `id` (name, alias or unique username) of `app` is cached disabled.
    pub fn is_disabled(&self, app: &str, id: &str) -> bool {
        self.lookup(app, id)
            .and_then(|name| self.devices.get(&(app.to_owned(), name.to_owned())))
            .is_some_and(|d| d.disabled)
    }

    /// The generation of a cached device, if it is (still) cached.
    pub(crate) fn generation(&self, app: &str, name: &str) -> Option<u64> {
        self.devices.get(&(app.to_owned(), name.to_owned())).map(|d| d.generation)
    }

    /// The hashes `req` may match under Drogue's rules, or `None` if the device is unknown.
    pub(crate) fn candidates(&self, req: &AuthRequest) -> Option<Candidates> {
        let app = req.app.as_str();
        let presented_id = req.device.as_str();
        let name = self.lookup(app, presented_id)?;
        let device = self.devices.get(&(app.to_owned(), name.to_owned()))?;
        let hashes = device
            .credentials
            .iter()
            .filter_map(|stored| match (&req.credential, stored) {
                (PresentedCredential::Password(_), CachedCredential::Pass(h)) => Some(h),
                (
                    PresentedCredential::Password(_),
                    CachedCredential::User { username, password, unique },
                ) => {
                    let applies = if *unique { username == presented_id } else { username == name };
                    applies.then_some(password)
                }
                (
                    PresentedCredential::UsernamePassword { username: u, .. },
                    CachedCredential::User { username, password, .. },
                ) => (u == username).then_some(password),
                (
                    PresentedCredential::UsernamePassword { username: u, .. },
                    CachedCredential::Pass(h),
                ) => (u == name).then_some(h),
                // a certificate matches no stored secret: the chain decides it by the device
                (PresentedCredential::ClientCertificate { .. }, _) => None,
            })
            .cloned()
            .collect();
        Some(Candidates { name: name.to_owned(), generation: device.generation, hashes })
    }

    /// Checks `req` against the cache: `None` if the device is unknown here, else whether the
    /// password matches. CPU-heavy: call it off the async threads.
    pub fn verify(&self, req: &AuthRequest) -> Option<bool> {
        let c = self.candidates(req)?;
        Some(c.hashes.iter().any(|h| h.verify(presented_password(req))))
    }

    /// Writes the cache to its snapshot file (atomically, mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let body = SnapshotBody { devices: self.devices.values().cloned().collect() };
        let payload = serde_json::to_vec(&body)
            .map_err(|source| AuthError::Encode { what: "credential cache", source })?;
        gw_store::snapshot::write(path, KIND, VERSION, &payload)?;
        Ok(())
    }

    /// Reads the cache from its snapshot file: `Ok(None)` if there is none yet, an error if it
    /// is damaged (checksum), truncated, or not JSON of the expected shape.
    pub fn load(path: &Path) -> Result<Option<Self>, AuthError> {
        let Some(snap) = gw_store::snapshot::read(path, KIND, VERSION)? else { return Ok(None) };
        let body: SnapshotBody = serde_json::from_slice(&snap.payload).map_err(|source| {
            AuthError::Decode { what: "credential cache", path: path.to_owned(), source }
        })?;
        let mut devices = body.devices;
        for d in &mut devices {
            d.generation = next_generation();
        }
        Ok(Some(Self::index(devices)))
    }
}

/// The password a request presents, whatever its form.
pub(crate) fn presented_password(req: &AuthRequest) -> &str {
    match &req.credential {
        PresentedCredential::Password(p) => p.expose(),
        PresentedCredential::UsernamePassword { password, .. } => password.expose(),
        PresentedCredential::ClientCertificate { .. } => "",
    }
}

/// A registry password as kept on the gateway: plain ones hashed, hashes kept.
fn stored(p: &PasswordSpec, params: &HashParams) -> Result<StoredHash, AuthError> {
    Ok(match p.tagged() {
        TaggedPassword::Plain(plain) => params.hash(&plain)?,
        TaggedPassword::Bcrypt(h) => StoredHash::Bcrypt(h),
        TaggedPassword::Sha512(h) => StoredHash::Sha512(h),
    })
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
