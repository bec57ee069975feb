//! Creating, reading, listing and updating people. Creation is batched: a single create is a
//! batch of one, and an import sends hundreds of rows per statement.

use std::sync::Arc;

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result};
use concord_platform::idempotency;
use concord_platform::outbox;
use concord_platform::sql::{insert_rows, Sql, SqlValue};
use concord_platform::storage::{SqlxResultExt, Tx};
use concord_platform::time::now_micros;

use super::{expect_one_row, fetch_person, person_from_row, scope_sql, Store, PERSON_COLUMNS};
use crate::domain::{Person, PersonData};
use crate::{events, search_keys};

/// A person to create.
#[derive(Debug, Clone)]
pub struct NewPerson {
    /// Validated fields.
    pub data: PersonData,
    /// Request id and request fingerprint, if the caller sent a request id.
    pub request_id: Option<(String, String)>,
}

/// What happened to one row of a batch.
#[derive(Debug)]
pub enum InsertOutcome {
    /// Stored now.
    Created(Box<Person>),
    /// Stored by an earlier call with the same request id: its resource name.
    Replayed(String),
    /// Refused (a request id reused for a different request).
    Rejected(Error),
}

impl Store {
    /// Creates people in one transaction, runs duplicate detection on them, and appends one
    /// outbox event each.
    pub async fn insert_persons(
        &self,
        access: &Access,
        rows: Vec<NewPerson>,
        method: &str,
    ) -> Result<Vec<InsertOutcome>> {
        let now = now_micros();
        // Ids are drawn before the request ids are claimed, so a claim records its resource
        // in the same statement and a retry finds it.
        let ids: Vec<String> = rows.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let mut outcomes: Vec<Option<InsertOutcome>> = (0..rows.len()).map(|_| None).collect();
        let mut claims: Vec<(String, String, String)> = Vec::new();
        let mut claim_rows: Vec<usize> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let Some((rid, fp)) = &row.request_id else { continue };
            // The same request id twice in one batch: the second is a replay of the first.
            if let Some(j) = claim_rows
                .iter()
                .copied()
                .find(|j| rows[*j].request_id.as_ref().map(|r| &r.0) == Some(rid))
            {
                outcomes[i] = Some(if rows[j].request_id.as_ref().map(|r| &r.1) == Some(fp) {
                    InsertOutcome::Replayed(format!("persons/{}", ids[j]))
                } else {
                    InsertOutcome::Rejected(Error::invalid(
                        "request_id",
                        format!("'{rid}' is used twice in this import for different rows"),
                    ))
                });
                continue;
            }
            claims.push((rid.clone(), fp.clone(), format!("persons/{}", ids[i])));
            claim_rows.push(i);
        }
        let mut tx = self.db.begin().await?;
        let results =
            idempotency::claim_many(&mut tx, &access.principal.agency, method, &claims).await?;
        for (i, r) in claim_rows.into_iter().zip(results) {
            match r {
                Ok(idempotency::Claim::New) => {}
                Ok(idempotency::Claim::Replay(name)) => {
                    outcomes[i] = Some(InsertOutcome::Replayed(name))
                }
                Err(e) => outcomes[i] = Some(InsertOutcome::Rejected(e)),
            }
        }
        let mut created = Vec::new();
        for ((i, row), id) in rows.into_iter().enumerate().zip(ids) {
            if outcomes[i].is_some() {
                continue;
            }
            created.push((i, Person::registered(id, row.data, now)));
        }
        let persons: Vec<&Person> = created.iter().map(|(_, p)| p).collect();
        write_person_rows(&mut tx, &persons).await?;
        write_index_rows(&mut tx, &persons).await?;
        super::duplicates::detect(&mut tx, &persons).await?;
        outbox::append_many(
            &mut tx,
            persons.iter().map(|p| events::person("person.created", p)).collect(),
        )
        .await?;
        let names: Vec<String> = persons.iter().map(|p| p.name()).collect();
        if !names.is_empty() {
            audit::append(&mut tx, &access.entry(names.join(" "), "*", "OK")).await?;
        }
        tx.commit().await?;
        for (i, p) in created {
            self.cached(&p);
            outcomes[i] = Some(InsertOutcome::Created(Box::new(p)));
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    InsertOutcome::Rejected(Error::internal(anyhow::anyhow!("row without outcome")))
                })
            })
            .collect())
    }

    /// Which of `ids` are in `scope` now.
    pub async fn visible_ids(
        &self,
        scope: &Scope,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        if *scope == Scope::All {
            return Ok(ids.iter().cloned().collect());
        }
        let mut out = std::collections::HashSet::new();
        for chunk in ids.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql = Sql::new("SELECT p.id FROM persons p WHERE p.id IN ");
            sql.bind_list(chunk.iter().map(|i| SqlValue::Text(i.clone())));
            sql.push(" AND ").append(&scope_sql(scope, "p"));
            let found: Vec<String> =
                sql.query_scalar(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
            out.extend(found);
        }
        Ok(out)
    }

    /// One person in the caller's scope.
    pub async fn get_person(&self, scope: &Scope, id: &str) -> Result<Person> {
        if let Some(hit) = self.cached_in_scope(scope, id) {
            return hit.map(|p| (*p).clone());
        }
        let ticket = self.cache.as_ref().map(|c| c.read_ticket());
        let p = fetch_person(self.db.dialect(), self.db.reader(), scope, id).await?;
        if let (Some(c), Some(t)) = (&self.cache, ticket) {
            c.put_read(&p, t);
        }
        Ok(p)
    }

    /// Whether the person `id` is in the caller's scope: NOT_FOUND otherwise, as
    /// [`Store::get_person`] answers. The check that comes before reading what is recorded
    /// about a person (its timeline, its records); from the cache when it holds them, without
    /// a copy of the person.
    pub async fn visible(&self, scope: &Scope, id: &str) -> Result<()> {
        match self.cached_in_scope(scope, id) {
            Some(hit) => hit.map(|_| ()),
            None => self.get_person(scope, id).await.map(|_| ()),
        }
    }

    /// The cached person `id`, if the cache holds them: NOT_FOUND when outside `scope`, by
    /// the same rule as the SQL scope.
    fn cached_in_scope(&self, scope: &Scope, id: &str) -> Option<Result<Arc<Person>>> {
        let hit = self.cache.as_ref()?.get(id)?;
        Some(if hit.with_subject(|s| scope.admits(s)) {
            Ok(hit)
        } else {
            Err(Error::NotFound(format!("persons/{id}")))
        })
    }

    /// People in scope matching `filter`, ordered by id (creation order), after `after`.
    pub async fn list_persons(
        &self,
        scope: &Scope,
        filter: Option<&Sql>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Person>> {
        let mut sql = Sql::new(format!("SELECT {PERSON_COLUMNS} FROM persons p WHERE "));
        sql.append(&scope_sql(scope, "p"));
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some(a) = after {
            sql.push(" AND p.id > ").bind_text(a);
        }
        sql.push(" ORDER BY p.id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(person_from_row).collect()
    }

    /// How many people in scope matching `filter` have each value of `column` (a column of
    /// `persons`), merged records aside, by value.
    pub async fn summarize(
        &self,
        scope: &Scope,
        filter: Option<&Sql>,
        column: &'static str,
    ) -> Result<Vec<(String, i64)>> {
        let mut sql =
            Sql::new(format!("SELECT p.{column} AS k, COUNT(*) AS n FROM persons p WHERE "));
        sql.append(&scope_sql(scope, "p"));
        sql.push(" AND p.merged_into = ''");
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        sql.push(&format!(" GROUP BY p.{column} ORDER BY p.{column}"));
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        use sqlx::Row;
        rows.iter().map(|r| Ok((r.try_get("k").db()?, r.try_get("n").db()?))).collect()
    }

    /// Applies `change` to the current fields of a person in scope, if `expected_version`
    /// matches, and re-runs duplicate detection.
    pub async fn update_person<F>(
        &self,
        access: &Access,
        id: &str,
        fields: &str,
        expected_version: Option<i64>,
        request_id: Option<(String, String)>,
        change: F,
    ) -> Result<Person>
    where
        F: FnOnce(&PersonData) -> Result<PersonData>,
    {
        let mut tx = self.db.begin().await?;
        let scope = access.write_scope.clone();
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(_) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "UpdatePerson", fp)
                    .await?
            {
                drop(tx);
                return self.get_person(&scope, id).await;
            }
        }
        let mut person = fetch_person(tx.dialect(), tx.conn(), &scope, id).await?;
        check_version(&person, expected_version)?;
        let old = person.clone();
        person.data = change(&person.data)?;
        person.version += 1;
        person.update_time = now_micros();
        let mut sql = Sql::new("UPDATE persons SET ");
        push_person_columns(&mut sql, &person);
        sql.push(" WHERE id = ")
            .bind_text(&person.id)
            .push(" AND version = ")
            .bind_int(person.version - 1);
        let updated = sql.query(tx.dialect()).execute(tx.conn()).await.db()?.rows_affected();
        expect_one_row(updated, &person.name())?;
        delete_index_rows(&mut tx, &old).await?;
        write_index_rows(&mut tx, &[&person]).await?;
        super::duplicates::detect(&mut tx, &[&person]).await?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &person.name()).await?;
        }
        outbox::append(&mut tx, events::person("person.updated", &person)).await?;
        audit::append(&mut tx, &access.entry(person.name(), fields, "OK")).await?;
        tx.commit().await?;
        self.cached(&person);
        Ok(person)
    }
}

