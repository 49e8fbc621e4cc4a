//! Standalone hot reload: the manifests folder and the config file, polled every
//! [`POLL_INTERVAL`] with a cheap fingerprint (paths, sizes, modification times, inodes).
//!
//! A folder change is read, its OpenAPI URLs fetched and compiled like at start, then served
//! through [`crate::gateway::reload`]. A config file change is loaded and validated like at start:
//! an invalid one is refused; a valid one is reported with the settings that differ from those the
//! process runs with, which take effect on the next start (the snapshot is what hot-reloads).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aegis_seal_crds::Snapshot;
use aegis_seal_crds::gateway::GatewaySettings;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Applied, Retry, apply, refuse, stopped};
use crate::gateway::{GatewayState, off_the_runtime};
use crate::infrastructure::config::{
    ConfigError, ConfigSources, ManifestSet, fetch_documents, load_config,
};
use crate::infrastructure::http_client::HttpClient;
use crate::infrastructure::persistence::CatalogSource;

/// How often the folder and the config file are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A change must hold still this long before it is read, so a file caught half-written is not
/// refused (editors and `cp` write in several steps).
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(50);
/// Most settle rounds before a changing folder is read anyway.
const MAX_SETTLE_ROUNDS: usize = 10;

/// What a set of files looks like, cheaply: enough to notice any write, rename or removal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<Entry>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    File {
        path: PathBuf,
        size: u64,
        modified: Option<SystemTime>,
        inode: u64,
    },
    /// Cannot be read now; reading it would report why.
    Unreadable { path: PathBuf, error: String },
}

impl Fingerprint {
    /// Every `*.yaml`/`*.yml` under `dir`, as [`ManifestSet::read`] finds them: hidden entries
    /// skipped (a kubelet-mounted volume holds each file three times), symbolic links followed.
    pub fn of_folder(dir: &Path) -> Self {
        let mut entries = Vec::new();
        walk(dir, &mut entries);
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        Self(entries)
    }

    /// One file (a missing one is an entry too, so its reappearance is a change).
    pub fn of_file(path: &Path) -> Self {
        Self(vec![entry(path)])
    }
}

impl Entry {
    fn path(&self) -> &Path {
        match self {
            Self::File { path, .. } | Self::Unreadable { path, .. } => path,
        }
    }
}

fn entry(path: &Path) -> Entry {
    match std::fs::metadata(path) {
        Ok(m) => Entry::File {
            path: path.to_path_buf(),
            size: m.len(),
            modified: m.modified().ok(),
            inode: inode(&m),
        },
        Err(e) => Entry::Unreadable {
            path: path.to_path_buf(),
            error: e.kind().to_string(),
        },
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

fn walk(dir: &Path, out: &mut Vec<Entry>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.push(Entry::Unreadable {
                path: dir.to_path_buf(),
                error: e.kind().to_string(),
            });
            return;
        }
    };
    for item in entries {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                out.push(Entry::Unreadable {
                    path: dir.to_path_buf(),
                    error: e.kind().to_string(),
                });
                continue;
            }
        };
        if item.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = item.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(entry(&path));
        }
    }
}

/// Reads the manifests under `dir`, fetches the OpenAPI documents they name by URL, and compiles
/// them: what the gateway serves at start and after each change.
pub async fn load_folder(dir: &Path, http: &HttpClient) -> Result<Snapshot, ConfigError> {
    let owned = dir.to_path_buf();
    let manifests = off_the_runtime(move || ManifestSet::read(&owned))
        .await
        .map_err(|e| ConfigError(format!("{}: reading failed: {e}", dir.display())))??;
    let documents = fetch_documents(&manifests.openapi_urls(), http).await;
    let compiled = off_the_runtime(move || manifests.compile(documents))
        .await
        .map_err(|e| ConfigError(format!("{}: compiling failed: {e}", dir.display())))??;
    Ok(compiled.snapshot)
}

/// What the standalone watcher looks at. Build it before the first load, so a change made while
/// the gateway starts is not missed.
pub struct FolderWatch {
    manifests: Option<(PathBuf, Fingerprint)>,
    config: Option<(PathBuf, Fingerprint)>,
}

impl FolderWatch {
    pub fn new(manifests: Option<&Path>, config: Option<&Path>) -> Self {
        Self {
            manifests: manifests.map(|d| (d.to_path_buf(), Fingerprint::of_folder(d))),
            config: config.map(|f| (f.to_path_buf(), Fingerprint::of_file(f))),
        }
    }

    /// Whether there is a folder or a file to watch.
    pub fn watches_anything(&self) -> bool {
        self.manifests.is_some() || self.config.is_some()
    }

