//! A channel whose publisher confirms stop while its connection lives — as a
//! quorum queue's client can after a network partition (rabbitmq-server#14589)
//! — is not waited on for ever: the transport is declared lost, so the
//! service rebuilds its messaging on fresh channels. And a server whose
//! broker stops answering still stops: its drain is what a rebuild waits
//! for. And deliveries the broker counts as sent that never reached their
//! consumer — a quorum queue's orphaned prefetch window after a partition
//! (rabbitmq-server#15473) — go back to the queue once the idle consumer
//! renews its channel, or, when its old channel will not close, once the
//! connection is declared lost and rebuilt.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use support::{EchoServer, Rig, finish, serve_loopback, text};
use switchyard_config::SecretUrl;
use switchyard_executor::Phase;
use switchyard_messaging::{AmqpConfig, RpcClient, Target, Transport};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// AMQP 0-9-1's `basic.ack` (class 60, method 80): from the broker, a
/// publisher confirm.
const BASIC_ACK: [u8; 4] = [0, 60, 0, 80];
/// `basic.deliver` (class 60, method 60), followed by the message's
/// content header and body frames on the same channel.
const BASIC_DELIVER: [u8; 4] = [0, 60, 0, 60];
/// `channel.open` (class 20, method 10), from the client.
const CHANNEL_OPEN: [u8; 4] = [0, 20, 0, 10];
/// `channel.close` (class 20, method 40), from the client.
const CHANNEL_CLOSE: [u8; 4] = [0, 20, 0, 40];
const METHOD_FRAME: u8 = 1;

/// What a [`faulty_proxy`] does wrong, switched on while it runs.
#[derive(Default)]
struct Faults {
    /// Drop the broker's publisher confirms, pass everything else
    /// (heartbeats included): the connection stays up, the confirms stop.
    swallow_confirms: AtomicBool,
    /// Drop everything the client sends: the broker never hears of what
    /// the client waits for (a consumer's cancel, a channel's close).
    mute_client: AtomicBool,
    /// Told of each `channel.open` dropped while the client is muted.
    muted_channel_open: Notify,
    /// Drop the broker's deliveries (method, content header and body), pass
    /// everything else: the broker counts them as delivered and
    /// unacknowledged, the consumer never hears of them.
    swallow_deliveries: AtomicBool,
    /// Told of each delivery swallowed.
    swallowed: Notify,
    /// Drop the client's `channel.close`, pass everything else: the broker
    /// keeps the channel and its consumers, the client waits for the
    /// `close-ok`.
    swallow_channel_close: AtomicBool,
    /// Told of each `channel.close` swallowed.
    swallowed_close: Notify,
}

/// A proxy to the local broker with `faults`. Cancelling `cut` closes the
/// connections relayed so far; later ones are relayed as before.
async fn faulty_proxy(faults: Arc<Faults>, cut: CancellationToken) -> u16 {
    serve_loopback(move |client| {
        let relayed = relay(client, Arc::clone(&faults));
        // Connections made after the cut stay.
        let cut = (!cut.is_cancelled()).then(|| cut.clone());
        async move {
            match cut {
                Some(cut) => tokio::select! {
                    () = relayed => {}
                    () = cut.cancelled() => {}
                },
                None => relayed.await,
            }
        }
    })
    .await
}

/// One AMQP frame: type, channel (2 bytes), size (4); then the payload and
/// the frame end. `None` once the stream ends.
async fn read_frame(from: &mut (impl AsyncReadExt + Unpin)) -> Option<([u8; 7], Vec<u8>)> {
    let mut header = [0u8; 7];
    from.read_exact(&mut header).await.ok()?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut rest = vec![0u8; size + 1];
    from.read_exact(&mut rest).await.ok()?;
    Some((header, rest))
}

/// Whether the frame is the method `method` (class and method ids).
fn is_method(header: &[u8; 7], rest: &[u8], method: [u8; 4]) -> bool {
    header[0] == METHOD_FRAME && rest.starts_with(&method)
}

