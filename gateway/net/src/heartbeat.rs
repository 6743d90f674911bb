//! An accept loop's sign of life. The loop [`beat`](Heartbeat::beat)s on every turn and at
//! least every [`Heartbeat::EVERY`] while idle; the watchdog's probe
//! [`check`](Heartbeat::check)s it. A loop that is busy under a flood still turns (each accept
//! is a turn), so it stays healthy; one that ended without being told to, or has not turned for
//! longer than the probe allows, is not.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const DIED: u8 = 2;

/// Shared between an accept loop and its probe. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Heartbeat(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    name: &'static str,
    epoch: Instant,
    /// Milliseconds since `epoch` at the last beat.
    last: AtomicU64,
    state: AtomicU8,
}

/// Marks its heartbeat dead when dropped before [`LoopGuard::stopped`]: a loop that returns
/// early, or panics, is noticed.
pub struct LoopGuard(Heartbeat);

impl Heartbeat {
    /// How often an idle loop should beat.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// The heartbeat of the loop called `name` (as shown and logged: `mqtt`, `web`, ...).
    pub fn new(name: &'static str) -> Self {
        Self(Arc::new(Inner {
            name,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
        }))
    }

    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// One turn of the loop.
    pub fn beat(&self) {
        let ms = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last.store(ms, Ordering::Relaxed);
    }

    /// Taken by the loop when it starts: see [`LoopGuard`].
    pub fn guard(&self) -> LoopGuard {
        self.0.state.store(RUNNING, Ordering::Relaxed);
        self.beat();
        LoopGuard(self.clone())
    }

    /// `Ok` while the loop runs and has turned within `max_silence`, or stopped on request.
    pub fn check(&self, max_silence: Duration) -> Result<(), String> {
        match self.0.state.load(Ordering::Relaxed) {
            STOPPED => Ok(()),
            DIED => Err(format!("the {} accept loop has stopped", self.0.name)),
            _ => {
                let last = Duration::from_millis(self.0.last.load(Ordering::Relaxed));
                let silent = self.0.epoch.elapsed().saturating_sub(last);
                if silent > max_silence {
                    Err(format!(
                        "the {} accept loop has not run for {} s",
                        self.0.name,
                        silent.as_secs()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether the loop is running (not stopped, not dead).
    pub fn is_running(&self) -> bool {
        self.0.state.load(Ordering::Relaxed) == RUNNING
    }
}

impl LoopGuard {
    /// The loop ends because it was told to (shutdown).
    pub fn stopped(self) {
        self.0.0.state.store(STOPPED, Ordering::Relaxed);
        std::mem::forget(self);
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.0.state.store(DIED, Ordering::Relaxed);
        tracing::error!(listener = self.0.0.name, "accept loop ended unexpectedly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_beats_is_healthy_one_that_is_silent_or_gone_is_not() {
        let hb = Heartbeat::new("mqtt");
        let guard = hb.guard();
        assert!(hb.check(Duration::from_secs(5)).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        let err = hb.check(Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("mqtt accept loop has not run"), "{err}");
        hb.beat();
        assert!(hb.check(Duration::from_millis(10)).is_ok());
        drop(guard);
        assert_eq!(
            hb.check(Duration::from_secs(5)).unwrap_err(),
            "the mqtt accept loop has stopped"
        );
        let guard = hb.guard();
        guard.stopped();
        assert!(hb.check(Duration::ZERO).is_ok(), "a loop stopped on request is not a fault");
        assert!(!hb.is_running());
    }
}
