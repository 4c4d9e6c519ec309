//! Entries: [`Entry`] is what a plugin declares in HELLO; `Handler` is the code that serves a
//! TRIGGER for it, async (a future on the runtime) or synchronous (a closure on tokio's blocking
//! pool). Either way a panic becomes an `INTERNAL` error instead of taking the process down.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use neko_protocol::{EntrySpec, default_input_schema};
use serde_json::Value;

use crate::context::Context;
use crate::error::EntryError;
use crate::sync_call::async_scope;

/// A boxed, sendable future: what handlers and hooks are stored as.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler returns: the RESULT's `data`, or its `error`.
pub type HandlerResult = Result<Value, EntryError>;

/// An entry's declaration, sent in HELLO. Only declared entries can be triggered.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    spec: EntrySpec,
}

impl Entry {
    /// An entry with id `id`; its name defaults to the id, its description to empty, its input
    /// schema to an empty object schema, its kind to `action`, and it has no deadline of its own.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            spec: EntrySpec {
                name: id.clone(),
                id,
                description: String::new(),
                input_schema: default_input_schema(),
                timeout_ms: None,
                kind: "action".to_string(),
            },
        }
    }

    /// The display name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.spec.name = name.into();
        self
    }

    /// A one-line description shown in listings.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.spec.description = description.into();
        self
    }

    /// The JSON Schema of the arguments (informational: the SDK does not validate against it).
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.spec.input_schema = schema;
        self
    }

    /// The entry's own deadline, declared in HELLO; the supervisor uses it as the TRIGGER's
    /// `timeout_ms` when the caller sets none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The reference's entry kind (`action`, `service`, `hook`, ...); `action` by default.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.spec.kind = kind.into();
        self
    }

    /// The entry id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The declaration as it travels in HELLO.
    pub fn spec(&self) -> &EntrySpec {
        &self.spec
    }
}

/// The code behind an entry.
#[derive(Clone)]
pub(crate) enum Handler {
    Async(Arc<dyn Fn(Context, Value) -> BoxFuture<HandlerResult> + Send + Sync>),
    Blocking(Arc<dyn Fn(Context, Value) -> HandlerResult + Send + Sync>),
}

impl Handler {
    /// Wraps an async handler function (a closure returning a future).
    pub(crate) fn from_async<F, Fut>(handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        Handler::Async(Arc::new(move |ctx, args| {
            let fut: BoxFuture<HandlerResult> = Box::pin(handler(ctx, args));
            fut
        }))
    }

    /// Starts the handler and returns its outcome as a future. Dropping the future aborts an
    /// async handler; a synchronous one keeps running on its thread (Rust cannot interrupt it),
    /// which is why its context's cancel flag is set at the same time.
    pub(crate) fn call(
        &self,
        entry_id: &str,
        ctx: Context,
        args: Value,
    ) -> BoxFuture<HandlerResult> {
        let entry_id = entry_id.to_owned();
        match self {
            Self::Async(f) => {
                let f = Arc::clone(f);
                // The closure is called inside the future so that a panic while building the
                // future is caught too.
                let work = catch_panic(async_scope(async move { f(ctx, args).await }));
                Box::pin(async move {
                    work.await
                        .unwrap_or_else(|panic| Err(panicked(&entry_id, &panic)))
                })
            }
            Self::Blocking(f) => {
                let f = Arc::clone(f);
                let running = BlockingGuard::enter();
                let task = tokio::task::spawn_blocking(move || {
                    let _running = running;
                    f(ctx, args)
                });
                Box::pin(async move {
                    match task.await {
                        Ok(result) => result,
                        Err(e) if e.is_panic() => {
                            Err(panicked(&entry_id, panic_message(e.into_panic().as_ref())))
                        }
                        Err(e) => Err(EntryError::internal(format!(
                            "Entry '{entry_id}' did not finish: {e}"
                        ))),
                    }
                })
            }
        }
    }
}

/// Runs `fut`, turning a panic into `Err(panic message)`.
pub(crate) async fn catch_panic<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    // AssertUnwindSafe: after a panic the future is dropped and none of its state is observed
    // again, so a broken invariant inside it cannot leak out.
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()).to_owned())
}

fn panicked(entry_id: &str, message: &str) -> EntryError {
    EntryError::internal(format!("Entry '{entry_id}' panicked: {message}"))
}

/// The text of a panic payload (`panic!` with a literal gives `&str`, with arguments `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Synchronous handlers currently running on the blocking pool, process-wide.
static BLOCKING_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How many synchronous handlers are still running (including abandoned ones). Tokio waits for
/// them when the runtime shuts down, so [`crate::Plugin::run`] exits the process directly when
/// this is not zero.
pub(crate) fn blocking_handlers_running() -> usize {
    BLOCKING_RUNNING.load(Ordering::SeqCst)
}

/// Counts one synchronous handler for as long as it lives (drop runs on return and on panic).
struct BlockingGuard;

impl BlockingGuard {
    fn enter() -> Self {
        BLOCKING_RUNNING.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        BLOCKING_RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PluginInfo;
    use neko_protocol::ErrorCode;
    use serde_json::json;
    use std::path::PathBuf;

    fn ctx() -> Context {
        let (outbox, _rx) = tokio::sync::mpsc::unbounded_channel();
        Context::for_plugin(Arc::new(PluginInfo::new(
            "p".into(),
            PathBuf::from("."),
            None,
            outbox,
        )))
    }

    #[test]
    fn entry_defaults_follow_the_reference() {
        let e = Entry::new("echo");
        assert_eq!(e.id(), "echo");
        assert_eq!(e.spec().name, "echo");
        assert_eq!(e.spec().kind, "action");
        assert_eq!(e.spec().input_schema, default_input_schema());
        assert_eq!(e.spec().timeout_ms, None);
        let e = e
            .name("Echo")
            .description("d")
            .timeout(Duration::from_secs(5))
            .kind("service");
        assert_eq!(e.spec().name, "Echo");
        assert_eq!(e.spec().timeout_ms, Some(5000));
        assert_eq!(e.spec().kind, "service");
    }

    #[tokio::test]
    async fn async_panic_becomes_internal_error() {
        let h = Handler::Async(Arc::new(|_ctx, _args| -> BoxFuture<HandlerResult> {
            Box::pin(async { panic!("boom {}", 7) })
        }));
        let err = h.call("explode", ctx(), json!({})).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.message, "Entry 'explode' panicked: boom 7");
    }

    #[tokio::test]
    async fn blocking_panic_becomes_internal_error() {
        let h = Handler::Blocking(Arc::new(|_ctx, _args| panic!("sync boom")));
        let err = h.call("explode", ctx(), json!({})).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.message, "Entry 'explode' panicked: sync boom");
    }

    #[tokio::test]
    async fn blocking_handler_returns_its_value() {
        let h = Handler::Blocking(Arc::new(|_ctx, args: Value| Ok(json!({"got": args}))));
        let out = h.call("add", ctx(), json!({"a": 1})).await.unwrap();
        assert_eq!(out, json!({"got": {"a": 1}}));
    }
}
