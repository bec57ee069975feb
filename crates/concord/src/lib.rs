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

use concord_platform::auth::{HeaderAuthenticator, SharedAuthenticator};
use concord_platform::config::{ServerConfig, TelemetryConfig};
use concord_platform::oidc::{OidcAuthenticator, VerificationKey};
use concord_platform::server::{self, Services, Shutdown};

/// Which services to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service.
    All,
    /// The registry.
    Registry,
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// `x-concord-*` metadata, trusted as sent: development on a trusted network only.
    Dev,
    /// OIDC bearer tokens validated against the configured issuer, audience and keys.
    Oidc,
}

/// `concord serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Services to run in this process.
    #[arg(long, env = "CONCORD_TARGET", value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// Folder for the SQLite files of the embedded default.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address of the registry's gRPC server.
    #[arg(long, env = "CONCORD_REGISTRY_ADDR", default_value = "127.0.0.1:50051")]
    pub registry_addr: SocketAddr,
    /// Registry database (sqlite:// or postgres://); default: a SQLite file in the data folder.
    #[arg(long, env = "CONCORD_REGISTRY_DATABASE_URL")]
    pub registry_database_url: Option<String>,
    /// How callers are authenticated.
    #[arg(long, env = "CONCORD_AUTH", value_enum, default_value_t = AuthMode::Dev)]
    pub auth: AuthMode,
    /// OIDC issuer tokens must come from (with `--auth oidc`).
    #[arg(long, env = "CONCORD_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// OIDC audience tokens must be for (with `--auth oidc`).
    #[arg(long, env = "CONCORD_OIDC_AUDIENCE", default_value = "concord")]
    pub oidc_audience: String,
    /// PEM public keys (EC for ES256, RSA for RS256) that sign tokens; repeat for rotation.
    #[arg(long = "oidc-key-file", env = "CONCORD_OIDC_KEY_FILES", value_delimiter = ',')]
    pub oidc_key_files: Vec<PathBuf>,
    /// Server limits and timings.
    #[command(flatten)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// The registry's database URL.
    pub fn registry_database_url(&self) -> String {
        self.registry_database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("registry.db").display()))
    }
}

/// The authenticator `cfg` asks for.
pub fn authenticator(cfg: &Config) -> anyhow::Result<SharedAuthenticator> {
    Ok(match cfg.auth {
        AuthMode::Dev => {
            tracing::warn!("development authentication: x-concord-* metadata is trusted as sent");
            Arc::new(HeaderAuthenticator)
        }
        AuthMode::Oidc => {
            let issuer = cfg
                .oidc_issuer
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--auth oidc needs --oidc-issuer"))?;
            anyhow::ensure!(!cfg.oidc_key_files.is_empty(), "--auth oidc needs --oidc-key-file");
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
            Arc::new(OidcAuthenticator::new(issuer, cfg.oidc_audience.clone(), keys))
        }
    })
}

/// Addresses the running services listen on.
#[derive(Debug, Clone)]
pub struct Running {
    /// The registry's address, if it runs.
    pub registry: Option<SocketAddr>,
}

/// Starts the targets on their listeners and returns their addresses and a future that
/// serves until `shutdown`. Binding happens before this returns, so callers (tests with
/// port 0) learn the real ports.
pub async fn start(
    cfg: &Config,
    shutdown: Shutdown,
) -> anyhow::Result<(Running, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let authenticator = authenticator(cfg)?;
    let mut tasks = Vec::new();
    let mut running = Running { registry: None };
    if matches!(cfg.target, Target::All | Target::Registry) {
        let (svc, db) =
            concord_registry::build(&cfg.registry_database_url(), &cfg.server, shutdown.clone())
                .await?;
        let listener = server::bind(cfg.registry_addr).await?;
        running.registry = Some(listener.local_addr()?);
        let server_cfg = cfg.server.clone();
        let auth = authenticator.clone();
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let r = server::serve(listener, Services::new().with(svc), auth, &server_cfg, sd).await;
            db.close().await;
            r
        }));
    }
    let all = async move {
        for t in tasks {
            t.await??;
        }
        Ok(())
    };
    Ok((running, all))
}
