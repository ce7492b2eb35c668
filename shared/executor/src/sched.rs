//! Where a slow poll's time went: waiting for a CPU (descheduled), on one
//! (the body's code), or neither (blocked in a call).
//!
//! The poll timer ([`crate::watch`]) measures wall time. On a busy machine a
//! runtime thread can be preempted in the middle of a poll and wait tens of
//! milliseconds for a CPU: the poll "took" that long though its code ran
//! for microseconds. Counted as a slow poll, that is noise in exactly the
//! signal a canary is judged on (a new phase's code blocking the loop) —
//! and it falls on whichever instance the scheduler happened to pick.
//!
//! Linux counts, per thread, the time it spent on a CPU and the time it
//! spent runnable but not running (`/proc/thread-self/schedstat`, first and
//! second fields, ns; the kernel's `Documentation/scheduler/sched-stats.rst`). Reading it costs a syscall,
//! too much for every poll, so each thread keeps a [`Mark`] refreshed at the
//! start of a poll only when it is older than half the slow-poll threshold;
//! a slow poll reads the counter once more and credits itself only the
//! waiting that cannot have happened before it started
//! ([`waited_during`]). Waiting in a blocking call (a sleep, a lock, I/O)
//! is not runnable time: such a poll still counts as slow, and the time on
//! a CPU since the mark (at most what the body ran) tells the operator
//! whether it computed or blocked. Where the file cannot be read (not
//! Linux), nothing is credited or told.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

/// This thread's totals at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub at: Instant,
    /// Time on a CPU.
    pub ran_ns: u64,
    /// Time runnable, waiting for a CPU.
    pub waited_ns: u64,
}

/// Where a poll's time went, as far as the thread's counters tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    /// At least this long waiting for a CPU during the poll.
    pub descheduled: Duration,
    /// At most this long on a CPU and at most this long waiting for one
    /// (both since the mark, which may predate the poll): `None` where the
    /// counters cannot be read.
    pub at_most: Option<(Duration, Duration)>,
}

impl Spent {
    /// At least how much of a poll of `took` its thread spent neither on a
    /// CPU nor waiting for one: blocked in a call.
    pub fn blocked(&self, took: Duration) -> Option<Duration> {
        let (ran, waited) = self.at_most?;
        Some(took.saturating_sub(ran).saturating_sub(waited))
    }
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

/// The first two fields of a `schedstat` line: ns on a CPU, ns waiting.
fn parse(text: &[u8]) -> Option<(u64, u64)> {
    let mut fields = std::str::from_utf8(text).ok()?.split_ascii_whitespace();
    let ran = fields.next()?.parse().ok()?;
    let waited = fields.next()?.parse().ok()?;
    Some((ran, waited))
}

fn read(file: &File) -> Option<(u64, u64)> {
    let mut buffer = [0u8; 96];
    let length = file.read_at(&mut buffer, 0).ok()?;
    parse(&buffer[..length])
}

/// This thread's mark for a poll starting `now`: the last one, or a new one
/// when the last is older than `fresh_within`.
pub(crate) fn mark(now: Instant, fresh_within: Duration) -> Option<Mark> {
    // `try_with`: a poll while the thread's locals are torn down gets no
    // mark, rather than a panic.
    COUNTER
        .try_with(|counter| {
            let mut counter = counter.borrow_mut();
            if let Some(mark) = counter.mark
                && now.saturating_duration_since(mark.at) < fresh_within
            {
                return Some(mark);
            }
            let (ran_ns, waited_ns) = read(counter.file.as_ref()?)?;
            let mark = Mark {
                at: now,
                ran_ns,
                waited_ns,
            };
            counter.mark = Some(mark);
            Some(mark)
        })
        .ok()
        .flatten()
}

/// Where the time of a poll that began at `started` with `mark` went, read
/// now; nothing credited when that cannot be known.
pub(crate) fn spent_since(mark: Option<Mark>, started: Instant) -> Spent {
    let Some(mark) = mark else {
        return Spent::default();
    };
    let Some((ran_ns, waited_ns)) = COUNTER
        .try_with(|counter| counter.borrow().file.as_ref().and_then(read))
        .ok()
        .flatten()
    else {
        return Spent::default();
    };
    let since_mark = |now: u64, then: u64| Duration::from_nanos(now.saturating_sub(then));
    Spent {
        descheduled: waited_during(mark, started, waited_ns),
        at_most: Some((
            since_mark(ran_ns, mark.ran_ns),
            since_mark(waited_ns, mark.waited_ns),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A mark taken now, when the thread had waited `waited_ns` in all.
    fn waited(waited_ns: u64) -> Mark {
        Mark {
            at: Instant::now(),
            ran_ns: 0,
            waited_ns,
        }
    }

    #[test]
    fn the_waiting_since_a_mark_taken_at_the_polls_start_is_all_credited() {
        let mark = waited(1_000);
        assert_eq!(waited_during(mark, mark.at, 1_000 + 40_000_000), 40 * MS);
    }

    #[test]
    fn waiting_that_may_have_come_before_the_poll_is_not_credited() {
        let mark = waited(0);
        let at = mark.at;
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
        let mark = waited(5_000);
        assert_eq!(waited_during(mark, mark.at, 4_000), Duration::ZERO);
    }

    #[test]
    fn blocked_is_what_neither_running_nor_waiting_can_have_taken() {
        let spent = Spent {
            descheduled: 2 * MS,
            at_most: Some((3 * MS, 5 * MS)),
        };
        assert_eq!(spent.blocked(30 * MS), Some(22 * MS));
        assert_eq!(spent.blocked(6 * MS), Some(Duration::ZERO));
        assert_eq!(Spent::default().blocked(30 * MS), None);
    }

    #[test]
    fn the_schedstat_line_gives_time_on_a_cpu_and_time_waiting() {
        assert_eq!(
            parse(b"244035760 1394011 38\n"),
            Some((244_035_760, 1_394_011))
        );
        assert_eq!(parse(b"244035760\n"), None);
        assert_eq!(parse(b""), None);
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
