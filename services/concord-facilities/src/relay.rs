//! The registry relay: what movements and headcounts change about people, recorded in the
//! registry, which owns where a person is.
//!
//! Each step that the registry must record (a departure, an arrival, an abort on the road,
//! the missing of a headcount) commits, with the step itself, one `registry_updates` row per
//! person and an outbox event. The relay follows this service's own change stream from its
//! stored cursor; for each such event it sends the pending rows to the registry's custody
//! transitions, each with a request id made of the step and the person, so a call repeated
//! after a crash is answered from the registry's idempotency record and applied once. A row
//! ends APPLIED (with the person's version, which keeps an arrival's places reserved until
//! the occupancy projection has seen it) or REFUSED with the registry's reason. Transient
//! failures leave it PENDING and the event is retried with backoff; the cursor moves past an
//! event only when none of its rows is pending.

use concord_platform::link::{self, retry_forever, RegistryClient, ServiceLink};
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, SqlxResultExt};
use concord_platform::time::to_timestamp;
use concord_proto::r#type::v1::ChangeEvent;
use concord_proto::registry::v1 as reg;
use futures::StreamExt;
use sqlx::Row;

use crate::domain::{Step, UpdateStatus};

/// The relay's name in `consumer_cursors`.
const CONSUMER: &str = "relay.registry";

/// Purpose sent with every call (recorded in the registry's audit log).
pub const PURPOSE: &str = "custody changes of facility movements and headcounts";

/// Event types that carry registry updates, and the step of each.
const EVENTS: &[(&str, Step)] = &[
    ("movement.departed", Step::Depart),
    ("movement.arrived", Step::Arrive),
    ("movement.aborted", Step::Return),
    ("headcount.unaccounted_marked", Step::Unaccounted),
];

/// Registry calls made at once for one event.
const CONCURRENCY: usize = 8;

/// Follows this service's changes and records them in the registry until `shutdown`,
/// reconnecting with backoff after any failure.
pub async fn run(db: Db, link: ServiceLink, shutdown: Shutdown) {
    let types: Vec<&str> = EVENTS.iter().map(|(t, _)| *t).collect();
    retry_forever("registry relay", shutdown.clone(), || async {
        let client = link.registry(PURPOSE).await?;
        link::follow_own(&db, CONSUMER, &types, shutdown.clone(), |e| {
            let mut client = client.clone();
            let db = db.clone();
            async move { relay(&db, &mut client, &e).await }
        })
        .await
    })
    .await
}

/// What one pending row asks of the registry.
struct Pending {
    person: String,
    /// The person's departure on this movement was applied (movements only).
    departed: bool,
    reason: String,
    facility: String,
    section: String,
    occur_time: i64,
    reference: String,
}

