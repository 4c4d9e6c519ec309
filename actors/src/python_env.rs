//! PythonEnv: the managed Python environment Python plugins run in.
//!
//! Parent: the root supervisor. Children: none. Senders: ProcessHosts of Python plugins, before
//! they spawn (`Prepare`). It finds an interpreter (>= 3.11), creates a venv under the data dir,
//! installs the SDK's runtime dependencies (pyzmq, msgpack) and the SDK itself (embedded in the
//! binary, linked into the venv with a `.pth` file), and installs a plugin's own requirements
//! (`requirements.txt`, or `[project].dependencies` of its `pyproject.toml`) into a per-plugin
//! folder. Every step leaves a marker, so nothing is repeated while its inputs are unchanged.
//! Requests are handled one at a time, so two plugins never run pip at once. If it dies, the root
//! restarts it; the markers on disk make the restart cheap.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use neko_protocol::PluginId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::process_host::child;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/python_sdk.rs"));
}

/// The oldest Python the SDK supports.
const MIN_PYTHON: (u32, u32) = (3, 11);
/// What the SDK needs at run time.
const SDK_REQUIREMENTS: &[&str] = &["pyzmq>=25", "msgpack>=1.0"];
/// Not needed by the SDK's core, but plugins written for the reference import them from its host
/// project (loguru), or use `self.db`, which needs SQLAlchemy's async engine over aiosqlite (the
/// reference's environment has them); installed too, and a failure only warns.
const COMPAT_PACKAGES: &[&str] = &["loguru", "sqlalchemy[asyncio]>=2", "aiosqlite"];
/// Optional too: the SDK packs and reads msgpack faster with it (`plugin/_runtime/codec.py`) and
/// works without it.
const SDK_SPEEDUPS: &[&str] = &["ormsgpack>=1.4"];

/// The PythonEnv actor.
pub struct PythonEnv;

/// Where and how the environment is built (the `[python]` settings).
#[derive(Debug, Clone)]
pub struct PythonSettings {
    /// The interpreter to build the venv from (`python3` when unset).
    pub interpreter: Option<String>,
    /// Everything lives below this folder (`<data_dir>/python`).
    pub root: PathBuf,
    /// Extra arguments for every `pip install` (e.g. an index URL).
    pub pip_args: Vec<String>,
}

/// How to start one Python plugin.
#[derive(Debug, Clone)]
pub struct PythonLaunch {
    /// The venv's interpreter.
    pub python: PathBuf,
    /// Folders to put on `PYTHONPATH` (the plugin's own installed requirements).
    pub python_path: Vec<PathBuf>,
}

/// Messages of PythonEnv.
pub enum PythonEnvMsg {
    /// Make the environment ready for this plugin (creating or updating what is missing).
    Prepare {
        plugin_id: PluginId,
        plugin_dir: PathBuf,
        reply: RpcReplyPort<Result<PythonLaunch, String>>,
    },
}

/// PythonEnv's state: the settings and what is known to be ready.
pub struct PythonEnvState {
    settings: PythonSettings,
    /// The venv's interpreter once the base environment is ready.
    base: Option<PathBuf>,
}

