//! The gateway's health says which services behind it answer: each passed-through service's
//! name is SERVING while that service reports SERVING to the gateway's own checks, and
//! NOT_SERVING otherwise. The gateway itself (`""`) serves whatever is behind it: a case file
//! still comes back, with the missing parts named.

use std::time::Duration;

use concord_platform::client::TracedChannel;
use concord_platform::server::Shutdown;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How often each service is checked unless told otherwise.
pub const EVERY: Duration = Duration::from_secs(2);

/// How long a check may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the service `name` answers SERVING on `channel`.
pub async fn serving(channel: TracedChannel, name: &str) -> bool {
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest { service: name.to_string() });
    matches!(
        tokio::time::timeout(TIMEOUT, call).await,
        Ok(Ok(r)) if r.get_ref().status == Wire::Serving as i32
    )
}

/// Checks each of `upstreams` (gRPC name and channel) at once and then every `every`, and
/// reports it, until `shutdown` (then the server reports NOT_SERVING for all).
pub async fn follow(
    upstreams: Vec<(&'static str, TracedChannel)>,
    every: Duration,
    reporter: HealthReporter,
    mut shutdown: Shutdown,
) {
    loop {
        let checks = upstreams
            .iter()
            .map(|(name, ch)| async move { (*name, serving(ch.clone(), name).await) });
        let results = futures::future::join_all(checks).await;
        if shutdown.is_triggered() {
            return;
        }
        for (name, up) in results {
            // Never back to SERVING once the drain has begun (the server set NOT_SERVING).
            if shutdown.is_triggered() {
                return;
            }
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(name, status).await;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.wait() => return,
        }
    }
}
