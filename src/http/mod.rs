//! The HTTP gateway: routes with the reference's paths and JSON shapes. A handler validates input,
//! sends one message to an actor, and maps the reply; no business state lives here.
//!
//! One file per route group: [`server`] (health, availability, server info), [`plugin`] (listing,
//! status, start/stop/reload), [`runs`], [`calls`] (plugin-to-plugin calls in flight),
//! [`metrics`] (resource samples of plugin processes), [`logs`] (plugin log files and their live
//! tail), [`config`] (plugin.toml and its profiles).

mod blobs;
mod calls;
mod config;
mod logs;
mod messages;
mod metrics;
mod plugin;
mod runs;
mod server;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use neko_actors::TreeRefs;
use neko_actors::run_token::RunTokenSigner;
use neko_actors::run_tracker::RunEvent;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::error::ApiError;

/// What handlers share: the actors' current references and the gateway's own configuration.
#[derive(Clone)]
pub struct AppState {
    /// Published by the root supervisor; changes when it restarts an actor.
    pub refs: watch::Receiver<Option<TreeRefs>>,
    /// Upper-cased admin token (comparison is case-insensitive, as in the reference).
    pub admin_token: Arc<str>,
    /// How long a request waits for an actor.
    pub request_timeout: Duration,
    /// How long start/stop/reload may take (stop grace + term grace + handshake).
    pub lifecycle_timeout: Duration,
    pub started: Instant,
    /// Run changes, for the WebSockets (a subscription per socket).
    pub run_events: broadcast::Sender<RunEvent>,
    /// Checks the run tokens `/ws/run` is opened with.
    pub run_tokens: RunTokenSigner,
    /// Where plugin log files are written (`<data_dir>/logs/plugins`), for the logs routes.
    pub plugin_logs_dir: std::path::PathBuf,
    /// Cancelled when neko starts to shut down: every WebSocket sends its close frame (1001).
    pub shutdown: CancellationToken,
    /// The open WebSockets, so shutdown can wait (briefly) for their close frames.
    pub sockets: TaskTracker,
}

impl AppState {
    /// The actors as they are now; 503 while the tree is (re)starting.
    pub fn refs(&self) -> Result<TreeRefs, ApiError> {
        self.refs.borrow().clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable",
            )
        })
    }
}

/// The router with every route and the body limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(server::health))
        .route("/available", get(server::available))
        .route("/server/info", get(server::server_info))
        .route("/plugin/status", get(plugin::plugin_status))
        .route("/plugins", get(plugin::plugins))
        .route("/plugin/{plugin_id}/start", post(plugin::start))
        .route("/plugin/{plugin_id}/stop", post(plugin::stop))
        .route("/plugin/{plugin_id}/reload", post(plugin::reload))
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{run_id}", get(runs::get_run))
        .route("/runs/{run_id}/cancel", post(runs::cancel))
        .route("/runs/{run_id}/export", get(runs::export))
        .route("/ws/run", get(ws::run_socket))
        .route("/ws/admin", get(ws::admin_socket))
        .route("/runs/{run_id}/uploads", post(blobs::create_upload))
        .route(
            "/uploads/{upload_id}",
            put(blobs::put_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/runs/{run_id}/blobs/{blob_id}", get(blobs::get_blob))
        .route("/plugin/messages", get(messages::messages))
        .route("/plugin/messages/stream", get(messages::stream))
        .route("/calls", get(calls::calls))
        .route("/plugin/metrics", get(metrics::all))
        .route("/plugin/metrics/{plugin_id}", get(metrics::one))
        .route("/plugin/metrics/{plugin_id}/history", get(metrics::history))
        .route("/plugin/{plugin_id}/logs", get(logs::logs))
        .route("/plugin/{plugin_id}/logs/files", get(logs::files))
        .route("/ws/logs/{plugin_id}", get(logs::socket))
        .route(
            "/plugin/{plugin_id}/config",
            get(config::get_config).put(config::put_config),
        )
        .route(
            "/plugin/{plugin_id}/config/toml",
            get(config::get_toml).put(config::put_toml),
        )
        .route("/plugin/{plugin_id}/config/base", get(config::get_base))
        .route(
            "/plugin/{plugin_id}/config/parse_toml",
            post(config::parse_toml),
        )
        .route(
            "/plugin/{plugin_id}/config/render_toml",
            post(config::render_toml),
        )
        .route("/plugin/{plugin_id}/config/profiles", get(config::profiles))
        .route(
            "/plugin/{plugin_id}/config/profiles/{profile_name}",
            get(config::get_profile)
                .put(config::put_profile)
                .delete(config::delete_profile),
        )
        .route(
            "/plugin/{plugin_id}/config/profiles/{profile_name}/activate",
            post(config::activate),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::map_response(json_errors))
        .layer(cors())
        .with_state(state)
}

/// Axum's own rejections answer in plain text (a path segment that is not UTF-8, a WebSocket
/// route opened without the upgrade, a body over the limit on a route that reads raw bytes);
/// this turns every error that is not JSON yet into `{"detail": <that text>}`, as clients expect.
async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_string()
    } else {
        text
    };
    let (json_parts, json_body) = ApiError::new(status, detail).into_response().into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    if let Some(t) = json_parts.headers.get(CONTENT_TYPE) {
        parts.headers.insert(CONTENT_TYPE, t.clone());
    }
    axum::response::Response::from_parts(parts, json_body)
}

