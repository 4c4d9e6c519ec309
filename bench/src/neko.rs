//! The two things the figures talk to: a `neko` process the bench owns ([`Neko`], stopped when
//! dropped, also on error or panic), and a client for the reference REST API ([`Api`]), which works
//! against any server that has it.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Upper bound of one HTTP request (connect included).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of anything the bench waits for: neko's address line, a plugin to run, a run to end.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Records neko keeps per (store, topic): the built-in `[message_plane] store_maxlen`, written
/// out so the `plane` figure's "full store" stays 20,000 records whatever the default becomes.
pub const STORE_MAXLEN: usize = 20_000;

/// Id of the bundled Python bench plugin (`bench/plugins/pybench`).
pub const PYBENCH: &str = "pybench";

/// The pybench plugin's files, embedded so the bench needs no source tree at run time:
/// (file name, content).
const PYBENCH_FILES: [(&str, &str); 2] = [
    (
        "plugin.toml",
        include_str!("../plugins/pybench/plugin.toml"),
    ),
    (
        "__init__.py",
        include_str!("../plugins/pybench/__init__.py"),
    ),
];

/// The plugins a spawned neko gets.
#[derive(Clone, Copy, Debug)]
pub struct Plugins {
    /// Copies of the echo plugin: `echo`, `echo-2`, ..., `echo-n`.
    pub echo: usize,
    /// Copies of the Python plugin [`PYBENCH`]: `pybench`, `pybench2`, ..., `pybench<n>` (the
    /// folder is the Python package, so no `-`).
    pub pybench: usize,
}

impl Plugins {
    /// The pybench plugin alone.
    pub const PYBENCH_ALONE: Plugins = Plugins {
        echo: 0,
        pybench: 1,
    };

    /// `n` copies of the echo plugin and nothing else.
    pub fn echo(n: usize) -> Plugins {
        Plugins {
            echo: n,
            pybench: 0,
        }
    }

    /// The ids of every plugin, echo copies first.
    pub fn ids(&self) -> Vec<String> {
        let echo = (1..=self.echo).map(|i| match i {
            1 => "echo".to_string(),
            _ => format!("echo-{i}"),
        });
        let pybench = (1..=self.pybench).map(|i| match i {
            1 => PYBENCH.to_string(),
            _ => format!("{PYBENCH}{i}"),
        });
        echo.chain(pybench).collect()
    }
}

/// The Python environment every neko the bench starts shares: `neko-bench-python` next to this
/// executable. Building it (a venv, pip install of the SDK's dependencies) takes up to minutes, so
/// it is built once, by the first neko that needs it, and kept across runs of the bench.
pub fn python_env_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("neko-bench-python"))
}

/// A `neko serve --port 0` in a temporary folder of its own (plugins, settings, data, log).
/// Dropping it stops neko: SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub struct Neko {
    child: Child,
    /// `http://127.0.0.1:PORT`, from neko's first stdout line.
    pub base: String,
    /// The admin bearer token, from neko's second stdout line (for `GET /server/info`).
    pub admin_token: String,
    /// Taken just before the process was spawned.
    pub spawned_at: Instant,
    /// neko's stderr (its log), shown when it dies.
    log: PathBuf,
    // Dropped after `Drop::drop` has stopped the process.
    _dir: tempfile::TempDir,
}

