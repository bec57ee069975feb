//! The repatriation flow across the suite, with the registry, the facilities service and the
//! requests service as real servers: a mother and her two children leave al-Hol under a
//! request; the registry records each as HANDED_OVER to France (with the disposition), the
//! camp's occupancy falls, and the statistics count them. Consumers are stopped and started
//! again mid-stream: nothing is lost or applied twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::link::ServiceLink;
use concord_platform::policy::Policy;
use concord_platform::server::{Services, Shutdown};
use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as pb;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use concord_testkit::people::{admit_at, person, relay_principal};
use concord_testkit::{caller, coordinator, custodial, ministry, TestDb, TestServer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Requests = RequestsServiceClient<InterceptedService<Channel, HeaderCredentials>>;
type Facilities = FacilitiesServiceClient<InterceptedService<Channel, HeaderCredentials>>;

fn link(registry: &TestServer, service: &str) -> ServiceLink {
    link_at(registry.uri(), service)
}

fn link_at(uri: String, service: &str) -> ServiceLink {
    ServiceLink { uri, tls: None, principal: Some(relay_principal(service)) }
}

/// A TCP relay to the server at `uri` that holds back what the server sends until `open`
/// says so (or for at most 10 s), then passes it on: a registry that answers late. Gives the
/// relay's URI and the instant it last passed something on, if it has.
async fn held(
    uri: &str,
    open: impl Fn() -> bool + Send + Sync + 'static,
) -> (String, Arc<std::sync::Mutex<Option<std::time::Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let to = uri.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let last = Arc::new(std::sync::Mutex::new(None));
    let (open, passed) = (Arc::new(open), last.clone());
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&to).await else { continue };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let (open, passed) = (open.clone(), passed.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    while !open() && tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    *passed.lock().unwrap() = Some(std::time::Instant::now());
                }
            });
        }
    });
    (format!("http://{at}"), last)
}

/// RecordHandOver calls the registry (in this process) has answered OK, from its metrics.
fn hand_overs_answered() -> u64 {
    let line = "grpc_server_handled_total{grpc_service=\"concord.registry.v1.RegistryService\",grpc_method=\"RecordHandOver\",grpc_code=\"OK\"} ";
    let text = concord_platform::metrics::RPC.render();
    text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |n| n.trim().parse().unwrap())
}

/// The `request.registry_recorded` events of the request `name` in the requests service's
/// change log.
async fn recorded_events(db: &concord_platform::storage::Db, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'request.registry_recorded' \
         AND resource_name = $1",
    )
    .bind(name)
    .fetch_one(db.reader())
    .await
    .unwrap()
}

async fn connect(uri: &str) -> Channel {
    Channel::from_shared(uri.to_string()).unwrap().connect().await.unwrap()
}

async fn requests_server(db: &TestDb, registry: &TestServer) -> TestServer {
    requests_server_at(db, registry.uri()).await
}

