//! The reconciler against kube's mock API (`tower-test`): every request it makes, in order, and
//! the bodies that matter. Each test is bounded by timeouts, so a missing answer fails, not hangs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::timeout;

use super::*;
use crate::fixtures::{self, GW, IMAGE, NS};

const SEAL: &str = "/apis/seal.100monkeys.ai/v1/namespaces/tools";
const CORE: &str = "/api/v1/namespaces/tools";
const APPLY: &str = "fieldManager=aegis-seal-operator&force=true";
const SHARD_SELECTOR: &str = "labelSelector=seal.100monkeys.ai%2Fsnapshot-of%3Dedge";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/tools/events";

/// One request as the fake API server received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

/// A scripted API server: lists, objects whose status may be patched, and a Deployment status.
#[derive(Clone, Default)]
struct Fake {
    lists: HashMap<String, Vec<Value>>,
    objects: HashMap<String, Value>,
    deployment_status: Value,
    /// Paths whose apply the API server refuses: its status code and message.
    refused: HashMap<String, (u16, String)>,
}

impl Fake {
    fn new(workflows: Vec<Value>) -> Self {
        let mut fake = Self {
            deployment_status: json!({
                "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                "availableReplicas": 1
            }),
            ..Default::default()
        };
        for wf in &workflows {
            let name = wf["metadata"]["name"].as_str().unwrap();
            fake.objects
                .insert(format!("{SEAL}/workflows/{name}"), wf.clone());
        }
        fake.lists.insert(format!("{SEAL}/workflows"), workflows);
        fake.lists.insert(format!("{SEAL}/clitools"), vec![]);
        fake.lists
            .insert(format!("{SEAL}/securitycontexts"), vec![]);
        fake.lists.insert(format!("{CORE}/configmaps"), vec![]);
        fake.objects.insert(
            format!("{SEAL}/sealgateways/{GW}"),
            fixtures::gateway_json(json!({})),
        );
        fake
    }

    fn respond(&self, r: &Seen) -> (StatusCode, Value) {
        match r.method.as_str() {
            "GET" => {
                if let Some(items) = self.lists.get(&r.path) {
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List",
                               "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                } else if let Some(obj) = self.objects.get(&r.path) {
                    (StatusCode::OK, obj.clone())
                } else {
                    not_found(&r.path)
                }
            }
            "PATCH" if self.refused.contains_key(&r.path) => {
                let (code, message) = &self.refused[&r.path];
                (
                    StatusCode::from_u16(*code).unwrap(),
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "reason": "Invalid", "code": code, "message": message, "metadata": {}}),
                )
            }
            "PATCH" => match r.path.strip_suffix("/status") {
                Some(path) => match self.objects.get(path) {
                    Some(obj) => {
                        let mut obj = obj.clone();
                        obj["status"] = r.body["status"].clone();
                        (StatusCode::OK, obj)
                    }
                    None => not_found(path),
                },
                None => {
                    let mut obj = r.body.clone();
                    if obj["kind"] == "Deployment" {
                        obj["metadata"]["generation"] = json!(1);
                        obj["status"] = self.deployment_status.clone();
                    }
                    (StatusCode::OK, obj)
                }
            },
            "POST" => (StatusCode::CREATED, r.body.clone()),
            "DELETE" => (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": r.path.rsplit('/').next(), "namespace": NS}}),
            ),
            _ => not_found(&r.path),
        }
    }
}

/// The query's parameters, sorted (kube writes them in its own order, with a leading `&`).
fn normalized_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
               "code": 404, "message": format!("{path} not found"), "metadata": {}}),
    )
}

/// Runs one reconcile of `gw` against `fake`; returns its result and every request, in order.
async fn run(gw: Value, fake: Fake) -> (Result<Action, ReconcileError>, Vec<Seen>) {
    let gw: SealGateway = serde_json::from_value(gw).unwrap();
    let (result, seen) = against(fake, |ctx| async move {
        let result = reconcile(Arc::new(gw), ctx.clone()).await;
        assert_eq!(ctx.metrics.reconciles(), 1);
        result
    })
    .await;
    (result, seen)
}

