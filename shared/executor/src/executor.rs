//! The executor: takes requests from async transports and runs endpoint bodies
//! where the configured phase says.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{Either, FutureExt};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::error::Elapsed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Span, field};

use crate::endpoint::{Body, Context, Endpoint, Outcome};
use crate::error::{DispatchError, PhaseMismatch, ShutdownReport};
use crate::pool::{Pool, Worker};
use crate::recent::RecentRunTimes;
use crate::stats::{EndpointCounters, ExecutorSnapshot};
use crate::watch::{Running, Watched, panic_message, start_watchdog};
use crate::{EndpointSpec, ExecutorConfig, Phase};

/// The executor could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Its worker threads could not be spawned.
    #[error("could not start the executor's worker threads: {0}")]
    Threads(#[from] std::io::Error),
    /// The `bridged` phase drives async bodies with the service's Tokio
    /// runtime, so the executor must be created inside one.
    #[error(
        "the bridged phase needs a Tokio runtime: create the executor from within the service's runtime"
    )]
    NoRuntime,
}

/// Runs one service's endpoints in its configured phase.
///
/// Cheap to clone; all clones share the pool, the limits and the statistics.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("name", &self.inner.name)
            .field("phase", &self.inner.config.phase)
            .finish()
    }
}

struct Inner {
    name: String,
    config: ExecutorConfig,
    /// One permit per request allowed to run at once (`pool_size` or
    /// `max_in_flight`). Dispatch waits here: this is the back-pressure.
    slots: Arc<Semaphore>,
    /// Worker threads, in the `threaded` and `bridged` phases.
    pool: Option<Pool>,
    /// Counters of every registered endpoint, in registration order.
    endpoints: Mutex<Vec<Arc<EndpointCounters>>>,
    /// Run times of the latest calls of every endpoint (the canary judge's).
    recent: Arc<RecentRunTimes>,
    /// What runs now, for the hung-work detector and the shutdown report.
    running: Arc<Running>,
    /// Every accepted request holds a token until it finishes; shutdown waits
    /// for the tokens.
    accepted: TaskTracker,
    /// Cancelled when shutdown starts: no new work is accepted.
    closing: CancellationToken,
    /// Cancelled when the grace period ends: async bodies still running are
    /// cancelled.
    abandon: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.stop();
        }
    }
}

/// Per-request options from the transport.
#[derive(Debug, Clone, Default)]
pub struct DispatchOptions {
    /// When the caller stops waiting (AMQP expiration, `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// How long to wait for capacity before answering
    /// [`DispatchError::Overloaded`]; `None` waits as long as the deadline allows.
    pub wait_budget: Option<Duration>,
    /// The span the dispatch span goes under; the current span when `None`.
    pub parent: Option<Span>,
}

impl DispatchOptions {
    /// Options with a deadline `timeout` from now.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            deadline: Some(Instant::now() + timeout),
            ..Self::default()
        }
    }
}

/// An endpoint registered with an executor: what transports dispatch to.
pub struct BoundEndpoint<Req, Out> {
    name: Arc<str>,
    body: Body<Req, Out>,
    counters: Arc<EndpointCounters>,
    executor: Executor,
}

impl<Req, Out> Clone for BoundEndpoint<Req, Out> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            body: self.body.clone(),
            counters: Arc::clone(&self.counters),
            executor: self.executor.clone(),
        }
    }
}

impl<Req, Out> std::fmt::Debug for BoundEndpoint<Req, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundEndpoint")
            .field("name", &self.name)
            .field("kind", &self.counters.kind)
            .finish()
    }
}

