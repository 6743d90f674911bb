//! Who a sensor says it is, and the credential it presents.
//!
//! Drogue Cloud accepts several username forms (contracts/drogue-cloud.md §1 and §2); the
//! gateway accepts the same ones southbound so Drogue sensors work unchanged:
//!
//! | where | query / client id             | user part         | result                                  |
//! |-------|-------------------------------|-------------------|-----------------------------------------|
//! | HTTP  | none                          | `device@app`      | password for `device` (percent-decoded) |
//! | HTTP  | `application=A`               | `user`            | password for device `user` in A         |
//! | HTTP  | `application=A&device=D`      | `user`            | username + password for D in A          |
//! | HTTP  | `device=D`                    | `user@app`        | username + password for D in app        |
//! | MQTT  | any client id                 | `device@app`      | password for `device`                   |
//! | MQTT  | client id `device@app`        | `user`            | username + password for `device`        |
//!
//! Where the application is left out (`sensor1` instead of `sensor1@my-app`), the gateway's own
//! application is used when the caller passes one; Drogue itself would refuse such a login.

use std::{fmt, str::FromStr};

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use percent_encoding::percent_decode_str;

use crate::{AppId, DeviceId, ModelError};

/// Base64 that accepts values with or without `=` padding, as Drogue does.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A device in an application: written `device@app`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    app: AppId,
    device: DeviceId,
}

impl Identity {
    pub fn new(app: AppId, device: DeviceId) -> Self {
        Self { app, device }
    }

    pub fn app(&self) -> &AppId {
        &self.app
    }

    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Parses `device@app`, or a bare `device` when `default_app` is given. The device part
    /// is percent-decoded and the split is at the first `@`, as Drogue does; when what follows
    /// the first `@` holds another one (`test@example.com@my-app`: no application name holds
    /// an `@`), the split is at the last, so an e-mail address is a device or account name.
    /// A bare e-mail address keeps Drogue's meaning (`test` of application `example.com`):
    /// write it with its application, or with the `@` percent-encoded (`test%40example.com`).
    pub fn parse(value: &str, default_app: Option<&AppId>) -> Result<Self, ModelError> {
        match split_identity(value) {
            Some((device, app)) => {
                Ok(Self { app: AppId::new(app)?, device: decode_device(device)? })
            }
            None => match default_app {
                Some(app) => Ok(Self { app: app.clone(), device: decode_device(value)? }),
                None => Err(ModelError::NoApp { value: value.to_owned() }),
            },
        }
    }
}

/// `name@app` split as [`Identity::parse`] does: at the first `@`, or at the last when the
/// rest holds another.
pub fn split_identity(value: &str) -> Option<(&str, &str)> {
    match value.split_once('@') {
        Some((_, rest)) if rest.contains('@') => value.rsplit_once('@'),
        split => split,
    }
}

fn decode_device(raw: &str) -> Result<DeviceId, ModelError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ModelError::BadPercent { value: raw.to_owned() })?;
    DeviceId::new(decoded.into_owned())
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.device, self.app)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

impl FromStr for Identity {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, None)
    }
}

/// A secret (password, token) that never shows up in logs or debug output. It serializes as
/// the plain string, for config files that hold it inline.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the few places that must compare or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The user and password of an HTTP `Authorization: Basic ...` header (also CoAP option 4209).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user: String,
    pub password: Secret,
}

impl BasicCredentials {
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self { user: user.into(), password: password.into() }
    }

    /// Parses a header value `Basic <base64(user:password)>`. The scheme is matched without
    /// regard to case and the base64 may come with or without `=` padding.
    pub fn parse_header(value: &str) -> Result<Self, ModelError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').ok_or(ModelError::NotBasic)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(ModelError::NotBasic);
        }
        let bytes =
            LENIENT_B64.decode(rest.trim()).map_err(|e| ModelError::BadBase64(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| ModelError::NotUtf8)?;
        let (user, password) = text.split_once(':').ok_or(ModelError::NoColon)?;
        Ok(Self::new(user, password))
    }

    /// The header value `Basic <base64>`, padded.
    pub fn to_header(&self) -> String {
        format!("Basic {}", LENIENT_B64.encode(format!("{}:{}", self.user, self.password.0)))
    }
}

