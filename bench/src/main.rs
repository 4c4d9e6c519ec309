//! `neko-bench`: drives a real neko (or any server with the reference REST API) and prints a table
//! of figures, each with the machine's core count and the command that reproduces it.
//!
//! ```text
//! cargo build --release --workspace && target/release/neko-bench            # every figure
//! target/release/neko-bench --json                                           # the same, as JSON
//! target/release/neko-bench --only seq --seq-runs 500                        # one figure
//! target/release/neko-bench --only plane                                     # the message plane
//! target/release/neko-bench --url http://127.0.0.1:48916 --plugin echo --entry echo
//! ```
//!
//! By default it starts `neko serve --port 0` itself (the `neko` next to this executable, or
//! `--neko PATH`; build both with the same profile) in a temporary folder with copies of the echo
//! plugin (and, for the Python figures, the bench's Python plugin `bench/plugins/pybench`, embedded
//! in this binary), and stops it at the end. With `--url` it drives a server that is already
//! running and skips the figures that spawn or kill processes (`cold`, `scale`, `restart`,
//! `py-cold`), the Python run figures, whose plugin it cannot install there (measure a Python
//! entry of that server with `--plugin`/`--entry` and `seq`/`concurrent` instead), and `plane`.
//!
//! Python plugins run in a venv neko builds; every neko the bench starts shares one,
//! `neko-bench-python` next to this executable. Before the first Python figure the bench starts
//! neko once, unmeasured, to build or check it (the first time: a minute or more of pip), so no
//! figure includes building the environment.
//!
//! Figures (`--only` picks some):
//! - `cold`: spawn → `/health` answers 200, and → the echo plugin is `running` in `/plugins`.
//! - `scale`: spawn → all `--scale` copies of the echo plugin are `running` (a row per count).
//! - `idle`: neko's RSS and its own CPU use with `--idle` echo plugins and `--idle-python` Python
//!   plugins running and nothing else happening (a neko per count; see [`idle`]).
//! - `restart`: `kill -9` of the echo plugin's pid → a run of its `echo` entry succeeds again. Kills
//!   are spaced by neko's default `start_window_ms` so each one is a crash after running, which
//!   restarts after the default `backoff_initial_ms` (200 ms ± 20 % jitter).
//! - `seq`: POST /runs → first GET /runs/{id} showing a terminal state, one run at a time.
//! - `concurrent`: the same with `--clients` clients (one HTTP client each) for `--duration` s.
//! - `py-cold`: as `cold`, with the pybench plugin alone: spawn → `/health` 200, and → pybench is
//!   `running` (its Python process started, imported the SDK and the plugin, and said HELLO).
//! - `py-seq`, `py-concurrent`: as `seq` and `concurrent`, against pybench's `noop_sync` (a plain
//!   `def`, run on the SDK's thread pool) and `noop_async` (an `async def`, run on its event loop),
//!   one row each, on a neko that has the echo plugin too.
//! - `calls`: plugin-to-plugin call round trips (Rust → Rust between two echo copies, Python →
//!   Python between two pybench copies), timed inside the calling plugin, one at a time and
//!   with each `--call-concurrency` (32 and 128) in flight; see [`plugin_calls`].
//! - `plane`: the message plane, on a neko of its own with echo and pybench (`store_maxlen` 20,000).
//!   Ingest: a run of echo's `push` (Rust SDK, 500,000 messages), then of pybench's `push_fast`
//!   (Python `fast_mode`, 200,000) and `push_normal` (a frame per message, 50,000), each timed from
//!   its POST /runs until the plane's `ingest_accepted` (`GET /server/info`, polled every 10 ms)
//!   has grown by the messages the SDK took; the rate is messages accepted per second, and `fail`
//!   counts the messages the SDK dropped. Queries: `--plane-queries` round trips each of
//!   `bus.get_recent` and `bus.query` (limit 100, store full), one at a time on a DEALER socket
//!   of the bench's own, as a tool outside neko speaks to the RPC endpoint; then as many again
//!   from `--plane-clients` sockets at once. Then `--plane-queries` reads as a Python plugin makes
//!   them (pybench's `bus_get`: `self.ctx.bus.messages.get(max_count=100)` in a loop, timed
//!   inside the plugin: the SDK's request, neko's answer, the SDK's decoding into a list of
//!   records): the call the reference's bus figure names. Last, neko's RSS
//!   (`VmRSS`) with the stores as filled (`n`: the records they hold).
//!
//! Latencies are in ms, percentiles nearest-rank over sorted samples; `per s` is runs, messages
//! or queries per second, as the row says. A run is one `POST /runs` with `wait_ms` (neko
//! answers when the run is terminal); against a server that ignores `wait_ms` (the reference)
//! the bench polls `GET /runs/{id}` back to back, competing with the server for the same cores.
//! `--no-persist` measures neko without its run store. Failed requests are counted and shown;
//! the exit status is non-zero if the server died.

mod neko;
mod skim;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use skim::skim_reply;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use neko::{
    Api, Neko, PYBENCH, Plugins, STORE_MAXLEN, python_env_dir, send_signal, wait_for,
    wait_for_within,
};

/// neko's default `start_window_ms`: a plugin killed sooner after it became ready counts as a
/// failed start, and the restart backoff doubles.
const START_WINDOW: Duration = Duration::from_millis(2_000);
/// Upper bound of the unmeasured start that builds the shared Python environment: creating a venv
/// and pip installing the SDK's dependencies can take minutes on a slow network.
const PYTHON_ENV_TIMEOUT: Duration = Duration::from_secs(300);

