//! Authenticated encryption of the compressed stream: the STREAM construction (nonce =
//! random prefix ‖ BE32 chunk counter ‖ last-chunk flag, `aead-stream`'s `StreamBE32`) over
//! fixed-size chunks with AES-256-GCM (default) or ChaCha20-Poly1305.
//!
//! Each backup gets a random 256-bit data key, wrapped (AES-256-GCM) by the instance backup
//! key and stored in the object's header. Stored layout:
//!
//! ```text
//! header (103 bytes)
//!   0  magic "GABK"            4  format version (1)     5  cipher (1 AES-GCM, 2 ChaCha)
//!   6  reserved (0, 0)         8  chunk size (BE u32)    12 instance key id (8 bytes)
//!   20 backup context (16: SHA-256 of the backup id)     36 wrap nonce (12)
//!   48 wrapped data key (32 + 16 tag)                    96 STREAM nonce prefix (7)
//! chunks: chunk_size plaintext bytes + 16-byte tag each; the last one is shorter (possibly
//!   empty) and sealed with the last flag
//! ```
//!
//! The wrap authenticates bytes 0..36 of the header, every chunk authenticates the whole
//! header, its index and whether it is last. So a changed header or byte fails as
//! [`CryptoError::Tampered`], a missing tail as [`CryptoError::Truncated`], another instance key
//! as [`CryptoError::WrongKey`] (told apart by the key id, a hash of the key, not the key).

use std::fmt;

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::{Aead, Buffer, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{BackupError, CryptoError, Result};

/// Bytes of the header.
pub const HEADER_LEN: usize = 103;
/// Bytes of each chunk's authentication tag.
pub const TAG_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"GABK";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 7;

/// The AEAD used for the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cipher {
    /// AES-256-GCM (fast with AES-NI).
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (fast without AES hardware).
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Cipher {
    fn id(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// The instance's backup key (32 bytes). It never leaves this process: manifests and headers
/// carry only its [`InstanceKey::key_id`].
#[derive(Clone)]
pub struct InstanceKey([u8; 32]);

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceKey(id={})", hex::encode(self.key_id()))
    }
}

impl InstanceKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// A key from base64 (standard alphabet) of 32 bytes.
    ///
    /// # Errors
    /// `InvalidArgument` when it is not base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| BackupError::invalid("backup key", "not base64"))?;
        let arr: [u8; 32] = raw
            .try_into()
            .map_err(|_| BackupError::invalid("backup key", "must be 32 bytes"))?;
        Ok(Self(arr))
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn generate() -> Result<Self> {
        Ok(Self(random::<32>()?))
    }

    /// A public fingerprint of the key (first 8 bytes of a domain-separated SHA-256).
    pub fn key_id(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"guest-agent backup key id v1\0");
        h.update(self.0);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| BackupError::Internal(format!("OS random source failed: {e}")))?;
    Ok(b)
}

/// The 16-byte context that binds an object to its backup id.
fn context(backup_id: &str) -> [u8; 16] {
    let d = Sha256::digest(backup_id.as_bytes());
    let mut c = [0u8; 16];
    c.copy_from_slice(&d[..16]);
    c
}

enum Stream {
    // Boxed: the AES key schedule is far larger than ChaCha's key.
    Aes(Box<StreamBE32<Aes256Gcm>>),
    ChaCha(StreamBE32<ChaCha20Poly1305>),
}

impl Stream {
    fn new(cipher: Cipher, key: &[u8; 32], prefix: &[u8]) -> Result<Self> {
        let bad = |_| BackupError::Internal("bad key or nonce length".into());
        Ok(match cipher {
            Cipher::Aes256Gcm => {
                let a = Aes256Gcm::new_from_slice(key).map_err(|_| bad(()))?;
                let n = prefix.try_into().map_err(|_| bad(()))?;
                Self::Aes(Box::new(StreamBE32::from_aead(a, &n)))
            }
            Cipher::ChaCha20Poly1305 => {
                let a = ChaCha20Poly1305::new_from_slice(key).map_err(|_| bad(()))?;
                let n = prefix.try_into().map_err(|_| bad(()))?;
                Self::ChaCha(StreamBE32::from_aead(a, &n))
            }
        })
    }

