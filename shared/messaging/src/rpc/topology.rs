//! What RPC and notifications declare on the broker: exchanges, durable
//! and per-instance queues, bindings.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

use crate::wire::{self, rabbitmq};
use crate::{MessagingError, Transport};

/// Why a declaration can go unanswered for long, said with the warning.
const CLUSTER_WAIT: &str = "a RabbitMQ cluster creates no queue while one of its members is \
                            unreachable but not yet declared down";

/// A declaration, named in the log when the broker is slow to answer it.
async fn answered<T>(what: impl Fn() -> String, operation: impl Future<Output = T>) -> T {
    crate::slow::reported(what, CLUSTER_WAIT, operation).await
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), MessagingError> {
    let declaring = channel.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    );
    answered(|| format!("declaring exchange `{name}`"), declaring)
        .await
        .map_err(MessagingError::broker(format!(
            "declaring exchange `{name}`"
        )))
}

/// How long a durable queue may grow, and what happens at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No limit (dead-letter queues: where messages come to rest).
    Unbounded,
    /// At most this many messages; a publish beyond is refused (`nack`), so
    /// a confirmed publisher (the api) is told and tells its caller to slow
    /// down instead of acknowledging what piles up.
    RejectPublish(u32),
    /// At most this many messages; the oldest is dropped for a new one. For
    /// notifications where the newest supersedes the older (a meter's
    /// `sample.recorded`: the evaluator reads the meter's latest periods).
    DropHead(u32),
}

/// Deliveries of one message without an acknowledgement before a quorum
/// queue dead-letters it: well above `amqp.max_deliveries`, which counts
/// failures the service saw; this counts crashes and returns it did not.
pub(crate) const DELIVERY_LIMIT: i32 = 20;

/// The arguments a durable queue is declared with (by
/// `declare_durable_queue`, below): its type, expiry, length bound, and for
/// a quorum queue with `dead_letters` the broker's delivery limit. Public so
/// that a client outside Switchyard (or the benchmark's raw contender) can
/// declare a queue the broker treats exactly as Switchyard's.
pub fn durable_queue_arguments(
    config: &crate::AmqpConfig,
    bound: Bound,
    dead_letters: Option<&str>,
) -> FieldTable {
    let mut arguments = typed_arguments(config);
    if config.queue_type == crate::QueueType::Quorum
        && let (Some(dead_letters), false) = (dead_letters, matches!(bound, Bound::DropHead(_)))
    {
        arguments.insert(
            rabbitmq::DELIVERY_LIMIT.into(),
            lapin::types::AMQPValue::LongInt(DELIVERY_LIMIT),
        );
        wire::set_str(&mut arguments, rabbitmq::DEAD_LETTER_EXCHANGE, "");
        wire::set_str(
            &mut arguments,
            rabbitmq::DEAD_LETTER_ROUTING_KEY,
            dead_letters,
        );
    }
    if config.queue_expires_ms > 0 {
        arguments.insert(
            rabbitmq::EXPIRES.into(),
            lapin::types::AMQPValue::LongLongInt(
                config.queue_expires_ms.min(i64::MAX as u64) as i64
            ),
        );
    }
    let (length, overflow) = match bound {
        Bound::Unbounded => (0, ""),
        Bound::RejectPublish(length) => (length, "reject-publish"),
        Bound::DropHead(length) => (length, "drop-head"),
    };
    if length > 0 {
        arguments.insert(
            rabbitmq::MAX_LENGTH.into(),
            lapin::types::AMQPValue::LongLongInt(i64::from(length)),
        );
        wire::set_str(&mut arguments, rabbitmq::OVERFLOW, overflow);
    }
    arguments
}

/// A queue that outlives its consumers: casts and notifications wait in it.
///
/// Declared on a throwaway channel: RabbitMQ refuses to declare an existing
/// queue with other arguments (`PRECONDITION_FAILED - inequivalent arg`) and
/// closes the channel. Such a queue (made by an earlier version, or with
/// another `amqp.queue_type`) is used as it is, with a warning saying how to
/// apply the new arguments, instead of stopping the service at start-up.
///
/// A quorum queue with `dead_letters` also gets RabbitMQ's own delivery
/// limit: a message the broker delivered [`DELIVERY_LIMIT`] times without
/// an acknowledgement — its consumers died on it, or returned it while
/// stopping — is dead-lettered there by the broker (`x-death` says
/// `delivery_limit`), so a message that kills every consumer cannot loop
/// for ever. Not for a `DropHead` queue: the messages it drops by design
/// would be dead-lettered too.
pub(crate) async fn declare_durable_queue(
    transport: &Transport,
    name: &str,
    bound: Bound,
    dead_letters: Option<&str>,
) -> Result<(), MessagingError> {
    let arguments = durable_queue_arguments(transport.config(), bound, dead_letters);
    match declare_alone(transport, name, arguments).await {
        Err(MessagingError::Broker { source, .. }) if is_precondition_failed(&source) => {
            tracing::warn!(
                queue = name,
                "queue `{name}` exists with other arguments ({source}); using it as it is. \
                 To apply the configured ones (queue type, expiry, length limit), let it drain \
                 and delete it, or set them with a RabbitMQ policy (docs/rollout.md)"
            );
            Ok(())
        }
        declared => declared,
    }
}

