//! A plugin's configuration files: plugin.toml (the base), `profiles.toml` (which profile is
//! active, and where each profile lives) and the profile files, merged into the *effective*
//! config that the config routes show and that plugins read with the `config.get` request op.
//!
//! Everything here is a plain function over one plugin folder, so the HTTP routes (served by the
//! Registry, which knows each plugin's folder and handles one request at a time, so writes never
//! interleave) and the ProcessHost use the same overlay. Writes are atomic: a temp file in the
//! same folder, fsync, rename, fsync of the folder.
//!
//! neko is stricter than the reference about where profiles live: a profile path must resolve
//! inside the plugin folder (relative, no `..` out of it, no symlink out of it; no `~` or `$VAR`
//! expansion), and profile names follow the plugin id rule (`[A-Za-z0-9_-]`). A path that breaks
//! this is refused with 400 by the routes, and ignored (with a warning) when merging.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use neko_protocol::PluginId;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::clock::iso_from_unix;
use crate::error::Error;

/// The table that cannot be overridden by profiles and whose `id` / `entry` keys the routes
/// protect.
const PLUGIN_TABLE: &str = "plugin";
/// Keys of `[plugin]` that HTTP writes may not change.
const PROTECTED: [&str; 2] = ["id", "entry"];
/// The profiles file, next to plugin.toml.
const PROFILES_FILE: &str = "profiles.toml";
/// The table inside profiles.toml (and `[plugin.config_profiles]` inside plugin.toml).
const PROFILES_TABLE: &str = "config_profiles";

/// Where one plugin's configuration lives.
#[derive(Debug, Clone)]
pub struct PluginFolder {
    pub id: PluginId,
    /// The plugin folder; profile paths are relative to it and must stay inside it.
    pub dir: PathBuf,
    /// Its plugin.toml.
    pub config_path: PathBuf,
}

/// A config request from the gateway (one per route).
#[derive(Debug, Clone)]
pub enum ConfigRequest {
    /// The effective config (base + active profile).
    Get,
    /// plugin.toml as text.
    GetToml,
    /// plugin.toml parsed, without the overlay.
    GetBase,
    /// Replace plugin.toml with this object (missing `plugin.id` / `plugin.entry` are kept).
    Replace(Map<String, Value>),
    /// Parse TOML text without writing it.
    ParseToml(String),
    /// Render an object as TOML without writing it.
    RenderToml(Map<String, Value>),
    /// Replace plugin.toml with this text, verbatim.
    ReplaceToml(String),
    /// The profiles table of profiles.toml.
    Profiles,
    /// One profile and its contents.
    GetProfile(String),
    /// Write a profile file and map it in profiles.toml.
    PutProfile {
        name: String,
        config: Map<String, Value>,
        make_active: Option<bool>,
    },
    /// Remove a profile's mapping (never its file).
    DeleteProfile(String),
    /// Make a mapped profile the active one.
    Activate(String),
    /// Deep-merge this object into plugin.toml (a plugin's own `config.update`); `plugin.id` and
    /// `plugin.entry` cannot change.
    Update(Map<String, Value>),
    /// The base config with the named profile applied (whatever profile is active), plus
    /// `effective_profile`.
    Effective(String),
}

/// What a config request answers; each variant is one of the reference's JSON shapes.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ConfigReply {
    /// GET config, GET config/base.
    Config(ConfigView),
    /// GET config/toml.
    Toml(TomlView),
    /// PUT config, PUT config/toml.
    Written(ConfigWritten),
    /// POST config/parse_toml.
    Parsed(ParsedConfig),
    /// POST config/render_toml.
    Rendered(RenderedToml),
    /// GET config/profiles, POST config/profiles/{name}/activate.
    Profiles(ProfilesView),
    /// GET and PUT config/profiles/{name}.
    Profile(ProfileView),
    /// DELETE config/profiles/{name}.
    Removed(ProfileRemoved),
    /// A plugin's `config.effective` with a profile name.
    Effective(EffectiveView),
}

