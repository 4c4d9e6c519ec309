//! What plugins may do to their runs (`run.update`, `export.push` requests): validation with the
//! reference's error messages, as pure functions over the request's arguments.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use neko_protocol::{ErrorCode, ExportItem, RunRecord, RunStatus, WireError};
use serde_json::{Map, Value};

/// The reference's limit for inline `binary` exports (EXPORT_INLINE_BINARY_MAX_BYTES).
pub const EXPORT_INLINE_BINARY_MAX_BYTES: usize = 256 * 1024;
const STAGE_MAX_CHARS: usize = 128;
const MESSAGE_MAX_CHARS: usize = 512;

fn invalid(message: &str) -> WireError {
    WireError::new(ErrorCode::ValidationError, message)
}

/// The `run_id` argument, or the reference's error.
pub fn run_id_arg(args: &Map<String, Value>) -> Result<&str, WireError> {
    args.get("run_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("run_id is required"))
}

/// Only the plugin a run was started on may touch it.
pub fn check_owner(run: &RunRecord, plugin_id: &str) -> Result<(), WireError> {
    if run.plugin_id == plugin_id {
        Ok(())
    } else {
        Err(WireError::new(ErrorCode::ValidationError, "forbidden"))
    }
}

/// Applies a `run.update` patch to `run`. `Ok(false)`: nothing to apply (empty patch, or the run
/// no longer accepts updates), which is not an error, as in the reference.
pub fn apply_update(run: &mut RunRecord, args: &Map<String, Value>) -> Result<bool, WireError> {
    // Validate everything before changing anything.
    if let Some(status) = args.get("status").filter(|v| !v.is_null())
        && status.as_str() != Some("running")
    {
        return Err(invalid("invalid status"));
    }
    let progress = optional(args, "progress", "invalid progress", |v| {
        v.as_f64().filter(|p| (0.0..=1.0).contains(p))
    })?;
    let stage = optional_text(args, "stage", STAGE_MAX_CHARS, "stage too long")?;
    let message = optional_text(args, "message", MESSAGE_MAX_CHARS, "message too long")?;
    let step = optional(args, "step", "invalid step", Value::as_u64)?;
    let step_total = optional(args, "step_total", "invalid step_total", Value::as_u64)?;
    if let Some(step) = step
        && step_total
            .or(run.step_total)
            .is_some_and(|total| step > total)
    {
        return Err(invalid("invalid step"));
    }
    let eta = optional(args, "eta_seconds", "invalid eta_seconds", |v| {
        v.as_f64().filter(|s| *s >= 0.0)
    })?;
    let metrics = optional(args, "metrics", "invalid metrics", |v| {
        v.as_object().cloned()
    })?;
    if !matches!(run.status, RunStatus::Running | RunStatus::CancelRequested) {
        return Ok(false);
    }
    let mut applied = false;
    let mut set = |changed: bool| applied |= changed;
    if let Some(p) = progress {
        run.progress = Some(p);
        set(true);
    }
    if let Some(s) = stage {
        run.stage = Some(s);
        set(true);
    }
    if let Some(m) = message {
        run.message = Some(m);
        set(true);
    }
    if let Some(s) = step {
        run.step = Some(s);
        set(true);
    }
    if let Some(t) = step_total {
        run.step_total = Some(t);
        set(true);
    }
    if let Some(e) = eta {
        run.eta_seconds = Some(e);
        set(true);
    }
    if let Some(m) = metrics {
        run.metrics = m;
        set(true);
    }
    Ok(applied)
}

/// Builds the export item an `export.push` asks for (without its id and time, which the
/// tracker assigns).
pub fn export_item(
    run_id: &str,
    args: &Map<String, Value>,
    id: String,
    now: f64,
) -> Result<ExportItem, WireError> {
    let kind = args
        .get("export_type")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("export_type is required"))?;
    let required = |key: &str| -> Result<String, WireError> {
        args.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| invalid(&format!("{key} is required")))
    };
    let mut item = ExportItem {
        export_item_id: id,
        run_id: run_id.to_string(),
        kind: kind.to_string(),
        created_at: now,
        description: text_arg(args, "description"),
        text: None,
        url: None,
        binary_url: None,
        binary: None,
        mime: text_arg(args, "mime"),
        metadata: args
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    match kind {
        "text" => item.text = Some(required("text")?),
        "url" => item.url = Some(required("url")?),
        "binary_url" => item.binary_url = Some(required("binary_url")?),
        "binary" => {
            let encoded = required("binary_base64")?;
            let bytes = STANDARD
                .decode(&encoded)
                .map_err(|_| invalid("invalid binary_base64"))?;
            if bytes.len() > EXPORT_INLINE_BINARY_MAX_BYTES {
                return Err(invalid("binary too large"));
            }
            item.binary = Some(encoded);
        }
        _ => return Err(invalid("unsupported export_type")),
    }
    Ok(item)
}

