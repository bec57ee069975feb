//! `concord audit verify` and `export` as an operator runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use concord_platform::audit::{self, Entry};
use concord_platform::storage::{Db, DbOptions, Migrations};

#[tokio::test]
async fn verify_passes_on_an_intact_log_and_fails_on_a_forged_one() {
    let t = concord_testkit::database().await.unwrap();
    let db = Db::connect(&t.url, Migrations::NONE, DbOptions::default()).await.unwrap();
    for i in 0..3 {
        let mut tx = db.begin().await.unwrap();
        let e = Entry {
            agency: "fr-mfa".into(),
            state: "FR".into(),
            action: "GetPerson".into(),
            resource: format!("persons/{i}"),
            fields: "names".into(),
            purpose: "consular access".into(),
            outcome: "OK".into(),
            trace_id: String::new(),
        };
        audit::append(&mut tx, &e).await.unwrap();
        tx.commit().await.unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_concord");
    let out =
        Command::new(bin).args(["audit", "verify", "--database-url", &t.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 3 entries"));
    let export =
        Command::new(bin).args(["audit", "export", "--database-url", &t.url]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 3);

    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE audit_log SET purpose = 'nothing to see' WHERE seq = 2")
        .execute(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let out =
        Command::new(bin).args(["audit", "verify", "--database-url", &t.url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at entry 2"));
}
