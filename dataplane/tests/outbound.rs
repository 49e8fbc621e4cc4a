//! The outbound client's `outbound` settings against real servers on 127.0.0.1. TLS: servers
//! whose certificates come from CAs made in the test, an internal CA trusted through
//! `outbound.ca_file`, a server that requires a client certificate (mutual TLS), files renewed in
//! place the way the kubelet renews a mounted Secret, and unusable files refused with a message
//! that names the setting and the file. Proxy: an HTTP proxy that forwards plain requests and
//! tunnels `CONNECT`, the `no_proxy` bypass, and destinations still refused before the proxy.

mod tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_seal_gateway::infrastructure::http_client::{
    HttpClient, HttpClientConfig, HttpClientError, OutboundProxy, OutboundRequest, OutboundTls,
    TLS_FILES_POLL,
};
use aegis_seal_gateway::infrastructure::metrics::Metrics;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tls_support::{Ca, Leaf, acceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTPS server on 127.0.0.1 answering every request `200 ok`. With `client_ca`, it requires
/// a client certificate issued by it. Records, per handshake, whether the client presented one.
struct HttpsServer {
    addr: SocketAddr,
    client_certificates: Arc<Mutex<Vec<bool>>>,
}

impl HttpsServer {
    async fn start(cert: &Leaf, client_ca: Option<&Ca>) -> Self {
        let acceptor = acceptor(cert, client_ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_certificates: Arc<Mutex<Vec<bool>>> = Arc::default();
        let seen = client_certificates.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    // A refused handshake is what some tests expect; nothing to serve then.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    seen.lock()
                        .unwrap()
                        .push(tls.get_ref().1.peer_certificates().is_some());
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            client_certificates,
        }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("https://localhost:{}/ok", self.addr.port())).unwrap()
    }

    fn client_certificates(&self) -> Vec<bool> {
        self.client_certificates.lock().unwrap().clone()
    }
}

