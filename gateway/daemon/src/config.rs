//! The daemon's configuration: one TOML file, one section per component.
//!
//! Each section is owned by the crate that uses it; this module composes them, resolves
//! secrets from `*_file` keys, and turns every problem into an error that names the key and,
//! where the file has it, the line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use gw_model::{AppId, DeviceId, Secret};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The documented default configuration printed by `gatewayd print-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: {key}: cannot read secret file {file}: {source}")]
    SecretFile { path: String, line: usize, key: String, file: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {key}: secret file {file} is empty")]
    EmptySecret { path: String, line: usize, key: String, file: PathBuf },
    #[error("{path}: {key}: {message}")]
    Invalid { path: String, key: String, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    /// Where messages go; without it the gateway buffers in the outbox until one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<gw_cloud_sync::CloudConfig>,
    /// Where the devices this gateway may act for come from; without it, only `[[devices]]`
    /// and local accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<gw_cloud_sync::RegistryConfig>,
    /// How sensors are authenticated (hash parameters, legacy login, brute-force limits).
    #[serde(default)]
    pub auth: gw_auth::AuthConfig,
    /// The southbound MQTT endpoint; without the section there is no MQTT listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<gw_driver_mqtt::MqttConfig>,
    /// The board (watchdog, LEDs, button, readings); without the section none of it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<gw_board::BoardConfig>,
    /// The southbound CoAP endpoint; without the section there is no CoAP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coap: Option<gw_driver_coap::CoapConfig>,
    /// Legacy broker bridges: site brokers whose topics map to devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge: Vec<gw_driver_mqtt::BridgeConfig>,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub store: gw_store::StoreConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The command router: how long commands wait for their sensors, the queue's bounds.
    #[serde(default)]
    pub commands: crate::commands::CommandsConfig,
    /// Updates (signed bundles into the inactive slot, mark-good once healthy); needs `[board]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::update::UpdateConfig>,
    /// Static devices, as if synced from a registry (development and tests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<StaticDevice>,
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The gateway's canonical device name in the cloud registry. Without it, the board's serial
    /// number names the gateway (`gw-<serial>`; needs `[board]`).
    #[serde(default = "unnamed")]
    pub name: DeviceId,
    /// The application (tenant) the gateway and its sensors belong to.
    pub application: AppId,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long components get to stop after SIGTERM/SIGINT before they are named and left.
    #[serde(default = "default_shutdown_grace", with = "gw_model::serde_util::duration")]
    pub shutdown_grace: Duration,
}

/// Stands for a missing `[gateway] name` until the board's serial replaces it.
const UNNAMED: &str = "unnamed-gateway";

fn unnamed() -> DeviceId {
    DeviceId::new(UNNAMED).unwrap_or_else(|_| unreachable!("a valid device name"))
}

/// The gateway name a board serial number gives: `gw-` and the serial, lower case, with
/// anything but letters, digits and '-' dropped.
pub fn name_from_serial(serial: &str) -> Option<DeviceId> {
    let cleaned: String = serial
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        return None;
    }
    DeviceId::new(format!("gw-{cleaned}")).ok()
}

/// `[gateway] data_dir` when a config names none.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/gatewayd")
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(4)
}

