//! The thin socket loop around the pure [`Core`]: one task owns the core and the datagram
//! [`Transport`]; it feeds the core datagrams, answers and timer ticks, sends what the core
//! says, and carries out each [`Job`] (authenticate, ingest, wait for a command) itself: a
//! job's future is first polled at once, in the order the datagrams came (a cached login and
//! the hand-over to the outbox complete in that poll), and then waits, for its commit or a
//! command, in the loop's own set of pending jobs. No task, channel or cross-thread wake-up
//! per request.
//!
//! The transport is a trait so that a DTLS session layer can wrap the UDP socket later: it
//! hands the core plaintext datagrams per peer address exactly as the plain socket does (the
//! PSK identity `device@app` would then stand in for option 4209).
//!
//! Shutdown: no more datagrams are read; command waits end (their requests are answered
//! 2.04: the message is stored); jobs still committing are awaited up to [`DRAIN_TIMEOUT`]
//! and answered, so a sensor whose message became durable hears so when it still can.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use coap_lite::ResponseType;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use gw_model::{
    AppId, AuthOutcome, Authenticate, CommandSource, Ingest, IngestError, Telemetry, Timestamp,
};
use tokio::{net::UdpSocket, sync::oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    CoapConfig, CoapError,
    protocol::{Answer, Core, CoreConfig, Job, JobId, JobKind, Output},
    request::{Publish, Refusal},
    stats::{Counters, Stats},
};

/// How long shutdown waits for jobs still committing to the outbox.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest datagram read (a UDP payload cannot be larger).
const MAX_DATAGRAM: usize = 65_535;

