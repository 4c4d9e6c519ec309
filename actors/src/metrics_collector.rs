//! MetricsCollector: resource samples of every plugin process, with a bounded history per plugin
//! (the reference's metrics collector, §7.2).
//!
//! Parent: the root supervisor, which restarts it alone: nobody holds its reference (the gateway
//! looks it up in the published tree references per request), and it holds nothing another actor
//! needs. A restart forgets the samples; collection goes on at the next tick. Senders: itself
//! (its interval timer, and the task that reads `/proc`) and the gateway (`GET /plugin/metrics*`).
//!
//! Every `interval` a task asks the StatusManager which plugins have a process (the pid the
//! PluginSupervisor published) and reads `/proc/<pid>/stat` (CPU ticks, start time) and
//! `/proc/<pid>/status` (`VmRSS`, `Threads`) of each, off the runtime's threads; the actor turns
//! the readings into samples. `cpu_percent` is of one core: the CPU ticks used since the previous
//! sample of the same process over the wall time between them (the first sample of a process
//! averages over its life so far). A process that vanished between the two steps is simply
//! skipped: plugins exit all the time, and nothing here is worth a failure.
//!
//! A plugin whose process is gone keeps its samples (history) but is no longer in the current
//! list. Execution counters, `pending_requests` and `queue_size` are always 0, as in the
//! reference: neko keeps no per-plugin run counters (runs are counted in the run store, by
//! query), and the calls in flight live in each ProcessHost, which would cost a message per host
//! per sample to ask.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use neko_protocol::{PluginId, PluginState};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::{iso_from_unix, unix_now};
use crate::error::Error;
use crate::root::TreeRefs;
use crate::status_manager::StatusManagerMsg;

/// Longest the collector waits for the StatusManager.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The MetricsCollector actor.
pub struct MetricsCollector;

/// `[metrics]`: how often plugins are sampled and how many samples are kept.
#[derive(Debug, Clone, Copy)]
pub struct MetricsSettings {
    pub interval: Duration,
    /// Samples kept per plugin; older ones are dropped.
    pub history: usize,
}

/// What the collector is started with.
pub struct MetricsCollectorArgs {
    pub settings: MetricsSettings,
    /// Where the current StatusManager is found (it may be restarted under the collector).
    pub tree: watch::Receiver<Option<TreeRefs>>,
}

/// One sample of one plugin process: the reference's metrics record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginMetrics {
    pub plugin_id: PluginId,
    /// When the sample was taken (ISO-8601, UTC).
    pub timestamp: String,
    pub pid: u32,
    /// Of one core, over the time since the previous sample.
    pub cpu_percent: f64,
    /// Resident set size.
    pub memory_mb: f64,
    /// Resident set size over the machine's `MemTotal`.
    pub memory_percent: f64,
    pub num_threads: u32,
    /// Always 0 (see the module doc).
    pub total_executions: u64,
    pub successful_executions: u64,
    pub failed_executions: u64,
    pub avg_execution_time: f64,
    pub pending_requests: u64,
    pub queue_size: u64,
}

/// Sums over the plugins sampled last.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GlobalMetrics {
    pub total_cpu_percent: f64,
    pub total_memory_mb: f64,
    pub total_memory_percent: f64,
    pub total_threads: u64,
    pub active_plugins: usize,
}

/// The latest sample of every plugin whose process is up, and their sums.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentMetrics {
    pub metrics: Vec<PluginMetrics>,
    pub global: GlobalMetrics,
}

/// One plugin's current metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginMetricsView {
    /// Its process was sampled in the last round.
    Sampled(PluginMetrics),
    /// No current sample: why, in words, and what is known of its process.
    NoSample {
        message: String,
        plugin_running: bool,
        process_alive: bool,
    },
}

/// Messages of the MetricsCollector.
pub enum MetricsCollectorMsg {
    /// The interval elapsed: sample every plugin process (unless a round is still going).
    Tick,
    /// A sampling round ended; `None` when the StatusManager could not be asked.
    Sampled(Option<Readings>),
    /// The latest samples of the plugins running now, with their sums.
    GetCurrent(RpcReplyPort<CurrentMetrics>),
    /// One plugin's latest sample; `PluginUnknown` if no such plugin is registered.
    GetPlugin(PluginId, RpcReplyPort<Result<PluginMetricsView, Error>>),
    /// The last `limit` samples of one plugin, oldest first.
    GetHistory {
        plugin_id: PluginId,
        limit: usize,
        reply: RpcReplyPort<Vec<PluginMetrics>>,
    },
}

