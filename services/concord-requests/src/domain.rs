//! The requests' domain: types, the lifecycle as a guarded state machine, parties and their
//! roles, subjects and their outcomes. Pure: the store applies what [`check`] allows.

use concord_platform::named_enum;

named_enum! {
    /// Kinds of request.
    pub enum RequestType("REQUEST_TYPE_") {
        Repatriation = "REPATRIATION", TransferForTrial = "TRANSFER_FOR_TRIAL",
        ConsularAccess = "CONSULAR_ACCESS", IdentityVerification = "IDENTITY_VERIFICATION",
        EvidenceSharing = "EVIDENCE_SHARING", FamilyTracing = "FAMILY_TRACING",
    }
}

named_enum! {
    /// Lifecycle of a request; see [`check`].
    pub enum State("REQUEST_STATE_") {
        Draft = "DRAFT", Submitted = "SUBMITTED", Acknowledged = "ACKNOWLEDGED",
        UnderReview = "UNDER_REVIEW", InfoRequested = "INFO_REQUESTED",
        ApprovedInPrinciple = "APPROVED_IN_PRINCIPLE",
        IdentityVerification = "IDENTITY_VERIFICATION", ConsentsCollected = "CONSENTS_COLLECTED",
        LogisticsPlanned = "LOGISTICS_PLANNED", HandoverInProgress = "HANDOVER_IN_PROGRESS",
        HandedOver = "HANDED_OVER", Closed = "CLOSED", Rejected = "REJECTED",
        Withdrawn = "WITHDRAWN", Suspended = "SUSPENDED",
    }
}

named_enum! {
    /// A subject's outcome.
    pub enum Outcome("SUBJECT_OUTCOME_") { Accepted = "ACCEPTED", Declined = "DECLINED" }
}

named_enum! {
    /// What the receiving state does with a person.
    pub enum Disposition("DISPOSITION_") {
        ProsecutionAtHome = "PROSECUTION_AT_HOME", Rehabilitation = "REHABILITATION",
        Reintegration = "REINTEGRATION", TrialInThirdState = "TRIAL_IN_THIRD_STATE",
    }
}

named_enum! {
    /// Whether the registry recorded a subject's hand-over.
    pub enum RegistryRecord("REGISTRY_RECORD_") {
        Pending = "PENDING", Applied = "APPLIED", Refused = "REFUSED",
    }
}

named_enum! {
    /// Kinds of task.
    pub enum TaskKind("TASK_KIND_") {
        IdentityCheck = "IDENTITY_CHECK", DnaTest = "DNA_TEST", Consent = "CONSENT",
        TravelDocuments = "TRAVEL_DOCUMENTS", Escort = "ESCORT", Other = "OTHER",
    }
}

named_enum! {
    /// Lifecycle of a task: OPEN -> DONE or CANCELLED.
    pub enum TaskState("TASK_STATE_") { Open = "OPEN", Done = "DONE", Cancelled = "CANCELLED" }
}

impl RequestType {
    /// Repatriation and transfer for trial move people: they go through identity
    /// verification, consents, logistics and a hand-over.
    pub fn moves_people(self) -> bool {
        matches!(self, RequestType::Repatriation | RequestType::TransferForTrial)
    }
}

impl State {
    /// CLOSED, REJECTED and WITHDRAWN: nothing follows.
    pub fn is_final(self) -> bool {
        matches!(self, State::Closed | State::Rejected | State::Withdrawn)
    }

    /// The hand-over's states, in order, for requests that move people.
    const HANDOVER_PATH: [State; 6] = [
        State::ApprovedInPrinciple,
        State::IdentityVerification,
        State::ConsentsCollected,
        State::LogisticsPlanned,
        State::HandoverInProgress,
        State::HandedOver,
    ];
}

/// A party's role in a request, which decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Agencies of the requesting state.
    Requester,
    /// Agencies of the requested state.
    Requested,
    /// Agencies of the receiving state.
    Receiver,
    /// The custodial authority holding the subjects.
    Custodian,
    /// The coordinator.
    Coordinator,
}

