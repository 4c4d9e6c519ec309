//! The plugin's OS process: find the program (building it first if plugin.toml says how), spawn it
//! in its own process group with PDEATHSIG, forward its output into `tracing`, reap it, signal it.
//!
//! Linux-only by design for now (process groups, `prctl`); see DESIGN.md.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::LazyLock;

use dashmap::DashMap;

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
}

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
    let readers = forward_output(plugin_id, &mut child, source, Some(tail.clone()));
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
/// forwarded into the log. The caller must hand the child to [`reap`].
pub fn spawn(plugin_id: &PluginId, spec: &LaunchSpec) -> std::io::Result<Spawned> {
    let supervisor_pid = std::process::id() as libc::pid_t;
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
    // functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
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
    let readers = forward_output(plugin_id, &mut child, "plugin", Some(tail.clone()));
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

/// Forwards each line of the child's stdout and stderr to `tracing`, tagged with the plugin id
/// (and into `tail` when given). Returns the two reader tasks.
fn forward_output(
    plugin_id: &PluginId,
    child: &mut tokio::process::Child,
    what: &'static str,
    tail: Option<Tail>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(tokio::spawn(forward_lines(
            plugin_id.clone(),
            out,
            what,
            "stdout",
            tail.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(tokio::spawn(forward_lines(
            plugin_id.clone(),
            err,
            what,
            "stderr",
            tail,
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
        tracing::info!(target: "neko::plugin_output", plugin_id = %plugin_id, source = what, stream = stream_name, "{text}");
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
    }
    if !buf.is_empty() {
        emit(&buf);
    }
}
