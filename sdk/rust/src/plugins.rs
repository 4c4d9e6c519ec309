//! [`Plugins`]: calls to other plugins' entries and custom events, and the list of plugins
//! (PROTOCOL.md §9b). Plugins never talk to each other directly: every call is a REQUEST that neko
//! routes, times and watches for deadlocks, so this is a thin layer over [`Context::request`].
//!
//! ```no_run
//! # use std::time::Duration;
//! # use neko_sdk::{Context, EntryError, serde_json::{Value, json}};
//! async fn handler(ctx: Context, _args: Value) -> Result<Value, EntryError> {
//!     let sum = ctx
//!         .plugins()
//!         .call_entry("calc:add", json!({"a": 1, "b": 2}), Duration::from_secs(5))
//!         .await?;
//!     Ok(json!({"sum": sum}))
//! }
//! ```

use std::future::Future;
use std::time::Duration;

use neko_protocol::{ErrorCode, PLUGIN_ENTRY};
use serde_json::{Value, json};

use crate::context::Context;
use crate::error::EntryError;
use crate::sync_call;

/// The reference's default deadline for a plugin-to-plugin call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than a call's timeout the SDK waits for the answer: neko enforces the deadline
/// and answers `TIMEOUT` itself, so this only covers the way back.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Calls to other plugins, from [`Context::plugins`]. Cloning is cheap; calls made through it
/// belong to the context's call, if any.
///
/// Errors keep what neko or the callee said: the callee's own code and message unchanged, or
/// neko's `NOT_FOUND`, `NOT_READY`, `PLUGIN_CRASHED`, `TIMEOUT` (details `{"deadline": true}`)
/// and `DEADLOCK` (details `{"cycle": [plugin ids]}`), with their details. Arguments the SDK can
/// tell are wrong fail with `VALIDATION_ERROR` before anything is sent.
///
/// The `*_blocking` forms are for synchronous handlers. While serving a call they first apply the
/// sync call policy ([`crate::sync_call::SyncCallPolicy`]: `reject` fails with `INTERNAL`), and
/// from an async handler or hook they fail with `INTERNAL` instead of stalling the runtime.
#[derive(Debug, Clone)]
pub struct Plugins {
    ctx: Context,
}

