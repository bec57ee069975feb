//! Movements between facilities: planning, approval against capacity and the separation
//! rules, departure, arrival, abort. Each step is one transaction with its audit entry, its
//! outbox event and, for steps the registry must record, one `registry_updates` row per
//! person for the relay ([`crate::relay`]).

use std::collections::{BTreeMap, BTreeSet};

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::error::{Error, Result};
use concord_platform::fields::{check_etag, invalid_transition};
use concord_platform::idempotency;
use concord_platform::outbox;
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::{expect_one_row, Db, SqlxResultExt, Tx};
use concord_platform::time::{current_year, now_micros};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{check_open, fetch, Store};
use crate::domain::*;
use crate::occupancy::{placement_from_row, Placement, PLACEMENT_COLUMNS};

/// Most people on one manifest.
pub const MAX_MANIFEST: usize = 10_000;

/// Custody status in which a person may be moved.
const IN_CUSTODY: &str = "CUSTODY_STATUS_IN_CUSTODY";

const MOVEMENT_COLUMNS: &str = "id, source_facility, destination_facility, state, reason, abort_reason, \
     relocation_plan, planned_by, approved_by, depart_time, arrive_time, version, create_time, update_time";

/// A movement as asked for.
#[derive(Debug, Clone)]
pub struct NewMovement {
    /// Source facility id.
    pub source: String,
    /// Destination facility id.
    pub destination: String,
    /// Why.
    pub reason: String,
    /// `(person id, section at the destination or empty)`, each person once.
    pub entries: Vec<(String, String)>,
}

/// A requested step of a movement.
#[derive(Debug, Clone)]
pub struct MovementStep {
    /// Movement id.
    pub id: String,
    /// The state after it.
    pub to: MovementState,
    /// Why (aborts).
    pub reason: String,
    /// Expected version, from an etag.
    pub expected_version: Option<i64>,
    /// Idempotency key and fingerprint.
    pub request_id: Option<(String, String)>,
}

/// Loads placements from the projection: at `facility`, or of `persons`.
pub(crate) async fn placements(
    tx: &mut Tx,
    facility: Option<&str>,
    persons: &[String],
) -> Result<Vec<Placement>> {
    let base = format!("SELECT {PLACEMENT_COLUMNS} FROM placements WHERE ");
    let mut rows = Vec::new();
    if let Some(f) = facility {
        let mut sql = Sql::new(base.clone());
        sql.push("facility_id = ").bind_text(f).push(" ORDER BY person_id");
        rows.extend(sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()?);
    } else {
        for chunk in persons.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql = Sql::new(base.clone());
            sql.push("person_id IN ").bind_list(chunk.iter().map(|p| SqlValue::Text(p.clone())));
            rows.extend(sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()?);
        }
    }
    rows.iter().map(placement_from_row).collect()
}

