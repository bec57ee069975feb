//! The requests' gRPC surface: the only module that sees request and response messages.
//! Each method authorizes (`access`), parses its request naming every field at fault, and
//! hands the store a change written against the domain's state machine.

use std::pin::Pin;
use std::sync::Arc;

use concord_platform::access::{self, Access, PurposeRule, Shared};
use concord_platform::audit::Recorder;
use concord_platform::auth::{AgencyKind, Scope, Visible};
use concord_platform::error::{Error, Result, Violations};
use concord_platform::fields::{etag, future_time, past_time, person_id, text};
use concord_platform::filter::{self, Field, FieldType};
use concord_platform::outbox::{self, WatchParams, WatchTuning};
use concord_platform::policy::{Action, Policy};
use concord_platform::server::Shutdown;
use concord_platform::time::{now_micros, to_timestamp};
use concord_platform::{enum_out, idempotency, paging, required_enum};
use concord_proto::requests::v1 as pb;
use concord_proto::requests::v1::requests_service_server::RequestsService;
use futures::{Stream, StreamExt};
use tonic::{Request as Req, Response, Status};

use crate::domain::*;
use crate::registry::Registry;
use crate::store::statistics::StateFigures;
use crate::store::tasks::{Note, Task, Within};
use crate::store::{Protocol, Request, Store};

/// Error domain of the service (google.rpc.ErrorInfo.domain).
pub const DOMAIN: &str = "requests.concord";

/// Most subjects on one request.
pub const MAX_SUBJECTS: usize = 200;

const FILTER: &[Field] = &[
    Field {
        name: "type",
        sql: "r.type",
        ty: FieldType::Enum { prefix: "REQUEST_TYPE_", values: RequestType::NAMES },
        equality_only: true,
    },
    Field {
        name: "state",
        sql: "r.state",
        ty: FieldType::Enum { prefix: "REQUEST_STATE_", values: State::NAMES },
        equality_only: true,
    },
    Field {
        name: "requesting_state",
        sql: "r.requesting_state",
        ty: FieldType::Text,
        equality_only: true,
    },
    Field {
        name: "requested_state",
        sql: "r.requested_state",
        ty: FieldType::Text,
        equality_only: true,
    },
];

/// The requests service.
#[derive(Debug, Clone)]
pub struct Requests {
    store: Store,
    registry: Registry,
    policy: Arc<Policy>,
    recorder: Recorder,
    shutdown: Shutdown,
    streams: Arc<concord_platform::quota::StreamLimiter>,
}

impl Requests {
    /// The service over `store`, checking subjects with `registry`, enforcing `policy`;
    /// watch streams end when `shutdown` begins.
    pub fn new(
        store: Store,
        registry: Registry,
        policy: Arc<Policy>,
        shutdown: Shutdown,
        streams_per_agency: usize,
    ) -> Self {
        let recorder = Recorder::spawn(store.db().clone());
        Self {
            store,
            registry,
            policy,
            recorder,
            shutdown,
            streams: Arc::new(concord_platform::quota::StreamLimiter::new(streams_per_agency)),
        }
    }

    /// The call's access. Requests name people: every call states a purpose.
    async fn access<T>(
        &self,
        req: &Req<T>,
        action: Action,
        rpc: &'static str,
    ) -> Result<Access, Status> {
        access::authorize(
            req,
            &self.policy,
            &self.recorder,
            action,
            rpc,
            PurposeRule::Required,
            |_| async { Ok(Shared::default()) },
        )
        .await
        .map_err(st)
    }

    /// A read: audited with its outcome (NOT_FOUND included).
    async fn read<T>(&self, a: &Access, resource: &str, r: Result<T>) -> Result<T, Status> {
        let outcome = match &r {
            Ok(_) => "OK",
            Err(e @ (Error::NotFound(_) | Error::PermissionDenied(_))) => e.refusal().unwrap_or(""),
            Err(_) => return r.map_err(st),
        };
        self.recorder.record(vec![a.entry(resource, "*", outcome)]).await.map_err(st)?;
        r.map_err(st)
    }

    /// A write's result; a refusal is audited with its code, like the policy's.
    async fn written<T>(
        &self,
        a: &Access,
        resource: &str,
        r: Result<T>,
    ) -> Result<Response<T>, Status> {
        if let Some(code) = r.as_ref().err().and_then(Error::refusal) {
            self.recorder.record(vec![a.entry(resource, "", code)]).await.map_err(st)?;
        }
        r.map(Response::new).map_err(st)
    }

