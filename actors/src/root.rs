//! RootSupervisor: the top of the tree. Starts the MessagePlane, then StatusManager, Registry,
//! PythonEnv, PluginSupervisor and RunTracker in that order and restarts those five
//! `rest_for_one`: when one fails, it and every child started after it are restarted (they hold
//! references to it), so no actor ever talks to a dead peer. Nobody holds a direct reference to
//! the MessagePlane, the DeadlockDetector or the MetricsCollector (users look them up in the
//! published references each time), so each of those is restarted alone when it fails: a broken
//! store, call graph or sampler never takes a plugin down. The current references are published on a `watch` channel that the
//! gateway reads.
//!
//! The root also owns the bridge that copies run and export changes into the `runs` and `export`
//! stores of the message plane (the reference's bus mirror).
//!
//! A child that fails more than `MAX_RESTARTS` times within `RESTART_WINDOW` makes the root give
//! up: it kills every plugin process group and stops, and `neko` exits with an error.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{broadcast, watch};

use crate::deadlock_detector::{DeadlockDetector, DeadlockDetectorMsg};
use crate::message_plane::{
    MessagePlane, MessagePlaneHandle, MessagePlaneMsg, MessagePlaneSettings, StoreName,
};
use crate::metrics_collector::{
    MetricsCollector, MetricsCollectorArgs, MetricsCollectorMsg, MetricsSettings,
};
use crate::plugin_supervisor::{PluginSupervisor, PluginSupervisorArgs, PluginSupervisorMsg};
use crate::process_host::{HostSettings, child};
use crate::python_env::{PythonEnv, PythonEnvMsg, PythonSettings};
use crate::registry::{Registry, RegistryMsg};
use crate::restart_policy::RestartSettings;
use crate::run_token::RunTokenSigner;
use crate::run_tracker::{RunEvent, RunStoreSettings, RunTracker, RunTrackerArgs, RunTrackerMsg};
use crate::status_manager::{StatusManager, StatusManagerMsg};

const MAX_RESTARTS: usize = 10;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Everything the tree needs to start (and restart) its actors.
#[derive(Debug, Clone)]
pub struct TreeArgs {
    pub plugins_dir: PathBuf,
    pub host_settings: Arc<HostSettings>,
    pub restart_defaults: RestartSettings,
    pub python: PythonSettings,
    pub run_token_signer: RunTokenSigner,
    pub run_token_ttl: Duration,
    /// Where runs are stored and for how long.
    pub run_store: RunStoreSettings,
    /// Run changes, for the WebSockets; outlives tracker restarts.
    pub run_events: broadcast::Sender<RunEvent>,
    /// Start `auto_start` plugins (off in tests that want to start them by hand).
    pub autostart: bool,
    pub message_plane: MessagePlaneSettings,
    /// How often plugin processes are sampled, and how many samples are kept.
    pub metrics: MetricsSettings,
}

/// The current references of the tree's actors, as the gateway uses them.
#[derive(Clone)]
pub struct TreeRefs {
    pub status: ActorRef<StatusManagerMsg>,
    pub registry: ActorRef<RegistryMsg>,
    pub python: ActorRef<PythonEnvMsg>,
    pub plugins: ActorRef<PluginSupervisorMsg>,
    pub runs: ActorRef<RunTrackerMsg>,
    pub plane: ActorRef<MessagePlaneMsg>,
    /// How neko itself reaches the message plane (publish records, read stores).
    pub messages: MessagePlaneHandle,
    /// The wait-for graph of plugin-to-plugin calls.
    pub calls: ActorRef<DeadlockDetectorMsg>,
    /// Resource samples of plugin processes.
    pub metrics: ActorRef<MetricsCollectorMsg>,
}

/// The RootSupervisor actor.
pub struct RootSupervisor;

/// The RootSupervisor's state.
pub struct RootState {
    args: TreeArgs,
    refs: TreeRefs,
    publish: watch::Sender<Option<TreeRefs>>,
    restarts: VecDeque<Instant>,
    bridge: tokio::task::JoinHandle<()>,
}

