//! The configuration contract of every service binary, checked on the real
//! `switchyard-echo` process: precedence, every error at once with key,
//! source and accepted values, exit status 2, phase checks.

use std::path::PathBuf;
use std::process::{Command, Output};

const ECHO: &str = env!("CARGO_BIN_EXE_switchyard-echo");

/// A scratch directory per test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn echo(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(ECHO);
    command.current_dir(&scratch.0).args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("echo runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let scratch = Scratch::new("precedence");
    let file = scratch.file(
        "echo.toml",
        "[executor]\nphase = \"bridged\"\npool_size = 3\n",
    );
    let file = file.to_str().expect("utf-8 path");

    let from_file = echo(&scratch, &["--config", file, "--print-config"], &[]);
    assert_eq!(from_file.status.code(), Some(0), "{}", stderr(&from_file));
    let printed = stdout(&from_file);
    assert!(printed.contains("phase = \"bridged\""), "{printed}");
    assert!(printed.contains("pool_size = 3"), "{printed}");
    assert!(
        printed.contains("max_in_flight = 1024"),
        "defaults fill the rest: {printed}"
    );

    let overridden = echo(
        &scratch,
        &["--config", file, "--print-config"],
        &[("SWITCHYARD_EXECUTOR__PHASE", "async")],
    );
    assert_eq!(overridden.status.code(), Some(0), "{}", stderr(&overridden));
    let printed = stdout(&overridden);
    assert!(printed.contains("phase = \"async\""), "{printed}");
    assert!(printed.contains("pool_size = 3"), "{printed}");
}

