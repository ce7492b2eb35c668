//! RPC in oslo.messaging's vocabulary: a target is an exchange, a topic and
//! optionally a server; a server exposes endpoints by method name; a client
//! calls (waits for a reply), casts (fire and forget, durable) or fans out
//! (every instance).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use prost::Message;
use switchyard_executor::{BoundEndpoint, BoxFuture, DispatchError, DispatchOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::consume::{self, Settle, Settler};
use crate::{CallError, EndpointError, MessagingError, Transport, wire};
use switchyard_proto::messaging::v1::{RpcError, rpc_error};

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

/// Why a method produced no reply body.
enum Failure {
    Decode(String),
    Endpoint(EndpointError),
    Dispatch(DispatchError),
}

type Method =
    Arc<dyn Fn(Vec<u8>, DispatchOptions) -> BoxFuture<Result<Vec<u8>, Failure>> + Send + Sync>;

/// Builds an [`RpcServer`]: its target and its methods.
pub struct RpcServerBuilder {
    exchange: String,
    topic: String,
    server: String,
    methods: HashMap<String, Method>,
}

impl std::fmt::Debug for RpcServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServerBuilder")
            .field("topic", &self.topic)
            .field("server", &self.server)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RpcServerBuilder {
    /// Serves `endpoint` under its name. The request body is decoded as `Req`;
    /// the reply (for calls) is `Resp`.
    pub fn method<Req, Resp>(
        mut self,
        endpoint: BoundEndpoint<Req, Result<Resp, EndpointError>>,
    ) -> Self
    where
        Req: Message + Default + Send + 'static,
        Resp: Message + Send + 'static,
    {
        let name = endpoint.name().to_string();
        let method: Method = Arc::new(move |body: Vec<u8>, options: DispatchOptions| {
            let endpoint = endpoint.clone();
            Box::pin(async move {
                let request =
                    Req::decode(body.as_slice()).map_err(|e| Failure::Decode(e.to_string()))?;
                match endpoint.dispatch(request, options).await {
                    Ok(Ok(response)) => Ok(response.encode_to_vec()),
                    Ok(Err(error)) => Err(Failure::Endpoint(error)),
                    Err(error) => Err(Failure::Dispatch(error)),
                }
            })
        });
        self.methods.insert(name, method);
        self
    }

    /// Declares the topology and starts consuming the topic queue, this
    /// instance's queue and the fanout queue. Prefetch follows `capacity`
    /// (the executor's), so the broker never hands over more than can run.
    pub async fn start(
        self,
        transport: &Transport,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> Result<RpcServer, MessagingError> {
        let config = transport.config().clone();
        let channel = transport.channel().await?;
        channel
            .basic_qos(
                capacity.clamp(1, u16::MAX as usize) as u16,
                BasicQosOptions::default(),
            )
            .await
            .map_err(MessagingError::broker("setting prefetch"))?;
        let exchange = wire::rpc_exchange(&self.exchange);
        let fanout = wire::fanout_exchange(&self.exchange, &self.topic);
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await?;
        declare_exchange(&channel, &fanout, ExchangeKind::Fanout).await?;
        let topic_queue = wire::topic_queue(&self.exchange, &self.topic);
        let server_queue = wire::server_queue(&self.exchange, &self.topic, &self.server);
        let fanout_queue = wire::fanout_queue(&self.exchange, &self.topic, &self.server);
        let bound = match config.max_queue_length {
            0 => Bound::Unbounded,
            length => Bound::RejectPublish(length),
        };
        declare_durable_queue(transport, &topic_queue, bound).await?;
        declare_durable_queue(
            transport,
            &wire::dead_letter_queue(&topic_queue),
            Bound::Unbounded,
        )
        .await?;
        bind(&channel, &topic_queue, &exchange, &self.topic).await?;
        for (queue, source, key) in [
            (
                &server_queue,
                &exchange,
                wire::routing_key(&self.topic, Some(&self.server)),
            ),
            (&fanout_queue, &fanout, String::new()),
        ] {
            declare_instance_queue(&channel, queue).await?;
            bind(&channel, queue, source, &key).await?;
        }

        let methods = Arc::new(self.methods);
        let handlers = TaskTracker::new();
        let mut consumers = Vec::new();
        let dead_letters = wire::dead_letter_queue(&topic_queue);
        for queue in [topic_queue, server_queue, fanout_queue] {
            let settler = Settler {
                channel: channel.clone(),
                queue: queue.clone(),
                dead_letters: dead_letters.clone(),
                max_deliveries: config.max_deliveries,
                retry_delay: Duration::from_millis(config.retry_delay_ms),
            };
            let methods = Arc::clone(&methods);
            let max_body = config.max_body_bytes;
            consumers.push(
                consume::consume(
                    channel.clone(),
                    settler.clone(),
                    shutdown.clone(),
                    transport.lost(),
                    handlers.clone(),
                    move |delivery| {
                        let settler = settler.clone();
                        let methods = Arc::clone(&methods);
                        async move {
                            let span = consume::process_span(&settler.queue, &delivery);
                            handle(delivery, &methods, &settler, max_body)
                                .instrument(span)
                                .await;
                        }
                    },
                )
                .await?,
            );
        }
        Ok(RpcServer {
            consumers,
            handlers,
            channel,
        })
    }
}

/// A running RPC server.
#[derive(Debug)]
pub struct RpcServer {
    consumers: Vec<tokio::task::JoinHandle<()>>,
    handlers: TaskTracker,
    channel: Channel,
}

impl RpcServer {
    /// A server for `topic` on `exchange`, answering as instance `server`.
    pub fn builder(exchange: &str, topic: &str, server: &str) -> RpcServerBuilder {
        RpcServerBuilder {
            exchange: exchange.to_string(),
            topic: topic.to_string(),
            server: server.to_string(),
            methods: HashMap::new(),
        }
    }

    /// Waits until the consumers stopped (the shutdown token was cancelled)
    /// and every delivery taken was settled, then closes the channel.
    pub async fn stopped(self) {
        for consumer in self.consumers {
            let _ = consumer.await;
        }
        self.handlers.close();
        self.handlers.wait().await;
        let _ = self.channel.close(200, "server stopped".into()).await;
    }
}

async fn handle(
    delivery: Delivery,
    methods: &HashMap<String, Method>,
    settler: &Settler,
    max_body: usize,
) {
    let properties = &delivery.properties;
    let reply_to = properties
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_string());
    let refuse = |kind: rpc_error::Kind, message: String| (kind, message);

    let problem = if delivery.data.len() > max_body {
        Some(refuse(
            rpc_error::Kind::InvalidArgument,
            format!(
                "body of {} bytes exceeds amqp.max_body_bytes ({max_body})",
                delivery.data.len()
            ),
        ))
    } else if properties
        .content_type()
        .as_ref()
        .is_some_and(|ct| ct.as_str() != wire::CONTENT_TYPE)
    {
        Some(refuse(
            rpc_error::Kind::InvalidArgument,
            format!(
                "content type `{}` is not {}",
                properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str())
                    .unwrap_or(""),
                wire::CONTENT_TYPE
            ),
        ))
    } else {
        match wire::header_str(properties, wire::METHOD) {
            None => Some(refuse(
                rpc_error::Kind::InvalidArgument,
                format!("missing header {}", wire::METHOD),
            )),
            Some(name) if !methods.contains_key(name) => Some(refuse(
                rpc_error::Kind::NoSuchMethod,
                format!("no such method `{name}`"),
            )),
            Some(_) => None,
        }
    };
    if let Some((kind, message)) = problem {
        match &reply_to {
            Some(reply_to) => {
                // A caller that named no method we serve learns which we do.
                let served = if kind == rpc_error::Kind::NoSuchMethod {
                    let mut names: Vec<String> = methods.keys().cloned().collect();
                    names.sort();
                    names
                } else {
                    Vec::new()
                };
                reply_error(settler, &delivery, reply_to, kind, "", &message, served).await;
                settler.settle(&delivery, Settle::Ack).await;
            }
            None => settler.settle(&delivery, Settle::DeadLetter(message)).await,
        }
        return;
    }
    let Some(method) =
        wire::header_str(properties, wire::METHOD).and_then(|name| methods.get(name))
    else {
        return;
    };

    let received = Instant::now();
    let deadline = properties
        .expiration()
        .as_ref()
        .and_then(|ms| ms.as_str().parse::<u64>().ok())
        .map(|ms| received + Duration::from_millis(ms));
    let options = DispatchOptions {
        deadline,
        wait_budget: None,
        parent: Some(tracing::Span::current()),
    };
    let outcome = method(delivery.data.clone(), options).await;

    let (settle, reply) = match outcome {
        Ok(body) => (Settle::Ack, Ok(body)),
        Err(Failure::Decode(reason)) => (
            Settle::DeadLetter(format!("undecodable body: {reason}")),
            Err((
                rpc_error::Kind::InvalidArgument,
                String::new(),
                format!("undecodable body: {reason}"),
            )),
        ),
        Err(Failure::Endpoint(EndpointError::InvalidArgument(message))) => (
            Settle::DeadLetter(format!("invalid argument: {message}")),
            Err((rpc_error::Kind::InvalidArgument, String::new(), message)),
        ),
        Err(Failure::Endpoint(EndpointError::Remote { code, message })) => (
            Settle::DeadLetter(format!("{code}: {message}")),
            Err((rpc_error::Kind::Remote, code, message)),
        ),
        Err(Failure::Endpoint(EndpointError::Unavailable(message))) => (
            Settle::Wait(message.clone()),
            Err((rpc_error::Kind::Remote, "unavailable".to_string(), message)),
        ),
        Err(Failure::Endpoint(EndpointError::Transient(message))) => (
            Settle::Retry(message.clone()),
            Err((rpc_error::Kind::Remote, "transient".to_string(), message)),
        ),
        Err(Failure::Dispatch(DispatchError::ShuttingDown)) => (
            Settle::ReturnToQueue,
            Err((
                rpc_error::Kind::Remote,
                "unavailable".into(),
                "shutting down".into(),
            )),
        ),
        Err(Failure::Dispatch(error @ DispatchError::Panicked { .. })) => (
            Settle::Retry(error.to_string()),
            Err((
                rpc_error::Kind::Remote,
                "internal".into(),
                "the endpoint failed unexpectedly".into(),
            )),
        ),
        Err(Failure::Dispatch(error)) => (
            Settle::Ack,
            Err((
                rpc_error::Kind::Remote,
                "deadline_exceeded".into(),
                error.to_string(),
            )),
        ),
    };
    match (reply_to, reply) {
        (Some(reply_to), reply) => {
            // A call is answered once, whatever happened; it is not retried
            // behind the caller's back, except when this instance is stopping.
            if settle == Settle::ReturnToQueue {
                settler.settle(&delivery, Settle::ReturnToQueue).await;
                return;
            }
            match reply {
                Ok(body) => reply_ok(settler, &delivery, &reply_to, body).await,
                Err((kind, code, message)) => {
                    reply_error(
                        settler,
                        &delivery,
                        &reply_to,
                        kind,
                        &code,
                        &message,
                        Vec::new(),
                    )
                    .await
                }
            }
            settler.settle(&delivery, Settle::Ack).await;
        }
        (None, _) => settler.settle(&delivery, settle).await,
    }
}

