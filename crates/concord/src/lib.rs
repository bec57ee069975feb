//! The single Concord binary's library: runs the whole suite or any one service in one
//! process (like Grafana Loki's targets). Services still talk to each other over gRPC when
//! they share a process; each listens on its own address.
//!
//! # Layout
//! - [`Config`]: flags and environment for `concord serve`.
//! - [`start`]: starts the selected targets and serves until shutdown.
//! - [`synthetic`]: fictional people for benchmarks and demos.

pub mod synthetic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use concord_platform::auth::EdgeAuthenticator;
use concord_platform::config::{ServerConfig, TelemetryConfig};
use concord_platform::oidc::{OidcAuthenticator, VerificationKey};
use concord_platform::pki::{self, CertificateAuthenticator, Directory, TlsFiles};
use concord_platform::policy::Policy;
use concord_platform::server::{self, Security, Services, Shutdown};

/// Which services to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service.
    All,
    /// The registry.
    Registry,
    /// The facilities service.
    Facilities,
    /// The diplomatic requests service.
    Requests,
    /// The gateway.
    Gateway,
}

/// `concord serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Services to run in this process.
    #[arg(long, env = "CONCORD_TARGET", value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// Folder for the SQLite files and the demo certificates of the embedded default.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address of the registry's gRPC server.
    #[arg(long, env = "CONCORD_REGISTRY_ADDR", default_value = "127.0.0.1:50051")]
    pub registry_addr: SocketAddr,
    /// Plaintext HTTP address serving RPC metrics at `/metrics` in the Prometheus format
    /// (calls, codes and handling time per service and method); unset: none.
    #[arg(long, env = "CONCORD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Plaintext address answering only the gRPC health protocol, for Kubernetes probes (which
    /// cannot speak TLS); unset: health is served on the TLS port only.
    #[arg(long, env = "CONCORD_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Address of the facilities service's gRPC server.
    #[arg(long, env = "CONCORD_FACILITIES_ADDR", default_value = "127.0.0.1:50052")]
    pub facilities_addr: SocketAddr,
    /// Address of the diplomatic requests service's gRPC server.
    #[arg(long, env = "CONCORD_REQUESTS_ADDR", default_value = "127.0.0.1:50053")]
    pub requests_addr: SocketAddr,
    /// Address of the gateway's gRPC server: the one address partners call.
    #[arg(long, env = "CONCORD_GATEWAY_ADDR", default_value = "127.0.0.1:50050")]
    pub gateway_addr: SocketAddr,
    /// Origins (`https://host[:port]`, comma separated) of browser applications allowed to
    /// call the gateway with gRPC-Web and the JSON edge (CORS); default: none.
    #[arg(long, env = "CONCORD_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// How often the gateway checks the health of each service behind it.
    #[arg(long, env = "CONCORD_BACKEND_CHECK_INTERVAL", default_value = "2s",
          value_parser = concord_platform::config::parse_duration)]
    pub backend_check_interval: std::time::Duration,
    /// The registry as other services reach it; default: the registry this process runs, or
    /// https://localhost:50051.
    #[arg(long, env = "CONCORD_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// The facilities service as the gateway reaches it; default: the one this process runs,
    /// or https://localhost:50052.
    #[arg(long, env = "CONCORD_FACILITIES_URL")]
    pub facilities_url: Option<String>,
    /// The requests service as the gateway reaches it; default: the one this process runs, or
    /// https://localhost:50053.
    #[arg(long, env = "CONCORD_REQUESTS_URL")]
    pub requests_url: Option<String>,
    /// PEM certificate this process presents when it calls other services (a `service`
    /// agency of the directory); default: the demo PKI's identity of each service
    /// (concord-facilities, concord-requests).
    #[arg(long, env = "CONCORD_SERVICE_CERT", requires = "service_key")]
    pub service_cert: Option<PathBuf>,
    /// PEM key of --service-cert.
    #[arg(long, env = "CONCORD_SERVICE_KEY", requires = "service_cert")]
    pub service_key: Option<PathBuf>,
    /// Facilities database (sqlite:// or postgres://); default: a SQLite file in the data folder.
    #[arg(long, env = "CONCORD_FACILITIES_DATABASE_URL")]
    pub facilities_database_url: Option<String>,
    /// Requests database (sqlite:// or postgres://); default: a SQLite file in the data folder.
    #[arg(long, env = "CONCORD_REQUESTS_DATABASE_URL")]
    pub requests_database_url: Option<String>,
    /// Registry database (sqlite:// or postgres://); default: a SQLite file in the data folder.
    #[arg(long, env = "CONCORD_REGISTRY_DATABASE_URL")]
    pub registry_database_url: Option<String>,
    /// PEM certificate chain of the servers. With --tls-key and --tls-client-ca; without
    /// them, a demo CA and credentials are created under <data-dir>/pki on first start.
    #[arg(long, env = "CONCORD_TLS_CERT", requires_all = ["tls_key", "tls_client_ca", "agencies"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the servers.
    #[arg(long, env = "CONCORD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signs client (agency and service) certificates.
    #[arg(long, env = "CONCORD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Agency directory (TOML); default: the demo one under <data-dir>/pki.
    #[arg(long, env = "CONCORD_AGENCIES")]
    pub agencies: Option<PathBuf>,
    /// Host names and addresses the demo server certificate is made for.
    #[arg(
        long,
        env = "CONCORD_DEMO_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,concord,concord-registry,concord-gateway"
    )]
    pub demo_server_names: Vec<String>,
    /// Authorization policy (TOML); default: the embedded one.
    #[arg(long, env = "CONCORD_POLICY")]
    pub policy: Option<PathBuf>,
    /// Agencies trusted to forward the principal of the partner they authenticated.
    #[arg(
        long,
        env = "CONCORD_TRUSTED_FORWARDERS",
        value_delimiter = ',',
        default_value = "concord-gateway,concord-requests"
    )]
    pub trusted_forwarders: Vec<String>,
    /// OIDC issuer whose bearer tokens are accepted (besides client certificates).
    #[arg(long, env = "CONCORD_OIDC_ISSUER", requires = "oidc_key_files")]
    pub oidc_issuer: Option<String>,
    /// OIDC audience tokens must be for.
    #[arg(long, env = "CONCORD_OIDC_AUDIENCE", default_value = "concord")]
    pub oidc_audience: String,
    /// PEM public keys (EC for ES256, RSA for RS256) that sign tokens; repeat for rotation.
    #[arg(long = "oidc-key-file", env = "CONCORD_OIDC_KEY_FILES", value_delimiter = ',')]
    pub oidc_key_files: Vec<PathBuf>,
    /// Youngest age at which a boy may be moved to a rehabilitation centre (facilities'
    /// separation rules; children are never placed in an adult prison, whatever this says).
    #[arg(long, env = "CONCORD_REHABILITATION_MIN_AGE", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(0..=17))]
    pub rehabilitation_min_age: i32,
    /// Server limits and timings.
    #[command(flatten)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Settings for `data_dir` with every other value at its default.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            cfg: Config,
        }
        let dir = data_dir.display().to_string();
        let mut cfg =
            <Wrap as clap::Parser>::parse_from(["concord", "--data-dir", dir.as_str()]).cfg;
        cfg.data_dir = data_dir;
        cfg
    }

    /// Settings for `data_dir` serving `target` on ports the OS picks on 127.0.0.1, with no
    /// wait before draining: a suite, or a part of one, as tests start it.
    pub fn for_test(data_dir: PathBuf, target: Target) -> Self {
        let mut cfg = Self::with_data_dir(data_dir);
        cfg.target = target;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        for a in [
            &mut cfg.registry_addr,
            &mut cfg.facilities_addr,
            &mut cfg.requests_addr,
            &mut cfg.gateway_addr,
        ] {
            *a = any;
        }
        cfg.server.drain_grace = std::time::Duration::ZERO;
        cfg
    }

    /// The facilities' separation rules.
    pub fn separation_rules(&self) -> concord_facilities::domain::SeparationRules {
        concord_facilities::domain::SeparationRules {
            rehabilitation_min_age: self.rehabilitation_min_age,
        }
    }

    /// The registry's database URL.
    pub fn registry_database_url(&self) -> String {
        self.registry_database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("registry.db").display()))
    }

    /// The facilities service's database URL.
    pub fn facilities_database_url(&self) -> String {
        self.facilities_database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("facilities.db").display())
        })
    }

    /// The requests service's database URL.
    pub fn requests_database_url(&self) -> String {
        self.requests_database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("requests.db").display()))
    }

    /// Where the demo certificates are (or will be).
    pub fn demo_pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

