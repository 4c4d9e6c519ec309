//! Blocking forms of the SDK's async calls, for synchronous handlers, and the reference's "A1"
//! policy that guards them.
//!
//! A synchronous handler may block its own thread, but one that waits on another plugin while it
//! serves a call can close a wait cycle or run out its own deadline. So a blocking call made while
//! serving a call is first checked against the plugin's [`SyncCallPolicy`]: plugin.toml's
//! `[plugin.safety] sync_call_in_handler`, else [`SYNC_CALL_POLICY_ENV`], else `warn`.
//!
//! Blocking a thread that drives async tasks would stall them (on a current-thread runtime, for
//! good), so a blocking call from an async handler or hook is refused outright. Tokio offers no
//! non-panicking way to ask "is this a runtime thread?", so the SDK marks the threads itself while
//! it polls handlers and hooks (`async_scope`). Elsewhere the work runs as a task on the runtime
//! and the caller waits on a plain channel: that never panics, and the wait is bounded.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use neko_protocol::ErrorCode;
use tokio::runtime::Handle;

use crate::context::{Context, shutting_down};
use crate::error::EntryError;

/// The policy when plugin.toml sets none: `warn`, `reject` or `allow`.
pub const SYNC_CALL_POLICY_ENV: &str = "NEKO_PLUGIN_SYNC_CALL_POLICY";

/// Set to `false`, `0`, `no` or `off` to silence the `warn` policy's log line.
pub const LOG_SYNC_CALL_WARNINGS_ENV: &str = "NEKO_PLUGIN_LOG_SYNC_CALL_WARNINGS";

/// How much longer than its work's own deadline a blocking call waits. The work answers by then
/// unless the runtime cannot run it at all (the caller is blocking the runtime's only thread).
const BRIDGE_MARGIN: Duration = Duration::from_secs(1);

/// What a blocking call made while serving a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncCallPolicy {
    /// Log a warning, then proceed (the default).
    #[default]
    Warn,
    /// Fail with `INTERNAL` before anything is sent.
    Reject,
    /// Proceed silently.
    Allow,
}

impl SyncCallPolicy {
    /// `warn`, `reject` or `allow`, ignoring case and surrounding blanks; anything else is `warn`,
    /// so a typo never silently disables the guard.
    pub fn parse(value: &str) -> Self {
        match value.trim().to_ascii_lowercase().as_str() {
            "reject" => Self::Reject,
            "allow" => Self::Allow,
            _ => Self::Warn,
        }
    }

    /// plugin.toml's value when it has one, else the environment's, else `warn`.
    pub fn resolve(from_toml: Option<&str>, from_env: Option<&str>) -> Self {
        from_toml.or(from_env).map(Self::parse).unwrap_or_default()
    }
}

/// plugin.toml's `[plugin.safety] sync_call_in_handler`, cached and re-read only when the file's
/// modification time changes, so a blocking call does not parse TOML every time.
#[derive(Debug, Default)]
pub(crate) struct PolicySetting {
    cache: Mutex<Option<(SystemTime, Option<String>)>>,
}

impl PolicySetting {
    /// The setting in the file at `path`; `None` when the file, the key or a string value is
    /// missing.
    pub(crate) fn get(&self, path: &Path) -> Option<String> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, value)) = cache.as_ref()
            && *at == modified
        {
            return value.clone();
        }
        let value = read_setting(path);
        *cache = Some((modified, value.clone()));
        value
    }
}

fn read_setting(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            tracing::debug!(path = %path.display(), "plugin.toml unreadable for the sync call policy: {e}");
            return None;
        }
    };
    table
        .get("plugin")?
        .get("safety")?
        .get("sync_call_in_handler")?
        .as_str()
        .map(str::to_owned)
}

/// False when `value` is `false`, `0`, `no` or `off` (any case); unset means true.
fn warnings_enabled(value: Option<&str>) -> bool {
    !value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    })
}

/// Applies the policy to blocking call `name` made through `ctx`; `env` looks variables up.
/// Outside a call (lifecycle hooks, no handler to stall) there is nothing to check.
fn check_policy(
    ctx: &Context,
    name: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), EntryError> {
    let Some(entry_id) = ctx.entry_id() else {
        return Ok(());
    };
    let from_toml = ctx
        .config_path()
        .and_then(|path| ctx.info().sync_policy.get(path));
    let policy =
        SyncCallPolicy::resolve(from_toml.as_deref(), env(SYNC_CALL_POLICY_ENV).as_deref());
    if policy == SyncCallPolicy::Allow {
        return Ok(());
    }
    let message = format!(
        "Sync call '{name}' invoked inside handler (plugin_entry.{entry_id}). This may block the \
         command loop and cause deadlocks/timeouts."
    );
    if policy == SyncCallPolicy::Reject {
        return Err(EntryError::internal(message));
    }
    if warnings_enabled(env(LOG_SYNC_CALL_WARNINGS_ENV).as_deref()) {
        tracing::warn!("{message}");
    }
    Ok(())
}

