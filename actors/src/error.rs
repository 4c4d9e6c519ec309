//! The one error type of the supervision tree. Actors answer requests with `Result<T, Error>` and
//! stay alive; the gateway maps each variant to an HTTP status once (`src/error.rs`).

use neko_protocol::PluginId;

/// What a request to the supervision tree can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No plugin with this id is registered (its folder is missing or its plugin.toml is broken).
    #[error("Plugin '{0}' configuration not found")]
    PluginNotFound(PluginId),
    /// No plugin with this id is registered (the reference's wording for routes that read, not
    /// start, a plugin).
    #[error("Plugin '{0}' not found")]
    PluginUnknown(PluginId),
    /// The plugin is registered but its plugin.toml cannot be used.
    #[error("Plugin '{plugin}' is invalid: {reason}")]
    PluginInvalid { plugin: PluginId, reason: String },
    /// `[plugin_runtime] enabled = false`.
    #[error("Plugin '{0}' is disabled by plugin_runtime.enabled and cannot be started")]
    PluginDisabled(PluginId),
    /// A stop was asked of a plugin that has no process.
    #[error("Plugin '{0}' is not running")]
    PluginNotRunning(PluginId),
    /// A dependency named in plugin.toml is missing or disabled.
    #[error("Plugin dependency check failed for plugin '{plugin}': {reason}")]
    Dependency { plugin: PluginId, reason: String },
    /// The process could not be started or died before it was ready.
    #[error("Failed to start plugin '{plugin}': {reason}")]
    StartFailed { plugin: PluginId, reason: String },
    /// The supervisor is shutting down and takes no new work.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// A config request that cannot be served as asked: bad TOML, a protected field, a profile
    /// name or path that is refused. The text is the whole message.
    #[error("{0}")]
    ConfigRejected(String),
    /// A profile (or profiles.toml) that a config request needs does not exist.
    #[error("{0}")]
    ConfigMissing(String),
    /// An actor that should answer is gone (it is being restarted by its supervisor).
    #[error("internal service unavailable: {0}")]
    Unavailable(String),
}
