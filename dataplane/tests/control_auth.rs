//! Operator JWT authentication of the REST control plane, through the gateway's HTTP listener,
//! against a real JWKS endpoint: every refusal is a 401 whose body names the failed check, keys
//! rotate without a restart, a failing IdP is bridged by the cached key set, and an IdP that was
//! never reachable answers 503. A read-only role's write is a 403. Also the OpenAPI document and
//! its page, served without a token.

mod control_support;
mod support;

use control_support::{
    AUDIENCE, Control, JwksServer, KEY_1, KEY_2, claims, ed_jwk, ed_token, now, operator,
    rs256_token, standard_jwks,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn assert_refused(status: u16, body: &Value, check: &str) {
    assert_eq!(status, 401, "{check}: {body}");
    assert_eq!(body["error"], "unauthorized", "{check}: {body}");
    assert_eq!(body["check"], check, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// `operator_read_only_roles` through the listener: an auditor's token reads every operator
/// endpoint it may see and is refused every write, REST objects, sessions and the explorer alike,
/// with 403 before the request is looked at; nothing it sent was stored.
#[tokio::test]
async fn a_read_only_role_reads_every_operator_endpoint_and_writes_none() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) = Control::on_sqlite(
        &jwks.uri,
        &[("SEAL_GATEWAY_OPERATOR_READ_ONLY_ROLES", "aegis:auditor")],
    )
    .await;
    let auditor = operator(Some("acme"), "aegis:auditor");
    for path in [
        "/v1/specs",
        "/v1/workflows",
        "/v1/cli-tools",
        "/v1/security-contexts",
        "/v1/seal/sessions",
        "/v1/tools",
        "/v1/events",
    ] {
        let (status, body) = control.call("GET", path, Some(&auditor), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let tool =
        json!({"name": "t", "docker_image": "localhost/busybox", "allowed_subcommands": ["ls"]});
    for (method, path, body) in [
        ("POST", "/v1/cli-tools", Some(tool.clone())),
        ("PUT", "/v1/cli-tools/t", Some(tool)),
        ("DELETE", "/v1/cli-tools/t", None),
        ("POST", "/v1/specs", Some(json!({}))),
        ("DELETE", "/v1/workflows/w", None),
        ("POST", "/v1/security-contexts", Some(json!({}))),
        ("POST", "/v1/seal/sessions", Some(json!({}))),
        ("DELETE", "/v1/seal/sessions/exec-1", None),
        ("POST", "/v1/explorer", Some(json!({}))),
    ] {
        let (status, reply) = control.call(method, path, Some(&auditor), body).await;
        assert_eq!(
            (status, &reply["error"], &reply["check"]),
            (403, &json!("forbidden"), &json!("role")),
            "{method} {path}: {reply}"
        );
    }
    let (status, tools) = control
        .call("GET", "/v1/cli-tools", Some(&auditor), None)
        .await;
    assert_eq!((status, tools), (200, json!([])));
    // An operator's token still writes.
    let writer = operator(Some("acme"), "operator");
    let tool =
        json!({"name": "t", "docker_image": "localhost/busybox", "allowed_subcommands": ["ls"]});
    let (status, reply) = control
        .call("POST", "/v1/cli-tools", Some(&writer), Some(tool))
        .await;
    assert_eq!(status, 201, "{reply}");
    control.shutdown().await;
}

#[tokio::test]
async fn every_operator_token_problem_is_a_401_naming_the_check() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) = Control::on_sqlite(&jwks.uri, &[]).await;
    let get = |token: Option<String>| {
        let control = &control;
        async move {
            control
                .call("GET", "/v1/specs", token.as_deref(), None)
                .await
        }
    };

    let (status, body) = get(Some(operator(Some("acme"), "operator"))).await;
    assert_eq!((status, body.clone()), (200, json!([])), "{body}");
    let (status, body) = get(Some(rs256_token("rsa-1", &claims(json!({}))))).await;
    assert_eq!(status, 200, "RS256: {body}");
    let array_role = claims(json!({"aegis_role": ["viewer", "platform-admin"]}));
    let (status, body) = get(Some(ed_token(KEY_1, "key-1", &array_role))).await;
    assert_eq!(status, 200, "role in an array: {body}");

    let cases = [
        ("issuer", claims(json!({"iss": "https://evil.test"}))),
        ("audience", claims(json!({"aud": "someone-else"}))),
        ("expiry", claims(json!({"exp": now() - 3600}))),
        ("role", claims(json!({"aegis_role": null}))),
        ("role", claims(json!({"aegis_role": ["viewer"]}))),
    ];
    for (check, claims) in cases {
        let (status, body) = get(Some(ed_token(KEY_1, "key-1", &claims))).await;
        assert_refused(status, &body, check);
    }
    let (status, body) = get(Some(ed_token(KEY_2, "unknown-kid", &claims(json!({}))))).await;
    assert_refused(status, &body, "kid");
    // The audience must be checked even though it is a list here.
    let (status, body) = get(Some(ed_token(
        KEY_1,
        "key-1",
        &claims(json!({"aud": ["a", AUDIENCE]})),
    )))
    .await;
    assert_eq!(status, 200, "{body}");

    // HS256 with the RSA public key as the secret: the classic algorithm confusion.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let secret = serde_json::to_vec(&control_support::rsa_jwk("rsa-1")).unwrap();
    let hs256 = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap();
    let (status, body) = get(Some(hs256)).await;
    assert_refused(status, &body, "algorithm");

    let (status, body) = get(None).await;
    assert_refused(status, &body, "token");

    // Each 401 carries its RFC 6750 challenge, with no error for a request without a token.
    let challenge = |token: Option<String>| {
        let control = &control;
        async move {
            let mut request = control.client.get(format!("{}/v1/specs", control.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401);
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        challenge(None).await,
        r#"Bearer realm="aegis-seal-gateway""#
    );
    assert_eq!(
        challenge(Some(ed_token(
            KEY_1,
            "key-1",
            &claims(json!({"exp": now() - 3600}))
        )))
        .await,
        r#"Bearer realm="aegis-seal-gateway", error="invalid_token""#
    );
    assert_eq!(
        challenge(Some(ed_token(
            KEY_1,
            "key-1",
            &claims(json!({"aegis_role": ["viewer"]}))
        )))
        .await,
        r#"Bearer realm="aegis-seal-gateway", error="insufficient_scope""#
    );
    // Every operator endpoint is behind the same check.
    for path in [
        "/v1/workflows",
        "/v1/cli-tools",
        "/v1/security-contexts",
        "/v1/tools",
    ] {
        let (status, body) = control.call("GET", path, None, None).await;
        assert_refused(status, &body, "token");
    }
    let (status, body) = control
        .call("POST", "/v1/explorer", None, Some(json!({})))
        .await;
    assert_refused(status, &body, "token");
    control.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let jwks = JwksServer::start(json!({"keys": [ed_jwk(KEY_1, "key-1")]})).await;
    // TTL 0: the runbook's advice for an IdP that rotates aggressively.
    let (control, _dir) =
        Control::on_sqlite(&jwks.uri, &[("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS", "0")]).await;
    let old = ed_token(KEY_1, "key-1", &claims(json!({})));
    let new = ed_token(KEY_2, "key-2", &claims(json!({})));
    assert_eq!(
        control.call("GET", "/v1/specs", Some(&old), None).await.0,
        200
    );
    let (status, body) = control.call("GET", "/v1/specs", Some(&new), None).await;
    assert_refused(status, &body, "kid");

    jwks.set(json!({"keys": [ed_jwk(KEY_2, "key-2")]}));
    let (status, body) = control.call("GET", "/v1/specs", Some(&new), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = control.call("GET", "/v1/specs", Some(&old), None).await;
    assert_refused(status, &body, "kid");
    control.shutdown().await;
}

#[tokio::test]
async fn a_failing_idp_is_bridged_by_the_cached_keys_and_never_reached_is_503() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) =
        Control::on_sqlite(&jwks.uri, &[("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS", "0")]).await;
    let token = operator(None, "operator");
    assert_eq!(
        control.call("GET", "/v1/specs", Some(&token), None).await.0,
        200
    );
    jwks.fail();
    // Every request refetches (TTL 0) and fails; the last good key set is still within its
    // stale-while-error window, so operators keep working.
    let (status, body) = control.call("GET", "/v1/specs", Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    control.shutdown().await;

    let down = JwksServer::start(standard_jwks()).await;
    down.fail();
    let (control, _dir) = Control::on_sqlite(&down.uri, &[]).await;
    let (status, body) = control.call("GET", "/v1/specs", Some(&token), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["check"], "jwks", "{body}");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "the 503 body does not name internal hosts: {body}"
    );
    control.shutdown().await;
}

#[tokio::test]
async fn auth_disabled_bypasses_operator_auth_only() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) =
        Control::on_sqlite(&jwks.uri, &[("SEAL_GATEWAY_AUTH_DISABLED", "true")]).await;
    let (status, body) = control.call("GET", "/v1/specs", None, None).await;
    assert_eq!(status, 200, "{body}");
    // Envelope verification is untouched: an unsigned call is still refused.
    let (status, body) = control
        .call(
            "POST",
            "/v1/invoke",
            None,
            Some(json!({"protocol": "seal/v1"})),
        )
        .await;
    assert!(matches!(status, 400 | 401), "{status} {body}");
    control.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_without_a_token() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let (control, _dir) = Control::on_sqlite(&jwks.uri, &[]).await;
    let (status, doc) = control.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["title"], "AEGIS SEAL Tooling Gateway");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/specs", "post"),
        ("/v1/specs/{id}", "put"),
        ("/v1/workflows", "post"),
        ("/v1/workflows/{id}", "delete"),
        ("/v1/cli-tools/{name}", "get"),
        ("/v1/security-contexts", "post"),
        ("/v1/explorer", "post"),
        ("/v1/seal/sessions", "post"),
        ("/v1/tools", "get"),
        ("/v1/invoke", "post"),
        ("/health", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} documented"
        );
    }
    // Request schemas come from the handlers' own types, resolved in components.
    let wf =
        &paths["/v1/workflows"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let name = wf["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let schema = &doc["components"]["schemas"][name];
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        required.contains(&"api_spec_id") && required.contains(&"steps"),
        "{schema}"
    );
    assert!(doc["components"]["schemas"]["CredentialResolutionPath"].is_object());
    assert_eq!(
        paths["/v1/specs"]["get"]["security"],
        json!([{"bearer_jwt": []}])
    );
    assert!(paths["/health"]["get"].get("security").is_none());

    let page = control
        .client
        .get(format!("{}/api-docs", control.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/openapi.json"));
    control.shutdown().await;
}
