//! The application skeleton every Switchyard service is built on.
//!
//! A service declares what it is — its endpoints ([`EndpointSpec`]s, the
//! list `--check-config` prints), its connections, what it serves over AMQP
//! and gRPC, and what its readiness depends on — and [`App`] runs the rest,
//! in the one order every service needs:
//!
//! 1. connect to the broker ([`App::connect`]); one *attempt* of the
//!    service's messaging runs until shutdown or until the connection is
//!    lost for good;
//! 2. the service registers its endpoints ([`App::register`]: only declared
//!    ones) and starts its RPC servers and notification listeners
//!    ([`App::serve_rpc`], [`App::listen`]);
//! 3. [`App::serve_grpc`]: serve gRPC (health, reflection and the
//!    service's own routes), start the heartbeats, watch the readiness
//!    probes (the broker's first), tell a launcher's supervisor when ready,
//!    serve until the attempt ends, wait for the AMQP consumers to drain,
//!    then either return (shutdown) or ask to be run again ([`Restart`]).
//!    The gRPC port is bound once per process and outlives the attempts
//!    ([`Host`]): between them, callers keep their connections and get
//!    `UNAVAILABLE` at once.
//!
//! `main` is one call: [`main`] parses the flags, loads and checks the
//! configuration, then hands over to [`switchyard_service::run`].
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, FromArgMatches};
use switchyard_config::ConfigFlags;
use switchyard_executor::{BoundEndpoint, Endpoint, EndpointSpec, Outcome};
use switchyard_grpc::{GrpcConfig, Readiness};
use switchyard_messaging::{
    AmqpConfig, EndpointError, Handled, Notification, NotificationListenerBuilder, Notifier,
    RpcServerBuilder, Transport,
};
use switchyard_rollout::heartbeat::{self, RolloutConfig};
use switchyard_service::{Restart, Running, ServiceSettings};
use tokio_util::sync::CancellationToken;

pub use switchyard_service::shared_problems;

/// The sections every service of the fleet has besides the shared ones:
/// the broker, gRPC and rollout heartbeats.
pub trait FleetSettings: ServiceSettings {
    /// `[amqp]`.
    fn amqp(&self) -> &AmqpConfig;
    /// `[grpc]`.
    fn grpc(&self) -> &GrpcConfig;
    /// `[rollout]`.
    fn rollout(&self) -> &RolloutConfig;
}

/// The range problems of the shared and fleet sections, with full dotted
/// keys; a service's [`switchyard_config::Settings::problems`] adds its own.
pub fn fleet_problems<C: FleetSettings>(settings: &C) -> Vec<(String, String)> {
    use switchyard_service::in_section;
    let mut problems = shared_problems(settings);
    problems.extend(in_section("amqp", settings.amqp().problems()));
    problems.extend(in_section("rollout", settings.rollout().problems()));
    problems.extend(in_section("grpc", settings.grpc().problems()));
    problems
}

/// The sections every fleet service's settings hold, by the names
/// [`fleet_settings!`] gives them.
pub mod sections {
    pub use switchyard_executor::{ExecutorConfig, Phase};
    pub use switchyard_grpc::GrpcConfig;
    pub use switchyard_messaging::AmqpConfig;
    pub use switchyard_rollout::heartbeat::RolloutConfig;
    pub use switchyard_service::{LauncherConfig, MetricsConfig};
    pub use switchyard_telemetry::TelemetryConfig;
}

