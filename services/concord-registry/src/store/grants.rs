//! Sharing agreements and break-the-glass grants: what widens a caller's view beyond its own
//! records. Read at the start of every call ([`Store::shared_with`]); written with their
//! audit entries in one transaction.

use concord_platform::access::{Access, Shared};
use concord_platform::audit;
use concord_platform::auth::{Principal, Scope};
use concord_platform::error::{Error, Result};
use concord_platform::idempotency;
use concord_platform::sql::Sql;
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::now_micros;
use sqlx::Row;

use super::{fetch_person, Store};

/// A stored sharing agreement or break-the-glass grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    /// Id.
    pub id: String,
    /// `agreement` or `break_glass`.
    pub kind: GrantKind,
    /// Granting state (agreements), or empty.
    pub grantor_state: String,
    /// A state code (agreements) or an agency id (break-the-glass).
    pub grantee: String,
    /// Person ids.
    pub persons: Vec<String>,
    /// Categories (stored form, for example `CHILD`).
    pub categories: Vec<String>,
    /// Purpose or reason.
    pub purpose: String,
    /// Micros.
    pub expire_time: i64,
    /// Micros; 0 while in force.
    pub revoke_time: i64,
    /// Micros.
    pub create_time: i64,
    /// Creating agency.
    pub created_by: String,
}

concord_platform::named_enum! {
    /// Kinds of access grant.
    pub enum GrantKind("") { Agreement = "agreement", BreakGlass = "break_glass" }
}

impl AccessGrant {
    /// `sharingAgreements/{id}` or `breakGlassGrants/{id}`.
    pub fn name(&self) -> String {
        match self.kind {
            GrantKind::Agreement => format!("sharingAgreements/{}", self.id),
            GrantKind::BreakGlass => format!("breakGlassGrants/{}", self.id),
        }
    }
}

const COLUMNS: &str = "id, kind, grantor_state, grantee, persons, categories, purpose, \
                       expire_time, revoke_time, create_time, created_by";

fn from_row(r: &sqlx::any::AnyRow) -> Result<AccessGrant> {
    let kind: String = r.try_get("kind").db()?;
    let list = |col: &str| -> Result<Vec<String>> {
        let s: String = r.try_get(col).db()?;
        serde_json::from_str(&s).map_err(Error::internal)
    };
    Ok(AccessGrant {
        id: r.try_get("id").db()?,
        kind: GrantKind::parse(&kind)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("stored grant kind '{kind}'")))?,
        grantor_state: r.try_get("grantor_state").db()?,
        grantee: r.try_get("grantee").db()?,
        persons: list("persons")?,
        categories: list("categories")?,
        purpose: r.try_get("purpose").db()?,
        expire_time: r.try_get("expire_time").db()?,
        revoke_time: r.try_get("revoke_time").db()?,
        create_time: r.try_get("create_time").db()?,
        created_by: r.try_get("created_by").db()?,
    })
}

/// What [`Store::shared_with`] found, per (agency, state), on SQLite: the process is the only
/// writer, so every change of grants goes through [`Store::create_grant`] or
/// [`Store::revoke_agreement`], which empty the cache; an entry also lapses when the first of
/// its grants expires. PostgreSQL (several replicas write) reads every time.
#[derive(Debug, Default)]
pub(crate) struct SharedCache {
    inner: std::sync::Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Bumped, under the lock, by every change of grants.
    generation: u64,
    entries: std::collections::HashMap<(String, String), (Shared, i64)>,
}

impl SharedCache {
    /// The cached value, or the generation a read must present to [`SharedCache::put`].
    fn get(&self, key: &(String, String), now: i64) -> Result<Shared, u64> {
        let Ok(state) = self.inner.lock() else { return Err(u64::MAX) };
        match state.entries.get(key).filter(|(_, until)| *until > now) {
            Some((s, _)) => Ok(s.clone()),
            None => Err(state.generation),
        }
    }
    /// Stores a read unless grants changed since it began (checked under the same lock the
    /// change takes, so a revocation can never be overwritten by an older read).
    fn put(&self, generation: u64, key: (String, String), shared: Shared, until: i64) {
        if let Ok(mut state) = self.inner.lock() {
            if state.generation != generation {
                return;
            }
            if state.entries.len() > 10_000 {
                state.entries.clear();
            }
            state.entries.insert(key, (shared, until));
        }
    }
    fn changed(&self) {
        if let Ok(mut state) = self.inner.lock() {
            state.generation += 1;
            state.entries.clear();
        }
    }
}

