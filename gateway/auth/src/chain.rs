//! [`CredentialChain`]: the gateway's [`Authenticate`] implementation.
//!
//! Order, each source final for the identities it knows (so a wrong password for a registry
//! device never falls through to the legacy service):
//! 1. the registry cache (synced devices, [`CredentialCache`]);
//! 2. static `[[devices]]` from the daemon config ([`StaticDevice`], hashed in memory at
//!    start-up, never written; matched like registry devices with a plain `pass`);
//! 3. local accounts ([`Accounts`]), app-scoped;
//! 4. the legacy login service of the identity's application, if that application is
//!    migratory (`[[auth.legacy]]`): on success the account is migrated into the local
//!    accounts of that application (so step 3 answers for it next time and the service is not
//!    asked again). Identities of other applications are never sent to any service.
//!
//! A verified TLS client certificate (the MQTT endpoint checked it against its client CA)
//! carries no secret: it passes when its subject DN string, or else its common name, is a
//! device the chain knows ([`KnownDevices`]), and is refused otherwise.
//!
//! In front of all of it, the [`Limiter`] refuses identifiers and addresses with too many
//! recent failures. Behind it, every hash check runs on the blocking pool, at most one per
//! core at a time (a 1,000-sensor storm must not allocate 1,000 × `argon2_memory_kib`), and a
//! success from 1. or 2. is remembered under a keyed hash of (identity, secret) until the
//! device's credentials change at a sync.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::Instant,
};

use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, DeviceId, Identity, KnownDevices,
    PresentedCredential, Secret,
    registry::{Credential, CredentialsSpec, Device, DeviceSpec, Metadata, PasswordSpec},
};
use tokio::sync::Semaphore;

use crate::{
    Accounts, AuthConfig, AuthError, CredentialCache, HashParams, LegacyLogin, Limiter, LimiterKey,
    StoredHash,
    cache::{Candidates, presented_password},
    legacy::LegacyVerdict,
    verified::{self, VerifiedCache},
};

/// File names in the data dir.
pub const CACHE_FILE: &str = "credentials.snap";
pub const ACCOUNTS_FILE: &str = "accounts.snap";

/// A static `[[devices]]` entry of the daemon config.
#[derive(Clone, Debug)]
pub struct StaticDevice {
    pub app: AppId,
    pub name: DeviceId,
    pub password: Secret,
}

/// Which application a legacy service answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LegacyScope {
    /// `legacy_login_url`: the gateway's own application (any, before roles are given).
    Gateway,
    App(AppId),
}

#[derive(Clone, Debug)]
struct Migratory {
    scope: LegacyScope,
    login: LegacyLogin,
    technicians: bool,
}

/// The credential chain; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct CredentialChain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: RwLock<Arc<CredentialCache>>,
    statics: Arc<CredentialCache>,
    accounts: Arc<Accounts>,
    /// The migratory applications' services.
    legacy: Vec<Migratory>,
    limiter: Mutex<Limiter>,
    verified: Mutex<VerifiedCache>,
    params: HashParams,
    cache_path: Option<PathBuf>,
    hashing: Semaphore,
    /// A hash of nothing anybody knows, made with the configured parameters on first use:
    /// an unknown identity is checked against it, so answering takes as long as for a known
    /// one with a wrong password.
    dummy: Arc<OnceLock<Option<StoredHash>>>,
    /// The only application whose identities log in as sensors (the gateway's own); `None`
    /// only for chains built without roles (unit tests of single sources).
    sensor_app: Option<AppId>,
    /// The only application whose identities log in as technicians (status page).
    technician_app: Option<AppId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logins with another application's identity: logged one by one up to a burst, then summarized.
static OTHER_APP: gw_net::Throttle =
    gw_net::Throttle::new("login refused: identity of another application");

impl CredentialChain {
    /// Opens the chain on `data_dir`: loads the credential cache snapshot and the accounts file
    /// (no network call). A missing snapshot means an empty cache until the first sync; a
    /// damaged one is an error (the daemon may log it and remove the file: the next sync
    /// rebuilds it).
    pub fn open(config: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
        let cache_path = data_dir.join(CACHE_FILE);
        let cache = CredentialCache::load(&cache_path)?.unwrap_or_default();
        let params = config.hash_params()?;
        let accounts = Accounts::open(&data_dir.join(ACCOUNTS_FILE), params.clone())?;
        Self::new(config, cache, accounts, Some(cache_path))
    }

