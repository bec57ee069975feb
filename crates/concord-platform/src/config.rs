//! Configuration shared by every service, from flags and environment variables (12-factor).
//! Service-specific settings (database URLs, addresses) live with the binary that runs them.

use std::time::Duration;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Human,
    /// One JSON object per line, for log collectors in Kubernetes.
    Json,
}

/// Telemetry settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryConfig {
    /// Log format.
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// OTLP/gRPC endpoint for traces; no export when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Human, log_filter: "info".into(), otlp_endpoint: None }
    }
}

/// Limits and timings of every gRPC server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Largest request or response message accepted, in bytes.
    #[arg(long, env = "CONCORD_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests served at once per server; beyond it requests are shed with UNAVAILABLE.
    #[arg(long, env = "CONCORD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Upper bound on any request's time, whatever deadline the caller set.
    #[arg(long, env = "CONCORD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Calls per second each agency may make, sustained (0: no limit).
    #[arg(long, env = "CONCORD_RATE_LIMIT_PER_AGENCY", default_value_t = 200.0)]
    pub rate_limit_per_agency: f64,
    /// Calls an agency may make at once above its sustained rate.
    #[arg(long, env = "CONCORD_RATE_BURST_PER_AGENCY", default_value_t = 400.0)]
    pub rate_burst_per_agency: f64,
    /// Open watch streams each agency may hold.
    #[arg(long, env = "CONCORD_MAX_STREAMS_PER_AGENCY", default_value_t = 16)]
    pub max_streams_per_agency: usize,
    /// After SIGTERM: time spent reporting NOT_SERVING before refusing new connections, so
    /// load balancers take the pod out first.
    #[arg(long, env = "CONCORD_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// After SIGTERM: longest wait for in-flight requests before exiting anyway.
    #[arg(long, env = "CONCORD_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_secs(30),
            rate_limit_per_agency: 200.0,
            rate_burst_per_agency: 400.0,
            max_streams_per_agency: 16,
            drain_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Parses "250ms", "5s", "2m" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 =
        num.parse().map_err(|_| format!("'{s}' is not a duration like 250ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("'{s}' has an unknown unit; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