/// Where datagrams come from and go to: a UDP socket, or later a DTLS layer over one.
pub trait Transport: Send + Sync + 'static {
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    fn send_to(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Transport for UdpSocket {
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        UdpSocket::recv_from(self, buf)
    }

    fn send_to(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        UdpSocket::send_to(self, datagram, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

struct Services<A, I, C> {
    auth: Arc<A>,
    ingest: Arc<I>,
    commands: Arc<C>,
    counters: Arc<Counters>,
}

/// The southbound CoAP endpoint: a bound socket, ready to [`run`](CoapEndpoint::run).
pub struct CoapEndpoint<A, I, C, T = UdpSocket> {
    transport: T,
    core: Core,
    services: Arc<Services<A, I, C>>,
    heartbeat: gw_net::Heartbeat,
}

impl<A: Authenticate, I: Ingest, C: CommandSource> CoapEndpoint<A, I, C, UdpSocket> {
    /// Validates `config` and binds its UDP `listen` address. Sensors that name a bare device
    /// (no `@app`) belong to `default_app`.
    pub async fn bind(
        config: &CoapConfig,
        auth: Arc<A>,
        ingest: Arc<I>,
        commands: Arc<C>,
        default_app: AppId,
    ) -> Result<Self, CoapError> {
        config.validate()?;
        let addr = config.listen;
        let buffer = usize::try_from(config.socket_buffer.bytes()).unwrap_or(usize::MAX);
        let socket = bind_udp(addr, buffer).map_err(|source| CoapError::Bind { addr, source })?;
        Self::with_transport(socket, config, auth, ingest, commands, default_app)
    }
}

impl<A: Authenticate, I: Ingest, C: CommandSource, T: Transport> CoapEndpoint<A, I, C, T> {
    /// An endpoint over any datagram transport.
    pub fn with_transport(
        transport: T,
        config: &CoapConfig,
        auth: Arc<A>,
        ingest: Arc<I>,
        commands: Arc<C>,
        default_app: AppId,
    ) -> Result<Self, CoapError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let core = Core::new(CoreConfig::new(config, default_app), counters.clone(), seed);
        Ok(Self {
            transport,
            core,
            services: Arc::new(Services { auth, ingest, commands, counters }),
            heartbeat: gw_net::Heartbeat::new("coap"),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The receive loop's sign of life, for the watchdog.
    pub fn heartbeat(&self) -> gw_net::Heartbeat {
        self.heartbeat.clone()
    }

    /// The handle to the endpoint's counters; valid before and after `run`.
    pub fn stats(&self) -> Stats {
        Stats(self.services.counters.clone())
    }

    /// Serves until `token` is cancelled, then drains (see the module docs) and returns.
    pub async fn run(self, token: CancellationToken) {
        let Self { transport, mut core, services, heartbeat } = self;
        let guard = heartbeat.guard();
        let mut beat = tokio::time::interval(gw_net::Heartbeat::EVERY);
        tracing::info!(addr = %transport.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            "CoAP endpoint listening");
        let mut jobs = FuturesUnordered::<JobFuture>::new();
        let waits = CancellationToken::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = Vec::new();
        let mut ready = Vec::new();
        let mut recv_errors = 0u32;
        let mut turns = Turns::default();
        loop {
            heartbeat.beat();
            let deadline = core.next_deadline();
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                _ = beat.tick() => {}
                Some((id, answer)) = jobs.next(), if !jobs.is_empty() => {
                    let now = Instant::now();
                    core.on_answer(id, answer, now, &mut out);
                    // one commit answers many: every job it finished, in one round
                    while let Some(Some((id, answer))) = jobs.next().now_or_never() {
                        core.on_answer(id, answer, now, &mut out);
                    }
                }
                r = transport.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => {
                        recv_errors = 0;
                        core.on_datagram(peer, &buf[..n], Instant::now(), &mut out);
                    }
                    Err(e) => {
                        // e.g. an ICMP error reported on the socket: not fatal, but never spin
                        recv_errors += 1;
                        tracing::debug!(cause = %e, "CoAP receive failed");
                        if recv_errors > 100 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                },
                () = sleep_until(deadline), if deadline.is_some() => core.on_tick(Instant::now(), &mut out),
            }
            // jobs that finish in their first poll (a refusal) are answered in the same round
            loop {
                flush(&transport, &mut out, &services, &mut jobs, &waits, &mut turns, &mut ready)
                    .await;
                if ready.is_empty() {
                    break;
                }
                let now = Instant::now();
                for (id, answer) in ready.drain(..) {
                    core.on_answer(id, answer, now, &mut out);
                }
            }
        }
        // Drain: end command waits, answer what commits within the grace period.
        waits.cancel();
        let until = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !jobs.is_empty() {
            let Ok(Some((id, answer))) = tokio::time::timeout_at(until, jobs.next()).await else {
                tracing::warn!(
                    in_flight = core.in_flight(),
                    "CoAP endpoint stopped with requests unanswered"
                );
                break;
            };
            core.on_answer(id, answer, Instant::now(), &mut out);
            // nothing new is started while draining
            out.retain(|o| matches!(o, Output::Send { .. }));
            flush(&transport, &mut out, &services, &mut jobs, &waits, &mut turns, &mut ready).await;
        }
        guard.stopped();
        tracing::info!("CoAP endpoint stopped");
    }
}

/// A job being carried out: its answer once it has one.
type JobFuture = Pin<Box<dyn Future<Output = (JobId, Answer)> + Send>>;

/// A UDP socket with large buffers: a burst of sensors (a thousand requests at once) must not
/// overflow the kernel's default receive queue of about 200 KiB, or they wait for their own
/// retransmission timeouts. The kernel caps the sizes at `net.core.rmem_max`/`wmem_max`.
fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::warn!(cause = %e, "CoAP socket: cannot set the receive buffer size");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::warn!(cause = %e, "CoAP socket: cannot set the send buffer size");
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

/// A publish job's place in its peer's order: it hands its message to the outbox only after
/// the peer's previous job has (or has given up), and then lets the next one go. Jobs run as
/// tasks, which may first run in any order; without this a sensor with several requests in
/// flight would see its messages stored, and forwarded, out of order.
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits until the peer's previous job has handed its message over (or given up).
    async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
    }

    /// This job's message is handed over: the next job may go.
    fn pass(&mut self) {
        self.done.take();
    }
}

impl Drop for Turn {
    /// A job that gives up (refused, or before its wait) passes its turn on only once its
    /// predecessor is through: the next job may never overtake an earlier one.
    fn drop(&mut self) {
        if let (Some(mut previous), Some(done)) = (self.after.take(), self.done.take())
            && matches!(previous.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            // outside a runtime (the endpoint is gone) there is no order left to keep
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = previous.await;
                drop(done);
            });
        }
    }
}

/// The last turn handed out per peer (the receiver the peer's next job waits on).
#[derive(Default)]
struct Turns(HashMap<SocketAddr, oneshot::Receiver<()>>);

