//! RunTracker: owns every run record and drives each run through its states
//! (queued → running → succeeded / failed / timeout / canceled). Terminal states never change.
//!
//! Parent: the root supervisor. Children: none; each run's wait for its plugin is a task that
//! reports back with `RunStarted` / `RunFinished`. Senders: the gateway (Create, Get). If it dies,
//! the root restarts it empty (persistence of runs comes with the runs issue); in-flight run tasks
//! then report to a dead actor and are dropped. At most `max_records` runs are kept: beyond that
//! the oldest finished ones are forgotten, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use neko_protocol::{ErrorCode, PluginId, RunRecord, RunStatus, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Map, Value};

use crate::clock::unix_now;
use crate::plugin_supervisor::PluginSupervisorMsg;
use crate::process_host::TriggerRequest;
use crate::run_token::RunTokenSigner;

/// The RunTracker actor.
pub struct RunTracker;

/// What the RunTracker starts with.
pub struct RunTrackerArgs {
    pub plugins: ActorRef<PluginSupervisorMsg>,
    pub signer: RunTokenSigner,
    pub token_ttl: Duration,
    /// Finished runs kept in memory; the oldest finished ones are forgotten beyond it.
    pub max_records: usize,
}

/// `POST /runs` as the tracker needs it.
#[derive(Debug, Clone)]
pub struct RunCreate {
    pub plugin_id: String,
    pub entry_id: String,
    pub args: Map<String, Value>,
    pub task_id: Option<String>,
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// The answer to a create: the record and the token for its WebSocket.
#[derive(Debug, Clone)]
pub struct RunCreated {
    pub record: RunRecord,
    pub run_token: String,
    pub expires_at: u64,
}

/// Messages of the RunTracker.
pub enum RunTrackerMsg {
    /// Create a run and start it.
    Create(RunCreate, RpcReplyPort<RunCreated>),
    /// One run's record.
    Get(String, RpcReplyPort<Option<RunRecord>>),
    /// The run's task handed it to the plugin.
    RunStarted(String),
    /// The plugin answered (or the call failed).
    RunFinished(String, Result<Value, WireError>),
}

/// The RunTracker's state.
pub struct RunTrackerState {
    plugins: ActorRef<PluginSupervisorMsg>,
    signer: RunTokenSigner,
    token_ttl: Duration,
    runs: RunStore,
}

/// The records, with their idempotency keys and a bound on how many are kept.
struct RunStore {
    max_records: usize,
    runs: HashMap<String, RunRecord>,
    /// Run ids, oldest first, for retention.
    order: VecDeque<String>,
    by_idempotency_key: HashMap<String, String>,
}

impl Actor for RunTracker {
    type Msg = RunTrackerMsg;
    type State = RunTrackerState;
    type Arguments = RunTrackerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RunTrackerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RunTrackerState {
            plugins: args.plugins,
            signer: args.signer,
            token_ttl: args.token_ttl,
            runs: RunStore::new(args.max_records),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RunTrackerMsg::Create(req, reply) => {
                let _ = reply.send(state.create(&myself, req));
            }
            RunTrackerMsg::Get(id, reply) => {
                let _ = reply.send(state.runs.runs.get(&id).cloned());
            }
            RunTrackerMsg::RunStarted(id) => state.started(&id),
            RunTrackerMsg::RunFinished(id, outcome) => state.finished(&id, outcome),
        }
        Ok(())
    }
}

