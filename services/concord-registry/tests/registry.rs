//! Integration tests: the registry as a real server on 127.0.0.1:0, called with the generated
//! client. The storage runs on SQLite, or PostgreSQL with CONCORD_TEST_BACKEND=postgres.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::server::{Services, Shutdown};
use concord_proto::r#type::v1 as tpb;
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::{coordinator, ministry, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

type Client = RegistryServiceClient<InterceptedService<Channel, HeaderCredentials>>;

struct Harness {
    server: TestServer,
    _db: concord_testkit::TestDb,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(concord_testkit::server_config()).await
    }

    async fn start_with(cfg: concord_platform::config::ServerConfig) -> Harness {
        let db = concord_testkit::database().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let policy = std::sync::Arc::new(concord_platform::policy::Policy::embedded());
        let (svc, _db) =
            concord_registry::build(&db.url, policy, &cfg, shutdown.clone()).await.unwrap();
        let server =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        Harness { server, _db: db }
    }

    async fn client(&self, p: Principal) -> Client {
        let channel = Channel::from_shared(self.server.uri()).unwrap().connect().await.unwrap();
        RegistryServiceClient::with_interceptor(channel, concord_testkit::caller(p))
    }
}

fn person(name: &str, state: &str, year: i32) -> pb::Person {
    pb::Person {
        names: vec![pb::PersonName { full_name: name.into(), ..Default::default() }],
        sex: pb::Sex::Male as i32,
        category: pb::PersonCategory::AdultMale as i32,
        birth_date: Some(tpb::ApproximateDate {
            year,
            precision: tpb::DatePrecision::Year as i32,
            ..Default::default()
        }),
        nationalities: vec![pb::Nationality {
            state: state.into(),
            basis: pb::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn create(c: &mut Client, p: pb::Person) -> pb::Person {
    c.create_person(pb::CreatePersonRequest { person: Some(p), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

fn violations(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn transition(reason: &str) -> Option<pb::CustodyTransition> {
    Some(pb::CustodyTransition {
        reason: reason.into(),
        source: "test".into(),
        ..Default::default()
    })
}

async fn count(c: &mut Client) -> usize {
    c.list_persons(pb::ListPersonsRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .persons
        .len()
}

#[tokio::test]
async fn create_get_and_bad_input_stores_nothing() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let p = create(&mut c, person("Ahmed Yusuf", "FR", 1990)).await;
    assert_eq!(p.custody_status, pb::CustodyStatus::Registered as i32);
    let got =
        c.get_person(pb::GetPersonRequest { name: p.name.clone() }).await.unwrap().into_inner();
    assert_eq!(got, p);

    let mut bad = person("", "France", 1990);
    bad.birth_date = Some(tpb::ApproximateDate {
        year: 2003,
        month: 2,
        day: 29,
        precision: tpb::DatePrecision::Exact as i32,
    });
    bad.sex = 42;
    let err = c
        .create_person(pb::CreatePersonRequest { person: Some(bad), request_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    for f in [
        "person.names[0].full_name",
        "person.nationalities[0].state",
        "person.birth_date.day",
        "person.sex",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
    }
    let long = "x".repeat(201);
    let err = c
        .create_person(pb::CreatePersonRequest {
            person: Some(person(&long, "FR", 1990)),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["person.names[0].full_name"]);
    assert_eq!(count(&mut c).await, 1, "nothing stored by bad requests");

    let err =
        c.get_person(pb::GetPersonRequest { name: "persons/not-a-uuid".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_person(pb::GetPersonRequest { name: format!("persons/{}", uuid::Uuid::now_v7()) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn create_is_idempotent_on_request_id() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let req = pb::CreatePersonRequest {
        person: Some(person("Omar Khaled", "DE", 1985)),
        request_id: "9f1c-1".into(),
    };
    let a = c.create_person(req.clone()).await.unwrap().into_inner();
    let b = c.create_person(req.clone()).await.unwrap().into_inner();
    assert_eq!(a.name, b.name);
    assert_eq!(count(&mut c).await, 1);
    let mut other = req;
    other.person = Some(person("Someone Else", "DE", 1985));
    let err = c.create_person(other).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["request_id"]);
}

#[tokio::test]
async fn list_pages_filters_and_caps() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    for i in 0..7 {
        let mut p =
            person(&format!("Walid Number{i}"), if i % 2 == 0 { "FR" } else { "BE" }, 1980 + i);
        if i == 6 {
            p.category = pb::PersonCategory::Child as i32;
        }
        create(&mut c, p).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_persons(pb::ListPersonsRequest {
                page_size: 3,
                page_token: token.clone(),
                filter: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.persons.into_iter().map(|p| p.name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), 7);
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), 7);

    let r = c
        .list_persons(pb::ListPersonsRequest {
            page_size: 100,
            filter: r#"nationality = "FR" AND birth_year >= 1982"#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.persons.len(), 3, "FR born 1982, 1984, 1986");
    let r = c
        .list_persons(pb::ListPersonsRequest {
            filter: "category = CHILD".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.persons.len(), 1);

    let err = c
        .list_persons(pb::ListPersonsRequest { page_size: 5000, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["page_size"]);
    let err = c
        .list_persons(pb::ListPersonsRequest { filter: "category = ".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["filter"]);
    let err = c
        .list_persons(pb::ListPersonsRequest {
            filter: "shoe_size = 3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("shoe_size"), "{}", err.message());
    let first = c
        .list_persons(pb::ListPersonsRequest { page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let err = c
        .list_persons(pb::ListPersonsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            filter: "category = CHILD".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["page_token"]);
}

#[tokio::test]
async fn search_tolerates_transliteration_and_ranks_exact_spellings_first() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let arabic = create(&mut c, person("محمد عبد الرحمن الحسن", "IQ", 1990)).await;
    let muhammad = create(&mut c, person("Muhammad Abd al-Rahman Hassan", "FR", 1991)).await;
    let mohammed = create(&mut c, person("Mohammed Abdulrahman", "FR", 1992)).await;
    let other = create(&mut c, person("Khaled Walid", "FR", 1992)).await;

    let r = c
        .search_persons(pb::SearchPersonsRequest {
            query: "Mohammed Abdul Rahman al-Hassan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = r.results.iter().map(|x| x.person.as_ref().unwrap().name.clone()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&other.name));
    // Three skeletons matched by both full names; the exact spellings rank Mohammed first
    // among the Latin records.
    assert!(
        names.contains(&arabic.name)
            && names.contains(&muhammad.name)
            && names.contains(&mohammed.name)
    );
    let scores: Vec<f64> = r.results.iter().map(|x| x.score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked: {scores:?}");

    let r = c
        .search_persons(pb::SearchPersonsRequest {
            query: "محمد".into(),
            filter: r#"nationality = "FR""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);

    // Paging walks every result exactly once.
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let r = c
            .search_persons(pb::SearchPersonsRequest {
                query: "Muhammad".into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(r.results.into_iter().map(|x| x.person.unwrap().name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3);

    let err = c
        .search_persons(pb::SearchPersonsRequest { query: "  -- ".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["query"]);
}

#[tokio::test]
async fn a_state_sees_only_its_nationals() {
    let h = Harness::start().await;
    let mut cell = h.client(coordinator()).await;
    let fr = create(&mut cell, person("Yusuf Ahmad", "FR", 1990)).await;
    let de = create(&mut cell, person("Youssef Ahmed", "DE", 1990)).await;
    let mut france = h.client(ministry("FR")).await;
    assert!(france.get_person(pb::GetPersonRequest { name: fr.name.clone() }).await.is_ok());
    let err = france.get_person(pb::GetPersonRequest { name: de.name.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "existence must not leak");
    assert_eq!(count(&mut france).await, 1);
    let r = france
        .search_persons(pb::SearchPersonsRequest { query: "Yusuf".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 1);
    let err = france
        .update_person(pb::UpdatePersonRequest {
            person: Some(de.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["names".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // What the policy does not permit is refused before any lookup, so it reveals nothing.
    let err = france
        .record_escape(pb::RecordEscapeRequest {
            name: de.name.clone(),
            transition: transition("x"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let channel = Channel::from_shared(h.server.uri()).unwrap().connect().await.unwrap();
    let mut anonymous = RegistryServiceClient::new(channel);
    let err = anonymous.get_person(pb::GetPersonRequest { name: fr.name }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_state_writes_only_its_nationals_and_its_own_nationality_entries() {
    let h = Harness::start().await;
    let mut france = h.client(ministry("FR")).await;
    let err = france
        .create_person(pb::CreatePersonRequest {
            person: Some(person("Samir Haddad", "IQ", 1990)),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["person.nationalities"]);
    let mut dual = person("Samir Haddad", "FR", 1990);
    dual.nationalities.push(pb::Nationality {
        state: "DZ".into(),
        basis: pb::NationalityBasis::Documented as i32,
        ..Default::default()
    });
    let mut cell = h.client(coordinator()).await;
    let p = create(&mut cell, dual).await;
    // France may not drop Algeria's entry (that would hide the person from Algeria).
    let mut only_fr = p.clone();
    only_fr.nationalities.retain(|n| n.state == "FR");
    let err = france
        .update_person(pb::UpdatePersonRequest {
            person: Some(only_fr),
            update_mask: Some(prost_types::FieldMask { paths: vec!["nationalities".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["person.nationalities"]);
    // France may change its own entry.
    let mut verified = p.clone();
    for n in &mut verified.nationalities {
        if n.state == "FR" {
            n.basis = pb::NationalityBasis::Verified as i32;
        }
    }
    france
        .update_person(pb::UpdatePersonRequest {
            person: Some(verified),
            update_mask: Some(prost_types::FieldMask { paths: vec!["nationalities".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut algeria = h.client(ministry("DZ")).await;
    assert!(algeria.get_person(pb::GetPersonRequest { name: p.name }).await.is_ok());
}

#[tokio::test]
async fn custody_follows_the_state_machine_with_a_timeline() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let p = create(&mut c, person("Hussein Ali", "TN", 1988)).await;
    let err = c
        .record_escape(pb::RecordEscapeRequest {
            name: p.name.clone(),
            transition: transition("night"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("REGISTERED"), "names the current state: {}", err.message());

    let admitted = c
        .admit_person(pb::AdmitPersonRequest {
            name: p.name.clone(),
            facility_id: "hasakah-prison".into(),
            transition: transition("admitted"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admitted.custody_status, pb::CustodyStatus::InCustody as i32);
    assert_eq!(admitted.facility_id, "hasakah-prison");

    // A stale etag loses.
    let mut stale = transition("escape");
    stale.as_mut().unwrap().etag = p.etag.clone();
    let err = c
        .record_escape(pb::RecordEscapeRequest {
            name: p.name.clone(),
            transition: stale,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // A retried transition with the same request id applies once.
    let mut t = transition("attack on the prison");
    t.as_mut().unwrap().request_id = "escape-1".into();
    let req = pb::RecordEscapeRequest {
        name: p.name.clone(),
        incident_id: "incident-7".into(),
        transition: t,
    };
    c.record_escape(req.clone()).await.unwrap();
    let again = c.record_escape(req).await.unwrap().into_inner();
    assert_eq!(again.custody_status, pb::CustodyStatus::Escaped as i32);
    c.record_recapture(pb::RecordRecaptureRequest {
        name: p.name.clone(),
        transition: transition("found"),
    })
    .await
    .unwrap();
    c.admit_person(pb::AdmitPersonRequest {
        name: p.name.clone(),
        facility_id: "hasakah-prison".into(),
        transition: transition("back"),
        ..Default::default()
    })
    .await
    .unwrap();
    let handed = c
        .record_hand_over(pb::RecordHandOverRequest {
            name: p.name.clone(),
            receiving_state: "TN".into(),
            disposition: pb::Disposition::ProsecutionAtHome as i32,
            diplomatic_request: "requests/1".into(),
            transition: transition("repatriated"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(handed.custody_status, pb::CustodyStatus::HandedOver as i32);
    assert_eq!(handed.receiving_state, "TN");
    let err = c
        .record_death(pb::RecordDeathRequest { name: p.name.clone(), transition: transition("x") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let events = c
        .list_custody_events(pb::ListCustodyEventsRequest {
            parent: p.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .custody_events;
    let steps: Vec<(i32, i32)> = events.iter().map(|e| (e.from_status, e.to_status)).collect();
    use pb::CustodyStatus as S;
    assert_eq!(
        steps,
        vec![
            (S::Registered as i32, S::InCustody as i32),
            (S::InCustody as i32, S::Escaped as i32),
            (S::Escaped as i32, S::Recaptured as i32),
            (S::Recaptured as i32, S::InCustody as i32),
            (S::InCustody as i32, S::HandedOver as i32),
        ]
    );
    assert_eq!(events[1].reference, "incident-7");
    assert_eq!(events[1].recorded_by, "coalition-cell");

    let err = c
        .admit_person(pb::AdmitPersonRequest {
            name: p.name.clone(),
            transition: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["transition.reason", "transition.source"]);
}

#[tokio::test]
async fn concurrent_transitions_apply_exactly_one() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    for round in 0..5 {
        let p = create(&mut c, person(&format!("Rashid Othman{round}"), "TJ", 1980)).await;
        c.admit_person(pb::AdmitPersonRequest {
            name: p.name.clone(),
            facility_id: "al-hol".into(),
            transition: transition("in"),
            ..Default::default()
        })
        .await
        .unwrap();
        let (mut a, mut b) = (c.clone(), c.clone());
        let (na, nb) = (p.name.clone(), p.name.clone());
        let (ra, rb) = tokio::join!(
            async move {
                a.record_escape(pb::RecordEscapeRequest {
                    name: na,
                    transition: transition("riot"),
                    ..Default::default()
                })
                .await
            },
            async move {
                b.record_release(pb::RecordReleaseRequest {
                    name: nb,
                    transition: transition("court order"),
                })
                .await
            },
        );
        assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "exactly one transition wins");
        let loser = ra.err().or(rb.err()).unwrap();
        assert!(matches!(loser.code(), Code::Aborted | Code::FailedPrecondition), "{loser:?}");
        let events = c
            .list_custody_events(pb::ListCustodyEventsRequest {
                parent: p.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .custody_events;
        assert_eq!(events.len(), 2, "admission and one exit only");
        let now = c.get_person(pb::GetPersonRequest { name: p.name }).await.unwrap().into_inner();
        assert_eq!(now.custody_status, events[1].to_status, "record and timeline agree");
    }
}

#[tokio::test]
async fn update_uses_field_masks_and_etags() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let p = create(&mut c, person("Fatima Omar", "NL", 1995)).await;
    let mut change = p.clone();
    change.legal_status = pb::LegalStatus::Investigated as i32;
    change.sex = pb::Sex::Female as i32;
    let updated = c
        .update_person(pb::UpdatePersonRequest {
            person: Some(change.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["legal_status".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.legal_status, pb::LegalStatus::Investigated as i32);
    assert_eq!(updated.sex, pb::Sex::Male as i32, "fields outside the mask are kept");
    assert_ne!(updated.etag, p.etag);
    let err = c
        .update_person(pb::UpdatePersonRequest {
            person: Some(change.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["sex".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "old etag");
    let mut fresh = updated.clone();
    fresh.custody_status = pb::CustodyStatus::Released as i32;
    let err = c
        .update_person(pb::UpdatePersonRequest {
            person: Some(fresh),
            update_mask: Some(prost_types::FieldMask { paths: vec!["custody_status".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("custody methods"), "{}", err.message());
}

#[tokio::test]
async fn renaming_a_person_moves_them_in_search_and_keeps_document_matches() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let p = create(&mut c, person("Bilal Mansour", "MA", 1993)).await;
    let doc = pb::IdentityDocument {
        kind: pb::DocumentKind::Passport as i32,
        issuing_state: "MA".into(),
        number: "P-777".into(),
        ..Default::default()
    };
    // Documents are for the state concerned; the coordinator may not read or write them.
    let mut morocco = h.client(ministry("MA")).await;
    let err = c
        .create_identity_document(pb::CreateIdentityDocumentRequest {
            parent: p.name.clone(),
            identity_document: Some(doc.clone()),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    morocco
        .create_identity_document(pb::CreateIdentityDocumentRequest {
            parent: p.name.clone(),
            identity_document: Some(doc.clone()),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut renamed = p.clone();
    renamed.names = vec![pb::PersonName { full_name: "Anas Darwish".into(), ..Default::default() }];
    c.update_person(pb::UpdatePersonRequest {
        person: Some(renamed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["names".into()] }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let search = |q: &str| pb::SearchPersonsRequest { query: q.into(), ..Default::default() };
    assert!(c
        .search_persons(search("Bilal Mansour"))
        .await
        .unwrap()
        .into_inner()
        .results
        .is_empty());
    assert_eq!(
        c.search_persons(search("Anas Darwich")).await.unwrap().into_inner().results.len(),
        1
    );
    // The passport still links a new record to this one.
    let other = create(&mut c, person("Someone Different", "MA", 1993)).await;
    morocco
        .create_identity_document(pb::CreateIdentityDocumentRequest {
            parent: other.name.clone(),
            identity_document: Some(doc),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let cands = c
        .list_duplicate_candidates(pb::ListDuplicateCandidatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert_eq!(cands.len(), 1);
    assert!(cands[0].reasons.contains(&"document".to_string()), "{:?}", cands[0].reasons);
}

#[tokio::test]
async fn import_reports_bad_rows_and_retries_store_nothing_twice() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let rows: Vec<pb::ImportPersonsRequest> = (0..25)
        .map(|i| {
            let mut p = person(&format!("Tariq Jamal{i}"), "KZ", 2000);
            if i == 3 {
                p.birth_date.as_mut().unwrap().month = 13;
                p.birth_date.as_mut().unwrap().precision = tpb::DatePrecision::Month as i32;
            }
            if i == 7 {
                p.names.clear();
            }
            pb::ImportPersonsRequest { person: Some(p), request_id: format!("import-{i}") }
        })
        .collect();
    let r = c.import_persons(futures::stream::iter(rows.clone())).await.unwrap().into_inner();
    assert_eq!(r.created_count, 23);
    let bad: Vec<(i64, String)> = r.errors.iter().map(|e| (e.index, e.field.clone())).collect();
    assert_eq!(
        bad,
        vec![(3, "person.birth_date.month".to_string()), (7, "person.names".to_string())]
    );
    let again = c.import_persons(futures::stream::iter(rows)).await.unwrap().into_inner();
    assert_eq!(again.created_count, 0);
    assert_eq!(again.already_present_count, 23);
    assert_eq!(count(&mut c).await, 23);
}

#[tokio::test]
async fn duplicates_are_found_merged_and_unmerged() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let a = create(&mut c, person("Abdullah Hussein", "UZ", 1990)).await;
    let b = create(&mut c, person("عبدالله حسين", "UZ", 1991)).await;
    create(&mut c, person("Abdullah Hussein", "UZ", 1960)).await; // same name, 30 years apart
    let list = c
        .list_duplicate_candidates(pb::ListDuplicateCandidatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert_eq!(list.len(), 1, "{list:?}");
    for p in [&a, &b] {
        let filter = format!("person = \"{}\"", &p.name["persons/".len()..]);
        let by_person = c
            .list_duplicate_candidates(pb::ListDuplicateCandidatesRequest {
                filter,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .duplicate_candidates;
        assert_eq!(by_person.len(), 1, "filter by either side of the pair");
    }
    let cand = &list[0];
    assert_eq!(
        (cand.person.as_str(), cand.other_person.as_str()),
        (b.name.as_str(), a.name.as_str())
    );
    assert!(
        cand.reasons.contains(&"name".to_string())
            && cand.reasons.contains(&"birth_date".to_string())
    );

    let merged = c
        .merge_duplicate_candidate(pb::MergeDuplicateCandidateRequest {
            name: cand.name.clone(),
            surviving_person: a.name.clone(),
            reason: "same person".into(),
            etag: cand.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.state, pb::DuplicateState::Merged as i32);
    let dup =
        c.get_person(pb::GetPersonRequest { name: b.name.clone() }).await.unwrap().into_inner();
    assert_eq!(dup.merged_into, a.name);
    let err = c
        .reject_duplicate_candidate(pb::RejectDuplicateCandidateRequest {
            name: cand.name.clone(),
            reason: "x".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let open = c
        .unmerge_duplicate_candidate(pb::UnmergeDuplicateCandidateRequest {
            name: cand.name.clone(),
            reason: "DNA says otherwise".into(),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.state, pb::DuplicateState::Open as i32);
    let dup =
        c.get_person(pb::GetPersonRequest { name: b.name.clone() }).await.unwrap().into_inner();
    assert_eq!(dup.merged_into, "");
}

#[tokio::test]
async fn watch_resumes_from_a_cursor_within_scope() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let fr = create(&mut c, person("Ziad Karim", "FR", 1990)).await;
    create(&mut c, person("Ziyad Kareem", "DE", 1990)).await;
    let mut france = h.client(ministry("FR")).await;
    let mut stream =
        france.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap().event.unwrap();
    assert!(first.bookmark);
    let ev = stream.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(ev.resource_name, fr.name);
    assert_eq!(ev.event_type, "person.created");
    let cursor = ev.cursor.clone();
    drop(stream);

    c.admit_person(pb::AdmitPersonRequest {
        name: fr.name.clone(),
        facility_id: "roj".into(),
        transition: transition("in"),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut resumed = france
        .watch_changes(pb::WatchChangesRequest { cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut got = None;
    while let Some(msg) = resumed.next().await {
        let e = msg.unwrap().event.unwrap();
        if !e.bookmark {
            got = Some(e);
            break;
        }
    }
    let e = got.unwrap();
    assert_eq!(e.event_type, "person.custody_changed");
    let person: pb::Person = prost::Message::decode(e.resource.unwrap().value.as_slice()).unwrap();
    assert_eq!(person.facility_id, "roj");

    let err = france
        .watch_changes(pb::WatchChangesRequest {
            cursor: "not-a-cursor".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn family_and_identity_records_respect_scope() {
    let h = Harness::start().await;
    let mut c = h.client(coordinator()).await;
    let mother = create(&mut c, person("Amina Saleh", "SE", 1992)).await;
    let child = create(&mut c, person("Yahya Saleh", "SE", 2016)).await;
    c.create_relationship(pb::CreateRelationshipRequest {
        relationship: Some(pb::Relationship {
            person: child.name.clone(),
            related_person: mother.name.clone(),
            kind: pb::RelationshipKind::Parent as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let hh = c
        .create_household(pb::CreateHouseholdRequest {
            household: Some(pb::Household {
                head: mother.name.clone(),
                members: vec![mother.name.clone(), child.name.clone()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Each member carries the household, as a change of the person watchers hear of.
    let m = c.get_person(pb::GetPersonRequest { name: mother.name.clone() }).await.unwrap();
    let m = m.into_inner();
    assert_eq!(m.household, hh.name);
    assert_ne!(m.etag, mother.etag, "joining a household is a change of the person");
    let mut events =
        c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let mut joined = 0;
    while joined < 2 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.message());
        let e = next.await.expect("both members' changes arrive").unwrap().unwrap().event.unwrap();
        if e.event_type == "person.updated" {
            let p = pb::Person::decode(e.resource.unwrap().value.as_slice()).unwrap();
            assert_eq!(p.household, hh.name);
            joined += 1;
        }
    }
    c.create_consent_record(pb::CreateConsentRecordRequest {
        parent: child.name.clone(),
        consent_record: Some(pb::ConsentRecord {
            purpose: "repatriation".into(),
            granted: true,
            given_by: mother.name.clone(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let doc = pb::IdentityDocument {
        kind: pb::DocumentKind::Passport as i32,
        issuing_state: "SE".into(),
        number: "X123".into(),
        ..Default::default()
    };
    let mut sweden = h.client(ministry("SE")).await;
    sweden
        .create_identity_document(pb::CreateIdentityDocumentRequest {
            parent: mother.name.clone(),
            identity_document: Some(doc.clone()),
            request_id: String::new(),
        })
        .await
        .unwrap();

    let rel = sweden
        .list_relationships(pb::ListRelationshipsRequest { parent: mother.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .relationships;
    assert_eq!(rel.len(), 1);
    assert_eq!(
        sweden
            .get_household(pb::GetHouseholdRequest { name: hh.name.clone() })
            .await
            .unwrap()
            .into_inner()
            .members
            .len(),
        2
    );
    let consents = sweden
        .list_consent_records(pb::ListConsentRecordsRequest { parent: child.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .consent_records;
    assert_eq!(consents.len(), 1);
    let docs = sweden
        .list_identity_documents(pb::ListIdentityDocumentsRequest { parent: mother.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .identity_documents;
    assert_eq!(docs[0].number, "X123");

    let mut norway = h.client(ministry("NO")).await;
    assert_eq!(
        norway.get_household(pb::GetHouseholdRequest { name: hh.name }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        norway
            .list_relationships(pb::ListRelationshipsRequest { parent: mother.name.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let err = sweden
        .create_identity_document(pb::CreateIdentityDocumentRequest {
            parent: mother.name,
            identity_document: Some(pb::IdentityDocument { issuing_state: "Sweden".into(), ..doc }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["identity_document.issuing_state"]);
}

#[tokio::test]
async fn agencies_are_rate_limited_and_stream_capped_each_on_their_own() {
    let mut cfg = concord_testkit::server_config();
    cfg.rate_limit_per_agency = 1.0;
    cfg.rate_burst_per_agency = 3.0;
    cfg.max_streams_per_agency = 1;
    let h = Harness::start_with(cfg).await;
    let mut france = h.client(ministry("FR")).await;
    // The first call opens a watch stream; two more calls use up the burst of three.
    let mut watch =
        france.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    assert!(watch.next().await.unwrap().unwrap().event.unwrap().bookmark);
    let second = france.watch_changes(pb::WatchChangesRequest::default()).await.unwrap_err();
    assert_eq!(second.code(), Code::ResourceExhausted, "one open stream per agency");
    france.list_persons(pb::ListPersonsRequest::default()).await.unwrap();
    let limited = france.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited.get_error_details().retry_info().cloned().expect("retry info");
    assert!(retry.retry_delay.unwrap() <= std::time::Duration::from_secs(1));
    // Another agency is not affected.
    let mut germany = h.client(ministry("DE")).await;
    germany.list_persons(pb::ListPersonsRequest::default()).await.unwrap();
    germany.watch_changes(pb::WatchChangesRequest::default()).await.unwrap();
}

#[tokio::test]
async fn oversize_messages_are_refused() {
    let mut cfg = concord_testkit::server_config();
    cfg.max_message_bytes = 4 * 1024;
    let h = Harness::start_with(cfg).await;
    let mut c = h.client(coordinator()).await;
    let mut p = person("Big Record", "FR", 1990);
    p.names = (0..30)
        .map(|i| pb::PersonName {
            full_name: format!("{}{i}", "n".repeat(190)),
            ..Default::default()
        })
        .collect();
    p.biometric_references = (0..30)
        .map(|i| pb::BiometricReference {
            system: "s".repeat(100),
            reference: format!("{}{i}", "r".repeat(190)),
            modality: 1,
        })
        .collect();
    let Err(err) = c
        .create_person(pb::CreatePersonRequest { person: Some(p), request_id: String::new() })
        .await
    else {
        panic!("an oversize message was accepted");
    };
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_eq!(count(&mut c).await, 0);
    assert!(
        err.message().contains("message length too large") || err.message().contains("too large"),
        "{}",
        err.message()
    );
}
