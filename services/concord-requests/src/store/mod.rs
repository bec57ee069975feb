//! The requests' storage: every SQL statement and transaction of the service. Each change
//! loads the request with its subjects, checks the caller's roles in it and the lifecycle
//! ([`crate::domain::check`]), and writes the request, its subjects, its timeline entry, the
//! audit entry and the outbox event in one commit.

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::AgencyKind;
use concord_platform::error::{Error, Result};
use concord_platform::fields::check_etag;
use concord_platform::idempotency;
use concord_platform::outbox::{self, NewEvent};
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::{expect_one_row, Db, Migrations, SqlxResultExt, Tx};
use concord_platform::time::now_micros;
use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::domain::*;

pub mod statistics;
pub mod tasks;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's migrations, for [`Db::connect`].
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// Type URL of event payloads.
pub const REQUEST_TYPE_URL: &str = "type.googleapis.com/concord.requests.v1.Request";

const COLUMNS: &str = "id, type, requesting_state, requested_state, custodial_authority, receiving_state, \
     summary, flags, state, suspended_from, state_reason, protocol, created_by, submit_time, decide_time, \
     version, create_time, update_time";

/// The signed hand-over protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// Document reference.
    pub document: String,
    /// Signed for the custodial authority by.
    pub signed_for_custodian: String,
    /// Signed for the receiving state by.
    pub signed_for_receiver: String,
    /// Micros.
    pub sign_time: i64,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Id.
    pub id: String,
    /// Type.
    pub kind: RequestType,
    /// Requesting state.
    pub requesting_state: String,
    /// Requested state.
    pub requested_state: String,
    /// Custodial authority agency id.
    pub custodial_authority: String,
    /// Receiving state, or empty.
    pub receiving_state: String,
    /// Summary.
    pub summary: String,
    /// Humanitarian flags.
    pub flags: Vec<String>,
    /// State.
    pub state: State,
    /// State a suspended request resumes to.
    pub suspended_from: Option<State>,
    /// Why the last transition.
    pub state_reason: String,
    /// Protocol, once handed over.
    pub protocol: Option<Protocol>,
    /// Agency that created it.
    pub created_by: String,
    /// Micros, 0 until submitted.
    pub submit_time: i64,
    /// Micros, 0 until decided.
    pub decide_time: i64,
    /// Version, for etags.
    pub version: i64,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
    /// Subjects, by person id.
    pub subjects: Vec<Subject>,
}

impl Request {
    /// `requests/{id}`.
    pub fn name(&self) -> String {
        format!("requests/{}", self.id)
    }

    /// The caller's roles in the request (none: it is not a party, and sees nothing).
    pub fn roles(&self, access: &Access) -> Vec<Role> {
        let p = &access.principal;
        let mut roles = Vec::new();
        // Until it is first submitted a request is its requesting state's alone (a draft
        // withdrawn unsent stays so).
        let sent = self.submit_time != 0;
        if p.kind == AgencyKind::Coordinator && sent {
            roles.push(Role::Coordinator);
        }
        let state = p.state.as_deref().unwrap_or("");
        let of_state = matches!(p.kind, AgencyKind::StateMinistry | AgencyKind::Justice);
        if of_state && state == self.requesting_state {
            roles.push(Role::Requester);
        }
        if sent {
            if of_state && state == self.requested_state {
                roles.push(Role::Requested);
            }
            if of_state && !self.receiving_state.is_empty() && state == self.receiving_state {
                roles.push(Role::Receiver);
            }
            if p.kind == AgencyKind::CustodialAuthority && p.agency == self.custodial_authority {
                roles.push(Role::Custodian);
            }
        }
        roles
    }

    /// What the guards look at.
    pub fn facts(&self, protocol: bool) -> Facts<'_> {
        Facts {
            kind: self.kind,
            state: self.state,
            suspended_from: self.suspended_from,
            subjects: &self.subjects,
            protocol,
        }
    }

    /// Visibility tags of its events: its parties (states, and the custodial authority as
    /// `@agency`). Drafts have no events.
    pub(crate) fn tags(&self) -> String {
        let mut t = format!("|{}|{}|", self.requesting_state, self.requested_state);
        if !self.receiving_state.is_empty() {
            t.push_str(&self.receiving_state);
            t.push('|');
        }
        t.push('@');
        t.push_str(&self.custodial_authority);
        t.push('|');
        t
    }
}

fn parse<T>(value: &str, what: &str, f: impl Fn(&str) -> Option<T>) -> Result<T> {
    f(value).ok_or_else(|| Error::internal(anyhow::anyhow!("stored {what} '{value}'")))
}

