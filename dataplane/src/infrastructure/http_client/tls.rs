//! Outbound TLS beyond the system trust store (the `outbound` settings): CA certificates trusted
//! in addition to the system's, and a client certificate for servers that ask for one. Both come
//! from PEM files, which a Kubernetes Secret or ConfigMap volume replaces in place when the
//! certificate is renewed; [`OutboundTls::stamp`] tells when that happened, and a
//! [`RenewingClient`] takes the new files on. The trace exporter reads its collector's files the
//! same way.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aegis_seal_crds::gateway::OutboundSettings;
use arc_swap::{ArcSwap, Guard};

/// The PEM files of the `outbound` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundTls {
    pub ca_file: Option<PathBuf>,
    /// The certificate chain's file and its private key's file: both or neither (the config
    /// check refuses one without the other).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// What the three files are called where they were configured, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct TlsFileNames {
    pub ca: &'static str,
    pub certificate: &'static str,
    pub key: &'static str,
}

/// The `outbound` settings' names.
pub const OUTBOUND_SETTINGS: TlsFileNames = TlsFileNames {
    ca: "outbound.ca_file",
    certificate: "outbound.client_certificate_file",
    key: "outbound.client_key_file",
};

/// What the files held when they were read.
struct TlsMaterial {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

/// Each file's modification time and size, or `None` where it cannot be read. A renewed
/// certificate changes it: the kubelet swaps a volume's files by replacing a symlink, and
/// `fs::metadata` follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl OutboundTls {
    pub fn from_settings(settings: &OutboundSettings) -> Self {
        Self {
            ca_file: settings.ca_file.as_ref().map(PathBuf::from),
            client_identity: settings
                .client_certificate_file
                .as_ref()
                .zip(settings.client_key_file.as_ref())
                .map(|(cert, key)| (PathBuf::from(cert), PathBuf::from(key))),
        }
    }

    /// Whether there is nothing beyond the system trust store.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_identity.is_none()
    }

    fn files(&self) -> impl Iterator<Item = &Path> {
        let identity = self
            .client_identity
            .iter()
            .flat_map(|(cert, key)| [cert.as_path(), key.as_path()]);
        self.ca_file.as_deref().into_iter().chain(identity)
    }

    fn stamp(&self) -> Stamp {
        Stamp(
            self.files()
                .map(|f| {
                    let meta = std::fs::metadata(f).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect(),
        )
    }

    /// Reads and parses the files. The errors name the setting (as `names` call it) and the
    /// file, never key material.
    fn read(&self, names: TlsFileNames) -> Result<TlsMaterial, String> {
        let mut roots = Vec::new();
        if let Some(file) = &self.ca_file {
            let pem = read(names.ca, file)?;
            roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "{} {}: not a PEM certificate bundle: {}",
                    names.ca,
                    file.display(),
                    super::error_chain(&e)
                )
            })?;
            if roots.is_empty() {
                return Err(format!(
                    "{} {}: holds no PEM certificate",
                    names.ca,
                    file.display()
                ));
            }
        }
        let identity = match &self.client_identity {
            None => None,
            Some((cert_file, key_file)) => {
                let mut pem = read(names.certificate, cert_file)?;
                if !pem.ends_with(b"\n") {
                    pem.push(b'\n');
                }
                pem.extend(read(names.key, key_file)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!(
                        "{} {} with {} {}: not a PEM certificate and private key: {}",
                        names.certificate,
                        cert_file.display(),
                        names.key,
                        key_file.display(),
                        super::error_chain(&e)
                    )
                })?;
                Some(identity)
            }
        };
        Ok(TlsMaterial { roots, identity })
    }

    /// `builder` with these files read now and applied. Errors call the files by `names`.
    pub fn configure(
        &self,
        builder: reqwest::ClientBuilder,
        names: TlsFileNames,
    ) -> Result<reqwest::ClientBuilder, String> {
        Ok(self.read(names)?.apply(builder))
    }
}

impl TlsMaterial {
    fn apply(self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if !self.roots.is_empty() {
            builder = builder.tls_certs_merge(self.roots);
        }
        if let Some(identity) = self.identity {
            builder = builder.identity(identity);
        }
        builder
    }
}

fn read(setting: &str, file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("{setting} {}: cannot read: {e}", file.display()))
}

/// A reqwest client built with TLS files, rebuilt when they change. Clones share the client.
#[derive(Debug, Clone)]
pub struct RenewingClient {
    /// Replaced whole on renewal; requests already sent finish on the old one.
    current: Arc<ArcSwap<reqwest::Client>>,
    /// The files as last read (or last found unusable, so a bad file is reported once).
    stamp: Arc<Mutex<Stamp>>,
}

impl RenewingClient {
    /// The first client, which `build` makes by reading the files of `tls`.
    pub fn new<E>(
        tls: &OutboundTls,
        build: impl FnOnce() -> Result<reqwest::Client, E>,
    ) -> Result<Self, E> {
        // Taken before the build: a file that changes meanwhile is read again at the next look.
        let stamp = tls.stamp();
        let client = build()?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(client)),
            stamp: Arc::new(Mutex::new(stamp)),
        })
    }

    /// The client now in effect.
    pub fn load(&self) -> Guard<Arc<reqwest::Client>> {
        self.current.load()
    }

    /// Rebuilds the client with `build` when a file of `tls` changed since the last look, so that
    /// a renewed certificate is used for new connections without a restart. Returns what
    /// happened, if anything did: `Err` when the new files are unusable (the current client
    /// keeps serving, and the same files are not tried again).
    pub fn renew_if_changed<E: Display>(
        &self,
        tls: &OutboundTls,
        build: impl FnOnce() -> Result<reqwest::Client, E>,
    ) -> Option<Result<(), String>> {
        let stamp = tls.stamp();
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == stamp {
                return None;
            }
            *last = stamp;
        }
        Some(match build() {
            Ok(client) => {
                self.current.store(Arc::new(client));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        })
    }
}
