//! The object store conformance checks against a real OpenStack Swift through its native v1
//! API (tempauth), plus Swift-specific behaviour: segments of aborted and overwritten uploads
//! are removed, pre-authenticated sessions work, bad credentials are `Unauthorized`.
//! Needs `tools/swift.sh start`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use futures::TryStreamExt;
use guest_agent_backup::error::StoreErrorKind;
use guest_agent_backup::store::conformance::{self, MIN_PART, pattern};
use guest_agent_backup::store::{ObjectKey, ObjectStore, SwiftAuth, SwiftStoreBuilder};

#[tokio::test]
async fn swift_native_conformance() {
    let container = support::unique("ga-conf");
    let store = support::swift_store(&container).await;
    conformance::run_all(&store, "run").await;
    // Segments of the multipart and overwrite checks were deleted with their objects.
    let segs = support::swift_segments(&container);
    let left: Vec<_> = segs.list("").try_collect().await.unwrap();
    assert!(left.is_empty(), "segments left: {left:?}");
    store.delete_containers().await.unwrap();
}

#[tokio::test]
async fn overwriting_a_large_object_removes_its_old_segments() {
    let container = support::unique("ga-ow");
    let store = support::swift_store(&container).await;
    let key = ObjectKey::new("k").unwrap();
    for round in 0..2u8 {
        let id = store.create_multipart(&key).await.unwrap();
        let a = store
            .put_part(&key, &id, 1, pattern(MIN_PART, round))
            .await
            .unwrap();
        let b = store
            .put_part(&key, &id, 2, pattern(10, round))
            .await
            .unwrap();
        store
            .complete_multipart(&key, &id, vec![a, b])
            .await
            .unwrap();
    }
    let segs = support::swift_store(&format!("{container}_segments")).await;
    let left: Vec<_> = segs.list("").try_collect().await.unwrap();
    assert_eq!(
        left.len(),
        2,
        "only the live object's segments remain: {left:?}"
    );
    store.delete(&key).await.unwrap();
    let left: Vec<_> = segs.list("").try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn preauth_and_bad_credentials() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = support::swift_auth_url();
    support::require_swift(&url);
    // Obtain a token the way Trove's control plane would hand it over.
    let resp = reqwest::Client::new()
        .get(&url)
        .header("X-Auth-User", "test:tester")
        .header("X-Auth-Key", "testing")
        .send()
        .await
        .unwrap();
    let storage_url = resp.headers()["x-storage-url"].to_str().unwrap().to_owned();
    let token = resp.headers()["x-auth-token"].to_str().unwrap().to_owned();
    let container = support::unique("ga-pre");
    let store = SwiftStoreBuilder::new(SwiftAuth::PreAuth { storage_url, token }, &container)
        .build()
        .unwrap();
    store.ensure_containers().await.unwrap();
    let key = ObjectKey::new("a/b").unwrap();
    store.put(&key, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(store.head(&key).await.unwrap().size, 5);
    store.delete(&key).await.unwrap();
    store.delete_containers().await.unwrap();

    let bad = SwiftStoreBuilder::new(
        SwiftAuth::TempAuth {
            auth_url: url,
            user: "test:tester".into(),
            key: "wrong".into(),
        },
        "ga-bad",
    )
    .build()
    .unwrap();
    let e = bad.head(&key).await.unwrap_err();
    assert!(
        matches!(
            e,
            guest_agent_backup::BackupError::Store {
                kind: StoreErrorKind::Unauthorized,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_retryable());
}

/// Collects a whole stream.
async fn read_all(
    store: &impl ObjectStore,
    key: &ObjectKey,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .get(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

#[tokio::test]
async fn more_parts_than_a_manifest_holds_become_a_nested_slo() {
    let container = support::unique("ga-nest");
    // Four segments per manifest, far below the cluster's 1000, so a few parts nest: 11 parts
    // need one level of sub-manifests (3), 17 need two (5, then 2).
    let store = SwiftStoreBuilder::new(support::swift_auth(), &container)
        .with_max_manifest_segments(4)
        .build()
        .unwrap();
    store.ensure_containers().await.unwrap();
    assert_eq!(store.max_manifest_segments().await, 4);
    // Without a limit of its own, the store takes the cluster's (tools/swift.sh sets 1200).
    let plain = support::swift_store(&container).await;
    assert_eq!(plain.max_manifest_segments().await, 1200);
    let segs = support::swift_segments(&container);
    let key = ObjectKey::new("nested/big").unwrap();
    for (round, parts, manifests) in [(0u8, 11u32, 3usize), (1, 17, 7)] {
        let id = store.create_multipart(&key).await.unwrap();
        let mut receipts = Vec::new();
        let mut expected = Vec::new();
        for n in 1..=parts {
            let body = pattern(
                1000 + n as usize,
                round.wrapping_add(u8::try_from(n).unwrap()),
            );
            expected.extend_from_slice(&body);
            receipts.push(store.put_part(&key, &id, n, body).await.unwrap());
        }
        let done = store.complete_multipart(&key, &id, receipts).await.unwrap();
        assert_eq!(done.size, expected.len() as u64);
        assert_eq!(store.head(&key).await.unwrap().size, expected.len() as u64);
        assert!(
            read_all(&store, &key, None).await == expected,
            "round {round}: bytes differ"
        );
        // A range across sub-manifest boundaries.
        let (a, b) = (3_500usize, 9_700usize);
        let got = read_all(&store, &key, Some(a as u64..b as u64)).await;
        assert!(got == expected[a..b], "round {round}: range differs");
        let listed: Vec<_> = store.list("nested/").try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(store.list_pending_uploads("").await.unwrap().is_empty());
        // Only this version's segments and sub-manifests remain (the overwrite removed the
        // first version's, nested ones included).
        let left: Vec<_> = segs.list("").try_collect().await.unwrap();
        assert_eq!(
            left.len(),
            parts as usize + manifests,
            "round {round}: {left:?}"
        );
    }
    store.delete(&key).await.unwrap();
    let left: Vec<_> = segs.list("").try_collect().await.unwrap();
    assert!(left.is_empty(), "segments left: {left:?}");
    store.delete_containers().await.unwrap();
}
