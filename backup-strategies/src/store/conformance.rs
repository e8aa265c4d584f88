//! Shared behaviour checks every [`ObjectStore`] backend must pass (object_store's
//! `integration.rs` idea): each backend's test calls these with a fresh prefix.
//!
//! They panic on the first difference, naming the check; each removes what it wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures::TryStreamExt;

use super::{ObjectKey, ObjectStore, PartReceipt};

/// Smallest part size that every backend accepts for a non-final part (S3's 5 MiB).
pub const MIN_PART: usize = 5 << 20;

/// Deterministic, non-repeating test bytes.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x.to_le_bytes()[0]);
    }
    Bytes::from(v)
}

fn key(prefix: &str, name: &str) -> ObjectKey {
    ObjectKey::new(format!("{prefix}/{name}")).unwrap()
}

async fn read_all(
    store: &dyn ObjectStore,
    k: &ObjectKey,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let s = store.get(k, range).await.unwrap();
    let parts: Vec<Bytes> = s.try_collect().await.unwrap();
    parts.concat()
}

/// Runs every check, each under its own sub-prefix of `prefix`.
pub async fn run_all(store: &dyn ObjectStore, prefix: &str) {
    roundtrip_small(store, &format!("{prefix}/rt")).await;
    multipart_uneven_last_part(store, &format!("{prefix}/mp")).await;
    abort_leaves_nothing(store, &format!("{prefix}/ab")).await;
    get_missing_is_not_found(store, &format!("{prefix}/nf")).await;
    range_get(store, &format!("{prefix}/rg")).await;
    list_prefix(store, &format!("{prefix}/ls")).await;
    overwrite(store, &format!("{prefix}/ow")).await;
}

/// `put` then `get`/`head`, for empty, one-byte and small bodies; `delete` removes it and
/// deleting again succeeds.
pub async fn roundtrip_small(store: &dyn ObjectStore, prefix: &str) {
    for (i, len) in [0usize, 1, 1000, 65_537].into_iter().enumerate() {
        let k = key(prefix, &format!("obj-{i}"));
        let body = pattern(len, 1);
        let r = store.put(&k, body.clone()).await.unwrap();
        assert_eq!(r.size, len as u64, "roundtrip_small: put size");
        assert_eq!(
            read_all(store, &k, None).await,
            body,
            "roundtrip_small: get"
        );
        let m = store.head(&k).await.unwrap();
        assert_eq!(m.size, len as u64, "roundtrip_small: head size");
        assert_eq!(m.key, k);
        store.delete(&k).await.unwrap();
        assert!(
            store.head(&k).await.unwrap_err().is_not_found(),
            "roundtrip_small: deleted"
        );
        store.delete(&k).await.unwrap();
    }
}

/// Three parts sent out of order, the last shorter than the others, assemble in part order.
pub async fn multipart_uneven_last_part(store: &dyn ObjectStore, prefix: &str) {
    let k = key(prefix, "big");
    let parts = [
        pattern(MIN_PART, 2),
        pattern(MIN_PART, 3),
        pattern(12_345, 4),
    ];
    let id = store.create_multipart(&k).await.unwrap();
    assert!(
        store.head(&k).await.unwrap_err().is_not_found(),
        "multipart: visible early"
    );
    let mut receipts: Vec<PartReceipt> = Vec::new();
    for n in [3u32, 1, 2] {
        let body = parts[(n - 1) as usize].clone();
        receipts.push(store.put_part(&k, &id, n, body).await.unwrap());
    }
    receipts.sort_by_key(|r| r.number);
    let total: usize = parts.iter().map(Bytes::len).sum();
    let done = store.complete_multipart(&k, &id, receipts).await.unwrap();
    assert_eq!(done.size, total as u64, "multipart: size");
    let got = read_all(store, &k, None).await;
    assert_eq!(got.len(), total, "multipart: length");
    assert!(got == parts.concat(), "multipart: content");
    assert_eq!(store.head(&k).await.unwrap().size, total as u64);
    let pending = store.list_pending_uploads(prefix).await.unwrap();
    assert!(pending.is_empty(), "multipart: still pending {pending:?}");
    store.delete(&k).await.unwrap();
    assert!(store.head(&k).await.unwrap_err().is_not_found());
    let left: Vec<_> = store.list(prefix).try_collect().await.unwrap();
    assert!(left.is_empty(), "multipart: left after delete {left:?}");
}

