//! The facilities' storage: every SQL statement and transaction of the service. Each write
//! checks the caller may change the facility, applies the change, records it in the timeline,
//! the audit log and the outbox, in one commit.

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::error::{Error, Result};
use concord_platform::fields::{check_etag, invalid_transition};
use concord_platform::idempotency;
use concord_platform::outbox::{self, NewEvent};
use concord_platform::policy::Action;
use concord_platform::sql::Sql;
use concord_platform::storage::{expect_one_row, Db, Migrations, SqlxResultExt, Tx};
use concord_platform::time::now_micros;
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::domain::*;

pub mod headcounts;
pub mod movements;
pub mod relocation;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's migrations, for [`Db::connect`].
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// Type URL of event payloads about facilities.
pub const FACILITY_TYPE_URL: &str = "type.googleapis.com/concord.facilities.v1.Facility";
/// Type URL of event payloads about incidents.
pub const INCIDENT_TYPE_URL: &str = "type.googleapis.com/concord.facilities.v1.Incident";

const INCIDENT_COLUMNS: &str =
    "id, facility_id, kind, state, description, killed, injured, missing, \
                                reporter, occur_time, version, create_time, update_time";

fn incident_from_row(r: &AnyRow) -> Result<Incident> {
    let kind: String = r.try_get("kind").db()?;
    let state: String = r.try_get("state").db()?;
    Ok(Incident {
        id: r.try_get("id").db()?,
        facility_id: r.try_get("facility_id").db()?,
        kind: IncidentKind::parse(&kind)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored incident kind '{kind}'")))?,
        state: IncidentState::parse(&state)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored incident state '{state}'")))?,
        description: r.try_get("description").db()?,
        killed: r.try_get("killed").db()?,
        injured: r.try_get("injured").db()?,
        missing: r.try_get("missing").db()?,
        reporter: r.try_get("reporter").db()?,
        occur_time: r.try_get("occur_time").db()?,
        version: r.try_get("version").db()?,
        create_time: r.try_get("create_time").db()?,
        update_time: r.try_get("update_time").db()?,
    })
}

fn incident_event(event_type: &'static str, i: &Incident) -> NewEvent {
    NewEvent {
        event_type,
        resource_name: i.name(),
        scope_tags: None,
        payload: prost_types::Any {
            type_url: INCIDENT_TYPE_URL.into(),
            value: crate::grpc::incident_out(i).encode_to_vec(),
        },
    }
}

/// A requested incident transition.
#[derive(Debug, Clone)]
pub struct IncidentChange {
    /// The next state.
    pub to: IncidentState,
    /// Why.
    pub reason: String,
    /// Latest counts.
    pub killed: i64,
    /// Injured.
    pub injured: i64,
    /// Missing.
    pub missing: i64,
    /// Expected version, from an etag.
    pub expected_version: Option<i64>,
}

pub(crate) const COLUMNS: &str =
    "id, doc, kind, custodian_agency, security_status, security_status_reason, \
                       security_status_time, version, create_time, update_time";

/// The facilities' storage.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
}

pub(crate) fn from_row(r: &AnyRow) -> Result<Facility> {
    let doc: String = r.try_get("doc").db()?;
    let status: String = r.try_get("security_status").db()?;
    Ok(Facility {
        id: r.try_get("id").db()?,
        data: serde_json::from_str(&doc).map_err(Error::internal)?,
        custodian_agency: r.try_get("custodian_agency").db()?,
        security_status: SecurityStatus::parse(&status)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored status '{status}'")))?,
        security_status_reason: r.try_get("security_status_reason").db()?,
        security_status_time: r.try_get("security_status_time").db()?,
        version: r.try_get("version").db()?,
        create_time: r.try_get("create_time").db()?,
        update_time: r.try_get("update_time").db()?,
    })
}

