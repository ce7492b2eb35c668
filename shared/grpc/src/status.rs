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
    fn an_oversized_message_is_resource_exhausted_and_other_codes_pass() {
        assert_eq!(answered(tonic::Code::OutOfRange).as_deref(), Some("8"));
        assert_eq!(answered(tonic::Code::NotFound).as_deref(), Some("5"));
        assert_eq!(answered(tonic::Code::InvalidArgument).as_deref(), Some("3"));
    }
}
