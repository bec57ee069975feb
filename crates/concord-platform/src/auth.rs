//! The caller's identity: every request carries a [`Principal`], and every query of people
//! takes the principal's [`Scope`].
//!
//! This is the seam the security work fills in. Today the [`HeaderAuthenticator`] reads the
//! principal from `x-concord-*` metadata, which is only acceptable on a trusted network; it is
//! the one place to replace with mutual TLS and OIDC. Nothing downstream reads headers itself:
//! handlers take the principal from the request extensions with [`principal`].

use std::sync::Arc;

use crate::error::{Error, Result};

/// What kind of agency a caller belongs to. Decides the default scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgencyKind {
    /// The coalition coordination cell: sees every state's people.
    Coordinator,
    /// A home state's ministry (foreign affairs, interior): its own nationals only.
    StateMinistry,
    /// Prosecutors and justice cooperation of a state: its own nationals only.
    Justice,
    /// The facility operator.
    CustodialAuthority,
    /// A humanitarian monitor.
    HumanitarianMonitor,
    /// Another Concord service calling on its own behalf.
    Service,
}

impl AgencyKind {
    /// Parses the wire form (`coordinator`, `state_ministry`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "coordinator" => Self::Coordinator,
            "state_ministry" => Self::StateMinistry,
            "justice" => Self::Justice,
            "custodial_authority" => Self::CustodialAuthority,
            "humanitarian_monitor" => Self::HumanitarianMonitor,
            "service" => Self::Service,
            _ => return None,
        })
    }
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::StateMinistry => "state_ministry",
            Self::Justice => "justice",
            Self::CustodialAuthority => "custodial_authority",
            Self::HumanitarianMonitor => "humanitarian_monitor",
            Self::Service => "service",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Agency identifier, for example `fr-mfa`.
    pub agency: String,
    /// ISO 3166-1 alpha-2 state the agency belongs to, if it belongs to one.
    pub state: Option<String>,
    /// Kind of agency.
    pub kind: AgencyKind,
    /// Roles granted to the caller.
    pub roles: Vec<String>,
}

/// Which people a principal may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every person.
    All,
    /// People who hold (claimed, documented or verified, not revoked) one of these
    /// nationalities. Empty: nobody.
    States(Vec<String>),
}

impl Principal {
    /// The people this principal may see. State agencies see their own nationals; the
    /// coordinator, the custodial authority, monitors and services see everyone (the security
    /// work narrows the last three by facility and field).
    pub fn scope(&self) -> Scope {
        match self.kind {
            AgencyKind::StateMinistry | AgencyKind::Justice => {
                Scope::States(self.state.iter().filter(|s| is_state_code(s)).cloned().collect())
            }
            AgencyKind::Coordinator
            | AgencyKind::CustodialAuthority
            | AgencyKind::HumanitarianMonitor
            | AgencyKind::Service => Scope::All,
        }
    }

    /// A principal for a service acting on its own behalf (consumers of watch streams).
    pub fn service(name: &str) -> Self {
        Self { agency: name.into(), state: None, kind: AgencyKind::Service, roles: vec![] }
    }
}

impl Scope {
    /// True if a person holding `states` is visible.
    pub fn allows_any<'a>(&self, mut states: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Scope::All => true,
            Scope::States(allowed) => states.any(|s| allowed.iter().any(|a| a == s)),
        }
    }
}

/// True for an ISO 3166-1 alpha-2 shaped code: two ASCII capital letters. Scopes hold only
/// such codes, so they are safe inside SQL patterns.
pub fn is_state_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Turns request metadata into a principal.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or UNAUTHENTICATED.
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal>;
}

/// Shared authenticator.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// Reads `x-concord-agency`, `x-concord-agency-kind`, `x-concord-state` and
/// `x-concord-roles`. Development only: it trusts the caller.
#[derive(Debug, Default, Clone)]
pub struct HeaderAuthenticator;

/// Metadata keys read by [`HeaderAuthenticator`] and written by [`HeaderCredentials`].
pub mod headers {
    /// Agency identifier.
    pub const AGENCY: &str = "x-concord-agency";
    /// Kind of agency.
    pub const AGENCY_KIND: &str = "x-concord-agency-kind";
    /// State of the agency.
    pub const STATE: &str = "x-concord-state";
    /// Comma-separated roles.
    pub const ROLES: &str = "x-concord-roles";
}