    /// A chain over given parts; `cache_path` is where [`Self::replace_devices`] saves the
    /// cache (`None`: never saved).
    pub fn new(
        config: &AuthConfig,
        cache: CredentialCache,
        accounts: Accounts,
        cache_path: Option<PathBuf>,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        let mut legacy = Vec::new();
        if let Some(url) = &config.legacy_login_url {
            let login = LegacyLogin::new(url, config.legacy_timeout)?;
            legacy.push(Migratory { scope: LegacyScope::Gateway, login, technicians: false });
        }
        for l in &config.legacy {
            let app = AppId::new(l.application.as_str()).map_err(|e| AuthError::InvalidConfig {
                key: "legacy.application",
                reason: e.to_string(),
            })?;
            let login = LegacyLogin::new(&l.url, config.legacy_timeout)?;
            legacy.push(Migratory {
                scope: LegacyScope::App(app),
                login,
                technicians: l.technicians,
            });
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(Self {
            inner: Arc::new(Inner {
                registry: RwLock::new(Arc::new(cache)),
                statics: Arc::new(CredentialCache::default()),
                accounts: Arc::new(accounts),
                legacy,
                limiter: Mutex::new(Limiter::new(
                    config.max_failures,
                    config.lockout_min,
                    config.lockout_max,
                    config.limiter_entries,
                )),
                verified: Mutex::new(VerifiedCache::new(config.verified_cache_entries)),
                params: config.hash_params()?,
                cache_path,
                hashing: Semaphore::new(cores),
                dummy: Arc::new(OnceLock::new()),
                sensor_app: None,
                technician_app: None,
            }),
        })
    }

    /// Adds the static `[[devices]]` of the daemon config (hashes them now, argon2id; call at
    /// start-up, before the chain is shared). They are consulted after the registry cache and
    /// are never written to disk.
    pub fn with_static_devices(self, devices: &[StaticDevice]) -> Result<Self, AuthError> {
        let as_registry: Vec<Device> = devices
            .iter()
            .map(|d| Device {
                metadata: Metadata {
                    application: Some(d.app.as_str().to_owned()),
                    name: d.name.as_str().to_owned(),
                    ..Default::default()
                },
                spec: DeviceSpec {
                    authentication: Some(CredentialsSpec {
                        credentials: vec![Credential::Pass(PasswordSpec::Plain(
                            d.password.expose().to_owned(),
                        ))],
                        other: Default::default(),
                    }),
                    ..Default::default()
                },
                status: Default::default(),
            })
            .collect();
        let statics = CredentialCache::from_devices(&as_registry, &self.inner.params)?;
        let inner = Arc::try_unwrap(self.inner).map_err(|_| AuthError::InvalidConfig {
            key: "devices",
            reason: "static devices must be added before the chain is shared".into(),
        })?;
        Ok(Self { inner: Arc::new(Inner { statics: Arc::new(statics), ..inner }) })
    }

    /// Gives identities their roles: only `sensor_app`'s publish and are known as devices,
    /// only `technician_app`'s log in to the status page (call at start-up, before the chain
    /// is shared). The two must differ, so no account is both.
    pub fn with_roles(self, sensor_app: AppId, technician_app: AppId) -> Result<Self, AuthError> {
        if sensor_app == technician_app {
            return Err(AuthError::InvalidConfig {
                key: "web.technician_app",
                reason: format!(
                    "{technician_app:?} is the gateway's application too; technicians and sensors are kept apart"
                ),
            });
        }
        let entries = self.inner.legacy.iter().map(|m| match &m.scope {
            LegacyScope::App(app) => (Some(app), m.technicians),
            LegacyScope::Gateway => (None, false),
        });
        crate::config::check_legacy_roles(entries, &sensor_app, &technician_app)?;
        let inner = Arc::try_unwrap(self.inner).map_err(|_| AuthError::InvalidConfig {
            key: "gateway.application",
            reason: "roles must be given before the chain is shared".into(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                sensor_app: Some(sensor_app),
                technician_app: Some(technician_app),
                ..inner
            }),
        })
    }

