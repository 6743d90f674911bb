//! Updates on the gateway (`[update]`, docs/updating.md): signed bundles installed into the
//! inactive slot (`gatewayd update install`, the cloud's `update` gateway command with a URL,
//! an upload on the status page), and the health gate that marks the booted slot good once the
//! gateway has been healthy for `healthy_after` (every component answers its probe, and the
//! cloud link is up or the start is `cloud_grace` ago). A slot on trial that never gets there is not marked, so the boot loader
//! falls back to the good slot at the next reset.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use gw_board::Board;
use gw_image::{
    Bundle, HealthGate, ImageError, InstallOptions, Installed, Keyring, SlotSystem,
    bootenv::{self, ToolPath},
    slots::MarkGood,
};
use gw_model::serde_util::ByteSize;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::board::Probe;

/// `[update]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The directory of trusted public keys (`*.pub`).
    #[serde(default = "default_keyring")]
    pub keyring: PathBuf,
    /// How long the gateway must be healthy without a break before the booted slot is marked
    /// good.
    #[serde(default = "default_healthy_after", with = "gw_model::serde_util::duration")]
    pub healthy_after: Duration,
    /// After this long since the start, a cloud link that is down no longer holds the mark-good
    /// back (a site may be offline on purpose); before it, the link must be up.
    #[serde(default = "default_cloud_grace", with = "gw_model::serde_util::duration")]
    pub cloud_grace: Duration,
    /// The largest bundle the `update` command downloads or the status page accepts.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: ByteSize,
}

fn default_keyring() -> PathBuf {
    PathBuf::from("/etc/gatewayd/keys")
}
fn default_healthy_after() -> Duration {
    Duration::from_secs(300)
}
fn default_cloud_grace() -> Duration {
    Duration::from_secs(600)
}
fn default_max_bundle_bytes() -> ByteSize {
    ByteSize::new(2 << 30)
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            keyring: default_keyring(),
            healthy_after: default_healthy_after(),
            cloud_grace: default_cloud_grace(),
            max_bundle_bytes: default_max_bundle_bytes(),
        }
    }
}

/// The gateway's updater: its slots, keyring and download place; one install at a time.
#[derive(Debug)]
pub struct Updater {
    slots: SlotSystem,
    config: UpdateConfig,
    download_dir: PathBuf,
    busy: Arc<tokio::sync::Mutex<()>>,
    last: Mutex<serde_json::Value>,
}

/// The one bundle being received and installed: holds the updater's lock, and removes the
/// bundle file when dropped (also when the client that sent it goes away half-way).
#[derive(Debug)]
pub struct Staging {
    file: PathBuf,
    _busy: tokio::sync::OwnedMutexGuard<()>,
}

impl Staging {
    /// Where the bundle is written.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Creates (or truncates) the bundle file, and its directory if needed.
    pub async fn create(&self) -> std::io::Result<tokio::fs::File> {
        if let Some(dir) = self.file.parent() {
            tokio::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).await?;
        }
        tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.file)
            .await
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // unlink only; runs before the lock is released
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Why a staged bundle was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The updater refused it (signature, board, version, image hash) or could not write it.
    #[error(transparent)]
    Refused(#[from] ImageError),
    #[error("the install task ended abnormally: {0}")]
    Aborted(String),
}

impl Updater {
    pub fn new(board: Board, config: UpdateConfig, data_dir: &Path) -> Self {
        let env = bootenv::for_board(&board, ToolPath::default());
        Self {
            slots: SlotSystem::new(board, env),
            config,
            download_dir: data_dir.join("update"),
            busy: Arc::new(tokio::sync::Mutex::new(())),
            last: Mutex::new(serde_json::Value::Null),
        }
    }

    pub fn slots(&self) -> &SlotSystem {
        &self.slots
    }

    /// `[update] max_bundle_bytes`.
    pub fn max_bundle_bytes(&self) -> u64 {
        self.config.max_bundle_bytes.bytes()
    }

    /// Starts receiving a bundle (into the data directory's `update/`); `None` while another
    /// one is received or installed.
    pub fn try_stage(&self) -> Option<Staging> {
        let busy = Arc::clone(&self.busy).try_lock_owned().ok()?;
        Some(Staging { file: self.download_dir.join("incoming.bundle"), _busy: busy })
    }

