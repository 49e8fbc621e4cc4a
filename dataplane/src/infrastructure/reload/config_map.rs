//! In a cluster: the snapshot in the gateway's ConfigMaps, read and watched through the API
//! (sub-second; the kubelet's volume sync takes up to a minute).
//!
//! The operator names the main ConfigMap in [`CONFIGMAP_ENV`] (`<namespace>/<name>`). It holds the
//! index (`snapshot-index.json`) and the first shards; the index may name further ConfigMaps
//! (`<gw>-snapshot-<i>`) for the rest. The data plane's Role allows get/list/watch on those names
//! only, so each is watched on its own, with `fieldSelector=metadata.name=<name>`.
//!
//! The operator writes the further ConfigMaps before the main one, so when the main one changes
//! they are current; a watch event for them may still arrive later, so a shard that does not
//! match the index is read again (GET) before the change is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_crds::Snapshot;
use aegis_seal_crds::snapshot_shards::{INDEX_KEY, ReassembleError, SnapshotIndex, parse_index};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher as watch_stream};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Applied, Retry, apply, refuse, stopped, until};
use crate::gateway::{GatewayState, off_the_runtime};
use crate::infrastructure::persistence::CatalogSource;

/// `<namespace>/<name>` of the main ConfigMap; set by the operator's Deployment.
pub const CONFIGMAP_ENV: &str = "SEAL_GATEWAY_CONFIGMAP";

/// The gateway's main ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ConfigMapRef {
    type Err = ConfigMapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(ConfigMapError::Reference(s.to_owned())),
        }
    }
}

impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("{CONFIGMAP_ENV}: \"{0}\" is not <namespace>/<name>")]
    Reference(String),
    #[error(
        "cannot configure a Kubernetes client (KUBECONFIG, ~/.kube/config or the in-cluster service account): {0}"
    )]
    Client(String),
    #[error("ConfigMap {config_map}: cannot read it: {source}")]
    Api {
        config_map: String,
        source: Box<kube::Error>,
    },
    #[error("ConfigMap {0} does not exist")]
    Missing(String),
    #[error("ConfigMap {0} has no {INDEX_KEY}: it does not hold a snapshot")]
    NoIndex(String),
    #[error("ConfigMap {config_map}: {source}")]
    Snapshot {
        config_map: String,
        source: ReassembleError,
    },
}

/// A client from `KUBECONFIG` (or `~/.kube/config`), else the pod's service account.
pub async fn client() -> Result<Client, ConfigMapError> {
    Client::try_default()
        .await
        .map_err(|e| ConfigMapError::Client(e.to_string()))
}

/// How long a starting data plane keeps trying to read its snapshot (within the 90 s its pod's
/// startup probe allows).
pub const START_DEADLINE: Duration = Duration::from_secs(60);
const START_RETRY_FIRST: Duration = Duration::from_millis(250);
const START_RETRY_MAX: Duration = Duration::from_secs(5);

