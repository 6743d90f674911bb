//! The registry's state: applications and their devices, with Drogue's server-side rules for
//! create, replace and delete (contracts/drogue-cloud.md §5). Every change appends an
//! `io.drogue.registry.v1` event to the event log.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use gw_model::registry::{Application, Device, Metadata, ProxyRules};
use serde::Deserialize;

use crate::{
    DevCloudError,
    events::{CloudEvent, EventLog},
    labels::Selector,
    util,
};

/// Optimistic-lock preconditions of a DELETE (`{"preconditions":{"uid","resourceVersion"}}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Which part of a list to return.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOptions {
    pub selector: Selector,
    pub offset: usize,
    pub limit: Option<usize>,
}

struct AppEntry {
    app: Application,
    devices: BTreeMap<String, Device>,
}

/// Applications and devices, behind one lock (operations are short and never await).
pub(crate) struct Registry {
    apps: Mutex<BTreeMap<String, AppEntry>>,
    events: Arc<EventLog>,
    /// Which devices a gateway may act for: `as=` authorization and command routing.
    rules: ProxyRules,
}

const APP: &str = "application";
const DEVICE: &str = "device";

fn not_found(kind: &'static str, name: &str) -> DevCloudError {
    DevCloudError::NotFound { kind, name: name.to_owned() }
}

/// Sets the server-owned metadata of a newly created object.
fn stamp_new(meta: &mut Metadata) {
    meta.uid = util::uuid_v4();
    meta.creation_timestamp = Some(util::rfc3339(SystemTime::now()));
    meta.generation = 1;
    meta.resource_version = util::uuid_v4();
}

/// Checks a replacement's optimistic-lock fields against the stored object and carries the
/// server-owned fields over, bumping generation and resource version.
fn stamp_replace(new: &mut Metadata, old: &Metadata) -> Result<(), DevCloudError> {
    if !new.resource_version.is_empty() && new.resource_version != old.resource_version {
        return Err(DevCloudError::Conflict(format!(
            "resourceVersion {} is stale (current is {})",
            new.resource_version, old.resource_version
        )));
    }
    if !new.uid.is_empty() && new.uid != old.uid {
        return Err(DevCloudError::Conflict(format!("uid {} does not match", new.uid)));
    }
    new.uid = old.uid.clone();
    new.creation_timestamp = old.creation_timestamp.clone();
    new.deletion_timestamp = old.deletion_timestamp.clone();
    new.generation = old.generation + 1;
    new.resource_version = util::uuid_v4();
    Ok(())
}

fn check_preconditions(pre: &Preconditions, meta: &Metadata) -> Result<(), DevCloudError> {
    if pre.uid.as_ref().is_some_and(|u| !u.is_empty() && *u != meta.uid) {
        return Err(DevCloudError::Conflict("uid precondition failed".to_owned()));
    }
    if pre.resource_version.as_ref().is_some_and(|r| !r.is_empty() && *r != meta.resource_version) {
        return Err(DevCloudError::Conflict("resourceVersion precondition failed".to_owned()));
    }
    Ok(())
}

fn page<T: Clone>(
    items: impl Iterator<Item = T>,
    labels: impl Fn(&T) -> &BTreeMap<String, String>,
    opts: &ListOptions,
) -> Vec<T> {
    items
        .filter(|i| opts.selector.matches(labels(i)))
        .skip(opts.offset)
        .take(opts.limit.unwrap_or(usize::MAX))
        .collect()
}

impl Registry {
    pub(crate) fn new(events: Arc<EventLog>) -> Self {
        Self { apps: Mutex::new(BTreeMap::new()), events, rules: ProxyRules::DROGUE }
    }

    /// The same registry applying `rules` (Drogue's, unless the seed enables the RFC's).
    pub(crate) fn with_rules(mut self, rules: ProxyRules) -> Self {
        self.rules = rules;
        self
    }

    pub(crate) fn rules(&self) -> ProxyRules {
        self.rules
    }

