//! Board profiles: what differs between boards, as data. The built-in profiles are the TOML
//! files of `board/profiles/`, embedded in the binary; a file (e.g. `/etc/gatewayd/board.toml`)
//! replaces them for boards we do not ship.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::BoardError;

/// The built-in profiles: name and TOML text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("rpi4", include_str!("../profiles/rpi4.toml")),
    ("rock-pi-s", include_str!("../profiles/rock-pi-s.toml")),
    ("x86-qemu", include_str!("../profiles/x86-qemu.toml")),
    ("sim", include_str!("../profiles/sim.toml")),
];

/// One board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Substrings of the device-tree model or the DMI vendor/product that identify the board.
    pub detect: Vec<String>,
    pub watchdog: WatchdogProfile,
    pub leds: LedsProfile,
    pub button: ButtonProfile,
    pub identity: IdentityProfile,
    pub thermal: ThermalProfile,
    pub bootloader: BootloaderProfile,
    pub slots: SlotsProfile,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogProfile {
    /// The hardware watchdog's device; absent: no hardware watchdog.
    pub device: Option<PathBuf>,
    /// The driver's timeout; the gateway kicks at a third of it.
    #[serde(with = "gw_model::serde_util::duration")]
    pub timeout: Duration,
}

/// LED names under `/sys/class/leds`; absent: the board has no such LED.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedsProfile {
    pub status: Option<String>,
    pub activity: Option<String>,
}

/// The user button.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ButtonProfile {
    /// An input event device (gpio-keys) sending `key_code`.
    InputEvent { device: PathBuf, key_code: u16 },
    /// A GPIO line exported in sysfs (`/sys/class/gpio/gpio<line>/value`), polled.
    Gpio {
        line: u32,
        #[serde(default)]
        active_low: bool,
    },
    /// No button.
    None,
}

/// Where the board's serial number comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SerialSource {
    /// `/proc/device-tree/serial-number`.
    DeviceTree,
    /// `/sys/class/dmi/id/product_serial`.
    Dmi,
    /// `/etc/machine-id`.
    MachineId,
}

impl SerialSource {
    pub fn path(self) -> &'static str {
        match self {
            Self::DeviceTree => "/proc/device-tree/serial-number",
            Self::Dmi => "/sys/class/dmi/id/product_serial",
            Self::MachineId => "/etc/machine-id",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProfile {
    pub serial: SerialSource,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalProfile {
    /// A thermal zone directory (its `temp` is in millidegrees Celsius).
    pub zone: Option<PathBuf>,
    /// A file holding the firmware's throttling flags (hex or decimal); bit 2: throttled now.
    pub throttled: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootloaderKind {
    Grub,
    Uboot,
    File,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderProfile {
    pub kind: BootloaderKind,
    /// The environment file (`file` kind; optional for the others, whose tools know theirs).
    pub env: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsProfile {
    pub a: PathBuf,
    pub b: PathBuf,
    pub data: PathBuf,
}

impl Profile {
    /// Parses and checks a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, BoardError> {
        let profile: Self = toml::from_str(text).map_err(|e| BoardError::Profile {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        profile
            .validate()
            .map_err(|message| BoardError::Profile { origin: origin.to_owned(), message })?;
        Ok(profile)
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!("name: {:?} must be letters, digits, '-' or '_'", self.name));
        }
        if self.watchdog.timeout < Duration::from_secs(1) {
            return Err("watchdog.timeout: at least 1s".into());
        }
        if self.bootloader.kind == BootloaderKind::File && self.bootloader.env.is_none() {
            return Err("bootloader.env: the file kind needs the environment file".into());
        }
        let absolute = [
            ("watchdog.device", self.watchdog.device.as_ref()),
            ("thermal.zone", self.thermal.zone.as_ref()),
            ("thermal.throttled", self.thermal.throttled.as_ref()),
            ("bootloader.env", self.bootloader.env.as_ref()),
            ("slots.a", Some(&self.slots.a)),
            ("slots.b", Some(&self.slots.b)),
            ("slots.data", Some(&self.slots.data)),
        ];
        for (key, path) in absolute {
            if path.is_some_and(|p| !p.is_absolute()) {
                return Err(format!("{key}: must be an absolute path"));
            }
        }
        if let ButtonProfile::InputEvent { device, .. } = &self.button
            && !device.is_absolute()
        {
            return Err("button.device: must be an absolute path".into());
        }
        for (key, led) in
            [("leds.status", &self.leds.status), ("leds.activity", &self.leds.activity)]
        {
            if led.as_deref().is_some_and(|n| n.is_empty() || n.contains('/')) {
                return Err(format!("{key}: an LED name under /sys/class/leds, without '/'"));
            }
        }
        Ok(())
    }

    /// The built-in profile `name`.
    pub fn builtin(name: &str) -> Result<Self, BoardError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| BoardError::UnknownProfile(name.to_owned()))?;
        Self::parse(text, &format!("built-in profile {name}"))
    }

    /// The built-in profile whose `detect` strings appear in `model` (device-tree model or DMI
    /// vendor and product).
    pub fn detect(model: &str) -> Option<Self> {
        BUILTIN.iter().find_map(|(name, _)| {
            let p = Self::builtin(name).ok()?;
            p.detect.iter().any(|d| model.contains(d.as_str())).then_some(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_validates_and_is_named_as_its_file() {
        for (name, text) in BUILTIN {
            let p = Profile::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, *name);
            assert!(!p.description.is_empty());
            assert!(p.watchdog.timeout >= Duration::from_secs(3), "{name}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_fields_are_named() {
        let (_, sim) = BUILTIN.iter().find(|(n, _)| *n == "sim").unwrap();
        let extra = sim.replace("[watchdog]\n", "[watchdog]\nbark = true\n");
        let e = Profile::parse(&extra, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("board profile x.toml:") && e.contains("bark"), "{e}");
        let missing = sim.replace("timeout = \"3s\"\n", "");
        let e = Profile::parse(&missing, "x.toml").unwrap_err().to_string();
        assert!(e.contains("missing field `timeout`"), "{e}");
        let no_slots = sim.split("[slots]").next().unwrap().to_owned();
        let e = Profile::parse(&no_slots, "x.toml").unwrap_err().to_string();
        assert!(e.contains("missing field `slots`"), "{e}");
        let relative = sim.replace("a = \"/dev/sim-slot-a\"", "a = \"dev/a\"");
        let e = Profile::parse(&relative, "x.toml").unwrap_err().to_string();
        assert!(e.contains("slots.a: must be an absolute path"), "{e}");
        let bad_button = sim.replace("kind = \"input-event\"", "kind = \"lever\"");
        let e = Profile::parse(&bad_button, "x.toml").unwrap_err().to_string();
        assert!(e.contains("lever"), "{e}");
    }

    #[test]
    fn boards_are_detected_from_their_model_strings() {
        assert_eq!(Profile::detect("Raspberry Pi 4 Model B Rev 1.4").unwrap().name, "rpi4");
        assert_eq!(Profile::detect("Radxa ROCK Pi S").unwrap().name, "rock-pi-s");
        assert_eq!(
            Profile::detect("QEMU Standard PC (Q35 + ICH9, 2009)").unwrap().name,
            "x86-qemu"
        );
        assert!(Profile::detect("Some Other Board").is_none());
        assert!(matches!(Profile::builtin("nope"), Err(BoardError::UnknownProfile(_))));
    }
}
