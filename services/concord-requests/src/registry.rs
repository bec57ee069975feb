//! What the requests service knows of the registry, which owns the people:
//! - each subject is checked when a request is created and when it is submitted, by asking
//!   the registry for the person as the caller (this service forwards the caller's
//!   principal and purpose): a person the caller's state may not see (not its national, and
//!   not shared with it by an agreement) is refused, and so is one not held in custody for a
//!   request that needs them held;
//! - a projection of who is held now, per nationality, for the statistics, followed from the
//!   registry's change stream (as the facilities' occupancy is).

use concord_platform::access::Access;
use concord_platform::client::TracedChannel;
use concord_platform::error::{Error, Result, Violations};
use concord_platform::link::{self, retry_forever, ServiceLink};
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, SqlxResultExt};
use concord_proto::r#type::v1::ChangeEvent;
use concord_proto::registry::v1 as reg;
use futures::StreamExt;
use prost::Message;

use crate::domain::{RequestType, Subject};

/// The projection's name in `consumer_cursors`.
const CONSUMER: &str = "registry.persons";

/// Purpose of the projection's stream (recorded in the registry's audit log).
pub const PURPOSE: &str = "statistics of nationals held, for diplomatic requests";

/// Custody statuses in which a person is held (moved between facilities included).
const HELD: &[reg::CustodyStatus] = &[
    reg::CustodyStatus::InCustody,
    reg::CustodyStatus::Hospitalised,
    reg::CustodyStatus::InRehabilitation,
    reg::CustodyStatus::InTransfer,
];

/// How long one subject's check may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registry lookups made at once for one request.
const CONCURRENCY: usize = 8;

/// Whether requests of `kind` are about people held now: those that move people, and
/// consular access. Identity verification, evidence sharing and family tracing may be about
/// anyone the state may see.
pub fn needs_custody(kind: RequestType) -> bool {
    kind.moves_people() || kind == RequestType::ConsularAccess
}

/// The service's view of the registry.
#[derive(Debug, Clone)]
pub struct Registry {
    link: ServiceLink,
    channel: TracedChannel,
}

impl Registry {
    /// Over `link`; connects on first use.
    pub fn new(link: ServiceLink) -> anyhow::Result<Self> {
        let channel = link.channel()?;
        Ok(Self { link, channel })
    }

    /// The link, for the relay and the projection.
    pub fn link(&self) -> &ServiceLink {
        &self.link
    }

    /// Checks each of `subjects` as the caller: INVALID_ARGUMENT naming every subject at
    /// fault (in the field `field(i)`); UNAVAILABLE when the registry cannot answer in time,
    /// INTERNAL when it refuses the service itself (a configuration to fix); nothing is
    /// stored in either case.
    pub async fn check_subjects(
        &self,
        access: &Access,
        kind: RequestType,
        state: &str,
        subjects: &[Subject],
        field: impl Fn(usize) -> String,
    ) -> Result<()> {
        let names: Vec<(usize, String)> = subjects
            .iter()
            .enumerate()
            .map(|(i, s)| (i, format!("persons/{}", s.person_id)))
            .collect();
        let answers = futures::stream::iter(names.into_iter().map(|(i, name)| {
            let mut client = self.link.registry_forwarding(
                self.channel.clone(),
                &access.principal,
                &access.purpose,
            );
            async move {
                let mut req = tonic::Request::new(reg::GetPersonRequest { name: name.clone() });
                req.set_timeout(CHECK_TIMEOUT);
                let r = match tokio::time::timeout(CHECK_TIMEOUT, client.get_person(req)).await {
                    Ok(r) => r.map(tonic::Response::into_inner),
                    Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
                };
                (i, name, r)
            }
        }))
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut v = Violations::new();
        for (i, name, r) in answers {
            let field = field(i);
            match r {
                Ok(p) if !p.merged_into.is_empty() => v.add(
                    &field,
                    format!("{name} was merged into {}; name that record", p.merged_into),
                ),
                Ok(p) if needs_custody(kind) => {
                    let status = reg::CustodyStatus::try_from(p.custody_status)
                        .unwrap_or(reg::CustodyStatus::Unspecified);
                    if p.redacted_fields.iter().any(|f| f == "custody_status") {
                        v.add(
                            &field,
                            format!(
                                "{name}: {state} may not see where the person is held, so a {kind} \
                                 request cannot be checked"
                            ),
                        );
                    } else if !HELD.contains(&status) {
                        v.add(
                            &field,
                            format!(
                                "{name} is not held in custody (the registry has {}); a {kind} \
                                 request is about people held",
                                status.as_str_name()
                            ),
                        );
                    }
                }
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => v.add(
                    &field,
                    format!(
                        "{name} is not a person {state} may see in the registry: not its \
                         national, and not shared with it by an agreement (or no such person)"
                    ),
                ),
                Err(s) if link::is_unreachable(&s) => {
                    return Err(Error::Unavailable(format!(
                        "the registry could not check {name}: {}; nothing was stored, retry",
                        s.message()
                    )))
                }
                Err(s) => {
                    tracing::error!(person = %name, code = ?s.code(), error = %s.message(), "the registry refused a subject check");
                    return Err(Error::internal(anyhow::anyhow!(
                        "the registry refused to check {name} for this service ({:?}); nothing was stored",
                        s.code()
                    )));
                }
            }
        }
        v.finish(())
    }
}

/// Applies a batch of registry events (each a person's snapshot) and the cursor after them,
/// in one transaction; a snapshot older than one applied changes nothing.
pub async fn apply(db: &Db, events: &[ChangeEvent]) -> Result<()> {
    let Some(last) = events.last() else { return Ok(()) };
    let mut tx = db.begin().await?;
    for e in events.iter().filter(|e| !e.bookmark) {
        let Some(any) = e.resource.as_ref() else { continue };
        let p = reg::Person::decode(any.value.as_slice()).map_err(Error::internal)?;
        let id = e.resource_name.trim_start_matches("persons/");
        if !link::claim_version(&mut tx, id, link::etag_version(&p.etag)).await? {
            continue;
        }
        sqlx::query("DELETE FROM held_nationals WHERE person_id = $1")
            .bind(id)
            .execute(tx.conn())
            .await
            .db()?;
        let held = reg::CustodyStatus::try_from(p.custody_status).is_ok_and(|s| HELD.contains(&s))
            && p.merged_into.is_empty();
        if !held {
            continue;
        }
        let mut states: Vec<&str> = p
            .nationalities
            .iter()
            .filter(|n| n.revoke_time.is_none())
            .map(|n| n.state.as_str())
            .collect();
        states.sort_unstable();
        states.dedup();
        for s in states {
            sqlx::query("INSERT INTO held_nationals (person_id, state) VALUES ($1, $2)")
                .bind(id)
                .bind(s)
                .execute(tx.conn())
                .await
                .db()?;
        }
    }
    link::save_cursor(&mut tx, CONSUMER, &last.cursor).await?;
    tx.commit().await
}

/// Follows the registry until `shutdown`, reconnecting with backoff after any failure.
pub async fn follow(db: Db, link: ServiceLink, shutdown: Shutdown) {
    retry_forever("requests: registry projection", shutdown.clone(), || {
        link::follow_registry(&db, &link, CONSUMER, PURPOSE, |events| {
            let db = db.clone();
            async move { apply(&db, &events).await }
        })
    })
    .await
}
