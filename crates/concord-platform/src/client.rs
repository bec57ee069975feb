//! Channels to other Concord services. Every call made through them carries the current
//! span's W3C tracecontext, so one trace follows a call across services.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A channel that injects tracecontext; what generated clients are built on.
pub type TracedChannel = InjectTrace<Channel>;

fn endpoint(uri: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

/// Connects lazily to `uri` (for example `https://concord-registry:50051`), over mutual TLS
/// with `tls`: the first call connects, and the channel reconnects by itself after failures.
pub fn connect_lazy(
    uri: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<TracedChannel> {
    Ok(InjectTraceLayer.layer(endpoint(uri, tls)?.connect_lazy()))
}

/// Connects to `uri` now, failing if it cannot.
pub async fn connect(
    uri: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<TracedChannel> {
    Ok(InjectTraceLayer.layer(endpoint(uri, tls)?.connect().await?))
}

/// Adds W3C tracecontext headers for the current span to every request.
#[derive(Debug, Clone, Default)]
pub struct InjectTraceLayer;

impl<S> Layer<S> for InjectTraceLayer {
    type Service = InjectTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectTrace { inner }
    }
}

/// See [`InjectTraceLayer`].
#[derive(Debug, Clone)]
pub struct InjectTrace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for InjectTrace<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        crate::telemetry::inject(&tracing::Span::current().context(), req.headers_mut());
        self.inner.call(req)
    }
}

/// The deadline a caller set (`grpc-timeout`: digits and a unit, H M S m u n), if any.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_nonsense_is_none() {
        let t = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
