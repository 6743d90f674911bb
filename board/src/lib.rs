//! Board support for gatewayd: the same daemon runs on several single-board computers, and what
//! differs between them is data (a [`Profile`]), not code. Each device sits behind a small
//! type with one Linux implementation: the hardware [`watchdog`], the status and activity
//! [`leds`], the user [`button`], the thermal zone and the serial number.
//!
//! Every path of a profile is taken relative to a root directory: `/` on a real board, a
//! directory of plain files for the `sim` profile ([`sim`]), so every behaviour is testable on
//! any machine.

pub mod button;
pub mod leds;
pub mod profile;
pub mod sim;
pub mod watchdog;

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use button::{ButtonAction, ButtonEvent, ButtonLogic};
pub use leds::{LedState, Leds};
pub use profile::Profile;
pub use watchdog::Watchdog;

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("board profile {origin}: {message}")]
    Profile { origin: String, message: String },
    #[error("no built-in board profile {0:?} (built in: rpi4, rock-pi-s, x86-qemu, sim)")]
    UnknownProfile(String),
    #[error(
        "cannot detect the board (model {0:?}): set [board] profile, or write /etc/gatewayd/board.toml"
    )]
    Undetected(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

/// `[board]`: which profile, and where its paths live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// A built-in profile (`rpi4`, `rock-pi-s`, `x86-qemu`, `sim`), or `auto`: the profile file
    /// if it exists, else detection from the device-tree model or DMI.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// A profile file that replaces the built-in ones when it exists (with `profile = "auto"`).
    #[serde(default = "default_profile_file")]
    pub profile_file: PathBuf,
    /// The directory every profile path is relative to: `/`, or the sim board's directory.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// How long a component may stay unhealthy before the watchdog stops being kicked and the
    /// gateway exits (for the service manager, or the hardware watchdog, to restart it).
    #[serde(default = "default_hang_timeout", with = "gw_model::serde_util::duration")]
    pub hang_timeout: std::time::Duration,
    /// How long a short button press makes the activity LED blink (identify).
    #[serde(default = "default_identify_for", with = "gw_model::serde_util::duration")]
    pub identify_for: std::time::Duration,
}

fn default_profile() -> String {
    "auto".into()
}
fn default_profile_file() -> PathBuf {
    PathBuf::from("/etc/gatewayd/board.toml")
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_hang_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}
fn default_identify_for() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

impl Default for BoardConfig {
    fn default() -> Self {
        Self {
            profile: default_profile(),
            profile_file: default_profile_file(),
            root: default_root(),
            hang_timeout: default_hang_timeout(),
            identify_for: default_identify_for(),
        }
    }
}

/// Health readings for the status page and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Health {
    pub temperature_celsius: Option<f64>,
    /// The firmware reports throttling now (under-voltage or temperature).
    pub throttled: Option<bool>,
}

/// A board: its profile and the root its paths are read under.
#[derive(Clone, Debug)]
pub struct Board {
    pub profile: Profile,
    root: PathBuf,
}

impl Board {
    pub fn new(profile: Profile, root: impl Into<PathBuf>) -> Self {
        Self { profile, root: root.into() }
    }