fn from_row(r: &AnyRow) -> Result<Request> {
    let kind: String = r.try_get("type").db()?;
    let state: String = r.try_get("state").db()?;
    let back: String = r.try_get("suspended_from").db()?;
    let flags: String = r.try_get("flags").db()?;
    let protocol: String = r.try_get("protocol").db()?;
    Ok(Request {
        id: r.try_get("id").db()?,
        kind: parse(&kind, "request type", RequestType::parse)?,
        requesting_state: r.try_get("requesting_state").db()?,
        requested_state: r.try_get("requested_state").db()?,
        custodial_authority: r.try_get("custodial_authority").db()?,
        receiving_state: r.try_get("receiving_state").db()?,
        summary: r.try_get("summary").db()?,
        flags: serde_json::from_str(&flags).map_err(Error::internal)?,
        state: parse(&state, "request state", State::parse)?,
        suspended_from: State::parse(&back),
        state_reason: r.try_get("state_reason").db()?,
        protocol: if protocol.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&protocol).map_err(Error::internal)?)
        },
        created_by: r.try_get("created_by").db()?,
        submit_time: r.try_get("submit_time").db()?,
        decide_time: r.try_get("decide_time").db()?,
        version: r.try_get("version").db()?,
        create_time: r.try_get("create_time").db()?,
        update_time: r.try_get("update_time").db()?,
        subjects: Vec::new(),
    })
}

fn subject_from_row(r: &AnyRow) -> Result<Subject> {
    let outcome: String = r.try_get("outcome").db()?;
    let disposition: String = r.try_get("disposition").db()?;
    Ok(Subject {
        person_id: r.try_get("person_id").db()?,
        unit: r.try_get("unit").db()?,
        mother: r.try_get("mother").db()?,
        outcome: Outcome::parse(&outcome),
        disposition: Disposition::parse(&disposition),
        verified_by: r.try_get("verified_by").db()?,
        verify_time: r.try_get("verify_time").db()?,
        separation_consent: r.try_get("separation_consent").db()?,
        registry: RegistryRecord::parse(&r.try_get::<String, _>("registry_status").db()?),
        registry_error: r.try_get("registry_error").db()?,
    })
}

fn event(event_type: &'static str, r: &Request) -> NewEvent {
    NewEvent {
        event_type,
        resource_name: r.name(),
        scope_tags: Some(r.tags()),
        payload: prost_types::Any {
            type_url: REQUEST_TYPE_URL.into(),
            value: crate::grpc::request_out(r).encode_to_vec(),
        },
    }
}

/// A change of a request by a caller with `roles` in it.
pub type Change<'a> = Box<dyn FnOnce(&mut Request, &[Role]) -> Result<&'static str> + Send + 'a>;

