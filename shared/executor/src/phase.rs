//! The three migration phases and the rule for which endpoints each can run.
//!
//! A service moves from `threaded` to `bridged` to `async` one config value at
//! a time. The rule below is checked when endpoints are registered and by every
//! binary's `--check-config`, so a service never starts in a phase that cannot
//! run one of its endpoints.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where endpoint bodies run. Selected per service by `executor.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Phase 0, the legacy model: blocking endpoints on a bounded pool of OS threads.
    #[default]
    Threaded,
    /// Phase 1: the same pool; each worker thread drives an async endpoint to
    /// completion itself (with the service runtime's I/O and timer drivers),
    /// one request per thread as before.
    Bridged,
    /// Phase 2: async endpoints are Tokio tasks; blocking endpoints are offloaded
    /// explicitly with `spawn_blocking`.
    Async,
}

impl Phase {
    /// Every phase, in migration order.
    pub const ALL: [Phase; 3] = [Phase::Threaded, Phase::Bridged, Phase::Async];

    /// The value used in config files, environment variables and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Threaded => "threaded",
            Phase::Bridged => "bridged",
            Phase::Async => "async",
        }
    }

    /// The phase number used in docs and dashboards (0, 1, 2).
    pub fn number(self) -> u8 {
        match self {
            Phase::Threaded => 0,
            Phase::Bridged => 1,
            Phase::Async => 2,
        }
    }

    /// Whether this phase can run an endpoint of `kind`. `strict` only matters
    /// for [`Phase::Async`], where it refuses blocking endpoints instead of
    /// offloading them.
    pub fn can_run(self, kind: EndpointKind, strict: bool) -> bool {
        match (self, kind.form_in(self)) {
            (Phase::Threaded, EndpointKind::Async) => false,
            (Phase::Async, EndpointKind::Blocking) => !strict,
            _ => true,
        }
    }

    /// The phases (under the given strictness) that can run an endpoint of `kind`.
    pub fn accepting(kind: EndpointKind, strict: bool) -> Vec<Phase> {
        Phase::ALL
            .into_iter()
            .filter(|phase| phase.can_run(kind, strict))
            .collect()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an endpoint body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A plain function; it may block its thread.
    Blocking,
    /// An async function; it must not block the thread that polls it.
    Async,
    /// Written both ways, for the length of a migration: the phase picks
    /// the form that runs ([`EndpointKind::form_in`]).
    Both,
}

impl EndpointKind {
    /// The form that runs in `phase`: an endpoint written both ways runs its
    /// blocking body in `threaded` and its async body in `bridged` and
    /// `async` (where the blocking one would only be offloaded); an endpoint
    /// written one way runs that way.
    pub fn form_in(self, phase: Phase) -> EndpointKind {
        match (self, phase) {
            (EndpointKind::Both, Phase::Threaded) => EndpointKind::Blocking,
            (EndpointKind::Both, _) => EndpointKind::Async,
            (kind, _) => kind,
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointKind::Blocking => "blocking",
            EndpointKind::Async => "async",
            EndpointKind::Both => "both",
        })
    }
}

/// What a service declares about one endpoint: enough to check a phase
/// without building the endpoint (used by `--check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The endpoint's name as dispatched (RPC method, gRPC path, event type).
    pub name: String,
    /// How its body is written.
    pub kind: EndpointKind,
}

impl EndpointSpec {
    /// Declares an endpoint.
    pub fn new(name: impl Into<String>, kind: EndpointKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_refuses_async_and_strict_async_refuses_blocking() {
        assert!(Phase::Threaded.can_run(EndpointKind::Blocking, true));
        assert!(!Phase::Threaded.can_run(EndpointKind::Async, false));
        assert!(Phase::Bridged.can_run(EndpointKind::Blocking, true));
        assert!(Phase::Bridged.can_run(EndpointKind::Async, true));
        assert!(Phase::Async.can_run(EndpointKind::Blocking, false));
        assert!(!Phase::Async.can_run(EndpointKind::Blocking, true));
        assert_eq!(
            Phase::accepting(EndpointKind::Async, false),
            vec![Phase::Bridged, Phase::Async]
        );
    }

    #[test]
    fn an_endpoint_in_both_forms_runs_blocking_in_threaded_and_async_elsewhere() {
        use EndpointKind::*;
        let forms: Vec<EndpointKind> = Phase::ALL.iter().map(|p| Both.form_in(*p)).collect();
        assert_eq!(forms, [Blocking, Async, Async]);
        assert_eq!(Phase::accepting(Both, true), Phase::ALL.to_vec());
        assert_eq!(Blocking.form_in(Phase::Async), Blocking);
    }
}
