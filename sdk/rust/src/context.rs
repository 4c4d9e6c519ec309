//! [`Context`]: what a handler or lifecycle hook knows about the plugin and its call, and what it
//! can do besides returning (report status, notice a cancel, ask the supervisor through requests:
//! run progress, exports, calls to other plugins through [`Context::plugins`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use neko_protocol::{ErrorCode, Message, Request, StatusUpdate};
use serde_json::{Map, Value, json};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::bus::Bus;
use crate::error::EntryError;
use crate::plugins::Plugins;
use crate::request::{DEFAULT_REQUEST_TIMEOUT, EXPORT_BINARY_MAX_BYTES, Outgoing, RunUpdate};
use crate::sync_call::PolicySetting;

/// A handle passed to every handler and hook. Cloning is cheap (two `Arc`s), so it can be moved
/// into spawned tasks and blocking closures.
#[derive(Debug, Clone)]
pub struct Context {
    plugin: Arc<PluginInfo>,
    /// `None` in lifecycle hooks, which serve no call.
    call: Option<Arc<CallInfo>>,
    /// How long the request helpers wait for an answer.
    request_timeout: Duration,
}

/// Per-plugin facts shared by every context.
#[derive(Debug)]
pub(crate) struct PluginInfo {
    pub(crate) plugin_id: String,
    pub(crate) plugin_dir: PathBuf,
    pub(crate) plugin_config: Option<PathBuf>,
    /// Into the I/O loop, which owns the socket; unbounded so that synchronous handlers (which
    /// cannot await) can report status too.
    pub(crate) outbox: mpsc::UnboundedSender<Outgoing>,
    /// The number of the next REQUEST, for unique request ids.
    pub(crate) next_request: AtomicU64,
    /// The message plane, connected on first use.
    pub(crate) bus: Bus,
    /// The runtime the plugin runs on, for blocking calls from threads the plugin spawned itself
    /// (`None` when made outside a runtime, as in some tests).
    pub(crate) runtime: Option<Handle>,
    /// plugin.toml's sync call policy, cached.
    pub(crate) sync_policy: PolicySetting,
}

impl PluginInfo {
    pub(crate) fn new(
        plugin_id: String,
        plugin_dir: PathBuf,
        plugin_config: Option<PathBuf>,
        outbox: mpsc::UnboundedSender<Outgoing>,
    ) -> Self {
        Self {
            bus: Bus::new(&plugin_id),
            plugin_id,
            plugin_dir,
            plugin_config,
            outbox,
            next_request: AtomicU64::new(1),
            runtime: Handle::try_current().ok(),
            sync_policy: PolicySetting::default(),
        }
    }
}

/// Per-call facts.
#[derive(Debug)]
pub(crate) struct CallInfo {
    pub(crate) call_id: String,
    pub(crate) entry_id: String,
    pub(crate) run_id: Option<String>,
    pub(crate) cancel: Arc<CancelSignal>,
}

