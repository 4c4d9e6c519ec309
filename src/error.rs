//! ApiError: the one place errors become HTTP responses, with the reference's body shape
//! `{"detail": ...}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use neko_actors::Error;
use ractor::rpc::CallResult;
use serde_json::{Value, json};

/// An HTTP error: a status and the `detail` the reference's clients read.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: Value,
    /// Add `WWW-Authenticate: Bearer` (auth failures).
    pub bearer_challenge: bool,
}

impl ApiError {
    /// An error with a plain-text detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: Value::String(detail.into()),
            bearer_challenge: false,
        }
    }

    /// 422 with a FastAPI-style validation detail list.
    pub fn validation(loc: &[&str], msg: impl Into<String>) -> Self {
        Self::unprocessable(json!([{"loc": loc, "msg": msg.into(), "type": "value_error"}]))
    }

    /// 422 for a body that does not fit its model, as FastAPI words the common cases: a missing
    /// field is `missing` at `["body", <field>]`, anything else a `value_error` at `["body"]`.
    pub fn body_shape(error: &serde_json::Error) -> Self {
        let text = error.to_string();
        let missing = text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_string());
        Self::unprocessable(match missing {
            Some(field) => {
                json!([{"type": "missing", "loc": ["body", field], "msg": "Field required"}])
            }
            None => json!([{"type": "value_error", "loc": ["body"], "msg": text}]),
        })
    }

    /// 422 for a body that is not JSON, as FastAPI answers it: `json_invalid` at the byte offset
    /// where decoding failed.
    pub fn json_invalid(body: &[u8], error: &serde_json::Error) -> Self {
        let offset = byte_offset(body, error.line(), error.column());
        Self::unprocessable(json!([{
            "type": "json_invalid",
            "loc": ["body", offset],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error.to_string()},
        }]))
    }

    fn unprocessable(detail: Value) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            bearer_challenge: false,
        }
    }

    /// An actor did not answer in time, or is gone.
    pub fn from_call<T>(result: Result<CallResult<T>, impl std::fmt::Display>) -> Result<T, Self> {
        match result {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => {
                Err(Self::new(StatusCode::GATEWAY_TIMEOUT, "Request timeout"))
            }
            Ok(CallResult::SenderError) | Err(_) => Err(Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable",
            )),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::PluginNotFound(_)
            | Error::PluginUnknown(_)
            | Error::PluginNotRunning(_)
            | Error::ConfigMissing(_) => StatusCode::NOT_FOUND,
            Error::PluginInvalid { .. }
            | Error::PluginDisabled(_)
            | Error::Dependency { .. }
            | Error::ConfigRejected(_) => StatusCode::BAD_REQUEST,
            Error::StartFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ShuttingDown | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({"detail": self.detail}))).into_response();
        if self.bearer_challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The byte offset of serde_json's (1-based line, column) position in `body`.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split_inclusive(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}