thread_local! {
    /// True while this thread polls an async handler or hook.
    static ASYNC_SCOPE: Cell<bool> = const { Cell::new(false) };
}

/// `fut`, with its thread marked as driving async code whenever it is polled, so that a blocking
/// call made from it is refused instead of stalling the runtime.
pub(crate) async fn async_scope<F: Future>(fut: F) -> F::Output {
    /// Restores the outer mark, on return and on panic alike.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ASYNC_SCOPE.set(self.0);
        }
    }

    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let _restore = Restore(ASYNC_SCOPE.replace(true));
        fut.as_mut().poll(cx)
    })
    .await
}

/// Runs `work` from synchronous code and returns its outcome. `name` is the blocking method, for
/// messages; `wait` is the deadline `work` enforces itself.
///
/// Fails with `INTERNAL` inside an async handler or hook, or when the policy rejects the call
/// (both before `work` starts); with `CANCELED` as soon as the context's call is canceled or past
/// its deadline; with `NOT_READY` when the runtime is shutting down; with `TIMEOUT` when `work`
/// could not even run within `wait` plus a margin.
pub(crate) fn block_on<T: Send + 'static>(
    ctx: &Context,
    name: &str,
    wait: Duration,
    work: impl Future<Output = Result<T, EntryError>> + Send + 'static,
) -> Result<T, EntryError> {
    if ASYNC_SCOPE.get() {
        return Err(EntryError::internal(format!(
            "Sync call '{name}' cannot be used inside a running event loop. Use its async form \
             with '.await' instead."
        )));
    }
    check_policy(ctx, name, |var| std::env::var(var).ok())?;
    // The plugin's own runtime, which also serves threads without a runtime context; another
    // runtime the plugin may have made could lack the timer the work needs.
    let runtime = ctx
        .info()
        .runtime
        .clone()
        .or_else(|| Handle::try_current().ok())
        .ok_or_else(|| {
            EntryError::internal(format!(
                "Sync call '{name}' found no tokio runtime to run on"
            ))
        })?;
    let (done, outcome) = mpsc::sync_channel(1);
    let call = ctx.clone();
    runtime.spawn(async move {
        // A synchronous handler cannot be interrupted, but it need not keep waiting for an answer
        // its canceled (or timed out) call no longer needs.
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = call.cancelled() => Err(EntryError::new(ErrorCode::Canceled, "canceled")),
        };
        // The receiver is gone only when the caller gave up already.
        let _ = done.send(outcome);
    });
    let limit = wait + BRIDGE_MARGIN;
    match outcome.recv_timeout(limit) {
        Ok(outcome) => outcome,
        Err(RecvTimeoutError::Timeout) => Err(EntryError::new(
            ErrorCode::Timeout,
            format!("{name} timed out after {:?}s", limit.as_secs_f64()),
        )),
        // The runtime dropped the task unfinished: it is shutting down.
        Err(RecvTimeoutError::Disconnected) => Err(shutting_down()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::{call_ctx, plugin_with_config};
    use crate::context::{CallInfo, CancelSignal};
    use serde_json::json;

    #[test]
    fn policy_values_parse_and_unknown_is_warn() {
        assert_eq!(SyncCallPolicy::parse("reject"), SyncCallPolicy::Reject);
        assert_eq!(SyncCallPolicy::parse(" ALLOW "), SyncCallPolicy::Allow);
        assert_eq!(SyncCallPolicy::parse("warn"), SyncCallPolicy::Warn);
        assert_eq!(SyncCallPolicy::parse("deny"), SyncCallPolicy::Warn);
        assert_eq!(SyncCallPolicy::parse(""), SyncCallPolicy::Warn);
    }

    #[test]
    fn toml_beats_env_beats_default() {
        use SyncCallPolicy::*;
        assert_eq!(
            SyncCallPolicy::resolve(Some("allow"), Some("reject")),
            Allow
        );
        // A bad value in plugin.toml still decides: it means warn, not "ask the environment".
        assert_eq!(SyncCallPolicy::resolve(Some("bogus"), Some("reject")), Warn);
        assert_eq!(SyncCallPolicy::resolve(None, Some("reject")), Reject);
        assert_eq!(SyncCallPolicy::resolve(None, None), Warn);
    }

    #[test]
    fn warnings_are_on_unless_switched_off() {
        assert!(warnings_enabled(None));
        assert!(warnings_enabled(Some("true")));
        assert!(warnings_enabled(Some("1")));
        for off in ["false", "0", "no", "OFF", " No "] {
            assert!(!warnings_enabled(Some(off)), "{off}");
        }
    }

    fn write_toml(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("plugin.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_setting_is_read_from_plugin_toml_and_reread_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(
            &dir,
            "[plugin]\nid = \"echo\"\n[plugin.safety]\nsync_call_in_handler = \"reject\"\n",
        );
        let setting = PolicySetting::default();
        assert_eq!(setting.get(&path).as_deref(), Some("reject"));

        std::fs::write(&path, "[plugin]\nid = \"echo\"\n").unwrap();
        // Make the change visible even on filesystems with coarse timestamps.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(setting.get(&path), None);

        assert_eq!(setting.get(&dir.path().join("missing.toml")), None);
        let broken = write_toml(&dir, "[plugin.safety\n");
        assert_eq!(PolicySetting::default().get(&broken), None);
    }

    #[test]
    fn policy_applies_inside_calls_only() {
        let dir = tempfile::tempdir().unwrap();
        let no_env = |_: &str| None;
        let env_reject = |var: &str| (var == SYNC_CALL_POLICY_ENV).then(|| "reject".to_string());

        // plugin.toml says reject: refused with the reference's message.
        let path = write_toml(&dir, "[plugin.safety]\nsync_call_in_handler = \"reject\"\n");
        let (info, _rx) = plugin_with_config(Some(path));
        let ctx = call_ctx(info.clone(), None);
        let err = check_policy(&ctx, "plugins.call_blocking", no_env).unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(
            err.message,
            "Sync call 'plugins.call_blocking' invoked inside handler (plugin_entry.work). This \
             may block the command loop and cause deadlocks/timeouts."
        );
        // Lifecycle hooks serve no call: nothing to guard.
        assert!(check_policy(&Context::for_plugin(info), "x", no_env).is_ok());

        // plugin.toml says allow: the environment's reject does not count.
        let path = write_toml(&dir, "[plugin.safety]\nsync_call_in_handler = \"allow\"\n");
        let (info, _rx) = plugin_with_config(Some(path));
        assert!(check_policy(&call_ctx(info, None), "x", env_reject).is_ok());

        // No setting in plugin.toml (or no plugin.toml): the environment decides; default warn.
        let path = write_toml(&dir, "[plugin]\nid = \"echo\"\n");
        let (info, _rx) = plugin_with_config(Some(path));
        let ctx = call_ctx(info, None);
        assert!(check_policy(&ctx, "x", env_reject).is_err());
        assert!(check_policy(&ctx, "x", no_env).is_ok());
        let (info, _rx) = plugin_with_config(None);
        assert!(check_policy(&call_ctx(info, None), "x", env_reject).is_err());
    }

    #[test]
    fn block_on_runs_work_from_threads_without_a_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        // The plugin's context is made on the runtime, as the SDK does, so it knows the handle.
        let (info, _rx) = runtime.block_on(async { plugin_with_config(None) });
        let ctx = Context::for_plugin(info);
        let outcome = std::thread::spawn(move || {
            block_on(&ctx, "t", Duration::from_secs(1), async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(json!(7))
            })
        })
        .join()
        .unwrap();
        assert_eq!(outcome.unwrap(), json!(7));
    }

    #[tokio::test]
    async fn block_on_refuses_async_code_without_running_the_work() {
        let (info, _rx) = plugin_with_config(None);
        let ctx = Context::for_plugin(info);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let err = async_scope(async {
            block_on(
                &ctx,
                "plugins.list_blocking",
                Duration::from_secs(1),
                async move {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                },
            )
        })
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(
            err.message.starts_with(
                "Sync call 'plugins.list_blocking' cannot be used inside a running event loop"
            ),
            "{}",
            err.message
        );
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // The mark ends with the scope: a blocking thread of the same runtime may block.
        let ctx2 = ctx.clone();
        let ok = tokio::task::spawn_blocking(move || {
            block_on(&ctx2, "t", Duration::from_secs(1), async { Ok(1) })
        })
        .await
        .unwrap();
        assert_eq!(ok.unwrap(), 1);
        assert!(!ASYNC_SCOPE.get());
    }

    #[tokio::test]
    async fn block_on_stops_waiting_when_the_call_is_canceled() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_toml(&dir, "[plugin.safety]\nsync_call_in_handler = \"allow\"\n");
        let (info, _rx) = plugin_with_config(Some(path));
        let cancel = std::sync::Arc::new(CancelSignal::default());
        let ctx = Context::for_call(
            info,
            CallInfo {
                call_id: "c-1".into(),
                entry_id: "work".into(),
                run_id: None,
                cancel: cancel.clone(),
            },
        );
        let waiting = tokio::task::spawn_blocking(move || {
            // The work never finishes on its own.
            block_on(
                &ctx,
                "t",
                Duration::from_secs(60),
                std::future::pending::<Result<(), _>>(),
            )
        });
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the canceled call stops waiting")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::Canceled, "canceled")
        );
    }
}
