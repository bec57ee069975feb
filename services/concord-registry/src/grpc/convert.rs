//! Conversions between the contract's messages and the domain types. Parsing names the field
//! at fault for anything that does not fit; nothing invalid gets past here.

use concord_platform::error::{quote, Result, Violations};
use concord_platform::policy::{FieldClass, FieldSet};
use concord_platform::time::{current_year, from_timestamp, to_timestamp};
use concord_proto::r#type::v1 as tpb;
use concord_proto::registry::v1 as pb;

use crate::domain::*;
use crate::search_keys;

/// Parses a proto enum value into a domain enum; 0 (unspecified) is `None`.
macro_rules! enum_in {
    ($v:expr, $field:expr, $value:expr, $proto:ty, $domain:ty) => {{
        let value: i32 = $value;
        if value == 0 {
            None
        } else {
            let parsed = <$proto>::try_from(value)
                .ok()
                .and_then(|e| <$domain>::from_proto_name(e.as_str_name()));
            if parsed.is_none() {
                $v.add(
                    $field,
                    format!("unknown value {value}; use one of {}", <$domain>::NAMES.join(", ")),
                );
            }
            parsed
        }
    }};
}
pub(crate) use enum_in;

pub(crate) use concord_platform::enum_out;

/// Parses the caller-written fields of a person; `prefix` is the field path (`person`).
pub fn person_data(p: &pb::Person, prefix: &str) -> Result<PersonData> {
    let mut v = Violations::new();
    let names = p
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let kind =
                enum_in!(v, format!("{prefix}.names[{i}].kind"), n.kind, pb::NameKind, NameKind);
            let script = if n.script.is_empty() {
                search_keys::script_of(&n.full_name).to_string()
            } else {
                n.script.clone()
            };
            if script.len() != 4 || !script.chars().all(|c| c.is_ascii_alphabetic()) {
                v.add(
                    format!("{prefix}.names[{i}].script"),
                    format!("{} is not an ISO 15924 code like \"Arab\"", quote(&script)),
                );
            }
            PersonName {
                full_name: n.full_name.trim().to_string(),
                kind: kind.unwrap_or(NameKind::Primary),
                script,
            }
        })
        .collect();
    let sex = enum_in!(v, format!("{prefix}.sex"), p.sex, pb::Sex, Sex);
    if p.sex == 0 {
        v.add(format!("{prefix}.sex"), "is required (use SEX_UNKNOWN when not known)");
    }
    let birth_date =
        p.birth_date.as_ref().map(|d| date_in(&mut v, d, &format!("{prefix}.birth_date")));
    let nationalities = p
        .nationalities
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let f = format!("{prefix}.nationalities[{i}]");
            let basis =
                enum_in!(v, format!("{f}.basis"), n.basis, pb::NationalityBasis, NationalityBasis);
            if n.basis == 0 {
                v.add(format!("{f}.basis"), "is required");
            }
            let revoke_time = n.revoke_time.as_ref().and_then(|t| {
                let m = from_timestamp(t);
                if m.is_none() {
                    v.add(format!("{f}.revoke_time"), "is not a valid timestamp");
                }
                m
            });
            Nationality {
                state: n.state.clone(),
                basis: basis.unwrap_or(NationalityBasis::Claimed),
                revoke_time,
                revocation_reason: n.revocation_reason.clone(),
            }
        })
        .collect();
    let category =
        enum_in!(v, format!("{prefix}.category"), p.category, pb::PersonCategory, Category);
    if p.category == 0 {
        v.add(format!("{prefix}.category"), "is required");
    }
    let identity_confidence = enum_in!(
        v,
        format!("{prefix}.identity_confidence"),
        p.identity_confidence,
        pb::IdentityConfidence,
        Confidence
    );
    let biometric_references = p
        .biometric_references
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let modality = enum_in!(
                v,
                format!("{prefix}.biometric_references[{i}].modality"),
                b.modality,
                pb::BiometricModality,
                Modality
            );
            if b.modality == 0 {
                v.add(format!("{prefix}.biometric_references[{i}].modality"), "is required");
            }
            BiometricRef {
                system: b.system.clone(),
                reference: b.reference.clone(),
                modality: modality.unwrap_or(Modality::Face),
            }
        })
        .collect();
    let legal_status =
        enum_in!(v, format!("{prefix}.legal_status"), p.legal_status, pb::LegalStatus, LegalStatus);
    let data = PersonData {
        names,
        sex: sex.unwrap_or(Sex::Unknown),
        birth_date,
        nationalities,
        category: category.unwrap_or(Category::AdultMale),
        identity_confidence: identity_confidence.unwrap_or(Confidence::Low),
        biometric_references,
        legal_status,
    };
    // Whole-record rules run even when a field above failed, so the caller learns every fault.
    v.absorb(data.validate(prefix, current_year()));
    v.finish(data)
}

