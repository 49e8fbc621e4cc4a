//! The gateway's ConfigMaps: `<gw>-config` with the config file, the snapshot index and as many
//! shards as fit beside them, and `<gw>-snapshot-<i>` for the shards that do not.

use std::collections::BTreeMap;

use aegis_seal_crds::Snapshot;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;

use super::{
    CONFIG_FILE_KEY, DesiredError, GatewayContext, SNAPSHOT_CONFIG_MAPS_ANNOTATION,
    SNAPSHOT_HASH_ANNOTATION, SNAPSHOT_OF_LABEL, SNAPSHOT_SHARDS_ANNOTATION,
};
use aegis_seal_crds::snapshot_shards::{
    self, INDEX_KEY, MAX_CONFIG_MAP_BYTES, MAX_SHARD_BYTES, shard_key,
};

/// How a snapshot is laid out over ConfigMaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Largest shard ([`MAX_SHARD_BYTES`]).
    pub max_shard_bytes: usize,
    /// Largest sum of one ConfigMap's values ([`MAX_CONFIG_MAP_BYTES`]).
    pub max_config_map_bytes: usize,
    /// Most ConfigMaps one snapshot may use, the main one included.
    pub max_config_maps: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_shard_bytes: MAX_SHARD_BYTES,
            max_config_map_bytes: MAX_CONFIG_MAP_BYTES,
            max_config_maps: 64,
        }
    }
}

pub(super) struct SnapshotConfigMaps {
    pub main: ConfigMap,
    pub extra: Vec<ConfigMap>,
    pub snapshot_hash: String,
}

/// Room kept in the main ConfigMap for the index document, which is written after the layout.
fn index_reserve(shards: usize) -> usize {
    1024 + 192 * shards
}

pub(super) fn snapshot_config_maps(
    ctx: &GatewayContext,
    config_yaml: &str,
    snapshot: &Snapshot,
    limits: &SnapshotLimits,
) -> Result<SnapshotConfigMaps, DesiredError> {
    let max_shard = limits.max_shard_bytes.min(limits.max_config_map_bytes);
    let encoded = snapshot_shards::encode(snapshot, max_shard)
        .map_err(|e| DesiredError::Encode(e.to_string()))?;

    // Shards go, in order, into the main ConfigMap while they fit beside the config file and the
    // index, then into as few further ConfigMaps as possible.
    let main_budget = limits
        .max_config_map_bytes
        .saturating_sub(config_yaml.len() + index_reserve(encoded.shards.len()));
    let mut placement = Vec::with_capacity(encoded.shards.len());
    let (mut map, mut used, mut budget) = (0usize, 0usize, main_budget);
    for shard in &encoded.shards {
        if used + shard.len() > budget {
            map += 1;
            used = 0;
            budget = limits.max_config_map_bytes;
        }
        used += shard.len();
        placement.push(map);
    }
    let map_count = map + 1;
    if map_count > limits.max_config_maps {
        return Err(DesiredError::SnapshotTooLarge(format!(
            "{} compressed bytes need {map_count} ConfigMaps; at most {} are allowed",
            encoded.compressed_bytes(),
            limits.max_config_maps
        )));
    }
    let names: Vec<String> = (0..map_count)
        .map(|i| match i {
            0 => ctx.config_map_name(),
            i => format!("{}-snapshot-{i}", ctx.name),
        })
        .collect();
    let shard_maps: Vec<String> = placement.iter().map(|&m| names[m].clone()).collect();
    let index = encoded.index(&shard_maps);
    let index_json =
        serde_json::to_string(&index).map_err(|e| DesiredError::Encode(e.to_string()))?;

    let binary_data = |map: usize| -> BTreeMap<String, ByteString> {
        encoded
            .shards
            .iter()
            .enumerate()
            .filter(|(i, _)| placement[*i] == map)
            .map(|(i, shard)| (shard_key(i), ByteString(shard.clone())))
            .collect()
    };

    let mut main_meta = ctx.metadata(names[0].clone());
    main_meta.annotations = Some(BTreeMap::from([
        (
            SNAPSHOT_HASH_ANNOTATION.into(),
            encoded.snapshot_hash.clone(),
        ),
        (
            SNAPSHOT_SHARDS_ANNOTATION.into(),
            encoded.shards.len().to_string(),
        ),
        (
            SNAPSHOT_CONFIG_MAPS_ANNOTATION.into(),
            map_count.to_string(),
        ),
    ]));
    let main = ConfigMap {
        metadata: main_meta,
        data: Some(BTreeMap::from([
            (CONFIG_FILE_KEY.into(), config_yaml.to_owned()),
            (INDEX_KEY.into(), index_json),
        ])),
        binary_data: Some(binary_data(0)).filter(|d| !d.is_empty()),
        ..Default::default()
    };
    let main_size = payload_bytes(&main);
    if main_size > limits.max_config_map_bytes {
        return Err(DesiredError::SnapshotTooLarge(format!(
            "ConfigMap {} would hold {main_size} bytes, more than {}",
            names[0], limits.max_config_map_bytes
        )));
    }

    let extra = names
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, name)| {
            let mut meta = ctx.metadata(name.clone());
            if let Some(labels) = &mut meta.labels {
                labels.insert(SNAPSHOT_OF_LABEL.into(), ctx.name.clone());
            }
            meta.annotations = Some(BTreeMap::from([(
                SNAPSHOT_HASH_ANNOTATION.into(),
                encoded.snapshot_hash.clone(),
            )]));
            ConfigMap {
                metadata: meta,
                binary_data: Some(binary_data(i)),
                ..Default::default()
            }
        })
        .collect();

    Ok(SnapshotConfigMaps {
        main,
        extra,
        snapshot_hash: encoded.snapshot_hash,
    })
}

/// What the API server counts against a ConfigMap's size limit: its values.
pub(crate) fn payload_bytes(cm: &ConfigMap) -> usize {
    let data: usize = cm.data.iter().flatten().map(|(_, v)| v.len()).sum();
    let binary: usize = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(_, v)| v.0.len())
        .sum();
    data + binary
}
