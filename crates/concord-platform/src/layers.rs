//! The tower layers every Concord server stacks, outermost first:
//! [`TraceLayer`] (span per call, parent from W3C tracecontext, RPC metrics) ->
//! [`DeadlineLayer`] (DEADLINE_EXCEEDED for a call unanswered at its deadline) ->
//! [`IdentityLayer`] (principal into the request extensions, rate limit per agency) ->
//! [`AdmissionLayer`] (concurrency limit with load shedding).
//! A call that is refused for its identity or its rate never holds one of the admission
//! permits, so unauthenticated or over-quota traffic cannot crowd out partners' calls.
//! Message size caps are enforced by tonic itself (see `server`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{Presented, SharedAuthenticator};
use crate::quota::RateLimiter;

/// RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo saying when to try again.
fn rate_limited(agency: &str, wait: std::time::Duration) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::with_retry_info(Some(wait));
    details.set_error_info("RATE_LIMITED", "quota.concord", std::collections::HashMap::new());
    tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!("agency {agency} is over its call rate; retry after {} ms", wait.as_millis()),
        details,
    )
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Paths that answer without credentials: the health protocol, for probes and load balancers,
/// and reflection, which only describes the public contracts.
fn is_public(path: &str) -> bool {
    // Health, the contracts (reflection) and the JSON edge's description of them: no data.
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || path == "/v1/openapi.json"
}

/// One span per call, child of the caller's span when it sent W3C tracecontext.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Trace<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            concord.agency = tracing::field::Empty,
        );
        let _ = span.set_parent(crate::telemetry::extract(req.headers()));
        // Swap in the clone that was driven to readiness (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut counted = Counted {
            service: service.to_string(),
            method: method.to_string(),
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        crate::metrics::RPC.started(&counted.service, &counted.method);
        // Called now, not when the answer is first polled: the layers inside start their
        // timers (the deadline's) as tonic starts its own.
        let answer = span.in_scope(|| inner.call(req));
        Box::pin(
            async move {
                let res = answer.await;
                if let Ok(resp) = &res {
                    // Unary errors come back trailers-only, so grpc-status is in the headers;
                    // success is reported in trailers, which this layer does not wait for.
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_string();
                    counted.answered(&code);
                } else {
                    // The layers inside answer every call; an error of theirs is no answer.
                    counted.answered(&(tonic::Code::Unknown as i32).to_string());
                }
                res
            }
            .instrument(span),
        )
    }
}

/// A call being served, counted once in the metrics: with the code it is answered with, or
/// as CANCELLED if its answer is dropped unfinished (its caller went away, tonic's backstop
/// timer fired, or the drain timeout abandoned it).
struct Counted {
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Counted {
    /// The call is answered with the gRPC status `code` (digits).
    fn answered(&mut self, code: &str) {
        self.done = true;
        self.span.record("rpc.grpc.status_code", code);
        let took = self.started.elapsed();
        crate::metrics::RPC.handled(
            &self.service,
            &self.method,
            crate::metrics::code_name(code),
            took,
        );
        tracing::debug!(parent: &self.span, elapsed_us = took.as_micros() as u64, grpc_status = %code, "request served");
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.done {
            let code = (tonic::Code::Cancelled as i32).to_string();
            self.answered(&code);
        }
    }
}

/// Answers a call still unanswered at its deadline with DEADLINE_EXCEEDED: the caller's
/// (`grpc-timeout`), within the server's own limit on any call. tonic keeps the same timer
/// outside every layer, but what it answers there says CANCELLED ("Timeout expired"), drops
/// the layers' work unfinished (the trace layer can only count it as cancelled) and carries
/// no CORS headers, so a browser cannot even read it. This timer is set a millisecond
/// sooner, so it answers first, inside the other layers: with the right code, counted as
/// such, and seen by CORS. tonic's stays as a backstop. As with tonic's, only the answer's
/// start is timed: a stream that has begun runs on.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    limit: std::time::Duration,
}

impl DeadlineLayer {
    /// No call runs longer than `limit`, whatever deadline it sets.
    pub fn new(limit: std::time::Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, limit: self.limit }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: std::time::Duration,
}

