//! `plugin.toml` → [`PluginManifest`]: discovery, parsing, SDK-range checks, start order and
//! dependency checks (reference §4.1–4.3).
//!
//! Everything here is a pure function of file contents, except [`scan`], which reads the plugins
//! folder. The registry calls [`scan`] at startup, orders the result with [`start_order`] and runs
//! [`check_dependencies`] before each start. A plugin whose `plugin.toml` cannot be used shows up as
//! a [`BrokenPlugin`] whose error message is written for a user reading `GET /plugins`.
//!
//! What is checked where:
//! - **Parse errors** ([`ManifestError`]) make the plugin unusable: invalid TOML, a missing or
//!   invalid `[plugin].id`, a bad runtime (`entry` for Python, `command` for native), wrong value
//!   types, invalid version specifiers, and an SDK range that excludes [`HOST_SDK_VERSION`].
//! - **Warnings** ([`PluginManifest::warnings`]) are kept next to the plugin: the host SDK outside
//!   `recommended` or only in `untested`, dependency tables skipped under the reference's rules,
//!   unreadable `entries` items, unrecognised `enabled`/`auto_start` strings.
//!
//! Versions and specifiers follow PEP 440 as far as plugin authors use it (see [`version_matches`]);
//! the evaluation is written here on top of `semver::Version`, because `semver::VersionReq` has
//! Cargo's semantics (`1.2` means `^1.2`), not Python's.
//!
//! This module reads `plugin.toml` as written: profile overlays (reference §4.5) are not applied.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use neko_protocol::{EntrySpec, PluginId, default_input_schema};
use semver::{BuildMetadata, Prerelease, Version};
use serde::{Serialize, Serializer};
use toml::{Table, Value};

use crate::plugin_config;
use crate::process_host::child::LimitOverrides;
use crate::restart_policy::{RestartOverrides, RestartType};

/// The SDK version neko provides to plugins (the reference's `SDK_VERSION`). `[plugin.sdk]` ranges
/// are checked against it.
pub const HOST_SDK_VERSION: &str = "0.1.0";

/// The file that makes a folder a plugin.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// Everything neko reads from one `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginManifest {
    /// `[plugin].id`.
    pub id: PluginId,
    /// `[plugin].name`; defaults to the id.
    pub name: String,
    /// `[plugin].description`; defaults to "".
    pub description: String,
    /// `[plugin].version`, as written; defaults to "0.1.0". Compared by other plugins' dependency
    /// checks; an unparseable version adds a warning and passes those checks (as in the reference).
    pub version: String,
    /// `[plugin.author]`.
    pub author: Option<Author>,
    /// The plugin folder, absolute (made absolute, not canonicalised: symlinks are kept).
    pub dir: PathBuf,
    /// The absolute path of this `plugin.toml`.
    pub config_path: PathBuf,
    /// How the plugin process is started.
    pub runtime: Runtime,
    /// `[plugin.sdk]`, as written.
    pub sdk: SdkRanges,
    /// `[[plugin.dependency]]` tables that passed the parse rules.
    pub dependencies: Vec<Dependency>,
    /// `[plugin_runtime].enabled`: a disabled plugin is listed but never started, and satisfies no
    /// dependency.
    pub enabled: bool,
    /// `[plugin_runtime].auto_start`: start at supervisor startup.
    pub auto_start: bool,
    /// Restart-policy keys of `[plugin_runtime]`; merged with the global defaults by
    /// [`crate::restart_policy::RestartPolicy::new`].
    pub restart: RestartOverrides,
    /// Resource-limit keys of `[plugin_runtime]` (`max_memory_mb`, `max_open_files`,
    /// `max_message_rate`); merged with `[limits]` of neko's settings by the host.
    pub limits: LimitOverrides,
    /// Entries declared in `[plugin].entries` (or the top-level `entries`), known before the plugin
    /// runs. The authoritative list comes from the plugin's HELLO.
    pub entries_preview: Vec<EntrySpec>,
    /// `[plugin.safety].reentrant`: the plugin is written for calls back into itself (A → B → A,
    /// self-calls), so the deadlock detector lets them through. Off by default.
    pub reentrant: bool,
    /// Non-fatal findings, ready to show to a user.
    pub warnings: Vec<String>,
    /// The whole parsed file, for the plugin's own configuration tables.
    pub raw: Table,
}

/// `[plugin.author]`. Other keys (such as `url`) are ignored, as in the reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Author {
    /// `name`.
    pub name: Option<String>,
    /// `email`.
    pub email: Option<String>,
}

/// How a plugin process is started: `[plugin].runtime`, "python" (the default) or "native".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Runtime {
    /// Run by the Python SDK's runner.
    Python {
        /// `[plugin].entry`: `"module.path:ClassName"`, both sides non-empty.
        entry: String,
    },
    /// Any executable speaking the plugin protocol (e.g. a binary built with the Rust SDK).
    Native {
        /// `[plugin].command`, as written.
        command: String,
        /// `[plugin].args`.
        args: Vec<String>,
        /// `[plugin].build`: a command to run before the first start (an array of strings, or a
        /// string split on whitespace). `None` when absent or empty.
        build: Option<Vec<String>>,
    },
}

impl PluginManifest {
    /// The SDK version shown for the plugin: its `supported` range, else the host SDK's version.
    pub fn sdk_version(&self) -> String {
        self.sdk
            .supported
            .clone()
            .unwrap_or_else(|| HOST_SDK_VERSION.to_string())
    }
}

impl Runtime {
    /// `"python"` or `"native"`, the value of `[plugin].runtime`.
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Python { .. } => "python",
            Runtime::Native { .. } => "native",
        }
    }
}

/// `[plugin.sdk]`: the SDK versions a plugin was written for, as raw PEP 440 specifier strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SdkRanges {
    /// `recommended`: outside it only warns.
    pub recommended: Option<String>,
    /// `supported` (alias `compatible`): outside it (and outside `untested`) the plugin is refused.
    pub supported: Option<String>,
    /// `untested`: accepted with a warning.
    pub untested: Option<String>,
    /// `conflicts`: any match refuses the plugin.
    pub conflicts: Vec<String>,
}

impl SdkRanges {
    /// Checks an SDK version against these ranges (reference §4.3): a `conflicts` match or, when
    /// `supported` is given, a version in neither `supported` nor `untested` is an error; a
    /// version only in `untested`, or outside `recommended`, gives a warning (returned). An
    /// invalid `supported`/`untested`/`conflicts` specifier is an error naming its key; an
    /// invalid `recommended` one only warns.
    ///
    /// [`parse_manifest`] runs it with [`HOST_SDK_VERSION`]; the process host runs it again with
    /// the SDK version a plugin reports in its HELLO. Ranges that are all absent accept any text.
    pub fn check(&self, sdk_version: &str) -> Result<Vec<String>, ManifestError> {
        let mut warnings = Vec::new();
        if *self == SdkRanges::default() {
            return Ok(warnings);
        }
        let version =
            PepVersion::parse(sdk_version).map_err(|reason| ManifestError::InvalidVersion {
                version: sdk_version.to_string(),
                reason,
            })?;
        for spec in &self.conflicts {
            if specifier("[plugin.sdk].conflicts", spec)?.contains(&version) {
                return Err(ManifestError::SdkConflict {
                    host: sdk_version.to_string(),
                    spec: spec.clone(),
                });
            }
        }
        let in_untested = match &self.untested {
            Some(spec) => specifier("[plugin.sdk].untested", spec)?.contains(&version),
            None => false,
        };
        if let Some(spec) = &self.supported
            && !specifier("[plugin.sdk].supported", spec)?.contains(&version)
        {
            if !in_untested {
                return Err(ManifestError::SdkUnsupported {
                    host: sdk_version.to_string(),
                    supported: spec.clone(),
                    untested: self.untested.clone(),
                });
            }
            warnings.push(format!(
                "SDK {sdk_version} is only in untested '{}' (not in supported '{spec}')",
                self.untested.as_deref().unwrap_or_default()
            ));
        }
        // The reference refuses a plugin for a bad supported/untested/conflicts range but not for
        // a bad recommended one, which only ever produces a warning.
        if let Some(spec) = &self.recommended {
            match SpecifierSet::parse(spec) {
                Ok(set) if !set.contains(&version) => {
                    warnings.push(format!("SDK {sdk_version} is outside recommended '{spec}'"))
                }
                Ok(_) => {}
                Err(reason) => warnings.push(format!(
                    "[plugin.sdk].recommended: invalid version specifier '{spec}': {reason}"
                )),
            }
        }
        Ok(warnings)
    }
}

/// One `[[plugin.dependency]]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// A plugin that must be present (or, with `conflicts = true`, absent).
    pub id: Option<String>,
    /// `"entry_id"` (any plugin) or `"plugin_id:entry_id"`.
    pub entry: Option<String>,
    /// `"event_type:event_id"` (any plugin) or `"plugin_id:event_type:event_id"`.
    pub custom_event: Option<String>,
    /// Any one of these plugins satisfies the dependency.
    pub providers: Vec<String>,
    /// Provider versions outside this only warn.
    pub recommended: Option<String>,
    /// Provider versions accepted.
    pub supported: Option<String>,
    /// Provider versions accepted without testing; required unless `conflicts = true`.
    pub untested: Option<String>,
    /// Provider versions refused, or the whole plugin.
    pub conflicts: DependencyConflicts,
}

impl Dependency {
    /// The plugin ids that may provide this dependency, used for ordering (reference §4.3 phase 2):
    /// `id`, every provider, the plugin part of `entry` (the whole string when it has no `:`), and
    /// the plugin part of a three-part `custom_event`. None for `conflicts = true`.
    pub fn provider_candidates(&self) -> Vec<&str> {
        if self.conflicts == DependencyConflicts::All {
            return Vec::new();
        }
        let mut ids: Vec<&str> = Vec::new();
        ids.extend(self.id.as_deref());
        ids.extend(self.providers.iter().map(String::as_str));
        if let Some(entry) = &self.entry {
            ids.push(
                entry
                    .split_once(':')
                    .map_or(entry.as_str(), |(plugin, _)| plugin),
            );
        }
        if let Some(event) = &self.custom_event {
            let parts: Vec<&str> = event.split(':').collect();
            if let [plugin, _, _] = parts.as_slice() {
                ids.push(plugin);
            }
        }
        ids
    }
}

/// `conflicts` of a dependency table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DependencyConflicts {
    /// Absent (or `false`).
    #[default]
    None,
    /// `conflicts = true`: the plugin named by `id` must not be enabled.
    All,
    /// Provider versions matching any of these specifiers are refused.
    Specs(Vec<String>),
}

impl Serialize for DependencyConflicts {
    /// As written in the file: `null`, `true` or a list of specifiers.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DependencyConflicts::None => serializer.serialize_none(),
            DependencyConflicts::All => serializer.serialize_bool(true),
            DependencyConflicts::Specs(specs) => specs.serialize(serializer),
        }
    }
}

/// Why a `plugin.toml` cannot be used. Messages are written for a user looking at the broken
/// plugin in `GET /plugins`.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("plugin.toml: invalid TOML{}: {message}", at_position(.position))]
    InvalidToml {
        /// 1-based line and column of the error, when the parser knows it.
        position: Option<(usize, usize)>,
        /// The parser's message.
        message: String,
    },
    /// A required key is absent.
    #[error("missing required key {key}")]
    MissingKey {
        /// The key, e.g. `[plugin].id`.
        key: String,
    },
    /// A key holds the wrong kind of value.
    #[error("{key} must be {expected}, found {found}")]
    WrongType {
        /// The key, e.g. `[plugin_runtime].max_restarts`.
        key: String,
        /// What is accepted, e.g. "a string".
        expected: &'static str,
        /// What the file has, e.g. "an integer".
        found: &'static str,
    },
    /// A key holds a value of the right type that is not allowed.
    #[error("{key} {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// What is wrong, phrased to follow the key ("must not be empty").
        reason: String,
    },
    /// `[plugin].id` is not a valid plugin id.
    #[error(
        "invalid plugin id '{id}' in [plugin].id: use 1 to {} letters, digits, '_' or '-'",
        PluginId::MAX_LEN
    )]
    InvalidId {
        /// The id as written.
        id: String,
    },
    /// `[plugin].entry` is not `module:Class`.
    #[error("[plugin].entry must look like 'module:Class' (got '{entry}')")]
    InvalidEntry {
        /// The entry as written.
        entry: String,
    },
    /// `[plugin].runtime` names no known runtime.
    #[error("unknown runtime '{runtime}' (expected 'python' or 'native')")]
    UnknownRuntime {
        /// The runtime as written.
        runtime: String,
    },
    /// The host SDK matches one of `[plugin.sdk].conflicts`.
    #[error("SDK {host} conflicts with '{spec}'")]
    SdkConflict {
        /// [`HOST_SDK_VERSION`].
        host: String,
        /// The matching specifier.
        spec: String,
    },
    /// `[plugin.sdk].supported` excludes the host SDK, and `untested` does not include it.
    #[error("SDK {host} is not in supported '{supported}'{}", nor_untested(.untested))]
    SdkUnsupported {
        /// [`HOST_SDK_VERSION`].
        host: String,
        /// The supported specifier.
        supported: String,
        /// The untested specifier, if any.
        untested: Option<String>,
    },
    /// A version specifier does not parse.
    #[error("{}invalid version specifier '{spec}': {reason}", key_prefix(.key))]
    InvalidSpecifier {
        /// The key holding it, when it comes from a file.
        key: Option<String>,
        /// The specifier as written.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A version does not parse.
    #[error("invalid version '{version}': {reason}")]
    InvalidVersion {
        /// The version as written.
        version: String,
        /// What is wrong.
        reason: String,
    },
}

