//! The config routes under `/plugin/{plugin_id}/config` (admin): plugin.toml, its profiles and the
//! effective config. Each handler turns the request into one [`ConfigRequest`] for the Registry,
//! which owns the plugin folders and does the file work ([`neko_actors::plugin_config`]).

use axum::Json;
use axum::extract::{Path, State};
use neko_actors::plugin_config::{ConfigReply, ConfigRequest};
use neko_actors::registry::RegistryMsg;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::plugin::parse_id;
use super::{Admin, AppState, JsonBody};
use crate::error::ApiError;

/// `{"config": {...}}`.
#[derive(Deserialize)]
pub struct ConfigBody {
    config: Map<String, Value>,
}

/// `{"toml": "..."}`.
#[derive(Deserialize)]
pub struct TomlBody {
    toml: String,
}

/// `{"config": {...}, "make_active": bool | null}`.
#[derive(Deserialize)]
pub struct ProfileBody {
    config: Map<String, Value>,
    #[serde(default)]
    make_active: Option<bool>,
}

/// Validates the id and asks the Registry.
async fn ask(
    app: &AppState,
    raw_id: &str,
    request: ConfigRequest,
) -> Result<Json<ConfigReply>, ApiError> {
    let id = parse_id(raw_id)?;
    let refs = app.refs()?;
    let reply = ApiError::from_call(
        refs.registry
            .call(
                |p| RegistryMsg::Config(id.clone(), request, p),
                Some(app.request_timeout),
            )
            .await,
    )??;
    Ok(Json(reply))
}

/// `GET /plugin/{id}/config`: the effective config (base + active profile).
pub async fn get_config(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::Get).await
}

/// `GET /plugin/{id}/config/toml`: plugin.toml as text.
pub async fn get_toml(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::GetToml).await
}

/// `GET /plugin/{id}/config/base`: plugin.toml parsed, without the profile.
pub async fn get_base(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::GetBase).await
}

/// `PUT /plugin/{id}/config`: replace plugin.toml with an object.
pub async fn put_config(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConfigBody>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::Replace(body.config)).await
}

/// `POST /plugin/{id}/config/parse_toml`: TOML text → object, nothing written.
pub async fn parse_toml(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TomlBody>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::ParseToml(body.toml)).await
}

/// `POST /plugin/{id}/config/render_toml`: object → TOML text, nothing written.
pub async fn render_toml(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConfigBody>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::RenderToml(body.config)).await
}

/// `PUT /plugin/{id}/config/toml`: replace plugin.toml with this text, verbatim.
pub async fn put_toml(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TomlBody>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::ReplaceToml(body.toml)).await
}

/// `GET /plugin/{id}/config/profiles`: the profiles table of profiles.toml.
pub async fn profiles(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::Profiles).await
}

/// `GET /plugin/{id}/config/profiles/{name}`: one profile and its contents.
pub async fn get_profile(
    _: Admin,
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::GetProfile(name)).await
}

/// `PUT /plugin/{id}/config/profiles/{name}`: write a profile and map it.
pub async fn put_profile(
    _: Admin,
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<ProfileBody>,
) -> Result<Json<ConfigReply>, ApiError> {
    let request = ConfigRequest::PutProfile {
        name,
        config: body.config,
        make_active: body.make_active,
    };
    ask(&app, &id, request).await
}

/// `DELETE /plugin/{id}/config/profiles/{name}`: remove a profile's mapping (not its file).
pub async fn delete_profile(
    _: Admin,
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::DeleteProfile(name)).await
}

/// `POST /plugin/{id}/config/profiles/{name}/activate`: make a mapped profile the active one.
pub async fn activate(
    _: Admin,
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<ConfigReply>, ApiError> {
    ask(&app, &id, ConfigRequest::Activate(name)).await
}
