//! What every consumer shares: publishing with confirms, the consume loop
//! that survives connection loss, the process span, and settling a delivery
//! (ack, retry with a delivery count, dead-letter with a reason, or return
//! to the queue).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Span;

use crate::MessagingError;
use crate::leases::{Leases, Next};
use crate::wire;

/// How long a publish waits for a lost connection to come back.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);

/// How long a publish on a live connection may wait for its confirm before
/// the channel is taken for stuck ([`Transport::confirm_stalled`]).
const CONFIRM_STALL: Duration = RECOVERY_WAIT;

/// How long an ack, a nack, a consumer's cancel or a channel's close may go
/// unanswered ([`answered`]).
const ANSWER_WAIT: Duration = RECOVERY_WAIT;

/// `operation` (an ack, a nack, a consumer's cancel, a channel's close),
/// bounded by [`ANSWER_WAIT`]. lapin answers these once their frame is
/// written or the broker replied; nothing fails one whose frame a dying
/// connection caught, and a run's drain waits for every handler and
/// consumer it has: one such wait kept a collector from ever rebuilding
/// after a broker restart (suspected in CI, 2026-12-04: its log ended at
/// "rebuilding messaging", 1,540 of 10,000 acknowledged samples stored).
/// Leaving a delivery unsettled loses nothing: it goes back to its queue
/// with its channel.
pub(crate) async fn answered<T>(
    operation: &str,
    pending: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, MessagingError> {
    bounded(operation, async {
        pending.await.map_err(MessagingError::broker(operation))
    })
    .await
}

/// `pending`'s outcome, or [`MessagingError::Unanswered`] once it took
/// [`ANSWER_WAIT`]: [`answered`] for one lapin operation, or a sequence of
/// them (an idle consumer's renewal).
async fn bounded<T>(
    operation: &str,
    pending: impl Future<Output = Result<T, MessagingError>>,
) -> Result<T, MessagingError> {
    tokio::time::timeout(ANSWER_WAIT, pending)
        .await
        .unwrap_or_else(|_elapsed| {
            Err(MessagingError::Unanswered {
                operation: operation.to_string(),
                waited: ANSWER_WAIT,
            })
        })
}

/// Publishes and waits for the broker's confirm. A publish that fails
/// because the connection is down waits for recovery and is tried once more.
/// Once the transport is declared `lost` it fails at once: the service is
/// rebuilding its messaging, and its drain waits for this publish's caller
/// (a handler whose delivery goes back to its queue unacknowledged). A
/// confirm that does not come within [`CONFIRM_STALL`] — waited for here, or
/// by [`Awaited`] once the caller gave up — declares the transport lost.
pub(crate) async fn publish(
    channel: &Channel,
    transport: &crate::Transport,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), MessagingError> {
    let started = Instant::now();
    let destination = || format!("exchange `{exchange}` key `{routing_key}`");
    let confirmed = async {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let mut attempt = 0;
        let confirmation = loop {
            attempt += 1;
            // Bounded, the send and its confirmation together: a publish
            // caught by the connection dying (written, or waiting to be) is
            // never confirmed, and lapin's recovery does not fail it — the
            // caller (a handler the drain waits for, an api request) would wait
            // forever. No answer is an error, never a confirmation.
            let sent = async {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        options,
                        payload,
                        properties.clone(),
                    )
                    .await?;
                Awaited::new(confirm, transport).await
            };
            let Ok(result) = tokio::time::timeout(RECOVERY_WAIT, sent).await else {
                return Err(MessagingError::Unavailable {
                    destination: destination(),
                    waited: RECOVERY_WAIT,
                });
            };
            match result {
                Ok(confirmation) => break confirmation,
                Err(error) if attempt == 1 => {
                    tracing::warn!(
                        "publish to {} failed ({error}); waiting for recovery",
                        destination()
                    );
                    // Bounded: a caller waiting on this publish (an api request)
                    // must get an answer even if the connection never comes back.
                    match tokio::time::timeout(RECOVERY_WAIT, channel.wait_for_recovery(error))
                        .await
                    {
                        Ok(recovered) => recovered.map_err(MessagingError::broker(format!(
                            "publishing to {}",
                            destination()
                        )))?,
                        Err(_) => {
                            return Err(MessagingError::Unavailable {
                                destination: destination(),
                                waited: RECOVERY_WAIT,
                            });
                        }
                    }
                }
                Err(error) => {
                    return Err(MessagingError::Broker {
                        operation: format!("publishing to {}", destination()),
                        source: error,
                    });
                }
            }
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(MessagingError::Unroutable {
                destination: destination(),
            }),
            Confirmation::Nack(_) => Err(MessagingError::Refused {
                destination: destination(),
            }),
        }
    };
    let lost = transport.lost();
    tokio::select! {
        biased;
        () = lost.cancelled() => Err(MessagingError::Unavailable {
            destination: destination(),
            waited: started.elapsed(),
        }),
        confirmed = confirmed => confirmed,
    }
}

