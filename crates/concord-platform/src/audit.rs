//! The tamper-evident audit log: append-only and hash-chained.
//!
//! Every entry records who (agency, state), what (action, resource, fields), why (purpose),
//! the outcome and the trace id. An entry is appended inside the transaction of the change it
//! records, so a change without its entry cannot commit. Its hash is SHA-256 over the previous
//! entry's hash and the entry's own content, so [`verify`] detects any altered, removed or
//! reordered entry. Removing entries from the end leaves a valid but shorter chain; comparing
//! with a head exported earlier ([`Head`]) detects that too, which is why oversight bodies
//! keep the head of every [`export`].
//!
//! Concurrency: on PostgreSQL an append takes a transaction-scoped advisory lock before it
//! reads the previous hash, so concurrent writers chain one after another; SQLite has one
//! writer.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::error::{Error, Result};
use crate::sql::SqlValue;
use crate::storage::{Db, Dialect, SqlxResultExt, Tx};

/// Advisory lock key that serialises audit appends on PostgreSQL ("audit" in ASCII).
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

/// Hash of the (absent) entry before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Agency of the caller.
    pub agency: String,
    /// State of the caller, or empty.
    pub state: String,
    /// For example `GetPerson`.
    pub action: String,
    /// For example `persons/0192...`.
    pub resource: String,
    /// Fields read or written, comma separated.
    pub fields: String,
    /// Declared purpose.
    pub purpose: String,
    /// `OK`, or the error reason.
    pub outcome: String,
    /// Trace id of the call.
    pub trace_id: String,
}

/// A stored entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// Position, from 1.
    pub seq: i64,
    /// Micros since the epoch.
    pub record_time: i64,
    /// What was recorded.
    #[serde(flatten)]
    pub entry: Entry,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// The last entry of a chain, as published with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its position.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// The hash of an entry given the previous hash. Every field is length-prefixed, so no two
/// different entries encode alike.
pub fn entry_hash(prev_hash: &str, seq: i64, record_time: i64, e: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(record_time.to_be_bytes());
    for f in [
        &e.agency,
        &e.state,
        &e.action,
        &e.resource,
        &e.fields,
        &e.purpose,
        &e.outcome,
        &e.trace_id,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends `entry` inside `tx`; returns its position.
pub async fn append(tx: &mut Tx, entry: &Entry) -> Result<i64> {
    append_many(tx, std::slice::from_ref(entry)).await
}

/// Appends `entries`, in order, inside `tx`; returns the position of the last (0 if none).
pub async fn append_many(tx: &mut Tx, entries: &[Entry]) -> Result<i64> {
    if entries.is_empty() {
        return Ok(0);
    }
    if tx.dialect() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(tx.conn())
            .await
            .db()?;
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(tx.conn())
            .await
            .db()?;
    let (mut seq, mut prev) = match last {
        Some((s, h)) => (s, h),
        None => (0, GENESIS.to_string()),
    };
    let now = crate::time::now_micros();
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = entry_hash(&prev, seq, now, e);
        rows.push(vec![
            SqlValue::Int(seq),
            SqlValue::Int(now),
            SqlValue::Text(e.agency.clone()),
            SqlValue::Text(e.state.clone()),
            SqlValue::Text(e.action.clone()),
            SqlValue::Text(e.resource.clone()),
            SqlValue::Text(e.fields.clone()),
            SqlValue::Text(e.purpose.clone()),
            SqlValue::Text(e.outcome.clone()),
            SqlValue::Text(e.trace_id.clone()),
            SqlValue::Text(std::mem::replace(&mut prev, hash.clone())),
            SqlValue::Text(hash),
        ]);
    }
    for stmt in crate::sql::insert_rows(
        "INSERT INTO audit_log (seq, record_time, agency, state, action, resource, fields, purpose, outcome, trace_id, prev_hash, hash) VALUES ",
        &rows,
        "",
    ) {
        stmt.query(tx.dialect()).execute(tx.conn()).await.db()?;
    }
    Ok(seq)
}

/// Entries waiting for the recorder, with whoever waits for their commit.
type Pending = (Vec<Entry>, tokio::sync::oneshot::Sender<Result<()>>);

/// Records audit entries that have no write transaction of their own (reads, refusals):
/// callers wait until their entries are committed, and concurrent callers share one
/// transaction (group commit), so auditing every read costs one commit per batch, not per
/// read. A read whose entry cannot be committed fails instead of returning data unaudited.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Pending>,
}

/// Most entries committed together.
const GROUP_MAX: usize = 2048;

