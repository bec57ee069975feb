//! One trace follows a call across the suite: a case file asked of the gateway produces one
//! trace spanning the gateway, the registry, the facilities and the requests services (and
//! their database work), exported over OTLP to a collector that this test runs in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use concord_platform::config::TelemetryConfig;
use concord_platform::pki::DemoPki;
use concord_proto::gateway::v1 as gw;
use concord_proto::registry::v1 as reg;
use concord_proto::requests::v1 as rq;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// A minimal OTLP/gRPC trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                kept.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_file_is_one_trace_across_the_gateway_and_every_service() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream_incoming(listener))
            .await
    });
    let telemetry = concord_platform::telemetry::init(
        "concord",
        &TelemetryConfig {
            log_filter: "warn".into(),
            otlp_endpoint: Some(endpoint),
            ..Default::default()
        },
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let all = start(&config(dir.path(), concord::Target::All)).await;
    let pki = DemoPki { dir: dir.path().join("pki"), created: false };
    let gateway = all.running.gateway.unwrap();
    camp(&mut partner(&pki, gateway, "custodial-authority").await).await;
    let mut cell = partner(&pki, gateway, "coalition-coordinator").await;
    let mother = admit(&mut cell, person("Amina Haddad", "FR", 1994, false)).await;
    let mut france = partner(&pki, gateway, "fr-mfa").await;
    france
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
        .unwrap();
    let file = france
        .gateway
        .get_case_file(gw::GetCaseFileRequest { person: mother.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(file.parts.iter().all(|p| p.code == "OK"), "{:?}", file.parts);
    // A call passed through is one trace too.
    france.registry.get_person(reg::GetPersonRequest { name: mother }).await.unwrap();
    telemetry.shutdown();

    let spans = collector.0.lock().unwrap().clone();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>();
    let root = named("/concord.gateway.v1.GatewayService/GetCaseFile");
    assert_eq!(
        root.len(),
        1,
        "one case file span: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let root = &root[0];
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    // Each service's server span is a child of the gateway's.
    for service_span in [
        "/concord.registry.v1.RegistryService/GetPerson",
        "/concord.registry.v1.RegistryService/ListRelationships",
        "/concord.registry.v1.RegistryService/ListCustodyEvents",
        "/concord.facilities.v1.FacilitiesService/GetFacility",
        "/concord.requests.v1.RequestsService/ListRequests",
    ] {
        let s = trace
            .iter()
            .find(|s| s.name == service_span)
            .unwrap_or_else(|| panic!("{service_span} in the trace {}", hex(&root.trace_id)));
        assert_eq!(hex(&s.parent_span_id), hex(&root.span_id), "{service_span}'s parent");
        // And each read of personal data waits for its audit write (database work), a
        // child of its call (facility data is not personal, and not audited per read).
        if service_span.contains("Facilities") {
            continue;
        }
        assert!(
            trace.iter().any(|d| d.name == "audit.record" && d.parent_span_id == s.span_id),
            "{service_span}: its audit write in the trace"
        );
    }
    // The pass-through: the registry's span of GetPerson is a child of the gateway's span of
    // the same call, in a trace of their own.
    let through: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "/concord.registry.v1.RegistryService/GetPerson"
                && s.trace_id != root.trace_id
        })
        .collect();
    assert!(
        through
            .iter()
            .any(|child| through.iter().any(|parent| child.parent_span_id == parent.span_id)),
        "the registry's span under the gateway's: {through:?}"
    );
    all.stop().await;
}

/// Accepted connections of `listener`, for tonic.
fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}