impl Context {
    pub(crate) fn for_plugin(plugin: Arc<PluginInfo>) -> Self {
        Self {
            plugin,
            call: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    pub(crate) fn for_call(plugin: Arc<PluginInfo>, call: CallInfo) -> Self {
        Self {
            plugin,
            call: Some(Arc::new(call)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The plugin's id.
    pub fn plugin_id(&self) -> &str {
        &self.plugin.plugin_id
    }

    /// The message plane: push messages, query the stores.
    pub fn bus(&self) -> &Bus {
        &self.plugin.bus
    }

    /// Calls to other plugins' entries and events, and the list of plugins (PROTOCOL.md §9b).
    /// Calls made from a handler wait *in* its call, so neko can spot deadlocks and cap their
    /// deadline by the handler's own.
    pub fn plugins(&self) -> Plugins {
        Plugins::new(self.clone())
    }

    /// The plugin's folder (the one holding plugin.toml).
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin.plugin_dir
    }

    /// The path of the plugin's plugin.toml, when neko passed it.
    pub fn config_path(&self) -> Option<&Path> {
        self.plugin.plugin_config.as_deref()
    }

    /// The current call's id; `None` in lifecycle hooks.
    pub fn call_id(&self) -> Option<&str> {
        self.call.as_deref().map(|c| c.call_id.as_str())
    }

    /// The entry being served; `None` in lifecycle hooks.
    pub fn entry_id(&self) -> Option<&str> {
        self.call.as_deref().map(|c| c.entry_id.as_str())
    }

    /// The run the current call belongs to, when it comes from `POST /runs`.
    pub fn run_id(&self) -> Option<&str> {
        self.call.as_deref().and_then(|c| c.run_id.as_deref())
    }

    /// True once the call was canceled by the supervisor or ran past its deadline. Synchronous
    /// handlers cannot be interrupted, so long ones should check this and return early.
    pub fn is_cancelled(&self) -> bool {
        self.call.as_deref().is_some_and(|c| c.cancel.is_set())
    }

    /// Completes when [`Self::is_cancelled`] becomes true; never completes in lifecycle hooks.
    /// Async handlers are dropped on cancel anyway; this is for work they spawned themselves.
    pub async fn cancelled(&self) {
        match self.call.as_deref() {
            Some(call) => call.cancel.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Sends a STATUS message with `status`, the plugin's own status dict (must be a JSON object).
    /// Fails with `VALIDATION_ERROR` for a non-object and `NOT_READY` once the plugin has stopped.
    pub fn update_status(&self, status: Value) -> Result<(), EntryError> {
        if !status.is_object() {
            return Err(EntryError::validation("status must be a JSON object"));
        }
        self.plugin
            .outbox
            .send(Outgoing::Message(Message::Status(StatusUpdate { status })))
            .map_err(|_| shutting_down())
    }

    /// The same context, whose request helpers ([`Self::run_update`], [`Self::export_push_text`],
    /// ...) wait `timeout` for the supervisor's answer instead of [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_request_timeout(&self, timeout: Duration) -> Self {
        Self {
            request_timeout: timeout,
            ..self.clone()
        }
    }

    /// How long the request helpers wait (see [`Self::with_request_timeout`]).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The per-plugin facts, for the SDK's other modules.
    pub(crate) fn info(&self) -> &PluginInfo {
        &self.plugin
    }

    /// Sends a REQUEST for `op` with `args` (a JSON object) and waits up to `timeout` for the
    /// supervisor's RESPONSE; returns its `result`. This is the generic form of the helpers below,
    /// for ops they do not cover (PROTOCOL.md §9a lists what the supervisor serves).
    ///
    /// Fails with `TIMEOUT` (`"<op> timed out after <t>s"`) when no answer comes in time, with the
    /// supervisor's own code and message when it refuses (`NOT_FOUND` for an op this neko does not
    /// serve), and with `NOT_READY` once the plugin is stopping and its link is closed.
    ///
    /// Requests are async. A synchronous handler (on tokio's blocking pool) can still send one
    /// with `tokio::runtime::Handle::current().block_on(ctx.request(...))`; calls to other plugins
    /// have checked blocking forms ([`Plugins::call_entry_blocking`], ...).
    pub async fn request(
        &self,
        op: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let n = self.plugin.next_request.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            request_id: format!("req-{n}"),
            op: op.to_owned(),
            args,
            call_id: self.call_id().map(str::to_owned),
        };
        let (reply, answer) = oneshot::channel();
        self.plugin
            .outbox
            .send(Outgoing::Request(request, reply))
            .map_err(|_| shutting_down())?;
        let response = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(response)) => response,
            // The I/O loop ended (STOP, a broken link) and dropped the request unanswered.
            Ok(Err(_)) => return Err(shutting_down()),
            Err(_) => {
                return Err(EntryError::new(
                    ErrorCode::Timeout,
                    format!("{op} timed out after {:?}s", timeout.as_secs_f64()),
                ));
            }
        };
        if response.ok {
            return Ok(response.result);
        }
        Err(match response.error {
            Some(error) => EntryError {
                code: error.code,
                message: error.message,
                details: error.details,
            },
            None => EntryError::internal(format!("{op} failed")),
        })
    }

    /// Reports progress of a run (`run.update`): sends `update`'s fields that are set, for
    /// `update.run_id` or else the current call's run. Returns the supervisor's answer,
    /// `{"ok": true, "applied": bool, "run_id", "status", "updated_at"}` (`applied` is false when
    /// the run had already ended).
    ///
    /// Fails with `VALIDATION_ERROR` when there is no run (the entry was not triggered through
    /// `POST /runs`), and otherwise as [`Self::request`].
    pub async fn run_update(&self, update: RunUpdate) -> Result<Value, EntryError> {
        let run_id = self.resolve_run_id(update.run_id.as_deref())?;
        let args = update.into_args(run_id)?;
        self.request("run.update", args, self.request_timeout).await
    }

    /// [`Self::run_update`] with just `progress` (`0.0..=1.0`) and optionally `stage` and `message`.
    pub async fn run_progress(
        &self,
        progress: f64,
        stage: Option<&str>,
        message: Option<&str>,
    ) -> Result<Value, EntryError> {
        self.run_update(RunUpdate {
            progress: Some(progress),
            stage: stage.map(str::to_owned),
            message: message.map(str::to_owned),
            ..RunUpdate::default()
        })
        .await
    }

    /// Adds a text export to the current run (`export.push`); returns the new export item's id.
    /// Fails like [`Self::run_update`].
    pub async fn export_push_text(
        &self,
        text: &str,
        description: Option<&str>,
    ) -> Result<String, EntryError> {
        self.export_push("text", json!({"text": text}), None, description)
            .await
    }

    /// Adds a link to the current run's exports; returns the new export item's id.
    pub async fn export_push_url(
        &self,
        url: &str,
        description: Option<&str>,
    ) -> Result<String, EntryError> {
        self.export_push("url", json!({"url": url}), None, description)
            .await
    }

    /// Adds a link to binary content (with its `mime` type, when known) to the current run's
    /// exports; returns the new export item's id.
    pub async fn export_push_binary_url(
        &self,
        binary_url: &str,
        mime: Option<&str>,
        description: Option<&str>,
    ) -> Result<String, EntryError> {
        self.export_push(
            "binary_url",
            json!({"binary_url": binary_url}),
            mime,
            description,
        )
        .await
    }

    /// Adds `data` itself (sent base64-encoded) to the current run's exports; returns the new
    /// export item's id. Data over [`EXPORT_BINARY_MAX_BYTES`] is refused with `VALIDATION_ERROR`
    /// without sending anything: push it as a URL instead.
    pub async fn export_push_binary(
        &self,
        data: &[u8],
        mime: Option<&str>,
        description: Option<&str>,
    ) -> Result<String, EntryError> {
        if data.len() > EXPORT_BINARY_MAX_BYTES {
            return Err(EntryError::validation("binary_data too large"));
        }
        let fields = json!({"binary_base64": STANDARD.encode(data)});
        self.export_push("binary", fields, mime, description).await
    }

    /// `export.push` with `{run_id, export_type, <fields>, mime?, description?}`; the answer's
    /// `export_item_id`.
    async fn export_push(
        &self,
        export_type: &str,
        fields: Value,
        mime: Option<&str>,
        description: Option<&str>,
    ) -> Result<String, EntryError> {
        let run_id = self.resolve_run_id(None)?;
        let mut args = Map::new();
        args.insert("run_id".into(), Value::String(run_id));
        args.insert("export_type".into(), Value::String(export_type.to_owned()));
        if let Value::Object(fields) = fields {
            args.extend(fields);
        }
        if let Some(mime) = mime {
            args.insert("mime".into(), Value::String(mime.to_owned()));
        }
        if let Some(description) = description {
            args.insert("description".into(), Value::String(description.to_owned()));
        }
        let result = self
            .request("export.push", Value::Object(args), self.request_timeout)
            .await?;
        match result.get("export_item_id") {
            Some(Value::String(id)) => Ok(id.clone()),
            _ => Err(EntryError::new(
                ErrorCode::InvalidResponse,
                format!("export.push answered without an export_item_id: {result}"),
            )),
        }
    }

    /// `explicit`, or the current call's run.
    fn resolve_run_id(&self, explicit: Option<&str>) -> Result<String, EntryError> {
        explicit
            .or_else(|| self.run_id())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                EntryError::validation(
                    "run_id is required (this entry may not be triggered via /runs)",
                )
            })
    }
}