impl Recorder {
    /// Starts the recorder's task on `db`. It ends when every clone is dropped.
    pub fn spawn(db: Db) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(4096);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Let the calls that are running enqueue their entries too: one commit then
                // serves them all.
                tokio::task::yield_now().await;
                let mut group = vec![first];
                let mut n = group[0].0.len();
                while n < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(p) => {
                            n += p.0.len();
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let entries: Vec<Entry> =
                    group.iter().flat_map(|(e, _)| e.iter().cloned()).collect();
                let result = async {
                    let mut t = db.begin().await?;
                    append_many(&mut t, &entries).await?;
                    t.commit().await
                }
                .await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, entries = entries.len(), "audit entries not recorded");
                }
                for (_, done) in group {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(_) => Err(Error::Unavailable(
                            "the audit log is unavailable; nothing was returned".into(),
                        )),
                    });
                }
            }
        });
        Self { tx }
    }

    /// Records `entries` and waits until they are committed.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        use tracing::Instrument;
        // The call's wait for its durable audit entry, in the call's trace.
        let span = tracing::info_span!(
            "db.audit",
            otel.name = "audit.record",
            otel.kind = "client",
            db.operation = "INSERT",
            db.sql.table = "audit_log",
            concord.entries = entries.len(),
        );
        async move {
            let (done, wait) = tokio::sync::oneshot::channel();
            let gone = || Error::Unavailable("the audit recorder has stopped".into());
            self.tx.send((entries, done)).await.map_err(|_| gone())?;
            wait.await.map_err(|_| gone())?
        }
        .instrument(span)
        .await
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain is intact up to its head.
    Intact(Head),
    /// The first entry that does not fit, and why.
    Broken {
        /// Position of the first bad entry (or where one is missing).
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

fn stored_from_row(r: &sqlx::any::AnyRow) -> Result<Stored> {
    Ok(Stored {
        seq: r.try_get("seq").db()?,
        record_time: r.try_get("record_time").db()?,
        entry: Entry {
            agency: r.try_get("agency").db()?,
            state: r.try_get("state").db()?,
            action: r.try_get("action").db()?,
            resource: r.try_get("resource").db()?,
            fields: r.try_get("fields").db()?,
            purpose: r.try_get("purpose").db()?,
            outcome: r.try_get("outcome").db()?,
            trace_id: r.try_get("trace_id").db()?,
        },
        prev_hash: r.try_get("prev_hash").db()?,
        hash: r.try_get("hash").db()?,
    })
}

/// Entries after `after`, in order, at most `limit`.
pub async fn export(db: &Db, after: i64, limit: i64) -> Result<Vec<Stored>> {
    let rows = sqlx::query(
        "SELECT seq, record_time, agency, state, action, resource, fields, purpose, outcome, trace_id, prev_hash, hash \
         FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db.reader())
    .await
    .db()?;
    rows.iter().map(stored_from_row).collect()
}

/// Recomputes the whole chain. With `expected`, a head published earlier, also detects
/// entries removed from the end.
pub async fn verify(db: &Db, expected: Option<&Head>) -> Result<Verdict> {
    let mut prev = GENESIS.to_string();
    let mut next_seq = 1;
    loop {
        let batch = export(db, next_seq - 1, 10_000).await?;
        if batch.is_empty() {
            break;
        }
        for s in batch {
            if s.seq != next_seq {
                return Ok(Verdict::Broken {
                    seq: next_seq,
                    reason: format!("entry {next_seq} is missing"),
                });
            }
            if s.prev_hash != prev {
                return Ok(Verdict::Broken {
                    seq: s.seq,
                    reason: "does not follow the entry before it (removed or reordered entries)"
                        .into(),
                });
            }
            if entry_hash(&prev, s.seq, s.record_time, &s.entry) != s.hash {
                return Ok(Verdict::Broken { seq: s.seq, reason: "content was altered".into() });
            }
            prev = s.hash;
            next_seq += 1;
        }
    }
    let head = Head { seq: next_seq - 1, hash: prev };
    if let Some(exp) = expected {
        if head.seq < exp.seq {
            return Ok(Verdict::Broken {
                seq: head.seq + 1,
                reason: format!(
                    "the log ends at {} but a head at {} was published",
                    head.seq, exp.seq
                ),
            });
        }
        let at = if head.seq == exp.seq {
            Some(head.hash.clone())
        } else {
            export(db, exp.seq - 1, 1).await?.first().map(|s| s.hash.clone())
        };
        if at.as_deref() != Some(exp.hash.as_str()) {
            return Ok(Verdict::Broken {
                seq: exp.seq,
                reason: "differs from the published head".into(),
            });
        }
    }
    Ok(Verdict::Intact(head))
}
