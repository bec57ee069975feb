//! Storage: SQLite files by default (WAL mode, full sync), PostgreSQL when the URL says so.
//!
//! One query text serves both dialects (`$n` placeholders, portable SQL), run through sqlx's
//! `Any` driver. Each dialect has its own embedded migrations. SQLite gets one writer
//! connection (SQLite allows one writer at a time; a single connection avoids lock upgrade
//! failures) and a pool of readers; PostgreSQL gets one pool. sqlx errors become platform
//! errors in [`map_sqlx`], and only there.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Transaction};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Which database is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A service's embedded migrations, one set per dialect.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
}

static NO_SQLITE: Migrator = Migrator::DEFAULT;
static NO_POSTGRES: Migrator = Migrator::DEFAULT;

impl Migrations {
    /// No service migrations: for tools that read only the platform's tables (audit).
    pub const NONE: Migrations = Migrations { sqlite: &NO_SQLITE, postgres: &NO_POSTGRES };
}

static PLATFORM_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static PLATFORM_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// A service's database: pools, dialect, and the outbox change notifier.
#[derive(Clone)]
pub struct Db {
    writer: AnyPool,
    reader: AnyPool,
    dialect: Dialect,
    /// Highest outbox sequence committed by this process; wakes watch streams at once.
    changes: Arc<watch::Sender<i64>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dialect", &self.dialect).finish_non_exhaustive()
    }
}

/// Options for [`Db::connect`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections in the reader pool (SQLite) or the pool (PostgreSQL).
    pub max_connections: u32,
    /// How long to wait for a connection before failing with UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self { max_connections: 8, acquire_timeout: Duration::from_secs(10) }
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path/to/file.db` or `postgres://...`), creating a SQLite
    /// file and its folder if missing, and runs the platform's and the service's migrations.
    pub async fn connect(url: &str, service: Migrations, opts: DbOptions) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let db = if url.starts_with("sqlite:") {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
            let writer = sqlite_pool(&url, 1, opts.acquire_timeout).await?;
            let reader = sqlite_pool(&url, opts.max_connections, opts.acquire_timeout).await?;
            Db { writer, reader, dialect: Dialect::Sqlite, changes: Arc::new(watch::channel(0).0) }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                // sqlx pings every connection before lending it by default: a network round
                // trip per query. A broken connection fails its query instead, and the pool
                // replaces it.
                .test_before_acquire(false)
                .connect(url)
                .await?;
            Db {
                writer: pool.clone(),
                reader: pool,
                dialect: Dialect::Postgres,
                changes: Arc::new(watch::channel(0).0),
            }
        } else {
            anyhow::bail!("database url must start with sqlite: or postgres:");
        };
        let (platform, own) = match db.dialect {
            Dialect::Sqlite => (&PLATFORM_SQLITE, service.sqlite),
            Dialect::Postgres => (&PLATFORM_POSTGRES, service.postgres),
        };
        // Platform and service migrations share one history table; version ranges keep them
        // apart (platform below 1000), and each set ignores the other's entries.
        let mut platform = Migrator { ignore_missing: true, ..clone_migrator(platform) };
        platform.locking = db.dialect == Dialect::Postgres;
        platform.run(&db.writer).await?;
        let mut own = Migrator { ignore_missing: true, ..clone_migrator(own) };
        own.locking = db.dialect == Dialect::Postgres;
        own.run(&db.writer).await?;
        Ok(db)
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool for reads outside a transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// A read that sees one state of the database across its statements (a resource and
    /// its rows in other tables, whose etag must name what is returned): a read-only
    /// transaction on a reader connection. PostgreSQL: REPEATABLE READ, READ ONLY; SQLite: a
    /// deferred transaction, whose first read fixes its snapshot (WAL). Without it, a write
    /// committed between two statements shows half of itself.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let begin = match self.dialect {
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Dialect::Sqlite => "BEGIN",
        };
        let tx = self.reader.begin_with(begin).await.map_err(map_sqlx)?;
        Ok(Snapshot { tx })
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        let tx = self.writer.begin().await.map_err(map_sqlx)?;
        Ok(Tx { tx, db: self.clone(), outbox_seq: None })
    }

    /// A receiver that sees the highest outbox sequence committed by this process.
    pub fn subscribe_changes(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn clone_migrator(m: &Migrator) -> Migrator {
    Migrator {
        migrations: m.migrations.clone(),
        ignore_missing: m.ignore_missing,
        locking: m.locking,
        no_tx: m.no_tx,
    }
}

async fn sqlite_pool(url: &str, max: u32, acquire_timeout: Duration) -> anyhow::Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        // A local file needs no liveness ping before each query.
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL lets readers proceed during a write; FULL sync makes an acknowledged
                // write survive power loss and kill -9.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                // A 32 MiB page cache keeps a bulk transaction's dirty pages in memory instead
                // of spilling them mid-transaction; statement journals stay in memory too.
                conn.execute("PRAGMA cache_size = -32768").await?;
                conn.execute("PRAGMA temp_store = MEMORY").await?;
                // Checkpoint every 64 MiB of WAL rather than 4 MiB: pages rewritten by
                // consecutive batches are copied back to the database once.
                conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// A write transaction. Commit with [`Tx::commit`]; dropping it rolls back.
pub struct Tx {
    tx: Transaction<'static, Any>,
    db: Db,
    outbox_seq: Option<i64>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("dialect", &self.db.dialect).finish_non_exhaustive()
    }
}

