//! The southbound HTTP endpoint: sensors `POST /v1/{channel}` as they would to Drogue Cloud's
//! HTTP endpoint (contracts/drogue-cloud.md §1). A message is answered 202 only once the
//! outbox has committed it.
//!
//! | outcome                                        | status |
//! |------------------------------------------------|--------|
//! | committed to the outbox                        | 202    |
//! | missing or wrong credentials, `as=` another device | 403 (Drogue's JSON body) |
//! | bad query or channel                           | 400    |
//! | JSON content type with a body that is not JSON | 406    |
//! | body above `web.max_message_bytes`             | 413    |
//! | outbox full (`when_full = "reject"`) or closed | 503    |

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use gw_model::{AppId, AuthRequest, BasicCredentials, Channel, Telemetry, Timestamp};
use gw_store::{Outbox, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::StaticAccounts;

#[derive(Clone)]
pub struct EndpointState {
    pub outbox: Outbox,
    pub accounts: Arc<StaticAccounts>,
    pub default_app: AppId,
}

/// The routes, with the body limit applied.
pub fn router(state: EndpointState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/{channel}", post(publish))
        .route("/v1/{channel}/", post(publish))
        .route("/v1/{channel}/{*suffix}", post(publish_with_suffix))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Drogue's query parameters; any other key is a 400.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishQuery {
    application: Option<String>,
    device: Option<String>,
    data_schema: Option<String>,
    #[serde(rename = "as")]
    as_device: Option<String>,
    #[serde(alias = "commandTimeout")]
    ct: Option<u64>,
}

async fn publish(
    State(state): State<EndpointState>,
    Path(channel): Path<String>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, channel, None, query, headers, body).await
}

async fn publish_with_suffix(
    State(state): State<EndpointState>,
    Path((channel, suffix)): Path<(String, String)>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let suffix = Some(suffix.trim_end_matches('/').to_owned()).filter(|s| !s.is_empty());
    handle(state, channel, suffix, query, headers, body).await
}

async fn handle(
    state: EndpointState,
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
    let Some(identity) = state.accounts.verify(&request) else {
        tracing::info!(device = %request.device, app = %request.app, "HTTP publish refused: bad credentials");
        return forbidden();
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
    let _ = q.ct; // waiting for commands arrives with the command router
    let telemetry = Telemetry {
        app: identity.app().clone(),
        device: identity.device().clone(),
        channel,
        suffix,
        content_type,
        data_schema: q.data_schema,
        received_at: Timestamp::from_system(SystemTime::now()),
        payload: body,
    };
    match state.outbox.append(&telemetry).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e @ StoreError::QuotaExceeded { .. }) => {
            tracing::warn!(device = %telemetry.device, cause = %e, "HTTP publish refused: outbox full");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"code":503,"error":"QuotaExceeded","message": e.to_string()})),
            )
                .into_response()
        }
        Err(e @ StoreError::RecordTooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(device = %telemetry.device, cause = %e, "HTTP publish failed: outbox");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"code":503,"error":"ServiceUnavailable","message": e.to_string()})),
            )
                .into_response()
        }
    }
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
