//! PluginSupervisor: one slot per registered plugin, one ProcessHost per launch, and the restart
//! policy between launches.
//!
//! Parent: the root supervisor. Children: the ProcessHosts (linked). Senders: the gateway and the
//! RunTracker (Start/Stop/Reload/Trigger), its hosts (HostSpawned/HostReady/HostExited), its own
//! restart timers (RestartDue).
//!
//! Every exit is decided explicitly: a stop that was asked for ends in `stopped`; any other exit goes
//! through the plugin's [`RestartPolicy`] → restart after a backoff, `stopped`, or give up →
//! `crashed` (down until started by hand). A host actor that fails is treated as a crash of its
//! plugin: the supervisor kills the process group it was told about and decides as for any crash.
//! This actor never lets a child's death stop it (ractor's default would).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neko_protocol::{EntrySpec, ErrorCode, EventSpec, PluginId, PluginState, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::clock::iso_now;
use crate::error::Error;
use crate::manifest::{Exposed, ExposedMap, PluginManifest};
use crate::message_plane::{Doc, MessagePlaneHandle, StoreName};
use crate::process_host::calls::caller_gone;
use crate::process_host::{
    ExitReport, HostSettings, ProcessHost, ProcessHostArgs, ProcessHostMsg, TriggerReply,
    TriggerRequest, child, describe_python,
};
use crate::python_env::PythonEnvMsg;
use crate::registry::RegistryMsg;
use crate::restart_policy::{Decision, ExitInfo, RestartPolicy, RestartSettings, RestartTracker};
use crate::root::TreeRefs;
use crate::status_manager::{Lifecycle, StatusManagerMsg};

/// The PluginSupervisor actor.
pub struct PluginSupervisor;

/// The `plugin_id` of the server's own lifecycle records.
const SERVER: &str = "server";

/// What the supervisor starts with.
pub struct PluginSupervisorArgs {
    pub registry: ActorRef<RegistryMsg>,
    pub status: ActorRef<StatusManagerMsg>,
    pub python: ActorRef<PythonEnvMsg>,
    pub host_settings: Arc<HostSettings>,
    pub restart_defaults: RestartSettings,
    /// Start `auto_start` plugins when the supervisor starts.
    pub autostart: bool,
    /// The tree's current actors, handed to every host.
    pub tree: watch::Receiver<Option<TreeRefs>>,
    /// The message plane: supervision records go there, and plugins are told its endpoints.
    pub messages: MessagePlaneHandle,
}

/// The answer to a manual start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    AlreadyRunning,
}

/// Messages of the PluginSupervisor.
pub enum PluginSupervisorMsg {
    /// Start a plugin by hand (answers once it is ready, or failed).
    Start(PluginId, RpcReplyPort<Result<StartOutcome, Error>>),
    /// Stop a plugin by hand (answers once its process is gone).
    Stop(PluginId, RpcReplyPort<Result<(), Error>>),
    /// Stop, re-read plugin.toml, start.
    Reload(PluginId, RpcReplyPort<Result<StartOutcome, Error>>),
    /// Run an entry of a plugin; one that is starting or restarting is waited for (up to the
    /// call's deadline).
    Trigger(PluginId, TriggerRequest, TriggerReply),
    /// A call waiting for its plugin to become ready ran out of time.
    CallWaitExpired { plugin_id: PluginId, wait_id: u64 },
    /// The root restarted the message plane: use this one from now on.
    PlaneRestarted(MessagePlaneHandle),
    /// Answers once every plugin started at boot has finished its first launch (ready, or
    /// failed), so the gateway serves only then, as the reference does.
    AwaitStartup(RpcReplyPort<()>),
    /// A run's client canceled it: forward to the plugin's host, if it runs.
    CancelRun { plugin_id: PluginId, run_id: String },
    /// The caller of a plugin-to-plugin call no longer waits (its own call ended, or it exited):
    /// cancel the callee's side, which answers `CANCELED` at once.
    CancelCall { plugin_id: PluginId, call: u64 },
    /// Stop every plugin (supervisor shutdown); answers when all processes are gone.
    StopAll(RpcReplyPort<()>),
    /// A host spawned its process.
    HostSpawned {
        plugin_id: PluginId,
        launch: u64,
        pid: u32,
    },
    /// The entries of a plugin that is not running, read from its code (`describe_python`).
    Described {
        plugin_id: PluginId,
        entries: Vec<EntrySpec>,
    },
    /// A host's plugin said HELLO.
    HostReady {
        plugin_id: PluginId,
        launch: u64,
        entries: Vec<EntrySpec>,
        events: Vec<EventSpec>,
        sdk: String,
        input_schema: Option<Value>,
    },
    /// A host's launch ended.
    HostExited {
        plugin_id: PluginId,
        launch: u64,
        report: ExitReport,
    },
    /// A restart backoff elapsed.
    RestartDue {
        plugin_id: PluginId,
        generation: u64,
    },
}