/// `{"plugin_id", "config", "effective_profile", "last_modified", "config_path"}`.
#[derive(Debug, Clone, Serialize)]
pub struct EffectiveView {
    pub plugin_id: PluginId,
    pub config: Value,
    pub effective_profile: String,
    pub last_modified: Option<String>,
    pub config_path: PathBuf,
}

/// `{"plugin_id", "config", "last_modified", "config_path"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    pub plugin_id: PluginId,
    /// The config as JSON (TOML dates and times become their text).
    pub config: Value,
    /// plugin.toml's modification time (ISO 8601, UTC).
    pub last_modified: Option<String>,
    pub config_path: PathBuf,
}

/// `{"plugin_id", "toml", "last_modified", "config_path"}`.
#[derive(Debug, Clone, Serialize)]
pub struct TomlView {
    pub plugin_id: PluginId,
    pub toml: String,
    pub last_modified: Option<String>,
    pub config_path: PathBuf,
}

/// The answer to a write of plugin.toml.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigWritten {
    pub success: bool,
    pub plugin_id: PluginId,
    /// The effective config after the write.
    pub config: Value,
    /// Always true: a running plugin sees the change after a reload.
    pub requires_reload: bool,
    pub message: &'static str,
}

/// `{"plugin_id", "config"}`: parsed TOML.
#[derive(Debug, Clone, Serialize)]
pub struct ParsedConfig {
    pub plugin_id: PluginId,
    pub config: Value,
}

/// `{"plugin_id", "toml"}`: a rendered object.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedToml {
    pub plugin_id: PluginId,
    pub toml: String,
}

/// The profiles state: only from profiles.toml (`config_profiles` is null without it).
#[derive(Debug, Clone, Serialize)]
pub struct ProfilesView {
    pub plugin_id: PluginId,
    /// `<plugin dir>/profiles.toml`, whether or not it exists.
    pub profiles_path: PathBuf,
    pub profiles_exists: bool,
    /// Null when profiles.toml is missing or has no `[config_profiles]`.
    pub config_profiles: Option<ProfilesState>,
}

/// `{"active", "files": {name: {"path", "resolved_path", "exists"}}}`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfilesState {
    pub active: Option<String>,
    pub files: BTreeMap<String, ProfileFile>,
}

/// Where a profile's file is; `resolved_path` is null when the path leaves the plugin folder.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileFile {
    /// As written in the profile table (relative to the plugin folder).
    pub path: String,
    pub resolved_path: Option<PathBuf>,
    pub exists: bool,
}

/// `{"plugin_id", "profile": {"name", "path", "resolved_path", "exists"}, "config"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    pub plugin_id: PluginId,
    pub profile: NamedProfile,
    pub config: Value,
}

/// A profile with its name.
#[derive(Debug, Clone, Serialize)]
pub struct NamedProfile {
    pub name: String,
    #[serde(flatten)]
    pub file: ProfileFile,
}

/// `{"plugin_id", "profile", "removed"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRemoved {
    pub plugin_id: PluginId,
    pub profile: String,
    /// False when the profile was not mapped (or there is no profiles.toml).
    pub removed: bool,
}

/// The profile table in use: `active` and name → path.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProfileTable {
    active: Option<String>,
    files: BTreeMap<String, String>,
}

