//! [`SwiftStore`]: OpenStack Swift's native v1 API over reqwest + rustls.
//!
//! Authentication: tempauth (v1.0), Keystone v3 password, or a pre-authenticated storage URL
//! and token (what Trove hands a guest: the user's token and `swift_url`). A 401 re-authenticates
//! once, except for pre-authenticated sessions.
//!
//! Large objects are static large objects (SLO): parts are segments named
//! `<key>/<upload id>/<part %08d>` in the segments container (`<container>_segments`, like
//! python-swiftclient), and `complete` writes the manifest. A marker object
//! `<key>/<upload id>/pending` in the segments container lists the upload as pending until it is
//! completed or aborted; `abort` deletes the segments and the marker. Each segment is sent with
//! its MD5 as `ETag`, so Swift refuses a body corrupted on the way (422).
//!
//! A manifest lists at most the cluster's `max_manifest_segments` (1000 by default, read from
//! `/info`). An upload with more parts is completed as a nested SLO: sub-manifests
//! `<key>/<upload id>/manifest-<level>-<n>` in the segments container, each listing at most that
//! many, and the object's manifest listing them. Deleting or overwriting the object removes the
//! sub-manifests and their segments too.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use md5::Digest;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::{
    ByteStream, ObjectKey, ObjectMeta, ObjectStore, PartNumber, PartReceipt, PendingUpload,
    PutReceipt, UploadId, unquote,
};
use crate::error::{BackupError, Result, StoreErrorKind};

const NAME: &str = "swift";
/// Largest JSON body read from Swift or Keystone (listings, SLO manifests, token catalogs).
const MAX_JSON: usize = 16 << 20;
/// Listing page size (Swift's default maximum).
const PAGE: usize = 10_000;
/// Name of the marker that keeps an upload listed as pending.
const PENDING: &str = "pending";
/// Swift's default `max_manifest_segments`, used when the cluster does not publish `/info`.
const DEFAULT_MAX_SEGMENTS: usize = 1000;

/// How to obtain a token and storage URL.
#[derive(Clone)]
#[non_exhaustive]
pub enum SwiftAuth {
    /// Swift tempauth / swauth v1.0: `GET auth_url` with `X-Auth-User` and `X-Auth-Key`.
    TempAuth {
        /// `http://host:8080/auth/v1.0`.
        auth_url: String,
        /// `account:user`.
        user: String,
        /// The key.
        key: String,
    },
    /// Keystone v3 password authentication, project-scoped; the storage URL comes from the
    /// catalog's `object-store` endpoint.
    Keystone {
        /// `http://host:5000/v3`.
        auth_url: String,
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// The user's domain name (`Default`).
        user_domain: String,
        /// Project name.
        project: String,
        /// The project's domain name (`Default`).
        project_domain: String,
        /// Region to pick from the catalog, if several.
        region: Option<String>,
        /// Endpoint interface: `public` or `internal`.
        interface: String,
    },
    /// A storage URL and token obtained elsewhere (Trove passes the user's token). It cannot
    /// be renewed: an expired token fails as `Unauthorized`.
    PreAuth {
        /// `http://host:8080/v1/AUTH_project`.
        storage_url: String,
        /// The token.
        token: String,
    },
}

impl fmt::Debug for SwiftAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TempAuth { auth_url, user, .. } => f
                .debug_struct("TempAuth")
                .field("auth_url", auth_url)
                .field("user", user)
                .finish_non_exhaustive(),
            Self::Keystone {
                auth_url,
                user,
                project,
                ..
            } => f
                .debug_struct("Keystone")
                .field("auth_url", auth_url)
                .field("user", user)
                .field("project", project)
                .finish_non_exhaustive(),
            Self::PreAuth { storage_url, .. } => f
                .debug_struct("PreAuth")
                .field("storage_url", storage_url)
                .finish_non_exhaustive(),
        }
    }
}

