//! The plugin's OS process: find the program (building it first if plugin.toml says how), spawn it
//! in its own process group with PDEATHSIG, forward its output into `tracing`, reap it, signal it.
//!
//! Linux-only by design for now (process groups, `prctl`); see DESIGN.md.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::LazyLock;

use dashmap::DashMap;

use crate::plugin_logs::PluginLogWriter;
use neko_protocol::PluginId;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Every plugin process group alive, by pgid. Hosts own their processes; this map is only the
/// safety net that lets the tree kill every group when a supervisor actor fails (ractor skips
/// `post_stop` then) and when neko exits.
static LIVE_GROUPS: LazyLock<DashMap<u32, PluginId>> = LazyLock::new(DashMap::new);

/// Kills every plugin process group still alive (SIGKILL). Returns how many were signalled.
pub fn kill_all_groups() -> usize {
    let pgids: Vec<u32> = LIVE_GROUPS.iter().map(|e| *e.key()).collect();
    for pgid in &pgids {
        signal_group(*pgid, libc::SIGKILL);
    }
    pgids.len()
}

/// A spawned plugin process with the tasks reading its output.
pub struct Spawned {
    pub child: tokio::process::Child,
    /// Its last output lines.
    pub tail: Tail,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Spawns the task that reaps the process, forgets its group, and hands the status to `on_exit`
/// once the process's output is read to the end (so `tail` is complete).
pub fn reap(spawned: Spawned, on_exit: impl FnOnce(std::io::Result<ExitStatus>) + Send + 'static) {
    let Spawned {
        mut child, readers, ..
    } = spawned;
    let pgid = child.id();
    tokio::spawn(async move {
        let status = child.wait().await;
        // A grandchild may hold the pipes open: wait for EOF only briefly.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            futures::future::join_all(readers),
        )
        .await;
        if let Some(pgid) = pgid {
            // Take down anything the plugin left in its group, then forget the group.
            signal_group(pgid, libc::SIGKILL);
            LIVE_GROUPS.remove(&pgid);
        }
        on_exit(status);
    });
}

/// What to execute for one launch.
#[derive(Clone)]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Extra environment (the `NEKO_*` variables, including the secret).
    pub env: Vec<(String, String)>,
    /// The rlimits set in the child before exec.
    pub limits: ResourceLimits,
}

/// A plugin's resource limits: `[limits]` in neko's settings, overridden per plugin by the same
/// keys in plugin.toml's `[plugin_runtime]`. 0 means "no limit" (for `max_open_files`: keep the
/// limit neko itself runs with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceLimits {
    /// `RLIMIT_DATA` in MiB: the process's private writable memory (heap, anonymous mmaps, thread
    /// stacks), not its address space. See DESIGN.md "Resource limits" for why not `RLIMIT_AS`.
    pub max_memory_mb: u64,
    /// `RLIMIT_NOFILE` (soft and hard): the highest file descriptor number + 1.
    pub max_open_files: u64,
    /// Frames per second the plugin may send on its protocol link (counted by its host).
    pub max_message_rate: u64,
}

impl ResourceLimits {
    /// These limits with each key `overrides` sets replaced.
    pub fn with_overrides(self, overrides: &LimitOverrides) -> Self {
        Self {
            max_memory_mb: overrides.max_memory_mb.unwrap_or(self.max_memory_mb),
            max_open_files: overrides.max_open_files.unwrap_or(self.max_open_files),
            max_message_rate: overrides.max_message_rate.unwrap_or(self.max_message_rate),
        }
    }

    /// The rlimits to set in the child, as `(resource, value)`, computed in the parent (so the
    /// child between fork and exec only calls `setrlimit`). A value above the hard limit neko runs
    /// under is lowered to it (raising a hard limit needs privileges), with a warning.
    fn rlimits(&self, plugin_id: &PluginId) -> Vec<(RlimitResource, libc::rlim_t, &'static str)> {
        let mut out = Vec::new();
        let wanted = [
            (
                libc::RLIMIT_DATA,
                self.max_memory_mb.saturating_mul(1024 * 1024),
                "max_memory_mb",
            ),
            (libc::RLIMIT_NOFILE, self.max_open_files, "max_open_files"),
        ];
        for (resource, value, key) in wanted {
            if value == 0 {
                continue;
            }
            let mut value = value as libc::rlim_t;
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass; nothing else is touched.
            if unsafe { libc::getrlimit(resource, &mut current) } == 0
                && current.rlim_max != libc::RLIM_INFINITY
                && value > current.rlim_max
            {
                tracing::warn!(plugin_id = %plugin_id, limit = key, wanted = value, hard_limit = current.rlim_max, "resource limit above neko's own hard limit; using the hard limit");
                value = current.rlim_max;
            }
            out.push((resource, value, key));
        }
        out
    }
}

