//! Audit log tests on SQLite and (with CONCORD_TEST_BACKEND=postgres) PostgreSQL: any
//! altered, removed or reordered entry is detected, and concurrent writers keep one chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_platform::audit::{self, Entry, Head, Verdict};
use concord_platform::storage::{Db, DbOptions, Migrations};
use sqlx::migrate::Migrator;

static NONE_SQLITE: Migrator = Migrator::DEFAULT;
static NONE_POSTGRES: Migrator = Migrator::DEFAULT;
const NO_MIGRATIONS: Migrations = Migrations { sqlite: &NONE_SQLITE, postgres: &NONE_POSTGRES };

fn entry(i: usize) -> Entry {
    Entry {
        agency: format!("agency-{}", i % 3),
        state: "FR".into(),
        action: "GetPerson".into(),
        resource: format!("persons/{i}"),
        fields: "names,nationalities".into(),
        purpose: "repatriation case review".into(),
        outcome: "OK".into(),
        trace_id: format!("{i:032x}"),
    }
}

async fn log_of(n: usize) -> (Db, concord_testkit::TestDb) {
    let t = concord_testkit::database().await.unwrap();
    let db = Db::connect(&t.url, NO_MIGRATIONS, DbOptions::default()).await.unwrap();
    for i in 0..n {
        let mut tx = db.begin().await.unwrap();
        audit::append(&mut tx, &entry(i)).await.unwrap();
        tx.commit().await.unwrap();
    }
    (db, t)
}

async fn exec(db: &Db, sql: &str) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query(sql).execute(tx.conn()).await.unwrap();
    tx.commit().await.unwrap();
}

fn broken_at(v: Verdict) -> (i64, String) {
    match v {
        Verdict::Broken { seq, reason } => (seq, reason),
        Verdict::Intact(h) => panic!("tampering not detected; head {h:?}"),
    }
}

#[tokio::test]
async fn an_untouched_log_verifies_and_reports_its_head() {
    let (db, _t) = log_of(5).await;
    let Verdict::Intact(head) = audit::verify(&db, None).await.unwrap() else { panic!("broken") };
    assert_eq!(head.seq, 5);
    assert_eq!(audit::verify(&db, Some(&head)).await.unwrap(), Verdict::Intact(head));
}

#[tokio::test]
async fn altering_any_field_is_detected() {
    for column in
        ["agency", "resource", "fields", "purpose", "outcome", "trace_id", "state", "action"]
    {
        let (db, _t) = log_of(6).await;
        exec(&db, &format!("UPDATE audit_log SET {column} = 'forged' WHERE seq = 4")).await;
        let (seq, reason) = broken_at(audit::verify(&db, None).await.unwrap());
        assert_eq!(seq, 4, "{column}");
        assert!(reason.contains("altered"), "{column}: {reason}");
    }
    let (db, _t) = log_of(6).await;
    exec(&db, "UPDATE audit_log SET record_time = record_time + 1 WHERE seq = 2").await;
    assert_eq!(broken_at(audit::verify(&db, None).await.unwrap()).0, 2);
}

#[tokio::test]
async fn removing_an_entry_is_detected() {
    let (db, _t) = log_of(6).await;
    exec(&db, "DELETE FROM audit_log WHERE seq = 3").await;
    let (seq, reason) = broken_at(audit::verify(&db, None).await.unwrap());
    assert_eq!(seq, 3);
    assert!(reason.contains("missing"), "{reason}");
}

#[tokio::test]
async fn removing_an_entry_and_renumbering_is_detected() {
    let (db, _t) = log_of(6).await;
    exec(&db, "DELETE FROM audit_log WHERE seq = 3").await;
    for s in 4..=6 {
        exec(&db, &format!("UPDATE audit_log SET seq = {} WHERE seq = {s}", s - 1)).await;
    }
    assert_eq!(broken_at(audit::verify(&db, None).await.unwrap()).0, 3);
}

#[tokio::test]
async fn reordering_entries_is_detected() {
    let (db, _t) = log_of(6).await;
    exec(&db, "UPDATE audit_log SET seq = 100 WHERE seq = 2").await;
    exec(&db, "UPDATE audit_log SET seq = 2 WHERE seq = 3").await;
    exec(&db, "UPDATE audit_log SET seq = 3 WHERE seq = 100").await;
    assert_eq!(broken_at(audit::verify(&db, None).await.unwrap()).0, 2);
}

#[tokio::test]
async fn truncating_the_end_is_detected_against_a_published_head() {
    let (db, _t) = log_of(6).await;
    let Verdict::Intact(head) = audit::verify(&db, None).await.unwrap() else { panic!("broken") };
    exec(&db, "DELETE FROM audit_log WHERE seq >= 5").await;
    assert!(
        matches!(audit::verify(&db, None).await.unwrap(), Verdict::Intact(_)),
        "a chain alone cannot tell"
    );
    let (seq, _) = broken_at(audit::verify(&db, Some(&head)).await.unwrap());
    assert_eq!(seq, 5);
    let forged = Head { seq: 4, hash: "0".repeat(64) };
    assert_eq!(broken_at(audit::verify(&db, Some(&forged)).await.unwrap()).0, 4);
}

#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let (db, _t) = log_of(0).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let mut tx = db.begin().await.unwrap();
                audit::append(&mut tx, &entry(w * 100 + i)).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let Verdict::Intact(head) = audit::verify(&db, None).await.unwrap() else { panic!("broken") };
    assert_eq!(head.seq, 80);
}

#[tokio::test]
async fn an_entry_rolls_back_with_its_transaction() {
    let (db, _t) = log_of(2).await;
    let mut tx = db.begin().await.unwrap();
    audit::append(&mut tx, &entry(9)).await.unwrap();
    drop(tx);
    let Verdict::Intact(head) = audit::verify(&db, None).await.unwrap() else { panic!("broken") };
    assert_eq!(head.seq, 2);
}
