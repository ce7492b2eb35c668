//! The compose deployment, checked without a Docker engine: the file is valid
//! compose, every service's environment is accepted by its real config
//! loader, every path it references exists, and the image builds and ships
//! every binary the deployment runs. Also: switch-phase refuses a phase the
//! service cannot run, changing nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

const SERVICES: [&str; 3] = ["api", "collector", "notifier"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn compose(args: &[&str]) -> std::process::Output {
    Command::new("docker-compose")
        .current_dir(root().join("deploy"))
        .args(["-f", "compose.yaml"])
        .args(args)
        // Defaults from the file, not from a developer's deploy/.env.
        .env("COLLECTOR_PHASE", "threaded")
        .env("NOTIFIER_PHASE", "bridged")
        .env("API_PHASE", "async")
        .output()
        .expect("docker-compose runs (scripts/test installs Debian's docker-compose)")
}

/// The compose file as docker-compose normalises it (env files merged in).
fn normalized() -> serde_yaml::Value {
    let output = compose(&["config"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::from_slice(&output.stdout).expect("compose config is YAML")
}

fn raw() -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join("deploy/compose.yaml")).expect("compose.yaml");
    serde_yaml::from_str(&text).expect("compose.yaml is YAML")
}

fn strings(value: &serde_yaml::Value) -> Vec<String> {
    match value {
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        serde_yaml::Value::String(one) => vec![one.clone()],
        _ => Vec::new(),
    }
}

#[test]
fn compose_file_is_valid() {
    make_secrets();
    let output = compose(&["config", "-q"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // With the offline file on top, only image sources change.
    let output = compose(&["-f", "compose.offline.yaml", "config"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let offline: serde_yaml::Value = serde_yaml::from_slice(&output.stdout).expect("YAML");
    for (service, image) in [
        ("rabbitmq", "switchyard/rabbitmq:dev"),
        ("postgres", "switchyard/postgres:dev"),
        ("jaeger", "switchyard:offline"),
        ("collector", "switchyard:offline"),
        ("notifier", "switchyard:offline"),
        ("api", "switchyard:offline"),
    ] {
        assert_eq!(
            offline["services"][service]["image"].as_str(),
            Some(image),
            "{service}"
        );
    }
}

#[test]
fn every_service_environment_passes_its_config_check() {
    make_secrets();
    let config = normalized();
    for (service, phase) in SERVICES.iter().zip(["async", "threaded", "bridged"]) {
        let definition = &config["services"][*service];
        let environment: BTreeMap<String, String> = definition["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .expect("scalar")
                        .trim()
                        .to_string(),
                };
                (k.as_str().expect("key").to_string(), value)
            })
            .collect();
        assert_eq!(
            environment
                .get("SWITCHYARD_EXECUTOR__PHASE")
                .map(String::as_str),
            Some(phase),
            "{service}"
        );
        check_config(
            &format!("switchyard-{service}"),
            Some(&root().join(format!("deploy/config/{service}.toml"))),
            &environment,
        )
        .unwrap_or_else(|refused| panic!("{service} refuses its compose environment:\n{refused}"));
    }
}

/// Runs `binary --check-config` (with `config` when given) in exactly
/// `environment` (no SWITCHYARD_ variable of the test's own). Each secret
/// mounted at /run/secrets/<name> (compose and the Kubernetes manifests
/// both do) is the file scripts/secrets made for it. `Err` holds stderr.
fn check_config(
    binary: &str,
    config: Option<&Path>,
    environment: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut command = Command::new(support::binary(binary));
    command.current_dir(std::env::temp_dir());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.arg("--check-config");
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") {
            command.env_remove(key);
        }
    }
    let secrets = root().join("deploy/secrets");
    command.envs(environment.iter().map(|(key, value)| {
        let value = match value.strip_prefix("/run/secrets/") {
            Some(name) if key.ends_with("_FILE") => {
                secrets.join(name).to_string_lossy().into_owned()
            }
            _ => value.clone(),
        };
        (key.clone(), value)
    }));
    let output = command.output().expect("binary runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Every document of every manifest in deploy/kubernetes/.
fn kubernetes_documents() -> Vec<(String, serde_yaml::Value)> {
    use serde::Deserialize as _;
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("manifest");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            documents.push((path.display().to_string(), value));
        }
    }
    documents
}

/// The Kubernetes manifests (not run here: no cluster): every document is
/// YAML with a kind; every container's command is a binary the image
/// ships, and its environment passes that binary's real configuration
/// check, with the secrets it mounts; the secret volume covers every
/// /run/secrets file the environment names.
#[test]
fn every_kubernetes_container_environment_passes_its_config_check() {
    make_secrets();
    let documents = kubernetes_documents();
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|(_, document)| document["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), documents.len(), "every document has a kind");
    for kind in ["Rollout", "AnalysisTemplate", "Service"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let workloads = documents.iter().filter(|(_, document)| {
        matches!(document["kind"].as_str(), Some("Rollout" | "Deployment"))
    });
    let mut checked = 0;
    for (file, workload) in workloads {
        let pod = &workload["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().expect("containers") {
            let binary = container["command"][0].as_str().expect("command");
            let environment: BTreeMap<String, String> = container["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .map(|variable| {
                    (
                        variable["name"].as_str().expect("name").to_string(),
                        variable["value"]
                            .as_str()
                            .expect("a literal value")
                            .to_string(),
                    )
                })
                .collect();
            for (key, value) in &environment {
                if key.ends_with("_FILE") {
                    assert!(
                        value.starts_with("/run/secrets/")
                            && pod["volumes"][0]["secret"]["secretName"].is_string(),
                        "{file}: {key} must name a file of the mounted secret"
                    );
                }
            }
            check_config(binary, None, &environment).unwrap_or_else(|refused| {
                panic!("{file}: {binary} refuses its environment:\n{refused}")
            });
            checked += 1;
        }
    }
    assert!(checked > 0, "no container checked");
}

/// The analysis template's queries name series the services really expose,
/// with the labels they select on: scraped from a running collector that
/// stored samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_template_queries_series_a_running_service_exposes() {
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let fleet = support::Fleet::start(support::FleetOptions {
        collector_extra: vec![("SWITCHYARD_METRICS__LISTEN".into(), metrics.clone())],
        ..Default::default()
    })
    .await;
    let (acknowledged, _) = support::post_steadily(
        fleet.client().await,
        format!("{}-k", fleet.id),
        2,
        5,
        std::time::Duration::from_millis(10),
    )
    .await;
    fleet.wait_stored(acknowledged.len()).await;
    let page = support::http_get_text(&metrics, "/metrics").await;

    let queries: Vec<String> = kubernetes_documents()
        .into_iter()
        .filter(|(_, document)| document["kind"].as_str() == Some("AnalysisTemplate"))
        .flat_map(|(_, template)| {
            template["spec"]["metrics"]
                .as_sequence()
                .expect("metrics")
                .iter()
                .map(|metric| {
                    metric["provider"]["prometheus"]["query"]
                        .as_str()
                        .expect("query")
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!queries.is_empty());
    for query in &queries {
        let names = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("switchyard_"));
        for name in names {
            let series = format!("{name}{{");
            let exposed = page.lines().find(|line| {
                line.starts_with(&series)
                    && line.contains("service=\"collector\"")
                    && line.contains("phase=\"threaded\"")
            });
            assert!(
                exposed.is_some(),
                "{name} with service and phase labels is not on the collector's page"
            );
        }
    }
}

/// The deployment's credentials (scripts/secrets: random, once, git-ignored).
fn make_secrets() {
    let status = Command::new(root().join("scripts/secrets"))
        .status()
        .expect("scripts/secrets runs");
    assert!(status.success(), "scripts/secrets");
}

#[test]
fn every_path_the_deployment_references_exists() {
    make_secrets();
    let deploy = root().join("deploy");
    let raw = raw();
    for (name, secret) in raw["secrets"].as_mapping().expect("secrets") {
        let file = secret["file"].as_str().expect("a file secret");
        assert!(
            deploy.join(file).is_file(),
            "secret {name:?}: {file} is missing"
        );
    }
    let config = normalized();
    for (name, definition) in raw["services"].as_mapping().expect("services") {
        let name = name.as_str().expect("name");
        for env_file in strings(&definition["env_file"]) {
            assert!(
                deploy.join(&env_file).is_file(),
                "{name}: env_file {env_file} is missing"
            );
        }
    }
    for service in SERVICES {
        let definition = &config["services"][service];
        let context = PathBuf::from(
            definition["build"]["context"]
                .as_str()
                .expect("build context"),
        );
        assert!(
            context.is_dir(),
            "{service}: build context {}",
            context.display()
        );
        let dockerfile = context.join(
            definition["build"]["dockerfile"]
                .as_str()
                .expect("dockerfile"),
        );
        assert!(dockerfile.is_file(), "{service}: {}", dockerfile.display());
        let command = strings(&definition["command"]);
        let mounted: Vec<String> = strings(&definition["volumes"]);
        let config_target = command
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .expect("--config in command");
        let mount = mounted
            .iter()
            .find(|m| m.split(':').nth(1) == Some(config_target.as_str()))
            .unwrap_or_else(|| panic!("{service}: nothing is mounted at {config_target}"));
        let source = mount.split(':').next().expect("source");
        assert!(
            Path::new(source).is_file(),
            "{service}: {source} is missing"
        );
    }
}

#[test]
fn the_image_builds_and_ships_every_binary_the_deployment_runs() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let built: Vec<String> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[0] == "-p")
        .map(|pair| pair[1].to_string())
        .collect();
    let shipped: Vec<String> = dockerfile
        .lines()
        .filter_map(|line| line.split("/target/release/").nth(1))
        .map(|rest| rest.split_whitespace().next().expect("binary").to_string())
        .collect();
    let metadata = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .expect("cargo metadata");
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("metadata json");
    let mut binaries_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let bins = package["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .map(|t| t["name"].as_str().expect("name").to_string())
            .collect();
        binaries_of.insert(package["name"].as_str().expect("name").to_string(), bins);
    }
    for package in &built {
        assert!(
            binaries_of.contains_key(package),
            "the Dockerfile builds {package}, which is not a workspace package"
        );
    }
    let built_binaries: Vec<&String> = built.iter().flat_map(|p| binaries_of[p].iter()).collect();
    for binary in &shipped {
        assert!(
            built_binaries.contains(&binary),
            "the image copies {binary}, which the build does not produce"
        );
    }
    let config = normalized();
    for service in SERVICES {
        let definition = &config["services"][service];
        let run = strings(&definition["command"])
            .first()
            .cloned()
            .expect("command");
        let probe = strings(&definition["healthcheck"]["test"])
            .get(1)
            .cloned()
            .expect("healthcheck");
        for needed in [run, probe] {
            assert!(
                shipped.contains(&needed),
                "{service} runs {needed}, which the image does not ship"
            );
        }
    }
}

#[test]
fn switch_phase_refuses_a_phase_the_service_cannot_run() {
    let env_file = root().join("deploy/.env");
    let before = std::fs::read_to_string(&env_file).ok();
    let output = Command::new(root().join("scripts/switch-phase"))
        .args(["notifier", "threaded"])
        .output()
        .expect("switch-phase runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("endpoint `evaluate_alarms` is async and cannot run in phase `threaded`"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&env_file).ok(),
        before,
        "deploy/.env untouched"
    );
}
