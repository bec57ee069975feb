//! Duplicate detection and review. Detection looks up exact keys (name signatures built from
//! transliteration skeletons, biometric and document references) in an index, so it costs a
//! few index probes per person even in a bulk import; candidates are then scored on birth year
//! and nationality. Reviewers reject a candidate or merge the pair; a merge only marks the
//! duplicate as merged into the survivor, so both histories stay and a merge can be undone.

use std::collections::{BTreeSet, HashMap};

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result};
use concord_platform::outbox;
use concord_platform::sql::{insert_rows, Sql, SqlValue};
use concord_platform::storage::{SqlxResultExt, Tx};
use concord_platform::time::now_micros;
use sqlx::Row;

use super::{expect_one_row, fetch_person, scope_sql, Store};
use crate::domain::{DuplicateCandidate, DuplicateState, Person};
use crate::{events, search_keys};

/// Lowest score recorded as a candidate.
const THRESHOLD: f64 = 0.5;

/// Exact keys under which a person is indexed for duplicate detection.
pub(crate) fn match_keys(p: &Person) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for n in &p.data.names {
        let sk: Vec<String> =
            search_keys::tokens(&n.full_name).into_iter().map(|t| t.skeleton).collect();
        if sk.is_empty() {
            continue;
        }
        // The whole name, order-free: transliteration variants of the same name share it.
        // Partial matches (first and last name only) are left to search: in a population
        // where a few hundred names recur, they would flood reviewers with candidates.
        let mut sorted = sk;
        sorted.sort();
        keys.insert(format!("name:{}", sorted.join(" ")));
    }
    for b in &p.data.biometric_references {
        keys.insert(format!("bio:{}:{}", b.system, b.reference));
    }
    keys
}

fn key_weight(key: &str) -> (f64, &'static str) {
    match key.split(':').next() {
        Some("bio") => (0.9, "biometric"),
        Some("doc") => (0.9, "document"),
        _ => (0.5, "name"),
    }
}

struct Facts {
    birth_year: Option<i64>,
    states: BTreeSet<String>,
}

/// Finds and records candidates for `persons` (already written, with their match keys).
pub(crate) async fn detect(tx: &mut Tx, persons: &[&Person]) -> Result<()> {
    detect_keys(tx, persons.iter().map(|p| (p.id.clone(), match_keys(p))).collect()).await
}

