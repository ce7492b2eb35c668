//! How long a poll waited for a CPU: what tells a poll that held its thread
//! from one whose thread was descheduled.
//!
//! The poll timer ([`crate::watch`]) measures wall time. On a busy machine a
//! runtime thread can be preempted in the middle of a poll and wait tens of
//! milliseconds for a CPU: the poll "took" that long though its code ran
//! for microseconds. Counted as a slow poll, that is noise in exactly the
//! signal a canary is judged on (a new phase's code blocking the loop) —
//! and it falls on whichever instance the scheduler happened to pick.
//!
//! Linux counts, per thread, the time it spent runnable but not running
//! (`/proc/thread-self/schedstat`, second field, ns; the kernel's
//! `Documentation/scheduler/sched-stats.rst`). Reading it costs a syscall,
//! too much for every poll, so each thread keeps a [`Mark`] refreshed at the
//! start of a poll only when it is older than half the slow-poll threshold;
//! a slow poll reads the counter once more and credits itself only the
//! waiting that cannot have happened before it started
//! ([`waited_during`]). Waiting in a blocking call (a sleep, a lock, I/O)
//! is not runnable time: such a poll still counts as slow. Where the file
//! cannot be read (not Linux), nothing is credited.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

/// This thread's waiting-for-a-CPU total at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub at: Instant,
    pub waited_ns: u64,
}

/// At least how long a poll begun at `started` waited for a CPU, given the
/// thread's total `waited_ns` now and an earlier `mark`: the growth since
/// the mark, less all the time between the mark and the poll's start
/// (the thread may have waited through all of it).
pub(crate) fn waited_during(mark: Mark, started: Instant, waited_ns: u64) -> Duration {
    let grown = Duration::from_nanos(waited_ns.saturating_sub(mark.waited_ns));
    grown.saturating_sub(started.saturating_duration_since(mark.at))
}

struct Counter {
    /// `None` once opening it failed: never tried again on this thread.
    file: Option<File>,
    mark: Option<Mark>,
}

thread_local! {
    static COUNTER: RefCell<Counter> = RefCell::new(Counter {
        file: File::open("/proc/thread-self/schedstat").ok(),
        mark: None,
    });
}

/// The second field of a `schedstat` line.
fn parse_waited(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn read(file: &File) -> Option<u64> {
    let mut buffer = [0u8; 96];
    let length = file.read_at(&mut buffer, 0).ok()?;
    parse_waited(&buffer[..length])
}

/// This thread's mark for a poll starting `now`: the last one, or a new one
/// when the last is older than `fresh_within`.
pub(crate) fn mark(now: Instant, fresh_within: Duration) -> Option<Mark> {
    COUNTER.with(|counter| {
        let mut counter = counter.borrow_mut();
        if let Some(mark) = counter.mark
            && now.saturating_duration_since(mark.at) < fresh_within
        {
            return Some(mark);
        }
        let waited_ns = read(counter.file.as_ref()?)?;
        let mark = Mark { at: now, waited_ns };
        counter.mark = Some(mark);
        Some(mark)
    })
}

/// At least how long this thread waited for a CPU since a poll that began
/// at `started` with `mark`; zero when that cannot be known.
pub(crate) fn waited_since(mark: Option<Mark>, started: Instant) -> Duration {
    let Some(mark) = mark else {
        return Duration::ZERO;
    };
    COUNTER
        .with(|counter| counter.borrow().file.as_ref().and_then(read))
        .map_or(Duration::ZERO, |now| waited_during(mark, started, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_waiting_since_a_mark_taken_at_the_polls_start_is_all_credited() {
        let start = Instant::now();
        let mark = Mark {
            at: start,
            waited_ns: 1_000,
        };
        assert_eq!(waited_during(mark, start, 1_000 + 40_000_000), 40 * MS);
    }

    #[test]
    fn waiting_that_may_have_come_before_the_poll_is_not_credited() {
        let at = Instant::now();
        let mark = Mark { at, waited_ns: 0 };
        // The mark is 3 ms older than the poll: 3 of the 40 ms may be before it.
        assert_eq!(waited_during(mark, at + 3 * MS, 40_000_000), 37 * MS);
        // More time before the poll than waiting since the mark: nothing.
        assert_eq!(
            waited_during(mark, at + 50 * MS, 40_000_000),
            Duration::ZERO
        );
    }

    #[test]
    fn a_counter_that_went_backwards_credits_nothing() {
        let at = Instant::now();
        let mark = Mark {
            at,
            waited_ns: 5_000,
        };
        assert_eq!(waited_during(mark, at, 4_000), Duration::ZERO);
    }

    #[test]
    fn the_schedstat_line_gives_its_second_field() {
        assert_eq!(parse_waited(b"244035760 1394011 38\n"), Some(1_394_011));
        assert_eq!(parse_waited(b"244035760\n"), None);
        assert_eq!(parse_waited(b""), None);
    }

    #[test]
    fn this_threads_counter_is_read_on_linux() {
        let now = Instant::now();
        let first = mark(now, MS);
        assert_eq!(first.is_some(), cfg!(target_os = "linux"));
        // Fresh: the same mark comes back without a read.
        assert_eq!(mark(now, MS), first);
    }
}
