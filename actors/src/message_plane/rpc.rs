//! RPC: the ROUTER socket clients query the stores on, and its protocol (v1 reference §9.3).
//!
//! A request is the last frame of a message (frames between the identity and it are echoed
//! back). It is JSON when it parses as UTF-8 JSON, else msgpack, and the reply uses the same
//! encoding; an undecodable frame is read as an empty map (so it is answered "invalid rpc
//! envelope", in JSON). Envelope `{"v":1,"op","req_id","args","from_plugin"}`; replies
//! `{"v":1,"req_id","ok","result","error"}` with `error = {"code","message","details"}`.
//!
//! Validation modes: `strict` (the reference's default) checks the envelope exactly (known keys,
//! types, lengths, a known op, `v` present and 1) and the arguments of `bus.get_recent` /
//! `bus.query` exactly (`BAD_ARGS`), `bus.replay` by shape; `warn` does the same but tolerates a
//! missing `v` and only logs bad arguments; `off` reads fields leniently (Python's `int()`,
//! `str()`…) and still refuses a `v` other than null/1. Error messages are the reference's.
//!
//! neko additions: `bus.get_since` and `bus.delete {store, id} → {"deleted": bool}` are known ops
//! (`bus.delete` is what the SDK's `events.delete` / `lifecycle.delete` use); `BAD_ARGS` details
//! always name the offending `field`; a store that does not answer in time gives code `TIMEOUT`,
//! one being restarted `UNAVAILABLE`; unreadable numeric query filters are `BAD_ARGS` rather than
//! the reference's "internal error".
//!
//! The socket task owns the ROUTER: it reads requests while fewer than [`MAX_IN_FLIGHT`] are being
//! answered, evaluates each in its own task (store calls have a deadline) and writes the replies.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ractor::rpc::CallResult;
use rmpv::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::codec::{
    Doc, RMPV_DEPTH, json_to_value, py_eq, py_float, py_int, py_repr, py_str, py_truthy,
};
use super::replay::Plan;
use super::store::{Payload, QueryFilter, Rejected, StoreName, TOPIC_NAME_MAX};
use super::topic_store::{StoreReply, StoreRequest, TopicStoreMsg};
use super::{PlaneCounters, RateLimit, StoreRefs};
use crate::clock::unix_now;

/// The protocol version spoken.
pub const PROTOCOL_VERSION: i64 = 1;
/// Requests being answered at once, at most; beyond it the socket is not read.
pub const MAX_IN_FLIGHT: usize = 256;
/// A `limit` not given (or unreadable).
const DEFAULT_LIMIT: i64 = 200;
/// How long a reply may wait for room in a client's queue before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);
/// The ops a validated envelope may name.
const OPS: [&str; 9] = [
    "ping",
    "health",
    "bus.list_topics",
    "bus.publish",
    "bus.get_recent",
    "bus.get_since",
    "bus.query",
    "bus.replay",
    "bus.delete",
];
const NO_ARGS: Args<'static> = &[];

/// A request's `args` map.
type Args<'a> = &'a [(Value, Value)];

static WARN_LOG: RateLimit = RateLimit::new();

/// How strictly requests are checked (`NEKO_MESSAGE_PLANE_VALIDATE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidateMode {
    Off,
    Warn,
    #[default]
    Strict,
}

impl ValidateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidateMode::Off => "off",
            ValidateMode::Warn => "warn",
            ValidateMode::Strict => "strict",
        }
    }
}

impl FromStr for ValidateMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(ValidateMode::Off),
            "warn" => Ok(ValidateMode::Warn),
            "strict" => Ok(ValidateMode::Strict),
            other => Err(format!(
                "validate_mode must be off, warn or strict, not {other:?}"
            )),
        }
    }
}

/// The encoding of a request, and so of its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Msgpack,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Vec<(&'static str, String)>>,
}

impl RpcError {
    fn err(message: impl Into<String>) -> Self {
        Self {
            code: "ERR",
            message: message.into(),
            details: None,
        }
    }

    fn bad_args(op: &str, field: &str) -> Self {
        Self {
            code: "BAD_ARGS",
            message: "invalid args".into(),
            details: Some(vec![("op", op.to_owned()), ("field", field.to_owned())]),
        }
    }

    fn doc(&self) -> Doc {
        Doc::Map(vec![
            ("code", Doc::str(self.code)),
            ("message", Doc::str(self.message.clone())),
            (
                "details",
                match &self.details {
                    None => Doc::Nil,
                    Some(d) => Doc::Map(d.iter().map(|(k, v)| (*k, Doc::str(v.clone()))).collect()),
                },
            ),
        ])
    }
}

/// Settings the protocol needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcConfig {
    pub mode: ValidateMode,
    /// Cap of every `limit` (`get_recent_max_limit`).
    pub max_limit: usize,
}

