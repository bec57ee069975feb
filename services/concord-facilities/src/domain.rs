//! The facilities' domain: kinds, the security status machine, sections and their capacity,
//! and the validation every write goes through.

use concord_platform::error::Violations;
use concord_platform::named_enum;
use serde::{Deserialize, Serialize};

named_enum! {
    /// Kinds of facility.
    pub enum FacilityKind("FACILITY_KIND_") {
        Prison = "PRISON", Camp = "CAMP", CampAnnex = "CAMP_ANNEX", Hospital = "HOSPITAL",
        RehabilitationCentre = "REHABILITATION_CENTRE",
    }
}
named_enum! {
    /// Security status; see [`SecurityStatus::can_become`].
    pub enum SecurityStatus("SECURITY_STATUS_") {
        Normal = "NORMAL", Elevated = "ELEVATED", High = "HIGH", Lockdown = "LOCKDOWN",
        Compromised = "COMPROMISED", Recovering = "RECOVERING", HandedOver = "HANDED_OVER",
        Closed = "CLOSED",
    }
}
named_enum! {
    /// Sex a place is for.
    pub enum PlaceSex("PLACE_SEX_") { Male = "MALE", Female = "FEMALE" }
}
named_enum! {
    /// Age bands places are counted in.
    pub enum AgeBand("AGE_BAND_") { Child = "CHILD", Adolescent = "ADOLESCENT", Adult = "ADULT" }
}
named_enum! {
    /// Kinds of timeline entry.
    pub enum EventKind("FACILITY_EVENT_KIND_") { SecurityStatus = "SECURITY_STATUS", Custodian = "CUSTODIAN" }
}

named_enum! {
    /// Kinds of incident.
    pub enum IncidentKind("INCIDENT_KIND_") {
        Riot = "RIOT", Escape = "ESCAPE", ExternalAttack = "EXTERNAL_ATTACK", Fire = "FIRE",
        Shelling = "SHELLING", Disease = "DISEASE", AidCut = "AID_CUT",
    }
}
named_enum! {
    /// Lifecycle of an incident; see [`IncidentState::can_become`].
    pub enum IncidentState("INCIDENT_STATE_") {
        Reported = "REPORTED", Confirmed = "CONFIRMED", Contained = "CONTAINED",
        Reconciled = "RECONCILED", Closed = "CLOSED",
    }
}

impl IncidentState {
    /// REPORTED -> CONFIRMED -> CONTAINED -> RECONCILED -> CLOSED, and REPORTED -> CLOSED for
    /// an incident that proves unfounded.
    pub fn can_become(self, to: IncidentState) -> bool {
        use IncidentState::*;
        matches!(
            (self, to),
            (Reported, Confirmed | Closed)
                | (Confirmed, Contained)
                | (Contained, Reconciled)
                | (Reconciled, Closed)
        )
    }

    /// The states `self` may become, for error messages.
    pub fn successors(self) -> Vec<&'static str> {
        IncidentState::ALL.iter().filter(|s| self.can_become(**s)).map(|s| s.as_str()).collect()
    }
}

/// A stored incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// Id.
    pub id: String,
    /// Facility id.
    pub facility_id: String,
    /// Kind.
    pub kind: IncidentKind,
    /// Lifecycle state.
    pub state: IncidentState,
    /// What is known.
    pub description: String,
    /// Killed, injured, missing, as last reported.
    pub killed: i64,
    /// Injured.
    pub injured: i64,
    /// Missing.
    pub missing: i64,
    /// Who reported it.
    pub reporter: String,
    /// Micros.
    pub occur_time: i64,
    /// Version, for etags.
    pub version: i64,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
}

impl Incident {
    /// `facilities/{facility}/incidents/{id}`.
    pub fn name(&self) -> String {
        format!("facilities/{}/incidents/{}", self.facility_id, self.id)
    }
}

impl SecurityStatus {
    /// The state machine: NORMAL <-> ELEVATED <-> HIGH -> LOCKDOWN -> COMPROMISED -> RECOVERING
    /// -> NORMAL, LOCKDOWN -> HIGH when lifted, RECOVERING -> LOCKDOWN again if control is
    /// lost; any status but the final ones -> HANDED_OVER or CLOSED.
    pub fn can_become(self, to: SecurityStatus) -> bool {
        use SecurityStatus::*;
        if self.is_final() || self == to {
            return false;
        }
        matches!(
            (self, to),
            (_, HandedOver | Closed)
                | (Normal, Elevated)
                | (Elevated, Normal | High)
                | (High, Elevated | Lockdown)
                | (Lockdown, High | Compromised)
                | (Compromised, Recovering)
                | (Recovering, Normal | Lockdown | Compromised)
        )
    }