/// Declares a fleet service's settings: the shared sections (`executor`,
/// `telemetry`, `metrics`, `launcher`, `amqp`, `grpc`, `rollout`), then the
/// service's own, each with its default; implements `Default`,
/// [`switchyard_service::ServiceSettings`] and [`FleetSettings`]. The
/// service still implements [`switchyard_config::Settings`] (its range
/// checks, starting from [`fleet_problems`]).
///
/// ```ignore
/// switchyard_app::fleet_settings! {
///     /// Everything the collector reads.
///     pub struct CollectorSettings {
///         executor: ExecutorConfig { phase: Phase::Async, ..Default::default() },
///         grpc: GrpcConfig { listen: Listen::loopback(50052), ..Default::default() };
///         /// `[storage]`.
///         pub storage: StorageConfig = StorageConfig::sqlite_for("collector"),
///     }
/// }
/// ```
#[macro_export]
macro_rules! fleet_settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(executor: $executor:expr,)?
            $(grpc: $grpc:expr,)?
            ;
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident : $type:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        $vis struct $name {
            /// `[executor]`.
            pub executor: $crate::sections::ExecutorConfig,
            /// `[telemetry]`.
            pub telemetry: $crate::sections::TelemetryConfig,
            /// `[metrics]`.
            pub metrics: $crate::sections::MetricsConfig,
            /// `[launcher]`: worker processes under one supervisor.
            pub launcher: $crate::sections::LauncherConfig,
            /// `[amqp]`.
            pub amqp: $crate::sections::AmqpConfig,
            /// `[grpc]`.
            pub grpc: $crate::sections::GrpcConfig,
            /// `[rollout]`: heartbeats.
            pub rollout: $crate::sections::RolloutConfig,
            $( $(#[$field_meta])* $field_vis $field: $type, )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self {
                    executor: $crate::fleet_settings!(@or $($executor)?),
                    telemetry: ::std::default::Default::default(),
                    metrics: ::std::default::Default::default(),
                    launcher: ::std::default::Default::default(),
                    amqp: ::std::default::Default::default(),
                    grpc: $crate::fleet_settings!(@or $($grpc)?),
                    rollout: ::std::default::Default::default(),
                    $( $field: $default, )*
                }
            }
        }

        $crate::__service_settings!($name, grpc);

        impl $crate::FleetSettings for $name {
            fn amqp(&self) -> &$crate::sections::AmqpConfig {
                &self.amqp
            }
            fn grpc(&self) -> &$crate::sections::GrpcConfig {
                &self.grpc
            }
            fn rollout(&self) -> &$crate::sections::RolloutConfig {
                &self.rollout
            }
        }
    };
    (@or) => { ::std::default::Default::default() };
    (@or $value:expr) => { $value };
}

#[doc(hidden)]
pub use switchyard_service::service_settings as __service_settings;

/// What a service is, for [`main`].
#[derive(Debug, Clone, Copy)]
pub struct Service<C> {
    /// Its name: `service.name`, the configuration file's stem, log lines.
    pub name: &'static str,
    /// The binary's name (`switchyard-collector`).
    pub binary: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Its endpoints for the loaded settings (a service mid-migration may
    /// pick a body by phase): what `--check-config` checks and prints, and
    /// all that [`App::register`] accepts.
    pub endpoints: fn(&C) -> Vec<EndpointSpec>,
}

/// A service's whole `main`: flags, configuration (exit 2 on any problem;
/// `--check-config`, `--print-config`), then `serve` under
/// [`switchyard_service::run`].
pub fn main<C, F, Fut>(service: Service<C>, serve: F) -> ExitCode
where
    C: ServiceSettings + Clone,
    F: Fn(C, App) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let command = ConfigFlags::augment_args(
        clap::Command::new(service.binary)
            .version(env!("CARGO_PKG_VERSION"))
            .about(service.about),
    );
    let flags = match ConfigFlags::from_arg_matches(&command.get_matches()) {
        Ok(flags) => flags,
        Err(error) => error.exit(),
    };
    let loaded = match switchyard_service::configure::<C>(service.name, &flags, service.endpoints) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let declared = (service.endpoints)(&loaded.settings);
    let host = Host::default();
    switchyard_service::run(service.name, loaded.settings, move |settings, running| {
        let app = App::new(service.name, running, host.clone(), declared.clone());
        serve(settings, app)
    })
}

/// A part of a run the run waits for (an RPC server, a listener), by name.
type Stopped = (String, Pin<Box<dyn Future<Output = ()> + Send>>);
type Probe = Box<dyn FnOnce(&Readiness, CancellationToken) + Send>;

/// One run of a service: what it registered, serves and waits for.
pub struct App {
    service: &'static str,
    running: Running,
    host: Host,
    declared: Vec<EndpointSpec>,
    messaging: Option<Messaging>,
    attempt: CancellationToken,
    probes: Vec<Probe>,
    stopped: Vec<Stopped>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("service", &self.service)
            .field("declared", &self.declared)
            .field("messaging", &self.messaging.is_some())
            .field("probes", &self.probes.len())
            .field("waiting_for", &self.stopped.len())
            .finish()
    }
}

/// The broker side of one attempt.
#[derive(Clone)]
pub struct Messaging {
    /// The connection.
    pub transport: Transport,
    /// `amqp.exchange`.
    pub exchange: String,
    heartbeat_interval: Duration,
}

