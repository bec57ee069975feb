//! Headcounts: a roll call reconciled against the registry (as projected here), and the one
//! action that marks the missing UNACCOUNTED in the registry.

use std::collections::BTreeSet;

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::error::{Error, Result};
use concord_platform::idempotency;
use concord_platform::outbox;
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::now_micros;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::movements::{check_runs, placements, runs};
use super::{check_open, fetch, Store};
use crate::domain::*;

/// Type URL of event payloads about headcounts.
pub const HEADCOUNT_TYPE_URL: &str = "type.googleapis.com/concord.facilities.v1.Headcount";

const COLUMNS: &str =
    "id, facility_id, reporter, incident, count_time, expected_count, counted, missing, \
                       unrecorded, unaccounted_mark_time, recorded_by, create_time";

/// A roll call as reported.
#[derive(Debug, Clone)]
pub struct NewHeadcount {
    /// Facility id.
    pub facility_id: String,
    /// Person ids counted present, each once.
    pub counted: Vec<String>,
    /// Who counted.
    pub reporter: String,
    /// Micros.
    pub count_time: i64,
    /// Incident name, or empty.
    pub incident: String,
}

fn list(r: &AnyRow, col: &str) -> Result<Vec<String>> {
    let s: String = r.try_get(col).db()?;
    serde_json::from_str(&s).map_err(Error::internal)
}

fn from_row(r: &AnyRow, with_lists: bool) -> Result<Headcount> {
    let lists = |col: &str| if with_lists { list(r, col) } else { Ok(Vec::new()) };
    Ok(Headcount {
        id: r.try_get("id").db()?,
        facility_id: r.try_get("facility_id").db()?,
        reporter: r.try_get("reporter").db()?,
        incident: r.try_get("incident").db()?,
        count_time: r.try_get("count_time").db()?,
        expected_count: r.try_get("expected_count").db()?,
        counted: lists("counted")?,
        missing: lists("missing")?,
        unrecorded: lists("unrecorded")?,
        unaccounted_mark_time: r.try_get("unaccounted_mark_time").db()?,
        recorded_by: r.try_get("recorded_by").db()?,
        create_time: r.try_get("create_time").db()?,
        updates: Vec::new(),
    })
}

fn event(event_type: &'static str, h: &Headcount) -> outbox::NewEvent {
    use prost::Message;
    outbox::NewEvent {
        event_type,
        resource_name: h.name(),
        scope_tags: Some(format!("|@{}|", h.facility_id)),
        payload: prost_types::Any {
            type_url: HEADCOUNT_TYPE_URL.into(),
            value: crate::grpc::headcount_out(h).encode_to_vec(),
        },
    }
}

