//! The pipeline end to end on a local store with a file-copying tool: round trips at edge
//! sizes, tampering, truncation, wrong keys, store outages before and during upload, failing
//! and killed tools, missing parents, cancellation, and the memory budget's peak.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use guest_agent_backup::error::StoreErrorKind;
use guest_agent_backup::manifest::Manifest;
use guest_agent_backup::pipeline::encrypt::HEADER_LEN;
use guest_agent_backup::store::conformance::pattern;
use guest_agent_backup::store::{
    Fault, FaultyStore, LocalStore, ObjectKey, ObjectStore, RetryPolicy,
};
use guest_agent_backup::{
    BackupEngine, BackupError, BackupSpec, Cipher, CryptoError, InstanceKey, MemoryBudget,
    PipelineOpts, ProcessRunner, Progress, RestoreRequest,
};
use support::FileStrategy;
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 64 << 10;
const PART: usize = 256 << 10;

fn opts() -> PipelineOpts {
    PipelineOpts {
        chunk_size: CHUNK,
        block_size: CHUNK,
        part_size: PART,
        concurrency: 3,
        depth: 2,
        retry: RetryPolicy::quick(3),
        progress_interval: std::time::Duration::ZERO,
        ..PipelineOpts::default()
    }
}

struct Env {
    dir: tempfile::TempDir,
    local: Arc<LocalStore>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
        Self { dir, local }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.local) as Arc<dyn ObjectStore>
    }

    fn engine(&self, store: Arc<dyn ObjectStore>, o: PipelineOpts) -> BackupEngine {
        let budget = MemoryBudget::new(o.required_budget() * 4);
        BackupEngine::new(store, Arc::new(ProcessRunner::new()), o)
            .unwrap()
            .with_budget(budget)
            .unwrap()
    }

    fn input(&self, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn target(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn stored_file(&self, key: &str) -> std::path::PathBuf {
        self.local.root().join(key)
    }

    /// Nothing committed, nothing pending: the store holds no object and no upload.
    async fn assert_empty(&self, prefix: &str) {
        let objects: Vec<_> = self.local.list(prefix).try_collect().await.unwrap();
        assert!(objects.is_empty(), "objects left: {objects:?}");
        let pending = self.local.list_pending_uploads(prefix).await.unwrap();
        assert!(pending.is_empty(), "uploads left: {pending:?}");
    }
}

fn spec(id: &str, key: Option<&InstanceKey>) -> BackupSpec {
    BackupSpec {
        backup_id: id.into(),
        prefix: "inst".into(),
        datastore_version: "1".into(),
        key: key.cloned(),
        ..BackupSpec::default()
    }
}

fn restore_req(dir: &Path) -> RestoreRequest {
    RestoreRequest {
        target_dir: Some(dir.to_owned()),
        ..RestoreRequest::default()
    }
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test]
async fn roundtrips_at_edge_sizes_with_bounded_memory() {
    let env = Env::new();
    let key = InstanceKey::generate().unwrap();
    let o = opts();
    let required = o.required_budget();
    let engine = env.engine(env.store(), o);
    let sizes = [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        PART - 1,
        PART,
        PART + 1,
        7 * PART + 12_345,
        40 * PART + 3,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        // Incompressible data, so stored sizes (and part counts) follow the raw size.
        let data = pattern(size, u8::try_from(i).unwrap());
        let input = env.input(&format!("in-{i}"), &data);
        let id = format!("rt-{i}");
        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let s2 = Arc::clone(&seen);
        let progress: guest_agent_backup::ProgressFn =
            Arc::new(move |p| s2.lock().unwrap().push(p.clone()));
        let rep = engine
            .backup(
                &FileStrategy::cat(&input),
                &spec(&id, Some(&key)),
                Some(progress),
                &never(),
            )
            .await
            .unwrap_or_else(|e| panic!("backup of {size} bytes: {e}"));
        let m = &rep.manifest;
        assert_eq!(m.data.raw_size, size as u64);
        assert_eq!(m.strategy, "file");
        assert_eq!(m.tool.get("tool").and_then(|v| v.as_str()), Some("file"));
        let enc = m.encryption.as_ref().unwrap();
        assert_eq!(enc.key_id, hex::encode(key.key_id()));
        assert_eq!(
            m.data.stored_size,
            std::fs::metadata(env.stored_file(&m.data.key))
                .unwrap()
                .len()
        );
        if m.data.stored_size > PART as u64 {
            assert!(m.data.parts >= 2, "size {size}: {} parts", m.data.parts);
        } else {
            assert_eq!(m.data.parts, 0);
        }
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert!(last.done);
        assert_eq!(last.raw_bytes, size as u64);

        let v = engine
            .verify(&rep.manifest_key, Some(&key), None, &never())
            .await
            .unwrap();
        assert_eq!(v.raw_bytes, size as u64);

        let out = env.target(&format!("out-{i}"));
        let r = engine
            .restore(
                &FileStrategy::cat(&input),
                &rep.manifest_key,
                restore_req(&out),
                Some(&key),
                None,
                &never(),
            )
            .await
            .unwrap();
        assert_eq!(r.raw_bytes, size as u64);
        let got = std::fs::read(FileStrategy::restored(&out)).unwrap_or_default();
        assert!(got == data, "size {size}: restored bytes differ");
    }
    let peak = engine.budget().peak();
    assert!(
        peak > 0 && peak <= required,
        "peak {peak} > required {required}"
    );
    assert!(
        peak <= 4 * PART + 12 * (CHUNK + 2048),
        "peak {peak} grew with the data"
    );
    assert_eq!(engine.budget().in_use(), 0);
}

#[tokio::test]
async fn unencrypted_and_chacha_backups_roundtrip() {
    let env = Env::new();
    let data = b"compressible ".repeat(100_000);
    let input = env.input("in", &data);
    for (i, cipher) in [None, Some(Cipher::ChaCha20Poly1305)]
        .into_iter()
        .enumerate()
    {
        let key = cipher.map(|_| InstanceKey::generate().unwrap());
        let mut o = opts();
        if let Some(c) = cipher {
            o.cipher = c;
        }
        let engine = env.engine(env.store(), o);
        let rep = engine
            .backup(
                &FileStrategy::cat(&input),
                &spec(&format!("c-{i}"), key.as_ref()),
                None,
                &never(),
            )
            .await
            .unwrap();
        assert!(
            rep.manifest.data.stored_size < data.len() as u64 / 10,
            "zstd did not compress"
        );
        assert_eq!(rep.manifest.encryption.is_some(), cipher.is_some());
        let out = env.target(&format!("o-{i}"));
        engine
            .restore(
                &FileStrategy::cat(&input),
                &rep.manifest_key,
                restore_req(&out),
                key.as_ref(),
                None,
                &never(),
            )
            .await
            .unwrap();
        assert!(std::fs::read(FileStrategy::restored(&out)).unwrap() == data);
    }
}

/// Backs up `size` random bytes and returns the engine, key, manifest key and manifest.
async fn stored(
    env: &Env,
    id: &str,
    size: usize,
) -> (BackupEngine, InstanceKey, ObjectKey, Manifest) {
    let key = InstanceKey::generate().unwrap();
    let engine = env.engine(env.store(), opts());
    let input = env.input(id, &pattern(size, 42));
    let rep = engine
        .backup(
            &FileStrategy::cat(&input),
            &spec(id, Some(&key)),
            None,
            &never(),
        )
        .await
        .unwrap();
    (engine, key, rep.manifest_key, rep.manifest)
}

/// Rewrites the manifest so its size and checksum match the (tampered) stored bytes, leaving
/// authentication as the only line of defence.
async fn bless(env: &Env, mkey: &ObjectKey, m: &Manifest) {
    let bytes = std::fs::read(env.stored_file(&m.data.key)).unwrap();
    let mut sum = guest_agent_backup::pipeline::checksum::Checksummer::new();
    sum.update(&bytes);
    let c = sum.finish();
    let mut m = m.clone();
    m.data.stored_size = c.size;
    m.data.sha256 = c.sha256;
    env.local
        .put(mkey, m.to_json().unwrap().into())
        .await
        .unwrap();
}

fn crypto_kind(r: guest_agent_backup::Result<impl std::fmt::Debug>) -> Option<CryptoError> {
    r.unwrap_err().crypto()
}

#[tokio::test]
async fn bit_flips_are_tampering_with_or_without_the_checksum() {
    let env = Env::new();
    let (engine, key, mkey, m) = stored(&env, "flip", 3 * CHUNK + 100).await;
    let path = env.stored_file(&m.data.key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + CHUNK + 40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    // Caught (first) by authentication of the flipped chunk, before the final checksum.
    let e = engine
        .verify(&mkey, Some(&key), None, &never())
        .await
        .unwrap_err();
    assert!(
        e.crypto() == Some(CryptoError::Tampered) || matches!(e, BackupError::Checksum { .. }),
        "{e}"
    );
    bless(&env, &mkey, &m).await;
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Tampered)
    );

    // A flipped header byte.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + CHUNK + 40] ^= 0x10;
    bytes[50] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    bless(&env, &mkey, &m).await;
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Tampered)
    );
}