/// How much sooner than tonic's timer this one is set. Ours is created first: tonic calls
/// the layers before it creates its sleep (`GrpcTimeout::call`, tonic 0.14), CORS and the
/// trace layer call on at once, and so does this layer. tokio rounds a timer up to its next
/// millisecond tick, so a millisecond less puts ours on an earlier tick; and tonic polls the
/// layers' answer before its own sleep. `tests/deadline.rs` holds many calls to this.
const SOONER: std::time::Duration = std::time::Duration::from_millis(1);

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let asked = crate::client::grpc_timeout(req.headers());
        let (within, whose) = match asked {
            Some(t) if t <= self.limit => (t, "the call's deadline (grpc-timeout)"),
            _ => (self.limit, "the server's limit on any call"),
        };
        let timer = tokio::time::sleep(within.saturating_sub(SOONER));
        let kind = crate::http_json::Caller::of(req.headers());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let answer = inner.call(req);
        Box::pin(async move {
            tokio::select! {
                biased;
                res = answer => res,
                () = timer => {
                    let late = tonic::Status::deadline_exceeded(format!(
                        "no answer within {within:?}, {whose}"
                    ));
                    Ok(kind.respond(late))
                }
            }
        })
    }
}

/// Limits the calls served at once; beyond the limit a call is shed at once with UNAVAILABLE
/// instead of queueing, so an overloaded server fails fast and clients back off.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    /// At most `max` calls at once.
    pub fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max.max(1))) }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, permits: self.permits.clone() }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(path = %req.uri().path(), "load shed: concurrency limit reached");
            let status = tonic::Status::unavailable(
                "server is at its concurrency limit; retry with backoff",
            );
            let res = crate::http_json::respond(req.headers(), status);
            return Box::pin(async move { Ok(res) });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let res = inner.call(req).await;
            drop(permit);
            res
        })
    }
}

/// Authenticates every call but the public ones and puts the [`crate::auth::Principal`] in
/// the request extensions; refuses the call with UNAUTHENTICATED otherwise.
#[derive(Clone)]
pub struct IdentityLayer {
    authenticator: SharedAuthenticator,
    limiter: Option<Arc<RateLimiter>>,
}

impl IdentityLayer {
    /// Uses `authenticator` for every call, and `limiter` (if any) per authenticated agency.
    pub fn new(authenticator: SharedAuthenticator, limiter: Option<Arc<RateLimiter>>) -> Self {
        Self { authenticator, limiter }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = Identity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Identity { inner, authenticator: self.authenticator.clone(), limiter: self.limiter.clone() }
    }
}

/// See [`IdentityLayer`].
#[derive(Clone)]
pub struct Identity<S> {
    inner: S,
    authenticator: SharedAuthenticator,
    limiter: Option<Arc<RateLimiter>>,
}

impl<S, B> Service<http::Request<B>> for Identity<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_public(req.uri().path()) {
            let info =
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|i| i.peer_certs());
            let presented = Presented {
                headers: req.headers(),
                peer_certificate: info.as_ref().and_then(|c| c.first()).map(|c| c.as_ref()),
            };
            match self.authenticator.authenticate(&presented) {
                Ok(principal) => {
                    tracing::Span::current().record("concord.agency", principal.agency.as_str());
                    // A partner is limited where it enters: a call forwarded by the gateway
                    // (or made on its behalf by a service) was counted there, and one call
                    // there may take several here (a case file).
                    let limiter = self.limiter.as_ref().filter(|_| principal.via.is_none());
                    if let Some(wait) = limiter.and_then(|l| l.check(&principal.agency).err()) {
                        let status = rate_limited(&principal.agency, wait);
                        return refuse(req, status);
                    }
                    req.extensions_mut().insert(principal);
                }
                Err(e) => return refuse(req, e.into_status("auth.concord")),
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

/// The answer `status` to `req`, given once the rest of its body has arrived (at most
/// [`DRAINED_BYTES`], for at most [`DRAINED_FOR`] or the call's own deadline if sooner): an
/// HTTP/2 answer sent while the caller is still sending makes the server reset the stream,
/// and some clients (curl, libcurl-based integrations) then report a framing error instead of
/// the answer. What arrives is dropped as it comes; the wait holds no admission permit (the
/// identity layer is outside admission).
fn refuse<B, E>(req: http::Request<B>, status: tonic::Status) -> BoxFuture<http::Response<Body>, E>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Send + 'static,
{
    let res = crate::http_json::respond(req.headers(), status);
    // Within the call's deadline, before the deadline layer's timer answers in its place.
    let wait = crate::client::grpc_timeout(req.headers())
        .map_or(DRAINED_FOR, |t| t.saturating_sub(SOONER * 2).min(DRAINED_FOR));
    Box::pin(async move {
        let _ = tokio::time::timeout(wait, discard(req.into_body(), DRAINED_BYTES)).await;
        Ok(res)
    })
}

/// Reads `body` to its end, or until more than `limit` bytes came, keeping nothing.
async fn discard<B: http_body::Body>(body: B, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen += bytes::Buf::remaining(d);
            if seen > limit {
                return;
            }
        }
    }
}

/// The most of a refused call's body read before answering.
const DRAINED_BYTES: usize = 64 * 1024;

