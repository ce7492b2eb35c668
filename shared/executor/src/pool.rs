//! The bounded pool of OS worker threads behind the `threaded` and `bridged`
//! phases.
//!
//! The pool itself never queues more than its capacity: the executor takes a
//! slot (a semaphore permit) before handing a job over, so the queue below
//! holds at most `pool_size` jobs and back-pressure happens in the async
//! dispatcher, where waiting is cheap.
//!
//! **One idle worker at a time looks for work; the others sleep.** A worker
//! about to answer its caller takes the looking role unless another worker
//! has it ([`Worker::finishing`]); the looking worker spins briefly, then
//! yields its core a few times, then parks. A job submitted meanwhile is
//! left to it and wakes nobody. Every other idle worker is parked, and a job
//! that finds nobody looking wakes the one parked last, whose stack and
//! caches are warm.
//!
//! crossbeam's channel, used before, let *every* idle receiver spin and call
//! `sched_yield` up to eight times before it slept. On two cores shared with
//! the runtime's workers and the broker each of those yields is a context
//! switch: gRPC echo in the `threaded` phase made 4.3 yields and 5.6 context
//! switches per request, and still woke a sleeping thread for almost every
//! job. One looker keeps crossbeam's short wait for a lone caller's next
//! request without the herd (docs/benchmarks.md, "Attempts").

use std::cell::Cell;
use std::collections::VecDeque;
use std::hint::spin_loop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};

use crate::Phase;

/// Rounds of spin-loop hints (1, 2, 4, … 64 of them, 127 in all) the
/// looking worker spends before its first yield: a lone caller on the other
/// core gets its answer and submits again within them, and the job is taken
/// without a context switch. crossbeam's receivers spun as long.
const SPIN_STEPS: u32 = 7;

/// How often the looking worker then yields its core before it parks.
const SPIN_YIELDS: u32 = 4;

/// What a worker thread offers the job it runs.
pub(crate) struct Worker {
    /// In the `bridged` phase, the service runtime whose drivers the worker
    /// uses while it drives an async body to completion on its own thread
    /// (`Handle::block_on`). A runtime per worker thread would bind every
    /// socket an endpoint opens (a pooled database connection, say) to that
    /// thread's reactor, which nobody drives while the thread waits for work:
    /// the next endpoint to borrow the connection from another thread would
    /// hang. Borrowing the service runtime's drivers keeps one reactor for
    /// every phase, and still one request per pool thread.
    pub runtime: Option<tokio::runtime::Handle>,
    shared: Arc<Shared>,
    /// Set by [`Worker::finishing`] when this worker took the looking role.
    looking: Cell<bool>,
}

impl Worker {
    /// Called by a job just before it answers its caller: this worker takes
    /// the looking role now, if nobody has it. Otherwise a caller that gets
    /// its answer and submits its next request before this worker is back
    /// at the queue finds nobody looking and wakes a parked worker for a job
    /// this one is about to take anyway.
    pub fn finishing(&self) {
        let mut state = crate::sync::lock(&self.shared.state);
        if !state.looking {
            state.looking = true;
            self.looking.set(true);
        }
    }
}

pub(crate) type Job = Box<dyn FnOnce(&Worker) + Send + 'static>;

/// A fixed set of named worker threads sharing one queue.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// How many jobs `state.jobs` holds, read by the looking worker without
    /// the lock.
    queued: AtomicUsize,
}

struct State {
    jobs: VecDeque<Job>,
    /// Parked workers (index, thread), the most recently parked last. A
    /// worker lists itself only while the queue is empty, and whoever takes
    /// it off the list unparks it: a listed worker never misses a job.
    parked: Vec<(usize, Thread)>,
    /// Whether each worker is on `parked`: one that wakes still listed (a
    /// spurious wake-up) takes itself off, or a submitter would count on it
    /// while it runs another job.
    listed: Vec<bool>,
    /// An idle worker is looking for work: a new job is left to it.
    looking: bool,
    stopping: bool,
}

impl State {
    fn pop(&mut self, queued: &AtomicUsize) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        queued.store(self.jobs.len(), Ordering::Release);
        Some(job)
    }

    /// Takes the parked worker to wake, if any, unless the work is
    /// `covered` already.
    fn unlist_unless(&mut self, covered: bool) -> Option<Thread> {
        if covered {
            return None;
        }
        let (index, thread) = self.parked.pop()?;
        self.listed[index] = false;
        Some(thread)
    }
}

