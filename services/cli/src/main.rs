//! `switchyard`: the command line of the metering pipeline — post samples,
//! query meters and statistics, manage alarms, show the rollout, and print
//! traces as waterfalls without Jaeger.

mod traces;

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_grpc::TraceInterceptor;
use switchyard_proto::metering::v1::metering_client::MeteringClient;
use switchyard_proto::metering::v1::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Prints one table row without the padding after its last column.
macro_rules! row {
    ($($arg:tt)*) => {
        println!("{}", format!($($arg)*).trim_end())
    };
}

/// Prints `value` as one JSON document.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn unix(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    timestamp.as_ref().map(|t| t.seconds).unwrap_or_default()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Samples.
    Samples {
        #[command(subcommand)]
        command: SamplesCommand,
    },
    /// The meters seen.
    Meters {
        /// Only this project's meters; empty for all.
        #[arg(long, default_value = "")]
        project: String,
    },
    /// Statistics per period of one meter, or of several at once (repeat
    /// `--meter`); prints how long the answer took.
    Stats {
        /// The meter; repeat for several in one request.
        #[arg(long, required = true)]
        meter: Vec<String>,
        /// Only this resource's samples; empty for all.
        #[arg(long, default_value = "")]
        resource: String,
        /// Only this project's samples; empty for all.
        #[arg(long, default_value = "")]
        project: String,
        /// Bucket length in seconds; 0 for one bucket.
        #[arg(long, default_value_t = 60)]
        period: u32,
        /// How far back to look, in minutes.
        #[arg(long, default_value_t = 60)]
        since_minutes: i64,
    },
    /// Threshold alarms.
    Alarms {
        #[command(subcommand)]
        command: AlarmsCommand,
    },
    /// Every instance, its phase, role and health, from heartbeats; or
    /// promote a canary.
    Rollout {
        #[command(subcommand)]
        command: Option<RolloutCommand>,
    },
    /// Ask a service's gRPC health; exit 0 when it is SERVING (container healthchecks).
    Health {
        /// The service's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// A service name; empty asks about the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
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

#[derive(Debug, Subcommand)]
enum SamplesCommand {
    /// Post samples, from arguments or a file: CSV
    /// (`meter,unit,volume,resource_id,project_id[,id]` per line) or, for a
    /// `.json` file, an array of `{"meter", "unit", "volume", "resource_id",
    /// "project_id", "id"?, "timestamp"? (Unix seconds)}`.
    Post {
        /// The meter (without `--file`).
        #[arg(long, required_unless_present = "file")]
        meter: Option<String>,
        /// The unit of the volumes.
        #[arg(long, default_value = "%")]
        unit: String,
        /// The first sample's volume.
        #[arg(long, default_value_t = 0.0)]
        volume: f64,
        /// The resource the samples are about.
        #[arg(long, default_value = "vm-1")]
        resource: String,
        /// The project the samples belong to.
        #[arg(long, default_value = "demo")]
        project: String,
        /// Post this many samples (volumes `volume`, `volume+1`, …).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Samples per request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// A CSV or JSON file of samples instead of the flags above.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatisticArg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ComparisonArg {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Make a service's canary phase its main phase (its launchers replace
    /// their workers one at a time).
    Promote {
        /// The service, as in the rollout table (e.g. `collector`).
        service: String,
        /// Wait up to this many seconds until every up instance of the
        /// service runs the canary's phase as a main worker; 0 does not wait.
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AlarmsCommand {
    /// Create a threshold alarm.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The meter it watches.
        #[arg(long)]
        meter: String,
        /// Only this resource's samples; empty for all.
        #[arg(long, default_value = "")]
        resource: String,
        /// The project it watches.
        #[arg(long, default_value = "demo")]
        project: String,
        /// What is compared per period.
        #[arg(long, value_enum, default_value = "avg")]
        statistic: StatisticArg,
        /// How the statistic is compared with the threshold.
        #[arg(long, value_enum, default_value = "gt")]
        comparison: ComparisonArg,
        /// The threshold.
        #[arg(long)]
        threshold: f64,
        /// Period length in seconds.
        #[arg(long, default_value_t = 60)]
        period: u32,
        /// How many periods in a row must breach.
        #[arg(long, default_value_t = 1)]
        evaluation_periods: u32,
        /// The URL called (POST, JSON) on every state change; empty for none.
        #[arg(long, default_value = "")]
        webhook: String,
    },
    /// List alarms.
    List {
        /// Only this project's alarms; empty for all.
        #[arg(long, default_value = "")]
        project: String,
    },
    /// The state transitions of one alarm.
    History {
        /// The alarm's id.
        id: String,
    },
}

type Client = MeteringClient<InterceptedService<Channel, Auth>>;

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

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(cli.api.clone())
        .with_context(|| format!("--api {}", cli.api))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the api at {}; is switchyard-api running?",
                cli.api
            )
        })?;
    let token = match &cli.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token is not valid ASCII")?,
        ),
        None => None,
    };
    Ok(MeteringClient::with_interceptor(channel, Auth(token)))
}