/// Benchmarks neko: cold start, restart after a crash, run latency and throughput.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Drive the server at this URL instead of starting neko (skips cold, scale, restart, the
    /// Python figures and plane).
    #[arg(long)]
    url: Option<String>,
    /// The neko binary to start [default: `neko` next to this executable].
    #[arg(long, conflicts_with = "url")]
    neko: Option<PathBuf>,
    /// Plugin whose entry seq and concurrent call (with --url).
    #[arg(long, default_value = "echo", requires = "url")]
    plugin: String,
    /// Entry seq and concurrent call (with --url).
    #[arg(long, default_value = "echo", requires = "url")]
    entry: String,
    /// Figures to measure (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Cold starts per cold-start figure.
    #[arg(long, default_value_t = 5)]
    cold_runs: usize,
    /// Copies of the echo plugin for the scale figure, one row per value.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    scale: Vec<usize>,
    /// Echo plugins of the idle figure, one row per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100, 200])]
    idle: Vec<usize>,
    /// Python (pybench) plugins of the idle figure, one row per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    idle_python: Vec<usize>,
    /// Seconds over which the idle figure measures neko's CPU use.
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Kills for the restart figure.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Runs measured one at a time.
    #[arg(long, default_value_t = 2000)]
    seq_runs: usize,
    /// Unmeasured runs before the run figures.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Concurrent clients, one figure per value.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 32, 128])]
    clients: Vec<usize>,
    /// Seconds each concurrent figure lasts.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Message-plane queries measured per op, one at a time (after --warmup unmeasured ones).
    /// (With 2,000 the 8-client rows lasted a tenth of a second and varied 2× run to run.)
    #[arg(long, default_value_t = 10_000)]
    plane_queries: usize,
    /// Plugin-to-plugin calls measured per row of the calls figure (10,000: a concurrent row
    /// then lasts about a second; shorter rows varied by a third run to run).
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Calls in flight at once in the concurrent rows of the calls figure, one row per value.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 128])]
    call_concurrency: Vec<usize>,
    /// Clients querying the message plane at once in the concurrent query rows of plane.
    #[arg(long, default_value_t = 8)]
    plane_clients: usize,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Start neko with `[runs] persist = false` (runs in memory only), to see what the run store
    /// costs.
    #[arg(long, conflicts_with = "url")]
    no_persist: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Figure {
    Cold,
    Scale,
    Restart,
    Seq,
    Concurrent,
    PyCold,
    PySeq,
    PyConcurrent,
    Plane,
    Calls,
    Idle,
}

impl Figure {
    /// The figures that need a neko the bench starts (skipped with `--url`).
    const SPAWNING: [Figure; 9] = [
        Figure::Cold,
        Figure::Scale,
        Figure::Restart,
        Figure::PyCold,
        Figure::PySeq,
        Figure::PyConcurrent,
        Figure::Plane,
        Figure::Calls,
        Figure::Idle,
    ];
}

impl Args {
    fn wants(&self, figure: Figure) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }

    /// The command line that measures `figure` alone with the same settings (`clients`: the one
    /// client count of a concurrent figure).
    /// Marks the run figures of a neko without its run store.
    fn store_note(&self) -> &'static str {
        if self.no_persist { " (store off)" } else { "" }
    }

    fn command(&self, figure: Figure, clients: Option<usize>) -> String {
        let program = std::env::args()
            .next()
            .unwrap_or_else(|| "neko-bench".into());
        let mut words = vec![program];
        match &self.url {
            Some(url) => words.extend([
                format!("--url {url}"),
                format!("--plugin {}", self.plugin),
                format!("--entry {}", self.entry),
            ]),
            None => words.extend(self.neko.iter().map(|p| format!("--neko {}", p.display()))),
        }
        if self.no_persist {
            words.push("--no-persist".into());
        }
        let name = figure.to_possible_value().expect("no skipped variants");
        words.push(format!("--only {}", name.get_name()));
        words.push(match figure {
            Figure::Cold | Figure::PyCold => format!("--cold-runs {}", self.cold_runs),
            Figure::Scale => format!(
                "--scale {} --cold-runs {}",
                list(&self.scale),
                self.cold_runs
            ),
            Figure::Idle => format!(
                "--idle {} --idle-python {} --idle-secs {}",
                list(&self.idle),
                list(&self.idle_python),
                self.idle_secs
            ),
            Figure::Restart => format!("--kills {}", self.kills),
            Figure::Seq | Figure::PySeq => {
                format!("--seq-runs {} --warmup {}", self.seq_runs, self.warmup)
            }
            Figure::Concurrent | Figure::PyConcurrent => format!(
                "--clients {} --duration {} --warmup {}",
                clients.unwrap_or_default(),
                self.duration,
                self.warmup
            ),
            Figure::Calls => format!(
                "--calls {} --call-concurrency {} --warmup {}",
                self.calls,
                list(&self.call_concurrency),
                self.warmup
            ),
            Figure::Plane => format!(
                "--plane-queries {} --plane-clients {} --warmup {}",
                self.plane_queries, self.plane_clients, self.warmup
            ),
        });
        words.join(" ")
    }
}

/// `1,10,100` for a list option.
fn list(values: &[usize]) -> String {
    values
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Nearest-rank summary of latency samples, in ms.
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Nearest rank: the smallest sample with at least p % of the samples at or below it.
        let rank = |p: f64| {
            let r = (p / 100.0 * samples.len() as f64).ceil() as usize;
            ms(samples[r.clamp(1, samples.len()) - 1])
        };
        Some(Stats {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: ms(samples[samples.len() - 1]),
        })
    }
}

