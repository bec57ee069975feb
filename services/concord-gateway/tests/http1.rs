//! The JSON edge over HTTP/1.1, as it is reached where TLS ends in front of the gateway: a
//! plaintext gateway whose services are all down still answers JSON, with the HTTP status of
//! the gRPC code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_platform::link::ServiceLink;
use concord_platform::server::Shutdown;
use concord_testkit::TestServer;

fn nowhere() -> ServiceLink {
    ServiceLink { uri: "http://127.0.0.1:9".into(), tls: None, principal: None }
}

#[tokio::test]
async fn json_over_http1_gets_json_answers_whatever_is_down() {
    let (trigger, shutdown) = Shutdown::new();
    let cfg = concord_testkit::server_config();
    let links =
        concord_gateway::Links { registry: nowhere(), facilities: nowhere(), requests: nowhere() };
    let services = concord_gateway::services(&links, &cfg, shutdown.clone()).unwrap();
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
