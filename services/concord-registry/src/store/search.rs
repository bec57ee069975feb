//! Ranked name search. Query tokens become transliteration skeletons (see `search_keys`); a
//! person matches on any skeleton; the rank counts distinct skeletons matched (times 10) plus
//! the exact spellings matched, so "Mohammed" ranks a Mohammed above a Muhammad. Paging is by
//! keyset on (rank, id), with the caller's scope and filter inside the query.

use concord_platform::auth::Scope;
use concord_platform::error::Result;
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::SqlxResultExt;
use sqlx::Row;

use super::{person_from_row, scope_sql, Store, PERSON_COLUMNS};
use crate::domain::Person;
use crate::search_keys::NameToken;

/// One result.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The person.
    pub person: Person,
    /// Rank; higher is better.
    pub score: i64,
}

impl Store {
    /// People in scope whose names match `tokens`, best first, after `(score, id)`.
    pub async fn search(
        &self,
        scope: &Scope,
        tokens: &[NameToken],
        filter: Option<&Sql>,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<SearchHit>> {
        let skeletons = tokens.iter().map(|t| SqlValue::Text(t.skeleton.clone()));
        let folded = tokens.iter().map(|t| SqlValue::Text(t.folded.clone()));
        let mut sql = Sql::new(
            "WITH m AS (SELECT person_id, COUNT(DISTINCT skeleton) * 10 + SUM(CASE WHEN folded IN ",
        );
        sql.bind_list(folded)
            .push(" THEN 1 ELSE 0 END) AS score FROM person_name_keys WHERE skeleton IN ")
            .bind_list(skeletons)
            .push(" GROUP BY person_id) ")
            .push(&format!("SELECT {PERSON_COLUMNS}, m.score FROM m JOIN persons p ON p.id = m.person_id WHERE "))
            .append(&scope_sql(scope, "p"));
        if let Some(f) = filter {
            sql.push(" AND ").append(f);
        }
        if let Some((score, id)) = after {
            sql.push(" AND (m.score < ")
                .bind_int(score)
                .push(" OR (m.score = ")
                .bind_int(score)
                .push(" AND p.id > ")
                .bind_text(id)
                .push("))");
        }
        sql.push(" ORDER BY m.score DESC, p.id LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter()
            .map(|r| Ok(SearchHit { person: person_from_row(r)?, score: r.try_get("score").db()? }))
            .collect()
    }
}
