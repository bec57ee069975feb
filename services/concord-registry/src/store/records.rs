//! Records that hang off a person: relationships, identity documents, identity verifications
//! and consent records, plus households. Their bodies are stored as the contract's own
//! encoding (opaque here); the store only knows whom a record is about, which is what scope
//! and listing need.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result};
use concord_platform::policy::FieldClass;
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::now_micros;
use concord_platform::{idempotency, outbox};
use sqlx::Row;

use super::{fetch_person, Store};
use crate::events;

concord_platform::named_enum! {
    /// Kinds of record.
    pub enum RecordKind("") { Relationship = "relationship", Document = "document", Verification = "verification", Consent = "consent" }
}

impl RecordKind {
    /// The class of fields a record of this kind is: who may read and write it.
    pub fn field_class(self) -> FieldClass {
        match self {
            RecordKind::Relationship => FieldClass::Identity,
            RecordKind::Document | RecordKind::Verification => FieldClass::Documents,
            RecordKind::Consent => FieldClass::Welfare,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: RecordKind,
    /// Whom it is about.
    pub person_id: String,
    /// The other person (relationships), or empty.
    pub other_person_id: String,
    /// Encoded body.
    pub body: Vec<u8>,
    /// Micros.
    pub create_time: i64,
}

/// A household.
#[derive(Debug, Clone)]
pub struct Household {
    /// Id.
    pub id: String,
    /// Head's person id or empty.
    pub head: String,
    /// Member person ids.
    pub members: Vec<String>,
    /// Micros.
    pub create_time: i64,
}

impl Store {
    /// Stores a record about `person_id` (and `other_person_id`), both of which must be in the
    /// caller's scope. `match_key` indexes it for duplicate detection (documents).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_record(
        &self,
        access: &Access,
        kind: RecordKind,
        person_id: &str,
        other_person_id: &str,
        body: Vec<u8>,
        match_key: Option<String>,
        request_id: Option<(String, String)>,
    ) -> Result<Record> {
        let scope = access.write_scope.clone();
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            let method = format!("Create{kind}");
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, &method, fp).await?
            {
                drop(tx);
                return self.get_record(&scope, &name).await;
            }
        }
        fetch_person(tx.dialect(), tx.conn(), &scope, person_id).await?;
        if !other_person_id.is_empty() {
            fetch_person(tx.dialect(), tx.conn(), &scope, other_person_id).await?;
        }
        let rec = Record {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            person_id: person_id.to_string(),
            other_person_id: other_person_id.to_string(),
            body,
            create_time: now_micros(),
        };
        sqlx::query("INSERT INTO person_records (id, kind, person_id, other_person_id, body, create_time) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&rec.id)
            .bind(kind.as_str())
            .bind(&rec.person_id)
            .bind(&rec.other_person_id)
            .bind(STANDARD.encode(&rec.body))
            .bind(rec.create_time)
            .execute(tx.conn())
            .await
            .db()?;
        if let Some(key) = match_key {
            sqlx::query("INSERT INTO person_match_keys (match_key, person_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&key)
                .bind(person_id)
                .execute(tx.conn())
                .await
                .db()?;
            super::duplicates::detect_keys(
                &mut tx,
                vec![(person_id.to_string(), BTreeSet::from([key]))],
            )
            .await?;
        }
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &rec.id).await?;
        }
        audit::append(
            &mut tx,
            &access.entry(format!("persons/{person_id}"), kind.field_class().as_str(), "OK"),
        )
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn get_record(&self, scope: &Scope, id: &str) -> Result<Record> {
        let row = sqlx::query("SELECT id, kind, person_id, other_person_id, body, create_time FROM person_records WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.reader())
            .await
            .db()?
            .ok_or_else(|| Error::NotFound(format!("record {id}")))?;
        let rec = record_from_row(&row)?;
        self.visible(scope, &rec.person_id).await?;
        Ok(rec)
    }

    /// Records of `kind` about a person in scope (either side, for relationships), oldest
    /// first. For relationships, the other side must be in scope too.
    pub async fn list_records(
        &self,
        scope: &Scope,
        kind: RecordKind,
        person_id: &str,
    ) -> Result<Vec<Record>> {
        self.visible(scope, person_id).await?;
        let rows = sqlx::query(
            "SELECT id, kind, person_id, other_person_id, body, create_time FROM person_records \
             WHERE kind = $1 AND (person_id = $2 OR other_person_id = $2) ORDER BY id LIMIT 1000",
        )
        .bind(kind.as_str())
        .bind(person_id)
        .fetch_all(self.db.reader())
        .await
        .db()?;
        let mut out = Vec::new();
        for r in &rows {
            let rec = record_from_row(r)?;
            let other =
                if rec.person_id == person_id { &rec.other_person_id } else { &rec.person_id };
            if !other.is_empty() && self.visible(scope, other).await.is_err() {
                continue;
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Creates a household; every member must be in scope.
    pub async fn create_household(
        &self,
        access: &Access,
        head: &str,
        members: &[String],
        request_id: Option<(String, String)>,
    ) -> Result<Household> {
        let scope = access.write_scope.clone();
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(id) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "CreateHousehold", fp)
                    .await?
            {
                drop(tx);
                return self.get_household(&scope, &id).await;
            }
        }
        let mut people = Vec::with_capacity(members.len());
        for m in members {
            people.push(fetch_person(tx.dialect(), tx.conn(), &scope, m).await?);
        }
        let h = Household {
            id: uuid::Uuid::now_v7().to_string(),
            head: head.to_string(),
            members: members.to_vec(),
            create_time: now_micros(),
        };
        sqlx::query("INSERT INTO households (id, head, create_time) VALUES ($1, $2, $3)")
            .bind(&h.id)
            .bind(&h.head)
            .bind(h.create_time)
            .execute(tx.conn())
            .await
            .db()?;
        for m in members {
            sqlx::query("INSERT INTO household_members (household_id, person_id) VALUES ($1, $2)")
                .bind(&h.id)
                .bind(m)
                .execute(tx.conn())
                .await
                .db()?;
        }
        // Each member carries the household they last joined, and their watchers hear of it.
        for p in &mut people {
            p.household = h.id.clone();
            p.version += 1;
            p.update_time = h.create_time;
            let updated = sqlx::query(
                "UPDATE persons SET household = $1, version = $2, update_time = $3 WHERE id = $4 AND version = $5",
            )
            .bind(&p.household)
            .bind(p.version)
            .bind(p.update_time)
            .bind(&p.id)
            .bind(p.version - 1)
            .execute(tx.conn())
            .await
            .db()?
            .rows_affected();
            super::expect_one_row(updated, &p.name())?;
            outbox::append(&mut tx, events::person("person.updated", p)).await?;
        }
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &h.id).await?;
        }
        audit::append(&mut tx, &access.entry(format!("households/{}", h.id), "identity", "OK"))
            .await?;
        tx.commit().await?;
        for p in &people {
            self.cached(p);
        }
        Ok(h)
    }