/// Reads the snapshot at start, again and again until [`START_DEADLINE`]: a pod that starts while
/// the operator rewrites the ConfigMaps reads an index whose shards are being replaced, and a new
/// gateway's pod may start before its RoleBinding is in effect. Both pass within seconds; exiting
/// would cost a crash-loop back-off instead.
pub async fn fetch_at_start(
    client: &Client,
    main: &ConfigMapRef,
) -> Result<Snapshot, ConfigMapError> {
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    let mut wait = START_RETRY_FIRST;
    loop {
        match fetch(client, main).await {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(
                    config_map = %main,
                    error = %e,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "cannot read the snapshot yet; reading it again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(START_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the snapshot the ConfigMaps hold now.
pub async fn fetch(client: &Client, main: &ConfigMapRef) -> Result<Snapshot, ConfigMapError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), &main.namespace);
    let found = get(&api, main, &main.name).await?;
    let mut held = Held {
        main: Some(found.ok_or_else(|| ConfigMapError::Missing(main.to_string()))?),
        ..Default::default()
    };
    let index = held.index(main)?;
    for name in held.further_names(main, &index) {
        if let Some(cm) = get(&api, main, &name).await? {
            held.further.insert(name, cm);
        }
    }
    held.assemble_off_the_runtime(main, &index).await
}

async fn get(
    api: &Api<ConfigMap>,
    main: &ConfigMapRef,
    name: &str,
) -> Result<Option<ConfigMap>, ConfigMapError> {
    api.get_opt(name).await.map_err(|e| ConfigMapError::Api {
        config_map: format!("{}/{name}", main.namespace),
        source: Box::new(e),
    })
}

/// The ConfigMaps as last seen.
#[derive(Clone, Default)]
struct Held {
    main: Option<ConfigMap>,
    further: BTreeMap<String, ConfigMap>,
}

impl Held {
    fn index(&self, main: &ConfigMapRef) -> Result<SnapshotIndex, ConfigMapError> {
        let text = self
            .main
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(INDEX_KEY))
            .ok_or_else(|| ConfigMapError::NoIndex(main.to_string()))?;
        parse_index(text).map_err(|source| ConfigMapError::Snapshot {
            config_map: main.to_string(),
            source,
        })
    }

    /// The ConfigMaps besides the main one that the index names.
    fn further_names(&self, main: &ConfigMapRef, index: &SnapshotIndex) -> BTreeSet<String> {
        index
            .shards
            .iter()
            .filter(|s| s.config_map != main.name)
            .map(|s| s.config_map.clone())
            .collect()
    }

    fn assemble(
        &self,
        main: &ConfigMapRef,
        index: &SnapshotIndex,
    ) -> Result<Snapshot, ConfigMapError> {
        aegis_seal_crds::snapshot_shards::reassemble(index, |name, key| {
            let cm = if name == main.name {
                self.main.as_ref()
            } else {
                self.further.get(name)
            }?;
            cm.binary_data.as_ref()?.get(key).map(|b| b.0.as_slice())
        })
        .map_err(|source| ConfigMapError::Snapshot {
            config_map: main.to_string(),
            source,
        })
    }

    /// [`Held::assemble`] off the runtime ([`off_the_runtime`]): decompressing and parsing a
    /// snapshot of thousands of workflows takes tens of milliseconds.
    async fn assemble_off_the_runtime(
        &self,
        main: &ConfigMapRef,
        index: &SnapshotIndex,
    ) -> Result<Snapshot, ConfigMapError> {
        let (held, owned_main, owned_index) = (self.clone(), main.clone(), index.clone());
        off_the_runtime(move || held.assemble(&owned_main, &owned_index))
            .await
            .map_err(|e| ConfigMapError::Snapshot {
                config_map: main.to_string(),
                source: ReassembleError::Snapshot(e),
            })?
    }

    /// What an attempt read: the resourceVersion of each ConfigMap involved. The same versions
    /// give the same outcome, so a refusal is reported once.
    fn versions(&self, names: &BTreeSet<String>) -> Vec<Option<String>> {
        let rv = |cm: Option<&ConfigMap>| cm.and_then(|c| c.metadata.resource_version.clone());
        std::iter::once(rv(self.main.as_ref()))
            .chain(names.iter().map(|n| rv(self.further.get(n))))
            .collect()
    }
}

/// A change to one watched ConfigMap: its new content, or `None` when it is gone.
type Update = (String, Option<ConfigMap>);

/// Aborts the watch task when dropped.
struct WatchTask(JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches one ConfigMap by name, sending each change to `updates`.
fn watch_one(api: Api<ConfigMap>, name: String, updates: mpsc::Sender<Update>) -> WatchTask {
    WatchTask(tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watch_stream(api, config).default_backoff().boxed();
        // Whether the object was listed since the last (re)start of the watch.
        let mut listed = false;
        while let Some(event) = events.next().await {
            let update = match event {
                Ok(Event::Init) => {
                    listed = false;
                    continue;
                }
                Ok(Event::InitApply(cm)) => {
                    listed = true;
                    Some(cm)
                }
                Ok(Event::Apply(cm)) => Some(cm),
                Ok(Event::InitDone) if listed => continue,
                Ok(Event::InitDone) | Ok(Event::Delete(_)) => None,
                Err(e) => {
                    tracing::warn!(config_map = %name, error = %e, "ConfigMap watch failed; retrying");
                    continue;
                }
            };
            if updates.send((name.clone(), update)).await.is_err() {
                return;
            }
        }
    }))
}