/// The order children start in; a failure restarts its position and everything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Child {
    Plane,
    Status,
    Registry,
    Python,
    Plugins,
    Runs,
    Calls,
    Metrics,
}

/// Messages of the root (none but supervision events; the enum keeps the actor's type explicit).
pub enum RootMsg {}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = (TreeArgs, watch::Sender<Option<TreeRefs>>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (args, publish): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cell = myself.get_cell();
        let (plane, messages) = spawn_plane(&cell, &args).await?;
        let status = spawn_status(&cell).await?;
        let registry = spawn_registry(&cell, &args).await?;
        let python = spawn_python(&cell, &args).await?;
        let plugins = spawn_plugins(
            &cell,
            &args,
            &registry,
            &status,
            &python,
            &messages,
            publish.subscribe(),
        )
        .await?;
        let runs = spawn_runs(&cell, &args, &plugins).await?;
        let calls = spawn_calls(&cell, publish.subscribe()).await?;
        let metrics = spawn_metrics(&cell, &args, publish.subscribe()).await?;
        let refs = TreeRefs {
            status,
            registry,
            python,
            plugins,
            runs,
            plane,
            messages,
            calls,
            metrics,
        };
        publish.send_replace(Some(refs.clone()));
        let bridge = tokio::spawn(mirror_runs(
            args.run_events.subscribe(),
            publish.subscribe(),
        ));
        Ok(RootState {
            args,
            refs,
            publish,
            restarts: VecDeque::new(),
            bridge,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(which) = state.which(&cell) else {
            return Ok(());
        };
        // While the root itself is stopping, children ending is expected.
        if matches!(
            myself.get_status(),
            ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
        ) {
            return Ok(());
        }
        let now = Instant::now();
        state
            .restarts
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if state.restarts.len() >= MAX_RESTARTS {
            tracing::error!(actor = ?which, reason = %why, restarts = state.restarts.len(), "supervision tree actor keeps failing; giving up");
            child::kill_all_groups();
            myself.stop(Some(format!("{which:?} failed too often: {why}")));
            return Ok(());
        }
        state.restarts.push_back(now);
        if which == Child::Plane {
            tracing::error!(actor = ?which, reason = %why, restart_count = state.restarts.len(), "message plane failed; restarting it (its records are lost)");
            let (plane, messages) = spawn_plane(&myself.get_cell(), &state.args).await?;
            let _ = state
                .refs
                .plugins
                .cast(PluginSupervisorMsg::PlaneRestarted(messages.clone()));
            state.refs.plane = plane;
            state.refs.messages = messages;
            state.publish.send_replace(Some(state.refs.clone()));
            return Ok(());
        }
        if which == Child::Calls {
            tracing::error!(actor = ?which, reason = %why, restart_count = state.restarts.len(), "deadlock detector failed; restarting it (calls in flight are forgotten, not failed)");
            state.refs.calls = spawn_calls(&myself.get_cell(), state.publish.subscribe()).await?;
            state.publish.send_replace(Some(state.refs.clone()));
            return Ok(());
        }
        if which == Child::Metrics {
            tracing::error!(actor = ?which, reason = %why, restart_count = state.restarts.len(), "metrics collector failed; restarting it (its samples are lost)");
            state.refs.metrics =
                spawn_metrics(&myself.get_cell(), &state.args, state.publish.subscribe()).await?;
            state.publish.send_replace(Some(state.refs.clone()));
            return Ok(());
        }
        tracing::error!(actor = ?which, reason = %why, restart_count = state.restarts.len(), "supervision tree actor failed; restarting it and the actors after it");
        state.restart_from(&myself.get_cell(), which).await?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.bridge.abort();
        let killed = child::kill_all_groups();
        if killed > 0 {
            tracing::warn!(killed, "killed plugin process groups left at tree shutdown");
        }
        Ok(())
    }
}

impl RootState {
    fn which(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        [
            (Child::Plane, self.refs.plane.get_id()),
            (Child::Status, self.refs.status.get_id()),
            (Child::Registry, self.refs.registry.get_id()),
            (Child::Python, self.refs.python.get_id()),
            (Child::Plugins, self.refs.plugins.get_id()),
            (Child::Runs, self.refs.runs.get_id()),
            (Child::Calls, self.refs.calls.get_id()),
            (Child::Metrics, self.refs.metrics.get_id()),
        ]
        .into_iter()
        .find(|(_, a)| *a == id)
        .map(|(c, _)| c)
    }

    async fn restart_from(
        &mut self,
        me: &ActorCell,
        from: Child,
    ) -> Result<(), ActorProcessingErr> {
        // Stop the later children first (newest first), so none outlives what it depends on.
        if from <= Child::Runs {
            self.refs.runs.stop(None);
        }
        if from <= Child::Plugins {
            // Its hosts may not have run post_stop: take their processes down by group.
            let _ = self
                .refs
                .plugins
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
            child::kill_all_groups();
        }
        if from <= Child::Python {
            self.refs.python.stop(None);
        }
        if from <= Child::Registry {
            self.refs.registry.stop(None);
        }
        if from <= Child::Status {
            self.refs.status.stop(None);
        }
        if from <= Child::Status {
            self.refs.status = spawn_status(me).await?;
        }
        if from <= Child::Registry {
            self.refs.registry = spawn_registry(me, &self.args).await?;
        }
        if from <= Child::Python {
            self.refs.python = spawn_python(me, &self.args).await?;
        }
        if from <= Child::Plugins {
            self.refs.plugins = spawn_plugins(
                me,
                &self.args,
                &self.refs.registry,
                &self.refs.status,
                &self.refs.python,
                &self.refs.messages,
                self.publish.subscribe(),
            )
            .await?;
        }
        self.refs.runs = spawn_runs(me, &self.args, &self.refs.plugins).await?;
        self.publish.send_replace(Some(self.refs.clone()));
        Ok(())
    }
}

async fn spawn_plane(
    sup: &ActorCell,
    args: &TreeArgs,
) -> Result<(ActorRef<MessagePlaneMsg>, MessagePlaneHandle), ActorProcessingErr> {
    let (plane, _) = Actor::spawn_linked(
        Some(unique_name("message_plane")),
        MessagePlane,
        args.message_plane.clone(),
        sup.clone(),
    )
    .await?;
    let handle = plane
        .call(MessagePlaneMsg::GetHandle, Some(Duration::from_secs(10)))
        .await?
        .success_or("the message plane did not answer")?;
    Ok((plane, handle))
}

/// Copies every run and export change into the message plane's `runs` and `export` stores
/// (topic `all`, the reference's bus payloads), through whichever plane is current.
async fn mirror_runs(
    mut events: broadcast::Receiver<RunEvent>,
    refs: watch::Receiver<Option<TreeRefs>>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "message plane mirror fell behind; run changes skipped"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let store = match &event {
            RunEvent::Run { .. } => StoreName::Runs,
            RunEvent::Export { .. } => StoreName::Export,
        };
        let handle = refs.borrow().as_ref().map(|r| r.messages.clone());
        if let Some(handle) = handle {
            handle.publish(store, "all", event.payload());
        }
    }
}

