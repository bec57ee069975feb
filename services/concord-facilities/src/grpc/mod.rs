//! The facilities' gRPC surface: the only module that sees request and response messages.
//! Each method authorizes (`access`), parses its request into domain values naming every
//! field at fault, calls the store, and converts the result.

use std::pin::Pin;
use std::sync::Arc;

use concord_platform::access::{self, Access, PurposeRule, Shared};
use concord_platform::audit::Recorder;
use concord_platform::auth::Scope;
use concord_platform::error::{Error, Result, Violations};
pub(crate) use concord_platform::fields::text;
use concord_platform::fields::{etag, past_time};
use concord_platform::filter::{self, Field, FieldType};
use concord_platform::outbox::{self, WatchParams, WatchTuning};
use concord_platform::policy::{Action, Policy};
use concord_platform::server::Shutdown;
use concord_platform::time::to_timestamp;
use concord_platform::{enum_out, required_enum};
use concord_platform::{idempotency, paging};
use concord_proto::facilities::v1 as pb;
use concord_proto::facilities::v1::facilities_service_server::FacilitiesService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::domain::*;
use crate::store::movements::MovementStep;
use crate::store::Store;

mod people;
pub use people::{headcount_out, movement_out, plan_out};

/// Error domain of the service (google.rpc.ErrorInfo.domain).
pub const DOMAIN: &str = "facilities.concord";

const FACILITY_FILTER: &[Field] = &[
    Field {
        name: "kind",
        sql: "f.kind",
        ty: FieldType::Enum { prefix: "FACILITY_KIND_", values: FacilityKind::NAMES },
        equality_only: true,
    },
    Field {
        name: "security_status",
        sql: "f.security_status",
        ty: FieldType::Enum { prefix: "SECURITY_STATUS_", values: SecurityStatus::NAMES },
        equality_only: true,
    },
    Field {
        name: "custodian_agency",
        sql: "f.custodian_agency",
        ty: FieldType::Text,
        equality_only: true,
    },
];

/// The facilities service.
#[derive(Debug, Clone)]
pub struct Facilities {
    store: Store,
    policy: Arc<Policy>,
    recorder: Recorder,
    shutdown: Shutdown,
    watch_tuning: WatchTuning,
    streams: Arc<concord_platform::quota::StreamLimiter>,
    rules: SeparationRules,
}

impl Facilities {
    /// The service over `store`, enforcing `policy`; watch streams end when `shutdown` begins.
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        shutdown: Shutdown,
        streams_per_agency: usize,
    ) -> Self {
        let recorder = Recorder::spawn(store.db().clone());
        Self {
            store,
            policy,
            recorder,
            shutdown,
            watch_tuning: WatchTuning::default(),
            streams: Arc::new(concord_platform::quota::StreamLimiter::new(streams_per_agency)),
            rules: SeparationRules::default(),
        }
    }

    /// Applies `rules` to movements and relocation plans.
    pub fn with_rules(mut self, rules: SeparationRules) -> Self {
        self.rules = rules;
        self
    }

    /// The call's access. Facility data is not personal: reads need no purpose; writes state
    /// one, for their audit entry.
    async fn access<T>(
        &self,
        req: &Request<T>,
        action: Action,
        rpc: &'static str,
    ) -> Result<Access, Status> {
        // Movements and headcounts name people: reading them states a purpose too.
        let rule = match action {
            Action::FacilitiesRead => PurposeRule::Optional,
            _ => PurposeRule::Required,
        };
        access::authorize(req, &self.policy, &self.recorder, action, rpc, rule, |_| async {
            Ok(Shared::default())
        })
        .await
        .map_err(st)
    }
}

impl Facilities {
    /// A write's result; a refusal for not running the facility is audited like the
    /// policy's refusals (a successful write audited itself in its transaction).
    async fn outcome<T>(&self, a: &Access, resource: &str, r: Result<T>) -> Result<T, Status> {
        if let Err(Error::PermissionDenied(_)) = &r {
            self.recorder
                .record(vec![a.entry(resource, "", "PERMISSION_DENIED")])
                .await
                .map_err(st)?;
        }
        r.map_err(st)
    }
}

