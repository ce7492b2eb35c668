//! Errors at the executor's boundary.

use std::time::Duration;

use thiserror::Error;

use crate::{EndpointKind, Phase};

/// An endpoint that the configured phase cannot run. Reported at startup and
/// by `--check-config`, never at request time.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "endpoint `{endpoint}` is {kind} and cannot run in phase `{phase}`{strict_note}; \
     phases that can run it: {accepted}",
    strict_note = if *strict { " with executor.strict = true" } else { "" },
    accepted = join_phases(accepted)
)]
pub struct PhaseMismatch {
    /// The endpoint refused.
    pub endpoint: String,
    /// How it is written.
    pub kind: EndpointKind,
    /// The configured phase.
    pub phase: Phase,
    /// Whether `executor.strict` was set.
    pub strict: bool,
    /// Phases that could run it with the same strictness.
    pub accepted: Vec<Phase>,
}

fn join_phases(phases: &[Phase]) -> String {
    if phases.is_empty() {
        return "none".to_string();
    }
    phases
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a dispatched request produced no result from its endpoint.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DispatchError {
    /// The executor is shutting down and takes no new work.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// No worker or in-flight slot became free within the caller's wait budget.
    #[error("executor overloaded: no capacity for `{endpoint}` within {waited:?}")]
    Overloaded {
        /// The endpoint.
        endpoint: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// The deadline passed before the endpoint started, or an async endpoint
    /// was cancelled when it passed.
    #[error("deadline exceeded for `{endpoint}`")]
    DeadlineExceeded {
        /// The endpoint.
        endpoint: String,
    },
    /// The endpoint panicked; the panic was contained to this request.
    #[error("endpoint `{endpoint}` panicked: {message}")]
    Panicked {
        /// The endpoint.
        endpoint: String,
        /// The panic payload, when it was a string.
        message: String,
    },
}

/// What a graceful shutdown could not finish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests still running when the grace period ended.
    pub abandoned: Vec<AbandonedWork>,
}

impl ShutdownReport {
    /// `true` when everything finished within the grace period.
    pub fn is_clean(&self) -> bool {
        self.abandoned.is_empty()
    }
}

/// One request that did not finish within the grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedWork {
    /// The endpoint.
    pub endpoint: String,
    /// Its trace id (hex), when it had one.
    pub trace_id: Option<String>,
    /// How long it had run.
    pub running_for: Duration,
}
