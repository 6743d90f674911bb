//! Drogue Cloud's registry model (contracts/drogue-cloud.md §5), as the registry API serves it.
//!
//! The sections the gateway acts on are typed; every other section, and every unknown field
//! inside a typed section, is kept as JSON so a device read from the registry and written back
//! loses nothing. Metadata rejects unknown fields, as Drogue's does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Metadata of a device or an application. Applications have no `application` field; the
/// other fields are set by the server and left out when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An application as the registry serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub spec: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub status: Map<String, Value>,
}

/// A device as the registry serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "DeviceSpec::is_empty")]
    pub spec: DeviceSpec,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub status: Map<String, Value>,
}

/// The sections of a device's spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<CredentialsSpec>,
    /// The legacy spelling of `authentication`, still read by Drogue.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "credentials")]
    pub legacy_credentials: Option<CredentialsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_selector: Option<GatewaySelector>,
    /// Other names the device is known by (a plain array, whatever Drogue's OpenAPI says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<CommandsSpec>,
    /// The providers RFC's list of gateways a device may connect through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    /// Every section the gateway does not act on (`mqtt`, `core`, ...), kept verbatim.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl DeviceSpec {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `spec.authentication` (or `spec.credentials`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CredentialsSpec {
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One credential of a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Credential {
    /// A password for the device itself.
    Pass(PasswordSpec),
    /// A username and password.
    User(UserCredential),
    /// A pre-shared key (DTLS/TLS-PSK); kept as the registry sends it.
    Psk(Value),
    /// A certificate entry; Drogue stores it but validates against trust anchors instead.
    Cert(Value),
}

/// A password as the registry stores it: a plain string, or tagged with its form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PasswordSpec {
    Plain(String),
    Tagged(TaggedPassword),
}

/// `{"plain": ...}`, `{"bcrypt": "$2..."}` or `{"sha512": "$6$..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaggedPassword {
    Plain(String),
    Bcrypt(String),
    Sha512(String),
}

impl PasswordSpec {
    /// The same password in its tagged form.
    pub fn tagged(&self) -> TaggedPassword {
        match self {
            Self::Plain(p) => TaggedPassword::Plain(p.clone()),
            Self::Tagged(t) => t.clone(),
        }
    }
}

/// `{"user": {"username", "password", "unique"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCredential {
    pub username: String,
    pub password: PasswordSpec,
    /// A unique username also identifies the device (it works like an alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<bool>,
}

impl UserCredential {
    pub fn is_unique(&self) -> bool {
        self.unique.unwrap_or(false)
    }
}

