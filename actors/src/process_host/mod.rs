//! ProcessHost: owns ONE launch of one plugin: its OS process and its ZeroMQ link.
//!
//! Parent: the PluginSupervisor, which spawns one host per launch and decides about restarts.
//! Children: none (the OS process is not an actor). Senders: the PluginSupervisor (Trigger, Stop),
//! its own link reader (FrameReceived), its reaper task (ChildExited), its timers.
//!
//! Life of a host: Preparing (resolve or build the program) → Handshaking (process spawned, waiting
//! for HELLO) → Ready (serving TRIGGERs) → [Stopping] → the process exits → the host reports
//! `HostExited` to the supervisor and stops itself. A process that sends no HELLO within the
//! handshake timeout, or nothing within the heartbeat timeout, is killed (SIGKILL to its group).
//!
//! If the host actor itself fails, ractor skips `post_stop`; the supervisor then kills the process
//! group by the pid it was told in `HostSpawned`, and the reaper task still reaps the child.

pub mod calls;
pub mod child;
pub mod link;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use neko_protocol::{
    Cancel, EntrySpec, ErrorCode, FEATURE_BATCH, FrameKey, Hello, Message, PLUGIN_ENTRY,
    PROTOCOL_VERSION, PluginId, Request, Response, Stop, Trigger, Welcome, WireError, env,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::deadlock_detector::{CallEdge, next_call_id};
use crate::manifest::{PluginManifest, Runtime};
use crate::message_plane::MessagePlaneEndpoints;
use crate::plugin_config::{self, PluginFolder};
use crate::plugin_logs::{PluginLogSettings, PluginLogWriter};
use crate::plugin_supervisor::PluginSupervisorMsg;
use crate::python_env::{PythonEnvMsg, PythonLaunch};
use crate::registry::RegistryMsg;
use crate::root::TreeRefs;
use crate::run_tracker::RunTrackerMsg;
use crate::status_manager::StatusManagerMsg;
use child::{LaunchSpec, LimitHit, ResourceLimits};
use link::Link;
pub use link::Transport;

/// Settings every host shares (the `[supervision]` slice of neko's settings).
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Private directory (0700) for ipc socket files.
    pub runtime_dir: PathBuf,
    pub transport: Transport,
    /// Time from spawn to an accepted HELLO.
    pub handshake_timeout: Duration,
    /// How often plugins send HEARTBEAT.
    pub heartbeat_interval: Duration,
    /// Silence after which a plugin counts as hung and is killed.
    pub heartbeat_timeout: Duration,
    /// Time between STOP and SIGTERM.
    pub stop_grace: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub term_grace: Duration,
    /// Deadline of an entry that declares none.
    pub default_call_timeout: Duration,
    /// Largest frame payload accepted from a plugin.
    pub max_frame_bytes: usize,
    /// `[limits]`: every plugin's resource limits unless its plugin.toml overrides them.
    pub limits: ResourceLimits,
    /// `[log]`: where each launch's output is written to a file, and how much is kept.
    pub plugin_logs: PluginLogSettings,
    /// What a plugin's `system.config` request gets: neko's settings under the reference's
    /// names (`plugin.settings`), the message plane's endpoints filled in per launch.
    pub system_config: serde_json::Map<String, Value>,
}

/// The ProcessHost actor.
pub struct ProcessHost;

/// The folder under the runtime dir where plugins keep state "in memory" (see
/// [`neko_protocol::env::STATE_DIR`]); neko empties it when it starts.
pub const STATE_DIR_NAME: &str = "state";

/// A plugin's TIMEOUT this close to the call's deadline counts as the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// How long a plugin's request may wait for the actor that answers it (the SDKs' own default).
const PLUGIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a host starts with.
pub struct ProcessHostArgs {
    pub manifest: Arc<PluginManifest>,
    /// Sequence number of this launch (unique within the supervisor's life).
    pub launch: u64,
    /// Automatic restarts so far (for the log lines of this launch).
    pub restart_count: u32,
    pub settings: Arc<HostSettings>,
    pub supervisor: ActorRef<PluginSupervisorMsg>,
    pub status: ActorRef<StatusManagerMsg>,
    /// Prepares the Python environment for Python plugins.
    pub python: ActorRef<PythonEnvMsg>,
    /// The tree's current actors: where run updates and exports from the plugin go.
    pub tree: watch::Receiver<Option<TreeRefs>>,
    /// The message plane's endpoints, passed to the plugin.
    pub plane: MessagePlaneEndpoints,
    /// Started by a reload (`POST /plugin/{id}/reload`): the plugin runs `lifecycle("reload")`.
    pub reloaded: bool,
}

/// The reply to a TRIGGER: the entry's data, or why there is none.
pub type TriggerReply = RpcReplyPort<Result<Value, WireError>>;

/// One entry invocation, as the supervisor routes it.
pub struct TriggerRequest {
    pub entry_id: String,
    pub args: Value,
    pub run_id: Option<String>,
    /// Overrides the entry's own deadline (`_ctx.entry_timeout`).
    pub timeout: Option<Duration>,
    /// A custom event's type when the call is for one (`entry_id` is then the event's id).
    pub event_type: Option<String>,
    /// The plugin-to-plugin call this is, when another plugin is the caller.
    pub via: Option<CallVia>,
}

/// Which plugin-to-plugin call a TRIGGER serves.
#[derive(Debug, Clone)]
pub struct CallVia {
    /// The call's id in the DeadlockDetector.
    pub id: u64,
    pub caller: PluginId,
}

/// Messages of a ProcessHost.
pub enum ProcessHostMsg {
    /// Run an entry in the plugin.
    Trigger(TriggerRequest, TriggerReply),
    /// Stop gracefully: STOP → grace → SIGTERM → grace → SIGKILL.
    Stop,
    /// The program is resolved (and built): spawn it.
    Prepared(Result<LaunchSpec, String>),
    /// A verified frame arrived from the plugin: its message, or a batch's messages in order.
    FrameReceived {
        identity: Bytes,
        messages: Vec<Message>,
    },
    /// The reaper saw the process exit.
    ChildExited(std::io::Result<ExitStatus>),
    /// The handshake deadline passed.
    HandshakeExpired,
    /// Periodic heartbeat check.
    HeartbeatCheck,
    /// A call's deadline passed.
    CallExpired { call_id: String },
    /// The run's client canceled it: tell the plugin (its RESULT, or the deadline, ends the call).
    CancelRun(String),
    /// An answer to one of the plugin's REQUESTs, computed elsewhere.
    Respond(Response),
    /// The caller of the plugin-to-plugin call `id` no longer waits: cancel the call here.
    CancelCall(u64),
    /// A plugin-to-plugin call this plugin made has ended: answer its REQUEST.
    CallDone { id: u64, response: Response },
    /// The next step of a graceful stop.
    Escalate(StopStep),
}

