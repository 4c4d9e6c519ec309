//! The run record, as `GET /runs/{run_id}` shows it (the reference's `RunRecord`, plus `result`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::WireError;
use crate::status::RunStatus;

/// One invocation of an entry through `POST /runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub plugin_id: String,
    pub entry_id: String,
    pub status: RunStatus,
    /// Unix seconds (float), as the reference.
    pub created_at: f64,
    pub updated_at: f64,
    pub task_id: Option<String>,
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub progress: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub step: Option<u64>,
    pub step_total: Option<u64>,
    pub eta_seconds: Option<f64>,
    pub metrics: serde_json::Map<String, Value>,
    pub cancel_requested: bool,
    pub cancel_reason: Option<String>,
    pub cancel_requested_at: Option<f64>,
    pub error: Option<WireError>,
    pub result_refs: Vec<String>,
    /// What the entry returned (neko addition: clients need not fetch the export to read it).
    pub result: Option<Value>,
}

/// Something a run produced (the reference's `ExportItem`): the entry's result, or what the
/// plugin pushed with `export_push_*`. Exactly one of `text`, `url`, `binary_url`, `binary`
/// (base64) is set, matching `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportItem {
    pub export_item_id: String,
    pub run_id: String,
    /// `text`, `url`, `binary_url` or `binary`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds (float), as the reference.
    pub created_at: f64,
    pub description: Option<String>,
    pub text: Option<String>,
    pub url: Option<String>,
    pub binary_url: Option<String>,
    pub binary: Option<String>,
    pub mime: Option<String>,
    pub metadata: serde_json::Map<String, Value>,
}
