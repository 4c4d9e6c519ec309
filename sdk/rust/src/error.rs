//! The SDK's two error types: [`EntryError`], a handler's failure that travels back to the caller
//! as a RESULT, and [`RunError`], why the plugin as a whole could not run (its process then exits
//! non-zero).

use std::fmt;
use std::time::Duration;

use neko_protocol::{ErrorCode, WireError};
use serde_json::Value;

use crate::env::EnvError;
use crate::link::LinkError;

/// A handler's failure. It becomes the `error` of the call's RESULT, so the caller sees `code`,
/// `message` and `details` as written here.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryError {
    /// The error code (a plain name on the wire, e.g. `VALIDATION_ERROR`, or one of the plugin's own).
    pub code: ErrorCode,
    /// A human-readable message.
    pub message: String,
    /// Optional structured details (which field was wrong, an upstream status, ...).
    pub details: Option<Value>,
}

impl EntryError {
    /// An error with `code` and `message` and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// `VALIDATION_ERROR`: the arguments are wrong.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    /// `INTERNAL`: the plugin failed for a reason that is not the caller's fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `PLUGIN_ERROR`: the entry ran and reports a failure of its own.
    pub fn plugin(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PluginError, message)
    }

    /// The same error with `details` attached.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for EntryError {}

impl From<EntryError> for WireError {
    fn from(e: EntryError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details,
        }
    }
}

/// `serde_json` errors mostly come from `serde_json::from_value::<Args>(args)?`, i.e. arguments
/// that do not have the expected shape, so they are validation errors.
impl From<serde_json::Error> for EntryError {
    fn from(e: serde_json::Error) -> Self {
        Self::validation(e.to_string())
    }
}

/// I/O failures are the plugin's problem, not the caller's.
impl From<std::io::Error> for EntryError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e.to_string())
    }
}

/// Why [`crate::Plugin::run_with`] gave up. Each of these ends the plugin process with a non-zero
/// code; the supervisor logs the line and applies its restart policy.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The environment neko sets is missing or malformed.
    #[error("bad plugin environment: {0}")]
    Env(#[from] EnvError),
    /// Two entries share an id, so a TRIGGER could not tell them apart.
    #[error("entry id '{0}' is declared twice")]
    DuplicateEntry(String),
    /// A custom event's type is empty or `plugin_entry`.
    #[error("custom event type '{0}' is not allowed (empty or plugin_entry)")]
    BadEventType(String),
    /// The supervisor's endpoint could not be reached.
    #[error("could not connect to the supervisor at {endpoint}: {source}")]
    Connect {
        /// The endpoint from `NEKO_PLUGIN_ENDPOINT`.
        endpoint: String,
        /// What the socket reported.
        #[source]
        source: zeromq::ZmqError,
    },
    /// Connecting took longer than the handshake allows.
    #[error("could not connect to the supervisor at {endpoint} within {after:?}")]
    ConnectTimeout {
        /// The endpoint from `NEKO_PLUGIN_ENDPOINT`.
        endpoint: String,
        /// The handshake timeout.
        after: Duration,
    },
    /// HELLO could not be sent.
    #[error("could not send HELLO: {0}")]
    Hello(#[source] LinkError),
    /// No WELCOME came back in time: the supervisor refused the HELLO or is not answering.
    #[error(
        "the supervisor did not answer HELLO with WELCOME within {0:?} (HELLO refused, or wrong secret)"
    )]
    NoWelcome(Duration),
    /// The link to the supervisor broke (a ZeroMQ-level receive error).
    #[error("the link to the supervisor broke: {0}")]
    Link(#[source] LinkError),
    /// The plugin's `on_startup` hook failed or panicked.
    #[error("on_startup failed: {0}")]
    Startup(EntryError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constructors_pick_their_codes() {
        assert_eq!(
            EntryError::validation("bad").code,
            ErrorCode::ValidationError
        );
        assert_eq!(EntryError::internal("x").code, ErrorCode::Internal);
        assert_eq!(EntryError::plugin("x").code, ErrorCode::PluginError);
        let custom = EntryError::new(ErrorCode::from("MY_CODE".to_string()), "m");
        assert_eq!(custom.to_string(), "MY_CODE: m");
    }

    #[test]
    fn details_travel_to_the_wire() {
        let wire: WireError = EntryError::validation("ms must be a number")
            .with_details(json!({"field": "ms"}))
            .into();
        assert_eq!(wire.code, ErrorCode::ValidationError);
        assert_eq!(wire.message, "ms must be a number");
        assert_eq!(wire.details, Some(json!({"field": "ms"})));
    }

    #[test]
    fn bad_argument_shapes_are_validation_errors() {
        let err: EntryError = serde_json::from_value::<u64>(json!("soon"))
            .unwrap_err()
            .into();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }
}
