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

use concord_platform::auth::HeaderAuthenticator;
use concord_platform::config::{ServerConfig, TelemetryConfig};
use concord_platform::server::{self, Services, Shutdown};

/// Which services to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service.
    All,
    /// The registry.
    Registry,
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
    let authenticator = Arc::new(HeaderAuthenticator);
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
