//! The status and activity LEDs, through the LED class (`/sys/class/leds/<name>/`): a steady
//! light is trigger `none` with full brightness, a blink pattern is trigger `timer` with
//! `delay_on`/`delay_off` in milliseconds.
//!
//! | state | status LED | activity LED |
//! |---|---|---|
//! | booting | fast blink (100/100 ms) | off |
//! | cloud connected | on | off |
//! | cloud down, buffering | slow blink (1 s/1 s) | off |
//! | error | short flash (100 ms every second) | off |
//! | identify (status page, short press) | unchanged | blink (250/250 ms) |
//! | factory reset about to happen | fast flicker (50/50 ms) | fast flicker |

use std::{io, path::PathBuf};

use serde::Serialize;

use crate::Board;

/// What the status LED shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedState {
    Booting,
    CloudUp,
    CloudDown,
    Error,
}

/// One LED's look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    Off,
    On,
    Blink { on_ms: u32, off_ms: u32 },
}

/// The board's LEDs (either may be missing: then nothing is written for it).
#[derive(Clone, Debug)]
pub struct Leds {
    status: Option<PathBuf>,
    activity: Option<PathBuf>,
}

impl Leds {
    pub(crate) fn new(board: &Board) -> Self {
        let dir = |name: &Option<String>| {
            name.as_ref().map(|n| board.path(std::path::Path::new("/sys/class/leds")).join(n))
        };
        Self {
            status: dir(&board.profile.leds.status),
            activity: dir(&board.profile.leds.activity),
        }
    }

    /// Shows `state` on the status LED.
    pub fn show(&self, state: LedState) -> io::Result<()> {
        let look = match state {
            LedState::Booting => Look::Blink { on_ms: 100, off_ms: 100 },
            LedState::CloudUp => Look::On,
            LedState::CloudDown => Look::Blink { on_ms: 1000, off_ms: 1000 },
            LedState::Error => Look::Blink { on_ms: 100, off_ms: 900 },
        };
        set(self.status.as_ref(), look)
    }

    /// Starts or stops the identify blink on the activity LED.
    pub fn identify(&self, on: bool) -> io::Result<()> {
        set(
            self.activity.as_ref(),
            if on { Look::Blink { on_ms: 250, off_ms: 250 } } else { Look::Off },
        )
    }

    /// Both LEDs flicker: a factory reset is about to happen.
    pub fn confirm_reset(&self) -> io::Result<()> {
        let look = Look::Blink { on_ms: 50, off_ms: 50 };
        set(self.status.as_ref(), look)?;
        set(self.activity.as_ref(), look)
    }
}

fn set(dir: Option<&PathBuf>, look: Look) -> io::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let write = |file: &str, value: &str| std::fs::write(dir.join(file), value);
    match look {
        Look::Off => {
            write("trigger", "none")?;
            write("brightness", "0")
        }
        Look::On => {
            write("trigger", "none")?;
            let max = std::fs::read_to_string(dir.join("max_brightness"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|m| *m > 0)
                .unwrap_or(1);
            write("brightness", &max.to_string())
        }
        Look::Blink { on_ms, off_ms } => {
            // the timer trigger creates delay_on/delay_off; write them after it
            write("trigger", "timer")?;
            write("delay_on", &on_ms.to_string())?;
            write("delay_off", &off_ms.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sim::SimBoard;

    use super::*;

    #[test]
    fn states_are_written_as_triggers_and_delays() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let leds = sim.board().leds();
        leds.show(LedState::CloudUp).unwrap();
        assert_eq!(sim.led("status"), ("none".into(), "1".into(), None));
        leds.show(LedState::CloudDown).unwrap();
        assert_eq!(sim.led("status"), ("timer".into(), "1".into(), Some((1000, 1000))));
        leds.identify(true).unwrap();
        assert_eq!(sim.led("activity").2, Some((250, 250)));
        leds.identify(false).unwrap();
        assert_eq!(sim.led("activity"), ("none".into(), "0".into(), None));
    }
}
