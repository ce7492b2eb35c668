//! Endpoints in both forms: the collector's endpoints are written blocking
//! and async side by side. `--check-config` says which form each phase runs;
//! statistics for many meters come back the same from the blocking form
//! (`threaded`, one query after another) and the async form (`async`,
//! queries at once), and the rollout table says which form ran, with nothing
//! offloaded in `async`.

mod support;

use std::process::Command;
use std::time::Instant;

use support::{BOUND, Fleet, FleetOptions, sample};
use switchyard_proto::metering::v1::metering_client::MeteringClient;
use switchyard_proto::metering::v1::*;
use tonic::transport::Channel;

const METERS: usize = 16;

fn check_config(phase: &str) -> String {
    let output = Command::new(support::binary("switchyard-collector"))
        .current_dir(std::env::temp_dir())
        .env("SWITCHYARD_EXECUTOR__PHASE", phase)
        .arg("--check-config")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_config_says_which_form_each_phase_runs() {
    let threaded = check_config("threaded");
    assert!(
        threaded.contains(
            "record_samples: written both ways; the blocking form runs, on a pool thread"
        ),
        "{threaded}"
    );
    let asynchronous = check_config("async");
    for endpoint in [
        "record_samples",
        "SampleQuery/ListMeters",
        "SampleQuery/GetStatistics",
    ] {
        assert!(
            asynchronous.contains(&format!(
                "{endpoint}: written both ways; the async form runs, as a task"
            )),
            "{asynchronous}"
        );
    }
}

fn meters(id: &str) -> Vec<String> {
    (0..METERS).map(|i| format!("forms.{id}.{i:02}")).collect()
}

async fn statistics(client: &mut MeteringClient<Channel>, meters: &[String]) -> Vec<(String, u64)> {
    let answer = client
        .get_statistics(GetStatisticsRequest {
            meters: meters.to_vec(),
            ..support::statistics_this_hour()
        })
        .await
        .expect("statistics")
        .into_inner();
    assert!(answer.buckets.is_empty());
    answer
        .by_meter
        .into_iter()
        .map(|m| (m.meter, m.buckets.iter().map(|b| b.count).sum()))
        .collect()
}

/// The collector's up instance in the rollout table, once `done` holds.
async fn collector_row(fleet: &Fleet, done: impl Fn(&InstanceStatus) -> bool) -> InstanceStatus {
    let rows = fleet
        .wait_for_rows("collector", true, |rows| rows.iter().any(&done))
        .await;
    rows.into_iter().find(done).expect("the row waited for")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forms_answer_the_same_and_the_async_one_offloads_nothing() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let mut client = fleet.client().await;
    let names = meters(&fleet.id);
    let samples = names
        .iter()
        .flat_map(|meter| {
            (0..3).map(move |n| Sample {
                meter: meter.clone(),
                ..sample(String::new(), n as f64)
            })
        })
        .collect();
    client
        .post_samples(PostSamplesRequest { samples })
        .await
        .expect("posted");
    fleet.wait_stored(METERS * 3).await;
    let expected: Vec<(String, u64)> = names.iter().map(|m| (m.clone(), 3)).collect();

    // threaded: the blocking form, one query after another.
    assert_eq!(statistics(&mut client, &names).await, expected);
    let row = collector_row(&fleet, |i| i.handled > 0).await;
    assert_eq!(row.phase, "threaded");
    assert!(
        !row.endpoint_forms.is_empty() && row.endpoint_forms.values().all(|f| f == "blocking"),
        "{row:?}"
    );

    // async: the async form, the 16 queries at once.
    assert_eq!(fleet.collector.take().expect("collector").stop(), 0);
    fleet.start_collector("async");
    let queried = Instant::now();
    assert_eq!(statistics(&mut client, &names).await, expected);
    eprintln!(
        "statistics for {METERS} meters from the async form: {:?}",
        queried.elapsed()
    );
    let row = collector_row(&fleet, |i| i.phase == "async" && i.handled > 0).await;
    assert!(
        row.endpoint_forms.len() == 3 && row.endpoint_forms.values().all(|f| f == "async"),
        "{row:?}"
    );
    assert_eq!(row.offloaded, 0, "the async form offloads nothing: {row:?}");

    // The multi-meter form checks its request where it runs.
    let refused = client
        .get_statistics(GetStatisticsRequest {
            meter: "one".into(),
            meters: vec!["two".into()],
            ..GetStatisticsRequest::default()
        })
        .await
        .expect_err("both given");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("`meters`"), "{refused:?}");
}

/// The notifier evaluates the alarms one batch touches at once: in the
/// batch's trace, the collector's statistics calls of those evaluations
/// overlap in time (one after another, none could).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarms_one_batch_touches_are_evaluated_at_once() {
    use switchyard_telemetry::receiver::{OtlpReceiver, find_span};
    const ALARMS: usize = 8;
    let receiver = OtlpReceiver::loopback().await.expect("receiver");
    let fleet = Fleet::start(FleetOptions {
        otlp: Some(receiver.endpoint()),
        ..FleetOptions::default()
    })
    .await;
    let mut client = fleet.client().await;
    let meter = format!("forms.{}.watched", fleet.id);
    for n in 0..ALARMS {
        client
            .create_alarm(CreateAlarmRequest {
                alarm: Some(Alarm {
                    name: format!("watch-{n}"),
                    meter: meter.clone(),
                    project_id: "e2e".into(),
                    ..support::hot_alarm(String::new())
                }),
            })
            .await
            .expect("alarm created");
    }
    client
        .post_samples(PostSamplesRequest {
            samples: vec![Sample {
                meter: meter.clone(),
                ..sample(String::new(), 1.0)
            }],
        })
        .await
        .expect("posted");
    const QUERY: &str = "switchyard.collector.v1.SampleQuery/GetStatistics";
    let spans = receiver
        .wait_for(BOUND, |spans| {
            spans
                .iter()
                .filter(|s| s.name == "dispatch evaluate_alarms")
                .any(|evaluation| {
                    spans
                        .iter()
                        .filter(|s| s.trace_id == evaluation.trace_id && s.name == QUERY)
                        .count()
                        >= ALARMS
                })
        })
        .await
        .unwrap_or_else(|spans| panic!("no evaluation of {ALARMS} alarms: {} spans", spans.len()));
    let evaluation = find_span(&spans, "dispatch evaluate_alarms").expect("evaluation");
    let mut queries: Vec<(u64, u64)> = spans
        .iter()
        .filter(|s| s.trace_id == evaluation.trace_id && s.name == QUERY)
        .map(|s| (s.start_unix_nanos, s.end_unix_nanos))
        .collect();
    queries.sort_unstable();
    assert!(
        queries.windows(2).any(|pair| pair[1].0 < pair[0].1),
        "the {} statistics calls ran one after another: {queries:?}",
        queries.len()
    );
}