async fn spawn_calls(
    sup: &ActorCell,
    tree: watch::Receiver<Option<TreeRefs>>,
) -> Result<ActorRef<DeadlockDetectorMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("deadlock_detector")),
        DeadlockDetector,
        tree,
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_metrics(
    sup: &ActorCell,
    args: &TreeArgs,
    tree: watch::Receiver<Option<TreeRefs>>,
) -> Result<ActorRef<MetricsCollectorMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("metrics_collector")),
        MetricsCollector,
        MetricsCollectorArgs {
            settings: args.metrics,
            tree,
        },
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_status(sup: &ActorCell) -> Result<ActorRef<StatusManagerMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("status_manager")),
        StatusManager,
        (),
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_registry(
    sup: &ActorCell,
    args: &TreeArgs,
) -> Result<ActorRef<RegistryMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("registry")),
        Registry,
        args.plugins_dir.clone(),
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_python(
    sup: &ActorCell,
    args: &TreeArgs,
) -> Result<ActorRef<PythonEnvMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("python_env")),
        PythonEnv,
        args.python.clone(),
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_plugins(
    sup: &ActorCell,
    args: &TreeArgs,
    registry: &ActorRef<RegistryMsg>,
    status: &ActorRef<StatusManagerMsg>,
    python: &ActorRef<PythonEnvMsg>,
    messages: &MessagePlaneHandle,
    tree: watch::Receiver<Option<TreeRefs>>,
) -> Result<ActorRef<PluginSupervisorMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("plugin_supervisor")),
        PluginSupervisor,
        PluginSupervisorArgs {
            registry: registry.clone(),
            status: status.clone(),
            python: python.clone(),
            host_settings: args.host_settings.clone(),
            restart_defaults: args.restart_defaults.clone(),
            autostart: args.autostart,
            tree,
            messages: messages.clone(),
        },
        sup.clone(),
    )
    .await?;
    Ok(a)
}

