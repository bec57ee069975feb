//! Sharing agreements, break-the-glass, redaction of watched events, and the audit entries
//! that record every use of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::policy::Policy;
use concord_platform::server::{Services, Shutdown};
use concord_platform::storage::Db;
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::{caller, custodial, justice, ministry, monitor, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = RegistryServiceClient<InterceptedService<Channel, HeaderCredentials>>;

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
        let (svc, db) =
            concord_registry::build(&t.url, Arc::new(Policy::embedded()), &cfg, shutdown.clone())
                .await
                .unwrap();
        let server =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        Harness { server, db, _t: t }
    }

    async fn client(&self, p: Principal) -> Client {
        let ch = Channel::from_shared(self.server.uri()).unwrap().connect().await.unwrap();
        RegistryServiceClient::with_interceptor(ch, caller(p))
    }

    async fn audit(&self) -> Vec<concord_platform::audit::Stored> {
        concord_platform::audit::export(&self.db, 0, 10_000).await.unwrap()
    }
}

fn person(name: &str, state: &str, category: pb::PersonCategory) -> pb::Person {
    pb::Person {
        names: vec![pb::PersonName {
            full_name: name.into(),
            kind: pb::NameKind::Primary as i32,
            script: "Latn".into(),
        }],
        sex: pb::Sex::Female as i32,
        nationalities: vec![pb::Nationality {
            state: state.into(),
            basis: pb::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        category: category as i32,
        identity_confidence: pb::IdentityConfidence::Medium as i32,
        biometric_references: vec![pb::BiometricReference {
            system: "coalition-biometrics".into(),
            reference: format!("bio-{name}"),
            modality: pb::BiometricModality::Iris as i32,
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

/// A timestamp exactly `s` seconds from now (not rounded down to a whole second, which would
/// leave a loaded machine less than the time the test means to give it).
fn in_secs(s: i64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(s as u64))
}

fn agreement(
    grantee: &str,
    persons: Vec<String>,
    categories: Vec<pb::PersonCategory>,
) -> pb::SharingAgreement {
    pb::SharingAgreement {
        grantee_state: grantee.into(),
        persons,
        categories: categories.into_iter().map(|c| c as i32).collect(),
        purpose: "joint prosecution".into(),
        expire_time: Some(in_secs(86400)),
        ..Default::default()
    }
}

async fn share(
    c: &mut Client,
    a: pb::SharingAgreement,
) -> Result<pb::SharingAgreement, tonic::Status> {
    c.create_sharing_agreement(pb::CreateSharingAgreementRequest {
        sharing_agreement: Some(a),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut Client, name: &str) -> Result<pb::Person, Code> {
    c.get_person(pb::GetPersonRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

fn violations(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_state_shares_named_people_and_categories_until_it_revokes_them() {
    let h = Harness::start().await;
    let mut france = h.client(ministry("FR")).await;
    let mut sweden = h.client(ministry("SE")).await;
    let mother =
        create(&mut france, person("Aicha Benali", "FR", pb::PersonCategory::AdultFemale)).await;
    let child = create(&mut france, person("Ilyes Benali", "FR", pb::PersonCategory::Child)).await;
    let other =
        create(&mut france, person("Nadia Benali", "FR", pb::PersonCategory::AdultFemale)).await;
    assert_eq!(get(&mut sweden, &mother.name).await.unwrap_err(), Code::NotFound);

    let by_name =
        share(&mut france, agreement("SE", vec![mother.name.clone()], vec![])).await.unwrap();
    assert_eq!(by_name.grantor_state, "FR");
    let seen = get(&mut sweden, &mother.name).await.unwrap();
    assert_eq!(seen.redacted_fields, vec!["biometric_references"]);
    assert_eq!(get(&mut sweden, &child.name).await.unwrap_err(), Code::NotFound);
    assert_eq!(get(&mut sweden, &other.name).await.unwrap_err(), Code::NotFound);
    let listed = sweden.list_persons(pb::ListPersonsRequest::default()).await.unwrap().into_inner();
    assert_eq!(
        listed.persons.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        vec![mother.name.clone()]
    );
    // Shared for reading: Sweden may not change France's national.
    let mut renamed = seen.clone();
    renamed.names.push(pb::PersonName { full_name: "A. Benali".into(), ..Default::default() });
    let err = sweden
        .update_person(pb::UpdatePersonRequest {
            person: Some(renamed),
            update_mask: Some(prost_types::FieldMask { paths: vec!["names".into()] }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    share(&mut france, agreement("SE", vec![], vec![pb::PersonCategory::Child])).await.unwrap();
    assert!(get(&mut sweden, &child.name).await.is_ok(), "children of France are shared");

    // Both states list the agreement; only France can revoke it.
    let listed = sweden
        .list_sharing_agreements(pb::ListSharingAgreementsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sharing_agreements.len(), 2);
    let err = sweden
        .revoke_sharing_agreement(pb::RevokeSharingAgreementRequest { name: by_name.name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let revoked = france
        .revoke_sharing_agreement(pb::RevokeSharingAgreementRequest { name: by_name.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());
    assert_eq!(get(&mut sweden, &mother.name).await.unwrap_err(), Code::NotFound);

    // An agreement ends by itself at its expiry.
    let brief = agreement("SE", vec![other.name.clone()], vec![]);
    let expires = tokio::time::Instant::now() + Duration::from_secs(3);
    share(&mut france, pb::SharingAgreement { expire_time: Some(in_secs(3)), ..brief })
        .await
        .unwrap();
    assert!(get(&mut sweden, &other.name).await.is_ok());
    tokio::time::sleep_until(expires + Duration::from_millis(200)).await;
    assert_eq!(get(&mut sweden, &other.name).await.unwrap_err(), Code::NotFound);

    // Bad agreements are refused, naming what is wrong, and store nothing.
    let mut germany = h.client(ministry("DE")).await;
    let err =
        share(&mut germany, agreement("SE", vec![mother.name.clone()], vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "Germany cannot share a French national");
    let err =
        share(&mut france, agreement("FR", vec![mother.name.clone()], vec![])).await.unwrap_err();
    assert_eq!(violations(&err), vec!["sharing_agreement.grantee_state"]);
    let err = share(
        &mut france,
        pb::SharingAgreement {
            expire_time: None,
            ..agreement("SE", vec![], vec![pb::PersonCategory::Child])
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["sharing_agreement.expire_time"]);
    let err = share(
        &mut france,
        pb::SharingAgreement {
            expire_time: Some(in_secs(400 * 86400)),
            ..agreement("SE", vec![], vec![pb::PersonCategory::Child])
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["sharing_agreement.expire_time"]);
    let err = share(&mut france, agreement("SE", vec![], vec![])).await.unwrap_err();
    assert_eq!(violations(&err), vec!["sharing_agreement.persons"]);
    let listed = france
        .list_sharing_agreements(pb::ListSharingAgreementsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sharing_agreements.len(), 3, "no refused agreement was stored");

    // Every read Sweden made through an agreement is audited with the agreement's name.
    let audit = h.audit().await;
    let through = audit
        .iter()
        .filter(|e| {
            e.entry.agency == "se-mfa" && e.entry.action == "GetPerson" && e.entry.outcome == "OK"
        })
        .collect::<Vec<_>>();
    assert!(!through.is_empty());
    assert!(
        through.iter().all(|e| e.entry.resource.contains("[agreement sharingAgreements/")),
        "{through:?}"
    );
    assert!(audit
        .iter()
        .any(|e| e.entry.action == "RevokeSharingAgreement" && e.entry.resource == by_name.name));
    assert!(audit.iter().all(|e| e.entry.purpose == "concord integration test"));
}

#[tokio::test]
async fn break_the_glass_opens_one_person_with_a_reason_and_is_audited() {
    let h = Harness::start().await;
    let mut france = h.client(ministry("FR")).await;
    let p =
        create(&mut france, person("Samira Haddad", "FR", pb::PersonCategory::AdultFemale)).await;
    let mut guard = h.client(custodial(&["roj"])).await;
    assert_eq!(get(&mut guard, &p.name).await.unwrap_err(), Code::NotFound);

    let ask =
        |reason: &str, expire: Option<prost_types::Timestamp>| pb::CreateBreakGlassGrantRequest {
            break_glass_grant: Some(pb::BreakGlassGrant {
                person: p.name.clone(),
                reason: reason.into(),
                expire_time: expire,
                ..Default::default()
            }),
        };
    let err = guard.create_break_glass_grant(ask("urgent", None)).await.unwrap_err();
    assert_eq!(violations(&err), vec!["break_glass_grant.reason"]);
    let err = guard
        .create_break_glass_grant(ask(
            "admitted unconscious to the field hospital",
            Some(in_secs(5 * 3600)),
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["break_glass_grant.expire_time"]);
    let mut monitor = h.client(monitor()).await;
    let err = monitor
        .create_break_glass_grant(ask("admitted unconscious to the field hospital", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let grant = guard
        .create_break_glass_grant(ask("admitted unconscious to the field hospital", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grant.agency, "custodial-authority");
    let seen = get(&mut guard, &p.name).await.unwrap();
    assert_eq!(seen.names[0].full_name, "Samira Haddad");
    assert_eq!(
        seen.redacted_fields,
        vec!["biometric_references"],
        "the record opens, not the classes of fields the policy withholds"
    );

    let audit = h.audit().await;
    assert!(audit.iter().any(|e| e.entry.action == "CreateBreakGlassGrant"
        && e.entry.resource.contains(&p.name)
        && e.entry.agency == "custodial-authority"));
    assert!(audit.iter().any(|e| e.entry.action == "GetPerson"
        && e.entry.resource.contains(&format!("[break-glass {}]", grant.name))));
    assert!(
        audit
            .iter()
            .any(|e| e.entry.agency == "humanitarian-monitor"
                && e.entry.outcome == "PERMISSION_DENIED"),
        "refusals are audited too"
    );

    // A watch stream opened under a grant ends, retryably, when the grant expires.
    let mut medic = h.client(custodial(&["houri"])).await;
    medic
        .create_break_glass_grant(pb::CreateBreakGlassGrantRequest {
            break_glass_grant: Some(pb::BreakGlassGrant {
                person: p.name.clone(),
                reason: "transferred to the field hospital for surgery".into(),
                expire_time: Some(in_secs(3)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut stream =
        medic.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => break Some(s.code()),
                None => break None,
            }
        }
    })
    .await
    .expect("the stream ends by itself");
    assert_eq!(ended, Some(Code::Unavailable));
}

#[tokio::test]
async fn watched_events_are_redacted_like_reads_and_audited() {
    let h = Harness::start().await;
    let mut france = h.client(ministry("FR")).await;
    create(&mut france, person("Houda Karim", "FR", pb::PersonCategory::AdultFemale)).await;
    let first_event = |p: Principal| {
        let h = &h;
        async move {
            let mut c = h.client(p).await;
            let mut s =
                c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
            loop {
                let e = s.next().await.unwrap().unwrap().event.unwrap();
                if let Some(r) = e.resource {
                    break pb::Person::decode(r.value.as_slice()).unwrap();
                }
            }
        }
    };
    let ministry_view = first_event(ministry("FR")).await;
    assert!(ministry_view.biometric_references.is_empty());
    assert_eq!(ministry_view.redacted_fields, vec!["biometric_references"]);
    let prosecutor_view = first_event(justice("FR")).await;
    assert_eq!(prosecutor_view.biometric_references.len(), 1);

    // Someone France no longer sees (its nationality removed) vanishes from France's
    // watch, history included; Iraq still follows them.
    let mut cell = h.client(concord_testkit::coordinator()).await;
    let mut dual = person("Zainab Ali", "IQ", pb::PersonCategory::AdultFemale);
    dual.nationalities.push(pb::Nationality {
        state: "FR".into(),
        basis: pb::NationalityBasis::Claimed as i32,
        ..Default::default()
    });
    let dual = create(&mut cell, dual).await;
    let mut iraqi_only = dual.clone();
    iraqi_only.nationalities.retain(|n| n.state == "IQ");
    cell.update_person(pb::UpdatePersonRequest {
        person: Some(iraqi_only),
        update_mask: Some(prost_types::FieldMask { paths: vec!["nationalities".into()] }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let names = |p: Principal| {
        let h = &h;
        async move {
            let mut c = h.client(p).await;
            let mut s =
                c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
            let mut names = Vec::new();
            loop {
                let e = s.next().await.unwrap().unwrap().event.unwrap();
                if e.bookmark && !names.is_empty() {
                    break names;
                }
                if !e.bookmark {
                    names.push(e.resource_name);
                }
            }
        }
    };
    let france_sees = names(ministry("FR")).await;
    assert!(!france_sees.contains(&dual.name), "{france_sees:?}");
    assert!(names(ministry("IQ")).await.contains(&dual.name));
    let audit = h.audit().await;
    assert!(audit.iter().any(|e| e.entry.action == "WatchChanges"
        && e.entry.agency == "fr-justice"
        && e.entry.fields.contains("biometrics")));
}

#[tokio::test]
async fn a_merged_record_does_not_point_at_a_survivor_outside_the_scope() {
    let h = Harness::start().await;
    let mut cell = h.client(concord_testkit::coordinator()).await;
    let mut dual = person("Rania Yousef", "IQ", pb::PersonCategory::AdultFemale);
    dual.nationalities.push(pb::Nationality {
        state: "FR".into(),
        basis: pb::NationalityBasis::Claimed as i32,
        ..Default::default()
    });
    let merged = create(&mut cell, dual).await;
    let survivor =
        create(&mut cell, person("Rania Yousef", "IQ", pb::PersonCategory::AdultFemale)).await;
    let candidate = cell
        .list_duplicate_candidates(pb::ListDuplicateCandidatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates
        .into_iter()
        .next()
        .expect("a candidate");
    cell.merge_duplicate_candidate(pb::MergeDuplicateCandidateRequest {
        name: candidate.name,
        surviving_person: survivor.name.clone(),
        reason: "same person, two registrations".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(get(&mut cell, &merged.name).await.unwrap().merged_into, survivor.name);
    let mut france = h.client(ministry("FR")).await;
    let seen = get(&mut france, &merged.name).await.unwrap();
    assert_eq!(seen.merged_into, "", "the Iraqi-only survivor does not exist for France");
}