impl Executor {
    /// Starts an executor named `name` (the service, used for thread names and
    /// metrics) with `config`.
    pub fn new(name: &str, config: ExecutorConfig) -> Result<Self, StartError> {
        let pool = match config.phase {
            Phase::Threaded => Some(Pool::start(name, config.phase, config.pool_size, None)?),
            Phase::Bridged => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
                Some(Pool::start(
                    name,
                    config.phase,
                    config.pool_size,
                    Some(runtime),
                )?)
            }
            Phase::Async => None,
        };
        let running = Arc::new(Running::default());
        start_watchdog(name, Arc::downgrade(&running), config.hung_threshold())?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                slots: Arc::new(Semaphore::new(config.capacity())),
                config,
                pool,
                endpoints: Mutex::new(Vec::new()),
                recent: Arc::default(),
                running,
                accepted: TaskTracker::new(),
                closing: CancellationToken::new(),
                abandon: CancellationToken::new(),
            }),
        })
    }

    /// The phase this executor runs.
    pub fn phase(&self) -> Phase {
        self.inner.config.phase
    }

    /// Its configuration.
    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.config
    }

    /// Checks declared endpoints against a configuration without starting
    /// anything: every endpoint the phase cannot run, each with the phases that can.
    pub fn check(config: &ExecutorConfig, endpoints: &[EndpointSpec]) -> Vec<PhaseMismatch> {
        endpoints
            .iter()
            .filter(|spec| !config.phase.can_run(spec.kind, config.strict))
            .map(|spec| PhaseMismatch {
                endpoint: spec.name.clone(),
                kind: spec.kind,
                phase: config.phase,
                strict: config.strict,
                accepted: Phase::accepting(spec.kind, config.strict),
            })
            .collect()
    }

    /// Registers an endpoint, refusing it when the phase cannot run it.
    pub fn register<Req, Out>(
        &self,
        endpoint: Endpoint<Req, Out>,
    ) -> Result<BoundEndpoint<Req, Out>, PhaseMismatch>
    where
        Req: Send + 'static,
        Out: Outcome,
    {
        if let Some(mismatch) = Self::check(&self.inner.config, &[endpoint.spec()]).pop() {
            return Err(mismatch);
        }
        let phase = self.inner.config.phase;
        let counters = Arc::new(EndpointCounters::new(
            endpoint.name.clone(),
            endpoint.kind(),
            endpoint.kind().form_in(phase),
            Arc::clone(&self.inner.recent),
        ));
        crate::sync::lock(&self.inner.endpoints).push(Arc::clone(&counters));
        Ok(BoundEndpoint {
            name: Arc::from(endpoint.name.as_str()),
            body: endpoint.forms.for_phase(phase),
            counters,
            executor: self.clone(),
        })
    }

    /// The run times (µs) of calls finished since `cursor`, and the next
    /// cursor: at most the newest [`crate::recent::RECENT`].
    pub fn recent_run_times(&self, cursor: u64) -> (Vec<u32>, u64) {
        self.inner.recent.since(cursor)
    }

    /// Statistics of every endpoint at this moment.
    pub fn snapshot(&self) -> ExecutorSnapshot {
        let endpoints = crate::sync::lock(&self.inner.endpoints)
            .iter()
            .map(|c| c.snapshot())
            .collect();
        ExecutorSnapshot::from_endpoints(
            &self.inner.name,
            self.inner.config.phase,
            self.inner.config.capacity(),
            endpoints,
        )
    }

    /// `true` once shutdown has started.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Stops accepting work, lets accepted work finish for up to `grace`, then
    /// cancels async bodies still running and reports what was abandoned.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.closing.cancel();
        inner.slots.close();
        inner.accepted.close();
        let drained = tokio::time::timeout(grace, inner.accepted.wait())
            .await
            .is_ok();
        let abandoned = if drained {
            Vec::new()
        } else {
            inner.running.list()
        };
        inner.abandon.cancel();
        if let Some(pool) = &inner.pool {
            pool.stop();
        }
        for work in &abandoned {
            tracing::warn!(
                switchyard.endpoint = %work.endpoint,
                trace_id = work.trace_id.as_deref().unwrap_or("none"),
                running_ms = work.running_for.as_millis() as u64,
                "shutdown abandoned `{}` after {:.1} s",
                work.endpoint,
                work.running_for.as_secs_f64()
            );
        }
        ShutdownReport { abandoned }
    }
}

/// A request's share of the executor's capacity, held until its work ends
/// (shutdown waits for every one).
struct Slot {
    _permit: OwnedSemaphorePermit,
    _accepted: TaskTrackerToken,
    enqueued: Instant,
}

impl Slot {
    fn holding(self, span: Span) -> Admitted {
        Admitted { slot: self, span }
    }
}

/// Per-request bookkeeping that travels with the work to whichever thread runs it.
struct Admitted {
    slot: Slot,
    span: Span,
}

