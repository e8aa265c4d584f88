//! The object store conformance checks against a real OpenStack Swift through its S3 API
//! (s3api middleware, path-style, SigV4, checksums only when required).
//! Needs `tools/swift.sh start`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use guest_agent_backup::error::StoreErrorKind;
use guest_agent_backup::store::conformance;
use guest_agent_backup::store::{ObjectKey, ObjectStore, S3StoreBuilder};

#[tokio::test]
async fn s3api_conformance() {
    let bucket = support::unique("ga-conf");
    let store = support::s3_store(&bucket).await;
    conformance::run_all(&store, "run").await;
    store.delete_bucket().await.unwrap();
}

#[tokio::test]
async fn bad_secret_is_unauthorized_and_down_endpoint_is_retryable() {
    let endpoint = support::s3_endpoint();
    support::require_swift(&endpoint);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = S3StoreBuilder::new("ga-bad")
        .with_endpoint(endpoint)
        .with_credentials("test:tester", "wrong")
        .build()
        .unwrap();
    let key = ObjectKey::new("x").unwrap();
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
    // Nothing listens on port 9 of loopback: a connection failure is worth retrying.
    let down = S3StoreBuilder::new("b")
        .with_endpoint("http://127.0.0.1:9")
        .with_credentials("a", "b")
        .build()
        .unwrap();
    let e = down.head(&key).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
}
