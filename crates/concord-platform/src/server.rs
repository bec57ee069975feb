//! Server assembly: every Concord server gets the same health service, reflection (v1 and
//! v1alpha), tower layers, limits and graceful shutdown, from [`serve`].
//!
//! Shutdown, as Kubernetes expects it: on the signal every service reports NOT_SERVING, the
//! server keeps answering for `drain_grace` while load balancers notice, then stops accepting,
//! finishes in-flight calls (watch streams end themselves on the same signal) and returns; the
//! caller then flushes telemetry.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

use crate::auth::SharedAuthenticator;
use crate::config::ServerConfig;
use crate::layers::{AdmissionLayer, DeadlineLayer, IdentityLayer, TraceLayer};

/// A signal every long-lived task watches; flips to `true` once, when shutdown begins.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }
    /// Completes when shutdown begins (at once if it has begun).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
    /// True once shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

impl ShutdownTrigger {
    /// Begins shutdown.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    /// Begins shutdown on SIGTERM or Ctrl-C.
    pub fn on_signals(self) {
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            self.trigger();
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Given the server's health reporter once it serves: for a server whose services' health
/// depends on others (the gateway's on the services behind it).
pub type HealthHook = Box<dyn FnOnce(tonic_health::server::HealthReporter) + Send>;

/// The services one server exposes, with their names for the health protocol.
#[derive(Default)]
pub struct Services {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    plain_health: Option<TcpListener>,
    health_hook: Option<HealthHook>,
    http1_and_grpc_web: bool,
    cors: Option<tower_http::cors::CorsLayer>,
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a generated tonic server.
    pub fn with<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Hands the health reporter to `hook` once serving; statuses it sets after shutdown
    /// began are the hook's to avoid (the server sets NOT_SERVING when draining).
    pub fn with_health_hook(
        mut self,
        hook: impl FnOnce(tonic_health::server::HealthReporter) + Send + 'static,
    ) -> Self {
        self.health_hook = Some(Box::new(hook));
        self
    }

    /// Also accepts HTTP/1.1 (for the JSON edge) and gRPC-Web (for browsers), both on the
    /// same port and behind the same layers.
    pub fn with_http1_and_grpc_web(mut self) -> Self {
        self.http1_and_grpc_web = true;
        self
    }

    /// Answers browsers on other origins as `cors` says (see [`crate::layers::cors`]).
    pub fn with_cors(mut self, cors: Option<tower_http::cors::CorsLayer>) -> Self {
        self.cors = cors;
        self
    }

    /// Also answers the health protocol, and nothing else, in plaintext on `listener`: for
    /// Kubernetes' native gRPC probes, which cannot speak TLS.
    pub fn with_plain_health(mut self, listener: TcpListener) -> Self {
        self.plain_health = Some(listener);
        self
    }
}

/// Binds `addr` (port 0 picks a free port). Separate from [`serve`] so callers learn the port.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}

/// Accepted connections with TCP_NODELAY: without it, small frames (trailers, window updates)
/// wait for the peer's delayed ACK, adding about 40 ms to sequential calls and stalling
/// client streams.
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The most a TLS handshake may take; a client that stalls in it is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most TLS handshakes in progress at once; beyond it, connections wait in the
/// listen backlog until one ends.
pub const MAX_HANDSHAKES: usize = 1024;

/// Connections accepted on `listener` (TCP_NODELAY) and secured with `tls`. Handshakes run
/// side by side, at most [`MAX_HANDSHAKES`] at once and each within [`HANDSHAKE_TIMEOUT`],
/// so a slow client holds up no other; one that fails is logged and dropped. When the
/// stream is dropped (the server stops accepting) the listener closes and the handshakes
/// in progress are abandoned.
pub fn tls_incoming(
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    use futures::StreamExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut tcp = incoming(listener);
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                Ok(permit) = room.clone().acquire_owned() => {
                    tokio::select! {
                        a = tcp.next() => a.map(|a| (a, permit)),
                        () = tx.closed() => break,
                    }
                }
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
                () = tx.closed() => break,
            };
            let (stream, permit) = match accepted {
                None => break,
                Some((Ok(stream), permit)) => (stream, permit),
                Some((Err(e), _)) => {
                    // A connection that failed as it was accepted is that client's; out of
                    // descriptors or memory, waiting beats spinning.
                    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
                    if !matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            handshakes.spawn(async move {
                let peer = stream.peer_addr().ok();
                let shaking = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let secured = shaking.await;
                drop(permit);
                match secured {
                    Ok(Ok(secured)) => {
                        // The server stopped accepting if this fails: the connection closes.
                        let _ = tx.send(Ok(secured)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// How a server proves who it is and learns who calls.
#[derive(Clone)]
pub struct Security {
    /// Turns what callers present into principals.
    pub authenticator: SharedAuthenticator,
    /// TLS, with client certificates verified against the client CA; `None` serves
    /// plaintext (tests of a single service, and deployments that terminate TLS in front).
    /// HTTP/1.1 is offered beside HTTP/2 where it is served (the gateway), so clients that
    /// speak only HTTP/1.1 (many HTTP libraries) reach the JSON edge over TLS.
    pub tls: Option<crate::pki::ServerTls>,
}

/// Serves `services` on `listener` until `shutdown`, with health, reflection and the layers.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    security: Security,
    cfg: &ServerConfig,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    crate::metrics::RPC.serve(&services.names);
    crate::metrics::RPC.serve(&[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in &services.names {
        health.set_service_status(*name, ServingStatus::Serving).await;
    }
    health.set_service_status("", ServingStatus::Serving).await;
    let mut services = services;
    if let Some(hook) = services.health_hook.take() {
        hook(health.clone());
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc error details, so reflection clients (grpcurl) print ErrorInfo and
        // BadRequest instead of raw bytes.
        .register_encoded_file_descriptor_set(concord_proto::ERROR_DETAILS_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc error details, so reflection clients (grpcurl) print ErrorInfo and
        // BadRequest instead of raw bytes.
        .register_encoded_file_descriptor_set(concord_proto::ERROR_DETAILS_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let limiter = (cfg.rate_limit_per_agency > 0.0).then(|| {
        std::sync::Arc::new(crate::quota::RateLimiter::new(
            cfg.rate_limit_per_agency,
            cfg.rate_burst_per_agency,
        ))
    });
    let layers = tower::ServiceBuilder::new()
        .layer(TraceLayer)
        .layer(DeadlineLayer::new(cfg.request_timeout))
        .layer(IdentityLayer::new(security.authenticator, limiter))
        .layer(AdmissionLayer::new(cfg.max_concurrent_requests))
        .into_inner();

    let names = services.names.clone();
    let deadline_shutdown = shutdown.clone();
    let drain_grace = cfg.drain_grace;
    let signal = async move {
        shutdown.wait().await;
        for name in &names {
            health.set_service_status(*name, ServingStatus::NotServing).await;
        }
        health.set_service_status("", ServingStatus::NotServing).await;
        tracing::info!(%addr, grace_ms = drain_grace.as_millis() as u64, "draining: health NOT_SERVING");
        tokio::time::sleep(drain_grace).await;
    };
    tracing::info!(%addr, services = ?services.names, "serving");
    if let Some(plain) = services.plain_health {
        let health = health_service.clone();
        let mut stop = deadline_shutdown.clone();
        let grace = cfg.drain_grace;
        let at = plain.local_addr()?;
        tracing::info!(%at, "serving health in plaintext for probes");
        // Reflection of the health protocol alone, so `grpcurl -plaintext` works there too.
        let health_reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(health_reflection)
                .serve_with_incoming_shutdown(incoming(plain), async move {
                    // Probes see NOT_SERVING through the grace period, as on the TLS port.
                    stop.wait().await;
                    tokio::time::sleep(grace).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "plaintext health server failed");
            }
        });
    }
    let mut routes = services.routes;
    routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let routes = routes.routes();
    let web = services.http1_and_grpc_web;
    let router = tonic::transport::Server::builder()
        .accept_http1(web)
        // A backstop: the deadline layer answers a millisecond sooner (see there).
        .timeout(cfg.request_timeout)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Client streams (imports) would otherwise stall on the 64 KiB default window,
        // waiting a round trip for each window update.
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        // Outermost: a preflight is answered before authentication, which it cannot pass.
        .layer(tower::util::option_layer(services.cors))
        .layer(layers)
        .layer(tower::util::option_layer(web.then_some(crate::layers::GrpcWebOnlyLayer)))
        .add_routes(routes);
    let server: futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>> =
        match security.tls {
            Some(tls) => {
                let incoming = tls_incoming(listener, tls.with_alpn(web));
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(incoming(listener), signal)),
        };
    // Watch streams end on the same signal; anything still running after the grace and the
    // drain timeout is abandoned so a pod never hangs in Terminating.
    let mut deadline_signal = deadline_shutdown;
    let deadline = cfg.drain_grace + cfg.drain_timeout;
    let hard_stop = async move {
        deadline_signal.wait().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        r = server => r?,
        () = hard_stop => tracing::warn!(%addr, "drain timeout: stopping with calls in flight"),
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}
