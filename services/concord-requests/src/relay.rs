//! The hand-over relay: when a request reaches HANDED_OVER, the registry records each
//! accepted subject as HANDED_OVER to the receiving state, with their disposition and the
//! request's name.
//!
//! The transition that reaches HANDED_OVER marks those subjects PENDING and writes the
//! `request.handed_over` event in one commit. The relay follows this service's own change
//! log from its stored cursor; for each such event it calls the registry's RecordHandOver for
//! the pending subjects, each with a request id made of the request and the person, so a
//! call repeated after a crash is answered from the registry's idempotency record and
//! applied once. A subject ends APPLIED, or REFUSED with the registry's reason (the person
//! was no longer in custody, say). An unreachable registry leaves it PENDING however long;
//! other failures are tried a few times. The cursor moves past an event only when none of
//! its subjects is pending, in the transaction that records the last of them.

use concord_platform::link::{self, retry_forever, RegistryClient, ServiceLink};
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, SqlxResultExt};
use concord_platform::time::to_timestamp;
use concord_proto::r#type::v1::ChangeEvent;
use concord_proto::registry::v1 as reg;
use futures::StreamExt;
use sqlx::Row;

use crate::domain::{Disposition, RegistryRecord};

/// The relay's name in `consumer_cursors`.
const CONSUMER: &str = "relay.registry";

/// Purpose sent with every call (recorded in the registry's audit log).
pub const PURPOSE: &str = "hand-overs under diplomatic requests";

/// The event that carries hand-overs.
const HANDED_OVER: &str = "request.handed_over";

/// Registry calls made at once for one request.
const CONCURRENCY: usize = 8;

/// Follows this service's changes and records hand-overs in the registry until `shutdown`.
pub async fn run(db: Db, link: ServiceLink, shutdown: Shutdown) {
    retry_forever("requests: registry relay", shutdown.clone(), || async {
        let client = link.registry(PURPOSE).await?;
        link::follow_own(&db, CONSUMER, &[HANDED_OVER], shutdown.clone(), |e| {
            let mut client = client.clone();
            let db = db.clone();
            async move { relay(&db, &mut client, &e).await }
        })
        .await
    })
    .await
}

/// One subject to record.
struct Pending {
    person: String,
    disposition: Option<Disposition>,
}

