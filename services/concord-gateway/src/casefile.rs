//! The case file of a person, composed from the registry, the facilities service and the
//! requests service, each asked as the partner (its principal and purpose forwarded), in
//! parallel, under one deadline. A part that does not come in time, or is refused, is left
//! out with its status; only a person who cannot be read fails the call.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::client::TracedChannel;
use concord_platform::http_json::code_name;
use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::gateway::v1 as pb;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as req;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::proxy::RETRY_AFTER;

/// Family members fetched at most.
pub const MAX_FAMILY: usize = 50;

/// Custody events fetched at most.
pub const MAX_EVENTS: i32 = 1000;

/// Requests fetched at most.
pub const MAX_REQUESTS: i32 = 100;

/// The channels to the services behind the gateway (connections reused across calls).
#[derive(Debug, Clone)]
pub struct Backends {
    /// The registry.
    pub registry: TracedChannel,
    /// The facilities service.
    pub facilities: TracedChannel,
    /// The requests service.
    pub requests: TracedChannel,
}

/// Who the gateway acts for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The partner, as authenticated.
    pub principal: Principal,
    /// Its stated purpose.
    pub purpose: String,
}

impl Caller {
    pub(crate) fn credentials(&self) -> HeaderCredentials {
        HeaderCredentials::new(self.principal.clone()).with_purpose(self.purpose.clone())
    }
}

/// A request carrying the time left before `deadline` (`grpc-timeout`), so each service
/// stops work the caller will not wait for.
pub(crate) fn within<T>(message: T, deadline: Instant) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    r
}

/// Awaits `call` until `deadline`: DEADLINE_EXCEEDED after it, whatever the service does.
async fn until<T>(
    deadline: Instant,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer within the call's deadline")),
    }
}

/// A read of `message` with `call` (a client method) by `deadline`, tried once more if the
/// service could not be reached (a read is safe to repeat) and time is left. A service that
/// answered UNAVAILABLE itself (shedding load) is not asked again.
pub(crate) async fn read<C, M, T, F, Fut>(
    deadline: Instant,
    client: C,
    message: M,
    call: F,
) -> Result<T, Status>
where
    C: Clone,
    M: Clone,
    F: Fn(C, tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let first = until(deadline, call(client.clone(), within(message.clone(), deadline))).await;
    match first {
        Err(s)
            if s.code() == Code::Unavailable
                && std::error::Error::source(&s).is_some()
                && deadline.saturating_duration_since(Instant::now()) > RETRY_AFTER * 4 =>
        {
            tokio::time::sleep(RETRY_AFTER).await;
            until(deadline, call(client, within(message, deadline))).await
        }
        r => r,
    }
}

pub(crate) fn part(part: pb::Part, service: &str, r: Result<(), &Status>) -> pb::PartStatus {
    let (code, message) = match r {
        Ok(()) => ("OK".to_string(), String::new()),
        Err(s) => (code_name(s.code()).to_string(), s.message().to_string()),
    };
    pb::PartStatus { part: part as i32, code, message, service: service.into() }
}