/// Builds a [`SwiftStore`].
#[derive(Debug, Clone)]
pub struct SwiftStoreBuilder {
    auth: SwiftAuth,
    container: String,
    segments: Option<String>,
    max_segments: Option<usize>,
    ca_pem: Option<Vec<u8>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl SwiftStoreBuilder {
    /// A builder for `container` with `auth`.
    pub fn new(auth: SwiftAuth, container: impl Into<String>) -> Self {
        Self {
            auth,
            container: container.into(),
            segments: None,
            max_segments: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
        }
    }

    /// The container for segments (default `<container>_segments`).
    #[must_use]
    pub fn with_segments_container(mut self, name: impl Into<String>) -> Self {
        self.segments = Some(name.into());
        self
    }

    /// Lists at most `n` (at least 2) segments per manifest, below the cluster's own limit.
    #[must_use]
    pub fn with_max_manifest_segments(mut self, n: usize) -> Self {
        self.max_segments = Some(n.max(2));
        self
    }

    /// Trusts this PEM CA bundle in addition to the platform's roots.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Connect and read timeouts of each request.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// Builds the client. No request is made.
    ///
    /// # Errors
    /// `InvalidArgument` for bad container names or CA bundles.
    pub fn build(self) -> Result<SwiftStore> {
        for (field, c) in [
            ("container", Some(&self.container)),
            ("segments container", self.segments.as_ref()),
        ] {
            if let Some(c) = c
                && (c.is_empty() || c.len() > 256 || c.contains('/'))
            {
                return Err(BackupError::invalid(field, "1 to 256 characters, no '/'"));
            }
        }
        // reqwest is built without a compiled-in crypto provider; use ring unless the process
        // chose one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout);
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| BackupError::invalid("ca_pem", e.to_string()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| BackupError::invalid("swift client", e.to_string()))?;
        let segments = self
            .segments
            .unwrap_or_else(|| format!("{}_segments", self.container));
        let session = match &self.auth {
            SwiftAuth::PreAuth { storage_url, token } => Some(Session {
                storage_url: storage_url.trim_end_matches('/').to_owned(),
                token: token.clone(),
            }),
            _ => None,
        };
        Ok(SwiftStore {
            http,
            auth: self.auth,
            container: self.container,
            segments,
            max_segments: self.max_segments,
            cluster_max_segments: Arc::new(tokio::sync::OnceCell::new()),
            session: Arc::new(RwLock::new(session)),
        })
    }
}

#[derive(Clone)]
struct Session {
    storage_url: String,
    token: String,
}

/// An object store on Swift's native API. Clones share the HTTP client and the session.
#[derive(Clone)]
pub struct SwiftStore {
    http: reqwest::Client,
    auth: SwiftAuth,
    container: String,
    segments: String,
    max_segments: Option<usize>,
    cluster_max_segments: Arc<tokio::sync::OnceCell<usize>>,
    session: Arc<RwLock<Option<Session>>>,
}

impl fmt::Debug for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftStore")
            .field("auth", &self.auth)
            .field("container", &self.container)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

fn classify(status: StatusCode) -> StoreErrorKind {
    match status.as_u16() {
        404 => StoreErrorKind::NotFound,
        401 | 403 => StoreErrorKind::Unauthorized,
        408 => StoreErrorKind::Timeout,
        429 | 498 => StoreErrorKind::Throttled,
        500..=599 => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Rejected,
    }
}

fn transport_err(op: &'static str, key: &str, e: reqwest::Error) -> BackupError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_builder() {
        StoreErrorKind::Rejected
    } else {
        StoreErrorKind::Unavailable
    };
    BackupError::Store {
        store: NAME,
        op,
        key: key.to_owned(),
        kind,
        message: e.without_url().to_string(),
        source: None,
    }
}

/// Percent-encodes a key for a URL path, keeping `/` between components.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
fn encode_query(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}

