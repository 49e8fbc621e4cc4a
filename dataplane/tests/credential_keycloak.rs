//! HumanDelegated, Auto and UserBound credentials: the user token (`X-Seal-User-Token`) is verified
//! against the IdP's JWKS before it is exchanged (B-17), the exchange follows RFC 8693 against a fake
//! Keycloak (a real hyper server on 127.0.0.1 with OIDC discovery, JWKS and a token endpoint), and
//! UserBound bindings are read from the test Postgres (`DATABASE_URL`) and the real OpenBao
//! (`BAO_ADDR`, `BAO_TOKEN`) that `scripts/services.sh start` runs.

mod credential_support;
mod support;

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::common::CredentialResolutionPath;
use aegis_seal_crds::gateway::CredentialSettings;
use aegis_seal_gateway::application::credential::{
    CREDENTIAL_EXCHANGE_COMPLETED, CREDENTIAL_EXCHANGE_FAILED, CredentialOutcome, CredentialRequest,
};
use aegis_seal_gateway::infrastructure::persistence::Database;
use credential_support::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn delegated(target: &str) -> CredentialResolutionPath {
    CredentialResolutionPath::HumanDelegated {
        target_service: target.into(),
    }
}

fn auto(engine: &str, role: &str, target: &str) -> CredentialResolutionPath {
    CredentialResolutionPath::Auto {
        system_jit_openbao_engine_path: engine.into(),
        system_jit_role: role.into(),
        target_service: target.into(),
    }
}

fn user_bound(provider: &str) -> CredentialResolutionPath {
    CredentialResolutionPath::UserBound {
        provider: provider.into(),
    }
}

fn with_token<'a>(
    execution_id: &'a str,
    path: &'a CredentialResolutionPath,
    token: &'a str,
) -> CredentialRequest<'a> {
    CredentialRequest {
        user_token: Some(token),
        ..request(execution_id, path)
    }
}

fn assert_failed(outcome: &CredentialOutcome, status: StatusCode, path: &str, reason: &str) {
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, status, "{error}");
    assert_eq!(error.reason, reason);
    let event = only_event(outcome, CREDENTIAL_EXCHANGE_FAILED);
    assert_eq!(event.payload["resolution_path"], path);
    assert_eq!(event.payload["reason"], reason);
    assert!(event.payload["failed_at"].is_string());
}

