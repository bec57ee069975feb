//! Occupancy: who is placed where, projected from the registry's change stream. The registry
//! owns where a person is; this service follows it.
//!
//! The consumer reads `WatchChanges` from its stored cursor, applies each batch of events and
//! stores the new cursor in the same transaction, so after a restart (or a lost connection)
//! it resumes exactly after the last event it applied, and applying an event twice changes
//! nothing (each event replaces the person's row with the snapshot it carries).

use std::collections::BTreeMap;

use concord_platform::error::{Error, Result};
use concord_platform::link::ServiceLink;
use concord_platform::link::{self, retry_forever};
use concord_platform::server::Shutdown;
use concord_platform::sql::{Sql, SqlValue};
use concord_platform::storage::{Db, SqlxResultExt};
use concord_proto::registry::v1 as reg;
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::domain::{AgeBand, PlaceSex};

/// The consumer's name in `consumer_cursors`.
const CONSUMER: &str = "registry.persons";

/// Purpose sent with the stream (recorded in the registry's audit log).
pub const PURPOSE: &str = "facility occupancy projection";

/// Custody statuses in which a person occupies a place at their facility.
const PLACED: &[&str] = &[
    "CUSTODY_STATUS_IN_CUSTODY",
    "CUSTODY_STATUS_HOSPITALISED",
    "CUSTODY_STATUS_IN_REHABILITATION",
];

/// One person's placement. The age band is not stored: it is worked out when counted, from
/// the birth year (or, without one, whether the person is recorded as a child), so people
/// move up a band as years pass without any event about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Person id.
    pub person_id: String,
    /// Facility id.
    pub facility_id: String,
    /// Section id, or empty.
    pub section_id: String,
    /// Sex, if recorded.
    pub sex: Option<PlaceSex>,
    /// Birth year, 0 when unknown.
    pub birth_year: i32,
    /// Recorded as a child (used without a birth year).
    pub child: bool,
    /// Active nationalities.
    pub states: Vec<String>,
    /// Household id, or empty.
    pub household: String,
    /// Custody status (the registry's name, `CUSTODY_STATUS_IN_CUSTODY`...).
    pub custody_status: String,
}

impl Placement {
    /// Age in `this_year`, if the birth year is known.
    pub fn age(&self, this_year: i32) -> Option<i32> {
        (self.birth_year > 0).then(|| this_year - self.birth_year)
    }

    /// Age band in `this_year`.
    pub fn band(&self, this_year: i32) -> AgeBand {
        age_band(self.birth_year, self.child, this_year)
    }
}

/// The age band of someone born in `birth_year` (0: unknown) this year.
pub fn age_band(birth_year: i32, child: bool, this_year: i32) -> AgeBand {
    if birth_year > 0 {
        match this_year - birth_year {
            a if a < 12 => AgeBand::Child,
            a if a < 18 => AgeBand::Adolescent,
            _ => AgeBand::Adult,
        }
    } else if child {
        AgeBand::Child
    } else {
        AgeBand::Adult
    }
}

/// The placement a registry snapshot of a person implies, or `None` (not placed, merged).
pub fn placement(p: &reg::Person) -> Option<Placement> {
    let status = reg::CustodyStatus::try_from(p.custody_status).ok()?.as_str_name();
    if !PLACED.contains(&status) || p.facility_id.is_empty() || !p.merged_into.is_empty() {
        return None;
    }
    let sex = match reg::Sex::try_from(p.sex).ok()? {
        reg::Sex::Male => Some(PlaceSex::Male),
        reg::Sex::Female => Some(PlaceSex::Female),
        _ => None,
    };
    let birth_year = p.birth_date.as_ref().map_or(0, |d| d.year.max(0));
    let child = matches!(
        reg::PersonCategory::try_from(p.category),
        Ok(reg::PersonCategory::Child | reg::PersonCategory::UnaccompaniedChild)
    );
    let mut states: Vec<String> = p
        .nationalities
        .iter()
        .filter(|n| n.revoke_time.is_none())
        .map(|n| n.state.clone())
        .collect();
    states.sort();
    states.dedup();
    Some(Placement {
        person_id: p.name.trim_start_matches("persons/").to_string(),
        facility_id: p.facility_id.clone(),
        section_id: p.section_id.clone(),
        sex,
        birth_year,
        child,
        states,
        household: p.household.trim_start_matches("households/").to_string(),
        custody_status: status.to_string(),
    })
}

