//! Objects from manifests or custom resources belong to them: the REST API lists and reads them,
//! but a REST write to such a name, or to such an object, answers 409 and says to use kubectl;
//! a declarative object that arrives later replaces a REST object of its name, and says so.
//! On both backends.

mod control_support;
mod support;

use aegis_seal_gateway::infrastructure::persistence::CatalogSource;
use control_support::{
    Control, JwksServer, manifest_snapshot, openapi_document, operator, standard_jwks,
};
use serde_json::{Value, json};

fn assert_conflict(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 409, "{what}: {body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("kubectl"), "{what}: {body}");
    assert!(message.contains("manifest"), "{what}: {body}");
}

#[tokio::test]
async fn rest_writes_to_declarative_names_are_409() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let platform = operator(None, "operator");
    let tenant = operator(Some("acme"), "operator");

    for (backend, url, _dir) in support::both_backends().await {
        let control = Control::start(&url, manifest_snapshot(&upstream), &jwks.uri, &[]).await;
        let (status, spec) = control
            .call(
                "POST",
                "/v1/specs",
                Some(&platform),
                Some(json!({"name": "repos", "base_url": upstream, "inline_json": openapi_document()})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {spec}");
        let spec = spec["id"].as_str().unwrap();
        let workflow = |name: &str| {
            json!({"name": name, "api_spec_id": spec,
                   "steps": [{"name": "s", "operation_id": "createRepo"}]})
        };

        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&platform),
                Some(workflow("manifest-wf")),
            )
            .await;
        assert_conflict(status, &reply, &format!("{backend} workflow"));
        // Workflows and CLI tools share the tool names.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&platform),
                Some(workflow("manifest-cli")),
            )
            .await;
        assert_conflict(
            status,
            &reply,
            &format!("{backend} workflow named like a CLI tool"),
        );
        let (status, reply) = control
            .call(
                "POST",
                "/v1/cli-tools",
                Some(&platform),
                Some(json!({"name": "manifest-cli", "docker_image": "x", "allowed_subcommands": ["ls"]})),
            )
            .await;
        assert_conflict(status, &reply, &format!("{backend} CLI tool"));
        let (status, reply) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&platform),
                Some(json!({"name": "manifest-ctx", "capabilities": []})),
            )
            .await;
        assert_conflict(status, &reply, &format!("{backend} security context"));

        // Declarative objects are listed and readable, but not changed or deleted here.
        let (status, list) = control
            .call("GET", "/v1/workflows", Some(&platform), None)
            .await;
        assert_eq!(status, 200);
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "manifest-wf")
            .unwrap_or_else(|| panic!("{backend}: {list}"))
            .clone();
        assert_eq!(listed["source"], "manifest");
        let path = format!("/v1/workflows/{}", listed["id"].as_str().unwrap());
        assert_eq!(
            control.call("GET", &path, Some(&platform), None).await.0,
            200
        );
        let (status, reply) = control
            .call("PUT", &path, Some(&platform), Some(workflow("manifest-wf")))
            .await;
        assert_conflict(status, &reply, &format!("{backend} PUT workflow"));
        let (status, reply) = control.call("DELETE", &path, Some(&platform), None).await;
        assert_conflict(status, &reply, &format!("{backend} DELETE workflow"));
        for path in [
            "/v1/cli-tools/manifest-cli",
            "/v1/security-contexts/manifest-ctx",
        ] {
            let (status, reply) = control.call("DELETE", path, Some(&platform), None).await;
            assert_conflict(status, &reply, &format!("{backend} DELETE {path}"));
        }

        // A tenant's own object may shadow a global declarative one; the manifest's stays served.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&tenant),
                Some(workflow("manifest-wf")),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let served = control.gateway.state.served.load();
        let owners: Vec<Option<&str>> = served
            .snapshot
            .workflows
            .iter()
            .filter(|w| w.tool_name == "manifest-wf")
            .map(|w| w.tenant_id.as_deref())
            .collect();
        assert_eq!(owners, [None, Some("acme")], "{backend}");
        drop(served);
        control.shutdown().await;
    }
}

