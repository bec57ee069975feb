//! The requests service as a real server: a repatriation of a mother and two children through
//! its whole lifecycle, the guards, bad input, and who sees and does what (the authorization
//! matrix of every RPC).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::link::ServiceLink;
use concord_platform::policy::{Action, Policy};
use concord_platform::server::{Services, Shutdown};
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as pb;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use concord_testkit::people::{admit_at, person, relay_principal};
use concord_testkit::{caller, coordinator, custodial, justice, ministry, monitor, TestServer};
use futures::StreamExt;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = RequestsServiceClient<InterceptedService<Channel, HeaderCredentials>>;

struct Harness {
    server: TestServer,
    _registry: TestServer,
    _dbs: (concord_testkit::TestDb, concord_testkit::TestDb),
    /// A French mother and her two children, held at al-hol.
    mother: String,
    son: String,
    daughter: String,
}

impl Harness {
    async fn start() -> Self {
        let policy = Arc::new(Policy::embedded());
        let reg_db = concord_testkit::database().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let cfg = concord_testkit::server_config();
        let (svc, _db) =
            concord_registry::build(&reg_db.url, policy.clone(), &cfg, shutdown.clone())
                .await
                .unwrap();
        let registry =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        let ch = Channel::from_shared(registry.uri()).unwrap().connect().await.unwrap();
        let r = RegistryServiceClient::with_interceptor(ch, caller(coordinator()));
        let admit = |name: &str, sex: reg::Sex, year: i32| {
            let p = person(name, "FR", sex, year);
            let mut r = r.clone();
            async move { admit_at(&mut r, p, "al-hol", "").await.unwrap() }
        };
        let mother = admit("Amina Haddad", reg::Sex::Female, 1994).await;
        let son = admit("Yusuf Haddad", reg::Sex::Male, 2015).await;
        let daughter = admit("Maryam Haddad", reg::Sex::Female, 2018).await;

        let t = concord_testkit::database().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let cfg = concord_testkit::server_config();
        let link = ServiceLink {
            uri: registry.uri(),
            tls: None,
            principal: Some(relay_principal("concord-requests")),
        };
        let (svc, _db) =
            concord_requests::build(&t.url, policy, &cfg, link, shutdown.clone()).await.unwrap();
        let server =
            TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap();
        Harness { server, _registry: registry, _dbs: (reg_db, t), mother, son, daughter }
    }

    /// The registry, as the coordinator.
    async fn registry(&self) -> concord_testkit::people::Registry {
        let ch = Channel::from_shared(self._registry.uri()).unwrap().connect().await.unwrap();
        RegistryServiceClient::with_interceptor(ch, caller(coordinator()))
    }

    async fn client(&self, p: Principal) -> Client {
        let ch = Channel::from_shared(self.server.uri()).unwrap().connect().await.unwrap();
        RequestsServiceClient::with_interceptor(ch, caller(p))
    }

    /// France asks Iraq (standing for the authority's side) to let it take back the mother
    /// and her two children.
    fn repatriation(&self) -> pb::Request {
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
            subjects: vec![
                subject(&self.mother, ""),
                subject(&self.son, &self.mother),
                subject(&self.daughter, &self.mother),
            ],
            summary: "Repatriation of a French mother and her two children from al-Hol".into(),
            humanitarian_flags: vec!["medical".into()],
            ..Default::default()
        }
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

