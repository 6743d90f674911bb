//! Local accounts: app-scoped identities kept on the gateway itself (technicians, sensors
//! provisioned locally, and accounts migrated from the legacy login service). Passwords are
//! argon2id hashes; the file (`accounts.snap` in the data dir) is a [`gw_store::snapshot`] of
//! kind `acct`, version 1, JSON `{"accounts": [{"app", "name", "hash", "migrated"}]}`, mode 0600,
//! rewritten atomically on every change.
//!
//! A *migrated* account (created by a successful legacy login) refuses
//! [`Accounts::set_password`] until an administrator calls [`Accounts::reset`], as the legacy
//! system's migration contract requires (seeds/003: password change is handed over).
//!
//! Mutations hash passwords (argon2id): CPU-heavy, so async callers use `spawn_blocking`.
//! [`Accounts::in_memory`] makes a set that is never written (static `[[devices]]`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use gw_model::{Identity, Secret};
use serde::{Deserialize, Serialize};

use crate::{AuthError, HashParams, StoredHash};

const KIND: &[u8; 4] = b"acct";
const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    app: String,
    name: String,
    hash: StoredHash,
    #[serde(default)]
    migrated: bool,
}

#[derive(Serialize, Deserialize)]
struct FileBody {
    accounts: Vec<Record>,
}

/// One account as listed (no hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub app: String,
    pub name: String,
    /// Created by a legacy login; its password cannot be changed until a reset.
    pub migrated: bool,
}

type Map = BTreeMap<(String, String), Record>;

/// The local accounts, in memory and (unless in-memory) in their file.
#[derive(Debug)]
pub struct Accounts {
    path: Option<PathBuf>,
    params: HashParams,
    map: Mutex<Map>,
}

fn key(id: &Identity) -> (String, String) {
    (id.app().as_str().to_owned(), id.device().as_str().to_owned())
}

impl Accounts {
    /// Opens the accounts file at `path` (none yet = no accounts). A damaged file is an error.
    pub fn open(path: &Path, params: HashParams) -> Result<Self, AuthError> {
        let map = read(path)?;
        Ok(Self { path: Some(path.to_owned()), params, map: Mutex::new(map) })
    }

    /// A set of accounts that is never written to disk.
    pub fn in_memory(params: HashParams) -> Self {
        Self { path: None, params, map: Mutex::new(Map::new()) }
    }

