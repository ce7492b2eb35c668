//! The metering pipeline end to end: three real binaries in three phases on
//! the real RabbitMQ and PostgreSQL. Samples produce the right statistics, an
//! alarm fires and its webhook is called once, one trace crosses all three
//! services with each span saying its phase, and a service restarted into
//! another phase under load loses and duplicates nothing.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use support::{BOUND, Fleet, FleetOptions, Webhook, sample};
use switchyard_proto::metering::v1::metering_client::MeteringClient;
use switchyard_proto::metering::v1::*;
use switchyard_telemetry::receiver::{OtlpReceiver, ReceivedSpan};
use tonic::transport::Channel;

async fn statistics(client: &mut MeteringClient<Channel>) -> Statistics {
    let request = GetStatisticsRequest {
        meter: "cpu_util".into(),
        period_seconds: 0,
        ..support::statistics_this_hour()
    };
    // A caller with a deadline: the api passes what is left on to the collector.
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    let buckets = client
        .get_statistics(request)
        .await
        .expect("statistics")
        .into_inner()
        .buckets;
    buckets.into_iter().next().unwrap_or_default()
}

/// Waits until the statistics count `expected` samples.
async fn wait_for_count(client: &mut MeteringClient<Channel>, expected: u64) -> Statistics {
    let started = Instant::now();
    loop {
        let stats = statistics(client).await;
        if stats.count == expected {
            return stats;
        }
        assert!(
            stats.count < expected,
            "more samples stored than posted: {} > {expected}",
            stats.count
        );
        assert!(
            started.elapsed() < BOUND,
            "only {} of {expected} samples stored",
            stats.count
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_in_three_phases() {
    let receiver = OtlpReceiver::loopback().await.expect("receiver");
    let webhook = Webhook::start().await;
    let mut fleet = Fleet::start(FleetOptions {
        otlp: Some(receiver.endpoint()),
        ..FleetOptions::default()
    })
    .await;
    let id = fleet.id.clone();
    let log = |service: &Option<support::Service>| {
        service.as_ref().map(|s| s.log_text()).unwrap_or_default()
    };
    let mut client = fleet.client().await;

    // An alarm that fires once the average passes 50.
    let alarm = client
        .create_alarm(CreateAlarmRequest {
            alarm: Some(Alarm {
                project_id: "e2e".into(),
                threshold: 50.0,
                ..support::hot_alarm(webhook.url.clone())
            }),
        })
        .await
        .expect("alarm created")
        .into_inner();

    // 200 samples in one batch, so the alarm is evaluated once; volumes
    // 0..199: count 200, min 0, max 199, avg 99.5, sum 19900.
    let samples: Vec<Sample> = (0..200)
        .map(|n| sample(format!("{id}-{n}"), f64::from(n)))
        .collect();
    let ids = client
        .post_samples(PostSamplesRequest { samples })
        .await
        .expect("posted")
        .into_inner()
        .ids;
    let mut posted: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(posted.len(), 200, "client-supplied ids are kept");
    let stats = wait_for_count(&mut client, 200).await;
    assert_eq!((stats.min, stats.max, stats.sum), (0.0, 199.0, 19900.0));
    assert!((stats.avg - 99.5).abs() < 1e-9, "avg {}", stats.avg);

    // The alarm fires, and its webhook is called once for that transition.
    let started = Instant::now();
    while webhook.received().is_empty() {
        assert!(
            started.elapsed() < BOUND,
            "the webhook was never called; notifier log:\n{}",
            log(&fleet.notifier)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = client
        .get_alarm_history(GetAlarmHistoryRequest {
            id: alarm.id.clone(),
        })
        .await
        .unwrap_or_else(|status| {
            panic!(
                "history: {status:?}\nnotifier log:\n{}\napi log:\n{}",
                log(&fleet.notifier),
                log(&fleet.api)
            )
        })
        .into_inner()
        .transitions;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].to, AlarmState::Alarm as i32, "{history:?}");
    // More samples above the threshold keep it in alarm: no second call.
    client
        .post_samples(PostSamplesRequest {
            samples: vec![sample(format!("{id}-extra"), 90.0)],
        })
        .await
        .expect("posted");
    posted.insert(format!("{id}-extra"));
    wait_for_count(&mut client, 201).await;
    // The notifier's second evaluation (of the extra batch's
    // `sample.recorded`) has ended: a transition it made would be in the
    // history now, since it records one before its span ends.
    let evaluations = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .filter(|s| s.service == "notifier" && s.name == "dispatch evaluate_alarms")
            .count()
    };
    receiver
        .wait_for(BOUND, |spans| evaluations(spans) >= 2)
        .await
        .unwrap_or_else(|spans| {
            panic!(
                "the extra batch was never evaluated ({} evaluations); notifier log:\n{}",
                evaluations(&spans),
                log(&fleet.notifier)
            )
        });
    let history = client
        .get_alarm_history(GetAlarmHistoryRequest {
            id: alarm.id.clone(),
        })
        .await
        .expect("history")
        .into_inner()
        .transitions;
    assert_eq!(
        history.len(),
        1,
        "still in alarm, no transition: {history:?}"
    );
    let calls = webhook.received();
    assert_eq!(calls.len(), 1, "one call per transition: {calls:?}");
    assert!(
        calls[0].contains("\"current\":\"alarm\"") && calls[0].contains(&alarm.id),
        "{}",
        calls[0]
    );

    // One trace crosses all three services, each span with its phase.
    let phases = [
        ("api", "async"),
        ("collector", "threaded"),
        ("notifier", "bridged"),
    ];
    let spans = receiver
        .wait_for(BOUND, |spans| {
            spans.iter().any(|root| {
                phases.iter().all(|(service, _)| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == root.trace_id && s.service == *service)
                })
            })
        })
        .await
        .unwrap_or_else(|spans| {
            panic!("no trace crossed all three services; {} spans", spans.len())
        });
    let trace = spans
        .iter()
        .find(|root| {
            phases.iter().all(|(service, _)| {
                spans
                    .iter()
                    .any(|s| s.trace_id == root.trace_id && s.service == *service)
            })
        })
        .map(|s| s.trace_id.clone())
        .expect("a crossing trace");
    for span in spans.iter().filter(|s| s.trace_id == trace) {
        let expected = phases
            .iter()
            .find(|(service, _)| *service == span.service)
            .map(|(_, p)| *p);
        assert_eq!(
            span.resource.get("switchyard.phase").map(String::as_str),
            expected,
            "{span:?}"
        );
        if span.name.starts_with("dispatch ") {
            assert_eq!(
                span.attributes.get("switchyard.phase").map(String::as_str),
                expected,
                "{span:?}"
            );
        }
    }

    // The api's call to the collector is a CLIENT span (RPC conventions),
    // the parent of the collector's server span, and it carried the rest
    // of the caller's deadline (10 s) as `grpc-timeout`.
    let query = "switchyard.collector.v1.SampleQuery/GetStatistics";
    let under =
        |spans: &[ReceivedSpan], parent: &str| spans.iter().any(|s| s.parent_span_id == parent);
    let spans = receiver
        .wait_for(BOUND, |spans| {
            spans.iter().any(|c| {
                c.service == "api"
                    && c.name == query
                    && spans
                        .iter()
                        .any(|s| s.parent_span_id == c.span_id && under(spans, &s.span_id))
            })
        })
        .await
        .unwrap_or_else(|_| {
            panic!("no api CLIENT span `{query}` with the collector's spans under it")
        });
    let client_span = spans
        .iter()
        .find(|c| {
            c.service == "api"
                && c.name == query
                && spans
                    .iter()
                    .any(|s| s.parent_span_id == c.span_id && under(&spans, &s.span_id))
        })
        .unwrap_or_else(|| panic!("no CLIENT span `{query}` from the api"));
    assert_eq!(client_span.kind, "client");
    assert_eq!(client_span.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(client_span.attribute("server.address"), Some("127.0.0.1"));
    let server_span = spans
        .iter()
        .find(|s| s.parent_span_id == client_span.span_id)
        .unwrap_or_else(|| panic!("the collector's span is not under the api's {client_span:?}"));
    assert_eq!(
        (
            server_span.service.as_str(),
            server_span.name.as_str(),
            server_span.kind
        ),
        ("collector", query, "server")
    );
    let dispatch = spans
        .iter()
        .find(|s| s.parent_span_id == server_span.span_id)
        .unwrap_or_else(|| panic!("no dispatch under {server_span:?}"));
    let left: u64 = dispatch
        .attribute("switchyard.deadline_ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| {
            panic!("the caller's deadline did not reach the collector: {dispatch:?}")
        });
    assert!(left > 0 && left <= 10_000, "{left} ms");

    // Restart the collector into the async phase while samples keep coming.
    let posting = Arc::new(AtomicBool::new(true));
    let load = {
        let (posting, mut client, id) = (Arc::clone(&posting), client.clone(), id.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut n = 0;
            while posting.load(SeqCst) {
                let sample_id = format!("{id}-load-{n}");
                n += 1;
                // Retrying an idempotent request: the id makes it safe.
                let started = Instant::now();
                while client
                    .post_samples(PostSamplesRequest {
                        samples: vec![sample(sample_id.clone(), 10.0)],
                    })
                    .await
                    .is_err()
                {
                    assert!(started.elapsed() < BOUND, "{sample_id} never accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent.push(sample_id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };
    // Stopped mid-load: once the load's first samples are stored.
    let before = fleet.stored().await.1 as usize;
    fleet.wait_stored_at_least(before + 10).await;
    let stopped = fleet.collector.take().expect("collector").stop();
    assert_eq!(stopped, 0, "the collector drained and exited cleanly");
    // Same port: the api and the notifier reach the new instance unchanged.
    fleet.start_collector("async");
    // The new collector stores what keeps coming.
    let at_restart = fleet.stored().await.1 as usize;
    fleet.wait_stored_at_least(at_restart + 10).await;
    posting.store(false, SeqCst);
    let sent = load.await.expect("load finished");
    assert!(!sent.is_empty());
    posted.extend(sent);

    fleet
        .wait_for_rows("collector", true, |rows| {
            rows.iter().any(|i| i.phase == "async")
        })
        .await;
    // Every acknowledged sample stored, none twice (rows against distinct ids).
    fleet.wait_stored(posted.len()).await;
    let spans = receiver
        .wait_for(BOUND, |spans| {
            spans.iter().any(|s| {
                s.service == "collector"
                    && s.name == "dispatch record_samples"
                    && s.attribute("switchyard.phase") == Some("async")
            })
        })
        .await
        .unwrap_or_else(|_| panic!("no collector span in the async phase"));
    // The collector's endpoints are written both ways: in `async` the async
    // form runs, as a task, and the span says so.
    let in_async: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.service == "collector"
                && s.name == "dispatch record_samples"
                && s.attribute("switchyard.phase") == Some("async")
        })
        .collect();
    assert!(
        in_async.iter().all(|s| {
            s.attribute("switchyard.endpoint.kind") == Some("async")
                && s.attribute("switchyard.offloaded") != Some("true")
        }),
        "{in_async:#?}"
    );
}