// ---------------------------------------------------------------------------------------------
// HumanDelegated
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn human_delegated_exchanges_a_verified_user_token_per_rfc_8693() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&kc.settings(), &db);
    let path = delegated("github-api");
    let user_token = kc.user_token("user-1", json!({}));

    let outcome = resolver
        .resolve(with_token(
            "exec-hd",
            &path,
            &format!("Bearer {user_token}"),
        ))
        .await;
    let credential = outcome.result.as_ref().unwrap();
    let minted = kc.minted.lock().unwrap()[0].clone();
    assert_eq!(bearer(credential), format!("Bearer {minted}"));
    assert!(credential.leases.is_empty());
    assert_eq!(credential.secrets, vec![minted.clone()]);

    // Exactly the RFC 8693 form the reference lists.
    let exchanges = kc.exchanges();
    assert_eq!(exchanges.len(), 1);
    let exchange = &exchanges[0];
    assert_eq!(
        exchange.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let mut form = exchange.form();
    form.sort();
    let mut expected = vec![
        ("audience".to_owned(), "github-api".to_owned()),
        ("client_id".to_owned(), CLIENT_ID.to_owned()),
        ("client_secret".to_owned(), kc.client_secret.clone()),
        ("grant_type".to_owned(), TOKEN_EXCHANGE_GRANT.to_owned()),
        (
            "requested_token_type".to_owned(),
            ACCESS_TOKEN_TYPE.to_owned(),
        ),
        ("subject_token".to_owned(), user_token.clone()),
        (
            "subject_token_type".to_owned(),
            ACCESS_TOKEN_TYPE.to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(form, expected);

    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(event.payload["execution_id"], "exec-hd");
    assert_eq!(event.payload["resolution_path"], "human_delegated");
    assert_eq!(event.payload["target_service"], "github-api");
    assert!(event.payload["completed_at"].is_string());

    // The JWKS (found by OIDC discovery) is cached: a second call fetches nothing but the exchange.
    let outcome2 = resolver
        .resolve(with_token("exec-hd-2", &path, &user_token))
        .await;
    assert!(outcome2.result.is_ok());
    assert_eq!(kc.server.requests_to("/openid-configuration").len(), 1);
    assert_eq!(kc.server.requests_to("/certs").len(), 1);
    assert_eq!(kc.exchanges().len(), 2);

    let mut echoed = json!({"echo": minted});
    assert!(credential.redact_json(&mut echoed));
    assert_eq!(echoed["echo"], "[REDACTED]");
    assert_no_leak(&outcome, &[&user_token, &minted, &kc.client_secret]);
    let logs = logs_text();
    assert!(
        logs.contains("user token verified") && logs.contains("requesting Keycloak token exchange"),
        "each step is traced:\n{logs}"
    );
}

#[tokio::test]
async fn delegated_audiences_bind_a_token_to_the_origins_of_its_audience() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let mut settings = kc.settings();
    settings.delegated_audiences = [("github-api".to_owned(), vec![UPSTREAM.to_owned()])].into();
    let resolver = resolver(&settings, &db);
    let user_token = kc.user_token("user-1", json!({}));

    // To one of its audience's origins: exchanged.
    let path = delegated("github-api");
    let outcome = resolver
        .resolve(with_token("exec-bound", &path, &user_token))
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(kc.exchanges().len(), 1);

    // Elsewhere, or for an audience with no origins: refused before any exchange, and recorded.
    let auto = CredentialResolutionPath::Auto {
        system_jit_openbao_engine_path: "database".into(),
        system_jit_role: "readonly".into(),
        target_service: "github-api".into(),
    };
    let unlisted = delegated("payments");
    for (execution_id, path, destination, reason) in [
        (
            "exec-elsewhere",
            &path,
            "https://collector.example.net/hook",
            "forbidden: a delegated token for \"github-api\" may not be sent to \
             https://collector.example.net: not one of its origins in credentials.delegated_audiences",
        ),
        (
            "exec-auto-elsewhere",
            &auto,
            "https://collector.example.net/hook",
            "forbidden: a delegated token for \"github-api\" may not be sent to \
             https://collector.example.net: not one of its origins in credentials.delegated_audiences",
        ),
        (
            "exec-unlisted",
            &unlisted,
            UPSTREAM,
            "forbidden: a delegated token for \"payments\" may not be sent to \
             https://api.example.com: no origin is listed for it in credentials.delegated_audiences",
        ),
    ] {
        let outcome = resolver
            .resolve(CredentialRequest {
                destination: Some(destination),
                ..with_token(execution_id, path, &user_token)
            })
            .await;
        let label = if execution_id == "exec-auto-elsewhere" {
            "auto"
        } else {
            "human_delegated"
        };
        assert_failed(&outcome, StatusCode::FORBIDDEN, label, reason);
        let event = only_event(&outcome, CREDENTIAL_EXCHANGE_FAILED);
        assert_eq!(event.payload["effective_path"], "human_delegated");
        assert_eq!(event.payload["status"], 403);
    }
    assert_eq!(kc.exchanges().len(), 1, "no refused token was exchanged");
}

#[tokio::test]
async fn keycloak_401_is_a_502_logged_as_the_runbook_says() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let wrong_secret = unique("rotated-secret-");
    let settings = CredentialSettings {
        keycloak_client_secret: Some(SecretValue::Literal(wrong_secret.clone())),
        ..kc.settings()
    };
    let (db, url) = postgres_database().await;
    let resolver = resolver(&settings, &db);
    let path = delegated("github-api");
    let user_token = kc.user_token("user-1", json!({}));

    let outcome = resolver
        .resolve(with_token("exec-kc-401", &path, &user_token))
        .await;
    let reason = "http error: Keycloak token exchange returned 401 Unauthorized: invalid_client \
                  (Invalid client or Invalid client credentials)";
    assert_failed(&outcome, StatusCode::BAD_GATEWAY, "human_delegated", reason);
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_FAILED);
    assert_eq!(event.payload["effective_path"], "human_delegated");
    assert_eq!(event.payload["target_service"], "github-api");
    assert_eq!(kc.exchanges().len(), 1, "a 4xx is not retried");
    let logs = logs_text();
    let line = logs
        .lines()
        .find(|l| l.contains("token exchange returned 401"))
        .unwrap_or_else(|| panic!("the runbook's log line is missing:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert_no_leak(&outcome, &[&user_token, &wrong_secret]);

    db.append_events(&outcome.events).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->>'resolution_path' AS path, payload->>'reason' AS reason
FROM gateway_events
WHERE event_type = 'CredentialExchangeFailed'
ORDER BY created_at DESC
LIMIT 20;",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("human_delegated".to_owned(), reason.to_owned())]
    );
}

