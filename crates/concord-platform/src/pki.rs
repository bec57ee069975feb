//! Mutual TLS: the agency directory, the client-certificate authenticator, TLS settings for
//! servers and clients, and the demo certificate authority the embedded default creates on
//! first start.
//!
//! A client certificate proves *which agency* calls (its subject common name is the agency
//! id); the agency directory says *what that agency is* (kind, state, roles, facilities). An
//! agency removed from the directory is refused at once, whatever certificates it holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::auth::{check_principal, AgencyKind, Authenticator, Presented, Principal};
use crate::error::{Error, Result};

/// One agency of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agency {
    /// Identifier; the common name of its certificates.
    pub id: String,
    /// Kind of agency (`coordinator`, `state_ministry`, ...).
    pub kind: String,
    /// ISO 3166-1 alpha-2 state, for state agencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Facilities it runs (custodial authorities).
    #[serde(default)]
    pub facilities: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(rename = "agency")]
    agencies: Vec<Agency>,
}

/// The agencies that may call, by id.
#[derive(Debug, Clone)]
pub struct Directory {
    by_id: HashMap<String, Principal>,
}

impl Directory {
    /// Parses and checks a directory (TOML, `[[agency]]` tables).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: DirectoryFile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("agency directory: {e}"))?;
        Self::from_agencies(file.agencies)
    }

    /// Checks a list of agencies.
    pub fn from_agencies(agencies: Vec<Agency>) -> anyhow::Result<Self> {
        let mut by_id = HashMap::new();
        for a in agencies {
            let kind = AgencyKind::parse(&a.kind).ok_or_else(|| {
                anyhow::anyhow!("agency directory: '{}' has unknown kind '{}'", a.id, a.kind)
            })?;
            let p = Principal {
                agency: a.id.clone(),
                state: a.state.map(|s| s.to_ascii_uppercase()),
                kind,
                roles: a.roles,
                facilities: a.facilities,
                via: None,
            };
            check_principal(&p)
                .map_err(|e| anyhow::anyhow!("agency directory: '{}': {e}", a.id))?;
            anyhow::ensure!(
                by_id.insert(a.id.clone(), p).is_none(),
                "agency directory: '{}' is listed twice",
                a.id
            );
        }
        Ok(Self { by_id })
    }

    /// Reads a directory file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The agency with this id.
    pub fn get(&self, id: &str) -> Option<&Principal> {
        self.by_id.get(id)
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Authenticates callers by the client certificate the TLS handshake verified against the
/// configured client CA.
#[derive(Debug, Clone)]
pub struct CertificateAuthenticator {
    directory: Directory,
    names: Arc<Mutex<Names>>,
}

/// Common names by the DER certificate they were read from.
type Names = HashMap<Box<[u8]>, Arc<str>>;

/// Certificates whose common name is remembered at most (then the memory starts again).
const NAMES_KEPT: usize = 4096;

impl CertificateAuthenticator {
    /// Looks agencies up in `directory`.
    pub fn new(directory: Directory) -> Self {
        Self { directory, names: Arc::default() }
    }

    /// The common name of `der`, parsed once per certificate: every call on a connection
    /// presents the same one, and parsing it is a measurable part of a cheap call. Only the
    /// name is remembered; the directory is asked on every call, so an agency removed from
    /// it is refused at once.
    fn name(&self, der: &[u8]) -> Option<Arc<str>> {
        let lock = || self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cn) = lock().get(der) {
            return Some(cn.clone());
        }
        // Parsed outside the lock: other calls' lookups do not wait for it.
        let cn: Arc<str> = common_name(der)?.into();
        let mut names = lock();
        if names.len() >= NAMES_KEPT {
            names.clear();
        }
        names.insert(der.into(), cn.clone());
        Some(cn)
    }
}

impl Authenticator for CertificateAuthenticator {
    fn authenticate(&self, presented: &Presented<'_>) -> Result<Principal> {
        let der = presented
            .peer_certificate
            .ok_or_else(|| Error::Unauthenticated("no client certificate was presented".into()))?;
        let cn = self.name(der).ok_or_else(|| {
            Error::Unauthenticated("the client certificate has no subject common name".into())
        })?;
        self.directory.get(&cn).cloned().ok_or_else(|| {
            Error::Unauthenticated(format!(
                "the client certificate names agency '{cn}', which is not in the agency directory"
            ))
        })
    }
}

