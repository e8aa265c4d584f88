//! Backups for the end-to-end tests: the agent's `[backup]` section for each store (local
//! directory, Swift's S3 API, Swift's native API), instance keys made by the agent's own
//! `gen-backup-key`, a control plane stand-in that records every `update_backup` report
//! ([`CaptureServer`]), and a Swift account view ([`SwiftAdmin`]) that lists and removes
//! what a test stored, bypassing the agent.
//!
//! The Swift service is the one `tools/swift.sh start` runs; its address and credentials come
//! from the variables `tools/swift.sh env` prints, or their documented defaults. Nothing
//! skips: Swift being down is a loud failure.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::run_to_exit;
use crate::client::{POLL_BOUND, Reply, RpcClient};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Swift's tempauth URL.
pub fn swift_auth_url() -> String {
    env_or("GA_SWIFT_AUTH_URL", "http://127.0.0.1:18080/auth/v1.0")
}

/// The S3 API endpoint of the same Swift proxy.
pub fn s3_endpoint() -> String {
    env_or("GA_S3_ENDPOINT", "http://127.0.0.1:18080")
}

/// Panics (never skips) when nothing answers at `url`'s host and port.
pub fn require_swift(url: &str) {
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:18080")
        .to_owned();
    let reachable = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "Swift is not running: run tools/swift.sh start (looked for {hostport})"
    );
}

/// A container (or bucket) name of its own for one test: `e2e-<uuid>` (3 to 63 of a-z 0-9 -).
pub fn unique_container() -> String {
    format!("e2e-{}", uuid::Uuid::new_v4().simple())
}

