//! `GET /plugin/metrics`, `GET /plugin/metrics/{id}`, `GET /plugin/metrics/{id}/history` (admin):
//! resource samples of plugin processes, as the MetricsCollector keeps them.

use axum::Json;
use axum::extract::{Path, State};
use neko_actors::clock::iso_now;
use neko_actors::metrics_collector::{MetricsCollectorMsg, PluginMetricsView};
use serde::Deserialize;
use serde_json::{Value, json};

use super::plugin::parse_id;
use super::{Admin, AppState, QueryArgs};
use crate::error::ApiError;

/// The reference's default and largest `limit` of a history read.
const DEFAULT_HISTORY: i64 = 100;
const MAX_HISTORY: i64 = 1000;

/// The latest sample of every running plugin:
/// `{"metrics": [...], "count", "global": {sums}, "time"}`.
pub async fn all(_: Admin, State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let current = ApiError::from_call(
        refs.metrics
            .call(MetricsCollectorMsg::GetCurrent, Some(app.request_timeout))
            .await,
    )?;
    Ok(Json(json!({
        "count": current.metrics.len(),
        "metrics": current.metrics,
        "global": current.global,
        "time": iso_now(),
    })))
}

/// One plugin's latest sample, or why there is none; 404 for an unknown plugin.
pub async fn one(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let refs = app.refs()?;
    let view = ApiError::from_call(
        refs.metrics
            .call(
                |p| MetricsCollectorMsg::GetPlugin(id.clone(), p),
                Some(app.request_timeout),
            )
            .await,
    )??;
    Ok(Json(match view {
        PluginMetricsView::Sampled(m) => {
            json!({"plugin_id": id, "metrics": m, "time": iso_now()})
        }
        PluginMetricsView::NoSample {
            message,
            plugin_running,
            process_alive,
        } => json!({
            "plugin_id": id, "metrics": null, "message": message,
            "plugin_running": plugin_running, "process_alive": process_alive, "time": iso_now(),
        }),
    }))
}

/// `?limit=1..1000` (default 100); `start_time` / `end_time` are accepted and ignored, as in the
/// reference.
#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<i64>,
    #[serde(rename = "start_time")]
    _start_time: Option<String>,
    #[serde(rename = "end_time")]
    _end_time: Option<String>,
}

/// The last `limit` samples of one plugin, oldest first (kept after its process exits).
pub async fn history(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
    QueryArgs(q): QueryArgs<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::validation(
            &["query", "limit"],
            "Input should be greater than or equal to 1 and less than or equal to 1000",
        ));
    }
    let refs = app.refs()?;
    let history = ApiError::from_call(
        refs.metrics
            .call(
                |reply| MetricsCollectorMsg::GetHistory {
                    plugin_id: id.clone(),
                    limit: limit as usize,
                    reply,
                },
                Some(app.request_timeout),
            )
            .await,
    )?;
    Ok(Json(json!({
        "plugin_id": id,
        "count": history.len(),
        "history": history,
        "time": iso_now(),
    })))
}
