//! The southbound HTTP endpoint: sensors `POST /v1/{channel}` as they would to Drogue Cloud's
//! HTTP endpoint (contracts/drogue-cloud.md §1). A message is answered 202 only once the
//! outbox has committed it.
//!
//! | outcome                                        | status |
//! |------------------------------------------------|--------|
//! | committed to the outbox                        | 202    |
//! | committed, and a command for the sensor was waiting or arrived within `ct` | 200, header `command: <name>`, the payload as body |
//! | missing or wrong credentials, `as=` another device | 403 (Drogue's JSON body) |
//! | bad query or channel                           | 400    |
//! | JSON content type with a body that is not JSON | 406    |
//! | body above `web.max_message_bytes`             | 413    |
//! | outbox full (`when_full = "reject"`) or closed | 503    |
//!
//! Commands come from the gateway's [`CommandSource`]: one queued while the sensor was away is
//! returned with the next accepted publish even without `ct`; with `ct=<seconds>` (at most
//! [`MAX_COMMAND_WAIT`]) the answer waits that long for one.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, BasicCredentials, Channel, Command,
    CommandSource, Ingest, IngestError, PublishQuery, Telemetry, Timestamp,
};
use serde_json::json;

/// The longest a publish waits for a command (`ct` above it is cut to it).
pub const MAX_COMMAND_WAIT: Duration = Duration::from_secs(300);

/// Who checks sensors, who takes their messages, and where their commands wait.
pub struct EndpointState<A, I, C> {
    pub auth: Arc<A>,
    pub ingest: Arc<I>,
    pub commands: Arc<C>,
    pub default_app: AppId,
}

impl<A, I, C> Clone for EndpointState<A, I, C> {
    fn clone(&self) -> Self {
        Self {
            auth: Arc::clone(&self.auth),
            ingest: Arc::clone(&self.ingest),
            commands: Arc::clone(&self.commands),
            default_app: self.default_app.clone(),
        }
    }
}

/// The routes, with the body limit applied.
pub fn router<A: Authenticate, I: Ingest, C: CommandSource>(
    state: EndpointState<A, I, C>,
    max_body: usize,
) -> Router {
    Router::new()
        .route("/v1/{channel}", post(publish::<A, I, C>))
        .route("/v1/{channel}/", post(publish::<A, I, C>))
        .route("/v1/{channel}/{*suffix}", post(publish_with_suffix::<A, I, C>))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn publish<A: Authenticate, I: Ingest, C: CommandSource>(
    State(state): State<EndpointState<A, I, C>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(channel): Path<String>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, peer, channel, None, query, headers, body).await
}

async fn publish_with_suffix<A: Authenticate, I: Ingest, C: CommandSource>(
    State(state): State<EndpointState<A, I, C>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((channel, suffix)): Path<(String, String)>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let suffix = Some(suffix.trim_end_matches('/').to_owned()).filter(|s| !s.is_empty());
    handle(state, peer, channel, suffix, query, headers, body).await
}

