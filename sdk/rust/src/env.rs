//! [`PluginEnv`]: the settings neko hands a plugin process through its environment (see
//! `neko_protocol::env` for the variable names). [`crate::Plugin::run`] reads them from the
//! process environment; tests and embedders build a `PluginEnv` directly and call
//! [`crate::Plugin::run_with`].

use std::path::PathBuf;
use std::time::Duration;

use neko_protocol::{DEFAULT_MAX_FRAME_BYTES, FrameKey, PROTOCOL_VERSION, env};

/// How long the plugin waits for WELCOME after connecting and sending HELLO.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeat period when `NEKO_HEARTBEAT_MS` is not set.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);

/// What a plugin needs to know to reach its supervisor. `Debug` is safe to log: [`FrameKey`]
/// redacts the secret.
#[derive(Debug, Clone)]
pub struct PluginEnv {
    /// The plugin id (`NEKO_PLUGIN_ID`), sent back in HELLO.
    pub plugin_id: String,
    /// The supervisor's ZeroMQ endpoint (`NEKO_PLUGIN_ENDPOINT`), `ipc://...` or `tcp://...`.
    pub endpoint: String,
    /// The per-launch frame key (`NEKO_PLUGIN_SECRET`).
    pub secret: FrameKey,
    /// How often to send HEARTBEAT (`NEKO_HEARTBEAT_MS`); WELCOME may override it.
    pub heartbeat: Duration,
    /// Largest frame payload either side accepts (`NEKO_MAX_FRAME_BYTES`).
    pub max_frame_bytes: usize,
    /// The supervisor's pid (`NEKO_SUPERVISOR_PID`). When set, the plugin exits as soon as its
    /// parent is another process, i.e. the supervisor died. `None` disables the watch.
    pub supervisor_pid: Option<u32>,
    /// The plugin's folder (`NEKO_PLUGIN_DIR`), the current directory when unset.
    pub plugin_dir: PathBuf,
    /// The path of the plugin's plugin.toml (`NEKO_PLUGIN_CONFIG`), when set.
    pub plugin_config: Option<PathBuf>,
    /// How long connect + HELLO + WELCOME may take before the plugin gives up. Not an environment
    /// variable: the default ([`DEFAULT_HANDSHAKE_TIMEOUT`]) matches the supervisor; tests shorten it.
    pub handshake_timeout: Duration,
}