/// The built-in default contexts: listed and readable while served, not deletable, and gone once a
/// system-global context is registered over REST (they come back when it is deleted).
#[tokio::test]
async fn the_default_contexts_give_way_to_a_registered_system_global_one() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let platform = operator(None, "operator");
    let defaults = ["aegis-system-default", "internal", "zaru-free"];

    for (backend, url, _dir) in support::both_backends().await {
        let control = Control::start(&url, Default::default(), &jwks.uri, &[]).await;
        let served = || {
            let served = control.gateway.state.served.load();
            let names: Vec<String> = served
                .snapshot
                .security_contexts
                .iter()
                .map(|c| c.name.clone())
                .collect();
            names
        };
        let listed = || async {
            let (status, list) = control
                .call("GET", "/v1/security-contexts", Some(&platform), None)
                .await;
            assert_eq!(status, 200, "{backend}: {list}");
            list.as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    (text("name"), text("source"))
                })
                .collect::<Vec<_>>()
        };

        assert_eq!(served(), defaults, "{backend}");
        let as_defaults: Vec<_> = defaults
            .iter()
            .map(|n| (n.to_string(), "default".to_owned()))
            .collect();
        assert_eq!(listed().await, as_defaults, "{backend}");
        let (status, internal) = control
            .call(
                "GET",
                "/v1/security-contexts/internal",
                Some(&platform),
                None,
            )
            .await;
        assert_eq!(status, 200, "{backend}: {internal}");
        assert_eq!(
            internal["capabilities"],
            json!([{"tool_pattern": "*"}, {"tool_pattern": "credentials.*"}]),
            "{backend}"
        );
        let (status, reply) = control
            .call(
                "DELETE",
                "/v1/security-contexts/internal",
                Some(&platform),
                None,
            )
            .await;
        assert_eq!(status, 409, "{backend}: {reply}");
        assert_eq!(
            reply["error"],
            "security context \"internal\" is a built-in default, served only while no system-global security context exists; register or declare one and the defaults are no longer served",
            "{backend}"
        );

        // Replacing one registers a system-global context: the three defaults are no longer served.
        let (status, reply) = control
            .call(
                "PUT",
                "/v1/security-contexts/internal",
                Some(&platform),
                Some(json!({"capabilities": [{"tool_pattern": "repos.*"}]})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        assert_eq!(served(), ["internal"], "{backend}");
        assert_eq!(
            listed().await,
            [("internal".to_owned(), "rest".to_owned())],
            "{backend}"
        );
        let (status, _) = control
            .call(
                "GET",
                "/v1/security-contexts/aegis-system-default",
                Some(&platform),
                None,
            )
            .await;
        assert_eq!(status, 404, "{backend}");

        // Deleting it leaves no system-global context: the defaults are served again.
        let (status, reply) = control
            .call(
                "DELETE",
                "/v1/security-contexts/internal",
                Some(&platform),
                None,
            )
            .await;
        assert!(
            status == 200 || status == 204,
            "{backend}: {status} {reply}"
        );
        assert_eq!(served(), defaults, "{backend}");
        assert_eq!(listed().await, as_defaults, "{backend}");
    }
}

/// A workflow registered while its spec is deleted: one of the two is refused, never both
/// answered as done (a workflow without its spec would be listed and never served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_and_the_deletion_of_its_spec_are_never_both_done() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let platform = operator(None, "operator");
    let dir = tempfile::tempdir().unwrap();
    let url = support::sqlite_url(dir.path());
    let control = Control::start(&url, manifest_snapshot(&upstream), &jwks.uri, &[]).await;
    for round in 0..20 {
        let (status, spec) = control
            .call(
                "POST",
                "/v1/specs",
                Some(&platform),
                Some(json!({"name": format!("racy-{round}"), "base_url": upstream, "inline_json": openapi_document()})),
            )
            .await;
        assert_eq!(status, 201, "{spec}");
        let spec = spec["id"].as_str().unwrap().to_owned();
        let workflow = json!({"name": format!("racy-wf-{round}"), "api_spec_id": spec,
                              "steps": [{"name": "s", "operation_id": "createRepo"}]});
        let path = format!("/v1/specs/{spec}");
        let ((created, body), (deleted, reply)) = tokio::join!(
            control.call("POST", "/v1/workflows", Some(&platform), Some(workflow)),
            control.call("DELETE", &path, Some(&platform), None),
        );
        assert!(
            !(created == 201 && deleted == 200),
            "round {round}: both done: {body} {reply}"
        );
    }
}