pub(crate) fn shutting_down() -> EntryError {
    EntryError::new(ErrorCode::NotReady, "the plugin is shutting down")
}

/// A one-way flag with a wake-up: set by CANCEL or a missed deadline, read by the call's task and
/// by the handler through its [`Context`].
#[derive(Debug, Default)]
pub(crate) struct CancelSignal {
    set: AtomicBool,
    notify: Notify,
}

impl CancelSignal {
    pub(crate) fn cancel(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait(&self) {
        loop {
            // Create the waiter before checking the flag: `notify_waiters` wakes every `Notified`
            // that exists when it runs, even one not yet polled, so a cancel between the check and
            // the await is not missed.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use neko_protocol::{Response, WireError};

    pub(crate) fn plugin() -> (Arc<PluginInfo>, mpsc::UnboundedReceiver<Outgoing>) {
        plugin_with_config(None)
    }

    /// A plugin whose plugin.toml is `config`, and the receiving end of its outbox.
    pub(crate) fn plugin_with_config(
        config: Option<PathBuf>,
    ) -> (Arc<PluginInfo>, mpsc::UnboundedReceiver<Outgoing>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let info = PluginInfo::new("echo".into(), PathBuf::from("/p/echo"), config, outbox);
        (Arc::new(info), rx)
    }

    #[tokio::test]
    async fn cancel_wakes_a_waiting_handler() {
        let (info, _rx) = plugin();
        let cancel = Arc::new(CancelSignal::default());
        let ctx = Context::for_call(
            info,
            CallInfo {
                call_id: "c-1".into(),
                entry_id: "sleep".into(),
                run_id: Some("r-1".into()),
                cancel: cancel.clone(),
            },
        );
        assert_eq!(ctx.call_id(), Some("c-1"));
        assert_eq!(ctx.run_id(), Some("r-1"));
        assert!(!ctx.is_cancelled());
        let waiter = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.cancelled().await }
        });
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("cancelled() must complete")
            .unwrap();
        assert!(ctx.is_cancelled());
    }