async fn spawn_runs(
    sup: &ActorCell,
    args: &TreeArgs,
    plugins: &ActorRef<PluginSupervisorMsg>,
) -> Result<ActorRef<RunTrackerMsg>, ActorProcessingErr> {
    let (a, _) = Actor::spawn_linked(
        Some(unique_name("run_tracker")),
        RunTracker,
        RunTrackerArgs {
            plugins: plugins.clone(),
            signer: args.run_token_signer.clone(),
            token_ttl: args.run_token_ttl,
            store: args.run_store.clone(),
            events: args.run_events.clone(),
        },
        sup.clone(),
    )
    .await?;
    Ok(a)
}

/// Actor names are for logs; ractor requires them unique, and a restarted actor may be spawned
/// before its predecessor's name is released.
fn unique_name(base: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("neko.{base}.{n}")
}

/// A running tree: the root, and the channel carrying its children's current references.
pub struct Tree {
    pub root: ActorRef<RootMsg>,
    pub refs: watch::Receiver<Option<TreeRefs>>,
    pub join: tokio::task::JoinHandle<()>,
}

/// Starts the whole supervision tree.
pub async fn spawn_tree(args: TreeArgs) -> Result<Tree, ractor::SpawnErr> {
    let (tx, rx) = watch::channel(None);
    let (root, join) = Actor::spawn(Some(unique_name("root")), RootSupervisor, (args, tx)).await?;
    Ok(Tree {
        root,
        refs: rx,
        join,
    })
}