/// Takes the write locks of rows `ids` of `table` (its `id` column) in `tx`, in id order, so
/// writers that lock the same rows first wait for each other instead of failing a
/// compare-and-set or deadlocking (on SQLite the one writer serializes them anyway).
pub async fn lock_rows(tx: &mut Tx, table: &'static str, ids: &[&str]) -> Result<()> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!("UPDATE {table} SET id = id WHERE id = $1");
    for id in ids {
        sqlx::query(&sql).bind(id).execute(tx.conn()).await.db()?;
    }
    Ok(())
}

/// See [`Db::snapshot`]. It writes nothing; dropped, it ends.
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Snapshot {
    /// The connection, for the reads.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl Tx {
    /// The connection, for queries inside the transaction.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect
    }
    pub(crate) fn note_outbox(&mut self, seq: i64) {
        self.outbox_seq = Some(seq);
    }
    /// Commits, then wakes watch streams if the transaction wrote to the outbox.
    pub async fn commit(self) -> Result<()> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "db.commit",
            otel.name = "db.commit",
            otel.kind = "client",
            db.system = match self.dialect() {
                Dialect::Sqlite => "sqlite",
                Dialect::Postgres => "postgresql",
            },
        );
        self.tx.commit().instrument(span).await.map_err(map_sqlx)?;
        if let Some(seq) = self.outbox_seq {
            self.db.changes.send_if_modified(|cur| {
                if seq > *cur {
                    *cur = seq;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}

/// Maps a sqlx error to a platform error: the one place that knows sqlx's error kinds.
pub fn map_sqlx(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::RowNotFound => Error::NotFound("resource".into()),
        sqlx::Error::PoolTimedOut => Error::Unavailable("database busy; retry".into()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::AlreadyExists("a resource with the same key".into())
        }
        sqlx::Error::Database(db) if is_busy(db.code().as_deref()) => {
            Error::Aborted("concurrent write conflict; retry".into())
        }
        _ => Error::Internal(anyhow::Error::new(e).context("database error")),
    }
}

fn is_busy(code: Option<&str>) -> bool {
    // SQLITE_BUSY (5), SQLITE_LOCKED (6); PostgreSQL serialization failure and deadlock.
    matches!(code, Some("5" | "6" | "517" | "40001" | "40P01"))
}

/// Converts a SQL result into a platform result.
pub trait SqlxResultExt<T> {
    /// Maps the error with [`map_sqlx`].
    fn db(self) -> Result<T>;
}

impl<T> SqlxResultExt<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(map_sqlx)
    }
}

/// Checks that a connection works (for readiness).
pub async fn ping(db: &Db) -> Result<()> {
    let mut c = db.reader.acquire().await.map_err(map_sqlx)?;
    c.ping().await.map_err(map_sqlx)
}

/// Checks a compare-and-set write (`... WHERE version = <read version>`): on PostgreSQL two
/// transactions may read the same version, and the later writer finds it moved. It loses with
/// ABORTED before it records anything, and its whole transaction rolls back.
pub fn expect_one_row(rows_affected: u64, resource: &str) -> Result<()> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(Error::Aborted(format!("{resource} changed concurrently; read it again and retry")))
    }
}
