//! Subscriptions: the registry's and the requests service's change streams, each opened as
//! the partner (so each service scopes it: the partner's nationals, its requests), merged
//! into one, with a cursor that covers both. The stream ends with UNAVAILABLE when either
//! service ends its own (to renew the partner's authorization, or when it stops), and when
//! the gateway shuts down; the partner resumes from the last cursor and loses nothing.

use base64::Engine;
use concord_platform::server::Shutdown;
use concord_proto::gateway::v1 as pb;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as req;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::casefile::{Backends, Caller};

/// Where a subscription is in each service's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The registry's cursor (empty: its start).
    #[serde(default, rename = "g")]
    pub registry: String,
    /// The requests service's cursor (empty: its start).
    #[serde(default, rename = "q")]
    pub requests: String,
}

impl Position {
    /// The opaque cursor partners hold.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A cursor this gateway gave (empty: from the start).
    pub fn decode(cursor: &str) -> Result<Self, Status> {
        if cursor.is_empty() {
            return Ok(Self::default());
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "cursor: not a cursor of a subscription (pass back one an event carried)",
                )
            })
    }
}

/// The merged stream of `caller`'s changes from `m.cursor`.
pub async fn subscribe(
    b: &Backends,
    caller: &Caller,
    m: pb::SubscribeRequest,
    mut shutdown: Shutdown,
) -> Result<impl Stream<Item = Result<pb::SubscribeResponse, Status>>, Status> {
    let mut pos = Position::decode(&m.cursor)?;
    let at_end = m.start_at_end && m.cursor.is_empty();
    let mut registry =
        RegistryServiceClient::with_interceptor(b.registry.clone(), caller.credentials());
    let mut requests =
        RequestsServiceClient::with_interceptor(b.requests.clone(), caller.credentials());
    // Both are opened before anything is sent: a refusal of either is the call's.
    let (r, q) = tokio::join!(
        registry.watch_changes(reg::WatchChangesRequest {
            cursor: pos.registry.clone(),
            start_at_end: at_end,
            event_types: m.event_types.clone(),
        }),
        requests.watch_changes(req::WatchChangesRequest {
            cursor: pos.requests.clone(),
            start_at_end: at_end,
            event_types: m.event_types,
        }),
    );
    let mut r = r?.into_inner();
    let mut q = q?.into_inner();
    Ok(async_stream::stream! {
        loop {
            let (service, item) = tokio::select! {
                x = r.next() => ("registry", x.map(|x| x.map(|m| m.event))),
                x = q.next() => ("requests", x.map(|x| x.map(|m| m.event))),
                () = shutdown.wait() => {
                    yield Err(Status::unavailable("the gateway is shutting down; resume from the last cursor"));
                    break;
                }
            };
            match item {
                Some(Ok(Some(mut event))) => {
                    if service == "registry" {
                        pos.registry = std::mem::take(&mut event.cursor);
                    } else {
                        pos.requests = std::mem::take(&mut event.cursor);
                    }
                    event.cursor = pos.encode();
                    yield Ok(pb::SubscribeResponse { event: Some(event), service: service.into() });
                }
                Some(Ok(None)) => {}
                Some(Err(s)) => {
                    yield Err(s);
                    break;
                }
                None => {
                    yield Err(Status::unavailable(format!(
                        "the {service} service ended its stream; resume from the last cursor"
                    )));
                    break;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let p = Position { registry: "42".into(), requests: "7".into() };
        assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        assert_eq!(Position::decode("").unwrap(), Position::default());
        let err = Position::decode("not-a-cursor").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
