//! The board at runtime (`[board]`): the hardware watchdog (and systemd's) kicked only while
//! every component answers its health probe, the LEDs following the cloud link, the button
//! (short press: identify; 10 s hold: factory reset), and the board's readings for the status
//! page and `/metrics`.
//!
//! A factory reset is two-phase so nothing in use is deleted under a running component: the
//! button writes a marker into the data directory and stops the gateway (exit code 1, so the
//! service manager starts it again); the next start sees the marker and wipes the data
//! directory (outbox, command queue, credential snapshot, local accounts) before opening
//! anything.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use gw_board::{Board, ButtonAction, ButtonEvent, ButtonLogic, LedState, Leds, Watchdog};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// The file that asks the next start to wipe the data directory.
pub const FACTORY_RESET_MARKER: &str = "FACTORY-RESET";

/// A component's health probe: resolves `Ok` while the component works.
pub trait Probe: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// What the status page and `/metrics` show of the board.
#[derive(Debug)]
pub struct BoardStatus {
    board: Board,
    serial: Option<String>,
    slot: Option<String>,
    watchdog: Mutex<String>,
    leds: Mutex<LedState>,
    identify: AtomicBool,
}

impl BoardStatus {
    pub fn new(board: Board) -> Self {
        let serial = board.serial();
        let slot = booted_slot(board.root());
        Self {
            board,
            serial,
            slot,
            watchdog: Mutex::new("not opened".into()),
            leds: Mutex::new(LedState::Booting),
            identify: AtomicBool::new(false),
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    fn set_watchdog(&self, state: impl Into<String>) {
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = state.into();
    }

    /// The `board` section of `/api/v1/status`.
    pub fn snapshot(&self) -> serde_json::Value {
        let health = self.board.health();
        json!({
            "profile": self.board.profile.name,
            "description": self.board.profile.description,
            "serial": self.serial,
            "slot": self.slot,
            "temperature_celsius": health.temperature_celsius,
            "throttled": health.throttled,
            "watchdog": *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()),
            "leds": *self.leds.lock().unwrap_or_else(|p| p.into_inner()),
            "identify": self.identify.load(Ordering::Relaxed),
        })
    }
}

/// The slot the system booted from: `gatewayd.slot=A|B` on the kernel command line (the
/// image's boot loader sets it).
fn booted_slot(root: &Path) -> Option<String> {
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).ok()?;
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("gatewayd.slot=")).map(str::to_owned)
}

/// Wipes the data directory if a factory reset was asked for; true when it did.
pub fn factory_reset_if_marked(data_dir: &Path) -> anyhow::Result<bool> {
    let marker = data_dir.join(FACTORY_RESET_MARKER);
    if !marker.exists() {
        return Ok(false);
    }
    tracing::warn!(dir = %data_dir.display(), "factory reset: wiping the data directory (outbox, command queue, credentials, local accounts)");
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        if path == marker {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    // last, so a reset cut short by a power loss is done again
    std::fs::remove_file(&marker)?;
    tracing::warn!("factory reset done");
    Ok(true)
}

/// Kicks `watchdog` (and systemd's watchdog, every `systemd` interval) while every probe passes;
/// once one has failed for `hang_timeout`, stops kicking and returns an error, which stops the
/// gateway. On `stop`, disarms the hardware watchdog (magic close).
pub async fn run_watchdog(
    mut watchdog: Option<Watchdog>,
    systemd: Option<Duration>,
    probes: Vec<Box<dyn Probe>>,
    hang_timeout: Duration,
    status: Option<Arc<BoardStatus>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let hw = watchdog.as_ref().map(Watchdog::interval);
    let Some(interval) = [hw, systemd].into_iter().flatten().min() else {
        stop.cancelled().await;
        return Ok(());
    };
    let note = |s: String| {
        if let Some(st) = &status {
            st.set_watchdog(s);
        }
    };
    note("kicking".into());
    let mut unhealthy_since: Option<(Instant, &'static str)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                if let Some(w) = watchdog.take() {
                    match w.close() {
                        Ok(()) => tracing::info!("hardware watchdog disarmed"),
                        Err(e) => tracing::warn!(cause = %e, "cannot disarm the hardware watchdog"),
                    }
                }
                note("closed".into());
                return Ok(());
            }
            () = tokio::time::sleep(interval) => {}
        }
        let mut failing = None;
        for probe in &probes {
            let result = match tokio::time::timeout(interval, probe.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {interval:?}")),
            };
            if let Err(cause) = result {
                failing = Some((probe.name(), cause));
                break;
            }
        }
        match failing {
            None => {
                if let Some((_, name)) = unhealthy_since.take() {
                    tracing::info!(component = name, "component healthy again; watchdog kicked");
                    note("kicking".into());
                }
                if let Some(w) = watchdog.as_mut()
                    && let Err(e) = w.kick()
                {
                    tracing::warn!(cause = %e, "cannot kick the hardware watchdog");
                }
                if systemd.is_some()
                    && let Err(e) = crate::sd_notify::notify_watchdog()
                {
                    tracing::warn!(cause = %e, "cannot notify systemd's watchdog");
                }
            }
            Some((name, cause)) => {
                let now = Instant::now();
                let (since, _) = *unhealthy_since.get_or_insert_with(|| {
                    tracing::warn!(component = name, cause = %cause, "component unhealthy; watchdog held");
                    (now, name)
                });
                note(format!("held: {name} unhealthy"));
                if now.duration_since(since) >= hang_timeout {
                    anyhow::bail!(
                        "component {name} unhealthy for {hang_timeout:?} ({cause}); the watchdog is no longer kicked"
                    );
                }
            }
        }
    }
}

