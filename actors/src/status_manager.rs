//! StatusManager: the latest status of every plugin, as the supervisor and the plugin report it.
//!
//! Parent: the root supervisor. Children: none. Writers: the PluginSupervisor (lifecycle: state,
//! pid, restarts, exit, entries) and each ProcessHost (the plugin's own STATUS dict). Readers: the
//! gateway (`GET /plugins`, `GET /plugin/status`). If it dies, the root restarts it empty and the
//! PluginSupervisor re-publishes every plugin's lifecycle (`Resync`), so only the plugins' own
//! reported dicts are lost until they report again.

use std::collections::BTreeMap;

use neko_protocol::{EntrySpec, EventSpec, PluginId, PluginState};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::Value;

use crate::clock::unix_now;

/// The StatusManager actor.
pub struct StatusManager;

/// What the supervisor knows about a plugin's process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lifecycle {
    pub state: PluginState,
    /// The live process, if any.
    pub pid: Option<u32>,
    /// Automatic restarts since the plugin was last started by hand.
    pub restarts: u32,
    /// How the last process ended (`exit code 3`, `killed by signal 9`), if one did.
    pub last_exit: Option<String>,
    /// Why the plugin is not running, when that is an error (give-up reason, start failure).
    pub error: Option<String>,
    /// Entries declared in the last accepted HELLO.
    pub entries: Vec<EntrySpec>,
    /// SDK name and version from the last HELLO.
    pub sdk: Option<String>,
    /// The plugin-level input schema from the last HELLO.
    pub input_schema: Option<Value>,
    /// Custom events other plugins may call, from the last HELLO.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventSpec>,
}

impl Lifecycle {
    /// A plugin in `state` that has never run.
    pub fn new(state: PluginState) -> Self {
        Self {
            state,
            pid: None,
            restarts: 0,
            last_exit: None,
            error: None,
            entries: Vec::new(),
            sdk: None,
            input_schema: None,
            events: Vec::new(),
        }
    }
}

/// A status dict the plugin reported itself (`ctx.update_status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportedStatus {
    pub status: Value,
    pub updated_at: f64,
}

/// Everything known about one plugin's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginStatus {
    pub plugin_id: PluginId,
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// When `lifecycle` last changed (unix seconds).
    pub updated_at: f64,
    pub reported: Option<ReportedStatus>,
}

/// Messages of the StatusManager.
pub enum StatusManagerMsg {
    /// The supervisor's view changed.
    LifecycleChanged {
        plugin_id: PluginId,
        lifecycle: Lifecycle,
    },
    /// The plugin sent a STATUS frame.
    StatusReported { plugin_id: PluginId, status: Value },
    /// A plugin left the registry.
    PluginRemoved(PluginId),
    /// One plugin's status.
    Get(PluginId, RpcReplyPort<Option<PluginStatus>>),
    /// Every plugin's status, by id.
    List(RpcReplyPort<Vec<PluginStatus>>),
}

/// The StatusManager's state: one record per plugin.
#[derive(Default)]
pub struct StatusManagerState {
    plugins: BTreeMap<PluginId, PluginStatus>,
}

impl Actor for StatusManager {
    type Msg = StatusManagerMsg;
    type State = StatusManagerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(StatusManagerState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StatusManagerMsg::LifecycleChanged {
                plugin_id,
                lifecycle,
            } => state.set_lifecycle(plugin_id, lifecycle),
            StatusManagerMsg::StatusReported { plugin_id, status } => {
                state.set_reported(plugin_id, status)
            }
            StatusManagerMsg::PluginRemoved(id) => {
                state.plugins.remove(&id);
            }
            StatusManagerMsg::Get(id, reply) => {
                let _ = reply.send(state.plugins.get(&id).cloned());
            }
            StatusManagerMsg::List(reply) => {
                let _ = reply.send(state.plugins.values().cloned().collect());
            }
        }
        Ok(())
    }
}

impl StatusManagerState {
    fn set_lifecycle(&mut self, plugin_id: PluginId, lifecycle: Lifecycle) {
        let now = unix_now();
        match self.plugins.get_mut(&plugin_id) {
            Some(rec) if rec.lifecycle == lifecycle => {}
            Some(rec) => {
                rec.lifecycle = lifecycle;
                rec.updated_at = now;
            }
            None => {
                self.plugins.insert(
                    plugin_id.clone(),
                    PluginStatus {
                        plugin_id,
                        lifecycle,
                        updated_at: now,
                        reported: None,
                    },
                );
            }
        }
    }

    fn set_reported(&mut self, plugin_id: PluginId, status: Value) {
        // A plugin can only report while the supervisor knows it, so a record exists; a STATUS
        // racing with the plugin's removal is dropped.
        if let Some(rec) = self.plugins.get_mut(&plugin_id) {
            rec.reported = Some(ReportedStatus {
                status,
                updated_at: unix_now(),
            });
        }
    }
}