/// A publisher confirm being waited for. Dropped before it came — its
/// caller gave up (a request's deadline) or [`publish`]'s own bound passed —
/// it is handed to a task that waits for it until [`CONFIRM_STALL`] after
/// the publish: a channel whose confirms stop while its connection lives is
/// stuck for good (a quorum queue's client that lost a message in a
/// network partition never enqueues the ones after it,
/// rabbitmq-server#14589, fixed in 4.2; suspected in a CI run where every
/// post to the api ran into its deadline), so the transport is declared lost
/// and the service rebuilds its messaging on fresh channels. A confirm whose
/// connection fails is failed by lapin with it, so a recovered blip is not
/// taken for a stall (`a_confirm_lost_with_a_recovered_connection_is_not_a_stall`).
struct Awaited<'a> {
    confirm: Option<lapin::PublisherConfirm>,
    since: Instant,
    transport: &'a crate::Transport,
}

impl<'a> Awaited<'a> {
    fn new(confirm: lapin::PublisherConfirm, transport: &'a crate::Transport) -> Self {
        Self {
            confirm: Some(confirm),
            since: Instant::now(),
            transport,
        }
    }
}

impl Future for Awaited<'_> {
    type Output = Result<Confirmation, lapin::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(confirm) = self.confirm.as_mut() else {
            return std::task::Poll::Pending;
        };
        let polled = std::pin::Pin::new(confirm).poll(cx);
        if polled.is_ready() {
            self.confirm = None;
        }
        polled
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        let Some(confirm) = self.confirm.take() else {
            return;
        };
        // No runtime: the process is ending, nothing to rebuild.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (transport, left) = (
            self.transport.clone(),
            CONFIRM_STALL.saturating_sub(self.since.elapsed()),
        );
        runtime.spawn(async move {
            if tokio::time::timeout(left, confirm).await.is_err() {
                transport.confirm_stalled(CONFIRM_STALL);
            }
        });
    }
}

/// The channel a consumer takes its deliveries on.
pub(crate) enum Consuming {
    /// Shared with other consumers (an RPC server's instance queues, which
    /// are deleted with their last consumer): kept as it is and closed by
    /// the server.
    Shared(Channel),
    /// The consumer's own, with this prefetch: renewed when the consumer
    /// has been idle for `amqp.renew_idle_consumers_ms` ([`renewal`]), and
    /// handed back when the consumer ends, for its server to close once
    /// every delivery taken was settled ([`drain`]).
    Own { channel: Channel, prefetch: usize },
}

