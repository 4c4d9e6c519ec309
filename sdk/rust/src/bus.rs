//! The message plane from a Rust plugin: push messages (batched and bounded) and query the
//! stores over RPC.
//!
//! The wire is the reference's message-plane protocol (`protocol/PROTOCOL.md`, "Message plane"):
//! INGEST takes single msgpack maps `{"v":1,"kind":"delta_batch","from","ts","batch_id","items"}`
//! on a PUSH socket, RPC takes the envelope `{"v":1,"op","req_id","args","from_plugin"}` on a
//! DEALER. neko passes the endpoints in `NEKO_MESSAGE_PLANE_ZMQ_{INGEST,RPC}_ENDPOINT`.
//!
//! Pushes are encoded into a bounded outbox (`outbox.rs`) whose task owns the PUSH socket and
//! sends a frame per [`BATCH_MAX`] messages or per [`FLUSH_EVERY`], whichever comes first. A push
//! never waits on the socket, only for room in a full outbox: [`Bus::push_message`] waits up to
//! [`PUSH_WAIT`] (backpressure: a handler pushing in a loop goes at the pace the plane takes),
//! [`Bus::try_push_message`] not at all; a message that finds no room is dropped and counted
//! ([`Bus::dropped`]), so a plugin that floods only loses its own messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, OnceCell};
use zeromq::{DealerSocket, PushSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::error::EntryError;
use crate::outbox::{Outbox, Refused};
use neko_protocol::ErrorCode;

/// Messages per INGEST frame at most (the reference's `NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_BATCH_SIZE`).
pub const BATCH_MAX: usize = 256;
/// A partial batch is sent after this long (the reference's flush interval).
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Messages waiting to be sent at most; beyond it pushes wait or are dropped (and counted).
pub const QUEUE_MAX: usize = 100_000;
/// How long [`Bus::push_message`] waits for room in a full queue before it drops the message.
pub const PUSH_WAIT: Duration = Duration::from_secs(1);
/// Default deadline of a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

const INGEST_ENV: &str = neko_protocol::env::MESSAGE_PLANE_INGEST;
const RPC_ENV: &str = neko_protocol::env::MESSAGE_PLANE_RPC;

/// A message to push; [`Message::new`] then the builder methods for the optional fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub source: String,
    pub message_type: String,
    pub description: String,
    pub priority: i64,
    pub content: Value,
    pub binary_data: Option<Vec<u8>>,
    pub binary_url: Option<String>,
    pub metadata: Map<String, Value>,
}

impl Message {
    /// A message of `message_type` (e.g. `"text"`) from `source`, with `content`.
    pub fn new(source: impl Into<String>, message_type: impl Into<String>, content: Value) -> Self {
        Self {
            source: source.into(),
            message_type: message_type.into(),
            content,
            ..Self::default()
        }
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn binary(mut self, data: Vec<u8>) -> Self {
        self.binary_data = Some(data);
        self
    }

    pub fn binary_url(mut self, url: impl Into<String>) -> Self {
        self.binary_url = Some(url.into());
        self
    }
}

/// The stored payload: the reference's `push_message` record (`type` = `MESSAGE_PUSH`),
/// borrowed from the message while it is encoded.
struct Payload<'a> {
    message_id: &'a str,
    plugin_id: &'a str,
    message: &'a Message,
    time: f64,
}

/// `{"store":"messages","topic":"all","payload":{"type":"MESSAGE_PUSH","message_id":` in msgpack:
/// what every pushed item starts with.
static ITEM_HEAD: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::new();
    let _ = rmp::encode::write_map_len(&mut out, 3);
    for s in ["store", "messages", "topic", "all", "payload"] {
        let _ = rmp::encode::write_str(&mut out, s);
    }
    let _ = rmp::encode::write_map_len(&mut out, 13);
    for s in ["type", "MESSAGE_PUSH", "message_id"] {
        let _ = rmp::encode::write_str(&mut out, s);
    }
    out
});

impl Payload<'_> {
    /// Writes the INGEST item holding this payload. By hand, as it runs once per pushed message:
    /// the fixed part is copied in one go, only `content` and `metadata` go through serde.
    fn write_item(&self, out: &mut Vec<u8>) -> Result<(), String> {
        use rmp::encode::{write_bin, write_bool, write_f64, write_nil, write_sint, write_str};
        let m = self.message;
        // Writing to a Vec cannot fail, but for serde's errors.
        out.extend_from_slice(&ITEM_HEAD);
        let _ = write_str(out, self.message_id);
        for (key, value) in [
            ("plugin_id", self.plugin_id),
            ("source", &m.source),
            ("description", &m.description),
        ] {
            let _ = write_str(out, key);
            let _ = write_str(out, value);
        }
        let _ = write_str(out, "priority");
        let _ = write_sint(out, m.priority);
        let _ = write_str(out, "message_type");
        let _ = write_str(out, &m.message_type);
        let _ = write_str(out, "content");
        rmp_serde::encode::write_named(out, &m.content).map_err(|e| e.to_string())?;
        let _ = write_str(out, "binary_data");
        match &m.binary_data {
            Some(data) => drop(write_bin(out, data)),
            None => drop(write_nil(out)),
        }
        let _ = write_str(out, "binary_url");
        match &m.binary_url {
            Some(url) => drop(write_str(out, url)),
            None => drop(write_nil(out)),
        }
        let _ = write_str(out, "metadata");
        rmp_serde::encode::write_named(out, &m.metadata).map_err(|e| e.to_string())?;
        let _ = write_str(out, "unsafe");
        let _ = write_bool(out, false);
        let _ = write_str(out, "time");
        let _ = write_f64(out, self.time);
        Ok(())
    }
}

