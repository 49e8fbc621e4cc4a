//! OpenAPI documents named by URL are fetched (bounded) before the manifests compile.

mod support;

use aegis_seal_gateway::infrastructure::config::{ManifestSet, fetch_documents};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use bytes::Bytes;
use http_body_util::Full;

const DOCUMENT: &str = "openapi: 3.0.0\npaths:\n  /repos:\n    post: {operationId: createRepo}\n";

async fn document_server() -> std::net::SocketAddr {
    support::serve(|req: http::Request<hyper::body::Incoming>| async move {
        let mut response = http::Response::new(Full::new(Bytes::from(DOCUMENT)));
        if req.uri().path() != "/openapi.yaml" {
            *response.status_mut() = http::StatusCode::NOT_FOUND;
        }
        response
    })
    .await
}

fn workflow(url: &str) -> String {
    format!(
        "apiVersion: seal.100monkeys.ai/v1\nkind: Workflow\nmetadata: {{name: repo}}\nspec:\n  api_spec: {{base_url: 'http://127.0.0.1:9', openapi: {{url: '{url}'}}}}\n  steps: [{{name: create, operation_id: createRepo}}]\n"
    )
}

#[tokio::test]
async fn url_documents_are_fetched_and_failures_name_the_workflow() {
    let server = document_server().await;
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("repo.yaml");

    std::fs::write(&file, workflow(&format!("http://{server}/openapi.yaml"))).unwrap();
    let set = ManifestSet::read(dir.path()).unwrap();
    let urls = set.openapi_urls();
    assert_eq!(urls, [format!("http://{server}/openapi.yaml")]);
    let compiled = set.compile(fetch_documents(&urls, &http).await).unwrap();
    assert_eq!(
        compiled.snapshot.workflows[0].operations["createRepo"].path,
        "/repos"
    );

    std::fs::write(&file, workflow(&format!("http://{server}/missing.yaml"))).unwrap();
    let set = ManifestSet::read(dir.path()).unwrap();
    let documents = fetch_documents(&set.openapi_urls(), &http).await;
    let err = set.compile(documents).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: document 1 (Workflow repo): spec.api_spec.openapi.url: could not fetch http://{server}/missing.yaml: HTTP 404 Not Found",
            file.display()
        )
    );
}
