//! AMQP throughput per phase beside a raw lapin loop doing the same work on
//! the same broker in the same run.
//!
//! Run with `cargo bench -p switchyard-messaging --bench amqp` (needs RabbitMQ
//! on 127.0.0.1:5672). Workloads, each bounded in time:
//! - call round trips at 1, 16 and 64 concurrent callers (calls/s, p50);
//! - casts: 2,000 confirmed casts through a server (msgs/s end to end);
//! - notifications: 2,000 confirmed notifications through a pool (msgs/s).
//!
//! The raw contender publishes with confirms, consumes with manual acks and
//! replies over direct reply-to exactly as Switchyard does, with no executor,
//! no tracing and no protobuf envelope handling. Contenders alternate per
//! cell, so machine drift hits all alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use switchyard_executor::{Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_messaging::{
    AmqpConfig, EndpointError, Handled, Notification, NotificationListener, Notifier, Priority,
    RpcClient, RpcServer, Target, Transport, wire,
};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const CALL_CELL: Duration = Duration::from_millis(1500);
const MESSAGES: usize = 2000;

fn payload() -> SayRequest {
    SayRequest {
        text: "x".repeat(100),
        wait_ms: 0,
    }
}

fn executor(phase: Phase) -> Executor {
    let config = ExecutorConfig {
        phase,
        ..ExecutorConfig::default()
    };
    match Executor::new("bench", config) {
        Ok(executor) => executor,
        Err(error) => panic!("bench setup: {error}"),
    }
}

fn echo(phase: Phase) -> Endpoint<SayRequest, Result<SayReply, EndpointError>> {
    let reply = |request: SayRequest| SayReply {
        text: request.text,
        ..SayReply::default()
    };
    match phase {
        Phase::Threaded => Endpoint::blocking("say", move |_, request| Ok(reply(request))),
        _ => Endpoint::from_async("say", move |_, request| async move { Ok(reply(request)) }),
    }
}