fn now() -> prost_types::Timestamp {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

fn state_name(state: i32) -> &'static str {
    match AlarmState::try_from(state) {
        Ok(AlarmState::Ok) => "ok",
        Ok(AlarmState::Alarm) => "ALARM",
        Ok(AlarmState::InsufficientData) => "insufficient data",
        _ => "?",
    }
}

/// One sample as a JSON file gives it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleInput {
    meter: String,
    unit: String,
    volume: f64,
    resource_id: String,
    project_id: String,
    #[serde(default)]
    id: String,
    /// Unix seconds; now when absent.
    timestamp: Option<i64>,
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let inputs: Vec<SampleInput> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of samples", path.display()))?;
    Ok(inputs
        .into_iter()
        .map(|input| Sample {
            id: input.id,
            meter: input.meter,
            unit: input.unit,
            volume: input.volume,
            timestamp: Some(match input.timestamp {
                Some(seconds) => prost_types::Timestamp { seconds, nanos: 0 },
                None => now(),
            }),
            resource_id: input.resource_id,
            project_id: input.project_id,
            metadata: Default::default(),
        })
        .collect())
}

fn read_csv(path: &std::path::Path) -> anyhow::Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut samples = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 5 {
            bail!(
                "{}:{}: expected meter,unit,volume,resource_id,project_id[,id]",
                path.display(),
                number + 1
            );
        }
        samples.push(Sample {
            id: fields.get(5).unwrap_or(&"").to_string(),
            meter: fields[0].into(),
            unit: fields[1].into(),
            volume: fields[2].parse().with_context(|| {
                format!("{}:{}: volume `{}`", path.display(), number + 1, fields[2])
            })?,
            timestamp: Some(now()),
            resource_id: fields[3].into(),
            project_id: fields[4].into(),
            metadata: Default::default(),
        });
    }
    Ok(samples)
}

/// Exit statuses by failure class, for scripts (2 is clap's, for usage).
mod exit {
    /// Anything not classed below.
    pub const OTHER: u8 = 1;
    /// The api (or the named service) cannot be reached, or did not answer
    /// in time: UNAVAILABLE, DEADLINE_EXCEEDED, a connection that failed.
    pub const UNREACHABLE: u8 = 3;
    /// NOT_FOUND.
    pub const NOT_FOUND: u8 = 4;
    /// The request was refused as invalid: INVALID_ARGUMENT,
    /// FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED; or a bad file.
    pub const INVALID: u8 = 5;
    /// UNAUTHENTICATED or PERMISSION_DENIED: the token.
    pub const UNAUTHENTICATED: u8 = 6;
}

