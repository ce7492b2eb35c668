//! The server side of RPC: a topic's methods, each dispatched to its
//! endpoint in the service's phase; replies and errors on the wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use prost::Message;
use switchyard_executor::{BoundEndpoint, BoxFuture, DispatchError, DispatchOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use switchyard_proto::catalogue::code;
use switchyard_proto::messaging::v1::{RpcError, rpc_error};

use super::topology::{
    Bound, bind, declare_exchange, declare_instance_queue, declare_with_dead_letters,
};
use crate::consume::{self, Consuming, Settle, Settler};
use crate::{EndpointError, MessagingError, Transport, wire};

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
    /// The topic it serves.
    pub fn topic(&self) -> &str {
        &self.topic
    }

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
        let channel = transport.consuming_channel(capacity).await?;
        let publishing = transport.channel().await?;
        let exchange = wire::rpc_exchange(&self.exchange);
        let fanout = wire::fanout_exchange(&self.exchange, &self.topic);
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await?;
        declare_exchange(&channel, &fanout, ExchangeKind::Fanout).await?;
        let topic_queue = wire::topic_queue(&self.exchange, &self.topic);
        // new_id's last digits count up within the process.
        let run = wire::new_id();
        let run = &run[run.len().saturating_sub(8)..];
        let server_queue = wire::server_queue(&self.exchange, &self.topic, &self.server, run);
        let fanout_queue = wire::fanout_queue(&self.exchange, &self.topic, &self.server, run);
        let bound = match config.max_queue_length {
            0 => Bound::Unbounded,
            length => Bound::RejectPublish(length),
        };
        let dead_letters = declare_with_dead_letters(transport, &topic_queue, bound).await?;
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
        // The topic's queue, which every instance of the service shares, on
        // a channel of its own that an idle consumer renews (see
        // `consume::Consuming`); the instance queues, deleted with their
        // last consumer, on the shared one.
        let topic = Consuming::Own {
            channel: transport.consuming_channel(capacity).await?,
            prefetch: capacity,
        };
        for (queue, consuming) in [
            (topic_queue, topic),
            (server_queue, Consuming::Shared(channel.clone())),
            (fanout_queue, Consuming::Shared(channel.clone())),
        ] {
            let settler = Arc::new(Settler {
                publishing: publishing.clone(),
                transport: transport.clone(),
                retry_queues: Default::default(),
                queue: queue.clone(),
                dead_letters: dead_letters.clone(),
                max_deliveries: config.max_deliveries,
                retry_delay: Duration::from_millis(config.retry_delay_ms),
            });
            let methods = Arc::clone(&methods);
            let max_body = config.max_body_bytes;
            consumers.push(
                consume::consume(
                    consuming,
                    settler.clone(),
                    shutdown.clone(),
                    transport.lost(),
                    handlers.clone(),
                    move |delivery, holding| {
                        let settler = Arc::clone(&settler);
                        let methods = Arc::clone(&methods);
                        async move {
                            let span = consume::process_span(&settler.queue, &delivery);
                            handle(delivery, &methods, &settler, max_body)
                                .instrument(span)
                                .await;
                            drop(holding);
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
            publishing,
        })
    }
}

/// A running RPC server.
#[derive(Debug)]
pub struct RpcServer {
    consumers: Vec<tokio::task::JoinHandle<Option<Channel>>>,
    handlers: TaskTracker,
    /// Where requests to this instance are delivered and acknowledged (the
    /// topic's requests come on a channel of their consumer's own).
    channel: Channel,
    /// Where replies and parked copies go.
    publishing: Channel,
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
    /// and every delivery taken was settled, then closes its channels.
    pub async fn stopped(self) {
        consume::drain(
            self.consumers,
            &self.handlers,
            vec![self.channel, self.publishing],
            "server stopped",
        )
        .await;
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
            Err((rpc_error::Kind::Remote, code::UNAVAILABLE.into(), message)),
        ),
        Err(Failure::Endpoint(EndpointError::Transient(message))) => (
            Settle::Retry(message.clone()),
            Err((rpc_error::Kind::Remote, code::TRANSIENT.into(), message)),
        ),
        Err(Failure::Dispatch(DispatchError::ShuttingDown)) => (
            Settle::ReturnToQueue,
            Err((
                rpc_error::Kind::Remote,
                code::UNAVAILABLE.into(),
                "shutting down".into(),
            )),
        ),
        Err(Failure::Dispatch(error @ DispatchError::Panicked { .. })) => (
            Settle::Retry(error.to_string()),
            Err((
                rpc_error::Kind::Remote,
                code::INTERNAL.into(),
                "the endpoint failed unexpectedly".into(),
            )),
        ),
        Err(Failure::Dispatch(error)) => (
            Settle::Ack,
            Err((
                rpc_error::Kind::Remote,
                code::DEADLINE_EXCEEDED.into(),
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

/// Publishes a reply to the caller's `reply_to` (direct reply-to, through
/// the default exchange); a reply that cannot be sent is logged: the
/// caller times out.
async fn reply(settler: &Settler, reply_to: &str, body: &[u8], properties: BasicProperties) {
    let published = consume::publish(
        &settler.publishing,
        &settler.transport,
        "",
        reply_to,
        false,
        body,
        properties,
    )
    .await;
    if let Err(error) = published {
        tracing::warn!("could not reply to {reply_to}: {error}");
    }
}

async fn reply_ok(settler: &Settler, delivery: &Delivery, reply_to: &str, body: Vec<u8>) {
    reply(
        settler,
        reply_to,
        &body,
        reply_properties(delivery, wire::status::OK),
    )
    .await;
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
    let properties = reply_properties(delivery, wire::status::ERROR)
        .with_type("switchyard.messaging.v1.RpcError".into());
    reply(settler, reply_to, &body, properties).await;
}
