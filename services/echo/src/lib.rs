//! Echo: the smallest Switchyard service, and the one tests and benchmarks
//! run in every phase.
//!
//! | endpoint | kind | notes |
//! |---|---|---|
//! | `Echo/Say` (gRPC) | blocking in `threaded`, async in `bridged` and `async` | replies with the text, the phase and the thread that ran it |
//! | `echo_blocking` | blocking | legacy code not yet ported: offloaded in `async`, refused when strict |
//!
//! So echo runs in all three phases, but not in `async` with `strict = true`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_config::Settings;
use switchyard_executor::{BoundEndpoint, Endpoint, EndpointSpec, Executor, Phase, PhaseMismatch};
use switchyard_grpc::{GrpcConfig, GrpcOutcome, invalid_argument, not_found};
use switchyard_proto::echo::v1::echo_server::{Echo, EchoServer};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tonic::{Request, Response, Status};

/// The service name: config file `deploy/config/echo.toml`, metrics label, spans.
pub const SERVICE: &str = "echo";

/// The gRPC service name, for health and reflection.
pub const GRPC_SERVICE: &str = "switchyard.echo.v1.Echo";

/// Longest text `Say` accepts, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

switchyard_app::fleet_settings! {
    /// Echo's configuration. `[amqp]` and `[rollout]` are used only with
    /// `echo.rollout = true`.
    pub struct EchoSettings {
        ;
        /// `[echo]`.
        pub echo: EchoOptions = EchoOptions::default(),
    }
}

/// The `[echo]` section: knobs for tests and demonstrations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoOptions {
    /// Every `Say` holds its thread this long with `std::thread::sleep` —
    /// legitimate in the blocking body of `threaded`, a deliberately blocking
    /// async endpoint in the other phases (the blocking detector sees it; a
    /// canary in an async phase is rolled back for it).
    pub block_ms: u64,
    /// Take part in the fleet's rollout over AMQP: heartbeats to the api's
    /// rollout table, promote requests, rollback notifications.
    pub rollout: bool,
    /// The async body (`bridged`, `async`) waits this much longer than asked
    /// (`wait_ms`): 1.0 makes it twice as slow. A regression for the canary
    /// judge to catch (`scripts/canary-matrix`).
    pub async_slowdown: f64,
    /// The async body fails this share of its calls (0.05: one in twenty).
    pub async_failure_rate: f64,
}

impl Settings for EchoSettings {
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = switchyard_app::fleet_problems(self);
        if !(self.echo.async_slowdown.is_finite() && self.echo.async_slowdown >= 0.0) {
            problems.push((
                "echo.async_slowdown".into(),
                format!("{}; accepted: 0 or more", self.echo.async_slowdown),
            ));
        }
        if !(0.0..=1.0).contains(&self.echo.async_failure_rate) {
            problems.push((
                "echo.async_failure_rate".into(),
                format!("{}; accepted: 0 to 1", self.echo.async_failure_rate),
            ));
        }
        if self.echo.rollout {
            problems.extend(switchyard_service::in_section("amqp", self.amqp.problems()));
        }
        problems
    }
}

/// What `--check-config` checks the phase against.
pub fn endpoints(phase: Phase) -> Vec<EndpointSpec> {
    vec![
        say_endpoint(phase, Duration::ZERO, Regression::default()).spec(),
        echo_blocking_endpoint().spec(),
    ]
}

fn validate(request: &SayRequest) -> Result<(), Status> {
    if request.text.is_empty() {
        return Err(invalid_argument("text", "must not be empty"));
    }
    if request.text.len() > MAX_TEXT_BYTES {
        return Err(invalid_argument(
            "text",
            format!("longer than {MAX_TEXT_BYTES} bytes"),
        ));
    }
    if request.text == "missing" {
        return Err(not_found("greeting", &request.text));
    }
    Ok(())
}

fn reply(phase: Phase, text: String) -> SayReply {
    SayReply {
        text,
        phase: phase.to_string(),
        thread: std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string(),
    }
}

