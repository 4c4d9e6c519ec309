//! The WebSockets: `/ws/run` (one run's changes, opened with its run token) and `/ws/admin` (every
//! run and export change, opened with the admin token), with the reference's frames, close codes
//! and reasons.
//!
//! Both sockets share one code path; only authentication, the event filter and the request
//! methods differ ([`Role`]). A connection is two loops joined in one task:
//! - the *pump* owns the socket: it writes what the session queued and hands received frames to
//!   the session; a close decided by the session interrupts even a write blocked on a stuck client;
//! - the *session* never blocks: it filters run events into the outgoing queue (bounded: a client
//!   that falls behind is closed 1013 "slow client"), answers requests in tasks (each actor call has
//!   a timeout), sends pings and closes 1011 when no pong came for too long.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Json, Path};
use axum::response::Response;
use neko_actors::clock::unix_now;
use neko_actors::run_db::RunFilter;
use neko_actors::run_tracker::{RunCreate, RunEvent, RunTrackerMsg};
use neko_protocol::RunRecord;
use ractor::RpcReplyPort;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};

use super::{Admin, AppState};
use crate::error::ApiError;

/// How long a new socket has to send its auth frame.
const AUTH_WAIT: Duration = Duration::from_secs(5);
/// The longest auth frame, in characters.
const MAX_AUTH_CHARS: usize = 16_384;
/// The longest frame after auth, in characters.
const MAX_FRAME_CHARS: usize = 262_144;
/// What the WebSocket layer itself reads, in bytes: well over [`MAX_FRAME_CHARS`] characters of
/// four bytes, so a frame over the character limit is read whole and answered with a clean 1009.
/// A frame over this is refused before it is read; its 1009 is sent, but the client may see a
/// reset instead (the rest of its frame is never read).
const MAX_WIRE_BYTES: usize = 16 * MAX_FRAME_CHARS;
/// Server pings this often.
const PING_EVERY: Duration = Duration::from_secs(15);
/// No pong for longer than this closes the socket.
const PONG_TIMEOUT: Duration = Duration::from_secs(45);
/// Outgoing frames a `/ws/run` socket may have queued.
const RUN_QUEUE: usize = 256;
/// Outgoing frames a `/ws/admin` socket may have queued.
const ADMIN_QUEUE: usize = 512;
/// Requests a socket may have in flight (a neko addition: beyond it, "too many requests").
const MAX_IN_FLIGHT: usize = 64;
/// Received frames waiting for the session.
const INCOMING_BUFFER: usize = 16;
/// How long closing may take (sending the close frame, then waiting for the client's).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// `export.list`: page size when none (or ≤ 0) is given, and the largest.
const EXPORT_LIMIT_DEFAULT: i64 = 200;
const EXPORT_LIMIT_MAX: i64 = 500;
/// `runs.list` returns the newest this many runs, oldest first (the reference's insertion order).
const RUNS_LIST_LIMIT: usize = 1000;

/// Close codes.
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;
const TRY_AGAIN: u16 = 1013;
const GOING_AWAY: u16 = 1001;

/// `GET /ws/run`.
pub async fn run_socket(ws: WebSocketUpgrade, State(app): State<AppState>) -> Response {
    let sockets = app.sockets.clone();
    upgrade(ws).on_upgrade(move |socket| sockets.track_future(serve(socket, app, Kind::Run)))
}

/// `GET /ws/admin`.
pub async fn admin_socket(ws: WebSocketUpgrade, State(app): State<AppState>) -> Response {
    let sockets = app.sockets.clone();
    upgrade(ws).on_upgrade(move |socket| sockets.track_future(serve(socket, app, Kind::Admin)))
}

fn upgrade(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_WIRE_BYTES)
        .max_frame_size(MAX_WIRE_BYTES)
}

#[derive(Clone, Copy)]
enum Kind {
    Run,
    Admin,
}

/// Who is on the other end, once authenticated.
enum Role {
    /// A run token's holder: that run only.
    Run { run_id: String },
    /// The admin; `plugin_id` is the optional `subscribe` filter.
    Admin { plugin_id: Option<String> },
}

