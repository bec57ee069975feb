//! The requests service as a real server: a repatriation of a mother and two children through
//! its whole lifecycle, the guards, bad input, and who sees and does what (the authorization
//! matrix of every RPC).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::policy::{Action, Policy};
use concord_platform::server::{Services, Shutdown};
use concord_proto::requests::v1 as pb;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use concord_testkit::{caller, coordinator, custodial, justice, ministry, monitor, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = RequestsServiceClient<InterceptedService<Channel, HeaderCredentials>>;

struct Harness {
    server: TestServer,
    _t: concord_testkit::TestDb,
}

impl Harness {
    async fn start() -> Self {
        let t = concord_testkit::database().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let cfg = concord_testkit::server_config();
        let (svc, _db) =
            concord_requests::build(&t.url, Arc::new(Policy::embedded()), &cfg, shutdown.clone())
                .await
                .unwrap();
        let server =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        Harness { server, _t: t }
    }

    async fn client(&self, p: Principal) -> Client {
        let ch = Channel::from_shared(self.server.uri()).unwrap().connect().await.unwrap();
        RequestsServiceClient::with_interceptor(ch, caller(p))
    }
}

const MOTHER: &str = "persons/0192d6c4-0000-7000-8000-000000000001";
const SON: &str = "persons/0192d6c4-0000-7000-8000-000000000002";
const DAUGHTER: &str = "persons/0192d6c4-0000-7000-8000-000000000003";

/// France asks the Netherlands... no: France asks the custodial authority's host, here "SY"
/// standing for the authority's side, to let it take back a mother and two children.
fn repatriation() -> pb::Request {
    let subject = |person: &str, mother: &str| pb::Subject {
        person: person.into(),
        unit: "haddad-family".into(),
        mother: mother.into(),
        ..Default::default()
    };
    pb::Request {
        r#type: pb::RequestType::Repatriation as i32,
        requested_state: "IQ".into(),
        custodial_authority: "custodial-authority".into(),
        receiving_state: "FR".into(),
        subjects: vec![subject(MOTHER, ""), subject(SON, MOTHER), subject(DAUGHTER, MOTHER)],
        summary: "Repatriation of a French mother and her two children from al-Hol".into(),
        humanitarian_flags: vec!["medical".into()],
        ..Default::default()
    }
}

async fn create(c: &mut Client, r: pb::Request) -> Result<pb::Request, tonic::Status> {
    c.create_request(pb::CreateRequestRequest { request: Some(r), request_id: String::new() })
        .await
        .map(|r| r.into_inner())
}

async fn to(
    c: &mut Client,
    name: &str,
    state: pb::RequestState,
) -> Result<pb::Request, tonic::Status> {
    let protocol = (state == pb::RequestState::HandedOver).then(|| pb::HandoverProtocol {
        document: "DMS-2026-4411".into(),
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
    .map(|r| r.into_inner())
}

async fn decide(
    c: &mut Client,
    name: &str,
    person: &str,
    outcome: pb::SubjectOutcome,
) -> Result<pb::Request, tonic::Status> {
    let disposition = if outcome == pb::SubjectOutcome::Accepted {
        pb::Disposition::Reintegration as i32
    } else {
        0
    };
    c.decide_subject(pb::DecideSubjectRequest {
        name: name.into(),
        person: person.into(),
        outcome: outcome as i32,
        disposition,
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn verify(c: &mut Client, name: &str, person: &str) -> Result<pb::Request, tonic::Status> {
    c.verify_subject_identity(pb::VerifySubjectIdentityRequest {
        name: name.into(),
        person: person.into(),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_mother_and_two_children_are_repatriated_through_every_guard() {
    use pb::RequestState as S;
    let h = Harness::start().await;
    let mut fr = h.client(ministry("FR")).await;
    let mut iq = h.client(ministry("IQ")).await;
    let mut camp = h.client(custodial(&["al-hol"])).await;
    let mut cell = h.client(coordinator()).await;

    let r = create(&mut fr, repatriation()).await.unwrap();
    assert_eq!(r.state, S::Draft as i32);
    assert_eq!(r.requesting_state, "FR");
    // A draft is France's alone.
    for c in [&mut iq, &mut camp, &mut cell] {
        let err = c.get_request(pb::GetRequestRequest { name: r.name.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    // Out of order: France cannot acknowledge its own request; nor skip ahead.
    let err = to(&mut fr, &r.name, S::Acknowledged).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("may become SUBMITTED, WITHDRAWN"), "{}", err.message());
    to(&mut fr, &r.name, S::Submitted).await.unwrap();
    let err = to(&mut fr, &r.name, S::Acknowledged).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "the requested state acknowledges: {err:?}");
    to(&mut iq, &r.name, S::Acknowledged).await.unwrap();
    to(&mut iq, &r.name, S::UnderReview).await.unwrap();
    to(&mut iq, &r.name, S::InfoRequested).await.unwrap();
    to(&mut fr, &r.name, S::UnderReview).await.unwrap();
    // Suspended for security, it resumes where it was and nowhere else.
    to(&mut camp, &r.name, S::Suspended).await.unwrap();
    let err = to(&mut cell, &r.name, S::ApprovedInPrinciple).await.unwrap_err();
    assert!(err.message().contains("resumes to UNDER_REVIEW"), "{}", err.message());
    let resumed = to(&mut cell, &r.name, S::UnderReview).await.unwrap();
    assert_eq!(resumed.suspended_from, 0);
    let approved = to(&mut iq, &r.name, S::ApprovedInPrinciple).await.unwrap();
    assert!(approved.decide_time.is_some());
    to(&mut iq, &r.name, S::IdentityVerification).await.unwrap();

    // The mother declines to travel; the children go (to their grandparents).
    decide(&mut iq, &r.name, MOTHER, pb::SubjectOutcome::Declined).await.unwrap();
    let err = to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap_err();
    assert!(err.message().contains("no outcome is decided for"), "{}", err.message());
    decide(&mut iq, &r.name, SON, pb::SubjectOutcome::Accepted).await.unwrap();
    decide(&mut iq, &r.name, DAUGHTER, pb::SubjectOutcome::Accepted).await.unwrap();
    let err = to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap_err();
    assert!(
        err.message().contains("has not verified the identity of")
            && err.message().contains(SON)
            && err.message().contains(DAUGHTER),
        "{}",
        err.message()
    );
    let err = verify(&mut iq, &r.name, SON).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "the receiving state verifies: {err:?}");
    verify(&mut fr, &r.name, SON).await.unwrap();
    let err = verify(&mut fr, &r.name, SON).await.unwrap_err();
    assert!(err.message().contains("verified already by fr-mfa"), "not replaced: {err:?}");
    verify(&mut fr, &r.name, DAUGHTER).await.unwrap();
    to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap();
    // The children leave without their mother: only with her recorded consent.
    let err = to(&mut camp, &r.name, S::LogisticsPlanned).await.unwrap_err();
    assert!(err.message().contains("recorded consent"), "{}", err.message());
    for child in [SON, DAUGHTER] {
        camp.record_separation_consent(pb::RecordSeparationConsentRequest {
            name: r.name.clone(),
            person: child.into(),
            consent: "signed consent form, witnessed by ICRC".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let err = camp
        .record_separation_consent(pb::RecordSeparationConsentRequest {
            name: r.name.clone(),
            person: MOTHER.into(),
            consent: "n/a".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("no consent is needed"), "{}", err.message());
    to(&mut camp, &r.name, S::LogisticsPlanned).await.unwrap();
    to(&mut camp, &r.name, S::HandoverInProgress).await.unwrap();
    let err = camp
        .transition_request(pb::TransitionRequestRequest {
            name: r.name.clone(),
            state: S::HandedOver as i32,
            reason: "handed over at the crossing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("signed protocol"), "{}", err.message());
    let done = to(&mut camp, &r.name, S::HandedOver).await.unwrap();
    assert_eq!(done.handover_protocol.unwrap().document, "DMS-2026-4411");
    // A hand-over done is not suspended (nor its protocol replaced on a resume).
    let err = to(&mut cell, &r.name, S::Suspended).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    to(&mut fr, &r.name, S::Closed).await.unwrap();
    let err = to(&mut cell, &r.name, S::Suspended).await.unwrap_err();
    assert!(err.message().contains("final"), "{}", err.message());

    // The watch: parties see the request from its submission; others see nothing.
    for (p, sees) in
        [(ministry("FR"), true), (custodial(&["al-hol"]), true), (ministry("NL"), false)]
    {
        let mut c = h.client(p).await;
        let mut s = c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await
        {
            let e = m.unwrap().event.unwrap();
            if !e.bookmark {
                events.push(e);
            }
        }
        assert_eq!(!events.is_empty(), sees, "{events:?}");
        if sees {
            assert_eq!(events[0].event_type, "request.submitted", "no draft in the stream");
            let last = pb::Request::decode(
                events.last().unwrap().resource.as_ref().unwrap().value.as_slice(),
            )
            .unwrap();
            assert_eq!(last.state, S::Closed as i32);
            assert!(events.iter().any(|e| e.event_type == "request.handed_over"));
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_naming_each_field_and_nothing_is_stored() {
    let h = Harness::start().await;
    let mut fr = h.client(ministry("FR")).await;
    let mut bad = repatriation();
    bad.requested_state = "FR".into();
    bad.receiving_state = String::new();
    bad.subjects.push(bad.subjects[0].clone());
    bad.subjects[1].mother = bad.subjects[1].person.clone();
    bad.humanitarian_flags = vec!["Medical Needs".into()];
    bad.summary = " ".into();
    let err = create(&mut fr, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in [
        "request.requested_state",
        "request.receiving_state",
        "request.subjects[3].person",
        "request.subjects[1].mother",
        "request.humanitarian_flags[0]",
        "request.summary",
    ] {
        assert!(err.message().contains(field), "{field} in {}", err.message());
    }
    let mut consular = repatriation();
    consular.r#type = pb::RequestType::ConsularAccess as i32;
    let err = create(&mut fr, consular.clone()).await.unwrap_err();
    assert!(err.message().contains("only for requests that move people"), "{}", err.message());
    let listed = fr.list_requests(pb::ListRequestsRequest::default()).await.unwrap().into_inner();
    assert!(listed.requests.is_empty(), "nothing stored");
    // Only a state's ministry asks, for its own state.
    let mut camp = h.client(custodial(&["al-hol"])).await;
    let err = create(&mut camp, repatriation()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A duplicate submission with the same request id stores one request.
    let again = |rid: &str| pb::CreateRequestRequest {
        request: Some(repatriation()),
        request_id: rid.into(),
    };
    let a = fr.create_request(again("req-1")).await.unwrap().into_inner();
    let b = fr.create_request(again("req-1")).await.unwrap().into_inner();
    assert_eq!(a.name, b.name);
    let listed = fr.list_requests(pb::ListRequestsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.requests.len(), 1);
    // Consular access closes after approval, without a hand-over.
    consular.receiving_state = String::new();
    let c = create(&mut fr, consular).await.unwrap();
    let mut iq = h.client(ministry("IQ")).await;
    use pb::RequestState as S;
    to(&mut fr, &c.name, S::Submitted).await.unwrap();
    to(&mut iq, &c.name, S::Acknowledged).await.unwrap();
    to(&mut iq, &c.name, S::UnderReview).await.unwrap();
    to(&mut iq, &c.name, S::ApprovedInPrinciple).await.unwrap();
    let err = to(&mut iq, &c.name, S::IdentityVerification).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = to(&mut iq, &c.name, S::Closed).await.unwrap_err();
    assert!(err.message().contains("no outcome is decided"), "{}", err.message());
    for p in [MOTHER, SON, DAUGHTER] {
        // No disposition: nobody moves.
        let err = decide(&mut iq, &c.name, p, pb::SubjectOutcome::Accepted).await.unwrap_err();
        assert!(err.message().contains("only for requests that move people"), "{err:?}");
        iq.decide_subject(pb::DecideSubjectRequest {
            name: c.name.clone(),
            person: p.into(),
            outcome: pb::SubjectOutcome::Accepted as i32,
            disposition: 0,
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    to(&mut iq, &c.name, S::Closed).await.unwrap();
    // A draft withdrawn unsent stays France's alone.
    let withdrawn = create(&mut fr, repatriation()).await.unwrap();
    to(&mut fr, &withdrawn.name, S::Withdrawn).await.unwrap();
    let err =
        iq.get_request(pb::GetRequestRequest { name: withdrawn.name.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// Every RPC with the action the policy checks for it.
const RPCS: &[(&str, Action)] = &[
    ("CreateRequest", Action::RequestsWrite),
    ("GetRequest", Action::RequestsRead),
    ("ListRequests", Action::RequestsRead),
    ("TransitionRequest", Action::RequestsWrite),
    ("VerifySubjectIdentity", Action::RequestsWrite),
    ("DecideSubject", Action::RequestsWrite),
    ("RecordSeparationConsent", Action::RequestsWrite),
    ("WatchChanges", Action::RequestsRead),
];

/// A request France made and brought to `state` (IQ requested, FR receiving, al-hol's
/// authority holding), for the matrix. The mother and son are accepted, the daughter
/// declined: she is separated from her mother, so her consent is needed.
async fn at(h: &Harness, state: pb::RequestState) -> String {
    use pb::RequestState as S;
    let mut fr = h.client(ministry("FR")).await;
    let mut iq = h.client(ministry("IQ")).await;
    let r = create(&mut fr, repatriation()).await.unwrap();
    let path = [
        (S::Submitted, 0),
        (S::Acknowledged, 1),
        (S::UnderReview, 1),
        (S::ApprovedInPrinciple, 1),
        (S::IdentityVerification, 1),
        (S::ConsentsCollected, 0),
    ];
    for (next, who) in path {
        if next == S::ConsentsCollected {
            decide(&mut iq, &r.name, MOTHER, pb::SubjectOutcome::Accepted).await.unwrap();
            decide(&mut iq, &r.name, SON, pb::SubjectOutcome::Accepted).await.unwrap();
            decide(&mut iq, &r.name, DAUGHTER, pb::SubjectOutcome::Declined).await.unwrap();
            verify(&mut fr, &r.name, MOTHER).await.unwrap();
            verify(&mut fr, &r.name, SON).await.unwrap();
        }
        let c = if who == 0 { &mut fr } else { &mut iq };
        to(c, &r.name, next).await.unwrap();
        if next == state {
            break;
        }
    }
    r.name
}

/// What `who` gets from `rpc` on the matrix's requests: `None` for success, else the code.
/// Strangers get NOT_FOUND for a request (never PERMISSION_DENIED, which would say it
/// exists); parties get PERMISSION_DENIED for steps of another role.
fn expected(who: &str, rpc: &str, allowed_by_policy: bool) -> Option<Code> {
    if !allowed_by_policy {
        return Some(Code::PermissionDenied);
    }
    let party = matches!(
        who,
        "coordinator" | "FR ministry" | "FR justice" | "IQ ministry" | "custodial authority"
    );
    let object = matches!(
        rpc,
        "GetRequest"
            | "TransitionRequest"
            | "VerifySubjectIdentity"
            | "DecideSubject"
            | "RecordSeparationConsent"
    );
    if object && !party {
        return Some(Code::NotFound);
    }
    let ok = match rpc {
        "CreateRequest" => who.ends_with("ministry"),
        "GetRequest" | "ListRequests" | "WatchChanges" => true,
        // UNDER_REVIEW -> SUSPENDED: a security step.
        "TransitionRequest" => matches!(who, "coordinator" | "custodial authority"),
        "VerifySubjectIdentity" => who == "FR ministry",
        "DecideSubject" => who == "IQ ministry",
        "RecordSeparationConsent" => {
            matches!(who, "coordinator" | "custodial authority" | "FR ministry")
        }
        _ => false,
    };
    (!ok).then_some(Code::PermissionDenied)
}

#[tokio::test]
async fn every_rpc_for_every_kind_of_principal_follows_the_policy_and_the_roles() {
    let fds = prost_types::FileDescriptorSet::decode(concord_proto::FILE_DESCRIPTOR_SET).unwrap();
    let declared: BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "RequestsService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    let covered: BTreeSet<String> = RPCS.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(covered, declared, "every RPC joins the matrix");

    let h = Harness::start().await;
    let policy = Policy::embedded();
    // A draft of France's, which no one else may see.
    let draft = create(&mut h.client(ministry("FR")).await, repatriation()).await.unwrap();
    let other_custodian = Principal { agency: "sdf-prisons".into(), ..custodial(&["ghwayran"]) };
    let callers = [
        ("coordinator", coordinator()),
        ("FR ministry", ministry("FR")),
        ("FR justice", justice("FR")),
        ("IQ ministry", ministry("IQ")),
        ("custodial authority", custodial(&["al-hol"])),
        ("NL ministry", ministry("NL")),
        ("DE justice", justice("DE")),
        ("another custodial authority", other_custodian),
        ("humanitarian monitor", monitor()),
        ("service", Principal::service("svc")),
    ];
    let mut listed = 0;
    for (label, p) in callers {
        let grant = policy.grant(&p);
        let mut c = h.client(p.clone()).await;
        for (rpc, action) in RPCS {
            let at_ = format!("{label} {rpc}");
            let result: Result<Vec<pb::Request>, tonic::Status> = match *rpc {
                "CreateRequest" => {
                    let mut r = repatriation();
                    let own = p.state.clone().unwrap_or_default();
                    r.requested_state = if own == "IQ" { "FR".into() } else { "IQ".into() };
                    r.receiving_state = own;
                    create(&mut c, r).await.map(|_| vec![])
                }
                "GetRequest" => {
                    let name = at(&h, pb::RequestState::Submitted).await;
                    c.get_request(pb::GetRequestRequest { name })
                        .await
                        .map(|r| vec![r.into_inner()])
                }
                "ListRequests" => c
                    .list_requests(pb::ListRequestsRequest::default())
                    .await
                    .map(|r| r.into_inner().requests),
                "TransitionRequest" => {
                    let name = at(&h, pb::RequestState::UnderReview).await;
                    to(&mut c, &name, pb::RequestState::Suspended).await.map(|_| vec![])
                }
                "VerifySubjectIdentity" => {
                    let name = at(&h, pb::RequestState::IdentityVerification).await;
                    verify(&mut c, &name, MOTHER).await.map(|_| vec![])
                }
                "DecideSubject" => {
                    let name = at(&h, pb::RequestState::IdentityVerification).await;
                    decide(&mut c, &name, MOTHER, pb::SubjectOutcome::Accepted)
                        .await
                        .map(|_| vec![])
                }
                "RecordSeparationConsent" => {
                    let name = at(&h, pb::RequestState::ConsentsCollected).await;
                    c.record_separation_consent(pb::RecordSeparationConsentRequest {
                        name,
                        person: DAUGHTER.into(),
                        consent: "signed form".into(),
                        request_id: String::new(),
                    })
                    .await
                    .map(|_| vec![])
                }
                "WatchChanges" => match c.watch_changes(pb::WatchChangesRequest::default()).await {
                    Ok(s) => {
                        let mut s = s.into_inner();
                        let mut seen = Vec::new();
                        while let Ok(Some(m)) =
                            tokio::time::timeout(std::time::Duration::from_millis(200), s.next())
                                .await
                        {
                            if let Some(r) = m.unwrap().event.and_then(|e| e.resource) {
                                seen.push(pb::Request::decode(r.value.as_slice()).unwrap());
                            }
                        }
                        Ok(seen)
                    }
                    Err(e) => Err(e),
                },
                other => panic!("no call for {other}"),
            };
            match (result, expected(label, rpc, grant.allows(*action))) {
                (Ok(requests), None) => {
                    // What a caller gets is always about requests it is a party to, and a
                    // draft only about its own state's.
                    let state = p.state.clone().unwrap_or_default();
                    for r in requests {
                        let of_state = !state.is_empty()
                            && ([&r.requested_state, &r.receiving_state].contains(&&state)
                                && r.state != pb::RequestState::Draft as i32
                                || r.requesting_state == state);
                        let mine = (p.kind == concord_platform::auth::AgencyKind::Coordinator
                            && r.state != pb::RequestState::Draft as i32)
                            || of_state
                            || (r.custodial_authority == p.agency
                                && r.state != pb::RequestState::Draft as i32);
                        assert!(mine, "{at_}: saw {}", r.name);
                        assert!(r.name != draft.name || state == "FR", "{at_}: saw France's draft");
                        listed += 1;
                    }
                }
                (Err(s), Some(code)) => assert_eq!(s.code(), code, "{at_}: {s:?}"),
                (Ok(_), Some(code)) => panic!("{at_}: succeeded, expected {code:?}"),
                (Err(s), None) => panic!("{at_}: refused, expected success: {s:?}"),
            }
        }
    }
    assert!(listed > 0, "the listings returned something to check");
}
