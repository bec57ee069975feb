//! Dashboards, composed like case files ([`crate::casefile`]): each part asked of its
//! service as the partner, in parallel, under the call's deadline; a part that fails or is
//! late is left out with its status.

use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::gateway::v1 as pb;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as req;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use tokio::time::Instant;
use tonic::Status;

use crate::casefile::{part, read, Backends, Caller};

/// Overdue tasks counted at most.
pub const MAX_OVERDUE: i32 = 1000;

/// Overdue tasks listed.
pub const LISTED_OVERDUE: usize = 20;

/// Incidents and movements (each way) read.
pub const RECENT: i32 = 100;

/// The dashboard of `state` (a checked ISO code) as `caller` may see it, by `deadline`.
pub async fn state(
    b: &Backends,
    caller: &Caller,
    state: &str,
    deadline: Instant,
) -> pb::StateDashboard {
    let reg_client =
        || RegistryServiceClient::with_interceptor(b.registry.clone(), caller.credentials());
    let req_client =
        || RequestsServiceClient::with_interceptor(b.requests.clone(), caller.credentials());
    let summary = |group: reg::PersonGrouping| {
        let c = reg_client();
        let filter = format!("nationality = \"{state}\"");
        async move {
            let m = reg::SummarizePersonsRequest { filter, group_by: group as i32 };
            read(deadline, c.clone(), m, |mut c, m| async move { c.summarize_persons(m).await })
                .await
        }
    };
    let (r1, r2) = (req_client(), req_client());
    let (status, facility, category, figures, overdue) = tokio::join!(
        summary(reg::PersonGrouping::CustodyStatus),
        summary(reg::PersonGrouping::Facility),
        summary(reg::PersonGrouping::Category),
        read(
            deadline,
            r1.clone(),
            req::GetStateStatisticsRequest { name: format!("statistics/{state}") },
            |mut c, m| async move { c.get_state_statistics(m).await }
        ),
        read(
            deadline,
            r2.clone(),
            req::ListTasksRequest {
                parent: "requests/-".into(),
                page_size: MAX_OVERDUE,
                overdue_only: true,
                ..Default::default()
            },
            |mut c, m| async move { c.list_tasks(m).await }
        ),
    );
    // The nationals' part is whole only if all three counts came.
    let nationals_error =
        [&status, &facility, &category].into_iter().find_map(|r| r.as_ref().err()).cloned();
    let parts = vec![
        part(pb::Part::Nationals, "registry", nationals_error.as_ref().map_or(Ok(()), Err)),
        part(pb::Part::RequestStatistics, "requests", figures.as_ref().map(|_| ())),
        part(pb::Part::OverdueTasks, "requests", overdue.as_ref().map(|_| ())),
    ];
    // Every summary counts the same people: the total of any that came.
    let nationals = [&status, &facility, &category]
        .into_iter()
        .find_map(|r| r.as_ref().ok().map(|s| s.total))
        .unwrap_or(0);
    let overdue = overdue.map(|r| r.tasks).unwrap_or_default();
    pb::StateDashboard {
        name: format!("dashboards/states/{state}"),
        state: state.to_string(),
        nationals,
        by_custody_status: status.map(|s| s.counts).unwrap_or_default(),
        by_facility: facility.map(|s| s.counts).unwrap_or_default(),
        by_category: category.map(|s| s.counts).unwrap_or_default(),
        requests: figures.ok(),
        overdue_tasks: overdue.len() as i64,
        overdue: overdue.into_iter().take(LISTED_OVERDUE).collect(),
        parts,
    }
}

/// Whether a movement has not ended.
fn pending(m: &fac::Movement) -> bool {
    !matches!(
        fac::MovementState::try_from(m.state),
        Ok(fac::MovementState::Arrived | fac::MovementState::Aborted)
    )
}

/// The dashboard of `facility` (an id) as `caller` may see it, by `deadline`. Fails only
/// when the facility cannot be read.
pub async fn facility(
    b: &Backends,
    caller: &Caller,
    facility: &str,
    deadline: Instant,
) -> Result<pb::FacilityDashboard, Status> {
    let client =
        || FacilitiesServiceClient::with_interceptor(b.facilities.clone(), caller.credentials());
    let (c1, c2, c3, c4, c5) = (client(), client(), client(), client(), client());
    let name = format!("facilities/{facility}");
    let moves = |filter: String| fac::ListMovementsRequest {
        page_size: RECENT,
        filter,
        ..Default::default()
    };
    let (found, occupancy, incidents, inbound, outbound) = tokio::join!(
        read(
            deadline,
            c1.clone(),
            fac::GetFacilityRequest { name: name.clone() },
            |mut c, m| async move { c.get_facility(m).await }
        ),
        read(
            deadline,
            c2.clone(),
            fac::GetOccupancyRequest { name: name.clone() },
            |mut c, m| async move { c.get_occupancy(m).await }
        ),
        read(
            deadline,
            c3.clone(),
            fac::ListIncidentsRequest {
                parent: name.clone(),
                page_size: RECENT,
                ..Default::default()
            },
            |mut c, m| async move { c.list_incidents(m).await }
        ),
        read(
            deadline,
            c4.clone(),
            moves(format!("destination_facility = \"{facility}\"")),
            |mut c, m| async move { c.list_movements(m).await }
        ),
        read(
            deadline,
            c5.clone(),
            moves(format!("source_facility = \"{facility}\"")),
            |mut c, m| async move { c.list_movements(m).await }
        ),
    );
    let found = found?;
    let capacity =
        found.sections.iter().flat_map(|s| s.capacities.iter()).map(|c| i64::from(c.places)).sum();
    let movements_error = inbound.as_ref().err().or(outbound.as_ref().err()).cloned();
    let parts = vec![
        part(pb::Part::Facility, "facilities", Ok(())),
        part(pb::Part::Occupancy, "facilities", occupancy.as_ref().map(|_| ())),
        part(pb::Part::Incidents, "facilities", incidents.as_ref().map(|_| ())),
        part(pb::Part::Movements, "facilities", movements_error.as_ref().map_or(Ok(()), Err)),
    ];
    let mut movements: Vec<fac::Movement> = inbound
        .map(|r| r.movements)
        .unwrap_or_default()
        .into_iter()
        .chain(outbound.map(|r| r.movements).unwrap_or_default())
        .filter(pending)
        .collect();
    movements.sort_by(|a, b| a.name.cmp(&b.name));
    movements.dedup_by(|a, b| a.name == b.name);
    Ok(pb::FacilityDashboard {
        name: format!("dashboards/facilities/{facility}"),
        facility: Some(found),
        occupancy: occupancy.ok(),
        capacity,
        open_incidents: incidents
            .map(|r| r.incidents)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.state != fac::IncidentState::Closed as i32)
            .collect(),
        pending_movements: movements,
        parts,
    })
}
