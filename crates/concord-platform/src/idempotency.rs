//! Request ids (AIP-155): a create or an action with a request id is applied once. The id is
//! claimed in the same transaction as the write, so a retry after a lost response finds it, and
//! a concurrent duplicate waits on the claim and then finds it.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{SqlxResultExt, Tx};

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: go ahead, then [`complete`].
    New,
    /// Already done: the resource the first call produced.
    Replay(String),
}

/// Fingerprint of a request message, to tell a retry from a different request reusing the id.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The idempotency key of a request: its request id (checked, naming `field` when bad) and
/// the fingerprint of the whole message; `None` when no request id was sent.
pub fn key<M: prost::Message>(
    request_id: &str,
    field: &str,
    msg: &M,
) -> Result<Option<(String, String)>> {
    if request_id.is_empty() {
        return Ok(None);
    }
    validate(field, request_id)?;
    Ok(Some((request_id.to_string(), fingerprint(&msg.encode_to_vec()))))
}

/// Checks a request id: at most 128 printable ASCII characters.
pub fn validate(field: &str, request_id: &str) -> Result<()> {
    if request_id.len() > 128 || !request_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            "must be at most 128 printable ASCII characters (a UUID is recommended)",
        ));
    }
    Ok(())
}

/// Whether `request_id` of `agency` was already applied (outside any transaction): for a
/// retry to skip work done before the write, such as checks against another service; the
/// write's own [`claim`] still decides.
pub async fn applied(db: &crate::storage::Db, agency: &str, request_id: &str) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT resource_name FROM idempotency_keys WHERE agency = $1 AND request_id = $2",
    )
    .bind(agency)
    .bind(request_id)
    .fetch_optional(db.reader())
    .await
    .db()?;
    Ok(found.is_some_and(|r| !r.is_empty()))
}

/// Claims `request_id` of `agency` for `method` inside `tx`.
pub async fn claim(
    tx: &mut Tx,
    agency: &str,
    request_id: &str,
    method: &str,
    fingerprint: &str,
) -> Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (agency, request_id, method, fingerprint, resource_name, create_time) \
         VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT (agency, request_id) DO NOTHING",
    )
    .bind(agency)
    .bind(request_id)
    .bind(method)
    .bind(fingerprint)
    .bind(crate::time::now_micros())
    .execute(tx.conn())
    .await
    .db()?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let (m, f, name): (String, String, String) = sqlx::query_as(
        "SELECT method, fingerprint, resource_name FROM idempotency_keys WHERE agency = $1 AND request_id = $2",
    )
    .bind(agency)
    .bind(request_id)
    .fetch_one(tx.conn())
    .await
    .db()?;
    if m != method || f != fingerprint {
        return Err(Error::invalid(
            "request_id",
            format!("'{request_id}' was already used for a different request ({m}); use a new request id"),
        ));
    }
    Ok(Claim::Replay(name))
}

/// Claims many request ids at once (bulk imports), each already paired with the resource it
/// will produce. Returns, per input, `New` or the resource of the earlier request; a request id
/// reused for a different request is an error for that input alone.
pub async fn claim_many(
    tx: &mut Tx,
    agency: &str,
    method: &str,
    requests: &[(String, String, String)],
) -> Result<Vec<Result<Claim>>> {
    use crate::sql::{insert_rows, Sql, SqlValue};
    use std::collections::{HashMap, HashSet};
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let now = crate::time::now_micros();
    let rows: Vec<Vec<SqlValue>> = requests
        .iter()
        .map(|(rid, fp, name)| {
            vec![
                SqlValue::Text(agency.to_string()),
                SqlValue::Text(rid.clone()),
                SqlValue::Text(method.to_string()),
                SqlValue::Text(fp.clone()),
                SqlValue::Text(name.clone()),
                SqlValue::Int(now),
            ]
        })
        .collect();
    let mut claimed = HashSet::new();
    for stmt in insert_rows(
        "INSERT INTO idempotency_keys (agency, request_id, method, fingerprint, resource_name, create_time) VALUES ",
        &rows,
        "ON CONFLICT (agency, request_id) DO NOTHING RETURNING request_id",
    ) {
        let ids: Vec<String> = stmt.query_scalar(tx.dialect()).fetch_all(tx.conn()).await.db()?;
        claimed.extend(ids);
    }
    let taken: Vec<&String> =
        requests.iter().map(|r| &r.0).filter(|rid| !claimed.contains(*rid)).collect();
    let mut earlier: HashMap<String, (String, String, String)> = HashMap::new();
    for chunk in taken.chunks(crate::sql::MAX_IN_LIST) {
        let mut sql = Sql::new(
            "SELECT request_id, method, fingerprint, resource_name FROM idempotency_keys WHERE agency = ",
        );
        sql.bind_text(agency).push(" AND request_id IN ");
        sql.bind_list(chunk.iter().map(|r| SqlValue::Text((*r).clone())));
        let found: Vec<(String, String, String, String)> =
            sql.query_as(tx.dialect()).fetch_all(tx.conn()).await.db()?;
        for (rid, m, f, name) in found {
            earlier.insert(rid, (m, f, name));
        }
    }
    Ok(requests
        .iter()
        .map(|(rid, fp, _)| {
            if claimed.contains(rid) {
                return Ok(Claim::New);
            }
            match earlier.get(rid) {
                Some((m, f, name)) if m == method && f == fp => Ok(Claim::Replay(name.clone())),
                Some((m, _, _)) => Err(Error::invalid(
                    "request_id",
                    format!("'{rid}' was already used for a different request ({m}); use a new request id"),
                )),
                None => Err(Error::Aborted(format!("request id '{rid}' is being used concurrently; retry"))),
            }
        })
        .collect())
}

/// Records the resource a claimed request produced.
pub async fn complete(
    tx: &mut Tx,
    agency: &str,
    request_id: &str,
    resource_name: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET resource_name = $1 WHERE agency = $2 AND request_id = $3",
    )
    .bind(resource_name)
    .bind(agency)
    .bind(request_id)
    .execute(tx.conn())
    .await
    .db()?;
    Ok(())
}