/// ABORTED when the caller's etag is stale (AIP-154).
pub(crate) fn check_version(person: &Person, expected: Option<i64>) -> Result<()> {
    concord_platform::fields::check_etag(&person.name(), person.version, expected)
}

fn push_person_columns(sql: &mut Sql, p: &Person) {
    let doc = serde_json::to_string(&p.data).unwrap_or_default();
    let d = &p.data;
    sql.push("doc = ").bind_text(doc);
    sql.push(", display_name = ").bind_text(d.display_name());
    sql.push(", category = ").bind_text(d.category.as_str());
    sql.push(", sex = ").bind_text(d.sex.as_str());
    sql.push(", legal_status = ").bind_text(d.legal_status.map_or("", |l| l.as_str()));
    sql.push(", identity_confidence = ").bind_text(d.identity_confidence.as_str());
    sql.push(", birth_year = ").bind(birth_year(p));
    sql.push(", custody_status = ").bind_text(p.custody_status.as_str());
    sql.push(", facility_id = ").bind_text(&p.facility_id);
    sql.push(", section_id = ").bind_text(&p.section_id);
    sql.push(", merged_into = ").bind_text(&p.merged_into);
    sql.push(", receiving_state = ").bind_text(&p.receiving_state);
    sql.push(", disposition = ").bind_text(p.disposition.map_or("", |x| x.as_str()));
    sql.push(", version = ").bind_int(p.version);
    sql.push(", update_time = ").bind_int(p.update_time);
}