/// `Say` as the phase can run it: the legacy blocking body in `threaded`, the
/// ported async body from `bridged` on. Both hold their thread for `block`.
fn say_endpoint(
    phase: Phase,
    block: Duration,
    regression: Regression,
) -> Endpoint<SayRequest, GrpcOutcome<SayReply>> {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    match phase {
        Phase::Threaded => Endpoint::blocking("Echo/Say", move |cx, request: SayRequest| {
            validate(&request)?;
            if !block.is_zero() {
                std::thread::sleep(block);
            }
            if request.wait_ms > 0 {
                std::thread::sleep(Duration::from_millis(request.wait_ms.into()));
            }
            Ok(reply(cx.phase(), request.text))
        }),
        // No timer for wait_ms = 0: a zero-length Tokio sleep still waits
        // for the next timer tick (about 1 ms).
        _ => Endpoint::from_async("Echo/Say", move |cx, request: SayRequest| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                validate(&request)?;
                if !block.is_zero() {
                    // Deliberately wrong: blocks the thread that polls this future.
                    std::thread::sleep(block);
                }
                if request.wait_ms > 0 {
                    let wait = Duration::from_millis(request.wait_ms.into())
                        .mul_f64(1.0 + regression.slowdown);
                    tokio::time::sleep(wait).await;
                }
                if regression.fails(call) {
                    return Err(Status::internal(
                        "echo.async_failure_rate: a planted failure",
                    ));
                }
                Ok(reply(cx.phase(), request.text))
            }
        }),
    }
}

/// A planted regression of the async body (`[echo] async_slowdown`,
/// `async_failure_rate`), for measuring the canary judge.
#[derive(Debug, Clone, Copy, Default)]
struct Regression {
    slowdown: f64,
    failure_rate: f64,
}

impl Regression {
    /// Whether call number `call` fails: spread evenly, `failure_rate` of them.
    fn fails(&self, call: u64) -> bool {
        let per_thousand = (self.failure_rate * 1000.0).round() as u64;
        (call.wrapping_mul(7919) % 1000) < per_thousand
    }
}

/// `echo_blocking`: legacy code not yet ported, written as a blocking body.
fn echo_blocking_endpoint() -> Endpoint<String, Result<String, Status>> {
    Endpoint::blocking("echo_blocking", |_, text: String| Ok(text))
}

/// Echo's endpoints, registered.
#[derive(Debug)]
pub struct EchoService {
    say: BoundEndpoint<SayRequest, GrpcOutcome<SayReply>>,
    echo_blocking: BoundEndpoint<String, Result<String, Status>>,
    overload_wait: Duration,
}

/// Echo's two endpoint bodies for `phase`, unregistered: `Say` and
/// `echo_blocking`.
pub type Bodies = (
    Endpoint<SayRequest, GrpcOutcome<SayReply>>,
    Endpoint<String, Result<String, Status>>,
);

impl EchoService {
    /// Echo's endpoints for `phase` with `options`, to register.
    pub fn bodies(phase: Phase, options: &EchoOptions) -> Bodies {
        (
            say_endpoint(
                phase,
                Duration::from_millis(options.block_ms),
                Regression {
                    slowdown: options.async_slowdown,
                    failure_rate: options.async_failure_rate,
                },
            ),
            echo_blocking_endpoint(),
        )
    }

    /// The service over its registered endpoints.
    pub fn new(
        say: BoundEndpoint<SayRequest, GrpcOutcome<SayReply>>,
        echo_blocking: BoundEndpoint<String, Result<String, Status>>,
        overload_wait: Duration,
    ) -> Self {
        Self {
            say,
            echo_blocking,
            overload_wait,
        }
    }

    /// Registers echo's endpoints with `executor` directly (tests).
    pub fn register(
        executor: &Executor,
        grpc: &GrpcConfig,
        options: &EchoOptions,
    ) -> Result<Self, PhaseMismatch> {
        let (say, echo_blocking) = Self::bodies(executor.phase(), options);
        Ok(Self::new(
            executor.register(say)?,
            executor.register(echo_blocking)?,
            grpc.overload_wait(),
        ))
    }

    /// The legacy blocking endpoint (offloaded in the async phase).
    pub fn echo_blocking(&self) -> &BoundEndpoint<String, Result<String, Status>> {
        &self.echo_blocking
    }

    /// The tonic server, with message size limits applied.
    pub fn into_server(self, max_message_bytes: usize) -> EchoServer<Self> {
        EchoServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        switchyard_grpc::unary(&self.say, request, self.overload_wait).await
    }
}