/// Wakes the worker taken off the parked list, outside the lock.
fn wake(worker: Option<Thread>) {
    if let Some(worker) = worker {
        worker.unpark();
    }
}

impl Pool {
    /// Starts `size` threads named `<name>-worker-<i>`; in the `bridged` phase
    /// they drive async bodies with `runtime`'s drivers.
    pub fn start(
        name: &str,
        phase: Phase,
        size: usize,
        runtime: Option<tokio::runtime::Handle>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(size),
                parked: Vec::with_capacity(size),
                listed: vec![false; size],
                looking: false,
                stopping: false,
            }),
            queued: AtomicUsize::new(0),
        });
        let pool = Self {
            shared: Arc::clone(&shared),
        };
        for index in 0..size {
            let worker = Worker {
                runtime: match phase {
                    Phase::Bridged => runtime.clone(),
                    _ => None,
                },
                shared: Arc::clone(&shared),
                looking: Cell::new(false),
            };
            let started = thread::Builder::new()
                .name(format!("{name}-worker-{index}"))
                .spawn(move || work(index, &worker));
            if let Err(error) = started {
                // The threads already started must not wait for work forever.
                pool.stop();
                return Err(error);
            }
        }
        Ok(pool)
    }

    /// Hands a job to the next free worker. After [`Pool::stop`] the job is
    /// dropped unrun, and its result channel reports the request as abandoned.
    pub fn submit(&self, job: Job) {
        let mut state = crate::sync::lock(&self.shared.state);
        if state.stopping {
            drop(state);
            drop(job);
            return;
        }
        state.jobs.push_back(job);
        self.shared
            .queued
            .store(state.jobs.len(), Ordering::Release);
        // The looking worker takes one job; any more wake a parked worker
        // each, or a burst of jobs would wait for one worker to run them all.
        let for_the_looker = state.looking && state.jobs.len() == 1;
        let woken = state.unlist_unless(for_the_looker);
        drop(state);
        wake(woken);
    }

    /// Lets every worker finish the jobs already queued, then exit.
    pub fn stop(&self) {
        let parked = {
            let mut state = crate::sync::lock(&self.shared.state);
            state.stopping = true;
            state.listed.fill(false);
            std::mem::take(&mut state.parked)
        };
        for (_, worker) in parked {
            worker.unpark();
        }
    }
}

fn work(index: usize, worker: &Worker) {
    let shared = &worker.shared;
    loop {
        // A worker that took the looking role (out of a job, or awake with
        // nothing to do) looks once; one that looked in vain parks.
        let claimed = worker.looking.replace(false);
        let found = if claimed { shared.look() } else { None };
        let job = match found {
            Some(job) => job,
            None => {
                let mut state = crate::sync::lock(&shared.state);
                if state.listed[index] {
                    // Woken spuriously: still listed, so off the list first.
                    state.listed[index] = false;
                    state.parked.retain(|(listed, _)| *listed != index);
                }
                match state.pop(&shared.queued) {
                    Some(job) => {
                        // More jobs and nobody looking: wake another worker.
                        let covered = state.jobs.is_empty() || state.looking;
                        let woken = state.unlist_unless(covered);
                        drop(state);
                        wake(woken);
                        job
                    }
                    None if state.stopping => return,
                    None if !claimed && !state.looking => {
                        state.looking = true;
                        drop(state);
                        worker.looking.set(true);
                        continue;
                    }
                    None => {
                        state.listed[index] = true;
                        state.parked.push((index, thread::current()));
                        drop(state);
                        // Returns once a submitter (or `stop`) took this
                        // worker off the list, or spuriously.
                        thread::park();
                        continue;
                    }
                }
            }
        };
        // Jobs catch their endpoint's panics themselves; this is the second
        // line that keeps the pool at its size whatever happens in a job.
        let _ = catch_unwind(AssertUnwindSafe(|| job(worker)));
    }
}