fn at_position(position: &Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, column)| {
        format!(" at line {line}, column {column}")
    })
}

fn nor_untested(untested: &Option<String>) -> String {
    untested
        .as_ref()
        .map_or_else(String::new, |spec| format!(" (nor in untested '{spec}')"))
}

/// The effective table: the active config profile deep-merged over everything but `[plugin]`,
/// so that `[plugin_runtime]` (enabled, auto_start, restart and limit keys) and `entries` are
/// read as the plugin will see its config. A profile that cannot be applied leaves the base
/// table, with a warning.
fn with_active_profile(
    raw: Table,
    dir: &Path,
    config_path: &Path,
    warnings: &mut Vec<String>,
) -> Table {
    let id = raw
        .get("plugin")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .and_then(|id| PluginId::new(id).ok());
    let Some(id) = id else {
        return raw; // refused below, with the reason
    };
    let env_profile = plugin_config::env_profile(&id);
    let folder = plugin_config::PluginFolder {
        id,
        dir: dir.to_path_buf(),
        config_path: config_path.to_path_buf(),
    };
    match plugin_config::with_profile(&folder, raw.clone(), env_profile) {
        Ok(effective) => effective,
        Err(e) => {
            warnings.push(format!("config profile not applied: {e}"));
            raw
        }
    }
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref()
        .map_or_else(String::new, |key| format!("{key}: "))
}

/// Parses the text of a `plugin.toml` found at `config_path` and checks its SDK ranges against
/// [`HOST_SDK_VERSION`]. `config_path` is made absolute; the file is not read again.
pub fn parse_manifest(text: &str, config_path: &Path) -> Result<PluginManifest, ManifestError> {
    let raw: Table = toml::from_str(text).map_err(|err| toml_error(text, &err))?;
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
    let dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut warnings = Vec::new();
    let raw = with_active_profile(raw, &dir, &config_path, &mut warnings);

    let plugin = match raw.get("plugin") {
        None => {
            return Err(ManifestError::MissingKey {
                key: "[plugin].id".to_string(),
            });
        }
        Some(Value::Table(table)) => Section {
            name: "[plugin]",
            table,
        },
        Some(other) => return Err(wrong_type("[plugin]".to_string(), "a table", other)),
    };

    let id_text = plugin.required_string("id")?;
    let id = PluginId::new(id_text).map_err(|_| ManifestError::InvalidId {
        id: id_text.to_string(),
    })?;
    let name = plugin.string("name")?.unwrap_or(id_text).to_string();
    let description = plugin.string("description")?.unwrap_or("").to_string();
    let version = plugin.string("version")?.unwrap_or("0.1.0").to_string();
    if let Err(reason) = PepVersion::parse(&version) {
        warnings.push(format!(
            "[plugin].version '{version}' is not a valid version ({reason}); dependency version checks will pass it"
        ));
    }
    let author = parse_author(plugin)?;
    let runtime = parse_runtime(plugin)?;
    let sdk = parse_sdk(plugin, &mut warnings)?;
    let dependencies = parse_dependencies(plugin, &mut warnings)?;
    let entries_preview = parse_entries(&raw, plugin, &mut warnings)?;
    let reentrant = parse_reentrant(plugin)?;

    let plugin_runtime = match raw.get("plugin_runtime") {
        None => None,
        Some(Value::Table(table)) => Some(Section {
            name: "[plugin_runtime]",
            table,
        }),
        Some(other) => {
            return Err(wrong_type("[plugin_runtime]".to_string(), "a table", other));
        }
    };
    let enabled = runtime_flag(plugin_runtime, "enabled", &mut warnings);
    let auto_start = runtime_flag(plugin_runtime, "auto_start", &mut warnings);
    let restart = match plugin_runtime {
        Some(section) => parse_restart_overrides(section)?,
        None => RestartOverrides::default(),
    };
    let limits = match plugin_runtime {
        Some(section) => parse_limit_overrides(section)?,
        None => LimitOverrides::default(),
    };

    Ok(PluginManifest {
        id,
        name,
        description,
        version,
        author,
        dir,
        config_path,
        runtime,
        sdk,
        dependencies,
        enabled,
        auto_start,
        restart,
        limits,
        entries_preview,
        reentrant,
        warnings,
        raw,
    })
}

/// `[plugin.safety].reentrant` (a boolean, default false). The table's other key,
/// `sync_call_in_handler`, is read by the SDKs.
fn parse_reentrant(plugin: Section<'_>) -> Result<bool, ManifestError> {
    let safety = match plugin.table.get("safety") {
        None => return Ok(false),
        Some(Value::Table(table)) => Section {
            name: "[plugin.safety]",
            table,
        },
        Some(other) => return Err(wrong_type(plugin.key("safety"), "a table", other)),
    };
    match safety.table.get("reentrant") {
        None => Ok(false),
        Some(Value::Boolean(flag)) => Ok(*flag),
        Some(other) => Err(wrong_type(safety.key("reentrant"), "a boolean", other)),
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanResult {
    /// Usable plugins, sorted by folder name.
    pub plugins: Vec<PluginManifest>,
    /// Folders with a `plugin.toml` that cannot be used, sorted by folder name.
    pub broken: Vec<BrokenPlugin>,
}

/// A plugin folder whose `plugin.toml` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenPlugin {
    /// The plugin folder, absolute.
    pub dir: PathBuf,
    /// Its `plugin.toml`, absolute.
    pub config_path: PathBuf,
    /// `[plugin].id`, when the file could be read that far.
    pub id: Option<String>,
    /// Why it cannot be used, for the user.
    pub error: String,
}

/// Reads every `<plugins_dir>/*/plugin.toml` (exactly one level, as the reference's glob), sorted
/// by folder name. A missing `plugins_dir` gives an empty result. When two folders declare the same
/// id, the first (by folder name) wins and the second is reported broken.
pub fn scan(plugins_dir: &Path) -> ScanResult {
    let mut result = ScanResult::default();
    let root = std::path::absolute(plugins_dir).unwrap_or_else(|_| plugins_dir.to_owned());
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(err) => {
            if err.kind() == std::io::ErrorKind::NotFound {
                tracing::info!(dir = %root.display(), "plugins folder does not exist; no plugins");
            } else {
                tracing::warn!(dir = %root.display(), error = %err, "cannot read plugins folder");
            }
            return result;
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    // id → config path of the plugin that claimed it first.
    let mut claimed: HashMap<PluginId, PathBuf> = HashMap::new();
    for dir in dirs {
        let config_path = dir.join(MANIFEST_FILE);
        let broken = |id: Option<String>, error: String| BrokenPlugin {
            dir: dir.clone(),
            config_path: config_path.clone(),
            id,
            error,
        };
        let text = match fs::read_to_string(&config_path) {
            Ok(text) => text,
            Err(source) => {
                let error = ManifestError::Read {
                    path: config_path.clone(),
                    source,
                };
                result.broken.push(broken(None, error.to_string()));
                continue;
            }
        };
        match parse_manifest(&text, &config_path) {
            Ok(manifest) => {
                if let Some(first) = claimed.get(&manifest.id) {
                    let error = format!(
                        "duplicate plugin id '{}' (already defined by {})",
                        manifest.id,
                        first.display()
                    );
                    result
                        .broken
                        .push(broken(Some(manifest.id.to_string()), error));
                } else {
                    claimed.insert(manifest.id.clone(), manifest.config_path.clone());
                    result.plugins.push(manifest);
                }
            }
            Err(err) => result.broken.push(broken(peek_id(&text), err.to_string())),
        }
    }
    result
}

/// `[plugin].id` of a file that parses as TOML but fails later checks.
fn peek_id(text: &str) -> Option<String> {
    let raw: Table = toml::from_str(text).ok()?;
    raw.get("plugin")?.get("id")?.as_str().map(str::to_owned)
}

/// The order to start `plugins` in: a Kahn topological sort over the dependency edges among them
/// (see [`Dependency::provider_candidates`]; edges to plugins not in the slice are ignored). Among
/// plugins that are ready at the same time, enabled ones come first, then by id. Plugins caught in
/// a cycle are appended in input order after the rest (and the cycle is logged).
pub fn start_order(plugins: &[PluginManifest]) -> Vec<PluginId> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, plugin) in plugins.iter().enumerate() {
        index.entry(plugin.id.as_str()).or_insert(i);
    }

    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); plugins.len()];
    let mut pending: Vec<usize> = vec![0; plugins.len()];
    for (i, plugin) in plugins.iter().enumerate() {
        // A set, so a provider named twice is one edge.
        let providers: BTreeSet<usize> = plugin
            .dependencies
            .iter()
            .flat_map(Dependency::provider_candidates)
            .filter_map(|id| index.get(id).copied())
            .filter(|&provider| provider != i)
            .collect();
        pending[i] = providers.len();
        for provider in providers {
            dependents[provider].push(i);
        }
    }

    // Ordered by (disabled, id, index): `false` sorts first, so enabled plugins lead.
    let key = |i: usize| (!plugins[i].enabled, plugins[i].id.as_str(), i);
    let mut ready: BTreeSet<(bool, &str, usize)> = (0..plugins.len())
        .filter(|&i| pending[i] == 0)
        .map(key)
        .collect();
    let mut order: Vec<usize> = Vec::with_capacity(plugins.len());
    while let Some((_, _, next)) = ready.pop_first() {
        order.push(next);
        for &dependent in &dependents[next] {
            pending[dependent] -= 1;
            if pending[dependent] == 0 {
                ready.insert(key(dependent));
            }
        }
    }

    if order.len() < plugins.len() {
        let placed: BTreeSet<usize> = order.iter().copied().collect();
        let cycle: Vec<usize> = (0..plugins.len()).filter(|i| !placed.contains(i)).collect();
        let names: Vec<&str> = cycle.iter().map(|&i| plugins[i].id.as_str()).collect();
        tracing::error!(plugins = ?names, "dependency cycle between plugins; starting them in scan order");
        order.extend(cycle);
    }
    order.into_iter().map(|i| plugins[i].id.clone()).collect()
}

/// Checks `m`'s dependencies against the plugins in `available` (reference §4.3 "Dependency
/// satisfaction"). Disabled plugins satisfy nothing, and `m` never satisfies itself. Every field a
/// dependency table sets must hold:
/// - `conflicts = true`: the plugin `id` must not be available and enabled;
/// - `providers`: at least one of them is available with an accepted version;
/// - `entry = "p:e"`: plugin `p` is available, accepted, and exposes entry `e`; a bare `"e"`: some
///   available plugin exposes `e`;
/// - `custom_event = "p:t:i"`: plugin `p` is available, accepted, and exposes event `t.i`; a bare
///   `"t:i"`: some other available plugin exposes it;
/// - `id`: that plugin is available with an accepted version.
///
/// Entries and custom events are only known for certain once a plugin ran or was described (its
/// HELLO lists them): `exposed` holds what the supervisor knows. For other plugins the only source
/// is `entries_preview`, so a plugin *without* a preview is assumed to expose any entry, and custom
/// events are not checked beyond the provider's presence.
///
/// Version check per provider: a `conflicts` match refuses it; otherwise it is accepted when inside
/// `untested` or `supported` (or when neither is given); outside `recommended` only logs a warning.
/// An unparseable provider version logs a warning and is accepted, as in the reference.
///
/// The error lists every unsatisfied dependency, separated by "; ".
pub fn check_dependencies(
    m: &PluginManifest,
    available: &[&PluginManifest],
    exposed: &ExposedMap,
) -> Result<(), String> {
    let check = DependencyCheck {
        plugin: m,
        available,
        exposed,
    };
    let problems: Vec<String> = m
        .dependencies
        .iter()
        .filter_map(|dep| check.dependency(dep).err())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What a plugin that ran (or was described) exposes: its entries and its custom events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposed {
    pub entries: HashSet<String>,
    /// `(event_type, id)`.
    pub events: HashSet<(String, String)>,
}

/// [`Exposed`] per plugin, for those the supervisor has heard from.
pub type ExposedMap = HashMap<PluginId, Exposed>;

/// One run of [`check_dependencies`].
struct DependencyCheck<'a> {
    plugin: &'a PluginManifest,
    available: &'a [&'a PluginManifest],
    exposed: &'a ExposedMap,
}

