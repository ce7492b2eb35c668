//! Notifications: events published to a topic exchange with the routing key
//! `notifications.<priority>.<event_type>`, consumed by listener pools. Every
//! pool gets every matching message; members of one pool share them.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use prost::Message;
use serde::{Deserialize, Serialize};
use switchyard_executor::{BoundEndpoint, DispatchError, DispatchOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::consume::{self, Consuming, Holding, Settle, Settler};
use crate::rpc::{Bound, bind, declare_exchange, declare_with_dead_letters};
use crate::{EndpointError, MessagingError, Transport, wire};

/// Notification priorities, as in oslo.messaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Audit trail.
    Audit,
    /// Debugging detail.
    Debug,
    /// Normal events.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
    /// Something failed badly.
    Critical,
    /// Metering samples.
    Sample,
}

impl Priority {
    /// The word used in routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [
            Priority::Audit,
            Priority::Debug,
            Priority::Info,
            Priority::Warn,
            Priority::Error,
            Priority::Critical,
            Priority::Sample,
        ]
        .into_iter()
        .find(|p| p.as_str() == word)
    }
}

/// Publishes notifications, each confirmed by the broker and persistent.
#[derive(Clone)]
pub struct Notifier {
    channel: Channel,
    /// Publishes fail at once when it is lost for good, and declare it lost
    /// when their confirms stop.
    transport: crate::Transport,
    exchange: String,
    publisher_id: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("exchange", &self.exchange)
            .field("publisher_id", &self.publisher_id)
            .finish()
    }
}

impl Notifier {
    /// A notifier on `exchange` signing its messages `publisher_id`.
    pub async fn new(
        transport: &Transport,
        exchange: &str,
        publisher_id: &str,
    ) -> Result<Self, MessagingError> {
        let channel = transport.channel().await?;
        let exchange = wire::notification_exchange(exchange);
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await?;
        Ok(Self {
            channel,
            transport: transport.clone(),
            exchange,
            publisher_id: publisher_id.to_string(),
        })
    }

    /// Publishes `payload` as `event_type` at `priority`; returns once the
    /// broker confirmed it. A notification no pool listens for is dropped by
    /// the broker, as publish/subscribe does.
    pub async fn notify<P: Message>(
        &self,
        priority: Priority,
        event_type: &str,
        payload: &P,
    ) -> Result<(), MessagingError> {
        let key = wire::notification_key(priority.as_str(), event_type);
        let message_id = wire::new_id();
        let body = payload.encode_to_vec();
        let span = consume::publish_span(&self.exchange, &key, &message_id, body.len());
        let mut headers = FieldTable::default();
        wire::set_str(&mut headers, wire::KIND, wire::kind::NOTIFICATION);
        wire::set_str(&mut headers, wire::EVENT_TYPE, event_type);
        wire::set_str(&mut headers, wire::PRIORITY, priority.as_str());
        wire::set_str(&mut headers, wire::PUBLISHER, &self.publisher_id);
        wire::inject_trace(&mut headers, &span);
        let properties = BasicProperties::default()
            .with_content_type(wire::CONTENT_TYPE.into())
            .with_message_id(message_id.into())
            .with_timestamp(wire::now_timestamp())
            .with_delivery_mode(2)
            .with_headers(headers);
        consume::publish(
            &self.channel,
            &self.transport,
            &self.exchange,
            &key,
            false,
            &body,
            properties,
        )
        .instrument(span)
        .await
    }
}

/// One received notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification<P> {
    /// e.g. `sample.recorded`.
    pub event_type: String,
    /// Its priority.
    pub priority: Priority,
    /// Who published it.
    pub publisher_id: String,
    /// The decoded body.
    pub payload: P,
}

/// What a notification endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done: acknowledge it.
    Handled,
    /// Not now: deliver it again later (counted; dead-lettered past the limit).
    Requeue,
}

/// Builds a [`NotificationListener`].
#[derive(Debug, Clone)]
pub struct NotificationListenerBuilder {
    exchange: String,
    pool: String,
    bindings: Vec<String>,
    backlog: u32,
}

impl NotificationListenerBuilder {
    /// The pool it listens in.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Keeps at most `messages` waiting in the pool's queue, dropping the
    /// oldest for a new one (0: no limit, the default). Only for
    /// notifications where a newer one makes an older one moot.
    pub fn coalesce_beyond(mut self, messages: u32) -> Self {
        self.backlog = messages;
        self
    }

    /// Listens for `event_type` at the given priorities (every priority when empty).
    pub fn subscribe(mut self, event_type: &str, priorities: &[Priority]) -> Self {
        if priorities.is_empty() {
            self.bindings.push(wire::notification_key("*", event_type));
        }
        for priority in priorities {
            self.bindings
                .push(wire::notification_key(priority.as_str(), event_type));
        }
        self
    }

