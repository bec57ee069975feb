//! The gateway as partners reach it: the suite assembled by `concord::start` with mutual TLS,
//! every service a real server behind the gateway. The services' APIs pass through under the
//! partner's own identity; case files come back complete, or within their deadline with the
//! parts the services gave and a status for each missing one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use concord_platform::pki::DemoPki;
use concord_proto::facilities::v1 as fac;
use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
use concord_proto::gateway::v1 as gw;
use concord_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
use concord_proto::registry::v1 as reg;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use concord_proto::requests::v1 as rq;
use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus::{self, NotServing, Serving};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use common::*;

fn case_file(person: &str, timeout: Duration) -> tonic::Request<gw::GetCaseFileRequest> {
    let mut r = tonic::Request::new(gw::GetCaseFileRequest { person: person.into() });
    r.set_timeout(timeout);
    r
}

async fn status(h: &mut HealthClient<Channel>, service: &str) -> i32 {
    h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
}

/// Polls the gateway's health of `service` until it is `want` (checks run every 2 s).
async fn wait_for(h: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    for _ in 0..100 {
        if status(h, service).await == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never became {want:?}");
}

fn parts(file: &gw::CaseFile) -> Vec<(i32, String)> {
    file.parts.iter().map(|p| (p.part, p.code.clone())).collect()
}

#[tokio::test]
async fn partners_reach_every_service_through_the_gateway_as_themselves_and_get_case_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), concord::Target::All);
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let all = start(&cfg).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let gateway = all.running.gateway.unwrap();
    let mut cell = partner(&pki, gateway, "coalition-coordinator").await;
    let mut camp = partner(&pki, gateway, "custodial-authority").await;
    let mut france = partner(&pki, gateway, "fr-mfa").await;
    let mut netherlands = partner(&pki, gateway, "nl-mfa").await;

    // Writes pass through to each service, under each partner's identity.
    common::camp(&mut camp).await;
    let mother = admit(&mut cell, person("Amina Haddad", "FR", 1994, false)).await;
    let daughter = admit(&mut cell, person("Maryam Haddad", "FR", 2018, true)).await;
    let dutch = admit(&mut cell, person("Eva de Vries", "NL", 1992, false)).await;
    cell.registry
        .create_relationship(reg::CreateRelationshipRequest {
            relationship: Some(reg::Relationship {
                person: daughter.clone(),
                related_person: mother.clone(),
                kind: reg::RelationshipKind::Parent as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // A request through the gateway: the requests service checks the subjects in the
    // registry as France, which passed through the gateway.
    let subject = |p: &str| rq::Subject { person: p.into(), ..Default::default() };
    let request = france
        .requests
        .create_request(rq::CreateRequestRequest {
            request: Some(rq::Request {
                r#type: rq::RequestType::Repatriation as i32,
                requested_state: "IQ".into(),
                custodial_authority: "custodial-authority".into(),
                receiving_state: "FR".into(),
                subjects: vec![subject(&mother), subject(&daughter)],
                summary: "Repatriation of a mother and her daughter".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // Reads pass through with the partner's scope: the Netherlands does not see France's
    // nationals, through the gateway as directly.
    let err = netherlands
        .registry
        .get_person(reg::GetPersonRequest { name: mother.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    netherlands.registry.get_person(reg::GetPersonRequest { name: dutch.clone() }).await.unwrap();
    // A stream passes through too.
    let mut watch = france
        .registry
        .watch_changes(reg::WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");

    // France's case file of the mother: every part, from the three services.
    let file = france
        .gateway
        .get_case_file(case_file(&mother, Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert!(file.parts.iter().all(|p| p.code == "OK"), "{:?}", file.parts);
    assert_eq!(file.parts.len(), 5);
    assert_eq!(file.person.as_ref().unwrap().name, mother);
    assert_eq!(
        file.family.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        vec![daughter.clone()]
    );
    assert!(!file.custody_events.is_empty(), "the admission");
    let facility = file.facility.as_ref().expect("the camp");
    assert_eq!(facility.name, "facilities/al-hol");
    assert_ne!(facility.security_status, 0);
    assert_eq!(
        file.requests.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        vec![request.name.clone()]
    );
    // The Dutch see no such person; nor does anyone without a purpose get anything.
    let err = netherlands
        .gateway
        .get_case_file(case_file(&mother, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut bare = GatewayServiceClient::new(channel(&pki, gateway, "fr-mfa").await);
    let err = bare.get_case_file(case_file(&mother, Duration::from_secs(5))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = france
        .gateway
        .get_case_file(case_file("someone", Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A subscription: France's changes from the registry and the requests service, in one
    // stream, scoped by each service, resumable from a cursor.
    let mut sub =
        france.gateway.subscribe(gw::SubscribeRequest::default()).await.unwrap().into_inner();
    let (seen, cursor) = drain(&mut sub).await;
    drop(sub);
    let about = |events: &[gw::SubscribeResponse], name: &str| {
        events.iter().filter(|e| e.event.as_ref().unwrap().resource_name == name).count()
    };
    assert!(about(&seen, &mother) > 0 && about(&seen, &daughter) > 0, "{seen:?}");
    assert_eq!(about(&seen, &dutch), 0, "not France's national");
    assert!(seen.iter().all(|e| e.service == "registry"), "a draft is no one's news yet");
    // Two new changes, one in each service; the resumed stream has them and nothing older.
    france
        .requests
        .transition_request(rq::TransitionRequestRequest {
            name: request.name.clone(),
            state: rq::RequestState::Submitted as i32,
            reason: "sent by note verbale".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sister = admit(&mut cell, person("Leila Haddad", "FR", 1990, false)).await;
    let mut sub = france
        .gateway
        .subscribe(gw::SubscribeRequest { cursor: cursor.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (resumed, _) = drain(&mut sub).await;
    drop(sub);
    assert!(about(&resumed, &sister) > 0, "{resumed:?}");
    assert_eq!(about(&resumed, &mother), 0, "nothing already seen: {resumed:?}");
    let submitted: Vec<_> = resumed
        .iter()
        .filter(|e| e.service == "requests")
        .map(|e| e.event.as_ref().unwrap().event_type.clone())
        .collect();
    assert_eq!(submitted, vec!["request.submitted".to_string()]);
    let err = france
        .gateway
        .subscribe(gw::SubscribeRequest { cursor: "not-ours".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Dashboards. France's: its nationals counted by the registry in France's scope, its
    // figures of requests, overdue tasks.
    let fr = france
        .gateway
        .get_state_dashboard(gw::GetStateDashboardRequest { name: "dashboards/states/FR".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(fr.parts.iter().all(|p| p.code == "OK"), "{:?}", fr.parts);
    assert_eq!(fr.nationals, 3, "the mother, her daughter and her sister");
    let counts =
        |v: &[reg::PersonCount]| v.iter().map(|c| (c.key.clone(), c.count)).collect::<Vec<_>>();
    assert_eq!(counts(&fr.by_custody_status), vec![("CUSTODY_STATUS_IN_CUSTODY".into(), 3)]);
    assert_eq!(counts(&fr.by_facility), vec![("al-hol".into(), 3)]);
    assert_eq!(
        counts(&fr.by_category),
        vec![("PERSON_CATEGORY_ADULT_FEMALE".into(), 2), ("PERSON_CATEGORY_CHILD".into(), 1)]
    );
    assert_eq!(fr.requests.as_ref().unwrap().state, "FR");
    // The Netherlands counts no French national, and may not read France's figures.
    let nl = netherlands
        .gateway
        .get_state_dashboard(gw::GetStateDashboardRequest { name: "dashboards/states/FR".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nl.nationals, 0);
    let figures = nl.parts.iter().find(|p| p.part == gw::Part::RequestStatistics as i32).unwrap();
    assert_eq!(figures.code, "PERMISSION_DENIED");
    assert!(nl.requests.is_none());
    // The camp's: capacity, security state, occupancy, nothing open.
    let camp_board = camp
        .gateway
        .get_facility_dashboard(gw::GetFacilityDashboardRequest {
            name: "dashboards/facilities/al-hol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(camp_board.parts.iter().all(|p| p.code == "OK"), "{:?}", camp_board.parts);
    assert_eq!(camp_board.capacity, 10);
    assert!(camp_board.facility.as_ref().unwrap().security_status != 0);
    assert!(camp_board.occupancy.is_some());
    assert!(camp_board.open_incidents.is_empty() && camp_board.pending_movements.is_empty());
    for bad in ["dashboards/facilities/", "facilities/al-hol"] {
        let err = camp
            .gateway
            .get_facility_dashboard(gw::GetFacilityDashboardRequest { name: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    let err = camp
        .gateway
        .get_facility_dashboard(gw::GetFacilityDashboardRequest {
            name: "dashboards/facilities/nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The JSON edge, as curl calls it (the agency's certificate, the protobuf JSON mapping), under the same identity and scope.
    let get_mother = format!(r#"{{"name": "{mother}"}}"#);
    let path = "/v1/concord.registry.v1.RegistryService/GetPerson";
    let (code, body) = curl(&pki, gateway, Some("fr-mfa"), path, Some(&get_mother)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], mother.as_str());
    assert_eq!(body["custodyStatus"], "CUSTODY_STATUS_IN_CUSTODY");
    assert_eq!(body["nationalities"][0]["state"], "FR");
    // HTTP/1.1 over TLS, all that many HTTP libraries speak: the same answer.
    let over_http1 = curl_over("1.1", &pki, gateway, Some("fr-mfa"), path, Some(&get_mother)).await;
    assert_eq!(over_http1, (200, body));
    let (code, body) = curl(&pki, gateway, Some("nl-mfa"), path, Some(&get_mother)).await;
    assert_eq!((code, body["status"].as_str()), (404, Some("NOT_FOUND")), "{body}");
    let (code, body) = curl(&pki, gateway, None, path, Some(&get_mother)).await;
    assert_eq!((code, body["status"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");
    let (code, body) = curl(&pki, gateway, Some("fr-mfa"), path, Some(r#"{"nmae": "x"}"#)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("nmae"), "{body}");
    let (code, body) = curl(
        &pki,
        gateway,
        Some("fr-mfa"),
        "/v1/concord.requests.v1.RequestsService/CreateRequest",
        Some(r#"{"request": {"type": "REQUEST_TYPE_REPATRIATION"}}"#),
    )
    .await;
    assert_eq!((code, body["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{body}");
    let violations = &body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap()["fieldViolations"];
    assert!(
        violations.as_array().unwrap().iter().any(|v| v["field"] == "request.summary"),
        "{body}"
    );
    let (code, body) = curl(
        &pki,
        gateway,
        Some("fr-mfa"),
        "/v1/concord.gateway.v1.GatewayService/GetCaseFile",
        Some(&format!(r#"{{"person": "{mother}"}}"#)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["parts"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(body["family"][0]["name"], daughter.as_str());
    let (code, body) = curl(&pki, gateway, Some("fr-mfa"), "/v1/openapi.json", None).await;
    assert_eq!((code, body["openapi"].as_str()), (200, Some("3.1.0")));
    assert!(body["paths"]["/v1/concord.gateway.v1.GatewayService/GetCaseFile"]["post"].is_object());
    // A stream over HTTP/JSON: JSON lines, read for two seconds.
    let lines = curl_lines(
        &pki,
        gateway,
        "fr-mfa",
        "/v1/concord.gateway.v1.GatewayService/Subscribe",
        r#"{"eventTypes": ["person.created"]}"#,
    )
    .await;
    let created: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"]["bookmark"] != true)
        .map(|l| l["event"]["resourceName"].as_str().unwrap())
        .collect();
    assert!(created.contains(&mother.as_str()) && !created.contains(&dutch.as_str()), "{lines:?}");
    assert!(lines.iter().all(|l| l["service"] == "registry" || l["service"] == "requests"));
    // A client stream over HTTP/JSON: an import as JSON lines, one row per line.
    let row = |name: &str, id: &str| {
        serde_json::json!({
            "person": {
                "names": [{"fullName": name, "kind": "NAME_KIND_PRIMARY", "script": "Latn"}],
                "sex": "SEX_FEMALE",
                "birthDate": {"year": 1991, "precision": "DATE_PRECISION_YEAR"},
                "nationalities": [{"state": "FR", "basis": "NATIONALITY_BASIS_CLAIMED"}],
                "category": "PERSON_CATEGORY_ADULT_FEMALE",
                "identityConfidence": "IDENTITY_CONFIDENCE_MEDIUM"
            },
            "requestId": id
        })
        .to_string()
    };
    let import = "/v1/concord.registry.v1.RegistryService/ImportPersons";
    let coordinator = Some("coalition-coordinator");
    let bad = format!("{}\n{{\"persno\": {{}}}}\n", row("Khadija Omar", "imp-1"));
    let (code, body) = curl(&pki, gateway, coordinator, import, Some(&bad)).await;
    assert_eq!((code, body["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("line 2"), "{body}");
    let rows = format!("{}\n\n{}\n", row("Khadija Omar", "imp-1"), row("Safiya Omar", "imp-2"));
    let (code, body) = curl(&pki, gateway, coordinator, import, Some(&rows)).await;
    assert_eq!((code, &body["createdCount"]), (200, &serde_json::json!("2")), "{body}");
    let (code, body) = curl(&pki, gateway, coordinator, import, Some(&rows)).await;
    assert_eq!(
        (code, &body["alreadyPresentCount"], body.get("createdCount")),
        (200, &serde_json::json!("2"), None),
        "the line before the bad one was not stored, and a retried import stores nothing: {body}"
    );

    // gRPC-Web, as a browser sends it (framed protobuf, trailers in the body).
    let framed = {
        use prost::Message;
        let m = reg::GetPersonRequest { name: mother.clone() }.encode_to_vec();
        let mut f = vec![0u8];
        f.extend((m.len() as u32).to_be_bytes());
        f.extend(m);
        f
    };
    let answer =
        grpc_web(&pki, gateway, "fr-mfa", "/concord.registry.v1.RegistryService/GetPerson", framed)
            .await;
    let len = u32::from_be_bytes(answer[1..5].try_into().unwrap()) as usize;
    let person = <reg::Person as prost::Message>::decode(&answer[5..5 + len]).unwrap();
    assert_eq!(person.name, mother);
    let trailer = String::from_utf8_lossy(&answer[5 + len + 5..]).to_string();
    assert!(answer[5 + len] == 0x80 && trailer.contains("grpc-status:0"), "{trailer}");

    // RPC metrics, as Prometheus scrapes them: the gateway's calls and the services' behind
    // (the process's: other tests in it count too).
    let metrics = scrape(all.running.metrics.unwrap()).await;
    for line in [
        "grpc_server_handled_total{grpc_service=\"concord.gateway.v1.GatewayService\",grpc_method=\"GetCaseFile\",grpc_code=\"OK\"}",
        "grpc_server_handled_total{grpc_service=\"concord.gateway.v1.GatewayService\",grpc_method=\"GetCaseFile\",grpc_code=\"NotFound\"}",
        "grpc_server_handled_total{grpc_service=\"concord.registry.v1.RegistryService\",grpc_method=\"GetPerson\",grpc_code=\"OK\"}",
        "grpc_server_handling_seconds_count{grpc_service=\"concord.facilities.v1.FacilitiesService\",grpc_method=\"GetFacility\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    all.stop().await;
}

/// `curl` over HTTP/2 (as `agency` or with no certificate) of the JSON edge: the HTTP status
/// and the JSON body. POST with `body`, else GET.
async fn curl(
    pki: &DemoPki,
    gateway: std::net::SocketAddr,
    agency: Option<&str>,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    curl_over("2", pki, gateway, agency, path, body).await
}

/// [`curl`] over HTTP `version` ("2" or "1.1"), checked to be the one spoken.
async fn curl_over(
    version: &str,
    pki: &DemoPki,
    gateway: std::net::SocketAddr,
    agency: Option<&str>,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        format!("--http{version}"),
        "--cacert".into(),
        pki.dir.join("ca.pem").display().to_string(),
        "-H".into(),
        "x-concord-purpose: consular case review".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-w".into(),
        "\n%{http_version} %{http_code}".into(),
    ];
    if let Some(a) = agency {
        let files = pki.agency(a);
        args.extend(["--cert".into(), files.cert.display().to_string()]);
        args.extend(["--key".into(), files.key.display().to_string()]);
    }
    if let Some(b) = body {
        args.extend(["-d".into(), b.to_string()]);
    }
    args.push(format!("https://localhost:{}{path}", gateway.port()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, last) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text} {out:?}"));
    let (spoken, code) = last.split_once(' ').unwrap_or_else(|| panic!("curl: {text} {out:?}"));
    assert_eq!(spoken, version, "the HTTP version spoken: {out:?}");
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text} {out:?}")),
    )
}

/// The JSON lines a streaming call answers within two seconds, with curl.
async fn curl_lines(
    pki: &DemoPki,
    gateway: std::net::SocketAddr,
    agency: &str,
    path: &str,
    body: &str,
) -> Vec<serde_json::Value> {
    let files = pki.agency(agency);
    let args: Vec<String> = vec![
        "-sS".into(),
        "-N".into(),
        "--max-time".into(),
        "2".into(),
        "--cacert".into(),
        pki.dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        files.cert.display().to_string(),
        "--key".into(),
        files.key.display().to_string(),
        "-H".into(),
        "x-concord-purpose: consular case review".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        body.to_string(),
        format!("https://localhost:{}{path}", gateway.port()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A gRPC-Web call with curl, as a browser makes it: the raw answer body.
async fn grpc_web(
    pki: &DemoPki,
    gateway: std::net::SocketAddr,
    agency: &str,
    path: &str,
    framed: Vec<u8>,
) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), framed).unwrap();
    let files = pki.agency(agency);
    let args: Vec<String> = vec![
        "-sS".into(),
        "--http2".into(),
        "--cacert".into(),
        pki.dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        files.cert.display().to_string(),
        "--key".into(),
        files.key.display().to_string(),
        "-H".into(),
        "content-type: application/grpc-web+proto".into(),
        "-H".into(),
        "x-grpc-web: 1".into(),
        "-H".into(),
        "x-concord-purpose: consular case review".into(),
        "--data-binary".into(),
        format!("@{}", file.path().display()),
        format!("https://localhost:{}{path}", gateway.port()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// The events of a subscription until it is quiet for a moment (bookmarks aside), and the
/// cursor to resume after the last message.
async fn drain(
    sub: &mut tonic::Streaming<gw::SubscribeResponse>,
) -> (Vec<gw::SubscribeResponse>, String) {
    let mut events = Vec::new();
    let mut cursor = String::new();
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(700), sub.message()).await
    {
        let e = m.event.as_ref().unwrap();
        cursor = e.cursor.clone();
        if !e.bookmark {
            events.push(m);
        }
    }
    (events, cursor)
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: concord\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

#[tokio::test]
async fn a_case_file_keeps_its_deadline_and_says_which_parts_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(&config(dir.path(), concord::Target::Registry)).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let registry_url = format!("https://localhost:{}", registry.running.registry.unwrap().port());
    let mut cfg = config(dir.path(), concord::Target::Requests);
    cfg.registry_url = Some(registry_url.clone());
    let requests = start(&cfg).await;
    // The facilities service is a black hole: it accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            kept.push(s);
        }
    });
    let mut cfg = config(dir.path(), concord::Target::Gateway);
    cfg.registry_url = Some(registry_url);
    cfg.facilities_url = Some(format!("https://localhost:{}", hole_addr.port()));
    cfg.requests_url =
        Some(format!("https://localhost:{}", requests.running.requests.unwrap().port()));
    let gateway = start(&cfg).await;
    let at = gateway.running.gateway.unwrap();
    let mut cell = partner(&pki, at, "coalition-coordinator").await;
    let mother = admit(&mut cell, person("Amina Haddad", "FR", 1994, false)).await;
    let mut france = partner(&pki, at, "fr-mfa").await;

    let budget = Duration::from_millis(800);
    let started = Instant::now();
    let file = france.gateway.get_case_file(case_file(&mother, budget)).await.unwrap().into_inner();
    let took = started.elapsed();
    assert!(took < budget + Duration::from_millis(400), "answered in {took:?}");
    assert_eq!(
        parts(&file),
        vec![
            (gw::Part::Person as i32, "OK".into()),
            (gw::Part::Family as i32, "OK".into()),
            (gw::Part::CustodyTimeline as i32, "OK".into()),
            (gw::Part::Facility as i32, "DEADLINE_EXCEEDED".into()),
            (gw::Part::Requests as i32, "OK".into()),
        ]
    );
    assert!(file.person.is_some() && file.facility.is_none());
    // A pass-through call to the black hole ends at its own deadline too. The gateway answers
    // 20 ms before it; this client keeps a timer of its own for the same deadline, which on
    // a loaded machine may still fire first (CANCELLED).
    let mut slow = tonic::Request::new(fac::ListFacilitiesRequest::default());
    slow.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = france.facilities.list_facilities(slow).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    // Without a deadline of the caller's, the gateway's own limit holds: the pass-through
    // gives up on the service it cannot even connect to (its handshake hangs) before that
    // limit, and says which service did not answer.
    let mut cfg = config(dir.path(), concord::Target::Gateway);
    cfg.server.request_timeout = Duration::from_millis(300);
    cfg.registry_url =
        Some(format!("https://localhost:{}", registry.running.registry.unwrap().port()));
    cfg.facilities_url = Some(format!("https://localhost:{}", hole_addr.port()));
    let limited = start(&cfg).await;
    let mut hurried = partner(&pki, limited.running.gateway.unwrap(), "fr-mfa").await;
    let started = Instant::now();
    let err = hurried
        .facilities
        .list_facilities(fac::ListFacilitiesRequest::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("the facilities service did not answer"), "{err:?}");
    limited.stop().await;

    // Health at the gateway says which services behind it answer.
    let mut health = HealthClient::new(channel(&pki, at, "fr-mfa").await);
    assert_eq!(status(&mut health, "").await, Serving as i32);
    wait_for(&mut health, "concord.registry.v1.RegistryService", Serving).await;
    wait_for(&mut health, "concord.requests.v1.RequestsService", Serving).await;
    wait_for(&mut health, "concord.facilities.v1.FacilitiesService", NotServing).await;

    // The requests service stops: its part is UNAVAILABLE, the rest still comes.
    requests.stop().await;
    wait_for(&mut health, "concord.requests.v1.RequestsService", NotServing).await;
    assert_eq!(status(&mut health, "").await, Serving as i32, "the gateway still answers");
    let file = france.gateway.get_case_file(case_file(&mother, budget)).await.unwrap().into_inner();
    let requests_part = file.parts.iter().find(|p| p.part == gw::Part::Requests as i32).unwrap();
    assert_eq!(
        (requests_part.code.as_str(), requests_part.service.as_str()),
        ("UNAVAILABLE", "requests")
    );
    assert_eq!(file.parts[0].code, "OK");
    // And the registry: no person, no case file.
    registry.stop().await;
    let err = france.gateway.get_case_file(case_file(&mother, budget)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    gateway.stop().await;
    held.abort();
}

/// `Ok(message)` as its debug text, or the error's code: what the matrix compares.
fn outcome<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<String, Code> {
    r.map(|r| format!("{:?}", r.into_inner())).map_err(|s| s.code())
}

#[tokio::test]
async fn every_kind_of_partner_gets_through_the_gateway_what_it_gets_directly() {
    // The gateway's own RPCs join the matrix (their expectations are below).
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(
        concord_proto::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let declared: std::collections::BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "GatewayService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    let covered: std::collections::BTreeSet<String> =
        ["GetCaseFile", "GetStateDashboard", "GetFacilityDashboard", "Subscribe"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(declared, covered, "every gateway RPC joins the matrix");

    let dir = tempfile::tempdir().unwrap();
    let all = start(&config(dir.path(), concord::Target::All)).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let run = &all.running;
    let gateway = run.gateway.unwrap();
    let mut camp = partner(&pki, gateway, "custodial-authority").await;
    common::camp(&mut camp).await;
    let mut cell = partner(&pki, gateway, "coalition-coordinator").await;
    let mother = admit(&mut cell, person("Amina Haddad", "FR", 1994, false)).await;
    let dutch = admit(&mut cell, person("Eva de Vries", "NL", 1992, false)).await;
    let mut france = partner(&pki, gateway, "fr-mfa").await;
    let request = france
        .requests
        .create_request(rq::CreateRequestRequest {
            request: Some(rq::Request {
                r#type: rq::RequestType::ConsularAccess as i32,
                requested_state: "IQ".into(),
                custodial_authority: "custodial-authority".into(),
                subjects: vec![rq::Subject { person: mother.clone(), ..Default::default() }],
                summary: "Consular visit".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    france
        .requests
        .transition_request(rq::TransitionRequestRequest {
            name: request.clone(),
            state: rq::RequestState::Submitted as i32,
            reason: "sent".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let agencies = [
        "coalition-coordinator",
        "fr-mfa",
        "nl-mfa",
        "fr-prosecutor",
        "custodial-authority",
        "humanitarian-monitor",
    ];
    let mut compared = 0;
    for agency in agencies {
        let via = partner(&pki, gateway, agency).await;
        let direct = Partner {
            registry: RegistryServiceClient::with_interceptor(
                channel(&pki, run.registry.unwrap(), agency).await,
                common::purpose(),
            ),
            facilities: FacilitiesServiceClient::with_interceptor(
                channel(&pki, run.facilities.unwrap(), agency).await,
                common::purpose(),
            ),
            requests: RequestsServiceClient::with_interceptor(
                channel(&pki, run.requests.unwrap(), agency).await,
                common::purpose(),
            ),
            gateway: via.gateway.clone(),
        };
        // The same call both ways; the same answer.
        macro_rules! same {
            ($label:expr, $client:ident . $svc:ident . $rpc:ident ($msg:expr)) => {{
                let d = outcome(direct.$svc.clone().$rpc($msg).await);
                let v = outcome(via.$svc.clone().$rpc($msg).await);
                assert_eq!(d, v, "{agency} {}: direct vs through the gateway", $label);
                compared += 1;
                d
            }};
        }
        let person_of = |n: &str| reg::GetPersonRequest { name: n.to_string() };
        let get_mother = same!("GetPerson own", c.registry.get_person(person_of(&mother)));
        let _ = same!("GetPerson other", c.registry.get_person(person_of(&dutch)));
        let _ = same!("ListPersons", c.registry.list_persons(reg::ListPersonsRequest::default()));
        let _ = same!(
            "SummarizePersons",
            c.registry.summarize_persons(reg::SummarizePersonsRequest {
                filter: String::new(),
                group_by: reg::PersonGrouping::CustodyStatus as i32,
            })
        );
        let _ = same!(
            "ListCustodyEvents",
            c.registry.list_custody_events(reg::ListCustodyEventsRequest {
                parent: mother.clone(),
                ..Default::default()
            })
        );
        let facility = same!(
            "GetFacility",
            c.facilities.get_facility(fac::GetFacilityRequest { name: "facilities/al-hol".into() })
        );
        let _ = same!(
            "GetOccupancy",
            c.facilities
                .get_occupancy(fac::GetOccupancyRequest { name: "facilities/al-hol".into() })
        );
        let _ = same!("ListRequests", c.requests.list_requests(rq::ListRequestsRequest::default()));
        let _ = same!(
            "GetRequest",
            c.requests.get_request(rq::GetRequestRequest { name: request.clone() })
        );
        let figures = same!(
            "GetStateStatistics",
            c.requests.get_state_statistics(rq::GetStateStatisticsRequest {
                name: "statistics/FR".into()
            })
        );
        // A write: the same outcome (its result differs only by its new id).
        let note = rq::CreateNoteRequest {
            parent: request.clone(),
            note: Some(rq::Note {
                reference: "2026/77".into(),
                addressee: "IQ".into(),
                subject: "Visit".into(),
                body: "Dates proposed.".into(),
                send_time: Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: 0 }),
                ..Default::default()
            }),
            request_id: String::new(),
        };
        let d = direct
            .requests
            .clone()
            .create_note(note.clone())
            .await
            .map(|_| ())
            .map_err(|s| s.code());
        let v = via.requests.clone().create_note(note).await.map(|_| ()).map_err(|s| s.code());
        assert_eq!(d, v, "{agency} CreateNote");

        // The gateway's own RPCs answer as the services behind them decide.
        let mut g = via.gateway.clone();
        let file = g.get_case_file(case_file(&mother, Duration::from_secs(5))).await;
        assert_eq!(
            file.as_ref().map(|_| ()).map_err(|s| s.code()),
            get_mother.map(|_| ()),
            "{agency} GetCaseFile"
        );
        let board = g
            .get_state_dashboard(gw::GetStateDashboardRequest {
                name: "dashboards/states/FR".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let part =
            board.parts.iter().find(|p| p.part == gw::Part::RequestStatistics as i32).unwrap();
        let expected = figures.as_ref().map_or_else(
            |c| concord_platform::http_json::code_name(*c).to_string(),
            |_| "OK".into(),
        );
        assert_eq!(part.code, expected, "{agency} GetStateDashboard");
        let board = g
            .get_facility_dashboard(gw::GetFacilityDashboardRequest {
                name: "dashboards/facilities/al-hol".into(),
            })
            .await;
        assert_eq!(
            board.map(|_| ()).map_err(|s| s.code()),
            facility.map(|_| ()),
            "{agency} GetFacilityDashboard"
        );
        let direct_watch = {
            let r =
                direct.registry.clone().watch_changes(reg::WatchChangesRequest::default()).await;
            let q = direct.requests.clone().watch_changes(rq::WatchChangesRequest::default()).await;
            r.and(q.map(|_| ())).map(|_| ()).map_err(|s| s.code())
        };
        let sub =
            g.subscribe(gw::SubscribeRequest::default()).await.map(|_| ()).map_err(|s| s.code());
        assert_eq!(sub, direct_watch, "{agency} Subscribe");
    }
    assert_eq!(compared, agencies.len() * 10);
    all.stop().await;
}

/// A TCP relay to `to` that can cut the connections it carries and turn the next ones away:
/// a service restarting, as the gateway sees it.
struct Relay {
    addr: std::net::SocketAddr,
    turn_away: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let turn_away = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let away = turn_away.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if away
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, turn_away, cut, task }
    }

    /// Cuts every connection, and turns the next `n` away.
    async fn restart(&self, n: usize) {
        self.turn_away.store(n, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|c| *c += 1);
        // The gateway's connection sees its end before the next call.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn reads_and_writes_with_a_request_id_are_sent_again_when_the_service_could_not_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(&config(dir.path(), concord::Target::Registry)).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let relay = Relay::start(registry.running.registry.unwrap()).await;
    let mut cfg = config(dir.path(), concord::Target::Gateway);
    cfg.registry_url = Some(format!("https://localhost:{}", relay.addr.port()));
    // The gateway's health checks share the registry's channel: after the first, none may
    // take a connection the relay turns away for the calls under test.
    cfg.backend_check_interval = Duration::from_secs(3600);
    let gateway = start(&cfg).await;
    let mut cell = partner(&pki, gateway.running.gateway.unwrap(), "coalition-coordinator").await;
    let create = |id: &str| reg::CreatePersonRequest {
        person: Some(person("Amina Haddad", "FR", 1994, false)),
        request_id: id.into(),
    };
    let p = cell.registry.create_person(create("a-1")).await.unwrap().into_inner();
    let get = || reg::GetPersonRequest { name: p.name.clone() };

    // The registry's connection is cut and its first reconnection turned away: the read
    // reaches it the second time, within the call.
    relay.restart(1).await;
    let again = cell.registry.get_person(get()).await.unwrap().into_inner();
    assert_eq!(again.name, p.name);
    assert_eq!(relay.turn_away.load(std::sync::atomic::Ordering::SeqCst), 0, "turned away once");

    // Turned away twice: the read is sent twice, not more, and the partner is told which
    // service could not be reached.
    relay.restart(2).await;
    let err = cell.registry.get_person(get()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("registry"), "{err:?}");
    assert_eq!(relay.turn_away.load(std::sync::atomic::Ordering::SeqCst), 0, "two attempts");

    let listed = |mut c: reg::registry_service_client::RegistryServiceClient<_>| async move {
        let r = c.list_persons(reg::ListPersonsRequest::default()).await.unwrap();
        r.into_inner().persons.into_iter().map(|p| p.name).collect::<Vec<_>>()
    };

    // A write with a request id is safe to repeat: it is sent again, and stored once.
    relay.restart(1).await;
    let second = cell.registry.create_person(create("a-2")).await.unwrap().into_inner();
    assert_eq!(relay.turn_away.load(std::sync::atomic::Ordering::SeqCst), 0, "turned away once");
    assert_ne!(second.name, p.name);
    let replayed = cell.registry.create_person(create("a-2")).await.unwrap().into_inner();
    assert_eq!(replayed.name, second.name, "the request id was claimed once");
    assert_eq!(listed(cell.registry.clone()).await.len(), 2);

    // The same for a custody change, whose request id is in its transition.
    relay.restart(1).await;
    let admitted = cell
        .registry
        .admit_person(reg::AdmitPersonRequest {
            name: p.name.clone(),
            facility_id: "al-hol".into(),
            section_id: String::new(),
            transition: Some(reg::CustodyTransition {
                reason: "intake".into(),
                source: "camp registration".into(),
                request_id: "ad-1".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admitted.facility_id, "al-hol");
    assert_eq!(relay.turn_away.load(std::sync::atomic::Ordering::SeqCst), 0, "turned away once");

    // A write without one is sent once: the partner decides whether to send it again.
    relay.restart(1).await;
    let err = cell.registry.create_person(create("")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("registry"), "{err:?}");
    assert_eq!(listed(cell.registry.clone()).await.len(), 2, "the refused write stored nothing");
    cell.registry.create_person(create("")).await.unwrap();
    assert_eq!(listed(cell.registry.clone()).await.len(), 3);

    gateway.stop().await;
    relay.task.abort();
    registry.stop().await;
}

#[tokio::test]
async fn a_passed_through_watch_ends_when_the_gateway_drains_and_resumes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(&config(dir.path(), concord::Target::Registry)).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let mut cfg = config(dir.path(), concord::Target::Gateway);
    cfg.registry_url =
        Some(format!("https://localhost:{}", registry.running.registry.unwrap().port()));
    // Without the stream ending, the drain would wait this long for it.
    cfg.server.drain_timeout = Duration::from_secs(30);
    let gateway = start(&cfg).await;
    let other = start(&cfg).await;
    let mut cell = partner(&pki, gateway.running.gateway.unwrap(), "coalition-coordinator").await;
    let create = |name: &str| reg::CreatePersonRequest {
        person: Some(person(name, "FR", 1994, false)),
        request_id: String::new(),
    };
    cell.registry.create_person(create("Amina Haddad")).await.unwrap();
    let mut watch = cell
        .registry
        .watch_changes(reg::WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = next_change(&mut watch).await;
    assert_eq!(first.event_type, "person.created", "{first:?}");
    let cursor = first.cursor;

    // The gateway drains: the stream ends at once with UNAVAILABLE, and the drain is done.
    let started = Instant::now();
    let stopping = tokio::spawn(gateway.stop());
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(s) => break Some(s),
            }
        }
    })
    .await
    .expect("the stream ends with the drain");
    let end = end.expect("with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("resume from the last cursor"), "{end:?}");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "drained in {:?}", started.elapsed());

    // The partner resumes from its cursor at another gateway and misses nothing.
    let mut cell = partner(&pki, other.running.gateway.unwrap(), "coalition-coordinator").await;
    let second = cell.registry.create_person(create("Maryam Haddad")).await.unwrap().into_inner();
    let mut resumed = cell
        .registry
        .watch_changes(reg::WatchChangesRequest { cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let event = next_change(&mut resumed).await;
    assert_eq!(event.resource_name, second.name, "{event:?}");
    other.stop().await;
    registry.stop().await;
}

/// The next change of a registry watch, bookmarks aside.
async fn next_change(
    watch: &mut tonic::Streaming<reg::WatchChangesResponse>,
) -> concord_proto::r#type::v1::ChangeEvent {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
        let e =
            m.expect("a change within 5 s").unwrap().expect("the stream goes on").event.unwrap();
        if !e.bookmark {
            return e;
        }
    }
}