fn date_in(v: &mut Violations, d: &tpb::ApproximateDate, field: &str) -> ApproxDate {
    let precision =
        enum_in!(v, format!("{field}.precision"), d.precision, tpb::DatePrecision, DatePrecision);
    if d.precision == 0 {
        v.add(format!("{field}.precision"), "is required");
    }
    if d.month < 0 || d.day < 0 {
        v.add(field, "month and day must not be negative");
    }
    ApproxDate {
        year: d.year,
        month: d.month.max(0) as u32,
        day: d.day.max(0) as u32,
        precision: precision.unwrap_or(DatePrecision::Estimated),
    }
}

fn date_out(d: &ApproxDate) -> tpb::ApproximateDate {
    tpb::ApproximateDate {
        year: d.year,
        month: d.month as i32,
        day: d.day as i32,
        precision: enum_out!(tpb::DatePrecision, d.precision),
    }
}

/// The contract's view of a person.
pub fn person_out(p: &Person) -> pb::Person {
    let d = &p.data;
    pb::Person {
        name: p.name(),
        names: d
            .names
            .iter()
            .map(|n| pb::PersonName {
                full_name: n.full_name.clone(),
                kind: enum_out!(pb::NameKind, n.kind),
                script: n.script.clone(),
            })
            .collect(),
        sex: enum_out!(pb::Sex, d.sex),
        birth_date: d.birth_date.as_ref().map(date_out),
        nationalities: d
            .nationalities
            .iter()
            .map(|n| pb::Nationality {
                state: n.state.clone(),
                basis: enum_out!(pb::NationalityBasis, n.basis),
                revoke_time: n.revoke_time.map(to_timestamp),
                revocation_reason: n.revocation_reason.clone(),
            })
            .collect(),
        category: enum_out!(pb::PersonCategory, d.category),
        identity_confidence: enum_out!(pb::IdentityConfidence, d.identity_confidence),
        biometric_references: d
            .biometric_references
            .iter()
            .map(|b| pb::BiometricReference {
                system: b.system.clone(),
                reference: b.reference.clone(),
                modality: enum_out!(pb::BiometricModality, b.modality),
            })
            .collect(),
        legal_status: d.legal_status.map_or(0, |l| enum_out!(pb::LegalStatus, l)),
        custody_status: enum_out!(pb::CustodyStatus, p.custody_status),
        facility_id: p.facility_id.clone(),
        section_id: p.section_id.clone(),
        merged_into: if p.merged_into.is_empty() {
            String::new()
        } else {
            format!("persons/{}", p.merged_into)
        },
        create_time: Some(to_timestamp(p.create_time)),
        update_time: Some(to_timestamp(p.update_time)),
        etag: p.etag(),
        receiving_state: p.receiving_state.clone(),
        disposition: p.disposition.map_or(0, |x| enum_out!(pb::Disposition, x)),
        redacted_fields: vec![],
        household: if p.household.is_empty() {
            String::new()
        } else {
            format!("households/{}", p.household)
        },
    }
}

/// Which class each field of a person is in, for redaction and for update masks.
pub const PERSON_FIELD_CLASSES: &[(&str, FieldClass)] = &[
    ("names", FieldClass::Identity),
    ("sex", FieldClass::Identity),
    ("birth_date", FieldClass::Identity),
    ("nationalities", FieldClass::Identity),
    ("category", FieldClass::Identity),
    ("identity_confidence", FieldClass::Identity),
    ("legal_status", FieldClass::Identity),
    ("biometric_references", FieldClass::Biometrics),
    ("custody_status", FieldClass::Custody),
    ("facility_id", FieldClass::Custody),
    ("section_id", FieldClass::Custody),
    ("receiving_state", FieldClass::Custody),
    ("disposition", FieldClass::Custody),
    ("household", FieldClass::Identity),
];