/// Creates a new instance key at `dir/name` with `guest-agent gen-backup-key`.
pub fn gen_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = run_to_exit(&["gen-backup-key", &path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "gen-backup-key {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn with_key(mut section: Value, key_file: Option<&Path>) -> Value {
    if let Some(k) = key_file {
        section["key_file"] = json!(k);
    }
    // Small parts so a few megabytes already take the multipart path.
    section["part_size_mib"] = json!(5);
    section["progress_interval_secs"] = json!(1);
    section
}

/// `[backup]` for Swift's S3 API on `bucket` (checks that Swift runs).
pub fn s3_section(bucket: &str, key_file: Option<&Path>) -> Value {
    let endpoint = s3_endpoint();
    require_swift(&endpoint);
    s3_section_at(&endpoint, bucket, key_file)
}

/// `[backup]` for an S3 endpoint at `endpoint` (which may be down on purpose).
pub fn s3_section_at(endpoint: &str, bucket: &str, key_file: Option<&Path>) -> Value {
    with_key(
        json!({
            "store": "s3",
            "container": bucket,
            "s3": {
                "endpoint": endpoint,
                "region": env_or("GA_S3_REGION", "us-east-1"),
                "access_key": env_or("GA_S3_ACCESS_KEY", "test:tester"),
                "secret_key": env_or("GA_S3_SECRET_KEY", "testing"),
                "path_style": true,
            },
        }),
        key_file,
    )
}

/// `[backup]` for Swift's native API on `container` (checks that Swift runs).
pub fn swift_section(container: &str, key_file: Option<&Path>) -> Value {
    let auth_url = swift_auth_url();
    require_swift(&auth_url);
    with_key(
        json!({
            "store": "swift",
            "container": container,
            "swift": {
                "auth_url": auth_url,
                "user": env_or("GA_SWIFT_USER", "test:tester"),
                "key": env_or("GA_SWIFT_KEY", "testing"),
            },
        }),
        key_file,
    )
}

/// `[backup]` for the local store under `dir` (objects land in `dir/<container>/<prefix>/`).
pub fn local_section(dir: &Path, container: &str, key_file: Option<&Path>) -> Value {
    with_key(
        json!({"store": "local", "local_dir": dir, "container": container}),
        key_file,
    )
}

/// Adds `[backup]` and, with a `control_plane` URL, `[control_plane]` of kind `http` to an
/// agent configuration.
pub fn with_backup(mut config: Value, backup: Value, control_plane: Option<&str>) -> Value {
    config["backup"] = backup;
    if let Some(url) = control_plane {
        config["control_plane"] = json!({"kind": "http", "http": {"url": url}});
    }
    config
}

/// The operation id of a tracked call's answer `{"operation": {...}}`.
pub fn op_id(started: &Value) -> String {
    started["operation"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no operation id in {started}"))
        .to_owned()
}

/// Calls a tracked `method` (panicking if it is refused) and waits for the operation; returns
/// the finished operation, whatever its outcome.
pub async fn tracked(c: &RpcClient, method: &str, args: Value) -> Value {
    let started = c.call(method, args).await;
    c.wait_operation(&op_id(&started)).await
}

/// `create_backup` with `backup_info` and waits for it; returns the finished operation.
pub async fn create_backup(c: &RpcClient, backup_info: Value) -> Value {
    tracked(c, "create_backup", json!({"backup_info": backup_info})).await
}

/// Like [`create_backup`], asserting success; returns the operation's `result`.
pub async fn backup_ok(c: &RpcClient, backup_info: Value) -> Value {
    let op = create_backup(c, backup_info.clone()).await;
    assert_eq!(
        op["state"], "succeeded",
        "create_backup({backup_info}) failed: {op}"
    );
    op["result"].clone()
}

/// `{location, checksum}` of a finished backup's result, as the control plane passes it back.
pub fn backup_ref(result: &Value) -> Value {
    json!({"location": result["location"], "checksum": result["checksum"]})
}

/// Panics unless `op` failed with one of `types`; returns its message.
#[track_caller]
pub fn assert_op_failed(op: &Value, types: &[&str]) -> String {
    assert_eq!(
        op["state"], "failed",
        "the operation should have failed: {op}"
    );
    let t = op["error_type"].as_str().unwrap_or_default();
    assert!(
        types.contains(&t),
        "expected an error of type {types:?}, got {t:?}: {op}"
    );
    let msg = op["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        !msg.is_empty(),
        "a failed operation without a message: {op}"
    );
    msg
}

/// Panics unless `reply` is a 400 `InvalidArgument` whose message names `field`.
#[track_caller]
pub fn assert_rejected_field(reply: &Reply, field: &str) {
    reply.assert_error(400, "InvalidArgument");
    let msg = reply.error_message().unwrap_or_default();
    assert!(
        msg.contains(&format!("'{field}'")),
        "the rejection should name '{field}': {}",
        reply.body
    );
}

/// The value of the Prometheus sample `name{labels}` in `text` (labels exactly as written).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

/// One JSON POST the [`CaptureServer`] received.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The request path (`/cp/update_backup`).
    pub path: String,
    /// The body.
    pub body: Value,
}

type Posts = Arc<Mutex<Vec<Posted>>>;

/// A control plane stand-in on 127.0.0.1: answers every POST with 200 and records its JSON
/// body. It runs on a thread and runtime of its own, so it keeps answering while a test
/// blocks (an agent's last heartbeat at shutdown, for one).
#[derive(Debug)]
pub struct CaptureServer {
    addr: SocketAddr,
    posts: Posts,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptureServer {
    /// Binds a free port and starts serving.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let posts: Posts = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let recorded = Arc::clone(&posts);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("capture server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(record).with_state(recorded);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("capture server");
            });
        });
        Self {
            addr,
            posts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The control plane URL to configure (`http://127.0.0.1:PORT/cp`).
    pub fn url(&self) -> String {
        format!("http://{}/cp", self.addr)
    }

    /// Everything received so far.
    pub fn posts(&self) -> Vec<Posted> {
        self.posts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `update_backup` reports about `backup_id`, in arrival order.
    pub fn updates(&self, backup_id: &str) -> Vec<Value> {
        self.posts()
            .into_iter()
            .filter(|p| p.path == "/cp/update_backup" && p.body["backup_id"] == backup_id)
            .map(|p| p.body)
            .collect()
    }

    /// Waits until a final report (`COMPLETED` or `FAILED`) about `backup_id` arrived; returns
    /// every report about it, the final one last.
    pub async fn wait_final(&self, backup_id: &str) -> Vec<Value> {
        let deadline = Instant::now() + POLL_BOUND;
        loop {
            let got = self.updates(backup_id);
            if got
                .iter()
                .any(|u| u["state"] == "COMPLETED" || u["state"] == "FAILED")
            {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "no final update_backup for {backup_id}; received: {:?}",
                self.posts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn record(
    axum::extract::State(posts): axum::extract::State<Posts>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    posts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Posted {
            path: uri.path().to_owned(),
            body,
        });
    axum::http::StatusCode::OK
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Swift account the tests use, through Swift's native API (tempauth): lists what the
/// agent stored and removes a test's containers. Buckets of the S3 API are containers of
/// the same account.
#[derive(Debug, Clone)]
pub struct SwiftAdmin {
    http: reqwest::Client,
    storage_url: String,
    token: String,
}

impl SwiftAdmin {
    /// Authenticates (panics when Swift is down or refuses the credentials).
    pub async fn connect() -> Self {
        crate::init_crypto();
        let auth_url = swift_auth_url();
        require_swift(&auth_url);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("http client");
        let resp = http
            .get(&auth_url)
            .header("X-Auth-User", env_or("GA_SWIFT_USER", "test:tester"))
            .header("X-Auth-Key", env_or("GA_SWIFT_KEY", "testing"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Swift auth {auth_url}: {e}"));
        assert!(
            resp.status().is_success(),
            "Swift auth {auth_url}: {}",
            resp.status()
        );
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("Swift auth answered without {name}"))
                .to_owned()
        };
        Self {
            storage_url: header("x-storage-url"),
            token: header("x-auth-token"),
            http,
        }
    }

    async fn list(&self, url: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        loop {
            let mut u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            u.query_pairs_mut().append_pair("format", "json");
            if let Some(last) = names.last() {
                u.query_pairs_mut().append_pair("marker", last);
            }
            let resp = self
                .http
                .get(u)
                .header("X-Auth-Token", &self.token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return names;
            }
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            let page: Value = resp
                .json()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let page: Vec<String> = page
                .as_array()
                .unwrap_or_else(|| panic!("GET {url}: not a list: {page}"))
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect();
            if page.is_empty() {
                return names;
            }
            names.extend(page);
        }
    }

    /// Names of the objects in `container` (none when it does not exist).
    pub async fn objects(&self, container: &str) -> Vec<String> {
        self.list(&format!("{}/{container}", self.storage_url))
            .await
    }

    /// Names of the account's containers that start with `prefix`.
    pub async fn containers(&self, prefix: &str) -> Vec<String> {
        self.list(&self.storage_url)
            .await
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    /// Every object in every container starting with `prefix` (segment containers included),
    /// as `container/object`.
    pub async fn everything(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.containers(prefix).await {
            for o in self.objects(&c).await {
                out.push(format!("{c}/{o}"));
            }
        }
        out
    }

    /// Deletes one object (as something outside the agent would).
    pub async fn delete_object(&self, container: &str, name: &str) {
        let url = format!("{}/{container}/{name}", self.storage_url);
        let resp = self
            .http
            .delete(&url)
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"));
        assert!(
            resp.status().is_success(),
            "DELETE {url}: {}",
            resp.status()
        );
    }

    /// Removes every container starting with `prefix` and everything in it (best effort).
    pub async fn purge(&self, prefix: &str) {
        for c in self.containers(prefix).await {
            for o in self.objects(&c).await {
                let _ = self
                    .http
                    .delete(format!("{}/{c}/{o}", self.storage_url))
                    .header("X-Auth-Token", &self.token)
                    .send()
                    .await;
            }
            let _ = self
                .http
                .delete(format!("{}/{c}", self.storage_url))
                .header("X-Auth-Token", &self.token)
                .send()
                .await;
        }
    }
}

/// Files under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