/// The places of `f` with the people held there and the places reserved by movements
/// towards it (approved or on the road, and arrived until the projection counts them),
/// except `except`'s own, and by people returning after an abort on the road. The second
/// value counts only the people held.
pub(crate) async fn room(tx: &mut Tx, f: &Facility, except: &str) -> Result<(Room, Room)> {
    // Ended movements whose people the projection now counts where they are hold nothing:
    // marked once, so the queries below look only at movements still holding places.
    sqlx::query(
        "UPDATE movements SET released = 1 WHERE released = 0 AND state IN ('ARRIVED', 'ABORTED') \
         AND (destination_facility = $1 OR source_facility = $1) AND NOT EXISTS (SELECT 1 FROM registry_updates u \
             WHERE u.subject = 'movements/' || movements.id AND u.step IN ('arrive', 'return') \
             AND (u.status = 'PENDING' OR (u.status = 'APPLIED' AND NOT EXISTS (SELECT 1 FROM person_versions v \
                 WHERE v.person_id = u.person_id AND v.version >= u.person_version))))",
    )
    .bind(&f.id)
    .execute(tx.conn())
    .await
    .db()?;
    let mut held = Room::new(&f.data);
    let year = current_year();
    for p in placements(tx, Some(&f.id), &[]).await? {
        held.hold(&p.section_id, p.sex, p.band(year));
    }
    let mut all = held.clone();
    let rows = sqlx::query(
        "SELECT e.section_id, e.sex, e.age_band FROM manifest_entries e \
         JOIN movements m ON m.id = e.movement_id \
         WHERE m.destination_facility = $1 AND m.id <> $2 AND m.released = 0 AND (m.state IN ('APPROVED', 'IN_TRANSIT') \
           OR (m.state = 'ARRIVED' AND EXISTS (SELECT 1 FROM registry_updates u \
               WHERE u.subject = 'movements/' || m.id AND u.step = 'arrive' AND u.person_id = e.person_id \
               AND (u.status = 'PENDING' OR (u.status = 'APPLIED' AND NOT EXISTS (SELECT 1 FROM person_versions v \
                   WHERE v.person_id = u.person_id AND v.version >= u.person_version))))))",
    )
    .bind(&f.id)
    .bind(except)
    .fetch_all(tx.conn())
    .await
    .db()?;
    // People on their way back after a movement from here was aborted on the road hold their
    // old places until the projection counts them here again.
    let returning = sqlx::query(
        "SELECT e.source_section AS section_id, e.sex, e.age_band FROM manifest_entries e \
         JOIN movements m ON m.id = e.movement_id \
         WHERE m.source_facility = $1 AND m.state = 'ABORTED' AND m.released = 0 AND EXISTS (SELECT 1 FROM registry_updates u \
               WHERE u.subject = 'movements/' || m.id AND u.step = 'return' AND u.person_id = e.person_id \
               AND (u.status = 'PENDING' OR (u.status = 'APPLIED' AND NOT EXISTS (SELECT 1 FROM person_versions v \
                   WHERE v.person_id = u.person_id AND v.version >= u.person_version))))",
    )
    .bind(&f.id)
    .fetch_all(tx.conn())
    .await
    .db()?;
    for r in rows.iter().chain(&returning) {
        let section: String = r.try_get("section_id").db()?;
        let sex: String = r.try_get("sex").db()?;
        let band: String = r.try_get("age_band").db()?;
        if let (Some(sex), Some(band)) = (PlaceSex::parse(&sex), AgeBand::parse(&band)) {
            all.reserve(&section, sex, band);
        }
    }
    Ok((all, held))
}

fn movement_from_row(r: &AnyRow) -> Result<Movement> {
    let state: String = r.try_get("state").db()?;
    Ok(Movement {
        id: r.try_get("id").db()?,
        source: r.try_get("source_facility").db()?,
        destination: r.try_get("destination_facility").db()?,
        state: MovementState::parse(&state)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored movement state '{state}'")))?,
        reason: r.try_get("reason").db()?,
        abort_reason: r.try_get("abort_reason").db()?,
        relocation_plan: r.try_get("relocation_plan").db()?,
        planned_by: r.try_get("planned_by").db()?,
        approved_by: r.try_get("approved_by").db()?,
        depart_time: r.try_get("depart_time").db()?,
        arrive_time: r.try_get("arrive_time").db()?,
        version: r.try_get("version").db()?,
        create_time: r.try_get("create_time").db()?,
        update_time: r.try_get("update_time").db()?,
        manifest: Vec::new(),
    })
}