/// One subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Person id.
    pub person_id: String,
    /// Unit (people travelling together), or empty.
    pub unit: String,
    /// The mother's person id, or empty.
    pub mother: String,
    /// Outcome, once decided.
    pub outcome: Option<Outcome>,
    /// Disposition, for accepted subjects of requests that move people.
    pub disposition: Option<Disposition>,
    /// Agency that verified the identity, or empty.
    pub verified_by: String,
    /// Micros, 0 until verified.
    pub verify_time: i64,
    /// The mother's recorded consent to a separation, or empty.
    pub separation_consent: String,
    /// Whether the registry recorded the hand-over (accepted subjects, once handed over).
    pub registry: Option<RegistryRecord>,
    /// The registry's reason, when refused.
    pub registry_error: String,
}

impl Subject {
    /// Whether the subject travels (or is granted what is asked).
    pub fn accepted(&self) -> bool {
        self.outcome == Some(Outcome::Accepted)
    }
}

/// What the guards look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The request's type.
    pub kind: RequestType,
    /// Current state.
    pub state: State,
    /// The state a suspended request resumes to.
    pub suspended_from: Option<State>,
    /// Subjects.
    pub subjects: &'a [Subject],
    /// Whether the transition carries a signed hand-over protocol.
    pub protocol: bool,
}

/// Children who would be separated from their mother by the outcomes: a child whose mother
/// is named and whose outcome differs from hers (or whose mother is not a subject and the
/// child travels).
pub fn separations(subjects: &[Subject]) -> Vec<&Subject> {
    subjects
        .iter()
        .filter(|s| !s.mother.is_empty())
        .filter(|child| {
            let mother = subjects.iter().find(|m| m.person_id == child.mother);
            match mother {
                Some(m) => m.accepted() != child.accepted(),
                None => child.accepted(),
            }
        })
        .collect()
}

/// Who may take the step `from` -> `to` of a request of `kind` (suspended from `back`), or
/// `None` when the lifecycle has no such step. Guards aside: the table of the lifecycle.
pub fn step(
    kind: RequestType,
    from: State,
    back: Option<State>,
    to: State,
) -> Option<&'static [Role]> {
    use State::*;
    const REQUESTER: &[Role] = &[Role::Requester];
    const REQUESTED: &[Role] = &[Role::Requested];
    const SECURITY: &[Role] = &[Role::Coordinator, Role::Custodian];
    const LOGISTICS: &[Role] = &[Role::Custodian, Role::Coordinator];
    if from.is_final() || from == to {
        return None;
    }
    let path = State::HANDOVER_PATH;
    let on_path = |s: State| path.iter().position(|p| *p == s);
    let before_handover = |s: State| {
        matches!(
            s,
            Draft
                | Submitted
                | Acknowledged
                | UnderReview
                | InfoRequested
                | ApprovedInPrinciple
                | IdentityVerification
                | ConsentsCollected
                | LogisticsPlanned
        )
    };
    Some(match (from, to) {
        (Suspended, t) if back == Some(t) => SECURITY,
        (Suspended, _) => return None,
        // A draft is not yet anyone's concern; a hand-over done is not undone.
        (Draft | HandedOver, Suspended) => return None,
        (_, Suspended) => SECURITY,
        (Draft, Submitted) => REQUESTER,
        (f, Withdrawn) if before_handover(f) => REQUESTER,
        (Submitted, Acknowledged) | (Acknowledged, UnderReview) => REQUESTED,
        (UnderReview, InfoRequested | ApprovedInPrinciple) => REQUESTED,
        (InfoRequested, UnderReview) => REQUESTER,
        // Rejected until the logistics are planned.
        (f, Rejected) if f != Draft && f != LogisticsPlanned && before_handover(f) => REQUESTED,
        (ApprovedInPrinciple, Closed) if !kind.moves_people() => {
            &[Role::Requested, Role::Requester, Role::Coordinator]
        }
        (HandedOver, Closed) => &[Role::Requester, Role::Coordinator, Role::Custodian],
        (f, t) if kind.moves_people() && on_path(f).is_some_and(|i| on_path(t) == Some(i + 1)) => {
            match t {
                IdentityVerification => &[Role::Requested, Role::Coordinator],
                ConsentsCollected => &[Role::Receiver, Role::Custodian, Role::Coordinator],
                _ => LOGISTICS,
            }
        }
        _ => return None,
    })
}

