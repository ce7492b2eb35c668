//! Broker operations that are slow to be answered, named while they wait.
//!
//! A broker answers in milliseconds, except in a cluster with a member that
//! is unreachable but not yet declared down (after RabbitMQ's
//! `net_ticktime`), or on a channel whose frames a failing connection
//! caught. A service that waits there is connected, unready and, without
//! this, silent: a collector host that never consumed again after a
//! partition (CI, 2026-12-04) left no line saying what it waited for.

use std::time::Duration;

/// How long an operation waits before the service says so.
const SLOW_ANSWER: Duration = Duration::from_secs(5);

/// Why a channel or consumer operation can go unanswered, said with the
/// warning.
const CHANNEL_WAIT: &str =
    "the connection's heartbeats and `amqp.recovery_timeout_ms` decide whether the broker is gone";

/// Awaits `operation` on the broker; if it has no answer within
/// [`SLOW_ANSWER`], warns once, naming it (`what`) and saying `why` it may
/// wait, and says when it is answered at last. Unbounded on purpose: the
/// connection's heartbeats and `recovery_timeout_ms` decide when a broker
/// is gone, not this.
pub(crate) async fn reported<T>(
    what: impl Fn() -> String,
    why: &str,
    operation: impl Future<Output = T>,
) -> T {
    reported_within(SLOW_ANSWER, what, why, operation).await
}

/// A channel's or a consumer's operation (open, confirm select, prefetch,
/// consume), [`reported`] when slow.
pub(crate) async fn on_channel<T>(
    what: impl Fn() -> String,
    operation: impl Future<Output = T>,
) -> T {
    reported(what, CHANNEL_WAIT, operation).await
}

async fn reported_within<T>(
    limit: Duration,
    what: impl Fn() -> String,
    why: &str,
    operation: impl Future<Output = T>,
) -> T {
    tokio::pin!(operation);
    if let Ok(answer) = tokio::time::timeout(limit, &mut operation).await {
        return answer;
    }
    tracing::warn!(
        "{}: no answer from the broker after {limit:?}; still waiting ({why})",
        what()
    );
    let answer = operation.await;
    tracing::info!("{}: answered", what());
    answer
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchyard_testkit::Log;

    use super::reported_within;

    /// Runs `operation` under `reported_within(50 ms)`; its answer and the log.
    fn run(operation_takes: Duration) -> (u32, String) {
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let answer = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(reported_within(
                Duration::from_millis(50),
                || "declaring queue `q`".to_string(),
                "a reason",
                async {
                    tokio::time::sleep(operation_takes).await;
                    7
                },
            ))
        });
        (answer, log.text())
    }

    #[test]
    fn an_operation_the_broker_answers_late_is_named_while_it_waits() {
        let (answer, log) = run(Duration::from_millis(200));
        assert_eq!(answer, 7, "the late answer is still the answer");
        assert!(
            log.contains("WARN")
                && log.contains(
                    "declaring queue `q`: no answer from the broker after 50ms; still waiting (a reason)"
                ),
            "{log}"
        );
        assert!(log.contains("declaring queue `q`: answered"), "{log}");
    }

    #[test]
    fn an_operation_answered_in_time_says_nothing() {
        let (answer, log) = run(Duration::ZERO);
        assert_eq!(answer, 7);
        assert!(log.is_empty(), "{log}");
    }
}