/// Watches the ConfigMaps and serves each new snapshot they hold, until `stop`.
/// `serving` is `Snapshot::hash()` of the snapshot read at start.
pub fn spawn(
    state: Arc<GatewayState>,
    client: Client,
    main: ConfigMapRef,
    serving: String,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(config_map = %main, "watching the snapshot ConfigMap");
        let api = Api::<ConfigMap>::namespaced(client, &main.namespace);
        let (updates, mut received) = mpsc::channel(64);
        let mut follower = Follower {
            _main_watch: watch_one(api.clone(), main.name.clone(), updates.clone()),
            api,
            main,
            held: Held::default(),
            watches: BTreeMap::new(),
            updates,
            applied: Some(serving),
            refused: None,
            deferred: None,
            missing_reported: false,
        };
        loop {
            let retry_at = follower.deferred.map(|retry| retry.at);
            tokio::select! {
                _ = stopped(&mut stop) => break,
                update = received.recv() => {
                    let Some(update) = update else { break };
                    follower.take(update);
                    // Take what else arrived at once: one evaluation for a burst.
                    while let Ok(update) = received.try_recv() {
                        follower.take(update);
                    }
                    follower.evaluate(&state).await;
                }
                () = until(retry_at) => follower.evaluate(&state).await,
            }
        }
        tracing::info!("snapshot ConfigMap watch stopped");
    })
}

/// The watch loop's state.
struct Follower {
    api: Api<ConfigMap>,
    main: ConfigMapRef,
    held: Held,
    _main_watch: WatchTask,
    /// Watches of the further ConfigMaps the current index names.
    watches: BTreeMap<String, WatchTask>,
    updates: mpsc::Sender<Update>,
    /// Index hash (`Snapshot::hash()`) of the snapshot served.
    applied: Option<String>,
    /// The versions of the last refused attempt.
    refused: Option<Vec<Option<String>>>,
    /// After an attempt the database kept from being served: when to try again.
    deferred: Option<Retry>,
    missing_reported: bool,
}

impl Follower {
    fn take(&mut self, (name, cm): Update) {
        if name == self.main.name {
            self.held.main = cm;
        } else if let Some(cm) = cm {
            self.held.further.insert(name, cm);
        } else {
            self.held.further.remove(&name);
        }
    }

    /// Watches exactly the further ConfigMaps `names`.
    fn follow(&mut self, names: &BTreeSet<String>) {
        self.watches.retain(|n, _| names.contains(n));
        self.held.further.retain(|n, _| names.contains(n));
        for name in names {
            if !self.watches.contains_key(name) {
                let task = watch_one(self.api.clone(), name.clone(), self.updates.clone());
                self.watches.insert(name.clone(), task);
            }
        }
    }

    fn origin(&self) -> String {
        format!("ConfigMap {}", self.main)
    }

    async fn evaluate(&mut self, state: &GatewayState) {
        if self.held.main.is_none() {
            if !self.missing_reported {
                self.missing_reported = true;
                tracing::warn!(
                    config_map = %self.main,
                    "the snapshot ConfigMap is gone; the last good snapshot keeps serving"
                );
            }
            return;
        }
        self.missing_reported = false;
        let index = match self.held.index(&self.main) {
            Ok(index) => index,
            Err(e) => {
                self.follow(&BTreeSet::new());
                self.refuse_once(state, self.held.versions(&BTreeSet::new()), &e);
                return;
            }
        };
        let names = self.held.further_names(&self.main, &index);
        self.follow(&names);
        if self.applied.as_deref() == Some(index.snapshot_hash.as_str()) {
            self.refused = None;
            self.deferred = None;
            return;
        }
        let versions = self.held.versions(&names);
        if self.refused.as_ref() == Some(&versions) {
            return;
        }
        let mut assembled = self.held.assemble_off_the_runtime(&self.main, &index).await;
        if assembled.is_err() && !names.is_empty() {
            // A further ConfigMap's event may not have arrived yet: read them as they are now.
            if let Err(e) = self.refresh(&names).await {
                self.refuse_once(state, versions, &e);
                return;
            }
            assembled = self.held.assemble_off_the_runtime(&self.main, &index).await;
        }
        let versions = self.held.versions(&names);
        match assembled {
            Ok(snapshot) => {
                match apply(state, snapshot, CatalogSource::Kubernetes, &self.origin()).await {
                    Applied::Served => {
                        self.applied = Some(index.snapshot_hash);
                        self.refused = None;
                        self.deferred = None;
                    }
                    Applied::Refused => {
                        self.refused = Some(versions);
                        self.deferred = None;
                    }
                    Applied::Deferred => {
                        let retry = Retry::after(self.deferred);
                        tracing::warn!(
                            config_map = %self.main,
                            retry_in_s = retry.wait.as_secs(),
                            "the snapshot is offered again once the database answers"
                        );
                        self.deferred = Some(retry);
                    }
                }
            }
            Err(e) => self.refuse_once(state, versions, &e),
        }
    }