impl Store {
    /// What agreements in force share with the caller's state, and the break-the-glass
    /// grants in force of its agency: one indexed query, or none on SQLite when cached.
    pub async fn shared_with(&self, p: &Principal) -> Result<Shared> {
        let now = now_micros();
        let key = (p.agency.clone(), p.state.clone().unwrap_or_default());
        let generation = match self.shared_cache.as_ref().map(|c| c.get(&key, now)) {
            Some(Ok(hit)) => return Ok(hit),
            Some(Err(generation)) => Some(generation),
            None => None,
        };
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM access_grants WHERE revoke_time = 0 AND expire_time > "
        ));
        sql.bind_int(now_micros()).push(" AND ((kind = 'break_glass' AND grantee = ");
        sql.bind_text(&p.agency).push(")");
        if let Some(state) = &p.state {
            sql.push(" OR (kind = 'agreement' AND grantee = ").bind_text(state).push(")");
        }
        sql.push(")");
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        let mut shared = Shared::default();
        // Cached until the first grant expires, and at most a minute.
        let mut until = now + 60_000_000;
        for r in rows {
            let g = from_row(&r)?;
            until = until.min(g.expire_time);
            shared.until = shared.until.min(g.expire_time);
            let name = g.name();
            match g.kind {
                GrantKind::BreakGlass => {
                    shared.glass.extend(g.persons.into_iter().map(|p| (p, name.clone())))
                }
                GrantKind::Agreement => {
                    let state = g.grantor_state.clone();
                    shared
                        .persons
                        .extend(g.persons.into_iter().map(|p| (p, state.clone(), name.clone())));
                    shared.categories.extend(
                        g.categories
                            .into_iter()
                            .map(|c| (g.grantor_state.clone(), c, name.clone())),
                    );
                }
            }
        }
        if let (Some(c), Some(generation)) = (&self.shared_cache, generation) {
            c.put(generation, key, shared.clone(), until);
        }
        Ok(shared)
    }

    /// After a grant commits: nothing cached from before it is served again.
    fn grants_changed(&self) {
        if let Some(c) = &self.shared_cache {
            c.changed();
        }
    }

    /// Stores a new grant. An agreement may only name nationals of the granting state
    /// (anyone else is NOT_FOUND, as for any read); break-the-glass needs the person to exist.
    pub async fn create_grant(
        &self,
        access: &Access,
        mut g: AccessGrant,
        request_id: Option<(String, String)>,
    ) -> Result<AccessGrant> {
        let method = match g.kind {
            GrantKind::Agreement => "CreateSharingAgreement",
            GrantKind::BreakGlass => "CreateBreakGlassGrant",
        };
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, method, fp).await?
            {
                drop(tx);
                let id = name.rsplit('/').next().unwrap_or_default().to_string();
                return self.get_grant(&id).await;
            }
        }
        let scope = match g.kind {
            GrantKind::Agreement => access.write_scope.clone(),
            GrantKind::BreakGlass => Scope::All,
        };
        for p in &g.persons {
            fetch_person(tx.dialect(), tx.conn(), &scope, p).await?;
        }
        g.id = uuid::Uuid::now_v7().to_string();
        g.create_time = now_micros();
        g.created_by = access.principal.agency.clone();
        let json = |v: &Vec<String>| serde_json::to_string(v).map_err(Error::internal);
        sqlx::query(
            "INSERT INTO access_grants (id, kind, grantor_state, grantee, persons, categories, purpose, \
             expire_time, revoke_time, create_time, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
        )
        .bind(&g.id)
        .bind(g.kind.as_str())
        .bind(&g.grantor_state)
        .bind(&g.grantee)
        .bind(json(&g.persons)?)
        .bind(json(&g.categories)?)
        .bind(&g.purpose)
        .bind(g.expire_time)
        .bind(g.create_time)
        .bind(&g.created_by)
        .execute(tx.conn())
        .await
        .db()?;
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &g.name()).await?;
        }
        let subjects: Vec<String> = g
            .persons
            .iter()
            .map(|p| format!("persons/{p}"))
            .chain(g.categories.iter().map(|c| format!("category {c}")))
            .collect();
        audit::append(
            &mut tx,
            &access.entry(format!("{} ({})", g.name(), subjects.join(" ")), "*", "OK"),
        )
        .await?;
        tx.commit().await?;
        self.grants_changed();
        Ok(g)
    }

    /// One grant by id.
    pub async fn get_grant(&self, id: &str) -> Result<AccessGrant> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM access_grants WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await
            .db()?;
        match row {
            Some(r) => from_row(&r),
            None => Err(Error::NotFound(format!("sharingAgreements/{id}"))),
        }
    }

    /// Agreements `state` granted or received, newest first, before `before`.
    pub async fn list_agreements(
        &self,
        state: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessGrant>> {
        // The grantor sees its whole history; the grantee only what is in force.
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM access_grants WHERE kind = 'agreement' AND (grantor_state = "
        ));
        sql.bind_text(state).push(" OR (grantee = ").bind_text(state);
        sql.push(" AND revoke_time = 0 AND expire_time > ").bind_int(now_micros()).push("))");
        if let Some(b) = before {
            sql.push(" AND id < ").bind_text(b);
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_int(limit);
        let rows = sql.query(self.db.dialect()).fetch_all(self.db.reader()).await.db()?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes an agreement `state` granted; NOT_FOUND for anyone else's.
    pub async fn revoke_agreement(
        &self,
        access: &Access,
        state: &str,
        id: &str,
    ) -> Result<AccessGrant> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM access_grants WHERE id = $1 AND kind = 'agreement' AND grantor_state = $2"
        ))
        .bind(id)
        .bind(state)
        .fetch_optional(tx.conn())
        .await
        .db()?;
        let mut g = match row {
            Some(r) => from_row(&r)?,
            None => return Err(Error::NotFound(format!("sharingAgreements/{id}"))),
        };
        if g.revoke_time != 0 {
            return Err(Error::FailedPrecondition {
                reason: "ALREADY_REVOKED",
                message: format!("{} is already revoked", g.name()),
            });
        }
        g.revoke_time = now_micros();
        sqlx::query("UPDATE access_grants SET revoke_time = $1 WHERE id = $2")
            .bind(g.revoke_time)
            .bind(id)
            .execute(tx.conn())
            .await
            .db()?;
        audit::append(&mut tx, &access.entry(g.name(), "*", "OK")).await?;
        tx.commit().await?;
        self.grants_changed();
        Ok(g)
    }
}
