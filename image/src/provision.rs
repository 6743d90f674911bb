//! `provision.toml`: what an installer writes onto the FAT partition of a new gateway.
//!
//! ```toml
//! [gateway]
//! name = "gw-0042"                        # the gateway's device name in the cloud registry
//! application = "my-app"
//!
//! [cloud]
//! kind = "drogue-http"                    # drogue-http | drogue-mqtt | mqtt
//! url = "https://http.drogue.example.com"
//! password = "the gateway's password"     # secret
//!
//! [registry]                              # optional
//! url = "https://api.drogue.example.com"
//! token = "user:token"                    # secret
//!
//! [technician]
//! password = "first admin password"       # secret; at least 8 characters
//! api_token = "for monitoring"            # optional secret, >= 16 characters: Bearer for
//!                                         # /api/v1/status and /metrics
//!
//! [wifi]                                  # optional, left to the operating system
//! ```
//!
//! [`import`] checks it, writes the secrets into the data partition (mode 0600), writes the
//! gateway's config (the image's base config with these sections), and then rewrites the FAT
//! copy without the secrets. Everything new is written to temporary files first and renamed
//! only when all of it is ready, so a bad file changes nothing.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::ImageError;

/// Written instead of a secret in the rewritten FAT copy.
pub const MOVED: &str = "(moved to the gateway's data partition)";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    pub gateway: Gateway,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Cloud>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technician: Option<Technician>,
    /// Wi-Fi settings for the operating system; gatewayd keeps them as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wifi: Option<toml::Table>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub name: String,
    pub application: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    #[serde(default = "default_kind")]
    pub kind: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

fn default_kind() -> String {
    "drogue-http".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Technician {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The read-only token for `/api/v1/status` and `/metrics` (monitoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
}

fn bad(key: &str, why: impl std::fmt::Display) -> ImageError {
    ImageError::Provision(format!("{key}: {why}"))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn secret_given(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| *v != MOVED)
}

impl Provision {
    /// Parses and checks a provision file's text; errors name the key.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let p: Self = toml::from_str(text)
            .map_err(|e| ImageError::Provision(e.to_string().trim().to_owned()))?;
        if !name_ok(&p.gateway.name) {
            return Err(bad("gateway.name", "1 to 63 letters, digits, '-', '_' or '.'"));
        }
        if !name_ok(&p.gateway.application) {
            return Err(bad("gateway.application", "1 to 63 letters, digits, '-', '_' or '.'"));
        }
        if let Some(c) = &p.cloud {
            let schemes: &[&str] = match c.kind.as_str() {
                "drogue-http" => &["http://", "https://"],
                "drogue-mqtt" | "mqtt" => &["mqtt://", "mqtts://"],
                other => {
                    return Err(bad(
                        "cloud.kind",
                        format!("{other:?}: drogue-http, drogue-mqtt or mqtt"),
                    ));
                }
            };
            let host = schemes.iter().find_map(|s| c.url.strip_prefix(s));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                return Err(bad(
                    "cloud.url",
                    format!("{:?}: a {} URL", c.url, schemes.join(" or ")),
                ));
            }
            if c.kind != "mqtt" && c.password.as_deref().is_none_or(str::is_empty) {
                return Err(bad("cloud.password", "the gateway's password is needed"));
            }
        }
        if let Some(r) = &p.registry {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(bad("registry.url", format!("{:?}: an http(s) URL", r.url)));
            }
            if r.token.as_deref().is_none_or(str::is_empty) {
                return Err(bad("registry.token", "the registry needs an API token"));
            }
        }
        if let Some(pw) = p.technician.as_ref().and_then(|t| secret_given(&t.password))
            && pw.chars().count() < 8
        {
            return Err(bad("technician.password", "at least 8 characters"));
        }
        if let Some(token) = p.technician.as_ref().and_then(|t| secret_given(&t.api_token))
            && token.trim().chars().count() < 16
        {
            return Err(bad("technician.api_token", "at least 16 characters"));
        }
        Ok(p)
    }

    /// True when it still holds a secret that has not been moved.
    pub fn has_secrets(&self) -> bool {
        self.cloud.as_ref().is_some_and(|c| secret_given(&c.password).is_some())
            || self.registry.as_ref().is_some_and(|r| secret_given(&r.token).is_some())
            || self.technician.as_ref().is_some_and(|t| {
                secret_given(&t.password).is_some() || secret_given(&t.api_token).is_some()
            })
    }

    /// The same file with each secret replaced by [`MOVED`].
    pub fn without_secrets(&self) -> Self {
        let mut p = self.clone();
        let hide = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some(MOVED.into());
            }
        };
        if let Some(c) = &mut p.cloud {
            hide(&mut c.password);
        }
        if let Some(r) = &mut p.registry {
            hide(&mut r.token);
        }
        if let Some(t) = &mut p.technician {
            hide(&mut t.password);
            hide(&mut t.api_token);
        }
        p
    }
}