/// Failed attempts: how many, and the first error.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

impl Failures {
    fn record(&mut self, error: &anyhow::Error) {
        self.count += 1;
        self.first.get_or_insert_with(|| format!("{error:#}"));
    }

    fn merge(&mut self, other: Failures) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Latencies and failures of one figure.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    failures: Failures,
}

impl Samples {
    fn add(&mut self, outcome: Result<Duration>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(e) => self.failures.record(&e),
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.failures.merge(other.failures);
    }
}

/// One line of the report.
struct Row {
    name: String,
    /// Latency samples, or what a row without them counts (messages accepted, records held).
    n: usize,
    stats: Option<Stats>,
    /// Successful runs, messages accepted or queries answered per second.
    per_s: Option<f64>,
    /// Memory, for the RSS rows.
    mib: Option<f64>,
    /// neko's CPU use in % of one core, for the idle rows.
    cpu: Option<f64>,
    failures: Failures,
    command: String,
}

/// The figures measured so far, printed even when a later one fails.
struct Report {
    cores: usize,
    rows: Vec<Row>,
}

impl Report {
    /// A row of latency samples; with `elapsed`, the successes per second too.
    fn add(&mut self, name: String, samples: Samples, elapsed: Option<Duration>, command: String) {
        let n = samples.latencies.len();
        self.push(Row {
            name,
            n,
            stats: Stats::new(samples.latencies),
            per_s: elapsed.map(|e| n as f64 / e.as_secs_f64()),
            mib: None,
            cpu: None,
            failures: samples.failures,
            command,
        });
    }

    /// Any row, latency samples or not.
    fn push(&mut self, row: Row) {
        eprintln!("neko-bench: done: {}", row.name);
        self.rows.push(row);
    }