struct HostHandle {
    actor: ActorRef<ProcessHostMsg>,
    launch: u64,
    pid: Option<u32>,
    ready: bool,
    /// This launch is a reload's: `plugin_reloaded` is recorded once it is ready.
    reloaded: bool,
}

/// What the operator (or the config) wants of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
}

struct Slot {
    manifest: Arc<PluginManifest>,
    policy: RestartPolicy,
    tracker: RestartTracker,
    host: Option<HostHandle>,
    lifecycle: Lifecycle,
    want: Want,
    /// Bumped whenever a pending restart must be forgotten.
    generation: u64,
    restart_timer: Option<AbortHandle>,
    start_waiters: Vec<RpcReplyPort<Result<StartOutcome, Error>>>,
    stop_waiters: Vec<RpcReplyPort<Result<(), Error>>>,
    /// A reload is under way: start again once the current process is gone.
    reload_after_stop: bool,
    /// The next launch is a reload's (the plugin is told, and runs its reload hook).
    reload_launch: bool,
    /// Calls that arrived while the plugin was starting or restarting.
    waiting_calls: Vec<WaitingCall>,
}

/// A call parked until its plugin is ready.
struct WaitingCall {
    wait_id: u64,
    req: TriggerRequest,
    reply: TriggerReply,
}

/// The PluginSupervisor's state.
pub struct PluginSupervisorState {
    registry: ActorRef<RegistryMsg>,
    status: ActorRef<StatusManagerMsg>,
    python: ActorRef<PythonEnvMsg>,
    tree: watch::Receiver<Option<TreeRefs>>,
    messages: MessagePlaneHandle,
    host_settings: Arc<HostSettings>,
    restart_defaults: RestartSettings,
    slots: HashMap<PluginId, Slot>,
    next_launch: u64,
    shutting_down: bool,
    stop_all_waiters: Vec<RpcReplyPort<()>>,
    /// Plugins started at boot whose first launch has not settled yet.
    startup_pending: HashSet<PluginId>,
    startup_waiters: Vec<RpcReplyPort<()>>,
    next_wait_id: u64,
}

impl Actor for PluginSupervisor {
    type Msg = PluginSupervisorMsg;
    type State = PluginSupervisorState;
    type Arguments = PluginSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PluginSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = PluginSupervisorState {
            registry: args.registry,
            status: args.status,
            python: args.python,
            tree: args.tree,
            messages: args.messages,
            host_settings: args.host_settings,
            restart_defaults: args.restart_defaults,
            slots: HashMap::new(),
            next_launch: 0,
            shutting_down: false,
            stop_all_waiters: Vec::new(),
            startup_pending: HashSet::new(),
            startup_waiters: Vec::new(),
            next_wait_id: 0,
        };
        let (plugins, order) = state
            .registry
            .call(RegistryMsg::StartPlan, Some(Duration::from_secs(10)))
            .await?
            .success_or("registry did not answer")?;
        state.lifecycle_record("server_startup_begin", SERVER, json!({}));
        for manifest in plugins {
            let data = json!({"enabled": manifest.enabled, "auto_start": manifest.auto_start});
            state.lifecycle_record("plugin_loaded", manifest.id.as_ref(), data);
            state.add_slot(manifest);
        }
        if args.autostart {
            for id in order {
                state.autostart(&myself, &id).await;
            }
        }
        if state.startup_pending.is_empty() {
            state.startup_ready();
        }
        state.describe_idle_python_plugins(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PluginSupervisorMsg::Start(id, reply) => state.start(&myself, id, reply).await,
            PluginSupervisorMsg::Stop(id, reply) => state.stop(id, reply),
            PluginSupervisorMsg::Reload(id, reply) => state.reload(&myself, id, reply).await,
            PluginSupervisorMsg::Trigger(id, req, reply) => state.trigger(&myself, id, req, reply),
            PluginSupervisorMsg::CallWaitExpired { plugin_id, wait_id } => {
                state.call_wait_expired(&plugin_id, wait_id)
            }
            PluginSupervisorMsg::PlaneRestarted(handle) => state.messages = handle,
            PluginSupervisorMsg::AwaitStartup(reply) => {
                if state.startup_pending.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.startup_waiters.push(reply);
                }
            }
            PluginSupervisorMsg::CancelRun { plugin_id, run_id } => {
                if let Some(host) = state.slots.get(&plugin_id).and_then(|s| s.host.as_ref()) {
                    let _ = host.actor.cast(ProcessHostMsg::CancelRun(run_id));
                }
            }
            PluginSupervisorMsg::CancelCall { plugin_id, call } => {
                state.cancel_call(&plugin_id, call)
            }
            PluginSupervisorMsg::StopAll(reply) => state.stop_all(reply),
            PluginSupervisorMsg::HostSpawned {
                plugin_id,
                launch,
                pid,
            } => state.host_spawned(plugin_id, launch, pid),
            PluginSupervisorMsg::Described { plugin_id, entries } => {
                state.described(plugin_id, entries)
            }
            PluginSupervisorMsg::HostReady {
                plugin_id,
                launch,
                entries,
                events,
                sdk,
                input_schema,
            } => state.host_ready(plugin_id, launch, entries, events, sdk, input_schema),
            PluginSupervisorMsg::HostExited {
                plugin_id,
                launch,
                report,
            } => state.host_exited(&myself, plugin_id, launch, report).await,
            PluginSupervisorMsg::RestartDue {
                plugin_id,
                generation,
            } => state.restart_due(&myself, plugin_id, generation).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A host ends itself right after casting HostExited, and ractor delivers supervision
        // events before messages, so a clean termination is left to that message. Only a failure
        // (panic or error) means the host could not report.
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("host actor failed: {err}")),
            _ => return Ok(()),
        };
        let found = state.slots.iter().find_map(|(id, slot)| {
            slot.host
                .as_ref()
                .filter(|h| h.actor.get_id() == cell.get_id())
                .map(|h| (id.clone(), h.launch, h.pid))
        });
        if let Some((plugin_id, launch, pid)) = found {
            if let Some(pid) = pid {
                child::signal_group(pid, libc::SIGKILL);
            }
            tracing::error!(plugin_id = %plugin_id, launch, pid, reason = %why, "process host failed; its plugin counts as crashed");
            let report = ExitReport {
                description: why,
                abnormal: true,
                ready_for: None,
                pid,
                kill_reason: Some("host actor failed".into()),
                setup_failed: false,
                limit_exceeded: None,
            };
            state.host_exited(&myself, plugin_id, launch, report).await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Best effort when stopped without StopAll: no process may outlive the tree.
        for slot in state.slots.values() {
            if let Some(pid) = slot.host.as_ref().and_then(|h| h.pid) {
                child::signal_group(pid, libc::SIGKILL);
            }
        }
        Ok(())
    }
}

