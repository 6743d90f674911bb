//! Discovery documents Drogue's CLI `drg` 0.11 reads at login (`drogue-client`
//! `discovery::v1::Endpoints`), a stand-in OpenID configuration, and the event log reader.
//! The dev cloud issues no OAuth tokens: API users log in with `--access-token user:token`.

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::events::EventPage;

/// Path of the pretend OIDC issuer under the base URL.
const ISSUER_PATH: &str = "/oidc";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/drogue-endpoints", get(public_endpoints))
        .route("/.well-known/drogue-version", get(|| async { Json(json!({"version": "0.11.0"})) }))
        .route("/oidc/.well-known/openid-configuration", get(openid_configuration))
}

fn endpoints(base: &str, mqtt: std::net::SocketAddr, authenticated: bool) -> Value {
    let issuer = format!("{base}{ISSUER_PATH}");
    let mut doc = json!({
        "api": base,
        "console": base,
        "sso": issuer,
        "issuer_url": issuer,
        "registry": {"url": base},
    });
    if authenticated {
        // `drg` reads these from the authenticated list only (`Endpoints::publicize`).
        doc["http"] = json!({"url": base});
        // drogue-client `MqttEndpoint { host, port }`
        doc["mqtt"] = json!({"host": mqtt.ip().to_string(), "port": mqtt.port()});
        doc["command_url"] = json!(base);
    }
    doc
}

async fn public_endpoints(State(state): State<AppState>) -> Json<Value> {
    Json(endpoints(&state.base_url, state.mqtt_addr, false))
}

/// `GET /api/console/v1alpha1/info`: the full endpoint list, for API users.
pub(super) async fn console_info(State(state): State<AppState>) -> Json<Value> {
    Json(endpoints(&state.base_url, state.mqtt_addr, true))
}

async fn openid_configuration(State(state): State<AppState>) -> Json<Value> {
    let issuer = format!("{}{ISSUER_PATH}", state.base_url);
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    since: u64,
}

/// `GET /api/devcloud/v1/events?since=N`: the retained events with index `>= N`.
pub(super) async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Json<EventPage> {
    Json(state.events.page(q.since))
}
