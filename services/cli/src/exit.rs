//! Exit statuses by failure class, for scripts (2 is clap's, for usage),
//! and the one line a failure prints: a gRPC status as `NOT_FOUND: message`,
//! under the context it failed in.

/// Anything not classed below.
pub const OTHER: u8 = 1;
/// The api (or the named service) cannot be reached, or did not answer
/// in time: UNAVAILABLE, DEADLINE_EXCEEDED, a connection that failed.
pub const UNREACHABLE: u8 = 3;
/// NOT_FOUND.
pub const NOT_FOUND: u8 = 4;
/// The request was refused as invalid: INVALID_ARGUMENT,
/// FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED; or a bad file.
pub const INVALID: u8 = 5;
/// UNAUTHENTICATED or PERMISSION_DENIED: the token.
pub const UNAUTHENTICATED: u8 = 6;

/// The exit status for `error` and the line to print.
pub fn failure(error: &anyhow::Error) -> (u8, String) {
    use tonic::Code;
    let status = error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>());
    let Some(status) = status else {
        let unreachable = error
            .chain()
            .any(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
        let code = if unreachable { UNREACHABLE } else { OTHER };
        return (code, format!("{error:#}"));
    };
    let code = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => UNREACHABLE,
        Code::NotFound => NOT_FOUND,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted => INVALID,
        Code::Unauthenticated | Code::PermissionDenied => UNAUTHENTICATED,
        _ => OTHER,
    };
    let said = format!(
        "{}: {}",
        switchyard_grpc::code_name(status.code()),
        status.message()
    );
    // Context added on the way up (e.g. which file), then the status.
    let context: Vec<String> = error
        .chain()
        .take_while(|e| e.downcast_ref::<tonic::Status>().is_none())
        .map(|e| e.to_string())
        .collect();
    let line = if context.is_empty() {
        said
    } else {
        format!("{}: {said}", context.join(": "))
    };
    (code, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_print_as_code_and_message_with_an_exit_class() {
        let error = anyhow::Error::new(tonic::Status::not_found("alarm `x` not found"))
            .context("reading the history");
        assert_eq!(
            failure(&error),
            (
                NOT_FOUND,
                "reading the history: NOT_FOUND: alarm `x` not found".to_string()
            )
        );
        let refused = anyhow::Error::new(tonic::Status::unauthenticated("no token"));
        assert_eq!(failure(&refused).0, UNAUTHENTICATED);
        assert_eq!(failure(&anyhow::anyhow!("a bad file")).0, OTHER);
    }
}
