//! Connections to an echo service whose launcher runs workers in more than
//! one phase (a canary beside the main workers).
//!
//! The workers share one listening socket, so each new connection goes to
//! whichever worker takes it from the accept queue first. They come in
//! runs: in 50 rounds of 16 connections to a main worker and a canary, runs
//! of ten and more to one worker showed up three times, and one CI run
//! saw all 16 go to the canary, which left the main worker nothing to be
//! compared with. A test that needs every phase to serve some of its load
//! asks for it here instead of trusting a fixed number of connections to
//! spread.

use std::collections::BTreeMap;

use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use tonic::transport::Channel;

/// Connections opened at most before giving up on a phase.
const MAX_CONNECTIONS: usize = 256;

/// Opens at least `at_least` connections to `url`, and more until a worker
/// of each phase in `phases` has answered a call on one of them (at most
/// [`MAX_CONNECTIONS`]). Panics, with the phases that did answer, when a
/// connection or a call fails or a phase never answers.
pub async fn connections_reaching(
    url: &str,
    at_least: usize,
    phases: &[&str],
) -> Vec<EchoClient<Channel>> {
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut clients = Vec::new();
    while clients.len() < at_least || phases.iter().any(|phase| !answered.contains_key(*phase)) {
        assert!(
            clients.len() < MAX_CONNECTIONS,
            "{MAX_CONNECTIONS} connections to {url} were answered only by {answered:?}, not by every one of {phases:?}"
        );
        let mut client = EchoClient::connect(url.to_string())
            .await
            .unwrap_or_else(|error| panic!("connect to {url}: {error:?}"));
        let reply = client
            .say(SayRequest {
                text: "which phase".into(),
                wait_ms: 0,
            })
            .await
            .unwrap_or_else(|status| panic!("a first call to {url}: {status:?}"));
        *answered.entry(reply.into_inner().phase).or_default() += 1;
        clients.push(client);
    }
    clients
}
