//! Write neko plugins in Rust.
//!
//! A plugin is a binary that neko starts as a child process. The SDK reads the environment neko
//! set, connects to the supervisor over ZeroMQ, says HELLO with the entries the plugin declares,
//! and then runs one task per TRIGGER until neko sends STOP (or SIGTERM arrives, or neko dies).
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::time::Duration;
//!
//! use neko_sdk::serde_json::{Value, json};
//! use neko_sdk::{Context, Entry, EntryError, Plugin, args_without_ctx};
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     Plugin::new()
//!         .entry(
//!             Entry::new("echo")
//!                 .name("Echo")
//!                 .description("Returns its arguments")
//!                 .input_schema(json!({"type": "object"})),
//!             |_ctx: Context, args: Value| async move { Ok(args_without_ctx(&args)) },
//!         )
//!         .sync_entry(
//!             Entry::new("add").timeout(Duration::from_secs(5)),
//!             |_ctx: Context, args: Value| -> Result<Value, EntryError> {
//!                 let a = args["a"].as_f64().ok_or_else(|| EntryError::validation("a must be a number"))?;
//!                 let b = args["b"].as_f64().ok_or_else(|| EntryError::validation("b must be a number"))?;
//!                 Ok(json!({"sum": a + b}))
//!             },
//!         )
//!         .on_shutdown(|ctx: Context| async move {
//!             tracing::info!(plugin = ctx.plugin_id(), "bye");
//!         })
//!         .run()
//!         .await
//! }
//! ```
//!
//! Layout:
//! - [`plugin`]: the [`Plugin`] builder and [`Plugin::run`]: environment, handshake, exit code.
//! - [`entry`]: [`Entry`], an entry's declaration, and how a handler is called (panics caught).
//! - [`context`]: [`Context`], what a handler knows about its call and can do (status, cancel,
//!   requests to the supervisor: [`Context::request`], run progress, exports).
//! - [`bus`]: the message plane: [`bus::Bus::push_message`] (batched, bounded) and queries.
//! - [`plugins`]: [`Plugins`], calls to other plugins and the list of plugins, routed by neko.
//! - [`sync_call`]: blocking forms of async calls for synchronous handlers, and the policy
//!   ([`SyncCallPolicy`]) that guards them while a call is served.
//! - [`request`]: [`RunUpdate`] and the request limits; the I/O loop's table of open requests.
//! - [`error`]: [`EntryError`] (a handler's failure, sent to the caller) and [`RunError`] (why a
//!   plugin could not run).
//! - [`mod@env`]: [`PluginEnv`], the settings neko passes in the environment.
//! - `link`: the socket and the signed session over it.
//! - `serve`: the I/O loop after the handshake: dispatch, responses, heartbeats, STOP, parent
//!   watch.
//! - `call`: one TRIGGER's task: deadline, cancel, the RESULT it produces.
//!
//! The wire format is `protocol/PROTOCOL.md`; the types come from `neko-protocol`.

pub mod bus;
pub mod context;
pub mod entry;
pub mod env;
pub mod error;
pub mod plugin;
pub mod plugins;
pub mod request;
pub mod sync_call;

mod call;
mod link;
mod logging;
mod outbox;
mod serve;

pub use context::Context;
pub use entry::{Entry, HandlerResult};
pub use env::{EnvError, PluginEnv};
pub use error::{EntryError, RunError};
pub use link::LinkError;
pub use neko_protocol::ErrorCode;
pub use plugin::Plugin;
pub use plugins::Plugins;
pub use request::RunUpdate;
/// Re-exported so plugins name the same `serde_json` the SDK speaks.
pub use serde_json;
pub use sync_call::SyncCallPolicy;

use serde_json::Value;

/// The SDK name sent in HELLO.
pub const SDK_NAME: &str = "neko-sdk-rust";

/// The SDK version sent in HELLO; plugin.toml's `[plugin.sdk]` ranges are checked against it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The key under which neko adds call context (`run_id`, ...) to a TRIGGER's arguments.
pub const CTX_KEY: &str = "_ctx";

/// `args` without neko's `_ctx` key: what the caller actually passed.
///
/// Handlers receive arguments exactly as sent, `_ctx` included, so that nothing is hidden from
/// them; this is for the common case that wants only the caller's part. A non-object is returned
/// unchanged.
pub fn args_without_ctx(args: &Value) -> Value {
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != CTX_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_without_ctx_drops_only_ctx() {
        let args = json!({"_ctx": {"run_id": "r-1"}, "text": "hi", "n": 3});
        assert_eq!(args_without_ctx(&args), json!({"text": "hi", "n": 3}));
    }

    #[test]
    fn args_without_ctx_keeps_non_objects() {
        assert_eq!(args_without_ctx(&json!([1, 2])), json!([1, 2]));
        assert_eq!(args_without_ctx(&Value::Null), Value::Null);
    }
}
