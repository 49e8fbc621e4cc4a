//! Credential resolution against the real OpenBao dev server that `scripts/services.sh start` runs
//! (`BAO_ADDR`, `BAO_TOKEN`): KV v2, the database secrets engine pointed at the test Postgres
//! (`DATABASE_URL`), namespaces, policies, and every runbook cause of "OpenBao Credential
//! Resolution Failed". A few tests use a fake OpenBao for answers a real one never gives.

mod credential_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::common::CredentialResolutionPath;
use aegis_seal_crds::gateway::CredentialSettings;
use aegis_seal_gateway::application::credential::{
    CREDENTIAL_EXCHANGE_COMPLETED, CREDENTIAL_EXCHANGE_FAILED, CREDENTIAL_LEASE_REVOKE_FAILED,
    CREDENTIAL_LEASE_REVOKED, CredentialOutcome, CredentialRequest, Lease,
};
use credential_support::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

fn static_ref(key: &str) -> CredentialResolutionPath {
    CredentialResolutionPath::StaticRef { key: key.into() }
}

fn system_jit(engine: &str, role: &str) -> CredentialResolutionPath {
    CredentialResolutionPath::SystemJit {
        openbao_engine_path: engine.into(),
        role: role.into(),
    }
}

/// A 502 with exactly this reason, and one flat `CredentialExchangeFailed` event saying so.
fn assert_exchange_failed(
    outcome: &CredentialOutcome,
    execution_id: &str,
    path: &str,
    reason: &str,
) {
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_GATEWAY, "{error}");
    assert_eq!(error.reason, reason);
    let event = only_event(outcome, CREDENTIAL_EXCHANGE_FAILED);
    assert_eq!(event.payload["execution_id"], execution_id);
    assert_eq!(event.payload["resolution_path"], path);
    assert_eq!(event.payload["reason"], reason);
    assert!(event.payload["failed_at"].is_string());
    assert!(
        event
            .payload
            .values()
            .all(|v| !v.is_object() && !v.is_array()),
        "the payload is flat: {:?}",
        event.payload
    );
}

/// The runbook's diagnosis query, verbatim, after the events were written to Postgres.
async fn runbook_query(url: &str) -> Vec<(String, String)> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(chrono::DateTime<chrono::Utc>, String, String)> = sqlx::query_as(
        "SELECT created_at, payload->>'resolution_path' AS path, payload->>'reason' AS reason
FROM gateway_events
WHERE event_type = 'CredentialExchangeFailed'
ORDER BY created_at DESC
LIMIT 20;",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(_, path, reason)| (path, reason))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// KV v2 (StaticRef)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn static_ref_kv_token_becomes_a_sensitive_bearer_header() {
    capture_logs();
    let bao = Bao::from_env();
    let key = unique("app/upstream-");
    let secret = unique("kv-token-");
    bao.write_kv(
        &key,
        json!({"token": secret, "value": "not-this-one", "port": "5432"}),
    )
    .await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);
    let path = static_ref(&key);

    let outcome = resolver.resolve(request("exec-kv-1", &path)).await;
    let credential = outcome.result.as_ref().unwrap();
    assert_eq!(bearer(credential), format!("Bearer {secret}"));
    assert!(credential.leases.is_empty(), "KV secrets have no lease");
    assert!(credential.secrets.contains(&secret));

    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(event.payload["execution_id"], "exec-kv-1");
    assert_eq!(event.payload["resolution_path"], "static_ref");
    assert_eq!(event.payload["effective_path"], "static_ref");
    assert_eq!(
        event.payload["target_service"],
        format!("secret/data/{key}")
    );
    assert!(event.payload.get("lease_id").is_none());
    assert!(event.payload["completed_at"].is_string());

    // An upstream that echoes the credential back has it redacted before the agent sees it.
    let mut echoed = json!({"headers": {"authorization": format!("Bearer {secret}")}});
    assert!(credential.redact_json(&mut echoed));
    assert_eq!(echoed["headers"]["authorization"], "Bearer [REDACTED]");
    assert_eq!(
        credential.redact_text(&format!("token={secret}")),
        "token=[REDACTED]"
    );

    assert_no_leak(&outcome, &[&secret]);
    let logs = logs_text();
    assert!(
        logs.contains("credential resolution started")
            && logs.contains("reading OpenBao KV v2 secret")
            && logs.contains("credential resolution completed"),
        "each step is traced:\n{logs}"
    );
}