    async fn refresh(&mut self, names: &BTreeSet<String>) -> Result<(), ConfigMapError> {
        for name in names {
            match get(&self.api, &self.main, name).await? {
                Some(cm) => self.held.further.insert(name.clone(), cm),
                None => self.held.further.remove(name),
            };
        }
        Ok(())
    }

    fn refuse_once(
        &mut self,
        state: &GatewayState,
        versions: Vec<Option<String>>,
        e: &ConfigMapError,
    ) {
        if self.refused.as_ref() != Some(&versions) {
            refuse(state, &self.origin(), &e.to_string());
            self.refused = Some(versions);
        }
    }
}

#[cfg(test)]
mod tests {
    use aegis_seal_crds::snapshot_shards::{encode, shard_key};
    use k8s_openapi::ByteString;

    use super::*;

    fn main_ref() -> ConfigMapRef {
        "tools/edge-config".parse().unwrap()
    }

    fn sample() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "workflows": [],
            "cli_tools": [],
            "security_contexts": [{
                "source": {"kind": "SecurityContext", "namespace": "tools", "name": "agents"},
                "name": "agents", "description": "", "capabilities": [{"tool_pattern": "*"}],
                "deny_list": []
            }]
        }))
        .unwrap()
    }

    /// The ConfigMaps the operator would write, shards spread one per ConfigMap from the second.
    fn written(snapshot: &Snapshot, max_shard: usize) -> (ConfigMap, Vec<ConfigMap>) {
        let encoded = encode(snapshot, max_shard).unwrap();
        let names: Vec<String> = (0..encoded.shards.len())
            .map(|i| match i {
                0 => "edge-config".to_owned(),
                i => format!("edge-snapshot-{i}"),
            })
            .collect();
        let index = encoded.index(&names);
        let cm = |name: &str, i: usize, rv: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.to_owned());
            cm.metadata.resource_version = Some(rv.to_owned());
            cm.binary_data = Some(BTreeMap::from([(
                shard_key(i),
                ByteString(encoded.shards[i].clone()),
            )]));
            cm
        };
        let mut main = cm("edge-config", 0, "1");
        main.data = Some(BTreeMap::from([(
            INDEX_KEY.to_owned(),
            serde_json::to_string(&index).unwrap(),
        )]));
        let further = names
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, n)| cm(n, i, "1"))
            .collect();
        (main, further)
    }

    #[test]
    fn references_parse() {
        let r = main_ref();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("tools", "edge-config")
        );
        assert_eq!(r.to_string(), "tools/edge-config");
        for bad in ["edge", "/edge", "tools/", "a/b/c", ""] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_snapshot_spread_over_config_maps_is_put_back_together() {
        let s = sample();
        let (main, further) = written(&s, 64);
        assert!(further.len() > 1);
        let mut held = Held {
            main: Some(main),
            ..Default::default()
        };
        let index = held.index(&main_ref()).unwrap();
        let names = held.further_names(&main_ref(), &index);
        assert_eq!(names.len(), further.len());
        let missing = held.assemble(&main_ref(), &index).unwrap_err();
        assert!(
            missing.to_string().starts_with("ConfigMap tools/edge-config: shard snapshot.json.gz.1 of ConfigMap edge-snapshot-1 is missing"),
            "{missing}"
        );
        for cm in further {
            held.further.insert(cm.metadata.name.clone().unwrap(), cm);
        }
        assert_eq!(held.assemble(&main_ref(), &index).unwrap(), s);
        assert_eq!(index.snapshot_hash, s.hash());
    }

    #[test]
    fn a_main_config_map_without_a_readable_index_is_refused_with_the_reason() {
        let (mut main, _) = written(&sample(), 1 << 20);
        let mut held = Held {
            main: Some(main.clone()),
            ..Default::default()
        };
        assert!(held.index(&main_ref()).is_ok());
        main.data = Some(BTreeMap::new());
        held.main = Some(main.clone());
        assert_eq!(
            held.index(&main_ref()).unwrap_err().to_string(),
            "ConfigMap tools/edge-config has no snapshot-index.json: it does not hold a snapshot"
        );
        main.data = Some(BTreeMap::from([(INDEX_KEY.to_owned(), "{".to_owned())]));
        held.main = Some(main);
        let e = held.index(&main_ref()).unwrap_err().to_string();
        assert!(
            e.starts_with("ConfigMap tools/edge-config: snapshot index is not valid JSON"),
            "{e}"
        );
    }
}
