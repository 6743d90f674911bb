//! Registry sync: lists the gateway's application's devices from Drogue's registry API and
//! publishes, atomically, the set of devices this gateway may act for (contracts §5).
//!
//! A device is kept when it is not being deleted and `spec.gatewaySelector.matchNames` names
//! the gateway's canonical name, as Drogue Cloud authorizes; with `providers_rfc`, also when
//! the providers RFC's `spec.providers` names it or `spec.providerSelector` matches the labels
//! of the gateway's own device (fetched first at each listing). The rule is
//! [`gw_model::registry::ProxyRules`], which the dev cloud applies too. The listing
//! is `GET {url}/api/registry/v1alpha1/apps/{app}/devices?limit=N&offset=M[&labels=..]`, page by
//! page until a short page. The API has no continue token, so pages overlap by one device: when
//! the first device of a page is not the last of the previous one, the registry changed under
//! the paging (a device before the offset came or went) and the listing starts over.
//!
//! Only a complete listing is published; a failed one publishes nothing and the previous set
//! stays (the cloud is optional at runtime). A new set is published only when it differs from
//! the last one, so consumers (the credential cache) do work only on change.
//!
//! The loop lists every `interval` (±10 % jitter), backs off on errors, and resyncs at once,
//! debounced, when the event stream reports a registry change or [`ResyncHandle::resync`] is
//! called.

mod config;
mod events;
mod status;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use gw_model::{
    BasicCredentials, Identity, Secret,
    registry::{Device, Metadata},
};
use percent_encoding::utf8_percent_encode;
use reqwest::header::{self, HeaderValue};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::{
    config::RegistryConfig,
    events::REGISTRY_EVENT,
    status::{RegistrySnapshot, RegistryState, RegistryStatus},
};
use self::{events::EventWatcher, status::SyncCounts};
use crate::{
    CloudError,
    backoff::Backoff,
    drogue_http::{QUERY, SEGMENT, client_builder, describe},
};

/// Triggers arriving within this time after the first are served by one listing.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait for the event stream's position before the first listing.
const EVENTS_PATIENCE: Duration = Duration::from_secs(2);
/// How often a listing starts over when the registry changes under its paging.
const LIST_ATTEMPTS: usize = 3;

/// One complete, filtered listing: the devices this gateway may act for, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncedDevices {
    /// Sorted by `metadata.name`; names are unique.
    pub devices: Vec<Device>,
    /// When the listing that produced this set finished.
    pub synced_at: SystemTime,
    /// 1 for the first published set, +1 for each changed set after it.
    pub generation: u64,
}

/// How one published set differs from the one before, by device name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    pub added: Vec<String>,
    /// No longer in the set: removed from the registry, no longer naming this gateway, or
    /// being deleted. Their sensors lose access; open connections should be closed.
    pub removed: Vec<String>,
    /// Still in the set with a different spec or metadata (credentials may have changed).
    pub changed: Vec<String>,
}

impl DeviceChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl SyncedDevices {
    /// The device with this canonical name.
    pub fn get(&self, name: &str) -> Option<&Device> {
        self.devices
            .binary_search_by(|d| d.metadata.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.devices.get(i))
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// What changed since `previous` (`None`: everything is added).
    pub fn changes_since(&self, previous: Option<&SyncedDevices>) -> DeviceChanges {
        let mut changes = DeviceChanges::default();
        let empty = [];
        let old = previous.map_or(&empty[..], |p| p.devices.as_slice());
        let (mut i, mut j) = (0, 0);
        loop {
            match (old.get(i), self.devices.get(j)) {
                (None, None) => break,
                (Some(o), None) => {
                    changes.removed.push(o.metadata.name.clone());
                    i += 1;
                }
                (None, Some(n)) => {
                    changes.added.push(n.metadata.name.clone());
                    j += 1;
                }
                (Some(o), Some(n)) => match o.metadata.name.cmp(&n.metadata.name) {
                    std::cmp::Ordering::Less => {
                        changes.removed.push(o.metadata.name.clone());
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        changes.added.push(n.metadata.name.clone());
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if o != n {
                            changes.changed.push(n.metadata.name.clone());
                        }
                        i += 1;
                        j += 1;
                    }
                },
            }
        }
        changes
    }
}

/// What one successful listing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Devices this gateway may act for.
    pub devices: usize,
    /// Devices the registry listed (after the label selector).
    pub listed: usize,
    /// Listed devices skipped because they did not parse as a Drogue device.
    pub invalid: usize,
    /// Requests made.
    pub pages: usize,
    /// Whether a new set was published.
    pub published: bool,
    /// Generation of the set now published.
    pub generation: u64,
}