/// The limit keys a plugin's `[plugin_runtime]` sets (`None`: the `[limits]` default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitOverrides {
    pub max_memory_mb: Option<u64>,
    pub max_open_files: Option<u64>,
    pub max_message_rate: Option<u64>,
}

#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

// The spec carries the per-launch secret in `env`: never print it.
impl std::fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

/// Finds a native plugin's program: a path with a `/` is taken relative to the plugin folder; a
/// bare name is looked up next to the neko binary, then in the plugin folder, then on `PATH`.
pub fn resolve_program(command: &str, plugin_dir: &Path) -> Option<PathBuf> {
    if command.contains('/') {
        let p = plugin_dir.join(command);
        return is_executable(&p).then_some(p);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    exe_dir
        .into_iter()
        .chain(std::iter::once(plugin_dir.to_path_buf()))
        .chain(path_dirs)
        .map(|d| d.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a plugin's `build` command in its folder, its output going to the log.
pub async fn run_build(plugin_id: &PluginId, build: &[String], cwd: &Path) -> Result<(), String> {
    tracing::info!(plugin_id = %plugin_id, command = ?build, "building plugin (first start)");
    run_tool(plugin_id, "build", build, cwd, &[]).await?;
    tracing::info!(plugin_id = %plugin_id, "plugin build finished");
    Ok(())
}

/// Runs a helper command (a build, pip) to completion, its output going to the log tagged with
/// `source`. On failure the error carries the command's last output lines.
pub async fn run_tool(
    plugin_id: &PluginId,
    source: &'static str,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err(format!("empty {source} command"));
    };
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run {argv:?}: {e}"))?;
    let tail = Tail::default();
    let readers = forward_output(plugin_id, &mut child, source, Some(tail.clone()), None);
    let status = child
        .wait()
        .await
        .map_err(|e| format!("{argv:?} failed: {e}"))?;
    // The output is complete only once both pipes reached EOF.
    for r in readers {
        let _ = r.await;
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{argv:?} failed ({}): {}",
            describe_exit(&status),
            tail.text()
        ))
    }
}

/// The last lines a process printed, for error messages (why a start failed).
#[derive(Clone, Default)]
pub struct Tail(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Tail {
    const LINES: usize = 12;

    fn push(&self, line: &str) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == Self::LINES {
                q.pop_front();
            }
            q.push_back(line.to_string());
        }
    }

    fn text(&self) -> String {
        self.last(Self::LINES)
    }

    /// The last lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` lines, joined with ` | `.
    pub fn last(&self, n: usize) -> String {
        self.0
            .lock()
            .map(|q| {
                let skip = q.len().saturating_sub(n);
                q.iter().skip(skip).cloned().collect::<Vec<_>>().join(" | ")
            })
            .unwrap_or_default()
    }
}

/// Spawns the plugin process in its own process group, with stdin closed and stdout/stderr
/// forwarded into the log (and into `log_file` when given). The caller must hand the child to
/// [`reap`].
pub fn spawn(
    plugin_id: &PluginId,
    spec: &LaunchSpec,
    log_file: Option<PluginLogWriter>,
) -> std::io::Result<Spawned> {
    let supervisor_pid = std::process::id() as libc::pid_t;
    let rlimits: Vec<(RlimitResource, libc::rlim_t)> = spec
        .limits
        .rlimits(plugin_id)
        .into_iter()
        .map(|(resource, value, _)| (resource, value))
        .collect();
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so stop and kill reach every process the plugin started.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid, setrlimit, _exit); `rlimits` was allocated before the fork and is
    // only read.
    unsafe {
        cmd.pre_exec(move || {
            // Resource limits (soft = hard, so the plugin cannot raise them again).
            for &(resource, value) in &rlimits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Die with the supervisor, even when it is SIGKILLed and cannot clean up.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != supervisor_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        LIVE_GROUPS.insert(pid, plugin_id.clone());
    }
    let tail = Tail::default();
    let readers = forward_output(
        plugin_id,
        &mut child,
        "plugin",
        Some(tail.clone()),
        log_file,
    );
    Ok(Spawned {
        child,
        tail,
        readers,
    })
}

/// Sends `signal` to the whole process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid addresses a process group; no memory is involved.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, error = %err, "could not signal plugin process group");
        }
    }
}

