//! `GET /health`, `GET /available`, `GET /server/info`.

use axum::Json;
use axum::extract::State;
use neko_actors::clock::iso_now;
use neko_actors::manifest::HOST_SDK_VERSION;
use neko_actors::registry::RegistryMsg;
use neko_actors::status_manager::StatusManagerMsg;
use neko_protocol::PluginState;
use serde_json::{Map, Value, json};

use super::{Admin, AppState};
use crate::error::ApiError;

/// Liveness: answers without asking any actor.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "time": iso_now()}))
}

/// Availability and the number of registered plugins.
pub async fn available(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let snap = ApiError::from_call(
        refs.registry
            .call(RegistryMsg::List, Some(app.request_timeout))
            .await,
    )?;
    let statuses = ApiError::from_call(
        refs.status
            .call(StatusManagerMsg::List, Some(app.request_timeout))
            .await,
    )?;
    let invalid = statuses
        .iter()
        .filter(|s| super::plugin::cannot_start(Some(s)))
        .count();
    Ok(Json(json!({
        "status": "ok",
        "available": true,
        // Registered plugins, as GET /plugins lists them (not those with an unusable plugin.toml,
        // nor those that cannot start as configured).
        "plugins_count": snap.plugins.len().saturating_sub(invalid),
        "time": iso_now(),
    })))
}

/// Registry and process summary (admin).
pub async fn server_info(_: Admin, State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let refs = app.refs()?;
    let snap = ApiError::from_call(
        refs.registry
            .call(RegistryMsg::List, Some(app.request_timeout))
            .await,
    )?;
    let statuses = ApiError::from_call(
        refs.status
            .call(StatusManagerMsg::List, Some(app.request_timeout))
            .await,
    )?;
    let running: Vec<_> = statuses
        .iter()
        .filter(|s| s.lifecycle.pid.is_some())
        .collect();
    let mut running_status = Map::new();
    for s in &running {
        running_status.insert(
            s.plugin_id.to_string(),
            json!({"alive": true, "pid": s.lifecycle.pid, "state": s.lifecycle.state}),
        );
    }
    Ok(Json(json!({
        "plugins_count": snap.plugins.len(),
        "registered_plugins": snap.plugins.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(),
        "running_plugins_count": running.len(),
        "running_plugins": running.iter().map(|s| s.plugin_id.to_string()).collect::<Vec<_>>(),
        "running_plugins_status": running_status,
        "ready_plugins_count": statuses.iter().filter(|s| s.lifecycle.state == PluginState::Running).count(),
        "broken_plugins": snap.broken.iter().map(|b| json!({"path": b.config_path, "id": b.id, "error": b.error})).collect::<Vec<_>>(),
        "sdk_version": HOST_SDK_VERSION,
        "neko_version": env!("CARGO_PKG_VERSION"),
        "message_plane": {
            "endpoints": {
                "rpc": refs.messages.endpoints().rpc,
                "pub": refs.messages.endpoints().publish,
                "ingest": refs.messages.endpoints().ingest,
            },
            "stats": refs.messages.stats(),
        },
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "time": iso_now(),
    })))
}