/// A StaticRef key is its author's choice: a tenant's workflow (or spec, or CLI tool) reads it
/// under `tenant-<owner>/` only, so it cannot name another tenant's secret or a platform one.
#[tokio::test]
async fn a_tenants_static_ref_reads_only_under_its_own_prefix() {
    let bao = Bao::from_env();
    let key = unique("app/shared-name-");
    let platform = unique("platform-token-");
    let acme = unique("acme-token-");
    bao.write_kv(&key, json!({"token": platform})).await;
    bao.write_kv(&format!("tenant-acme/{key}"), json!({"token": acme}))
        .await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);
    let path = static_ref(&key);

    // The calling tenant does not matter: a system-global workflow reads the key as written.
    let global = resolver
        .resolve(CredentialRequest {
            tenant_id: Some("acme"),
            ..request("exec-kv-global", &path)
        })
        .await;
    assert_eq!(
        bearer(global.result.as_ref().unwrap()),
        format!("Bearer {platform}")
    );

    let owned = resolver
        .resolve(CredentialRequest {
            tenant_id: Some("acme"),
            owner_tenant_id: Some("acme"),
            ..request("exec-kv-owned", &path)
        })
        .await;
    assert_eq!(
        bearer(owned.result.as_ref().unwrap()),
        format!("Bearer {acme}")
    );
    let event = only_event(&owned, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(
        event.payload["target_service"],
        format!("secret/data/tenant-acme/{key}")
    );

    // Another tenant's workflow with the same key finds nothing of acme's or the platform's.
    let other = resolver
        .resolve(CredentialRequest {
            tenant_id: Some("globex"),
            owner_tenant_id: Some("globex"),
            ..request("exec-kv-other", &path)
        })
        .await;
    let error = other.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_GATEWAY, "{error}");
    assert!(
        error
            .reason
            .starts_with("http error: OpenBao KV request returned 404"),
        "{}",
        error.reason
    );
    // Nor can an owner's name climb out of its prefix.
    let climbing = resolver
        .resolve(CredentialRequest {
            owner_tenant_id: Some("acme/../globex"),
            ..request("exec-kv-climb", &path)
        })
        .await;
    assert_eq!(
        climbing.result.as_ref().unwrap_err().reason,
        "validation error: tenant id is not a valid OpenBao path segment"
    );
}

#[tokio::test]
async fn static_ref_falls_back_to_value_and_names_a_missing_field() {
    capture_logs();
    let bao = Bao::from_env();
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);

    let with_value = unique("app/value-");
    let value = unique("kv-value-");
    bao.write_kv(&with_value, json!({"value": value})).await;
    let path = static_ref(&with_value);
    let outcome = resolver.resolve(request("exec-kv-2", &path)).await;
    assert_eq!(
        bearer(outcome.result.as_ref().unwrap()),
        format!("Bearer {value}")
    );
    assert_no_leak(&outcome, &[&value]);

    let without = unique("app/none-");
    let password = unique("unrelated-");
    bao.write_kv(&without, json!({"username": "svc", "pass": password}))
        .await;
    let path = static_ref(&without);
    let outcome = resolver.resolve(request("exec-kv-3", &path)).await;
    assert_exchange_failed(
        &outcome,
        "exec-kv-3",
        "static_ref",
        "serialization error: OpenBao KV response missing token/value field",
    );
}

