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
    /// Facilities the agency runs (custodial authorities).
    pub facilities: Vec<String>,
    /// The trusted forwarder (the gateway) this principal came through, if any.
    pub via: Option<String>,
}

impl Principal {
    /// A principal for a service acting on its own behalf (consumers of watch streams).
    pub fn service(name: &str) -> Self {
        Self {
            agency: name.into(),
            state: None,
            kind: AgencyKind::Service,
            roles: vec![],
            facilities: vec![],
            via: None,
        }
    }
}

/// Which people a caller may see: everyone, or the union of the [`Visible`] sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every person.
    All,
    /// Only these.
    Only(Visible),
}

/// The people a limited caller sees: a union. Every string in it is checked to be safe
/// inside SQL patterns before it gets here ([`is_state_code`], [`is_tag_safe`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Visible {
    /// People holding (claimed, documented or verified, not revoked) one of these
    /// nationalities.
    pub states: Vec<String>,
    /// People held in one of these facilities.
    pub facilities: Vec<String>,
    /// These people, by id (break-the-glass grants).
    pub persons: Vec<String>,
    /// People shared by name by a state's agreement, `(state, person id)`: visible while they
    /// hold that state's nationality (a state shares only its own nationals).
    pub shared: Vec<(String, String)>,
    /// People of a category holding a state's nationality: `(state, category)`, from
    /// sharing agreements by category.
    pub categories: Vec<(String, String)>,
}

/// What decides whether a person is visible: what [`Scope::admits`] and the watch tags
/// look at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The person's id.
    pub id: &'a str,
    /// States of its active nationalities.
    pub states: &'a [String],
    /// The facility holding it, or empty.
    pub facility: &'a str,
    /// Its category.
    pub category: &'a str,
}

impl Visible {
    /// [`Visible::shared`] grouped by state, states in order, for queries.
    pub fn shared_by_state(&self) -> Vec<(&str, Vec<&str>)> {
        let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (state, id) in &self.shared {
            groups.entry(state.as_str()).or_default().push(id.as_str());
        }
        groups.into_iter().collect()
    }
}

impl Scope {
    /// Sees nobody.
    pub fn nobody() -> Self {
        Scope::Only(Visible::default())
    }

    /// True if `s` is visible. The same rule as the SQL each service builds from the scope.
    pub fn admits(&self, s: &Subject<'_>) -> bool {
        let v = match self {
            Scope::All => return true,
            Scope::Only(v) => v,
        };
        s.states.iter().any(|st| v.states.contains(st))
            || (!s.facility.is_empty() && v.facilities.iter().any(|f| f == s.facility))
            || v.persons.iter().any(|p| p == s.id)
            || v.shared.iter().any(|(st, p)| p == s.id && s.states.contains(st))
            || v.categories.iter().any(|(st, c)| c == s.category && s.states.contains(st))
    }

    /// True if every person holding one of `states` is visible (a state's own nationals).
    pub fn covers_state(&self, state: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(v) => v.states.iter().any(|s| s == state),
        }
    }
}

/// The visibility tags of a change event about `s`: `|FR|IQ|@fac-1|FR#CHILD|`. A watcher
/// sees the event if it contains one of its [`watch_tags`], or names a person it sees by id.
pub fn subject_tags(s: &Subject<'_>) -> String {
    let mut t = String::from("|");
    for st in s.states {
        t.push_str(st);
        t.push('|');
    }
    if !s.facility.is_empty() {
        t.push('@');
        t.push_str(s.facility);
        t.push('|');
    }
    for st in s.states {
        t.push_str(st);
        t.push('#');
        t.push_str(s.category);
        t.push('|');
    }
    t
}

/// The tags a watcher in `v` looks for in event tags (exact substrings such as `|FR|`,
/// `|@al-hol|`, `|FR#CHILD|`); strings that are not safe tags are skipped.
pub fn watch_tags(v: &Visible) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(v.states.iter().filter(|s| is_state_code(s)).map(|s| format!("|{s}|")));
    out.extend(v.facilities.iter().filter(|f| is_tag_safe(f)).map(|f| format!("|@{f}|")));
    out.extend(
        v.categories
            .iter()
            .filter(|(s, c)| is_state_code(s) && is_tag_safe(c))
            .map(|(s, c)| format!("|{s}#{c}|")),
    );
    out
}

