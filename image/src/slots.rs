//! A/B slots: which one booted, installing into the other, trying it once, marking it good,
//! and falling back.
//!
//! The boot loader's environment holds the whole state, in these variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `gw_good` | the slot booted normally: the last one marked good (`A` when absent) |
//! | `gw_try` | a slot to try (absent: none) |
//! | `gw_try_left` | how many boots of `gw_try` are left; an install sets 1 |
//! | `gw_version_A`, `gw_version_B` | the bundle version installed in each slot |
//!
//! The boot script does, at every boot: if `gw_try` is set and `gw_try_left` is not 0, set
//! `gw_try_left` to one less (GRUB, which cannot count, sets 0), save, and boot `gw_try`;
//! otherwise boot `gw_good`. It passes `gatewayd.slot=<slot>` on the kernel command line.
//! So a tried slot boots once; unless the running system marks it good (`gw_good` = it,
//! `gw_try` removed), the next reset boots the old slot again. [`SlotSystem::boot_step`] is that
//! script, for the sim board and tests.

use std::{
    collections::BTreeMap,
    fmt,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use gw_board::Board;

use crate::{ImageError, bootenv::BootEnv, bundle::Bundle, bundle::hash_reader, compatible_for};

pub const VAR_GOOD: &str = "gw_good";
pub const VAR_TRY: &str = "gw_try";
pub const VAR_TRY_LEFT: &str = "gw_try_left";

/// The rootfs's release file: `VERSION=<semver>` of the system image (os-release style).
pub const RELEASE_FILE: &str = "/etc/gatewayd/release";

/// One of the two rootfs slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn version_var(self) -> &'static str {
        match self {
            Self::A => "gw_version_A",
            Self::B => "gw_version_B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s.trim() {
            "A" | "a" => Ok(Self::A),
            "B" | "b" => Ok(Self::B),
            other => Err(ImageError::Env(format!("slot {other:?}: A or B"))),
        }
    }
}

/// Where the system stands, from the environment and the booted slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootState {
    /// Booted the good slot; nothing pending.
    Good { booted: Slot },
    /// An installed slot waits for the next boot to be tried.
    Pending { booted: Slot, next: Slot },
    /// Booted a slot on trial: not yet marked good; a reset falls back to `fallback`.
    Trying { booted: Slot, fallback: Slot },
    /// A tried slot was not marked good and the boot loader fell back to the good one.
    FellBack { booted: Slot, failed: Slot },
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Good { booted } => write!(f, "booted {booted}, marked good"),
            Self::Pending { booted, next } => {
                write!(f, "booted {booted}; {next} is installed and is tried at the next boot")
            }
            Self::Trying { booted, fallback } => write!(
                f,
                "booted {booted} on trial; not yet marked good, a reset falls back to {fallback}"
            ),
            Self::FellBack { booted, failed } => {
                write!(f, "booted {booted}: slot {failed} was tried and never marked good")
            }
        }
    }
}

/// What [`SlotSystem::install`] may do.
#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// Install a version older than the booted one.
    pub allow_downgrade: bool,
}

/// A finished installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub slot: Slot,
    pub version: semver::Version,
    pub bytes: u64,
}

/// What [`SlotSystem::mark_good`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkGood {
    /// The booted slot was on trial and is now the good one.
    Marked(Slot),
    /// The booted slot was good already.
    AlreadyGood(Slot),
    /// The booted slot is good, the tried `failed` one is forgotten (a fall back happened).
    ClearedFailedTry { booted: Slot, failed: Slot },
}

/// A board's two slots and its boot loader environment.
#[derive(Debug)]
pub struct SlotSystem {
    board: Board,
    env: Box<dyn BootEnv>,
}

impl SlotSystem {
    pub fn new(board: Board, env: Box<dyn BootEnv>) -> Self {
        Self { board, env }
    }

