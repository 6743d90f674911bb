//! Builds the gateway from its configuration, top to bottom, in one place: open the state,
//! bind every listener, then hand each component to the supervisor.

use std::{io::Write as _, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use gw_auth::{AuthError, CredentialChain, StaticDevice};
use gw_cloud_sync::{RegistrySync, Uplink};
use gw_driver_coap::CoapEndpoint;
use gw_driver_mqtt::{Bridge, BridgeCommands, MqttEndpoint};
use gw_model::{Identity, UplinkLimits};
use gw_store::Outbox;
use tokio_util::sync::CancellationToken;

use crate::{
    commands::{CommandRouter, Directory, Reporter},
    config::Loaded,
    http_endpoint::{self, EndpointState},
    status::{
        StatusPage,
        activity::{Activity, Tracked},
        controls::GatewayControls,
    },
    supervisor::{Outcome, Supervisor},
    web::{self, Readiness, WebState},
};

/// A gateway whose listeners are bound and whose components are running.
pub struct Gateway {
    supervisor: Supervisor,
    web_addr: SocketAddr,
    grace: std::time::Duration,
    outbox: Outbox,
    listeners: Vec<web::Listener>,
    bridges: BridgeCommands,
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
        // A refused provision.toml (read before a factory reset could wipe the note): shown on
        // the status page and the status LED while it stands.
        state.provision_error = crate::provision_cli::standing_error(&config.gateway.data_dir);
        if let Some(error) = &state.provision_error {
            tracing::error!(cause = %error, "provision.toml was refused; running without it");
        }

        // 0. The board, if configured: a factory reset asked for by the button happens now,
        // before anything opens the data directory; the status LED shows "booting".
        prepare_data_dir(&config.gateway.data_dir)?;
        let board = match &config.board {
            Some(board_config) => {
                crate::board::factory_reset_if_marked(&config.gateway.data_dir)
                    .context("factory reset failed")?;
                let board =
                    gw_board::Board::select(board_config).context("cannot open the board")?;
                if let Err(e) = board.leds().show(gw_board::LedState::Booting) {
                    tracing::warn!(cause = %e, "cannot set the status LED");
                }
                tracing::info!(board = %board.profile.name, serial = ?board.serial(), "board");
                let status = Arc::new(crate::board::BoardStatus::new(board));
                state.board = Some(Arc::clone(&status));
                Some((board_config.clone(), status))
            }
            None => None,
        };

        // 1. State on disk: the outbox is recovered before anything can produce into it.
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
                let uplink = Uplink::new(cloud, &me, password.clone())
                    .context("cannot set up the uplink")?;
                // How to build it again on a technician's restart request, same status.
                let status = uplink.status();
                let (cloud, me) = (cloud.clone(), me.clone());
                let rebuild =
                    move || Uplink::with_status(&cloud, &me, password.clone(), Arc::clone(&status));
                Some((uplink, rebuild))
            }
            _ => {
                tracing::warn!("no [cloud] configured: messages are kept in the outbox");
                None
            }
        };
        state.uplink = uplink.as_ref().map(|(u, _)| u.status());

        // 3. Who may log in: the credential cache (loaded from its snapshot, before any network
        // call), the static [[devices]], local accounts, the legacy login service.
        let chain = open_credentials(&config, &loaded.devices).await?;
        let me = Identity::new(config.gateway.application.clone(), config.gateway.name.clone());
        let registry = match (&config.registry, loaded.registry_token) {
            (Some(registry), token) => {
                let sync = RegistrySync::new(registry, &me, token)
                    .context("cannot set up the registry sync")?;
                state.registry = Some(sync.status());
                Some(sync)
            }
            _ => None,
        };
        let auth = Arc::new(chain);
        state.credentials = Some(Arc::clone(&auth));

        // The command router: commands for devices the gateway proxies (credential chain:
        // registry, static devices, local accounts), queued on disk while their sensor is away.
        let commands = {
            let known = Arc::clone(&auth);
            let directory: Directory = Arc::new(move |id: &Identity| {
                gw_model::KnownDevices::resolve(&*known, id.app(), id.device().as_str())
            });
            let (cfg, dir, me) =
                (config.commands.clone(), config.gateway.data_dir.clone(), me.clone());
            tokio::task::spawn_blocking(move || CommandRouter::open(me, &cfg, &dir, directory))
                .await
                .context("opening the command queue panicked")?
                .context("cannot open the command queue")?
        };
        tracing::info!(queued = commands.queued(), "command queue open");
        if let Some(channel) = &config.commands.report_channel {
            let gateway = me.clone();
            commands.report_to(Reporter {
                outbox: outbox.clone(),
                channel: channel.clone(),
                gateway,
            });
        }
        state.commands = Some(commands.clone());
        // Every way the cloud hands the gateway commands (push, MQTT, HTTP waits) goes through
        // one intake into the router (docs/command-intake.md).
        let intake = gw_cloud_sync::CommandIntake::new(Arc::new(commands.clone()));
        state.command_intake = Some(intake.clone());
        let ingest = Arc::new(outbox.clone());
        // Each driver's view of the outbox records what its sensors do (status page, metrics).
        let activity = Arc::new(Activity::default());
        // A message the uplink could never carry is refused before it is acknowledged.
        let limits = config
            .cloud
            .as_ref()
            .map_or(UplinkLimits::payload(usize::MAX), gw_cloud_sync::CloudConfig::limits);
        let tracked = |protocol| {
            Arc::new(Tracked::new(Arc::clone(&ingest), protocol, Arc::clone(&activity), limits))
        };
        let endpoint = EndpointState {
            auth: Arc::clone(&auth),
            ingest: tracked("http"),
            commands: Arc::new(commands.clone()),
            default_app: config.gateway.application.clone(),
        };

        // 4. Listeners. The web listener serves HTTPS when [web] has a certificate. Their
        // connection caps fit the file-descriptor limit, raised to the hard limit first.
        let descriptors = gw_net::fds::raise_limit();
        let mut mqtt_config = config.mqtt.clone();
        let mut web_limits = crate::web_tls::WebLimits::from_config(&config.web);
        {
            let mut caps = vec![("web.max_connections", &mut web_limits.max_connections)];
            if let Some(m) = mqtt_config.as_mut() {
                caps.push(("mqtt.max_connections", &mut m.max_connections));
                caps.push(("mqtt.max_unauthenticated", &mut m.max_unauthenticated));
            }
            gw_net::fds::fit(descriptors, &mut caps);
        }
        tracing::debug!(limit = descriptors, "file-descriptor limit");
        let web_tls =
            crate::push::tls(&config.web).context("cannot set up HTTPS on the web listener")?;
        let listen = config.web.listen;
        // HTTP sensors reconnect in storms too (see the MQTT listeners)
        let listener = gw_net::listen_tcp(listen, 1024)
            .with_context(|| format!("cannot bind web listener on {listen}"))?;
        let web_addr = listener.local_addr().context("web listener has no local address")?;
        let web_heartbeat = gw_net::Heartbeat::new("web");
        state.add_listener("web", web_addr, Some(web_heartbeat.clone()));
        let scheme = if web_tls.is_some() { "https" } else { "http" };
        tracing::info!(listener = "web", addr = %web_addr, %scheme, "listening");
        web_bound.set();

        let mqtt = match &mqtt_config {
            Some(mqtt_config) => {
                let bound = readiness.condition("mqtt listener");
                let endpoint = MqttEndpoint::bind(
                    mqtt_config,
                    Arc::clone(&auth),
                    tracked("mqtt"),
                    config.gateway.application.clone(),
                )
                .await
                .context("cannot start the MQTT endpoint")?;
                let addr = endpoint.local_addr();
                tracing::info!(listener = "mqtt", %addr, "listening");
                state.add_listener("mqtt", addr, Some(endpoint.heartbeat()));
                if let Some(tls) = endpoint.tls_addr() {
                    tracing::info!(listener = "mqtts", addr = %tls, "listening");
                    state.add_listener("mqtts", tls, Some(endpoint.heartbeat()));
                }
                state.mqtt = Some(endpoint.stats());
                bound.set();
                Some(endpoint)
            }
            None => None,
        };

        if let Some(endpoint) = &mqtt {
            commands.attach_mqtt(endpoint.commands());
        }

        // CoAP: sensors take their commands from the router in the answer to their requests.
        let coap = match &config.coap {
            Some(coap_config) => {
                let bound = readiness.condition("coap listener");
                let endpoint = CoapEndpoint::bind(
                    coap_config,
                    Arc::clone(&auth),
                    tracked("coap"),
                    Arc::new(commands.clone()),
                    config.gateway.application.clone(),
                )
                .await
                .context("cannot start the CoAP endpoint")?;
                let addr = endpoint.local_addr();
                tracing::info!(listener = "coap", %addr, "listening");
                state.add_listener("coap", addr, Some(endpoint.heartbeat()));
                state.coap = Some(endpoint.stats());
                bound.set();
                Some(endpoint)
            }
            None => None,
        };

        // Legacy broker bridges: site brokers whose topics map to devices the gateway knows.
        let mut bridges = Vec::with_capacity(config.bridge.len());
        let mut bridge_commands = BridgeCommands::default();
        for (bridge_config, password) in config.bridge.iter().zip(loaded.bridge_passwords) {
            let bridge = Bridge::new(
                bridge_config,
                password,
                &config.gateway.application,
                Arc::clone(&auth),
                tracked("bridge"),
            )
            .with_context(|| format!("cannot set up bridge {:?}", bridge_config.name))?;
            bridge_commands.merge(bridge.commands());
            state.bridges.push(bridge.status());
            bridges.push(bridge);
        }

        commands.attach_bridges(bridge_commands.clone());

        // 5. Components.
        if let Some(sync) = &registry {
            commands.attach_resync(sync.resync_handle());
        }
        let stop = supervisor.token().clone();
        supervisor.spawn("command router", commands.clone().run(stop));
        let mut controls = GatewayControls::default();
        if let Some(sync) = &registry {
            controls.resync = Some(sync.resync_handle());
        }
        if let Some(sync) = registry {
            let devices = sync.subscribe();
            let stop = supervisor.token().clone();
            supervisor.spawn("registry sync", async move {
                sync.run(stop).await;
                Ok(())
            });
            let (chain, stop) = (Arc::clone(&auth), supervisor.token().clone());
            let sessions = mqtt.as_ref().map(MqttEndpoint::commands);
            let app = config.gateway.application.clone();
            supervisor
                .spawn("credential cache", apply_registry(chain, devices, sessions, app, stop));
        }
        if let Some(endpoint) = mqtt {
            let stop = supervisor.token().clone();
            supervisor.spawn("mqtt", async move {
                endpoint.run(stop).await;
                Ok(())
            });
        }
        if let Some(endpoint) = coap {
            let stop = supervisor.token().clone();
            supervisor.spawn("coap", async move {
                endpoint.run(stop).await;
                Ok(())
            });
        }
        for bridge in bridges {
            let stop = supervisor.token().clone();
            supervisor.spawn("bridge", async move {
                bridge.run(stop).await;
                Ok(())
            });
        }
        if let Some((uplink, rebuild)) = uplink {
            // With a push endpoint, Drogue hands commands there and never to a waiting publish.
            let by_push = loaded.push_token.is_some();
            // The gateway's own commands: drogue-http polls for them with a heartbeat.
            let heartbeat = {
                let (outbox, mqtt, started) =
                    (outbox.clone(), state.mqtt.clone(), std::time::Instant::now());
                Arc::new(move || {
                    let stats = outbox.stats();
                    serde_json::json!({
                        "version": crate::web::VERSION,
                        "uptime_seconds": started.elapsed().as_secs(),
                        "outbox_records": stats.records_queued(),
                        "outbox_bytes": stats.bytes_queued(),
                        "outbox_oldest_age_seconds": stats.oldest_age_seconds(),
                        "mqtt_sessions": mqtt.as_ref().map(|m| m.snapshot().sessions),
                    })
                })
            };
            let poll = gw_cloud_sync::drogue_http::GatewayPoll {
                heartbeat,
                commands: crate::commands::gateway::COMMANDS.to_vec(),
            };
            let commands = move |u: Uplink, intake: gw_cloud_sync::CommandIntake| {
                let u = u.with_commands(intake).with_gateway_poll(poll.clone());
                if by_push { u.without_command_waits() } else { u }
            };
            let mut uplink = commands(uplink, intake.clone());
            controls.parked = Some((outbox.reader().acker(), uplink.status()));
            if !config.store.max_lag.is_zero() {
                let (stop, outbox, status) =
                    (supervisor.token().clone(), outbox.clone(), uplink.status());
                let mut control = crate::flow::LagControl::new(config.store.max_lag);
                supervisor.spawn("flow control", async move {
                    let mut tick = tokio::time::interval(crate::flow::TICK);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut last = tokio::time::Instant::now();
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            () = stop.cancelled() => return Ok(()),
                        }
                        let now = tokio::time::Instant::now();
                        let on = control.observe(
                            now - last,
                            outbox.records_queued(),
                            status.sent(),
                            status.is_connected(),
                        );
                        last = now;
                        if gw_model::Ingest::pressure(&outbox).set(on) {
                            tracing::debug!(
                                slowing = on,
                                bound = control.bound(),
                                rate = control.rate() as u64,
                                "flow control towards the sensors"
                            );
                        }
                    }
                });
            }
            let restart = Arc::new(tokio::sync::Notify::new());
            controls.restart_uplink = Some(Arc::clone(&restart));
            let (stop, outbox, intake) =
                (supervisor.token().clone(), outbox.clone(), intake.clone());
            supervisor.spawn("uplink", async move {
                loop {
                    let child = stop.child_token();
                    let run = uplink.run(outbox.reader(), child.clone());
                    tokio::pin!(run);
                    tokio::select! {
                        result = &mut run => return result.context("uplink failed"),
                        () = restart.notified() => {
                            // Records in flight go back to the outbox; the new uplink sends them.
                            child.cancel();
                            run.await.context("uplink failed")?;
                            uplink = commands(rebuild().context("cannot set up the uplink")?, intake.clone());
                            tracing::info!("uplink restarted on request");
                        }
                    }
                }
            });
        }
        // The board: watchdogs kicked while every component answers, LEDs, button.
        let (identify_tx, identify_rx) = tokio::sync::mpsc::channel(4);
        let probes: Vec<Box<dyn crate::board::Probe>> = vec![
            Box::new(probes::Web::new(web_addr, web_tls.is_some())),
            Box::new(probes::Store(outbox.clone())),
            Box::new(probes::Listeners(state.clone())),
        ];
        let systemd_watchdog = crate::sd_notify::watchdog_interval();
        match &board {
            Some((board_config, status)) => {
                let hw = status.board().watchdog().context("cannot open the hardware watchdog")?;
                let (hang, stop) = (board_config.hang_timeout, supervisor.token().clone());
                let status2 = Some(Arc::clone(status));
                supervisor.spawn(
                    "watchdog",
                    crate::board::run_watchdog(hw, systemd_watchdog, probes, hang, status2, stop),
                );
                let uplink_status = state.uplink.clone();
                let cloud_up = move || {
                    uplink_status.as_ref().is_some_and(|u| {
                        u.snapshot().state == gw_cloud_sync::UplinkState::Connected
                    })
                };
                let leds = status.board().leds();
                let stop = supervisor.token().clone();
                let fault = state.provision_error.is_some();
                supervisor.spawn(
                    "leds",
                    crate::board::run_leds(
                        leds.clone(),
                        Arc::clone(status),
                        cloud_up,
                        fault,
                        identify_rx,
                        stop,
                    ),
                );
                if let Some(events) = status.board().button() {
                    let (tx, every) = (identify_tx.clone(), board_config.identify_for);
                    let (dir, stop) = (config.gateway.data_dir.clone(), supervisor.token().clone());
                    supervisor.spawn(
                        "button",
                        crate::board::run_button(events, leds, tx, every, dir, stop),
                    );
                }
                controls.identify = Some((identify_tx, board_config.identify_for));
            }
            None if systemd_watchdog.is_some() => {
                let stop = supervisor.token().clone();
                let hang = gw_board::BoardConfig::default().hang_timeout;
                supervisor.spawn(
                    "watchdog",
                    crate::board::run_watchdog(None, systemd_watchdog, probes, hang, None, stop),
                );
            }
            None => {}
        }
        // Updates: install into the inactive slot; mark the booted slot good once healthy.
        if let (Some(update), Some((_, status))) = (&config.update, &board) {
            let updater = Arc::new(crate::update::Updater::new(
                status.board().clone(),
                update.clone(),
                &config.gateway.data_dir,
            ));
            state.update = Some(Arc::clone(&updater));
            commands.attach_updater(Arc::clone(&updater));
            let probes: Vec<Box<dyn crate::board::Probe>> = vec![
                Box::new(probes::Web::new(web_addr, web_tls.is_some())),
                Box::new(probes::Store(outbox.clone())),
            ];
            let uplink_status = state.uplink.clone();
            let cloud_up = move || {
                uplink_status
                    .as_ref()
                    .is_some_and(|u| u.snapshot().state == gw_cloud_sync::UplinkState::Connected)
            };
            let stop = supervisor.token().clone();
            supervisor
                .spawn("mark-good", crate::update::run_mark_good(updater, probes, cloud_up, stop));
        }

        let max_body = usize::try_from(config.web.max_message_bytes.bytes()).unwrap_or(usize::MAX);
        let listeners = state.listeners();
        let page = StatusPage::new(
            state.clone(),
            Arc::clone(&auth),
            activity,
            config.web.technician_app.clone(),
            // Cookies get the Secure flag when the page is served over HTTPS.
            config.web.cert_file.is_some(),
            Arc::new(controls),
        );
        match page.ensure_admin(loaded.admin_password.clone()) {
            Ok(Some(password)) => {
                tracing::warn!(account = %format!("admin@{}", config.web.technician_app), "first technician account created; its password is printed once on standard error");
                // Not eprintln!: a closed standard error must not stop the gateway.
                let _ = writeln!(
                    std::io::stderr(),
                    "gatewayd: status page login: user \"admin\", password \"{password}\" (shown once; change it with `gatewayd accounts set-password admin@{}`)",
                    config.web.technician_app
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(cause = %e, "cannot create the first technician account"),
        }
        let stop = supervisor.token().clone();
        supervisor.spawn("status page sampler", {
            let page = page.clone();
            async move {
                page.run_sampler(stop).await;
                Ok(())
            }
        });
        let api_sessions = page.sessions.clone();
        let app = web::router(state)
            .merge(crate::status::router(page))
            .merge(http_endpoint::router(endpoint, max_body));
        let app = match crate::push::router(&config.web, loaded.push_token.clone(), intake) {
            Some(push) => app.merge(push),
            None => app,
        };
        let app = app.layer(axum::middleware::from_fn_with_state(
            crate::status::ApiAccess::new(api_sessions, loaded.api_token.clone()),
            crate::status::guard_api,
        ));
        let app = app.layer(axum::middleware::map_response_with_state(
            config.web.cert_file.is_some(),
            crate::web::security_headers,
        ));
        let app = app.layer(axum::middleware::from_fn_with_state(
            crate::web::BodyDeadlines {
                body: config.web.body_timeout,
                upload: config.web.upload_timeout,
            },
            crate::web::body_deadline,
        ));
        let stop = supervisor.token().clone();
        supervisor.spawn(
            "web",
            crate::web_tls::serve(listener, app, web_tls, web_limits, web_heartbeat, stop),
        );
        // `[store] max_age`: records that waited too long are dropped, counted, logged.
        if !config.store.max_age.is_zero() {
            let (stop, acker, max_age) =
                (supervisor.token().clone(), outbox.reader().acker(), config.store.max_age);
            supervisor.spawn("outbox max_age", async move {
                let every = (max_age / 10).clamp(std::time::Duration::from_millis(200), std::time::Duration::from_secs(10));
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                    let acker = acker.clone();
                    let dropped = tokio::task::spawn_blocking(move || acker.expire_older_than(max_age, 10_000))
                        .await
                        .unwrap_or_default();
                    for (app, device, records) in dropped {
                        tracing::warn!(%app, %device, records, max_age = %humantime::format_duration(max_age),
                            "records waited longer than [store] max_age: dropped");
                    }
                }
            });
        }
        // Rate-limited warnings: the summary of an interval is written even when the flood ends.
        let stop = supervisor.token().clone();
        supervisor.spawn("log summaries", async move {
            let mut every = tokio::time::interval(gw_net::Throttle::INTERVAL);
            loop {
                tokio::select! {
                    _ = every.tick() => gw_net::flush_throttles(),
                    () = stop.cancelled() => return Ok(()),
                }
            }
        });

        tracing::info!(
            gateway = %config.gateway.name,
            application = %config.gateway.application,
            static_devices = loaded.devices.len(),
            // the registry's devices as of the last sync (the snapshot); the sync adds news
            cached_devices = auth.registry().len(),
            "gateway started"
        );
        if !gw_model::Timestamp::from_system(std::time::SystemTime::now()).is_trusted() {
            tracing::warn!(
                "the clock is not set (before 2024, as on a board without a real-time clock until NTP syncs): readings received now carry no receive time upstream"
            );
        }
        Ok(Self {
            supervisor,
            web_addr,
            grace: config.gateway.shutdown_grace,
            outbox,
            listeners,
            bridges: bridge_commands,
        })
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    /// The bound address of a listener (`web`, `mqtt`, `mqtts`, `coap`), if it exists.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.addr)
    }

    /// Publishes commands for devices behind the legacy broker bridges (empty without any).
    pub fn bridge_commands(&self) -> BridgeCommands {
        self.bridges.clone()
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

/// Opens the credential chain from the data directory. A damaged credential snapshot is moved
/// aside (the next registry sync rebuilds it) rather than keeping the gateway down.
async fn open_credentials(
    config: &crate::config::Config,
    devices: &[crate::config::ResolvedDevice],
) -> anyhow::Result<CredentialChain> {
    let statics: Vec<StaticDevice> = devices
        .iter()
        .map(|d| StaticDevice {
            app: d.app.clone(),
            name: d.name.clone(),
            password: d.password.clone(),
        })
        .collect();
    let (auth, dir) = (config.auth.clone(), config.gateway.data_dir.clone());
    let (app, technicians) =
        (config.gateway.application.clone(), config.web.technician_app.clone());
    tokio::task::spawn_blocking(move || {
        let chain = match CredentialChain::open(&auth, &dir) {
            Ok(chain) => chain,
            Err(e @ (AuthError::Snapshot(_) | AuthError::Decode { .. })) => {
                let file = dir.join(gw_auth::chain::CACHE_FILE);
                let aside = dir.join(format!("{}.damaged", gw_auth::chain::CACHE_FILE));
                tracing::error!(cause = %e, file = %file.display(), "credential snapshot damaged; moved aside, the next registry sync rebuilds it");
                std::fs::rename(&file, &aside)
                    .with_context(|| format!("cannot move {} aside", file.display()))?;
                CredentialChain::open(&auth, &dir).context("cannot open the credential chain")?
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot open the credential chain")),
        };
        chain
            .with_static_devices(&statics)
            .context("cannot hash the static devices' passwords")?
            .with_roles(app, technicians)
            .context("cannot give the credential chain its roles")
    })
    .await
    .context("opening the credential chain panicked")?
}

/// Feeds every newly synced device set into the credential cache (hashed, persisted, swapped
/// in), then ends the MQTT sessions of devices that left the set: they may no longer log in.
async fn apply_registry(
    chain: Arc<CredentialChain>,
    mut devices: tokio::sync::watch::Receiver<Option<Arc<gw_cloud_sync::SyncedDevices>>>,
    sessions: Option<gw_driver_mqtt::Commands>,
    app: gw_model::AppId,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut previous: Option<Arc<gw_cloud_sync::SyncedDevices>> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            changed = devices.changed() => {
                if changed.is_err() {
                    // the sync stopped: only at shutdown
                    stop.cancelled().await;
                    return Ok(());
                }
            }
        }
        let Some(set) = devices.borrow_and_update().clone() else { continue };
        match chain.replace_devices(set.devices.clone()).await {
            Ok(n) => {
                tracing::info!(devices = n, generation = set.generation, "credential cache updated")
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot update the credential cache; keeping the previous one");
                continue;
            }
        }
        let removed = set.changes_since(previous.as_deref()).removed;
        // a disabled device loses its session as a removed one does
        let disabled =
            set.devices.iter().filter(|d| d.is_disabled()).map(|d| d.metadata.name.clone());
        if let Some(sessions) = &sessions {
            for name in removed.into_iter().chain(disabled) {
                let Ok(device) = gw_model::DeviceId::new(name.as_str()) else { continue };
                let identity = Identity::new(app.clone(), device);
                if sessions.disconnect(&identity) {
                    tracing::info!(device = %identity, "access revoked by the registry; MQTT session closed");
                }
            }
        }
        previous = Some(set);
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
    tighten_modes(dir, 0);
    Ok(())
}

/// Takes group and other permissions away from `dir` and what lies under it (a data dir made
/// by an older version, or by hand, may hold 0644 segments in 0755 directories). Symbolic
/// links are not followed; what cannot be changed is logged and left.
fn tighten_modes(dir: &Path, depth: usize) {
    use std::os::unix::fs::PermissionsExt;
    const MAX_DEPTH: usize = 4;
    let tighten = |path: &Path, meta: &std::fs::Metadata| {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let tight = std::fs::Permissions::from_mode(mode & !0o077);
            if let Err(e) = std::fs::set_permissions(path, tight) {
                tracing::warn!(path = %path.display(), cause = %e, "cannot make a data file private");
            }
        }
    };
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        tighten(dir, &meta);
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten().take(100_000) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() && depth < MAX_DEPTH {
            tighten_modes(&path, depth + 1);
        } else if meta.is_file() {
            tighten(&path, &meta);
        }
    }
}

