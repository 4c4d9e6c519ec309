//! Settings: one typed struct, loaded once in `main`.
//!
//! Precedence, lowest first: built-in defaults < the config file (`--config`, `NEKO_CONFIG`, else
//! `config/neko.toml` if it exists) < environment (the reference's variable names where they exist)
//! < CLI flags / `NEKO_*` flag variables. Every key of the file is documented in
//! `config/neko.toml`, which a test parses so it cannot go stale.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use neko_actors::message_plane::MessagePlaneSettings;
use neko_actors::metrics_collector::MetricsSettings;
use neko_actors::plugin_logs::PluginLogSettings;
use neko_actors::process_host::child::ResourceLimits;
use neko_actors::process_host::{HostSettings, Transport};
use neko_actors::restart_policy::{RestartOverrides, RestartPolicy, RestartSettings};
use serde::{Deserialize, Serialize};

use crate::cli::{LogFormat, ServeArgs};

/// Where the default config file lives, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/neko.toml";

/// All of neko's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub gateway: GatewaySettings,
    pub plugins: PluginsSettings,
    pub supervision: SupervisionSettings,
    pub restart_policy: RestartSettings,
    pub limits: LimitsSettings,
    pub runs: RunsSettings,
    pub python: PythonSection,
    pub message_plane: MessagePlaneSection,
    pub metrics: MetricsSection,
    pub log: LogSettings,
}

/// `[gateway]`: the HTTP/WebSocket gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Bind address; loopback by default.
    pub host: String,
    pub port: u16,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request waits for an actor before answering 504.
    pub request_timeout_ms: u64,
    /// Folder for neko's own files: admin token, runtime sockets.
    pub data_dir: PathBuf,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 48916,
            // As large as a plugin frame: run args may carry images (the reference has no limit).
            max_body_bytes: neko_protocol::DEFAULT_MAX_FRAME_BYTES,
            request_timeout_ms: 10_000,
            data_dir: PathBuf::from(".neko"),
        }
    }
}

/// `[plugins]`: where plugins come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsSettings {
    pub dir: PathBuf,
    /// Start plugins whose plugin.toml says `auto_start = true` when neko starts.
    pub autostart: bool,
    /// At boot, HTTP is served once every auto-started plugin finished its first launch, or after
    /// this long (as the reference, which serves only after loading its plugins).
    pub startup_wait_ms: u64,
}

impl Default for PluginsSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins"),
            autostart: true,
            startup_wait_ms: 60_000,
        }
    }
}

/// `[supervision]`: how plugin processes are watched and stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionSettings {
    /// `ipc` (Unix socket in the data dir) or `tcp` (loopback, ephemeral port).
    pub transport: Transport,
    pub handshake_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// STOP → SIGTERM (the reference's PLUGIN_SHUTDOWN_TIMEOUT).
    pub stop_grace_ms: u64,
    /// SIGTERM → SIGKILL (the reference's PROCESS_TERMINATE_TIMEOUT).
    pub term_grace_ms: u64,
    /// Upper bound of the whole shutdown (PLUGIN_SHUTDOWN_TOTAL_TIMEOUT).
    pub shutdown_timeout_ms: u64,
    /// Largest frame payload accepted from a plugin.
    pub max_frame_bytes: usize,
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            transport: Transport::Ipc,
            handshake_timeout_ms: 60_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 15_000,
            stop_grace_ms: 5_000,
            term_grace_ms: 1_000,
            shutdown_timeout_ms: 30_000,
            max_frame_bytes: neko_protocol::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// `[limits]`: every plugin's resource limits; a plugin.toml may override each key in
/// `[plugin_runtime]`. 0 = no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// `RLIMIT_DATA` of each plugin process, in MiB (heap and other private writable memory, not
    /// address space). Default 0: plugins' needs differ too much for one number to fit.
    pub max_memory_mb: u64,
    /// `RLIMIT_NOFILE` of each plugin process. Default 4096.
    pub max_open_files: u64,
    /// Frames per second a plugin may send on its protocol link; more within one second kills
    /// it. Default 20 000.
    pub max_message_rate: u64,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            max_memory_mb: 0,
            max_open_files: 4096,
            max_message_rate: 100_000,
        }
    }
}

