//! People in a test registry: what tests of the services that follow the registry share.

use concord_platform::auth::{HeaderCredentials, Principal};
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A registry client calling as a test principal.
pub type Registry = RegistryServiceClient<InterceptedService<Channel, HeaderCredentials>>;

/// A person of `state` born in `year` (a child after 2008, else an adult woman).
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

/// Registers `p` and admits them to `facility` (the client must be allowed both).
pub async fn admit_at(
    r: &mut Registry,
    p: reg::Person,
    facility: &str,
    section: &str,
) -> anyhow::Result<String> {
    let p = r
        .create_person(reg::CreatePersonRequest { person: Some(p), request_id: String::new() })
        .await?
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
    .await?;
    Ok(p.name)
}

/// A service as the registry knows it: `name`, with the custody_relay role.
pub fn relay_principal(name: &str) -> Principal {
    Principal { roles: vec!["custody_relay".into()], ..Principal::service(name) }
}
