//! The external push endpoint: Drogue Cloud pushes a command for a device to the gateway named
//! in the device's `spec.gatewaySelector`, when that gateway has `spec.commands` with an
//! external endpoint (contracts/drogue-cloud.md §4 "External push").
//!
//! `POST /api/commands/v1/push` with Drogue's default body
//! `{"application","device","command","payload": base64}` (`payload` may be missing or `null`:
//! an empty command). The answer is the truth about the command, and Drogue counts any 2xx as
//! success, so 2xx comes only once the command was delivered or durably queued:
//!
//! | outcome                                                  | status |
//! |----------------------------------------------------------|--------|
//! | delivered to the device (or handled by the gateway)      | 200    |
//! | queued durably for the device                            | 202    |
//! | bad JSON, base64, name or TTL                            | 400    |
//! | a replay of a push already taken (see below)             | 200 `{"outcome":"duplicate"}` |
//! | no `Authorization: Bearer` or `Basic` header             | 401 with `WWW-Authenticate` |
//! | wrong secret; no verified client certificate when required | 403  |
//! | a `timestamp` more than 5 minutes off the gateway's clock | 403   |
//! | the device is not one this gateway proxies               | 404    |
//! | body above the limit, or a command too large to queue    | 413    |
//! | refused for another reason (e.g. already expired)        | 422    |
//! | the device's queue or the store is full                  | 503 with `Retry-After` |
//!
//! A per-command time to live becomes [`Command::expires_at`]: the body's `ttl` field
//! (`"30s"`, `"5m"`, or a number of seconds) or else the `X-Command-TTL` header (Drogue copies a
//! gateway's configured `headers` onto every push, so a header sets one TTL for all of them).
//! Without either, the router's default applies.
//!
//! The secret comes as `Authorization: Bearer <token>` or, as Drogue's `headers` may carry it,
//! `Authorization: Basic base64(<any user>:<token>)`.
//!
//! **Replays.** A push captured on the way (plain HTTP, a proxy's log) must not queue its
//! command again. A push that names itself, with an `id` in the body or an `X-Command-Id`
//! header, is taken once per id (the last 4,096 ids, for a day). A push with a `timestamp`
//! (body field or `X-Command-Timestamp` header; RFC 3339 or seconds since the epoch) more
//! than 5 minutes off the gateway's clock is refused. A push with neither (Drogue's default
//! body) is a replay when the same body came within `replay_window` (`[web]
//! push_replay_window`, 60 s by default) and was taken then. A replay is answered
//! 200 `{"outcome":"duplicate"}` and not queued again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use gw_model::{AppId, Command, CommandName, CommandOutcome, DeviceId, Secret, Timestamp};
use serde::Deserialize;
use serde_json::json;

use super::{CommandIntake, Via};

/// The route Drogue pushes to.
pub const PATH: &str = "/api/commands/v1/push";
/// The header that may carry a per-command time to live.
pub const TTL_HEADER: &str = "x-command-ttl";
/// Seconds a pusher is asked to wait after a full queue (503).
pub const RETRY_AFTER_SECS: u32 = 30;

/// How the push endpoint authenticates the cloud and bounds what it takes.
#[derive(Clone)]
pub struct PushConfig {
    /// The Bearer secret the cloud presents.
    pub token: Secret,
    /// Also require a TLS client certificate verified against the push CA: the web listener
    /// marks such requests with [`VerifiedClientCert`].
    pub require_client_cert: bool,
    /// The largest request body taken; larger ones get 413.
    pub max_body: usize,
    /// How long an identical push without an id or timestamp counts as a replay.
    pub replay_window: Duration,
}

/// How long a command id is remembered.
const ID_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How far a push's timestamp may be from the gateway's clock.
const TIMESTAMP_SKEW: Duration = Duration::from_secs(300);
/// How many pushes are remembered for replay detection.
const REPLAY_MEMORY: usize = 4096;
/// The header that may name a push.
pub const ID_HEADER: &str = "x-command-id";
/// The header that may date a push.
pub const TIMESTAMP_HEADER: &str = "x-command-timestamp";

