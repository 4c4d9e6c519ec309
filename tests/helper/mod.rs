//! Test fixtures: a real `neko` process on a free port with a temporary plugins folder, and a
//! poll-with-deadline helper.

pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One global deadline for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The admin token every test server uses.
pub const TOKEN: &str = "TESTTOKEN0123456789";

/// Directory holding the `neko` binary (and the workspace's plugin binaries).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_neko"))
        .parent()
        .expect("binary has a folder")
        .to_path_buf()
}

/// Builds the example plugin binary once, if `cargo test` did not (it builds only this package).
pub fn ensure_echo_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if bin_dir().join("neko-plugin-echo").exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "neko-plugin-echo"]);
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building neko-plugin-echo failed");
    });
}

/// The Python environment shared by the test servers (under the target dir).
pub fn python_env_dir() -> PathBuf {
    bin_dir()
        .parent()
        .expect("target dir")
        .join("neko-test-python")
}

/// A plugin folder to write into the temporary plugins dir.
pub struct PluginDir {
    pub dir: &'static str,
    pub toml: String,
}

/// A Python plugin: its plugin.toml and its `__init__.py`.
pub struct PythonPlugin {
    pub dir: &'static str,
    pub toml: String,
    pub init_py: String,
    /// More files for the folder: (name, content).
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// A copy of a bundled plugin folder from the repository's `plugins/`.
pub fn bundled_plugin(dir: &'static str) -> PythonPlugin {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(dir);
    PythonPlugin {
        dir,
        toml: std::fs::read_to_string(src.join("plugin.toml")).expect("bundled plugin.toml"),
        init_py: std::fs::read_to_string(src.join("__init__.py")).expect("bundled __init__.py"),
        files: Vec::new(),
    }
}

/// The echo plugin's plugin.toml with extra `[plugin_runtime]` lines.
pub fn echo_plugin(id: &'static str, runtime_extra: &str) -> PluginDir {
    PluginDir {
        dir: id,
        toml: format!(
            r#"[plugin]
id = "{id}"
name = "Echo ({id})"
version = "0.1.0"
description = "test echo"
runtime = "native"
command = "neko-plugin-echo"

[plugin.sdk]
supported = ">=0.1.0,<0.2.0"

[plugin_runtime]
{runtime_extra}
"#
        ),
    }
}

/// A native plugin that runs `sh -c <script>`.
pub fn shell_plugin(id: &'static str, script: &str, runtime_extra: &str) -> PluginDir {
    PluginDir {
        dir: id,
        toml: format!(
            r#"[plugin]
id = "{id}"
runtime = "native"
command = "/bin/sh"
args = ["-c", {script:?}]

[plugin_runtime]
{runtime_extra}
"#
        ),
    }
}

/// The test settings: fast supervision, then `overrides` merged section by section.
fn settings_file(overrides: &str) -> String {
    let mut table: toml::Table = toml::from_str(
        r#"
[supervision]
handshake_timeout_ms = 5000
heartbeat_interval_ms = 100
heartbeat_timeout_ms = 1000
stop_grace_ms = 1000
term_grace_ms = 500

[restart_policy]
backoff_initial_ms = 50
backoff_max_ms = 400
start_window_ms = 500

# Tests run side by side: every server on free ports.
[message_plane]
rpc_endpoint = "tcp://127.0.0.1:0"
pub_endpoint = "tcp://127.0.0.1:0"
ingest_endpoint = "tcp://127.0.0.1:0"
"#,
    )
    .expect("base settings parse");
    // Every test server shares one Python environment (created once, under a lock).
    let mut python = toml::Table::new();
    python.insert(
        "env_dir".into(),
        toml::Value::String(python_env_dir().display().to_string()),
    );
    table.insert("python".into(), toml::Value::Table(python));
    let extra: toml::Table = toml::from_str(overrides).expect("overrides parse");
    for (section, values) in extra {
        let target = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let (Some(t), toml::Value::Table(v)) = (target.as_table_mut(), values) {
            t.extend(v);
        }
    }
    toml::to_string(&table).expect("settings serialise")
}

/// A running neko, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Neko {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    config: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// Taken by [`Neko::kill_and_restart`], which hands the folder to the next neko.
    tmp: Option<tempfile::TempDir>,
}

impl Neko {
    /// Starts neko with these plugins and fast supervision settings.
    pub fn start(plugins: &[PluginDir]) -> Self {
        Self::start_with(plugins, "")
    }

    /// Like [`Neko::start`], with settings overrides (TOML, merged per section over the fast
    /// test defaults).
    pub fn start_with(plugins: &[PluginDir], overrides: &str) -> Self {
        Self::start_mixed(plugins, &[], overrides)
    }

