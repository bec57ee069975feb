//! The authorization matrix: every RPC of the registry x every kind of principal x an object
//! in the principal's scope and one outside it. Two rules hold in every cell:
//!
//! - zero leaks: no response carries an id of a person outside the caller's scope, nor a
//!   biometric reference or document number the caller's field classes do not include;
//! - the policy decides: a call the policy does not permit is PERMISSION_DENIED (before any
//!   lookup), one it permits is never PERMISSION_DENIED on an object in scope, and a call on
//!   an object outside the scope never succeeds with it.
//!
//! The list of RPCs is checked against the service descriptor, so a new RPC fails this test
//! until it joins the matrix. Later services copy this pattern.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::policy::{Action, FieldClass, Policy};
use concord_platform::server::{Services, Shutdown};
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::{caller, coordinator, custodial, justice, ministry, monitor, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = RegistryServiceClient<InterceptedService<Channel, HeaderCredentials>>;

/// Every RPC with the action the policy checks for it and, for record RPCs, the class of
/// fields it reads or writes.
const RPCS: &[(&str, Action, Option<FieldClass>)] = &[
    ("CreatePerson", Action::PersonsCreate, None),
    ("GetPerson", Action::PersonsRead, None),
    ("ListPersons", Action::PersonsRead, None),
    ("SummarizePersons", Action::PersonsRead, Some(FieldClass::Custody)),
    ("UpdatePerson", Action::PersonsUpdate, Some(FieldClass::Identity)),
    ("SearchPersons", Action::PersonsRead, None),
    ("ImportPersons", Action::PersonsImport, None),
    ("AdmitPerson", Action::CustodyRecord, None),
    ("StartTransfer", Action::CustodyRecord, None),
    ("HospitalisePerson", Action::CustodyRecord, None),
    ("AdmitToRehabilitation", Action::CustodyRecord, None),
    ("ReturnToCustody", Action::CustodyRecord, None),
    ("RecordEscape", Action::CustodyRecord, None),
    ("RecordRecapture", Action::CustodyRecord, None),
    ("MarkUnaccounted", Action::CustodyRecord, None),
    ("RecordHandOver", Action::CustodyRecord, None),
    ("RecordRelease", Action::CustodyRecord, None),
    ("RecordDeath", Action::CustodyRecord, None),
    ("ListCustodyEvents", Action::CustodyRead, Some(FieldClass::Custody)),
    ("ListDuplicateCandidates", Action::DuplicatesReview, None),
    ("RejectDuplicateCandidate", Action::DuplicatesReview, None),
    ("MergeDuplicateCandidate", Action::DuplicatesReview, None),
    ("UnmergeDuplicateCandidate", Action::DuplicatesReview, None),
    ("CreateRelationship", Action::RecordsWrite, Some(FieldClass::Identity)),
    ("ListRelationships", Action::RecordsRead, Some(FieldClass::Identity)),
    ("CreateHousehold", Action::RecordsWrite, Some(FieldClass::Identity)),
    ("GetHousehold", Action::RecordsRead, Some(FieldClass::Identity)),
    ("CreateIdentityDocument", Action::RecordsWrite, Some(FieldClass::Documents)),
    ("ListIdentityDocuments", Action::RecordsRead, Some(FieldClass::Documents)),
    ("CreateIdentityVerification", Action::RecordsWrite, Some(FieldClass::Documents)),
    ("ListIdentityVerifications", Action::RecordsRead, Some(FieldClass::Documents)),
    ("CreateConsentRecord", Action::RecordsWrite, Some(FieldClass::Welfare)),
    ("ListConsentRecords", Action::RecordsRead, Some(FieldClass::Welfare)),
    ("CreateSharingAgreement", Action::SharingManage, None),
    ("ListSharingAgreements", Action::SharingManage, None),
    ("RevokeSharingAgreement", Action::SharingManage, None),
    ("CreateBreakGlassGrant", Action::BreakGlass, None),
    ("WatchChanges", Action::ChangesWatch, None),
];

/// Objects on one side of a principal's scope.
#[derive(Debug, Clone)]
struct Side {
    state: &'static str,
    facility: &'static str,
    full_name: String,
    person: pb::Person,
    child: pb::Person,
    household: String,
    candidate: String,
    agreement: String,
}

/// A kind of principal, and which side it sees.
struct Caller {
    label: &'static str,
    principal: Principal,
    /// Sees the foreign side too.
    sees_all: bool,
}

fn person(name: &str, state: &str, year: i32, secret: &str) -> pb::Person {
    pb::Person {
        names: vec![pb::PersonName {
            full_name: name.into(),
            kind: pb::NameKind::Primary as i32,
            script: "Latn".into(),
        }],
        sex: pb::Sex::Female as i32,
        birth_date: Some(concord_proto::r#type::v1::ApproximateDate {
            year,
            month: 0,
            day: 0,
            precision: concord_proto::r#type::v1::DatePrecision::Year as i32,
        }),
        nationalities: vec![pb::Nationality {
            state: state.into(),
            basis: pb::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        category: pb::PersonCategory::AdultFemale as i32,
        identity_confidence: pb::IdentityConfidence::Medium as i32,
        biometric_references: vec![pb::BiometricReference {
            system: "coalition-biometrics".into(),
            reference: secret.into(),
            modality: pb::BiometricModality::Fingerprint as i32,
        }],
        ..Default::default()
    }
}

fn transition() -> Option<pb::CustodyTransition> {
    Some(pb::CustodyTransition {
        reason: "matrix".into(),
        source: "matrix".into(),
        ..Default::default()
    })
}

async fn client(uri: &str, p: Principal) -> Client {
    let channel = Channel::from_shared(uri.to_string()).unwrap().connect().await.unwrap();
    RegistryServiceClient::with_interceptor(channel, caller(p))
}

/// Builds one side: two nationals of `state` in `facility`, their records, a duplicate
/// candidate between them and a sharing agreement of theirs.
async fn side(uri: &str, state: &'static str, facility: &'static str, full_name: &str) -> Side {
    let mut cell = client(uri, coordinator()).await;
    let mut home = client(uri, ministry(state)).await;
    let secret = format!("BIO-SECRET-{state}");
    let create = |p: pb::Person| {
        let mut c = cell.clone();
        async move {
            c.create_person(pb::CreatePersonRequest { person: Some(p), request_id: String::new() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let p = create(person(full_name, state, 1990, &secret)).await;
    let child = create(person(full_name, state, 1991, &secret)).await;
    for x in [&p, &child] {
        cell.admit_person(pb::AdmitPersonRequest {
            name: x.name.clone(),
            facility_id: facility.into(),
            transition: transition(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let household = cell
        .create_household(pb::CreateHouseholdRequest {
            household: Some(pb::Household {
                head: p.name.clone(),
                members: vec![p.name.clone(), child.name.clone()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    cell.create_relationship(pb::CreateRelationshipRequest {
        relationship: Some(pb::Relationship {
            person: child.name.clone(),
            related_person: p.name.clone(),
            kind: pb::RelationshipKind::Parent as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    home.create_identity_document(pb::CreateIdentityDocumentRequest {
        parent: p.name.clone(),
        identity_document: Some(pb::IdentityDocument {
            kind: pb::DocumentKind::Passport as i32,
            issuing_state: state.into(),
            number: format!("DOC-SECRET-{state}"),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    home.create_consent_record(pb::CreateConsentRecordRequest {
        parent: p.name.clone(),
        consent_record: Some(pb::ConsentRecord {
            purpose: "repatriation".into(),
            granted: true,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let candidate = cell
        .list_duplicate_candidates(pb::ListDuplicateCandidatesRequest {
            filter: format!("person = \"{}\"", p.name.trim_start_matches("persons/")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates
        .first()
        .map(|c| c.name.clone())
        .expect("the two look-alikes are a duplicate candidate");
    let agreement = home
        .create_sharing_agreement(pb::CreateSharingAgreementRequest {
            sharing_agreement: Some(pb::SharingAgreement {
                grantee_state: "SE".into(),
                persons: vec![p.name.clone()],
                purpose: "prosecution cooperation".into(),
                expire_time: Some(in_a_day()),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    Side {
        state,
        facility,
        full_name: full_name.into(),
        person: p,
        child,
        household,
        candidate,
        agreement,
    }
}

/// Calls `rpc` about the objects of `t` and returns the response, printed.
async fn call(c: &mut Client, rpc: &str, t: &Side) -> Result<String, tonic::Status> {
    let p = t.person.name.clone();
    let child = t.child.name.clone();
    let d = |r: &dyn std::fmt::Debug| format!("{r:?}");
    Ok(match rpc {
        "CreatePerson" => d(&c
            .create_person(pb::CreatePersonRequest {
                person: Some(person("Khadija Nour", t.state, 1980, "BIO-NEW")),
                request_id: String::new(),
            })
            .await?),
        "GetPerson" => d(&c.get_person(pb::GetPersonRequest { name: p }).await?),
        "ListPersons" => d(&c.list_persons(pb::ListPersonsRequest::default()).await?),
        "SummarizePersons" => d(&c
            .summarize_persons(pb::SummarizePersonsRequest {
                filter: String::new(),
                group_by: pb::PersonGrouping::CustodyStatus as i32,
            })
            .await?),
        "UpdatePerson" => {
            let mut x = t.person.clone();
            x.etag = String::new();
            x.names.push(pb::PersonName {
                full_name: "Umm Yusuf".into(),
                kind: pb::NameKind::Kunya as i32,
                script: "Latn".into(),
            });
            d(&c.update_person(pb::UpdatePersonRequest {
                person: Some(x),
                update_mask: Some(prost_types::FieldMask { paths: vec!["names".into()] }),
                request_id: String::new(),
            })
            .await?)
        }
        "SearchPersons" => d(&c
            .search_persons(pb::SearchPersonsRequest {
                query: t.full_name.clone(),
                ..Default::default()
            })
            .await?),
        "ImportPersons" => {
            let row = pb::ImportPersonsRequest {
                person: Some(person("Safiya Omar", t.state, 1985, "BIO-IMPORT")),
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            d(&c.import_persons(futures::stream::iter([row])).await?)
        }
        "AdmitPerson" => d(&c
            .admit_person(pb::AdmitPersonRequest {
                name: p,
                facility_id: t.facility.into(),
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "StartTransfer" => d(&c
            .start_transfer(pb::StartTransferRequest {
                name: p,
                destination_facility_id: t.facility.into(),
                transition: transition(),
            })
            .await?),
        "HospitalisePerson" => d(&c
            .hospitalise_person(pb::HospitalisePersonRequest {
                name: p,
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "AdmitToRehabilitation" => d(&c
            .admit_to_rehabilitation(pb::AdmitToRehabilitationRequest {
                name: p,
                facility_id: "houri".into(),
                transition: transition(),
            })
            .await?),
        "ReturnToCustody" => d(&c
            .return_to_custody(pb::ReturnToCustodyRequest {
                name: p,
                facility_id: t.facility.into(),
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "RecordEscape" => d(&c
            .record_escape(pb::RecordEscapeRequest {
                name: p,
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "RecordRecapture" => d(&c
            .record_recapture(pb::RecordRecaptureRequest { name: p, transition: transition() })
            .await?),
        "MarkUnaccounted" => d(&c
            .mark_unaccounted(pb::MarkUnaccountedRequest {
                name: p,
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "RecordHandOver" => d(&c
            .record_hand_over(pb::RecordHandOverRequest {
                name: p,
                receiving_state: t.state.into(),
                disposition: pb::Disposition::Reintegration as i32,
                transition: transition(),
                ..Default::default()
            })
            .await?),
        "RecordRelease" => d(&c
            .record_release(pb::RecordReleaseRequest { name: p, transition: transition() })
            .await?),
        "RecordDeath" => {
            d(&c.record_death(pb::RecordDeathRequest { name: p, transition: transition() }).await?)
        }
        "ListCustodyEvents" => d(&c
            .list_custody_events(pb::ListCustodyEventsRequest { parent: p, ..Default::default() })
            .await?),
        "ListDuplicateCandidates" => {
            d(&c.list_duplicate_candidates(pb::ListDuplicateCandidatesRequest::default()).await?)
        }
        "RejectDuplicateCandidate" => d(&c
            .reject_duplicate_candidate(pb::RejectDuplicateCandidateRequest {
                name: t.candidate.clone(),
                reason: "different birth years".into(),
                ..Default::default()
            })
            .await?),
        "MergeDuplicateCandidate" => d(&c
            .merge_duplicate_candidate(pb::MergeDuplicateCandidateRequest {
                name: t.candidate.clone(),
                surviving_person: p,
                reason: "same person".into(),
                ..Default::default()
            })
            .await?),
        "UnmergeDuplicateCandidate" => d(&c
            .unmerge_duplicate_candidate(pb::UnmergeDuplicateCandidateRequest {
                name: t.candidate.clone(),
                reason: "merged by mistake".into(),
                ..Default::default()
            })
            .await?),
        "CreateRelationship" => d(&c
            .create_relationship(pb::CreateRelationshipRequest {
                relationship: Some(pb::Relationship {
                    person: p,
                    related_person: child,
                    kind: pb::RelationshipKind::Guardian as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?),
        "ListRelationships" => {
            d(&c.list_relationships(pb::ListRelationshipsRequest { parent: p }).await?)
        }
        "CreateHousehold" => d(&c
            .create_household(pb::CreateHouseholdRequest {
                household: Some(pb::Household { members: vec![p, child], ..Default::default() }),
                request_id: String::new(),
            })
            .await?),
        "GetHousehold" => {
            d(&c.get_household(pb::GetHouseholdRequest { name: t.household.clone() }).await?)
        }
        "CreateIdentityDocument" => d(&c
            .create_identity_document(pb::CreateIdentityDocumentRequest {
                parent: p,
                identity_document: Some(pb::IdentityDocument {
                    kind: pb::DocumentKind::NationalId as i32,
                    issuing_state: t.state.into(),
                    number: "ID-1".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?),
        "ListIdentityDocuments" => {
            d(&c.list_identity_documents(pb::ListIdentityDocumentsRequest { parent: p }).await?)
        }
        "CreateIdentityVerification" => d(&c
            .create_identity_verification(pb::CreateIdentityVerificationRequest {
                parent: p,
                identity_verification: Some(pb::IdentityVerification {
                    method: pb::VerificationMethod::Consular as i32,
                    result: pb::VerificationResult::Confirmed as i32,
                    verifying_state: t.state.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?),
        "ListIdentityVerifications" => d(&c
            .list_identity_verifications(pb::ListIdentityVerificationsRequest { parent: p })
            .await?),
        "CreateConsentRecord" => d(&c
            .create_consent_record(pb::CreateConsentRecordRequest {
                parent: p,
                consent_record: Some(pb::ConsentRecord {
                    purpose: "family tracing".into(),
                    granted: true,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?),
        "ListConsentRecords" => {
            d(&c.list_consent_records(pb::ListConsentRecordsRequest { parent: p }).await?)
        }
        "CreateSharingAgreement" => d(&c
            .create_sharing_agreement(pb::CreateSharingAgreementRequest {
                sharing_agreement: Some(pb::SharingAgreement {
                    grantee_state: "SE".into(),
                    persons: vec![p],
                    purpose: "matrix".into(),
                    expire_time: Some(in_a_day()),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?),
        "ListSharingAgreements" => {
            d(&c.list_sharing_agreements(pb::ListSharingAgreementsRequest::default()).await?)
        }
        "RevokeSharingAgreement" => d(&c
            .revoke_sharing_agreement(pb::RevokeSharingAgreementRequest {
                name: t.agreement.clone(),
            })
            .await?),
        "CreateBreakGlassGrant" => {
            // A grant would open the person on purpose (its own test covers that); here a
            // reason too short to be accepted shows only whether the policy lets the caller
            // ask: INVALID_ARGUMENT if it may, PERMISSION_DENIED if not.
            d(&c.create_break_glass_grant(pb::CreateBreakGlassGrantRequest {
                break_glass_grant: Some(pb::BreakGlassGrant {
                    person: p,
                    reason: "urgent".into(),
                    ..Default::default()
                }),
            })
            .await?)
        }
        "WatchChanges" => {
            let mut s = c.watch_changes(pb::WatchChangesRequest::default()).await?.into_inner();
            let mut seen = Vec::new();
            // Catch-up events, then the first bookmark.
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), s.next()).await {
                let e = m?.event.unwrap_or_default();
                if e.bookmark {
                    break;
                }
                let person = e
                    .resource
                    .as_ref()
                    .map(|a| pb::Person::decode(a.value.as_slice()).unwrap_or_default());
                seen.push(format!("{} {:?}", e.resource_name, person));
            }
            seen.join("\n")
        }
        other => panic!("no call for {other}"),
    })
}

fn in_a_day() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: now.as_secs() as i64 + 86400, nanos: 0 }
}

fn ids(s: &Side) -> Vec<String> {
    [&s.person.name, &s.child.name]
        .iter()
        .map(|n| n.trim_start_matches("persons/").into())
        .collect()
}

#[tokio::test]
async fn every_rpc_for_every_kind_of_principal_leaks_nothing() {
    // The matrix covers exactly the RPCs the contract declares.
    let fds = prost_types::FileDescriptorSet::decode(concord_proto::FILE_DESCRIPTOR_SET).unwrap();
    let declared: BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "RegistryService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    let covered: BTreeSet<String> = RPCS.iter().map(|(r, _, _)| r.to_string()).collect();
    assert_eq!(covered, declared, "every RPC joins the matrix");

    let db = concord_testkit::database().await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let policy = Arc::new(Policy::embedded());
    let (svc, _db) =
        concord_registry::build(&db.url, policy.clone(), &cfg, shutdown.clone()).await.unwrap();
    let server =
        TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
    let uri = server.uri();

    // France's people are in al-hol, the Netherlands' in roj.
    let own = side(&uri, "FR", "al-hol", "Maryam Haddad").await;
    let foreign = side(&uri, "NL", "roj", "Layla Karimi").await;
    let callers = [
        Caller { label: "coordinator", principal: coordinator(), sees_all: true },
        Caller { label: "FR ministry", principal: ministry("FR"), sees_all: false },
        Caller { label: "FR justice", principal: justice("FR"), sees_all: false },
        Caller {
            label: "custodial authority of al-hol",
            principal: custodial(&["al-hol"]),
            sees_all: false,
        },
        Caller { label: "humanitarian monitor", principal: monitor(), sees_all: true },
        Caller { label: "service", principal: Principal::service("svc"), sees_all: true },
    ];
    let foreign_ids = ids(&foreign);
    let mut cells = 0;
    for who in &callers {
        let grant = policy.grant(&who.principal);
        let mut c = client(&uri, who.principal.clone()).await;
        for (rpc, action, class) in RPCS {
            for (target, in_scope) in [(&own, true), (&foreign, who.sees_all)] {
                cells += 1;
                let at = format!("{} {rpc} on {} objects", who.label, target.state);
                let result = call(&mut c, rpc, target).await;
                // Zero leaks, whatever the outcome.
                let text = match &result {
                    Ok(t) => t.clone(),
                    Err(s) => format!("{s:?}"),
                };
                // An error may echo the names the request carried, no others.
                let echoes = result.is_err() && !in_scope;
                if !who.sees_all && !echoes {
                    for id in &foreign_ids {
                        assert!(!text.contains(id.as_str()), "{at}: leaked {id}: {text}");
                    }
                }
                if !grant.fields.contains(FieldClass::Biometrics) {
                    assert!(!text.contains("BIO-SECRET"), "{at}: leaked biometrics: {text}");
                }
                if !grant.fields.contains(FieldClass::Documents) {
                    assert!(!text.contains("DOC-SECRET"), "{at}: leaked documents: {text}");
                }
                // The policy decides.
                let permitted =
                    grant.allows(*action) && class.is_none_or(|c| grant.fields.contains(c));
                match &result {
                    Err(s) if s.code() == Code::PermissionDenied => {
                        assert!(!permitted, "{at}: denied although permitted: {s:?}")
                    }
                    _ => assert!(
                        grant.allows(*action),
                        "{at}: the policy does not permit {} but the call got {:?}",
                        action.as_str(),
                        result.as_ref().map(|_| "OK").map_err(|s| s.code())
                    ),
                }
                // Nothing outside the scope succeeds with the object; lists may be empty.
                let names_object = !matches!(
                    *rpc,
                    "ListPersons"
                        | "SummarizePersons"
                        | "SearchPersons"
                        | "ListDuplicateCandidates"
                        | "ListSharingAgreements"
                        | "WatchChanges"
                        | "CreatePerson"
                        | "ImportPersons"
                );
                if !in_scope && names_object {
                    let code = result.as_ref().err().map(|s| s.code());
                    assert!(
                        matches!(
                            code,
                            Some(Code::NotFound | Code::PermissionDenied | Code::InvalidArgument)
                        ),
                        "{at}: expected NOT_FOUND or PERMISSION_DENIED, got {:?}",
                        result
                            .as_ref()
                            .map(|_| "OK")
                            .map_err(|s| (s.code(), s.message().to_string()))
                    );
                }
            }
        }
    }
    assert_eq!(cells, callers.len() * RPCS.len() * 2);
}