/// `[web]`: the web listener (health, readiness, status, southbound HTTP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    #[serde(default = "default_web_listen")]
    pub listen: SocketAddr,
    /// Largest body `POST /v1/{channel}` accepts; larger ones get 413.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: gw_store::ByteSize,
    /// HTTPS: the server certificate chain (PEM); with `key_file` the listener serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// HTTPS: the server's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The command push endpoint's Bearer secret, inline (development only) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_token: Option<Secret>,
    /// ... or the file holding it. Without either, the push endpoint is not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_token_file: Option<Spanned<PathBuf>>,
    /// The push endpoint also requires a client certificate issued by this CA (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_client_ca_file: Option<PathBuf>,
    /// Largest push request body; larger ones get 413.
    #[serde(default = "default_push_max_bytes")]
    pub push_max_bytes: gw_store::ByteSize,
    /// How long the same push body without an id or timestamp counts as a replay.
    #[serde(default = "default_push_replay_window", with = "gw_model::serde_util::duration")]
    pub push_replay_window: Duration,
    /// The application whose local accounts may log in to the status page.
    #[serde(default = "default_technician_app")]
    pub technician_app: AppId,
    /// The first technician account's password (`admin`), e.g. from provisioning; without
    /// it, a random one is printed once at the first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_file: Option<Spanned<PathBuf>>,
    /// The read-only API token, inline (development only) ...: `Authorization: Bearer <token>`
    /// reads `/api/v1/status` and `/metrics` without a technician session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<Secret>,
    /// ... or the file holding it. Without either, only a technician session reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<Spanned<PathBuf>>,
    /// Connections open at once; a full listener closes the oldest connection of the address
    /// holding the most.
    #[serde(default = "default_web_max_connections")]
    pub max_connections: usize,
    /// Connections of one source address (IPv6: one /64); its oldest is closed for a newer one.
    #[serde(default = "default_web_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Time for a request's head to arrive, from the connection's start or the previous answer:
    /// an idle keep-alive connection is closed after it too.
    #[serde(default = "default_web_header_timeout", with = "gw_model::serde_util::duration")]
    pub header_timeout: Duration,
    /// Time for a request's whole body to arrive (the update upload has `upload_timeout`).
    #[serde(default = "default_web_body_timeout", with = "gw_model::serde_util::duration")]
    pub body_timeout: Duration,
    /// Time for an update bundle uploaded on the status page to arrive.
    #[serde(default = "default_web_upload_timeout", with = "gw_model::serde_util::duration")]
    pub upload_timeout: Duration,
    /// Time a client may leave an answer unread before its connection is closed.
    #[serde(default = "default_web_send_timeout", with = "gw_model::serde_util::duration")]
    pub send_timeout: Duration,
}

fn default_web_max_connections() -> usize {
    256
}

fn default_web_max_connections_per_address() -> usize {
    32
}

fn default_web_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_web_body_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_web_upload_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_web_send_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            max_message_bytes: default_max_message_bytes(),
            cert_file: None,
            key_file: None,
            push_token: None,
            push_token_file: None,
            push_client_ca_file: None,
            push_max_bytes: default_push_max_bytes(),
            push_replay_window: default_push_replay_window(),
            technician_app: default_technician_app(),
            admin_password_file: None,
            api_token: None,
            api_token_file: None,
            max_connections: default_web_max_connections(),
            max_connections_per_address: default_web_max_connections_per_address(),
            header_timeout: default_web_header_timeout(),
            body_timeout: default_web_body_timeout(),
            upload_timeout: default_web_upload_timeout(),
            send_timeout: default_web_send_timeout(),
        }
    }
}

fn default_max_message_bytes() -> gw_store::ByteSize {
    gw_store::ByteSize::new(256 * 1024)
}

fn default_push_max_bytes() -> gw_store::ByteSize {
    gw_store::ByteSize::new(256 * 1024)
}

fn default_push_replay_window() -> Duration {
    Duration::from_secs(60)
}

fn default_technician_app() -> AppId {
    AppId::new("technicians").unwrap_or_else(|_| unreachable!("a valid application name"))
}

fn default_web_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// `[log]`: how the daemon logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter directive: `info`, `debug`, `gatewayd=debug,info`. `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[[devices]]`: a device configured on the gateway itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDevice {
    pub name: DeviceId,
    /// Defaults to `gateway.application`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<AppId>,
    /// Plain password (development only); hashed in memory at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
}

/// A device with its secret resolved.
#[derive(Debug, Clone)]
pub struct ResolvedDevice {
    pub app: AppId,
    pub name: DeviceId,
    pub password: Secret,
}

