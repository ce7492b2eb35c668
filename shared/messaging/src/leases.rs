//! What a queue's settler remembers of its retry queues (one per delay):
//! when it last declared each, or when the broker last refused to.
//!
//! A declaration renews the retry queue's `x-expires` lease, so one is
//! needed only every [`RETRY_QUEUE_IDLE`] / 2. A refused one is remembered
//! for [`REFUSED_FOR`]: while a retry queue's home node is down, RabbitMQ
//! refuses every declaration of it (`NOT_FOUND - home node … is down or
//! inaccessible`, measured in `e2e/tests/parked.rs`), and without this
//! memory every message to retry meanwhile cost a channel opened and
//! closed by the broker, a copy published and returned, and two warnings.
//! With it, such a message goes straight to waiting in its handler (the
//! settler's fallback), and the queue is tried again once the memory lapses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::rpc::topology::RETRY_QUEUE_IDLE;

/// How long a refused declaration is remembered: at most one declaration
/// per retry queue is refused in this time, however many messages retry.
pub(crate) const REFUSED_FOR: Duration = Duration::from_secs(5);

/// What to do with a retry queue before parking a message in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Declared recently: its lease outlives the message's wait.
    Use,
    /// Declare it (first use, lease half gone, or the queue was found gone).
    Declare,
    /// Its declaration was refused `ago`: do not park there now.
    Avoid {
        /// How long ago the broker refused it.
        ago: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
enum Lease {
    Declared(Instant),
    Refused(Instant),
}

/// The leases of one settler's retry queues, by queue name.
#[derive(Debug, Default)]
pub(crate) struct Leases(HashMap<String, Lease>);

impl Leases {
    /// What to do with retry queue `name` at `now`; `gone` when a copy
    /// published to it came back unroutable.
    pub fn next(&self, name: &str, gone: bool, now: Instant) -> Next {
        match self.0.get(name) {
            Some(Lease::Refused(at)) if now.saturating_duration_since(*at) < REFUSED_FOR => {
                Next::Avoid {
                    ago: now.saturating_duration_since(*at),
                }
            }
            Some(Lease::Declared(at))
                if !gone && now.saturating_duration_since(*at) < RETRY_QUEUE_IDLE / 2 =>
            {
                Next::Use
            }
            _ => Next::Declare,
        }
    }

    /// The broker declared `name` at `now`.
    pub fn declared(&mut self, name: &str, now: Instant) {
        self.0.insert(name.to_string(), Lease::Declared(now));
    }

    /// The broker refused to declare `name` at `now`.
    pub fn refused(&mut self, name: &str, now: Instant) {
        self.0.insert(name.to_string(), Lease::Refused(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = "q.retry.2000";

    /// Leases and the instant the test starts from.
    fn start() -> (Leases, Instant) {
        (Leases::default(), Instant::now())
    }

    #[test]
    fn a_queue_never_declared_is_declared() {
        let now = Instant::now();
        assert_eq!(Leases::default().next(QUEUE, false, now), Next::Declare);
    }

    #[test]
    fn a_declared_queue_is_used_until_half_its_lease_is_gone() {
        let (mut leases, at) = start();
        leases.declared(QUEUE, at);
        let half = at + RETRY_QUEUE_IDLE / 2;
        assert_eq!(
            leases.next(QUEUE, false, half - Duration::from_millis(1)),
            Next::Use
        );
        assert_eq!(leases.next(QUEUE, false, half), Next::Declare);
    }

    #[test]
    fn a_declared_queue_found_gone_is_declared_again() {
        let (mut leases, at) = start();
        leases.declared(QUEUE, at);
        assert_eq!(leases.next(QUEUE, true, at), Next::Declare);
    }

    #[test]
    fn a_refused_queue_is_avoided_even_when_found_gone_until_the_memory_lapses() {
        let (mut leases, at) = start();
        leases.declared(QUEUE, at);
        leases.refused(QUEUE, at + Duration::from_secs(1));
        let later = at + Duration::from_secs(3);
        let ago = Duration::from_secs(2);
        assert_eq!(leases.next(QUEUE, false, later), Next::Avoid { ago });
        assert_eq!(leases.next(QUEUE, true, later), Next::Avoid { ago });
        let lapsed = at + Duration::from_secs(1) + REFUSED_FOR;
        assert_eq!(leases.next(QUEUE, false, lapsed), Next::Declare);
    }

    #[test]
    fn a_refusal_is_forgotten_once_the_queue_is_declared() {
        let (mut leases, at) = start();
        leases.refused(QUEUE, at);
        leases.declared(QUEUE, at + REFUSED_FOR);
        assert_eq!(
            leases.next(QUEUE, false, at + REFUSED_FOR + Duration::from_secs(1)),
            Next::Use
        );
    }

    #[test]
    fn each_delay_has_its_own_lease() {
        let (mut leases, at) = start();
        leases.refused(QUEUE, at);
        assert_eq!(leases.next("q.retry.4000", false, at), Next::Declare);
    }
}