fn event_from_row(r: &AnyRow) -> Result<FacilityEvent> {
    let kind: String = r.try_get("kind").db()?;
    let from: String = r.try_get("from_status").db()?;
    let to: String = r.try_get("to_status").db()?;
    Ok(FacilityEvent {
        id: r.try_get("id").db()?,
        facility_id: r.try_get("facility_id").db()?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored event kind '{kind}'")))?,
        from_status: SecurityStatus::parse(&from),
        to_status: SecurityStatus::parse(&to),
        from_custodian: r.try_get("from_custodian").db()?,
        to_custodian: r.try_get("to_custodian").db()?,
        reason: r.try_get("reason").db()?,
        reporter: r.try_get("reporter").db()?,
        recorded_by: r.try_get("recorded_by").db()?,
        occur_time: r.try_get("occur_time").db()?,
        record_time: r.try_get("record_time").db()?,
    })
}

/// PERMISSION_DENIED unless the caller may change `f`: whoever the policy lets pass
/// facilities between custodians (the coordinator) may change any facility, a custodial
/// authority only those it runs.
pub(crate) fn check_custodian(access: &Access, f: &Facility) -> Result<()> {
    if access.grant.allows(Action::FacilitiesCustodian)
        || f.custodian_agency == access.principal.agency
    {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{} is run by {}; only its custodian or the coordinator may change it",
            f.name(),
            f.custodian_agency
        )))
    }
}

/// The outbox event for a change of `f`; facility data is not personal, so every watcher
/// sees it.
fn event(event_type: &'static str, f: &Facility) -> NewEvent {
    NewEvent {
        event_type,
        resource_name: f.name(),
        scope_tags: None,
        payload: prost_types::Any {
            type_url: FACILITY_TYPE_URL.into(),
            value: crate::grpc::facility_out(f).encode_to_vec(),
        },
    }
}

pub(crate) async fn fetch(tx: &mut Tx, id: &str) -> Result<Facility> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM facilities WHERE id = $1"))
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .db()?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(format!("facilities/{id}"))),
    }
}

/// FAILED_PRECONDITION for a facility HANDED_OVER or CLOSED: nothing about it changes.
pub(crate) fn check_open(f: &Facility) -> Result<()> {
    if f.security_status.is_final() {
        return Err(Error::FailedPrecondition {
            reason: "FACILITY_FINAL",
            message: format!("{} is {}; it no longer changes", f.name(), f.security_status),
        });
    }
    Ok(())
}

fn check_version(f: &Facility, expected: Option<i64>) -> Result<()> {
    check_etag(&f.name(), f.version, expected)
}

/// Writes the changed row if its version is still the one read (compare-and-set).
async fn save(tx: &mut Tx, f: &Facility) -> Result<()> {
    let doc = serde_json::to_string(&f.data).map_err(Error::internal)?;
    let updated = sqlx::query(
        "UPDATE facilities SET doc = $1, kind = $2, custodian_agency = $3, security_status = $4, \
         security_status_reason = $5, security_status_time = $6, version = $7, update_time = $8 \
         WHERE id = $9 AND version = $10",
    )
    .bind(doc)
    .bind(f.data.kind.as_str())
    .bind(&f.custodian_agency)
    .bind(f.security_status.as_str())
    .bind(&f.security_status_reason)
    .bind(f.security_status_time)
    .bind(f.version)
    .bind(f.update_time)
    .bind(&f.id)
    .bind(f.version - 1)
    .execute(tx.conn())
    .await
    .db()?
    .rows_affected();
    expect_one_row(updated, &f.name())?;
    Ok(())
}

