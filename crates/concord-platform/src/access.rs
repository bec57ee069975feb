//! One call's authorization, resolved once at its start: who calls, what the policy grants
//! it, whose records it sees (its [`Scope`], pushed into every query), which fields it reads,
//! why it calls, and the audit entries that record it.
//!
//! Every service resolves an [`Access`] the same way: [`Access::resolve`] with the policy's
//! [`Grant`] and the [`Shared`] records the service's own grants table holds for the caller.

use crate::audit::Entry;
use crate::auth::{headers, Principal, Scope, Subject, Visible};
use crate::error::{Error, Result};
use crate::policy::{Action, Basis, FieldSet, Grant, Policy};

/// Longest purpose accepted.
pub const MAX_PURPOSE: usize = 200;

/// What sharing agreements and break-the-glass grants add to a caller's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// People shared by name with the caller's state: `(person id, granting state,
    /// agreement name)`; visible while they hold the granting state's nationality.
    pub persons: Vec<(String, String, String)>,
    /// Categories shared with the caller's state: `(grantor state, category, agreement name)`.
    pub categories: Vec<(String, String, String)>,
    /// People the caller opened with break-the-glass: `(person id, grant name)`, visible
    /// (with the fields the caller's policy allows) until the grant expires.
    pub glass: Vec<(String, String)>,
    /// When the first of these grants expires (micros; `i64::MAX` if none).
    pub until: i64,
}

impl Default for Shared {
    fn default() -> Self {
        Self { persons: vec![], categories: vec![], glass: vec![], until: i64::MAX }
    }
}

/// One call's authorization.
#[derive(Debug, Clone)]
pub struct Access {
    /// The caller.
    pub principal: Principal,
    /// What the policy grants it.
    pub grant: Grant,
    /// Whose records it sees.
    pub scope: Scope,
    /// Whose records it may change: its own (sharing and break-the-glass grant reads only).
    pub write_scope: Scope,
    /// What widened the scope beyond the caller's own records.
    pub shared: Shared,
    /// Why it calls.
    pub purpose: String,
    /// The RPC, for audit entries.
    pub rpc: &'static str,
    /// The trace of the call.
    pub trace_id: String,
}

/// The caller's declared purpose (`x-concord-purpose`); INVALID_ARGUMENT if it is missing,
/// too long or not printable.
pub fn purpose(md: &tonic::metadata::MetadataMap) -> Result<String> {
    let p = md
        .get(headers::PURPOSE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::invalid(
                headers::PURPOSE,
                "metadata is required: say why this call touches personal data \
                 (for example 'repatriation case FR-2026-114')",
            )
        })?;
    if p.len() > MAX_PURPOSE || p.chars().any(char::is_control) {
        return Err(Error::invalid(
            headers::PURPOSE,
            format!("must be printable and at most {MAX_PURPOSE} bytes"),
        ));
    }
    Ok(p.to_string())
}

/// The records a caller sees on its own account: every one, or its state's nationals and its
/// facilities, as its grant says.
fn own_scope(principal: &Principal, grant: &Grant) -> Scope {
    if grant.sees(Basis::All) {
        return Scope::All;
    }
    let mut v = Visible::default();
    if grant.sees(Basis::Nationals) {
        v.states.extend(principal.state.iter().cloned());
    }
    if grant.sees(Basis::Facilities) {
        v.facilities.extend(principal.facilities.iter().cloned());
    }
    Scope::Only(v)
}

/// Whether a call must state its purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurposeRule {
    /// It reads or writes personal data: `x-concord-purpose` is required.
    Required,
    /// It does not: a purpose is recorded if sent.
    Optional,
}

/// The start of every call of every service: the principal the identity layer attached,
/// the policy's grant checked for `action` (a refusal is recorded by `recorder` and returned
/// as PERMISSION_DENIED before anything is looked up), the purpose, and what `shared` (the
/// service's own grants) adds to the caller's scope.
pub async fn authorize<T, F, Fut>(
    req: &tonic::Request<T>,
    policy: &Policy,
    recorder: &crate::audit::Recorder,
    action: Action,
    rpc: &'static str,
    purpose_rule: PurposeRule,
    shared: F,
) -> Result<Access>
where
    F: FnOnce(Principal) -> Fut,
    Fut: std::future::Future<Output = Result<Shared>>,
{
    let principal = crate::auth::principal(req)?;
    let purpose = purpose(req.metadata());
    let grant = match Access::grant(policy, &principal, action) {
        Ok(g) => g,
        Err(e) => {
            let a = Access::resolve(
                principal,
                Grant::default(),
                Shared::default(),
                purpose.unwrap_or_default(),
                rpc,
            );
            recorder.record(vec![a.entry(action.as_str(), "", "PERMISSION_DENIED")]).await?;
            return Err(e);
        }
    };
    let purpose = match (purpose, purpose_rule) {
        (Ok(p), _) => p,
        (Err(e), PurposeRule::Required) => return Err(e),
        (Err(_), PurposeRule::Optional) => String::new(),
    };
    let shared = shared(principal.clone()).await?;
    Ok(Access::resolve(principal, grant, shared, purpose, rpc))
}

