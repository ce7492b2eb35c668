//! Mapping failures to gRPC status codes: a caller can always tell bad input
//! from a missing thing from overload from a missed deadline.

use switchyard_executor::DispatchError;
use tonic::Status;

/// A request field failed validation: INVALID_ARGUMENT naming the field.
pub fn invalid_argument(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("field `{field}`: {problem}"))
}

/// The named thing does not exist: NOT_FOUND.
pub fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} `{id}` not found"))
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