fn reply_properties(delivery: &Delivery, status: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    wire::set_str(&mut headers, wire::STATUS, status);
    let mut properties = BasicProperties::default()
        .with_content_type(wire::CONTENT_TYPE.into())
        .with_headers(headers);
    if let Some(correlation) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(correlation.clone());
    }
    properties
}

async fn reply_ok(settler: &Settler, delivery: &Delivery, reply_to: &str, body: Vec<u8>) {
    let properties = reply_properties(delivery, "ok");
    if let Err(error) =
        consume::publish(&settler.channel, "", reply_to, false, &body, properties).await
    {
        tracing::warn!("could not reply to {reply_to}: {error}");
    }
}

async fn reply_error(
    settler: &Settler,
    delivery: &Delivery,
    reply_to: &str,
    kind: rpc_error::Kind,
    code: &str,
    message: &str,
    served_methods: Vec<String>,
) {
    let body = RpcError {
        kind: kind as i32,
        code: code.to_string(),
        message: message.to_string(),
        served_methods,
    }
    .encode_to_vec();
    let properties =
        reply_properties(delivery, "error").with_type("switchyard.messaging.v1.RpcError".into());
    if let Err(error) =
        consume::publish(&settler.channel, "", reply_to, false, &body, properties).await
    {
        tracing::warn!("could not reply to {reply_to}: {error}");
    }
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), MessagingError> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(MessagingError::broker(format!(
            "declaring exchange `{name}`"
        )))
}

