//! Tenancy of the REST control plane over every endpoint, on both backends: tenant A cannot read,
//! change or delete tenant B's objects; a tenant cannot change system-global ones; a platform
//! operator can; names are unique per tenant; an update never moves an object to another tenant;
//! registrations are audited; a tenant registers at most `control.max_objects_per_tenant`.

mod control_support;
mod support;

use aegis_seal_gateway::infrastructure::persistence::EventQuery;
use control_support::{Control, JwksServer, names, openapi_document, operator, standard_jwks};
use serde_json::{Value, json};
use sqlx::Row;

fn spec_body(name: &str, base_url: &str) -> Value {
    json!({"name": name, "base_url": base_url, "inline_json": openapi_document()})
}

fn workflow_body(name: &str, spec_id: &str) -> Value {
    json!({
        "name": name,
        "description": "creates a repository",
        "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "api_spec_id": spec_id,
        "steps": [{"name": "create", "operation_id": "createRepo",
                   "body_template": "{\"name\": {{json input.name}}}",
                   "extractors": {"id": "$.id"}, "on_error": {"RetryN": 2}}],
    })
}

fn cli_body(name: &str) -> Value {
    json!({"name": name, "description": "lists", "docker_image": "localhost/busybox",
           "allowed_subcommands": ["ls"], "default_timeout_seconds": 30})
}

fn context_body(name: &str) -> Value {
    json!({"name": name, "description": "all tools", "capabilities": [{"tool_pattern": "*"}]})
}

/// Objects of one owner, by endpoint: (collection path, key) pairs.
struct Owned {
    spec: String,
    workflow: String,
    cli: String,
    context: String,
}

impl Owned {
    fn paths(&self) -> Vec<(String, Value)> {
        let spec = self.spec.clone();
        vec![
            (
                format!("/v1/specs/{}", self.spec),
                spec_body("renamed-spec", "http://127.0.0.1:9"),
            ),
            (
                format!("/v1/workflows/{}", self.workflow),
                workflow_body("renamed-wf", &spec),
            ),
            (format!("/v1/cli-tools/{}", self.cli), cli_body(&self.cli)),
            (
                format!("/v1/security-contexts/{}", self.context),
                context_body(&self.context),
            ),
        ]
    }
}

