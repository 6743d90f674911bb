//! The thin socket loop: TCP (and optional TLS) listeners, one task per connection that reads
//! packets, feeds them to the pure [`Session`], and carries out its [`Action`]s (write
//! packets, authenticate, ingest, register, close). Packets already buffered are handled one
//! after the other without waiting; each publish is handed to the outbox at once, in arrival
//! order, and its wait for the commit joins the connection's queue, answered in order (one
//! write carries the PUBACKs of one commit). A message handed over is committed even when its
//! connection goes away; the endpoint's [`MqttEndpoint::run`] returns once every connection
//! (and the last will tasks) has finished.
//!
//! Limits: a connection that has not logged in holds a slot of a pool of its own
//! (`max_unauthenticated`, at most `max_unauthenticated_per_address` per source address): a
//! newer connection evicts the oldest of its address, or of the address holding the most, so
//! strangers who open sockets and send nothing cannot keep a sensor out (`gw_net::Slots`).
//! Only a login that passes takes one of the `max_connections` session slots; when none is
//! free the sensor gets CONNACK "server unavailable". A connection that sends no whole CONNECT
//! within `connect_packet_timeout`, or does not complete the TLS handshake, CONNECT and login
//! within `connect_timeout`, is closed; a packet that cannot be
//! decoded or exceeds `max_packet_size` closes its connection and is counted
//! ([`EndpointStats::bad_frames`](crate::EndpointStats)); the endpoint itself never stops
//! for a client's bytes. A command pushed while its session is closing is lost (delivery is
//! at most once, as Drogue's).

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt, stream::FuturesOrdered};
use gw_model::{AppId, Authenticate, Ingest, IngestError, Timestamp};
use gw_net::{Heartbeat, Slot, Slots, Throttle};
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Codec, MqttConfig, MqttError,
    io::{read_connect, read_packet},
    packet::{ConnAck, ConnectCode, Packet, Version},
    registry::{Commands, Registry, Stats},
    session::{Action, ClientCertificate, CloseReason, IngestToken, Session, SessionConfig},
};

/// A publish handed to the outbox, resolving when it is committed.
type Pending =
    std::pin::Pin<Box<dyn Future<Output = (IngestToken, Result<(), IngestError>)> + Send>>;

