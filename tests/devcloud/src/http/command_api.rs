//! The command API (contracts/drogue-cloud.md §4):
//! `POST /api/command/v1alpha1/apps/{app}/devices/{device}?command=NAME`.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::{
    DevCloudError,
    commands::{self, CommandOutcome, CommandRequest},
};

#[derive(Debug, Deserialize)]
pub(super) struct CommandQuery {
    command: String,
}

/// 200 when pushed to a gateway's external endpoint, 202 when published internally, 406
/// when the app or device is unknown, the device is not enabled, or the push failed.
pub(super) async fn send_command(
    State(state): State<AppState>,
    Path((app, device)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let req = CommandRequest {
        app: &app,
        device: &device,
        command: &q.command,
        content_type,
        payload: body,
    };
    match commands::route(&state.registry, &state.bus, &state.client, req).await {
        Ok(CommandOutcome::Pushed { .. }) => Ok(StatusCode::OK),
        Ok(CommandOutcome::Delivered { .. }) => Ok(StatusCode::ACCEPTED),
        Err(e @ DevCloudError::NotFound { .. }) => Err(ApiError(StatusCode::NOT_ACCEPTABLE, e)),
        Err(e) => {
            tracing::info!(app = %app, device = %device, cause = %e, "command refused");
            Err(e.into())
        }
    }
}
