//! Every example the README points at loads and compiles with the code that serves it.

use std::path::{Path, PathBuf};

use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config, load_manifests};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn quickstart_manifests_compile_into_the_quickstart_tools() {
    let compiled = load_manifests(&examples().join("quickstart/manifests")).unwrap();
    assert!(compiled.rejected().next().is_none());
    let s = &compiled.snapshot;
    let names: Vec<_> = s
        .workflows
        .iter()
        .map(|w| w.tool_name.as_str())
        .chain(s.cli_tools.iter().map(|t| t.tool_name.as_str()))
        .chain(s.security_contexts.iter().map(|c| c.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            "create_repository_with_teams",
            "busybox",
            "quickstart-agents"
        ]
    );
    let workflow = &s.workflows[0];
    assert_eq!(workflow.steps.len(), 3);
    assert_eq!(workflow.operations["addTeam"].method, "POST");
    assert_eq!(
        workflow.operations["addTeam"].path,
        "/repos/{repo_id}/teams"
    );
}

#[test]
fn quickstart_config_loads() {
    let path = examples().join("quickstart/seal-gateway-config.yaml");
    let home = tempfile::tempdir().unwrap();
    let config = load_config(&ConfigSources {
        explicit: Some(Path::new(&path)),
        env: &|_| None,
        home: Some(home.path().to_path_buf()),
        working_dir: home.path().to_path_buf(),
    })
    .unwrap();
    assert_eq!(config.metadata.name, "quickstart");
    assert_eq!(
        config.database_url(),
        "sqlite://target/quickstart/gateway.db"
    );
    assert!(config.settings.auth.disabled);
}

#[test]
fn every_example_manifest_folder_compiles() {
    let mut folders = Vec::new();
    find_manifest_folders(&examples(), &mut folders);
    assert!(!folders.is_empty());
    for folder in folders {
        load_manifests(&folder).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn find_manifest_folders(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "manifests") {
                out.push(path);
            } else {
                find_manifest_folders(&path, out);
            }
        }
    }
}
