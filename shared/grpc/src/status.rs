//! Mapping failures to gRPC status codes: a caller can always tell bad input
//! from a missing thing from overload from a missed deadline.

use switchyard_executor::DispatchError;
use tonic::Status;
use tonic::codegen::http;

/// A request field failed validation: INVALID_ARGUMENT naming the field.
pub fn invalid_argument(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("field `{field}`: {problem}"))
}

/// The named thing does not exist: NOT_FOUND.
pub fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} `{id}` not found"))
}

/// The canonical name of `code` (`NOT_FOUND`), as gRPC's status code table
/// and other languages' libraries spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status for a request the executor could not run.
pub fn from_dispatch(error: &DispatchError) -> Status {
    match error {
        DispatchError::Overloaded { .. } => Status::resource_exhausted(error.to_string()),
        DispatchError::ShuttingDown => Status::unavailable(error.to_string()),
        DispatchError::DeadlineExceeded { .. } => Status::deadline_exceeded(error.to_string()),
        DispatchError::Panicked { endpoint, .. } => {
            // The panic text stays in the server's log: it may hold internals.
            Status::internal(format!("endpoint `{endpoint}` failed unexpectedly"))
        }
    }
}

/// The gRPC service and method a request was sent to, from its `:path`
/// (`/package.Service/Method`): what server spans are named after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullMethod {
    /// `package.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
    /// The host the caller addressed (HTTP/2 `:authority`), when it said:
    /// `server.address` on the server span.
    pub host: Option<String>,
    /// The port the caller addressed: `server.port`.
    pub port: Option<u16>,
}

/// Keeps the request's [`FullMethod`] in its extensions (tonic hands them
/// on to the handler).
pub fn remember_method<B>(mut request: http::Request<B>) -> http::Request<B> {
    let authority = request.uri().authority().cloned();
    let named = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split_once('/')
        .map(|(service, method)| FullMethod {
            service: service.to_string(),
            method: method.to_string(),
            host: authority.as_ref().map(|a| a.host().to_string()),
            port: authority.as_ref().and_then(http::uri::Authority::port_u16),
        });
    if let Some(named) = named {
        request.extensions_mut().insert(named);
    }
    request
}

/// Whether a server answering `code` failed, by the OpenTelemetry RPC
/// conventions for gRPC servers: only the codes that mean the server could
/// not do its part (the caller's mistakes — INVALID_ARGUMENT, NOT_FOUND … —
/// leave the span's status unset).
pub fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// gRPC's status code table (`doc/statuscodes.md`) says a message larger
/// than the configured limit is RESOURCE_EXHAUSTED; tonic's decoder answers
/// OUT_OF_RANGE. No Switchyard endpoint answers OUT_OF_RANGE, so the server
/// rewrites that code wherever it appears: in the headers of the
/// trailers-only response tonic sends when a unary request cannot be decoded.
pub fn size_limit_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    const OUT_OF_RANGE: &str = "11";
    const RESOURCE_EXHAUSTED: &str = "8";
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == OUT_OF_RANGE.as_bytes())
    {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: tonic::Code) -> Option<String> {
        let response = Status::new(code, "x").into_http::<()>();
        let response = size_limit_is_resource_exhausted(response);
        Some(
            response
                .headers()
                .get("grpc-status")?
                .to_str()
                .ok()?
                .to_string(),
        )
    }

    #[test]
    fn only_codes_that_mean_the_server_failed_mark_its_span_as_an_error() {
        use tonic::Code;
        for code in [
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unavailable,
            Code::Unknown,
        ] {
            assert!(is_server_error(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert!(!is_server_error(code), "{code:?}");
        }
    }

    #[test]
    fn the_path_names_service_and_method() {
        let request = http::Request::builder()
            .uri("http://10.0.0.7:50051/switchyard.echo.v1.Echo/Say")
            .body(())
            .expect("request");
        let request = remember_method(request);
        assert_eq!(
            request.extensions().get::<FullMethod>(),
            Some(&FullMethod {
                service: "switchyard.echo.v1.Echo".into(),
                method: "Say".into(),
                host: Some("10.0.0.7".into()),
                port: Some(50051),
            })
        );
    }

    #[test]
    fn an_oversized_message_is_resource_exhausted_and_other_codes_pass() {
        assert_eq!(answered(tonic::Code::OutOfRange).as_deref(), Some("8"));
        assert_eq!(answered(tonic::Code::NotFound).as_deref(), Some("5"));
        assert_eq!(answered(tonic::Code::InvalidArgument).as_deref(), Some("3"));
    }
}