/// Declares `queue` ([`declare_durable_queue`]) and its dead-letter queue
/// ([`wire::dead_letter_queue`]), where the broker and the consumers park
/// what cannot be handled: the dead-letter queue's name.
pub(crate) async fn declare_with_dead_letters(
    transport: &Transport,
    queue: &str,
    bound: Bound,
) -> Result<String, MessagingError> {
    let dead_letters = wire::dead_letter_queue(queue);
    declare_durable_queue(transport, queue, bound, Some(&dead_letters)).await?;
    declare_durable_queue(transport, &dead_letters, Bound::Unbounded, None).await?;
    Ok(dead_letters)
}

/// How long a retry queue outlives its last declaration: it is gone a
/// minute (plus its delay) after the last service that used it stopped.
pub(crate) const RETRY_QUEUE_IDLE: Duration = Duration::from_secs(60);

/// Declares the queue where `queue`'s messages wait `delay` before they
/// are delivered again ([`wire::retry_queue`]): a queue-wide TTL,
/// dead-lettering back to `queue` through the default exchange, gone
/// [`RETRY_QUEUE_IDLE`] after its last declaration. Returns its name.
///
/// Always a classic queue, whatever the configured type: RabbitMQ deletes a
/// quorum queue `x-expires` after it was created however often it is
/// declared again (rabbitmq-server#5894, open; measured on 3.10.8 by
/// `cargo run -p switchyard-bench --example queue_expiry`), so
/// a quorum retry queue would vanish under a long-running service with the
/// messages waiting in it. A classic queue's lease is renewed by each
/// declaration, and its messages wait there for seconds, not for a
/// failover.
pub(crate) async fn declare_retry_queue(
    transport: &Transport,
    queue: &str,
    delay: Duration,
) -> Result<String, MessagingError> {
    let name = wire::retry_queue(queue, delay);
    let arguments = wire::retry_queue_arguments(queue, delay, RETRY_QUEUE_IDLE);
    declare_alone(transport, &name, arguments).await?;
    Ok(name)
}

/// The arguments every durable queue starts from: its type.
fn typed_arguments(config: &crate::AmqpConfig) -> FieldTable {
    match config.queue_type {
        crate::QueueType::Quorum => wire::typed_queue_arguments(rabbitmq::QUORUM),
        // No type named: the broker's default.
        crate::QueueType::Classic => FieldTable::default(),
    }
}

/// Declares durable queue `name` on a channel of its own: a declaration the
/// broker refuses closes the channel it came on.
async fn declare_alone(
    transport: &Transport,
    name: &str,
    arguments: FieldTable,
) -> Result<(), MessagingError> {
    let channel = transport.channel().await?;
    let declaring = channel.queue_declare(name.into(), QueueDeclareOptions::durable(), arguments);
    answered(|| format!("declaring queue `{name}`"), declaring)
        .await
        .map_err(MessagingError::broker(format!("declaring queue `{name}`")))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// RabbitMQ's 406: the declared arguments differ from the existing queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// A queue of one instance: gone with its connection, so nothing leaks.
pub(crate) async fn declare_instance_queue(
    channel: &Channel,
    name: &str,
) -> Result<(), MessagingError> {
    let declaring = channel.queue_declare(
        name.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    );
    answered(|| format!("declaring queue `{name}`"), declaring)
        .await
        .map(|_| ())
        .map_err(MessagingError::broker(format!("declaring queue `{name}`")))
}

pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), MessagingError> {
    let binding = channel.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    answered(|| format!("binding `{queue}` to `{exchange}`"), binding)
        .await
        .map_err(MessagingError::broker(format!(
            "binding `{queue}` to `{exchange}` with `{key}`"
        )))
}
