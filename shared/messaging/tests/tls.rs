//! `amqps://` with a certificate made in the test. The broker on this machine
//! speaks plain AMQP, so a TLS-terminating proxy in the test stands in front
//! of it; the client side is exactly what a TLS broker would see.

mod support;

use std::sync::Arc;

use support::{BOUND, EchoServer, text};
use switchyard_executor::Phase;
use switchyard_messaging::{AmqpConfig, RpcClient, Target, Transport, wire};
use switchyard_proto::echo::v1::SayReply;
use tokio_rustls::rustls;

/// Accepts TLS on a free port and forwards the plain stream to RabbitMQ.
async fn tls_proxy(certified: &rcgen::CertifiedKey<rcgen::KeyPair>) -> u16 {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    support::serve_loopback(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_trusted_certificate_carries_rpc() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let port = tls_proxy(&certified).await;
    let dir = std::env::temp_dir().join(format!("switchyard-amqps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).expect("write");
    let id = wire::new_id();
    let config = AmqpConfig {
        url: switchyard_config::SecretUrl::new(format!("amqps://guest:guest@localhost:{port}/%2f")),
        tls_ca_file: ca.display().to_string(),
        exchange: format!("test-{id}"),
        queue_expires_ms: 120_000,
        ..AmqpConfig::default()
    };
    assert!(config.problems().is_empty());
    let transport = Transport::connect(&config, "tls", &id)
        .await
        .expect("TLS connection");
    let echo = EchoServer::start(&transport, &config.exchange, Phase::Async, 4).await;
    let client = RpcClient::new(&transport).await.expect("client");
    let reply: SayReply = client
        .call(
            &Target::topic(&config.exchange, "echo"),
            "say",
            &text("over amqps"),
            BOUND,
        )
        .await
        .expect("reply");
    assert_eq!(reply.text, "over amqps");
    echo.stop().await;

    // Without trusting the certificate, there is no connection.
    let stranger =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let other = dir.join("other.pem");
    std::fs::write(&other, stranger.cert.pem()).expect("write");
    let untrusting = AmqpConfig {
        tls_ca_file: other.display().to_string(),
        connect_timeout_ms: 5000,
        ..config.clone()
    };
    let refused = Transport::connect(&untrusting, "tls", &id).await;
    assert!(
        refused.is_err(),
        "connected without trusting the broker's certificate"
    );
    let no_ca = AmqpConfig {
        tls_ca_file: String::new(),
        ..config.clone()
    };
    assert!(
        no_ca
            .problems()
            .iter()
            .any(|(key, _)| *key == "tls_ca_file")
    );

    let channel = transport.channel().await.expect("channel");
    for queue in [
        wire::topic_queue(&config.exchange, "echo"),
        wire::dead_letter_queue(&wire::topic_queue(&config.exchange, "echo")),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [
        config.exchange.clone(),
        wire::fanout_exchange(&config.exchange, "echo"),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    transport.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