/// The exit status for `error` and the line to print: a gRPC status as
/// `NOT_FOUND: message`, under the context it failed in.
fn failure(error: &anyhow::Error) -> (u8, String) {
    use tonic::Code;
    let status = error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>());
    let Some(status) = status else {
        let unreachable = error
            .chain()
            .any(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
        let code = if unreachable {
            exit::UNREACHABLE
        } else {
            exit::OTHER
        };
        return (code, format!("{error:#}"));
    };
    let code = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => exit::UNREACHABLE,
        Code::NotFound => exit::NOT_FOUND,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted => exit::INVALID,
        Code::Unauthenticated | Code::PermissionDenied => exit::UNAUTHENTICATED,
        _ => exit::OTHER,
    };
    let said = format!(
        "{}: {}",
        switchyard_grpc::code_name(status.code()),
        status.message()
    );
    // Context added on the way up (e.g. which file), then the status.
    let context: Vec<String> = error
        .chain()
        .take_while(|e| e.downcast_ref::<tonic::Status>().is_none())
        .map(|e| e.to_string())
        .collect();
    let line = if context.is_empty() {
        said
    } else {
        format!("{}: {said}", context.join(": "))
    };
    (code, line)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let (code, line) = failure(&error);
            eprintln!("switchyard: {line}");
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Health { addr, service } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus,
                health_client::HealthClient,
            };
            let channel = tonic::transport::Endpoint::from_shared(addr.clone())
                .with_context(|| format!("--addr {addr}"))?
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(3))
                .connect()
                .await
                .with_context(|| format!("cannot reach {addr}"))?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .context("health check")?
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                println!("SERVING");
                Ok(())
            } else {
                bail!("{addr} is not serving (status {status})")
            }
        }
        Command::Traces {
            listen,
            count,
            min_services,
        } => traces::run(listen, *count, *min_services).await,
        Command::Samples {
            command:
                SamplesCommand::Post {
                    meter,
                    unit,
                    volume,
                    resource,
                    project,
                    count,
                    batch,
                    file,
                },
        } => {
            let samples = match (file, meter) {
                (Some(file), _) if file.extension().is_some_and(|e| e == "json") => {
                    read_json(file)?
                }
                (Some(file), _) => read_csv(file)?,
                (None, Some(meter)) => (0..*count)
                    .map(|i| Sample {
                        meter: meter.clone(),
                        unit: unit.clone(),
                        volume: volume + i as f64,
                        timestamp: Some(now()),
                        resource_id: resource.clone(),
                        project_id: project.clone(),
                        ..Sample::default()
                    })
                    .collect(),
                (None, None) => bail!("give --meter or --file"),
            };
            let mut client = connect(&cli).await?;
            let mut posted = 0;
            for chunk in samples.chunks((*batch).max(1)) {
                let reply = client
                    .post_samples(PostSamplesRequest {
                        samples: chunk.to_vec(),
                    })
                    .await
                    .context("posting samples")?;
                posted += reply.into_inner().ids.len();
            }
            println!("posted {posted} samples");
            Ok(())
        }
        Command::Meters { project } => {
            let meters = connect(&cli)
                .await?
                .list_meters(ListMetersRequest {
                    project_id: project.clone(),
                })
                .await?
                .into_inner()
                .meters;
            if cli.output == Output::Json {
                return print_json(&serde_json::json!(
                    meters
                        .iter()
                        .map(|m| serde_json::json!({"name": m.name, "unit": m.unit, "samples": m.samples}))
                        .collect::<Vec<_>>()
                ));
            }
            row!("{:<24} {:<8} {:>8}", "METER", "UNIT", "SAMPLES");
            for meter in meters {
                row!("{:<24} {:<8} {:>8}", meter.name, meter.unit, meter.samples);
            }
            Ok(())
        }
        Command::Stats {
            meter,
            resource,
            project,
            period,
            since_minutes,
        } => {
            let end = now();
            let start = prost_types::Timestamp {
                seconds: end.seconds - since_minutes * 60,
                nanos: 0,
            };
            let (one, several) = match meter.as_slice() {
                [one] => (one.clone(), Vec::new()),
                several => (String::new(), several.to_vec()),
            };
            let mut client = connect(&cli).await?;
            let asked = std::time::Instant::now();
            let answer = client
                .get_statistics(GetStatisticsRequest {
                    meter: one.clone(),
                    meters: several,
                    resource_id: resource.clone(),
                    project_id: project.clone(),
                    start: Some(start),
                    end: Some(prost_types::Timestamp {
                        seconds: end.seconds + 60,
                        nanos: 0,
                    }),
                    period_seconds: *period,
                })
                .await?
                .into_inner();
            let took = asked.elapsed();
            let tables = if answer.by_meter.is_empty() {
                vec![(one, answer.buckets)]
            } else {
                answer
                    .by_meter
                    .into_iter()
                    .map(|m| (m.meter, m.buckets))
                    .collect()
            };
            let meters = tables.len();
            if cli.output == Output::Json {
                eprintln!(
                    "statistics for {meters} meter{} in {:.1} ms",
                    if meters == 1 { "" } else { "s" },
                    took.as_secs_f64() * 1000.0
                );
                return print_json(&serde_json::json!({
                    "took_ms": took.as_secs_f64() * 1000.0,
                    "meters": tables.iter().map(|(name, buckets)| serde_json::json!({
                        "meter": name,
                        "buckets": buckets.iter().map(|b| serde_json::json!({
                            "period_start": unix(&b.period_start),
                            "period_end": unix(&b.period_end),
                            "count": b.count, "min": b.min, "max": b.max,
                            "avg": b.avg, "sum": b.sum,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }));
            }
            for (name, buckets) in tables {
                if meters > 1 {
                    println!("{name}:");
                }
                println!(
                    "{:<22} {:>7} {:>10} {:>10} {:>10} {:>12}",
                    "PERIOD START (unix)", "COUNT", "MIN", "MAX", "AVG", "SUM"
                );
                for b in buckets {
                    let start = b.period_start.map(|t| t.seconds).unwrap_or_default();
                    println!(
                        "{start:<22} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
                        b.count, b.min, b.max, b.avg, b.sum
                    );
                }
            }
            eprintln!(
                "statistics for {meters} meter{} in {:.1} ms",
                if meters == 1 { "" } else { "s" },
                took.as_secs_f64() * 1000.0
            );
            Ok(())
        }
        Command::Alarms { command } => {
            let mut client = connect(&cli).await?;
            match command {
                AlarmsCommand::Create {
                    name,
                    meter,
                    resource,
                    project,
                    statistic,
                    comparison,
                    threshold,
                    period,
                    evaluation_periods,
                    webhook,
                } => {
                    let statistic = match statistic {
                        StatisticArg::Avg => Statistic::Avg,
                        StatisticArg::Min => Statistic::Min,
                        StatisticArg::Max => Statistic::Max,
                        StatisticArg::Sum => Statistic::Sum,
                        StatisticArg::Count => Statistic::Count,
                    };
                    let comparison = match comparison {
                        ComparisonArg::Gt => Comparison::Gt,
                        ComparisonArg::Ge => Comparison::Ge,
                        ComparisonArg::Lt => Comparison::Lt,
                        ComparisonArg::Le => Comparison::Le,
                        ComparisonArg::Eq => Comparison::Eq,
                    };
                    let alarm = client
                        .create_alarm(CreateAlarmRequest {
                            alarm: Some(Alarm {
                                name: name.clone(),
                                meter: meter.clone(),
                                resource_id: resource.clone(),
                                project_id: project.clone(),
                                statistic: statistic as i32,
                                comparison: comparison as i32,
                                threshold: *threshold,
                                period_seconds: *period,
                                evaluation_periods: *evaluation_periods,
                                webhook_url: webhook.clone(),
                                ..Alarm::default()
                            }),
                        })
                        .await?
                        .into_inner();
                    println!("{}", alarm.id);
                }
                AlarmsCommand::List { project } => {
                    let alarms = client
                        .list_alarms(ListAlarmsRequest {
                            project_id: project.clone(),
                        })
                        .await?
                        .into_inner()
                        .alarms;
                    if cli.output == Output::Json {
                        return print_json(&serde_json::json!(
                            alarms
                                .iter()
                                .map(|a| serde_json::json!({
                                    "id": a.id, "name": a.name, "meter": a.meter,
                                    "resource_id": a.resource_id, "project_id": a.project_id,
                                    "threshold": a.threshold, "period_seconds": a.period_seconds,
                                    "evaluation_periods": a.evaluation_periods,
                                    "webhook_url": a.webhook_url,
                                    "state": state_name(a.state),
                                    "state_changed_at": unix(&a.state_changed_at),
                                }))
                                .collect::<Vec<_>>()
                        ));
                    }
                    row!(
                        "{:<32} {:<20} {:<16} {:<18}",
                        "ID",
                        "NAME",
                        "METER",
                        "STATE"
                    );
                    for alarm in alarms {
                        row!(
                            "{:<32} {:<20} {:<16} {:<18}",
                            alarm.id,
                            alarm.name,
                            alarm.meter,
                            state_name(alarm.state)
                        );
                    }
                }
                AlarmsCommand::History { id } => {
                    let transitions = client
                        .get_alarm_history(GetAlarmHistoryRequest { id: id.clone() })
                        .await?
                        .into_inner()
                        .transitions;
                    if cli.output == Output::Json {
                        return print_json(&serde_json::json!(
                            transitions
                                .iter()
                                .map(|t| serde_json::json!({
                                    "at": unix(&t.at), "from": state_name(t.from),
                                    "to": state_name(t.to), "reason": t.reason,
                                }))
                                .collect::<Vec<_>>()
                        ));
                    }
                    for t in transitions {
                        println!(
                            "{}  {} -> {}  {}",
                            t.at.map(|a| a.seconds).unwrap_or_default(),
                            state_name(t.from),
                            state_name(t.to),
                            t.reason
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Rollout { command: None } => {
            let instances = connect(&cli)
                .await?
                .get_rollout(GetRolloutRequest {})
                .await?
                .into_inner()
                .instances;
            if cli.output == Output::Json {
                return print_json(&serde_json::json!(
                    instances
                        .iter()
                        .map(|i| serde_json::json!({
                            "service": i.service, "instance_id": i.instance_id, "pid": i.pid,
                            "version": i.version, "phase": i.phase, "role": i.role, "up": i.up,
                            "uptime_seconds": i.uptime_seconds, "in_flight": i.in_flight,
                            "handled": i.handled, "failed": i.failed,
                            "slow_polls": i.slow_polls, "offloaded": i.offloaded,
                            "last_seen": unix(&i.last_seen), "rollout": i.rollout,
                            "endpoint_forms": i.endpoint_forms,
                        }))
                        .collect::<Vec<_>>()
                ));
            }
            print_rollout(&instances);
            Ok(())
        }
        Command::Rollout {
            command: Some(RolloutCommand::Promote { service, wait_s }),
        } => promote(&cli, service, *wait_s).await,
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

fn print_rollout(instances: &[InstanceStatus]) {
    row!(
        "{:<10} {:<22} {:<9} {:<7} {:<7} {:>9} {:>9} {:>7} {:>10} {:>10}  TWO-FORM ENDPOINTS RUN",
        "SERVICE",
        "INSTANCE",
        "PHASE",
        "ROLE",
        "HEALTH",
        "IN FLIGHT",
        "HANDLED",
        "FAILED",
        "SLOW POLLS",
        "OFFLOADED"
    );
    for i in instances {
        row!(
            "{:<10} {:<22} {:<9} {:<7} {:<7} {:>9} {:>9} {:>7} {:>10} {:>10}  {}",
            i.service,
            i.instance_id,
            i.phase,
            if i.role.is_empty() { "-" } else { &i.role },
            if i.up { "up" } else { "DOWN" },
            i.in_flight,
            i.handled,
            i.failed,
            i.slow_polls,
            i.offloaded,
            forms(i)
        );
    }
    // The launchers' rollout states (a rollback and why), once per service.
    let mut notes: Vec<(&str, &str)> = instances
        .iter()
        .filter(|i| i.up && !i.rollout.is_empty())
        .map(|i| (i.service.as_str(), i.rollout.as_str()))
        .collect();
    notes.sort();
    notes.dedup();
    for (service, note) in notes {
        println!("{service}: {note}");
    }
}

/// How many of the instance's two-form endpoints run which form, e.g.
/// `3 async`; `-` when it has none.
fn forms(instance: &InstanceStatus) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for form in instance.endpoint_forms.values() {
        *counts.entry(form.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(form, n)| format!("{n} {form}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rollout promote`: asks the api to promote, then optionally waits until
/// the service's up instances all run the canary's phase as main workers.
async fn promote(cli: &Cli, service: &str, wait_s: u64) -> anyhow::Result<()> {
    let mut client = connect(cli).await?;
    let before = client
        .get_rollout(GetRolloutRequest {})
        .await?
        .into_inner()
        .instances;
    let phase = before
        .iter()
        .find(|i| i.service == service && i.up && i.role == "canary")
        .map(|i| i.phase.clone());
    let sent = client
        .promote_canary(PromoteCanaryRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    println!(
        "promote sent to {service} ({} canary worker(s) up)",
        sent.canary_instances
    );
    let Some(phase) = phase.filter(|_| wait_s > 0) else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
    loop {
        let instances = client
            .get_rollout(GetRolloutRequest {})
            .await?
            .into_inner()
            .instances;
        let up: Vec<_> = instances
            .iter()
            .filter(|i| i.service == service && i.up)
            .collect();
        if !up.is_empty() && up.iter().all(|i| i.phase == phase && i.role != "canary") {
            println!("{service}: every up worker runs {phase}");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            print_rollout(&instances);
            bail!("{service} did not move to {phase} on every worker within {wait_s} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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

    #[test]
    fn grpc_statuses_print_as_code_and_message_with_an_exit_class() {
        let error = anyhow::Error::new(tonic::Status::not_found("alarm `x` not found"))
            .context("reading the history");
        assert_eq!(
            failure(&error),
            (
                exit::NOT_FOUND,
                "reading the history: NOT_FOUND: alarm `x` not found".to_string()
            )
        );
        let refused = anyhow::Error::new(tonic::Status::unauthenticated("no token"));
        assert_eq!(failure(&refused).0, exit::UNAUTHENTICATED);
        assert_eq!(failure(&anyhow::anyhow!("a bad file")).0, exit::OTHER);
    }
}
