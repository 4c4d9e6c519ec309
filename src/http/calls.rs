//! `GET /calls` (admin): plugin-to-plugin calls in flight and the wait-for graph between plugins,
//! as the DeadlockDetector sees them.

use axum::Json;
use axum::extract::State;
use neko_actors::clock::iso_now;
use neko_actors::deadlock_detector::DeadlockDetectorMsg;
use serde_json::Value;

use super::{Admin, AppState};
use crate::error::ApiError;

/// `{"calls": [...], "wait_for": [{"from", "to", "calls"}], "in_flight", "completed", "refused",
/// "time"}`.
pub async fn calls(_: Admin, State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let mut snapshot = ApiError::from_call(
        refs.calls
            .call(DeadlockDetectorMsg::Snapshot, Some(app.request_timeout))
            .await,
    )?;
    snapshot["time"] = Value::String(iso_now());
    Ok(Json(snapshot))
}
