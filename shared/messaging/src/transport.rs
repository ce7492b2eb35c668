//! The connection to RabbitMQ: one per process, recovered automatically.
//!
//! lapin's auto-recovery reconnects and replays declared topology and
//! consumers. What this adds: jittered exponential backoff (so a fleet does
//! not reconnect in lockstep), a connection name made of service and
//! instance, publisher confirms on every channel, and `is_connected` for
//! readiness. Publishers retry once after recovery (see `publish`).
//!
//! Failover across a cluster: lapin recovers to the node it was connected
//! to. When that node stays away longer than `amqp.recovery_timeout_ms`
//! the connection is declared lost, the service rebuilds its messaging, and
//! the new connection tries the next broker of `amqp.url` and
//! `amqp.failover_urls` first, then the others in turn ([`NEXT_BROKER`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use switchyard_config::SecretUrl;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{AmqpConfig, MessagingError, slow};

/// Which of the configured brokers a new connection tries first: the one
/// that last answered, or the one after a broker that was lost. Process-wide
/// because a lost transport is rebuilt from nothing by the service.
static NEXT_BROKER: AtomicUsize = AtomicUsize::new(0);

/// The broker connection of `<service>@<instance>` was lost for good.
#[derive(Debug, thiserror::Error)]
#[error("the broker connection `{0}` was lost")]
pub struct Lost(pub String);

/// A recovering connection to the broker. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    connection: Arc<Connection>,
    config: AmqpConfig,
    name: String,
    /// Cancelled when the connection, or a consumer on it, cannot come back:
    /// the service then rebuilds its messaging from scratch.
    lost: CancellationToken,
    /// Cancelled by [`Transport::close`]: a closed connection is not lost.
    closed: CancellationToken,
    /// How often the connection has failed or been re-established: every
    /// [`Transport::drops`] stream watches it ([`watch_drops`]).
    drops: watch::Receiver<u64>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("name", &self.name)
            .field("url", &self.config.url)
            .finish()
    }
}

impl Transport {
    /// Connects as `<service>@<instance>` to the first broker that answers,
    /// starting from `NEXT_BROKER`; each is given `amqp.connect_timeout_ms`.
    pub async fn connect(
        config: &AmqpConfig,
        service: &str,
        instance: &str,
    ) -> Result<Self, MessagingError> {
        let name = format!("{service}@{instance}");
        let brokers: Vec<&SecretUrl> = config.brokers().collect();
        let count = brokers.len();
        let first = NEXT_BROKER.load(Relaxed) % count;
        let mut earlier: Vec<MessagingError> = Vec::new();
        let mut index = first;
        loop {
            let failure = match connect_to(brokers[index], config, &name).await {
                Ok(connection) => {
                    NEXT_BROKER.store(index, Relaxed);
                    if count > 1 {
                        tracing::info!(
                            "connected to RabbitMQ at {} (broker {} of {count}; {} failed first)",
                            brokers[index],
                            index + 1,
                            earlier.len()
                        );
                    }
                    let closed = CancellationToken::new();
                    let transport = Self {
                        drops: watch_drops(&connection, closed.clone()),
                        connection: Arc::new(connection),
                        config: config.clone(),
                        name,
                        lost: CancellationToken::new(),
                        closed,
                    };
                    transport.watch_recovery(
                        Duration::from_millis(config.recovery_timeout_ms),
                        (index + 1) % count,
                    );
                    return Ok(transport);
                }
                Err(failure) => failure,
            };
            index = (index + 1) % count;
            if index == first && earlier.is_empty() {
                return Err(failure);
            }
            if index == first {
                return Err(MessagingError::NoBroker {
                    tried: count,
                    others: earlier
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    last: Box::new(failure),
                });
            }
            tracing::warn!("{failure}; trying the next broker");
            earlier.push(failure);
        }
    }

