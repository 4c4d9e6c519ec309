//! The messages of protocol v1. One ZeroMQ message carries one [`Envelope`]; see `PROTOCOL.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::ErrorCode;

/// What travels in one frame: version, per-direction sequence number, and the message itself,
/// as a msgpack map `{"v": 1, "seq": n, "kind": "<kind>", "body": {...}}`.
///
/// Decoding is written by hand (`envelope_de.rs`): serde's derive for a flattened, adjacently
/// tagged enum buffers the whole frame in an intermediate tree first, which was a visible share
/// of every plugin call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub v: u16,
    /// Strictly increasing per link and direction, starting at 1; a frame whose `seq` is not greater
    /// than the last accepted one is a replay and is dropped.
    pub seq: u64,
    #[serde(flatten)]
    pub msg: Message,
}

/// Every message kind, tagged by `kind` with its fields under `body`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Message {
    /// plugin → supervisor, first frame: who I am and what I serve.
    Hello(Hello),
    /// supervisor → plugin: the HELLO was accepted.
    Welcome(Welcome),
    /// supervisor → plugin: run an entry.
    Trigger(Trigger),
    /// plugin → supervisor: the outcome of a TRIGGER.
    Result(CallResult),
    /// supervisor → plugin: stop working on a TRIGGER (its caller gave up or canceled).
    Cancel(Cancel),
    /// plugin → supervisor: the plugin's own status dict (`ctx.update_status`).
    Status(StatusUpdate),
    /// plugin → supervisor, every `NEKO_HEARTBEAT_MS`: I am alive and my I/O loop turns.
    Heartbeat(Heartbeat),
    /// supervisor → plugin: run your shutdown hook and exit within `grace_ms`.
    Stop(Stop),
    /// plugin → supervisor: ask the supervisor for something (config, later runs, bus, calls).
    Request(Request),
    /// supervisor → plugin: the answer to a REQUEST with the same `request_id`.
    Response(Response),
    /// Either way, once both sides announced [`FEATURE_BATCH`]: several messages in one frame,
    /// handled in order as if each had come alone.
    Batch(Batch),
}

impl Message {
    /// Every `kind` name, as on the wire.
    pub const KINDS: [&'static str; 11] = [
        "hello",
        "welcome",
        "trigger",
        "result",
        "cancel",
        "status",
        "heartbeat",
        "stop",
        "request",
        "response",
        "batch",
    ];

    /// The `kind` name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Welcome(_) => "welcome",
            Self::Trigger(_) => "trigger",
            Self::Result(_) => "result",
            Self::Cancel(_) => "cancel",
            Self::Status(_) => "status",
            Self::Heartbeat(_) => "heartbeat",
            Self::Stop(_) => "stop",
            Self::Request(_) => "request",
            Self::Response(_) => "response",
            Self::Batch(_) => "batch",
        }
    }
}

/// The feature that lets a side send [`Message::Batch`]: a plugin lists it in HELLO's `features`
/// when it understands batches, and the supervisor answers with it in WELCOME's when it will send
/// them. The supervisor accepts batches from any plugin.
pub const FEATURE_BATCH: &str = "batch";

/// BATCH: messages sent together, in the order they are to be handled. A batch never holds a
/// batch (decoding refuses it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batch {
    pub messages: Vec<Message>,
}

/// HELLO: the plugin's handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the plugin speaks.
    pub protocol: u16,
    /// The plugin id the plugin believes it has (must equal `NEKO_PLUGIN_ID`).
    pub plugin_id: String,
    /// SDK name, e.g. `neko-sdk-rust` or `neko-sdk-python`.
    pub sdk: String,
    /// SDK version (semver), checked against plugin.toml's `[plugin.sdk]` ranges.
    pub sdk_version: String,
    /// The process id as the plugin sees it.
    pub pid: u32,
    /// Entries the plugin serves. Only these can be triggered.
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
    /// The plugin-level input schema (a Python plugin class's `input_schema`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Custom events other plugins may call (`plugin.call` with this `event_type`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventSpec>,
    /// Optional protocol features the plugin understands (e.g. [`FEATURE_BATCH`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// A custom event a plugin serves besides its entries (the reference's `@custom_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSpec {
    pub event_type: String,
    pub id: String,
}

/// The `event_type` of ordinary entries.
pub const PLUGIN_ENTRY: &str = "plugin_entry";

