//! `POST /v1/specs` with `source_fetch_url` (reference §2.4.1, §5.1; parity #24, #25, #27): the
//! document is fetched from a real HTTP server on 127.0.0.1 through the upstream client, its
//! operations are stored, `source_url` deduplicates inside the owner's scope only (the [FIX] of
//! #25), and every fetch failure answers with its cause.

mod control_support;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aegis_seal_gateway::infrastructure::persistence::Database;
use bytes::Bytes;
use control_support::{Control, JwksServer, openapi_document, operator, standard_jwks};
use http_body_util::Full;
use serde_json::{Value, json};
use sqlx::Row;

/// Largest document the gateway fetches (`MAX_DOCUMENT_BYTES` in control/specs.rs).
const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// A Swagger 2 document in YAML, served by `/teams.yaml`.
const SWAGGER_YAML: &str = "swagger: \"2.0\"\ninfo: {title: teams, version: \"1\"}\npaths:\n  /teams:\n    post:\n      operationId: addTeam\n  /teams/{id}:\n    delete:\n      operationId: removeTeam\n";

/// Where OpenAPI documents are fetched from; counts the requests per path.
struct DocServer {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl DocServer {
    async fn start() -> Self {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = hits.clone();
        let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
            let path = req.uri().path().to_owned();
            *counted.lock().unwrap().entry(path.clone()).or_default() += 1;
            async move {
                let (status, content_type, body): (u16, &str, Bytes) = match path.as_str() {
                    "/repos.json" => (
                        200,
                        "application/json",
                        openapi_document().to_string().into(),
                    ),
                    "/teams.yaml" => (200, "application/yaml", SWAGGER_YAML.into()),
                    "/missing.json" => (404, "application/json", "{\"message\":\"gone\"}".into()),
                    "/page.html" => (200, "text/html", "<html><body>hello</body></html>".into()),
                    "/broken.json" => (200, "application/json", "{\"openapi\": ".into()),
                    "/nopaths.json" => (
                        200,
                        "application/json",
                        json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}})
                            .to_string()
                            .into(),
                    ),
                    "/noops.json" => (
                        200,
                        "application/json",
                        json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"summary": "no id"}}}})
                            .to_string()
                            .into(),
                    ),
                    "/unversioned.json" => (
                        200,
                        "application/json",
                        json!({"paths": {"/a": {"get": {"operationId": "getA"}}}})
                            .to_string()
                            .into(),
                    ),
                    "/big.json" => (
                        200,
                        "application/json",
                        vec![b' '; MAX_DOCUMENT_BYTES + 1].into(),
                    ),
                    "/to-metadata" => (302, "text/plain", Bytes::new()),
                    _ => (404, "text/plain", Bytes::new()),
                };
                let mut response = http::Response::new(Full::new(body));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
                if path == "/to-metadata" {
                    response.headers_mut().insert(
                        http::header::LOCATION,
                        "http://169.254.169.254/latest/meta-data".parse().unwrap(),
                    );
                }
                response
            }
        })
        .await;
        Self {
            base: format!("http://{addr}"),
            hits,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The `operations` column of [`openapi_document`].
fn repo_operations() -> Value {
    json!({
        "createRepo": {"operation_id": "createRepo", "method": "POST", "path": "/repos"},
        "getRepo": {"operation_id": "getRepo", "method": "GET", "path": "/repos/{id}"},
    })
}

fn fetched(name: &str, fetch_url: &str, source_url: Option<&str>) -> Value {
    json!({"name": name, "base_url": "http://127.0.0.1:9", "source_fetch_url": fetch_url,
           "source_url": source_url})
}

async fn count_events(db: &Database, kind: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM gateway_events WHERE event_type = '{kind}'");
    match db {
        Database::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(p)
            .await
            .unwrap()
            .get("n"),
        Database::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(p)
            .await
            .unwrap()
            .get("n"),
    }
}

/// `POST /v1/specs` with `body`, as the operator `token`.
async fn register(control: &Control, token: &str, body: Value) -> (u16, Value) {
    control
        .call("POST", "/v1/specs", Some(token), Some(body))
        .await
}

/// Ids of the specs `token` lists.
async fn listed(control: &Control, token: &str) -> Vec<String> {
    let (status, list) = control.call("GET", "/v1/specs", Some(token), None).await;
    assert_eq!(status, 200, "{list}");
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_fetched_document_is_registered_with_its_operations_and_source_url() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let docs = DocServer::start().await;
    let acme = operator(Some("acme"), "operator");
    let url = docs.url("/repos.json");

    for (backend, db_url, _dir) in support::both_backends().await {
        let control = Control::start(&db_url, Default::default(), &jwks.uri, &[]).await;
        let before = docs.hits("/repos.json");
        let (status, reply) = register(
            &control,
            &acme,
            json!({"name": "repos", "base_url": "http://127.0.0.1:9/api/",
                            "source_fetch_url": url, "source_url": url}),
        )
        .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let id = reply["id"].as_str().unwrap().to_owned();
        assert_eq!(
            reply,
            json!({"id": id, "spec": {
                "id": id, "name": "repos", "tenant_id": "acme",
                "base_url": "http://127.0.0.1:9/api", "source_url": url,
                "credential_path": null, "operations": repo_operations(), "source": "rest"}}),
            "{backend}"
        );
        assert_eq!(docs.hits("/repos.json"), before + 1, "{backend}: one fetch");

        // The stored spec: the fetched document as raw_spec, its operations, the source_url.
        let (status, spec) = control
            .call("GET", &format!("/v1/specs/{id}"), Some(&acme), None)
            .await;
        assert_eq!(status, 200, "{backend}: {spec}");
        assert_eq!(spec["raw_spec"], openapi_document(), "{backend}");
        assert_eq!(spec["operations"], repo_operations(), "{backend}");
        assert_eq!(spec["source_url"], json!(url), "{backend}");
        assert_eq!(spec["tenant_id"], json!("acme"), "{backend}");
        assert_eq!(
            count_events(&control.db, "ApiSpecRegistered").await,
            1,
            "{backend}"
        );

        // `source_fetch_url` alone is not recorded as the source_url.
        let (status, reply) =
            register(&control, &acme, fetched("repos-unnamed-source", &url, None)).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        assert_eq!(reply["spec"]["source_url"], Value::Null, "{backend}");
        assert_eq!(reply["spec"]["operations"], repo_operations(), "{backend}");

        // A Swagger 2 document in YAML is accepted too (methods upper-cased).
        let (status, reply) = register(
            &control,
            &acme,
            fetched("teams", &docs.url("/teams.yaml"), None),
        )
        .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        assert_eq!(
            reply["spec"]["operations"],
            json!({
                "addTeam": {"operation_id": "addTeam", "method": "POST", "path": "/teams"},
                "removeTeam": {"operation_id": "removeTeam", "method": "DELETE", "path": "/teams/{id}"},
            }),
            "{backend}"
        );

        // `inline_json` wins over `source_fetch_url`: nothing is fetched.
        let before = docs.hits("/repos.json");
        let mut both = fetched("inline-wins", &url, None);
        both["inline_json"] =
            json!({"openapi": "3.0.0", "paths": {"/x": {"put": {"operationId": "putX"}}}});
        let (status, reply) = register(&control, &acme, both).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        assert_eq!(
            reply["spec"]["operations"],
            json!({"putX": {"operation_id": "putX", "method": "PUT", "path": "/x"}}),
            "{backend}"
        );
        assert_eq!(docs.hits("/repos.json"), before, "{backend}: not fetched");
        control.shutdown().await;
    }
}

#[tokio::test]
async fn the_same_source_url_in_the_same_tenant_is_deduplicated_before_any_fetch() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let docs = DocServer::start().await;
    let acme = operator(Some("acme"), "operator");
    let url = docs.url("/repos.json");

    for (backend, db_url, _dir) in support::both_backends().await {
        let control = Control::start(&db_url, Default::default(), &jwks.uri, &[]).await;
        let before = docs.hits("/repos.json");
        let (status, reply) = register(&control, &acme, fetched("repos", &url, Some(&url))).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let first = reply["id"].as_str().unwrap().to_owned();
        assert_eq!(docs.hits("/repos.json"), before + 1, "{backend}");

        // Again, under another name: the dedup form, the same id, no second fetch, nothing written.
        let (status, reply) =
            register(&control, &acme, fetched("repos-again", &url, Some(&url))).await;
        assert_eq!(
            (status, reply),
            (200, json!({"id": first, "deduplicated": true})),
            "{backend}"
        );
        assert_eq!(
            docs.hits("/repos.json"),
            before + 1,
            "{backend}: the dedup answers before fetching"
        );
        // The lookup precedes the fetch: a fetch URL that would fail is never tried.
        let (status, reply) = register(
            &control,
            &acme,
            fetched("repos-third", &docs.url("/missing.json"), Some(&url)),
        )
        .await;
        assert_eq!(
            (status, reply),
            (200, json!({"id": first, "deduplicated": true})),
            "{backend}"
        );
        assert_eq!(docs.hits("/missing.json"), 0, "{backend}");
        assert_eq!(listed(&control, &acme).await, vec![first.clone()]);
        assert_eq!(
            count_events(&control.db, "ApiSpecRegistered").await,
            1,
            "{backend}: a dedup emits no event"
        );

        // The dedup key is `source_url`, not `source_fetch_url`: without it the document is
        // fetched again and the name rule applies.
        let before = docs.hits("/repos.json");
        let (status, reply) = register(&control, &acme, fetched("repos", &url, None)).await;
        assert_eq!(
            (status, reply),
            (
                409,
                json!({"error": "api spec \"repos\" already exists in tenant \"acme\""})
            ),
            "{backend}"
        );
        assert_eq!(docs.hits("/repos.json"), before + 1, "{backend}");
        let (status, reply) = register(&control, &acme, fetched("repos-copy", &url, None)).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        assert_ne!(reply["id"], json!(first), "{backend}");
        assert_eq!(docs.hits("/repos.json"), before + 2, "{backend}");
        control.shutdown().await;
    }
}