/// A server's TLS settings: its certificate and the clients' CA. The protocols offered
/// (ALPN) are chosen where it serves: HTTP/2, and HTTP/1.1 too where HTTP/1.1 is served.
#[derive(Clone)]
pub struct ServerTls(pub Arc<rustls::ServerConfig>);

impl ServerTls {
    /// The settings offering HTTP/2, and HTTP/1.1 after it when `http1`.
    pub fn with_alpn(&self, http1: bool) -> Arc<rustls::ServerConfig> {
        let mut config = (*self.0).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        if http1 {
            config.alpn_protocols.push(b"http/1.1".to_vec());
        }
        Arc::new(config)
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("alpn", &self.0.alpn_protocols).finish_non_exhaustive()
    }
}

/// Where a server's or client's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA that signs the peers' certificates.
    pub ca: PathBuf,
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
}

impl TlsFiles {
    /// Server settings: its certificate, and client certificates verified against the CA.
    /// A client certificate is optional at the TLS layer so that bearer-token callers can
    /// connect; the identity layer refuses calls that present neither.
    pub fn server_config(&self) -> anyhow::Result<ServerTls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |p: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_slice_iter(&read(p)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("reading the certificates in {}: {e}", p.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", p.display());
            Ok(certs)
        };
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| {
            anyhow::anyhow!("reading the private key in {}: {e}", self.key.display())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in pem(&self.ca)? {
            roots.add(ca)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(pem(&self.cert)?, key)?;
        Ok(ServerTls(Arc::new(config)))
    }

    /// Client settings: the server is verified against the CA (as `domain`), and this
    /// client's certificate is presented.
    pub fn client_config(&self, domain: &str) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        Ok(ClientTlsConfig::new()
            .domain_name(domain)
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?)))
    }
}

/// The demo agencies the embedded default creates credentials for.
pub fn demo_agencies() -> Vec<Agency> {
    let a =
        |id: &str, kind: &str, state: Option<&str>, roles: &[&str], facilities: &[&str]| Agency {
            id: id.into(),
            kind: kind.into(),
            state: state.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            facilities: facilities.iter().map(|r| r.to_string()).collect(),
        };
    vec![
        a("coalition-coordinator", "coordinator", None, &[], &[]),
        a("fr-mfa", "state_ministry", Some("FR"), &["consular"], &[]),
        a("nl-mfa", "state_ministry", Some("NL"), &["consular"], &[]),
        a("fr-prosecutor", "justice", Some("FR"), &["prosecutor"], &[]),
        a("custodial-authority", "custodial_authority", None, &[], &["al-hol", "roj"]),
        a("humanitarian-monitor", "humanitarian_monitor", None, &[], &[]),
        a("concord-gateway", "service", None, &[], &[]),
        a("concord-facilities", "service", None, &["custody_relay"], &[]),
        a("concord-requests", "service", None, &["custody_relay"], &[]),
    ]
}

/// What [`ensure_demo`] created or found.
#[derive(Debug, Clone)]
pub struct DemoPki {
    /// The folder.
    pub dir: PathBuf,
    /// True if it was created now.
    pub created: bool,
}

