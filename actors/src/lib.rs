//! neko's supervision tree (crate `neko-actors`): every subsystem is an actor under one root.
//!
//! Layout:
//! - [`root`]: RootSupervisor, `rest_for_one` over the actors below; [`root::spawn_tree`].
//! - [`status_manager`]: latest status per plugin.
//! - [`registry`]: scans the plugins folder; [`manifest`] parses plugin.toml.
//! - [`plugin_supervisor`]: restart policy per plugin ([`restart_policy`]); one
//!   [`process_host`] per launch, which owns the OS process ([`process_host::child`]) and the
//!   ZeroMQ link ([`process_host::link`]).
//! - [`plugin_config`]: plugin.toml + profiles → the effective config; the config routes' file
//!   logic (atomic writes, protected fields), served by the Registry.
//! - [`plugin_logs`]: per-plugin log files of plugin output: writing, tailing, parsing.
//! - [`deadlock_detector`]: the wait-for graph of plugin-to-plugin calls; refuses cycles.
//! - [`metrics_collector`]: CPU, memory and thread samples of plugin processes, with history.
//! - [`plugin_query`]: answers plugins' `plugins.query` requests.
//! - [`python_env`]: the managed Python environment (venv, SDK, plugin requirements).
//! - [`run_tracker`]: runs, exports, blobs and their state machine, stored by [`run_db`]
//!   (SQLite); [`run_token`] signs run tokens.
//! - [`message_plane`]: the MessagePlane supervisor, one TopicStore actor per store, and the
//!   INGEST/RPC/PUB sockets.
//! - [`error`]: the one error type requests answer with.
//!
//! No HTTP here: the gateway in the `neko` crate turns requests into these actors' messages.

pub mod clock;
pub mod deadlock_detector;
pub mod error;
pub mod manifest;
pub mod message_plane;
pub mod metrics_collector;
pub mod plugin_config;
pub mod plugin_logs;
pub mod plugin_query;
pub mod plugin_supervisor;
pub mod process_host;
pub mod python_env;
pub mod registry;
pub mod restart_policy;
pub mod root;
pub mod run_db;
pub mod run_token;
pub mod run_tracker;
pub mod status_manager;

pub use error::Error;
pub use root::{Tree, TreeArgs, TreeRefs, spawn_tree};