/// What one round read from `/proc`.
pub struct Readings {
    /// When the round read the files.
    at: Instant,
    /// Unix seconds of `at`.
    wall: f64,
    machine: Machine,
    processes: Vec<(PluginId, ProcReading)>,
}

/// Machine-wide figures a round needs.
#[derive(Debug, Clone, Copy, Default)]
struct Machine {
    mem_total_kb: u64,
    /// Seconds since boot.
    uptime: f64,
    /// Kernel clock ticks per second (`_SC_CLK_TCK`).
    clk_tck: f64,
}

/// What `/proc/<pid>/{stat,status}` said about one process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcReading {
    pid: u32,
    /// Start time in clock ticks after boot: with the pid, identifies the process (pids are
    /// reused).
    start_ticks: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    rss_kb: u64,
    threads: u32,
}

/// The previous reading of a plugin's process, for the CPU delta.
struct CpuMark {
    pid: u32,
    start_ticks: u64,
    cpu_ticks: u64,
    at: Instant,
}

#[derive(Default)]
struct PluginHistory {
    samples: VecDeque<PluginMetrics>,
    last: Option<CpuMark>,
}

/// The MetricsCollector's state.
pub struct MetricsCollectorState {
    settings: MetricsSettings,
    tree: watch::Receiver<Option<TreeRefs>>,
    plugins: HashMap<PluginId, PluginHistory>,
    /// Plugins whose process the last round sampled.
    current: BTreeSet<PluginId>,
    /// The round in flight, if any.
    round: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for MetricsCollector {
    type Msg = MetricsCollectorMsg;
    type State = MetricsCollectorState;
    type Arguments = MetricsCollectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.settings.interval, || MetricsCollectorMsg::Tick);
        Ok(MetricsCollectorState {
            settings: args.settings,
            tree: args.tree,
            plugins: HashMap::new(),
            current: BTreeSet::new(),
            round: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MetricsCollectorMsg::Tick => state.start_round(&myself),
            MetricsCollectorMsg::Sampled(readings) => state.record(readings),
            MetricsCollectorMsg::GetCurrent(reply) => {
                let _ = reply.send(state.current_metrics());
            }
            MetricsCollectorMsg::GetPlugin(id, reply) => state.answer_plugin(id, reply),
            MetricsCollectorMsg::GetHistory {
                plugin_id,
                limit,
                reply,
            } => {
                let _ = reply.send(state.history(&plugin_id, limit));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(round) = state.round.take() {
            round.abort();
        }
        Ok(())
    }
}

impl MetricsCollectorState {
    /// Starts a sampling round in a task, which reports back with `Sampled`. A round still going
    /// (a slow StatusManager) makes this tick a no-op, so rounds never pile up.
    fn start_round(&mut self, myself: &ActorRef<MetricsCollectorMsg>) {
        if self.round.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let tree = self.tree.clone();
        let myself = myself.clone();
        self.round = Some(tokio::spawn(async move {
            let readings = read_round(tree).await;
            let _ = myself.cast(MetricsCollectorMsg::Sampled(readings));
        }));
    }

    fn record(&mut self, readings: Option<Readings>) {
        let Some(r) = readings else {
            return;
        };
        let timestamp = iso_from_unix(r.wall);
        self.current.clear();
        for (plugin_id, p) in r.processes {
            let entry = self.plugins.entry(plugin_id.clone()).or_default();
            let cpu_percent = cpu_percent(entry.last.as_ref(), &p, r.at, &r.machine);
            entry.last = Some(CpuMark {
                pid: p.pid,
                start_ticks: p.start_ticks,
                cpu_ticks: p.cpu_ticks,
                at: r.at,
            });
            let memory_percent = if r.machine.mem_total_kb > 0 {
                p.rss_kb as f64 * 100.0 / r.machine.mem_total_kb as f64
            } else {
                0.0
            };
            let sample = PluginMetrics {
                plugin_id: plugin_id.clone(),
                timestamp: timestamp.clone(),
                pid: p.pid,
                cpu_percent: round2(cpu_percent),
                memory_mb: round2(p.rss_kb as f64 / 1024.0),
                memory_percent: round2(memory_percent),
                num_threads: p.threads,
                total_executions: 0,
                successful_executions: 0,
                failed_executions: 0,
                avg_execution_time: 0.0,
                pending_requests: 0,
                queue_size: 0,
            };
            tracing::debug!(plugin_id = %plugin_id, pid = p.pid, cpu_percent = sample.cpu_percent, memory_mb = sample.memory_mb, threads = p.threads, "plugin sampled");
            if entry.samples.len() >= self.settings.history {
                entry.samples.pop_front();
            }
            entry.samples.push_back(sample);
            self.current.insert(plugin_id);
        }
    }

    fn latest(&self, id: &PluginId) -> Option<&PluginMetrics> {
        if !self.current.contains(id) {
            return None;
        }
        self.plugins.get(id).and_then(|h| h.samples.back())
    }

    fn current_metrics(&self) -> CurrentMetrics {
        let metrics: Vec<PluginMetrics> = self
            .current
            .iter()
            .filter_map(|id| self.latest(id).cloned())
            .collect();
        let mut global = GlobalMetrics {
            active_plugins: metrics.len(),
            ..GlobalMetrics::default()
        };
        for m in &metrics {
            global.total_cpu_percent += m.cpu_percent;
            global.total_memory_mb += m.memory_mb;
            global.total_memory_percent += m.memory_percent;
            global.total_threads += u64::from(m.num_threads);
        }
        global.total_cpu_percent = round2(global.total_cpu_percent);
        global.total_memory_mb = round2(global.total_memory_mb);
        global.total_memory_percent = round2(global.total_memory_percent);
        CurrentMetrics { metrics, global }
    }

    /// Answers from a task: whether the plugin is registered and running is the StatusManager's
    /// to say, and the collector's mailbox should not wait on it.
    fn answer_plugin(&self, id: PluginId, reply: RpcReplyPort<Result<PluginMetricsView, Error>>) {
        let latest = self.latest(&id).cloned();
        let status = self.tree.borrow().as_ref().map(|r| r.status.clone());
        let interval = self.settings.interval;
        tokio::spawn(async move {
            let Some(status) = status else {
                let _ = reply.send(Err(Error::Unavailable("status manager".into())));
                return;
            };
            let record = match status
                .call(
                    |p| StatusManagerMsg::Get(id.clone(), p),
                    Some(STATUS_TIMEOUT),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(r)) => r,
                _ => {
                    let _ = reply.send(Err(Error::Unavailable("status manager".into())));
                    return;
                }
            };
            let Some(record) = record else {
                let _ = reply.send(Err(Error::PluginUnknown(id)));
                return;
            };
            if let Some(m) = latest {
                let _ = reply.send(Ok(PluginMetricsView::Sampled(m)));
                return;
            }
            let plugin_running = record.lifecycle.state == PluginState::Running;
            let process_alive = match record.lifecycle.pid {
                Some(pid) => tokio::fs::metadata(format!("/proc/{pid}")).await.is_ok(),
                None => false,
            };
            let message = match (plugin_running, process_alive) {
                (false, _) => "Plugin is not running; its past samples stay in its history".into(),
                (true, false) => "Plugin process is not alive".into(),
                (true, true) => format!(
                    "No metrics collected yet; plugins are sampled every {} ms",
                    interval.as_millis()
                ),
            };
            let _ = reply.send(Ok(PluginMetricsView::NoSample {
                message,
                plugin_running,
                process_alive,
            }));
        });
    }

    fn history(&self, id: &PluginId, limit: usize) -> Vec<PluginMetrics> {
        let Some(h) = self.plugins.get(id) else {
            return Vec::new();
        };
        let skip = h.samples.len().saturating_sub(limit);
        h.samples.iter().skip(skip).cloned().collect()
    }
}

/// One round: which plugins have a process (asked of the StatusManager), then their `/proc`
/// files, read on a blocking thread.
async fn read_round(tree: watch::Receiver<Option<TreeRefs>>) -> Option<Readings> {
    let status = tree.borrow().as_ref().map(|r| r.status.clone())?;
    let list = match status
        .call(StatusManagerMsg::List, Some(STATUS_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(list)) => list,
        _ => {
            tracing::debug!("status manager did not answer; skipping this metrics round");
            return None;
        }
    };
    let targets: Vec<(PluginId, u32)> = list
        .into_iter()
        .filter_map(|s| s.lifecycle.pid.map(|pid| (s.plugin_id, pid)))
        .collect();
    tokio::task::spawn_blocking(move || {
        let machine = read_machine();
        let at = Instant::now();
        let wall = unix_now();
        let processes = targets
            .into_iter()
            .filter_map(|(id, pid)| match read_process(pid) {
                Some(p) => Some((id, p)),
                None => {
                    tracing::debug!(plugin_id = %id, pid, "plugin process vanished before it was sampled");
                    None
                }
            })
            .collect();
        Readings {
            at,
            wall,
            machine,
            processes,
        }
    })
    .await
    .ok()
}

fn read_machine() -> Machine {
    let mem_total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kb_field(&t, "MemTotal:"))
        .unwrap_or(0);
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf only reads a configuration value.
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Machine {
        mem_total_kb,
        uptime,
        clk_tck: if clk_tck > 0 { clk_tck as f64 } else { 100.0 },
    }
}