    /// Re-reads the file (after `gatewayd accounts ...` changed it while the daemon runs).
    pub fn reload(&self) -> Result<(), AuthError> {
        if let Some(path) = &self.path {
            let fresh = read(path)?;
            *self.lock() = fresh;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `map` to the file, then makes it the current state (all or nothing).
    fn commit(&self, guard: &mut MutexGuard<'_, Map>, map: Map) -> Result<(), AuthError> {
        if let Some(path) = &self.path {
            let body = FileBody { accounts: map.values().cloned().collect() };
            let payload = serde_json::to_vec(&body)
                .map_err(|source| AuthError::Encode { what: "accounts", source })?;
            gw_store::snapshot::write(path, KIND, VERSION, &payload)?;
        }
        **guard = map;
        Ok(())
    }

    /// Adds an account; an existing one is an error.
    pub fn add(&self, id: &Identity, password: &Secret) -> Result<(), AuthError> {
        let hash = self.params.hash(password.expose())?;
        self.insert(id, hash, false)
    }

    /// Adds an account migrated from the legacy login service, with its (already hashed)
    /// password. Replaces nothing: an existing account is an error.
    pub(crate) fn insert(
        &self,
        id: &Identity,
        hash: StoredHash,
        migrated: bool,
    ) -> Result<(), AuthError> {
        let mut guard = self.lock();
        if guard.contains_key(&key(id)) {
            return Err(AuthError::AccountExists(id.to_string()));
        }
        let mut map = guard.clone();
        let (app, name) = key(id);
        map.insert(key(id), Record { app, name, hash, migrated });
        self.commit(&mut guard, map)
    }

    /// Every account, ordered by app and name.
    pub fn list(&self) -> Vec<Account> {
        self.lock()
            .values()
            .map(|r| Account { app: r.app.clone(), name: r.name.clone(), migrated: r.migrated })
            .collect()
    }

    /// An administrator's reset: the account becomes native and, if given, gets a new password.
    pub fn reset(&self, id: &Identity, new_password: Option<&Secret>) -> Result<(), AuthError> {
        let hash = new_password.map(|p| self.params.hash(p.expose())).transpose()?;
        self.update(id, |r| {
            r.migrated = false;
            if let Some(h) = hash {
                r.hash = h;
            }
            Ok(())
        })
    }

    /// Changes the password. A migrated account becomes a native one (seeds/003: the owner's
    /// password change is what turns it into a real account of the gateway).
    pub fn set_password(&self, id: &Identity, password: &Secret) -> Result<(), AuthError> {
        let hash = self.params.hash(password.expose())?;
        self.update(id, |r| {
            r.migrated = false;
            r.hash = hash;
            Ok(())
        })
    }

    /// Removes an account.
    pub fn remove(&self, id: &Identity) -> Result<(), AuthError> {
        let mut guard = self.lock();
        let mut map = guard.clone();
        if map.remove(&key(id)).is_none() {
            return Err(AuthError::NoSuchAccount(id.to_string()));
        }
        self.commit(&mut guard, map)
    }

    fn update(
        &self,
        id: &Identity,
        change: impl FnOnce(&mut Record) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let mut guard = self.lock();
        let mut map = guard.clone();
        let record =
            map.get_mut(&key(id)).ok_or_else(|| AuthError::NoSuchAccount(id.to_string()))?;
        change(record)?;
        self.commit(&mut guard, map)
    }

    /// The stored hash of `id`, if there is such an account.
    pub(crate) fn hash_of(&self, id: &Identity) -> Option<StoredHash> {
        self.lock().get(&key(id)).map(|r| r.hash.clone())
    }

    /// Whether `id` is an account here.
    pub fn contains(&self, id: &Identity) -> bool {
        self.lock().contains_key(&key(id))
    }

    /// Checks a password (CPU-heavy): `None` if there is no such account.
    pub fn verify(&self, id: &Identity, password: &Secret) -> Option<bool> {
        self.hash_of(id).map(|h| h.verify(password.expose()))
    }
}

fn read(path: &Path) -> Result<Map, AuthError> {
    let Some(snap) = gw_store::snapshot::read(path, KIND, VERSION)? else { return Ok(Map::new()) };
    let body: FileBody = serde_json::from_slice(&snap.payload)
        .map_err(|source| AuthError::Decode { what: "accounts", path: path.to_owned(), source })?;
    Ok(body.accounts.into_iter().map(|r| ((r.app.clone(), r.name.clone()), r)).collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn params() -> HashParams {
        HashParams::new(64, 1, 1).unwrap()
    }

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn crud_persists_hashes_only_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.snap");
        let a = Accounts::open(&path, params()).unwrap();
        a.add(&id("tech@app"), &Secret::new("tech-secret-1")).unwrap();
        a.add(&id("s1@app"), &Secret::new("sensor-secret-2")).unwrap();
        assert!(matches!(
            a.add(&id("s1@app"), &Secret::new("x")),
            Err(AuthError::AccountExists(_))
        ));
        assert_eq!(a.verify(&id("tech@app"), &Secret::new("tech-secret-1")), Some(true));
        assert_eq!(a.verify(&id("tech@other"), &Secret::new("tech-secret-1")), None, "app-scoped");

        let bytes = std::fs::read(&path).unwrap();
        for plain in ["tech-secret-1", "sensor-secret-2"] {
            assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()), "{plain} on disk");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        a.set_password(&id("s1@app"), &Secret::new("new")).unwrap();
        a.remove(&id("tech@app")).unwrap();
        assert!(matches!(a.remove(&id("tech@app")), Err(AuthError::NoSuchAccount(_))));

        let again = Accounts::open(&path, params()).unwrap();
        assert_eq!(
            again.list(),
            vec![Account { app: "app".into(), name: "s1".into(), migrated: false }]
        );
        assert_eq!(again.verify(&id("s1@app"), &Secret::new("new")), Some(true));
        assert_eq!(again.verify(&id("s1@app"), &Secret::new("sensor-secret-2")), Some(false));
    }

    #[test]
    fn a_password_change_or_a_reset_makes_a_migrated_account_native() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.snap");
        let a = Accounts::open(&path, params()).unwrap();
        a.insert(&id("old@app"), params().hash("legacy-pw").unwrap(), true).unwrap();
        a.insert(&id("test@example.com@app"), params().hash("123").unwrap(), true).unwrap();
        // the mark survives a restart
        let a = Accounts::open(&path, params()).unwrap();
        assert!(a.list().iter().all(|acc| acc.migrated));
        a.set_password(&id("old@app"), &Secret::new("mine")).unwrap();
        assert_eq!(a.verify(&id("old@app"), &Secret::new("mine")), Some(true));
        assert_eq!(a.verify(&id("old@app"), &Secret::new("legacy-pw")), Some(false));
        a.reset(&id("test@example.com@app"), None).unwrap();
        let listed = Accounts::open(&path, params()).unwrap().list();
        assert!(listed.iter().all(|acc| !acc.migrated), "{listed:?}");
        assert_eq!(listed[1].name, "test@example.com");
    }

    #[test]
    fn damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.snap");
        Accounts::open(&path, params()).unwrap().add(&id("a@app"), &Secret::new("p")).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(Accounts::open(&path, params()), Err(AuthError::Snapshot(_))));
    }

    #[test]
    fn in_memory_accounts_write_nothing() {
        let a = Accounts::in_memory(params());
        a.add(&id("s@app"), &Secret::new("p")).unwrap();
        assert_eq!(a.verify(&id("s@app"), &Secret::new("p")), Some(true));
        a.reload().unwrap();
        assert!(a.contains(&id("s@app")));
    }
}
