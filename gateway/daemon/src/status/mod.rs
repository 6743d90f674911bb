//! The technicians' status page: login, the overview with its throughput graph, sensors,
//! commands, interworking, actions, bundle upload, live updates by Server-Sent Events, and
//! `/metrics`.
//!
//! Pages need a technician session: a local account of the technicians' application
//! (`[web] technician_app`, and through the credential chain the legacy login service with
//! migration). `/api/v1/status` and `/metrics` list every identity, parked device and command,
//! so they need a technician session too, or the read-only API token (`[web] api_token_file`,
//! sent as `Authorization: Bearer <token>`) for a monitoring system; [`guard_api`] checks
//! that. Only `/healthz` and `/readyz` stay open, for probes.

pub mod activity;
pub mod controls;
pub mod history;
pub mod metrics;
pub mod pages;
pub mod session;
pub mod update_page;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Form, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use gw_auth::CredentialChain;
use gw_model::{AppId, AuthOutcome, AuthRequest, DeviceId, Identity, PresentedCredential, Secret};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::web::{WebState, status_json};
use activity::Activity;
use metrics::Exposition;
use pages::{SensorRow, get as at, text};
use session::{LOGIN_CSRF_COOKIE, Sessions, constant_time_eq, cookie, random_token};

/// How often the throughput history takes a sample, and the live stream sends an update.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const LIVE_EVERY: Duration = Duration::from_secs(2);
pub(crate) const HISTORY_WINDOW: Duration = Duration::from_secs(3600);
/// A sensor without a session counts as active this long after its last message.
const ACTIVE_WITHIN: Duration = Duration::from_secs(300);

/// What a technician can ask of the running gateway from the actions page.
pub trait Controls: Send + Sync + 'static {
    /// Lists the registry again now. False when no registry is configured.
    fn resync(&self) -> bool;
    /// Releases the devices the cloud refused, so their messages are tried again now.
    fn retry_parked(&self) -> bool;
    /// Drops and re-establishes the uplink's connection. False without an uplink.
    fn restart_uplink(&self) -> bool;
    /// Toggles the identify blink of the board's activity LED. False without a board.
    fn identify(&self) -> bool;
}

/// The status page's state.
#[derive(Clone)]
pub struct StatusPage {
    pub web: WebState,
    pub sessions: Arc<Sessions>,
    pub activity: Arc<Activity>,
    pub chain: Arc<CredentialChain>,
    pub technician_app: AppId,
    pub controls: Arc<dyn Controls>,
}

impl StatusPage {
    pub fn new(
        web: WebState,
        chain: Arc<CredentialChain>,
        activity: Arc<Activity>,
        technician_app: AppId,
        secure: bool,
        controls: Arc<dyn Controls>,
    ) -> Self {
        Self {
            web,
            sessions: Arc::new(Sessions::new(Duration::from_secs(30 * 60), secure)),
            activity,
            chain,
            technician_app,
            controls,
        }
    }

    /// The status document (`GET /api/v1/status`), throughput included.
    pub fn status(&self) -> Value {
        status_json(&self.web)
    }

    /// Feeds the throughput history from the outbox and uplink counters.
    pub fn sample(&self, now: Instant) {
        let total_in = self.web.outbox.as_ref().map_or(0, |o| o.stats().records_committed());
        let total_out = self.web.uplink.as_ref().map_or(0, |u| u.snapshot().sent);
        self.web.throughput.observe(now, total_in, total_out);
    }

    /// Samples every [`SAMPLE_EVERY`] until `stop`.
    pub async fn run_sampler(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sample(Instant::now()),
            }
        }
    }

    /// Makes sure a technician can log in: with no account in the technicians' application,
    /// creates `admin` with `password` (from provisioning) or a random one, which is returned
    /// so the caller prints it once. Never a fixed default.
    pub fn ensure_admin(&self, password: Option<Secret>) -> anyhow::Result<Option<String>> {
        let accounts = self.chain.accounts();
        let app = self.technician_app.as_str();
        if accounts.list().iter().any(|a| a.app == app) {
            return Ok(None);
        }
        let id = Identity::new(self.technician_app.clone(), DeviceId::new("admin")?);
        let (secret, shown) = match password {
            Some(p) => (p, None),
            None => {
                let pw: String = random_token().chars().take(20).collect();
                (Secret::new(pw.clone()), Some(pw))
            }
        };
        accounts.add(&id, &secret)?;
        tracing::info!(account = %id, "created the first technician account");
        Ok(shown)
    }
}

