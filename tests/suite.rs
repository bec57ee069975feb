//! End-to-end tests: the suite assembled by `concord::start`, as `concord serve` runs it (mutual
//! TLS with the demo PKI it creates on first start), on ports chosen by the OS, over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use concord_platform::auth::{HeaderCredentials, Purpose};
use concord_platform::config::TelemetryConfig;
use concord_platform::pki::{Agency, DemoPki};
use concord_platform::server::Shutdown;
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use futures::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

struct Suite {
    running: concord::Running,
    trigger: concord_platform::server::ShutdownTrigger,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pki: DemoPki,
    db: concord_testkit::TestDb,
    _dir: tempfile::TempDir,
}

async fn suite(drain_grace: Duration) -> Suite {
    suite_with(drain_grace, |_| {}).await
}

/// The suite as `concord serve` runs it, in a fresh data folder, with `tweak` applied to its
/// configuration.
async fn suite_with(drain_grace: Duration, tweak: impl FnOnce(&mut concord::Config)) -> Suite {
    let db = concord_testkit::database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = concord::Config::with_data_dir(dir.path().to_path_buf());
    cfg.registry_addr = "127.0.0.1:0".parse().unwrap();
    cfg.facilities_addr = "127.0.0.1:0".parse().unwrap();
    cfg.requests_addr = "127.0.0.1:0".parse().unwrap();
    cfg.gateway_addr = "127.0.0.1:0".parse().unwrap();
    cfg.registry_database_url = Some(db.url.clone());
    cfg.server.drain_grace = drain_grace;
    tweak(&mut cfg);
    let (trigger, shutdown) = Shutdown::new();
    let (running, served) = concord::start(&cfg, shutdown).await.unwrap();
    let pki = DemoPki { dir: cfg.demo_pki_dir(), created: false };
    Suite { running, trigger, handle: tokio::spawn(served), pki, db, _dir: dir }
}

impl Suite {
    fn uri(&self) -> String {
        format!("https://{}", self.running.registry.unwrap())
    }