/// One entry a plugin declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_input_schema")]
    pub input_schema: Value,
    /// The entry's own deadline; the supervisor's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The reference's `kind` (action, service, hook, ...).
    #[serde(default = "default_kind")]
    pub kind: String,
}

/// `{"type": "object", "properties": {}}`, the reference's default schema.
pub fn default_input_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

fn default_kind() -> String {
    "action".to_string()
}

/// WELCOME: the supervisor accepted the HELLO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub plugin_id: String,
    /// How often the plugin must send HEARTBEAT.
    pub heartbeat_interval_ms: u64,
    /// The features of HELLO's list the supervisor will use on this link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// TRIGGER: run `entry_id` with `args`; answer with a RESULT carrying the same `call_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub call_id: String,
    pub entry_id: String,
    /// A JSON object, passed to the handler as its arguments.
    pub args: Value,
    /// The time the supervisor waits; the plugin may cancel the handler after it.
    pub timeout_ms: u64,
    /// The run this call belongs to, when it comes from `POST /runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// A custom event's type when the call is for one (then `entry_id` is the event's id);
    /// absent for entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The plugin whose call this is, for plugin-to-plugin calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// RESULT: the outcome of a TRIGGER. Exactly one of `data` (when `ok`) and `error` is meaningful.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    pub call_id: String,
    pub ok: bool,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl CallResult {
    /// A successful result.
    pub fn success(call_id: impl Into<String>, data: Value) -> Self {
        Self {
            call_id: call_id.into(),
            ok: true,
            data,
            error: None,
        }
    }

    /// A failed result.
    pub fn failure(call_id: impl Into<String>, error: WireError) -> Self {
        Self {
            call_id: call_id.into(),
            ok: false,
            data: Value::Null,
            error: Some(error),
        }
    }
}

/// An error as it travels: code, message, optional details (the reference's `RunError`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub details: Option<Value>,
}

impl WireError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A call that ran out of time at the supervisor's deadline (`TIMEOUT`, details
    /// `{"deadline": true}`), as opposed to a plugin that chose to fail with `TIMEOUT`.
    pub fn deadline(message: impl Into<String>) -> Self {
        Self {
            details: Some(serde_json::json!({"deadline": true})),
            ..Self::new(ErrorCode::Timeout, message)
        }
    }

    /// Whether this error is the supervisor's deadline ([`WireError::deadline`]).
    pub fn is_deadline(&self) -> bool {
        self.code == ErrorCode::Timeout
            && self
                .details
                .as_ref()
                .and_then(|d| d.get("deadline"))
                .and_then(Value::as_bool)
                == Some(true)
    }
}

/// CANCEL: the caller of `call_id` no longer waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub call_id: String,
}

/// STATUS: the plugin's own status dict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub status: Value,
}

/// HEARTBEAT: nothing but the fact that it arrived.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {}

/// STOP: shut down within `grace_ms`, after which the supervisor sends SIGTERM, then SIGKILL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub grace_ms: u64,
}

/// REQUEST: a plugin asks the supervisor to do `op` with `args` (see PROTOCOL.md for the ops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the plugin, unique among its open requests.
    pub request_id: String,
    /// What to do, e.g. `config.get`.
    pub op: String,
    /// The op's arguments (a JSON object).
    #[serde(default)]
    pub args: Value,
    /// The TRIGGER whose handler makes this request, if any: a plugin-to-plugin call made while
    /// serving a call waits *in* that call, which is what the deadlock detector follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// RESPONSE: the outcome of a REQUEST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub request_id: String,
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Response {
    /// A successful answer.
    pub fn success(request_id: impl Into<String>, result: Value) -> Self {
        Self {
            request_id: request_id.into(),
            ok: true,
            result,
            error: None,
        }
    }

    /// The answer for `outcome`.
    pub fn from_outcome(request_id: impl Into<String>, outcome: Result<Value, WireError>) -> Self {
        match outcome {
            Ok(result) => Self::success(request_id, result),
            Err(error) => Self::failure(request_id, error),
        }
    }

    /// A refusal.
    pub fn failure(request_id: impl Into<String>, error: WireError) -> Self {
        Self {
            request_id: request_id.into(),
            ok: false,
            result: Value::Null,
            error: Some(error),
        }
    }
}
