//! Alarm evaluation: on every `sample.recorded`, the alarms watching the
//! batch's meters are evaluated with statistics fetched from the collector.
//! This endpoint has been ported: it is async (a tonic client, async SQL),
//! and evaluates the alarms one batch touches concurrently.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use futures_util::future::try_join_all;
use switchyard_executor::Endpoint;
use switchyard_grpc::client::Traced;
use switchyard_messaging::{EndpointError, Handled, Notification, Notifier, Priority};
use switchyard_proto::collector::v1::sample_query_client::SampleQueryClient;
use switchyard_proto::messaging::v1::{AlarmStateChanged, SampleRecorded};
use switchyard_proto::metering::v1::{
    Alarm, AlarmState, Comparison, GetStatisticsRequest, Statistic, Statistics,
};
use switchyard_storage::Database;
use tonic::transport::Channel;

use crate::alarms;

/// The notification this endpoint publishes on a transition.
pub use switchyard_proto::catalogue::event::ALARM_STATE_CHANGED;

/// A query client whose calls make CLIENT spans and carry their context.
pub type QueryClient = SampleQueryClient<Traced<Channel>>;

/// Connects (lazily) to the collector's query API (TLS for `https://`).
pub fn query_client(
    grpc: &switchyard_grpc::GrpcConfig,
    url: &str,
) -> Result<QueryClient, switchyard_grpc::GrpcError> {
    let channel = grpc
        .client_endpoint(url)?
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(SampleQueryClient::new(Traced::new(channel, url)))
}

fn value(statistic: i32, bucket: &Statistics) -> f64 {
    match Statistic::try_from(statistic) {
        Ok(Statistic::Min) => bucket.min,
        Ok(Statistic::Max) => bucket.max,
        Ok(Statistic::Sum) => bucket.sum,
        Ok(Statistic::Count) => bucket.count as f64,
        _ => bucket.avg,
    }
}

fn breaches(comparison: i32, value: f64, threshold: f64) -> bool {
    match Comparison::try_from(comparison) {
        Ok(Comparison::Gt) => value > threshold,
        Ok(Comparison::Ge) => value >= threshold,
        Ok(Comparison::Lt) => value < threshold,
        Ok(Comparison::Le) => value <= threshold,
        Ok(Comparison::Eq) => value == threshold,
        _ => false,
    }
}

/// The state the last `evaluation_periods` buckets call for: insufficient
/// data without samples, alarm when every bucket breaches, ok otherwise.
pub fn judge(alarm: &Alarm, buckets: &[Statistics]) -> (AlarmState, String) {
    let recent: Vec<&Statistics> = buckets
        .iter()
        .rev()
        .take(alarm.evaluation_periods as usize)
        .collect();
    if recent.is_empty() {
        return (
            AlarmState::InsufficientData,
            "no samples in the evaluation window".into(),
        );
    }
    let values: Vec<f64> = recent.iter().map(|b| value(alarm.statistic, b)).collect();
    if values
        .iter()
        .all(|v| breaches(alarm.comparison, *v, alarm.threshold))
    {
        (
            AlarmState::Alarm,
            format!(
                "{} period(s) breached the threshold {}: {values:?}",
                values.len(),
                alarm.threshold
            ),
        )
    } else {
        (
            AlarmState::Ok,
            format!("within the threshold {}: {values:?}", alarm.threshold),
        )
    }
}

