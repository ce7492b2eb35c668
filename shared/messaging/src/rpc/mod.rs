//! RPC in oslo.messaging's vocabulary: a target is an exchange, a topic and
//! optionally a server; a server exposes endpoints by method name; a client
//! calls (waits for a reply), casts (fire and forget, durable) or fans out
//! (every instance).
//!
//! One module a side: [`server`] (a topic's methods, dispatched in the
//! service's phase and answered), [`client`] (call, cast, fan out) and
//! [`topology`] (the exchanges, queues and bindings both declare).

use crate::wire;

mod client;
mod server;
pub(crate) mod topology;

pub use client::RpcClient;
pub use server::{RpcServer, RpcServerBuilder};
pub use topology::{Bound, durable_queue_arguments};
pub(crate) use topology::{bind, declare_exchange, declare_with_dead_letters};

/// Where RPC messages go: oslo.messaging's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The topic exchange (`amqp.exchange`).
    pub exchange: String,
    /// The topic, e.g. `collector`.
    pub topic: String,
    /// One instance of the topic, when set.
    pub server: Option<String>,
}

impl Target {
    /// Every instance of `topic` (they compete for calls and casts).
    pub fn topic(exchange: &str, topic: &str) -> Self {
        Self {
            exchange: exchange.to_string(),
            topic: topic.to_string(),
            server: None,
        }
    }

    /// The instance `server` of `topic`.
    pub fn server(exchange: &str, topic: &str, server: &str) -> Self {
        Self {
            server: Some(server.to_string()),
            ..Self::topic(exchange, topic)
        }
    }

    fn routing_key(&self) -> String {
        wire::routing_key(&self.topic, self.server.as_deref())
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.exchange, self.routing_key())
    }
}
