//! How many bytes a request in flight holds in its dispatch future: the
//! part of `scripts/bench`'s memory cell that the executor's code decides
//! (the rest is the task, the body's own future and the registry of running
//! work).
//!
//! `cargo run --release -p switchyard-bench --example future_size`

use switchyard_executor::{DispatchOptions, Endpoint, Executor, ExecutorConfig, Phase};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // One type in every phase: the phase decides where the body runs,
        // not what the caller's future holds.
        let executor = Executor::new("size", ExecutorConfig::in_phase(Phase::Async))?;
        let endpoint = executor.register(Endpoint::from_async("noop", |_, ()| async {}))?;
        let dispatch = endpoint.dispatch((), DispatchOptions::default());
        println!(
            "a dispatch future holds {} bytes",
            std::mem::size_of_val(&dispatch)
        );
        anyhow::Ok(())
    })
}
