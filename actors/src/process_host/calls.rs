//! Plugin-to-plugin calls made by this host's plugin (the `plugin.call` request op), and the
//! `plugins.query` op.
//!
//! A call is routed by neko, never plugin to plugin: the host checks the arguments, cuts the
//! deadline to what the waiting handler has left, asks the DeadlockDetector, then triggers the
//! callee through the PluginSupervisor (which waits for a callee that is starting). Everything
//! after the check runs in a task, so the host keeps serving its plugin meanwhile; the task
//! reports back with `CallDone`, which answers the plugin.

use std::time::{Duration, Instant};

use neko_protocol::{ErrorCode, PLUGIN_ENTRY, PluginId, Response, WireError};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use serde_json::Value;

use super::{CallVia, ProcessHostMsg, TriggerRequest};
use crate::deadlock_detector::{CallEdge, DeadlockDetectorMsg};
use crate::plugin_query;
use crate::plugin_supervisor::PluginSupervisorMsg;
use crate::registry::RegistryMsg;
use crate::root::TreeRefs;
use crate::status_manager::StatusManagerMsg;

/// A call's deadline when the plugin names none (the reference's 10 s).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest deadline a plugin may ask for.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Calls one plugin may have in flight at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;

/// How long the actors answering a call's bookkeeping may take.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Extra wait on top of the callee's deadline: the callee's host answers at the deadline itself.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// A `plugin.call` request's arguments, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CallArgs {
    pub plugin_id: PluginId,
    pub event_type: String,
    pub event_id: String,
    pub args: Value,
    pub timeout: Duration,
}

/// Checks `{"plugin_id", "event_type"?, "event_id", "args"?, "timeout_ms"?}` (PROTOCOL.md §9b).
pub fn parse_call_args(args: &Value) -> Result<CallArgs, WireError> {
    let invalid = |m: String| WireError::new(ErrorCode::ValidationError, m);
    let Some(obj) = args.as_object() else {
        return Err(invalid("plugin.call args must be an object".into()));
    };
    let text = |key: &str| -> Result<Option<&str>, WireError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
            Some(_) => Err(invalid(format!("{key} must be a non-empty string"))),
        }
    };
    let plugin_id = text("plugin_id")?.ok_or_else(|| invalid("plugin_id is required".into()))?;
    let plugin_id = PluginId::new(plugin_id).map_err(|_| {
        invalid(format!(
            "Plugin '{plugin_id}' not found (invalid plugin id)"
        ))
    })?;
    let event_type = text("event_type")?.unwrap_or(PLUGIN_ENTRY).to_string();
    let event_id = text("event_id")?
        .ok_or_else(|| invalid("event_id is required".into()))?
        .to_string();
    let args = match obj.get("args") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid("args must be an object".into())),
    };
    let timeout = match obj.get("timeout_ms") {
        None | Some(Value::Null) => DEFAULT_CALL_TIMEOUT,
        Some(v) => match v.as_f64() {
            Some(ms) if ms > 0.0 && ms.is_finite() => {
                Duration::from_secs_f64(ms / 1000.0).min(MAX_CALL_TIMEOUT)
            }
            _ => return Err(invalid("timeout_ms must be a positive number".into())),
        },
    };
    Ok(CallArgs {
        plugin_id,
        event_type,
        event_id,
        args,
        timeout,
    })
}

/// Runs one checked call to its end and reports `CallDone` to the calling host.
pub(super) async fn route(
    refs: Option<TreeRefs>,
    edge: CallEdge,
    args: Value,
    host: ActorRef<ProcessHostMsg>,
    request_id: String,
) {
    let id = edge.id;
    let outcome = match refs {
        None => Err(WireError::new(
            ErrorCode::NotReady,
            "neko is restarting its actors",
        )),
        Some(refs) => call_through(&refs, edge, args).await,
    };
    let _ = host.cast(ProcessHostMsg::CallDone {
        id,
        response: Response::from_outcome(request_id, outcome),
    });
}

