//! The rollout: how a fleet moves from one phase to the next and who
//! decides whether it may.
//!
//! - [`canary`]: the judge — pure statistics over two sides' executor
//!   totals, the same rule wherever a canary is compared with the main phase;
//! - [`control`]: a worker's line to its launcher's supervisor (readiness,
//!   the totals the judge reads, promote requests, rollback notices);
//! - [`fleet`]: the same judge across a service's instances while an
//!   engine moves them to another phase task by task (the api runs it);
//! - [`heartbeat`]: every instance's heartbeat over AMQP, the promote
//!   listener, and the launcher's rollbacks published as notifications;
//! - [`table`]: the rollout table the api keeps from the heartbeats.
//!
//! Layers point one way: `switchyard-launcher` (the supervisor) and
//! `switchyard-service` (the skeleton) depend on this crate, and this one
//! on messaging, never the reverse (see `docs/architecture.md`).
#![deny(missing_docs)]

pub mod canary;
pub mod control;
pub mod fleet;
pub mod heartbeat;
pub mod table;

pub use canary::CanaryConfig;
pub use control::{RolledBack, SupervisorLink};
pub use heartbeat::RolloutConfig;