async fn handle<A: Authenticate, I: Ingest, C: CommandSource>(
    state: EndpointState<A, I, C>,
    peer: SocketAddr,
    channel: String,
    suffix: Option<String>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("invalid query: allowed are application, device, data_schema, as, ct");
    };
    let channel = match Channel::new(channel) {
        Ok(c) => c,
        Err(e) => return bad_request(&e.to_string()),
    };
    let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| BasicCredentials::parse_header(v).ok())
    else {
        return forbidden();
    };
    let Ok(request) = AuthRequest::from_http(
        basic,
        q.application.as_deref(),
        q.device.as_deref(),
        Some(&state.default_app),
    ) else {
        return forbidden();
    };
    static REFUSED: gw_net::Throttle = gw_net::Throttle::new("HTTP publish refused");
    let identity = match state.auth.authenticate(&request, Some(peer.ip())).await {
        AuthOutcome::Pass(identity) => identity,
        AuthOutcome::RateLimited => {
            if REFUSED.allow(Some(peer.ip())) {
                tracing::info!(device = %request.device, app = %request.app, %peer, "HTTP publish refused: too many failed logins");
            }
            return too_many_failures();
        }
        outcome => {
            if REFUSED.allow(Some(peer.ip())) {
                tracing::info!(device = %request.device, app = %request.app, %peer, ?outcome, "HTTP publish refused");
            }
            return forbidden();
        }
    };
    // A sensor publishes as itself only.
    if q.as_device.as_deref().is_some_and(|d| d != identity.device().as_str()) {
        return forbidden();
    }
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if content_type.as_deref().is_some_and(gw_model::is_json_content_type)
        && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
    {
        return (StatusCode::NOT_ACCEPTABLE, "body is not valid JSON\n").into_response();
    }
    // The sensor's wait travels with the message, so an uplink that can wait upstream (Drogue
    // HTTP `ct=`) waits for what is left of it.
    let command_wait = q.ct.filter(|secs| *secs > 0).map(std::time::Duration::from_secs);
    let telemetry = Telemetry {
        app: identity.app().clone(),
        device: identity.device().clone(),
        channel,
        suffix,
        content_type,
        data_schema: q.data_schema,
        received_at: Timestamp::from_system(SystemTime::now()),
        payload: body,
        command_wait,
    };
    let device = telemetry.device.clone();
    if state.ingest.pressure().is_on() {
        // flow control: the uplink lags behind; the sensor tries again after Retry-After
        let secs = gw_model::Pressure::RETRY_AFTER.as_secs().to_string();
        let body =
            json!({"code":503,"error":"Busy","message":"forwarding lags behind; retry later"});
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, secs)],
            Json(body),
        )
            .into_response();
    }
    match state.ingest.publish(telemetry).await {
        Ok(()) => {
            let wait = command_wait.unwrap_or(Duration::ZERO).min(MAX_COMMAND_WAIT);
            match state.commands.next_command(&identity, wait).await {
                Some(command) => command_response(command),
                None => StatusCode::ACCEPTED.into_response(),
            }
        }
        Err(e @ IngestError::QuotaExceeded(_)) => {
            tracing::warn!(%device, cause = %e, "HTTP publish refused: outbox full");
            let body = json!({"code":503,"error":"QuotaExceeded","message": e.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        Err(e @ IngestError::TooLarge(_)) => {
            (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response()
        }
        Err(e @ IngestError::Invalid(_)) => {
            let body = json!({"code":400,"error":"InvalidMessage","message": e.to_string()});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
        Err(e @ IngestError::Unavailable(_)) => {
            tracing::error!(%device, cause = %e, "HTTP publish failed: outbox");
            let body = json!({"code":503,"error":"ServiceUnavailable","message": e.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// 200 with the command's name in the `command` header and its payload as the body (and its
/// content type, when the cloud gave one).
fn command_response(command: Command) -> Response {
    let mut response = (StatusCode::OK, command.payload).into_response();
    let headers = response.headers_mut();
    if let Ok(name) = header::HeaderValue::from_str(command.name.as_str()) {
        headers.insert("command", name);
    }
    match command.content_type.as_deref().map(header::HeaderValue::from_str) {
        Some(Ok(ct)) => {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        _ => {
            headers.remove(header::CONTENT_TYPE);
        }
    }
    response
}

/// How long a throttled sensor is told to wait (the shortest lockout is shorter; a sensor
/// that comes back early is refused again without a check).
const RETRY_AFTER_SECS: u32 = 60;

fn too_many_failures() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
        Json(json!({"code":429,"error":"TooManyRequests","message":"Too many failed logins; try later"})),
    )
        .into_response()
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"code":403,"error":"AuthenticationError","message":"Authentication failed"})),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"code":400,"error":"BadRequest","message": message})))
        .into_response()
}