/// The requests' storage.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
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

    async fn load<'c, E>(&self, exec: E, id: &str) -> Result<Option<Request>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM requests WHERE id = $1"))
            .bind(id)
            .fetch_optional(exec)
            .await
            .db()?;
        row.as_ref().map(from_row).transpose()
    }

    async fn subjects<'c, E>(&self, exec: E, ids: &[String]) -> Result<Vec<(String, Subject)>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(
            "SELECT request_id, person_id, unit, mother, outcome, disposition, verified_by, verify_time, \
             separation_consent, registry_status, registry_error FROM subjects WHERE request_id IN ",
        );
        sql.bind_list(ids.iter().map(|i| SqlValue::Text(i.clone())))
            .push(" ORDER BY request_id, person_id");
        let rows = sql.query(self.db.dialect()).fetch_all(exec).await.db()?;
        rows.iter().map(|r| Ok((r.try_get("request_id").db()?, subject_from_row(r)?))).collect()
    }

    /// Creates a DRAFT request.
    pub async fn create(
        &self,
        access: &Access,
        mut r: Request,
        request_id: Option<(String, String)>,
    ) -> Result<Request> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateRequest", fp)
                    .await?
            {
                drop(tx);
                return self.get(access, name.trim_start_matches("requests/")).await;
            }
        }
        let now = now_micros();
        r.id = uuid::Uuid::now_v7().to_string();
        r.state = State::Draft;
        r.version = 1;
        r.create_time = now;
        r.update_time = now;
        r.created_by = access.principal.agency.clone();
        save(&mut tx, &r, true).await?;
        timeline(&mut tx, &r, None, "created", &access.principal.agency).await?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &r.name()).await?;
        }
        // A draft is its requesting state's alone: no event until it is submitted.
        audit::append(&mut tx, &access.entry(r.name(), "*", "OK")).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// The request `id` (without its subjects) and the caller's roles in it: NOT_FOUND when
    /// it is not a party.
    pub(crate) async fn party<'c, E>(
        &self,
        exec: E,
        access: &Access,
        id: &str,
    ) -> Result<(Request, Vec<Role>)>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let r =
            self.load(exec, id).await?.ok_or_else(|| Error::NotFound(format!("requests/{id}")))?;
        let roles = r.roles(access);
        if roles.is_empty() {
            return Err(Error::NotFound(r.name()));
        }
        Ok((r, roles))
    }

    /// One request the caller is a party to.
    pub async fn get(&self, access: &Access, id: &str) -> Result<Request> {
        // The request and its subjects as of one moment, so its etag names what is returned
        // (the relay may be recording subjects meanwhile).
        let mut read = self.db.snapshot().await?;
        let (mut r, _) = self.party(read.conn(), access, id).await?;
        r.subjects = self
            .subjects(read.conn(), std::slice::from_ref(&r.id))
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        Ok(r)
    }

    /// Requests the caller is a party to, newest first, before `before`, matching `filter`
    /// and naming `person` as a subject.
    pub async fn list(
        &self,
        access: &Access,
        filter: Option<&Sql>,
        person: Option<&str>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Request>> {
        let mut sql = Sql::new(format!("SELECT {COLUMNS} FROM requests r WHERE "));
        parties(&mut sql, access);
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some(p) = person {
            sql.push(" AND EXISTS (SELECT 1 FROM subjects s WHERE s.request_id = r.id AND s.person_id = ")
                .bind_text(p)
                .push(")");
        }
        if let Some(b) = before {
            sql.push(" AND r.id < ").bind_text(b);
        }
        sql.push(" ORDER BY r.id DESC LIMIT ").bind_int(limit);
        // The page and its subjects as of one moment (see `get`).
        let mut read = self.db.snapshot().await?;
        let rows = sql.query(self.db.dialect()).fetch_all(read.conn()).await.db()?;
        let mut out: Vec<Request> = rows.iter().map(from_row).collect::<Result<_>>()?;
        let ids: Vec<String> = out.iter().map(|r| r.id.clone()).collect();
        let mut by_request: std::collections::BTreeMap<String, Vec<Subject>> = Default::default();
        for chunk in ids.chunks(concord_platform::sql::MAX_IN_LIST) {
            for (id, s) in self.subjects(read.conn(), chunk).await? {
                by_request.entry(id).or_default().push(s);
            }
        }
        for r in &mut out {
            r.subjects = by_request.remove(&r.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// Applies `change` to a request the caller is a party to: NOT_FOUND otherwise, ABORTED
    /// on an etag mismatch; the change returns the event type, or an error and nothing is
    /// stored.
    pub async fn change(
        &self,
        access: &Access,
        id: &str,
        method: &'static str,
        expected_version: Option<i64>,
        request_id: Option<(String, String)>,
        change: Change<'_>,
    ) -> Result<Request> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, method, fp).await?
            {
                drop(tx);
                return self.get(access, id).await;
            }
        }
        // The row's lock first, as the relay takes it: a concurrent write waits instead of
        // failing this change's compare-and-set.
        concord_platform::storage::lock_rows(&mut tx, "requests", &[id]).await?;
        let (mut r, roles) = self.party(tx.conn(), access, id).await?;
        check_etag(&r.name(), r.version, expected_version)?;
        r.subjects = self
            .subjects(tx.conn(), std::slice::from_ref(&r.id))
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let from = r.state;
        let event_type = change(&mut r, &roles)?;
        r.version += 1;
        r.update_time = now_micros();
        save(&mut tx, &r, false).await?;
        if r.state == State::HandedOver && from != State::HandedOver {
            // The relay records each accepted subject's hand-over in the registry.
            for s in r.subjects.iter_mut().filter(|s| s.accepted()) {
                s.registry = Some(RegistryRecord::Pending);
            }
            sqlx::query(
                "UPDATE subjects SET registry_status = 'PENDING' WHERE request_id = $1 AND outcome = $2",
            )
            .bind(&r.id)
            .bind(Outcome::Accepted.as_str())
            .execute(tx.conn())
            .await
            .db()?;
        }
        if r.state != from {
            timeline(&mut tx, &r, Some(from), &r.state_reason.clone(), &access.principal.agency)
                .await?;
        }
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &r.name()).await?;
        }
        audit::append(&mut tx, &access.entry(r.name(), "*", "OK")).await?;
        if from != State::Draft {
            outbox::append(&mut tx, event(event_type, &r)).await?;
        } else if r.state == State::Submitted {
            outbox::append(&mut tx, event("request.submitted", &r)).await?;
        }
        tx.commit().await?;
        Ok(r)
    }
}

