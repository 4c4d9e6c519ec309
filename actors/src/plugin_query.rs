//! Plugins as other plugins see them: the answer to the `plugins.query` request op (the
//! reference's PLUGIN_QUERY, behind `ctx.query_plugins` and `self.plugins.list/require`), and the
//! views of a plugin that `GET /plugins` shares with it.

use std::collections::HashMap;
use std::sync::Arc;

use neko_protocol::{EntrySpec, ErrorCode, PLUGIN_ENTRY, PluginId, PluginState, WireError};
use serde_json::{Value, json};

use crate::manifest::PluginManifest;
use crate::status_manager::PluginStatus;

/// The state shown as a plugin's `status` (the reference's vocabulary: a disabled plugin is
/// `stopped`; neko's own state is shown separately where there is room).
pub fn shown_status(state: PluginState) -> PluginState {
    match state {
        PluginState::Disabled => PluginState::Stopped,
        other => other,
    }
}

/// A plugin's entries: the ones its last HELLO declared, else those its plugin.toml lists.
pub fn entries_of<'a>(m: &'a PluginManifest, status: Option<&'a PluginStatus>) -> &'a [EntrySpec] {
    match status.map(|s| &s.lifecycle.entries[..]) {
        Some(live) if !live.is_empty() => live,
        _ => &m.entries_preview,
    }
}

/// The filters of a query, checked.
#[derive(Debug, Default, PartialEq)]
pub struct Filters {
    plugin_ids: Option<Vec<String>>,
    name_contains: Option<String>,
    status_in: Option<Vec<String>>,
    has_entry: Option<String>,
    has_custom_event: Option<(String, String)>,
    include_events: bool,
}

impl Filters {
    /// Reads `filters` (absent or null = none). A filter of the wrong type is refused rather
    /// than ignored, so a typo does not silently list everything.
    pub fn parse(filters: Option<&Value>) -> Result<Self, WireError> {
        let invalid = |m: &str| WireError::new(ErrorCode::ValidationError, m);
        let obj = match filters {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(invalid("filters must be an object")),
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, WireError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| {
                        invalid(&format!("{key} must be a string or a list of strings"))
                    }),
                Some(_) => Err(invalid(&format!(
                    "{key} must be a string or a list of strings"
                ))),
            }
        };
        let text = |key: &str| -> Result<Option<String>, WireError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(&format!("{key} must be a string"))),
            }
        };
        let has_custom_event = match obj.get("has_custom_event") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => match (
                e.get("event_type").and_then(Value::as_str),
                e.get("event_id").and_then(Value::as_str),
            ) {
                (Some(t), Some(i)) => Some((t.to_string(), i.to_string())),
                _ => {
                    return Err(invalid(
                        "has_custom_event needs event_type and event_id strings",
                    ));
                }
            },
            Some(_) => return Err(invalid("has_custom_event must be an object")),
        };
        let include_events = match obj.get("include_events") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("include_events must be a boolean")),
        };
        Ok(Self {
            plugin_ids: strings("plugin_ids")?,
            name_contains: text("name_contains")?.map(|s| s.to_lowercase()),
            status_in: strings("status_in")?,
            has_entry: text("has_entry")?,
            has_custom_event,
            include_events,
        })
    }
}

/// `{"plugins": [...]}`: every registered plugin that passes `filters`, in registry order.
pub fn answer(
    manifests: &[Arc<PluginManifest>],
    statuses: &[PluginStatus],
    filters: &Filters,
) -> Value {
    let by_id: HashMap<&PluginId, &PluginStatus> =
        statuses.iter().map(|s| (&s.plugin_id, s)).collect();
    let plugins: Vec<Value> = manifests
        .iter()
        .filter_map(|m| item(m, by_id.get(&m.id).copied(), filters))
        .collect();
    json!({ "plugins": plugins })
}