    fn to_json(&self, target: &str) -> Value {
        let figures: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let s = r.stats.as_ref();
                json!({
                    "figure": r.name,
                    "unit": "ms",
                    "n": r.n,
                    "p50": s.map(|s| round2(s.p50)),
                    "p90": s.map(|s| round2(s.p90)),
                    "p99": s.map(|s| round2(s.p99)),
                    "max": s.map(|s| round2(s.max)),
                    "per_s": r.per_s.map(round2),
                    "mib": r.mib.map(round2),
                    "cpu_percent": r.cpu.map(round2),
                    "failures": r.failures.count,
                    "first_failure": r.failures.first,
                    "cores": self.cores,
                    "command": r.command,
                })
            })
            .collect();
        json!({"target": target, "cores": self.cores, "figures": figures})
    }

    fn print_table(&self, target: &str) {
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "neko-bench against {target} ({} cores); latencies in ms, per s: runs, messages or \
             queries",
            self.cores
        );
        let width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(6);
        println!(
            "{:<width$} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>5} {:>5}",
            "figure", "n", "p50", "p90", "p99", "max", "per s", "MiB", "CPU %", "fail", "cores"
        );
        for r in &self.rows {
            let s = r.stats.as_ref();
            // `{:<width$}` counts chars, so names with arrows still line up.
            println!(
                "{:<width$} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>5} {:>5}",
                r.name,
                r.n,
                cell(s.map(|s| s.p50)),
                cell(s.map(|s| s.p90)),
                cell(s.map(|s| s.p99)),
                cell(s.map(|s| s.max)),
                cell(r.per_s),
                cell(r.mib),
                cell(r.cpu),
                r.failures.count,
                self.cores
            );
        }
        if self.rows.is_empty() {
            return;
        }
        println!("\nto reproduce:");
        for r in &self.rows {
            println!("  {:<width$} {}", r.name, r.command);
        }
        for r in self.rows.iter().filter(|r| r.failures.count > 0) {
            let first = r.failures.first.as_deref().unwrap_or_default();
            println!(
                "failures in {}: {} (first: {first})",
                r.name, r.failures.count
            );
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = Report {
        cores,
        rows: Vec::new(),
    };
    let target = match &args.url {
        Some(url) => url.clone(),
        None => "a neko it started".to_string(),
    };
    let outcome = measure(&args, &mut report).await;
    if args.json {
        println!("{:#}", report.to_json(&target));
    } else {
        report.print_table(&target);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neko-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measures the figures `args` asks for, in order, adding them to `report`.
async fn measure(args: &Args, report: &mut Report) -> Result<()> {
    let neko_bin = match &args.url {
        Some(_) => {
            if Figure::SPAWNING.iter().any(|f| args.only.contains(f)) {
                eprintln!(
                    "neko-bench: with --url, cold, scale, restart and the Python figures are skipped"
                );
            }
            None
        }
        None => Some(neko_binary(args)?),
    };
    let spawned = neko_bin.is_some();
    let py_runs = spawned && (args.wants(Figure::PySeq) || args.wants(Figure::PyConcurrent));
    if let Some(bin) = &neko_bin {
        for figure in [Figure::Cold, Figure::Scale] {
            if args.wants(figure) {
                cold_start(args, report, bin, figure).await?;
            }
        }
        if py_runs
            || [Figure::PyCold, Figure::Plane, Figure::Calls, Figure::Idle]
                .iter()
                .any(|&f| args.wants(f))
        {
            prepare_python(bin).await?;
        }
        if args.wants(Figure::PyCold) {
            cold_start(args, report, bin, Figure::PyCold).await?;
        }
        if args.wants(Figure::Plane) {
            message_plane(args, report, bin).await?;
        }
        if args.wants(Figure::Calls) {
            plugin_calls(args, report, bin).await?;
        }
        if args.wants(Figure::Idle) {
            idle(args, report, bin).await?;
        }
    }
    // The entries the run figures call.
    let mut targets = Vec::new();
    if args.wants(Figure::Seq) || args.wants(Figure::Concurrent) {
        targets.push(Target {
            plugin: args.plugin.clone(),
            entry: args.entry.clone(),
            seq: Figure::Seq,
            concurrent: Figure::Concurrent,
        });
    }
    if py_runs {
        targets.extend(["noop_sync", "noop_async"].map(|entry| Target {
            plugin: PYBENCH.to_string(),
            entry: entry.to_string(),
            seq: Figure::PySeq,
            concurrent: Figure::PyConcurrent,
        }));
    }
    let restart = spawned && args.wants(Figure::Restart);
    if targets.is_empty() && !restart {
        return Ok(());
    }
    // The server the remaining figures drive: one echo plugin (the default --plugin), and pybench
    // only when a Python run figure needs it, so the other figures measure what they always did.
    let plugins = Plugins {
        echo: 1,
        pybench: usize::from(py_runs),
    };
    let mut server = match &neko_bin {
        Some(bin) => Some(Neko::spawn(bin, plugins, u32::MAX, !args.no_persist).await?),
        None => None,
    };
    let (base, ids) = match (&server, &args.url) {
        (Some(s), _) => (s.base.clone(), plugins.ids()),
        (None, Some(url)) => (url.clone(), vec![args.plugin.clone()]),
        (None, None) => unreachable!("either spawned or --url"),
    };
    let api = Api::new(&base)?;
    check_alive(&api, server.as_mut()).await?;
    wait_for(server.as_mut(), "the plugins to run", || async {
        api.all_running(&ids).await.then_some(())
    })
    .await?;

    for target in &targets {
        let (plugin, entry) = (target.plugin.as_str(), target.entry.as_str());
        let warmup = drive(&api, plugin, entry, Until::Count(args.warmup)).await;
        check_alive(&api, server.as_mut()).await?;
        if warmup.failures.count > 0 {
            eprintln!(
                "neko-bench: {} of {} warm-up runs of {plugin}/{entry} failed (first: {})",
                warmup.failures.count,
                args.warmup,
                warmup.failures.first.unwrap_or_default()
            );
        }
        if args.wants(target.seq) {
            let started = Instant::now();
            let samples = drive(&api, plugin, entry, Until::Count(args.seq_runs)).await;
            let name = format!("run {plugin}/{entry}, sequential{}", args.store_note());
            let command = args.command(target.seq, None);
            report.add(name, samples, Some(started.elapsed()), command);
            check_alive(&api, server.as_mut()).await?;
        }
        if args.wants(target.concurrent) {
            for &clients in &args.clients {
                concurrent(args, report, &base, target, clients).await?;
                check_alive(&api, server.as_mut()).await?;
            }
        }
    }
    if let (true, Some(server)) = (restart, server.as_mut()) {
        restart_after_kill(args, report, &api, server).await?;
        check_alive(&api, Some(server)).await?;
    }
    Ok(())
}

/// An entry the run figures call, and the figures that measure it.
struct Target {
    plugin: String,
    entry: String,
    /// The figure of its sequential row.
    seq: Figure,
    /// The figure of its concurrent rows.
    concurrent: Figure,
}

/// Starts neko with pybench alone, unmeasured, and waits until pybench runs: the first time,
/// neko builds the shared Python environment (venv, pip install), which no figure should include;
/// later, it only checks the environment's markers.
async fn prepare_python(bin: &Path) -> Result<()> {
    eprintln!(
        "neko-bench: preparing the Python environment in {} (the first time: pip install, a \
         minute or more)",
        python_env_dir()?.display()
    );
    let mut neko = Neko::spawn(bin, Plugins::PYBENCH_ALONE, 5, true).await?;
    let api = Api::new(&neko.base)?;
    let ready = wait_for_within(
        Some(&mut neko),
        "the Python plugin to run (neko building its environment)",
        PYTHON_ENV_TIMEOUT,
        || async {
            match api.plugin(PYBENCH).await {
                Some(p) if p["status"] == "running" => return Some(Ok(())),
                // Down until started by hand (say, no usable python3): waiting is pointless.
                Some(p) if p["status"] == "crashed" || p["status"] == "invalid" => {
                    return Some(Err(anyhow::anyhow!("{PYBENCH} did not start: {p}")));
                }
                _ => {}
            }
            // Not measured: poll gently and leave the cores to pip.
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        },
    )
    .await;
    ready??;
    neko.ensure_running()
}

/// `--neko`, or the `neko` next to this executable; checks that the echo plugin's binary is there.
fn neko_binary(args: &Args) -> Result<PathBuf> {
    let bin = match &args.neko {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("neko"),
    };
    let plugin = bin.with_file_name("neko-plugin-echo");
    if !bin.is_file() || !plugin.is_file() {
        bail!(
            "{} or {} is missing: build with `cargo build --release --workspace` and run \
             target/release/neko-bench (or pass --neko PATH)",
            bin.display(),
            plugin.display()
        );
    }
    Ok(bin)
}

/// An error if the server stopped answering `/health` or the neko we started has exited.
async fn check_alive(api: &Api, server: Option<&mut Neko>) -> Result<()> {
    if let Some(server) = server {
        server.ensure_running()?;
    }
    if !api.healthy().await {
        bail!("the server no longer answers GET /health");
    }
    Ok(())
}

/// `--cold-runs` times: spawn neko with the plugins of `figure` (`cold`, `scale` or `py-cold`),
/// time `/health` 200 (reported for the single-plugin figures) and every plugin `running`, stop
/// neko.
async fn cold_start(args: &Args, report: &mut Report, bin: &Path, figure: Figure) -> Result<()> {
    // The plugins, and the names of the /health row (single-plugin figures) and the running row.
    let (plugins, health_name, running_name) = match figure {
        Figure::Cold => (
            Plugins::echo(1),
            Some("cold start: spawn → /health 200"),
            "cold start: spawn → echo running".to_string(),
        ),
        Figure::Scale => {
            for &n in &args.scale {
                cold_start_of(
                    args,
                    report,
                    bin,
                    figure,
                    Plugins::echo(n),
                    None,
                    format!("cold start: spawn → {n} echo plugins running"),
                )
                .await?;
            }
            return Ok(());
        }
        Figure::PyCold => (
            Plugins::PYBENCH_ALONE,
            Some("cold start: spawn → /health 200 (pybench)"),
            "cold start: spawn → python plugin running".to_string(),
        ),
        _ => unreachable!("{figure:?} is not a cold-start figure"),
    };
    cold_start_of(
        args,
        report,
        bin,
        figure,
        plugins,
        health_name,
        running_name,
    )
    .await
}

/// `--cold-runs` cold starts of neko with `plugins`: rows for /health (when `health_name`) and
/// for every plugin running.
async fn cold_start_of(
    args: &Args,
    report: &mut Report,
    bin: &Path,
    figure: Figure,
    plugins: Plugins,
    health_name: Option<&str>,
    running_name: String,
) -> Result<()> {
    let ids = plugins.ids();
    let (mut health, mut running) = (Samples::default(), Samples::default());
    for _ in 0..args.cold_runs {
        let mut neko = Neko::spawn(bin, plugins, 5, !args.no_persist).await?;
        let api = Api::new(&neko.base)?;
        let healthy = wait_for(Some(&mut neko), "GET /health to answer 200", || async {
            api.healthy().await.then(Instant::now)
        })
        .await;
        health.add(healthy.map(|at| at - neko.spawned_at));
        let all_running = wait_for(Some(&mut neko), "the plugins to run", || async {
            api.all_running(&ids).await.then(Instant::now)
        })
        .await;
        running.add(all_running.map(|at| at - neko.spawned_at));
        // A dead neko is an error, not a sample.
        neko.ensure_running()?;
    }
    let command = args.command(figure, None);
    if let Some(name) = health_name {
        report.add(name.into(), health, None, command.clone());
    }
    report.add(running_name, running, None, command);
    Ok(())
}

/// When a client stops issuing runs.
#[derive(Clone, Copy)]
enum Until {
    Count(usize),
    Time(Instant),
}

/// A client gives up after this many failed runs in a row (the server is likely gone; the caller
/// then checks).
const MAX_FAILURES_IN_A_ROW: usize = 50;

/// One client issuing runs of `plugin`/`entry` one after the other.
async fn drive(api: &Api, plugin: &str, entry: &str, until: Until) -> Samples {
    let mut samples = Samples::default();
    let (mut done, mut failed_in_a_row) = (0, 0);
    while failed_in_a_row < MAX_FAILURES_IN_A_ROW
        && match until {
            Until::Count(n) => done < n,
            Until::Time(end) => Instant::now() < end,
        }
    {
        let outcome = api.run(plugin, entry).await;
        failed_in_a_row = if outcome.is_ok() {
            0
        } else {
            failed_in_a_row + 1
        };
        samples.add(outcome);
        done += 1;
    }
    samples
}

/// `clients` clients, each with its own HTTP client, issuing runs of `target` for `--duration`
/// seconds.
async fn concurrent(
    args: &Args,
    report: &mut Report,
    base: &str,
    target: &Target,
    clients: usize,
) -> Result<()> {
    let apis = (0..clients)
        .map(|_| Api::new(base))
        .collect::<Result<Vec<_>>>()?;
    let figure = target.concurrent;
    let target: Arc<(String, String)> = Arc::new((target.plugin.clone(), target.entry.clone()));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = apis
        .into_iter()
        .map(|api| {
            let target = target.clone();
            tokio::spawn(async move { drive(&api, &target.0, &target.1, Until::Time(end)).await })
        })
        .collect();
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await.context("a client task panicked")?);
    }
    let name = format!(
        "run {}/{}, {clients} clients{}",
        target.0,
        target.1,
        args.store_note()
    );
    let command = args.command(figure, Some(clients));
    report.add(name, samples, Some(started.elapsed()), command);
    Ok(())
}

