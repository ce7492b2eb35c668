//! Bad input and access, on the real binaries: every bad field is named, the
//! public API wants its bearer token, secrets never leak.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Fleet, FleetOptions, sample};
use switchyard_proto::metering::v1::*;
use switchyard_telemetry::receiver::OtlpReceiver;
use switchyard_testkit::reflected_services;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let mut client = fleet.client().await;
    let mut future = sample("f".into(), 1.0);
    future.timestamp = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    let cases: Vec<(Vec<Sample>, &str)> = vec![
        (vec![sample("a".into(), f64::NAN)], "samples[0].volume"),
        (vec![sample("a".into(), f64::INFINITY)], "samples[0].volume"),
        (
            vec![Sample {
                meter: String::new(),
                ..sample("a".into(), 1.0)
            }],
            "samples[0].meter",
        ),
        (
            vec![Sample {
                meter: "m".repeat(300),
                ..sample("a".into(), 1.0)
            }],
            "samples[0].meter",
        ),
        (
            vec![sample("ok".into(), 1.0), future],
            "samples[1].timestamp",
        ),
        (
            (0..1001).map(|i| sample(format!("b{i}"), 1.0)).collect(),
            "samples",
        ),
        (vec![], "samples"),
    ];
    for (samples, field) in cases {
        let status = client
            .post_samples(PostSamplesRequest { samples })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(&format!("field `{field}`")),
            "{field}: {}",
            status.message()
        );
    }
    let unknown_enum = client
        .create_alarm(CreateAlarmRequest {
            alarm: Some(Alarm {
                name: "x".into(),
                meter: "cpu_util".into(),
                statistic: 99,
                comparison: Comparison::Gt as i32,
                period_seconds: 60,
                evaluation_periods: 1,
                ..Alarm::default()
            }),
        })
        .await
        .expect_err("refused");
    assert_eq!(
        unknown_enum.code(),
        Code::InvalidArgument,
        "{unknown_enum:?}"
    );
    assert!(
        unknown_enum.message().contains("field `alarm.statistic`"),
        "{}",
        unknown_enum.message()
    );
    let no_meter = client
        .get_statistics(GetStatisticsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(no_meter.code(), Code::InvalidArgument);
    assert!(no_meter.message().contains("field `meter`"));
    let missing = client
        .get_alarm(GetAlarmRequest {
            id: "alarm-nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_requires_a_bearer_token_when_configured() {
    let token = "a-token-long-enough-0123456789";
    let fleet = Fleet::start(FleetOptions {
        api_extra: support::api_token(token),
        ..FleetOptions::default()
    })
    .await;
    let mut client = fleet.client().await;
    let anonymous = client
        .list_meters(ListMetersRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    for presented in ["Bearer wrong-token-0123456789", "Basic Zm9vOmJhcg=="] {
        let mut request = tonic::Request::new(ListMetersRequest::default());
        request
            .metadata_mut()
            .insert("authorization", presented.parse().expect("ascii"));
        let refused = client.list_meters(request).await.expect_err("refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{presented}");
        assert!(
            !refused.message().contains("wrong-token"),
            "the presented token is not echoed"
        );
    }
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut request = tonic::Request::new(ListMetersRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {token}").parse().expect("ascii"),
        );
        client
            .list_meters(request)
            .await
            .expect("accepted, whatever the scheme's case");
    }

    // Reflection: behind the token, and listing exactly what the api serves.
    let channel = tonic::transport::Endpoint::from_shared(fleet.api.as_ref().expect("api").url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let anonymous = reflected_services(channel.clone(), None)
        .await
        .expect_err("reflection without a token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let names = reflected_services(channel, Some(&format!("Bearer {token}")))
        .await
        .expect("reflection with the token");
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "switchyard.metering.v1.Metering",
        ],
        "only the public services, not the internal ones"
    );
}

/// A RabbitMQ user with a secret password, removed when dropped.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn create(name: &str, password: &str) -> Self {
        support::rabbitmqctl(&["add_user", name, password]);
        support::rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        Self {
            name: name.to_string(),
        }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_printed_config_errors_or_traces() {
    let id = switchyard_messaging::wire::new_id();
    let amqp_secret = format!("amqp-secret-{id}");
    let db_secret = format!("db-secret-{id}");
    let token = format!("token-secret-{id}");
    let user = BrokerUser::create(&format!("sy-{id}"), &amqp_secret);
    let amqp_url = format!("amqp://{}:{amqp_secret}@127.0.0.1:5672/%2f", user.name);
    let secrets = [amqp_secret.as_str(), db_secret.as_str(), token.as_str()];

    // --print-config and configuration errors.
    for service in ["api", "collector", "notifier"] {
        let mut command = Command::new(support::binary(&format!("switchyard-{service}")));
        command
            .current_dir(std::env::temp_dir())
            .env("SWITCHYARD_AMQP__URL", &amqp_url)
            .env("SWITCHYARD_API__AUTH_TOKENS", format!("[\"{token}\"]"))
            .env(
                "SWITCHYARD_STORAGE__URL",
                format!("postgres://root:{db_secret}@127.0.0.1:5432/test"),
            );
        let printed = command.arg("--print-config").output().expect("runs");
        let printed = String::from_utf8_lossy(&printed.stdout).into_owned()
            + &String::from_utf8_lossy(&printed.stderr);
        // Each service refuses the keys that are not its own; either way no secret is shown.
        for secret in secrets {
            assert!(
                !printed.contains(secret),
                "{service} --print-config shows a secret:\n{printed}"
            );
        }
        let refused = Command::new(support::binary(&format!("switchyard-{service}")))
            .current_dir(std::env::temp_dir())
            .env(
                "SWITCHYARD_AMQP__URL",
                format!("http://{}:{amqp_secret}@127.0.0.1/", user.name),
            )
            .env(
                "SWITCHYARD_STORAGE__URL",
                format!("mysql://root:{db_secret}@127.0.0.1/x"),
            )
            .arg("--check-config")
            .output()
            .expect("runs");
        assert_eq!(refused.status.code(), Some(2));
        let text = String::from_utf8_lossy(&refused.stderr);
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{service}'s config error shows a secret:\n{text}"
            );
        }
        assert!(text.contains("amqp.url"), "{text}");
    }
    let collector_print = Command::new(support::binary("switchyard-collector"))
        .current_dir(std::env::temp_dir())
        .env("SWITCHYARD_AMQP__URL", &amqp_url)
        .arg("--print-config")
        .output()
        .expect("runs");
    let collector_print = String::from_utf8_lossy(&collector_print.stdout);
    assert!(
        collector_print.contains(&format!("amqp://{}:***@127.0.0.1:5672/%2f", user.name)),
        "{collector_print}"
    );
    assert!(
        collector_print.contains("listen = \"127.0.0.1:50052\""),
        "internal gRPC binds loopback by default"
    );

    // A running fleet with those secrets: logs and spans.
    let receiver = OtlpReceiver::loopback().await.expect("receiver");
    let fleet = Fleet::start(FleetOptions {
        otlp: Some(receiver.endpoint()),
        extra: vec![("SWITCHYARD_AMQP__URL".into(), amqp_url.clone())],
        api_extra: support::api_token(&token),
        ..FleetOptions::default()
    })
    .await;
    let mut client = fleet.client().await;
    let mut request = tonic::Request::new(PostSamplesRequest {
        samples: vec![sample(format!("{id}-s"), 1.0)],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    client.post_samples(request).await.expect("posted");
    let mut anonymous = tonic::Request::new(ListMetersRequest::default());
    anonymous.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token-0000000".parse().expect("ascii"),
    );
    let _ = client.list_meters(anonymous).await;
    fleet.wait_stored(1).await;
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.service == "collector")
        })
        .await
        .unwrap_or_else(|spans| spans);
    let traced = format!("{spans:?}");
    let logs: String = [&fleet.api, &fleet.collector, &fleet.notifier]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| s.log_text()))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in secrets {
        assert!(!logs.contains(secret), "a log shows a secret");
        assert!(!traced.contains(secret), "a span shows a secret");
    }
    drop(fleet);
    drop(user);
}