    /// HANDED_OVER and CLOSED: nothing follows.
    pub fn is_final(self) -> bool {
        matches!(self, SecurityStatus::HandedOver | SecurityStatus::Closed)
    }

    /// The statuses `self` may become, for error messages.
    pub fn successors(self) -> Vec<&'static str> {
        SecurityStatus::ALL.iter().filter(|s| self.can_become(**s)).map(|s| s.as_str()).collect()
    }
}

/// Places for one sex and age band.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Sex.
    pub sex: PlaceSex,
    /// Age band.
    pub age_band: AgeBand,
    /// Places.
    pub places: i32,
}

/// A section of a facility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Id within the facility.
    pub section_id: String,
    /// Display name.
    pub display_name: String,
    /// Places by sex and age band.
    pub capacities: Vec<Capacity>,
}

/// Where a facility is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
    /// Region, for people.
    pub region: String,
}

/// The fields of a facility its callers write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FacilityData {
    /// Display name.
    pub display_name: String,
    /// Kind.
    pub kind: FacilityKind,
    /// Location.
    pub location: Location,
    /// Sections.
    pub sections: Vec<Section>,
}

/// A stored facility.
#[derive(Debug, Clone, PartialEq)]
pub struct Facility {
    /// Id.
    pub id: String,
    /// Written fields.
    pub data: FacilityData,
    /// Agency that runs it.
    pub custodian_agency: String,
    /// Security status.
    pub security_status: SecurityStatus,
    /// Why.
    pub security_status_reason: String,
    /// Micros.
    pub security_status_time: i64,
    /// Version, for etags.
    pub version: i64,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
}

impl Facility {
    /// `facilities/{id}`.
    pub fn name(&self) -> String {
        format!("facilities/{}", self.id)
    }
    /// `"N"`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FacilityEvent {
    /// Id.
    pub id: String,
    /// Facility id.
    pub facility_id: String,
    /// What changed.
    pub kind: EventKind,
    /// Status before and after (status changes), else `None`.
    pub from_status: Option<SecurityStatus>,
    /// Status after.
    pub to_status: Option<SecurityStatus>,
    /// Custodian before (custodian changes), else empty.
    pub from_custodian: String,
    /// Custodian after.
    pub to_custodian: String,
    /// Why.
    pub reason: String,
    /// Who reported it.
    pub reporter: String,
    /// Agency that recorded it.
    pub recorded_by: String,
    /// Micros.
    pub occur_time: i64,
    /// Micros.
    pub record_time: i64,
}

/// A requested change of status or custodian.
#[derive(Debug, Clone)]
pub struct Change {
    /// Facility id.
    pub facility_id: String,
    /// New status (status changes).
    pub to_status: Option<SecurityStatus>,
    /// New custodian (custodian changes).
    pub to_custodian: Option<String>,
    /// Why.
    pub reason: String,
    /// Who reported it.
    pub reporter: String,
    /// Micros.
    pub occur_time: i64,
    /// Expected version, from an etag.
    pub expected_version: Option<i64>,
    /// Idempotency key and fingerprint.
    pub request_id: Option<(String, String)>,
}

/// Most sections per facility, and places per capacity line.
pub const MAX_SECTIONS: usize = 200;
/// Most places in one capacity line.
pub const MAX_PLACES: i32 = 200_000;