    /// Verifies and installs a bundle file (blocking: run it off the async threads).
    pub fn install_file(&self, bundle: &Path, force: bool) -> Result<Installed, ImageError> {
        let result = Keyring::load(&self.config.keyring).and_then(|keyring| {
            Bundle::open(bundle, &keyring)
                .and_then(|b| self.slots.install(&b, &InstallOptions { allow_downgrade: force }))
        });
        let note = match &result {
            Ok(done) => json!({"outcome": "installed", "slot": done.slot.to_string(),
                               "version": done.version.to_string()}),
            Err(e) => json!({"outcome": "refused", "reason": e.to_string()}),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = note;
        result
    }

    /// Installs a received bundle on a blocking thread, which keeps the lock and removes the
    /// file when done even if the caller stops waiting.
    pub async fn install_staged(
        self: &Arc<Self>,
        staging: Staging,
        force: bool,
    ) -> Result<Installed, InstallError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let result = me.install_file(staging.path(), force);
            drop(staging);
            result
        })
        .await
        .map_err(|e| InstallError::Aborted(e.to_string()))?
        .map_err(InstallError::from)
    }

    /// Downloads a bundle from `url` (at most `max_bundle_bytes`) into the data directory and
    /// installs it.
    pub async fn install_url(self: &Arc<Self>, url: &str) -> Result<Installed, String> {
        let staging = self.try_stage().ok_or("an update is already being installed")?;
        let url: reqwest::Url = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{url}: only http and https URLs"));
        }
        self.download(&url, &staging).await?;
        self.install_staged(staging, false).await.map_err(|e| format!("{e:#}"))
    }

    async fn download(&self, url: &reqwest::Url, staging: &Staging) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        let max = self.config.max_bundle_bytes.bytes();
        if response.content_length().is_some_and(|l| l > max) {
            return Err(format!("{url}: larger than [update] max_bundle_bytes ({max} bytes)"));
        }
        let file = staging.path();
        let mut out =
            staging.create().await.map_err(|e| format!("cannot create {}: {e}", file.display()))?;
        let mut total = 0u64;
        while let Some(chunk) =
            response.chunk().await.map_err(|e| format!("download of {url} broke off: {e}"))?
        {
            total += chunk.len() as u64;
            if total > max {
                return Err(format!("{url}: larger than [update] max_bundle_bytes ({max} bytes)"));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        }
        out.sync_all().await.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(())
    }

    /// The `update` section of `/api/v1/status`.
    pub fn snapshot(&self) -> serde_json::Value {
        let state = self.slots.state().map_or_else(|e| format!("unknown: {e}"), |s| s.to_string());
        let version = |s| self.slots.version(s).ok().flatten().map(|v| v.to_string());
        json!({
            "state": state,
            "booted": self.slots.booted().ok().map(|s| s.to_string()),
            "running_version": self.slots.running_version(),
            "version_a": version(gw_image::Slot::A),
            "version_b": version(gw_image::Slot::B),
            "last_install": *self.last.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }
}

/// Marks the booted slot good once every probe has passed and the cloud link has been up (or
/// the start is `cloud_grace` ago) for `healthy_after` without a break; then waits for `stop`.
/// `now` is tokio's clock, so tests run it with paused time.
pub async fn run_mark_good(
    updater: Arc<Updater>,
    probes: Vec<Box<dyn Probe>>,
    cloud_up: impl Fn() -> bool + Send + 'static,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (healthy_after, grace) = (updater.config.healthy_after, updater.config.cloud_grace);
    let started = tokio::time::Instant::now();
    let mut gate = HealthGate::new(healthy_after);
    match updater.slots.state() {
        Ok(state) => tracing::info!(%state, healthy_after = ?healthy_after, "slots"),
        Err(e) => tracing::warn!(cause = %e, "cannot read the boot loader environment"),
    }
    let mut tick = tokio::time::interval(
        Duration::from_secs(1).min(healthy_after.max(Duration::from_millis(10))),
    );
    while !gate.passed() {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            now = tick.tick() => {
                let mut healthy = cloud_up() || now.duration_since(started) >= grace;
                for p in &probes {
                    if !healthy {
                        break;
                    }
                    healthy = p.check().await.is_ok();
                }
                if gate.observe(now.into_std(), healthy) {
                    let me = Arc::clone(&updater);
                    match tokio::task::spawn_blocking(move || me.slots.mark_good()).await? {
                        Ok(MarkGood::Marked(slot)) => tracing::info!(%slot, "slot marked good"),
                        Ok(MarkGood::ClearedFailedTry { booted, failed }) => tracing::warn!(
                            %booted, %failed,
                            "slot {failed} was tried and never became healthy; running {booted}"
                        ),
                        Ok(MarkGood::AlreadyGood(_)) => {}
                        Err(e) => tracing::error!(cause = %e, "cannot mark the booted slot good"),
                    }
                }
            }
        }
    }
    stop.cancelled().await;
    Ok(())
}

