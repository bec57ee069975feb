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