    let r = create(&mut fr, h.repatriation()).await.unwrap();
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
    decide(&mut iq, &r.name, &h.mother, pb::SubjectOutcome::Declined).await.unwrap();
    let err = to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap_err();
    assert!(err.message().contains("no outcome is decided for"), "{}", err.message());
    decide(&mut iq, &r.name, &h.son, pb::SubjectOutcome::Accepted).await.unwrap();
    decide(&mut iq, &r.name, &h.daughter, pb::SubjectOutcome::Accepted).await.unwrap();
    let err = to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap_err();
    assert!(
        err.message().contains("has not verified the identity of")
            && err.message().contains(&h.son)
            && err.message().contains(&h.daughter),
        "{}",
        err.message()
    );
    let err = verify(&mut iq, &r.name, &h.son).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "the receiving state verifies: {err:?}");
    verify(&mut fr, &r.name, &h.son).await.unwrap();
    let err = verify(&mut fr, &r.name, &h.son).await.unwrap_err();
    assert!(err.message().contains("verified already by fr-mfa"), "not replaced: {err:?}");
    verify(&mut fr, &r.name, &h.daughter).await.unwrap();
    to(&mut fr, &r.name, S::ConsentsCollected).await.unwrap();
    // The children leave without their mother: only with her recorded consent.
    let err = to(&mut camp, &r.name, S::LogisticsPlanned).await.unwrap_err();
    assert!(err.message().contains("recorded consent"), "{}", err.message());
    for child in [&h.son, &h.daughter] {
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
            person: h.mother.clone(),
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
    let mut bad = h.repatriation();
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
    let mut consular = h.repatriation();
    consular.r#type = pb::RequestType::ConsularAccess as i32;
    let err = create(&mut fr, consular.clone()).await.unwrap_err();
    assert!(err.message().contains("only for requests that move people"), "{}", err.message());
    let listed = fr.list_requests(pb::ListRequestsRequest::default()).await.unwrap().into_inner();
    assert!(listed.requests.is_empty(), "nothing stored");
    // Only a state's ministry asks, for its own state.
    let mut camp = h.client(custodial(&["al-hol"])).await;
    let err = create(&mut camp, h.repatriation()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A duplicate submission with the same request id stores one request.
    let again = |rid: &str| pb::CreateRequestRequest {
        request: Some(h.repatriation()),
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
    for p in [&h.mother, &h.son, &h.daughter] {
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
    let withdrawn = create(&mut fr, h.repatriation()).await.unwrap();
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
    ("CreateTask", Action::RequestsWrite),
    ("CompleteTask", Action::RequestsWrite),
    ("ListTasks", Action::RequestsRead),
    ("CreateNote", Action::RequestsWrite),
    ("ListNotes", Action::RequestsRead),
    ("GetStateStatistics", Action::RequestsRead),
    ("ListStateStatistics", Action::RequestsRead),
];

/// A request France made and brought to `state` (IQ requested, FR receiving, al-hol's
/// authority holding), for the matrix. The mother and son are accepted, the daughter
/// declined: she is separated from her mother, so her consent is needed.
async fn at(h: &Harness, state: pb::RequestState) -> String {
    use pb::RequestState as S;
    let mut fr = h.client(ministry("FR")).await;
    let mut iq = h.client(ministry("IQ")).await;
    let r = create(&mut fr, h.repatriation()).await.unwrap();
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
            decide(&mut iq, &r.name, &h.mother, pb::SubjectOutcome::Accepted).await.unwrap();
            decide(&mut iq, &r.name, &h.son, pb::SubjectOutcome::Accepted).await.unwrap();
            decide(&mut iq, &r.name, &h.daughter, pb::SubjectOutcome::Declined).await.unwrap();
            verify(&mut fr, &r.name, &h.mother).await.unwrap();
            verify(&mut fr, &r.name, &h.son).await.unwrap();
        }
        let c = if who == 0 { &mut fr } else { &mut iq };
        to(c, &r.name, next).await.unwrap();
        if next == state {
            break;
        }
    }
    r.name
}

/// An escort for `person`, due in a week.
fn task(person: &str) -> pb::Task {
    pb::Task {
        kind: pb::TaskKind::Escort as i32,
        title: "Escort to the Semalka crossing".into(),
        owner: "custodial-authority".into(),
        person: person.into(),
        due_time: Some(prost_types::Timestamp {
            seconds: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 7 * 86_400) as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// France's note verbale asking for the request to be reviewed.
fn note() -> pb::Note {
    pb::Note {
        reference: "2026/1432/MAE".into(),
        addressee: "IQ".into(),
        subject: "Repatriation of the Haddad family".into(),
        body: "The Ministry presents its compliments...".into(),
        send_time: Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: 0 }),
        ..Default::default()
    }
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
            | "CreateTask"
            | "CompleteTask"
            | "CreateNote"
            | "ListNotes"
    );
    if object && !party {
        return Some(Code::NotFound);
    }
    // The subjects are French: another state's ministry may not ask about them (the
    // registry does not show them to it, and there is no agreement).
    if rpc == "CreateRequest" && matches!(who, "IQ ministry" | "NL ministry") {
        return Some(Code::InvalidArgument);
    }
    let ok = match rpc {
        "CreateRequest" => who == "FR ministry",
        "CreateTask" | "ListTasks" | "CreateNote" | "ListNotes" => true,
        // A task France created for the custodial authority: its owner, its creator or the
        // coordinator completes it.
        "CompleteTask" => matches!(who, "coordinator" | "custodial authority" | "FR ministry"),
        "GetStateStatistics" => matches!(who, "coordinator" | "FR ministry" | "FR justice"),
        "ListStateStatistics" => {
            matches!(
                who,
                "coordinator"
                    | "FR ministry"
                    | "FR justice"
                    | "IQ ministry"
                    | "NL ministry"
                    | "DE justice"
            )
        }
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
    let draft = create(&mut h.client(ministry("FR")).await, h.repatriation()).await.unwrap();
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
                    let mut r = h.repatriation();
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
                    verify(&mut c, &name, &h.mother).await.map(|_| vec![])
                }
                "DecideSubject" => {
                    let name = at(&h, pb::RequestState::IdentityVerification).await;
                    decide(&mut c, &name, &h.mother, pb::SubjectOutcome::Accepted)
                        .await
                        .map(|_| vec![])
                }
                "RecordSeparationConsent" => {
                    let name = at(&h, pb::RequestState::ConsentsCollected).await;
                    c.record_separation_consent(pb::RecordSeparationConsentRequest {
                        name,
                        person: h.daughter.clone(),
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
                            let r = m.unwrap().event.and_then(|e| e.resource);
                            // Requests; tasks and notes are about them (checked below
                            // through their requests' visibility).
                            if let Some(r) = r.filter(|r| r.type_url.ends_with(".Request")) {
                                seen.push(pb::Request::decode(r.value.as_slice()).unwrap());
                            }
                        }
                        Ok(seen)
                    }
                    Err(e) => Err(e),
                },
                "CreateTask" => {
                    let name = at(&h, pb::RequestState::Submitted).await;
                    c.create_task(pb::CreateTaskRequest {
                        parent: name,
                        task: Some(task(&h.son)),
                        request_id: String::new(),
                    })
                    .await
                    .map(|_| vec![])
                }
                "CompleteTask" => {
                    let name = at(&h, pb::RequestState::Submitted).await;
                    let mut fr = h.client(ministry("FR")).await;
                    let t = fr
                        .create_task(pb::CreateTaskRequest {
                            parent: name,
                            task: Some(task(&h.son)),
                            request_id: String::new(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    c.complete_task(pb::CompleteTaskRequest {
                        name: t.name,
                        state: pb::TaskState::Done as i32,
                        result: "done".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| vec![])
                }
                "ListTasks" => c
                    .list_tasks(pb::ListTasksRequest {
                        parent: "requests/-".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| vec![]),
                "CreateNote" => {
                    let name = at(&h, pb::RequestState::Submitted).await;
                    c.create_note(pb::CreateNoteRequest {
                        parent: name,
                        note: Some(note()),
                        request_id: String::new(),
                    })
                    .await
                    .map(|_| vec![])
                }
                "ListNotes" => {
                    let name = at(&h, pb::RequestState::Submitted).await;
                    c.list_notes(pb::ListNotesRequest { parent: name, ..Default::default() })
                        .await
                        .map(|_| vec![])
                }
                "GetStateStatistics" => c
                    .get_state_statistics(pb::GetStateStatisticsRequest {
                        name: "statistics/FR".into(),
                    })
                    .await
                    .map(|_| vec![]),
                "ListStateStatistics" => {
                    c.list_state_statistics(pb::ListStateStatisticsRequest {}).await.map(|r| {
                        let states: Vec<String> =
                            r.into_inner().statistics.into_iter().map(|s| s.state).collect();
                        if p.kind != concord_platform::auth::AgencyKind::Coordinator {
                            assert_eq!(states, vec![p.state.clone().unwrap()], "{at_}");
                        }
                        vec![]
                    })
                }
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

/// A timestamp exactly `secs` seconds from now (negative: in the past), not rounded down to a
/// whole second, which would leave a loaded machine less time than the test means to give it.
fn in_secs(secs: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now();
    let d = std::time::Duration::from_secs(secs.unsigned_abs());
    prost_types::Timestamp::from(if secs < 0 { now - d } else { now + d })
}

#[tokio::test]
async fn subjects_are_checked_in_the_registry_as_the_caller() {
    let h = Harness::start().await;
    let mut r = h.registry().await;
    // Registered, never admitted: not held.
    let free = r
        .create_person(reg::CreatePersonRequest {
            person: Some(person("Leila Haddad", "FR", reg::Sex::Female, 1990)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    // Held, but Dutch.
    let dutch =
        admit_at(&mut r, person("Eva de Vries", "NL", reg::Sex::Female, 1992), "al-hol", "")
            .await
            .unwrap();
    let mut fr = h.client(ministry("FR")).await;
    let mut req = h.repatriation();
    req.subjects.push(pb::Subject { person: free.clone(), ..Default::default() });
    req.subjects.push(pb::Subject { person: dutch.clone(), ..Default::default() });
    req.subjects.push(pb::Subject {
        person: "persons/0192d6c4-0000-7000-8000-00000000dead".into(),
        ..Default::default()
    });
    let err = create(&mut fr, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let m = err.message();
    assert!(
        m.contains(&format!("request.subjects[3].person: {free} is not held in custody")),
        "{m}"
    );
    assert!(
        m.contains(&format!("request.subjects[4].person: {dutch} is not a person FR may see")),
        "{m}"
    );
    assert!(m.contains("request.subjects[5].person"), "{m}");
    assert!(!m.contains("subjects[0]"), "the family is fine: {m}");
    let listed = fr.list_requests(pb::ListRequestsRequest::default()).await.unwrap().into_inner();
    assert!(listed.requests.is_empty(), "nothing stored");
    // Identity verification may be about anyone the state may see, held or not.
    let mut idv = pb::Request {
        r#type: pb::RequestType::IdentityVerification as i32,
        receiving_state: String::new(),
        subjects: vec![pb::Subject { person: free.clone(), ..Default::default() }],
        ..h.repatriation()
    };
    create(&mut fr, idv.clone()).await.unwrap();
    // The Netherlands may ask about its national, not about France's.
    let mut nl = h.client(ministry("NL")).await;
    idv.subjects = vec![pb::Subject { person: dutch.clone(), ..Default::default() }];
    create(&mut nl, idv.clone()).await.unwrap();
    idv.subjects = vec![pb::Subject { person: free.clone(), ..Default::default() }];
    assert_eq!(create(&mut nl, idv.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    // Unless France shares her with it by an agreement: the registry decides, as for a read.
    let ch = Channel::from_shared(h._registry.uri()).unwrap().connect().await.unwrap();
    let mut france = RegistryServiceClient::with_interceptor(ch, caller(ministry("FR")));
    france
        .create_sharing_agreement(reg::CreateSharingAgreementRequest {
            sharing_agreement: Some(reg::SharingAgreement {
                grantee_state: "NL".into(),
                persons: vec![free],
                purpose: "identity verification of a detainee".into(),
                expire_time: Some(in_secs(86_400)),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    create(&mut nl, idv).await.unwrap();
}

#[tokio::test]
async fn tasks_have_owners_and_deadlines_and_notes_are_kept_with_the_request() {
    let h = Harness::start().await;
    let mut fr = h.client(ministry("FR")).await;
    let mut camp = h.client(custodial(&["al-hol"])).await;
    let name = create(&mut fr, h.repatriation()).await.unwrap().name;
    to(&mut fr, &name, pb::RequestState::Submitted).await.unwrap();
    // The requests naming a person (what the gateway's case file asks).
    let naming =
        |person: &str| pb::ListRequestsRequest { person: person.into(), ..Default::default() };
    let found = camp.list_requests(naming(&h.son)).await.unwrap().into_inner().requests;
    assert_eq!(found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec![name.as_str()]);
    let other = "persons/0192d6c4-0000-7000-8000-00000000dead";
    assert!(camp.list_requests(naming(other)).await.unwrap().into_inner().requests.is_empty());
    let err = camp.list_requests(naming("someone")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Bad tasks: each field named, nothing stored.
    let bad = pb::Task {
        kind: 0,
        title: " ".into(),
        owner: "Custodial Authority".into(),
        person: h.mother.clone() + "x",
        due_time: Some(in_secs(-3600)),
        ..Default::default()
    };
    let err = fr
        .create_task(pb::CreateTaskRequest {
            parent: name.clone(),
            task: Some(bad),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for f in ["task.kind", "task.title", "task.owner", "task.due_time: is in the past"] {
        assert!(err.message().contains(f), "{f} in {}", err.message());
    }
    let stranger =
        pb::Task { person: "persons/0192d6c4-0000-7000-8000-00000000dead".into(), ..task(&h.son) };
    let err = fr
        .create_task(pb::CreateTaskRequest {
            parent: name.clone(),
            task: Some(stranger),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("is not a subject of"), "{}", err.message());
    let all = |overdue_only| pb::ListTasksRequest {
        parent: "requests/-".into(),
        overdue_only,
        ..Default::default()
    };
    assert!(
        fr.list_tasks(all(false)).await.unwrap().into_inner().tasks.is_empty(),
        "nothing stored"
    );

    // A task due in a week, created twice with one request id: one task.
    let create_task = |t: pb::Task, rid: &str| pb::CreateTaskRequest {
        parent: name.clone(),
        task: Some(t),
        request_id: rid.into(),
    };
    let week = fr.create_task(create_task(task(&h.son), "t-1")).await.unwrap().into_inner();
    let again = fr.create_task(create_task(task(&h.son), "t-1")).await.unwrap().into_inner();
    assert_eq!(week.name, again.name);
    assert_eq!(week.state, pb::TaskState::Open as i32);
    // One due in three seconds: overdue after it.
    let due = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let soon = pb::Task {
        due_time: Some(in_secs(3)),
        title: "DNA test of the son".into(),
        kind: pb::TaskKind::DnaTest as i32,
        ..task(&h.son)
    };
    let soon = fr.create_task(create_task(soon, "")).await.unwrap().into_inner();
    tokio::time::sleep_until(due + std::time::Duration::from_millis(200)).await;
    // The custodial authority (its owner) sees both, and the overdue listing names one.
    let overdue = camp.list_tasks(all(true)).await.unwrap().into_inner().tasks;
    assert_eq!(overdue.iter().map(|t| t.name.clone()).collect::<Vec<_>>(), vec![soon.name.clone()]);
    assert!(overdue[0].overdue);
    assert_eq!(camp.list_tasks(all(false)).await.unwrap().into_inner().tasks.len(), 2);
    // Another state sees none of it.
    let mut nl = h.client(ministry("NL")).await;
    assert!(nl.list_tasks(all(false)).await.unwrap().into_inner().tasks.is_empty());
    // Done by its owner, once; then not overdue.
    let complete = |n: &str| pb::CompleteTaskRequest {
        name: n.into(),
        state: pb::TaskState::Done as i32,
        result: "negative match, mother confirmed".into(),
        ..Default::default()
    };
    let done = camp.complete_task(complete(&soon.name)).await.unwrap().into_inner();
    assert_eq!(
        (done.state, done.completed_by.as_str()),
        (pb::TaskState::Done as i32, "custodial-authority")
    );
    let err = camp.complete_task(complete(&soon.name)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(camp.list_tasks(all(true)).await.unwrap().into_inner().tasks.is_empty());
    let mut iq = h.client(ministry("IQ")).await;
    let err = iq.complete_task(complete(&week.name)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "neither owner nor creator: {err:?}");

    // Notes.
    let bad_note = pb::Note {
        reference: String::new(),
        addressee: "Iraq".into(),
        subject: "x".into(),
        send_time: Some(in_secs(86_400)),
        ..Default::default()
    };
    let err = fr
        .create_note(pb::CreateNoteRequest {
            parent: name.clone(),
            note: Some(bad_note),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    for f in ["note.reference", "note.addressee", "note.body", "note.send_time"] {
        assert!(err.message().contains(f), "{f} in {}", err.message());
    }
    fr.create_note(pb::CreateNoteRequest {
        parent: name.clone(),
        note: Some(note()),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let notes = iq
        .list_notes(pb::ListNotesRequest { parent: name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .notes;
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].sender.as_str(), notes[0].reference.as_str()),
        ("fr-mfa", "2026/1432/MAE")
    );
    let err = nl
        .list_notes(pb::ListNotesRequest { parent: name.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A final request takes no new task.
    to(&mut fr, &name, pb::RequestState::Withdrawn).await.unwrap();
    let err = fr.create_task(create_task(task(&h.son), "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
