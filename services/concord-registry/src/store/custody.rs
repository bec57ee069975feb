//! Custody transitions: checked against the state machine inside the transaction that applies
//! them, recorded in the timeline, and announced in the outbox, all in one commit.

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result};
use concord_platform::idempotency;
use concord_platform::outbox;
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::now_micros;
use sqlx::Row;

use super::persons::check_version;
use super::{expect_one_row, fetch_person, Store};
use crate::domain::{CustodyEvent, CustodyStatus, Person, Transition, TransitionRequest};
use crate::events;

impl Store {
    /// Applies a custody transition.
    pub async fn transition(&self, access: &Access, req: TransitionRequest) -> Result<Person> {
        let scope = access.write_scope.clone();
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &req.request_id {
            let method = req.transition.method();
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, method, fp).await?
            {
                drop(tx);
                return self.get_person(&scope, &req.person_id).await;
            }
        }
        let mut person = fetch_person(tx.dialect(), tx.conn(), &scope, &req.person_id).await?;
        check_version(&person, req.expected_version)?;
        let from = person.custody_status;
        let Some(to) = req.transition.apply(from) else {
            return Err(Error::FailedPrecondition {
                reason: "INVALID_CUSTODY_TRANSITION",
                message: format!(
                    "{} is {}; {} applies only from {}",
                    person.name(),
                    from,
                    req.transition.method(),
                    req.transition.allowed_from().join(", ")
                ),
            });
        };
        person.custody_status = to;
        match req.transition {
            Transition::Admit | Transition::ReturnToCustody | Transition::AdmitToRehabilitation => {
                person.facility_id = req.facility_id.clone();
                person.section_id = req.section_id.clone();
            }
            Transition::Hospitalise if !req.facility_id.is_empty() => {
                person.facility_id = req.facility_id.clone();
                person.section_id.clear();
            }
            Transition::HandOver => {
                person.receiving_state = req.receiving_state.clone();
                person.disposition = req.disposition;
                person.facility_id.clear();
                person.section_id.clear();
            }
            Transition::Escape
            | Transition::Release
            | Transition::Death
            | Transition::MarkUnaccounted => {
                // The facility stays: it is where the person was last held, which headcount
                // reconciliation and recapture need.
            }
            _ => {}
        }
        let now = now_micros();
        person.version += 1;
        person.update_time = now;
        let updated = sqlx::query(
            "UPDATE persons SET custody_status = $1, facility_id = $2, section_id = $3, receiving_state = $4, \
             disposition = $5, version = $6, update_time = $7 WHERE id = $8 AND version = $9",
        )
        .bind(to.as_str())
        .bind(&person.facility_id)
        .bind(&person.section_id)
        .bind(&person.receiving_state)
        .bind(person.disposition.map_or("", |d| d.as_str()))
        .bind(person.version)
        .bind(now)
        .bind(&person.id)
        .bind(person.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, &person.name())?;
        let reference = if req.transition == Transition::StartTransfer {
            req.facility_id.clone()
        } else {
            req.reference.clone()
        };
        sqlx::query(
            "INSERT INTO custody_events (id, person_id, from_status, to_status, facility_id, reason, source, reference, \
             occur_time, record_time, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&person.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(&person.facility_id)
        .bind(&req.reason)
        .bind(&req.source)
        .bind(&reference)
        .bind(req.occur_time)
        .bind(now)
        .bind(&access.principal.agency)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &req.request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &person.name()).await?;
        }
        outbox::append(&mut tx, events::person("person.custody_changed", &person)).await?;
        audit::append(&mut tx, &access.entry(person.name(), "custody", "OK")).await?;
        tx.commit().await?;
        self.cached(&person);
        Ok(person)
    }

    /// The custody timeline of a person in scope, oldest first, after the `after` id.
    pub async fn custody_events(
        &self,
        scope: &Scope,
        person_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CustodyEvent>> {
        self.visible(scope, person_id).await?;
        let rows = sqlx::query(
            "SELECT id, person_id, from_status, to_status, facility_id, reason, source, reference, occur_time, record_time, recorded_by \
             FROM custody_events WHERE person_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(person_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.reader())
        .await
        .db()?;
        rows.iter()
            .map(|r| {
                let status = |c: &str| -> Result<CustodyStatus> {
                    let s: String = r.try_get(c).db()?;
                    CustodyStatus::parse(&s)
                        .ok_or_else(|| Error::internal(anyhow::anyhow!("stored status '{s}'")))
                };
                Ok(CustodyEvent {
                    id: r.try_get("id").db()?,
                    person_id: r.try_get("person_id").db()?,
                    from_status: status("from_status")?,
                    to_status: status("to_status")?,
                    facility_id: r.try_get("facility_id").db()?,
                    reason: r.try_get("reason").db()?,
                    source: r.try_get("source").db()?,
                    reference: r.try_get("reference").db()?,
                    occur_time: r.try_get("occur_time").db()?,
                    record_time: r.try_get("record_time").db()?,
                    recorded_by: r.try_get("recorded_by").db()?,
                })
            })
            .collect()
    }
}