impl std::fmt::Debug for Messaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messaging")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

/// How often a readiness probe runs.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl App {
    /// A run of `service` with `running`'s executor, accepting `declared`.
    ///
    /// `host` is the process's gRPC server: hand every run a clone of the
    /// same one.
    pub fn new(
        service: &'static str,
        running: Running,
        host: Host,
        declared: Vec<EndpointSpec>,
    ) -> Self {
        let attempt = running.shutdown.clone();
        Self {
            service,
            running,
            host,
            declared,
            messaging: None,
            attempt,
            probes: Vec::new(),
            stopped: Vec::new(),
        }
    }

    /// What the skeleton was handed: executor, identity, shutdown, supervisor.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// State that outlives the messaging runs of this process (a rebuild
    /// after a lost broker is a new run): the first run makes it with
    /// `init`; every run gets a clone of the same value. Give it a type of
    /// its own: one value is kept per type.
    pub fn kept<T: Clone + Send + 'static>(&self, init: impl FnOnce() -> T) -> T {
        switchyard_executor::sync::lock(&self.host.kept).get_or_insert(init)
    }

    /// Ends on shutdown, or (once connected) when the broker connection is
    /// lost for good: what every server and consumer of this run stops on.
    pub fn attempt(&self) -> CancellationToken {
        self.attempt.clone()
    }

    /// Connects to the broker: the run now ends when the connection is lost
    /// for good, heartbeats start with gRPC, and readiness waits for the
    /// broker. Returns the connection, for the service's own clients.
    pub async fn connect<C: FleetSettings>(&mut self, settings: &C) -> anyhow::Result<Messaging> {
        let transport = Transport::connect(
            settings.amqp(),
            self.service,
            &self.running.identity.instance_id,
        )
        .await?;
        self.attempt = transport.attempt(&self.running.shutdown);
        let messaging = Messaging {
            transport: transport.clone(),
            exchange: settings.amqp().exchange.clone(),
            heartbeat_interval: Duration::from_millis(settings.rollout().heartbeat_interval_ms),
        };
        self.probe("amqp", transport.readiness_probe());
        self.messaging = Some(messaging.clone());
        Ok(messaging)
    }

    fn messaging(&self) -> anyhow::Result<&Messaging> {
        self.messaging
            .as_ref()
            .context("the service serves AMQP but did not connect to the broker (App::connect)")
    }

    /// A publisher of notifications, named after this instance.
    pub async fn notifier(&mut self) -> anyhow::Result<Notifier> {
        let messaging = self.messaging()?.clone();
        let name = format!("{}@{}", self.service, self.running.identity.instance_id);
        let starting = Notifier::new(&messaging.transport, &messaging.exchange, &name);
        self.starting("the notifier", starting).await
    }

    /// Awaits one step of the run's start: a server's or a listener's
    /// declarations and consumer, the notifier's channel, the heartbeats,
    /// a service's own client on the run's connection.
    /// Each waits for the broker without a bound of its own (see
    /// `switchyard_messaging`'s slow-answer reports), and lapin never fails
    /// an operation whose connection its heartbeats closed. So a step still
    /// waiting when the connection is declared lost for good is given up:
    /// what the run started drains, the connection is closed, and the
    /// service is run again ([`Restart`]), as after a loss while serving.
    /// Before, such a start held the service connected to nothing, unready
    /// and silent, for ever. A stop (SIGTERM) is left to the grace period,
    /// as before: it does not turn a start into a failure.
    pub async fn starting<T, E: Into<anyhow::Error>>(
        &mut self,
        step: &str,
        started: impl Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        let started = async { started.await.map_err(Into::into) };
        let Some(lost) = self.messaging.as_ref().map(|m| m.transport.lost()) else {
            return started.await;
        };
        tokio::pin!(started);
        tokio::select! {
            biased;
            done = &mut started => return done,
            () = lost.cancelled() => {}
        }
        if self.running.shutdown.is_cancelled() {
            return started.await;
        }
        tracing::warn!(
            "{step} had not started when the broker connection was lost; ending the run"
        );
        self.end_run().await?;
        Err(Restart::because(Abandoned {
            step: step.to_string(),
        })
        .into())
    }

    /// Ends a run: waits for what it started to drain, then closes its
    /// connection; `Err` ([`Restart`]) when the connection had been lost.
    async fn end_run(&mut self) -> anyhow::Result<()> {
        drained(std::mem::take(&mut self.stopped)).await;
        if let Some(messaging) = &self.messaging {
            messaging
                .transport
                .finish(&self.running.shutdown)
                .await
                .map_err(Restart::because)?;
        }
        Ok(())
    }

    /// Registers `endpoint` with the executor. Only a declared endpoint is
    /// accepted, so the list `--check-config` checks is the list that runs.
    pub fn register<Req, Out>(
        &self,
        endpoint: Endpoint<Req, Out>,
    ) -> anyhow::Result<BoundEndpoint<Req, Out>>
    where
        Req: Send + 'static,
        Out: Outcome,
    {
        let name = endpoint.name().to_string();
        let declared = self.declared.iter().find(|spec| spec.name == name);
        match declared {
            Some(spec) if spec.kind == endpoint.kind() => {
                Ok(self.running.executor.register(endpoint)?)
            }
            Some(spec) => anyhow::bail!(
                "endpoint `{name}` is written {} but declared {} in the service's endpoint list",
                endpoint.kind(),
                spec.kind
            ),
            None => anyhow::bail!(
                "endpoint `{name}` is not in the service's endpoint list (the one --check-config checks): declare it there"
            ),
        }
    }

    /// An RPC server for `topic` on this run's exchange, to add methods to
    /// and hand to [`App::serve_rpc`].
    pub fn rpc_server(&self, topic: &str) -> anyhow::Result<RpcServerBuilder> {
        Ok(switchyard_messaging::RpcServer::builder(
            &self.messaging()?.exchange,
            topic,
            &self.running.identity.instance_id,
        ))
    }

    /// Starts consuming for `server`; the run waits for it to drain.
    pub async fn serve_rpc(&mut self, server: RpcServerBuilder) -> anyhow::Result<()> {
        let transport = self.messaging()?.transport.clone();
        let what = format!("the RPC server of topic `{}`", server.topic());
        let starting = server.start(
            &transport,
            self.running.executor.config().capacity(),
            self.attempt.clone(),
        );
        let server = self.starting(&what, starting).await?;
        self.stopped.push((what, Box::pin(server.stopped())));
        Ok(())
    }

    /// A notification pool `pool` on this run's exchange, to subscribe and
    /// hand to [`App::listen`].
    pub fn pool(&self, pool: &str) -> anyhow::Result<NotificationListenerBuilder> {
        Ok(switchyard_messaging::NotificationListener::builder(
            &self.messaging()?.exchange,
            pool,
        ))
    }

    /// Starts `listener` dispatching to `endpoint` (registered here, so it
    /// must be declared); the run waits for it to drain.
    pub async fn listen<P>(
        &mut self,
        listener: NotificationListenerBuilder,
        endpoint: Endpoint<Notification<P>, Result<Handled, EndpointError>>,
    ) -> anyhow::Result<()>
    where
        P: prost::Message + Default + Send + 'static,
    {
        let endpoint = self.register(endpoint)?;
        let transport = self.messaging()?.transport.clone();
        let what = format!("the notification listener of pool `{}`", listener.pool());
        let starting = listener.start(&transport, endpoint, self.attempt.clone());
        let listener = self.starting(&what, starting).await?;
        self.stopped.push((what, Box::pin(listener.stopped())));
        Ok(())
    }

    /// Readiness also waits for `probe` (checked every second under `name`).
    pub fn probe<F, Fut>(&mut self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probes.push(Box::new(move |readiness, attempt| {
            readiness.watch(name, PROBE_EVERY, attempt, probe);
        }));
    }

    /// Serves gRPC until the run ends, then drains: see the crate's
    /// documentation for the order. `grpc` names the services served
    /// besides health and reflection, who may call them, and adds their
    /// routes.
    ///
    /// The port is bound by the process's first run and kept to shutdown
    /// ([`Host`]): when a run ends because its broker connection was lost,
    /// callers keep their connections, health says NOT_SERVING and every
    /// other method answers `UNAVAILABLE` at once until the next run
    /// installs its routes.
    pub async fn serve_grpc<I>(mut self, config: &GrpcConfig, grpc: Grpc<I>) -> anyhow::Result<()>
    where
        I: tonic::service::Interceptor + Clone + Send + Sync + 'static,
    {
        let host = self.host.clone();
        let mut slot = host.hosted.lock().await;
        let hosted = match &mut *slot {
            Some(hosted) => hosted,
            None => slot.insert(Hosted::new(grpc.served).await),
        };
        let routes = switchyard_grpc::base_routes(
            hosted.health.clone(),
            switchyard_proto::FILE_DESCRIPTOR_SET,
            grpc.served,
            grpc.access,
        )?;
        let routes = (grpc.routes)(routes);
        if let Some(messaging) = self.messaging.clone() {
            let instance = heartbeat::Instance {
                // The name in its traces (`OTEL_SERVICE_NAME` renames both).
                service: self.running.identity.service.clone(),
                instance_id: self.running.identity.instance_id.clone(),
                executor: self.running.executor.clone(),
                supervisor: self.running.supervisor.clone(),
                shutdown: self.running.shutdown.clone(),
            };
            let starting = heartbeat::start(
                &messaging.transport,
                &messaging.exchange,
                &instance,
                messaging.heartbeat_interval,
                self.attempt.clone(),
            );
            self.starting("the rollout heartbeats", starting).await?;
        }
        let readiness = hosted.readiness.clone();
        for probe in self.probes.drain(..) {
            probe(&readiness, self.attempt.clone());
        }
        hosted.switch.install(routes);
        readiness.set(RUN, true).await;
        // The first run binds the port only now, with its routes in place:
        // a caller who finds the port open finds the service. Only then may
        // the supervisor hear "ready" (it tells its callers to connect).
        let server = hosted.listen(config, &self.running.shutdown).await?;
        let supervisor = self.running.supervisor.clone();
        readiness.on_ready(self.attempt.clone(), move || supervisor.ready());
        let ended = tokio::select! {
            biased;
            () = self.attempt.cancelled() => None,
            ended = server => Some(ended),
        };
        match ended {
            Some(ended) => {
                *slot = None;
                ended.context("the gRPC server task")??;
                // Without a shutdown the server stops on its own only when
                // it fails: the process stops with the error.
                anyhow::ensure!(
                    self.running.shutdown.is_cancelled(),
                    "the gRPC server stopped before its shutdown"
                );
            }
            None if self.running.shutdown.is_cancelled() => {
                // The server drains the calls in flight (see switchyard_grpc::serve).
                if let Some(server) = slot.take().and_then(|hosted| hosted.server) {
                    server.await.context("the gRPC server task")??;
                }
            }
            None => {
                hosted.switch.clear();
                readiness.set(RUN, false).await;
            }
        }
        drop(slot);
        self.end_run().await
    }
}