    /// A household whose members are all in scope; NOT_FOUND otherwise, so that a household
    /// does not reveal people the caller may not see.
    pub async fn get_household(&self, scope: &Scope, id: &str) -> Result<Household> {
        let row = sqlx::query("SELECT id, head, create_time FROM households WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.reader())
            .await
            .db()?
            .ok_or_else(|| Error::NotFound(format!("households/{id}")))?;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT person_id FROM household_members WHERE household_id = $1 ORDER BY person_id",
        )
        .bind(id)
        .fetch_all(self.db.reader())
        .await
        .db()?;
        for m in &members {
            self.visible(scope, m)
                .await
                .map_err(|_| Error::NotFound(format!("households/{id}")))?;
        }
        Ok(Household {
            id: row.try_get("id").db()?,
            head: row.try_get("head").db()?,
            members,
            create_time: row.try_get("create_time").db()?,
        })
    }
}

fn record_from_row(r: &sqlx::any::AnyRow) -> Result<Record> {
    let kind: String = r.try_get("kind").db()?;
    let body: String = r.try_get("body").db()?;
    Ok(Record {
        id: r.try_get("id").db()?,
        kind: RecordKind::parse(&kind)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored record kind '{kind}'")))?,
        person_id: r.try_get("person_id").db()?,
        other_person_id: r.try_get("other_person_id").db()?,
        body: STANDARD.decode(body).map_err(Error::internal)?,
        create_time: r.try_get("create_time").db()?,
    })
}
