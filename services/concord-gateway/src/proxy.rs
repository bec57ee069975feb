//! The pass-through: calls to the services' own APIs, sent on as they came (bytes, not
//! decoded messages), with the partner's authenticated identity in place of whatever identity
//! metadata the call carried. The service behind decides, as for a direct call, what the
//! partner may see and do; it knows the call came through the gateway, a trusted forwarder.
//! The deadline (`grpc-timeout`), the purpose, request ids and tracecontext travel with the
//! call; responses and their trailers (errors with their details) come back unchanged, and
//! streams stream.
//!
//! A call that is safe to repeat, and whose connection failed before the service answered
//! (it could not be reached, or the connection broke), is sent once more after a short
//! pause, if its deadline leaves time. Safe to repeat are:
//! - reads (Get, List, Search, Summarize, Watch): if the first did reach the service, its
//!   audit log records the read twice, which is what happened;
//! - writes that carry a request id (AIP-155): the service claims the id in the write's own
//!   transaction, so a second try after a first that did commit, or that is still
//!   committing, answers with what the first did and changes nothing more. The gateway finds
//!   the id without decoding the message: it knows from the contracts where each write's
//!   request holds `request_id` (at its top, or one level down as in a custody change's
//!   `transition`), and steps over the message's fields by their wire types to find it. A
//!   write without one, a client stream (an import: its rows carry their own ids, and it
//!   streams through as it comes), or a compressed message is sent once: the partner
//!   decides whether to send it again.
//!
//! An answer from the service, UNAVAILABLE included, is passed back as it is. A call whose
//! deadline passed on the way gets DEADLINE_EXCEEDED naming the service, not a second try,
//! also while a connection to the service is still being made (one whose handshake hangs).
//!
//! To be sent again a request is kept, up to [`KEPT_FOR_RETRY`] (requests to read, and
//! writes with a request id, are small); a larger one streams through and is sent once.
//!
//! When the gateway shuts down, a passed-through watch stream ends after the message in
//! flight with UNAVAILABLE, as the gateway's own Subscribe does, so the partner resumes from
//! its cursor elsewhere instead of holding the drain open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::client::TracedChannel;
use concord_platform::server::Shutdown;
use futures::future::BoxFuture;
use futures::StreamExt;
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
    shutdown: Shutdown,
    /// Where the request id is in the request of each write that has one.
    request_ids: Arc<HashMap<String, Vec<u32>>>,
    _upstream: PhantomData<U>,
}

impl<U: Upstream> Proxy<U> {
    /// Over `channel`; the service is given at most `max_deadline` (the gateway's own limit
    /// on a call), less a margin for the answer to come back through the gateway. Watch
    /// streams end when `shutdown` begins. Its writes' request ids are found from
    /// `contracts`.
    pub fn new(
        channel: TracedChannel,
        max_deadline: Duration,
        shutdown: Shutdown,
        contracts: &prost_reflect::DescriptorPool,
    ) -> anyhow::Result<Self> {
        let request_ids = Arc::new(request_id_fields(contracts, U::NAME)?);
        Ok(Self { channel, max_deadline, shutdown, request_ids, _upstream: PhantomData })
    }
}

/// For each write of `service` (its gRPC name) whose request carries a request id, the
/// method's name and where the id is: the number of the `request_id` string field, after
/// that of the message field holding it when it is one level down (a custody change's
/// `transition.request_id`). From the contracts.
pub fn request_id_fields(
    contracts: &prost_reflect::DescriptorPool,
    service: &str,
) -> anyhow::Result<HashMap<String, Vec<u32>>> {
    use prost_reflect::{Kind, MessageDescriptor};
    fn id(m: &MessageDescriptor) -> Option<u32> {
        let f = m.get_field_by_name("request_id")?;
        (f.kind() == Kind::String && !f.is_list()).then(|| f.number())
    }
    let service = contracts
        .get_service_by_name(service)
        .ok_or_else(|| anyhow::anyhow!("{service} is not in the contracts"))?;
    Ok(service
        .methods()
        .filter(|m| !is_read(&format!("/{}/{}", service.full_name(), m.name())))
        // A client stream streams through, sent once.
        .filter(|m| !m.is_client_streaming())
        .filter_map(|m| {
            let input = m.input();
            let path = id(&input).map(|n| vec![n]).or_else(|| {
                input.fields().find_map(|f| match f.kind() {
                    Kind::Message(inner) if !f.is_list() && !f.is_map() => {
                        id(&inner).map(|n| vec![f.number(), n])
                    }
                    _ => None,
                })
            })?;
            Some((m.name().to_string(), path))
        })
        .collect())
}