/// Steps of the stop sequence after STOP.
#[derive(Debug, Clone, Copy)]
pub enum StopStep {
    Terminate,
    Kill,
}

/// How a launch ended, as the supervisor needs it for its restart decision.
#[derive(Debug, Clone)]
pub struct ExitReport {
    /// `exit code 3`, `killed by signal 9 (SIGKILL)`, or why no process ran.
    pub description: String,
    /// Non-zero code, signal, or killed by the host for a missed deadline.
    pub abnormal: bool,
    /// How long the plugin was ready before it exited; `None` if it never said HELLO.
    pub ready_for: Option<Duration>,
    /// The pid, if a process was spawned.
    pub pid: Option<u32>,
    /// Why the host killed the process, if it did.
    pub kill_reason: Option<String>,
    /// No process could be started (program missing, build or environment failed): restarting
    /// would fail the same way, so the supervisor does not try.
    pub setup_failed: bool,
    /// The resource limit the plugin ran into, if it did
    /// (`exceeded max_message_rate (limit 20000 msgs/s): 20001 msgs in 0.62 s`); also at the end
    /// of `description`.
    pub limit_exceeded: Option<String>,
}

/// Window over which `max_message_rate` is counted.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Counts the frames a plugin sends in consecutive [`RATE_WINDOW`]s (each starting with the first
/// frame after the previous one ended). Any burst of up to `limit` frames passes; more than `limit`
/// within one window is a violation. Two numbers per host, no per-frame history.
#[derive(Debug, Clone)]
struct RateMeter {
    /// Frames per window; 0 = unlimited.
    limit: u64,
    window_start: Option<Instant>,
    count: u64,
}

impl RateMeter {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            window_start: None,
            count: 0,
        }
    }

    /// Counts one frame at `now`. `Some((count, elapsed))` when the window now holds more than the
    /// limit: `count` frames within `elapsed` of its start.
    fn record(&mut self, now: Instant) -> Option<(u64, Duration)> {
        if self.limit == 0 {
            return None;
        }
        let start = match self.window_start {
            Some(start) if now.saturating_duration_since(start) < RATE_WINDOW => start,
            _ => {
                self.window_start = Some(now);
                self.count = 0;
                now
            }
        };
        self.count += 1;
        (self.count > self.limit).then(|| (self.count, now.saturating_duration_since(start)))
    }
}

enum Phase {
    Preparing(JoinHandle<()>),
    Handshaking,
    Ready,
    Stopping,
    Exited,
}

struct PendingCall {
    entry_id: String,
    run_id: Option<String>,
    via: Option<CallVia>,
    /// When the deadline timer fires.
    deadline: Instant,
    reply: TriggerReply,
    timer: AbortHandle,
}

/// A plugin-to-plugin call the plugin made, as its host tracks it.
struct OutgoingCall {
    /// The TRIGGER whose handler waits for it; the call is canceled when that one ends early.
    parent: Option<String>,
    callee: PluginId,
}

/// A host's state.
pub struct ProcessHostState {
    plugin_id: PluginId,
    manifest: Arc<PluginManifest>,
    settings: Arc<HostSettings>,
    launch: u64,
    restart_count: u32,
    supervisor: ActorRef<PluginSupervisorMsg>,
    status: ActorRef<StatusManagerMsg>,
    tree: watch::Receiver<Option<TreeRefs>>,
    /// The message plane this launch was given (for `system.config`).
    plane: MessagePlaneEndpoints,
    link: Link,
    key: FrameKey,
    phase: Phase,
    pid: Option<u32>,
    ready_at: Option<Instant>,
    last_seen: Instant,
    entries: HashMap<String, EntrySpec>,
    /// Custom events the plugin declared, as `(event_type, id)`.
    events: HashSet<(String, String)>,
    calls: HashMap<String, PendingCall>,
    /// Plugin-to-plugin calls this plugin is waiting for, by call id.
    outgoing: HashMap<u64, OutgoingCall>,
    next_call: u64,
    stop_requested: bool,
    kill_reason: Option<String>,
    setup_failed: bool,
    /// This launch's resource limits (`[limits]` with the plugin's overrides).
    limits: ResourceLimits,
    /// Frames received, against `limits.max_message_rate`.
    rate: RateMeter,
    /// The resource limit the plugin ran into.
    limit_hit: Option<LimitHit>,
    /// The process's last output lines, quoted when it dies before it is ready.
    output: Option<child::Tail>,
    timers: Vec<AbortHandle>,
}