impl<Req, Out> BoundEndpoint<Req, Out>
where
    Req: Send + 'static,
    Out: Outcome,
{
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The executor it is bound to.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Counts one answer with status `code` (gRPC's numbering, 0 to 16;
    /// others are not counted), for the `code` label of the endpoint's
    /// response counter: the transport knows the status, the executor only
    /// whether the body failed.
    pub fn count_status(&self, code: i32) {
        if let Some(counter) = usize::try_from(code)
            .ok()
            .and_then(|code| self.counters.statuses.get(code))
        {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Runs the endpoint on `request` in the executor's phase. Waits for
    /// capacity first (back-pressure), bounded by the deadline and the wait
    /// budget.
    ///
    /// Every request in flight holds the returned future, so its size is
    /// the executor's memory per request (`scripts/bench`'s memory cell).
    /// Hence plain functions that return futures where an `async fn` would
    /// keep its arguments in its state beside the future they move into:
    /// the options and the parent span are spent before the first await.
    pub fn dispatch(
        &self,
        request: Req,
        options: DispatchOptions,
    ) -> impl Future<Output = Result<Out, DispatchError>> + Send + '_ {
        let DispatchOptions {
            deadline,
            wait_budget,
            parent,
        } = options;
        let span = self.dispatch_span(parent, deadline);
        async move {
            let result = match self.admit(deadline, wait_budget).await {
                Ok(slot) => {
                    self.run(request, deadline, slot.holding(span.clone()))
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                span.record("otel.status_code", "ERROR");
                span.record("error.message", field::display(error));
            }
            result
        }
    }

    /// The request's `dispatch` span, under `parent` (the current span
    /// when `None`).
    fn dispatch_span(&self, parent: Option<Span>, deadline: Option<Instant>) -> Span {
        let phase = self.executor.inner.config.phase;
        let parent = parent.unwrap_or_else(Span::current);
        let span = tracing::info_span!(
            parent: &parent,
            "dispatch",
            otel.name = %format_args!("dispatch {}", self.name),
            switchyard.phase = phase.as_str(),
            switchyard.endpoint = &*self.name,
            switchyard.endpoint.kind = %self.counters.kind,
            switchyard.deadline_ms = field::Empty,
            switchyard.queue_wait_us = field::Empty,
            switchyard.offloaded = field::Empty,
            switchyard.overdue = field::Empty,
            thread.name = field::Empty,
            otel.status_code = field::Empty,
            error.message = field::Empty,
        );
        if let Some(deadline) = deadline {
            // What the caller left it, as it arrived.
            let left = deadline.saturating_duration_since(Instant::now());
            span.record("switchyard.deadline_ms", left.as_millis() as i64);
        }
        span
    }

    /// Waits for a slot, counting the wait as `queued`.
    async fn admit(
        &self,
        deadline: Option<Instant>,
        wait_budget: Option<Duration>,
    ) -> Result<Slot, DispatchError> {
        let inner = &self.executor.inner;
        if inner.closing.is_cancelled() {
            return Err(DispatchError::ShuttingDown);
        }
        let enqueued = Instant::now();
        let budget_end = wait_budget.map(|budget| enqueued + budget);
        let give_up = match (deadline, budget_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.counters.queued.fetch_add(1, Relaxed);
        let acquired = bounded(give_up, Arc::clone(&inner.slots).acquire_owned()).await;
        self.counters.queued.fetch_sub(1, Relaxed);
        match acquired {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                _accepted: inner.accepted.token(),
                enqueued,
            }),
            // The semaphore is closed only by shutdown.
            Ok(Err(_closed)) => Err(DispatchError::ShuttingDown),
            Err(_elapsed) if deadline.is_some_and(|d| Instant::now() >= d) => {
                self.count_finished_without_running(true);
                Err(self.deadline_exceeded())
            }
            Err(_elapsed) => {
                self.count_finished_without_running(false);
                Err(DispatchError::Overloaded {
                    endpoint: self.name.to_string(),
                    waited: enqueued.elapsed(),
                })
            }
        }
    }

    fn count_finished_without_running(&self, expired: bool) {
        self.counters.completed.fetch_add(1, Relaxed);
        self.counters.failed.fetch_add(1, Relaxed);
        if expired {
            self.counters.expired.fetch_add(1, Relaxed);
        }
    }

    fn run(
        &self,
        request: Req,
        deadline: Option<Instant>,
        admitted: Admitted,
    ) -> impl Future<Output = Result<Out, DispatchError>> + Send + 'static {
        let inner = &self.executor.inner;
        let job = self.job(request, deadline, admitted);
        let outcome = match (&inner.pool, &self.body) {
            (Some(pool), _) => {
                let (reply, outcome) = oneshot::channel();
                pool.submit(Box::new(move |worker| {
                    let result = job.run(Some(worker));
                    worker.finishing();
                    let _ = reply.send(result);
                }));
                outcome
            }
            (None, Body::Blocking(_)) => {
                let (reply, outcome) = oneshot::channel();
                self.counters.offloaded.fetch_add(1, Relaxed);
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(job.run(None));
                });
                outcome
            }
            // In the caller's own task: a spawned task and a reply channel
            // per request cost a wake-up and a thread hop each, the largest
            // share of a small request's time (47 % in the kernel,
            // docs/benchmarks.md). The body is the caller's future now: a
            // caller that gives up (a gRPC client gone) drops it, and
            // `Unfinished` counts it as failed.
            (None, Body::Async(_)) => return Either::Left(self.async_task(job)),
        };
        // The sender is dropped without a value only when the work was
        // abandoned at the end of a shutdown.
        Either::Right(outcome.map(|sent| sent.unwrap_or(Err(DispatchError::ShuttingDown))))
    }

    /// The work of one request as a closure for a pool thread or the blocking
    /// pool. In the async phase with an async body, see [`Self::async_task`].
    fn job(&self, request: Req, deadline: Option<Instant>, admitted: Admitted) -> Job<Req, Out> {
        Job {
            request,
            deadline,
            admitted,
            this: self.clone(),
        }
    }

    fn async_task(
        &self,
        job: Job<Req, Out>,
    ) -> impl Future<Output = Result<Out, DispatchError>> + Send + 'static {
        let abandon = self.executor.inner.abandon.clone();
        async move {
            // Fields used in place, not moved into locals: a local would
            // keep a second copy in this future's state.
            let this = &job.this;
            let Body::Async(body) = &this.body else {
                unreachable!("async_task is only built for async bodies");
            };
            let started = this.start(&job.admitted, None);
            if let Some(expired) = this.expired_before_start(job.deadline) {
                return expired;
            }
            let unfinished = Unfinished(&this.counters);
            let _running = this
                .executor
                .inner
                .running
                .enter(&this.counters, &job.admitted.span);
            let result = tokio::select! {
                biased;
                _ = abandon.cancelled() => Err(DispatchError::ShuttingDown),
                result = bounded(job.deadline, Watched::new(
                    body(this.context(job.deadline, &job.admitted.span), job.request),
                    &this.counters,
                    this.executor.inner.config.slow_poll_threshold(),
                    Phase::Async,
                    &job.admitted.span,
                )) => result.map_err(|_elapsed| this.deadline_exceeded()),
            };
            std::mem::forget(unfinished);
            this.finish(started, job.deadline, &job.admitted.span, result)
        }
    }

    fn context(&self, deadline: Option<Instant>, span: &Span) -> Context {
        Context {
            endpoint: Arc::clone(&self.name),
            phase: self.executor.inner.config.phase,
            deadline,
            span: span.clone(),
        }
    }

    /// Records queue wait and the thread, and counts the request in flight.
    fn start(&self, admitted: &Admitted, offloaded: Option<bool>) -> Instant {
        let started = Instant::now();
        let waited = started.duration_since(admitted.slot.enqueued);
        self.counters.queue_wait.record(waited);
        self.counters.in_flight.fetch_add(1, Relaxed);
        let span = &admitted.span;
        span.record("switchyard.queue_wait_us", waited.as_micros() as u64);
        if let Some(name) = std::thread::current().name() {
            span.record("thread.name", name);
        }
        if let Some(offloaded) = offloaded {
            span.record("switchyard.offloaded", offloaded);
        }
        started
    }

    fn deadline_exceeded(&self) -> DispatchError {
        DispatchError::DeadlineExceeded {
            endpoint: self.name.to_string(),
        }
    }

    fn expired_before_start(
        &self,
        deadline: Option<Instant>,
    ) -> Option<Result<Out, DispatchError>> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.counters.in_flight.fetch_sub(1, Relaxed);
            self.count_finished_without_running(true);
            return Some(Err(self.deadline_exceeded()));
        }
        None
    }

    /// Counts a finished request and turns a panic into an error.
    fn finish(
        &self,
        started: Instant,
        deadline: Option<Instant>,
        span: &Span,
        result: Result<Result<Out, String>, DispatchError>,
    ) -> Result<Out, DispatchError> {
        let counters = &self.counters;
        let run_time = started.elapsed();
        counters.run_time.record(run_time);
        counters.recent.record(run_time);
        counters.in_flight.fetch_sub(1, Relaxed);
        counters.completed.fetch_add(1, Relaxed);
        let result = match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(message)) => {
                counters.panicked.fetch_add(1, Relaxed);
                tracing::error!(
                    parent: span,
                    switchyard.endpoint = %self.name,
                    "endpoint `{}` panicked: {message}; the request failed, the service goes on",
                    self.name
                );
                Err(DispatchError::Panicked {
                    endpoint: self.name.to_string(),
                    message,
                })
            }
            Err(error) => {
                if matches!(error, DispatchError::DeadlineExceeded { .. }) {
                    counters.expired.fetch_add(1, Relaxed);
                }
                Err(error)
            }
        };
        let failed = match &result {
            Ok(out) => out.is_failure(),
            Err(_) => true,
        };
        if failed {
            counters.failed.fetch_add(1, Relaxed);
        }
        if let (Ok(_), Some(deadline)) = (&result, deadline)
            && Instant::now() > deadline
            && matches!(self.body, Body::Blocking(_))
        {
            counters.overdue.fetch_add(1, Relaxed);
            tracing::warn!(
                parent: span,
                switchyard.endpoint = %self.name,
                "blocking endpoint `{}` finished {:.1} ms after its deadline",
                self.name,
                Instant::now().duration_since(deadline).as_secs_f64() * 1e3
            );
            span.record("switchyard.overdue", true);
        }
        result
    }
}

