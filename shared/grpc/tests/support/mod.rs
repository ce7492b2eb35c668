//! An echo gRPC server whose one method runs through the executor, started
//! per test on 127.0.0.1:0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_executor::{BoundEndpoint, Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_grpc::{GrpcOutcome, Readiness, invalid_argument, not_found};
use switchyard_proto::echo::v1::echo_server::{Echo, EchoServer};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const ECHO_SERVICE: &str = "switchyard.echo.v1.Echo";

struct EchoImpl {
    say: BoundEndpoint<SayRequest, GrpcOutcome<SayReply>>,
    overload_wait: Duration,
}

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        switchyard_grpc::unary(&self.say, request, self.overload_wait).await
    }
}

fn validate(request: &SayRequest) -> Result<(), Status> {
    if request.text.is_empty() {
        return Err(invalid_argument("text", "must not be empty"));
    }
    if request.text.len() > 1024 {
        return Err(invalid_argument("text", "longer than 1024 bytes"));
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

/// `Say` as the phase can run it: blocking in `threaded`, async otherwise.
fn say_endpoint(phase: Phase) -> Endpoint<SayRequest, GrpcOutcome<SayReply>> {
    match phase {
        Phase::Threaded => Endpoint::blocking("Echo/Say", |cx, request: SayRequest| {
            validate(&request)?;
            std::thread::sleep(Duration::from_millis(request.wait_ms.into()));
            Ok(reply(cx.phase(), request.text))
        }),
        _ => Endpoint::from_async("Echo/Say", |cx, request: SayRequest| async move {
            validate(&request)?;
            tokio::time::sleep(Duration::from_millis(request.wait_ms.into())).await;
            Ok(reply(cx.phase(), request.text))
        }),
    }
}

pub struct EchoServerHandle {
    pub address: SocketAddr,
    pub readiness: Readiness,
    pub executor: Executor,
    pub shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<Result<(), switchyard_grpc::GrpcError>>,
}

impl EchoServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

pub async fn start(phase: Phase, capacity: usize, overload_wait: Duration) -> EchoServerHandle {
    let executor = Executor::new(
        "echo",
        ExecutorConfig {
            phase,
            pool_size: capacity,
            max_in_flight: capacity,
            ..ExecutorConfig::default()
        },
    )
    .expect("executor");
    let say = executor
        .register(say_endpoint(phase))
        .expect("phase runs Say");
    let (readiness, health) = Readiness::new(&[ECHO_SERVICE]).await;
    let routes = switchyard_grpc::base_routes(health, switchyard_proto::FILE_DESCRIPTOR_SET)
        .expect("reflection")
        .add_service(
            EchoServer::new(EchoImpl { say, overload_wait })
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(64 * 1024),
        );
    let listener = switchyard_grpc::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(switchyard_grpc::serve(
        listener,
        routes,
        readiness.clone(),
        shutdown.clone(),
    ));
    EchoServerHandle {
        address,
        readiness,
        executor,
        shutdown,
        served,
    }
}