/// A missing or malformed variable. The message names the variable but never prints the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{0} is not set (plugins are started by neko, which sets it)")]
    Missing(&'static str),
    /// A variable is set but cannot be used.
    #[error("{name} is not valid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

impl PluginEnv {
    /// Settings for `plugin_id` at `endpoint` with `secret`, everything else at its default and
    /// no parent watch.
    pub fn new(
        plugin_id: impl Into<String>,
        endpoint: impl Into<String>,
        secret: FrameKey,
    ) -> Self {
        Self {
            plugin_id: plugin_id.into(),
            endpoint: endpoint.into(),
            secret,
            heartbeat: DEFAULT_HEARTBEAT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            supervisor_pid: None,
            plugin_dir: PathBuf::from("."),
            plugin_config: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup` (name → value), so the parsing rules can be tested
    /// without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(EnvError::Missing(name))
        };
        let plugin_id = required(env::PLUGIN_ID)?;
        let endpoint = required(env::ENDPOINT)?;
        let secret =
            FrameKey::from_hex(&required(env::SECRET)?).map_err(|e| EnvError::Invalid {
                name: env::SECRET,
                reason: e.to_string(),
            })?;

        // A supervisor speaking another version would refuse our HELLO; say why now instead.
        if let Some(version) = parse::<u16>(&lookup, env::PROTOCOL)?
            && version != PROTOCOL_VERSION
        {
            return Err(EnvError::Invalid {
                name: env::PROTOCOL,
                reason: format!(
                    "the supervisor speaks protocol {version}, this SDK speaks {PROTOCOL_VERSION}"
                ),
            });
        }

        let mut out = Self::new(plugin_id, endpoint, secret);
        if let Some(ms) = parse::<u64>(&lookup, env::HEARTBEAT_MS)? {
            if ms == 0 {
                return Err(positive(env::HEARTBEAT_MS));
            }
            out.heartbeat = Duration::from_millis(ms);
        }
        if let Some(bytes) = parse::<usize>(&lookup, env::MAX_FRAME_BYTES)? {
            if bytes == 0 {
                return Err(positive(env::MAX_FRAME_BYTES));
            }
            out.max_frame_bytes = bytes;
        }
        out.supervisor_pid = parse::<u32>(&lookup, env::SUPERVISOR_PID)?;
        if let Some(dir) = lookup(env::PLUGIN_DIR).filter(|v| !v.is_empty()) {
            out.plugin_dir = PathBuf::from(dir);
        }
        out.plugin_config = lookup(env::PLUGIN_CONFIG)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(out)
    }
}

/// An optional number: unset or empty is `None`, anything unparsable is an error.
fn parse<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, EnvError>
where
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| EnvError::Invalid {
                name,
                reason: format!("'{v}': {e}"),
            }),
    }
}

fn positive(name: &'static str) -> EnvError {
    EnvError::Invalid {
        name,
        reason: "must be greater than 0".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            (env::PLUGIN_ID, "echo"),
            (env::ENDPOINT, "ipc:///tmp/neko/echo.sock"),
            (env::SECRET, SECRET),
        ]
    }

    #[test]
    fn minimal_environment_gets_defaults() {
        let e = PluginEnv::from_lookup(lookup(&minimal())).unwrap();
        assert_eq!(e.plugin_id, "echo");
        assert_eq!(e.endpoint, "ipc:///tmp/neko/echo.sock");
        assert_eq!(e.heartbeat, DEFAULT_HEARTBEAT);
        assert_eq!(e.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(e.supervisor_pid, None);
        assert_eq!(e.plugin_config, None);
    }

    #[test]
    fn full_environment_is_parsed() {
        let mut vars = minimal();
        vars.extend([
            (env::PROTOCOL, "1"),
            (env::HEARTBEAT_MS, "250"),
            (env::MAX_FRAME_BYTES, "1024"),
            (env::SUPERVISOR_PID, "4242"),
            (env::PLUGIN_DIR, "/srv/plugins/echo"),
            (env::PLUGIN_CONFIG, "/srv/plugins/echo/plugin.toml"),
        ]);
        let e = PluginEnv::from_lookup(lookup(&vars)).unwrap();
        assert_eq!(e.heartbeat, Duration::from_millis(250));
        assert_eq!(e.max_frame_bytes, 1024);
        assert_eq!(e.supervisor_pid, Some(4242));
        assert_eq!(e.plugin_dir, PathBuf::from("/srv/plugins/echo"));
        assert_eq!(
            e.plugin_config,
            Some(PathBuf::from("/srv/plugins/echo/plugin.toml"))
        );
    }

    #[test]
    fn missing_required_variable_is_named() {
        let vars: Vec<_> = minimal()
            .into_iter()
            .filter(|(k, _)| *k != env::ENDPOINT)
            .collect();
        let err = PluginEnv::from_lookup(lookup(&vars)).unwrap_err();
        assert_eq!(err, EnvError::Missing(env::ENDPOINT));
    }

    #[test]
    fn bad_values_are_refused_without_printing_the_secret() {
        let mut vars = minimal();
        vars.retain(|(k, _)| *k != env::SECRET);
        vars.push((env::SECRET, "abcd"));
        let err = PluginEnv::from_lookup(lookup(&vars)).unwrap_err();
        assert!(matches!(err, EnvError::Invalid { name, .. } if name == env::SECRET));
        assert!(!err.to_string().contains("abcd"), "{err}");

        for (name, value) in [
            (env::HEARTBEAT_MS, "0"),
            (env::HEARTBEAT_MS, "soon"),
            (env::SUPERVISOR_PID, "-1"),
            (env::PROTOCOL, "2"),
        ] {
            let mut vars = minimal();
            vars.push((name, value));
            let err = PluginEnv::from_lookup(lookup(&vars)).unwrap_err();
            assert!(
                matches!(err, EnvError::Invalid { name: n, .. } if n == name),
                "{name}={value}: {err}"
            );
        }
    }
}
