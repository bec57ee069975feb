//! Emergency relocation: the plan for everyone held at a COMPROMISED facility, stored as
//! PLANNED movements in one transaction (see [`crate::relocation`] for how people are
//! placed).

use std::collections::BTreeMap;

use concord_platform::access::Access;
use concord_platform::audit;
use concord_platform::error::{Error, Result};
use concord_platform::idempotency;
use concord_platform::outbox;
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::{current_year, now_micros};
use sqlx::Row;

use super::movements::{
    check_runs, insert_movement, movement_event, placements, room, runs, NewMovement,
};
use super::{fetch, from_row, Store, COLUMNS};
use crate::domain::*;
use crate::relocation;

/// A stored relocation plan.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// Id.
    pub id: String,
    /// The compromised facility.
    pub facility_id: String,
    /// The movements it proposed (as they are now).
    pub movements: Vec<Movement>,
    /// `(person id, why)` for each person not placed.
    pub unplaced: Vec<(String, String)>,
    /// Household ids not kept together.
    pub split_households: Vec<String>,
    /// People placed.
    pub placed_count: i64,
    /// Total distance, km.
    pub total_distance_km: f64,
}

const IN_CUSTODY: &str = "CUSTODY_STATUS_IN_CUSTODY";

impl Store {
    /// Plans the relocation of everyone held at `facility`, which must be COMPROMISED.
    pub async fn plan_relocation(
        &self,
        access: &Access,
        facility: &str,
        rules: &SeparationRules,
        request_id: Option<(String, String)>,
    ) -> Result<StoredPlan> {
        let mut tx = self.db.begin().await?;
        if let Some((rid, fp)) = &request_id {
            if let idempotency::Claim::Replay(name) =
                idempotency::claim(&mut tx, &access.principal.agency, rid, "PlanRelocation", fp)
                    .await?
            {
                drop(tx);
                let id = name.rsplit('/').next().unwrap_or_default().to_string();
                return self.relocation_plan(access, facility, &id).await;
            }
        }
        let f = fetch(&mut tx, facility).await?;
        check_runs(access, &f)?;
        if f.security_status != SecurityStatus::Compromised {
            return Err(Error::FailedPrecondition {
                reason: "NOT_COMPROMISED",
                message: format!(
                    "{} is {}; relocation plans are made for a COMPROMISED facility",
                    f.name(),
                    f.security_status
                ),
            });
        }
        let year = current_year();
        let held = placements(&mut tx, Some(&f.id), &[]).await?;
        let mut on_movement = BTreeMap::new();
        for chunk in held.chunks(concord_platform::sql::MAX_IN_LIST) {
            let mut sql =
                Sql::new("SELECT person_id, movement_id FROM movement_holds WHERE person_id IN ");
            sql.bind_list(chunk.iter().map(|p| SqlValue::Text(p.person_id.clone())));
            for r in sql.query(tx.dialect()).fetch_all(tx.conn()).await.db()? {
                let p: String = r.try_get("person_id").db()?;
                let m: String = r.try_get("movement_id").db()?;
                on_movement.insert(p, m);
            }
        }
        let mut unplaced = Vec::new();
        let mut candidates = Vec::new();
        for p in &held {
            if let Some(m) = on_movement.get(&p.person_id) {
                unplaced.push((p.person_id.clone(), format!("already on movements/{m}")));
            } else if p.custody_status != IN_CUSTODY {
                unplaced.push((
                    p.person_id.clone(),
                    format!(
                        "is {}; only people IN_CUSTODY are moved",
                        p.custody_status.trim_start_matches("CUSTODY_STATUS_")
                    ),
                ));
            } else {
                candidates.push(relocation::Candidate {
                    person_id: p.person_id.clone(),
                    sex: p.sex,
                    age: p.age(year),
                    band: p.band(year),
                    household: p.household.clone(),
                });
            }
        }
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM facilities ORDER BY id"))
            .fetch_all(tx.conn())
            .await
            .db()?;
        let mut sites = Vec::new();
        let mut facilities = BTreeMap::new();
        for r in &rows {
            let d = from_row(r)?;
            if d.id == f.id
                || d.security_status.is_final()
                || matches!(
                    d.security_status,
                    SecurityStatus::Lockdown | SecurityStatus::Compromised
                )
            {
                continue;
            }
            let (free, _) = room(&mut tx, &d, "").await?;
            sites.push(relocation::Site {
                facility_id: d.id.clone(),
                kind: d.data.kind,
                latitude: d.data.location.latitude,
                longitude: d.data.location.longitude,
                free: free
                    .lines()
                    .filter(|(_, l)| l.free() > 0)
                    .map(|((section, sex, band), l)| relocation::Free {
                        section_id: section.clone(),
                        sex: *sex,
                        band: *band,
                        places: l.free(),
                    })
                    .collect(),
            });
            facilities.insert(d.id.clone(), d);
        }
        let origin = (f.data.location.latitude, f.data.location.longitude);
        let plan = relocation::plan(origin, &candidates, &sites, rules);
        let id = uuid::Uuid::now_v7().to_string();
        let mut by_site: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for a in &plan.assignments {
            by_site
                .entry(a.facility_id.clone())
                .or_default()
                .push((a.person_id.clone(), a.section_id.clone()));
        }
        let mut movements = Vec::new();
        for (site, entries) in by_site {
            let Some(destination) = facilities.get(&site) else { continue };
            let new = NewMovement {
                source: f.id.clone(),
                destination: site.clone(),
                reason: format!(
                    "emergency relocation from {} ({})",
                    f.name(),
                    f.security_status_reason
                ),
                entries,
            };
            movements
                .push(insert_movement(&mut tx, access, &f, destination, new, &id, rules).await?);
        }
        unplaced.extend(plan.unplaced.iter().map(|u| (u.person_id.clone(), u.reason.clone())));
        unplaced.sort();
        let stored = StoredPlan {
            id,
            facility_id: f.id.clone(),
            movements,
            unplaced,
            split_households: plan.split_households.clone(),
            placed_count: plan.assignments.len() as i64,
            total_distance_km: plan.total_distance_km(),
        };
        sqlx::query(
            "INSERT INTO relocation_plans (id, facility_id, unplaced, split_households, placed_count, \
             total_distance_km, created_by, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&stored.id)
        .bind(&stored.facility_id)
        .bind(serde_json::to_string(&stored.unplaced).map_err(Error::internal)?)
        .bind(serde_json::to_string(&stored.split_households).map_err(Error::internal)?)
        .bind(stored.placed_count)
        .bind(stored.total_distance_km)
        .bind(&access.principal.agency)
        .bind(now_micros())
        .execute(tx.conn())
        .await
        .db()?;
        let name = format!("facilities/{}/relocationPlans/{}", f.id, stored.id);
        if let Some((rid, _)) = &request_id {
            idempotency::complete(&mut tx, &access.principal.agency, rid, &name).await?;
        }
        audit::append(&mut tx, &access.entry(name, "manifest", "OK")).await?;
        for m in &stored.movements {
            outbox::append(&mut tx, movement_event("movement.planned", m)).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// A stored plan, with its movements as they are now.
    pub async fn relocation_plan(
        &self,
        access: &Access,
        facility: &str,
        id: &str,
    ) -> Result<StoredPlan> {
        let name = format!("facilities/{facility}/relocationPlans/{id}");
        match self.get(facility).await {
            Ok(f) if runs(access, &f) => {}
            _ => return Err(Error::NotFound(name)),
        }
        let r = sqlx::query(
            "SELECT unplaced, split_households, placed_count, total_distance_km FROM relocation_plans \
             WHERE facility_id = $1 AND id = $2",
        )
        .bind(facility)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await
        .db()?
        .ok_or_else(|| Error::NotFound(name))?;
        let unplaced: String = r.try_get("unplaced").db()?;
        let split: String = r.try_get("split_households").db()?;
        let mut filter = Sql::new("m.relocation_plan = ");
        filter.bind_text(id);
        let movements = self.movements(access, Some(&filter), None, 10_000).await?;
        Ok(StoredPlan {
            id: id.to_string(),
            facility_id: facility.to_string(),
            movements,
            unplaced: serde_json::from_str(&unplaced).map_err(Error::internal)?,
            split_households: serde_json::from_str(&split).map_err(Error::internal)?,
            placed_count: r.try_get("placed_count").db()?,
            total_distance_km: r.try_get("total_distance_km").db()?,
        })
    }
}