impl Actor for PythonEnv {
    type Msg = PythonEnvMsg;
    type State = PythonEnvState;
    type Arguments = PythonSettings;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        settings: PythonSettings,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PythonEnvState {
            settings,
            base: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PythonEnvMsg::Prepare {
                plugin_id,
                plugin_dir,
                reply,
            } => {
                let result = state.prepare(&plugin_id, &plugin_dir).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

impl PythonEnvState {
    async fn prepare(
        &mut self,
        plugin_id: &PluginId,
        plugin_dir: &Path,
    ) -> Result<PythonLaunch, String> {
        // Several neko processes may share one environment: one of them changes it at a time.
        let _lock = self.lock().await?;
        let python = match &self.base {
            Some(p) => p.clone(),
            None => {
                let p = self.ensure_base(plugin_id).await?;
                self.base = Some(p.clone());
                p
            }
        };
        let python_path = self
            .ensure_plugin_requirements(plugin_id, plugin_dir, &python)
            .await?
            .into_iter()
            .collect();
        Ok(PythonLaunch {
            python,
            python_path,
        })
    }

    /// Takes the environment's lock file (released when the returned file is dropped).
    async fn lock(&self) -> Result<std::fs::File, String> {
        let root = self.settings.root.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            std::fs::create_dir_all(&root)
                .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(root.join(".lock"))
                .map_err(|e| format!("cannot open the environment lock: {e}"))?;
            // SAFETY: flock(2) on a file descriptor we own for the duration of the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!(
                    "cannot lock the environment: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(file)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The venv with the SDK and its dependencies; returns the venv's interpreter.
    async fn ensure_base(&self, plugin_id: &PluginId) -> Result<PathBuf, String> {
        let interpreter = self
            .settings
            .interpreter
            .clone()
            .unwrap_or_else(|| "python3".into());
        let version = python_version(&interpreter).await.map_err(|e| {
            format!(
                "Python interpreter '{interpreter}' is unusable: {e}. Install Python >= {}.{} or set [python] interpreter in the config",
                MIN_PYTHON.0, MIN_PYTHON.1
            )
        })?;
        let root = &self.settings.root;
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let venv = root.join("venv");
        let venv_python = venv.join("bin/python");
        let deps_marker = venv.join(".neko-deps");
        let deps_key = format!(
            "{version}|{}|{}|{}|{}",
            SDK_REQUIREMENTS.join(" "),
            COMPAT_PACKAGES.join(" "),
            SDK_SPEEDUPS.join(" "),
            self.settings.pip_args.join(" ")
        );
        if std::fs::read_to_string(&deps_marker).ok().as_deref() != Some(deps_key.as_str()) {
            let started = Instant::now();
            tracing::info!(venv = %venv.display(), %interpreter, %version, "creating the Python environment for Python plugins (first start; takes a moment)");
            let args = vec![
                interpreter.clone(),
                "-m".into(),
                "venv".into(),
                "--clear".into(),
                venv.display().to_string(),
            ];
            child::run_tool(plugin_id, "python-env", &args, root, &[]).await?;
            tracing::info!(packages = ?SDK_REQUIREMENTS, "installing the Python SDK's dependencies");
            let mut pip = pip_install(&venv_python, &self.settings.pip_args);
            pip.extend(SDK_REQUIREMENTS.iter().map(|s| s.to_string()));
            child::run_tool(plugin_id, "python-env", &pip, root, &[]).await?;
            for (packages, what) in [
                (
                    COMPAT_PACKAGES,
                    "packages plugins written for the reference often import",
                ),
                (SDK_SPEEDUPS, "the SDK's optional speed-ups"),
            ] {
                let mut optional = pip_install(&venv_python, &self.settings.pip_args);
                optional.extend(packages.iter().map(|s| s.to_string()));
                if let Err(e) = child::run_tool(plugin_id, "python-env", &optional, root, &[]).await
                {
                    tracing::warn!(?packages, error = %e, "could not install {what}; continuing without them");
                }
            }
            std::fs::write(&deps_marker, &deps_key).map_err(|e| e.to_string())?;
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "Python environment ready"
            );
        }
        self.link_sdk(&venv_python).await?;
        Ok(venv_python)
    }

    /// Writes the embedded SDK under `root/sdk-<hash>` (once) and points the venv at it.
    async fn link_sdk(&self, venv_python: &Path) -> Result<(), String> {
        let sdk_dir = self.settings.root.join(format!("sdk-{}", embedded::HASH));
        if !sdk_dir.exists() {
            let staging = self
                .settings
                .root
                .join(format!("sdk-{}.tmp", embedded::HASH));
            let _ = std::fs::remove_dir_all(&staging);
            for (rel, bytes) in embedded::FILES {
                let path = staging.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
            }
            // Rename last: a half-written copy is never mistaken for a complete one.
            std::fs::rename(&staging, &sdk_dir).map_err(|e| e.to_string())?;
            tracing::info!(dir = %sdk_dir.display(), files = embedded::FILES.len(), "Python SDK installed");
        }
        let purelib = python_output(
            venv_python,
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        )
        .await
        .map_err(|e| format!("cannot locate the venv's site-packages: {e}"))?;
        let pth = Path::new(purelib.trim()).join("neko_plugin_sdk.pth");
        let line = format!("{}\n", sdk_dir.display());
        if std::fs::read_to_string(&pth).ok().as_deref() != Some(line.as_str()) {
            std::fs::write(&pth, line)
                .map_err(|e| format!("cannot write {}: {e}", pth.display()))?;
        }
        Ok(())
    }

    /// Installs the plugin's own requirements into `root/plugins/<id>/site`, unless unchanged.
    async fn ensure_plugin_requirements(
        &self,
        plugin_id: &PluginId,
        plugin_dir: &Path,
        venv_python: &Path,
    ) -> Result<Option<PathBuf>, String> {
        let Some((source, requirements)) = plugin_requirements(plugin_dir)? else {
            return Ok(None);
        };
        let dir = self.settings.root.join("plugins").join(plugin_id.as_str());
        let site = dir.join("site");
        let marker = dir.join(".neko-requirements");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&requirements, &self.settings.pip_args, venv_python).hash(&mut h);
        let key = format!("{:016x}", h.finish());
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(key.as_str()) && site.exists() {
            return Ok(Some(site));
        }
        let started = Instant::now();
        tracing::info!(plugin_id = %plugin_id, from = source, "installing the plugin's Python requirements");
        let _ = std::fs::remove_dir_all(&site);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut pip = pip_install(venv_python, &self.settings.pip_args);
        pip.push("--target".into());
        pip.push(site.display().to_string());
        match &requirements {
            Requirements::File { path, .. } => {
                pip.push("-r".into());
                pip.push(path.display().to_string());
            }
            Requirements::List(list) => pip.extend(list.iter().cloned()),
        }
        child::run_tool(plugin_id, "pip", &pip, plugin_dir, &[])
            .await
            .map_err(|e| format!("installing the requirements from {source} failed: {e}"))?;
        std::fs::write(&marker, key).map_err(|e| e.to_string())?;
        tracing::info!(plugin_id = %plugin_id, seconds = started.elapsed().as_secs_f64(), "plugin requirements installed");
        Ok(Some(site))
    }
}

/// What a plugin asks to have installed. Hashed into the marker, so a `File` carries its
/// content: an edited file is installed again.
#[derive(Hash)]
enum Requirements {
    File { path: PathBuf, content: String },
    List(Vec<String>),
}

/// `requirements.txt` wins; else `[project].dependencies` of `pyproject.toml`; else nothing.
fn plugin_requirements(dir: &Path) -> Result<Option<(&'static str, Requirements)>, String> {
    let req = dir.join("requirements.txt");
    if req.is_file() {
        let text = std::fs::read_to_string(&req).map_err(|e| e.to_string())?;
        let has_any = text
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'));
        if has_any {
            return Ok(Some((
                "requirements.txt",
                Requirements::File {
                    path: req,
                    content: text,
                },
            )));
        }
    }
    let pyproject = dir.join("pyproject.toml");
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject).map_err(|e| e.to_string())?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("invalid pyproject.toml: {e}"))?;
        let deps: Vec<String> = table
            .get("project")
            .and_then(|p| p.get("dependencies"))
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !deps.is_empty() {
            return Ok(Some(("pyproject.toml", Requirements::List(deps))));
        }
    }
    Ok(None)
}