/// Whether `body` is one uncompressed gRPC message whose string field at `path` (see
/// [`request_id_fields`]) is set and not empty: a request id is present. The message is not
/// decoded: its fields are stepped over by their wire types. Anything else (a compressed
/// message, a stream of several, bytes that are not a message) is not known to carry one.
fn carries_request_id(body: &[u8], path: &[u32]) -> bool {
    let Some((header, msg)) = body.split_first_chunk::<5>() else { return false };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if header[0] != 0 || usize::try_from(len).ok() != Some(msg.len()) {
        return false;
    }
    last_string(msg, path) == Ok(Some(true))
}

/// Whether the last occurrence of the string at `path` in the encoded message `msg` is not
/// empty (`None` when it does not occur). A message field that occurs more than once is the
/// merge of its occurrences, so the last occurrence within any of them counts.
fn last_string(mut msg: &[u8], path: &[u32]) -> Result<Option<bool>, ()> {
    let Some((&field, inner)) = path.split_first() else { return Err(()) };
    let mut last = None;
    while !msg.is_empty() {
        let key = prost::encoding::decode_varint(&mut msg).map_err(|_| ())?;
        let skip = match key & 7 {
            0 => prost::encoding::decode_varint(&mut msg).map(|_| 0).map_err(|_| ())?,
            1 => 8,
            2 => {
                let n = prost::encoding::decode_varint(&mut msg).map_err(|_| ())?;
                let n = usize::try_from(n).map_err(|_| ())?;
                let value = msg.get(..n).ok_or(())?;
                if key >> 3 == u64::from(field) {
                    if inner.is_empty() {
                        last = Some(n > 0);
                    } else if let Some(set) = last_string(value, inner)? {
                        last = Some(set);
                    }
                }
                n
            }
            5 => 4,
            _ => return Err(()),
        };
        msg = msg.get(skip..).ok_or(())?;
    }
    Ok(last)
}

/// The most of a request (a read's, or a write's that may carry a request id) kept to send
/// it again: the message and its 5-byte gRPC header. A larger request is passed on as it
/// streams, without a second try.
pub const KEPT_FOR_RETRY: usize = 64 * 1024;

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
        let channel = self.channel.clone();
        let path = req.uri().path();
        // A write may be sent again only if it carries a request id, found below.
        let request_id = if is_read(path) {
            None
        } else {
            match path.rsplit('/').next().and_then(|m| self.request_ids.get(m)) {
                Some(field) => Some(field.clone()),
                None => {
                    // Sent once, as it comes.
                    set_timeout(req.headers_mut(), budget);
                    return Box::pin(async move {
                        let deadline = tokio::time::Instant::now() + budget;
                        Ok(send(channel, req, deadline).await.unwrap_or_else(|e| failed::<U>(&e)))
                    });
                }
            }
        };
        let shutdown = is_watch(path).then(|| self.shutdown.clone());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + budget;
            let (parts, body) = req.into_parts();
            let once = |parts, body| async {
                let mut req = http::Request::from_parts(parts, body);
                // Less the time the request took to arrive.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                set_timeout(req.headers_mut(), left);
                let res =
                    send(channel.clone(), req, deadline).await.unwrap_or_else(|e| failed::<U>(&e));
                Ok(watched(res, shutdown.clone()))
            };
            let body = match keep(body, KEPT_FOR_RETRY).await {
                Ok(Kept::Whole(body)) => body,
                // Too large to keep: sent once.
                Ok(Kept::Streaming(body)) => return once(parts, body).await,
                Err(status) => return Ok(status.into_http()),
            };
            if request_id.is_some_and(|at| !carries_request_id(&body, &at)) {
                let body = Body::new(http_body_util::Full::new(body));
                return once(parts, body).await;
            }
            let copy = || {
                let mut r = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                set_timeout(r.headers_mut(), left);
                r
            };
            let res = match send(channel.clone(), copy(), deadline).await {
                Ok(res) => res,
                Err(e) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if is_late(&e) || left <= RETRY_AFTER * 4 {
                        return Ok(failed::<U>(&e));
                    }
                    tracing::debug!(service = U::SHORT, error = %e, "gateway: call sent again");
                    tokio::time::sleep(RETRY_AFTER).await;
                    match send(channel, copy(), deadline).await {
                        Ok(res) => res,
                        Err(e) => return Ok(failed::<U>(&e)),
                    }
                }
            };
            Ok(watched(res, shutdown))
        })
    }
}