    /// Declares the connection lost when it stays down longer than `limit`
    /// (lapin's own recovery sometimes gives up, e.g. after a broker restart);
    /// the rebuilt connection then tries broker `next` first.
    fn watch_recovery(&self, limit: Duration, next: usize) {
        let (connection, lost, closed) = (
            Arc::clone(&self.connection),
            self.lost.clone(),
            self.closed.clone(),
        );
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut down_since: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = lost.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if connection.status().connected() {
                    down_since = None;
                    continue;
                }
                let since = *down_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= limit {
                    NEXT_BROKER.store(next, Relaxed);
                    tracing::error!(
                        "the broker connection `{name}` did not come back within {limit:?}; rebuilding messaging"
                    );
                    lost.cancel();
                    return;
                }
            }
        });
    }

    /// One item each time the connection fails or lapin re-establishes it
    /// (lapin reports a broker-closed connection it recovers only as
    /// `Connected`): what lived on the old channels, direct replies
    /// included, is gone. Every stream made here sees every drop that
    /// happens after it was made; drops that come faster than a stream is
    /// read are told as one.
    pub fn drops(&self) -> impl futures_lite::Stream<Item = ()> + Send + 'static {
        let mut drops = self.drops.clone();
        drops.borrow_and_update();
        futures_lite::stream::unfold(drops, |mut drops| async move {
            drops.changed().await.ok()?;
            Some(((), drops))
        })
    }

    /// A publish on this connection waited `waited` for its confirm. Unless
    /// the broker is blocking publishers (a resource alarm, where waiting is
    /// right), the connection is down (the recovery watch decides then) or
    /// closing, its channels are taken for stuck: the transport is declared
    /// lost and the service rebuilds its messaging.
    pub(crate) fn confirm_stalled(&self, waited: Duration) {
        let status = self.connection.status();
        if self.closed.is_cancelled()
            || self.lost.is_cancelled()
            || status.blocked()
            || !status.connected()
        {
            return;
        }
        tracing::error!(
            "a publish on `{}` had no confirm from the broker after {waited:?} while the connection was up; \
             rebuilding messaging on fresh channels",
            self.name
        );
        self.lost.cancel();
    }

    /// Cancelled when the connection (or a consumer on it) cannot come back.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Cancelled when the connection is closed on purpose.
    pub(crate) fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// A token for one run of a service's messaging: cancelled on `shutdown`
    /// and when this connection is lost.
    pub fn attempt(&self, shutdown: &CancellationToken) -> CancellationToken {
        let attempt = shutdown.child_token();
        let (lost, closed, linked) = (self.lost.clone(), self.closed.clone(), attempt.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => linked.cancel(),
                _ = closed.cancelled() => {}
                _ = linked.cancelled() => {}
            }
        });
        attempt
    }

    /// A new channel with publisher confirms enabled.
    pub async fn channel(&self) -> Result<Channel, MessagingError> {
        let name = &self.name;
        let channel = slow::on_channel(
            || format!("opening a channel on `{name}`"),
            self.connection.create_channel(),
        )
        .await
        .map_err(MessagingError::broker("opening a channel"))?;
        slow::on_channel(
            || format!("enabling publisher confirms on `{name}`"),
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(MessagingError::broker("enabling publisher confirms"))?;
        Ok(channel)
    }

    /// A new channel (publisher confirms enabled) on which the broker
    /// delivers at most `prefetch` unacknowledged messages, 1 to 65,535.
    pub(crate) async fn consuming_channel(
        &self,
        prefetch: usize,
    ) -> Result<Channel, MessagingError> {
        let channel = self.channel().await?;
        let prefetch = prefetch.clamp(1, u16::MAX as usize) as u16;
        slow::on_channel(
            || format!("setting prefetch {prefetch} on `{}`", self.name),
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await
        .map_err(MessagingError::broker("setting prefetch"))?;
        Ok(channel)
    }

    /// `false` while the connection is down (readiness).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// [`Transport::is_connected`] as a readiness probe.
    pub fn readiness_probe(&self) -> impl Fn() -> std::future::Ready<bool> + Send + 'static {
        let transport = self.clone();
        move || std::future::ready(transport.is_connected())
    }

    /// The settings it was made with.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// `<service>@<instance>`: the connection name RabbitMQ shows.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection at the end of one run of a service's messaging.
    /// `Err` when the connection had been lost for good (and the run did not
    /// end for `shutdown`): the service should rebuild its messaging.
    pub async fn finish(&self, shutdown: &CancellationToken) -> Result<(), Lost> {
        let lost = self.lost.is_cancelled();
        if lost && !shutdown.is_cancelled() {
            // The rebuild will declare this instance's exclusive queue on a
            // new connection: this one must be gone first (see `close_within`).
            // With failover addresses the rebuild goes to another node, where
            // a node that is down holds no queue of this connection; closing
            // it, should its node come back, goes on in the background.
            let wait = if self.config.failover_urls.is_empty() {
                LOST_CLOSE_WAIT
            } else {
                Duration::from_secs(2)
            };
            self.close_within(wait).await;
            return Err(Lost(self.name.clone()));
        }
        self.close().await;
        Ok(())
    }

    /// Closes the connection (waiting at most two seconds for one that is
    /// reconnecting; see [`Transport::close_within`]).
    pub async fn close(&self) {
        self.close_within(Duration::from_secs(2)).await;
    }

    /// Closes the connection, waiting at most `limit`.
    ///
    /// lapin refuses to close a connection it is still recovering, and its
    /// recovery, once it succeeds, declares the connection's queues and
    /// consumers again. A connection given up for lost but left to recover
    /// would come back holding this instance's exclusive queue
    /// (RESOURCE_LOCKED for the rebuilt one) and a consumer nobody reads. So
    /// a task closes it the moment it reconnects (or lets it be once lapin
    /// gives up), however long that takes; this waits for that up to `limit`.
    pub async fn close_within(&self, limit: Duration) {
        self.closed.cancel();
        let connection = Arc::clone(&self.connection);
        let name = self.name.clone();
        let closing = tokio::spawn(async move {
            let mut waited = false;
            loop {
                let status = connection.status();
                if status.connected() {
                    if waited {
                        tracing::info!(
                            "the broker connection `{name}` came back while it waited to be closed; closing it"
                        );
                    }
                    let _ = connection.close(200, "shutting down".into()).await;
                    return;
                }
                if status.closed() || status.closing() || status.errored() {
                    return;
                }
                waited = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let _ = tokio::time::timeout(limit, closing).await;
    }
}

/// How long a run whose connection was lost waits for lapin to bring the
/// connection back so that it can be closed, before the rebuild starts
/// (the closing goes on in the background after that).
const LOST_CLOSE_WAIT: Duration = Duration::from_secs(30);

/// How long a refused broker port waits before it is tried again, within
/// `amqp.connect_timeout_ms` (lapin's shortest backoff).
const PROBE_AGAIN: Duration = Duration::from_millis(100);

/// Counts the connection's failures and re-establishments for every
/// [`Transport::drops`] stream, until the connection is closed or no
/// transport is left to ask.
///
/// lapin's events go through one multi-consumer channel, not a broadcast:
/// each event reaches only one of the listeners made with
/// `events_listener`. So the transport listens once. (Each `RpcClient`
/// listened for itself before; with two on one connection, the api's own
/// and its heartbeat's, a drop woke the calls of one only, and a call of
/// the other waited out its timeout for a reply the broker had dropped.)
fn watch_drops(connection: &Connection, closed: CancellationToken) -> watch::Receiver<u64> {
    use futures_lite::StreamExt;
    let (count, drops) = watch::channel(0);
    let events = connection.events_listener();
    tokio::spawn(async move {
        tokio::pin!(events);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(_) | lapin::Event::Connected) => {
                        count.send_modify(|drops| *drops += 1);
                    }
                    Some(_) => {}
                    None => return,
                },
                () = closed.cancelled() => return,
                () = count.closed() => return,
            }
        }
    });
    drops
}

