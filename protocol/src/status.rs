//! Status enums that cross a process boundary or show up in JSON.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a plugin is in its life, as the supervisor sees it. Shown as `status` in `GET /plugins`
/// and `GET /plugin/status` (the reference uses `running` / `stopped` / `crashed`; the others are
/// neko's finer steps between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Registered, no process (never started, or stopped by hand).
    Stopped,
    /// A process is being spawned and has not finished its handshake.
    Starting,
    /// The process has said HELLO and serves entries.
    Running,
    /// A stop was requested; the process is being shut down.
    Stopping,
    /// The process died and the supervisor will start it again after a backoff.
    Restarting,
    /// The restart limit was reached (or the policy forbids a restart); down until started by hand.
    Crashed,
    /// `[plugin_runtime] enabled = false`: listed, never started.
    Disabled,
    /// plugin.toml could not be used (bad TOML, missing keys, SDK conflict, ...): listed with its error.
    Invalid,
}

impl PluginState {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Restarting => "restarting",
            Self::Crashed => "crashed",
            Self::Disabled => "disabled",
            Self::Invalid => "invalid",
        }
    }
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's status (the reference's `RunStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    CancelRequested,
    Succeeded,
    Failed,
    Canceled,
    Timeout,
}

impl RunStatus {
    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Timeout
        )
    }
}

/// An error code on the wire: a plain upper-case name (`"NOT_FOUND"`, never `"ErrorCode.NOT_FOUND"`).
/// Plugins may send codes of their own; those travel as [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ErrorCode {
    ValidationError,
    DependencyMissing,
    NotReady,
    RateLimited,
    Timeout,
    NotFound,
    Internal,
    InvalidResponse,
    PluginError,
    PluginCrashed,
    Canceled,
    /// The run was in flight when the supervisor stopped or died.
    SupervisorRestarted,
    /// A plugin-to-plugin call was refused because it would make a plugin wait on itself.
    Deadlock,
    Other(String),
}

impl ErrorCode {
    const NAMED: [(ErrorCode, &'static str); 13] = [
        (Self::ValidationError, "VALIDATION_ERROR"),
        (Self::DependencyMissing, "DEPENDENCY_MISSING"),
        (Self::NotReady, "NOT_READY"),
        (Self::RateLimited, "RATE_LIMITED"),
        (Self::Timeout, "TIMEOUT"),
        (Self::NotFound, "NOT_FOUND"),
        (Self::Internal, "INTERNAL"),
        (Self::InvalidResponse, "INVALID_RESPONSE"),
        (Self::PluginError, "PLUGIN_ERROR"),
        (Self::PluginCrashed, "PLUGIN_CRASHED"),
        (Self::Canceled, "CANCELED"),
        (Self::SupervisorRestarted, "SUPERVISOR_RESTARTED"),
        (Self::Deadlock, "DEADLOCK"),
    ];

    /// The name used on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(s) => s,
            known => Self::NAMED
                .iter()
                .find(|(c, _)| c == known)
                .map(|(_, n)| *n)
                .unwrap_or("INTERNAL"),
        }
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        // Python plugins written for the reference send `str(ErrorCode.X)` = "ErrorCode.X".
        let name = s.strip_prefix("ErrorCode.").unwrap_or(&s);
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| Self::Other(name.to_string()))
    }
}

impl From<ErrorCode> for String {
    fn from(c: ErrorCode) -> Self {
        c.as_str().to_string()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_plain_names_and_accept_the_reference_prefix() {
        assert_eq!(
            ErrorCode::from("ErrorCode.TIMEOUT".to_string()),
            ErrorCode::Timeout
        );
        assert_eq!(ErrorCode::NotFound.as_str(), "NOT_FOUND");
        assert_eq!(
            serde_json::to_string(&ErrorCode::from("MY_CODE".to_string())).unwrap(),
            "\"MY_CODE\""
        );
    }
}
