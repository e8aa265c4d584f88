//! SHA-256 of the stored bytes, computed as they pass (a tee: the bytes are not copied).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A running SHA-256 and byte count.
#[derive(Debug, Clone, Default)]
pub struct Checksummer {
    sha: Sha256,
    bytes: u64,
}

/// A finished checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Bytes hashed.
    pub size: u64,
}

impl Checksummer {
    /// A fresh checksum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The result.
    pub fn finish(self) -> Checksum {
        Checksum {
            sha256: hex::encode(self.sha.finalize()),
            size: self.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let mut c = Checksummer::new();
        c.update(b"a");
        c.update(b"bc");
        let r = c.finish();
        assert_eq!(r.size, 3);
        assert_eq!(
            r.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
