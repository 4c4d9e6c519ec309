//! `GET /plugin/{id}/logs` and `GET /plugin/{id}/logs/files` (admin): a plugin's log files, read
//! on a blocking thread by [`neko_actors::plugin_logs`]. The Registry's listing says where the
//! plugin's folder is (the Python SDK's own log files live there).
//!
//! As in the reference these never fail for a valid id: an unknown plugin has no files (empty
//! answer), and a file that cannot be read answers 200 with `"error"`. The reference's `_server`
//! (its own server log) is accepted too, and is always empty: neko logs to stderr, not to files.

use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, State};
use neko_actors::clock::iso_now;
use neko_actors::plugin_logs::{self, LogQuery};
use neko_actors::registry::RegistryMsg;
use neko_protocol::PluginId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::plugin::parse_id;
use super::{Admin, AppState, QueryArgs};
use crate::error::ApiError;

/// The reference's default and largest `lines`.
const DEFAULT_LINES: i64 = 100;
const MAX_LINES: i64 = 10_000;

/// `?lines=1..10000` (default 100), `level`, `search`; `start_time` / `end_time` are accepted and
/// ignored, as in the reference.
#[derive(Deserialize)]
pub struct LogsArgs {
    lines: Option<i64>,
    level: Option<String>,
    search: Option<String>,
    #[serde(rename = "start_time")]
    _start_time: Option<String>,
    #[serde(rename = "end_time")]
    _end_time: Option<String>,
}

/// The last lines of the plugin's newest log file, parsed and filtered:
/// `{"plugin_id","logs":[{"timestamp","level","file","line","message"}],"total_lines",
/// "returned_lines","log_file"}`.
pub async fn logs(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
    QueryArgs(q): QueryArgs<LogsArgs>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let lines = q.lines.unwrap_or(DEFAULT_LINES);
    if !(1..=MAX_LINES).contains(&lines) {
        return Err(ApiError::validation(
            &["query", "lines"],
            "Input should be greater than or equal to 1 and less than or equal to 10000",
        ));
    }
    let query = LogQuery {
        lines: lines as usize,
        level: q.level,
        search: q.search,
    };
    let plugin_dir = plugin_dir(&app, &id).await?;
    let neko_dir = app.plugin_logs_dir.clone();
    let read_id = id.clone();
    let read = tokio::task::spawn_blocking(move || {
        plugin_logs::read_logs(&neko_dir, plugin_dir.as_deref(), &read_id, &query)
    })
    .await;
    Ok(Json(match read {
        Ok(Ok(page)) => json!({
            "plugin_id": id,
            "logs": page.logs,
            "total_lines": page.total_lines,
            "returned_lines": page.returned_lines,
            "log_file": page.log_file,
        }),
        failed => {
            let cause = match failed {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(_)) => String::new(),
            };
            tracing::warn!(plugin_id = %id, %cause, "could not read the plugin's log file");
            json!({
                "plugin_id": id, "logs": [], "total_lines": 0, "returned_lines": 0,
                "log_file": null, "error": "Failed to retrieve logs",
            })
        }
    }))
}

/// The plugin's log files, newest first: `{"plugin_id","log_files":[{"filename","size",
/// "modified"}],"count","time"}`.
pub async fn files(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let plugin_dir = plugin_dir(&app, &id).await?;
    let neko_dir = app.plugin_logs_dir.clone();
    let list_id = id.clone();
    let files = tokio::task::spawn_blocking(move || {
        plugin_logs::list_log_files(&neko_dir, plugin_dir.as_deref(), &list_id)
    })
    .await
    .unwrap_or_default();
    Ok(Json(json!({
        "plugin_id": id,
        "count": files.len(),
        "log_files": files,
        "time": iso_now(),
    })))
}

/// The plugin's folder, as the Registry knows it (`None` for an unknown plugin).
async fn plugin_dir(app: &AppState, id: &PluginId) -> Result<Option<PathBuf>, ApiError> {
    let refs = app.refs()?;
    let snapshot = ApiError::from_call(
        refs.registry
            .call(RegistryMsg::List, Some(app.request_timeout))
            .await,
    )?;
    Ok(snapshot
        .plugins
        .iter()
        .find(|m| &m.id == id)
        .map(|m| m.dir.clone()))
}