#[tokio::test]
async fn dedup_never_hands_out_a_spec_of_another_owner() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let docs = DocServer::start().await;
    let a = operator(Some("tenant-a"), "operator");
    let b = operator(Some("tenant-b"), "operator");
    let c = operator(Some("tenant-c"), "operator");
    let platform = operator(None, "operator");
    let url = docs.url("/repos.json");
    let body = fetched("repos", &url, Some(&url));
    let dedup = |id: &str| json!({"id": id, "deduplicated": true});

    for (backend, db_url, _dir) in support::both_backends().await {
        let control = Control::start(&db_url, Default::default(), &jwks.uri, &[]).await;
        let before = docs.hits("/repos.json");
        let (status, reply) = register(&control, &a, body.clone()).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let of_a = reply["id"].as_str().unwrap().to_owned();

        // Tenant B, same source_url (and name): a spec of its own, not A's.
        let (status, reply) = register(&control, &b, body.clone()).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let of_b = reply["id"].as_str().unwrap().to_owned();
        assert_ne!(of_b, of_a, "{backend}");
        assert_eq!(reply["spec"]["tenant_id"], json!("tenant-b"), "{backend}");
        assert_eq!(reply["spec"]["source_url"], json!(url), "{backend}");
        let (status, reply) = control
            .call("GET", &format!("/v1/specs/{of_a}"), Some(&b), None)
            .await;
        assert_eq!(
            (status, reply),
            (
                403,
                json!({"error": format!("tenant mismatch: api spec {of_a} belongs to another tenant")})
            ),
            "{backend}"
        );
        // Each tenant's repeat lands on its own spec.
        assert_eq!(
            register(&control, &a, body.clone()).await,
            (200, dedup(&of_a))
        );
        assert_eq!(
            register(&control, &b, body.clone()).await,
            (200, dedup(&of_b))
        );

        // A platform operator registers a system-global spec: not deduplicated to a tenant's.
        let (status, reply) = register(&control, &platform, body.clone()).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let global = reply["id"].as_str().unwrap().to_owned();
        assert!(global != of_a && global != of_b, "{backend}");
        assert_eq!(reply["spec"]["tenant_id"], Value::Null, "{backend}");
        assert_eq!(
            register(&control, &platform, body.clone()).await,
            (200, dedup(&global))
        );
        // Nor is the global one handed to a tenant that has none of its own.
        let (status, reply) = register(&control, &c, body.clone()).await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let of_c = reply["id"].as_str().unwrap().to_owned();
        assert!(![&of_a, &of_b, &global].contains(&&of_c), "{backend}");
        assert_eq!(reply["spec"]["tenant_id"], json!("tenant-c"), "{backend}");
        // A platform operator registering for a tenant deduplicates inside that tenant.
        let mut for_a = body.clone();
        for_a["tenant_id"] = json!("tenant-a");
        assert_eq!(
            register(&control, &platform, for_a).await,
            (200, dedup(&of_a))
        );

        // One fetch per spec created (a, b, global, c); none for the dedups.
        assert_eq!(docs.hits("/repos.json"), before + 4, "{backend}");
        assert_eq!(
            count_events(&control.db, "ApiSpecRegistered").await,
            4,
            "{backend}"
        );
        assert_eq!(listed(&control, &a).await, sorted(&[&of_a, &global]));
        assert_eq!(listed(&control, &b).await, sorted(&[&of_b, &global]));
        assert_eq!(
            listed(&control, &platform).await,
            sorted(&[&of_a, &of_b, &global, &of_c])
        );
        control.shutdown().await;
    }
}

