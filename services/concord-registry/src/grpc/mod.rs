//! The registry's gRPC surface: the only place that sees request and response messages. Each
//! method authenticates (the principal from the identity layer), parses its request into
//! domain values, calls the store, and converts the result; errors become `Status` in
//! `concord_platform::error`.

pub mod convert;

use std::pin::Pin;

use concord_platform::access::{self, Access, PurposeRule};
use concord_platform::audit::Recorder;
use concord_platform::auth::{self, Scope};
use concord_platform::error::{Error, Result};
use concord_platform::filter::{self, Field, FieldType};
use concord_platform::outbox::{self, WatchParams, WatchTuning};
use concord_platform::policy::{Action, FieldClass, Policy};
use concord_platform::server::Shutdown;
use concord_platform::time::{from_timestamp, now_micros};
use concord_platform::{idempotency, paging};
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_server::RegistryService;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{self, *};
use crate::store::{AccessGrant, GrantKind, InsertOutcome, NewPerson, RecordKind, Store};
use convert::{enum_in, enum_out, person_id};

/// Error domain of the registry (google.rpc.ErrorInfo.domain).
pub const DOMAIN: &str = "registry.concord";

/// Rows per transaction in an import.
const IMPORT_BATCH: usize = 5000;

/// Row errors listed in one import response; the rest are counted, so the response stays
/// under the message size cap whatever the caller sends.
const MAX_IMPORT_ERRORS: usize = 1000;

/// Fields of people callers may filter on (AIP-160).
const PERSON_FILTER: &[Field] = &[
    Field { name: "category", sql: "p.category", ty: FieldType::Enum { prefix: "PERSON_CATEGORY_", values: Category::NAMES }, equality_only: true },
    Field { name: "custody_status", sql: "p.custody_status", ty: FieldType::Enum { prefix: "CUSTODY_STATUS_", values: CustodyStatus::NAMES }, equality_only: true },
    Field { name: "sex", sql: "p.sex", ty: FieldType::Enum { prefix: "SEX_", values: Sex::NAMES }, equality_only: true },
    Field { name: "legal_status", sql: "p.legal_status", ty: FieldType::Enum { prefix: "LEGAL_STATUS_", values: LegalStatus::NAMES }, equality_only: true },
    Field { name: "identity_confidence", sql: "p.identity_confidence", ty: FieldType::Enum { prefix: "IDENTITY_CONFIDENCE_", values: Confidence::NAMES }, equality_only: true },
    Field { name: "facility_id", sql: "p.facility_id", ty: FieldType::Text, equality_only: true },
    Field { name: "birth_year", sql: "p.birth_year", ty: FieldType::Int, equality_only: false },
    Field {
        name: "nationality",
        sql: "EXISTS (SELECT 1 FROM person_nationalities fn WHERE fn.person_id = p.id AND fn.state = {})",
        ty: FieldType::Text,
        equality_only: true,
    },
];

const CANDIDATE_FILTER: &[Field] = &[
    Field {
        name: "state",
        sql: "d.state",
        ty: FieldType::Enum { prefix: "DUPLICATE_STATE_", values: DuplicateState::NAMES },
        equality_only: true,
    },
    Field {
        name: "person",
        sql: "(d.person_id = {} OR d.other_person_id = {})",
        ty: FieldType::Text,
        equality_only: true,
    },
];

/// The registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    policy: std::sync::Arc<Policy>,
    recorder: Recorder,
    /// False only in the benchmark's baseline (see [`Registry::unenforced_for_benchmarks`]).
    enforce: bool,
    shutdown: Shutdown,
    watch_tuning: WatchTuning,
    streams: std::sync::Arc<concord_platform::quota::StreamLimiter>,
}

impl Registry {
    /// A registry over `store` enforcing `policy`; watch streams end when `shutdown` begins.
    pub fn new(store: Store, policy: std::sync::Arc<Policy>, shutdown: Shutdown) -> Self {
        let recorder = Recorder::spawn(store.db().clone());
        Self {
            store,
            policy,
            recorder,
            enforce: true,
            shutdown,
            watch_tuning: WatchTuning::default(),
            streams: std::sync::Arc::new(concord_platform::quota::StreamLimiter::new(16)),
        }
    }

    /// A registry that skips the policy, the shared-records lookup and read auditing: the
    /// baseline `concord-bench` measures their cost against. Never served by `concord`.
    pub fn unenforced_for_benchmarks(mut self) -> Self {
        self.enforce = false;
        self
    }

    /// Caps each agency's open watch streams.
    pub fn with_stream_limit(mut self, per_agency: usize) -> Self {
        self.streams = std::sync::Arc::new(concord_platform::quota::StreamLimiter::new(per_agency));
        self
    }

    /// Overrides watch stream timings (tests use short ones).
    pub fn with_watch_tuning(mut self, tuning: WatchTuning) -> Self {
        self.watch_tuning = tuning;
        self
    }
}

fn st(e: Error) -> Status {
    e.into_status(DOMAIN)
}

impl Registry {
    /// The call's access: PERMISSION_DENIED (audited) unless the policy permits `action`,
    /// INVALID_ARGUMENT without a purpose; then the caller's scope with what is shared with it.
    async fn access<T>(
        &self,
        req: &Request<T>,
        action: Action,
        rpc: &'static str,
    ) -> Result<Access, Status> {
        if !self.enforce {
            let principal = auth::principal(req).map_err(st)?;
            let purpose = access::purpose(req.metadata()).unwrap_or_default();
            let grant = concord_platform::policy::Grant::unrestricted();
            return Ok(Access::resolve(principal, grant, Default::default(), purpose, rpc));
        }
        let store = &self.store;
        access::authorize(
            req,
            &self.policy,
            &self.recorder,
            action,
            rpc,
            PurposeRule::Required,
            |p| async move { store.shared_with(&p).await },
        )
        .await
        .map_err(st)
    }

    /// Records a read (or a refusal) and waits for the record to commit: nothing is returned
    /// that is not in the audit log.
    async fn audit(
        &self,
        a: &Access,
        resource: &str,
        fields: &str,
        outcome: &str,
    ) -> Result<(), Status> {
        if !self.enforce {
            return Ok(());
        }
        self.recorder.record(vec![a.entry(resource, fields, outcome)]).await.map_err(st)
    }

    /// Records the read of `persons` and returns them as the caller may see them.
    async fn persons_read(
        &self,
        a: &Access,
        persons: &[&Person],
    ) -> Result<Vec<pb::Person>, Status> {
        let mut resources = Vec::with_capacity(persons.len());
        let mut out = Vec::with_capacity(persons.len());
        for p in persons {
            let basis = p.with_subject(|s| a.basis(s));
            resources.push(if basis == "own" {
                p.name()
            } else {
                format!("{} [{basis}]", p.name())
            });
            out.push(self.person_out(a, p).await);
        }
        let resource =
            if resources.is_empty() { "(none)".to_string() } else { resources.join(" ") };
        self.audit(a, &resource, &a.grant.fields.names(), "OK").await?;
        Ok(out)
    }

    /// `p` as the caller may see it: redacted, and without a pointer to a survivor outside
    /// its scope (which does not exist for it). Merges are rare: one lookup when there is one.
    async fn person_out(&self, a: &Access, p: &Person) -> pb::Person {
        let mut m = convert::person_for(p, a.fields_for(&p.id));
        if !p.merged_into.is_empty()
            && self.store.get_person(&a.scope, &p.merged_into).await.is_err()
        {
            m.merged_into.clear();
        }
        m
    }

