//! What the blocking detector's tests share: an `async` executor whose
//! bodies are polled on the test's own thread, and its warnings.

use switchyard_executor::{DispatchOptions, Endpoint, Executor, ExecutorConfig, Phase};

/// An `async`-phase executor on a current-thread runtime: every poll of a
/// body runs on the thread that calls [`OnThisThread::run_each`].
pub struct OnThisThread {
    pub runtime: tokio::runtime::Runtime,
    pub executor: Executor,
}

impl OnThisThread {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let executor = {
            let _in_runtime = runtime.enter();
            Executor::new("test", ExecutorConfig::in_phase(Phase::Async)).expect("executor")
        };
        Self { runtime, executor }
    }

    /// Registers each endpoint and runs one request through it, in turn.
    pub fn run_each(&self, endpoints: impl IntoIterator<Item = Endpoint<(), ()>>) {
        for endpoint in endpoints {
            let bound = self.executor.register(endpoint).expect("registered");
            self.runtime
                .block_on(bound.dispatch((), DispatchOptions::default()))
                .expect("ran");
        }
    }
}

/// The slow-poll warning about `endpoint` in `log`.
pub fn slow_poll_warning<'a>(log: &'a str, endpoint: &str) -> &'a str {
    log.lines()
        .find(|line| line.contains(&format!("slow poll: endpoint `{endpoint}`")))
        .unwrap_or_else(|| panic!("no slow poll of `{endpoint}` in:\n{log}"))
}
