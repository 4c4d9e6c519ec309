//! Command-line interface (clap types only). Every flag can also come from a `NEKO_*` variable.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// neko: a plugin supervisor.
#[derive(Debug, Parser)]
#[command(name = "neko", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, also accepted without the subcommand (`neko --port 0`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the supervisor and its HTTP gateway (the default).
    Serve(ServeArgs),
}

/// Options of `neko serve`. Unset options fall back to the config file, then the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to bind the HTTP gateway to.
    #[arg(long, env = "NEKO_HOST")]
    pub host: Option<String>,
    /// Port of the HTTP gateway (0 = any free port; the bound address is printed).
    #[arg(long, env = "NEKO_PORT")]
    pub port: Option<u16>,
    /// Folder holding one sub-folder per plugin.
    #[arg(long, env = "NEKO_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Settings file.
    #[arg(long, env = "NEKO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder for neko's own files (admin token, sockets).
    #[arg(long, env = "NEKO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "NEKO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}