/// One admitted request on its way to the thread that runs it.
struct Job<Req, Out> {
    request: Req,
    deadline: Option<Instant>,
    admitted: Admitted,
    this: BoundEndpoint<Req, Out>,
}

impl<Req, Out> Job<Req, Out>
where
    Req: Send + 'static,
    Out: Outcome,
{
    /// Runs on a pool thread (`worker` is set) or on Tokio's blocking pool
    /// (the async phase offloading a blocking body).
    fn run(self, worker: Option<&Worker>) -> Result<Out, DispatchError> {
        let Job {
            request,
            deadline,
            admitted,
            this,
        } = self;
        let offloaded = worker.is_none().then_some(true);
        let started = this.start(&admitted, offloaded);
        if let Some(expired) = this.expired_before_start(deadline) {
            return expired;
        }
        let _running = this
            .executor
            .inner
            .running
            .enter(&this.counters, &admitted.span);
        let context = this.context(deadline, &admitted.span);
        let result = match (&this.body, worker.and_then(|w| w.runtime.as_ref())) {
            (Body::Blocking(body), _) => {
                let _entered = admitted.span.enter();
                Ok(catch_unwind(AssertUnwindSafe(|| body(context, request)))
                    .map_err(|payload| panic_message(payload.as_ref())))
            }
            (Body::Async(body), Some(runtime)) => {
                let watched = Watched::new(
                    body(context, request),
                    &this.counters,
                    this.executor.inner.config.slow_poll_threshold(),
                    Phase::Bridged,
                    &admitted.span,
                );
                // The deadline's timer is made inside the runtime: a pool
                // thread is not in its context until `block_on`.
                runtime
                    .block_on(async { bounded(deadline, watched).await })
                    .map_err(|_elapsed| this.deadline_exceeded())
            }
            // Registration refuses async bodies in the threaded phase, the
            // only pool without a runtime handle.
            (Body::Async(_), None) => unreachable!("async endpoint on a thread without a runtime"),
        };
        this.finish(started, deadline, &admitted.span, result)
    }
}

/// An async body that started and has not finished: dropped armed (its
/// caller gave up and dropped the future), it takes the request out of
/// `in_flight` and counts it finished and failed, as `finish` would have.
/// `finish` is reached by forgetting it.
struct Unfinished<'a>(&'a EndpointCounters);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.completed.fetch_add(1, Relaxed);
        self.0.failed.fetch_add(1, Relaxed);
    }
}

/// `future`, bounded by `limit` when there is one: `Err(Elapsed)` once it
/// passes, and `future` is dropped (cancellation). A plain function, not an
/// `async fn`: that would hold `future` in its state beside the `Timeout`
/// it moves into, and each request in flight holds this state.
fn bounded<F: Future>(
    limit: Option<Instant>,
    future: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> {
    match limit {
        Some(limit) => Either::Left(tokio::time::timeout_at(limit.into(), future)),
        None => Either::Right(future.map(Ok)),
    }
}