/// The case file of `person` ("persons/{id}") as `caller` may see it, by `deadline`.
pub async fn case_file(
    b: &Backends,
    caller: &Caller,
    person: &str,
    deadline: Instant,
) -> Result<pb::CaseFile, Status> {
    let reg_client =
        || RegistryServiceClient::with_interceptor(b.registry.clone(), caller.credentials());
    let (r1, r2, r3) = (reg_client(), reg_client(), reg_client());
    let requests =
        RequestsServiceClient::with_interceptor(b.requests.clone(), caller.credentials());
    let name = person.to_string();
    let (found, relationships, events, named_in) = tokio::join!(
        read(
            deadline,
            r1.clone(),
            reg::GetPersonRequest { name: name.clone() },
            |mut c, m| async move { c.get_person(m).await }
        ),
        read(
            deadline,
            r2.clone(),
            reg::ListRelationshipsRequest { parent: name.clone() },
            |mut c, m| async move { c.list_relationships(m).await }
        ),
        read(
            deadline,
            r3.clone(),
            reg::ListCustodyEventsRequest {
                parent: name.clone(),
                page_size: MAX_EVENTS,
                page_token: String::new()
            },
            |mut c, m| async move { c.list_custody_events(m).await }
        ),
        read(
            deadline,
            requests.clone(),
            req::ListRequestsRequest {
                person: name.clone(),
                page_size: MAX_REQUESTS,
                ..Default::default()
            },
            |mut c, m| async move { c.list_requests(m).await }
        ),
    );
    // Without the person there is no case file: the registry's answer is the call's.
    let found = found?;

    // Second round: what the first named.
    let relationships = relationships.map(|r| r.relationships);
    let related: Vec<String> = match &relationships {
        Ok(rs) => {
            let mut seen = BTreeSet::new();
            rs.iter()
                .map(|r| if r.person == name { r.related_person.clone() } else { r.person.clone() })
                .filter(|p| p != &name && seen.insert(p.clone()))
                .take(MAX_FAMILY)
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let family = futures::future::join_all(related.into_iter().map(|p| {
        let c = reg_client();
        async move {
            read(deadline, c.clone(), reg::GetPersonRequest { name: p }, |mut c, m| async move {
                c.get_person(m).await
            })
            .await
        }
    }));
    let facility = async {
        if found.facility_id.is_empty() {
            return Ok(None);
        }
        let c =
            FacilitiesServiceClient::with_interceptor(b.facilities.clone(), caller.credentials());
        let name = format!("facilities/{}", found.facility_id);
        read(deadline, c.clone(), fac::GetFacilityRequest { name }, |mut c, m| async move {
            c.get_facility(m).await
        })
        .await
        .map(Some)
    };
    let (family, facility) = tokio::join!(family, facility);

    // Relatives the caller may not see are simply not in its case file; any other failure
    // leaves the part incomplete.
    let mut members = Vec::new();
    let mut family_error = relationships.as_ref().err().cloned();
    for r in family {
        match r {
            Ok(p) => members.push(p),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => family_error = family_error.or(Some(s)),
        }
    }
    let parts = vec![
        part(pb::Part::Person, "registry", Ok(())),
        part(pb::Part::Family, "registry", family_error.as_ref().map_or(Ok(()), Err)),
        part(pb::Part::CustodyTimeline, "registry", events.as_ref().map(|_| ())),
        part(pb::Part::Facility, "facilities", facility.as_ref().map(|_| ())),
        part(pb::Part::Requests, "requests", named_in.as_ref().map(|_| ())),
    ];
    Ok(pb::CaseFile {
        name,
        person: Some(found),
        relationships: relationships.unwrap_or_default(),
        family: members,
        custody_events: events.map(|e| e.custody_events).unwrap_or_default(),
        facility: facility.ok().flatten(),
        requests: named_in.map(|r| r.requests).unwrap_or_default(),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A read whose first call fails with `first` (from the connection when `transport`).
    async fn calls(first: Code, transport: bool) -> (Result<u32, Status>, usize) {
        let n = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(1);
        let r = read(deadline, n.clone(), 7u32, move |n, m: tonic::Request<u32>| async move {
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut s = Status::new(first, "first");
                if transport {
                    s.set_source(Arc::new(std::io::Error::other("connection refused")));
                }
                Err(s)
            } else {
                Ok(tonic::Response::new(m.into_inner()))
            }
        })
        .await;
        (r, n.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_read_is_tried_again_only_when_the_service_was_unreachable() {
        let (r, n) = calls(Code::Unavailable, true).await;
        assert_eq!((r.unwrap(), n), (7, 2), "the connection failed");
        let (r, n) = calls(Code::Unavailable, false).await;
        assert_eq!((r.unwrap_err().code(), n), (Code::Unavailable, 1), "shed by the service");
        let (r, n) = calls(Code::NotFound, false).await;
        assert_eq!((r.unwrap_err().code(), n), (Code::NotFound, 1));
    }

    #[tokio::test]
    async fn a_late_answer_is_deadline_exceeded_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let started = Instant::now();
        let r: Result<u32, Status> = read(deadline, (), 1u32, |(), _m| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(tonic::Response::new(1u32))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
