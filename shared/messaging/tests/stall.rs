//! A channel whose publisher confirms stop while its connection lives — as a
//! quorum queue's client can after a network partition (rabbitmq-server#14589)
//! — is not waited on for ever: the transport is declared lost, so the
//! service rebuilds its messaging on fresh channels.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use support::{EchoServer, Rig, text};
use switchyard_config::SecretUrl;
use switchyard_executor::Phase;
use switchyard_messaging::{AmqpConfig, RpcClient, Target, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// AMQP 0-9-1's `basic.ack` (class 60, method 80): from the broker, a
/// publisher confirm.
const BASIC_ACK: [u8; 4] = [0, 60, 0, 80];
const METHOD_FRAME: u8 = 1;

/// A proxy to the local broker that, once `swallow` is set, drops the broker's publisher confirms and passes everything else
/// (heartbeats included): the connection stays up, the confirms stop.
async fn confirm_swallowing_proxy(swallow: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, Arc::clone(&swallow)));
        }
    });
    port
}

async fn relay(client: tokio::net::TcpStream, swallow: Arc<AtomicBool>) {
    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    // The broker only ever sends whole frames: type, channel (2 bytes),
    // size (4), payload, frame end.
    loop {
        let mut header = [0u8; 7];
        if server_read.read_exact(&mut header).await.is_err() {
            return;
        }
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        if server_read.read_exact(&mut rest).await.is_err() {
            return;
        }
        let confirm = header[0] == METHOD_FRAME && rest.starts_with(&BASIC_ACK);
        if confirm && swallow.load(SeqCst) {
            continue;
        }
        if client_write.write_all(&header).await.is_err()
            || client_write.write_all(&rest).await.is_err()
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_confirms_stop_is_declared_lost() {
    let rig = Rig::new().await;
    let echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 1).await;
    let swallow = Arc::new(AtomicBool::new(false));
    let port = confirm_swallowing_proxy(Arc::clone(&swallow)).await;
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        ..rig.config.clone()
    };
    let transport = Transport::connect(&config, "stall", &rig.id)
        .await
        .expect("connects through the proxy");
    let client = RpcClient::new(&transport).await.expect("client");
    let target = Target::topic(rig.exchange(), "echo");

    client
        .cast(&target, "say", &text("confirmed"))
        .await
        .expect("confirms flow through the proxy");
    assert!(!transport.lost().is_cancelled());

    // The caller gives up after a second, as a request past its deadline
    // does; nobody waits for that confirm any more but the transport.
    swallow.store(true, SeqCst);
    let published = Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        client.cast(&target, "say", &text("x")),
    )
    .await;
    assert!(gave_up.is_err(), "no confirm, so no answer: {gave_up:?}");
    assert!(
        !transport.lost().is_cancelled(),
        "a slow confirm is not a stuck channel"
    );
    tokio::time::timeout(Duration::from_secs(40), transport.lost().cancelled())
        .await
        .expect("the transport is declared lost");
    assert!(
        published.elapsed() >= Duration::from_secs(19),
        "declared lost after {:?}, before the 20 s a confirm may take",
        published.elapsed()
    );

    transport.close().await;
    echo.stop().await;
    rig.cleanup(&["echo"], &[]).await;
}