/// How long a closing connection may take to flush its last packets.
/// How often a connection whose reading is paused by flow control looks again.
const PRESSURE_POLL: Duration = Duration::from_millis(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The southbound MQTT endpoint: bound listeners, ready to [`run`](MqttEndpoint::run).
pub struct MqttEndpoint<A, I> {
    plain: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    shared: Arc<Shared<A, I>>,
}

struct Shared<A, I> {
    auth: Arc<A>,
    ingest: Arc<I>,
    session: SessionConfig,
    registry: Arc<Registry>,
    limit: Arc<Semaphore>,
    /// Connections that have not logged in yet.
    unauthenticated: Slots,
    connect_packet_timeout: Duration,
    heartbeat: Heartbeat,
    next_conn: AtomicU64,
    tasks: TaskTracker,
}

impl<A: Authenticate, I: Ingest> MqttEndpoint<A, I> {
    /// Validates `config`, loads the TLS certificate and key if `tls_listen` is set, and binds
    /// the listeners. Sensors that log in with a bare device name belong to `default_app`.
    pub async fn bind(
        config: &MqttConfig,
        auth: Arc<A>,
        ingest: Arc<I>,
        default_app: AppId,
    ) -> Result<Self, MqttError> {
        config.validate()?;
        let tls = match config.tls_listen {
            Some(addr) => {
                let acceptor = tls_acceptor(config)?;
                Some((bind(addr, backlog(config)).await?, acceptor))
            }
            None => None,
        };
        let plain = bind(config.listen, backlog(config)).await?;
        let shared = Arc::new(Shared {
            auth,
            ingest,
            session: SessionConfig {
                default_app,
                max_inflight: config.max_inflight,
                max_packet_size: usize::try_from(config.max_packet_size.bytes())
                    .unwrap_or(usize::MAX),
                connect_timeout: config.connect_timeout,
            },
            registry: Arc::new(Registry::default()),
            limit: Arc::new(Semaphore::new(config.max_connections)),
            unauthenticated: Slots::new(
                config.max_unauthenticated,
                config.max_unauthenticated_per_address,
            ),
            connect_packet_timeout: config.connect_packet_timeout,
            heartbeat: Heartbeat::new("mqtt"),
            next_conn: AtomicU64::new(1),
            tasks: TaskTracker::new(),
        });
        Ok(Self { plain, tls, shared })
    }

    /// The bound plain MQTT address.
    pub fn local_addr(&self) -> SocketAddr {
        self.plain.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound MQTT-over-TLS address, if TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The handle to push commands to connected sensors; valid before and after `run`.
    pub fn commands(&self) -> Commands {
        Commands::new(self.shared.registry.clone())
    }

    /// The accept loops' sign of life, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.shared.heartbeat.clone()
    }

    /// The handle to the endpoint's counters.
    pub fn stats(&self) -> Stats {
        Stats::new(self.shared.registry.clone())
    }

    /// Serves until `token` is cancelled, then ends every session (v5: DISCONNECT 0x8B) and
    /// returns once all connection and ingest tasks are done.
    pub async fn run(self, token: CancellationToken) {
        let Self { plain, tls, shared } = self;
        tracing::info!(addr = %plain.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            "MQTT endpoint listening");
        let guard = shared.heartbeat.guard();
        let plain_loop = accept_loop(plain, None, shared.clone(), token.clone());
        match tls {
            Some((listener, acceptor)) => {
                tracing::info!(addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
                    "MQTT TLS endpoint listening");
                let tls_loop = accept_loop(listener, Some(acceptor), shared.clone(), token.clone());
                tokio::join!(plain_loop, tls_loop);
            }
            None => plain_loop.await,
        }
        guard.stopped();
        shared.tasks.close();
        shared.tasks.wait().await;
        tracing::info!("MQTT endpoint stopped");
    }
}

/// The listen queue of the MQTT listeners: as many as may be connected at once
/// (`max_connections`), at least 128 and at most 4,096; queueing more than the endpoint will
/// take only delays the refusal.
fn backlog(config: &MqttConfig) -> u32 {
    u32::try_from(config.max_connections).unwrap_or(u32::MAX).clamp(128, 4096)
}

async fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, MqttError> {
    gw_net::listen_tcp(addr, backlog).map_err(|source| MqttError::Bind { addr, source })
}

fn tls_acceptor(config: &MqttConfig) -> Result<TlsAcceptor, MqttError> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        return Err(MqttError::Config {
            key: "cert_file",
            reason: "tls_listen needs cert_file and key_file".into(),
        });
    };
    let server = gw_net::tls::server_config(cert, key, config.client_ca_file.as_deref())
        .map_err(|e| MqttError::Tls { what: e.what, path: e.path, reason: e.reason })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

async fn accept_loop<A: Authenticate, I: Ingest>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared<A, I>>,
    token: CancellationToken,
) {
    static ACCEPT_FAILED: Throttle = Throttle::new("MQTT accept failed");
    let mut beat = tokio::time::interval(Heartbeat::EVERY);
    loop {
        shared.heartbeat.beat();
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = beat.tick() => continue,
            () = token.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if ACCEPT_FAILED.allow(None) {
                    tracing::warn!(cause = %e, "MQTT accept failed");
                }
                // e.g. out of file descriptors: do not spin
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    () = token.cancelled() => return,
                }
            }
        };
        let counters = &shared.registry.counters;
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            shared: shared.clone(),
            peer,
            id: shared.next_conn.fetch_add(1, Ordering::Relaxed),
            token: token.clone(),
            login: Some(shared.unauthenticated.admit(peer.ip())),
            _session: None,
        };
        counters.evicted_connections.store(shared.unauthenticated.evictions(), Ordering::Relaxed);
        let tls = tls.clone();
        shared.tasks.spawn(async move {
            match tls {
                None => conn.serve(stream, None).await,
                Some(acceptor) => conn.serve_tls(stream, acceptor).await,
            }
        });
    }
}

/// One accepted connection.
struct Conn<A, I> {
    shared: Arc<Shared<A, I>>,
    peer: SocketAddr,
    id: u64,
    /// The endpoint's shutdown token.
    token: CancellationToken,
    /// The connection's place among those not logged in yet, until its login passes.
    login: Option<Slot>,
    /// Its session slot, once logged in.
    _session: Option<OwnedSemaphorePermit>,
}