fn text_arg(args: &Map<String, Value>, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_string)
}

/// An optional argument: absent or null → `None`; present but not accepted by `read` → `error`.
fn optional<T>(
    args: &Map<String, Value>,
    key: &str,
    error: &str,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, WireError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v).map(Some).ok_or_else(|| invalid(error)),
    }
}

fn optional_text(
    args: &Map<String, Value>,
    key: &str,
    max_chars: usize,
    too_long: &str,
) -> Result<Option<String>, WireError> {
    let text = optional(args, key, &format!("invalid {key}"), |v| {
        v.as_str().map(str::to_string)
    })?;
    match text {
        Some(t) if t.chars().count() > max_chars => Err(invalid(too_long)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn running() -> RunRecord {
        let mut r: RunRecord = serde_json::from_value(json!({
            "run_id": "r", "plugin_id": "p", "entry_id": "e", "status": "running",
            "created_at": 0.0, "updated_at": 0.0, "task_id": null, "trace_id": null,
            "idempotency_key": null, "started_at": null, "finished_at": null, "progress": null,
            "stage": null, "message": null, "step": null, "step_total": null, "eta_seconds": null,
            "metrics": {}, "cancel_requested": false, "cancel_reason": null,
            "cancel_requested_at": null, "error": null, "result_refs": [], "result": null
        }))
        .unwrap();
        r.status = RunStatus::Running;
        r
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn updates_apply_while_running_and_validate_like_the_reference() {
        let mut run = running();
        let patch = args(json!({"progress": 0.5, "stage": "s", "step": 1, "step_total": 2}));
        assert_eq!(apply_update(&mut run, &patch), Ok(true));
        assert_eq!(run.progress, Some(0.5));
        assert_eq!(run.step, Some(1));
        for (bad, message) in [
            (json!({"progress": 1.5}), "invalid progress"),
            (json!({"progress": "x"}), "invalid progress"),
            (json!({"stage": "x".repeat(129)}), "stage too long"),
            (json!({"message": "x".repeat(513)}), "message too long"),
            (json!({"step": 3}), "invalid step"),
            (json!({"step": -1}), "invalid step"),
            (json!({"eta_seconds": -1}), "invalid eta_seconds"),
            (json!({"metrics": [1]}), "invalid metrics"),
            (json!({"status": "succeeded"}), "invalid status"),
        ] {
            let err = apply_update(&mut run, &args(bad)).unwrap_err();
            assert_eq!(err.message, message);
        }
        assert_eq!(run.progress, Some(0.5), "a refused patch changes nothing");
        assert_eq!(apply_update(&mut run, &Map::new()), Ok(false));
        run.status = RunStatus::Succeeded;
        assert_eq!(
            apply_update(&mut run, &args(json!({"progress": 0.9}))),
            Ok(false)
        );
    }

    #[test]
    fn exports_are_checked_per_type() {
        let ok = export_item(
            "r",
            &args(json!({"export_type": "text", "text": "hi", "metadata": {"a": 1}})),
            "id".into(),
            1.0,
        )
        .unwrap();
        assert_eq!(ok.text.as_deref(), Some("hi"));
        assert_eq!(ok.metadata["a"], 1);
        let big = STANDARD.encode(vec![0u8; EXPORT_INLINE_BINARY_MAX_BYTES + 1]);
        for (bad, message) in [
            (json!({}), "export_type is required"),
            (json!({"export_type": "zip"}), "unsupported export_type"),
            (json!({"export_type": "text"}), "text is required"),
            (json!({"export_type": "url"}), "url is required"),
            (
                json!({"export_type": "binary_url"}),
                "binary_url is required",
            ),
            (
                json!({"export_type": "binary"}),
                "binary_base64 is required",
            ),
            (
                json!({"export_type": "binary", "binary_base64": "%%%"}),
                "invalid binary_base64",
            ),
            (
                json!({"export_type": "binary", "binary_base64": big}),
                "binary too large",
            ),
        ] {
            let err = export_item("r", &args(bad), "id".into(), 1.0).unwrap_err();
            assert_eq!(err.message, message);
        }
    }
}
