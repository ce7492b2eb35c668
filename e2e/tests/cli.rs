//! The `switchyard` command line against a running fleet: samples from JSON
//! and CSV files, meters, statistics, alarms, the rollout table.

mod support;

use support::{Fleet, FleetOptions, switchyard, text};

/// The statistics of the samples the test posted: one bucket over all time.
const STATS: &[&str] = &[
    "stats",
    "--meter",
    "disk_io",
    "--project",
    "cli",
    "--period",
    "0",
];

/// Runs `switchyard args` against `api`, asserts it succeeded, and returns
/// what it printed.
fn succeeds(api: &str, args: &[&str]) -> String {
    let output = switchyard(api, args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    text(&output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_posts_files_and_reads_the_pipeline_back() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let api = fleet.api.as_ref().expect("api").url();
    let json = fleet.dir.join("samples.json");
    std::fs::write(
        &json,
        r#"[{"meter": "disk_io", "unit": "B", "volume": 10, "resource_id": "vm-1", "project_id": "cli"},
            {"meter": "disk_io", "unit": "B", "volume": 30, "resource_id": "vm-1", "project_id": "cli", "id": "fixed-1"}]"#,
    )
    .expect("write");
    let csv = fleet.dir.join("samples.csv");
    std::fs::write(
        &csv,
        "disk_io,B,20,vm-2,cli\ndisk_io,B,40,vm-2,cli,fixed-2\n",
    )
    .expect("write");

    for file in [&json, &csv] {
        let posted = succeeds(
            &api,
            &["samples", "post", "--file", file.to_str().expect("utf-8")],
        );
        assert!(posted.contains("posted 2 samples"), "{posted}");
    }
    // Posting the file with fixed ids again stores nothing new for those.
    succeeds(
        &api,
        &["samples", "post", "--file", csv.to_str().expect("utf-8")],
    );
    fleet.wait_stored(5).await;

    let meters = succeeds(&api, &["meters", "--project", "cli"]);
    assert!(
        meters
            .lines()
            .any(|l| l.starts_with("disk_io") && l.trim_end().ends_with(" 5")),
        "{meters}"
    );
    let stats = succeeds(&api, STATS);
    assert!(stats.contains(" 5 "), "five samples in one bucket: {stats}");

    succeeds(
        &api,
        &[
            "alarms",
            "create",
            "--name",
            "busy-disk",
            "--meter",
            "disk_io",
            "--project",
            "cli",
            "--threshold",
            "1",
        ],
    );
    let listed = succeeds(&api, &["alarms", "list", "--project", "cli"]);
    assert!(listed.contains("busy-disk"), "{listed}");

    // Heartbeats arrive every 300 ms; wait (bounded) until all three are in.
    let started = std::time::Instant::now();
    loop {
        let rollout = text(&switchyard(&api, &["rollout"]));
        let all = [
            ("api", "async"),
            ("collector", "threaded"),
            ("notifier", "bridged"),
        ]
        .iter()
        .all(|(service, phase)| {
            rollout
                .lines()
                .any(|l| l.starts_with(service) && l.contains(phase) && l.contains(" up "))
        });
        if all {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "not every service in its phase:\n{rollout}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let broken = fleet.dir.join("broken.json");
    std::fs::write(&broken, r#"[{"meter": "x"}]"#).expect("write");
    let refused = switchyard(
        &api,
        &["samples", "post", "--file", broken.to_str().expect("utf-8")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("expected a JSON array of samples"),
        "{}",
        text(&refused)
    );

    // Failures for scripts: `CODE: message` and an exit status per class.
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let missing = switchyard(&api, &["alarms", "history", "no-such-alarm"]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing));
    assert!(
        stderr(&missing).starts_with("switchyard: NOT_FOUND: "),
        "{}",
        stderr(&missing)
    );
    let invalid = switchyard(&api, &["stats", "--meter", "disk_io", "--meter", ""]);
    assert_eq!(invalid.status.code(), Some(5), "{}", text(&invalid));
    assert!(
        stderr(&invalid).starts_with("switchyard: INVALID_ARGUMENT: field `meters[1]`"),
        "{}",
        stderr(&invalid)
    );
    let unreachable = switchyard("http://127.0.0.1:1", &["meters"]);
    assert_eq!(unreachable.status.code(), Some(3), "{}", text(&unreachable));

    // For scripts: listings as JSON, tables without trailing blanks, and
    // completions for the shells.
    let json = |args: &[&str]| {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let output = switchyard(&api, &all);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&output)))
    };
    let meters = json(&["meters", "--project", "cli"]);
    assert_eq!(meters[0]["name"], "disk_io", "{meters}");
    // Created after the samples and evaluated only when more come: its
    // state named as webhook bodies name it (docs/wire-format.md).
    let alarms = json(&["alarms", "list", "--project", "cli"]);
    assert_eq!(alarms[0]["state"], "insufficient_data", "{alarms}");
    let rollout = json(&["rollout"]);
    let services: std::collections::BTreeSet<&str> = rollout
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|i| i["service"].as_str())
        .collect();
    assert_eq!(
        services,
        ["api", "collector", "notifier"].into_iter().collect(),
        "{rollout}"
    );
    let stats = json(STATS);
    assert!(
        stats["meters"][0]["buckets"][0]["count"].as_u64().is_some(),
        "{stats}"
    );
    for args in [&["rollout"][..], &["alarms", "list"], &["meters"]] {
        let table = switchyard(&api, args);
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(
            table.lines().all(|line| !line.ends_with(' ')),
            "{args:?} has trailing blanks:\n{table:?}"
        );
    }
    let completions = switchyard(&api, &["completions", "bash"]);
    assert!(completions.status.success());
    assert!(
        String::from_utf8_lossy(&completions.stdout).contains("_switchyard()"),
        "{}",
        text(&completions)
    );
}
