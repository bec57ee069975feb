//! The transactional outbox and the resumable `WatchChanges` stream.
//!
//! A service appends an event in the same transaction as the change it describes, so an event
//! exists if and only if the change committed. Consumers read the log from a cursor (the
//! event's sequence number) like Kubernetes list+watch: they store the cursor of the last event
//! they applied and resume after it. Bookmarks carry the cursor forward while nothing in the
//! consumer's scope happens.
//!
//! Ordering: a watcher must never see sequence N+1 before N commits. SQLite has one writer, so
//! commit order is sequence order. On PostgreSQL, [`append`] takes a transaction-scoped
//! advisory lock before drawing the sequence number, which holds until commit, so writers of
//! events commit in sequence order. A watcher also reads the high-water mark before the rows
//! and never reads past it.

use std::time::Duration;

use concord_proto::r#type::v1::ChangeEvent;
use futures::Stream;
use sqlx::Row;

use crate::auth::Scope;
use crate::error::{Error, Result};
use crate::server::Shutdown;
use crate::sql::{Sql, SqlValue};
use crate::storage::{Db, Dialect, SqlxResultExt, Tx};

/// Advisory lock key that serialises outbox writers on PostgreSQL ("concord" in ASCII).
const OUTBOX_LOCK: i64 = 0x0063_6f6e_636f_7264;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// For example `person.custody_changed`.
    pub event_type: &'static str,
    /// For example `persons/0192...`.
    pub resource_name: String,
    /// Visibility tags ([`crate::auth::subject_tags`]); `None`: every caller of the service.
    pub scope_tags: Option<String>,
    /// The resource after the change.
    pub payload: prost_types::Any,
}

/// Appends `event` inside `tx`; returns its sequence number.
pub async fn append(tx: &mut Tx, event: NewEvent) -> Result<i64> {
    append_many(tx, vec![event]).await
}

/// Appends several events inside `tx`, a few hundred per statement; returns the last
/// sequence number (0 when there were none).
pub async fn append_many(tx: &mut Tx, events: Vec<NewEvent>) -> Result<i64> {
    if events.is_empty() {
        return Ok(0);
    }
    if tx.dialect() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(OUTBOX_LOCK)
            .execute(tx.conn())
            .await
            .db()?;
    }
    let traceparent = crate::telemetry::current_traceparent();
    let now = crate::time::now_micros();
    let rows: Vec<Vec<SqlValue>> = events
        .into_iter()
        .map(|e| {
            vec![
                SqlValue::Text(e.event_type.to_string()),
                SqlValue::Text(e.resource_name),
                SqlValue::Text(e.scope_tags.unwrap_or_else(|| "*".to_string())),
                SqlValue::Text(e.payload.type_url),
                SqlValue::Bytes(e.payload.value),
                SqlValue::Text(traceparent.clone()),
                SqlValue::Int(now),
            ]
        })
        .collect();
    let mut last = 0;
    for stmt in crate::sql::insert_rows(
        "INSERT INTO outbox (event_type, resource_name, scope_states, payload_type, payload, traceparent, create_time) VALUES ",
        &rows,
        "RETURNING seq",
    ) {
        let seqs: Vec<i64> = stmt.query_scalar(tx.dialect()).fetch_all(tx.conn()).await.db()?;
        last = last.max(seqs.into_iter().max().unwrap_or(0));
    }
    tx.note_outbox(last);
    Ok(last)
}

/// Where a watch starts and what it sees.
#[derive(Debug, Clone)]
pub struct WatchParams {
    /// Resume after this cursor; empty: from the start of the log.
    pub cursor: String,
    /// Start at the end of the log (ignored when `cursor` is set).
    pub start_at_end: bool,
    /// Only these event types; empty: all.
    pub event_types: Vec<String>,
    /// The caller's scope.
    pub scope: Scope,
}

/// Tuning of a watch stream.
#[derive(Debug, Clone, Copy)]
pub struct WatchTuning {
    /// Rows read per query.
    pub batch: i64,
    /// How often to look for changes committed by other processes (PostgreSQL replicas).
    pub poll_interval: Duration,
    /// How often an idle stream sends a bookmark.
    pub bookmark_interval: Duration,
}

impl Default for WatchTuning {
    fn default() -> Self {
        Self {
            batch: 256,
            poll_interval: Duration::from_millis(500),
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

fn parse_cursor(c: &str) -> Result<i64> {
    c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        Error::invalid("cursor", format!("'{c}' is not a cursor returned by this service"))
    })
}

async fn high_water(db: &Db) -> Result<i64> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM outbox")
        .fetch_one(db.reader())
        .await
        .db()
}

fn bookmark(cursor: i64) -> ChangeEvent {
    ChangeEvent { cursor: cursor.to_string(), bookmark: true, ..Default::default() }
}