impl Tree {
    /// Stops every plugin gracefully (bounded by `timeout`), then the tree.
    pub async fn shutdown(self, timeout: Duration) {
        let refs = self.refs.borrow().clone();
        if let Some(refs) = refs {
            match refs
                .plugins
                .call(PluginSupervisorMsg::StopAll, Some(timeout))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(())) => {}
                _ => tracing::warn!(?timeout, "plugins did not all stop in time; killing them"),
            }
        }
        self.root.stop(Some("shutdown".into()));
        let _ = self.join.await;
        child::kill_all_groups();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process_host::Transport;

    fn args(dir: &std::path::Path) -> TreeArgs {
        TreeArgs {
            plugins_dir: dir.join("plugins"),
            host_settings: Arc::new(HostSettings {
                runtime_dir: dir.to_path_buf(),
                transport: Transport::Ipc,
                handshake_timeout: Duration::from_secs(5),
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_timeout: Duration::from_secs(1),
                stop_grace: Duration::from_secs(1),
                term_grace: Duration::from_secs(1),
                default_call_timeout: Duration::from_secs(5),
                max_frame_bytes: 1 << 20,
                limits: Default::default(),
                plugin_logs: crate::plugin_logs::PluginLogSettings::disabled(),
                system_config: Default::default(),
            }),
            restart_defaults: RestartSettings::default(),
            python: PythonSettings {
                interpreter: None,
                root: dir.join("python"),
                pip_args: Vec::new(),
            },
            run_token_signer: RunTokenSigner::new("k"),
            run_token_ttl: Duration::from_secs(60),
            run_store: RunStoreSettings {
                path: None,
                max_records: 100,
                max_age: None,
                blob_dir: dir.join("blobs"),
                blob_max_bytes: 1 << 20,
            },
            run_events: broadcast::channel(16).0,
            autostart: true,
            message_plane: MessagePlaneSettings {
                rpc_endpoint: "tcp://127.0.0.1:0".into(),
                pub_endpoint: "tcp://127.0.0.1:0".into(),
                ingest_endpoint: "tcp://127.0.0.1:0".into(),
                ..MessagePlaneSettings::default()
            },
            metrics: MetricsSettings {
                interval: Duration::from_millis(50),
                history: 10,
            },
        }
    }

    /// A killed tree actor is replaced, together with every actor started after it, and the new
    /// references are published; the ones before it are kept.
    #[tokio::test]
    async fn killed_actor_is_restarted_rest_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let tree = spawn_tree(args(dir.path())).await.unwrap();
        let mut rx = tree.refs.clone();
        let before = rx.borrow_and_update().clone().unwrap();
        before.registry.kill();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("new references published")
            .unwrap();
        let after = rx.borrow().clone().unwrap();
        assert_eq!(after.status.get_id(), before.status.get_id());
        assert_ne!(after.registry.get_id(), before.registry.get_id());
        assert_ne!(after.plugins.get_id(), before.plugins.get_id());
        assert_ne!(after.runs.get_id(), before.runs.get_id());
        let snap = after
            .registry
            .call(RegistryMsg::List, Some(Duration::from_secs(5)))
            .await
            .unwrap()
            .success_or(())
            .unwrap();
        assert!(snap.plugins.is_empty());
        tree.shutdown(Duration::from_secs(5)).await;
    }

    /// A killed metrics collector is replaced alone: every other actor keeps its reference, and
    /// the new collector answers.
    #[tokio::test]
    async fn killed_metrics_collector_is_restarted_alone() {
        let dir = tempfile::tempdir().unwrap();
        let tree = spawn_tree(args(dir.path())).await.unwrap();
        let mut rx = tree.refs.clone();
        let before = rx.borrow_and_update().clone().unwrap();
        before.metrics.kill();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("new references published")
            .unwrap();
        let after = rx.borrow().clone().unwrap();
        assert_ne!(after.metrics.get_id(), before.metrics.get_id());
        assert_eq!(after.status.get_id(), before.status.get_id());
        assert_eq!(after.plugins.get_id(), before.plugins.get_id());
        assert_eq!(after.runs.get_id(), before.runs.get_id());
        let current = after
            .metrics
            .call(
                MetricsCollectorMsg::GetCurrent,
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap()
            .success_or(())
            .unwrap();
        assert!(current.metrics.is_empty());
        tree.shutdown(Duration::from_secs(5)).await;
    }

    /// An actor that keeps failing makes the root give up instead of looping forever.
    #[tokio::test]
    async fn root_gives_up_after_too_many_failures() {
        let dir = tempfile::tempdir().unwrap();
        let tree = spawn_tree(args(dir.path())).await.unwrap();
        let mut rx = tree.refs.clone();
        for _ in 0..=MAX_RESTARTS {
            let Some(refs) = rx.borrow_and_update().clone() else {
                break;
            };
            refs.runs.kill();
            if tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(5), tree.join)
            .await
            .expect("root stopped")
            .unwrap();
    }
}