    /// A change's result; a refusal of the caller's role is audited like the policy's.
    async fn outcome(
        &self,
        a: &Access,
        resource: &str,
        r: Result<Request>,
    ) -> Result<Response<pb::Request>, Status> {
        self.written(a, resource, r.map(|r| request_out(&r))).await
    }
}

fn st(e: Error) -> Status {
    e.into_status(DOMAIN)
}

fn request_id_of(name: &str, field: &str) -> Result<String> {
    match name.strip_prefix("requests/") {
        Some(id) if !id.is_empty() && id.len() <= 64 && !id.contains('/') => Ok(id.to_string()),
        _ => Err(Error::invalid(field, "is not a name like \"requests/0192...\"")),
    }
}

fn state_code(v: &mut Violations, field: &str, s: &str) {
    if !concord_platform::auth::is_state_code(s) {
        v.add(field, "must be an ISO 3166-1 alpha-2 code such as \"FR\"");
    }
}

/// The request a state's ministry writes, validated.
fn new_request(m: Option<&pb::Request>, requesting_state: &str) -> Result<Request> {
    let Some(m) = m else { return Err(Error::invalid("request", "is required")) };
    let mut v = Violations::new();
    let kind = required_enum!(v, "request.type", m.r#type, pb::RequestType, RequestType);
    state_code(&mut v, "request.requested_state", &m.requested_state);
    if m.requested_state == requesting_state {
        v.add("request.requested_state", "is the requesting state; a request goes to another");
    }
    if !concord_platform::auth::is_tag_safe(&m.custodial_authority) {
        v.add("request.custodial_authority", "must be the id of the agency holding the subjects");
    }
    if kind == Some(RequestType::Repatriation) && m.receiving_state != requesting_state {
        v.add(
            "request.receiving_state",
            "a repatriation's receiving state is the requesting state (its nationals go home)",
        );
    } else if kind.is_some_and(RequestType::moves_people) {
        state_code(&mut v, "request.receiving_state", &m.receiving_state);
    } else if !m.receiving_state.is_empty() {
        v.add("request.receiving_state", "is only for requests that move people");
    }
    text(&mut v, "request.summary", &m.summary, 2000);
    if m.humanitarian_flags.len() > 10 {
        v.add("request.humanitarian_flags", "at most 10");
    }
    for (i, f) in m.humanitarian_flags.iter().enumerate() {
        if f.is_empty() || f.len() > 40 || !f.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            v.add(
                format!("request.humanitarian_flags[{i}]"),
                "must be a lower-case word such as \"medical\"",
            );
        }
    }
    if m.subjects.is_empty() {
        v.add("request.subjects", "name at least one person");
    } else if m.subjects.len() > MAX_SUBJECTS {
        v.add("request.subjects", format!("at most {MAX_SUBJECTS} people per request"));
    }
    let mut subjects: Vec<Subject> = Vec::new();
    for (i, s) in m.subjects.iter().enumerate() {
        let at = format!("request.subjects[{i}]");
        let person = person_id(&mut v, format!("{at}.person"), &s.person).unwrap_or_default();
        if subjects.iter().any(|o| o.person_id == person) && !person.is_empty() {
            v.add(format!("{at}.person"), format!("persons/{person} is a subject twice"));
        }
        let mother = if s.mother.is_empty() {
            String::new()
        } else {
            person_id(&mut v, format!("{at}.mother"), &s.mother).unwrap_or_default()
        };
        if !mother.is_empty() && mother == person {
            v.add(format!("{at}.mother"), "is the subject itself");
        }
        if s.unit.len() > 64 {
            v.add(format!("{at}.unit"), "must be at most 64 characters");
        }
        subjects.push(Subject {
            person_id: person,
            unit: s.unit.clone(),
            mother,
            outcome: None,
            disposition: None,
            verified_by: String::new(),
            verify_time: 0,
            separation_consent: String::new(),
            registry: None,
            registry_error: String::new(),
        });
    }
    v.finish(Request {
        id: String::new(),
        kind: kind.unwrap_or(RequestType::Repatriation),
        requesting_state: requesting_state.to_string(),
        requested_state: m.requested_state.clone(),
        custodial_authority: m.custodial_authority.clone(),
        receiving_state: m.receiving_state.clone(),
        summary: m.summary.trim().to_string(),
        flags: m.humanitarian_flags.clone(),
        state: State::Draft,
        suspended_from: None,
        state_reason: String::new(),
        protocol: None,
        created_by: String::new(),
        submit_time: 0,
        decide_time: 0,
        version: 0,
        create_time: 0,
        update_time: 0,
        subjects,
    })
}