/// How a store's answer becomes the result.
#[derive(Debug)]
pub(crate) enum Shape {
    ListTopics(StoreName),
    Publish,
    GetRecent {
        store: StoreName,
        topic: String,
        light: bool,
    },
    GetSince {
        store: StoreName,
        topic: Option<String>,
        after_seq: i64,
        light: bool,
    },
    Query {
        store: StoreName,
        topic: Option<String>,
        light: bool,
    },
    Replay {
        store: StoreName,
        light: bool,
    },
    Delete,
}

/// What a request needs: an answer now, or a store.
#[derive(Debug)]
pub(crate) enum Prepared {
    Answer(Result<Doc, RpcError>),
    Store {
        store: StoreName,
        request: StoreRequest,
        shape: Shape,
    },
}

/// Decodes a request frame: JSON if it is UTF-8 JSON, else msgpack; `None` if neither.
pub(crate) fn decode(frame: &[u8]) -> (Option<Value>, Encoding) {
    if let Ok(text) = std::str::from_utf8(frame)
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(text)
    {
        return (Some(json_to_value(json)), Encoding::Json);
    }
    let mut rd = frame;
    // rmpv's default limit (1024 units) recurses deep enough to overflow a worker thread's
    // stack; allow what a request can legitimately hold: a payload nested MAX_DEPTH deep inside
    // the envelope and args maps (rmpv counts two units per container level, three per leaf).
    match rmpv::decode::read_value_with_max_depth(&mut rd, RMPV_DEPTH) {
        Ok(v) if rd.is_empty() => (Some(v), Encoding::Msgpack),
        _ => (None, Encoding::Json),
    }
}

/// `d.get(key)` (the last occurrence wins, as in a Python dict).
fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .rev()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// `d.get(key)`, nil counting as absent (`is None`).
fn given<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    get(map, key).filter(|v| !v.is_nil())
}

