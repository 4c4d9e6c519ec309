//! One TRIGGER's task: run the handler under the call's deadline and cancel signal, and produce
//! the RESULT. The I/O loop spawns one of these per TRIGGER, so entries run concurrently.

use std::sync::Arc;
use std::time::Duration;

use neko_protocol::{CallResult, ErrorCode, WireError};
use serde_json::Value;

use crate::context::{CancelSignal, Context};
use crate::entry::Handler;
use crate::error::EntryError;

/// Everything one call's task needs.
pub(crate) struct Call {
    pub(crate) call_id: String,
    pub(crate) entry_id: String,
    pub(crate) handler: Handler,
    pub(crate) ctx: Context,
    pub(crate) args: Value,
    pub(crate) deadline: Option<Duration>,
    pub(crate) cancel: Arc<CancelSignal>,
}

impl Call {
    /// Runs the handler and returns the call id with the RESULT to send.
    pub(crate) async fn run(self) -> (String, CallResult) {
        let Self {
            call_id,
            entry_id,
            handler,
            ctx,
            args,
            deadline,
            cancel,
        } = self;
        let work = handler.call(&entry_id, ctx, args);
        let bounded = async {
            match deadline {
                Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| limit),
                None => Ok(work.await),
            }
        };
        // `biased`: a cancel that raced with completion still wins, since the supervisor has
        // stopped waiting for the data anyway.
        let outcome = tokio::select! {
            biased;
            () = cancel.wait() => Err(EntryError::new(ErrorCode::Canceled, "canceled")),
            finished = bounded => match finished {
                Ok(outcome) => outcome,
                Err(limit) => {
                    // The async handler has just been dropped; a synchronous one is still running
                    // on its thread and can only notice through its context.
                    cancel.cancel();
                    Err(timed_out(&entry_id, limit))
                }
            },
        };
        let result = match outcome {
            Ok(data) => CallResult::success(call_id.as_str(), data),
            Err(e) => CallResult::failure(call_id.as_str(), WireError::from(e)),
        };
        (call_id, result)
    }
}

/// The deadline the SDK enforces: the TRIGGER's `timeout_ms`, or, when that is 0 (no deadline
/// from the supervisor), the entry's own declared timeout.
pub(crate) fn deadline(trigger_timeout_ms: u64, entry_timeout_ms: Option<u64>) -> Option<Duration> {
    match trigger_timeout_ms {
        0 => entry_timeout_ms.filter(|ms| *ms > 0),
        ms => Some(ms),
    }
    .map(Duration::from_millis)
}

/// The RESULT for a TRIGGER naming an entry the plugin did not declare.
/// NOT_FOUND for a TRIGGER naming nothing this plugin serves; `what` is e.g. `Entry 'x'`.
pub(crate) fn not_found(call_id: &str, what: &str, plugin_id: &str) -> CallResult {
    CallResult::failure(
        call_id,
        WireError::new(
            ErrorCode::NotFound,
            format!("{what} not found in plugin '{plugin_id}'"),
        ),
    )
}

fn timed_out(entry_id: &str, limit: Duration) -> EntryError {
    EntryError::new(
        ErrorCode::Timeout,
        format!("Entry '{entry_id}' timed out after {}ms", limit.as_millis()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_deadline_wins_and_zero_falls_back_to_the_entry() {
        assert_eq!(deadline(500, Some(100)), Some(Duration::from_millis(500)));
        assert_eq!(deadline(0, Some(100)), Some(Duration::from_millis(100)));
        assert_eq!(deadline(0, Some(0)), None);
        assert_eq!(deadline(0, None), None);
    }

    #[test]
    fn not_found_uses_the_reference_message() {
        let r = not_found("c-1", "Entry 'nope'", "echo");
        assert!(!r.ok);
        let err = r.error.unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "Entry 'nope' not found in plugin 'echo'");
    }

    #[test]
    fn timeout_message_names_entry_and_limit() {
        let e = timed_out("sleep", Duration::from_millis(250));
        assert_eq!(e.code, ErrorCode::Timeout);
        assert_eq!(e.message, "Entry 'sleep' timed out after 250ms");
    }
}
