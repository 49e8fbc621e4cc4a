//! Private registry login for a CLI tool: the credential comes from the real OpenBao through the
//! credential resolver, podman logs in to a real (local, fake) registry with the password on stdin,
//! into an auth file of the invocation's own, which is gone afterwards.

mod cli_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::common::CredentialResolutionPath;
use aegis_seal_crds::gateway::CredentialSettings;
use aegis_seal_gateway::application::cli::{
    CLI_TOOL_INVOCATION_COMPLETED, CLI_TOOL_INVOCATION_FAILED, CLI_TOOL_INVOCATION_STARTED,
    CliEngine,
};
use base64::Engine as _;
use bytes::Bytes;
use cli_support::*;
use http_body_util::Full;
use serde_json::{Value, json};

/// A registry that only answers the login handshake: `GET /v2/` is 401 with a Basic challenge
/// unless the right credentials come with it. Records every Authorization header.
async fn registry(user: &'static str, password: String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = seen.clone();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    // The CLI tries TLS first; that connection just fails and it falls back to HTTP.
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let (recorded, expected) = (recorded.clone(), expected.clone());
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if !auth.is_empty() {
                recorded.lock().unwrap().push(auth.clone());
            }
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
            response.headers_mut().insert(
                "docker-distribution-api-version",
                "registry/2.0".parse().unwrap(),
            );
            if auth != expected {
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response
                    .headers_mut()
                    .insert("www-authenticate", "Basic realm=\"test\"".parse().unwrap());
            }
            response
        }
    })
    .await;
    (addr, seen)
}

struct Bao {
    addr: String,
    token: String,
}

impl Bao {
    fn from_env() -> Self {
        let get = |n: &str| {
            std::env::var(n).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
                panic!("{n} is not set: run `eval \"$(scripts/services.sh start)\"` (it starts OpenBao)")
            })
        };
        Self {
            addr: get("BAO_ADDR"),
            token: get("BAO_TOKEN"),
        }
    }

    async fn write_kv(&self, key: &str, data: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/secret/data/{key}", self.addr))
            .header("X-Vault-Token", &self.token)
            .json(&json!({"data": data}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    fn settings(&self) -> CredentialSettings {
        CredentialSettings {
            openbao_addr: Some(self.addr.clone()),
            openbao_token: Some(SecretValue::Literal(self.token.clone())),
            ..CredentialSettings::default()
        }
    }
}

/// podman, recording its argv in `log` and treating the local registry as plain HTTP (as an
/// operator's registries.conf would for an internal registry).
fn podman_for_registry(dir: &Path, log: &Path, registry: SocketAddr) -> std::path::PathBuf {
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
    )
    .unwrap();
    let podman = which(&podman()).unwrap();
    script(
        dir,
        "podman",
        &format!(
            "for a in \"$@\"; do printf '[%s]' \"$a\"; done >> '{log}'\necho >> '{log}'\n\
             CONTAINERS_REGISTRIES_CONF='{conf}' exec '{podman}' \"$@\"",
            log = log.display(),
            conf = conf.display(),
            podman = podman.display()
        ),
    )
}

#[tokio::test]
async fn registry_login_uses_the_resolved_credential_and_an_auth_file_of_its_own() {
    require_podman();
    let bao = Bao::from_env();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let (registry_addr, seen) = registry("robot", password.clone()).await;
    let key = format!("cli-tests/registry-{}", uuid::Uuid::new_v4().simple());
    bao.write_kv(
        &key,
        json!({"registry": registry_addr.to_string(), "username": "robot", "password": password}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let wrapper = podman_for_registry(dir.path(), &log, registry_addr);
    let engine = CliEngine::new(
        config(),
        Ok(resolve(wrapper.to_str().unwrap()).await),
        http(),
    );
    let (db, _tmp) = sqlite_database().await;
    let creds = credentials_with(&bao.settings(), &db);
    let mut tool = tool("private-tool", &["echo"]);
    tool.registry_credential_path = Some(CredentialResolutionPath::StaticRef { key: key.clone() });

    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "echo", "args": ["pulled"]}),
    )
    .await;
    let result = out.result.as_ref().expect("logged in and ran");
    assert_eq!(result.stdout, "pulled\n");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("robot:{password}"))
    );
    assert!(
        seen.lock().unwrap().contains(&expected),
        "the registry saw the credential"
    );

    let types: Vec<&str> = out.events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [
            "CredentialExchangeCompleted",
            CLI_TOOL_INVOCATION_STARTED,
            CLI_TOOL_INVOCATION_COMPLETED
        ]
    );
    for e in &out.events {
        assert!(
            !Value::Object(e.payload.clone())
                .to_string()
                .contains(&password),
            "{e:?}"
        );
    }

    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(
        !argv.contains(&password),
        "the password never is an argument: {argv}"
    );
    let login = argv
        .lines()
        .find(|l| l.starts_with("[login]"))
        .expect("a login");
    assert!(
        login.contains("[--password-stdin]") && login.contains("[--username][robot]"),
        "{login}"
    );
    let auth_file = |line: &str| {
        let start = line.find("[--authfile][").unwrap() + "[--authfile][".len();
        line[start..].split(']').next().unwrap().to_owned()
    };
    let run = argv.lines().find(|l| l.starts_with("[run]")).unwrap();
    assert_eq!(
        auth_file(login),
        auth_file(run),
        "the run pulls with the login's auth file"
    );
    let auth_dir = Path::new(&auth_file(run)).parent().unwrap().to_owned();
    assert!(
        !auth_dir.exists(),
        "the invocation's auth file is removed: {}",
        auth_dir.display()
    );
    for global in [
        "/run/containers/0/auth.json",
        "/root/.config/containers/auth.json",
        "/root/.docker/config.json",
    ] {
        let text = std::fs::read_to_string(global).unwrap_or_default();
        assert!(
            !text.contains(&registry_addr.to_string()),
            "{global} was not touched"
        );
    }
}

#[tokio::test]
async fn a_failed_registry_login_is_a_bad_gateway_without_the_password() {
    require_podman();
    let bao = Bao::from_env();
    let (registry_addr, _seen) = registry("robot", "the-right-one".into()).await;
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let key = format!("cli-tests/registry-{}", uuid::Uuid::new_v4().simple());
    bao.write_kv(
        &key,
        json!({"registry": registry_addr.to_string(), "username": "robot", "password": wrong}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = podman_for_registry(dir.path(), &dir.path().join("argv.log"), registry_addr);
    let engine = CliEngine::new(
        config(),
        Ok(resolve(wrapper.to_str().unwrap()).await),
        http(),
    );
    let (db, _tmp) = sqlite_database().await;
    let creds = credentials_with(&bao.settings(), &db);
    let mut tool = tool("private-tool", &["echo"]);
    tool.registry_credential_path = Some(CredentialResolutionPath::StaticRef { key });

    let out = invoke(
        &engine,
        &creds,
        &tool,
        &execution_id(),
        json!({"subcommand": "echo"}),
    )
    .await;
    let error = out.result.as_ref().expect_err("login fails");
    assert_eq!(error.status, 502);
    let message = error.body["error"].as_str().unwrap();
    assert!(message.starts_with("container login failed: "), "{message}");
    assert!(message.contains("invalid username/password"), "{message}");
    assert!(!error.body.to_string().contains(&wrong));
    only(&out.events, CLI_TOOL_INVOCATION_FAILED);
    assert!(events_of(&out.events, CLI_TOOL_INVOCATION_STARTED).is_empty());
}