#[tokio::test]
async fn missing_kv_path_is_a_502_quoting_openbao_and_the_runbook_query_finds_it() {
    capture_logs();
    let bao = Bao::from_env();
    let (db, url) = postgres_database().await;
    let resolver = resolver(&bao.settings(), &db);
    let key = unique("app/absent-");
    let path = static_ref(&key);

    let outcome = resolver.resolve(request("exec-kv-404", &path)).await;
    let reason = "http error: OpenBao KV request returned 404 Not Found: []";
    assert_exchange_failed(&outcome, "exec-kv-404", "static_ref", reason);
    // The path read, for the runbook's "read the secret the resolver is asking for".
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_FAILED);
    assert_eq!(event.payload["effective_path"], "static_ref");
    assert_eq!(
        event.payload["target_service"],
        format!("secret/data/{key}")
    );
    assert_eq!(
        outcome.result.as_ref().unwrap_err().body(),
        json!({"error": format!("credential exchange failed: {reason}")})
    );

    db.append_events(&outcome.events).await.unwrap();
    assert_eq!(
        runbook_query(&url).await,
        vec![("static_ref".to_owned(), reason.to_owned())]
    );
}

#[tokio::test]
async fn invalid_token_is_a_502_with_permission_denied_and_the_token_never_shows() {
    capture_logs();
    let bao = Bao::from_env();
    let bad_token = unique("s.not-a-real-token-");
    let settings = CredentialSettings {
        openbao_token: Some(SecretValue::Literal(bad_token.clone())),
        ..bao.settings()
    };
    let (db, url) = postgres_database().await;
    let resolver = resolver(&settings, &db);

    let key = unique("app/any-");
    let path = static_ref(&key);
    let outcome = resolver.resolve(request("exec-bad-token", &path)).await;
    let reason = "http error: OpenBao KV request returned 403 Forbidden: permission denied";
    assert_exchange_failed(&outcome, "exec-bad-token", "static_ref", reason);
    assert_no_leak(&outcome, &[&bad_token]);

    let path = system_jit("database", "readonly");
    let outcome = resolver.resolve(request("exec-bad-token-jit", &path)).await;
    assert_exchange_failed(
        &outcome,
        "exec-bad-token-jit",
        "system_jit",
        "http error: OpenBao JIT request returned 403 Forbidden: permission denied",
    );
    db.append_events(&outcome.events).await.unwrap();
    assert_eq!(
        runbook_query(&url).await[0],
        (
            "system_jit".to_owned(),
            "http error: OpenBao JIT request returned 403 Forbidden: permission denied".to_owned()
        )
    );
}

#[tokio::test]
async fn unreachable_address_is_a_502_naming_the_transport_error() {
    capture_logs();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = CredentialSettings {
        openbao_addr: Some(format!("http://127.0.0.1:{port}")),
        openbao_token: Some(SecretValue::Literal("root".into())),
        ..CredentialSettings::default()
    };
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&settings, &db);
    let path = static_ref("app/x");
    let outcome = resolver.resolve(request("exec-unreachable", &path)).await;
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_GATEWAY);
    let prefix = format!(
        "http error: OpenBao KV request failed: transport error: GET http://127.0.0.1:{port}/v1/secret/data/app/x: "
    );
    assert!(error.reason.starts_with(&prefix), "{}", error.reason);
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_FAILED);
    assert_eq!(event.payload["reason"], error.reason.as_str());
}

#[tokio::test]
async fn a_hanging_openbao_is_bounded_by_the_timeout_and_retried_once() {
    capture_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream); // never answered
        }
    });
    let settings = CredentialSettings {
        openbao_addr: Some(format!("http://{addr}")),
        openbao_token: Some(SecretValue::Literal("root".into())),
        request_timeout_ms: 300,
        max_retries: 1,
        ..CredentialSettings::default()
    };
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&settings, &db);

    let started = Instant::now();
    let path = static_ref("app/slow");
    let outcome = resolver.resolve(request("exec-slow-kv", &path)).await;
    let elapsed = started.elapsed();
    let error = outcome.result.as_ref().unwrap_err();
    assert_eq!(error.status, StatusCode::BAD_GATEWAY);
    assert!(
        error.reason.contains("no complete response within 300 ms"),
        "{}",
        error.reason
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a read is retried once");
    assert!(elapsed < Duration::from_secs(3), "bounded: {elapsed:?}");

    // Minting a dynamic secret is not repeated after a timeout: the first one may have been issued.
    let path = system_jit("database", "ro");
    let outcome = resolver.resolve(request("exec-slow-jit", &path)).await;
    assert!(outcome.result.is_err());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "no retry after a minting timeout"
    );
}

