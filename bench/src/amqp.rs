//! AMQP workloads: RPC round trips (echo and I/O-bound), casts and
//! notifications, through Switchyard in each phase and through raw lapin
//! doing the same broker work with no executor, no tracing and no envelope
//! handling: confirmed publishes, manual acks, direct reply-to, and the
//! same messages through the same kind of exchange into the same kind of
//! queue (docs/benchmarks.md: the broker's share).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use prost::Message;
use switchyard_executor::sync::lock;
use switchyard_executor::{Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_messaging::{
    AmqpConfig, Bound, EndpointError, Handled, Notification, NotificationListener, Notifier,
    Priority, RpcClient, RpcServer, Target, Transport, durable_queue_arguments, wire,
};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::measure::{Latencies, drive};

/// Shared state of one benchmark run on the broker.
pub struct Broker {
    pub transport: Transport,
    pub exchange: String,
    /// The raw contenders' topic exchange and queue, bound as Switchyard
    /// binds a topic queue ([`RAW_TOPIC`]) and a notification pool
    /// ([`RAW_EVENTS`]).
    raw_exchange: String,
    raw_queue: String,
}

/// The raw contenders' RPC topic and notification binding: an exact key as
/// a topic queue has, and a pattern over every priority as a pool that
/// subscribes to an event type has.
const RAW_TOPIC: &str = "raw";
const RAW_EVENTS: &str = "notifications.*.bench.raw";

impl Broker {
    /// A channel taking up to 1,024 unacknowledged deliveries, consuming
    /// the raw contenders' queue with manual acks.
    async fn consume_raw_queue(&self) -> anyhow::Result<(Channel, lapin::Consumer)> {
        let channel = self.transport.channel().await?;
        channel.basic_qos(1024, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                self.raw_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    pub async fn connect() -> anyhow::Result<Self> {
        let id = wire::new_id();
        let config = AmqpConfig {
            exchange: format!("bench-{id}"),
            queue_expires_ms: 600_000,
            ..AmqpConfig::default()
        };
        let transport = Transport::connect(&config, "bench", &id).await?;
        let raw_queue = format!("bench-raw-{id}");
        let raw_exchange = format!("bench-raw-{id}");
        let channel = transport.channel().await?;
        let dead_letters = wire::dead_letter_queue(&raw_queue);
        for (queue, arguments) in [
            (
                &raw_queue,
                durable_queue_arguments(
                    &config,
                    Bound::RejectPublish(config.max_queue_length),
                    Some(&dead_letters),
                ),
            ),
            (
                &dead_letters,
                durable_queue_arguments(&config, Bound::Unbounded, None),
            ),
        ] {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await?;
        }
        channel
            .exchange_declare(
                raw_exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for key in [RAW_TOPIC, RAW_EVENTS] {
            channel
                .queue_bind(
                    raw_queue.as_str().into(),
                    raw_exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Self {
            transport,
            exchange: config.exchange,
            raw_exchange,
            raw_queue,
        })
    }

    /// Deletes everything the run declared.
    pub async fn clean_up(&self) {
        let Ok(channel) = self.transport.channel().await else {
            return;
        };
        let mut queues = vec![
            wire::dead_letter_queue(&self.raw_queue),
            self.raw_queue.clone(),
        ];
        for topic in ["echo", "casts"] {
            let queue = wire::topic_queue(&self.exchange, topic);
            queues.push(wire::dead_letter_queue(&queue));
            queues.push(queue);
        }
        let pool = wire::pool_queue(&self.exchange, "bench");
        queues.push(wire::dead_letter_queue(&pool));
        queues.push(pool);
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            self.raw_exchange.clone(),
            self.exchange.clone(),
            wire::notification_exchange(&self.exchange),
            wire::fanout_exchange(&self.exchange, "echo"),
            wire::fanout_exchange(&self.exchange, "casts"),
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
        self.transport.close().await;
    }
}

pub fn executor(phase: Phase) -> anyhow::Result<Executor> {
    Ok(Executor::new("bench", ExecutorConfig::in_phase(phase))?)
}

/// Echo, waiting `wait_ms` of the request: sleeping when blocking, awaiting when async.
fn echo(phase: Phase) -> Endpoint<SayRequest, Result<SayReply, EndpointError>> {
    let reply = |request: SayRequest| SayReply {
        text: request.text,
        ..SayReply::default()
    };
    match phase {
        Phase::Threaded => Endpoint::blocking("say", move |_, request: SayRequest| {
            if request.wait_ms > 0 {
                std::thread::sleep(Duration::from_millis(request.wait_ms.into()));
            }
            Ok(reply(request))
        }),
        _ => Endpoint::from_async("say", move |_, request: SayRequest| async move {
            if request.wait_ms > 0 {
                tokio::time::sleep(Duration::from_millis(request.wait_ms.into())).await;
            }
            Ok(reply(request))
        }),
    }
}

pub fn payload(wait_ms: u32) -> SayRequest {
    SayRequest {
        text: "x".repeat(100),
        wait_ms,
    }
}

/// A Switchyard RPC server for `topic` running `endpoint` in `phase`, and
/// a client aimed at it.
struct Served {
    server: RpcServer,
    client: RpcClient,
    target: Target,
    stop: CancellationToken,
    /// Kept for as long as the server runs on it.
    _executor: Executor,
}

impl Served {
    async fn start(
        broker: &Broker,
        topic: &str,
        phase: Phase,
        endpoint: Endpoint<SayRequest, Result<SayReply, EndpointError>>,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let executor = executor(phase)?;
        let server = RpcServer::builder(&broker.exchange, topic, "bench")
            .method(executor.register(endpoint)?)
            .start(
                &broker.transport,
                executor.config().capacity(),
                stop.clone(),
            )
            .await?;
        Ok(Self {
            server,
            client: RpcClient::new(&broker.transport).await?,
            target: Target::topic(&broker.exchange, topic),
            stop,
            _executor: executor,
        })
    }

    /// Runs `work` against the server, then stops it once its deliveries
    /// are settled.
    async fn measure(self, work: impl Future<Output = Latencies>) -> Latencies {
        let result = work.await;
        self.stop.cancel();
        self.server.stopped().await;
        result
    }
}

/// Calls through a Switchyard server in `phase`.
pub async fn switchyard_calls(
    broker: &Broker,
    phase: Phase,
    callers: usize,
    wait_ms: u32,
    cell: Duration,
) -> anyhow::Result<Latencies> {
    let served = Served::start(broker, "echo", phase, echo(phase)).await?;
    let (client, target) = (served.client.clone(), served.target.clone());
    let calls = drive(callers, cell, move || {
        let (client, target) = (client.clone(), target.clone());
        async move {
            client
                .call::<_, SayReply>(&target, "say", &payload(wait_ms), Duration::from_secs(30))
                .await
                .is_ok()
        }
    });
    Ok(served.measure(calls).await)
}

/// Calls through raw lapin: one client channel multiplexing calls over direct
/// reply-to (as Switchyard's client does), a server that waits then replies
/// with a confirm and acks.
pub async fn raw_calls(
    broker: &Broker,
    callers: usize,
    wait_ms: u32,
    cell: Duration,
) -> anyhow::Result<Latencies> {
    let stop = CancellationToken::new();
    let (server, mut requests) = broker.consume_raw_queue().await?;
    {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = requests.next() => match next { Some(Ok(d)) => d, _ => return },
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if wait_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(wait_ms.into())).await;
                    }
                    if let Some(reply_to) = delivery.properties.reply_to().clone() {
                        let mut headers = FieldTable::default();
                        wire::set_str(&mut headers, wire::STATUS, wire::status::OK);
                        let mut properties = BasicProperties::default()
                            .with_content_type(wire::CONTENT_TYPE.into())
                            .with_headers(headers);
                        if let Some(id) = delivery.properties.correlation_id().clone() {
                            properties = properties.with_correlation_id(id);
                        }
                        if let Ok(confirm) = server
                            .basic_publish(
                                "".into(),
                                reply_to,
                                BasicPublishOptions::default(),
                                &delivery.data,
                                properties,
                            )
                            .await
                        {
                            let _ = confirm.await;
                        }
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                });
            }
        });
    }
    let client = broker.transport.channel().await?;
    let mut replies = client
        .basic_consume(
            wire::DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    {
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let waiter = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| lock(&pending).remove(id.as_str()));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
        });
    }
    let body = Arc::new(payload(wait_ms).encode_to_vec());
    let exchange = broker.raw_exchange.clone();
    let result = drive(callers, cell, move || {
        let (client, pending, body, exchange) = (
            client.clone(),
            Arc::clone(&pending),
            Arc::clone(&body),
            exchange.clone(),
        );
        async move {
            let id = wire::new_id();
            let (tx, rx) = oneshot::channel();
            lock(&pending).insert(id.clone(), tx);
            let properties = Envelope::Call
                .properties(&id)
                .with_reply_to(wire::DIRECT_REPLY_TO.into())
                .with_correlation_id(id.as_str().into())
                .with_expiration("30000".into());
            let published = client
                .basic_publish(
                    exchange.as_str().into(),
                    RAW_TOPIC.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await;
            match published {
                Ok(confirm) => {
                    confirm.await.is_ok()
                        && tokio::time::timeout(Duration::from_secs(30), rx)
                            .await
                            .is_ok()
                }
                Err(_) => false,
            }
        }
    })
    .await;
    stop.cancel();
    Ok(result)
}

