//! The `[executor]` section every service's configuration embeds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Phase;

/// Settings of one service's executor. Durations are whole milliseconds so
/// that an environment variable such as `SWITCHYARD_EXECUTOR__HUNG_THRESHOLD_MS=5000`
/// needs no unit parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// The migration phase: `threaded`, `bridged` or `async`.
    pub phase: Phase,
    /// OS worker threads in the `threaded` and `bridged` phases (oslo.messaging's
    /// `executor_thread_pool_size`). Also the number of requests those phases
    /// run at once.
    pub pool_size: usize,
    /// Requests running at once in the `async` phase.
    pub max_in_flight: usize,
    /// In the `async` phase, refuse blocking endpoints at startup instead of
    /// offloading them to the blocking pool.
    pub strict: bool,
    /// A single poll of an endpoint future longer than this is reported as
    /// blocking the event loop.
    pub slow_poll_threshold_ms: u64,
    /// Work running longer than this is reported as hung (once per request).
    pub hung_threshold_ms: u64,
    /// On shutdown, how long in-flight work may take to finish before it is
    /// abandoned and reported.
    pub shutdown_grace_ms: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            phase: Phase::Threaded,
            pool_size: 64,
            max_in_flight: 1024,
            strict: false,
            slow_poll_threshold_ms: 10,
            hung_threshold_ms: 30_000,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl ExecutorConfig {
    /// The defaults, in `phase`.
    pub fn in_phase(phase: Phase) -> Self {
        Self {
            phase,
            ..Self::default()
        }
    }

    /// How many requests this configuration runs at once in its phase.
    pub fn capacity(&self) -> usize {
        match self.phase {
            Phase::Threaded | Phase::Bridged => self.pool_size,
            Phase::Async => self.max_in_flight,
        }
    }

    /// `executor.slow_poll_threshold_ms` as a duration.
    pub fn slow_poll_threshold(&self) -> Duration {
        Duration::from_millis(self.slow_poll_threshold_ms)
    }

    /// `executor.hung_threshold_ms` as a duration.
    pub fn hung_threshold(&self) -> Duration {
        Duration::from_millis(self.hung_threshold_ms)
    }

    /// `executor.shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Range checks the types cannot express, as `(key, problem)` pairs with
    /// keys relative to the section (`pool_size`, …).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=4096).contains(&self.pool_size) {
            problems.push((
                "pool_size",
                format!("{} is out of range; accepted: 1 to 4096", self.pool_size),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            problems.push((
                "max_in_flight",
                format!(
                    "{} is out of range; accepted: 1 to 1000000",
                    self.max_in_flight
                ),
            ));
        }
        if self.slow_poll_threshold_ms == 0 {
            problems.push((
                "slow_poll_threshold_ms",
                "0 is out of range; accepted: 1 or more milliseconds".to_string(),
            ));
        }
        if self.hung_threshold_ms == 0 {
            problems.push((
                "hung_threshold_ms",
                "0 is out of range; accepted: 1 or more milliseconds".to_string(),
            ));
        }
        problems
    }
}
