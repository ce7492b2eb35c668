//! Errors at the messaging boundary: what a caller can tell apart.

use std::time::Duration;

use thiserror::Error;

/// The transport failed: connecting, declaring, publishing or consuming.
#[derive(Debug, Error)]
pub enum MessagingError {
    /// Could not reach the broker (the URL's password is never included).
    #[error("cannot connect to RabbitMQ at {url}")]
    Connect {
        /// The URL with its password redacted.
        url: String,
        /// Why: lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// Nothing accepts connections at the broker's address (refused, no
    /// route, a name that does not resolve).
    #[error("cannot connect to RabbitMQ at {url}: nothing accepts connections there")]
    Unreachable {
        /// The URL with its password redacted.
        url: String,
        /// Why: the TCP connect's error.
        #[source]
        source: std::io::Error,
    },
    /// The broker did not answer the connection in time.
    #[error("cannot connect to RabbitMQ at {url}: no answer within {waited:?}")]
    ConnectTimeout {
        /// The URL with its password redacted.
        url: String,
        /// How long it waited (`amqp.connect_timeout_ms`).
        waited: std::time::Duration,
    },
    /// None of the brokers (`amqp.url`, then `amqp.failover_urls`) could
    /// be reached; the last one's failure is the source.
    #[error("cannot connect to any of {tried} RabbitMQ brokers (the others: {others})")]
    NoBroker {
        /// How many were tried.
        tried: usize,
        /// The failures before the last, one line each, passwords redacted.
        others: String,
        /// The last broker's failure.
        #[source]
        last: Box<MessagingError>,
    },
    /// A broker operation failed.
    #[error("{operation} failed: {source}")]
    Broker {
        /// What was being done.
        operation: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The broker refused a publish (nack).
    #[error("the broker refused the message published to {destination}")]
    Refused {
        /// Exchange and routing key.
        destination: String,
    },
    /// The connection was lost and did not come back in time.
    #[error("the broker connection is down; gave up publishing to {destination} after {waited:?}")]
    Unavailable {
        /// Exchange and routing key.
        destination: String,
        /// How long the publish waited for recovery.
        waited: Duration,
    },
    /// The broker (or lapin, for a connection that died under it) never
    /// answered an operation that waits for nothing but the answer.
    #[error("{operation}: no answer within {waited:?}")]
    Unanswered {
        /// What was being done.
        operation: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The message could not be routed to any queue.
    #[error("no queue is bound for {destination}")]
    Unroutable {
        /// Exchange and routing key.
        destination: String,
    },
    /// A queue whose declaration the broker refused a moment ago is not
    /// declared again yet (a retry queue whose home node is down).
    #[error(
        "the broker refused to declare {queue} {ago:?} ago; it is tried again {:?} after that",
        crate::leases::REFUSED_FOR
    )]
    RecentlyRefused {
        /// The queue.
        queue: String,
        /// How long ago.
        ago: Duration,
    },
    /// An endpoint the messaging registers itself cannot run in the phase.
    #[error(transparent)]
    Phase(#[from] switchyard_executor::PhaseMismatch),
}

impl MessagingError {
    pub(crate) fn broker(operation: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let operation = operation.into();
        move |source| MessagingError::Broker { operation, source }
    }
}

/// Why an RPC call (or cast) failed, as the caller sees it.
#[derive(Debug, Error)]
pub enum CallError {
    /// The server has no endpoint by that name.
    #[error("{message} (the server serves: {})", served.join(", "))]
    NoSuchMethod {
        /// The server's words.
        message: String,
        /// The methods the server serves on that topic.
        served: Vec<String>,
    },
    /// The server refused the request as malformed or invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The endpoint failed.
    #[error("remote error {code}: {message}")]
    Remote {
        /// A short machine-readable code (`not_found`, `overloaded`, …).
        code: String,
        /// What happened.
        message: String,
    },
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Nobody consumes the target: the call failed without waiting.
    #[error("no consumers for {target}")]
    NoConsumers {
        /// The target.
        target: String,
    },
    /// The connection the reply would have come back on was lost while
    /// the call waited: the reply can never arrive. The server may or may
    /// not have run the call.
    #[error("the broker connection was lost while waiting for the reply (the call may have run)")]
    ReplyLost,
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] MessagingError),
}

/// What an endpoint body returns on failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EndpointError {
    /// The request is invalid; retrying cannot help. Calls get
    /// `InvalidArgument`; casts and notifications are dead-lettered.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A permanent failure with a code. Calls get `Remote`; casts and
    /// notifications are dead-lettered.
    #[error("{code}: {message}")]
    Remote {
        /// A short machine-readable code.
        code: String,
        /// What happened.
        message: String,
    },
    /// A failure that may pass (database down). Casts and notifications are
    /// delivered again, with backoff, up to `amqp.max_deliveries`; calls get
    /// `Remote` with code `transient`.
    #[error("transient: {0}")]
    Transient(String),
    /// Something the endpoint depends on is down (database, webhook
    /// receiver). Unlike `Transient`, the message is not at fault: it is
    /// delivered again with capped backoff for as long as it takes and never
    /// dead-lettered for this. Calls get `Remote` with code `unavailable`.
    #[error("unavailable: {0}")]
    Unavailable(String),
}
