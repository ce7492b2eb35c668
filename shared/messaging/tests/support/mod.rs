//! A test rig on the real RabbitMQ: a unique exchange per test, an echo
//! endpoint per phase, and cleanup of everything the test declared.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use switchyard_executor::{Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_messaging::{AmqpConfig, EndpointError, RpcClient, Target, Transport, wire};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::sync::mpsc;

pub const BOUND: Duration = Duration::from_secs(20);

pub struct Rig {
    pub config: AmqpConfig,
    pub transport: Transport,
    pub id: String,
}

impl Rig {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A rig whose settings `adjust` changes before it connects.
    pub async fn with(adjust: impl FnOnce(&mut AmqpConfig)) -> Self {
        let id = wire::new_id();
        let mut config = AmqpConfig {
            exchange: format!("test-{id}"),
            retry_delay_ms: 5,
            max_deliveries: 3,
            queue_expires_ms: 120_000,
            ..AmqpConfig::default()
        };
        adjust(&mut config);
        let transport = Transport::connect(&config, "test", &id)
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        Self {
            config,
            transport,
            id,
        }
    }

    pub fn exchange(&self) -> &str {
        &self.config.exchange
    }

    /// Publishes `body`, without headers, straight to `queue` (the default
    /// exchange) on `channel`, and waits for the broker's confirm.
    pub async fn publish_to_queue(channel: &lapin::Channel, queue: &str, body: &[u8]) {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Deletes the queues and exchanges of `topics` and `pools`.
    pub async fn cleanup(&self, topics: &[&str], pools: &[&str]) {
        let channel = self.transport.channel().await.expect("channel");
        let exchange = self.exchange();
        let mut queues = Vec::new();
        for topic in topics {
            let queue = wire::topic_queue(exchange, topic);
            queues.push(wire::dead_letter_queue(&queue));
            queues.push(queue);
        }
        for pool in pools {
            let queue = wire::pool_queue(exchange, pool);
            queues.push(wire::dead_letter_queue(&queue));
            queues.push(queue);
        }
        // The retry queues of each (one per delay; they would expire a
        // minute after their last use anyway).
        let retry = std::time::Duration::from_millis(self.config.retry_delay_ms);
        let retry_queues: Vec<String> = queues
            .iter()
            .flat_map(|queue| (0..6).map(move |k| wire::retry_queue(queue, retry * 2u32.pow(k))))
            .collect();
        for queue in queues.into_iter().chain(retry_queues) {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let mut exchanges = vec![exchange.to_string(), wire::notification_exchange(exchange)];
        exchanges.extend(topics.iter().map(|t| wire::fanout_exchange(exchange, t)));
        for name in exchanges {
            let _ = channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        self.transport.close().await;
    }

    /// Waits for `count` messages in `queue`, taking them off it.
    /// A queue not (yet) declared is waited for like an empty one.
    pub async fn drain(&self, queue: &str, count: usize) -> Vec<lapin::message::BasicGetMessage> {
        let mut channel = self.transport.channel().await.expect("channel");
        let mut taken = Vec::new();
        let started = Instant::now();
        while taken.len() < count {
            assert!(
                started.elapsed() < BOUND,
                "only {} of {count} messages reached `{queue}`",
                taken.len()
            );
            match channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                Ok(Some(message)) => taken.push(message),
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                // NOT_FOUND closes the channel.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    channel = self.transport.channel().await.expect("channel");
                }
            }
        }
        taken
    }
}

pub fn executor(phase: Phase, capacity: usize) -> Executor {
    Executor::new(
        "test",
        ExecutorConfig {
            phase,
            pool_size: capacity,
            max_in_flight: capacity,
            ..ExecutorConfig::default()
        },
    )
    .expect("executor")
}

/// `say` as the phase runs it; every request's text is also sent to `seen`.
pub fn say(
    phase: Phase,
    seen: mpsc::UnboundedSender<String>,
) -> Endpoint<SayRequest, Result<SayReply, EndpointError>> {
    let answer = move |phase: Phase, request: SayRequest, seen: &mpsc::UnboundedSender<String>| {
        let _ = seen.send(request.text.clone());
        if request.text == "invalid" {
            return Err(EndpointError::InvalidArgument(
                "field `text`: invalid".into(),
            ));
        }
        if request.text == "flaky" {
            return Err(EndpointError::Transient("database unavailable".into()));
        }
        Ok(SayReply {
            text: request.text,
            phase: phase.to_string(),
            thread: String::new(),
        })
    };
    match phase {
        Phase::Threaded => Endpoint::blocking("say", move |cx, request: SayRequest| {
            std::thread::sleep(Duration::from_millis(request.wait_ms.into()));
            answer(cx.phase(), request, &seen)
        }),
        _ => Endpoint::from_async("say", move |cx, request: SayRequest| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(request.wait_ms.into())).await;
                answer(cx.phase(), request, &seen)
            }
        }),
    }
}

pub fn text(text: &str) -> SayRequest {
    SayRequest {
        text: text.to_string(),
        wait_ms: 0,
    }
}

pub async fn recv(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(BOUND, seen.recv())
        .await
        .expect("endpoint ran in time")
        .expect("sender alive")
}

/// Listens on a loopback port the kernel picks and runs `handle` on a task
/// for each connection: the port.
pub async fn serve_loopback<F, Fut>(handle: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    port
}

/// An echo server in `phase` of `capacity` on a fresh exchange configured
/// by `adjust`, a client, and the server's topic.
pub async fn echo_on(
    adjust: impl FnOnce(&mut AmqpConfig),
    phase: Phase,
    capacity: usize,
) -> (Rig, EchoServer, RpcClient, Target) {
    let rig = Rig::with(adjust).await;
    let echo = EchoServer::start(&rig.transport, rig.exchange(), phase, capacity).await;
    let client = RpcClient::new(&rig.transport).await.expect("client");
    let target = Target::topic(rig.exchange(), "echo");
    (rig, echo, client, target)
}

/// Stops `echo`, then deletes what `rig` declared for it and closes.
pub async fn finish(rig: Rig, echo: EchoServer) {
    echo.stop().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// An echo server (`say`) on a topic `echo` of `exchange`.
pub struct EchoServer {
    pub executor: Executor,
    /// Every request's text, as the endpoint saw it.
    pub seen: mpsc::UnboundedReceiver<String>,
    server: switchyard_messaging::RpcServer,
    stop: tokio_util::sync::CancellationToken,
}

impl EchoServer {
    /// Starts serving as instance `s1`, in `phase`, `capacity` requests at once.
    pub async fn start(
        transport: &Transport,
        exchange: &str,
        phase: Phase,
        capacity: usize,
    ) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let executor = executor(phase, capacity);
        let server = switchyard_messaging::RpcServer::builder(exchange, "echo", "s1")
            .method(
                executor
                    .register(say(phase, seen_tx))
                    .expect("phase runs say"),
            )
            .start(transport, capacity, stop.clone())
            .await
            .expect("server starts");
        Self {
            executor,
            seen,
            server,
            stop,
        }
    }

    /// Stops consuming and waits until every delivery taken was settled.
    pub async fn stop(self) {
        self.stop.cancel();
        self.server.stopped().await;
    }
}