/// Whether `role` may move a request from `facts.state` to `to`, and if not, why: the
/// lifecycle ([`step`]), who may take the step, and the guards on the subjects.
pub fn check(facts: &Facts<'_>, role: Role, to: State) -> Result<(), String> {
    let from = facts.state;
    if from.is_final() {
        return Err(format!("the request is {from}, which is final"));
    }
    let Some(allowed) = step(facts.kind, from, facts.suspended_from, to) else {
        if let (State::Suspended, Some(back)) = (from, facts.suspended_from) {
            return Err(format!("a SUSPENDED request resumes to {back}, where it was"));
        }
        let next: Vec<&str> = successors(facts).iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "a {} request that is {from} may become {}",
            facts.kind,
            if next.is_empty() { "nothing".to_string() } else { next.join(", ") }
        ));
    };
    if !allowed.contains(&role) {
        return Err(format!(
            "{from} -> {to} is for the {} of the request",
            allowed
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    guard(facts, to)
}

/// What must hold of the subjects to enter `to`.
fn guard(facts: &Facts<'_>, to: State) -> Result<(), String> {
    let subjects = facts.subjects;
    let list = |v: Vec<&Subject>| {
        v.iter().map(|s| format!("persons/{}", s.person_id)).collect::<Vec<_>>().join(", ")
    };
    match to {
        State::ConsentsCollected => {
            let undecided: Vec<&Subject> =
                subjects.iter().filter(|s| s.outcome.is_none()).collect();
            if !undecided.is_empty() {
                return Err(format!("no outcome is decided for {}", list(undecided)));
            }
            if !subjects.iter().any(Subject::accepted) {
                return Err("no subject is accepted: reject or withdraw the request".into());
            }
            let unverified: Vec<&Subject> =
                subjects.iter().filter(|s| s.accepted() && s.verified_by.is_empty()).collect();
            if !unverified.is_empty() {
                return Err(format!(
                    "the receiving state has not verified the identity of {}",
                    list(unverified)
                ));
            }
        }
        State::LogisticsPlanned => {
            let missing: Vec<&Subject> = separations(subjects)
                .into_iter()
                .filter(|s| s.separation_consent.is_empty())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "a child is separated from its mother only with her recorded consent; none for {}",
                    list(missing)
                ));
            }
        }
        State::HandedOver if !facts.protocol => {
            return Err("a hand-over needs its signed protocol (handover_protocol)".into());
        }
        State::Closed if facts.state == State::ApprovedInPrinciple => {
            let undecided: Vec<&Subject> =
                subjects.iter().filter(|s| s.outcome.is_none()).collect();
            if !undecided.is_empty() {
                return Err(format!("no outcome is decided for {}", list(undecided)));
            }
        }
        _ => {}
    }
    if to != State::HandedOver && facts.protocol {
        return Err("a hand-over protocol is recorded only at HANDED_OVER".into());
    }
    Ok(())
}

/// The states the lifecycle allows next from `facts.state` (guards aside).
pub fn successors(facts: &Facts<'_>) -> Vec<State> {
    State::ALL
        .iter()
        .copied()
        .filter(|to| step(facts.kind, facts.state, facts.suspended_from, *to).is_some())
        .collect()
}

/// Whether the lifecycle lets subjects' outcomes be decided in `state` (by the requested
/// state): from APPROVED_IN_PRINCIPLE until the consents are collected.
pub fn may_decide(state: State) -> bool {
    matches!(state, State::ApprovedInPrinciple | State::IdentityVerification)
}