/// The query parameters of Drogue's HTTP endpoint, `POST /v1/{channel}?...` (also the one
/// Uri-Query string Drogue's CoAP endpoint parses). Unknown keys are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// The application, for the Basic user forms without `@app`.
    pub application: Option<String>,
    /// The device, for the username + password forms.
    pub device: Option<String>,
    /// Becomes the CloudEvent `dataschema`.
    pub data_schema: Option<String>,
    /// The device a gateway publishes for.
    #[serde(rename = "as")]
    pub as_device: Option<String>,
    /// Seconds to wait for a command after the publish (`ct` or `commandTimeout`).
    #[serde(alias = "commandTimeout")]
    pub ct: Option<u64>,
}

/// The credential a sensor presents, before it is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresentedCredential {
    /// A password for the device named in the request (by name, alias or unique username).
    Password(Secret),
    /// A username credential (`spec.authentication.credentials[].user`).
    UsernamePassword { username: String, password: Secret },
    /// A TLS client certificate the endpoint has verified against its client CA. Drogue names
    /// the device by the subject DN string (`CN=sensor1, O=Acme`); the gateway also accepts
    /// the subject's common name alone. No secret: the TLS handshake proved the key.
    ClientCertificate { subject: String, common_name: Option<String> },
}

/// A login attempt: the device it claims to be and what it presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequest {
    pub app: AppId,
    pub device: DeviceId,
    pub credential: PresentedCredential,
}

impl AuthRequest {
    /// The HTTP (and CoAP) forms: Basic credentials plus the optional `application` and
    /// `device` query parameters; the four rows of Drogue's HTTP endpoint.
    pub fn from_http(
        basic: BasicCredentials,
        query_app: Option<&str>,
        query_device: Option<&str>,
        default_app: Option<&AppId>,
    ) -> Result<Self, ModelError> {
        let BasicCredentials { user, password } = basic;
        match (query_app, query_device) {
            (None, None) => {
                let id = Identity::parse(&user, default_app)?;
                Ok(Self::password(id, password))
            }
            (Some(app), None) => Ok(Self {
                app: AppId::new(app)?,
                device: DeviceId::new(user)?,
                credential: PresentedCredential::Password(password),
            }),
            (Some(app), Some(device)) => Ok(Self {
                app: AppId::new(app)?,
                device: DeviceId::new(device)?,
                credential: PresentedCredential::UsernamePassword { username: user, password },
            }),
            (None, Some(device)) => {
                let (username, app) = match split_identity(&user) {
                    Some((u, a)) => (u.to_owned(), AppId::new(a)?),
                    None => match default_app {
                        Some(app) => (user.clone(), app.clone()),
                        None => return Err(ModelError::NoApp { value: user }),
                    },
                };
                Ok(Self {
                    app,
                    device: DeviceId::new(device)?,
                    credential: PresentedCredential::UsernamePassword { username, password },
                })
            }
        }
    }

    /// The MQTT CONNECT forms: `device@app` as username, or a plain username with the client
    /// id `device@app`.
    pub fn from_mqtt(
        username: &str,
        password: Secret,
        client_id: &str,
        default_app: Option<&AppId>,
    ) -> Result<Self, ModelError> {
        if username.contains('@') {
            return Ok(Self::password(Identity::parse(username, None)?, password));
        }
        if client_id.contains('@') {
            let id = Identity::parse(client_id, None)?;
            return Ok(Self {
                app: id.app,
                device: id.device,
                credential: PresentedCredential::UsernamePassword {
                    username: username.to_owned(),
                    password,
                },
            });
        }
        Ok(Self::password(Identity::parse(username, default_app)?, password))
    }

    /// A login by verified client certificate (MQTT over TLS without username and password).
    /// The device is the subject DN string when it is a valid device name, else the common
    /// name; the application is `app` (the one the client CA stands for).
    pub fn from_certificate(
        subject: &str,
        common_name: Option<&str>,
        app: &AppId,
    ) -> Result<Self, ModelError> {
        let device = match (DeviceId::new(subject), common_name) {
            (Ok(d), _) => d,
            (Err(_), Some(cn)) => DeviceId::new(cn)?,
            (Err(e), None) => return Err(e),
        };
        Ok(Self {
            app: app.clone(),
            device,
            credential: PresentedCredential::ClientCertificate {
                subject: subject.to_owned(),
                common_name: common_name.map(str::to_owned),
            },
        })
    }