impl Actor for ProcessHost {
    type Msg = ProcessHostMsg;
    type State = ProcessHostState;
    type Arguments = ProcessHostArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ProcessHostArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let key = FrameKey::new(rand::random::<[u8; 32]>().to_vec());
        let plugin_id = args.manifest.id.clone();
        let link = Link::bind(
            &plugin_id,
            args.launch,
            &args.settings.runtime_dir,
            args.settings.transport,
            &key,
            args.settings.max_frame_bytes,
            myself.clone(),
        )
        .await?;
        // What this launch tells the plugin besides its link: the message plane it pushes to and
        // queries (the reference's variable names), and whether it was started by a reload.
        let mut launch_env = vec![
            (env::MESSAGE_PLANE_RPC.to_string(), args.plane.rpc.clone()),
            (
                env::MESSAGE_PLANE_PUB.to_string(),
                args.plane.publish.clone(),
            ),
            (
                env::MESSAGE_PLANE_INGEST.to_string(),
                args.plane.ingest.clone(),
            ),
        ];
        if args.reloaded {
            launch_env.push((env::RELOADED.to_string(), "1".to_string()));
        }
        if let Some(path) = effective_config_file(&args.manifest, &args.settings.runtime_dir) {
            launch_env.push((env::EFFECTIVE_CONFIG.to_string(), path));
        }
        let limits = args.settings.limits.with_overrides(&args.manifest.limits);
        let prepare = tokio::spawn(prepare(
            args.manifest.clone(),
            link.endpoint().to_string(),
            key.clone(),
            args.settings.clone(),
            args.python.clone(),
            launch_env,
            myself.clone(),
        ));
        Ok(ProcessHostState {
            plugin_id,
            manifest: args.manifest,
            settings: args.settings,
            launch: args.launch,
            restart_count: args.restart_count,
            supervisor: args.supervisor,
            status: args.status,
            tree: args.tree,
            plane: args.plane,
            link,
            key,
            phase: Phase::Preparing(prepare),
            pid: None,
            ready_at: None,
            last_seen: Instant::now(),
            entries: HashMap::new(),
            events: HashSet::new(),
            calls: HashMap::new(),
            outgoing: HashMap::new(),
            next_call: 0,
            stop_requested: false,
            kill_reason: None,
            setup_failed: false,
            limits,
            rate: RateMeter::new(limits.max_message_rate),
            limit_hit: None,
            output: None,
            timers: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProcessHostMsg::Trigger(req, reply) => state.trigger(&myself, req, reply),
            ProcessHostMsg::Stop => state.stop(&myself),
            ProcessHostMsg::Prepared(spec) => state.spawn(&myself, spec),
            ProcessHostMsg::FrameReceived { identity, messages } => {
                for msg in messages {
                    state.frame(&myself, &identity, msg);
                }
            }
            ProcessHostMsg::ChildExited(status) => state.exited(&myself, status),
            ProcessHostMsg::HandshakeExpired => {
                if matches!(state.phase, Phase::Handshaking) {
                    let reason = format!(
                        "no HELLO within {:?} (handshake timeout)",
                        state.settings.handshake_timeout
                    );
                    state.kill(reason);
                }
            }
            ProcessHostMsg::HeartbeatCheck => state.check_heartbeat(),
            ProcessHostMsg::CallExpired { call_id } => state.call_expired(&call_id),
            ProcessHostMsg::CancelRun(run_id) => state.cancel_run(&run_id),
            ProcessHostMsg::Respond(response) => state.respond(response),
            ProcessHostMsg::CancelCall(id) => state.cancel_call(id),
            ProcessHostMsg::CallDone { id, response } => {
                state.outgoing.remove(&id);
                state.respond(response);
            }
            ProcessHostMsg::Escalate(step) => state.escalate(&myself, step),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Best effort: a host stopped from outside (tree shutdown) must not leave its process.
        if !matches!(state.phase, Phase::Exited) {
            if let Some(pid) = state.pid {
                child::signal_group(pid, libc::SIGKILL);
            }
            if let Phase::Preparing(task) = &state.phase {
                task.abort();
            }
        }
        for t in state.timers.drain(..) {
            t.abort();
        }
        Ok(())
    }
}

/// Resolves (building if needed) what to run, then tells the host.
async fn prepare(
    manifest: Arc<PluginManifest>,
    endpoint: String,
    key: FrameKey,
    settings: Arc<HostSettings>,
    python: ActorRef<PythonEnvMsg>,
    launch_env: Vec<(String, String)>,
    host: ActorRef<ProcessHostMsg>,
) {
    let result = launch_spec(&manifest, endpoint, &key, &settings, &python, launch_env).await;
    let _ = host.cast(ProcessHostMsg::Prepared(result));
}

async fn launch_spec(
    manifest: &PluginManifest,
    endpoint: String,
    key: &FrameKey,
    settings: &HostSettings,
    python: &ActorRef<PythonEnvMsg>,
    launch_env: Vec<(String, String)>,
) -> Result<LaunchSpec, String> {
    let mut env = launch_env;
    let (program, args) = match &manifest.runtime {
        Runtime::Native {
            command,
            args,
            build,
        } => {
            let program = match child::resolve_program(command, &manifest.dir) {
                Some(p) => p,
                None => {
                    let Some(build) = build else {
                        return Err(format!(
                            "command '{command}' not found (looked next to the neko binary, in {}, and on PATH)",
                            manifest.dir.display()
                        ));
                    };
                    child::run_build(&manifest.id, build, &manifest.dir).await?;
                    child::resolve_program(command, &manifest.dir).ok_or_else(|| {
                        format!(
                            "command '{command}' still not found after running the build command"
                        )
                    })?
                }
            };
            (program, args.clone())
        }
        Runtime::Python { entry } => {
            let launch = prepare_python(manifest, python).await?;
            env.extend(python_env(manifest, entry, &launch)?);
            (
                launch.python,
                vec!["-m".to_string(), "plugin.runner".to_string()],
            )
        }
    };
    env.extend([
        (env::PLUGIN_ID.to_string(), manifest.id.to_string()),
        (env::ENDPOINT.to_string(), endpoint),
        (env::SECRET.to_string(), key.to_hex()),
        (env::PROTOCOL.to_string(), PROTOCOL_VERSION.to_string()),
        (
            env::HEARTBEAT_MS.to_string(),
            settings.heartbeat_interval.as_millis().to_string(),
        ),
        (
            env::MAX_FRAME_BYTES.to_string(),
            settings.max_frame_bytes.to_string(),
        ),
        (
            env::SUPERVISOR_PID.to_string(),
            std::process::id().to_string(),
        ),
        (
            env::PLUGIN_DIR.to_string(),
            manifest.dir.display().to_string(),
        ),
        (
            env::PLUGIN_CONFIG.to_string(),
            manifest.config_path.display().to_string(),
        ),
        (
            env::STATE_DIR.to_string(),
            settings
                .runtime_dir
                .join(STATE_DIR_NAME)
                .display()
                .to_string(),
        ),
    ]);
    Ok(LaunchSpec {
        program,
        args,
        cwd: manifest.dir.clone(),
        env,
        limits: settings.limits.with_overrides(&manifest.limits),
    })
}

/// What a Python plugin's interpreter needs to find and import it.
/// Answers the plugin's request `request_id` with `outcome` once it resolves, without holding up
/// the host (a plugin's other messages keep flowing meanwhile).
fn respond_later(
    host: &ActorRef<ProcessHostMsg>,
    request_id: String,
    outcome: impl std::future::Future<Output = Result<Value, WireError>> + Send + 'static,
) {
    let host = host.clone();
    tokio::spawn(async move {
        let response = Response::from_outcome(request_id, outcome.await);
        let _ = host.cast(ProcessHostMsg::Respond(response));
    });
}

/// Asks `actor` (None while it restarts), named `who` in the errors, for a plugin's request.
async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: Option<ActorRef<M>>,
    who: &str,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, WireError> {
    let Some(actor) = actor else {
        return Err(WireError::new(
            ErrorCode::NotReady,
            format!("the {who} is restarting"),
        ));
    };
    match actor.call(msg, Some(PLUGIN_REQUEST_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(value)) => Ok(value),
        _ => Err(WireError::new(
            ErrorCode::Internal,
            format!("the {who} did not answer"),
        )),
    }
}

/// The plugin's effective config (base + active profile) as `config.get` answers it.
fn effective_config(manifest: &PluginManifest) -> Result<Value, String> {
    let folder = PluginFolder {
        id: manifest.id.clone(),
        dir: manifest.dir.clone(),
        config_path: manifest.config_path.clone(),
    };
    plugin_config::effective_view(&folder, plugin_config::env_profile(&manifest.id))
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
}

/// Writes the plugin's effective config at launch to `<runtime dir>/<id>.config.json` (0600), for
/// the config reads its constructor makes before it is connected; None (the SDK then reads
/// plugin.toml alone) when it cannot be computed or written.
fn effective_config_file(
    manifest: &PluginManifest,
    runtime_dir: &std::path::Path,
) -> Option<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let config = effective_config(manifest).ok()?;
    let path = runtime_dir.join(format!("{}.config.json", manifest.id));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(config.to_string().as_bytes()));
    if let Err(error) = written {
        tracing::warn!(plugin_id = %manifest.id, %error, "could not write the launch's effective config");
        return None;
    }
    Some(path.display().to_string())
}