    /// The gateways that may act for `device`, in routing order: those it names
    /// (`gatewaySelector.matchNames`, then the RFC's `providers`), then, under the RFC, every
    /// device of the application whose labels its `providerSelector` matches, by name. Names
    /// that do not exist are skipped; none repeats.
    pub(crate) fn gateways_of(&self, app: &str, device: &Device) -> Vec<Device> {
        let map = self.lock();
        let Some(entry) = map.get(app) else { return Vec::new() };
        let mut out: Vec<Device> = Vec::new();
        let mut add = |gw: &Device| {
            if device.is_proxied_by(&gw.metadata, self.rules)
                && !out.iter().any(|o| o.metadata.name == gw.metadata.name)
            {
                out.push(gw.clone());
            }
        };
        for name in device.named_gateways(self.rules) {
            if let Some(gw) = entry.devices.get(name) {
                add(gw);
            }
        }
        if self.rules.providers_rfc && device.spec.provider_selector.is_some() {
            entry.devices.values().for_each(&mut add);
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, AppEntry>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads seeded objects: server fields that are missing are filled in, but nothing is
    /// emitted to the event log.
    pub(crate) fn seed(
        &self,
        apps: Vec<Application>,
        devices: Vec<Device>,
    ) -> Result<(), DevCloudError> {
        let mut map = self.lock();
        for mut app in apps {
            let name = app.metadata.name.clone();
            if name.is_empty() || app.metadata.application.is_some() {
                return Err(DevCloudError::InvalidSeed(format!(
                    "application {name:?} needs a name and no metadata.application"
                )));
            }
            if map.contains_key(&name) {
                return Err(DevCloudError::InvalidSeed(format!("application {name:?} twice")));
            }
            fill_seeded(&mut app.metadata);
            map.insert(name, AppEntry { app, devices: BTreeMap::new() });
        }
        for mut device in devices {
            let app = device.metadata.application.clone().unwrap_or_default();
            let name = device.metadata.name.clone();
            let entry = map.get_mut(&app).ok_or_else(|| {
                DevCloudError::InvalidSeed(format!(
                    "device {name:?} belongs to unknown application {app:?}"
                ))
            })?;
            if name.is_empty() || entry.devices.contains_key(&name) {
                return Err(DevCloudError::InvalidSeed(format!(
                    "device {name:?} in {app:?} is unnamed or given twice"
                )));
            }
            fill_seeded(&mut device.metadata);
            entry.devices.insert(name, device);
        }
        Ok(())
    }

    pub(crate) fn get_app(&self, name: &str) -> Option<Application> {
        self.lock().get(name).map(|e| e.app.clone())
    }

    pub(crate) fn list_apps(&self, opts: &ListOptions) -> Vec<Application> {
        page(self.lock().values().map(|e| e.app.clone()), |a| &a.metadata.labels, opts)
    }

    pub(crate) fn create_app(&self, mut app: Application) -> Result<Application, DevCloudError> {
        let name = app.metadata.name.clone();
        if name.is_empty() {
            return Err(DevCloudError::BadRequest("metadata.name is missing".to_owned()));
        }
        if app.metadata.application.is_some() {
            return Err(DevCloudError::BadRequest(
                "an application has no metadata.application".to_owned(),
            ));
        }
        {
            let mut map = self.lock();
            if map.contains_key(&name) {
                return Err(DevCloudError::AlreadyExists { kind: APP, name });
            }
            stamp_new(&mut app.metadata);
            map.insert(name.clone(), AppEntry { app: app.clone(), devices: BTreeMap::new() });
        }
        self.events.append(CloudEvent::registry_change(&name, None));
        Ok(app)
    }

    pub(crate) fn update_app(&self, path: &str, mut app: Application) -> Result<(), DevCloudError> {
        if app.metadata.name != path || app.metadata.application.is_some() {
            return Err(DevCloudError::BadRequest(format!(
                "metadata.name {:?} does not match the path {path:?}",
                app.metadata.name
            )));
        }
        {
            let mut map = self.lock();
            let entry = map.get_mut(path).ok_or_else(|| not_found(APP, path))?;
            stamp_replace(&mut app.metadata, &entry.app.metadata)?;
            entry.app = app;
        }
        self.events.append(CloudEvent::registry_change(path, None));
        Ok(())
    }

    /// Deletes an application and all of its devices.
    pub(crate) fn delete_app(&self, name: &str, pre: &Preconditions) -> Result<(), DevCloudError> {
        {
            let mut map = self.lock();
            let entry = map.get(name).ok_or_else(|| not_found(APP, name))?;
            check_preconditions(pre, &entry.app.metadata)?;
            map.remove(name);
        }
        self.events.append(CloudEvent::registry_change(name, None));
        Ok(())
    }

    pub(crate) fn get_device(&self, app: &str, name: &str) -> Option<Device> {
        self.lock().get(app)?.devices.get(name).cloned()
    }

    /// Finds a device by name, alias, or unique username (Drogue's `device_to_entity`).
    /// The canonical name wins over another device's alias.
    pub(crate) fn find_device(&self, app: &str, id: &str) -> Option<Device> {
        let map = self.lock();
        let devices = &map.get(app)?.devices;
        devices.get(id).or_else(|| devices.values().find(|d| d.is_known_as(id))).cloned()
    }

    pub(crate) fn list_devices(
        &self,
        app: &str,
        opts: &ListOptions,
    ) -> Result<Vec<Device>, DevCloudError> {
        let map = self.lock();
        let entry = map.get(app).ok_or_else(|| not_found(APP, app))?;
        Ok(page(entry.devices.values().cloned(), |d| &d.metadata.labels, opts))
    }

    pub(crate) fn create_device(
        &self,
        app: &str,
        mut device: Device,
    ) -> Result<Device, DevCloudError> {
        let name = device.metadata.name.clone();
        if name.is_empty() {
            return Err(DevCloudError::BadRequest("metadata.name is missing".to_owned()));
        }
        if device.metadata.application.as_deref() != Some(app) {
            return Err(DevCloudError::BadRequest(format!("metadata.application must be {app:?}")));
        }
        {
            let mut map = self.lock();
            let entry = map.get_mut(app).ok_or_else(|| not_found(APP, app))?;
            if entry.devices.contains_key(&name) {
                return Err(DevCloudError::AlreadyExists { kind: DEVICE, name });
            }
            stamp_new(&mut device.metadata);
            entry.devices.insert(name.clone(), device.clone());
        }
        self.events.append(CloudEvent::registry_change(app, Some(&name)));
        Ok(device)
    }

    pub(crate) fn update_device(
        &self,
        app: &str,
        name: &str,
        mut device: Device,
    ) -> Result<(), DevCloudError> {
        if device.metadata.application.as_deref() != Some(app) || device.metadata.name != name {
            return Err(DevCloudError::BadRequest(format!(
                "metadata ({:?}, {:?}) does not match the path ({app:?}, {name:?})",
                device.metadata.application, device.metadata.name
            )));
        }
        {
            let mut map = self.lock();
            let entry = map.get_mut(app).ok_or_else(|| not_found(APP, app))?;
            let old = entry.devices.get_mut(name).ok_or_else(|| not_found(DEVICE, name))?;
            stamp_replace(&mut device.metadata, &old.metadata)?;
            *old = device;
        }
        self.events.append(CloudEvent::registry_change(app, Some(name)));
        Ok(())
    }

    /// Creates the device, or replaces it without preconditions.
    pub(crate) fn apply_device(&self, device: Device) -> Result<(), DevCloudError> {
        let app = device.metadata.application.clone().unwrap_or_default();
        let name = device.metadata.name.clone();
        if self.get_device(&app, &name).is_some() {
            let mut device = device;
            device.metadata.resource_version.clear();
            device.metadata.uid.clear();
            self.update_device(&app, &name, device)
        } else {
            self.create_device(&app, device).map(drop)
        }
    }

    pub(crate) fn delete_device(
        &self,
        app: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<(), DevCloudError> {
        {
            let mut map = self.lock();
            let entry = map.get_mut(app).ok_or_else(|| not_found(APP, app))?;
            let old = entry.devices.get(name).ok_or_else(|| not_found(DEVICE, name))?;
            check_preconditions(pre, &old.metadata)?;
            entry.devices.remove(name);
        }
        self.events.append(CloudEvent::registry_change(app, Some(name)));
        Ok(())
    }
}

fn fill_seeded(meta: &mut Metadata) {
    if meta.uid.is_empty() {
        meta.uid = util::uuid_v4();
    }
    if meta.creation_timestamp.is_none() {
        meta.creation_timestamp = Some(util::rfc3339(SystemTime::now()));
    }
    if meta.generation == 0 {
        meta.generation = 1;
    }
    if meta.resource_version.is_empty() {
        meta.resource_version = util::uuid_v4();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(app: &str, name: &str) -> Device {
        serde_json::from_value(json!({"metadata":{"application":app,"name":name}})).unwrap()
    }

    fn registry() -> (Registry, Arc<EventLog>) {
        let log = Arc::new(EventLog::new(100));
        let r = Registry::new(log.clone());
        let app = serde_json::from_value(json!({"metadata":{"name":"a"}})).unwrap();
        r.create_app(app).unwrap();
        (r, log)
    }

    #[test]
    fn replace_checks_and_bumps_versions() {
        let (r, log) = registry();
        let created = r.create_device("a", device("a", "d")).unwrap();
        assert_eq!(created.metadata.generation, 1);
        let mut stale = created.clone();
        r.update_device("a", "d", created.clone()).unwrap();
        let now = r.get_device("a", "d").unwrap();
        assert_eq!(now.metadata.generation, 2);
        assert_ne!(now.metadata.resource_version, created.metadata.resource_version);
        assert_eq!(now.metadata.uid, created.metadata.uid);
        stale.metadata.labels.insert("x".into(), "y".into());
        assert!(matches!(r.update_device("a", "d", stale), Err(DevCloudError::Conflict(_))));
        // app event + create + update
        assert_eq!(log.snapshot().len(), 3);
    }

    #[test]
    fn delete_honours_preconditions() {
        let (r, _) = registry();
        let d = r.create_device("a", device("a", "d")).unwrap();
        let wrong = Preconditions { uid: Some("nope".into()), resource_version: None };
        assert!(matches!(r.delete_device("a", "d", &wrong), Err(DevCloudError::Conflict(_))));
        let right = Preconditions { uid: Some(d.metadata.uid), resource_version: None };
        r.delete_device("a", "d", &right).unwrap();
        assert!(r.get_device("a", "d").is_none());
    }

    #[test]
    fn finds_devices_by_alias_and_unique_username() {
        let (r, _) = registry();
        let d: Device = serde_json::from_value(json!({"metadata":{"application":"a","name":"d"},
            "spec":{"alias":["other"],"authentication":{"credentials":[
                {"user":{"username":"u","password":"p","unique":true}}]}}}))
        .unwrap();
        r.create_device("a", d).unwrap();
        assert_eq!(r.find_device("a", "other").unwrap().metadata.name, "d");
        assert_eq!(r.find_device("a", "u").unwrap().metadata.name, "d");
        assert!(r.find_device("a", "x").is_none());
        assert!(r.find_device("b", "d").is_none());
    }
}
