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
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: json!([{"loc": loc, "msg": msg.into(), "type": "value_error"}]),
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
