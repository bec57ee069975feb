//! The JSON edge, for partners without gRPC: every RPC of the gateway and of the
//! services it passes through, as `POST /v1/{package.Service}/{Method}` with the request
//! message as JSON in the standard protobuf JSON mapping (lowerCamelCase names, 64-bit
//! integers as strings, enums by name, RFC 3339 timestamps), answered the same way. The call
//! is made as the gRPC call it maps to, under the same identity (client certificate or bearer
//! token), purpose (`x-concord-purpose`) and deadline (`grpc-timeout`), so each service
//! decides and audits it as any other. Errors come back with the HTTP status of their gRPC
//! code and a body `{"code", "status", "message", "details"}` (google.rpc.Status in JSON,
//! with the field violations of bad input). Server streams (Subscribe, WatchChanges) answer
//! JSON lines (`application/x-ndjson`), one message per line and, if the stream ends with an
//! error, a last line `{"error": ...}`. Client streams (ImportPersons) take JSON lines, one
//! message per line, within the body's limit (4 MiB); a line that is not a message is
//! INVALID_ARGUMENT naming the line, and nothing is sent. `GET /v1/openapi.json` describes
//! it all.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use concord_platform::http_json::{error, json};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions,
};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

/// A gRPC service the edge calls in process.
pub type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Largest JSON request body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The JSON edge over the gateway's gRPC services.
#[derive(Clone)]
pub struct JsonEdge {
    max_deadline: std::time::Duration,
    pool: DescriptorPool,
    services: BTreeMap<&'static str, Inner>,
    openapi: Bytes,
}

impl JsonEdge {
    /// Serves the methods of `services` (gRPC name and service), described in `pool` (the
    /// contracts); no call waits longer than `max_deadline` (less a margin) for its answer.
    pub fn new(
        pool: DescriptorPool,
        max_deadline: std::time::Duration,
        services: Vec<(&'static str, Inner)>,
    ) -> anyhow::Result<Self> {
        let names: Vec<&str> = services.iter().map(|(n, _)| *n).collect();
        let openapi =
            Bytes::from(serde_json::to_vec_pretty(&crate::openapi::document(&pool, &names)?)?);
        Ok(Self { max_deadline, pool, services: services.into_iter().collect(), openapi })
    }
}

impl NamedService for JsonEdge {
    // Routes `/v1/*`.
    const NAME: &'static str = "v1";
}

impl Service<http::Request<Body>> for JsonEdge {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let edge = self.clone();
        Box::pin(async move { Ok(edge.handle(req).await) })
    }
}

impl JsonEdge {
    async fn handle(&self, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/v1/openapi.json" && req.method() == http::Method::GET {
            return json(http::StatusCode::OK, self.openapi.to_vec());
        }
        let Some(rest) = path.strip_prefix("/v1/") else {
            return error(&tonic::Status::not_found(format!("no such path {path}")));
        };
        let Some((service, method)) = rest.split_once('/') else {
            return error(&tonic::Status::not_found(format!(
                "{path} is not /v1/{{package.Service}}/{{Method}}"
            )));
        };
        let Some(method) = self.method(service, method) else {
            return error(&tonic::Status::not_found(format!("no such method {service}/{method}")));
        };
        if req.method() != http::Method::POST {
            return error(&tonic::Status::unimplemented("methods are called with POST"));
        }
        // A JSON caller gets DEADLINE_EXCEEDED (504) in JSON when its time is up, before the
        // gateway's own limit cuts the call.
        let budget = crate::proxy::pass_on(req.headers(), self.max_deadline);
        let work = async {
            let answer = self.forward(service, &method, req, budget).await?;
            if method.is_server_streaming() {
                stream(&method, answer)
            } else {
                unary(&method, answer).await
            }
        };
        match tokio::time::timeout(budget, work).await {
            Ok(r) => r.unwrap_or_else(|s| error(&s)),
            Err(_) => error(&tonic::Status::deadline_exceeded(
                "no answer within the call's deadline (grpc-timeout)",
            )),
        }
    }

    fn method(&self, service: &str, method: &str) -> Option<MethodDescriptor> {
        if !self.services.contains_key(service) {
            return None;
        }
        self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
    }

    /// Makes the gRPC call `req` maps to, with `budget` for its deadline (what this edge
    /// waits, so a case file is composed in time to come back whole), and returns the
    /// service's answer as it comes.
    async fn forward(
        &self,
        service: &str,
        method: &MethodDescriptor,
        req: http::Request<Body>,
        budget: std::time::Duration,
    ) -> Result<http::Response<Body>, tonic::Status> {
        let (parts, body) = req.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| tonic::Status::invalid_argument(format!("the request body: {e}")))?
            .to_bytes();
        let input = method.input();
        let not_message = |e: serde_json::Error, line: Option<usize>| {
            let at = line.map_or_else(String::new, |n| format!("line {n} of "));
            tonic::Status::invalid_argument(format!(
                "{at}the request body is not a {} in JSON: {e}",
                input.full_name()
            ))
        };
        let mut framed = BytesMut::with_capacity(bytes.len() + 5);
        if method.is_client_streaming() {
            // JSON lines, one message per line; blank lines are skipped.
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    let m = from_json(&input, line).map_err(|e| not_message(e, Some(i + 1)))?;
                    frame(&mut framed, &m);
                }
            }
        } else {
            let raw: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
            frame(&mut framed, &from_json(&input, raw).map_err(|e| not_message(e, None))?);
        }

        // The gRPC call it maps to, with the caller's headers and identity.
        let mut call = http::Request::new(Body::new(http_body_util::Full::new(framed.freeze())));
        *call.uri_mut() = format!("/{service}/{}", method.name())
            .parse()
            .map_err(|e| tonic::Status::internal(format!("{e}")))?;
        *call.method_mut() = http::Method::POST;
        *call.extensions_mut() = parts.extensions;
        let headers = call.headers_mut();
        for (k, v) in &parts.headers {
            if k.as_str().starts_with("x-concord-") || k == "traceparent" || k == "tracestate" {
                headers.append(k.clone(), v.clone());
            }
        }
        crate::proxy::set_timeout(headers, budget);
        headers
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert("te", http::HeaderValue::from_static("trailers"));
        let inner = self
            .services
            .get(service)
            .cloned()
            .ok_or_else(|| tonic::Status::not_found(service.to_string()))?;
        Ok(inner.oneshot(call).await.unwrap_or_else(|e| match e {}))
    }
}

