//! The `sim` board: the `sim` profile's devices as plain files under a directory. Tests (and
//! `gatewayd demo`) create one, run the gateway on it, and look at or change the files: the
//! watchdog file grows with each kick, LED directories hold `trigger`/`brightness`/`delay_*`,
//! button presses are `struct input_event` records appended to the event file.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::{Board, button::encode_input_event, profile::Profile};

/// The serial number of every sim board.
pub const SERIAL: &str = "SIM-0000000001";

/// A sim board's directory.
#[derive(Debug, Clone)]
pub struct SimBoard {
    root: PathBuf,
    profile: Profile,
}

impl SimBoard {
    /// Creates (or refreshes) the sim board's files under `root`.
    pub fn create(root: &Path) -> io::Result<Self> {
        let profile = Profile::builtin("sim").map_err(io::Error::other)?;
        let sim = Self { root: root.to_owned(), profile };
        let file = |p: &str, content: &[u8]| -> io::Result<()> {
            let path = sim.path(p);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            if !path.exists() {
                std::fs::write(&path, content)?;
            }
            Ok(())
        };
        file("/dev/watchdog", b"")?;
        file("/dev/input/event0", b"")?;
        for name in [&sim.profile.leds.status, &sim.profile.leds.activity].into_iter().flatten() {
            let dir = format!("/sys/class/leds/{name}");
            file(&format!("{dir}/brightness"), b"0")?;
            file(&format!("{dir}/max_brightness"), b"1")?;
            file(&format!("{dir}/trigger"), b"none")?;
        }
        file("/proc/device-tree/serial-number", format!("{SERIAL}\0").as_bytes())?;
        file("/proc/device-tree/model", b"gatewayd sim board\0")?;
        file("/sys/class/thermal/thermal_zone0/temp", b"42000\n")?;
        file("/sys/devices/platform/soc/soc:firmware/get_throttled", b"0x0\n")?;
        file("/boot/gatewayd.env", b"")?;
        for slot in ["/dev/sim-slot-a", "/dev/sim-slot-b", "/dev/sim-data"] {
            file(slot, b"")?;
        }
        Ok(sim)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The board, as gatewayd opens it with `[board] profile = "sim"`, `root` = this directory.
    pub fn board(&self) -> Board {
        Board::new(self.profile.clone(), &self.root)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Everything written to the watchdog so far: one `k` per kick, `V` at a clean close.
    pub fn watchdog_log(&self) -> String {
        std::fs::read_to_string(self.path("/dev/watchdog")).unwrap_or_default()
    }

    /// An LED (`"status"` or `"activity"`): trigger, brightness, and the timer's on/off delays
    /// while the trigger is `timer`.
    pub fn led(&self, which: &str) -> (String, String, Option<(u32, u32)>) {
        let name = match which {
            "status" => self.profile.leds.status.as_deref(),
            _ => self.profile.leds.activity.as_deref(),
        }
        .unwrap_or_default();
        let read = |f: &str| {
            std::fs::read_to_string(self.path(&format!("/sys/class/leds/{name}/{f}")))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let trigger = read("trigger");
        let delays = (trigger == "timer")
            .then(|| Some((read("delay_on").parse().ok()?, read("delay_off").parse().ok()?)))
            .flatten();
        (trigger, read("brightness"), delays)
    }

    /// Presses (`true`) or releases the button.
    pub fn button(&self, pressed: bool) -> io::Result<()> {
        let crate::profile::ButtonProfile::InputEvent { key_code, .. } = self.profile.button else {
            return Err(io::Error::other("the sim profile has an input-event button"));
        };
        let mut f =
            std::fs::OpenOptions::new().append(true).open(self.path("/dev/input/event0"))?;
        f.write_all(&encode_input_event(key_code, pressed))
    }

    pub fn set_temperature_millis(&self, milli: i64) {
        let _ = std::fs::write(
            self.path("/sys/class/thermal/thermal_zone0/temp"),
            format!("{milli}\n"),
        );
    }

    pub fn set_throttled(&self, flags: u64) {
        let _ = std::fs::write(
            self.path("/sys/devices/platform/soc/soc:firmware/get_throttled"),
            format!("{flags:#x}\n"),
        );
    }
}