/// Why a socket ends: `Some` closes with that code and reason, `None` means the client is gone.
type End = Option<Close>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Close {
    code: u16,
    reason: &'static str,
}

const fn close(code: u16, reason: &'static str) -> End {
    Some(Close { code, reason })
}

/// The per-socket numbers the session runs with (constants in production).
#[derive(Debug, Clone, Copy)]
struct Limits {
    queue: usize,
    ping_every: Duration,
    pong_timeout: Duration,
}

impl Role {
    fn limits(&self) -> Limits {
        let queue = match self {
            Role::Run { .. } => RUN_QUEUE,
            Role::Admin { .. } => ADMIN_QUEUE,
        };
        Limits {
            queue,
            ping_every: PING_EVERY,
            pong_timeout: PONG_TIMEOUT,
        }
    }

    /// Whether this socket forwards the event.
    fn wants(&self, event: &RunEvent) -> bool {
        match self {
            Role::Run { run_id } => event.run_id() == run_id,
            // Skipped only when both the subscription and the event name a plugin, and differ.
            Role::Admin {
                plugin_id: Some(want),
            } => {
                let have = event.plugin_id();
                have.is_empty() || have == want
            }
            Role::Admin { plugin_id: None } => true,
        }
    }
}

/// One connection, from upgrade to close.
async fn serve(mut socket: WebSocket, app: AppState, kind: Kind) {
    let opened = match kind {
        Kind::Run => open_run(&mut socket, &app).await,
        Kind::Admin => open_admin(&mut socket, &app).await,
    };
    let (role, events) = match opened {
        Ok(opened) => opened,
        Err(end) => {
            if let Some(c) = end {
                tracing::debug!(code = c.code, reason = c.reason, "websocket refused");
                close_socket(&mut socket, c).await;
            }
            return;
        }
    };
    let limits = role.limits();
    let (out_tx, out_rx) = mpsc::channel(limits.queue);
    let (in_tx, in_rx) = mpsc::channel(INCOMING_BUFFER);
    let (close_tx, close_rx) = oneshot::channel();
    let session = Session::new(app, role, out_tx, limits);
    let logic = async move {
        if let Some(c) = session.run(events, in_rx).await {
            tracing::debug!(code = c.code, reason = c.reason, "websocket closed by neko");
            let _ = close_tx.send(c);
        }
    };
    tokio::join!(pump(socket, out_rx, in_tx, close_rx), logic);
}

// ---- Opening: the auth frame ------------------------------------------------------------------

/// `/ws/run`: a valid run token for a known run.
async fn open_run(
    socket: &mut WebSocket,
    app: &AppState,
) -> Result<(Role, broadcast::Receiver<RunEvent>), End> {
    let auth = read_auth(socket).await?;
    let token = auth
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(close(POLICY, "invalid token"))?;
    let claims = app
        .run_tokens
        .verify(token, unix_now() as u64)
        .map_err(|e| close(POLICY, e))?;
    let run_id = claims.run_id;
    // Subscribed before the run is read, so no change after that read is missed.
    let events = app.run_events.subscribe();
    let found = ask_runs(app, |reply| RunTrackerMsg::Get {
        run_id: run_id.clone(),
        wait: None,
        reply,
    })
    .await
    .map_err(|_| close(INTERNAL, "service unavailable"))?;
    if found.is_none() {
        return Err(close(POLICY, "run not found"));
    }
    let ready = json!({"type": "event", "event": "session.ready", "data": {
        "run_id": run_id, "perm": "read", "exp": claims.exp,
    }});
    send_now(socket, &ready).await?;
    Ok((Role::Run { run_id }, events))
}

/// `/ws/admin`: the admin token as `code` (trimmed, case-insensitive, constant-time compare).
async fn open_admin(
    socket: &mut WebSocket,
    app: &AppState,
) -> Result<(Role, broadcast::Receiver<RunEvent>), End> {
    let auth = read_auth(socket).await?;
    let code = auth
        .get("code")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or(close(POLICY, "invalid code"))?;
    if app.admin_token.trim().is_empty() {
        return Err(close(INTERNAL, "auth not initialized"));
    }
    if !is_admin_code(app, code) {
        return Err(close(POLICY, "forbidden"));
    }
    let events = app.run_events.subscribe();
    let ready = json!({"type": "event", "event": "session.ready", "data": {"role": "admin"}});
    send_now(socket, &ready).await?;
    Ok((Role::Admin { plugin_id: None }, events))
}