/// One connection attempt to `url`, bounded by `amqp.connect_timeout_ms`.
async fn connect_to(
    url: &SecretUrl,
    config: &AmqpConfig,
    name: &str,
) -> Result<Connection, MessagingError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.to_string().into())
        .enable_auto_recover()
        .configure_backoff(|backoff| {
            backoff
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(usize::MAX)
        });
    let address = with_heartbeat(url.expose(), config.heartbeat_s);
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let started = std::time::Instant::now();
    // Reach the broker's port before lapin does, retrying a refused
    // connection until the timeout as lapin would: lapin's own retries go
    // on in an I/O thread after the timeout drops its future, and that
    // thread panicked when the runtime stopped (a service that could not
    // reach its broker at start-up printed a panic).
    if let Ok(uri) = address.parse::<lapin::uri::AMQPUri>() {
        let (host, port) = (uri.authority.host, uri.authority.port);
        let deadline = tokio::time::Instant::from_std(started + timeout);
        loop {
            let reached = tokio::time::timeout_at(
                deadline,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await;
            match reached {
                Ok(Ok(_reached)) => break,
                Ok(Err(source)) if tokio::time::Instant::now() + PROBE_AGAIN >= deadline => {
                    return Err(MessagingError::Unreachable {
                        url: url.to_string(),
                        source,
                    });
                }
                Ok(Err(_refused)) => tokio::time::sleep(PROBE_AGAIN).await,
                Err(_elapsed) => {
                    return Err(MessagingError::ConnectTimeout {
                        url: url.to_string(),
                        waited: timeout,
                    });
                }
            }
        }
    }
    let connecting = async {
        if config.tls_ca_file.is_empty() {
            return Connection::connect(&address, properties).await;
        }
        let ca = std::fs::read_to_string(&config.tls_ca_file).map_err(|error| {
            lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(error)))
        })?;
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(ca),
        };
        Connection::connect_with_config(
            &address,
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        )
        .await
    };
    tokio::time::timeout(timeout.saturating_sub(started.elapsed()), connecting)
        .await
        .map_err(|_elapsed| MessagingError::ConnectTimeout {
            url: url.to_string(),
            waited: timeout,
        })?
        .map_err(|source| MessagingError::Connect {
            url: url.to_string(),
            source,
        })
}

/// The URL with `heartbeat=<n>` added unless it already sets one.
fn with_heartbeat(url: &str, heartbeat_s: u16) -> String {
    if url.contains("heartbeat=") {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={heartbeat_s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_once() {
        assert_eq!(
            with_heartbeat("amqp://h/%2f", 30),
            "amqp://h/%2f?heartbeat=30"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?x=1", 5),
            "amqp://h/%2f?x=1&heartbeat=5"
        );
        assert_eq!(
            with_heartbeat("amqp://h/?heartbeat=9", 5),
            "amqp://h/?heartbeat=9"
        );
    }
}