/// `v` to one decimal.
pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn now_ms() -> u64 {
    gw_model::Timestamp::from_system(SystemTime::now()).as_millis()
}

/// The paths [`guard_api`] keeps behind a session or the API token.
pub const GUARDED_API: [&str; 2] = ["/api/v1/status", "/metrics"];

/// Who may read the technician API: a technician session, or the bearer of the API token.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    sessions: Arc<Sessions>,
    token: Option<Secret>,
}

impl ApiAccess {
    pub fn new(sessions: Arc<Sessions>, token: Option<Secret>) -> Self {
        Self { sessions, token }
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        if self.sessions.get(headers).is_some() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match (&self.token, bearer) {
            (Some(token), Some(presented)) => constant_time_eq(token.expose().trim(), presented),
            _ => false,
        }
    }
}

/// Middleware of the web listener: the [`GUARDED_API`] paths answer 401 without a technician
/// session or the API token; every other path passes untouched.
pub async fn guard_api(
    State(access): State<ApiAccess>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !GUARDED_API.contains(&request.uri().path()) || access.allows(request.headers()) {
        return next.run(request).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "log in on the status page, or send the API token as Authorization: Bearer <token> ([web] api_token_file)\n",
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatewayd\""));
    r
}

/// The routes of the status page and `/metrics`.
pub fn router(page: StatusPage) -> Router {
    let upload_limit = update_page::body_limit(&page);
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/sensors", get(sensors))
        .route("/commands", get(commands))
        .route("/interworking", get(interworking))
        .route("/actions", get(actions))
        .route("/actions/{action}", post(act))
        .route(
            "/update",
            get(update_page::show)
                .post(update_page::upload)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(page)
}

fn html(markup: maud::Markup) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(markup.into_string())).into_response()
}

/// The session, or a redirect to the login form that comes back to `path`.
#[allow(clippy::result_large_err)]
fn require(
    page: &StatusPage,
    headers: &HeaderMap,
    path: &str,
) -> Result<session::Session, Response> {
    page.sessions.get(headers).ok_or_else(|| {
        let next = percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC);
        Redirect::to(&format!("/login?next={next}")).into_response()
    })
}