/// Consumes the settler's queue until `shutdown`, handing each delivery to
/// `handle` on a task tracked by `handlers`, with the [`Holding`] it drops
/// once the delivery is settled. Connection loss is waited out
/// (lapin replays the consumer after recovery). A delivery whose headers nest
/// deeper than [`wire::MAX_HEADER_DEPTH`] is dead-lettered before anything
/// reads it. A consumer the broker cancels (its queue was deleted) marks the
/// transport lost, so the service declares its topology again instead of
/// serving on with nobody consuming.
///
/// A consumer on a channel of its own that was given nothing for a whole
/// `amqp.renew_idle_consumers_ms`, and holds nothing unsettled, moves to a
/// fresh channel and closes the old one ([`renewal`]): deliveries the
/// broker counts as sent on it but that never arrived go back to the
/// queue. A quorum queue can keep one consumer's whole prefetch window that
/// way after a network partition and a leader election, claimed by no
/// channel and never delivered again until that consumer's channel closes
/// (rabbitmq-server#15473, open); an idle queue costs a channel's close and
/// open per period.
///
/// The task ends with the channel it consumed on last when it was its own.
pub(crate) async fn consume<H, Fut>(
    consuming: Consuming,
    settler: std::sync::Arc<Settler>,
    shutdown: CancellationToken,
    lost: CancellationToken,
    handlers: TaskTracker,
    handle: H,
) -> Result<tokio::task::JoinHandle<Option<Channel>>, MessagingError>
where
    H: Fn(Delivery, Holding) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let queue = settler.queue.clone();
    // `renew`: the prefetch and idle period of a consumer that renews its
    // channel; `None` on a shared channel or with renewal off.
    let (mut channel, own, renew) = match consuming {
        Consuming::Shared(channel) => (channel, false, None),
        Consuming::Own { channel, prefetch } => {
            let every = settler.transport.config().renew_idle_consumers();
            (channel, true, every.map(|every| (prefetch, every)))
        }
    };
    let mut consumer = start_consuming(&channel, &queue).await?;
    // The idle check: every period (never polled without `renew`).
    let every = renew.map_or(Duration::from_secs(24 * 3600), |(_, every)| every);
    let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let held = std::sync::Arc::new(AtomicUsize::new(0));
    Ok(tokio::spawn(async move {
        let mut delivered = false;
        // Since the last renewal, until its first delivery: one that comes
        // redelivered is most likely what the old channel never received.
        let mut just_renewed = false;
        loop {
            tokio::select! {
                // In this order: a stop is seen even while deliveries keep
                // coming, and the idle check is polled only once none is
                // waiting, which costs a busy consumer nothing per delivery.
                biased;
                _ = shutdown.cancelled() => {
                    // A lost connection takes its consumers with it.
                    if !lost.is_cancelled() {
                        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                        if let Err(error) = answered("cancelling a consumer", cancel).await {
                            tracing::warn!("consumer of `{queue}`: {error}");
                        }
                    }
                    return own.then_some(channel);
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        delivered = true;
                        if std::mem::take(&mut just_renewed) && delivery.redelivered {
                            tracing::info!(
                                "consumer of `{queue}` renewed its idle channel and was given a message delivered before: the broker had counted it as delivered on the old channel, or another consumer gave it back"
                            );
                        }
                        let holding = Holding::take(&held);
                        let depth = wire::header_depth(&delivery.properties);
                        if depth > wire::MAX_HEADER_DEPTH {
                            let settler = settler.clone();
                            handlers.spawn(async move {
                                let reason = format!(
                                    "header tables nested {depth} levels deep (at most {} accepted)",
                                    wire::MAX_HEADER_DEPTH
                                );
                                settler.settle(&delivery, Settle::DeadLetter(reason)).await;
                                drop(holding);
                            });
                            continue;
                        }
                        handlers.spawn(handle(delivery, holding));
                    }
                    Some(Err(error)) => {
                        tracing::warn!("consumer of `{queue}` lost its connection: {error}; waiting for recovery");
                        // Not past a stop or a connection declared lost:
                        // the node may never come back (the service then
                        // rebuilds on another, and its drain waits for this
                        // task).
                        let recovering = channel.wait_for_recovery(error);
                        let Some(recovered) = unless_ended(&shutdown, &lost, recovering).await else {
                            return own.then_some(channel);
                        };
                        if let Err(error) = recovered {
                            // Running on without this consumer would look
                            // healthy while taking no work: declare the
                            // connection lost, so the service rebuilds it.
                            tracing::error!("consumer of `{queue}` could not recover: {error}; rebuilding messaging");
                            lost.cancel();
                            return own.then_some(channel);
                        }
                        tracing::info!("consumer of `{queue}` recovered");
                    }
                    None if shutdown.is_cancelled() => return own.then_some(channel),
                    None => {
                        tracing::error!("the broker cancelled the consumer of `{queue}` (was the queue deleted?); rebuilding messaging to declare it again");
                        lost.cancel();
                        return own.then_some(channel);
                    }
                },
                _ = idle_check.tick(), if renew.is_some() => {
                    let idle = !std::mem::take(&mut delivered) && held.load(Ordering::Acquire) == 0;
                    let Some((prefetch, _)) = renew else { continue };
                    if !idle || lost.is_cancelled() || !settler.transport.is_connected() {
                        continue;
                    }
                    match renewal(&settler, prefetch, &mut channel, &mut consumer, &shutdown, &lost).await {
                        Renewal::Renewed => {
                            tracing::debug!("consumer of `{queue}` was idle for {every:?}; renewed its channel");
                            just_renewed = true;
                        }
                        Renewal::Kept(error) => tracing::warn!(
                            "consumer of `{queue}` was idle for {every:?} and could not renew its channel ({error}); consuming on the old one"
                        ),
                        Renewal::Ended => return own.then_some(channel),
                    }
                }
            }
        }
    }))
}