    fn seal(&self, index: u32, last: bool, aad: &[u8], buf: &mut dyn Buffer) -> Result<()> {
        let r = match self {
            Self::Aes(s) => s.encrypt_in_place(index, last, aad, buf),
            Self::ChaCha(s) => s.encrypt_in_place(index, last, aad, buf),
        };
        r.map_err(|_| BackupError::Internal("chunk encryption failed".into()))
    }

    fn open(&self, index: u32, last: bool, aad: &[u8], buf: &mut dyn Buffer) -> bool {
        let r = match self {
            Self::Aes(s) => s.decrypt_in_place(index, last, aad, buf),
            Self::ChaCha(s) => s.decrypt_in_place(index, last, aad, buf),
        };
        r.is_ok()
    }
}

/// Seals chunks of one backup, in order.
pub struct Sealer {
    header: [u8; HEADER_LEN],
    stream: Stream,
    next: u32,
    chunk: usize,
    done: bool,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("next", &self.next)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with a fresh data key wrapped by `key`, for chunks of `chunk` plaintext bytes.
    ///
    /// # Errors
    /// `InvalidArgument` for a chunk size of 0 or over 4 GiB; random source failures.
    pub fn new(key: &InstanceKey, cipher: Cipher, chunk: usize, backup_id: &str) -> Result<Self> {
        let chunk32 = u32::try_from(chunk)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| BackupError::invalid("chunk_size", "1 byte to 4 GiB"))?;
        let data_key = random::<32>()?;
        let wrap_nonce = random::<12>()?;
        let prefix = random::<PREFIX_LEN>()?;
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(MAGIC);
        h[4] = VERSION;
        h[5] = cipher.id();
        h[8..12].copy_from_slice(&chunk32.to_be_bytes());
        h[12..20].copy_from_slice(&key.key_id());
        h[20..36].copy_from_slice(&context(backup_id));
        h[36..48].copy_from_slice(&wrap_nonce);
        let kek = Aes256Gcm::new_from_slice(&key.0)
            .map_err(|_| BackupError::Internal("instance key length".into()))?;
        let wrapped = kek
            .encrypt(
                &wrap_nonce.into(),
                Payload {
                    msg: &data_key,
                    aad: &h[0..36],
                },
            )
            .map_err(|_| BackupError::Internal("wrapping the data key failed".into()))?;
        if wrapped.len() != 48 {
            return Err(BackupError::Internal("wrapped key length".into()));
        }
        h[48..96].copy_from_slice(&wrapped);
        h[96..103].copy_from_slice(&prefix);
        Ok(Self {
            stream: Stream::new(cipher, &data_key, &prefix)?,
            header: h,
            next: 0,
            chunk,
            done: false,
        })
    }

    /// The header that starts the stored object.
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Encrypts `buf` (one full chunk, or the shorter last one) in place, appending its tag.
    ///
    /// # Errors
    /// `Internal` for a wrong-size chunk, a chunk after the last or counter exhaustion.
    pub fn seal(&mut self, buf: &mut dyn Buffer, last: bool) -> Result<()> {
        if self.done || buf.len() > self.chunk || (!last && buf.len() != self.chunk) {
            return Err(BackupError::Internal(
                "chunk sealed out of order or size".into(),
            ));
        }
        let index = self.next;
        self.stream.seal(index, last, &self.header, buf)?;
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| BackupError::Internal("chunk counter exhausted".into()))?;
        self.done = last;
        Ok(())
    }
}

/// Opens the chunks of one stored backup, in order.
pub struct Opener {
    header: [u8; HEADER_LEN],
    stream: Stream,
    next: u32,
    chunk: usize,
    done: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("next", &self.next)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

/// What a header says, readable without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The chunk cipher.
    pub cipher: Cipher,
    /// Plaintext bytes per chunk.
    pub chunk_size: usize,
    /// Id of the instance key that wrapped the data key.
    pub key_id: [u8; 8],
}

