//! What the end-to-end tests of the gateway share: parts of the suite started with
//! `concord::start`, partners calling at the gateway with their demo certificates, people.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use concord_platform::auth::Purpose;
use concord_platform::pki::DemoPki;
use concord_platform::server::{Shutdown, ShutdownTrigger};
use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type With = InterceptedService<Channel, Purpose>;

/// One `concord::start` of some targets.
pub struct Part {
    pub running: concord::Running,
    trigger: ShutdownTrigger,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Part {
    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle.await.unwrap().unwrap();
    }
}

pub async fn start(cfg: &concord::Config) -> Part {
    let (trigger, shutdown) = Shutdown::new();
    let (running, served) = concord::start(cfg, shutdown).await.unwrap();
    Part { running, trigger, handle: tokio::spawn(served) }
}

/// Settings for `target` in `dir`, every address chosen by the OS.
pub fn config(dir: &std::path::Path, target: concord::Target) -> concord::Config {
    concord::Config::for_test(dir.to_path_buf(), target)
}

/// A channel to `addr` as `agency`, with its demo certificate.
pub async fn channel(pki: &DemoPki, addr: std::net::SocketAddr, agency: &str) -> Channel {
    concord_testkit::tls_channel(pki, addr, agency).await.unwrap()
}

pub fn purpose() -> Purpose {
    Purpose("consular case review".into())
}

pub struct Partner {
    pub registry: RegistryServiceClient<With>,
    pub facilities: FacilitiesServiceClient<With>,
    pub requests: RequestsServiceClient<With>,
    pub gateway: GatewayServiceClient<With>,
}

/// Every API, reached at the gateway as `agency`.
pub async fn partner(pki: &DemoPki, gateway: std::net::SocketAddr, agency: &str) -> Partner {
    let ch = channel(pki, gateway, agency).await;
    Partner {
        registry: RegistryServiceClient::with_interceptor(ch.clone(), purpose()),
        facilities: FacilitiesServiceClient::with_interceptor(ch.clone(), purpose()),
        requests: RequestsServiceClient::with_interceptor(ch.clone(), purpose()),
        gateway: GatewayServiceClient::with_interceptor(ch, purpose()),
    }
}

pub fn person(name: &str, state: &str, year: i32, child: bool) -> reg::Person {
    reg::Person {
        names: vec![reg::PersonName {
            full_name: name.into(),
            kind: reg::NameKind::Primary as i32,
            script: "Latn".into(),
        }],
        sex: reg::Sex::Female as i32,
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
        category: if child {
            reg::PersonCategory::Child as i32
        } else {
            reg::PersonCategory::AdultFemale as i32
        },
        identity_confidence: reg::IdentityConfidence::Medium as i32,
        ..Default::default()
    }
}

/// Registers `p` and admits them to al-hol, through the gateway as the coordinator.
pub async fn admit(cell: &mut Partner, p: reg::Person) -> String {
    let p = cell
        .registry
        .create_person(reg::CreatePersonRequest { person: Some(p), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    cell.registry
        .admit_person(reg::AdmitPersonRequest {
            name: p.name.clone(),
            facility_id: "al-hol".into(),
            section_id: "annex".into(),
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

/// The camp al-hol, created through the gateway as its custodial authority.
pub async fn camp(camp: &mut Partner) {
    camp.facilities
        .create_facility(fac::CreateFacilityRequest {
            facility_id: "al-hol".into(),
            facility: Some(fac::Facility {
                display_name: "al-Hol".into(),
                kind: fac::FacilityKind::Camp as i32,
                location: Some(fac::Location {
                    latitude: 36.37,
                    longitude: 40.99,
                    region: String::new(),
                }),
                sections: vec![fac::Section {
                    section_id: "annex".into(),
                    display_name: "Annex".into(),
                    capacities: vec![fac::Capacity {
                        sex: fac::PlaceSex::Female as i32,
                        age_band: fac::AgeBand::Adult as i32,
                        places: 10,
                    }],
                }],
                ..Default::default()
            }),
            custodian_agency: "custodial-authority".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
}