    /// Polls until `stop`. `running` is the settings the process started with.
    pub fn spawn(
        self,
        state: Arc<GatewayState>,
        running: GatewaySettings,
        http: HttpClient,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            if let Some((dir, _)) = &self.manifests {
                tracing::info!(manifests = %dir.display(), "watching the manifests folder");
            }
            tokio::select! {
                _ = stopped(&mut stop) => {}
                _ = self.run(&state, &running, &http) => {}
            }
        })
    }

    async fn run(mut self, state: &GatewayState, running: &GatewaySettings, http: &HttpClient) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a change the database kept from being served: when to offer it again.
        let mut deferred: Option<Retry> = None;
        loop {
            tick.tick().await;
            if let Some((dir, seen)) = &mut self.manifests {
                // Off the runtime: a folder of thousands of manifests is thousands of `stat`s.
                let folder = dir.clone();
                let now = changed(seen, || {
                    let folder = folder.clone();
                    async move {
                        off_the_runtime(move || Fingerprint::of_folder(&folder))
                            .await
                            .ok()
                    }
                })
                .await;
                let due = deferred.is_some_and(|retry| tokio::time::Instant::now() >= retry.at);
                if now.is_some() || due {
                    if let Some(now) = now {
                        *seen = now;
                    }
                    let origin = dir.display().to_string();
                    let applied = match load_folder(dir, http).await {
                        Ok(snapshot) => {
                            apply(state, snapshot, CatalogSource::Manifest, &origin).await
                        }
                        Err(e) => {
                            refuse(state, &origin, &e.to_string());
                            Applied::Refused
                        }
                    };
                    deferred = (applied == Applied::Deferred).then(|| {
                        let retry = Retry::after(deferred);
                        tracing::warn!(
                            manifests = %origin,
                            retry_in_s = retry.wait.as_secs(),
                            "the manifests are offered again once the database answers"
                        );
                        retry
                    });
                }
            }
            if let Some((file, seen)) = &mut self.config
                && let Some(now) =
                    changed(seen, || async { Some(Fingerprint::of_file(file)) }).await
            {
                *seen = now;
                check_config(state, file, running);
            }
        }
    }
}

/// The new fingerprint, once it holds still, if it differs from `seen`; `None` also when one
/// could not be taken.
async fn changed<F: Future<Output = Option<Fingerprint>>>(
    seen: &Fingerprint,
    take: impl Fn() -> F,
) -> Option<Fingerprint> {
    let mut now = take().await?;
    if &now == seen {
        return None;
    }
    for _ in 0..MAX_SETTLE_ROUNDS {
        tokio::time::sleep(SETTLE_INTERVAL).await;
        let again = take().await?;
        if again == now {
            break;
        }
        now = again;
    }
    Some(now)
}

/// Loads and validates the changed config file; reports what would change.
fn check_config(state: &GatewayState, file: &Path, running: &GatewaySettings) {
    let origin = file.display().to_string();
    match load_config(&ConfigSources::process(Some(file))) {
        Err(e) => refuse(state, &origin, &e.to_string()),
        Ok(config) => {
            let changed = changed_sections(running, &config.settings);
            if changed.is_empty() {
                tracing::info!(config = %origin, "config file changed; the settings in effect are the same");
            } else {
                tracing::warn!(
                    config = %origin,
                    sections = ?changed,
                    "config file changed and is valid; its {} settings take effect when the gateway restarts",
                    changed.join(", ")
                );
            }
        }
    }
}

/// The top-level sections of the settings that differ.
pub fn changed_sections(a: &GatewaySettings, b: &GatewaySettings) -> Vec<&'static str> {
    // Destructured, so that a section added to the settings cannot be left out here.
    let GatewaySettings {
        network,
        database,
        auth,
        credentials,
        cli,
        ui,
        audit,
        outbound,
        control,
    } = a;
    [
        ("network", *network != b.network),
        ("database", *database != b.database),
        ("auth", *auth != b.auth),
        ("credentials", *credentials != b.credentials),
        ("cli", *cli != b.cli),
        ("ui", *ui != b.ui),
        ("audit", *audit != b.audit),
        ("outbound", *outbound != b.outbound),
        ("control", *control != b.control),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_writes_renames_and_removals_but_not_hidden_or_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let empty = Fingerprint::of_folder(d);
        std::fs::write(d.join("a.yaml"), "x: 1\n").unwrap();
        let one = Fingerprint::of_folder(d);
        assert_ne!(one, empty);
        assert_eq!(
            one,
            Fingerprint::of_folder(d),
            "stable while nothing changes"
        );

        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir(d.join("..2024_01_01")).unwrap();
        std::fs::write(d.join("..2024_01_01/a.yaml"), "hidden").unwrap();
        std::fs::write(d.join(".b.yaml"), "hidden").unwrap();
        assert_eq!(one, Fingerprint::of_folder(d));

        std::fs::write(d.join("a.yaml"), "x: 22\n").unwrap();
        let written = Fingerprint::of_folder(d);
        assert_ne!(written, one);

        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/c.yml"), "y: 1\n").unwrap();
        let nested = Fingerprint::of_folder(d);
        assert_ne!(nested, written);

        std::fs::rename(d.join("sub/c.yml"), d.join("sub/d.yml")).unwrap();
        assert_ne!(Fingerprint::of_folder(d), nested);
        std::fs::remove_file(d.join("sub/d.yml")).unwrap();
        assert_eq!(Fingerprint::of_folder(d), written);
    }

    #[test]
    fn a_missing_folder_or_file_has_a_fingerprint_and_its_appearance_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        let missing = Fingerprint::of_file(&file);
        assert_eq!(missing, Fingerprint::of_file(&file));
        std::fs::write(&file, "a").unwrap();
        assert_ne!(missing, Fingerprint::of_file(&file));

        let folder = dir.path().join("manifests");
        let missing = Fingerprint::of_folder(&folder);
        assert_eq!(missing.0.len(), 1);
        std::fs::create_dir(&folder).unwrap();
        assert_ne!(missing, Fingerprint::of_folder(&folder));
    }

    #[test]
    fn changed_sections_name_what_differs() {
        let a = GatewaySettings::default();
        let mut b = a.clone();
        assert!(changed_sections(&a, &b).is_empty());
        b.network.max_body_bytes += 1;
        b.auth.seal_jwt_issuer = "other".into();
        b.audit.retention_days = Some(30);
        assert_eq!(changed_sections(&a, &b), ["network", "auth", "audit"]);
    }
}
