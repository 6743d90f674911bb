//! Builds the gateway from its configuration, top to bottom, in one place: open the state,
//! bind every listener, then hand each component to the supervisor.

use std::{net::SocketAddr, path::Path};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Loaded,
    supervisor::{Outcome, Supervisor},
    web::{self, Readiness, WebState},
};

/// A gateway whose listeners are bound and whose components are running.
pub struct Gateway {
    supervisor: Supervisor,
    web_addr: SocketAddr,
    grace: std::time::Duration,
}

impl Gateway {
    /// Opens the data directory, binds the listeners and starts the components.
    pub async fn start(loaded: Loaded, token: CancellationToken) -> anyhow::Result<Self> {
        let config = loaded.config;
        let readiness = Readiness::default();
        let web_bound = readiness.condition("web listener");
        let data_ready = readiness.condition("data directory");
        let state = WebState::new(
            config.gateway.name.to_string(),
            config.gateway.application.to_string(),
            readiness.clone(),
        );
        let mut supervisor = Supervisor::new(token);

        // 1. State on disk.
        prepare_data_dir(&config.gateway.data_dir)?;
        data_ready.set();

        // 2. Listeners.
        let listen = config.web.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind web listener on {listen}"))?;
        let web_addr = listener.local_addr().context("web listener has no local address")?;
        state.add_listener("web", web_addr);
        tracing::info!(listener = "web", addr = %web_addr, "listening");
        web_bound.set();

        // 3. Components.
        let app = web::router(state);
        let stop = supervisor.token().clone();
        supervisor.spawn("web", async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("web listener failed")
        });

        tracing::info!(
            gateway = %config.gateway.name,
            application = %config.gateway.application,
            devices = loaded.devices.len(),
            "gateway started"
        );
        Ok(Self { supervisor, web_addr, grace: config.gateway.shutdown_grace })
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    /// Adds a component (the demo's dev cloud and sensors run beside the gateway this way).
    pub fn supervisor(&mut self) -> &mut Supervisor {
        &mut self.supervisor
    }

    /// Runs until `stop` resolves or a component fails.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Outcome {
        self.supervisor.run(stop, self.grace).await
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "data directory {} is not a directory", dir.display());
    Ok(())
}
