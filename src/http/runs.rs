//! Runs: `POST /runs`, `GET /runs`, `GET /runs/{run_id}`, `POST /runs/{run_id}/cancel`,
//! `GET /runs/{run_id}/export`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use neko_actors::run_db::{RunDbError, RunFilter};
use neko_actors::run_tracker::{MAX_WAIT, RunCreate, RunTrackerMsg};
use neko_protocol::{RunRecord, RunStatus};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AppState, JsonBody, QueryArgs};
use crate::error::ApiError;

/// The reference's `RunCreateRequest`, plus `wait_ms`.
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
    /// Answer with the terminal record if the run ends within this many ms (at most 60 s).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// Creates a run; it is queued at once and reaches a terminal state on its own. With `wait_ms`,
/// the reply is the terminal record (plus `run_token` and `expires_at`) when the run ends in time.
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
    )?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let queued = json!({
        "run_id": created.record.run_id,
        "status": created.record.status,
        "run_token": created.run_token,
        "expires_at": created.expires_at,
    });
    let Some(wait) = wait_of(req.wait_ms) else {
        return Ok(Json(queued));
    };
    let record = read_run(&app, created.record.run_id, Some(wait)).await?;
    if !record.status.is_terminal() {
        return Ok(Json(queued));
    }
    let mut body = record_json(&record);
    body["run_token"] = json!(created.run_token);
    body["expires_at"] = json!(created.expires_at);
    Ok(Json(body))
}

#[derive(Deserialize)]
pub struct GetQuery {
    /// Answer as soon as the run is terminal, or after this many ms with the current record.
    wait_ms: Option<u64>,
}

/// One run's record.
pub async fn get_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    QueryArgs(q): QueryArgs<GetQuery>,
) -> Result<Json<Value>, ApiError> {
    let record = read_run(&app, run_id, wait_of(q.wait_ms)).await?;
    Ok(Json(record_json(&record)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    plugin_id: Option<String>,
    /// One status or several, comma-separated.
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Runs, newest first: `{"runs": [...], "next_cursor": str|null}`.
pub async fn list(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation(
            &["query", "limit"],
            "limit must be between 1 and 1000",
        ));
    }
    let status = q
        .status
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            serde_json::from_value::<RunStatus>(json!(s)).map_err(|_| {
                ApiError::validation(&["query", "status"], format!("unknown run status '{s}'"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = RunFilter {
        plugin_id: q.plugin_id.filter(|p| !p.is_empty()),
        status,
        limit,
        cursor: q.cursor.filter(|c| !c.is_empty()),
    };
    let refs = app.refs()?;
    let (runs, next) = ApiError::from_call(
        refs.runs
            .call(
                |p| RunTrackerMsg::List(filter, p),
                Some(app.request_timeout),
            )
            .await,
    )?
    .map_err(|e| match e {
        RunDbError::BadCursor => ApiError::validation(&["query", "cursor"], "invalid cursor"),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    let runs: Vec<Value> = runs.iter().map(record_json).collect();
    Ok(Json(json!({ "runs": runs, "next_cursor": next })))
}

/// An empty body is `{}`.
#[derive(Deserialize, Default)]
pub struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// Cancels a run: queued → canceled at once; running → cancel_requested, the plugin is told, and
/// the run ends canceled. A terminal run is returned unchanged.
pub async fn cancel(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    JsonBody(body): JsonBody<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    let reason = body.reason;
    let refs = app.refs()?;
    let record = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::Cancel {
                    run_id,
                    reason,
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?
    .ok_or_else(run_not_found)?;
    Ok(Json(record_json(&record)))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of the run's export items: `{"items": [...], "next_after": str|null}`.
pub async fn export(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    QueryArgs(q): QueryArgs<ExportQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=2000).contains(&limit) {
        return Err(ApiError::validation(
            &["query", "limit"],
            "Input should be greater than or equal to 1 and less than or equal to 2000",
        ));
    }
    let refs = app.refs()?;
    let (items, next_after) = ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::Exports {
                    run_id,
                    after: q.after.filter(|a| !a.is_empty()),
                    limit: limit as usize,
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
    .ok_or_else(run_not_found)?;
    Ok(Json(json!({ "items": items, "next_after": next_after })))
}

/// Reads a run, waiting up to `wait` for it to end.
async fn read_run(
    app: &AppState,
    run_id: String,
    wait: Option<Duration>,
) -> Result<RunRecord, ApiError> {
    let refs = app.refs()?;
    let timeout = app.request_timeout + wait.unwrap_or_default();
    ApiError::from_call(
        refs.runs
            .call(
                |reply| RunTrackerMsg::Get {
                    run_id,
                    wait,
                    reply,
                },
                Some(timeout),
            )
            .await,
    )?
    .ok_or_else(run_not_found)
}

fn wait_of(ms: Option<u64>) -> Option<Duration> {
    ms.filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
}

fn run_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "run not found")
}

fn record_json(record: &RunRecord) -> Value {
    serde_json::to_value(record).unwrap_or_default()
}
