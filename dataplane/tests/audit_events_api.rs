//! `GET /v1/events` on both backends, behind real operator JWT authentication (a JWKS endpoint on
//! 127.0.0.1): filters, cursor pagination and tenant scoping.

mod support;

use std::collections::BTreeSet;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, GatewayConfig, load_config};
use aegis_seal_gateway::infrastructure::persistence::{AuditEvent, Database};
use bytes::Bytes;
use chrono::{Duration, SecondsFormat, Utc};
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "aegis-keycloak";
const AUDIENCE: &str = "aegis-seal-gateway";

/// PKCS#8 v1 for an Ed25519 seed (the fixed 16-byte prefix, then the seed): the form
/// `jsonwebtoken` derives a JWK from.
fn signing_key() -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[9u8; 32]);
    EncodingKey::from_ed_der(&der)
}

/// Serves a JWKS holding the operator token key; returns its URI.
async fn jwks_server() -> String {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&signing_key(), Algorithm::EdDSA).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    jwk["use"] = json!("sig");
    let body = json!({"keys": [jwk]}).to_string();
    let addr = support::serve(move |_req| {
        let body = body.clone();
        async move {
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        }
    })
    .await;
    format!("http://{addr}/certs")
}

/// An operator token; `tenant` makes it a tenant operator.
fn token(tenant: Option<&str>) -> String {
    let mut claims = json!({
        "sub": "ops", "iss": ISSUER, "aud": AUDIENCE, "aegis_role": "operator",
        "exp": Utc::now().timestamp() + 600,
    });
    if let Some(t) = tenant {
        claims["tenant_id"] = json!(t);
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, &signing_key()).unwrap()
}

fn config(jwks_uri: &str) -> GatewayConfig {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SEAL_GATEWAY_BIND", "127.0.0.1:0"),
        ("SEAL_GATEWAY_AUTH_DISABLED", "false"),
        ("SEAL_GATEWAY_OPERATOR_JWKS_URI", jwks_uri),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_config(&ConfigSources {
        explicit: None,
        env: &lookup,
        home: Some(dir.path().to_path_buf()),
        working_dir: dir.path().to_path_buf(),
    })
    .unwrap()
}

fn event(
    event_type: &'static str,
    execution_id: &str,
    tenant: Option<&str>,
    hours_ago: i64,
) -> AuditEvent {
    let mut payload = json!({"execution_id": execution_id});
    if let Some(t) = tenant {
        payload["tenant_id"] = json!(t);
    }
    let mut e = AuditEvent::from_json(event_type, payload);
    e.created_at = Utc::now() - Duration::hours(hours_ago);
    e
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, query: &str, tenant: Option<Option<&str>>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}/v1/events?{query}", self.base));
        if let Some(tenant) = tenant {
            request = request.bearer_auth(token(tenant));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Every page of `query`, following `next_cursor`; the ids in the order served.
    async fn all_pages(&self, query: &str, tenant: Option<&str>) -> (Vec<i64>, usize) {
        let mut ids = Vec::new();
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.to_owned(),
            };
            let (status, body) = self.get(&q, Some(tenant)).await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            ids.extend(
                body["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_i64().unwrap()),
            );
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return (ids, pages),
            }
        }
    }
}