    /// A TLS channel presenting `agency`'s demo certificate, or none.
    async fn channel(&self, agency: Option<&str>) -> Channel {
        let tls = match agency {
            Some(a) => self.pki.agency(a).client_config("localhost").unwrap(),
            None => ClientTlsConfig::new().domain_name("localhost").ca_certificate(
                Certificate::from_pem(std::fs::read(self.pki.dir.join("ca.pem")).unwrap()),
            ),
        };
        Channel::from_shared(self.uri()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
    }

    /// A registry client as `agency`, with a purpose.
    async fn client(
        &self,
        agency: &str,
    ) -> RegistryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Purpose>>
    {
        RegistryServiceClient::with_interceptor(
            self.channel(Some(agency)).await,
            Purpose("end-to-end test".into()),
        )
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.handle.await.unwrap().unwrap();
    }
}

fn person(state: &str) -> pb::Person {
    pb::Person {
        names: vec![pb::PersonName {
            full_name: "Amina Haddad".into(),
            kind: pb::NameKind::Primary as i32,
            script: "Latn".into(),
        }],
        sex: pb::Sex::Female as i32,
        nationalities: vec![pb::Nationality {
            state: state.into(),
            basis: pb::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        category: pb::PersonCategory::AdultFemale as i32,
        identity_confidence: pb::IdentityConfidence::Medium as i32,
        biometric_references: vec![pb::BiometricReference {
            system: "coalition-biometrics".into(),
            reference: "bio-17".into(),
            modality: pb::BiometricModality::Fingerprint as i32,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn serve_answers_health_and_traces_errors_with_the_callers_trace_id() {
    // Install the real subscriber so spans carry OpenTelemetry ids, as in production.
    let _guard = concord_platform::telemetry::init(
        "e2e",
        &TelemetryConfig { log_filter: "warn".into(), ..Default::default() },
    )
    .unwrap();
    let s = suite(Duration::ZERO).await;

    // Health answers over TLS without a client certificate, for probes.
    let mut health = HealthClient::new(s.channel(None).await);
    let status = health
        .check(HealthCheckRequest { service: "concord.registry.v1.RegistryService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // The facilities service runs in the same process on its own address, behind the same
    // mutual TLS and policy.
    let ch =
        concord_testkit::tls_channel(&s.pki, s.running.facilities.unwrap(), "humanitarian-monitor")
            .await
            .unwrap();
    let mut f =
        concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient::new(ch);
    let listed = f
        .list_facilities(concord_proto::facilities::v1::ListFacilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.facilities.is_empty());

    // The facilities service follows the registry over mutual TLS as its own service
    // identity: a person admitted in the registry is counted in the facility's occupancy.
    use concord_proto::facilities::v1 as fpb;
    let ch =
        concord_testkit::tls_channel(&s.pki, s.running.facilities.unwrap(), "custodial-authority")
            .await
            .unwrap();
    let mut guard = fpb::facilities_service_client::FacilitiesServiceClient::with_interceptor(
        ch,
        Purpose("end-to-end test".into()),
    );
    guard
        .create_facility(fpb::CreateFacilityRequest {
            facility_id: "roj".into(),
            facility: Some(fpb::Facility {
                display_name: "Roj camp".into(),
                kind: fpb::FacilityKind::Camp as i32,
                location: Some(fpb::Location {
                    latitude: 36.85,
                    longitude: 42.12,
                    region: String::new(),
                }),
                sections: vec![fpb::Section { section_id: "main".into(), ..Default::default() }],
                ..Default::default()
            }),
            custodian_agency: "custodial-authority".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut cell = s.client("coalition-coordinator").await;
    let admitted = cell
        .create_person(pb::CreatePersonRequest {
            person: Some(person("NL")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    cell.admit_person(pb::AdmitPersonRequest {
        name: admitted.name.clone(),
        facility_id: "roj".into(),
        section_id: "main".into(),
        transition: Some(pb::CustodyTransition {
            reason: "arrived".into(),
            source: "camp registration".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let mut counted = 0;
    for _ in 0..200 {
        counted = guard
            .get_occupancy(fpb::GetOccupancyRequest { name: "facilities/roj".into() })
            .await
            .unwrap()
            .into_inner()
            .total;
        if counted == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counted, 1, "the projection followed the registry over mTLS");

    // And records in the registry what its users do, as its own identity with the
    // custody_relay role: a roll call that misses her marks her UNACCOUNTED.
    let h = guard
        .record_headcount(fpb::RecordHeadcountRequest {
            parent: "facilities/roj".into(),
            headcount: Some(fpb::Headcount {
                reporter: "evening roll call".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.missing, vec![admitted.name.clone()]);
    guard
        .mark_missing_unaccounted(fpb::MarkMissingUnaccountedRequest {
            name: h.name,
            reason: "not at the evening roll call".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut status = 0;
    for _ in 0..200 {
        status = cell
            .get_person(pb::GetPersonRequest { name: admitted.name.clone() })
            .await
            .unwrap()
            .into_inner()
            .custody_status;
        if status == pb::CustodyStatus::Unaccounted as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, pb::CustodyStatus::Unaccounted as i32, "the relay reached the registry");

    let mut c = s.client("coalition-coordinator").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::GetPersonRequest { name: "persons/nope".into() });
    req.metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    let err = c.get_person(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        info.metadata.get("trace_id").map(String::as_str),
        Some(trace_id),
        "the server continued the caller's trace"
    );

    // Reflection describes the error details too, so grpcurl prints them as fields.
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(s.channel(None).await);
    for symbol in
        ["google.rpc.BadRequest", "google.rpc.ErrorInfo", "concord.registry.v1.RegistryService"]
    {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.next().await.unwrap().unwrap().message_response.unwrap();
        assert!(
            matches!(answer, MessageResponse::FileDescriptorResponse(_)),
            "{symbol}: {answer:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn shutdown_reports_not_serving_then_drains_and_ends_watch_streams() {
    let s = suite_with(Duration::from_millis(600), |c| {
        c.health_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let probe = format!("http://{}", s.running.health.unwrap());
    let probe = Channel::from_shared(probe).unwrap().connect().await.unwrap();
    let mut c = s.client("coalition-coordinator").await;
    let mut watch = c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    assert!(watch.next().await.unwrap().unwrap().event.unwrap().bookmark);

    s.trigger.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut health = HealthClient::new(s.channel(None).await);
    let status = health
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    // Kubernetes' probes, in plaintext, see the same.
    let status = HealthClient::new(probe)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    // Still answering during the grace period, so in-flight work and late requests succeed.
    c.list_persons(pb::ListPersonsRequest::default()).await.unwrap();

    // The watch stream ends by itself, and the server stops within the drain timeout.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = watch.next().await {
            if m.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "watch stream ended on shutdown");
    tokio::time::timeout(Duration::from_secs(10), s.handle).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn certificates_name_agencies_and_only_the_gateway_may_forward_a_principal() {
    // fr-mfa is left out of the directory: its certificate still verifies, but it is refused.
    let dir = tempfile::tempdir().unwrap();
    let agencies: Vec<Agency> =
        concord_platform::pki::demo_agencies().into_iter().filter(|a| a.id != "fr-mfa").collect();
    let mut text = String::new();
    for a in &agencies {
        text.push_str(&format!(
            "[[agency]]\nid = {:?}\nkind = {:?}\n{}roles = {:?}\nfacilities = {:?}\n\n",
            a.id,
            a.kind,
            a.state.as_ref().map(|s| format!("state = {s:?}\n")).unwrap_or_default(),
            a.roles,
            a.facilities
        ));
    }
    let directory = dir.path().join("agencies.toml");
    std::fs::write(&directory, text).unwrap();
    let s = suite_with(Duration::ZERO, |c| c.agencies = Some(directory.clone())).await;

    let mut coordinator = s.client("coalition-coordinator").await;
    let nl = coordinator
        .create_person(pb::CreatePersonRequest {
            person: Some(person("NL")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        nl.redacted_fields,
        vec!["biometric_references"],
        "the coordinator does not read biometrics, even of people it registered"
    );

    // No client certificate and no token: refused.
    let mut anonymous = RegistryServiceClient::with_interceptor(
        s.channel(None).await,
        Purpose("end-to-end test".into()),
    );
    let err = anonymous.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A certificate of an agency removed from the directory: refused, naming it.
    let mut removed = s.client("fr-mfa").await;
    let err = removed.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("fr-mfa"), "{}", err.message());

    // A certificate from another CA does not get past the handshake.
    let other = tempfile::tempdir().unwrap();
    let foreign = concord_platform::pki::ensure_demo(
        &other.path().join("pki"),
        &["localhost"],
        &concord_platform::pki::demo_agencies(),
    )
    .unwrap();
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(std::fs::read(s.pki.dir.join("ca.pem")).unwrap()))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(foreign.agency("coalition-coordinator").cert).unwrap(),
            std::fs::read(foreign.agency("coalition-coordinator").key).unwrap(),
        ));
    let refused = async {
        let ch = Channel::from_shared(s.uri()).unwrap().tls_config(tls).unwrap().connect().await?;
        let mut c = RegistryServiceClient::with_interceptor(ch, Purpose("x".into()));
        c.list_persons(pb::ListPersonsRequest::default()).await.map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(refused.await.is_err(), "a certificate from another CA is refused");

    // A partner forging a forwarded principal (to pass for the coordinator): refused.
    let mut forged = RegistryServiceClient::with_interceptor(
        s.channel(Some("nl-mfa")).await,
        HeaderCredentials::new(concord_testkit::coordinator()).with_purpose("forgery"),
    );
    let err = forged.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("not trusted to forward"), "{}", err.message());

    // The gateway forwards the partner it authenticated, and the partner's scope applies.
    let mut gateway = RegistryServiceClient::with_interceptor(
        s.channel(Some("concord-gateway")).await,
        HeaderCredentials::new(concord_testkit::ministry("DE")).with_purpose("consular review"),
    );
    let seen = gateway.list_persons(pb::ListPersonsRequest::default()).await.unwrap().into_inner();
    assert!(seen.persons.is_empty(), "Germany sees no Dutch national");
    let mut netherlands = s.client("nl-mfa").await;
    let seen = netherlands.list_persons(pb::ListPersonsRequest::default()).await.unwrap();
    assert_eq!(seen.into_inner().persons.len(), 1);

    // Without a purpose, personal data is not served.
    let mut no_purpose = RegistryServiceClient::new(s.channel(Some("nl-mfa")).await);
    let err = no_purpose.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Every one of these calls is in the audit log, chained and intact, with who and why.
    let db = concord_platform::storage::Db::connect(
        &s.db.url,
        concord_platform::storage::Migrations::NONE,
        Default::default(),
    )
    .await
    .unwrap();
    let entries = concord_platform::audit::export(&db, 0, 1000).await.unwrap();
    let forwarded = entries
        .iter()
        .find(|e| e.entry.agency == "de-mfa via concord-gateway")
        .expect("the forwarded call is audited with its forwarder");
    assert_eq!(forwarded.entry.purpose, "consular review");
    assert!(entries
        .iter()
        .any(|e| e.entry.action == "CreatePerson" && e.entry.agency == "coalition-coordinator"));
    assert!(matches!(
        concord_platform::audit::verify(&db, None).await.unwrap(),
        concord_platform::audit::Verdict::Intact(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn with_oidc_only_a_valid_bearer_token_gets_in() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("idp.pem");
    std::fs::write(&key_file, kp.public_key_pem()).unwrap();
    let s = suite_with(Duration::ZERO, |c| {
        c.oidc_issuer = Some("https://idp.example.se".into());
        c.oidc_key_files = vec![key_file.clone()];
    })
    .await;
    let channel = s.channel(None).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.example.se", "aud": "concord", "sub": "analyst-3", "exp": now + 600,
        "agency": "se-mfa", "agency_kind": "state_ministry", "state": "SE",
    });
    let sign = |claims: &serde_json::Value, key: &rcgen::KeyPair| {
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            claims,
            &encoding,
        )
        .unwrap()
    };
    let call = |token: Option<String>| {
        let mut c = RegistryServiceClient::new(channel.clone());
        async move {
            let mut req = tonic::Request::new(pb::ListPersonsRequest::default());
            req.metadata_mut()
                .insert("x-concord-purpose", "audit of Swedish cases".parse().unwrap());
            if let Some(t) = token {
                req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            c.list_persons(req).await
        }
    };
    call(Some(sign(&claims, &kp))).await.unwrap();

    let mut expired = claims.clone();
    expired["exp"] = serde_json::json!(now - 3600);
    let mut audience = claims.clone();
    audience["aud"] = serde_json::json!("another-system");
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    for (what, token) in [
        ("expired", Some(sign(&expired, &kp))),
        ("wrong audience", Some(sign(&audience, &kp))),
        ("wrongly signed", Some(sign(&claims, &stranger))),
        ("missing", None),
    ] {
        let err = call(token).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err:?}");
    }

    // A token naming the gateway's agency does not make its holder a forwarder: only the
    // gateway's certificate does.
    let mut gateway_claims = claims.clone();
    gateway_claims["agency"] = serde_json::json!("concord-gateway");
    gateway_claims["agency_kind"] = serde_json::json!("service");
    gateway_claims.as_object_mut().unwrap().remove("state");
    let token = sign(&gateway_claims, &kp);
    let mut req = tonic::Request::new(pb::ListPersonsRequest::default());
    HeaderCredentials::new(concord_testkit::coordinator()).with_purpose("forgery").apply(&mut req);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = RegistryServiceClient::new(channel.clone()).list_persons(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    s.stop().await;
}