/// Finds and records candidates for people by explicit keys (for example a new document).
pub(crate) async fn detect_keys(tx: &mut Tx, keyed: Vec<(String, BTreeSet<String>)>) -> Result<()> {
    let all_keys: BTreeSet<&String> = keyed.iter().flat_map(|(_, k)| k.iter()).collect();
    if all_keys.is_empty() {
        return Ok(());
    }
    // key -> people holding it (the batch's own rows included).
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    let keys: Vec<&String> = all_keys.into_iter().collect();
    for chunk in keys.chunks(concord_platform::sql::MAX_IN_LIST) {
        let mut sql =
            Sql::new("SELECT match_key, person_id FROM person_match_keys WHERE match_key IN ");
        sql.bind_list(chunk.iter().map(|k| SqlValue::Text((*k).clone())));
        for row in sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()? {
            holders
                .entry(row.try_get("match_key").db()?)
                .or_default()
                .push(row.try_get("person_id").db()?);
        }
    }
    // (person, other) -> (score, reasons)
    let mut pairs: HashMap<(String, String), (f64, BTreeSet<&'static str>)> = HashMap::new();
    for (id, keys) in &keyed {
        for k in keys {
            let (w, reason) = key_weight(k);
            for other in holders.get(k).into_iter().flatten() {
                if other == id {
                    continue;
                }
                // One candidate per unordered pair: the newer record (larger UUIDv7) is `person`.
                let pair = if id > other {
                    (id.clone(), other.clone())
                } else {
                    (other.clone(), id.clone())
                };
                let e = pairs.entry(pair).or_insert((0.0, BTreeSet::new()));
                e.0 = f64::max(e.0, w);
                e.1.insert(reason);
            }
        }
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let ids: BTreeSet<&String> = pairs.keys().flat_map(|(a, b)| [a, b]).collect();
    let mut facts: HashMap<String, Facts> = HashMap::new();
    let id_list: Vec<&String> = ids.into_iter().collect();
    for chunk in id_list.chunks(concord_platform::sql::MAX_IN_LIST) {
        let mut sql = Sql::new(
            "SELECT p.id, p.birth_year, n.state FROM persons p LEFT JOIN person_nationalities n ON n.person_id = p.id WHERE p.id IN ",
        );
        sql.bind_list(chunk.iter().map(|k| SqlValue::Text((*k).clone())));
        for row in sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()? {
            let id: String = row.try_get("id").db()?;
            let f = facts.entry(id).or_insert(Facts {
                birth_year: row.try_get("birth_year").db()?,
                states: BTreeSet::new(),
            });
            if let Some(s) = row.try_get::<Option<String>, _>("state").db()? {
                f.states.insert(s);
            }
        }
    }
    let now = now_micros();
    let mut rows = Vec::new();
    for ((a, b), (base, mut reasons)) in pairs {
        let (Some(fa), Some(fb)) = (facts.get(&a), facts.get(&b)) else { continue };
        let mut score = base;
        match (fa.birth_year, fb.birth_year) {
            (Some(x), Some(y)) if (x - y).abs() <= 2 => {
                score += 0.2;
                reasons.insert("birth_date");
            }
            (Some(_), Some(_)) => score -= 0.3,
            _ => {}
        }
        if fa.states.intersection(&fb.states).next().is_some() {
            score += 0.1;
            reasons.insert("nationality");
        }
        let score = score.clamp(0.0, 1.0);
        if score < THRESHOLD {
            continue;
        }
        rows.push(vec![
            SqlValue::Text(uuid::Uuid::now_v7().to_string()),
            SqlValue::Text(a),
            SqlValue::Text(b),
            SqlValue::Float(score),
            SqlValue::Text(reasons.into_iter().collect::<Vec<_>>().join(",")),
            SqlValue::Text(DuplicateState::Open.as_str().into()),
            SqlValue::Text(String::new()),
            SqlValue::Text(String::new()),
            SqlValue::Int(1),
            SqlValue::Int(now),
            SqlValue::Int(now),
        ]);
    }
    for stmt in insert_rows(
        "INSERT INTO duplicate_candidates (id, person_id, other_person_id, score, reasons, state, surviving_person_id, \
         review_reason, version, create_time, update_time) VALUES ",
        &rows,
        "ON CONFLICT (person_id, other_person_id) DO NOTHING",
    ) {
        stmt.query(tx.dialect()).execute(tx.conn()).await.db()?;
    }
    Ok(())
}

const CANDIDATE_COLUMNS: &str =
    "d.id, d.person_id, d.other_person_id, d.score, d.reasons, d.state, \
    d.surviving_person_id, d.review_reason, d.version, d.create_time, d.update_time";

fn candidate_from_row(row: &sqlx::any::AnyRow) -> Result<DuplicateCandidate> {
    let state: String = row.try_get("state").db()?;
    let reasons: String = row.try_get("reasons").db()?;
    Ok(DuplicateCandidate {
        id: row.try_get("id").db()?,
        person_id: row.try_get("person_id").db()?,
        other_person_id: row.try_get("other_person_id").db()?,
        score: row.try_get("score").db()?,
        reasons: reasons.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        state: DuplicateState::parse(&state).unwrap_or(DuplicateState::Open),
        surviving_person_id: row.try_get("surviving_person_id").db()?,
        review_reason: row.try_get("review_reason").db()?,
        create_time: row.try_get("create_time").db()?,
        update_time: row.try_get("update_time").db()?,
        version: row.try_get("version").db()?,
    })
}

/// Candidates visible in `scope`: both people must be visible.
fn visible(scope: &Scope) -> Sql {
    let mut sql = Sql::new("EXISTS (SELECT 1 FROM persons p WHERE p.id = d.person_id AND ");
    sql.append(&scope_sql(scope, "p"))
        .push(") AND EXISTS (SELECT 1 FROM persons q WHERE q.id = d.other_person_id AND ")
        .append(&scope_sql(scope, "q"))
        .push(")");
    sql
}

impl Store {
    /// Candidates in scope, newest first, after the `before` id.
    pub async fn list_candidates(
        &self,
        scope: &Scope,
        filter: Option<&Sql>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DuplicateCandidate>> {
        let mut sql =
            Sql::new(format!("SELECT {CANDIDATE_COLUMNS} FROM duplicate_candidates d WHERE "));
        sql.append(&visible(scope));
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some(b) = before {
            sql.push(" AND d.id < ").bind_text(b);
        }
        sql.push(" ORDER BY d.id DESC LIMIT ").bind_int(limit);
        sql.query(self.db.dialect())
            .fetch_all(self.db.reader())
            .await
            .db()?
            .iter()
            .map(candidate_from_row)
            .collect()
    }

    /// Applies a review decision: `Invalid`, `Merged` (with the survivor) or back to `Open`
    /// (undoing a merge).
    pub async fn review_candidate(
        &self,
        access: &Access,
        id: &str,
        to: DuplicateState,
        surviving: Option<&str>,
        reason: &str,
        expected_version: Option<i64>,
    ) -> Result<DuplicateCandidate> {
        let scope = access.write_scope.clone();
        let mut tx = self.db.begin().await?;
        let mut sql = Sql::new(format!(
            "SELECT {CANDIDATE_COLUMNS} FROM duplicate_candidates d WHERE d.id = "
        ));
        sql.bind_text(id).push(" AND ").append(&visible(&scope));
        let row = sql.query(tx.dialect()).fetch_optional(tx.conn()).await.db()?;
        let mut c = match row {
            Some(r) => candidate_from_row(&r)?,
            None => return Err(Error::NotFound(format!("duplicateCandidates/{id}"))),
        };
        if let Some(v) = expected_version {
            if v != c.version {
                return Err(Error::Aborted(format!(
                    "etag mismatch: duplicateCandidates/{id} is at \"{}\"",
                    c.version
                )));
            }
        }
        let allowed = matches!(
            (c.state, to),
            (DuplicateState::Open, DuplicateState::Invalid | DuplicateState::Merged)
                | (DuplicateState::Merged, DuplicateState::Open)
        );
        if !allowed {
            return Err(Error::FailedPrecondition {
                reason: "INVALID_DUPLICATE_TRANSITION",
                message: format!(
                    "duplicateCandidates/{id} is {}; it cannot become {}",
                    c.state, to
                ),
            });
        }
        let now = now_micros();
        let mut changed = None;
        match to {
            DuplicateState::Merged => {
                let survivor = surviving.unwrap_or_default();
                let duplicate = if survivor == c.person_id {
                    c.other_person_id.clone()
                } else if survivor == c.other_person_id {
                    c.person_id.clone()
                } else {
                    return Err(Error::invalid(
                        "surviving_person",
                        format!("must be persons/{} or persons/{}", c.person_id, c.other_person_id),
                    ));
                };
                let dup = fetch_person(tx.dialect(), tx.conn(), &scope, &duplicate).await?;
                let surv = fetch_person(tx.dialect(), tx.conn(), &scope, survivor).await?;
                // Merges never chain: a record merged away cannot absorb another, so following
                // merged_into always ends after one step and never loops.
                for (p, role) in [(&dup, "duplicate"), (&surv, "surviving person")] {
                    if !p.merged_into.is_empty() {
                        return Err(Error::FailedPrecondition {
                            reason: "ALREADY_MERGED",
                            message: format!(
                                "the {role} {} is itself merged into another record; unmerge it first",
                                p.name()
                            ),
                        });
                    }
                }
                changed = Some(
                    set_merged_into(&mut tx, &scope, &duplicate, survivor, "person.merged").await?,
                );
                c.surviving_person_id = survivor.to_string();
            }
            DuplicateState::Open => {
                let duplicate = if c.surviving_person_id == c.person_id {
                    c.other_person_id.clone()
                } else {
                    c.person_id.clone()
                };
                changed = Some(
                    set_merged_into(&mut tx, &scope, &duplicate, "", "person.unmerged").await?,
                );
                c.surviving_person_id.clear();
            }
            DuplicateState::Invalid => {}
        }
        c.state = to;
        c.review_reason = reason.to_string();
        c.version += 1;
        c.update_time = now;
        let updated = sqlx::query(
            "UPDATE duplicate_candidates SET state = $1, surviving_person_id = $2, review_reason = $3, version = $4, update_time = $5 WHERE id = $6 AND version = $7",
        )
        .bind(c.state.as_str())
        .bind(&c.surviving_person_id)
        .bind(&c.review_reason)
        .bind(c.version)
        .bind(now)
        .bind(&c.id)
        .bind(c.version - 1)
        .execute(tx.conn())
        .await
        .db()?
        .rows_affected();
        // The merge in the same transaction rolls back with it.
        expect_one_row(updated, &format!("duplicateCandidates/{id}"))?;
        audit::append(
            &mut tx,
            &access.entry(format!("duplicateCandidates/{id}"), "identity", "OK"),
        )
        .await?;
        tx.commit().await?;
        if let Some(p) = &changed {
            self.cached(p);
        }
        Ok(c)
    }
}

async fn set_merged_into(
    tx: &mut Tx,
    scope: &Scope,
    id: &str,
    into: &str,
    event: &'static str,
) -> Result<Person> {
    let mut p = fetch_person(tx.dialect(), tx.conn(), scope, id).await?;
    p.merged_into = into.to_string();
    p.version += 1;
    p.update_time = now_micros();
    let updated = sqlx::query(
        "UPDATE persons SET merged_into = $1, version = $2, update_time = $3 WHERE id = $4 AND version = $5",
    )
    .bind(&p.merged_into)
    .bind(p.version)
    .bind(p.update_time)
    .bind(&p.id)
    .bind(p.version - 1)
    .execute(tx.conn())
    .await
    .db()?
    .rows_affected();
    expect_one_row(updated, &p.name())?;
    outbox::append(tx, events::person(event, &p)).await?;
    Ok(p)
}
