//! The diplomatic requests service: requests between states about people held (repatriation,
//! transfer for trial, consular access, identity verification, evidence sharing, family
//! tracing), their parties, subjects and guarded lifecycle.
//!
//! # Layout
//! As in every Concord service:
//! - [`grpc`]: the contract's surface; parses requests, maps errors.
//! - [`domain`]: types, the lifecycle as a guarded state machine ([`domain::check`]), roles,
//!   subjects.
//! - [`store`]: every SQL statement and transaction, with audit and outbox in each write.
//! - [`registry`]: subjects checked in the registry as the caller; who is held, projected
//!   from the registry's change stream for the statistics.
//! - [`relay`]: hand-overs recorded in the registry.

pub mod domain;
pub mod grpc;
pub mod registry;
pub mod relay;
pub mod store;

use std::sync::Arc;

use concord_platform::config::ServerConfig;
use concord_platform::link::ServiceLink;
use concord_platform::policy::Policy;
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, DbOptions};
use concord_proto::requests::v1::requests_service_server::RequestsServiceServer;

pub use grpc::Requests;

/// Connects to the service's database (running migrations) and builds the gRPC service,
/// enforcing `policy`, with the message size caps of `cfg`. Through `registry` it checks
/// subjects as the caller, follows who is held, and records hand-overs, until `shutdown`.
pub async fn build(
    database_url: &str,
    policy: Arc<Policy>,
    cfg: &ServerConfig,
    registry: ServiceLink,
    shutdown: Shutdown,
) -> anyhow::Result<(RequestsServiceServer<Requests>, Db)> {
    let db = Db::connect(database_url, store::MIGRATIONS, DbOptions::default()).await?;
    tokio::spawn(registry::follow(db.clone(), registry.clone(), shutdown.clone()));
    tokio::spawn(relay::run(db.clone(), registry.clone(), shutdown.clone()));
    let svc = Requests::new(
        store::Store::new(db.clone()),
        registry::Registry::new(registry)?,
        policy,
        shutdown,
        cfg.max_streams_per_agency,
    );
    Ok((
        RequestsServiceServer::new(svc)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes),
        db,
    ))
}
