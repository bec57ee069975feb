//! Storage and outbox tests, on SQLite and (with CONCORD_TEST_BACKEND=postgres) PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use concord_platform::auth::{Scope, Visible};
use concord_platform::outbox::{self, NewEvent, WatchParams, WatchTuning};
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, DbOptions, Dialect, Migrations};
use futures::StreamExt;
use sqlx::migrate::Migrator;

static NONE_SQLITE: Migrator = Migrator::DEFAULT;
static NONE_POSTGRES: Migrator = Migrator::DEFAULT;
const NO_MIGRATIONS: Migrations = Migrations { sqlite: &NONE_SQLITE, postgres: &NONE_POSTGRES };

async fn db() -> (Db, concord_testkit::TestDb) {
    let t = concord_testkit::database().await.unwrap();
    let db = Db::connect(&t.url, NO_MIGRATIONS, DbOptions::default()).await.unwrap();
    (db, t)
}

fn event(i: usize, states: Option<Vec<String>>) -> NewEvent {
    NewEvent {
        event_type: "thing.changed",
        resource_name: format!("things/{i}"),
        scope_tags: states.map(|s| format!("|{}|", s.join("|"))),
        payload: prost_types::Any { type_url: "t".into(), value: vec![i as u8] },
    }
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_with_full_sync() {
    let (db, _t) = db().await;
    if db.dialect() != Dialect::Sqlite {
        return;
    }
    let mode: String =
        sqlx::query_scalar("PRAGMA journal_mode").fetch_one(db.reader()).await.unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(db.reader()).await.unwrap();
    assert_eq!(sync, 2, "FULL");
}

#[tokio::test]
async fn a_snapshot_sees_one_state_of_the_database_across_its_reads() {
    let (db, _t) = db().await;
    let write = |id: &'static str| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO idempotency_keys (agency, request_id, method, fingerprint, resource_name, create_time) VALUES ('a', $1, 'm', 'f', '', 0)",
            )
            .bind(id)
            .execute(tx.conn())
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let q = "SELECT COUNT(*) FROM idempotency_keys";
    write("1").await;
    let mut read = db.snapshot().await.unwrap();
    let first: i64 = sqlx::query_scalar(q).fetch_one(read.conn()).await.unwrap();
    assert_eq!(first, 1);
    // A write commits between two reads of the snapshot; the second does not see it.
    write("2").await;
    let second: i64 = sqlx::query_scalar(q).fetch_one(read.conn()).await.unwrap();
    assert_eq!(second, 1, "the snapshot moved");
    drop(read);
    let now: i64 = sqlx::query_scalar(q).fetch_one(db.reader()).await.unwrap();
    assert_eq!(now, 2);
}

#[tokio::test]
async fn unique_violations_map_to_already_exists() {
    let (db, _t) = db().await;
    let mut tx = db.begin().await.unwrap();
    let insert = "INSERT INTO idempotency_keys (agency, request_id, method, fingerprint, resource_name, create_time) VALUES ('a', 'r', 'm', 'f', '', 0)";
    sqlx::query(insert).execute(tx.conn()).await.unwrap();
    let err = sqlx::query(insert).execute(tx.conn()).await.unwrap_err();
    assert!(matches!(
        concord_platform::storage::map_sqlx(err),
        concord_platform::Error::AlreadyExists(_)
    ));
}

/// Many writers commit events concurrently, some holding their transaction open for a while;
/// a watcher that started before them must see every event exactly once, in cursor order.
#[tokio::test]
async fn a_watcher_sees_every_committed_event_once_in_order() {
    let (db, _t) = db().await;
    let (_trigger, shutdown) = Shutdown::new();
    let tuning = WatchTuning {
        batch: 7,
        poll_interval: Duration::from_millis(20),
        bookmark_interval: Duration::from_secs(60),
    };
    let params = WatchParams {
        cursor: String::new(),
        start_at_end: false,
        event_types: vec![],
        scope: Scope::All,
    };
    let mut stream =
        Box::pin(outbox::watch(db.clone(), params, tuning, shutdown.clone()).await.unwrap());
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 15;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let mut tx = db.begin().await.unwrap();
                outbox::append(&mut tx, event(w * 100 + i, None)).await.unwrap();
                // Hold some transactions open so commits interleave with other writers.
                if (w + i) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    let mut last_cursor = 0i64;
    while seen.len() < WRITERS * PER_WRITER {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        if ev.bookmark {
            continue;
        }
        let c: i64 = ev.cursor.parse().unwrap();
        assert!(c > last_cursor, "cursor order");
        last_cursor = c;
        seen.push(ev.resource_name);
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), WRITERS * PER_WRITER, "each event exactly once");
}

