//! End-to-end tests: the suite assembled by `concord::start`, as `concord serve` runs it, on
//! ports chosen by the OS, called over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use concord_platform::auth::HeaderCredentials;
use concord_platform::config::TelemetryConfig;
use concord_platform::server::Shutdown;
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

type Suite = (
    concord::Running,
    concord_platform::server::ShutdownTrigger,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    concord_testkit::TestDb,
);

async fn suite(drain_grace: Duration) -> Suite {
    suite_with(drain_grace, |_| {}).await
}

/// The suite as `concord serve` runs it, with `tweak` applied to its configuration.
async fn suite_with(drain_grace: Duration, tweak: impl FnOnce(&mut concord::Config)) -> Suite {
    let db = concord_testkit::database().await.unwrap();
    let cfg = concord::Config {
        target: concord::Target::All,
        data_dir: std::env::temp_dir(),
        registry_addr: "127.0.0.1:0".parse().unwrap(),
        registry_database_url: Some(db.url.clone()),
        auth: concord::AuthMode::Dev,
        oidc_issuer: None,
        oidc_audience: "concord".into(),
        oidc_key_files: vec![],
        server: concord_platform::config::ServerConfig { drain_grace, ..Default::default() },
        telemetry: TelemetryConfig::default(),
    };
    let mut cfg = cfg;
    tweak(&mut cfg);
    let (trigger, shutdown) = Shutdown::new();
    let (running, served) = concord::start(&cfg, shutdown).await.unwrap();
    (running, trigger, tokio::spawn(served), db)
}

#[tokio::test]
async fn serve_answers_health_and_traces_errors_with_the_callers_trace_id() {
    // Install the real subscriber so spans carry OpenTelemetry ids, as in production.
    let _guard = concord_platform::telemetry::init(
        "e2e",
        &TelemetryConfig { log_filter: "warn".into(), ..Default::default() },
    )
    .unwrap();
    let (running, trigger, handle, _db) = suite(Duration::ZERO).await;
    let uri = format!("http://{}", running.registry.unwrap());
    let channel = Channel::from_shared(uri).unwrap().connect().await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest { service: "concord.registry.v1.RegistryService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut c = RegistryServiceClient::with_interceptor(
        channel,
        HeaderCredentials(concord_testkit::coordinator()),
    );
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
    let channel = Channel::from_shared(format!("http://{}", running.registry.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
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

    trigger.trigger();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_reports_not_serving_then_drains_and_ends_watch_streams() {
    let (running, trigger, handle, _db) = suite(Duration::from_millis(600)).await;
    let uri = format!("http://{}", running.registry.unwrap());
    let channel = Channel::from_shared(uri).unwrap().connect().await.unwrap();
    let mut c = RegistryServiceClient::with_interceptor(
        channel.clone(),
        HeaderCredentials(concord_testkit::coordinator()),
    );
    let mut watch = c.watch_changes(pb::WatchChangesRequest::default()).await.unwrap().into_inner();
    assert!(watch.next().await.unwrap().unwrap().event.unwrap().bookmark);

    trigger.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
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
    tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn with_oidc_only_a_valid_bearer_token_gets_in() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("idp.pem");
    std::fs::write(&key_file, kp.public_key_pem()).unwrap();
    let (running, trigger, handle, _db) = suite_with(Duration::ZERO, |c| {
        c.auth = concord::AuthMode::Oidc;
        c.oidc_issuer = Some("https://idp.example.se".into());
        c.oidc_key_files = vec![key_file.clone()];
    })
    .await;
    let uri = format!("http://{}", running.registry.unwrap());
    let channel = Channel::from_shared(uri).unwrap().connect().await.unwrap();
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({
        "iss": "https://idp.example.se", "aud": "concord", "sub": "analyst-3", "exp": exp,
        "agency": "se-mfa", "agency_kind": "state_ministry", "state": "SE",
    });
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &encoding,
    )
    .unwrap();

    let mut c = RegistryServiceClient::new(channel.clone());
    let mut req = tonic::Request::new(pb::ListPersonsRequest::default());
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.list_persons(req).await.unwrap();

    // Forged development metadata is not an identity here.
    let mut forged = RegistryServiceClient::with_interceptor(
        channel.clone(),
        HeaderCredentials(concord_testkit::coordinator()),
    );
    let err = forged.list_persons(pb::ListPersonsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Health still answers without credentials, for probes.
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();

    trigger.trigger();
    handle.await.unwrap().unwrap();
}