/// The contract's view of a request.
pub fn request_out(r: &Request) -> pb::Request {
    let ts = |t: i64| (t != 0).then(|| to_timestamp(t));
    pb::Request {
        name: r.name(),
        r#type: enum_out!(pb::RequestType, r.kind),
        requesting_state: r.requesting_state.clone(),
        requested_state: r.requested_state.clone(),
        custodial_authority: r.custodial_authority.clone(),
        receiving_state: r.receiving_state.clone(),
        subjects: r
            .subjects
            .iter()
            .map(|s| pb::Subject {
                person: format!("persons/{}", s.person_id),
                unit: s.unit.clone(),
                mother: if s.mother.is_empty() {
                    String::new()
                } else {
                    format!("persons/{}", s.mother)
                },
                outcome: s.outcome.map_or(0, |o| enum_out!(pb::SubjectOutcome, o)),
                disposition: s.disposition.map_or(0, |d| enum_out!(pb::Disposition, d)),
                identity_verified_by: s.verified_by.clone(),
                identity_verify_time: ts(s.verify_time),
                separation_consent: s.separation_consent.clone(),
                registry_record: s.registry.map_or(0, |r| enum_out!(pb::RegistryRecord, r)),
                registry_error: s.registry_error.clone(),
            })
            .collect(),
        summary: r.summary.clone(),
        humanitarian_flags: r.flags.clone(),
        state: enum_out!(pb::RequestState, r.state),
        suspended_from: r.suspended_from.map_or(0, |s| enum_out!(pb::RequestState, s)),
        state_reason: r.state_reason.clone(),
        handover_protocol: r.protocol.as_ref().map(|p| pb::HandoverProtocol {
            document: p.document.clone(),
            signed_for_custodian: p.signed_for_custodian.clone(),
            signed_for_receiver: p.signed_for_receiver.clone(),
            sign_time: Some(to_timestamp(p.sign_time)),
        }),
        created_by: r.created_by.clone(),
        submit_time: ts(r.submit_time),
        decide_time: ts(r.decide_time),
        create_time: Some(to_timestamp(r.create_time)),
        update_time: Some(to_timestamp(r.update_time)),
        etag: format!("\"{}\"", r.version),
    }
}

/// The contract's view of a task at `now`.
pub fn task_out(t: &Task, now: i64) -> pb::Task {
    pb::Task {
        name: t.name(),
        kind: enum_out!(pb::TaskKind, t.kind),
        title: t.title.clone(),
        owner: t.owner.clone(),
        person: if t.person_id.is_empty() {
            String::new()
        } else {
            format!("persons/{}", t.person_id)
        },
        due_time: Some(to_timestamp(t.due_time)),
        state: enum_out!(pb::TaskState, t.state),
        result: t.result.clone(),
        created_by: t.created_by.clone(),
        completed_by: t.completed_by.clone(),
        create_time: Some(to_timestamp(t.create_time)),
        complete_time: (t.complete_time != 0).then(|| to_timestamp(t.complete_time)),
        overdue: t.overdue(now),
        etag: format!("\"{}\"", t.version),
    }
}

/// The contract's view of a note.
pub fn note_out(n: &Note) -> pb::Note {
    pb::Note {
        name: n.name(),
        reference: n.reference.clone(),
        sender: n.sender.clone(),
        addressee: n.addressee.clone(),
        subject: n.subject.clone(),
        body: n.body.clone(),
        document: n.document.clone(),
        send_time: Some(to_timestamp(n.send_time)),
        create_time: Some(to_timestamp(n.create_time)),
    }
}

/// The contract's view of a state's figures.
fn figures_out(f: &StateFigures) -> pb::StateStatistics {
    pb::StateStatistics {
        name: format!("statistics/{}", f.state),
        state: f.state.clone(),
        requests_received: f.received,
        requests_made: f.made,
        accepted: f.accepted,
        declined: f.declined,
        pending: f.pending,
        oldest_pending: f
            .oldest_pending
            .iter()
            .map(|p| pb::PendingRequest {
                request: format!("requests/{}", p.id),
                r#type: enum_out!(pb::RequestType, p.kind),
                state: enum_out!(pb::RequestState, p.state),
                requesting_state: p.requesting_state.clone(),
                age_days: p.age_days,
            })
            .collect(),
        median_days_to_decision: f.median_days_to_decision,
        nationals_held: f.nationals_held,
        handed_over: f.handed_over,
        pending_by_type_and_age: f
            .pending_by_type_and_age
            .iter()
            .map(|(k, age, count)| pb::PendingCount {
                r#type: enum_out!(pb::RequestType, *k),
                age: age.to_string(),
                count: *count,
            })
            .collect(),
    }
}