async fn register(control: &Control, token: &str, suffix: &str, base_url: &str) -> Owned {
    let (status, body) = control
        .call(
            "POST",
            "/v1/specs",
            Some(token),
            Some(spec_body(&format!("spec-{suffix}"), base_url)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let spec = body["id"].as_str().unwrap().to_owned();
    let (status, body) = control
        .call(
            "POST",
            "/v1/workflows",
            Some(token),
            Some(workflow_body(&format!("wf-{suffix}"), &spec)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let workflow = body["id"].as_str().unwrap().to_owned();
    let cli = format!("cli-{suffix}");
    let (status, body) = control
        .call("POST", "/v1/cli-tools", Some(token), Some(cli_body(&cli)))
        .await;
    assert_eq!(status, 201, "{body}");
    let context = format!("ctx-{suffix}");
    let (status, body) = control
        .call(
            "POST",
            "/v1/security-contexts",
            Some(token),
            Some(context_body(&context)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    Owned {
        spec,
        workflow,
        cli,
        context,
    }
}

fn assert_mismatch(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("tenant mismatch")),
        "{what}: {body}"
    );
}

async fn count_events(
    db: &aegis_seal_gateway::infrastructure::persistence::Database,
    kind: &str,
) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM gateway_events WHERE event_type = '{kind}'");
    match db {
        aegis_seal_gateway::infrastructure::persistence::Database::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap()
                .get("n")
        }
        aegis_seal_gateway::infrastructure::persistence::Database::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap()
                .get("n")
        }
    }
}

#[tokio::test]
async fn tenants_are_isolated_and_global_objects_belong_to_platform_operators() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let upstream = format!("http://{}", control_support::upstream().await);
    let a = operator(Some("tenant-a"), "operator");
    let b = operator(Some("tenant-b"), "aegis:operator");
    let platform = operator(None, "operator");
    let admin_in_a = operator(Some("tenant-a"), "platform-admin");

    for (backend, url, _dir) in support::both_backends().await {
        let control = Control::start(&url, Default::default(), &jwks.uri, &[]).await;
        let of_a = register(&control, &a, "a", &upstream).await;
        let global = register(&control, &platform, "global", &upstream).await;

        // B can neither read, change nor delete A's objects, on any endpoint.
        for (path, body) in of_a.paths() {
            let (status, reply) = control.call("GET", &path, Some(&b), None).await;
            assert_mismatch(status, &reply, &format!("{backend} B GET {path}"));
            let (status, reply) = control.call("PUT", &path, Some(&b), Some(body)).await;
            assert_mismatch(status, &reply, &format!("{backend} B PUT {path}"));
            let (status, reply) = control.call("DELETE", &path, Some(&b), None).await;
            assert_mismatch(status, &reply, &format!("{backend} B DELETE {path}"));
        }
        let (status, reply) = control
            .call(
                "POST",
                "/v1/explorer",
                Some(&b),
                Some(json!({"execution_id": "x", "api_spec_id": of_a.spec, "operation_id": "getRepo"})),
            )
            .await;
        assert_mismatch(status, &reply, &format!("{backend} B explores A's spec"));
        // B's update of A's spec is refused before its document URL is fetched.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fetch_url = format!("http://{}/openapi.json", listener.local_addr().unwrap());
        let (status, reply) = control
            .call(
                "PUT",
                &format!("/v1/specs/{}", of_a.spec),
                Some(&b),
                Some(
                    json!({"name": "spec-a", "base_url": upstream, "source_fetch_url": fetch_url}),
                ),
            )
            .await;
        assert_mismatch(
            status,
            &reply,
            &format!("{backend} B updates A's spec by URL"),
        );
        let fetched =
            tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
        assert!(
            fetched.is_err(),
            "{backend}: the URL was fetched for a refused update"
        );
        // A global spec that sends the platform's credential is explored by platform operators
        // only: B may read it, not call it with that credential.
        let mut credentialed = spec_body("spec-global-credentialed", &upstream);
        credentialed["credential_path"] = json!({"StaticRef": {"key": "platform/github"}});
        let (status, reply) = control
            .call("POST", "/v1/specs", Some(&platform), Some(credentialed))
            .await;
        assert!(status == 200 || status == 201, "{backend}: {reply}");
        let explore =
            json!({"execution_id": "x", "api_spec_id": reply["id"], "operation_id": "getRepo"});
        let (status, reply) = control
            .call("POST", "/v1/explorer", Some(&b), Some(explore.clone()))
            .await;
        assert_mismatch(
            status,
            &reply,
            &format!("{backend} B explores with the platform's credential"),
        );
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("only a platform operator may explore it"),
            "{backend}: {reply}"
        );
        let (status, reply) = control
            .call("POST", "/v1/explorer", Some(&platform), Some(explore))
            .await;
        assert_ne!(status, 403, "{backend}: the platform may: {reply}");
        // Nor use A's spec for a workflow of its own.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&b),
                Some(workflow_body("wf-b", &of_a.spec)),
            )
            .await;
        assert_mismatch(status, &reply, &format!("{backend} B uses A's spec"));
        // Nor create objects in A's name.
        let mut foreign = cli_body("cli-smuggled");
        foreign["tenant_id"] = json!("tenant-a");
        let (status, reply) = control
            .call("POST", "/v1/cli-tools", Some(&b), Some(foreign))
            .await;
        assert_mismatch(status, &reply, &format!("{backend} B creates for A"));

        // Lists: own and global objects only.
        for (path, own, global_name) in [
            ("/v1/specs", "spec-a", "spec-global"),
            ("/v1/workflows", "wf-a", "wf-global"),
            ("/v1/cli-tools", "cli-a", "cli-global"),
            ("/v1/security-contexts", "ctx-a", "ctx-global"),
        ] {
            let (status, list) = control.call("GET", path, Some(&b), None).await;
            assert_eq!(status, 200, "{backend} {path}: {list}");
            let listed = names(&list);
            assert!(
                !listed.contains(&own.to_owned()),
                "{backend} {path}: {listed:?}"
            );
            assert!(
                listed.contains(&global_name.to_owned()),
                "{backend} {path}: {listed:?}"
            );
            let (_, list) = control.call("GET", path, Some(&a), None).await;
            assert!(names(&list).contains(&own.to_owned()), "{backend} {path}");
        }
        let (_, tools) = control.call("GET", "/v1/tools", Some(&b), None).await;
        let tools = names(&tools);
        assert!(
            tools.contains(&"wf-global".to_owned()) && !tools.contains(&"wf-a".to_owned()),
            "{backend}: {tools:?}"
        );

        // A reads global objects but cannot change or delete them.
        for (path, body) in global.paths() {
            let (status, reply) = control.call("GET", &path, Some(&a), None).await;
            assert_eq!(status, 200, "{backend} A GET {path}: {reply}");
            let (status, reply) = control.call("PUT", &path, Some(&a), Some(body)).await;
            assert_mismatch(status, &reply, &format!("{backend} A PUT {path}"));
            assert!(
                reply["error"].as_str().unwrap().contains("system-global"),
                "{reply}"
            );
            let (status, reply) = control.call("DELETE", &path, Some(&a), None).await;
            assert_mismatch(status, &reply, &format!("{backend} A DELETE {path}"));
        }

        // Names are unique per tenant: B may reuse A's names; A may not register them twice.
        let of_b = register(&control, &b, "a", &upstream).await;
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&a),
                Some(workflow_body("wf-a", &of_a.spec)),
            )
            .await;
        assert_eq!(status, 409, "{backend}: {reply}");
        let (status, reply) = control
            .call(
                "POST",
                "/v1/workflows",
                Some(&a),
                Some(workflow_body("cli-a", &of_a.spec)),
            )
            .await;
        assert_eq!(
            status, 409,
            "{backend}: a workflow may not take a CLI tool's name: {reply}"
        );
        // A tenant's own object shadows a global one of the same name.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/cli-tools",
                Some(&a),
                Some(cli_body("cli-global")),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        let (_, reply) = control
            .call("GET", "/v1/cli-tools/cli-global", Some(&a), None)
            .await;
        assert_eq!(reply["tenant_id"], "tenant-a", "{backend}: {reply}");
        let (_, reply) = control
            .call("GET", "/v1/cli-tools/cli-global", Some(&b), None)
            .await;
        assert_eq!(reply["tenant_id"], Value::Null, "{backend}: {reply}");

        // A changes its own objects; the tenant stays A's (no reset to global on update).
        for (path, body) in of_a.paths() {
            let (status, reply) = control.call("PUT", &path, Some(&a), Some(body)).await;
            assert_eq!(status, 200, "{backend} A PUT {path}: {reply}");
            let (_, reply) = control.call("GET", &path, Some(&a), None).await;
            assert_eq!(reply["tenant_id"], "tenant-a", "{backend} {path}: {reply}");
        }

        // A platform operator (tenant-less, or platform-admin of any tenant) reads and changes
        // every tenant's objects, and the owner stays.
        for token in [&platform, &admin_in_a] {
            let (status, reply) = control
                .call(
                    "GET",
                    &format!("/v1/workflows/{}", of_b.workflow),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{backend}: {reply}");
            let (status, reply) = control
                .call(
                    "PUT",
                    "/v1/cli-tools/cli-a?tenant_id=tenant-b",
                    Some(token),
                    Some(cli_body("cli-a")),
                )
                .await;
            assert_eq!(status, 200, "{backend}: {reply}");
            assert_eq!(
                reply["cli_tool"]["tenant_id"], "tenant-b",
                "{backend}: {reply}"
            );
        }
        let (status, reply) = control
            .call(
                "DELETE",
                "/v1/security-contexts/ctx-a?tenant_id=tenant-b",
                Some(&platform),
                None,
            )
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        // Several tenants hold `cli-a`: the platform operator must say which.
        let (status, reply) = control
            .call("GET", "/v1/cli-tools/cli-a", Some(&platform), None)
            .await;
        assert_eq!(status, 400, "{backend}: {reply}");
        for (path, _) in global.paths().into_iter().rev() {
            if path.starts_with("/v1/specs/") {
                // Its workflow goes first: a spec in use is not deleted.
                let (status, reply) = control.call("DELETE", &path, Some(&platform), None).await;
                assert_eq!(status, 409, "{backend}: {reply}");
                let wf = format!("/v1/workflows/{}", global.workflow);
                assert_eq!(
                    control.call("DELETE", &wf, Some(&platform), None).await.0,
                    200
                );
            }
            if path.starts_with("/v1/workflows/") {
                continue;
            }
            let (status, reply) = control.call("DELETE", &path, Some(&platform), None).await;
            assert_eq!(status, 200, "{backend} platform DELETE {path}: {reply}");
            // `?tenant_id=` (empty): the system-global one, not A's shadowing CLI tool.
            let gone = format!("{path}?tenant_id=");
            let (status, _) = control.call("GET", &gone, Some(&platform), None).await;
            assert_eq!(status, 404, "{backend} {path} is gone");
            // Deleting it again is done already (reference §2.2), and writes no event.
            let newest = || async {
                let query = EventQuery {
                    newest_first: true,
                    limit: 1,
                    ..EventQuery::default()
                };
                control.db.query_events(&query).await.unwrap()[0].id
            };
            let before = newest().await;
            let (status, reply) = control.call("DELETE", &gone, Some(&platform), None).await;
            assert_eq!(
                (status, reply),
                (200, json!({"deleted": true})),
                "{backend} DELETE {path} again"
            );
            assert_eq!(newest().await, before, "{backend} DELETE {path} again");
        }

        // Registrations are audited under the runbook's event names.
        assert!(
            count_events(&control.db, "ApiSpecRegistered").await >= 3,
            "{backend}"
        );
        assert!(
            count_events(&control.db, "WorkflowRegistered").await >= 3,
            "{backend}"
        );
        assert!(
            count_events(&control.db, "CliToolRegistered").await >= 3,
            "{backend}"
        );
        // So are the platform operator's deletions, one event type per kind.
        for deleted in [
            "ApiSpecDeleted",
            "WorkflowDeleted",
            "CliToolDeleted",
            "SecurityContextDeleted",
        ] {
            assert!(
                count_events(&control.db, deleted).await >= 1,
                "{backend}: {deleted}"
            );
        }
        // The runbook's diagnose query sees REST objects with their tenant.
        let sql =
            "SELECT id, name, tenant_id FROM workflows WHERE name = 'wf-a' ORDER BY tenant_id";
        let tenants: Vec<Option<String>> = match &control.db {
            aegis_seal_gateway::infrastructure::persistence::Database::Sqlite(p) => {
                sqlx::query(sql)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get("tenant_id"))
                    .collect()
            }
            aegis_seal_gateway::infrastructure::persistence::Database::Postgres(p) => {
                sqlx::query(sql)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get("tenant_id"))
                    .collect()
            }
        };
        assert_eq!(
            tenants,
            [Some("tenant-b".to_owned())],
            "{backend}: A's was renamed"
        );
        control.shutdown().await;
    }
}

