//! Tasks and diplomatic notes of requests: every statement about them. Each is seen by the
//! parties to its request (NOT_FOUND otherwise) and written with its audit entry and outbox
//! event in one commit.

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::AgencyKind;
use concord_platform::error::{Error, Result};
use concord_platform::fields::check_etag;
use concord_platform::idempotency;
use concord_platform::outbox::{self, NewEvent};
use concord_platform::sql::Sql;
use concord_platform::storage::{expect_one_row, SqlxResultExt, Tx};
use concord_platform::time::now_micros;
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parties, Request, Store};
use crate::domain::{may_complete_task, TaskKind, TaskState};

/// Type URL of task event payloads.
pub const TASK_TYPE_URL: &str = "type.googleapis.com/concord.requests.v1.Task";
/// Type URL of note event payloads.
pub const NOTE_TYPE_URL: &str = "type.googleapis.com/concord.requests.v1.Note";

const TASK_COLUMNS: &str =
    "id, request_id, kind, title, owner, person_id, due_time, state, result, \
     created_by, completed_by, create_time, complete_time, version";

const NOTE_COLUMNS: &str =
    "id, request_id, reference, sender, addressee, subject, body, document, send_time, create_time";

/// A task of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Id.
    pub id: String,
    /// The request's id.
    pub request_id: String,
    /// Kind.
    pub kind: TaskKind,
    /// What is to be done.
    pub title: String,
    /// Agency responsible.
    pub owner: String,
    /// Subject it is about, or empty.
    pub person_id: String,
    /// Micros.
    pub due_time: i64,
    /// State.
    pub state: TaskState,
    /// How it ended.
    pub result: String,
    /// Agency that created it.
    pub created_by: String,
    /// Agency that completed or cancelled it.
    pub completed_by: String,
    /// Micros.
    pub create_time: i64,
    /// Micros, 0 while open.
    pub complete_time: i64,
    /// Version, for etags.
    pub version: i64,
}

impl Task {
    /// `requests/{request}/tasks/{id}`.
    pub fn name(&self) -> String {
        format!("requests/{}/tasks/{}", self.request_id, self.id)
    }

    /// OPEN and past its due time at `now`.
    pub fn overdue(&self, now: i64) -> bool {
        self.state == TaskState::Open && self.due_time < now
    }
}

/// A diplomatic note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Id.
    pub id: String,
    /// The request's id.
    pub request_id: String,
    /// The note's own reference.
    pub reference: String,
    /// Agency that sent it.
    pub sender: String,
    /// State or agency addressed.
    pub addressee: String,
    /// Subject line.
    pub subject: String,
    /// Text.
    pub body: String,
    /// Signed document reference.
    pub document: String,
    /// Micros.
    pub send_time: i64,
    /// Micros.
    pub create_time: i64,
}

impl Note {
    /// `requests/{request}/notes/{id}`.
    pub fn name(&self) -> String {
        format!("requests/{}/notes/{}", self.request_id, self.id)
    }
}

fn stored<T>(value: &str, what: &str, f: impl Fn(&str) -> Option<T>) -> Result<T> {
    f(value).ok_or_else(|| Error::internal(anyhow::anyhow!("stored {what} '{value}'")))
}

fn task_from_row(r: &AnyRow) -> Result<Task> {
    let kind: String = r.try_get("kind").db()?;
    let state: String = r.try_get("state").db()?;
    Ok(Task {
        id: r.try_get("id").db()?,
        request_id: r.try_get("request_id").db()?,
        kind: stored(&kind, "task kind", TaskKind::parse)?,
        title: r.try_get("title").db()?,
        owner: r.try_get("owner").db()?,
        person_id: r.try_get("person_id").db()?,
        due_time: r.try_get("due_time").db()?,
        state: stored(&state, "task state", TaskState::parse)?,
        result: r.try_get("result").db()?,
        created_by: r.try_get("created_by").db()?,
        completed_by: r.try_get("completed_by").db()?,
        create_time: r.try_get("create_time").db()?,
        complete_time: r.try_get("complete_time").db()?,
        version: r.try_get("version").db()?,
    })
}

fn note_from_row(r: &AnyRow) -> Result<Note> {
    Ok(Note {
        id: r.try_get("id").db()?,
        request_id: r.try_get("request_id").db()?,
        reference: r.try_get("reference").db()?,
        sender: r.try_get("sender").db()?,
        addressee: r.try_get("addressee").db()?,
        subject: r.try_get("subject").db()?,
        body: r.try_get("body").db()?,
        document: r.try_get("document").db()?,
        send_time: r.try_get("send_time").db()?,
        create_time: r.try_get("create_time").db()?,
    })
}

