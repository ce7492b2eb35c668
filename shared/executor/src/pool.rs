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
    /// In the `bridged` phase, the thread's own current-thread runtime that
    /// drives async endpoint bodies to completion.
    pub runtime: Option<tokio::runtime::Runtime>,
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
    /// each builds its current-thread runtime before taking work.
    pub fn start(name: &str, phase: Phase, size: usize) -> std::io::Result<Self> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        for index in 0..size {
            let runtime = match phase {
                Phase::Bridged => Some(
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?,
                ),
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