/// What an idle consumer's [`renewal`] came to.
enum Renewal {
    /// Consuming on a fresh channel, the old one closed.
    Renewed,
    /// The broker refused a fresh channel or consumer: consuming on the old
    /// one.
    Kept(MessagingError),
    /// A stop or a loss came first, or the broker did not answer the
    /// renewal or the old channel's close and the connection is now
    /// declared lost: the consumer ends.
    Ended,
}

/// Renews an idle consumer's `channel` (and its `consumer`): a fresh
/// channel with `prefetch` and a consumer on it ([`renewed`]), then the old
/// channel closed, which is what makes the broker give back whatever it
/// counted as delivered there. Each stage is bounded ([`ANSWER_WAIT`]) and
/// given up at a stop or a loss: a node cut off answers nothing, and lapin
/// fails no pending operation of a connection its heartbeats closed; a
/// renewal waited on for ever would keep the consumer's task, and the drain
/// a rebuild waits for, from ever ending. A stage that goes unanswered
/// declares the connection lost: a channel the broker may count as
/// consuming, and that nobody reads, holds its deliveries until the
/// connection closes.
async fn renewal(
    settler: &Settler,
    prefetch: usize,
    channel: &mut Channel,
    consumer: &mut Consumer,
    shutdown: &CancellationToken,
    lost: &CancellationToken,
) -> Renewal {
    let renewing = bounded(
        "renewing an idle consumer's channel",
        renewed(settler, prefetch),
    );
    let (fresh, fresh_consumer) = match unless_ended(shutdown, lost, renewing).await {
        None => return Renewal::Ended,
        Some(Err(error @ MessagingError::Unanswered { .. })) => {
            // A connection that says it is up and answers nothing. The
            // broker may have taken the consumer on a fresh channel that
            // nobody will read, and would send it work: only a fresh
            // connection is sure to give that back.
            tracing::error!(
                "consumer of `{}` was idle, and the broker did not answer its renewal ({error}); rebuilding messaging",
                settler.queue
            );
            lost.cancel();
            return Renewal::Ended;
        }
        Some(Err(error)) => return Renewal::Kept(error),
        Some(Ok(fresh)) => fresh,
    };
    let old = std::mem::replace(channel, fresh);
    *consumer = fresh_consumer;
    let closing = answered(
        "closing a renewed channel",
        old.close(200, "renewed".into()),
    );
    match unless_ended(shutdown, lost, closing).await {
        None => Renewal::Ended,
        Some(Ok(())) => Renewal::Renewed,
        Some(Err(error)) => {
            // The broker may still count a consumer on the old channel,
            // which nobody reads: whatever it sends there waits for the
            // connection to close. Only a fresh connection gives that back.
            tracing::error!(
                "consumer of `{}` renewed its idle channel, but the old one did not close ({error}); rebuilding messaging",
                settler.queue
            );
            lost.cancel();
            Renewal::Ended
        }
    }
}

