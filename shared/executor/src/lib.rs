//! The Switchyard executor: one way to run a service's endpoints, in whichever
//! migration phase its configuration names.
//!
//! Transports (AMQP consumers, gRPC servers) are always async. They hand each
//! request to a [`BoundEndpoint`], and the executor decides where the body
//! runs:
//!
//! | phase | where bodies run | blocking endpoint | async endpoint |
//! |---|---|---|---|
//! | [`Phase::Threaded`] | a bounded pool of OS threads | on a pool thread | refused at startup |
//! | [`Phase::Bridged`] | the same pool; each thread drives one async body to completion | on a pool thread | on its pool thread |
//! | [`Phase::Async`] | tasks on the service's runtime | offloaded with `spawn_blocking` (refused when strict) | a task |
//!
//! Every phase gives back-pressure, panic isolation, deadlines, graceful
//! shutdown, a hung-work detector, statistics and a dispatch span. Async
//! bodies are additionally watched by a blocking detector that times each poll.
#![deny(missing_docs)]

mod config;
mod endpoint;
mod error;
mod executor;
mod phase;
mod pool;
pub mod recent;
mod sampler;
mod sched;
pub mod stats;
pub mod sync;
mod watch;

pub use config::ExecutorConfig;
pub use endpoint::{BoxFuture, Context, Endpoint, Outcome};
pub use error::{AbandonedWork, DispatchError, PhaseMismatch, ShutdownReport};
pub use executor::{BoundEndpoint, DispatchOptions, Executor, StartError};
pub use phase::{EndpointKind, EndpointSpec, Phase};