/// Serves one config request against `folder`. `env_profile` is the value of
/// `NEKO_PLUGIN_<ID>_PROFILE` (see [`env_profile`]), which overrides the active profile.
pub fn serve(
    folder: &PluginFolder,
    req: ConfigRequest,
    env_profile: Option<String>,
) -> Result<ConfigReply, Error> {
    let id = folder.id.clone();
    Ok(match req {
        ConfigRequest::Get => ConfigReply::Config(effective_view(folder, env_profile)?),
        ConfigRequest::GetBase => {
            let (base, _) = read_base(folder)?;
            ConfigReply::Config(ConfigView {
                plugin_id: id,
                config: toml_to_json(toml::Value::Table(base)),
                last_modified: last_modified(&folder.config_path),
                config_path: folder.config_path.clone(),
            })
        }
        ConfigRequest::GetToml => {
            // The text as it is, even when it does not parse: that is how it gets fixed.
            let text = read_text(folder)?;
            ConfigReply::Toml(TomlView {
                plugin_id: id,
                toml: text,
                last_modified: last_modified(&folder.config_path),
                config_path: folder.config_path.clone(),
            })
        }
        ConfigRequest::Replace(object) => {
            let (base, _) = read_base(folder)?;
            let mut new = json_to_toml(object)?;
            keep_protected(&base, &mut new);
            check_protected(&base, &new)?;
            write_file(&folder.config_path, render(&new)?.as_bytes())?;
            written(folder, env_profile)?
        }
        ConfigRequest::ParseToml(text) => {
            let parsed = parse_toml(&text)?;
            let current = effective(folder, env_profile)?;
            check_protected(&current, &parsed)?;
            ConfigReply::Parsed(ParsedConfig {
                plugin_id: id,
                config: toml_to_json(toml::Value::Table(parsed)),
            })
        }
        ConfigRequest::RenderToml(object) => ConfigReply::Rendered(RenderedToml {
            plugin_id: id,
            toml: render(&json_to_toml(object)?)?,
        }),
        ConfigRequest::ReplaceToml(text) => {
            let parsed = parse_toml(&text)?;
            match parse_toml(&read_text(folder)?) {
                // As the reference: a document without `[plugin]` keys leaves them unchecked.
                Ok(base) => check_protected(&base, &parsed)?,
                // A file that does not parse may be replaced, as long as the id stays the folder's.
                Err(_) => check_own_id(folder, &parsed)?,
            }
            write_file(&folder.config_path, text.as_bytes())?;
            written(folder, env_profile)?
        }
        ConfigRequest::Profiles => ConfigReply::Profiles(profiles_view(folder)),
        ConfigRequest::GetProfile(name) => ConfigReply::Profile(get_profile(folder, &name)?),
        ConfigRequest::PutProfile {
            name,
            config,
            make_active,
        } => ConfigReply::Profile(put_profile(folder, &name, config, make_active)?),
        ConfigRequest::DeleteProfile(name) => ConfigReply::Removed(delete_profile(folder, &name)?),
        ConfigRequest::Activate(name) => ConfigReply::Profiles(activate(folder, &name)?),
        ConfigRequest::Update(patch) => {
            let (base, _) = read_base(folder)?;
            let patch = json_to_toml(patch)?;
            check_protected(&base, &patch)?;
            let mut new = base;
            merge_tables(&mut new, patch);
            write_file(&folder.config_path, render(&new)?.as_bytes())?;
            written(folder, env_profile)?
        }
        ConfigRequest::Effective(name) => {
            let (mut base, _) = read_base(folder)?;
            let profile = get_profile(folder, &name)?;
            let Value::Object(overlay) = profile.config else {
                return Err(Error::ConfigRejected(format!(
                    "Profile '{name}' is not a table"
                )));
            };
            let overlay = json_to_toml(overlay)?;
            if overlay.contains_key(PLUGIN_TABLE) {
                return Err(no_plugin_section());
            }
            deep_merge(&mut base, overlay);
            ConfigReply::Effective(EffectiveView {
                plugin_id: id,
                config: toml_to_json(toml::Value::Table(base)),
                effective_profile: name,
                last_modified: last_modified(&folder.config_path),
                config_path: folder.config_path.clone(),
            })
        }
    })
}

/// The profile named by `NEKO_PLUGIN_<ID upper-cased>_PROFILE` in neko's environment, if set.
pub fn env_profile(id: &PluginId) -> Option<String> {
    std::env::var(format!(
        "NEKO_PLUGIN_{}_PROFILE",
        id.as_str().to_uppercase()
    ))
    .ok()
    .map(|v| v.trim().to_string())
    .filter(|v| !v.is_empty())
}