    /// Declares the pool's queue and its bindings and starts consuming;
    /// every notification is decoded as `P` and dispatched to `endpoint`.
    pub async fn start<P>(
        self,
        transport: &Transport,
        endpoint: BoundEndpoint<Notification<P>, Result<Handled, EndpointError>>,
        shutdown: CancellationToken,
    ) -> Result<NotificationListener, MessagingError>
    where
        P: Message + Default + Send + 'static,
    {
        let capacity = endpoint.executor().config().capacity();
        let (consuming, settler) = self.declare(transport, capacity).await?;
        let max_body = transport.config().max_body_bytes;
        let handlers = TaskTracker::new();
        let endpoint = Arc::new(endpoint);
        NotificationListener::consuming(
            (consuming, Arc::clone(&settler), handlers),
            transport,
            shutdown,
            move |delivery, holding| {
                let settler = settler.clone();
                let endpoint = Arc::clone(&endpoint);
                async move {
                    let span = consume::process_span(&settler.queue, &delivery);
                    let settle = async {
                        let notification = match decode::<P>(&delivery, max_body) {
                            Ok(notification) => notification,
                            Err(reason) => return Settle::DeadLetter(reason),
                        };
                        let options = DispatchOptions {
                            parent: Some(tracing::Span::current()),
                            ..DispatchOptions::default()
                        };
                        outcome(endpoint.dispatch(notification, options).await)
                    }
                    .instrument(span.clone())
                    .await;
                    settler.settle(&delivery, settle).instrument(span).await;
                    drop(holding);
                }
            },
        )
        .await
    }
}