impl Plugins {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Runs entry `entry_ref` (`"plugin_id:entry_id"`) with `args` (a JSON object, or null for
    /// none) and returns its data. `timeout` is the callee's deadline (neko caps it by what is
    /// left of the current call's).
    pub async fn call_entry(
        &self,
        entry_ref: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let [plugin_id, entry_id] = split_ref(entry_ref, "entry_ref", "plugin_id:entry_id")?;
        self.call(plugin_id, PLUGIN_ENTRY, entry_id, args, timeout)
            .await
    }

    /// Runs custom event `event_ref` (`"plugin_id:event_type:event_id"`); otherwise as
    /// [`Self::call_entry`].
    pub async fn call_event(
        &self,
        event_ref: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let [plugin_id, event_type, event_id] =
            split_ref(event_ref, "event_ref", "plugin_id:event_type:event_id")?;
        self.call(plugin_id, event_type, event_id, args, timeout)
            .await
    }

    /// Runs `event_id` of type `event_type` (`"plugin_entry"` for entries) in plugin `plugin_id`;
    /// otherwise as [`Self::call_entry`].
    pub async fn call(
        &self,
        plugin_id: &str,
        event_type: &str,
        event_id: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let request = call_request(plugin_id, event_type, event_id, args, timeout)?;
        self.ctx
            .request("plugin.call", request, timeout + ANSWER_GRACE)
            .await
    }

    /// The plugins neko runs, as other plugins see them: `{"plugins": [{"plugin_id", "name",
    /// "description", "version", "sdk_version", "status", "events"?}]}`. `filters` is a JSON
    /// object (keys in PROTOCOL.md §9b, e.g. `{"has_entry": "add"}`), or null for all plugins.
    /// Waits as long as the context's other requests.
    pub async fn list(&self, filters: Value) -> Result<Value, EntryError> {
        let args = match filters {
            Value::Null => json!({}),
            Value::Object(_) => json!({"filters": filters}),
            _ => return Err(EntryError::validation("filters must be a JSON object")),
        };
        let answer = self
            .ctx
            .request("plugins.query", args, self.ctx.request_timeout())
            .await?;
        if !answer["plugins"].is_array() {
            return Err(EntryError::new(
                ErrorCode::InvalidResponse,
                format!("plugins.query answered without a plugins list: {answer}"),
            ));
        }
        Ok(answer)
    }

    /// Plugin `plugin_id`'s item from [`Self::list`]; `NOT_FOUND` when neko has no such plugin.
    pub async fn require(&self, plugin_id: &str) -> Result<Value, EntryError> {
        if plugin_id.is_empty() {
            return Err(EntryError::validation("plugin_id must not be empty"));
        }
        let mut answer = self.list(json!({"plugin_ids": [plugin_id]})).await?;
        let plugins = answer["plugins"].as_array_mut().into_iter().flatten();
        plugins
            .into_iter()
            .find(|item| item["plugin_id"] == plugin_id)
            .map(Value::take)
            .ok_or_else(|| {
                EntryError::new(
                    ErrorCode::NotFound,
                    format!("Plugin '{plugin_id}' not found"),
                )
            })
    }

    /// [`Self::call_entry`] for synchronous handlers (see the type's docs).
    pub fn call_entry_blocking(
        &self,
        entry_ref: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let (this, entry_ref) = (self.clone(), entry_ref.to_owned());
        self.blocking(
            "plugins.call_entry_blocking",
            timeout + ANSWER_GRACE,
            async move { this.call_entry(&entry_ref, args, timeout).await },
        )
    }

    /// [`Self::call_event`] for synchronous handlers (see the type's docs).
    pub fn call_event_blocking(
        &self,
        event_ref: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let (this, event_ref) = (self.clone(), event_ref.to_owned());
        self.blocking(
            "plugins.call_event_blocking",
            timeout + ANSWER_GRACE,
            async move { this.call_event(&event_ref, args, timeout).await },
        )
    }

    /// [`Self::call`] for synchronous handlers (see the type's docs).
    pub fn call_blocking(
        &self,
        plugin_id: &str,
        event_type: &str,
        event_id: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, EntryError> {
        let this = self.clone();
        let (plugin_id, event_type, event_id) = (
            plugin_id.to_owned(),
            event_type.to_owned(),
            event_id.to_owned(),
        );
        self.blocking(
            "plugins.call_blocking",
            timeout + ANSWER_GRACE,
            async move {
                this.call(&plugin_id, &event_type, &event_id, args, timeout)
                    .await
            },
        )
    }

    /// [`Self::list`] for synchronous handlers (see the type's docs).
    pub fn list_blocking(&self, filters: Value) -> Result<Value, EntryError> {
        let this = self.clone();
        self.blocking(
            "plugins.list_blocking",
            self.ctx.request_timeout(),
            async move { this.list(filters).await },
        )
    }

    /// [`Self::require`] for synchronous handlers (see the type's docs).
    pub fn require_blocking(&self, plugin_id: &str) -> Result<Value, EntryError> {
        let (this, plugin_id) = (self.clone(), plugin_id.to_owned());
        self.blocking(
            "plugins.require_blocking",
            self.ctx.request_timeout(),
            async move { this.require(&plugin_id).await },
        )
    }

    fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        wait: Duration,
        work: impl Future<Output = Result<T, EntryError>> + Send + 'static,
    ) -> Result<T, EntryError> {
        sync_call::block_on(&self.ctx, name, wait, work)
    }
}

/// `reference` split on `:` into exactly `N` non-empty parts; `VALIDATION_ERROR` otherwise.
/// `what` and `shape` name the argument and its expected form in the message.
fn split_ref<'a, const N: usize>(
    reference: &'a str,
    what: &str,
    shape: &str,
) -> Result<[&'a str; N], EntryError> {
    let parts: Vec<&str> = reference.split(':').collect();
    <[&str; N]>::try_from(parts)
        .ok()
        .filter(|parts| parts.iter().all(|p| !p.is_empty()))
        .ok_or_else(|| {
            EntryError::validation(format!("Invalid {what} '{reference}', expected '{shape}'"))
                .with_details(json!({"field": what}))
        })
}

