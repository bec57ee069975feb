//! Figures per state: requests received, made, accepted, declined and pending (with their
//! age), median days to decision, nationals still held (from the registry's projection
//! [`crate::registry`]), people handed over.

use std::collections::BTreeSet;

use concord_platform::error::Result;
use concord_platform::storage::SqlxResultExt;
use concord_platform::time::now_micros;
use sqlx::Row;

use super::Store;
use crate::domain::{median, RequestType, State};

/// Most pending requests listed per state.
pub const OLDEST_PENDING: usize = 100;

const DAY_MICROS: f64 = 86_400_000_000.0;

/// One pending request.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Request id.
    pub id: String,
    /// Type.
    pub kind: RequestType,
    /// State.
    pub state: State,
    /// Requesting state.
    pub requesting_state: String,
    /// Whole days since submission.
    pub age_days: i64,
}

/// One state's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateFigures {
    /// ISO code.
    pub state: String,
    /// Submitted to it.
    pub received: i64,
    /// Submitted by it.
    pub made: i64,
    /// Received and approved in principle.
    pub accepted: i64,
    /// Received and rejected.
    pub declined: i64,
    /// Received, not decided, not final.
    pub pending: i64,
    /// The oldest pending, oldest first.
    pub oldest_pending: Vec<Pending>,
    /// Median days from submission to decision.
    pub median_days_to_decision: f64,
    /// Nationals held now.
    pub nationals_held: i64,
    /// People handed over to it, as the registry recorded.
    pub handed_over: i64,
    /// Pending, by type and age band ([`age_band`]).
    pub pending_by_type_and_age: Vec<(RequestType, &'static str, i64)>,
}

/// The age band of a request pending for `days`.
pub fn age_band(days: i64) -> &'static str {
    match days {
        ..=30 => "0-30",
        31..=90 => "31-90",
        91..=365 => "91-365",
        _ => "over-365",
    }
}

impl Store {
    /// The states that have figures: every party state of a submitted request and every
    /// state with nationals held.
    pub async fn states_with_figures(&self) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for q in [
            "SELECT DISTINCT requesting_state FROM requests WHERE submit_time <> 0",
            "SELECT DISTINCT requested_state FROM requests WHERE submit_time <> 0",
            "SELECT DISTINCT receiving_state FROM requests WHERE submit_time <> 0 AND receiving_state <> ''",
            "SELECT DISTINCT state FROM held_nationals",
        ] {
            let states: Vec<String> =
                sqlx::query_scalar(q).fetch_all(self.db.reader()).await.db()?;
            out.extend(states);
        }
        Ok(out.into_iter().collect())
    }

    /// The figures of `state` now.
    pub async fn figures(&self, state: &str) -> Result<StateFigures> {
        let db = self.db.reader();
        let count = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql).bind(state).fetch_one(db).await.db()
        };
        let received =
            count("SELECT COUNT(*) FROM requests WHERE requested_state = $1 AND submit_time <> 0")
                .await?;
        let made =
            count("SELECT COUNT(*) FROM requests WHERE requesting_state = $1 AND submit_time <> 0")
                .await?;
        let nationals_held = count("SELECT COUNT(*) FROM held_nationals WHERE state = $1").await?;
        let handed_over = count(
            "SELECT COUNT(*) FROM subjects s JOIN requests r ON r.id = s.request_id \
             WHERE r.receiving_state = $1 AND s.registry_status = 'APPLIED'",
        )
        .await?;
        // Accepted: approved in principle at some point; declined: rejected at some point
        // (also after an approval, which is possible until the logistics are planned). Days
        // to decision run to the first of the two (decide_time).
        let decided = sqlx::query(
            "SELECT r.submit_time, r.decide_time, \
             (SELECT COUNT(*) FROM request_transitions t WHERE t.request_id = r.id AND t.to_state = $2) AS approved, \
             (SELECT COUNT(*) FROM request_transitions t WHERE t.request_id = r.id AND t.to_state = $3) AS rejected \
             FROM requests r WHERE r.requested_state = $1 AND r.decide_time <> 0",
        )
        .bind(state)
        .bind(State::ApprovedInPrinciple.as_str())
        .bind(State::Rejected.as_str())
        .fetch_all(db)
        .await
        .db()?;
        let (mut accepted, mut declined) = (0, 0);
        let mut days = Vec::with_capacity(decided.len());
        for row in &decided {
            let submit: i64 = row.try_get("submit_time").db()?;
            let decide: i64 = row.try_get("decide_time").db()?;
            accepted += i64::from(row.try_get::<i64, _>("approved").db()? > 0);
            declined += i64::from(row.try_get::<i64, _>("rejected").db()? > 0);
            days.push((decide - submit).max(0) as f64 / DAY_MICROS);
        }
        let open: Vec<&str> = State::ALL
            .iter()
            .filter(|s| !s.is_final() && **s != State::Draft)
            .map(|s| s.as_str())
            .collect();
        let in_list = open.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        let pending_rows = sqlx::query(&format!(
            "SELECT id, type, state, requesting_state, submit_time FROM requests \
             WHERE requested_state = $1 AND submit_time <> 0 AND decide_time = 0 AND state IN ({in_list}) \
             ORDER BY submit_time, id"
        ))
        .bind(state)
        .fetch_all(db)
        .await
        .db()?;
        let now = now_micros();
        let mut bands: std::collections::BTreeMap<(RequestType, &'static str), i64> =
            Default::default();
        for row in &pending_rows {
            let kind: String = row.try_get("type").db()?;
            let submit: i64 = row.try_get("submit_time").db()?;
            if let Some(kind) = RequestType::parse(&kind) {
                let days = (now - submit).max(0) / DAY_MICROS as i64;
                *bands.entry((kind, age_band(days))).or_default() += 1;
            }
        }
        let mut oldest_pending = Vec::new();
        for row in pending_rows.iter().take(OLDEST_PENDING) {
            let kind: String = row.try_get("type").db()?;
            let st: String = row.try_get("state").db()?;
            let submit: i64 = row.try_get("submit_time").db()?;
            let (Some(kind), Some(st)) = (RequestType::parse(&kind), State::parse(&st)) else {
                continue;
            };
            oldest_pending.push(Pending {
                id: row.try_get("id").db()?,
                kind,
                state: st,
                requesting_state: row.try_get("requesting_state").db()?,
                age_days: (now - submit).max(0) / DAY_MICROS as i64,
            });
        }
        Ok(StateFigures {
            state: state.to_string(),
            received,
            made,
            accepted,
            declined,
            pending: pending_rows.len() as i64,
            oldest_pending,
            median_days_to_decision: median(&mut days),
            nationals_held,
            handed_over,
            pending_by_type_and_age: bands.into_iter().map(|((k, a), n)| (k, a, n)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_in_their_bands() {
        assert_eq!(age_band(0), "0-30");
        assert_eq!(age_band(30), "0-30");
        assert_eq!(age_band(31), "31-90");
        assert_eq!(age_band(365), "91-365");
        assert_eq!(age_band(366), "over-365");
    }
}