/// How long a SIGTERM'd neko gets to stop its plugins before it is SIGKILL'd.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Neko {
    /// Spawns `neko_bin` with `plugins` (the echo copies run the `neko-plugin-echo` binary neko
    /// finds next to itself; pybench runs in the shared [`python_env_dir`]) and built-in settings
    /// except `max_restarts`, and returns once neko has printed the address it listens on.
    pub async fn spawn(
        neko_bin: &Path,
        plugins: Plugins,
        max_restarts: u32,
        persist: bool,
    ) -> Result<Neko> {
        let dir = tempfile::Builder::new().prefix("neko-bench").tempdir()?;
        let plugins_dir = dir.path().join("plugins");
        for id in Plugins::echo(plugins.echo).ids() {
            let folder = plugins_dir.join(&id);
            std::fs::create_dir_all(&folder)?;
            let manifest = format!(
                "[plugin]\nid = \"{id}\"\nruntime = \"native\"\ncommand = \"neko-plugin-echo\"\n"
            );
            std::fs::write(folder.join("plugin.toml"), manifest)?;
        }
        let pybench = Plugins {
            echo: 0,
            pybench: plugins.pybench,
        };
        for id in pybench.ids() {
            // The folder name is the Python package: entry = "plugins.<id>:PyBench".
            let folder = plugins_dir.join(&id);
            std::fs::create_dir_all(&folder)?;
            for (name, content) in PYBENCH_FILES {
                let content = match name {
                    "plugin.toml" => content
                        .replace("id = \"pybench\"", &format!("id = \"{id}\""))
                        .replace("plugins.pybench:", &format!("plugins.{id}:")),
                    _ => content.to_string(),
                };
                std::fs::write(folder.join(name), content)?;
            }
        }
        let env_dir = python_env_dir()?;
        // A JSON string is a valid TOML basic string (same escapes), whatever the path holds.
        let env_dir = serde_json::to_string(
            env_dir
                .to_str()
                .with_context(|| format!("{} is not UTF-8", env_dir.display()))?,
        )?;
        let config = dir.path().join("neko.toml");
        let settings = format!(
            "# neko-bench: the built-in defaults (config/neko.toml), except that the restart figure\n\
             # kills the plugin more often than the default max_restarts = 5 per minute allows,\n\
             # that every neko the bench starts shares one Python environment, built once, that\n\
             # --no-persist turns the run store off, and that the message plane takes free ports\n\
             # (store_maxlen is the default, fixed for the plane figure).\n\
             [restart_policy]\nmax_restarts = {max_restarts}\n\n\
             [python]\nenv_dir = {env_dir}\n\n\
             [runs]\npersist = {persist}\n\n\
             [message_plane]\nrpc_endpoint = \"tcp://127.0.0.1:0\"\n\
             pub_endpoint = \"tcp://127.0.0.1:0\"\ningest_endpoint = \"tcp://127.0.0.1:0\"\n\
             store_maxlen = {STORE_MAXLEN}\n"
        );
        std::fs::write(&config, settings)?;
        let log = dir.path().join("neko.log");
        let mut cmd = Command::new(neko_bin);
        cmd.args(["serve", "--port", "0", "--config"])
            .arg(&config)
            .arg("--plugins-dir")
            .arg(&plugins_dir)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe. PDEATHSIG stops neko should the bench be SIGKILL'd (then no Drop
        // runs); it fires when the spawning thread exits, and neko is spawned from the main future,
        // which runs on the main thread for the bench's whole life.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", neko_bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // From here on the guard owns the process.
        let mut neko = Neko {
            child,
            base: String::new(),
            admin_token: String::new(),
            spawned_at,
            log,
            _dir: dir,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // neko prints its address, then its admin token, together.
            if let (Some(Ok(address)), Some(Ok(token))) = (lines.next(), lines.next()) {
                let _ = tx.send((address, token));
            }
            // Keep draining so neko never blocks on a full pipe.
            for _ in lines {}
        });
        let (address, token) = match tokio::time::timeout(WAIT_TIMEOUT, rx).await {
            Ok(Ok(lines)) => lines,
            Ok(Err(_)) => bail!(
                "neko closed stdout before printing its address and token{}",
                neko.log_tail()
            ),
            Err(_) => bail!("neko printed no address and token within {WAIT_TIMEOUT:?}"),
        };
        let after = |line: &str, prefix: &str| {
            line.strip_prefix(prefix)
                .map(str::to_string)
                .with_context(|| format!("unexpected line from neko: {line:?}"))
        };
        neko.base = after(&address, "neko listening on ")?;
        neko.admin_token = after(&token, "admin token: ")?;
        Ok(neko)
    }

    /// An error (with the end of neko's log) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("neko died ({status}){}", self.log_tail()),
        }
    }

    /// neko's resident memory (`VmRSS` in `/proc/<pid>/status`), in MiB.
    pub fn rss_mib(&self) -> Result<f64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))?;
        Ok(kib / 1024.0)
    }

    /// CPU time neko itself has used so far (user + system, not its children), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no field {} in {path}", i + 3))
        };
        // SAFETY: sysconf(3) reads a constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((ticks(11)? + ticks(12)?) / per_second)
    }

    /// The last lines of neko's log, ready to append to an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("\n--- end of neko's log ---\n{tail}")
    }
}