    /// Whether `app`'s identities may log in as sensors.
    fn sensor_app_ok(&self, app: &AppId) -> bool {
        self.inner.sensor_app.as_ref().is_none_or(|a| a == app)
    }

    /// Replaces the registry devices after a sync: hashes new or changed plain passwords on the
    /// blocking pool (unchanged devices keep their hashes), saves the snapshot, then swaps the
    /// cache in. Devices no longer listed lose access at once, and remembered verifications of
    /// changed devices no longer count. Returns the number of cached devices.
    pub async fn replace_devices(&self, devices: Vec<Device>) -> Result<usize, AuthError> {
        let previous = self.registry();
        let params = self.inner.params.clone();
        let path = self.inner.cache_path.clone();
        let cache = tokio::task::spawn_blocking(move || {
            let cache = CredentialCache::rebuild(&devices, &params, Some(&previous))?;
            if let Some(path) = path {
                cache.save(&path)?;
            }
            Ok::<_, AuthError>(cache)
        })
        .await
        .map_err(AuthError::Join)??;
        let n = cache.len();
        *self.inner.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cache);
        Ok(n)
    }

    /// The current registry cache.
    pub fn registry(&self) -> Arc<CredentialCache> {
        self.inner.registry.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The static devices of the config (`[[devices]]`).
    pub fn static_devices(&self) -> Arc<CredentialCache> {
        self.inner.statics.clone()
    }

    /// The local accounts, for `gatewayd accounts ...` and the status page.
    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.inner.accounts
    }

    /// The whole chain, without the limiter.
    async fn check(&self, req: &AuthRequest) -> Result<Option<Identity>, String> {
        if let PresentedCredential::ClientCertificate { subject, common_name } = &req.credential {
            // The endpoint verified the certificate against its client CA; the device it
            // names must still be one the gateway knows (by subject DN, else common name).
            let names = std::iter::once(subject.as_str()).chain(common_name.as_deref());
            return Ok(names.into_iter().find_map(|name| self.resolve(&req.app, name)));
        }
        if presented_password(req).is_empty() {
            // no credential of any source is an empty password (an empty registry password
            // is a mistake, not an open door)
            self.dummy_verify(req).await?;
            return Ok(None);
        }
        let attempt = verified::attempt_key(req).map_err(|e| e.to_string())?;
        let registry = self.registry();
        let statics = self.inner.statics.clone();
        let remembered = lock(&self.inner.verified).get(&attempt).cloned();
        if let Some((identity, generation)) = remembered {
            let (app, name) = (identity.app().as_str(), identity.device().as_str());
            let current = [&registry, &statics].iter().find_map(|c| {
                c.resolve(req.app.as_str(), req.device.as_str()).and(c.generation(app, name))
            });
            if current == Some(generation) {
                return Ok(Some(identity));
            }
            lock(&self.inner.verified).remove(&attempt);
        }
        for cache in [&registry, &statics] {
            if let Some(c) = cache.candidates(req) {
                return self.check_cached(req, c, attempt).await;
            }
        }
        self.check_local(req).await
    }

    /// Local accounts, then the legacy login service (with migration).
    async fn check_local(&self, req: &AuthRequest) -> Result<Option<Identity>, String> {
        if presented_password(req).is_empty() {
            self.dummy_verify(req).await?;
            return Ok(None);
        }
        let Some(local_id) = local_identity(req) else {
            self.dummy_verify(req).await?;
            return Ok(None);
        };
        if let Some(hash) = self.inner.accounts.hash_of(&local_id) {
            let pw = presented_password(req).to_owned();
            let ok = self.blocking(move || hash.verify(&pw)).await?;
            return Ok(ok.then_some(local_id));
        }
        let Some(legacy) = self.legacy_for(&req.app) else {
            self.dummy_verify(req).await?;
            return Ok(None);
        };
        match legacy.check(local_id.device().as_str(), presented_password(req)).await {
            LegacyVerdict::Authenticated => {
                self.migrate(&local_id, presented_password(req)).await;
                Ok(Some(local_id))
            }
            LegacyVerdict::Refused => Ok(None),
            LegacyVerdict::Unavailable(cause) => {
                tracing::warn!(identity = %local_id, cause = %cause, "legacy login service unavailable; login refused");
                Ok(None)
            }
        }
    }

    async fn check_cached(
        &self,
        req: &AuthRequest,
        c: Candidates,
        attempt: [u8; 32],
    ) -> Result<Option<Identity>, String> {
        let Ok(identity) =
            DeviceId::new(c.name.as_str()).map(|d| Identity::new(req.app.clone(), d))
        else {
            return Ok(None);
        };
        if c.hashes.is_empty() {
            // known, but nothing to match (disabled, or no password credential)
            self.dummy_verify(req).await?;
            return Ok(None);
        }
        let pw = presented_password(req).to_owned();
        let hashes = c.hashes;
        let ok = self.blocking(move || hashes.iter().any(|h| h.verify(&pw))).await?;
        if ok {
            lock(&self.inner.verified).insert(attempt, identity.clone(), c.generation);
        }
        Ok(ok.then_some(identity))
    }

    /// Migrates a legacy account into the local accounts: app-scoped, marked migrated.
    async fn migrate(&self, id: &Identity, password: &str) {
        let accounts = self.inner.accounts.clone();
        let params = self.inner.params.clone();
        let (id2, pw) = (id.clone(), password.to_owned());
        let result = self
            .blocking(move || params.hash(&pw).and_then(|h| accounts.insert(&id2, h, true)))
            .await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(identity = %id, "account migrated from the legacy login service")
            }
            Ok(Err(e)) => {
                tracing::warn!(identity = %id, cause = %e, "cannot store the migrated legacy account")
            }
            Err(e) => {
                tracing::warn!(identity = %id, cause = %e, "cannot store the migrated legacy account")
            }
        }
    }

    /// Checks the presented password against the dummy hash: the cost of a real check, for an
    /// identity that has nothing to check against.
    async fn dummy_verify(&self, req: &AuthRequest) -> Result<(), String> {
        let (dummy, params) = (self.inner.dummy.clone(), self.inner.params.clone());
        let pw = presented_password(req).to_owned();
        self.blocking(move || {
            let hash = dummy.get_or_init(|| params.hash("no account has this password").ok());
            if let Some(h) = hash {
                let _ = h.verify(&pw);
            }
        })
        .await
    }

    /// The legacy service of `app`, if it is migratory.
    fn legacy_for(&self, app: &AppId) -> Option<&LegacyLogin> {
        self.inner
            .legacy
            .iter()
            .find(|m| match &m.scope {
                LegacyScope::App(a) => a == app,
                LegacyScope::Gateway => self.inner.sensor_app.as_ref().is_none_or(|s| s == app),
            })
            .map(|m| &m.login)
    }

    /// The migratory applications, for the status page and logs.
    pub fn migratory_apps(&self) -> Vec<String> {
        self.inner
            .legacy
            .iter()
            .map(|m| match &m.scope {
                LegacyScope::App(a) => a.as_str().to_owned(),
                LegacyScope::Gateway => self
                    .inner
                    .sensor_app
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |a| a.as_str().to_owned()),
            })
            .collect()
    }

    /// Runs CPU-heavy work on the blocking pool, at most one per core at a time.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let _permit = self.inner.hashing.acquire().await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
    }

    /// The number of remembered successful verifications (status page, tests).
    pub fn verified_entries(&self) -> usize {
        lock(&self.inner.verified).len()
    }
}

