//! Replicas share the database: an object registered or deleted through one replica is served by
//! the others (they follow `catalog_revision`), on both backends. Waits are bounded.

mod control_support;
mod support;

use std::time::{Duration, Instant};

use control_support::{Control, JwksServer, names, operator, standard_jwks};
use serde_json::json;

/// Polls replica `b`'s tool list until `wanted` says yes; fails after a generous bound.
async fn until_served(b: &Control, token: &str, wanted: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, tools) = b.call("GET", "/v1/tools", Some(token), None).await;
        assert_eq!(status, 200, "{tools}");
        if wanted(&names(&tools)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica b never caught up: {tools}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rest_write_through_one_replica_is_served_by_the_others() {
    let jwks = JwksServer::start(standard_jwks()).await;
    let token = operator(Some("acme"), "operator");
    for (backend, url, _dir) in support::both_backends().await {
        let a = Control::start(&url, Default::default(), &jwks.uri, &[]).await;
        let b = Control::start(&url, Default::default(), &jwks.uri, &[]).await;
        let tool = json!({"name": "shared-tool", "docker_image": "localhost/busybox", "allowed_subcommands": ["ls"]});
        let (status, reply) = a
            .call("POST", "/v1/cli-tools", Some(&token), Some(tool))
            .await;
        assert_eq!(status, 201, "{backend}: {reply}");
        until_served(&b, &token, |tools| tools.iter().any(|t| t == "shared-tool")).await;

        let (status, reply) = a
            .call("DELETE", "/v1/cli-tools/shared-tool", Some(&token), None)
            .await;
        assert_eq!(status, 200, "{backend}: {reply}");
        until_served(&b, &token, |tools| {
            !tools.iter().any(|t| t == "shared-tool")
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    }
}
