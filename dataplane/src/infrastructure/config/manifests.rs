//! The manifests folder: every `*.yaml`/`*.yml` under it, compiled by the same `crds::compile` the
//! operator uses. A bad file or a rejected resource fails the load as a whole, naming the file, the
//! document and the field.

use std::path::{Path, PathBuf};

use aegis_seal_crds::{Compiled, ManifestOrigin, Resources, compile, parse_manifests};

use super::ConfigError;

/// Reads and compiles every manifest under `dir`.
pub fn load_manifests(dir: &Path) -> Result<Compiled, ConfigError> {
    let mut files = Vec::new();
    collect_yaml_files(dir, &mut files).map_err(|e| {
        ConfigError(format!(
            "{}: cannot read manifests folder: {e}",
            dir.display()
        ))
    })?;
    files.sort();

    let mut resources = Resources::default();
    let mut origins: Vec<(PathBuf, ManifestOrigin)> = Vec::new();
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

    let compiled = compile(&resources);
    if let Some(rejected) = compiled.rejected().next() {
        let r = &rejected.resource;
        let (file, document) = origins
            .iter()
            .find(|(_, o)| o.kind == r.kind && o.namespace == r.namespace && o.name == r.name)
            .map(|(f, o)| (f.display().to_string(), o.document))
            .unwrap_or_else(|| (dir.display().to_string(), 0));
        return Err(ConfigError(format!(
            "{file}: document {document} ({r}): {}",
            rejected.message()
        )));
    }
    Ok(compiled)
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