/// Publish → handled latency of one-way messages (casts, notifications,
/// raw): the publisher writes the time since `epoch` into the payload's
/// text (zero-padded to the 100 bytes every workload sends), the handler
/// reads it back when it runs.
#[derive(Debug, Clone)]
pub struct Stamps {
    epoch: Instant,
    count: usize,
    micros: Arc<Mutex<Vec<u64>>>,
    done: Arc<Notify>,
}

impl Stamps {
    fn new(count: usize) -> Self {
        Self {
            epoch: Instant::now(),
            count,
            micros: Arc::new(Mutex::new(Vec::with_capacity(count))),
            done: Arc::new(Notify::new()),
        }
    }

    /// A 100-byte payload stamped now.
    fn payload(&self) -> SayRequest {
        SayRequest {
            text: format!("{:0>100}", self.epoch.elapsed().as_nanos()),
            wait_ms: 0,
        }
    }

    /// A message stamped `text` was handled now.
    fn handled(&self, text: &str) {
        let Ok(sent) = text.parse::<u128>() else {
            return;
        };
        let latency = self.epoch.elapsed().as_nanos().saturating_sub(sent) / 1_000;
        let seen = {
            let mut micros = lock(&self.micros);
            micros.push(latency as u64);
            micros.len()
        };
        if seen >= self.count {
            self.done.notify_one();
        }
    }