/// `operation`'s outcome, or `None` once `shutdown` or `lost` is cancelled.
async fn unless_ended<T>(
    shutdown: &CancellationToken,
    lost: &CancellationToken,
    operation: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        outcome = operation => Some(outcome),
        () = shutdown.cancelled() => None,
        () = lost.cancelled() => None,
    }
}

/// Starts a consumer of `queue` on `channel`, tagged `<queue>.<new id>`.
async fn start_consuming(channel: &Channel, queue: &str) -> Result<Consumer, MessagingError> {
    let consuming = channel.basic_consume(
        queue.into(),
        ShortString::from(format!("{queue}.{}", wire::new_id())),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    crate::slow::on_channel(|| format!("consuming `{queue}`"), consuming)
        .await
        .map_err(MessagingError::broker(format!("consuming `{queue}`")))
}

/// An idle consumer's renewal, its first stage ([`renewal`]): a fresh
/// channel with `prefetch` and a consumer of the settler's queue on it.
/// Nothing the consumer holds is returned when it then closes the old one:
/// it renews only while it holds nothing unsettled.
async fn renewed(
    settler: &Settler,
    prefetch: usize,
) -> Result<(Channel, Consumer), MessagingError> {
    let channel = settler.transport.consuming_channel(prefetch).await?;
    match start_consuming(&channel, &settler.queue).await {
        Ok(consumer) => Ok((channel, consumer)),
        Err(error) => {
            let _ = answered("closing a channel", channel.close(200, "unused".into())).await;
            Err(error)
        }
    }
}

/// One delivery of a consumer not settled yet, counted until dropped: while
/// any is, the consumer's channel is not renewed (closing it would give
/// them back to the queue mid-work, and they would be handled twice). A
/// handler drops it after settling the delivery.
pub(crate) struct Holding(std::sync::Arc<AtomicUsize>);

impl Holding {
    fn take(held: &std::sync::Arc<AtomicUsize>) -> Self {
        held.fetch_add(1, Ordering::AcqRel);
        Self(std::sync::Arc::clone(held))
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stops a server of consumers once its stop was asked for: waits for its
/// `consumers` to end and its `handlers` to settle every delivery taken,
/// then closes its `channels` (saying `closing`). Each stage says every
/// 10 s what it still waits for.
pub(crate) async fn drain(
    consumers: impl IntoIterator<Item = tokio::task::JoinHandle<Option<Channel>>>,
    handlers: &TaskTracker,
    mut channels: Vec<Channel>,
    closing: &'static str,
) {
    for consumer in consumers {
        // A consumer on a channel of its own hands it back (see `Consuming`).
        if let Ok(Some(own)) = stopping(|| "a consumer has not ended".into(), consumer).await {
            channels.push(own);
        }
    }
    handlers.close();
    let settling = || {
        format!(
            "{} handlers have not settled their deliveries",
            handlers.len()
        )
    };
    stopping(settling, handlers.wait()).await;
    // Together: each close is bounded, and a broker that stops answering
    // must not make a stop wait out every bound in turn.
    let closes: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            tokio::spawn(async move {
                answered("closing a channel", channel.close(200, closing.into())).await
            })
        })
        .collect();
    for close in closes {
        let _ = close.await;
    }
}

/// Waits for `stage`, one stage of stopping a consumer's server, logging
/// every 10 s what it still waits for (`what` says it, e.g. with a count).
async fn stopping<F: Future>(what: impl Fn() -> String, stage: F) -> F::Output {
    const EVERY: Duration = Duration::from_secs(10);
    tokio::pin!(stage);
    let started = tokio::time::Instant::now();
    let mut report = tokio::time::interval_at(started + EVERY, EVERY);
    loop {
        tokio::select! {
            done = &mut stage => return done,
            _ = report.tick() => tracing::warn!(
                "stopping for {:?}: {}",
                started.elapsed(),
                what()
            ),
        }
    }
}

/// The span name the messaging conventions give an operation on a
/// destination: `{operation} {destination}`, or the operation alone for the
/// default exchange (its name is empty).
fn messaging_span_name(operation: &str, exchange: &str) -> String {
    if exchange.is_empty() {
        operation.to_string()
    } else {
        format!("{operation} {exchange}")
    }
}

/// The consumer-side span of one delivery, parented on the producer's
/// context from the message headers (before it is first entered).
///
/// By the OpenTelemetry messaging conventions for RabbitMQ: named
/// `process {exchange}`, `messaging.destination.name` is the exchange (the
/// queue it came through is `messaging.destination.subscription.name`).
pub(crate) fn process_span(queue: &str, delivery: &Delivery) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %messaging_span_name("process", delivery.exchange.as_str()),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.exchange,
        messaging.destination.subscription.name = queue,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag as i64,
        messaging.message.id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str())
            .unwrap_or(""),
        messaging.message.body.size = delivery.data.len() as i64,
    );
    switchyard_telemetry::propagation::set_parent_from(
        &span,
        wire::string_headers(&delivery.properties),
    );
    span
}