/// Parts uploaded and aborted leave no object, no listing entry and no pending upload; a
/// second abort succeeds.
pub async fn abort_leaves_nothing(store: &dyn ObjectStore, prefix: &str) {
    let k = key(prefix, "aborted");
    let id = store.create_multipart(&k).await.unwrap();
    store
        .put_part(&k, &id, 1, pattern(MIN_PART, 5))
        .await
        .unwrap();
    store.put_part(&k, &id, 2, pattern(100, 6)).await.unwrap();
    assert_eq!(
        store.list_pending_uploads(prefix).await.unwrap().len(),
        1,
        "abort: upload not listed as pending"
    );
    store.abort_multipart(&k, &id).await.unwrap();
    store.abort_multipart(&k, &id).await.unwrap();
    assert!(
        store.head(&k).await.unwrap_err().is_not_found(),
        "abort: object exists"
    );
    let left: Vec<_> = store.list(prefix).try_collect().await.unwrap();
    assert!(left.is_empty(), "abort: listed {left:?}");
    let pending = store.list_pending_uploads(prefix).await.unwrap();
    assert!(pending.is_empty(), "abort: pending {pending:?}");
}

/// `get` and `head` of a missing key are "not found", not another error.
pub async fn get_missing_is_not_found(store: &dyn ObjectStore, prefix: &str) {
    let k = key(prefix, "missing");
    let e = match store.get(&k, None).await {
        Ok(s) => s.try_collect::<Vec<_>>().await.map(|_| ()).unwrap_err(),
        Err(e) => e,
    };
    assert!(e.is_not_found(), "get missing: {e}");
    let e = store.head(&k).await.unwrap_err();
    assert!(e.is_not_found(), "head missing: {e}");
}

/// Byte ranges: start, middle, end, clamped past the end.
pub async fn range_get(store: &dyn ObjectStore, prefix: &str) {
    let k = key(prefix, "ranged");
    let body = pattern(10_000, 7);
    store.put(&k, body.clone()).await.unwrap();
    for r in [0..1u64, 0..10_000, 17..4096, 9_999..10_000, 5_000..20_000] {
        let got = read_all(store, &k, Some(r.clone())).await;
        let end = usize::try_from(r.end.min(10_000)).unwrap();
        let start = usize::try_from(r.start).unwrap();
        assert_eq!(got, &body[start..end], "range {r:?}");
    }
    store.delete(&k).await.unwrap();
}

/// Listing returns exactly the keys under the prefix, sorted, with sizes.
pub async fn list_prefix(store: &dyn ObjectStore, prefix: &str) {
    let names = ["a", "b/c", "b/d", "bb"];
    for (i, n) in names.iter().enumerate() {
        store.put(&key(prefix, n), pattern(i + 1, 8)).await.unwrap();
    }
    let all: Vec<_> = store
        .list(&format!("{prefix}/"))
        .try_collect()
        .await
        .unwrap();
    let keys: Vec<_> = all.iter().map(|m| m.key.to_string()).collect();
    let want: Vec<_> = names.iter().map(|n| format!("{prefix}/{n}")).collect();
    assert_eq!(keys, want, "list: all");
    assert_eq!(
        all.iter().map(|m| m.size).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let b: Vec<_> = store
        .list(&format!("{prefix}/b"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        b.len(),
        3,
        "list: plain string prefix 'b' covers b/c, b/d and bb"
    );
    let sub: Vec<_> = store
        .list(&format!("{prefix}/b/"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sub.len(), 2, "list: b/");
    let none: Vec<_> = store
        .list(&format!("{prefix}/zz"))
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
    for n in names {
        store.delete(&key(prefix, n)).await.unwrap();
    }
}

/// A second `put` or multipart upload replaces the object completely.
pub async fn overwrite(store: &dyn ObjectStore, prefix: &str) {
    let k = key(prefix, "obj");
    store.put(&k, pattern(5000, 9)).await.unwrap();
    store.put(&k, pattern(10, 10)).await.unwrap();
    assert_eq!(
        read_all(store, &k, None).await,
        pattern(10, 10),
        "overwrite: put"
    );
    let id = store.create_multipart(&k).await.unwrap();
    let a = store
        .put_part(&k, &id, 1, pattern(MIN_PART, 11))
        .await
        .unwrap();
    let b = store.put_part(&k, &id, 2, pattern(3, 12)).await.unwrap();
    store.complete_multipart(&k, &id, vec![a, b]).await.unwrap();
    let got = read_all(store, &k, None).await;
    assert!(
        got == [pattern(MIN_PART, 11), pattern(3, 12)].concat(),
        "overwrite: multipart"
    );
    store.put(&k, pattern(7, 13)).await.unwrap();
    assert_eq!(
        read_all(store, &k, None).await,
        pattern(7, 13),
        "overwrite: put after multipart"
    );
    store.delete(&k).await.unwrap();
    let left: Vec<_> = store.list(prefix).try_collect().await.unwrap();
    assert!(left.is_empty(), "overwrite: left {left:?}");
}
