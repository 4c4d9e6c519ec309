//! The restart policy arithmetic: when a plugin process exits, should it be started again, after
//! how long, or has it failed too often?
//!
//! The reference never restarts a plugin (decision 6 in the reference notes); neko does, with an
//! Erlang-style policy per plugin:
//! - a restart *type* ([`RestartType`]): permanent, transient or temporary;
//! - an *intensity*: at most `max_restarts` restarts within `restart_window_ms`, one more and the
//!   plugin is given up on (status "crashed");
//! - an exponential *backoff* with jitter between restarts, growing while the plugin keeps failing
//!   to start and falling back to the initial delay once it has run for a while.
//!
//! Global defaults come from `[restart_policy]` in `config/neko.toml` ([`RestartSettings`]); a plugin
//! may override any of them in its `[plugin_runtime]` table ([`RestartOverrides`], parsed by
//! [`crate::manifest`]). [`RestartPolicy::new`] merges and validates the two.
//!
//! Everything here is pure and deterministic: no tokio, no clock, no random source. The caller (the
//! plugin supervisor) passes in a monotonic `Instant` and a uniform random number for the jitter,
//! so tests can replay any history exactly.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which exits lead to a restart.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always restart, even after a clean exit.
    Permanent,
    /// Restart only after an abnormal exit: a non-zero exit code, a signal, or a kill by the
    /// supervisor (missed heartbeat, failed handshake).
    Transient,
    /// Never restart.
    Temporary,
}

impl RestartType {
    /// The name used in configuration files (`"permanent"`, `"transient"`, `"temporary"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RestartType::Permanent => "permanent",
            RestartType::Transient => "transient",
            RestartType::Temporary => "temporary",
        }
    }

    /// Parses the configuration-file name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "permanent" => Some(RestartType::Permanent),
            "transient" => Some(RestartType::Transient),
            "temporary" => Some(RestartType::Temporary),
            _ => None,
        }
    }
}

impl fmt::Display for RestartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The global restart defaults, deserialized from `[restart_policy]` in `config/neko.toml`. Units are
/// in the key names; [`RestartPolicy::new`] turns them into `Duration`s.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSettings {
    /// Which exits lead to a restart. Default: permanent.
    pub restart: RestartType,
    /// Restarts allowed within `restart_window_ms`; the exit after the last allowed one gives up.
    /// Default: 5.
    pub max_restarts: u32,
    /// The sliding window the restart count is taken over. Default: 60 000 ms.
    pub restart_window_ms: u64,
    /// Delay before the first restart of a streak. Default: 200 ms.
    pub backoff_initial_ms: u64,
    /// Upper bound of the delay, jitter included. Default: 30 000 ms.
    pub backoff_max_ms: u64,
    /// Growth factor of the delay per consecutive failed start. Default: 2.0.
    pub backoff_multiplier: f64,
    /// Relative spread of the delay: 0.2 means ±20 %, uniformly. Spreads out restarts of plugins
    /// that died together (e.g. when a shared dependency went away). Default: 0.2.
    pub jitter: f64,
    /// An exit before the plugin was ready, or within this long after it became ready, is a failed
    /// start; a later one is a crash after running. Default: 2 000 ms.
    pub start_window_ms: u64,
}

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            restart: RestartType::Permanent,
            max_restarts: 5,
            restart_window_ms: 60_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            backoff_multiplier: 2.0,
            jitter: 0.2,
            start_window_ms: 2_000,
        }
    }
}

/// Per-plugin overrides of [`RestartSettings`], read from a plugin's `[plugin_runtime]` table with
/// the same key names. `None` keeps the global default.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestartOverrides {
    /// Overrides [`RestartSettings::restart`].
    pub restart: Option<RestartType>,
    /// Overrides [`RestartSettings::max_restarts`].
    pub max_restarts: Option<u32>,
    /// Overrides [`RestartSettings::restart_window_ms`].
    pub restart_window_ms: Option<u64>,
    /// Overrides [`RestartSettings::backoff_initial_ms`].
    pub backoff_initial_ms: Option<u64>,
    /// Overrides [`RestartSettings::backoff_max_ms`].
    pub backoff_max_ms: Option<u64>,
    /// Overrides [`RestartSettings::backoff_multiplier`].
    pub backoff_multiplier: Option<f64>,
    /// Overrides [`RestartSettings::jitter`].
    pub jitter: Option<f64>,
    /// Overrides [`RestartSettings::start_window_ms`].
    pub start_window_ms: Option<u64>,
}