/// True for identifiers usable in a tag: ASCII letters, digits, `-`, `_`, `.` and `:`, at
/// most 128 bytes (no `%`, `|`, `#`, `@` or `\\`).
pub fn is_tag_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// True for an ISO 3166-1 alpha-2 shaped code: two ASCII capital letters. Scopes hold only
/// such codes, so they are safe inside SQL patterns.
pub fn is_state_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// What a caller presented: its metadata and, over mutual TLS, its certificate.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// Request metadata.
    pub headers: &'a http::HeaderMap,
    /// DER of the client certificate the TLS handshake verified, if any.
    pub peer_certificate: Option<&'a [u8]>,
}

/// Turns what a caller presented into a principal.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or UNAUTHENTICATED.
    fn authenticate(&self, presented: &Presented<'_>) -> Result<Principal>;
}

/// Shared authenticator.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// Reads a principal from `x-concord-*` metadata: how a trusted forwarder (the gateway)
/// passes on the partner it authenticated. On its own it trusts whoever sends the metadata,
/// so the binary only uses it inside [`EdgeAuthenticator`], after the forwarder proved who
/// it is; tests of single services use it directly.
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
    /// Comma-separated facilities.
    pub const FACILITIES: &str = "x-concord-facilities";
    /// Why the caller reads or writes personal data; recorded in the audit log.
    pub const PURPOSE: &str = "x-concord-purpose";
}

/// The metadata keys that carry a forwarded principal.
const FORWARDED: &[&str] =
    &[headers::AGENCY, headers::AGENCY_KIND, headers::STATE, headers::ROLES, headers::FACILITIES];