/// The message of type `input` written in JSON in `raw`.
fn from_json(input: &MessageDescriptor, raw: &[u8]) -> Result<DynamicMessage, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let message = DynamicMessage::deserialize(input.clone(), &mut de)?;
    de.end()?;
    Ok(message)
}

/// Appends `message` to `out` as a gRPC message (uncompressed).
fn frame(out: &mut BytesMut, message: &DynamicMessage) {
    let len = message.encoded_len();
    out.reserve(len + 5);
    out.put_u8(0);
    out.put_u32(len as u32);
    // A BytesMut grows as it is written: encoding cannot run out of room.
    let _ = message.encode(out);
}

/// A message in JSON.
fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, tonic::Status> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut buf);
    message
        .serialize_with_options(&mut ser, &SerializeOptions::new())
        .map_err(|e| tonic::Status::internal(format!("the answer in JSON: {e}")))?;
    Ok(buf)
}

/// The next whole gRPC message framed in `buf`, taken out of it.
fn next_message(buf: &mut BytesMut) -> Result<Option<Bytes>, tonic::Status> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf[0] != 0 {
        return Err(tonic::Status::internal("the service answered a compressed message"));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A server stream as JSON lines (`application/x-ndjson`): one message per line, and a last
/// line `{"error": {...}}` (google.rpc.Status) when the stream ends with an error.
fn stream(
    method: &MethodDescriptor,
    answer: http::Response<Body>,
) -> Result<http::Response<Body>, tonic::Status> {
    let (head, mut body) = answer.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&head.headers) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
    }
    let output = method.output();
    let error_line = |s: &tonic::Status| {
        let line = serde_json::json!({ "error": concord_platform::http_json::status_json(s) });
        let mut v = serde_json::to_vec(&line).unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    };
    let lines = async_stream::stream! {
        let mut buf = BytesMut::new();
        let mut ended = false;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    yield Ok::<_, Infallible>(http_body::Frame::data(error_line(&tonic::Status::unavailable(format!("the stream was cut: {e}")))));
                    break;
                }
            };
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                loop {
                    match next_message(&mut buf) {
                        Ok(Some(m)) => {
                            let line = DynamicMessage::decode(output.clone(), m)
                                .map_err(|e| tonic::Status::internal(format!("the answer: {e}")))
                                .and_then(|m| to_json(&m));
                            match line {
                                Ok(mut l) => {
                                    l.push(b'\n');
                                    yield Ok(http_body::Frame::data(Bytes::from(l)));
                                }
                                Err(s) => yield Ok(http_body::Frame::data(error_line(&s))),
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            yield Ok(http_body::Frame::data(error_line(&s)));
                            return;
                        }
                    }
                }
            } else if let Some(trailers) = frame.trailers_ref() {
                ended = true;
                if let Some(s) = tonic::Status::from_header_map(trailers) {
                    if s.code() != tonic::Code::Ok {
                        yield Ok(http_body::Frame::data(error_line(&s)));
                    }
                }
            }
        }
        // A stream that stops without its trailers, or inside a message, was cut.
        if !ended || !buf.is_empty() {
            let s = tonic::Status::unavailable("the stream was cut; resume from the last cursor");
            yield Ok(http_body::Frame::data(error_line(&s)));
        }
    };
    let mut r = http::Response::new(Body::new(http_body_util::StreamBody::new(lines)));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// A unary answer as JSON.
async fn unary(
    method: &MethodDescriptor,
    answer: http::Response<Body>,
) -> Result<http::Response<Body>, tonic::Status> {
    {
        let (head, body) = answer.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the answer was cut: {e}")))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut data = collected.to_bytes();
        // The status: trailers-only answers carry it in the headers.
        let from = if trailers.contains_key("grpc-status") { &trailers } else { &head.headers };
        if let Some(status) = tonic::Status::from_header_map(from) {
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
        }
        if data.remaining() < 5 {
            return Err(tonic::Status::internal("the service answered no message"));
        }
        let compressed = data.get_u8();
        let len = data.get_u32() as usize;
        if compressed != 0 || data.remaining() < len {
            return Err(tonic::Status::internal("the service answered an unreadable message"));
        }
        let out = DynamicMessage::decode(method.output(), data.slice(..len))
            .map_err(|e| tonic::Status::internal(format!("the answer: {e}")))?;
        Ok(json(http::StatusCode::OK, to_json(&out)?))
    }
}