#[tokio::test]
async fn invalid_bodies_are_400_with_the_compile_problem() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) = Control::on_sqlite(&jwks.uri, &[]).await;
    let token = operator(Some("acme"), "operator");
    let (_, spec) = control
        .call(
            "POST",
            "/v1/specs",
            Some(&token),
            Some(spec_body("s", "http://127.0.0.1:9")),
        )
        .await;
    let spec = spec["id"].as_str().unwrap();
    let mut bad_op = workflow_body("w", spec);
    bad_op["steps"][0]["operation_id"] = json!("nope");
    let mut bad_template = workflow_body("w", spec);
    bad_template["steps"][0]["body_template"] = json!("{{#if}}");
    let cases = [
        (
            "/v1/specs",
            json!({"name": "s2", "base_url": "http://x"}),
            "provide inline_json or source_fetch_url",
        ),
        ("/v1/specs", spec_body("s3", "ftp://x"), "base_url"),
        ("/v1/workflows", bad_op, "steps[0].operation_id"),
        ("/v1/workflows", bad_template, "steps[0].body_template"),
        (
            "/v1/workflows",
            workflow_body("w", "no-such-spec"),
            "api_spec_id does not reference",
        ),
        (
            "/v1/cli-tools",
            json!({"name": "c", "docker_image": "i", "allowed_subcommands": []}),
            "allowed_subcommands",
        ),
        (
            "/v1/cli-tools",
            json!({"name": "c", "docker_image": "i", "allowed_subcommands": ["ls"], "default_timeout_seconds": 301}),
            "default_timeout_seconds",
        ),
        ("/v1/security-contexts", json!({"name": "Bad Name"}), "name"),
        (
            "/v1/security-contexts",
            json!({"name": "ok", "capabilities": [{"tool_pattern": "a*b"}]}),
            "capabilities[0].tool_pattern",
        ),
        ("/v1/workflows", json!({"name": 5}), "invalid workflow"),
    ];
    for (path, body, expected) in cases {
        let (status, reply) = control.call("POST", path, Some(&token), Some(body)).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(expected),
            "{path}: {reply}"
        );
    }
    let (status, _) = control
        .client
        .post(format!("{}/v1/specs", control.base))
        .bearer_auth(&token)
        .body("not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 400);
    control.shutdown().await;
}