/// An answer cut off mid-body: the request was served. A read is retried; a minting request is
/// not, since what it minted (a lease) would be lost and never revoked. Only a connection never
/// made lets a minting request be sent again.
#[tokio::test]
async fn a_minting_call_cut_off_mid_answer_is_not_repeated() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    capture_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"lease_id\": \"data")
                .await;
            // Dropped: the connection closes 84 bytes short.
        }
    });
    let settings = CredentialSettings {
        openbao_addr: Some(format!("http://{addr}")),
        openbao_token: Some(SecretValue::Literal("root".into())),
        max_retries: 1,
        ..CredentialSettings::default()
    };
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&settings, &db);

    let outcome = resolver
        .resolve(request("exec-cut-kv", &static_ref("app/cut")))
        .await;
    let error = outcome.result.as_ref().unwrap_err();
    assert!(error.reason.contains("transport error"), "{}", error.reason);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a read is retried once");

    let outcome = resolver
        .resolve(request("exec-cut-jit", &system_jit("database", "ro")))
        .await;
    assert!(outcome.result.is_err());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a minting request that was sent is not sent again"
    );
}

// ---------------------------------------------------------------------------------------------
// Dynamic secrets (SystemJit) on the database engine, against the test Postgres
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dynamic_postgres_user_is_created_per_call_and_revoked_on_release() {
    capture_logs();
    let bao = Bao::from_env();
    let mount = unique("db-");
    let role = unique("r").chars().take(8).collect::<String>();
    bao.database_engine(&mount, &role).await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);
    let path = system_jit(&format!("/{mount}/"), &role);

    let first = resolver.resolve(request("exec-dyn-1", &path)).await;
    let second = resolver.resolve(request("exec-dyn-2", &path)).await;
    let one = first.result.as_ref().unwrap();
    let two = second.result.as_ref().unwrap();

    // Database credentials go upstream as `Bearer <password>`, as upstream does.
    let password = bearer(one).strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(bearer(one), bearer(two), "never reused across calls");
    assert_eq!(one.leases.len(), 1);
    let lease = one.leases[0].clone();
    assert_eq!(lease.execution_id, "exec-dyn-1");
    assert!(
        lease
            .lease_id
            .starts_with(&format!("{mount}/creds/{role}/")),
        "{lease:?}"
    );
    assert_ne!(lease.lease_id, two.leases[0].lease_id);

    let event = only_event(&first, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(event.payload["resolution_path"], "system_jit");
    assert_eq!(event.payload["lease_id"], lease.lease_id.as_str());
    assert_eq!(
        event.payload["target_service"],
        format!("{mount}/creds/{role}")
    );

    // A real login role exists, and the issued password logs in with it.
    let users = postgres_roles_like(&format!("-{role}-")).await;
    assert_eq!(users.len(), 2, "one user per call: {users:?}");
    let pg = reqwest::Url::parse(&postgres_server_url()).unwrap();
    let mut logged_in = None;
    for user in &users {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(pg.host_str().unwrap())
            .port(pg.port().unwrap())
            .database(pg.path().trim_start_matches('/'))
            .username(user)
            .password(&password);
        if let Ok(mut conn) = sqlx::ConnectOptions::connect(&options).await {
            let me: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            logged_in = Some(me);
        }
    }
    assert!(logged_in.is_some(), "the dynamic user can log in");

    // Release revokes the lease: the user is gone from Postgres, and OpenBao no longer knows it.
    let events = resolver.release(one.leases.clone()).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, CREDENTIAL_LEASE_REVOKED);
    assert_eq!(events[0].payload["lease_id"], lease.lease_id.as_str());
    assert_eq!(events[0].payload["execution_id"], "exec-dyn-1");
    assert!(events[0].payload["revoked_at"].is_string());
    let left = postgres_roles_like(&format!("-{role}-")).await;
    assert_eq!(left.len(), 1, "the released user is dropped: {left:?}");
    let (status, _) = bao
        .call(
            Method::PUT,
            "sys/leases/lookup",
            Some(json!({"lease_id": lease.lease_id})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the lease is gone");

    let events = resolver.release(two.leases.clone()).await;
    assert_eq!(events[0].event_type, CREDENTIAL_LEASE_REVOKED);
    assert!(postgres_roles_like(&format!("-{role}-")).await.is_empty());

    assert_no_leak(&first, &[&password]);
    assert!(!events_text(&events).contains(&password));
    bao.ok(Method::DELETE, &format!("sys/mounts/{mount}"), None)
        .await;
}

#[tokio::test]
async fn tenant_scopes_the_engine_mount() {
    capture_logs();
    let bao = Bao::from_env();
    let tenant = unique("acme-");
    let engine = unique("db-");
    let role = unique("t").chars().take(8).collect::<String>();
    bao.database_engine(&format!("tenant-{tenant}/{engine}"), &role)
        .await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);
    let path = system_jit(&engine, &role);

    let mut req = request("exec-tenant", &path);
    req.tenant_id = Some(&tenant);
    let outcome = resolver.resolve(req).await;
    let credential = outcome.result.as_ref().unwrap();
    let event = only_event(&outcome, CREDENTIAL_EXCHANGE_COMPLETED);
    assert_eq!(
        event.payload["target_service"],
        format!("tenant-{tenant}/{engine}/creds/{role}")
    );
    assert_eq!(event.payload["tenant_id"], tenant.as_str());
    assert_eq!(event.tenant_id.as_deref(), Some(tenant.as_str()));
    assert_eq!(
        credential.leases[0].tenant_id.as_deref(),
        Some(tenant.as_str())
    );
    let released = resolver.release(credential.leases.clone()).await;
    assert_eq!(released[0].event_type, CREDENTIAL_LEASE_REVOKED);
    assert_eq!(released[0].tenant_id.as_deref(), Some(tenant.as_str()));

    // Without the tenant the same spec addresses the unprefixed mount, which does not exist.
    let outcome = resolver.resolve(request("exec-no-tenant", &path)).await;
    assert_exchange_failed(
        &outcome,
        "exec-no-tenant",
        "system_jit",
        &format!(
            "http error: OpenBao JIT request returned 404 Not Found: no handler for route \"{engine}/creds/{role}\". route entry not found."
        ),
    );
    bao.ok(
        Method::DELETE,
        &format!("sys/mounts/tenant-{tenant}/{engine}"),
        None,
    )
    .await;
}

