//! `GET /plugins`, `GET /plugin/status`, `POST /plugin/{id}/start|stop|reload`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use neko_actors::clock::{iso_from_unix, iso_now};
use neko_actors::manifest::{DependencyConflicts, PluginManifest, Runtime};
use neko_actors::plugin_query::{entries_of, shown_status};
use neko_actors::plugin_supervisor::{PluginSupervisorMsg, StartOutcome};
use neko_actors::registry::RegistryMsg;
use neko_actors::status_manager::{PluginStatus, StatusManagerMsg};
use neko_protocol::{EntrySpec, PluginId, PluginState};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Admin, AppState, QueryArgs};
use crate::error::ApiError;

/// The plugin catalogue, with entries and status (the reference's `PluginInfo` plus neko's state).
pub async fn plugins(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let snap = ApiError::from_call(
        refs.registry
            .call(RegistryMsg::List, Some(app.request_timeout))
            .await,
    )?;
    let statuses: HashMap<PluginId, PluginStatus> = ApiError::from_call(
        refs.status
            .call(StatusManagerMsg::List, Some(app.request_timeout))
            .await,
    )?
    .into_iter()
    .map(|s| (s.plugin_id.clone(), s))
    .collect();
    // Plugins the reference would not have registered are listed apart, with why, so nobody has
    // to read the log to find them: those whose plugin.toml cannot be used, and those that cannot
    // start as configured (a module that does not import, a wrong entry).
    let (unusable, usable): (Vec<&Arc<PluginManifest>>, Vec<&Arc<PluginManifest>>) = snap
        .plugins
        .iter()
        .partition(|m| cannot_start(statuses.get(&m.id)));
    let list: Vec<Value> = usable
        .into_iter()
        .map(|m| plugin_info(m, statuses.get(&m.id)))
        .collect();
    let broken = snap.broken.iter().map(|b| {
        let id = b.id.clone().unwrap_or_else(|| {
            b.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        json!({"id": id, "status": PluginState::Invalid, "error": b.error, "config_path": b.config_path})
    });
    let failed = unusable.into_iter().map(|m| {
        let error = statuses.get(&m.id).and_then(|s| s.lifecycle.error.clone());
        json!({"id": m.id, "status": PluginState::Invalid, "error": error, "config_path": m.config_path})
    });
    let invalid: Vec<Value> = broken.chain(failed).collect();
    let message = if list.is_empty() {
        "no plugins registered"
    } else {
        ""
    };
    Ok(Json(
        json!({"plugins": list, "message": message, "invalid_plugins": invalid}),
    ))
}

/// A registered plugin whose last launch could not start as configured (shown as invalid).
pub fn cannot_start(status: Option<&PluginStatus>) -> bool {
    status.is_some_and(|s| s.lifecycle.state == PluginState::Invalid)
}

fn plugin_info(m: &PluginManifest, status: Option<&PluginStatus>) -> Value {
    let state = status
        .map(|s| s.lifecycle.state)
        .unwrap_or(PluginState::Stopped);
    let entries: Vec<Value> = entries_of(m, status)
        .iter()
        .map(|e| entry_info(&m.id, e))
        .collect();
    let (runtime, entry_point) = match &m.runtime {
        Runtime::Python { entry } => ("python", entry.clone()),
        Runtime::Native { command, .. } => ("native", command.clone()),
    };
    let mut info = json!({
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "version": m.version,
        "sdk_version": m.sdk_version(),
        "sdk_recommended": m.sdk.recommended,
        "sdk_supported": m.sdk.supported,
        "sdk_untested": m.sdk.untested,
        "sdk_conflicts": m.sdk.conflicts,
        "input_schema": status
            .and_then(|s| s.lifecycle.input_schema.clone())
            .unwrap_or_else(neko_protocol::default_input_schema),
        "author": m.author.as_ref().map(|a| json!({"name": a.name, "email": a.email})),
        "dependencies": m.dependencies.iter().map(|d| json!({
            "id": d.id, "entry": d.entry, "custom_event": d.custom_event, "providers": d.providers,
            "recommended": d.recommended, "supported": d.supported, "untested": d.untested,
            "conflicts": match &d.conflicts {
                DependencyConflicts::None => Value::Null,
                DependencyConflicts::All => Value::Bool(true),
                DependencyConflicts::Specs(s) => json!(s),
            },
        })).collect::<Vec<_>>(),
        "config_path": m.config_path,
        "entry_point": entry_point,
        "runtime": runtime,
        "runtime_enabled": m.enabled,
        // The reference reports a disabled plugin as never auto-started.
        "runtime_auto_start": m.enabled && m.auto_start,
        // The reference's vocabulary; neko's own lifecycle state is in "state".
        "status": shown_status(state),
        "state": state,
        "entries": entries,
    });
    let obj = info.as_object_mut().expect("built as an object");
    if !m.enabled {
        obj.insert(
            "entries_preview".into(),
            json!(
                m.entries_preview
                    .iter()
                    .map(|e| entry_info(&m.id, e))
                    .collect::<Vec<_>>()
            ),
        );
    }
    if let Some(s) = status {
        obj.insert("pid".into(), json!(s.lifecycle.pid));
        obj.insert("restarts".into(), json!(s.lifecycle.restarts));
        obj.insert("last_exit".into(), json!(s.lifecycle.last_exit));
        obj.insert("error".into(), json!(s.lifecycle.error));
        obj.insert("sdk".into(), json!(s.lifecycle.sdk));
    }
    info
}

fn entry_info(plugin_id: &PluginId, e: &EntrySpec) -> Value {
    json!({
        "id": e.id,
        "name": if e.name.is_empty() { &e.id } else { &e.name },
        "description": e.description,
        "event_key": format!("{plugin_id}.{}", e.id),
        "input_schema": e.input_schema,
        "return_message": "",
        "kind": e.kind,
        "timeout_ms": e.timeout_ms,
    })
}

/// `?plugin_id=`
#[derive(Deserialize)]
pub struct StatusQuery {
    plugin_id: Option<String>,
}

/// Status of every plugin, or of one (the reference's StatusRecord, plus neko's lifecycle fields).
pub async fn plugin_status(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    // An empty `?plugin_id=` means all, as in the reference.
    match q.plugin_id.filter(|p| !p.is_empty()) {
        Some(raw) => {
            let id = parse_id(&raw)?;
            let status = ApiError::from_call(
                refs.status
                    .call(
                        |p| StatusManagerMsg::Get(id.clone(), p),
                        Some(app.request_timeout),
                    )
                    .await,
            )?;
            let mut rec = match status {
                Some(s) => status_record(&s),
                // The reference answers a synthetic "stopped" record for ids it does not know.
                None => json!({
                    "plugin_id": id, "status": {"status": "stopped"},
                    "updated_at": iso_now(), "source": "main_process_synthetic",
                }),
            };
            rec["time"] = json!(iso_now());
            Ok(Json(rec))
        }
        None => {
            let all = ApiError::from_call(
                refs.status
                    .call(StatusManagerMsg::List, Some(app.request_timeout))
                    .await,
            )?;
            let plugins: Map<String, Value> = all
                .iter()
                .map(|s| (s.plugin_id.to_string(), status_record(s)))
                .collect();
            Ok(Json(json!({"plugins": plugins, "time": iso_now()})))
        }
    }
}

fn status_record(s: &PluginStatus) -> Value {
    let (status, updated_at, source) = match &s.reported {
        // What the plugin said about itself wins, as in the reference.
        Some(r) => (r.status.clone(), r.updated_at, "child_process"),
        // The reference's synthetic records say running, crashed or stopped; the detailed
        // state is in "state".
        None => (
            json!({"status": match s.lifecycle.state {
                PluginState::Running => "running",
                PluginState::Crashed => "crashed",
                _ => "stopped",
            }}),
            s.updated_at,
            "main_process_synthetic",
        ),
    };
    json!({
        "plugin_id": s.plugin_id,
        "status": status,
        "updated_at": iso_from_unix(updated_at),
        "source": source,
        "state": s.lifecycle.state,
        "pid": s.lifecycle.pid,
        "restarts": s.lifecycle.restarts,
        "last_exit": s.lifecycle.last_exit,
        "error": s.lifecycle.error,
    })
}

pub(super) fn parse_id(raw: &str) -> Result<PluginId, ApiError> {
    PluginId::new(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Start a plugin; answers once it is ready.
pub async fn start(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let refs = app.refs()?;
    let outcome = ApiError::from_call(
        refs.plugins
            .call(
                |p| PluginSupervisorMsg::Start(id.clone(), p),
                Some(app.lifecycle_timeout),
            )
            .await,
    )??;
    Ok(Json(start_reply(&id, outcome)))
}

/// Stop a plugin; answers once its process is gone.
pub async fn stop(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let refs = app.refs()?;
    ApiError::from_call(
        refs.plugins
            .call(
                |p| PluginSupervisorMsg::Stop(id.clone(), p),
                Some(app.lifecycle_timeout),
            )
            .await,
    )??;
    Ok(Json(json!({
        "success": true, "plugin_id": id, "message": "Plugin stopped successfully",
    })))
}

/// Stop (if running), re-read plugin.toml, start a fresh process.
pub async fn reload(
    _: Admin,
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let refs = app.refs()?;
    let outcome = ApiError::from_call(
        refs.plugins
            .call(
                |p| PluginSupervisorMsg::Reload(id.clone(), p),
                Some(app.lifecycle_timeout * 2),
            )
            .await,
    )??;
    Ok(Json(start_reply(&id, outcome)))
}

fn start_reply(id: &PluginId, outcome: StartOutcome) -> Value {
    let message = match outcome {
        StartOutcome::Started => "Plugin started successfully",
        StartOutcome::AlreadyRunning => "Plugin is already running",
    };
    json!({"success": true, "plugin_id": id, "message": message})
}
