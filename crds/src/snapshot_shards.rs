//! The snapshot as ConfigMaps carry it: JSON, gzip-compressed, split into shards of at most
//! [`MAX_SHARD_BYTES`], described by a [`SnapshotIndex`] so a data plane can put it back together.
//!
//! Kubernetes limits a ConfigMap's values to 1 MiB in total, so shards that do not fit beside the
//! config file go into further ConfigMaps, which the index names. The index is the commit point: a
//! reader takes the index, fetches the shards it lists, and checks the sizes and digests it carries.
//!
//! Pure (serde, flate2, sha2): the operator writes with it and the data plane reads with it.

use std::io::{Read, Write};

use crate::Snapshot;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `data` key of the index document in the gateway's main ConfigMap.
pub const INDEX_KEY: &str = "snapshot-index.json";
/// `binaryData` key of shard `i` is this prefix followed by `i`.
pub const SHARD_KEY_PREFIX: &str = "snapshot.json.gz.";
/// `format` of the index this module writes.
pub const INDEX_FORMAT: &str = "seal.100monkeys.ai/snapshot-shards/v1";
/// Largest shard.
pub const MAX_SHARD_BYTES: usize = 900 * 1024;
/// The API server's limit on the sum of a ConfigMap's `data` and `binaryData` values.
pub const MAX_CONFIG_MAP_BYTES: usize = 1024 * 1024;
const _: () = assert!(MAX_SHARD_BYTES < MAX_CONFIG_MAP_BYTES);
/// Largest snapshot JSON a reader accepts, whatever the index claims (a bound on decompression).
pub const MAX_SNAPSHOT_JSON_BYTES: u64 = 512 * 1024 * 1024;

/// What a data plane reads first: where the shards are and how to check them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotIndex {
    /// [`INDEX_FORMAT`].
    pub format: String,
    /// `sha256:<hex>` of the uncompressed JSON, which is also `Snapshot::hash()`.
    pub snapshot_hash: String,
    /// Always `gzip`.
    pub compression: String,
    /// Length of the uncompressed JSON.
    pub json_bytes: u64,
    /// Length of the compressed stream (all shards concatenated).
    pub compressed_bytes: u64,
    /// `sha256:<hex>` of the compressed stream.
    pub compressed_sha256: String,
    /// In order: concatenated, they are the compressed stream.
    pub shards: Vec<ShardRef>,
}

/// Where one shard is: a `binaryData` key of a ConfigMap in the gateway's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardRef {
    pub config_map: String,
    pub key: String,
    pub bytes: u64,
}

/// A snapshot ready to be written: the compressed stream cut into shards, and their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedSnapshot {
    pub snapshot_hash: String,
    pub json_bytes: u64,
    pub compressed_sha256: String,
    pub shards: Vec<Vec<u8>>,
}

impl EncodedSnapshot {
    pub fn compressed_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }

    /// The index, given the ConfigMap each shard is stored in.
    pub fn index(&self, config_maps: &[String]) -> SnapshotIndex {
        SnapshotIndex {
            format: INDEX_FORMAT.into(),
            snapshot_hash: self.snapshot_hash.clone(),
            compression: "gzip".into(),
            json_bytes: self.json_bytes,
            compressed_bytes: self.compressed_bytes(),
            compressed_sha256: self.compressed_sha256.clone(),
            shards: self
                .shards
                .iter()
                .zip(config_maps)
                .enumerate()
                .map(|(i, (shard, cm))| ShardRef {
                    config_map: cm.clone(),
                    key: shard_key(i),
                    bytes: shard.len() as u64,
                })
                .collect(),
        }
    }
}

pub fn shard_key(i: usize) -> String {
    format!("{SHARD_KEY_PREFIX}{i}")
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot serialize the snapshot: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot compress the snapshot: {0}")]
    Compress(#[from] std::io::Error),
}

/// Serializes, compresses (deterministically: no timestamp or name in the gzip header) and cuts
/// the snapshot into at most `max_shard` bytes per shard, of near-equal sizes.
pub fn encode(snapshot: &Snapshot, max_shard: usize) -> Result<EncodedSnapshot, CodecError> {
    let json = serde_json::to_vec(snapshot)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&json)?;
    let compressed = gz.finish()?;
    let max_shard = max_shard.max(1);
    let count = compressed.len().div_ceil(max_shard).max(1);
    let size = compressed.len().div_ceil(count).max(1);
    Ok(EncodedSnapshot {
        snapshot_hash: sha256_label(&json),
        json_bytes: json.len() as u64,
        compressed_sha256: sha256_label(&compressed),
        shards: compressed.chunks(size).map(<[u8]>::to_vec).collect(),
    })
}

