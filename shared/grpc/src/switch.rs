//! A gRPC server that outlives the connections its methods need.
//!
//! A service rebuilds its messaging when its broker connection is lost for
//! good (`amqp.failover_urls`, a broker restart). Closing the gRPC server
//! with it would reset every caller's connection mid-call: the caller sees
//! a transport error instead of a status, and a call sent meanwhile may
//! wait out its whole deadline. So a process binds its gRPC port once and
//! keeps its connections; a [`Switch`] decides, call by call, who answers:
//! the routes of the current run, or — between runs — health (reporting
//! NOT_SERVING) and, for every other method, `UNAVAILABLE` at once: the
//! code gRPC defines as transient and safe to retry with backoff
//! (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).

use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tower::Service;

/// Every health method's path starts with this.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// What a method gets while the service rebuilds its connections.
const REBUILDING: &str = "the service is reconnecting to its broker; retry shortly";

/// The routes a long-lived server answers with, swapped per run. Cheap to
/// clone: clones share the routes.
#[derive(Clone)]
pub struct Switch {
    health: Routes,
    current: Arc<RwLock<Option<Routes>>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("serving", &self.is_serving())
            .finish_non_exhaustive()
    }
}

impl Switch {
    /// A switch answering only `health` until routes are installed.
    pub fn new(health: Routes) -> Self {
        Self {
            health,
            current: Arc::default(),
        }
    }

    /// From now on `routes` answer every call.
    pub fn install(&self, routes: Routes) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(routes.prepare());
    }

    /// From now on only health answers; every other call gets
    /// `UNAVAILABLE`. Calls already routed finish where they are.
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether routes are installed.
    pub fn is_serving(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The switch as the routes a server serves.
    pub fn routes(&self) -> Routes {
        Routes::from(axum::Router::new().fallback_service(self.clone()))
    }
}

/// The routes' own future, or the answer between runs (no allocation per
/// call: this sits on every call's path).
type Answer = Either<
    <Routes as Service<Request<axum::body::Body>>>::Future,
    std::future::Ready<Result<Response<Body>, Infallible>>,
>;

impl Service<Request<axum::body::Body>> for Switch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Routes (an axum router) are always ready, and so is the answer
        // between runs.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<axum::body::Body>) -> Answer {
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match current {
            Some(mut routes) => Either::Left(routes.call(request)),
            None if request.uri().path().starts_with(HEALTH) => {
                Either::Left(self.health.clone().call(request))
            }
            None => {
                let (parts, ()) = Status::unavailable(REBUILDING)
                    .into_http::<()>()
                    .into_parts();
                Either::Right(std::future::ready(Ok(Response::from_parts(
                    parts,
                    Body::empty(),
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    /// The `grpc-status` a call to `path` gets (0 when the answer is a
    /// stream whose status comes in trailers).
    async fn status_of(switch: &Switch, path: &str) -> String {
        let request = Request::post(path)
            .header("content-type", "application/grpc")
            .body(axum::body::Body::empty())
            .expect("request");
        let answer = switch.routes().oneshot(request).await.expect("infallible");
        answer
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("0")
            .to_string()
    }

    #[tokio::test]
    async fn between_runs_health_answers_and_every_other_method_is_unavailable_at_once() {
        let (_, health) = tonic_health::server::health_reporter();
        let switch = Switch::new(Routes::new(health));
        let method = "/test.v1.Test/Call";
        let unavailable = (tonic::Code::Unavailable as i32).to_string();
        assert_eq!(status_of(&switch, method).await, unavailable);
        assert_ne!(
            status_of(&switch, "/grpc.health.v1.Health/Check").await,
            unavailable
        );

        // A run's routes answer everything (here: nothing is served, so
        // the method is unknown to them).
        switch.install(Routes::default());
        let unimplemented = (tonic::Code::Unimplemented as i32).to_string();
        assert_eq!(status_of(&switch, method).await, unimplemented);
        assert!(switch.is_serving());

        switch.clear();
        assert_eq!(status_of(&switch, method).await, unavailable);
    }
}