/// A plugin's connection to the message plane, created on first use.
pub struct Bus {
    plugin_id: Arc<str>,
    pushes: OnceCell<Arc<Outbox>>,
    rpc: OnceCell<Mutex<DealerSocket>>,
    next_id: AtomicU64,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("plugin_id", &self.plugin_id)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub(crate) fn new(plugin_id: &str) -> Self {
        Self {
            plugin_id: Arc::from(plugin_id),
            pushes: OnceCell::new(),
            rpc: OnceCell::new(),
            next_id: AtomicU64::new(0),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Pushes `message` to store `messages`, topic `all`; returns its `message_id`. When
    /// [`QUEUE_MAX`] messages are waiting already it waits for room, up to [`PUSH_WAIT`], so a
    /// producer in a loop goes at the pace the plane takes; past that the message is dropped
    /// (error `RATE_LIMITED`, counted in [`Bus::dropped`]).
    pub async fn push_message(&self, message: Message) -> Result<String, EntryError> {
        self.push(message, Some(PUSH_WAIT)).await
    }

    /// As [`Bus::push_message`], but never waits: a full queue drops the message at once.
    pub async fn try_push_message(&self, message: Message) -> Result<String, EntryError> {
        self.push(message, None).await
    }

    async fn push(&self, message: Message, wait: Option<Duration>) -> Result<String, EntryError> {
        let pushes = self.pushes.get_or_try_init(|| self.start_pusher()).await?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let message_id = message_id(&self.plugin_id, n);
        let payload = Payload {
            message_id: &message_id,
            plugin_id: &self.plugin_id,
            message: &message,
            time: unix_now(),
        };
        let write = |out: &mut Vec<u8>| payload.write_item(out);
        let pushed = match wait {
            Some(wait) => {
                let deadline = tokio::time::Instant::now() + wait;
                pushes.push_waiting(write, deadline).await
            }
            None => pushes.push(write),
        };
        match pushed {
            Ok(()) => Ok(message_id),
            Err(Refused::Full) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(EntryError::new(
                    ErrorCode::RateLimited,
                    "message_plane backpressure: push_message dropped",
                ))
            }
            Err(Refused::Unencodable(why)) => Err(EntryError::validation(format!(
                "cannot encode the message: {why}"
            ))),
            Err(Refused::Closed) => Err(EntryError::new(
                ErrorCode::NotReady,
                "the message plane connection is closed",
            )),
        }
    }

    /// Pushes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends one RPC request (`op`, `args`) and returns its `result`; an `ok: false` answer is an
    /// error carrying the plane's code and message.
    pub async fn rpc(&self, op: &str, args: Value, timeout: Duration) -> Result<Value, EntryError> {
        let socket = self.rpc.get_or_try_init(connect_rpc).await?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let req_id = format!("{}:{n}", self.plugin_id);
        let envelope = json!({
            "v": 1, "op": op, "req_id": req_id, "args": args, "from_plugin": &*self.plugin_id,
        });
        let bytes = rmp_serde::to_vec_named(&envelope)
            .map_err(|e| EntryError::validation(format!("cannot encode the request: {e}")))?;
        // One request at a time per plugin: replies are matched by req_id, stale ones skipped.
        let mut socket = socket.lock().await;
        let exchange = async {
            socket.send(ZmqMessage::from(bytes)).await.map_err(io)?;
            loop {
                let reply = socket.recv().await.map_err(io)?;
                let Some(last) = reply.iter().last() else {
                    continue;
                };
                let Ok(reply) = rmpv::decode::read_value(&mut &last[..]) else {
                    continue;
                };
                let reply = to_json(reply);
                if reply["req_id"] == req_id.as_str() {
                    return Ok::<Value, EntryError>(reply);
                }
            }
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                EntryError::new(
                    ErrorCode::Timeout,
                    format!("{op} timed out after {}s", timeout.as_secs_f64()),
                )
            })??;
        if reply["ok"] == true {
            return Ok(reply["result"].clone());
        }
        let error = &reply["error"];
        Err(EntryError::new(
            ErrorCode::from(error["code"].as_str().unwrap_or("INTERNAL").to_string()),
            error["message"].as_str().unwrap_or("message plane error"),
        ))
    }

