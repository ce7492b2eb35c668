//! The rollout over the wire, between a fleet's instances, their launchers
//! and the api: every instance's heartbeat (who it is, its phase and role,
//! how it is doing), promote requests passed to the launchers, and the
//! launchers' rollback notices ([`heartbeat`]).
//!
//! Its own crate so that messaging (AMQP) does not depend on the service
//! skeleton: this crate joins the two. The launcher and its canary judge
//! are still in `switchyard-service` (see `docs/architecture.md`).
#![deny(missing_docs)]

pub mod heartbeat;

pub use heartbeat::RolloutConfig;