impl<'a> DependencyCheck<'a> {
    /// Enabled plugins other than the one being checked.
    fn providers(&self) -> impl Iterator<Item = &'a PluginManifest> + '_ {
        self.available
            .iter()
            .copied()
            .filter(|p| p.enabled && p.id != self.plugin.id)
    }

    fn provider(&self, id: &str) -> Option<&'a PluginManifest> {
        self.providers().find(|p| p.id.as_str() == id)
    }

    /// Whether `plugin` has entry `entry_id`: what it told neko, else its preview (none: any).
    fn exposes(&self, plugin: &PluginManifest, entry_id: &str) -> bool {
        match self.exposed.get(&plugin.id) {
            Some(known) => known.entries.contains(entry_id),
            None => {
                plugin.entries_preview.is_empty()
                    || plugin.entries_preview.iter().any(|e| e.id == entry_id)
            }
        }
    }

    /// Whether `plugin` has custom event `event_type.event_id` (unknown before it ran: yes).
    fn exposes_event(&self, plugin: &PluginManifest, event_type: &str, event_id: &str) -> bool {
        self.exposed.get(&plugin.id).is_none_or(|known| {
            known
                .events
                .contains(&(event_type.to_string(), event_id.to_string()))
        })
    }

    fn dependency(&self, dep: &Dependency) -> Result<(), String> {
        let by = &self.plugin.id;
        if dep.conflicts == DependencyConflicts::All {
            let id = dep.id.as_deref().unwrap_or_default();
            return match self.provider(id) {
                Some(_) => Err(format!(
                    "conflicting plugin '{id}' is enabled (declared by '{by}')"
                )),
                None => Ok(()),
            };
        }

        if !dep.providers.is_empty() {
            let mut refused = Vec::new();
            let mut satisfied = false;
            for id in &dep.providers {
                if let Some(provider) = self.provider(id) {
                    match self.version(dep, provider) {
                        Ok(()) => {
                            satisfied = true;
                            break;
                        }
                        Err(reason) => refused.push(reason),
                    }
                }
            }
            if !satisfied {
                return Err(if refused.is_empty() {
                    let names: Vec<String> =
                        dep.providers.iter().map(|id| format!("'{id}'")).collect();
                    format!(
                        "missing dependency: none of the providers {} is available (required by '{by}')",
                        names.join(", ")
                    )
                } else {
                    format!("{} (required by '{by}')", refused.join(", "))
                });
            }
        }

        if let Some(entry) = &dep.entry {
            match entry.split_once(':') {
                Some((id, entry_id)) => {
                    let provider = self.named(id)?;
                    if !self.exposes(provider, entry_id) {
                        return Err(format!(
                            "dependency '{id}' has no entry '{entry_id}' (required by '{by}')"
                        ));
                    }
                    self.version(dep, provider)
                        .map_err(|reason| format!("{reason} (required by '{by}')"))?;
                }
                None => {
                    let found = self
                        .providers()
                        .any(|p| self.exposes(p, entry) && self.version(dep, p).is_ok());
                    if !found {
                        return Err(format!(
                            "missing dependency: no enabled plugin provides entry '{entry}' (required by '{by}')"
                        ));
                    }
                }
            }
        }

        if let Some(event) = &dep.custom_event {
            let parts: Vec<&str> = event.split(':').collect();
            if let [id, event_type, event_id] = parts.as_slice() {
                let provider = self.named(id)?;
                if !self.exposes_event(provider, event_type, event_id) {
                    return Err(format!(
                        "dependency '{id}' has no custom event '{event_type}.{event_id}' (required by '{by}')"
                    ));
                }
                self.version(dep, provider)
                    .map_err(|reason| format!("{reason} (required by '{by}')"))?;
            } else {
                let (event_type, event_id) = event.split_once(':').unwrap_or((event, ""));
                if !self
                    .providers()
                    .any(|p| self.exposes_event(p, event_type, event_id))
                {
                    return Err(format!(
                        "missing dependency: no enabled plugin could provide custom event '{event}' (required by '{by}')"
                    ));
                }
            }
        }

        if let Some(id) = &dep.id {
            let provider = self.named(id)?;
            self.version(dep, provider)
                .map_err(|reason| format!("{reason} (required by '{by}')"))?;
        }
        Ok(())
    }

    /// The enabled plugin `id`, or an error saying whether it is missing or disabled.
    fn named(&self, id: &str) -> Result<&'a PluginManifest, String> {
        let by = &self.plugin.id;
        self.provider(id).ok_or_else(|| {
            let disabled = self
                .available
                .iter()
                .any(|p| p.id.as_str() == id && !p.enabled);
            if disabled {
                format!("dependency '{id}' is disabled (required by '{by}')")
            } else {
                format!("missing dependency '{id}' (required by '{by}')")
            }
        })
    }

    /// Whether `provider`'s version is accepted by `dep`; the error names both.
    fn version(&self, dep: &Dependency, provider: &PluginManifest) -> Result<(), String> {
        let Ok(version) = PepVersion::parse(&provider.version) else {
            tracing::warn!(
                plugin = %self.plugin.id, dependency = %provider.id, version = %provider.version,
                "dependency version cannot be parsed; accepting it"
            );
            return Ok(());
        };
        // `None` for a specifier that does not parse: parse_manifest refuses those, so this only
        // happens for hand-built manifests; accept, as for unparseable versions.
        let test = |spec: &str| SpecifierSet::parse(spec).ok().map(|s| s.contains(&version));
        let what = format!("dependency '{}' version {}", provider.id, provider.version);

        if let DependencyConflicts::Specs(specs) = &dep.conflicts
            && let Some(spec) = specs.iter().find(|spec| test(spec) == Some(true))
        {
            return Err(format!("{what} conflicts with '{spec}'"));
        }
        if let Some(spec) = &dep.recommended
            && test(spec) == Some(false)
        {
            tracing::warn!(
                plugin = %self.plugin.id, dependency = %provider.id,
                "{what} is outside recommended '{spec}'"
            );
        }
        let untested = dep.untested.as_deref().map(test);
        let supported = dep.supported.as_deref().map(test);
        let accepted = |t: Option<Option<bool>>| matches!(t, Some(Some(true) | None));
        if (untested.is_none() && supported.is_none()) || accepted(untested) || accepted(supported)
        {
            return Ok(());
        }
        let mut ranges = Vec::new();
        if let Some(spec) = &dep.supported {
            ranges.push(format!("supported '{spec}'"));
        }
        if let Some(spec) = &dep.untested {
            ranges.push(format!("untested '{spec}'"));
        }
        Err(format!("{what} is not in {}", ranges.join(" nor ")))
    }
}

/// Whether `version` satisfies the PEP 440 specifier set `spec`.
///
/// Grammar: comma-separated clauses, each `op version` with op one of `==`, `!=`, `>=`, `<=`,
/// `>`, `<`, `~=` (compatible release; needs two or more release components) and `===` (string
/// equality, case-insensitive); `==1.2.*` and `!=1.2.*` match by release prefix; a bare version
/// means `==`; an empty spec matches every final release. Whitespace is ignored.
///
/// Versions: an optional `v`, then one to three release components (`1`, `0.1`, `0.1.0`, padded
/// with zeros, so `==0.1` matches `0.1.0`), then optionally a pre-release (`a`/`alpha`, `b`/`beta`,
/// `rc`/`c`/`pre`/`preview` with an optional number) and/or a dev release (`.devN`), which order
/// as in PEP 440 (`1.0.dev1 < 1.0a1.dev1 < 1.0a1 < 1.0b1 < 1.0rc1 < 1.0`). Simplifications:
/// a local part (`+abc`) is ignored; a post-release (`.postN`) compares equal to its release; four
/// or more release components are an error. As in PEP 440, a pre-release version matches only when
/// some clause names a pre-release, and `<1.0` excludes `1.0rc1`.
pub fn version_matches(spec: &str, version: &str) -> Result<bool, ManifestError> {
    let set = SpecifierSet::parse(spec).map_err(|reason| ManifestError::InvalidSpecifier {
        key: None,
        spec: spec.to_string(),
        reason,
    })?;
    let version = PepVersion::parse(version).map_err(|reason| ManifestError::InvalidVersion {
        version: version.to_string(),
        reason,
    })?;
    Ok(set.contains(&version))
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers.

/// A TOML table and the name it is shown under in errors (`[plugin]`).
#[derive(Clone, Copy)]
struct Section<'a> {
    name: &'a str,
    table: &'a Table,
}

impl<'a> Section<'a> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(self.key(key), "a string", other)),
        }
    }

    /// A string with surrounding whitespace removed; `None` when absent or blank.
    fn trimmed(&self, key: &str) -> Result<Option<String>, ManifestError> {
        Ok(self
            .string(key)?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }

    fn required_string(&self, key: &str) -> Result<&'a str, ManifestError> {
        self.string(key)?
            .ok_or_else(|| ManifestError::MissingKey { key: self.key(key) })
    }

    /// An array of strings, or a single string (as a one-element list).
    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(items)) => self.string_array(key, items).map(Some),
            Some(other) => Err(wrong_type(
                self.key(key),
                "a string or an array of strings",
                other,
            )),
        }
    }

    fn string_array(&self, key: &str, items: &[Value]) -> Result<Vec<String>, ManifestError> {
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(self.key(key), "an array of strings", other)),
            })
            .collect()
    }

    fn non_negative(&self, key: &str) -> Result<Option<u64>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => {
                u64::try_from(*n)
                    .map(Some)
                    .map_err(|_| ManifestError::InvalidValue {
                        key: self.key(key),
                        reason: format!("must not be negative (got {n})"),
                    })
            }
            Some(other) => Err(wrong_type(self.key(key), "a non-negative integer", other)),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ManifestError> {
        let value = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Float(f)) => *f,
            // TOML has no implicit conversion, and `backoff_multiplier = 2` is a natural thing to write.
            Some(Value::Integer(n)) => *n as f64,
            Some(other) => return Err(wrong_type(self.key(key), "a number", other)),
        };
        if value.is_finite() {
            Ok(Some(value))
        } else {
            Err(ManifestError::InvalidValue {
                key: self.key(key),
                reason: format!("must be a finite number (got {value})"),
            })
        }
    }

    fn sub_table(&self, key: &str, name: &'a str) -> Result<Option<Section<'a>>, ManifestError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(table)) => Ok(Some(Section { name, table })),
            Some(other) => Err(wrong_type(name.to_string(), "a table", other)),
        }
    }
}