/// Applies a batch of registry events and the cursor after them, in one transaction.
pub async fn apply(db: &Db, events: &[concord_proto::r#type::v1::ChangeEvent]) -> Result<()> {
    let Some(last) = events.last() else { return Ok(()) };
    let mut tx = db.begin().await?;
    for e in events.iter().filter(|e| !e.bookmark) {
        let Some(any) = e.resource.as_ref() else { continue };
        let p = reg::Person::decode(any.value.as_slice()).map_err(Error::internal)?;
        let id = e.resource_name.trim_start_matches("persons/");
        // A snapshot older than one applied already (another replica ahead of this one, or
        // the relay's own) changes nothing.
        // (The version applied also keeps an arrival's places reserved until it is seen.)
        if !link::claim_version(&mut tx, id, link::etag_version(&p.etag)).await? {
            continue;
        }
        sqlx::query("DELETE FROM placements WHERE person_id = $1")
            .bind(id)
            .execute(tx.conn())
            .await
            .db()?;
        if let Some(pl) = placement(&p) {
            sqlx::query(
                "INSERT INTO placements (person_id, facility_id, section_id, sex, birth_year, child, states, custody_status, household) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&pl.person_id)
            .bind(&pl.facility_id)
            .bind(&pl.section_id)
            .bind(pl.sex.map_or("", |s| s.as_str()))
            .bind(i64::from(pl.birth_year))
            .bind(i64::from(pl.child))
            .bind(format!("|{}|", pl.states.join("|")))
            .bind(&pl.custody_status)
            .bind(&pl.household)
            .execute(tx.conn())
            .await
            .db()?;
        }
    }
    link::save_cursor(&mut tx, CONSUMER, &last.cursor).await?;
    tx.commit().await
}

/// The cursor after the last applied event (empty: from the start).
pub async fn cursor(db: &Db) -> Result<String> {
    link::cursor(db, CONSUMER).await
}

/// The columns of a placement row, for [`placement_from_row`].
pub(crate) const PLACEMENT_COLUMNS: &str =
    "person_id, facility_id, section_id, sex, birth_year, child, states, custody_status, household";

/// A placement as stored.
pub(crate) fn placement_from_row(r: &AnyRow) -> Result<Placement> {
    let sex: String = r.try_get("sex").db()?;
    let birth_year: i64 = r.try_get("birth_year").db()?;
    let child: i64 = r.try_get("child").db()?;
    let states: String = r.try_get("states").db()?;
    Ok(Placement {
        person_id: r.try_get("person_id").db()?,
        facility_id: r.try_get("facility_id").db()?,
        section_id: r.try_get("section_id").db()?,
        sex: PlaceSex::parse(&sex),
        birth_year: birth_year as i32,
        child: child != 0,
        states: states.split('|').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        household: r.try_get("household").db()?,
        custody_status: r.try_get("custody_status").db()?,
    })
}

/// Occupancy of one facility.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// People placed.
    pub total: i64,
    /// Per (section, sex, age band); sex `None` when not recorded.
    pub lines: BTreeMap<(String, Option<PlaceSex>, AgeBand), i64>,
    /// Per nationality (a person with two counts under both).
    pub nationalities: BTreeMap<String, i64>,
}

/// The occupancy of `facility`, as projected so far.
pub async fn occupancy(db: &Db, facility: &str) -> Result<Occupancy> {
    let mut sql =
        Sql::new(format!("SELECT {PLACEMENT_COLUMNS} FROM placements WHERE facility_id = "));
    sql.bind(SqlValue::Text(facility.to_string()));
    let rows = sql.query(db.dialect()).fetch_all(db.reader()).await.db()?;
    let mut o = Occupancy::default();
    let year = concord_platform::time::current_year();
    for r in &rows {
        let p = placement_from_row(r)?;
        o.total += 1;
        *o.lines.entry((p.section_id.clone(), p.sex, p.band(year))).or_default() += 1;
        for s in p.states {
            *o.nationalities.entry(s).or_default() += 1;
        }
    }
    Ok(o)
}

/// Follows the registry until `shutdown`, reconnecting with backoff after any failure.
pub async fn follow(db: Db, link: ServiceLink, shutdown: Shutdown) {
    retry_forever("occupancy", shutdown.clone(), || follow_once(&db, &link)).await
}

async fn follow_once(db: &Db, link: &ServiceLink) -> anyhow::Result<()> {
    link::follow_registry(
        db,
        link,
        CONSUMER,
        PURPOSE,
        |events| async move { apply(db, &events).await },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_people_held_at_a_facility_occupy_a_place() {
        let mut p = reg::Person {
            name: "persons/p1".into(),
            sex: reg::Sex::Female as i32,
            birth_date: Some(concord_proto::r#type::v1::ApproximateDate {
                year: 2014,
                ..Default::default()
            }),
            category: reg::PersonCategory::Child as i32,
            custody_status: reg::CustodyStatus::InCustody as i32,
            facility_id: "al-hol".into(),
            ..Default::default()
        };
        let pl = placement(&p).expect("placed");
        assert_eq!(pl.sex, Some(PlaceSex::Female));
        assert_eq!(age_band(pl.birth_year, pl.child, 2025), AgeBand::Child);
        assert_eq!(age_band(pl.birth_year, pl.child, 2026), AgeBand::Adolescent, "a year later");
        assert_eq!(age_band(0, true, 2026), AgeBand::Child);
        p.custody_status = reg::CustodyStatus::Escaped as i32;
        assert!(placement(&p).is_none());
        p.custody_status = reg::CustodyStatus::InCustody as i32;
        p.merged_into = "persons/p2".into();
        assert!(placement(&p).is_none(), "a merged record is counted under its survivor");
    }
}