/// A read's request: whole, or too large to keep and streaming on.
enum Kept {
    Whole(bytes::Bytes),
    Streaming(Body),
}

/// Reads `body` whole if it is at most `cap` bytes; otherwise gives back a body that streams
/// what was read and then the rest.
async fn keep(mut body: Body, cap: usize) -> Result<Kept, tonic::Status> {
    let mut frames: Vec<http_body::Frame<bytes::Bytes>> = Vec::new();
    let mut size = 0usize;
    loop {
        match body.frame().await {
            None => {
                let mut data = frames.into_iter().filter_map(|f| f.into_data().ok());
                // A small request comes in one frame: kept as it came, not copied.
                let whole = match (data.next(), data.next()) {
                    (None, _) => bytes::Bytes::new(),
                    (Some(only), None) => only,
                    (Some(first), Some(second)) => {
                        let mut whole = bytes::BytesMut::with_capacity(size);
                        for d in [first, second].into_iter().chain(data) {
                            whole.extend_from_slice(&d);
                        }
                        whole.freeze()
                    }
                };
                return Ok(Kept::Whole(whole));
            }
            Some(Err(e)) => {
                return Err(tonic::Status::cancelled(format!(
                    "the request did not arrive whole: {e}"
                )))
            }
            Some(Ok(f)) => {
                let trailers = f.is_trailers();
                size += f.data_ref().map_or(0, bytes::Bytes::len);
                frames.push(f);
                if size > cap || trailers {
                    let read = futures::stream::iter(frames.into_iter().map(Ok));
                    let rest = http_body_util::BodyStream::new(body);
                    let chained = http_body_util::StreamBody::new(read.chain(rest));
                    return Ok(Kept::Streaming(Body::new(chained)));
                }
            }
        }
    }
}

/// `res`, ended on shutdown if it is a watch's.
fn watched(res: http::Response<Body>, shutdown: Option<Shutdown>) -> http::Response<Body> {
    match shutdown {
        Some(s) => ends_on(res, s),
        None => res,
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
        self.done || self.inner.is_end_stream()
    }
}

/// The pause before a read whose service could not be reached is sent again.
pub const RETRY_AFTER: Duration = Duration::from_millis(25);

/// Sends `req` on `channel`: the service's answer, or the error that kept it from the service.
/// The channel times the call by its `grpc-timeout` only once a connection takes it, so a
/// service that cannot be connected to (its handshake hangs) would hold the call until the
/// connect timeout: `deadline` ends the wait ([`Unsent::Late`]).
async fn send(
    mut channel: TracedChannel,
    req: http::Request<Body>,
    deadline: tokio::time::Instant,
) -> Result<http::Response<Body>, Unsent> {
    let sent = async {
        futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
        Ok(channel.call(req).await?.map(Body::new))
    };
    match tokio::time::timeout_at(deadline, sent).await {
        Ok(answer) => answer.map_err(Unsent::Failed),
        Err(_) => Err(Unsent::Late),
    }
}

/// Why a call passed on got no answer from the service.
#[derive(Debug)]
enum Unsent {
    /// Its deadline passed before the service's answer began (perhaps before a connection
    /// even took it).
    Late,
    /// The connection failed, or the channel's own timer fired.
    Failed(tonic::transport::Error),
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsent::Late => f.write_str("no connection within the call's deadline"),
            Unsent::Failed(e) => e.fmt(f),
        }
    }
}

/// Sets `grpc-timeout` to `timeout` (at least a millisecond).
pub(crate) fn set_timeout(headers: &mut http::HeaderMap, timeout: Duration) {
    let ms = timeout.as_millis().max(1);
    if let Ok(v) = http::HeaderValue::from_str(&format!("{ms}m")) {
        headers.insert("grpc-timeout", v);
    }
}

