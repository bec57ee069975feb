//! The contract's view of movements, headcounts and relocation plans, and the parsing of
//! their requests (naming every field at fault).

use concord_platform::enum_out;
use concord_platform::error::{Error, Result, Violations};
use concord_platform::fields::person_id;
use concord_platform::filter::{Field, FieldType};
use concord_platform::time::to_timestamp;
use concord_proto::facilities::v1 as pb;

use super::{facility_id, text};
use crate::domain::*;
use crate::store::headcounts::NewHeadcount;
use crate::store::movements::{repeated, NewMovement, MAX_MANIFEST};

/// Fields a movement list may be filtered on.
pub(super) const MOVEMENT_FILTER: &[Field] = &[
    Field {
        name: "state",
        sql: "m.state",
        ty: FieldType::Enum { prefix: "MOVEMENT_STATE_", values: MovementState::NAMES },
        equality_only: true,
    },
    Field {
        name: "source_facility",
        sql: "m.source_facility",
        ty: FieldType::Text,
        equality_only: true,
    },
    Field {
        name: "destination_facility",
        sql: "m.destination_facility",
        ty: FieldType::Text,
        equality_only: true,
    },
];

/// Most people one headcount may list.
pub const MAX_COUNTED: usize = 100_000;

/// The movement id from "movements/{movement}".
pub(super) fn movement_id(name: &str, field: &str) -> Result<String> {
    match name.strip_prefix("movements/") {
        Some(id) if !id.is_empty() && id.len() <= 64 && !id.contains('/') => Ok(id.to_string()),
        _ => Err(Error::invalid(field, "is not a name like \"movements/0192...\"")),
    }
}

/// `(facility id, headcount id)` from "facilities/{facility}/headcounts/{headcount}".
pub(super) fn headcount_name(name: &str, field: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["facilities", f, "headcounts", h] if is_id(f) && !h.is_empty() && h.len() <= 64 => {
            Ok((f.to_string(), h.to_string()))
        }
        _ => Err(Error::invalid(
            field,
            "is not a name like \"facilities/al-hol/headcounts/0192...\"",
        )),
    }
}

/// A movement to plan, validated.
pub(super) fn new_movement(m: Option<&pb::Movement>) -> Result<NewMovement> {
    let mut v = Violations::new();
    let Some(m) = m else {
        return Err(Error::invalid("movement", "is required"));
    };
    let source = v.absorb(facility_id(&m.source_facility, "movement.source_facility"));
    let destination =
        v.absorb(facility_id(&m.destination_facility, "movement.destination_facility"));
    // At most what the registry's custody timeline takes, as it is recorded there.
    text(&mut v, "movement.reason", &m.reason, 1000);
    if m.manifest.is_empty() {
        v.add("movement.manifest", "name at least one person");
    } else if m.manifest.len() > MAX_MANIFEST {
        v.add(
            "movement.manifest",
            format!("has {} people; at most {MAX_MANIFEST} per movement", m.manifest.len()),
        );
    }
    let mut entries = Vec::with_capacity(m.manifest.len());
    for (i, e) in m.manifest.iter().enumerate() {
        let id = person_id(&mut v, format!("movement.manifest[{i}].person"), &e.person);
        if !e.section_id.is_empty() && !is_id(&e.section_id) {
            v.add(format!("movement.manifest[{i}].section_id"), "is not a section id");
        }
        entries.push((id.unwrap_or_default(), e.section_id.clone()));
    }
    let ids: Vec<String> = entries.iter().map(|(p, _)| p.clone()).collect();
    for i in repeated(&ids) {
        v.add(
            format!("movement.manifest[{i}].person"),
            format!("persons/{} is on the manifest twice", ids[i]),
        );
    }
    v.finish(NewMovement {
        source: source.unwrap_or_default(),
        destination: destination.unwrap_or_default(),
        reason: m.reason.trim().to_string(),
        entries,
    })
}

