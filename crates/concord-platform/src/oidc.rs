//! OIDC bearer tokens: an [`Authenticator`] that accepts a partner's `authorization: Bearer`
//! JWT only if its signature verifies against a configured key and its issuer, audience and
//! expiry are right. The principal comes from the token's claims alone; `x-concord-*`
//! metadata is ignored, so a partner cannot forge a principal with headers.

use jsonwebtoken::{decode, decode_header, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::{check_principal, AgencyKind, Authenticator, Presented, Principal};
use crate::error::{Error, Result};

/// A verification key and its algorithm.
#[derive(Clone)]
pub struct VerificationKey {
    /// Key id (`kid`) the token header must name, if set.
    pub kid: Option<String>,
    /// The public key.
    pub key: DecodingKey,
    /// ES256 for EC keys, RS256 for RSA keys.
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl VerificationKey {
    /// Reads a PEM public key: EC (ES256) or RSA (RS256).
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> anyhow::Result<Self> {
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self { kid, key, algorithm: Algorithm::ES256 });
        }
        let key = DecodingKey::from_rsa_pem(pem)?;
        Ok(Self { kid, key, algorithm: Algorithm::RS256 })
    }
}

/// Validates OIDC bearer tokens.
#[derive(Debug, Clone)]
pub struct OidcAuthenticator {
    issuer: String,
    audience: String,
    keys: Vec<VerificationKey>,
    leeway_secs: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Agency identifier.
    agency: String,
    /// Kind of agency.
    agency_kind: String,
    /// State of the agency, if any.
    #[serde(default)]
    state: Option<String>,
    /// Roles.
    #[serde(default)]
    roles: Vec<String>,
    /// Facilities the agency runs.
    #[serde(default)]
    facilities: Vec<String>,
}

impl OidcAuthenticator {
    /// Accepts tokens from `issuer` for `audience` signed by one of `keys`, with 30 s of
    /// clock leeway.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        keys: Vec<VerificationKey>,
    ) -> Self {
        Self { issuer: issuer.into(), audience: audience.into(), keys, leeway_secs: 30 }
    }
}

fn unauthenticated(msg: &str) -> Error {
    Error::Unauthenticated(msg.to_string())
}

impl Authenticator for OidcAuthenticator {
    fn authenticate(&self, presented: &Presented<'_>) -> Result<Principal> {
        let value = presented
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthenticated("missing authorization: Bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("authorization must be a Bearer token"))?;
        let header = decode_header(token).map_err(|_| unauthenticated("malformed bearer token"))?;
        let candidates: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| k.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(unauthenticated("token signed with an unknown key or algorithm"));
        }
        let mut last = unauthenticated("token signature does not verify");
        for k in candidates {
            let mut v = Validation::new(k.algorithm);
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = self.leeway_secs;
            match decode::<Claims>(token, &k.key, &v) {
                Ok(data) => return principal(data.claims),
                Err(e) => {
                    last = unauthenticated(match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::InvalidAudience => "token is for another audience",
                        ErrorKind::InvalidIssuer => "token is from another issuer",
                        ErrorKind::InvalidSignature => "token signature does not verify",
                        ErrorKind::MissingRequiredClaim(_) => {
                            "token lacks a required claim (exp, iss, aud, sub)"
                        }
                        ErrorKind::ImmatureSignature => "token is not valid yet",
                        _ => "token is not valid",
                    });
                }
            }
        }
        Err(last)
    }
}

