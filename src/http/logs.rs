//! `GET /plugin/{id}/logs` and `GET /plugin/{id}/logs/files` (admin): a plugin's log files, read
//! on a blocking thread by [`neko_actors::plugin_logs`]. The Registry's listing says where the
//! plugin's folder is (the Python SDK's own log files live there).
//!
//! As in the reference these never fail for a valid id: an unknown plugin has no files (empty
//! answer), and a file that cannot be read answers 200 with `"error"`. The reference's `_server`
//! (its own server log) is accepted too, and is always empty: neko logs to stderr, not to files.
//!
//! `WS /ws/logs/{id}?code=<admin token>` tails the newest file live: an `initial` frame with the
//! last lines, then `append` frames with the lines written since ([`LogFollower`]). The
//! connection's state (the follower) lives in its own task; the files are read on blocking
//! threads.

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use neko_actors::clock::iso_now;
use neko_actors::plugin_logs::{self, LogFollower, LogQuery};
use neko_actors::registry::RegistryMsg;
use neko_protocol::PluginId;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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

/// Lines in the `initial` frame.
const INITIAL_LINES: usize = 100;
/// How often the file is looked at, and while the plugin has none.
const POLL_EVERY: Duration = Duration::from_millis(500);
const POLL_IDLE: Duration = Duration::from_secs(1);
/// At most this many lines per `append` frame and bytes read per look; the rest comes next time.
const APPEND_MAX_LINES: usize = 1000;
const APPEND_MAX_BYTES: usize = 1024 * 1024;
/// A client silent for this long gets a `{"type":"ping"}`.
const PING_AFTER: Duration = Duration::from_secs(30);
/// A send that takes longer than this (a client that does not read) ends the socket.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// `?code=`: the admin token.
#[derive(Deserialize)]
pub struct SocketArgs {
    code: Option<String>,
}

/// `WS /ws/logs/{id}?code=<admin token>`. Refused before the upgrade, as the reference's
/// pre-accept close is: 403 `Authentication required` without the right code, 400 for an id
/// that is not a plugin id.
pub async fn socket(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    QueryArgs(q): QueryArgs<SocketArgs>,
    ws: WebSocketUpgrade,
) -> Response {
    if !q
        .code
        .as_deref()
        .is_some_and(|c| super::ws::is_admin_code(&app, c))
    {
        return ApiError::new(StatusCode::FORBIDDEN, "Authentication required").into_response();
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let plugin_dir = match plugin_dir(&app, &id).await {
        Ok(dir) => dir,
        Err(e) => return e.into_response(),
    };
    let follower = LogFollower::new(app.plugin_logs_dir.clone(), plugin_dir, id);
    let (shutdown, sockets) = (app.shutdown.clone(), app.sockets.clone());
    ws.on_upgrade(move |socket| sockets.track_future(tail(socket, follower, shutdown)))
}

/// Why the socket ends: the client is gone, or neko is shutting down.
enum TailEnd {
    Gone,
    ShuttingDown,
}

/// One connection: the initial frame, then appends, pings and the client's frames (ignored)
/// until the client leaves or neko shuts down (`shutdown` is cancelled, as for `/ws/admin`).
async fn tail(mut socket: WebSocket, follower: LogFollower, shutdown: CancellationToken) {
    let end = async {
        let (mut follower, page) = read(follower, |f| f.initial(INITIAL_LINES)).await?;
        let page = page.unwrap_or_default();
        let initial = json!({
            "type": "initial", "logs": page.logs, "log_file": page.log_file,
            "total_lines": page.total_lines,
        });
        send(&mut socket, &initial).await?;
        let mut ping_at = tokio::time::Instant::now() + PING_AFTER;
        loop {
            let every = if follower.has_file() {
                POLL_EVERY
            } else {
                POLL_IDLE
            };
            tokio::select! {
                frame = socket.recv() => match frame {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(TailEnd::Gone),
                    Some(Ok(_)) => ping_at = tokio::time::Instant::now() + PING_AFTER,
                },
                () = shutdown.cancelled() => return Err(TailEnd::ShuttingDown),
                _ = tokio::time::sleep_until(ping_at) => {
                    ping_at = tokio::time::Instant::now() + PING_AFTER;
                    send(&mut socket, &json!({"type": "ping"})).await?;
                }
                _ = tokio::time::sleep(every) => {
                    let (f, lines) =
                        read(follower, |f| f.poll(APPEND_MAX_LINES, APPEND_MAX_BYTES)).await?;
                    follower = f;
                    match lines {
                        Ok(lines) if !lines.is_empty() => {
                            send(&mut socket, &json!({"type": "append", "logs": lines})).await?;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "reading a followed log file failed"),
                    }
                }
            }
        }
    };
    let end: Result<(), TailEnd> = end.await;
    if let Err(TailEnd::ShuttingDown) = end {
        let frame = CloseFrame {
            code: 1001,
            reason: "server shutting down".into(),
        };
        let _ = tokio::time::timeout(SEND_WAIT, socket.send(Message::Close(Some(frame)))).await;
    }
}

/// Runs `f` on the follower on a blocking thread and hands the follower back; a panic there
/// ends the socket.
async fn read<T: Send + 'static>(
    mut follower: LogFollower,
    f: impl FnOnce(&mut LogFollower) -> std::io::Result<T> + Send + 'static,
) -> Result<(LogFollower, std::io::Result<T>), TailEnd> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut follower);
        (follower, r)
    })
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "reading a plugin's log file failed");
        TailEnd::Gone
    })
}

/// Sends one compact JSON text frame.
async fn send(socket: &mut WebSocket, frame: &Value) -> Result<(), TailEnd> {
    match tokio::time::timeout(
        SEND_WAIT,
        socket.send(Message::Text(frame.to_string().into())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(TailEnd::Gone),
    }
}
