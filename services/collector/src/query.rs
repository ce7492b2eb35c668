//! The internal query API (`switchyard.collector.v1.SampleQuery`): blocking
//! endpoints over the same database, run through the executor.

use std::time::Duration;

use switchyard_executor::{BoundEndpoint, Endpoint, Executor, PhaseMismatch};
use switchyard_grpc::{GrpcOutcome, invalid_argument};
use switchyard_proto::collector::v1::sample_query_server::SampleQuery;
use switchyard_proto::metering::v1::{
    GetStatisticsRequest, GetStatisticsResponse, ListMetersRequest, ListMetersResponse,
};
use switchyard_storage::Database;
use tokio::runtime::Handle;
use tonic::{Request, Response, Status};

use crate::samples;

/// The SampleQuery service with its endpoints bound to the executor.
#[derive(Debug)]
pub struct Query {
    list_meters: BoundEndpoint<ListMetersRequest, GrpcOutcome<ListMetersResponse>>,
    statistics: BoundEndpoint<GetStatisticsRequest, GrpcOutcome<GetStatisticsResponse>>,
    overload_wait: Duration,
}

fn unavailable(error: switchyard_storage::StorageError) -> Status {
    Status::unavailable(format!("storage: {error}"))
}

impl Query {
    /// Registers the query endpoints.
    pub fn register(
        executor: &Executor,
        database: &Database,
        overload_wait: Duration,
    ) -> Result<Self, PhaseMismatch> {
        let runtime = Handle::current();
        let (db, rt) = (database.clone(), runtime.clone());
        let list_meters = executor.register(Endpoint::blocking(
            "SampleQuery/ListMeters",
            move |_, request: ListMetersRequest| {
                rt.block_on(samples::list_meters(&db, &request))
                    .map_err(unavailable)
            },
        ))?;
        let db = database.clone();
        let statistics = executor.register(Endpoint::blocking(
            "SampleQuery/GetStatistics",
            move |_, request: GetStatisticsRequest| {
                if request.meter.is_empty() {
                    return Err(invalid_argument("meter", "is required"));
                }
                if let (Some(start), Some(end)) = (&request.start, &request.end)
                    && (end.seconds, end.nanos) <= (start.seconds, start.nanos)
                {
                    return Err(invalid_argument("end", "must be after start"));
                }
                runtime
                    .block_on(samples::statistics(&db, &request))
                    .map_err(unavailable)
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