#[tokio::test]
async fn reordered_chunks_are_tampering() {
    let env = Env::new();
    let (engine, key, mkey, m) = stored(&env, "swap", 4 * CHUNK).await;
    let path = env.stored_file(&m.data.key);
    let bytes = std::fs::read(&path).unwrap();
    let sealed = CHUNK + 16;
    let (a, b) = (HEADER_LEN, HEADER_LEN + sealed);
    let mut swapped = bytes.clone();
    swapped[a..a + sealed].copy_from_slice(&bytes[b..b + sealed]);
    swapped[b..b + sealed].copy_from_slice(&bytes[a..a + sealed]);
    std::fs::write(&path, &swapped).unwrap();
    bless(&env, &mkey, &m).await;
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Tampered)
    );
}

#[tokio::test]
async fn truncated_objects_are_truncated() {
    let env = Env::new();
    let (engine, key, mkey, m) = stored(&env, "cut", 4 * CHUNK + 10).await;
    let path = env.stored_file(&m.data.key);
    let bytes = std::fs::read(&path).unwrap();
    // Shorter than the manifest says: caught by size before anything is decrypted.
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Truncated)
    );
    let out = env.target("cut-out");
    let r = engine
        .restore(
            &FileStrategy::cat(Path::new("/dev/null")),
            &mkey,
            restore_req(&out),
            Some(&key),
            None,
            &never(),
        )
        .await;
    assert_eq!(crypto_kind(r), Some(CryptoError::Truncated));
    // Cut at a chunk boundary with a matching manifest: the missing last chunk is noticed.
    std::fs::write(&path, &bytes[..HEADER_LEN + 2 * (CHUNK + 16)]).unwrap();
    bless(&env, &mkey, &m).await;
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Truncated)
    );
    // Only a header left.
    std::fs::write(&path, &bytes[..HEADER_LEN]).unwrap();
    bless(&env, &mkey, &m).await;
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&key), None, &never()).await),
        Some(CryptoError::Truncated)
    );
}