/// How long a durable queue may grow, and what happens at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
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

/// A queue that outlives its consumers: casts and notifications wait in it.
///
/// Declared on a throwaway channel: RabbitMQ refuses to declare an existing
/// queue with other arguments (`PRECONDITION_FAILED - inequivalent arg`) and
/// closes the channel. Such a queue (made by an earlier version, or with
/// another `amqp.queue_type`) is used as it is, with a warning saying how to
/// apply the new arguments, instead of stopping the service at start-up.
pub(crate) async fn declare_durable_queue(
    transport: &Transport,
    name: &str,
    bound: Bound,
) -> Result<(), MessagingError> {
    let config = transport.config();
    let mut arguments = FieldTable::default();
    if config.queue_type == crate::QueueType::Quorum {
        wire::set_str(&mut arguments, "x-queue-type", "quorum");
    }
    if config.queue_expires_ms > 0 {
        arguments.insert(
            "x-expires".into(),
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
            "x-max-length".into(),
            lapin::types::AMQPValue::LongLongInt(i64::from(length)),
        );
        wire::set_str(&mut arguments, "x-overflow", overflow);
    }
    let channel = transport.channel().await?;
    let declared = channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        Err(error) if is_precondition_failed(&error) => {
            tracing::warn!(
                queue = name,
                "queue `{name}` exists with other arguments ({error}); using it as it is. \
                 To apply the configured ones (queue type, expiry, length limit), let it drain \
                 and delete it, or set them with a RabbitMQ policy (docs/rollout.md)"
            );
            Ok(())
        }
        Err(error) => Err(MessagingError::Broker {
            operation: format!("declaring queue `{name}`"),
            source: error,
        }),
    }
}

