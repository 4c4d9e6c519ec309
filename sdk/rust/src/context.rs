//! [`Context`]: what a handler or lifecycle hook knows about the plugin and its call, and what it
//! can do besides returning (report status, notice a cancel).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use neko_protocol::{ErrorCode, Message, StatusUpdate};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::error::EntryError;

/// A handle passed to every handler and hook. Cloning is cheap (two `Arc`s), so it can be moved
/// into spawned tasks and blocking closures.
#[derive(Debug, Clone)]
pub struct Context {
    plugin: Arc<PluginInfo>,
    /// `None` in lifecycle hooks, which serve no call.
    call: Option<Arc<CallInfo>>,
}

/// Per-plugin facts shared by every context.
#[derive(Debug)]
pub(crate) struct PluginInfo {
    pub(crate) plugin_id: String,
    pub(crate) plugin_dir: PathBuf,
    pub(crate) plugin_config: Option<PathBuf>,
    /// Into the I/O loop, which owns the socket; unbounded so that synchronous handlers (which
    /// cannot await) can report status too.
    pub(crate) outbox: mpsc::UnboundedSender<Message>,
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
        Self { plugin, call: None }
    }

    pub(crate) fn for_call(plugin: Arc<PluginInfo>, call: CallInfo) -> Self {
        Self {
            plugin,
            call: Some(Arc::new(call)),
        }
    }

    /// The plugin's id.
    pub fn plugin_id(&self) -> &str {
        &self.plugin.plugin_id
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
            .send(Message::Status(StatusUpdate { status }))
            .map_err(|_| EntryError::new(ErrorCode::NotReady, "the plugin is shutting down"))
    }
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn plugin() -> (Arc<PluginInfo>, mpsc::UnboundedReceiver<Message>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let info = PluginInfo {
            plugin_id: "echo".into(),
            plugin_dir: PathBuf::from("/p/echo"),
            plugin_config: None,
            outbox,
        };
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
        let Some(Message::Status(s)) = rx.recv().await else {
            panic!("expected a STATUS message");
        };
        assert_eq!(s.status, serde_json::json!({"status": "busy"}));

        drop(rx);
        let err = ctx.update_status(serde_json::json!({})).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotReady);
    }
}
