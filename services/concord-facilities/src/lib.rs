//! The facilities service: the sites that hold people, their sections and capacity, their
//! security status and its timeline, and who runs them.
//!
//! # Layout
//! As in every Concord service:
//! - [`grpc`]: the contract's surface; parses requests into [`domain`] values, maps errors.
//! - [`domain`]: kinds, the security status machine, sections and capacity, validation.
//! - [`store`]: every SQL statement and transaction, with audit and outbox in each write.
//! - [`occupancy`]: who is placed where, projected from the registry's change stream.
//! - [`relay`]: what movements and headcounts change about people, recorded in the registry.
//! - [`relocation`]: the emergency relocation planner (pure).

pub mod domain;
pub mod grpc;
pub mod occupancy;
pub mod relay;
pub mod relocation;
pub mod store;

use std::sync::Arc;

use concord_platform::config::ServerConfig;
use concord_platform::policy::Policy;
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, DbOptions};
use concord_proto::facilities::v1::facilities_service_server::FacilitiesServiceServer;

pub use grpc::Facilities;

/// Connects to the service's database (running migrations) and builds the gRPC service,
/// enforcing `policy` and the separation `rules`, with the message size caps of `cfg`. With
/// `registry`, it follows the registry's changes to keep occupancy current and records in
/// the registry what movements and headcounts change, until `shutdown`.
pub async fn build(
    database_url: &str,
    policy: Arc<Policy>,
    rules: domain::SeparationRules,
    cfg: &ServerConfig,
    registry: Option<concord_platform::link::ServiceLink>,
    shutdown: Shutdown,
) -> anyhow::Result<(FacilitiesServiceServer<Facilities>, Db)> {
    let db = Db::connect(database_url, store::MIGRATIONS, DbOptions::default()).await?;
    if let Some(link) = registry {
        tokio::spawn(occupancy::follow(db.clone(), link.clone(), shutdown.clone()));
        tokio::spawn(relay::run(db.clone(), link, shutdown.clone()));
    }
    let svc = Facilities::new(
        store::Store::new(db.clone()),
        policy,
        shutdown,
        cfg.max_streams_per_agency,
    )
    .with_rules(rules);
    Ok((
        FacilitiesServiceServer::new(svc)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes),
        db,
    ))
}
