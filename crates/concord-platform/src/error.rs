//! The error model: every service's domain errors become a gRPC `Status` here, and only here.
//!
//! Each status carries `google.rpc.ErrorInfo` (reason, domain, metadata) as AIP-193 asks, and
//! bad input carries `google.rpc.BadRequest` naming each field at fault. Internal errors are
//! logged with their cause chain and reach the client as a generic message with the trace id.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Result with the platform error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One field at fault in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, for example `person.birth_date.month`.
    pub field: String,
    /// What is wrong with it, in a sentence a partner's developer can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Every error a Concord service returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was stored.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, or the caller may not know that it exists.
    #[error("{0} not found")]
    NotFound(String),
    /// The resource exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, UPPER_SNAKE_CASE.
        reason: &'static str,
        /// What is wrong and what state the resource is in.
        message: String,
    },
    /// Optimistic concurrency failure: the etag did not match, or a concurrent change won.
    #[error("{0}")]
    Aborted(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// A quota or cap was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A cursor or position outside the retained range.
    #[error("{0}")]
    OutOfRange(String),
    /// A dependency is unavailable; the call may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an infrastructure failure. The cause is logged, never sent.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

fn describe(v: &[FieldViolation]) -> String {
    v.iter().map(|f| format!("{}: {}", f.field, f.description)).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// The gRPC code's name, as audit entries record a refusal (`NOT_FOUND`...); `None` for
    /// internal errors and unavailability, which are not the caller's doing.
    pub fn refusal(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::FailedPrecondition { .. } => "FAILED_PRECONDITION",
            Self::Aborted(_) => "ABORTED",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Self::OutOfRange(_) => "OUT_OF_RANGE",
            Self::Unavailable(_) | Self::Internal(_) => return None,
        })
    }

    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// An internal error from any error type.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Error::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
            Error::AlreadyExists(_) => (Code::AlreadyExists, "ALREADY_EXISTS"),
            Error::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            Error::Aborted(_) => (Code::Aborted, "ABORTED"),
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            Error::ResourceExhausted(_) => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
            Error::OutOfRange(_) => (Code::OutOfRange, "OUT_OF_RANGE"),
            Error::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
            Error::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }

    /// Converts to a status for `domain` (for example `registry.concord`), with ErrorInfo and
    /// BadRequest details. Internal errors are logged here with their cause chain.
    pub fn into_status(self, domain: &str) -> Status {
        let (code, reason) = self.code_and_reason();
        let trace_id = crate::telemetry::current_trace_id();
        let message = match &self {
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, trace_id = %trace_id, "internal error");
                format!("internal error; quote trace id {trace_id} when reporting it")
            }
            other => other.to_string(),
        };
        let mut metadata = HashMap::new();
        if !trace_id.is_empty() {
            metadata.insert("trace_id".to_string(), trace_id);
        }
        let mut details = ErrorDetails::with_error_info(reason, domain, metadata);
        if let Error::InvalidArgument(violations) = &self {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
        }
        Status::with_error_details(code, message, details)
    }
}

/// Quotes caller input in an error message, cut to 40 characters, so that errors stay small
/// whatever the caller sent.
pub fn quote(s: &str) -> String {
    let mut q: String = s.chars().take(40).collect();
    if q.len() < s.len() {
        q.push('…');
    }
    format!("'{q}'")
}

/// Collects field violations while validating a request, so that a caller learns every fault
/// at once rather than one per round trip.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }
    /// Merges the violations of a nested error, if it is one.
    pub fn absorb<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(Error::InvalidArgument(v)) => {
                self.0.extend(v);
                None
            }
            Err(other) => {
                self.0.push(FieldViolation::new("", other.to_string()));
                None
            }
        }
    }
    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(value)` when nothing was recorded, the violations otherwise.
    pub fn finish<T>(self, value: T) -> Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations_and_error_info() {
        let status = Error::invalid("person.names[0].full_name", "must not be empty")
            .into_status("registry.concord");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let br = details.bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "person.names[0].full_name");
        let info = details.error_info().expect("error info");
        assert_eq!(info.domain, "registry.concord");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = Error::internal(anyhow::anyhow!("password=hunter2 in connection string"))
            .into_status("registry.concord");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