fn birth_year(p: &Person) -> SqlValue {
    p.data.birth_date.map_or(SqlValue::NullInt, |b| SqlValue::Int(i64::from(b.year)))
}

/// Writes the person rows themselves.
async fn write_person_rows(tx: &mut Tx, persons: &[&Person]) -> Result<()> {
    let rows: Vec<Vec<SqlValue>> = persons
        .iter()
        .map(|p| {
            let d = &p.data;
            vec![
                SqlValue::Text(p.id.clone()),
                SqlValue::Text(serde_json::to_string(d).unwrap_or_default()),
                SqlValue::Text(d.display_name().to_string()),
                SqlValue::Text(d.category.as_str().into()),
                SqlValue::Text(d.sex.as_str().into()),
                SqlValue::Text(d.legal_status.map_or("", |l| l.as_str()).into()),
                SqlValue::Text(d.identity_confidence.as_str().into()),
                birth_year(p),
                SqlValue::Text(p.custody_status.as_str().into()),
                SqlValue::Text(p.facility_id.clone()),
                SqlValue::Text(p.section_id.clone()),
                SqlValue::Text(p.merged_into.clone()),
                SqlValue::Text(p.receiving_state.clone()),
                SqlValue::Text(p.disposition.map_or("", |x| x.as_str()).into()),
                SqlValue::Int(p.version),
                SqlValue::Int(p.create_time),
                SqlValue::Int(p.update_time),
            ]
        })
        .collect();
    for stmt in insert_rows(
        "INSERT INTO persons (id, doc, display_name, category, sex, legal_status, identity_confidence, birth_year, \
         custody_status, facility_id, section_id, merged_into, receiving_state, disposition, version, create_time, update_time) VALUES ",
        &rows,
        "",
    ) {
        stmt.query(tx.dialect()).execute(tx.conn()).await.db()?;
    }
    Ok(())
}

