//! The dev cloud's one HTTP listener: the device endpoint, registry, command API, discovery
//! documents and the event log, as a single [`axum::Router`].

mod command_api;
mod discovery;
pub(crate) mod endpoint;
mod registry_api;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use gw_model::BasicCredentials;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    DevCloudError, commands::CommandBus, events::EventLog, registry::Registry, seed::User,
};

/// Everything the handlers share.
pub(crate) struct Shared {
    pub registry: Registry,
    pub events: Arc<EventLog>,
    pub bus: CommandBus,
    pub users: Vec<User>,
    pub client: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    /// The bound address of the device MQTT endpoint.
    pub mqtt_addr: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    /// The switches tests use to make the endpoints misbehave.
    pub faults: crate::faults::Faults,
}

pub(crate) type AppState = Arc<Shared>;

/// Builds the router over the shared state.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(registry_api::routes())
        .route("/api/command/v1alpha1/apps/{app}/devices/{device}", post(command_api::send_command))
        .route("/api/console/v1alpha1/info", get(discovery::console_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_user));
    Router::new()
        .merge(endpoint::routes())
        .merge(discovery::routes())
        .merge(api)
        .route("/api/devcloud/v1/events", get(discovery::events))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Records every request, whatever its path (unrouted ones too), in [`crate::Faults`].
async fn log_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    state.faults.saw_request(format!("{} {target}", req.method()));
    next.run(req).await
}

/// Accepts `Authorization: Bearer <token>` or Basic `<user>:<token>` of a seeded user;
/// anything else is 401.
async fn require_api_user(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if api_user_ok(&state.users, req.headers()) {
        next.run(req).await
    } else {
        let body = json!({"error": "Unauthorized", "message": "missing or invalid API token"});
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"drogue\"")],
            Json(body),
        )
            .into_response()
    }
}

fn api_user_ok(users: &[User], headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some((scheme, token)) = value.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        let token = token.trim();
        return !token.is_empty() && users.iter().any(|u| u.token == token);
    }
    match BasicCredentials::parse_header(value) {
        Ok(b) => users.iter().any(|u| u.name == b.user && u.token == b.password.expose()),
        Err(_) => false,
    }
}

/// An error of the registry or command API, answered with Drogue's error JSON
/// `{"error": .., "message": ..}`.
pub(crate) struct ApiError(pub StatusCode, pub DevCloudError);

impl From<DevCloudError> for ApiError {
    fn from(e: DevCloudError) -> Self {
        let status = match &e {
            DevCloudError::NotFound { .. } => StatusCode::NOT_FOUND,
            DevCloudError::AlreadyExists { .. } | DevCloudError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            DevCloudError::BadRequest(_) | DevCloudError::BadSelector { .. } => {
                StatusCode::BAD_REQUEST
            }
            DevCloudError::NotEnabled { .. } | DevCloudError::Push { .. } => {
                StatusCode::NOT_ACCEPTABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match self.0 {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::BAD_REQUEST => "InvalidRequest",
            StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
            _ => "InternalError",
        };
        (self.0, Json(json!({"error": error, "message": self.1.to_string()}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn api_tokens_as_bearer_or_basic() {
        let users = vec![User { name: "admin".into(), token: "tok".into() }];
        assert!(api_user_ok(&users, &headers("Bearer tok")));
        assert!(api_user_ok(&users, &headers(&BasicCredentials::new("admin", "tok").to_header())));
        assert!(!api_user_ok(&users, &headers(&BasicCredentials::new("other", "tok").to_header())));
        assert!(!api_user_ok(&users, &headers("Bearer nope")));
        assert!(!api_user_ok(&users, &headers("Bearer ")));
        assert!(!api_user_ok(&users, &HeaderMap::new()));
    }
}