impl Facilities {
    /// A movement step from its request's fields.
    fn step<M: prost::Message>(
        &self,
        name: &str,
        to: MovementState,
        reason: &str,
        etag_s: &str,
        request_id: &str,
        msg: &M,
    ) -> Result<MovementStep, Status> {
        let mut v = Violations::new();
        let id = v.absorb(people::movement_id(name, "name"));
        if to == MovementState::Aborted {
            text(&mut v, "reason", reason, 1000);
        }
        let expected = v.absorb(etag(etag_s, "etag")).flatten();
        let rid = v.absorb(idempotency::key(request_id, "request_id", msg)).flatten();
        v.finish(MovementStep {
            id: id.unwrap_or_default(),
            to,
            reason: reason.trim().to_string(),
            expected_version: expected,
            request_id: rid,
        })
        .map_err(st)
    }

    async fn movement_step(
        &self,
        a: &Access,
        step: MovementStep,
    ) -> Result<Response<pb::Movement>, Status> {
        let resource = format!("movements/{}", step.id);
        let r = self.store.step_movement(a, step, &self.rules).await;
        let m = self.outcome(a, &resource, r).await?;
        Ok(Response::new(movement_out(&m)))
    }

    /// A read of something that names people: audited with its outcome (NOT_FOUND included,
    /// as the registry audits refused gets).
    async fn read<T>(&self, a: &Access, resource: &str, r: Result<T>) -> Result<T, Status> {
        let outcome = match &r {
            Ok(_) => "OK",
            Err(e @ (Error::NotFound(_) | Error::PermissionDenied(_))) => e.refusal().unwrap_or(""),
            Err(_) => return r.map_err(st),
        };
        self.recorder.record(vec![a.entry(resource, "manifest", outcome)]).await.map_err(st)?;
        r.map_err(st)
    }
}

fn st(e: Error) -> Status {
    e.into_status(DOMAIN)
}

