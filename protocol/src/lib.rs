//! neko's plugin wire protocol, shared by the supervisor and every SDK.
//!
//! Layout:
//! - [`ids`]: newtypes for plugin ids, and their validation.
//! - [`message`]: the messages a plugin and the supervisor exchange (HELLO, TRIGGER, RESULT, ...).
//! - [`codec`]: turns messages into signed ZeroMQ frames and back (msgpack named maps, HMAC-SHA256,
//!   sequence numbers, size limit checked before decoding).
//! - [`run`]: the run record shown by the runs API.
//! - [`status`]: the status enums that show in JSON (plugin state, run status, error codes).
//!
//! This crate has no async runtime, no sockets and no actors: it is plain data and pure functions, so
//! the Rust SDK and the supervisor compile against the same definitions. `PROTOCOL.md` beside this
//! crate is the specification other languages implement; `vectors/` holds the byte-exact test vectors.

pub mod codec;
mod envelope_de;
pub mod ids;
pub mod message;
pub mod run;
pub mod status;

pub use codec::{CodecError, Direction, FrameKey, Session};
pub use ids::{InvalidId, PluginId};
pub use message::*;
pub use run::{ExportItem, RunRecord};
pub use status::{ErrorCode, PluginState, RunStatus};

/// The protocol version spoken by this crate. A HELLO with another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Default upper bound for one frame's payload. Checked before any decoding.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Environment variables the supervisor sets for every plugin process.
pub mod env {
    /// The plugin's id.
    pub const PLUGIN_ID: &str = "NEKO_PLUGIN_ID";
    /// The ZeroMQ endpoint the plugin connects its DEALER socket to.
    pub const ENDPOINT: &str = "NEKO_PLUGIN_ENDPOINT";
    /// The per-launch secret, hex-encoded (32 bytes). Keys the frame HMAC.
    pub const SECRET: &str = "NEKO_PLUGIN_SECRET";
    /// The protocol version the supervisor speaks.
    pub const PROTOCOL: &str = "NEKO_PROTOCOL_VERSION";
    /// How often the plugin must send HEARTBEAT, in milliseconds.
    pub const HEARTBEAT_MS: &str = "NEKO_HEARTBEAT_MS";
    /// Largest frame payload either side accepts, in bytes.
    pub const MAX_FRAME_BYTES: &str = "NEKO_MAX_FRAME_BYTES";
    /// The supervisor's pid: the plugin exits when its parent is no longer this process.
    pub const SUPERVISOR_PID: &str = "NEKO_SUPERVISOR_PID";
    /// The plugin's folder (the one holding plugin.toml).
    pub const PLUGIN_DIR: &str = "NEKO_PLUGIN_DIR";
    /// The path of the plugin's plugin.toml.
    pub const PLUGIN_CONFIG: &str = "NEKO_PLUGIN_CONFIG";
    /// The message plane's RPC (ROUTER) endpoint (the reference's name).
    pub const MESSAGE_PLANE_RPC: &str = "NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT";
    /// The message plane's PUB endpoint (the reference's name).
    pub const MESSAGE_PLANE_PUB: &str = "NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT";
    /// The message plane's INGEST (PULL) endpoint (the reference's name).
    pub const MESSAGE_PLANE_INGEST: &str = "NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT";
    /// `1` when this process was started by a reload (the plugin then runs its reload hook).
    pub const RELOADED: &str = "NEKO_PLUGIN_RELOADED";
    /// A private folder that lives as long as this supervisor run, for plugin state kept "in
    /// memory" (surviving the plugin's restarts, not the supervisor's).
    pub const STATE_DIR: &str = "NEKO_PLUGIN_STATE_DIR";
    /// A JSON file holding the plugin's effective config at launch (`config.get`'s answer), for
    /// reads made before the plugin is connected.
    pub const EFFECTIVE_CONFIG: &str = "NEKO_PLUGIN_EFFECTIVE_CONFIG";
}
