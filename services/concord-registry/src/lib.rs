//! The registry service: the people held in northeast Syria and their families, their
//! identities, nationalities, documents, custody and legal status.
//!
//! # Layout
//! One direction of travel, as in every Concord service:
//! - [`grpc`]: the contract's surface; parses requests into [`domain`] values, maps errors.
//! - [`domain`]: types, validation, the custody state machine.
//! - [`search_keys`]: transliteration-tolerant name keys (Arabic script and Latin variants).
//! - [`store`]: every SQL statement and transaction, with the caller's scope in each query.
//! - [`events`]: the outbox events other services follow through `WatchChanges`.

pub mod domain;
pub mod events;
pub mod grpc;
pub mod search_keys;
pub mod store;

use std::sync::Arc;

use concord_platform::config::ServerConfig;
use concord_platform::policy::Policy;
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, DbOptions};
use concord_proto::registry::v1::registry_service_server::RegistryServiceServer;

pub use grpc::Registry;

/// Connects to the registry's database (running migrations) and builds the gRPC service,
/// enforcing `policy`, with the message size caps of `cfg`.
pub async fn build(
    database_url: &str,
    policy: Arc<Policy>,
    cfg: &ServerConfig,
    shutdown: Shutdown,
) -> anyhow::Result<(RegistryServiceServer<Registry>, Db)> {
    let db = Db::connect(database_url, store::MIGRATIONS, DbOptions::default()).await?;
    let registry = Registry::new(store::Store::new(db.clone()), policy, shutdown)
        .with_stream_limit(cfg.max_streams_per_agency);
    Ok((server(registry, cfg), db))
}

/// Wraps a registry in its tonic server with the configured caps.
pub fn server(registry: Registry, cfg: &ServerConfig) -> RegistryServiceServer<Registry> {
    RegistryServiceServer::new(registry)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes)
}