fn wrong_type(key: String, expected: &'static str, found: &Value) -> ManifestError {
    ManifestError::WrongType {
        key,
        expected,
        found: type_name(found),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn toml_error(text: &str, err: &toml::de::Error) -> ManifestError {
    ManifestError::InvalidToml {
        position: err.span().map(|span| line_column(text, span.start)),
        message: err.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn parse_author(plugin: Section<'_>) -> Result<Option<Author>, ManifestError> {
    match plugin.table.get("author") {
        None => Ok(None),
        // Not in the reference's schema, but a common way to write it; nothing is lost.
        Some(Value::String(name)) => Ok(Some(Author {
            name: Some(name.clone()),
            email: None,
        })),
        Some(Value::Table(table)) => {
            let author = Section {
                name: "[plugin.author]",
                table,
            };
            Ok(Some(Author {
                name: author.string("name")?.map(str::to_owned),
                email: author.string("email")?.map(str::to_owned),
            }))
        }
        Some(other) => Err(wrong_type("[plugin.author]".to_string(), "a table", other)),
    }
}

fn parse_runtime(plugin: Section<'_>) -> Result<Runtime, ManifestError> {
    let kind = plugin.string("runtime")?.unwrap_or("python");
    match kind.trim().to_ascii_lowercase().as_str() {
        "python" => {
            let entry = plugin.required_string("entry")?;
            let valid = entry.split_once(':').is_some_and(|(module, class)| {
                !module.trim().is_empty() && !class.trim().is_empty() && !class.contains(':')
            });
            if !valid {
                return Err(ManifestError::InvalidEntry {
                    entry: entry.to_string(),
                });
            }
            Ok(Runtime::Python {
                entry: entry.trim().to_string(),
            })
        }
        "native" => {
            let command = plugin.required_string("command")?;
            if command.trim().is_empty() {
                return Err(ManifestError::InvalidValue {
                    key: plugin.key("command"),
                    reason: "must not be empty".to_string(),
                });
            }
            let args = match plugin.table.get("args") {
                None => Vec::new(),
                Some(Value::Array(items)) => plugin.string_array("args", items)?,
                Some(other) => {
                    return Err(wrong_type(plugin.key("args"), "an array of strings", other));
                }
            };
            let build = match plugin.table.get("build") {
                None => None,
                Some(Value::String(line)) => {
                    Some(line.split_whitespace().map(str::to_owned).collect())
                }
                Some(Value::Array(items)) => Some(plugin.string_array("build", items)?),
                Some(other) => {
                    return Err(wrong_type(
                        plugin.key("build"),
                        "a string or an array of strings",
                        other,
                    ));
                }
            }
            .filter(|argv: &Vec<String>| !argv.is_empty());
            Ok(Runtime::Native {
                command: command.to_string(),
                args,
                build,
            })
        }
        _ => Err(ManifestError::UnknownRuntime {
            runtime: kind.to_string(),
        }),
    }
}

/// A specifier from `key`, or an error naming the key.
fn specifier(key: impl Into<String>, spec: &str) -> Result<SpecifierSet, ManifestError> {
    SpecifierSet::parse(spec).map_err(|reason| ManifestError::InvalidSpecifier {
        key: Some(key.into()),
        spec: spec.to_string(),
        reason,
    })
}

fn parse_sdk(plugin: Section<'_>, warnings: &mut Vec<String>) -> Result<SdkRanges, ManifestError> {
    let Some(sdk) = plugin.sub_table("sdk", "[plugin.sdk]")? else {
        return Ok(SdkRanges::default());
    };
    let supported_key = sdk.trimmed("supported")?;
    let compatible = sdk.trimmed("compatible")?;
    if supported_key.is_some() && compatible.is_some() && supported_key != compatible {
        warnings.push("[plugin.sdk].compatible is ignored because supported is set".to_string());
    }
    let ranges = SdkRanges {
        recommended: sdk.trimmed("recommended")?,
        supported: supported_key.or(compatible),
        untested: sdk.trimmed("untested")?,
        conflicts: sdk
            .strings("conflicts")?
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };

    let warnings_from_check = ranges.check(HOST_SDK_VERSION)?;
    warnings.extend(warnings_from_check);
    Ok(ranges)
}

fn parse_dependencies(
    plugin: Section<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Dependency>, ManifestError> {
    let tables: Vec<&Table> = match plugin.table.get("dependency") {
        None => return Ok(Vec::new()),
        Some(Value::Table(table)) => vec![table],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Table(table) => Ok(table),
                other => Err(wrong_type(
                    format!("[[plugin.dependency]] #{}", i + 1),
                    "a table",
                    other,
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(wrong_type(
                "[[plugin.dependency]]".to_string(),
                "an array of tables",
                other,
            ));
        }
    };
    let mut dependencies = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let name = format!("[[plugin.dependency]] #{}", i + 1);
        let section = Section { name: &name, table };
        if let Some(dep) = parse_dependency(section, warnings)? {
            dependencies.push(dep);
        }
    }
    Ok(dependencies)
}

/// One dependency table; `Ok(None)` when the reference's rules skip it (with a warning).
fn parse_dependency(
    dep: Section<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<Dependency>, ManifestError> {
    let conflicts = match dep.table.get("conflicts") {
        None | Some(Value::Boolean(false)) => DependencyConflicts::None,
        Some(Value::Boolean(true)) => DependencyConflicts::All,
        Some(Value::String(spec)) => DependencyConflicts::Specs(vec![spec.trim().to_string()]),
        Some(Value::Array(items)) => DependencyConflicts::Specs(
            dep.string_array("conflicts", items)?
                .into_iter()
                .map(|s| s.trim().to_string())
                .collect(),
        ),
        Some(other) => {
            return Err(wrong_type(
                dep.key("conflicts"),
                "true, a string or an array of strings",
                other,
            ));
        }
    };
    let parsed = Dependency {
        id: dep.trimmed("id")?,
        entry: dep.trimmed("entry")?,
        custom_event: dep.trimmed("custom_event")?,
        providers: dep
            .strings("providers")?
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        recommended: dep.trimmed("recommended")?,
        supported: dep.trimmed("supported")?,
        untested: dep.trimmed("untested")?,
        conflicts,
    };

    let skip =
        |warnings: &mut Vec<String>, reason: &str| -> Result<Option<Dependency>, ManifestError> {
            warnings.push(format!("{} skipped: {reason}", dep.name));
            Ok(None)
        };
    if parsed.id.is_none()
        && parsed.entry.is_none()
        && parsed.custom_event.is_none()
        && parsed.providers.is_empty()
    {
        return skip(
            warnings,
            "it names none of id, entry, custom_event, providers",
        );
    }
    if parsed.entry.is_some() && parsed.custom_event.is_some() {
        return skip(warnings, "entry and custom_event cannot be used together");
    }
    if let Some(entry) = &parsed.entry
        && !colon_parts_ok(entry, &[1, 2])
    {
        return skip(warnings, "entry must be 'entry_id' or 'plugin_id:entry_id'");
    }
    if let Some(event) = &parsed.custom_event
        && !colon_parts_ok(event, &[2, 3])
    {
        return skip(
            warnings,
            "custom_event must be 'event_type:event_id' or 'plugin_id:event_type:event_id'",
        );
    }
    if parsed.conflicts == DependencyConflicts::All {
        // `conflicts = true` needs nothing but the id it excludes.
        if parsed.id.is_none() {
            return skip(warnings, "conflicts = true needs an id");
        }
        return Ok(Some(parsed));
    }
    if parsed.untested.is_none() {
        return skip(
            warnings,
            "untested is required (e.g. untested = \">=0.1.0\")",
        );
    }

    let specs = [
        ("recommended", parsed.recommended.as_ref()),
        ("supported", parsed.supported.as_ref()),
        ("untested", parsed.untested.as_ref()),
    ];
    for (key, spec) in specs {
        if let Some(spec) = spec {
            specifier(dep.key(key), spec)?;
        }
    }
    if let DependencyConflicts::Specs(list) = &parsed.conflicts {
        for spec in list {
            specifier(dep.key("conflicts"), spec)?;
        }
    }
    Ok(Some(parsed))
}

/// Whether `text` splits on ':' into one of `counts` parts, none of them empty.
fn colon_parts_ok(text: &str, counts: &[usize]) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    counts.contains(&parts.len()) && parts.iter().all(|p| !p.trim().is_empty())
}

/// `[plugin_runtime].enabled` / `auto_start`: a bool, or one of the strings the reference accepts;
/// anything else keeps the default (true), with a warning.
fn runtime_flag(section: Option<Section<'_>>, key: &str, warnings: &mut Vec<String>) -> bool {
    const DEFAULT: bool = true;
    let Some(section) = section else {
        return DEFAULT;
    };
    match section.table.get(key) {
        None => DEFAULT,
        Some(Value::Boolean(flag)) => *flag,
        Some(Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                warnings.push(format!(
                    "{} = '{text}' is not understood; using {DEFAULT}",
                    section.key(key)
                ));
                DEFAULT
            }
        },
        Some(other) => {
            warnings.push(format!(
                "{} must be a boolean, found {}; using {DEFAULT}",
                section.key(key),
                type_name(other)
            ));
            DEFAULT
        }
    }
}

fn parse_restart_overrides(section: Section<'_>) -> Result<RestartOverrides, ManifestError> {
    let restart = match section.string("restart")? {
        None => None,
        Some(name) => Some(
            RestartType::from_name(&name.trim().to_ascii_lowercase()).ok_or_else(|| {
                ManifestError::InvalidValue {
                    key: section.key("restart"),
                    reason: format!(
                        "must be 'permanent', 'transient' or 'temporary' (got '{name}')"
                    ),
                }
            })?,
        ),
    };
    let max_restarts = match section.non_negative("max_restarts")? {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| ManifestError::InvalidValue {
            key: section.key("max_restarts"),
            reason: format!("must be at most {} (got {n})", u32::MAX),
        })?),
    };
    Ok(RestartOverrides {
        restart,
        max_restarts,
        restart_window_ms: section.non_negative("restart_window_ms")?,
        backoff_initial_ms: section.non_negative("backoff_initial_ms")?,
        backoff_max_ms: section.non_negative("backoff_max_ms")?,
        backoff_multiplier: section.number("backoff_multiplier")?,
        jitter: section.number("jitter")?,
        start_window_ms: section.non_negative("start_window_ms")?,
    })
}

/// The resource-limit keys of `[plugin_runtime]`: non-negative integers, 0 = no limit.
fn parse_limit_overrides(section: Section<'_>) -> Result<LimitOverrides, ManifestError> {
    Ok(LimitOverrides {
        max_memory_mb: section.non_negative("max_memory_mb")?,
        max_open_files: section.non_negative("max_open_files")?,
        max_message_rate: section.non_negative("max_message_rate")?,
    })
}

/// `[plugin].entries`, else the top-level `entries`. Unusable items are skipped with a warning:
/// the preview is informative, the plugin's HELLO is authoritative.
fn parse_entries(
    raw: &Table,
    plugin: Section<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<EntrySpec>, ManifestError> {
    let (key, value) = match (plugin.table.get("entries"), raw.get("entries")) {
        (Some(value), _) => ("[plugin].entries", value),
        (None, Some(value)) => ("entries", value),
        (None, None) => return Ok(Vec::new()),
    };
    let Value::Array(items) = value else {
        return Err(wrong_type(key.to_string(), "an array", value));
    };
    let mut entries: Vec<EntrySpec> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match entry_spec(item) {
            Ok(spec) if entries.iter().any(|e| e.id == spec.id) => warnings.push(format!(
                "{key} #{}: duplicate entry id '{}' ignored",
                i + 1,
                spec.id
            )),
            Ok(spec) => entries.push(spec),
            Err(reason) => warnings.push(format!("{key} #{} skipped: {reason}", i + 1)),
        }
    }
    Ok(entries)
}

/// One `entries` item: a plain id, or `{id, name, description, input_schema}` plus neko's optional
/// `kind`, `timeout_ms` and `timeout` (seconds). The name defaults to the id.
fn entry_spec(item: &Value) -> Result<EntrySpec, String> {
    let plain = |id: &str| EntrySpec {
        id: id.to_string(),
        name: id.to_string(),
        description: String::new(),
        input_schema: default_input_schema(),
        timeout_ms: None,
        kind: "action".to_string(),
    };
    let table = match item {
        Value::String(id) if !id.trim().is_empty() => return Ok(plain(id.trim())),
        Value::String(_) => return Err("empty entry id".to_string()),
        Value::Table(table) => table,
        other => {
            return Err(format!(
                "expected a string or a table, found {}",
                type_name(other)
            ));
        }
    };
    let text = |key: &str| match table.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!(
            "{key} must be a string, found {}",
            type_name(other)
        )),
    };
    let id = text("id")?
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or("missing id")?;
    let mut spec = plain(id);
    if let Some(name) = text("name")? {
        spec.name = name.to_string();
    }
    if let Some(description) = text("description")? {
        spec.description = description.to_string();
    }
    if let Some(kind) = text("kind")? {
        spec.kind = kind.to_string();
    }
    match table.get("input_schema") {
        None => {}
        Some(schema @ Value::Table(_)) => spec.input_schema = toml_to_json(schema),
        Some(other) => {
            return Err(format!(
                "input_schema must be a table, found {}",
                type_name(other)
            ));
        }
    }
    spec.timeout_ms = match (table.get("timeout_ms"), table.get("timeout")) {
        (Some(Value::Integer(ms)), _) if *ms > 0 => u64::try_from(*ms).ok(),
        (Some(_), _) => return Err("timeout_ms must be a positive integer".to_string()),
        (None, Some(Value::Integer(secs))) if *secs > 0 => {
            u64::try_from(*secs).ok().map(|s| s.saturating_mul(1000))
        }
        (None, Some(Value::Float(secs))) if secs.is_finite() && *secs > 0.0 => {
            Some((secs * 1000.0).round() as u64)
        }
        (None, Some(_)) => return Err("timeout must be a positive number of seconds".to_string()),
        (None, None) => None,
    };
    Ok(spec)
}

fn toml_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Value::String(s) => Json::String(s.clone()),
        Value::Integer(n) => Json::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Datetime(d) => Json::String(d.to_string()),
        Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// PEP 440 versions and specifier sets, reduced to what plugin manifests use.

/// A PEP 440 version, mapped onto `semver::Version` so that ordering is semver's.
#[derive(Debug, Clone)]
struct PepVersion {
    /// The text as written, for `===`.
    raw: String,
    /// The release components as written (one to three), for `==X.*` and `~=`.
    release: Vec<u64>,
    /// The release padded to three components. Pre-release and dev parts become a numeric semver
    /// pre-release `kind.n.final[.dev]` (kind: 0 dev-only, 1 a, 2 b, 3 rc; final: 1, or 0 followed
    /// by the dev number), which semver orders exactly as PEP 440 orders them.
    semver: Version,
}

