//! RPC metrics, as Kubernetes monitoring scrapes them: per service and method, calls started,
//! calls handled by status code, and handling time as a histogram (the names and labels of
//! go-grpc-prometheus, which common Grafana dashboards read). Served in the Prometheus text
//! format at `/metrics` on `--metrics-addr` ([`serve`]).
//!
//! A call is counted when its response starts: unary calls with their final code; streams
//! with the code they start with (their end is in trailers). A call dropped before it was
//! answered (its caller went away, or the drain timeout abandoned it) is counted as
//! `Canceled`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::server::Shutdown;

/// Upper bounds of the handling-time buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Distinct (service, method) pairs kept; calls of any other are counted under
/// `("other", "other")`, so paths sent by anyone (before authentication) cannot grow the
/// metrics without bound.
pub const MAX_METHODS: usize = 512;

/// The process's metrics.
pub static RPC: LazyLock<Rpc> = LazyLock::new(Rpc::default);

#[derive(Debug, Default, Clone)]
struct Method {
    started: u64,
    handled: BTreeMap<String, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and histograms per (service, method).
#[derive(Debug, Default)]
pub struct Rpc {
    methods: Mutex<BTreeMap<(String, String), Method>>,
    /// The services served: any other path is counted as `unknown`.
    known: Mutex<std::collections::BTreeSet<String>>,
}

/// A method name as a label: its characters limited to those of gRPC method names (and the
/// JSON edge's `Service/Method`), at most 128.
fn method_label(method: &str) -> String {
    method
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        .take(128)
        .collect()
}

/// The entry of `service`/`method` (`unknown` for a service not served), or the shared one
/// past [`MAX_METHODS`].
fn entry<'a>(
    m: &'a mut BTreeMap<(String, String), Method>,
    known: bool,
    service: &str,
    method: &str,
) -> &'a mut Method {
    let key = if known {
        (service.to_string(), method_label(method))
    } else {
        ("unknown".to_string(), "unknown".to_string())
    };
    if m.contains_key(&key) || m.len() < MAX_METHODS {
        m.entry(key).or_default()
    } else {
        m.entry(("other".into(), "other".into())).or_default()
    }
}

impl Rpc {
    /// Services served (their gRPC names): only their paths get labels of their own.
    pub fn serve(&self, services: &[&str]) {
        if let Ok(mut k) = self.known.lock() {
            k.extend(services.iter().map(|s| s.to_string()));
        }
    }

    fn is_known(&self, service: &str) -> bool {
        self.known.lock().map(|k| k.contains(service)).unwrap_or(false)
    }

    /// A call of `service`/`method` started.
    pub fn started(&self, service: &str, method: &str) {
        let known = self.is_known(service);
        if let Ok(mut m) = self.methods.lock() {
            entry(&mut m, known, service, method).started += 1;
        }
    }