impl RestartOverrides {
    /// True when no key is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The validated restart policy of one plugin: the defaults with its overrides applied.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    /// Which exits lead to a restart.
    pub restart: RestartType,
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// The sliding window the restart count is taken over. Never zero.
    pub window: Duration,
    /// Delay before the first restart of a streak.
    pub backoff_initial: Duration,
    /// Upper bound of every delay. At least `backoff_initial`.
    pub backoff_max: Duration,
    /// Growth factor per consecutive failed start; at least 1.
    pub multiplier: f64,
    /// Relative spread of the delay, in `[0, 1)`.
    pub jitter: f64,
    /// How long after becoming ready an exit still counts as a failed start.
    pub start_window: Duration,
}

impl RestartPolicy {
    /// Applies `overrides` to `defaults` and validates the result: `backoff_multiplier >= 1`,
    /// `0 <= jitter < 1`, `backoff_initial_ms <= backoff_max_ms` and `restart_window_ms > 0`. The
    /// error names the offending key and value, ready to show next to the plugin.
    pub fn new(defaults: &RestartSettings, overrides: &RestartOverrides) -> Result<Self, String> {
        let restart = overrides.restart.unwrap_or(defaults.restart);
        let max_restarts = overrides.max_restarts.unwrap_or(defaults.max_restarts);
        let window_ms = overrides
            .restart_window_ms
            .unwrap_or(defaults.restart_window_ms);
        let initial_ms = overrides
            .backoff_initial_ms
            .unwrap_or(defaults.backoff_initial_ms);
        let max_ms = overrides.backoff_max_ms.unwrap_or(defaults.backoff_max_ms);
        let multiplier = overrides
            .backoff_multiplier
            .unwrap_or(defaults.backoff_multiplier);
        let jitter = overrides.jitter.unwrap_or(defaults.jitter);
        let start_window_ms = overrides
            .start_window_ms
            .unwrap_or(defaults.start_window_ms);

        // Written as negated comparisons so that NaN fails them too.
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(format!(
                "backoff_multiplier must be a finite number >= 1 (got {multiplier})"
            ));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(format!("jitter must be >= 0 and < 1 (got {jitter})"));
        }
        if initial_ms > max_ms {
            return Err(format!(
                "backoff_initial_ms ({initial_ms}) must not exceed backoff_max_ms ({max_ms})"
            ));
        }
        if window_ms == 0 {
            return Err("restart_window_ms must be greater than 0".to_string());
        }
        Ok(Self {
            restart,
            max_restarts,
            window: Duration::from_millis(window_ms),
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_millis(max_ms),
            multiplier,
            jitter,
            start_window: Duration::from_millis(start_window_ms),
        })
    }

    /// The delay before the restart that follows `streak` consecutive failed starts (1-based; 0 is
    /// treated as 1), before jitter: `min(backoff_max, initial * multiplier^(streak-1))`.
    pub fn base_delay(&self, streak: u32) -> Duration {
        let exponent = i32::try_from(streak.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.backoff_initial.as_secs_f64() * self.multiplier.powi(exponent);
        // `secs` may be infinite after many failures; `min` brings it back to the cap.
        let capped = secs.min(self.backoff_max.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.backoff_max)
    }

    /// Spreads `delay` by `±jitter` using `unit_random` in `[0, 1)`: `0` gives the shortest delay,
    /// `0.5` the delay itself. The result stays within `[0, backoff_max]`.
    pub fn jittered(&self, delay: Duration, unit_random: f64) -> Duration {
        // A caller bug (NaN, out of range) must not turn into a panic or a huge delay.
        let u = if unit_random.is_nan() {
            0.5
        } else {
            unit_random.clamp(0.0, 1.0)
        };
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        let secs = (delay.as_secs_f64() * factor).clamp(0.0, self.backoff_max.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.backoff_max)
    }

    /// Classifies an exit for backoff and reporting.
    pub fn classify(&self, exit: &ExitInfo) -> ExitClass {
        if !exit.abnormal {
            ExitClass::Clean
        } else if self.is_quick_exit(exit) {
            ExitClass::FailedStart
        } else {
            ExitClass::CrashedAfterRunning
        }
    }

    /// An exit before readiness, or within `start_window` of it.
    fn is_quick_exit(&self, exit: &ExitInfo) -> bool {
        exit.ready_for.is_none_or(|ran| ran < self.start_window)
    }
}