async fn relay(client: tokio::net::TcpStream, faults: Arc<Faults>) {
    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream_faults = Arc::clone(&faults);
    let upstream = tokio::spawn(async move {
        // The client opens with the protocol header, then sends frames.
        let mut protocol = [0u8; 8];
        if client_read.read_exact(&mut protocol).await.is_err()
            || server_write.write_all(&protocol).await.is_err()
        {
            return;
        }
        while let Some((header, rest)) = read_frame(&mut client_read).await {
            if upstream_faults.mute_client.load(SeqCst) {
                if is_method(&header, &rest, CHANNEL_OPEN) {
                    upstream_faults.muted_channel_open.notify_one();
                }
                continue;
            }
            if is_method(&header, &rest, CHANNEL_CLOSE)
                && upstream_faults.swallow_channel_close.load(SeqCst)
            {
                upstream_faults.swallowed_close.notify_one();
                continue;
            }
            if server_write.write_all(&header).await.is_err()
                || server_write.write_all(&rest).await.is_err()
            {
                return;
            }
        }
    });
    // The client-to-broker half ends with the other half.
    let _upstream = AbortOnDropHandle::new(upstream);
    // Channels whose delivery is being swallowed, up to their next method.
    let mut swallowing = HashSet::new();
    while let Some((header, rest)) = read_frame(&mut server_read).await {
        if is_method(&header, &rest, BASIC_ACK) && faults.swallow_confirms.load(SeqCst) {
            continue;
        }
        let channel = u16::from_be_bytes([header[1], header[2]]);
        if header[0] == METHOD_FRAME {
            swallowing.remove(&channel);
            if rest.starts_with(&BASIC_DELIVER) && faults.swallow_deliveries.load(SeqCst) {
                swallowing.insert(channel);
                faults.swallowed.notify_one();
                continue;
            }
        } else if swallowing.contains(&channel) {
            continue;
        }
        if client_write.write_all(&header).await.is_err()
            || client_write.write_all(&rest).await.is_err()
        {
            return;
        }
    }
}

/// A transport named `name` connected through a [`faulty_proxy`], an RPC
/// client on it, and the rig's echo topic.
async fn through_proxy(
    rig: &Rig,
    name: &str,
    faults: &Arc<Faults>,
    cut: CancellationToken,
) -> (Transport, RpcClient, Target) {
    let port = faulty_proxy(Arc::clone(faults), cut).await;
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        ..rig.config.clone()
    };
    let transport = Transport::connect(&config, name, &rig.id)
        .await
        .expect("connects through the proxy");
    let client = RpcClient::new(&transport).await.expect("client");
    (transport, client, Target::topic(rig.exchange(), "echo"))
}

/// The rig's echo server serving on `transport` (a proxied one), once it
/// answered `client`'s call to `target`.
async fn serve_on(
    rig: &Rig,
    transport: &Transport,
    client: &RpcClient,
    target: &Target,
) -> EchoServer {
    let echo = EchoServer::start(transport, rig.exchange(), Phase::Async, 1).await;
    let heard: SayReply = client
        .call(target, "say", &text("heard"), Duration::from_secs(10))
        .await
        .expect("the server answers through the proxy");
    assert_eq!(heard.text, "heard");
    echo
}

/// Starts swallowing confirms and casts, giving up after a second as a
/// request past its deadline does; returns when the cast was published.
async fn cast_and_give_up(faults: &Faults, client: &RpcClient, target: &Target) -> Instant {
    faults.swallow_confirms.store(true, SeqCst);
    let published = Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        client.cast(target, "say", &text("x")),
    )
    .await;
    assert!(gave_up.is_err(), "no confirm, so no answer: {gave_up:?}");
    published
}

