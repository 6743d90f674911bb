//! The web listener: health, readiness and the status document. Other components hand
//! their routers to [`wiring`](crate::wiring), which merges them here; nobody else opens an
//! HTTP listener.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

/// One named condition and whether it holds.
type Condition = (&'static str, Arc<AtomicBool>);

/// The conditions `/readyz` waits for: one per listener or store the daemon opens.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<Vec<Condition>>>,
}

/// The handle a component uses to say it is ready.
#[derive(Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Readiness {
    /// Adds a condition that holds back readiness until its flag is set.
    pub fn condition(&self, name: &'static str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.lock().push((name, flag.clone()));
        ReadyFlag(flag)
    }

    /// The conditions not met yet.
    pub fn waiting(&self) -> Vec<&'static str> {
        self.lock().iter().filter(|(_, f)| !f.load(Ordering::Acquire)).map(|(n, _)| *n).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.waiting().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Condition>> {
        self.conditions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A listener's name, the address it is bound to, and its accept loop's sign of life.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub heartbeat: Option<gw_net::Heartbeat>,
}

/// How long an accept loop may go without a turn before it counts as stuck (it turns at least
/// every second while idle, and on every connection or datagram while busy).
pub const LISTENER_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

impl Listener {
    /// `Ok` while its accept loop runs (busy or idle); why not, otherwise.
    pub fn check(&self) -> Result<(), String> {
        self.heartbeat.as_ref().map_or(Ok(()), |h| h.check(LISTENER_SILENCE))
    }
}

/// What the front page, status and health endpoints know about the gateway.
#[derive(Clone)]
pub struct WebState {
    pub gateway: String,
    pub application: String,
    pub started: Instant,
    pub readiness: Readiness,
    pub listeners: Arc<Mutex<Vec<Listener>>>,
    pub outbox: Option<gw_store::Outbox>,
    pub uplink: Option<Arc<gw_cloud_sync::UplinkStatus>>,
    pub mqtt: Option<gw_driver_mqtt::Stats>,
    /// The CoAP endpoint's counters (docs/southbound-coap.md).
    pub coap: Option<gw_driver_coap::Stats>,
    pub registry: Option<Arc<gw_cloud_sync::RegistryStatus>>,
    pub credentials: Option<Arc<gw_auth::CredentialChain>>,
    /// The board, when `[board]` is configured.
    pub board: Option<Arc<crate::board::BoardStatus>>,
    /// The updater, when `[update]` is configured: slots, trial state, last install.
    pub update: Option<Arc<crate::update::Updater>>,
    /// The command router: queue, outcomes (see `docs/commands.md`).
    pub commands: Option<crate::commands::CommandRouter>,
    /// What the command intakes (push, MQTT, HTTP waits) took (docs/command-intake.md).
    pub command_intake: Option<gw_cloud_sync::CommandIntake>,
    /// The legacy broker bridges, with their mappings' interworking descriptors.
    pub bridges: Vec<gw_driver_mqtt::BridgeStatus>,
    /// Why the last `gatewayd provision` refused provision.toml, while that stands.
    pub provision_error: Option<String>,
    /// Messages per second in and out over the last hour, sampled by the status page.
    pub throughput: Arc<crate::status::history::History>,
}

impl WebState {
    pub fn new(gateway: String, application: String, readiness: Readiness) -> Self {
        Self {
            gateway,
            application,
            started: Instant::now(),
            readiness,
            listeners: Arc::default(),
            outbox: None,
            uplink: None,
            mqtt: None,
            coap: None,
            registry: None,
            credentials: None,
            board: None,
            update: None,
            commands: None,
            command_intake: None,
            bridges: Vec::new(),
            provision_error: None,
            throughput: Arc::new(crate::status::history::History::new(
                crate::status::HISTORY_WINDOW,
            )),
        }
    }

    pub fn add_listener(
        &self,
        name: &'static str,
        addr: SocketAddr,
        heartbeat: Option<gw_net::Heartbeat>,
    ) {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).push(Listener {
            name,
            addr,
            heartbeat,
        });
    }

    pub fn listeners(&self) -> Vec<Listener> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Adds the security headers to every answer of the web listener (status page, API, HTTP
/// endpoint, push), unless a handler set its own: no sniffing, no framing, no referrer, the
/// pages' Content-Security-Policy, and HSTS when served over HTTPS (`tls`).
pub async fn security_headers(
    axum::extract::State(tls): axum::extract::State<bool>,
    mut response: Response,
) -> Response {
    use axum::http::{HeaderName, HeaderValue};
    let h = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    if tls {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    set(header::CONTENT_SECURITY_POLICY, crate::status::pages::content_security_policy());
    response
}

/// How long a request's body may take to arrive: `body`, or `upload` for the status page's
/// update upload (`/update`).
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadlines {
    pub body: std::time::Duration,
    pub upload: std::time::Duration,
}

/// Middleware: a request body that has not arrived whole within its deadline fails to read
/// (the handler answers 400 or 408 and the connection closes), so a client trickling one byte
/// every few seconds cannot hold a connection for ever.
pub async fn body_deadline(
    State(deadlines): State<BodyDeadlines>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = if request.uri().path() == "/update" { deadlines.upload } else { deadlines.body };
    let request = request.map(|body| {
        axum::body::Body::new(Deadline { inner: body, sleep: Box::pin(tokio::time::sleep(limit)) })
    });
    next.run(request).await
}

/// A body that fails once its deadline has passed.
struct Deadline {
    inner: axum::body::Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl axum::body::HttpBody for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::{future::Future, task::Poll};
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The routes the daemon itself serves.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    waiting: Vec<&'static str>,
}

async fn readyz(State(state): State<WebState>) -> Response {
    let waiting = state.readiness.waiting();
    let status = if waiting.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(ReadyBody { ready: waiting.is_empty(), waiting })).into_response()
}

/// `GET /api/v1/status`: the gateway, its listeners, the outbox and the uplink.
async fn status(State(state): State<WebState>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(status_json(&state))).into_response()
}

