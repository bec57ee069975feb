//! A small SQL builder that numbers its placeholders `$1`, `$2`, ... which PostgreSQL and
//! SQLite both accept, so one query text serves both dialects.

use sqlx::any::{Any, AnyArguments};
use sqlx::query::{Query, QueryAs, QueryScalar};

use crate::storage::Dialect;

/// Binds every value of `$args` to the query `$q`, whatever kind of query it is.
macro_rules! bind_all {
    ($q:ident, $args:expr) => {{
        for a in &$args {
            $q = match a {
                SqlValue::Text(s) => $q.bind(s.as_str()),
                SqlValue::Int(i) => $q.bind(*i),
                SqlValue::Float(f) => $q.bind(*f),
                SqlValue::Bytes(b) => $q.bind(b.as_slice()),
                SqlValue::NullText => $q.bind(Option::<String>::None),
                SqlValue::NullInt => $q.bind(Option::<i64>::None),
            };
        }
        $q
    }};
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// TEXT.
    Text(String),
    /// BIGINT / INTEGER.
    Int(i64),
    /// DOUBLE PRECISION / REAL.
    Float(f64),
    /// BYTEA / BLOB.
    Bytes(Vec<u8>),
    /// NULL text.
    NullText,
    /// NULL integer.
    NullInt,
}

/// SQL text with its bound values.
///
/// The builder appends each placeholder as its value is bound, so placeholders appear in the
/// text in the order of their values and each exactly once. That lets the SQLite form use
/// anonymous `?` placeholders: sqlx looks up every named parameter (`$n`, `?n`) with
/// `sqlite3_bind_parameter_name`, a linear scan, which made binding quadratic in the number of
/// placeholders (12% of bulk import time before this).
#[derive(Debug, Default, Clone)]
pub struct Sql {
    text: String,
    args: Vec<SqlValue>,
    sqlite_text: std::sync::OnceLock<String>,
}

impl Sql {
    /// Starts with `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), args: Vec::new(), sqlite_text: std::sync::OnceLock::new() }
    }
    /// Appends raw SQL text (never caller input).
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }
    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: SqlValue) -> &mut Self {
        self.args.push(value);
        let n = self.args.len();
        self.text.push('$');
        self.text.push_str(&n.to_string());
        self
    }
    /// Appends a placeholder bound to a text value.
    pub fn bind_text(&mut self, value: impl Into<String>) -> &mut Self {
        self.bind(SqlValue::Text(value.into()))
    }
    /// Appends a placeholder bound to an integer.
    pub fn bind_int(&mut self, value: i64) -> &mut Self {
        self.bind(SqlValue::Int(value))
    }
    /// Appends `(p1, p2, ...)` bound to `values`; `(NULL)` when empty so that `IN` matches nothing.
    pub fn bind_list<I: IntoIterator<Item = SqlValue>>(&mut self, values: I) -> &mut Self {
        self.push("(");
        let mut first = true;
        for v in values {
            if !first {
                self.push(", ");
            }
            first = false;
            self.bind(v);
        }
        if first {
            self.push("NULL");
        }
        self.push(")")
    }
    /// Appends another fragment, renumbering its placeholders.
    pub fn append(&mut self, other: &Sql) -> &mut Self {
        let offset = self.args.len();
        let bytes = other.text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if end > start {
                    let n: usize = other.text[start..end].parse().unwrap_or(0);
                    self.text.push('$');
                    self.text.push_str(&(n + offset).to_string());
                    i = end;
                    continue;
                }
            }
            let ch_len = other.text[i..].chars().next().map_or(1, char::len_utf8);
            self.text.push_str(&other.text[i..i + ch_len]);
            i += ch_len;
        }
        self.args.extend(other.args.iter().cloned());
        self
    }
    /// The SQL text, with `$n` placeholders.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The SQL text for `dialect`.
    pub fn text_for(&self, dialect: Dialect) -> &str {
        match dialect {
            Dialect::Postgres => &self.text,
            Dialect::Sqlite => self.sqlite_text.get_or_init(|| anonymous_placeholders(&self.text)),
        }
    }
    /// A query with every value bound.
    pub fn query(&self, dialect: Dialect) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(self.text_for(dialect));
        bind_all!(q, self.args)
    }
    /// A typed query with every value bound.
    pub fn query_as<T>(&self, dialect: Dialect) -> QueryAs<'_, Any, T, AnyArguments<'_>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_as::<_, T>(self.text_for(dialect));
        bind_all!(q, self.args)
    }
    /// A scalar query with every value bound.
    pub fn query_scalar<T>(&self, dialect: Dialect) -> QueryScalar<'_, Any, T, AnyArguments<'_>>
    where
        (T,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_scalar::<_, T>(self.text_for(dialect));
        bind_all!(q, self.args)
    }
}