/// What the supervisor knows about one exit of the plugin process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// A non-zero exit code, a signal, or a kill by the supervisor (missed heartbeat, failed
    /// handshake). A stop the supervisor was asked for is not an exit this module sees.
    pub abnormal: bool,
    /// How long the plugin had been ready (handshake completed) when it exited; `None` if it never
    /// became ready.
    pub ready_for: Option<Duration>,
}

/// How an exit is classified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// An abnormal exit before the plugin was ready or within the start window after it.
    FailedStart,
    /// An abnormal exit after the plugin had run longer than the start window.
    CrashedAfterRunning,
    /// A clean exit (code 0).
    Clean,
}

/// What to do after an exit.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Start the plugin again after `delay`.
    Restart {
        /// Restarts within the window, including this one (1 for the first).
        attempt: u32,
        /// How long to wait before starting, jitter included.
        delay: Duration,
        /// How the exit that led here was classified.
        class: ExitClass,
    },
    /// The policy does not restart after this clean exit: the plugin goes to "stopped".
    Stop,
    /// The plugin exited abnormally and will not be restarted: it goes to "crashed".
    GiveUp {
        /// Restarts within the window at the time of giving up.
        restarts_in_window: u32,
        /// Why, ready to show to a user.
        reason: String,
    },
}

/// The restart history of one plugin: the restart times still inside the window and the current
/// streak of failed starts. Owned by the plugin supervisor, one per plugin.
#[derive(Clone, Debug, Default)]
pub struct RestartTracker {
    /// When each restart within the window was decided, oldest first.
    restarts: VecDeque<Instant>,
    /// Consecutive failed starts (clean or abnormal quick exits) since the plugin last ran past
    /// its start window; drives the exponential backoff.
    failed_start_streak: u32,
}