/// Shows the cloud link on the status LED (checked every second) and the identify blink. With
/// `fault` (a refused provision.toml), the status LED shows the error pattern instead, whatever
/// the cloud link does.
pub async fn run_leds(
    leds: Leds,
    status: Arc<BoardStatus>,
    cloud_up: impl Fn() -> bool + Send + 'static,
    fault: bool,
    mut identify: mpsc::Receiver<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut shown = None;
    let mut identify_until: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            Some(d) = identify.recv() => {
                let on = identify_until.is_none() && !d.is_zero();
                identify_until = on.then(|| Instant::now() + d);
                if let Err(e) = leds.identify(on) {
                    tracing::warn!(cause = %e, "cannot set the activity LED");
                }
                status.identify.store(on, Ordering::Relaxed);
                tracing::info!(on, "identify");
            }
        }
        if identify_until.is_some_and(|u| Instant::now() >= u) {
            identify_until = None;
            let _ = leds.identify(false);
            status.identify.store(false, Ordering::Relaxed);
        }
        let state = if fault {
            LedState::Error
        } else if cloud_up() {
            LedState::CloudUp
        } else {
            LedState::CloudDown
        };
        if shown != Some(state) {
            if let Err(e) = leds.show(state) {
                tracing::warn!(cause = %e, "cannot set the status LED");
            }
            *status.leds.lock().unwrap_or_else(|p| p.into_inner()) = state;
            shown = Some(state);
        }
    }
}