/// The effective config as `{"plugin_id", "config", "last_modified", "config_path"}`: what
/// `GET /plugin/{id}/config` shows and what a plugin's `config.get` request receives.
pub fn effective_view(
    folder: &PluginFolder,
    env_profile: Option<String>,
) -> Result<ConfigView, Error> {
    Ok(ConfigView {
        plugin_id: folder.id.clone(),
        config: toml_to_json(toml::Value::Table(effective(folder, env_profile)?)),
        last_modified: last_modified(&folder.config_path),
        config_path: folder.config_path.clone(),
    })
}

/// Base plugin.toml deep-merged with the active profile. A profile that is missing, unreadable
/// or outside the folder is skipped with a warning (base config); one that defines `[plugin]` is
/// an error, as in the reference.
pub fn effective(folder: &PluginFolder, env_profile: Option<String>) -> Result<toml::Table, Error> {
    let (base, _) = read_base(folder)?;
    with_profile(folder, base, env_profile)
}

/// `base` (the folder's plugin.toml, already parsed) deep-merged with the active profile, as
/// [`effective`] does; manifest parsing uses it so `[plugin_runtime]` is read after the overlay.
pub fn with_profile(
    folder: &PluginFolder,
    mut base: toml::Table,
    env_profile: Option<String>,
) -> Result<toml::Table, Error> {
    let table = profile_table(folder, &base);
    let Some(active) = env_profile.or(table.active.clone()) else {
        return Ok(base);
    };
    let Some(path) = table.files.get(&active) else {
        tracing::warn!(plugin_id = %folder.id, profile = %active, "active profile is not mapped; using the base config");
        return Ok(base);
    };
    let overlay = match resolve_in(&folder.dir, path)
        .and_then(|p| std::fs::read_to_string(&p).map_err(|e| e.to_string()))
        .and_then(|text| toml::from_str::<toml::Table>(&text).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(plugin_id = %folder.id, profile = %active, %error, "profile not loaded; using the base config");
            return Ok(base);
        }
    };
    if overlay.contains_key(PLUGIN_TABLE) {
        return Err(no_plugin_section());
    }
    deep_merge(&mut base, overlay);
    Ok(base)
}

/// Merges `overlay` into `base`: tables merge key by key (overlay wins), anything else is
/// replaced. The top-level `plugin` table is never touched.
fn deep_merge(base: &mut toml::Table, mut overlay: toml::Table) {
    overlay.remove(PLUGIN_TABLE);
    merge_tables(base, overlay);
}

/// Tables merge key by key (`from` wins), anything else is replaced.
fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn read_base(folder: &PluginFolder) -> Result<(toml::Table, String), Error> {
    let text = read_text(folder)?;
    Ok((parse_toml(&text)?, text))
}

fn read_text(folder: &PluginFolder) -> Result<String, Error> {
    std::fs::read_to_string(&folder.config_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::PluginNotFound(folder.id.clone())
        } else {
            Error::ConfigRejected(format!("Cannot read {}: {e}", folder.config_path.display()))
        }
    })
}

/// Refuses a `plugin.id` other than the folder's (when the current file cannot say what it was).
fn check_own_id(folder: &PluginFolder, new: &toml::Table) -> Result<(), Error> {
    match plugin_key(new, "id") {
        Some(toml::Value::String(id)) if id == folder.id.as_str() => Ok(()),
        _ => Err(protected("id")),
    }
}

fn parse_toml(text: &str) -> Result<toml::Table, Error> {
    toml::from_str(text)
        .map_err(|e| Error::ConfigRejected(format!("Invalid TOML format: {}", e.message().trim())))
}

fn render(table: &toml::Table) -> Result<String, Error> {
    toml::to_string(table)
        .map_err(|e| Error::ConfigRejected(format!("Cannot render config as TOML: {e}")))
}

fn written(folder: &PluginFolder, env_profile: Option<String>) -> Result<ConfigReply, Error> {
    Ok(ConfigReply::Written(ConfigWritten {
        success: true,
        plugin_id: folder.id.clone(),
        config: toml_to_json(toml::Value::Table(effective(folder, env_profile)?)),
        requires_reload: true,
        message: "Config updated successfully",
    }))
}