#[tokio::test]
async fn fetch_failures_answer_with_their_cause_and_store_nothing() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let docs = DocServer::start().await;
    let (control, _dir) = Control::on_sqlite(&jwks.uri, &[]).await;
    let acme = operator(Some("acme"), "operator");
    let broken_json = serde_json::from_str::<Value>("{\"openapi\": ")
        .unwrap_err()
        .to_string();
    let closed = format!("http://127.0.0.1:{}/doc.json", support::free_port());
    let blocked =
        "(link-local and cloud metadata destinations are refused unless allow_link_local is set)";

    let cases: Vec<(String, u16, String)> = vec![
        (
            docs.url("/missing.json"),
            422,
            "source_fetch_url: fetching the document returned 404 Not Found".into(),
        ),
        (
            // Not JSON: the YAML fallback reads the page as a string, which is not a document.
            docs.url("/page.html"),
            400,
            "source_fetch_url: the OpenAPI document must be a JSON object".into(),
        ),
        (
            docs.url("/broken.json"),
            400,
            format!("source_fetch_url: invalid JSON: {broken_json}"),
        ),
        (
            docs.url("/nopaths.json"),
            400,
            "source_fetch_url: OpenAPI spec missing paths".into(),
        ),
        (
            docs.url("/noops.json"),
            400,
            "source_fetch_url: OpenAPI spec has no operationId definitions".into(),
        ),
        (
            docs.url("/unversioned.json"),
            400,
            "source_fetch_url: not an OpenAPI 3 or Swagger 2 document (expected `openapi: 3.x` or `swagger: \"2.0\"`)".into(),
        ),
        (
            docs.url("/big.json"),
            422,
            format!(
                "source_fetch_url: could not fetch the document: response too large: GET {} returned 200 OK with a body over the limit of {MAX_DOCUMENT_BYTES} bytes",
                docs.url("/big.json")
            ),
        ),
        (
            "http://169.254.169.254/latest/meta-data/iam".into(),
            422,
            format!(
                "source_fetch_url: could not fetch the document: blocked destination: 169.254.169.254 is a cloud metadata address {blocked}"
            ),
        ),
        (
            "http://169.254.10.20/openapi.json".into(),
            422,
            format!(
                "source_fetch_url: could not fetch the document: blocked destination: 169.254.10.20 is a link-local address {blocked}"
            ),
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/".into(),
            422,
            format!(
                "source_fetch_url: could not fetch the document: blocked destination: metadata.google.internal is a cloud metadata service {blocked}"
            ),
        ),
        (
            // A redirect into the metadata service is refused the same way.
            docs.url("/to-metadata"),
            422,
            format!(
                "source_fetch_url: could not fetch the document: blocked destination: 169.254.169.254 is a cloud metadata address {blocked}"
            ),
        ),
        (
            "file:///etc/passwd".into(),
            400,
            "source_fetch_url: \"file:///etc/passwd\" is not an absolute http(s) URL".into(),
        ),
        (
            "not a url".into(),
            400,
            "source_fetch_url: \"not a url\" is not an absolute http(s) URL".into(),
        ),
    ];
    for (url, status, error) in cases {
        let (got, reply) = register(&control, &acme, fetched("repos", &url, Some(&url))).await;
        assert_eq!((got, reply), (status, json!({"error": error})), "{url}");
    }
    assert_eq!(
        docs.hits("/to-metadata"),
        1,
        "the redirect itself was fetched"
    );

    // Nothing listening: a transport error naming the URL, its query redacted.
    let (status, reply) = register(
        &control,
        &acme,
        fetched("repos", &format!("{closed}?api_key=secret"), None),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    let error = reply["error"].as_str().unwrap();
    let prefix = format!(
        "source_fetch_url: could not fetch the document: transport error: GET {closed}?…: "
    );
    assert!(error.starts_with(&prefix), "{error}");
    assert!(!error.contains("secret"), "{error}");

    // None of the failures stored a spec or emitted an event.
    assert!(listed(&control, &acme).await.is_empty());
    assert_eq!(count_events(&control.db, "ApiSpecRegistered").await, 0);
    control.shutdown().await;
}