#[tokio::test]
async fn keycloak_400_invalid_target_is_a_502_naming_it() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let path = delegated(UNKNOWN_AUDIENCE);
    let user_token = kc.user_token("user-1", json!({}));
    let outcome = resolver(&kc.settings(), &db)
        .resolve(with_token("exec-kc-400", &path, &user_token))
        .await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "human_delegated",
        "http error: Keycloak token exchange returned 400 Bad Request: invalid_target (Audience not found)",
    );
    assert!(logs_text().contains("token exchange returned 400"));
    assert_no_leak(&outcome, &[&user_token, &kc.client_secret]);
}

#[tokio::test]
async fn gating_refusals_come_before_resolution_and_write_no_event() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&kc.settings(), &db);
    let user_token = kc.user_token("user-1", json!({}));

    let path = delegated("github-api");
    for missing in [None, Some(""), Some("  "), Some("Bearer ")] {
        let outcome = resolver
            .resolve(CredentialRequest {
                user_token: missing,
                ..request("exec-no-token", &path)
            })
            .await;
        let error = outcome.result.as_ref().unwrap_err();
        assert_eq!(
            (error.status, error.reason.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        assert!(outcome.events.is_empty());
    }

    let auto_path = auto("database", "ro", "github-api");
    for path in [&path, &auto_path] {
        let outcome = resolver
            .resolve(CredentialRequest {
                allows_human_delegated: false,
                ..with_token("exec-not-allowed", path, &user_token)
            })
            .await;
        let error = outcome.result.as_ref().unwrap_err();
        assert_eq!(
            (error.status, error.reason.as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(outcome.events.is_empty());
    }
    assert!(kc.server.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn unverifiable_user_tokens_are_401_and_never_exchanged() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&kc.settings(), &db);
    let path = delegated("github-api");
    let claims = |extra: serde_json::Value| {
        let mut base = json!({
            "iss": kc.issuer(), "aud": USER_AUDIENCE, "sub": "user-1",
            "iat": now(), "exp": now() + 300,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    };
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some(IDP_KID.into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(json!({})),
        &EncodingKey::from_secret(b"a-shared-secret-the-attacker-knows").unwrap(),
    )
    .unwrap();
    let cases = [
        (
            sign(&claims(json!({})), &other_key(), Some(IDP_KID)),
            "signature does not verify",
        ),
        (
            kc.user_token("user-1", json!({"exp": now() - 3600})),
            "token has expired",
        ),
        (
            kc.user_token("user-1", json!({"nbf": now() + 3600})),
            "token is not valid yet (nbf)",
        ),
        (
            kc.user_token("user-1", json!({"iss": "https://evil.example/realms/test"})),
            "issuer does not match",
        ),
        (
            kc.user_token("user-1", json!({"aud": "another-app"})),
            "audience does not match",
        ),
        (
            kc.user_token("user-1", json!({"exp": null})),
            "token has no exp claim",
        ),
        (hs256, "algorithm HS256 is not accepted"),
        (
            sign(&claims(json!({})), &other_key(), Some("unknown-kid")),
            "no RS256 key with kid \"unknown-kid\" in the user-token JWKS",
        ),
        (
            "not-a-jwt".to_owned(),
            "malformed token (not a JWS compact serialization)",
        ),
    ];
    for (token, why) in &cases {
        let outcome = resolver
            .resolve(with_token("exec-bad-user-token", &path, token))
            .await;
        assert_failed(
            &outcome,
            StatusCode::UNAUTHORIZED,
            "human_delegated",
            &format!("unauthorized: user token rejected: {why}"),
        );
        assert_no_leak(&outcome, &[token]);
    }
    assert!(
        kc.exchanges().is_empty(),
        "an unverified token is never exchanged"
    );
}

#[tokio::test]
async fn an_explicit_jwks_uri_follows_key_rotation() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let settings = CredentialSettings {
        keycloak_user_jwks_uri: Some(kc.jwks_uri()),
        keycloak_user_jwt_issuer: None,
        keycloak_user_jwt_audience: None,
        ..kc.settings()
    };
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&settings, &db);
    let path = delegated("github-api");

    let outcome = resolver
        .resolve(with_token(
            "exec-rot-1",
            &path,
            &kc.user_token("u", json!({})),
        ))
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);

    // The IdP rotates to a new key; a token signed with it makes the gateway refetch once.
    kc.jwks
        .lock()
        .unwrap()
        .get_mut("keys")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(rsa_jwk(&other_key(), "idp-rsa-2"));
    let rotated = sign(
        &json!({"iss": kc.issuer(), "aud": USER_AUDIENCE, "sub": "u", "exp": now() + 300}),
        &other_key(),
        Some("idp-rsa-2"),
    );
    let outcome = resolver
        .resolve(with_token("exec-rot-2", &path, &rotated))
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        kc.server.requests_to("/certs").len(),
        2,
        "refetched for the new kid"
    );
    assert!(kc.server.requests_to("/openid-configuration").is_empty());
    assert_eq!(
        kc.exchanges().len(),
        2,
        "the gateway verified the rotated token"
    );
}

#[tokio::test]
async fn exchange_and_verification_preconditions_fail_before_anything_is_sent() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let user_token = kc.user_token("user-1", json!({}));
    let path = delegated("github-api");
    let cases = [
        (
            CredentialSettings {
                keycloak_token_exchange_url: None,
                ..kc.settings()
            },
            "internal error: SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL is required",
        ),
        (
            CredentialSettings {
                keycloak_client_id: None,
                ..kc.settings()
            },
            "internal error: SEAL_GATEWAY_KEYCLOAK_CLIENT_ID is required",
        ),
        (
            CredentialSettings {
                keycloak_client_secret: None,
                ..kc.settings()
            },
            "internal error: SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET is required",
        ),
        (
            CredentialSettings {
                keycloak_user_jwks_uri: None,
                keycloak_user_jwt_issuer: None,
                ..kc.settings()
            },
            "internal error: SEAL_GATEWAY_KEYCLOAK_USER_JWKS_URI or SEAL_GATEWAY_KEYCLOAK_USER_JWT_ISSUER \
             is required to verify user tokens",
        ),
    ];
    for (settings, reason) in &cases {
        let outcome = resolver(settings, &db)
            .resolve(with_token("exec-precondition", &path, &user_token))
            .await;
        assert_failed(&outcome, StatusCode::BAD_GATEWAY, "human_delegated", reason);
    }
    let empty_target = delegated(" ");
    let outcome = resolver(&kc.settings(), &db)
        .resolve(with_token("exec-empty-target", &empty_target, &user_token))
        .await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "human_delegated",
        "validation error: human delegated target_service cannot be empty",
    );
    assert!(kc.server.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn an_unreachable_idp_is_a_502() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = CredentialSettings {
        keycloak_user_jwks_uri: Some(format!("http://127.0.0.1:{port}/certs")),
        ..kc.settings()
    };
    let (db, _dir) = sqlite_database().await;
    let path = delegated("github-api");
    let outcome = resolver(&settings, &db)
        .resolve(with_token(
            "exec-idp-down",
            &path,
            &kc.user_token("u", json!({})),
        ))
        .await;
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_GATEWAY);
    assert!(
        error.reason.starts_with(
            "http error: user-token JWKS unavailable: transport error: GET http://127.0.0.1:"
        ),
        "{}",
        error.reason
    );
    assert!(kc.exchanges().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Auto
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auto_delegates_with_a_user_token_and_uses_system_jit_without() {
    capture_logs();
    let bao = Bao::from_env();
    let kc = FakeKeycloak::start().await;
    let settings = CredentialSettings {
        openbao_addr: Some(bao.addr.clone()),
        openbao_token: Some(SecretValue::Literal(bao.token.clone())),
        ..kc.settings()
    };
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&settings, &db);
    let engine = unique("absent-engine-");
    let path = auto(&engine, "ro", "github-api");

    let outcome = resolver
        .resolve(with_token(
            "exec-auto-hd",
            &path,
            &kc.user_token("u", json!({})),
        ))
        .await;
    assert!(outcome.result.is_ok());
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(event.payload["resolution_path"], "auto");
    assert_eq!(event.payload["effective_path"], "human_delegated");
    assert_eq!(event.payload["target_service"], "github-api");

    let outcome = resolver.resolve(request("exec-auto-jit", &path)).await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "auto",
        &format!(
            "http error: OpenBao JIT request returned 404 Not Found: no handler for route \"{engine}/creds/ro\". route entry not found."
        ),
    );
    assert_eq!(kc.exchanges().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// UserBound
// ---------------------------------------------------------------------------------------------

/// The orchestrator's tables, which the gateway only reads.
async fn orchestrator_tables(url: &str) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    for statement in [
        "CREATE TABLE credential_bindings (id UUID PRIMARY KEY, owner_user_id TEXT NOT NULL, \
         provider TEXT NOT NULL, status TEXT NOT NULL, tenant_id TEXT, secret_path TEXT NOT NULL)",
        "CREATE TABLE credential_grants (id UUID PRIMARY KEY, \
         binding_id UUID NOT NULL REFERENCES credential_bindings(id), agent_id TEXT)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool
}

async fn bind(
    pool: &sqlx::PgPool,
    user: &str,
    provider: &str,
    status: &str,
    tenant: Option<&str>,
    secret_path: &str,
) {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO credential_bindings VALUES ($1::uuid, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(user)
        .bind(provider)
        .bind(status)
        .bind(tenant)
        .bind(secret_path)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO credential_grants VALUES ($1::uuid, $2::uuid, 'agent-1')")
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
}

fn bao_and_keycloak(bao: &Bao, kc: &FakeKeycloak) -> CredentialSettings {
    CredentialSettings {
        openbao_addr: Some(bao.addr.clone()),
        openbao_token: Some(SecretValue::Literal(bao.token.clone())),
        ..kc.settings()
    }
}

#[tokio::test]
async fn user_bound_reads_the_verified_callers_binding_on_postgres() {
    capture_logs();
    let bao = Bao::from_env();
    let kc = FakeKeycloak::start().await;
    let (db, url) = postgres_database().await;
    let pool = orchestrator_tables(&url).await;
    let user = unique("user-");
    let key = unique("bindings/");
    let secret = unique("gh-pat-");
    bao.write_kv(&key, json!({"token": secret})).await;
    bind(&pool, &user, "github", "active", None, &key).await;
    bind(&pool, &user, "gitlab", "revoked", None, &key).await;
    bind(&pool, &user, "jira", "active", Some("tenant-a"), &key).await;
    let resolver = resolver(&bao_and_keycloak(&bao, &kc), &db);
    let token = kc.user_token(&user, json!({}));

    let path = user_bound("github");
    let outcome = resolver.resolve(with_token("exec-ub", &path, &token)).await;
    assert_eq!(
        bearer(outcome.result.as_ref().unwrap()),
        format!("Bearer {secret}")
    );
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(event.payload["resolution_path"], "user_bound");
    assert_eq!(event.payload["effective_path"], "user_bound");
    assert_eq!(event.payload["target_service"], "github");
    assert!(kc.exchanges().is_empty());
    assert_no_leak(&outcome, &[&secret, &token]);

    // Registry credentials from the same binding.
    let outcome = resolver
        .resolve_registry(with_token("exec-ub-reg", &path, &token))
        .await;
    let registry = outcome.result.as_ref().unwrap();
    assert_eq!(
        (
            registry.registry.as_str(),
            registry.username.as_str(),
            registry.password.as_str()
        ),
        ("github", "oauth2accesstoken", secret.as_str())
    );

    // A revoked binding, another tenant's binding, or another user: no binding, so delegation.
    for (provider, tenant, token) in [
        ("gitlab", None, token.clone()),
        ("jira", Some("tenant-b"), token.clone()),
        (
            "github",
            None,
            kc.user_token(&unique("someone-else-"), json!({})),
        ),
    ] {
        let path = user_bound(provider);
        let outcome = resolver
            .resolve(CredentialRequest {
                tenant_id: tenant,
                ..with_token("exec-ub-fallback", &path, &token)
            })
            .await;
        let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
        assert_eq!(
            event.payload["effective_path"], "human_delegated",
            "{provider}"
        );
        assert_eq!(
            kc.exchanges()
                .last()
                .unwrap()
                .form_value("audience")
                .unwrap(),
            provider
        );
    }
    let path = user_bound("jira");
    let outcome = resolver
        .resolve(CredentialRequest {
            tenant_id: Some("tenant-a"),
            ..with_token("exec-ub-tenant", &path, &token)
        })
        .await;
    assert_eq!(
        only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED).payload["effective_path"],
        "user_bound"
    );

    // Registry credentials never fall back to delegation.
    let path = user_bound("gitlab");
    let outcome = resolver
        .resolve_registry(with_token("exec-ub-reg-none", &path, &token))
        .await;
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error.reason,
        "unauthorized: no active credential binding for provider \"gitlab\""
    );

    // The user id comes from a verified token only: a forged `sub` reads nothing.
    let forged = sign(
        &json!({"iss": kc.issuer(), "aud": USER_AUDIENCE, "sub": user, "exp": now() + 300}),
        &other_key(),
        Some(IDP_KID),
    );
    let path = user_bound("github");
    let exchanges_before = kc.exchanges().len();
    let outcome = resolver
        .resolve(with_token("exec-ub-forged", &path, &forged))
        .await;
    assert_failed(
        &outcome,
        StatusCode::UNAUTHORIZED,
        "user_bound",
        "unauthorized: user token rejected: signature does not verify",
    );
    assert_eq!(kc.exchanges().len(), exchanges_before);
    assert_no_leak(&outcome, &[&secret, &forged]);
}