/// Whether the call's deadline passed on the way: before a connection took it, or by the
/// channel's own timer.
fn is_late(e: &Unsent) -> bool {
    let Unsent::Failed(e) = e else { return true };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The answer to a call whose connection failed: DEADLINE_EXCEEDED if its deadline passed
/// on the way, otherwise UNAVAILABLE naming the service (it could not be reached, or the
/// connection broke before it answered).
fn failed<U: Upstream>(e: &Unsent) -> http::Response<Body> {
    if is_late(e) {
        return tonic::Status::deadline_exceeded(format!(
            "the {} service did not answer within the call's deadline",
            U::SHORT
        ))
        .into_http();
    }
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

    /// `m` as one gRPC message, compressed or not.
    fn framed(m: &impl prost::Message, compressed: bool) -> Vec<u8> {
        let bytes = m.encode_to_vec();
        let mut out = vec![u8::from(compressed)];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend(bytes);
        out
    }

    #[test]
    fn the_request_id_of_each_write_is_found_without_decoding_it() {
        use concord_proto::registry::v1 as reg;
        use concord_proto::requests::v1 as req;
        let contracts =
            prost_reflect::DescriptorPool::decode(concord_proto::FILE_DESCRIPTOR_SET).unwrap();
        let fields = |service: &str| request_id_fields(&contracts, service);
        let registry = fields(Registry::NAME).unwrap();
        assert_eq!(registry["CreatePerson"], [2]);
        assert_eq!(registry["AdmitPerson"], [4, 5], "transition.request_id");
        assert_eq!(registry.get("GetPerson"), None, "a read is not in the table");
        assert_eq!(registry.get("RevokeSharingAgreement"), None, "no request id");
        assert_eq!(registry.get("ImportPersons"), None, "a client stream is sent once");
        let requests = fields(Requests::NAME).unwrap();
        assert_eq!(requests["TransitionRequest"], [6]);
        assert!(fields(Facilities::NAME).unwrap().contains_key("CreateFacility"));
        assert!(fields("concord.nothing.v1.Nothing").is_err());

        let person =
            Some(reg::Person { sex: 2, facility_id: "x".repeat(300), ..Default::default() });
        let with =
            |id: &str| reg::CreatePersonRequest { person: person.clone(), request_id: id.into() };
        assert!(carries_request_id(&framed(&with("8c0e-41"), false), &[2]));
        assert!(!carries_request_id(&framed(&with(""), false), &[2]), "an empty id is none");
        assert!(!carries_request_id(&framed(&with("8c0e-41"), true), &[2]), "compressed");
        let mut two = framed(&with("a"), false);
        two.extend(framed(&with("a"), false));
        assert!(!carries_request_id(&two, &[2]), "a stream of two messages");
        let whole = framed(&with("8c0e-41"), false);
        assert!(!carries_request_id(&whole[..whole.len() - 1], &[2]), "cut short");
        assert!(!carries_request_id(&[], &[2]));

        // Every wire type is stepped over: varints, fixed 64 and 32 bits, nested messages.
        let t = req::TransitionRequestRequest {
            name: "requests/r1".into(),
            state: 3,
            reason: "handover".into(),
            etag: "\"e\"".into(),
            request_id: "t-1".into(),
            handover_protocol: Some(req::HandoverProtocol {
                document: "doc".into(),
                sign_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
                ..Default::default()
            }),
        };
        let with_fields = |extra: &[u8]| {
            let mut b = framed(&t, false);
            b.extend(extra);
            let len = (b.len() - 5) as u32;
            b[1..5].copy_from_slice(&len.to_be_bytes());
            b
        };
        assert!(carries_request_id(&framed(&t, false), &[6]));
        // Unknown fields 15 of 64 and of 32 bits are stepped over.
        let fixed = [0x79u8, 1, 2, 3, 4, 5, 6, 7, 8, 0x7d, 1, 2, 3, 4];
        assert!(carries_request_id(&with_fields(&fixed), &[6]));
        // The last occurrence of a field is its value: an empty one after a set one.
        assert!(!carries_request_id(&with_fields(&[0x32, 0]), &[6]));
        // A deprecated group is not stepped over: not known to carry an id.
        assert!(!carries_request_id(&with_fields(&[0x7b]), &[6]));

        // One level down: a custody change's transition.request_id.
        let admit = |id: &str| reg::AdmitPersonRequest {
            name: "persons/p1".into(),
            facility_id: "al-hol".into(),
            section_id: String::new(),
            transition: Some(reg::CustodyTransition {
                reason: "intake".into(),
                request_id: id.into(),
                ..Default::default()
            }),
        };
        assert!(carries_request_id(&framed(&admit("ad-1"), false), &[4, 5]));
        assert!(!carries_request_id(&framed(&admit(""), false), &[4, 5]));
        assert!(!carries_request_id(&framed(&admit("ad-1"), false), &[5]), "not at the top");
        // A message field given twice is merged: an id in the first still counts when the
        // second has none, and a later empty one clears it.
        let mut b = framed(&admit("ad-1"), false);
        b.extend([0x22, 2, 0x0a, 0]);
        let len = (b.len() - 5) as u32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(carries_request_id(&b, &[4, 5]));
        b.extend([0x22, 2, 0x2a, 0]);
        let len = (b.len() - 5) as u32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(!carries_request_id(&b, &[4, 5]));
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

    /// A body fed frame by frame through the returned sender.
    fn fed() -> (tokio::sync::mpsc::Sender<http_body::Frame<bytes::Bytes>>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, tonic::Status>);
        (tx, Body::new(http_body_util::StreamBody::new(frames)))
    }

    fn data(b: &[u8]) -> http_body::Frame<bytes::Bytes> {
        http_body::Frame::data(bytes::Bytes::copy_from_slice(b))
    }

    #[tokio::test]
    async fn a_watch_ends_on_shutdown_only_after_the_message_in_flight() {
        let (tx, inner) = fed();
        let (trigger, shutdown) = Shutdown::new();
        let res = ends_on(http::Response::new(inner), shutdown);
        let mut body = res.into_body();
        let whole = message(4);
        // Half a message, then the gateway begins to shut down.
        tx.send(data(&whole[..6])).await.unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), 6);
        trigger.trigger();
        tx.send(data(&whole[6..])).await.unwrap();
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(rest.len(), whole.len() - 6, "the message in flight is finished");
        let end = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(end["grpc-status"], "14", "UNAVAILABLE: {end:?}");
        assert!(body.frame().await.is_none());
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn a_watch_that_ends_by_itself_keeps_its_trailers() {
        let (tx, inner) = fed();
        let (_trigger, shutdown) = Shutdown::new();
        let mut body = ends_on(http::Response::new(inner), shutdown).into_body();
        tx.send(data(&message(2))).await.unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("7"));
        tx.send(http_body::Frame::trailers(trailers)).await.unwrap();
        drop(tx);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        let end = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(end["grpc-status"], "7");
        assert!(body.frame().await.is_none());
    }

    async fn all(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_small_read_is_kept_whole_and_a_large_one_streams_on_unchanged() {
        let (tx, inner) = fed();
        tx.send(data(&message(10)[..3])).await.unwrap();
        tx.send(data(&message(10)[3..])).await.unwrap();
        drop(tx);
        match keep(inner, KEPT_FOR_RETRY).await.unwrap() {
            Kept::Whole(b) => assert_eq!(b.to_vec(), message(10)),
            Kept::Streaming(_) => panic!("a small request is kept"),
        }
        let (tx, inner) = fed();
        tx.send(data(&message(7))).await.unwrap();
        drop(tx);
        match keep(inner, KEPT_FOR_RETRY).await.unwrap() {
            Kept::Whole(b) => assert_eq!(b.to_vec(), message(7), "one frame, kept as it came"),
            Kept::Streaming(_) => panic!("a small request is kept"),
        }

        let big = message(KEPT_FOR_RETRY + 100);
        let (tx, inner) = fed();
        let sending = {
            let big = big.clone();
            tokio::spawn(async move {
                for piece in big.chunks(16 * 1024) {
                    tx.send(data(piece)).await.unwrap();
                }
            })
        };
        match keep(inner, KEPT_FOR_RETRY).await.unwrap() {
            Kept::Streaming(body) => assert_eq!(all(body).await, big, "nothing lost or reordered"),
            Kept::Whole(_) => panic!("a large request is not kept"),
        }
        sending.await.unwrap();
    }
}