async fn evaluate(
    alarm: Alarm,
    database: &Database,
    client: &QueryClient,
    notifier: &Notifier,
) -> Result<(), EndpointError> {
    let now = alarms::now_ms();
    let window_ms = i64::from(alarm.period_seconds) * i64::from(alarm.evaluation_periods) * 1000;
    let request = GetStatisticsRequest {
        meter: alarm.meter.clone(),
        resource_id: alarm.resource_id.clone(),
        project_id: alarm.project_id.clone(),
        start: Some(alarms::timestamp(now - window_ms)),
        // Samples stamped a little ahead of this clock still count.
        end: Some(alarms::timestamp(now + 60_000)),
        period_seconds: alarm.period_seconds,
        meters: Vec::new(),
    };
    // A collector worker being replaced may drop the call unsent: sent again.
    let buckets = switchyard_grpc::retry_unsent(|| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.get_statistics(request).await }
    })
    .await
    .map_err(|status| {
        EndpointError::Unavailable(format!(
            "statistics from the collector: {}",
            status.message()
        ))
    })?
    .into_inner()
    .buckets;
    let (state, reason) = judge(&alarm, &buckets);
    if state as i32 == alarm.state {
        return Ok(());
    }
    let Some(transition) = alarms::transition(database, &alarm, state, &reason)
        .await
        .map_err(|error| EndpointError::Unavailable(error.to_string()))?
    else {
        return Ok(()); // another evaluation recorded it first
    };
    tracing::info!(alarm = %alarm.id, from = alarm.state, to = state as i32, "alarm `{}` is now {state:?}: {reason}", alarm.name);
    let changed = AlarmStateChanged {
        alarm: Some(Alarm {
            state: state as i32,
            state_changed_at: transition.at,
            ..alarm
        }),
        transition: Some(transition),
    };
    notifier
        .notify(Priority::Info, ALARM_STATE_CHANGED, &changed)
        .await
        .map_err(|error| EndpointError::Unavailable(format!("announcing a transition: {error}")))
}

/// How many alarms of one batch are evaluated at once.
const CONCURRENT_EVALUATIONS: usize = 16;

/// The endpoint that evaluates the alarms a batch of samples touches.
pub const ENDPOINT: &str = "evaluate_alarms";

/// The `sample.recorded` endpoint.
pub fn endpoint(
    database: Database,
    client: QueryClient,
    notifier: Notifier,
) -> Endpoint<Notification<SampleRecorded>, Result<Handled, EndpointError>> {
    Endpoint::from_async(
        ENDPOINT,
        move |_, recorded: Notification<SampleRecorded>| {
            let (database, client, notifier) = (database.clone(), client.clone(), notifier.clone());
            async move {
                let payload = &recorded.payload;
                let watching = try_join_all(
                    payload
                        .meters
                        .iter()
                        .map(|meter| alarms::watching(&database, meter)),
                )
                .await
                .map_err(|error| EndpointError::Unavailable(error.to_string()))?;
                let touched = watching.into_iter().flatten().filter(|alarm| {
                    alarm.resource_id.is_empty()
                        || payload.resource_ids.contains(&alarm.resource_id)
                });
                // The alarms one batch touches are independent: evaluated
                // at once (each a statistics call and perhaps a transition).
                futures_util::stream::iter(touched.map(Ok))
                    .try_for_each_concurrent(CONCURRENT_EVALUATIONS, |alarm| {
                        evaluate(alarm, &database, &client, &notifier)
                    })
                    .await?;
                Ok(Handled::Handled)
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(avg: f64) -> Statistics {
        Statistics {
            avg,
            count: 1,
            ..Statistics::default()
        }
    }

    #[test]
    fn every_recent_period_must_breach() {
        let alarm = Alarm {
            statistic: Statistic::Avg as i32,
            comparison: Comparison::Gt as i32,
            threshold: 80.0,
            evaluation_periods: 2,
            ..Alarm::default()
        };
        assert_eq!(judge(&alarm, &[]).0, AlarmState::InsufficientData);
        assert_eq!(
            judge(&alarm, &[bucket(10.0), bucket(90.0), bucket(95.0)]).0,
            AlarmState::Alarm
        );
        assert_eq!(
            judge(&alarm, &[bucket(90.0), bucket(70.0)]).0,
            AlarmState::Ok
        );
        assert_eq!(
            judge(&alarm, &[bucket(90.0)]).0,
            AlarmState::Alarm,
            "fewer buckets than periods: judge those"
        );
    }
}