#[tokio::test]
async fn watch_filters_by_scope_and_resumes_after_a_cursor() {
    let (db, _t) = db().await;
    let mut tx = db.begin().await.unwrap();
    outbox::append_many(
        &mut tx,
        vec![
            event(1, Some(vec!["FR".into()])),
            event(2, Some(vec!["DE".into()])),
            event(3, None),
            event(4, Some(vec!["DE".into(), "FR".into()])),
            event(5, Some(vec![])),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (_trigger, shutdown) = Shutdown::new();
    let tuning = WatchTuning {
        batch: 2,
        poll_interval: Duration::from_millis(10),
        bookmark_interval: Duration::from_millis(50),
    };
    let collect = |cursor: String, scope: Scope| {
        let db = db.clone();
        let shutdown = shutdown.clone();
        async move {
            let params = WatchParams { cursor, start_at_end: false, event_types: vec![], scope };
            let mut s = Box::pin(outbox::watch(db, params, tuning, shutdown).await.unwrap());
            let mut names = Vec::new();
            // Read until a bookmark arrives after the events (the stream is then idle).
            let mut bookmarks = 0;
            while bookmarks < 2 {
                let ev = s.next().await.unwrap().unwrap();
                if ev.bookmark {
                    bookmarks += 1;
                } else {
                    names.push((ev.resource_name, ev.cursor));
                }
            }
            names
        }
    };
    let france = collect(
        String::new(),
        Scope::Only(Visible { states: vec!["FR".into()], ..Visible::default() }),
    )
    .await;
    let names: Vec<&str> = france.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["things/1", "things/3", "things/4"]);
    let nobody = collect(String::new(), Scope::nobody()).await;
    assert_eq!(nobody.len(), 1, "only the event visible to everyone");
    let resumed = collect(
        france[1].1.clone(),
        Scope::Only(Visible { states: vec!["FR".into()], ..Visible::default() }),
    )
    .await;
    assert_eq!(resumed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["things/4"]);
    let params = WatchParams {
        cursor: "999999".into(),
        start_at_end: false,
        event_types: vec![],
        scope: Scope::All,
    };
    assert!(matches!(
        outbox::watch(db.clone(), params, tuning, shutdown.clone()).await.err(),
        Some(concord_platform::Error::OutOfRange(_))
    ));
}

/// The tables of a service that follows a change log (the facilities and requests services
/// create the same in their migrations).
async fn follower_tables(db: &Db) {
    for ddl in [
        "CREATE TABLE consumer_cursors (consumer TEXT PRIMARY KEY, cursor TEXT NOT NULL)",
        "CREATE TABLE person_versions (person_id TEXT PRIMARY KEY, version BIGINT NOT NULL)",
    ] {
        let mut tx = db.begin().await.unwrap();
        sqlx::query(ddl).execute(tx.conn()).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_consumer_cursor_never_moves_back() {
    use concord_platform::link::{cursor, save_cursor};
    let (db, _t) = db().await;
    follower_tables(&db).await;
    let save = |c: &'static str| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let r = save_cursor(&mut tx, "relay", c).await;
            tx.commit().await.unwrap();
            r
        }
    };
    assert_eq!(cursor(&db, "relay").await.unwrap(), "");
    save("9").await.unwrap();
    save("12").await.unwrap();
    assert_eq!(cursor(&db, "relay").await.unwrap(), "12");
    // Another replica, behind this one, stores where it got to: the later cursor stays.
    save("10").await.unwrap();
    assert_eq!(cursor(&db, "relay").await.unwrap(), "12");
    // Compared as numbers, not as text ("100" sorts before "12").
    save("100").await.unwrap();
    assert_eq!(cursor(&db, "relay").await.unwrap(), "100");
    assert!(save("not-a-cursor").await.is_err());
    assert_eq!(cursor(&db, "relay").await.unwrap(), "100");
    assert_eq!(cursor(&db, "other").await.unwrap(), "", "each consumer has its own");
}

#[tokio::test]
async fn a_version_is_claimed_unless_a_later_one_was() {
    use concord_platform::link::claim_version;
    let (db, _t) = db().await;
    follower_tables(&db).await;
    let claim = |person: &'static str, v: i64| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let r = claim_version(&mut tx, person, v).await.unwrap();
            tx.commit().await.unwrap();
            r
        }
    };
    assert!(claim("p1", 3).await, "first seen");
    assert!(claim("p1", 5).await, "later");
    assert!(claim("p1", 5).await, "the same version again (a snapshot re-read)");
    assert!(!claim("p1", 4).await, "older than one applied");
    assert!(claim("p2", 1).await, "each person apart");
    let v: i64 = sqlx::query_scalar("SELECT version FROM person_versions WHERE person_id = 'p1'")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(v, 5);
}