static TLS_FAILED: Throttle = Throttle::new("MQTT TLS handshake failed");
static BAD_CONNECT: Throttle = Throttle::new("MQTT connection sent a bad CONNECT");
static LOGIN_REFUSED: Throttle = Throttle::new("MQTT login refused");
static BAD_FRAME: Throttle = Throttle::new("MQTT bad frame");
static NO_ROOM: Throttle = Throttle::new("MQTT login refused: max_connections reached");

impl<A: Authenticate, I: Ingest> Conn<A, I> {
    async fn serve_tls(self, stream: TcpStream, acceptor: TlsAcceptor) {
        let timeout = self.shared.session.connect_timeout;
        let handshake = tokio::select! {
            r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
            () = evicted(&self.login) => return,
            () = self.token.cancelled() => return,
        };
        match handshake {
            Ok(Ok(tls)) => {
                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let cert = cert.and_then(|der| match client_certificate(der) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::info!(peer = %self.peer, cause = %e,
                            "MQTT client certificate not readable; ignored");
                        None
                    }
                });
                self.serve(tls, cert).await
            }
            Ok(Err(e)) => {
                if TLS_FAILED.allow(Some(self.peer.ip())) {
                    tracing::info!(peer = %self.peer, cause = %e, "MQTT TLS handshake failed");
                }
            }
            Err(_) => {
                if TLS_FAILED.allow(Some(self.peer.ip())) {
                    tracing::info!(peer = %self.peer, "MQTT TLS handshake timed out");
                }
            }
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
        mut self,
        stream: S,
        certificate: Option<ClientCertificate>,
    ) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::new();
        let shared = &self.shared;
        let counters = &shared.registry.counters;
        let started = Instant::now();
        let mut session = Session::new(
            shared.session.clone(),
            started,
            Timestamp::from_system(SystemTime::now()),
        );
        if let Some(certificate) = certificate {
            tracing::debug!(peer = %self.peer, subject = %certificate.subject,
                "MQTT client certificate verified");
            session.set_client_certificate(certificate);
        }
        let max = shared.session.max_packet_size;
        let connect_by = session
            .next_deadline()
            .map_or(started, |d| d.min(started + shared.connect_packet_timeout));
        // the version is known from the CONNECT: until then, only the sniffer reads
        let first = tokio::select! {
            r = read_connect(&mut rd, &mut buf, max) => r,
            () = sleep_until(Some(connect_by)) => {
                tracing::debug!(peer = %self.peer, "MQTT connection sent no CONNECT in time");
                return;
            }
            () = evicted(&self.login) => {
                tracing::debug!(peer = %self.peer, "MQTT connection not logged in evicted for a newer one");
                return;
            }
            () = self.token.cancelled() => return,
        };
        let (codec, connect) = match first {
            Ok(Some(c)) => c,
            Ok(None) | Err(MqttError::Io(_) | MqttError::UnexpectedEof) => return,
            Err(e) => {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                if BAD_CONNECT.allow(Some(self.peer.ip())) {
                    tracing::info!(peer = %self.peer, cause = %e, "MQTT connection sent a bad CONNECT");
                }
                if let MqttError::UnsupportedProtocol { .. } = e {
                    let refused = ConnAck::new(ConnectCode::UnsupportedProtocolVersion);
                    let codec = Codec::new(Version::V311, max);
                    let mut out = BytesMut::new();
                    if codec.encode(&Packet::ConnAck(refused), &mut out).is_ok() {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.write_all(&out)).await;
                    }
                }
                return;
            }
        };

        // publishes handed to the outbox, waiting for their commit, in arrival order
        let mut waiting: FuturesOrdered<Pending> = FuturesOrdered::new();
        let kick = self.token.child_token();
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut registered = None;
        let mut commands: Option<mpsc::Receiver<_>> = None;
        let mut pending: VecDeque<Action> =
            session.handle_packet(Packet::Connect(connect), Instant::now()).into();
        let mut out = BytesMut::new();
        let mut closing = None;
        loop {
            while let Some(action) = pending.pop_front() {
                match action {
                    Action::Send(packet) => {
                        if let Packet::Publish(_) = packet {
                            counters.commands_delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Err(e) = codec.encode(&packet, &mut out) {
                            tracing::warn!(packet = packet.name(), cause = %e,
                                "cannot encode MQTT packet");
                        }
                    }
                    Action::Authenticate(request) => {
                        // a connection whose login is being checked goes last when strangers
                        // push the pool's oldest out
                        if let Some(slot) = &self.login {
                            slot.busy(true);
                        }
                        let outcome = tokio::select! {
                            o = shared.auth.authenticate(&request, Some(self.peer.ip())) => o,
                            () = sleep_until(session.next_deadline()) => {
                                pending.extend(session.tick(Instant::now()));
                                continue;
                            }
                            () = evicted(&self.login) => return,
                            () = self.token.cancelled() => return,
                        };
                        if !matches!(outcome, gw_model::AuthOutcome::Pass(_)) {
                            if LOGIN_REFUSED.allow(Some(self.peer.ip())) {
                                tracing::info!(device = %request.device, app = %request.app,
                                    peer = %self.peer, ?outcome, "MQTT login refused");
                            }
                        } else {
                            // a session slot, or no session
                            match shared.limit.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    self._session = Some(permit);
                                    self.login = None;
                                }
                                Err(_) => {
                                    if NO_ROOM.allow(Some(self.peer.ip())) {
                                        tracing::warn!(device = %request.device, app = %request.app,
                                            peer = %self.peer, "MQTT login refused: max_connections sessions are open");
                                    }
                                    pending.extend(session.server_unavailable());
                                    continue;
                                }
                            }
                        }
                        pending.extend(session.auth_done(outcome, Instant::now()));
                    }
                    Action::Connected(identity) => {
                        tracing::info!(device = %identity, peer = %self.peer,
                            version = %codec.version(), "MQTT session started");
                        let reg = shared.registry.register(
                            &identity,
                            self.id,
                            kick.clone(),
                            Arc::clone(&revoked),
                        );
                        commands = Some(reg.commands);
                        registered = Some((identity, reg.subscribed));
                    }
                    Action::Ingest { token, telemetry } => {
                        // The first poll hands the record to the outbox (its seq is taken
                        // then): done here, in the order the connection's publishes arrived,
                        // so a sensor's messages keep their order. The wait for durability
                        // stays in this connection's queue, answered in order; no task or
                        // channel per message.
                        let ingest = Arc::clone(&shared.ingest);
                        let mut publish: Pending = Box::pin(async move {
                            let result = ingest.publish(telemetry).await;
                            (token, result)
                        });
                        let first = publish
                            .as_mut()
                            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                        match first {
                            std::task::Poll::Ready(done) => {
                                waiting.push_back(Box::pin(std::future::ready(done)));
                            }
                            std::task::Poll::Pending => waiting.push_back(publish),
                        }
                    }
                    Action::PublishWill(telemetry) => {
                        let ingest = shared.ingest.clone();
                        let registry = shared.registry.clone();
                        shared.tasks.spawn(async move {
                            let device = telemetry.device.clone();
                            match ingest.publish(telemetry).await {
                                Ok(()) => {
                                    registry.counters.wills.fetch_add(1, Ordering::Relaxed);
                                    tracing::info!(%device, "MQTT last will published");
                                }
                                Err(e) => tracing::warn!(%device, cause = %e,
                                    "MQTT last will not stored"),
                            }
                        });
                    }
                    Action::Close(reason) => closing = Some(reason),
                }
            }
            if let Some((identity, subscribed)) = &registered {
                let now = session.is_subscribed();
                if now && !subscribed.swap(now, Ordering::Relaxed) {
                    shared.registry.subscribed(identity);
                } else if !now {
                    subscribed.store(false, Ordering::Relaxed);
                }
            }
            if !out.is_empty() {
                let written = tokio::select! {
                    r = wr.write_all(&out) => r,
                    () = kick.cancelled(), if closing.is_none() => Err(io::ErrorKind::Interrupted.into()),
                    () = tokio::time::sleep(CLOSE_TIMEOUT), if closing.is_some() => Err(io::ErrorKind::TimedOut.into()),
                };
                out.clear();
                if written.is_err() && closing.is_none() {
                    pending.extend(session.connection_lost(Instant::now()));
                    continue;
                }
            }
            if let Some(reason) = closing {
                // what was handed to the outbox is committed even though nobody will hear of
                // it: wait (briefly) so that it is counted and the endpoint's end covers it
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Some((_, result)) = waiting.next().await {
                        if result.is_ok() {
                            counters.publishes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await;
                self.finish(reason, registered.as_ref().map(|(id, _)| id));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
                return;
            }
            // flow control: while the uplink lags, no new packets are read (the client's TCP
            // window fills and its publishes wait); the keep-alive does not count meanwhile
            let pressing = shared.ingest.pressure().is_on() && session.is_connected();
            let wants_read = session.wants_read() && !pressing;
            // packets already buffered are handled without a trip through the select: a read's
            // worth of publishes is handed to the outbox in one go
            if wants_read {
                match codec.decode(&mut buf) {
                    Ok(Some(packet)) => {
                        pending.extend(session.handle_packet(packet, Instant::now()));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if BAD_FRAME.allow(Some(self.peer.ip())) {
                            tracing::info!(peer = %self.peer, cause = %e, "MQTT bad frame");
                        }
                        pending.extend(session.bad_frame(&e, Instant::now()));
                        continue;
                    }
                }
            }
            let accepts_commands = session.accepts_commands();
            let deadline = if pressing { None } else { session.next_deadline() };
            pending.extend(tokio::select! {
                () = tokio::time::sleep(PRESSURE_POLL), if pressing => {
                    session.resumed(Instant::now());
                    Vec::new()
                }
                r = read_packet(&mut rd, &mut buf, &codec), if wants_read => {
                    let now = Instant::now();
                    match r {
                        Ok(Some(packet)) => session.handle_packet(packet, now),
                        Ok(None) | Err(MqttError::Io(_) | MqttError::UnexpectedEof) => {
                            session.connection_lost(now)
                        }
                        Err(e) => {
                            if BAD_FRAME.allow(Some(self.peer.ip())) {
                                tracing::info!(peer = %self.peer, cause = %e, "MQTT bad frame");
                            }
                            session.bad_frame(&e, now)
                        }
                    }
                }
                Some((token, result)) = waiting.next(), if !waiting.is_empty() => {
                    let now = Instant::now();
                    let mut done = self.ingested(&mut session, token, result, now);
                    // one commit answers many: their PUBACKs go out in one write
                    while let Some(Some((token, result))) = waiting.next().now_or_never() {
                        done.extend(self.ingested(&mut session, token, result, now));
                    }
                    done
                }
                Some(cmd) = recv(&mut commands), if accepts_commands => {
                    session.command(&cmd.name, cmd.payload, cmd.receipt)
                }
                () = sleep_until(deadline), if deadline.is_some() => session.tick(Instant::now()),
                () = kick.cancelled() => {
                    if self.token.is_cancelled() {
                        session.shutdown(Instant::now())
                    } else if revoked.load(Ordering::Acquire) {
                        session.revoked(Instant::now())
                    } else {
                        session.taken_over(Instant::now())
                    }
                }
            });
        }
    }

    /// A publish's commit (or refusal) came back: counted, then told to the session.
    fn ingested(
        &self,
        session: &mut Session,
        token: IngestToken,
        result: Result<(), IngestError>,
        now: Instant,
    ) -> Vec<Action> {
        if result.is_ok() {
            self.shared.registry.counters.publishes.fetch_add(1, Ordering::Relaxed);
        }
        session.ingest_done(token, result, now)
    }

    /// Counts and logs the end of a session and leaves the registry.
    fn finish(&self, reason: CloseReason, identity: Option<&gw_model::Identity>) {
        let counters = &self.shared.registry.counters;
        match reason {
            CloseReason::LoginRefused(ConnectCode::ServerUnavailable) => {
                counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            }
            CloseReason::LoginRefused(_) => {
                counters.refused_logins.fetch_add(1, Ordering::Relaxed);
            }
            CloseReason::BadFrame => {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(identity) = identity {
            tracing::info!(device = %identity, peer = %self.peer, ?reason, "MQTT session ended");
            self.shared.registry.unregister(identity, self.id);
        } else {
            tracing::debug!(peer = %self.peer, ?reason, "MQTT connection closed");
        }
    }
}

/// The subject of a (verified) client certificate, its DN written as Drogue Cloud writes it
/// (x509-parser's form: `CN=sensor1, O=Acme`).
fn client_certificate(der: &CertificateDer<'_>) -> Result<ClientCertificate, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let subject = cert.subject();
    let common_name =
        subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    Ok(ClientCertificate { subject: subject.to_string(), common_name })
}

/// Completes when the connection's not-logged-in slot was taken for a newer connection.
async fn evicted(slot: &Option<Slot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