impl RestartTracker {
    /// Decides what follows an exit observed at `now`, and records the restart if there is one.
    ///
    /// `now` is a monotonic `std::time::Instant` passed in; `unit_random` in `[0, 1)` drives the
    /// jitter, so tests are deterministic.
    ///
    /// Backoff: each quick exit (before readiness or within the start window) lengthens the streak
    /// n, and the delay is `min(backoff_max, initial * multiplier^(n-1))`. This includes quick
    /// *clean* exits of a permanent plugin, so a plugin that exits 0 at once does not restart in a
    /// tight loop. An exit after the plugin ran longer than the start window resets the streak:
    /// its delay is `initial`.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        now: Instant,
        exit: &ExitInfo,
        unit_random: f64,
    ) -> Decision {
        let class = policy.classify(exit);
        let wants_restart = match policy.restart {
            RestartType::Permanent => true,
            RestartType::Transient => exit.abnormal,
            RestartType::Temporary => false,
        };
        if !wants_restart {
            if !exit.abnormal {
                return Decision::Stop;
            }
            return Decision::GiveUp {
                restarts_in_window: self.restarts_in_window(policy, now),
                reason: format!("restart policy is {}", policy.restart),
            };
        }

        self.forget_before_window(policy, now);
        let in_window = self.count();
        if in_window >= policy.max_restarts {
            let reason = if policy.max_restarts == 0 {
                "restarts are disabled (max_restarts = 0)".to_string()
            } else {
                format!(
                    "gave up after {in_window} restarts within {}",
                    HumanDuration(policy.window)
                )
            };
            return Decision::GiveUp {
                restarts_in_window: in_window,
                reason,
            };
        }
        self.restarts.push_back(now);

        // A plugin that ran well and then crashed comes back at once: downtime is what the user
        // sees, and the window limit still bounds a crash loop. Failed starts back off.
        let delay = if policy.is_quick_exit(exit) {
            self.failed_start_streak = self.failed_start_streak.saturating_add(1);
            policy.jittered(policy.base_delay(self.failed_start_streak), unit_random)
        } else {
            self.failed_start_streak = 0;
            Duration::ZERO
        };
        Decision::Restart {
            attempt: self.count(),
            delay,
            class,
        }
    }

    /// Forgets all history; called after a manual start or stop, which begins a new life.
    pub fn reset(&mut self) {
        self.restarts.clear();
        self.failed_start_streak = 0;
    }

    /// Restarts recorded within the window ending at `now`.
    pub fn restarts_in_window(&self, policy: &RestartPolicy, now: Instant) -> u32 {
        let recent = self
            .restarts
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < policy.window)
            .count();
        u32::try_from(recent).unwrap_or(u32::MAX)
    }

    /// The current streak of consecutive failed starts.
    pub fn failed_start_streak(&self) -> u32 {
        self.failed_start_streak
    }

    fn forget_before_window(&mut self, policy: &RestartPolicy, now: Instant) {
        // Oldest first, so dropping from the front until one is inside the window is enough.
        while let Some(oldest) = self.restarts.front() {
            if now.saturating_duration_since(*oldest) >= policy.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.restarts.len()).unwrap_or(u32::MAX)
    }
}