/// Waits for `event` (`what`), which must end within `window` of `since`:
/// not after it (it is bounded), not before it (it waited as it should).
async fn waits_then_ends(
    what: &str,
    since: Instant,
    window: std::ops::Range<Duration>,
    event: impl std::future::Future,
) {
    let left = window.end.saturating_sub(since.elapsed());
    if tokio::time::timeout(left, event).await.is_err() {
        panic!("{what}: not within {:?}", window.end);
    }
    assert!(
        since.elapsed() >= window.start,
        "{what}: after {:?}, sooner than {:?}",
        since.elapsed(),
        window.start
    );
}

/// Waits (at most 20 s) until lapin has reconnected `transport` after a
/// cut, and half a second more.
async fn wait_reconnected(transport: &Transport) {
    let cut = Instant::now();
    while !(transport.is_connected() && cut.elapsed() > Duration::from_millis(500)) {
        assert!(cut.elapsed() < Duration::from_secs(20), "lapin reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Closes the proxied connection, then stops the rig's server.
async fn finish_proxied(transport: Transport, rig: Rig, echo: EchoServer) {
    transport.close().await;
    finish(rig, echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_confirms_stop_is_declared_lost() {
    let rig = Rig::new().await;
    let echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 1).await;
    let faults = Arc::new(Faults::default());
    let (transport, client, target) =
        through_proxy(&rig, "stall", &faults, CancellationToken::new()).await;

    client
        .cast(&target, "say", &text("confirmed"))
        .await
        .expect("confirms flow through the proxy");
    assert!(!transport.lost().is_cancelled());

    // The caller gives up after a second, as a request past its deadline
    // does; nobody waits for that confirm any more but the transport.
    let published = cast_and_give_up(&faults, &client, &target).await;
    assert!(
        !transport.lost().is_cancelled(),
        "a slow confirm is not a stuck channel"
    );
    // Not before the 20 s a confirm may take.
    waits_then_ends(
        "the transport is declared lost",
        published,
        Duration::from_secs(19)..Duration::from_secs(40),
        transport.lost().cancelled(),
    )
    .await;

    finish_proxied(transport, rig, echo).await;
}

/// A confirm lost with a connection that failed and came back is not a
/// stuck channel: rebuilding a service's messaging 20 s after every
/// recovered blip would be noise. lapin fails the confirm with the
/// connection, so its waiter ends without a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_lost_with_a_recovered_connection_is_not_a_stall() {
    let rig = Rig::new().await;
    let echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 1).await;
    let faults = Arc::new(Faults::default());
    let cut = CancellationToken::new();
    let (transport, client, target) = through_proxy(&rig, "blip", &faults, cut.clone()).await;

    let published = cast_and_give_up(&faults, &client, &target).await;
    // The connection drops with the confirm outstanding; lapin reconnects
    // through the proxy, which passes confirms again.
    faults.swallow_confirms.store(false, SeqCst);
    cut.cancel();
    wait_reconnected(&transport).await;
    let stalled = tokio::time::timeout(
        Duration::from_secs(25).saturating_sub(published.elapsed()),
        transport.lost().cancelled(),
    )
    .await;
    assert!(
        stalled.is_err(),
        "declared lost {:?} after a publish whose connection recovered",
        published.elapsed()
    );

    finish_proxied(transport, rig, echo).await;
}

/// A server stops even when the broker no longer hears its connection: the
/// consumer's cancel and the channel's close go unanswered, and each is
/// given up after 20 s (`consume::answered`). Before, each waited until the
/// connection failed, and a run's drain — what a service's rebuild after a
/// lost connection waits for — could wait for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_broker_stops_answering_still_stops() {
    let faults = Arc::new(Faults::default());
    let rig = Rig::new().await;
    let (transport, client, target) =
        through_proxy(&rig, "mute", &faults, CancellationToken::new()).await;
    let echo = serve_on(&rig, &transport, &client, &target).await;

    faults.mute_client.store(true, SeqCst);
    // Two answers of 20 s each at most (sooner, and something was not
    // waited for); the broker itself gives a silent client twice its
    // heartbeat (60 s) before it closes the connection.
    waits_then_ends(
        "the server stops without the broker's answers",
        Instant::now(),
        Duration::from_secs(19)..Duration::from_secs(55),
        echo.stop(),
    )
    .await;

    drop(client);
    transport.close().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// The rig's echo server (capacity 1, so prefetch 1) on a transport
/// through a [`faulty_proxy`] whose idle consumers renew their channel after
/// `renew_ms`, once it answered the rig's own client (on a connection of its
/// own, which the proxy does not touch) and its endpoint saw that call.
async fn renewing_server(
    rig: &Rig,
    faults: &Arc<Faults>,
    renew_ms: u64,
) -> (Transport, RpcClient, Target, EchoServer) {
    let port = faulty_proxy(Arc::clone(faults), CancellationToken::new()).await;
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        renew_idle_consumers_ms: renew_ms,
        ..rig.config.clone()
    };
    let transport = Transport::connect(&config, "renewing", &rig.id)
        .await
        .expect("connects through the proxy");
    let client = RpcClient::new(&rig.transport).await.expect("client");
    let target = Target::topic(rig.exchange(), "echo");
    let mut echo = serve_on(rig, &transport, &client, &target).await;
    assert_eq!(support::recv(&mut echo.seen).await, "heard");
    (transport, client, target, echo)
}

/// A request the broker delivered that never reached the server fills the
/// server's one prefetch slot: nothing more would ever be delivered to it.
/// Idle for 2 s with nothing unsettled, the consumer renews its channel,
/// and the broker gives the request back to the queue and delivers it on
/// the new one. Before, the call waited out its 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_never_arrived_comes_back_when_the_idle_consumer_renews_its_channel() {
    let rig = Rig::new().await;
    let faults = Arc::new(Faults::default());
    let (transport, client, target, mut echo) = renewing_server(&rig, &faults, 2_000).await;

    faults.swallow_deliveries.store(true, SeqCst);
    let sent = Instant::now();
    let request = text("swallowed");
    let call = client.call::<_, SayReply>(&target, "say", &request, Duration::from_secs(30));
    let swallowed_one = async {
        tokio::time::timeout(Duration::from_secs(10), faults.swallowed.notified())
            .await
            .expect("the proxy swallowed the request's delivery");
        faults.swallow_deliveries.store(false, SeqCst);
    };
    let (answer, ()) = tokio::join!(call, swallowed_one);
    let answer = answer.expect("answered once the idle consumer renewed its channel");
    assert_eq!(answer.text, "swallowed");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "answered after {:?}, before the consumer was idle for 2 s",
        sent.elapsed()
    );
    assert_eq!(support::recv(&mut echo.seen).await, "swallowed");
    assert!(echo.seen.try_recv().is_err(), "handled once");

    finish_proxied(transport, rig, echo).await;
}