    /// Checks that the caller may read `class` on person `id` (break-the-glass opens every
    /// class), for the record lists.
    fn require_class(a: &Access, id: &str, class: FieldClass, what: &str) -> Result<(), Status> {
        if a.fields_for(id).contains(class) {
            Ok(())
        } else {
            Err(st(concord_platform::Error::PermissionDenied(format!(
                "{what} are {} data, which this caller may not read or write",
                class.as_str()
            ))))
        }
    }
}

fn parse_filter(f: &str, schema: &[Field]) -> Result<Option<concord_platform::sql::Sql>> {
    filter::parse(f)?.map(|e| filter::to_sql(&e, schema)).transpose()
}

fn text(
    v: &mut concord_platform::error::Violations,
    field: &str,
    s: &str,
    required: bool,
    max: usize,
) {
    if required && s.trim().is_empty() {
        v.add(field, "is required");
    } else if s.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryService for Registry {
    async fn create_person(
        &self,
        req: Request<pb::CreatePersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let a = self.access(&req, Action::PersonsCreate, "CreatePerson").await?;
        let msg = req.into_inner();
        let rid = idempotency::key(&msg.request_id, "request_id", &msg).map_err(st)?;
        let person =
            msg.person.as_ref().ok_or_else(|| st(Error::invalid("person", "is required")))?;
        let data = convert::person_data(person, "person").map_err(st)?;
        check_writable(&a.write_scope, None, &data).map_err(st)?;
        let mut out = self
            .store
            .insert_persons(&a, vec![NewPerson { data, request_id: rid }], "CreatePerson")
            .await
            .map_err(st)?;
        match out.pop() {
            Some(InsertOutcome::Created(p)) => Ok(Response::new(self.person_out(&a, &p).await)),
            Some(InsertOutcome::Replayed(name)) => {
                let id = person_id(&name, "name").map_err(st)?;
                let p = self.store.get_person(&a.scope, &id).await.map_err(st)?;
                let mut out = self.persons_read(&a, &[&p]).await?;
                Ok(Response::new(out.remove(0)))
            }
            Some(InsertOutcome::Rejected(e)) => Err(st(e)),
            None => Err(st(Error::internal(anyhow::anyhow!("insert returned no outcome")))),
        }
    }

    async fn get_person(
        &self,
        req: Request<pb::GetPersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let a = self.access(&req, Action::PersonsRead, "GetPerson").await?;
        let id = person_id(&req.get_ref().name, "name").map_err(st)?;
        let p = match self.store.get_person(&a.scope, &id).await {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, Error::NotFound(_)) {
                    self.audit(&a, &format!("persons/{id}"), "", "NOT_FOUND").await?;
                }
                return Err(st(e));
            }
        };
        let mut out = self.persons_read(&a, &[&p]).await?;
        Ok(Response::new(out.remove(0)))
    }

    async fn list_persons(
        &self,
        req: Request<pb::ListPersonsRequest>,
    ) -> Result<Response<pb::ListPersonsResponse>, Status> {
        let a = self.access(&req, Action::PersonsRead, "ListPersons").await?;
        let msg = req.into_inner();
        let size = paging::page_size(msg.page_size).map_err(st)?;
        let filter = parse_filter(&msg.filter, PERSON_FILTER).map_err(st)?;
        let fp = paging::request_fingerprint(&[&msg.filter]);
        let after: Option<String> = paging::decode(&msg.page_token, &fp).map_err(st)?;
        let mut persons = self
            .store
            .list_persons(&a.scope, filter.as_ref(), after.as_deref(), size + 1)
            .await
            .map_err(st)?;
        let next = paging::finish_page(&mut persons, size, &fp, |p| p.id.clone());
        Ok(Response::new(pb::ListPersonsResponse {
            persons: self.persons_read(&a, &persons.iter().collect::<Vec<_>>()).await?,
            next_page_token: next,
        }))
    }

    async fn summarize_persons(
        &self,
        req: Request<pb::SummarizePersonsRequest>,
    ) -> Result<Response<pb::SummarizePersonsResponse>, Status> {
        let a = self.access(&req, Action::PersonsRead, "SummarizePersons").await?;
        let msg = req.into_inner();
        let (column, class, prefix) = match pb::PersonGrouping::try_from(msg.group_by) {
            Ok(pb::PersonGrouping::CustodyStatus) => {
                ("custody_status", FieldClass::Custody, "CUSTODY_STATUS_")
            }
            Ok(pb::PersonGrouping::Facility) => ("facility_id", FieldClass::Custody, ""),
            Ok(pb::PersonGrouping::Category) => {
                ("category", FieldClass::Identity, "PERSON_CATEGORY_")
            }
            _ => {
                return Err(st(Error::invalid(
                    "group_by",
                    "is required; use one of CUSTODY_STATUS, FACILITY, CATEGORY",
                )))
            }
        };
        // Counting by a field, or filtering on one, says something about it: the caller must
        // read its class (custody status and facility are custody data).
        let custody_filter =
            msg.filter.contains("custody_status") || msg.filter.contains("facility_id");
        let class = if custody_filter && a.grant.fields.contains(class) {
            FieldClass::Custody
        } else {
            class
        };
        if !a.grant.fields.contains(class) {
            let e = concord_platform::Error::PermissionDenied(format!(
                "this summary (by {column}, filter: {:?}) reads {} data, which this caller may not read",
                msg.filter,
                class.as_str()
            ));
            self.audit(&a, "persons (summary)", column, e.refusal().unwrap_or("")).await?;
            return Err(st(e));
        }
        let filter = parse_filter(&msg.filter, PERSON_FILTER).map_err(st)?;
        let rows = self.store.summarize(&a.scope, filter.as_ref(), column).await.map_err(st)?;
        self.audit(
            &a,
            &format!("persons (summary by {column}, filter: {})", msg.filter),
            column,
            "OK",
        )
        .await?;
        let total = rows.iter().map(|(_, n)| n).sum();
        Ok(Response::new(pb::SummarizePersonsResponse {
            total,
            counts: rows
                .into_iter()
                .map(|(k, count)| pb::PersonCount {
                    key: if prefix.is_empty() || k.is_empty() { k } else { format!("{prefix}{k}") },
                    count,
                })
                .collect(),
        }))
    }

    async fn update_person(
        &self,
        req: Request<pb::UpdatePersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let a = self.access(&req, Action::PersonsUpdate, "UpdatePerson").await?;
        let msg = req.into_inner();
        let rid = idempotency::key(&msg.request_id, "request_id", &msg).map_err(st)?;
        let incoming =
            msg.person.clone().ok_or_else(|| st(Error::invalid("person", "is required")))?;
        let id = person_id(&incoming.name, "person.name").map_err(st)?;
        let expected = domain::parse_etag(&incoming.etag, "person.etag").map_err(st)?;
        let paths = msg.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(st(Error::invalid("update_mask", "name at least one field to update")));
        }
        const UPDATABLE: &[&str] = &[
            "names",
            "sex",
            "birth_date",
            "nationalities",
            "category",
            "identity_confidence",
            "biometric_references",
            "legal_status",
        ];
        let mut v = concord_platform::error::Violations::new();
        for path in &paths {
            if !UPDATABLE.contains(&path.as_str()) {
                let why =
                    if ["custody_status", "facility_id", "section_id"].contains(&path.as_str()) {
                        "changes only through the custody methods (AdmitPerson, StartTransfer, ...)"
                            .to_string()
                    } else {
                        format!("cannot be updated; updatable fields are: {}", UPDATABLE.join(", "))
                    };
                v.add(format!("update_mask.paths[{path}]"), why);
            }
        }
        v.finish(()).map_err(st)?;
        // A caller may not overwrite what it may not read.
        for path in &paths {
            if let Some((_, class)) = convert::PERSON_FIELD_CLASSES.iter().find(|(f, _)| f == path)
            {
                a.grant.require_field(*class, path).map_err(st)?;
            }
        }
        let scope = a.write_scope.clone();
        let fields = paths.join(",");
        let p = self
            .store
            .update_person(&a, &id, &fields, expected, rid, |current| {
                // Start from the stored record in its wire form, overwrite the masked fields,
                // and parse the whole: one validation path for create and update.
                let mut merged =
                    convert::person_out(&Person::registered(id.clone(), current.clone(), 0));
                for path in &paths {
                    match path.as_str() {
                        "names" => merged.names = incoming.names.clone(),
                        "sex" => merged.sex = incoming.sex,
                        "birth_date" => merged.birth_date = incoming.birth_date,
                        "nationalities" => merged.nationalities = incoming.nationalities.clone(),
                        "category" => merged.category = incoming.category,
                        "identity_confidence" => {
                            merged.identity_confidence = incoming.identity_confidence
                        }
                        "biometric_references" => {
                            merged.biometric_references = incoming.biometric_references.clone()
                        }
                        "legal_status" => merged.legal_status = incoming.legal_status,
                        _ => {}
                    }
                }
                let new = convert::person_data(&merged, "person")?;
                check_writable(&scope, Some(current), &new)?;
                Ok(new)
            })
            .await
            .map_err(st)?;
        Ok(Response::new(self.person_out(&a, &p).await))
    }

    async fn search_persons(
        &self,
        req: Request<pb::SearchPersonsRequest>,
    ) -> Result<Response<pb::SearchPersonsResponse>, Status> {
        let a = self.access(&req, Action::PersonsRead, "SearchPersons").await?;
        let msg = req.into_inner();
        let size = paging::page_size(msg.page_size).map_err(st)?;
        if msg.query.chars().count() > domain::MAX_NAME_CHARS {
            return Err(st(Error::invalid(
                "query",
                format!("must be at most {} characters", domain::MAX_NAME_CHARS),
            )));
        }
        let tokens = crate::search_keys::tokens(&msg.query);
        if tokens.is_empty() {
            return Err(st(Error::invalid("query", "must contain at least one letter of a name")));
        }
        let filter = parse_filter(&msg.filter, PERSON_FILTER).map_err(st)?;
        let fp = paging::request_fingerprint(&[&msg.query, &msg.filter]);
        let after: Option<(i64, String)> = paging::decode(&msg.page_token, &fp).map_err(st)?;
        let mut hits = self
            .store
            .search(&a.scope, &tokens, filter.as_ref(), after, size + 1)
            .await
            .map_err(st)?;
        let next = if hits.len() as i64 > size {
            hits.truncate(size as usize);
            hits.last()
                .map(|h| paging::encode(&fp, &(h.score, h.person.id.clone())))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let skeletons: Vec<&str> = tokens.iter().map(|t| t.skeleton.as_str()).collect();
        let persons =
            self.persons_read(&a, &hits.iter().map(|h| &h.person).collect::<Vec<_>>()).await?;
        let results = hits
            .iter()
            .zip(persons)
            .map(|(h, person)| pb::SearchResult {
                matched_names: if person.redacted_fields.iter().any(|f| f == "names") {
                    vec![]
                } else {
                    h.person
                        .data
                        .names
                        .iter()
                        .filter(|n| {
                            crate::search_keys::tokens(&n.full_name)
                                .iter()
                                .any(|t| skeletons.contains(&t.skeleton.as_str()))
                        })
                        .map(|n| n.full_name.clone())
                        .collect()
                },
                person: Some(person),
                score: h.score as f64,
            })
            .collect();
        Ok(Response::new(pb::SearchPersonsResponse { results, next_page_token: next }))
    }

    async fn import_persons(
        &self,
        req: Request<Streaming<pb::ImportPersonsRequest>>,
    ) -> Result<Response<pb::ImportPersonsResponse>, Status> {
        let a = self.access(&req, Action::PersonsImport, "ImportPersons").await?;
        let mut stream = req.into_inner();
        let scope = a.write_scope.clone();
        // A reader task decodes and validates rows while the previous batch is being written,
        // so neither the network nor the database waits for the other.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(i64, NewPerson)>>(2);
        let reader = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut errors_dropped = 0usize;
            let mut batch = Vec::with_capacity(IMPORT_BATCH);
            let mut index: i64 = 0;
            while let Some(row) = stream.next().await {
                let row = row?;
                let i = index;
                index += 1;
                match parse_import_row(&row, &scope) {
                    Ok(np) => batch.push((i, np)),
                    Err(Error::InvalidArgument(violations)) => {
                        // Keep what a response can list; count the rest.
                        if errors.len() <= MAX_IMPORT_ERRORS {
                            errors.extend(violations.into_iter().map(|fv| row_error(i, fv)));
                        } else {
                            errors_dropped += 1;
                        }
                    }
                    Err(e) => return Err(st(e)),
                }
                if batch.len() >= IMPORT_BATCH
                    && tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH)))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
            Ok::<_, Status>((errors, errors_dropped))
        });
        let mut resp = pb::ImportPersonsResponse::default();
        while let Some(batch) = rx.recv().await {
            let (indexes, rows): (Vec<i64>, Vec<NewPerson>) = batch.into_iter().unzip();
            let outcomes =
                self.store.insert_persons(&a, rows, "ImportPersons").await.map_err(st)?;
            for (i, o) in indexes.into_iter().zip(outcomes) {
                match o {
                    InsertOutcome::Created(_) => resp.created_count += 1,
                    InsertOutcome::Replayed(_) => resp.already_present_count += 1,
                    InsertOutcome::Rejected(Error::InvalidArgument(vs)) => {
                        resp.errors.extend(vs.into_iter().map(|fv| row_error(i, fv)))
                    }
                    InsertOutcome::Rejected(e) => resp.errors.push(pb::ImportRowError {
                        index: i,
                        field: String::new(),
                        description: e.to_string(),
                    }),
                }
            }
        }
        let (parse_errors, dropped) = reader.await.map_err(|e| st(Error::internal(e)))??;
        resp.errors.extend(parse_errors);
        resp.errors.sort_by_key(|e| e.index);
        if resp.errors.len() > MAX_IMPORT_ERRORS || dropped > 0 {
            let more = resp.errors.len().saturating_sub(MAX_IMPORT_ERRORS) + dropped;
            resp.errors.truncate(MAX_IMPORT_ERRORS);
            resp.errors.push(pb::ImportRowError {
                index: -1,
                field: String::new(),
                description: format!(
                    "{more} more rows were rejected; fix the rows above and retry the import"
                ),
            });
        }
        tracing::info!(
            created = resp.created_count,
            replayed = resp.already_present_count,
            rejected = resp.errors.len(),
            "import finished"
        );
        Ok(Response::new(resp))
    }

    async fn admit_person(
        &self,
        req: Request<pb::AdmitPersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "AdmitPerson").await?;
        let m = req.into_inner();
        let mut t =
            transition_in(&m.name, m.transition.as_ref(), &m, Transition::Admit).map_err(st)?;
        t.facility_id = required_id(&m.facility_id, "facility_id").map_err(st)?;
        t.section_id = optional_id(&m.section_id, "section_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn start_transfer(
        &self,
        req: Request<pb::StartTransferRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "StartTransfer").await?;
        let m = req.into_inner();
        let mut t = transition_in(&m.name, m.transition.as_ref(), &m, Transition::StartTransfer)
            .map_err(st)?;
        t.facility_id =
            required_id(&m.destination_facility_id, "destination_facility_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn hospitalise_person(
        &self,
        req: Request<pb::HospitalisePersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "HospitalisePerson").await?;
        let m = req.into_inner();
        let mut t = transition_in(&m.name, m.transition.as_ref(), &m, Transition::Hospitalise)
            .map_err(st)?;
        t.facility_id = optional_id(&m.facility_id, "facility_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn admit_to_rehabilitation(
        &self,
        req: Request<pb::AdmitToRehabilitationRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "AdmitToRehabilitation").await?;
        let m = req.into_inner();
        let mut t =
            transition_in(&m.name, m.transition.as_ref(), &m, Transition::AdmitToRehabilitation)
                .map_err(st)?;
        t.facility_id = required_id(&m.facility_id, "facility_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn return_to_custody(
        &self,
        req: Request<pb::ReturnToCustodyRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "ReturnToCustody").await?;
        let m = req.into_inner();
        let mut t = transition_in(&m.name, m.transition.as_ref(), &m, Transition::ReturnToCustody)
            .map_err(st)?;
        t.facility_id = required_id(&m.facility_id, "facility_id").map_err(st)?;
        t.section_id = optional_id(&m.section_id, "section_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn record_escape(
        &self,
        req: Request<pb::RecordEscapeRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "RecordEscape").await?;
        let m = req.into_inner();
        let mut t =
            transition_in(&m.name, m.transition.as_ref(), &m, Transition::Escape).map_err(st)?;
        t.reference = optional_id(&m.incident_id, "incident_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn record_recapture(
        &self,
        req: Request<pb::RecordRecaptureRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "RecordRecapture").await?;
        let m = req.into_inner();
        let t =
            transition_in(&m.name, m.transition.as_ref(), &m, Transition::Recapture).map_err(st)?;
        self.apply(&p, t).await
    }

    async fn mark_unaccounted(
        &self,
        req: Request<pb::MarkUnaccountedRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "MarkUnaccounted").await?;
        let m = req.into_inner();
        let mut t = transition_in(&m.name, m.transition.as_ref(), &m, Transition::MarkUnaccounted)
            .map_err(st)?;
        t.reference = optional_id(&m.incident_id, "incident_id").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn record_hand_over(
        &self,
        req: Request<pb::RecordHandOverRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "RecordHandOver").await?;
        let m = req.into_inner();
        let mut v = concord_platform::error::Violations::new();
        let t = v.absorb(transition_in(&m.name, m.transition.as_ref(), &m, Transition::HandOver));
        v.absorb(domain::validate_state(&m.receiving_state, "receiving_state"));
        let disposition = enum_in!(v, "disposition", m.disposition, pb::Disposition, Disposition);
        if m.disposition == 0 {
            v.add("disposition", "is required");
        }
        let mut t = v
            .finish(t)
            .map_err(st)?
            .ok_or_else(|| st(Error::invalid("transition", "is required")))?;
        t.receiving_state = m.receiving_state.clone();
        t.disposition = disposition;
        t.reference = optional_id(&m.diplomatic_request, "diplomatic_request").map_err(st)?;
        self.apply(&p, t).await
    }

    async fn record_release(
        &self,
        req: Request<pb::RecordReleaseRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "RecordRelease").await?;
        let m = req.into_inner();
        let t =
            transition_in(&m.name, m.transition.as_ref(), &m, Transition::Release).map_err(st)?;
        self.apply(&p, t).await
    }

    async fn record_death(
        &self,
        req: Request<pb::RecordDeathRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let p = self.access(&req, Action::CustodyRecord, "RecordDeath").await?;
        let m = req.into_inner();
        let t = transition_in(&m.name, m.transition.as_ref(), &m, Transition::Death).map_err(st)?;
        self.apply(&p, t).await
    }

    async fn list_custody_events(
        &self,
        req: Request<pb::ListCustodyEventsRequest>,
    ) -> Result<Response<pb::ListCustodyEventsResponse>, Status> {
        let a = self.access(&req, Action::CustodyRead, "ListCustodyEvents").await?;
        let m = req.into_inner();
        let id = person_id(&m.parent, "parent").map_err(st)?;
        Self::require_class(&a, &id, FieldClass::Custody, "custody events")?;
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&id]);
        let after: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut events = self
            .store
            .custody_events(&a.scope, &id, after.as_deref(), size + 1)
            .await
            .map_err(st)?;
        let next = paging::finish_page(&mut events, size, &fp, |e| e.id.clone());
        self.audit(&a, &format!("persons/{id}/custodyEvents"), "custody", "OK").await?;
        Ok(Response::new(pb::ListCustodyEventsResponse {
            custody_events: events.iter().map(convert::custody_event_out).collect(),
            next_page_token: next,
        }))
    }

    async fn list_duplicate_candidates(
        &self,
        req: Request<pb::ListDuplicateCandidatesRequest>,
    ) -> Result<Response<pb::ListDuplicateCandidatesResponse>, Status> {
        let a = self.access(&req, Action::DuplicatesReview, "ListDuplicateCandidates").await?;
        let m = req.into_inner();
        let size = paging::page_size(m.page_size).map_err(st)?;
        let filter = parse_filter(&m.filter, CANDIDATE_FILTER).map_err(st)?;
        let fp = paging::request_fingerprint(&[&m.filter]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut cs = self
            .store
            .list_candidates(&a.scope, filter.as_ref(), before.as_deref(), size + 1)
            .await
            .map_err(st)?;
        let next = paging::finish_page(&mut cs, size, &fp, |c| c.id.clone());
        let names: Vec<String> =
            cs.iter().map(|c| format!("duplicateCandidates/{}", c.id)).collect();
        self.audit(&a, &names.join(" "), "identity", "OK").await?;
        Ok(Response::new(pb::ListDuplicateCandidatesResponse {
            duplicate_candidates: cs.iter().map(convert::candidate_out).collect(),
            next_page_token: next,
        }))
    }

    async fn reject_duplicate_candidate(
        &self,
        req: Request<pb::RejectDuplicateCandidateRequest>,
    ) -> Result<Response<pb::DuplicateCandidate>, Status> {
        let p = self.access(&req, Action::DuplicatesReview, "RejectDuplicateCandidate").await?;
        let m = req.into_inner();
        self.review(&p, &m.name, DuplicateState::Invalid, None, &m.reason, &m.etag).await
    }

    async fn merge_duplicate_candidate(
        &self,
        req: Request<pb::MergeDuplicateCandidateRequest>,
    ) -> Result<Response<pb::DuplicateCandidate>, Status> {
        let p = self.access(&req, Action::DuplicatesReview, "MergeDuplicateCandidate").await?;
        let m = req.into_inner();
        let survivor = person_id(&m.surviving_person, "surviving_person").map_err(st)?;
        self.review(&p, &m.name, DuplicateState::Merged, Some(&survivor), &m.reason, &m.etag).await
    }

    async fn unmerge_duplicate_candidate(
        &self,
        req: Request<pb::UnmergeDuplicateCandidateRequest>,
    ) -> Result<Response<pb::DuplicateCandidate>, Status> {
        let p = self.access(&req, Action::DuplicatesReview, "UnmergeDuplicateCandidate").await?;
        let m = req.into_inner();
        self.review(&p, &m.name, DuplicateState::Open, None, &m.reason, &m.etag).await
    }

    async fn create_relationship(
        &self,
        req: Request<pb::CreateRelationshipRequest>,
    ) -> Result<Response<pb::Relationship>, Status> {
        let p = self.access(&req, Action::RecordsWrite, "CreateRelationship").await?;
        p.grant.require_field(FieldClass::Identity, "relationships").map_err(st)?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let mut r =
            m.relationship.ok_or_else(|| st(Error::invalid("relationship", "is required")))?;
        let mut v = concord_platform::error::Violations::new();
        let a = v.absorb(person_id(&r.person, "relationship.person"));
        let b = v.absorb(person_id(&r.related_person, "relationship.related_person"));
        enum_in!(v, "relationship.kind", r.kind, pb::RelationshipKind, RelationshipKind);
        if r.kind == 0 {
            v.add("relationship.kind", "is required");
        }
        enum_in!(v, "relationship.confidence", r.confidence, pb::IdentityConfidence, Confidence);
        text(&mut v, "relationship.evidence", &r.evidence, false, 1000);
        if a.is_some() && a == b {
            v.add("relationship.related_person", "must differ from relationship.person");
        }
        let (a, b) = v.finish((a.unwrap_or_default(), b.unwrap_or_default())).map_err(st)?;
        r.person = format!("persons/{a}");
        r.related_person = format!("persons/{b}");
        let rec = self
            .store
            .create_record(&p, RecordKind::Relationship, &a, &b, r.encode_to_vec(), None, rid)
            .await
            .map_err(st)?;
        Ok(Response::new(relationship_out(&rec)?))
    }

    async fn list_relationships(
        &self,
        req: Request<pb::ListRelationshipsRequest>,
    ) -> Result<Response<pb::ListRelationshipsResponse>, Status> {
        let p = self.access(&req, Action::RecordsRead, "ListRelationships").await?;
        let id = person_id(&req.get_ref().parent, "parent").map_err(st)?;
        Self::require_class(&p, &id, FieldClass::Identity, "relationships")?;
        let recs =
            self.store.list_records(&p.scope, RecordKind::Relationship, &id).await.map_err(st)?;
        self.audit(&p, &format!("persons/{id}/relationships"), "identity", "OK").await?;
        let relationships = recs.iter().map(relationship_out).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListRelationshipsResponse { relationships }))
    }

    async fn create_household(
        &self,
        req: Request<pb::CreateHouseholdRequest>,
    ) -> Result<Response<pb::Household>, Status> {
        let p = self.access(&req, Action::RecordsWrite, "CreateHousehold").await?;
        p.grant.require_field(FieldClass::Identity, "households").map_err(st)?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let h = m.household.ok_or_else(|| st(Error::invalid("household", "is required")))?;
        let mut v = concord_platform::error::Violations::new();
        let members: Vec<String> = h
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, n)| v.absorb(person_id(n, &format!("household.members[{i}]"))))
            .collect();
        if h.members.is_empty() {
            v.add("household.members", "at least one member is required");
        }
        if h.members.len() > 64 {
            v.add("household.members", "at most 64 members");
        }
        let head = if h.head.is_empty() {
            String::new()
        } else {
            v.absorb(person_id(&h.head, "household.head")).unwrap_or_default()
        };
        if !head.is_empty() && !members.contains(&head) {
            v.add("household.head", "must be one of the members");
        }
        let mut unique = members.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != members.len() {
            v.add("household.members", "lists a person twice");
        }
        v.finish(()).map_err(st)?;
        let stored = self.store.create_household(&p, &head, &members, rid).await.map_err(st)?;
        Ok(Response::new(household_out(&stored)))
    }

    async fn get_household(
        &self,
        req: Request<pb::GetHouseholdRequest>,
    ) -> Result<Response<pb::Household>, Status> {
        let p = self.access(&req, Action::RecordsRead, "GetHousehold").await?;
        p.grant.require_field(FieldClass::Identity, "households").map_err(st)?;
        let id = convert::resource_id(&req.get_ref().name, "households/", "name").map_err(st)?;
        let h = self.store.get_household(&p.scope, &id).await.map_err(st)?;
        self.audit(&p, &format!("households/{id}"), "identity", "OK").await?;
        Ok(Response::new(household_out(&h)))
    }

    async fn create_identity_document(
        &self,
        req: Request<pb::CreateIdentityDocumentRequest>,
    ) -> Result<Response<pb::IdentityDocument>, Status> {
        let p = self.access(&req, Action::RecordsWrite, "CreateIdentityDocument").await?;
        p.grant.require_field(FieldClass::Documents, "identity documents").map_err(st)?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let mut v = concord_platform::error::Violations::new();
        let id = v.absorb(person_id(&m.parent, "parent"));
        let d = m.identity_document.clone().unwrap_or_default();
        if m.identity_document.is_none() {
            v.add("identity_document", "is required");
        }
        let kind = enum_in!(v, "identity_document.kind", d.kind, pb::DocumentKind, DocumentKind);
        if d.kind == 0 {
            v.add("identity_document.kind", "is required");
        }
        v.absorb(domain::validate_state(&d.issuing_state, "identity_document.issuing_state"));
        text(&mut v, "identity_document.number", &d.number, true, 64);
        let id = v.finish(id).map_err(st)?.unwrap_or_default();
        let key = kind
            .map(|k| format!("doc:{}:{}:{}", d.issuing_state, k, d.number.trim().to_uppercase()));
        let rec = self
            .store
            .create_record(&p, RecordKind::Document, &id, "", d.encode_to_vec(), key, rid)
            .await
            .map_err(st)?;
        Ok(Response::new(decode_record::<pb::IdentityDocument>(&rec, |x, name, t| {
            x.name = name;
            x.create_time = Some(t);
        })?))
    }

    async fn list_identity_documents(
        &self,
        req: Request<pb::ListIdentityDocumentsRequest>,
    ) -> Result<Response<pb::ListIdentityDocumentsResponse>, Status> {
        let p = self.access(&req, Action::RecordsRead, "ListIdentityDocuments").await?;
        let id = person_id(&req.get_ref().parent, "parent").map_err(st)?;
        Self::require_class(&p, &id, FieldClass::Documents, "identity documents")?;
        let recs =
            self.store.list_records(&p.scope, RecordKind::Document, &id).await.map_err(st)?;
        self.audit(&p, &format!("persons/{id}/documents"), "documents", "OK").await?;
        let identity_documents = recs
            .iter()
            .map(|r| {
                decode_record::<pb::IdentityDocument>(r, |x, name, t| {
                    x.name = name;
                    x.create_time = Some(t);
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListIdentityDocumentsResponse { identity_documents }))
    }

    async fn create_identity_verification(
        &self,
        req: Request<pb::CreateIdentityVerificationRequest>,
    ) -> Result<Response<pb::IdentityVerification>, Status> {
        let p = self.access(&req, Action::RecordsWrite, "CreateIdentityVerification").await?;
        p.grant.require_field(FieldClass::Documents, "identity verifications").map_err(st)?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let mut v = concord_platform::error::Violations::new();
        let id = v.absorb(person_id(&m.parent, "parent"));
        let mut d = m.identity_verification.clone().unwrap_or_default();
        if m.identity_verification.is_none() {
            v.add("identity_verification", "is required");
        }
        enum_in!(
            v,
            "identity_verification.method",
            d.method,
            pb::VerificationMethod,
            VerificationMethod
        );
        enum_in!(
            v,
            "identity_verification.result",
            d.result,
            pb::VerificationResult,
            VerificationResult
        );
        if d.method == 0 {
            v.add("identity_verification.method", "is required");
        }
        if d.result == 0 {
            v.add("identity_verification.result", "is required");
        }
        v.absorb(domain::validate_state(
            &d.verifying_state,
            "identity_verification.verifying_state",
        ));
        text(&mut v, "identity_verification.notes", &d.notes, false, 2000);
        check_past(&mut v, "identity_verification.verify_time", d.verify_time.as_ref());
        if d.verify_time.is_none() {
            d.verify_time = Some(concord_platform::time::to_timestamp(now_micros()));
        }
        let id = v.finish(id).map_err(st)?.unwrap_or_default();
        let rec = self
            .store
            .create_record(&p, RecordKind::Verification, &id, "", d.encode_to_vec(), None, rid)
            .await
            .map_err(st)?;
        Ok(Response::new(decode_record::<pb::IdentityVerification>(&rec, |x, name, _| {
            x.name = name
        })?))
    }

    async fn list_identity_verifications(
        &self,
        req: Request<pb::ListIdentityVerificationsRequest>,
    ) -> Result<Response<pb::ListIdentityVerificationsResponse>, Status> {
        let p = self.access(&req, Action::RecordsRead, "ListIdentityVerifications").await?;
        let id = person_id(&req.get_ref().parent, "parent").map_err(st)?;
        Self::require_class(&p, &id, FieldClass::Documents, "identity verifications")?;
        let recs =
            self.store.list_records(&p.scope, RecordKind::Verification, &id).await.map_err(st)?;
        self.audit(&p, &format!("persons/{id}/verifications"), "documents", "OK").await?;
        let identity_verifications = recs
            .iter()
            .map(|r| decode_record::<pb::IdentityVerification>(r, |x, name, _| x.name = name))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListIdentityVerificationsResponse { identity_verifications }))
    }

    async fn create_consent_record(
        &self,
        req: Request<pb::CreateConsentRecordRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        let p = self.access(&req, Action::RecordsWrite, "CreateConsentRecord").await?;
        p.grant.require_field(FieldClass::Welfare, "consent records").map_err(st)?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let mut v = concord_platform::error::Violations::new();
        let id = v.absorb(person_id(&m.parent, "parent"));
        let mut c = m.consent_record.clone().unwrap_or_default();
        if m.consent_record.is_none() {
            v.add("consent_record", "is required");
        }
        text(&mut v, "consent_record.purpose", &c.purpose, true, 100);
        text(&mut v, "consent_record.witness", &c.witness, false, 200);
        let given_by = if c.given_by.is_empty() {
            None
        } else {
            v.absorb(person_id(&c.given_by, "consent_record.given_by"))
        };
        check_past(&mut v, "consent_record.record_time", c.record_time.as_ref());
        if c.record_time.is_none() {
            c.record_time = Some(concord_platform::time::to_timestamp(now_micros()));
        }
        let id = v.finish(id).map_err(st)?.unwrap_or_default();
        let other = given_by.unwrap_or_default();
        let rec = self
            .store
            .create_record(&p, RecordKind::Consent, &id, &other, c.encode_to_vec(), None, rid)
            .await
            .map_err(st)?;
        Ok(Response::new(decode_record::<pb::ConsentRecord>(&rec, |x, name, _| x.name = name)?))
    }

    async fn list_consent_records(
        &self,
        req: Request<pb::ListConsentRecordsRequest>,
    ) -> Result<Response<pb::ListConsentRecordsResponse>, Status> {
        let p = self.access(&req, Action::RecordsRead, "ListConsentRecords").await?;
        let id = person_id(&req.get_ref().parent, "parent").map_err(st)?;
        Self::require_class(&p, &id, FieldClass::Welfare, "consent records")?;
        let recs = self.store.list_records(&p.scope, RecordKind::Consent, &id).await.map_err(st)?;
        self.audit(&p, &format!("persons/{id}/consents"), "welfare", "OK").await?;
        // A consent given by a parent is listed under the child only.
        let consent_records = recs
            .iter()
            .filter(|r| r.person_id == id)
            .map(|r| decode_record::<pb::ConsentRecord>(r, |x, name, _| x.name = name))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListConsentRecordsResponse { consent_records }))
    }

    async fn create_sharing_agreement(
        &self,
        req: Request<pb::CreateSharingAgreementRequest>,
    ) -> Result<Response<pb::SharingAgreement>, Status> {
        let a = self.access(&req, Action::SharingManage, "CreateSharingAgreement").await?;
        let m = req.into_inner();
        let rid = idempotency::key(&m.request_id, "request_id", &m).map_err(st)?;
        let grantor = a.principal.state.clone().ok_or_else(|| {
            st(Error::PermissionDenied("only a state's agencies share its nationals".into()))
        })?;
        let g = m.sharing_agreement.unwrap_or_default();
        let mut v = concord_platform::error::Violations::new();
        v.absorb(domain::validate_state(&g.grantee_state, "sharing_agreement.grantee_state"));
        if g.grantee_state == grantor {
            v.add("sharing_agreement.grantee_state", "must be another state than yours");
        }
        let persons: Vec<String> = g
            .persons
            .iter()
            .enumerate()
            .filter_map(|(i, n)| v.absorb(person_id(n, &format!("sharing_agreement.persons[{i}]"))))
            .collect();
        let mut categories = Vec::new();
        for (i, c) in g.categories.iter().enumerate() {
            let field = format!("sharing_agreement.categories[{i}]");
            if *c == 0 {
                v.add(field, "must not be PERSON_CATEGORY_UNSPECIFIED");
            } else if let Some(c) = enum_in!(v, field, *c, pb::PersonCategory, Category) {
                categories.push(c.as_str().to_string());
            }
        }
        if persons.is_empty() && categories.is_empty() {
            v.add("sharing_agreement.persons", "name at least one person or category to share");
        }
        if persons.len() > 1000 {
            v.add("sharing_agreement.persons", "at most 1000 people per agreement");
        }
        text(&mut v, "sharing_agreement.purpose", &g.purpose, true, 500);
        let expire = expiry(
            &mut v,
            "sharing_agreement.expire_time",
            g.expire_time.as_ref(),
            None,
            366 * 24 * 3600,
        );
        v.finish(()).map_err(st)?;
        let stored = self
            .store
            .create_grant(
                &a,
                AccessGrant {
                    id: String::new(),
                    kind: GrantKind::Agreement,
                    grantor_state: grantor,
                    grantee: g.grantee_state.clone(),
                    persons,
                    categories,
                    purpose: g.purpose.trim().to_string(),
                    expire_time: expire,
                    revoke_time: 0,
                    create_time: 0,
                    created_by: String::new(),
                },
                rid,
            )
            .await
            .map_err(st)?;
        Ok(Response::new(agreement_out(&stored)))
    }

    async fn list_sharing_agreements(
        &self,
        req: Request<pb::ListSharingAgreementsRequest>,
    ) -> Result<Response<pb::ListSharingAgreementsResponse>, Status> {
        let a = self.access(&req, Action::SharingManage, "ListSharingAgreements").await?;
        let state = a.principal.state.clone().ok_or_else(|| {
            st(Error::PermissionDenied("sharing agreements are between states".into()))
        })?;
        let m = req.into_inner();
        let size = paging::page_size(m.page_size).map_err(st)?;
        let fp = paging::request_fingerprint(&[&state]);
        let before: Option<String> = paging::decode(&m.page_token, &fp).map_err(st)?;
        let mut gs =
            self.store.list_agreements(&state, before.as_deref(), size + 1).await.map_err(st)?;
        let next = paging::finish_page(&mut gs, size, &fp, |g| g.id.clone());
        let names: Vec<String> = gs.iter().map(|g| g.name()).collect();
        self.audit(&a, &names.join(" "), "*", "OK").await?;
        Ok(Response::new(pb::ListSharingAgreementsResponse {
            sharing_agreements: gs.iter().map(agreement_out).collect(),
            next_page_token: next,
        }))
    }

    async fn revoke_sharing_agreement(
        &self,
        req: Request<pb::RevokeSharingAgreementRequest>,
    ) -> Result<Response<pb::SharingAgreement>, Status> {
        let a = self.access(&req, Action::SharingManage, "RevokeSharingAgreement").await?;
        let state = a.principal.state.clone().ok_or_else(|| {
            st(Error::PermissionDenied("sharing agreements are between states".into()))
        })?;
        let id =
            convert::resource_id(&req.get_ref().name, "sharingAgreements/", "name").map_err(st)?;
        let g = self.store.revoke_agreement(&a, &state, &id).await.map_err(st)?;
        Ok(Response::new(agreement_out(&g)))
    }

    async fn create_break_glass_grant(
        &self,
        req: Request<pb::CreateBreakGlassGrantRequest>,
    ) -> Result<Response<pb::BreakGlassGrant>, Status> {
        let a = self.access(&req, Action::BreakGlass, "CreateBreakGlassGrant").await?;
        let g = req.into_inner().break_glass_grant.unwrap_or_default();
        let mut v = concord_platform::error::Violations::new();
        let id = v.absorb(person_id(&g.person, "break_glass_grant.person"));
        text(&mut v, "break_glass_grant.reason", &g.reason, true, 1000);
        if !g.reason.trim().is_empty() && g.reason.trim().chars().count() < 20 {
            v.add(
                "break_glass_grant.reason",
                "must explain the emergency in at least 20 characters",
            );
        }
        let expire = expiry(
            &mut v,
            "break_glass_grant.expire_time",
            g.expire_time.as_ref(),
            Some(BREAK_GLASS_MAX_SECS),
            BREAK_GLASS_MAX_SECS,
        );
        let id = v.finish(id).map_err(st)?.unwrap_or_default();
        let stored = self
            .store
            .create_grant(
                &a,
                AccessGrant {
                    id: String::new(),
                    kind: GrantKind::BreakGlass,
                    grantor_state: String::new(),
                    grantee: a.principal.agency.clone(),
                    persons: vec![id],
                    categories: vec![],
                    purpose: g.reason.trim().to_string(),
                    expire_time: expire,
                    revoke_time: 0,
                    create_time: 0,
                    created_by: String::new(),
                },
                None,
            )
            .await
            .map_err(st)?;
        tracing::warn!(agency = %a.principal.agency, grant = %stored.name(), "break-the-glass access granted");
        Ok(Response::new(pb::BreakGlassGrant {
            name: stored.name(),
            person: format!("persons/{}", stored.persons.first().cloned().unwrap_or_default()),
            reason: stored.purpose.clone(),
            expire_time: Some(concord_platform::time::to_timestamp(stored.expire_time)),
            agency: stored.created_by.clone(),
            create_time: Some(concord_platform::time::to_timestamp(stored.create_time)),
        }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let a = self.access(&req, Action::ChangesWatch, "WatchChanges").await?;
        let m = req.into_inner();
        let params = WatchParams {
            cursor: m.cursor,
            start_at_end: m.start_at_end,
            event_types: m.event_types,
            scope: a.scope.clone(),
        };
        // Held by the stream until it ends.
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
        let store = self.store.clone();
        // The stream ends, retryably, when the first grant it relies on expires and at the
        // latest after WATCH_REAUTHORIZE, so revocations and policy changes reach open
        // streams; clients resume from their last cursor with a fresh authorization.
        let ends_in = std::time::Duration::from_micros(
            (a.shared.until.saturating_sub(now_micros()))
                .clamp(0, outbox::WATCH_REAUTHORIZE.as_micros() as i64) as u64,
        );
        // Events that are ready are sent together, after one audit record for them all.
        let stream = stream.ready_chunks(256).then(move |chunk| {
            let a = a.clone();
            let recorder = recorder.clone();
            let store = store.clone();
            async move {
                let mut events = Vec::with_capacity(chunk.len());
                let mut out = Vec::with_capacity(chunk.len());
                for r in chunk {
                    match r {
                        Ok(e) => events.push(redact_event(&a, e).map_err(st)?),
                        Err(e) => out.push(Err(st(e))),
                    }
                }
                // Tags say who could see a person when the event was written; the caller
                // must also see the person now (a revoked nationality, a transfer out of a
                // facility), and a survivor it does not see is not named.
                let mut ids: Vec<String> = Vec::new();
                for (e, p) in &events {
                    ids.extend(e.resource_name.strip_prefix("persons/").map(str::to_string));
                    if let Some(p) = p.as_ref().filter(|p| !p.merged_into.is_empty()) {
                        ids.push(p.merged_into.trim_start_matches("persons/").to_string());
                    }
                }
                let visible = store.visible_ids(&a.scope, &ids).await.map_err(st)?;
                let mut resources = Vec::new();
                for (mut e, p) in events {
                    if let Some(id) = e.resource_name.strip_prefix("persons/") {
                        if !visible.contains(id) {
                            continue;
                        }
                    }
                    if let (Some(mut p), Some(any)) = (p, e.resource.as_mut()) {
                        if !p.merged_into.is_empty()
                            && !visible.contains(p.merged_into.trim_start_matches("persons/"))
                        {
                            p.merged_into.clear();
                            any.value = p.encode_to_vec();
                        }
                    }
                    if !e.bookmark {
                        resources.push(e.resource_name.clone());
                    }
                    out.push(Ok(pb::WatchChangesResponse { event: Some(e) }));
                }
                if !resources.is_empty() {
                    recorder
                        .record(vec![a.entry(resources.join(" "), a.grant.fields.names(), "OK")])
                        .await
                        .map_err(st)?;
                }
                Ok::<_, Status>(futures::stream::iter(out))
            }
        });
        let stream = outbox::renewal(
            stream
                .map(|r| match r {
                    Ok(s) => s.left_stream(),
                    Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
                })
                .flatten(),
            ends_in,
        );
        Ok(Response::new(Box::pin(stream.map(move |r| {
            let _held = &permit;
            r
        }))))
    }
}

/// Longest break-the-glass access, and its default.
const BREAK_GLASS_MAX_SECS: i64 = 4 * 3600;

/// An expiry in the future, at most `max_secs` ahead; `default_secs` when unset (else it is
/// required).
fn expiry(
    v: &mut concord_platform::error::Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
    default_secs: Option<i64>,
    max_secs: i64,
) -> i64 {
    let now = now_micros();
    match (t, default_secs) {
        (None, Some(d)) => now + d * 1_000_000,
        (None, None) => {
            v.add(field, "is required");
            0
        }
        (Some(ts), _) => match from_timestamp(ts) {
            None => {
                v.add(field, "is not a valid timestamp");
                0
            }
            Some(m) if m <= now => {
                v.add(field, "must be in the future");
                0
            }
            Some(m) if m > now + max_secs * 1_000_000 => {
                v.add(field, format!("must be at most {} hours ahead", max_secs / 3600));
                0
            }
            Some(m) => m,
        },
    }
}

fn agreement_out(g: &AccessGrant) -> pb::SharingAgreement {
    use concord_platform::time::to_timestamp;
    pb::SharingAgreement {
        name: g.name(),
        grantor_state: g.grantor_state.clone(),
        grantee_state: g.grantee.clone(),
        persons: g.persons.iter().map(|p| format!("persons/{p}")).collect(),
        categories: g
            .categories
            .iter()
            .filter_map(|c| Category::parse(c))
            .map(|c| enum_out!(pb::PersonCategory, c))
            .collect(),
        purpose: g.purpose.clone(),
        expire_time: Some(to_timestamp(g.expire_time)),
        revoke_time: (g.revoke_time != 0).then(|| to_timestamp(g.revoke_time)),
        create_time: Some(to_timestamp(g.create_time)),
        creator_agency: g.created_by.clone(),
    }
}

/// A change event as the watcher may see it, with the person in its payload redacted like a
/// read (and returned, for the checks that need the store).
fn redact_event(
    a: &Access,
    mut e: concord_proto::r#type::v1::ChangeEvent,
) -> Result<(concord_proto::r#type::v1::ChangeEvent, Option<pb::Person>)> {
    let mut person = None;
    if let Some(any) = e.resource.as_mut() {
        if any.type_url == crate::events::PERSON_TYPE_URL {
            let p = pb::Person::decode(any.value.as_slice()).map_err(Error::internal)?;
            let id = p.name.trim_start_matches("persons/").to_string();
            let p = convert::redact(p, a.fields_for(&id));
            any.value = p.encode_to_vec();
            person = Some(p);
        }
    }
    Ok((e, person))
}

impl Registry {
    async fn apply(
        &self,
        a: &Access,
        t: TransitionRequest,
    ) -> Result<Response<pb::Person>, Status> {
        let person = self.store.transition(a, t).await.map_err(st)?;
        Ok(Response::new(self.person_out(a, &person).await))
    }

    async fn review(
        &self,
        p: &Access,
        name: &str,
        to: DuplicateState,
        survivor: Option<&str>,
        reason: &str,
        etag: &str,
    ) -> Result<Response<pb::DuplicateCandidate>, Status> {
        let mut v = concord_platform::error::Violations::new();
        let id = v.absorb(convert::resource_id(name, "duplicateCandidates/", "name"));
        let expected = v.absorb(domain::parse_etag(etag, "etag"));
        text(&mut v, "reason", reason, true, 1000);
        let (id, expected) = v.finish((id.unwrap_or_default(), expected.flatten())).map_err(st)?;
        let c = self
            .store
            .review_candidate(p, &id, to, survivor, reason, expected)
            .await
            .map_err(st)?;
        Ok(Response::new(convert::candidate_out(&c)))
    }
}

/// A limited caller may only write people in its own scope (sharing agreements and
/// break-the-glass open records for reading only), may not write a person out of it, and
/// may not touch the nationality entries of other states (adding, changing or removing them
/// would grant or take away another state's access).
fn check_writable(scope: &Scope, old: Option<&PersonData>, new: &PersonData) -> Result<()> {
    let Scope::Only(visible) = scope else { return Ok(()) };
    let own = &visible.states;
    if (old.is_none() || !own.is_empty()) && !new.active_states().iter().any(|s| own.contains(s)) {
        return Err(Error::invalid(
            "person.nationalities",
            if own.is_empty() {
                "only a state's agencies or the coordinator register people".to_string()
            } else {
                format!("must include an active nationality of your state ({})", own.join(", "))
            },
        ));
    }
    let foreign = |d: &PersonData| -> Vec<Nationality> {
        d.nationalities.iter().filter(|n| !own.contains(&n.state)).cloned().collect()
    };
    let before = old.map(foreign).unwrap_or_default();
    if foreign(new) != before {
        return Err(Error::invalid(
            "person.nationalities",
            "only the state concerned may add, change or remove its own nationality entries",
        ));
    }
    Ok(())
}

fn check_past(
    v: &mut concord_platform::error::Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
) {
    if let Some(t) = t {
        match from_timestamp(t) {
            None => v.add(field, "is not a valid timestamp"),
            Some(m) if m > now_micros() + 60_000_000 => v.add(field, "must not be in the future"),
            _ => {}
        }
    }
}

fn required_id(id: &str, field: &str) -> Result<String> {
    if id.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_/.".contains(c)) {
        return Err(Error::invalid(
            field,
            "must be at most 128 letters, digits, '-', '_', '/' or '.'",
        ));
    }
    Ok(id.to_string())
}