#[tokio::test]
async fn missing_role_or_policy_is_a_502_quoting_openbao() {
    capture_logs();
    let bao = Bao::from_env();
    let mount = unique("db-");
    let role = unique("p").chars().take(8).collect::<String>();
    bao.database_engine(&mount, &role).await;
    let (db, _dir) = sqlite_database().await;

    // The role does not exist.
    let resolver_root = resolver(&bao.settings(), &db);
    let path = system_jit(&mount, "nope");
    let outcome = resolver_root.resolve(request("exec-no-role", &path)).await;
    assert_exchange_failed(
        &outcome,
        "exec-no-role",
        "system_jit",
        "http error: OpenBao JIT request returned 400 Bad Request: unknown role: nope",
    );

    // The token's policy allows the KV path but not the role.
    let prefix = unique("team-");
    let policy = unique("kv-only-");
    bao.ok(
        Method::PUT,
        &format!("sys/policies/acl/{policy}"),
        Some(json!({"policy": format!("path \"secret/data/{prefix}/*\" {{ capabilities = [\"read\"] }}")})),
    )
    .await;
    let limited = bao.token_with_policies(&[&policy]).await;
    let settings = CredentialSettings {
        openbao_token: Some(SecretValue::Literal(limited.clone())),
        ..bao.settings()
    };
    let resolver_limited = resolver(&settings, &db);
    let path = system_jit(&mount, &role);
    let outcome = resolver_limited
        .resolve(request("exec-no-policy", &path))
        .await;
    assert_exchange_failed(
        &outcome,
        "exec-no-policy",
        "system_jit",
        "http error: OpenBao JIT request returned 403 Forbidden: permission denied",
    );
    assert_no_leak(&outcome, &[&limited]);

    let key = format!("{prefix}/svc");
    let secret = unique("allowed-");
    bao.write_kv(&key, json!({"token": secret})).await;
    let path = static_ref(&key);
    let outcome = resolver_limited
        .resolve(request("exec-policy-ok", &path))
        .await;
    assert_eq!(
        bearer(outcome.result.as_ref().unwrap()),
        format!("Bearer {secret}")
    );
    bao.ok(Method::DELETE, &format!("sys/mounts/{mount}"), None)
        .await;
}

