//! `neko-plugin-echo`: the bundled example plugin, built on the Rust SDK. Each entry exercises one
//! thing the supervisor must handle, so neko's integration tests drive it:
//!
//! - `echo`: a plain round trip (returns its arguments minus `_ctx`).
//! - `sleep`: a slow call, for deadlines and CANCEL.
//! - `add`: a synchronous entry (runs on the blocking pool).
//! - `fail`: an error RESULT with a chosen code.
//! - `status`: a STATUS message from inside a call.
//! - `exit`: the process dying mid-run, for crash handling and restarts.
//! - `freeze`: the process stopping (SIGSTOP) so heartbeats stop, for the heartbeat deadline.
//! - `progress`: run progress (`run.update`) and an export (`export.push`) from inside a run.
//! - `spin`: a synchronous handler that stops early when canceled, for CANCEL of blocking work.
//! - `push`, `recent`: the message plane from Rust (push messages, read a store back).
//! - `call`, `call_blocking`: a call to another plugin's entry (plugin-to-plugin, through neko),
//!   from an async and from a synchronous handler, for routing, deadlocks and deadlines.
//! - `plugins`: the list of plugins as a plugin sees it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use neko_sdk::bus::Message;
use neko_sdk::plugins::DEFAULT_CALL_TIMEOUT;
use neko_sdk::{Context, Entry, EntryError, ErrorCode, Plugin, RunUpdate, args_without_ctx};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> ExitCode {
    Plugin::new()
        .entry(
            Entry::new("echo")
                .name("Echo")
                .description("Returns its arguments (without neko's _ctx)")
                .input_schema(json!({"type": "object", "additionalProperties": true})),
            |_ctx: Context, args: Value| async move { Ok(args_without_ctx(&args)) },
        )
        .entry(
            Entry::new("sleep")
                .name("Sleep")
                .description("Sleeps for `ms` milliseconds, then returns {\"slept_ms\": ms}")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"ms": {"type": "integer", "minimum": 0}},
                    "required": ["ms"],
                })),
            // The SDK drops this future on CANCEL or deadline, which ends the sleep.
            |_ctx: Context, args: Value| async move {
                let ms = sleep_ms(&args)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            },
        )
        .sync_entry(
            Entry::new("add")
                .name("Add")
                .description("Returns {\"sum\": a + b}")
                .timeout(Duration::from_secs(5))
                .input_schema(json!({
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                })),
            |_ctx: Context, args: Value| add(&args),
        )
        .entry(
            Entry::new("fail")
                .name("Fail")
                .description("Fails with `code` (default PLUGIN_ERROR) and `message`")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                })),
            |_ctx: Context, args: Value| async move { Err(requested_failure(&args)?) },
        )
        .entry(
            Entry::new("status")
                .name("Status")
                .description("Reports its arguments as the plugin's status, returns {\"ok\": true}")
                .input_schema(json!({"type": "object", "additionalProperties": true})),
            |ctx: Context, args: Value| async move {
                ctx.update_status(args_without_ctx(&args))?;
                Ok(json!({"ok": true}))
            },
        )
        .entry(
            Entry::new("exit")
                .name("Exit")
                .description("Exits the process at once with `code` (to test crash handling)")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"code": {"type": "integer"}},
                    "required": ["code"],
                })),
            |_ctx: Context, args: Value| async move {
                let code = exit_code(&args)?;
                tracing::warn!(code, "exiting on request");
                std::process::exit(code)
            },
        )
        .entry(
            Entry::new("freeze")
                .name("Freeze")
                .description("Stops the process with SIGSTOP (to test the heartbeat deadline)")
                .input_schema(json!({"type": "object", "properties": {}})),
            |_ctx: Context, _args: Value| async move {
                tracing::warn!("stopping this process with SIGSTOP");
                // SAFETY: raise() has no memory-safety preconditions; SIGSTOP cannot be caught,
                // so no handler of ours runs.
                let rc = unsafe { libc::raise(libc::SIGSTOP) };
                if rc != 0 {
                    return Err(EntryError::internal("raise(SIGSTOP) failed"));
                }
                // Only reached if someone sends SIGCONT.
                Ok(json!({"resumed": true}))
            },
        )
        .entry(
            Entry::new("progress")
                .name("Progress")
                .description(
                    "Reports progress for `steps` steps (default 3), `delay_ms` apart, then \
                     exports a text; returns {\"steps\", \"export_item_id\"} (run via /runs)",
                )
                .input_schema(json!({
                    "type": "object",
                    "properties": {
                        "steps": {"type": "integer", "minimum": 0},
                        "delay_ms": {"type": "integer", "minimum": 0},
                    },
                })),
            |ctx: Context, args: Value| async move { progress(&ctx, &args).await },
        )
        .sync_entry(
            Entry::new("spin")
                .name("Spin")
                .description(
                    "Blocks its thread for `ms` milliseconds or until canceled; returns \
                     {\"cancelled\": bool}",
                )
                .input_schema(json!({
                    "type": "object",
                    "properties": {"ms": {"type": "integer", "minimum": 0}},
                    "required": ["ms"],
                })),
            |ctx: Context, args: Value| {
                let ms = sleep_ms(&args)?;
                Ok(json!({"cancelled": spin(&ctx, Duration::from_millis(ms))}))
            },
        )
        .entry(
            Entry::new("push")
                .name("Push")
                .description(
                    "Pushes `n` text messages (default 1) from `source` (default \"echo\") to the \
                     message plane; returns {\"pushed\", \"dropped\", \"last_message_id\"}",
                )
                .input_schema(json!({
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer", "minimum": 0},
                        "source": {"type": "string"},
                    },
                })),
            |ctx: Context, args: Value| async move { push(&ctx, &args).await },
        )
        .entry(
            Entry::new("recent")
                .name("Recent")
                .description(
                    "The last `limit` (default 10) records of `store` (default \"messages\"), \
                     read back over the message plane's RPC",
                )
                .input_schema(json!({
                    "type": "object",
                    "properties": {
                        "store": {"type": "string"},
                        "limit": {"type": "integer", "minimum": 1},
                    },
                })),
            |ctx: Context, args: Value| async move {
                let store = args["store"].as_str().unwrap_or("messages");
                let limit = args["limit"].as_u64().unwrap_or(10) as usize;
                let items = ctx.bus().get_recent(store, "all", limit).await?;
                Ok(json!({"items": items}))
            },
        )
        .entry(
            Entry::new("call")
                .name("Call")
                .description(
                    "Calls `target` (entry \"plugin_id:entry_id\" or custom event                      \"plugin_id:event_type:event_id\") with `args` through neko and returns its                      data, or fails with its error",
                )
                .input_schema(call_schema()),
            |ctx: Context, args: Value| async move {
                let call = CallArgs::parse(&args)?;
                let plugins = ctx.plugins();
                if call.target.matches(':').count() == 2 {
                    plugins
                        .call_event(&call.target, call.args, call.timeout)
                        .await
                } else {
                    plugins
                        .call_entry(&call.target, call.args, call.timeout)
                        .await
                }
            },
        )
        .event(
            "echo_event",
            Entry::new("shout")
                .name("Shout")
                .description("Custom event: returns `text` upper-cased"),
            |_ctx: Context, args: Value| async move {
                let text = args.get("text").and_then(Value::as_str).unwrap_or("");
                Ok(json!({"shouted": text.to_uppercase()}))
            },
        )
        .sync_entry(
            Entry::new("call_blocking")
                .name("Call (blocking)")
                .description(
                    "`call` from a synchronous handler, subject to the sync call policy \
                     ([plugin.safety] sync_call_in_handler)",
                )
                .input_schema(call_schema()),
            |ctx: Context, args: Value| {
                let call = CallArgs::parse(&args)?;
                ctx.plugins()
                    .call_entry_blocking(&call.target, call.args, call.timeout)
            },
        )
        .entry(
            Entry::new("call_loop")
                .name("Call loop")
                .description(
                    "Calls `target` (\"plugin_id:entry_id\") `n` times, `concurrency` at once, \
                     and returns each call's latency (neko-bench's calls figure)",
                )
                .timeout(Duration::from_secs(600))
                .input_schema(json!({
                    "type": "object",
                    "properties": {
                        "target": {"type": "string"},
                        "n": {"type": "integer", "minimum": 0},
                        "concurrency": {"type": "integer", "minimum": 1},
                    },
                    "required": ["target", "n"],
                })),
            |ctx: Context, args: Value| async move { call_loop(&ctx, &args).await },
        )
        .entry(
            Entry::new("plugins")
                .name("Plugins")
                .description("Lists plugins as other plugins see them, filtered by `filters`")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"filters": {"type": "object"}},
                })),
            |ctx: Context, args: Value| async move {
                let filters = args.get("filters").cloned().unwrap_or(Value::Null);
                ctx.plugins().list(filters).await
            },
        )
        .run()
        .await
}

