//! The JSON edge over HTTP/1.1, as it is reached where TLS ends in front of the gateway: a
//! plaintext gateway whose services are all down still answers JSON, with the HTTP status of
//! the gRPC code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_gateway::Options;
use concord_platform::link::ServiceLink;
use concord_platform::server::Shutdown;
use concord_testkit::TestServer;

fn with_origins(origins: impl IntoIterator<Item = String>) -> Options {
    Options { cors_origins: origins.into_iter().collect(), ..Options::default() }
}

fn nowhere() -> ServiceLink {
    ServiceLink { uri: "http://127.0.0.1:9".into(), tls: None, principal: None }
}

#[tokio::test]
async fn json_over_http1_gets_json_answers_whatever_is_down() {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let links =
        concord_gateway::Links { registry: nowhere(), facilities: nowhere(), requests: nowhere() };
    let services =
        concord_gateway::services(&links, &cfg, &Options::default(), shutdown.clone()).unwrap();
    let server = TestServer::start(services, trigger, shutdown, cfg).await.unwrap();
    let url = format!("{}/v1/concord.gateway.v1.GatewayService/GetCaseFile", server.uri());
    let run = move |args: Vec<String>| async move {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl").args(&args).output()
        })
        .await
        .unwrap()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("{text} {out:?}"));
        (code.trim().to_string(), serde_json::from_str::<serde_json::Value>(body).unwrap())
    };
    let args = |purpose: bool| {
        let mut a: Vec<String> =
            ["-sS", "--http1.1", "-w", "\n%{http_code}", "-H", "content-type: application/json"]
                .into_iter()
                .map(String::from)
                .collect();
        for h in [
            "x-concord-agency: fr-mfa",
            "x-concord-agency-kind: state_ministry",
            "x-concord-state: FR",
        ] {
            a.extend(["-H".into(), h.into()]);
        }
        if purpose {
            a.extend(["-H".into(), "x-concord-purpose: consular case review".into()]);
        }
        a.extend([
            "-d".into(),
            r#"{"person": "persons/0192d6c4-0000-7000-8000-000000000001"}"#.into(),
            url.clone(),
        ]);
        a
    };
    let (code, body) = run(args(true)).await;
    assert_eq!((code.as_str(), body["status"].as_str()), ("503", Some("UNAVAILABLE")), "{body}");
    let (code, body) = run(args(false)).await;
    assert_eq!(
        (code.as_str(), body["status"].as_str()),
        ("400", Some("INVALID_ARGUMENT")),
        "{body}"
    );
    // The OpenAPI document over HTTP/1.1 too.
    let out = tokio::task::spawn_blocking({
        let url = format!("{}/v1/openapi.json", server.uri());
        move || std::process::Command::new("curl").args(["-sS", "--http1.1", &url]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

/// The status and the headers (lower-cased names) curl got for `args`.
async fn heads(args: Vec<String>) -> (u16, Vec<(String, String)>) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-"])
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status.unwrap_or_else(|| panic!("{text} {out:?}")), headers)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn browsers_on_the_listed_origins_may_call_and_no_others() {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let links =
        concord_gateway::Links { registry: nowhere(), facilities: nowhere(), requests: nowhere() };
    let origins = ["https://partner.example".to_string()];
    let services =
        concord_gateway::services(&links, &cfg, &with_origins(origins), shutdown.clone()).unwrap();
    let server = TestServer::start(services, trigger, shutdown, cfg).await.unwrap();
    let url = format!("{}/v1/concord.gateway.v1.GatewayService/GetCaseFile", server.uri());
    let preflight = |origin: &str| {
        vec![
            "-X".into(),
            "OPTIONS".into(),
            "-H".into(),
            format!("origin: {origin}"),
            "-H".into(),
            "access-control-request-method: POST".into(),
            "-H".into(),
            "access-control-request-headers: content-type,x-grpc-web,x-concord-purpose".into(),
            url.clone(),
        ]
    };

    // A preflight (no credentials) from a listed origin is answered before authentication.
    let (status, h) = heads(preflight("https://partner.example")).await;
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some("https://partner.example"));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
    for name in ["content-type", "x-grpc-web", "x-concord-purpose", "authorization"] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    // Another origin is not allowed: the browser stops there.
    let (_, h) = heads(preflight("https://elsewhere.example")).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None, "{h:?}");

    // The call itself: its answer names the origin and lets the script read the gRPC status.
    let mut call: Vec<String> = [
        "-H",
        "origin: https://partner.example",
        "-H",
        "content-type: application/json",
        "-H",
        "x-concord-agency: fr-mfa",
        "-H",
        "x-concord-agency-kind: state_ministry",
        "-H",
        "x-concord-state: FR",
        "-H",
        "x-concord-purpose: consular case review",
        "-d",
        r#"{"person": "persons/0192d6c4-0000-7000-8000-000000000001"}"#,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    call.push(url.clone());
    let (status, h) = heads(call).await;
    assert_eq!(status, 503, "every service is down: {h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some("https://partner.example"));
    let exposed = header(&h, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{exposed}");
}

#[tokio::test]
async fn without_listed_origins_a_preflight_is_not_answered_and_bad_origins_are_refused() {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let links =
        concord_gateway::Links { registry: nowhere(), facilities: nowhere(), requests: nowhere() };
    let bad = concord_gateway::services(
        &links,
        &cfg,
        &with_origins(["partner.example".to_string()]),
        shutdown.clone(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(bad.to_string().contains("'partner.example'"), "{bad}");
    let services =
        concord_gateway::services(&links, &cfg, &Options::default(), shutdown.clone()).unwrap();
    let server = TestServer::start(services, trigger, shutdown, cfg).await.unwrap();
    let url = format!("{}/v1/concord.gateway.v1.GatewayService/GetCaseFile", server.uri());
    let (status, h) = heads(vec![
        "-X".into(),
        "OPTIONS".into(),
        "-H".into(),
        "origin: https://partner.example".into(),
        "-H".into(),
        "access-control-request-method: POST".into(),
        url.clone(),
    ])
    .await;
    // The preflight is not answered as one: it meets authentication like any call, and
    // nothing in the answer lets a browser go on.
    let cors = |h: &[(String, String)]| h.iter().any(|(k, _)| k.starts_with("access-control-"));
    assert_eq!(status, 401, "{h:?}");
    assert!(!cors(&h), "{h:?}");
    // A call a script on that origin makes anyway reaches the gateway (curl is no browser),
    // but its answer does not let the script read it.
    let (status, h) = heads(vec![
        "-H".into(),
        "origin: https://partner.example".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "x-concord-agency: fr-mfa".into(),
        "-H".into(),
        "x-concord-agency-kind: state_ministry".into(),
        "-H".into(),
        "x-concord-state: FR".into(),
        "-H".into(),
        "x-concord-purpose: consular case review".into(),
        "-d".into(),
        r#"{"person": "persons/0192d6c4-0000-7000-8000-000000000001"}"#.into(),
        url,
    ])
    .await;
    assert_eq!(status, 503, "every service is down: {h:?}");
    assert!(!cors(&h), "{h:?}");
}

#[tokio::test]
async fn a_refused_call_waiting_for_its_body_holds_no_place_of_the_concurrency_limit() {
    use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_platform::config::ServerConfig {
        max_concurrent_requests: 1,
        ..concord_testkit::server_config()
    };
    let links =
        concord_gateway::Links { registry: nowhere(), facilities: nowhere(), requests: nowhere() };
    let services =
        concord_gateway::services(&links, &cfg, &Options::default(), shutdown.clone()).unwrap();
    let server = TestServer::start(services, trigger, shutdown, cfg).await.unwrap();

    // A call with no credentials whose stream of messages never ends: it is refused, after
    // the gateway has waited a moment for the rest of its body.
    let mut anonymous = RegistryServiceClient::connect(server.uri()).await.unwrap();
    let refused = tokio::spawn(async move {
        anonymous.import_persons(futures::stream::pending()).await.map(|_| ()).unwrap_err()
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;

    // Meanwhile the one place of the limit is free for anyone else.
    let url = format!("{}/v1/openapi.json", server.uri());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    let status = refused.await.unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    server.stop().await.unwrap();
}