/// The rows derived from people's fields: nationalities (scope), name keys and pairs (search)
/// and match keys (duplicate detection). Updates delete a person's old rows by recomputing
/// them from the old fields, so these tables need no index by person (each such index cost a
/// B-tree insert per row on every import).
#[derive(Default)]
struct IndexRows {
    nationalities: Vec<Vec<SqlValue>>,
    keys: Vec<Vec<SqlValue>>,
    pairs: Vec<Vec<SqlValue>>,
    matches: Vec<Vec<SqlValue>>,
}

fn index_rows(persons: &[&Person]) -> IndexRows {
    let mut rows = IndexRows::default();
    for p in persons {
        let id = || SqlValue::Text(p.id.clone());
        for s in p.scope_states() {
            rows.nationalities.push(vec![id(), SqlValue::Text(s)]);
        }
        let mut seen = std::collections::HashSet::new();
        let mut seen_pairs = std::collections::HashSet::new();
        for n in &p.data.names {
            let tokens = search_keys::tokens(&n.full_name);
            for pair in super::search::pairs(tokens.iter().map(|t| t.skeleton.as_str())) {
                if seen_pairs.insert(pair.clone()) {
                    rows.pairs.push(vec![SqlValue::Text(pair), id()]);
                }
            }
            for t in tokens {
                if seen.insert((t.skeleton.clone(), t.folded.clone())) {
                    rows.keys.push(vec![
                        SqlValue::Text(t.skeleton),
                        id(),
                        SqlValue::Text(t.folded),
                    ]);
                }
            }
        }
        for k in super::duplicates::match_keys(p) {
            rows.matches.push(vec![SqlValue::Text(k), id()]);
        }
    }
    rows
}

/// Writes the derived rows of `persons`.
pub(crate) async fn write_index_rows(tx: &mut Tx, persons: &[&Person]) -> Result<()> {
    let rows = index_rows(persons);
    let tables = [
        ("INSERT INTO person_nationalities (person_id, state) VALUES ", rows.nationalities),
        ("INSERT INTO person_name_keys (skeleton, person_id, folded) VALUES ", rows.keys),
        ("INSERT INTO person_match_keys (match_key, person_id) VALUES ", rows.matches),
        ("INSERT INTO person_name_pairs (pair, person_id) VALUES ", rows.pairs),
    ];
    for (head, rows) in tables {
        if rows.is_empty() {
            continue;
        }
        for stmt in insert_rows(head, &rows, "ON CONFLICT DO NOTHING") {
            stmt.query(tx.dialect()).execute(tx.conn()).await.db()?;
        }
    }
    Ok(())
}

/// Deletes the derived rows of `old` (its fields before an update). Match keys that do not
/// derive from the fields (identity documents) stay.
async fn delete_index_rows(tx: &mut Tx, old: &Person) -> Result<()> {
    let rows = index_rows(&[old]);
    let first =
        |rows: &[Vec<SqlValue>]| rows.iter().filter_map(|r| r.first().cloned()).collect::<Vec<_>>();
    sqlx::query("DELETE FROM person_nationalities WHERE person_id = $1")
        .bind(&old.id)
        .execute(tx.conn())
        .await
        .db()?;
    let tables = [
        ("person_name_keys", "skeleton", first(&rows.keys)),
        ("person_name_pairs", "pair", first(&rows.pairs)),
        ("person_match_keys", "match_key", first(&rows.matches)),
    ];
    for (table, column, values) in tables {
        for chunk in values.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql = Sql::new(format!("DELETE FROM {table} WHERE person_id = "));
            sql.bind_text(&old.id).push(&format!(" AND {column} IN ")).bind_list(chunk.to_vec());
            sql.query(tx.dialect()).execute(tx.conn()).await.db()?;
        }
    }
    Ok(())
}