fn optional_id(id: &str, field: &str) -> Result<String> {
    if id.is_empty() {
        Ok(String::new())
    } else {
        required_id(id, field)
    }
}

fn transition_in<M: Message>(
    name: &str,
    t: Option<&pb::CustodyTransition>,
    msg: &M,
    which: Transition,
) -> Result<TransitionRequest> {
    let mut v = concord_platform::error::Violations::new();
    let id = v.absorb(person_id(name, "name"));
    let t = t.cloned().unwrap_or_default();
    text(&mut v, "transition.reason", &t.reason, true, 1000);
    text(&mut v, "transition.source", &t.source, true, 200);
    let occur_time = match &t.occur_time {
        None => now_micros(),
        Some(ts) => match from_timestamp(ts) {
            Some(m) if m > now_micros() + 60_000_000 => {
                v.add("transition.occur_time", "must not be in the future");
                0
            }
            Some(m) => m,
            None => {
                v.add("transition.occur_time", "is not a valid timestamp");
                0
            }
        },
    };
    let expected = v.absorb(domain::parse_etag(&t.etag, "transition.etag")).flatten();
    let rid = v.absorb(idempotency::key(&t.request_id, "transition.request_id", msg)).flatten();
    v.finish(TransitionRequest {
        transition: which,
        person_id: id.unwrap_or_default(),
        facility_id: String::new(),
        section_id: String::new(),
        reference: String::new(),
        receiving_state: String::new(),
        disposition: None,
        reason: t.reason.trim().to_string(),
        source: t.source.trim().to_string(),
        occur_time,
        expected_version: expected,
        request_id: rid,
    })
}