/// Two replicas on one Postgres register the same CLI tool name at the same moment: each checks
/// the name under its own lock, so one of them may meet the unique index. That one is a 409, like
/// any taken name, not a 503 blaming the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_through_two_replicas_at_once_is_a_conflict() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let platform = operator(None, "operator");
    let url = support::fresh_postgres_url().await;
    let first = Control::start(&url, manifest_snapshot(&upstream), &jwks.uri, &[]).await;
    let second = Control::start(&url, manifest_snapshot(&upstream), &jwks.uri, &[]).await;
    for round in 0..20 {
        let tool = json!({"name": format!("twice-{round}"), "docker_image": "x", "allowed_subcommands": ["ls"]});
        let ((a, body_a), (b, body_b)) = tokio::join!(
            first.call("POST", "/v1/cli-tools", Some(&platform), Some(tool.clone())),
            second.call("POST", "/v1/cli-tools", Some(&platform), Some(tool)),
        );
        let mut statuses = [a, b];
        statuses.sort_unstable();
        // A POST of a name its caller owns replaces it (200), when the other write was seen in
        // time; when it was not, the unique index refuses it (409).
        assert!(
            statuses == [200, 201] || statuses == [201, 409],
            "round {round}: {statuses:?} {body_a} {body_b}"
        );
    }
}

#[tokio::test]
async fn a_manifest_that_takes_a_rest_name_replaces_it_once_and_says_so() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let platform = operator(None, "operator");

    for (backend, url, _dir) in support::both_backends().await {
        let control = Control::start(&url, Default::default(), &jwks.uri, &[]).await;
        let (status, spec) = control
            .call(
                "POST",
                "/v1/specs",
                Some(&platform),
                Some(json!({"name": "repos", "base_url": upstream, "inline_json": openapi_document()})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {spec}");
        let (status, registered) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&platform),
                Some(json!({"name": "manifest-wf", "api_spec_id": spec["id"],
                            "steps": [{"name": "s", "operation_id": "createRepo"}]})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {registered}");
        let (status, context) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&platform),
                Some(json!({"name": "manifest-ctx", "capabilities": [{"tool_pattern": "*"}]})),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {context}");

        // A manifest now defines both names: it takes them.
        control
            .gateway
            .reload(manifest_snapshot(&upstream), CatalogSource::Manifest)
            .await
            .unwrap();
        // Another change of the manifests replaces nothing more.
        control
            .gateway
            .reload(
                manifest_snapshot(&format!("{upstream}/v2")),
                CatalogSource::Manifest,
            )
            .await
            .unwrap();

        let (status, workflow) = control
            .call("GET", "/v1/workflows", Some(&platform), None)
            .await;
        assert_eq!(status, 200, "{backend}: {workflow}");
        let sources: Vec<_> = workflow
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["name"].clone(), w["source"].clone()))
            .collect();
        assert_eq!(
            sources,
            [(json!("manifest-wf"), json!("manifest"))],
            "{backend}"
        );

        let deleted = |event_type: &'static str| {
            let control = &control;
            let platform = &platform;
            async move {
                let (status, body) = control
                    .call(
                        "GET",
                        &format!("/v1/events?event_type={event_type}"),
                        Some(platform),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                body["events"].as_array().unwrap().clone()
            }
        };
        let workflows = deleted("WorkflowDeleted").await;
        assert_eq!(workflows.len(), 1, "{backend}: {workflows:?}");
        let payload = &workflows[0]["payload"];
        assert_eq!(payload["id"], registered["id"], "{backend}");
        assert_eq!(payload["name"], "manifest-wf");
        assert_eq!(payload["tenant_id"], Value::Null);
        assert_eq!(payload["deleted_by"], "manifest");
        assert_eq!(payload["replaced_by"], "Workflow manifest-wf");
        let contexts = deleted("SecurityContextDeleted").await;
        assert_eq!(contexts.len(), 1, "{backend}: {contexts:?}");
        assert_eq!(
            contexts[0]["payload"]["replaced_by"],
            "SecurityContext manifest-ctx"
        );
        control.shutdown().await;
    }
}