/// Whether `code` is the admin token: trimmed, case-insensitive, compared in constant time; never
/// when no token is set. `/ws/admin`'s auth frame and `/ws/logs`'s `?code=` both use it.
pub(super) fn is_admin_code(app: &AppState, code: &str) -> bool {
    let want = app.admin_token.trim();
    let given = code.trim().to_ascii_uppercase();
    !want.is_empty() && !given.is_empty() && bool::from(given.as_bytes().ct_eq(want.as_bytes()))
}

/// The first frame, which must be `{"type":"auth", ...}` within [`AUTH_WAIT`].
async fn read_auth(socket: &mut WebSocket) -> Result<Map<String, Value>, End> {
    let frame = match tokio::time::timeout(AUTH_WAIT, next_frame(socket)).await {
        Err(_) => return Err(close(POLICY, "auth required")),
        Ok(None) => return Err(None),
        Ok(Some(frame)) => frame,
    };
    let text = match frame {
        Incoming::Text(t) if !too_long(&t, MAX_AUTH_CHARS) => t,
        Incoming::Text(_) | Incoming::Binary | Incoming::TooLarge => {
            return Err(close(POLICY, "invalid auth"));
        }
    };
    let Ok(Value::Object(auth)) = serde_json::from_str::<Value>(&text) else {
        return Err(close(POLICY, "invalid auth"));
    };
    if auth.get("type").and_then(Value::as_str) != Some("auth") {
        return Err(close(POLICY, "auth required"));
    }
    Ok(auth)
}

// ---- The socket: frames in and out ------------------------------------------------------------

/// A frame the session cares about.
#[derive(Debug)]
enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// Over [`MAX_FRAME_CHARS`] characters (or over what the WebSocket layer reads at all).
    TooLarge,
}

fn too_long(text: &str, max_chars: usize) -> bool {
    text.len() > max_chars && text.chars().count() > max_chars
}

/// The next data frame; `None` when the client closed or the connection broke.
async fn next_frame(socket: &mut WebSocket) -> Option<Incoming> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) if too_long(&t, MAX_FRAME_CHARS) => {
                return Some(Incoming::TooLarge);
            }
            Ok(Message::Text(t)) => return Some(Incoming::Text(t)),
            Ok(Message::Binary(_)) => return Some(Incoming::Binary),
            // The WebSocket layer answers pings itself.
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return None,
            // The layer's own size limit (tungstenite's `CapacityError::MessageTooLong`).
            Err(e) if e.to_string().contains("Message too long") => {
                return Some(Incoming::TooLarge);
            }
            Err(_) => return None,
        }
    }
}

/// Sends one frame directly (before the pump runs).
async fn send_now(socket: &mut WebSocket, frame: &Value) -> Result<(), End> {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|_| None)
}

