//! The public API (`switchyard.metering.v1.Metering`). Every method is an
//! async endpoint: samples go to the collector by AMQP cast, queries to the
//! collector by gRPC, alarm management to the notifier by AMQP RPC call.

use std::future::Future;
use std::time::Duration;

use prost::Message;
use switchyard_app::App;
use switchyard_executor::{BoundEndpoint, Context, Endpoint, EndpointKind, EndpointSpec};
use switchyard_grpc::client::{Traced, deadline};
use switchyard_grpc::{GrpcOutcome, invalid_argument, retry_unsent};
use switchyard_messaging::{CallError, MessagingError, RpcClient, Target, wire};
use switchyard_proto::catalogue;
use switchyard_proto::collector::v1::sample_query_client::SampleQueryClient;
use switchyard_proto::messaging::v1::{PromoteCanary, RecordSamples};
use switchyard_proto::metering::v1::metering_server::Metering;
use switchyard_proto::metering::v1::*;
use switchyard_rollout::heartbeat;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::dashboard::Board;
use crate::dashboard::board::Trace;
use crate::rollout::Rollout;

type QueryClient = SampleQueryClient<Traced<Channel>>;

/// The method names, as endpoints (what `--check-config` checks).
pub const METHODS: [&str; 10] = [
    "Metering/PostSamples",
    "Metering/ListMeters",
    "Metering/GetStatistics",
    "Metering/CreateAlarm",
    "Metering/GetAlarm",
    "Metering/ListAlarms",
    "Metering/DeleteAlarm",
    "Metering/GetAlarmHistory",
    "Metering/GetRollout",
    "Metering/PromoteCanary",
];

/// How each endpoint is written: all ported to async.
pub fn endpoints() -> Vec<EndpointSpec> {
    METHODS
        .iter()
        .map(|m| EndpointSpec::new(*m, EndpointKind::Async))
        .collect()
}

/// What the handlers need.
#[derive(Debug, Clone)]
pub struct Backends {
    pub rpc: RpcClient,
    pub exchange: String,
    pub collector: QueryClient,
    pub alarm_timeout: Duration,
    pub rollout: Rollout,
    pub heartbeat_interval: Duration,
    /// `amqp.max_body_bytes`: the largest message the collector takes. A
    /// request whose batch would be larger is refused here, before it is
    /// acknowledged, instead of being dead-lettered there after.
    pub max_body_bytes: usize,
}

/// Connects (lazily) to the collector's query API (TLS for `https://`).
pub fn collector_client(
    grpc: &switchyard_grpc::GrpcConfig,
    url: &str,
) -> Result<QueryClient, switchyard_grpc::GrpcError> {
    let channel = grpc.client_endpoint(url)?.connect_lazy();
    Ok(SampleQueryClient::new(Traced::new(channel, url)))
}

fn call_status(error: CallError) -> Status {
    match error {
        CallError::InvalidArgument(message) => Status::invalid_argument(message),
        CallError::Remote { code, message } => match code.as_str() {
            catalogue::code::NOT_FOUND => Status::not_found(message),
            catalogue::code::TRANSIENT | catalogue::code::UNAVAILABLE => {
                Status::unavailable(message)
            }
            catalogue::code::DEADLINE_EXCEEDED => Status::deadline_exceeded(message),
            _ => Status::internal(format!("{code}: {message}")),
        },
        error @ CallError::NoSuchMethod { .. } => {
            Status::unimplemented(format!("the notifier: {error}"))
        }
        CallError::Timeout(after) => {
            Status::deadline_exceeded(format!("the notifier did not answer within {after:?}"))
        }
        CallError::NoConsumers { target } => {
            Status::unavailable(format!("no notifier is running ({target})"))
        }
        error @ CallError::ReplyLost => Status::unavailable(error.to_string()),
        CallError::Transport(error) => Status::unavailable(error.to_string()),
    }
}

async fn alarm_call<Req: Message, Resp: Message + Default>(
    backends: &Backends,
    cx: &Context,
    method: &str,
    request: Req,
) -> Result<Resp, Status> {
    let target = Target::topic(&backends.exchange, catalogue::topic::ALARMS);
    // No longer than the caller waits.
    let timeout = cx.remaining().map_or(backends.alarm_timeout, |left| {
        left.min(backends.alarm_timeout)
    });
    backends
        .rpc
        .call(&target, method, &request, timeout)
        .await
        .map_err(call_status)
}