/// The event of a change about `request` (none while it is a draft, which is its
/// requesting state's alone).
async fn publish(
    tx: &mut Tx,
    request: &Request,
    event_type: &'static str,
    resource_name: String,
    type_url: &str,
    payload: Vec<u8>,
) -> Result<()> {
    if request.submit_time == 0 {
        return Ok(());
    }
    outbox::append(
        tx,
        NewEvent {
            event_type,
            resource_name,
            scope_tags: Some(request.tags()),
            payload: prost_types::Any { type_url: type_url.into(), value: payload },
        },
    )
    .await
    .map(|_| ())
}

/// Where a listing of tasks looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Within<'a> {
    /// One request.
    Request(&'a str),
    /// Every request the caller is a party to.
    All,
}

impl Store {
    /// Adds a task to a request the caller is a party to that is not final.
    pub async fn create_task(
        &self,
        access: &Access,
        mut t: Task,
        request_id: Option<(String, String)>,
    ) -> Result<Task> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateTask", fp).await?
            {
                drop(tx);
                return self.get_task(access, &name).await;
            }
        }
        let (r, _) = self.party(tx.conn(), access, &t.request_id).await?;
        if r.state.is_final() {
            return Err(Error::FailedPrecondition {
                reason: "REQUEST_FINAL",
                message: format!(
                    "{} is {}: no task is added to a final request",
                    r.name(),
                    r.state
                ),
            });
        }
        if !t.person_id.is_empty() {
            let subject: Option<String> = sqlx::query_scalar(
                "SELECT person_id FROM subjects WHERE request_id = $1 AND person_id = $2",
            )
            .bind(&r.id)
            .bind(&t.person_id)
            .fetch_optional(tx.conn())
            .await
            .db()?;
            if subject.is_none() {
                return Err(Error::invalid(
                    "task.person",
                    format!("persons/{} is not a subject of {}", t.person_id, r.name()),
                ));
            }
        }
        let now = now_micros();
        t.id = uuid::Uuid::now_v7().to_string();
        t.state = TaskState::Open;
        t.created_by = access.principal.agency.clone();
        t.create_time = now;
        t.version = 1;
        sqlx::query(&format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&t.id)
        .bind(&t.request_id)
        .bind(t.kind.as_str())
        .bind(&t.title)
        .bind(&t.owner)
        .bind(&t.person_id)
        .bind(t.due_time)
        .bind(t.state.as_str())
        .bind(&t.result)
        .bind(&t.created_by)
        .bind(&t.completed_by)
        .bind(t.create_time)
        .bind(t.complete_time)
        .bind(t.version)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &t.name()).await?;
        }
        audit::append(&mut tx, &access.entry(t.name(), "*", "OK")).await?;
        let payload = crate::grpc::task_out(&t, now).encode_to_vec();
        publish(&mut tx, &r, "task.created", t.name(), TASK_TYPE_URL, payload).await?;
        tx.commit().await?;
        Ok(t)
    }

    /// One task (`requests/{request}/tasks/{task}`) of a request the caller is a party to.
    pub async fn get_task(&self, access: &Access, name: &str) -> Result<Task> {
        let (request, id) = split(name, "/tasks/")?;
        self.party(self.db.reader(), access, request).await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE request_id = $1 AND id = $2"
        ))
        .bind(request)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await
        .db()?;
        row.as_ref().map(task_from_row).transpose()?.ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Completes or cancels an OPEN task: by its owner, its creator or the coordinator.
    pub async fn complete_task(
        &self,
        access: &Access,
        name: &str,
        to: TaskState,
        result: String,
        expected_version: Option<i64>,
        request_id: Option<(String, String)>,
    ) -> Result<Task> {
        let (request, id) = split(name, "/tasks/")?;
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CompleteTask", fp)
                    .await?
            {
                drop(tx);
                return self.get_task(access, name).await;
            }
        }
        let (r, roles) = self.party(tx.conn(), access, request).await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE request_id = $1 AND id = $2"
        ))
        .bind(request)
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .db()?;
        let mut t = row
            .as_ref()
            .map(task_from_row)
            .transpose()?
            .ok_or_else(|| Error::NotFound(name.into()))?;
        let p = &access.principal;
        let coordinator =
            p.kind == AgencyKind::Coordinator && roles.contains(&crate::domain::Role::Coordinator);
        if !may_complete_task(&p.agency, coordinator, &t.owner, &t.created_by) {
            return Err(Error::PermissionDenied(format!(
                "{name} is completed by its owner ({}), its creator ({}) or the coordinator",
                t.owner, t.created_by
            )));
        }
        check_etag(name, t.version, expected_version)?;
        if t.state != TaskState::Open {
            return Err(Error::FailedPrecondition {
                reason: "TASK_FINAL",
                message: format!("{name} is {}, which is final", t.state),
            });
        }
        let now = now_micros();
        t.state = to;
        t.result = result;
        t.completed_by = p.agency.clone();
        t.complete_time = now;
        t.version += 1;
        let updated = sqlx::query(
            "UPDATE tasks SET state = $1, result = $2, completed_by = $3, complete_time = $4, \
             version = $5 WHERE request_id = $6 AND id = $7 AND version = $8",
        )
        .bind(t.state.as_str())
        .bind(&t.result)
        .bind(&t.completed_by)
        .bind(t.complete_time)
        .bind(t.version)
        .bind(&t.request_id)
        .bind(&t.id)
        .bind(t.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        expect_one_row(updated, name)?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &p.agency, rid, name).await?;
        }
        audit::append(&mut tx, &access.entry(name, "*", "OK")).await?;
        let payload = crate::grpc::task_out(&t, now).encode_to_vec();
        publish(&mut tx, &r, "task.completed", t.name(), TASK_TYPE_URL, payload).await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Tasks of one request, or of every request the caller is a party to, oldest first
    /// after `after`; with `overdue_at`, only those OPEN and due before it.
    pub async fn list_tasks(
        &self,
        access: &Access,
        within: Within<'_>,
        overdue_at: Option<i64>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Task>> {
        let cols =
            TASK_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        let mut sql = Sql::new(format!(
            "SELECT {cols} FROM tasks t JOIN requests r ON r.id = t.request_id WHERE "
        ));
        match within {
            Within::Request(id) => {
                self.party(self.db.reader(), access, id).await?;
                sql.push("t.request_id = ").bind_text(id);
            }
            Within::All => parties(&mut sql, access),
        }
        if let Some(now) = overdue_at {
            sql.push(" AND t.state = ").bind_text(TaskState::Open.as_str());
            sql.push(" AND t.due_time < ").bind_int(now);
        }
        if let Some(a) = after {
            sql.push(" AND t.id > ").bind_text(a);
        }
        sql.push(" ORDER BY t.id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(task_from_row).collect()
    }

    /// Records a note sent about a request the caller is a party to.
    pub async fn create_note(
        &self,
        access: &Access,
        mut n: Note,
        request_id: Option<(String, String)>,
    ) -> Result<Note> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateNote", fp).await?
            {
                drop(tx);
                return self.get_note(access, &name).await;
            }
        }
        let (r, _) = self.party(tx.conn(), access, &n.request_id).await?;
        n.id = uuid::Uuid::now_v7().to_string();
        n.sender = access.principal.agency.clone();
        n.create_time = now_micros();
        sqlx::query(&format!(
            "INSERT INTO notes ({NOTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&n.id)
        .bind(&n.request_id)
        .bind(&n.reference)
        .bind(&n.sender)
        .bind(&n.addressee)
        .bind(&n.subject)
        .bind(&n.body)
        .bind(&n.document)
        .bind(n.send_time)
        .bind(n.create_time)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &n.name()).await?;
        }
        audit::append(&mut tx, &access.entry(n.name(), "*", "OK")).await?;
        let payload = crate::grpc::note_out(&n).encode_to_vec();
        publish(&mut tx, &r, "note.created", n.name(), NOTE_TYPE_URL, payload).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// One note of a request the caller is a party to.
    pub async fn get_note(&self, access: &Access, name: &str) -> Result<Note> {
        let (request, id) = split(name, "/notes/")?;
        self.party(self.db.reader(), access, request).await?;
        let row = sqlx::query(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes WHERE request_id = $1 AND id = $2"
        ))
        .bind(request)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await
        .db()?;
        row.as_ref().map(note_from_row).transpose()?.ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Notes of a request the caller is a party to, oldest first after `after`.
    pub async fn list_notes(
        &self,
        access: &Access,
        request: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Note>> {
        self.party(self.db.reader(), access, request).await?;
        let mut sql = Sql::new(format!("SELECT {NOTE_COLUMNS} FROM notes WHERE request_id = "));
        sql.bind_text(request);
        if let Some(a) = after {
            sql.push(" AND id > ").bind_text(a);
        }
        sql.push(" ORDER BY id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(note_from_row).collect()
    }
}

/// `requests/{request}{sep}{id}` as (request, id).
fn split<'a>(name: &'a str, sep: &str) -> Result<(&'a str, &'a str)> {
    name.strip_prefix("requests/")
        .and_then(|r| r.split_once(sep))
        .filter(|(r, i)| !r.is_empty() && !i.is_empty() && !i.contains('/'))
        .ok_or_else(|| Error::NotFound(name.into()))
}