fn principal(c: Claims) -> Result<Principal> {
    let kind = AgencyKind::parse(&c.agency_kind)
        .ok_or_else(|| unauthenticated("token names an unknown agency_kind"))?;
    if c.agency.trim().is_empty() {
        return Err(unauthenticated("token names no agency"));
    }
    let state = c.state.map(|s| s.to_ascii_uppercase()).filter(|s| !s.is_empty());
    let p = Principal {
        agency: c.agency,
        state,
        kind,
        roles: c.roles,
        facilities: c.facilities,
        via: None,
    };
    check_principal(&p).map_err(|e| match e {
        Error::Unauthenticated(m) => Error::Unauthenticated(format!("token: {m}")),
        other => other,
    })?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    struct Issuer {
        encoding: EncodingKey,
        public_pem: String,
    }

    fn issuer() -> Issuer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        Issuer {
            encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
                .expect("encoding key"),
            public_pem: kp.public_key_pem(),
        }
    }

    fn now() -> i64 {
        crate::time::now_micros() / 1_000_000
    }

    fn token(i: &Issuer, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::ES256), &claims, &i.encoding).expect("token")
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": "https://idp.example.fr", "aud": "concord", "sub": "officer-17",
            "exp": now() + 600, "agency": "fr-mfa", "agency_kind": "state_ministry", "state": "FR",
            "roles": ["consular"],
        })
    }

    fn auth_with(i: &Issuer) -> OidcAuthenticator {
        let key = VerificationKey::from_pem(i.public_pem.as_bytes(), None).expect("public key");
        OidcAuthenticator::new("https://idp.example.fr", "concord", vec![key])
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().expect("header"));
        h
    }

    fn auth(a: &OidcAuthenticator, h: &http::HeaderMap) -> Result<Principal> {
        a.authenticate(&Presented { headers: h, peer_certificate: None })
    }

    fn refused(a: &OidcAuthenticator, h: &http::HeaderMap) -> String {
        match auth(a, h) {
            Err(Error::Unauthenticated(m)) => m,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_token_yields_its_principal_and_headers_cannot_override_it() {
        let i = issuer();
        let a = auth_with(&i);
        let mut h = bearer(&token(&i, claims()));
        h.insert(crate::auth::headers::AGENCY_KIND, "coordinator".parse().expect("header"));
        let p = auth(&a, &h).expect("authenticated");
        assert_eq!(p.agency, "fr-mfa");
        assert_eq!(p.kind, AgencyKind::StateMinistry, "forged metadata is ignored");
        assert_eq!(p.state.as_deref(), Some("FR"));
        assert_eq!(p.roles, vec!["consular".to_string()]);
    }

    #[test]
    fn expired_wrong_audience_wrong_issuer_and_foreign_signatures_are_refused() {
        let i = issuer();
        let a = auth_with(&i);
        let mut expired = claims();
        expired["exp"] = json!(now() - 3600);
        assert_eq!(refused(&a, &bearer(&token(&i, expired))), "token expired");
        let mut aud = claims();
        aud["aud"] = json!("someone-else");
        assert_eq!(refused(&a, &bearer(&token(&i, aud))), "token is for another audience");
        let mut iss = claims();
        iss["iss"] = json!("https://evil.example");
        assert_eq!(refused(&a, &bearer(&token(&i, iss))), "token is from another issuer");
        let other = issuer();
        assert_eq!(
            refused(&a, &bearer(&token(&other, claims()))),
            "token signature does not verify"
        );
        let mut no_exp = claims();
        no_exp.as_object_mut().expect("object").remove("exp");
        assert!(refused(&a, &bearer(&token(&i, no_exp))).contains("required claim"));
    }

    #[test]
    fn missing_and_malformed_credentials_are_refused() {
        let a = auth_with(&issuer());
        assert!(refused(&a, &http::HeaderMap::new()).contains("missing"));
        assert!(refused(&a, &bearer("not.a.jwt")).contains("malformed"));
        let mut basic = http::HeaderMap::new();
        basic.insert(http::header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().expect("header"));
        assert!(refused(&a, &basic).contains("Bearer"));
        let hs =
            encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(b"guess"))
                .expect("token");
        assert!(
            refused(&a, &bearer(&hs)).contains("unknown key or algorithm"),
            "no algorithm confusion"
        );
    }

    #[test]
    fn claims_are_checked_like_header_identities() {
        let i = issuer();
        let a = auth_with(&i);
        let mut no_state = claims();
        no_state.as_object_mut().expect("object").remove("state");
        assert!(refused(&a, &bearer(&token(&i, no_state))).contains("must name its state"));
        let mut wildcard = claims();
        wildcard["state"] = json!("%");
        assert!(refused(&a, &bearer(&token(&i, wildcard))).contains("alpha-2"));
    }
}
