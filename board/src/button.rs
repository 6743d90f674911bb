//! The user button: presses and releases from an input event device (gpio-keys) or a polled
//! sysfs GPIO line, and the logic that turns them into actions: a short press toggles
//! identify, a 10 s hold asks for a factory reset.

use std::{fs::File, io::Read, path::PathBuf, time::Duration};

use tokio::{sync::mpsc, time::Instant};

use crate::{Board, profile::ButtonProfile};

/// A press is short when released within this.
pub const SHORT_PRESS: Duration = Duration::from_secs(2);
/// Holding this long asks for a factory reset.
pub const RESET_HOLD: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonEvent {
    Pressed,
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonAction {
    /// Toggle the identify blink.
    Identify,
    /// The button was held for [`RESET_HOLD`].
    FactoryReset,
}

/// Turns presses and releases (with their times) into actions. Pure: time comes in as an
/// argument, and [`deadline`](Self::deadline) tells when [`tick`](Self::tick) must run.
#[derive(Debug, Default)]
pub struct ButtonLogic {
    pressed_at: Option<Instant>,
    /// The hold already triggered a reset; the release does nothing more.
    fired: bool,
}

impl ButtonLogic {
    pub fn event(&mut self, event: ButtonEvent, now: Instant) -> Option<ButtonAction> {
        match event {
            ButtonEvent::Pressed => {
                if self.pressed_at.is_none() {
                    self.pressed_at = Some(now);
                    self.fired = false;
                }
                None
            }
            ButtonEvent::Released => {
                let at = self.pressed_at.take()?;
                if self.fired {
                    return None;
                }
                let held = now.saturating_duration_since(at);
                if held >= RESET_HOLD {
                    // the tick was late: the hold still counts
                    return Some(ButtonAction::FactoryReset);
                }
                (held < SHORT_PRESS).then_some(ButtonAction::Identify)
            }
        }
    }

    /// When a held button reaches the reset hold.
    pub fn deadline(&self) -> Option<Instant> {
        self.pressed_at.filter(|_| !self.fired).map(|t| t + RESET_HOLD)
    }

    pub fn tick(&mut self, now: Instant) -> Option<ButtonAction> {
        let due = self.deadline().is_some_and(|d| now >= d);
        if due {
            self.fired = true;
            return Some(ButtonAction::FactoryReset);
        }
        None
    }
}

/// Where the button is read from.
#[derive(Clone, Debug)]
enum Source {
    InputEvent { path: PathBuf, key_code: u16 },
    Gpio { value: PathBuf, active_low: bool },
}

/// `struct input_event` (linux/input.h): a timeval (two longs), type u16, code u16, value i32.
#[cfg(target_pointer_width = "64")]
pub const INPUT_EVENT_SIZE: usize = 24;
#[cfg(not(target_pointer_width = "64"))]
pub const INPUT_EVENT_SIZE: usize = 16;
const EV_KEY: u16 = 1;

/// Decodes one `struct input_event` record: a key press or release of `key_code`, if it is one
/// (auto-repeat, value 2, is not a new press).
pub fn decode_input_event(record: &[u8], key_code: u16) -> Option<ButtonEvent> {
    let tail = record.get(INPUT_EVENT_SIZE - 8..INPUT_EVENT_SIZE)?;
    let kind = u16::from_ne_bytes([tail[0], tail[1]]);
    let code = u16::from_ne_bytes([tail[2], tail[3]]);
    let value = i32::from_ne_bytes([tail[4], tail[5], tail[6], tail[7]]);
    if kind != EV_KEY || code != key_code {
        return None;
    }
    match value {
        1 => Some(ButtonEvent::Pressed),
        0 => Some(ButtonEvent::Released),
        _ => None,
    }
}

/// Encodes a key event as the kernel writes it (for the sim board and tests).
pub fn encode_input_event(key_code: u16, pressed: bool) -> Vec<u8> {
    let mut r = vec![0u8; INPUT_EVENT_SIZE - 8];
    r.extend_from_slice(&EV_KEY.to_ne_bytes());
    r.extend_from_slice(&key_code.to_ne_bytes());
    r.extend_from_slice(&i32::from(pressed).to_ne_bytes());
    r
}

/// How often a GPIO line (or an input file at its end) is read again.
const POLL: Duration = Duration::from_millis(50);

impl Board {
    /// Starts reading the button on a thread of its own; its presses and releases arrive on the
    /// returned channel. `None` when the board has no button.
    pub fn button(&self) -> Option<mpsc::Receiver<ButtonEvent>> {
        let source = match &self.profile.button {
            ButtonProfile::None => return None,
            ButtonProfile::InputEvent { device, key_code } => {
                Source::InputEvent { path: self.path(device), key_code: *key_code }
            }
            ButtonProfile::Gpio { line, active_low } => Source::Gpio {
                value: self
                    .path(std::path::Path::new(&format!("/sys/class/gpio/gpio{line}/value"))),
                active_low: *active_low,
            },
        };
        let (tx, rx) = mpsc::channel(16);
        let spawned = std::thread::Builder::new()
            .name("button".into())
            .spawn(move || read_button(source, tx));
        if let Err(e) = spawned {
            tracing::warn!(cause = %e, "cannot start the button reader");
        }
        Some(rx)
    }
}

fn read_button(source: Source, tx: mpsc::Sender<ButtonEvent>) {
    match source {
        Source::InputEvent { path, key_code } => {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), cause = %e, "cannot open the button device; no button");
                    return;
                }
            };
            let mut buf = Vec::with_capacity(INPUT_EVENT_SIZE * 8);
            let mut chunk = [0u8; INPUT_EVENT_SIZE * 8];
            while !tx.is_closed() {
                match file.read(&mut chunk) {
                    // a device blocks; a plain file (sim board) ends: look again shortly
                    Ok(0) => std::thread::sleep(POLL),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        let whole = buf.len() - buf.len() % INPUT_EVENT_SIZE;
                        for record in buf[..whole].chunks(INPUT_EVENT_SIZE) {
                            if let Some(ev) = decode_input_event(record, key_code)
                                && tx.blocking_send(ev).is_err()
                            {
                                return;
                            }
                        }
                        buf.drain(..whole);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), cause = %e, "button device read failed; no button");
                        return;
                    }
                }
            }
        }
        Source::Gpio { value, active_low } => {
            let mut last = None;
            while !tx.is_closed() {
                if let Ok(s) = std::fs::read_to_string(&value) {
                    let high = s.trim() == "1";
                    let pressed = high != active_low;
                    if last != Some(pressed) {
                        if last.is_some() || pressed {
                            let ev =
                                if pressed { ButtonEvent::Pressed } else { ButtonEvent::Released };
                            if tx.blocking_send(ev).is_err() {
                                return;
                            }
                        }
                        last = Some(pressed);
                    }
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_other_keys_and_repeats_are_ignored() {
        let r = encode_input_event(148, true);
        assert_eq!(r.len(), INPUT_EVENT_SIZE);
        assert_eq!(decode_input_event(&r, 148), Some(ButtonEvent::Pressed));
        assert_eq!(
            decode_input_event(&encode_input_event(148, false), 148),
            Some(ButtonEvent::Released)
        );
        assert_eq!(decode_input_event(&r, 116), None);
        let mut repeat = r.clone();
        let n = repeat.len();
        repeat[n - 4..].copy_from_slice(&2i32.to_ne_bytes());
        assert_eq!(decode_input_event(&repeat, 148), None);
        assert_eq!(decode_input_event(&r[..10], 148), None);
    }

    #[test]
    fn short_press_identifies_long_hold_resets_once_and_middle_does_nothing() {
        let t0 = Instant::now();
        let mut b = ButtonLogic::default();
        assert_eq!(b.event(ButtonEvent::Pressed, t0), None);
        assert_eq!(
            b.event(ButtonEvent::Released, t0 + Duration::from_millis(300)),
            Some(ButtonAction::Identify)
        );

        b.event(ButtonEvent::Pressed, t0);
        assert_eq!(b.event(ButtonEvent::Released, t0 + Duration::from_secs(5)), None);

        b.event(ButtonEvent::Pressed, t0);
        assert_eq!(b.deadline(), Some(t0 + RESET_HOLD));
        assert_eq!(b.tick(t0 + Duration::from_secs(9)), None);
        assert_eq!(b.tick(t0 + RESET_HOLD), Some(ButtonAction::FactoryReset));
        assert_eq!(b.deadline(), None);
        assert_eq!(b.tick(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.event(ButtonEvent::Released, t0 + Duration::from_secs(12)), None);
    }
}