/// A config request's failure as the plugin sees it: the same text as the config routes give.
fn config_error(e: crate::error::Error) -> WireError {
    use crate::error::Error;
    let code = match &e {
        Error::PluginNotFound(_) | Error::PluginUnknown(_) | Error::ConfigMissing(_) => {
            ErrorCode::NotFound
        }
        Error::ConfigRejected(_) => ErrorCode::ValidationError,
        _ => ErrorCode::Internal,
    };
    WireError::new(code, e.to_string())
}

fn python_env(
    manifest: &PluginManifest,
    entry: &str,
    launch: &PythonLaunch,
) -> Result<Vec<(String, String)>, String> {
    let root = manifest.dir.parent().unwrap_or(&manifest.dir);
    let mut env = vec![
        ("NEKO_PLUGIN_ENTRY".to_string(), entry.to_string()),
        ("NEKO_PLUGINS_ROOT".to_string(), root.display().to_string()),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
    ];
    if !launch.python_path.is_empty() {
        let joined = std::env::join_paths(&launch.python_path)
            .map_err(|e| format!("bad PYTHONPATH entry: {e}"))?;
        env.push((
            "PYTHONPATH".to_string(),
            joined.to_string_lossy().into_owned(),
        ));
    }
    Ok(env)
}

/// The line of `python -m plugin.describe` that carries its answer.
const DESCRIBE_MARKER: &str = "NEKO_DESCRIBE ";

/// The entries a Python plugin declares, read without starting it: `python -m plugin.describe`
/// imports its module and reads the class (never constructs it), as the reference's registry
/// does at startup. Killed after `timeout`.
pub async fn describe_python(
    manifest: &PluginManifest,
    python: &ActorRef<PythonEnvMsg>,
    timeout: Duration,
) -> Result<Vec<EntrySpec>, String> {
    #[derive(serde::Deserialize)]
    struct Described {
        entries: Vec<EntrySpec>,
    }
    let Runtime::Python { entry } = &manifest.runtime else {
        return Err("not a Python plugin".into());
    };
    let launch = prepare_python(manifest, python).await?;
    let mut command = tokio::process::Command::new(&launch.python);
    command
        .args(["-m", "plugin.describe"])
        .current_dir(&manifest.dir)
        .envs(python_env(manifest, entry, &launch)?)
        .env(env::PLUGIN_ID, manifest.id.as_str())
        .env(env::PLUGIN_DIR, &manifest.dir)
        .env(env::PLUGIN_CONFIG, &manifest.config_path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| format!("describing took longer than {} s", timeout.as_secs()))?
        .map_err(|e| format!("cannot run {}: {e}", launch.python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(DESCRIBE_MARKER));
    match answer {
        Some(json) => serde_json::from_str::<Described>(json)
            .map(|d| d.entries)
            .map_err(|e| format!("unreadable answer: {e}")),
        None => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "{} ({})",
                output.status,
                last.unwrap_or("no output").trim()
            ))
        }
    }
}

/// Asks PythonEnv for the interpreter (creating the environment on first use).
async fn prepare_python(
    manifest: &PluginManifest,
    python: &ActorRef<PythonEnvMsg>,
) -> Result<PythonLaunch, String> {
    // No timeout: a first install can take minutes, and a stop aborts this task anyway.
    let reply = python
        .call(
            |reply| PythonEnvMsg::Prepare {
                plugin_id: manifest.id.clone(),
                plugin_dir: manifest.dir.clone(),
                reply,
            },
            None,
        )
        .await
        .map_err(|e| format!("the Python environment manager is unavailable: {e}"))?;
    match reply {
        ractor::rpc::CallResult::Success(r) => r,
        _ => Err("the Python environment manager did not answer".into()),
    }
}