fn client(tls: OutboundTls) -> Result<HttpClient, HttpClientError> {
    HttpClient::new(HttpClientConfig {
        tls,
        ..HttpClientConfig::default()
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn get(client: &HttpClient, url: Url) -> Result<String, HttpClientError> {
    let response = client.send(OutboundRequest::new(Method::GET, url)).await?;
    assert_eq!(response.status, 200);
    Ok(String::from_utf8(response.body.to_vec()).unwrap())
}

fn transport_detail(result: Result<String, HttpClientError>) -> String {
    match result {
        Err(HttpClientError::Transport { detail, .. }) => detail,
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_of_an_internal_ca_is_trusted_only_through_ca_file() {
    let ca = Ca::new("Internal CA");
    let server = HttpsServer::start(&ca.server(), None).await;
    let dir = tempfile::tempdir().unwrap();

    // The system trust store alone does not know the internal CA.
    let untrusting = client(OutboundTls::default()).unwrap();
    let detail = transport_detail(get(&untrusting, server.url()).await);
    assert!(detail.contains("UnknownIssuer"), "{detail}");

    let trusting = client(OutboundTls {
        ca_file: Some(write(dir.path(), "ca.crt", &ca.pem)),
        client_identity: None,
    })
    .unwrap();
    assert_eq!(get(&trusting, server.url()).await.unwrap(), "ok");

    // Trusting the internal CA adds to the system's roots; another CA's server is still refused.
    let other = HttpsServer::start(&Ca::new("Other CA").server(), None).await;
    let detail = transport_detail(get(&trusting, other.url()).await);
    assert!(detail.contains("UnknownIssuer"), "{detail}");
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_gets_the_configured_one() {
    let server_ca = Ca::new("Server CA");
    let client_ca = Ca::new("Client CA");
    let server = HttpsServer::start(&server_ca.server(), Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.crt", &server_ca.pem);

    let anonymous = client(OutboundTls {
        ca_file: Some(ca_file.clone()),
        client_identity: None,
    })
    .unwrap();
    assert!(get(&anonymous, server.url()).await.is_err());

    let leaf = client_ca.client("seal-gateway");
    let identified = client(OutboundTls {
        ca_file: Some(ca_file),
        client_identity: Some((
            write(dir.path(), "tls.crt", &leaf.cert_pem),
            write(dir.path(), "tls.key", &leaf.key_pem),
        )),
    })
    .unwrap();
    assert_eq!(get(&identified, server.url()).await.unwrap(), "ok");
    assert_eq!(server.client_certificates(), [true]);
}

/// Lays `files` out as the kubelet lays out a Secret volume: each name a symlink through `..data`,
/// which points at a timestamped directory and is replaced atomically on an update.
fn kubelet_volume(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), link).unwrap();
        }
    }
    let next = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &next).unwrap();
    std::fs::rename(next, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn renewed_files_are_taken_on_for_new_connections_and_bad_ones_are_not() {
    let old_ca = Ca::new("CA before renewal");
    let new_ca = Ca::new("CA after renewal");
    let old_server = HttpsServer::start(&old_ca.server(), None).await;
    let new_server = HttpsServer::start(&new_ca.server(), None).await;
    let volume = tempfile::tempdir().unwrap();
    kubelet_volume(volume.path(), "..v1", &[("ca.crt", &old_ca.pem)]);
    let http = client(OutboundTls {
        ca_file: Some(volume.path().join("ca.crt")),
        client_identity: None,
    })
    .unwrap();

    assert!(
        http.reload_tls_if_changed().is_none(),
        "nothing changed yet"
    );
    assert_eq!(get(&http, old_server.url()).await.unwrap(), "ok");
    assert!(get(&http, new_server.url()).await.is_err());

    kubelet_volume(volume.path(), "..v2", &[("ca.crt", &new_ca.pem)]);
    assert_eq!(http.reload_tls_if_changed(), Some(Ok(())));
    assert_eq!(get(&http, new_server.url()).await.unwrap(), "ok");
    assert!(
        http.reload_tls_if_changed().is_none(),
        "the same files are read once"
    );

    // A renewal that leaves an unusable file is reported once, and the last good client serves.
    kubelet_volume(volume.path(), "..v3", &[("ca.crt", "not a certificate\n")]);
    let error = http.reload_tls_if_changed().unwrap().unwrap_err();
    assert!(error.contains("outbound.ca_file"), "{error}");
    assert!(http.reload_tls_if_changed().is_none());
    assert_eq!(get(&http, new_server.url()).await.unwrap(), "ok");
}

/// The follower a running gateway has: it polls every `TLS_FILES_POLL` (here on tokio's paused
/// clock) and counts each change it took on or refused.
#[tokio::test(start_paused = true)]
async fn the_follower_takes_renewals_on_by_itself_and_counts_them() {
    let old_ca = Ca::new("CA before renewal");
    let new_ca = Ca::new("CA after renewal");
    let volume = tempfile::tempdir().unwrap();
    kubelet_volume(volume.path(), "..v1", &[("ca.crt", &old_ca.pem)]);
    let metrics = Metrics::new();
    let http = client(OutboundTls {
        ca_file: Some(volume.path().join("ca.crt")),
        client_identity: None,
    })
    .unwrap()
    .with_metrics(metrics.clone());
    let follower = tokio::spawn(http.clone().follow_tls_files());
    let reloads = |outcome: &str| {
        let series = format!(r#"aegis_seal_outbound_tls_reloads_total{{outcome="{outcome}"}} "#);
        let text = metrics.encode(false);
        let line = text
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap()
            .to_owned();
        line[series.len()..].to_owned()
    };

    tokio::time::sleep(TLS_FILES_POLL * 2).await;
    assert_eq!(
        (reloads("ok"), reloads("refused")),
        ("0".into(), "0".into())
    );
    kubelet_volume(volume.path(), "..v2", &[("ca.crt", &new_ca.pem)]);
    tokio::time::sleep(TLS_FILES_POLL * 2).await;
    assert_eq!(
        (reloads("ok"), reloads("refused")),
        ("1".into(), "0".into())
    );
    kubelet_volume(volume.path(), "..v3", &[("ca.crt", "not a certificate\n")]);
    tokio::time::sleep(TLS_FILES_POLL * 2).await;
    assert_eq!(
        (reloads("ok"), reloads("refused")),
        ("1".into(), "1".into())
    );
    follower.abort();
}

#[test]
fn unusable_files_are_refused_naming_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let leaf = ca.client("gw");
    let error = |tls: OutboundTls| match client(tls) {
        Err(HttpClientError::Setup(message)) => message,
        other => panic!("expected a setup error, got {other:?}"),
    };

    let missing = dir.path().join("missing.crt");
    assert_eq!(
        error(OutboundTls {
            ca_file: Some(missing.clone()),
            client_identity: None,
        }),
        format!(
            "outbound.ca_file {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let empty = write(dir.path(), "empty.crt", "# no certificate here\n");
    assert_eq!(
        error(OutboundTls {
            ca_file: Some(empty.clone()),
            client_identity: None,
        }),
        format!(
            "outbound.ca_file {}: holds no PEM certificate",
            empty.display()
        )
    );

    // A key where the certificate should be, and no certificate at all: never key material in
    // the message.
    let cert = write(dir.path(), "tls.crt", &leaf.key_pem);
    let key = write(dir.path(), "tls.key", &leaf.key_pem);
    let message = error(OutboundTls {
        ca_file: None,
        client_identity: Some((cert.clone(), key.clone())),
    });
    assert!(
        message.starts_with(&format!(
            "outbound.client_certificate_file {} with outbound.client_key_file {}: ",
            cert.display(),
            key.display()
        )),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");
}

/// An HTTP proxy on 127.0.0.1, as an egress proxy behaves: `CONNECT host:port` opens a tunnel to
/// it, and a request in absolute form (`GET http://host/path`) is answered by the proxy itself
/// with what it was asked, so the test sees the request that reached it. Records each request
/// line and its `Proxy-Authorization`.
struct Proxy {
    addr: SocketAddr,
    seen: Seen,
}

/// Each request line that reached the proxy, with its `Proxy-Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(Self::serve(client, recorded.clone()));
            }
        });
        Self { addr, seen }
    }

    async fn serve(mut client: TcpStream, seen: Seen) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if client.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        let authorization = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_owned())
        });
        seen.lock()
            .unwrap()
            .push((request_line.clone(), authorization));
        if let Some(target) = request_line
            .strip_prefix("CONNECT ")
            .and_then(|rest| rest.split(' ').next())
        {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            let _ = client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        } else {
            let body = format!("proxied {request_line}");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
        }
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