impl PluginSupervisorState {
    fn add_slot(&mut self, manifest: Arc<PluginManifest>) {
        let policy = match RestartPolicy::new(&self.restart_defaults, &manifest.restart) {
            Ok(p) => p,
            Err(reason) => {
                tracing::warn!(plugin_id = %manifest.id, %reason, "invalid restart policy in plugin.toml; using the defaults");
                RestartPolicy::new(&self.restart_defaults, &Default::default())
                    .expect("the global defaults were validated at load")
            }
        };
        let state = if manifest.enabled {
            PluginState::Stopped
        } else {
            PluginState::Disabled
        };
        let slot = Slot {
            manifest: manifest.clone(),
            policy,
            tracker: RestartTracker::default(),
            host: None,
            lifecycle: Lifecycle::new(state),
            want: Want::Stopped,
            generation: 0,
            restart_timer: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            reload_after_stop: false,
            reload_launch: false,
            waiting_calls: Vec::new(),
        };
        let _ = self.status.cast(StatusManagerMsg::LifecycleChanged {
            plugin_id: manifest.id.clone(),
            lifecycle: slot.lifecycle.clone(),
        });
        self.slots.insert(manifest.id.clone(), slot);
    }

    /// Announces the plugin's state, then settles what waits on it: the boot-time readiness of
    /// the gateway, and calls parked until the plugin is ready.
    fn publish(&mut self, id: &PluginId) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let _ = self.status.cast(StatusManagerMsg::LifecycleChanged {
            plugin_id: id.clone(),
            lifecycle: slot.lifecycle.clone(),
        });
        let state = slot.lifecycle.state;
        match (&slot.host, slot.want) {
            (Some(host), Want::Running) if host.ready => {
                for call in slot.waiting_calls.drain(..) {
                    forward_call(id, &host.actor, call.req, call.reply);
                }
            }
            (_, Want::Stopped) if !slot.waiting_calls.is_empty() => {
                let calls = std::mem::take(&mut slot.waiting_calls);
                let refused = self.not_running(id, state);
                for call in calls {
                    let _ = call.reply.send(Err(refused.clone()));
                }
            }
            _ => {}
        }
        if state != PluginState::Starting
            && self.startup_pending.remove(id)
            && self.startup_pending.is_empty()
        {
            self.startup_ready();
        }
    }

    /// Every plugin started at boot is up (or failed): the reference's `server_startup_ready`.
    fn startup_ready(&mut self) {
        self.lifecycle_record("server_startup_ready", SERVER, json!({}));
        for w in self.startup_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Records a supervision event in the message plane's `lifecycle` store (the reference's
    /// record: `type`, `plugin_id` ("server" for the server's own), `trace_id`, `lifecycle_id`,
    /// `time`, plus `data`).
    fn lifecycle_record(&self, kind: &str, plugin_id: &str, data: Value) {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let mut record = json!({
            "type": kind, "plugin_id": plugin_id, "trace_id": trace_id, "lifecycle_id": trace_id,
            "time": iso_now(),
        });
        if let (Value::Object(r), Value::Object(d)) = (&mut record, data) {
            r.extend(d);
        }
        self.messages.publish(StoreName::Lifecycle, "all", record);
    }

    /// Lists the entries of Python plugins that do not start with neko (`auto_start = false`),
    /// decorated ones besides those plugin.toml names, as the reference does by importing their modules: one
    /// `python -m plugin.describe` each, in the background, after the boot plugins started.
    fn describe_idle_python_plugins(&self, myself: &ActorRef<PluginSupervisorMsg>) {
        let timeout = self.host_settings.handshake_timeout;
        for slot in self.slots.values() {
            let m = &slot.manifest;
            let python = matches!(m.runtime, crate::manifest::Runtime::Python { .. });
            if !(python && m.enabled && !m.auto_start) {
                continue;
            }
            let (manifest, env, me) = (m.clone(), self.python.clone(), myself.clone());
            tokio::spawn(async move {
                match describe_python(&manifest, &env, timeout).await {
                    Ok(entries) => {
                        let _ = me.cast(PluginSupervisorMsg::Described {
                            plugin_id: manifest.id.clone(),
                            entries,
                        });
                    }
                    Err(error) => tracing::warn!(
                        plugin_id = %manifest.id, %error,
                        "cannot list the entries of a plugin that is not running"
                    ),
                }
            });
        }
    }

    /// Entries read from a plugin's code; a HELLO's (it started meanwhile) win.
    fn described(&mut self, id: PluginId, entries: Vec<EntrySpec>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.host.is_some() || !slot.lifecycle.entries.is_empty() {
            return;
        }
        tracing::info!(plugin_id = %id, entries = entries.len(), "entries read from the plugin's code");
        slot.lifecycle.entries = entries;
        self.publish(&id);
    }

    async fn autostart(&mut self, myself: &ActorRef<PluginSupervisorMsg>, id: &PluginId) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        if !(slot.manifest.enabled && slot.manifest.auto_start) {
            let reason = if slot.manifest.enabled {
                "auto_start is false"
            } else {
                "disabled"
            };
            self.lifecycle_record(
                "plugin_start_skipped",
                id.as_ref(),
                json!({"reason": reason}),
            );
            return;
        }
        // Startup applies the same checks as a manual start (dependencies, SDK ranges).
        match self.resolve(id).await {
            Ok(()) => {
                self.startup_pending.insert(id.clone());
                self.launch(myself, id).await
            }
            Err(e) => {
                tracing::error!(plugin_id = %id, error = %e, "plugin not started");
                if let Some(slot) = self.slots.get_mut(id) {
                    slot.lifecycle.error = Some(e.to_string());
                }
                self.publish(id);
            }
        }
    }

    /// Re-reads the plugin's manifest through the registry (checks included) into its slot.
    async fn resolve(&mut self, id: &PluginId) -> Result<(), Error> {
        let manifest = self.fetch_new(id).await?;
        let slot = self
            .slots
            .get_mut(id)
            .ok_or_else(|| Error::PluginNotFound(id.clone()))?;
        slot.policy =
            RestartPolicy::new(&self.restart_defaults, &manifest.restart).map_err(|reason| {
                Error::PluginInvalid {
                    plugin: id.clone(),
                    reason,
                }
            })?;
        slot.manifest = manifest;
        Ok(())
    }

    async fn start(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: PluginId,
        reply: RpcReplyPort<Result<StartOutcome, Error>>,
    ) {
        if self.shutting_down {
            let _ = reply.send(Err(Error::ShuttingDown));
            return;
        }
        self.lifecycle_record("plugin_start_requested", id.as_ref(), json!({}));
        // A plugin the supervisor has never seen may have been added to the folder since.
        if !self.slots.contains_key(&id) {
            match self.fetch_new(&id).await {
                Ok(m) => self.add_slot(m),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let slot = self.slots.get_mut(&id).expect("slot exists");
        if let Some(host) = &slot.host {
            if host.ready && slot.want == Want::Running {
                let _ = reply.send(Ok(StartOutcome::AlreadyRunning));
            } else if slot.want == Want::Running {
                slot.start_waiters.push(reply);
            } else {
                // It is being stopped: start it again once it is gone.
                slot.reload_after_stop = true;
                slot.start_waiters.push(reply);
            }
            return;
        }
        if let Err(e) = self.resolve(&id).await {
            let slot = self.slots.get_mut(&id).expect("slot exists");
            slot.lifecycle.error = Some(e.to_string());
            self.publish(&id);
            let _ = reply.send(Err(e));
            return;
        }
        let slot = self.slots.get_mut(&id).expect("slot exists");
        if !slot.manifest.enabled {
            let _ = reply.send(Err(Error::PluginDisabled(id)));
            return;
        }
        slot.tracker.reset();
        slot.lifecycle.restarts = 0;
        slot.start_waiters.push(reply);
        self.launch(myself, &id).await;
    }

    /// The plugin's manifest as plugin.toml says now, its dependencies checked against what the
    /// other plugins expose.
    async fn fetch_new(&self, id: &PluginId) -> Result<Arc<PluginManifest>, Error> {
        let exposed = self.exposed();
        self.registry
            .call(
                |port| RegistryMsg::Resolve(id.clone(), exposed, port),
                Some(Duration::from_secs(10)),
            )
            .await
            .map_err(|e| Error::Unavailable(format!("registry: {e}")))?
            .success_or(Error::Unavailable("registry did not answer".into()))?
    }

    fn stop(&mut self, id: PluginId, reply: RpcReplyPort<Result<(), Error>>) {
        self.lifecycle_record("plugin_stop_requested", id.as_ref(), json!({}));
        let Some(slot) = self.slots.get_mut(&id) else {
            // The reference answers the same for unknown and stopped plugins.
            let _ = reply.send(Err(Error::PluginNotRunning(id)));
            return;
        };
        slot.want = Want::Stopped;
        slot.reload_after_stop = false;
        for w in slot.start_waiters.drain(..) {
            let _ = w.send(Err(Error::StartFailed {
                plugin: id.clone(),
                reason: "stopped before it was ready".into(),
            }));
        }
        match &slot.host {
            Some(host) => {
                let _ = host.actor.cast(ProcessHostMsg::Stop);
                slot.stop_waiters.push(reply);
                slot.lifecycle.state = PluginState::Stopping;
                self.publish(&id);
            }
            None if slot.lifecycle.state == PluginState::Restarting => {
                // Stopping during a backoff: forget the pending restart.
                slot.generation += 1;
                if let Some(t) = slot.restart_timer.take() {
                    t.abort();
                }
                slot.lifecycle.state = PluginState::Stopped;
                tracing::info!(plugin_id = %id, "plugin stopped (pending restart canceled)");
                self.publish(&id);
                let _ = reply.send(Ok(()));
            }
            None => {
                let _ = reply.send(Err(Error::PluginNotRunning(id)));
            }
        }
    }

    async fn reload(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: PluginId,
        reply: RpcReplyPort<Result<StartOutcome, Error>>,
    ) {
        let running = self.slots.get(&id).is_some_and(|s| s.host.is_some());
        if !running {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.reload_launch = true;
            }
            self.start(myself, id.clone(), reply).await;
            // Taken by the launch; a start that failed before launching must not leave it set.
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.reload_launch = false;
            }
            return;
        }
        tracing::info!(plugin_id = %id, "reloading plugin");
        self.lifecycle_record("plugin_reload_requested", id.as_ref(), json!({}));
        let slot = self.slots.get_mut(&id).expect("checked above");
        slot.want = Want::Stopped;
        slot.reload_after_stop = true;
        slot.start_waiters.push(reply);
        if let Some(host) = &slot.host {
            let _ = host.actor.cast(ProcessHostMsg::Stop);
        }
        slot.lifecycle.state = PluginState::Stopping;
        self.publish(&id);
    }

    /// The entries and custom events of the plugins that said HELLO (or were described).
    fn exposed(&self) -> ExposedMap {
        self.slots
            .iter()
            .filter(|(_, s)| !s.lifecycle.entries.is_empty() || !s.lifecycle.events.is_empty())
            .map(|(id, s)| {
                let exposed = Exposed {
                    entries: s.lifecycle.entries.iter().map(|e| e.id.clone()).collect(),
                    events: s
                        .lifecycle
                        .events
                        .iter()
                        .map(|e| (e.event_type.clone(), e.id.clone()))
                        .collect(),
                };
                (id.clone(), exposed)
            })
            .collect()
    }

    /// The reference's refusal for a plugin that is not running, with its details: a hint and
    /// the plugins that are.
    fn not_running(&self, id: &PluginId, state: PluginState) -> WireError {
        let mut running: Vec<&str> = self
            .slots
            .iter()
            .filter(|(_, s)| s.host.as_ref().is_some_and(|h| h.ready))
            .map(|(id, _)| id.as_str())
            .collect();
        running.sort_unstable();
        WireError {
            // The reference's text; the state is in the details.
            details: Some(json!({
                "hint": format!("start it first: POST /plugin/{id}/start"),
                "running_plugins": running,
                "status": state.to_string(),
            })),
            ..WireError::new(
                ErrorCode::NotReady,
                format!("Plugin '{id}' is registered but not running"),
            )
        }
    }

    fn trigger(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: PluginId,
        req: TriggerRequest,
        reply: TriggerReply,
    ) {
        // The reference's `events` record of every trigger it serves (runs and the HTTP trigger;
        // its plugin-to-plugin calls take another path, and neko records those as `plugin_call`).
        if req.via.is_none() {
            let event_id = uuid::Uuid::new_v4().to_string();
            self.messages.publish_doc(
                StoreName::Events,
                "all",
                &Doc::Map(vec![
                    ("type", Doc::str("plugin_triggered")),
                    ("plugin_id", Doc::str(id.as_str())),
                    ("entry_id", Doc::str(&req.entry_id)),
                    ("args", Doc::Json(req.args.clone())),
                    ("run_id", Doc::opt_str(req.run_id.as_deref())),
                    // The reference's fields that neko has no value for.
                    ("task_id", Doc::Nil),
                    ("client", Doc::Nil),
                    ("received_at", Doc::Str(iso_now())),
                    ("trace_id", Doc::str(&event_id)),
                    ("event_id", Doc::Str(event_id)),
                ]),
            );
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            let mut known: Vec<&str> = self.slots.keys().map(PluginId::as_str).collect();
            known.sort_unstable();
            let _ = reply.send(Err(WireError {
                details: Some(json!({ "known_plugins": known })),
                ..WireError::new(
                    ErrorCode::NotFound,
                    format!("Plugin '{id}' is not found/registered"),
                )
            }));
            return;
        };
        match &slot.host {
            Some(host) if host.ready && slot.want == Want::Running => {
                forward_call(&id, &host.actor, req, reply);
            }
            // Coming up (or back): wait for it rather than fail a caller that is merely early.
            _ if slot.want == Want::Running
                && matches!(
                    slot.lifecycle.state,
                    PluginState::Starting | PluginState::Restarting
                ) =>
            {
                self.next_wait_id += 1;
                let wait_id = self.next_wait_id;
                let wait = req
                    .timeout
                    .unwrap_or(self.host_settings.default_call_timeout);
                let plugin_id = id.clone();
                myself.send_after(wait, move || PluginSupervisorMsg::CallWaitExpired {
                    plugin_id,
                    wait_id,
                });
                slot.waiting_calls.push(WaitingCall {
                    wait_id,
                    req,
                    reply,
                });
            }
            _ => {
                let state = slot.lifecycle.state;
                let _ = reply.send(Err(self.not_running(&id, state)));
            }
        }
    }

    fn cancel_call(&mut self, id: &PluginId, call: u64) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if let Some(host) = &slot.host {
            let _ = host.actor.cast(ProcessHostMsg::CancelCall(call));
        }
        let parked = slot
            .waiting_calls
            .iter()
            .position(|w| w.req.via.as_ref().is_some_and(|v| v.id == call));
        if let Some(i) = parked {
            let w = slot.waiting_calls.swap_remove(i);
            let _ = w.reply.send(Err(caller_gone()));
        }
    }

    fn call_wait_expired(&mut self, id: &PluginId, wait_id: u64) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if let Some(i) = slot.waiting_calls.iter().position(|c| c.wait_id == wait_id) {
            let call = slot.waiting_calls.swap_remove(i);
            let _ = call.reply.send(Err(WireError::new(
                ErrorCode::NotReady,
                format!(
                    "Plugin '{id}' did not become ready in time (status: {})",
                    slot.lifecycle.state
                ),
            )));
        }
    }

    fn stop_all(&mut self, reply: RpcReplyPort<()>) {
        if !self.shutting_down {
            self.lifecycle_record("server_shutdown_begin", SERVER, json!({}));
            for (id, slot) in &self.slots {
                if slot.host.is_some() {
                    self.lifecycle_record("plugin_shutdown_requested", id.as_ref(), json!({}));
                }
            }
        }
        self.shutting_down = true;
        for slot in self.slots.values_mut() {
            slot.want = Want::Stopped;
            slot.reload_after_stop = false;
            slot.generation += 1;
            if let Some(t) = slot.restart_timer.take() {
                t.abort();
            }
            if let Some(host) = &slot.host {
                let _ = host.actor.cast(ProcessHostMsg::Stop);
            }
        }
        self.stop_all_waiters.push(reply);
        self.check_all_stopped();
    }

    fn check_all_stopped(&mut self) {
        if self.shutting_down && self.slots.values().all(|s| s.host.is_none()) {
            if !self.stop_all_waiters.is_empty() {
                self.lifecycle_record("server_shutdown_complete", SERVER, json!({}));
            }
            for w in self.stop_all_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    async fn launch(&mut self, myself: &ActorRef<PluginSupervisorMsg>, id: &PluginId) {
        self.next_launch += 1;
        let launch = self.next_launch;
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        slot.want = Want::Running;
        slot.generation += 1;
        if let Some(t) = slot.restart_timer.take() {
            t.abort();
        }
        let args = ProcessHostArgs {
            manifest: slot.manifest.clone(),
            launch,
            restart_count: slot.lifecycle.restarts,
            settings: self.host_settings.clone(),
            supervisor: myself.clone(),
            status: self.status.clone(),
            python: self.python.clone(),
            tree: self.tree.clone(),
            plane: self.messages.endpoints().clone(),
            reloaded: std::mem::take(&mut slot.reload_launch),
        };
        let reloaded = args.reloaded;
        let name = format!("neko.host.{id}.{launch}");
        match Actor::spawn_linked(Some(name), ProcessHost, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                slot.host = Some(HostHandle {
                    actor,
                    launch,
                    pid: None,
                    ready: false,
                    reloaded,
                });
                slot.lifecycle.state = PluginState::Starting;
                slot.lifecycle.pid = None;
                slot.lifecycle.error = None;
                self.publish(id);
            }
            Err(e) => {
                let report = ExitReport {
                    description: format!("could not set up the plugin link: {e}"),
                    abnormal: true,
                    ready_for: None,
                    pid: None,
                    kill_reason: None,
                    setup_failed: true,
                    limit_exceeded: None,
                };
                // Same path as any failed start, so the restart policy applies.
                Box::pin(self.exit_decision(myself, id, launch, report)).await;
            }
        }
    }

    fn host_spawned(&mut self, id: PluginId, launch: u64, pid: u32) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(host) = slot.host.as_mut().filter(|h| h.launch == launch) {
            host.pid = Some(pid);
            slot.lifecycle.pid = Some(pid);
            self.publish(&id);
        }
    }

    fn host_ready(
        &mut self,
        id: PluginId,
        launch: u64,
        entries: Vec<EntrySpec>,
        events: Vec<EventSpec>,
        sdk: String,
        input_schema: Option<Value>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(host) = slot.host.as_mut().filter(|h| h.launch == launch) else {
            return;
        };
        host.ready = true;
        slot.lifecycle.state = if slot.want == Want::Running {
            PluginState::Running
        } else {
            PluginState::Stopping
        };
        slot.lifecycle.entries = entries;
        slot.lifecycle.events = events;
        slot.lifecycle.sdk = Some(sdk);
        slot.lifecycle.input_schema = input_schema;
        slot.lifecycle.error = None;
        for w in slot.start_waiters.drain(..) {
            let _ = w.send(Ok(StartOutcome::Started));
        }
        let data =
            json!({"pid": host.pid, "restart_count": slot.lifecycle.restarts, "launch": launch});
        let reloaded = std::mem::take(&mut host.reloaded);
        self.publish(&id);
        self.lifecycle_record("plugin_started", id.as_ref(), data.clone());
        if reloaded {
            self.lifecycle_record("plugin_reloaded", id.as_ref(), data);
        }
    }

    async fn host_exited(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: PluginId,
        launch: u64,
        report: ExitReport,
    ) {
        let current = self
            .slots
            .get(&id)
            .and_then(|s| s.host.as_ref())
            .is_some_and(|h| h.launch == launch);
        if !current {
            return;
        }
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.host = None;
        }
        self.exit_decision(myself, &id, launch, report).await;
        self.check_all_stopped();
    }

    /// Decides what follows the end of a launch, logs it, and publishes the new state.
    async fn exit_decision(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: &PluginId,
        launch: u64,
        report: ExitReport,
    ) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        slot.lifecycle.pid = None;
        slot.lifecycle.last_exit = Some(report.description.clone());
        if slot.want == Want::Stopped {
            tracing::info!(plugin_id = %id, pid = report.pid, launch, exit = %report.description, restart_count = slot.lifecycle.restarts, "plugin stopped");
            let data = json!({"pid": report.pid, "exit": report.description, "restart_count": slot.lifecycle.restarts});
            slot.lifecycle.state = PluginState::Stopped;
            slot.lifecycle.error = None;
            for w in slot.stop_waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            let restart = slot.reload_after_stop && !self.shutting_down;
            slot.reload_after_stop = false;
            self.publish(id);
            self.lifecycle_record("plugin_stopped", id.as_ref(), data);
            if restart {
                match self.resolve(id).await {
                    Ok(()) => {
                        if let Some(slot) = self.slots.get_mut(id) {
                            slot.tracker.reset();
                            slot.lifecycle.restarts = 0;
                            slot.reload_launch = true;
                        }
                        Box::pin(self.launch(myself, id)).await;
                    }
                    Err(e) => {
                        if let Some(slot) = self.slots.get_mut(id) {
                            slot.lifecycle.error = Some(e.to_string());
                            for w in slot.start_waiters.drain(..) {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                        self.publish(id);
                    }
                }
            }
            return;
        }
        let info = ExitInfo {
            abnormal: report.abnormal,
            ready_for: report.ready_for,
        };
        let exit = json!({
            "pid": report.pid, "exit": report.description, "abnormal": report.abnormal,
            "kill_reason": report.kill_reason, "ready_for_ms": report.ready_for.map(|d| d.as_millis() as u64),
            "limit_exceeded": report.limit_exceeded,
        });
        let decision = if report.setup_failed {
            Decision::GiveUp {
                restarts_in_window: 0,
                reason: "the plugin cannot be started".into(),
            }
        } else {
            slot.tracker
                .on_exit(&slot.policy, Instant::now(), &info, rand::random::<f64>())
        };
        // A manual start waits for readiness; a launch that died first fails that start.
        if report.ready_for.is_none() {
            let reason = if report.setup_failed {
                report.description.clone()
            } else {
                format!(
                    "process died immediately after startup ({})",
                    report.description
                )
            };
            for w in slot.start_waiters.drain(..) {
                let _ = w.send(Err(Error::StartFailed {
                    plugin: id.clone(),
                    reason: reason.clone(),
                }));
            }
        }
        let followup = match &decision {
            Decision::Restart { attempt, delay, .. } => (
                "plugin_restarting",
                json!({"attempt": attempt, "delay_ms": delay.as_millis() as u64, "restart_count": slot.lifecycle.restarts + 1}),
            ),
            Decision::Stop => ("plugin_stopped", json!({"exit": report.description})),
            Decision::GiveUp { reason, .. } => (
                "plugin_gave_up",
                json!({"reason": reason, "restart_count": slot.lifecycle.restarts}),
            ),
        };
        match decision {
            Decision::Restart {
                attempt,
                delay,
                class,
            } => {
                slot.lifecycle.state = PluginState::Restarting;
                slot.lifecycle.restarts += 1;
                // Why it died, when neko knows: a kill by its host, or a resource limit.
                slot.lifecycle.error = report
                    .kill_reason
                    .clone()
                    .or_else(|| report.limit_exceeded.clone());
                tracing::warn!(
                    plugin_id = %id,
                    pid = report.pid,
                    exit = %report.description,
                    kill_reason = report.kill_reason.as_deref(),
                    class = ?class,
                    attempt,
                    restart_count = slot.lifecycle.restarts,
                    delay_ms = delay.as_millis() as u64,
                    "plugin crashed; restarting"
                );
                slot.generation += 1;
                let generation = slot.generation;
                let plugin_id = id.clone();
                slot.restart_timer = Some(
                    myself
                        .send_after(delay, move || PluginSupervisorMsg::RestartDue {
                            plugin_id,
                            generation,
                        })
                        .abort_handle(),
                );
            }
            Decision::Stop => {
                tracing::info!(plugin_id = %id, pid = report.pid, exit = %report.description, restart_count = slot.lifecycle.restarts, "plugin exited; its restart policy does not restart it");
                slot.lifecycle.state = PluginState::Stopped;
                slot.want = Want::Stopped;
                if report.limit_exceeded.is_some() {
                    slot.lifecycle.error = report.limit_exceeded.clone();
                }
            }
            Decision::GiveUp {
                restarts_in_window,
                reason,
            } => {
                tracing::error!(
                    plugin_id = %id,
                    pid = report.pid,
                    exit = %report.description,
                    restart_count = slot.lifecycle.restarts,
                    restarts_in_window,
                    %reason,
                    "plugin crashed; giving up"
                );
                // One that cannot start as configured (its module does not import, its entry is
                // wrong, ...) is invalid, as a plugin the reference could not load.
                slot.lifecycle.state = if report.setup_failed {
                    PluginState::Invalid
                } else {
                    PluginState::Crashed
                };
                slot.lifecycle.error =
                    Some(format!("{reason} (last exit: {})", report.description));
                slot.want = Want::Stopped;
            }
        }
        self.publish(id);
        self.lifecycle_record("plugin_crashed", id.as_ref(), exit);
        self.lifecycle_record(followup.0, id.as_ref(), followup.1);
    }

    async fn restart_due(
        &mut self,
        myself: &ActorRef<PluginSupervisorMsg>,
        id: PluginId,
        generation: u64,
    ) {
        let due = self.slots.get(&id).is_some_and(|s| {
            s.generation == generation && s.host.is_none() && s.want == Want::Running
        });
        if due && !self.shutting_down {
            let restarts = self.slots.get(&id).map(|s| s.lifecycle.restarts);
            tracing::info!(plugin_id = %id, restart_count = restarts, "restarting plugin");
            self.launch(myself, &id).await;
        }
    }
}

/// Hands a call to a ready host. If the host is gone between its exit and the supervisor's
/// bookkeeping, the message (and its reply port) comes back inside the error.
fn forward_call(
    id: &PluginId,
    host: &ActorRef<ProcessHostMsg>,
    req: TriggerRequest,
    reply: TriggerReply,
) {
    if let Err(ractor::MessagingErr::SendErr(ProcessHostMsg::Trigger(_, reply))) =
        host.cast(ProcessHostMsg::Trigger(req, reply))
    {
        let _ = reply.send(Err(WireError::new(
            ErrorCode::NotReady,
            format!("Plugin '{id}' is restarting"),
        )));
    }
}
