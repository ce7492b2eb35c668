//! `switchyard alarms`: create, list, and the history of one.

use switchyard_proto::metering::v1::{
    Alarm, AlarmState, Comparison, CreateAlarmRequest, GetAlarmHistoryRequest, ListAlarmsRequest,
    Statistic,
};

use crate::Connection;
use crate::output::{number, print_list, text, unix};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a threshold alarm.
    Create(Create),
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

#[derive(Debug, clap::Args)]
pub struct Create {
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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatisticArg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

impl From<StatisticArg> for Statistic {
    fn from(arg: StatisticArg) -> Self {
        match arg {
            StatisticArg::Avg => Statistic::Avg,
            StatisticArg::Min => Statistic::Min,
            StatisticArg::Max => Statistic::Max,
            StatisticArg::Sum => Statistic::Sum,
            StatisticArg::Count => Statistic::Count,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ComparisonArg {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl From<ComparisonArg> for Comparison {
    fn from(arg: ComparisonArg) -> Self {
        match arg {
            ComparisonArg::Gt => Comparison::Gt,
            ComparisonArg::Ge => Comparison::Ge,
            ComparisonArg::Lt => Comparison::Lt,
            ComparisonArg::Le => Comparison::Le,
            ComparisonArg::Eq => Comparison::Eq,
        }
    }
}

pub async fn run(connection: &Connection, command: &Command) -> anyhow::Result<()> {
    let mut client = connection.client().await?;
    match command {
        Command::Create(create) => {
            let alarm = client
                .create_alarm(CreateAlarmRequest {
                    alarm: Some(Alarm {
                        name: create.name.clone(),
                        meter: create.meter.clone(),
                        resource_id: create.resource.clone(),
                        project_id: create.project.clone(),
                        statistic: Statistic::from(create.statistic) as i32,
                        comparison: Comparison::from(create.comparison) as i32,
                        threshold: create.threshold,
                        period_seconds: create.period,
                        evaluation_periods: create.evaluation_periods,
                        webhook_url: create.webhook.clone(),
                        ..Alarm::default()
                    }),
                })
                .await?
                .into_inner();
            println!("{}", alarm.id);
        }
        Command::List { project } => {
            let alarms = client
                .list_alarms(ListAlarmsRequest {
                    project_id: project.clone(),
                })
                .await?
                .into_inner()
                .alarms;
            print_list(
                connection.output,
                &alarms,
                &[text("ID"), text("NAME"), text("METER"), text("STATE")],
                |a| {
                    vec![
                        a.id.clone(),
                        a.name.clone(),
                        a.meter.clone(),
                        AlarmState::json_name(a.state).to_string(),
                    ]
                },
                |a| {
                    serde_json::json!({
                        "id": a.id, "name": a.name, "meter": a.meter,
                        "resource_id": a.resource_id, "project_id": a.project_id,
                        "threshold": a.threshold, "period_seconds": a.period_seconds,
                        "evaluation_periods": a.evaluation_periods,
                        "webhook_url": a.webhook_url,
                        "state": AlarmState::json_name(a.state),
                        "state_changed_at": unix(&a.state_changed_at),
                    })
                },
            )?;
        }
        Command::History { id } => {
            let transitions = client
                .get_alarm_history(GetAlarmHistoryRequest { id: id.clone() })
                .await?
                .into_inner()
                .transitions;
            print_list(
                connection.output,
                &transitions,
                &[number("AT"), text("FROM"), text("TO"), text("REASON")],
                |t| {
                    vec![
                        unix(&t.at).to_string(),
                        AlarmState::json_name(t.from).to_string(),
                        AlarmState::json_name(t.to).to_string(),
                        t.reason.clone(),
                    ]
                },
                |t| {
                    serde_json::json!({
                        "at": unix(&t.at), "from": AlarmState::json_name(t.from),
                        "to": AlarmState::json_name(t.to), "reason": t.reason,
                    })
                },
            )?;
        }
    }
    Ok(())
}
