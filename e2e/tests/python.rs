//! The wire contract held by a client in another language: the Python
//! example (`examples/python/client.py`, pika and grpcio, written from the
//! documents only) runs every step against a real fleet behind a token.
//! `scripts/test` installs its packages into a virtual environment of its
//! own; `E2E_PYTHON` names that interpreter.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Fleet, FleetOptions, python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_written_from_the_documents_runs_every_step() {
    let token = format!("py-{}", switchyard_messaging::wire::new_id());
    let fleet = Fleet::start(FleetOptions {
        api_extra: support::api_token(&token),
        ..FleetOptions::default()
    })
    .await;
    let api = fleet.api.as_ref().expect("api").url();
    let address = api.trim_start_matches("http://").to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/client.py");

    let run = |token: &str| {
        let fleet_exchange = fleet.exchange.clone();
        let address = address.clone();
        let script = script.clone();
        let token = token.to_string();
        tokio::task::spawn_blocking(move || {
            Command::new(python())
                .arg(&script)
                .args(["--api", &address])
                .args(["--amqp", "amqp://guest:guest@127.0.0.1:5672/%2f"])
                .args(["--exchange", &fleet_exchange])
                .args(["--token", &token])
                .output()
                .expect("python runs")
        })
    };

    let output = run(&token).await.expect("joined");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    for step in [
        "ok   reflection v1alpha:",
        "ok   reflection v1:",
        "ok   health: SERVING",
        "ok   PostSamples:",
        "ok   create_alarm (AMQP call):",
        "ok   list_alarms (AMQP call):",
        "ok   get_alarm of an unknown id (AMQP call): REMOTE not_found",
        "ok   GetAlarm of an unknown id: NOT_FOUND",
        "ok   record_samples (AMQP cast):",
        "ok   record_samples without an id (AMQP cast): dead-lettered:",
        "ok   GetStatistics: count 5",
        "ok   sample.recorded (AMQP notification): 5 samples of",
        "all steps held",
    ] {
        assert!(stdout.contains(step), "no `{step}` in:\n{stdout}\n{stderr}");
    }
    // Reflection lists what the api serves, and only that.
    let listed = stdout
        .lines()
        .find(|l| l.starts_with("ok   reflection v1:"))
        .unwrap_or_default();
    assert!(
        !listed.contains("switchyard.collector.v1.SampleQuery"),
        "{listed}"
    );

    // The same client with a wrong token is refused at its first step.
    let refused = run("not-the-token-at-all").await.expect("joined");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
}
