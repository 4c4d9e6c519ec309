//! Registry: which plugins exist. Scans the plugins folder, parses every plugin.toml, and answers
//! with manifests, broken plugins (with their error), and the dependency start order.
//!
//! It also serves the config routes ([`RegistryMsg::Config`], see [`crate::plugin_config`]): it
//! knows each plugin's folder, and since it handles one message at a time, config writes never
//! interleave (the files are small, so reading and fsyncing them in `handle` is brief).
//!
//! Parent: the root supervisor. Children: none. Senders: the PluginSupervisor (StartPlan, Resolve)
//! and the gateway (List, Config). If it dies, the root restarts it and it scans the folder again:
//! it holds nothing that is not on disk.

use std::path::PathBuf;
use std::sync::Arc;

use neko_protocol::PluginId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::Error;
use crate::manifest::{self, BrokenPlugin, ExposedMap, PluginManifest};
use crate::plugin_config::{self, ConfigReply, ConfigRequest, PluginFolder};

/// The Registry actor.
pub struct Registry;

/// What the registry knows: the usable manifests and the broken plugin folders.
#[derive(Debug, Clone, Default)]
pub struct RegistrySnapshot {
    pub plugins: Vec<Arc<PluginManifest>>,
    pub broken: Vec<BrokenPlugin>,
}

/// Messages of the Registry.
pub enum RegistryMsg {
    /// Every usable manifest plus the order to start them in.
    StartPlan(RpcReplyPort<(Vec<Arc<PluginManifest>>, Vec<PluginId>)>),
    /// Re-read one plugin's plugin.toml and check it (SDK ranges, dependencies) before a start.
    /// With what the supervisor knows the running (or described) plugins expose.
    Resolve(
        PluginId,
        ExposedMap,
        RpcReplyPort<Result<Arc<PluginManifest>, Error>>,
    ),
    /// Everything, for listings.
    List(RpcReplyPort<RegistrySnapshot>),
    /// A config route: read or write the plugin's plugin.toml and profiles.
    Config(
        PluginId,
        ConfigRequest,
        RpcReplyPort<Result<ConfigReply, Error>>,
    ),
}

/// The Registry's state.
pub struct RegistryState {
    plugins_dir: PathBuf,
    snapshot: RegistrySnapshot,
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    /// The plugins folder.
    type Arguments = PathBuf;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        plugins_dir: PathBuf,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RegistryState {
            plugins_dir,
            snapshot: RegistrySnapshot::default(),
        };
        state.rescan();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::StartPlan(reply) => {
                let owned: Vec<PluginManifest> = state
                    .snapshot
                    .plugins
                    .iter()
                    .map(|m| (**m).clone())
                    .collect();
                let order = manifest::start_order(&owned);
                let _ = reply.send((state.snapshot.plugins.clone(), order));
            }
            RegistryMsg::Resolve(id, exposed, reply) => {
                let _ = reply.send(state.resolve(&id, &exposed));
            }
            RegistryMsg::List(reply) => {
                let _ = reply.send(state.snapshot.clone());
            }
            RegistryMsg::Config(id, request, reply) => {
                let folder = state.folder(&id);
                let profile = plugin_config::env_profile(&id);
                let _ = reply.send(plugin_config::serve(&folder, request, profile));
            }
        }
        Ok(())
    }
}

impl RegistryState {
    fn rescan(&mut self) {
        let scan = manifest::scan(&self.plugins_dir);
        for m in &scan.plugins {
            for w in &m.warnings {
                tracing::warn!(plugin_id = %m.id, warning = %w, "plugin.toml");
            }
        }
        for b in &scan.broken {
            tracing::error!(path = %b.config_path.display(), error = %b.error, "plugin is broken and will not start");
        }
        tracing::info!(
            dir = %self.plugins_dir.display(),
            plugins = scan.plugins.len(),
            broken = scan.broken.len(),
            "plugins scanned"
        );
        self.snapshot = RegistrySnapshot {
            plugins: scan.plugins.into_iter().map(Arc::new).collect(),
            broken: scan.broken,
        };
    }

    /// Re-reads `id`'s plugin.toml (rescanning the folder for an id not seen yet), then checks its
    /// dependencies against the other registered plugins.
    fn resolve(
        &mut self,
        id: &PluginId,
        exposed: &ExposedMap,
    ) -> Result<Arc<PluginManifest>, Error> {
        let known = self.snapshot.plugins.iter().position(|m| &m.id == id);
        let Some(index) = known else {
            self.rescan();
            return match self.snapshot.plugins.iter().find(|m| &m.id == id) {
                Some(m) => self.check(m.clone(), exposed),
                None => Err(self.not_found(id)),
            };
        };
        let path = self.snapshot.plugins[index].config_path.clone();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::PluginInvalid {
            plugin: id.clone(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let fresh = manifest::parse_manifest(&text, &path).map_err(|e| Error::PluginInvalid {
            plugin: id.clone(),
            reason: e.to_string(),
        })?;
        if &fresh.id != id {
            return Err(Error::PluginInvalid {
                plugin: id.clone(),
                reason: format!("plugin.toml now declares id '{}'", fresh.id),
            });
        }
        let fresh = Arc::new(fresh);
        self.snapshot.plugins[index] = fresh.clone();
        self.check(fresh, exposed)
    }

    fn check(
        &self,
        m: Arc<PluginManifest>,
        exposed: &ExposedMap,
    ) -> Result<Arc<PluginManifest>, Error> {
        let others: Vec<&PluginManifest> = self
            .snapshot
            .plugins
            .iter()
            .filter(|o| o.id != m.id)
            .map(|o| o.as_ref())
            .collect();
        manifest::check_dependencies(&m, &others, exposed).map_err(|reason| Error::Dependency {
            plugin: m.id.clone(),
            reason,
        })?;
        Ok(m)
    }

    /// Where `id`'s config lives: its registered folder, else `<plugins dir>/<id>` (so a plugin
    /// whose plugin.toml is broken can still be fixed over HTTP). `id` is a valid [`PluginId`],
    /// so the join cannot leave the plugins folder.
    fn folder(&self, id: &PluginId) -> PluginFolder {
        match self.snapshot.plugins.iter().find(|m| &m.id == id) {
            Some(m) => PluginFolder {
                id: id.clone(),
                dir: m.dir.clone(),
                config_path: m.config_path.clone(),
            },
            None => {
                let dir = self.plugins_dir.join(id.as_str());
                PluginFolder {
                    id: id.clone(),
                    config_path: dir.join("plugin.toml"),
                    dir,
                }
            }
        }
    }

    fn not_found(&self, id: &PluginId) -> Error {
        match self
            .snapshot
            .broken
            .iter()
            .find(|b| b.id.as_deref() == Some(id.as_str()))
        {
            Some(b) => Error::PluginInvalid {
                plugin: id.clone(),
                reason: b.error.clone(),
            },
            None => Error::PluginNotFound(id.clone()),
        }
    }
}
