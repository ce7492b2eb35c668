//! AMQP messaging on the executor, in the shape of oslo.messaging and better
//! where it is weak: RPC calls, casts and fanout with replies over direct
//! reply-to (no reply queue can leak) and a fast `NoConsumers`; notifications
//! with listener pools; publisher confirms on every publish; manual acks after
//! the endpoint finished; retries counted per message and dead-lettering with
//! the reason; trace context in message headers.
//!
//! Every endpoint runs through the service's executor, so the phase decides
//! where it runs. The wire format is in `docs/wire-format.md`.
#![deny(missing_docs)]

mod consume;
mod error;
mod leases;
mod notify;
mod rpc;
mod slow;
mod transport;
pub mod wire;

use serde::{Deserialize, Serialize};
use switchyard_config::SecretUrl;

pub use error::{CallError, EndpointError, MessagingError};
pub use notify::{
    Handled, Notification, NotificationListener, NotificationListenerBuilder, Notifier, Priority,
};
pub use rpc::{Bound, RpcClient, RpcServer, RpcServerBuilder, Target, durable_queue_arguments};
pub use transport::{Lost, Transport};

/// Classic or quorum queues for the durable queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// RabbitMQ's classic queues (one node holds each).
    Classic,
    /// Replicated quorum queues (Raft over the cluster's nodes): the
    /// default, as RabbitMQ's production checklist recommends for durable
    /// queues. Instance queues (exclusive, gone with their connection) stay
    /// classic.
    #[default]
    Quorum,
}

/// The `[amqp]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://…` (TLS via rustls).
    pub url: SecretUrl,
    /// The other nodes of the broker's cluster, in the same form: a service
    /// that cannot reach `url`, or loses it for longer than
    /// `recovery_timeout_ms`, connects to the next one (in turn, wrapping
    /// around) and declares its topology and consumers there.
    pub failover_urls: Vec<SecretUrl>,
    /// Heartbeat interval in seconds (added to the URL unless it sets one).
    pub heartbeat_s: u16,
    /// How long the first connection may take.
    pub connect_timeout_ms: u64,
    /// The RPC topic exchange; notifications use `<exchange>.notifications`.
    pub exchange: String,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// Larger bodies are dead-lettered (or refused, for calls) unread.
    pub max_body_bytes: usize,
    /// First retry delay; doubles per delivery, at most 32×.
    pub retry_delay_ms: u64,
    /// `classic` or `quorum` for durable queues.
    pub queue_type: QueueType,
    /// Durable queues unused this long are deleted by the broker
    /// (`x-expires`); 0 keeps them forever.
    pub queue_expires_ms: u64,
    /// PEM CA certificate(s) trusted for an `amqps://` URL (required for it).
    pub tls_ca_file: String,
    /// How long the connection may stay down before the service rebuilds
    /// its messaging from scratch (lapin's recovery does not always succeed).
    pub recovery_timeout_ms: u64,
    /// Most messages waiting in a topic's queue (`x-max-length`); a cast
    /// beyond is refused by the broker (`x-overflow = reject-publish`) and the
    /// publisher told, so back-pressure reaches the api's callers as
    /// RESOURCE_EXHAUSTED. 0: no limit. Applies to queues declared from now
    /// on (an existing queue keeps its arguments; see docs/rollout.md).
    pub max_queue_length: u32,
    /// A consumer of a durable queue given nothing for this long, and
    /// holding nothing unsettled, moves to a fresh channel and closes the
    /// old one: deliveries the broker counts as sent on it that never
    /// arrived go back to the queue (a quorum queue can keep a consumer's
    /// prefetch window that way after a partition, rabbitmq-server#15473).
    /// 0: never; else at least 1000.
    pub renew_idle_consumers_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            failover_urls: Vec::new(),
            heartbeat_s: 30,
            connect_timeout_ms: 10_000,
            exchange: "switchyard".to_string(),
            max_deliveries: 5,
            max_body_bytes: 1024 * 1024,
            retry_delay_ms: 200,
            queue_type: QueueType::Quorum,
            queue_expires_ms: 0,
            tls_ca_file: String::new(),
            recovery_timeout_ms: 15_000,
            max_queue_length: 100_000,
            renew_idle_consumers_ms: 30_000,
        }
    }
}