/// `spec.gatewaySelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySelector {
    #[serde(default)]
    pub match_names: Vec<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `spec.commands`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandsSpec {
    #[serde(default)]
    pub commands: Vec<CommandTarget>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One entry of `spec.commands.commands`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandTarget {
    External(ExternalEndpoint),
}

/// Where the cloud pushes commands for a gateway over HTTP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExternalEndpoint {
    /// None for Drogue's default body; `ttn`, `ttnv2`, `ttnv3` otherwise.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Device {
    /// The device's credentials: `spec.authentication`, else the legacy `spec.credentials`.
    pub fn credentials(&self) -> &[Credential] {
        self.spec
            .authentication
            .as_ref()
            .or(self.spec.legacy_credentials.as_ref())
            .map(|c| c.credentials.as_slice())
            .unwrap_or_default()
    }

    /// Whether the gateway with this canonical name may act for the device:
    /// `spec.gatewaySelector.matchNames` or the RFC's `spec.providers` names it.
    pub fn is_proxied_by(&self, gateway: &str) -> bool {
        let by_selector = self
            .spec
            .gateway_selector
            .as_ref()
            .is_some_and(|s| s.match_names.iter().any(|n| n == gateway));
        let by_providers =
            self.spec.providers.as_ref().is_some_and(|p| p.iter().any(|n| n == gateway));
        by_selector || by_providers
    }

    /// The gateways named in `spec.gatewaySelector.matchNames`, in order.
    pub fn gateways(&self) -> &[String] {
        self.spec.gateway_selector.as_ref().map(|s| s.match_names.as_slice()).unwrap_or_default()
    }

    /// Whether `name` identifies this device: its name, an alias, or a unique username.
    pub fn is_known_as(&self, name: &str) -> bool {
        self.metadata.name == name
            || self.spec.alias.as_ref().is_some_and(|a| a.iter().any(|x| x == name))
            || self
                .credentials()
                .iter()
                .any(|c| matches!(c, Credential::User(u) if u.is_unique() && u.username == name))
    }

    /// The external command endpoint: the *last* `spec.commands.commands` entry, as Drogue uses.
    pub fn external_endpoint(&self) -> Option<&ExternalEndpoint> {
        self.spec.commands.as_ref()?.commands.last().map(|c| match c {
            CommandTarget::External(e) => e,
        })
    }

    pub fn is_being_deleted(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// Drogue's `spec.core.disabled`: the device may neither connect nor get commands.
    pub fn is_disabled(&self) -> bool {
        self.spec
            .other
            .get("core")
            .and_then(|core| core.get("disabled"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn numbers_in_unknown_fields_survive_repeated_round_trips_exactly() {
        // found by the registry_json fuzz target: without exact float parsing the last digit
        // of 5e-66 drifted between one serialization and the next
        let text = r#"{"metadata":{"name":"s1"},"spec":{"br!alias":["a",88,5e-66,5]}}"#;
        let device: Device = serde_json::from_str(text).unwrap();
        let once = serde_json::to_string(&device).unwrap();
        let again: Device = serde_json::from_str(&once).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), once);
    }

    fn full_example() -> Value {
        json!({"metadata":{"application":"my-app","name":"sensor1","uid":"4e0bd3e5",
          "creationTimestamp":"2023-01-01T00:00:00Z","generation":3,"resourceVersion":"b3c1",
          "deletionTimestamp":"2023-01-02T00:00:00Z","finalizers":["x"],"labels":{"k":"v"},
          "annotations":{"a":"b"}},
         "spec":{
          "authentication":{"credentials":[
             {"pass":"plain-pw"},
             {"pass":{"bcrypt":"$2a$12$abc"}},
             {"pass":{"sha512":"$6$salt$hash"}},
             {"pass":{"plain":"tagged-plain"}},
             {"user":{"username":"u","password":"pw","unique":true}},
             {"user":{"username":"v","password":{"bcrypt":"$2a$04$x"}}},
             {"psk":{"key":"a2V5","validity":{"notBefore":"2023-01-01T00:00:00Z"}}}]},
          "gatewaySelector":{"matchNames":["gw1"]},
          "alias":["alt-id-1","CN=sensor1,O=Org"],
          "mqtt":{"dialect":{"type":"drogue/v1"}},
          "commands":{"commands":[{"external":{"type":"ttnv3","url":"https://x","method":"POST",
              "headers":{"Authorization":"Bearer t"}}}]},
          "future":{"anything":[1,2,3]}
         },
         "status":{"conditions":[]}})
    }

    #[test]
    fn drogue_device_json_round_trips_exactly() {
        let v = full_example();
        let d: Device = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(d.credentials().len(), 7);
        assert!(d.is_proxied_by("gw1"));
        assert!(!d.is_proxied_by("gw2"));
        assert!(d.is_known_as("alt-id-1"));
        assert!(d.is_known_as("u"), "unique username is an alias");
        assert!(!d.is_known_as("v"), "non-unique username is not");
        assert_eq!(d.external_endpoint().unwrap().kind.as_deref(), Some("ttnv3"));
        assert!(d.spec.other.contains_key("mqtt") && d.spec.other.contains_key("future"));
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
    }

    #[test]
    fn legacy_credentials_spelling_is_read_and_kept() {
        let v = json!({"metadata":{"application":"a","name":"d"},
            "spec":{"credentials":{"credentials":[{"pass":"foo"}]}}});
        let d: Device = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(d.credentials(), &[Credential::Pass(PasswordSpec::Plain("foo".into()))]);
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
    }

    #[test]
    fn providers_list_counts_as_proxying() {
        let d: Device = serde_json::from_value(json!({"metadata":{"application":"a","name":"d"},
            "spec":{"providers":["gateway1","gateway2"]}}))
        .unwrap();
        assert!(d.is_proxied_by("gateway2"));
    }

    #[test]
    fn last_external_endpoint_wins() {
        let d: Device = serde_json::from_value(json!({"metadata":{"application":"a","name":"gw"},
            "spec":{"commands":{"commands":[{"external":{"url":"http://first"}},
                                             {"external":{"url":"http://last"}}]}}}))
        .unwrap();
        assert_eq!(d.external_endpoint().unwrap().url, "http://last");
    }

    #[test]
    fn unknown_metadata_field_is_rejected_with_its_name() {
        let err = serde_json::from_value::<Device>(json!({"metadata":{"application":"a",
            "name":"d","colour":"red"}}))
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn application_round_trips() {
        let v = json!({"metadata":{"name":"my-app","uid":"u","resourceVersion":"r"},
            "spec":{"trustAnchors":{"anchors":[]}}});
        let a: Application = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&a).unwrap(), v);
    }

    fn password() -> impl Strategy<Value = PasswordSpec> {
        prop_oneof![
            "\\PC{0,12}".prop_map(PasswordSpec::Plain),
            "\\PC{0,12}".prop_map(|p| PasswordSpec::Tagged(TaggedPassword::Plain(p))),
            "\\$2b\\$04\\$[a-zA-Z0-9./]{10}"
                .prop_map(|p| PasswordSpec::Tagged(TaggedPassword::Bcrypt(p))),
            "\\$6\\$[a-z]{4}\\$[a-zA-Z0-9./]{10}"
                .prop_map(|p| PasswordSpec::Tagged(TaggedPassword::Sha512(p))),
        ]
    }

    fn credential() -> impl Strategy<Value = Credential> {
        prop_oneof![
            password().prop_map(Credential::Pass),
            ("[a-z]{1,8}", password(), proptest::option::of(any::<bool>())).prop_map(
                |(username, password, unique)| Credential::User(UserCredential {
                    username,
                    password,
                    unique
                })
            ),
        ]
    }

    fn device() -> impl Strategy<Value = Device> {
        (
            "[a-z]{1,8}",
            "[a-z0-9]{1,8}",
            proptest::collection::btree_map("[a-z]{1,5}", "[a-z]{0,5}", 0..3),
            proptest::option::of(proptest::collection::vec(credential(), 0..4)),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec("[a-z0-9]{1,6}", 0..3)),
            proptest::option::of(proptest::collection::vec("[a-z0-9]{1,6}", 0..3)),
            proptest::option::of("[a-z]{1,6}"),
        )
            .prop_map(|(app, name, labels, creds, legacy, gws, alias, extra)| {
                let mut spec = DeviceSpec::default();
                let creds = creds.map(|c| CredentialsSpec { credentials: c, other: Map::new() });
                if legacy {
                    spec.legacy_credentials = creds;
                } else {
                    spec.authentication = creds;
                }
                spec.gateway_selector =
                    gws.map(|g| GatewaySelector { match_names: g, other: Map::new() });
                spec.alias = alias;
                if let Some(x) = extra {
                    spec.other.insert(x, json!({"kept": true}));
                }
                Device {
                    metadata: Metadata {
                        application: Some(app),
                        name,
                        labels,
                        ..Default::default()
                    },
                    spec,
                    status: Map::new(),
                }
            })
    }

    proptest! {
        #[test]
        fn device_model_round_trips(d in device()) {
            let json = serde_json::to_string(&d).unwrap();
            let back: Device = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, d);
        }

        #[test]
        fn arbitrary_json_never_panics(s in "\\PC{0,64}") {
            if let Ok(d) = serde_json::from_str::<Device>(&s) {
                // whatever parsed serializes and parses to the same value
                let again: Device = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
                prop_assert_eq!(again, d);
            }
        }
    }
}