impl ProcessHostState {
    fn spawn(&mut self, myself: &ActorRef<ProcessHostMsg>, spec: Result<LaunchSpec, String>) {
        if self.stop_requested {
            return self.finish(
                myself,
                "stopped before the process was spawned".into(),
                false,
            );
        }
        let spec = match spec {
            Ok(s) => s,
            Err(reason) => {
                tracing::error!(plugin_id = %self.plugin_id, launch = self.launch, %reason, "plugin could not be launched");
                self.setup_failed = true;
                return self.finish(myself, reason, true);
            }
        };
        // Creating the file is one mkdir, one open and one listing of a small folder.
        let log_file = PluginLogWriter::open(&self.settings.plugin_logs, &self.plugin_id);
        let process = match child::spawn(&self.plugin_id, &spec, log_file) {
            Ok(spawned) => {
                self.output = Some(spawned.tail.clone());
                spawned
            }
            Err(e) => {
                let reason = format!("could not spawn {}: {e}", spec.program.display());
                tracing::error!(plugin_id = %self.plugin_id, launch = self.launch, %reason, "plugin could not be launched");
                self.setup_failed = true;
                return self.finish(myself, reason, true);
            }
        };
        let pid = process.child.id().unwrap_or(0);
        self.pid = Some(pid);
        self.phase = Phase::Handshaking;
        self.last_seen = Instant::now();
        tracing::info!(plugin_id = %self.plugin_id, pid, launch = self.launch, restart_count = self.restart_count, program = %spec.program.display(), "plugin process spawned");
        let host = myself.clone();
        // The reaper owns the child handle, so the process is reaped even if this actor dies.
        child::reap(process, move |status| {
            let _ = host.cast(ProcessHostMsg::ChildExited(status));
        });
        let _ = self.supervisor.cast(PluginSupervisorMsg::HostSpawned {
            plugin_id: self.plugin_id.clone(),
            launch: self.launch,
            pid,
        });
        self.timers.push(
            myself
                .send_after(self.settings.handshake_timeout, || {
                    ProcessHostMsg::HandshakeExpired
                })
                .abort_handle(),
        );
    }

    fn frame(&mut self, myself: &ActorRef<ProcessHostMsg>, identity: &Bytes, msg: Message) {
        let kind = msg.kind();
        if self.limit_hit.is_some() {
            // Killed for a limit: what it still had queued is not worth handling.
            return;
        }
        if let Some((count, elapsed)) = self.rate.record(Instant::now()) {
            return self.exceeded(LimitHit {
                key: "max_message_rate",
                limit: self.limits.max_message_rate,
                observed: format!("{count} msgs in {:.2} s", elapsed.as_secs_f64()),
                certain: true,
            });
        }
        match (&self.phase, msg) {
            (Phase::Handshaking, Message::Hello(hello)) => {
                self.hello(myself, identity.clone(), hello)
            }
            (Phase::Ready | Phase::Stopping, msg) if self.link.is_peer(identity) => {
                self.last_seen = Instant::now();
                match msg {
                    Message::Result(result) => self.result(result),
                    Message::Status(update) => {
                        let _ = self.status.cast(StatusManagerMsg::StatusReported {
                            plugin_id: self.plugin_id.clone(),
                            status: update.status,
                        });
                    }
                    Message::Heartbeat(_) => {}
                    Message::Request(req) => self.request(myself, req),
                    other => {
                        tracing::warn!(plugin_id = %self.plugin_id, kind = other.kind(), "plugin sent a message only the supervisor may send; dropped");
                    }
                }
            }
            _ => {
                tracing::warn!(plugin_id = %self.plugin_id, kind, "unexpected frame for this link state; dropped");
            }
        }
    }