/// Runs `f` with a context whose client talks to `fake`; returns its result and every request.
async fn against<T, Fut: Future<Output = T>>(
    fake: Fake,
    f: impl FnOnce(Arc<Context>) -> Fut,
) -> (T, Vec<Seen>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let r = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: normalized_query(parts.uri.query().unwrap_or_default()),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, answer) = fake.respond(&r);
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            seen.push(r);
        }
        seen
    });
    let client = Client::new(svc, "default");
    let ctx = Arc::new(Context::new(
        client,
        IMAGE,
        Some("operator-0".into()),
        Arc::default(),
    ));
    let result = timeout(Duration::from_secs(20), f(ctx))
        .await
        .expect("it did not finish");
    let seen = timeout(Duration::from_secs(5), server)
        .await
        .expect("the client was not released")
        .unwrap();
    (result, seen)
}

fn workflows() -> Vec<Value> {
    let good = fixtures::workflow_json("good", "Create a repository");
    let mut bad = fixtures::workflow_json("bad", "Broken");
    bad["spec"]["steps"][1]["operation_id"] = json!("deleteRepo");
    bad["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
    vec![good, bad]
}

/// The requests every accepted reconcile makes before it writes statuses.
fn reads_and_applies() -> Vec<String> {
    [
        format!("GET {SEAL}/workflows"),
        format!("GET {SEAL}/clitools"),
        format!("GET {SEAL}/securitycontexts"),
        format!("PATCH {CORE}/serviceaccounts/{GW}?{APPLY}"),
        format!("PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{GW}?{APPLY}"),
        format!(
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{GW}?{APPLY}"
        ),
        format!("PATCH {CORE}/configmaps/{GW}-config?{APPLY}"),
        format!("PATCH {CORE}/services/{GW}?{APPLY}"),
        format!("PATCH /apis/apps/v1/namespaces/{NS}/deployments/{GW}?{APPLY}"),
        format!("PATCH /apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{GW}?{APPLY}"),
        format!("GET {CORE}/configmaps?{SHARD_SELECTOR}"),
    ]
    .into()
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn first_reconcile_applies_everything_and_reports_each_workflow() {
    let (result, seen) = run(fixtures::gateway_json(json!({})), Fake::new(workflows())).await;
    let action = result.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));

    let mut expected = reads_and_applies();
    expected.extend([
        format!("PATCH {SEAL}/workflows/good/status?{APPLY}"),
        format!("PATCH {SEAL}/workflows/bad/status?{APPLY}"),
        format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(lines(&seen), expected);

    // Every write is a server-side apply.
    for r in seen.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(
            r.content_type,
            "application/apply-patch+yaml",
            "{}",
            r.line()
        );
    }
    let kinds: Vec<_> = seen[3..10]
        .iter()
        .map(|r| r.body["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget"
        ]
    );
    for r in &seen[3..10] {
        assert_eq!(
            r.body["metadata"]["ownerReferences"][0]["kind"],
            "SealGateway"
        );
        assert_eq!(r.body["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let cm = &seen[6].body;
    assert_eq!(cm["apiVersion"], "v1");
    assert!(
        cm["data"]["seal-gateway-config.yaml"]
            .as_str()
            .unwrap()
            .contains("kind: SealGatewayConfig")
    );
    let index: Value =
        serde_json::from_str(cm["data"]["snapshot-index.json"].as_str().unwrap()).unwrap();
    let snapshot_hash = index["snapshot_hash"].as_str().unwrap().to_owned();
    assert_eq!(
        cm["metadata"]["annotations"]["seal.100monkeys.ai/snapshot-hash"],
        snapshot_hash.as_str()
    );
    assert!(cm["binaryData"]["snapshot.json.gz.0"].is_string());
    let deploy = &seen[8].body;
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );
    assert!(
        deploy["spec"]["template"]["metadata"]["annotations"]["seal.100monkeys.ai/restart-hash"]
            .is_string()
    );

    let good = &seen[11].body;
    assert_eq!(good["apiVersion"], "seal.100monkeys.ai/v1");
    assert_eq!(good["kind"], "Workflow");
    let status = &good["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["reason"], "Accepted");
    assert_eq!(accepted["observedGeneration"], 2);
    assert!(accepted["lastTransitionTime"].is_string());
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["tool_name"], "good");
    assert_eq!(status["gateways"], json!(["tools/edge"]));

    let status = &seen[12].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Invalid");
    assert_eq!(
        accepted["message"],
        "spec.steps[1].operation_id: operationId \"deleteRepo\" is not defined in the OpenAPI document"
    );
    assert_eq!(status["tool_name"], "bad");
    assert!(
        status.get("gateways").is_none(),
        "a rejected workflow is not served"
    );

    let gw = &seen[13].body;
    assert_eq!(gw["kind"], "SealGateway");
    let status = &gw["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 3);
    assert_eq!(
        accepted["message"],
        "serving 1 workflows, 0 CLI tools and 0 security contexts; 1 selected resources rejected"
    );
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "DataPlaneReady");
    let runnable = condition(status, "CliToolsRunnable");
    assert_eq!(
        (&runnable["status"], &runnable["reason"]),
        (&json!("True"), &json!("NoCliTools"))
    );
    assert_eq!(status["snapshot_hash"], snapshot_hash.as_str());
    assert_eq!(status["workflows"], 1);
    assert_eq!(status["cli_tools"], 0);
    assert_eq!(status["ready_replicas"], 1);
    assert_eq!(status["observedGeneration"], 3);

    let events: Vec<_> = seen[14..]
        .iter()
        .map(|r| {
            let b = &r.body;
            assert_eq!(b["reportingController"], "aegis-seal-operator");
            assert_eq!(b["reportingInstance"], "operator-0");
            (
                b["type"].as_str().unwrap(),
                b["reason"].as_str().unwrap(),
                b["regarding"]["kind"].as_str().unwrap(),
                b["regarding"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("Warning", "Rejected", "Workflow", "bad"),
            ("Normal", "Ready", "SealGateway", GW),
            ("Normal", "SnapshotPublished", "SealGateway", GW),
        ]
    );
    assert!(
        seen[14].body["note"]
            .as_str()
            .unwrap()
            .contains("deleteRepo")
    );
}

/// The objects as the first reconcile left them: statuses included.
fn after_first_reconcile(seen: &[Seen]) -> (Value, Vec<Value>) {
    let status_of = |path: String| {
        seen.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no write to {path}"))
            .body["status"]
            .clone()
    };
    let mut gw = fixtures::gateway_json(json!({}));
    gw["status"] = status_of(format!("{SEAL}/sealgateways/{GW}/status"));
    let workflows = workflows()
        .into_iter()
        .map(|mut wf| {
            let name = wf["metadata"]["name"].as_str().unwrap().to_owned();
            wf["status"] = status_of(format!("{SEAL}/workflows/{name}/status"));
            wf
        })
        .collect();
    (gw, workflows)
}

#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_writes_no_status() {
    let (first, seen) = run(fixtures::gateway_json(json!({})), Fake::new(workflows())).await;
    first.unwrap();
    let (gw, workflows) = after_first_reconcile(&seen);

    let (second, seen_again) = run(gw, Fake::new(workflows)).await;
    second.unwrap();
    // Applies are idempotent on the server; status writes and events would not be.
    assert_eq!(lines(&seen_again), reads_and_applies());
    // The same bytes are applied again.
    for (a, b) in seen[3..11].iter().zip(&seen_again[3..11]) {
        assert_eq!(a.body, b.body, "{}", a.line());
    }
}

#[tokio::test]
async fn a_changed_workflow_is_the_only_status_written() {
    let (_, seen) = run(fixtures::gateway_json(json!({})), Fake::new(workflows())).await;
    let (gw, mut workflows) = after_first_reconcile(&seen);
    // The broken workflow is fixed (a new generation).
    workflows[1]["spec"]["steps"][1]["operation_id"] = json!("getRepo");
    workflows[1]["metadata"]["generation"] = json!(3);

    let (result, seen) = run(gw, Fake::new(workflows)).await;
    result.unwrap();
    let mut expected = reads_and_applies();
    expected.extend([
        format!("PATCH {SEAL}/workflows/bad/status?{APPLY}"),
        format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(lines(&seen), expected);
    let accepted = condition(&seen[11].body["status"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 3);
    assert_eq!(seen[11].body["status"]["gateways"], json!(["tools/edge"]));
    assert_eq!(seen[12].body["status"]["workflows"], 2);
    let reasons: Vec<_> = seen[13..]
        .iter()
        .map(|r| r.body["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("Accepted"), json!("SnapshotPublished")]);
}

/// An object the API server refuses for good (here limits below requests) is reported on the
/// gateway like a refused spec, with the server's words, instead of a retry loop under a status
/// that still claims the last success.
#[tokio::test]
async fn an_object_the_api_server_refuses_is_reported_on_the_gateway() {
    let mut fake = Fake::new(workflows());
    let message = "Deployment.apps \"edge\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"1Gi\": must be less than or equal to memory limit of 512Mi";
    fake.refused.insert(
        format!("/apis/apps/v1/namespaces/{NS}/deployments/{GW}"),
        (422, message.into()),
    );
    let (result, seen) = run(fixtures::gateway_json(json!({})), fake).await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    let mut expected: Vec<String> = reads_and_applies()
        .into_iter()
        .take_while(|line| !line.contains("/poddisruptionbudgets/"))
        .collect();
    expected.extend([
        // Nothing new is served: only the workflow that does not compile is told so.
        format!("PATCH {SEAL}/workflows/bad/status?{APPLY}"),
        format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(lines(&seen), expected);
    let status = &seen[expected.len() - 3].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "ApplyRefused");
    assert!(
        accepted["message"].as_str().unwrap().contains(message),
        "{accepted}"
    );
}

#[tokio::test]
async fn replicas_on_sqlite_are_refused_as_a_condition_without_applying() {
    let gw = fixtures::gateway_json(json!({"replicas": 2}));
    let (result, seen) = run(gw, Fake::new(workflows())).await;
    result.unwrap();
    assert_eq!(
        lines(&seen),
        [
            format!("GET {SEAL}/workflows"),
            format!("GET {SEAL}/clitools"),
            format!("GET {SEAL}/securitycontexts"),
            // Only the workflow that does not compile: the good one is not served by a gateway
            // that applied nothing.
            format!("PATCH {SEAL}/workflows/bad/status?{APPLY}"),
            format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let status = &seen[4].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "ReplicasRequirePostgres");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.replicas is 2, but the database is SQLite (sqlite://gateway.db)")
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    let events: Vec<_> = seen[5..]
        .iter()
        .map(|r| {
            (
                r.body["reason"].clone(),
                r.body["regarding"]["kind"].clone(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            (json!("Rejected"), json!("Workflow")),
            (json!("Rejected"), json!("SealGateway")),
        ]
    );
}

#[tokio::test]
async fn shards_no_longer_needed_are_deleted_and_deselected_resources_let_go() {
    let mut fake = Fake::new(vec![]);
    fake.lists.insert(
        format!("{CORE}/configmaps"),
        vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "edge-snapshot-1", "namespace": NS}})],
    );
    // A workflow this gateway served, whose label no longer matches its selector.
    let mut wf = fixtures::workflow_json("old", "x");
    wf["metadata"]["labels"] = json!({"team": "b"});
    wf["status"] = json!({"tool_name": "old", "gateways": ["other/gw", "tools/edge"]});
    fake.objects
        .insert(format!("{SEAL}/workflows/old"), wf.clone());
    fake.lists.insert(format!("{SEAL}/workflows"), vec![wf]);

    let gw = fixtures::gateway_json(
        json!({"resource_selector": {"selector": {"matchLabels": {"team": "a"}}}}),
    );
    let (result, seen) = run(gw, fake).await;
    result.unwrap();
    let mut expected = reads_and_applies();
    expected.extend([
        format!("DELETE {CORE}/configmaps/edge-snapshot-1"),
        format!("PATCH {SEAL}/workflows/old/status?{APPLY}"),
        format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
        format!("POST {EVENTS}"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(lines(&seen), expected);
    // Written before `acceptance` existed: the other gateway, which served it, is kept as such.
    let status = &seen[12].body["status"];
    assert_eq!(status["gateways"], json!(["other/gw"]));
    assert_eq!(
        status["acceptance"],
        json!([{"gateway": "other/gw", "accepted": true}])
    );
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(status["tool_name"], "old");
}

#[tokio::test]
async fn a_changed_spec_lets_go_of_resources_outside_the_new_scope() {
    const ALL: &str = "/apis/seal.100monkeys.ai/v1";
    // The gateway selected every namespace when it last reconciled (generation 2), and now
    // (generation 3) selects only its own: a workflow it served in `other` must let it go.
    let mut gw = fixtures::gateway_json(json!({}));
    gw["status"] = json!({"observedGeneration": 2});
    let mut far = fixtures::workflow_json("far", "x");
    far["metadata"]["namespace"] = json!("other");
    far["status"] = json!({"tool_name": "far", "gateways": ["tools/edge"],
                           "acceptance": [{"gateway": "tools/edge", "accepted": true}]});
    let mut fake = Fake::new(vec![]);
    fake.objects
        .insert(format!("{ALL}/namespaces/other/workflows/far"), far.clone());
    fake.lists.insert(format!("{ALL}/workflows"), vec![far]);
    fake.lists.insert(format!("{ALL}/clitools"), vec![]);
    fake.lists.insert(format!("{ALL}/securitycontexts"), vec![]);
    let (result, seen) = run(gw, fake).await;
    result.unwrap();
    assert_eq!(
        lines(&seen[..3]),
        [
            format!("GET {ALL}/workflows"),
            format!("GET {ALL}/clitools"),
            format!("GET {ALL}/securitycontexts"),
        ]
    );
    let patched = seen
        .iter()
        .find(|r| r.path == format!("{ALL}/namespaces/other/workflows/far/status"))
        .expect("the far workflow's status is written");
    let status = &patched.body["status"];
    assert!(status.get("gateways").is_none(), "{status}");
    assert!(status.get("acceptance").is_none(), "{status}");
    assert!(status.get("conditions").is_none(), "{status}");

    // Once the status says the spec was seen, the gateway lists its own namespace again.
    let mut gw = fixtures::gateway_json(json!({}));
    gw["status"] = json!({"observedGeneration": 3});
    let (result, seen) = run(gw, Fake::new(vec![])).await;
    result.unwrap();
    assert_eq!(seen[0].line(), format!("GET {SEAL}/workflows"));
}

#[tokio::test]
async fn referenced_config_maps_are_read_and_remembered() {
    let mut wf = fixtures::workflow_json("spec-from-cm", "x");
    wf["spec"]["api_spec"]["openapi"] =
        json!({"config_map_ref": {"name": "example-openapi", "key": "openapi.json"}});
    let mut fake = Fake::new(vec![wf]);
    fake.objects.insert(
        format!("{CORE}/configmaps/example-openapi"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "example-openapi", "namespace": NS},
               "data": {"openapi.json": fixtures::openapi_doc().to_string()}}),
    );
    let (result, seen) = run(fixtures::gateway_json(json!({})), fake).await;
    result.unwrap();
    assert_eq!(
        seen[3].line(),
        format!("GET {CORE}/configmaps/example-openapi")
    );
    let status = &seen
        .iter()
        .find(|r| r.path.ends_with("/workflows/spec-from-cm/status"))
        .unwrap()
        .body["status"];
    assert_eq!(condition(status, "Accepted")["status"], "True");
}

#[tokio::test]
async fn openapi_urls_are_fetched_and_a_failed_fetch_rejects_only_its_workflow() {
    let (base, hits) = fixtures::document_server().await;
    let mut by_url = fixtures::workflow_json("by-url", "x");
    by_url["spec"]["api_spec"]["openapi"] = json!({"url": format!("{base}/openapi.json")});
    let mut gone = fixtures::workflow_json("gone", "y");
    gone["spec"]["api_spec"]["openapi"] = json!({"url": format!("{base}/missing")});
    let (result, seen) = run(
        fixtures::gateway_json(json!({})),
        Fake::new(vec![by_url, gone]),
    )
    .await;
    result.unwrap();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    let status = |name: &str| {
        seen.iter()
            .find(|r| r.path.ends_with(&format!("/workflows/{name}/status")))
            .unwrap()
            .body["status"]
            .clone()
    };
    assert_eq!(condition(&status("by-url"), "Accepted")["status"], "True");
    assert_eq!(
        condition(&status("gone"), "Accepted")["message"],
        format!("spec.api_spec.openapi.url: could not fetch {base}/missing: HTTP 404 Not Found")
    );
    assert_eq!(status("by-url")["gateways"], json!(["tools/edge"]));
}

#[tokio::test]
async fn a_missing_config_map_rejects_the_workflow_not_the_reconcile() {
    let mut wf = fixtures::workflow_json("needs-cm", "x");
    wf["spec"]["api_spec"]["openapi"] =
        json!({"config_map_ref": {"name": "absent", "key": "openapi.json"}});
    let (result, seen) = run(fixtures::gateway_json(json!({})), Fake::new(vec![wf])).await;
    result.unwrap();
    assert_eq!(seen[3].line(), format!("GET {CORE}/configmaps/absent"));
    let status = &seen
        .iter()
        .find(|r| r.path.ends_with("/workflows/needs-cm/status"))
        .unwrap()
        .body["status"];
    assert_eq!(
        condition(status, "Accepted")["message"],
        "spec.api_spec.openapi.config_map_ref: ConfigMap tools/absent not found"
    );
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_and_backs_off() {
    let mut fake = Fake::new(vec![]);
    fake.lists.remove(&format!("{SEAL}/clitools"));
    let (result, seen) = run(fixtures::gateway_json(json!({})), fake).await;
    let err = result.unwrap_err();
    assert!(err.to_string().starts_with("listing CliTools: "), "{err}");
    assert_eq!(seen.len(), 2);

    let (svc, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(svc, "default"),
        IMAGE,
        None,
        Arc::default(),
    ));
    let gw: Arc<SealGateway> = Arc::new(fixtures::gateway(json!({})));
    let waits: Vec<_> = (0..4)
        .map(|_| error_policy(gw.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        waits,
        [2, 4, 8, 16].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert_eq!(backoff(30), BACKOFF_MAX);
}

/// A gateway deleted while no operator watched sent no Delete event: once the gateways are
/// listed again, every status that still names an absent one lets it go.
#[tokio::test]
async fn gateways_deleted_while_no_operator_watched_are_released_after_a_relist() {
    const ALL: &str = "/apis/seal.100monkeys.ai/v1";
    let mut wf = fixtures::workflow_json("kept", "x");
    wf["status"] = json!({"tool_name": "kept", "gateways": ["tools/edge", "gone/gw"],
                          "acceptance": [{"gateway": "tools/edge", "accepted": true},
                                         {"gateway": "gone/gw", "accepted": true}]});
    let mut fake = Fake::new(vec![]);
    fake.objects
        .insert(format!("{SEAL}/workflows/kept"), wf.clone());
    fake.lists.insert(format!("{ALL}/workflows"), vec![wf]);
    fake.lists.insert(format!("{ALL}/clitools"), vec![]);
    fake.lists.insert(format!("{ALL}/securitycontexts"), vec![]);
    let present = BTreeSet::from(["tools/edge".to_owned()]);
    let (result, seen) = against(fake, |ctx| async move {
        let result = release_absent(&ctx, &present).await;
        assert!(!ctx.gateway_exists("gone/gw"));
        result
    })
    .await;
    result.unwrap();
    let patches: Vec<&Seen> = seen.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{:?}", lines(&seen));
    assert_eq!(patches[0].path, format!("{SEAL}/workflows/kept/status"));
    let status = &patches[0].body["status"];
    assert_eq!(status["gateways"], json!(["tools/edge"]));
    assert_eq!(
        status["acceptance"],
        json!([{"gateway": "tools/edge", "accepted": true}])
    );
}

#[tokio::test]
async fn every_namespace_serves_only_the_tenant_the_gateway_binds_it_to() {
    const ALL: &str = "/apis/seal.100monkeys.ai/v1";
    // team-a is bound to acme. One workflow there names acme; one in team-b (bound to nothing)
    // names acme too, and would put its tool into acme's catalog if its tenant_id were trusted.
    let in_namespace = |ns: &str, name: &str| {
        let mut wf = fixtures::workflow_json(name, "x");
        wf["metadata"]["namespace"] = json!(ns);
        wf["spec"]["tenant_id"] = json!("acme");
        wf
    };
    let ours = in_namespace("team-a", "ours");
    let squatter = in_namespace("team-b", "squatter");
    let mut fake = Fake::new(vec![]);
    for wf in [&ours, &squatter] {
        let (ns, name) = (
            wf["metadata"]["namespace"].as_str().unwrap(),
            wf["metadata"]["name"].as_str().unwrap(),
        );
        fake.objects.insert(
            format!("{ALL}/namespaces/{ns}/workflows/{name}"),
            wf.clone(),
        );
    }
    fake.lists
        .insert(format!("{ALL}/workflows"), vec![ours, squatter]);
    fake.lists.insert(format!("{ALL}/clitools"), vec![]);
    fake.lists.insert(format!("{ALL}/securitycontexts"), vec![]);
    let gw = fixtures::gateway_json(json!({"resource_selector": {
        "namespaces": "All", "namespace_tenants": {"team-a": "acme"}
    }}));
    let (result, seen) = run(gw, fake).await;
    result.unwrap();

    let status_of = |ns: &str, name: &str| {
        let path = format!("{ALL}/namespaces/{ns}/workflows/{name}/status");
        seen.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no status written for {ns}/{name}"))
            .body["status"]
            .clone()
    };
    let accepted = condition(&status_of("team-a", "ours"), "Accepted").clone();
    assert_eq!(accepted["status"], "True", "{accepted}");
    let refused = condition(&status_of("team-b", "squatter"), "Accepted").clone();
    assert_eq!(refused["status"], "False", "{refused}");
    assert_eq!(
        refused["message"],
        "metadata.namespace: namespace \"team-b\" is bound to no tenant: the gateway serves \
         resources outside its own namespace \"tools\" only from the namespaces its \
         spec.resource_selector.namespace_tenants binds"
    );
    let gateway = seen
        .iter()
        .find(|r| r.path == format!("{SEAL}/sealgateways/{GW}/status"))
        .expect("the gateway's status is written");
    assert_eq!(gateway.body["status"]["workflows"], 1);
}

#[tokio::test]
async fn binding_namespaces_without_selecting_them_is_refused() {
    let gw = fixtures::gateway_json(json!({"resource_selector": {
        "namespace_tenants": {"team-a": "acme"}
    }}));
    let (result, seen) = run(gw, Fake::new(vec![])).await;
    result.unwrap();
    assert_eq!(
        lines(&seen),
        [
            format!("PATCH {SEAL}/sealgateways/{GW}/status?{APPLY}"),
            format!("POST {EVENTS}"),
        ]
    );
    let accepted = condition(&seen[0].body["status"], "Accepted").clone();
    assert_eq!(accepted["reason"], "InvalidSelector");
    assert_eq!(
        accepted["message"],
        "spec.resource_selector.namespace_tenants: binds namespaces the gateway does not \
         select: it needs namespaces: All"
    );
}