/// Fills in the manifests of `ms`, with each entry's latest registry update.
async fn load_manifests(db: &Db, ms: &mut [Movement]) -> Result<()> {
    let (dialect, exec) = (db.dialect(), db.reader());
    for chunk in ms.chunks_mut(concord_platform::sql::MAX_IN_LIST) {
        let ids: Vec<String> = chunk.iter().map(|m| m.id.clone()).collect();
        let mut sql = Sql::new(
            "SELECT movement_id, person_id, section_id, sex, age_band, age FROM manifest_entries \
             WHERE movement_id IN ",
        );
        sql.bind_list(ids.iter().map(|i| SqlValue::Text(i.clone())))
            .push(" ORDER BY movement_id, person_id");
        let rows = sql.query(dialect).fetch_all(exec).await.db()?;
        let mut sql = Sql::new(
            "SELECT subject, person_id, step, status, error FROM registry_updates WHERE subject IN ",
        );
        sql.bind_list(ids.iter().map(|i| SqlValue::Text(format!("movements/{i}"))));
        let updates = sql.query(dialect).fetch_all(exec).await.db()?;
        // The latest step per person: return or arrive come after depart.
        let mut latest: BTreeMap<(String, String), (u8, UpdateStatus, String)> = BTreeMap::new();
        for u in updates {
            let subject: String = u.try_get("subject").db()?;
            let person: String = u.try_get("person_id").db()?;
            let step: String = u.try_get("step").db()?;
            let status: String = u.try_get("status").db()?;
            let rank = if step == Step::Depart.as_str() { 1 } else { 2 };
            let Some(status) = UpdateStatus::parse(&status) else { continue };
            let key = (subject.trim_start_matches("movements/").to_string(), person);
            if latest.get(&key).is_none_or(|(r, _, _)| *r < rank) {
                latest.insert(key, (rank, status, u.try_get("error").db()?));
            }
        }
        let mut by_id: BTreeMap<String, Vec<ManifestEntry>> = BTreeMap::new();
        for r in rows {
            let movement: String = r.try_get("movement_id").db()?;
            let person: String = r.try_get("person_id").db()?;
            let sex: String = r.try_get("sex").db()?;
            let band: String = r.try_get("age_band").db()?;
            let age: i64 = r.try_get("age").db()?;
            let update = latest.remove(&(movement.clone(), person.clone())).map(|(_, s, e)| (s, e));
            by_id.entry(movement).or_default().push(ManifestEntry {
                person_id: person,
                section_id: r.try_get("section_id").db()?,
                sex: PlaceSex::parse(&sex),
                age_band: AgeBand::parse(&band).unwrap_or(AgeBand::Adult),
                age: age as i32,
                update,
            });
        }
        for m in chunk.iter_mut() {
            m.manifest = by_id.remove(&m.id).unwrap_or_default();
        }
    }
    Ok(())
}

/// The outbox event of a movement: only the custodians of its two facilities and the
/// coordinator see it (it names people).
pub(crate) fn movement_event(event_type: &'static str, m: &Movement) -> outbox::NewEvent {
    use prost::Message;
    outbox::NewEvent {
        event_type,
        resource_name: m.name(),
        scope_tags: Some(format!("|@{}|@{}|", m.source, m.destination)),
        payload: prost_types::Any {
            type_url: MOVEMENT_TYPE_URL.into(),
            value: crate::grpc::movement_out(m).encode_to_vec(),
        },
    }
}

/// Type URL of event payloads about movements.
pub const MOVEMENT_TYPE_URL: &str = "type.googleapis.com/concord.facilities.v1.Movement";

/// Why each of `people` may not go to a facility of `kind` (empty: all may).
fn separation(
    rules: &SeparationRules,
    kind: FacilityKind,
    people: &[(String, Option<PlaceSex>, Option<i32>, AgeBand)],
) -> Vec<String> {
    people
        .iter()
        .filter_map(|(id, sex, age, band)| {
            rules.refusal(kind, *sex, *age, *band).map(|why| format!("persons/{id}: {why}"))
        })
        .collect()
}

/// Whether the caller may see and act on the people at `f`: the coordinator (who may pass
/// facilities between custodians) everywhere; otherwise an agency that runs `f` (it is its
/// `custodian_agency`) and whose directory entry (or token) posts the caller there, as the
/// registry's own "people in its facilities" scope does. One rule for reads and writes.
pub(crate) fn runs(access: &Access, f: &Facility) -> bool {
    access.grant.allows(concord_platform::policy::Action::FacilitiesCustodian)
        || (f.custodian_agency == access.principal.agency
            && access.principal.facilities.contains(&f.id))
}