/// The longest wait for a refused call's body before answering.
const DRAINED_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// gRPC-Web for the calls that are gRPC-Web (by content type), and nothing else: HTTP/JSON
/// and gRPC pass untouched (tonic-web alone answers any other HTTP/1.1 call with 400).
#[derive(Debug, Clone, Default)]
pub struct GrpcWebOnlyLayer;

impl<S: Clone> Layer<S> for GrpcWebOnlyLayer {
    type Service = GrpcWebOnly<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOnly { web: tonic_web::GrpcWebLayer::new().layer(inner.clone()), plain: inner }
    }
}

/// See [`GrpcWebOnlyLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWebOnly<S> {
    web: tonic_web::GrpcWebService<S>,
    plain: S,
}

impl<S> Service<http::Request<Body>> for GrpcWebOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.plain.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use tower::ServiceExt;
        if crate::http_json::Caller::of(req.headers()).is_grpc_web() {
            let svc = self.web.clone();
            Box::pin(async move { svc.oneshot(req).await })
        } else {
            let clone = self.plain.clone();
            let mut inner = std::mem::replace(&mut self.plain, clone);
            Box::pin(async move { inner.call(req).await })
        }
    }
}

/// Request headers a browser may send across origins: gRPC-Web's, the JSON edge's, the
/// caller's purpose, a bearer token, and tracecontext.
const CORS_REQUEST_HEADERS: [&str; 9] = [
    "content-type",
    "authorization",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    crate::auth::headers::PURPOSE,
    "traceparent",
    "tracestate",
    "grpc-accept-encoding",
];

/// Response headers a browser's script may read: the call's gRPC status and its details.
const CORS_EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// `o` as a browser sends it in `Origin`: the scheme and host in lower case, and the port
/// only when it is not the scheme's default; an error naming `o` if it is not an origin.
fn origin(o: &str) -> anyhow::Result<String> {
    let uri: http::Uri = o.parse().map_err(|e| anyhow::anyhow!("CORS origin '{o}': {e}"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let bare = matches!(scheme.as_deref(), Some("https" | "http"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
        && !o.ends_with('/');
    anyhow::ensure!(
        bare,
        "CORS origin '{o}' is not an origin like https://partner.example or https://partner.example:8443 (a scheme, a host and a port only)"
    );
    let (scheme, host) = (scheme.unwrap_or_default(), uri.host().unwrap_or_default());
    let default = if scheme == "https" { 443 } else { 80 };
    Ok(match uri.port_u16().filter(|p| *p != default) {
        Some(port) => format!("{scheme}://{}:{port}", host.to_ascii_lowercase()),
        None => format!("{scheme}://{}", host.to_ascii_lowercase()),
    })
}

/// CORS for browser applications served from `origins` (each `scheme://host[:port]`) that
/// call with gRPC-Web or the JSON edge: their preflights are answered before authentication
/// (a preflight carries no credentials), and their calls' answers name the origin, allow
/// credentials (a client certificate or a bearer token) and expose the gRPC status. No
/// origins (or only empty entries, as an empty variable gives): none (a browser then calls
/// only from the gateway's own origin). Entries are trimmed and written as browsers write them; one that is not an origin is an error naming it.
pub fn cors(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let mut allowed = Vec::with_capacity(origins.len());
    for o in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        allowed.push(http::HeaderValue::from_str(&origin(o)?)?);
    }
    if allowed.is_empty() {
        return Ok(None);
    }
    let names =
        |v: &[&'static str]| v.iter().map(|h| http::HeaderName::from_static(h)).collect::<Vec<_>>();
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([http::Method::POST, http::Method::GET])
            .allow_headers(names(&CORS_REQUEST_HEADERS))
            .expose_headers(names(&CORS_EXPOSED_HEADERS))
            .allow_credentials(true)
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

#[cfg(test)]
mod cors_tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_none_means_no_cors() {
        assert!(cors(&[]).unwrap().is_none());
        assert!(cors(&[String::new(), " ".into()]).unwrap().is_none(), "an empty variable");
        assert!(cors(&["https://partner.example".into(), "http://localhost:8080".into()])
            .unwrap()
            .is_some());
        for bad in [
            "partner.example",
            "https://partner.example/app",
            "https://partner.example/",
            "*",
            "ftp://x",
            "https://user@partner.example",
        ] {
            let e = cors(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        // As browsers write them: lower case, no default port; spaces around entries go.
        assert_eq!(origin("HTTPS://Partner.Example:443").unwrap(), "https://partner.example");
        assert_eq!(origin("http://localhost:8080").unwrap(), "http://localhost:8080");
        assert_eq!(origin("http://x.example:80").unwrap(), "http://x.example");
        assert!(cors(&["https://a.example".into(), " https://b.example".into()])
            .unwrap()
            .is_some());
    }
}
