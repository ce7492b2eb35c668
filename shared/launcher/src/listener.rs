//! One listening gRPC socket for every worker.
//!
//! Workers used to share the gRPC port with `SO_REUSEPORT`. That gives each
//! worker a listening socket, and an accept queue, of its own: the kernel
//! hashes every new connection to one of them. A worker that drains closes
//! its socket, and Linux resets every connection still waiting in that
//! socket's queue and every handshake under way towards it (the sysctl
//! `net.ipv4.tcp_migrate_req` would hand them to the others, but it is off
//! by default). Measured: clients opening a fresh connection per call lost
//! 4 to 38 of 740 to 1,185 calls over six phase switches, and long-lived
//! connections lost one now and then, when they reconnected just as the
//! next worker drained (the echo service's launcher tests).
//!
//! So the supervisor binds the port once and every worker inherits the
//! socket as its standard input, the way inetd and systemd
//! (`StandardInput=socket`) hand a socket over. There is one accept queue,
//! held open by the supervisor for as long as it runs; a draining worker
//! just stops taking connections from it, and the others take them.
//!
//! A worker takes the inherited socket only when [`LISTENER_VARIABLE`]
//! names the address it is configured to serve and its standard input is a
//! socket bound there. Otherwise (a worker started by hand, or the
//! supervisor could not bind a new address a reload named) it binds the
//! port itself, with `SO_REUSEPORT`, as before. A reload that moves
//! `grpc.listen` moves the shared socket: workers started after it serve
//! the new address, and the old socket closes with the last old worker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use crate::WORKER_VARIABLE;

/// Set by the supervisor in each worker's environment: the address of the
/// listening socket the worker's standard input is.
pub const LISTENER_VARIABLE: &str = "SWITCHYARD_LISTENER";

/// The supervisor's socket for its workers, and the address it is bound to
/// (the port a configured port 0 was given).
#[derive(Debug)]
pub(crate) struct Shared {
    pub listener: std::net::TcpListener,
    pub address: SocketAddr,
}

impl Shared {
    /// Binds `address` for the workers to share, as a worker would.
    pub fn bind(address: SocketAddr) -> io::Result<Self> {
        let listener = switchyard_telemetry::exposition::listen(address)?.into_std()?;
        let address = listener.local_addr()?;
        Ok(Self { listener, address })
    }
}

/// In a worker: the listening socket the supervisor handed over for
/// `address`, if it did (see the module's documentation); non-blocking,
/// ready for `tokio::net::TcpListener::from_std`.
pub fn inherited_listener(address: SocketAddr) -> Option<std::net::TcpListener> {
    std::env::var_os(WORKER_VARIABLE)?;
    let named: SocketAddr = std::env::var(LISTENER_VARIABLE).ok()?.parse().ok()?;
    if !serves(named, address) {
        return None;
    }
    let taken = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .and_then(|listener| {
            let local = listener.local_addr()?;
            if local != named {
                return Err(io::Error::other(format!("it is bound to {local}")));
            }
            listener.set_nonblocking(true)?;
            Ok(listener)
        });
    match taken {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(
                "the supervisor's socket for {named} is not this worker's standard input ({error}); binding the port itself"
            );
            None
        }
    }
}

/// Whether a socket bound to `named` serves the configured `address`
/// (port 0: whichever port the supervisor was given).
pub(crate) fn serves(named: SocketAddr, address: SocketAddr) -> bool {
    named == address || (address.port() == 0 && named.ip() == address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_serves_its_own_address_or_a_port_zero_of_the_same_host() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("address");
        assert!(serves(at("127.0.0.1:50051"), at("127.0.0.1:50051")));
        assert!(serves(at("127.0.0.1:41234"), at("127.0.0.1:0")));
        assert!(!serves(at("127.0.0.1:50051"), at("127.0.0.1:50052")));
        assert!(!serves(at("127.0.0.1:50051"), at("0.0.0.0:50051")));
    }
}