/// `call_loop`: `n` calls of `target` with `{}`, `concurrency` at once; `{"latencies_us":
/// [...], "elapsed_s", "failed", "first_error"}`, the latencies timed around each SDK call.
async fn call_loop(ctx: &Context, args: &Value) -> Result<Value, EntryError> {
    let target = CallArgs::parse(args)?.target;
    let n = optional_u64(args, "n", 0)? as usize;
    let concurrency = (optional_u64(args, "concurrency", 1)? as usize).clamp(1, n.max(1));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let share = n / concurrency + usize::from(w < n % concurrency);
        let (ctx, target) = (ctx.clone(), target.clone());
        workers.spawn(async move {
            let (mut latencies, mut errors) = (Vec::with_capacity(share), Vec::new());
            for _ in 0..share {
                let t = Instant::now();
                match ctx
                    .plugins()
                    .call_entry(&target, json!({}), DEFAULT_CALL_TIMEOUT)
                    .await
                {
                    Ok(_) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::with_capacity(n), Vec::new());
    while let Some(done) = workers.join_next().await {
        let (l, e) =
            done.map_err(|e| EntryError::internal(format!("a caller task failed: {e}")))?;
        latencies.extend(l);
        errors.extend(e);
    }
    Ok(json!({
        "latencies_us": latencies,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "failed": errors.len(),
        "first_error": errors.first(),
    }))
}

/// What `call` and `call_blocking` are asked to do.
#[derive(Debug, PartialEq)]
struct CallArgs {
    /// `"plugin_id:entry_id"`; the SDK checks its shape.
    target: String,
    args: Value,
    timeout: Duration,
}

impl CallArgs {
    /// `{"target", "args"?, "timeout_ms"?}`; `args` defaults to `{}`, the timeout to the SDK's.
    fn parse(args: &Value) -> Result<Self, EntryError> {
        let target = args.get("target").and_then(Value::as_str).ok_or_else(|| {
            EntryError::validation("target must be a string (\"plugin_id:entry_id\")")
                .with_details(json!({"field": "target"}))
        })?;
        let default_ms = u64::try_from(DEFAULT_CALL_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        Ok(Self {
            target: target.to_owned(),
            args: args.get("args").cloned().unwrap_or_else(|| json!({})),
            timeout: Duration::from_millis(optional_u64(args, "timeout_ms", default_ms)?),
        })
    }
}

fn call_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "target": {"type": "string", "description": "plugin_id:entry_id"},
            "args": {"type": "object"},
            "timeout_ms": {"type": "integer", "minimum": 1},
        },
        "required": ["target"],
    })
}

