//! `POST /runs`, `GET /runs/{run_id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use neko_actors::run_tracker::{RunCreate, RunTrackerMsg};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AppState, JsonBody};
use crate::error::ApiError;

/// The reference's `RunCreateRequest`.
#[derive(Deserialize)]
pub struct RunCreateRequest {
    plugin_id: String,
    entry_id: String,
    #[serde(default)]
    args: Option<Map<String, Value>>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Creates a run; it is queued at once and reaches a terminal state on its own.
pub async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<RunCreateRequest>,
) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let create = RunCreate {
        plugin_id: req.plugin_id,
        entry_id: req.entry_id,
        args: req.args.unwrap_or_default(),
        task_id: req.task_id,
        trace_id: req.trace_id,
        idempotency_key: req.idempotency_key,
    };
    let created = ApiError::from_call(
        refs.runs
            .call(
                |p| RunTrackerMsg::Create(create, p),
                Some(app.request_timeout),
            )
            .await,
    )?;
    Ok(Json(json!({
        "run_id": created.record.run_id,
        "status": created.record.status,
        "run_token": created.run_token,
        "expires_at": created.expires_at,
    })))
}

/// One run's record.
pub async fn get_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let record = ApiError::from_call(
        refs.runs
            .call(|p| RunTrackerMsg::Get(run_id, p), Some(app.request_timeout))
            .await,
    )?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "run not found"))?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}