/// PERMISSION_DENIED unless the caller [`runs`] `f` (facilities are public: this reveals
/// nothing about people).
pub(crate) fn check_runs(access: &Access, f: &Facility) -> Result<()> {
    if runs(access, f) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "the people at {} are for the staff of its custodian posted there and the coordinator",
            f.name()
        )))
    }
}

/// Takes the rows of `ids` (in id order, so two transactions never wait on each other in a
/// cycle) until commit: on PostgreSQL a concurrent writer of the same facility waits, and
/// reads what this one committed. SQLite has one writer anyway.
pub(crate) async fn lock(tx: &mut Tx, ids: &[&str]) -> Result<()> {
    concord_platform::storage::lock_rows(tx, "facilities", ids).await
}

impl Store {
    /// Plans a movement (PLANNED): every person held IN_CUSTODY at the source, on no other
    /// open movement, and allowed by the separation rules at the destination.
    pub async fn create_movement(
        &self,
        access: &Access,
        new: NewMovement,
        rules: &SeparationRules,
        request_id: Option<(String, String)>,
    ) -> Result<Movement> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateMovement", fp)
                    .await?
            {
                drop(tx);
                return self.movement(access, name.trim_start_matches("movements/")).await;
            }
        }
        let source = fetch(&mut tx, &new.source).await?;
        check_runs(access, &source)?;
        check_open(&source)?;
        let destination = fetch(&mut tx, &new.destination).await?;
        check_open(&destination)?;
        let m = insert_movement(&mut tx, access, &source, &destination, new, "", rules).await?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &m.name()).await?;
        }
        audit::append(&mut tx, &access.entry(m.name(), "manifest", "OK")).await?;
        outbox::append(&mut tx, movement_event("movement.planned", &m)).await?;
        tx.commit().await?;
        Ok(m)
    }

    /// One movement the caller may see.
    pub async fn movement(&self, access: &Access, id: &str) -> Result<Movement> {
        let row = sqlx::query(&format!("SELECT {MOVEMENT_COLUMNS} FROM movements WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await
            .db()?;
        let mut m = match row {
            Some(r) => movement_from_row(&r)?,
            None => return Err(Error::NotFound(format!("movements/{id}"))),
        };
        let (source, destination) = (self.get(&m.source).await?, self.get(&m.destination).await?);
        if !runs(access, &source) && !runs(access, &destination) {
            return Err(Error::NotFound(format!("movements/{id}")));
        }
        load_manifests(&self.db, std::slice::from_mut(&mut m)).await?;
        Ok(m)
    }

    /// The facilities whose people the caller sees, or `None` for all.
    pub(crate) async fn facilities_run(&self, access: &Access) -> Result<Option<Vec<String>>> {
        if access.grant.allows(concord_platform::policy::Action::FacilitiesCustodian) {
            return Ok(None);
        }
        let posted = &access.principal.facilities;
        if posted.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut sql = Sql::new("SELECT id FROM facilities WHERE custodian_agency = ");
        sql.bind_text(access.principal.agency.clone())
            .push(" AND id IN ")
            .bind_list(posted.iter().map(|f| SqlValue::Text(f.clone())));
        let ids = sql.query_scalar(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        Ok(Some(ids))
    }

    /// Movements the caller may see, newest first, before `before`, matching `filter`.
    pub async fn movements(
        &self,
        access: &Access,
        filter: Option<&Sql>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Movement>> {
        let mut sql = Sql::new(format!("SELECT {MOVEMENT_COLUMNS} FROM movements m WHERE 1 = 1"));
        if let Some(run) = self.facilities_run(access).await? {
            if run.is_empty() {
                return Ok(Vec::new());
            }
            let mine = || run.iter().map(|f| SqlValue::Text(f.clone()));
            sql.push(" AND (m.source_facility IN ")
                .bind_list(mine())
                .push(" OR m.destination_facility IN ")
                .bind_list(mine())
                .push(")");
        }
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some(b) = before {
            sql.push(" AND m.id < ").bind_text(b);
        }
        sql.push(" ORDER BY m.id DESC LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        let mut ms: Vec<Movement> = rows.iter().map(movement_from_row).collect::<Result<_>>()?;
        load_manifests(&self.db, &mut ms).await?;
        Ok(ms)
    }

    /// Moves a movement one step along its lifecycle.
    pub async fn step_movement(
        &self,
        access: &Access,
        step: MovementStep,
        rules: &SeparationRules,
    ) -> Result<Movement> {
        let method = match step.to {
            MovementState::Approved => "ApproveMovement",
            MovementState::InTransit => "DepartMovement",
            MovementState::Arrived => "ArriveMovement",
            _ => "AbortMovement",
        };
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &step.request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, method, fp).await?
            {
                drop(tx);
                return self.movement(access, &step.id).await;
            }
        }
        let row = sqlx::query(&format!("SELECT {MOVEMENT_COLUMNS} FROM movements WHERE id = $1"))
            .bind(&step.id)
            .fetch_optional(tx.conn())
            .await
            .db()?;
        let mut m = match row {
            Some(r) => movement_from_row(&r)?,
            None => return Err(Error::NotFound(format!("movements/{}", step.id))),
        };
        // Both facilities are held until commit, then read: a concurrent approval, capacity
        // change or status change of either waits for this one and sees what it did.
        lock(&mut tx, &[&m.source, &m.destination]).await?;
        let source = fetch(&mut tx, &m.source).await?;
        let destination = fetch(&mut tx, &m.destination).await?;
        if !runs(access, &source) && !runs(access, &destination) {
            return Err(Error::NotFound(m.name()));
        }
        // The source plans and sends; the destination approves and receives; either calls off.
        match step.to {
            MovementState::Approved | MovementState::Arrived => check_runs(access, &destination)?,
            MovementState::InTransit | MovementState::Planned => check_runs(access, &source)?,
            MovementState::Aborted => {
                if !runs(access, &source) {
                    check_runs(access, &destination)?;
                }
            }
        }
        check_etag(&m.name(), m.version, step.expected_version)?;
        if !m.state.can_become(step.to) {
            return Err(invalid_transition(
                "INVALID_MOVEMENT_TRANSITION",
                &m.name(),
                m.state,
                &m.state.successors(),
                "nothing (final)",
            ));
        }
        // Entries change only in approval, which this movement's version check serialises.
        load_manifests(&self.db, std::slice::from_mut(&mut m)).await?;
        let now = now_micros();
        let from = m.state;
        let mut registry_step = None;
        let event_type = match step.to {
            MovementState::Approved => {
                approve(&mut tx, &mut m, &source, &destination, rules).await?;
                m.approved_by = access.principal.agency.clone();
                "movement.approved"
            }
            MovementState::InTransit => {
                if source.security_status == SecurityStatus::Lockdown {
                    return Err(Error::FailedPrecondition {
                        reason: "FACILITY_LOCKDOWN",
                        message: format!(
                            "{} is in LOCKDOWN: no movement leaves it until it is lifted",
                            source.name()
                        ),
                    });
                }
                check_receiving(&destination)?;
                still_at_source(&mut tx, &mut m, &source).await?;
                m.depart_time = now;
                registry_step = Some(Step::Depart);
                "movement.departed"
            }
            MovementState::Arrived => {
                check_open(&destination)?;
                m.arrive_time = now;
                registry_step = Some(Step::Arrive);
                "movement.arrived"
            }
            MovementState::Aborted => {
                m.abort_reason = step.reason.clone();
                if from == MovementState::InTransit {
                    registry_step = Some(Step::Return);
                }
                "movement.aborted"
            }
            MovementState::Planned => {
                return Err(Error::internal(anyhow::anyhow!("no step leads to PLANNED")))
            }
        };
        m.state = step.to;
        m.version += 1;
        m.update_time = now;
        let updated = sqlx::query(
            "UPDATE movements SET state = $1, abort_reason = $2, approved_by = $3, depart_time = $4, \
             arrive_time = $5, version = $6, update_time = $7 WHERE id = $8 AND version = $9",
        )
        .bind(m.state.as_str())
        .bind(&m.abort_reason)
        .bind(&m.approved_by)
        .bind(m.depart_time)
        .bind(m.arrive_time)
        .bind(m.version)
        .bind(m.update_time)
        .bind(&m.id)
        .bind(m.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, &m.name())?;
        if let Some(rs) = registry_step {
            let subject = m.name();
            // The registry's timeline names the movement in `source`; the reason is as given.
            let reason = match rs {
                Step::Return => m.abort_reason.clone(),
                _ => m.reason.clone(),
            };
            for e in &mut m.manifest {
                sqlx::query(
                    "INSERT INTO registry_updates (subject, person_id, step, reason, status, error, person_version) \
                     VALUES ($1, $2, $3, $4, 'PENDING', '', 0)",
                )
                .bind(&subject)
                .bind(&e.person_id)
                .bind(rs.as_str())
                .bind(&reason)
                .execute(tx.conn())
                .await
                .db()?;
                e.update = Some((UpdateStatus::Pending, String::new()));
            }
        }
        if !m.state.is_open() {
            sqlx::query("DELETE FROM movement_holds WHERE movement_id = $1")
                .bind(&m.id)
                .execute(tx.conn())
                .await
                .db()?;
        }
        if let Some((rid, _)) = &step.request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &m.name()).await?;
        }
        audit::append(&mut tx, &access.entry(m.name(), "state", "OK")).await?;
        outbox::append(&mut tx, movement_event(event_type, &m)).await?;
        tx.commit().await?;
        Ok(m)
    }
}