async fn overview(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    let s = match require(&page, &headers, "/") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let status = page.status();
    html(pages::overview(&status, now_ms(), &page.web.throughput.svg(Instant::now()), &s.csrf))
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only paths on this site: `/x`, never `//host` or a URL. Browsers drop tabs and line breaks
/// from a URL and read `\\` as `/`, so `/\t/host` would leave the site: only printable ASCII
/// without a backslash is kept, and a percent-encoded control character or slash right after
/// the first `/` is refused too.
fn safe_next(next: Option<&str>) -> String {
    let lower = |s: &str| s.to_ascii_lowercase();
    let ok = |n: &str| {
        let rest = n.strip_prefix('/').unwrap_or("/");
        let second = rest.bytes().next();
        n.starts_with('/')
            && !matches!(second, Some(b'/' | b'\\'))
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
            && !["%0", "%1", "%7f", "%2f%2f"].iter().any(|bad| lower(n).contains(bad))
            && !["%2f", "%5c"].iter().any(|bad| lower(rest).starts_with(bad))
    };
    match next {
        Some(n) if ok(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn login_page(page: &StatusPage, status: StatusCode, error: Option<&str>, next: &str) -> Response {
    let token = random_token();
    let cookie =
        page.sessions.set_cookie(LOGIN_CSRF_COOKIE, &token, Some(Duration::from_secs(3600)));
    let mut r = html(pages::login(&page.web.gateway, &token, error, next));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(State(page): State<StatusPage>, Query(q): Query<NextQuery>) -> Response {
    login_page(&page, StatusCode::OK, None, &safe_next(q.next.as_deref()))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// Refused status page logins: logged one by one up to a burst, then summarized.
static LOGIN_REFUSED: gw_net::Throttle = gw_net::Throttle::new("status page login refused");

async fn login(
    State(page): State<StatusPage>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(&expected, &form.csrf) {
        if LOGIN_REFUSED.allow(Some(peer.ip())) {
            tracing::warn!(peer = %peer.ip(), "status page login without a valid CSRF token refused");
        }
        return login_page(
            &page,
            StatusCode::FORBIDDEN,
            Some("The form expired; please log in again."),
            &next,
        );
    }
    let Some(request) = technician_request(&page.technician_app, &form.username, &form.password)
    else {
        return login_page(&page, StatusCode::UNAUTHORIZED, Some("Wrong user or password."), &next);
    };
    match page.chain.authenticate_local(&request, Some(peer.ip())).await {
        AuthOutcome::Pass(user) => {
            tracing::info!(user = %user, peer = %peer.ip(), "technician logged in");
            let token = page.sessions.start(user);
            let mut r = Redirect::to(&next).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            for c in [
                page.sessions.set_cookie(session::SESSION_COOKIE, &token, None),
                page.sessions.clear_cookie(LOGIN_CSRF_COOKIE),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        AuthOutcome::Fail | AuthOutcome::Forbidden => {
            if LOGIN_REFUSED.allow(Some(peer.ip())) {
                tracing::warn!(user = %form.username, peer = %peer.ip(), "technician login failed");
            }
            login_page(&page, StatusCode::UNAUTHORIZED, Some("Wrong user or password."), &next)
        }
        AuthOutcome::RateLimited => {
            if LOGIN_REFUSED.allow(Some(peer.ip())) {
                tracing::warn!(user = %form.username, peer = %peer.ip(), "technician login rate-limited");
            }
            let mut r = login_page(
                &page,
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed attempts; wait a moment before trying again."),
                &next,
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            r
        }
    }
}

/// `name` or `name@<technician app>` as a login request, always in the technicians'
/// application: any other `@` belongs to the name (an e-mail address), so `sensor1@my-app`
/// is a technician account of that name, which a sensor's credentials never are.
fn technician_request(app: &AppId, username: &str, password: &str) -> Option<AuthRequest> {
    let name = match username.rsplit_once('@') {
        Some((name, a)) if a == app.as_str() => name,
        _ => username,
    };
    Some(AuthRequest {
        app: app.clone(),
        device: DeviceId::new(name.trim()).ok()?,
        credential: PresentedCredential::Password(Secret::new(password)),
    })
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(page): State<StatusPage>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(s) = page.sessions.get(&headers) {
        if !constant_time_eq(&s.csrf, &form.csrf) {
            return (StatusCode::FORBIDDEN, "invalid CSRF token\n").into_response();
        }
        tracing::info!(user = %s.user, "technician logged out");
        page.sessions.end(&headers);
    }
    let mut r = Redirect::to("/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&page.sessions.clear_cookie(session::SESSION_COOKIE)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// Every device this gateway proxies (registry cache and static devices) and every device seen
/// lately, with its connection state, protocol, activity and queued commands.
fn sensor_rows(page: &StatusPage, status: &Value) -> Vec<SensorRow> {
    use std::collections::BTreeMap;
    let now = SystemTime::now();
    let mut devices: BTreeMap<String, SensorRow> = BTreeMap::new();
    let blank = |device: String| SensorRow {
        device,
        connected: false,
        active: false,
        protocol: "—".into(),
        last_seen: "never".into(),
        today: 0,
        queued_commands: 0,
    };
    let registry = page.chain.registry();
    let statics = page.chain.static_devices();
    for (app, name) in registry.devices().chain(statics.devices()) {
        let id = format!("{name}@{app}");
        devices.insert(id.clone(), blank(id));
    }
    for (id, a) in page.activity.all(now) {
        let key = id.to_string();
        let row = devices.entry(key.clone()).or_insert_with(|| blank(key));
        row.protocol = a.protocol.to_owned();
        let secs = now.duration_since(a.last_seen).unwrap_or_default().as_secs();
        row.last_seen = format!("{} ago", pages::duration(secs));
        row.active = secs < ACTIVE_WITHIN.as_secs();
        row.today = a.today;
    }
    // Connection state from the drivers that keep sessions (MQTT; others report the same shape).
    for section in ["mqtt"] {
        for d in at(status, &format!("{section}.devices")).as_array().into_iter().flatten() {
            let key = text(at(d, "device"));
            if key == "—" {
                continue;
            }
            let connected = at(d, "connected").as_bool().unwrap_or(false);
            let row = devices.entry(key.clone()).or_insert_with(|| blank(key));
            if connected {
                row.connected = true;
                row.protocol = section.to_owned();
            }
        }
    }
    for q in at(status, "commands.devices").as_array().into_iter().flatten() {
        let key = format!("{}@{}", text(at(q, "device")), text(at(q, "application")));
        let row = devices.entry(key.clone()).or_insert_with(|| blank(key));
        row.queued_commands = at(q, "queued").as_u64().unwrap_or(0);
    }
    devices.into_values().collect()
}

/// A row matches when every word of the query appears in its device, protocol or state.
fn matches(row: &SensorRow, query: &str) -> bool {
    let hay = format!(
        "{} {} {}",
        row.device.to_lowercase(),
        row.protocol.to_lowercase(),
        if row.connected {
            "connected"
        } else if row.active {
            "active"
        } else {
            "offline not connected"
        }
    );
    query.split_whitespace().all(|w| hay.contains(&w.to_lowercase()))
}

async fn sensors(
    State(page): State<StatusPage>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let s = match require(&page, &headers, "/sensors") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let status = page.status();
    let all = sensor_rows(&page, &status);
    let total = all.len();
    let rows: Vec<SensorRow> = all.into_iter().filter(|r| matches(r, &q.q)).collect();
    html(pages::sensors(&rows, &q.q, total, &s.csrf))
}

async fn commands(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    match require(&page, &headers, "/commands") {
        Ok(s) => html(pages::commands(&page.status(), now_ms(), &s.csrf)),
        Err(r) => r,
    }
}

async fn interworking(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    match require(&page, &headers, "/interworking") {
        Ok(s) => html(pages::interworking(&page.status(), &s.csrf)),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

async fn actions(
    State(page): State<StatusPage>,
    headers: HeaderMap,
    Query(q): Query<DoneQuery>,
) -> Response {
    let s = match require(&page, &headers, "/actions") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let done = q.done.as_deref().map(|d| match d {
        "resync" => "Registry resync requested.",
        "retry-parked" => "Parked devices released; their messages are tried again.",
        "restart-uplink" => "Uplink restart requested.",
        "identify" => "Identify toggled: the activity LED blinks (press again to stop).",
        "unavailable" => "Not available on this gateway (not configured).",
        _ => "Done.",
    });
    html(pages::actions(&s.csrf, done))
}

async fn act(
    State(page): State<StatusPage>,
    headers: HeaderMap,
    Path(action): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let s = match require(&page, &headers, "/actions") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !constant_time_eq(&s.csrf, &form.csrf) {
        tracing::warn!(user = %s.user, action, "action without a valid CSRF token refused");
        return (StatusCode::FORBIDDEN, "invalid CSRF token\n").into_response();
    }
    let done = match action.as_str() {
        "resync" => page.controls.resync(),
        "retry-parked" => page.controls.retry_parked(),
        "restart-uplink" => page.controls.restart_uplink(),
        "identify" => page.controls.identify(),
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    tracing::info!(user = %s.user, action, done, "technician action");
    let to = if done { action } else { "unavailable".to_owned() };
    let mut r = Redirect::to(&format!("/actions?done={to}")).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// The live fields of the overview, keyed as the page's `data-live` attributes.
fn live(page: &StatusPage) -> Value {
    let s = page.status();
    let now = now_ms();
    let disk = at(&s, "outbox.disk_bytes").as_u64().unwrap_or(0);
    let max = at(&s, "outbox.max_bytes").as_u64().unwrap_or(0);
    json!({
        "uptime": pages::duration(at(&s, "gateway.uptime_seconds").as_u64().unwrap_or(0)),
        "ready": text(at(&s, "gateway.ready")),
        "uplink_state": text(at(&s, "uplink.state")),
        "uplink_error": text(at(&s, "uplink.last_error")),
        "registry_age": pages::age(at(&s, "registry.last_sync_at_ms"), now),
        "outbox_depth": at(&s, "outbox.records_queued").as_u64().unwrap_or(0).to_string(),
        "outbox_bytes": pages::bytes(at(&s, "outbox.bytes_queued").as_u64().unwrap_or(0)),
        "outbox_oldest": pages::oldest(&s),
        "outbox_drain": pages::drain(&s),
        "outbox_disk": format!("{} of {}", pages::bytes(disk), pages::bytes(max)),
        "outbox_dropped": text(at(&s, "outbox.dropped")),
        "dead_letters": text(at(&s, "uplink.dead_letters")),
        "rate_in": text(at(&s, "throughput.in_per_second")),
        "rate_out": text(at(&s, "throughput.out_per_second")),
        "graph": page.web.throughput.svg(Instant::now()),
    })
}

async fn events(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    if page.sessions.get(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
    }
    let stream = futures_util::stream::unfold(
        (page, tokio::time::interval(LIVE_EVERY)),
        |(page, mut tick)| async move {
            tick.tick().await;
            let event = Event::default().event("status").data(live(&page).to_string());
            Some((Ok::<_, Infallible>(event), (page, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn metrics(State(page): State<StatusPage>) -> Response {
    let body = exposition(&page);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

enum Kind {
    Counter,
    Gauge,
}

/// `/metrics` families that are one number of the status document: kind, name, help, path.
const FAMILIES: &[(Kind, &str, &str, &str)] = &[
    (
        Kind::Gauge,
        "gatewayd_outbox_records",
        "Records waiting for the cloud (in flight included).",
        "outbox.records_queued",
    ),
    (
        Kind::Gauge,
        "gatewayd_outbox_oldest_age_seconds",
        "How long ago the oldest record waiting for the cloud was received (0 when none waits or its receive time is unknown: the clock was not set).",
        "outbox.oldest_age_seconds",
    ),
    (
        Kind::Gauge,
        "gatewayd_outbox_bytes",
        "Bytes of the records waiting for the cloud.",
        "outbox.bytes_queued",
    ),
    (
        Kind::Gauge,
        "gatewayd_outbox_disk_bytes",
        "Size of the outbox's segment files.",
        "outbox.disk_bytes",
    ),
    (
        Kind::Gauge,
        "gatewayd_outbox_max_bytes",
        "The outbox's configured size limit.",
        "outbox.max_bytes",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_committed_total",
        "Records committed to the outbox.",
        "outbox.records_committed",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_commits_total",
        "Group commits of the outbox.",
        "outbox.commits",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_written_bytes_total",
        "Bytes written to outbox segments.",
        "outbox.bytes_written",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_dropped_total",
        "Records dropped by when_full = \"drop-oldest\".",
        "outbox.dropped",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_expired_total",
        "Records dropped because the cloud refused their device for parked_max_age.",
        "outbox.expired",
    ),
    (
        Kind::Counter,
        "gatewayd_outbox_too_old_total",
        "Records dropped because they waited longer than [store] max_age.",
        "outbox.too_old",
    ),
    (Kind::Counter, "gatewayd_uplink_sent_total", "Records the cloud accepted.", "uplink.sent"),
    (
        Kind::Counter,
        "gatewayd_uplink_failures_total",
        "Transient uplink failures (retried).",
        "uplink.failures",
    ),
    (
        Kind::Counter,
        "gatewayd_uplink_dead_letters_total",
        "Records the cloud rejected for good.",
        "uplink.dead_letters",
    ),
    (Kind::Gauge, "gatewayd_mqtt_sessions", "Connected MQTT sessions.", "mqtt.sessions"),
    (
        Kind::Counter,
        "gatewayd_mqtt_refused_logins_total",
        "MQTT CONNECTs refused (credentials, rate limit).",
        "mqtt.refused_logins",
    ),
    (
        Kind::Counter,
        "gatewayd_mqtt_bad_frames_total",
        "MQTT connections closed for undecodable or oversized packets.",
        "mqtt.bad_frames",
    ),
    (
        Kind::Counter,
        "gatewayd_mqtt_commands_delivered_total",
        "Commands published to MQTT sessions.",
        "mqtt.commands_delivered",
    ),
    (
        Kind::Gauge,
        "gatewayd_registry_devices",
        "Devices the registry lets this gateway proxy.",
        "registry.devices",
    ),
    (
        Kind::Counter,
        "gatewayd_registry_syncs_total",
        "Successful registry listings.",
        "registry.syncs",
    ),
    (
        Kind::Counter,
        "gatewayd_registry_failures_total",
        "Failed registry listings.",
        "registry.failures",
    ),
];

/// `/metrics`: the status document's counters and gauges, and the ingest histograms.
pub fn exposition(page: &StatusPage) -> String {
    let s = page.status();
    let mut e = Exposition::default();
    e.gauge1("gatewayd_up", "1 while the gateway runs.", 1.0);
    e.gauge1(
        "gatewayd_uptime_seconds",
        "Seconds since the gateway started.",
        num(at(&s, "gateway.uptime_seconds")),
    );
    e.gauge1(
        "gatewayd_ready",
        "1 when every listener is bound and the store is open.",
        if at(&s, "gateway.ready").as_bool() == Some(true) { 1.0 } else { 0.0 },
    );
    // Messages in, by protocol, from the drivers' view of the outbox.
    let mut by_protocol: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for (_, a) in page.activity.all(SystemTime::now()) {
        *by_protocol.entry(a.protocol).or_default() += a.total;
    }
    let samples: Vec<(Vec<(&str, &str)>, f64)> =
        by_protocol.iter().map(|(p, n)| (vec![("protocol", *p)], *n as f64)).collect();
    let refs: Vec<(&[(&str, &str)], f64)> =
        samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
    e.counter(
        "gatewayd_messages_received_total",
        "Sensor messages committed to the outbox, by southbound protocol.",
        &refs,
    );
    let [quota, large, unavailable, invalid] = page.activity.refusals();
    e.counter(
        "gatewayd_messages_refused_total",
        "Sensor messages the outbox refused, by reason.",
        &[
            (&[("reason", "quota_exceeded")], quota as f64),
            (&[("reason", "too_large")], large as f64),
            (&[("reason", "unavailable")], unavailable as f64),
            (&[("reason", "invalid")], invalid as f64),
        ],
    );
    e.histogram(
        "gatewayd_ingest_latency_seconds",
        "Time from a sensor message's arrival at the outbox to its durable commit.",
        &page.activity.latency,
    );
    e.histogram(
        "gatewayd_message_payload_bytes",
        "Payload sizes of committed sensor messages.",
        &page.activity.sizes,
    );
    // Families read straight from the status document; a section that is absent (component
    // not configured) contributes none.
    for (kind, name, help, path) in FAMILIES {
        let section = path.split('.').next().unwrap_or_default();
        if !at(&s, section).is_object() {
            continue;
        }
        let value = num(at(&s, path));
        match kind {
            Kind::Counter => e.counter1(name, help, value as u64),
            Kind::Gauge => e.gauge1(name, help, value),
        }
    }
    if at(&s, "uplink").is_object() {
        let connected = text(at(&s, "uplink.state")) == "connected";
        e.gauge1(
            "gatewayd_uplink_connected",
            "1 while the uplink is connected.",
            f64::from(u8::from(connected)),
        );
        e.gauge1(
            "gatewayd_uplink_parked_devices",
            "Devices whose messages are parked.",
            at(&s, "uplink.parked_devices").as_array().map_or(0, Vec::len) as f64,
        );
    }
    if at(&s, "registry").is_object() {
        e.gauge1(
            "gatewayd_registry_last_sync_timestamp_seconds",
            "When the registry was last listed.",
            num(at(&s, "registry.last_sync_at_ms")) / 1000.0,
        );
    }
    // Every numeric counter of the command router and of further drivers, by name.
    if let Some(counts) = at(&s, "commands.counts").as_object() {
        let samples: Vec<(Vec<(&str, &str)>, f64)> =
            counts.iter().map(|(k, v)| (vec![("outcome", k.as_str())], num(v))).collect();
        let refs: Vec<(&[(&str, &str)], f64)> =
            samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        e.counter("gatewayd_commands_total", "Commands from the cloud, by outcome.", &refs);
        e.gauge1(
            "gatewayd_commands_queued",
            "Commands waiting for their sensor.",
            num(at(&s, "commands.queued")),
        );
    }
    // The CoAP endpoint's counters, by name.
    if let Some(o) = at(&s, "coap").as_object() {
        for (k, v) in o.iter().filter(|(_, v)| v.is_u64()) {
            let name = format!("gatewayd_coap_{k}");
            e.gauge1(&name, &format!("CoAP endpoint: {}.", k.replace('_', " ")), num(v));
        }
    }
    let bridges = at(&s, "bridges").as_array().cloned().unwrap_or_default();
    if !bridges.is_empty() {
        let names: Vec<String> = bridges.iter().map(|b| text(at(b, "name"))).collect();
        let per = |value: &dyn Fn(&Value) -> f64| -> Vec<(Vec<(&str, &str)>, f64)> {
            bridges
                .iter()
                .zip(&names)
                .map(|(b, n)| (vec![("bridge", n.as_str())], value(b)))
                .collect()
        };
        let families = [
            (
                per(&|b| f64::from(u8::from(at(b, "connected").as_bool() == Some(true)))),
                false,
                "gatewayd_bridge_connected",
                "1 while the bridge is connected to its site broker.",
            ),
            (
                per(&|b| num(at(b, "messages"))),
                true,
                "gatewayd_bridge_messages_total",
                "Site broker messages committed to the outbox.",
            ),
            (
                per(&|b| num(at(b, "reconnects"))),
                true,
                "gatewayd_bridge_reconnects_total",
                "Bridge connection attempts failed or connections lost.",
            ),
        ];
        for (samples, counter, name, help) in &families {
            let refs: Vec<(&[(&str, &str)], f64)> =
                samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            if *counter {
                e.counter(name, help, &refs);
            } else {
                e.gauge(name, help, &refs);
            }
        }
    }
    if at(&s, "board").is_object() {
        if let Some(t) = at(&s, "board.temperature_celsius").as_f64() {
            e.gauge1("gatewayd_board_temperature_celsius", "The board's thermal zone.", t);
        }
        if let Some(t) = at(&s, "board.throttled").as_bool() {
            e.gauge1(
                "gatewayd_board_throttled",
                "1 while the firmware throttles (under-voltage or heat).",
                f64::from(u8::from(t)),
            );
        }
        e.gauge1(
            "gatewayd_board_watchdog_kicking",
            "1 while the watchdog is kicked (every component healthy).",
            f64::from(u8::from(text(at(&s, "board.watchdog")) == "kicking")),
        );
    }
    e.gauge1(
        "gatewayd_provision_error",
        "1 while the last provision.toml import stands refused (provision.error).",
        f64::from(u8::from(at(&s, "provisioning.error").is_string())),
    );
    e.gauge1(
        "gatewayd_status_page_sessions",
        "Technician sessions open.",
        page.sessions.len() as f64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/sensors?q=a")), "/sensors?q=a");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/", "tabs are dropped by browsers");
        assert_eq!(safe_next(Some("/%09/evil.example")), "/");
        assert_eq!(safe_next(Some("/%2F/evil.example")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(Some("/sensors?q=a%20b")), "/sensors?q=a%20b");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn technicians_log_in_in_their_application_only() {
        let app = AppId::new("technicians").unwrap();
        let r = technician_request(&app, "admin", "pw").unwrap();
        assert_eq!((r.app.as_str(), r.device.as_str()), ("technicians", "admin"));
        assert!(technician_request(&app, "admin@technicians", "pw").is_some());
        let other = technician_request(&app, "sensor1@my-app", "pw").unwrap();
        assert_eq!((other.app.as_str(), other.device.as_str()), ("technicians", "sensor1@my-app"));
        let mail = technician_request(&app, "test@example.com@technicians", "pw").unwrap();
        assert_eq!((mail.app.as_str(), mail.device.as_str()), ("technicians", "test@example.com"));
        assert!(technician_request(&app, "", "pw").is_none());
    }

    #[test]
    fn sensor_search_matches_every_word() {
        let row = SensorRow {
            device: "sensor1@app".into(),
            connected: true,
            active: true,
            protocol: "mqtt".into(),
            last_seen: "1 s ago".into(),
            today: 1,
            queued_commands: 0,
        };
        assert!(matches(&row, ""));
        assert!(matches(&row, "SENSOR1 mqtt"));
        assert!(matches(&row, "connected"));
        assert!(!matches(&row, "coap"));
    }
}