/// The pushes taken recently, by keyed digest (of the id, or of the whole body), with when
/// each stops counting. Bounded: the oldest goes first.
#[derive(Debug, Default)]
struct Replays {
    until: HashMap<[u8; 32], Instant>,
    order: VecDeque<[u8; 32]>,
}

impl Replays {
    /// Claims `key` until `until`; `false` if it is claimed already (a replay).
    fn claim(&mut self, key: [u8; 32], now: Instant, until: Instant) -> bool {
        if self.until.get(&key).is_some_and(|u| *u > now) {
            return false;
        }
        while self.until.len() >= REPLAY_MEMORY {
            match self.order.pop_front() {
                Some(old) => {
                    self.until.remove(&old);
                }
                None => break,
            }
        }
        if self.until.insert(key, until).is_none() {
            self.order.push_back(key);
        }
        true
    }

    /// Gives `key` back: its push was not taken after all.
    fn release(&mut self, key: &[u8; 32]) {
        self.until.remove(key);
        self.order.retain(|k| k != key);
    }
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("require_client_cert", &self.require_client_cert)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// A request extension the web listener adds when the TLS peer presented a client
/// certificate that verified against the push CA (`[web] push_client_ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClientCert;

#[derive(Clone)]
struct PushState {
    intake: CommandIntake,
    token_digest: Arc<[u8]>,
    require_client_cert: bool,
    replay_window: Duration,
    replays: Arc<Mutex<Replays>>,
}

/// The push route, to merge into the web listener's router.
pub fn router(intake: CommandIntake, config: PushConfig) -> Router {
    let state = PushState {
        intake,
        token_digest: digest(config.token.expose().as_bytes()).into(),
        require_client_cert: config.require_client_cert,
        replay_window: config.replay_window,
        replays: Arc::default(),
    };
    Router::new()
        .route(PATH, post(push))
        .layer(DefaultBodyLimit::max(config.max_body))
        .with_state(state)
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

/// Compares the presented secret with the configured one in time independent of where they
/// differ: both are hashed to fixed-length digests first, then every byte is looked at.
fn token_matches(presented: &str, expected_digest: &[u8]) -> bool {
    let presented = digest(presented.as_bytes());
    presented.len() == expected_digest.len()
        && presented.iter().zip(expected_digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Drogue's default body, plus the optional `ttl`. Unknown fields are ignored.
#[derive(Deserialize)]
struct PushBody {
    application: String,
    device: String,
    command: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    ttl: Option<Ttl>,
    /// Names the push for replay detection.
    #[serde(default)]
    id: Option<String>,
    /// When the push was made (RFC 3339, or seconds since the epoch).
    #[serde(default)]
    timestamp: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

impl Ttl {
    fn duration(&self) -> Result<Duration, String> {
        let d = match self {
            Ttl::Seconds(s) => Duration::from_secs(*s),
            Ttl::Text(t) => match t.trim().parse::<u64>() {
                Ok(s) => Duration::from_secs(s),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| format!("ttl {t:?} is not a duration such as \"30s\": {e}"))?,
            },
        };
        if d.is_zero() {
            return Err("ttl must be above 0".into());
        }
        Ok(d)
    }

    /// As a timestamp: seconds since the epoch, or RFC 3339.
    fn instant(&self) -> Result<SystemTime, String> {
        let bad =
            |t: &str| format!("timestamp {t:?} is neither RFC 3339 nor seconds since the epoch");
        match self {
            Ttl::Seconds(s) => Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(*s)),
            Ttl::Text(t) => match t.trim().parse::<u64>() {
                Ok(s) => Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
                Err(_) => humantime::parse_rfc3339_weak(t.trim()).map_err(|_| bad(t)),
            },
        }
    }
}

async fn push(State(state): State<PushState>, headers: HeaderMap, request: Request) -> Response {
    if state.require_client_cert && request.client_cert.is_none() {
        state.intake.count_refused_request(true);
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "a client certificate issued by the push CA is required",
        );
    }
    let Some(token) = presented_secret(&headers) else {
        state.intake.count_refused_request(true);
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a Bearer token (or Basic with the token as password) is required",
        );
        let headers = r.headers_mut();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatewayd\""),
        );
        headers
            .append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"gatewayd\""));
        return r;
    };
    if !token_matches(&token, &state.token_digest) {
        state.intake.count_refused_request(true);
        return error(StatusCode::FORBIDDEN, "Forbidden", "wrong token");
    }
    let parsed = parse(&headers, &request.body, Timestamp::from_system(SystemTime::now()));
    let Parsed { command, id, timestamp } = match parsed {
        Ok(p) => p,
        Err(why) => {
            state.intake.count_refused_request(false);
            return error(StatusCode::BAD_REQUEST, "BadRequest", &why);
        }
    };
    if let Some(at) = timestamp {
        let now = SystemTime::now();
        let off = now.duration_since(at).or_else(|_| at.duration_since(now)).unwrap_or_default();
        if off > TIMESTAMP_SKEW {
            state.intake.count_refused_request(true);
            tracing::warn!(device = %command.device, command = %command.name, off_s = off.as_secs(), "command push refused: its timestamp is too far from this gateway's clock (a replay?)");
            return error(
                StatusCode::FORBIDDEN,
                "Stale",
                "the push's timestamp is more than 5 minutes off this gateway's clock",
            );
        }
    }
    let now = Instant::now();
    // a dated push is unique by its body while its timestamp is accepted
    let body_memory = if timestamp.is_some() { 2 * TIMESTAMP_SKEW } else { state.replay_window };
    let (key, until) = match &id {
        Some(id) => (digest_key(&[b"id", id.as_bytes()]), now + ID_MEMORY),
        None => (digest_key(&[b"body", &request.body]), now + body_memory),
    };
    if !lock(&state.replays).claim(key, now, until) {
        tracing::warn!(device = %command.device, command = %command.name, "command push ignored: a replay of one taken before");
        return (StatusCode::OK, Json(json!({"outcome": "duplicate"}))).into_response();
    }
    let outcome = state.intake.submit(Via::Push, command).await;
    if !matches!(outcome, CommandOutcome::Delivered | CommandOutcome::Queued) {
        lock(&state.replays).release(&key);
    }
    answer(outcome)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn digest_key(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The secret of `Authorization: Bearer <token>` or the password of `Basic <user:token>`.
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// The body and whether the listener verified a client certificate.
struct Request {
    body: Bytes,
    client_cert: Option<VerifiedClientCert>,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Request {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let client_cert = req.extensions().get::<VerifiedClientCert>().copied();
        match Bytes::from_request(req, state).await {
            Ok(body) => Ok(Self { body, client_cert }),
            Err(rejection) => {
                let status = rejection.status();
                let message = rejection.body_text();
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "PayloadTooLarge"
                } else {
                    "BadRequest"
                };
                Err(error(status, kind, &message))
            }
        }
    }
}