pub(crate) fn facility_id(name: &str, field: &str) -> Result<String> {
    match name.strip_prefix("facilities/") {
        Some(id) if is_id(id) => Ok(id.to_string()),
        _ => Err(Error::invalid(
            field,
            format!(
                "'{}' is not a name like \"facilities/al-hol\"",
                name.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// The written fields of `f`, validated; `prefix` names the message (`facility`).
fn facility_data(f: &pb::Facility, prefix: &str) -> Result<FacilityData> {
    let mut v = Violations::new();
    let kind = required_enum!(v, format!("{prefix}.kind"), f.kind, pb::FacilityKind, FacilityKind);
    let loc = f.location.clone().unwrap_or_default();
    if f.location.is_none() {
        v.add(format!("{prefix}.location"), "is required");
    }
    let sections = f
        .sections
        .iter()
        .enumerate()
        .map(|(i, s)| Section {
            section_id: s.section_id.clone(),
            display_name: s.display_name.clone(),
            capacities: s
                .capacities
                .iter()
                .enumerate()
                .filter_map(|(j, c)| {
                    let at = format!("{prefix}.sections[{i}].capacities[{j}]");
                    let sex = required_enum!(v, format!("{at}.sex"), c.sex, pb::PlaceSex, PlaceSex);
                    let band = required_enum!(
                        v,
                        format!("{at}.age_band"),
                        c.age_band,
                        pb::AgeBand,
                        AgeBand
                    );
                    Some(Capacity { sex: sex?, age_band: band?, places: c.places })
                })
                .collect(),
        })
        .collect();
    let data = FacilityData {
        display_name: f.display_name.trim().to_string(),
        kind: kind.unwrap_or(FacilityKind::Camp),
        location: Location { latitude: loc.latitude, longitude: loc.longitude, region: loc.region },
        sections,
    };
    data.validate(&mut v, prefix);
    v.finish(data)
}

/// The contract's view of a facility.
pub fn facility_out(f: &Facility) -> pb::Facility {
    let d = &f.data;
    pb::Facility {
        name: f.name(),
        display_name: d.display_name.clone(),
        kind: enum_out!(pb::FacilityKind, d.kind),
        custodian_agency: f.custodian_agency.clone(),
        location: Some(pb::Location {
            latitude: d.location.latitude,
            longitude: d.location.longitude,
            region: d.location.region.clone(),
        }),
        sections: d
            .sections
            .iter()
            .map(|s| pb::Section {
                section_id: s.section_id.clone(),
                display_name: s.display_name.clone(),
                capacities: s
                    .capacities
                    .iter()
                    .map(|c| pb::Capacity {
                        sex: enum_out!(pb::PlaceSex, c.sex),
                        age_band: enum_out!(pb::AgeBand, c.age_band),
                        places: c.places,
                    })
                    .collect(),
            })
            .collect(),
        security_status: enum_out!(pb::SecurityStatus, f.security_status),
        security_status_reason: f.security_status_reason.clone(),
        security_status_update_time: Some(to_timestamp(f.security_status_time)),
        create_time: Some(to_timestamp(f.create_time)),
        update_time: Some(to_timestamp(f.update_time)),
        etag: f.etag(),
    }
}

/// `(facility id, incident id)` from "facilities/{facility}/incidents/{incident}".
fn incident_name(name: &str, field: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["facilities", f, "incidents", i] if is_id(f) && !i.is_empty() && i.len() <= 64 => {
            Ok((f.to_string(), i.to_string()))
        }
        _ => {
            Err(Error::invalid(field, "is not a name like \"facilities/al-hol/incidents/0192...\""))
        }
    }
}

/// Counts are 0 or more; `prefix` is the message holding them (empty at the top level).
fn counts(v: &mut Violations, prefix: &str, killed: i32, injured: i32, missing: i32) {
    for (field, n) in [("killed", killed), ("injured", injured), ("missing", missing)] {
        if n < 0 {
            let path =
                if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") };
            v.add(path, "must be 0 or more");
        }
    }
}

/// The contract's view of an incident.
pub fn incident_out(i: &Incident) -> pb::Incident {
    pb::Incident {
        name: i.name(),
        kind: enum_out!(pb::IncidentKind, i.kind),
        state: enum_out!(pb::IncidentState, i.state),
        description: i.description.clone(),
        killed: i.killed as i32,
        injured: i.injured as i32,
        missing: i.missing as i32,
        reporter: i.reporter.clone(),
        occur_time: Some(to_timestamp(i.occur_time)),
        create_time: Some(to_timestamp(i.create_time)),
        update_time: Some(to_timestamp(i.update_time)),
        etag: format!("\"{}\"", i.version),
    }
}

/// Places for `(section, sex, band)` in `f`.
fn places(f: &FacilityData, section: &str, sex: Option<PlaceSex>, band: AgeBand) -> i32 {
    f.sections
        .iter()
        .filter(|s| s.section_id == section)
        .flat_map(|s| s.capacities.iter())
        .filter(|c| Some(c.sex) == sex && c.age_band == band)
        .map(|c| c.places)
        .sum()
}

fn occupancy_out(f: &Facility, o: &crate::occupancy::Occupancy) -> pb::Occupancy {
    pb::Occupancy {
        name: f.name(),
        total: o.total,
        lines: o
            .lines
            .iter()
            .map(|((section, sex, band), count)| pb::OccupancyLine {
                section_id: section.clone(),
                sex: sex.map_or(0, |s| enum_out!(pb::PlaceSex, s)),
                age_band: enum_out!(pb::AgeBand, *band),
                count: *count,
                places: places(&f.data, section, *sex, *band),
            })
            .collect(),
        nationalities: o
            .nationalities
            .iter()
            .map(|(state, count)| pb::NationalityCount { state: state.clone(), count: *count })
            .collect(),
    }
}

/// FAILED_PRECONDITION naming each section, sex and age band whose new places are fewer than
/// the people there now.
pub(crate) fn check_capacity(new: &FacilityData, o: &crate::occupancy::Occupancy) -> Result<()> {
    let short: Vec<String> = o
        .lines
        .iter()
        .filter(|((section, _, _), _)| !section.is_empty())
        .filter_map(|((section, sex, band), count)| {
            let sex = (*sex)?;
            let p = places(new, section, Some(sex), *band);
            (i64::from(p) < *count)
                .then(|| format!("{section} {sex} {band}: {p} places for {count} people"))
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition {
            reason: "CAPACITY_BELOW_OCCUPANCY",
            message: format!("capacity below current occupancy: {}", short.join("; ")),
        })
    }
}

fn event_out(e: &FacilityEvent) -> pb::FacilityEvent {
    pb::FacilityEvent {
        name: format!("facilities/{}/events/{}", e.facility_id, e.id),
        kind: enum_out!(pb::FacilityEventKind, e.kind),
        from_status: e.from_status.map_or(0, |s| enum_out!(pb::SecurityStatus, s)),
        to_status: e.to_status.map_or(0, |s| enum_out!(pb::SecurityStatus, s)),
        from_custodian: e.from_custodian.clone(),
        to_custodian: e.to_custodian.clone(),
        reason: e.reason.clone(),
        reporter: e.reporter.clone(),
        recorded_by: e.recorded_by.clone(),
        occur_time: Some(to_timestamp(e.occur_time)),
        record_time: Some(to_timestamp(e.record_time)),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FacilitiesService for Facilities {
    async fn create_facility(
        &self,
        req: Request<pb::CreateFacilityRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        let a = self.access(&req, Action::FacilitiesManage, "CreateFacility").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        if !is_id(&m.facility_id) {
            v.add(
                "facility_id",
                "must be 2-63 lower-case letters, digits and '-', starting with a letter",
            );
        }
        if !is_id(&m.custodian_agency) {
            v.add("custodian_agency", "must be the id of the agency that runs the facility");
        }
        let data = match &m.facility {
            Some(f) => v.absorb(facility_data(f, "facility")),
            None => {
                v.add("facility", "is required");
                None
            }
        };
        let data = v
            .finish(data)
            .map_err(st)?
            .ok_or_else(|| st(Error::invalid("facility", "is required")))?;
        let f = self.store.create(&a, &m.facility_id, data, &m.custodian_agency, rid).await;
        let f = self.outcome(&a, &format!("facilities/{}", m.facility_id), f).await?;
        Ok(Response::new(facility_out(&f)))
    }

    async fn get_facility(
        &self,
        req: Request<pb::GetFacilityRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        self.access(&req, Action::FacilitiesRead, "GetFacility").await?;
        let id = facility_id(&req.get_ref().name, "name").map_err(st)?;
        Ok(Response::new(facility_out(&self.store.get(&id).await.map_err(st)?)))
    }

    async fn list_facilities(
        &self,
        req: Request<pb::ListFacilitiesRequest>,
    ) -> Result<Response<pb::ListFacilitiesResponse>, Status> {
        self.access(&req, Action::FacilitiesRead, "ListFacilities").await?;
        let m = req.into_inner();
        let size = paging::page_size(m.page_size).map_err(st)?;
        let filter = filter::parse(&m.filter)
            .and_then(|e| e.map(|e| filter::to_sql(&e, FACILITY_FILTER)).transpose())
            .map_err(st)?;
        let fp = paging::request_fingerprint(&[&m.filter]);
        let after: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut fs =
            self.store.list(filter.as_ref(), after.as_deref(), size + 1).await.map_err(st)?;
        let next = paging::finish_page(&mut fs, size, &fp, |f| f.id.clone());
        Ok(Response::new(pb::ListFacilitiesResponse {
            facilities: fs.iter().map(facility_out).collect(),
            next_page_token: next,
        }))
    }

    async fn update_facility(
        &self,
        req: Request<pb::UpdateFacilityRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        let a = self.access(&req, Action::FacilitiesManage, "UpdateFacility").await?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let incoming =
            m.facility.clone().ok_or_else(|| st(Error::invalid("facility", "is required")))?;
        let id = facility_id(&incoming.name, "facility.name").map_err(st)?;
        let expected = etag(&incoming.etag, "facility.etag").map_err(st)?;
        let paths = m.update_mask.map(|m| m.paths).unwrap_or_default();
        const UPDATABLE: &[&str] = &["display_name", "kind", "location", "sections"];
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add("update_mask", "name at least one field to update");
        }
        for p in &paths {
            if !UPDATABLE.contains(&p.as_str()) {
                v.add(
                    format!("update_mask.paths[{p}]"),
                    format!(
                        "cannot be updated here; updatable: {}; status and custodian have their own methods",
                        UPDATABLE.join(", ")
                    ),
                );
            }
        }
        v.finish(()).map_err(st)?;
        let fields = paths.join(",");
        // Read before the write's transaction: the projection changes only as the registry's
        // events arrive, and a capacity set in between is checked again on the next change.
        let occupancy = crate::occupancy::occupancy(self.store.db(), &id).await.map_err(st)?;
        let f = self
            .store
            .update(&a, &id, &fields, expected, rid, |current| {
                let mut merged = facility_out(&Facility {
                    id: id.clone(),
                    data: current.clone(),
                    custodian_agency: String::new(),
                    security_status: SecurityStatus::Normal,
                    security_status_reason: String::new(),
                    security_status_time: 0,
                    version: 0,
                    create_time: 0,
                    update_time: 0,
                });
                for p in &paths {
                    match p.as_str() {
                        "display_name" => merged.display_name = incoming.display_name.clone(),
                        "kind" => merged.kind = incoming.kind,
                        "location" => merged.location = incoming.location.clone(),
                        "sections" => merged.sections = incoming.sections.clone(),
                        _ => {}
                    }
                }
                let new = facility_data(&merged, "facility")?;
                if paths.iter().any(|p| p == "sections") {
                    check_capacity(&new, &occupancy)?;
                }
                Ok(new)
            })
            .await;
        let f = self.outcome(&a, &format!("facilities/{id}"), f).await?;
        Ok(Response::new(facility_out(&f)))
    }

    async fn change_security_status(
        &self,
        req: Request<pb::ChangeSecurityStatusRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        let a = self.access(&req, Action::FacilitiesSecurity, "ChangeSecurityStatus").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(facility_id(&m.name, "name"));
        let to = required_enum!(v, "status", m.status, pb::SecurityStatus, SecurityStatus);
        text(&mut v, "reason", &m.reason, 1000);
        text(&mut v, "reporter", &m.reporter, 200);
        let at = past_time(&mut v, "occur_time", m.occur_time.as_ref());
        let expected = v.absorb(etag(&m.etag, "etag")).flatten();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let change = v
            .finish(Change {
                facility_id: id.unwrap_or_default(),
                to_status: to,
                to_custodian: None,
                reason: m.reason.trim().to_string(),
                reporter: m.reporter.trim().to_string(),
                occur_time: at,
                expected_version: expected,
                request_id: rid,
            })
            .map_err(st)?;
        let resource = format!("facilities/{}", change.facility_id);
        let f = self.store.change(&a, change).await;
        let f = self.outcome(&a, &resource, f).await?;
        Ok(Response::new(facility_out(&f)))
    }

    async fn change_custodian(
        &self,
        req: Request<pb::ChangeCustodianRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        let a = self.access(&req, Action::FacilitiesCustodian, "ChangeCustodian").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let id = v.absorb(facility_id(&m.name, "name"));
        if !is_id(&m.custodian_agency) {
            v.add(
                "custodian_agency",
                "must be the id of the agency that runs the facility from now on",
            );
        }
        text(&mut v, "reason", &m.reason, 1000);
        let at = past_time(&mut v, "occur_time", m.occur_time.as_ref());
        let expected = v.absorb(etag(&m.etag, "etag")).flatten();
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let change = v
            .finish(Change {
                facility_id: id.unwrap_or_default(),
                to_status: None,
                to_custodian: Some(m.custodian_agency.clone()),
                reason: m.reason.trim().to_string(),
                reporter: a.principal.agency.clone(),
                occur_time: at,
                expected_version: expected,
                request_id: rid,
            })
            .map_err(st)?;
        let resource = format!("facilities/{}", change.facility_id);
        let f = self.store.change(&a, change).await;
        let f = self.outcome(&a, &resource, f).await?;
        Ok(Response::new(facility_out(&f)))
    }

    async fn list_facility_events(
        &self,
        req: Request<pb::ListFacilityEventsRequest>,
    ) -> Result<Response<pb::ListFacilityEventsResponse>, Status> {
        self.access(&req, Action::FacilitiesRead, "ListFacilityEvents").await?;
        let m = req.into_inner();
        let id = facility_id(&m.parent, "parent").map_err(st)?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&id]);
        let after: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut es = self.store.events(&id, after.as_deref(), size + 1).await.map_err(st)?;
        let next = paging::finish_page(&mut es, size, &fp, |e| e.id.clone());
        Ok(Response::new(pb::ListFacilityEventsResponse {
            facility_events: es.iter().map(event_out).collect(),
            next_page_token: next,
        }))
    }

    async fn report_incident(
        &self,
        req: Request<pb::ReportIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let a = self.access(&req, Action::FacilitiesSecurity, "ReportIncident").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let fid = v.absorb(facility_id(&m.parent, "parent"));
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let i = m.incident.clone().unwrap_or_default();
        if m.incident.is_none() {
            v.add("incident", "is required");
        }
        let kind = required_enum!(v, "incident.kind", i.kind, pb::IncidentKind, IncidentKind);
        text(&mut v, "incident.description", &i.description, 4000);
        text(&mut v, "incident.reporter", &i.reporter, 200);
        counts(&mut v, "incident", i.killed, i.injured, i.missing);
        let at = past_time(&mut v, "incident.occur_time", i.occur_time.as_ref());
        let incident = v
            .finish(Incident {
                id: String::new(),
                facility_id: fid.unwrap_or_default(),
                kind: kind.unwrap_or(IncidentKind::Riot),
                state: IncidentState::Reported,
                description: i.description.trim().to_string(),
                killed: i64::from(i.killed),
                injured: i64::from(i.injured),
                missing: i64::from(i.missing),
                reporter: i.reporter.trim().to_string(),
                occur_time: at,
                version: 0,
                create_time: 0,
                update_time: 0,
            })
            .map_err(st)?;
        let resource = format!("facilities/{}", incident.facility_id);
        let stored = self.store.report_incident(&a, incident, rid).await;
        let stored = self.outcome(&a, &resource, stored).await?;
        Ok(Response::new(incident_out(&stored)))
    }

    async fn get_incident(
        &self,
        req: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.access(&req, Action::FacilitiesRead, "GetIncident").await?;
        let (fid, id) = incident_name(&req.get_ref().name, "name").map_err(st)?;
        Ok(Response::new(incident_out(&self.store.incident(&fid, &id).await.map_err(st)?)))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.access(&req, Action::FacilitiesRead, "ListIncidents").await?;
        let m = req.into_inner();
        let fid = facility_id(&m.parent, "parent").map_err(st)?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&fid]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut is = self.store.incidents(&fid, before.as_deref(), size + 1).await.map_err(st)?;
        let next = paging::finish_page(&mut is, size, &fp, |i| i.id.clone());
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: is.iter().map(incident_out).collect(),
            next_page_token: next,
        }))
    }

    async fn transition_incident(
        &self,
        req: Request<pb::TransitionIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let a = self.access(&req, Action::FacilitiesSecurity, "TransitionIncident").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let name = v.absorb(incident_name(&m.name, "name"));
        let to = required_enum!(v, "state", m.state, pb::IncidentState, IncidentState);
        text(&mut v, "reason", &m.reason, 2000);
        counts(&mut v, "", m.killed, m.injured, m.missing);
        let expected = v.absorb(etag(&m.etag, "etag")).flatten();
        let ((fid, id), to) = v.finish((name.unwrap_or_default(), to)).map_err(st)?;
        let change = crate::store::IncidentChange {
            to: to.unwrap_or(IncidentState::Reported),
            reason: m.reason.trim().to_string(),
            killed: i64::from(m.killed),
            injured: i64::from(m.injured),
            missing: i64::from(m.missing),
            expected_version: expected,
        };
        let i = self.store.transition_incident(&a, &fid, &id, change).await;
        let i = self.outcome(&a, &format!("facilities/{fid}/incidents/{id}"), i).await?;
        Ok(Response::new(incident_out(&i)))
    }

    async fn get_occupancy(
        &self,
        req: Request<pb::GetOccupancyRequest>,
    ) -> Result<Response<pb::Occupancy>, Status> {
        self.access(&req, Action::FacilitiesRead, "GetOccupancy").await?;
        let id = facility_id(&req.get_ref().name, "name").map_err(st)?;
        let f = self.store.get(&id).await.map_err(st)?;
        let o = crate::occupancy::occupancy(self.store.db(), &id).await.map_err(st)?;
        Ok(Response::new(occupancy_out(&f, &o)))
    }

    async fn create_movement(
        &self,
        req: Request<pb::CreateMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "CreateMovement").await?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let new = people::new_movement(m.movement.as_ref()).map_err(st)?;
        let resource = format!("facilities/{}", new.source);
        let r = self.store.create_movement(&a, new, &self.rules, rid).await;
        let mv = self.outcome(&a, &resource, r).await?;
        Ok(Response::new(movement_out(&mv)))
    }

    async fn get_movement(
        &self,
        req: Request<pb::GetMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "GetMovement").await?;
        let id = people::movement_id(&req.get_ref().name, "name").map_err(st)?;
        let mv = self.store.movement(&a, &id).await;
        Ok(Response::new(movement_out(&self.read(&a, &format!("movements/{id}"), mv).await?)))
    }

    async fn list_movements(
        &self,
        req: Request<pb::ListMovementsRequest>,
    ) -> Result<Response<pb::ListMovementsResponse>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "ListMovements").await?;
        let m = req.into_inner();
        let size = paging::page_size(m.page_size).map_err(st)?;
        let filter = filter::parse(&m.filter)
            .and_then(|e| e.map(|e| filter::to_sql(&e, people::MOVEMENT_FILTER)).transpose())
            .map_err(st)?;
        let fp = paging::request_fingerprint(&[&m.filter]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut ms = self
            .store
            .movements(&a, filter.as_ref(), before.as_deref(), size + 1)
            .await
            .map_err(st)?;
        let next = paging::finish_page(&mut ms, size, &fp, |m| m.id.clone());
        let names: Vec<String> = ms.iter().map(Movement::name).collect();
        self.recorder.record(vec![a.entry(names.join(","), "manifest", "OK")]).await.map_err(st)?;
        Ok(Response::new(pb::ListMovementsResponse {
            movements: ms.iter().map(movement_out).collect(),
            next_page_token: next,
        }))
    }

    async fn approve_movement(
        &self,
        req: Request<pb::ApproveMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "ApproveMovement").await?;
        let m = req.into_inner();
        let step = self.step(&m.name, MovementState::Approved, "", &m.etag, &m.request_id, &m)?;
        self.movement_step(&a, step).await
    }

    async fn depart_movement(
        &self,
        req: Request<pb::DepartMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "DepartMovement").await?;
        let m = req.into_inner();
        let step = self.step(&m.name, MovementState::InTransit, "", &m.etag, &m.request_id, &m)?;
        self.movement_step(&a, step).await
    }

    async fn arrive_movement(
        &self,
        req: Request<pb::ArriveMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "ArriveMovement").await?;
        let m = req.into_inner();
        let step = self.step(&m.name, MovementState::Arrived, "", &m.etag, &m.request_id, &m)?;
        self.movement_step(&a, step).await
    }

    async fn abort_movement(
        &self,
        req: Request<pb::AbortMovementRequest>,
    ) -> Result<Response<pb::Movement>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "AbortMovement").await?;
        let m = req.into_inner();
        let step =
            self.step(&m.name, MovementState::Aborted, &m.reason, &m.etag, &m.request_id, &m)?;
        self.movement_step(&a, step).await
    }

    async fn record_headcount(
        &self,
        req: Request<pb::RecordHeadcountRequest>,
    ) -> Result<Response<pb::Headcount>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "RecordHeadcount").await?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let new = people::new_headcount(&m.parent, m.headcount.as_ref(), |v, t| {
            past_time(v, "headcount.count_time", t)
        })
        .map_err(st)?;
        let resource = format!("facilities/{}", new.facility_id);
        let r = self.store.record_headcount(&a, new, rid).await;
        let h = self.outcome(&a, &resource, r).await?;
        Ok(Response::new(headcount_out(&h)))
    }

    async fn get_headcount(
        &self,
        req: Request<pb::GetHeadcountRequest>,
    ) -> Result<Response<pb::Headcount>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "GetHeadcount").await?;
        let (fid, id) = people::headcount_name(&req.get_ref().name, "name").map_err(st)?;
        let h = self.store.headcount(&a, &fid, &id).await;
        let name = format!("facilities/{fid}/headcounts/{id}");
        Ok(Response::new(headcount_out(&self.read(&a, &name, h).await?)))
    }

    async fn list_headcounts(
        &self,
        req: Request<pb::ListHeadcountsRequest>,
    ) -> Result<Response<pb::ListHeadcountsResponse>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "ListHeadcounts").await?;
        let m = req.into_inner();
        let fid = facility_id(&m.parent, "parent").map_err(st)?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&fid]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let hs = self.store.headcounts(&a, &fid, before.as_deref(), size + 1).await;
        let mut hs = self.outcome(&a, &format!("facilities/{fid}"), hs).await?;
        let next = paging::finish_page(&mut hs, size, &fp, |h| h.id.clone());
        Ok(Response::new(pb::ListHeadcountsResponse {
            headcounts: hs.iter().map(headcount_out).collect(),
            next_page_token: next,
        }))
    }

    async fn mark_missing_unaccounted(
        &self,
        req: Request<pb::MarkMissingUnaccountedRequest>,
    ) -> Result<Response<pb::Headcount>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "MarkMissingUnaccounted").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let name = v.absorb(people::headcount_name(&m.name, "name"));
        text(&mut v, "reason", &m.reason, 1000);
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let (fid, id) = v.finish(name.unwrap_or_default()).map_err(st)?;
        let r = self.store.mark_missing_unaccounted(&a, &fid, &id, m.reason.trim(), rid).await;
        let h = self.outcome(&a, &format!("facilities/{fid}/headcounts/{id}"), r).await?;
        Ok(Response::new(headcount_out(&h)))
    }

    async fn plan_relocation(
        &self,
        req: Request<pb::PlanRelocationRequest>,
    ) -> Result<Response<pb::RelocationPlan>, Status> {
        let a = self.access(&req, Action::FacilitiesPeople, "PlanRelocation").await?;
        let m = req.into_inner();
        let mut v = Violations::new();
        let fid = v.absorb(facility_id(&m.name, "name"));
        let rid = v.absorb(idempotency::key(&m.request_id, "request_id", &m)).flatten();
        let fid = v.finish(fid.unwrap_or_default()).map_err(st)?;
        let r = self.store.plan_relocation(&a, &fid, &self.rules, rid).await;
        let p = self.outcome(&a, &format!("facilities/{fid}"), r).await?;
        Ok(Response::new(plan_out(&p)))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let a = self.access(&req, Action::FacilitiesRead, "WatchChanges").await?;
        let m = req.into_inner();
        // Facility and incident events carry no personal data and reach every reader;
        // movements and headcounts are tagged with their facilities, and reach the staff
        // posted at the facilities concerned and the coordinator, when they state a purpose;
        // each such event is audited as it is sent.
        let people = a.grant.allows(Action::FacilitiesPeople) && !a.purpose.is_empty();
        let scope = match self.store.facilities_run(&a).await.map_err(st)? {
            None if people => Scope::All,
            Some(run) if people => Scope::Only(concord_platform::auth::Visible {
                facilities: run,
                ..Default::default()
            }),
            _ => Scope::Only(concord_platform::auth::Visible::default()),
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
            self.watch_tuning,
            self.shutdown.clone(),
        )
        .await
        .map_err(st)?;
        let recorder = self.recorder.clone();
        // Like every watch, it ends after a while for the client to resume with a fresh
        // authorization (a facility may have changed custodian meanwhile).
        let stream = stream.then(move |r| {
            let (recorder, a) = (recorder.clone(), a.clone());
            async move {
                let e = r.map_err(st)?;
                if e.event_type.starts_with("movement.") || e.event_type.starts_with("headcount.") {
                    // Sent only once its audit entry is stored.
                    let entry = a.entry(e.resource_name.clone(), "manifest", "OK");
                    recorder.record(vec![entry]).await.map_err(st)?;
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
