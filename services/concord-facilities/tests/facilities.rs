//! The facilities service on a real server: facilities and their sections, the security
//! status machine and its timeline, custodian changes, who may change what (the
//! authorization matrix rows of every RPC), bad input, audit and the change stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_facilities::domain::SeparationRules;
use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::policy::{Action, Policy};
use concord_platform::server::{Services, Shutdown};
use concord_platform::storage::Db;
use concord_proto::facilities::v1 as pb;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_testkit::{caller, coordinator, custodial, justice, ministry, monitor, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

type Client = FacilitiesServiceClient<InterceptedService<Channel, HeaderCredentials>>;

struct Harness {
    server: TestServer,
    db: Db,
    _t: concord_testkit::TestDb,
}

impl Harness {
    async fn start() -> Self {
        let t = concord_testkit::database().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let cfg = concord_testkit::server_config();
        let (svc, db) = concord_facilities::build(
            &t.url,
            Arc::new(Policy::embedded()),
            SeparationRules::default(),
            &cfg,
            None,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let server =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        Harness { server, db, _t: t }
    }

    async fn client(&self, p: Principal) -> Client {
        let ch = Channel::from_shared(self.server.uri()).unwrap().connect().await.unwrap();
        FacilitiesServiceClient::with_interceptor(ch, caller(p))
    }
}

/// The custodial authority of the testkit, which runs al-hol and roj.
fn guard() -> Principal {
    custodial(&["al-hol", "roj"])
}

fn facility(display_name: &str) -> pb::Facility {
    pb::Facility {
        display_name: display_name.into(),
        kind: pb::FacilityKind::Camp as i32,
        location: Some(pb::Location {
            latitude: 36.37,
            longitude: 40.99,
            region: "Hasakah".into(),
        }),
        sections: vec![pb::Section {
            section_id: "annex".into(),
            display_name: "Annex".into(),
            capacities: vec![
                pb::Capacity {
                    sex: pb::PlaceSex::Female as i32,
                    age_band: pb::AgeBand::Adult as i32,
                    places: 500,
                },
                pb::Capacity {
                    sex: pb::PlaceSex::Male as i32,
                    age_band: pb::AgeBand::Child as i32,
                    places: 800,
                },
            ],
        }],
        ..Default::default()
    }
}

async fn create(c: &mut Client, id: &str, custodian: &str) -> Result<pb::Facility, tonic::Status> {
    c.create_facility(pb::CreateFacilityRequest {
        facility_id: id.into(),
        facility: Some(facility(&format!("{id} camp"))),
        custodian_agency: custodian.into(),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn status(
    c: &mut Client,
    id: &str,
    to: pb::SecurityStatus,
) -> Result<pb::Facility, tonic::Status> {
    c.change_security_status(pb::ChangeSecurityStatusRequest {
        name: format!("facilities/{id}"),
        status: to as i32,
        reason: "gunfire at the north gate".into(),
        reporter: "gate post 3".into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn violations(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn facilities_are_created_validated_and_updated_with_etags() {
    let h = Harness::start().await;
    let mut g = h.client(guard()).await;
    let camp = create(&mut g, "al-hol", "custodial-authority").await.unwrap();
    assert_eq!(camp.name, "facilities/al-hol");
    assert_eq!(camp.security_status, pb::SecurityStatus::Normal as i32);
    assert_eq!(camp.custodian_agency, "custodial-authority");
    assert_eq!(
        create(&mut g, "al-hol", "custodial-authority").await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // Bad input: every field at fault is named, and nothing is stored.
    let mut bad = facility("");
    bad.location = Some(pb::Location { latitude: 95.0, longitude: 40.0, region: String::new() });
    bad.sections.push(bad.sections[0].clone());
    bad.sections[0].capacities[0].places = -1;
    let twice = bad.sections[0].capacities[1];
    bad.sections[0].capacities.push(twice);
    let err = g
        .create_facility(pb::CreateFacilityRequest {
            facility_id: "Bad Id".into(),
            facility: Some(bad),
            custodian_agency: "custodial-authority".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: BTreeSet<String> = violations(&err).into_iter().collect();
    for f in [
        "facility_id",
        "facility.display_name",
        "facility.location.latitude",
        "facility.sections[0].capacities[0].places",
        "facility.sections[0].capacities[2]",
        "facility.sections[1].section_id",
    ] {
        assert!(fields.contains(f), "{f} in {fields:?}");
    }
    let listed =
        g.list_facilities(pb::ListFacilitiesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.facilities.len(), 1, "nothing of the bad request was stored");

    // Update with a field mask and an etag.
    let mut renamed = camp.clone();
    renamed.display_name = "al-Hol camp".into();
    let updated = g
        .update_facility(pb::UpdateFacilityRequest {
            facility: Some(renamed.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "al-Hol camp");
    assert_eq!(updated.sections, camp.sections, "fields outside the mask are kept");
    let stale = g
        .update_facility(pb::UpdateFacilityRequest {
            facility: Some(renamed.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "the etag of the first read is stale now");
    let err = g
        .update_facility(pb::UpdateFacilityRequest {
            facility: Some(updated.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["security_status".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["update_mask.paths[security_status]"]);

    // Filters.
    let mut cell = h.client(coordinator()).await;
    create(&mut cell, "ghwayran", "sdf-prisons").await.unwrap();
    let by_custodian = cell
        .list_facilities(pb::ListFacilitiesRequest {
            filter: "custodian_agency = \"sdf-prisons\"".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_custodian.facilities.len(), 1);
    assert_eq!(by_custodian.facilities[0].name, "facilities/ghwayran");
}

#[tokio::test]
async fn security_status_follows_its_machine_and_custodian_changes_are_recorded() {
    let h = Harness::start().await;
    let mut cell = h.client(coordinator()).await;
    let mut g = h.client(guard()).await;
    create(&mut g, "al-hol", "custodial-authority").await.unwrap();

    let err = status(&mut g, "al-hol", pb::SecurityStatus::Compromised).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("NORMAL") && err.message().contains("ELEVATED"),
        "{}",
        err.message()
    );
    for to in [
        pb::SecurityStatus::Elevated,
        pb::SecurityStatus::High,
        pb::SecurityStatus::Lockdown,
        pb::SecurityStatus::Compromised,
        pb::SecurityStatus::Recovering,
    ] {
        let f = status(&mut g, "al-hol", to).await.unwrap();
        assert_eq!(f.security_status, to as i32);
        assert_eq!(f.security_status_reason, "gunfire at the north gate");
    }
    let err = g
        .change_security_status(pb::ChangeSecurityStatusRequest {
            name: "facilities/al-hol".into(),
            status: pb::SecurityStatus::Normal as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(fields, vec!["reason", "reporter"]);

    // The camp passes to another authority: one recorded event; the old custodian may no
    // longer change it, and only the coordinator records the change.
    let err = g
        .change_custodian(pb::ChangeCustodianRequest {
            name: "facilities/al-hol".into(),
            custodian_agency: "interim-authority".into(),
            reason: "handover agreement".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let f = cell
        .change_custodian(pb::ChangeCustodianRequest {
            name: "facilities/al-hol".into(),
            custodian_agency: "interim-authority".into(),
            reason: "handover agreement of 1 March".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.custodian_agency, "interim-authority");
    let err = status(&mut g, "al-hol", pb::SecurityStatus::Normal).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("interim-authority"));
    let mut interim = h.client(Principal { agency: "interim-authority".into(), ..guard() }).await;
    status(&mut interim, "al-hol", pb::SecurityStatus::Normal).await.unwrap();

    let events = g
        .list_facility_events(pb::ListFacilityEventsRequest {
            parent: "facilities/al-hol".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .facility_events;
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            if e.kind == pb::FacilityEventKind::Custodian as i32 {
                format!("{} -> {}", e.from_custodian, e.to_custodian)
            } else {
                format!(
                    "{} -> {}",
                    pb::SecurityStatus::try_from(e.from_status).unwrap().as_str_name(),
                    pb::SecurityStatus::try_from(e.to_status).unwrap().as_str_name()
                )
            }
        })
        .collect();
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    assert_eq!(kinds[5], "custodial-authority -> interim-authority");
    assert_eq!(kinds[6], "SECURITY_STATUS_RECOVERING -> SECURITY_STATUS_NORMAL");
    assert_eq!(events[6].recorded_by, "interim-authority");

    // Final statuses end the machine.
    cell.change_security_status(pb::ChangeSecurityStatusRequest {
        name: "facilities/al-hol".into(),
        status: pb::SecurityStatus::Closed as i32,
        reason: "camp emptied".into(),
        reporter: "coordination cell".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = status(&mut cell, "al-hol", pb::SecurityStatus::Elevated).await.unwrap_err();
    assert!(err.message().contains("nothing (final)"), "{}", err.message());
    // A closed facility no longer changes in any way.
    let closed = cell
        .get_facility(pb::GetFacilityRequest { name: "facilities/al-hol".into() })
        .await
        .unwrap()
        .into_inner();
    let err = cell
        .update_facility(pb::UpdateFacilityRequest {
            facility: Some(closed),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(report(&mut cell, "al-hol").await.unwrap_err().code(), Code::FailedPrecondition);

    // Changes are reported in the order they happened; an unknown status is named as such.
    create(&mut cell, "roj", "custodial-authority").await.unwrap();
    status(&mut cell, "roj", pb::SecurityStatus::Elevated).await.unwrap();
    let an_hour_ago = prost_types::Timestamp {
        seconds: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600,
        nanos: 0,
    };
    let err = cell
        .change_security_status(pb::ChangeSecurityStatusRequest {
            name: "facilities/roj".into(),
            status: pb::SecurityStatus::High as i32,
            reason: "late report".into(),
            reporter: "gate post 3".into(),
            occur_time: Some(an_hour_ago),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["occur_time"]);
    let err = cell
        .change_security_status(pb::ChangeSecurityStatusRequest {
            name: "facilities/roj".into(),
            status: 42,
            reason: "x".into(),
            reporter: "y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.get_error_details().bad_request().unwrap().field_violations[0]
        .description
        .contains("unknown value 42"));

    // Every change is in the audit log, with its purpose; the stream carries them all.
    let audit = concord_platform::audit::export(&h.db, 0, 1000).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.entry.action == "ChangeSecurityStatus" && e.entry.outcome == "OK")
            .count(),
        8,
        "seven at al-hol, one at roj"
    );
    assert!(audit
        .iter()
        .any(|e| e.entry.action == "ChangeCustodian" && e.entry.agency == "coalition-cell"));
    // The former custodian's refused attempt is on record too.
    assert!(audit.iter().any(|e| e.entry.action == "ChangeSecurityStatus"
        && e.entry.agency == "custodial-authority"
        && e.entry.resource == "facilities/al-hol"
        && e.entry.outcome == "PERMISSION_DENIED"));
    assert!(audit.iter().all(|e| e.entry.purpose == "concord integration test"));
    let mut watch = h
        .client(monitor())
        .await
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = loop {
        let e = watch.next().await.unwrap().unwrap().event.unwrap();
        if !e.bookmark {
            break e;
        }
    };
    assert_eq!(first.event_type, "facility.created");
    let payload = pb::Facility::decode(first.resource.unwrap().value.as_slice()).unwrap();
    assert_eq!(payload.name, "facilities/al-hol");
}

#[tokio::test]
async fn incidents_follow_their_lifecycle_with_their_latest_counts() {
    let h = Harness::start().await;
    let mut g = h.client(guard()).await;
    create(&mut g, "al-hol", "custodial-authority").await.unwrap();
    let err = g
        .report_incident(pb::ReportIncidentRequest {
            parent: "facilities/al-hol".into(),
            incident: Some(pb::Incident { killed: -1, ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec!["incident.description", "incident.killed", "incident.kind", "incident.reporter"]
    );
    let i = report(&mut g, "al-hol").await.unwrap();
    assert_eq!(i.state, pb::IncidentState::Reported as i32);
    let step = |to: pb::IncidentState, missing: i32| pb::TransitionIncidentRequest {
        name: i.name.clone(),
        state: to as i32,
        reason: format!("now {}", to.as_str_name()),
        killed: 3,
        injured: 20,
        missing,
        ..Default::default()
    };
    let err = g.transition_incident(step(pb::IncidentState::Reconciled, 12)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("CONFIRMED"), "{}", err.message());
    g.transition_incident(step(pb::IncidentState::Confirmed, 40)).await.unwrap();
    g.transition_incident(step(pb::IncidentState::Contained, 25)).await.unwrap();
    let reconciled =
        g.transition_incident(step(pb::IncidentState::Reconciled, 7)).await.unwrap().into_inner();
    assert_eq!((reconciled.killed, reconciled.injured, reconciled.missing), (3, 20, 7));
    assert!(reconciled.description.contains("RECONCILED: now INCIDENT_STATE_RECONCILED"));
    g.transition_incident(step(pb::IncidentState::Closed, 7)).await.unwrap();
    let err = g.transition_incident(step(pb::IncidentState::Confirmed, 7)).await.unwrap_err();
    assert!(err.message().contains("nothing (closed)"), "{}", err.message());
    let listed = h
        .client(monitor())
        .await
        .list_incidents(pb::ListIncidentsRequest {
            parent: "facilities/al-hol".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.incidents.len(), 1);
    assert_eq!(listed.incidents[0].state, pb::IncidentState::Closed as i32);
}

/// Every RPC with the action the policy checks for it.
const RPCS: &[(&str, Action)] = &[
    ("CreateFacility", Action::FacilitiesManage),
    ("GetFacility", Action::FacilitiesRead),
    ("ListFacilities", Action::FacilitiesRead),
    ("UpdateFacility", Action::FacilitiesManage),
    ("ChangeSecurityStatus", Action::FacilitiesSecurity),
    ("ChangeCustodian", Action::FacilitiesCustodian),
    ("ListFacilityEvents", Action::FacilitiesRead),
    ("GetOccupancy", Action::FacilitiesRead),
    ("ReportIncident", Action::FacilitiesSecurity),
    ("GetIncident", Action::FacilitiesRead),
    ("ListIncidents", Action::FacilitiesRead),
    ("TransitionIncident", Action::FacilitiesSecurity),
    ("WatchChanges", Action::FacilitiesRead),
    ("CreateMovement", Action::FacilitiesPeople),
    ("GetMovement", Action::FacilitiesPeople),
    ("ListMovements", Action::FacilitiesPeople),
    ("ApproveMovement", Action::FacilitiesPeople),
    ("DepartMovement", Action::FacilitiesPeople),
    ("ArriveMovement", Action::FacilitiesPeople),
    ("AbortMovement", Action::FacilitiesPeople),
    ("RecordHeadcount", Action::FacilitiesPeople),
    ("GetHeadcount", Action::FacilitiesPeople),
    ("ListHeadcounts", Action::FacilitiesPeople),
    ("MarkMissingUnaccounted", Action::FacilitiesPeople),
    ("PlanRelocation", Action::FacilitiesPeople),
];

async fn report(c: &mut Client, id: &str) -> Result<pb::Incident, tonic::Status> {
    c.report_incident(pb::ReportIncidentRequest {
        parent: format!("facilities/{id}"),
        incident: Some(pb::Incident {
            kind: pb::IncidentKind::Riot as i32,
            description: "riot in block C".into(),
            reporter: "gate post 3".into(),
            missing: 12,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// The oldest incident of a facility.
async fn first_incident(c: &mut Client, id: &str) -> Result<pb::Incident, tonic::Status> {
    let all = c
        .list_incidents(pb::ListIncidentsRequest {
            parent: format!("facilities/{id}"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .incidents;
    Ok(all.last().cloned().expect("the matrix reports one incident per facility first"))
}

async fn call(c: &mut Client, rpc: &str, id: &str, custodian: &str) -> Result<(), tonic::Status> {
    let name = format!("facilities/{id}");
    match rpc {
        "CreateFacility" => {
            create(c, &format!("{id}-{}", uuid::Uuid::new_v4().simple()), custodian).await?;
        }
        "GetFacility" => {
            c.get_facility(pb::GetFacilityRequest { name }).await?;
        }
        "ListFacilities" => {
            c.list_facilities(pb::ListFacilitiesRequest::default()).await?;
        }
        "UpdateFacility" => {
            let mut f = c.get_facility(pb::GetFacilityRequest { name }).await?.into_inner();
            f.display_name.push('.');
            c.update_facility(pb::UpdateFacilityRequest {
                facility: Some(f),
                update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
                request_id: String::new(),
            })
            .await?;
        }
        "ChangeSecurityStatus" => {
            let f =
                c.get_facility(pb::GetFacilityRequest { name: name.clone() }).await?.into_inner();
            let to = if f.security_status == pb::SecurityStatus::Normal as i32 {
                pb::SecurityStatus::Elevated
            } else {
                pb::SecurityStatus::Normal
            };
            status(c, id, to).await?;
        }
        "ChangeCustodian" => {
            // Hands the facility over and back, so the matrix leaves it as it found it.
            for to in ["interim-authority", custodian] {
                c.change_custodian(pb::ChangeCustodianRequest {
                    name: name.clone(),
                    custodian_agency: to.into(),
                    reason: "matrix".into(),
                    ..Default::default()
                })
                .await?;
            }
        }
        "ListFacilityEvents" => {
            c.list_facility_events(pb::ListFacilityEventsRequest {
                parent: name,
                ..Default::default()
            })
            .await?;
        }
        "ReportIncident" => {
            report(c, id).await?;
        }
        "GetIncident" => {
            let name = first_incident(c, id).await?.name;
            c.get_incident(pb::GetIncidentRequest { name }).await?;
        }
        "ListIncidents" => {
            c.list_incidents(pb::ListIncidentsRequest { parent: name, ..Default::default() })
                .await?;
        }
        "TransitionIncident" => {
            let i = first_incident(c, id).await?;
            let next = match pb::IncidentState::try_from(i.state).unwrap() {
                pb::IncidentState::Reported => pb::IncidentState::Confirmed,
                pb::IncidentState::Confirmed => pb::IncidentState::Contained,
                _ => pb::IncidentState::Reconciled,
            };
            c.transition_incident(pb::TransitionIncidentRequest {
                name: i.name,
                state: next as i32,
                reason: "matrix".into(),
                ..Default::default()
            })
            .await?;
        }
        "GetOccupancy" => {
            c.get_occupancy(pb::GetOccupancyRequest { name }).await?;
        }
        "WatchChanges" => {
            let mut s = c.watch_changes(pb::WatchChangesRequest::default()).await?.into_inner();
            s.next().await.unwrap()?;
        }
        other => panic!("no call for {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn every_rpc_for_every_kind_of_principal_is_decided_by_the_policy_and_the_custodian() {
    let fds = prost_types::FileDescriptorSet::decode(concord_proto::FILE_DESCRIPTOR_SET).unwrap();
    let declared: BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "FacilitiesService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    let covered: BTreeSet<String> = RPCS.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(covered, declared, "every RPC joins the matrix");

    let h = Harness::start().await;
    let mut cell = h.client(coordinator()).await;
    // One facility the testkit's custodial authority runs, one another authority runs.
    create(&mut cell, "al-hol", "custodial-authority").await.unwrap();
    create(&mut cell, "ghwayran", "sdf-prisons").await.unwrap();
    report(&mut cell, "al-hol").await.unwrap();
    report(&mut cell, "ghwayran").await.unwrap();
    let policy = Policy::embedded();
    let callers = [
        ("coordinator", coordinator(), true),
        ("FR ministry", ministry("FR"), false),
        ("FR justice", justice("FR"), false),
        ("custodial authority", guard(), false),
        ("humanitarian monitor", monitor(), false),
        ("service", Principal::service("svc"), false),
    ];
    for (label, p, sees_all) in callers {
        let grant = policy.grant(&p);
        let mut c = h.client(p.clone()).await;
        // Movements, headcounts and plans have their own matrix below.
        for (rpc, action) in RPCS.iter().filter(|(_, a)| *a != Action::FacilitiesPeople) {
            for (id, custodian) in [("al-hol", "custodial-authority"), ("ghwayran", "sdf-prisons")]
            {
                let at = format!("{label} {rpc} on {id}");
                let result = call(&mut c, rpc, id, custodian).await;
                let own = sees_all || custodian == p.agency;
                let write = !matches!(action, Action::FacilitiesRead);
                match (&result, grant.allows(*action)) {
                    (Err(s), false) => assert_eq!(s.code(), Code::PermissionDenied, "{at}"),
                    (Ok(()), false) => panic!("{at}: succeeded without {}", action.as_str()),
                    (Err(s), true) if write && !own => {
                        assert_eq!(s.code(), Code::PermissionDenied, "{at}: {s:?}")
                    }
                    (Err(s), true) => panic!("{at}: refused although permitted: {s:?}"),
                    (Ok(()), true) => assert!(own || !write, "{at}: changed another's facility"),
                }
            }
        }
    }
}

/// Places a new person at `facility` in the projection, as the registry's stream would.
async fn place(db: &Db, facility: &str) -> String {
    use concord_proto::registry::v1 as reg;
    let id = uuid::Uuid::now_v7().to_string();
    let p = reg::Person {
        name: format!("persons/{id}"),
        sex: reg::Sex::Female as i32,
        birth_date: Some(concord_proto::r#type::v1::ApproximateDate {
            year: 1990,
            ..Default::default()
        }),
        custody_status: reg::CustodyStatus::InCustody as i32,
        facility_id: facility.into(),
        section_id: "annex".into(),
        etag: "\"2\"".into(),
        ..Default::default()
    };
    let e = concord_proto::r#type::v1::ChangeEvent {
        cursor: "1".into(),
        event_type: "person.custody_changed".into(),
        resource_name: p.name.clone(),
        resource: Some(prost_types::Any {
            type_url: "type.googleapis.com/concord.registry.v1.Person".into(),
            value: p.encode_to_vec(),
        }),
        ..Default::default()
    };
    concord_facilities::occupancy::apply(db, &[e]).await.unwrap();
    p.name
}

async fn movement(
    c: &mut Client,
    db: &Db,
    from: &str,
    to: &str,
    steps: usize,
) -> Result<pb::Movement, tonic::Status> {
    let person = place(db, from).await;
    let mut m = c
        .create_movement(pb::CreateMovementRequest {
            movement: Some(pb::Movement {
                source_facility: format!("facilities/{from}"),
                destination_facility: format!("facilities/{to}"),
                reason: "matrix".into(),
                manifest: vec![pb::ManifestEntry { person, ..Default::default() }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    for step in 0..steps {
        let name = m.name.clone();
        m = match step {
            0 => {
                c.approve_movement(pb::ApproveMovementRequest { name, ..Default::default() })
                    .await?
            }
            _ => {
                c.depart_movement(pb::DepartMovementRequest { name, ..Default::default() }).await?
            }
        }
        .into_inner();
    }
    Ok(m)
}

async fn headcount(c: &mut Client, id: &str) -> Result<pb::Headcount, tonic::Status> {
    Ok(c.record_headcount(pb::RecordHeadcountRequest {
        parent: format!("facilities/{id}"),
        headcount: Some(pb::Headcount {
            counted: vec![],
            reporter: "matrix".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await?
    .into_inner())
}

/// One call of a movement, headcount or plan RPC as `c`, on `from` (moving people to `to`);
/// whatever it needs first is made by the coordinator `cell`.
async fn call_people(
    c: &mut Client,
    cell: &mut Client,
    db: &Db,
    rpc: &str,
    from: &str,
    to: &str,
) -> Result<Vec<pb::Movement>, tonic::Status> {
    let name = format!("facilities/{from}");
    match rpc {
        "CreateMovement" => return Ok(vec![movement(c, db, from, to, 0).await?]),
        "GetMovement" => {
            let m = movement(cell, db, from, to, 0).await.unwrap();
            c.get_movement(pb::GetMovementRequest { name: m.name }).await?;
        }
        "ListMovements" => {
            movement(cell, db, from, to, 0).await.unwrap();
            return Ok(c
                .list_movements(pb::ListMovementsRequest::default())
                .await?
                .into_inner()
                .movements);
        }
        "ApproveMovement" | "DepartMovement" | "ArriveMovement" | "AbortMovement" => {
            let steps = match rpc {
                "ApproveMovement" => 0,
                "DepartMovement" => 1,
                _ => 2,
            };
            let m = movement(cell, db, from, to, steps).await.unwrap();
            let name = m.name;
            match rpc {
                "ApproveMovement" => {
                    c.approve_movement(pb::ApproveMovementRequest { name, ..Default::default() })
                        .await?;
                }
                "DepartMovement" => {
                    c.depart_movement(pb::DepartMovementRequest { name, ..Default::default() })
                        .await?;
                }
                "ArriveMovement" => {
                    c.arrive_movement(pb::ArriveMovementRequest { name, ..Default::default() })
                        .await?;
                }
                _ => {
                    c.abort_movement(pb::AbortMovementRequest {
                        name,
                        reason: "matrix".into(),
                        ..Default::default()
                    })
                    .await?;
                }
            }
        }
        "RecordHeadcount" => {
            headcount(c, from).await?;
        }
        "GetHeadcount" => {
            let h = headcount(cell, from).await.unwrap();
            c.get_headcount(pb::GetHeadcountRequest { name: h.name }).await?;
        }
        "ListHeadcounts" => {
            c.list_headcounts(pb::ListHeadcountsRequest { parent: name, ..Default::default() })
                .await?;
        }
        "MarkMissingUnaccounted" => {
            place(db, from).await;
            let h = headcount(cell, from).await.unwrap();
            c.mark_missing_unaccounted(pb::MarkMissingUnaccountedRequest {
                name: h.name,
                reason: "matrix".into(),
                request_id: String::new(),
            })
            .await?;
        }
        "PlanRelocation" => {
            place(db, from).await;
            c.plan_relocation(pb::PlanRelocationRequest { name, request_id: String::new() })
                .await?;
        }
        other => panic!("no call for {other}"),
    }
    Ok(vec![])
}

#[tokio::test]
async fn movements_headcounts_and_plans_reach_only_the_custodians_concerned_and_the_coordinator() {
    let h = Harness::start().await;
    let mut cell = h.client(coordinator()).await;
    // Two pairs of camps: one the testkit's custodial authority runs, one another runs. The
    // sources are COMPROMISED, so that relocation plans may be made for them.
    for (id, custodian) in [
        ("al-hol", "custodial-authority"),
        ("roj", "custodial-authority"),
        ("ghwayran", "sdf-prisons"),
        ("hasakah", "sdf-prisons"),
    ] {
        create(&mut cell, id, custodian).await.unwrap();
    }
    for id in ["al-hol", "ghwayran"] {
        for to in [
            pb::SecurityStatus::Elevated,
            pb::SecurityStatus::High,
            pb::SecurityStatus::Lockdown,
            pb::SecurityStatus::Compromised,
        ] {
            status(&mut cell, id, to).await.unwrap();
        }
    }
    let policy = Policy::embedded();
    let callers = [
        ("coordinator", coordinator(), true),
        ("FR ministry", ministry("FR"), false),
        ("FR justice", justice("FR"), false),
        ("custodial authority", guard(), false),
        // Staff of the same authority posted at a facility it does not run: al-hol's people
        // are not theirs, although their agency runs al-hol.
        ("custodial authority posted elsewhere", custodial(&["hasakah"]), false),
        ("humanitarian monitor", monitor(), false),
        ("service", Principal::service("svc"), false),
    ];
    let mut seen = 0;
    for (label, p, sees_all) in callers {
        let allowed = policy.grant(&p).allows(Action::FacilitiesPeople);
        let mut c = h.client(p.clone()).await;
        for (rpc, _) in RPCS.iter().filter(|(_, a)| *a == Action::FacilitiesPeople) {
            for (from, to, custodian) in
                [("al-hol", "roj", "custodial-authority"), ("ghwayran", "hasakah", "sdf-prisons")]
            {
                let at = format!("{label} {rpc} on {from}");
                let result = call_people(&mut c, &mut cell, &h.db, rpc, from, to).await;
                let own =
                    sees_all || (custodian == p.agency && p.facilities.iter().any(|f| f == from));
                // A movement or headcount of another facility does not exist for the caller;
                // acting on a facility one does not run is refused (facilities are public).
                let hidden = matches!(
                    *rpc,
                    "GetMovement"
                        | "ApproveMovement"
                        | "DepartMovement"
                        | "ArriveMovement"
                        | "AbortMovement"
                        | "GetHeadcount"
                );
                match (result, allowed) {
                    (Err(s), false) => assert_eq!(s.code(), Code::PermissionDenied, "{at}"),
                    (Ok(_), false) => panic!("{at}: succeeded without facilities.people"),
                    (Err(s), true) if !own => {
                        let expected = if hidden { Code::NotFound } else { Code::PermissionDenied };
                        assert_eq!(s.code(), expected, "{at}: {s:?}");
                        assert!(!s.message().contains("persons/"), "{at}: {s:?}");
                    }
                    (Err(s), true) => panic!("{at}: refused although permitted: {s:?}"),
                    (Ok(listed), true) => {
                        assert!(own || *rpc == "ListMovements", "{at}: reached another's people");
                        for m in listed {
                            // Facilities the caller's agency runs and is posted at.
                            let runs = |f: &str| {
                                p.facilities.iter().any(|x| f == format!("facilities/{x}"))
                                    && p.agency == "custodial-authority"
                                    && ["facilities/al-hol", "facilities/roj"].contains(&f)
                            };
                            let mine = sees_all
                                || runs(&m.source_facility)
                                || runs(&m.destination_facility);
                            assert!(mine, "{at}: listed {}", m.name);
                            seen += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(seen > 0, "the listings returned something to check");

    // Without a purpose, the coordinator's stream carries no one.
    let ch = Channel::from_shared(h.server.uri()).unwrap().connect().await.unwrap();
    let mut bare =
        FacilitiesServiceClient::with_interceptor(ch, HeaderCredentials::new(coordinator()));
    let mut s = bare.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let mut public = 0;
    while let Ok(Some(m)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await
    {
        let e = m.unwrap().event.unwrap();
        assert!(
            !e.event_type.starts_with("movement.") && !e.event_type.starts_with("headcount."),
            "sent without a purpose: {}",
            e.event_type
        );
        public += u32::from(!e.bookmark);
    }
    assert!(public > 0, "facility changes still flow");

    // The change stream: movement and headcount events reach the same agencies.
    for (p, expect_own, expect_other) in [
        (coordinator(), true, true),
        (guard(), true, false),
        (ministry("FR"), false, false),
        (monitor(), false, false),
    ] {
        let mut c = h.client(p.clone()).await;
        let mut s = c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
        let (mut own, mut other, mut facilities) = (0, 0, 0);
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await
        {
            let e = m.unwrap().event.unwrap();
            if e.bookmark {
                continue;
            }
            let payload = e.resource.unwrap();
            let touches = |ids: &[&str]| -> bool {
                if let Ok(m) = pb::Movement::decode(payload.value.as_slice()) {
                    if payload.type_url.ends_with("Movement") {
                        return ids.iter().any(|id| {
                            m.source_facility.ends_with(id) || m.destination_facility.ends_with(id)
                        });
                    }
                }
                ids.iter()
                    .any(|id| e.resource_name.starts_with(&format!("facilities/{id}/headcounts")))
            };
            if e.event_type.starts_with("movement.") || e.event_type.starts_with("headcount.") {
                if touches(&["al-hol", "roj"]) {
                    own += 1;
                } else if touches(&["ghwayran", "hasakah"]) {
                    other += 1;
                }
            } else {
                facilities += 1;
            }
        }
        let who = &p.agency;
        assert_eq!(own > 0, expect_own, "{who} sees its movements and headcounts: {own}");
        assert_eq!(other > 0, expect_other, "{who} sees another's: {other}");
        assert!(facilities > 0, "{who} sees facility changes");
    }
}