/// The local-account identity a request names: `device@app` with a password, or a username
/// credential whose username is the device itself.
fn local_identity(req: &AuthRequest) -> Option<Identity> {
    match &req.credential {
        PresentedCredential::Password(_) => {}
        PresentedCredential::UsernamePassword { username, .. }
            if username == req.device.as_str() => {}
        PresentedCredential::UsernamePassword { .. } => return None,
        PresentedCredential::ClientCertificate { .. } => return None,
    }
    Some(Identity::new(req.app.clone(), req.device.clone()))
}

impl CredentialChain {
    /// Authenticates a person (a technician at the status page) against the local accounts and
    /// the legacy login service only: registry and static devices are sensors and never log in
    /// here. Rate-limited like sensor logins.
    pub async fn authenticate_local(
        &self,
        request: &AuthRequest,
        peer: Option<IpAddr>,
    ) -> AuthOutcome {
        if self.inner.technician_app.as_ref().is_some_and(|a| *a != request.app) {
            if OTHER_APP.allow(None) {
                tracing::info!(device = %request.device, app = %request.app, "status page login refused: not a technician's identity");
            }
            return AuthOutcome::Forbidden;
        }
        self.limited(request, peer, self.check_local(request)).await
    }

    /// Runs `check` unless the attempt is rate-limited, and records the result. An attempt is
    /// limited when its identifier from this address, its identifier from anywhere, or the
    /// address is locked, unless the very credential passed before (then the check decides:
    /// a lockout an attacker causes does not keep the owner out).
    async fn limited(
        &self,
        request: &AuthRequest,
        peer: Option<IpAddr>,
        check: impl std::future::Future<Output = Result<Option<Identity>, String>>,
    ) -> AuthOutcome {
        let ident = format!("{}@{}", request.device, request.app);
        let narrow = peer.map(|p| LimiterKey::IdentifierFrom(ident.clone(), p));
        let wide = [Some(LimiterKey::Identifier(ident)), peer.map(LimiterKey::Address)];
        let keys: Vec<LimiterKey> =
            narrow.iter().cloned().chain(wide.into_iter().flatten()).collect();
        let attempt = verified::attempt_key(request).ok();
        {
            let now = Instant::now();
            let limiter = lock(&self.inner.limiter);
            let trusted = attempt.as_ref().is_some_and(|a| limiter.is_trusted(a));
            if !trusted && keys.iter().any(|k| limiter.blocked_for(k, now).is_some()) {
                return AuthOutcome::RateLimited;
            }
        }
        let outcome = match check.await {
            Ok(Some(identity)) => AuthOutcome::Pass(identity),
            Ok(None) => AuthOutcome::Fail,
            Err(cause) => {
                tracing::warn!(device = %request.device, app = %request.app, cause = %cause, "credential check failed");
                AuthOutcome::Fail
            }
        };
        let now = Instant::now();
        let mut limiter = lock(&self.inner.limiter);
        match &outcome {
            AuthOutcome::Pass(_) => {
                if let Some(k) = &narrow {
                    limiter.succeeded(k);
                }
                if let Some(a) = attempt {
                    limiter.trust(a, now);
                }
            }
            _ => {
                if let Some(a) = &attempt {
                    limiter.distrust(a);
                }
                for k in keys {
                    limiter.failed(k, now);
                }
            }
        }
        outcome
    }
}

