//! `switchyard`: the command line of the metering pipeline — post samples,
//! query meters and statistics, manage alarms, show the rollout, and print
//! traces as waterfalls without Jaeger. One module per command.

mod alarms;
mod exit;
mod health;
mod meters;
mod output;
mod rollout;
mod samples;
mod stats;
mod traces;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchyard_grpc::TraceInterceptor;
use switchyard_proto::metering::v1::metering_client::MeteringClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use output::Output;

/// Talk to a Switchyard metering pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    after_help = "Exit status: 0 done; 1 other failure; 2 usage; 3 unreachable \
                  (UNAVAILABLE, DEADLINE_EXCEEDED, no connection); 4 NOT_FOUND; 5 invalid \
                  request (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, \
                  RESOURCE_EXHAUSTED); 6 UNAUTHENTICATED or PERMISSION_DENIED. Failures \
                  print as `switchyard: CODE: message`."
)]
struct Cli {
    /// The api's gRPC address.
    #[arg(
        long,
        env = "SWITCHYARD_API",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    api: String,
    /// Bearer token for the api (when it requires one).
    #[arg(long, env = "SWITCHYARD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// How listings are printed: aligned text tables, or JSON for scripts.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Samples.
    Samples {
        #[command(subcommand)]
        command: samples::Command,
    },
    /// The meters seen.
    Meters(meters::Meters),
    /// Statistics per period of one meter, or of several at once (repeat
    /// `--meter`); prints how long the answer took.
    Stats(stats::Stats),
    /// Threshold alarms.
    Alarms {
        #[command(subcommand)]
        command: alarms::Command,
    },
    /// Every instance, its phase, role and health, from heartbeats; or
    /// promote a canary.
    Rollout {
        #[command(subcommand)]
        command: Option<rollout::Command>,
    },
    /// Ask a service's gRPC health; exit 0 when it is SERVING (container healthchecks).
    Health(health::Health),
    /// Receive OTLP traces and print each as a waterfall.
    Traces {
        /// Where to listen for OTLP/gRPC.
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: String,
        /// Exit after printing this many traces.
        #[arg(long)]
        count: Option<usize>,
        /// Only print traces with spans from at least this many services.
        #[arg(long, default_value_t = 1)]
        min_services: usize,
    },
    /// Print a shell completion script (e.g. `switchyard completions bash >
    /// /etc/bash_completion.d/switchyard`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

type Client = MeteringClient<InterceptedService<Channel, Auth>>;

/// What every api command needs: where the api is, the token, the output form.
#[derive(Debug)]
pub struct Connection {
    api: String,
    token: Option<String>,
    output: Output,
}

impl Connection {
    /// Connects to the api.
    async fn client(&self) -> anyhow::Result<Client> {
        let channel = tonic::transport::Endpoint::from_shared(self.api.clone())
            .with_context(|| format!("--api {}", self.api))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the api at {}; is switchyard-api running?",
                    self.api
                )
            })?;
        let token = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .context("the token is not valid ASCII")?,
            ),
            None => None,
        };
        Ok(MeteringClient::with_interceptor(channel, Auth(token)))
    }
}

/// Adds the bearer token and the trace context to every call.
#[derive(Debug, Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        TraceInterceptor.call(request)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let (code, line) = exit::failure(&error);
            eprintln!("switchyard: {line}");
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connection = Connection {
        api: cli.api,
        token: cli.token,
        output: cli.output,
    };
    match &cli.command {
        Command::Samples { command } => samples::run(&connection, command).await,
        Command::Meters(args) => meters::run(&connection, args).await,
        Command::Stats(args) => stats::run(&connection, args).await,
        Command::Alarms { command } => alarms::run(&connection, command).await,
        Command::Rollout { command } => rollout::run(&connection, command.as_ref()).await,
        Command::Health(args) => health::run(&connection, args).await,
        Command::Traces {
            listen,
            count,
            min_services,
        } => traces::run(listen, *count, *min_services).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "switchyard",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_flag_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "switchyard", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
