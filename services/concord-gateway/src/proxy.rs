//! The pass-through: calls to the services' own APIs, sent on as they came (bytes, not
//! decoded messages), with the partner's authenticated identity in place of whatever identity
//! metadata the call carried. The service behind decides, as for a direct call, what the
//! partner may see and do; it knows the call came through the gateway, a trusted forwarder.
//! The deadline (`grpc-timeout`), the purpose, request ids and tracecontext travel with the
//! call; responses and their trailers (errors with their details) come back unchanged, and
//! streams stream.
//!
//! A read (Get, List, Search, Summarize, Watch) whose service could not be reached is sent
//! once more after a short pause, if its deadline leaves time: nothing reached the service,
//! and a read is safe to repeat anyway. A write is never sent twice by the gateway (the
//! partner retries it with its request id), and an answer from the service, UNAVAILABLE
//! included, is passed back as it is.
//!
//! When the gateway shuts down, a passed-through watch stream ends after the message in
//! flight with UNAVAILABLE, as the gateway's own Subscribe does, so the partner resumes from
//! its cursor elsewhere instead of holding the drain open.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::client::TracedChannel;
use concord_platform::server::Shutdown;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
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
    max_read_bytes: usize,
    shutdown: Shutdown,
    _upstream: PhantomData<U>,
}

impl<U: Upstream> Proxy<U> {
    /// Over `channel`; the service is given at most `max_deadline` (the gateway's own limit
    /// on a call), less a margin for the answer to come back through the gateway. A read's
    /// request, kept to be sent again, may be at most `max_message_bytes`. Watch streams end
    /// when `shutdown` begins.
    pub fn new(
        channel: TracedChannel,
        max_deadline: Duration,
        max_message_bytes: usize,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            channel,
            max_deadline,
            shutdown,
            // The message and its gRPC frame header.
            max_read_bytes: max_message_bytes.saturating_add(5),
            _upstream: PhantomData,
        }
    }
}

/// Whether the method at `path` (`/package.Service/Method`) only reads.
pub fn is_read(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    ["Get", "List", "Search", "Summarize", "Watch"].iter().any(|p| method.starts_with(p))
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
        set_timeout(req.headers_mut(), budget);
        let channel = self.channel.clone();
        if !is_read(req.uri().path()) {
            return Box::pin(async move {
                Ok(send(channel, req).await.unwrap_or_else(|e| unreachable::<U>(&e)))
            });
        }
        let limit = self.max_read_bytes;
        let shutdown = is_watch(req.uri().path()).then(|| self.shutdown.clone());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + budget;
            let (parts, body) = req.into_parts();
            let body = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let status = if e.is::<http_body_util::LengthLimitError>() {
                        tonic::Status::resource_exhausted(format!(
                            "the request is larger than {limit} bytes"
                        ))
                    } else {
                        tonic::Status::cancelled(format!("the request did not arrive whole: {e}"))
                    };
                    return Ok(status.into_http());
                }
            };
            let copy = |timeout: Duration| {
                let mut r = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                set_timeout(r.headers_mut(), timeout);
                r
            };
            let res = match send(channel.clone(), copy(budget)).await {
                Ok(res) => res,
                Err(e) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left <= RETRY_AFTER * 4 {
                        return Ok(unreachable::<U>(&e));
                    }
                    tracing::debug!(service = U::SHORT, error = %e, "gateway: read sent again");
                    tokio::time::sleep(RETRY_AFTER).await;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match send(channel, copy(left)).await {
                        Ok(res) => res,
                        Err(e) => return Ok(unreachable::<U>(&e)),
                    }
                }
            };
            Ok(match shutdown {
                Some(s) => ends_on(res, s),
                None => res,
            })
        })
    }
}

/// Whether the method at `path` answers with a stream that lasts (a watch).
fn is_watch(path: &str) -> bool {
    path.rsplit('/').next().unwrap_or_default().starts_with("Watch")
}

/// `res`, a stream, ended when `shutdown` begins: after the message in flight, with
/// UNAVAILABLE and the advice to resume from the last cursor, so the partner reconnects (to
/// another gateway) instead of holding the drain to its timeout. An answer that is already
/// complete in its headers (trailers-only, an error) is left as it is.
fn ends_on(res: http::Response<Body>, shutdown: Shutdown) -> http::Response<Body> {
    if res.headers().contains_key("grpc-status") {
        return res;
    }
    let (parts, body) = res.into_parts();
    let mut s = shutdown;
    let body = Draining {
        inner: body,
        shutdown: Box::pin(async move { s.wait().await }),
        framing: Framing::default(),
        done: false,
    };
    http::Response::from_parts(parts, Body::new(body))
}