/// Sends the close frame and waits briefly for the client's, so it reads the reason.
async fn close_socket(socket: &mut WebSocket, c: Close) {
    let frame = CloseFrame {
        code: c.code,
        reason: c.reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

/// What woke the pump.
enum PumpStep {
    Close(Option<Close>),
    Send(Option<String>),
    Received(Option<Incoming>),
}

/// Owns the socket: writes the session's queue, reads frames for it, closes when told.
async fn pump(
    mut socket: WebSocket,
    mut outgoing: mpsc::Receiver<String>,
    incoming: mpsc::Sender<Incoming>,
    mut closing: oneshot::Receiver<Close>,
) {
    loop {
        let step = tokio::select! {
            biased;
            c = &mut closing => PumpStep::Close(c.ok()),
            text = outgoing.recv() => PumpStep::Send(text),
            frame = next_frame(&mut socket) => PumpStep::Received(frame),
        };
        match step {
            PumpStep::Close(Some(c)) => return close_socket(&mut socket, c).await,
            // The session ended without a close: the client is gone.
            PumpStep::Close(None) | PumpStep::Send(None) | PumpStep::Received(None) => return,
            PumpStep::Send(Some(text)) => {
                // A write to a stuck client may block; the session's close must still get through.
                let interrupted = tokio::select! {
                    biased;
                    c = &mut closing => Some(c.ok()),
                    sent = socket.send(Message::Text(text.into())) => sent.is_err().then_some(None),
                };
                match interrupted {
                    None => {}
                    Some(Some(c)) => return close_socket(&mut socket, c).await,
                    Some(None) => return,
                }
            }
            PumpStep::Received(Some(frame)) => {
                // The session stopped reading only because it is ending; its close comes next.
                let _ = incoming.send(frame).await;
            }
        }
    }
}

// ---- The session: events, requests, heartbeat -------------------------------------------------

/// What woke the session.
enum Wake {
    Frame(Option<Incoming>),
    Event(Result<RunEvent, RecvError>),
    Answered(Result<Value, JoinError>),
    Tick,
}

/// One authenticated socket's state.
struct Session {
    app: AppState,
    role: Role,
    out: mpsc::Sender<String>,
    limits: Limits,
    last_pong: Instant,
    requests: JoinSet<Value>,
}

impl Session {
    fn new(app: AppState, role: Role, out: mpsc::Sender<String>, limits: Limits) -> Self {
        Self {
            app,
            role,
            out,
            limits,
            last_pong: Instant::now(),
            requests: JoinSet::new(),
        }
    }

    /// Runs until the client leaves (`None`) or the socket must close.
    async fn run(
        mut self,
        mut events: broadcast::Receiver<RunEvent>,
        mut incoming: mpsc::Receiver<Incoming>,
    ) -> End {
        let every = self.limits.ping_every;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let shutdown = self.app.shutdown.clone();
        loop {
            let wake = tokio::select! {
                frame = incoming.recv() => Wake::Frame(frame),
                event = events.recv() => Wake::Event(event),
                () = shutdown.cancelled() => Wake::Event(Err(RecvError::Closed)),
                Some(done) = self.requests.join_next(), if !self.requests.is_empty() => {
                    Wake::Answered(done)
                }
                _ = ping.tick() => Wake::Tick,
            };
            let step = match wake {
                Wake::Frame(Some(frame)) => self.on_frame(frame),
                Wake::Frame(None) => Err(None),
                Wake::Event(event) => self.on_event(event),
                Wake::Answered(Ok(resp)) => self.push(&resp),
                Wake::Answered(Err(e)) => {
                    tracing::warn!(error = %e, "websocket request task failed");
                    Ok(())
                }
                Wake::Tick => self.on_tick(),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Queues a frame; a full queue means the client does not keep up.
    fn push(&self, frame: &Value) -> Result<(), End> {
        self.out.try_send(frame.to_string()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => close(TRY_AGAIN, "slow client"),
            mpsc::error::TrySendError::Closed(_) => None,
        })
    }

    fn on_tick(&self) -> Result<(), End> {
        if self.last_pong.elapsed() > self.limits.pong_timeout {
            return Err(close(INTERNAL, "heartbeat timeout"));
        }
        self.push(&json!({"type": "ping"}))
    }

    fn on_event(&mut self, event: Result<RunEvent, RecvError>) -> Result<(), End> {
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => return Err(close(TRY_AGAIN, "slow client")),
            Err(RecvError::Closed) => return Err(close(GOING_AWAY, "server shutting down")),
        };
        if !self.role.wants(&event) {
            return Ok(());
        }
        let frame = bus_change(event.bus(), event.op(), event.payload());
        self.push(&frame)
    }

    /// A client frame: pong, request, subscribe (admin); anything else is ignored.
    fn on_frame(&mut self, frame: Incoming) -> Result<(), End> {
        let text = match frame {
            Incoming::TooLarge => return Err(close(TOO_BIG, "message too large")),
            Incoming::Binary => return Ok(()),
            Incoming::Text(text) => text,
        };
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&text) else {
            return Ok(());
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("pong") => {
                self.last_pong = Instant::now();
                Ok(())
            }
            Some("req") => self.on_request(&msg),
            Some("subscribe") => self.on_subscribe(&msg),
            _ => Ok(()),
        }
    }

    fn on_subscribe(&mut self, msg: &Map<String, Value>) -> Result<(), End> {
        let Role::Admin { plugin_id } = &mut self.role else {
            return Ok(());
        };
        *plugin_id = msg
            .get("plugin_id")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let ack = json!({"type": "event", "event": "subscribed", "data": {"plugin_id": plugin_id}});
        self.push(&ack)
    }

    /// `{"type":"req","id","method","params"}`: answered by a task, so a slow call never holds up
    /// events or the heartbeat.
    fn on_request(&mut self, msg: &Map<String, Value>) -> Result<(), End> {
        let request = match parse_request(msg) {
            Parsed::Ignore => return Ok(()),
            Parsed::Invalid(id, error) => return self.push(&response(id, Err(error.into()))),
            Parsed::Request(request) => request,
        };
        if self.requests.len() >= MAX_IN_FLIGHT {
            return self.push(&response(request.id, Err("too many requests".into())));
        }
        let app = self.app.clone();
        let Request { id, method, params } = request;
        match &self.role {
            Role::Run { run_id } => {
                let run_id = run_id.clone();
                self.requests.spawn(async move {
                    response(id, run_method(&app, &run_id, &method, &params).await)
                });
            }
            Role::Admin { .. } => {
                self.requests
                    .spawn(async move { response(id, admin_method(&app, &method, &params).await) });
            }
        }
        Ok(())
    }
}

// ---- Frames the session builds ----------------------------------------------------------------

/// The envelope of a run or export change.
fn bus_change(bus: &str, op: &str, payload: Value) -> Value {
    json!({"type": "event", "event": "bus.change", "data": {"bus": bus, "op": op, "payload": payload}})
}

fn response(id: String, outcome: Result<Value, String>) -> Value {
    match outcome {
        Ok(result) => json!({"type": "resp", "id": id, "ok": true, "result": result}),
        Err(error) => json!({"type": "resp", "id": id, "ok": false, "error": error}),
    }
}

// ---- Requests ---------------------------------------------------------------------------------

struct Request {
    id: String,
    method: String,
    params: Map<String, Value>,
}

enum Parsed {
    /// No usable id: nothing to answer to.
    Ignore,
    Invalid(String, &'static str),
    Request(Request),
}

fn parse_request(msg: &Map<String, Value>) -> Parsed {
    let Some(id) = msg
        .get("id")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
    else {
        return Parsed::Ignore;
    };
    let id = id.to_string();
    let Some(method) = msg
        .get("method")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return Parsed::Invalid(id, "missing method");
    };
    let params = match msg.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Parsed::Invalid(id, "invalid params"),
    };
    Parsed::Request(Request {
        id,
        method: method.to_string(),
        params,
    })
}

/// `/ws/run` methods: about the token's run only.
async fn run_method(
    app: &AppState,
    run_id: &str,
    method: &str,
    params: &Map<String, Value>,
) -> Result<Value, String> {
    match method {
        "run.get" => get_run(app, run_id.to_string()).await,
        "export.list" => list_exports(app, run_id.to_string(), params).await,
        _ => Err("unknown method".into()),
    }
}

/// `/ws/admin` methods.
async fn admin_method(
    app: &AppState,
    method: &str,
    params: &Map<String, Value>,
) -> Result<Value, String> {
    match method {
        "runs.list" => list_runs(app, str_param(params, "plugin_id")).await,
        "run.get" => get_run(app, required(params, "run_id")?).await,
        "export.list" => list_exports(app, required(params, "run_id")?, params).await,
        "run.create" => create_run(app, params).await,
        "run.cancel" => cancel_run(app, params).await,
        "plugin.stop" => stop_plugin(app, required(params, "plugin_id")?).await,
        _ => Err("unknown method".into()),
    }
}

/// A non-empty string parameter.
fn str_param(params: &Map<String, Value>, key: &str) -> Option<String> {
    params
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A non-empty string parameter, else "<key> required".
fn required(params: &Map<String, Value>, key: &str) -> Result<String, String> {
    str_param(params, key).ok_or_else(|| format!("{key} required"))
}

/// `limit`: integer (or numeric string); absent or ≤ 0 → 200; at most 500.
fn export_limit(params: &Map<String, Value>) -> Result<usize, String> {
    let limit = match params.get("limit") {
        None | Some(Value::Null) => EXPORT_LIMIT_DEFAULT,
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or("invalid limit")?,
        Some(Value::String(s)) => s.trim().parse().map_err(|_| "invalid limit")?,
        Some(_) => return Err("invalid limit".into()),
    };
    let limit = if limit <= 0 {
        EXPORT_LIMIT_DEFAULT
    } else {
        limit.min(EXPORT_LIMIT_MAX)
    };
    Ok(limit as usize)
}

async fn get_run(app: &AppState, run_id: String) -> Result<Value, String> {
    let record = ask_runs(app, |reply| RunTrackerMsg::Get {
        run_id,
        wait: None,
        reply,
    })
    .await?
    .ok_or("run not found")?;
    Ok(record_json(&record))
}

async fn list_exports(
    app: &AppState,
    run_id: String,
    params: &Map<String, Value>,
) -> Result<Value, String> {
    let limit = export_limit(params)?;
    let after = str_param(params, "after");
    let (items, next_after) = ask_runs(app, |reply| RunTrackerMsg::Exports {
        run_id,
        after,
        limit,
        reply,
    })
    .await??
    .ok_or("run not found")?;
    Ok(json!({"items": items, "next_after": next_after}))
}

async fn list_runs(app: &AppState, plugin_id: Option<String>) -> Result<Value, String> {
    let filter = RunFilter {
        plugin_id,
        status: Vec::new(),
        limit: RUNS_LIST_LIMIT,
        cursor: None,
    };
    let (runs, _) = ask_runs(app, |reply| RunTrackerMsg::List(filter, reply))
        .await?
        .map_err(|e| e.to_string())?;
    Ok(Value::Array(runs.iter().rev().map(record_json).collect()))
}

async fn create_run(app: &AppState, params: &Map<String, Value>) -> Result<Value, String> {
    let plugin_id = required(params, "plugin_id")?;
    let entry_id = required(params, "entry_id")?;
    let args = match params.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(args)) => args.clone(),
        Some(_) => return Err("args must be object".into()),
    };
    let create = RunCreate {
        plugin_id,
        entry_id,
        args,
        task_id: None,
        trace_id: None,
        idempotency_key: None,
    };
    let created = ask_runs(app, |reply| RunTrackerMsg::Create(create, reply)).await??;
    // No token on this path, as in the reference.
    Ok(json!({
        "run_id": created.record.run_id, "status": created.record.status,
        "run_token": null, "expires_at": null,
    }))
}