/// `$1 ... $n` in builder order become `?`.
fn anonymous_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Most placeholders in one statement. SQLite looks up each `$n` parameter name in a linear
/// list while it prepares a statement, so preparation is quadratic in the placeholder count:
/// 17,000 placeholders took 650 ms, a few hundred take well under a millisecond. Bulk writes
/// therefore send many statements of this size rather than one huge one.
pub const MAX_PARAMS: usize = 900;

/// Values per `IN (...)` list, for the same reason.
pub const MAX_IN_LIST: usize = 500;

/// Multi-row `INSERT`s: `head` (for example `INSERT INTO t (a, b) VALUES `), one `(...)` per
/// row, then `tail` (for example `ON CONFLICT DO NOTHING`), split into as many statements as
/// the placeholder limit needs. Bulk writes use this to send hundreds of rows per round trip.
pub fn insert_rows(head: &str, rows: &[Vec<SqlValue>], tail: &str) -> Vec<Sql> {
    let width = rows.first().map_or(1, Vec::len).max(1);
    let per_statement = (MAX_PARAMS / width).max(1);
    rows.chunks(per_statement)
        .map(|chunk| {
            let mut sql = Sql::new(head);
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind_list(row.iter().cloned());
            }
            sql.push(" ").push(tail);
            sql
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn insert_rows_splits_at_the_placeholder_limit() {
        let rows: Vec<Vec<SqlValue>> =
            (0..1000).map(|i| vec![SqlValue::Int(i), SqlValue::Int(i)]).collect();
        let stmts = insert_rows("INSERT INTO t (a, b) VALUES ", &rows, "");
        assert_eq!(stmts.len(), 3);
        assert!(stmts[0].text().starts_with("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"));
        assert!(stmts.iter().all(|s| s.args.len() <= MAX_PARAMS));
        assert_eq!(stmts.iter().map(|s| s.args.len()).sum::<usize>(), 2000);
    }

    use super::*;

    #[test]
    fn numbers_placeholders_and_renumbers_appended_fragments() {
        let mut a = Sql::new("SELECT * FROM t WHERE a = ");
        a.bind_text("x");
        let mut b = Sql::new("b = ");
        b.bind_int(1).push(" AND c IN ").bind_list([SqlValue::Int(2), SqlValue::Int(3)]);
        a.push(" AND ").append(&b);
        assert_eq!(a.text(), "SELECT * FROM t WHERE a = $1 AND b = $2 AND c IN ($3, $4)");
        assert_eq!(a.args.len(), 4);
    }

    #[test]
    fn sqlite_text_uses_anonymous_placeholders_in_order() {
        let mut a = Sql::new("SELECT 1 WHERE a = ");
        a.bind_text("x").push(" AND b IN ").bind_list([SqlValue::Int(2), SqlValue::Int(3)]);
        assert_eq!(a.text_for(Dialect::Sqlite), "SELECT 1 WHERE a = ? AND b IN (?, ?)");
        assert_eq!(a.text_for(Dialect::Postgres), "SELECT 1 WHERE a = $1 AND b IN ($2, $3)");
    }

    #[test]
    fn empty_list_matches_nothing() {
        let mut a = Sql::new("x IN ");
        a.bind_list(Vec::new());
        assert_eq!(a.text(), "x IN (NULL)");
    }
}