/// Parses the unauthenticated fields of a header.
///
/// # Errors
/// `UnsupportedFormat` for another magic, version or cipher.
pub fn parse_header(h: &[u8]) -> Result<HeaderInfo> {
    if h.len() < HEADER_LEN {
        return Err(CryptoError::Truncated.into());
    }
    if &h[0..4] != MAGIC || h[4] != VERSION {
        return Err(CryptoError::UnsupportedFormat.into());
    }
    let cipher = Cipher::from_id(h[5]).ok_or(CryptoError::UnsupportedFormat)?;
    let mut cs = [0u8; 4];
    cs.copy_from_slice(&h[8..12]);
    let chunk_size =
        usize::try_from(u32::from_be_bytes(cs)).map_err(|_| CryptoError::UnsupportedFormat)?;
    if chunk_size == 0 {
        return Err(CryptoError::Tampered.into());
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&h[12..20]);
    Ok(HeaderInfo {
        cipher,
        chunk_size,
        key_id,
    })
}

impl Opener {
    /// Checks `header` against `key` and `backup_id` and unwraps the data key.
    ///
    /// # Errors
    /// `WrongKey` when another instance key wrapped it, `Tampered` when the header was changed
    /// or belongs to another backup, `UnsupportedFormat`, or `InvalidArgument` when the chunk
    /// size exceeds `max_chunk` (a guard against absurd allocations).
    pub fn new(
        key: &InstanceKey,
        header: &[u8],
        backup_id: &str,
        max_chunk: usize,
    ) -> Result<Self> {
        let info = parse_header(header)?;
        if info.key_id != key.key_id() {
            return Err(CryptoError::WrongKey.into());
        }
        if info.chunk_size > max_chunk {
            return Err(BackupError::invalid(
                "chunk_size",
                format!(
                    "stored chunks of {} bytes exceed the limit {max_chunk}",
                    info.chunk_size
                ),
            ));
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&header[..HEADER_LEN]);
        if h[20..36] != context(backup_id) {
            return Err(CryptoError::Tampered.into());
        }
        let kek = Aes256Gcm::new_from_slice(&key.0)
            .map_err(|_| BackupError::Internal("instance key length".into()))?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&h[36..48]);
        let data_key = kek
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &h[48..96],
                    aad: &h[0..36],
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        let data_key: [u8; 32] = data_key.try_into().map_err(|_| CryptoError::Tampered)?;
        Ok(Self {
            stream: Stream::new(info.cipher, &data_key, &h[96..103])?,
            header: h,
            next: 0,
            chunk: info.chunk_size,
            done: false,
        })
    }

    /// Stored bytes of a full chunk (plaintext + tag).
    pub fn sealed_chunk_size(&self) -> usize {
        self.chunk + TAG_LEN
    }

    /// Whether the last chunk was opened.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Decrypts one sealed chunk in place. `at_end` says whether the stored stream ends right
    /// after it.
    ///
    /// # Errors
    /// `Tampered` when authentication fails, `Truncated` when a full chunk at the end of the
    /// stream is not the sealed last one, `Tampered` for data after the last chunk.
    pub fn open(&mut self, buf: &mut dyn Buffer, at_end: bool) -> Result<()> {
        if self.done {
            return Err(CryptoError::Tampered.into());
        }
        if buf.len() < TAG_LEN || buf.len() > self.sealed_chunk_size() {
            return Err(if at_end {
                CryptoError::Truncated
            } else {
                CryptoError::Tampered
            }
            .into());
        }
        let index = self.next;
        if at_end {
            // Opening in place destroys the sealed bytes; keep them for the probe below.
            let keep = buf.as_ref().to_vec();
            if self.stream.open(index, true, &self.header, buf) {
                self.done = true;
                self.next = self.next.saturating_add(1);
                return Ok(());
            }
            // A chunk that opens as "not last" means the stream was cut after it.
            let mut probe = keep;
            if self.stream.open(index, false, &self.header, &mut probe) {
                return Err(CryptoError::Truncated.into());
            }
            return Err(CryptoError::Tampered.into());
        }
        if buf.len() != self.sealed_chunk_size()
            || !self.stream.open(index, false, &self.header, buf)
        {
            return Err(CryptoError::Tampered.into());
        }
        self.next = self.next.checked_add(1).ok_or(CryptoError::Tampered)?;
        Ok(())
    }
}

