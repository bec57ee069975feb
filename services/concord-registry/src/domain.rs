//! Domain types of the registry and the rules that keep them valid. Values here have passed
//! validation: the `grpc` module builds them from requests and refuses what does not parse.

use concord_platform::error::{quote, Error, Result, Violations};
use concord_platform::named_enum;
use serde::{Deserialize, Serialize};

named_enum! {
    /// What kind of name a name is.
    pub enum NameKind("NAME_KIND_") { Primary = "PRIMARY", Transliteration = "TRANSLITERATION", Alias = "ALIAS", Kunya = "KUNYA" }
}
named_enum! {
    /// Sex as recorded.
    pub enum Sex("SEX_") { Male = "MALE", Female = "FEMALE", Unknown = "UNKNOWN" }
}
named_enum! {
    /// Precision of an approximate date.
    pub enum DatePrecision("DATE_PRECISION_") { Exact = "EXACT", Month = "MONTH", Year = "YEAR", Estimated = "ESTIMATED" }
}
named_enum! {
    /// How a nationality is known.
    pub enum NationalityBasis("NATIONALITY_BASIS_") { Claimed = "CLAIMED", Documented = "DOCUMENTED", Verified = "VERIFIED" }
}
named_enum! {
    /// Category of person.
    pub enum Category("PERSON_CATEGORY_") { AdultMale = "ADULT_MALE", AdultFemale = "ADULT_FEMALE", Child = "CHILD", UnaccompaniedChild = "UNACCOMPANIED_CHILD" }
}
named_enum! {
    /// How sure the registry is of an identity.
    pub enum Confidence("IDENTITY_CONFIDENCE_") { Low = "LOW", Medium = "MEDIUM", High = "HIGH", Confirmed = "CONFIRMED" }
}
named_enum! {
    /// What a biometric record captures.
    pub enum Modality("BIOMETRIC_MODALITY_") { Fingerprint = "FINGERPRINT", Iris = "IRIS", Face = "FACE", Dna = "DNA" }
}
named_enum! {
    /// Legal status.
    pub enum LegalStatus("LEGAL_STATUS_") {
        None = "NONE", Investigated = "INVESTIGATED", ChargedAtHome = "CHARGED_AT_HOME",
        TriedInIraq = "TRIED_IN_IRAQ", Convicted = "CONVICTED", InRehabilitation = "IN_REHABILITATION",
    }
}
named_enum! {
    /// Custody status; see [`CustodyStatus::can_become`].
    pub enum CustodyStatus("CUSTODY_STATUS_") {
        Registered = "REGISTERED", InCustody = "IN_CUSTODY", InTransfer = "IN_TRANSFER",
        Hospitalised = "HOSPITALISED", InRehabilitation = "IN_REHABILITATION", Escaped = "ESCAPED",
        Recaptured = "RECAPTURED", Unaccounted = "UNACCOUNTED", HandedOver = "HANDED_OVER",
        Released = "RELEASED", Deceased = "DECEASED",
    }
}
named_enum! {
    /// What a receiving state does with a person handed over.
    pub enum Disposition("DISPOSITION_") {
        ProsecutionAtHome = "PROSECUTION_AT_HOME", Rehabilitation = "REHABILITATION",
        Reintegration = "REINTEGRATION", TrialInThirdState = "TRIAL_IN_THIRD_STATE", Declined = "DECLINED",
    }
}
named_enum! {
    /// Review state of a duplicate candidate.
    pub enum DuplicateState("DUPLICATE_STATE_") { Open = "OPEN", Invalid = "INVALID", Merged = "MERGED" }
}
named_enum! {
    /// Kinds of relationship.
    pub enum RelationshipKind("RELATIONSHIP_KIND_") { Parent = "PARENT", Child = "CHILD", Spouse = "SPOUSE", Sibling = "SIBLING", Guardian = "GUARDIAN" }
}
named_enum! {
    /// Kinds of identity document.
    pub enum DocumentKind("DOCUMENT_KIND_") { Passport = "PASSPORT", NationalId = "NATIONAL_ID", BirthCertificate = "BIRTH_CERTIFICATE", FamilyBook = "FAMILY_BOOK", Other = "OTHER" }
}
named_enum! {
    /// How an identity was verified.
    pub enum VerificationMethod("VERIFICATION_METHOD_") { Consular = "CONSULAR", Document = "DOCUMENT", Biometric = "BIOMETRIC", Dna = "DNA" }
}
named_enum! {
    /// Outcome of a verification.
    pub enum VerificationResult("VERIFICATION_RESULT_") { Confirmed = "CONFIRMED", Refuted = "REFUTED", Inconclusive = "INCONCLUSIVE" }
}

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most names, nationalities or references on one person.
pub const MAX_ITEMS: usize = 32;