/// The producer-side span of one publish: `publish {exchange}`, a `send`
/// operation by the messaging conventions.
pub(crate) fn publish_span(
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    body_size: usize,
) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = %messaging_span_name("publish", exchange),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = message_id,
        messaging.message.body.size = body_size as i64,
    )
}

/// What happens to a delivery once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done.
    Ack,
    /// Deliver again later, counting; dead-letter past the limit.
    Retry(String),
    /// A dependency is down: deliver again later with capped backoff, as
    /// often as it takes; never dead-letter for it.
    Wait(String),
    /// Never deliver again: park it in the dead-letter queue with the reason.
    DeadLetter(String),
    /// Give it back untouched (shutting down): another consumer takes it.
    ReturnToQueue,
}

/// Settles deliveries of one queue. Shared (`Arc<Settler>`) by the
/// deliveries of its queue, never cloned: cloning its channel and strings
/// for each delivery cost more than the ack it makes.
pub(crate) struct Settler {
    /// Where copies and replies are published: a channel of their own, on
    /// which nothing is delivered (why: `RpcClient`'s `publishing`).
    /// Acknowledgements go through each delivery's own channel.
    pub publishing: Channel,
    /// Its connection: for declaring retry queues on channels of their
    /// own, and to know when the connection is lost for good.
    pub transport: crate::Transport,
    /// The retry queues (one per delay): when each was declared, or its
    /// declaration refused.
    pub retry_queues: std::sync::Mutex<Leases>,
    pub queue: String,
    /// Where dead letters go: the topic's or the pool's `.dlq`, durable, so
    /// that instance queues (exclusive, auto-delete) leave nothing behind.
    pub dead_letters: String,
    pub max_deliveries: u32,
    pub retry_delay: Duration,
}

