//! The pass-through: calls to the services' own APIs, sent on as they came (bytes, not
//! decoded messages), with the partner's authenticated identity in place of whatever identity
//! metadata the call carried. The service behind decides, as for a direct call, what the
//! partner may see and do; it knows the call came through the gateway, a trusted forwarder.
//! The deadline (`grpc-timeout`), the purpose, request ids and tracecontext travel with the
//! call; responses and their trailers (errors with their details) come back unchanged, and
//! streams stream.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::client::TracedChannel;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

/// A service passed through: its gRPC name.
pub trait Upstream: Clone + Send + Sync + 'static {
    /// Full name, for example `concord.registry.v1.RegistryService`.
    const NAME: &'static str;
    /// Short name, in errors.
    const SHORT: &'static str;
}

/// The registry's API.
#[derive(Debug, Clone)]
pub struct Registry;
impl Upstream for Registry {
    const NAME: &'static str = "concord.registry.v1.RegistryService";
    const SHORT: &'static str = "registry";
}

/// The facilities' API.
#[derive(Debug, Clone)]
pub struct Facilities;
impl Upstream for Facilities {
    const NAME: &'static str = "concord.facilities.v1.FacilitiesService";
    const SHORT: &'static str = "facilities";
}

/// The requests' API.
#[derive(Debug, Clone)]
pub struct Requests;
impl Upstream for Requests {
    const NAME: &'static str = "concord.requests.v1.RequestsService";
    const SHORT: &'static str = "requests";
}

/// Passes every call of `U` to `channel` (connections reused, reconnected by the channel).
#[derive(Debug, Clone)]
pub struct Proxy<U> {
    channel: TracedChannel,
    max_deadline: Duration,
    _upstream: PhantomData<U>,
}

impl<U: Upstream> Proxy<U> {
    /// Over `channel`; the service is given at most `max_deadline` (the gateway's own limit
    /// on a call), less a margin for the answer to come back through the gateway.
    pub fn new(channel: TracedChannel, max_deadline: Duration) -> Self {
        Self { channel, max_deadline, _upstream: PhantomData }
    }
}

/// Kept from a call's deadline for the answer to come back through the gateway.
pub const MARGIN: Duration = Duration::from_millis(20);

/// The deadline to pass on: the caller's, within `max`, less [`MARGIN`].
pub fn pass_on(headers: &http::HeaderMap, max: Duration) -> Duration {
    concord_platform::client::grpc_timeout(headers)
        .unwrap_or(max)
        .min(max)
        .saturating_sub(MARGIN)
        .max(Duration::from_millis(1))
}

impl<U: Upstream> NamedService for Proxy<U> {
    const NAME: &'static str = U::NAME;
}

impl<U: Upstream> Service<http::Request<Body>> for Proxy<U> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is driven in `call` (a clone per call, as tonic clients do).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let Some(principal) = req.extensions().get::<Principal>().cloned() else {
            let status = tonic::Status::unauthenticated("no authenticated principal");
            return Box::pin(async move { Ok(status.into_http()) });
        };
        // The partner's own identity, never one it wrote: forwarded metadata is replaced.
        HeaderCredentials::new(principal).apply_headers(req.headers_mut());
        // The service stops before the gateway gives up on it, so the partner gets its
        // answer (or its DEADLINE_EXCEEDED), not the gateway's timeout.
        let budget = pass_on(req.headers(), self.max_deadline);
        if let Ok(v) = http::HeaderValue::from_str(&format!("{}m", budget.as_millis().max(1))) {
            req.headers_mut().insert("grpc-timeout", v);
        }
        let mut channel = self.channel.clone();
        Box::pin(async move {
            if let Err(e) = futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                return Ok(unreachable::<U>(&e));
            }
            match channel.call(req).await {
                Ok(res) => Ok(res.map(Body::new)),
                Err(e) => Ok(unreachable::<U>(&e)),
            }
        })
    }
}

/// UNAVAILABLE naming the service, for a call that could not reach it or whose connection
/// failed.
fn unreachable<U: Upstream>(e: &dyn std::fmt::Display) -> http::Response<Body> {
    tracing::warn!(service = U::SHORT, error = %e, "gateway: service unreachable");
    tonic::Status::unavailable(format!("the {} service could not be reached: {e}", U::SHORT))
        .into_http()
}