    /// Selects the board as `[board]` says: a named built-in profile, or (`auto`) the profile
    /// file, else the built-in profile detected from the device-tree model or DMI.
    pub fn select(config: &BoardConfig) -> Result<Self, BoardError> {
        let root = config.root.clone();
        if config.profile != "auto" {
            return Ok(Self::new(Profile::builtin(&config.profile)?, root));
        }
        let file = reroot(&root, &config.profile_file);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                return Ok(Self::new(Profile::parse(&text, &file.display().to_string())?, root));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(BoardError::Io { what: "cannot read", path: file, source }),
        }
        let model = model_string(&root);
        Profile::detect(&model).map(|p| Self::new(p, root)).ok_or(BoardError::Undetected(model))
    }

    /// A profile path under this board's root.
    pub fn path(&self, p: &Path) -> PathBuf {
        reroot(&self.root, p)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The board's serial number, trimmed of whitespace and NULs (device-tree strings end in
    /// one); `None` when the source is missing or empty.
    pub fn serial(&self) -> Option<String> {
        let path = self.path(Path::new(self.profile.identity.serial.path()));
        let raw = std::fs::read(path).ok()?;
        let s: String = String::from_utf8_lossy(&raw)
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .trim()
            .to_owned();
        (!s.is_empty()).then_some(s)
    }

    /// Temperature and throttling, as far as the board tells.
    pub fn health(&self) -> Health {
        let read = |p: &Option<PathBuf>, file: Option<&str>| {
            let p = p.as_ref()?;
            let p = match file {
                Some(f) => self.path(p).join(f),
                None => self.path(p),
            };
            std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
        };
        let thermal = &self.profile.thermal;
        let temperature_celsius = read(&thermal.zone, Some("temp"))
            .and_then(|s| s.parse::<i64>().ok())
            .map(|milli| milli as f64 / 1000.0);
        let throttled = read(&thermal.throttled, None).and_then(|s| {
            let v = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse::<u64>().ok(),
            }?;
            Some(v & 0b100 != 0)
        });
        Health { temperature_celsius, throttled }
    }

    /// The status and activity LEDs.
    pub fn leds(&self) -> Leds {
        Leds::new(self)
    }

    /// Opens the hardware watchdog, if the profile has one. Opening it arms it: from now on it
    /// must be kicked.
    pub fn watchdog(&self) -> Result<Option<Watchdog>, BoardError> {
        let Some(device) = &self.profile.watchdog.device else { return Ok(None) };
        let path = self.path(device);
        Watchdog::open(&path, self.profile.watchdog.timeout)
            .map(Some)
            .map_err(|source| BoardError::Io { what: "cannot open the watchdog", path, source })
    }
}

/// `p` (absolute, as on the board) under `root`.
fn reroot(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// What identifies the board: the device-tree model, else DMI vendor and product.
fn model_string(root: &Path) -> String {
    let read = |p: &str| {
        std::fs::read(reroot(root, Path::new(p)))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let dt = read("/proc/device-tree/model");
    if !dt.is_empty() {
        return dt;
    }
    format!("{} {}", read("/sys/class/dmi/id/sys_vendor"), read("/sys/class/dmi/id/product_name"))
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_profile_file_then_detects() {
        let dir = tempfile::tempdir().unwrap();
        let config = BoardConfig { root: dir.path().to_owned(), ..Default::default() };
        let e = Board::select(&config).unwrap_err();
        assert!(matches!(e, BoardError::Undetected(_)), "{e}");
        std::fs::create_dir_all(dir.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            dir.path().join("proc/device-tree/model"),
            "Raspberry Pi 4 Model B Rev 1.5\0",
        )
        .unwrap();
        assert_eq!(Board::select(&config).unwrap().profile.name, "rpi4");
        // a profile file wins
        std::fs::create_dir_all(dir.path().join("etc/gatewayd")).unwrap();
        let custom = profile::BUILTIN[3].1.replace("name = \"sim\"", "name = \"custom-board\"");
        std::fs::write(dir.path().join("etc/gatewayd/board.toml"), custom).unwrap();
        assert_eq!(Board::select(&config).unwrap().profile.name, "custom-board");
        // and a bad one is an error naming the file
        std::fs::write(dir.path().join("etc/gatewayd/board.toml"), "name = 1").unwrap();
        let e = Board::select(&config).unwrap_err().to_string();
        assert!(e.contains("board.toml"), "{e}");
    }

    #[test]
    fn serial_and_health_are_read_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let board = sim::SimBoard::create(dir.path()).unwrap();
        assert_eq!(board.board().serial().as_deref(), Some(sim::SERIAL));
        board.set_temperature_millis(48_312);
        board.set_throttled(0x50005);
        let h = board.board().health();
        assert_eq!(h.temperature_celsius, Some(48.312));
        assert_eq!(h.throttled, Some(true));
        board.set_throttled(0x50000);
        assert_eq!(board.board().health().throttled, Some(false));
    }
}