async fn cancel_run(app: &AppState, params: &Map<String, Value>) -> Result<Value, String> {
    let run_id = required(params, "run_id")?;
    let reason = str_param(params, "reason");
    let record = ask_runs(app, |reply| RunTrackerMsg::Cancel {
        run_id,
        reason,
        reply,
    })
    .await?
    .ok_or("run not found")?;
    Ok(record_json(&record))
}

/// The HTTP stop handler, so both paths answer alike (errors as "404: Plugin 'x' ...").
async fn stop_plugin(app: &AppState, plugin_id: String) -> Result<Value, String> {
    super::plugin::stop(Admin, State(app.clone()), Path(plugin_id))
        .await
        .map(|Json(v)| v)
        .map_err(error_text)
}

/// One call to the RunTracker, bounded by the request timeout.
async fn ask_runs<T: Send + 'static>(
    app: &AppState,
    msg: impl FnOnce(RpcReplyPort<T>) -> RunTrackerMsg,
) -> Result<T, String> {
    let refs = app.refs().map_err(error_text)?;
    ApiError::from_call(refs.runs.call(msg, Some(app.request_timeout)).await).map_err(error_text)
}

/// An HTTP error as the reference's WebSocket reports it: `"<status>: <detail>"`.
fn error_text(e: ApiError) -> String {
    let detail = match &e.detail {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("{}: {detail}", e.status.as_u16())
}

fn record_json(record: &RunRecord) -> Value {
    serde_json::to_value(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use neko_actors::run_token::RunTokenSigner;
    use tokio::sync::watch;

    use super::*;

    fn app() -> AppState {
        AppState {
            refs: watch::channel(None).1,
            admin_token: Arc::from("SECRET"),
            request_timeout: Duration::from_secs(1),
            lifecycle_timeout: Duration::from_secs(1),
            started: Instant::now(),
            run_events: broadcast::channel(16).0,
            run_tokens: RunTokenSigner::new("k"),
            plugin_logs_dir: std::path::PathBuf::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            sockets: tokio_util::task::TaskTracker::new(),
        }
    }

    fn limits(queue: usize, ping_ms: u64, pong_ms: u64) -> Limits {
        Limits {
            queue,
            ping_every: Duration::from_millis(ping_ms),
            pong_timeout: Duration::from_millis(pong_ms),
        }
    }

    /// A session with its channels: (events, frames in, frames out, the session's end).
    fn start(
        role: Role,
        limits: Limits,
    ) -> (
        broadcast::Sender<RunEvent>,
        mpsc::Sender<Incoming>,
        mpsc::Receiver<String>,
        tokio::task::JoinHandle<End>,
    ) {
        let app = app();
        let events = app.run_events.clone();
        let (out_tx, out_rx) = mpsc::channel(limits.queue);
        let (in_tx, in_rx) = mpsc::channel(INCOMING_BUFFER);
        let session = Session::new(app, role, out_tx, limits);
        let rx = events.subscribe();
        let handle = tokio::spawn(session.run(rx, in_rx));
        (events, in_tx, out_rx, handle)
    }

    fn record(run_id: &str, plugin_id: &str) -> RunRecord {
        serde_json::from_value(json!({
            "run_id": run_id, "plugin_id": plugin_id, "entry_id": "e", "status": "running",
            "created_at": 1.0, "updated_at": 2.0, "task_id": null, "trace_id": null,
            "idempotency_key": null, "started_at": null, "finished_at": null, "progress": 0.5,
            "stage": null, "message": null, "step": 1, "step_total": 2, "eta_seconds": null,
            "metrics": {}, "cancel_requested": false, "cancel_reason": null,
            "cancel_requested_at": null, "error": null, "result_refs": [],
        }))
        .expect("a run record")
    }

    fn run_event(run_id: &str, plugin_id: &str) -> RunEvent {
        RunEvent::run("change", record(run_id, plugin_id))
    }

    fn text(s: &str) -> Incoming {
        Incoming::Text(s.into())
    }

    async fn next(out: &mut mpsc::Receiver<String>) -> Value {
        let frame = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .expect("a frame in time")
            .expect("the session is open");
        serde_json::from_str(&frame).expect("JSON")
    }

    #[test]
    fn requests_are_parsed_as_the_reference() {
        let parse = |v: Value| parse_request(v.as_object().unwrap());
        assert!(matches!(
            parse(json!({"method": "run.get"})),
            Parsed::Ignore
        ));
        assert!(matches!(
            parse(json!({"id": "", "method": "x"})),
            Parsed::Ignore
        ));
        assert!(matches!(
            parse(json!({"id": "1"})),
            Parsed::Invalid(_, "missing method")
        ));
        assert!(matches!(
            parse(json!({"id": "1", "method": "m", "params": [1]})),
            Parsed::Invalid(_, "invalid params")
        ));
        assert!(matches!(
            parse(json!({"id": "1", "method": "m", "params": null})),
            Parsed::Request(_)
        ));
        let limit = |v: Value| export_limit(v.as_object().unwrap());
        assert_eq!(limit(json!({})), Ok(200));
        assert_eq!(limit(json!({"limit": 0})), Ok(200));
        assert_eq!(limit(json!({"limit": -3})), Ok(200));
        assert_eq!(limit(json!({"limit": 7})), Ok(7));
        assert_eq!(limit(json!({"limit": "9"})), Ok(9));
        assert_eq!(limit(json!({"limit": 10_000})), Ok(500));
        assert!(limit(json!({"limit": "x"})).is_err());
    }

    #[test]
    fn admin_filter_skips_only_other_plugins() {
        let ev = run_event("r", "a");
        assert!(Role::Admin { plugin_id: None }.wants(&ev));
        assert!(
            Role::Admin {
                plugin_id: Some("a".into())
            }
            .wants(&ev)
        );
        assert!(
            !Role::Admin {
                plugin_id: Some("b".into())
            }
            .wants(&ev)
        );
        assert!(Role::Run { run_id: "r".into() }.wants(&ev));
        assert!(!Role::Run { run_id: "s".into() }.wants(&ev));
    }

    #[test]
    fn payloads_have_the_reference_fields() {
        let first = RunEvent::run("change", record("r", "a"));
        let p = RunEvent::run("change", record("r", "a")).payload();
        for key in [
            "source",
            "kind",
            "type",
            "priority",
            "timestamp",
            "id",
            "run_id",
            "status",
            "progress",
            "stage",
            "message",
            "step",
            "step_total",
            "eta_seconds",
            "metrics",
            "updated_at",
            "rev",
            "plugin_id",
            "entry_id",
        ] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
        // Revisions count up across the bus.
        assert!(p["rev"].as_u64() > first.payload()["rev"].as_u64(), "{p}");
        assert_eq!(p["timestamp"], 2.0);
        assert!(p.get("task_id").is_none());
    }

    #[tokio::test]
    async fn pings_flow_and_a_silent_client_is_closed() {
        let (_events, incoming, mut out, end) =
            start(Role::Admin { plugin_id: None }, limits(16, 20, 200));
        // Answering pongs keeps the socket open past the pong timeout.
        for _ in 0..15 {
            assert_eq!(next(&mut out).await["type"], "ping");
            incoming.send(text(r#"{"type":"pong"}"#)).await.unwrap();
        }
        assert!(!end.is_finished());
        // Then silence.
        let closed = tokio::time::timeout(Duration::from_secs(5), end)
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(closed, close(INTERNAL, "heartbeat timeout"));
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_closed_slow() {
        let (events, _incoming, _out, end) =
            start(Role::Admin { plugin_id: None }, limits(4, 60_000, 60_000));
        for _ in 0..5 {
            events.send(run_event("r", "a")).unwrap();
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), end)
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(closed, close(TRY_AGAIN, "slow client"));
    }

    #[tokio::test]
    async fn frames_are_answered_or_ignored() {
        let (events, incoming, mut out, end) =
            start(Role::Run { run_id: "r".into() }, limits(16, 60_000, 60_000));
        for junk in [
            "not json",
            "[1]",
            r#"{"type":"other"}"#,
            r#"{"type":"req","method":"run.get"}"#,
            r#"{"type":"subscribe","plugin_id":"x"}"#,
        ] {
            incoming.send(text(junk)).await.unwrap();
        }
        incoming.send(Incoming::Binary).await.unwrap();
        incoming
            .send(text(r#"{"type":"req","id":"1"}"#))
            .await
            .unwrap();
        let resp = next(&mut out).await;
        assert_eq!(
            resp,
            json!({"type":"resp","id":"1","ok":false,"error":"missing method"})
        );
        incoming
            .send(text(r#"{"type":"req","id":"2","method":"nope"}"#))
            .await
            .unwrap();
        assert_eq!(next(&mut out).await["error"], "unknown method");
        // Another run's change is not forwarded; this run's is.
        events.send(run_event("other", "a")).unwrap();
        let change = run_event("r", "a");
        let rev = change.payload()["rev"].clone();
        events.send(change).unwrap();
        let ev = next(&mut out).await;
        assert_eq!(ev["data"]["bus"], "runs");
        assert_eq!(ev["data"]["payload"]["run_id"], "r");
        // The bus's revision, not a count of this socket's frames.
        assert_eq!(ev["data"]["payload"]["rev"], rev);
        incoming.send(Incoming::TooLarge).await.unwrap();
        let closed = end.await.unwrap();
        assert_eq!(closed, close(TOO_BIG, "message too large"));
    }
}