/// Sends the pending rows of one event and records what came of each, with the cursor after
/// the event; a transient failure leaves its rows pending and the cursor where it was.
async fn relay(db: &Db, client: &mut RegistryClient, e: &ChangeEvent) -> anyhow::Result<()> {
    let Some((_, step)) = EVENTS.iter().find(|(t, _)| *t == e.event_type) else {
        return Ok(());
    };
    let subject = e.resource_name.clone();
    let pending = pending(db, &subject, *step).await?;
    let results = futures::stream::iter(pending.into_iter().map(|p| {
        let mut client = client.clone();
        let subject = subject.clone();
        async move {
            // An arrival or a return follows a departure the registry recorded; otherwise it
            // would put back in custody someone the registry knows elsewhere (missing, say).
            let r = if matches!(step, Step::Arrive | Step::Return) && !p.departed {
                Err(Outcome::Skip(
                    "the departure was not recorded in the registry, so neither is this".into(),
                ))
            } else {
                call(&mut client, &subject, *step, &p).await.map_err(Outcome::Failed)
            };
            (p.person, r)
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    // Rows written in one order (the person's), as every writer of them does.
    let mut results = results;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut transient = None;
    let mut tx = db.begin().await?;
    for (person, r) in results {
        let (status, error, version) = match r {
            Ok(p) => (UpdateStatus::Applied, String::new(), link::etag_version(&p.etag)),
            Err(Outcome::Skip(why)) => (UpdateStatus::Refused, why, 0),
            Err(Outcome::Failed(s)) if link::is_unreachable(&s) => {
                transient = Some(s);
                continue;
            }
            Err(Outcome::Failed(s)) if link::is_transient(&s) => {
                // Counted only while the row is pending: one that another replica's relay
                // recorded since it was read is left as that one recorded it.
                let attempts: Option<i64> = sqlx::query_scalar(
                    "UPDATE registry_updates SET attempts = attempts + 1 \
                     WHERE subject = $1 AND step = $2 AND person_id = $3 \
                     AND status = 'PENDING' RETURNING attempts",
                )
                .bind(&subject)
                .bind(step.as_str())
                .bind(&person)
                .fetch_optional(tx.conn())
                .await
                .db()?;
                let Some(attempts) = attempts else { continue };
                if attempts < link::MAX_ATTEMPTS {
                    transient = Some(s);
                    continue;
                }
                let why = format!("gave up after {attempts} attempts: {}", s.message());
                (UpdateStatus::Refused, why.chars().take(1000).collect(), 0)
            }
            Err(Outcome::Failed(s)) => {
                (UpdateStatus::Refused, s.message().chars().take(1000).collect(), 0)
            }
        };
        sqlx::query(
            "UPDATE registry_updates SET status = $1, error = $2, person_version = $3 \
             WHERE subject = $4 AND step = $5 AND person_id = $6 AND status = 'PENDING'",
        )
        .bind(status.as_str())
        .bind(&error)
        .bind(version)
        .bind(&subject)
        .bind(step.as_str())
        .bind(&person)
        .execute(tx.conn())
        .await
        .db()?;
    }
    if let Some(s) = transient {
        // What was recorded stays recorded; the event is read again after the backoff.
        tx.commit().await?;
        return Err(anyhow::anyhow!("{subject}: the registry answered {s}; will retry"));
    }
    link::save_cursor(&mut tx, CONSUMER, &e.cursor).await?;
    tx.commit().await?;
    Ok(())
}

/// Why a row was not applied.
enum Outcome {
    /// Not sent: an earlier step for the person was not recorded.
    Skip(String),
    /// The registry's answer.
    Failed(tonic::Status),
}

/// The request id of one step for one person: fixed length whatever the ids, so the
/// registry's limit (128) always holds, and the same for every resend.
fn request_id(subject: &str, step: Step, person: &str) -> String {
    let key = format!("{subject}\n{}\n{person}", step.as_str());
    format!("concord-facilities:{}", concord_platform::idempotency::fingerprint(key.as_bytes()))
}

/// The pending rows of `subject` for `step`, with what each call needs.
async fn pending(db: &Db, subject: &str, step: Step) -> anyhow::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT person_id, reason FROM registry_updates \
         WHERE subject = $1 AND step = $2 AND status = 'PENDING' ORDER BY person_id",
    )
    .bind(subject)
    .bind(step.as_str())
    .fetch_all(db.reader())
    .await
    .db()?;
    let mut out = Vec::with_capacity(rows.len());
    if let Some(id) = subject.strip_prefix("movements/") {
        let m = sqlx::query(
            "SELECT source_facility, destination_facility, depart_time, arrive_time, update_time \
             FROM movements WHERE id = $1",
        )
        .bind(id)
        .fetch_one(db.reader())
        .await
        .db()?;
        let source: String = m.try_get("source_facility").db()?;
        let destination: String = m.try_get("destination_facility").db()?;
        let entries = sqlx::query(
            "SELECT person_id, section_id, source_section FROM manifest_entries WHERE movement_id = $1",
        )
        .bind(id)
        .fetch_all(db.reader())
        .await
        .db()?;
        let departed: std::collections::BTreeSet<String> = sqlx::query_scalar(
            "SELECT person_id FROM registry_updates WHERE subject = $1 AND step = 'depart' AND status = 'APPLIED'",
        )
        .bind(subject)
        .fetch_all(db.reader())
        .await
        .db()?
        .into_iter()
        .collect();
        let mut sections = std::collections::BTreeMap::new();
        for r in entries {
            let p: String = r.try_get("person_id").db()?;
            let s: String = r.try_get("section_id").db()?;
            let from: String = r.try_get("source_section").db()?;
            sections.insert(p, (s, from));
        }
        let (facility, time) = match step {
            Step::Depart => (destination, m.try_get::<i64, _>("depart_time").db()?),
            Step::Arrive => (destination, m.try_get::<i64, _>("arrive_time").db()?),
            _ => (source, m.try_get::<i64, _>("update_time").db()?),
        };
        for r in rows {
            let person: String = r.try_get("person_id").db()?;
            let (to, from) = sections.get(&person).cloned().unwrap_or_default();
            out.push(Pending {
                section: if step == Step::Return { from } else { to },
                departed: departed.contains(&person),
                person,
                reason: r.try_get("reason").db()?,
                facility: facility.clone(),
                occur_time: time,
                reference: subject.to_string(),
            });
        }
    } else {
        let (facility, id) = subject
            .strip_prefix("facilities/")
            .and_then(|s| s.split_once("/headcounts/"))
            .ok_or_else(|| anyhow::anyhow!("registry update of unknown subject {subject}"))?;
        let h = sqlx::query(
            "SELECT incident, count_time FROM headcounts WHERE facility_id = $1 AND id = $2",
        )
        .bind(facility)
        .bind(id)
        .fetch_one(db.reader())
        .await
        .db()?;
        let incident: String = h.try_get("incident").db()?;
        let time: i64 = h.try_get("count_time").db()?;
        for r in rows {
            out.push(Pending {
                person: r.try_get("person_id").db()?,
                departed: false,
                reason: r.try_get("reason").db()?,
                facility: facility.to_string(),
                section: String::new(),
                occur_time: time,
                reference: if incident.is_empty() { subject.to_string() } else { incident.clone() },
            });
        }
    }
    Ok(out)
}

/// The registry call for one person.
async fn call(
    client: &mut RegistryClient,
    subject: &str,
    step: Step,
    p: &Pending,
) -> Result<reg::Person, tonic::Status> {
    let name = format!("persons/{}", p.person);
    let transition = Some(reg::CustodyTransition {
        reason: p.reason.clone(),
        source: format!("concord-facilities, {subject}"),
        occur_time: Some(to_timestamp(p.occur_time)),
        etag: String::new(),
        request_id: request_id(subject, step, &p.person),
    });
    let r = match step {
        Step::Depart => {
            client
                .start_transfer(reg::StartTransferRequest {
                    name,
                    destination_facility_id: p.facility.clone(),
                    transition,
                })
                .await
        }
        Step::Arrive | Step::Return => {
            client
                .return_to_custody(reg::ReturnToCustodyRequest {
                    name,
                    facility_id: p.facility.clone(),
                    section_id: p.section.clone(),
                    transition,
                })
                .await
        }
        Step::Unaccounted => {
            client
                .mark_unaccounted(reg::MarkUnaccountedRequest {
                    name,
                    incident_id: p.reference.clone(),
                    transition,
                })
                .await
        }
    };
    r.map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_fit_the_registry_whatever_the_ids_and_differ_per_step_and_person() {
        let long = format!("facilities/{}/headcounts/{}", "f".repeat(63), uuid::Uuid::now_v7());
        let a = request_id(&long, Step::Unaccounted, "0192d6c4-9a2e-7c3b-8f21-3c4d5e6f7a8b");
        assert!(a.len() <= 128, "{}", a.len());
        assert!(concord_platform::idempotency::validate("request_id", &a).is_ok());
        assert_eq!(a, request_id(&long, Step::Unaccounted, "0192d6c4-9a2e-7c3b-8f21-3c4d5e6f7a8b"));
        assert_ne!(a, request_id(&long, Step::Unaccounted, "another"));
        assert_ne!(
            request_id("movements/m", Step::Depart, "p"),
            request_id("movements/m", Step::Arrive, "p")
        );
    }
}