impl LimitsSettings {
    /// As the hosts take them.
    pub fn resource_limits(&self) -> ResourceLimits {
        ResourceLimits {
            max_memory_mb: self.max_memory_mb,
            max_open_files: self.max_open_files,
            max_message_rate: self.max_message_rate,
        }
    }
}

/// `[runs]`: invocations through `POST /runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsSettings {
    /// Deadline of an entry that declares none (PLUGIN_EXECUTION_TIMEOUT).
    pub default_timeout_ms: u64,
    /// Lifetime of run tokens.
    pub token_ttl_seconds: u64,
    /// Key of run tokens; random per start when unset (NEKO_RUN_TOKEN_SECRET).
    pub token_secret: Option<String>,
    /// Keep runs, export items and blob metadata in `<data_dir>/runs.sqlite3` across restarts.
    pub persist: bool,
    /// Finished runs kept; beyond it the oldest are deleted (with their exports and blobs).
    pub max_records: usize,
    /// Finished runs older than this are deleted; 0 = no age limit.
    pub max_age_seconds: u64,
    /// Largest upload to `PUT /uploads/{id}` (BLOB_UPLOAD_MAX_BYTES).
    pub blob_max_bytes: u64,
}

impl Default for RunsSettings {
    fn default() -> Self {
        Self {
            default_timeout_ms: 30_000,
            token_ttl_seconds: 3_600,
            token_secret: None,
            persist: true,
            max_records: 100_000,
            max_age_seconds: 7 * 24 * 3600,
            blob_max_bytes: 200 * 1024 * 1024,
        }
    }
}

/// `[python]`: the managed environment Python plugins run in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonSection {
    /// Interpreter (>= 3.11) the venv is built from; `python3` on PATH when unset (NEKO_PYTHON).
    pub interpreter: Option<String>,
    /// Where the environment lives; `<data_dir>/python` when unset. Several neko processes may
    /// share one (changes are serialised by a lock file).
    pub env_dir: Option<PathBuf>,
    /// Extra arguments for every `pip install`, e.g. `["--index-url", "http://mirror/simple"]`.
    pub pip_args: Vec<String>,
}

/// `[message_plane]`: the stores plugins push to and read from, and their ZeroMQ endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagePlaneSection {
    /// RPC (ROUTER): queries of the stores (NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT).
    pub rpc_endpoint: String,
    /// PUB: every accepted record as `<store>.<topic>` (NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT).
    pub pub_endpoint: String,
    /// INGEST (PULL): what plugins push (NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT).
    pub ingest_endpoint: String,
    /// Records kept per (store, topic); older ones are evicted.
    pub store_maxlen: usize,
    /// Topics per store; pushes to a new topic beyond it are dropped.
    pub topic_max: usize,
    /// Largest record payload (msgpack bytes); larger ones are dropped.
    pub payload_max_bytes: usize,
    /// Cap of every `limit` an RPC query may ask for.
    pub get_recent_max_limit: usize,
    /// RPC envelope validation: "strict", "warn" or "off".
    pub validate_mode: String,
}

impl Default for MessagePlaneSection {
    fn default() -> Self {
        Self {
            rpc_endpoint: "tcp://127.0.0.1:38865".into(),
            pub_endpoint: "tcp://127.0.0.1:38866".into(),
            ingest_endpoint: "tcp://127.0.0.1:38867".into(),
            store_maxlen: 20_000,
            topic_max: 2_000,
            payload_max_bytes: 256 * 1024,
            get_recent_max_limit: 1_000,
            validate_mode: "strict".into(),
        }
    }
}

