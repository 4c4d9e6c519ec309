//! What plugins said: `GET /plugin/messages` (the reference's route, with its bug fixed: the
//! message fields are read from the stored payload, so they and the filters work) and
//! `GET /plugin/messages/stream` (a live view of one store as server-sent events).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use neko_actors::clock::{iso_from_unix, iso_now};
use neko_actors::message_plane::{QueryFilter, StoreName};
use serde::Deserialize;
use serde_json::{Value, json};
use zeromq::{Socket, SocketRecv, SubSocket};

use super::{AppState, QueryArgs};
use crate::error::ApiError;

/// The reference's `MESSAGE_QUEUE_DEFAULT_MAX_COUNT`.
const DEFAULT_MAX_COUNT: usize = 100;
/// Keeps idle streams (and the proxies in front of them) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct MessagesQuery {
    plugin_id: Option<String>,
    max_count: Option<i64>,
    priority_min: Option<i64>,
}

/// Recent pushed messages, oldest first: `{"messages": [...], "count", "time"}`.
pub async fn messages(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<MessagesQuery>,
) -> Result<Json<Value>, ApiError> {
    let max_count = q.max_count.unwrap_or(DEFAULT_MAX_COUNT as i64);
    if !(1..=1000).contains(&max_count) {
        return Err(ApiError::validation(
            &["query", "max_count"],
            "Input should be greater than or equal to 1 and less than or equal to 1000",
        ));
    }
    let refs = app.refs()?;
    let filter = QueryFilter {
        topic: Some("all".into()),
        plugin_id: q.plugin_id.filter(|p| !p.is_empty()),
        priority_min: q.priority_min,
        limit: max_count as usize,
        ..QueryFilter::default()
    };
    let mut events = refs
        .messages
        .query(StoreName::Messages, filter)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // The store answers newest first; the reference lists oldest first.
    events.reverse();
    let messages: Vec<Value> = events.iter().map(message_fields).collect();
    Ok(Json(json!({
        "count": messages.len(),
        "messages": messages,
        "time": iso_now(),
    })))
}

/// The reference's message shape, from a stored event (`{seq, ts, payload, index, ...}`).
fn message_fields(event: &Value) -> Value {
    let p = &event["payload"];
    let text = |key: &str| p[key].as_str().unwrap_or_default().to_string();
    let timestamp = match &p["time"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => iso_from_unix(n.as_f64().unwrap_or_default()),
        _ => iso_from_unix(event["ts"].as_f64().unwrap_or_default()),
    };
    json!({
        "plugin_id": text("plugin_id"),
        "source": text("source"),
        "description": text("description"),
        "priority": p["priority"].as_i64().unwrap_or(0),
        "message_type": p["message_type"].as_str().unwrap_or("text"),
        "content": p["content"],
        "binary_data": p["binary_data"],
        "binary_url": p["binary_url"],
        "metadata": if p["metadata"].is_object() { p["metadata"].clone() } else { json!({}) },
        "timestamp": timestamp,
        "message_id": text("message_id"),
    })
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// `messages` (default), `events`, `lifecycle`, `runs`, `export` or `memory`.
    store: Option<String>,
}

/// Every new record of a store, live: one server-sent event per record (`event:` is
/// `<store>.<topic>`, `data:` the record as JSON), read from the message plane's PUB socket.
pub async fn stream(
    State(app): State<AppState>,
    QueryArgs(q): QueryArgs<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let store = q.store.unwrap_or_else(|| "messages".into());
    if !StoreName::ALL.iter().any(|s| s.as_str() == store) {
        return Err(ApiError::validation(
            &["query", "store"],
            format!("unknown store '{store}'"),
        ));
    }
    let endpoint = app.refs()?.messages.endpoints().publish.clone();
    let mut socket = SubSocket::new();
    let subscribed = async {
        socket.connect(&endpoint).await?;
        socket.subscribe(&format!("{store}.")).await
    };
    subscribed.await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("message plane: {e}"),
        )
    })?;
    let events = futures::stream::unfold(socket, |mut socket| async move {
        loop {
            let message = socket.recv().await.ok()?;
            let frames: Vec<_> = message.into_vec();
            let [topic, body] = frames.as_slice() else {
                continue;
            };
            let event = Event::default()
                .event(String::from_utf8_lossy(topic))
                .data(String::from_utf8_lossy(body));
            return Some((Ok(event), socket));
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
