//! What the tests with the registry and the facilities service as real servers share.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use concord_facilities::occupancy::RegistryLink;
use concord_platform::auth::{HeaderCredentials, Principal};
use concord_platform::policy::Policy;
use concord_platform::server::{Services, Shutdown};
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_testkit::TestServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Facilities = FacilitiesServiceClient<InterceptedService<Channel, HeaderCredentials>>;
pub type Registry = RegistryServiceClient<InterceptedService<Channel, HeaderCredentials>>;

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
    let link = RegistryLink {
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

pub fn person(name: &str, state: &str, sex: reg::Sex, year: i32) -> reg::Person {
    reg::Person {
        names: vec![reg::PersonName { full_name: name.into(), ..Default::default() }],
        sex: sex as i32,
        birth_date: Some(concord_proto::r#type::v1::ApproximateDate {
            year,
            precision: concord_proto::r#type::v1::DatePrecision::Year as i32,
            ..Default::default()
        }),
        nationalities: vec![reg::Nationality {
            state: state.into(),
            basis: reg::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        category: if year > 2008 {
            reg::PersonCategory::Child as i32
        } else {
            reg::PersonCategory::AdultFemale as i32
        },
        identity_confidence: reg::IdentityConfidence::Low as i32,
        ..Default::default()
    }
}

/// Registers `p` and admits them to al-hol.
pub async fn admit(r: &mut Registry, p: reg::Person, section: &str) -> String {
    admit_at(r, p, "al-hol", section).await
}

/// Registers `p` and admits them to `facility`.
pub async fn admit_at(r: &mut Registry, p: reg::Person, facility: &str, section: &str) -> String {
    let p = r
        .create_person(reg::CreatePersonRequest { person: Some(p), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    r.admit_person(reg::AdmitPersonRequest {
        name: p.name.clone(),
        facility_id: facility.into(),
        section_id: section.into(),
        transition: Some(reg::CustodyTransition {
            reason: "intake".into(),
            source: "camp registration".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    p.name
}

/// The facilities service as the registry knows it: a service with the custody_relay role.
pub fn relay_principal() -> Principal {
    Principal { roles: vec!["custody_relay".into()], ..Principal::service("concord-facilities") }
}