/// Where [`Settler::park`] puts a copy of a delivery.
#[derive(Debug, Clone, Copy)]
enum Parking {
    /// The retry queue of this delay, which hands it back after it.
    Retry(Duration),
    /// The queue's dead-letter queue, for good.
    DeadLetters,
}

/// Gives `delivery` back to its queue untouched: it is delivered again.
async fn return_to_queue(delivery: &Delivery) -> Result<(), MessagingError> {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    answered("returning a delivery to its queue", delivery.nack(requeue))
        .await
        .map(|_| ())
}

/// Acknowledges `delivery`: done with it.
async fn acknowledge(delivery: &Delivery) -> Result<(), MessagingError> {
    answered(
        "acknowledging a delivery",
        delivery.ack(BasicAckOptions::default()),
    )
    .await
    .map(|_| ())
}

impl Settler {
    /// Settles `delivery` as `settle` says, unless the connection is lost
    /// first: the service is then rebuilding its messaging, its drain waits
    /// for this, and the delivery goes back to its queue with the
    /// connection: delivered again, at least once as always.
    pub async fn settle(&self, delivery: &Delivery, settle: Settle) {
        let lost = self.transport.lost();
        tokio::select! {
            biased;
            () = lost.cancelled() => tracing::debug!(
                "left a delivery from `{}` unsettled: the connection was lost; the broker delivers it again",
                self.queue
            ),
            () = self.settle_now(delivery, settle) => {}
        }
    }

    async fn settle_now(&self, delivery: &Delivery, settle: Settle) {
        // A retry counts toward dead-lettering; waiting for a dependency does not.
        let limited = matches!(settle, Settle::Retry(_));
        let outcome = match settle {
            Settle::Ack => acknowledge(delivery).await,
            Settle::ReturnToQueue => return_to_queue(delivery).await,
            Settle::Retry(reason) | Settle::Wait(reason) => {
                let count =
                    wire::header_u32(&delivery.properties, wire::DELIVERY_COUNT).unwrap_or(1);
                if limited && count >= self.max_deliveries {
                    let reason = format!("{reason} (gave up after {count} deliveries)");
                    return Box::pin(self.settle_now(delivery, Settle::DeadLetter(reason))).await;
                }
                let delay = self.retry_delay * 2u32.saturating_pow(count.saturating_sub(1).min(5));
                tracing::warn!(
                    queue = %self.queue,
                    delivery = count,
                    "delivery {count} of a message on `{}` failed: {reason}; retrying in {delay:?}",
                    self.queue
                );
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                headers.insert(wire::DELIVERY_COUNT.into(), AMQPValue::LongUInt(count + 1));
                let properties = delivery.properties.clone().with_headers(headers);
                // The broker keeps it for `delay` in a retry queue that
                // dead-letters it back: no handler sleeps holding a prefetch
                // slot meanwhile, so the messages behind it go on.
                self.park(delivery, Parking::Retry(delay), properties).await
            }
            Settle::DeadLetter(reason) => {
                let dlq = &self.dead_letters;
                tracing::warn!(queue = %self.queue, "dead-lettering a message from `{}` to `{dlq}`: {reason}", self.queue);
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                wire::set_str(&mut headers, wire::DEAD_LETTER_REASON, &reason);
                wire::set_str(&mut headers, wire::ORIGINAL_QUEUE, &self.queue);
                let properties = delivery
                    .properties
                    .clone()
                    .with_headers(headers)
                    .with_delivery_mode(2);
                self.park(delivery, Parking::DeadLetters, properties).await
            }
        };
        if let Err(error) = outcome {
            // The broker will redeliver an unacknowledged message once the
            // channel recovers: at least once, never lost.
            tracing::warn!("could not settle a delivery from `{}`: {error}", self.queue);
        }
    }