/// A consumer that holds a delivery it has not settled is not idle, however
/// long the work takes: its channel stays, and the request is handled once.
/// (Renewed mid-work, the request would go back to the queue and be handled
/// again after the first run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_holding_an_unsettled_delivery_keeps_its_channel() {
    let rig = Rig::new().await;
    let faults = Arc::new(Faults::default());
    let (transport, client, target, mut echo) = renewing_server(&rig, &faults, 1_000).await;

    let slow = SayRequest {
        text: "slow".into(),
        wait_ms: 3_500,
    };
    let answer: SayReply = client
        .call(&target, "say", &slow, Duration::from_secs(30))
        .await
        .expect("the slow call is answered");
    assert_eq!(answer.text, "slow");
    let after: SayReply = client
        .call(&target, "say", &text("after"), Duration::from_secs(30))
        .await
        .expect("the next call is answered");
    assert_eq!(after.text, "after");
    assert_eq!(support::recv(&mut echo.seen).await, "slow");
    assert_eq!(
        support::recv(&mut echo.seen).await,
        "after",
        "the slow request was handled twice"
    );

    finish_proxied(transport, rig, echo).await;
}

/// A renewal the broker never answers (it no longer hears the client, as
/// when the client's node is cut off) does not hold up the server's stop,
/// which is what a service's rebuild waits for. Before, the consumer waited
/// for its new channel with no bound and never ended (the cluster test's
/// api and collectors in CI, 2026-12-05: "a consumer has not ended").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_the_broker_never_answers_does_not_hold_up_the_stop() {
    let rig = Rig::new().await;
    let faults = Arc::new(Faults::default());
    let (transport, client, _target, echo) = renewing_server(&rig, &faults, 1_000).await;

    faults.mute_client.store(true, SeqCst);
    tokio::time::timeout(
        Duration::from_secs(10),
        faults.muted_channel_open.notified(),
    )
    .await
    .expect("the idle consumer started to renew its channel");
    // The instance consumers' cancels and then the channels' closes go
    // unanswered, 20 s each at most; sooner than the 60 s after which the
    // broker closes a silent connection, which the stop must not need.
    waits_then_ends(
        "the server stops while its renewal goes unanswered",
        Instant::now(),
        Duration::ZERO..Duration::from_secs(55),
        echo.stop(),
    )
    .await;

    drop(client);
    transport.close().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// A renewal whose old channel never closes (the broker does not hear the
