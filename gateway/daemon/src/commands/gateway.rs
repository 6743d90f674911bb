//! Commands for the gateway itself (the cloud addresses them to `[gateway] name`):
//!
//! | command         | payload                                   | effect                                   |
//! |-----------------|-------------------------------------------|------------------------------------------|
//! | `resync`        | ignored                                   | lists the registry now                   |
//! | `set-log-level` | a filter directive: `debug`, `gw_store=trace,info` | replaces the log filter until restart |
//! | `reboot`        | ignored                                   | runs `[commands] reboot_command`, or stops gatewayd with a failure exit code for systemd to restart it |
//! | `update`        | a bundle's URL (text, or JSON `{"url": ...}`) | downloads, verifies and installs it into the inactive slot (`[update]`); tried at the next boot |
//!
//! Anything else is rejected, naming the commands there are.

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use gw_model::Command;
use tokio::sync::watch;

/// The names of the gateway's own commands.
pub const COMMANDS: [&str; 4] = ["resync", "set-log-level", "reboot", "update"];

/// How long a `reboot_command` may run before the command counts as carried out anyway.
const REBOOT_COMMAND_WAIT: Duration = Duration::from_secs(10);

/// What the gateway does for its own commands.
pub struct GatewayCommands {
    resync: OnceLock<gw_cloud_sync::ResyncHandle>,
    updater: OnceLock<std::sync::Arc<crate::update::Updater>>,
    reboot_command: Vec<String>,
    /// Set to true when `reboot` asks the daemon to stop for a restart.
    restart: watch::Sender<bool>,
    log_filter: Mutex<Option<String>>,
}

impl GatewayCommands {
    pub fn new(reboot_command: Vec<String>) -> Self {
        Self {
            resync: OnceLock::new(),
            updater: OnceLock::new(),
            reboot_command,
            restart: watch::Sender::new(false),
            log_filter: Mutex::new(None),
        }
    }

    /// Lets `resync` reach the registry sync.
    pub fn set_resync(&self, handle: gw_cloud_sync::ResyncHandle) {
        let _ = self.resync.set(handle);
    }

    /// The registry sync's resync handle, once attached.
    pub fn resync_handle(&self) -> Option<&gw_cloud_sync::ResyncHandle> {
        self.resync.get()
    }

    /// Lets `update` install bundles.
    pub fn set_updater(&self, updater: std::sync::Arc<crate::update::Updater>) {
        let _ = self.updater.set(updater);
    }

    /// Resolves to true once `reboot` asked the daemon to restart.
    pub fn restart_requested(&self) -> watch::Receiver<bool> {
        self.restart.subscribe()
    }

    /// The log filter a `set-log-level` command installed, if any.
    pub fn log_filter(&self) -> Option<String> {
        self.log_filter.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Carries out `command`; `Err(reason)` when it is unknown or cannot be done.
    pub async fn handle(&self, command: &Command) -> Result<(), String> {
        match command.name.as_str() {
            "resync" => match self.resync.get() {
                Some(handle) => {
                    handle.resync();
                    Ok(())
                }
                None => Err("no [registry] is configured: nothing to resync".into()),
            },
            "set-log-level" => {
                let directive = std::str::from_utf8(&command.payload)
                    .map_err(|_| "the payload must be a UTF-8 filter directive".to_owned())?;
                let directive = directive.trim().trim_matches('"').trim();
                if directive.is_empty() {
                    return Err("the payload must name a level or filter, e.g. \"debug\"".into());
                }
                crate::logging::set_filter(directive)?;
                *self.log_filter.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(directive.to_owned());
                tracing::warn!(filter = directive, "log filter changed by a gateway command");
                Ok(())
            }
            "reboot" => self.reboot().await,
            "update" => {
                let updater = self
                    .updater
                    .get()
                    .ok_or("no [update] is configured: this gateway takes no updates")?;
                let url = bundle_url(&command.payload)?;
                tracing::warn!(%url, "update requested by a gateway command");
                let done = updater.install_url(&url).await?;
                tracing::warn!(slot = %done.slot, version = %done.version, "update installed; tried at the next boot");
                Ok(())
            }
            other => Err(format!(
                "unknown gateway command '{other}' (known: resync, set-log-level, reboot, update)"
            )),
        }
    }

    async fn reboot(&self) -> Result<(), String> {
        let Some((program, args)) = self.reboot_command.split_first() else {
            tracing::warn!("reboot requested by a gateway command: stopping for a restart");
            self.restart.send_replace(true);
            return Ok(());
        };
        tracing::warn!(command = ?self.reboot_command, "reboot requested by a gateway command");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("cannot run reboot command {program}: {e}"))?;
        match tokio::time::timeout(REBOOT_COMMAND_WAIT, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("reboot command {program} failed: {status}")),
            Ok(Err(e)) => Err(format!("reboot command {program}: {e}")),
            // still running (a reboot takes its time): it was started
            Err(_) => Ok(()),
        }
    }
}

/// The `update` command's URL: the payload as text, or a JSON object's `url`.
fn bundle_url(payload: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload must be a URL".to_owned())?;
    let text = text.trim();
    let url = if text.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the payload is not JSON: {e}"))?;
        v.get("url").and_then(|u| u.as_str()).ok_or("the JSON payload has no \"url\"")?.to_owned()
    } else {
        text.trim_matches('"').to_owned()
    };
    if url.is_empty() {
        return Err("the payload must be the bundle's URL".into());
    }
    Ok(url)
}