/// `[metrics]`: resource samples of plugin processes (`GET /plugin/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// How often every plugin process is sampled.
    pub interval_ms: u64,
    /// Samples kept per plugin (`GET /plugin/metrics/{id}/history`); older ones are dropped.
    pub history: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            history: 1_000,
        }
    }
}

impl MetricsSection {
    /// As the MetricsCollector takes it (validated by [`Settings::validate`]).
    pub fn collector_settings(&self) -> MetricsSettings {
        MetricsSettings {
            interval: Duration::from_millis(self.interval_ms),
            history: self.history,
        }
    }
}

/// `[log]`: what goes to stderr, and the per-plugin files of plugin output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter (`info`, `neko=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    /// Also write each plugin's output to `<data_dir>/logs/plugins/<id>/<id>_<start>.log`
    /// (read by `GET /plugin/{id}/logs`).
    pub plugin_files: bool,
    /// Size at which a plugin's log file is closed and the next one opened (0: no cap).
    pub plugin_max_file_bytes: u64,
    /// Log files kept per plugin, oldest removed first (0: keep all).
    pub plugin_max_files: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
            plugin_files: true,
            plugin_max_file_bytes: 5 * 1024 * 1024,
            plugin_max_files: 20,
        }
    }
}

/// Where plugin log files go (one folder per plugin, `_server` for neko's own).
pub fn plugin_logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("plugins")
}

impl LogSettings {
    /// As the process hosts take it: files under `dir` (`<data_dir>/logs/plugins`).
    pub fn plugin_log_settings(&self, dir: PathBuf) -> PluginLogSettings {
        PluginLogSettings {
            enabled: self.plugin_files,
            dir,
            max_file_bytes: self.plugin_max_file_bytes,
            max_files: self.plugin_max_files,
        }
    }
}

