//! The gateway: the one address partner agencies call.
//!
//! # Layout
//! - [`proxy`]: the services' own APIs passed through, undecoded, under the partner's
//!   identity.
//! - [`casefile`]: the case file of a person, composed in parallel under one deadline.
//! - [`dashboards`]: a state's and a facility's dashboards, composed the same way.
//! - [`grpc`]: the gateway's own RPCs (`concord.gateway.v1`).
//! - [`health`]: the health of each service behind, as the gateway sees it.
//! - [`subscribe`]: a partner's changes from the registry and the requests service, as one
//!   resumable stream.
//! - [`json`] and [`openapi`]: every unary RPC over HTTP/JSON, and its OpenAPI document;
//!   gRPC-Web is served on the same port for browsers.
//!
//! The gateway keeps no data and decides no authorization: each service behind it decides
//! for every call what the partner may see and do, and audits it.

pub mod casefile;
pub mod dashboards;
pub mod grpc;
pub mod health;
pub mod json;
pub mod openapi;
pub mod proxy;
pub mod subscribe;

use concord_platform::config::ServerConfig;
use concord_platform::link::ServiceLink;
use concord_platform::server::{Services, Shutdown};
use concord_proto::gateway::v1::gateway_service_server::GatewayServiceServer;
use proxy::Upstream;

pub use grpc::Gateway;

/// How the gateway reaches each service, as itself (a trusted forwarder) over mutual TLS.
#[derive(Debug, Clone)]
pub struct Links {
    /// The registry.
    pub registry: ServiceLink,
    /// The facilities service.
    pub facilities: ServiceLink,
    /// The requests service.
    pub requests: ServiceLink,
}

/// What the gateway is told beyond the server settings every service shares.
#[derive(Debug, Clone)]
pub struct Options {
    /// Origins of the browser applications allowed to call it (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// How often each service behind it is checked for its health.
    pub check_every: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { cors_origins: Vec::new(), check_every: health::EVERY }
    }
}

/// The gateway's services: its own and the three passed through, with health following
/// the services behind until `shutdown`, and CORS for browser applications served from
/// `options.cors_origins`. Channels connect on first use and reconnect by themselves, so the
/// gateway starts whatever is up behind it.
pub fn services(
    links: &Links,
    cfg: &ServerConfig,
    options: &Options,
    shutdown: Shutdown,
) -> anyhow::Result<Services> {
    let cors = concord_platform::layers::cors(&options.cors_origins)?;
    let check_every = options.check_every;
    let backends = casefile::Backends {
        registry: links.registry.channel()?,
        facilities: links.facilities.channel()?,
        requests: links.requests.channel()?,
    };
    let gateway = GatewayServiceServer::new(Gateway::new(
        backends.clone(),
        cfg.request_timeout,
        shutdown.clone(),
    ))
    .max_decoding_message_size(cfg.max_message_bytes)
    .max_encoding_message_size(cfg.max_message_bytes);
    let upstreams = vec![
        (proxy::Registry::NAME, backends.registry.clone()),
        (proxy::Facilities::NAME, backends.facilities.clone()),
        (proxy::Requests::NAME, backends.requests.clone()),
    ];
    // The contracts, decoded once for the pass-through and the JSON edge.
    let contracts = prost_reflect::DescriptorPool::decode(concord_proto::FILE_DESCRIPTOR_SET)?;
    let (max, s, c) = (cfg.request_timeout, &shutdown, &contracts);
    let registry = proxy::Proxy::<proxy::Registry>::new(backends.registry, max, s.clone(), c)?;
    let facilities =
        proxy::Proxy::<proxy::Facilities>::new(backends.facilities, max, s.clone(), c)?;
    let requests = proxy::Proxy::<proxy::Requests>::new(backends.requests, max, s.clone(), c)?;
    let edge = json::JsonEdge::new(
        contracts,
        max,
        vec![
            (grpc::NAME, json::Inner::new(gateway.clone())),
            (proxy::Registry::NAME, json::Inner::new(registry.clone())),
            (proxy::Facilities::NAME, json::Inner::new(facilities.clone())),
            (proxy::Requests::NAME, json::Inner::new(requests.clone())),
        ],
    )?;
    Ok(Services::new()
        .with_health_hook(move |reporter| {
            tokio::spawn(health::follow(upstreams, check_every, reporter, shutdown));
        })
        .with_http1_and_grpc_web()
        .with_cors(cors)
        .with(gateway)
        .with(registry)
        .with(facilities)
        .with(requests)
        .with(edge))
}
