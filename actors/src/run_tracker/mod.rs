//! RunTracker: owns every run and drives it through its states (queued → running →
//! succeeded / failed / timeout / canceled, with cancel_requested on the way). Terminal states
//! never change.
//!
//! Parent: the root supervisor. Children: none; each run's trip to its plugin is a task that asks
//! the tracker before it triggers (a run canceled while queued never reaches the plugin) and
//! reports back with `RunFinished`. Senders: the gateway (create, get, list, cancel, exports),
//! process hosts (a plugin's `run.update` / `export.push`).
//!
//! Records live in the [`RunDb`] (SQLite under the data dir, or in memory when persistence is
//! off: one code path). Writes are group-committed: the first write opens a batch and queues a
//! `Flush` behind the messages already waiting, so everything handled until then shares one
//! commit. A create is acknowledged only after its commit, so a restart, even by SIGKILL, loses
//! no acknowledged run; runs that were in flight come back `failed` with `SUPERVISOR_RESTARTED`. Runs not yet terminal are also kept in memory (`live`),
//! which is what the hot path reads. Changes go out on a broadcast channel for the WebSockets.

mod plugin_ops;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use neko_protocol::{ErrorCode, ExportItem, PluginId, RunRecord, RunStatus, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::clock::{iso_from_unix, unix_now};
use crate::plugin_supervisor::PluginSupervisorMsg;
use crate::process_host::TriggerRequest;
use crate::process_host::calls::host_went_away;
use crate::run_db::{BlobMeta, RunDb, RunDbError, RunFilter};
use crate::run_token::RunTokenSigner;

pub use plugin_ops::EXPORT_INLINE_BINARY_MAX_BYTES;

/// The longest a client may ask a read to wait for a run to end.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often retention runs.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Runs one retention pass deletes at most (~10 ms of SQLite work). A larger backlog takes
/// several passes, [`PRUNE_PACE`] apart, and the tracker serves runs in between: one pass over
/// 70,000 runs held every run request for over a second, and back-to-back passes of 1,000 still
/// delayed a run by 0.3 s (each of its steps waiting behind a pass).
const PRUNE_CHUNK: usize = 500;
/// The pause between two passes of one retention round.
const PRUNE_PACE: Duration = Duration::from_millis(25);

/// The RunTracker actor.
pub struct RunTracker;

/// Where and how long runs are kept.
#[derive(Debug, Clone)]
pub struct RunStoreSettings {
    /// The SQLite file; `None` keeps runs in memory only (lost at exit).
    pub path: Option<PathBuf>,
    /// Finished runs kept; beyond it the oldest are deleted.
    pub max_records: usize,
    /// Finished runs older than this are deleted; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// Where uploaded blobs are kept (`<blob_id>.upload` while uploading, then `.blob`).
    pub blob_dir: PathBuf,
    /// Largest upload; a session may ask for less.
    pub blob_max_bytes: u64,
}

/// Why an upload or a blob read is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    Store(String),
}

/// Where an accepted upload writes.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    pub blob: BlobMeta,
    /// The file being written.
    pub partial: PathBuf,
    /// Where it goes when complete.
    pub complete: PathBuf,
}

/// What the RunTracker starts with.
pub struct RunTrackerArgs {
    pub plugins: ActorRef<PluginSupervisorMsg>,
    pub signer: RunTokenSigner,
    pub token_ttl: Duration,
    pub store: RunStoreSettings,
    /// Where changes go (created by the tree, so subscribers outlive a tracker restart).
    pub events: broadcast::Sender<RunEvent>,
}

/// A change, as the WebSockets forward it, with its bus revision (`rev`): one counter per bus for
/// the whole server, as in the reference, so every client and the message plane see the same.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A run was created (`add`) or changed (`change`).
    Run {
        op: &'static str,
        record: Box<RunRecord>,
        rev: u64,
    },
    /// A run got an export item.
    Export {
        plugin_id: String,
        item: Box<ExportItem>,
        rev: u64,
    },
}

/// The `runs` and `export` buses' revisions: process-wide, so a restarted tracker goes on counting.
static RUNS_REV: AtomicU64 = AtomicU64::new(0);
static EXPORT_REV: AtomicU64 = AtomicU64::new(0);