/// A step of a run's start given up because the broker connection was lost
/// while it waited ([`App::starting`]).
#[derive(Debug, thiserror::Error)]
#[error("{step} was still waiting for the broker when its connection was lost for good")]
struct Abandoned {
    step: String,
}

/// How often a run that is ending says what it still waits for.
const DRAIN_REPORT: Duration = Duration::from_secs(10);

/// Waits for every part of an ending run to stop, naming the ones still
/// running every [`DRAIN_REPORT`]: a drain that never ends is a service
/// that never rebuilds its messaging, and its log must say why.
async fn drained(parts: Vec<Stopped>) {
    use futures_util::StreamExt;
    let mut waiting: Vec<String> = parts.iter().map(|(what, _)| what.clone()).collect();
    let mut stopping: futures_util::stream::FuturesUnordered<_> = parts
        .into_iter()
        .map(|(what, stopped)| async move {
            stopped.await;
            what
        })
        .collect();
    let started = tokio::time::Instant::now();
    let mut report = tokio::time::interval_at(started + DRAIN_REPORT, DRAIN_REPORT);
    loop {
        tokio::select! {
            stopped = stopping.next() => match stopped {
                Some(what) => {
                    if let Some(at) = waiting.iter().position(|w| *w == what) {
                        waiting.remove(at);
                    }
                }
                None => return,
            },
            _ = report.tick() => tracing::warn!(
                "the run has been ending for {:?}; still waiting for {}",
                started.elapsed(),
                waiting.join(", ")
            ),
        }
    }
}