impl Shared {
    /// Looks for a job as the looking worker: [`SPIN_STEPS`] rounds of
    /// spinning, then up to [`SPIN_YIELDS`] yields. Gives the role up either
    /// way, and wakes a parked worker for the jobs that came meanwhile.
    fn look(&self) -> Option<Job> {
        let last = SPIN_STEPS + SPIN_YIELDS;
        for attempt in 0..=last {
            if attempt < SPIN_STEPS {
                for _ in 0..(1u32 << attempt) {
                    spin_loop();
                }
            } else {
                thread::yield_now();
            }
            if self.queued.load(Ordering::Acquire) == 0 && attempt < last {
                continue;
            }
            let mut state = crate::sync::lock(&self.state);
            let job = state.pop(&self.queued);
            if job.is_some() || state.stopping || attempt == last {
                state.looking = false;
                // A job submitted while this worker looked woke nobody.
                let covered = job.is_none() || state.jobs.is_empty();
                let woken = state.unlist_unless(covered);
                drop(state);
                wake(woken);
                return job;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    fn pool(size: usize) -> Pool {
        match Pool::start("pool-test", Phase::Threaded, size, None) {
            Ok(pool) => pool,
            Err(error) => panic!("test set-up: {error}"),
        }
    }

    /// Occupies one worker with a job that runs until the returned sender is
    /// dropped; returns once the job has started.
    fn occupy(pool: &Pool) -> mpsc::Sender<()> {
        let (started, job_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        pool.submit(Box::new(move |_| {
            let _ = started.send(());
            let _ = released.recv_timeout(BOUND);
        }));
        assert!(
            job_started.recv_timeout(BOUND).is_ok(),
            "the job never started"
        );
        release
    }

    /// Submits a job that reports on the returned receiver when it runs.
    fn report(pool: &Pool) -> mpsc::Receiver<()> {
        let (ran, job_ran) = mpsc::channel();
        pool.submit(Box::new(move |_| {
            let _ = ran.send(());
        }));
        job_ran
    }

    #[test]
    fn every_job_runs_exactly_once_whoever_submits_it() {
        let pool = Arc::new(pool(3));
        let ran = Arc::new(AtomicU64::new(0));
        let (done, finished) = mpsc::channel();
        let submitters: Vec<_> = (0..4)
            .map(|_| {
                let (pool, ran, done) = (Arc::clone(&pool), Arc::clone(&ran), done.clone());
                thread::spawn(move || {
                    for _ in 0..5_000 {
                        let (ran, done) = (Arc::clone(&ran), done.clone());
                        pool.submit(Box::new(move |worker| {
                            ran.fetch_add(1, Ordering::Relaxed);
                            worker.finishing();
                            let _ = done.send(());
                        }));
                    }
                })
            })
            .collect();
        for submitter in submitters {
            let _ = submitter.join();
        }
        for n in 0..20_000 {
            if finished.recv_timeout(BOUND).is_err() {
                panic!("only {n} of 20,000 jobs finished within {BOUND:?}");
            }
        }
        assert_eq!(ran.load(Ordering::Relaxed), 20_000);
        assert!(finished.recv_timeout(Duration::from_millis(50)).is_err());
    }

    #[test]
    fn a_job_submitted_while_every_worker_is_busy_runs_when_one_is_free() {
        let pool = pool(1);
        let release = occupy(&pool);
        let second = report(&pool);
        assert!(second.recv_timeout(Duration::from_millis(100)).is_err());
        drop(release);
        assert!(second.recv_timeout(BOUND).is_ok());
    }

    #[test]
    fn stop_lets_queued_jobs_finish_and_drops_later_ones_unrun() {
        let pool = pool(1);
        let release = occupy(&pool);
        let queued = report(&pool);
        pool.stop();
        drop(release);
        assert!(queued.recv_timeout(BOUND).is_ok());
        // Dropped unrun: the sender is gone without a value.
        assert_eq!(
            report(&pool).recv_timeout(BOUND),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn an_idle_pool_parks_every_worker_and_parks_it_again_after_a_job() {
        let pool = pool(4);
        let parked = || crate::sync::lock(&pool.shared.state).parked.len();
        let until = Instant::now() + BOUND;
        while parked() < 4 {
            assert!(
                Instant::now() < until,
                "idle workers still awake: {}",
                4 - parked()
            );
            thread::sleep(Duration::from_millis(5));
        }
        let (ran, job_ran) = mpsc::channel();
        pool.submit(Box::new(move |_| {
            let _ = ran.send(thread::current().name().map(str::to_string));
        }));
        let name = job_ran.recv_timeout(BOUND).ok().flatten();
        assert!(name.is_some_and(|name| name.starts_with("pool-test-worker-")));
        let until = Instant::now() + BOUND;
        while parked() < 4 {
            assert!(
                Instant::now() < until,
                "the woken worker never parked again"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}