/// A configuration checked and with its secrets read.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub devices: Vec<ResolvedDevice>,
    /// The gateway's cloud password, when `[cloud]` sets one (`kind = "mqtt"` may go without).
    pub cloud_password: Option<Secret>,
    /// The registry API token, when `[registry]` is set.
    pub registry_token: Option<Secret>,
    /// The command push endpoint's Bearer secret, when `[web]` sets one.
    pub push_token: Option<Secret>,
    /// Each `[[bridge]]`'s password at the site broker, in order (`None`: no password).
    pub bridge_passwords: Vec<Option<Secret>>,
    /// The first technician's password, when `[web] admin_password_file` sets one.
    pub admin_password: Option<Secret>,
    /// The read-only API token, when `[web]` sets one.
    pub api_token: Option<Secret>,
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_str_at(&text, &path.display().to_string())
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn from_str_at(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut config = config;
        config.resolve_name(text, origin)?;
        let devices = config.resolve_devices(text, origin)?;
        config.store.validate().map_err(|e| invalid(origin, "store", &e.to_string()))?;
        config
            .commands
            .validate()
            .map_err(|(key, reason)| invalid(origin, &format!("commands.{key}"), &reason))?;
        if let Some(mqtt) = &config.mqtt {
            mqtt.validate().map_err(|e| invalid(origin, "mqtt", &e.to_string()))?;
        }
        let web = &config.web;
        for (key, value) in [
            ("web.max_connections", web.max_connections),
            ("web.max_connections_per_address", web.max_connections_per_address),
        ] {
            if value == 0 {
                return Err(invalid(origin, key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("web.header_timeout", web.header_timeout),
            ("web.body_timeout", web.body_timeout),
            ("web.upload_timeout", web.upload_timeout),
            ("web.send_timeout", web.send_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(origin, key, "must be longer than 0s"));
            }
        }
        if let Some(coap) = &config.coap {
            coap.validate().map_err(|e| invalid(origin, "coap", &e.to_string()))?;
        }
        let cloud_password = match &config.cloud {
            None => None,
            Some(cloud) => {
                cloud.validate().map_err(|e| ConfigError::Invalid {
                    path: origin.to_owned(),
                    key: "cloud".into(),
                    message: e.to_string(),
                })?;
                match (&cloud.password, &cloud.password_file) {
                    (Some(p), _) => Some(p.clone()),
                    (None, Some(file)) => {
                        Some(read_secret(file, "cloud.password_file", text, origin)?)
                    }
                    (None, None) => None,
                }
            }
        };
        config.auth.validate().map_err(|e| invalid(origin, "auth", &e.to_string()))?;
        config
            .auth
            .validate_roles(&config.gateway.application, &config.web.technician_app)
            .map_err(|e| invalid(origin, "auth", &e.to_string()))?;
        let registry_token = match &config.registry {
            None => None,
            Some(registry) => {
                registry.validate().map_err(|e| invalid(origin, "registry", &e.to_string()))?;
                match (&registry.token, &registry.token_file) {
                    (Some(t), _) => Some(t.clone()),
                    (None, Some(file)) => {
                        Some(read_secret(file, "registry.token_file", text, origin)?)
                    }
                    // a registry that needs no token (then none is sent)
                    (None, None) if registry.user.is_none() => None,
                    (None, None) => {
                        return Err(invalid(origin, "registry.user", "needs token_file or token"));
                    }
                }
            }
        };
        if let Some(update) = &config.update {
            if config.board.is_none() {
                return Err(invalid(origin, "update", "needs [board] (its slots and boot loader)"));
            }
            if update.healthy_after < Duration::from_secs(1) {
                return Err(invalid(origin, "update.healthy_after", "at least 1s"));
            }
        }
        let bridge_passwords = config.resolve_bridges(origin)?;
        let admin_password = match &config.web.admin_password_file {
            Some(file) => Some(read_secret(file, "web.admin_password_file", text, origin)?),
            None => None,
        };
        let push_token = crate::push::resolve(&config.web, text, origin)?;
        let api_token = match (&config.web.api_token, &config.web.api_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    origin,
                    "web.api_token",
                    "set api_token or api_token_file, not both",
                ));
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(file)) => Some(read_secret(file, "web.api_token_file", text, origin)?),
            (None, None) => None,
        };
        if api_token.as_ref().is_some_and(|t| t.expose().trim().len() < 16) {
            return Err(invalid(origin, "web.api_token", "at least 16 characters"));
        }
        Ok(Loaded {
            api_token,
            config,
            devices,
            cloud_password,
            registry_token,
            push_token,
            bridge_passwords,
            admin_password,
        })
    }

    /// Names the gateway after its board's serial number when `[gateway] name` is absent.
    fn resolve_name(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let named = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("gateway")?.as_table()?.get("name").cloned())
            .is_some();
        if named {
            return Ok(());
        }
        let Some(board) = &self.board else {
            return Err(invalid(
                origin,
                "gateway.name",
                "missing (set it, or configure [board] to take the board's serial number)",
            ));
        };
        let board =
            gw_board::Board::select(board).map_err(|e| invalid(origin, "board", &e.to_string()))?;
        let serial = board.serial().ok_or_else(|| {
            invalid(
                origin,
                "gateway.name",
                &format!(
                    "missing, and board {} has no serial number to take it from",
                    board.profile.name
                ),
            )
        })?;
        self.gateway.name = name_from_serial(&serial).ok_or_else(|| {
            invalid(
                origin,
                "gateway.name",
                &format!("missing, and the board's serial {serial:?} makes no device name"),
            )
        })?;
        Ok(())
    }

    /// Checks every `[[bridge]]` (URL, templates) and reads its password file.
    fn resolve_bridges(&self, origin: &str) -> Result<Vec<Option<Secret>>, ConfigError> {
        let mut out = Vec::with_capacity(self.bridge.len());
        for (i, b) in self.bridge.iter().enumerate() {
            let key = format!("bridge[{i}]");
            b.validate().map_err(|e| invalid(origin, &format!("{key}.{}", e.key), &e.reason))?;
            if self.bridge[..i].iter().any(|o| o.name == b.name) {
                return Err(invalid(
                    origin,
                    &format!("{key}.name"),
                    &format!("{:?} is used twice", b.name),
                ));
            }
            let password = match (&b.password, &b.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(file)) => {
                    let content = std::fs::read_to_string(file).map_err(|e| {
                        invalid(
                            origin,
                            &format!("{key}.password_file"),
                            &format!("cannot read secret file {}: {e}", file.display()),
                        )
                    })?;
                    let secret = content.trim_end_matches(['\n', '\r']);
                    if secret.is_empty() {
                        return Err(invalid(
                            origin,
                            &format!("{key}.password_file"),
                            &format!("secret file {} is empty", file.display()),
                        ));
                    }
                    Some(Secret::new(secret))
                }
                (None, None) => None,
            };
            out.push(password);
        }
        Ok(out)
    }

    fn resolve_devices(
        &self,
        text: &str,
        origin: &str,
    ) -> Result<Vec<ResolvedDevice>, ConfigError> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}]");
            let password = match (&d.password, &d.password_file) {
                (Some(p), None) => p.clone(),
                (None, Some(file)) => {
                    read_secret(file, &format!("{key}.password_file"), text, origin)?
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(origin, &key, "set password or password_file, not both"));
                }
                (None, None) => {
                    return Err(invalid(origin, &key, "needs password or password_file"));
                }
            };
            let app = d.application.clone().unwrap_or_else(|| self.gateway.application.clone());
            if app != self.gateway.application {
                // the gateway acts for the devices of its own application only
                return Err(invalid(
                    origin,
                    &format!("{key}.application"),
                    &format!(
                        "{app:?} is not the gateway's application {:?}; a static device belongs to it",
                        self.gateway.application.as_str()
                    ),
                ));
            }
            if out.iter().any(|o: &ResolvedDevice| o.app == app && o.name == d.name) {
                return Err(invalid(
                    origin,
                    &key,
                    &format!("device {}@{app} is listed twice", d.name),
                ));
            }
            out.push(ResolvedDevice { app, name: d.name.clone(), password });
        }
        Ok(out)
    }
}