#[tokio::test]
async fn user_bound_falls_back_without_tables_on_sqlite_and_without_a_token() {
    capture_logs();
    let bao = Bao::from_env();
    let kc = FakeKeycloak::start().await;
    let settings = bao_and_keycloak(&bao, &kc);
    let (sqlite, _dir) = sqlite_database().await;
    let (postgres_without_tables, _) = postgres_database().await;
    let path = user_bound("github");
    let token = kc.user_token("user-1", json!({}));

    let databases: [&Database; 2] = [&sqlite, &postgres_without_tables];
    for db in databases {
        let resolver = resolver(&settings, db);
        let outcome = resolver
            .resolve(with_token("exec-ub-fb", &path, &token))
            .await;
        let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
        assert_eq!(event.payload["effective_path"], "human_delegated");
        assert_eq!(event.payload["target_service"], "github");

        let outcome = resolver.resolve(request("exec-ub-none", &path)).await;
        assert_failed(
            &outcome,
            StatusCode::UNAUTHORIZED,
            "user_bound",
            "unauthorized",
        );

        let outcome = resolver
            .resolve(CredentialRequest {
                allows_human_delegated: false,
                ..with_token("exec-ub-forbidden", &path, &token)
            })
            .await;
        assert_failed(
            &outcome,
            StatusCode::FORBIDDEN,
            "user_bound",
            "forbidden: no credential binding, and the security context does not allow \
             human-delegated credentials",
        );
    }
    assert_eq!(kc.exchanges().len(), 2);

    let empty = user_bound(" ");
    let outcome = resolver(&settings, &sqlite)
        .resolve(with_token("exec-ub-empty", &empty, &token))
        .await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "user_bound",
        "validation error: UserBound provider cannot be empty",
    );
}

#[tokio::test]
async fn delegated_registry_credentials_use_the_exchanged_token() {
    capture_logs();
    let kc = FakeKeycloak::start().await;
    let (db, _dir) = sqlite_database().await;
    let path = delegated("registry.example.com");
    let outcome = resolver(&kc.settings(), &db)
        .resolve_registry(with_token(
            "exec-reg-hd",
            &path,
            &kc.user_token("u", json!({})),
        ))
        .await;
    let registry = outcome.result.as_ref().unwrap();
    assert_eq!(registry.registry, "registry.example.com");
    assert_eq!(registry.username, "oauth2accesstoken");
    assert_eq!(registry.password, kc.minted.lock().unwrap()[0]);
    assert!(!format!("{registry:?}").contains(&registry.password));
}