/// `gatewayd update ...`.
#[derive(clap::Subcommand, Debug)]
pub enum UpdateCommand {
    /// Verify a bundle and install it into the inactive slot; it is tried at the next boot.
    Install {
        bundle: PathBuf,
        /// Allow a version older than the booted one.
        #[arg(long)]
        force: bool,
    },
    /// The slots: booted, on trial or good, versions.
    Status,
}

pub fn cli(config_path: &Path, command: UpdateCommand) -> ExitCode {
    match execute(config_path, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayd update: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The updater of a loaded config: `[board]` for the slots, `[update]` (or its defaults).
pub fn updater_of(config: &crate::config::Config) -> anyhow::Result<Updater> {
    let board_config = config
        .board
        .as_ref()
        .context("updates need a [board] section (its slots and boot loader)")?;
    let board = Board::select(board_config).context("cannot open the board")?;
    Ok(Updater::new(board, config.update.clone().unwrap_or_default(), &config.gateway.data_dir))
}

fn execute(config_path: &Path, command: UpdateCommand) -> anyhow::Result<()> {
    let loaded = crate::config::Config::load(config_path)?;
    let updater = updater_of(&loaded.config)?;
    match command {
        UpdateCommand::Install { bundle, force } => {
            let done = updater
                .install_file(&bundle, force)
                .with_context(|| format!("refusing {}", bundle.display()))?;
            println!(
                "installed {} into slot {} ({} bytes); it is tried at the next boot",
                done.version, done.slot, done.bytes
            );
        }
        UpdateCommand::Status => {
            println!("{}", serde_json::to_string_pretty(&updater.snapshot())?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::commands::gateway::GatewayCommands;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/tests/fixtures")
    }

    fn command(payload: &str) -> gw_model::Command {
        gw_model::Command {
            app: gw_model::AppId::new("app").unwrap(),
            device: gw_model::DeviceId::new("gw1").unwrap(),
            name: gw_model::CommandName::new("update").unwrap(),
            content_type: None,
            payload: payload.to_owned().into_bytes().into(),
            created_at: gw_model::Timestamp::from_millis(0),
            expires_at: None,
        }
    }

    /// Serves the fixture bundles over HTTP on 127.0.0.1.
    async fn serve() -> String {
        let file = |name: &str| std::fs::read(fixtures().join(name)).unwrap();
        let (good, bad) = (file("good.bundle"), file("bad-signature.bundle"));
        let app = axum::Router::new()
            .route("/good.bundle", axum::routing::get(move || async move { good }))
            .route("/bad.bundle", axum::routing::get(move || async move { bad }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_update_command_downloads_verifies_and_installs() {
        let dir = tempfile::tempdir().unwrap();
        let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
        let base = serve().await;
        let commands = GatewayCommands::new(Vec::new());
        let e = commands.handle(&command(&format!("{base}/good.bundle"))).await.unwrap_err();
        assert!(e.contains("no [update] is configured"), "{e}");

        let config = UpdateConfig { keyring: fixtures().join("keyring"), ..Default::default() };
        let updater = Arc::new(Updater::new(sim.board(), config, &dir.path().join("data")));
        commands.set_updater(Arc::clone(&updater));
        let e = commands.handle(&command(&format!("{base}/bad.bundle"))).await.unwrap_err();
        assert!(e.contains("bad signature"), "{e}");
        let e = commands.handle(&command(&format!("{base}/missing.bundle"))).await.unwrap_err();
        assert!(e.contains("404"), "{e}");
        let e = commands.handle(&command("file:///etc/passwd")).await.unwrap_err();
        assert!(e.contains("only http and https"), "{e}");
        let e = commands.handle(&command("")).await.unwrap_err();
        assert!(e.contains("the bundle's URL"), "{e}");
        assert_eq!(updater.snapshot()["last_install"]["outcome"], "refused");

        let json = format!("{{\"url\": \"{base}/good.bundle\"}}");
        commands.handle(&command(&json)).await.unwrap();
        let slot_b = std::fs::read(sim.root().join("dev/sim-slot-b")).unwrap();
        assert_eq!(slot_b, std::fs::read(fixtures().join("rootfs.img")).unwrap());
        let snapshot = updater.snapshot();
        assert_eq!(snapshot["running_version"], serde_json::Value::Null, "no release file");
        assert_eq!(snapshot["last_install"]["version"], "1.1.0");
        assert_eq!(snapshot["version_b"], "1.1.0");
        assert!(!dir.path().join("data/update/incoming.bundle").exists(), "download removed");
    }

    #[test]
    fn the_running_version_comes_from_the_release_file() {
        let dir = tempfile::tempdir().unwrap();
        let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
        let release = sim.root().join("etc/gatewayd/release");
        std::fs::create_dir_all(release.parent().unwrap()).unwrap();
        std::fs::write(&release, "NAME=gatewayd\nVERSION=\"1.2.3\"\n").unwrap();
        let updater = Updater::new(sim.board(), UpdateConfig::default(), dir.path());
        let snapshot = updater.snapshot();
        assert_eq!(snapshot["running_version"], "1.2.3", "{snapshot}");
        assert_eq!(snapshot["booted"], "A", "{snapshot}");
    }

    #[tokio::test]
    async fn a_bundle_over_the_size_limit_is_not_downloaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
        let base = serve().await;
        let config = UpdateConfig {
            keyring: fixtures().join("keyring"),
            max_bundle_bytes: ByteSize::new(1000),
            ..Default::default()
        };
        let updater = Arc::new(Updater::new(sim.board(), config, &dir.path().join("data")));
        let e = updater.install_url(&format!("{base}/good.bundle")).await.unwrap_err();
        assert!(e.contains("larger than [update] max_bundle_bytes"), "{e}");
        assert!(std::fs::read(sim.root().join("dev/sim-slot-b")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_bundle_is_staged_at_a_time_and_its_file_removed() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
        let config = UpdateConfig { keyring: fixtures().join("keyring"), ..Default::default() };
        let updater = Arc::new(Updater::new(sim.board(), config, &dir.path().join("data")));
        let staging = updater.try_stage().unwrap();
        assert!(updater.try_stage().is_none(), "busy while one is staged");
        let e = updater.install_url("http://127.0.0.1:9/x.bundle").await.unwrap_err();
        assert!(e.contains("already being installed"), "{e}");
        staging.create().await.unwrap().write_all(b"not a bundle").await.unwrap();
        let file = staging.path().to_owned();
        assert!(file.exists());
        let e = updater.install_staged(staging, false).await.unwrap_err();
        assert!(matches!(e, InstallError::Refused(ImageError::NotABundle { .. })), "{e}");
        assert!(!file.exists(), "removed after the install");
        let staging = updater.try_stage().expect("free again");
        staging.create().await.unwrap();
        drop(staging);
        assert!(!file.exists(), "removed when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn mark_good_waits_for_the_cloud_or_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
        let config = UpdateConfig {
            keyring: fixtures().join("keyring"),
            healthy_after: Duration::from_secs(60),
            cloud_grace: Duration::from_secs(600),
            ..Default::default()
        };
        let updater = Arc::new(Updater::new(sim.board(), config, &dir.path().join("data")));
        let bundle = Bundle::open(
            &fixtures().join("good.bundle"),
            &Keyring::load(&fixtures().join("keyring")).unwrap(),
        )
        .unwrap();
        updater.slots().install(&bundle, &InstallOptions::default()).unwrap();
        assert_eq!(updater.slots().boot_step().unwrap(), gw_image::Slot::B);
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(run_mark_good(Arc::clone(&updater), Vec::new(), || false, stop.clone()));
        // Within the grace, the cloud link is down: on trial all along.
        tokio::time::sleep(Duration::from_secs(599)).await;
        assert!(matches!(updater.slots().state().unwrap(), gw_image::BootState::Trying { .. }));
        // Grace over, then healthy_after of health: marked good.
        tokio::time::sleep(Duration::from_secs(70)).await;
        for _ in 0..100 {
            if matches!(updater.slots().state().unwrap(), gw_image::BootState::Good { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            updater.slots().state().unwrap(),
            gw_image::BootState::Good { booted: gw_image::Slot::B }
        );
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