/// The reference's CORS rules: the admin UI's dev server and the main server, and any loopback
/// origin, with credentials.
fn cors() -> CorsLayer {
    const LISTED: [&str; 4] = [
        "http://localhost:5173",
        "http://127.0.0.1:5173",
        "http://localhost:48911",
        "http://127.0.0.1:48911",
    ];
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(|origin, _| {
            origin
                .to_str()
                .is_ok_and(|o| LISTED.contains(&o) || is_loopback_origin(o))
        }))
        .allow_credentials(true)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
}

/// `^https?://(localhost|127\.0\.0\.1)(:\d+)?$`
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
    let port_ok = port.is_empty() && !rest.contains(':')
        || !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    matches!(host, "localhost" | "127.0.0.1") && port_ok
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// A JSON body, read whatever the content type says (the reference's clients are not all strict),
/// with FastAPI's errors: 413 over the size limit, 422 for malformed JSON or the wrong shape.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "Request body too large")
            } else {
                ApiError::new(status, format!("Could not read the request body: {rej}"))
            }
        })?;
        let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ApiError::json_invalid(&bytes, &e))?
        };
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::body_shape(&e))
    }
}

/// Query-string parameters, with a 422 JSON error (FastAPI's shape) when they do not parse.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| QueryArgs(v))
            .map_err(|e| ApiError::validation(&["query"], e.body_text()))
    }
}

/// Proof that the request carries the admin token (`Authorization: Bearer <token>`).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let challenge = |status, detail: &str| ApiError {
            bearer_challenge: true,
            ..ApiError::new(status, detail)
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| challenge(StatusCode::UNAUTHORIZED, "Missing authorization header"))?;
        let given = token.to_ascii_uppercase();
        if bool::from(given.as_bytes().ct_eq(state.admin_token.as_bytes())) {
            Ok(Admin)
        } else {
            Err(challenge(
                StatusCode::FORBIDDEN,
                "Invalid authentication code",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_origin;

    #[test]
    fn loopback_origins_match_the_reference_pattern() {
        for ok in [
            "http://localhost",
            "https://127.0.0.1:8080",
            "http://localhost:5173",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "http://evil.com",
            "http://localhost.evil.com",
            "http://127.0.0.1:",
            "http://127.0.0.1:80x",
            "ftp://localhost",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }
}