/// Where [`import`] puts things.
#[derive(Clone, Debug)]
pub struct ImportPaths {
    /// The provision file (on the FAT partition); rewritten without secrets.
    pub provision: PathBuf,
    /// The image's base config (listeners, board, update), which the provisioned sections
    /// are added to.
    pub base_config: PathBuf,
    /// The config written for gatewayd (on the data partition).
    pub config: PathBuf,
    /// The directory the secrets go to (on the data partition; 0700, files 0600).
    pub secrets: PathBuf,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Secrets moved, config written, the FAT copy rewritten.
    Applied { name: String },
    /// The file holds no secrets and the config is already written: nothing to do.
    Unchanged,
}

/// Imports a provision file (see the module's documentation). A file that does not parse or
/// check changes nothing and is returned as the error.
pub fn import(paths: &ImportPaths) -> Result<Imported, ImageError> {
    let text = std::fs::read_to_string(&paths.provision)
        .map_err(ImageError::io("cannot read", &paths.provision))?;
    let p = Provision::parse(&text)?;
    if !p.has_secrets() && paths.config.exists() {
        return Ok(Imported::Unchanged);
    }
    let base = std::fs::read_to_string(&paths.base_config)
        .map_err(ImageError::io("cannot read", &paths.base_config))?;
    let mut config: toml::Table = toml::from_str(&base)
        .map_err(|e| bad(&paths.base_config.display().to_string(), e.to_string().trim()))?;

    // Stage every file first.
    let mut staged: Vec<(tempfile::NamedTempFile, PathBuf)> = Vec::new();
    let mut stage = |dir: &Path, target: PathBuf, content: &str, mode: u32| {
        let mut t = tempfile::NamedTempFile::new_in(dir)
            .map_err(ImageError::io("cannot create a file in", dir))?;
        t.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| t.write_all(content.as_bytes()))
            .and_then(|()| t.as_file().sync_all())
            .map_err(ImageError::io("cannot write", &target))?;
        staged.push((t, target));
        Ok::<(), ImageError>(())
    };
    if !paths.secrets.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.secrets)
            .map_err(ImageError::io("cannot create", &paths.secrets))?;
    }
    let table = |pairs: Vec<(&str, toml::Value)>| -> toml::Table {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let path_value = |p: &Path| toml::Value::String(p.display().to_string());
    let gateway = config.entry("gateway").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(gateway) = gateway else {
        return Err(bad("base config", "[gateway] is not a table"));
    };
    gateway.insert("name".into(), p.gateway.name.clone().into());
    gateway.insert("application".into(), p.gateway.application.clone().into());
    if let Some(c) = &p.cloud {
        let mut t = table(vec![("kind", c.kind.clone().into()), ("url", c.url.clone().into())]);
        if let Some(pw) = secret_given(&c.password) {
            let file = paths.secrets.join("cloud.secret");
            stage(&paths.secrets, file.clone(), pw, 0o600)?;
            t.insert("password_file".into(), path_value(&file));
        } else if paths.secrets.join("cloud.secret").exists() {
            t.insert("password_file".into(), path_value(&paths.secrets.join("cloud.secret")));
        }
        config.insert("cloud".into(), t.into());
    }
    if let Some(r) = &p.registry {
        let file = paths.secrets.join("registry.token");
        if let Some(token) = secret_given(&r.token) {
            stage(&paths.secrets, file.clone(), token, 0o600)?;
        }
        let t = table(vec![("url", r.url.clone().into()), ("token_file", path_value(&file))]);
        config.insert("registry".into(), t.into());
    }
    let admin = paths.secrets.join("admin.password");
    let given = p.technician.as_ref().and_then(|t| secret_given(&t.password));
    if let Some(pw) = given {
        stage(&paths.secrets, admin.clone(), pw, 0o600)?;
    }
    let api = paths.secrets.join("api.token");
    let api_given = p.technician.as_ref().and_then(|t| secret_given(&t.api_token));
    if let Some(token) = api_given {
        stage(&paths.secrets, api.clone(), token, 0o600)?;
    }
    let with_admin = given.is_some() || (p.technician.is_some() && admin.exists());
    let with_api = api_given.is_some()
        || p.technician.as_ref().is_some_and(|t| t.api_token.is_some()) && api.exists();
    if with_admin || with_api {
        let web = config.entry("web").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(web) = web else {
            return Err(bad("base config", "[web] is not a table"));
        };
        if with_admin {
            web.insert("admin_password_file".into(), path_value(&admin));
        }
        if with_api {
            web.insert("api_token_file".into(), path_value(&api));
        }
    }
    let config_text = format!(
        "# Written by `gatewayd provision` from provision.toml and {}; edit provision.toml instead.\n{}",
        paths.base_config.display(),
        toml::to_string(&config).map_err(|e| bad("config", e))?
    );
    let config_dir = paths.config.parent().unwrap_or(Path::new("."));
    stage(config_dir, paths.config.clone(), &config_text, 0o600)?;
    let rewritten = format!(
        "# Imported by the gateway: its secrets now live on the data partition. To change them,\n\
         # write them here again; the gateway imports the file at its next start.\n{}",
        toml::to_string(&p.without_secrets()).map_err(|e| bad("provision", e))?
    );

    // All staged: put them in place, the FAT copy last.
    for (t, target) in staged {
        t.persist(&target).map_err(|e| ImageError::Io {
            what: "cannot replace",
            path: target.clone(),
            source: e.error,
        })?;
    }
    let fat_dir = paths.provision.parent().unwrap_or(Path::new("."));
    // FAT has no modes or atomic rename over a file on every kernel: write a sibling, rename.
    let mut t = tempfile::NamedTempFile::new_in(fat_dir)
        .map_err(ImageError::io("cannot create a file in", fat_dir))?;
    t.write_all(rewritten.as_bytes())
        .and_then(|()| t.as_file().sync_all())
        .map_err(ImageError::io("cannot write", &paths.provision))?;
    t.persist(&paths.provision).map_err(|e| ImageError::Io {
        what: "cannot replace",
        path: paths.provision.clone(),
        source: e.error,
    })?;
    Ok(Imported::Applied { name: p.gateway.name })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
name = "gw-0042"
application = "my-app"

[cloud]
url = "https://http.example.com"
password = "gw-secret"

[registry]
url = "https://api.example.com"
token = "admin:token"

[technician]
password = "first-admin-pw"
api_token = "monitoring-token-0123"

[wifi]
ssid = "site"
"#;

    fn err(text: &str) -> String {
        Provision::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn checks_name_the_key() {
        Provision::parse(GOOD).unwrap();
        assert!(err(&GOOD.replace("gw-0042", "gw 42")).contains("gateway.name"));
        assert!(err(&GOOD.replace("https://http.example.com", "ftp://x")).contains("cloud.url"));
        assert!(err(&GOOD.replace("password = \"gw-secret\"\n", "")).contains("cloud.password"));
        assert!(err(&GOOD.replace("first-admin-pw", "short")).contains("technician.password"));
        assert!(
            err(&GOOD.replace("monitoring-token-0123", "short")).contains("technician.api_token")
        );
        assert!(err(&GOOD.replace("[registry]", "[registry]\nextra = 1")).contains("extra"));
        assert!(
            err(&GOOD.replace("url = \"https://http", "kind = \"coap\"\nurl = \"https://http"))
                .contains("cloud.kind")
        );
        assert!(err("[gateway]\nname = \"x\"\n").contains("application"));
    }

    fn setup() -> (tempfile::TempDir, ImportPaths) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("boot")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(
            d.join("base.toml"),
            "[board]\nprofile = \"x86-qemu\"\n\n[web]\nlisten = \"0.0.0.0:8080\"\n",
        )
        .unwrap();
        let paths = ImportPaths {
            provision: d.join("boot/provision.toml"),
            base_config: d.join("base.toml"),
            config: d.join("data/gatewayd.toml"),
            secrets: d.join("data/secrets"),
        };
        (dir, paths)
    }

    #[test]
    fn import_moves_secrets_writes_the_config_and_rewrites_the_file() {
        let (_dir, paths) = setup();
        std::fs::write(&paths.provision, GOOD).unwrap();
        assert_eq!(import(&paths).unwrap(), Imported::Applied { name: "gw-0042".into() });
        let secret = |f: &str| {
            let p = paths.secrets.join(f);
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
            std::fs::read_to_string(p).unwrap()
        };
        assert_eq!(secret("cloud.secret"), "gw-secret");
        assert_eq!(secret("registry.token"), "admin:token");
        assert_eq!(secret("admin.password"), "first-admin-pw");
        assert_eq!(secret("api.token"), "monitoring-token-0123");
        assert_eq!(std::fs::metadata(&paths.secrets).unwrap().permissions().mode() & 0o777, 0o700);
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(&paths.config).unwrap()).unwrap();
        assert_eq!(config["gateway"]["name"].as_str(), Some("gw-0042"));
        assert_eq!(config["cloud"]["kind"].as_str(), Some("drogue-http"));
        assert!(
            config["cloud"]["password_file"].as_str().unwrap().ends_with("secrets/cloud.secret")
        );
        assert_eq!(config["web"]["listen"].as_str(), Some("0.0.0.0:8080"), "the base is kept");
        assert!(config["web"]["admin_password_file"].as_str().unwrap().ends_with("admin.password"));
        assert!(config["web"]["api_token_file"].as_str().unwrap().ends_with("secrets/api.token"));
        assert_eq!(config["board"]["profile"].as_str(), Some("x86-qemu"));
        let fat = std::fs::read_to_string(&paths.provision).unwrap();
        for s in ["gw-secret", "admin:token", "first-admin-pw", "monitoring-token-0123"] {
            assert!(!fat.contains(s), "{s} still on the FAT partition: {fat}");
        }
        let again = Provision::parse(&fat).unwrap();
        assert!(!again.has_secrets());
        assert_eq!(again.wifi, Provision::parse(GOOD).unwrap().wifi, "Wi-Fi left as it was");
        // The next start: nothing to do, and the config keeps pointing at the moved secrets.
        assert_eq!(import(&paths).unwrap(), Imported::Unchanged);
    }

    #[test]
    fn a_bad_file_changes_nothing() {
        let (_dir, paths) = setup();
        std::fs::write(&paths.provision, GOOD).unwrap();
        import(&paths).unwrap();
        let config = std::fs::read_to_string(&paths.config).unwrap();
        let bad = GOOD.replace("gw-0042", "gw 42").replace("gw-secret", "new-secret");
        std::fs::write(&paths.provision, &bad).unwrap();
        let e = import(&paths).unwrap_err();
        assert!(e.to_string().contains("gateway.name"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&paths.provision).unwrap(),
            bad,
            "left for the installer"
        );
        assert_eq!(std::fs::read_to_string(&paths.config).unwrap(), config);
        assert_eq!(
            std::fs::read_to_string(paths.secrets.join("cloud.secret")).unwrap(),
            "gw-secret"
        );
    }

    #[test]
    fn a_new_secret_replaces_the_moved_one() {
        let (_dir, paths) = setup();
        std::fs::write(&paths.provision, GOOD).unwrap();
        import(&paths).unwrap();
        let fat = std::fs::read_to_string(&paths.provision).unwrap();
        let changed =
            fat.replacen(&format!("password = \"{MOVED}\""), "password = \"rotated-pw\"", 1);
        std::fs::write(&paths.provision, changed).unwrap();
        assert!(matches!(import(&paths).unwrap(), Imported::Applied { .. }));
        assert_eq!(
            std::fs::read_to_string(paths.secrets.join("cloud.secret")).unwrap(),
            "rotated-pw"
        );
        assert_eq!(
            std::fs::read_to_string(paths.secrets.join("admin.password")).unwrap(),
            "first-admin-pw"
        );
    }
}