/// Formats a duration the way people write config values: `60s`, `1500ms`.
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// `unit_random` that cancels the jitter exactly.
    const NO_JITTER: f64 = 0.5;

    fn policy(overrides: RestartOverrides) -> RestartPolicy {
        RestartPolicy::new(&RestartSettings::default(), &overrides).expect("valid policy")
    }

    fn default_policy() -> RestartPolicy {
        policy(RestartOverrides::default())
    }

    fn failed_start() -> ExitInfo {
        ExitInfo {
            abnormal: true,
            ready_for: None,
        }
    }

    fn crash_after(ran: Duration) -> ExitInfo {
        ExitInfo {
            abnormal: true,
            ready_for: Some(ran),
        }
    }

    fn clean_after(ran: Duration) -> ExitInfo {
        ExitInfo {
            abnormal: false,
            ready_for: Some(ran),
        }
    }

    fn delay_of(decision: &Decision) -> Duration {
        match decision {
            Decision::Restart { delay, .. } => *delay,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    /// The documented defaults, and that `[restart_policy]` deserializes with units in key names.
    #[test]
    fn settings_defaults_match_the_documentation_and_deserialize_from_toml() {
        let s = RestartSettings::default();
        assert_eq!(s.restart, RestartType::Permanent);
        assert_eq!(s.max_restarts, 5);
        assert_eq!(s.restart_window_ms, 60_000);
        assert_eq!(s.backoff_initial_ms, 200);
        assert_eq!(s.backoff_max_ms, 30_000);
        assert_eq!(s.backoff_multiplier, 2.0);
        assert_eq!(s.jitter, 0.2);
        assert_eq!(s.start_window_ms, 2_000);

        let parsed: RestartSettings =
            toml::from_str("restart = \"transient\"\nmax_restarts = 3\n").expect("valid toml");
        assert_eq!(parsed.restart, RestartType::Transient);
        assert_eq!(parsed.max_restarts, 3);
        assert_eq!(parsed.backoff_initial_ms, 200);
    }

    /// A typo in `[restart_policy]` is an error rather than a silently ignored key.
    #[test]
    fn settings_reject_unknown_keys() {
        assert!(toml::from_str::<RestartSettings>("max_restart = 3\n").is_err());
    }

    /// Overrides win over the defaults, key by key.
    #[test]
    fn overrides_replace_only_the_keys_they_set() {
        let p = policy(RestartOverrides {
            restart: Some(RestartType::Temporary),
            backoff_initial_ms: Some(50),
            ..Default::default()
        });
        assert_eq!(p.restart, RestartType::Temporary);
        assert_eq!(p.backoff_initial, 50 * MS);
        assert_eq!(p.max_restarts, 5);
        assert_eq!(p.window, Duration::from_secs(60));
        assert_eq!(p.start_window, Duration::from_secs(2));
    }

    /// Each validation rule rejects its bad value and names the key.
    #[test]
    fn policy_validation_rejects_bad_values_and_names_the_key() {
        let cases = [
            (
                RestartOverrides {
                    backoff_multiplier: Some(0.5),
                    ..Default::default()
                },
                "backoff_multiplier",
            ),
            (
                RestartOverrides {
                    backoff_multiplier: Some(f64::NAN),
                    ..Default::default()
                },
                "backoff_multiplier",
            ),
            (
                RestartOverrides {
                    jitter: Some(1.0),
                    ..Default::default()
                },
                "jitter",
            ),
            (
                RestartOverrides {
                    jitter: Some(-0.1),
                    ..Default::default()
                },
                "jitter",
            ),
            (
                RestartOverrides {
                    backoff_initial_ms: Some(40_000),
                    ..Default::default()
                },
                "backoff_initial_ms",
            ),
            (
                RestartOverrides {
                    restart_window_ms: Some(0),
                    ..Default::default()
                },
                "restart_window_ms",
            ),
        ];
        for (overrides, key) in cases {
            let err = RestartPolicy::new(&RestartSettings::default(), &overrides)
                .expect_err("must be rejected");
            assert!(err.contains(key), "{err}");
        }
    }

    /// Consecutive failed starts double the delay until the cap.
    #[test]
    fn failed_starts_back_off_exponentially_up_to_the_cap() {
        let p = policy(RestartOverrides {
            max_restarts: Some(100),
            backoff_max_ms: Some(1_000),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..6)
            .map(|i| delay_of(&t.on_exit(&p, now + i * MS, &failed_start(), NO_JITTER)))
            .collect();
        let expected = [200, 400, 800, 1_000, 1_000, 1_000].map(|ms| ms * MS);
        assert_eq!(delays, expected);
        assert_eq!(t.failed_start_streak(), 6);
    }

    /// A huge streak neither overflows nor panics; it stays at the cap.
    #[test]
    fn base_delay_saturates_at_the_cap_for_huge_streaks() {
        let p = default_policy();
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(p.base_delay(0), p.backoff_initial);
    }

    /// Jitter spreads the delay by exactly ±jitter at the ends of `unit_random`'s range.
    #[test]
    fn jitter_stays_within_plus_minus_the_configured_fraction() {
        let p = default_policy();
        let base = Duration::from_secs(1);
        assert_eq!(p.jittered(base, 0.0), 800 * MS);
        assert_eq!(p.jittered(base, NO_JITTER), base);
        let high = p.jittered(base, 0.999_999);
        assert!(high < 1_200 * MS && high > 1_199 * MS, "{high:?}");
        for i in 0..100 {
            let d = p.jittered(base, f64::from(i) / 100.0);
            assert!((800 * MS..=1_200 * MS).contains(&d), "{d:?}");
        }
    }

    /// Jitter never pushes a delay above the cap, and bad random input stays harmless.
    #[test]
    fn jitter_never_exceeds_the_cap_or_goes_negative() {
        let p = default_policy();
        assert_eq!(p.jittered(p.backoff_max, 0.999), p.backoff_max);
        assert_eq!(p.jittered(Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(p.jittered(p.backoff_initial, f64::NAN), p.backoff_initial);
        assert_eq!(p.jittered(p.backoff_initial, -5.0), 160 * MS);
    }

    /// The restart decision carries the jittered delay.
    #[test]
    fn restart_decision_applies_jitter() {
        let p = default_policy();
        let mut t = RestartTracker::default();
        let d = t.on_exit(&p, Instant::now(), &failed_start(), 0.0);
        assert_eq!(delay_of(&d), 160 * MS);
    }

    /// After max_restarts within the window, the next abnormal exit gives up with a clear reason.
    #[test]
    fn gives_up_after_max_restarts_within_the_window() {
        let p = default_policy();
        let mut t = RestartTracker::default();
        let start = Instant::now();
        for i in 1..=5u32 {
            let d = t.on_exit(&p, start + i * MS, &failed_start(), NO_JITTER);
            assert!(
                matches!(d, Decision::Restart { attempt, .. } if attempt == i),
                "{d:?}"
            );
        }
        let d = t.on_exit(&p, start + 10 * MS, &failed_start(), NO_JITTER);
        assert_eq!(
            d,
            Decision::GiveUp {
                restarts_in_window: 5,
                reason: "gave up after 5 restarts within 60s".to_string(),
            }
        );
    }

    /// Restarts older than the window no longer count, so restarts resume.
    #[test]
    fn window_expiry_lets_restarts_resume() {
        let p = policy(RestartOverrides {
            max_restarts: Some(2),
            restart_window_ms: Some(1_000),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let start = Instant::now();
        assert!(matches!(
            t.on_exit(&p, start, &failed_start(), NO_JITTER),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            t.on_exit(&p, start + 500 * MS, &failed_start(), NO_JITTER),
            Decision::Restart { attempt: 2, .. }
        ));
        assert!(matches!(
            t.on_exit(&p, start + 900 * MS, &failed_start(), NO_JITTER),
            Decision::GiveUp { .. }
        ));
        // The first restart (at 0) is now exactly one window old and drops out.
        assert_eq!(t.restarts_in_window(&p, start + 1_000 * MS), 1);
        assert!(matches!(
            t.on_exit(&p, start + 1_000 * MS, &failed_start(), NO_JITTER),
            Decision::Restart { attempt: 2, .. }
        ));
    }

    /// `max_restarts = 0` gives up at once and says why.
    #[test]
    fn zero_max_restarts_gives_up_immediately() {
        let p = policy(RestartOverrides {
            max_restarts: Some(0),
            ..Default::default()
        });
        let d = RestartTracker::default().on_exit(&p, Instant::now(), &failed_start(), NO_JITTER);
        assert!(
            matches!(&d, Decision::GiveUp { restarts_in_window: 0, reason } if reason.contains("max_restarts = 0")),
            "{d:?}"
        );
    }

    /// Permanent restarts even after a clean exit (at once, since the plugin had been running).
    #[test]
    fn permanent_restarts_after_a_clean_exit() {
        let p = default_policy();
        let d = RestartTracker::default().on_exit(
            &p,
            Instant::now(),
            &clean_after(Duration::from_secs(60)),
            NO_JITTER,
        );
        assert_eq!(
            d,
            Decision::Restart {
                attempt: 1,
                delay: Duration::ZERO,
                class: ExitClass::Clean,
            }
        );
    }

    /// Quick clean exits of a permanent plugin still back off, so it does not spin.
    #[test]
    fn permanent_quick_clean_exits_back_off() {
        let p = default_policy();
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let quick_clean = ExitInfo {
            abnormal: false,
            ready_for: None,
        };
        assert_eq!(
            delay_of(&t.on_exit(&p, now, &quick_clean, NO_JITTER)),
            200 * MS
        );
        assert_eq!(
            delay_of(&t.on_exit(&p, now, &quick_clean, NO_JITTER)),
            400 * MS
        );
    }

    /// Transient: a clean exit stops, an abnormal one restarts.
    #[test]
    fn transient_stops_on_clean_exit_and_restarts_on_abnormal_exit() {
        let p = policy(RestartOverrides {
            restart: Some(RestartType::Transient),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let now = Instant::now();
        assert_eq!(
            t.on_exit(&p, now, &clean_after(Duration::from_secs(5)), NO_JITTER),
            Decision::Stop
        );
        assert!(matches!(
            t.on_exit(&p, now, &crash_after(Duration::from_secs(5)), NO_JITTER),
            Decision::Restart {
                attempt: 1,
                class: ExitClass::CrashedAfterRunning,
                ..
            }
        ));
    }

    /// Temporary never restarts: clean → Stop, abnormal → GiveUp naming the policy.
    #[test]
    fn temporary_never_restarts() {
        let p = policy(RestartOverrides {
            restart: Some(RestartType::Temporary),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let now = Instant::now();
        assert_eq!(
            t.on_exit(&p, now, &clean_after(Duration::from_secs(5)), NO_JITTER),
            Decision::Stop
        );
        assert_eq!(
            t.on_exit(&p, now, &failed_start(), NO_JITTER),
            Decision::GiveUp {
                restarts_in_window: 0,
                reason: "restart policy is temporary".to_string(),
            }
        );
    }

    /// Exits before readiness or within the start window are failed starts; later ones crashes.
    #[test]
    fn exits_are_classified_by_readiness_and_start_window() {
        let p = default_policy();
        assert_eq!(p.classify(&failed_start()), ExitClass::FailedStart);
        assert_eq!(p.classify(&crash_after(1_999 * MS)), ExitClass::FailedStart);
        assert_eq!(
            p.classify(&crash_after(2_000 * MS)),
            ExitClass::CrashedAfterRunning
        );
        assert_eq!(p.classify(&clean_after(MS)), ExitClass::Clean);
    }

    /// A crash after running resets the failed-start streak and restarts at once; the next failed
    /// start starts growing from the initial delay again.
    #[test]
    fn crash_after_running_resets_the_backoff_streak() {
        let p = policy(RestartOverrides {
            max_restarts: Some(100),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let now = Instant::now();
        for _ in 0..3 {
            t.on_exit(&p, now, &failed_start(), NO_JITTER);
        }
        assert_eq!(t.failed_start_streak(), 3);
        let d = t.on_exit(&p, now, &crash_after(Duration::from_secs(30)), NO_JITTER);
        assert_eq!(
            d,
            Decision::Restart {
                attempt: 4,
                delay: Duration::ZERO,
                class: ExitClass::CrashedAfterRunning,
            }
        );
        assert_eq!(t.failed_start_streak(), 0);
        assert_eq!(
            delay_of(&t.on_exit(&p, now, &failed_start(), NO_JITTER)),
            200 * MS
        );
    }

    /// `reset` forgets both the window history and the streak.
    #[test]
    fn reset_forgets_restart_history_and_streak() {
        let p = policy(RestartOverrides {
            max_restarts: Some(2),
            ..Default::default()
        });
        let mut t = RestartTracker::default();
        let now = Instant::now();
        t.on_exit(&p, now, &failed_start(), NO_JITTER);
        t.on_exit(&p, now, &failed_start(), NO_JITTER);
        assert!(matches!(
            t.on_exit(&p, now, &failed_start(), NO_JITTER),
            Decision::GiveUp { .. }
        ));
        t.reset();
        assert_eq!(t.restarts_in_window(&p, now), 0);
        assert_eq!(t.failed_start_streak(), 0);
        assert_eq!(
            t.on_exit(&p, now, &failed_start(), NO_JITTER),
            Decision::Restart {
                attempt: 1,
                delay: 200 * MS,
                class: ExitClass::FailedStart,
            }
        );
    }

    /// Give-up reasons print the window the way it is configured.
    #[test]
    fn give_up_reason_formats_sub_second_windows_in_ms() {
        assert_eq!(HumanDuration(Duration::from_secs(60)).to_string(), "60s");
        assert_eq!(HumanDuration(1_500 * MS).to_string(), "1500ms");
    }
}