/// Runs `callers` loops of `call` for `CALL_CELL`; returns calls/s and p50 µs.
async fn drive<F, Fut>(callers: usize, call: F) -> (f64, u64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let call = Arc::clone(&call);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < CALL_CELL {
                let one = Instant::now();
                call().await;
                latencies.push(one.elapsed().as_micros() as u64);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(Ok(mut some)) = tasks.join_next().await {
        latencies.append(&mut some);
    }
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    (
        rate,
        latencies.get(latencies.len() / 2).copied().unwrap_or(0),
    )
}

async fn switchyard_calls(
    transport: &Transport,
    exchange: &str,
    phase: Phase,
    callers: usize,
) -> (f64, u64) {
    let stop = CancellationToken::new();
    let executor = executor(phase);
    let endpoint = executor
        .register(echo(phase))
        .unwrap_or_else(|e| panic!("{e}"));
    let server = RpcServer::builder(exchange, "echo", "bench")
        .method(endpoint)
        .start(transport, executor.config().capacity(), stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = RpcClient::new(transport)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let target = Target::topic(exchange, "echo");
    let result = drive(callers, move || {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let _: Result<SayReply, _> = client
                .call(&target, "say", &payload(), Duration::from_secs(10))
                .await;
        }
    })
    .await;
    stop.cancel();
    server.stopped().await;
    result
}

/// The raw contender's server: consume, reply over direct reply-to with a
/// confirm, ack.
async fn raw_server(channel: Channel, queue: &str, stop: CancellationToken) {
    let mut consumer = match channel
        .basic_consume(
            queue.into(),
            "raw-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => panic!("raw consume: {error}"),
    };
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => return,
                next = consumer.next() => match next { Some(Ok(d)) => d, _ => return },
            };
            let channel = channel.clone();
            tokio::spawn(async move {
                if let Some(reply_to) = delivery.properties.reply_to().clone() {
                    let mut properties = BasicProperties::default();
                    if let Some(id) = delivery.properties.correlation_id().clone() {
                        properties = properties.with_correlation_id(id);
                    }
                    if let Ok(confirm) = channel
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

async fn raw_calls(transport: &Transport, queue: &str, callers: usize) -> (f64, u64) {
    let stop = CancellationToken::new();
    let server_channel = transport.channel().await.unwrap_or_else(|e| panic!("{e}"));
    let _ = server_channel
        .basic_qos(1024, BasicQosOptions::default())
        .await;
    raw_server(server_channel, queue, stop.clone()).await;
    // One channel per caller: direct reply-to delivers on the publishing channel.
    let mut channels = Vec::new();
    for _ in 0..callers {
        let channel = transport.channel().await.unwrap_or_else(|e| panic!("{e}"));
        let replies = channel
            .basic_consume(
                wire::DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        channels.push((channel, tokio::sync::Mutex::new(replies)));
    }
    let channels = Arc::new(channels);
    let next = Arc::new(AtomicUsize::new(0));
    let body = prost::Message::encode_to_vec(&payload());
    let queue = queue.to_string();
    let result = drive(callers, move || {
        let (channels, next, body, queue) = (
            Arc::clone(&channels),
            Arc::clone(&next),
            body.clone(),
            queue.clone(),
        );
        async move {
            let index = next.fetch_add(1, SeqCst) % channels.len();
            let (channel, replies) = &channels[index];
            let mut replies = replies.lock().await;
            let properties = BasicProperties::default()
                .with_reply_to(wire::DIRECT_REPLY_TO.into())
                .with_correlation_id(wire::new_id().into());
            if let Ok(confirm) = channel
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
                .await
            {
                let _ = confirm.await;
            }
            let _ = replies.next().await;
        }
    })
    .await;
    stop.cancel();
    result
}

/// Publishes `MESSAGES` confirmed messages 64 at a time and waits until the
/// consumer saw them all; returns messages/s.
async fn pump<P, Fut>(publish: P, done: Arc<Notify>, seen: Arc<AtomicUsize>) -> f64
where
    P: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for index in 0..MESSAGES {
        if in_flight.len() >= 64 {
            in_flight.join_next().await;
        }
        in_flight.spawn(publish(index));
    }
    while in_flight.join_next().await.is_some() {}
    while seen.load(SeqCst) < MESSAGES {
        if tokio::time::timeout(Duration::from_secs(30), done.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    MESSAGES as f64 / started.elapsed().as_secs_f64()
}

async fn switchyard_casts(transport: &Transport, exchange: &str, phase: Phase) -> f64 {
    let stop = CancellationToken::new();
    let executor = executor(phase);
    let (seen, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let counted = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        let count = move || {
            if seen.fetch_add(1, SeqCst) + 1 >= MESSAGES {
                done.notify_one();
            }
        };
        match phase {
            Phase::Threaded => Endpoint::blocking("say", move |_, _: SayRequest| {
                count();
                Ok::<_, EndpointError>(SayReply::default())
            }),
            _ => Endpoint::from_async("say", move |_, _: SayRequest| {
                count();
                async { Ok::<_, EndpointError>(SayReply::default()) }
            }),
        }
    };
    let server = RpcServer::builder(exchange, "casts", "bench")
        .method(executor.register(counted).unwrap_or_else(|e| panic!("{e}")))
        .start(transport, executor.config().capacity(), stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = RpcClient::new(transport)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let target = Target::topic(exchange, "casts");
    let rate = pump(
        |_| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let _ = client.cast(&target, "say", &payload()).await;
            }
        },
        done,
        seen,
    )
    .await;
    stop.cancel();
    server.stopped().await;
    rate
}

async fn switchyard_notifications(transport: &Transport, exchange: &str, phase: Phase) -> f64 {
    let stop = CancellationToken::new();
    let executor = executor(phase);
    let (seen, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let endpoint = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        let count = move || {
            if seen.fetch_add(1, SeqCst) + 1 >= MESSAGES {
                done.notify_one();
            }
        };
        match phase {
            Phase::Threaded => {
                Endpoint::blocking("sample", move |_, _: Notification<SayRequest>| {
                    count();
                    Ok::<_, EndpointError>(Handled::Handled)
                })
            }
            _ => Endpoint::from_async("sample", move |_, _: Notification<SayRequest>| {
                count();
                async { Ok::<_, EndpointError>(Handled::Handled) }
            }),
        }
    };
    let listener = NotificationListener::builder(exchange, "bench")
        .subscribe("bench.sample", &[])
        .start(
            transport,
            executor
                .register(endpoint)
                .unwrap_or_else(|e| panic!("{e}")),
            stop.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let notifier = Notifier::new(transport, exchange, "bench")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rate = pump(
        |_| {
            let notifier = notifier.clone();
            async move {
                let _ = notifier
                    .notify(Priority::Sample, "bench.sample", &payload())
                    .await;
            }
        },
        done,
        seen,
    )
    .await;
    stop.cancel();
    listener.stopped().await;
    rate
}

/// Raw: confirmed persistent publishes to a queue, consumer acks each.
async fn raw_messages(transport: &Transport, queue: &str) -> f64 {
    let stop = CancellationToken::new();
    let consumer_channel = transport.channel().await.unwrap_or_else(|e| panic!("{e}"));
    let _ = consumer_channel
        .basic_qos(1024, BasicQosOptions::default())
        .await;
    let (seen, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "raw-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    {
        let (seen, done, stop) = (Arc::clone(&seen), Arc::clone(&done), stop.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = consumer.next() => match next { Some(Ok(d)) => d, _ => return },
                };
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if seen.fetch_add(1, SeqCst) + 1 >= MESSAGES {
                    done.notify_one();
                }
            }
        });
    }
    let publisher = transport.channel().await.unwrap_or_else(|e| panic!("{e}"));
    let body = prost::Message::encode_to_vec(&payload());
    let queue = queue.to_string();
    let rate = pump(
        |_| {
            let (publisher, body, queue) = (publisher.clone(), body.clone(), queue.clone());
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
    rate
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("{error}"),
    };
    runtime.block_on(async {
        let id = wire::new_id();
        let config = AmqpConfig {
            exchange: format!("bench-{id}"),
            queue_expires_ms: 300_000,
            ..AmqpConfig::default()
        };
        let transport = Transport::connect(&config, "bench", &id)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ on 127.0.0.1:5672: {e}"));
        let setup = transport.channel().await.unwrap_or_else(|e| panic!("{e}"));
        let raw_queue = format!("bench-raw-{id}");
        let _ = setup
            .queue_declare(
                raw_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await;

        println!("| workload | callers | contender | rate /s | p50 µs | ratio to raw |");
        println!("|---|---:|---|---:|---:|---:|");
        for callers in [1, 16, 64] {
            let (raw, raw_p50) = raw_calls(&transport, &raw_queue, callers).await;
            println!("| call round trip | {callers} | raw lapin | {raw:.0} | {raw_p50} | 1.00 |");
            for phase in Phase::ALL {
                let (rate, p50) =
                    switchyard_calls(&transport, &config.exchange, phase, callers).await;
                println!(
                    "| call round trip | {callers} | {phase} | {rate:.0} | {p50} | {:.2} |",
                    rate / raw
                );
            }
        }
        let raw = raw_messages(&transport, &raw_queue).await;
        println!("| casts ({MESSAGES}) | 64 in flight | raw lapin | {raw:.0} | – | 1.00 |");
        for phase in Phase::ALL {
            let rate = switchyard_casts(&transport, &config.exchange, phase).await;
            println!(
                "| casts ({MESSAGES}) | 64 in flight | {phase} | {rate:.0} | – | {:.2} |",
                rate / raw
            );
        }
        let raw = raw_messages(&transport, &raw_queue).await;
        println!("| notifications ({MESSAGES}) | 64 in flight | raw lapin | {raw:.0} | – | 1.00 |");
        for phase in Phase::ALL {
            let rate = switchyard_notifications(&transport, &config.exchange, phase).await;
            println!(
                "| notifications ({MESSAGES}) | 64 in flight | {phase} | {rate:.0} | – | {:.2} |",
                rate / raw
            );
        }

        for queue in [
            raw_queue,
            wire::topic_queue(&config.exchange, "echo"),
            wire::dead_letter_queue(&wire::topic_queue(&config.exchange, "echo")),
            wire::topic_queue(&config.exchange, "casts"),
            wire::dead_letter_queue(&wire::topic_queue(&config.exchange, "casts")),
            wire::pool_queue(&config.exchange, "bench"),
            wire::dead_letter_queue(&wire::pool_queue(&config.exchange, "bench")),
        ] {
            let _ = setup
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            config.exchange.clone(),
            wire::notification_exchange(&config.exchange),
            wire::fanout_exchange(&config.exchange, "echo"),
            wire::fanout_exchange(&config.exchange, "casts"),
        ] {
            let _ = setup
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
        transport.close().await;
    });
}