/// A roll call, validated.
pub(super) fn new_headcount(
    parent: &str,
    h: Option<&pb::Headcount>,
    count_time: impl FnOnce(&mut Violations, Option<&prost_types::Timestamp>) -> i64,
) -> Result<NewHeadcount> {
    let mut v = Violations::new();
    let facility = v.absorb(facility_id(parent, "parent"));
    let Some(h) = h else {
        return Err(Error::invalid("headcount", "is required"));
    };
    text(&mut v, "headcount.reporter", &h.reporter, 200);
    let at = count_time(&mut v, h.count_time.as_ref());
    if h.counted.len() > MAX_COUNTED {
        v.add("headcount.counted", format!("lists more than {MAX_COUNTED} people"));
    }
    let counted: Vec<String> = h
        .counted
        .iter()
        .enumerate()
        .map(|(i, p)| person_id(&mut v, format!("headcount.counted[{i}]"), p).unwrap_or_default())
        .collect();
    for i in repeated(&counted) {
        v.add(
            format!("headcount.counted[{i}]"),
            format!("persons/{} is counted twice", counted[i]),
        );
    }
    let facility = facility.unwrap_or_default();
    if !h.incident.is_empty() {
        let ok = h
            .incident
            .strip_prefix(&format!("facilities/{facility}/incidents/"))
            .is_some_and(|i| !i.is_empty() && i.len() <= 64);
        if !ok {
            v.add(
                "headcount.incident",
                format!("must be an incident of facilities/{facility}, \"facilities/{facility}/incidents/...\""),
            );
        }
    }
    v.finish(NewHeadcount {
        facility_id: facility,
        counted,
        reporter: h.reporter.trim().to_string(),
        count_time: at,
        incident: h.incident.clone(),
    })
}

fn update_out(u: &Option<(UpdateStatus, String)>) -> (i32, String) {
    match u {
        Some((s, e)) => (enum_out!(pb::RegistryUpdate, s), e.clone()),
        None => (0, String::new()),
    }
}

/// The contract's view of a movement.
pub fn movement_out(m: &Movement) -> pb::Movement {
    let ts = |t: i64| (t != 0).then(|| to_timestamp(t));
    pb::Movement {
        name: m.name(),
        source_facility: format!("facilities/{}", m.source),
        destination_facility: format!("facilities/{}", m.destination),
        manifest: m
            .manifest
            .iter()
            .map(|e| {
                let (registry_update, registry_error) = update_out(&e.update);
                pb::ManifestEntry {
                    person: format!("persons/{}", e.person_id),
                    section_id: e.section_id.clone(),
                    sex: e.sex.map_or(0, |s| enum_out!(pb::PlaceSex, s)),
                    age_band: enum_out!(pb::AgeBand, e.age_band),
                    registry_update,
                    registry_error,
                }
            })
            .collect(),
        state: enum_out!(pb::MovementState, m.state),
        reason: m.reason.clone(),
        abort_reason: m.abort_reason.clone(),
        relocation_plan: if m.relocation_plan.is_empty() {
            String::new()
        } else {
            format!("facilities/{}/relocationPlans/{}", m.source, m.relocation_plan)
        },
        planned_by: m.planned_by.clone(),
        approved_by: m.approved_by.clone(),
        depart_time: ts(m.depart_time),
        arrive_time: ts(m.arrive_time),
        create_time: Some(to_timestamp(m.create_time)),
        update_time: Some(to_timestamp(m.update_time)),
        etag: format!("\"{}\"", m.version),
    }
}

/// The contract's view of a headcount.
pub fn headcount_out(h: &Headcount) -> pb::Headcount {
    let persons = |ids: &[String]| ids.iter().map(|p| format!("persons/{p}")).collect();
    pb::Headcount {
        name: h.name(),
        counted: persons(&h.counted),
        expected_count: h.expected_count,
        missing: persons(&h.missing),
        unrecorded: persons(&h.unrecorded),
        reporter: h.reporter.clone(),
        count_time: Some(to_timestamp(h.count_time)),
        incident: h.incident.clone(),
        unaccounted_mark_time: (h.unaccounted_mark_time != 0)
            .then(|| to_timestamp(h.unaccounted_mark_time)),
        unaccounted_updates: h
            .updates
            .iter()
            .map(|(p, s, e)| pb::RegistryUpdateStatus {
                person: format!("persons/{p}"),
                registry_update: enum_out!(pb::RegistryUpdate, s),
                registry_error: e.clone(),
            })
            .collect(),
        recorded_by: h.recorded_by.clone(),
        create_time: Some(to_timestamp(h.create_time)),
    }
}

/// The contract's view of a relocation plan.
pub fn plan_out(p: &crate::store::relocation::StoredPlan) -> pb::RelocationPlan {
    pb::RelocationPlan {
        name: format!("facilities/{}/relocationPlans/{}", p.facility_id, p.id),
        movements: p.movements.iter().map(movement_out).collect(),
        unplaced: p
            .unplaced
            .iter()
            .map(|(person, reason)| pb::UnplacedPerson {
                person: format!("persons/{person}"),
                reason: reason.clone(),
            })
            .collect(),
        split_households: p.split_households.iter().map(|h| format!("households/{h}")).collect(),
        placed_count: p.placed_count,
        total_distance_km: p.total_distance_km,
    }
}