impl RunTrackerState {
    fn create(&mut self, myself: &ActorRef<RunTrackerMsg>, req: RunCreate) -> RunCreated {
        let expires_at = unix_now() as u64 + self.token_ttl.as_secs();
        // The same idempotency key returns the same run.
        if let Some(existing) = req
            .idempotency_key
            .as_ref()
            .and_then(|k| self.runs.by_key(k))
        {
            return RunCreated {
                run_token: self.signer.issue(&existing.run_id, expires_at),
                record: existing.clone(),
                expires_at,
            };
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let now = unix_now();
        let record = RunRecord {
            run_id: run_id.clone(),
            plugin_id: req.plugin_id.clone(),
            entry_id: req.entry_id.clone(),
            status: RunStatus::Queued,
            created_at: now,
            updated_at: now,
            task_id: req.task_id.clone(),
            trace_id: req.trace_id.clone(),
            idempotency_key: req.idempotency_key.clone(),
            started_at: None,
            finished_at: None,
            progress: None,
            stage: None,
            message: None,
            step: None,
            step_total: None,
            eta_seconds: None,
            metrics: Map::new(),
            cancel_requested: false,
            cancel_reason: None,
            cancel_requested_at: None,
            error: None,
            result_refs: Vec::new(),
            result: None,
        };
        self.runs.insert(record.clone());
        tokio::spawn(drive_run(
            myself.clone(),
            self.plugins.clone(),
            run_id.clone(),
            req,
        ));
        RunCreated {
            run_token: self.signer.issue(&run_id, expires_at),
            record,
            expires_at,
        }
    }

    fn started(&mut self, id: &str) {
        if let Some(run) = self
            .runs
            .runs
            .get_mut(id)
            .filter(|r| r.status == RunStatus::Queued)
        {
            let now = unix_now();
            run.status = RunStatus::Running;
            run.started_at = Some(now);
            run.updated_at = now;
        }
    }

    fn finished(&mut self, id: &str, outcome: Result<Value, WireError>) {
        let Some(run) = self.runs.runs.get_mut(id) else {
            return;
        };
        if run.status.is_terminal() {
            return;
        }
        let now = unix_now();
        run.finished_at = Some(now);
        run.updated_at = now;
        match outcome {
            Ok(data) => {
                run.status = RunStatus::Succeeded;
                run.progress = Some(run.progress.unwrap_or(0.0).max(1.0));
                run.stage.get_or_insert_with(|| "done".into());
                run.message.get_or_insert_with(|| "done".into());
                run.result = Some(data);
            }
            Err(error) => {
                run.status = match error.code {
                    ErrorCode::Timeout => RunStatus::Timeout,
                    ErrorCode::Canceled => RunStatus::Canceled,
                    _ => RunStatus::Failed,
                };
                run.error = Some(error);
            }
        }
        tracing::debug!(run_id = %id, plugin_id = %run.plugin_id, entry_id = %run.entry_id, status = ?run.status, "run finished");
    }
}

impl RunStore {
    fn new(max_records: usize) -> Self {
        Self {
            max_records: max_records.max(1),
            runs: HashMap::new(),
            order: VecDeque::new(),
            by_idempotency_key: HashMap::new(),
        }
    }

    fn by_key(&self, key: &str) -> Option<&RunRecord> {
        self.by_idempotency_key
            .get(key)
            .and_then(|id| self.runs.get(id))
    }

    fn insert(&mut self, record: RunRecord) {
        if let Some(k) = &record.idempotency_key {
            self.by_idempotency_key
                .insert(k.clone(), record.run_id.clone());
        }
        self.order.push_back(record.run_id.clone());
        self.runs.insert(record.run_id.clone(), record);
        self.evict();
    }