impl Turns {
    fn next(&mut self, peer: SocketAddr) -> Turn {
        let (done, next) = oneshot::channel();
        let after = self.0.insert(peer, next).and_then(|mut prev| match prev.try_recv() {
            // still running: wait for it
            Err(oneshot::error::TryRecvError::Empty) => Some(prev),
            _ => None,
        });
        if self.0.len() > 1024 && self.0.len().is_power_of_two() {
            // forget peers whose last job is through (bounded by the jobs in flight)
            self.0
                .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        Turn { after, done: Some(done) }
    }
}

/// Sends what the core said and starts its jobs: each job's first poll happens here, in
/// order; a job done at once leaves its answer in `ready`, the others wait in `jobs`.
#[allow(clippy::too_many_arguments)]
async fn flush<A: Authenticate, I: Ingest, C: CommandSource, T: Transport>(
    transport: &T,
    out: &mut Vec<Output>,
    services: &Arc<Services<A, I, C>>,
    jobs: &mut FuturesUnordered<JobFuture>,
    waits: &CancellationToken,
    turns: &mut Turns,
    ready: &mut Vec<(JobId, Answer)>,
) {
    for output in out.drain(..) {
        match output {
            Output::Send { peer, datagram } => {
                if let Err(e) = transport.send_to(&datagram, peer).await {
                    tracing::debug!(%peer, cause = %e, "CoAP send failed");
                }
            }
            Output::Process(job) => {
                let (services, waits) = (services.clone(), waits.clone());
                let turn = (job.kind == JobKind::Publish).then(|| turns.next(job.peer));
                let job_id = job.id;
                let work = async move {
                    let Job { id, peer, kind, publish } = *job;
                    let answer = match (kind, turn) {
                        (JobKind::Publish, Some(turn)) => {
                            process(&services, peer, publish, turn, &waits).await
                        }
                        (JobKind::Publish, None) => unreachable!("a publish job has its turn"),
                        (JobKind::Authenticate, _) => {
                            match authenticate(&services, peer, &publish).await {
                                Ok(_) => Answer::Authenticated,
                                Err(refusal) => Answer::Refused(refusal),
                            }
                        }
                    };
                    (id, answer)
                };
                // a job that panics (a bug) is answered 5.00 and the endpoint keeps serving,
                // as it did when each job was a task of its own
                let mut run: JobFuture =
                    Box::pin(std::panic::AssertUnwindSafe(work).catch_unwind().map(move |r| {
                        r.unwrap_or_else(|_| {
                            tracing::error!("CoAP request failed: internal error");
                            let refusal =
                                Refusal::new(ResponseType::InternalServerError, "internal error");
                            (job_id, Answer::Refused(refusal))
                        })
                    }));
                // the first poll: a cached login is checked and the message handed to the
                // outbox (its place in the order taken) now, in the order of the datagrams
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match run.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(done) => ready.push(done),
                    std::task::Poll::Pending => jobs.push(run),
                }
            }
        }
    }
}

/// Checks a request's credentials and its `as=`: the sensor's identity, or the refusal.
async fn authenticate<A: Authenticate, I: Ingest, C: CommandSource>(
    services: &Services<A, I, C>,
    peer: SocketAddr,
    publish: &Publish,
) -> Result<gw_model::Identity, Refusal> {
    static REFUSED: gw_net::Throttle = gw_net::Throttle::new("CoAP publish refused");
    let log = || REFUSED.allow(Some(peer.ip()));
    let (device, app) = (&publish.auth.device, &publish.auth.app);
    let identity = match services.auth.authenticate(&publish.auth, Some(peer.ip())).await {
        AuthOutcome::Pass(identity) => identity,
        AuthOutcome::Forbidden => {
            if log() {
                tracing::info!(%device, %app, %peer, "CoAP publish refused: not an identity of the gateway's application");
            }
            return Err(Refusal::new(ResponseType::Forbidden, "not allowed here"));
        }
        AuthOutcome::Fail => {
            if log() {
                tracing::info!(%device, %app, %peer, "CoAP publish refused: authentication failed");
            }
            return Err(Refusal::new(ResponseType::Forbidden, "authentication failed"));
        }
        AuthOutcome::RateLimited => {
            if log() {
                tracing::info!(%device, %app, %peer, "CoAP publish refused: too many failed logins");
            }
            return Err(Refusal::new(
                ResponseType::TooManyRequests,
                "too many failed logins; try later",
            )
            .retry_after(60));
        }
    };
    if publish.as_device.as_deref().is_some_and(|d| d != identity.device().as_str()) {
        return Err(Refusal::new(
            ResponseType::Forbidden,
            "a sensor publishes as itself only (as=)",
        ));
    }
    Ok(identity)
}