#[tokio::test]
async fn namespace_header_reaches_the_namespaced_kv() {
    capture_logs();
    let bao = Bao::from_env();
    let namespace = unique("ns");
    bao.ok(Method::POST, &format!("sys/namespaces/{namespace}"), None)
        .await;
    let (status, body) = bao
        .call_in(
            Some(&namespace),
            Method::POST,
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let secret = unique("ns-token-");
    let (status, body) = bao
        .call_in(
            Some(&namespace),
            Method::POST,
            "secret/data/svc",
            Some(json!({"data": {"token": secret}})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");

    let (db, _dir) = sqlite_database().await;
    let path = static_ref("svc");
    let settings = CredentialSettings {
        openbao_namespace: Some(namespace.clone()),
        ..bao.settings()
    };
    let outcome = resolver(&settings, &db)
        .resolve(request("exec-ns", &path))
        .await;
    assert_eq!(
        bearer(outcome.result.as_ref().unwrap()),
        format!("Bearer {secret}")
    );

    // The root namespace has no `svc` secret: the header is what selected the namespace.
    let outcome = resolver(&bao.settings(), &db)
        .resolve(request("exec-no-ns", &path))
        .await;
    assert_exchange_failed(
        &outcome,
        "exec-no-ns",
        "static_ref",
        "http error: OpenBao KV request returned 404 Not Found: []",
    );
}

#[tokio::test]
async fn registry_credentials_come_from_kv_fields_and_dynamic_users() {
    capture_logs();
    let bao = Bao::from_env();
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&bao.settings(), &db);

    let key = unique("registry/");
    let password = unique("registry-pw-");
    bao.write_kv(
        &key,
        json!({"server": "ghcr.io", "user": "robot", "secret_key": password}),
    )
    .await;
    let path = static_ref(&key);
    let outcome = resolver.resolve_registry(request("exec-reg", &path)).await;
    let credential = outcome.result.as_ref().unwrap();
    assert_eq!(credential.registry, "ghcr.io");
    assert_eq!(credential.username, "robot");
    assert_eq!(credential.password, password);
    assert!(credential.secrets.contains(&password));
    assert!(!format!("{credential:?}").contains(&password));
    assert_eq!(outcome.events[0].event_type, CREDENTIAL_EXCHANGE_COMPLETED);

    let mount = unique("db-");
    let role = unique("g").chars().take(8).collect::<String>();
    bao.database_engine(&mount, &role).await;
    let path = system_jit(&mount, &role);
    let outcome = resolver
        .resolve_registry(request("exec-reg-dyn", &path))
        .await;
    let credential = outcome.result.as_ref().unwrap();
    assert_eq!(credential.registry, "index.docker.io");
    assert!(
        credential.username.contains(&role),
        "{}",
        credential.username
    );
    assert_eq!(credential.leases.len(), 1);
    let events = resolver.release(credential.leases.clone()).await;
    assert_eq!(events[0].event_type, CREDENTIAL_LEASE_REVOKED);
    bao.ok(Method::DELETE, &format!("sys/mounts/{mount}"), None)
        .await;
}

#[tokio::test]
async fn release_reports_a_revocation_it_could_not_make() {
    capture_logs();
    let bao = Bao::from_env();
    let bad_token = unique("s.revoker-");
    let settings = CredentialSettings {
        openbao_token: Some(SecretValue::Literal(bad_token.clone())),
        ..bao.settings()
    };
    let (db, _dir) = sqlite_database().await;
    let events = resolver(&settings, &db)
        .release(vec![Lease {
            lease_id: "database/creds/ro/abc".into(),
            execution_id: "exec-revoke".into(),
            tenant_id: None,
        }])
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, CREDENTIAL_LEASE_REVOKE_FAILED);
    assert_eq!(events[0].payload["lease_id"], "database/creds/ro/abc");
    assert_eq!(
        events[0].payload["reason"],
        "http error: OpenBao lease revoke returned 403 Forbidden: permission denied"
    );
    assert!(!events_text(&events).contains(&bad_token));
    assert!(!logs_text().contains(&bad_token));
}

// ---------------------------------------------------------------------------------------------
// Answers a real OpenBao does not give on demand: a fake one
// ---------------------------------------------------------------------------------------------

fn fake_settings(fake: &FakeServer) -> CredentialSettings {
    CredentialSettings {
        openbao_addr: Some(fake.base.clone()),
        openbao_token: Some(SecretValue::Literal("fake-root-token".into())),
        ..CredentialSettings::default()
    }
}

#[tokio::test]
async fn retries_once_after_a_5xx_and_never_after_a_4xx() {
    capture_logs();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let fake = FakeServer::start(move |_, request| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        match request.path.as_str() {
            "/v1/secret/data/flaky" if n == 0 => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"errors":["Vault is sealed"]}"#.into(),
            ),
            "/v1/secret/data/flaky" => (
                StatusCode::OK,
                json!({"data": {"data": {"token": "flaky-token"}}}).to_string(),
            ),
            "/v1/secret/data/down" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"errors":["internal error"]}"#.into(),
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                r#"{"errors":["bad request"]}"#.into(),
            ),
        }
    })
    .await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&fake_settings(&fake), &db);

    let path = static_ref("flaky");
    let outcome = resolver.resolve(request("exec-flaky", &path)).await;
    assert_eq!(
        bearer(outcome.result.as_ref().unwrap()),
        "Bearer flaky-token"
    );
    assert_eq!(fake.server_hits(), 2);

    let path = static_ref("down");
    let outcome = resolver.resolve(request("exec-down", &path)).await;
    assert_exchange_failed(
        &outcome,
        "exec-down",
        "static_ref",
        "http error: OpenBao KV request returned 500 Internal Server Error: internal error",
    );
    assert_eq!(fake.server_hits(), 4, "one retry");

    let path = static_ref("bad");
    let outcome = resolver.resolve(request("exec-bad", &path)).await;
    assert!(outcome.result.is_err());
    assert_eq!(fake.server_hits(), 5, "no retry after a 4xx");

    // Every request carried the token, marked for no logging.
    for request in fake.requests() {
        assert_eq!(request.headers["x-vault-token"], "fake-root-token");
        assert!(request.headers.get("x-vault-namespace").is_none());
    }
}