/// The readiness check that is false between runs.
const RUN: &str = "run";

/// What one process keeps across runs: its gRPC server, bound by the first
/// [`App::serve_grpc`] and serving until shutdown, and the state a service
/// asked to keep ([`App::kept`]). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Host {
    hosted: std::sync::Arc<tokio::sync::Mutex<Option<Hosted>>>,
    kept: std::sync::Arc<std::sync::Mutex<Kept>>,
}

/// State kept across runs, one value per type.
#[derive(Default)]
struct Kept(std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send>>);

impl Kept {
    /// A clone of the kept `T`, made with `init` the first time.
    fn get_or_insert<T: Clone + Send + 'static>(&mut self, init: impl FnOnce() -> T) -> T {
        let id = std::any::TypeId::of::<T>();
        if let Some(value) = self.0.get(&id).and_then(|v| v.downcast_ref::<T>()) {
            return value.clone();
        }
        let value = init();
        self.0.insert(id, Box::new(value.clone()));
        value
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kept({} values)", self.0.len())
    }
}

#[derive(Debug)]
struct Hosted {
    switch: switchyard_grpc::Switch,
    readiness: Readiness,
    health: tonic::service::Routes,
    /// Serving since the first run's routes were installed.
    server: Option<Server>,
}

type Server = tokio::task::JoinHandle<Result<(), switchyard_grpc::GrpcError>>;