    fn hello(&mut self, myself: &ActorRef<ProcessHostMsg>, identity: Bytes, hello: Hello) {
        if hello.protocol != PROTOCOL_VERSION {
            return self.kill(format!(
                "HELLO speaks protocol {}, supervisor speaks {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        if hello.plugin_id != self.plugin_id.as_str() {
            return self.kill(format!(
                "HELLO claims plugin id '{}', expected '{}'",
                hello.plugin_id, self.plugin_id
            ));
        }
        if let Err(reason) = self.manifest.sdk.check(&hello.sdk_version) {
            return self.kill(format!(
                "HELLO from {} {}: {reason}",
                hello.sdk, hello.sdk_version
            ));
        }
        let batch = hello.features.iter().any(|f| f == FEATURE_BATCH);
        self.link.set_peer(identity, batch);
        if let Err(e) = self.link.send(Message::Welcome(Welcome {
            plugin_id: self.plugin_id.to_string(),
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
            features: if batch {
                vec![FEATURE_BATCH.to_string()]
            } else {
                Vec::new()
            },
        })) {
            return self.kill(format!("could not answer HELLO: {e}"));
        }
        let mut entries = Vec::with_capacity(hello.entries.len());
        for mut e in hello.entries {
            if e.name.is_empty() {
                e.name = e.id.clone();
            }
            if self.entries.insert(e.id.clone(), e.clone()).is_none() {
                entries.push(e);
            }
        }
        let events: Vec<_> = hello
            .events
            .into_iter()
            .filter(|e| e.event_type != PLUGIN_ENTRY)
            .filter(|e| self.events.insert((e.event_type.clone(), e.id.clone())))
            .collect();
        self.phase = Phase::Ready;
        self.ready_at = Some(Instant::now());
        self.last_seen = Instant::now();
        let interval = self.settings.heartbeat_interval;
        self.timers.push(
            myself
                .send_interval(interval, || ProcessHostMsg::HeartbeatCheck)
                .abort_handle(),
        );
        tracing::info!(plugin_id = %self.plugin_id, pid = self.pid, restart_count = self.restart_count, sdk = %hello.sdk, sdk_version = %hello.sdk_version, entries = entries.len(), "plugin ready");
        let _ = self.supervisor.cast(PluginSupervisorMsg::HostReady {
            plugin_id: self.plugin_id.clone(),
            launch: self.launch,
            entries,
            events,
            sdk: format!("{} {}", hello.sdk, hello.sdk_version),
            input_schema: hello.input_schema,
        });
    }

    /// Answers a plugin's REQUEST. Ops this supervisor does not serve get NOT_FOUND, so SDKs can
    /// tell "not here yet" from a failure.
    fn request(&mut self, myself: &ActorRef<ProcessHostMsg>, req: Request) {
        let outcome = match req.op.as_str() {
            "run.update" | "export.push" => return self.forward_to_runs(myself, req),
            "config.base" | "config.profiles" | "config.profile" | "config.effective"
            | "config.update" => return self.forward_to_registry(myself, req),
            "system.config" => Ok(self.system_config()),
            "plugin.call" => return self.plugin_call(myself, req),
            "plugins.query" => {
                let refs = self.tree.borrow().clone();
                tokio::spawn(calls::query(refs, req.args, myself.clone(), req.request_id));
                return;
            }
            "config.get" => {
                // The same effective config (base + active profile) that `GET /plugin/{id}/config`
                // shows.
                effective_config(&self.manifest).map_err(|e| WireError::new(ErrorCode::Internal, e))
            }
            other => Err(WireError::new(
                ErrorCode::NotFound,
                format!("unknown request op '{other}'"),
            )),
        };
        self.respond(Response::from_outcome(req.request_id, outcome));
    }

    fn respond(&mut self, response: Response) {
        if let Err(e) = self.link.send(Message::Response(response)) {
            tracing::warn!(plugin_id = %self.plugin_id, error = %e, "could not answer a plugin request");
        }
    }

    /// `{"config": {NAME: value}}`: neko's settings under the reference's names, with the
    /// message plane this plugin was given.
    fn system_config(&self) -> Value {
        let mut config = self.settings.system_config.clone();
        for (name, endpoint) in [
            ("MESSAGE_PLANE_ZMQ_RPC_ENDPOINT", &self.plane.rpc),
            ("MESSAGE_PLANE_ZMQ_PUB_ENDPOINT", &self.plane.publish),
            ("MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT", &self.plane.ingest),
        ] {
            config.insert(name.to_string(), Value::String(endpoint.clone()));
        }
        serde_json::json!({ "config": config })
    }

    /// The plugin's own config beyond `config.get` (base, profiles, a profile's effective view,
    /// writes): the Registry serves these as it serves the config routes, one at a time, so a
    /// plugin's write never interleaves with an operator's.
    fn forward_to_registry(&mut self, myself: &ActorRef<ProcessHostMsg>, req: Request) {
        use plugin_config::ConfigRequest;
        let invalid = |m: &str| WireError::new(ErrorCode::ValidationError, m);
        let profile_name = || match req.args.get("profile_name") {
            Some(Value::String(name)) if !name.trim().is_empty() => Ok(name.trim().to_string()),
            _ => Err(invalid("Invalid profile_name")),
        };
        let request = match req.op.as_str() {
            "config.base" => Ok(ConfigRequest::GetBase),
            "config.profiles" => Ok(ConfigRequest::Profiles),
            "config.profile" => profile_name().map(ConfigRequest::GetProfile),
            "config.effective" => match req.args.get("profile_name") {
                None | Some(Value::Null) => Ok(ConfigRequest::Get),
                Some(_) => profile_name().map(ConfigRequest::Effective),
            },
            _ => match req.args.get("updates") {
                Some(Value::Object(updates)) => Ok(ConfigRequest::Update(updates.clone())),
                _ => Err(invalid("Invalid updates: must be a dict")),
            },
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.respond(Response::from_outcome(req.request_id, Err(e))),
        };
        let registry = self.tree.borrow().as_ref().map(|t| t.registry.clone());
        let id = self.plugin_id.clone();
        respond_later(myself, req.request_id, async move {
            let reply = ask(registry, "plugin registry", |reply| {
                RegistryMsg::Config(id, request, reply)
            })
            .await?;
            serde_json::to_value(reply.map_err(config_error)?)
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        });
    }

    /// Run progress and exports belong to the RunTracker: ask it without blocking this host (a
    /// plugin's calls keep flowing), and answer the plugin when it replies.
    fn forward_to_runs(&mut self, myself: &ActorRef<ProcessHostMsg>, req: Request) {
        let runs = self.tree.borrow().as_ref().map(|t| t.runs.clone());
        let plugin_id = self.plugin_id.to_string();
        let Request {
            request_id,
            op,
            args,
            ..
        } = req;
        respond_later(myself, request_id, async move {
            ask(runs, "run tracker", |reply| RunTrackerMsg::FromPlugin {
                plugin_id,
                op,
                args,
                reply,
            })
            .await?
        });
    }

    /// Tells the plugin to stop working on the calls of `run_id`, and cancels the calls to other
    /// plugins those handlers wait for.
    fn cancel_run(&mut self, run_id: &str) {
        let canceled: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, call)| call.run_id.as_deref() == Some(run_id))
            .map(|(call_id, _)| call_id.clone())
            .collect();
        for call_id in canceled {
            tracing::info!(plugin_id = %self.plugin_id, %run_id, %call_id, "run canceled by its client");
            let _ = self.link.send(Message::Cancel(Cancel {
                call_id: call_id.clone(),
            }));
            self.cancel_outgoing(Some(&call_id));
        }
    }

