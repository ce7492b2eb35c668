//! The bounded pool of OS worker threads behind the `threaded` and `bridged`
//! phases.
//!
//! The pool itself never queues more than its capacity: the executor takes a
//! slot (a semaphore permit) before handing a job over, so the channel below
//! holds at most `pool_size` jobs and back-pressure happens in the async
//! dispatcher, where waiting is cheap.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use crate::Phase;

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
}

pub(crate) type Job = Box<dyn FnOnce(&Worker) + Send + 'static>;

enum Message {
    Run(Job),
    Stop,
}

/// A fixed set of named worker threads fed by one channel.
pub(crate) struct Pool {
    sender: Sender<Message>,
    size: usize,
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
        let (sender, receiver) = crossbeam_channel::unbounded();
        for index in 0..size {
            let runtime = match phase {
                Phase::Bridged => runtime.clone(),
                _ => None,
            };
            let receiver: Receiver<Message> = receiver.clone();
            thread::Builder::new()
                .name(format!("{name}-worker-{index}"))
                .spawn(move || work(Worker { runtime }, receiver))?;
        }
        Ok(Self { sender, size })
    }

    /// Hands a job to the next free worker.
    pub fn submit(&self, job: Job) {
        // The receivers live as long as the threads, which only stop after
        // `stop`; a failed send can only happen after that, and the job's
        // result channel then reports the request as abandoned.
        let _ = self.sender.send(Message::Run(job));
    }

    /// Lets every worker finish the jobs already queued, then exit.
    pub fn stop(&self) {
        for _ in 0..self.size {
            let _ = self.sender.send(Message::Stop);
        }
    }
}

fn work(worker: Worker, receiver: Receiver<Message>) {
    while let Ok(Message::Run(job)) = receiver.recv() {
        // Jobs catch their endpoint's panics themselves; this is the second
        // line that keeps the pool at its size whatever happens in a job.
        let _ = catch_unwind(AssertUnwindSafe(|| job(&worker)));
    }
}