/// `m` with the fields of classes outside `readable` cleared and named in
/// `redacted_fields`, whether or not they held anything (so the list reveals nothing).
pub fn redact(mut m: pb::Person, readable: FieldSet) -> pb::Person {
    for (field, class) in PERSON_FIELD_CLASSES {
        if readable.contains(*class) {
            continue;
        }
        match *field {
            "names" => m.names.clear(),
            "sex" => m.sex = 0,
            "birth_date" => m.birth_date = None,
            "nationalities" => m.nationalities.clear(),
            "category" => m.category = 0,
            "identity_confidence" => m.identity_confidence = 0,
            "legal_status" => m.legal_status = 0,
            "biometric_references" => m.biometric_references.clear(),
            "custody_status" => m.custody_status = 0,
            "facility_id" => m.facility_id.clear(),
            "section_id" => m.section_id.clear(),
            "receiving_state" => m.receiving_state.clear(),
            "disposition" => m.disposition = 0,
            "household" => m.household.clear(),
            _ => {}
        }
        m.redacted_fields.push((*field).to_string());
    }
    m
}

/// The contract's view of `p` for a caller who may read `readable`.
pub fn person_for(p: &Person, readable: FieldSet) -> pb::Person {
    redact(person_out(p), readable)
}

/// The contract's view of a custody event.
pub fn custody_event_out(e: &CustodyEvent) -> pb::CustodyEvent {
    pb::CustodyEvent {
        name: format!("persons/{}/custodyEvents/{}", e.person_id, e.id),
        from_status: enum_out!(pb::CustodyStatus, e.from_status),
        to_status: enum_out!(pb::CustodyStatus, e.to_status),
        facility_id: e.facility_id.clone(),
        reason: e.reason.clone(),
        source: e.source.clone(),
        occur_time: Some(to_timestamp(e.occur_time)),
        record_time: Some(to_timestamp(e.record_time)),
        recorded_by: e.recorded_by.clone(),
        reference: e.reference.clone(),
    }
}

/// The contract's view of a duplicate candidate.
pub fn candidate_out(c: &DuplicateCandidate) -> pb::DuplicateCandidate {
    pb::DuplicateCandidate {
        name: format!("duplicateCandidates/{}", c.id),
        person: format!("persons/{}", c.person_id),
        other_person: format!("persons/{}", c.other_person_id),
        score: c.score,
        reasons: c.reasons.clone(),
        state: enum_out!(pb::DuplicateState, c.state),
        surviving_person: if c.surviving_person_id.is_empty() {
            String::new()
        } else {
            format!("persons/{}", c.surviving_person_id)
        },
        review_reason: c.review_reason.clone(),
        create_time: Some(to_timestamp(c.create_time)),
        update_time: Some(to_timestamp(c.update_time)),
        etag: format!("\"{}\"", c.version),
    }
}

/// Parses `persons/{id}` (or a bare id) into the id.
pub fn person_id(name: &str, field: &str) -> Result<String> {
    resource_id(name, "persons/", field)
}

/// Parses `{collection}{id}` into the id: a UUID.
pub fn resource_id(name: &str, collection: &str, field: &str) -> Result<String> {
    let id = name.strip_prefix(collection).unwrap_or(name);
    if id.is_empty() {
        return Err(concord_platform::Error::invalid(
            field,
            format!("is required, as \"{collection}{{id}}\""),
        ));
    }
    match uuid::Uuid::parse_str(id) {
        Ok(u) => Ok(u.to_string()),
        Err(_) => Err(concord_platform::Error::invalid(
            field,
            format!("{} is not a resource name like \"{collection}{{id}}\"", quote(name)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_clears_every_field_of_every_unreadable_class_and_names_it() {
        let full = pb::Person {
            name: "persons/p1".into(),
            names: vec![pb::PersonName { full_name: "A".into(), ..Default::default() }],
            sex: 1,
            birth_date: Some(tpb::ApproximateDate { year: 1990, ..Default::default() }),
            nationalities: vec![pb::Nationality { state: "FR".into(), ..Default::default() }],
            category: 1,
            identity_confidence: 1,
            biometric_references: vec![pb::BiometricReference::default()],
            legal_status: 1,
            custody_status: 1,
            facility_id: "al-hol".into(),
            section_id: "s".into(),
            receiving_state: "FR".into(),
            disposition: 1,
            etag: "\"1\"".into(),
            ..Default::default()
        };
        let none = redact(full.clone(), FieldSet::default());
        let expected = pb::Person {
            name: full.name.clone(),
            etag: full.etag.clone(),
            redacted_fields: PERSON_FIELD_CLASSES.iter().map(|(f, _)| f.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(none, expected, "nothing of any class is left, the name and etag stay");
        assert_eq!(redact(full.clone(), FieldSet::all()), full);
    }
}