/// A requests server (one replica) on `db`, reaching the registry at `registry`.
async fn requests_server_at(db: &TestDb, registry: String) -> TestServer {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let (svc, _db) = concord_requests::build(
        &db.url,
        Arc::new(Policy::embedded()),
        &cfg,
        link_at(registry, "concord-requests"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap()
}

async fn facilities_server(db: &TestDb, registry: &TestServer) -> TestServer {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let (svc, _db) = concord_facilities::build(
        &db.url,
        Arc::new(Policy::embedded()),
        concord_facilities::domain::SeparationRules::default(),
        &cfg,
        Some(link(registry, "concord-facilities")),
        shutdown.clone(),
    )
    .await
    .unwrap();
    TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap()
}

async fn requests(server: &TestServer, p: Principal) -> Requests {
    RequestsServiceClient::with_interceptor(connect(&server.uri()).await, caller(p))
}

/// Polls `f` until it returns `Some`, for at most 10 s (the flow is eventually consistent).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(t) = f().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never happened");
}

async fn occupancy(f: &mut Facilities) -> i64 {
    f.get_occupancy(fac::GetOccupancyRequest { name: "facilities/al-hol".into() })
        .await
        .unwrap()
        .into_inner()
        .total
}

async fn to(c: &mut Requests, name: &str, state: pb::RequestState) -> pb::Request {
    let protocol = (state == pb::RequestState::HandedOver).then(|| pb::HandoverProtocol {
        // As long as a document reference may be: the registry's record takes it whole.
        document: format!("DMS-2026-4411/{}", "7".repeat(186)),
        signed_for_custodian: "camp director".into(),
        signed_for_receiver: "consul of France".into(),
        sign_time: None,
    });
    c.transition_request(pb::TransitionRequestRequest {
        name: name.into(),
        state: state as i32,
        reason: format!("now {}", state.as_str_name()),
        handover_protocol: protocol,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("to {}: {e:?}", state.as_str_name()))
    .into_inner()
}

#[tokio::test]
async fn a_mother_and_two_children_are_repatriated_across_the_suite_once_whatever_restarts() {
    use pb::RequestState as S;
    let policy = Arc::new(Policy::embedded());
    // The registry.
    let reg_db = concord_testkit::database().await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let (svc, _db) =
        concord_registry::build(&reg_db.url, policy, &cfg, shutdown.clone()).await.unwrap();
    let registry =
        TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
    let mut r: RegistryServiceClient<_> = RegistryServiceClient::with_interceptor(
        connect(&registry.uri()).await,
        caller(coordinator()),
    );

    // The camp, and the family held there.
    let fac_db = concord_testkit::database().await.unwrap();
    let facilities = facilities_server(&fac_db, &registry).await;
    let mut f: Facilities = FacilitiesServiceClient::with_interceptor(
        connect(&facilities.uri()).await,
        caller(custodial(&["al-hol"])),
    );
    f.create_facility(fac::CreateFacilityRequest {
        facility_id: "al-hol".into(),
        facility: Some(fac::Facility {
            display_name: "al-Hol".into(),
            kind: fac::FacilityKind::Camp as i32,
            location: Some(fac::Location {
                latitude: 36.37,
                longitude: 40.99,
                region: String::new(),
            }),
            sections: vec![fac::Section {
                section_id: "annex".into(),
                display_name: "Annex".into(),
                capacities: [
                    (fac::PlaceSex::Female, fac::AgeBand::Adult),
                    (fac::PlaceSex::Female, fac::AgeBand::Child),
                    (fac::PlaceSex::Male, fac::AgeBand::Child),
                    (fac::PlaceSex::Male, fac::AgeBand::Adolescent),
                ]
                .into_iter()
                .map(|(sex, band)| fac::Capacity {
                    sex: sex as i32,
                    age_band: band as i32,
                    places: 10,
                })
                .collect(),
            }],
            ..Default::default()
        }),
        custodian_agency: "custodial-authority".into(),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let mother =
        admit_at(&mut r, person("Amina Haddad", "FR", reg::Sex::Female, 1994), "al-hol", "annex")
            .await
            .unwrap();
    let son =
        admit_at(&mut r, person("Yusuf Haddad", "FR", reg::Sex::Male, 2015), "al-hol", "annex")
            .await
            .unwrap();
    let daughter =
        admit_at(&mut r, person("Maryam Haddad", "FR", reg::Sex::Female, 2018), "al-hol", "annex")
            .await
            .unwrap();
    // A Dutch woman stays.
    admit_at(&mut r, person("Eva de Vries", "NL", reg::Sex::Female, 1992), "al-hol", "annex")
        .await
        .unwrap();
    eventually("the camp holds four", || {
        let mut f = f.clone();
        async move { (occupancy(&mut f).await == 4).then_some(()) }
    })
    .await;

    // The request, from France to Iraq (standing for the authority's side).
    let req_db = concord_testkit::database().await.unwrap();
    let server = requests_server(&req_db, &registry).await;
    let mut fr = requests(&server, ministry("FR")).await;
    let mut iq = requests(&server, ministry("IQ")).await;
    let mut camp = requests(&server, custodial(&["al-hol"])).await;
    let subject = |p: &str, m: &str| pb::Subject {
        person: p.into(),
        unit: "haddad-family".into(),
        mother: m.into(),
        ..Default::default()
    };
    let created = fr
        .create_request(pb::CreateRequestRequest {
            request: Some(pb::Request {
                r#type: pb::RequestType::Repatriation as i32,
                requested_state: "IQ".into(),
                custodial_authority: "custodial-authority".into(),
                receiving_state: "FR".into(),
                subjects: vec![
                    subject(&mother, ""),
                    subject(&son, &mother),
                    subject(&daughter, &mother),
                ],
                summary: "Repatriation of a French mother and her two children from al-Hol".into(),
                ..Default::default()
            }),
            request_id: "fr-2026-0001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let name = created.name.clone();
    to(&mut fr, &name, S::Submitted).await;
    to(&mut iq, &name, S::Acknowledged).await;
    to(&mut iq, &name, S::UnderReview).await;
    to(&mut iq, &name, S::ApprovedInPrinciple).await;
    to(&mut iq, &name, S::IdentityVerification).await;
    for (p, d) in [
        (&mother, pb::Disposition::ProsecutionAtHome),
        (&son, pb::Disposition::Rehabilitation),
        (&daughter, pb::Disposition::Reintegration),
    ] {
        iq.decide_subject(pb::DecideSubjectRequest {
            name: name.clone(),
            person: p.clone(),
            outcome: pb::SubjectOutcome::Accepted as i32,
            disposition: d as i32,
            request_id: String::new(),
        })
        .await
        .unwrap();
        fr.verify_subject_identity(pb::VerifySubjectIdentityRequest {
            name: name.clone(),
            person: p.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    to(&mut fr, &name, S::ConsentsCollected).await;
    // They travel together: no separation, no consent needed.
    to(&mut camp, &name, S::LogisticsPlanned).await;
    to(&mut camp, &name, S::HandoverInProgress).await;

    // The facilities' projection is stopped: the hand-overs happen while it is down.
    facilities.stop().await.unwrap();
    let handed = to(&mut camp, &name, S::HandedOver).await;
    assert!(handed
        .subjects
        .iter()
        .all(|s| s.registry_record != pb::RegistryRecord::Unspecified as i32));
    // And the relay is stopped at once, whatever it managed, and started again.
    server.stop().await.unwrap();
    let server = requests_server(&req_db, &registry).await;
    let fr = requests(&server, ministry("FR")).await;
    let done = eventually("the registry records every hand-over", || {
        let mut fr = fr.clone();
        let name = name.clone();
        async move {
            let r = fr.get_request(pb::GetRequestRequest { name }).await.unwrap().into_inner();
            r.subjects
                .iter()
                .all(|s| s.registry_record == pb::RegistryRecord::Applied as i32)
                .then_some(r)
        }
    })
    .await;
    assert!(done.subjects.iter().all(|s| s.registry_error.is_empty()));
    assert_ne!(done.etag, handed.etag, "what the registry recorded changed the request");

    // The registry: each HANDED_OVER to France with their disposition, exactly once.
    for (p, d) in [
        (&mother, reg::Disposition::ProsecutionAtHome),
        (&son, reg::Disposition::Rehabilitation),
        (&daughter, reg::Disposition::Reintegration),
    ] {
        let person =
            r.get_person(reg::GetPersonRequest { name: p.clone() }).await.unwrap().into_inner();
        assert_eq!(person.custody_status, reg::CustodyStatus::HandedOver as i32, "{p}");
        assert_eq!(person.receiving_state, "FR");
        assert_eq!(person.disposition, d as i32, "{p}");
        let events = r
            .list_custody_events(reg::ListCustodyEventsRequest {
                parent: p.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .custody_events;
        let handovers: Vec<_> = events
            .iter()
            .filter(|e| e.to_status == reg::CustodyStatus::HandedOver as i32)
            .collect();
        assert_eq!(handovers.len(), 1, "{p}: handed over once, whatever the restarts");
        assert!(handovers[0].source.contains(&name), "{:?}", handovers[0]);
    }
    // Sending them again (as after a crash before the relay's commit) changes nothing: the
    // registry answers the same request ids from its idempotency record. Two replicas of the
    // service send them at once, and both read them pending before either records them: the
    // request's record changes once, one event says so.
    server.stop().await.unwrap();
    let db = concord_platform::storage::Db::connect(
        &req_db.url,
        concord_requests::store::MIGRATIONS,
        concord_platform::storage::DbOptions::default(),
    )
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE subjects SET registry_status = 'PENDING' WHERE request_id = $1")
        .bind(name.trim_start_matches("requests/"))
        .execute(tx.conn())
        .await
        .unwrap();
    sqlx::query("DELETE FROM consumer_cursors WHERE consumer = 'relay.registry'")
        .execute(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let events_before = recorded_events(&db, &name).await;
    // The registry's answers are held until it has answered both replicas for all three, so
    // each has read them pending before either can record them.
    let calls_before = hand_overs_answered();
    let both = move || hand_overs_answered() >= calls_before + 6;
    let (slow_registry, last_answer) = held(&registry.uri(), both).await;
    let server = requests_server_at(&req_db, slow_registry.clone()).await;
    let replica = requests_server_at(&req_db, slow_registry).await;
    eventually("both replicas send the three hand-overs", || {
        let sent = both();
        async move { sent.then_some(()) }
    })
    .await;
    // Each replica records what it got once the answers stop coming: a moment later.
    eventually("the registry's answers all passed on", || {
        let quiet =
            last_answer.lock().unwrap().is_some_and(|t| t.elapsed() >= Duration::from_secs(1));
        async move { quiet.then_some(()) }
    })
    .await;
    let fr = requests(&server, ministry("FR")).await;
    eventually("the resent hand-overs are answered", || {
        let mut fr = fr.clone();
        let name = name.clone();
        async move {
            let r = fr.get_request(pb::GetRequestRequest { name }).await.unwrap().into_inner();
            r.subjects
                .iter()
                .all(|s| s.registry_record == pb::RegistryRecord::Applied as i32)
                .then_some(())
        }
    })
    .await;
    assert_eq!(recorded_events(&db, &name).await, events_before + 1, "one change, one event");
    replica.stop().await.unwrap();
    db.close().await;
    for p in [&mother, &son, &daughter] {
        let events = r
            .list_custody_events(reg::ListCustodyEventsRequest {
                parent: p.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .custody_events;
        assert_eq!(
            events.iter().filter(|e| e.to_status == reg::CustodyStatus::HandedOver as i32).count(),
            1,
            "{p}: still once"
        );
    }

    // The camp, started again, catches up from its cursor: only the Dutch woman is left.
    let facilities = facilities_server(&fac_db, &registry).await;
    let mut f: Facilities = FacilitiesServiceClient::with_interceptor(
        connect(&facilities.uri()).await,
        caller(custodial(&["al-hol"])),
    );
    eventually("the camp's occupancy falls to one", || {
        let mut f = f.clone();
        async move { (occupancy(&mut f).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(occupancy(&mut f).await, 1);

    // The statistics: France made one request and got three people back; Iraq received and
    // accepted it; no French national is held any more, one Dutch national is.
    let fr_stats = eventually("the projection sees no French national held", || {
        let mut fr = fr.clone();
        async move {
            let s = fr
                .get_state_statistics(pb::GetStateStatisticsRequest {
                    name: "statistics/FR".into(),
                })
                .await
                .unwrap()
                .into_inner();
            (s.nationals_held == 0).then_some(s)
        }
    })
    .await;
    assert_eq!((fr_stats.requests_made, fr_stats.handed_over), (1, 3));
    let mut cell = requests(&server, coordinator()).await;
    let all = cell
        .list_state_statistics(pb::ListStateStatisticsRequest {})
        .await
        .unwrap()
        .into_inner()
        .statistics;
    let of =
        |s: &str| all.iter().find(|x| x.state == s).unwrap_or_else(|| panic!("{s} in {all:?}"));
    assert_eq!((of("IQ").requests_received, of("IQ").accepted, of("IQ").pending), (1, 1, 0));
    assert!(of("IQ").median_days_to_decision >= 0.0);
    assert_eq!(of("NL").nationals_held, 1);
    assert_eq!(of("FR").nationals_held, 0);
    drop(facilities);
    drop(server);
}