impl PepVersion {
    fn parse(text: &str) -> Result<Self, String> {
        let raw = text.trim();
        if raw.is_empty() {
            return Err("empty version".to_string());
        }
        let lower = raw.to_ascii_lowercase();
        let body = lower.strip_prefix('v').unwrap_or(&lower);
        // The local part never takes part in comparisons here.
        let body = body.split_once('+').map_or(body, |(public, _)| public);
        let release_len = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (mut release_text, suffix) = body.split_at(release_len);
        if !suffix.is_empty() {
            // "1.0.dev1": the dot belongs to the suffix.
            release_text = release_text.strip_suffix('.').unwrap_or(release_text);
        }
        let release = release_text
            .split('.')
            .map(|part| {
                if part.is_empty() {
                    Err("expected a version like 1.2.3".to_string())
                } else {
                    part.parse::<u64>()
                        .map_err(|_| format!("release number '{part}' is too large"))
                }
            })
            .collect::<Result<Vec<u64>, String>>()?;
        if release.len() > 3 {
            return Err("at most three release numbers are supported".to_string());
        }
        let pre = parse_suffix(suffix)?;
        let padded = |i: usize| release.get(i).copied().unwrap_or(0);
        let semver = Version {
            major: padded(0),
            minor: padded(1),
            patch: padded(2),
            pre: pre.unwrap_or(Prerelease::EMPTY),
            build: BuildMetadata::EMPTY,
        };
        Ok(Self {
            raw: raw.to_string(),
            release,
            semver,
        })
    }

    fn is_prerelease(&self) -> bool {
        !self.semver.pre.is_empty()
    }

    fn padded(&self) -> [u64; 3] {
        [self.semver.major, self.semver.minor, self.semver.patch]
    }
}

/// The pre/post/dev suffix of a version (after the release numbers), as a semver pre-release.
fn parse_suffix(mut rest: &str) -> Result<Option<Prerelease>, String> {
    // Longest labels first, so "preview" is not read as "pre" + "view".
    const LABELS: [(&str, u8); 12] = [
        ("preview", 3),
        ("alpha", 1),
        ("beta", 2),
        ("post", 10),
        ("pre", 3),
        ("rev", 10),
        ("dev", 20),
        ("rc", 3),
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("r", 10),
    ];
    let separators = ['.', '-', '_'];
    let mut pre: Option<(u8, u64)> = None;
    let mut post = false;
    let mut dev: Option<u64> = None;
    // 0 = nothing yet, 1 = pre, 2 = post, 3 = dev: segments must come in this order, once each.
    let mut stage = 0;
    while !rest.is_empty() {
        rest = rest.strip_prefix(separators).unwrap_or(rest);
        let Some(&(label, code)) = LABELS.iter().find(|(label, _)| rest.starts_with(label)) else {
            return Err(format!(
                "unexpected '{rest}' (expected a pre-release like a1, b2, rc1, or .postN / .devN)"
            ));
        };
        rest = &rest[label.len()..];
        rest = rest.strip_prefix(separators).unwrap_or(rest);
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number = if digits == 0 {
            0
        } else {
            rest[..digits]
                .parse::<u64>()
                .map_err(|_| format!("number in '{label}{}' is too large", &rest[..digits]))?
        };
        rest = &rest[digits..];
        let this_stage = match code {
            10 => 2,
            20 => 3,
            _ => 1,
        };
        if this_stage <= stage {
            return Err(format!("unexpected '{label}' segment here"));
        }
        stage = this_stage;
        match this_stage {
            1 => pre = Some((code, number)),
            2 => post = true,
            _ => dev = Some(number),
        }
    }
    let identifiers = match (pre, post, dev) {
        // Simplification: a post-release (and its dev releases) compares equal to its release.
        (_, true, _) | (None, false, None) => return Ok(None),
        (Some((kind, n)), false, Some(d)) => format!("{kind}.{n}.0.{d}"),
        (Some((kind, n)), false, None) => format!("{kind}.{n}.1"),
        (None, false, Some(d)) => format!("0.0.0.{d}"),
    };
    Prerelease::new(&identifiers)
        .map(Some)
        .map_err(|err| format!("cannot represent the pre-release: {err}"))
}

/// A comma-separated PEP 440 specifier set.
#[derive(Debug)]
struct SpecifierSet {
    clauses: Vec<Clause>,
}

#[derive(Debug)]
enum Clause {
    /// An operator and a version.
    Compare(Op, PepVersion),
    /// `==X.Y.*` / `!=X.Y.*`.
    Prefix { negated: bool, release: Vec<u64> },
    /// `===text`.
    Arbitrary(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
    Compatible,
}

impl SpecifierSet {
    fn parse(spec: &str) -> Result<Self, String> {
        let clauses = spec
            .split(',')
            .map(str::trim)
            .filter(|clause| !clause.is_empty())
            .map(parse_clause)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { clauses })
    }

    fn contains(&self, version: &PepVersion) -> bool {
        // PEP 440: pre-releases are excluded unless the specifier itself names one.
        let allows_pre = self
            .clauses
            .iter()
            .any(|c| matches!(c, Clause::Compare(_, v) if v.is_prerelease()));
        if version.is_prerelease() && !allows_pre {
            return false;
        }
        self.clauses.iter().all(|clause| clause.matches(version))
    }
}

impl Clause {
    fn matches(&self, candidate: &PepVersion) -> bool {
        let c = &candidate.semver;
        match self {
            Clause::Compare(op, spec) => {
                let s = &spec.semver;
                match op {
                    Op::Eq => c == s,
                    Op::Ne => c != s,
                    Op::Ge => c >= s,
                    Op::Le => c <= s,
                    Op::Gt => c > s,
                    // PEP 440: `<1.0` does not admit 1.0's own pre-releases.
                    Op::Lt => {
                        c < s
                            && !(candidate.is_prerelease()
                                && !spec.is_prerelease()
                                && candidate.padded() == spec.padded())
                    }
                    Op::Compatible => {
                        // `~=1.4.5` is `>=1.4.5, ==1.4.*`; parse guarantees two or more numbers.
                        let prefix = spec.release.len() - 1;
                        c >= s && candidate.padded()[..prefix] == spec.padded()[..prefix]
                    }
                }
            }
            Clause::Prefix { negated, release } => {
                (candidate.padded()[..release.len()] == release[..]) != *negated
            }
            Clause::Arbitrary(text) => candidate.raw.eq_ignore_ascii_case(text),
        }
    }
}

