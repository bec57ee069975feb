//! The OpenAPI document of the JSON edge, made from the contracts' descriptors: one `POST`
//! operation per RPC (client streams take JSON lines, server streams answer JSON lines), and
//! a schema per message in the protobuf JSON mapping.

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Value};

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The schema of a well-known type in the JSON mapping, if `m` is one.
fn well_known(m: &MessageDescriptor) -> Option<Value> {
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "Comma-separated lowerCamelCase field paths."})
        }
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "format": "int64"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "format": "byte"}),
        _ => return None,
    })
}

fn kind_schema(kind: &Kind, todo: &mut Vec<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => well_known(m).unwrap_or_else(|| {
            todo.push(m.clone());
            reference(m.full_name())
        }),
    }
}

fn field_schema(f: &FieldDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    if f.is_map() {
        if let Kind::Message(entry) = f.kind() {
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": kind_schema(&value.kind(), todo)});
        }
    }
    let one = kind_schema(&f.kind(), todo);
    if f.is_list() {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

fn message_schema(m: &MessageDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    let properties: serde_json::Map<String, Value> =
        m.fields().map(|f| (f.json_name().to_string(), field_schema(&f, todo))).collect();
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// The document for the RPCs of `services`.
pub fn document(pool: &DescriptorPool, services: &[&str]) -> anyhow::Result<Value> {
    let mut paths = serde_json::Map::new();
    let mut todo = Vec::new();
    for name in services {
        let svc = pool
            .get_service_by_name(name)
            .ok_or_else(|| anyhow::anyhow!("no descriptor of {name}"))?;
        for m in svc.methods() {
            let body = if m.is_client_streaming() {
                json!({
                    "description": "A stream: one message per line (JSON lines), at most 4 MiB in all.",
                    "required": true,
                    "content": {"application/x-ndjson": {"schema": reference(m.input().full_name())}}
                })
            } else {
                json!({
                    "required": true,
                    "content": {"application/json": {"schema": reference(m.input().full_name())}}
                })
            };
            let answer = if m.is_server_streaming() {
                json!({
                    "description": "A stream: one message per line (JSON lines); a last line {\"error\": google.rpc.Status} if it ends with an error.",
                    "content": {"application/x-ndjson": {"schema": reference(m.output().full_name())}}
                })
            } else {
                json!({
                    "description": "OK",
                    "content": {"application/json": {"schema": reference(m.output().full_name())}}
                })
            };
            todo.push(m.input());
            todo.push(m.output());
            paths.insert(
                format!("/v1/{name}/{}", m.name()),
                json!({"post": {
                    "operationId": format!("{}_{}", svc.name(), m.name()),
                    "tags": [name],
                    "parameters": [{
                        "name": "x-concord-purpose", "in": "header", "required": false,
                        "description": "Why the caller calls (recorded in the audit log); required on every call that touches personal data (INVALID_ARGUMENT without it).",
                        "schema": {"type": "string"}
                    }, {
                        "name": "grpc-timeout", "in": "header", "required": false,
                        "description": "The call's deadline, for example \"500m\" (milliseconds) or \"2S\".",
                        "schema": {"type": "string"}
                    }],
                    "requestBody": body,
                    "responses": {
                        "200": answer,
                        "default": {
                            "description": "An error: google.rpc.Status, with the HTTP status of its code.",
                            "content": {"application/json": {"schema": reference("google.rpc.Status")}}
                        }
                    }
                }}),
            );
        }
    }
    paths.insert(
        "/v1/openapi.json".into(),
        json!({"get": {
            "operationId": "OpenApi",
            "security": [],
            "responses": {"200": {"description": "This document.", "content": {"application/json": {}}}}
        }}),
    );
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    while let Some(m) = todo.pop() {
        if schemas.contains_key(m.full_name()) {
            continue;
        }
        let schema = well_known(&m).unwrap_or_else(|| message_schema(&m, &mut todo));
        schemas.insert(m.full_name().to_string(), schema);
    }
    schemas.insert(
        "google.rpc.Status".into(),
        json!({"type": "object", "properties": {
            "code": {"type": "integer", "format": "int32"},
            "status": {"type": "string"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {
                "type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true
            }}
        }}),
    );
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Concord",
            "version": "v1",
            "description": "Concord's RPCs over HTTP/JSON (the protobuf JSON mapping), as the gateway serves them. Every call is made as the gRPC call it maps to, under the caller's identity and purpose."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "clientCertificate": {"type": "mutualTLS", "description": "The agency's certificate."},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
        "security": [{"clientCertificate": []}, {"bearer": []}]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_rpc_has_an_operation_and_every_reference_resolves() {
        let pool = DescriptorPool::decode(concord_proto::FILE_DESCRIPTOR_SET).unwrap();
        let services = [
            "concord.gateway.v1.GatewayService",
            "concord.registry.v1.RegistryService",
            "concord.facilities.v1.FacilitiesService",
            "concord.requests.v1.RequestsService",
        ];
        let doc = document(&pool, &services).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for s in services {
            for m in pool.get_service_by_name(s).unwrap().methods() {
                let path = format!("/v1/{s}/{}", m.name());
                let body = &paths[&path]["post"]["requestBody"]["content"];
                let lines = body.get("application/x-ndjson").is_some();
                assert_eq!(lines, m.is_client_streaming(), "{path}");
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} resolves");
        }
        let person = &schemas["concord.registry.v1.Person"]["properties"];
        assert_eq!(
            person["birthDate"]["$ref"],
            "#/components/schemas/concord.type.v1.ApproximateDate"
        );
        assert_eq!(person["createTime"]["format"], "date-time");
    }
}