/// Where a gRPC byte stream is: in a message's 5-byte header, or in its body.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    header_read: usize,
    body_left: usize,
}

impl Framing {
    /// Follows `data`, the next bytes of the stream.
    fn follow(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
            } else {
                let n = (5 - self.header_read).min(data.len());
                self.header[self.header_read..self.header_read + n].copy_from_slice(&data[..n]);
                self.header_read += n;
                data = &data[n..];
                if self.header_read == 5 {
                    let len = [self.header[1], self.header[2], self.header[3], self.header[4]];
                    self.body_left = u32::from_be_bytes(len) as usize;
                    self.header_read = 0;
                }
            }
        }
    }

    /// True between two messages.
    fn between(&self) -> bool {
        self.header_read == 0 && self.body_left == 0
    }
}

/// See [`ends_on`].
struct Draining {
    inner: Body,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    framing: Framing,
    done: bool,
}

impl http_body::Body for Draining {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.framing.between() && this.shutdown.as_mut().poll(cx).is_ready() {
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            let status = tonic::Status::unavailable(
                "the gateway is shutting down; call again and resume from the last cursor",
            );
            // A status made here always has a valid header form.
            let _ = status.add_header(&mut trailers);
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.framing.follow(data);
            } else if f.is_trailers() {
                this.done = true;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The pause before a read whose service could not be reached is sent again.
pub const RETRY_AFTER: Duration = Duration::from_millis(25);

/// Sends `req` on `channel`: the service's answer, or the error that kept it from the service.
async fn send(
    mut channel: TracedChannel,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, tonic::transport::Error> {
    futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    Ok(channel.call(req).await?.map(Body::new))
}

fn set_timeout(headers: &mut http::HeaderMap, timeout: Duration) {
    let ms = timeout.as_millis().max(1);
    if let Ok(v) = http::HeaderValue::from_str(&format!("{ms}m")) {
        headers.insert("grpc-timeout", v);
    }
}

/// UNAVAILABLE naming the service, for a call that could not reach it or whose connection
/// failed.
fn unreachable<U: Upstream>(e: &dyn std::fmt::Display) -> http::Response<Body> {
    tracing::warn!(service = U::SHORT, error = %e, "gateway: service unreachable");
    tonic::Status::unavailable(format!("the {} service could not be reached: {e}", U::SHORT))
        .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_told_from_writes_by_their_method() {
        for read in [
            "/concord.registry.v1.RegistryService/GetPerson",
            "/concord.registry.v1.RegistryService/ListCustodyEvents",
            "/concord.registry.v1.RegistryService/SearchPersons",
            "/concord.registry.v1.RegistryService/SummarizePersons",
            "/concord.requests.v1.RequestsService/WatchChanges",
        ] {
            assert!(is_read(read), "{read}");
        }
        for write in [
            "/concord.registry.v1.RegistryService/CreatePerson",
            "/concord.registry.v1.RegistryService/ImportPersons",
            "/concord.registry.v1.RegistryService/MergeDuplicateCandidate",
            "/concord.facilities.v1.FacilitiesService/PlanRelocation",
            "/concord.requests.v1.RequestsService/VerifySubjectIdentity",
            "/concord.requests.v1.RequestsService/TransitionRequest",
            "",
        ] {
            assert!(!is_read(write), "{write}");
        }
    }

    #[test]
    fn the_deadline_passed_on_keeps_a_margin_within_the_gateways_limit() {
        let mut h = http::HeaderMap::new();
        let max = Duration::from_secs(30);
        assert_eq!(pass_on(&h, max), max - MARGIN);
        h.insert("grpc-timeout", http::HeaderValue::from_static("500m"));
        assert_eq!(pass_on(&h, max), Duration::from_millis(480));
        h.insert("grpc-timeout", http::HeaderValue::from_static("5m"));
        assert_eq!(pass_on(&h, max), Duration::from_millis(1));
        set_timeout(&mut h, Duration::from_micros(10));
        assert_eq!(h["grpc-timeout"], "1m");
    }
}

#[cfg(test)]
mod framing_tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn messages_are_followed_whatever_the_chunks() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(300));
        let ends = [8, 13, 318];
        for chunk in [1, 2, 4, 5, 7, 64, 1000] {
            let mut f = Framing::default();
            let mut read = 0;
            for piece in stream.chunks(chunk) {
                f.follow(piece);
                read += piece.len();
                assert_eq!(f.between(), ends.contains(&read), "chunk {chunk}, at {read}");
            }
        }
    }
}
