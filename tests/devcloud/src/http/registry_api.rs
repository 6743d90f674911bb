//! The registry API (contracts/drogue-cloud.md §5) under `/api/registry/v1alpha1`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use gw_model::registry::{Application, Device};
use serde::{Deserialize, de::DeserializeOwned};

use super::{ApiError, AppState};
use crate::{
    DevCloudError,
    labels::Selector,
    registry::{ListOptions, Preconditions},
    util::pct,
};

const BASE: &str = "/api/registry/v1alpha1";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/registry/v1alpha1/apps", get(list_apps).post(create_app))
        .route("/api/registry/v1alpha1/apps/{app}", get(get_app).put(update_app).delete(delete_app))
        .route("/api/registry/v1alpha1/apps/{app}/devices", get(list_devices).post(create_device))
        .route(
            "/api/registry/v1alpha1/apps/{app}/devices/{device}",
            get(get_device).put(update_device).delete(delete_device),
        )
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    labels: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

impl ListQuery {
    fn options(&self) -> Result<ListOptions, DevCloudError> {
        Ok(ListOptions {
            selector: Selector::parse(self.labels.as_deref().unwrap_or(""))?,
            offset: self.offset.unwrap_or(0),
            limit: self.limit,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeleteBody {
    #[serde(default)]
    preconditions: Preconditions,
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::from(DevCloudError::BadRequest(format!("invalid JSON body: {e}"))))
}

fn delete_preconditions(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    parse_body::<DeleteBody>(body).map(|b| b.preconditions)
}

fn created(location: String) -> Response {
    (StatusCode::CREATED, [(header::LOCATION, location)]).into_response()
}

async fn list_apps(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Application>>, ApiError> {
    Ok(Json(state.registry.list_apps(&q.options()?)))
}

async fn create_app(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let app = state.registry.create_app(parse_body(&body)?)?;
    Ok(created(format!("{BASE}/apps/{}", pct(&app.metadata.name))))
}

async fn get_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Application>, ApiError> {
    state
        .registry
        .get_app(&app)
        .map(Json)
        .ok_or_else(|| DevCloudError::NotFound { kind: "application", name: app }.into())
}

async fn update_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    state.registry.update_app(&app, parse_body(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_app(&app, &delete_preconditions(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_devices(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(state.registry.list_devices(&app, &q.options()?)?))
}

async fn create_device(
    State(state): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = state.registry.create_device(&app, parse_body(&body)?)?;
    Ok(created(format!("{BASE}/apps/{}/devices/{}", pct(&app), pct(&device.metadata.name))))
}

async fn get_device(
    State(state): State<AppState>,
    Path((app, device)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    state
        .registry
        .get_device(&app, &device)
        .map(Json)
        .ok_or_else(|| DevCloudError::NotFound { kind: "device", name: device }.into())
}

async fn update_device(
    State(state): State<AppState>,
    Path((app, device)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    state.registry.update_device(&app, &device, parse_body(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_device(
    State(state): State<AppState>,
    Path((app, device)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_device(&app, &device, &delete_preconditions(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}