/// The task a party writes, validated, for the request `request`.
fn new_task(m: Option<&pb::Task>, request: String) -> Result<Task> {
    let Some(m) = m else { return Err(Error::invalid("task", "is required")) };
    let mut v = Violations::new();
    let kind = required_enum!(v, "task.kind", m.kind, pb::TaskKind, TaskKind);
    text(&mut v, "task.title", &m.title, 500);
    if !agency_id(&m.owner) {
        v.add("task.owner", "must be the id of the agency responsible, such as \"fr-mfa\"");
    }
    let person = if m.person.is_empty() {
        String::new()
    } else {
        person_id(&mut v, "task.person", &m.person).unwrap_or_default()
    };
    let due = future_time(&mut v, "task.due_time", m.due_time.as_ref());
    v.finish(Task {
        id: String::new(),
        request_id: request,
        kind: kind.unwrap_or(TaskKind::Other),
        title: m.title.trim().to_string(),
        owner: m.owner.clone(),
        person_id: person,
        due_time: due,
        state: TaskState::Open,
        result: String::new(),
        created_by: String::new(),
        completed_by: String::new(),
        create_time: 0,
        complete_time: 0,
        version: 0,
    })
}

/// The note a party records, validated, for the request `request`.
fn new_note(m: Option<&pb::Note>, request: String) -> Result<Note> {
    let Some(m) = m else { return Err(Error::invalid("note", "is required")) };
    let mut v = Violations::new();
    text(&mut v, "note.reference", &m.reference, 200);
    if !concord_platform::auth::is_state_code(&m.addressee) && !agency_id(&m.addressee) {
        v.add("note.addressee", "must be a state (\"FR\") or an agency id (\"fr-mfa\")");
    }
    text(&mut v, "note.subject", &m.subject, 500);
    if m.body.chars().count() > 20_000 {
        v.add("note.body", "must be at most 20000 characters");
    }
    if m.document.chars().count() > 200 {
        v.add("note.document", "must be at most 200 characters");
    }
    if m.body.trim().is_empty() && m.document.trim().is_empty() {
        v.add("note.body", "a note has a body or a document (note.document)");
    }
    if m.send_time.is_none() {
        v.add("note.send_time", "is required");
    }
    let sent = past_time(&mut v, "note.send_time", m.send_time.as_ref());
    v.finish(Note {
        id: String::new(),
        request_id: request,
        reference: m.reference.trim().to_string(),
        sender: String::new(),
        addressee: m.addressee.clone(),
        subject: m.subject.trim().to_string(),
        body: m.body.clone(),
        document: m.document.trim().to_string(),
        send_time: sent,
        create_time: 0,
    })
}

/// An agency id: lower-case letters, digits and dashes, at most 64.
fn agency_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `requests/{request}` or, when `any` is allowed, `requests/-`.
fn parent_of(name: &str, any: bool) -> Result<Option<String>> {
    if any && name == "requests/-" {
        return Ok(None);
    }
    request_id_of(name, "parent").map(Some)
}

/// The states whose figures the caller may read: the coordinator every state's, a state's
/// agencies their own; anyone else none.
fn figures_for(a: &Access) -> Option<Option<String>> {
    match (&a.principal.kind, &a.principal.state) {
        (AgencyKind::Coordinator, _) => Some(None),
        (AgencyKind::StateMinistry | AgencyKind::Justice, Some(s)) => Some(Some(s.clone())),
        _ => None,
    }
}

/// FAILED_PRECONDITION with the lifecycle's reason.
fn refused(reason: &'static str, message: String) -> Error {
    Error::FailedPrecondition { reason, message }
}

/// The subject `person` of `r`, or INVALID_ARGUMENT naming `person`.
fn subject_mut<'a>(r: &'a mut Request, person: &str) -> Result<&'a mut Subject> {
    let name = r.name();
    r.subjects.iter_mut().find(|s| s.person_id == person).ok_or_else(|| {
        Error::invalid("person", format!("persons/{person} is not a subject of {name}"))
    })
}