impl AmqpConfig {
    /// Every broker address: `url`, then `failover_urls`.
    pub fn brokers(&self) -> impl Iterator<Item = &SecretUrl> {
        std::iter::once(&self.url).chain(&self.failover_urls)
    }

    /// How long a consumer stays idle before it renews its channel; `None`
    /// for never.
    pub fn renew_idle_consumers(&self) -> Option<std::time::Duration> {
        (self.renew_idle_consumers_ms > 0)
            .then(|| std::time::Duration::from_millis(self.renew_idle_consumers_ms))
    }

    /// Range checks, relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        use switchyard_config::check;
        let mut problems = Vec::new();
        let keys = std::iter::once(("url", &self.url))
            .chain(self.failover_urls.iter().map(|url| ("failover_urls", url)));
        for (key, url) in keys {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                problems.push((
                    key,
                    format!("`{url}` is not an AMQP URL; accepted: amqp://… or amqps://…"),
                ));
            }
        }
        if self.brokers().any(|url| url.starts_with("amqps://")) && self.tls_ca_file.is_empty() {
            problems.push((
                "tls_ca_file",
                "an amqps:// URL needs the broker's CA; accepted: the path of a PEM CA certificate"
                    .to_string(),
            ));
        }
        if let Some(problem) = check::never_or_at_least(self.renew_idle_consumers_ms, 1000, "ms") {
            problems.push(("renew_idle_consumers_ms", problem));
        }
        if self.max_deliveries == 0 {
            problems.push((
                "max_deliveries",
                "0 is out of range; accepted: 1 or more".to_string(),
            ));
        }
        problems.extend(check::found([
            ("exchange", check::broker_name(&self.exchange)),
            ("tls_ca_file", check::pem_file(&self.tls_ca_file)),
            (
                "max_body_bytes",
                // RabbitMQ's own default `max_message_size` is 128 MiB.
                check::within(self.max_body_bytes as u64, 1024, 128 * 1024 * 1024, "bytes"),
            ),
            (
                "retry_delay_ms",
                check::at_least(self.retry_delay_ms, 1, "ms"),
            ),
            (
                "connect_timeout_ms",
                check::at_least(self.connect_timeout_ms, 1, "ms"),
            ),
            (
                "recovery_timeout_ms",
                check::at_least(self.recovery_timeout_ms, 1, "ms"),
            ),
        ]));
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_consumers_renew_never_or_after_a_second_at_least() {
        let problems = |ms| {
            AmqpConfig {
                renew_idle_consumers_ms: ms,
                ..AmqpConfig::default()
            }
            .problems()
        };
        assert!(problems(0).is_empty());
        assert!(problems(1_000).is_empty());
        let refused = problems(500);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "renew_idle_consumers_ms");
        assert!(refused[0].1.contains("accepted: 0 (never)"), "{refused:?}");
        assert_eq!(
            AmqpConfig::default().renew_idle_consumers(),
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn every_failover_address_is_checked_like_the_first() {
        let config = AmqpConfig {
            failover_urls: vec![
                SecretUrl::new("amqp://guest:secret@node-2:5672/%2f"),
                SecretUrl::new("http://node-3:15672/"),
                SecretUrl::new("amqps://guest:secret@node-4:5671/%2f"),
            ],
            ..AmqpConfig::default()
        };
        let problems = config.problems();
        let keys: Vec<&str> = problems.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["failover_urls", "tls_ca_file"], "{problems:?}");
        assert!(
            problems[0].1.contains("http://node-3:15672/"),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .all(|(_, message)| !message.contains("secret")),
            "{problems:?}"
        );
        let brokers: Vec<String> = config.brokers().map(ToString::to_string).collect();
        assert_eq!(brokers.len(), 4);
        assert!(
            brokers.iter().all(|url| !url.contains("secret")),
            "{brokers:?}"
        );
    }
}