/// The status document of `GET /api/v1/status`; the status page renders the same document.
pub fn status_json(state: &WebState) -> serde_json::Value {
    let outbox = state.outbox.as_ref().map(|o| o.stats());
    let uplink = state.uplink.as_ref().map(|u| u.snapshot());
    let mqtt = state.mqtt.as_ref().map(|m| mqtt_json(&m.snapshot()));
    let body = serde_json::json!({
        "gateway": {
            "name": state.gateway,
            "application": state.application,
            "version": VERSION,
            "uptime_seconds": state.started.elapsed().as_secs(),
            "ready": state.readiness.is_ready(),
            // a board without a real-time clock runs in 1970 until NTP sets it
            "clock_set": gw_model::Timestamp::from_system(std::time::SystemTime::now()).is_trusted(),
        },
        "listeners": state.listeners().iter().map(|l| {
            let check = l.check();
            serde_json::json!({
                "name": l.name,
                "addr": l.addr,
                "accepting": check.is_ok(),
                "fault": check.err(),
            })
        }).collect::<Vec<_>>(),
        "outbox": outbox,
        "uplink": uplink,
        "mqtt": mqtt,
        "coap": state.coap.as_ref().map(|c| c.snapshot()),
        "registry": state.registry.as_ref().map(|r| r.snapshot()),
        "bridges": state.bridges.iter().map(|b| b.snapshot()).collect::<Vec<_>>(),
        "commands": state.commands.as_ref().map(|c| c.status()),
        "command_intake": state.command_intake.as_ref().map(|i| i.stats()),
        "board": state.board.as_ref().map(|b| b.snapshot()),
        "update": state.update.as_ref().map(|u| u.snapshot()),
        "provisioning": {"error": state.provision_error},
        "credentials": state.credentials.as_ref().map(|c| serde_json::json!({
            "registry_devices": c.registry().len(),
            "local_accounts": c.accounts().list().len(),
            "remembered_logins": c.verified_entries(),
        })),
        "throughput": throughput_json(state, outbox.as_ref(), uplink.as_ref()),
    });
    body
}

/// Messages per second in and out now (see [`History::current`]) and, while a backlog
/// shrinks, about when it will be empty.
///
/// [`History::current`]: crate::status::history::History::current
fn throughput_json(
    state: &WebState,
    outbox: Option<&gw_store::OutboxStats>,
    uplink: Option<&gw_cloud_sync::UplinkSnapshot>,
) -> serde_json::Value {
    let total_in = outbox.map_or(0, |o| o.records_committed());
    let total_out = uplink.map_or(0, |u| u.sent);
    let (rate_in, rate_out) = state.throughput.current(Instant::now(), total_in, total_out);
    let queued = outbox.map_or(0, |o| o.records_queued());
    // a backlog shrinks by what goes out beyond what comes in
    let net = rate_out - rate_in;
    let empty_in = (queued > 0 && net > 0.0).then(|| (queued as f64 / net).ceil() as u64);
    serde_json::json!({
        "in_per_second": crate::status::round1(rate_in),
        "out_per_second": crate::status::round1(rate_out),
        "backlog_empty_in_seconds": empty_in,
    })
}

fn mqtt_json(s: &gw_driver_mqtt::EndpointStats) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = s
        .devices
        .iter()
        .map(|(id, c)| {
            serde_json::json!({
                "device": id.to_string(),
                "connected": c.connected,
                "connects": c.connects,
                "disconnects": c.disconnects,
            })
        })
        .collect();
    serde_json::json!({
        "sessions": s.sessions,
        "accepted_connections": s.accepted_connections,
        "refused_connections": s.refused_connections,
        "refused_logins": s.refused_logins,
        "bad_frames": s.bad_frames,
        "takeovers": s.takeovers,
        "publishes": s.publishes,
        "commands_delivered": s.commands_delivered,
        "wills": s.wills,
        "devices": devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(state: WebState) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        (addr, task)
    }

    #[tokio::test]
    async fn readyz_is_503_until_every_condition_holds() {
        let readiness = Readiness::default();
        let store = readiness.condition("store");
        let mqtt = readiness.condition("mqtt listener");
        let (addr, task) = serve(WebState::new("gw1".into(), "app".into(), readiness)).await;
        let url = format!("http://{addr}/readyz");

        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["waiting"], serde_json::json!(["store", "mqtt listener"]));

        store.set();
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 503);
        mqtt.set();
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ready"], true);
        task.abort();
    }

    #[tokio::test]
    async fn healthz_answers_while_the_process_lives() {
        let (addr, task) =
            serve(WebState::new("gw1".into(), "app".into(), Readiness::default())).await;
        let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok\n");
        task.abort();
    }
}
