//! Accepting connections without letting clients hold the server hostage.
//!
//! hyper serves whatever connection it is handed for as long as the peer
//! keeps it open; a client that connects and sends nothing holds a file
//! descriptor for ever. Two thousand such connections took the api to its
//! descriptor limit, where `accept` fails at once, again and again: 100 %
//! CPU, new clients timed out, nothing logged (issue 22, case 6). So:
//!
//! - **a connection limit** ([`ConnectionLimits::max_connections`]): past it,
//!   a new connection is closed at once and a warning says so (at most every
//!   ten seconds), so the descriptors left stay for everything else;
//! - **a first-byte deadline** ([`ConnectionLimits::first_byte_timeout`]): a
//!   connection that has not sent its first bytes (the HTTP/2 preface, or a
//!   TLS ClientHello) in time is closed;
//! - **`accept` errors back off** (100 ms) instead of spinning, and are logged;
//! - at start-up, a warning when the limit comes near the process's
//!   descriptor limit (`RLIMIT_NOFILE`, read from `/proc/self/limits`), and
//!   the limit is lowered below it.
//!
//! HTTP/2 keepalive pings (set in [`crate::serve`]) close connections whose
//! peer has gone away; an idle peer that answers pings is a live client and
//! keeps its connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Descriptors kept free for everything that is not a client connection
/// (broker, database, metrics, logs, the runtime).
const RESERVED_DESCRIPTORS: u64 = 256;

/// How many connections a server keeps and how long a new one may stay
/// silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open client connections at most.
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes.
    pub first_byte_timeout: Duration,
    /// How long a connection is served before the server sends GOAWAY, so
    /// that its client connects again (`None`: for as long as it is open).
    pub max_connection_age: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            first_byte_timeout: Duration::from_secs(10),
            max_connection_age: None,
        }
    }
}

impl ConnectionLimits {
    /// The limit, lowered below the descriptor limit (with a warning) when it
    /// comes too close.
    pub(crate) fn within_descriptor_limit(mut self) -> Self {
        if let Some(soft) = descriptor_limit() {
            let room = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            if self.max_connections as u64 > room {
                tracing::warn!(
                    "grpc.max_connections ({}) would exhaust the descriptor limit ({soft}, ulimit -n); \
                     serving at most {room} connections. Raise the limit to serve more",
                    self.max_connections
                );
                self.max_connections = room as usize;
            }
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Accepted connections, within the limits, as tonic's `incoming` stream.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl futures_lite::Stream<Item = io::Result<LimitedStream>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let state = (listener, slots, None::<Instant>);
    futures_lite::stream::unfold(state, move |(listener, slots, mut warned)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: wait for descriptors to come back
                    // instead of spinning on an accept that fails at once.
                    if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("cannot accept gRPC connections: {error}; backing off");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        %peer,
                        "{} gRPC connections open (grpc.max_connections); closing new ones until some end",
                        limits.max_connections
                    );
                    warned = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stream = LimitedStream {
                inner: stream,
                _slot: permit,
                first_byte: Some(Box::pin(tokio::time::sleep(limits.first_byte_timeout))),
            };
            return Some((Ok(stream), (listener, slots, warned)));
        }
    })
}

/// A client connection holding one slot of the limit until it is closed.
#[derive(Debug)]
pub struct LimitedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first bytes arrive: when the connection is given up.
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.first_byte = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = self
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within grpc.first_byte_timeout_ms",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_read_from_proc() {
        // Every Linux process has one; the tests run on Linux.
        assert!(descriptor_limit().is_some_and(|limit| limit > 0));
    }

    #[test]
    fn the_connection_limit_stays_below_the_descriptor_limit() {
        let limits = ConnectionLimits {
            max_connections: usize::MAX / 2,
            ..ConnectionLimits::default()
        }
        .within_descriptor_limit();
        let soft = descriptor_limit().unwrap_or(u64::MAX);
        assert!((limits.max_connections as u64) < soft);
    }
}