    fn password(id: Identity, password: Secret) -> Self {
        Self { app: id.app, device: id.device, credential: PresentedCredential::Password(password) }
    }

    /// The identity this request claims.
    pub fn identity(&self) -> Identity {
        Identity::new(self.app.clone(), self.device.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use proptest::prelude::*;

    fn app(s: &str) -> AppId {
        AppId::new(s).unwrap()
    }

    #[test]
    fn parses_device_at_app_splitting_at_first_at() {
        let id: Identity = "sensor1@my-app".parse().unwrap();
        assert_eq!(id.device(), "sensor1");
        assert_eq!(id.app(), "my-app");
        assert_eq!(id.to_string(), "sensor1@my-app");
        // the device part is percent-decoded
        let id: Identity = "sensor%201@my-app".parse().unwrap();
        assert_eq!(id.device(), "sensor 1");
        // an '@' in what follows the first: the last one separates the application
        let id: Identity = "test@example.com@my-app".parse().unwrap();
        assert_eq!((id.device().as_str(), id.app().as_str()), ("test@example.com", "my-app"));
        assert_eq!(id.to_string().parse::<Identity>().unwrap(), id, "round trip");
        let id = Identity::parse("test%40example.com", Some(&app("my-app"))).unwrap();
        assert_eq!((id.device().as_str(), id.app().as_str()), ("test@example.com", "my-app"));
        // a bare e-mail keeps Drogue's meaning: device "test" of application "example.com"
        let id = Identity::parse("test@example.com", Some(&app("my-app"))).unwrap();
        assert_eq!((id.device().as_str(), id.app().as_str()), ("test", "example.com"));
        assert!("a@b@c@".parse::<Identity>().is_err(), "an empty application");
    }

    #[test]
    fn bare_device_needs_default_app() {
        assert!(matches!("sensor1".parse::<Identity>(), Err(ModelError::NoApp { .. })));
        let id = Identity::parse("sensor1", Some(&app("gw-app"))).unwrap();
        assert_eq!(id.to_string(), "sensor1@gw-app");
    }

    #[test]
    fn basic_accepts_unpadded_and_any_case_scheme() {
        let raw = "sensor1@my-app:pw"; // 17 bytes: padding differs
        let padded = format!("Basic {}", STANDARD.encode(raw));
        let unpadded = format!("basic {}", STANDARD_NO_PAD.encode(raw));
        assert!(padded.ends_with('='));
        for header in [padded, unpadded] {
            let b = BasicCredentials::parse_header(&header).unwrap();
            assert_eq!(b.user, "sensor1@my-app");
            assert_eq!(b.password.expose(), "pw");
        }
    }

    #[test]
    fn basic_rejects_bad_values_clearly() {
        assert_eq!(BasicCredentials::parse_header("Bearer abc"), Err(ModelError::NotBasic));
        assert!(matches!(
            BasicCredentials::parse_header("Basic ***"),
            Err(ModelError::BadBase64(_))
        ));
        let no_colon = format!("Basic {}", STANDARD.encode("nocolon"));
        assert_eq!(BasicCredentials::parse_header(&no_colon), Err(ModelError::NoColon));
        // password may contain ':'
        let b =
            BasicCredentials::parse_header(&format!("Basic {}", STANDARD.encode("u:p:q"))).unwrap();
        assert_eq!(b.password.expose(), "p:q");
    }

    #[test]
    fn http_rows_match_drogue() {
        let b = |u: &str| BasicCredentials::new(u, "pw");
        let r = AuthRequest::from_http(b("sensor1@my-app"), None, None, None).unwrap();
        assert_eq!((r.app.as_str(), r.device.as_str()), ("my-app", "sensor1"));
        assert_eq!(r.credential, PresentedCredential::Password("pw".into()));

        let r = AuthRequest::from_http(b("alias1"), Some("my-app"), None, None).unwrap();
        assert_eq!((r.app.as_str(), r.device.as_str()), ("my-app", "alias1"));
        assert!(matches!(r.credential, PresentedCredential::Password(_)));

        let r = AuthRequest::from_http(b("user1"), Some("my-app"), Some("sensor1"), None).unwrap();
        assert_eq!(r.device, "sensor1");
        assert!(
            matches!(r.credential, PresentedCredential::UsernamePassword { ref username, .. } if username == "user1")
        );

        let r = AuthRequest::from_http(b("user1@my-app"), None, Some("sensor1"), None).unwrap();
        assert_eq!((r.app.as_str(), r.device.as_str()), ("my-app", "sensor1"));
        assert!(
            matches!(r.credential, PresentedCredential::UsernamePassword { ref username, .. } if username == "user1")
        );

        assert!(AuthRequest::from_http(b("sensor1"), None, None, None).is_err());
        let r = AuthRequest::from_http(b("sensor1"), None, None, Some(&app("gw"))).unwrap();
        assert_eq!(r.identity().to_string(), "sensor1@gw");
    }

    #[test]
    fn mqtt_forms_match_drogue() {
        let r = AuthRequest::from_mqtt("sensor1@my-app", "pw".into(), "whatever", None).unwrap();
        assert_eq!(r.identity().to_string(), "sensor1@my-app");
        assert!(matches!(r.credential, PresentedCredential::Password(_)));

        let r = AuthRequest::from_mqtt("user1", "pw".into(), "sensor1@my-app", None).unwrap();
        assert_eq!(r.identity().to_string(), "sensor1@my-app");
        assert!(
            matches!(r.credential, PresentedCredential::UsernamePassword { ref username, .. } if username == "user1")
        );

        assert!(AuthRequest::from_mqtt("sensor1", "pw".into(), "cid", None).is_err());
        let r = AuthRequest::from_mqtt("sensor1", "pw".into(), "cid", Some(&app("gw"))).unwrap();
        assert_eq!(r.identity().to_string(), "sensor1@gw");
    }

    #[test]
    fn certificate_names_the_device_by_subject_or_common_name() {
        let r = AuthRequest::from_certificate("CN=s1, O=Acme", Some("s1"), &app("gw")).unwrap();
        assert_eq!(r.identity().to_string(), "CN=s1, O=Acme@gw");
        assert!(matches!(
            r.credential,
            PresentedCredential::ClientCertificate { ref common_name, .. } if common_name.as_deref() == Some("s1")
        ));
        // a subject that is no valid device name falls back to the common name
        let r = AuthRequest::from_certificate("CN=a/b", Some("s2"), &app("gw")).unwrap();
        assert_eq!(r.device, "s2");
        assert!(AuthRequest::from_certificate("CN=a/b", None, &app("gw")).is_err());
    }

    #[test]
    fn secret_is_redacted_in_debug() {
        let b = BasicCredentials::new("u", "hunter2");
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn identity_round_trips(
            device in "[a-zA-Z0-9_.:=,-]{1,40}",
            app in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        ) {
            let text = format!("{device}@{app}");
            let id: Identity = text.parse().unwrap();
            prop_assert_eq!(id.to_string(), text.clone());
            prop_assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
        }

        #[test]
        fn basic_round_trips_padded_or_not(user in "[^:\\p{Cc}]{0,40}", pw in "\\PC{0,40}") {
            let raw = format!("{user}:{pw}");
            for header in [
                BasicCredentials::new(user.clone(), pw.clone()).to_header(),
                format!("Basic {}", STANDARD_NO_PAD.encode(&raw)),
            ] {
                let b = BasicCredentials::parse_header(&header).unwrap();
                prop_assert_eq!(&b.user, &user);
                prop_assert_eq!(b.password.expose(), pw.as_str());
            }
        }

        #[test]
        fn garbage_headers_are_errors_not_panics(h in "\\PC{0,80}") {
            if let Ok(b) = BasicCredentials::parse_header(&h) {
                // whatever parsed re-encodes to a header that parses the same
                let again = BasicCredentials::parse_header(&b.to_header()).unwrap();
                prop_assert_eq!(again, b);
            }
        }
    }
}