/// Reads the button: a short press toggles identify (for `identify_for`), a 10 s hold shows the
/// confirmation pattern, marks the data directory for a factory reset and stops the gateway.
pub async fn run_button(
    mut events: mpsc::Receiver<ButtonEvent>,
    leds: Leds,
    identify: mpsc::Sender<Duration>,
    identify_for: Duration,
    data_dir: std::path::PathBuf,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut logic = ButtonLogic::default();
    loop {
        let deadline = logic.deadline();
        let action = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            ev = events.recv() => match ev {
                Some(ev) => logic.event(ev, Instant::now()),
                None => { stop.cancelled().await; return Ok(()); }
            },
            () = sleep_until(deadline) => logic.tick(Instant::now()),
        };
        match action {
            None => {}
            Some(ButtonAction::Identify) => {
                let _ = identify.send(identify_for).await;
            }
            Some(ButtonAction::FactoryReset) => {
                tracing::warn!(dir = %data_dir.display(), "button held 10 s: factory reset; the data directory is wiped at the next start");
                let _ = leds.confirm_reset();
                tokio::time::sleep(Duration::from_secs(3)).await;
                std::fs::write(data_dir.join(FACTORY_RESET_MARKER), b"requested by the button\n")?;
                anyhow::bail!("factory reset requested by the button; restart to apply");
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use gw_board::sim::SimBoard;

    use super::*;

    struct Flag(&'static str, Arc<AtomicBool>);
    impl Probe for Flag {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let healthy = self.1.load(Ordering::SeqCst);
            Box::pin(async move {
                if healthy {
                    Ok(())
                } else {
                    // a hung component: never answers
                    std::future::pending().await
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_kicked_while_healthy_and_not_once_a_component_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let watchdog = sim.board().watchdog().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let probes: Vec<Box<dyn Probe>> = vec![Box::new(Flag("uplink", healthy.clone()))];
        let status = Arc::new(BoardStatus::new(sim.board()));
        let task = tokio::spawn(run_watchdog(
            watchdog,
            None,
            probes,
            Duration::from_secs(10),
            Some(status.clone()),
            CancellationToken::new(),
        ));
        // sim timeout 3 s: a kick every second
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let kicks = sim.watchdog_log().len();
        assert_eq!(kicks, 5, "{:?}", sim.watchdog_log());
        assert_eq!(status.snapshot()["watchdog"], "kicking");

        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let held = sim.watchdog_log().len();
        assert!(held <= kicks + 1, "no kicks while a component hangs");
        assert_eq!(status.snapshot()["watchdog"], "held: uplink unhealthy");
        let result = tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap();
        let e = result.unwrap_err().to_string();
        assert!(e.contains("component uplink unhealthy"), "{e}");
        assert_eq!(sim.watchdog_log().len(), held, "never kicked again, never disarmed");
        assert!(!sim.watchdog_log().contains('V'));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_stop_disarms_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_watchdog(
            sim.board().watchdog().unwrap(),
            None,
            Vec::new(),
            Duration::from_secs(10),
            None,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(sim.watchdog_log(), "kkV");
    }

    #[tokio::test(start_paused = true)]
    async fn leds_follow_the_cloud_link_and_identify_blinks() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let status = Arc::new(BoardStatus::new(sim.board()));
        let (tx, rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let cloud = up.clone();
        tokio::spawn(run_leds(
            sim.board().leds(),
            status.clone(),
            move || cloud.load(Ordering::SeqCst),
            false,
            rx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sim.led("status").2, Some((1000, 1000)), "cloud down: slow blink");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(sim.led("status"), ("none".into(), "1".into(), None), "cloud up: on");
        assert_eq!(status.snapshot()["leds"], "cloud-up");
        tx.send(Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sim.led("activity").2, Some((250, 250)));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sim.led("activity").0, "none", "identify ends by itself");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_fault_shows_the_error_pattern_whatever_the_cloud_link_does() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let status = Arc::new(BoardStatus::new(sim.board()));
        let (tx, rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        tokio::spawn(run_leds(sim.board().leds(), status.clone(), || true, true, rx, stop.clone()));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(sim.led("status").2, Some((100, 900)), "error: short flash");
        assert_eq!(status.snapshot()["leds"], "error");
        tx.send(Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sim.led("activity").2, Some((250, 250)), "identify still works");
        assert_eq!(sim.led("status").2, Some((100, 900)));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_ten_second_hold_marks_a_factory_reset_and_a_short_press_identifies() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        let data = tempfile::tempdir().unwrap();
        let (events_tx, events) = mpsc::channel(8);
        let (identify_tx, mut identify) = mpsc::channel(8);
        let task = tokio::spawn(run_button(
            events,
            sim.board().leds(),
            identify_tx,
            Duration::from_secs(60),
            data.path().to_owned(),
            CancellationToken::new(),
        ));
        events_tx.send(ButtonEvent::Pressed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        events_tx.send(ButtonEvent::Released).await.unwrap();
        assert_eq!(identify.recv().await, Some(Duration::from_secs(60)));

        events_tx.send(ButtonEvent::Pressed).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!data.path().join(FACTORY_RESET_MARKER).exists(), "not before 10 s");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(sim.led("status").2, Some((50, 50)), "the confirmation pattern first");
        assert_eq!(sim.led("activity").2, Some((50, 50)));
        let e = task.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("factory reset"), "{e}");
        assert!(data.path().join(FACTORY_RESET_MARKER).exists());
    }

    #[test]
    fn a_marked_data_directory_is_wiped_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outbox")).unwrap();
        std::fs::write(dir.path().join("outbox/000001.seg"), b"x").unwrap();
        std::fs::write(dir.path().join("accounts.json"), b"{}").unwrap();
        assert!(!factory_reset_if_marked(dir.path()).unwrap());
        assert!(dir.path().join("accounts.json").exists());
        std::fs::write(dir.path().join(FACTORY_RESET_MARKER), b"").unwrap();
        assert!(factory_reset_if_marked(dir.path()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
