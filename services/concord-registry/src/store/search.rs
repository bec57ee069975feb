//! Ranked name search. Query tokens become transliteration skeletons (see `search_keys`). A
//! one-word query matches every person bearing the word; a longer query matches people whose
//! names hold at least two of its words, found through the pair index, so a search for
//! "Mohammed al-Hassan" does not rank every Mohammed. The rank counts distinct words matched
//! (times 10) plus the exact spellings matched, so "Mohammed" ranks a Mohammed above a
//! Muhammad. Paging is by keyset on (rank, id), with the caller's scope and filter inside the
//! query.

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

/// Unordered pairs of distinct skeletons, each written "a b" with a <= b.
pub(crate) fn pairs<'a>(skeletons: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut sk: Vec<&str> = skeletons.collect();
    sk.sort_unstable();
    sk.dedup();
    let mut out = Vec::new();
    for (i, a) in sk.iter().enumerate() {
        for b in &sk[i + 1..] {
            out.push(format!("{a} {b}"));
        }
    }
    out
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
        let pairs = pairs(tokens.iter().map(|t| t.skeleton.as_str()));
        let mut sql = Sql::new("WITH ");
        if pairs.is_empty() {
            // One word: every person bearing it is a candidate.
            sql.push("m AS (SELECT k.person_id, COUNT(DISTINCT k.skeleton) * 10 + SUM(CASE WHEN k.folded IN ")
                .bind_list(folded)
                .push(" THEN 1 ELSE 0 END) AS score FROM person_name_keys k WHERE k.skeleton IN ")
                .bind_list(skeletons)
                .push(" GROUP BY k.person_id) ");
        } else {
            // Several words: candidates hold at least two of them in one name; only they are
            // scored, by probing their keys.
            // The score is a correlated subquery, so both SQLite and PostgreSQL probe the
            // key index per candidate instead of scanning every key of the common words.
            sql.push("c AS (SELECT DISTINCT person_id FROM person_name_pairs WHERE pair IN ")
                .bind_list(pairs.into_iter().map(SqlValue::Text))
                .push("), m AS (SELECT c.person_id, (SELECT COUNT(DISTINCT k.skeleton) * 10 + SUM(CASE WHEN k.folded IN ")
                .bind_list(folded)
                .push(" THEN 1 ELSE 0 END) FROM person_name_keys k WHERE k.skeleton IN ")
                .bind_list(skeletons)
                .push(" AND k.person_id = c.person_id) AS score FROM c) ");
        }
        // Rank and page on ids and scores first; read the chosen people's records last.
        sql.push(
            ", top AS (SELECT p.id, m.score FROM m JOIN persons p ON p.id = m.person_id WHERE ",
        )
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
        sql.push(&format!(
            ") SELECT {PERSON_COLUMNS}, top.score FROM top JOIN persons p ON p.id = top.id \
             ORDER BY top.score DESC, p.id"
        ));
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter()
            .map(|r| Ok(SearchHit { person: person_from_row(r)?, score: r.try_get("score").db()? }))
            .collect()
    }
}