/// Exit code (EX_CONFIG) with which a plugin says before its HELLO that it cannot start as
/// configured (import error, syntax error, bad entry): restarting would fail the same way.
pub const EXIT_CANNOT_START: i32 = 78;

/// A short text for an exit status: `exit code 3`, `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        _ => "unknown exit".to_string(),
    }
}

/// A resource limit a plugin ran into, as its status and the log show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit {
    /// The setting: `max_memory_mb`, `max_open_files` or `max_message_rate`.
    pub key: &'static str,
    /// Its configured value.
    pub limit: u64,
    /// What was seen: a count and a time, or the line the process died with.
    pub observed: String,
    /// False when only the manner of death (a signal) points at the limit.
    pub certain: bool,
}

impl LimitHit {
    /// `exceeded max_memory_mb (limit 64 MiB): MemoryError`.
    pub fn text(&self) -> String {
        let unit = match self.key {
            "max_memory_mb" => " MiB",
            "max_message_rate" => " msgs/s",
            _ => "",
        };
        let maybe = if self.certain { "" } else { "possibly " };
        format!(
            "{maybe}exceeded {} (limit {}{unit}): {}",
            self.key, self.limit, self.observed
        )
    }
}

/// What a process prints when an allocation failed (Python, Rust, C++, Go, Node, libc).
const OUT_OF_MEMORY_MARKERS: &[&str] = &[
    "memoryerror",
    "memory allocation of",
    "out of memory",
    "cannot allocate memory",
    "bad_alloc",
    "failed to allocate",
    "enomem",
];

/// Whether an abnormal exit looks like the work of one of `limits` (set rlimits only), judging by
/// the process's last output lines and the signal that ended it. An allocation refused under
/// `RLIMIT_DATA` shows up as the runtime's out-of-memory error (Python `MemoryError`, Rust
/// "memory allocation of N bytes failed" + SIGABRT, ...); EMFILE as "Too many open files".
pub fn limit_exit_cause(
    limits: &ResourceLimits,
    status: &ExitStatus,
    output: &[String],
) -> Option<LimitHit> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return None;
    }
    let clip = |line: &str| -> String {
        const MAX: usize = 200;
        match line.char_indices().nth(MAX) {
            Some((i, _)) => format!("{}…", &line[..i]),
            None => line.to_string(),
        }
    };
    let find = |markers: &[&str]| {
        output.iter().rev().find(|line| {
            let lower = line.to_ascii_lowercase();
            markers.iter().any(|m| lower.contains(m))
        })
    };
    if limits.max_open_files > 0
        && let Some(line) = find(&["too many open files", "emfile"])
    {
        return Some(LimitHit {
            key: "max_open_files",
            limit: limits.max_open_files,
            observed: clip(line.trim()),
            certain: true,
        });
    }
    if limits.max_memory_mb > 0 {
        if let Some(line) = find(OUT_OF_MEMORY_MARKERS) {
            return Some(LimitHit {
                key: "max_memory_mb",
                limit: limits.max_memory_mb,
                observed: clip(line.trim()),
                certain: true,
            });
        }
        // A failed allocation that printed nothing: abort() (Rust, C++), or a crash on the null
        // pointer a C allocator returned.
        if let Some(sig @ (libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)) = status.signal() {
            return Some(LimitHit {
                key: "max_memory_mb",
                limit: limits.max_memory_mb,
                observed: format!("died by {}, as a failed allocation may", signal_name(sig)),
                certain: false,
            });
        }
    }
    None
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// The level a plugin's plain output lines get, in neko's log and in the plugin's log file alike:
/// neither stream says how serious a line is (Python's logging, for one, writes everything to
/// stderr). A line that says its own level (the SDKs' and the reference's log formats) is kept as
/// printed in the file and logged at WARN or ERROR when it says so; never below INFO, so neko's
/// filter hides nothing a plugin chose to print.
const OUTPUT_LEVEL: tracing::Level = tracing::Level::INFO;