    /// A call of `service`/`method` answered `code` (a gRPC code name) after `took`.
    pub fn handled(&self, service: &str, method: &str, code: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let known = self.is_known(service);
        if let Ok(mut m) = self.methods.lock() {
            let e = entry(&mut m, known, service, method);
            *e.handled.entry(code.to_string()).or_default() += 1;
            for (i, le) in BUCKETS.iter().enumerate() {
                if secs <= *le {
                    e.buckets[i] += 1;
                }
            }
            e.count += 1;
            e.sum += secs;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let methods = self.methods.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = String::new();
        let labels = |s: &str, m: &str| format!("grpc_service=\"{s}\",grpc_method=\"{m}\"");
        out.push_str("# HELP grpc_server_started_total Calls started on the server.\n");
        out.push_str("# TYPE grpc_server_started_total counter\n");
        for ((s, m), v) in &methods {
            let _ = writeln!(out, "grpc_server_started_total{{{}}} {}", labels(s, m), v.started);
        }
        out.push_str("# HELP grpc_server_handled_total Calls answered, by gRPC status code.\n");
        out.push_str("# TYPE grpc_server_handled_total counter\n");
        for ((s, m), v) in &methods {
            for (code, n) in &v.handled {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{{},grpc_code=\"{code}\"}} {n}",
                    labels(s, m)
                );
            }
        }
        out.push_str(
            "# HELP grpc_server_handling_seconds Time from a call's arrival to its response.\n",
        );
        out.push_str("# TYPE grpc_server_handling_seconds histogram\n");
        for ((s, m), v) in &methods {
            let l = labels(s, m);
            for (le, n) in BUCKETS.iter().zip(v.buckets) {
                let _ = writeln!(out, "grpc_server_handling_seconds_bucket{{{l},le=\"{le}\"}} {n}");
            }
            let _ =
                writeln!(out, "grpc_server_handling_seconds_bucket{{{l},le=\"+Inf\"}} {}", v.count);
            let _ = writeln!(out, "grpc_server_handling_seconds_sum{{{l}}} {}", v.sum);
            let _ = writeln!(out, "grpc_server_handling_seconds_count{{{l}}} {}", v.count);
        }
        out
    }
}

/// The name of a numeric gRPC status (`grpc-status` header value).
pub fn code_name(status: &str) -> &'static str {
    match status.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::Unknown) => "Unknown",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        Err(_) => "Unknown",
    }
}

/// Serves `GET /metrics` (and nothing else) over HTTP/1.1 on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, mut shutdown: Shutdown) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut conn, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        tokio::spawn(async move {
            // One request per connection, as scrapers send it: the request line decides.
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let line = head.lines().next().unwrap_or("");
            let (status, body, kind) = if line.starts_with("GET /metrics ") {
                ("200 OK", RPC.render(), "text/plain; version=0.0.4; charset=utf-8")
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".into(), "text/plain")
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_code_and_timed_in_buckets() {
        let rpc = Rpc::default();
        rpc.serve(&["concord.registry.v1.RegistryService"]);
        rpc.started("concord.registry.v1.RegistryService", "GetPerson");
        rpc.handled(
            "concord.registry.v1.RegistryService",
            "GetPerson",
            code_name("5"),
            Duration::from_millis(3),
        );
        let text = rpc.render();
        let l = "grpc_service=\"concord.registry.v1.RegistryService\",grpc_method=\"GetPerson\"";
        assert!(text.contains(&format!("grpc_server_started_total{{{l}}} 1")), "{text}");
        assert!(
            text.contains(&format!("grpc_server_handled_total{{{l},grpc_code=\"NotFound\"}} 1"))
        );
        assert!(
            text.contains(&format!("grpc_server_handling_seconds_bucket{{{l},le=\"0.0025\"}} 0"))
        );
        assert!(
            text.contains(&format!("grpc_server_handling_seconds_bucket{{{l},le=\"0.005\"}} 1"))
        );
        assert!(text.contains(&format!("grpc_server_handling_seconds_count{{{l}}} 1")));
    }

    #[test]
    fn paths_sent_by_anyone_cannot_grow_or_break_the_metrics() {
        let rpc = Rpc::default();
        rpc.serve(&["svc"]);
        for i in 0..1000 {
            rpc.started("scanner", &format!("probe{i}"));
        }
        rpc.started("x\\\"", "y");
        assert_eq!(rpc.methods.lock().unwrap().len(), 1, "one shared label for the unknown");
        assert!(rpc.render().contains("grpc_service=\"unknown\",grpc_method=\"unknown\"} 1001"));
        for i in 0..MAX_METHODS + 100 {
            rpc.started("svc", &format!("M{i}"));
        }
        rpc.started("svc", "Bad\"Name\\");
        let text = rpc.render();
        assert!(text.contains("grpc_service=\"other\",grpc_method=\"other\"}"), "past the cap");
        assert!(!text.contains("Bad\""), "labels keep to method-name characters");
    }
}