/// The policy `cfg` names, or the embedded one.
pub fn policy(cfg: &Config) -> anyhow::Result<Arc<Policy>> {
    Ok(Arc::new(match &cfg.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::embedded(),
    }))
}

/// Server TLS and the authenticator `cfg` asks for: the configured certificates, or the demo
/// PKI (created on first start, with instructions printed); client certificates looked up in
/// the agency directory; bearer tokens if an OIDC issuer is set; forwarded principals only
/// from the trusted forwarders.
pub fn security(cfg: &Config) -> anyhow::Result<Security> {
    let (tls_files, directory_path) = match (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_client_ca) {
        (Some(cert), Some(key), Some(ca)) => (
            TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() },
            cfg.agencies.clone().ok_or_else(|| anyhow::anyhow!("--tls-cert needs --agencies"))?,
        ),
        _ => {
            let names: Vec<&str> = cfg.demo_server_names.iter().map(String::as_str).collect();
            let pki = pki::ensure_demo(&cfg.demo_pki_dir(), &names, &pki::demo_agencies())?;
            if pki.created {
                print_demo_instructions(&pki, cfg);
            }
            (pki.server(), cfg.agencies.clone().unwrap_or_else(|| pki.directory()))
        }
    };
    let directory = Directory::from_file(&directory_path)?;
    let oidc = match &cfg.oidc_issuer {
        None => None,
        Some(issuer) => {
            let keys = cfg
                .oidc_key_files
                .iter()
                .map(|f| {
                    let pem = std::fs::read(f)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
                    VerificationKey::from_pem(&pem, None).map_err(|e| {
                        anyhow::anyhow!("{} is not a PEM public key: {e}", f.display())
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(OidcAuthenticator::new(issuer.clone(), cfg.oidc_audience.clone(), keys))
        }
    };
    let authenticator = EdgeAuthenticator {
        mtls: Some(CertificateAuthenticator::new(directory)),
        oidc,
        forwarders: cfg.trusted_forwarders.clone(),
    };
    Ok(Security { authenticator: Arc::new(authenticator), tls: Some(tls_files.server_config()?) })
}

fn print_demo_instructions(pki: &pki::DemoPki, cfg: &Config) {
    let d = pki.dir.display();
    eprintln!(
        "\nCreated a demo certificate authority and credentials under {d}:\n\
         \x20 agencies: {}\n\
         \x20 directory: {}\n\
         Call the registry as the French ministry of foreign affairs, for example:\n\
         \x20 grpcurl -cacert {d}/ca.pem -cert {d}/agencies/fr-mfa.pem -key {d}/agencies/fr-mfa.key \\\n\
         \x20   -H 'x-concord-purpose: consular case review' \\\n\
         \x20   localhost:{} concord.registry.v1.RegistryService/ListPersons\n\
         These credentials are for demonstration only; production uses --tls-cert, --tls-key,\n\
         --tls-client-ca and --agencies.\n",
        pki::demo_agencies().iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", "),
        pki.directory().display(),
        cfg.registry_addr.port(),
    );
}

/// Addresses the running services listen on.
#[derive(Debug, Clone)]
pub struct Running {
    /// The registry's address, if it runs.
    pub registry: Option<SocketAddr>,
    /// The facilities service's address, if it runs.
    pub facilities: Option<SocketAddr>,
    /// The requests service's address, if it runs.
    pub requests: Option<SocketAddr>,
    /// The gateway's address, if it runs.
    pub gateway: Option<SocketAddr>,
    /// The plaintext health address, if any.
    pub health: Option<SocketAddr>,
    /// The metrics address, if any.
    pub metrics: Option<SocketAddr>,
}

/// Starts the targets on their listeners and returns their addresses and a future that
/// serves until `shutdown`. Binding happens before this returns, so callers (tests with
/// port 0) learn the real ports.
pub async fn start(
    cfg: &Config,
    shutdown: Shutdown,
) -> anyhow::Result<(Running, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let policy = policy(cfg)?;
    let mut launcher = Launcher {
        security: security(cfg)?,
        cfg,
        shutdown: shutdown.clone(),
        health_addr: cfg.health_addr,
        health: None,
        tasks: Vec::new(),
    };
    let mut running = Running {
        registry: None,
        facilities: None,
        requests: None,
        gateway: None,
        health: None,
        metrics: None,
    };
    if matches!(cfg.target, Target::All | Target::Registry) {
        let (svc, db) = concord_registry::build(
            &cfg.registry_database_url(),
            policy.clone(),
            &cfg.server,
            shutdown.clone(),
        )
        .await?;
        running.registry =
            Some(launcher.launch(cfg.registry_addr, Services::new().with(svc), Some(db)).await?);
    }
    if matches!(cfg.target, Target::All | Target::Facilities) {
        let link = registry_link(cfg, running.registry, "concord-facilities")?;
        let (svc, db) = concord_facilities::build(
            &cfg.facilities_database_url(),
            policy.clone(),
            cfg.separation_rules(),
            &cfg.server,
            Some(link),
            shutdown.clone(),
        )
        .await?;
        running.facilities =
            Some(launcher.launch(cfg.facilities_addr, Services::new().with(svc), Some(db)).await?);
    }
    if matches!(cfg.target, Target::All | Target::Requests) {
        let link = registry_link(cfg, running.registry, "concord-requests")?;
        let (svc, db) = concord_requests::build(
            &cfg.requests_database_url(),
            policy.clone(),
            &cfg.server,
            link,
            shutdown.clone(),
        )
        .await?;
        running.requests =
            Some(launcher.launch(cfg.requests_addr, Services::new().with(svc), Some(db)).await?);
    }
    if matches!(cfg.target, Target::All | Target::Gateway) {
        let links = concord_gateway::Links {
            registry: registry_link(cfg, running.registry, "concord-gateway")?,
            facilities: service_link(
                cfg,
                &cfg.facilities_url,
                running.facilities,
                50052,
                "concord-gateway",
            )?,
            requests: service_link(
                cfg,
                &cfg.requests_url,
                running.requests,
                50053,
                "concord-gateway",
            )?,
        };
        let options = concord_gateway::Options {
            cors_origins: cfg.cors_allowed_origins.clone(),
            check_every: cfg.backend_check_interval,
        };
        let services = concord_gateway::services(&links, &cfg.server, &options, shutdown.clone())?;
        running.gateway = Some(launcher.launch(cfg.gateway_addr, services, None).await?);
    }
    running.health = launcher.health;
    if let Some(addr) = cfg.metrics_addr {
        let listener = server::bind(addr).await?;
        running.metrics = Some(listener.local_addr()?);
        tokio::spawn(concord_platform::metrics::serve(listener, shutdown.clone()));
    }
    let mut tasks = launcher.tasks;
    // Every server runs until shutdown; the first to fail ends the process with its error
    // (the others are not left serving a half-working suite).
    let all = async move {
        while !tasks.is_empty() {
            let (r, _, rest) = futures::future::select_all(tasks).await;
            r??;
            tasks = rest;
        }
        Ok(())
    };
    Ok((running, all))
}

/// How a service reaches the registry: the one this process runs (`local`), or
/// --registry-url; over mutual TLS as --service-cert, or else as the demo PKI's `service`.
fn registry_link(
    cfg: &Config,
    local: Option<SocketAddr>,
    service: &str,
) -> anyhow::Result<concord_platform::link::ServiceLink> {
    service_link(cfg, &cfg.registry_url, local, 50051, service)
}

/// How `service` reaches another: at `url`, else the one this process runs (`local`), else
/// localhost on `port`; over mutual TLS as --service-cert, or else as the demo PKI's
/// `service`.
fn service_link(
    cfg: &Config,
    url: &Option<String>,
    local: Option<SocketAddr>,
    port: u16,
    service: &str,
) -> anyhow::Result<concord_platform::link::ServiceLink> {
    let uri = match (url, local) {
        (Some(u), _) => u.clone(),
        (None, Some(a)) => format!("https://localhost:{}", a.port()),
        (None, None) => format!("https://localhost:{port}"),
    };
    let demo = pki::DemoPki { dir: cfg.demo_pki_dir(), created: false };
    let ca = cfg.tls_client_ca.clone().unwrap_or_else(|| demo.server().ca);
    let files = match (&cfg.service_cert, &cfg.service_key) {
        (Some(cert), Some(key)) => TlsFiles { cert: cert.clone(), key: key.clone(), ca },
        _ => TlsFiles { ca, ..demo.agency(service) },
    };
    let host = uri
        .split("://")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or("localhost")
        .to_string();
    let tls = if uri.starts_with("https://") { Some(files.client_config(&host)?) } else { None };
    Ok(concord_platform::link::ServiceLink { uri, tls, principal: None })
}

/// Binds and serves each service of a process the same way.
struct Launcher<'a> {
    cfg: &'a Config,
    security: Security,
    shutdown: Shutdown,
    /// The plaintext health port, given to the first service launched.
    health_addr: Option<SocketAddr>,
    health: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Launcher<'_> {
    /// Binds `addr` and serves `services` until shutdown, then closes `db`; returns the
    /// bound address (port 0 picks one).
    async fn launch(
        &mut self,
        addr: SocketAddr,
        mut services: Services,
        db: Option<concord_platform::storage::Db>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = server::bind(addr).await?;
        let bound = listener.local_addr()?;
        if let Some(health) = self.health_addr.take() {
            let plain = server::bind(health).await?;
            self.health = Some(plain.local_addr()?);
            services = services.with_plain_health(plain);
        }
        let server_cfg = self.cfg.server.clone();
        let security = self.security.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let r = server::serve(listener, services, security, &server_cfg, shutdown).await;
            if let Some(db) = db {
                db.close().await;
            }
            r
        }));
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_default_backend_check_is_the_gateways_own() {
        // Written twice (a flag's default is text): they must agree.
        let cfg = super::Config::with_data_dir("data".into());
        assert_eq!(cfg.backend_check_interval, concord_gateway::health::EVERY);
    }
}
