//! The client side of RPC: call (wait for the reply on this connection's
//! reply queue), cast (durable, confirmed) and fan out (every instance).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use prost::Message;
use tokio::sync::oneshot;
use tracing::Instrument;

use switchyard_proto::messaging::v1::{RpcError, rpc_error};

use switchyard_executor::sync::lock;

use super::Target;
use super::topology::declare_exchange;
use crate::consume;
use crate::{CallError, MessagingError, Transport, wire};

/// Calls, casts and fans out to RPC servers. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    /// The channel consuming direct replies. Calls publish on it: RabbitMQ
    /// hands a direct reply only to the channel that published the request.
    replies: Channel,
    /// Casts, fan-outs and declarations: a channel on which nothing is
    /// delivered. lapin's I/O thread writes a channel's status lock (a
    /// `std::sync::RwLock`) for every content frame delivered on it, and a
    /// publish on that channel reads the lock first. Upstream lapin also
    /// woke the consumer inside that lock, so a cast on the reply channel
    /// waited whenever the I/O thread lost its CPU in between: the api's
    /// slow polls of up to 137 ms under cluster load, blocked in `futex`
    /// inside `basic_publish` (docs/scale-out.md). `vendor/lapin` now wakes
    /// after the lock; a channel of their own still keeps casts clear of
    /// the replies' frames. So a client's casts and calls are not ordered
    /// against each other.
    publishing: Channel,
    transport: Transport,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
    /// Topics seen with consumers, and when: checked again after a second.
    seen_consumers: Arc<Mutex<HashMap<String, Instant>>>,
    /// Held while asking the broker about a topic no yes is remembered for:
    /// the callers that waited find the answer remembered.
    probing: Arc<tokio::sync::Mutex<()>>,
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
    /// A client with its own channels, consuming RabbitMQ's direct
    /// reply-to pseudo queue: replies need no queue of their own, so none
    /// can leak.
    pub async fn new(transport: &Transport) -> Result<Self, MessagingError> {
        let channel = transport.channel().await?;
        let publishing = transport.channel().await?;
        let consuming = channel.basic_consume(
            wire::DIRECT_REPLY_TO.into(),
            ShortString::from(format!("replies.{}", wire::new_id())),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        );
        let mut replies =
            crate::slow::on_channel(|| "consuming direct replies".to_string(), consuming)
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
                            .and_then(|id| lock(&router).remove(id.as_str()));
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
        // The broker drops direct replies to a channel that is gone, and a
        // recovered connection has new channels: when the connection fails,
        // no call waiting then can get its reply. Wake them (they fail with
        // ReplyLost) instead of letting them wait out their timeouts.
        // Done when the connection is lost for good (calls see `lost`
        // themselves) or closed, or when the client is gone.
        let (drops, lost, closed, waiting) = (
            transport.drops(),
            transport.lost(),
            transport.closed(),
            Arc::downgrade(&pending),
        );
        tokio::spawn(async move {
            tokio::pin!(drops);
            loop {
                tokio::select! {
                    dropped = drops.next() => match (dropped, waiting.upgrade()) {
                        (Some(()), Some(waiting)) => lock(&waiting).clear(),
                        _ => return,
                    },
                    () = lost.cancelled() => return,
                    () = closed.cancelled() => return,
                }
            }
        });
        Ok(Self {
            replies: channel,
            publishing,
            transport: transport.clone(),
            pending,
            seen_consumers: Arc::default(),
            probing: Arc::default(),
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
        let correlation = wire::new_id();
        let (waiter, reply) = oneshot::channel();
        lock(&self.pending).insert(correlation.clone(), waiter);
        let _forget = ForgetOnDrop {
            pending: &self.pending,
            correlation: &correlation,
        };
        // Every step counts against the timeout: the consumer check and the
        // publish too (during a broker outage they wait).
        let calling = async {
            if target.server.is_none() && !self.has_consumers(target, true).await {
                return Err(CallError::NoConsumers {
                    target: target.to_string(),
                });
            }
            let properties = self
                .properties(method, wire::kind::CALL, &correlation)
                .with_correlation_id(correlation.as_str().into())
                .with_reply_to(wire::DIRECT_REPLY_TO.into())
                .with_expiration(timeout.as_millis().max(1).to_string().into());
            self.send(&self.replies, target, properties, request)
                .await?;
            // While waiting, look again every second: if the last consumer
            // of the topic went away, say so instead of waiting out the
            // timeout. A connection that fails takes its direct replies with
            // it (even if lapin recovers it; see `new`): say that at once,
            // too.
            let lost = self.transport.lost();
            tokio::pin!(reply);
            loop {
                tokio::select! {
                    delivery = &mut reply => return delivery.map_err(|_| CallError::ReplyLost),
                    () = lost.cancelled() => return Err(CallError::ReplyLost),
                    _ = tokio::time::sleep(Duration::from_secs(1)), if target.server.is_none() => {
                        if !self.has_consumers(target, false).await {
                            return Err(CallError::NoConsumers { target: target.to_string() });
                        }
                    }
                }
            }
        };
        let delivery = tokio::time::timeout(timeout, calling)
            .await
            .map_err(|_elapsed| CallError::Timeout(timeout))??;
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
            .properties(method, wire::kind::CAST, &wire::new_id())
            .with_delivery_mode(2);
        self.send(&self.publishing, target, properties, request)
            .await
    }

    /// Sends `method` to every instance of `target.topic`.
    pub async fn fanout<Req: Message>(
        &self,
        target: &Target,
        method: &str,
        request: &Req,
    ) -> Result<(), CallError> {
        let properties = self.properties(method, wire::kind::CAST, &wire::new_id());
        let exchange = wire::fanout_exchange(&target.exchange, &target.topic);
        self.ensure_exchange(&exchange, ExchangeKind::Fanout)
            .await?;
        self.publish_traced(&self.publishing, &exchange, "", properties, request)
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
        let known = lock(&self.declared).contains(name);
        if !known {
            declare_exchange(&self.publishing, name, kind).await?;
            lock(&self.declared).insert(name.to_string());
        }
        Ok(())
    }

    /// Publishes to `target`, mandatory: a message no queue takes is an
    /// error the caller sees, never a silent drop by the broker.
    async fn send<Req: Message>(
        &self,
        channel: &Channel,
        target: &Target,
        properties: BasicProperties,
        request: &Req,
    ) -> Result<(), CallError> {
        self.ensure_exchange(&target.exchange, ExchangeKind::Topic)
            .await?;
        self.publish_traced(
            channel,
            &target.exchange,
            &target.routing_key(),
            properties,
            request,
        )
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
        channel: &Channel,
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
            channel,
            &self.transport,
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
    /// remembered for a second; a no is never remembered. One caller asks
    /// the broker at a time: when a yes is a second old, the first caller
    /// to see it asks again and the others go on with the yes meanwhile;
    /// when none is remembered, the others wait for its answer. (Each
    /// caller asking for itself — a channel opened and closed per caller —
    /// held the first thousand calls of a busy client for a third of a
    /// second.)
    async fn has_consumers(&self, target: &Target, cached: bool) -> bool {
        let queue = wire::topic_queue(&target.exchange, &target.topic);
        let fresh = |at: &Instant| at.elapsed() < Duration::from_secs(1);
        let _probing;
        if cached {
            let remembered = {
                let mut seen = lock(&self.seen_consumers);
                match seen.get_mut(&queue) {
                    Some(at) if fresh(at) => return true,
                    // This caller asks again; until it knows, the yes stands.
                    Some(at) => {
                        *at = Instant::now();
                        true
                    }
                    None => false,
                }
            };
            if !remembered {
                _probing = self.probing.lock().await;
                if lock(&self.seen_consumers).get(&queue).is_some_and(fresh) {
                    return true;
                }
            }
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
        if present {
            lock(&self.seen_consumers).insert(queue, Instant::now());
        } else {
            lock(&self.seen_consumers).remove(&queue);
        }
        present
    }
}

/// RabbitMQ's 404 (a passive declare of a queue that does not exist).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Removes a call's waiter however the call ends.
struct ForgetOnDrop<'a> {
    pending: &'a Mutex<HashMap<String, oneshot::Sender<Delivery>>>,
    correlation: &'a str,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.correlation);
    }
}

fn decode_reply<Resp: Message + Default>(delivery: &Delivery) -> Result<Resp, CallError> {
    let malformed = |what: &str| CallError::Remote {
        code: "malformed_reply".into(),
        message: what.to_string(),
    };
    match wire::header_str(&delivery.properties, wire::STATUS) {
        Some(wire::status::OK) => {
            Resp::decode(delivery.data.as_slice()).map_err(|e| malformed(&e.to_string()))
        }
        Some(wire::status::ERROR) => {
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
