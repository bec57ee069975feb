//! Movements, headcounts and relocation plans with the registry and the facilities service
//! running as real servers: the registry records each step through the relay, once, and the
//! occupancy projection follows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{admit_at, connect, facilities, person, registry, Facilities, Registry};
use concord_proto::facilities::v1 as pb;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::{caller, coordinator, custodial, TestServer};
use tonic::Code;

struct Suite {
    reg_server: TestServer,
    _reg_db: concord_testkit::TestDb,
    fac_db: concord_testkit::TestDb,
    server: Option<TestServer>,
    r: Registry,
    f: Facilities,
}

impl Suite {
    async fn start() -> Self {
        let (reg_server, reg_db) = registry().await;
        let r = RegistryServiceClient::with_interceptor(
            connect(&reg_server.uri()).await,
            caller(coordinator()),
        );
        let fac_db = concord_testkit::database().await.unwrap();
        let server = facilities(&fac_db.url, &reg_server.uri()).await;
        let f = FacilitiesServiceClient::with_interceptor(
            connect(&server.uri()).await,
            caller(custodial(&["al-hol", "roj", "ghwayran", "houry", "far-camp"])),
        );
        Suite { reg_server, _reg_db: reg_db, fac_db, server: Some(server), r, f }
    }

    fn uri(&self) -> String {
        self.server.as_ref().expect("running").uri()
    }

    async fn stop_facilities(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
    }

    async fn start_facilities(&mut self) {
        let server = facilities(&self.fac_db.url, &self.reg_server.uri()).await;
        self.f = FacilitiesServiceClient::with_interceptor(
            connect(&server.uri()).await,
            caller(custodial(&["al-hol", "roj", "ghwayran", "houry", "far-camp"])),
        );
        self.server = Some(server);
    }
}

fn cap(sex: pb::PlaceSex, band: pb::AgeBand, places: i32) -> pb::Capacity {
    pb::Capacity { sex: sex as i32, age_band: band as i32, places }
}

async fn site(
    f: &mut Facilities,
    id: &str,
    kind: pb::FacilityKind,
    at: (f64, f64),
    capacities: Vec<pb::Capacity>,
) {
    f.create_facility(pb::CreateFacilityRequest {
        facility_id: id.into(),
        facility: Some(pb::Facility {
            display_name: id.into(),
            kind: kind as i32,
            location: Some(pb::Location { latitude: at.0, longitude: at.1, region: String::new() }),
            sections: vec![pb::Section {
                section_id: "main".into(),
                display_name: "Main".into(),
                capacities,
            }],
            ..Default::default()
        }),
        custodian_agency: "custodial-authority".into(),
        request_id: String::new(),
    })
    .await
    .unwrap();
}

/// A camp (al-hol) and a second camp (roj) with `roj_women` places for women.
async fn two_camps(s: &mut Suite, roj_women: i32) {
    use pb::{AgeBand as B, PlaceSex as S};
    let all = |n| {
        vec![
            cap(S::Female, B::Adult, n),
            cap(S::Female, B::Child, n),
            cap(S::Male, B::Child, n),
            cap(S::Male, B::Adolescent, n),
            cap(S::Female, B::Adolescent, n),
        ]
    };
    site(&mut s.f, "al-hol", pb::FacilityKind::Camp, (36.37, 41.15), all(100)).await;
    let mut roj = all(10);
    roj[0].places = roj_women;
    site(&mut s.f, "roj", pb::FacilityKind::Camp, (37.09, 42.11), roj).await;
}

fn woman(name: &str, year: i32) -> reg::Person {
    person(name, "FR", reg::Sex::Female, year)
}