/// Each entry of `GET /v1/tools` as upstream gives it (reference §2.4.6), with its `tenant_id`:
/// workflows first, then CLI tools, whose schema offers the allowed subcommands.
#[tokio::test]
async fn tool_list_entries_have_upstreams_shape() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = support::snapshot_of(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {name: create-repo}
spec:
  description: creates a repository
  tenant_id: acme
  input_schema: {type: object, properties: {name: {type: string}}, required: [name]}
  api_spec:
    base_url: http://127.0.0.1:9
    openapi: {inline: {openapi: 3.0.0, paths: {/repos: {post: {operationId: createRepo}}}}}
  steps: [{name: create, operation_id: createRepo}]
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {name: lister}
spec: {description: lists files, docker_image: localhost/busybox, allowed_subcommands: [ls, cat]}
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {name: judged}
spec: {docker_image: localhost/busybox, allowed_subcommands: [echo], require_semantic_judge: true}
"#,
    );
    let control = Control::start(&support::sqlite_url(dir.path()), snapshot, &jwks.uri, &[]).await;
    let (status, tools) = control
        .call("GET", "/v1/tools", Some(&operator(None, "operator")), None)
        .await;
    assert_eq!(status, 200, "{tools}");
    let cli_schema = |subcommands: Value| {
        json!({
            "type": "object",
            "properties": {
                "subcommand": {"type": "string", "enum": subcommands},
                "args": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["subcommand"],
        })
    };
    assert_eq!(
        tools,
        json!([
            {"name": "create-repo", "description": "creates a repository", "kind": "workflow",
             "input_schema": {"type": "object", "properties": {"name": {"type": "string"}},
                              "required": ["name"]},
             "tags": ["workflow"], "category": "external", "tenant_id": "acme"},
            {"name": "lister", "description": "lists files", "kind": "cli",
             "input_schema": cli_schema(json!(["ls", "cat"])),
             "tags": ["cli"], "category": "external", "tenant_id": null},
            {"name": "judged", "description": "", "kind": "cli",
             "input_schema": cli_schema(json!(["echo"])),
             "tags": ["cli", "judged"], "category": "external", "tenant_id": null},
        ])
    );
}