    pub fn env(&self) -> &dyn BootEnv {
        self.env.as_ref()
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The device (or file) of a slot.
    pub fn slot_device(&self, slot: Slot) -> PathBuf {
        let slots = &self.board.profile.slots;
        self.board.path(match slot {
            Slot::A => &slots.a,
            Slot::B => &slots.b,
        })
    }

    /// The booted slot: `gatewayd.slot=` on the kernel command line (under the board's root),
    /// else the environment's good slot.
    pub fn booted(&self) -> Result<Slot, ImageError> {
        let cmdline = std::fs::read_to_string(self.board.path(Path::new("/proc/cmdline")))
            .unwrap_or_default();
        if let Some(s) = cmdline.split_whitespace().find_map(|w| w.strip_prefix("gatewayd.slot=")) {
            return s.parse();
        }
        good_slot(&self.env.read()?)
    }

    pub fn state(&self) -> Result<BootState, ImageError> {
        let vars = self.env.read()?;
        state_of(self.booted()?, &vars)
    }

    /// The version of the running system: the `VERSION=` line of the release file the image
    /// build writes into each rootfs ([`RELEASE_FILE`], under the board's root). A bundle's
    /// manifest carries the same version, so a second image differs without another gatewayd.
    pub fn running_version(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.board.path(Path::new(RELEASE_FILE))).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VERSION="))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The version installed in a slot, when an install (or the disk image) recorded it.
    pub fn version(&self, slot: Slot) -> Result<Option<semver::Version>, ImageError> {
        version_of(&self.env.read()?, slot)
    }

    /// Installs a verified bundle into the inactive slot: checks `compatible` against the board
    /// and the version against the booted slot's, makes the inactive slot unbootable, streams
    /// the rootfs image into it while hashing, compares the hash with the signed manifest, and
    /// only then sets the environment to try that slot once at the next boot.
    pub fn install(
        &self,
        bundle: &Bundle,
        options: &InstallOptions,
    ) -> Result<Installed, ImageError> {
        let manifest = bundle.manifest();
        let board_compatible = compatible_for(&self.board.profile);
        if manifest.compatible != board_compatible {
            return Err(ImageError::Incompatible {
                bundle: manifest.compatible.clone(),
                board: board_compatible,
            });
        }
        let vars = self.env.read()?;
        let booted = self.booted()?;
        if let BootState::Trying { booted, .. } = state_of(booted, &vars)? {
            return Err(ImageError::BootedSlotOnTrial(booted));
        }
        if let Some(installed) = version_of(&vars, booted)?
            && manifest.version < installed
            && !options.allow_downgrade
        {
            return Err(ImageError::Downgrade { bundle: manifest.version.clone(), installed });
        }
        let image = manifest
            .image("rootfs")
            .ok_or_else(|| ImageError::Manifest("the bundle has no rootfs image".into()))?;
        let target = booted.other();
        // From here on the target holds no bootable system until the hash is confirmed.
        let good = booted.to_string();
        self.env.write(&[
            (VAR_GOOD, &good),
            (VAR_TRY, ""),
            (VAR_TRY_LEFT, ""),
            (target.version_var(), ""),
        ])?;
        let device = self.slot_device(target);
        let mut out = open_slot(&device)?;
        let mut reader = bundle.image_reader(image)?;
        let (bytes, hash) = hash_reader(&mut reader, &mut out)
            .and_then(|r| out.flush().and(out.sync_all()).map(|()| r))
            .map_err(ImageError::io("cannot write the image to", &device))?;
        if bytes < image.size {
            return Err(ImageError::Truncated {
                name: image.name.clone(),
                missing: image.size - bytes,
            });
        }
        if hash != image.sha256 {
            return Err(ImageError::HashMismatch {
                name: image.name.clone(),
                expected: image.sha256.clone(),
                actual: hash,
            });
        }
        let version = manifest.version.to_string();
        let next = target.to_string();
        self.env.write(&[
            (VAR_TRY, &next),
            (VAR_TRY_LEFT, "1"),
            (target.version_var(), &version),
        ])?;
        Ok(Installed { slot: target, version: manifest.version.clone(), bytes })
    }

    /// Marks the booted slot good (after the gateway has been healthy long enough): a slot on
    /// trial becomes the one booted from now on; after a fall back, the failed try is forgotten.
    pub fn mark_good(&self) -> Result<MarkGood, ImageError> {
        let vars = self.env.read()?;
        let booted = self.booted()?;
        match state_of(booted, &vars)? {
            BootState::Trying { booted, .. } => {
                let slot = booted.to_string();
                self.env.write(&[(VAR_GOOD, &slot), (VAR_TRY, ""), (VAR_TRY_LEFT, "")])?;
                Ok(MarkGood::Marked(booted))
            }
            BootState::FellBack { booted, failed } => {
                self.env.write(&[(VAR_TRY, ""), (VAR_TRY_LEFT, "")])?;
                Ok(MarkGood::ClearedFailedTry { booted, failed })
            }
            BootState::Good { booted } | BootState::Pending { booted, .. } => {
                Ok(MarkGood::AlreadyGood(booted))
            }
        }
    }

    /// Gives up a slot on trial now: no try is left, so the next boot is the good slot.
    pub fn mark_bad(&self) -> Result<Slot, ImageError> {
        let vars = self.env.read()?;
        let fallback = good_slot(&vars)?;
        self.env.write(&[(VAR_TRY_LEFT, "0")])?;
        Ok(fallback)
    }

    /// What the boot script does at a boot (see the module's documentation): returns the slot
    /// it boots, updating the try counter. On the sim board it also writes the booted slot into
    /// the sim's `/proc/cmdline`, as the kernel would show it.
    pub fn boot_step(&self) -> Result<Slot, ImageError> {
        let vars = self.env.read()?;
        let left: u32 = vars.get(VAR_TRY_LEFT).and_then(|v| v.parse().ok()).unwrap_or(0);
        let slot = match vars.get(VAR_TRY) {
            Some(t) if left > 0 => {
                let left = (left - 1).to_string();
                self.env.write(&[(VAR_TRY_LEFT, &left)])?;
                t.parse()?
            }
            _ => good_slot(&vars)?,
        };
        if self.board.profile.name == "sim" {
            let cmdline = self.board.path(Path::new("/proc/cmdline"));
            if let Some(dir) = cmdline.parent() {
                std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
            }
            std::fs::write(&cmdline, format!("console=ttyS0 gatewayd.slot={slot}\n"))
                .map_err(ImageError::io("cannot write", &cmdline))?;
        }
        Ok(slot)
    }
}

fn open_slot(device: &Path) -> Result<std::fs::File, ImageError> {
    // A slot is a block device (written in place) or, on the sim board, a file (replaced).
    let is_file = std::fs::metadata(device).map(|m| m.is_file()).unwrap_or(true);
    OpenOptions::new()
        .write(true)
        .create(is_file)
        .truncate(is_file)
        .open(device)
        .map_err(ImageError::io("cannot open slot", device))
}

fn good_slot(vars: &BTreeMap<String, String>) -> Result<Slot, ImageError> {
    vars.get(VAR_GOOD).map_or(Ok(Slot::A), |s| s.parse())
}

fn version_of(
    vars: &BTreeMap<String, String>,
    slot: Slot,
) -> Result<Option<semver::Version>, ImageError> {
    vars.get(slot.version_var())
        .map(|v| {
            semver::Version::parse(v).map_err(|e| {
                ImageError::Env(format!("{}: {v:?} is not a version ({e})", slot.version_var()))
            })
        })
        .transpose()
}

fn state_of(booted: Slot, vars: &BTreeMap<String, String>) -> Result<BootState, ImageError> {
    let good = good_slot(vars)?;
    let tried = vars.get(VAR_TRY).map(|t| t.parse::<Slot>()).transpose()?;
    let left: u32 = match vars.get(VAR_TRY_LEFT) {
        Some(v) => v
            .parse()
            .map_err(|_| ImageError::Env(format!("{VAR_TRY_LEFT}: {v:?} is not a count")))?,
        None => 0,
    };
    Ok(match tried {
        Some(t) if t == booted && t != good => BootState::Trying { booted, fallback: good },
        Some(t) if t != booted && left > 0 => BootState::Pending { booted, next: t },
        Some(t) if t != booted => BootState::FellBack { booted, failed: t },
        _ => BootState::Good { booted },
    })
}

/// Decides when a slot on trial has been healthy long enough to be marked good: healthy
/// without a break for `healthy_after`. Time is an argument, so it is tested without waiting.
#[derive(Clone, Debug)]
pub struct HealthGate {
    healthy_after: Duration,
    healthy_since: Option<Instant>,
    passed: bool,
}

impl HealthGate {
    pub fn new(healthy_after: Duration) -> Self {
        Self { healthy_after, healthy_since: None, passed: false }
    }