/// Inserts a PLANNED movement after checking its manifest; used by CreateMovement and by
/// relocation plans.
pub(crate) async fn insert_movement(
    tx: &mut Tx,
    access: &Access,
    source: &Facility,
    destination: &Facility,
    new: NewMovement,
    plan: &str,
    rules: &SeparationRules,
) -> Result<Movement> {
    if source.id == destination.id {
        return Err(Error::invalid(
            "movement.destination_facility",
            "is the source facility; a movement goes somewhere else",
        ));
    }
    let ids: Vec<String> = new.entries.iter().map(|(p, _)| p.clone()).collect();
    let placed: BTreeMap<String, Placement> =
        placements(tx, None, &ids).await?.into_iter().map(|p| (p.person_id.clone(), p)).collect();
    let mut v = concord_platform::error::Violations::new();
    let room = Room::new(&destination.data);
    let year = current_year();
    let mut people = Vec::new();
    for (i, (person, section)) in new.entries.iter().enumerate() {
        match placed.get(person) {
            Some(p) if p.facility_id == source.id && p.custody_status == IN_CUSTODY => {
                people.push((person.clone(), p.sex, p.age(year), p.band(year)));
            }
            _ => v.add(
                format!("movement.manifest[{i}].person"),
                format!(
                    "persons/{person} is not held IN_CUSTODY at {} as the registry records it",
                    source.name()
                ),
            ),
        }
        if !section.is_empty() && !room.has_section(section) {
            v.add(
                format!("movement.manifest[{i}].section_id"),
                format!("{} has no section '{section}'", destination.name()),
            );
        }
    }
    v.finish(())?;
    let refused = separation(rules, destination.data.kind, &people);
    if !refused.is_empty() {
        return Err(Error::FailedPrecondition {
            reason: "SEPARATION_RULES",
            message: format!(
                "{} ({}) may not take: {}",
                destination.name(),
                destination.data.kind,
                refused.join("; ")
            ),
        });
    }
    let now = now_micros();
    let mut m = Movement {
        id: uuid::Uuid::now_v7().to_string(),
        source: source.id.clone(),
        destination: destination.id.clone(),
        state: MovementState::Planned,
        reason: new.reason,
        abort_reason: String::new(),
        relocation_plan: plan.to_string(),
        planned_by: access.principal.agency.clone(),
        approved_by: String::new(),
        depart_time: 0,
        arrive_time: 0,
        version: 1,
        create_time: now,
        update_time: now,
        manifest: Vec::new(),
    };
    sqlx::query(&format!(
        "INSERT INTO movements ({MOVEMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&m.id)
    .bind(&m.source)
    .bind(&m.destination)
    .bind(m.state.as_str())
    .bind(&m.reason)
    .bind(&m.abort_reason)
    .bind(&m.relocation_plan)
    .bind(&m.planned_by)
    .bind(&m.approved_by)
    .bind(m.depart_time)
    .bind(m.arrive_time)
    .bind(m.version)
    .bind(m.create_time)
    .bind(m.update_time)
    .execute(tx.conn())
    .await
    .db()?;
    let mut on_other = Vec::new();
    for ((person, section), (_, sex, age, band)) in new.entries.iter().zip(&people) {
        let held = sqlx::query(
            "INSERT INTO movement_holds (person_id, movement_id) VALUES ($1, $2) ON CONFLICT (person_id) DO NOTHING",
        )
        .bind(person)
        .bind(&m.id)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        if held != 1 {
            on_other.push(person.clone());
            continue;
        }
        sqlx::query(
            "INSERT INTO manifest_entries (movement_id, person_id, section_id, sex, age_band, age, source_section) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&m.id)
        .bind(person)
        .bind(section)
        .bind(sex.map_or("", |s| s.as_str()))
        .bind(band.as_str())
        .bind(i64::from(age.unwrap_or(-1)))
        .bind(held_section(&placed, person))
        .execute(tx.conn())
        .await
        .db()?;
        m.manifest.push(ManifestEntry {
            person_id: person.clone(),
            section_id: section.clone(),
            sex: *sex,
            age_band: *band,
            age: age.unwrap_or(-1),
            update: None,
        });
    }
    if !on_other.is_empty() {
        let mut sql =
            Sql::new("SELECT person_id, movement_id FROM movement_holds WHERE person_id IN ");
        sql.bind_list(on_other.iter().map(|p| SqlValue::Text(p.clone())));
        let rows = sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()?;
        let mut named = Vec::new();
        for r in rows {
            let p: String = r.try_get("person_id").db()?;
            let other: String = r.try_get("movement_id").db()?;
            named.push(format!("persons/{p} is on movements/{other}"));
        }
        return Err(Error::FailedPrecondition {
            reason: "ALREADY_ON_MOVEMENT",
            message: format!(
                "a person is on one open movement at a time; end that one first: {}",
                named.join("; ")
            ),
        });
    }
    m.manifest.sort_by(|a, b| a.person_id.cmp(&b.person_id));
    Ok(m)
}

fn held_section(held: &BTreeMap<String, Placement>, person: &str) -> String {
    held.get(person).map(|p| p.section_id.clone()).unwrap_or_default()
}

/// Approval: the people are still at the source, the separation rules hold, the destination
/// is not locked down or compromised, and it has a place for each of them. Takes the
/// places (assigning sections) or fails, ABORTED when other approved movements took the
/// places this one needed.
async fn approve(
    tx: &mut Tx,
    m: &mut Movement,
    source: &Facility,
    destination: &Facility,
    rules: &SeparationRules,
) -> Result<()> {
    check_receiving(destination)?;
    check_open(source)?;
    // The caller holds both facilities' rows (`lock`), so approvals towards one destination
    // take turns and each sees the places the others reserved.
    still_at_source(tx, m, source).await?;
    let people: Vec<_> = m
        .manifest
        .iter()
        .map(|e| (e.person_id.clone(), e.sex, (e.age >= 0).then_some(e.age), e.age_band))
        .collect();
    let refused = separation(rules, destination.data.kind, &people);
    if !refused.is_empty() {
        return Err(Error::FailedPrecondition {
            reason: "SEPARATION_RULES",
            message: format!("{} may not take: {}", destination.name(), refused.join("; ")),
        });
    }
    let (mut with_reserved, mut held_only) = room(tx, destination, &m.id).await?;
    let mut short: BTreeMap<(String, PlaceSex, AgeBand), i64> = BTreeMap::new();
    let mut fits_without_others = true;
    for e in &mut m.manifest {
        let Some(sex) = e.sex else { continue };
        match with_reserved.take(&e.section_id, sex, e.age_band) {
            Some(section) => e.section_id = section,
            None => *short.entry((e.section_id.clone(), sex, e.age_band)).or_default() += 1,
        }
        if held_only.take(&e.section_id, sex, e.age_band).is_none() {
            fits_without_others = false;
        }
    }
    if !short.is_empty() {
        let what: Vec<String> = short
            .iter()
            .map(|((section, sex, band), n)| {
                let at =
                    if section.is_empty() { "any section".to_string() } else { section.clone() };
                format!("{n} more {sex} {band} than {at} has free")
            })
            .collect();
        let message = format!(
            "{} has no room for everyone on {}: {}",
            destination.name(),
            m.name(),
            what.join("; ")
        );
        return Err(if fits_without_others {
            Error::Aborted(format!(
                "{message}; places were taken by movements approved meanwhile (it stays PLANNED)"
            ))
        } else {
            Error::FailedPrecondition { reason: "CAPACITY_EXCEEDED", message }
        });
    }
    for e in &m.manifest {
        sqlx::query(
            "UPDATE manifest_entries SET section_id = $1, sex = $2, age_band = $3, age = $4 \
             WHERE movement_id = $5 AND person_id = $6",
        )
        .bind(&e.section_id)
        .bind(e.sex.map_or("", |s| s.as_str()))
        .bind(e.age_band.as_str())
        .bind(i64::from(e.age))
        .bind(&m.id)
        .bind(&e.person_id)
        .execute(tx.conn())
        .await
        .db()?;
    }
    Ok(())
}

/// FAILED_PRECONDITION unless `f` receives people: not locked down, compromised or final.
fn check_receiving(f: &Facility) -> Result<()> {
    if matches!(f.security_status, SecurityStatus::Lockdown | SecurityStatus::Compromised)
        || f.security_status.is_final()
    {
        return Err(Error::FailedPrecondition {
            reason: "DESTINATION_NOT_RECEIVING",
            message: format!(
                "{} is {}; it receives no one until that changes",
                f.name(),
                f.security_status
            ),
        });
    }
    Ok(())
}

/// FAILED_PRECONDITION unless everyone on `m` is still held IN_CUSTODY at the source as the
/// registry records it (someone may have been hospitalised, marked missing or moved since);
/// refreshes their sex, age and band.
async fn still_at_source(tx: &mut Tx, m: &mut Movement, source: &Facility) -> Result<()> {
    let ids: Vec<String> = m.manifest.iter().map(|e| e.person_id.clone()).collect();
    let held: BTreeMap<String, Placement> =
        placements(tx, None, &ids).await?.into_iter().map(|p| (p.person_id.clone(), p)).collect();
    let year = current_year();
    let mut gone = Vec::new();
    for e in &mut m.manifest {
        match held.get(&e.person_id) {
            Some(p) if p.facility_id == source.id && p.custody_status == IN_CUSTODY => {
                e.sex = p.sex;
                e.age_band = p.band(year);
                e.age = p.age(year).unwrap_or(-1);
            }
            _ => gone.push(format!("persons/{}", e.person_id)),
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    Err(Error::FailedPrecondition {
        reason: "NOT_AT_SOURCE",
        message: format!(
            "no longer held IN_CUSTODY at {} as the registry records it: {}; abort this movement and plan another",
            source.name(),
            gone.join(", ")
        ),
    })
}

/// People ids of `entries` that appear more than once.
pub(crate) fn repeated(ids: &[String]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    ids.iter().enumerate().filter(|(_, p)| !seen.insert(p.as_str())).map(|(i, _)| i).collect()
}