    fn seen(&self) -> usize {
        lock(&self.micros).len()
    }

    /// Publishes `count` messages, 64 in flight at a time, and waits (a
    /// minute at most) until all were handled: the rate over the whole,
    /// and the publish → handled latencies.
    async fn pump<P, Fut>(self, publish: P) -> Latencies
    where
        P: Fn(SayRequest) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let started = Instant::now();
        let mut in_flight = tokio::task::JoinSet::new();
        for _ in 0..self.count {
            if in_flight.len() >= 64 {
                in_flight.join_next().await;
            }
            in_flight.spawn(publish(self.payload()));
        }
        while in_flight.join_next().await.is_some() {}
        while self.seen() < self.count {
            if tokio::time::timeout(Duration::from_secs(60), self.done.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let micros = lock(&self.micros).clone();
        let lost = self.count.saturating_sub(micros.len()) as u64;
        Latencies::of(micros, started.elapsed(), lost)
    }
}

/// Casts through a Switchyard server in `phase`.
pub async fn switchyard_casts(
    broker: &Broker,
    phase: Phase,
    count: usize,
) -> anyhow::Result<Latencies> {
    let stamps = Stamps::new(count);
    let handled = stamps.clone();
    let endpoint = match phase {
        Phase::Threaded => Endpoint::blocking("say", move |_, request: SayRequest| {
            handled.handled(&request.text);
            Ok::<_, EndpointError>(SayReply::default())
        }),
        _ => Endpoint::from_async("say", move |_, request: SayRequest| {
            handled.handled(&request.text);
            async { Ok::<_, EndpointError>(SayReply::default()) }
        }),
    };
    let served = Served::start(broker, "casts", phase, endpoint).await?;
    let (client, target) = (served.client.clone(), served.target.clone());
    let casts = stamps.pump(move |request| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let _ = client.cast(&target, "say", &request).await;
        }
    });
    Ok(served.measure(casts).await)
}