    /// A `plugin.call` request: check it, cut its deadline to what the waiting handler has left,
    /// and route it (see [`calls`]).
    fn plugin_call(&mut self, myself: &ActorRef<ProcessHostMsg>, req: Request) {
        let call = match calls::parse_call_args(&req.args) {
            Ok(call) => call,
            Err(e) => return self.respond(Response::failure(req.request_id, e)),
        };
        // A plugin that floods calls gets refusals, not unbounded tasks in neko.
        if self.outgoing.len() >= calls::MAX_CALLS_IN_FLIGHT {
            let e = WireError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many plugin calls in flight ({}); wait for some to finish",
                    calls::MAX_CALLS_IN_FLIGHT
                ),
            );
            return self.respond(Response::failure(req.request_id, e));
        }
        // Only a call this launch is serving counts as the waiting handler; an unknown or
        // finished one (a lie, or a background task) makes the request an outside call.
        let parent = req
            .call_id
            .as_ref()
            .and_then(|id| self.calls.get(id).map(|c| (id.clone(), c)));
        let mut timeout = call.timeout;
        if let Some((_, c)) = &parent {
            let Some(left) = calls::time_left(c.deadline) else {
                let e = WireError::deadline(format!("Entry '{}' has no time left", c.entry_id));
                return self.respond(Response::failure(req.request_id, e));
            };
            timeout = timeout.min(left);
        }
        let edge = CallEdge {
            id: next_call_id(),
            caller: self.plugin_id.clone(),
            caller_entry: parent.as_ref().map(|(_, c)| c.entry_id.clone()),
            caller_reentrant: self.manifest.reentrant,
            parent: parent
                .as_ref()
                .and_then(|(_, c)| c.via.as_ref().map(|v| v.id)),
            callee: call.plugin_id.clone(),
            event_type: call.event_type,
            event_id: call.event_id,
            timeout,
            started: Instant::now(),
            started_at: crate::clock::unix_now(),
        };
        self.outgoing.insert(
            edge.id,
            OutgoingCall {
                parent: parent.map(|(id, _)| id),
                callee: call.plugin_id,
            },
        );
        let refs = self.tree.borrow().clone();
        tokio::spawn(calls::route(
            refs,
            edge,
            call.args,
            myself.clone(),
            req.request_id,
        ));
    }

    /// Cancels the plugin-to-plugin calls waited for by the handler of `parent` (all of them
    /// when `None`); each then ends with `CallDone`.
    fn cancel_outgoing(&mut self, parent: Option<&str>) {
        for (id, out) in &self.outgoing {
            if parent.is_none() || out.parent.as_deref() == parent {
                let _ = self.supervisor.cast(PluginSupervisorMsg::CancelCall {
                    plugin_id: out.callee.clone(),
                    call: *id,
                });
            }
        }
    }

    /// The caller of a call this plugin serves went away: tell the plugin, answer at once.
    fn cancel_call(&mut self, id: u64) {
        let found = self
            .calls
            .iter()
            .find(|(_, c)| c.via.as_ref().is_some_and(|v| v.id == id))
            .map(|(call_id, _)| call_id.clone());
        let Some(call_id) = found else { return };
        let Some(call) = self.calls.remove(&call_id) else {
            return;
        };
        call.timer.abort();
        let _ = self.link.send(Message::Cancel(Cancel {
            call_id: call_id.clone(),
        }));
        self.cancel_outgoing(Some(&call_id));
        let _ = call.reply.send(Err(calls::caller_gone()));
    }

    fn trigger(
        &mut self,
        myself: &ActorRef<ProcessHostMsg>,
        req: TriggerRequest,
        reply: TriggerReply,
    ) {
        if !matches!(self.phase, Phase::Ready) {
            let _ = reply.send(Err(WireError::new(
                ErrorCode::NotReady,
                format!("Plugin '{}' is not ready", self.plugin_id),
            )));
            return;
        }
        let declared = match &req.event_type {
            None => self.entries.get(&req.entry_id).map(|e| e.timeout_ms),
            Some(t) => self
                .events
                .contains(&(t.clone(), req.entry_id.clone()))
                .then_some(None),
        };
        let Some(entry_timeout) = declared else {
            let message = match (&req.via, &req.event_type) {
                // The reference's words for a plugin-to-plugin call to something undeclared.
                (Some(_), t) => format!(
                    "Custom event '{}.{}' not found in plugin '{}'",
                    t.as_deref().unwrap_or(PLUGIN_ENTRY),
                    req.entry_id,
                    self.plugin_id
                ),
                (None, _) => format!(
                    "Entry '{}' not found in plugin '{}'",
                    req.entry_id, self.plugin_id
                ),
            };
            let _ = reply.send(Err(WireError::new(ErrorCode::NotFound, message)));
            return;
        };
        let timeout = req
            .timeout
            .or(entry_timeout.map(Duration::from_millis))
            .unwrap_or(self.settings.default_call_timeout);
        self.next_call += 1;
        let call_id = format!("{}-{}", self.launch, self.next_call);
        let sent = self.link.send(Message::Trigger(Trigger {
            call_id: call_id.clone(),
            entry_id: req.entry_id.clone(),
            args: req.args,
            timeout_ms: timeout.as_millis() as u64,
            run_id: req.run_id.clone(),
            event_type: req.event_type,
            caller: req.via.as_ref().map(|v| v.caller.to_string()),
        }));
        if let Err(e) = sent {
            let _ = reply.send(Err(WireError::new(
                ErrorCode::NotReady,
                format!("Communication error with plugin '{}': {e}", self.plugin_id),
            )));
            return;
        }
        let expired_id = call_id.clone();
        let timer = myself
            .send_after(timeout, move || ProcessHostMsg::CallExpired {
                call_id: expired_id,
            })
            .abort_handle();
        self.calls.insert(
            call_id,
            PendingCall {
                entry_id: req.entry_id,
                run_id: req.run_id,
                via: req.via,
                deadline: Instant::now() + timeout,
                reply,
                timer,
            },
        );
    }

    fn result(&mut self, result: neko_protocol::CallResult) {
        let Some(call) = self.calls.remove(&result.call_id) else {
            tracing::debug!(plugin_id = %self.plugin_id, call_id = %result.call_id, "late or unknown RESULT dropped");
            return;
        };
        call.timer.abort();
        let outcome = if result.ok {
            Ok(result.data)
        } else {
            let error = result.error.unwrap_or_else(|| {
                WireError::new(ErrorCode::PluginError, "plugin returned failure")
            });
            // The SDK's own deadline (the same one, started a moment later) reports TIMEOUT too;
            // a TIMEOUT well before the deadline is the plugin's own failure.
            if error.code == ErrorCode::Timeout && Instant::now() + DEADLINE_SLACK >= call.deadline
            {
                Err(WireError::deadline(error.message))
            } else {
                Err(error)
            }
        };
        let _ = call.reply.send(outcome);
    }

    fn call_expired(&mut self, call_id: &str) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        let _ = self.link.send(Message::Cancel(Cancel {
            call_id: call_id.to_string(),
        }));
        self.cancel_outgoing(Some(call_id));
        let _ = call.reply.send(Err(WireError::deadline(format!(
            "Entry '{}' timed out",
            call.entry_id
        ))));
    }

    fn check_heartbeat(&mut self) {
        if !matches!(self.phase, Phase::Ready) {
            return;
        }
        let silent = self.last_seen.elapsed();
        if silent > self.settings.heartbeat_timeout {
            self.kill(format!(
                "no heartbeat for {:.1}s (timeout {:?})",
                silent.as_secs_f64(),
                self.settings.heartbeat_timeout
            ));
        }
    }

    /// The plugin ran into a resource limit the host enforces: log it, kill it.
    fn exceeded(&mut self, hit: LimitHit) {
        let reason = hit.text();
        tracing::warn!(
            plugin_id = %self.plugin_id,
            pid = self.pid,
            limit = hit.key,
            limit_value = hit.limit,
            observed = %hit.observed,
            "plugin exceeded a resource limit: {reason}"
        );
        self.limit_hit = Some(hit);
        self.kill(reason);
    }

    /// Kills the process group now, recording why (the exit then counts as abnormal).
    fn kill(&mut self, reason: String) {
        tracing::warn!(plugin_id = %self.plugin_id, pid = self.pid, %reason, "killing plugin process");
        self.kill_reason.get_or_insert(reason);
        if let Some(pid) = self.pid {
            child::signal_group(pid, libc::SIGKILL);
        }
    }

    fn stop(&mut self, myself: &ActorRef<ProcessHostMsg>) {
        if self.stop_requested {
            return;
        }
        self.stop_requested = true;
        match &self.phase {
            Phase::Preparing(task) => {
                task.abort();
                self.finish(
                    myself,
                    "stopped before the process was spawned".into(),
                    false,
                );
            }
            Phase::Handshaking => self.escalate(myself, StopStep::Terminate),
            Phase::Ready => {
                self.phase = Phase::Stopping;
                let grace = self.settings.stop_grace;
                let _ = self.link.send(Message::Stop(Stop {
                    grace_ms: grace.as_millis() as u64,
                }));
                self.timers.push(
                    myself
                        .send_after(grace, || ProcessHostMsg::Escalate(StopStep::Terminate))
                        .abort_handle(),
                );
            }
            Phase::Stopping | Phase::Exited => {}
        }
    }

    fn escalate(&mut self, myself: &ActorRef<ProcessHostMsg>, step: StopStep) {
        let Some(pid) = self.pid else { return };
        if matches!(self.phase, Phase::Exited) {
            return;
        }
        self.phase = Phase::Stopping;
        match step {
            StopStep::Terminate => {
                tracing::info!(plugin_id = %self.plugin_id, pid, "plugin did not stop in time; sending SIGTERM to its group");
                child::signal_group(pid, libc::SIGTERM);
                self.timers.push(
                    myself
                        .send_after(self.settings.term_grace, || {
                            ProcessHostMsg::Escalate(StopStep::Kill)
                        })
                        .abort_handle(),
                );
            }
            StopStep::Kill => {
                tracing::warn!(plugin_id = %self.plugin_id, pid, "plugin ignored SIGTERM; sending SIGKILL to its group");
                child::signal_group(pid, libc::SIGKILL);
            }
        }
    }

    fn exited(&mut self, myself: &ActorRef<ProcessHostMsg>, status: std::io::Result<ExitStatus>) {
        let (mut description, abnormal) = match &status {
            Ok(s) => (child::describe_exit(s), !s.success()),
            Err(e) => (format!("wait failed: {e}"), true),
        };
        // An exit the rlimits may have caused (the host does not see them being hit).
        if self.limit_hit.is_none()
            && self.kill_reason.is_none()
            && let Ok(s) = &status
        {
            let lines = self
                .output
                .as_ref()
                .map(child::Tail::lines)
                .unwrap_or_default();
            if let Some(hit) = child::limit_exit_cause(&self.limits, s, &lines) {
                tracing::warn!(
                    plugin_id = %self.plugin_id,
                    pid = self.pid,
                    limit = hit.key,
                    limit_value = hit.limit,
                    observed = %hit.observed,
                    exit = %description,
                    "plugin exited at a resource limit: {}", hit.text()
                );
                self.limit_hit = Some(hit);
            }
        }
        if self.ready_at.is_none() {
            if let Ok(s) = &status
                && s.code() == Some(child::EXIT_CANNOT_START)
            {
                self.setup_failed = true;
            }
            // Why a start failed is usually in the last lines the process printed.
            let said = self.output.as_ref().map(|t| t.last(3)).unwrap_or_default();
            if !said.is_empty() {
                description = format!("{description}: {said}");
            }
        }
        if let Some(hit) = &self.limit_hit {
            description = format!("{description} — {}", hit.text());
        }
        self.finish(myself, description, abnormal);
    }

    /// Ends this launch: fails pending calls, reports to the supervisor, stops the actor.
    fn finish(&mut self, myself: &ActorRef<ProcessHostMsg>, description: String, abnormal: bool) {
        self.phase = Phase::Exited;
        let abnormal = abnormal || self.kill_reason.is_some();
        let (code, message) = if self.stop_requested {
            (
                ErrorCode::NotReady,
                format!("Plugin '{}' was stopped", self.plugin_id),
            )
        } else {
            (
                ErrorCode::PluginCrashed,
                format!("Plugin '{}' exited ({description})", self.plugin_id),
            )
        };
        // The plugin no longer waits for anything it called.
        self.cancel_outgoing(None);
        for (_, call) in self.calls.drain() {
            call.timer.abort();
            let _ = call.reply.send(Err(WireError::new(
                code.clone(),
                format!("{message} while running entry '{}'", call.entry_id),
            )));
        }
        let report = ExitReport {
            description,
            abnormal,
            ready_for: self.ready_at.map(|t| t.elapsed()),
            pid: self.pid,
            kill_reason: self.kill_reason.clone(),
            setup_failed: self.setup_failed,
            limit_exceeded: self.limit_hit.as_ref().map(LimitHit::text),
        };
        tracing::info!(
            plugin_id = %self.plugin_id,
            pid = self.pid,
            launch = self.launch,
            restart_count = self.restart_count,
            exit = %report.description,
            abnormal = report.abnormal,
            kill_reason = report.kill_reason.as_deref(),
            limit_exceeded = report.limit_exceeded.as_deref(),
            "plugin process exited"
        );
        let _ = self.supervisor.cast(PluginSupervisorMsg::HostExited {
            plugin_id: self.plugin_id.clone(),
            launch: self.launch,
            report,
        });
        // The key is only for this launch; drop our copy as soon as we are done.
        self.key = FrameKey::new(Vec::new());
        myself.stop(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of up to the limit passes; one more within the same second is a violation; a new
    /// window starts fresh.
    #[test]
    fn rate_meter_counts_per_one_second_window() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut meter = RateMeter::new(3);
        assert_eq!(meter.record(ms(0)), None);
        assert_eq!(meter.record(ms(1)), None);
        assert_eq!(meter.record(ms(2)), None);
        assert_eq!(meter.record(ms(400)), Some((4, Duration::from_millis(400))));
        // The next window starts with the first frame after the last one ended.
        let mut meter = RateMeter::new(3);
        for t in [0, 300, 600] {
            assert_eq!(meter.record(ms(t)), None);
        }
        for t in [1000, 1001, 1002] {
            assert_eq!(meter.record(ms(t)), None);
        }
        assert_eq!(meter.record(ms(1999)).map(|(n, _)| n), Some(4));
        // Steady traffic at the limit never trips it.
        let mut meter = RateMeter::new(10);
        for i in 0..1000 {
            assert_eq!(meter.record(ms(i * 100)), None, "frame {i}");
        }
    }

    /// 0 = unlimited.
    #[test]
    fn rate_meter_zero_is_unlimited() {
        let mut meter = RateMeter::new(0);
        let now = Instant::now();
        for _ in 0..100_000 {
            assert_eq!(meter.record(now), None);
        }
    }
}
