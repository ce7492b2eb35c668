//! gRPC servers on the executor: every phase serves, health follows
//! readiness, reflection lists the services, errors map to the right codes,
//! shutdown drains.

mod support;

use std::time::{Duration, Instant};

use switchyard_executor::Phase;
use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use switchyard_testkit::reflected_services;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BOUND: Duration = Duration::from_secs(10);

fn say(text: &str, wait_ms: u32) -> SayRequest {
    SayRequest {
        text: text.to_string(),
        wait_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_runs_where_each_phase_says() {
    for phase in Phase::ALL {
        let server = support::start(phase, 4, Duration::from_secs(1)).await;
        let mut client = EchoClient::connect(server.url()).await.expect("connect");
        let reply = client
            .say(say("hello", 0))
            .await
            .expect("reply")
            .into_inner();
        assert_eq!(reply.text, "hello");
        assert_eq!(reply.phase, phase.as_str());
        match phase {
            Phase::Threaded | Phase::Bridged => {
                assert!(
                    reply.thread.starts_with("echo-worker-"),
                    "{phase}: ran on {}",
                    reply.thread
                )
            }
            Phase::Async => assert!(
                !reply.thread.contains("-worker-"),
                "{phase}: ran on {}",
                reply.thread
            ),
        }
        assert_eq!(server.executor.snapshot().totals.completed, 1);
        server.shutdown.cancel();
    }
}

async fn health(url: String, service: &str) -> i32 {
    let channel = support::connect(url).await;
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness() {
    let server = support::start(Phase::Async, 4, Duration::from_secs(1)).await;
    assert_eq!(
        health(server.url(), switchyard_echo::GRPC_SERVICE).await,
        ServingStatus::Serving as i32
    );
    server.readiness.set("amqp", false).await;
    assert_eq!(
        health(server.url(), switchyard_echo::GRPC_SERVICE).await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        health(server.url(), "").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(server.readiness.failing(), vec!["amqp".to_string()]);
    server.readiness.set("amqp", true).await;
    assert_eq!(
        health(server.url(), switchyard_echo::GRPC_SERVICE).await,
        ServingStatus::Serving as i32
    );
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    let server = support::start(Phase::Bridged, 2, Duration::from_secs(1)).await;
    let names = reflected_services(server.channel().await, None)
        .await
        .expect("reflection answers");
    // Exactly what this port serves: not every service whose schema the
    // descriptor set holds (the api's Metering is not served here).
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            switchyard_echo::GRPC_SERVICE,
        ]
    );

    // v1alpha too, for clients that speak only it (Python's grpcio-reflection).
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let channel = server.channel().await;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let response = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("v1alpha reflection answers")
            .into_inner()
            .message()
            .await
            .expect("stream")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected v1alpha reflection response: {response:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == switchyard_echo::GRPC_SERVICE),
            "{list:?}"
        );
    }
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_distinct_codes() {
    for phase in Phase::ALL {
        let server = support::start(phase, 1, Duration::from_millis(50)).await;
        let mut client = EchoClient::connect(server.url()).await.expect("connect");

        let invalid = client.say(say("", 0)).await.expect_err("empty text");
        assert_eq!(invalid.code(), Code::InvalidArgument, "{phase}");
        assert!(
            invalid.message().contains("field `text`"),
            "{phase}: {}",
            invalid.message()
        );

        let missing = client.say(say("missing", 0)).await.expect_err("not found");
        assert_eq!(missing.code(), Code::NotFound, "{phase}");

        let huge = client
            .say(say(&"x".repeat(100_000), 0))
            .await
            .expect_err("too large");
        assert_eq!(huge.code(), Code::ResourceExhausted, "{phase}: {huge:?}");

        // One slot, held by a slow call: the next waits 50 ms, then is told.
        let mut busy = client.clone();
        let slow = tokio::spawn(async move { busy.say(say("slow", 1500)).await });
        let started = Instant::now();
        while server.executor.snapshot().totals.in_flight == 0 {
            assert!(
                started.elapsed() < BOUND,
                "{phase}: slow call never started"
            );
            tokio::task::yield_now().await;
        }
        let overloaded = client.say(say("next", 0)).await.expect_err("overloaded");
        assert_eq!(
            overloaded.code(),
            Code::ResourceExhausted,
            "{phase}: {overloaded:?}"
        );
        slow.await.expect("join").expect("slow call still succeeds");

        server.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_becomes_the_executor_deadline() {
    for phase in [Phase::Bridged, Phase::Async] {
        let server = support::start(phase, 2, Duration::from_secs(1)).await;
        let mut client = EchoClient::connect(server.url()).await.expect("connect");
        let mut request = tonic::Request::new(say("late", 5000));
        request.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let late = client.say(request).await.expect_err("deadline");
        assert_eq!(late.code(), Code::DeadlineExceeded, "{phase}: {late:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(server.executor.snapshot().totals.expired, 1, "{phase}");
        server.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_call_in_flight_finish() {
    let server = support::start(Phase::Async, 2, Duration::from_secs(1)).await;
    let mut client = EchoClient::connect(server.url()).await.expect("connect");
    let call = tokio::spawn(async move { client.say(say("drain me", 300)).await });
    let started = Instant::now();
    while server.executor.snapshot().totals.in_flight == 0 {
        assert!(started.elapsed() < BOUND, "call never started");
        tokio::task::yield_now().await;
    }
    server.shutdown.cancel();
    assert_eq!(support::answered(call, BOUND).await.text, "drain me");
    tokio::time::timeout(BOUND, server.served)
        .await
        .expect("server stopped")
        .expect("join")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate_and_only_them() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!("switchyard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
    let grpc = switchyard_grpc::GrpcConfig {
        tls_cert_file: cert.display().to_string(),
        tls_key_file: key.display().to_string(),
        // The certificate is its own CA.
        tls_ca_file: cert.display().to_string(),
        ..switchyard_grpc::GrpcConfig::default()
    };
    let server = support::start_with(
        Phase::Async,
        2,
        Duration::from_secs(1),
        grpc.server_tls().expect("tls"),
    )
    .await;
    let url = format!("https://localhost:{}", server.address.port());

    let channel = grpc
        .client_endpoint(&url)
        .expect("endpoint")
        .connect()
        .await
        .expect("TLS handshake");
    let reply = EchoClient::new(channel)
        .say(say("over tls", 0))
        .await
        .expect("reply");
    assert_eq!(reply.into_inner().text, "over tls");

    // A client that does not trust the certificate cannot connect.
    let untrusting = switchyard_grpc::GrpcConfig {
        tls_ca_file: {
            let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("certificate");
            let path = dir.join("other.pem");
            std::fs::write(&path, other.cert.pem()).expect("write");
            path.display().to_string()
        },
        ..switchyard_grpc::GrpcConfig::default()
    };
    let refused = match untrusting
        .client_endpoint(&url)
        .expect("endpoint")
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => EchoClient::new(channel).say(say("x", 0)).await.is_err(),
    };
    assert!(
        refused,
        "a client that does not trust the certificate was served"
    );
    // Plain text against the TLS port fails too.
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        server.address.port()
    ))
    .expect("url")
    .connect()
    .await;
    if let Ok(channel) = plain {
        assert!(
            EchoClient::new(channel).say(say("x", 0)).await.is_err(),
            "plain text was served on the TLS port"
        );
    }
    // An https URL without a CA is a configuration error, named.
    let error = switchyard_grpc::GrpcConfig::default()
        .client_endpoint(&url)
        .expect_err("no CA");
    assert!(error.to_string().contains("grpc.tls_ca_file"), "{error}");
    server.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