fn parse_import_row(row: &pb::ImportPersonsRequest, scope: &Scope) -> Result<NewPerson> {
    let mut v = concord_platform::error::Violations::new();
    if row.request_id.is_empty() {
        v.add(
            "request_id",
            "is required on every import row, so that a retried import stores nothing twice",
        );
    }
    let rid = v.absorb(idempotency::key(&row.request_id, "request_id", row)).flatten();
    let data = match &row.person {
        Some(p) => v.absorb(convert::person_data(p, "person")),
        None => {
            v.add("person", "is required");
            None
        }
    };
    // A missing person was recorded as a violation above, so `finish` has returned by then.
    let Some(data) = v.finish(data)? else {
        return Err(Error::invalid("person", "is required"));
    };
    check_writable(scope, None, &data)?;
    Ok(NewPerson { data, request_id: rid })
}

fn row_error(index: i64, fv: concord_platform::FieldViolation) -> pb::ImportRowError {
    // Descriptions quote caller input only in short excerpts; this bounds the rest.
    let description = fv.description.chars().take(300).collect();
    pb::ImportRowError { index, field: fv.field, description }
}

fn relationship_out(rec: &crate::store::Record) -> Result<pb::Relationship, Status> {
    decode_record::<pb::Relationship>(rec, |x, name, t| {
        x.name =
            name.replace(&format!("persons/{}/relationship/", rec.person_id), "relationships/");
        x.create_time = Some(t);
    })
}

fn decode_record<M: Message + Default>(
    rec: &crate::store::Record,
    finish: impl FnOnce(&mut M, String, prost_types::Timestamp),
) -> Result<M, Status> {
    let mut m = M::decode(rec.body.as_slice()).map_err(|e| st(Error::internal(e)))?;
    let collection = match rec.kind {
        RecordKind::Relationship => "relationship",
        RecordKind::Document => "identityDocuments",
        RecordKind::Verification => "identityVerifications",
        RecordKind::Consent => "consentRecords",
    };
    finish(
        &mut m,
        format!("persons/{}/{collection}/{}", rec.person_id, rec.id),
        concord_platform::time::to_timestamp(rec.create_time),
    );
    Ok(m)
}

fn household_out(h: &crate::store::Household) -> pb::Household {
    pb::Household {
        name: format!("households/{}", h.id),
        head: if h.head.is_empty() { String::new() } else { format!("persons/{}", h.head) },
        members: h.members.iter().map(|m| format!("persons/{m}")).collect(),
        create_time: Some(concord_platform::time::to_timestamp(h.create_time)),
    }
}