/// `sha256:<lowercase hex>`, the spelling of `Snapshot::hash()`.
pub fn sha256_label(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a set of ConfigMaps does not hold a readable snapshot. A reader keeps its last good
/// snapshot and tries again when any ConfigMap the index names changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReassembleError {
    #[error("snapshot index is not valid JSON: {0}")]
    Index(String),
    #[error("unsupported snapshot index format \"{0}\" (expected {INDEX_FORMAT})")]
    Format(String),
    #[error("unsupported snapshot compression \"{0}\" (expected gzip)")]
    Compression(String),
    #[error("shard {key} of ConfigMap {config_map} is missing")]
    MissingShard { config_map: String, key: String },
    #[error("shard {key} of ConfigMap {config_map} has {actual} bytes, the index says {expected}")]
    ShardSize {
        config_map: String,
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("compressed snapshot digest {actual} does not match the index ({expected})")]
    CompressedDigest { expected: String, actual: String },
    #[error("snapshot is larger than the index says ({0} bytes) or than {MAX_SNAPSHOT_JSON_BYTES}")]
    TooLarge(u64),
    #[error("cannot decompress the snapshot: {0}")]
    Decompress(String),
    #[error("snapshot digest {actual} does not match the index ({expected})")]
    Digest { expected: String, actual: String },
    #[error("snapshot is not valid: {0}")]
    Snapshot(String),
}

/// Parses an index document (the `snapshot-index.json` value).
pub fn parse_index(text: &str) -> Result<SnapshotIndex, ReassembleError> {
    let index: SnapshotIndex =
        serde_json::from_str(text).map_err(|e| ReassembleError::Index(e.to_string()))?;
    if index.format != INDEX_FORMAT {
        return Err(ReassembleError::Format(index.format));
    }
    if index.compression != "gzip" {
        return Err(ReassembleError::Compression(index.compression));
    }
    Ok(index)
}

/// The uncompressed JSON the index describes, checked against every size and digest in it.
/// `shard(config_map, key)` returns that `binaryData` value, if present.
pub fn reassemble_json<'a>(
    index: &SnapshotIndex,
    shard: impl Fn(&str, &str) -> Option<&'a [u8]>,
) -> Result<Vec<u8>, ReassembleError> {
    let mut parts = Vec::with_capacity(index.shards.len());
    for s in &index.shards {
        let bytes = shard(&s.config_map, &s.key).ok_or_else(|| ReassembleError::MissingShard {
            config_map: s.config_map.clone(),
            key: s.key.clone(),
        })?;
        if bytes.len() as u64 != s.bytes {
            return Err(ReassembleError::ShardSize {
                config_map: s.config_map.clone(),
                key: s.key.clone(),
                expected: s.bytes,
                actual: bytes.len() as u64,
            });
        }
        parts.push(bytes);
    }
    // Sized by the bytes present, never by the index's own claims.
    let compressed = parts.concat();
    let digest = sha256_label(&compressed);
    if digest != index.compressed_sha256 {
        return Err(ReassembleError::CompressedDigest {
            expected: index.compressed_sha256.clone(),
            actual: digest,
        });
    }
    if index.json_bytes > MAX_SNAPSHOT_JSON_BYTES {
        return Err(ReassembleError::TooLarge(index.json_bytes));
    }
    // Read one byte past the announced length to notice a stream longer than announced.
    let mut json = Vec::new();
    GzDecoder::new(compressed.as_slice())
        .take(index.json_bytes + 1)
        .read_to_end(&mut json)
        .map_err(|e| ReassembleError::Decompress(e.to_string()))?;
    if json.len() as u64 != index.json_bytes {
        return Err(ReassembleError::TooLarge(index.json_bytes));
    }
    let digest = sha256_label(&json);
    if digest != index.snapshot_hash {
        return Err(ReassembleError::Digest {
            expected: index.snapshot_hash.clone(),
            actual: digest,
        });
    }
    Ok(json)
}