impl Drop for Neko {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = send_signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// kill(2).
pub fn send_signal(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Calls `probe` until it yields a value, with a `yield_now` between tries (tight polling, as
/// neko has no server-side wait). Fails after [`WAIT_TIMEOUT`], or at once when `neko` has died.
pub async fn wait_for<T, F, Fut>(neko: Option<&mut Neko>, what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(neko, what, WAIT_TIMEOUT, probe).await
}

/// [`wait_for`] with another bound than [`WAIT_TIMEOUT`], for waits known to take longer.
pub async fn wait_for_within<T, F, Fut>(
    mut neko: Option<&mut Neko>,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if let Some(neko) = neko.as_deref_mut() {
            neko.ensure_running()?;
        }
        if Instant::now() > deadline {
            bail!("waited {timeout:?} for {what} in vain");
        }
        tokio::task::yield_now().await;
    }
}

/// A client of the reference REST API. Each instance has its own connection pool, so concurrent
/// clients each keep their own keep-alive connection.
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Api> {
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Sends a request; a non-2xx answer is an error carrying the status and body.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req.send().await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            );
        }
        Ok(resp.json().await?)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
            .with_context(|| format!("GET {path}"))
    }

    /// Whether `GET /health` answers 200.
    pub async fn healthy(&self) -> bool {
        self.get("/health").await.is_ok()
    }

    /// `GET /plugins` → the `plugins` list.
    pub async fn plugins(&self) -> Result<Vec<Value>> {
        match self.get("/plugins").await? {
            Value::Object(mut body) => match body.remove("plugins") {
                Some(Value::Array(list)) => Ok(list),
                _ => bail!("GET /plugins: no `plugins` list"),
            },
            _ => bail!("GET /plugins: not a JSON object"),
        }
    }

    /// Whether every plugin in `ids` is `running`.
    pub async fn all_running(&self, ids: &[String]) -> bool {
        let Ok(list) = self.plugins().await else {
            return false;
        };
        ids.iter().all(|id| {
            list.iter()
                .any(|p| p["id"] == **id && p["status"] == "running")
        })
    }

    /// Plugin `id`'s record in `GET /plugins`, if it is listed (and the server answered).
    pub async fn plugin(&self, id: &str) -> Option<Value> {
        let list = self.plugins().await.ok()?;
        list.into_iter().find(|p| p["id"] == id)
    }

    /// The pid of plugin `id` if it is `running`.
    pub async fn running_pid(&self, id: &str) -> Option<u32> {
        let p = self.plugin(id).await?;
        if p["status"] != "running" {
            return None;
        }
        p["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok())
    }

    /// `message_plane` of `GET /server/info` (admin): bound endpoints and the plane's counters.
    pub async fn message_plane(&self, admin_token: &str) -> Result<Value> {
        let url = format!("{}/server/info", self.base);
        let mut info = self
            .send(self.client.get(url).bearer_auth(admin_token))
            .await
            .context("GET /server/info")?;
        match info.get_mut("message_plane").map(Value::take) {
            Some(plane @ Value::Object(_)) => Ok(plane),
            _ => bail!("GET /server/info: no `message_plane` object"),
        }
    }

    /// A run of `plugin`/`entry` with the arguments the run figures use; see [`Api::run_with`].
    pub async fn run(&self, plugin: &str, entry: &str) -> Result<Duration> {
        let (latency, _) = self.run_with(plugin, entry, json!({"bench": true})).await?;
        Ok(latency)
    }

    /// `POST /runs` with `wait_ms` (neko answers with the terminal record), then, if the server
    /// answered `queued` (the reference ignores `wait_ms`), `GET /runs/{id}?wait_ms=` back to
    /// back until the run is terminal. Returns the time from sending the POST to receiving the
    /// first terminal record, and that record; a run that ends in any state but `succeeded` is an
    /// error. Each request may take `wait_ms` plus [`HTTP_TIMEOUT`], so a run that lasts longer
    /// than [`HTTP_TIMEOUT`] (the plane figure's pushes) is not cut short.
    pub async fn run_with(
        &self,
        plugin: &str,
        entry: &str,
        args: Value,
    ) -> Result<(Duration, Value)> {
        let started = Instant::now();
        let wait_ms = WAIT_TIMEOUT.as_millis() as u64;
        let request_timeout = WAIT_TIMEOUT + HTTP_TIMEOUT;
        let body =
            json!({"plugin_id": plugin, "entry_id": entry, "args": args, "wait_ms": wait_ms});
        let post = self.client.post(format!("{}/runs", self.base));
        let mut record = self
            .send(post.json(&body).timeout(request_timeout))
            .await
            .context("POST /runs")?;
        let run_id = record["run_id"]
            .as_str()
            .with_context(|| format!("POST /runs answered no run_id: {record}"))?
            .to_string();
        let url = format!("{}/runs/{run_id}?wait_ms={wait_ms}", self.base);
        loop {
            match record["status"].as_str() {
                Some("succeeded") => return Ok((started.elapsed(), record)),
                Some("queued" | "running") => {}
                Some(status @ ("failed" | "timeout" | "canceled")) => {
                    bail!("run ended {status}: {}", record["error"])
                }
                _ => bail!("GET /runs/{run_id}: unexpected record {record}"),
            }
            if started.elapsed() > WAIT_TIMEOUT {
                bail!("run {run_id} still not finished after {WAIT_TIMEOUT:?}");
            }
            tokio::task::yield_now().await;
            record = self
                .send(self.client.get(&url).timeout(request_timeout))
                .await
                .with_context(|| format!("GET /runs/{run_id}"))?;
        }
    }
}
