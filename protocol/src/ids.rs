//! Identifier newtypes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A plugin id: 1 to 64 characters from `[A-Za-z0-9_-]`, the rule the reference applies to every
/// route that names a plugin. Ids appear in file names, socket paths and URLs, so nothing else is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PluginId(String);

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Invalid plugin_id: '{0}'. Only alphanumeric characters, underscores, and hyphens are allowed."
)]
pub struct InvalidId(pub String);

impl PluginId {
    /// Longest id accepted.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(id))
        } else {
            Err(InvalidId(id))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PluginId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<PluginId> for String {
    fn from(id: PluginId) -> Self {
        id.0
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PluginId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reference_style_ids() {
        for id in ["echo", "testPlugin", "load_tester", "a-b_C9"] {
            assert!(PluginId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_paths_and_empty() {
        for id in ["", "../x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(PluginId::new(id).is_err(), "{id}");
        }
    }
}