/// PERMISSION_DENIED unless one of `roles` is in `allowed`.
fn need(roles: &[Role], allowed: &[Role], what: &str) -> Result<()> {
    if roles.iter().any(|r| allowed.contains(r)) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{what} is for the {} of the request",
            allowed
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RequestsService for Requests {
    async fn create_request(
        &self,
        req: Req<pb::CreateRequestRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "CreateRequest").await?;
        let m = req.into_inner();
        let state = match (&a.principal.kind, &a.principal.state) {
            (AgencyKind::StateMinistry, Some(s)) => s.clone(),
            _ => {
                return self
                    .outcome(
                        &a,
                        "requests",
                        Err(Error::PermissionDenied(
                            "requests are made by a state's ministry, for its state".into(),
                        )),
                    )
                    .await
            }
        };
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let r = new_request(m.request.as_ref(), &state).map_err(st)?;
        // The registry says, as the caller, whether each subject is someone its state may
        // ask about and is held (not again for a retry of a request made already, which the
        // store answers with it).
        let retry = match &rid {
            Some((id, _)) => {
                idempotency::applied(self.store.db(), &a.principal.agency, id).await.map_err(st)?
            }
            None => false,
        };
        if !retry {
            self.registry
                .check_subjects(&a, r.kind, &state, &r.subjects, |i| {
                    format!("request.subjects[{i}].person")
                })
                .await
                .map_err(st)?;
        }
        // Stored and shown in person order (errors above name the caller's positions).
        let mut r = r;
        r.subjects.sort_by(|a, b| a.person_id.cmp(&b.person_id));
        let r = self.store.create(&a, r, rid).await;
        self.outcome(&a, "requests", r).await
    }

    async fn get_request(
        &self,
        req: Req<pb::GetRequestRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsRead, "GetRequest").await?;
        let id = request_id_of(&req.get_ref().name, "name").map_err(st)?;
        let r = self.store.get(&a, &id).await;
        Ok(Response::new(request_out(&self.read(&a, &format!("requests/{id}"), r).await?)))
    }

    async fn list_requests(
        &self,
        req: Req<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let a = self.access(&req, Action::RequestsRead, "ListRequests").await?;
        let m = req.into_inner();
        let size = paging::page_size(m.page_size).map_err(st)?;
        let filter = filter::parse(&m.filter)
            .and_then(|e| e.map(|e| filter::to_sql(&e, FILTER)).transpose())
            .map_err(st)?;
        let person = if m.person.is_empty() {
            None
        } else {
            let mut v = Violations::new();
            let id = person_id(&mut v, "person", &m.person);
            v.finish(id).map_err(st)?
        };
        let fp = paging::request_fingerprint(&[&m.filter, &m.person]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut rs = self
            .store
            .list(&a, filter.as_ref(), person.as_deref(), before.as_deref(), size + 1)
            .await
            .map_err(st)?;
        let next = paging::finish_page(&mut rs, size, &fp, |r| r.id.clone());
        if !rs.is_empty() {
            let names: Vec<String> = rs.iter().map(Request::name).collect();
            self.recorder.record(vec![a.entry(names.join(" "), "*", "OK")]).await.map_err(st)?;
        }
        Ok(Response::new(pb::ListRequestsResponse {
            requests: rs.iter().map(request_out).collect(),
            next_page_token: next,
        }))
    }

    async fn transition_request(
        &self,
        req: Req<pb::TransitionRequestRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "TransitionRequest").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(request_id_of(&m.name, "name"));
        let to = required_enum!(v, "state", m.state, pb::RequestState, State);
        text(&mut v, "reason", &m.reason, 1000);
        let expected = v.absorb(etag(&m.etag, "etag")).flatten();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let protocol = m.handover_protocol.as_ref().map(|p| {
            text(&mut v, "handover_protocol.document", &p.document, 200);
            text(&mut v, "handover_protocol.signed_for_custodian", &p.signed_for_custodian, 200);
            text(&mut v, "handover_protocol.signed_for_receiver", &p.signed_for_receiver, 200);
            let at = past_time(&mut v, "handover_protocol.sign_time", p.sign_time.as_ref());
            Protocol {
                document: p.document.trim().to_string(),
                signed_for_custodian: p.signed_for_custodian.trim().to_string(),
                signed_for_receiver: p.signed_for_receiver.trim().to_string(),
                sign_time: at,
            }
        });
        let (id, to) = v.finish((id.unwrap_or_default(), to)).map_err(st)?;
        let to = to.unwrap_or(State::Draft);
        let reason = m.reason.trim().to_string();
        if to == State::Submitted {
            // The subjects again, as the registry has them now (time passes in a draft). A
            // request the caller may not see, or not submit, fails in the change below.
            if let Ok(r) = self.store.get(&a, &id).await {
                if r.state == State::Draft && r.roles(&a).contains(&Role::Requester) {
                    self.registry
                        .check_subjects(&a, r.kind, &r.requesting_state, &r.subjects, |_| {
                            "state".to_string()
                        })
                        .await
                        .map_err(st)?;
                }
            }
        }
        let r = self
            .store
            .change(
                &a,
                &id,
                "TransitionRequest",
                expected,
                rid,
                Box::new(move |r, roles| {
                    let facts = r.facts(protocol.is_some());
                    // Allowed if any of the caller's roles may; otherwise a lifecycle or
                    // guard reason from a role whose step it is, else whose step it is.
                    if !roles.iter().any(|role| check(&facts, *role, to).is_ok()) {
                        let errors: Vec<String> = roles
                            .iter()
                            .filter_map(|role| check(&facts, *role, to).err())
                            .collect();
                        return Err(match errors.iter().find(|e| !e.contains(" is for the ")) {
                            Some(why) => refused(
                                "INVALID_REQUEST_TRANSITION",
                                format!("{} is {}: {why}", r.name(), r.state),
                            ),
                            None => Error::PermissionDenied(format!(
                                "{}: {}",
                                r.name(),
                                errors.first().map_or("", String::as_str)
                            )),
                        });
                    }
                    let now = now_micros();
                    r.suspended_from = (to == State::Suspended).then_some(r.state);
                    match to {
                        State::Submitted => r.submit_time = now,
                        // The first decision is the one statistics count.
                        State::ApprovedInPrinciple | State::Rejected if r.decide_time == 0 => {
                            r.decide_time = now
                        }
                        State::HandedOver => r.protocol = protocol,
                        _ => {}
                    }
                    r.state = to;
                    r.state_reason = reason;
                    Ok(if to == State::HandedOver {
                        "request.handed_over"
                    } else {
                        "request.transitioned"
                    })
                }),
            )
            .await;
        self.outcome(&a, &format!("requests/{id}"), r).await
    }

    async fn verify_subject_identity(
        &self,
        req: Req<pb::VerifySubjectIdentityRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "VerifySubjectIdentity").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(request_id_of(&m.name, "name"));
        let person = person_id(&mut v, "person", &m.person).unwrap_or_default();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let id = v.finish(id.unwrap_or_default()).map_err(st)?;
        let agency = a.principal.agency.clone();
        let r = self
            .store
            .change(
                &a,
                &id,
                "VerifySubjectIdentity",
                None,
                rid,
                Box::new(move |r, roles| {
                    need(roles, &[Role::Receiver], "verifying a subject's identity")?;
                    let name = r.name();
                    let state = r.state;
                    let s = subject_mut(r, &person)?;
                    may_verify(state, s)
                        .map_err(|why| refused("CANNOT_VERIFY", format!("{name}: {why}")))?;
                    s.verified_by = agency;
                    s.verify_time = now_micros();
                    Ok("request.subject_changed")
                }),
            )
            .await;
        self.outcome(&a, &format!("requests/{id}"), r).await
    }

    async fn decide_subject(
        &self,
        req: Req<pb::DecideSubjectRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "DecideSubject").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(request_id_of(&m.name, "name"));
        let person = person_id(&mut v, "person", &m.person).unwrap_or_default();
        let outcome = required_enum!(v, "outcome", m.outcome, pb::SubjectOutcome, Outcome);
        let disposition = if m.disposition == 0 {
            None
        } else {
            required_enum!(v, "disposition", m.disposition, pb::Disposition, Disposition)
        };
        if outcome == Some(Outcome::Declined) && disposition.is_some() {
            v.add("disposition", "is only for an accepted subject");
        }
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let id = v.finish(id.unwrap_or_default()).map_err(st)?;
        let r = self
            .store
            .change(&a, &id, "DecideSubject", None, rid, Box::new(move |r, roles| {
                need(roles, &[Role::Requested], "deciding a subject's outcome")?;
                if !may_decide(r.state) {
                    return Err(refused(
                        "NOT_DECIDING",
                        format!(
                            "{} is {}; outcomes are decided from APPROVED_IN_PRINCIPLE until consents are collected",
                            r.name(),
                            r.state
                        ),
                    ));
                }
                if disposition.is_some() && !r.kind.moves_people() {
                    return Err(Error::invalid(
                        "disposition",
                        "is only for requests that move people",
                    ));
                }
                if outcome == Some(Outcome::Accepted) && r.kind.moves_people() && disposition.is_none() {
                    return Err(Error::invalid(
                        "disposition",
                        "is required for an accepted subject of a request that moves people",
                    ));
                }
                let s = subject_mut(r, &person)?;
                s.outcome = outcome;
                s.disposition = disposition;
                Ok("request.subject_changed")
            }))
            .await;
        self.outcome(&a, &format!("requests/{id}"), r).await
    }

    async fn record_separation_consent(
        &self,
        req: Req<pb::RecordSeparationConsentRequest>,
    ) -> Result<Response<pb::Request>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "RecordSeparationConsent").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(request_id_of(&m.name, "name"));
        let person = person_id(&mut v, "person", &m.person).unwrap_or_default();
        text(&mut v, "consent", &m.consent, 500);
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let id = v.finish(id.unwrap_or_default()).map_err(st)?;
        let consent = m.consent.trim().to_string();
        let r = self
            .store
            .change(
                &a,
                &id,
                "RecordSeparationConsent",
                None,
                rid,
                Box::new(move |r, roles| {
                    need(
                        roles,
                        &[Role::Custodian, Role::Receiver, Role::Coordinator],
                        "recording a consent",
                    )?;
                    subject_mut(r, &person)?;
                    may_record_consent(r.state, &r.subjects, &person).map_err(|why| {
                        refused("CANNOT_RECORD_CONSENT", format!("{}: {why}", r.name()))
                    })?;
                    subject_mut(r, &person)?.separation_consent = consent;
                    Ok("request.subject_changed")
                }),
            )
            .await;
        self.outcome(&a, &format!("requests/{id}"), r).await
    }

    async fn create_task(
        &self,
        req: Req<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "CreateTask").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let parent = v.absorb(request_id_of(&m.parent, "parent"));
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let task = v.absorb(new_task(m.task.as_ref(), parent.clone().unwrap_or_default()));
        let task =
            v.finish(task).map_err(st)?.ok_or_else(|| st(Error::invalid("task", "is required")))?;
        let resource = format!("requests/{}", task.request_id);
        let r = self.store.create_task(&a, task, rid).await;
        self.written(&a, &resource, r.map(|t| task_out(&t, now_micros()))).await
    }

    async fn complete_task(
        &self,
        req: Req<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "CompleteTask").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let to = required_enum!(v, "state", m.state, pb::TaskState, TaskState);
        if to == Some(TaskState::Open) {
            v.add("state", "must be TASK_STATE_DONE or TASK_STATE_CANCELLED");
        }
        text(&mut v, "result", &m.result, 2000);
        let expected = v.absorb(etag(&m.etag, "etag")).flatten();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        if !m.name.starts_with("requests/") || !m.name.contains("/tasks/") {
            v.add("name", "is not a name like \"requests/0192.../tasks/0192...\"");
        }
        let to = v.finish(to).map_err(st)?.unwrap_or(TaskState::Done);
        let r = self
            .store
            .complete_task(&a, &m.name, to, m.result.trim().to_string(), expected, rid)
            .await;
        self.written(&a, &m.name, r.map(|t| task_out(&t, now_micros()))).await
    }

    async fn list_tasks(
        &self,
        req: Req<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let a = self.access(&req, Action::RequestsRead, "ListTasks").await?;
        let m = req.into_inner();
        let parent = parent_of(&m.parent, true).map_err(st)?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&m.parent, if m.overdue_only { "1" } else { "0" }]);
        let after: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let within = parent.as_deref().map_or(Within::All, Within::Request);
        let now = now_micros();
        let r = self
            .store
            .list_tasks(&a, within, m.overdue_only.then_some(now), after.as_deref(), size + 1)
            .await;
        let mut tasks = self.read(&a, &m.parent, r).await?;
        let next = paging::finish_page(&mut tasks, size, &fp, |t| t.id.clone());
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(|t| task_out(t, now)).collect(),
            next_page_token: next,
        }))
    }

    async fn create_note(
        &self,
        req: Req<pb::CreateNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let a = self.access(&req, Action::RequestsWrite, "CreateNote").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let parent = v.absorb(request_id_of(&m.parent, "parent"));
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let note = v.absorb(new_note(m.note.as_ref(), parent.unwrap_or_default()));
        let note =
            v.finish(note).map_err(st)?.ok_or_else(|| st(Error::invalid("note", "is required")))?;
        let resource = format!("requests/{}", note.request_id);
        let r = self.store.create_note(&a, note, rid).await;
        self.written(&a, &resource, r.map(|n| note_out(&n))).await
    }

    async fn list_notes(
        &self,
        req: Req<pb::ListNotesRequest>,
    ) -> Result<Response<pb::ListNotesResponse>, Status> {
        let a = self.access(&req, Action::RequestsRead, "ListNotes").await?;
        let m = req.into_inner();
        let id = request_id_of(&m.parent, "parent").map_err(st)?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&m.parent]);
        let after: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let r = self.store.list_notes(&a, &id, after.as_deref(), size + 1).await;
        let mut notes = self.read(&a, &m.parent, r).await?;
        let next = paging::finish_page(&mut notes, size, &fp, |n| n.id.clone());
        Ok(Response::new(pb::ListNotesResponse {
            notes: notes.iter().map(note_out).collect(),
            next_page_token: next,
        }))
    }

    async fn get_state_statistics(
        &self,
        req: Req<pb::GetStateStatisticsRequest>,
    ) -> Result<Response<pb::StateStatistics>, Status> {
        let a = self.access(&req, Action::RequestsRead, "GetStateStatistics").await?;
        let name = req.into_inner().name;
        let state = match name.strip_prefix("statistics/") {
            Some(s) if concord_platform::auth::is_state_code(s) => s.to_string(),
            _ => return Err(st(Error::invalid("name", "is not a name like \"statistics/FR\""))),
        };
        let r = match figures_for(&a) {
            Some(None) => self.store.figures(&state).await,
            Some(Some(own)) if own == state => self.store.figures(&state).await,
            Some(Some(own)) => Err(Error::PermissionDenied(format!(
                "the agencies of {own} read {own}'s figures; the coordinator reads every state's"
            ))),
            None => Err(Error::PermissionDenied(
                "a state's figures are for its agencies and the coordinator".into(),
            )),
        };
        let f = self.read(&a, &name, r).await?;
        Ok(Response::new(figures_out(&f)))
    }

    async fn list_state_statistics(
        &self,
        req: Req<pb::ListStateStatisticsRequest>,
    ) -> Result<Response<pb::ListStateStatisticsResponse>, Status> {
        let a = self.access(&req, Action::RequestsRead, "ListStateStatistics").await?;
        let states = match figures_for(&a) {
            Some(None) => self.store.states_with_figures().await,
            Some(Some(own)) => Ok(vec![own]),
            None => Err(Error::PermissionDenied(
                "a state's figures are for its agencies and the coordinator".into(),
            )),
        };
        let states = self.read(&a, "statistics", states).await?;
        let mut out = Vec::with_capacity(states.len());
        for s in &states {
            out.push(figures_out(&self.store.figures(s).await.map_err(st)?));
        }
        Ok(Response::new(pb::ListStateStatisticsResponse { statistics: out }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        req: Req<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let a = self.access(&req, Action::RequestsRead, "WatchChanges").await?;
        let m = req.into_inner();
        // Events are tagged with their parties: states, and the custodial authority as
        // `@agency`; drafts are never in the stream.
        let p = &a.principal;
        let scope = match (&p.kind, &p.state) {
            (AgencyKind::Coordinator, _) => Scope::All,
            (AgencyKind::StateMinistry | AgencyKind::Justice, Some(s)) => {
                Scope::Only(Visible { states: vec![s.clone()], ..Default::default() })
            }
            (AgencyKind::CustodialAuthority, _) => {
                Scope::Only(Visible { facilities: vec![p.agency.clone()], ..Default::default() })
            }
            _ => Scope::Only(Visible::default()),
        };
        let params = WatchParams {
            cursor: m.cursor,
            start_at_end: m.start_at_end,
            event_types: m.event_types,
            scope,
        };
        let permit = self.streams.open(&a.principal.agency).map_err(st)?;
        let stream = outbox::watch(
            self.store.db().clone(),
            params,
            WatchTuning::default(),
            self.shutdown.clone(),
        )
        .await
        .map_err(st)?;
        let recorder = self.recorder.clone();
        let stream = stream.then(move |r| {
            let (recorder, a) = (recorder.clone(), a.clone());
            async move {
                let e = r.map_err(st)?;
                if !e.bookmark {
                    recorder
                        .record(vec![a.entry(e.resource_name.clone(), "*", "OK")])
                        .await
                        .map_err(st)?;
                }
                Ok(pb::WatchChangesResponse { event: Some(e) })
            }
        });
        let stream = outbox::renewal(stream, outbox::WATCH_REAUTHORIZE);
        Ok(Response::new(Box::pin(stream.map(move |r| {
            let _held = &permit;
            r
        }))))
    }
}