/// A push body as a command, with what names and dates it.
#[derive(Debug)]
struct Parsed {
    command: Command,
    id: Option<String>,
    timestamp: Option<SystemTime>,
}

/// Turns a push body into a command, `now` being its arrival.
fn parse(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Parsed, String> {
    let body: PushBody = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not {{\"application\",\"device\",\"command\",\"payload\"}}: {e}")
    })?;
    let app = AppId::new(body.application).map_err(|e| e.to_string())?;
    let device = DeviceId::new(body.device).map_err(|e| e.to_string())?;
    let name = CommandName::new(body.command).map_err(|e| e.to_string())?;
    let payload = match body.payload.as_deref() {
        None | Some("") => Bytes::new(),
        Some(text) => Bytes::from(
            BASE64.decode(text.trim()).map_err(|e| format!("payload is not base64: {e}"))?,
        ),
    };
    let ttl = match body.ttl {
        Some(ttl) => Some(ttl.duration()?),
        None => match headers.get(TTL_HEADER) {
            None => None,
            Some(v) => {
                let text = v.to_str().map_err(|_| format!("{TTL_HEADER} is not text"))?;
                Some(Ttl::Text(text.to_owned()).duration()?)
            }
        },
    };
    let header_text = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(|t| t.trim().to_owned()).map_err(|_| format!("{name} is not text"))
            })
            .transpose()
    };
    let id = match body.id {
        Some(id) => Some(id),
        None => header_text(ID_HEADER)?,
    }
    .filter(|id| !id.is_empty());
    let timestamp = match body.timestamp {
        Some(t) => Some(t),
        None => header_text(TIMESTAMP_HEADER)?.map(Ttl::Text),
    }
    .map(|t| t.instant())
    .transpose()?;
    let command = Command {
        app,
        device,
        name,
        content_type: None,
        payload,
        created_at: now,
        expires_at: ttl.map(|ttl| now.saturating_add(ttl)),
    };
    Ok(Parsed { command, id, timestamp })
}