fn plugin_key<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    t.get(PLUGIN_TABLE)?.as_table()?.get(key)
}

/// Copies `plugin.id` / `plugin.entry` from `current` into `new` where `new` lacks them.
fn keep_protected(current: &toml::Table, new: &mut toml::Table) {
    for key in PROTECTED {
        let Some(v) = plugin_key(current, key) else {
            continue;
        };
        let plugin = new
            .entry(PLUGIN_TABLE)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = plugin.as_table_mut() {
            t.entry(key).or_insert_with(|| v.clone());
        }
    }
}

/// Refuses a change of `plugin.id` or `plugin.entry`; leaving one out is no change (as in the
/// reference, which compares only values present on both sides).
fn check_protected(current: &toml::Table, new: &toml::Table) -> Result<(), Error> {
    for key in PROTECTED {
        let (old, given) = (plugin_key(current, key), plugin_key(new, key));
        if given.is_some_and(|v| Some(v) != old) {
            return Err(protected(key));
        }
    }
    Ok(())
}

/// The reference's refusal of a change to `plugin.id` or `plugin.entry`.
fn protected(key: &str) -> Error {
    Error::ConfigRejected(format!(
        "Cannot modify critical field 'plugin.{key}'. This field is protected."
    ))
}

fn no_plugin_section() -> Error {
    Error::ConfigRejected("Profile config must not define top-level 'plugin' section.".into())
}

/// The profile table: profiles.toml's `[config_profiles]`, else `[plugin.config_profiles]` of
/// plugin.toml.
fn profile_table(folder: &PluginFolder, base: &toml::Table) -> ProfileTable {
    let from_file = read_profiles_file(folder)
        .ok()
        .flatten()
        .and_then(|t| t.get(PROFILES_TABLE).and_then(|v| v.as_table()).cloned());
    let table = from_file.or_else(|| {
        base.get(PLUGIN_TABLE)
            .and_then(|p| p.get(PROFILES_TABLE))
            .and_then(|v| v.as_table())
            .cloned()
    });
    table.map(|t| table_of(&t)).unwrap_or_default()
}

