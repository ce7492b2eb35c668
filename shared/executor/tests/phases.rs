//! The executor's promises, checked in every phase that can keep them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use switchyard_executor::{
    DispatchError, DispatchOptions, Endpoint, EndpointKind, Executor, ExecutorConfig, Phase,
};
use tokio::sync::{mpsc, oneshot};

const BOUND: Duration = Duration::from_secs(10);

fn executor(phase: Phase, capacity: usize) -> Executor {
    let config = ExecutorConfig {
        phase,
        pool_size: capacity,
        max_in_flight: capacity,
        ..ExecutorConfig::default()
    };
    Executor::new("test", config).expect("executor starts")
}

/// Tracks how many bodies run at once and the most ever seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

async fn run_100_jobs_on_8(phase: Phase, kind: EndpointKind) -> usize {
    let executor = executor(phase, 8);
    let seen = Arc::new(Concurrency::default());
    let endpoint = match kind {
        EndpointKind::Blocking => {
            let seen = Arc::clone(&seen);
            executor.register(Endpoint::blocking("work", move |_, ()| {
                seen.enter();
                std::thread::sleep(Duration::from_millis(50));
                seen.leave();
            }))
        }
        EndpointKind::Async => {
            let seen = Arc::clone(&seen);
            executor.register(Endpoint::from_async("work", move |_, ()| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.enter();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    seen.leave();
                }
            }))
        }
        EndpointKind::Both => {
            let (blocking, seen) = (Arc::clone(&seen), Arc::clone(&seen));
            executor.register(Endpoint::both(
                "work",
                move |_, ()| {
                    blocking.enter();
                    std::thread::sleep(Duration::from_millis(50));
                    blocking.leave();
                },
                move |_, ()| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.enter();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        seen.leave();
                    }
                },
            ))
        }
    }
    .expect("phase runs the endpoint");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let endpoint = endpoint.clone();
        calls.spawn(async move { endpoint.dispatch((), DispatchOptions::default()).await });
    }
    while let Some(result) = calls.join_next().await {
        result.expect("join").expect("dispatch succeeds");
    }
    let snapshot = executor.snapshot();
    assert_eq!(snapshot.totals.completed, 100);
    assert_eq!(snapshot.totals.failed, 0);
    seen.most.load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threaded_pool_never_runs_more_than_its_size() {
    let most = run_100_jobs_on_8(Phase::Threaded, EndpointKind::Blocking).await;
    assert!(
        most <= 8,
        "saw {most} blocking bodies at once on a pool of 8"
    );
    assert!(most >= 2, "the pool ran bodies concurrently (saw {most})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_pool_never_runs_more_than_its_size() {
    let most = run_100_jobs_on_8(Phase::Bridged, EndpointKind::Async).await;
    assert!(most <= 8, "saw {most} async bodies at once on a pool of 8");
    assert!(most >= 2, "the pool ran bodies concurrently (saw {most})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_phase_never_exceeds_max_in_flight() {
    let most = run_100_jobs_on_8(Phase::Async, EndpointKind::Async).await;
    assert!(most <= 8, "saw {most} tasks at once with max_in_flight 8");
    assert!(most >= 2, "tasks ran concurrently (saw {most})");
    let offloaded = run_100_jobs_on_8(Phase::Async, EndpointKind::Blocking).await;
    assert!(
        offloaded <= 8,
        "saw {offloaded} offloaded bodies at once with max_in_flight 8"
    );
    for phase in Phase::ALL {
        let most = run_100_jobs_on_8(phase, EndpointKind::Both).await;
        assert!(
            most <= 8,
            "{phase}: saw {most} bodies of both forms at once"
        );
    }
}

/// A blocking endpoint that reports when it starts and then waits for its gate.
fn gated(
    executor: &Executor,
) -> (
    switchyard_executor::BoundEndpoint<oneshot::Receiver<()>, ()>,
    mpsc::UnboundedReceiver<()>,
) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let endpoint = executor
        .register(Endpoint::blocking(
            "gated",
            move |_, gate: oneshot::Receiver<()>| {
                let _ = started_tx.send(());
                let _ = gate.blocking_recv();
            },
        ))
        .expect("every phase runs blocking endpoints unless strict");
    (endpoint, started)
}

type Job = tokio::task::JoinHandle<Result<(), DispatchError>>;

/// Starts a job on a [`gated`] endpoint and waits until it runs; the gate
/// lets it finish.
async fn start_one_gated(
    endpoint: &switchyard_executor::BoundEndpoint<oneshot::Receiver<()>, ()>,
    started: &mut mpsc::UnboundedReceiver<()>,
) -> (oneshot::Sender<()>, Job) {
    let (gate, wait) = oneshot::channel();
    let endpoint = endpoint.clone();
    let job =
        tokio::spawn(async move { endpoint.dispatch(wait, DispatchOptions::default()).await });
    tokio::time::timeout(BOUND, started.recv())
        .await
        .expect("job started");
    (gate, job)
}

/// Starts `count` jobs on a [`gated`] endpoint, one after another, each
/// running before the next starts.
async fn start_gated(
    endpoint: &switchyard_executor::BoundEndpoint<oneshot::Receiver<()>, ()>,
    started: &mut mpsc::UnboundedReceiver<()>,
    count: usize,
) -> (Vec<oneshot::Sender<()>>, Vec<Job>) {
    let mut gates = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..count {
        let (gate, job) = start_one_gated(endpoint, started).await;
        gates.push(gate);
        jobs.push(job);
    }
    (gates, jobs)
}

async fn back_pressure_holds(phase: Phase) {
    let executor = executor(phase, 2);
    let (endpoint, mut started) = gated(&executor);
    let (mut gates, running) = start_gated(&endpoint, &mut started, 2).await;

    // Full: a caller with a wait budget is told so instead of queueing forever.
    let (_never, wait) = oneshot::channel();
    let refused = endpoint
        .dispatch(
            wait,
            DispatchOptions {
                wait_budget: Some(Duration::from_millis(50)),
                ..DispatchOptions::default()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(DispatchError::Overloaded { .. })),
        "{phase}: expected Overloaded, got {refused:?}"
    );

    // A caller without a budget waits, and is counted as queued meanwhile.
    let (third_gate, wait) = oneshot::channel();
    let third = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.dispatch(wait, DispatchOptions::default()).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(100), started.recv())
            .await
            .is_err(),
        "{phase}: a third job started while both slots were busy"
    );
    assert_eq!(
        executor.snapshot().totals.queued,
        1,
        "{phase}: the waiting caller is queued"
    );

    // Freeing one slot lets it in.
    gates.remove(0).send(()).expect("gate");
    tokio::time::timeout(BOUND, started.recv())
        .await
        .expect("third job started after a slot freed");
    third_gate.send(()).expect("gate");
    gates.remove(0).send(()).expect("gate");
    for job in running.into_iter().chain([third]) {
        job.await.expect("join").expect("job succeeds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_executor_makes_dispatch_wait_in_every_phase() {
    for phase in Phase::ALL {
        back_pressure_holds(phase).await;
    }
}

async fn panics_are_contained(phase: Phase) {
    let executor = executor(phase, 2);
    let kind_for_phase = if phase == Phase::Threaded {
        EndpointKind::Blocking
    } else {
        EndpointKind::Async
    };
    let boom = match kind_for_phase {
        EndpointKind::Blocking => executor.register(Endpoint::blocking("boom", |_, ()| -> () {
            panic!("kaboom")
        })),
        _ => executor.register(Endpoint::from_async("boom", |_, ()| async {
            panic!("kaboom")
        })),
    }
    .expect("registered");
    for _ in 0..5 {
        let result = boom.dispatch((), DispatchOptions::default()).await;
        match result {
            Err(DispatchError::Panicked { endpoint, message }) => {
                assert_eq!(endpoint, "boom");
                assert_eq!(message, "kaboom");
            }
            other => panic!("{phase}: expected Panicked, got {other:?}"),
        }
    }
    // Both workers are still there: two bodies that wait for each other finish.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let meet = executor
        .register(Endpoint::blocking("meet", move |_, ()| {
            barrier.wait();
        }))
        .expect("registered");
    let (a, b) = tokio::join!(
        tokio::time::timeout(BOUND, meet.dispatch((), DispatchOptions::default())),
        tokio::time::timeout(BOUND, meet.dispatch((), DispatchOptions::default())),
    );
    a.expect("first met in time").expect("ok");
    b.expect("second met in time").expect("ok");
    let boom_stats = executor
        .snapshot()
        .endpoint("boom")
        .expect("registered")
        .counts;
    assert_eq!(
        (boom_stats.panicked, boom_stats.failed, boom_stats.in_flight),
        (5, 5, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_endpoint_fails_only_its_request() {
    for phase in Phase::ALL {
        panics_are_contained(phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_endpoint_past_its_deadline_is_cancelled() {
    for phase in [Phase::Bridged, Phase::Async] {
        let executor = executor(phase, 2);
        let finished = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&finished);
        let slow = executor
            .register(Endpoint::from_async("slow", move |_, ()| {
                let counter = Arc::clone(&counter);
                async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    counter.fetch_add(1, SeqCst);
                }
            }))
            .expect("registered");
        let started = Instant::now();
        let result = slow
            .dispatch((), DispatchOptions::with_timeout(Duration::from_millis(50)))
            .await;
        assert!(
            matches!(result, Err(DispatchError::DeadlineExceeded { .. })),
            "{phase}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{phase}: cancelled promptly"
        );
        assert_eq!(finished.load(SeqCst), 0);
        let counts = executor
            .snapshot()
            .endpoint("slow")
            .expect("registered")
            .counts;
        assert_eq!(
            (counts.expired, counts.failed, counts.in_flight),
            (1, 1, 0),
            "{phase}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_endpoint_past_its_deadline_is_reported_overdue() {
    for phase in Phase::ALL {
        let executor = executor(phase, 2);
        let slow = executor
            .register(Endpoint::blocking(
                "slow",
                |_, ()| -> Result<&'static str, ()> {
                    std::thread::sleep(Duration::from_millis(100));
                    Ok("done")
                },
            ))
            .expect("registered");
        let result = slow
            .dispatch((), DispatchOptions::with_timeout(Duration::from_millis(20)))
            .await;
        assert_eq!(
            result,
            Ok(Ok::<_, ()>("done")),
            "{phase}: a started blocking body is not cancelled"
        );
        let counts = executor
            .snapshot()
            .endpoint("slow")
            .expect("registered")
            .counts;
        assert_eq!((counts.overdue, counts.failed), (1, 0), "{phase}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_whose_deadline_passes_in_the_queue_never_runs() {
    for phase in Phase::ALL {
        let executor = executor(phase, 1);
        let (endpoint, mut started) = gated(&executor);
        let (gate, first) = start_one_gated(&endpoint, &mut started).await;
        let (_unused, wait) = oneshot::channel();
        let late = endpoint
            .dispatch(
                wait,
                DispatchOptions::with_timeout(Duration::from_millis(30)),
            )
            .await;
        assert!(
            matches!(late, Err(DispatchError::DeadlineExceeded { .. })),
            "{phase}: {late:?}"
        );
        gate.send(()).expect("gate");
        first.await.expect("join").expect("first ok");
        assert!(
            started.try_recv().is_err(),
            "{phase}: the expired request never started"
        );
        assert_eq!(
            executor
                .snapshot()
                .endpoint("gated")
                .expect("registered")
                .counts
                .expired,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_work_and_refuses_new_work() {
    for phase in Phase::ALL {
        let executor = executor(phase, 4);
        let (endpoint, mut started) = gated(&executor);
        let (gates, jobs) = start_gated(&endpoint, &mut started, 3).await;
        let shutdown = {
            let executor = executor.clone();
            tokio::spawn(async move { executor.shutdown(Duration::from_secs(10)).await })
        };
        let bound = Instant::now() + BOUND;
        while !executor.is_closing() {
            assert!(Instant::now() < bound, "{phase}: shutdown never began");
            tokio::task::yield_now().await;
        }
        // New work is refused once shutdown has begun, though a slot is free.
        let (_gate, wait) = oneshot::channel();
        let refused = endpoint.dispatch(wait, DispatchOptions::default()).await;
        assert_eq!(refused, Err(DispatchError::ShuttingDown), "{phase}");
        for gate in gates {
            gate.send(()).expect("gate");
        }
        let report = tokio::time::timeout(BOUND, shutdown)
            .await
            .expect("drained in time")
            .expect("join");
        assert!(report.is_clean(), "{phase}: {report:?}");
        for job in jobs {
            job.await.expect("join").expect("in-flight work finished");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_work_that_outlives_the_grace_period() {
    for phase in Phase::ALL {
        let executor = executor(phase, 2);
        let (endpoint, mut started) = gated(&executor);
        let (gates, jobs) = start_gated(&endpoint, &mut started, 1).await;
        let report = executor.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.abandoned.len(), 1, "{phase}: {report:?}");
        assert_eq!(report.abandoned[0].endpoint, "gated");
        assert!(report.abandoned[0].running_for >= Duration::from_millis(50));
        for gate in gates {
            gate.send(()).expect("gate");
        }
        for job in jobs {
            let _ = job.await;
        }
    }
}

#[test]
fn async_endpoint_is_refused_by_threaded_phase() {
    let executor = executor(Phase::Threaded, 1);
    let error = executor
        .register(Endpoint::from_async("record_samples", |_, ()| async {}))
        .expect_err("threaded cannot run async endpoints");
    assert_eq!(
        error.to_string(),
        "endpoint `record_samples` is async and cannot run in phase `threaded`; phases that can run it: bridged, async"
    );
}

#[test]
fn blocking_endpoint_is_refused_by_strict_async_phase() {
    let config = ExecutorConfig {
        phase: Phase::Async,
        strict: true,
        ..ExecutorConfig::default()
    };
    let executor = Executor::new("test", config).expect("starts");
    let error = executor
        .register(Endpoint::blocking("legacy_query", |_, ()| {}))
        .expect_err("strict async refuses blocking endpoints");
    assert_eq!(
        error.to_string(),
        "endpoint `legacy_query` is blocking and cannot run in phase `async` with executor.strict = true; \
         phases that can run it: threaded, bridged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_detector_fires_for_thread_sleep_and_not_for_tokio_sleep() {
    let executor = executor(Phase::Async, 4);
    let blocks = executor
        .register(Endpoint::from_async("blocks", |_, ()| async {
            std::thread::sleep(Duration::from_millis(50));
        }))
        .expect("registered");
    let yields = executor
        .register(Endpoint::from_async("yields", |_, ()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }))
        .expect("registered");
    blocks
        .dispatch((), DispatchOptions::default())
        .await
        .expect("ok");
    yields
        .dispatch((), DispatchOptions::default())
        .await
        .expect("ok");
    let snapshot = executor.snapshot();
    assert_eq!(
        snapshot
            .endpoint("blocks")
            .expect("registered")
            .counts
            .slow_polls,
        1
    );
    assert_eq!(
        snapshot
            .endpoint("yields")
            .expect("registered")
            .counts
            .slow_polls,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_body_offloaded_in_async_phase_is_counted() {
    let executor = executor(Phase::Async, 4);
    let legacy = executor
        .register(Endpoint::blocking("legacy", |_, ()| {
            Ok::<_, ()>(std::thread::current().name().map(str::to_string))
        }))
        .expect("non-strict async offloads blocking bodies");
    let thread = legacy
        .dispatch((), DispatchOptions::default())
        .await
        .expect("dispatched")
        .expect("ok");
    assert_ne!(
        thread.as_deref(),
        Some("tokio-runtime-worker"),
        "ran off the async workers"
    );
    assert_eq!(
        executor
            .snapshot()
            .endpoint("legacy")
            .expect("registered")
            .counts
            .offloaded,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_work_is_reported_once() {
    for phase in Phase::ALL {
        let config = ExecutorConfig {
            phase,
            pool_size: 2,
            max_in_flight: 2,
            hung_threshold_ms: 30,
            ..ExecutorConfig::default()
        };
        let executor = Executor::new("test", config).expect("starts");
        let (endpoint, mut started) = gated(&executor);
        let (gate, job) = start_one_gated(&endpoint, &mut started).await;
        let deadline = Instant::now() + BOUND;
        while executor.snapshot().totals.hung == 0 {
            assert!(
                Instant::now() < deadline,
                "{phase}: hung work never reported"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Several watchdog periods later it has still been reported only once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(executor.snapshot().totals.hung, 1, "{phase}");
        gate.send(()).expect("gate");
        job.await.expect("join").expect("ok");
    }
}

/// A socket an async body opens in the bridged phase (a pooled database
/// connection, say) must stay usable by the next body, on any thread,
/// blocking or async: every phase shares the service runtime's reactor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_resources_outlive_the_body_that_opened_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = [0u8; 4];
        while socket.read_exact(&mut buffer).await.is_ok() {
            let _ = socket.write_all(&buffer).await;
        }
    });
    let executor = executor(Phase::Bridged, 2);
    let shared: Arc<tokio::sync::Mutex<Option<tokio::net::TcpStream>>> = Arc::default();
    let slot = Arc::clone(&shared);
    let open = executor
        .register(Endpoint::from_async("open", move |_, ()| {
            let slot = Arc::clone(&slot);
            async move {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect");
                *slot.lock().await = Some(stream);
            }
        }))
        .expect("registered");
    let runtime = tokio::runtime::Handle::current();
    let slot = Arc::clone(&shared);
    let reuse = executor
        .register(Endpoint::blocking("reuse", move |_, ()| {
            runtime.block_on(async {
                let exchange = async {
                    let mut guard = slot.lock().await;
                    let stream = guard.as_mut().expect("opened");
                    stream.write_all(b"ping").await.expect("write");
                    let mut buffer = [0u8; 4];
                    stream.read_exact(&mut buffer).await.expect("read");
                    buffer
                };
                tokio::time::timeout(Duration::from_secs(5), exchange)
                    .await
                    .map_err(|_| "the socket's reactor is not driven")
            })
        }))
        .expect("registered");
    open.dispatch((), DispatchOptions::default())
        .await
        .expect("opened");
    for _ in 0..4 {
        let echoed = reuse
            .dispatch((), DispatchOptions::default())
            .await
            .expect("dispatched");
        assert_eq!(echoed, Ok(*b"ping"));
    }
}

/// An endpoint written both ways runs its blocking body in `threaded` and its
/// async body in `bridged` and `async`, where nothing is offloaded; the
/// statistics say which form ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_in_both_forms_runs_the_form_its_phase_picks() {
    for (phase, form) in [
        (Phase::Threaded, "blocking"),
        (Phase::Bridged, "async"),
        (Phase::Async, "async"),
    ] {
        let executor = executor(phase, 4);
        let endpoint = executor
            .register(Endpoint::both(
                "both",
                |_, ()| Ok::<_, ()>("blocking"),
                |_, ()| async { Ok::<_, ()>("async") },
            ))
            .expect("every phase runs an endpoint written both ways");
        let ran = endpoint
            .dispatch((), DispatchOptions::default())
            .await
            .expect("dispatched");
        assert_eq!(ran, Ok(form), "{phase}");
        let snapshot = executor.snapshot();
        let stats = &snapshot.endpoints[0];
        assert_eq!(stats.declared, EndpointKind::Both, "{phase}");
        assert_eq!(stats.kind.to_string(), form, "{phase}");
        assert_eq!(stats.counts.offloaded, 0, "{phase}: nothing offloaded");
    }
}

/// In the async phase the body runs in its caller's task: a caller that
/// gives up drops it, and the request is counted finished and failed, not
/// left in flight for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_body_dropped_by_its_caller_is_counted_failed_not_left_in_flight() {
    let executor = executor(Phase::Async, 4);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let endpoint = executor
        .register(Endpoint::from_async("forever", move |_, ()| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            }
        }))
        .expect("registered");
    let call = tokio::spawn(async move { endpoint.dispatch((), DispatchOptions::default()).await });
    tokio::time::timeout(BOUND, started.recv())
        .await
        .expect("the body started");
    assert_eq!(executor.snapshot().totals.in_flight, 1);
    call.abort();
    assert!(call.await.is_err_and(|e| e.is_cancelled()));
    let totals = executor.snapshot().totals;
    assert_eq!(
        (totals.in_flight, totals.completed, totals.failed),
        (0, 1, 1),
        "{totals:?}"
    );
}