fn pip_install(python: &Path, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        python.display().to_string(),
        "-m".into(),
        "pip".into(),
        "install".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
    ]
    .into();
    v.extend(extra.iter().cloned());
    v
}

/// `major.minor` of an interpreter, checked against [`MIN_PYTHON`].
async fn python_version(interpreter: &str) -> Result<String, String> {
    let out = python_output(
        Path::new(interpreter),
        "import sys; print('%d.%d' % sys.version_info[:2])",
    )
    .await?;
    let v = out.trim().to_string();
    let (major, minor) = v
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("unexpected version output '{v}'"))?;
    if (major, minor) < MIN_PYTHON {
        return Err(format!("it is Python {v}"));
    }
    Ok(v)
}

async fn python_output(python: &Path, code: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(python)
        .args(["-c", code])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_come_from_requirements_txt_then_pyproject() {
        let dir = tempfile::tempdir().unwrap();
        assert!(plugin_requirements(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname='x'\ndependencies=['six==1.16.0']\n",
        )
        .unwrap();
        let (src, req) = plugin_requirements(dir.path()).unwrap().unwrap();
        assert_eq!(src, "pyproject.toml");
        assert!(matches!(req, Requirements::List(l) if l == ["six==1.16.0"]));
        std::fs::write(dir.path().join("requirements.txt"), "# none\n\n").unwrap();
        assert_eq!(
            plugin_requirements(dir.path()).unwrap().unwrap().0,
            "pyproject.toml"
        );
        std::fs::write(dir.path().join("requirements.txt"), "six\n").unwrap();
        assert_eq!(
            plugin_requirements(dir.path()).unwrap().unwrap().0,
            "requirements.txt"
        );
    }

    #[test]
    fn the_sdk_is_embedded() {
        assert!(
            embedded::FILES
                .iter()
                .any(|(p, _)| *p == "plugin/__init__.py"),
            "sdk/python/plugin/__init__.py is embedded"
        );
    }
}
