//! gRPC unary echo: echo's service through the executor in each phase, beside
//! a raw tonic service with the same body and no executor.

use std::time::Duration;

use switchyard_echo::EchoService;
use switchyard_executor::Phase;
use switchyard_grpc::{GrpcConfig, Readiness};
use switchyard_proto::echo::v1::echo_client::EchoClient;
use switchyard_proto::echo::v1::echo_server::{Echo, EchoServer};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::measure::{Latencies, drive};

/// The same body as echo's `Say`, called directly by tonic.
struct RawEcho;

#[tonic::async_trait]
impl Echo for RawEcho {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let request = request.into_inner();
        if request.text.is_empty() {
            return Err(Status::invalid_argument("field `text`: must not be empty"));
        }
        Ok(Response::new(SayReply {
            text: request.text,
            phase: "raw".into(),
            thread: String::new(),
        }))
    }
}

/// `None` for raw tonic, else echo's service in that phase.
pub async fn echo(
    phase: Option<Phase>,
    callers: usize,
    cell: Duration,
) -> anyhow::Result<Latencies> {
    let listener = switchyard_grpc::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let (readiness, health) = Readiness::new(&[]).await;
    let routes = match phase {
        // As a service serves it: through the route switch that outlives
        // messaging rebuilds (switchyard_app::Host).
        Some(phase) => {
            let executor = crate::amqp::executor(phase)?;
            let service =
                EchoService::register(&executor, &GrpcConfig::default(), &Default::default())?;
            let switch = switchyard_grpc::Switch::new(health.clone());
            switch.install(health.add_service(service.into_server(4 * 1024 * 1024)));
            switch.routes()
        }
        None => health.add_service(EchoServer::new(RawEcho)),
    };
    tokio::spawn(switchyard_grpc::serve(
        listener,
        routes,
        None,
        switchyard_grpc::ConnectionLimits::default(),
        readiness,
        stop.clone(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let client = EchoClient::new(channel);
    let result = drive(callers, cell, move || {
        let mut client = client.clone();
        async move {
            client
                .say(SayRequest {
                    text: "x".repeat(100),
                    wait_ms: 0,
                })
                .await
                .is_ok()
        }
    })
    .await;
    stop.cancel();
    Ok(result)
}