/// A device is known when the registry cache or the static devices list it (by name, alias
/// or unique username; the canonical name is returned), or a local account has its name.
impl KnownDevices for CredentialChain {
    fn resolve(&self, app: &AppId, device: &str) -> Option<Identity> {
        if !self.sensor_app_ok(app) {
            return None;
        }
        let registry = self.registry();
        if registry.is_disabled(app.as_str(), device) {
            return None;
        }
        let statics = self.inner.statics.clone();
        let cached = [&registry, &statics]
            .iter()
            .find_map(|c| c.resolve(app.as_str(), device).map(str::to_owned));
        match cached {
            Some(name) => DeviceId::new(name).ok().map(|d| Identity::new(app.clone(), d)),
            None => {
                let id = Identity::new(app.clone(), DeviceId::new(device).ok()?);
                self.inner.accounts.contains(&id).then_some(id)
            }
        }
    }
}

impl Authenticate for CredentialChain {
    async fn authenticate(&self, request: &AuthRequest, peer: Option<IpAddr>) -> AuthOutcome {
        if !self.sensor_app_ok(&request.app) {
            // another application's identity, or a technician's: never a sensor of this
            // gateway, and never sent to the legacy login service
            if OTHER_APP.allow(peer) {
                tracing::info!(device = %request.device, app = %request.app, "sensor login refused: not of the gateway's application");
            }
            return AuthOutcome::Forbidden;
        }
        self.limited(request, peer, self.check(request)).await
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