#[tokio::test]
async fn wrong_or_missing_key_is_refused_before_restoring() {
    let env = Env::new();
    let (engine, _key, mkey, m) = stored(&env, "wk", 2 * CHUNK).await;
    let other = InstanceKey::generate().unwrap();
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&other), None, &never()).await),
        Some(CryptoError::WrongKey)
    );
    let out = env.target("wk-out");
    let r = engine
        .restore(
            &FileStrategy::cat(Path::new("/dev/null")),
            &mkey,
            restore_req(&out),
            Some(&other),
            None,
            &never(),
        )
        .await;
    assert_eq!(crypto_kind(r), Some(CryptoError::WrongKey));
    assert!(!out.exists(), "the restore touched the target");
    assert!(matches!(
        engine.verify(&mkey, None, None, &never()).await,
        Err(BackupError::InvalidArgument { .. })
    ));
    // A manifest edited to name the other key: the header still says which key wrapped it.
    let mut forged = m.clone();
    forged.encryption.as_mut().unwrap().key_id = hex::encode(other.key_id());
    env.local
        .put(&mkey, forged.to_json().unwrap().into())
        .await
        .unwrap();
    assert_eq!(
        crypto_kind(engine.verify(&mkey, Some(&other), None, &never()).await),
        Some(CryptoError::WrongKey)
    );
}

async fn failing_backup(
    env: &Env,
    faults: Vec<Fault>,
    size: usize,
) -> (BackupError, Arc<FaultyStore>) {
    let faulty = Arc::new(FaultyStore::new(env.store(), faults));
    let engine = env.engine(Arc::clone(&faulty) as Arc<dyn ObjectStore>, opts());
    let input = env.input("big", &pattern(size, 3));
    let key = InstanceKey::generate().unwrap();
    let e = engine
        .backup(
            &FileStrategy::cat(&input),
            &spec("f", Some(&key)),
            None,
            &never(),
        )
        .await
        .unwrap_err();
    (e, faulty)
}

