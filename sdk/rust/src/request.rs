//! Plugin → supervisor requests (PROTOCOL.md §9a): what [`crate::Context::request`] and the run
//! helpers built on it ([`crate::Context::run_update`], `export_push_*`) send, and the I/O loop's
//! table of requests still waiting for their RESPONSE.
//!
//! A context never touches the socket: it hands the REQUEST and a oneshot sender to the I/O loop
//! through the outbox (`Outgoing::Request`). The loop records the sender under the request id
//! (`Pending`), sends the frame, and completes the sender when the RESPONSE with that id
//! arrives. When the loop ends, the table and the outbox drop with it, so every waiting request
//! learns at once that no answer will come.

use std::collections::HashMap;
use std::time::Duration;

use neko_protocol::{Message, Request, Response};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::error::EntryError;

/// How long the request helpers wait for the supervisor's answer (the reference's 5 s); change it
/// with [`crate::Context::with_request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest payload [`crate::Context::export_push_binary`] sends inline (the reference's
/// 256 KiB); larger data should be pushed as a URL.
pub const EXPORT_BINARY_MAX_BYTES: usize = 256 * 1024;

/// A progress report for the current run, sent by [`crate::Context::run_update`] as `run.update`.
/// Only the fields that are `Some` travel; the supervisor keeps the others as they were.
///
/// ```
/// use neko_sdk::RunUpdate;
///
/// let update = RunUpdate {
///     progress: Some(0.5),
///     stage: Some("download".into()),
///     ..RunUpdate::default()
/// };
/// # let _ = update;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunUpdate {
    /// The run to update; the current call's run when `None`.
    pub run_id: Option<String>,
    /// Fraction done, `0.0..=1.0`.
    pub progress: Option<f64>,
    /// A short name for the current phase.
    pub stage: Option<String>,
    /// A human-readable line about what is happening.
    pub message: Option<String>,
    /// The current step, counted from 1.
    pub step: Option<u64>,
    /// How many steps there are.
    pub step_total: Option<u64>,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Free-form numbers (or anything JSON) to show with the run.
    pub metrics: Option<Map<String, Value>>,
}

impl RunUpdate {
    /// The `run.update` arguments: `run_id` plus the fields that are set, in the reference's order.
    pub(crate) fn into_args(self, run_id: String) -> Result<Value, EntryError> {
        let mut args = Map::new();
        args.insert("run_id".into(), Value::String(run_id));
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                args.insert(key.to_owned(), value);
            }
        };
        put("progress", finite("progress", self.progress)?);
        put("stage", self.stage.map(Value::String));
        put("message", self.message.map(Value::String));
        put("step", self.step.map(Value::from));
        put("step_total", self.step_total.map(Value::from));
        put("eta_seconds", finite("eta_seconds", self.eta_seconds)?);
        put("metrics", self.metrics.map(Value::Object));
        Ok(Value::Object(args))
    }
}

/// `value` as a JSON number; JSON has no NaN or infinity, and sending `null` would read as "unset".
fn finite(field: &str, value: Option<f64>) -> Result<Option<Value>, EntryError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() => Ok(Some(Value::from(v))),
        Some(_) => Err(EntryError::validation(format!(
            "{field} must be a finite number"
        ))),
    }
}

/// What a context hands to the I/O loop, which owns the socket.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Send as is (STATUS).
    Message(Message),
    /// Send the REQUEST and complete the sender with its RESPONSE.
    Request(Request, oneshot::Sender<Response>),
}

/// The requests sent and not yet answered, by request id. Owned by the I/O loop.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: HashMap<String, oneshot::Sender<Response>>,
}

impl Pending {
    /// Records a request about to be sent. Requests whose waiter gave up (timed out, or its
    /// handler was dropped) are forgotten here, so the table holds only live ones.
    pub(crate) fn insert(&mut self, request_id: String, reply: oneshot::Sender<Response>) {
        self.waiting.retain(|_, waiter| !waiter.is_closed());
        self.waiting.insert(request_id, reply);
    }

    /// Removes a request and returns its waiter (when sending it failed).
    pub(crate) fn remove(&mut self, request_id: &str) -> Option<oneshot::Sender<Response>> {
        self.waiting.remove(request_id)
    }

    /// Hands `response` to its waiter. A response nobody waits for (the waiter gave up, or the id
    /// was never sent) is dropped.
    pub(crate) fn resolve(&mut self, response: Response) {
        let request_id = response.request_id.clone();
        match self.waiting.remove(&request_id) {
            Some(waiter) => {
                if waiter.send(response).is_err() {
                    tracing::debug!(request_id, "RESPONSE arrived after its request gave up");
                }
            }
            None => tracing::debug!(request_id, "RESPONSE for no open request; dropped"),
        }
    }

    /// How many requests are recorded (live or not yet pruned).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neko_protocol::{ErrorCode, WireError};
    use serde_json::json;

    #[test]
    fn run_update_sends_only_the_fields_that_are_set() {
        let args = RunUpdate::default().into_args("r-1".into()).unwrap();
        assert_eq!(args, json!({"run_id": "r-1"}));

        let mut metrics = Map::new();
        metrics.insert("loss".into(), json!(0.25));
        let full = RunUpdate {
            run_id: Some("ignored: the caller resolves it".into()),
            progress: Some(0.5),
            stage: Some("train".into()),
            message: Some("half way".into()),
            step: Some(2),
            step_total: Some(4),
            eta_seconds: Some(1.5),
            metrics: Some(metrics),
        };
        assert_eq!(
            full.into_args("r-2".into()).unwrap(),
            json!({
                "run_id": "r-2", "progress": 0.5, "stage": "train", "message": "half way",
                "step": 2, "step_total": 4, "eta_seconds": 1.5, "metrics": {"loss": 0.25},
            })
        );
    }

    #[test]
    fn run_update_refuses_numbers_json_cannot_hold() {
        let nan = RunUpdate {
            progress: Some(f64::NAN),
            ..RunUpdate::default()
        };
        let err = nan.into_args("r".into()).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert_eq!(err.message, "progress must be a finite number");
        let inf = RunUpdate {
            eta_seconds: Some(f64::INFINITY),
            ..RunUpdate::default()
        };
        assert!(inf.into_args("r".into()).is_err());
    }

    #[tokio::test]
    async fn responses_reach_their_waiter_and_strays_are_dropped() {
        let mut pending = Pending::default();
        let (tx, rx) = oneshot::channel();
        pending.insert("req-1".into(), tx);
        pending.resolve(Response::success("nobody", json!(1)));
        pending.resolve(Response::failure(
            "req-1",
            WireError::new(ErrorCode::NotFound, "no"),
        ));
        let got = rx.await.unwrap();
        assert!(!got.ok);
        assert_eq!(pending.len(), 0);

        // A waiter that gave up: its late response is dropped, and the entry is pruned on the
        // next insert.
        let (tx, rx) = oneshot::channel();
        pending.insert("req-2".into(), tx);
        let (tx3, _rx3) = oneshot::channel();
        drop(rx);
        pending.insert("req-3".into(), tx3);
        assert_eq!(pending.len(), 1);
        pending.resolve(Response::success("req-2", json!(null)));
        assert_eq!(pending.len(), 1);
        assert!(pending.remove("req-3").is_some());
    }
}