async fn call_through(refs: &TreeRefs, edge: CallEdge, args: Value) -> Result<Value, WireError> {
    let id = edge.id;
    let callee = edge.callee.clone();
    let req = TriggerRequest {
        entry_id: edge.event_id.clone(),
        args,
        run_id: None,
        timeout: Some(edge.timeout),
        event_type: (edge.event_type != PLUGIN_ENTRY).then(|| edge.event_type.clone()),
        via: Some(CallVia {
            id,
            caller: edge.caller.clone(),
        }),
    };
    let timeout = edge.timeout;
    // Fail closed: without the detector, a call cannot be checked.
    match refs
        .calls
        .call(|r| DeadlockDetectorMsg::Enter(edge, r), Some(ACTOR_TIMEOUT))
        .await
    {
        Ok(CallResult::Success(Ok(()))) => {}
        Ok(CallResult::Success(Err(refused))) => return Err(refused),
        _ => {
            return Err(WireError::new(
                ErrorCode::NotReady,
                "the deadlock detector is restarting; call again",
            ));
        }
    }
    let outcome = match refs
        .plugins
        .call(
            |r| PluginSupervisorMsg::Trigger(callee, req, r),
            Some(timeout + REPLY_SLACK),
        )
        .await
    {
        Ok(CallResult::Success(outcome)) => outcome,
        Ok(CallResult::Timeout) => Err(WireError::deadline("plugin call timed out")),
        // The callee's host took the call and stopped before answering (its process was killed
        // at that moment): a crash, as for any call it was serving.
        Ok(CallResult::SenderError) => Err(host_went_away()),
        Err(_) => Err(WireError::new(
            ErrorCode::Internal,
            "the plugin supervisor did not answer",
        )),
    };
    let _ = refs.calls.cast(DeadlockDetectorMsg::Leave {
        id,
        outcome: outcome.as_ref().map(|_| ()).map_err(Clone::clone),
    });
    outcome
}

/// Answers `plugins.query` from the registry and the status manager.
pub(super) async fn query(
    refs: Option<TreeRefs>,
    args: Value,
    host: ActorRef<ProcessHostMsg>,
    request_id: String,
) {
    let outcome = async {
        let refs = refs
            .ok_or_else(|| WireError::new(ErrorCode::NotReady, "neko is restarting its actors"))?;
        let filters = plugin_query::Filters::parse(args.get("filters"))?;
        let unavailable =
            || WireError::new(ErrorCode::Internal, "the plugin registry did not answer");
        let snapshot = match refs
            .registry
            .call(RegistryMsg::List, Some(ACTOR_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(s)) => s,
            _ => return Err(unavailable()),
        };
        let statuses = match refs
            .status
            .call(StatusManagerMsg::List, Some(ACTOR_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(s)) => s,
            _ => return Err(unavailable()),
        };
        Ok(plugin_query::answer(&snapshot.plugins, &statuses, &filters))
    }
    .await;
    let _ = host.cast(ProcessHostMsg::Respond(Response::from_outcome(
        request_id, outcome,
    )));
}

/// The answer to a call whose caller no longer waits.
pub fn caller_gone() -> WireError {
    WireError::new(
        ErrorCode::Canceled,
        "the calling plugin no longer waits for this call",
    )
}

/// The answer to a call whose host stopped without answering it.
pub fn host_went_away() -> WireError {
    WireError::new(
        ErrorCode::PluginCrashed,
        "the plugin's host went away before answering",
    )
}

/// What is left of a deadline, `None` once it passed.
pub(super) fn time_left(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_args_are_checked_with_defaults() {
        let a = parse_call_args(&json!({"plugin_id": "beta", "event_id": "bounce"})).unwrap();
        assert_eq!(a.event_type, PLUGIN_ENTRY);
        assert_eq!(a.args, json!({}));
        assert_eq!(a.timeout, DEFAULT_CALL_TIMEOUT);
        let a = parse_call_args(&json!({
            "plugin_id": "beta", "event_type": "tick", "event_id": "t",
            "args": {"x": 1}, "timeout_ms": 1500,
        }))
        .unwrap();
        assert_eq!(
            (a.event_type.as_str(), a.timeout),
            ("tick", Duration::from_millis(1500))
        );
        for (bad, why) in [
            (json!([]), "must be an object"),
            (json!({"event_id": "x"}), "plugin_id is required"),
            (json!({"plugin_id": "b"}), "event_id is required"),
            (
                json!({"plugin_id": 3, "event_id": "x"}),
                "plugin_id must be",
            ),
            (
                json!({"plugin_id": "../x", "event_id": "x"}),
                "invalid plugin id",
            ),
            (
                json!({"plugin_id": "b", "event_id": "x", "args": [1]}),
                "args must be",
            ),
            (
                json!({"plugin_id": "b", "event_id": "x", "timeout_ms": 0}),
                "timeout_ms",
            ),
            (
                json!({"plugin_id": "b", "event_id": "x", "timeout_ms": "1"}),
                "timeout_ms",
            ),
        ] {
            let err = parse_call_args(&bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError);
            assert!(err.message.contains(why), "{bad}: {}", err.message);
        }
    }
}
