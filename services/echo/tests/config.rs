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

/// Runs echo expecting it to accept its configuration (exit 0): what it
/// printed on stdout.
fn accepted(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = echo(scratch, args, env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs echo expecting a configuration error (exit 2): what it printed on
/// stderr.
fn refused(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = echo(scratch, args, env);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    text
}

/// `--check-config` in a scratch directory of its own, expected to pass:
/// what echo printed on stdout.
fn check_accepted(name: &str, env: &[(&str, &str)]) -> String {
    accepted(&Scratch::new(name), &["--check-config"], env)
}

/// `--check-config` in a scratch directory of its own, expected to fail:
/// what echo printed on stderr.
fn check_refused(name: &str, env: &[(&str, &str)]) -> String {
    refused(&Scratch::new(name), &["--check-config"], env)
}

/// Asserts that `text` says every one of `needles`.
fn assert_says<S: AsRef<str>>(text: &str, needles: &[S]) {
    for needle in needles {
        let needle = needle.as_ref();
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let scratch = Scratch::new("precedence");
    let file = scratch.file(
        "echo.toml",
        "[executor]\nphase = \"bridged\"\npool_size = 3\n",
    );
    let file = file.to_str().expect("utf-8 path");

    let printed = accepted(&scratch, &["--config", file, "--print-config"], &[]);
    assert_says(&printed, &["phase = \"bridged\"", "pool_size = 3"]);
    assert!(
        printed.contains("max_in_flight = 1024"),
        "defaults fill the rest: {printed}"
    );

    let overridden = accepted(
        &scratch,
        &["--config", file, "--print-config"],
        &[("SWITCHYARD_EXECUTOR__PHASE", "async")],
    );
    assert_says(&overridden, &["phase = \"async\"", "pool_size = 3"]);
}

#[test]
fn default_config_file_is_deploy_config_service_toml() {
    let scratch = Scratch::new("default-file");
    std::fs::create_dir_all(scratch.0.join("deploy/config")).expect("dir");
    scratch.file(
        "deploy/config/echo.toml",
        "[executor]\npool_size = 7\nphase = \"bridged\"\n",
    );
    assert_says(
        &accepted(&scratch, &["--print-config"], &[]),
        &["pool_size = 7"],
    );
}

#[test]
fn every_problem_is_reported_at_once_with_key_source_and_accepted_values() {
    let scratch = Scratch::new("problems");
    let file = scratch.file(
        "bad.toml",
        "[executor]\nphase = \"turbo\"\n\n[executr]\npool_size = 3\n",
    );
    let file_name = file.to_str().expect("utf-8 path");
    let text = refused(
        &scratch,
        &["--config", file_name, "--check-config"],
        &[
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "lots"),
            ("SWITCHYARD_TELEMETRY__LOG_FORMAT", "xml"),
        ],
    );
    assert_says(
        &text,
        &[
            "(4 problems)".to_owned(),
            format!(
                "executor.phase (from file {file_name}): unknown value `turbo`; accepted: threaded, bridged, async"
            ),
            format!(
                "executr.pool_size (from file {file_name}): unknown key `executr`; accepted keys here: executor, telemetry, metrics"
            ),
            "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): invalid type: found string \"lots\", expected usize".to_owned(),
            "telemetry.log_format (from environment variable SWITCHYARD_TELEMETRY__LOG_FORMAT): unknown value `xml`; accepted: text, json".to_owned(),
        ],
    );
}

#[test]
fn out_of_range_values_name_the_accepted_range() {
    let text = check_refused(
        "range",
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "bridged"),
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "0"),
        ],
    );
    assert_says(
        &text,
        &[
            "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): 0 is out of range; accepted: 1 to 4096",
        ],
    );
}

#[test]
fn a_named_config_file_that_does_not_exist_is_an_error() {
    let scratch = Scratch::new("missing");
    let text = refused(
        &scratch,
        &["--config", "nowhere.toml", "--check-config"],
        &[],
    );
    assert_says(
        &text,
        &["file nowhere.toml: the configuration file does not exist"],
    );
}

