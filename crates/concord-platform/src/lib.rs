//! What every Concord service shares, so that no service repeats it.
//!
//! # Layout
//! - [`config`]: configuration from flags and environment (12-factor).
//! - [`telemetry`]: tracing subscriber (human or JSON), OTLP export, W3C tracecontext.
//! - [`server`]: server assembly: health, reflection, tower layers, graceful shutdown.
//! - [`layers`]: the tower layers every server stacks (trace, admission, identity).
//! - [`client`]: channels to other services, with tracecontext injected on every call.
//! - [`error`]: the error model; domain errors become `Status` here and only here.
//! - [`access`]: one call's authorization: grant, scope, redaction, purpose, audit entries.
//! - [`policy`]: the declarative authorization policy and its schema.
//! - [`pki`]: mutual TLS: agency directory, certificate authentication, the demo CA.
//! - [`audit`]: the append-only, hash-chained audit log and its verification.
//! - [`auth`]: the caller's principal and scope; authenticators and trusted forwarding.
//! - [`oidc`]: OIDC bearer token authentication (issuer, audience, expiry, signature).
//! - [`storage`]: SQLite (default) or PostgreSQL, migrations, transactions, sqlx errors.
//! - [`outbox`]: the transactional outbox and the resumable `WatchChanges` stream.
//! - [`idempotency`]: request ids stored in the same transaction as the write.
//! - [`filter`]: AIP-160 filter parsing and translation to SQL.
//! - [`named_enum`]: domain enums stored and converted by name.
//! - [`quota`]: per-agency rate limits and stream caps.
//! - [`paging`]: AIP-158 page sizes and page tokens.
//! - [`sql`]: a small SQL builder with `$n` placeholders that both dialects accept.
//! - [`time`]: timestamps as microseconds since the epoch, and their protobuf form.

pub mod access;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod fields;
pub mod filter;
pub mod http_json;
pub mod idempotency;
pub mod layers;
pub mod link;
pub mod metrics;
pub mod named_enum;
pub mod oidc;
pub mod outbox;
pub mod paging;
pub mod pki;
pub mod policy;
pub mod quota;
pub mod server;
pub mod sql;
pub mod storage;
pub mod telemetry;
pub mod time;

pub use error::{Error, FieldViolation, Result};
