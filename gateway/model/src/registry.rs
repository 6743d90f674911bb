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
    /// The providers RFC's list of gateways a device may connect through. Read only under
    /// [`ProxyRules::providers_rfc`]: Drogue Cloud does not implement it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    /// The providers RFC's label selector, `{"group": "my-gateways"}`: every gateway device
    /// carrying all these labels may act for the device. Read only under
    /// [`ProxyRules::providers_rfc`]; kept verbatim (a value that is not a string matches
    /// nothing, and so does an empty selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_selector: Option<Map<String, Value>>,
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

/// Which parts of a device's spec let a gateway act for it (publish `as=` it, receive its
/// commands). One rule, shared by the gateway's registry sync and the dev cloud's `as=`
/// authorization and command routing, so the gateway never accepts what its cloud refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRules {
    /// `spec.gatewaySelector.matchNames` always counts (all Drogue Cloud implements). With
    /// this set, the providers RFC's `spec.providers` (gateway names) and
    /// `spec.providerSelector` (labels of the gateway's own device) count too: only for a
    /// cloud that implements the RFC. Off by default, as in Drogue Cloud.
    #[serde(default)]
    pub providers_rfc: bool,
}

impl ProxyRules {
    /// Drogue Cloud's rule: `gatewaySelector.matchNames` only.
    pub const DROGUE: Self = Self { providers_rfc: false };
    /// Drogue's rule plus the providers RFC's `providers` and `providerSelector`.
    pub const PROVIDERS_RFC: Self = Self { providers_rfc: true };
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

    /// Whether the gateway device `gateway` (its canonical name and labels) may act for this
    /// device under `rules`. A device being deleted is proxied by nobody; neither is a device
    /// by itself.
    pub fn is_proxied_by(&self, gateway: &Metadata, rules: ProxyRules) -> bool {
        if self.is_being_deleted() || gateway.name == self.metadata.name {
            return false;
        }
        self.named_gateways(rules).any(|n| n == gateway.name)
            || (rules.providers_rfc && self.selects_provider(&gateway.labels))
    }

    /// The gateways this device names under `rules`: `spec.gatewaySelector.matchNames` in
    /// order, then (RFC) `spec.providers`; a name may repeat. Gateways chosen by
    /// `spec.providerSelector` are not named: match them with [`Device::selects_provider`].
    pub fn named_gateways(&self, rules: ProxyRules) -> impl Iterator<Item = &str> {
        let selector = self
            .spec
            .gateway_selector
            .as_ref()
            .map(|s| s.match_names.as_slice())
            .unwrap_or_default();
        let providers = match (rules.providers_rfc, &self.spec.providers) {
            (true, Some(p)) => p.as_slice(),
            _ => &[],
        };
        selector.iter().chain(providers).map(String::as_str)
    }

    /// Whether a gateway device with these labels matches `spec.providerSelector`: the
    /// selector is not empty and every entry is a string label the gateway carries.
    pub fn selects_provider(&self, labels: &BTreeMap<String, String>) -> bool {
        self.spec.provider_selector.as_ref().is_some_and(|selector| {
            !selector.is_empty()
                && selector
                    .iter()
                    .all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).is_some_and(|l| l == v)))
        })
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
        assert!(d.named_gateways(ProxyRules::DROGUE).eq(["gw1"]));
        // the example is being deleted (deletionTimestamp): nobody acts for it any more
        assert!(!d.is_proxied_by(&gateway("gw1", &[]), ProxyRules::DROGUE));
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

    fn gateway(name: &str, labels: &[(&str, &str)]) -> Metadata {
        Metadata {
            application: Some("a".into()),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            ..Default::default()
        }
    }

    fn spec(spec: Value) -> Device {
        serde_json::from_value(json!({"metadata":{"application":"a","name":"d"},"spec":spec}))
            .unwrap()
    }

    #[test]
    fn providers_count_only_under_the_rfc_rules() {
        let d = spec(json!({"providers":["gateway1","gateway2"]}));
        let gw2 = gateway("gateway2", &[]);
        assert!(!d.is_proxied_by(&gw2, ProxyRules::DROGUE), "Drogue ignores spec.providers");
        assert!(d.is_proxied_by(&gw2, ProxyRules::PROVIDERS_RFC));
        assert!(!d.is_proxied_by(&gateway("gateway3", &[]), ProxyRules::PROVIDERS_RFC));
        assert_eq!(d.named_gateways(ProxyRules::DROGUE).count(), 0);
        assert_eq!(
            d.named_gateways(ProxyRules::PROVIDERS_RFC).collect::<Vec<_>>(),
            ["gateway1", "gateway2"]
        );
    }

    #[test]
    fn provider_selector_matches_every_label_under_the_rfc_rules() {
        let d = spec(json!({"providerSelector":{"group":"my-gateways","site":"b"}}));
        let both = gateway("gw", &[("group", "my-gateways"), ("site", "b"), ("x", "y")]);
        let one = gateway("gw", &[("group", "my-gateways")]);
        assert!(d.is_proxied_by(&both, ProxyRules::PROVIDERS_RFC));
        assert!(!d.is_proxied_by(&both, ProxyRules::DROGUE));
        assert!(!d.is_proxied_by(&one, ProxyRules::PROVIDERS_RFC), "all labels must match");
        for odd in [json!({}), json!({"group": 1}), json!({"group": null})] {
            let d = spec(json!({ "providerSelector": odd }));
            assert!(!d.is_proxied_by(&both, ProxyRules::PROVIDERS_RFC), "{odd}");
        }
        // kept verbatim through a round trip
        let v = json!({"metadata":{"application":"a","name":"d"},
            "spec":{"providerSelector":{"group": 1, "k": "v"}}});
        let d: Device = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
    }

    #[test]
    fn nobody_proxies_a_device_being_deleted_or_itself() {
        let mut d = spec(json!({"gatewaySelector":{"matchNames":["gw","d"]}}));
        assert!(!d.is_proxied_by(&gateway("d", &[]), ProxyRules::DROGUE));
        assert!(d.is_proxied_by(&gateway("gw", &[]), ProxyRules::DROGUE));
        d.metadata.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
        assert!(!d.is_proxied_by(&gateway("gw", &[]), ProxyRules::DROGUE));
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
