//! Resources the unit tests share.

use aegis_seal_crds::{CliTool, SealGateway, SecurityContext, Workflow};
use serde_json::{Value, json};

pub const NS: &str = "tools";
pub const GW: &str = "edge";
pub const GW_UID: &str = "0b6c2b9e-5d1f-4a43-9c36-6f1d0d0e7a11";
pub const IMAGE: &str = "ghcr.io/100monkeys-ai/aegis-seal-gateway:0.1.0";

pub fn gateway_json(spec: Value) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SealGateway",
        "metadata": {"name": GW, "namespace": NS, "uid": GW_UID, "generation": 3, "resourceVersion": "100"},
        "spec": spec,
    })
}

pub fn gateway(spec: Value) -> SealGateway {
    serde_json::from_value(gateway_json(spec)).unwrap()
}

pub fn openapi_doc() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "example", "version": "1"},
        "paths": {
            "/repos": {"post": {"operationId": "createRepo", "requestBody": {"content": {}}}},
            "/repos/{id}": {"get": {"operationId": "getRepo",
                "parameters": [{"name": "id", "in": "path", "required": true}]}}
        }
    })
}

/// A valid Workflow calling `createRepo`; `description` lets tests vary its size.
pub fn workflow_json(name: &str, description: &str) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 2,
                     "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "description": description,
            "input_schema": {"type": "object", "required": ["repo_name"],
                             "properties": {"repo_name": {"type": "string"}}},
            "api_spec": {"base_url": "https://api.example.com",
                         "openapi": {"inline": openapi_doc()},
                         "credential_path": {"StaticRef": {"key": "example/token"}}},
            "steps": [
                {"name": "create_repo", "operation_id": "createRepo",
                 "body_template": "{\"name\": {{json input.repo_name}}}", "extractors": {"repo_id": "$.id"}},
                {"name": "get_repo", "operation_id": "getRepo",
                 "body_template": "{\"id\": {{json steps.create_repo.repo_id}}}"}
            ]
        }
    })
}

pub fn workflow(name: &str) -> Workflow {
    serde_json::from_value(workflow_json(name, "Create a repository")).unwrap()
}

pub fn cli_tool(name: &str) -> CliTool {
    serde_json::from_value(json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "CliTool",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"docker_image": "localhost/git:1", "allowed_subcommands": ["status"]}
    }))
    .unwrap()
}

pub fn security_context(name: &str) -> SecurityContext {
    serde_json::from_value(json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SecurityContext",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"capabilities": [{"tool_pattern": "*"}]}
    }))
    .unwrap()
}

/// A real HTTP server on 127.0.0.1 for `openapi.url`: [`openapi_doc`] at `/openapi.json`, a body
/// one byte over the document limit at `/huge` (chunked, no length), 404 elsewhere. Returns its
/// base URL and the number of requests it answered.
pub async fn document_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::{Bytes, Frame};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = counted.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                hits.fetch_add(1, Ordering::SeqCst);
                let (status, body) = match req.uri().path() {
                    "/openapi.json" => (
                        200,
                        Full::new(Bytes::from(openapi_doc().to_string())).boxed(),
                    ),
                    "/huge" => {
                        let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
                        let chunks = (0..8)
                            .map(move |_| chunk.clone())
                            .chain([Bytes::from_static(b"x")])
                            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c)));
                        (200, StreamBody::new(futures::stream::iter(chunks)).boxed())
                    }
                    _ => (
                        404,
                        Full::new(Bytes::from_static(b"no such document")).boxed(),
                    ),
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .body(body)
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (base, hits)
}