/// Asks a running [`RegistrySync`] for a listing now (debounced). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResyncHandle {
    trigger: Arc<watch::Sender<u64>>,
}

impl ResyncHandle {
    /// Requests a resync; requests arriving close together are served by one listing.
    pub fn resync(&self) {
        self.trigger.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The registry sync of one gateway.
pub struct RegistrySync {
    config: RegistryConfig,
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
    app: String,
    gateway: String,
    status: Arc<RegistryStatus>,
    published: watch::Sender<Option<Arc<SyncedDevices>>>,
    trigger: Arc<watch::Sender<u64>>,
}

/// One parsed listing, before it is published.
struct Listing {
    /// The gateway's own device as the registry has it (its name only, without the RFC).
    gateway: Metadata,
    kept: Vec<Device>,
    listed: usize,
    invalid: usize,
    pages: usize,
}

impl RegistrySync {
    /// Builds the sync for `gateway` (its canonical name and application); `token` is the
    /// registry API token, resolved from `token_file` or `token` by the caller, or none for a
    /// registry that needs none (then no `Authorization` header is sent).
    pub fn new(
        config: &RegistryConfig,
        gateway: &Identity,
        token: impl Into<Option<Secret>>,
    ) -> Result<Self, CloudError> {
        config.validate()?;
        let client = client_builder(config.timeout, config.ca_file.as_deref())?
            .build()
            .map_err(CloudError::Client)?;
        let authorization = match (token.into(), &config.user) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(CloudError::RegistryConfig {
                    key: "user",
                    reason: "needs token_file or token (the password sent with it)".into(),
                });
            }
            (Some(token), user) => {
                let text = match user {
                    Some(user) => BasicCredentials::new(user.clone(), token).to_header(),
                    None => format!("Bearer {}", token.expose().trim()),
                };
                let mut value =
                    HeaderValue::from_str(&text).map_err(|_| CloudError::RegistryConfig {
                        key: "token",
                        reason: "holds characters not allowed in an HTTP header".into(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let status =
            Arc::new(RegistryStatus::new(config.base().to_owned(), config.events_url.clone()));
        Ok(Self {
            config: config.clone(),
            client,
            authorization,
            app: gateway.app().as_str().to_owned(),
            gateway: gateway.device().as_str().to_owned(),
            status,
            published: watch::Sender::new(None),
            trigger: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The published set: `None` until the first successful listing, then each changed set.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<SyncedDevices>>> {
        self.published.subscribe()
    }

    pub fn status(&self) -> Arc<RegistryStatus> {
        Arc::clone(&self.status)
    }

    /// A handle that asks the running loop for a listing now.
    pub fn resync_handle(&self) -> ResyncHandle {
        ResyncHandle { trigger: Arc::clone(&self.trigger) }
    }

    /// Lists the registry once and publishes the set if it changed; records the outcome in
    /// the status. On error nothing is published.
    pub async fn sync_once(&self) -> Result<SyncReport, CloudError> {
        let started = Instant::now();
        let listing = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                self.status.record_failure(describe(&e));
                return Err(e);
            }
        };
        let synced_at = SystemTime::now();
        let mut devices = listing.kept;
        devices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let previous = self.published.borrow().clone();
        let unchanged = previous.as_ref().is_some_and(|p| p.devices == devices);
        let (generation, changes) = match &previous {
            Some(p) if unchanged => (p.generation, DeviceChanges::default()),
            _ => {
                let generation = previous.as_ref().map_or(1, |p| p.generation + 1);
                let set = Arc::new(SyncedDevices { devices, synced_at, generation });
                let changes = set.changes_since(previous.as_deref());
                self.published.send_replace(Some(set));
                (generation, changes)
            }
        };
        let report = SyncReport {
            devices: self.published.borrow().as_ref().map_or(0, |s| s.len()),
            listed: listing.listed,
            invalid: listing.invalid,
            pages: listing.pages,
            published: !unchanged,
            generation,
        };
        self.status.record_sync(
            synced_at,
            SyncCounts {
                devices: report.devices,
                listed: report.listed,
                invalid: report.invalid,
                generation,
            },
        );
        tracing::info!(
            app = %self.app,
            devices = report.devices,
            listed = report.listed,
            invalid = report.invalid,
            pages = report.pages,
            added = changes.added.len(),
            removed = changes.removed.len(),
            changed = changes.changed.len(),
            generation,
            ms = started.elapsed().as_millis() as u64,
            "registry synced"
        );
        Ok(report)
    }

    /// Lists and publishes every `interval`, on events and on [`ResyncHandle::resync`], until
    /// `token` is cancelled. Errors are logged, shown in the status, and retried with backoff.
    pub async fn run(self, token: CancellationToken) {
        let mut watcher = None;
        if let Some(url) = &self.config.events_url {
            let events = EventWatcher {
                client: self.client.clone(),
                url: url.trim_end_matches('/').to_owned(),
                authorization: self.authorization.clone(),
                app: self.app.clone(),
                status: Arc::clone(&self.status),
                trigger: Arc::clone(&self.trigger),
            };
            let patience = self.config.timeout.min(EVENTS_PATIENCE);
            let since = tokio::select! {
                _ = token.cancelled() => return,
                since = events.position(patience) => since,
            };
            watcher = Some(tokio::spawn(events.run(since, token.child_token())));
        }
        let interval = self.config.interval;
        let mut backoff = Backoff::new(interval.min(Duration::from_secs(1)), interval);
        let mut triggers = self.trigger.subscribe();
        tracing::info!(url = %self.config.base(), app = %self.app, gateway = %self.gateway,
            interval = ?interval, events = ?self.config.events_url, "registry sync started");
        loop {
            triggers.borrow_and_update();
            let outcome = tokio::select! {
                _ = token.cancelled() => break,
                r = self.sync_once() => r,
            };
            let delay = match outcome {
                Ok(_) => {
                    backoff.reset();
                    interval.mul_f64(0.9 + 0.2 * rand::random::<f64>())
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(cause = %describe(&e), retry_in = ?delay,
                        "registry sync failed; keeping the previous set");
                    delay
                }
            };
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = triggers.changed() => {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(DEBOUNCE) => {}
                    }
                }
            }
        }
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        tracing::info!(app = %self.app, "registry sync stopped");
    }

    async fn list(&self) -> Result<Listing, CloudError> {
        let mut attempt = 1;
        loop {
            match self.list_pages().await {
                Err(CloudError::RegistryShifted { reason }) if attempt < LIST_ATTEMPTS => {
                    tracing::debug!(%reason, attempt, "registry changed while listing; again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One pass over all pages; pages overlap by one device to notice a shifted listing.
    async fn list_pages(&self) -> Result<Listing, CloudError> {
        let limit = self.config.page_size;
        let mut listing = Listing {
            gateway: Metadata::default(),
            kept: Vec::new(),
            listed: 0,
            invalid: 0,
            pages: 0,
        };
        listing.gateway.name = self.gateway.clone();
        if self.config.providers_rfc {
            listing.gateway = self.own_device().await?;
            listing.pages += 1;
        }
        let mut names = BTreeSet::new();
        let mut offset = 0usize;
        let mut last: Option<(String, String)> = None;
        loop {
            let page = self.page(offset, limit).await?;
            listing.pages += 1;
            let full = page.len() >= limit;
            let mut items = page.into_iter();
            if let Some(expected) = &last {
                match items.next() {
                    Some(first) if key_of(&first) == *expected => {}
                    _ => {
                        return Err(CloudError::RegistryShifted {
                            reason: format!("device {:?} moved from offset {offset}", expected.0),
                        });
                    }
                }
            }
            let mut tail = None;
            for item in items {
                let key = key_of(&item);
                if !names.insert(key.0.clone()) {
                    return Err(CloudError::RegistryShifted {
                        reason: format!("device {:?} listed twice", key.0),
                    });
                }
                tail = Some(key);
                listing.listed += 1;
                self.keep(item, &mut listing);
            }
            if !full {
                return Ok(listing);
            }
            // A full page holds at least one device past the overlap (page_size >= 2).
            let Some(tail) = tail else {
                return Err(CloudError::RegistryShifted {
                    reason: format!("a full page at offset {offset} brought no new device"),
                });
            };
            last = Some(tail);
            offset += limit - 1;
        }
    }

    /// Parses one listed device and keeps it when it names this gateway.
    fn keep(&self, item: Value, listing: &mut Listing) {
        let device = match serde_json::from_value::<Device>(item) {
            Ok(d) => d,
            Err(e) => {
                listing.invalid += 1;
                tracing::warn!(app = %self.app, cause = %e, "registry device skipped: not a Drogue device");
                return;
            }
        };
        let app = device.metadata.application.as_deref();
        if app.is_some_and(|a| a != self.app) {
            listing.invalid += 1;
            tracing::warn!(device = %device.metadata.name, app = ?app,
                "registry device skipped: listed under another application");
            return;
        }
        if device.is_proxied_by(&listing.gateway, self.config.proxy_rules()) {
            listing.kept.push(device);
        }
    }

    /// The gateway's own device, for the labels `spec.providerSelector` matches. Absent from
    /// the registry, it has none (only names then match).
    async fn own_device(&self) -> Result<Metadata, CloudError> {
        let url = format!(
            "{}/api/registry/v1alpha1/apps/{}/devices/{}",
            self.config.base(),
            utf8_percent_encode(&self.app, SEGMENT),
            utf8_percent_encode(&self.gateway, SEGMENT)
        );
        let Some(body) = self.get_json(&url, true).await? else {
            return Ok(Metadata { name: self.gateway.clone(), ..Default::default() });
        };
        let device: Device = serde_json::from_value(body)
            .map_err(|source| CloudError::RegistryBody { url, source })?;
        Ok(device.metadata)
    }

    async fn page(&self, offset: usize, limit: usize) -> Result<Vec<Value>, CloudError> {
        let mut url = format!(
            "{}/api/registry/v1alpha1/apps/{}/devices?limit={limit}&offset={offset}",
            self.config.base(),
            utf8_percent_encode(&self.app, SEGMENT)
        );
        if let Some(labels) = &self.config.labels {
            url.push_str("&labels=");
            url.extend(utf8_percent_encode(labels, QUERY));
        }
        let body = self.get_json(&url, false).await?;
        let body = body.unwrap_or_default();
        serde_json::from_value(body).map_err(|source| CloudError::RegistryBody { url, source })
    }

    /// GETs `url` as JSON with the registry's credentials; `None` for a 404 when
    /// `missing_ok`.
    async fn get_json(&self, url: &str, missing_ok: bool) -> Result<Option<Value>, CloudError> {
        let request = |source| CloudError::RegistryRequest { url: url.to_owned(), source };
        let resp = self
            .client
            .get(url)
            .headers(
                self.authorization.iter().map(|a| (header::AUTHORIZATION, a.clone())).collect(),
            )
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(request)?;
        let status = resp.status();
        if missing_ok && status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => " (check registry.token and registry.user)",
                404 => " (does the application exist?)",
                _ => "",
            };
            return Err(CloudError::RegistryStatus {
                url: url.to_owned(),
                status: status.as_u16(),
                hint,
            });
        }
        let body = resp.bytes().await.map_err(request)?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| CloudError::RegistryBody { url: url.to_owned(), source })
    }
}

/// A listed device's `(name, uid)`, compared across the overlap of two pages.
fn key_of(item: &Value) -> (String, String) {
    let field = |k: &str| {
        item.get("metadata").and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("").to_owned()
    };
    (field("name"), field("uid"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dev(name: &str, rv: &str) -> Device {
        serde_json::from_value(json!({"metadata":{"application":"a","name":name,
            "resourceVersion":rv}}))
        .unwrap()
    }

    fn set(devices: Vec<Device>) -> SyncedDevices {
        SyncedDevices { devices, synced_at: SystemTime::UNIX_EPOCH, generation: 1 }
    }

    #[test]
    fn changes_name_added_removed_and_changed_devices() {
        let old = set(vec![dev("a", "1"), dev("b", "1"), dev("d", "1")]);
        let new = set(vec![dev("b", "2"), dev("c", "1"), dev("d", "1"), dev("e", "1")]);
        let c = new.changes_since(Some(&old));
        assert_eq!(c.added, ["c", "e"]);
        assert_eq!(c.removed, ["a"]);
        assert_eq!(c.changed, ["b"]);
        assert_eq!(new.changes_since(None).added.len(), 4);
        assert!(new.changes_since(Some(&new)).is_empty());
        assert_eq!(new.get("c").unwrap().metadata.name, "c");
        assert!(new.get("a").is_none());
    }

    #[test]
    fn key_of_tolerates_odd_items() {
        assert_eq!(key_of(&json!({"metadata":{"name":"x","uid":"u"}})), ("x".into(), "u".into()));
        assert_eq!(key_of(&json!(42)), (String::new(), String::new()));
    }
}
