//! A call still unanswered at its deadline is answered from inside the server's layers: a
//! browser gets it with its CORS headers, the metrics count it, and a call its caller gave up
//! on is counted too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use concord_platform::auth::HeaderAuthenticator;
use concord_platform::config::ServerConfig;
use concord_platform::server::{serve, Security, Services, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::body::Body;

/// `/concord.test.v1.Stalled/Quick` answers an empty message at once; every other method
/// never answers.
#[derive(Clone)]
struct Stalled;

impl tonic::server::NamedService for Stalled {
    const NAME: &'static str = "concord.test.v1.Stalled";
}

impl tower::Service<http::Request<Body>> for Stalled {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let quick = req.uri().path().ends_with("/Quick");
        Box::pin(async move {
            if !quick {
                std::future::pending::<()>().await;
            }
            let mut res = http::Response::new(Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
            )));
            res.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
            res.headers_mut().insert("grpc-status", "0".parse().unwrap());
            Ok(res)
        })
    }
}

const ORIGIN: &str = "https://partner.example";

/// A plaintext server of [`Stalled`] with gRPC-Web and CORS for [`ORIGIN`], limiting every
/// call to `limit`.
async fn start(limit: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let services = Services::new()
        .with(Stalled)
        .with_http1_and_grpc_web()
        .with_cors(concord_platform::layers::cors(&[ORIGIN.into()]).unwrap());
    let security = Security { authenticator: Arc::new(HeaderAuthenticator), tls: None };
    let cfg = ServerConfig { request_timeout: limit, ..ServerConfig::default() };
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        serve(listener, services, security, &cfg, shutdown).await.unwrap();
        drop(trigger);
    });
    addr
}

/// A gRPC-Web call over HTTP/1.1, as a browser on [`ORIGIN`] makes it, with `extra` headers:
/// the whole answer, head and body, as text.
async fn browser_call(addr: std::net::SocketAddr, method: &str, extra: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /concord.test.v1.Stalled/{method} HTTP/1.1\r\nhost: concord\r\norigin: {ORIGIN}\r\n\
         content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
         x-concord-agency: fr-mfa\r\nx-concord-agency-kind: state_ministry\r\nx-concord-state: FR\r\n\
         {extra}content-length: 5\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

/// The gRPC status in a gRPC-Web answer: in its headers, or in its trailers frame.
fn status(answer: &str) -> Option<u32> {
    let at = answer.find("grpc-status:")? + "grpc-status:".len();
    let digits: String =
        answer[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The count of `code` for `method` of the stalled service in the metrics.
fn handled(method: &str, code: &str) -> u64 {
    let text = concord_platform::metrics::RPC.render();
    let prefix = format!(
        "grpc_server_handled_total{{grpc_service=\"concord.test.v1.Stalled\",grpc_method=\"{method}\",grpc_code=\"{code}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A browser's call of `method`, which never answers, with `extra` headers: the answer in
/// lower case with its message decoded, checked to come no sooner than `at_least` (and not
/// much later) as DEADLINE_EXCEEDED that the browser may read: under the gRPC-Web content
/// type, naming the origin (CORS) and exposing the status.
async fn late(addr: std::net::SocketAddr, method: &str, extra: &str, at_least: Duration) -> String {
    let started = Instant::now();
    let answer = browser_call(addr, method, extra).await;
    let took = started.elapsed();
    assert!(took >= at_least, "answered after {took:?}: {answer}");
    assert!(took < at_least + Duration::from_secs(2), "answered after {took:?}");
    let lower = answer.to_ascii_lowercase().replace("%20", " ");
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(lower.contains("content-type: application/grpc-web+proto"), "{answer}");
    assert!(lower.contains(&format!("access-control-allow-origin: {ORIGIN}")), "{answer}");
    assert!(lower.contains("access-control-expose-headers: grpc-status"), "{answer}");
    assert_eq!(status(&lower), Some(4), "{answer}");
    lower
}

#[tokio::test]
async fn a_call_past_its_deadline_is_answered_with_cors_and_counted() {
    let addr = start(Duration::from_secs(30)).await;
    let ms = Duration::from_millis;
    let answer = late(addr, "Call", "grpc-timeout: 300m\r\n", ms(280)).await;
    assert!(answer.contains("within 300ms, the call's deadline"), "{answer}");
    let metrics = concord_platform::metrics::RPC.render();
    assert_eq!(handled("Call", "DeadlineExceeded"), 1, "{metrics}");

    // A quick call on the same server is untouched.
    let answer = browser_call(addr, "Quick", "grpc-timeout: 300m\r\n").await;
    assert_eq!(status(&answer.to_ascii_lowercase()), Some(0), "{answer}");
}

#[tokio::test]
async fn the_deadline_layer_answers_before_tonics_own_timer_every_time() {
    // tonic's timer, outside the layers, would say CANCELLED with no CORS headers: a hundred
    // calls at once, each with two milliseconds, find out which timer answers.
    let addr = start(Duration::from_secs(30)).await;
    let calls = (0..100).map(|_| browser_call(addr, "Race", "grpc-timeout: 2m\r\n"));
    for answer in futures::future::join_all(calls).await {
        let lower = answer.to_ascii_lowercase();
        assert_eq!(status(&lower), Some(4), "{answer}");
        assert!(lower.contains("access-control-allow-origin"), "{answer}");
    }
    assert_eq!(handled("Race", "DeadlineExceeded"), 100);
}

#[tokio::test]
async fn the_servers_own_limit_applies_to_a_call_that_sets_no_deadline_or_a_longer_one() {
    let addr = start(Duration::from_millis(400)).await;
    let ms = Duration::from_millis;
    for extra in ["", "grpc-timeout: 20S\r\n"] {
        let answer = late(addr, "Wait", extra, ms(380)).await;
        assert!(answer.contains("within 400ms, the server's limit"), "{answer}");
    }
    assert_eq!(handled("Wait", "DeadlineExceeded"), 2);
}

#[tokio::test]
async fn a_call_its_caller_gave_up_on_is_counted_as_canceled() {
    let addr = start(Duration::from_secs(30)).await;
    let before = handled("Hang", "Canceled");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    let mut grpc = tonic::client::Grpc::new(channel.unwrap());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    req.metadata_mut().insert("x-concord-agency", "fr-mfa".parse().unwrap());
    req.metadata_mut().insert("x-concord-agency-kind", "state_ministry".parse().unwrap());
    req.metadata_mut().insert("x-concord-state", "FR".parse().unwrap());
    let call = grpc.unary::<(), (), _>(
        req,
        http::uri::PathAndQuery::from_static("/concord.test.v1.Stalled/Hang"),
        tonic_prost::ProstCodec::default(),
    );
    // The caller stops waiting without a deadline the server knows of: the stream is reset.
    assert!(tokio::time::timeout(Duration::from_millis(200), call).await.is_err());
    let waited = Instant::now();
    while handled("Hang", "Canceled") == before {
        assert!(waited.elapsed() < Duration::from_secs(5), "the call was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