/// Records the pending subjects of one handed-over request, and the cursor after its event
/// when none is left pending.
async fn relay(db: &Db, client: &mut RegistryClient, e: &ChangeEvent) -> anyhow::Result<()> {
    let id = e.resource_name.trim_start_matches("requests/").to_string();
    let r = sqlx::query("SELECT receiving_state, protocol FROM requests WHERE id = $1")
        .bind(&id)
        .fetch_one(db.reader())
        .await
        .db()?;
    let receiving: String = r.try_get("receiving_state").db()?;
    let protocol: String = r.try_get("protocol").db()?;
    let signed: Option<crate::store::Protocol> = serde_json::from_str(&protocol).ok();
    let rows = sqlx::query(
        "SELECT person_id, disposition FROM subjects \
         WHERE request_id = $1 AND registry_status = 'PENDING' ORDER BY person_id",
    )
    .bind(&id)
    .fetch_all(db.reader())
    .await
    .db()?;
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let d: String = row.try_get("disposition").db()?;
        pending.push(Pending {
            person: row.try_get("person_id").db()?,
            disposition: Disposition::parse(&d),
        });
    }
    let name = e.resource_name.clone();
    let results = futures::stream::iter(pending.into_iter().map(|p| {
        let mut client = client.clone();
        // The registry takes a short source (200 characters): the protocol's reference,
        // up to 200 itself, goes in the reason.
        let transition = reg::CustodyTransition {
            reason: format!(
                "handed over to {receiving} under {name}{}",
                signed
                    .as_ref()
                    .map(|s| format!(", signed protocol {}", s.document))
                    .unwrap_or_default()
            ),
            source: format!("concord-requests, {name}"),
            occur_time: signed.as_ref().map(|s| to_timestamp(s.sign_time)),
            etag: String::new(),
            request_id: request_id(&name, &p.person),
        };
        let call = reg::RecordHandOverRequest {
            name: format!("persons/{}", p.person),
            receiving_state: receiving.clone(),
            disposition: disposition(p.disposition) as i32,
            diplomatic_request: name.clone(),
            transition: Some(transition),
        };
        async move { (p.person, client.record_hand_over(call).await) }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    // Rows written in one order (the person's), as every writer of subjects does.
    let mut results = results;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut retry = None;
    let mut recorded = false;
    let mut tx = db.begin().await?;
    // The request's row first, as every change of it takes it.
    concord_platform::storage::lock_rows(&mut tx, "requests", &[&id]).await?;
    for (person, r) in results {
        let (status, error) = match r {
            Ok(_) => (RegistryRecord::Applied, String::new()),
            Err(s) if link::is_unreachable(&s) => {
                retry = Some(s);
                continue;
            }
            Err(s) if link::is_transient(&s) => {
                // Counted only while the subject is pending: one that another replica's
                // relay recorded since it was read is left as that one recorded it.
                let attempts: Option<i64> = sqlx::query_scalar(
                    "UPDATE subjects SET registry_attempts = registry_attempts + 1 \
                     WHERE request_id = $1 AND person_id = $2 AND registry_status = 'PENDING' \
                     RETURNING registry_attempts",
                )
                .bind(&id)
                .bind(&person)
                .fetch_optional(tx.conn())
                .await
                .db()?;
                let Some(attempts) = attempts else { continue };
                if attempts < link::MAX_ATTEMPTS {
                    retry = Some(s);
                    continue;
                }
                tracing::error!(request = %name, %person, code = ?s.code(), error = %s.message(), attempts, "registry relay: giving up");
                (RegistryRecord::Refused, refused(&s))
            }
            Err(s) => {
                tracing::warn!(request = %name, %person, code = ?s.code(), error = %s.message(), "registry relay: refused");
                (RegistryRecord::Refused, refused(&s))
            }
        };
        // Another replica's relay may have recorded this subject since it was read: then
        // nothing changes here, and no second `request.registry_recorded` is written.
        let changed = sqlx::query(
            "UPDATE subjects SET registry_status = $1, registry_error = $2 \
             WHERE request_id = $3 AND person_id = $4 AND registry_status = 'PENDING'",
        )
        .bind(status.as_str())
        .bind(&error)
        .bind(&id)
        .bind(&person)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        recorded |= changed > 0;
    }
    if recorded {
        crate::store::Store::new(db.clone()).registry_recorded(&mut tx, &id).await?;
    }
    if let Some(s) = retry {
        // What was recorded stays recorded; the event is read again after the backoff.
        tx.commit().await?;
        return Err(anyhow::anyhow!("{name}: the registry answered {s}; will retry"));
    }
    link::save_cursor(&mut tx, CONSUMER, &e.cursor).await?;
    tx.commit().await?;
    Ok(())
}

/// What the parties see of a refusal: its code, not the registry's message, which was written
/// for this service's own (see-all) identity and may say more about the person than a party
/// may know. The message is in the service's log.
fn refused(s: &tonic::Status) -> String {
    format!(
        "{}: the registry did not record the hand-over; the custodial authority can read why in the registry's custody timeline",
        concord_platform::http_json::code_name(s.code())
    )
}

fn disposition(d: Option<Disposition>) -> reg::Disposition {
    match d {
        Some(Disposition::ProsecutionAtHome) => reg::Disposition::ProsecutionAtHome,
        Some(Disposition::Rehabilitation) => reg::Disposition::Rehabilitation,
        Some(Disposition::Reintegration) => reg::Disposition::Reintegration,
        Some(Disposition::TrialInThirdState) => reg::Disposition::TrialInThirdState,
        None => reg::Disposition::Unspecified,
    }
}

/// The request id of one subject's hand-over: fixed length whatever the ids, the same for
/// every resend.
fn request_id(request: &str, person: &str) -> String {
    let key = format!("{request}\nhand-over\n{person}");
    format!("concord-requests:{}", concord_platform::idempotency::fingerprint(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_fit_the_registry_and_differ_per_person() {
        let a = request_id(&format!("requests/{}", uuid::Uuid::now_v7()), "p1");
        assert!(concord_platform::idempotency::validate("request_id", &a).is_ok());
        assert_eq!(a.len(), request_id("requests/x", "p2").len());
        assert_ne!(request_id("requests/x", "p1"), request_id("requests/x", "p2"));
    }
}