/// Where the settings came from, for the startup log.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Loads defaults, the config file, the environment and the CLI, in that order, and validates.
    pub fn load(cli: &ServeArgs) -> anyhow::Result<Loaded> {
        let (mut settings, config_file) = match &cli.config {
            Some(path) => (Self::from_file(path)?, Some(path.clone())),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                Self::from_file(Path::new(DEFAULT_CONFIG))?,
                Some(PathBuf::from(DEFAULT_CONFIG)),
            ),
            None => (Self::default(), None),
        };
        settings.apply_env(|k| std::env::var(k).ok())?;
        settings.apply_cli(cli);
        settings.validate()?;
        Ok(Loaded {
            settings,
            config_file,
        })
    }

    /// Parses one settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The reference's environment variables (only those neko has a setting for).
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let secs_to_ms = |name: &str| -> anyhow::Result<Option<u64>> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(|s| (s * 1000.0) as u64)
                        .with_context(|| format!("{name} must be a positive number of seconds"))
                })
                .transpose()
        };
        if let Some(port) = get("NEKO_USER_PLUGIN_SERVER_PORT") {
            self.gateway.port = port
                .trim()
                .parse()
                .context("NEKO_USER_PLUGIN_SERVER_PORT must be a port number")?;
        }
        if let Some(dir) = get("PLUGIN_CONFIG_ROOT") {
            // `~` is the home folder, as the reference expands it.
            self.plugins.dir = match (dir.strip_prefix('~'), get("HOME")) {
                (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
                    PathBuf::from(format!("{home}{rest}"))
                }
                _ => PathBuf::from(dir),
            };
        }
        if let Some(ms) = secs_to_ms("NEKO_PLUGIN_EXECUTION_TIMEOUT")? {
            self.runs.default_timeout_ms = ms;
        }
        if let Some(ms) = secs_to_ms("NEKO_PLUGIN_SHUTDOWN_TIMEOUT")? {
            self.supervision.stop_grace_ms = ms;
        }
        if let Some(ms) = secs_to_ms("NEKO_PROCESS_TERMINATE_TIMEOUT")? {
            self.supervision.term_grace_ms = ms;
        }
        for name in [
            "PLUGIN_SHUTDOWN_TOTAL_TIMEOUT",
            "NEKO_PLUGIN_SHUTDOWN_TOTAL_TIMEOUT",
        ] {
            if let Some(ms) = secs_to_ms(name)? {
                self.supervision.shutdown_timeout_ms = ms;
                break;
            }
        }
        if let Some(secret) = get("NEKO_RUN_TOKEN_SECRET") {
            self.runs.token_secret = Some(secret);
        }
        if let Some(ttl) = get("NEKO_RUN_TOKEN_TTL_SECONDS") {
            self.runs.token_ttl_seconds = ttl
                .trim()
                .parse()
                .context("NEKO_RUN_TOKEN_TTL_SECONDS must be a whole number")?;
        }
        if let Some(max) = get("NEKO_BLOB_UPLOAD_MAX_BYTES") {
            self.runs.blob_max_bytes = max
                .trim()
                .parse()
                .context("NEKO_BLOB_UPLOAD_MAX_BYTES must be a whole number")?;
        }
        let plane = &mut self.message_plane;
        for (names, target) in [
            (
                [
                    "NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT",
                    "NEKO_MESSAGE_PLANE_RPC",
                ],
                &mut plane.rpc_endpoint,
            ),
            (
                [
                    "NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT",
                    "NEKO_MESSAGE_PLANE_PUB",
                ],
                &mut plane.pub_endpoint,
            ),
            (
                [
                    "NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT",
                    "NEKO_MESSAGE_PLANE_INGEST",
                ],
                &mut plane.ingest_endpoint,
            ),
        ] {
            if let Some(v) = names.iter().find_map(|n| get(n)) {
                *target = v;
            }
        }
        for (name, target) in [
            ("NEKO_MESSAGE_PLANE_STORE_MAXLEN", &mut plane.store_maxlen),
            ("NEKO_MESSAGE_PLANE_TOPIC_MAX", &mut plane.topic_max),
            (
                "NEKO_MESSAGE_PLANE_PAYLOAD_MAX_BYTES",
                &mut plane.payload_max_bytes,
            ),
            (
                "NEKO_MESSAGE_PLANE_GET_RECENT_MAX_LIMIT",
                &mut plane.get_recent_max_limit,
            ),
        ] {
            if let Some(v) = get(name) {
                *target = v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name} must be a whole number"))?;
            }
        }
        if let Some(mode) = get("NEKO_MESSAGE_PLANE_VALIDATE_MODE") {
            plane.validate_mode = mode.trim().to_lowercase();
        }
        if let Some(python) = get("NEKO_PYTHON") {
            self.python.interpreter = Some(python);
        }
        if let Some(level) = get("NEKO_LOGURU_LEVEL") {
            self.log.level = level.to_lowercase();
        }
        Ok(())
    }

    fn apply_cli(&mut self, cli: &ServeArgs) {
        if let Some(h) = &cli.host {
            self.gateway.host = h.clone();
        }
        if let Some(p) = cli.port {
            self.gateway.port = p;
        }
        if let Some(d) = &cli.plugins_dir {
            self.plugins.dir = d.clone();
        }
        if let Some(d) = &cli.data_dir {
            self.gateway.data_dir = d.clone();
        }
        if let Some(f) = cli.log_format {
            self.log.format = f;
        }
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        RestartPolicy::new(&self.restart_policy, &RestartOverrides::default())
            .map_err(|e| anyhow::anyhow!("[restart_policy]: {e}"))?;
        let s = &self.supervision;
        for (name, v) in [
            ("supervision.handshake_timeout_ms", s.handshake_timeout_ms),
            ("plugins.startup_wait_ms", self.plugins.startup_wait_ms),
            ("supervision.heartbeat_interval_ms", s.heartbeat_interval_ms),
            ("supervision.heartbeat_timeout_ms", s.heartbeat_timeout_ms),
            (
                "gateway.request_timeout_ms",
                self.gateway.request_timeout_ms,
            ),
            ("runs.default_timeout_ms", self.runs.default_timeout_ms),
            ("metrics.interval_ms", self.metrics.interval_ms),
            ("metrics.history", self.metrics.history as u64),
        ] {
            if v == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        let plane = &self.message_plane;
        if !["strict", "warn", "off"].contains(&plane.validate_mode.as_str()) {
            bail!("message_plane.validate_mode must be \"strict\", \"warn\" or \"off\"");
        }
        if plane.store_maxlen == 0 || plane.get_recent_max_limit == 0 || plane.topic_max == 0 {
            bail!(
                "message_plane.store_maxlen, topic_max and get_recent_max_limit must be greater than 0"
            );
        }
        if s.heartbeat_timeout_ms <= s.heartbeat_interval_ms {
            bail!("supervision.heartbeat_timeout_ms must exceed supervision.heartbeat_interval_ms");
        }
        if self.gateway.max_body_bytes == 0 || s.max_frame_bytes < 1024 {
            bail!("gateway.max_body_bytes must be > 0 and supervision.max_frame_bytes >= 1024");
        }
        Ok(())
    }

    /// `[message_plane]` as the MessagePlane actor takes it (validated by [`Settings::validate`]).
    pub fn message_plane(&self) -> anyhow::Result<MessagePlaneSettings> {
        let m = &self.message_plane;
        Ok(MessagePlaneSettings {
            rpc_endpoint: m.rpc_endpoint.clone(),
            pub_endpoint: m.pub_endpoint.clone(),
            ingest_endpoint: m.ingest_endpoint.clone(),
            store_maxlen: m.store_maxlen,
            topic_max: m.topic_max,
            payload_max_bytes: m.payload_max_bytes,
            get_recent_max_limit: m.get_recent_max_limit,
            validate_mode: m
                .validate_mode
                .parse()
                .map_err(|e: String| anyhow::anyhow!("message_plane.validate_mode: {e}"))?,
        })
    }

    /// The slice every ProcessHost gets; plugin log files go under `plugin_logs_dir`. `dirs` are
    /// the absolute plugins folder and data dir (for `system.config`).
    pub fn host_settings(
        &self,
        runtime_dir: PathBuf,
        plugin_logs_dir: PathBuf,
        dirs: (&Path, &Path),
    ) -> Arc<HostSettings> {
        let s = &self.supervision;
        Arc::new(HostSettings {
            runtime_dir,
            transport: s.transport,
            handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
            heartbeat_interval: Duration::from_millis(s.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(s.heartbeat_timeout_ms),
            stop_grace: Duration::from_millis(s.stop_grace_ms),
            term_grace: Duration::from_millis(s.term_grace_ms),
            default_call_timeout: Duration::from_millis(self.runs.default_timeout_ms),
            max_frame_bytes: s.max_frame_bytes,
            limits: self.limits.resource_limits(),
            plugin_logs: self.log.plugin_log_settings(plugin_logs_dir),
            system_config: self.system_config(dirs.0, dirs.1),
        })
    }

    /// What a plugin's `system.config` request answers: these settings under the names of the
    /// reference's `plugin.settings`, where neko has the same knob (the message plane's endpoints
    /// are added per launch).
    fn system_config(
        &self,
        plugins_dir: &Path,
        data_dir: &Path,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let secs = |ms: u64| ms as f64 / 1000.0;
        let s = &self.supervision;
        let mp = &self.message_plane;
        let entries = [
            ("PLUGIN_CONFIG_ROOT", json!(plugins_dir)),
            ("BLOB_STORE_DIR", json!(data_dir.join("blobs"))),
            ("BLOB_UPLOAD_MAX_BYTES", json!(self.runs.blob_max_bytes)),
            ("EXPORT_INLINE_BINARY_MAX_BYTES", json!(256 * 1024)),
            ("RUN_TOKEN_TTL_SECONDS", json!(self.runs.token_ttl_seconds)),
            (
                "PLUGIN_EXECUTION_TIMEOUT",
                json!(secs(self.runs.default_timeout_ms)),
            ),
            ("PLUGIN_TRIGGER_TIMEOUT", json!(10.0)),
            (
                "PLUGIN_SHUTDOWN_TIMEOUT",
                json!(secs(s.stop_grace_ms + s.term_grace_ms)),
            ),
            (
                "PLUGIN_SHUTDOWN_TOTAL_TIMEOUT",
                json!(secs(s.shutdown_timeout_ms)),
            ),
            ("MESSAGE_PLANE_BACKEND", json!("neko")),
            ("MESSAGE_PLANE_RUN_MODE", json!("embedded")),
            ("MESSAGE_PLANE_VALIDATE_MODE", json!(mp.validate_mode)),
            ("MESSAGE_PLANE_STORE_MAXLEN", json!(mp.store_maxlen)),
            ("MESSAGE_PLANE_TOPIC_MAX", json!(mp.topic_max)),
            (
                "MESSAGE_PLANE_PAYLOAD_MAX_BYTES",
                json!(mp.payload_max_bytes),
            ),
            (
                "MESSAGE_PLANE_GET_RECENT_MAX_LIMIT",
                json!(mp.get_recent_max_limit),
            ),
            (
                "SYNC_CALL_IN_HANDLER_POLICY",
                json!(
                    std::env::var("NEKO_PLUGIN_SYNC_CALL_POLICY").unwrap_or_else(|_| "warn".into())
                ),
            ),
            (
                "PLUGIN_LOG_LEVEL",
                json!(self.log.level.to_ascii_uppercase()),
            ),
        ];
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config file lists every key at its default, so it parses to `Settings::default()`.
    #[test]
    fn shipped_config_file_is_complete_and_at_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG);
        let file = Settings::from_file(&path).unwrap();
        assert_eq!(file, Settings::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let defaults = toml::Table::try_from(Settings::default()).unwrap();
        for (section, keys) in defaults {
            let file_section = table
                .get(&section)
                .and_then(|v| v.as_table())
                .unwrap_or_else(|| panic!("config/neko.toml lacks [{section}]"));
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    file_section.contains_key(key),
                    "config/neko.toml lacks {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn reference_environment_names_are_honoured_and_cli_wins() {
        let mut s = Settings::default();
        let env = |k: &str| match k {
            "NEKO_USER_PLUGIN_SERVER_PORT" => Some("5000".to_string()),
            "NEKO_PLUGIN_EXECUTION_TIMEOUT" => Some("2.5".to_string()),
            "PLUGIN_CONFIG_ROOT" => Some("/tmp/p".to_string()),
            _ => None,
        };
        s.apply_env(env).unwrap();
        assert_eq!(s.gateway.port, 5000);
        assert_eq!(s.runs.default_timeout_ms, 2500);
        assert_eq!(s.plugins.dir, PathBuf::from("/tmp/p"));
        s.apply_cli(&ServeArgs {
            port: Some(7),
            ..Default::default()
        });
        assert_eq!(s.gateway.port, 7);
        let mut s = Settings::default();
        let env = |k: &str| match k {
            "PLUGIN_CONFIG_ROOT" => Some("~/plugins".to_string()),
            "HOME" => Some("/home/neko".to_string()),
            _ => None,
        };
        s.apply_env(env).unwrap();
        assert_eq!(s.plugins.dir, PathBuf::from("/home/neko/plugins"));
    }

    #[test]
    fn bad_values_are_rejected_with_their_key() {
        let mut s = Settings::default();
        s.supervision.heartbeat_timeout_ms = 10;
        s.supervision.heartbeat_interval_ms = 100;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat_timeout_ms"), "{err}");
        let bad = Settings::default()
            .apply_env(|k| (k == "NEKO_PLUGIN_EXECUTION_TIMEOUT").then(|| "soon".to_string()));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("NEKO_PLUGIN_EXECUTION_TIMEOUT")
        );
    }
}
