//! AMQP workloads: RPC round trips (echo and I/O-bound), casts and
//! notifications, through Switchyard in each phase and through raw lapin
//! doing the same broker work (confirmed publishes, manual acks, direct
//! reply-to) with no executor, no tracing and no envelope handling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use prost::Message;
use switchyard_executor::{Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_messaging::{
    AmqpConfig, EndpointError, Handled, Notification, NotificationListener, Notifier, Priority,
    RpcClient, RpcServer, Target, Transport, wire,
};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::measure::{Latencies, drive};

/// Shared state of one benchmark run on the broker.
pub struct Broker {
    pub transport: Transport,
    pub exchange: String,
    raw_queue: String,
}

impl Broker {
    pub async fn connect() -> anyhow::Result<Self> {
        let id = wire::new_id();
        let config = AmqpConfig {
            exchange: format!("bench-{id}"),
            queue_expires_ms: 600_000,
            ..AmqpConfig::default()
        };
        let transport = Transport::connect(&config, "bench", &id).await?;
        let raw_queue = format!("bench-raw-{id}");
        transport
            .channel()
            .await?
            .queue_declare(
                raw_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            transport,
            exchange: config.exchange,
            raw_queue,
        })
    }

    /// Deletes everything the run declared.
    pub async fn clean_up(&self) {
        let Ok(channel) = self.transport.channel().await else {
            return;
        };
        let mut queues = vec![self.raw_queue.clone()];
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
    Ok(Executor::new(
        "bench",
        ExecutorConfig {
            phase,
            ..ExecutorConfig::default()
        },
    )?)
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

/// Calls through a Switchyard server in `phase`.
pub async fn switchyard_calls(
    broker: &Broker,
    phase: Phase,
    callers: usize,
    wait_ms: u32,
    cell: Duration,
) -> anyhow::Result<Latencies> {
    let stop = CancellationToken::new();
    let executor = executor(phase)?;
    let server = RpcServer::builder(&broker.exchange, "echo", "bench")
        .method(executor.register(echo(phase))?)
        .start(
            &broker.transport,
            executor.config().capacity(),
            stop.clone(),
        )
        .await?;
    let client = RpcClient::new(&broker.transport).await?;
    let target = Target::topic(&broker.exchange, "echo");
    let result = drive(callers, cell, move || {
        let (client, target) = (client.clone(), target.clone());
        async move {
            client
                .call::<_, SayReply>(&target, "say", &payload(wait_ms), Duration::from_secs(30))
                .await
                .is_ok()
        }
    })
    .await;
    stop.cancel();
    server.stopped().await;
    Ok(result)
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
    let server = broker.transport.channel().await?;
    server.basic_qos(1024, BasicQosOptions::default()).await?;
    let mut requests = server
        .basic_consume(
            broker.raw_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
                        let mut properties = BasicProperties::default();
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
                    .and_then(|id| pending.lock().ok()?.remove(id.as_str()));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
        });
    }
    let body = Arc::new(payload(wait_ms).encode_to_vec());
    let queue = broker.raw_queue.clone();
    let result = drive(callers, cell, move || {
        let (client, pending, body, queue) = (
            client.clone(),
            Arc::clone(&pending),
            Arc::clone(&body),
            queue.clone(),
        );
        async move {
            let id = wire::new_id();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut pending) = pending.lock() {
                pending.insert(id.clone(), tx);
            }
            let properties = BasicProperties::default()
                .with_reply_to(wire::DIRECT_REPLY_TO.into())
                .with_correlation_id(id.into());
            let published = client
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
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

/// Publishes `count` messages 64 at a time and waits until all were handled;
/// returns messages per second.
async fn pump<P, Fut>(count: usize, publish: P, done: Arc<Notify>, seen: Arc<AtomicUsize>) -> f64
where
    P: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for index in 0..count {
        if in_flight.len() >= 64 {
            in_flight.join_next().await;
        }
        in_flight.spawn(publish(index));
    }
    while in_flight.join_next().await.is_some() {}
    while seen.load(SeqCst) < count {
        if tokio::time::timeout(Duration::from_secs(60), done.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn counter(
    count: usize,
) -> (
    Arc<AtomicUsize>,
    Arc<Notify>,
    impl Fn() + Clone + Send + Sync + 'static,
) {
    let (seen, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let (s, d) = (Arc::clone(&seen), Arc::clone(&done));
    (seen, done, move || {
        if s.fetch_add(1, SeqCst) + 1 >= count {
            d.notify_one();
        }
    })
}

/// Casts through a Switchyard server in `phase`.
pub async fn switchyard_casts(broker: &Broker, phase: Phase, count: usize) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let executor = executor(phase)?;
    let (seen, done, count_one) = counter(count);
    let endpoint = match phase {
        Phase::Threaded => Endpoint::blocking("say", move |_, _: SayRequest| {
            count_one();
            Ok::<_, EndpointError>(SayReply::default())
        }),
        _ => Endpoint::from_async("say", move |_, _: SayRequest| {
            count_one();
            async { Ok::<_, EndpointError>(SayReply::default()) }
        }),
    };
    let server = RpcServer::builder(&broker.exchange, "casts", "bench")
        .method(executor.register(endpoint)?)
        .start(
            &broker.transport,
            executor.config().capacity(),
            stop.clone(),
        )
        .await?;
    let client = RpcClient::new(&broker.transport).await?;
    let target = Target::topic(&broker.exchange, "casts");
    let rate = pump(
        count,
        |_| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let _ = client.cast(&target, "say", &payload(0)).await;
            }
        },
        done,
        seen,
    )
    .await;
    stop.cancel();
    server.stopped().await;
    Ok(rate)
}

/// Notifications through a Switchyard listener in `phase`.
pub async fn switchyard_notifications(
    broker: &Broker,
    phase: Phase,
    count: usize,
) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let executor = executor(phase)?;
    let (seen, done, count_one) = counter(count);
    let endpoint = match phase {
        Phase::Threaded => Endpoint::blocking("sample", move |_, _: Notification<SayRequest>| {
            count_one();
            Ok::<_, EndpointError>(Handled::Handled)
        }),
        _ => Endpoint::from_async("sample", move |_, _: Notification<SayRequest>| {
            count_one();
            async { Ok::<_, EndpointError>(Handled::Handled) }
        }),
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
    let rate = pump(
        count,
        |_| {
            let notifier = notifier.clone();
            async move {
                let _ = notifier
                    .notify(Priority::Sample, "bench.sample", &payload(0))
                    .await;
            }
        },
        done,
        seen,
    )
    .await;
    stop.cancel();
    listener.stopped().await;
    Ok(rate)
}

/// Raw: confirmed persistent publishes, a consumer acking each message.
pub async fn raw_messages(broker: &Broker, count: usize) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let consumer_channel = broker.transport.channel().await?;
    consumer_channel
        .basic_qos(1024, BasicQosOptions::default())
        .await?;
    let (seen, done, count_one) = counter(count);
    let mut consumer = consumer_channel
        .basic_consume(
            broker.raw_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = consumer.next() => match next { Some(Ok(d)) => d, _ => return },
                };
                let _ = delivery.ack(BasicAckOptions::default()).await;
                count_one();
            }
        });
    }
    let publisher: Channel = broker.transport.channel().await?;
    let body = Arc::new(payload(0).encode_to_vec());
    let queue = broker.raw_queue.clone();
    let rate = pump(
        count,
        |_| {
            let (publisher, body, queue) = (publisher.clone(), Arc::clone(&body), queue.clone());
            async move {
                if let Ok(confirm) = publisher
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                {
                    let _ = confirm.await;
                }
            }
        },
        done,
        seen,
    )
    .await;
    stop.cancel();
    Ok(rate)
}