fn invalid(origin: &str, key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        path: origin.to_owned(),
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

/// Reads a secret file named by a `*_file` key; the error names the key and its line.
pub fn read_secret(
    file: &Spanned<PathBuf>,
    key: &str,
    text: &str,
    origin: &str,
) -> Result<Secret, ConfigError> {
    let line = line_of(text, file.span().start);
    let path = file.get_ref();
    let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        path: origin.to_owned(),
        line,
        key: key.to_owned(),
        file: path.clone(),
        source,
    })?;
    let secret = content.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret {
            path: origin.to_owned(),
            line,
            key: key.to_owned(),
            file: path.clone(),
        });
    }
    Ok(Secret::new(secret))
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|b| **b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default config with every commented-out example key switched on; the example
    /// secret file is swapped for a real one.
    fn uncommented_default() -> String {
        let dir = std::env::temp_dir().join(format!("gatewayd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("cloud.secret");
        std::fs::write(&secret, "pw\n").unwrap();
        let api_token = dir.join("api.token");
        std::fs::write(&api_token, "a-read-only-api-token\n").unwrap();
        DEFAULT_CONFIG
            .replace("/etc/gatewayd/api.token", &api_token.display().to_string())
            .replace("/etc/gatewayd/cloud.secret", &secret.display().to_string())
            .replace("/etc/gatewayd/registry.token", &secret.display().to_string())
            .replace("/etc/gatewayd/admin.password", &secret.display().to_string())
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if looks_like_toml(rest) => rest.to_owned(),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn looks_like_toml(l: &str) -> bool {
        let l = l.trim_start();
        l.starts_with('[')
            || l.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    }

    #[test]
    fn without_a_name_the_board_serial_names_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        gw_board::sim::SimBoard::create(dir.path()).unwrap();
        let text = format!(
            "[gateway]\napplication = \"app\"\n[board]\nprofile = \"sim\"\nroot = {:?}\n",
            dir.path().display().to_string()
        );
        let c = Config::from_str_at(&text, "x.toml").unwrap().config;
        assert_eq!(c.gateway.name.as_str(), "gw-sim-0000000001");
        let e = Config::from_str_at("[gateway]\napplication = \"app\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("gateway.name"), "{e}");
        assert_eq!(name_from_serial("10000000 ABCDEF\0").unwrap().as_str(), "gw-10000000abcdef");
        assert!(name_from_serial("--").is_none());
    }

    #[test]
    fn default_config_parses_and_uses_documented_defaults() {
        let loaded = Config::from_str_at(DEFAULT_CONFIG, "default").unwrap();
        let c = loaded.config;
        assert_eq!(c.gateway.data_dir, default_data_dir());
        assert_eq!(c.web.listen, default_web_listen());
        assert_eq!(c.gateway.shutdown_grace, default_shutdown_grace());
        assert_eq!(c.log.format, LogFormat::Human);
        assert!(loaded.devices.is_empty());
    }

    #[test]
    fn every_documented_example_key_is_a_real_key() {
        let text = uncommented_default();
        let loaded = Config::from_str_at(&text, "examples").unwrap();
        assert!(!loaded.devices.is_empty(), "the examples include a static device");
    }

    #[test]
    fn a_registry_token_is_optional_but_a_user_needs_one() {
        let base = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n\n[registry]\nurl = \"https://api.example.com\"\n";
        let loaded = Config::from_str_at(base, "x.toml").unwrap();
        assert!(loaded.registry_token.is_none());
        let err = Config::from_str_at(&format!("{base}user = \"op\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.user") && err.contains("token"), "{err}");
    }

    #[test]
    fn every_key_of_the_config_is_documented() {
        let text = uncommented_default();
        let config = Config::from_str_at(&text, "examples").unwrap().config;
        let value = toml::Value::try_from(&config).unwrap();
        let mut missing = Vec::new();
        collect_keys(&value, &mut |key| {
            let documented = DEFAULT_CONFIG.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            });
            if !documented {
                missing.push(key.to_owned());
            }
        });
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    }

    fn collect_keys(v: &toml::Value, f: &mut dyn FnMut(&str)) {
        let toml::Value::Table(t) = v else { return };
        for (k, v) in t {
            match v {
                toml::Value::Table(_) => collect_keys(v, f),
                toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => {
                    a.iter().for_each(|x| collect_keys(x, f))
                }
                _ => f(k),
            }
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[gateway]\nname = \"gw1\"\napplication = \"app\"\ncolour = \"red\"\n";
        let err = Config::from_str_at(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_duration_is_named_with_its_line() {
        let text = "[gateway]\nname = \"gw1\"\napplication = \"app\"\nshutdown_grace = \"soon\"\n";
        let err = Config::from_str_at(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("shutdown_grace") && err.contains("invalid duration"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn missing_secret_file_names_key_and_line() {
        let text = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n\n[[devices]]\nname = \"s1\"\npassword_file = \"/nonexistent/s1.secret\"\n";
        let err = Config::from_str_at(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:7: devices[0].password_file"), "{err}");
        assert!(err.contains("/nonexistent/s1.secret"), "{err}");
    }

    #[test]
    fn secret_file_is_read_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let text = format!(
            "[gateway]\nname = \"gw1\"\napplication = \"app\"\n[[devices]]\nname = \"s1\"\npassword_file = {:?}\n",
            f.display().to_string()
        );
        let loaded = Config::from_str_at(&text, "x").unwrap();
        assert_eq!(loaded.devices[0].password.expose(), "s3cret");
        assert_eq!(loaded.devices[0].app, "app");
    }

    #[test]
    fn device_without_any_password_is_refused() {
        let text = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n[[devices]]\nname = \"s1\"\n";
        let err = Config::from_str_at(text, "x").unwrap_err().to_string();
        assert!(err.contains("devices[0]") && err.contains("password"), "{err}");
    }

    #[test]
    fn bridge_templates_are_checked_at_load_naming_the_key() {
        let base = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n[[bridge]]\nname = \"site\"\nurl = \"mqtt://10.0.0.1\"\nclient_id = \"gw1\"\n[[bridge.mapping]]\nname = \"m\"\ndevices = \"known\"\n";
        let loaded = Config::from_str_at(
            &format!("{base}topic = \"sensors/{{device}}/{{channel}}\"\n"),
            "x",
        )
        .unwrap();
        assert_eq!(loaded.config.bridge.len(), 1);
        assert_eq!(loaded.bridge_passwords, vec![None]);
        let err = Config::from_str_at(&format!("{base}topic = \"sensors/+/{{channel}}\"\n"), "x")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x: bridge[0].mapping[0].topic: {device} is required");
        let err = Config::from_str_at(
            &format!("{base}topic = \"s/{{device}}/{{channel}}\"\ncommands = \"c/#\"\n"),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("x: bridge[0].mapping[0].commands:"), "{err}");
        let err = Config::from_str_at(
            &format!("{base}topic = \"s/{{device}}/{{channel}}\"\n[[bridge]]\nname = \"b\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n[[bridge.mapping]]\nname = \"m\"\ndevices = \"any\"\ntopic = \"a/{{device}}/{{channel}}\"\n"),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("x: bridge[1].password_file: cannot read"), "{err}");
    }

    #[test]
    fn bad_device_name_is_refused_with_the_rule() {
        let text = "[gateway]\nname = \"gw/1\"\napplication = \"app\"\n";
        let err = Config::from_str_at(text, "x").unwrap_err().to_string();
        assert!(err.contains("device name") && err.contains("'/'"), "{err}");
    }
}