#[tokio::test]
async fn store_down_before_upload_fails_after_retries() {
    let env = Env::new();
    let (e, faulty) = failing_backup(&env, vec![Fault::Down], 10 * PART).await;
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(
        e,
        BackupError::Store {
            kind: StoreErrorKind::Unavailable,
            ..
        }
    ));
    assert_eq!(
        faulty
            .calls
            .put_part
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    env.assert_empty("").await;
    // Small backups (one put) too.
    let (e, _) = failing_backup(&env, vec![Fault::Down], 1000).await;
    assert!(e.is_retryable());
    env.assert_empty("").await;
}

#[tokio::test]
async fn store_down_during_upload_aborts_the_parts() {
    let env = Env::new();
    let (e, faulty) =
        failing_backup(&env, vec![Fault::DownAfterParts { after: 3 }], 20 * PART).await;
    assert!(e.is_retryable(), "{e}");
    assert!(
        faulty
            .calls
            .put_part
            .load(std::sync::atomic::Ordering::SeqCst)
            > 3
    );
    assert_eq!(
        faulty.calls.abort.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        faulty
            .calls
            .complete
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    env.assert_empty("").await;
}

#[tokio::test]
async fn transient_part_failures_are_retried() {
    let env = Env::new();
    let faulty = Arc::new(FaultyStore::new(
        env.store(),
        vec![Fault::FailPartOnce {
            nth: 2,
            kind: StoreErrorKind::Throttled,
        }],
    ));
    let engine = env.engine(Arc::clone(&faulty) as Arc<dyn ObjectStore>, opts());
    let data = pattern(6 * PART, 9);
    let input = env.input("in", &data);
    let key = InstanceKey::generate().unwrap();
    let rep = engine
        .backup(
            &FileStrategy::cat(&input),
            &spec("tr", Some(&key)),
            None,
            &never(),
        )
        .await
        .unwrap();
    assert!(
        faulty
            .calls
            .put_part
            .load(std::sync::atomic::Ordering::SeqCst)
            > rep.manifest.data.parts
    );
    engine
        .verify(&rep.manifest_key, Some(&key), None, &never())
        .await
        .unwrap();
}

#[tokio::test]
async fn permanent_failures_are_not_retried_and_leave_nothing() {
    let env = Env::new();
    let (e, faulty) = failing_backup(
        &env,
        vec![Fault::FailPartOnce {
            nth: 2,
            kind: StoreErrorKind::Rejected,
        }],
        6 * PART,
    )
    .await;
    assert!(!e.is_retryable());
    assert_eq!(
        faulty.calls.abort.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    env.assert_empty("").await;

    let (_, faulty) = failing_backup(
        &env,
        vec![Fault::FailComplete {
            kind: StoreErrorKind::Rejected,
        }],
        6 * PART,
    )
    .await;
    assert_eq!(
        faulty
            .calls
            .complete
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        faulty.calls.abort.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    env.assert_empty("").await;

    // The data committed but the manifest could not be written: the data is removed again.
    let (_, faulty) = failing_backup(
        &env,
        vec![Fault::FailPut {
            kind: StoreErrorKind::Rejected,
        }],
        6 * PART,
    )
    .await;
    assert_eq!(
        faulty
            .calls
            .complete
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    env.assert_empty("").await;
}

#[tokio::test]
async fn failing_tools_commit_nothing() {
    let env = Env::new();
    let data = env.input("d", &pattern(5 * PART, 1));
    let engine = env.engine(env.store(), opts());
    let cases = [
        // Non-zero exit after writing plenty.
        format!("cat {}; exit 3", data.display()),
        // Exit 0 but failure on stderr.
        format!("cat {}; echo 'error: disk went away' >&2", data.display()),
        // Killed by a signal mid-stream.
        format!("head -c 300000 {}; kill -9 $$", data.display()),
        // Fails at once, writing nothing.
        "echo 'error: no such database' >&2; exit 1".to_owned(),
    ];
    for (i, script) in cases.iter().enumerate() {
        let e = engine
            .backup(
                &FileStrategy::sh(script),
                &spec(&format!("t{i}"), None),
                None,
                &never(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::Tool { .. }), "case {i}: {e}");
        env.assert_empty("").await;
    }
}

#[tokio::test]
async fn cancelled_backups_are_aborted() {
    let env = Env::new();
    let engine = env.engine(env.store(), opts());
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    // An endless tool; cancelled once some parts were stored.
    let progress: guest_agent_backup::ProgressFn = Arc::new(move |p| {
        if p.stored_bytes >= 2 * PART as u64 {
            c2.cancel();
        }
    });
    let e = engine
        .backup(
            &FileStrategy::sh("exec cat /dev/urandom"),
            &spec("cx", None),
            Some(progress),
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::Cancelled), "{e}");
    env.assert_empty("").await;
}

#[tokio::test]
async fn incremental_with_missing_parent_is_refused() {
    let env = Env::new();
    let engine = env.engine(env.store(), opts());
    let input = env.input("in", b"base");
    let mut strategy = FileStrategy::cat(&input);
    strategy.incremental = true;
    let mut s = spec("child", None);
    s.parent_manifest = Some(ObjectKey::new("inst/nope.bin.zst.manifest.json").unwrap());
    let e = engine
        .backup(&strategy, &s, None, &never())
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::ParentMissing { .. }), "{e}");

    // A chain whose parent disappears after the child was made.
    let base = engine
        .backup(&strategy, &spec("base", None), None, &never())
        .await
        .unwrap();
    let delta = env.input("delta", b"+delta");
    let mut strategy2 = FileStrategy::cat(&delta);
    strategy2.incremental = true;
    let mut s = spec("inc", None);
    s.parent_manifest = Some(base.manifest_key.clone());
    let inc = engine.backup(&strategy2, &s, None, &never()).await.unwrap();
    let out = env.target("chain");
    engine
        .restore(
            &strategy2,
            &inc.manifest_key,
            restore_req(&out),
            None,
            None,
            &never(),
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(FileStrategy::restored(&out)).unwrap(),
        b"base+delta"
    );
    engine.delete(&base.manifest_key).await.unwrap();
    let out = env.target("chain2");
    let e = engine
        .restore(
            &strategy2,
            &inc.manifest_key,
            restore_req(&out),
            None,
            None,
            &never(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::ParentMissing { .. }), "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn rate_limited_backup_and_restore_complete() {
    let env = Env::new();
    let mut o = opts();
    // Fast enough for a test; the limiter still paces every part and download chunk.
    o.upload_rate = Some(64 << 20);
    o.download_rate = Some(64 << 20);
    let engine = env.engine(env.store(), o);
    let data = pattern(3 * PART, 5);
    let input = env.input("in", &data);
    let rep = engine
        .backup(
            &FileStrategy::cat(&input),
            &spec("rl", None),
            None,
            &never(),
        )
        .await
        .unwrap();
    let out = env.target("rl-out");
    engine
        .restore(
            &FileStrategy::cat(&input),
            &rep.manifest_key,
            restore_req(&out),
            None,
            None,
            &never(),
        )
        .await
        .unwrap();
    assert!(std::fs::read(FileStrategy::restored(&out)).unwrap() == data);
}

#[tokio::test]
async fn budget_too_small_is_refused() {
    let env = Env::new();
    let o = opts();
    let small = MemoryBudget::new(o.required_budget() / 2);
    let e = BackupEngine::new(env.store(), Arc::new(ProcessRunner::new()), o)
        .unwrap()
        .with_budget(small)
        .unwrap_err();
    assert!(matches!(e, BackupError::InvalidArgument { .. }));
    let bad = PipelineOpts {
        chunk_size: 0,
        ..PipelineOpts::default()
    };
    assert!(BackupEngine::new(env.store(), Arc::new(ProcessRunner::new()), bad).is_err());
    let e = env
        .engine(env.store(), opts())
        .backup(
            &FileStrategy::sh("true"),
            &spec("../x", None),
            None,
            &never(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::InvalidArgument { .. }));
}

#[tokio::test]
async fn disk_full_during_restore_is_a_tool_failure() {
    let env = Env::new();
    let engine = env.engine(env.store(), opts());
    let data = pattern(3 * PART, 6);
    let input = env.input("in", &data);
    let rep = engine
        .backup(
            &FileStrategy::cat(&input),
            &spec("full", None),
            None,
            &never(),
        )
        .await
        .unwrap();
    // The restore tool writes into /dev/full: every write fails with ENOSPC.
    let out = env.target("full-out");
    std::fs::create_dir_all(&out).unwrap();
    let strategy = FileStrategy {
        argv: vec!["/bin/true".into()],
        incremental: false,
    };
    let mut req = restore_req(&out);
    req.work_dir = None;
    let r = engine
        .restore(
            &DevFull(strategy),
            &rep.manifest_key,
            req,
            None,
            None,
            &never(),
        )
        .await;
    let e = r.unwrap_err();
    assert!(matches!(e, BackupError::Tool { .. }), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    // The backup itself is intact and still verifies.
    engine
        .verify(&rep.manifest_key, None, None, &never())
        .await
        .unwrap();
}

/// A [`FileStrategy`] whose restore tool writes to `/dev/full`.
#[derive(Debug)]
struct DevFull(FileStrategy);

#[guest_agent_backup::async_trait]
impl guest_agent_backup::BackupStrategy for DevFull {
    fn id(&self) -> &'static str {
        self.0.id()
    }
    fn datastore(&self) -> &'static str {
        self.0.datastore()
    }
    fn extension(&self) -> &'static str {
        self.0.extension()
    }
    fn backup_command(
        &self,
        req: &guest_agent_backup::BackupRequest,
    ) -> guest_agent_backup::Result<guest_agent_backup::run::CommandSpec> {
        self.0.backup_command(req)
    }
    fn judge_backup(
        &self,
        req: &guest_agent_backup::BackupRequest,
        exit: &guest_agent_backup::run::ToolExit,
    ) -> guest_agent_backup::Result<guest_agent_backup::strategy::ToolReport> {
        self.0.judge_backup(req, exit)
    }
    async fn before_restore(
        &self,
        _runner: &dyn guest_agent_backup::ToolRunner,
        _req: &RestoreRequest,
    ) -> guest_agent_backup::Result<()> {
        Ok(())
    }
    fn restore_command(
        &self,
        _req: &RestoreRequest,
        _step: usize,
    ) -> guest_agent_backup::Result<guest_agent_backup::run::CommandSpec> {
        Ok(guest_agent_backup::run::CommandSpec::new(
            "/bin/dd",
            ["of=/dev/full", "bs=65536"],
        ))
    }
    async fn finish_restore(
        &self,
        _runner: &dyn guest_agent_backup::ToolRunner,
        _req: &RestoreRequest,
    ) -> guest_agent_backup::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn restores_backups_sealed_with_other_chunk_sizes() {
    let env = Env::new();
    let key = InstanceKey::generate().unwrap();
    // Engines with exactly the budget their options ask for: the default engine's budget must
    // also hold the larger chunks of backups it restores.
    let exact = |o: PipelineOpts| {
        BackupEngine::new(env.store(), Arc::new(ProcessRunner::new()), o).unwrap()
    };
    let restorer = exact(PipelineOpts {
        retry: RetryPolicy::quick(3),
        ..PipelineOpts::default()
    });
    assert_eq!(restorer.opts().chunk_size, 256 << 10);
    let data = pattern(3 << 20, 9);
    let input = env.input("in", &data);
    for (id, chunk, ok) in [("c1m", 1 << 20, true), ("c2m", 2 << 20, false)] {
        let maker = exact(PipelineOpts {
            chunk_size: chunk,
            retry: RetryPolicy::quick(3),
            ..PipelineOpts::default()
        });
        let rep = maker
            .backup(
                &FileStrategy::cat(&input),
                &spec(id, Some(&key)),
                None,
                &never(),
            )
            .await
            .unwrap();
        assert_eq!(
            rep.manifest.encryption.as_ref().unwrap().chunk_size,
            chunk as u64
        );
        let out = env.target(id);
        let r = restorer
            .restore(
                &FileStrategy::cat(&input),
                &rep.manifest_key,
                restore_req(&out),
                Some(&key),
                None,
                &never(),
            )
            .await;
        if ok {
            assert_eq!(r.unwrap().raw_bytes, data.len() as u64);
            assert!(std::fs::read(FileStrategy::restored(&out)).unwrap() == data);
            assert!(restorer.budget().peak() <= restorer.budget().capacity());
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(&e, BackupError::InvalidArgument { field, .. } if field == "chunk_size"),
                "{e:?}"
            );
        }
    }
    assert_eq!(restorer.budget().in_use(), 0);
}