/// Carries out one publish: authenticate, ingest (durable), then maybe wait for a command.
async fn process<A: Authenticate, I: Ingest, C: CommandSource>(
    services: &Services<A, I, C>,
    peer: SocketAddr,
    publish: Publish,
    turn: Turn,
    waits: &CancellationToken,
) -> Answer {
    let identity = match authenticate(services, peer, &publish).await {
        Ok(identity) => identity,
        Err(refusal) => return Answer::Refused(refusal),
    };
    if let Err(refusal) = publish.check_json() {
        return Answer::Refused(refusal);
    }
    if services.ingest.pressure().is_on() {
        // flow control: the uplink lags behind; the sensor tries again after Max-Age
        Counters::add(&services.counters.slowed);
        let secs = u32::try_from(gw_model::Pressure::RETRY_AFTER.as_secs()).unwrap_or(1);
        return Answer::Refused(
            Refusal::new(ResponseType::ServiceUnavailable, "busy: forwarding lags behind")
                .retry_after(secs),
        );
    }
    let telemetry = Telemetry {
        app: identity.app().clone(),
        device: identity.device().clone(),
        channel: publish.channel,
        suffix: publish.suffix,
        content_type: publish.content_type,
        data_schema: publish.data_schema,
        received_at: Timestamp::from_system(SystemTime::now()),
        payload: publish.payload,
        command_wait: publish.command_wait,
    };
    // The peer's previous message first; then this one is handed to the outbox (the first
    // poll takes its place in the outbox's order) before the next may go.
    let mut turn = turn;
    turn.wait().await;
    let mut ingest = std::pin::pin!(services.ingest.publish(telemetry));
    let first = ingest.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    turn.pass();
    let stored = match first {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => ingest.await,
    };
    if let Err(e) = stored {
        let refusal = match &e {
            IngestError::QuotaExceeded(_) => {
                Counters::add(&services.counters.quota_exceeded);
                tracing::warn!(device = %identity, cause = %e, "CoAP publish refused: outbox full");
                Refusal::new(ResponseType::ServiceUnavailable, "quota exceeded").retry_after(5)
            }
            IngestError::TooLarge(_) => {
                Refusal::new(ResponseType::RequestEntityTooLarge, e.to_string())
            }
            IngestError::Invalid(_) => Refusal::new(ResponseType::BadRequest, e.to_string()),
            IngestError::Unavailable(_) => {
                tracing::error!(device = %identity, cause = %e, "CoAP publish failed: outbox");
                Refusal::new(ResponseType::ServiceUnavailable, "storage unavailable").retry_after(5)
            }
        };
        return Answer::Refused(refusal);
    }
    // Without `ct` only a command already queued comes back (the sensor's contact is its
    // chance to get it); with `ct` the request also waits for one.
    let wait = publish.command_wait.unwrap_or(Duration::ZERO);
    let command = tokio::select! {
        c = services.commands.next_command(&identity, wait) => c,
        () = waits.cancelled() => None,
    };
    match command {
        Some(c) => {
            tracing::debug!(device = %identity, command = %c.name, "command delivered over CoAP");
            Answer::Command(c)
        }
        None => Answer::Stored,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// However long each job of a peer takes before its message is ready (authentication,
        /// checks), and whichever task runs first, the messages reach the outbox in the order
        /// the jobs were made; a job that gives up (a refusal) lets the next one go.
        #[test]
        fn a_peers_jobs_hand_over_in_the_order_they_were_made(
            jobs in proptest::collection::vec((0u64..20, proptest::bool::weighted(0.2)), 1..40),
            peers in 1usize..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let handed = Arc::new(Mutex::new(Vec::new()));
            rt.block_on(async {
                let mut turns = Turns::default();
                let mut tasks = Vec::new();
                for (i, (delay, refused)) in jobs.iter().copied().enumerate() {
                    let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + (i % peers) as u16));
                    let mut turn = turns.next(peer);
                    let handed = Arc::clone(&handed);
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        if refused {
                            return;
                        }
                        turn.wait().await;
                        handed.lock().unwrap().push((peer, i));
                        turn.pass();
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let handed = handed.lock().unwrap();
            for p in 0..peers {
                let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + p as u16));
                let order: Vec<usize> =
                    handed.iter().filter(|(q, _)| *q == peer).map(|(_, i)| *i).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                prop_assert_eq!(order, sorted);
            }
            let expected = jobs.iter().filter(|(_, refused)| !refused).count();
            prop_assert_eq!(handed.len(), expected);
        }
    }
}