/// `progress`: one `run.update` per step, then one text export.
async fn progress(ctx: &Context, args: &Value) -> Result<Value, EntryError> {
    let steps = optional_u64(args, "steps", 3)?;
    let delay = Duration::from_millis(optional_u64(args, "delay_ms", 0)?);
    for step in 1..=steps {
        if step > 1 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        ctx.run_update(RunUpdate {
            progress: Some(step as f64 / steps as f64),
            stage: Some("step".into()),
            step: Some(step),
            step_total: Some(steps),
            ..RunUpdate::default()
        })
        .await?;
    }
    let export_item_id = ctx.export_push_text("step log", None).await?;
    Ok(json!({"steps": steps, "export_item_id": export_item_id}))
}

/// Busy-waits in 10 ms slices until `total` has passed or the call is canceled (or past its
/// deadline); true when it stopped because of the cancel.
fn spin(ctx: &Context, total: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < total {
        if ctx.is_cancelled() {
            tracing::info!(call_id = ctx.call_id(), "spin canceled");
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ctx.is_cancelled()
}

/// `field` from `args`: a non-negative integer, `default` when absent or null.
fn optional_u64(args: &Value, field: &str, default: u64) -> Result<u64, EntryError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            EntryError::validation(format!("{field} must be a non-negative integer"))
                .with_details(json!({"field": field}))
        }),
    }
}

/// `ms` from `{"ms": N}`: a non-negative integer.
fn sleep_ms(args: &Value) -> Result<u64, EntryError> {
    args.get("ms").and_then(Value::as_u64).ok_or_else(|| {
        EntryError::validation("ms must be a non-negative integer")
            .with_details(json!({"field": "ms"}))
    })
}

/// `{"sum": a + b}`: an integer when both are integers (and the sum fits), a float otherwise.
fn add(args: &Value) -> Result<Value, EntryError> {
    let number = |field: &str| {
        args.get(field).filter(|v| v.is_number()).ok_or_else(|| {
            EntryError::validation(format!("{field} must be a number"))
                .with_details(json!({"field": field}))
        })
    };
    let (a, b) = (number("a")?, number("b")?);
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64())
        && let Some(sum) = a.checked_add(b)
    {
        return Ok(json!({"sum": sum}));
    }
    // Both are numbers, so as_f64 is Some; 0.0 is never used.
    let sum = a.as_f64().unwrap_or_default() + b.as_f64().unwrap_or_default();
    Ok(json!({"sum": sum}))
}

