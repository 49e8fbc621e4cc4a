//! Two data-plane processes on one Postgres: the same envelope, sent to both at once, many times,
//! is accepted exactly once.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_seal_gateway::infrastructure::persistence::Database;

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

fn start(url: &str, pem: &str, port: u16) -> Child {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("RUST_LOG", "warn")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", url)
        .env("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM", pem)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway on {port} not healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_envelope_sent_to_two_replicas_concurrently_is_accepted_once() {
    let signer = support::Signer::from_vectors();
    let url = support::fresh_postgres_url().await;
    let db = Database::connect(&url).await.unwrap();
    db.upsert_session(&signer.session_record(chrono::Utc::now()))
        .await
        .unwrap();

    let ports = [support::free_port(), support::free_port()];
    let mut children: Vec<Child> = ports
        .iter()
        .map(|p| start(&url, &signer.rs256_public_key_pem, *p))
        .collect();
    let client = reqwest::Client::new();
    for port in ports {
        wait_healthy(&client, port).await;
    }

    const ROUNDS: usize = 20;
    const COPIES_PER_REPLICA: usize = 8;
    for round in 0..ROUNDS {
        let envelope = signer.envelope(
            "no_such_tool",
            serde_json::json!({}),
            &format!("jti-cluster-{round}-{}", uuid::Uuid::new_v4()),
            chrono::Utc::now().timestamp(),
        );
        let mut sends = Vec::new();
        for port in ports {
            for _ in 0..COPIES_PER_REPLICA {
                let client = client.clone();
                let envelope = envelope.clone();
                sends.push(tokio::spawn(async move {
                    let r = client
                        .post(format!("http://127.0.0.1:{port}/v1/invoke"))
                        .body(envelope)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap())
                }));
            }
        }
        let mut accepted = 0;
        for send in sends {
            let (status, body) = send.await.unwrap();
            match status {
                // Authorized, then no such tool: it passed the replay check.
                404 => accepted += 1,
                401 => assert!(body.contains("replay detected: jti already seen"), "{body}"),
                other => panic!("round {round}: unexpected {other} {body}"),
            }
        }
        assert_eq!(accepted, 1, "round {round}");
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    db.close().await;
}