/// The health probes the watchdog asks before each kick.
mod probes {
    use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

    use crate::board::Probe;

    /// The web listener answers `/healthz` (over HTTPS when it serves HTTPS; the probe does not
    /// check its own certificate).
    pub struct Web {
        url: String,
        client: Option<reqwest::Client>,
    }

    impl Web {
        pub fn new(addr: SocketAddr, tls: bool) -> Self {
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(5))
                .build()
                .ok();
            let scheme = if tls { "https" } else { "http" };
            Self { url: format!("{scheme}://{addr}/healthz"), client }
        }
    }

    impl Probe for Web {
        fn name(&self) -> &'static str {
            "web"
        }

        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async move {
                let client = self.client.as_ref().ok_or("no HTTP client")?;
                let r = client.get(&self.url).send().await.map_err(|e| e.to_string())?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("/healthz: {}", r.status()))
                }
            })
        }
    }

    /// Every listener's accept loop runs: busy under a flood is fine, ended or stuck is not.
    pub struct Listeners(pub crate::web::WebState);

    impl Probe for Listeners {
        fn name(&self) -> &'static str {
            "listeners"
        }

        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let faults: Vec<String> =
                self.0.listeners().iter().filter_map(|l| l.check().err()).collect();
            Box::pin(async move { if faults.is_empty() { Ok(()) } else { Err(faults.join("; ")) } })
        }
    }

    /// The outbox's state can be read (its locks are not held by a stuck commit).
    pub struct Store(pub gw_store::Outbox);

    impl Probe for Store {
        fn name(&self) -> &'static str {
            "outbox"
        }

        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let outbox = self.0.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || outbox.stats())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        }
    }
}
