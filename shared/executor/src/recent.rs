//! The run times of the most recent calls, one by one, for the canary judge.
//!
//! The log2 histogram in [`crate::stats`] is right for `/metrics` but can
//! only tell latencies apart by a factor of two; a rank test between canary
//! and main workers needs the calls themselves. This ring keeps the last
//! [`RECENT`] run times of an executor (all endpoints) at the cost of one
//! `fetch_add` and one store per call; a reader takes what was written since
//! its last read (the newest [`RECENT`] when more were written: a sample).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many run times the ring holds.
pub const RECENT: usize = 4096;

/// A ring of recent run times in microseconds.
#[derive(Debug)]
pub struct RecentRunTimes {
    /// Sequence number of the next write.
    next: AtomicU64,
    /// `(sequence & 0xffff_ffff) << 32 | microseconds`: a reader takes a slot
    /// only when its sequence is the one it expects, so a slot being
    /// rewritten is never read as a call that did not happen.
    slots: Box<[AtomicU64]>,
}

impl Default for RecentRunTimes {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            slots: (0..RECENT).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }
}

impl RecentRunTimes {
    /// Records one call's run time (capped at about 71 minutes).
    pub fn record(&self, run_time: Duration) {
        let us = u32::try_from(run_time.as_micros()).unwrap_or(u32::MAX);
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(sequence % RECENT as u64) as usize];
        slot.store(
            ((sequence & 0xffff_ffff) << 32) | u64::from(us),
            Ordering::Release,
        );
    }

    /// The run times written since `cursor` (at most the newest [`RECENT`]),
    /// in microseconds, and the cursor for the next read.
    pub fn since(&self, cursor: u64) -> (Vec<u32>, u64) {
        let next = self.next.load(Ordering::Acquire);
        let from = cursor.max(next.saturating_sub(RECENT as u64));
        let taken = (from..next)
            .filter_map(|sequence| {
                let value = self.slots[(sequence % RECENT as u64) as usize].load(Ordering::Acquire);
                ((value >> 32) == (sequence & 0xffff_ffff)).then_some(value as u32)
            })
            .collect();
        (taken, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_each_call_once_and_the_newest_when_it_fell_behind() {
        let ring = RecentRunTimes::default();
        for us in 1..=10u64 {
            ring.record(Duration::from_micros(us));
        }
        let (first, cursor) = ring.since(0);
        assert_eq!(first, (1..=10).collect::<Vec<u32>>());
        let (none, cursor) = ring.since(cursor);
        assert!(none.is_empty());
        for us in 0..(RECENT as u64 + 100) {
            ring.record(Duration::from_micros(us));
        }
        let (behind, _) = ring.since(cursor);
        assert_eq!(behind.len(), RECENT, "only the newest are kept");
        assert_eq!(behind.last().copied(), Some(RECENT as u32 + 99));
    }
}