fn table_of(t: &toml::Table) -> ProfileTable {
    ProfileTable {
        active: t
            .get("active")
            .and_then(|v| v.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        files: t
            .get("files")
            .and_then(|v| v.as_table())
            .map(|f| {
                f.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn profiles_path(folder: &PluginFolder) -> PathBuf {
    folder.dir.join(PROFILES_FILE)
}

/// profiles.toml parsed: `Ok(None)` when it does not exist.
fn read_profiles_file(folder: &PluginFolder) -> Result<Option<toml::Table>, Error> {
    match std::fs::read_to_string(profiles_path(folder)) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| {
            Error::ConfigRejected(format!(
                "Invalid TOML format in {PROFILES_FILE}: {}",
                e.message().trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::ConfigRejected(format!(
            "Cannot read {PROFILES_FILE}: {e}"
        ))),
    }
}

fn profile_file(folder: &PluginFolder, path: &str) -> ProfileFile {
    let resolved = resolve_in(&folder.dir, path).ok();
    ProfileFile {
        path: path.to_string(),
        exists: resolved.as_deref().is_some_and(Path::is_file),
        resolved_path: resolved,
    }
}

fn profiles_view(folder: &PluginFolder) -> ProfilesView {
    let path = profiles_path(folder);
    let config_profiles = read_profiles_file(folder)
        .ok()
        .flatten()
        .and_then(|t| t.get(PROFILES_TABLE).and_then(|v| v.as_table()).cloned())
        .map(|t| {
            let table = table_of(&t);
            ProfilesState {
                active: table.active,
                files: table
                    .files
                    .iter()
                    .map(|(name, p)| (name.clone(), profile_file(folder, p)))
                    .collect(),
            }
        });
    ProfilesView {
        plugin_id: folder.id.clone(),
        profiles_exists: path.is_file(),
        profiles_path: path,
        config_profiles,
    }
}

/// Profile names follow the plugin id rule: they name files.
fn check_profile_name(name: &str) -> Result<(), Error> {
    PluginId::new(name).map(|_| ()).map_err(|_| {
        Error::ConfigRejected(format!(
            "Invalid profile_name: '{name}'. Only alphanumeric characters, underscores, and hyphens are allowed."
        ))
    })
}

fn default_profile_path(name: &str) -> String {
    format!("profiles/{name}.toml")
}

/// The profile's mapped path (or `profiles/<name>.toml`), resolved inside the folder.
fn locate_profile(folder: &PluginFolder, name: &str) -> Result<(String, PathBuf), Error> {
    check_profile_name(name)?;
    let (base, _) = read_base(folder)?;
    let path = profile_table(folder, &base)
        .files
        .remove(name)
        .unwrap_or_else(|| default_profile_path(name));
    let resolved = resolve_in(&folder.dir, &path).map_err(Error::ConfigRejected)?;
    Ok((path, resolved))
}

fn get_profile(folder: &PluginFolder, name: &str) -> Result<ProfileView, Error> {
    let (path, resolved) = locate_profile(folder, name)?;
    let exists = resolved.is_file();
    let config = if exists {
        let loaded = std::fs::read_to_string(&resolved)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<toml::Table>(&t).map_err(|e| e.message().to_string()))
            .map_err(|e| {
                Error::ConfigRejected(format!("Failed to load profile '{name}': {}", e.trim()))
            })?;
        toml_to_json(toml::Value::Table(loaded))
    } else {
        Value::Object(Map::new())
    };
    Ok(ProfileView {
        plugin_id: folder.id.clone(),
        profile: NamedProfile {
            name: name.to_string(),
            file: ProfileFile {
                path,
                resolved_path: Some(resolved),
                exists,
            },
        },
        config,
    })
}

/// The mutable profile table of profiles.toml (created empty when the file is missing), with the
/// whole file so other keys survive a write.
fn profiles_doc(folder: &PluginFolder) -> Result<(toml::Table, ProfileTable), Error> {
    let doc = read_profiles_file(folder)?.unwrap_or_default();
    let table = doc
        .get(PROFILES_TABLE)
        .and_then(|v| v.as_table())
        .map(table_of)
        .unwrap_or_default();
    Ok((doc, table))
}

fn write_profiles_doc(
    folder: &PluginFolder,
    mut doc: toml::Table,
    table: &ProfileTable,
) -> Result<(), Error> {
    let mut t = doc
        .remove(PROFILES_TABLE)
        .and_then(|v| match v {
            toml::Value::Table(t) => Some(t),
            _ => None,
        })
        .unwrap_or_default();
    match &table.active {
        Some(a) => t.insert("active".into(), toml::Value::String(a.clone())),
        None => t.remove("active"),
    };
    t.insert(
        "files".into(),
        toml::Value::Table(
            table
                .files
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect(),
        ),
    );
    doc.insert(PROFILES_TABLE.into(), toml::Value::Table(t));
    write_file(&profiles_path(folder), render(&doc)?.as_bytes())
}

fn put_profile(
    folder: &PluginFolder,
    name: &str,
    config: Map<String, Value>,
    make_active: Option<bool>,
) -> Result<ProfileView, Error> {
    check_profile_name(name)?;
    read_base(folder)?;
    if config.contains_key(PLUGIN_TABLE) {
        return Err(no_plugin_section());
    }
    let overlay = json_to_toml(config)?;
    let (doc, mut table) = profiles_doc(folder)?;
    let path = table
        .files
        .entry(name.to_string())
        .or_insert_with(|| default_profile_path(name))
        .clone();
    let resolved = resolve_in(&folder.dir, &path).map_err(Error::ConfigRejected)?;
    if make_active == Some(true) || table.active.is_none() {
        table.active = Some(name.to_string());
    }
    if let Some(parent) = resolved.parent() {
        std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
    }
    write_file(&resolved, render(&overlay)?.as_bytes())?;
    write_profiles_doc(folder, doc, &table)?;
    get_profile(folder, name)
}

/// Removes the mapping; deleting the active profile removes the `active` key too (the reference
/// fails there; see "Decisions for neko" 8). The profile's file is kept.
fn delete_profile(folder: &PluginFolder, name: &str) -> Result<ProfileRemoved, Error> {
    check_profile_name(name)?;
    read_base(folder)?;
    let removed = match read_profiles_file(folder)? {
        None => false,
        Some(_) => {
            let (doc, mut table) = profiles_doc(folder)?;
            let removed = table.files.remove(name).is_some();
            let was_active = table.active.as_deref() == Some(name);
            if was_active {
                table.active = None;
            }
            if removed || was_active {
                write_profiles_doc(folder, doc, &table)?;
            }
            removed
        }
    };
    Ok(ProfileRemoved {
        plugin_id: folder.id.clone(),
        profile: name.to_string(),
        removed,
    })
}

fn activate(folder: &PluginFolder, name: &str) -> Result<ProfilesView, Error> {
    check_profile_name(name)?;
    read_base(folder)?;
    if read_profiles_file(folder)?.is_none() {
        return Err(Error::ConfigMissing("profiles.toml not found".into()));
    }
    let (doc, mut table) = profiles_doc(folder)?;
    if !table.files.contains_key(name) {
        return Err(Error::ConfigMissing(
            "profile not found in config_profiles.files".into(),
        ));
    }
    table.active = Some(name.to_string());
    write_profiles_doc(folder, doc, &table)?;
    Ok(profiles_view(folder))
}

/// `rel` joined to `dir`, refused unless it stays inside `dir`: relative, no `..` above the
/// folder, and no symlink on the way that leads out of it.
fn resolve_in(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let outside = || format!("Profile path '{rel}' must stay inside the plugin folder");
    let mut inner = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => inner.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                if !inner.pop() {
                    return Err(outside());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    if inner.as_os_str().is_empty() {
        return Err(outside());
    }
    let full = dir.join(&inner);
    // The deepest part that exists decides where symlinks lead.
    let real_dir = dir.canonicalize().map_err(|e| e.to_string())?;
    if let Some(real) = full.ancestors().find_map(|a| a.canonicalize().ok())
        && !real.starts_with(&real_dir)
    {
        return Err(outside());
    }
    Ok(full)
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::ConfigRejected(format!("Cannot write {}: {e}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    atomic_write(path, bytes).map_err(|e| write_error(path, e))
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a part: a
/// temp file in the same folder, fsync, rename over `path`, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn last_modified(path: &Path) -> Option<String> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| iso_from_unix(d.as_secs_f64()))
}

/// JSON → TOML. TOML has no null and no integers past i64, so those are refused with the key
/// they were found at.
fn json_to_toml(object: Map<String, Value>) -> Result<toml::Table, Error> {
    fn convert(v: Value, at: &str) -> Result<toml::Value, Error> {
        let refuse = |what: &str| {
            Error::ConfigRejected(format!("Invalid config: {what} at '{at}' cannot be TOML"))
        };
        Ok(match v {
            Value::Null => return Err(refuse("null")),
            Value::Bool(b) => toml::Value::Boolean(b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => toml::Value::Integer(i),
                (None, Some(f)) if n.is_f64() => toml::Value::Float(f),
                _ => return Err(refuse("an integer out of range")),
            },
            Value::String(s) => toml::Value::String(s),
            Value::Array(a) => toml::Value::Array(
                a.into_iter()
                    .enumerate()
                    .map(|(i, v)| convert(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => toml::Value::Table(table(o, at)?),
        })
    }
    fn table(o: Map<String, Value>, at: &str) -> Result<toml::Table, Error> {
        o.into_iter()
            .map(|(k, v)| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                Ok((k, convert(v, &path)?))
            })
            .collect()
    }
    table(object, "")
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
mod tests;