impl Access {
    /// The policy's grant for `principal`, checked for `action`: PERMISSION_DENIED before
    /// anything is looked up if the action is not permitted.
    pub fn grant(policy: &Policy, principal: &Principal, action: Action) -> Result<Grant> {
        let grant = policy.grant(principal);
        grant.require(action)?;
        Ok(grant)
    }

    /// Builds the call's access from the grant and what is shared with the caller.
    pub fn resolve(
        principal: Principal,
        grant: Grant,
        shared: Shared,
        purpose: String,
        rpc: &'static str,
    ) -> Self {
        let write_scope = own_scope(&principal, &grant);
        let scope = match write_scope.clone() {
            Scope::All => Scope::All,
            Scope::Only(mut v) => {
                if grant.sees(Basis::Shared) {
                    v.shared
                        .extend(shared.persons.iter().map(|(p, st, _)| (st.clone(), p.clone())));
                    v.categories
                        .extend(shared.categories.iter().map(|(s, c, _)| (s.clone(), c.clone())));
                }
                v.persons.extend(shared.glass.iter().map(|(p, _)| p.clone()));
                v.persons.sort();
                v.persons.dedup();
                Scope::Only(v)
            }
        };
        Self {
            principal,
            grant,
            scope,
            write_scope,
            shared,
            purpose,
            rpc,
            trace_id: crate::telemetry::current_trace_id(),
        }
    }

    /// The fields readable on the person with id `person`: the policy's, for every person.
    /// Break-the-glass and sharing open records, never classes of fields (a custodial
    /// authority in an emergency reads identity and custody, not biometrics or evidence).
    pub fn fields_for(&self, _person: &str) -> FieldSet {
        self.grant.fields
    }

    /// Why the caller sees `s`, for the audit entry: `own` for its own records, else the
    /// agreement or break-the-glass grant that shows it.
    pub fn basis(&self, s: &Subject<'_>) -> String {
        if let Some((_, g)) = self.shared.glass.iter().find(|(p, _)| p == s.id) {
            return format!("break-glass {g}");
        }
        if own_scope(&self.principal, &self.grant).admits(s) {
            return "own".into();
        }
        if let Some((_, _, a)) =
            self.shared.persons.iter().find(|(p, st, _)| p == s.id && s.states.contains(st))
        {
            return format!("agreement {a}");
        }
        if let Some((_, _, a)) = self
            .shared
            .categories
            .iter()
            .find(|(st, c, _)| c == s.category && s.states.contains(st))
        {
            return format!("agreement {a}");
        }
        "own".into()
    }

    /// An audit entry for this call about `resource`.
    pub fn entry(
        &self,
        resource: impl Into<String>,
        fields: impl Into<String>,
        outcome: &str,
    ) -> Entry {
        let p = &self.principal;
        let mut agency = p.agency.clone();
        if let Some(via) = &p.via {
            agency = format!("{agency} via {via}");
        }
        Entry {
            agency,
            state: p.state.clone().unwrap_or_default(),
            action: self.rpc.to_string(),
            resource: resource.into(),
            fields: fields.into(),
            purpose: self.purpose.clone(),
            outcome: outcome.to_string(),
            trace_id: self.trace_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AgencyKind;

    fn ministry() -> Principal {
        Principal {
            agency: "fr-mfa".into(),
            state: Some("FR".into()),
            kind: AgencyKind::StateMinistry,
            roles: vec![],
            facilities: vec![],
            via: None,
        }
    }

    #[test]
    fn scope_is_own_nationals_plus_what_is_shared_and_basis_names_the_agreement() {
        let grant = Policy::embedded().grant(&ministry());
        let shared = Shared {
            persons: vec![("p2".into(), "IQ".into(), "sharingAgreements/a1".into())],
            categories: vec![("IQ".into(), "CHILD".into(), "sharingAgreements/a2".into())],
            glass: vec![],
            until: i64::MAX,
        };
        let a = Access::resolve(ministry(), grant, shared, "consular".into(), "GetPerson");
        let fr = ["FR".to_string()];
        let iq = ["IQ".to_string()];
        let s = |id, states, category| Subject { id, states, facility: "", category };
        assert_eq!(a.basis(&s("p1", &fr, "ADULT_MALE")), "own");
        assert!(a.scope.admits(&s("p2", &iq, "ADULT_MALE")));
        assert_eq!(a.basis(&s("p2", &iq, "ADULT_MALE")), "agreement sharingAgreements/a1");
        assert_eq!(a.basis(&s("p3", &iq, "CHILD")), "agreement sharingAgreements/a2");
        assert!(!a.scope.admits(&s("p4", &iq, "ADULT_MALE")));
    }

    #[test]
    fn purpose_is_required_and_bounded() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(matches!(purpose(&md), Err(Error::InvalidArgument(_))));
        md.insert(headers::PURPOSE, "x".repeat(MAX_PURPOSE + 1).parse().expect("ascii"));
        assert!(matches!(purpose(&md), Err(Error::InvalidArgument(_))));
        md.insert(headers::PURPOSE, "consular visit".parse().expect("ascii"));
        assert_eq!(purpose(&md).expect("ok"), "consular visit");
    }
}