#[test]
fn unrelated_environment_variables_are_ignored_but_unknown_switchyard_ones_are_not() {
    let fine = check_accepted(
        "unrelated",
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "bridged"),
            ("EXECUTOR__PHASE", "nonsense"),
            ("OTEL_SERVICE_NAME", "x"),
        ],
    );
    assert_says(
        &fine,
        &["configuration OK for echo: phase bridged, 2 endpoints"],
    );

    let typo = check_refused("unrelated", &[("SWITCHYARD_EXECUTOR__PHAZE", "async")]);
    assert_says(
        &typo,
        &[
            "executor.phaze (from environment variable SWITCHYARD_EXECUTOR__PHAZE): unknown key `phaze`",
        ],
    );
}

#[test]
fn a_phase_that_cannot_run_an_endpoint_fails_the_check() {
    for phase in ["threaded", "bridged", "async"] {
        let fine = check_accepted("phase-check", &[("SWITCHYARD_EXECUTOR__PHASE", phase)]);
        assert_says(
            &fine,
            &[format!(
                "configuration OK for echo: phase {phase}, 2 endpoints"
            )],
        );
    }

    let strict = check_refused(
        "phase-check",
        &[
            ("SWITCHYARD_EXECUTOR__PHASE", "async"),
            ("SWITCHYARD_EXECUTOR__STRICT", "true"),
        ],
    );
    assert_says(
        &strict,
        &[
            "executor.phase (from environment variable SWITCHYARD_EXECUTOR__PHASE): endpoint `echo_blocking` is blocking \
           and cannot run in phase `async` with executor.strict = true; phases that can run it: threaded, bridged",
        ],
    );
}

#[test]
fn range_problems_are_reported_with_the_other_problems() {
    let text = check_refused(
        "together",
        &[
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "0"),
            ("SWITCHYARD_EXECUTOR__PHAZE", "async"),
            ("SWITCHYARD_GRPC__MAX_CONNECTION_AGE_MS", "500"),
        ],
    );
    assert_says(
        &text,
        &[
            "(3 problems)",
            "executor.phaze (from environment variable SWITCHYARD_EXECUTOR__PHAZE): unknown key",
            "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE): 0 is out of range",
            "grpc.max_connection_age_ms (from environment variable SWITCHYARD_GRPC__MAX_CONNECTION_AGE_MS): \
             500 is out of range; accepted: 0 (never) or 1000 ms or more",
        ],
    );
}

#[test]
fn a_bad_log_filter_is_a_configuration_error_naming_its_source() {
    let scratch = Scratch::new("log-filter");
    let text = refused(&scratch, &[], &[("RUST_LOG", "info,[=")]);
    assert_says(
        &text,
        &["RUST_LOG (from the environment): `info,[=`", "accepted:"],
    );
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
    let text = check_refused(
        "typed",
        &[
            ("SWITCHYARD_GRPC__LISTEN", "echo:50051"),
            ("SWITCHYARD_METRICS__LISTEN", "9464"),
            ("SWITCHYARD_EXECUTOR__POOL_SIZE", "many"),
        ],
    );
    assert_says(
        &text,
        &[
            "grpc.listen (from environment variable SWITCHYARD_GRPC__LISTEN): `echo:50051` is not a socket address; accepted: IP:port",
            "metrics.listen (from environment variable SWITCHYARD_METRICS__LISTEN): `9464` is not a socket address; accepted: IP:port",
            "or empty (off)",
            "executor.pool_size (from environment variable SWITCHYARD_EXECUTOR__POOL_SIZE)",
        ],
    );

    let printed = accepted(
        &Scratch::new("typed"),
        &["--print-config"],
        &[(
            "SWITCHYARD_AMQP__URL",
            "amqp://echo:p4ssw0rd@broker:5672/%2f",
        )],
    );
    assert_says(&printed, &["url = \"amqp://echo:***@broker:5672/%2f\""]);
    assert!(!printed.contains("p4ssw0rd"), "{printed}");
}