trait Hits {
    fn server_hits(&self) -> usize;
}

impl Hits for FakeServer {
    fn server_hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_lease_whose_secret_cannot_be_used_is_revoked_at_once() {
    capture_logs();
    let fake = FakeServer::start(|_, request| match request.path.as_str() {
        "/v1/database/creds/nopass" => (
            StatusCode::OK,
            json!({"lease_id": "database/creds/nopass/L1", "data": {"username": "u1"}}).to_string(),
        ),
        "/v1/database/creds/numeric" => (
            StatusCode::OK,
            json!({"lease_id": "database/creds/numeric/L2", "data": {"token": 5}}).to_string(),
        ),
        "/v1/database/creds/nodata" => (
            StatusCode::OK,
            json!({"lease_id": "database/creds/nodata/L3", "data": null}).to_string(),
        ),
        "/v1/sys/leases/revoke" => (StatusCode::NO_CONTENT, String::new()),
        _ => (StatusCode::NOT_FOUND, r#"{"errors":[]}"#.into()),
    })
    .await;
    let (db, _dir) = sqlite_database().await;
    let resolver = resolver(&fake_settings(&fake), &db);

    for (role, lease, reason) in [
        (
            "nopass",
            "database/creds/nopass/L1",
            "serialization error: OpenBao JIT response missing token/password field",
        ),
        (
            "numeric",
            "database/creds/numeric/L2",
            "serialization error: invalid OpenBao JIT response: field token is not a string",
        ),
        (
            "nodata",
            "database/creds/nodata/L3",
            "serialization error: OpenBao JIT response missing data",
        ),
    ] {
        let path = system_jit("database", role);
        let outcome = resolver.resolve(request("exec-unusable", &path)).await;
        let error = outcome.result.as_ref().unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert_eq!(error.reason, reason);
        let types: Vec<_> = outcome.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            [CREDENTIAL_EXCHANGE_FAILED, CREDENTIAL_LEASE_REVOKED]
        );
        assert_eq!(outcome.events[1].payload["lease_id"], lease);
        let revoke = fake.requests_to("/v1/sys/leases/revoke").pop().unwrap();
        assert_eq!(revoke.method, Method::PUT);
        let body: Value = serde_json::from_slice(&revoke.body).unwrap();
        assert_eq!(body, json!({"lease_id": lease}));
    }
}

#[tokio::test]
async fn preconditions_and_unsafe_paths_fail_before_any_request() {
    capture_logs();
    let fake = FakeServer::start(|_, _| (StatusCode::OK, "{}".into())).await;
    let (db, _dir) = sqlite_database().await;
    let shared = resolver(&fake_settings(&fake), &db);
    let cases = [
        (
            system_jit("../sys", "x"),
            None,
            "validation error: openbao_engine_path has an empty, '.' or '..' path segment",
        ),
        (
            system_jit("database", "ro/../../sys"),
            None,
            "validation error: SystemJit role must be a single path segment",
        ),
        (
            system_jit(" / ", "ro"),
            None,
            "validation error: SystemJit requires non-empty openbao_engine_path and role",
        ),
        (
            system_jit("database", "ro"),
            Some("a/../b"),
            "validation error: tenant id is not a valid OpenBao path segment",
        ),
        (
            static_ref("app/../../sys/leases"),
            None,
            "validation error: key has an empty, '.' or '..' path segment",
        ),
        (
            static_ref(" "),
            None,
            "validation error: StaticRef key cannot be empty",
        ),
    ];
    for (path, tenant, reason) in &cases {
        let mut req = request("exec-invalid", path);
        req.tenant_id = *tenant;
        let outcome = shared.resolve(req).await;
        assert_exchange_failed(&outcome, "exec-invalid", path.label(), reason);
    }
    assert_eq!(fake.server_hits(), 0, "nothing was sent");

    let path = static_ref("app/x");
    for (settings, reason) in [
        (
            CredentialSettings {
                openbao_addr: None,
                ..fake_settings(&fake)
            },
            "internal error: SEAL_GATEWAY_OPENBAO_ADDR is required",
        ),
        (
            CredentialSettings {
                openbao_token: None,
                ..fake_settings(&fake)
            },
            "internal error: SEAL_GATEWAY_OPENBAO_TOKEN is required",
        ),
    ] {
        let outcome = resolver(&settings, &db)
            .resolve(request("exec-unset", &path))
            .await;
        assert_exchange_failed(&outcome, "exec-unset", "static_ref", reason);
    }

    // A namespace travels as a header; settings that are not URLs are refused at start.
    let settings = CredentialSettings {
        openbao_namespace: Some("team-a/".into()),
        ..fake_settings(&fake)
    };
    let outcome = resolver(&settings, &db)
        .resolve(request("exec-ns-header", &path))
        .await;
    assert!(outcome.result.is_err(), "the fake has no KV answer");
    assert_eq!(
        fake.requests().last().unwrap().headers["x-vault-namespace"],
        "team-a/"
    );
    let error = aegis_seal_gateway::application::credential::CredentialResolver::new(
        &CredentialSettings {
            openbao_addr: Some("not a url".into()),
            ..CredentialSettings::default()
        },
        http_client(),
        db.clone(),
    )
    .unwrap_err();
    assert!(
        error.starts_with("spec.credentials.openbao_addr:"),
        "{error}"
    );
}