    /// Puts a copy of `delivery` where it is parked, then acks the
    /// original. A retry that cannot be parked (its queue cannot be
    /// declared, or the broker refuses the copy) waits its delay in the handler and
    /// goes back to the end of its own queue; failing that, or a dead letter
    /// that cannot be parked, the original goes back to its queue: never
    /// acked without a confirmed copy.
    async fn park(
        &self,
        delivery: &Delivery,
        parking: Parking,
        properties: BasicProperties,
    ) -> Result<(), MessagingError> {
        let parked = match (
            self.park_copy(delivery, parking, &properties).await,
            parking,
        ) {
            (Err(error), Parking::Retry(delay)) => {
                tracing::warn!(
                    "could not park a message from `{}` for {delay:?} ({error}); waiting in the handler instead",
                    self.queue
                );
                tokio::time::sleep(delay).await;
                let queue = &self.queue;
                publish(
                    &self.publishing,
                    &self.transport,
                    "",
                    queue,
                    true,
                    &delivery.data,
                    properties,
                )
                .await
            }
            (parked, _) => parked,
        };
        match parked {
            Ok(()) => acknowledge(delivery).await,
            Err(error) => {
                tracing::warn!(
                    "could not republish a message from `{}`: {error}; returning it to its queue",
                    self.queue
                );
                return_to_queue(delivery).await
            }
        }
    }

    /// Publishes the copy (mandatory, confirmed) where `parking` says. A
    /// queue gone under us (deleted by an operator; a retry queue expired)
    /// returns it instead of dropping it: the queue is declared again and
    /// the copy sent once more.
    async fn park_copy(
        &self,
        delivery: &Delivery,
        parking: Parking,
        properties: &BasicProperties,
    ) -> Result<(), MessagingError> {
        let mut gone = false;
        loop {
            let destination = match parking {
                Parking::Retry(delay) => self.retry_queue(delay, gone).await?,
                Parking::DeadLetters => self.dead_letter_queue(gone).await?,
            };
            let data = &delivery.data;
            let properties = properties.clone();
            match publish(
                &self.publishing,
                &self.transport,
                "",
                &destination,
                true,
                data,
                properties,
            )
            .await
            {
                Err(MessagingError::Unroutable { .. }) if !gone => {
                    tracing::warn!("queue `{destination}` is gone; declaring it again");
                    gone = true;
                }
                published => return published,
            }
        }
    }

    /// The queue's dead-letter queue, declared when `declare` (it is
    /// declared with the queue's topology; this is for one deleted since).
    async fn dead_letter_queue(&self, declare: bool) -> Result<String, MessagingError> {
        if declare {
            crate::rpc::topology::declare_durable_queue(
                &self.transport,
                &self.dead_letters,
                crate::rpc::topology::Bound::Unbounded,
                None,
            )
            .await?;
        }
        Ok(self.dead_letters.clone())
    }

    /// The queue where this queue's messages wait `delay`, declared as its
    /// lease says ([`Leases::next`]; `gone` when a copy came back
    /// unroutable). A declaration renews the queue for `RETRY_QUEUE_IDLE`
    /// plus the delay, so a message put there after one outlives its wait
    /// by at least half of that. One whose declaration was refused a moment
    /// ago is an error at once: the message waits in its handler instead.
    async fn retry_queue(&self, delay: Duration, gone: bool) -> Result<String, MessagingError> {
        let name = wire::retry_queue(&self.queue, delay);
        let next =
            switchyard_executor::sync::lock(&self.retry_queues).next(&name, gone, Instant::now());
        match next {
            Next::Use => return Ok(name),
            Next::Avoid { ago } => {
                return Err(MessagingError::RecentlyRefused { queue: name, ago });
            }
            Next::Declare => {}
        }
        let declared =
            crate::rpc::topology::declare_retry_queue(&self.transport, &self.queue, delay).await;
        let mut leases = switchyard_executor::sync::lock(&self.retry_queues);
        match &declared {
            Ok(_) => leases.declared(&name, Instant::now()),
            Err(_) => leases.refused(&name, Instant::now()),
        }
        declared
    }
}