fn parse_clause(clause: &str) -> Result<Clause, String> {
    // Longest operators first, so "===" is not read as "==" + "=1.0".
    const OPS: [(&str, Option<Op>); 8] = [
        ("===", None),
        ("~=", Some(Op::Compatible)),
        ("==", Some(Op::Eq)),
        ("!=", Some(Op::Ne)),
        ("<=", Some(Op::Le)),
        (">=", Some(Op::Ge)),
        ("<", Some(Op::Lt)),
        (">", Some(Op::Gt)),
    ];
    let (symbol, op, rest) = match OPS
        .iter()
        .find_map(|(symbol, op)| clause.strip_prefix(symbol).map(|rest| (*symbol, *op, rest)))
    {
        Some(found) => found,
        None if clause.starts_with(|c: char| c.is_ascii_digit() || c == 'v' || c == 'V') => {
            ("==", Some(Op::Eq), clause)
        }
        None => {
            return Err(format!(
                "unknown operator in '{clause}' (expected one of ==, !=, >=, <=, >, <, ~=, ===)"
            ));
        }
    };
    let version = rest.trim();
    if version.is_empty() {
        return Err(format!("missing version after '{symbol}'"));
    }
    let Some(op) = op else {
        return Ok(Clause::Arbitrary(version.to_string()));
    };
    if let Some(prefix) = version.strip_suffix(".*")
        && matches!(op, Op::Eq | Op::Ne)
    {
        let parsed = PepVersion::parse(prefix)?;
        if parsed.is_prerelease() || prefix.contains(['+', '*']) {
            return Err("a wildcard applies to release numbers only, e.g. '==1.2.*'".to_string());
        }
        return Ok(Clause::Prefix {
            negated: op == Op::Ne,
            release: parsed.release,
        });
    }
    if version.contains('*') {
        return Err(
            "'*' is only allowed at the end of an == or != version, e.g. '==1.2.*'".to_string(),
        );
    }
    let parsed = PepVersion::parse(version)?;
    if op == Op::Compatible && parsed.release.len() < 2 {
        return Err("'~=' needs at least two release numbers, e.g. '~=1.2'".to_string());
    }
    Ok(Clause::Compare(op, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/plugins/demo/plugin.toml";

    fn parse(text: &str) -> PluginManifest {
        parse_manifest(text, Path::new(PATH)).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn parse_err(text: &str) -> String {
        match parse_manifest(text, Path::new(PATH)) {
            Ok(m) => panic!("expected an error, got {m:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// A minimal valid Python manifest with `extra` appended to `[plugin]`-level text.
    fn python(id: &str, extra: &str) -> String {
        format!("[plugin]\nid = \"{id}\"\nentry = \"plugins.{id}:Plugin\"\n{extra}")
    }

    fn matches(spec: &str, version: &str) -> bool {
        version_matches(spec, version).unwrap_or_else(|err| panic!("{err}"))
    }

    // -- parse_manifest: valid files ------------------------------------------------------------

    /// `[plugin.safety].reentrant` opts a plugin into calls back into itself; a wrong type is an
    /// error naming the key, and the SDK-only key beside it is accepted.
    #[test]
    fn reads_the_reentrant_flag() {
        assert!(!parse(&python("a", "")).reentrant);
        let on = python(
            "a",
            "[plugin.safety]\nreentrant = true\nsync_call_in_handler = \"reject\"\n",
        );
        assert!(parse(&on).reentrant);
        let bad = parse_err(&python("a", "[plugin.safety]\nreentrant = \"yes\"\n"));
        assert!(bad.contains("[plugin.safety].reentrant"), "{bad}");
    }

    /// Every `[plugin]` key of a full Python manifest lands in its field.
    #[test]
    fn parses_a_full_python_manifest() {
        let m = parse(
            r#"
[plugin]
id = "demo"
name = "Demo Plugin"
description = "does things"
version = "1.2.3"
entry = "plugins.demo:DemoPlugin"
entries = [
    { id = "greet", name = "Greet", description = "says hi", input_schema = { type = "object", properties = { who = { type = "string" } } } },
    "plain",
]

[plugin.author]
name = "Ada"
email = "ada@example.com"
url = "ignored"

[plugin.sdk]
recommended = ">=0.1.0,<0.2.0"
supported = ">=0.1.0,<0.3.0"
conflicts = ["<0.0.5"]

[[plugin.dependency]]
id = "storage"
untested = ">=1.0"

[plugin_runtime]
enabled = true
auto_start = false

[my_settings]
greeting = "hello"
"#,
        );
        assert_eq!(m.id.as_str(), "demo");
        assert_eq!(m.name, "Demo Plugin");
        assert_eq!(m.description, "does things");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(
            m.author,
            Some(Author {
                name: Some("Ada".into()),
                email: Some("ada@example.com".into())
            })
        );
        assert_eq!(m.config_path, PathBuf::from(PATH));
        assert_eq!(m.dir, PathBuf::from("/plugins/demo"));
        assert_eq!(
            m.runtime,
            Runtime::Python {
                entry: "plugins.demo:DemoPlugin".into()
            }
        );
        assert_eq!(m.sdk.supported.as_deref(), Some(">=0.1.0,<0.3.0"));
        assert_eq!(m.sdk.conflicts, vec!["<0.0.5".to_string()]);
        assert_eq!(m.dependencies.len(), 1);
        assert!(m.enabled);
        assert!(!m.auto_start);
        assert_eq!(m.entries_preview.len(), 2);
        assert_eq!(m.entries_preview[0].id, "greet");
        assert_eq!(m.entries_preview[0].name, "Greet");
        assert_eq!(
            m.entries_preview[0].input_schema["properties"]["who"]["type"],
            "string"
        );
        assert_eq!(m.entries_preview[1].id, "plain");
        assert_eq!(m.entries_preview[1].input_schema, default_input_schema());
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(m.raw["my_settings"]["greeting"].as_str(), Some("hello"));
    }

    /// Omitted keys take the reference's defaults.
    #[test]
    fn omitted_keys_take_the_reference_defaults() {
        let m = parse(&python("bare", ""));
        assert_eq!(m.name, "bare");
        assert_eq!(m.description, "");
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.author, None);
        assert_eq!(m.sdk, SdkRanges::default());
        assert!(m.dependencies.is_empty());
        assert!(m.enabled && m.auto_start);
        assert!(m.restart.is_empty());
        assert!(m.entries_preview.is_empty());
        assert!(m.warnings.is_empty());
    }

    /// A native manifest carries command, args and an argv-style build.
    #[test]
    fn parses_a_native_manifest_with_args_and_build_array() {
        let m = parse(
            r#"
[plugin]
id = "echo"
runtime = "native"
command = "target/release/echo"
args = ["--verbose", "x y"]
build = ["cargo", "build", "--release"]
"#,
        );
        assert_eq!(
            m.runtime,
            Runtime::Native {
                command: "target/release/echo".into(),
                args: vec!["--verbose".into(), "x y".into()],
                build: Some(vec!["cargo".into(), "build".into(), "--release".into()]),
            }
        );
        assert_eq!(m.runtime.kind(), "native");
    }

    /// `build` given as one string is split on whitespace; `args` and `build` are optional.
    #[test]
    fn native_build_string_is_split_on_whitespace() {
        let m = parse(
            "[plugin]\nid = \"n\"\nruntime = \"native\"\ncommand = \"./run\"\nbuild = \"  make   all \"\n",
        );
        assert_eq!(
            m.runtime,
            Runtime::Native {
                command: "./run".into(),
                args: vec![],
                build: Some(vec!["make".into(), "all".into()]),
            }
        );
        let m =
            parse("[plugin]\nid = \"n\"\nruntime = \"native\"\ncommand = \"./run\"\nbuild = []\n");
        assert!(matches!(m.runtime, Runtime::Native { build: None, .. }));
    }

    /// Entries may also come from a top-level `entries` array; bad items only warn.
    #[test]
    fn entries_preview_falls_back_to_top_level_and_skips_bad_items() {
        let m = parse(
            r#"
entries = ["a", 3, { name = "no id" }, "a", { id = "t", timeout = 1.5, kind = "service" }, { id = "u", timeout_ms = 250 }]
[plugin]
id = "x"
entry = "m:C"
"#,
        );
        let ids: Vec<&str> = m.entries_preview.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "t", "u"]);
        assert_eq!(m.entries_preview[1].timeout_ms, Some(1_500));
        assert_eq!(m.entries_preview[1].kind, "service");
        assert_eq!(m.entries_preview[2].timeout_ms, Some(250));
        assert_eq!(m.warnings.len(), 3, "{:?}", m.warnings);
        assert!(
            m.warnings[0].starts_with("entries #2 skipped"),
            "{:?}",
            m.warnings
        );
        assert!(
            m.warnings[2].contains("duplicate entry id 'a'"),
            "{:?}",
            m.warnings
        );
    }

    /// An unparseable `[plugin].version` is kept and warned about, not refused.
    #[test]
    fn unparseable_plugin_version_is_a_warning() {
        let m = parse(&python("x", "version = \"banana\"\n"));
        assert_eq!(m.version, "banana");
        assert!(
            m.warnings[0].contains("'banana' is not a valid version"),
            "{:?}",
            m.warnings
        );
    }

    // -- parse_manifest: errors -------------------------------------------------------------------

    /// Broken TOML reports the line and column of the problem.
    #[test]
    fn invalid_toml_reports_line_and_column() {
        let err = parse_err("[plugin]\nid = \"x\"\nentry = = 3\n");
        assert!(
            err.starts_with("plugin.toml: invalid TOML at line 3, column 9: "),
            "{err}"
        );
    }

    /// Without `[plugin]` or its id, the id is reported missing.
    #[test]
    fn missing_plugin_id_is_reported() {
        assert_eq!(
            parse_err("[other]\nx = 1\n"),
            "missing required key [plugin].id"
        );
        assert_eq!(
            parse_err("[plugin]\nentry = \"a:B\"\n"),
            "missing required key [plugin].id"
        );
    }

    /// An id that is not a valid PluginId is refused with the rule.
    #[test]
    fn invalid_plugin_id_is_rejected() {
        let err = parse_err("[plugin]\nid = \"../evil\"\nentry = \"a:B\"\n");
        assert!(err.starts_with("invalid plugin id '../evil'"), "{err}");
    }

    /// Python plugins need `entry`, and it must be `module:Class`.
    #[test]
    fn python_entry_is_required_and_must_look_like_module_colon_class() {
        assert_eq!(
            parse_err("[plugin]\nid = \"x\"\n"),
            "missing required key [plugin].entry"
        );
        for entry in ["module", ":Class", "module:", "a:b:c", " : "] {
            let err = parse_err(&format!("[plugin]\nid = \"x\"\nentry = \"{entry}\"\n"));
            assert_eq!(
                err,
                format!("[plugin].entry must look like 'module:Class' (got '{entry}')")
            );
        }
    }

    /// Native plugins need a non-empty command; args must be strings.
    #[test]
    fn native_runtime_requires_a_command() {
        assert_eq!(
            parse_err("[plugin]\nid = \"x\"\nruntime = \"native\"\n"),
            "missing required key [plugin].command"
        );
        assert_eq!(
            parse_err("[plugin]\nid = \"x\"\nruntime = \"native\"\ncommand = \" \"\n"),
            "[plugin].command must not be empty"
        );
        assert_eq!(
            parse_err("[plugin]\nid = \"x\"\nruntime = \"native\"\ncommand = \"a\"\nargs = [1]\n"),
            "[plugin].args must be an array of strings, found an integer"
        );
    }

    /// Only "python" and "native" are runtimes.
    #[test]
    fn unknown_runtime_is_rejected() {
        assert_eq!(
            parse_err("[plugin]\nid = \"x\"\nruntime = \"jvm\"\n"),
            "unknown runtime 'jvm' (expected 'python' or 'native')"
        );
    }

    /// A value of the wrong type is an error naming the key, in every section.
    #[test]
    fn wrong_value_types_name_the_key() {
        assert_eq!(
            parse_err("plugin = 3\n"),
            "[plugin] must be a table, found an integer"
        );
        assert_eq!(
            parse_err("[plugin]\nid = 7\n"),
            "[plugin].id must be a string, found an integer"
        );
        assert_eq!(
            parse_err(&python("x", "name = true\n")),
            "[plugin].name must be a string, found a boolean"
        );
        assert_eq!(
            parse_err(&python("x", "sdk = \">=0.1\"\n")),
            "[plugin.sdk] must be a table, found a string"
        );
        assert_eq!(
            parse_err(&python("x", "[plugin.author]\nemail = 1\n")),
            "[plugin.author].email must be a string, found an integer"
        );
        assert_eq!(
            parse_err(&python("x", "entries = \"a\"\n")),
            "[plugin].entries must be an array, found a string"
        );
    }

    // -- SDK ranges -------------------------------------------------------------------------------

    /// A conflict range matching the host SDK refuses the plugin; a single string is accepted.
    #[test]
    fn sdk_conflict_match_is_an_error() {
        assert_eq!(
            parse_err(&python("x", "[plugin.sdk]\nconflicts = \"==0.1.*\"\n")),
            "SDK 0.1.0 conflicts with '==0.1.*'"
        );
        assert_eq!(
            parse_err(&python(
                "x",
                "[plugin.sdk]\nconflicts = [\"<0.0.1\", \">=0.1\"]\n"
            )),
            "SDK 0.1.0 conflicts with '>=0.1'"
        );
        let m = parse(&python("x", "[plugin.sdk]\nconflicts = [\">=0.2\"]\n"));
        assert_eq!(m.sdk.conflicts, vec![">=0.2".to_string()]);
    }

    /// Outside `supported` refuses the plugin, unless `untested` includes the host (a warning).
    #[test]
    fn sdk_outside_supported_is_an_error_unless_untested() {
        assert_eq!(
            parse_err(&python("x", "[plugin.sdk]\nsupported = \">=0.2\"\n")),
            "SDK 0.1.0 is not in supported '>=0.2'"
        );
        assert_eq!(
            parse_err(&python(
                "x",
                "[plugin.sdk]\nsupported = \">=0.2\"\nuntested = \">=0.3\"\n"
            )),
            "SDK 0.1.0 is not in supported '>=0.2' (nor in untested '>=0.3')"
        );
        let m = parse(&python(
            "x",
            "[plugin.sdk]\nsupported = \">=0.2\"\nuntested = \">=0.1\"\n",
        ));
        assert_eq!(
            m.warnings,
            vec!["SDK 0.1.0 is only in untested '>=0.1' (not in supported '>=0.2')".to_string()]
        );
    }

    /// `compatible` is read as `supported` when `supported` is absent.
    #[test]
    fn sdk_compatible_is_an_alias_of_supported() {
        let m = parse(&python("x", "[plugin.sdk]\ncompatible = \"~=0.1\"\n"));
        assert_eq!(m.sdk.supported.as_deref(), Some("~=0.1"));
        assert_eq!(
            parse_err(&python("x", "[plugin.sdk]\ncompatible = \">0.1\"\n")),
            "SDK 0.1.0 is not in supported '>0.1'"
        );
    }

    /// Outside `recommended` is only a warning; so is an invalid `recommended`.
    #[test]
    fn sdk_outside_recommended_is_a_warning() {
        let m = parse(&python("x", "[plugin.sdk]\nrecommended = \">=0.5\"\n"));
        assert_eq!(
            m.warnings,
            vec!["SDK 0.1.0 is outside recommended '>=0.5'".to_string()]
        );
        let m = parse(&python("x", "[plugin.sdk]\nrecommended = \"soon\"\n"));
        assert!(
            m.warnings[0].contains("invalid version specifier 'soon'"),
            "{:?}",
            m.warnings
        );
    }

    /// The same ranges apply to the SDK version a plugin reports in its HELLO.
    #[test]
    fn sdk_check_applies_the_ranges_to_a_reported_version() {
        let ranges = SdkRanges {
            recommended: Some("~=0.2.0".into()),
            supported: Some(">=0.2,<0.4".into()),
            untested: Some("==0.4.*".into()),
            conflicts: vec!["==0.3.1".into()],
        };
        assert_eq!(
            ranges.check("0.2.3").expect("supported"),
            Vec::<String>::new()
        );
        assert_eq!(
            ranges.check("0.3.0").expect("supported"),
            vec!["SDK 0.3.0 is outside recommended '~=0.2.0'".to_string()]
        );
        assert_eq!(ranges.check("0.4.1").expect("untested").len(), 2);
        assert_eq!(
            ranges.check("0.3.1").expect_err("conflict").to_string(),
            "SDK 0.3.1 conflicts with '==0.3.1'"
        );
        assert_eq!(
            ranges.check("0.5").expect_err("unsupported").to_string(),
            "SDK 0.5 is not in supported '>=0.2,<0.4' (nor in untested '==0.4.*')"
        );
        assert!(matches!(
            ranges.check("latest"),
            Err(ManifestError::InvalidVersion { .. })
        ));
        assert!(SdkRanges::default().check("anything").is_ok());
    }

    /// An invalid supported/untested/conflicts specifier refuses the plugin and names the key.
    #[test]
    fn invalid_sdk_specifier_is_an_error_naming_the_key() {
        let err = parse_err(&python("x", "[plugin.sdk]\nsupported = \">=0.x\"\n"));
        assert!(
            err.starts_with("[plugin.sdk].supported: invalid version specifier '>=0.x': "),
            "{err}"
        );
        let err = parse_err(&python("x", "[plugin.sdk]\nuntested = \"=>1\"\n"));
        assert!(
            err.starts_with(
                "[plugin.sdk].untested: invalid version specifier '=>1': unknown operator"
            ),
            "{err}"
        );
    }

    // -- dependencies -----------------------------------------------------------------------------

    fn deps(text: &str) -> (Vec<Dependency>, Vec<String>) {
        let m = parse(&python("me", text));
        (m.dependencies, m.warnings)
    }

    /// A full dependency table parses; providers and conflicts accept a single string.
    #[test]
    fn dependency_tables_parse_all_fields() {
        let (d, w) = deps(
            r#"
[[plugin.dependency]]
providers = "db"
recommended = ">=1.1"
supported = ">=1.0"
untested = ">=2.0"
conflicts = "==1.0.3"

[[plugin.dependency]]
entry = "search:query"
untested = ">=0.1"
conflicts = ["<0.1", "==0.5.*"]
"#,
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            d[0],
            Dependency {
                providers: vec!["db".into()],
                recommended: Some(">=1.1".into()),
                supported: Some(">=1.0".into()),
                untested: Some(">=2.0".into()),
                conflicts: DependencyConflicts::Specs(vec!["==1.0.3".into()]),
                ..Default::default()
            }
        );
        assert_eq!(d[1].entry.as_deref(), Some("search:query"));
        assert_eq!(
            d[1].conflicts,
            DependencyConflicts::Specs(vec!["<0.1".into(), "==0.5.*".into()])
        );
    }

    /// `[plugin.dependency]` as a single table is accepted.
    #[test]
    fn single_dependency_table_is_accepted() {
        let (d, _) = deps("[plugin.dependency]\nid = \"a\"\nuntested = \">=0\"\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id.as_deref(), Some("a"));
    }

    /// The reference's parse rules skip tables with a warning naming the table and the rule.
    #[test]
    fn dependency_parse_rules_skip_with_warnings() {
        let (d, w) = deps(
            r#"
[[plugin.dependency]]
untested = ">=0"

[[plugin.dependency]]
entry = "e"
custom_event = "t:i"
untested = ">=0"

[[plugin.dependency]]
providers = "p"
conflicts = true

[[plugin.dependency]]
id = "needs-untested"

[[plugin.dependency]]
entry = "a:b:c"
untested = ">=0"

[[plugin.dependency]]
custom_event = "only"
untested = ">=0"
"#,
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            w,
            vec![
                "[[plugin.dependency]] #1 skipped: it names none of id, entry, custom_event, providers",
                "[[plugin.dependency]] #2 skipped: entry and custom_event cannot be used together",
                "[[plugin.dependency]] #3 skipped: conflicts = true needs an id",
                "[[plugin.dependency]] #4 skipped: untested is required (e.g. untested = \">=0.1.0\")",
                "[[plugin.dependency]] #5 skipped: entry must be 'entry_id' or 'plugin_id:entry_id'",
                "[[plugin.dependency]] #6 skipped: custom_event must be 'event_type:event_id' or 'plugin_id:event_type:event_id'",
            ]
        );
    }

    /// `conflicts = true` with an id needs nothing else (no `untested`).
    #[test]
    fn conflicts_true_with_id_needs_no_untested() {
        let (d, w) = deps("[[plugin.dependency]]\nid = \"rival\"\nconflicts = true\n");
        assert!(w.is_empty());
        assert_eq!(d[0].conflicts, DependencyConflicts::All);
        assert!(d[0].provider_candidates().is_empty());
    }

    /// Wrong value types and invalid specifiers in a dependency are errors naming the key.
    #[test]
    fn dependency_type_and_specifier_errors_name_the_key() {
        assert_eq!(
            parse_err(&python("me", "[[plugin.dependency]]\nid = 3\n")),
            "[[plugin.dependency]] #1.id must be a string, found an integer"
        );
        let err = parse_err(&python(
            "me",
            "[[plugin.dependency]]\nid = \"a\"\nuntested = \"~=1\"\n",
        ));
        assert_eq!(
            err,
            "[[plugin.dependency]] #1.untested: invalid version specifier '~=1': '~=' needs at least two release numbers, e.g. '~=1.2'"
        );
        assert_eq!(
            parse_err(&python("me", "dependency = 1\n")),
            "[[plugin.dependency]] must be an array of tables, found an integer"
        );
    }

    // -- [plugin_runtime] -------------------------------------------------------------------------

    /// enabled/auto_start accept bools and the reference's strings, case-insensitively.
    #[test]
    fn runtime_flags_accept_bools_and_strings() {
        for (value, expected) in [
            ("false", false),
            ("\"0\"", false),
            ("\"No\"", false),
            ("\"OFF\"", false),
            ("\"false\"", false),
            ("true", true),
            ("\"1\"", true),
            ("\"YES\"", true),
            ("\" on \"", true),
        ] {
            let m = parse(&python(
                "x",
                &format!("[plugin_runtime]\nenabled = {value}\nauto_start = {value}\n"),
            ));
            assert_eq!((m.enabled, m.auto_start), (expected, expected), "{value}");
            assert!(m.warnings.is_empty());
        }
    }

    /// Anything else keeps the default (true), with a warning.
    #[test]
    fn unrecognised_runtime_flags_keep_the_default() {
        let m = parse(&python(
            "x",
            "[plugin_runtime]\nenabled = \"maybe\"\nauto_start = 0\n",
        ));
        assert!(m.enabled && m.auto_start);
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    }

    /// Restart-policy keys are read from `[plugin_runtime]` with the settings' names.
    #[test]
    fn restart_overrides_are_read_from_plugin_runtime() {
        let m = parse(&python(
            "x",
            r#"
[plugin_runtime]
restart = "Transient"
max_restarts = 3
restart_window_ms = 10000
backoff_initial_ms = 100
backoff_max_ms = 5000
backoff_multiplier = 3
jitter = 0.1
start_window_ms = 500
"#,
        ));
        assert_eq!(
            m.restart,
            RestartOverrides {
                restart: Some(RestartType::Transient),
                max_restarts: Some(3),
                restart_window_ms: Some(10_000),
                backoff_initial_ms: Some(100),
                backoff_max_ms: Some(5_000),
                backoff_multiplier: Some(3.0),
                jitter: Some(0.1),
                start_window_ms: Some(500),
            }
        );
    }

    /// `[plugin_runtime]` is read after the active profile's overlay (the reference reads
    /// `enabled` / `auto_start` from the effective config); `[plugin]` never comes from a profile,
    /// and a profile that cannot be applied leaves the base values with a warning.
    #[test]
    fn plugin_runtime_is_read_through_the_active_profile() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let toml_path = tmp.path().join("plugin.toml");
        let text = r#"
[plugin]
id = "profiled"
entry = "plugins.profiled:P"
[plugin.config_profiles]
active = "quiet"
[plugin.config_profiles.files]
quiet = "quiet.toml"
broken = "broken.toml"
[plugin_runtime]
auto_start = true
max_restarts = 4
"#;
        std::fs::write(
            tmp.path().join("quiet.toml"),
            "[plugin_runtime]\nauto_start = \"off\"\nmax_restarts = 9\n",
        )
        .unwrap();
        let m = parse_manifest(text, &toml_path).unwrap();
        assert!(!m.auto_start, "the profile turned auto_start off");
        assert!(
            m.enabled,
            "keys the profile does not set keep their base values"
        );
        assert_eq!(m.restart.max_restarts, Some(9));

        std::fs::write(tmp.path().join("broken.toml"), "[plugin]\nid = \"other\"\n").unwrap();
        let m = parse_manifest(
            &text.replace("active = \"quiet\"", "active = \"broken\""),
            &toml_path,
        )
        .unwrap();
        assert_eq!(m.id.as_str(), "profiled");
        assert!(m.auto_start && m.restart.max_restarts == Some(4));
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("config profile not applied")),
            "{:?}",
            m.warnings
        );
    }

    /// Bad restart-policy values are errors naming the key.
    #[test]
    fn bad_restart_overrides_are_errors_naming_the_key() {
        let cases = [
            (
                "max_restarts = \"5\"",
                "[plugin_runtime].max_restarts must be a non-negative integer, found a string",
            ),
            (
                "backoff_initial_ms = -1",
                "[plugin_runtime].backoff_initial_ms must not be negative (got -1)",
            ),
            (
                "max_restarts = 5000000000",
                "[plugin_runtime].max_restarts must be at most 4294967295 (got 5000000000)",
            ),
            (
                "jitter = true",
                "[plugin_runtime].jitter must be a number, found a boolean",
            ),
            (
                "backoff_multiplier = nan",
                "[plugin_runtime].backoff_multiplier must be a finite number (got NaN)",
            ),
            (
                "restart = \"sometimes\"",
                "[plugin_runtime].restart must be 'permanent', 'transient' or 'temporary' (got 'sometimes')",
            ),
            (
                "restart = 1",
                "[plugin_runtime].restart must be a string, found an integer",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_err(&python("x", &format!("[plugin_runtime]\n{line}\n"))),
                expected
            );
        }
        assert_eq!(
            parse_err(&python("x", "").replace("[plugin]", "plugin_runtime = 1\n[plugin]")),
            "[plugin_runtime] must be a table, found an integer"
        );
    }

    /// The resource-limit keys of `[plugin_runtime]`: absent = the `[limits]` default, 0 kept as
    /// written (it means "no limit"), wrong values are errors naming the key.
    #[test]
    fn limit_overrides_are_read_from_plugin_runtime() {
        assert_eq!(parse(&python("x", "")).limits, LimitOverrides::default());
        let m = parse(&python(
            "x",
            "[plugin_runtime]\nmax_memory_mb = 256\nmax_open_files = 64\nmax_message_rate = 0\n",
        ));
        assert_eq!(
            m.limits,
            LimitOverrides {
                max_memory_mb: Some(256),
                max_open_files: Some(64),
                max_message_rate: Some(0),
            }
        );
        // They are not restart-policy keys.
        assert!(m.restart.is_empty());
        let cases = [
            (
                "max_memory_mb = -1",
                "[plugin_runtime].max_memory_mb must not be negative (got -1)",
            ),
            (
                "max_open_files = \"many\"",
                "[plugin_runtime].max_open_files must be a non-negative integer, found a string",
            ),
            (
                "max_message_rate = 1.5",
                "[plugin_runtime].max_message_rate must be a non-negative integer, found a float",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_err(&python("x", &format!("[plugin_runtime]\n{line}\n"))),
                expected
            );
        }
    }

    // -- version_matches --------------------------------------------------------------------------

    /// The host SDK constant is itself a valid version.
    #[test]
    fn host_sdk_version_parses() {
        assert!(PepVersion::parse(HOST_SDK_VERSION).is_ok());
    }

    /// Every operator, with short versions padded to three numbers.
    #[test]
    fn specifier_operators_follow_pep_440() {
        let cases = [
            ("==0.1", "0.1.0", true),
            ("==1", "1.0.0", true),
            ("==0.1.0", "0.1.1", false),
            ("!=0.1", "0.1.0", false),
            ("!=0.1", "0.1.1", true),
            (">=0.1.0", "0.1.0", true),
            (">=0.1.0", "0.0.9", false),
            ("<=1.2", "1.2.0", true),
            ("<=1.2", "1.2.1", false),
            (">0.1", "0.1.0", false),
            (">0.1", "0.1.1", true),
            ("<0.2", "0.1.9", true),
            ("<0.2", "0.2.0", false),
            ("~=1.4.5", "1.4.9", true),
            ("~=1.4.5", "1.5.0", false),
            ("~=1.4.5", "1.4.4", false),
            ("~=2.2", "2.9.1", true),
            ("~=2.2", "3.0", false),
            ("===1.0", "1.0", true),
            ("===1.0", "1.0.0", false),
            ("0.1.0", "0.1", true),
            ("v1.0", "1", true),
            (">=0.1.0,<0.3.0", "0.2.5", true),
            (">=0.1.0, <0.3.0", "0.3.0", false),
            (" >= 0.1 ", "0.1", true),
            ("", "7.0", true),
        ];
        for (spec, version, expected) in cases {
            assert_eq!(matches(spec, version), expected, "{spec} vs {version}");
        }
    }

    /// `==X.*` and `!=X.*` compare release prefixes.
    #[test]
    fn wildcard_specifiers_match_release_prefixes() {
        assert!(matches("==1.2.*", "1.2.7"));
        assert!(matches("==1.2.*", "1.2"));
        assert!(!matches("==1.2.*", "1.3.0"));
        assert!(matches("==1.*", "1.9.9"));
        assert!(!matches("!=1.2.*", "1.2.0"));
        assert!(matches("!=1.2.*", "1.20.0"));
    }

    /// Pre-releases order as in PEP 440 and only match when the spec names one.
    #[test]
    fn prereleases_order_and_are_excluded_unless_named() {
        assert!(!matches(">=0.1", "0.2.0a1"));
        assert!(matches(">=0.2.0a1", "0.2.0a1"));
        assert!(matches(">=0.2.0a1", "0.2.0b1"));
        assert!(matches(">=0.2.0a1", "0.2.0rc1"));
        assert!(!matches(">0.2.0rc1", "0.2.0b3"));
        assert!(matches("<0.2.0rc1", "0.2.0a1.dev3"));
        assert!(matches("<0.2.0a1", "0.2.0.dev1"));
        assert!(matches("<0.2.0a1", "0.2.0a1.dev1"));
        assert!(!matches(">=0.2.0a1", "0.2.0a1.dev1"));
        assert!(matches(">=1.0.0rc1", "1.0.0"));
        // `<1.0` does not admit 1.0's own pre-releases, even when pre-releases are allowed.
        assert!(!matches("<1.0,!=0.0.0a1", "1.0rc1"));
        // Local and post parts are ignored.
        assert!(matches("==1.0", "1.0+ubuntu1"));
        assert!(matches("==1.0", "1.0.post2"));
    }

    /// Malformed specifiers and versions are errors, with a reason.
    #[test]
    fn invalid_specifiers_and_versions_are_errors() {
        for spec in [
            "=>1.0",
            ">=",
            "~=1",
            ">=1.*",
            "==1.*.2",
            "==1.0a1.*",
            ">=1.2.3.4",
            ">=1..2",
            ">=x",
        ] {
            let err = version_matches(spec, "1.0").expect_err(spec);
            assert!(
                matches!(err, ManifestError::InvalidSpecifier { .. }),
                "{spec}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid version specifier '{spec}': ")),
                "{err}"
            );
        }
        for version in ["", "one", "1.0-foo", "1.0a1a2", "99999999999999999999"] {
            let err = version_matches(">=0", version).expect_err(version);
            assert!(
                matches!(err, ManifestError::InvalidVersion { .. }),
                "{version}: {err}"
            );
        }
    }

    // -- start_order ------------------------------------------------------------------------------

    fn plugin(id: &str, extra: &str) -> PluginManifest {
        parse(&python(id, extra))
    }

    fn ids(order: Vec<PluginId>) -> Vec<String> {
        order.into_iter().map(String::from).collect()
    }

    fn depends_on(id: &str) -> String {
        format!("[[plugin.dependency]]\nid = \"{id}\"\nuntested = \">=0\"\n")
    }

    /// Providers start before the plugins that need them; the rest sorts by id.
    #[test]
    fn start_order_puts_providers_first() {
        let plugins = vec![
            plugin("app", &depends_on("db")),
            plugin("db", &depends_on("zlog")),
            plugin("zlog", ""),
            plugin("aaa", ""),
        ];
        assert_eq!(ids(start_order(&plugins)), ["aaa", "zlog", "db", "app"]);
    }

    /// Among ready plugins, enabled ones come first, then by id.
    #[test]
    fn start_order_ready_queue_prefers_enabled_then_id() {
        let plugins = vec![
            plugin("b", ""),
            plugin("a", "[plugin_runtime]\nenabled = false\n"),
            plugin("c", ""),
        ];
        assert_eq!(ids(start_order(&plugins)), ["b", "c", "a"]);
    }

    /// Entry, custom-event and provider dependencies create edges too; unknown ids are ignored.
    #[test]
    fn start_order_uses_every_kind_of_provider_candidate() {
        let plugins = vec![
            plugin(
                "a",
                "[[plugin.dependency]]\nentry = \"z:run\"\nuntested = \">=0\"\n",
            ),
            plugin(
                "b",
                "[[plugin.dependency]]\ncustom_event = \"y:tick:t1\"\nuntested = \">=0\"\n",
            ),
            plugin(
                "c",
                "[[plugin.dependency]]\nproviders = [\"x\", \"nowhere\"]\nuntested = \">=0\"\n",
            ),
            plugin("x", ""),
            plugin("y", ""),
            plugin("z", ""),
        ];
        assert_eq!(ids(start_order(&plugins)), ["x", "c", "y", "b", "z", "a"]);
    }

    /// Plugins in a cycle are appended in input order after the others.
    #[test]
    fn start_order_appends_a_cycle_in_input_order() {
        let plugins = vec![
            plugin("p", &depends_on("q")),
            plugin("solo", ""),
            plugin("q", &depends_on("p")),
            plugin("after", &depends_on("q")),
        ];
        assert_eq!(ids(start_order(&plugins)), ["solo", "p", "q", "after"]);
    }

    // -- check_dependencies -----------------------------------------------------------------------

    fn check(m: &PluginManifest, available: &[&PluginManifest]) -> Result<(), String> {
        check_dependencies(m, available, &ExposedMap::new())
    }

    /// An `id` dependency is satisfied by an enabled plugin and names the missing one otherwise.
    #[test]
    fn id_dependency_needs_an_enabled_plugin() {
        let app = plugin("app", &depends_on("db"));
        let db = plugin("db", "");
        let db_off = plugin("db", "[plugin_runtime]\nenabled = false\n");
        assert_eq!(check(&app, &[&app, &db]), Ok(()));
        assert_eq!(
            check(&app, &[&app]),
            Err("missing dependency 'db' (required by 'app')".to_string())
        );
        assert_eq!(
            check(&app, &[&db_off]),
            Err("dependency 'db' is disabled (required by 'app')".to_string())
        );
    }

    /// Versions are checked: untested or supported accept, conflicts refuse, garbage passes.
    #[test]
    fn dependency_versions_are_checked() {
        let app = plugin(
            "app",
            r#"
[[plugin.dependency]]
id = "db"
supported = ">=1.0,<2"
untested = ">=2,<3"
conflicts = ["==1.5.*"]
"#,
        );
        let with_version = |v: &str| plugin("db", &format!("version = \"{v}\"\n"));
        assert_eq!(check(&app, &[&with_version("1.2")]), Ok(()));
        assert_eq!(check(&app, &[&with_version("2.4")]), Ok(()));
        assert_eq!(
            check(&app, &[&with_version("3.0")]),
            Err("dependency 'db' version 3.0 is not in supported '>=1.0,<2' nor untested '>=2,<3' (required by 'app')".to_string())
        );
        assert_eq!(
            check(&app, &[&with_version("1.5.1")]),
            Err(
                "dependency 'db' version 1.5.1 conflicts with '==1.5.*' (required by 'app')"
                    .to_string()
            )
        );
        assert_eq!(check(&app, &[&with_version("not-a-version")]), Ok(()));
    }

    /// `conflicts = true` refuses when the named plugin is enabled, not when it is disabled.
    #[test]
    fn conflicts_true_refuses_an_enabled_rival() {
        let app = plugin(
            "app",
            "[[plugin.dependency]]\nid = \"rival\"\nconflicts = true\n",
        );
        let rival = plugin("rival", "");
        let rival_off = plugin("rival", "[plugin_runtime]\nenabled = false\n");
        assert_eq!(
            check(&app, &[&rival]),
            Err("conflicting plugin 'rival' is enabled (declared by 'app')".to_string())
        );
        assert_eq!(check(&app, &[&rival_off]), Ok(()));
        assert_eq!(check(&app, &[]), Ok(()));
    }

    /// Any one enabled provider with an accepted version satisfies `providers`.
    #[test]
    fn any_provider_satisfies_a_providers_dependency() {
        let app = plugin(
            "app",
            "[[plugin.dependency]]\nproviders = [\"pg\", \"sqlite\"]\nuntested = \">=1\"\n",
        );
        let old_pg = plugin("pg", "version = \"0.5\"\n");
        let sqlite = plugin("sqlite", "version = \"1.1\"\n");
        assert_eq!(check(&app, &[&old_pg, &sqlite]), Ok(()));
        assert_eq!(
            check(&app, &[]),
            Err("missing dependency: none of the providers 'pg', 'sqlite' is available (required by 'app')".to_string())
        );
        assert_eq!(
            check(&app, &[&old_pg]),
            Err(
                "dependency 'pg' version 0.5 is not in untested '>=1' (required by 'app')"
                    .to_string()
            )
        );
    }

    /// Entry dependencies use the provider's preview, and accept any entry when it has none.
    #[test]
    fn entry_dependencies_use_previews_and_accept_plugins_without_one() {
        let named = plugin(
            "app",
            "[[plugin.dependency]]\nentry = \"search:query\"\nuntested = \">=0\"\n",
        );
        let bare = plugin(
            "app",
            "[[plugin.dependency]]\nentry = \"query\"\nuntested = \">=0\"\n",
        );
        let with_query = plugin("search", "entries = [\"query\"]\n");
        let without_query = plugin("search", "entries = [\"index\"]\n");
        let no_preview = plugin("search", "");
        assert_eq!(check(&named, &[&with_query]), Ok(()));
        assert_eq!(check(&named, &[&no_preview]), Ok(()));
        assert_eq!(
            check(&named, &[&without_query]),
            Err("dependency 'search' has no entry 'query' (required by 'app')".to_string())
        );
        assert_eq!(
            check(&named, &[]),
            Err("missing dependency 'search' (required by 'app')".to_string())
        );
        assert_eq!(check(&bare, &[&with_query]), Ok(()));
        assert_eq!(
            check(&bare, &[&without_query]),
            Err(
                "missing dependency: no enabled plugin provides entry 'query' (required by 'app')"
                    .to_string()
            )
        );
    }

    /// Custom-event dependencies check the named provider's presence, or that any provider exists.
    #[test]
    fn custom_event_dependencies_check_provider_presence() {
        let named = plugin(
            "app",
            "[[plugin.dependency]]\ncustom_event = \"clock:tick:t\"\nuntested = \">=0\"\n",
        );
        let bare = plugin(
            "app",
            "[[plugin.dependency]]\ncustom_event = \"tick:t\"\nuntested = \">=0\"\n",
        );
        let clock = plugin("clock", "");
        assert_eq!(check(&named, &[&clock]), Ok(()));
        assert_eq!(
            check(&named, &[&named]),
            Err("missing dependency 'clock' (required by 'app')".to_string())
        );
        assert_eq!(check(&bare, &[&clock]), Ok(()));
        assert!(
            check(&bare, &[&bare]).is_err(),
            "a plugin does not satisfy itself"
        );
    }

    /// Once a provider said what it has (HELLO), that list decides, not its preview.
    #[test]
    fn what_a_running_provider_exposes_decides() {
        let by_entry = plugin(
            "app",
            "[[plugin.dependency]]\nentry = \"search:query\"\nuntested = \">=0\"\n",
        );
        let by_event = plugin(
            "app",
            "[[plugin.dependency]]\ncustom_event = \"search:tick:t\"\nuntested = \">=0\"\n",
        );
        let by_bare_event = plugin(
            "app",
            "[[plugin.dependency]]\ncustom_event = \"tick:t\"\nuntested = \">=0\"\n",
        );
        let search = plugin("search", "");
        let known = |entries: &[&str], events: &[(&str, &str)]| {
            ExposedMap::from([(
                search.id.clone(),
                Exposed {
                    entries: entries.iter().map(|e| e.to_string()).collect(),
                    events: events
                        .iter()
                        .map(|(t, i)| (t.to_string(), i.to_string()))
                        .collect(),
                },
            )])
        };
        let has = known(&["query"], &[("tick", "t")]);
        let lacks = known(&["index"], &[("tock", "t")]);
        for app in [&by_entry, &by_event, &by_bare_event] {
            assert_eq!(check_dependencies(app, &[&search], &has), Ok(()));
            assert!(check_dependencies(app, &[&search], &lacks).is_err());
        }
        assert_eq!(
            check_dependencies(&by_entry, &[&search], &lacks),
            Err("dependency 'search' has no entry 'query' (required by 'app')".to_string())
        );
        assert_eq!(
            check_dependencies(&by_event, &[&search], &lacks),
            Err("dependency 'search' has no custom event 'tick.t' (required by 'app')".to_string())
        );
    }

    /// Every unsatisfied dependency is listed.
    #[test]
    fn all_unsatisfied_dependencies_are_reported() {
        let app = plugin("app", &format!("{}{}", depends_on("a"), depends_on("b")));
        assert_eq!(
            check(&app, &[]),
            Err("missing dependency 'a' (required by 'app'); missing dependency 'b' (required by 'app')".to_string())
        );
    }

    // -- scan -------------------------------------------------------------------------------------

    fn write(root: &Path, dir: &str, text: &str) {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).expect("create plugin dir");
        fs::write(dir.join(MANIFEST_FILE), text).expect("write plugin.toml");
    }

    /// A scan finds good plugins sorted by folder, and reports broken TOML and duplicate ids.
    #[test]
    fn scan_reports_good_broken_and_duplicate_plugins() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "b_good", &python("good", ""));
        write(root, "a_other", &python("other", ""));
        write(root, "c_broken", "[plugin\nid = \"x\"\n");
        write(root, "d_dup", &python("good", ""));
        write(
            root,
            "e_bad_entry",
            "[plugin]\nid = \"bad\"\nentry = \"nocolon\"\n",
        );
        fs::create_dir_all(root.join("f_no_manifest")).expect("mkdir");
        write(&root.join("g_nested"), "inner", &python("nested", ""));
        fs::write(root.join("plugin.toml"), "not a plugin folder").expect("write");

        let result = scan(root);
        let found: Vec<&str> = result.plugins.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(found, ["other", "good"]);
        let good = &result.plugins[1];
        assert_eq!(good.dir, root.join("b_good"));
        assert!(good.config_path.is_absolute());

        assert_eq!(result.broken.len(), 3, "{:?}", result.broken);
        let broken_toml = &result.broken[0];
        assert_eq!(broken_toml.dir, root.join("c_broken"));
        assert_eq!(broken_toml.id, None);
        assert!(
            broken_toml
                .error
                .starts_with("plugin.toml: invalid TOML at line 1"),
            "{}",
            broken_toml.error
        );
        let dup = &result.broken[1];
        assert_eq!(dup.id.as_deref(), Some("good"));
        assert_eq!(
            dup.error,
            format!(
                "duplicate plugin id 'good' (already defined by {})",
                root.join("b_good").join(MANIFEST_FILE).display()
            )
        );
        let bad_entry = &result.broken[2];
        assert_eq!(bad_entry.id.as_deref(), Some("bad"));
        assert_eq!(
            bad_entry.config_path,
            root.join("e_bad_entry").join(MANIFEST_FILE)
        );
    }

    /// A missing plugins folder is simply empty.
    #[test]
    fn scan_of_a_missing_folder_is_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let result = scan(&tmp.path().join("absent"));
        assert_eq!(result, ScanResult::default());
    }

    /// The example plugins shipped in the repository parse without errors.
    #[test]
    fn repository_example_plugins_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let result = scan(&root);
        assert!(result.broken.is_empty(), "{:?}", result.broken);
    }
}