/// The stream of changes after `params.cursor` visible in `params.scope`, until the client
/// goes away or `shutdown` begins. The first message is a bookmark (the stream is live).
pub async fn watch(
    db: Db,
    params: WatchParams,
    tuning: WatchTuning,
    mut shutdown: Shutdown,
) -> Result<impl Stream<Item = Result<ChangeEvent, Error>>> {
    let hwm = high_water(&db).await?;
    let mut cursor = if !params.cursor.is_empty() {
        let c = parse_cursor(&params.cursor)?;
        if c > hwm {
            return Err(Error::OutOfRange(format!(
                "cursor {c} is ahead of this service's change log (latest {hwm}); was the database replaced?"
            )));
        }
        c
    } else if params.start_at_end {
        hwm
    } else {
        0
    };
    let mut changes = db.subscribe_changes();
    Ok(async_stream::try_stream! {
        yield bookmark(cursor);
        let mut last_sent = cursor;
        let mut last_message = tokio::time::Instant::now();
        loop {
            let hwm = high_water(&db).await?;
            if hwm > cursor {
                let mut sql = Sql::new(
                    "SELECT seq, event_type, resource_name, payload_type, payload, traceparent, create_time \
                     FROM outbox WHERE seq > ",
                );
                sql.bind_int(cursor).push(" AND seq <= ").bind_int(hwm);
                if !params.event_types.is_empty() {
                    sql.push(" AND event_type IN ")
                        .bind_list(params.event_types.iter().map(|t| SqlValue::Text(t.clone())));
                }
                if let Scope::Only(visible) = &params.scope {
                    // The column keeps its first name; it holds visibility tags. Exact,
                    // case-sensitive substring tests, as in Scope::admits (LIKE ignores case
                    // on SQLite).
                    let contains = |sql: &mut Sql, tag: String| {
                        let f = match db.dialect() {
                            Dialect::Sqlite => " instr(scope_states, ",
                            Dialect::Postgres => " strpos(scope_states, ",
                        };
                        sql.push(f).bind_text(tag).push(") > 0");
                    };
                    sql.push(" AND (scope_states = '*'");
                    for tag in crate::auth::watch_tags(visible) {
                        sql.push(" OR");
                        contains(&mut sql, tag);
                    }
                    for chunk in visible.persons.chunks(crate::sql::MAX_IN_LIST) {
                        sql.push(" OR resource_name IN ").bind_list(
                            chunk.iter().map(|p| SqlValue::Text(format!("persons/{p}"))),
                        );
                    }
                    for (state, ids) in visible.shared_by_state() {
                        for chunk in ids.chunks(crate::sql::MAX_IN_LIST) {
                            sql.push(" OR (resource_name IN ").bind_list(
                                chunk.iter().map(|p| SqlValue::Text(format!("persons/{p}"))),
                            );
                            sql.push(" AND");
                            contains(&mut sql, format!("|{state}|"));
                            sql.push(")");
                        }
                    }
                    sql.push(")");
                }
                sql.push(" ORDER BY seq LIMIT ").bind_int(tuning.batch);
                let rows = sql.query(db.dialect()).fetch_all(db.reader()).await.db()?;
                let full = rows.len() as i64 == tuning.batch;
                for row in rows {
                    let seq: i64 = row.try_get("seq").db()?;
                    let payload: Vec<u8> = row.try_get("payload").db()?;
                    cursor = seq;
                    last_sent = seq;
                    last_message = tokio::time::Instant::now();
                    yield ChangeEvent {
                        cursor: seq.to_string(),
                        event_type: row.try_get("event_type").db()?,
                        resource_name: row.try_get("resource_name").db()?,
                        create_time: Some(crate::time::to_timestamp(row.try_get("create_time").db()?)),
                        resource: Some(prost_types::Any { type_url: row.try_get("payload_type").db()?, value: payload }),
                        traceparent: row.try_get("traceparent").db()?,
                        bookmark: false,
                    };
                }
                if full {
                    continue;
                }
                // Everything up to the high-water mark has been read; filtered-out events
                // move the cursor too.
                cursor = hwm;
            }
            let idle_for = last_message.elapsed();
            if cursor > last_sent && idle_for >= tuning.bookmark_interval.min(tuning.poll_interval * 2) {
                last_sent = cursor;
                last_message = tokio::time::Instant::now();
                yield bookmark(cursor);
                continue;
            }
            if idle_for >= tuning.bookmark_interval {
                last_message = tokio::time::Instant::now();
                yield bookmark(cursor);
            }
            tokio::select! {
                _ = changes.changed() => {},
                _ = tokio::time::sleep(tuning.poll_interval) => {},
                _ = shutdown.wait() => break,
            }
        }
    })
}

/// Longest a watch stream runs on one authorization: at the latest then it ends with
/// [`renewal`], so that revocations, policy and custodian changes reach open streams.
pub const WATCH_REAUTHORIZE: Duration = Duration::from_secs(300);

/// `stream` until `after` has passed, then one UNAVAILABLE telling the client to resume from
/// its last cursor (with a fresh authorization). Every service's watch ends this way.
pub fn renewal<S, T>(
    stream: S,
    after: Duration,
) -> impl Stream<Item = std::result::Result<T, tonic::Status>>
where
    S: Stream<Item = std::result::Result<T, tonic::Status>>,
{
    use futures::StreamExt;
    stream.take_until(tokio::time::sleep(after.min(WATCH_REAUTHORIZE))).chain(
        futures::stream::once(async {
            Err(tonic::Status::unavailable(
                "the stream's authorization is renewed: resume from your last cursor",
            ))
        }),
    )
}