/// The error `fail` was asked for.
fn requested_failure(args: &Value) -> Result<EntryError, EntryError> {
    let text = |field: &str, default: &str| match args.get(field) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(EntryError::validation(format!("{field} must be a string"))
            .with_details(json!({"field": field}))),
    };
    let code = text("code", ErrorCode::PluginError.as_str())?;
    let message = text("message", "requested failure")?;
    Ok(EntryError::new(ErrorCode::from(code), message))
}

/// `code` from `{"code": N}`: an integer that fits an exit status.
fn exit_code(args: &Value) -> Result<i32, EntryError> {
    args.get("code")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| {
            EntryError::validation("code must be an integer").with_details(json!({"field": "code"}))
        })
}

/// Pushes `n` messages as fast as the SDK takes them (it slows a loop to the plane's pace); a
/// message that found no room within the SDK's wait counts as dropped.
async fn push(ctx: &Context, args: &Value) -> Result<Value, EntryError> {
    let n = args["n"].as_u64().unwrap_or(1);
    let source = args["source"].as_str().unwrap_or("echo");
    let (mut pushed, mut dropped, mut last) = (0u64, 0u64, None);
    for i in 0..n {
        let message = Message::new(source, "text", json!(format!("message {i}")));
        match ctx.bus().push_message(message).await {
            Ok(id) => {
                pushed += 1;
                last = Some(id);
            }
            Err(e) if e.code == ErrorCode::RateLimited => {
                dropped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!({"pushed": pushed, "dropped": dropped, "last_message_id": last}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_keeps_integers_integral() {
        assert_eq!(add(&json!({"a": 2, "b": 3})).unwrap(), json!({"sum": 5}));
        assert_eq!(
            add(&json!({"a": 0.5, "b": 2})).unwrap(),
            json!({"sum": 2.5})
        );
        assert_eq!(
            add(&json!({"a": i64::MAX, "b": 1})).unwrap(),
            json!({"sum": i64::MAX as f64 + 1.0})
        );
        let err = add(&json!({"a": "2", "b": 3})).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert_eq!(err.details, Some(json!({"field": "a"})));
    }

    #[test]
    fn fail_defaults_and_overrides() {
        let e = requested_failure(&json!({})).unwrap();
        assert_eq!(e.code, ErrorCode::PluginError);
        assert_eq!(e.message, "requested failure");
        let e = requested_failure(&json!({"code": "TIMEOUT", "message": "late"})).unwrap();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Timeout, "late"));
        let e = requested_failure(&json!({"code": "MY_OWN"})).unwrap();
        assert_eq!(e.code.as_str(), "MY_OWN");
        let bad = requested_failure(&json!({"code": 3})).unwrap_err();
        assert_eq!(bad.code, ErrorCode::ValidationError);
    }

    #[test]
    fn progress_arguments_default_and_validate() {
        assert_eq!(optional_u64(&json!({}), "steps", 3).unwrap(), 3);
        assert_eq!(
            optional_u64(&json!({"steps": null}), "steps", 3).unwrap(),
            3
        );
        assert_eq!(optional_u64(&json!({"steps": 5}), "steps", 3).unwrap(), 5);
        let err = optional_u64(&json!({"delay_ms": -1}), "delay_ms", 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert_eq!(err.details, Some(json!({"field": "delay_ms"})));
    }

    #[test]
    fn call_arguments_default_and_validate() {
        let call = CallArgs::parse(&json!({"target": "calc:add"})).unwrap();
        assert_eq!(
            call,
            CallArgs {
                target: "calc:add".into(),
                args: json!({}),
                timeout: DEFAULT_CALL_TIMEOUT,
            }
        );
        let call = CallArgs::parse(&json!({"target": "a:b", "args": {"x": 1}, "timeout_ms": 250}))
            .unwrap();
        assert_eq!(call.args, json!({"x": 1}));
        assert_eq!(call.timeout, Duration::from_millis(250));
        let err = CallArgs::parse(&json!({"args": {}})).unwrap_err();
        assert_eq!(err.details, Some(json!({"field": "target"})));
        let err = CallArgs::parse(&json!({"target": "a:b", "timeout_ms": "1"})).unwrap_err();
        assert_eq!(err.details, Some(json!({"field": "timeout_ms"})));
    }

    #[test]
    fn sleep_and_exit_validate_their_numbers() {
        assert_eq!(sleep_ms(&json!({"ms": 20})).unwrap(), 20);
        assert!(sleep_ms(&json!({"ms": -1})).is_err());
        assert!(sleep_ms(&json!({})).is_err());
        assert_eq!(exit_code(&json!({"code": 3})).unwrap(), 3);
        assert!(exit_code(&json!({"code": "3"})).is_err());
        assert!(exit_code(&json!({"code": 1_i64 << 40})).is_err());
    }
}