impl Authenticator for HeaderAuthenticator {
    fn authenticate(&self, h: &http::HeaderMap) -> Result<Principal> {
        let get = |k: &str| {
            h.get(k).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
        };
        let agency = get(headers::AGENCY).ok_or_else(|| {
            Error::Unauthenticated(format!("missing {} metadata", headers::AGENCY))
        })?;
        let kind_s = get(headers::AGENCY_KIND).ok_or_else(|| {
            Error::Unauthenticated(format!("missing {} metadata", headers::AGENCY_KIND))
        })?;
        let kind = AgencyKind::parse(kind_s)
            .ok_or_else(|| Error::Unauthenticated(format!("unknown agency kind '{kind_s}'")))?;
        let state = get(headers::STATE).map(str::to_ascii_uppercase);
        if let Some(s) = &state {
            if !is_state_code(s) {
                return Err(Error::Unauthenticated(format!(
                    "{} must be an ISO 3166-1 alpha-2 code",
                    headers::STATE
                )));
            }
        }
        if matches!(kind, AgencyKind::StateMinistry | AgencyKind::Justice) && state.is_none() {
            return Err(Error::Unauthenticated(format!(
                "a {} agency must name its state in {}",
                kind.as_str(),
                headers::STATE
            )));
        }
        let roles = get(headers::ROLES)
            .map(|r| r.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Ok(Principal { agency: agency.to_string(), state, kind, roles })
    }
}

/// Writes a principal as `x-concord-*` metadata: what a client of the
/// [`HeaderAuthenticator`] sends.
#[derive(Debug, Clone)]
pub struct HeaderCredentials(pub Principal);

impl HeaderCredentials {
    /// Adds the metadata to a request.
    pub fn apply<T>(&self, req: &mut tonic::Request<T>) {
        let md = req.metadata_mut();
        let p = &self.0;
        if let Ok(v) = p.agency.parse() {
            md.insert(headers::AGENCY, v);
        }
        if let Ok(v) = p.kind.as_str().parse() {
            md.insert(headers::AGENCY_KIND, v);
        }
        if let Some(Ok(v)) = p.state.as_ref().map(|s| s.parse()) {
            md.insert(headers::STATE, v);
        }
        if !p.roles.is_empty() {
            if let Ok(v) = p.roles.join(",").parse() {
                md.insert(headers::ROLES, v);
            }
        }
    }
}

impl tonic::service::Interceptor for HeaderCredentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut req);
        Ok(req)
    }
}

/// The principal the identity layer attached to this request.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("no authenticated principal on the request".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn state_agencies_are_scoped_to_their_state() {
        let p = HeaderAuthenticator
            .authenticate(&headers(&[
                (headers::AGENCY, "fr-mfa"),
                (headers::AGENCY_KIND, "state_ministry"),
                (headers::STATE, "fr"),
            ]))
            .expect("authenticated");
        assert_eq!(p.scope(), Scope::States(vec!["FR".into()]));
        assert!(p.scope().allows_any(["IQ", "FR"].into_iter()));
        assert!(!p.scope().allows_any(["IQ"].into_iter()));
    }

    #[test]
    fn refuses_state_codes_that_are_not_codes() {
        let wildcard = headers(&[
            (headers::AGENCY, "x"),
            (headers::AGENCY_KIND, "state_ministry"),
            (headers::STATE, "%"),
        ]);
        assert!(matches!(
            HeaderAuthenticator.authenticate(&wildcard),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn refuses_missing_or_unknown_identity() {
        assert!(matches!(
            HeaderAuthenticator.authenticate(&headers(&[])),
            Err(Error::Unauthenticated(_))
        ));
        let unknown = headers(&[(headers::AGENCY, "x"), (headers::AGENCY_KIND, "pirate")]);
        assert!(matches!(
            HeaderAuthenticator.authenticate(&unknown),
            Err(Error::Unauthenticated(_))
        ));
        let stateless = headers(&[(headers::AGENCY, "x"), (headers::AGENCY_KIND, "justice")]);
        assert!(matches!(
            HeaderAuthenticator.authenticate(&stateless),
            Err(Error::Unauthenticated(_))
        ));
    }
}