    /// One observation; `true` exactly once, when the gateway has been healthy for
    /// `healthy_after` without a break. An unhealthy observation starts the wait again.
    pub fn observe(&mut self, now: Instant, healthy: bool) -> bool {
        if self.passed {
            return false;
        }
        if !healthy {
            self.healthy_since = None;
            return false;
        }
        let since = *self.healthy_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.healthy_after {
            self.passed = true;
            return true;
        }
        false
    }

    pub fn passed(&self) -> bool {
        self.passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_state_follows_the_environment() {
        use BootState::*;
        assert_eq!(state_of(Slot::A, &vars(&[])).unwrap(), Good { booted: Slot::A });
        let pending = vars(&[("gw_good", "A"), ("gw_try", "B"), ("gw_try_left", "1")]);
        assert_eq!(
            state_of(Slot::A, &pending).unwrap(),
            Pending { booted: Slot::A, next: Slot::B }
        );
        let tried = vars(&[("gw_good", "A"), ("gw_try", "B"), ("gw_try_left", "0")]);
        assert_eq!(
            state_of(Slot::B, &tried).unwrap(),
            Trying { booted: Slot::B, fallback: Slot::A }
        );
        assert_eq!(
            state_of(Slot::A, &tried).unwrap(),
            FellBack { booted: Slot::A, failed: Slot::B }
        );
        assert_eq!(
            state_of(Slot::B, &vars(&[("gw_good", "B")])).unwrap(),
            Good { booted: Slot::B }
        );
        assert!(state_of(Slot::A, &vars(&[("gw_try", "C")])).is_err());
        assert!(state_of(Slot::A, &vars(&[("gw_try", "B"), ("gw_try_left", "x")])).is_err());
    }

    #[test]
    fn health_gate_needs_an_unbroken_healthy_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut gate = HealthGate::new(s(60));
        assert!(!gate.observe(t0, true));
        assert!(!gate.observe(t0 + s(59), true));
        assert!(!gate.observe(t0 + s(59), false), "a break starts the wait again");
        assert!(!gate.observe(t0 + s(70), true));
        assert!(!gate.observe(t0 + s(129), true));
        assert!(gate.observe(t0 + s(130), true));
        assert!(gate.passed());
        assert!(!gate.observe(t0 + s(200), true), "once");
    }

    #[test]
    fn a_gate_never_healthy_never_passes() {
        let t0 = Instant::now();
        let mut gate = HealthGate::new(Duration::from_secs(1));
        for i in 0..1000 {
            assert!(!gate.observe(t0 + Duration::from_secs(i), false));
        }
        assert!(!gate.passed());
    }
}