impl DemoPki {
    /// The server's TLS files.
    pub fn server(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
            ca: self.dir.join("ca.pem"),
        }
    }
    /// An agency's TLS files, for clients.
    pub fn agency(&self, id: &str) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("agencies").join(format!("{id}.pem")),
            key: self.dir.join("agencies").join(format!("{id}.key")),
            ca: self.dir.join("ca.pem"),
        }
    }
    /// The agency directory file.
    pub fn directory(&self) -> PathBuf {
        self.dir.join("agencies.toml")
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Creates, under `dir`, a certificate authority, a server certificate for `server_names`
/// and a certificate and key for each of `agencies`, with their directory. If `dir` already
/// holds a CA, nothing is created and the existing files are used.
pub fn ensure_demo(
    dir: &Path,
    server_names: &[&str],
    agencies: &[Agency],
) -> anyhow::Result<DemoPki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let pki = DemoPki { dir: dir.to_path_buf(), created: false };
    if dir.join("ca.pem").exists() {
        return Ok(pki);
    }
    // Built in a sibling folder and renamed into place, so a crash never leaves half a PKI.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".pki-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(tmp.join("agencies"))?;
    // Nothing is left behind on failure: the folder holds the CA's and the agencies' keys.
    let write = || -> anyhow::Result<()> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "Concord demo CA");
        ca.distinguished_name.push(DnType::OrganizationName, "Concord (demonstration only)");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        std::fs::write(tmp.join("ca.pem"), ca_cert.pem())?;
        write_private(&tmp.join("ca.key"), &ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(sans)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (cert, key) = leaf(
            "concord",
            server_names.iter().map(|s| s.to_string()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        std::fs::write(tmp.join("server.pem"), cert)?;
        write_private(&tmp.join("server.key"), &key)?;
        for a in agencies {
            let (cert, key) = leaf(&a.id, vec![], ExtendedKeyUsagePurpose::ClientAuth)?;
            std::fs::write(tmp.join("agencies").join(format!("{}.pem", a.id)), cert)?;
            write_private(&tmp.join("agencies").join(format!("{}.key", a.id)), &key)?;
        }
        let directory = toml::to_string(&DirectoryFile { agencies: agencies.to_vec() })?;
        std::fs::write(
            tmp.join("agencies.toml"),
            format!(
                "# Agencies that may call Concord: a client certificate's common name is looked up\n\
                 # here. Remove an agency to refuse it at once.\n\n{directory}"
            ),
        )?;
        std::fs::rename(&tmp, dir)
            .map_err(|e| anyhow::anyhow!("moving the new PKI to {}: {e}", dir.display()))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(DemoPki { created: true, ..pki })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_pki_names_agencies_in_certificates_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ensure_demo(&dir.path().join("pki"), &["localhost"], &demo_agencies())
            .expect("created");
        assert!(pki.created);
        let again = ensure_demo(&pki.dir, &["localhost"], &demo_agencies()).expect("found");
        assert!(!again.created, "an existing PKI is kept");
        let directory = Directory::from_file(&pki.directory()).expect("directory");
        let pem = std::fs::read(pki.agency("fr-mfa").cert).expect("cert");
        let der = x509_parser::pem::parse_x509_pem(&pem).expect("pem").1.contents;
        assert_eq!(common_name(&der).as_deref(), Some("fr-mfa"));
        let auth = CertificateAuthenticator::new(directory);
        let headers = http::HeaderMap::new();
        let p = auth
            .authenticate(&Presented { headers: &headers, peer_certificate: Some(&der) })
            .expect("known agency");
        assert_eq!((p.kind, p.state.as_deref()), (AgencyKind::StateMinistry, Some("FR")));
        // The name is remembered per certificate, never across certificates.
        let nl_pem = std::fs::read(pki.agency("nl-mfa").cert).expect("cert");
        let nl = x509_parser::pem::parse_x509_pem(&nl_pem).expect("pem").1.contents;
        for _ in 0..2 {
            for (der, agency) in [(&der, "fr-mfa"), (&nl, "nl-mfa")] {
                let p = auth
                    .authenticate(&Presented { headers: &headers, peer_certificate: Some(der) })
                    .expect("known agency");
                assert_eq!(p.agency, agency);
            }
        }
        // An agency removed from the directory is refused at once, its name remembered or not.
        let without_fr = Directory {
            by_id: auth
                .directory
                .by_id
                .iter()
                .filter(|(k, _)| *k != "fr-mfa")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let auth = CertificateAuthenticator { directory: without_fr, names: auth.names.clone() };
        let e = auth
            .authenticate(&Presented { headers: &headers, peer_certificate: Some(&der) })
            .unwrap_err();
        assert!(e.to_string().contains("not in the agency directory"), "{e}");
    }

    #[test]
    fn directory_refuses_bad_entries() {
        let twice =
            "[[agency]]\nid='a'\nkind='coordinator'\n[[agency]]\nid='a'\nkind='coordinator'\n";
        assert!(Directory::from_toml(twice).is_err());
        let stateless = "[[agency]]\nid='a'\nkind='justice'\n";
        assert!(Directory::from_toml(stateless).is_err());
        let unknown = "[[agency]]\nid='a'\nkind='pirate'\n";
        assert!(Directory::from_toml(unknown).unwrap_err().to_string().contains("pirate"));
    }
}