/// `--kills` times: wait out the start window, `kill -9` the plugin, time until a run succeeds.
async fn restart_after_kill(
    args: &Args,
    report: &mut Report,
    api: &Api,
    server: &mut Neko,
) -> Result<()> {
    let (plugin, entry) = (args.plugin.as_str(), args.entry.as_str());
    let mut samples = Samples::default();
    let mut last_pid = None;
    for i in 0..args.kills {
        eprintln!("neko-bench: restart: kill {}/{}", i + 1, args.kills);
        let pid = wait_for(Some(&mut *server), "the plugin to run again", || async {
            api.running_pid(plugin)
                .await
                .filter(|pid| Some(*pid) != last_pid)
        })
        .await?;
        // Kill only after the start window, so this is a crash after running (initial backoff).
        tokio::time::sleep(START_WINDOW + Duration::from_millis(250)).await;
        send_signal(pid, libc::SIGKILL)?;
        let killed = Instant::now();
        let recovered = wait_for(
            Some(&mut *server),
            "a run to succeed after the kill",
            || async { api.run(plugin, entry).await.ok() },
        )
        .await;
        samples.add(recovered.map(|_| killed.elapsed()));
        server.ensure_running()?;
        last_pid = Some(pid);
    }
    let name = format!("restart: kill -9 → {plugin}/{entry} succeeds");
    report.add(name, samples, None, args.command(Figure::Restart, None));
    Ok(())
}

