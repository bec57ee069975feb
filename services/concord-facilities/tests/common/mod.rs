//! What the tests with the registry and the facilities service as real servers share.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::link::ServiceLink;
use concord_platform::policy::Policy;
use concord_platform::server::{Services, Shutdown};
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_testkit::TestServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Facilities = FacilitiesServiceClient<InterceptedService<Channel, HeaderCredentials>>;
pub use concord_testkit::people::Registry;

pub async fn registry() -> (TestServer, concord_testkit::TestDb) {
    let t = concord_testkit::database().await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let (svc, _db) =
        concord_registry::build(&t.url, Arc::new(Policy::embedded()), &cfg, shutdown.clone())
            .await
            .unwrap();
    (TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap(), t)
}

/// A facilities server on `url` following the registry at `registry_uri`.
pub async fn facilities(url: &str, registry_uri: &str) -> TestServer {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let link = ServiceLink {
        uri: registry_uri.to_string(),
        tls: None,
        principal: Some(relay_principal()),
    };
    let (svc, _db) = concord_facilities::build(
        url,
        Arc::new(Policy::embedded()),
        concord_facilities::domain::SeparationRules::default(),
        &cfg,
        Some(link),
        shutdown.clone(),
    )
    .await
    .unwrap();
    TestServer::start(Services::new().with(svc), trigger, shutdown, cfg).await.unwrap()
}

pub async fn connect(uri: &str) -> Channel {
    Channel::from_shared(uri.to_string()).unwrap().connect().await.unwrap()
}

pub use concord_testkit::people::person;

/// Registers `p` and admits them to al-hol.
pub async fn admit(r: &mut Registry, p: reg::Person, section: &str) -> String {
    admit_at(r, p, "al-hol", section).await
}

/// Registers `p` and admits them to `facility`.
pub async fn admit_at(r: &mut Registry, p: reg::Person, facility: &str, section: &str) -> String {
    concord_testkit::people::admit_at(r, p, facility, section).await.unwrap()
}

/// The facilities service as the registry knows it: a service with the custody_relay role.
pub fn relay_principal() -> Principal {
    concord_testkit::people::relay_principal("concord-facilities")
}