/// Standard base64, padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn answer(outcome: CommandOutcome) -> Response {
    match outcome {
        CommandOutcome::Delivered => {
            (StatusCode::OK, Json(json!({"outcome": "delivered"}))).into_response()
        }
        CommandOutcome::Queued => {
            (StatusCode::ACCEPTED, Json(json!({"outcome": "queued"}))).into_response()
        }
        CommandOutcome::UnknownDevice => error(
            StatusCode::NOT_FOUND,
            "UnknownDevice",
            "the device is not one this gateway acts for",
        ),
        CommandOutcome::TooLarge => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "the command is too large")
        }
        CommandOutcome::QueueFull => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "QueueFull",
                "the device's command queue is full",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            r
        }
        CommandOutcome::Rejected(why) => error(StatusCode::UNPROCESSABLE_ENTITY, "Rejected", &why),
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"code": status.as_u16(), "error": kind, "message": message})))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ttl: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ttl) = ttl {
            h.insert(TTL_HEADER, HeaderValue::from_str(ttl).unwrap());
        }
        h
    }

    #[test]
    fn parses_drogues_default_body() {
        let body = br#"{"application":"my-app","device":"sensor1","command":"set-temp","payload":"eyJ0IjoyMX0="}"#;
        let c = parse(&headers(None), body, Timestamp::from_millis(1000)).unwrap().command;
        assert_eq!(
            (c.app.as_str(), c.device.as_str(), c.name.as_str()),
            ("my-app", "sensor1", "set-temp")
        );
        assert_eq!(&c.payload[..], br#"{"t":21}"#);
        assert_eq!(c.created_at, Timestamp::from_millis(1000));
        assert_eq!(c.expires_at, None);
    }

    #[test]
    fn missing_or_null_payload_is_empty_and_padding_is_optional() {
        for body in [
            r#"{"application":"a","device":"d","command":"c"}"#,
            r#"{"application":"a","device":"d","command":"c","payload":null}"#,
            r#"{"application":"a","device":"d","command":"c","payload":""}"#,
        ] {
            let c =
                parse(&headers(None), body.as_bytes(), Timestamp::from_millis(0)).unwrap().command;
            assert!(c.payload.is_empty(), "{body}");
        }
        let c = parse(
            &headers(None),
            br#"{"application":"a","device":"d","command":"c","payload":"aGk"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap()
        .command;
        assert_eq!(&c.payload[..], b"hi");
    }

    #[test]
    fn ttl_from_field_wins_over_header() {
        let now = Timestamp::from_millis(10_000);
        let body = br#"{"application":"a","device":"d","command":"c","ttl":"2s"}"#;
        let c = parse(&headers(Some("1h")), body, now).unwrap().command;
        assert_eq!(c.expires_at, Some(Timestamp::from_millis(12_000)));
        let body = br#"{"application":"a","device":"d","command":"c","ttl":5}"#;
        assert_eq!(
            parse(&headers(None), body, now).unwrap().command.expires_at,
            Some(Timestamp::from_millis(15_000))
        );
        let body = br#"{"application":"a","device":"d","command":"c"}"#;
        assert_eq!(
            parse(&headers(Some("1m")), body, now).unwrap().command.expires_at,
            Some(Timestamp::from_millis(70_000))
        );
        assert_eq!(
            parse(&headers(Some("3")), body, now).unwrap().command.expires_at,
            Some(Timestamp::from_millis(13_000))
        );
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        let bad = [
            (r#"not json"#, "body is not"),
            (r#"{"device":"d","command":"c"}"#, "application"),
            (r#"{"application":"a","device":"d/x","command":"c"}"#, "device name"),
            (r#"{"application":"a","device":"d","command":"c d"}"#, "command name"),
            (r#"{"application":"a","device":"d","command":"c","payload":"!!"}"#, "base64"),
            (r#"{"application":"a","device":"d","command":"c","ttl":"soon"}"#, "ttl"),
            (r#"{"application":"a","device":"d","command":"c","ttl":0}"#, "ttl"),
        ];
        for (body, needle) in bad {
            let err =
                parse(&headers(None), body.as_bytes(), Timestamp::from_millis(0)).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let err = parse(
            &headers(Some("never")),
            br#"{"application":"a","device":"d","command":"c"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap_err();
        assert!(err.contains("ttl"), "{err}");
    }

    #[test]
    fn a_push_is_named_by_its_id_and_dated_by_its_timestamp() {
        let mut h = headers(None);
        let p = parse(&h, br#"{"application":"a","device":"d","command":"c","id":"42","timestamp":"2026-12-07T08:00:00Z"}"#, Timestamp::from_millis(0)).unwrap();
        assert_eq!(p.id.as_deref(), Some("42"));
        assert_eq!(p.timestamp, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_630_400)));
        h.insert(ID_HEADER, HeaderValue::from_static("h-7"));
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_static("1796630400"));
        let p = parse(
            &h,
            br#"{"application":"a","device":"d","command":"c"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap();
        assert_eq!(p.id.as_deref(), Some("h-7"));
        assert_eq!(p.timestamp, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_630_400)));
        let err = parse(
            &headers(None),
            br#"{"application":"a","device":"d","command":"c","timestamp":"yesterday"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap_err();
        assert!(err.contains("timestamp"), "{err}");
    }

    #[test]
    fn replays_are_claimed_once_while_they_count_and_memory_is_bounded() {
        let mut r = Replays::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        assert!(r.claim([1; 32], t0, until));
        assert!(!r.claim([1; 32], t0 + Duration::from_secs(59), until), "a replay");
        assert!(
            r.claim([1; 32], t0 + Duration::from_secs(60), until + Duration::from_secs(60)),
            "the window passed"
        );
        r.release(&[1; 32]);
        assert!(r.claim([1; 32], t0, until), "released: not taken");
        for i in 0..(REPLAY_MEMORY as u32 + 10) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = 9;
            r.claim(k, t0, until);
        }
        assert!(r.until.len() <= REPLAY_MEMORY && r.order.len() <= REPLAY_MEMORY + 1);
    }

    #[test]
    fn the_secret_comes_as_bearer_or_as_basic_password() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            presented_secret(&h)
        };
        assert_eq!(with("Bearer s3cret").as_deref(), Some("s3cret"));
        // "drogue:s3cret"
        assert_eq!(with("Basic ZHJvZ3VlOnMzY3JldA==").as_deref(), Some("s3cret"));
        assert_eq!(with("Basic bm9jb2xvbg==").as_deref(), None, "no colon");
        assert_eq!(with("Digest x").as_deref(), None);
    }

    #[test]
    fn token_comparison() {
        let expected = digest(b"s3cret");
        assert!(token_matches("s3cret", &expected));
        assert!(!token_matches("s3creT", &expected));
        assert!(!token_matches("s3cret ", &expected));
        assert!(!token_matches("", &expected));
    }

    #[test]
    fn outcomes_map_to_statuses() {
        assert_eq!(answer(CommandOutcome::Delivered).status(), StatusCode::OK);
        assert_eq!(answer(CommandOutcome::Queued).status(), StatusCode::ACCEPTED);
        assert_eq!(answer(CommandOutcome::UnknownDevice).status(), StatusCode::NOT_FOUND);
        assert_eq!(answer(CommandOutcome::TooLarge).status(), StatusCode::PAYLOAD_TOO_LARGE);
        let full = answer(CommandOutcome::QueueFull);
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[header::RETRY_AFTER], "30");
        assert_eq!(
            answer(CommandOutcome::Rejected("expired".into())).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