/// close, so it keeps that channel's consumer and whatever it counted as
/// delivered there, while the client reads it no more) declares the
/// connection lost within the close's bound: the service rebuilds on a
/// fresh connection, which is what gives that window back. Before, the
/// consumer went on "consuming on the old one", a channel lapin was
/// closing, and the connection lived on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_channel_that_never_closes_after_a_renewal_declares_the_connection_lost() {
    renewal_declares_lost(
        |faults| &faults.swallow_channel_close,
        |faults| &faults.swallowed_close,
        "the old channel's close",
    )
    .await;
}

/// A renewal the broker does not answer, on a connection that still looks
/// up, declares the connection lost: the broker may already count a
/// consumer on the fresh channel, which nobody would read. Before, the
/// consumer went on consuming on the old channel after 20 s, and the
/// connection lived on until the broker missed its heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_the_broker_does_not_answer_declares_the_connection_lost() {
    renewal_declares_lost(
        |faults| &faults.mute_client,
        |faults| &faults.muted_channel_open,
        "the renewal's channel.open",
    )
    .await;
}

/// A renewing server whose proxy has the `fault` switched on once it
/// answered: waits (10 s at most) until the proxy drops `dropped` (a frame
/// of an idle consumer's renewal, told of by `told`), then until the
/// server's transport is declared lost, which must happen within 30 s of
/// it; then the server must stop within 45 s.
async fn renewal_declares_lost(
    fault: fn(&Faults) -> &AtomicBool,
    told: fn(&Faults) -> &Notify,
    dropped: &str,
) {
    let rig = Rig::new().await;
    let faults = Arc::new(Faults::default());
    let (transport, client, _target, echo) = renewing_server(&rig, &faults, 1_000).await;

    fault(&faults).store(true, SeqCst);
    tokio::time::timeout(Duration::from_secs(10), told(&faults).notified())
        .await
        .unwrap_or_else(|_| panic!("the idle consumer renewed: the proxy dropped {dropped}"));
    let since = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), transport.lost().cancelled())
        .await
        .unwrap_or_else(|_| panic!("the connection was not declared lost 30 s after {dropped}"));
    eprintln!(
        "declared lost {:.1} s after {dropped}",
        since.elapsed().as_secs_f64()
    );
    fault(&faults).store(false, SeqCst);

    drop(client);
    tokio::time::timeout(
        Duration::from_secs(45),
        finish_proxied(transport, rig, echo),
    )
    .await
    .expect("the server stops once its connection was declared lost");
}
