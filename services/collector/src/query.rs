//! The internal query API (`switchyard.collector.v1.SampleQuery`), written
//! both ways while the collector migrates: the blocking form (`threaded`)
//! runs its queries one after another on its pool thread; the async form
//! (`bridged`, `async`) awaits sqlx directly and runs the per-meter queries
//! of one request concurrently over the connection pool. Same answers.

use std::time::Duration;

use futures_util::future::try_join_all;
use switchyard_app::App;
use switchyard_executor::{BoundEndpoint, Endpoint};
use switchyard_grpc::{GrpcOutcome, invalid_argument};
use switchyard_proto::collector::v1::sample_query_server::SampleQuery;
use switchyard_proto::metering::v1::{
    GetStatisticsRequest, GetStatisticsResponse, ListMetersRequest, ListMetersResponse,
    MeterStatistics,
};
use switchyard_storage::{Database, StorageError};
use tokio::runtime::Handle;
use tonic::{Request, Response, Status};

use crate::samples;

/// The endpoint names.
pub const LIST_METERS: &str = "SampleQuery/ListMeters";
/// See [`LIST_METERS`].
pub const GET_STATISTICS: &str = "SampleQuery/GetStatistics";
/// Most meters one `GetStatistics` may ask for.
pub const MAX_METERS: usize = 64;

/// The SampleQuery service with its endpoints bound to the executor.
#[derive(Debug)]
pub struct Query {
    list_meters: BoundEndpoint<ListMetersRequest, GrpcOutcome<ListMetersResponse>>,
    statistics: BoundEndpoint<GetStatisticsRequest, GrpcOutcome<GetStatisticsResponse>>,
    overload_wait: Duration,
}

fn unavailable(error: StorageError) -> Status {
    Status::unavailable(format!("storage: {error}"))
}

/// The request's checks, the same in both forms.
fn check(request: &GetStatisticsRequest) -> Result<(), Status> {
    match (request.meter.is_empty(), request.meters.len()) {
        (true, 0) => return Err(invalid_argument("meter", "is required (or `meters`)")),
        (false, n) if n > 0 => {
            return Err(invalid_argument(
                "meters",
                "give `meter` or `meters`, not both",
            ));
        }
        (_, n) if n > MAX_METERS => {
            return Err(invalid_argument(
                "meters",
                format!("{n} meters; accepted: at most {MAX_METERS}"),
            ));
        }
        _ => {}
    }
    if let Some(index) = request.meters.iter().position(String::is_empty) {
        return Err(invalid_argument(&format!("meters[{index}]"), "is empty"));
    }
    if let (Some(start), Some(end)) = (&request.start, &request.end)
        && (end.seconds, end.nanos) <= (start.seconds, start.nanos)
    {
        return Err(invalid_argument("end", "must be after start"));
    }
    Ok(())
}

/// The single-meter request for each meter asked for.
fn per_meter(request: &GetStatisticsRequest) -> Vec<GetStatisticsRequest> {
    request
        .meters
        .iter()
        .map(|meter| GetStatisticsRequest {
            meter: meter.clone(),
            meters: Vec::new(),
            ..request.clone()
        })
        .collect()
}

fn answer(
    request: &GetStatisticsRequest,
    answers: Vec<GetStatisticsResponse>,
) -> GetStatisticsResponse {
    GetStatisticsResponse {
        buckets: Vec::new(),
        by_meter: request
            .meters
            .iter()
            .zip(answers)
            .map(|(meter, answer)| MeterStatistics {
                meter: meter.clone(),
                buckets: answer.buckets,
            })
            .collect(),
    }
}

/// How the meters of one request are queried.
#[derive(Clone, Copy)]
enum Queries {
    /// The blocking form's work: one query after another.
    OneAfterAnother,
    /// The async form's work: every meter's query at once, each on a pool
    /// connection of its own.
    Concurrently,
}