/// Whether the receiving state may verify `subject`'s identity now: in
/// IDENTITY_VERIFICATION, once (a verification is not replaced).
pub fn may_verify(state: State, subject: &Subject) -> Result<(), String> {
    if state != State::IdentityVerification {
        return Err(format!(
            "the request is {state}; identities are verified in IDENTITY_VERIFICATION"
        ));
    }
    if !subject.verified_by.is_empty() {
        return Err(format!(
            "persons/{} was verified already by {}",
            subject.person_id, subject.verified_by
        ));
    }
    Ok(())
}

/// Whether a separation consent may be recorded for `child` now: in CONSENTS_COLLECTED,
/// for a child the outcomes separate from its named mother, once.
pub fn may_record_consent(state: State, subjects: &[Subject], child: &str) -> Result<(), String> {
    if state != State::ConsentsCollected {
        return Err(format!("the request is {state}; consents are recorded in CONSENTS_COLLECTED"));
    }
    match separations(subjects).iter().find(|s| s.person_id == child) {
        None => Err(format!(
            "persons/{child} is not separated from a named mother by this request; no consent is needed"
        )),
        Some(s) if !s.separation_consent.is_empty() => {
            Err(format!("a consent for persons/{child} was recorded already"))
        }
        Some(_) => Ok(()),
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Who may complete or cancel a task: its owner, its creator, the coordinator.
pub fn may_complete_task(agency: &str, coordinator: bool, owner: &str, creator: &str) -> bool {
    coordinator || agency == owner || agency == creator
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subject(id: &str, mother: &str) -> Subject {
        Subject {
            person_id: id.into(),
            unit: String::new(),
            mother: mother.into(),
            outcome: None,
            disposition: None,
            verified_by: String::new(),
            verify_time: 0,
            separation_consent: String::new(),
            registry: None,
            registry_error: String::new(),
        }
    }

    fn facts(state: State, subjects: &[Subject]) -> Facts<'_> {
        Facts {
            kind: RequestType::Repatriation,
            state,
            suspended_from: None,
            subjects,
            protocol: false,
        }
    }

    #[test]
    fn a_repatriation_goes_the_whole_way_only_with_verification_outcomes_and_consent() {
        let mut s = vec![subject("mother", ""), subject("child", "mother")];
        let f = facts(State::IdentityVerification, &s);
        let err = check(&f, Role::Receiver, State::ConsentsCollected).unwrap_err();
        assert!(err.contains("no outcome"), "{err}");
        s[0].outcome = Some(Outcome::Declined);
        s[1].outcome = Some(Outcome::Accepted);
        let err = check(
            &facts(State::IdentityVerification, &s),
            Role::Receiver,
            State::ConsentsCollected,
        )
        .unwrap_err();
        assert!(err.contains("not verified the identity of persons/child"), "{err}");
        s[1].verified_by = "fr-mfa".into();
        check(&facts(State::IdentityVerification, &s), Role::Receiver, State::ConsentsCollected)
            .unwrap();
        // The child travels without its mother: only with her consent.
        let err =
            check(&facts(State::ConsentsCollected, &s), Role::Custodian, State::LogisticsPlanned)
                .unwrap_err();
        assert!(err.contains("recorded consent; none for persons/child"), "{err}");
        s[1].separation_consent = "form 12, signed".into();
        check(&facts(State::ConsentsCollected, &s), Role::Custodian, State::LogisticsPlanned)
            .unwrap();
        let f = facts(State::HandoverInProgress, &s);
        assert!(check(&f, Role::Custodian, State::HandedOver).unwrap_err().contains("protocol"));
        let with = Facts { protocol: true, ..f };
        check(&with, Role::Custodian, State::HandedOver).unwrap();
        assert!(check(&with, Role::Requester, State::HandedOver)
            .unwrap_err()
            .contains("custodian"));
    }

    #[test]
    fn a_suspended_request_resumes_where_it_was_and_nowhere_else() {
        let s = [subject("a", "")];
        let f = Facts { suspended_from: Some(State::UnderReview), ..facts(State::Suspended, &s) };
        check(&f, Role::Coordinator, State::UnderReview).unwrap();
        let err = check(&f, Role::Coordinator, State::ApprovedInPrinciple).unwrap_err();
        assert!(err.contains("resumes to UNDER_REVIEW"), "{err}");
        assert!(check(&f, Role::Requester, State::UnderReview).is_err(), "security is not theirs");
    }

    #[test]
    fn requests_that_move_no_one_close_after_approval() {
        let mut s = [subject("a", "")];
        let f =
            Facts { kind: RequestType::ConsularAccess, ..facts(State::ApprovedInPrinciple, &s) };
        let err = check(&f, Role::Requested, State::Closed).unwrap_err();
        assert!(err.contains("no outcome is decided"), "each subject has its outcome: {err}");
        s[0].outcome = Some(Outcome::Accepted);
        let f =
            Facts { kind: RequestType::ConsularAccess, ..facts(State::ApprovedInPrinciple, &s) };
        check(&f, Role::Requested, State::Closed).unwrap();
        assert!(check(&f, Role::Requested, State::IdentityVerification).is_err());
        let f = facts(State::ApprovedInPrinciple, &s);
        assert!(check(&f, Role::Requested, State::Closed).is_err(), "a repatriation hands over");
    }

    fn any_state() -> impl Strategy<Value = State> {
        proptest::sample::select(State::ALL.to_vec())
    }

    fn any_role() -> impl Strategy<Value = Role> {
        proptest::sample::select(vec![
            Role::Requester,
            Role::Requested,
            Role::Receiver,
            Role::Custodian,
            Role::Coordinator,
        ])
    }

    fn any_kind() -> impl Strategy<Value = RequestType> {
        proptest::sample::select(RequestType::ALL.to_vec())
    }

    /// A request driven by random calls, with random subject facts between them, as the
    /// store drives it.
    #[derive(Debug, Clone)]
    enum Call {
        Transition(Role, State, bool),
        /// A step the lifecycle has, by one of the roles it is for (so runs get far).
        Step(usize, usize, bool),
        Decide(usize, Option<Outcome>),
        Verify(usize),
        Consent(usize),
        /// What the current state's guard waits for, for the first subject that lacks it.
        Needed(bool),
    }

    fn any_call() -> impl Strategy<Value = Call> {
        prop_oneof![
            4 => (any_role(), any_state(), any::<bool>()).prop_map(|(r, s, p)| Call::Transition(r, s, p)),
            6 => (any::<usize>(), any::<usize>(), any::<bool>()).prop_map(|(a, b, p)| Call::Step(a, b, p)),
            1 => (0..3usize, proptest::option::of(proptest::sample::select(Outcome::ALL.to_vec())))
                .prop_map(|(i, o)| Call::Decide(i, o)),
            1 => (0..3usize).prop_map(Call::Verify),
            1 => (0..3usize).prop_map(Call::Consent),
            4 => any::<bool>().prop_map(Call::Needed),
        ]
    }

    /// How many runs of the property reached HANDED_OVER (so it is known to go deep).
    static REACHED_HANDOVER: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    #[test]
    fn the_property_runs_reach_the_hand_over() {
        no_sequence_of_calls_reaches_an_invalid_state();
        let n = REACHED_HANDOVER.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("runs that reached HANDED_OVER: {n}");
        assert!(n > 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No sequence of calls reaches an invalid state: every state reached is reachable in
        /// the lifecycle from the one before, nothing leaves a final state, a suspension
        /// resumes where it was, and whatever reached CONSENTS_COLLECTED or beyond had every
        /// accepted subject verified, every subject decided, and every separation consented.
        #[test]
        fn no_sequence_of_calls_reaches_an_invalid_state(
            kind in any_kind(),
            calls in proptest::collection::vec(any_call(), 0..120),
        ) {
            let mut subjects = vec![subject("m", ""), subject("c1", "m"), subject("c2", "m")];
            let mut state = State::Draft;
            let mut back: Option<State> = None;
            let mut handed_over = false;
            for call in calls {
                let call = match call {
                    Call::Step(a, b, protocol) => {
                        let f = Facts { kind, state, suspended_from: back, subjects: &subjects, protocol };
                        let all = successors(&f);
                        // Mostly forward, sometimes an exit or a detour.
                        let forward: Vec<State> = all
                            .iter()
                            .copied()
                            .filter(|s| !matches!(s, State::Rejected | State::Withdrawn
                                | State::Suspended | State::InfoRequested))
                            .collect();
                        let next = if b % 8 != 0 && !forward.is_empty() { forward } else { all };
                        if next.is_empty() {
                            continue;
                        }
                        let to = next[a % next.len()];
                        let roles = step(kind, state, back, to).unwrap_or(&[]);
                        if roles.is_empty() {
                            continue;
                        }
                        Call::Transition(roles[b % roles.len()], to, protocol)
                    }
                    Call::Needed(accept) => {
                        let undecided = subjects.iter().position(|s| s.outcome.is_none());
                        let unverified = subjects
                            .iter()
                            .position(|s| s.accepted() && s.verified_by.is_empty());
                        let unconsented = separations(&subjects)
                            .iter()
                            .find(|s| s.separation_consent.is_empty())
                            .and_then(|c| subjects.iter().position(|s| s.person_id == c.person_id));
                        match (undecided, unverified, unconsented) {
                            (Some(i), _, _) if may_decide(state) => {
                                let o = if accept || i == 0 { Outcome::Accepted } else { Outcome::Declined };
                                Call::Decide(i, Some(o))
                            }
                            (_, Some(i), _) => Call::Verify(i),
                            (_, _, Some(i)) => Call::Consent(i),
                            _ => continue,
                        }
                    }
                    other => other,
                };
                match call {
                    Call::Transition(role, to, protocol) => {
                        let f = Facts { kind, state, suspended_from: back, subjects: &subjects, protocol };
                        if check(&f, role, to).is_ok() {
                            prop_assert!(!state.is_final(), "left final {state}");
                            prop_assert!(step(kind, state, back, to).is_some());
                            if state == State::Suspended {
                                prop_assert_eq!(Some(to), back);
                            }
                            back = match to {
                                State::Suspended => Some(state),
                                _ => None,
                            };
                            state = to;
                            if matches!(state, State::ConsentsCollected | State::LogisticsPlanned
                                | State::HandoverInProgress | State::HandedOver) {
                                prop_assert!(kind.moves_people());
                                prop_assert!(subjects.iter().all(|s| s.outcome.is_some()));
                                prop_assert!(subjects.iter().filter(|s| s.accepted()).all(|s| !s.verified_by.is_empty()));
                            }
                            if matches!(state, State::LogisticsPlanned | State::HandoverInProgress | State::HandedOver) {
                                prop_assert!(separations(&subjects).iter().all(|s| !s.separation_consent.is_empty()));
                            }
                            if state == State::HandedOver {
                                prop_assert!(protocol);
                                prop_assert!(!handed_over, "handed over twice (a protocol replaced)");
                                handed_over = true;
                                REACHED_HANDOVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    // The store lets these change only while the guards they feed are ahead.
                    Call::Decide(i, o) if may_decide(state) => subjects[i].outcome = o,
                    Call::Verify(i) if may_verify(state, &subjects[i]).is_ok() => {
                        subjects[i].verified_by = "receiver".into()
                    }
                    Call::Consent(i)
                        if may_record_consent(state, &subjects, &subjects[i].person_id.clone()).is_ok() =>
                    {
                        subjects[i].separation_consent = "signed".into()
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [9.0, 1.0, 4.0]), 4.0);
        assert_eq!(median(&mut [9.0, 1.0, 4.0, 2.0]), 3.0);
    }
}