/// True for ids of facilities, sections and agencies: 2-63 lower-case letters, digits and
/// '-', starting with a letter. Facility ids are also safe in the registry's scope tags.
pub fn is_id(s: &str) -> bool {
    (2..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl FacilityData {
    /// Checks everything a caller wrote, naming each field at fault under `prefix`.
    pub fn validate(&self, v: &mut Violations, prefix: &str) {
        let name = self.display_name.trim();
        if name.is_empty() {
            v.add(format!("{prefix}.display_name"), "is required");
        } else if name.chars().count() > 200 {
            v.add(format!("{prefix}.display_name"), "must be at most 200 characters");
        }
        let l = &self.location;
        if !(-90.0..=90.0).contains(&l.latitude) || !l.latitude.is_finite() {
            v.add(format!("{prefix}.location.latitude"), "must be between -90 and 90");
        }
        if !(-180.0..=180.0).contains(&l.longitude) || !l.longitude.is_finite() {
            v.add(format!("{prefix}.location.longitude"), "must be between -180 and 180");
        }
        if l.region.chars().count() > 200 {
            v.add(format!("{prefix}.location.region"), "must be at most 200 characters");
        }
        if self.sections.is_empty() {
            v.add(format!("{prefix}.sections"), "at least one section is required");
        }
        if self.sections.len() > MAX_SECTIONS {
            v.add(format!("{prefix}.sections"), format!("at most {MAX_SECTIONS} sections"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sections.iter().enumerate() {
            let at = format!("{prefix}.sections[{i}]");
            if !is_id(&s.section_id) {
                v.add(
                    format!("{at}.section_id"),
                    "must be 2-63 lower-case letters, digits and '-', starting with a letter",
                );
            } else if !seen.insert(s.section_id.as_str()) {
                v.add(format!("{at}.section_id"), format!("'{}' is used twice", s.section_id));
            }
            if s.display_name.chars().count() > 200 {
                v.add(format!("{at}.display_name"), "must be at most 200 characters");
            }
            let mut bands = std::collections::HashSet::new();
            for (j, c) in s.capacities.iter().enumerate() {
                if !(0..=MAX_PLACES).contains(&c.places) {
                    v.add(
                        format!("{at}.capacities[{j}].places"),
                        format!("must be 0 to {MAX_PLACES}"),
                    );
                }
                if !bands.insert((c.sex, c.age_band)) {
                    v.add(
                        format!("{at}.capacities[{j}]"),
                        format!("{} {} is listed twice", c.sex, c.age_band),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SecurityStatus::*;
    use super::*;

    #[test]
    fn the_security_machine_escalates_step_by_step_and_ends_in_handover_or_closure() {
        assert!(Normal.can_become(Elevated));
        assert!(!Normal.can_become(Lockdown), "no jumping from NORMAL to LOCKDOWN");
        assert!(High.can_become(Lockdown));
        assert!(Lockdown.can_become(Compromised));
        assert!(!Compromised.can_become(Normal), "recovery comes first");
        assert!(Compromised.can_become(Recovering));
        assert!(Recovering.can_become(Normal));
        for s in SecurityStatus::ALL {
            assert!(!s.can_become(*s));
            assert_eq!(s.can_become(Closed), !s.is_final(), "{s}");
        }
        assert!(HandedOver.successors().is_empty());
        assert!(Closed.successors().is_empty());
    }

    #[test]
    fn incidents_close_after_reconciliation_or_at_once_when_unfounded() {
        use IncidentState::*;
        assert!(Reported.can_become(Closed));
        assert!(!Confirmed.can_become(Closed), "a confirmed incident is reconciled first");
        assert!(Contained.can_become(Reconciled));
        assert!(Closed.successors().is_empty());
    }

    #[test]
    fn ids_are_safe_as_scope_tags() {
        assert!(is_id("al-hol"));
        assert!(is_id("ghwayran-2"));
        for bad in ["", "a", "Al-Hol", "al_hol", "1camp", "al hol", "al|hol", "al%"] {
            assert!(!is_id(bad), "{bad}");
        }
    }
}

/// Who may be placed in which kind of facility. Children are never placed in an adult
/// prison; rehabilitation centres take boys from an age set by configuration until they are
/// adults; camps, annexes and hospitals take anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeparationRules {
    /// Youngest age at which a boy may go to a rehabilitation centre.
    pub rehabilitation_min_age: i32,
}

impl Default for SeparationRules {
    fn default() -> Self {
        Self { rehabilitation_min_age: 12 }
    }
}

impl SeparationRules {
    /// Why someone of `sex`, `age` (years; `None` when the birth year is unknown) and age
    /// `band` may not be placed in a facility of `kind`, or `None` if they may.
    pub fn refusal(
        &self,
        kind: FacilityKind,
        sex: Option<PlaceSex>,
        age: Option<i32>,
        band: AgeBand,
    ) -> Option<String> {
        let Some(sex) = sex else {
            return Some("sex is not recorded in the registry, and places are by sex".into());
        };
        match kind {
            FacilityKind::Prison if band != AgeBand::Adult => {
                Some("children are never placed in an adult prison".into())
            }
            FacilityKind::RehabilitationCentre => {
                let min = self.rehabilitation_min_age;
                match (sex, age) {
                    (PlaceSex::Male, Some(a)) if a >= min && a < 18 => None,
                    _ => Some(format!("rehabilitation centres take boys aged {min} to 17")),
                }
            }
            _ => None,
        }
    }
}

named_enum! {
    /// Lifecycle of a movement; see [`MovementState::can_become`].
    pub enum MovementState("MOVEMENT_STATE_") {
        Planned = "PLANNED", Approved = "APPROVED", InTransit = "IN_TRANSIT",
        Arrived = "ARRIVED", Aborted = "ABORTED",
    }
}

impl MovementState {
    /// PLANNED -> APPROVED -> IN_TRANSIT -> ARRIVED; PLANNED, APPROVED or IN_TRANSIT ->
    /// ABORTED.
    pub fn can_become(self, to: MovementState) -> bool {
        use MovementState::*;
        matches!(
            (self, to),
            (Planned, Approved)
                | (Approved, InTransit)
                | (InTransit, Arrived)
                | (Planned | Approved | InTransit, Aborted)
        )
    }

    /// PLANNED, APPROVED and IN_TRANSIT: the movement holds its people.
    pub fn is_open(self) -> bool {
        matches!(self, MovementState::Planned | MovementState::Approved | MovementState::InTransit)
    }

    /// The states `self` may become, for error messages.
    pub fn successors(self) -> Vec<&'static str> {
        MovementState::ALL.iter().filter(|s| self.can_become(**s)).map(|s| s.as_str()).collect()
    }
}

named_enum! {
    /// Whether the registry has recorded a step for a person.
    pub enum UpdateStatus("REGISTRY_UPDATE_") {
        Pending = "PENDING", Applied = "APPLIED", Refused = "REFUSED",
    }
}

named_enum! {
    /// What the service records in the registry for a person.
    pub enum Step("") {
        Depart = "depart", Arrive = "arrive", Return = "return", Unaccounted = "unaccounted",
    }
}

/// One person on a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Person id.
    pub person_id: String,
    /// Section at the destination (empty until approval assigns one, if not given).
    pub section_id: String,
    /// Sex, from the projection.
    pub sex: Option<PlaceSex>,
    /// Age band at planning.
    pub age_band: AgeBand,
    /// Age in years at planning; -1 when the birth year is unknown.
    pub age: i32,
    /// The last step sent to the registry and what came of it.
    pub update: Option<(UpdateStatus, String)>,
}

/// A stored movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// Id.
    pub id: String,
    /// Source facility id.
    pub source: String,
    /// Destination facility id.
    pub destination: String,
    /// State.
    pub state: MovementState,
    /// Why.
    pub reason: String,
    /// Why it was aborted.
    pub abort_reason: String,
    /// Relocation plan id, or empty.
    pub relocation_plan: String,
    /// Agency that planned it.
    pub planned_by: String,
    /// Agency that approved it.
    pub approved_by: String,
    /// Micros, 0 until it leaves.
    pub depart_time: i64,
    /// Micros, 0 until it arrives.
    pub arrive_time: i64,
    /// Version, for etags.
    pub version: i64,
    /// Micros.
    pub create_time: i64,
    /// Micros.
    pub update_time: i64,
    /// The manifest, by person id.
    pub manifest: Vec<ManifestEntry>,
}

impl Movement {
    /// `movements/{id}`.
    pub fn name(&self) -> String {
        format!("movements/{}", self.id)
    }
}

/// A stored headcount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headcount {
    /// Id.
    pub id: String,
    /// Facility id.
    pub facility_id: String,
    /// Who counted.
    pub reporter: String,
    /// Incident name, or empty.
    pub incident: String,
    /// Micros.
    pub count_time: i64,
    /// People the projection had at the facility.
    pub expected_count: i64,
    /// Person ids counted present.
    pub counted: Vec<String>,
    /// Expected and not counted.
    pub missing: Vec<String>,
    /// Counted and not expected.
    pub unrecorded: Vec<String>,
    /// Micros, 0 until the missing are marked.
    pub unaccounted_mark_time: i64,
    /// Agency that recorded it.
    pub recorded_by: String,
    /// Micros.
    pub create_time: i64,
    /// Per missing person, once marked: what the registry made of it.
    pub updates: Vec<(String, UpdateStatus, String)>,
}

impl Headcount {
    /// `facilities/{facility}/headcounts/{id}`.
    pub fn name(&self) -> String {
        format!("facilities/{}/headcounts/{}", self.facility_id, self.id)
    }
}

/// Places at one facility per section, sex and age band: how many there are, how many people
/// are held there, how many approved movements have reserved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Room {
    /// Section ids in the facility's order.
    sections: Vec<String>,
    /// Per (section, sex, band).
    lines: std::collections::BTreeMap<(String, PlaceSex, AgeBand), RoomLine>,
}

/// One line of a [`Room`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomLine {
    /// Places.
    pub places: i64,
    /// People held.
    pub held: i64,
    /// Places reserved by approved movements.
    pub reserved: i64,
}

impl RoomLine {
    /// Places neither held nor reserved (never below 0).
    pub fn free(&self) -> i64 {
        (self.places - self.held - self.reserved).max(0)
    }
}

impl Room {
    /// The places of `f`, empty.
    pub fn new(f: &FacilityData) -> Self {
        let mut r = Room::default();
        for s in &f.sections {
            r.sections.push(s.section_id.clone());
            for c in &s.capacities {
                r.lines.entry((s.section_id.clone(), c.sex, c.age_band)).or_default().places +=
                    i64::from(c.places);
            }
        }
        r
    }

    /// The line of `section` (or, when it is empty or not a section of the facility, the
    /// first with a free place of the class, else the first with the class at all).
    fn line_for(&mut self, section: &str, sex: PlaceSex, band: AgeBand) -> &mut RoomLine {
        let key = if self.lines.contains_key(&(section.to_string(), sex, band)) {
            section.to_string()
        } else {
            let with_class = |free: bool| {
                self.sections.iter().find(|s| {
                    self.lines
                        .get(&((*s).clone(), sex, band))
                        .is_some_and(|l| !free || l.free() > 0)
                })
            };
            with_class(true).or_else(|| with_class(false)).cloned().unwrap_or_default()
        };
        self.lines.entry((key, sex, band)).or_default()
    }

    /// Counts someone held in `section` (people whose section is not recorded fill the
    /// first free place of their class). People of unrecorded sex hold no place.
    pub fn hold(&mut self, section: &str, sex: Option<PlaceSex>, band: AgeBand) {
        if let Some(sex) = sex {
            self.line_for(section, sex, band).held += 1;
        }
    }

    /// Counts a place reserved in `section`.
    pub fn reserve(&mut self, section: &str, sex: PlaceSex, band: AgeBand) {
        self.line_for(section, sex, band).reserved += 1;
    }

    /// Takes a place of `sex` and `band`: in `section` if given, else in the first section
    /// with one free. The section taken, or `None` when there is no free place.
    pub fn take(&mut self, section: &str, sex: PlaceSex, band: AgeBand) -> Option<String> {
        let key = if section.is_empty() {
            self.sections
                .iter()
                .find(|s| self.lines.get(&((*s).clone(), sex, band)).is_some_and(|l| l.free() > 0))?
                .clone()
        } else {
            section.to_string()
        };
        let line = self.lines.get_mut(&(key.clone(), sex, band))?;
        if line.free() == 0 {
            return None;
        }
        line.reserved += 1;
        Some(key)
    }

    /// Every line, for messages and plans.
    pub fn lines(&self) -> impl Iterator<Item = (&(String, PlaceSex, AgeBand), &RoomLine)> {
        self.lines.iter()
    }

    /// Whether `section` is a section of the facility.
    pub fn has_section(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    fn facility() -> FacilityData {
        let cap = |sex, age_band, places| Capacity { sex, age_band, places };
        FacilityData {
            display_name: "x".into(),
            kind: FacilityKind::Camp,
            location: Location { latitude: 0.0, longitude: 0.0, region: String::new() },
            sections: vec![
                Section {
                    section_id: "a".into(),
                    display_name: "A".into(),
                    capacities: vec![cap(PlaceSex::Female, AgeBand::Adult, 2)],
                },
                Section {
                    section_id: "b".into(),
                    display_name: "B".into(),
                    capacities: vec![cap(PlaceSex::Female, AgeBand::Adult, 1)],
                },
            ],
        }
    }

    #[test]
    fn places_are_taken_section_by_section_and_never_beyond_capacity() {
        let mut r = Room::new(&facility());
        r.hold("", Some(PlaceSex::Female), AgeBand::Adult);
        assert_eq!(r.take("", PlaceSex::Female, AgeBand::Adult).as_deref(), Some("a"));
        assert_eq!(r.take("", PlaceSex::Female, AgeBand::Adult).as_deref(), Some("b"));
        assert_eq!(
            r.take("", PlaceSex::Female, AgeBand::Adult),
            None,
            "three places, three people"
        );
        assert_eq!(r.take("a", PlaceSex::Male, AgeBand::Adult), None, "no places for men");
    }

    #[test]
    fn a_named_section_is_used_or_refused() {
        let mut r = Room::new(&facility());
        r.reserve("b", PlaceSex::Female, AgeBand::Adult);
        assert_eq!(r.take("b", PlaceSex::Female, AgeBand::Adult), None);
        assert_eq!(r.take("a", PlaceSex::Female, AgeBand::Adult).as_deref(), Some("a"));
        assert!(r.has_section("a") && !r.has_section("c"));
    }
}