impl RunEvent {
    /// The reference's bus name: `runs` or `export`.
    pub fn bus(&self) -> &'static str {
        match self {
            RunEvent::Run { .. } => "runs",
            RunEvent::Export { .. } => "export",
        }
    }

    /// `add` or `change`.
    pub fn op(&self) -> &'static str {
        match self {
            RunEvent::Run { op, .. } => op,
            RunEvent::Export { .. } => "add",
        }
    }

    /// The run the change is about.
    pub fn run_id(&self) -> &str {
        match self {
            RunEvent::Run { record, .. } => &record.run_id,
            RunEvent::Export { item, .. } => &item.run_id,
        }
    }

    /// The plugin the run belongs to (may be empty for an export of an unknown owner).
    pub fn plugin_id(&self) -> &str {
        match self {
            RunEvent::Run { record, .. } => &record.plugin_id,
            RunEvent::Export { plugin_id, .. } => plugin_id,
        }
    }

    /// A run's change, numbered on the `runs` bus.
    pub fn run(op: &'static str, record: RunRecord) -> Self {
        RunEvent::Run {
            op,
            record: Box::new(record),
            rev: RUNS_REV.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// A new export item, numbered on the `export` bus.
    pub fn export(plugin_id: String, item: ExportItem) -> Self {
        RunEvent::Export {
            plugin_id,
            item: Box::new(item),
            rev: EXPORT_REV.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// The reference's bus payload (§8.4); an export's content is not in it (clients fetch it
    /// with export.list).
    pub fn payload(&self) -> Value {
        let mut p = match self {
            RunEvent::Run { op, record: r, rev } => json!({
                "source": "runs", "kind": "runs", "type": op, "priority": 0,
                "timestamp": r.updated_at, "id": r.run_id, "run_id": r.run_id,
                "status": r.status, "progress": r.progress, "stage": r.stage, "message": r.message,
                "step": r.step, "step_total": r.step_total, "eta_seconds": r.eta_seconds,
                "metrics": r.metrics, "updated_at": r.updated_at, "rev": rev,
                "plugin_id": r.plugin_id, "entry_id": r.entry_id,
            }),
            RunEvent::Export { item, rev, .. } => json!({
                "source": "export", "kind": "export", "type": "add", "priority": 0,
                "timestamp": item.created_at, "id": item.export_item_id, "run_id": item.run_id,
                "export_item_id": item.export_item_id, "export_type": item.kind,
                "created_at": item.created_at, "rev": rev,
            }),
        };
        let obj = p.as_object_mut().expect("built as an object");
        match self {
            RunEvent::Run { record, .. } => {
                if let Some(task_id) = &record.task_id {
                    obj.insert("task_id".into(), json!(task_id));
                }
            }
            RunEvent::Export { plugin_id, .. } if !plugin_id.is_empty() => {
                obj.insert("plugin_id".into(), json!(plugin_id));
            }
            RunEvent::Export { .. } => {}
        }
        p
    }
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

/// A page of export items; `None` when the run is unknown.
pub type ExportPage = Option<(Vec<ExportItem>, Option<String>)>;
/// A page of runs and the cursor of the next one.
pub type RunPage = (Vec<RunRecord>, Option<String>);
/// A read waiting for a run to end.
type Waiter = (u64, RpcReplyPort<Option<RunRecord>>);

/// Messages of the RunTracker.
pub enum RunTrackerMsg {
    /// Create a run and start it.
    Create(RunCreate, RpcReplyPort<Result<RunCreated, String>>),
    /// One run's record; with `wait`, answered when the run is terminal or the wait is over.
    Get {
        run_id: String,
        wait: Option<Duration>,
        reply: RpcReplyPort<Option<RunRecord>>,
    },
    /// Runs, newest first, with the next page's cursor.
    List(RunFilter, RpcReplyPort<Result<RunPage, RunDbError>>),
    /// The client cancels a run; answers the updated record (`None`: unknown run).
    Cancel {
        run_id: String,
        reason: Option<String>,
        reply: RpcReplyPort<Option<RunRecord>>,
    },
    /// A page of a run's export items.
    Exports {
        run_id: String,
        after: Option<String>,
        limit: usize,
        reply: RpcReplyPort<Result<ExportPage, String>>,
    },
    /// A plugin's `run.update` or `export.push` (the host checked who sent it).
    FromPlugin {
        plugin_id: String,
        op: String,
        args: Value,
        reply: RpcReplyPort<Result<Value, WireError>>,
    },
    /// The run's task is about to trigger the plugin: `false` if the run must not start.
    Starting(String, RpcReplyPort<bool>),
    /// The plugin answered (or the call failed).
    RunFinished {
        run_id: String,
        args: Value,
        outcome: Result<Value, WireError>,
    },
    /// A `Get` wait is over.
    WaitExpired { run_id: String, waiter: u64 },
    /// Open an upload session for a run.
    CreateUpload {
        run_id: String,
        filename: Option<String>,
        mime: Option<String>,
        max_bytes: Option<u64>,
        reply: RpcReplyPort<Result<BlobMeta, BlobError>>,
    },
    /// A client starts sending an upload's body.
    BeginUpload {
        upload_id: String,
        reply: RpcReplyPort<Result<UploadTarget, BlobError>>,
    },
    /// The body was written (`Some(size)`, the file is complete) or abandoned (`None`).
    EndUpload {
        upload_id: String,
        size: Option<u64>,
        reply: RpcReplyPort<Result<(), BlobError>>,
    },
    /// The file of a finished blob of a run.
    Blob {
        run_id: String,
        blob_id: String,
        reply: RpcReplyPort<Result<(BlobMeta, PathBuf), BlobError>>,
    },
    /// Apply retention (every [`PRUNE_INTERVAL`]; ignored while a round is under way).
    Prune,
    /// The next pass of the retention round under way.
    PruneMore,
    /// Commit the open batch and send the acknowledgements that waited for it.
    Flush,
}

/// The RunTracker's state.
pub struct RunTrackerState {
    plugins: ActorRef<PluginSupervisorMsg>,
    signer: RunTokenSigner,
    token_ttl: Duration,
    store: RunStoreSettings,
    db: RunDb,
    /// Runs not yet terminal, as in the db.
    live: HashMap<String, RunRecord>,
    /// Reads waiting for a run to end.
    waiters: HashMap<String, Vec<Waiter>>,
    next_waiter: u64,
    events: broadcast::Sender<RunEvent>,
    /// Uploads whose body is being written (one writer per upload).
    uploading: HashSet<String>,
    myself: ActorRef<RunTrackerMsg>,
    /// Creates answered when the open batch is committed.
    acks: Vec<(RpcReplyPort<Result<RunCreated, String>>, RunCreated)>,
    /// Runs that turned terminal in the open batch: their waiters are answered after the commit.
    settled: Vec<RunRecord>,
    /// Until this unix time the retention pass has nothing to delete, unless a batch wrote since
    /// (`None`: it must run). Idle, neko then runs no SQL at all.
    retention_idle_until: Option<f64>,
    /// A retention round is under way: its next pass is scheduled.
    pruning: bool,
    /// Runs and blobs deleted by the passes of the retention round under way (logged at its end).
    pruned_so_far: (usize, usize),
}

impl Actor for RunTracker {
    type Msg = RunTrackerMsg;
    type State = RunTrackerState;
    type Arguments = RunTrackerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RunTrackerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let started = std::time::Instant::now();
        let mut db = RunDb::open(args.store.path.as_deref())?;
        let interrupted = db.recover_interrupted(unix_now())?;
        let kept = db.count_runs()?;
        match &args.store.path {
            Some(path) => {
                tracing::info!(path = %path.display(), runs = kept, interrupted, ms = started.elapsed().as_millis() as u64, "run store opened")
            }
            None => tracing::info!("runs are kept in memory only ([runs] persist = false)"),
        }
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs in flight when neko last stopped are marked failed (SUPERVISOR_RESTARTED)"
            );
        }
        myself.send_interval(PRUNE_INTERVAL, || RunTrackerMsg::Prune);
        let mut state = RunTrackerState {
            plugins: args.plugins,
            signer: args.signer,
            token_ttl: args.token_ttl,
            store: args.store,
            db,
            live: HashMap::new(),
            waiters: HashMap::new(),
            next_waiter: 0,
            events: args.events,
            uploading: HashSet::new(),
            myself: myself.clone(),
            acks: Vec::new(),
            settled: Vec::new(),
            retention_idle_until: None,
            pruning: false,
            pruned_so_far: (0, 0),
        };
        state.prune();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RunTrackerMsg::Create(req, reply) => match state.create(&myself, req) {
                Ok(created) if state.db.in_batch() => state.acks.push((reply, created)),
                answer => {
                    let _ = reply.send(answer);
                }
            },
            RunTrackerMsg::Get {
                run_id,
                wait,
                reply,
            } => state.get(&myself, run_id, wait, reply),
            RunTrackerMsg::List(filter, reply) => {
                let _ = reply.send(state.db.list_runs(&filter));
            }
            RunTrackerMsg::Cancel {
                run_id,
                reason,
                reply,
            } => {
                let _ = reply.send(state.cancel(&run_id, reason));
            }
            RunTrackerMsg::Exports {
                run_id,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(state.exports(&run_id, after.as_deref(), limit));
            }
            RunTrackerMsg::FromPlugin {
                plugin_id,
                op,
                args,
                reply,
            } => {
                let _ = reply.send(state.plugin_request(&plugin_id, &op, args));
            }
            RunTrackerMsg::Starting(run_id, reply) => {
                let _ = reply.send(state.starting(&run_id));
            }
            RunTrackerMsg::RunFinished {
                run_id,
                args,
                outcome,
            } => state.finished(&run_id, args, outcome),
            RunTrackerMsg::WaitExpired { run_id, waiter } => state.wait_expired(&run_id, waiter),
            RunTrackerMsg::CreateUpload {
                run_id,
                filename,
                mime,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(state.create_upload(&run_id, filename, mime, max_bytes));
            }
            RunTrackerMsg::BeginUpload { upload_id, reply } => {
                let _ = reply.send(state.begin_upload(&upload_id));
            }
            RunTrackerMsg::EndUpload {
                upload_id,
                size,
                reply,
            } => {
                let _ = reply.send(state.end_upload(&upload_id, size));
            }
            RunTrackerMsg::Blob {
                run_id,
                blob_id,
                reply,
            } => {
                let _ = reply.send(state.blob(&run_id, &blob_id));
            }
            RunTrackerMsg::Prune if state.pruning => {}
            RunTrackerMsg::Prune => {
                state.commit();
                state.prune();
            }
            RunTrackerMsg::PruneMore => {
                state.pruning = false;
                state.commit();
                state.prune();
            }
            RunTrackerMsg::Flush => state.commit(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A graceful stop keeps what was handled; after a kill SQLite rolls the batch back.
        state.commit();
        Ok(())
    }
}

impl RunTrackerState {
    /// The run as it is now: in memory if in flight, else from the db.
    fn record(&self, run_id: &str) -> Option<RunRecord> {
        if let Some(r) = self.live.get(run_id) {
            return Some(r.clone());
        }
        match self.db.get_run(run_id) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%run_id, error = %e, "cannot read a run from the store");
                None
            }
        }
    }

    /// Opens a batch for the writes of this message if none is open (see the module docs).
    fn batch(&mut self) {
        if self.db.in_batch() {
            return;
        }
        self.retention_idle_until = None;
        match self.db.begin_batch() {
            Ok(()) => {
                let _ = self.myself.cast(RunTrackerMsg::Flush);
            }
            Err(e) => tracing::error!(error = %e, "cannot open a run store batch"),
        }
    }

    /// Commits the open batch, then answers the creates that waited for it.
    fn commit(&mut self) {
        if !self.db.in_batch() {
            return;
        }
        let outcome = self.db.commit_batch().map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "cannot commit run store writes");
        }
        for (reply, created) in self.acks.drain(..) {
            let _ = reply.send(outcome.clone().map(|()| created));
        }
        for record in std::mem::take(&mut self.settled) {
            for (_, waiter) in self.waiters.remove(&record.run_id).unwrap_or_default() {
                let _ = waiter.send(Some(record.clone()));
            }
        }
    }

    /// Writes a changed in-flight run, announces it, and settles it if it is now terminal.
    fn save(&mut self, record: RunRecord, op: &'static str) {
        self.batch();
        if let Err(e) = self.db.put_run(&record) {
            tracing::error!(run_id = %record.run_id, error = %e, "cannot write a run to the store");
        }
        let _ = self.events.send(RunEvent::run(op, record.clone()));
        if record.status.is_terminal() {
            self.live.remove(&record.run_id);
            if self.waiters.contains_key(&record.run_id) {
                self.settled.push(record);
            }
        } else {
            self.live.insert(record.run_id.clone(), record);
        }
    }

    fn create(
        &mut self,
        myself: &ActorRef<RunTrackerMsg>,
        req: RunCreate,
    ) -> Result<RunCreated, String> {
        let expires_at = unix_now() as u64 + self.token_ttl.as_secs();
        // The same idempotency key returns the same run.
        if let Some(key) = &req.idempotency_key {
            let existing = self.db.run_by_idempotency_key(key);
            if let Some(existing) = existing.map_err(|e| e.to_string())? {
                let record = self.live.get(&existing.run_id).cloned().unwrap_or(existing);
                return Ok(RunCreated {
                    run_token: self.signer.issue(&record.run_id, expires_at),
                    record,
                    expires_at,
                });
            }
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
        // Acknowledged means stored: a failed write refuses the run (and the reply waits for the
        // batch's commit).
        self.batch();
        self.db.put_run(&record).map_err(|e| e.to_string())?;
        self.live.insert(run_id.clone(), record.clone());
        let _ = self.events.send(RunEvent::run("add", record.clone()));
        tokio::spawn(drive_run(
            myself.clone(),
            self.plugins.clone(),
            run_id.clone(),
            req,
        ));
        Ok(RunCreated {
            run_token: self.signer.issue(&run_id, expires_at),
            record,
            expires_at,
        })
    }

    fn get(
        &mut self,
        myself: &ActorRef<RunTrackerMsg>,
        run_id: String,
        wait: Option<Duration>,
        reply: RpcReplyPort<Option<RunRecord>>,
    ) {
        let wait = wait.filter(|w| !w.is_zero()).map(|w| w.min(MAX_WAIT));
        match (self.live.get(&run_id), wait) {
            (Some(_), Some(wait)) => {
                self.next_waiter += 1;
                let waiter = self.next_waiter;
                self.waiters
                    .entry(run_id.clone())
                    .or_default()
                    .push((waiter, reply));
                myself.send_after(wait, move || RunTrackerMsg::WaitExpired { run_id, waiter });
            }
            _ => {
                let _ = reply.send(self.record(&run_id));
            }
        }
    }

    fn wait_expired(&mut self, run_id: &str, waiter: u64) {
        let Some(list) = self.waiters.get_mut(run_id) else {
            return;
        };
        let Some(i) = list.iter().position(|(w, _)| *w == waiter) else {
            return;
        };
        let (_, reply) = list.swap_remove(i);
        if list.is_empty() {
            self.waiters.remove(run_id);
        }
        let _ = reply.send(self.record(run_id));
    }

    fn starting(&mut self, run_id: &str) -> bool {
        let Some(mut run) = self
            .live
            .get(run_id)
            .filter(|r| r.status == RunStatus::Queued)
            .cloned()
        else {
            return false;
        };
        let now = unix_now();
        run.status = RunStatus::Running;
        run.started_at = Some(now);
        run.updated_at = now;
        // Not written: queued and running both come back as SUPERVISOR_RESTARTED, and a write
        // per run saved is a third of the store's load.
        let _ = self.events.send(RunEvent::run("change", run.clone()));
        self.live.insert(run_id.to_string(), run);
        true
    }

    fn cancel(&mut self, run_id: &str, reason: Option<String>) -> Option<RunRecord> {
        let Some(mut run) = self.live.get(run_id).cloned() else {
            // Terminal (unchanged) or unknown.
            return self.record(run_id);
        };
        let now = unix_now();
        run.updated_at = now;
        run.cancel_requested = true;
        run.cancel_requested_at = Some(now);
        if let Some(r) = reason.filter(|r| !r.trim().is_empty()) {
            run.cancel_reason = Some(r);
        }
        if run.status == RunStatus::Queued {
            run.status = RunStatus::Canceled;
            run.finished_at = Some(now);
            run.error = Some(WireError::new(ErrorCode::Canceled, "canceled"));
        } else {
            run.status = RunStatus::CancelRequested;
            if let Ok(plugin_id) = PluginId::new(run.plugin_id.clone()) {
                let _ = self.plugins.cast(PluginSupervisorMsg::CancelRun {
                    plugin_id,
                    run_id: run_id.to_string(),
                });
            }
        }
        tracing::info!(%run_id, plugin_id = %run.plugin_id, status = ?run.status, "run cancel requested");
        self.save(run.clone(), "change");
        Some(run)
    }

    fn finished(&mut self, run_id: &str, args: Value, outcome: Result<Value, WireError>) {
        let Some(mut run) = self.live.get(run_id).cloned() else {
            return;
        };
        let now = unix_now();
        run.finished_at = Some(now);
        run.updated_at = now;
        // Every answered run keeps the reference's "trigger_plugin response" text export; only a
        // success lists it in result_refs.
        let response = ExportItem {
            export_item_id: uuid::Uuid::new_v4().to_string(),
            run_id: run_id.to_string(),
            kind: "text".into(),
            created_at: now,
            description: Some("trigger_plugin response".into()),
            text: Some(trigger_response(&run, args, &outcome, now).to_string()),
            url: None,
            binary_url: None,
            binary: None,
            mime: None, // as the reference's text item
            metadata: json!({"kind": "trigger_response"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        match outcome {
            // Canceled wins: the client asked, whatever the plugin did meanwhile.
            _ if run.cancel_requested => {
                run.status = RunStatus::Canceled;
                run.error = Some(WireError::new(ErrorCode::Canceled, "canceled"));
            }
            Ok(data) => {
                run.result_refs.push(response.export_item_id.clone());
                run.status = RunStatus::Succeeded;
                run.progress = Some(run.progress.unwrap_or(0.0).max(1.0));
                run.stage.get_or_insert_with(|| "done".into());
                run.message.get_or_insert_with(|| "done".into());
                run.result = Some(data);
            }
            // Only neko's own deadline makes `timeout` (and only a client's cancel `canceled`,
            // above): a plugin failing with code TIMEOUT or CANCELED is a failed run.
            Err(mut error) => {
                run.status = if error.is_deadline() {
                    RunStatus::Timeout
                } else {
                    RunStatus::Failed
                };
                // A run's `error.details` is an object or null (the reference wraps anything
                // else as `{"details": value}`), so typed clients can read it.
                if let Some(details) = error.details.take() {
                    error.details = Some(match details {
                        Value::Object(_) | Value::Null => details,
                        other => json!({ "details": other }),
                    });
                }
                run.error = Some(error);
            }
        }
        self.add_export(&run.plugin_id, response);
        tracing::debug!(run_id = %run_id, plugin_id = %run.plugin_id, entry_id = %run.entry_id, status = ?run.status, "run finished");
        self.save(run, "change");
    }

    fn add_export(&mut self, plugin_id: &str, item: ExportItem) {
        self.batch();
        if let Err(e) = self.db.put_export(&item) {
            tracing::error!(run_id = %item.run_id, error = %e, "cannot write an export item to the store");
        }
        let _ = self
            .events
            .send(RunEvent::export(plugin_id.to_string(), item));
    }

    fn exports(
        &self,
        run_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportPage, String> {
        if self.record(run_id).is_none() {
            return Ok(None);
        }
        self.db
            .list_exports(run_id, after, limit)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn plugin_request(
        &mut self,
        plugin_id: &str,
        op: &str,
        args: Value,
    ) -> Result<Value, WireError> {
        let args = match args {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let run_id = plugin_ops::run_id_arg(&args)?.to_string();
        let run = self
            .record(&run_id)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "run not found"))?;
        match op {
            "run.update" => {
                plugin_ops::check_owner(&run, plugin_id)?;
                let mut run = run;
                let applied = plugin_ops::apply_update(&mut run, &args)?;
                if applied {
                    run.updated_at = unix_now();
                    self.save(run.clone(), "change");
                }
                Ok(json!({
                    "ok": true,
                    "applied": applied,
                    "run_id": run.run_id,
                    "status": run.status,
                    "updated_at": run.updated_at,
                }))
            }
            // Any plugin may export into a run, as in the reference: a plugin called inside
            // another plugin's run adds its own results to that run.
            "export.push" => {
                let id = uuid::Uuid::new_v4().to_string();
                let item = plugin_ops::export_item(&run_id, &args, id.clone(), unix_now())?;
                self.add_export(plugin_id, item);
                Ok(json!({ "export_item_id": id }))
            }
            other => Err(WireError::new(
                ErrorCode::NotFound,
                format!("unknown request op '{other}'"),
            )),
        }
    }

    fn create_upload(
        &mut self,
        run_id: &str,
        filename: Option<String>,
        mime: Option<String>,
        max_bytes: Option<u64>,
    ) -> Result<BlobMeta, BlobError> {
        if self.record(run_id).is_none() {
            return Err(BlobError::NotFound("run not found"));
        }
        let limit = self.store.blob_max_bytes;
        let blob = BlobMeta {
            blob_id: uuid::Uuid::new_v4().to_string(),
            run_id: run_id.to_string(),
            filename,
            mime,
            max_bytes: max_bytes.filter(|m| *m > 0).map_or(limit, |m| m.min(limit)),
            size: None,
            created_at: unix_now(),
        };
        self.batch();
        self.db
            .put_blob(&blob)
            .map_err(|e| BlobError::Store(e.to_string()))?;
        Ok(blob)
    }

    /// The reference's checks, in its order; the upload is then reserved for this writer.
    fn begin_upload(&mut self, upload_id: &str) -> Result<UploadTarget, BlobError> {
        let blob = self
            .db
            .get_blob(upload_id)
            .map_err(|e| BlobError::Store(e.to_string()))?
            .filter(|b| b.size.is_none())
            .ok_or(BlobError::NotFound("upload not found"))?;
        let run = self
            .record(&blob.run_id)
            .ok_or(BlobError::NotFound("run not found"))?;
        if !matches!(run.status, RunStatus::Running | RunStatus::CancelRequested) {
            return Err(BlobError::Conflict("run not running"));
        }
        if !self.uploading.insert(upload_id.to_string()) {
            return Err(BlobError::Conflict("upload in progress"));
        }
        std::fs::create_dir_all(&self.store.blob_dir)
            .map_err(|e| BlobError::Store(format!("cannot create the blob folder: {e}")))?;
        Ok(UploadTarget {
            partial: self.blob_path(&blob.blob_id, "upload"),
            complete: self.blob_path(&blob.blob_id, "blob"),
            blob,
        })
    }

    fn end_upload(&mut self, upload_id: &str, size: Option<u64>) -> Result<(), BlobError> {
        self.uploading.remove(upload_id);
        let Some(size) = size else {
            return Ok(());
        };
        let mut blob = self
            .db
            .get_blob(upload_id)
            .map_err(|e| BlobError::Store(e.to_string()))?
            .ok_or(BlobError::NotFound("upload not found"))?;
        blob.size = Some(size);
        self.batch();
        self.db
            .put_blob(&blob)
            .map_err(|e| BlobError::Store(e.to_string()))
    }

    fn blob(&self, run_id: &str, blob_id: &str) -> Result<(BlobMeta, PathBuf), BlobError> {
        let not_found = BlobError::NotFound("blob not found");
        let blob = self
            .db
            .get_blob(blob_id)
            .map_err(|e| BlobError::Store(e.to_string()))?
            .filter(|b| b.run_id == run_id && b.size.is_some())
            .ok_or(not_found.clone())?;
        let path = self.blob_path(blob_id, "blob");
        if !path.is_file() {
            return Err(not_found);
        }
        Ok((blob, path))
    }

    fn blob_path(&self, blob_id: &str, extension: &str) -> PathBuf {
        self.store.blob_dir.join(format!("{blob_id}.{extension}"))
    }

    fn prune(&mut self) {
        let now = unix_now();
        if self.retention_idle_until.is_some_and(|until| now < until) {
            return;
        }
        let max_age = self.store.max_age.map(|a| a.as_secs_f64());
        let started = std::time::Instant::now();
        let pruned = match self
            .db
            .prune(now, max_age, Some(self.store.max_records), PRUNE_CHUNK)
        {
            Ok(pruned) => pruned,
            Err(e) => {
                tracing::error!(error = %e, "run retention failed");
                return;
            }
        };
        for id in &pruned.blob_ids {
            for extension in ["blob", "upload"] {
                let _ = std::fs::remove_file(self.blob_path(id, extension));
            }
        }
        tracing::debug!(
            runs = pruned.runs,
            took_ms = started.elapsed().as_millis() as u64,
            "retention pass"
        );
        self.pruned_so_far.0 += pruned.runs;
        self.pruned_so_far.1 += pruned.blob_ids.len();
        if pruned.more {
            self.pruning = true;
            self.myself
                .send_after(PRUNE_PACE, || RunTrackerMsg::PruneMore);
            return;
        }
        // Nothing left can exceed the count until a write; the oldest left ages out first.
        self.retention_idle_until = Some(match (pruned.oldest_finished_at, max_age) {
            (Some(oldest), Some(age)) => oldest + age,
            _ => f64::INFINITY,
        });
        let (runs, blobs) = std::mem::take(&mut self.pruned_so_far);
        if runs > 0 {
            tracing::info!(runs, blobs, "retention deleted old runs");
        }
    }
}

/// The reference's record of a trigger (`trigger_plugin`'s response with the plugin's envelope),
/// kept as a text export of the run.
fn trigger_response(
    run: &RunRecord,
    args: Value,
    outcome: &Result<Value, WireError>,
    now: f64,
) -> Value {
    let time = iso_from_unix(now);
    // An envelope without a trace id gets the trigger's, as in the reference.
    let trace_id = run
        .trace_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let envelope = match outcome {
        Ok(data) => json!({
            "success": true, "data": data, "message": "", "error": null,
            "time": time, "trace_id": trace_id,
        }),
        Err(e) => json!({
            "success": false, "data": null, "message": "",
            "error": {"code": e.code.as_str(), "message": e.message, "details": e.details, "retriable": false},
            "time": time, "trace_id": trace_id,
        }),
    };
    json!({
        "success": outcome.is_ok(),
        "plugin_id": run.plugin_id,
        "executed_entry": run.entry_id,
        "args": args,
        "plugin_response": envelope,
        "received_at": time,
        "plugin_forward_error": null,
    })
}

/// One run's trip to its plugin and back.
async fn drive_run(
    tracker: ActorRef<RunTrackerMsg>,
    plugins: ActorRef<PluginSupervisorMsg>,
    run_id: String,
    req: RunCreate,
) {
    match tracker
        .call(|reply| RunTrackerMsg::Starting(run_id.clone(), reply), None)
        .await
    {
        Ok(ractor::rpc::CallResult::Success(true)) => {}
        // Canceled while queued, or the tracker is gone.
        _ => return,
    }
    let (args, timeout) = with_run_context(req.args, &run_id);
    let outcome = match PluginId::new(req.plugin_id.clone()) {
        Err(_) => Err(WireError::new(
            ErrorCode::NotFound,
            format!("Plugin '{}' is not found/registered", req.plugin_id),
        )),
        Ok(plugin_id) => {
            let trigger = TriggerRequest {
                entry_id: req.entry_id,
                args: args.clone(),
                run_id: Some(run_id.clone()),
                timeout,
                event_type: None,
                via: None,
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
                Ok(_) | Err(_) => Err(host_went_away()),
            }
        }
    };
    let _ = tracker.cast(RunTrackerMsg::RunFinished {
        run_id,
        args,
        outcome,
    });
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
