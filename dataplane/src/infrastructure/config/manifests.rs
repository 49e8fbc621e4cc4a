//! The manifests folder: every `*.yaml`/`*.yml` under it, compiled by the same `crds::compile` the
//! operator uses. A bad file or a rejected resource fails the load as a whole, naming the file, the
//! document and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aegis_seal_crds::{Compiled, ManifestOrigin, Resources, compile, parse_manifests};

use super::ConfigError;

/// Reads and compiles every manifest under `dir`. Workflows whose OpenAPI document is a `url` are
/// rejected unless the document was fetched first: see [`ManifestSet`].
pub fn load_manifests(dir: &Path) -> Result<Compiled, ConfigError> {
    ManifestSet::read(dir)?.compile(BTreeMap::new())
}

/// The manifests of a folder, parsed and checked, not yet compiled.
pub struct ManifestSet {
    dir: PathBuf,
    resources: Resources,
    origins: Vec<(PathBuf, ManifestOrigin)>,
}

impl ManifestSet {
    /// Parses every manifest under `dir`; a resource defined twice is an error.
    pub fn read(dir: &Path) -> Result<Self, ConfigError> {
        let (resources, origins) = read(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            resources,
            origins,
        })
    }

    /// The OpenAPI document URLs the workflows name, to fetch before compiling.
    pub fn openapi_urls(&self) -> Vec<String> {
        aegis_seal_crds::openapi_urls(&self.resources.workflows)
    }

    /// Compiles with the fetched documents (URL -> text or why it could not be fetched).
    pub fn compile(
        mut self,
        documents: BTreeMap<String, Result<String, String>>,
    ) -> Result<Compiled, ConfigError> {
        self.resources.documents = documents;
        let compiled = compile(&self.resources);
        if let Some(rejected) = compiled.rejected().next() {
            let r = &rejected.resource;
            let (file, document) = self
                .origins
                .iter()
                .find(|(_, o)| o.kind == r.kind && o.namespace == r.namespace && o.name == r.name)
                .map(|(f, o)| (f.display().to_string(), o.document))
                .unwrap_or_else(|| (self.dir.display().to_string(), 0));
            return Err(ConfigError(format!(
                "{file}: document {document} ({r}): {}",
                rejected.message()
            )));
        }
        Ok(compiled)
    }
}

type Origins = Vec<(PathBuf, ManifestOrigin)>;

fn read(dir: &Path) -> Result<(Resources, Origins), ConfigError> {
    let mut files = Vec::new();
    collect_yaml_files(dir, &mut files).map_err(|e| {
        ConfigError(format!(
            "{}: cannot read manifests folder: {e}",
            dir.display()
        ))
    })?;
    files.sort();

    let mut resources = Resources::default();
    let mut origins: Origins = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", file.display())))?;
        let found = parse_manifests(&text, &mut resources)
            .map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;
        for origin in found {
            if let Some((first_file, first)) = origins.iter().find(|(_, o)| {
                o.kind == origin.kind && o.namespace == origin.namespace && o.name == origin.name
            }) {
                return Err(ConfigError(format!(
                    "{}: document {}: {} {} is defined twice (first in {} document {})",
                    file.display(),
                    origin.document,
                    origin.kind,
                    origin.name,
                    first_file.display(),
                    first.document
                )));
            }
            origins.push((file.clone(), origin));
        }
    }

    Ok((resources, origins))
}

/// Every YAML file under `dir`. Hidden entries are skipped: a ConfigMap or Secret mounted by the
/// kubelet holds each file three times (`..2024_01_01/x.yaml`, `..data`, and the `x.yaml` link).
fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// How long fetching one OpenAPI document may take.
pub const DOCUMENT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest OpenAPI document accepted.
pub const MAX_DOCUMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Fetches each URL once, with a bounded time and size; a failure is kept as the reason, so the
/// workflow that needs it is rejected with it.
pub async fn fetch_documents(
    urls: &[String],
    http: &crate::infrastructure::http_client::HttpClient,
) -> BTreeMap<String, Result<String, String>> {
    use crate::infrastructure::http_client::OutboundRequest;
    let mut documents = BTreeMap::new();
    for url in urls {
        let fetched = match reqwest::Url::parse(url) {
            Err(e) => Err(format!("invalid URL: {e}")),
            Ok(parsed) => {
                let mut request = OutboundRequest::new(http::Method::GET, parsed);
                request.timeout = Some(DOCUMENT_FETCH_TIMEOUT);
                request.max_response_bytes = Some(MAX_DOCUMENT_BYTES);
                match http.send(request).await {
                    Ok(r) if r.status.is_success() => String::from_utf8(r.body.to_vec())
                        .map_err(|_| "the document is not UTF-8".into()),
                    Ok(r) => Err(format!("HTTP {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        documents.insert(url.clone(), fetched);
    }
    documents
}