/// The `plugin.call` arguments, checked as far as the SDK can: non-empty names, an object (or
/// null) for `args`, a timeout of at least 1 ms.
fn call_request(
    plugin_id: &str,
    event_type: &str,
    event_id: &str,
    args: Value,
    timeout: Duration,
) -> Result<Value, EntryError> {
    for (field, value) in [
        ("plugin_id", plugin_id),
        ("event_type", event_type),
        ("event_id", event_id),
    ] {
        if value.is_empty() {
            return Err(EntryError::validation(format!("{field} must not be empty"))
                .with_details(json!({"field": field})));
        }
    }
    let args = match args {
        Value::Null => json!({}),
        Value::Object(_) => args,
        _ => {
            return Err(EntryError::validation("args must be a JSON object")
                .with_details(json!({"field": "args"})));
        }
    };
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if timeout_ms == 0 {
        return Err(EntryError::validation("timeout must be at least 1ms")
            .with_details(json!({"field": "timeout_ms"})));
    }
    Ok(json!({
        "plugin_id": plugin_id,
        "event_type": event_type,
        "event_id": event_id,
        "args": args,
        "timeout_ms": timeout_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::{answer_next, call_ctx, plugin, plugin_with_config};
    use neko_protocol::{Response, WireError};

    #[test]
    fn refs_split_into_exactly_their_parts() {
        assert_eq!(
            split_ref::<2>("calc:add", "entry_ref", "p:e").unwrap(),
            ["calc", "add"]
        );
        assert_eq!(
            split_ref::<3>("calc:custom:tick", "event_ref", "p:t:e").unwrap(),
            ["calc", "custom", "tick"]
        );
        for bad in ["calc", "calc:", ":add", "calc:add:x", "", "::"] {
            let err = split_ref::<2>(bad, "entry_ref", "plugin_id:entry_id").unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError, "{bad}");
            assert_eq!(
                err.message,
                format!("Invalid entry_ref '{bad}', expected 'plugin_id:entry_id'")
            );
            assert_eq!(err.details, Some(json!({"field": "entry_ref"})));
        }
        assert!(split_ref::<3>("calc:add", "event_ref", "p:t:e").is_err());
        assert!(split_ref::<3>("calc::tick", "event_ref", "p:t:e").is_err());
    }

    #[test]
    fn call_arguments_are_checked_and_shaped() {
        let args = call_request(
            "calc",
            PLUGIN_ENTRY,
            "add",
            json!({"a": 1}),
            Duration::from_millis(2500),
        )
        .unwrap();
        assert_eq!(
            args,
            json!({"plugin_id": "calc", "event_type": "plugin_entry", "event_id": "add",
                   "args": {"a": 1}, "timeout_ms": 2500})
        );
        let none = call_request("calc", "custom", "tick", Value::Null, DEFAULT_CALL_TIMEOUT);
        assert_eq!(none.unwrap()["args"], json!({}));

        let second = Duration::from_secs(1);
        for (bad, field) in [
            (call_request("", "t", "e", json!({}), second), "plugin_id"),
            (call_request("p", "", "e", json!({}), second), "event_type"),
            (call_request("p", "t", "", json!({}), second), "event_id"),
            (call_request("p", "t", "e", json!([1]), second), "args"),
            (
                call_request("p", "t", "e", json!({}), Duration::ZERO),
                "timeout_ms",
            ),
        ] {
            let err = bad.unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError, "{field}");
            assert_eq!(err.details, Some(json!({"field": field})));
        }
    }

    #[tokio::test]
    async fn calls_send_plugin_call_in_the_current_call() {
        let (info, mut rx) = plugin();
        let plugins = call_ctx(info, None).plugins();

        let (result, sent) = tokio::join!(
            plugins.call_entry("calc:add", json!({"a": 1}), Duration::from_secs(3)),
            answer_next(&mut rx, |r| Response::success(&r.request_id, json!(3))),
        );
        assert_eq!(result.unwrap(), json!(3));
        assert_eq!(sent.op, "plugin.call");
        assert_eq!(sent.call_id.as_deref(), Some("c-1"));
        assert_eq!(
            sent.args,
            json!({"plugin_id": "calc", "event_type": "plugin_entry", "event_id": "add",
                   "args": {"a": 1}, "timeout_ms": 3000})
        );

        let (_, sent) = tokio::join!(
            plugins.call_event("calc:custom:tick", Value::Null, DEFAULT_CALL_TIMEOUT),
            answer_next(&mut rx, |r| Response::success(&r.request_id, Value::Null)),
        );
        assert_eq!(
            sent.args,
            json!({"plugin_id": "calc", "event_type": "custom", "event_id": "tick",
                   "args": {}, "timeout_ms": 10000})
        );

        // Bad references fail before anything is sent.
        let err = plugins
            .call_entry("calc", json!({}), DEFAULT_CALL_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        let err = plugins
            .call_event("calc:tick", json!({}), DEFAULT_CALL_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(rx.try_recv().is_err(), "nothing was sent");
    }

    #[tokio::test]
    async fn errors_keep_code_message_and_details() {
        let (info, mut rx) = plugin();
        let plugins = call_ctx(info, None).plugins();
        let refusals = [
            WireError::new(
                ErrorCode::Deadlock,
                "call would deadlock: echo.work → beta.bounce → echo",
            ),
            WireError::new(ErrorCode::Timeout, "plugin.call timed out"),
            WireError::new(
                ErrorCode::from("QUOTA_EXCEEDED".to_string()),
                "callee's own",
            ),
        ];
        let details = [
            Some(json!({"cycle": ["echo", "beta", "echo"]})),
            Some(json!({"deadline": true})),
            None,
        ];
        for (mut error, details) in refusals.into_iter().zip(details) {
            error.details = details;
            let (result, _) = tokio::join!(
                plugins.call(
                    "beta",
                    PLUGIN_ENTRY,
                    "bounce",
                    json!({}),
                    DEFAULT_CALL_TIMEOUT
                ),
                answer_next(&mut rx, |r| Response::failure(&r.request_id, error.clone())),
            );
            assert_eq!(WireError::from(result.unwrap_err()), error);
        }
    }

    #[tokio::test]
    async fn list_and_require_use_plugins_query() {
        let (info, mut rx) = plugin();
        let plugins = call_ctx(info, None).plugins();
        let answer = json!({"plugins": [
            {"plugin_id": "calc", "name": "Calc", "status": "running"},
        ]});

        let (result, sent) = tokio::join!(
            plugins.list(json!({"has_entry": "add"})),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                answer.clone()
            )),
        );
        assert_eq!(result.unwrap(), answer);
        assert_eq!(sent.op, "plugins.query");
        assert_eq!(sent.args, json!({"filters": {"has_entry": "add"}}));

        let (_, sent) = tokio::join!(
            plugins.list(Value::Null),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                answer.clone()
            )),
        );
        assert_eq!(sent.args, json!({}));

        let (item, sent) = tokio::join!(
            plugins.require("calc"),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                answer.clone()
            )),
        );
        assert_eq!(item.unwrap(), answer["plugins"][0]);
        assert_eq!(sent.args, json!({"filters": {"plugin_ids": ["calc"]}}));

        let (missing, _) = tokio::join!(
            plugins.require("nope"),
            answer_next(&mut rx, |r| Response::success(
                &r.request_id,
                json!({"plugins": []})
            )),
        );
        let err = missing.unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::NotFound, "Plugin 'nope' not found")
        );

        let (garbled, _) = tokio::join!(
            plugins.list(Value::Null),
            answer_next(&mut rx, |r| Response::success(&r.request_id, json!({}))),
        );
        assert_eq!(garbled.unwrap_err().code, ErrorCode::InvalidResponse);

        let err = plugins.list(json!("running")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(rx.try_recv().is_err(), "nothing was sent");
    }

    /// Plays the I/O loop on the runtime while a synchronous handler blocks on its own thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_forms_wait_on_their_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.toml");
        std::fs::write(&path, "[plugin.safety]\nsync_call_in_handler = \"allow\"\n").unwrap();
        let (info, mut rx) = plugin_with_config(Some(path));
        let plugins = call_ctx(info, None).plugins();

        let handler = tokio::task::spawn_blocking(move || {
            let data = plugins.call_entry_blocking("calc:add", json!({}), Duration::from_secs(2));
            let item = plugins.require_blocking("calc");
            (data, item)
        });
        let sent = answer_next(&mut rx, |r| Response::success(&r.request_id, json!(5))).await;
        assert_eq!(
            (sent.op.as_str(), sent.call_id.as_deref()),
            ("plugin.call", Some("c-1"))
        );
        assert_eq!(sent.args["timeout_ms"], 2000);
        answer_next(&mut rx, |r| {
            Response::success(&r.request_id, json!({"plugins": [{"plugin_id": "calc"}]}))
        })
        .await;
        let (data, item) = handler.await.unwrap();
        assert_eq!(data.unwrap(), json!(5));
        assert_eq!(item.unwrap(), json!({"plugin_id": "calc"}));
    }

    #[tokio::test]
    async fn blocking_forms_obey_reject_without_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.toml");
        std::fs::write(
            &path,
            "[plugin.safety]\nsync_call_in_handler = \"reject\"\n",
        )
        .unwrap();
        let (info, mut rx) = plugin_with_config(Some(path));
        let plugins = call_ctx(info, None).plugins();
        let err = tokio::task::spawn_blocking(move || plugins.list_blocking(Value::Null))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(
            err.message
                .starts_with("Sync call 'plugins.list_blocking' invoked inside handler"),
            "{}",
            err.message
        );
        assert!(rx.try_recv().is_err(), "nothing was sent");
    }
}