#[tokio::test]
async fn with_tenant_upstreams_public_only_a_tenant_operator_cannot_fetch_from_inside() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let docs = DocServer::start().await;
    let (control, _dir) = Control::on_sqlite(
        &jwks.uri,
        &[("SEAL_GATEWAY_OUTBOUND_TENANT_UPSTREAMS_PUBLIC_ONLY", "true")],
    )
    .await;
    let url = docs.url("/repos.json");
    let (status, reply) = register(
        &control,
        &operator(Some("acme"), "operator"),
        fetched("repos", &url, None),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(
        reply["error"],
        "source_fetch_url: could not fetch the document: blocked destination: 127.0.0.1 is a \
         loopback address (a tenant's upstream must be a public address: \
         outbound.tenant_upstreams_public_only is set)"
    );
    assert_eq!(docs.hits("/repos.json"), 0);
    // A platform operator's fetch is the platform's own.
    let (status, reply) = register(
        &control,
        &operator(None, "operator"),
        fetched("repos", &url, None),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    control.shutdown().await;
}

/// `PUT /v1/specs/{id}` keeps every workflow on the spec compiling: a document that drops an
/// operation a workflow calls is refused with a 400 naming that workflow (and only it), and the
/// spec stays as it was; a document that keeps them is taken.
#[tokio::test]
async fn a_spec_update_its_workflows_cannot_compile_against_is_refused_naming_them() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) = Control::on_sqlite(&jwks.uri, &[]).await;
    let token = operator(Some("acme"), "operator");
    let spec = |document: Value| json!({"name": "repos", "base_url": "http://127.0.0.1:9", "inline_json": document});
    let (status, body) = control
        .call(
            "POST",
            "/v1/specs",
            Some(&token),
            Some(spec(openapi_document())),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for (name, operation) in [("creates", "createRepo"), ("reads", "getRepo")] {
        let workflow = json!({
            "name": name, "api_spec_id": id,
            "steps": [{"name": "call", "operation_id": operation}],
        });
        let (status, body) = control
            .call("POST", "/v1/workflows", Some(&token), Some(workflow))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    let path = format!("/v1/specs/{id}");
    let mut without_create = openapi_document();
    without_create["paths"]
        .as_object_mut()
        .unwrap()
        .remove("/repos");
    let (status, body) = control
        .call("PUT", &path, Some(&token), Some(spec(without_create)))
        .await;
    assert_eq!(status, 400, "{body}");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        !problems.is_empty()
            && problems
                .iter()
                .all(|p| p.starts_with("workflow \"creates\": ") && p.contains("createRepo")),
        "{body}"
    );
    let (status, stored) = control.call("GET", &path, Some(&token), None).await;
    assert_eq!(status, 200, "{stored}");
    assert!(stored.to_string().contains("createRepo"), "{stored}");

    let mut more = openapi_document();
    more["paths"]["/repos/{id}"]["delete"] = json!({"operationId": "deleteRepo"});
    let (status, body) = control
        .call("PUT", &path, Some(&token), Some(spec(more)))
        .await;
    assert_eq!(status, 200, "{body}");
    control.shutdown().await;
}