/// Reads a response body up to `limit` bytes.
async fn read_limited(
    op: &'static str,
    key: &str,
    mut resp: Response,
    limit: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_err(op, key, e))? {
        if out.len() + chunk.len() > limit {
            return Err(BackupError::store(
                NAME,
                op,
                key,
                StoreErrorKind::Protocol,
                format!("response larger than {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn status_err(op: &'static str, key: &str, resp: Response) -> BackupError {
    let status = resp.status();
    // A short excerpt of the body helps (Swift explains 4xx answers); never more.
    let body = read_limited(op, key, resp, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_owned();
    BackupError::store(
        NAME,
        op,
        key,
        classify(status),
        format!("HTTP {status}: {text}"),
    )
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Serialize)]
struct SloSegment<'a> {
    path: &'a str,
    /// `None` (null) for a sub-manifest: Swift then checks neither.
    etag: Option<&'a str>,
    size_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct SloEntry {
    name: String,
    #[serde(default)]
    sub_slo: bool,
}

#[derive(Deserialize)]
struct ListEntry {
    name: Option<String>,
    bytes: Option<u64>,
    hash: Option<String>,
}

impl SwiftStore {
    /// The container.
    pub fn container(&self) -> &str {
        &self.container
    }

    async fn session(&self) -> Result<Session> {
        if let Some(s) = self.session.read().await.clone() {
            return Ok(s);
        }
        let mut w = self.session.write().await;
        if let Some(s) = w.clone() {
            return Ok(s);
        }
        let s = self.authenticate().await?;
        *w = Some(s.clone());
        Ok(s)
    }

    async fn authenticate(&self) -> Result<Session> {
        match &self.auth {
            SwiftAuth::PreAuth { storage_url, token } => Ok(Session {
                storage_url: storage_url.trim_end_matches('/').to_owned(),
                token: token.clone(),
            }),
            SwiftAuth::TempAuth {
                auth_url,
                user,
                key,
            } => {
                let resp = self
                    .http
                    .get(auth_url)
                    .header("X-Auth-User", user)
                    .header("X-Auth-Key", key)
                    .send()
                    .await
                    .map_err(|e| transport_err("auth", "", e))?;
                if !resp.status().is_success() {
                    return Err(status_err("auth", "", resp).await);
                }
                match (
                    header(&resp, "x-storage-url"),
                    header(&resp, "x-auth-token"),
                ) {
                    (Some(url), Some(token)) => Ok(Session {
                        storage_url: url.trim_end_matches('/').to_owned(),
                        token,
                    }),
                    _ => Err(BackupError::store(
                        NAME,
                        "auth",
                        "",
                        StoreErrorKind::Protocol,
                        "tempauth answered without X-Storage-Url / X-Auth-Token",
                    )),
                }
            }
            SwiftAuth::Keystone {
                auth_url,
                user,
                password,
                user_domain,
                project,
                project_domain,
                region,
                interface,
            } => {
                let body = serde_json::json!({"auth": {
                    "identity": {"methods": ["password"], "password": {"user": {
                        "name": user, "domain": {"name": user_domain}, "password": password}}},
                    "scope": {"project": {"name": project, "domain": {"name": project_domain}}}
                }});
                let url = format!("{}/auth/tokens", auth_url.trim_end_matches('/'));
                let resp = self
                    .http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| transport_err("auth", "", e))?;
                if !resp.status().is_success() {
                    return Err(status_err("auth", "", resp).await);
                }
                let token = header(&resp, "x-subject-token").ok_or_else(|| {
                    BackupError::store(
                        NAME,
                        "auth",
                        "",
                        StoreErrorKind::Protocol,
                        "no X-Subject-Token",
                    )
                })?;
                let raw = read_limited("auth", "", resp, MAX_JSON).await?;
                let storage_url = catalog_url(&raw, region.as_deref(), interface)?;
                Ok(Session { storage_url, token })
            }
        }
    }

    /// Sends a request built by `build`, re-authenticating once on 401 when possible.
    async fn send<F>(&self, op: &'static str, key: &str, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client, &Session) -> RequestBuilder,
    {
        let mut renewed = false;
        loop {
            let s = self.session().await?;
            let resp = build(&self.http, &s)
                .header("X-Auth-Token", &s.token)
                .send()
                .await
                .map_err(|e| transport_err(op, key, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && !renewed
                && !matches!(self.auth, SwiftAuth::PreAuth { .. })
            {
                renewed = true;
                *self.session.write().await = None;
                continue;
            }
            return Ok(resp);
        }
    }

    fn object_url(s: &Session, container: &str, name: &str) -> String {
        format!(
            "{}/{}/{}",
            s.storage_url,
            encode_path(container),
            encode_path(name)
        )
    }

    async fn ensure_container(&self, name: &str) -> Result<()> {
        let resp = self
            .send("create_container", name, |c, s| {
                c.put(format!("{}/{}", s.storage_url, encode_path(name)))
                    .header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_err("create_container", name, resp).await)
        }
    }

    /// Creates the container and the segments container unless they exist.
    ///
    /// # Errors
    /// Store errors.
    pub async fn ensure_containers(&self) -> Result<()> {
        self.ensure_container(&self.container).await?;
        self.ensure_container(&self.segments).await
    }

    /// Deletes the container and the segments container if they are empty (for test and
    /// decommissioning cleanup). Missing containers are fine.
    ///
    /// # Errors
    /// Store errors; a container that still holds objects is `Rejected` (409).
    pub async fn delete_containers(&self) -> Result<()> {
        for name in [&self.container, &self.segments] {
            let resp = self
                .send("delete_container", name, |c, s| {
                    c.delete(format!("{}/{}", s.storage_url, encode_path(name)))
                })
                .await?;
            if !(resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND) {
                return Err(status_err("delete_container", name, resp).await);
            }
        }
        Ok(())
    }

    /// PUTs an object, creating its container once when Swift says it is missing.
    async fn put_object(
        &self,
        op: &'static str,
        container: &str,
        name: &str,
        query: &str,
        body: Bytes,
        etag: Option<&str>,
    ) -> Result<Response> {
        for attempt in 0..2 {
            let resp = self
                .send(op, name, |c, s| {
                    // Explicit: an empty body would otherwise go without a length (411).
                    let mut r = c
                        .put(format!("{}{query}", Self::object_url(s, container, name)))
                        .header(reqwest::header::CONTENT_LENGTH, body.len())
                        .body(body.clone());
                    if let Some(e) = etag {
                        r = r.header("ETag", e);
                    }
                    r
                })
                .await?;
            if resp.status() == StatusCode::NOT_FOUND && attempt == 0 {
                self.ensure_container(container).await?;
                continue;
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            return Err(status_err(op, name, resp).await);
        }
        Err(BackupError::Internal("unreachable put retry".into()))
    }

    async fn delete_object(&self, op: &'static str, container: &str, name: &str) -> Result<()> {
        let resp = self
            .send(op, name, |c, s| {
                c.delete(Self::object_url(s, container, name))
            })
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_err(op, name, resp).await)
        }
    }

    /// One page of a container listing.
    async fn list_page(
        &self,
        container: &str,
        prefix: &str,
        marker: &str,
    ) -> Result<Vec<ListEntry>> {
        let resp = self
            .send("list", prefix, |c, s| {
                c.get(format!(
                    "{}/{}?format=json&limit={PAGE}&prefix={}&marker={}",
                    s.storage_url,
                    encode_path(container),
                    encode_query(prefix),
                    encode_query(marker)
                ))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !resp.status().is_success() {
            return Err(status_err("list", prefix, resp).await);
        }
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        let raw = read_limited("list", prefix, resp, MAX_JSON).await?;
        serde_json::from_slice(&raw).map_err(|e| {
            BackupError::store(
                NAME,
                "list",
                prefix,
                StoreErrorKind::Protocol,
                e.to_string(),
            )
        })
    }

    /// Every name in `container` under `prefix`.
    async fn list_names(
        &self,
        container: &str,
        prefix: &str,
    ) -> Result<Vec<(String, u64, Option<String>)>> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let page = self.list_page(container, prefix, &marker).await?;
            let n = page.len();
            for e in page {
                if let Some(name) = e.name {
                    marker.clone_from(&name);
                    out.push((name, e.bytes.unwrap_or(0), e.hash));
                }
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// The segment paths of the SLO at `key` (with the sub-manifests of a nested SLO and their
    /// segments), or `None` when it is not an SLO (or missing).
    async fn slo_segments(&self, key: &ObjectKey) -> Result<Option<Vec<String>>> {
        let resp = self
            .send("head", key.as_str(), |c, s| {
                c.head(Self::object_url(s, &self.container, key.as_str()))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_err("head", key.as_str(), resp).await);
        }
        let is_slo =
            header(&resp, "x-static-large-object").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !is_slo {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut manifests = vec![(self.container.clone(), key.as_str().to_owned())];
        while let Some((container, name)) = manifests.pop() {
            for e in self.manifest_entries(&container, &name).await? {
                if e.sub_slo
                    && let Some((c, n)) = e.name.trim_start_matches('/').split_once('/')
                {
                    manifests.push((c.to_owned(), n.to_owned()));
                }
                out.push(e.name);
            }
        }
        Ok(Some(out))
    }

    /// The entries of the manifest at `container`/`name`.
    async fn manifest_entries(&self, container: &str, name: &str) -> Result<Vec<SloEntry>> {
        let resp = self
            .send("get_manifest", name, |c, s| {
                c.get(format!(
                    "{}?multipart-manifest=get",
                    Self::object_url(s, container, name)
                ))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_err("get_manifest", name, resp).await);
        }
        let raw = read_limited("get_manifest", name, resp, MAX_JSON).await?;
        serde_json::from_slice(&raw).map_err(|e| {
            BackupError::store(
                NAME,
                "get_manifest",
                name,
                StoreErrorKind::Protocol,
                e.to_string(),
            )
        })
    }

    /// Segments listed per manifest: the builder's limit, capped by the one the cluster
    /// publishes in `/info` (1000 when it publishes none). Asked once per store.
    pub async fn max_manifest_segments(&self) -> usize {
        let cluster = *self
            .cluster_max_segments
            .get_or_init(|| async {
                self.published_max_segments()
                    .await
                    .unwrap_or(DEFAULT_MAX_SEGMENTS)
            })
            .await;
        self.max_segments.map_or(cluster, |m| m.min(cluster))
    }

    /// `slo.max_manifest_segments` from the cluster's `/info`, when it publishes one.
    async fn published_max_segments(&self) -> Option<usize> {
        let s = self.session().await.ok()?;
        let (base, _) = s.storage_url.split_once("/v1/")?;
        let resp = self.http.get(format!("{base}/info")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let raw = read_limited("info", "", resp, MAX_JSON).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        v.get("slo")?
            .get("max_manifest_segments")?
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n >= 2)
    }

    /// Writes an SLO manifest listing `entries` (path, etag, size) at `container`/`name`.
    async fn put_manifest(
        &self,
        container: &str,
        name: &str,
        entries: &[(String, Option<String>, Option<u64>)],
    ) -> Result<Response> {
        let manifest: Vec<SloSegment<'_>> = entries
            .iter()
            .map(|(path, etag, size)| SloSegment {
                path,
                etag: etag.as_deref(),
                size_bytes: *size,
            })
            .collect();
        let body = serde_json::to_vec(&manifest)
            .map_err(|e| BackupError::Internal(format!("SLO manifest: {e}")))?;
        self.put_object(
            "complete_multipart",
            container,
            name,
            "?multipart-manifest=put",
            Bytes::from(body),
            None,
        )
        .await
    }

    /// Deletes segments (given as `/container/name` paths) that `keep` does not list; used after
    /// an overwrite so the old object's segments do not leak.
    async fn delete_segments(&self, old: Vec<String>, keep: &[String]) {
        for path in old {
            if keep.contains(&path) {
                continue;
            }
            let trimmed = path.trim_start_matches('/');
            if let Some((container, name)) = trimmed.split_once('/')
                && let Err(e) = self.delete_object("delete_segment", container, name).await
            {
                tracing::warn!(segment = %path, error = %e, "Could not delete an old segment.");
            }
        }
    }

    fn upload_prefix(key: &ObjectKey, id: &UploadId) -> String {
        format!("{}/{}/", key.as_str(), id.0)
    }
}

/// The object-store endpoint from a Keystone v3 token body.
fn catalog_url(raw: &[u8], region: Option<&str>, interface: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Body {
        token: Token,
    }
    #[derive(Deserialize)]
    struct Token {
        #[serde(default)]
        catalog: Vec<Service>,
    }
    #[derive(Deserialize)]
    struct Service {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        endpoints: Vec<Endpoint>,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        interface: String,
        url: String,
        region: Option<String>,
        region_id: Option<String>,
    }
    let body: Body = serde_json::from_slice(raw).map_err(|e| {
        BackupError::store(
            NAME,
            "auth",
            "",
            StoreErrorKind::Protocol,
            format!("token body: {e}"),
        )
    })?;
    body.token
        .catalog
        .into_iter()
        .filter(|s| s.kind == "object-store")
        .flat_map(|s| s.endpoints)
        .find(|e| {
            e.interface == interface
                && region.is_none_or(|r| {
                    e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r)
                })
        })
        .map(|e| e.url.trim_end_matches('/').to_owned())
        .ok_or_else(|| {
            BackupError::store(
                NAME,
                "auth",
                "",
                StoreErrorKind::Protocol,
                format!("no object-store endpoint with interface '{interface}' in the catalog"),
            )
        })
}

fn md5_hex(body: &[u8]) -> String {
    hex::encode(md5::Md5::digest(body))
}

#[async_trait]
impl ObjectStore for SwiftStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<PutReceipt> {
        let size = body.len() as u64;
        let old = self.slo_segments(key).await?;
        let b = body.clone();
        let etag = tokio::task::spawn_blocking(move || md5_hex(&b))
            .await
            .map_err(|e| BackupError::Internal(format!("md5 task: {e}")))?;
        let resp = self
            .put_object("put", &self.container, key.as_str(), "", body, Some(&etag))
            .await?;
        if let Some(old) = old {
            self.delete_segments(old, &[]).await;
        }
        Ok(PutReceipt {
            etag: header(&resp, "etag").map(|e| unquote(&e)),
            size,
        })
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let id = UploadId(uuid::Uuid::new_v4().simple().to_string());
        let marker = format!("{}{PENDING}", Self::upload_prefix(key, &id));
        self.put_object(
            "create_multipart",
            &self.segments,
            &marker,
            "",
            Bytes::new(),
            None,
        )
        .await?;
        Ok(id)
    }

    async fn put_part(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        n: PartNumber,
        body: Bytes,
    ) -> Result<PartReceipt> {
        let size = body.len() as u64;
        let name = format!("{}{n:08}", Self::upload_prefix(key, id));
        let b = body.clone();
        let etag = tokio::task::spawn_blocking(move || md5_hex(&b))
            .await
            .map_err(|e| BackupError::Internal(format!("md5 task: {e}")))?;
        self.put_object("put_part", &self.segments, &name, "", body, Some(&etag))
            .await?;
        Ok(PartReceipt {
            number: n,
            etag,
            size,
        })
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        parts: Vec<PartReceipt>,
    ) -> Result<PutReceipt> {
        let prefix = Self::upload_prefix(key, id);
        let size = parts.iter().map(|p| p.size).sum();
        let mut level: Vec<(String, Option<String>, Option<u64>)> = parts
            .into_iter()
            .map(|p| {
                let path = format!("/{}/{prefix}{:08}", self.segments, p.number);
                (path, Some(p.etag), Some(p.size))
            })
            .collect();
        // Every path the object will reference, kept when an old version's segments go.
        let mut paths: Vec<String> = level.iter().map(|(p, _, _)| p.clone()).collect();
        let max = self.max_manifest_segments().await;
        let mut depth = 0;
        while level.len() > max {
            let mut next = Vec::with_capacity(level.len().div_ceil(max));
            for (i, group) in level.chunks(max).enumerate() {
                let name = format!("{prefix}manifest-{depth}-{i:05}");
                self.put_manifest(&self.segments, &name, group).await?;
                let path = format!("/{}/{name}", self.segments);
                paths.push(path.clone());
                next.push((path, None, None));
            }
            level = next;
            depth += 1;
        }
        let old = self.slo_segments(key).await?;
        let resp = self
            .put_manifest(&self.container, key.as_str(), &level)
            .await?;
        let etag = header(&resp, "etag").map(|e| unquote(&e));
        self.delete_object(
            "complete_multipart",
            &self.segments,
            &format!("{prefix}{PENDING}"),
        )
        .await?;
        if let Some(old) = old {
            self.delete_segments(old, &paths).await;
        }
        Ok(PutReceipt { etag, size })
    }

    async fn abort_multipart(&self, key: &ObjectKey, id: &UploadId) -> Result<()> {
        let prefix = Self::upload_prefix(key, id);
        // Segments first, the marker last: a failed abort stays listed as pending.
        let names = self.list_names(&self.segments, &prefix).await?;
        let marker = format!("{prefix}{PENDING}");
        for (name, _, _) in names.iter().filter(|(n, _, _)| *n != marker) {
            self.delete_object("abort_multipart", &self.segments, name)
                .await?;
        }
        self.delete_object("abort_multipart", &self.segments, &marker)
            .await
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<ByteStream> {
        let header_value = match &range {
            Some(r) if r.start >= r.end => return Ok(Box::pin(futures::stream::empty())),
            Some(r) => Some(format!("bytes={}-{}", r.start, r.end - 1)),
            None => None,
        };
        let resp = self
            .send("get", key.as_str(), |c, s| {
                let mut r = c.get(Self::object_url(s, &self.container, key.as_str()));
                if let Some(h) = &header_value {
                    r = r.header("Range", h);
                }
                r
            })
            .await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(Box::pin(futures::stream::empty()));
        }
        if !resp.status().is_success() {
            return Err(status_err("get", key.as_str(), resp).await);
        }
        let key = key.to_string();
        let s = futures::stream::try_unfold(resp, move |mut resp| {
            let key = key.clone();
            async move {
                match resp.chunk().await {
                    Ok(Some(b)) => Ok(Some((b, resp))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(transport_err("get", &key, e)),
                }
            }
        });
        Ok(Box::pin(s))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let resp = self
            .send("head", key.as_str(), |c, s| {
                c.head(Self::object_url(s, &self.container, key.as_str()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_err("head", key.as_str(), resp).await);
        }
        let size = header(&resp, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            etag: header(&resp, "etag").map(|e| unquote(&e)),
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        // A manifest delete of a plain object is refused by the SLO middleware, so ask first.
        let segments = self.slo_segments(key).await?;
        self.delete_object("delete", &self.container, key.as_str())
            .await?;
        if let Some(old) = segments {
            self.delete_segments(old, &[]).await;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        // A listing is metadata (pages of at most 10 000 names): gathered, then streamed.
        let this = self.clone();
        let prefix = prefix.to_owned();
        futures::stream::once(async move {
            this.list_names(&this.container, &prefix).await.map(|v| {
                v.into_iter()
                    .filter_map(|(name, size, etag)| {
                        ObjectKey::new(name)
                            .ok()
                            .map(|key| ObjectMeta { key, size, etag })
                    })
                    .collect::<Vec<_>>()
            })
        })
        .map(|r| match r {
            Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten()
        .boxed()
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let names = self.list_names(&self.segments, prefix).await?;
        let suffix = format!("/{PENDING}");
        let mut out = Vec::new();
        for (name, _, _) in names {
            let Some(rest) = name.strip_suffix(&suffix) else {
                continue;
            };
            if let Some((key, id)) = rest.rsplit_once('/') {
                out.push(PendingUpload {
                    key: key.to_owned(),
                    id: UploadId(id.to_owned()),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(encode_path("a/b c/é"), "a/b%20c/%C3%A9");
        assert_eq!(encode_query("a/b?"), "a%2Fb%3F");
    }

    #[test]
    fn catalog_picks_the_object_store_endpoint() {
        let raw = br#"{"token":{"catalog":[
            {"type":"identity","endpoints":[{"interface":"public","url":"http://k","region":"R"}]},
            {"type":"object-store","endpoints":[
                {"interface":"internal","url":"http://int/v1/AUTH_p","region":"R"},
                {"interface":"public","url":"http://pub/v1/AUTH_p/","region":"R"}]}]}}"#;
        assert_eq!(
            catalog_url(raw, None, "public").unwrap(),
            "http://pub/v1/AUTH_p"
        );
        assert_eq!(
            catalog_url(raw, Some("R"), "internal").unwrap(),
            "http://int/v1/AUTH_p"
        );
        assert!(catalog_url(raw, Some("X"), "public").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let a = SwiftAuth::TempAuth {
            auth_url: "u".into(),
            user: "t:t".into(),
            key: "sekrit".into(),
        };
        let p = SwiftAuth::PreAuth {
            storage_url: "s".into(),
            token: "tok-sekrit".into(),
        };
        assert!(!format!("{a:?}{p:?}").contains("sekrit"));
    }
}