fn output_level(own: Option<&str>) -> tracing::Level {
    match own {
        Some("ERROR" | "CRITICAL" | "FATAL") => tracing::Level::ERROR,
        Some("WARNING" | "WARN") => tracing::Level::WARN,
        _ => OUTPUT_LEVEL,
    }
}

/// Forwards each line of the child's stdout and stderr to `tracing`, tagged with the plugin id
/// (and into `tail` and `log_file` when given). Returns the two reader tasks.
fn forward_output(
    plugin_id: &PluginId,
    child: &mut tokio::process::Child,
    what: &'static str,
    tail: Option<Tail>,
    log_file: Option<PluginLogWriter>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(tokio::spawn(forward_lines(
            plugin_id.clone(),
            out,
            what,
            "stdout",
            tail.clone(),
            log_file.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(tokio::spawn(forward_lines(
            plugin_id.clone(),
            err,
            what,
            "stderr",
            tail,
            log_file,
        )));
    }
    tasks
}

async fn forward_lines(
    plugin_id: PluginId,
    mut stream: impl AsyncRead + Unpin,
    what: &'static str,
    stream_name: &'static str,
    tail: Option<Tail>,
    log_file: Option<PluginLogWriter>,
) {
    // Read raw bytes, not `lines()`: a plugin that prints invalid UTF-8 or one endless line must
    // neither stop the forwarding (its pipe would fill and block it) nor grow memory without bound.
    const MAX_LINE: usize = 16 * 1024;
    let emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if let Some(t) = &tail {
            t.push(text);
        }
        let own = crate::plugin_logs::own_level(text);
        if let Some(f) = &log_file {
            f.write_line(OUTPUT_LEVEL.as_str(), text, own.is_some());
        }
        // `tracing` wants a constant level per call site.
        match output_level(own.as_deref()) {
            tracing::Level::ERROR => {
                tracing::event!(target: "neko::plugin_output", tracing::Level::ERROR, plugin_id = %plugin_id, source = what, stream = stream_name, "{text}")
            }
            tracing::Level::WARN => {
                tracing::event!(target: "neko::plugin_output", tracing::Level::WARN, plugin_id = %plugin_id, source = what, stream = stream_name, "{text}")
            }
            _ => {
                tracing::event!(target: "neko::plugin_output", OUTPUT_LEVEL, plugin_id = %plugin_id, source = what, stream = stream_name, "{text}")
            }
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            emit(&line[..line.len() - 1]);
        }
        if buf.len() > MAX_LINE {
            emit(&buf);
            buf.clear();
        }
        // One write to the file per burst of output, not per line.
        if let Some(f) = &log_file {
            f.flush();
        }
    }
    if !buf.is_empty() {
        emit(&buf);
    }
    if let Some(f) = &log_file {
        f.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit_code(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed_by(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    /// A plugin's keys replace the defaults one by one; 0 stays 0 ("no limit").
    #[test]
    fn overrides_replace_defaults_key_by_key() {
        let defaults = ResourceLimits {
            max_memory_mb: 0,
            max_open_files: 4096,
            max_message_rate: 20_000,
        };
        assert_eq!(
            defaults.with_overrides(&LimitOverrides::default()),
            defaults
        );
        let merged = defaults.with_overrides(&LimitOverrides {
            max_memory_mb: Some(128),
            max_open_files: None,
            max_message_rate: Some(0),
        });
        assert_eq!(
            merged,
            ResourceLimits {
                max_memory_mb: 128,
                max_open_files: 4096,
                max_message_rate: 0,
            }
        );
    }

    /// Only set limits become rlimits; memory in bytes; nothing above neko's own hard limit.
    #[test]
    fn rlimits_cover_set_limits_only() {
        let id = PluginId::new("x").unwrap();
        assert!(ResourceLimits::default().rlimits(&id).is_empty());
        let set = ResourceLimits {
            max_memory_mb: 64,
            max_open_files: 32,
            max_message_rate: 10,
        }
        .rlimits(&id);
        assert_eq!(
            set,
            vec![
                (libc::RLIMIT_DATA, 64 * 1024 * 1024, "max_memory_mb"),
                (libc::RLIMIT_NOFILE, 32, "max_open_files"),
            ]
        );
        let mut hard = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
            0
        );
        if hard.rlim_max != libc::RLIM_INFINITY {
            let huge = ResourceLimits {
                max_open_files: u64::MAX,
                ..Default::default()
            }
            .rlimits(&id);
            assert_eq!(huge[0].1, hard.rlim_max);
        }
    }

    /// The child runs under the rlimits (checked with the shell's `ulimit`).
    #[tokio::test]
    async fn spawned_process_runs_under_the_limits() {
        let id = PluginId::new("limited").unwrap();
        let spec = LaunchSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "ulimit -n; ulimit -d".into()],
            cwd: std::env::temp_dir(),
            env: Vec::new(),
            limits: ResourceLimits {
                max_memory_mb: 100,
                max_open_files: 50,
                max_message_rate: 0,
            },
        };
        let spawned = spawn(&id, &spec, None).unwrap();
        let tail = spawned.tail.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        reap(spawned, move |status| {
            let _ = tx.send(status);
        });
        let status = rx.await.unwrap().unwrap();
        assert!(status.success());
        // `ulimit -d` is in KiB.
        assert_eq!(tail.lines(), vec!["50".to_string(), "102400".to_string()]);
    }

    /// Exits are blamed on a limit only with evidence, and only when that limit is set.
    #[test]
    fn limit_exit_cause_needs_the_limit_and_evidence() {
        let mem = ResourceLimits {
            max_memory_mb: 64,
            ..Default::default()
        };
        let py = lines(&["Traceback (most recent call last):", "MemoryError"]);
        let hit = limit_exit_cause(&mem, &exit_code(1), &py).unwrap();
        assert_eq!(
            hit.text(),
            "exceeded max_memory_mb (limit 64 MiB): MemoryError"
        );
        let rust = lines(&["memory allocation of 1073741824 bytes failed"]);
        let hit = limit_exit_cause(&mem, &killed_by(libc::SIGABRT), &rust).unwrap();
        assert!(hit.certain);
        assert_eq!(hit.observed, "memory allocation of 1073741824 bytes failed");
        // A silent abort is only "possibly" the limit.
        let hit = limit_exit_cause(&mem, &killed_by(libc::SIGABRT), &[]).unwrap();
        assert!(!hit.certain);
        assert!(hit.text().starts_with("possibly exceeded max_memory_mb"));
        // No limit set, a clean exit, or no evidence: no blame.
        assert_eq!(
            limit_exit_cause(&ResourceLimits::default(), &exit_code(1), &py),
            None
        );
        assert_eq!(limit_exit_cause(&mem, &exit_code(0), &py), None);
        assert_eq!(
            limit_exit_cause(&mem, &exit_code(3), &lines(&["bad config"])),
            None
        );
        assert_eq!(limit_exit_cause(&mem, &killed_by(libc::SIGKILL), &[]), None);
        // EMFILE, with max_open_files set.
        let files = ResourceLimits {
            max_open_files: 32,
            ..Default::default()
        };
        let emfile = lines(&["OSError: [Errno 24] Too many open files: '/dev/null'"]);
        assert_eq!(
            limit_exit_cause(&files, &exit_code(1), &emfile)
                .unwrap()
                .text(),
            "exceeded max_open_files (limit 32): OSError: [Errno 24] Too many open files: '/dev/null'"
        );
        assert_eq!(limit_exit_cause(&mem, &exit_code(1), &emfile), None);
        // Long lines are clipped.
        let long = lines(&[&format!("MemoryError {}", "x".repeat(500))]);
        let hit = limit_exit_cause(&mem, &exit_code(1), &long).unwrap();
        assert!(hit.observed.chars().count() <= 201, "{}", hit.observed);
    }
}