fn proxied(proxy: &Proxy, no_proxy: &[&str], tls: OutboundTls) -> HttpClient {
    HttpClient::new(HttpClientConfig {
        tls,
        proxy: Some(OutboundProxy {
            url: format!("http://gateway:s3cret@{}", proxy.addr),
            no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
        }),
        ..HttpClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn requests_go_through_the_proxy_with_its_credentials_except_no_proxy_destinations() {
    let proxy = Proxy::start().await;
    // "Basic" of gateway:s3cret.
    let credentials = Some("Basic Z2F0ZXdheTpzM2NyZXQ=".to_owned());

    // A plain request: the proxy gets it in absolute form, names unresolved by the gateway.
    let http = proxied(&proxy, &[".svc.cluster.local"], OutboundTls::default());
    let url = Url::parse("http://billing.example.internal:8080/v1/invoices?page=2").unwrap();
    assert_eq!(
        get(&http, url).await.unwrap(),
        "proxied GET http://billing.example.internal:8080/v1/invoices?page=2 HTTP/1.1"
    );
    assert_eq!(
        proxy.seen(),
        [(
            "GET http://billing.example.internal:8080/v1/invoices?page=2 HTTP/1.1".to_owned(),
            credentials.clone()
        )]
    );

    // HTTPS: tunnelled with CONNECT; the TLS session (and the internal CA) is end to end.
    let ca = Ca::new("Internal CA");
    let server = HttpsServer::start(&ca.server(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let trusting = OutboundTls {
        ca_file: Some(write(dir.path(), "ca.crt", &ca.pem)),
        client_identity: None,
    };
    let http = proxied(&proxy, &[".svc.cluster.local"], trusting.clone());
    assert_eq!(get(&http, server.url()).await.unwrap(), "ok");
    let connect = format!("CONNECT localhost:{} HTTP/1.1", server.addr.port());
    assert_eq!(proxy.seen().last().unwrap(), &(connect, credentials));

    // A no_proxy destination is reached directly: the proxy sees nothing more.
    let before = proxy.seen().len();
    let http = proxied(&proxy, &["localhost"], trusting);
    assert_eq!(get(&http, server.url()).await.unwrap(), "ok");
    assert_eq!(proxy.seen().len(), before);

    // Metadata addresses are refused before the proxy is asked.
    let http = proxied(&proxy, &[], OutboundTls::default());
    let metadata = Url::parse("http://169.254.169.254/latest/meta-data/").unwrap();
    assert!(matches!(
        get(&http, metadata).await,
        Err(HttpClientError::BlockedDestination(_))
    ));
    assert_eq!(proxy.seen().len(), before);
}

#[test]
fn the_proxy_password_never_shows_in_debug_output() {
    let proxy = OutboundProxy {
        url: "http://gateway:s3cret@proxy.corp:3128".into(),
        no_proxy: vec![".svc".into()],
    };
    let shown = format!("{proxy:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("proxy.corp:3128"), "{shown}");
}
