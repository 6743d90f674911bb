//! Builds the gateway from its configuration, top to bottom, in one place: open the state,
//! bind every listener, then hand each component to the supervisor.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use gw_cloud_sync::Uplink;
use gw_driver_mqtt::MqttEndpoint;
use gw_model::Identity;
use gw_store::Outbox;
use tokio_util::sync::CancellationToken;

use crate::{
    accounts::StaticAccounts,
    config::Loaded,
    http_endpoint::{self, EndpointState},
    supervisor::{Outcome, Supervisor},
    web::{self, Readiness, WebState},
};

/// A gateway whose listeners are bound and whose components are running.
pub struct Gateway {
    supervisor: Supervisor,
    web_addr: SocketAddr,
    grace: std::time::Duration,
    outbox: Outbox,
}

impl Gateway {
    /// Opens the data directory, binds the listeners and starts the components.
    pub async fn start(loaded: Loaded, token: CancellationToken) -> anyhow::Result<Self> {
        let config = loaded.config;
        let readiness = Readiness::default();
        let web_bound = readiness.condition("web listener");
        let store_open = readiness.condition("outbox");
        let mut state = WebState::new(
            config.gateway.name.to_string(),
            config.gateway.application.to_string(),
            readiness.clone(),
        );
        let mut supervisor = Supervisor::new(token);

        // 1. State on disk: the outbox is recovered before anything can produce into it.
        prepare_data_dir(&config.gateway.data_dir)?;
        let outbox_dir = config.gateway.data_dir.join("outbox");
        let store_config = config.store.clone();
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&outbox_dir, &store_config))
            .await
            .context("outbox recovery panicked")?
            .context("cannot open the outbox")?;
        let stats = outbox.stats();
        tracing::info!(
            records = stats.records_queued(),
            bytes = stats.bytes_queued(),
            "outbox open"
        );
        store_open.set();
        state.outbox = Some(outbox.clone());

        // 2. The uplink, if a cloud is configured; otherwise messages wait in the outbox.
        let uplink = match (&config.cloud, loaded.cloud_password) {
            (Some(cloud), password) => {
                // An empty password stands for none (allowed for kind = "mqtt" only).
                let password = password.unwrap_or_else(|| gw_model::Secret::new(""));
                let me =
                    Identity::new(config.gateway.application.clone(), config.gateway.name.clone());
                Some(Uplink::new(cloud, &me, password).context("cannot set up the uplink")?)
            }
            _ => {
                tracing::warn!("no [cloud] configured: messages are kept in the outbox");
                None
            }
        };
        state.uplink = uplink.as_ref().map(Uplink::status);

        let auth = Arc::new(StaticAccounts::new(&loaded.devices));
        let ingest = Arc::new(outbox.clone());
        let endpoint = EndpointState {
            auth: Arc::clone(&auth),
            ingest: Arc::clone(&ingest),
            default_app: config.gateway.application.clone(),
        };

        // 3. Listeners.
        let listen = config.web.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind web listener on {listen}"))?;
        let web_addr = listener.local_addr().context("web listener has no local address")?;
        state.add_listener("web", web_addr);
        tracing::info!(listener = "web", addr = %web_addr, "listening");
        web_bound.set();

        let mqtt = match &config.mqtt {
            Some(mqtt_config) => {
                let bound = readiness.condition("mqtt listener");
                let endpoint = MqttEndpoint::bind(
                    mqtt_config,
                    Arc::clone(&auth),
                    Arc::clone(&ingest),
                    config.gateway.application.clone(),
                )
                .await
                .context("cannot start the MQTT endpoint")?;
                let addr = endpoint.local_addr();
                tracing::info!(listener = "mqtt", %addr, "listening");
                state.add_listener("mqtt", addr);
                if let Some(tls) = endpoint.tls_addr() {
                    tracing::info!(listener = "mqtts", addr = %tls, "listening");
                    state.add_listener("mqtts", tls);
                }
                state.mqtt = Some(endpoint.stats());
                bound.set();
                Some(endpoint)
            }
            None => None,
        };

        // 4. Components.
        if let Some(endpoint) = mqtt {
            let stop = supervisor.token().clone();
            supervisor.spawn("mqtt", async move {
                endpoint.run(stop).await;
                Ok(())
            });
        }
        if let Some(uplink) = uplink {
            let reader = outbox.reader();
            let stop = supervisor.token().clone();
            supervisor.spawn("uplink", async move {
                uplink.run(reader, stop).await.context("uplink failed")
            });
        }
        let max_body = usize::try_from(config.web.max_message_bytes.bytes()).unwrap_or(usize::MAX);
        let app = web::router(state).merge(http_endpoint::router(endpoint, max_body));
        let stop = supervisor.token().clone();
        supervisor.spawn("web", async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
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
        Ok(Self { supervisor, web_addr, grace: config.gateway.shutdown_grace, outbox })
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    /// Adds a component (the demo's dev cloud and sensors run beside the gateway this way).
    pub fn supervisor(&mut self) -> &mut Supervisor {
        &mut self.supervisor
    }

    /// Runs until `stop` resolves or a component fails, then closes the outbox (committing
    /// whatever is pending).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Outcome {
        let outcome = self.supervisor.run(stop, self.grace).await;
        let outbox = self.outbox;
        match tokio::task::spawn_blocking(move || outbox.close()).await {
            Ok(Ok(())) => tracing::info!("outbox closed"),
            Ok(Err(e)) => tracing::error!(cause = %e, "outbox did not close cleanly"),
            Err(e) => tracing::error!(cause = %e, "outbox close panicked"),
        }
        outcome
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
