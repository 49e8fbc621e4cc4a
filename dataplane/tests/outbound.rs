//! Outbound HTTPS against real TLS servers on 127.0.0.1 whose certificates come from CAs made in
//! the test: an internal CA trusted through `outbound.ca_file`, a server that requires a client
//! certificate (mutual TLS), files renewed in place the way the kubelet renews a mounted Secret,
//! and unusable files refused with a message that names the setting and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_seal_gateway::infrastructure::http_client::{
    HttpClient, HttpClientConfig, HttpClientError, OutboundRequest, OutboundTls,
};
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::Url;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files would hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn server(&self) -> Leaf {
        self.leaf(
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        )
    }

    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, name)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, common_name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// An HTTPS server on 127.0.0.1 answering every request `200 ok`. With `client_ca`, it requires
/// a client certificate issued by it. Records, per handshake, whether the client presented one.
struct HttpsServer {
    addr: SocketAddr,
    client_certificates: Arc<Mutex<Vec<bool>>>,
}

impl HttpsServer {
    async fn start(cert: &Leaf, client_ca: Option<&Ca>) -> Self {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der.clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone()));
        let config = builder
            .with_single_cert(vec![cert.der.clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
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