#[tokio::test]
async fn a_tenant_registers_at_most_its_quota_of_objects() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let acme = operator(Some("acme"), "operator");
    let globex = operator(Some("globex"), "operator");
    let platform = operator(None, "operator");
    let upstream = "http://127.0.0.1:9";

    for (backend, url, _dir) in support::both_backends().await {
        let mut config = control_support::config(&jwks.uri, &[]);
        config.settings.control.max_objects_per_tenant = 4;
        let control = Control::with_config(&url, Default::default(), config).await;
        // A spec, a workflow, a CLI tool and a context: the quota.
        let owned = register(&control, &acme, "a", upstream).await;

        let refused = [
            ("/v1/specs", spec_body("spec-b", upstream)),
            ("/v1/workflows", workflow_body("wf-b", &owned.spec)),
            ("/v1/cli-tools", cli_body("cli-b")),
            ("/v1/security-contexts", context_body("ctx-b")),
        ];
        for (path, body) in refused {
            let (status, reply) = control.call("POST", path, Some(&acme), Some(body)).await;
            assert_eq!(status, 403, "{backend} {path}: {reply}");
            assert_eq!(
                reply["error"],
                "quota exceeded: tenant \"acme\" has 4 objects registered over REST, as many as \
                 control.max_objects_per_tenant (4) allows; delete some first",
                "{backend} {path}"
            );
        }
        // Changing what it has is not a new object.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&acme),
                Some(context_body(&owned.context)),
            )
            .await;
        assert!(status < 300, "{backend}: {reply}");
        let (status, reply) = control
            .call(
                "PUT",
                &format!("/v1/cli-tools/{}", owned.cli),
                Some(&acme),
                Some(cli_body(&owned.cli)),
            )
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        // Another tenant has a quota of its own, and system-global objects count for nobody.
        register(&control, &globex, "g", upstream).await;
        let (status, reply) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&platform),
                Some(context_body("ctx-global")),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        // A platform operator registering for the tenant is held to its quota too.
        let (status, reply) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&platform),
                Some(json!({"name": "ctx-p", "tenant_id": "acme",
                            "capabilities": [{"tool_pattern": "*"}]})),
            )
            .await;
        assert_eq!(status, 403, "{backend}: {reply}");

        // Room again once one is deleted.
        let (status, reply) = control
            .call(
                "DELETE",
                &format!("/v1/security-contexts/{}", owned.context),
                Some(&acme),
                None,
            )
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        let (status, reply) = control
            .call(
                "POST",
                "/v1/security-contexts",
                Some(&acme),
                Some(context_body("ctx-b")),
            )
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        control.shutdown().await;
    }
}