/// One name of a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonName {
    /// As written.
    pub full_name: String,
    /// Kind.
    pub kind: NameKind,
    /// ISO 15924 script.
    pub script: String,
}

/// A date known to some precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproxDate {
    /// Year.
    pub year: i32,
    /// Month or 0.
    pub month: u32,
    /// Day or 0.
    pub day: u32,
    /// Precision.
    pub precision: DatePrecision,
}

/// A nationality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nationality {
    /// ISO 3166-1 alpha-2.
    pub state: String,
    /// Basis.
    pub basis: NationalityBasis,
    /// When revoked (micros), if revoked.
    pub revoke_time: Option<i64>,
    /// Why revoked.
    pub revocation_reason: String,
}

/// A biometric reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiometricRef {
    /// System.
    pub system: String,
    /// Reference in the system.
    pub reference: String,
    /// Modality.
    pub modality: Modality,
}

/// The fields of a person that callers write (create and update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonData {
    /// At least one.
    pub names: Vec<PersonName>,
    /// Sex.
    pub sex: Sex,
    /// Birth date.
    pub birth_date: Option<ApproxDate>,
    /// Nationalities.
    pub nationalities: Vec<Nationality>,
    /// Category.
    pub category: Category,
    /// Confidence.
    pub identity_confidence: Confidence,
    /// Biometric references.
    pub biometric_references: Vec<BiometricRef>,
    /// Legal status, if known.
    pub legal_status: Option<LegalStatus>,
}

/// A stored person.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Id (UUIDv7).
    pub id: String,
    /// Caller-written fields.
    pub data: PersonData,
    /// Custody status.
    pub custody_status: CustodyStatus,
    /// Current facility or empty.
    pub facility_id: String,
    /// Current section or empty.
    pub section_id: String,
    /// Survivor's id if merged, or empty.
    pub merged_into: String,
    /// Receiving state after hand-over, or empty.
    pub receiving_state: String,
    /// Disposition after hand-over.
    pub disposition: Option<Disposition>,
    /// Id of the household the person last joined, or empty.
    pub household: String,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
    /// Incremented on every change; the etag.
    pub version: i64,
}