impl Hosted {
    /// The server's health and switch, not listening yet.
    async fn new(served: &'static [&'static str]) -> Self {
        let (readiness, health) = Readiness::new(served).await;
        Self {
            switch: switchyard_grpc::Switch::new(health.clone()),
            readiness,
            health,
            server: None,
        }
    }

    /// Binds `config.listen` and serves the switch until `shutdown`, unless
    /// an earlier run did.
    async fn listen(
        &mut self,
        config: &GrpcConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<&mut Server> {
        if self.server.is_none() {
            self.server = Some(self.bind(config, shutdown).await?);
        }
        self.server
            .as_mut()
            .context("the gRPC server was just started")
    }

    async fn bind(
        &self,
        config: &GrpcConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Server> {
        let listener = match switchyard_service::inherited_listener(config.listen.address()) {
            Some(shared) => tokio::net::TcpListener::from_std(shared)
                .context("serving on the launcher's gRPC socket")?,
            None => switchyard_grpc::bind(&config.listen.to_string()).await?,
        };
        let address = listener.local_addr().context("reading the gRPC address")?;
        tracing::info!("gRPC on {address}");
        Ok(tokio::spawn(switchyard_grpc::serve(
            listener,
            self.switch.routes(),
            config.server_tls()?,
            config.connection_limits(),
            self.readiness.clone(),
            shutdown.clone(),
        )))
    }
}

/// What a service serves over gRPC, for [`App::serve_grpc`].
pub struct Grpc<I> {
    served: &'static [&'static str],
    access: I,
    routes: Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send>,
}

impl<I> std::fmt::Debug for Grpc<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grpc")
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

impl Grpc<fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>> {
    /// Health and reflection only (a service whose API is AMQP).
    pub fn health_only() -> Self {
        Self {
            served: &[],
            access: switchyard_grpc::open_access,
            routes: Box::new(|routes| routes),
        }
    }

    /// The services `served` (their full names), open to every caller;
    /// `routes` adds them.
    pub fn serving(
        served: &'static [&'static str],
        routes: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send + 'static,
    ) -> Self {
        Self {
            served,
            access: switchyard_grpc::open_access,
            routes: Box::new(routes),
        }
    }
}

impl<I> Grpc<I> {
    /// Reflection is open only to callers `access` lets through (health
    /// stays open: probes carry no token).
    pub fn with_access<J>(self, access: J) -> Grpc<J> {
        Grpc {
            served: self.served,
            access,
            routes: self.routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone)]
    struct Table(Arc<AtomicUsize>);

    #[test]
    fn a_kept_value_is_made_once_and_every_run_shares_it() {
        let mut kept = Kept::default();
        let made = AtomicUsize::new(0);
        let first = kept.get_or_insert(|| {
            made.fetch_add(1, Ordering::Relaxed);
            Table(Arc::new(AtomicUsize::new(0)))
        });
        first.0.store(7, Ordering::Relaxed);
        let second = kept.get_or_insert(|| {
            made.fetch_add(1, Ordering::Relaxed);
            Table(Arc::new(AtomicUsize::new(0)))
        });
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert_eq!(second.0.load(Ordering::Relaxed), 7);
        // One value per type: another type is kept beside it.
        assert_eq!(kept.get_or_insert(|| 5_u8), 5);
        assert_eq!(kept.get_or_insert(|| 9_u8), 5);
    }
}
