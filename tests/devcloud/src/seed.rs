//! The dev cloud's initial state: API users, applications and devices, loaded from a TOML or
//! JSON file or built in code.
//!
//! ```toml
//! [[users]]
//! name = "admin"
//! token = "dev-token"
//!
//! [[applications]]
//! metadata = { name = "my-app" }
//!
//! [[devices]]
//! metadata = { application = "my-app", name = "gw1" }
//! spec.authentication.credentials = [ { pass = "gw-secret" } ]
//!
//! [[devices]]
//! metadata = { application = "my-app", name = "sensor1" }
//! spec.gatewaySelector.matchNames = ["gw1"]
//! ```
//!
//! Devices have Drogue's device JSON shape (in TOML, the same structure).
//!
//! `providers_rfc = true` (top level) makes the cloud also honour the providers RFC's
//! `spec.providers` and `spec.providerSelector` for `as=` and command routing, as a cloud
//! implementing the RFC would; off by default, as in Drogue Cloud, which reads only
//! `spec.gatewaySelector.matchNames`.

use std::{collections::BTreeMap, path::Path};

use gw_model::registry::{
    Application, CommandTarget, CommandsSpec, Credential, CredentialsSpec, Device, DeviceSpec,
    ExternalEndpoint, GatewaySelector, Metadata, PasswordSpec,
};
use serde::{Deserialize, Serialize};

use crate::DevCloudError;

/// An API user of the registry and command API: `Authorization: Bearer <token>` or Basic
/// `<name>:<token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub token: String,
}

/// Everything the dev cloud starts with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub applications: Vec<Application>,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Honour the providers RFC (`spec.providers`, `spec.providerSelector`) besides
    /// `spec.gatewaySelector.matchNames`. Drogue Cloud does not.
    #[serde(default)]
    pub providers_rfc: bool,
}

impl Seed {
    /// An empty seed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a seed file: `.json` as JSON, anything else as TOML.
    pub fn load(path: &Path) -> Result<Seed, DevCloudError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DevCloudError::ReadSeed { path: path.to_owned(), source })?;
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::parse(&text, is_json)
            .map_err(|reason| DevCloudError::ParseSeed { path: path.to_owned(), reason })
    }

    /// Parses seed text. TOML is read into a generic value first, then mapped through JSON,
    /// so both formats give the same structure.
    pub fn parse(text: &str, json: bool) -> Result<Seed, String> {
        let value: serde_json::Value = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            let toml: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
            serde_json::to_value(toml).map_err(|e| e.to_string())?
        };
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Makes the cloud honour the providers RFC (see the module docs).
    pub fn providers_rfc(mut self, on: bool) -> Self {
        self.providers_rfc = on;
        self
    }

    /// Adds an API user.
    pub fn user(mut self, name: &str, token: &str) -> Self {
        self.users.push(User { name: name.to_owned(), token: token.to_owned() });
        self
    }

    /// Adds an application.
    pub fn application(mut self, name: &str) -> Self {
        self.applications.push(Application {
            metadata: Metadata { name: name.to_owned(), ..Default::default() },
            ..Default::default()
        });
        self
    }

    /// Adds a device as given.
    pub fn device(mut self, device: Device) -> Self {
        self.devices.push(device);
        self
    }

    /// Adds a device that authenticates with a plain password (a gateway, typically).
    pub fn password_device(self, app: &str, name: &str, password: &str) -> Self {
        self.device(device_with(app, name, Some(password), &[]))
    }

    /// Adds a sensor the named gateways may act for (`spec.gatewaySelector.matchNames`),
    /// with its own password if given.
    pub fn sensor(self, app: &str, name: &str, password: Option<&str>, gateways: &[&str]) -> Self {
        self.device(device_with(app, name, password, gateways))
    }

    /// Gives an already added device an external command endpoint
    /// (`spec.commands.commands: [{"external": {"url": ..}}]`). Does nothing when the device
    /// was not added.
    pub fn push_endpoint(mut self, app: &str, device: &str, url: &str) -> Self {
        let found = self
            .devices
            .iter_mut()
            .find(|d| d.metadata.application.as_deref() == Some(app) && d.metadata.name == device);
        if let Some(d) = found {
            let endpoint = ExternalEndpoint { url: url.to_owned(), ..Default::default() };
            d.spec.commands = Some(CommandsSpec {
                commands: vec![CommandTarget::External(endpoint)],
                other: Default::default(),
            });
        }
        self
    }
}

/// A device with an optional plain password and gateway selector.
pub fn device_with(app: &str, name: &str, password: Option<&str>, gateways: &[&str]) -> Device {
    let mut spec = DeviceSpec::default();
    if let Some(pw) = password {
        spec.authentication = Some(CredentialsSpec {
            credentials: vec![Credential::Pass(PasswordSpec::Plain(pw.to_owned()))],
            other: Default::default(),
        });
    }
    if !gateways.is_empty() {
        spec.gateway_selector = Some(GatewaySelector {
            match_names: gateways.iter().map(|g| (*g).to_owned()).collect(),
            other: Default::default(),
        });
    }
    Device {
        metadata: Metadata {
            application: Some(app.to_owned()),
            name: name.to_owned(),
            labels: BTreeMap::new(),
            ..Default::default()
        },
        spec,
        status: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[[users]]
name = "admin"
token = "t"

[[applications]]
metadata = { name = "my-app" }

[[devices]]
metadata = { application = "my-app", name = "gw1" }
spec.authentication.credentials = [ { pass = "gw-secret" }, { pass = { bcrypt = "$2b$04$x" } } ]

[[devices]]
metadata = { application = "my-app", name = "sensor1", labels = { zone = "north" } }
spec.gatewaySelector.matchNames = ["gw1"]
"#;

    #[test]
    fn toml_and_json_give_the_same_seed() {
        let from_toml = Seed::parse(TOML, false).unwrap();
        let json = serde_json::to_string(&from_toml).unwrap();
        let from_json = Seed::parse(&json, true).unwrap();
        assert_eq!(from_toml, from_json);
        assert_eq!(from_toml.devices[0].credentials().len(), 2);
        assert!(
            from_toml.devices[1]
                .named_gateways(gw_model::registry::ProxyRules::DROGUE)
                .any(|n| n == "gw1")
        );
    }

    #[test]
    fn builder_matches_file() {
        let built = Seed::new()
            .user("admin", "t")
            .application("my-app")
            .password_device("my-app", "gw1", "pw")
            .sensor("my-app", "sensor1", None, &["gw1"])
            .push_endpoint("my-app", "gw1", "http://127.0.0.1:1/push");
        assert!(
            built.devices[1]
                .named_gateways(gw_model::registry::ProxyRules::DROGUE)
                .any(|n| n == "gw1")
        );
        assert_eq!(built.devices[0].external_endpoint().unwrap().url, "http://127.0.0.1:1/push");
        let text = serde_json::to_string(&built).unwrap();
        assert_eq!(Seed::parse(&text, true).unwrap(), built);
    }

    #[test]
    fn load_reports_path_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.toml");
        std::fs::write(&path, "[[users]]\nname = 1\n").unwrap();
        let err = Seed::load(&path).unwrap_err();
        assert!(err.to_string().contains("seed.toml"), "{err}");
        let missing = Seed::load(&dir.path().join("none.json")).unwrap_err();
        assert!(matches!(missing, DevCloudError::ReadSeed { .. }));
    }
}
