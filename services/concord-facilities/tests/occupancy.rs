//! Occupancy with the registry and the facilities service running as real servers: the
//! projection follows custody events, refuses capacities below it, survives a restart, and a
//! projection rebuilt from scratch equals the one kept incrementally.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{admit, connect, facilities, person, registry, Facilities, Registry};
use concord_proto::facilities::v1 as pb;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::{caller, coordinator, custodial};

/// The occupancy once it has `total` people, one of them of `state` (the projection is
/// eventually consistent).
async fn occupancy_of(f: &mut Facilities, total: i64, state: &str) -> pb::Occupancy {
    for _ in 0..200 {
        let o = f
            .get_occupancy(pb::GetOccupancyRequest { name: "facilities/al-hol".into() })
            .await
            .unwrap()
            .into_inner();
        if o.total == total && o.nationalities.iter().any(|n| n.state == state) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("occupancy never reached {total}");
}

#[tokio::test]
async fn occupancy_follows_the_registry_survives_restarts_and_rebuilds_identically() {
    let (reg_server, _reg_db) = registry().await;
    let mut r: Registry = RegistryServiceClient::with_interceptor(
        connect(&reg_server.uri()).await,
        caller(coordinator()),
    );
    let fac_db = concord_testkit::database().await.unwrap();
    let server = facilities(&fac_db.url, &reg_server.uri()).await;
    let mut f: Facilities = FacilitiesServiceClient::with_interceptor(
        connect(&server.uri()).await,
        caller(custodial(&["al-hol"])),
    );
    let mut camp = pb::Facility {
        display_name: "al-Hol".into(),
        kind: pb::FacilityKind::Camp as i32,
        location: Some(pb::Location { latitude: 36.37, longitude: 40.99, region: String::new() }),
        sections: vec![pb::Section {
            section_id: "annex".into(),
            display_name: "Annex".into(),
            capacities: vec![pb::Capacity {
                sex: pb::PlaceSex::Female as i32,
                age_band: pb::AgeBand::Adult as i32,
                places: 3,
            }],
        }],
        ..Default::default()
    };
    camp = f
        .create_facility(pb::CreateFacilityRequest {
            facility_id: "al-hol".into(),
            facility: Some(camp),
            custodian_agency: "custodial-authority".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let first = admit(&mut r, person("Amina Haddad", "FR", reg::Sex::Female, 1990), "annex").await;
    admit(&mut r, person("Sara Haddad", "FR", reg::Sex::Female, 1994), "annex").await;
    admit(&mut r, person("Yusuf Karimi", "NL", reg::Sex::Male, 2016), "").await;
    let o = occupancy_of(&mut f, 3, "NL").await;
    let annex = o
        .lines
        .iter()
        .find(|l| l.section_id == "annex" && l.age_band == pb::AgeBand::Adult as i32)
        .unwrap();
    assert_eq!((annex.count, annex.places), (2, 3));
    assert!(o.lines.iter().any(|l| l.section_id.is_empty()
        && l.sex == pb::PlaceSex::Male as i32
        && l.age_band == pb::AgeBand::Child as i32
        && l.count == 1));
    let by_state: Vec<(String, i64)> =
        o.nationalities.iter().map(|n| (n.state.clone(), n.count)).collect();
    assert_eq!(by_state, vec![("FR".to_string(), 2), ("NL".to_string(), 1)]);

    // Capacity below the people there is refused, naming the section; nothing changes.
    let mut smaller = camp.clone();
    smaller.sections[0].capacities[0].places = 1;
    let err = f
        .update_facility(pb::UpdateFacilityRequest {
            facility: Some(smaller),
            update_mask: Some(prost_types::FieldMask { paths: vec!["sections".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("annex FEMALE ADULT: 1 places for 2 people"),
        "{}",
        err.message()
    );

    // The service stops; the registry moves on; a new instance on the same database resumes
    // from its cursor.
    server.stop().await.unwrap();
    r.record_release(reg::RecordReleaseRequest {
        name: first,
        transition: Some(reg::CustodyTransition {
            reason: "released to family".into(),
            source: "camp administration".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    admit(&mut r, person("Mariam Saleh", "DE", reg::Sex::Female, 1988), "annex").await;
    let server = facilities(&fac_db.url, &reg_server.uri()).await;
    let mut f: Facilities = FacilitiesServiceClient::with_interceptor(
        connect(&server.uri()).await,
        caller(custodial(&["al-hol"])),
    );
    let incremental = occupancy_of(&mut f, 3, "DE").await;
    let fr = incremental.nationalities.iter().find(|n| n.state == "FR").unwrap();
    assert_eq!(fr.count, 1, "the released woman no longer counts");

    // A projection rebuilt from scratch (a fresh database, the whole stream) is the same.
    let fresh_db = concord_testkit::database().await.unwrap();
    let fresh = facilities(&fresh_db.url, &reg_server.uri()).await;
    let mut g: Facilities = FacilitiesServiceClient::with_interceptor(
        connect(&fresh.uri()).await,
        caller(custodial(&["al-hol"])),
    );
    g.create_facility(pb::CreateFacilityRequest {
        facility_id: "al-hol".into(),
        facility: Some(pb::Facility { name: String::new(), ..camp.clone() }),
        custodian_agency: "custodial-authority".into(),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let rebuilt = occupancy_of(&mut g, 3, "DE").await;
    assert_eq!(rebuilt, incremental);
}