/// [`reassemble_json`], parsed.
pub fn reassemble<'a>(
    index: &SnapshotIndex,
    shard: impl Fn(&str, &str) -> Option<&'a [u8]>,
) -> Result<Snapshot, ReassembleError> {
    let json = reassemble_json(index, shard)?;
    serde_json::from_slice(&json).map_err(|e| ReassembleError::Snapshot(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let yaml = r#"
workflows: []
cli_tools:
  - source: {kind: CliTool, namespace: ns, name: git}
    tool_name: git
    description: read-only git
    docker_image: localhost/git:1
    allowed_subcommands: [status, log]
    require_semantic_judge: false
    default_timeout_seconds: 60
    resources: {memory: 256Mi, cpus: "1", pids: 128}
security_contexts: []
"#;
        serde_yaml::from_str(yaml).unwrap()
    }

    fn round_trip(encoded: &EncodedSnapshot) -> Result<Snapshot, ReassembleError> {
        let cms: Vec<String> = (0..encoded.shards.len())
            .map(|i| format!("cm{i}"))
            .collect();
        let index = encoded.index(&cms);
        let text = serde_json::to_string(&index).unwrap();
        let index = parse_index(&text)?;
        reassemble(&index, |cm, key| {
            let i: usize = cm.strip_prefix("cm")?.parse().ok()?;
            (key == shard_key(i)).then(|| encoded.shards[i].as_slice())
        })
    }

    #[test]
    fn the_hash_is_the_snapshot_hash_and_encoding_is_deterministic() {
        let s = sample();
        let a = encode(&s, MAX_SHARD_BYTES).unwrap();
        assert_eq!(a.snapshot_hash, s.hash());
        assert_eq!(a, encode(&s, MAX_SHARD_BYTES).unwrap());
        assert_eq!(a.shards.len(), 1);
        assert_eq!(round_trip(&a).unwrap(), s);
    }

    #[test]
    fn small_shards_reassemble() {
        let s = sample();
        let a = encode(&s, 7).unwrap();
        assert!(a.shards.len() > 3);
        assert!(a.shards.iter().all(|s| s.len() <= 7));
        assert_eq!(round_trip(&a).unwrap(), s);
    }

    #[test]
    fn damage_is_detected() {
        let s = sample();
        let mut a = encode(&s, 16).unwrap();
        a.shards[1][0] ^= 0xff;
        assert!(matches!(
            round_trip(&a),
            Err(ReassembleError::CompressedDigest { .. })
        ));

        let a = encode(&s, 16).unwrap();
        let mut index = a.index(&vec!["x".into(); a.shards.len()]);
        let missing = reassemble(&index, |_, _| None).unwrap_err();
        assert!(matches!(missing, ReassembleError::MissingShard { .. }));
        index.shards[0].bytes += 1;
        let short = reassemble(&index, |_, key| {
            let i: usize = key.strip_prefix(SHARD_KEY_PREFIX)?.parse().ok()?;
            Some(a.shards[i].as_slice())
        })
        .unwrap_err();
        assert!(matches!(short, ReassembleError::ShardSize { .. }));
    }

    #[test]
    fn an_index_claiming_a_huge_size_allocates_nothing_for_it() {
        let s = sample();
        let a = encode(&s, MAX_SHARD_BYTES).unwrap();
        let mut index = a.index(&["cm".into()]);
        // Trusted, this would abort the process ("capacity overflow" or out of memory).
        index.compressed_bytes = u64::MAX;
        let shard = |_: &str, _: &str| Some(a.shards[0].as_slice());
        assert_eq!(reassemble(&index, shard).unwrap(), s);
    }

    #[test]
    fn a_stream_longer_than_announced_is_refused() {
        let s = sample();
        let a = encode(&s, MAX_SHARD_BYTES).unwrap();
        let mut index = a.index(&["cm".into()]);
        index.json_bytes -= 1;
        let err = reassemble(&index, |_, _| Some(a.shards[0].as_slice())).unwrap_err();
        assert_eq!(err, ReassembleError::TooLarge(index.json_bytes));
    }

    #[test]
    fn unknown_formats_are_refused() {
        let s = sample();
        let a = encode(&s, MAX_SHARD_BYTES).unwrap();
        let mut index = a.index(&["cm".into()]);
        index.format = "other/v9".into();
        let text = serde_json::to_string(&index).unwrap();
        assert_eq!(
            parse_index(&text).unwrap_err(),
            ReassembleError::Format("other/v9".into())
        );
    }
}