/// True if the metadata carries a forwarded principal.
pub fn has_forwarded_principal(h: &http::HeaderMap) -> bool {
    FORWARDED.iter().any(|k| h.contains_key(*k))
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|r| r.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// Checks the shape of a principal from any source: state agencies name a state, codes and
/// facility ids are safe, roles are plain words.
pub fn check_principal(p: &Principal) -> Result<()> {
    if let Some(s) = &p.state {
        if !is_state_code(s) {
            return Err(Error::Unauthenticated(format!(
                "state '{s}' is not an ISO 3166-1 alpha-2 code"
            )));
        }
    }
    if matches!(p.kind, AgencyKind::StateMinistry | AgencyKind::Justice) && p.state.is_none() {
        return Err(Error::Unauthenticated(format!(
            "a {} agency must name its state",
            p.kind.as_str()
        )));
    }
    if p.agency.is_empty() || p.agency.len() > 128 {
        return Err(Error::Unauthenticated("the agency identifier is empty or too long".into()));
    }
    if let Some(f) = p.facilities.iter().find(|f| !is_tag_safe(f)) {
        return Err(Error::Unauthenticated(format!("facility id '{f}' has unsafe characters")));
    }
    if let Some(r) =
        p.roles.iter().find(|r| !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(Error::Unauthenticated(format!("role '{r}' is not [A-Za-z0-9_]+")));
    }
    Ok(())
}

impl Authenticator for HeaderAuthenticator {
    fn authenticate(&self, presented: &Presented<'_>) -> Result<Principal> {
        let h = presented.headers;
        for k in FORWARDED {
            if h.get_all(*k).iter().count() > 1 {
                return Err(Error::Unauthenticated(format!("{k} is sent more than once")));
            }
        }
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
        let p = Principal {
            agency: agency.to_string(),
            state: get(headers::STATE).map(str::to_ascii_uppercase),
            kind,
            roles: list(get(headers::ROLES)),
            facilities: list(get(headers::FACILITIES)),
            via: None,
        };
        check_principal(&p)?;
        Ok(p)
    }
}

/// The authenticator of a real deployment. The transport identity comes from the client
/// certificate (mutual TLS, looked up in the agency directory) or, without one, from an
/// OIDC bearer token. A principal forwarded in `x-concord-*` metadata is accepted only when
/// the transport identity is a trusted forwarder (the gateway); from anyone else the call is
/// refused, so a partner cannot forge a principal.
pub struct EdgeAuthenticator {
    /// Client certificates.
    pub mtls: Option<crate::pki::CertificateAuthenticator>,
    /// Bearer tokens.
    pub oidc: Option<crate::oidc::OidcAuthenticator>,
    /// Agencies trusted to forward principals.
    pub forwarders: Vec<String>,
}

impl Authenticator for EdgeAuthenticator {
    fn authenticate(&self, presented: &Presented<'_>) -> Result<Principal> {
        let (transport, by_certificate) = match (presented.peer_certificate, &self.mtls, &self.oidc)
        {
            (Some(_), Some(m), _) => (m.authenticate(presented)?, true),
            (_, _, Some(o)) if presented.headers.contains_key(http::header::AUTHORIZATION) => {
                (o.authenticate(presented)?, false)
            }
            _ => {
                return Err(Error::Unauthenticated(
                    "no credentials: present a client certificate or a bearer token".into(),
                ))
            }
        };
        if !has_forwarded_principal(presented.headers) {
            return Ok(transport);
        }
        // Only a service proving itself with a certificate forwards: a bearer token naming the
        // gateway's agency (whatever an identity provider may issue) does not.
        if !by_certificate
            || transport.kind != AgencyKind::Service
            || !self.forwarders.iter().any(|f| f == &transport.agency)
        {
            return Err(Error::Unauthenticated(format!(
                "agency '{}' is not trusted to forward principals; remove the x-concord-* \
                 identity metadata",
                transport.agency
            )));
        }
        let mut p = HeaderAuthenticator.authenticate(presented)?;
        p.via = Some(transport.agency);
        Ok(p)
    }
}

/// Writes a principal as `x-concord-*` metadata, and a purpose: what a trusted forwarder
/// (and a test client of the [`HeaderAuthenticator`]) sends.
#[derive(Debug, Clone)]
pub struct HeaderCredentials {
    /// The principal forwarded.
    pub principal: Principal,
    /// The purpose sent with every call, if any.
    pub purpose: Option<String>,
}

impl HeaderCredentials {
    /// Forwards `principal`, with no purpose.
    pub fn new(principal: Principal) -> Self {
        Self { principal, purpose: None }
    }

    /// Sends `purpose` with every call.
    pub fn with_purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// Adds the metadata to a request.
    pub fn apply<T>(&self, req: &mut tonic::Request<T>) {
        let md = std::mem::take(req.metadata_mut());
        let mut headers = md.into_headers();
        self.apply_headers(&mut headers);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    }

    /// Adds the metadata to the headers of a call passed on as it is (the gateway's
    /// pass-through).
    pub fn apply_headers(&self, md: &mut http::HeaderMap) {
        // Whatever identity metadata the request carried is replaced, never merged: a
        // forwarder that passes a partner's metadata on cannot let it add roles.
        for k in FORWARDED {
            md.remove(*k);
        }
        let p = &self.principal;
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
        if !p.facilities.is_empty() {
            if let Ok(v) = p.facilities.join(",").parse() {
                md.insert(headers::FACILITIES, v);
            }
        }
        if let Some(Ok(v)) = self.purpose.as_ref().map(|s| s.parse()) {
            if !md.contains_key(headers::PURPOSE) {
                md.insert(headers::PURPOSE, v);
            }
        }
    }
}

/// Sends a purpose (`x-concord-purpose`) with every call: what a partner authenticated by its
/// certificate or token adds.
#[derive(Debug, Clone)]
pub struct Purpose(pub String);

impl tonic::service::Interceptor for Purpose {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let v = self
            .0
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the purpose is not valid metadata"))?;
        req.metadata_mut().insert(headers::PURPOSE, v);
        Ok(req)
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

    fn auth(h: &http::HeaderMap) -> Result<Principal> {
        HeaderAuthenticator.authenticate(&Presented { headers: h, peer_certificate: None })
    }

    #[test]
    fn reads_a_forwarded_principal() {
        let p = auth(&headers(&[
            (headers::AGENCY, "fr-mfa"),
            (headers::AGENCY_KIND, "state_ministry"),
            (headers::STATE, "fr"),
            (headers::ROLES, "consular, prosecutor"),
        ]))
        .expect("authenticated");
        assert_eq!(p.state.as_deref(), Some("FR"));
        assert_eq!(p.roles, vec!["consular", "prosecutor"]);
    }

    #[test]
    fn refuses_codes_and_ids_that_could_widen_a_pattern() {
        for (k, v) in [(headers::STATE, "%"), (headers::FACILITIES, "al-hol,%")] {
            let h = headers(&[
                (headers::AGENCY, "x"),
                (headers::AGENCY_KIND, "state_ministry"),
                (headers::STATE, "FR"),
                (k, v),
            ]);
            assert!(matches!(auth(&h), Err(Error::Unauthenticated(_))), "{k}={v}");
        }
    }

    #[test]
    fn forwarded_metadata_is_replaced_not_merged_and_duplicates_are_refused() {
        let mut req = tonic::Request::new(());
        req.metadata_mut().insert(headers::ROLES, "prosecutor".parse().expect("ascii"));
        req.metadata_mut().insert(headers::STATE, "DE".parse().expect("ascii"));
        let mut p = Principal::service("x");
        p.kind = AgencyKind::HumanitarianMonitor;
        HeaderCredentials::new(p).apply(&mut req);
        let md = req.metadata();
        assert!(md.get(headers::ROLES).is_none(), "a partner's roles do not survive forwarding");
        assert!(md.get(headers::STATE).is_none());
        let mut h =
            headers(&[(headers::AGENCY, "fr-mfa"), (headers::AGENCY_KIND, "state_ministry")]);
        h.append(headers::STATE, http::HeaderValue::from_static("FR"));
        h.append(headers::STATE, http::HeaderValue::from_static("DE"));
        assert!(matches!(auth(&h), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn refuses_missing_or_unknown_identity() {
        assert!(matches!(auth(&headers(&[])), Err(Error::Unauthenticated(_))));
        let unknown = headers(&[(headers::AGENCY, "x"), (headers::AGENCY_KIND, "pirate")]);
        assert!(matches!(auth(&unknown), Err(Error::Unauthenticated(_))));
        let stateless = headers(&[(headers::AGENCY, "x"), (headers::AGENCY_KIND, "justice")]);
        assert!(matches!(auth(&stateless), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn scope_admits_the_union_of_its_parts() {
        let v = Visible {
            states: vec!["FR".into()],
            facilities: vec!["al-hol".into()],
            persons: vec!["p9".into()],
            shared: vec![("FR".into(), "p7".into()), ("DE".into(), "p8".into())],
            categories: vec![("IQ".into(), "CHILD".into())],
        };
        let scope = Scope::Only(v.clone());
        let subject = |id, states: &'static [&'static str], facility, category| {
            (id, states.iter().map(|s| s.to_string()).collect::<Vec<_>>(), facility, category)
        };
        let cases = [
            (subject("p1", &["FR", "IQ"], "", "ADULT_MALE"), true),
            (subject("p2", &["IQ"], "al-hol", "ADULT_MALE"), true),
            (subject("p9", &["IQ"], "", "ADULT_MALE"), true),
            (subject("p3", &["IQ"], "", "CHILD"), true),
            (subject("p4", &["DE"], "", "CHILD"), false),
            (subject("p5", &["IQ"], "roj", "ADULT_FEMALE"), false),
            (subject("p8", &["DE", "IQ"], "", "ADULT_MALE"), true),
            (subject("p8", &["IQ"], "", "ADULT_MALE"), false),
        ];
        let tags_sought = watch_tags(&v);
        for ((id, states, facility, category), expected) in cases {
            let s = Subject { id, states: &states, facility, category };
            assert_eq!(scope.admits(&s), expected, "{id}");
            // The watch tags agree with admits (persons by id are matched by resource name).
            let tags = subject_tags(&s);
            let tagged = tags_sought.iter().any(|t| tags.contains(t.as_str()));
            let by_id = v.persons.iter().any(|p| p == id)
                || v.shared.iter().any(|(st, p)| p == id && tags.contains(&format!("|{st}|")));
            assert_eq!(tagged || by_id, expected, "{id} {tags}");
        }
        assert!(!Scope::nobody().admits(&Subject {
            id: "p1",
            states: &["FR".to_string()],
            facility: "x",
            category: "CHILD"
        }));
    }
}
