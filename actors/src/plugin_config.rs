//! A plugin's configuration as the SDKs' `self.config` reads it: its plugin.toml, read fresh from
//! disk on every request (plugins read their config at startup and after edits), as JSON.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::clock::iso_from_unix;

/// The answer to the `config.get` request op:
/// `{"plugin_id", "config", "config_path", "last_modified"}`.
pub fn config_get(plugin_id: &str, config_path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("invalid TOML in {}: {e}", config_path.display()))?;
    let last_modified = std::fs::metadata(config_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| iso_from_unix(d.as_secs_f64()));
    Ok(json!({
        "plugin_id": plugin_id,
        "config": toml_to_json(toml::Value::Table(table)),
        "config_path": config_path,
        "last_modified": last_modified,
    }))
}

/// TOML → JSON; dates and times become their TOML text (JSON has no date type).
pub fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_whole_file_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plugin.toml");
        std::fs::write(
            &p,
            "[plugin]\nid = 'x'\n[debug]\nlevel = 2\nratio = 0.5\nwhen = 1979-05-27\ntags = ['a']\n",
        )
        .unwrap();
        let v = config_get("x", &p).unwrap();
        assert_eq!(v["plugin_id"], "x");
        assert_eq!(v["config"]["plugin"]["id"], "x");
        assert_eq!(v["config"]["debug"]["level"], 2);
        assert_eq!(v["config"]["debug"]["ratio"], 0.5);
        assert_eq!(v["config"]["debug"]["when"], "1979-05-27");
        assert_eq!(v["config"]["debug"]["tags"][0], "a");
        assert!(v["last_modified"].as_str().unwrap().ends_with('Z'));
        assert!(config_get("x", &dir.path().join("missing.toml")).is_err());
    }
}
