//! A workflow registered over REST is served at once: invoked through `POST /v1/invoke` with a
//! signed envelope, on both backends; it survives a hot reload of the manifests and a restart on
//! the same database; its spec can be explored; deleting it stops serving it.

mod control_support;
mod support;

use aegis_seal_gateway::infrastructure::persistence::CatalogSource;
use control_support::{
    Control, JwksServer, manifest_snapshot, openapi_document, operator, standard_jwks,
};
use serde_json::{Value, json};

/// The manifests without their security context, so the default contexts (the vectors' session
/// uses `aegis-system-default`) are served.
fn manifests(upstream: &str) -> aegis_seal_crds::Snapshot {
    let mut snapshot = manifest_snapshot(upstream);
    snapshot.security_contexts.clear();
    snapshot
}

async fn invoke(
    control: &Control,
    signer: &support::Signer,
    tool: &str,
    jti: &str,
) -> (u16, Value) {
    let body = signer.envelope(
        tool,
        json!({"name": "hello"}),
        jti,
        chrono::Utc::now().timestamp(),
    );
    let response = control
        .client
        .post(format!("{}/v1/invoke", control.base))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_rest_workflow_is_invoked_end_to_end_and_survives_reload_and_restart() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let signer = support::Signer::from_vectors();
    // The vectors' session belongs to tenant `acme`.
    let acme = operator(Some("acme"), "operator");
    let seal_key = [(
        "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
        signer.rs256_public_key_pem.as_str(),
    )];

    for (backend, url, _dir) in support::both_backends().await {
        let control = Control::start(&url, manifests(&upstream), &jwks.uri, &seal_key).await;
        control
            .db
            .upsert_session(&signer.session_record(chrono::Utc::now()))
            .await
            .unwrap();
        let (status, reply) = control
            .call(
                "POST",
                "/v1/specs",
                Some(&acme),
                Some(
                    json!({"name": "repos", "base_url": upstream, "inline_json": openapi_document(),
                            "source_url": "https://example.test/repos.json"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let spec = reply["id"].as_str().unwrap().to_owned();
        // The same source_url in the same tenant is deduplicated.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/specs",
                Some(&acme),
                Some(json!({"name": "repos-again", "base_url": upstream, "inline_json": openapi_document(),
                            "source_url": "https://example.test/repos.json"})),
            )
            .await;
        assert_eq!(
            (status, &reply["id"], &reply["deduplicated"]),
            (200, &json!(spec), &json!(true)),
            "{backend}"
        );

        let (status, before) =
            invoke(&control, &signer, "create_repo", &format!("{backend}-0")).await;
        assert_eq!(status, 404, "{backend}: not registered yet: {before}");
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&acme),
                Some(json!({
                    "name": "create_repo",
                    "input_schema": {"type": "object", "required": ["name"]},
                    "api_spec_id": spec,
                    "steps": [{"name": "create", "operation_id": "createRepo",
                               "body_template": "{\"name\": {{json input.name}}}",
                               "extractors": {"id": "$.id"}, "on_error": "AbortWorkflow"}],
                })),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let workflow = reply["id"].as_str().unwrap().to_owned();

        let (status, reply) =
            invoke(&control, &signer, "create_repo", &format!("{backend}-1")).await;
        assert_eq!(status, 200, "{backend}: {reply}");
        assert_eq!(
            reply["result"]["result"],
            json!({"id": 7, "name": "hello"}),
            "{backend}"
        );
        assert_eq!(reply["result"]["steps"]["create"]["id"], 7, "{backend}");
        // The id the registration returned, as upstream answers it and `workflows.id` holds it.
        assert_eq!(reply["result"]["workflow_id"], workflow, "{backend}");
        let (_, tools) = control.call("GET", "/v1/tools", Some(&acme), None).await;
        assert!(
            control_support::names(&tools).contains(&"create_repo".to_owned()),
            "{backend}: {tools}"
        );

        // A hot reload of the manifests keeps the REST workflow served beside them.
        let mut reloaded = manifests(&upstream);
        reloaded.cli_tools.clear();
        control
            .gateway
            .reload(reloaded, CatalogSource::Manifest)
            .await
            .unwrap();
        let served = control.gateway.state.served.load();
        assert!(
            served.snapshot.cli_tools.is_empty(),
            "{backend}: the reload was applied"
        );
        assert!(
            served
                .snapshot
                .workflows
                .iter()
                .any(|w| w.tool_name == "create_repo"),
            "{backend}"
        );
        drop(served);
        let (status, reply) =
            invoke(&control, &signer, "create_repo", &format!("{backend}-2")).await;
        assert_eq!(status, 200, "{backend} after reload: {reply}");

        // The explorer calls one operation of the spec and slices the response.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/explorer",
                Some(&acme),
                Some(json!({"execution_id": "explore-1", "api_spec_id": spec, "operation_id": "getRepo",
                            "parameters": {"id": "42"}, "fields": ["$.tags[*]", "$.id"],
                            "include_hateoas_hints": true})),
            )
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        assert_eq!(
            reply["sliced_data"]["$.tags[*]"],
            json!(["a", "b"]),
            "{backend}"
        );
        assert_eq!(reply["sliced_data"]["$.id"], json!(["42"]), "{backend}");
        assert_eq!(reply["operation_metadata"]["status"], 200);
        assert_eq!(
            reply["hints"]["related_operations"],
            json!(["createRepo", "getRepo"])
        );
        let (status, reply) = control
            .call(
                "POST",
                "/v1/explorer",
                Some(&acme),
                Some(json!({"execution_id": "explore-2", "api_spec_id": spec, "operation_id": "nope"})),
            )
            .await;
        assert_eq!(
            (status, &reply["error"]),
            (404, &json!("operation not found")),
            "{backend}"
        );

        // A restart on the same database serves the REST workflow again.
        let db_url = url.clone();
        control.shutdown().await;
        let control = Control::start(&db_url, Default::default(), &jwks.uri, &seal_key).await;
        let (status, reply) =
            invoke(&control, &signer, "create_repo", &format!("{backend}-3")).await;
        assert_eq!(status, 200, "{backend} after restart: {reply}");

        // Deleting it stops serving it at once.
        let (status, reply) = control
            .call(
                "DELETE",
                &format!("/v1/workflows/{workflow}"),
                Some(&acme),
                None,
            )
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        let (status, reply) =
            invoke(&control, &signer, "create_repo", &format!("{backend}-4")).await;
        assert_eq!(status, 404, "{backend} after delete: {reply}");
        control.shutdown().await;
    }
}