/// A producer of the `plane` figure: an entry that pushes `n` messages and returns, under
/// `taken`, how many its SDK took (the rest it dropped).
struct Producer {
    plugin: &'static str,
    entry: &'static str,
    n: u64,
    taken: &'static str,
    /// The row's name.
    name: &'static str,
}

/// The `plane` figure's producers, in order. The Python normal mode sends a frame per message
/// (a socket send each), so it pushes fewer.
const PRODUCERS: [Producer; 3] = [
    Producer {
        plugin: "echo",
        entry: "push",
        n: 500_000,
        taken: "pushed",
        name: "plane ingest: echo/push (Rust SDK), msgs",
    },
    Producer {
        plugin: PYBENCH,
        entry: "push_fast",
        n: 200_000,
        taken: "submitted",
        name: "plane ingest: pybench fast_mode, msgs",
    },
    Producer {
        plugin: PYBENCH,
        entry: "push_normal",
        n: 50_000,
        taken: "submitted",
        name: "plane ingest: pybench normal mode, msgs",
    },
];

/// Upper bound of the wait for the plane to accept what one producer pushed.
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often that wait reads the plane's counters.
const INGEST_POLL: Duration = Duration::from_millis(10);
/// Records each measured query asks for (and, the store being full, gets).
const QUERY_LIMIT: usize = 100;
/// Upper bound of one RPC round trip (the plane's own deadline for a store call is 5 s).
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the idle figure lets a neko settle once its plugins run, before measuring.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Upper bound for a hundred Python plugins to start (imports compete for the cores).
const IDLE_START_TIMEOUT: Duration = Duration::from_secs(600);

