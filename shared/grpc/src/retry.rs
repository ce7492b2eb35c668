//! Transparent retry of calls that never left the client.
//!
//! A server that drains (a launcher replacing a worker, a rolling deploy)
//! sends GOAWAY and closes its connections once their calls finished. Two
//! kinds of call fail on the client in that moment without the server
//! having seen them: one queued on the connection just before it closed
//! (hyper drops it unsent: "canceled"), and one on a stream above the
//! GOAWAY's last stream id (HTTP/2 says such streams were not processed,
//! RFC 9113 §6.8). gRPC's transparent retry (gRFC A6) retries exactly these
//! — safe whatever the method does. Tonic does not, so callers wrap calls in
//! [`retry_unsent`].

use std::future::Future;

use tonic::Status;

/// How many times a call that never left is tried again.
const MAX_RETRIES: usize = 3;

/// `true` when the server never saw the call: hyper dropped it unsent from
/// a closing connection, or the server's GOAWAY refused its stream.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote();
        }
        source = error.source();
    }
    false
}

/// Runs `call`, again (up to three more times) while it fails without having
/// been sent. `call` builds a fresh request each time.
pub async fn retry_unsent<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Err(status) if retries < MAX_RETRIES && never_sent(&status) => {
                retries += 1;
                tracing::debug!(
                    "call dropped unsent by a closing connection; retrying ({retries})"
                );
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_calls_that_never_left_are_retried() {
        let mut calls = 0;
        let outcome: Result<(), Status> = retry_unsent(|| {
            calls += 1;
            async { Err(Status::unavailable("the server said no")) }
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(calls, 1, "a status from the server is final");
        assert!(!never_sent(&Status::cancelled("by the caller")));
    }
}
