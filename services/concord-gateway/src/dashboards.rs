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

use crate::casefile::{part, until, within, Backends, Caller};

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
        let mut c = reg_client();
        let filter = format!("nationality = \"{state}\"");
        async move {
            let m = reg::SummarizePersonsRequest { filter, group_by: group as i32 };
            until(deadline, c.summarize_persons(within(m, deadline))).await
        }
    };
    let (mut r1, mut r2) = (req_client(), req_client());
    let (status, facility, category, figures, overdue) = tokio::join!(
        summary(reg::PersonGrouping::CustodyStatus),
        summary(reg::PersonGrouping::Facility),
        summary(reg::PersonGrouping::Category),
        until(
            deadline,
            r1.get_state_statistics(within(
                req::GetStateStatisticsRequest { name: format!("statistics/{state}") },
                deadline
            ))
        ),
        until(
            deadline,
            r2.list_tasks(within(
                req::ListTasksRequest {
                    parent: "requests/-".into(),
                    page_size: MAX_OVERDUE,
                    overdue_only: true,
                    ..Default::default()
                },
                deadline
            ))
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
    let nationals = status.as_ref().map_or(0, |s| s.total);
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
    let (mut c1, mut c2, mut c3, mut c4, mut c5) =
        (client(), client(), client(), client(), client());
    let name = format!("facilities/{facility}");
    let moves = |filter: String| fac::ListMovementsRequest {
        page_size: RECENT,
        filter,
        ..Default::default()
    };
    let (found, occupancy, incidents, inbound, outbound) = tokio::join!(
        until(
            deadline,
            c1.get_facility(within(fac::GetFacilityRequest { name: name.clone() }, deadline))
        ),
        until(
            deadline,
            c2.get_occupancy(within(fac::GetOccupancyRequest { name: name.clone() }, deadline))
        ),
        until(
            deadline,
            c3.list_incidents(within(
                fac::ListIncidentsRequest {
                    parent: name.clone(),
                    page_size: RECENT,
                    ..Default::default()
                },
                deadline
            ))
        ),
        until(
            deadline,
            c4.list_movements(within(
                moves(format!("destination_facility = \"{facility}\"")),
                deadline
            ))
        ),
        until(
            deadline,
            c5.list_movements(within(moves(format!("source_facility = \"{facility}\"")), deadline))
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