async fn statistics(
    database: &Database,
    request: &GetStatisticsRequest,
    queries: Queries,
) -> Result<GetStatisticsResponse, StorageError> {
    if request.meters.is_empty() {
        return samples::statistics(database, request).await;
    }
    let asked = per_meter(request);
    let answers = match queries {
        Queries::OneAfterAnother => {
            let mut answers = Vec::with_capacity(asked.len());
            for one in &asked {
                answers.push(samples::statistics(database, one).await?);
            }
            answers
        }
        Queries::Concurrently => {
            try_join_all(asked.iter().map(|one| samples::statistics(database, one))).await?
        }
    };
    Ok(answer(request, answers))
}

impl Query {
    /// Registers the query endpoints.
    pub fn register(
        app: &App,
        database: &Database,
        overload_wait: Duration,
    ) -> anyhow::Result<Self> {
        let runtime = Handle::current();
        let (db, rt, db_async) = (database.clone(), runtime.clone(), database.clone());
        let list_meters = app.register(Endpoint::both(
            LIST_METERS,
            move |_, request: ListMetersRequest| {
                rt.block_on(samples::list_meters(&db, &request))
                    .map_err(unavailable)
            },
            move |_, request: ListMetersRequest| {
                let db = db_async.clone();
                async move {
                    samples::list_meters(&db, &request)
                        .await
                        .map_err(unavailable)
                }
            },
        ))?;
        let (db, db_async) = (database.clone(), database.clone());
        let statistics = app.register(Endpoint::both(
            GET_STATISTICS,
            move |_, request: GetStatisticsRequest| {
                check(&request)?;
                runtime
                    .block_on(statistics(&db, &request, Queries::OneAfterAnother))
                    .map_err(unavailable)
            },
            move |_, request: GetStatisticsRequest| {
                let db = db_async.clone();
                async move {
                    check(&request)?;
                    statistics(&db, &request, Queries::Concurrently)
                        .await
                        .map_err(unavailable)
                }
            },
        ))?;
        Ok(Self {
            list_meters,
            statistics,
            overload_wait,
        })
    }
}

#[tonic::async_trait]
impl SampleQuery for Query {
    async fn list_meters(
        &self,
        request: Request<ListMetersRequest>,
    ) -> Result<Response<ListMetersResponse>, Status> {
        switchyard_grpc::unary(&self.list_meters, request, self.overload_wait).await
    }

    async fn get_statistics(
        &self,
        request: Request<GetStatisticsRequest>,
    ) -> Result<Response<GetStatisticsResponse>, Status> {
        switchyard_grpc::unary(&self.statistics, request, self.overload_wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(meter: &str, meters: &[&str]) -> GetStatisticsRequest {
        GetStatisticsRequest {
            meter: meter.into(),
            meters: meters.iter().map(|m| m.to_string()).collect(),
            ..GetStatisticsRequest::default()
        }
    }

    #[test]
    fn a_request_names_one_meter_or_several_never_both_nor_none() {
        let field = |r: GetStatisticsRequest| check(&r).err().map(|s| s.message().to_string());
        assert_eq!(field(asking("cpu", &[])), None);
        assert_eq!(field(asking("", &["cpu", "mem"])), None);
        assert!(field(asking("", &[])).is_some_and(|m| m.contains("`meter`")));
        assert!(field(asking("cpu", &["mem"])).is_some_and(|m| m.contains("`meters`")));
        assert!(field(asking("", &["cpu", ""])).is_some_and(|m| m.contains("`meters[1]`")));
        let many: Vec<String> = (0..=MAX_METERS).map(|i| format!("m{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(field(asking("", &many)).is_some_and(|m| m.contains("at most 64")));
    }

    #[test]
    fn answers_keep_the_order_the_meters_were_asked_in() {
        let request = asking("", &["b", "a"]);
        let answers = per_meter(&request)
            .into_iter()
            .map(|one| GetStatisticsResponse {
                buckets: vec![switchyard_proto::metering::v1::Statistics {
                    count: one.meter.len() as u64,
                    ..Default::default()
                }],
                by_meter: Vec::new(),
            })
            .collect();
        let answered = answer(&request, answers);
        let meters: Vec<&str> = answered.by_meter.iter().map(|m| m.meter.as_str()).collect();
        assert_eq!(meters, ["b", "a"]);
    }
}