/// `str(d.get(key) or "")`.
fn str_or_empty(map: &[(Value, Value)], key: &str) -> String {
    match get(map, key) {
        Some(v) if py_truthy(v) => py_str(v),
        _ => String::new(),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The reply's `req_id`: `str(req.get("req_id") or "")`.
fn req_id_of(req: &Value) -> String {
    match req {
        Value::Map(m) => str_or_empty(m, "req_id"),
        _ => String::new(),
    }
}

/// Checks the envelope; the op and args to run.
fn envelope(req: &Value, mode: ValidateMode) -> Result<(String, Args<'_>), RpcError> {
    let invalid = || RpcError::err("invalid rpc envelope");
    let Value::Map(m) = req else {
        return Err(invalid());
    };
    if mode == ValidateMode::Off {
        let op = str_or_empty(m, "op");
        if let Some(v) = given(m, "v")
            && !py_eq(v, &Value::from(PROTOCOL_VERSION))
        {
            return Err(RpcError::err(format!(
                "unsupported protocol version: {}",
                py_repr(v)
            )));
        }
        let args = match get(m, "args") {
            Some(Value::Map(a)) => a.as_slice(),
            _ => NO_ARGS,
        };
        return Ok((op, args));
    }
    let (mut v, mut op, mut req_id, mut args, mut from_plugin) = (None, None, None, None, None);
    for (k, val) in m {
        let slot = match k.as_str() {
            Some("v") => &mut v,
            Some("op") => &mut op,
            Some("req_id") => &mut req_id,
            Some("args") => &mut args,
            Some("from_plugin") => &mut from_plugin,
            _ => return Err(invalid()),
        };
        *slot = Some(val);
    }
    let version = match v {
        None | Some(Value::Nil) => None,
        Some(Value::Integer(i)) if i.as_i64().is_none_or(|n| n >= 1) => Some(*i),
        Some(_) => return Err(invalid()),
    };
    let op = match op.and_then(Value::as_str) {
        Some(op) if OPS.contains(&op) => op,
        _ => return Err(invalid()),
    };
    if !req_id
        .and_then(Value::as_str)
        .is_some_and(|r| (1..=64).contains(&chars(r)))
    {
        return Err(invalid());
    }
    let args = match args {
        None => NO_ARGS,
        Some(Value::Map(a)) if a.iter().all(|(k, _)| k.is_str()) => a.as_slice(),
        Some(_) => return Err(invalid()),
    };
    match from_plugin {
        None | Some(Value::Nil) => {}
        Some(Value::String(s)) if s.as_str().is_some_and(|s| chars(s) <= 128) => {}
        Some(_) => return Err(invalid()),
    }
    match version {
        Some(n) if n.as_i64() != Some(PROTOCOL_VERSION) => {
            return Err(RpcError::err(format!("unsupported protocol version: {n}")));
        }
        None if mode == ValidateMode::Strict => {
            return Err(RpcError::err("missing protocol version"));
        }
        _ => {}
    }
    Ok((op.to_owned(), args))
}

/// A field type of a strictly validated argument map (pydantic strict semantics: no coercion).
#[derive(Clone, Copy)]
enum Kind {
    Str { min: usize, max: usize },
    Int { min: i64, max: i64 },
    Bool,
    OptStr { max: usize },
    OptInt,
    OptFloat,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn spec(name: &'static str, kind: Kind, required: bool) -> Spec {
    Spec {
        name,
        kind,
        required,
    }
}

const GET_RECENT_ARGS: &[Spec] = &[
    spec("store", Kind::Str { min: 1, max: 32 }, true),
    spec("topic", Kind::Str { min: 1, max: 128 }, true),
    spec(
        "limit",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
        true,
    ),
    spec("light", Kind::Bool, false),
];

const QUERY_ARGS: &[Spec] = &[
    spec("store", Kind::Str { min: 1, max: 32 }, true),
    spec("topic", Kind::Str { min: 1, max: 128 }, true),
    spec(
        "limit",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
        true,
    ),
    spec("light", Kind::Bool, false),
    spec("plugin_id", Kind::OptStr { max: 128 }, false),
    spec("source", Kind::OptStr { max: 128 }, false),
    spec("kind", Kind::OptStr { max: 64 }, false),
    spec("type", Kind::OptStr { max: 64 }, false),
    spec("priority_min", Kind::OptInt, false),
    spec("since_ts", Kind::OptFloat, false),
    spec("until_ts", Kind::OptFloat, false),
];

fn kind_ok(kind: Kind, v: &Value) -> bool {
    let str_len = |v: &Value| v.as_str().map(chars);
    match kind {
        Kind::Str { min, max } => str_len(v).is_some_and(|n| (min..=max).contains(&n)),
        Kind::OptStr { max } => v.is_nil() || str_len(v).is_some_and(|n| n <= max),
        Kind::Int { min, max } => v.as_i64().is_some_and(|n| (min..=max).contains(&n)),
        Kind::OptInt => v.is_nil() || matches!(v, Value::Integer(_)),
        Kind::OptFloat => {
            v.is_nil() || matches!(v, Value::Integer(_) | Value::F32(_) | Value::F64(_))
        }
        Kind::Bool => v.is_bool(),
    }
}

/// The first argument that does not fit `specs` (unknown keys are refused too).
fn check_args(args: &[(Value, Value)], specs: &[Spec]) -> Result<(), String> {
    for s in specs {
        match get(args, s.name) {
            None if s.required => return Err(s.name.to_owned()),
            None => {}
            Some(v) if !kind_ok(s.kind, v) => return Err(s.name.to_owned()),
            Some(_) => {}
        }
    }
    match args
        .iter()
        .find(|(k, _)| !specs.iter().any(|s| k.as_str() == Some(s.name)))
    {
        Some((k, _)) => Err(py_str(k)),
        None => Ok(()),
    }
}

/// Strict: refuse bad arguments; warn: log them and go on; off: nothing.
fn validate(
    op: &str,
    args: &[(Value, Value)],
    specs: &[Spec],
    mode: ValidateMode,
) -> Result<(), RpcError> {
    if mode == ValidateMode::Off {
        return Ok(());
    }
    match check_args(args, specs) {
        Ok(()) => Ok(()),
        Err(field) if mode == ValidateMode::Strict => Err(RpcError::bad_args(op, &field)),
        Err(field) => {
            if WARN_LOG.ready() {
                tracing::warn!(%op, %field, "message plane rpc: invalid args (validate_mode = warn)");
            }
            Ok(())
        }
    }
}

/// The store named by `store` (else `bus`; neither: messages).
fn store_of(args: &[(Value, Value)]) -> Result<StoreName, RpcError> {
    match given(args, "store").or_else(|| given(args, "bus")) {
        None => Ok(StoreName::Messages),
        Some(v) => v
            .as_str()
            .and_then(StoreName::parse)
            .ok_or_else(|| RpcError::err("invalid store")),
    }
}

/// `limit` as the reference reads it (default 200, unreadable 200, capped; ≤ 0 reads nothing).
fn limit_of(args: &[(Value, Value)], max: usize) -> usize {
    let n = match get(args, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => py_int(v).unwrap_or(DEFAULT_LIMIT),
    };
    usize::try_from(n).unwrap_or(0).min(max)
}

fn light_of(args: &[(Value, Value)]) -> bool {
    get(args, "light").is_some_and(py_truthy)
}

/// A string filter of `bus.query` (non-strings and empty strings filter nothing).
fn str_filter(args: &[(Value, Value)], key: &str) -> Option<String> {
    get(args, key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Checks a request and turns it into what must happen; also gives the reply's `req_id`.
pub(crate) fn prepare(req: &Value, cfg: &RpcConfig) -> (String, Prepared) {
    let req_id = req_id_of(req);
    let prepared = match envelope(req, cfg.mode) {
        Ok((op, args)) => dispatch(&op, args, cfg).unwrap_or_else(|e| Prepared::Answer(Err(e))),
        Err(e) => {
            if cfg.mode == ValidateMode::Warn && WARN_LOG.ready() {
                tracing::warn!(%req_id, error = %e.message, "message plane rpc: invalid envelope");
            }
            Prepared::Answer(Err(e))
        }
    };
    (req_id, prepared)
}

fn dispatch(op: &str, args: &[(Value, Value)], cfg: &RpcConfig) -> Result<Prepared, RpcError> {
    let to = |store, request, shape| {
        Ok(Prepared::Store {
            store,
            request,
            shape,
        })
    };
    match op {
        "ping" | "health" => Ok(Prepared::Answer(Ok(Doc::Map(vec![
            ("ok", Doc::Bool(true)),
            ("ts", Doc::Float(unix_now())),
        ])))),
        "bus.list_topics" => {
            let store = store_of(args)?;
            to(store, StoreRequest::ListTopics, Shape::ListTopics(store))
        }
        "bus.publish" => {
            let store = store_of(args)?;
            let topic = str_or_empty(args, "topic");
            if topic.is_empty() {
                return Err(RpcError::err(Rejected::TopicRequired.to_string()));
            }
            if chars(&topic) > TOPIC_NAME_MAX {
                return Err(RpcError::err(Rejected::TopicTooLong.to_string()));
            }
            let payload = match get(args, "payload") {
                Some(v @ Value::Map(_)) => Payload::from_value(v),
                other => Payload::from_value(&Value::Map(vec![(
                    Value::from("value"),
                    other.cloned().unwrap_or(Value::Nil),
                )])),
            }
            .map_err(|_| RpcError::err("payload not JSON-serializable"))?;
            to(
                store,
                StoreRequest::Publish { topic, payload },
                Shape::Publish,
            )
        }
        "bus.get_recent" => {
            validate(op, args, GET_RECENT_ARGS, cfg.mode)?;
            let store = store_of(args)?;
            let topic = str_or_empty(args, "topic");
            let (light, limit) = (light_of(args), limit_of(args, cfg.max_limit));
            if topic.is_empty() {
                return Err(RpcError::err(Rejected::TopicRequired.to_string()));
            }
            let request = StoreRequest::GetRecent {
                topic: topic.clone(),
                limit,
            };
            to(
                store,
                request,
                Shape::GetRecent {
                    store,
                    topic,
                    light,
                },
            )
        }
        "bus.get_since" => {
            let store = store_of(args)?;
            let topic = given(args, "topic").map(py_str);
            let after_seq = get(args, "after_seq").map_or(0, |v| py_int(v).unwrap_or(0));
            let request = StoreRequest::GetSince {
                topic: topic.clone(),
                after_seq: u64::try_from(after_seq).unwrap_or(0),
                limit: limit_of(args, cfg.max_limit),
            };
            let shape = Shape::GetSince {
                store,
                topic,
                after_seq,
                light: light_of(args),
            };
            to(store, request, shape)
        }
        "bus.query" => {
            validate(op, args, QUERY_ARGS, cfg.mode)?;
            let store = store_of(args)?;
            let topic = given(args, "topic").map(py_str);
            let number = |key: &'static str| -> Result<Option<f64>, RpcError> {
                given(args, key)
                    .map(|v| py_float(v).ok_or_else(|| RpcError::bad_args(op, key)))
                    .transpose()
            };
            let priority_min = given(args, "priority_min")
                .map(|v| py_int(v).ok_or_else(|| RpcError::bad_args(op, "priority_min")))
                .transpose()?;
            let filter = QueryFilter {
                topic: topic.clone(),
                plugin_id: str_filter(args, "plugin_id"),
                source: str_filter(args, "source"),
                kind: str_filter(args, "kind"),
                record_type: str_filter(args, "type"),
                priority_min,
                since_ts: number("since_ts")?,
                until_ts: number("until_ts")?,
                limit: limit_of(args, cfg.max_limit),
            };
            let shape = Shape::Query {
                store,
                topic,
                light: light_of(args),
            };
            to(store, StoreRequest::Query(filter), shape)
        }
        "bus.replay" => {
            let plan = given(args, "plan").or_else(|| given(args, "trace"));
            match cfg.mode {
                ValidateMode::Strict => {
                    let store_ok = [get(args, "store"), get(args, "bus")]
                        .into_iter()
                        .flatten()
                        .find(|v| py_truthy(v))
                        .and_then(Value::as_str)
                        .is_some();
                    if !store_ok {
                        return Err(RpcError::bad_args(op, "store"));
                    }
                    if !matches!(plan, Some(Value::Map(_))) {
                        return Err(RpcError::bad_args(op, "plan"));
                    }
                    if given(args, "limit").is_some_and(|v| py_int(v).is_none_or(|n| n <= 0)) {
                        return Err(RpcError::bad_args(op, "limit"));
                    }
                }
                ValidateMode::Warn if !matches!(plan, Some(Value::Map(_))) && WARN_LOG.ready() => {
                    tracing::warn!(%op, "message plane rpc: missing/invalid plan (validate_mode = warn)");
                }
                _ => {}
            }
            let store = store_of(args)?;
            let Some(plan @ Value::Map(_)) = plan else {
                return Err(RpcError::err("plan is required"));
            };
            let plan =
                Plan::parse(plan, cfg.max_limit).map_err(|e| RpcError::err(e.to_string()))?;
            let request = StoreRequest::Replay {
                plan,
                max_items: cfg.max_limit,
            };
            to(
                store,
                request,
                Shape::Replay {
                    store,
                    light: light_of(args),
                },
            )
        }
        "bus.delete" => {
            let store = store_of(args)?;
            let id = match given(args, "id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => return Err(RpcError::bad_args(op, "id")),
            };
            to(store, StoreRequest::Delete { id }, Shape::Delete)
        }
        _ => Err(RpcError::err(format!("unknown op: {op}"))),
    }
}

fn items(events: Vec<super::store::Event>, light: bool) -> Doc {
    Doc::Events { events, light }
}

/// The result of a store's answer.
pub(crate) fn finish(shape: Shape, reply: Result<StoreReply, Rejected>) -> Result<Doc, RpcError> {
    let reply = reply.map_err(|why| RpcError::err(why.to_string()))?;
    let store_doc = |s: StoreName| Doc::str(s.as_str());
    Ok(match (shape, reply) {
        (Shape::ListTopics(store), StoreReply::Topics(topics)) => {
            let count = topics.len() as u64;
            Doc::Map(vec![
                ("store", store_doc(store)),
                (
                    "stores",
                    Doc::List(
                        StoreName::sorted_names()
                            .into_iter()
                            .map(Doc::str)
                            .collect(),
                    ),
                ),
                (
                    "topics",
                    Doc::List(
                        topics
                            .into_iter()
                            .map(|t| {
                                Doc::Map(vec![
                                    ("topic", Doc::Str(t.topic)),
                                    ("created_at", Doc::Float(t.created_at)),
                                    ("last_ts", Doc::Float(t.last_ts)),
                                    ("count_total", Doc::UInt(t.count_total)),
                                ])
                            })
                            .collect(),
                    ),
                ),
                ("topic_count", Doc::UInt(count)),
            ])
        }
        (Shape::Publish, StoreReply::Published(event)) => Doc::Map(vec![
            ("accepted", Doc::Bool(true)),
            (
                "event",
                Doc::Event {
                    event,
                    light: false,
                },
            ),
        ]),
        (
            Shape::GetRecent {
                store,
                topic,
                light,
            },
            StoreReply::Events(events),
        ) => Doc::Map(vec![
            ("store", store_doc(store)),
            ("topic", Doc::Str(topic)),
            ("items", items(events, light)),
            ("light", Doc::Bool(light)),
        ]),
        (
            Shape::GetSince {
                store,
                topic,
                after_seq,
                light,
            },
            StoreReply::Events(events),
        ) => Doc::Map(vec![
            ("store", store_doc(store)),
            ("topic", Doc::opt_str(topic)),
            ("after_seq", Doc::Int(after_seq)),
            ("items", items(events, light)),
            ("light", Doc::Bool(light)),
        ]),
        (
            Shape::Query {
                store,
                topic,
                light,
            },
            StoreReply::Events(events),
        ) => Doc::Map(vec![
            ("store", store_doc(store)),
            ("topic", Doc::opt_str(topic)),
            ("items", items(events, light)),
            ("light", Doc::Bool(light)),
        ]),
        (Shape::Replay { store, light }, StoreReply::Events(events)) => Doc::Map(vec![
            ("store", store_doc(store)),
            ("items", items(events, light)),
            ("light", Doc::Bool(light)),
        ]),
        (Shape::Delete, StoreReply::Deleted(deleted)) => {
            Doc::Map(vec![("deleted", Doc::Bool(deleted))])
        }
        _ => return Err(RpcError::err("internal error")),
    })
}

/// The reply envelope in the request's encoding.
pub(crate) fn encode(req_id: &str, outcome: Result<Doc, RpcError>, enc: Encoding) -> Vec<u8> {
    let (ok, result, error) = match outcome {
        Ok(doc) => (true, doc, Doc::Nil),
        Err(e) => (false, Doc::Nil, e.doc()),
    };
    let reply = Doc::Map(vec![
        ("v", Doc::Int(PROTOCOL_VERSION)),
        ("req_id", Doc::str(req_id)),
        ("ok", Doc::Bool(ok)),
        ("result", result),
        ("error", error),
    ]);
    match enc {
        Encoding::Msgpack => {
            let mut out = Vec::with_capacity(reply.size_hint());
            reply.write_msgpack(&mut out);
            out
        }
        // Serializing a Doc cannot fail (string keys, no non-finite guard needed: NaN → null).
        Encoding::Json => serde_json::to_vec(&reply).unwrap_or_default(),
    }
}

/// What the RPC task needs.
pub(crate) struct RpcContext {
    pub cfg: RpcConfig,
    pub stores: watch::Receiver<Arc<StoreRefs>>,
    pub counters: Arc<PlaneCounters>,
    /// Deadline of a store call.
    pub call_timeout: Duration,
}

/// Answers one request message (`[identity, …, request]`); `None` if it cannot be answered.
pub(crate) async fn answer(ctx: &RpcContext, mut frames: Vec<Bytes>) -> Option<ZmqMessage> {
    let c = &ctx.counters;
    c.rpc_requests.fetch_add(1, Ordering::Relaxed);
    let Some(request) = frames.pop().filter(|_| !frames.is_empty()) else {
        c.rpc_bad_frames.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let (req, enc) = decode(&request);
    if req.is_none() {
        c.rpc_bad_frames.fetch_add(1, Ordering::Relaxed);
    }
    let req = req.unwrap_or(Value::Map(Vec::new()));
    let (req_id, prepared) = prepare(&req, &ctx.cfg);
    let outcome = match prepared {
        Prepared::Answer(outcome) => outcome,
        Prepared::Store {
            store,
            request,
            shape,
        } => {
            let actor = ctx.stores.borrow().get(store).clone();
            match actor
                .call(
                    |port| TopicStoreMsg::Rpc(request, port),
                    Some(ctx.call_timeout),
                )
                .await
            {
                Ok(CallResult::Success(reply)) => finish(shape, reply),
                Ok(CallResult::Timeout) => Err(RpcError {
                    code: "TIMEOUT",
                    message: format!("store {store} did not answer in time"),
                    details: None,
                }),
                Ok(CallResult::SenderError) | Err(_) => Err(RpcError {
                    code: "UNAVAILABLE",
                    message: format!("store {store} is restarting"),
                    details: None,
                }),
            }
        }
    };
    if outcome.is_err() {
        c.rpc_errors.fetch_add(1, Ordering::Relaxed);
    }
    frames.push(encode(&req_id, outcome, enc).into());
    ZmqMessage::try_from(frames).ok()
}

/// The RPC task: owns the ROUTER socket until shutdown (or until the plane is gone).
pub(crate) async fn serve(
    mut socket: RouterSocket,
    ctx: Arc<RpcContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks: JoinSet<Option<ZmqMessage>> = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok(Some(reply)) = done else { continue };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(reply)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "message plane rpc: reply not sent"),
                    Err(_) => tracing::debug!("message plane rpc: client not reading; reply dropped"),
                }
            }
            msg = socket.recv(), if tasks.len() < MAX_IN_FLIGHT => match msg {
                Ok(msg) => {
                    let ctx = ctx.clone();
                    tasks.spawn(async move { answer(&ctx, msg.into_vec()).await });
                }
                Err(e) => tracing::debug!(error = %e, "message plane rpc: receive failed"),
            },
        }
    }
    tasks.shutdown().await;
    let _ = socket.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as J, json};

    fn cfg(mode: ValidateMode) -> RpcConfig {
        RpcConfig {
            mode,
            max_limit: 1000,
        }
    }

    /// The error a request gets before any store is asked (`None` if it would reach a store).
    fn error(mode: ValidateMode, req: J) -> Option<(String, RpcError)> {
        let (req_id, prepared) = prepare(&json_to_value(req), &cfg(mode));
        match prepared {
            Prepared::Answer(Err(e)) => Some((req_id, e)),
            _ => None,
        }
    }

    fn message(mode: ValidateMode, req: J) -> String {
        error(mode, req).map(|(_, e)| e.message).unwrap_or_default()
    }

    fn env(op: &str, args: J) -> J {
        json!({"v": 1, "op": op, "req_id": "r1", "args": args})
    }

    /// Strict envelope validation: the reference's messages for every way an envelope is wrong.
    #[test]
    fn strict_envelope_messages() {
        use ValidateMode::Strict;
        let m = |req| message(Strict, req);
        assert_eq!(m(json!([1])), "invalid rpc envelope");
        assert_eq!(
            m(json!({"op": "ping", "req_id": "r"})),
            "missing protocol version"
        );
        assert_eq!(
            m(json!({"v": null, "op": "ping", "req_id": "r"})),
            "missing protocol version"
        );
        assert_eq!(
            m(json!({"v": 2, "op": "ping", "req_id": "r"})),
            "unsupported protocol version: 2"
        );
        assert_eq!(
            m(json!({"v": "1", "op": "ping", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": true, "op": "ping", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1.0, "op": "ping", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 0, "op": "ping", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "bogus", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert_eq!(m(json!({"v": 1, "op": "ping"})), "invalid rpc envelope");
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": ""})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "x".repeat(65)})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": 5})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "r", "extra": 1})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "r", "args": []})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "r", "args": null})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "r", "from_plugin": 3})),
            "invalid rpc envelope"
        );
        assert_eq!(
            m(json!({"v": 1, "op": "ping", "req_id": "r", "from_plugin": "p".repeat(129)})),
            "invalid rpc envelope"
        );
        // An envelope error wins over a version error, as pydantic validates first.
        assert_eq!(
            m(json!({"v": 2, "op": "bogus", "req_id": "r"})),
            "invalid rpc envelope"
        );
        assert!(
            error(
                Strict,
                json!({"v": 1, "op": "ping", "req_id": "r", "from_plugin": null, "args": {}})
            )
            .is_none()
        );
        // The reply's req_id is `str(req_id or "")`.
        let (req_id, e) = error(Strict, json!({"v": 1, "op": "ping", "req_id": 5})).unwrap();
        assert_eq!((req_id.as_str(), e.code), ("5", "ERR"));
    }

    /// warn tolerates a missing version; off reads leniently but refuses versions other than 1.
    #[test]
    fn warn_and_off_modes() {
        assert!(
            error(
                ValidateMode::Warn,
                json!({"op": "bus.list_topics", "req_id": "r"})
            )
            .is_none()
        );
        assert_eq!(
            message(ValidateMode::Warn, json!({"op": "nope", "req_id": "r"})),
            "invalid rpc envelope"
        );
        let off = |req| message(ValidateMode::Off, req);
        assert!(
            error(
                ValidateMode::Off,
                json!({"op": "bus.list_topics", "extra": 1})
            )
            .is_none()
        );
        assert!(
            error(
                ValidateMode::Off,
                json!({"v": 1.0, "op": "bus.list_topics"})
            )
            .is_none()
        );
        assert_eq!(
            off(json!({"v": "1", "op": "ping"})),
            "unsupported protocol version: '1'"
        );
        assert_eq!(
            off(json!({"v": 2.5, "op": "ping"})),
            "unsupported protocol version: 2.5"
        );
        assert_eq!(off(json!({"op": "nope"})), "unknown op: nope");
        assert_eq!(off(json!({})), "unknown op: ");
        assert_eq!(off(json!(5)), "invalid rpc envelope");
    }

    /// Strict argument checks of get_recent / query / replay answer BAD_ARGS naming the field.
    #[test]
    fn strict_args_are_bad_args_with_field() {
        use ValidateMode::Strict;
        let bad = |op: &str, args: J| {
            let (_, e) = error(Strict, env(op, args)).expect("refused");
            assert_eq!((e.code, e.message.as_str()), ("BAD_ARGS", "invalid args"));
            let details = e.details.unwrap();
            assert_eq!(details[0], ("op", op.to_owned()));
            details[1].1.clone()
        };
        let ok = |op: &str, args: J| error(Strict, env(op, args)).is_none();
        assert!(ok(
            "bus.get_recent",
            json!({"store": "messages", "topic": "all", "limit": 10})
        ));
        assert!(ok(
            "bus.get_recent",
            json!({"store": "messages", "topic": "all", "limit": 10, "light": true})
        ));
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all"})
            ),
            "limit"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all", "limit": 0})
            ),
            "limit"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all", "limit": 10001})
            ),
            "limit"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all", "limit": "5"})
            ),
            "limit"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all", "limit": 5, "light": 1})
            ),
            "light"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"bus": "messages", "topic": "all", "limit": 5})
            ),
            "store"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "messages", "topic": "all", "limit": 5, "x": 1})
            ),
            "x"
        );
        assert_eq!(
            bad(
                "bus.get_recent",
                json!({"store": "m".repeat(33), "topic": "all", "limit": 5})
            ),
            "store"
        );
        let q = json!({"store": "messages", "topic": "all", "limit": 5, "plugin_id": null, "priority_min": 2, "since_ts": 3, "until_ts": 4.5});
        assert!(ok("bus.query", q));
        assert_eq!(
            bad(
                "bus.query",
                json!({"store": "messages", "topic": "all", "limit": 5, "kind": "k".repeat(65)})
            ),
            "kind"
        );
        assert_eq!(
            bad(
                "bus.query",
                json!({"store": "messages", "topic": "all", "limit": 5, "priority_min": 1.5})
            ),
            "priority_min"
        );
        assert_eq!(
            bad(
                "bus.query",
                json!({"store": "messages", "topic": "all", "limit": 5, "since_ts": "1"})
            ),
            "since_ts"
        );
        assert_eq!(bad("bus.replay", json!({"plan": {"kind": "get"}})), "store");
        assert_eq!(bad("bus.replay", json!({"store": "messages"})), "plan");
        assert_eq!(
            bad("bus.replay", json!({"bus": "messages", "trace": [1]})),
            "plan"
        );
        assert_eq!(
            bad(
                "bus.replay",
                json!({"store": "messages", "plan": {}, "limit": 0})
            ),
            "limit"
        );
        assert_eq!(bad("bus.delete", json!({"store": "events"})), "id");
        // Warn and off let the same arguments through.
        assert!(
            error(
                ValidateMode::Warn,
                env(
                    "bus.get_recent",
                    json!({"store": "messages", "topic": "all"})
                )
            )
            .is_none()
        );
        assert!(
            error(
                ValidateMode::Off,
                env(
                    "bus.get_recent",
                    json!({"store": "messages", "topic": "all", "x": 1})
                )
            )
            .is_none()
        );
    }

    /// The op-level messages of the reference.
    #[test]
    fn op_errors() {
        use ValidateMode::{Off, Strict};
        assert_eq!(
            message(Strict, env("bus.list_topics", json!({"store": "nope"}))),
            "invalid store"
        );
        assert_eq!(
            message(Strict, env("bus.list_topics", json!({"store": 5}))),
            "invalid store"
        );
        assert!(error(Strict, env("bus.list_topics", json!({}))).is_none());
        assert_eq!(
            message(Strict, env("bus.publish", json!({"store": "messages"}))),
            "topic is required"
        );
        assert_eq!(
            message(
                Strict,
                env(
                    "bus.publish",
                    json!({"store": "messages", "topic": "t".repeat(129)})
                )
            ),
            "topic too long"
        );
        assert_eq!(
            message(Off, env("bus.get_recent", json!({"store": "messages"}))),
            "topic is required"
        );
        assert_eq!(
            message(
                Strict,
                env(
                    "bus.replay",
                    json!({"store": "messages", "plan": {"kind": "x"}})
                )
            ),
            "unsupported plan"
        );
        assert_eq!(
            message(Off, env("bus.replay", json!({"store": "messages"}))),
            "plan is required"
        );
        assert_eq!(
            message(Off, env("bus.replay", json!({"store": "nope", "plan": {}}))),
            "invalid store"
        );
    }

    /// ping is answered at once; replies are msgpack for msgpack and JSON for JSON.
    #[test]
    fn replies_use_the_request_encoding() {
        let (req, enc) = decode(br#"{"v":1,"op":"ping","req_id":"a"}"#);
        assert_eq!(enc, Encoding::Json);
        let (req_id, Prepared::Answer(outcome)) =
            prepare(&req.unwrap(), &cfg(ValidateMode::Strict))
        else {
            panic!("answered at once")
        };
        let reply: J = serde_json::from_slice(&encode(&req_id, outcome, enc)).unwrap();
        assert_eq!(
            (
                reply["v"].clone(),
                reply["req_id"].clone(),
                reply["ok"].clone()
            ),
            (json!(1), json!("a"), json!(true))
        );
        assert_eq!(reply["error"], J::Null);
        assert!(reply["result"]["ts"].is_f64());

        let mut packed = Vec::new();
        rmpv::encode::write_value(
            &mut packed,
            &json_to_value(json!({"v": 2, "op": "ping", "req_id": "b"})),
        )
        .unwrap();
        let (req, enc) = decode(&packed);
        assert_eq!(enc, Encoding::Msgpack);
        let (req_id, Prepared::Answer(outcome)) =
            prepare(&req.unwrap(), &cfg(ValidateMode::Strict))
        else {
            panic!("answered at once")
        };
        let reply = super::super::codec::to_value(&encode(&req_id, outcome, enc));
        let reply = serde_json::to_value(super::super::codec::JsonOf(&{
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &reply).unwrap();
            b
        }))
        .unwrap();
        assert_eq!(
            reply,
            json!({"v": 1, "req_id": "b", "ok": false, "result": null,
                   "error": {"code": "ERR", "message": "unsupported protocol version: 2", "details": null}})
        );

        assert_eq!(decode(b"\xc1garbage").0, None);
    }
}