/// RabbitMQ's 406: the declared arguments differ from the existing queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// A queue of one instance: gone with its connection, so nothing leaks.
async fn declare_instance_queue(channel: &Channel, name: &str) -> Result<(), MessagingError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
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
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(MessagingError::broker(format!(
            "binding `{queue}` to `{exchange}` with `{key}`"
        )))
}

/// Calls, casts and fans out to RPC servers. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    channel: Channel,
    transport: Transport,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
    /// Topics seen with consumers, and when: checked again after a second.
    seen_consumers: Arc<Mutex<HashMap<String, Instant>>>,
    /// Exchanges this client has declared. Publishing to a missing exchange
    /// would make the broker close the channel; declaring first is idempotent.
    declared: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("transport", &self.transport)
            .finish()
    }
}

impl RpcClient {
    /// A client with its own channel, consuming RabbitMQ's direct reply-to
    /// pseudo queue: replies need no queue of their own, so none can leak.
    pub async fn new(transport: &Transport) -> Result<Self, MessagingError> {
        let channel = transport.channel().await?;
        let mut replies = channel
            .basic_consume(
                wire::DIRECT_REPLY_TO.into(),
                ShortString::from(format!("replies.{}", wire::new_id())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(MessagingError::broker("consuming direct replies"))?;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>> = Arc::default();
        let router = Arc::clone(&pending);
        let recovering = channel.clone();
        tokio::spawn(async move {
            while let Some(next) = replies.next().await {
                match next {
                    Ok(delivery) => {
                        let waiter = delivery
                            .properties
                            .correlation_id()
                            .as_ref()
                            .and_then(|id| router.lock().ok()?.remove(id.as_str()));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(delivery);
                        }
                    }
                    Err(error) => {
                        if recovering.wait_for_recovery(error).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            channel,
            transport: transport.clone(),
            pending,
            seen_consumers: Arc::default(),
            declared: Arc::default(),
        })
    }

    /// Calls `method` on `target` and waits at most `timeout` for the reply.
    /// Fails fast with [`CallError::NoConsumers`] when nobody serves the target.
    pub async fn call<Req, Resp>(
        &self,
        target: &Target,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let started = Instant::now();
        if target.server.is_none() && !self.has_consumers(target, true).await {
            return Err(CallError::NoConsumers {
                target: target.to_string(),
            });
        }
        let correlation = wire::new_id();
        let (waiter, reply) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(correlation.clone(), waiter);
        }
        let forget = ForgetOnDrop {
            pending: &self.pending,
            correlation: &correlation,
        };
        let properties = self
            .properties(method, "call", &correlation)
            .with_correlation_id(correlation.as_str().into())
            .with_reply_to(wire::DIRECT_REPLY_TO.into())
            .with_expiration(timeout.as_millis().max(1).to_string().into());
        self.send(target, properties, request).await?;
        let remaining = timeout.saturating_sub(started.elapsed());
        // While waiting, look again every second: if the last consumer of the
        // topic went away, say so instead of waiting out the timeout.
        let waiting = async {
            tokio::pin!(reply);
            loop {
                tokio::select! {
                    delivery = &mut reply => return delivery.map_err(|_| CallError::Timeout(timeout)),
                    _ = tokio::time::sleep(Duration::from_secs(1)), if target.server.is_none() => {
                        if !self.has_consumers(target, false).await {
                            return Err(CallError::NoConsumers { target: target.to_string() });
                        }
                    }
                }
            }
        };
        let delivery = tokio::time::timeout(remaining, waiting)
            .await
            .map_err(|_elapsed| CallError::Timeout(timeout))??;
        drop(forget);
        decode_reply(&delivery)
    }

    /// Sends `method` to one instance of `target` without waiting for a
    /// reply; the message is persistent and waits in the durable topic queue
    /// until an instance takes it.
    pub async fn cast<Req: Message>(
        &self,
        target: &Target,
        method: &str,
        request: &Req,
    ) -> Result<(), CallError> {
        let properties = self
            .properties(method, "cast", &wire::new_id())
            .with_delivery_mode(2);
        self.send(target, properties, request).await
    }

    /// Sends `method` to every instance of `target.topic`.
    pub async fn fanout<Req: Message>(
        &self,
        target: &Target,
        method: &str,
        request: &Req,
    ) -> Result<(), CallError> {
        let properties = self.properties(method, "cast", &wire::new_id());
        let exchange = wire::fanout_exchange(&target.exchange, &target.topic);
        self.ensure_exchange(&exchange, ExchangeKind::Fanout)
            .await?;
        self.publish_traced(&exchange, "", properties, request)
            .await
            .map_err(|error| match error {
                MessagingError::Unroutable { .. } => CallError::NoConsumers {
                    target: exchange.clone(),
                },
                MessagingError::Broker { source, .. } if is_not_found(&source) => {
                    CallError::NoConsumers {
                        target: exchange.clone(),
                    }
                }
                other => CallError::Transport(other),
            })
    }

    fn properties(&self, method: &str, kind: &str, message_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        wire::set_str(&mut headers, wire::METHOD, method);
        wire::set_str(&mut headers, wire::KIND, kind);
        BasicProperties::default()
            .with_content_type(wire::CONTENT_TYPE.into())
            .with_message_id(message_id.into())
            .with_timestamp(wire::now_timestamp())
            .with_headers(headers)
    }

    /// Declares `name` once per client.
    async fn ensure_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), MessagingError> {
        let known = self
            .declared
            .lock()
            .map(|d| d.contains(name))
            .unwrap_or(false);
        if !known {
            declare_exchange(&self.channel, name, kind).await?;
            if let Ok(mut declared) = self.declared.lock() {
                declared.insert(name.to_string());
            }
        }
        Ok(())
    }

    /// Publishes to `target`, mandatory: a message no queue takes is an
    /// error the caller sees, never a silent drop by the broker.
    async fn send<Req: Message>(
        &self,
        target: &Target,
        properties: BasicProperties,
        request: &Req,
    ) -> Result<(), CallError> {
        self.ensure_exchange(&target.exchange, ExchangeKind::Topic)
            .await?;
        self.publish_traced(&target.exchange, &target.routing_key(), properties, request)
            .await
            .map_err(|error| match error {
                MessagingError::Unroutable { .. } => CallError::NoConsumers {
                    target: target.to_string(),
                },
                other => CallError::Transport(other),
            })
    }

    async fn publish_traced<Req: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        request: &Req,
    ) -> Result<(), MessagingError> {
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let body = request.encode_to_vec();
        let span = consume::publish_span(exchange, routing_key, &message_id, body.len());
        let mut headers = properties.headers().clone().unwrap_or_default();
        wire::inject_trace(&mut headers, &span);
        let properties = properties.with_headers(headers);
        consume::publish(
            &self.channel,
            exchange,
            routing_key,
            true,
            &body,
            properties,
        )
        .instrument(span)
        .await
    }

    /// Whether the topic queue has consumers. With `cached`, a yes is
    /// remembered for a second; a no is never remembered.
    async fn has_consumers(&self, target: &Target, cached: bool) -> bool {
        let queue = wire::topic_queue(&target.exchange, &target.topic);
        let fresh = cached
            && self
                .seen_consumers
                .lock()
                .ok()
                .and_then(|seen| seen.get(&queue).copied())
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if fresh {
            return true;
        }
        // A passive declare of a missing queue closes its channel: use a
        // throwaway one.
        let Ok(probe) = self.transport.channel().await else {
            return true; // let the publish report the transport problem
        };
        let present = match probe
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(declared) => {
                let _ = probe.close(200, "probe done".into()).await;
                declared.consumer_count() > 0
            }
            Err(_) => false,
        };
        if present && let Ok(mut seen) = self.seen_consumers.lock() {
            seen.insert(queue, Instant::now());
        }
        present
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}

/// Removes a call's waiter however the call ends.
struct ForgetOnDrop<'a> {
    pending: &'a Mutex<HashMap<String, oneshot::Sender<Delivery>>>,
    correlation: &'a str,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(self.correlation);
        }
    }
}

fn decode_reply<Resp: Message + Default>(delivery: &Delivery) -> Result<Resp, CallError> {
    let malformed = |what: &str| CallError::Remote {
        code: "malformed_reply".into(),
        message: what.to_string(),
    };
    match wire::header_str(&delivery.properties, wire::STATUS) {
        Some("ok") => Resp::decode(delivery.data.as_slice()).map_err(|e| malformed(&e.to_string())),
        Some("error") => {
            let error = RpcError::decode(delivery.data.as_slice())
                .map_err(|e| malformed(&e.to_string()))?;
            Err(match rpc_error::Kind::try_from(error.kind) {
                Ok(rpc_error::Kind::NoSuchMethod) => CallError::NoSuchMethod {
                    message: error.message,
                    served: error.served_methods,
                },
                Ok(rpc_error::Kind::InvalidArgument) => CallError::InvalidArgument(error.message),
                _ => CallError::Remote {
                    code: error.code,
                    message: error.message,
                },
            })
        }
        _ => Err(malformed("reply without x-switchyard-status")),
    }
}
