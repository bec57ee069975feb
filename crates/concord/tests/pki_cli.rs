//! `concord pki demo` as an operator runs it before deploying the services apart (each in its
//! own pod, with its own data folder): one PKI that every service shares.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use concord_platform::auth::Purpose;
use concord_platform::pki::DemoPki;
use concord_platform::server::Shutdown;
use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as req;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;

fn pki_demo(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["pki", "demo", "--dir"])
        .arg(dir)
        .args(["--extra-names", "concord.partners.example"])
        .output()
        .unwrap()
}

fn printed(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `target` with its own data folder under `root`, on the shared PKI in `pki`, presenting
/// `identity`'s certificate when it calls another service.
fn config(
    root: &Path,
    pki: &DemoPki,
    target: concord::Target,
    identity: Option<&str>,
) -> concord::Config {
    let mut cfg = concord::Config::for_test(root.join(format!("{target:?}")), target);
    let server = pki.server();
    cfg.tls_cert = Some(server.cert);
    cfg.tls_key = Some(server.key);
    cfg.tls_client_ca = Some(server.ca);
    cfg.agencies = Some(pki.directory());
    if let Some(identity) = identity {
        let me = pki.agency(identity);
        cfg.service_cert = Some(me.cert);
        cfg.service_key = Some(me.key);
    }
    cfg
}

#[tokio::test]
async fn one_demo_pki_serves_every_service_run_apart() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("pki");
    let made = printed(pki_demo(&dir));
    assert!(made.contains("concord-requests-headless.concord.svc.cluster.local"), "{made}");
    assert!(made.contains("concord.partners.example"), "{made}");
    assert!(made.contains("create secret generic concord-tls"), "{made}");
    assert!(made.contains("create secret tls concord-gateway-client"), "{made}");
    let pki = DemoPki { dir: dir.clone(), created: false };
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    // A second run keeps what is there: the CA the deployed services trust stays the same.
    assert!(printed(pki_demo(&dir)).contains("kept as it is"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    // A folder holding something else is refused, and nothing is left beside it.
    let other = root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let refused = pki_demo(&other);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"));
    // Nor is a file where the folder should be.
    let file = root.path().join("file");
    std::fs::write(&file, "mine").unwrap();
    let refused = pki_demo(&file);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a folder"));
    std::fs::remove_file(&file).unwrap();
    let left: Vec<_> =
        std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");

    // Each service in its own process's shape: its own data folder (no demo PKI of its own),
    // the others reached by URL, as in Kubernetes.
    let (trigger, shutdown) = Shutdown::new();
    let mut tasks = Vec::new();
    let start = |cfg: concord::Config| {
        let shutdown = shutdown.clone();
        async move {
            let (running, served) = concord::start(&cfg, shutdown).await.unwrap();
            (running, served)
        }
    };
    let url =
        |a: Option<std::net::SocketAddr>| Some(format!("https://localhost:{}", a.unwrap().port()));
    let (registry, served) =
        start(config(root.path(), &pki, concord::Target::Registry, None)).await;
    tasks.push(tokio::spawn(served));
    let mut cfg =
        config(root.path(), &pki, concord::Target::Facilities, Some("concord-facilities"));
    cfg.registry_url = url(registry.registry);
    let (facilities, served) = start(cfg).await;
    tasks.push(tokio::spawn(served));
    let mut cfg = config(root.path(), &pki, concord::Target::Requests, Some("concord-requests"));
    cfg.registry_url = url(registry.registry);
    let (requests, served) = start(cfg).await;
    tasks.push(tokio::spawn(served));
    let mut cfg = config(root.path(), &pki, concord::Target::Gateway, Some("concord-gateway"));
    cfg.registry_url = url(registry.registry);
    cfg.facilities_url = url(facilities.facilities);
    cfg.requests_url = url(requests.requests);
    let (gateway, served) = start(cfg).await;
    tasks.push(tokio::spawn(served));
    for target in ["Registry", "Facilities", "Requests", "Gateway"] {
        let own = root.path().join(target).join("pki");
        assert!(!own.exists(), "{target} made a demo PKI of its own");
    }

    // A partner with the PKI's credentials reaches every service through the gateway: the
    // gateway's client certificate and the services' server certificate share the CA.
    let ch = concord_testkit::tls_channel(&pki, gateway.gateway.unwrap(), "fr-mfa").await.unwrap();
    let purpose = || Purpose("consular case review".into());
    RegistryServiceClient::with_interceptor(ch.clone(), purpose())
        .list_persons(reg::ListPersonsRequest::default())
        .await
        .expect("the registry through the gateway");
    FacilitiesServiceClient::with_interceptor(ch.clone(), purpose())
        .list_facilities(fac::ListFacilitiesRequest::default())
        .await
        .expect("the facilities service through the gateway");
    let mut requests = RequestsServiceClient::with_interceptor(ch, purpose());
    requests
        .list_requests(req::ListRequestsRequest::default())
        .await
        .expect("the requests service through the gateway");
    // The requests service checks a request's subjects with the registry, with its own
    // certificate: the registry answers (no such person), it does not fail to be reached.
    let nobody = format!("persons/{}", uuid::Uuid::now_v7());
    let err = requests
        .create_request(req::CreateRequestRequest {
            request: Some(req::Request {
                r#type: req::RequestType::ConsularAccess as i32,
                requested_state: "IQ".into(),
                custodial_authority: "custodial-authority".into(),
                subjects: vec![req::Subject { person: nobody, ..Default::default() }],
                summary: "Consular visit".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("request.subjects[0].person"), "{err:?}");

    trigger.trigger();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}