/// Notifications through a Switchyard listener in `phase`.
pub async fn switchyard_notifications(
    broker: &Broker,
    phase: Phase,
    count: usize,
) -> anyhow::Result<Latencies> {
    let stop = CancellationToken::new();
    let executor = executor(phase)?;
    let stamps = Stamps::new(count);
    let handled = stamps.clone();
    let endpoint = match phase {
        Phase::Threaded => Endpoint::blocking(
            "sample",
            move |_, notification: Notification<SayRequest>| {
                handled.handled(&notification.payload.text);
                Ok::<_, EndpointError>(Handled::Handled)
            },
        ),
        _ => Endpoint::from_async(
            "sample",
            move |_, notification: Notification<SayRequest>| {
                handled.handled(&notification.payload.text);
                async { Ok::<_, EndpointError>(Handled::Handled) }
            },
        ),
    };
    let listener = NotificationListener::builder(&broker.exchange, "bench")
        .subscribe("bench.sample", &[])
        .start(
            &broker.transport,
            executor.register(endpoint)?,
            stop.clone(),
        )
        .await?;
    let notifier = Notifier::new(&broker.transport, &broker.exchange, "bench").await?;
    let result = stamps
        .pump(|request| {
            let notifier = notifier.clone();
            async move {
                let _ = notifier
                    .notify(Priority::Sample, "bench.sample", &request)
                    .await;
            }
        })
        .await;
    stop.cancel();
    listener.stopped().await;
    Ok(result)
}

/// The message a raw contender sends: Switchyard's envelope (its
/// properties and headers, docs/wire.md), written by hand, so the broker
/// stores, routes and delivers the same bytes for both contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Call,
    Cast,
    Notification,
}

impl Envelope {
    fn properties(self, message_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        match self {
            Envelope::Call | Envelope::Cast => {
                wire::set_str(&mut headers, wire::METHOD, "say");
                let kind = if self == Envelope::Call {
                    wire::kind::CALL
                } else {
                    wire::kind::CAST
                };
                wire::set_str(&mut headers, wire::KIND, kind);
            }
            Envelope::Notification => {
                wire::set_str(&mut headers, wire::KIND, wire::kind::NOTIFICATION);
                wire::set_str(&mut headers, wire::EVENT_TYPE, "bench.raw");
                wire::set_str(&mut headers, wire::PRIORITY, "sample");
                wire::set_str(&mut headers, wire::PUBLISHER, "bench");
            }
        }
        let properties = BasicProperties::default()
            .with_content_type(wire::CONTENT_TYPE.into())
            .with_message_id(message_id.into())
            .with_timestamp(wire::now_timestamp())
            .with_headers(headers);
        match self {
            Envelope::Call => properties,
            Envelope::Cast | Envelope::Notification => properties.with_delivery_mode(2),
        }
    }

    /// Where it is published, and whether mandatory (an RPC message no
    /// queue takes is an error; a notification nobody listens for is not).
    fn route(self) -> (String, bool) {
        match self {
            Envelope::Call | Envelope::Cast => (RAW_TOPIC.to_string(), true),
            Envelope::Notification => (wire::notification_key("sample", "bench.raw"), false),
        }
    }
}

/// Raw: confirmed persistent publishes, a consumer acking each message
/// (after decoding it, as every contender does).
pub async fn raw_messages(
    broker: &Broker,
    envelope: Envelope,
    count: usize,
) -> anyhow::Result<Latencies> {
    let stop = CancellationToken::new();
    let (_consumer_channel, mut consumer) = broker.consume_raw_queue().await?;
    let stamps = Stamps::new(count);
    {
        let stop = stop.clone();
        let handled = stamps.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = consumer.next() => match next { Some(Ok(d)) => d, _ => return },
                };
                if let Ok(request) = SayRequest::decode(delivery.data.as_slice()) {
                    handled.handled(&request.text);
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }
    let publisher: Channel = broker.transport.channel().await?;
    let exchange = broker.raw_exchange.clone();
    let (key, mandatory) = envelope.route();
    let result = stamps
        .pump(|request| {
            let (publisher, exchange, key) = (publisher.clone(), exchange.clone(), key.clone());
            async move {
                if let Ok(confirm) = publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions {
                            mandatory,
                            ..BasicPublishOptions::default()
                        },
                        &request.encode_to_vec(),
                        envelope.properties(&wire::new_id()),
                    )
                    .await
                {
                    let _ = confirm.await;
                }
            }
        })
        .await;
    stop.cancel();
    Ok(result)
}