    /// The last `limit` records of `store`/`topic`, oldest first (`bus.get_recent`).
    pub async fn get_recent(
        &self,
        store: &str,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Value>, EntryError> {
        let args = json!({"store": store, "topic": topic, "limit": limit, "light": false});
        let result = self.rpc("bus.get_recent", args, QUERY_TIMEOUT).await?;
        Ok(items(result))
    }

    /// Records of `store` matching `filters` (the `bus.query` args: `topic`, `plugin_id`,
    /// `source`, `kind`, `type`, `priority_min`, `since_ts`, `until_ts`, `limit`), newest first.
    pub async fn query(&self, store: &str, filters: Value) -> Result<Vec<Value>, EntryError> {
        let mut args = match filters {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        args.insert("store".into(), json!(store));
        args.entry("topic").or_insert(json!("all"));
        args.entry("limit").or_insert(json!(200));
        args.entry("light").or_insert(json!(false));
        let result = self
            .rpc("bus.query", Value::Object(args), QUERY_TIMEOUT)
            .await?;
        Ok(items(result))
    }

    async fn start_pusher(&self) -> Result<Arc<Outbox>, EntryError> {
        let endpoint = endpoint(INGEST_ENV)?;
        let mut socket = PushSocket::new();
        socket.connect(&endpoint).await.map_err(io)?;
        Ok(Outbox::start(socket, self.plugin_id.clone()))
    }
}

impl Drop for Bus {
    /// Lets the outbox's task send what is queued and end.
    fn drop(&mut self) {
        if let Some(outbox) = self.pushes.get() {
            outbox.close();
        }
    }
}

/// `<plugin_id>:<n>`, the id of a pushed message.
fn message_id(plugin_id: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut id = String::with_capacity(plugin_id.len() + 1 + digits.len());
    id.push_str(plugin_id);
    id.push(':');
    id.push_str(digits);
    id
}

async fn connect_rpc() -> Result<Mutex<DealerSocket>, EntryError> {
    let endpoint = endpoint(RPC_ENV)?;
    let mut socket = DealerSocket::new();
    socket.connect(&endpoint).await.map_err(io)?;
    Ok(Mutex::new(socket))
}

fn endpoint(var: &str) -> Result<String, EntryError> {
    std::env::var(var).map_err(|_| {
        EntryError::new(
            ErrorCode::NotReady,
            format!("message_plane is not available ({var} is not set)"),
        )
    })
}

/// A msgpack reply as JSON; `bin` values (a message's `binary_data`) become base64 strings,
/// as in the gateway's JSON.
fn to_json(value: rmpv::Value) -> Value {
    use base64::Engine;
    match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        rmpv::Value::F32(f) => json!(f),
        rmpv::Value::F64(f) => json!(f),
        rmpv::Value::String(s) => Value::String(s.into_str().unwrap_or_default()),
        rmpv::Value::Binary(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        rmpv::Value::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        rmpv::Value::Map(pairs) => Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        rmpv::Value::Ext(_, bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

fn items(result: Value) -> Vec<Value> {
    match result {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn io(e: zeromq::ZmqError) -> EntryError {
    EntryError::new(ErrorCode::NotReady, format!("message plane: {e}"))
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written item is the reference's push_message record, every field in place.
    #[test]
    fn pushed_items_hold_every_field() {
        let mut metadata = Map::new();
        metadata.insert("k".into(), json!([1, "two"]));
        let message = Message::new("src", "text", json!({"text": "héllo"}))
            .description("d")
            .priority(-7)
            .metadata(metadata)
            .binary(vec![1, 2, 3])
            .binary_url("http://x/y");
        let payload = Payload {
            message_id: &message_id("echo", 42),
            plugin_id: "echo",
            message: &message,
            time: 1.5,
        };
        let mut out = Vec::new();
        payload.write_item(&mut out).unwrap();
        let item = to_json(rmpv::decode::read_value(&mut &out[..]).unwrap());
        assert_eq!(
            item,
            json!({
                "store": "messages", "topic": "all",
                "payload": {
                    "type": "MESSAGE_PUSH", "message_id": "echo:42", "plugin_id": "echo",
                    "source": "src", "description": "d", "priority": -7, "message_type": "text",
                    "content": {"text": "héllo"}, "binary_data": "AQID",
                    "binary_url": "http://x/y", "metadata": {"k": [1, "two"]},
                    "unsafe": false, "time": 1.5,
                },
            })
        );
        let plain = Message::new("s", "text", Value::Null);
        let payload = Payload {
            message: &plain,
            ..payload
        };
        out.clear();
        payload.write_item(&mut out).unwrap();
        let item = to_json(rmpv::decode::read_value(&mut &out[..]).unwrap());
        assert_eq!(item["payload"]["binary_data"], Value::Null);
        assert_eq!(item["payload"]["binary_url"], Value::Null);
        assert_eq!(item["payload"]["metadata"], json!({}));
    }

    #[test]
    fn replies_with_binary_data_convert_to_json() {
        let reply = rmpv::Value::Map(vec![
            (rmpv::Value::from("ok"), rmpv::Value::from(true)),
            (rmpv::Value::from("n"), rmpv::Value::from(-3)),
            (
                rmpv::Value::from("binary_data"),
                rmpv::Value::Binary(vec![1, 2, 3]),
            ),
        ]);
        assert_eq!(
            to_json(reply),
            json!({"ok": true, "n": -3, "binary_data": "AQID"})
        );
    }
}