async fn post_samples(
    backends: Backends,
    _: Context,
    mut request: PostSamplesRequest,
) -> GrpcOutcome<PostSamplesResponse> {
    switchyard_proto::validate::samples(&request.samples, switchyard_proto::time::unix_seconds())
        .map_err(|problem| invalid_argument(&problem.field, &problem.problem))?;
    for sample in &mut request.samples {
        if sample.id.is_empty() {
            sample.id = format!("s-{}", wire::new_id());
        }
    }
    let ids = request.samples.iter().map(|s| s.id.clone()).collect();
    let batch = RecordSamples {
        samples: request.samples,
    };
    let size = prost::Message::encoded_len(&batch);
    if size > backends.max_body_bytes {
        return Err(invalid_argument(
            "samples",
            format!(
                "the batch is {size} bytes as queued; the collector takes at most {} (amqp.max_body_bytes): send fewer samples or less metadata per call",
                backends.max_body_bytes
            ),
        ));
    }
    // Returns once the broker confirmed the persistent message: success is
    // never reported for samples that are not durably queued.
    backends
        .rpc
        .cast(
            &Target::topic(&backends.exchange, catalogue::topic::COLLECTOR),
            catalogue::method::RECORD_SAMPLES,
            &batch,
        )
        .await
        .map_err(|error| match error {
            CallError::Transport(MessagingError::Refused { .. }) => Status::resource_exhausted(
                "samples not queued: the collector's queue is full (amqp.max_queue_length); retry later",
            ),
            error => Status::unavailable(format!("samples not queued: {error}")),
        })?;
    Ok(PostSamplesResponse { ids })
}

/// Fans a promote request out to the service's workers (their launchers
/// act on it), when the rollout table shows a canary of that service.
async fn promote_canary(
    backends: Backends,
    _: Context,
    request: PromoteCanaryRequest,
) -> GrpcOutcome<PromoteCanaryResponse> {
    let service = request.service.trim().to_string();
    if service.is_empty() {
        return Err(invalid_argument("service", "is required"));
    }
    let canaries = backends
        .rollout
        .table(backends.heartbeat_interval)
        .instances
        .iter()
        .filter(|i| i.service == service && i.up && i.role == "canary")
        .count();
    if canaries == 0 {
        return Err(Status::failed_precondition(format!(
            "no canary worker of `{service}` is up in the rollout table; nothing to promote"
        )));
    }
    backends
        .rpc
        .fanout(
            &Target::topic(&backends.exchange, &heartbeat::control_topic(&service)),
            heartbeat::PROMOTE,
            &PromoteCanary {
                service: service.clone(),
            },
        )
        .await
        .map_err(|error| match error {
            CallError::NoConsumers { .. } => Status::failed_precondition(format!(
                "no worker of `{service}` listens for rollout commands"
            )),
            other => Status::unavailable(format!("promote not sent: {other}")),
        })?;
    Ok(PromoteCanaryResponse {
        canary_instances: canaries as u32,
    })
}

/// The Metering service with its endpoints bound to the executor.
#[derive(Debug)]
pub struct MeteringApi {
    post_samples: BoundEndpoint<PostSamplesRequest, GrpcOutcome<PostSamplesResponse>>,
    list_meters: BoundEndpoint<ListMetersRequest, GrpcOutcome<ListMetersResponse>>,
    statistics: BoundEndpoint<GetStatisticsRequest, GrpcOutcome<GetStatisticsResponse>>,
    create_alarm: BoundEndpoint<CreateAlarmRequest, GrpcOutcome<Alarm>>,
    get_alarm: BoundEndpoint<GetAlarmRequest, GrpcOutcome<Alarm>>,
    list_alarms: BoundEndpoint<ListAlarmsRequest, GrpcOutcome<ListAlarmsResponse>>,
    delete_alarm: BoundEndpoint<DeleteAlarmRequest, GrpcOutcome<DeleteAlarmResponse>>,
    alarm_history: BoundEndpoint<GetAlarmHistoryRequest, GrpcOutcome<GetAlarmHistoryResponse>>,
    rollout: BoundEndpoint<GetRolloutRequest, GrpcOutcome<GetRolloutResponse>>,
    promote: BoundEndpoint<PromoteCanaryRequest, GrpcOutcome<PromoteCanaryResponse>>,
    overload_wait: Duration,
    board: Board,
}

fn bind<Req, Resp, F, Fut>(
    app: &App,
    index: usize,
    backends: &Backends,
    body: F,
) -> anyhow::Result<BoundEndpoint<Req, GrpcOutcome<Resp>>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Backends, Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = GrpcOutcome<Resp>> + Send + 'static,
{
    let backends = backends.clone();
    app.register(Endpoint::from_async(METHODS[index], move |cx, request| {
        body(backends.clone(), cx, request)
    }))
}

/// Endpoint `index` of [`METHODS`]: the notifier's `method`, asked over
/// AMQP ([`alarm_call`]).
fn bind_alarm<Req, Resp>(
    app: &App,
    index: usize,
    backends: &Backends,
    method: &'static str,
) -> anyhow::Result<BoundEndpoint<Req, GrpcOutcome<Resp>>>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    bind(app, index, backends, move |b, cx, r| async move {
        alarm_call(&b, &cx, method, r).await
    })
}