/// Waits until `facility` holds `total` people.
async fn occupancy(f: &mut Facilities, facility: &str, total: i64) -> pb::Occupancy {
    for _ in 0..400 {
        let o = f
            .get_occupancy(pb::GetOccupancyRequest { name: format!("facilities/{facility}") })
            .await
            .unwrap()
            .into_inner();
        if o.total == total {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{facility} never held {total}");
}

/// Waits until every manifest entry of `name` is `update`.
async fn settled(f: &mut Facilities, name: &str, update: pb::RegistryUpdate) -> pb::Movement {
    for _ in 0..400 {
        let m = f
            .get_movement(pb::GetMovementRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        if m.manifest.iter().all(|e| e.registry_update == update as i32) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reached {update:?}");
}

async fn plan(
    f: &mut Facilities,
    from: &str,
    to: &str,
    people: &[String],
) -> Result<pb::Movement, tonic::Status> {
    f.create_movement(pb::CreateMovementRequest {
        movement: Some(pb::Movement {
            source_facility: format!("facilities/{from}"),
            destination_facility: format!("facilities/{to}"),
            reason: "decongesting the main camp".into(),
            manifest: people
                .iter()
                .map(|p| pb::ManifestEntry { person: p.clone(), ..Default::default() })
                .collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn approve(f: &mut Facilities, name: &str) -> Result<pb::Movement, tonic::Status> {
    f.approve_movement(pb::ApproveMovementRequest { name: name.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner())
}

async fn depart(f: &mut Facilities, name: &str) -> Result<pb::Movement, tonic::Status> {
    f.depart_movement(pb::DepartMovementRequest { name: name.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner())
}

async fn arrive(f: &mut Facilities, name: &str) -> Result<pb::Movement, tonic::Status> {
    f.arrive_movement(pb::ArriveMovementRequest { name: name.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner())
}

async fn get_person(r: &mut Registry, name: &str) -> reg::Person {
    r.get_person(reg::GetPersonRequest { name: name.into() }).await.unwrap().into_inner()
}

async fn custody_events(r: &mut Registry, name: &str) -> Vec<reg::CustodyEvent> {
    r.list_custody_events(reg::ListCustodyEventsRequest {
        parent: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .custody_events
}

#[tokio::test]
async fn a_movement_arrives_and_the_registry_records_each_step_once() {
    let mut s = Suite::start().await;
    two_camps(&mut s, 10).await;
    let mother = admit_at(&mut s.r, woman("Amina Haddad", 1990), "al-hol", "main").await;
    let son =
        admit_at(&mut s.r, person("Yusuf Haddad", "FR", reg::Sex::Male, 2017), "al-hol", "main")
            .await;
    let daughter = admit_at(&mut s.r, woman("Sara Haddad", 2019), "al-hol", "main").await;
    occupancy(&mut s.f, "al-hol", 3).await;
    let people = vec![mother.clone(), son.clone(), daughter.clone()];

    let m = plan(&mut s.f, "al-hol", "roj", &people).await.unwrap();
    assert_eq!(m.state, pb::MovementState::Planned as i32);
    assert_eq!(m.manifest.len(), 3);
    assert!(m.manifest.iter().all(|e| e.registry_update == 0 && e.section_id.is_empty()));
    // Out of order: a planned movement does not leave.
    let err = depart(&mut s.f, &m.name).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("APPROVED, ABORTED"), "{}", err.message());

    let m = approve(&mut s.f, &m.name).await.unwrap();
    assert_eq!(m.state, pb::MovementState::Approved as i32);
    assert!(m.manifest.iter().all(|e| e.section_id == "main"), "approval assigns sections");
    let m = depart(&mut s.f, &m.name).await.unwrap();
    assert!(m.depart_time.is_some());
    settled(&mut s.f, &m.name, pb::RegistryUpdate::Applied).await;
    let p = get_person(&mut s.r, &mother).await;
    assert_eq!(p.custody_status, reg::CustodyStatus::InTransfer as i32);
    occupancy(&mut s.f, "al-hol", 0).await;

    let m = arrive(&mut s.f, &m.name).await.unwrap();
    assert_eq!(m.state, pb::MovementState::Arrived as i32);
    settled(&mut s.f, &m.name, pb::RegistryUpdate::Applied).await;
    for who in &people {
        let p = get_person(&mut s.r, who).await;
        assert_eq!(p.custody_status, reg::CustodyStatus::InCustody as i32);
        assert_eq!((p.facility_id.as_str(), p.section_id.as_str()), ("roj", "main"));
    }
    occupancy(&mut s.f, "roj", 3).await;
    let err = arrive(&mut s.f, &m.name).await.unwrap_err();
    assert!(err.message().contains("nothing (final)"), "{}", err.message());

    // The relay is idempotent: made to send every step again after a restart, it changes
    // nothing in the registry (each call carries the same request id).
    s.stop_facilities().await;
    let db = concord_platform::storage::Db::connect(
        &s.fac_db.url,
        concord_facilities::store::MIGRATIONS,
        concord_platform::storage::DbOptions::default(),
    )
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE registry_updates SET status = 'PENDING'").execute(tx.conn()).await.unwrap();
    sqlx::query("DELETE FROM consumer_cursors WHERE consumer = 'relay.registry'")
        .execute(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.close().await;
    s.start_facilities().await;
    settled(&mut s.f, &m.name, pb::RegistryUpdate::Applied).await;
    let events = custody_events(&mut s.r, &mother).await;
    let steps: Vec<i32> = events.iter().map(|e| e.to_status).collect();
    assert_eq!(
        steps,
        vec![
            reg::CustodyStatus::InCustody as i32,
            reg::CustodyStatus::InTransfer as i32,
            reg::CustodyStatus::InCustody as i32
        ],
        "admitted, transferred, arrived: once each"
    );
    occupancy(&mut s.f, "roj", 3).await;
}

#[tokio::test]
async fn bad_movements_are_refused_with_the_reason_and_nothing_is_stored() {
    let mut s = Suite::start().await;
    two_camps(&mut s, 10).await;
    use pb::{AgeBand as B, PlaceSex as S};
    site(
        &mut s.f,
        "ghwayran",
        pb::FacilityKind::Prison,
        (36.47, 40.75),
        vec![cap(S::Male, B::Adult, 50)],
    )
    .await;
    site(
        &mut s.f,
        "houry",
        pb::FacilityKind::RehabilitationCentre,
        (36.8, 40.9),
        vec![cap(S::Male, B::Adolescent, 20), cap(S::Female, B::Adolescent, 20)],
    )
    .await;
    let mother = admit_at(&mut s.r, woman("Amina Haddad", 1990), "al-hol", "main").await;
    let boy =
        admit_at(&mut s.r, person("Omar Haddad", "FR", reg::Sex::Male, 2016), "al-hol", "main")
            .await;
    let girl = admit_at(&mut s.r, woman("Lina Haddad", 2012), "al-hol", "main").await;
    let elsewhere = admit_at(&mut s.r, woman("Mariam Saleh", 1985), "roj", "main").await;
    occupancy(&mut s.f, "al-hol", 3).await;

    // Someone not held at the source, and someone twice: INVALID_ARGUMENT naming each.
    let err =
        plan(&mut s.f, "al-hol", "roj", &[mother.clone(), elsewhere.clone()]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("is not held IN_CUSTODY at facilities/al-hol"),
        "{}",
        err.message()
    );
    let err = plan(&mut s.f, "al-hol", "roj", &[mother.clone(), mother.clone()]).await.unwrap_err();
    assert!(err.message().contains("on the manifest twice"), "{}", err.message());
    // Children never go to an adult prison; rehabilitation centres take boys from 12.
    let err = plan(&mut s.f, "al-hol", "ghwayran", std::slice::from_ref(&boy)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("children are never placed in an adult prison"),
        "{}",
        err.message()
    );
    let err = plan(&mut s.f, "al-hol", "houry", &[girl.clone(), boy.clone()]).await.unwrap_err();
    assert!(
        err.message().contains("rehabilitation centres take boys aged 12 to 17"),
        "{}",
        err.message()
    );
    assert!(err.message().contains(&girl) && err.message().contains(&boy), "{}", err.message());
    let listed =
        s.f.list_movements(pb::ListMovementsRequest::default()).await.unwrap().into_inner();
    assert!(listed.movements.is_empty(), "nothing stored: {listed:?}");

    // One open movement per person: a duplicate manifest is refused, naming the other.
    let first = plan(&mut s.f, "al-hol", "roj", &[mother.clone(), girl.clone()]).await.unwrap();
    let err = plan(&mut s.f, "al-hol", "roj", &[boy.clone(), mother.clone()]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&first.name), "{}", err.message());
    let listed =
        s.f.list_movements(pb::ListMovementsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.movements.len(), 1, "the refused movement left nothing behind");
    // Once the first is aborted, they may be planned again.
    let err = s
        .f
        .abort_movement(pb::AbortMovementRequest { name: first.name.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "an abort says why");
    let aborted =
        s.f.abort_movement(pb::AbortMovementRequest {
            name: first.name.clone(),
            reason: "road closed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, pb::MovementState::Aborted as i32);
    assert!(aborted.manifest.iter().all(|e| e.registry_update == 0), "it never left");
    let again = plan(&mut s.f, "al-hol", "roj", &[boy, mother.clone()]).await.unwrap();
    // Someone hospitalised after approval does not leave with the movement.
    approve(&mut s.f, &again.name).await.unwrap();
    s.r.hospitalise_person(reg::HospitalisePersonRequest {
        name: mother.clone(),
        facility_id: String::new(),
        transition: Some(reg::CustodyTransition {
            reason: "fever".into(),
            source: "camp clinic".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    // Once the projection has caught up (a later admission is counted)...
    admit_at(&mut s.r, woman("Noor Saleh", 1991), "al-hol", "main").await;
    occupancy(&mut s.f, "al-hol", 4).await;
    let err = depart(&mut s.f, &again.name).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no longer held IN_CUSTODY"), "{}", err.message());
    assert!(err.message().contains(&mother), "{}", err.message());
    // Strangers to both facilities see none of it.
    let mut other = FacilitiesServiceClient::with_interceptor(
        connect(&s.uri()).await,
        caller(custodial(&["hasakah"])),
    );
    let err =
        other.get_movement(pb::GetMovementRequest { name: first.name.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed =
        other.list_movements(pb::ListMovementsRequest::default()).await.unwrap().into_inner();
    assert!(listed.movements.is_empty());
}

#[tokio::test]
async fn of_two_approvals_that_would_overfill_a_site_one_loses_with_aborted() {
    let mut s = Suite::start().await;
    two_camps(&mut s, 3).await;
    let mut women = Vec::new();
    for i in 0..5 {
        women.push(
            admit_at(&mut s.r, woman(&format!("Woman {i}"), 1980 + i), "al-hol", "main").await,
        );
    }
    occupancy(&mut s.f, "al-hol", 5).await;
    let a = plan(&mut s.f, "al-hol", "roj", &women[0..2]).await.unwrap();
    let b = plan(&mut s.f, "al-hol", "roj", &women[2..4]).await.unwrap();
    let mut f2 = s.f.clone();
    let (ra, rb) = tokio::join!(approve(&mut s.f, &a.name), approve(&mut f2, &b.name));
    let (won, lost) = match (&ra, &rb) {
        (Ok(_), Err(e)) => (&a, (&b, e)),
        (Err(e), Ok(_)) => (&b, (&a, e)),
        other => panic!("exactly one approval wins: {other:?}"),
    };
    assert_eq!(lost.1.code(), Code::Aborted, "{:?}", lost.1);
    assert!(lost.1.message().contains("1 more FEMALE ADULT"), "{}", lost.1.message());
    let loser =
        s.f.get_movement(pb::GetMovementRequest { name: lost.0.name.clone() })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(loser.state, pb::MovementState::Planned as i32, "nothing half-applied");
    assert!(loser.manifest.iter().all(|e| e.section_id.is_empty()));
    // The places reserved count as taken: roj cannot shrink below them.
    let mut roj =
        s.f.get_facility(pb::GetFacilityRequest { name: "facilities/roj".into() })
            .await
            .unwrap()
            .into_inner();
    roj.sections[0].capacities[0].places = 1;
    let err =
        s.f.update_facility(pb::UpdateFacilityRequest {
            facility: Some(roj),
            update_mask: Some(prost_types::FieldMask { paths: vec!["sections".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("2 reserved by approved movements"), "{}", err.message());
    // After arrival the places stay taken until occupancy counts the people, then by them.
    depart(&mut s.f, &won.name).await.unwrap();
    settled(&mut s.f, &won.name, pb::RegistryUpdate::Applied).await;
    arrive(&mut s.f, &won.name).await.unwrap();
    let err = approve(&mut s.f, &lost.0.name).await.unwrap_err();
    assert!(err.message().contains("1 more FEMALE ADULT"), "roj is full: {err:?}");
    settled(&mut s.f, &won.name, pb::RegistryUpdate::Applied).await;
    occupancy(&mut s.f, "roj", 2).await;
    let err = approve(&mut s.f, &lost.0.name).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "held, not reserved: {err:?}");
    assert!(err.message().contains("1 more FEMALE ADULT"), "{}", err.message());
    // Once occupancy counts the arrivals their reservation ends: the last place is free.
    let last = plan(&mut s.f, "al-hol", "roj", &women[4..5]).await.unwrap();
    approve(&mut s.f, &last.name).await.unwrap();
}

#[tokio::test]
async fn a_headcount_names_the_missing_and_marks_them_unaccounted_in_one_action() {
    let mut s = Suite::start().await;
    two_camps(&mut s, 10).await;
    let a = admit_at(&mut s.r, woman("Amina Haddad", 1990), "al-hol", "main").await;
    let b = admit_at(&mut s.r, woman("Sara Haddad", 1994), "al-hol", "main").await;
    let c = admit_at(&mut s.r, woman("Mariam Saleh", 1985), "al-hol", "main").await;
    let at_roj = admit_at(&mut s.r, woman("Huda Saleh", 1987), "roj", "main").await;
    occupancy(&mut s.f, "al-hol", 3).await;
    occupancy(&mut s.f, "roj", 1).await;
    let count = |counted: Vec<String>| pb::RecordHeadcountRequest {
        parent: "facilities/al-hol".into(),
        headcount: Some(pb::Headcount {
            counted,
            reporter: "block C roll call".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let err = s.f.record_headcount(count(vec![a.clone(), a.clone()])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("counted twice"), "{}", err.message());
    let first = s.f.record_headcount(count(vec![a.clone()])).await.unwrap().into_inner();
    let h =
        s.f.record_headcount(count(vec![a.clone(), at_roj.clone()])).await.unwrap().into_inner();
    assert_eq!(h.expected_count, 3);
    let mut missing = vec![b.clone(), c.clone()];
    missing.sort();
    assert_eq!(h.missing, missing);
    assert_eq!(h.unrecorded, vec![at_roj.clone()], "present but recorded elsewhere");
    let mark = |name: &str| pb::MarkMissingUnaccountedRequest {
        name: name.into(),
        reason: "not at the roll call after the riot".into(),
        request_id: String::new(),
    };
    let err = s.f.mark_missing_unaccounted(mark(&first.name)).await.unwrap_err();
    assert!(err.message().contains("is not the latest headcount"), "{}", err.message());
    // Since the count, c was released: the registry no longer holds her here, so she is not
    // marked (the count is hours old by the time someone acts on it).
    s.r.record_release(reg::RecordReleaseRequest {
        name: c.clone(),
        transition: Some(reg::CustodyTransition {
            reason: "released to family".into(),
            source: "camp administration".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    occupancy(&mut s.f, "al-hol", 2).await;
    let marked = s.f.mark_missing_unaccounted(mark(&h.name)).await.unwrap().into_inner();
    assert!(marked.unaccounted_mark_time.is_some());
    let status = |h: &pb::Headcount, who: &str| {
        h.unaccounted_updates.iter().find(|u| u.person == who).map(|u| u.registry_update)
    };
    assert_eq!(status(&marked, &c), Some(pb::RegistryUpdate::Refused as i32), "{marked:?}");
    let mut got = marked.clone();
    for _ in 0..400 {
        got =
            s.f.get_headcount(pb::GetHeadcountRequest { name: h.name.clone() })
                .await
                .unwrap()
                .into_inner();
        if status(&got, &b) == Some(pb::RegistryUpdate::Applied as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status(&got, &b), Some(pb::RegistryUpdate::Applied as i32), "{got:?}");
    assert_eq!(
        get_person(&mut s.r, &b).await.custody_status,
        reg::CustodyStatus::Unaccounted as i32
    );
    assert_eq!(
        get_person(&mut s.r, &c).await.custody_status,
        reg::CustodyStatus::Released as i32,
        "a stale count marks no one who has left"
    );
    assert_eq!(get_person(&mut s.r, &a).await.custody_status, reg::CustodyStatus::InCustody as i32);
    occupancy(&mut s.f, "al-hol", 1).await;
    let err = s.f.mark_missing_unaccounted(mark(&h.name)).await.unwrap_err();
    assert!(err.message().contains("marked already"), "{}", err.message());
}

#[tokio::test]
async fn a_compromised_camp_gets_a_plan_that_keeps_families_and_respects_the_rules() {
    let mut s = Suite::start().await;
    use pb::{AgeBand as B, PlaceSex as S};
    site(
        &mut s.f,
        "al-hol",
        pb::FacilityKind::Camp,
        (36.37, 41.15),
        vec![
            cap(S::Female, B::Adult, 100),
            cap(S::Female, B::Child, 100),
            cap(S::Male, B::Child, 100),
            cap(S::Male, B::Adolescent, 100),
            cap(S::Male, B::Adult, 100),
        ],
    )
    .await;
    // Roj is nearer than the far camp, and has no place for a boy: the family goes on.
    site(
        &mut s.f,
        "roj",
        pb::FacilityKind::Camp,
        (36.6, 41.5),
        vec![cap(S::Female, B::Adult, 2), cap(S::Female, B::Child, 1)],
    )
    .await;
    site(
        &mut s.f,
        "far-camp",
        pb::FacilityKind::Camp,
        (35.5, 40.0),
        vec![cap(S::Female, B::Adult, 5), cap(S::Female, B::Child, 5), cap(S::Male, B::Child, 5)],
    )
    .await;
    site(
        &mut s.f,
        "ghwayran",
        pb::FacilityKind::Prison,
        (36.47, 40.75),
        vec![cap(S::Male, B::Adult, 50)],
    )
    .await;
    site(
        &mut s.f,
        "houry",
        pb::FacilityKind::RehabilitationCentre,
        (36.8, 40.9),
        vec![cap(S::Male, B::Adolescent, 20)],
    )
    .await;
    let m1 = admit_at(&mut s.r, woman("Amina Haddad", 1990), "al-hol", "main").await;
    let k1 = admit_at(&mut s.r, woman("Sara Haddad", 2019), "al-hol", "main").await;
    let k2 =
        admit_at(&mut s.r, person("Adam Haddad", "FR", reg::Sex::Male, 2018), "al-hol", "main")
            .await;
    let man =
        admit_at(&mut s.r, person("Karim Saleh", "NL", reg::Sex::Male, 1980), "al-hol", "main")
            .await;
    let teen =
        admit_at(&mut s.r, person("Omar Saleh", "NL", reg::Sex::Male, 2011), "al-hol", "main")
            .await;
    s.r.create_household(reg::CreateHouseholdRequest {
        household: Some(reg::Household {
            head: m1.clone(),
            members: vec![m1.clone(), k1.clone(), k2.clone()],
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    // Admitted after the household: once the projection counts her, it has the household.
    let lone = admit_at(&mut s.r, woman("Huda Saleh", 1987), "al-hol", "main").await;
    occupancy(&mut s.f, "al-hol", 6).await;

    let refuse =
        s.f.plan_relocation(pb::PlanRelocationRequest {
            name: "facilities/al-hol".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refuse.code(), Code::FailedPrecondition, "only a COMPROMISED site: {refuse:?}");
    for to in ["ELEVATED", "HIGH", "LOCKDOWN", "COMPROMISED"] {
        s.f.change_security_status(pb::ChangeSecurityStatusRequest {
            name: "facilities/al-hol".into(),
            status: pb::SecurityStatus::from_str_name(&format!("SECURITY_STATUS_{to}")).unwrap()
                as i32,
            reason: "attack on the camp".into(),
            reporter: "camp security".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let p =
        s.f.plan_relocation(pb::PlanRelocationRequest {
            name: "facilities/al-hol".into(),
            request_id: "plan-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.placed_count, 6, "{p:?}");
    assert!(p.unplaced.is_empty(), "{p:?}");
    let dest = |who: &str| {
        p.movements
            .iter()
            .find(|m| m.manifest.iter().any(|e| e.person == who))
            .map(|m| m.destination_facility.clone())
            .unwrap_or_default()
    };
    assert_eq!(dest(&man), "facilities/ghwayran");
    assert_eq!(dest(&teen), "facilities/houry");
    // The family of three fits together only at the far camp; the lone woman takes roj.
    assert_eq!(dest(&m1), "facilities/far-camp");
    assert_eq!(dest(&k1), "facilities/far-camp");
    assert_eq!(dest(&k2), "facilities/far-camp");
    assert_eq!(dest(&lone), "facilities/roj");
    assert!(p.split_households.is_empty(), "{p:?}");
    assert!(p.movements.iter().all(|m| m.state == pb::MovementState::Planned as i32));
    assert!(p.total_distance_km > 0.0);
    // A retry returns the same plan; a second plan finds everyone already on a movement.
    let again =
        s.f.plan_relocation(pb::PlanRelocationRequest {
            name: "facilities/al-hol".into(),
            request_id: "plan-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.name, p.name);
    assert_eq!(again.movements.len(), p.movements.len());
    let second =
        s.f.plan_relocation(pb::PlanRelocationRequest {
            name: "facilities/al-hol".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.placed_count, 0);
    assert!(second.unplaced.iter().all(|u| u.reason.starts_with("already on movements/")));
    // The operator approves the plan's movements.
    for m in &p.movements {
        approve(&mut s.f, &m.name).await.unwrap();
    }
}