    #[tokio::test]
    async fn update_status_sends_objects_only() {
        let (info, mut rx) = plugin();
        let ctx = Context::for_plugin(info);
        assert_eq!(ctx.call_id(), None);
        assert!(!ctx.is_cancelled());

        let err = ctx.update_status(serde_json::json!("busy")).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);

        ctx.update_status(serde_json::json!({"status": "busy"}))
            .unwrap();
        let Some(Outgoing::Message(Message::Status(s))) = rx.recv().await else {
            panic!("expected a STATUS message");
        };
        assert_eq!(s.status, serde_json::json!({"status": "busy"}));

        drop(rx);
        let err = ctx.update_status(serde_json::json!({})).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotReady);
    }

    /// A context serving call `c-1` of entry `work`.
    pub(crate) fn call_ctx(info: Arc<PluginInfo>, run_id: Option<&str>) -> Context {
        Context::for_call(
            info,
            CallInfo {
                call_id: "c-1".into(),
                entry_id: "work".into(),
                run_id: run_id.map(str::to_owned),
                cancel: Arc::new(CancelSignal::default()),
            },
        )
    }

    /// Plays the I/O loop for one request: returns what was sent and answers it with `answer`.
    pub(crate) async fn answer_next(
        rx: &mut mpsc::UnboundedReceiver<Outgoing>,
        answer: impl FnOnce(&Request) -> Response,
    ) -> Request {
        let Some(Outgoing::Request(request, reply)) = rx.recv().await else {
            panic!("expected a REQUEST");
        };
        reply.send(answer(&request)).unwrap();
        request
    }

    #[tokio::test]
    async fn requests_carry_unique_ids_and_unwrap_their_answer() {
        let (info, mut rx) = plugin();
        let ctx = call_ctx(info, Some("r-1"));

        let (result, sent) = tokio::join!(
            ctx.request("config.get", json!({}), Duration::from_secs(5)),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                json!({"a": 1})
            )),
        );
        assert_eq!(result.unwrap(), json!({"a": 1}));
        assert_eq!((sent.op.as_str(), &sent.args), ("config.get", &json!({})));

        let (result, second) = tokio::join!(
            ctx.request("nope.op", json!({}), Duration::from_secs(5)),
            answer_next(&mut rx, |r| {
                let mut error = WireError::new(ErrorCode::NotFound, "unknown request op 'nope.op'");
                error.details = Some(json!({"op": "nope.op"}));
                Response::failure(&r.request_id, error)
            }),
        );
        assert_ne!(second.request_id, sent.request_id);
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "unknown request op 'nope.op'");
        assert_eq!(err.details, Some(json!({"op": "nope.op"})));
    }

    #[tokio::test]
    async fn unanswered_requests_time_out_and_closed_links_are_not_ready() {
        let (info, mut rx) = plugin();
        let ctx = call_ctx(info, Some("r-1")).with_request_timeout(Duration::from_millis(50));

        let err = ctx.run_progress(0.5, None, None).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert_eq!(err.message, "run.update timed out after 0.05s");
        let Some(Outgoing::Request(unanswered, _)) = rx.recv().await else {
            panic!("the timed-out REQUEST was sent");
        };
        assert_eq!(unanswered.op, "run.update");

        // The loop dropped the waiter (the link closed) ...
        let (result, ()) = tokio::join!(ctx.export_push_text("x", None), async {
            let Some(Outgoing::Request(_, reply)) = rx.recv().await else {
                panic!("expected a REQUEST");
            };
            drop(reply);
        });
        assert_eq!(result.unwrap_err().code, ErrorCode::NotReady);
        // ... or is gone altogether.
        drop(rx);
        let err = ctx.run_progress(1.0, None, None).await.unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::NotReady, "the plugin is shutting down")
        );
    }

    #[tokio::test]
    async fn run_helpers_build_the_reference_args() {
        let (info, mut rx) = plugin();
        let ctx = call_ctx(info, Some("r-7"));
        let applied = json!({"ok": true, "applied": true, "run_id": "r-7", "status": "running", "updated_at": 1.0});

        let (result, sent) = tokio::join!(
            ctx.run_progress(0.25, Some("load"), None),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                applied.clone()
            )),
        );
        assert_eq!(result.unwrap(), applied);
        assert_eq!(sent.op, "run.update");
        assert_eq!(
            sent.args,
            json!({"run_id": "r-7", "progress": 0.25, "stage": "load"})
        );

        let other_run = RunUpdate {
            run_id: Some("r-other".into()),
            step: Some(1),
            ..RunUpdate::default()
        };
        let (_, sent) = tokio::join!(
            ctx.run_update(other_run),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                applied.clone()
            )),
        );
        assert_eq!(sent.args, json!({"run_id": "r-other", "step": 1}));

        let id = |r: &Request| Response::success(&r.request_id, json!({"export_item_id": "e-1"}));
        let (result, sent) = tokio::join!(
            ctx.export_push_text("hello", Some("greeting")),
            answer_next(&mut rx, id),
        );
        assert_eq!(result.unwrap(), "e-1");
        assert_eq!(sent.op, "export.push");
        assert_eq!(
            sent.args,
            json!({"run_id": "r-7", "export_type": "text", "text": "hello", "description": "greeting"})
        );
        let (_, sent) = tokio::join!(
            ctx.export_push_url("https://x/y", None),
            answer_next(&mut rx, id)
        );
        assert_eq!(
            sent.args,
            json!({"run_id": "r-7", "export_type": "url", "url": "https://x/y"})
        );
        let (_, sent) = tokio::join!(
            ctx.export_push_binary_url("https://x/a.png", Some("image/png"), None),
            answer_next(&mut rx, id),
        );
        assert_eq!(
            sent.args,
            json!({"run_id": "r-7", "export_type": "binary_url", "binary_url": "https://x/a.png", "mime": "image/png"})
        );
        let (_, sent) = tokio::join!(
            ctx.export_push_binary(b"foobar", Some("application/octet-stream"), Some("d")),
            answer_next(&mut rx, id),
        );
        assert_eq!(
            sent.args,
            json!({"run_id": "r-7", "export_type": "binary", "binary_base64": "Zm9vYmFy",
                   "mime": "application/octet-stream", "description": "d"})
        );

        // An answer without an id is not a success.
        let (result, _) = tokio::join!(
            ctx.export_push_text("x", None),
            answer_next(&mut rx, |r| Response::success(&r.request_id, json!({}))),
        );
        assert_eq!(result.unwrap_err().code, ErrorCode::InvalidResponse);
    }

    #[tokio::test]
    async fn run_helpers_refuse_locally_without_sending() {
        let (info, mut rx) = plugin();
        let no_run = call_ctx(info.clone(), None);
        for err in [
            no_run.run_progress(0.5, None, None).await.unwrap_err(),
            no_run.export_push_text("x", None).await.unwrap_err(),
            Context::for_plugin(info.clone())
                .export_push_url("u", None)
                .await
                .unwrap_err(),
        ] {
            assert_eq!(
                (err.code, err.message.as_str()),
                (
                    ErrorCode::ValidationError,
                    "run_id is required (this entry may not be triggered via /runs)"
                )
            );
        }
        let in_run = call_ctx(info, Some("r-1"));
        let big = vec![0u8; EXPORT_BINARY_MAX_BYTES + 1];
        let err = in_run
            .export_push_binary(&big, None, None)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::ValidationError, "binary_data too large")
        );
        assert!(rx.try_recv().is_err(), "nothing was sent");
    }
}
