//! The backup manifest: a JSON object stored beside the data and written **last**, so its
//! presence is the commit marker of a backup. It records what a restore and a verify need —
//! never a key: only the instance key's public id.

use guest_agent_api::Position;
use serde::{Deserialize, Serialize};

use crate::error::{BackupError, Result};
use crate::pipeline::compress::ZstdOpts;
use crate::pipeline::encrypt::Cipher;
use crate::store::{ObjectKey, ObjectStore, get_small};

/// The manifest format this version writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Suffix of a manifest's key after its data key.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Largest manifest read.
const MAX_MANIFEST: usize = 1 << 20;

/// Full or incremental, with the parent of an incremental.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackupKind {
    /// A self-contained backup.
    Full,
    /// Changes since the parent.
    Incremental {
        /// The parent's backup id.
        parent_id: String,
        /// The parent's manifest key.
        parent_manifest: String,
        /// The parent's stored SHA-256 (to detect a replaced parent).
        parent_sha256: String,
    },
}

/// Where and what the stored data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Key of the data object.
    pub key: String,
    /// Bytes the tool produced.
    pub raw_size: u64,
    /// Bytes stored (compressed, encrypted, with header).
    pub stored_size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// The store's entity tag of the data object, if it gave one.
    pub etag: Option<String>,
    /// Parts of the multipart upload (0 = one put).
    pub parts: u32,
    /// Part size used.
    pub part_size: u64,
}

/// Compression parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionInfo {
    /// Always `zstd`.
    pub algorithm: String,
    /// Level used.
    pub level: i32,
    /// Worker threads used (informational).
    pub workers: u32,
}

impl From<ZstdOpts> for CompressionInfo {
    fn from(z: ZstdOpts) -> Self {
        Self {
            algorithm: "zstd".into(),
            level: z.level,
            workers: z.workers,
        }
    }
}

/// Encryption parameters (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// Chunk cipher.
    pub cipher: Cipher,
    /// Plaintext bytes per chunk.
    pub chunk_size: u64,
    /// Hex id of the instance key that wrapped the data key.
    pub key_id: String,
    /// Header format version.
    pub format: u32,
}

/// A stored backup's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Backup id (Trove's backup UUID).
    pub backup_id: String,
    /// Seconds since the Unix epoch when the backup committed.
    pub created_at: u64,
    /// Datastore (`postgresql`, `mariadb`).
    pub datastore: String,
    /// Datastore version.
    pub datastore_version: String,
    /// Strategy id (`pg_basebackup`, `mariabackup` ...).
    pub strategy: String,
    /// Full or incremental.
    pub kind: BackupKind,
    /// Transaction position at backup time (LSN or GTID set), when known.
    pub position: Option<Position>,
    /// Values the tool reported (checkpoint LSN for incrementals ...).
    #[serde(default)]
    pub tool: serde_json::Map<String, serde_json::Value>,
    /// Values the driver and caller attached (databases, labels ...).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The data object.
    pub data: DataInfo,
    /// Compression.
    pub compression: CompressionInfo,
    /// Encryption, when the data is encrypted.
    pub encryption: Option<EncryptionInfo>,
}

impl Manifest {
    /// The manifest key for a data key.
    ///
    /// # Errors
    /// When the result is not a valid key.
    pub fn key_for(data_key: &ObjectKey) -> Result<ObjectKey> {
        data_key.with_suffix(MANIFEST_SUFFIX)
    }

    /// The data object's key.
    ///
    /// # Errors
    /// `Manifest` when it is not a valid key.
    pub fn data_key(&self) -> Result<ObjectKey> {
        ObjectKey::new(self.data.key.clone()).map_err(|_| BackupError::Manifest {
            key: self.backup_id.clone(),
            reason: "invalid data key".into(),
        })
    }

    /// Serializes to pretty JSON.
    ///
    /// # Errors
    /// Serialization failures (none expected).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| BackupError::Internal(format!("manifest serialization: {e}")))
    }

    /// Parses and checks a manifest read from `key`.
    ///
    /// # Errors
    /// `Manifest` for bad JSON or another format.
    pub fn from_json(key: &ObjectKey, raw: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(raw).map_err(|e| BackupError::Manifest {
            key: key.to_string(),
            reason: format!("not a manifest: {e}"),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(BackupError::Manifest {
                key: key.to_string(),
                reason: format!(
                    "format {} is not supported (expected {MANIFEST_FORMAT})",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// Reads the manifest at `key`.
    ///
    /// # Errors
    /// Store errors (not found included) and `Manifest`.
    pub async fn load(store: &dyn ObjectStore, key: &ObjectKey) -> Result<Self> {
        let raw = get_small(store, key, MAX_MANIFEST).await?;
        Self::from_json(key, &raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_roundtrip_and_format_check() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: "b".into(),
            created_at: 1,
            datastore: "postgresql".into(),
            datastore_version: "15".into(),
            strategy: "pg_basebackup".into(),
            kind: BackupKind::Incremental {
                parent_id: "a".into(),
                parent_manifest: "x/a.manifest.json".into(),
                parent_sha256: "00".into(),
            },
            position: Some(Position::Lsn("0/16B3748".parse().unwrap())),
            tool: serde_json::Map::new(),
            metadata: serde_json::Map::new(),
            data: DataInfo {
                key: "x/b.tar.zst.enc".into(),
                raw_size: 10,
                stored_size: 20,
                sha256: "ab".into(),
                etag: None,
                parts: 0,
                part_size: 8,
            },
            compression: ZstdOpts::default().into(),
            encryption: Some(EncryptionInfo {
                cipher: Cipher::ChaCha20Poly1305,
                chunk_size: 1024,
                key_id: "0011".into(),
                format: 1,
            }),
        };
        let key = ObjectKey::new("x/b.manifest.json").unwrap();
        let raw = m.to_json().unwrap();
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains("\"chacha20-poly1305\""), "{text}");
        assert!(text.contains("\"incremental\""));
        assert_eq!(Manifest::from_json(&key, &raw).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        v["format"] = 2.into();
        let e = Manifest::from_json(&key, &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("format 2"));
    }
}