/// The requests (alias `r`) the caller is a party to, as a condition: the rule of
/// [`Request::roles`], in SQL.
pub(crate) fn parties(sql: &mut Sql, access: &Access) {
    let p = &access.principal;
    let state = p.state.clone().unwrap_or_default();
    let of_state = matches!(p.kind, AgencyKind::StateMinistry | AgencyKind::Justice);
    sql.push("(");
    if p.kind == AgencyKind::Coordinator {
        sql.push("r.submit_time <> 0");
    } else if of_state && !state.is_empty() {
        sql.push("r.requesting_state = ").bind_text(state.clone());
        sql.push(" OR (r.submit_time <> 0 AND (r.requested_state = ").bind_text(state.clone());
        sql.push(" OR r.receiving_state = ").bind_text(state).push("))");
    } else if p.kind == AgencyKind::CustodialAuthority {
        sql.push("r.submit_time <> 0 AND r.custodial_authority = ").bind_text(p.agency.clone());
    } else {
        sql.push("1 = 0");
    }
    sql.push(")");
}

impl Store {
    /// After the relay recorded in `tx` what the registry did with subjects of request `id`
    /// (having locked its row first, [`concord_platform::storage::lock_rows`]): the
    /// request's new version (its etag changes) and the event saying so, in `tx`.
    pub(crate) async fn registry_recorded(&self, tx: &mut Tx, id: &str) -> Result<()> {
        let mut r = self
            .load(tx.conn(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("requests/{id}")))?;
        r.subjects = self
            .subjects(tx.conn(), std::slice::from_ref(&r.id))
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        r.update_time = now_micros();
        let updated = sqlx::query(
            "UPDATE requests SET version = version + 1, update_time = $1 WHERE id = $2 AND version = $3",
        )
        .bind(r.update_time)
        .bind(&r.id)
        .bind(r.version)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, &r.name())?;
        r.version += 1;
        outbox::append(tx, event("request.registry_recorded", &r)).await?;
        Ok(())
    }
}

/// Writes the request row (inserting it when `new`, else compare-and-set on its version) and
/// every subject.
async fn save(tx: &mut Tx, r: &Request, new: bool) -> Result<()> {
    let flags = serde_json::to_string(&r.flags).map_err(Error::internal)?;
    let protocol = match &r.protocol {
        Some(p) => serde_json::to_string(p).map_err(Error::internal)?,
        None => String::new(),
    };
    let back = r.suspended_from.map_or("", |s| s.as_str());
    if new {
        sqlx::query(&format!(
            "INSERT INTO requests ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ))
        .bind(&r.id)
        .bind(r.kind.as_str())
        .bind(&r.requesting_state)
        .bind(&r.requested_state)
        .bind(&r.custodial_authority)
        .bind(&r.receiving_state)
        .bind(&r.summary)
        .bind(flags)
        .bind(r.state.as_str())
        .bind(back)
        .bind(&r.state_reason)
        .bind(protocol)
        .bind(&r.created_by)
        .bind(r.submit_time)
        .bind(r.decide_time)
        .bind(r.version)
        .bind(r.create_time)
        .bind(r.update_time)
        .execute(tx.conn())
        .await
        .db()?;
    } else {
        let updated = sqlx::query(
            "UPDATE requests SET state = $1, suspended_from = $2, state_reason = $3, protocol = $4, \
             submit_time = $5, decide_time = $6, version = $7, update_time = $8 WHERE id = $9 AND version = $10",
        )
        .bind(r.state.as_str())
        .bind(back)
        .bind(&r.state_reason)
        .bind(protocol)
        .bind(r.submit_time)
        .bind(r.decide_time)
        .bind(r.version)
        .bind(r.update_time)
        .bind(&r.id)
        .bind(r.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, &r.name())?;
    }
    for s in &r.subjects {
        sqlx::query(
            "INSERT INTO subjects (request_id, person_id, unit, mother, outcome, disposition, verified_by, \
             verify_time, separation_consent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (request_id, person_id) DO UPDATE SET outcome = excluded.outcome, \
             disposition = excluded.disposition, verified_by = excluded.verified_by, \
             verify_time = excluded.verify_time, separation_consent = excluded.separation_consent",
        )
        .bind(&r.id)
        .bind(&s.person_id)
        .bind(&s.unit)
        .bind(&s.mother)
        .bind(s.outcome.map_or("", |o| o.as_str()))
        .bind(s.disposition.map_or("", |d| d.as_str()))
        .bind(&s.verified_by)
        .bind(s.verify_time)
        .bind(&s.separation_consent)
        .execute(tx.conn())
        .await
        .db()?;
    }
    Ok(())
}

/// One entry of a request's timeline (for statistics: when each state was reached).
async fn timeline(
    tx: &mut Tx,
    r: &Request,
    from: Option<State>,
    reason: &str,
    agency: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO request_transitions (id, request_id, from_state, to_state, reason, agency, record_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&r.id)
    .bind(from.map_or("", |s| s.as_str()))
    .bind(r.state.as_str())
    .bind(reason)
    .bind(agency)
    .bind(r.update_time)
    .execute(tx.conn())
    .await
    .db()?;
    Ok(())
}
