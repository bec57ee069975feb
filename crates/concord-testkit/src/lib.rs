//! Test support: a fresh database per test on SQLite (always) or PostgreSQL (when
//! `CONCORD_TEST_BACKEND=postgres`), servers started on `127.0.0.1:0`, and principals.
//!
//! PostgreSQL tests connect to `CONCORD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and create a database per test, so tests
//! never share state. Logs are printed only when `TEST_LOG` is set.

pub mod people;

use std::net::SocketAddr;
use std::sync::Arc;

use concord_platform::auth::{AgencyKind, HeaderAuthenticator, HeaderCredentials, Principal};
use concord_platform::config::{ServerConfig, TelemetryConfig};
use concord_platform::server::{self, Security, Services, Shutdown, ShutdownTrigger};
use sqlx::Connection;

/// Which database the storage tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the PostgreSQL server.
    Postgres,
}

/// The backend selected by `CONCORD_TEST_BACKEND` (sqlite when unset).
pub fn backend() -> Backend {
    match std::env::var("CONCORD_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// A database for one test; a SQLite folder is removed when dropped.
#[derive(Debug)]
pub struct TestDb {
    /// URL to connect to.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Creates a fresh, empty database on the selected backend.
pub async fn database() -> anyhow::Result<TestDb> {
    init_logs();
    match backend() {
        Backend::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("test.db").display());
            Ok(TestDb { url, _dir: Some(dir) })
        }
        Backend::Postgres => {
            let admin = std::env::var("CONCORD_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("concord_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_string();
            Ok(TestDb { url: format!("{base}/{name}"), _dir: None })
        }
    }
}

fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = concord_platform::telemetry::init(
            "test",
            &TelemetryConfig {
                log_filter: "debug,sqlx=warn,h2=warn,tower=warn,hyper=warn".into(),
                ..Default::default()
            },
        );
    }
}

/// Server settings for tests: no drain grace.
pub fn server_config() -> ServerConfig {
    ServerConfig { drain_grace: std::time::Duration::ZERO, ..ServerConfig::default() }
}

/// A server running in the background; shuts down when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    trigger: Option<ShutdownTrigger>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts `services` on `127.0.0.1:0` in plaintext, trusting `x-concord-*` metadata
    /// (the [`HeaderAuthenticator`]): tests of one service's behaviour. Tests of identity
    /// use [`TestServer::start_secure`]. The shutdown signal is the one the services were
    /// built with.
    pub async fn start(
        services: Services,
        trigger: ShutdownTrigger,
        shutdown: Shutdown,
        cfg: ServerConfig,
    ) -> anyhow::Result<Self> {
        let security = Security { authenticator: Arc::new(HeaderAuthenticator), tls: None };
        Self::start_secure(services, trigger, shutdown, cfg, security).await
    }

    /// Starts `services` on `127.0.0.1:0` with `security`.
    pub async fn start_secure(
        services: Services,
        trigger: ShutdownTrigger,
        shutdown: Shutdown,
        cfg: ServerConfig,
        security: Security,
    ) -> anyhow::Result<Self> {
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            server::serve(listener, services, security, &cfg, shutdown).await
        });
        Ok(Self { addr, trigger: Some(trigger), handle: Some(handle) })
    }

    /// `http://addr`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(h) = self.handle.take() {
            h.await??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
    }
}

fn principal(agency: &str, kind: AgencyKind, state: Option<&str>) -> Principal {
    Principal {
        agency: agency.into(),
        state: state.map(Into::into),
        kind,
        roles: vec![],
        facilities: vec![],
        via: None,
    }
}

/// Metadata credentials for `p` with a test purpose: what test clients send.
pub fn caller(p: Principal) -> HeaderCredentials {
    HeaderCredentials::new(p).with_purpose("concord integration test")
}

/// The coalition coordination cell.
pub fn coordinator() -> Principal {
    principal("coalition-cell", AgencyKind::Coordinator, None)
}

/// A state's ministry of foreign affairs.
pub fn ministry(state: &str) -> Principal {
    principal(&format!("{}-mfa", state.to_lowercase()), AgencyKind::StateMinistry, Some(state))
}

/// A state's prosecutors.
pub fn justice(state: &str) -> Principal {
    principal(&format!("{}-justice", state.to_lowercase()), AgencyKind::Justice, Some(state))
}

/// The custodial authority running `facilities`.
pub fn custodial(facilities: &[&str]) -> Principal {
    Principal {
        facilities: facilities.iter().map(|f| f.to_string()).collect(),
        ..principal("custodial-authority", AgencyKind::CustodialAuthority, None)
    }
}

/// A humanitarian monitor.
pub fn monitor() -> Principal {
    principal("humanitarian-monitor", AgencyKind::HumanitarianMonitor, None)
}

/// A mutual-TLS channel to `addr` presenting `agency`'s certificate from `pki`, verifying the
/// server as `localhost` (the names the tests' certificates are made for).
pub async fn tls_channel(
    pki: &concord_platform::pki::DemoPki,
    addr: SocketAddr,
    agency: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    tls_channel_to(pki, &format!("https://{addr}"), agency).await
}

/// The same to `uri` (`https://host:port`).
pub async fn tls_channel_to(
    pki: &concord_platform::pki::DemoPki,
    uri: &str,
    agency: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let tls = pki.agency(agency).client_config("localhost")?;
    Ok(tonic::transport::Channel::from_shared(uri.to_string())?.tls_config(tls)?.connect().await?)
}