impl Person {
    /// A newly registered person: version 1, not yet in custody.
    pub fn registered(id: String, data: PersonData, now: i64) -> Self {
        Person {
            id,
            data,
            custody_status: CustodyStatus::Registered,
            facility_id: String::new(),
            section_id: String::new(),
            merged_into: String::new(),
            receiving_state: String::new(),
            disposition: None,
            household: String::new(),
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    /// Resource name.
    pub fn name(&self) -> String {
        format!("persons/{}", self.id)
    }
    /// The etag for this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
    /// States whose agencies may see this person: its nationalities that are not revoked.
    pub fn scope_states(&self) -> Vec<String> {
        self.data.active_states()
    }

    /// Calls `f` with what decides who sees this person.
    pub fn with_subject<R>(&self, f: impl FnOnce(&concord_platform::auth::Subject<'_>) -> R) -> R {
        let states = self.scope_states();
        f(&concord_platform::auth::Subject {
            id: &self.id,
            states: &states,
            facility: &self.facility_id,
            category: self.data.category.as_str(),
        })
    }
}

impl PersonData {
    /// States of the nationalities that are not revoked.
    pub fn active_states(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nationalities
            .iter()
            .filter(|n| n.revoke_time.is_none())
            .map(|n| n.state.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The name shown in lists: the first primary name, else the first name.
    pub fn display_name(&self) -> &str {
        self.names
            .iter()
            .find(|n| n.kind == NameKind::Primary)
            .or_else(|| self.names.first())
            .map_or("", |n| n.full_name.as_str())
    }

    /// Checks the rules that need the whole record; `prefix` is the field path (`person`).
    pub fn validate(&self, prefix: &str, today_year: i32) -> Result<()> {
        let mut v = Violations::new();
        if self.names.is_empty() {
            v.add(format!("{prefix}.names"), "at least one name is required");
        }
        if self.names.len() > MAX_ITEMS {
            v.add(format!("{prefix}.names"), format!("at most {MAX_ITEMS} names"));
        }
        for (i, n) in self.names.iter().enumerate() {
            let f = format!("{prefix}.names[{i}].full_name");
            let chars = n.full_name.chars().count();
            if n.full_name.trim().is_empty() {
                v.add(f, "must not be empty");
            } else if chars > MAX_NAME_CHARS {
                v.add(f, format!("must be at most {MAX_NAME_CHARS} characters, got {chars}"));
            } else if n.full_name.chars().any(char::is_control) {
                v.add(f, "must not contain control characters");
            } else if crate::search_keys::tokens(&n.full_name).is_empty() {
                v.add(f, "must contain at least one letter");
            }
        }
        if let Some(d) = &self.birth_date {
            v.absorb(validate_date(d, &format!("{prefix}.birth_date"), today_year));
        }
        if self.nationalities.len() > MAX_ITEMS {
            v.add(format!("{prefix}.nationalities"), format!("at most {MAX_ITEMS} nationalities"));
        }
        for (i, n) in self.nationalities.iter().enumerate() {
            v.absorb(validate_state(&n.state, &format!("{prefix}.nationalities[{i}].state")));
            if n.revocation_reason.chars().count() > 1000 {
                v.add(
                    format!("{prefix}.nationalities[{i}].revocation_reason"),
                    "must be at most 1000 characters",
                );
            }
            if self.nationalities[..i].iter().any(|o| o.state == n.state) {
                v.add(
                    format!("{prefix}.nationalities[{i}].state"),
                    format!("{} is listed twice", n.state),
                );
            }
        }
        if self.biometric_references.len() > MAX_ITEMS {
            v.add(
                format!("{prefix}.biometric_references"),
                format!("at most {MAX_ITEMS} references"),
            );
        }
        for (i, b) in self.biometric_references.iter().enumerate() {
            if b.system.trim().is_empty() || b.system.len() > 100 {
                v.add(
                    format!("{prefix}.biometric_references[{i}].system"),
                    "must be 1 to 100 characters",
                );
            }
            if b.reference.trim().is_empty() || b.reference.len() > 200 {
                v.add(
                    format!("{prefix}.biometric_references[{i}].reference"),
                    "must be 1 to 200 characters",
                );
            }
        }
        v.finish(())
    }
}

/// Checks an ISO 3166-1 alpha-2 code (upper case).
pub fn validate_state(s: &str, field: &str) -> Result<()> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{} is not an ISO 3166-1 alpha-2 code like \"FR\"", quote(s)),
        ))
    }
}

