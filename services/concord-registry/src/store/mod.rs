//! The registry's storage: every SQL statement of the service, and every transaction.
//!
//! Each query of people takes the caller's [`Scope`] and puts it in the SQL, so that paging,
//! counts and search ranks never see records the caller may not see.

mod cache;
mod custody;
mod duplicates;
mod grants;
mod persons;
mod records;
mod search;

pub use grants::{AccessGrant, GrantKind};
pub use persons::{InsertOutcome, NewPerson};
pub use records::{Household, Record, RecordKind};
pub use search::SearchHit;

use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result};
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::{Db, Dialect, Migrations, SqlxResultExt};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::domain::{CustodyStatus, Disposition, Person, PersonData};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The registry's migrations, for [`Db::connect`].
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// The registry's storage.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// Read-through cache of people; SQLite only (see `cache`).
    cache: Option<std::sync::Arc<cache::PersonCache>>,
    /// What is shared with each caller; SQLite only (see `grants`).
    shared_cache: Option<std::sync::Arc<grants::SharedCache>>,
}

/// People kept in the cache of the embedded deployment.
const CACHE_CAPACITY: usize = 200_000;

/// Columns of `persons` read into a [`Person`], prefixed with `p.`.
const PERSON_COLUMNS: &str =
    "p.id, p.doc, p.custody_status, p.facility_id, p.section_id, p.merged_into, \
     p.receiving_state, p.disposition, p.household, p.version, p.create_time, p.update_time";

impl Store {
    /// Wraps a connected database.
    pub fn new(db: Db) -> Self {
        let sqlite = db.dialect() == Dialect::Sqlite;
        let cache = sqlite.then(|| std::sync::Arc::new(cache::PersonCache::new(CACHE_CAPACITY)));
        let shared_cache = sqlite.then(|| std::sync::Arc::new(grants::SharedCache::default()));
        Self { db, cache, shared_cache }
    }

    /// Records a person's new version after its transaction committed.
    pub(crate) fn cached(&self, p: &Person) {
        if let Some(c) = &self.cache {
            c.put_written(p);
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

pub(crate) use concord_platform::storage::expect_one_row;

/// `1 = 1` for everyone, else the union of the visible sets as a test on the persons row
/// aliased `alias`: the same rule as [`Scope::admits`].
pub(crate) fn scope_sql(scope: &Scope, alias: &str) -> Sql {
    let v = match scope {
        Scope::All => return Sql::new("1 = 1"),
        Scope::Only(v) => v,
    };
    let mut parts: Vec<Sql> = Vec::new();
    if !v.states.is_empty() {
        let mut sql = Sql::new(format!(
            "EXISTS (SELECT 1 FROM person_nationalities sn WHERE sn.person_id = {alias}.id AND sn.state IN "
        ));
        sql.bind_list(v.states.iter().map(|s| SqlValue::Text(s.clone()))).push(")");
        parts.push(sql);
    }
    if !v.facilities.is_empty() {
        let mut sql = Sql::new(format!("{alias}.facility_id IN "));
        sql.bind_list(v.facilities.iter().map(|f| SqlValue::Text(f.clone())));
        parts.push(sql);
    }
    for chunk in v.persons.chunks(concord_platform::sql::MAX_IN_LIST) {
        let mut sql = Sql::new(format!("{alias}.id IN "));
        sql.bind_list(chunk.iter().map(|p| SqlValue::Text(p.clone())));
        parts.push(sql);
    }
    for (state, ids) in v.shared_by_state() {
        for chunk in ids.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql = Sql::new(format!("({alias}.id IN "));
            sql.bind_list(chunk.iter().map(|p| SqlValue::Text(p.to_string()))).push(&format!(
                " AND EXISTS (SELECT 1 FROM person_nationalities sg WHERE sg.person_id = {alias}.id AND sg.state = "
            ));
            sql.bind_text(state).push("))");
            parts.push(sql);
        }
    }
    for (state, category) in &v.categories {
        let mut sql = Sql::new(format!("({alias}.category = "));
        sql.bind_text(category).push(&format!(
            " AND EXISTS (SELECT 1 FROM person_nationalities sc WHERE sc.person_id = {alias}.id AND sc.state = "
        ));
        sql.bind_text(state).push("))");
        parts.push(sql);
    }
    if parts.is_empty() {
        return Sql::new("1 = 0");
    }
    let mut sql = Sql::new("(");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.append(part);
    }
    sql.push(")");
    sql
}

pub(crate) fn person_from_row(row: &AnyRow) -> Result<Person> {
    let doc: String = row.try_get("doc").db()?;
    let data: PersonData = serde_json::from_str(&doc).map_err(Error::internal)?;
    let status: String = row.try_get("custody_status").db()?;
    let disposition: String = row.try_get("disposition").db()?;
    Ok(Person {
        id: row.try_get("id").db()?,
        data,
        custody_status: CustodyStatus::parse(&status)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored custody status '{status}'")))?,
        facility_id: row.try_get("facility_id").db()?,
        section_id: row.try_get("section_id").db()?,
        merged_into: row.try_get("merged_into").db()?,
        receiving_state: row.try_get("receiving_state").db()?,
        disposition: Disposition::parse(&disposition),
        household: row.try_get("household").db()?,
        version: row.try_get("version").db()?,
        create_time: row.try_get("create_time").db()?,
        update_time: row.try_get("update_time").db()?,
    })
}

/// Fetches one person inside the scope, in a transaction or not.
pub(crate) async fn fetch_person<'c, E>(
    dialect: Dialect,
    exec: E,
    scope: &Scope,
    id: &str,
) -> Result<Person>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let mut sql = Sql::new(format!("SELECT {PERSON_COLUMNS} FROM persons p WHERE p.id = "));
    sql.bind_text(id).push(" AND ").append(&scope_sql(scope, "p"));
    let row = sql.query(dialect).fetch_optional(exec).await.db()?;
    match row {
        Some(r) => person_from_row(&r),
        None => Err(Error::NotFound(format!("persons/{id}"))),
    }
}