impl NotificationListenerBuilder {
    /// Like [`NotificationListenerBuilder::start`], but hands the endpoint
    /// batches: up to `size` notifications, or fewer once `timeout` has
    /// passed since the first of them arrived. The endpoint's answer applies
    /// to the whole batch; a message that cannot be decoded is dead-lettered
    /// alone and never reaches it.
    pub async fn start_batched<P>(
        self,
        transport: &Transport,
        endpoint: BoundEndpoint<Vec<Notification<P>>, Result<Handled, EndpointError>>,
        size: usize,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<NotificationListener, MessagingError>
    where
        P: Message + Default + Send + 'static,
    {
        let size = size.max(1);
        let capacity = endpoint.executor().config().capacity();
        let (consuming, settler) = self.declare(transport, capacity.max(size)).await?;
        let max_body = transport.config().max_body_bytes;
        let (deliveries, mut incoming) =
            tokio::sync::mpsc::unbounded_channel::<(Delivery, Holding)>();
        let handlers = TaskTracker::new();
        // The batcher is tracked with the handlers: it ends once the
        // consumer, which feeds it, is gone and the last batch is settled.
        {
            let settler = settler.clone();
            handlers.spawn(async move {
                while let Some(first) = incoming.recv().await {
                    let mut batch = vec![first];
                    let closes = tokio::time::Instant::now() + timeout;
                    while batch.len() < size {
                        match tokio::time::timeout_at(closes, incoming.recv()).await {
                            Ok(Some(delivery)) => batch.push(delivery),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    let mut good = Vec::new();
                    let mut notifications = Vec::new();
                    for (delivery, holding) in batch {
                        match decode::<P>(&delivery, max_body) {
                            Ok(notification) => {
                                notifications.push(notification);
                                good.push((delivery, holding));
                            }
                            Err(reason) => {
                                settler.settle(&delivery, Settle::DeadLetter(reason)).await
                            }
                        }
                    }
                    if good.is_empty() {
                        continue;
                    }
                    let settle = outcome(
                        endpoint
                            .dispatch(notifications, DispatchOptions::default())
                            .await,
                    );
                    for (delivery, _holding) in &good {
                        settler.settle(delivery, settle.clone()).await;
                    }
                }
            });
        }
        NotificationListener::consuming(
            (consuming, settler, handlers),
            transport,
            shutdown,
            move |delivery, holding| {
                let deliveries = deliveries.clone();
                async move {
                    let _ = deliveries.send((delivery, holding));
                }
            },
        )
        .await
    }

    /// Declares the pool queue, its dead-letter queue and bindings on a new
    /// channel with the given prefetch, the consumer's own.
    async fn declare(
        &self,
        transport: &Transport,
        prefetch: usize,
    ) -> Result<(Consuming, Arc<Settler>), MessagingError> {
        let config = transport.config();
        let channel = transport.consuming_channel(prefetch).await?;
        let exchange = wire::notification_exchange(&self.exchange);
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await?;
        let queue = wire::pool_queue(&self.exchange, &self.pool);
        let bound = match self.backlog {
            0 => Bound::Unbounded,
            length => Bound::DropHead(length),
        };
        let dead_letters = declare_with_dead_letters(transport, &queue, bound).await?;
        for key in &self.bindings {
            bind(&channel, &queue, &exchange, key).await?;
        }
        let settler = Arc::new(Settler {
            publishing: transport.channel().await?,
            transport: transport.clone(),
            retry_queues: Default::default(),
            dead_letters,
            queue,
            max_deliveries: config.max_deliveries,
            retry_delay: Duration::from_millis(config.retry_delay_ms),
        });
        Ok((Consuming::Own { channel, prefetch }, settler))
    }
}

/// How an endpoint's answer settles the notification(s) it was given.
fn outcome(result: Result<Result<Handled, EndpointError>, DispatchError>) -> Settle {
    match result {
        Ok(Ok(Handled::Handled)) => Settle::Ack,
        Ok(Ok(Handled::Requeue)) => Settle::Retry("the endpoint asked to requeue".into()),
        Ok(Err(EndpointError::Transient(reason))) => Settle::Retry(reason),
        Ok(Err(EndpointError::Unavailable(reason))) => Settle::Wait(reason),
        Ok(Err(error)) => Settle::DeadLetter(error.to_string()),
        Err(DispatchError::ShuttingDown) => Settle::ReturnToQueue,
        Err(error) => Settle::Retry(error.to_string()),
    }
}

/// A running listener.
#[derive(Debug)]
pub struct NotificationListener {
    /// Ends with the channel notifications were delivered and acknowledged
    /// on (its own, renewed when idle: `consume::Consuming`).
    consumer: tokio::task::JoinHandle<Option<Channel>>,
    handlers: TaskTracker,
    /// Where parked copies go.
    publishing: Channel,
}

impl NotificationListener {
    /// Consumes the pool's queue as `consuming` says (settled by `settler`)
    /// until `shutdown`, handing each delivery to `handle` on a task of
    /// `handlers`.
    async fn consuming<H, Fut>(
        (consuming, settler, handlers): (Consuming, Arc<Settler>, TaskTracker),
        transport: &Transport,
        shutdown: CancellationToken,
        handle: H,
    ) -> Result<Self, MessagingError>
    where
        H: Fn(Delivery, Holding) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let publishing = settler.publishing.clone();
        let consumer = consume::consume(
            consuming,
            settler,
            shutdown,
            transport.lost(),
            handlers.clone(),
            handle,
        )
        .await?;
        Ok(Self {
            consumer,
            handlers,
            publishing,
        })
    }

    /// A listener in `pool` on `exchange`'s notifications.
    pub fn builder(exchange: &str, pool: &str) -> NotificationListenerBuilder {
        NotificationListenerBuilder {
            exchange: exchange.to_string(),
            pool: pool.to_string(),
            bindings: Vec::new(),
            backlog: 0,
        }
    }

    /// Waits until the consumer stopped and every delivery taken was settled.
    pub async fn stopped(self) {
        consume::drain(
            [self.consumer],
            &self.handlers,
            vec![self.publishing],
            "listener stopped",
        )
        .await;
    }
}

fn decode<P: Message + Default>(
    delivery: &lapin::message::Delivery,
    max_body: usize,
) -> Result<Notification<P>, String> {
    if delivery.data.len() > max_body {
        return Err(format!(
            "body of {} bytes exceeds amqp.max_body_bytes ({max_body})",
            delivery.data.len()
        ));
    }
    let properties = &delivery.properties;
    if let Some(content_type) = properties.content_type().as_ref()
        && content_type.as_str() != wire::CONTENT_TYPE
    {
        return Err(format!(
            "content type `{}` is not {}",
            content_type.as_str(),
            wire::CONTENT_TYPE
        ));
    }
    let event_type = wire::header_str(properties, wire::EVENT_TYPE)
        .ok_or_else(|| format!("missing header {}", wire::EVENT_TYPE))?;
    let priority = wire::header_str(properties, wire::PRIORITY)
        .and_then(Priority::parse)
        .ok_or_else(|| format!("missing or unknown header {}", wire::PRIORITY))?;
    let payload =
        P::decode(delivery.data.as_slice()).map_err(|e| format!("undecodable body: {e}"))?;
    Ok(Notification {
        event_type: event_type.to_string(),
        priority,
        publisher_id: wire::header_str(properties, wire::PUBLISHER)
            .unwrap_or("")
            .to_string(),
        payload,
    })
}