/// One field of every event of a page.
fn field(body: &Value, name: &str) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            // Row columns first, else the payload's field.
            let value = e.get(name).unwrap_or(&e["payload"][name]);
            value.as_str().unwrap_or("<null>").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn events_are_filtered_paginated_and_scoped_by_tenant() {
    let jwks = jwks_server().await;
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let mut events = vec![
            event("ToolCallAuthorized", "exec-a", Some("acme"), 3),
            event("ToolCallAuthorized", "exec-a", Some("acme"), 2),
            event("WorkflowInvocationFailed", "exec-b", Some("globex"), 2),
            event("ToolCallAuthorized", "exec-a", Some("acme"), 1),
            event("WorkflowInvocationFailed", "exec-b", Some("globex"), 1),
            event("SessionRevoked", "exec-c", None, 1),
        ];
        events.extend((0..250).map(|_| event("ToolCallAuthorized", "exec-bulk", Some("acme"), 0)));
        db.append_events(&events).await.unwrap();

        let gateway = RunningGateway::start(
            &config(&jwks),
            db.clone(),
            Snapshot::default(),
            Clock::System,
        )
        .await
        .unwrap();
        let client = Client {
            http: reqwest::Client::new(),
            base: format!("http://{}", gateway.local_addr),
        };
        let platform = Some(None);
        let acme = Some(Some("acme"));

        // Without a token: the operator auth refusal.
        assert_eq!(client.get("", None).await.0, 401, "{backend}");

        // Newest first, 100 by default, with the row's hash chain fields.
        let (status, body) = client.get("", platform).await;
        assert_eq!(status, 200, "{backend}: {body}");
        let page = body["events"].as_array().unwrap();
        assert_eq!(page.len(), 100, "{backend}");
        assert_eq!(page[0]["id"], 256, "{backend}");
        assert_eq!(page[0]["hash"].as_str().unwrap().len(), 64, "{backend}");
        assert_eq!(page[0]["prev_hash"], page[1]["hash"], "{backend}");
        assert!(body["next_cursor"].is_string(), "{backend}");

        let (_, body) = client
            .get("event_type=WorkflowInvocationFailed", platform)
            .await;
        assert_eq!(field(&body, "tenant_id"), ["globex", "globex"], "{backend}");
        assert!(body["next_cursor"].is_null(), "{backend}");

        let (_, body) = client.get("execution_id=exec-a&order=asc", platform).await;
        let times = field(&body, "created_at");
        assert_eq!(times.len(), 3, "{backend}: {body}");
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{backend}: {times:?}"
        );

        let at = |hours: i64, minutes: i64| {
            (Utc::now() - Duration::hours(hours) - Duration::minutes(minutes))
                .to_rfc3339_opts(SecondsFormat::Secs, true)
                .replace('+', "%2B")
        };
        let (_, body) = client
            .get(
                &format!("execution_id=exec-a&since={}", at(2, 30)),
                platform,
            )
            .await;
        assert_eq!(field(&body, "execution_id").len(), 2, "{backend}: {body}");
        let (_, body) = client
            .get(
                &format!("tenant=acme&since={}&until={}", at(3, 30), at(1, 30)),
                platform,
            )
            .await;
        assert_eq!(
            field(&body, "execution_id"),
            ["exec-a", "exec-a"],
            "{backend}: {body}"
        );

        // Pagination: every row exactly once, in order, both ways.
        for (order, sorted) in [("desc", false), ("asc", true)] {
            let (ids, pages) = client
                .all_pages(&format!("execution_id=exec-bulk&order={order}"), None)
                .await;
            assert_eq!(pages, 3, "{backend} {order}");
            assert_eq!(ids.len(), 250, "{backend} {order}");
            assert_eq!(
                ids.iter().collect::<BTreeSet<_>>().len(),
                250,
                "{backend} {order}"
            );
            let mut expected = ids.clone();
            expected.sort_unstable();
            if !sorted {
                expected.reverse();
            }
            assert_eq!(ids, expected, "{backend} {order}");
        }
        let (ids, pages) = client.all_pages("limit=1000", None).await;
        assert_eq!((ids.len(), pages), (256, 1), "{backend}");

        // A tenant operator sees its own tenant's events and nothing else.
        let (ids, _) = client.all_pages("limit=1000", Some("acme")).await;
        assert_eq!(ids.len(), 253, "{backend}");
        let (_, body) = client
            .get("event_type=WorkflowInvocationFailed", acme)
            .await;
        assert_eq!(body["events"], json!([]), "{backend}");
        let (_, body) = client.get("event_type=SessionRevoked", acme).await;
        assert_eq!(body["events"], json!([]), "{backend}");
        let (status, body) = client.get("tenant_id=acme&limit=1", acme).await;
        assert_eq!(
            (status, field(&body, "tenant_id")),
            (200, vec!["acme".to_owned()]),
            "{backend}"
        );
        let (status, body) = client.get("tenant_id=globex", acme).await;
        assert_eq!(status, 403, "{backend}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("tenant mismatch"),
            "{backend}"
        );

        for bad in [
            "limit=0",
            "limit=1001",
            "since=yesterday",
            "cursor=abc",
            "colour=red",
        ] {
            assert_eq!(client.get(bad, platform).await.0, 400, "{backend}: {bad}");
        }
        gateway.shutdown().await;
    }
}
