//! The device-facing HTTP endpoint (contracts/drogue-cloud.md §1): `POST /v1/{channel}`
//! with Basic auth in any of Drogue's four forms, `as=` for gateways, and `ct=` to wait for a
//! command.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use gw_model::{AuthRequest, BasicCredentials, PublishQuery};
use serde_json::json;

use super::AppState;
use crate::{
    auth,
    commands::{self, CommandFilter},
    events::{CloudEvent, EventParties},
};

/// The longest `ct` honoured, so a typo cannot pin a request for days.
const MAX_COMMAND_WAIT: Duration = Duration::from_secs(3600);

/// Drogue's `HTTP__MAX_PAYLOAD_SIZE` default: a larger body gets 413 before any credential
/// is looked at.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { StatusCode::OK }))
        .route("/v1/{channel}", post(publish))
        // `/v1/temp/`: an empty suffix
        .route("/v1/{channel}/", post(publish))
        // the suffix is accepted and dropped, as Drogue does
        .route("/v1/{channel}/{*suffix}", post(publish_with_suffix))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
}

/// Drogue's answer to a body above the limit (actix-web's own: plain text, not JSON).
fn too_large() -> Response {
    (StatusCode::PAYLOAD_TOO_LARGE, "Payload reached size limit.").into_response()
}

async fn publish_with_suffix(
    state: State<AppState>,
    Path((channel, _suffix)): Path<(String, String)>,
    query: Query<PublishQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    publish(state, Path(channel), query, headers, body).await
}

fn auth_failed() -> Response {
    let body =
        json!({"code": 403, "error": "AuthenticationError", "message": "Authentication failed"});
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

pub(crate) use gw_model::is_json_content_type as is_json;

async fn publish(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else { return too_large() };
    let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| BasicCredentials::parse_header(v).ok())
    else {
        return auth_failed();
    };
    let Ok(req) =
        AuthRequest::from_http(basic, q.application.as_deref(), q.device.as_deref(), None)
    else {
        return auth_failed();
    };
    let Some(who) = auth::authenticate(&state.registry, req, q.as_device.as_deref()).await else {
        return auth_failed();
    };

    state.faults.saw_publish();
    if let Some(status) = state.faults.publish_status() {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Drogue's answer when Kafka fails the send
        let body = json!({"error": "InternalError", "message": "Sink error"});
        return (code, Json(body)).into_response();
    }

    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let json = match content_type {
        Some(ct) if is_json(ct) && !body.is_empty() => {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = json!({"error": "InvalidFormat", "message": e.to_string()});
                    return (StatusCode::NOT_ACCEPTABLE, Json(msg)).into_response();
                }
            }
        }
        _ => None,
    };
    let parties = EventParties {
        app: (&who.app.metadata.name, &who.app.metadata.uid),
        device: (&who.as_device.metadata.name, &who.as_device.metadata.uid),
        sender: (&who.device.metadata.name, &who.device.metadata.uid),
    };
    let event = CloudEvent::telemetry(
        &parties,
        &channel,
        content_type,
        q.data_schema.as_deref(),
        json,
        &body,
    );
    // Subscribe before the event becomes visible, so a test that reacts to the event with a
    // command cannot race the waiter.
    let mut rx = q.ct.filter(|n| *n > 0).map(|_| state.bus.subscribe());
    if let Some(delay) = state.faults.publish_delay() {
        // Drogue answers only once Kafka confirmed, and the send completes even when the
        // client has given up waiting: the event is logged by a task of its own.
        let events = state.events.clone();
        let logged = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            events.append(event);
        });
        let _ = logged.await;
    } else {
        state.events.append(event);
    }
    tracing::debug!(app = %who.app.metadata.name, device = %who.as_device.metadata.name,
        sender = %who.device.metadata.name, channel = %channel, "event accepted");

    let (Some(rx), Some(secs)) = (rx.as_mut(), q.ct) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let filter = CommandFilter::proxied_device(
        &who.app.metadata.name,
        &who.device.metadata.name,
        &who.as_device.metadata.name,
    );
    let wait = Duration::from_secs(secs).min(MAX_COMMAND_WAIT);
    let cmd = tokio::select! {
        cmd = tokio::time::timeout(wait, commands::next_matching(rx, &filter)) => cmd.ok().flatten(),
        () = state.shutdown.cancelled() => None,
    };
    match cmd {
        // As Drogue: the body is the raw payload, with no content type (a `Bytes` body would
        // get `application/octet-stream` from axum).
        Some(cmd) => {
            (StatusCode::OK, [("command", cmd.command)], axum::body::Body::from(cmd.payload))
                .into_response()
        }
        None => StatusCode::ACCEPTED.into_response(),
    }
}