impl Store {
    /// Records a roll call at a facility the caller runs, reconciled against the people the
    /// registry records held there.
    pub async fn record_headcount(
        &self,
        access: &Access,
        new: NewHeadcount,
        request_id: Option<(String, String)>,
    ) -> Result<Headcount> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "RecordHeadcount", fp)
                    .await?
            {
                drop(tx);
                let id = name.rsplit('/').next().unwrap_or_default().to_string();
                return self.headcount(access, &new.facility_id, &id).await;
            }
        }
        let f = fetch(&mut tx, &new.facility_id).await?;
        check_runs(access, &f)?;
        check_open(&f)?;
        if !new.incident.is_empty() {
            let id = new.incident.rsplit('/').next().unwrap_or_default();
            let found: Option<String> =
                sqlx::query_scalar("SELECT id FROM incidents WHERE facility_id = $1 AND id = $2")
                    .bind(&f.id)
                    .bind(id)
                    .fetch_optional(tx.conn())
                    .await
                    .db()?;
            if found.is_none() {
                return Err(Error::invalid(
                    "headcount.incident",
                    format!("{} is not an incident of {}", new.incident, f.name()),
                ));
            }
        }
        let expected: BTreeSet<String> =
            placements(&mut tx, Some(&f.id), &[]).await?.into_iter().map(|p| p.person_id).collect();
        let counted: BTreeSet<String> = new.counted.iter().cloned().collect();
        let now = now_micros();
        let h = Headcount {
            id: uuid::Uuid::now_v7().to_string(),
            facility_id: f.id.clone(),
            reporter: new.reporter,
            incident: new.incident,
            count_time: new.count_time,
            expected_count: expected.len() as i64,
            missing: expected.difference(&counted).cloned().collect(),
            unrecorded: counted.difference(&expected).cloned().collect(),
            counted: counted.into_iter().collect(),
            unaccounted_mark_time: 0,
            recorded_by: access.principal.agency.clone(),
            create_time: now,
            updates: Vec::new(),
        };
        let json = |v: &Vec<String>| serde_json::to_string(v).map_err(Error::internal);
        sqlx::query(&format!(
            "INSERT INTO headcounts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&h.id)
        .bind(&h.facility_id)
        .bind(&h.reporter)
        .bind(&h.incident)
        .bind(h.count_time)
        .bind(h.expected_count)
        .bind(json(&h.counted)?)
        .bind(json(&h.missing)?)
        .bind(json(&h.unrecorded)?)
        .bind(h.unaccounted_mark_time)
        .bind(&h.recorded_by)
        .bind(h.create_time)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &h.name()).await?;
        }
        audit::append(&mut tx, &access.entry(h.name(), "counted", "OK")).await?;
        outbox::append(&mut tx, event("headcount.recorded", &h)).await?;
        tx.commit().await?;
        Ok(h)
    }

    /// One headcount of a facility the caller may see, with its lists and, once the missing
    /// were marked, what the registry made of each.
    pub async fn headcount(&self, access: &Access, facility: &str, id: &str) -> Result<Headcount> {
        let name = format!("facilities/{facility}/headcounts/{id}");
        match self.get(facility).await {
            Ok(f) if runs(access, &f) => {}
            _ => return Err(Error::NotFound(name)),
        }
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM headcounts WHERE facility_id = $1 AND id = $2"
        ))
        .bind(facility)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await
        .db()?;
        let mut h = match row {
            Some(r) => from_row(&r, true)?,
            None => return Err(Error::NotFound(name)),
        };
        let rows = sqlx::query(
            "SELECT person_id, status, error FROM registry_updates WHERE subject = $1 AND step = $2 \
             ORDER BY person_id",
        )
        .bind(h.name())
        .bind(Step::Unaccounted.as_str())
        .fetch_all(self.db.reader())
        .await
        .db()?;
        for r in rows {
            let status: String = r.try_get("status").db()?;
            if let Some(s) = UpdateStatus::parse(&status) {
                h.updates.push((r.try_get("person_id").db()?, s, r.try_get("error").db()?));
            }
        }
        Ok(h)
    }

    /// A facility's headcounts, newest first, before `before`, without their lists.
    pub async fn headcounts(
        &self,
        access: &Access,
        facility: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Headcount>> {
        check_runs(access, &self.get(facility).await?)?;
        let mut sql = concord_platform::sql::Sql::new(format!(
            "SELECT {COLUMNS} FROM headcounts WHERE facility_id = "
        ));
        sql.bind_text(facility);
        if let Some(b) = before {
            sql.push(" AND id < ").bind_text(b);
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(|r| from_row(r, false)).collect()
    }

    /// Marks everyone the facility's latest headcount found missing UNACCOUNTED in the
    /// registry: one registry update per person, carried out by the relay.
    pub async fn mark_missing_unaccounted(
        &self,
        access: &Access,
        facility: &str,
        id: &str,
        reason: &str,
        request_id: Option<(String, String)>,
    ) -> Result<Headcount> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) = idempotency::claim(
                &mut tx,
                &access.principal.agency,
                rid,
                "MarkMissingUnaccounted",
                fp,
            )
            .await?
            {
                drop(tx);
                return self.headcount(access, facility, id).await;
            }
        }
        let f = fetch(&mut tx, facility).await?;
        check_runs(access, &f)?;
        check_open(&f)?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM headcounts WHERE facility_id = $1 AND id = $2"
        ))
        .bind(facility)
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .db()?;
        let mut h = match row {
            Some(r) => from_row(&r, true)?,
            None => return Err(Error::NotFound(format!("facilities/{facility}/headcounts/{id}"))),
        };
        if h.unaccounted_mark_time != 0 {
            return Err(Error::FailedPrecondition {
                reason: "ALREADY_MARKED",
                message: format!("the missing of {} were marked already", h.name()),
            });
        }
        let latest: Option<String> = sqlx::query_scalar(
            "SELECT id FROM headcounts WHERE facility_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(facility)
        .fetch_optional(tx.conn())
        .await
        .db()?;
        if latest.as_deref() != Some(id) {
            return Err(Error::FailedPrecondition {
                reason: "NOT_LATEST_HEADCOUNT",
                message: format!(
                    "{} is not the latest headcount of {}; mark the missing of facilities/{facility}/headcounts/{}",
                    h.name(),
                    f.name(),
                    latest.unwrap_or_default()
                ),
            });
        }
        if h.missing.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "NONE_MISSING",
                message: format!("{} found no one missing", h.name()),
            });
        }
        h.unaccounted_mark_time = now_micros();
        let marked = sqlx::query(
            "UPDATE headcounts SET unaccounted_mark_time = $1 WHERE id = $2 AND unaccounted_mark_time = 0",
        )
        .bind(h.unaccounted_mark_time)
        .bind(&h.id)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        if marked != 1 {
            return Err(Error::Aborted(format!("{} was marked concurrently", h.name())));
        }
        // The count may be hours old: only people the registry still records held here, and
        // on no movement, are marked; the others are reported as not sent.
        let now_held: BTreeSet<String> = placements(&mut tx, Some(&f.id), &[])
            .await?
            .into_iter()
            .filter(|p| p.custody_status == "CUSTODY_STATUS_IN_CUSTODY")
            .map(|p| p.person_id)
            .collect();
        let mut moving = BTreeSet::new();
        for chunk in h.missing.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql = concord_platform::sql::Sql::new(
                "SELECT person_id FROM movement_holds WHERE person_id IN ",
            );
            sql.bind_list(chunk.iter().map(|p| concord_platform::sql::SqlValue::Text(p.clone())));
            let ids: Vec<String> =
                sql.query_scalar(tx.dialect()).fetch_all(tx.conn()).await.db()?;
            moving.extend(ids);
        }
        for p in &h.missing {
            let (status, error) = if moving.contains(p) {
                (UpdateStatus::Refused, "on a movement since the count; not marked".to_string())
            } else if !now_held.contains(p) {
                (
                    UpdateStatus::Refused,
                    format!(
                        "no longer held IN_CUSTODY at {} since the count; not marked",
                        f.name()
                    ),
                )
            } else {
                (UpdateStatus::Pending, String::new())
            };
            sqlx::query(
                "INSERT INTO registry_updates (subject, person_id, step, reason, status, error, person_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )
            .bind(h.name())
            .bind(p)
            .bind(Step::Unaccounted.as_str())
            .bind(reason)
            .bind(status.as_str())
            .bind(&error)
            .execute(tx.conn())
            .await
            .db()?;
            h.updates.push((p.clone(), status, error));
        }
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &h.name()).await?;
        }
        audit::append(&mut tx, &access.entry(h.name(), "custody", "OK")).await?;
        outbox::append(&mut tx, event("headcount.unaccounted_marked", &h)).await?;
        tx.commit().await?;
        Ok(h)
    }
}