impl MeteringApi {
    /// Registers every method (each one declared in [`endpoints`]).
    pub fn register(
        app: &App,
        backends: &Backends,
        overload_wait: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            post_samples: bind(app, 0, backends, post_samples)?,
            list_meters: bind(app, 1, backends, |b, cx, r: ListMetersRequest| async move {
                let reply = retry_unsent(|| {
                    let (mut collector, r) = (b.collector.clone(), r.clone());
                    let r = deadline(tonic::Request::new(r), cx.remaining());
                    async move { collector.list_meters(r).await }
                });
                Ok(reply.await?.into_inner())
            })?,
            statistics: bind(
                app,
                2,
                backends,
                |b, cx, r: GetStatisticsRequest| async move {
                    // The rest is checked where the queries run.
                    if r.meter.is_empty() && r.meters.is_empty() {
                        return Err(invalid_argument("meter", "is required (or `meters`)"));
                    }
                    let reply = retry_unsent(|| {
                        let (mut collector, r) = (b.collector.clone(), r.clone());
                        let r = deadline(tonic::Request::new(r), cx.remaining());
                        async move { collector.get_statistics(r).await }
                    });
                    Ok(reply.await?.into_inner())
                },
            )?,
            create_alarm: bind_alarm(app, 3, backends, catalogue::method::CREATE_ALARM)?,
            get_alarm: bind_alarm(app, 4, backends, catalogue::method::GET_ALARM)?,
            list_alarms: bind_alarm(app, 5, backends, catalogue::method::LIST_ALARMS)?,
            delete_alarm: bind_alarm(app, 6, backends, catalogue::method::DELETE_ALARM)?,
            alarm_history: bind_alarm(app, 7, backends, catalogue::method::GET_ALARM_HISTORY)?,
            rollout: bind(app, 8, backends, |b, _, _: GetRolloutRequest| async move {
                Ok(b.rollout.table(b.heartbeat_interval))
            })?,
            promote: bind(app, 9, backends, promote_canary)?,
            overload_wait,
            board: backends.rollout.board().clone(),
        })
    }

    /// Runs one call; the rollout page lists it among the recent calls
    /// (except the rollout table's own polls).
    async fn unary<Req, Resp>(
        &self,
        endpoint: &BoundEndpoint<Req, GrpcOutcome<Resp>>,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        switchyard_grpc::unary_observed(endpoint, request, self.overload_wait, |finished| {
            if finished.method == METHODS[8] {
                return;
            }
            self.board.call(Trace {
                at_ms: crate::dashboard::now_ms(),
                method: finished.method.to_string(),
                trace_id: finished.trace_id().unwrap_or_default(),
                code: switchyard_grpc::code_name(finished.code).to_string(),
                millis: finished.elapsed.as_secs_f64() * 1000.0,
            });
        })
        .await
    }
}

#[tonic::async_trait]
impl Metering for MeteringApi {
    async fn post_samples(
        &self,
        request: Request<PostSamplesRequest>,
    ) -> Result<Response<PostSamplesResponse>, Status> {
        self.unary(&self.post_samples, request).await
    }
    async fn list_meters(
        &self,
        request: Request<ListMetersRequest>,
    ) -> Result<Response<ListMetersResponse>, Status> {
        self.unary(&self.list_meters, request).await
    }
    async fn get_statistics(
        &self,
        request: Request<GetStatisticsRequest>,
    ) -> Result<Response<GetStatisticsResponse>, Status> {
        self.unary(&self.statistics, request).await
    }
    async fn create_alarm(
        &self,
        request: Request<CreateAlarmRequest>,
    ) -> Result<Response<Alarm>, Status> {
        self.unary(&self.create_alarm, request).await
    }
    async fn get_alarm(
        &self,
        request: Request<GetAlarmRequest>,
    ) -> Result<Response<Alarm>, Status> {
        self.unary(&self.get_alarm, request).await
    }
    async fn list_alarms(
        &self,
        request: Request<ListAlarmsRequest>,
    ) -> Result<Response<ListAlarmsResponse>, Status> {
        self.unary(&self.list_alarms, request).await
    }
    async fn delete_alarm(
        &self,
        request: Request<DeleteAlarmRequest>,
    ) -> Result<Response<DeleteAlarmResponse>, Status> {
        self.unary(&self.delete_alarm, request).await
    }
    async fn get_alarm_history(
        &self,
        request: Request<GetAlarmHistoryRequest>,
    ) -> Result<Response<GetAlarmHistoryResponse>, Status> {
        self.unary(&self.alarm_history, request).await
    }
    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<GetRolloutResponse>, Status> {
        self.unary(&self.rollout, request).await
    }
    async fn promote_canary(
        &self,
        request: Request<PromoteCanaryRequest>,
    ) -> Result<Response<PromoteCanaryResponse>, Status> {
        self.unary(&self.promote, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/wire-format.md` tells other languages' clients which gRPC
    /// status the api answers for each error code a notifier replies with
    /// (`catalogue::CODES`); the api keeps that promise.
    #[test]
    fn each_remote_error_code_becomes_the_status_the_catalogue_names() {
        for (code, _, status) in catalogue::CODES {
            let answered = call_status(CallError::Remote {
                code: code.to_string(),
                message: "what happened".into(),
            });
            assert_eq!(
                switchyard_grpc::code_name(answered.code()),
                *status,
                "{code}"
            );
        }
    }

    #[test]
    fn an_endpoints_own_error_code_is_internal_and_keeps_its_code() {
        let answered = call_status(CallError::Remote {
            code: "quota".into(),
            message: "over".into(),
        });
        assert_eq!(answered.code(), tonic::Code::Internal);
        assert_eq!(answered.message(), "quota: over");
    }
}
