//! Errors for callers that speak HTTP/JSON rather than gRPC (the gateway's JSON edge): the
//! HTTP status of each gRPC code, and google.rpc.Status in the protobuf JSON mapping. The
//! layers answer such callers this way when they refuse a call before any service sees it
//! (no credentials, overload, rate limit).

use bytes::Bytes;
use tonic::body::Body;

/// The upper-case name of a gRPC code, as in google.rpc.Code.
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

/// The HTTP status of a gRPC code (google.rpc.Code's documented mapping).
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as H;
    use tonic::Code::*;
    match code {
        Ok => H::OK,
        Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        InvalidArgument | FailedPrecondition | OutOfRange => H::BAD_REQUEST,
        DeadlineExceeded => H::GATEWAY_TIMEOUT,
        NotFound => H::NOT_FOUND,
        AlreadyExists | Aborted => H::CONFLICT,
        PermissionDenied => H::FORBIDDEN,
        Unauthenticated => H::UNAUTHORIZED,
        ResourceExhausted => H::TOO_MANY_REQUESTS,
        Unimplemented => H::NOT_IMPLEMENTED,
        Unavailable => H::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON response with `status`.
pub fn json(status: http::StatusCode, body: Vec<u8>) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// How a caller speaks, by the content type of its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// gRPC (`application/grpc...`).
    Grpc,
    /// gRPC-Web in binary (`application/grpc-web`, `application/grpc-web+proto`).
    GrpcWeb,
    /// gRPC-Web in text (`application/grpc-web-text...`).
    GrpcWebText,
    /// Anything else: HTTP/JSON.
    Json,
}

impl Caller {
    /// The caller of a call with `headers`.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let t = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if t.starts_with("application/grpc-web-text") {
            Self::GrpcWebText
        } else if t.starts_with("application/grpc-web") {
            Self::GrpcWeb
        } else if t.starts_with("application/grpc") {
            Self::Grpc
        } else {
            Self::Json
        }
    }

    /// Whether the caller speaks gRPC-Web, in binary or in text.
    pub fn is_grpc_web(self) -> bool {
        matches!(self, Self::GrpcWeb | Self::GrpcWebText)
    }

    /// `status` as this caller expects it: gRPC trailers-only, the same under the gRPC-Web
    /// content type for gRPC-Web (what gRPC-Web clients check), JSON for HTTP/JSON.
    pub fn respond(self, status: tonic::Status) -> http::Response<Body> {
        let web = match self {
            Self::Json => return error(&status),
            Self::Grpc => None,
            Self::GrpcWeb => Some("application/grpc-web+proto"),
            Self::GrpcWebText => Some("application/grpc-web-text+proto"),
        };
        let mut r = status.into_http();
        if let Some(t) = web {
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(t));
        }
        r
    }
}

/// `status` as the caller of a call with `request_headers` expects it (see [`Caller`]).
pub fn respond(request_headers: &http::HeaderMap, status: tonic::Status) -> http::Response<Body> {
    Caller::of(request_headers).respond(status)
}

/// google.rpc.Status in JSON, with the HTTP status of its code and the details Concord sends
/// (ErrorInfo, BadRequest field violations, RetryInfo). The gRPC code also goes in a
/// `grpc-status` header, which the trace layer's metrics read.
pub fn error(status: &tonic::Status) -> http::Response<Body> {
    let body = serde_json::to_vec(&status_json(status)).unwrap_or_default();
    let mut r = json(http_status(status.code()), body);
    r.headers_mut().insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    r
}

/// google.rpc.Status in the JSON mapping.
pub fn status_json(status: &tonic::Status) -> serde_json::Value {
    use tonic_types::StatusExt;
    let d = status.get_error_details();
    let mut details = Vec::new();
    if let Some(i) = d.error_info() {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": i.reason, "domain": i.domain, "metadata": i.metadata,
        }));
    }
    if let Some(b) = d.bad_request() {
        let v: Vec<_> = b
            .field_violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": v,
        }));
    }
    if let Some(r) = d.retry_info() {
        let delay = r.retry_delay.map(|d| format!("{:.3}s", d.as_secs_f64()));
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay,
        }));
    }
    serde_json::json!({
        "code": status.code() as i32,
        "status": code_name(status.code()),
        "message": status.message(),
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_http_statuses_and_names() {
        assert_eq!(http_status(tonic::Code::NotFound), http::StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::ResourceExhausted),
            http::StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        let mut h = http::HeaderMap::new();
        assert_eq!(Caller::of(&h), Caller::Json);
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc-web+proto"),
        );
        assert_eq!(Caller::of(&h), Caller::GrpcWeb);
    }

    #[test]
    fn a_refusal_takes_the_form_of_the_call() {
        let refused = |kind: Option<&'static str>| {
            let mut h = http::HeaderMap::new();
            if let Some(k) = kind {
                h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(k));
            }
            let r = respond(&h, tonic::Status::deadline_exceeded("late"));
            let h = r.headers();
            let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            (r.status().as_u16(), get("content-type"), get("grpc-status"))
        };
        let grpc = Some("application/grpc".to_string());
        assert_eq!(refused(Some("application/grpc+proto")), (200, grpc, Some("4".into())));
        let web = Some("application/grpc-web+proto".to_string());
        assert_eq!(refused(Some("application/grpc-web")), (200, web, Some("4".into())));
        assert_eq!(
            refused(Some("application/grpc-web-text+proto")),
            (200, Some("application/grpc-web-text+proto".into()), Some("4".into()))
        );
        let json = Some("application/json".to_string());
        assert_eq!(refused(Some("application/json")), (504, json.clone(), Some("4".into())));
        assert_eq!(refused(None), (504, json, Some("4".into())));
    }
}