/// The encryption stage: writes the header, then seals the input as chunks (a blocking thread).
pub fn encrypt_stage(
    mut input: super::chunk::BlockRx,
    mut sealer: Sealer,
    depth: usize,
    pool: crate::budget::BufferPool,
) -> super::chunk::BlockRx {
    use super::chunk::Block;
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    tokio::task::spawn_blocking(move || {
        let chunk = sealer.chunk_size();
        let send = |buf| tx.blocking_send(Ok(Block::pooled(buf))).is_ok();
        let mut run = || -> Result<bool> {
            let mut header = pool.get_blocking(HEADER_LEN)?;
            header.fill_from(sealer.header());
            if !send(header) {
                return Ok(false);
            }
            // Room for the tag, which sealing appends in place.
            let new_buf = || pool.get_blocking(chunk + TAG_LEN);
            let mut cur = new_buf()?;
            while let Some(item) = input.blocking_recv() {
                let block = item?;
                let mut data: &[u8] = &block.data;
                while !data.is_empty() {
                    if cur.len() == chunk {
                        // More data follows, so this full chunk is not the last.
                        let mut buf = std::mem::replace(&mut cur, new_buf()?);
                        sealer.seal(&mut buf, false)?;
                        if !send(buf) {
                            return Ok(false);
                        }
                    }
                    let take = (chunk - cur.len()).min(data.len());
                    cur.fill_from(&data[..take]);
                    data = &data[take..];
                }
            }
            sealer.seal(&mut cur, true)?;
            Ok(send(cur))
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// The decryption stage: reads the header, checks it against `key` and `backup_id`, then opens
/// each chunk and passes its plaintext on (a blocking thread). No plaintext of a chunk leaves
/// the stage before the chunk authenticated.
pub fn decrypt_stage(
    mut input: super::chunk::BlockRx,
    key: InstanceKey,
    backup_id: String,
    max_chunk: usize,
    depth: usize,
    pool: crate::budget::BufferPool,
) -> super::chunk::BlockRx {
    use super::chunk::Block;
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    tokio::task::spawn_blocking(move || {
        let mut run = || -> Result<bool> {
            let mut header = Vec::with_capacity(HEADER_LEN);
            let mut opener: Option<Opener> = None;
            let mut cur: Option<crate::budget::PoolBuf> = None;
            while let Some(item) = input.blocking_recv() {
                let block = item?;
                let mut data: &[u8] = &block.data;
                while !data.is_empty() {
                    let Some(o) = opener.as_mut() else {
                        let take = (HEADER_LEN - header.len()).min(data.len());
                        header.extend_from_slice(&data[..take]);
                        data = &data[take..];
                        if header.len() == HEADER_LEN {
                            opener = Some(Opener::new(&key, &header, &backup_id, max_chunk)?);
                        }
                        continue;
                    };
                    let sealed = o.sealed_chunk_size();
                    // A full chunk with more data behind it is not the last one.
                    if cur.as_ref().is_some_and(|b| b.len() == sealed)
                        && let Some(mut buf) = cur.take()
                    {
                        o.open(&mut buf, false)?;
                        if tx.blocking_send(Ok(Block::pooled(buf))).is_err() {
                            return Ok(false);
                        }
                    }
                    if cur.is_none() {
                        cur = Some(pool.get_blocking(sealed)?);
                    }
                    if let Some(buf) = cur.as_mut() {
                        let take = buf.fill_from(data);
                        data = &data[take..];
                    }
                }
            }
            let Some(o) = opener.as_mut() else {
                return Err(CryptoError::Truncated.into());
            };
            let mut buf = match cur.take() {
                Some(c) => c,
                None => pool.get_blocking(0)?,
            };
            o.open(&mut buf, true)?;
            Ok(tx.blocking_send(Ok(Block::pooled(buf))).is_ok())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &InstanceKey, cipher: Cipher, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = Sealer::new(key, cipher, chunk, "b1").unwrap();
        let mut out = s.header().to_vec();
        let mut chunks: Vec<&[u8]> = data.chunks(chunk).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let mut b = c.to_vec();
            s.seal(&mut b, i + 1 == n).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    fn open_all(key: &InstanceKey, stored: &[u8], id: &str) -> Result<Vec<u8>> {
        let mut o = Opener::new(key, stored, id, 1 << 20)?;
        let body = &stored[HEADER_LEN..];
        let step = o.sealed_chunk_size();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let end = (pos + step).min(body.len());
            let mut b = body[pos..end].to_vec();
            let at_end = end == body.len();
            o.open(&mut b, at_end)?;
            out.extend_from_slice(&b);
            pos = end;
            if at_end {
                break;
            }
        }
        Ok(out)
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)]
    fn roundtrip_both_ciphers_and_edge_sizes() {
        let key = InstanceKey::generate().unwrap();
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            for len in [0usize, 1, 63, 64, 65, 640] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let stored = seal_all(&key, cipher, &data, 64);
                assert_eq!(
                    open_all(&key, &stored, "b1").unwrap(),
                    data,
                    "{cipher:?} {len}"
                );
            }
        }
    }

    #[test]
    fn tamper_truncate_reorder_wrong_key() {
        let key = InstanceKey::generate().unwrap();
        let data = vec![5u8; 64 * 4 + 10];
        let stored = seal_all(&key, Cipher::Aes256Gcm, &data, 64);
        let kind = |r: Result<Vec<u8>>| r.unwrap_err().crypto();

        let mut flipped = stored.clone();
        flipped[HEADER_LEN + 70] ^= 1;
        assert_eq!(
            kind(open_all(&key, &flipped, "b1")),
            Some(CryptoError::Tampered)
        );

        let mut hdr = stored.clone();
        hdr[9] ^= 1; // chunk size
        assert!(open_all(&key, &hdr, "b1").is_err());
        let mut hdr = stored.clone();
        hdr[100] ^= 1; // nonce prefix
        assert_eq!(
            kind(open_all(&key, &hdr, "b1")),
            Some(CryptoError::Tampered)
        );

        // Cut at a chunk boundary: detected as truncation.
        let cut = &stored[..HEADER_LEN + 2 * 80];
        assert_eq!(
            kind(open_all(&key, cut, "b1")),
            Some(CryptoError::Truncated)
        );
        // Cut inside a chunk.
        let cut = &stored[..HEADER_LEN + 2 * 80 + 30];
        assert!(open_all(&key, cut, "b1").is_err());

        // Swap chunks 0 and 1.
        let mut swapped = stored.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + 80);
        let c0 = stored[a..a + 80].to_vec();
        let c1 = stored[b..b + 80].to_vec();
        swapped[a..a + 80].copy_from_slice(&c1);
        swapped[b..b + 80].copy_from_slice(&c0);
        assert_eq!(
            kind(open_all(&key, &swapped, "b1")),
            Some(CryptoError::Tampered)
        );

        let other = InstanceKey::generate().unwrap();
        assert_eq!(
            kind(open_all(&other, &stored, "b1")),
            Some(CryptoError::WrongKey)
        );
        assert_eq!(
            kind(open_all(&key, &stored, "b2")),
            Some(CryptoError::Tampered)
        );
        let mut junk = stored.clone();
        junk[0] = b'X';
        assert_eq!(
            kind(open_all(&key, &junk, "b1")),
            Some(CryptoError::UnsupportedFormat)
        );
    }

    #[test]
    fn key_debug_shows_only_the_id() {
        let key = InstanceKey::from_bytes([7u8; 32]);
        let d = format!("{key:?}");
        assert!(d.starts_with("InstanceKey(id="));
        assert!(!d.contains("0707070707"));
        assert!(InstanceKey::from_base64("AAAA").is_err());
    }
}
