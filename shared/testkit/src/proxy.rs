//! A TCP proxy on loopback in front of a server: a broker "node" that can
//! die and come back on the same address.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Forwards every connection on its loopback port to a target.
/// [`Proxy::cut`] closes the port and every connection through it at once,
/// as a node that died would; [`Proxy::restore`] listens on the same port
/// again.
#[derive(Debug)]
pub struct Proxy {
    /// Where it listens.
    pub port: u16,
    target: SocketAddr,
    /// Cancelled by [`Proxy::cut`]: the listener and every connection of
    /// the current run end.
    run: Mutex<CancellationToken>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let run = CancellationToken::new();
        tokio::spawn(forward(listener, target, run.clone()));
        Self {
            port,
            target,
            run: Mutex::new(run),
        }
    }

    /// Closes the port and drops every connection through it.
    pub fn cut(&self) {
        self.current().cancel();
    }

    /// Listens on the same port again after [`Proxy::cut`]; waits up to 5 s
    /// for the port to be free.
    pub async fn restore(&self) {
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "port {} not free again: {error}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let run = CancellationToken::new();
        tokio::spawn(forward(listener, self.target, run.clone()));
        *self.run.lock().unwrap_or_else(|e| e.into_inner()) = run;
    }

    fn current(&self) -> CancellationToken {
        self.run.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.current().cancel();
    }
}

/// Accepts on `listener` until `run` is cancelled, forwarding each
/// connection to `target` until then.
async fn forward(listener: TcpListener, target: SocketAddr, run: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = run.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let run = run.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = run.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
