//! Endpoints: named request handlers written either as blocking functions or as
//! async functions, and the context each invocation receives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Span;

use crate::{EndpointKind, EndpointSpec, Phase};

/// A boxed, sendable future: what an async endpoint body returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub(crate) type BlockingBody<Req, Out> = dyn Fn(Context, Req) -> Out + Send + Sync;
pub(crate) type AsyncBody<Req, Out> = dyn Fn(Context, Req) -> BoxFuture<Out> + Send + Sync;

/// The two ways of writing an endpoint body.
pub(crate) enum Body<Req, Out> {
    Blocking(Arc<BlockingBody<Req, Out>>),
    Async(Arc<AsyncBody<Req, Out>>),
}

impl<Req, Out> Clone for Body<Req, Out> {
    fn clone(&self) -> Self {
        match self {
            Body::Blocking(f) => Body::Blocking(Arc::clone(f)),
            Body::Async(f) => Body::Async(Arc::clone(f)),
        }
    }
}

/// The bodies an endpoint was written with: one, or both during a
/// migration (the executor keeps the one its phase runs).
pub(crate) enum Forms<Req, Out> {
    One(Body<Req, Out>),
    Both {
        blocking: Arc<BlockingBody<Req, Out>>,
        r#async: Arc<AsyncBody<Req, Out>>,
    },
}

impl<Req, Out> Forms<Req, Out> {
    /// The body that runs in `phase`.
    pub(crate) fn for_phase(self, phase: Phase) -> Body<Req, Out> {
        match self {
            Forms::One(body) => body,
            Forms::Both { blocking, r#async } => match EndpointKind::Both.form_in(phase) {
                EndpointKind::Blocking => Body::Blocking(blocking),
                _ => Body::Async(r#async),
            },
        }
    }
}

/// A named handler, not yet bound to an executor.
///
/// `Out` is what the body returns; when it is a `Result`, an `Err` counts as a
/// failed request in the statistics (see [`Outcome`]).
pub struct Endpoint<Req, Out> {
    pub(crate) name: String,
    pub(crate) forms: Forms<Req, Out>,
}

impl<Req, Out> std::fmt::Debug for Endpoint<Req, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .finish()
    }
}

impl<Req, Out> Endpoint<Req, Out> {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Blocking, async, or both.
    pub fn kind(&self) -> EndpointKind {
        match self.forms {
            Forms::One(Body::Blocking(_)) => EndpointKind::Blocking,
            Forms::One(Body::Async(_)) => EndpointKind::Async,
            Forms::Both { .. } => EndpointKind::Both,
        }
    }

    /// The declaration `--check-config` works from.
    pub fn spec(&self) -> EndpointSpec {
        EndpointSpec::new(self.name.clone(), self.kind())
    }
}

impl<Req, Out> Endpoint<Req, Out>
where
    Req: Send + 'static,
    Out: Outcome,
{
    /// An endpoint whose body is a plain function that may block its thread.
    pub fn blocking<F>(name: impl Into<String>, body: F) -> Self
    where
        F: Fn(Context, Req) -> Out + Send + Sync + 'static,
    {
        Self {
            name: name.into(),
            forms: Forms::One(Body::Blocking(Arc::new(body))),
        }
    }

    /// An endpoint whose body is an async function.
    pub fn from_async<F, Fut>(name: impl Into<String>, body: F) -> Self
    where
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Out> + Send + 'static,
    {
        Self {
            name: name.into(),
            forms: Forms::One(Body::Async(Arc::new(move |cx, req| {
                Box::pin(body(cx, req))
            }))),
        }
    }

    /// An endpoint written both ways while it migrates: the old blocking
    /// body and the new async one, side by side in one binary. `threaded`
    /// runs `blocking`; `bridged` and `async` run `body` (nothing offloaded).
    /// The two must do the same thing: the phase, not the caller, picks.
    pub fn both<B, F, Fut>(name: impl Into<String>, blocking: B, body: F) -> Self
    where
        B: Fn(Context, Req) -> Out + Send + Sync + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Out> + Send + 'static,
    {
        Self {
            name: name.into(),
            forms: Forms::Both {
                blocking: Arc::new(blocking),
                r#async: Arc::new(move |cx, req| Box::pin(body(cx, req))),
            },
        }
    }
}

/// What one invocation of an endpoint knows about itself.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) endpoint: Arc<str>,
    pub(crate) phase: Phase,
    pub(crate) deadline: Option<Instant>,
    pub(crate) span: Span,
}

impl Context {
    /// The endpoint being run.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The phase running it.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero when past it), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The dispatch span; child spans of the endpoint's own work go under it.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

/// Tells the statistics whether a body's return value is a failure.
pub trait Outcome: Send + 'static {
    /// `true` when the request failed.
    fn is_failure(&self) -> bool;
}

impl<T: Send + 'static, E: Send + 'static> Outcome for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

impl Outcome for () {
    fn is_failure(&self) -> bool {
        false
    }
}