#[test]
fn default_config_file_is_deploy_config_service_toml() {
    let scratch = Scratch::new("default-file");
    std::fs::create_dir_all(scratch.0.join("deploy/config")).expect("dir");
    scratch.file(
        "deploy/config/echo.toml",
        "[executor]\npool_size = 7\nphase = \"bridged\"\n",
    );
    let output = echo(&scratch, &["--print-config"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("pool_size = 7"));
}

#[test]
fn every_problem_is_reported_at_once_with_key_source_and_accepted_values() {
    let scratch = Scratch::new("problems");
    let file = scratch.file(
        "bad.toml",
        "[executor]\nphase = \"turbo\"\n\n[executr]\npool_size = 3\n",
    );
    let file_name = file.to_str().expect("utf-8 path");
    let output = echo(
        &scratch,
        &["--config", file_name, "--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "lots"),
            ("SWITCHYARD_TELEMETRY__LOG_FORMAT", "xml"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(text.contains("(4 problems)"), "{text}");
    assert!(
        text.contains(&format!(
            "executor.phase (from file {file_name}): unknown value `turbo`; accepted: threaded, bridged, async"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("executr.pool_size (from file {file_name}): unknown key `executr`; accepted keys here: executor, telemetry, metrics")),
        "{text}"
    );
    assert!(
        text.contains("executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): invalid type: found string \"lots\", expected usize"),
        "{text}"
    );
    assert!(
        text.contains("telemetry.log_format (from environment variable SWITCHYARD_TELEMETRY__LOG_FORMAT): unknown value `xml`; accepted: text, json"),
        "{text}"
    );
}

#[test]
fn out_of_range_values_name_the_accepted_range() {
    let scratch = Scratch::new("range");
    let output = echo(
        &scratch,
        &["--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "bridged"),
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "0"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(
            "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): 0 is out of range; accepted: 1 to 4096"
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_named_config_file_that_does_not_exist_is_an_error() {
    let scratch = Scratch::new("missing");
    let output = echo(
        &scratch,
        &["--config", "nowhere.toml", "--check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("file nowhere.toml: the configuration file does not exist"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unrelated_environment_variables_are_ignored_but_unknown_switchyard_ones_are_not() {
    let scratch = Scratch::new("unrelated");
    let fine = echo(
        &scratch,
        &["--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "bridged"),
            ("EXECUTOR__PHASE", "nonsense"),
            ("OTEL_SERVICE_NAME", "x"),
        ],
    );
    assert_eq!(fine.status.code(), Some(0), "{}", stderr(&fine));
    assert!(stdout(&fine).contains("configuration OK for echo: phase bridged, 2 endpoints"));

    let typo = echo(
        &scratch,
        &["--check-config"],
        &[("SWITCHYARD_EXECUTOR__PHAZE", "async")],
    );
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("executor.phaze (from environment variable SWITCHYARD_EXECUTOR__PHAZE): unknown key `phaze`"),
        "{}",
        stderr(&typo)
    );
}

#[test]
fn a_phase_that_cannot_run_an_endpoint_fails_the_check() {
    let scratch = Scratch::new("phase-check");
    for phase in ["threaded", "bridged", "async"] {
        let fine = echo(
            &scratch,
            &["--check-config"],
            &[("SWITCHYARD_EXECUTOR__PHASE", phase)],
        );
        assert_eq!(fine.status.code(), Some(0), "{phase}: {}", stderr(&fine));
        assert!(stdout(&fine).contains(&format!(
            "configuration OK for echo: phase {phase}, 2 endpoints"
        )));
    }

    let strict = echo(
        &scratch,
        &["--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "async"),
            ("SWITCHYARD_EXECUTOR__STRICT", "true"),
        ],
    );
    assert_eq!(strict.status.code(), Some(2));
    assert!(
        stderr(&strict).contains(
            "executor.phase (from environment variable SWITCHYARD_EXECUTOR__PHASE): endpoint `echo_blocking` is blocking \
             and cannot run in phase `async` with executor.strict = true; phases that can run it: threaded, bridged"
        ),
        "{}",
        stderr(&strict)
    );
}

#[test]
fn range_problems_are_reported_with_the_other_problems() {
    let scratch = Scratch::new("together");
    let output = echo(
        &scratch,
        &["--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "0"),
            ("SWITCHYARD_EXECUTOR__PHAZE", "async"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(text.contains("(2 problems)"), "{text}");
    assert!(
        text.contains(
            "executor.phaze (from environment variable SWITCHYARD_EXECUTOR__PHAZE): unknown key"
        ),
        "{text}"
    );
    assert!(text.contains("executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): 0 is out of range"), "{text}");
}

#[test]
fn a_bad_log_filter_is_a_configuration_error_naming_its_source() {
    let scratch = Scratch::new("log-filter");
    let refused = echo(&scratch, &[], &[("RUST_LOG", "info,[=")]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.contains("RUST_LOG (from the environment): `info,[=`"),
        "{text}"
    );
    assert!(text.contains("accepted:"), "{text}");
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let scratch = Scratch::new("no-ansi");
    // Exits at once on a bad AMQP URL after logging at start-up: the log
    // goes to a pipe here, as it would to a file.
    let output = echo(
        &scratch,
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("SWITCHYARD_GRPC__LISTEN", "127.0.0.1:0"),
            ("SWITCHYARD_ECHO__ROLLOUT", "true"),
            ("SWITCHYARD_AMQP__URL", "amqp://127.0.0.1:1/%2f"),
            ("SWITCHYARD_AMQP__CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    let text = stderr(&output);
    assert!(!text.is_empty());
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in piped logs:\n{text}"
    );
}

/// Addresses are checked as they are read: a bad listen address is a
/// problem of its key, with its source and what is accepted, beside every
/// other problem of the run; and `--print-config` shows the broker's
/// password as `***` because the URL is a secret type.
#[test]
fn addresses_are_typed_and_the_broker_url_prints_without_its_password() {
    let scratch = Scratch::new("typed");
    let output = echo(
        &scratch,
        &["--check-config"],
        &[
            ("SWITCHYARD_GRPC__LISTEN", "echo:50051"),
            ("SWITCHYARD_METRICS__LISTEN", "9464"),
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "many"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    for needle in [
        "grpc.listen (from environment variable SWITCHYARD_GRPC__LISTEN): `echo:50051` is not a socket address; accepted: IP:port",
        "metrics.listen (from environment variable SWITCHYARD_METRICS__LISTEN): `9464` is not a socket address; accepted: IP:port",
        "or empty (off)",
        "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE)",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }

    let printed = echo(
        &scratch,
        &["--print-config"],
        &[(
            "SWITCHYARD_AMQP__URL",
            "amqp://echo:p4ssw0rd@broker:5672/%2f",
        )],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", stderr(&printed));
    let text = stdout(&printed);
    assert!(
        text.contains("url = \"amqp://echo:***@broker:5672/%2f\""),
        "{text}"
    );
    assert!(!text.contains("p4ssw0rd"), "{text}");
}