/// `None` when the process is gone (or its files do not parse, which only a vanished process
/// causes).
fn read_process(pid: u32) -> Option<ProcReading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (cpu_ticks, start_ticks) = parse_stat(&stat)?;
    Some(ProcReading {
        pid,
        start_ticks,
        cpu_ticks,
        rss_kb: kb_field(&status, "VmRSS:").unwrap_or(0),
        threads: status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    })
}

/// `(utime + stime, starttime)` from `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`: state is field 3, utime
/// 14, stime 15, starttime 22.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// A `Key:   1234 kB` line of `/proc/meminfo` or `/proc/<pid>/status`.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Percent of one core used since the previous reading of the same process, or since the
/// process started when there is none.
fn cpu_percent(last: Option<&CpuMark>, now: &ProcReading, at: Instant, m: &Machine) -> f64 {
    let same = last.filter(|l| l.pid == now.pid && l.start_ticks == now.start_ticks);
    let (ticks, secs) = match same {
        Some(l) => (
            now.cpu_ticks.saturating_sub(l.cpu_ticks),
            at.duration_since(l.at).as_secs_f64(),
        ),
        None => (now.cpu_ticks, m.uptime - now.start_ticks as f64 / m.clk_tck),
    };
    if secs <= 0.0 {
        return 0.0;
    }
    ticks as f64 / m.clk_tck / secs * 100.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat =
            "42 (we ird) name)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 12345 1000 200";
        assert_eq!(parse_stat(stat), Some((10, 12345)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn own_process_reads_back() {
        let p = read_process(std::process::id()).expect("own /proc entry");
        assert!(p.rss_kb > 0 && p.threads >= 1, "{p:?}");
        assert!(read_machine().mem_total_kb > 0);
    }

    #[test]
    fn cpu_is_a_delta_of_the_same_process() {
        let m = Machine {
            mem_total_kb: 1,
            uptime: 100.0,
            clk_tck: 100.0,
        };
        let t0 = Instant::now();
        let last = CpuMark {
            pid: 7,
            start_ticks: 500,
            cpu_ticks: 100,
            at: t0,
        };
        let now = ProcReading {
            pid: 7,
            start_ticks: 500,
            cpu_ticks: 150,
            rss_kb: 1,
            threads: 1,
        };
        let at = t0 + Duration::from_secs(1);
        assert!((cpu_percent(Some(&last), &now, at, &m) - 50.0).abs() < 1e-9);
        // A reused pid is a new process: averaged over its life (started at 95 s, up at 100 s:
        // 1.5 s of CPU in 5 s).
        let reused = ProcReading {
            start_ticks: 9_500,
            ..now
        };
        assert!((cpu_percent(Some(&last), &reused, at, &m) - 30.0).abs() < 1e-9);
    }

    /// Past samples stay (bounded) when a plugin's process is gone, but it leaves the current list.
    #[test]
    fn exited_plugin_keeps_history_but_leaves_the_current_list() {
        let mut state = MetricsCollectorState {
            settings: MetricsSettings {
                interval: Duration::from_secs(1),
                history: 3,
            },
            tree: watch::channel(None).1,
            plugins: HashMap::new(),
            current: BTreeSet::new(),
            round: None,
        };
        let id = PluginId::new("echo").unwrap();
        let reading = ProcReading {
            pid: 9,
            start_ticks: 1,
            cpu_ticks: 1,
            rss_kb: 2048,
            threads: 2,
        };
        let round = |processes| Readings {
            at: Instant::now(),
            wall: unix_now(),
            machine: Machine {
                mem_total_kb: 4096,
                uptime: 10.0,
                clk_tck: 100.0,
            },
            processes,
        };
        for _ in 0..5 {
            state.record(Some(round(vec![(id.clone(), reading)])));
        }
        let now = state.current_metrics();
        assert_eq!(now.global.active_plugins, 1);
        assert_eq!(now.metrics[0].memory_mb, 2.0);
        assert_eq!(now.global.total_memory_percent, 50.0);
        assert_eq!(state.history(&id, 100).len(), 3);
        assert_eq!(state.history(&id, 2).len(), 2);
        state.record(Some(round(Vec::new())));
        assert!(state.current_metrics().metrics.is_empty());
        assert_eq!(state.history(&id, 100).len(), 3);
    }
}