/// Checks an approximate date against its precision and the calendar.
pub fn validate_date(d: &ApproxDate, field: &str, today_year: i32) -> Result<()> {
    let mut v = Violations::new();
    if d.year < 1900 || d.year > today_year {
        v.add(
            format!("{field}.year"),
            format!("must be between 1900 and {today_year}, got {}", d.year),
        );
    }
    let needs_month = matches!(d.precision, DatePrecision::Exact | DatePrecision::Month);
    let needs_day = d.precision == DatePrecision::Exact;
    match (needs_month, d.month) {
        (true, 1..=12) | (false, 0) => {}
        (true, m) => {
            v.add(format!("{field}.month"), format!("must be 1-12 for this precision, got {m}"))
        }
        (false, m) => v.add(
            format!("{field}.month"),
            format!("must be 0 when the precision is YEAR or ESTIMATED, got {m}"),
        ),
    }
    if needs_day {
        let max = days_in_month(d.year, d.month);
        if d.day == 0 || d.day > max {
            v.add(
                format!("{field}.day"),
                format!("{}-{:02} has no day {}", d.year, d.month, d.day),
            );
        }
    } else if d.day != 0 {
        v.add(format!("{field}.day"), "must be 0 unless the precision is EXACT");
    }
    v.finish(())
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// The custody transitions, each an explicit RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// REGISTERED or RECAPTURED -> IN_CUSTODY.
    Admit,
    /// IN_CUSTODY -> IN_TRANSFER.
    StartTransfer,
    /// IN_CUSTODY -> HOSPITALISED.
    Hospitalise,
    /// IN_CUSTODY -> IN_REHABILITATION.
    AdmitToRehabilitation,
    /// IN_TRANSFER, HOSPITALISED, IN_REHABILITATION, UNACCOUNTED -> IN_CUSTODY.
    ReturnToCustody,
    /// IN_CUSTODY -> ESCAPED.
    Escape,
    /// ESCAPED -> RECAPTURED.
    Recapture,
    /// IN_CUSTODY -> UNACCOUNTED.
    MarkUnaccounted,
    /// IN_CUSTODY -> HANDED_OVER.
    HandOver,
    /// IN_CUSTODY -> RELEASED.
    Release,
    /// Not terminal -> DECEASED.
    Death,
}

impl CustodyStatus {
    /// Terminal statuses admit no transition.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::HandedOver | Self::Released | Self::Deceased)
    }
}

impl Transition {
    /// The status after this transition from `from`, or `None` if it is not allowed.
    pub fn apply(self, from: CustodyStatus) -> Option<CustodyStatus> {
        use CustodyStatus as S;
        let to = match (self, from) {
            (Self::Admit, S::Registered | S::Recaptured) => S::InCustody,
            (Self::StartTransfer, S::InCustody) => S::InTransfer,
            (Self::Hospitalise, S::InCustody) => S::Hospitalised,
            (Self::AdmitToRehabilitation, S::InCustody) => S::InRehabilitation,
            (
                Self::ReturnToCustody,
                S::InTransfer | S::Hospitalised | S::InRehabilitation | S::Unaccounted,
            ) => S::InCustody,
            (Self::Escape, S::InCustody) => S::Escaped,
            (Self::Recapture, S::Escaped) => S::Recaptured,
            (Self::MarkUnaccounted, S::InCustody) => S::Unaccounted,
            (Self::HandOver, S::InCustody) => S::HandedOver,
            (Self::Release, S::InCustody) => S::Released,
            (Self::Death, s) if !s.is_terminal() => S::Deceased,
            _ => return None,
        };
        Some(to)
    }

    /// Statuses this transition may start from, for error messages.
    pub fn allowed_from(self) -> Vec<&'static str> {
        CustodyStatus::ALL
            .iter()
            .filter(|s| self.apply(**s).is_some())
            .map(|s| s.as_str())
            .collect()
    }

    /// Method name, for idempotency records and errors.
    pub fn method(self) -> &'static str {
        match self {
            Self::Admit => "AdmitPerson",
            Self::StartTransfer => "StartTransfer",
            Self::Hospitalise => "HospitalisePerson",
            Self::AdmitToRehabilitation => "AdmitToRehabilitation",
            Self::ReturnToCustody => "ReturnToCustody",
            Self::Escape => "RecordEscape",
            Self::Recapture => "RecordRecapture",
            Self::MarkUnaccounted => "MarkUnaccounted",
            Self::HandOver => "RecordHandOver",
            Self::Release => "RecordRelease",
            Self::Death => "RecordDeath",
        }
    }
}