impl Store {
    /// Wraps a connected database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates a facility in NORMAL status.
    pub async fn create(
        &self,
        access: &Access,
        id: &str,
        data: FacilityData,
        custodian: &str,
        request_id: Option<(String, String)>,
    ) -> Result<Facility> {
        let now = now_micros();
        let f = Facility {
            id: id.to_string(),
            data,
            custodian_agency: custodian.to_string(),
            security_status: SecurityStatus::Normal,
            security_status_reason: "created".into(),
            security_status_time: now,
            version: 1,
            create_time: now,
            update_time: now,
        };
        check_custodian(access, &f)?;
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateFacility", fp)
                    .await?
            {
                drop(tx);
                return self.get(id).await;
            }
        }
        let doc = serde_json::to_string(&f.data).map_err(Error::internal)?;
        let inserted = sqlx::query(
            "INSERT INTO facilities (id, doc, kind, custodian_agency, security_status, security_status_reason, \
             security_status_time, version, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&f.id)
        .bind(doc)
        .bind(f.data.kind.as_str())
        .bind(&f.custodian_agency)
        .bind(f.security_status.as_str())
        .bind(&f.security_status_reason)
        .bind(f.security_status_time)
        .bind(f.version)
        .bind(f.create_time)
        .bind(f.update_time)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        if inserted != 1 {
            return Err(Error::AlreadyExists(f.name()));
        }
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &f.name()).await?;
        }
        audit::append(&mut tx, &access.entry(f.name(), "*", "OK")).await?;
        outbox::append(&mut tx, event("facility.created", &f)).await?;
        tx.commit().await?;
        Ok(f)
    }

    /// One facility.
    pub async fn get(&self, id: &str) -> Result<Facility> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM facilities WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await
            .db()?;
        match row {
            Some(r) => from_row(&r),
            None => Err(Error::NotFound(format!("facilities/{id}"))),
        }
    }

    /// Facilities by id after `after`, matching `filter`.
    pub async fn list(
        &self,
        filter: Option<&Sql>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Facility>> {
        let mut sql = Sql::new(format!("SELECT {COLUMNS} FROM facilities f WHERE 1 = 1"));
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some(a) = after {
            sql.push(" AND f.id > ").bind_text(a);
        }
        sql.push(" ORDER BY f.id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(from_row).collect()
    }

    /// Applies `change` to a facility's written fields.
    pub async fn update<F>(
        &self,
        access: &Access,
        id: &str,
        fields: &str,
        expected_version: Option<i64>,
        request_id: Option<(String, String)>,
        change: F,
    ) -> Result<Facility>
    where
        F: FnOnce(&FacilityData) -> Result<FacilityData>,
    {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "UpdateFacility", fp)
                    .await?
            {
                drop(tx);
                return self.get(id).await;
            }
        }
        // Held until commit: an approval towards it waits, then sees the new places.
        movements::lock(&mut tx, &[id]).await?;
        let mut f = fetch(&mut tx, id).await?;
        check_custodian(access, &f)?;
        check_open(&f)?;
        check_version(&f, expected_version)?;
        let before = f.data.sections.clone();
        f.data = change(&f.data)?;
        // Inside the transaction: places approved movements reserved count as taken. Only a
        // change of the sections is checked, so an overfilled site can still be renamed.
        let (room, _) = movements::room(&mut tx, &f, "").await?;
        let short: Vec<String> = room
            .lines()
            .filter(|(_, l)| f.data.sections != before && l.held + l.reserved > l.places)
            .map(|((section, sex, band), l)| {
                let at = if section.is_empty() { "no section" } else { section.as_str() };
                format!(
                    "{at} {sex} {band}: {} places for {} people and {} reserved by approved movements",
                    l.places, l.held, l.reserved
                )
            })
            .collect();
        if !short.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "CAPACITY_BELOW_OCCUPANCY",
                message: format!("capacity below current occupancy: {}", short.join("; ")),
            });
        }
        f.version += 1;
        f.update_time = now_micros();
        save(&mut tx, &f).await?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &f.name()).await?;
        }
        audit::append(&mut tx, &access.entry(f.name(), fields, "OK")).await?;
        outbox::append(&mut tx, event("facility.updated", &f)).await?;
        tx.commit().await?;
        Ok(f)
    }

    /// Changes a facility's security status or custodian, recording it in the timeline.
    pub async fn change(&self, access: &Access, c: Change) -> Result<Facility> {
        let method = if c.to_status.is_some() { "ChangeSecurityStatus" } else { "ChangeCustodian" };
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &c.request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, method, fp).await?
            {
                drop(tx);
                return self.get(&c.facility_id).await;
            }
        }
        movements::lock(&mut tx, &[&c.facility_id]).await?;
        let mut f = fetch(&mut tx, &c.facility_id).await?;
        check_custodian(access, &f)?;
        check_version(&f, c.expected_version)?;
        let now = now_micros();
        let from_status = f.security_status;
        let from_custodian = f.custodian_agency.clone();
        let (kind, event_type) = match (&c.to_status, &c.to_custodian) {
            (Some(to), _) => {
                if !from_status.can_become(*to) {
                    return Err(invalid_transition(
                        "INVALID_SECURITY_TRANSITION",
                        &f.name(),
                        from_status,
                        &from_status.successors(),
                        "nothing (final)",
                    ));
                }
                if c.occur_time < f.security_status_time {
                    return Err(Error::invalid(
                        "occur_time",
                        format!(
                            "is before the last change of {}'s status; report changes in the order they happened",
                            f.name()
                        ),
                    ));
                }
                f.security_status = *to;
                f.security_status_reason = c.reason.clone();
                f.security_status_time = c.occur_time;
                (EventKind::SecurityStatus, "facility.security_status_changed")
            }
            (None, Some(to)) => {
                if from_status.is_final() {
                    return Err(Error::FailedPrecondition {
                        reason: "FACILITY_FINAL",
                        message: format!(
                            "{} is {from_status}; its custodian no longer changes",
                            f.name()
                        ),
                    });
                }
                if *to == f.custodian_agency {
                    return Err(Error::invalid(
                        "custodian_agency",
                        format!("{to} already runs {}", f.name()),
                    ));
                }
                f.custodian_agency = to.clone();
                (EventKind::Custodian, "facility.custodian_changed")
            }
            (None, None) => {
                return Err(Error::internal(anyhow::anyhow!("a change with nothing to change")))
            }
        };
        f.version += 1;
        f.update_time = now;
        save(&mut tx, &f).await?;
        sqlx::query(
            "INSERT INTO facility_events (id, facility_id, kind, from_status, to_status, from_custodian, to_custodian, \
             reason, reporter, recorded_by, occur_time, record_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&f.id)
        .bind(kind.as_str())
        .bind(if kind == EventKind::SecurityStatus { from_status.as_str() } else { "" })
        .bind(if kind == EventKind::SecurityStatus { f.security_status.as_str() } else { "" })
        .bind(if kind == EventKind::Custodian { from_custodian.as_str() } else { "" })
        .bind(if kind == EventKind::Custodian { f.custodian_agency.as_str() } else { "" })
        .bind(&c.reason)
        .bind(&c.reporter)
        .bind(&access.principal.agency)
        .bind(c.occur_time)
        .bind(now)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &c.request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &f.name()).await?;
        }
        let fields =
            if kind == EventKind::SecurityStatus { "security_status" } else { "custodian_agency" };
        audit::append(&mut tx, &access.entry(f.name(), fields, "OK")).await?;
        outbox::append(&mut tx, event(event_type, &f)).await?;
        tx.commit().await?;
        Ok(f)
    }

    /// A facility's timeline after `after`, oldest first.
    pub async fn events(
        &self,
        id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FacilityEvent>> {
        self.get(id).await?;
        let mut sql = Sql::new(
            "SELECT id, facility_id, kind, from_status, to_status, from_custodian, to_custodian, reason, \
             reporter, recorded_by, occur_time, record_time FROM facility_events WHERE facility_id = ",
        );
        sql.bind_text(id);
        if let Some(a) = after {
            sql.push(" AND id > ").bind_text(a);
        }
        sql.push(" ORDER BY id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(event_from_row).collect()
    }

    /// Records a new incident at a facility the caller runs (or any, for the coordinator).
    pub async fn report_incident(
        &self,
        access: &Access,
        mut incident: Incident,
        request_id: Option<(String, String)>,
    ) -> Result<Incident> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "ReportIncident", fp)
                    .await?
            {
                drop(tx);
                let id = name.rsplit('/').next().unwrap_or_default().to_string();
                return self.incident(&incident.facility_id, &id).await;
            }
        }
        let f = fetch(&mut tx, &incident.facility_id).await?;
        check_custodian(access, &f)?;
        check_open(&f)?;
        let now = now_micros();
        incident.id = uuid::Uuid::now_v7().to_string();
        incident.state = IncidentState::Reported;
        incident.version = 1;
        incident.create_time = now;
        incident.update_time = now;
        sqlx::query(&format!(
            "INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&incident.id)
        .bind(&incident.facility_id)
        .bind(incident.kind.as_str())
        .bind(incident.state.as_str())
        .bind(&incident.description)
        .bind(incident.killed)
        .bind(incident.injured)
        .bind(incident.missing)
        .bind(&incident.reporter)
        .bind(incident.occur_time)
        .bind(incident.version)
        .bind(incident.create_time)
        .bind(incident.update_time)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &incident.name()).await?;
        }
        audit::append(&mut tx, &access.entry(incident.name(), "*", "OK")).await?;
        outbox::append(&mut tx, incident_event("incident.reported", &incident)).await?;
        tx.commit().await?;
        Ok(incident)
    }

    /// One incident of a facility.
    pub async fn incident(&self, facility_id: &str, id: &str) -> Result<Incident> {
        let row = sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE facility_id = $1 AND id = $2"
        ))
        .bind(facility_id)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await
        .db()?;
        match row {
            Some(r) => incident_from_row(&r),
            None => Err(Error::NotFound(format!("facilities/{facility_id}/incidents/{id}"))),
        }
    }

    /// A facility's incidents, newest first, before `before`.
    pub async fn incidents(
        &self,
        facility_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Incident>> {
        self.get(facility_id).await?;
        let mut sql =
            Sql::new(format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE facility_id = "));
        sql.bind_text(facility_id);
        if let Some(b) = before {
            sql.push(" AND id < ").bind_text(b);
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(incident_from_row).collect()
    }

    /// Moves an incident along its lifecycle with its latest counts.
    pub async fn transition_incident(
        &self,
        access: &Access,
        facility_id: &str,
        id: &str,
        c: IncidentChange,
    ) -> Result<Incident> {
        let mut tx = self.db.begin().await?;
        let f = fetch(&mut tx, facility_id).await?;
        check_custodian(access, &f)?;
        check_open(&f)?;
        let row = sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE facility_id = $1 AND id = $2"
        ))
        .bind(facility_id)
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .db()?;
        let mut i = match row {
            Some(r) => incident_from_row(&r)?,
            None => {
                return Err(Error::NotFound(format!("facilities/{facility_id}/incidents/{id}")))
            }
        };
        check_etag(&i.name(), i.version, c.expected_version)?;
        if !i.state.can_become(c.to) {
            return Err(invalid_transition(
                "INVALID_INCIDENT_TRANSITION",
                &i.name(),
                i.state,
                &i.state.successors(),
                "nothing (closed)",
            ));
        }
        i.state = c.to;
        i.killed = c.killed;
        i.injured = c.injured;
        i.missing = c.missing;
        i.description = if i.description.is_empty() {
            c.reason.clone()
        } else {
            format!("{}\n{}: {}", i.description, c.to, c.reason)
        };
        i.version += 1;
        i.update_time = now_micros();
        let updated = sqlx::query(
            "UPDATE incidents SET state = $1, killed = $2, injured = $3, missing = $4, description = $5, \
             version = $6, update_time = $7 WHERE id = $8 AND version = $9",
        )
        .bind(i.state.as_str())
        .bind(i.killed)
        .bind(i.injured)
        .bind(i.missing)
        .bind(&i.description)
        .bind(i.version)
        .bind(i.update_time)
        .bind(&i.id)
        .bind(i.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, &i.name())?;
        audit::append(&mut tx, &access.entry(i.name(), "state,killed,injured,missing", "OK"))
            .await?;
        outbox::append(&mut tx, incident_event("incident.changed", &i)).await?;
        tx.commit().await?;
        Ok(i)
    }
}