    /// Forgets the oldest finished runs beyond `max_records` (unfinished runs are never dropped).
    fn evict(&mut self) {
        let mut scanned = 0;
        while self.runs.len() > self.max_records && scanned < self.order.len() {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            match self.runs.get(&id) {
                Some(r) if !r.status.is_terminal() => {
                    // Still in flight: keep it, look further.
                    self.order.push_back(id);
                    scanned += 1;
                }
                Some(r) => {
                    if let Some(k) = &r.idempotency_key {
                        self.by_idempotency_key.remove(k);
                    }
                    self.runs.remove(&id);
                }
                None => {}
            }
        }
    }
}

/// One run's trip to its plugin and back.
async fn drive_run(
    tracker: ActorRef<RunTrackerMsg>,
    plugins: ActorRef<PluginSupervisorMsg>,
    run_id: String,
    req: RunCreate,
) {
    let _ = tracker.cast(RunTrackerMsg::RunStarted(run_id.clone()));
    let outcome = match PluginId::new(req.plugin_id.clone()) {
        Err(_) => Err(WireError::new(
            ErrorCode::NotFound,
            format!("Plugin '{}' is not found/registered", req.plugin_id),
        )),
        Ok(plugin_id) => {
            let (args, timeout) = with_run_context(req.args, &run_id);
            let trigger = TriggerRequest {
                entry_id: req.entry_id,
                args,
                run_id: Some(run_id.clone()),
                timeout,
            };
            // No timeout here: the host always answers (deadline timer, process exit), and a host
            // that dies drops the reply port, which ends this call with an error.
            match plugins
                .call(
                    |port| PluginSupervisorMsg::Trigger(plugin_id, trigger, port),
                    None,
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
                Ok(_) | Err(_) => Err(WireError::new(
                    ErrorCode::PluginCrashed,
                    "the plugin's host went away before answering",
                )),
            }
        }
    };
    let _ = tracker.cast(RunTrackerMsg::RunFinished(run_id, outcome));
}

/// Injects `_ctx.run_id` (keeping a caller-provided one, as the reference does) and reads the
/// optional per-run deadline `_ctx.entry_timeout` (seconds; 0 or absent = the entry's own).
fn with_run_context(mut args: Map<String, Value>, run_id: &str) -> (Value, Option<Duration>) {
    let mut ctx = match args.remove("_ctx") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    ctx.entry("run_id")
        .or_insert_with(|| Value::String(run_id.to_string()));
    let timeout = ctx
        .get("entry_timeout")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t > 0.0)
        .map(|t| Duration::from_secs_f64(t.min(86_400.0)));
    args.insert("_ctx".into(), Value::Object(ctx));
    (Value::Object(args), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            plugin_id: "p".into(),
            entry_id: "e".into(),
            status,
            created_at: 0.0,
            updated_at: 0.0,
            task_id: None,
            trace_id: None,
            idempotency_key: Some(format!("k-{id}")),
            started_at: None,
            finished_at: None,
            progress: None,
            stage: None,
            message: None,
            step: None,
            step_total: None,
            eta_seconds: None,
            metrics: Map::new(),
            cancel_requested: false,
            cancel_reason: None,
            cancel_requested_at: None,
            error: None,
            result_refs: Vec::new(),
            result: None,
        }
    }

    /// Retention drops the oldest finished runs and never a run in flight.
    #[test]
    fn retention_keeps_unfinished_runs_and_drops_the_oldest_finished() {
        let mut store = RunStore::new(2);
        store.insert(record("a", RunStatus::Running));
        store.insert(record("b", RunStatus::Succeeded));
        store.insert(record("c", RunStatus::Failed));
        assert!(store.runs.contains_key("a"), "unfinished run kept");
        assert!(!store.runs.contains_key("b"), "oldest finished run dropped");
        assert!(store.runs.contains_key("c"));
        assert!(store.by_key("k-b").is_none());
        assert_eq!(store.by_key("k-c").unwrap().run_id, "c");
    }

    #[test]
    fn run_context_is_injected_and_entry_timeout_read() {
        let args = json!({"x": 1, "_ctx": {"lanlan_name": "a", "entry_timeout": 1.5}});
        let (out, t) = with_run_context(args.as_object().unwrap().clone(), "r1");
        assert_eq!(out["_ctx"]["run_id"], "r1");
        assert_eq!(out["_ctx"]["lanlan_name"], "a");
        assert_eq!(out["x"], 1);
        assert_eq!(t, Some(Duration::from_millis(1500)));
        let (_, t) = with_run_context(Map::new(), "r2");
        assert_eq!(t, None);
    }
}