fn item(m: &PluginManifest, status: Option<&PluginStatus>, f: &Filters) -> Option<Value> {
    if let Some(ids) = &f.plugin_ids
        && !ids.iter().any(|id| id == m.id.as_str())
    {
        return None;
    }
    if let Some(needle) = &f.name_contains
        && ![m.id.as_str(), &m.name, &m.description]
            .iter()
            .any(|s| s.to_lowercase().contains(needle))
    {
        return None;
    }
    let state = shown_status(status.map_or(PluginState::Stopped, |s| s.lifecycle.state));
    if let Some(wanted) = &f.status_in {
        let reported = status
            .and_then(|s| s.reported.as_ref())
            .and_then(|r| r.status.get("status"))
            .and_then(Value::as_str);
        if !wanted
            .iter()
            .any(|w| w == state.as_str() || Some(w.as_str()) == reported)
        {
            return None;
        }
    }
    let entries = entries_of(m, status);
    if let Some(entry) = &f.has_entry
        && !entries.iter().any(|e| &e.id == entry)
    {
        return None;
    }
    let custom = status.map(|s| &s.lifecycle.events[..]).unwrap_or(&[]);
    if let Some((t, i)) = &f.has_custom_event {
        let declared = if t == PLUGIN_ENTRY {
            entries.iter().any(|e| &e.id == i)
        } else {
            custom.iter().any(|e| &e.event_type == t && &e.id == i)
        };
        if !declared {
            return None;
        }
    }
    let mut item = json!({
        "plugin_id": m.id, "name": m.name, "description": m.description,
        "version": m.version, "sdk_version": m.sdk_version(), "status": state,
    });
    if f.include_events {
        item["events"] = json!({
            "plugin_entry": entries.iter().map(|e| &e.id).collect::<Vec<_>>(),
            "custom": custom.iter().map(|e| json!({"event_type": e.event_type, "event_id": e.id}))
                .collect::<Vec<_>>(),
        });
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;
    use crate::status_manager::{Lifecycle, ReportedStatus};
    use neko_protocol::EventSpec;
    use std::path::Path;

    fn manifest(id: &str, description: &str) -> Arc<PluginManifest> {
        let text = format!(
            "[plugin]\nid = \"{id}\"\nname = \"{id} plugin\"\ndescription = \"{description}\"\nentry = \"plugins.{id}:P\"\n"
        );
        Arc::new(parse_manifest(&text, Path::new("/p/x/plugin.toml")).unwrap())
    }

    fn status(
        id: &str,
        state: PluginState,
        entries: &[&str],
        reported: Option<&str>,
    ) -> PluginStatus {
        PluginStatus {
            plugin_id: PluginId::new(id).unwrap(),
            lifecycle: Lifecycle {
                state,
                entries: entries
                    .iter()
                    .map(|e| serde_json::from_value(json!({"id": e})).unwrap())
                    .collect(),
                events: vec![EventSpec {
                    event_type: "tick".into(),
                    id: format!("{id}-t"),
                }],
                ..Lifecycle::new(state)
            },
            updated_at: 0.0,
            reported: reported.map(|r| ReportedStatus {
                status: json!({"status": r}),
                updated_at: 0.0,
            }),
        }
    }

    fn ids(filters: Value) -> Vec<String> {
        let manifests = [
            manifest("alpha", "Weather"),
            manifest("beta", "Jokes"),
            manifest("gamma", ""),
        ];
        let statuses = [
            status("alpha", PluginState::Running, &["forecast"], Some("busy")),
            status("beta", PluginState::Crashed, &["joke"], None),
        ];
        let f = Filters::parse(Some(&filters)).unwrap();
        answer(&manifests, &statuses, &f)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["plugin_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn filters_select_plugins() {
        assert_eq!(ids(json!({})), ["alpha", "beta", "gamma"]);
        assert_eq!(ids(json!({"plugin_ids": "beta"})), ["beta"]);
        assert_eq!(
            ids(json!({"plugin_ids": ["gamma", "alpha"]})),
            ["alpha", "gamma"]
        );
        assert_eq!(ids(json!({"name_contains": "WEATH"})), ["alpha"]);
        assert_eq!(
            ids(json!({"status_in": ["crashed", "stopped"]})),
            ["beta", "gamma"]
        );
        assert_eq!(ids(json!({"status_in": "busy"})), ["alpha"]);
        assert_eq!(ids(json!({"has_entry": "joke"})), ["beta"]);
        assert_eq!(
            ids(json!({"has_custom_event": {"event_type": "tick", "event_id": "alpha-t"}})),
            ["alpha"]
        );
    }

    #[test]
    fn items_have_the_reference_fields_and_events_on_request() {
        let f = Filters::parse(Some(
            &json!({"include_events": true, "plugin_ids": ["alpha"]}),
        ))
        .unwrap();
        let out = answer(
            &[manifest("alpha", "d")],
            &[status("alpha", PluginState::Running, &["forecast"], None)],
            &f,
        );
        let item = &out["plugins"][0];
        assert_eq!(item["status"], "running");
        assert_eq!(item["name"], "alpha plugin");
        assert_eq!(item["events"]["plugin_entry"], json!(["forecast"]));
        assert_eq!(
            item["events"]["custom"],
            json!([{"event_type": "tick", "event_id": "alpha-t"}])
        );
        assert!(item.get("sdk_version").is_some() && item.get("version").is_some());
    }

    #[test]
    fn wrong_filter_types_are_refused() {
        for bad in [
            json!([]),
            json!({"plugin_ids": 3}),
            json!({"status_in": [1]}),
            json!({"include_events": "yes"}),
            json!({"has_custom_event": {"event_type": "x"}}),
        ] {
            let err = Filters::parse(Some(&bad)).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationError, "{bad}");
        }
    }
}