    /// Starts neko with native and Python plugins.
    pub fn start_mixed(plugins: &[PluginDir], python: &[PythonPlugin], overrides: &str) -> Self {
        ensure_echo_built();
        let tmp = tempfile::Builder::new()
            .prefix("neko-t")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let plugins_dir = tmp.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        for p in plugins {
            let d = plugins_dir.join(p.dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("plugin.toml"), &p.toml).unwrap();
        }
        for p in python {
            let d = plugins_dir.join(p.dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("plugin.toml"), &p.toml).unwrap();
            std::fs::write(d.join("__init__.py"), &p.init_py).unwrap();
            for (name, content) in &p.files {
                std::fs::write(d.join(name), content).unwrap();
            }
        }
        let config = tmp.path().join("neko.toml");
        std::fs::write(&config, settings_file(overrides)).unwrap();
        let data_dir = tmp.path().join("data");
        Self::launch(tmp, plugins_dir, data_dir, config)
    }

    /// SIGKILLs this neko and starts a new one on the same plugins, settings and data dir.
    pub fn kill_and_restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let tmp = self.tmp.take().expect("folder still owned");
        let (plugins_dir, data_dir, config) = (
            self.plugins_dir.clone(),
            self.data_dir.clone(),
            self.config.clone(),
        );
        drop(self);
        Self::launch(tmp, plugins_dir, data_dir, config)
    }

    fn launch(
        tmp: tempfile::TempDir,
        plugins_dir: PathBuf,
        data_dir: PathBuf,
        config: PathBuf,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_neko"))
            .arg("serve")
            .arg("--port")
            .arg("0")
            .arg("--config")
            .arg(&config)
            .arg("--plugins-dir")
            .arg(&plugins_dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("NEKO_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("neko starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("NEKO_TEST_LOG").is_some() {
                    eprintln!("[neko] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so neko never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(TIMEOUT).expect("neko printed its address");
        let base = first
            .strip_prefix("neko listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        Self {
            child,
            base,
            client: reqwest::Client::new(),
            data_dir,
            plugins_dir,
            config,
            logs,
            tmp: Some(tmp),
        }
    }

    /// `GET path` → (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST path` with a JSON body → (status, JSON body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    /// `GET path` as admin.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path)).bearer_auth(TOKEN))
            .await
    }

    /// `POST path` as admin, without a body.
    pub async fn admin_post(&self, path: &str) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).bearer_auth(TOKEN))
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request → (status, JSON body, or null when the body is not JSON).
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One plugin's entry in `GET /plugins`.
    pub async fn plugin(&self, id: &str) -> Value {
        self.listed("plugins", id).await
    }

    /// Plugin `id` as `GET /plugins` lists it apart, among `invalid_plugins` (Null when it is not).
    pub async fn invalid_plugin(&self, id: &str) -> Value {
        self.listed("invalid_plugins", id).await
    }

    async fn listed(&self, list: &str, id: &str) -> Value {
        let (_, body) = self.get("/plugins").await;
        body[list]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until plugin `id` cannot start as configured: listed apart as `invalid`, not among
    /// the registered plugins; returns its entry.
    pub async fn wait_invalid(&self, id: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let p = self.invalid_plugin(id).await;
            if p["status"] == "invalid" {
                assert!(self.plugin(id).await.is_null(), "{id} is listed apart only");
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {id} to be invalid: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until plugin `id` is `running` with a pid, and returns the pid.
    pub async fn wait_running(&self, id: &str) -> u32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let p = self.plugin(id).await;
            if let (Some("running"), Some(n)) = (p["status"].as_str(), p["pid"].as_u64()) {
                return n as u32;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {id} to run: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a run and waits for its terminal record.
    pub async fn run(&self, plugin: &str, entry: &str, args: Value) -> Value {
        let created = self.create_run(plugin, entry, args).await;
        self.wait_run(created["run_id"].as_str().expect("run_id"))
            .await
    }

    /// `POST /runs`; returns the `queued` reply (run_id, run_token, expires_at).
    pub async fn create_run(&self, plugin: &str, entry: &str, args: Value) -> Value {
        let (status, created) = self
            .post(
                "/runs",
                &serde_json::json!({"plugin_id": plugin, "entry_id": entry, "args": args}),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["status"], "queued");
        created
    }

    /// Waits for run `run_id` to reach a terminal state and returns its record (the server
    /// answers as soon as it is terminal: `?wait_ms`).
    pub async fn wait_run(&self, run_id: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (_, r) = self.get(&format!("/runs/{run_id}?wait_ms=5000")).await;
            if is_terminal(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never finished: {r}"
            );
        }
    }

    /// Whether a log line containing all of `parts` was written.
    pub fn logged(&self, parts: &[&str]) -> bool {
        !self.log_lines(parts).is_empty()
    }

    /// The log lines written so far that contain all of `parts`.
    pub fn log_lines(&self, parts: &[&str]) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// Waits for such a log line.
    pub async fn wait_logged(&self, parts: &[&str]) {
        wait_for_async(
            || async { self.logged(parts) },
            &format!("log line {parts:?}"),
        )
        .await;
    }

    /// The pid of the neko process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Neko {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a run record is in a terminal state.
pub fn is_terminal(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("succeeded" | "failed" | "timeout" | "canceled")
    )
}

/// Polls `cond` every 20 ms until it holds, failing the test after [`TIMEOUT`].
pub async fn wait_for_async<F, Fut>(mut cond: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the first field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Sends a signal to a pid.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(pid as i32, sig) };
}