/// `idle`: for each `--idle` count of echo plugins and each `--idle-python` count of pybench
/// plugins, a neko of its own; once all run and it settled, neko's RSS (`VmRSS`) and its own CPU
/// use (user + system, not its plugins') over `--idle-secs`, in % of one core.
async fn idle(args: &Args, report: &mut Report, bin: &Path) -> Result<()> {
    let command = args.command(Figure::Idle, None);
    let rust = args.idle.iter().map(|&n| {
        (
            Plugins::echo(n),
            format!("idle: {n} echo plugins, neko RSS and CPU"),
        )
    });
    let python = args.idle_python.iter().map(|&n| {
        let plugins = Plugins {
            echo: 0,
            pybench: n,
        };
        (
            plugins,
            format!("idle: {n} python plugins, neko RSS and CPU"),
        )
    });
    for (plugins, name) in rust.chain(python) {
        let mut neko = Neko::spawn(bin, plugins, 5, !args.no_persist).await?;
        let api = Api::new(&neko.base)?;
        let ids = plugins.ids();
        wait_for_within(
            Some(&mut neko),
            "the plugins to run",
            IDLE_START_TIMEOUT,
            || async {
                if api.all_running(&ids).await {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            },
        )
        .await?;
        tokio::time::sleep(IDLE_SETTLE).await;
        let (cpu_before, started) = (neko.cpu_seconds()?, Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        let cpu = (neko.cpu_seconds()? - cpu_before) / started.elapsed().as_secs_f64() * 100.0;
        neko.ensure_running()?;
        report.push(Row {
            name,
            n: ids.len(),
            stats: None,
            per_s: None,
            mib: Some(neko.rss_mib()?),
            cpu: Some(cpu),
            failures: Failures::default(),
            command: command.clone(),
        });
    }
    Ok(())
}

/// A neko of a figure's own (the default restart limit), once all its plugins run.
async fn spawn_running(args: &Args, bin: &Path, plugins: Plugins) -> Result<(Neko, Api)> {
    let mut neko = Neko::spawn(bin, plugins, 5, !args.no_persist).await?;
    let api = Api::new(&neko.base)?;
    let ids = plugins.ids();
    wait_for(Some(&mut neko), "the plugins to run", || async {
        api.all_running(&ids).await.then_some(())
    })
    .await?;
    Ok((neko, api))
}

/// `plane`: on a neko of its own with echo and pybench, each [`PRODUCERS`] row, then the query
/// latencies against the full `messages` store, then neko's RSS with every store as filled.
async fn message_plane(args: &Args, report: &mut Report, bin: &Path) -> Result<()> {
    let plugins = Plugins {
        echo: 1,
        pybench: 1,
    };
    let (mut neko, api) = spawn_running(args, bin, plugins).await?;
    let command = args.command(Figure::Plane, None);
    for producer in &PRODUCERS {
        let row = ingest(&api, &mut neko, producer, command.clone()).await?;
        report.push(row);
    }

    let plane = api.message_plane(&neko.admin_token).await?;
    // The queries are meant to run against a full store.
    let messages = store_records(&plane, "messages");
    if messages != STORE_MAXLEN as u64 {
        bail!("the messages store holds {messages} records after the pushes, not {STORE_MAXLEN}");
    }
    let endpoint = plane["endpoints"]["rpc"]
        .as_str()
        .with_context(|| format!("no RPC endpoint in /server/info: {plane}"))?;
    let mut dealer = DealerSocket::new();
    dealer
        .connect(endpoint)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let recent = json!({"store": "messages", "topic": "all", "limit": QUERY_LIMIT, "light": false});
    // bus.query with every filter strict validation knows, all but plugin_id off: a scan of the
    // store that stops after `limit` matches.
    let mut query = recent.clone();
    for (key, value) in [
        ("plugin_id", json!(PYBENCH)),
        ("source", Value::Null),
        ("kind", Value::Null),
        ("type", Value::Null),
        ("priority_min", Value::Null),
        ("since_ts", Value::Null),
        ("until_ts", Value::Null),
    ] {
        query[key] = value;
    }
    for (op, op_args, name) in [
        (
            "bus.get_recent",
            &recent,
            "plane rpc: bus.get_recent, limit 100",
        ),
        (
            "bus.query",
            &query,
            "plane rpc: bus.query plugin_id, limit 100",
        ),
    ] {
        let warmup = rpc_round_trips(&mut dealer, op, op_args, args.warmup).await;
        if let Some(first) = warmup.failures.first {
            eprintln!(
                "neko-bench: {} warm-up {op} failed (first: {first})",
                warmup.failures.count
            );
        }
        let started = Instant::now();
        let samples = rpc_round_trips(&mut dealer, op, op_args, args.plane_queries).await;
        report.add(
            name.into(),
            samples,
            Some(started.elapsed()),
            command.clone(),
        );
        neko.ensure_running()?;
        // The same queries from several clients at once, each on a socket of its own.
        let clients = args.plane_clients.max(1);
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let mut socket = DealerSocket::new();
            socket
                .connect(endpoint)
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            let (op, op_args, count) = (op.to_string(), op_args.clone(), args.plane_queries);
            tasks.push(tokio::spawn(async move {
                rpc_round_trips(&mut socket, &op, &op_args, count / clients).await
            }));
        }
        let started = Instant::now();
        let mut samples = Samples::default();
        for task in tasks {
            samples.merge(task.await.context("a query client panicked")?);
        }
        report.add(
            format!("{name}, {clients} clients"),
            samples,
            Some(started.elapsed()),
            command.clone(),
        );
        neko.ensure_running()?;
    }

    // The same reads as a Python plugin makes them (the call the reference's figure names): the
    // SDK's request, neko's answer and the SDK turning 100 records into a list of messages.
    let bus_get = |n: usize| json!({"n": n, "max_count": QUERY_LIMIT});
    api.run_with(PYBENCH, "bus_get", bus_get(args.warmup))
        .await
        .context("warm-up reads from pybench")?;
    let (_, record) = api
        .run_with(PYBENCH, "bus_get", bus_get(args.plane_queries))
        .await
        .context("reads from pybench")?;
    let result = &record["result"];
    if result["sizes"] != json!([QUERY_LIMIT]) {
        bail!(
            "pybench/bus_get read lists of {} messages, not {QUERY_LIMIT}",
            result["sizes"]
        );
    }
    let (samples, elapsed) = timed_loop(result).context("pybench/bus_get")?;
    report.add(
        "plane: bus.messages.get(max_count=100) from Python, sequential".into(),
        samples,
        Some(elapsed),
        command.clone(),
    );
    neko.ensure_running()?;

    // What the stores hold now: the messages store full, plus neko's own records.
    let plane = api.message_plane(&neko.admin_token).await?;
    let records = store_records(&plane, "");
    report.push(Row {
        name: "plane: neko RSS, n = records in the stores".into(),
        n: records as usize,
        stats: None,
        per_s: None,
        mib: Some(neko.rss_mib()?),
        cpu: None,
        failures: Failures::default(),
        command,
    });
    neko.ensure_running()
}

/// `calls`: plugin-to-plugin call round trips, on a neko of its own with two copies each of echo
/// and pybench. Each row is one run of the caller's `call_loop` entry, which makes `--calls`
/// calls to a trivial entry of the other copy (`--call-concurrency` at once in the concurrent
/// rows) and times each call inside the caller, from the SDK call to its answer: the caller's
/// SDK, neko's routing and deadlock check, the callee's SDK and back. HTTP is not in the figure.
async fn plugin_calls(args: &Args, report: &mut Report, bin: &Path) -> Result<()> {
    let plugins = Plugins {
        echo: 2,
        pybench: 2,
    };
    let (mut neko, api) = spawn_running(args, bin, plugins).await?;
    let command = args.command(Figure::Calls, None);
    for (caller, callee, what) in [
        ("echo", "echo-2:echo", "Rust → Rust, echo → echo-2"),
        (
            PYBENCH,
            "pybench2:noop_async",
            "Python → Python, pybench → pybench2",
        ),
    ] {
        for &concurrency in std::iter::once(&1).chain(&args.call_concurrency) {
            let loop_args =
                |n: usize| json!({"target": callee, "n": n, "concurrency": concurrency});
            api.run_with(caller, "call_loop", loop_args(args.warmup))
                .await
                .with_context(|| format!("warm-up calls from {caller}"))?;
            let (_, record) = api
                .run_with(caller, "call_loop", loop_args(args.calls))
                .await
                .with_context(|| format!("calls from {caller}"))?;
            let (samples, elapsed) =
                timed_loop(&record["result"]).with_context(|| format!("{caller}/call_loop"))?;
            let name = match concurrency {
                1 => format!("plugin call: {what}, sequential"),
                c => format!("plugin call: {what}, {c} in flight"),
            };
            report.add(name, samples, Some(elapsed), command.clone());
            neko.ensure_running()?;
        }
    }
    Ok(())
}

/// The samples and duration of a loop an entry timed itself: its result's `latencies_us` (one
/// per success), `failed` with `first_error`, and `elapsed_s`.
fn timed_loop(result: &Value) -> Result<(Samples, Duration)> {
    let latencies = result["latencies_us"]
        .as_array()
        .with_context(|| format!("no latencies in {result}"))?;
    let samples = Samples {
        latencies: latencies
            .iter()
            .filter_map(Value::as_u64)
            .map(Duration::from_micros)
            .collect(),
        failures: Failures {
            count: result["failed"].as_u64().unwrap_or(0) as usize,
            first: result["first_error"].as_str().map(str::to_owned),
        },
    };
    let elapsed = Duration::from_secs_f64(result["elapsed_s"].as_f64().unwrap_or(0.0));
    Ok((samples, elapsed))
}

/// Records held by `store` ("": by every store) in `message_plane` of `GET /server/info`.
fn store_records(plane: &Value, store: &str) -> u64 {
    let stores = plane["stats"]["stores"].as_array().into_iter().flatten();
    stores
        .filter(|s| store.is_empty() || s["store"] == store)
        .filter_map(|s| s["records"].as_u64())
        .sum()
}

/// `message_plane.stats.ingest_accepted` of `GET /server/info`.
async fn ingest_accepted(api: &Api, admin_token: &str) -> Result<u64> {
    let plane = api.message_plane(admin_token).await?;
    plane["stats"]["ingest_accepted"]
        .as_u64()
        .with_context(|| format!("no ingest_accepted in /server/info: {plane}"))
}

/// One ingest row: from the POST of `producer`'s run until the plane's accepted counter has grown
/// by the messages its SDK took (the run returns once they are queued, not sent).
async fn ingest(api: &Api, neko: &mut Neko, producer: &Producer, command: String) -> Result<Row> {
    let Producer {
        plugin, entry, n, ..
    } = *producer;
    let token = neko.admin_token.clone();
    let before = ingest_accepted(api, &token).await?;
    let started = Instant::now();
    let (_, record) = api
        .run_with(plugin, entry, json!({"n": n}))
        .await
        .with_context(|| format!("run of {plugin}/{entry}"))?;
    let result = &record["result"];
    let taken = result[producer.taken].as_u64().with_context(|| {
        format!(
            "{plugin}/{entry} returned no `{}`: {result}",
            producer.taken
        )
    })?;
    // The last count seen, for the error when the plane falls short.
    let seen = Cell::new(before);
    let accepted_at = wait_for_within(
        Some(neko),
        "the message plane to accept the messages",
        INGEST_TIMEOUT,
        || async {
            if let Ok(accepted) = ingest_accepted(api, &token).await {
                seen.set(accepted);
                if accepted >= before + taken {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(INGEST_POLL).await;
            None
        },
    )
    .await
    .with_context(|| {
        format!(
            "{plugin}/{entry}: the plane accepted {} of {taken}",
            seen.get() - before
        )
    })?;
    let elapsed = accepted_at - started;
    let dropped = n - taken;
    eprintln!(
        "neko-bench: {plugin}/{entry}: {taken} of {n} taken by the SDK, accepted in {elapsed:?}; \
         SDK figures: {}",
        result.get("stats").unwrap_or(result)
    );
    Ok(Row {
        name: producer.name.into(),
        n: taken as usize,
        stats: None,
        per_s: Some(taken as f64 / elapsed.as_secs_f64()),
        mib: None,
        cpu: None,
        failures: Failures {
            count: dropped as usize,
            first: (dropped > 0).then(|| format!("the SDK dropped {dropped} of {n} pushes")),
        },
        command,
    })
}

/// `count` round trips of `op` with `op_args`, one after the other; a reply that is an error or
/// holds other than [`QUERY_LIMIT`] items is a failure.
async fn rpc_round_trips(
    dealer: &mut DealerSocket,
    op: &str,
    op_args: &Value,
    count: usize,
) -> Samples {
    let mut samples = Samples::default();
    for i in 0..count {
        let req_id = format!("neko-bench:{i}");
        samples.add(rpc_round_trip(dealer, op, op_args, &req_id).await);
    }
    samples
}

/// One request in the reference's envelope (msgpack); the time until its reply arrived.
async fn rpc_round_trip(
    dealer: &mut DealerSocket,
    op: &str,
    op_args: &Value,
    req_id: &str,
) -> Result<Duration> {
    let envelope =
        json!({"v": 1, "op": op, "req_id": req_id, "args": op_args, "from_plugin": null});
    let frame = rmp_serde::to_vec_named(&envelope)?;
    let started = Instant::now();
    dealer.send(ZmqMessage::from(frame)).await?;
    let (latency, reply, last) = loop {
        let left = RPC_TIMEOUT.saturating_sub(started.elapsed());
        let message = tokio::time::timeout(left, dealer.recv())
            .await
            .with_context(|| format!("{op}: no reply within {RPC_TIMEOUT:?}"))??;
        let latency = started.elapsed();
        // The reply is the last frame.
        let last = message.into_vec().pop().context("an empty reply")?;
        let reply = skim_reply(&last).context("an unreadable reply")?;
        // Else a late reply to an earlier request that timed out.
        if reply.req_id == req_id {
            break (latency, reply, last);
        }
    };
    match reply.items {
        Some(QUERY_LIMIT) if reply.ok => Ok(latency),
        Some(n) if reply.ok => bail!("{op}: {n} items, not {QUERY_LIMIT}"),
        None if reply.ok => bail!("{op}: a reply without items"),
        _ => {
            let error = rmp_serde::from_slice::<Value>(&last)
                .map(|reply| reply["error"].to_string())
                .unwrap_or_default();
            bail!("{op} failed: {error}")
        }
    }
}