/// A custody transition as requested.
#[derive(Debug, Clone)]
pub struct TransitionRequest {
    /// Which.
    pub transition: Transition,
    /// Person id.
    pub person_id: String,
    /// Facility after the transition (required for Admit, ReturnToCustody, StartTransfer's
    /// destination, AdmitToRehabilitation).
    pub facility_id: String,
    /// Section, if known.
    pub section_id: String,
    /// Incident, destination, request: what the timeline entry refers to.
    pub reference: String,
    /// Receiving state (hand-over).
    pub receiving_state: String,
    /// Disposition (hand-over).
    pub disposition: Option<Disposition>,
    /// Why.
    pub reason: String,
    /// Who reported it.
    pub source: String,
    /// When it happened (micros).
    pub occur_time: i64,
    /// Expected version, if the caller sent an etag.
    pub expected_version: Option<i64>,
    /// Idempotency key and fingerprint.
    pub request_id: Option<(String, String)>,
}

/// One entry of the custody timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct CustodyEvent {
    /// Id.
    pub id: String,
    /// Person id.
    pub person_id: String,
    /// Before.
    pub from_status: CustodyStatus,
    /// After.
    pub to_status: CustodyStatus,
    /// Facility after.
    pub facility_id: String,
    /// Why.
    pub reason: String,
    /// Who reported.
    pub source: String,
    /// What it refers to.
    pub reference: String,
    /// Micros.
    pub occur_time: i64,
    /// Micros.
    pub record_time: i64,
    /// Agency that recorded it.
    pub recorded_by: String,
}

/// A possible duplicate pair.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateCandidate {
    /// Id.
    pub id: String,
    /// Record being created or updated.
    pub person_id: String,
    /// Existing record.
    pub other_person_id: String,
    /// 0..1.
    pub score: f64,
    /// What matched.
    pub reasons: Vec<String>,
    /// Review state.
    pub state: DuplicateState,
    /// Survivor after a merge.
    pub surviving_person_id: String,
    /// Reviewer's reason.
    pub review_reason: String,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
    /// Version (etag).
    pub version: i64,
}

/// Parses an etag of the form `"N"` (quotes optional) into a version.
pub fn parse_etag(etag: &str, field: &str) -> Result<Option<i64>> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.trim_matches('"').parse::<i64>().map(Some).map_err(|_| {
        Error::invalid(field, format!("{} is not an etag returned by this service", quote(etag)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custody_machine_matches_the_design() {
        use CustodyStatus as S;
        assert_eq!(Transition::Admit.apply(S::Registered), Some(S::InCustody));
        assert_eq!(Transition::Admit.apply(S::InCustody), None);
        assert_eq!(Transition::Escape.apply(S::InCustody), Some(S::Escaped));
        assert_eq!(Transition::Recapture.apply(S::Escaped), Some(S::Recaptured));
        assert_eq!(Transition::Admit.apply(S::Recaptured), Some(S::InCustody));
        assert_eq!(Transition::ReturnToCustody.apply(S::Unaccounted), Some(S::InCustody));
        assert_eq!(Transition::HandOver.apply(S::Registered), None);
        for terminal in [S::HandedOver, S::Released, S::Deceased] {
            for t in [
                Transition::Admit,
                Transition::Death,
                Transition::ReturnToCustody,
                Transition::Release,
            ] {
                assert_eq!(t.apply(terminal), None, "{t:?} from {terminal:?}");
            }
        }
    }

    #[test]
    fn dates_are_checked_against_precision_and_calendar() {
        let d = |year, month, day, precision| ApproxDate { year, month, day, precision };
        assert!(validate_date(&d(2004, 2, 29, DatePrecision::Exact), "b", 2026).is_ok());
        assert!(validate_date(&d(2003, 2, 29, DatePrecision::Exact), "b", 2026).is_err());
        assert!(validate_date(&d(1990, 0, 0, DatePrecision::Estimated), "b", 2026).is_ok());
        assert!(validate_date(&d(1990, 3, 0, DatePrecision::Year), "b", 2026).is_err());
        assert!(validate_date(&d(2030, 1, 1, DatePrecision::Exact), "b", 2026).is_err());
        assert!(validate_date(&d(1990, 13, 0, DatePrecision::Month), "b", 2026).is_err());
    }
}
