//! The gateway's own RPCs.

use std::time::Duration;

use concord_platform::access;
use concord_platform::auth;
use concord_platform::error::{Error, Violations};
use concord_platform::fields::person_id;
use concord_proto::gateway::v1 as pb;
use concord_proto::gateway::v1::gateway_service_server::GatewayService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::casefile::{self, Backends, Caller};
use crate::dashboards;
use crate::subscribe;
use concord_platform::server::Shutdown;

/// The gateway service's gRPC name.
pub const NAME: &str = "concord.gateway.v1.GatewayService";

/// Error domain of the gateway (google.rpc.ErrorInfo.domain).
pub const DOMAIN: &str = "gateway.concord";

/// The deadline of a call that sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Kept from a deadline of `asked` to compose and send the answer: a twentieth of it, at
/// least 10 ms and at most 200 ms. A fixed 10 ms was too little on a loaded machine: a case
/// file with a part that never answers is composed at its deadline, and the partner's own
/// timer, started before the call left it, then fired first.
fn margin(asked: Duration) -> Duration {
    (asked / 20).clamp(Duration::from_millis(10), Duration::from_millis(200))
}

/// The gateway service.
#[derive(Debug, Clone)]
pub struct Gateway {
    backends: Backends,
    max_deadline: Duration,
    shutdown: Shutdown,
}

impl Gateway {
    /// Over `backends`; no call's deadline is longer than `max_deadline`; subscriptions end
    /// when `shutdown` begins.
    pub fn new(backends: Backends, max_deadline: Duration, shutdown: Shutdown) -> Self {
        Self { backends, max_deadline, shutdown }
    }

    /// The caller and the instant by which it wants its answer.
    fn caller<T>(&self, req: &Request<T>) -> Result<(Caller, Instant), Status> {
        let st = |e: Error| e.into_status(DOMAIN);
        let principal = auth::principal(req).map_err(st)?;
        let purpose = access::purpose(req.metadata()).map_err(st)?;
        let asked = concord_platform::client::grpc_timeout(req.metadata().as_ref())
            .unwrap_or(DEFAULT_DEADLINE)
            .min(self.max_deadline);
        let deadline = Instant::now() + asked.saturating_sub(margin(asked));
        Ok((Caller { principal, purpose }, deadline))
    }
}

type Subscription =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayService for Gateway {
    type SubscribeStream = Subscription;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let st = |e: Error| e.into_status(DOMAIN);
        let principal = auth::principal(&req).map_err(st)?;
        let purpose = access::purpose(req.metadata()).map_err(st)?;
        let caller = Caller { principal, purpose };
        let s =
            subscribe::subscribe(&self.backends, &caller, req.into_inner(), self.shutdown.clone())
                .await?;
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_case_file(
        &self,
        req: Request<pb::GetCaseFileRequest>,
    ) -> Result<Response<pb::CaseFile>, Status> {
        let (caller, deadline) = self.caller(&req)?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = person_id(&mut v, "person", &m.person);
        let id = v.finish(id).map_err(|e| e.into_status(DOMAIN))?.unwrap_or_default();
        let file = casefile::case_file(&self.backends, &caller, &format!("persons/{id}"), deadline)
            .await?;
        Ok(Response::new(file))
    }

    async fn get_state_dashboard(
        &self,
        req: Request<pb::GetStateDashboardRequest>,
    ) -> Result<Response<pb::StateDashboard>, Status> {
        let (caller, deadline) = self.caller(&req)?;
        let name = req.into_inner().name;
        let state = match name.strip_prefix("dashboards/states/") {
            Some(s) if concord_platform::auth::is_state_code(s) => s.to_string(),
            _ => {
                return Err(Error::invalid("name", "is not a name like \"dashboards/states/FR\"")
                    .into_status(DOMAIN))
            }
        };
        Ok(Response::new(dashboards::state(&self.backends, &caller, &state, deadline).await))
    }

    async fn get_facility_dashboard(
        &self,
        req: Request<pb::GetFacilityDashboardRequest>,
    ) -> Result<Response<pb::FacilityDashboard>, Status> {
        let (caller, deadline) = self.caller(&req)?;
        let name = req.into_inner().name;
        let facility = match name.strip_prefix("dashboards/facilities/") {
            Some(f) if concord_platform::auth::is_tag_safe(f) && !f.is_empty() => f.to_string(),
            _ => {
                return Err(Error::invalid(
                    "name",
                    "is not a name like \"dashboards/facilities/al-hol\"",
                )
                .into_status(DOMAIN))
            }
        };
        let d = dashboards::facility(&self.backends, &caller, &facility, deadline).await?;
        Ok(Response::new(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_grows_with_the_deadline_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(margin(ms(100)), ms(10));
        assert_eq!(margin(ms(800)), ms(40));
        assert_eq!(margin(DEFAULT_DEADLINE), ms(200));
        assert_eq!(margin(Duration::from_secs(30)), ms(200));
    }
}
