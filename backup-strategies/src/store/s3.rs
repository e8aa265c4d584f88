//! [`S3Store`]: the S3 API through aws-sdk-s3, for AWS, Ceph RGW and OpenStack Swift's s3api.
//!
//! Built for S3-compatible servers: custom endpoint, path-style addressing, static credentials,
//! request and response checksums only where the API requires them (Swift's s3api and other
//! compatible stores reject the SDK's default aws-chunked CRC trailers), the SDK's own retries
//! off (the uploader's [`crate::store::RetryPolicy`] is the one retry loop) and the rustls +
//! ring HTTP client.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    ByteStream, ObjectKey, ObjectMeta, ObjectStore, PartNumber, PartReceipt, PendingUpload,
    PutReceipt, UploadId, unquote,
};
use crate::error::{BackupError, Result, StoreErrorKind};

const NAME: &str = "s3";

/// Builds an [`S3Store`].
#[derive(Clone)]
pub struct S3StoreBuilder {
    bucket: String,
    endpoint: Option<String>,
    region: String,
    access_key: String,
    secret_key: String,
    path_style: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl fmt::Debug for S3StoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3StoreBuilder")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

impl S3StoreBuilder {
    /// A builder for `bucket` with path-style addressing, region `us-east-1` and no
    /// credentials yet.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key: String::new(),
            secret_key: String::new(),
            path_style: true,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
        }
    }

    /// The endpoint URL (`http://127.0.0.1:8080` for a Swift proxy with s3api).
    #[must_use]
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The signing region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Static credentials (EC2-style access and secret keys).
    #[must_use]
    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.access_key = access_key.into();
        self.secret_key = secret_key.into();
        self
    }

    /// Path-style (`endpoint/bucket/key`, the default) or virtual-hosted addressing.
    #[must_use]
    pub fn with_path_style(mut self, on: bool) -> Self {
        self.path_style = on;
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
    /// `InvalidArgument` for an empty bucket or missing credentials.
    pub fn build(self) -> Result<S3Store> {
        if self.bucket.is_empty() {
            return Err(BackupError::invalid("bucket", "empty"));
        }
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return Err(BackupError::invalid(
                "credentials",
                "access and secret key are required",
            ));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let creds = Credentials::new(self.access_key, self.secret_key, None, None, "guest-agent");
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(self.region))
            .credentials_provider(creds)
            .force_path_style(self.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            // A restore that waits on a slow tool reads slowly on purpose; that is not a stall.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.read_timeout)
                    .build(),
            );
        if let Some(e) = self.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: self.bucket,
        })
    }
}

/// An object store on the S3 API.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn classify(status: u16, code: Option<&str>) -> StoreErrorKind {
    match (status, code) {
        (_, Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"))
        | (429, _) => StoreErrorKind::Throttled,
        (_, Some("NoSuchKey" | "NoSuchUpload" | "NoSuchBucket" | "NotFound")) | (404, _) => {
            StoreErrorKind::NotFound
        }
        (_, Some("RequestTimeout")) | (408, _) => StoreErrorKind::Timeout,
        (401 | 403, _) => StoreErrorKind::Unauthorized,
        (500..=599, _) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Rejected,
    }
}

fn map_err<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> BackupError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, status) = match &e {
        SdkError::TimeoutError(_) => (StoreErrorKind::Timeout, None),
        SdkError::DispatchFailure(d) if d.is_timeout() => (StoreErrorKind::Timeout, None),
        SdkError::DispatchFailure(d) if d.is_user() => (StoreErrorKind::Rejected, None),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (StoreErrorKind::Unavailable, None)
        }
        SdkError::ServiceError(se) => {
            let status = service_status(se.raw());
            (classify(status, se.err().code()), Some(status))
        }
        SdkError::ConstructionFailure(_) => (StoreErrorKind::Rejected, None),
        _ => (StoreErrorKind::Protocol, None),
    };
    let message = match (status, e.code()) {
        (Some(s), Some(code)) => format!("HTTP {s} {code}: {}", e.message().unwrap_or_default()),
        _ => DisplayErrorContext(&e).to_string(),
    };
    BackupError::store(NAME, op, key, kind, message)
}

fn service_status(raw: &HttpResponse) -> u16 {
    raw.status().as_u16()
}

fn part_number(n: PartNumber) -> Result<i32> {
    i32::try_from(n).map_err(|_| BackupError::invalid("part number", format!("{n} is too large")))
}

fn byte_len(len: usize) -> Result<i64> {
    i64::try_from(len).map_err(|_| BackupError::invalid("body", "too large"))
}

impl S3Store {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket unless it exists already (and is ours).
    ///
    /// # Errors
    /// Store errors other than "already exists".
    pub async fn ensure_bucket(&self) -> Result<()> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err("create_bucket", &self.bucket, e)),
        }
    }
}

impl S3Store {
    /// Deletes the bucket if it is empty (for test and decommissioning cleanup). A missing
    /// bucket is fine.
    ///
    /// # Errors
    /// Store errors; a bucket that still holds objects is `Rejected` (409).
    pub async fn delete_bucket(&self) -> Result<()> {
        match self
            .client
            .delete_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_err("delete_bucket", &self.bucket, e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<PutReceipt> {
        let size = body.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(byte_len(body.len())?)
            .body(body.into())
            .send()
            .await
            .map_err(|e| map_err("put", key.as_str(), e))?;
        Ok(PutReceipt {
            etag: out.e_tag().map(unquote),
            size,
        })
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| map_err("create_multipart", key.as_str(), e))?;
        out.upload_id()
            .map(|id| UploadId(id.to_owned()))
            .ok_or_else(|| {
                BackupError::store(
                    NAME,
                    "create_multipart",
                    key.as_str(),
                    StoreErrorKind::Protocol,
                    "no upload id in the answer",
                )
            })
    }

    async fn put_part(
        &self,
        key: &ObjectKey,
        id: &UploadId,
        n: PartNumber,
        body: Bytes,
    ) -> Result<PartReceipt> {
        let size = body.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(&id.0)
            .part_number(part_number(n)?)
            .content_length(byte_len(body.len())?)
            .body(body.into())
            .send()
            .await
            .map_err(|e| map_err("put_part", key.as_str(), e))?;
        let etag = out.e_tag().map(unquote).ok_or_else(|| {
            BackupError::store(
                NAME,
                "put_part",
                key.as_str(),
                StoreErrorKind::Protocol,
                "no ETag for the part",
            )
        })?;
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
        let size = parts.iter().map(|p| p.size).sum();
        let mut completed = Vec::with_capacity(parts.len());
        for p in &parts {
            completed.push(
                CompletedPart::builder()
                    .part_number(part_number(p.number)?)
                    .e_tag(format!("\"{}\"", p.etag))
                    .build(),
            );
        }
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(&id.0)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_err("complete_multipart", key.as_str(), e))?;
        Ok(PutReceipt {
            etag: out.e_tag().map(unquote),
            size,
        })
    }

    async fn abort_multipart(&self, key: &ObjectKey, id: &UploadId) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(&id.0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_err("abort_multipart", key.as_str(), e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<ByteStream> {
        let header = match &range {
            Some(r) if r.start >= r.end => return Ok(Box::pin(futures::stream::empty())),
            Some(r) => Some(format!("bytes={}-{}", r.start, r.end - 1)),
            None => None,
        };
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_range(header)
            .send()
            .await
        {
            Ok(out) => out,
            // A range that starts past the end is empty, as it is for the other backends.
            Err(SdkError::ServiceError(se))
                if range.is_some() && service_status(se.raw()) == 416 =>
            {
                return Ok(Box::pin(futures::stream::empty()));
            }
            Err(e) => return Err(map_err("get", key.as_str(), e)),
        };
        let key = key.to_string();
        let s = futures::stream::try_unfold(out.body, move |mut body| {
            let key = key.clone();
            async move {
                match body.try_next().await {
                    Ok(Some(b)) => Ok(Some((b, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(BackupError::Store {
                        store: NAME,
                        op: "get",
                        key,
                        kind: StoreErrorKind::Unavailable,
                        message: e.to_string(),
                        source: Some(Box::new(e)),
                    }),
                }
            }
        });
        Ok(Box::pin(s))
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| map_err("head", key.as_str(), e))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            etag: out.e_tag().map(unquote),
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_err("delete", key.as_str(), e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        struct Page {
            client: Client,
            bucket: String,
            prefix: String,
            token: Option<String>,
            done: bool,
        }
        let start = Page {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            token: None,
            done: false,
        };
        futures::stream::try_unfold(start, |mut p| async move {
            if p.done {
                return Ok(None);
            }
            let out = p
                .client
                .list_objects_v2()
                .bucket(&p.bucket)
                .prefix(&p.prefix)
                .set_continuation_token(p.token.take())
                .send()
                .await
                .map_err(|e| map_err("list", &p.prefix, e))?;
            let mut items = Vec::new();
            for o in out.contents() {
                let Some(key) = o.key().and_then(|k| ObjectKey::new(k).ok()) else {
                    continue;
                };
                items.push(Ok(ObjectMeta {
                    key,
                    size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    etag: o.e_tag().map(unquote),
                }));
            }
            p.token = out.next_continuation_token().map(str::to_owned);
            p.done = !out.is_truncated().unwrap_or(false) || p.token.is_none();
            Ok(Some((futures::stream::iter(items), p)))
        })
        .map(|r: Result<_>| match r {
            Ok(s) => s.left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten()
        .boxed()
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map_err("list_pending_uploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(PendingUpload {
                        key: k.to_owned(),
                        id: UploadId(id.to_owned()),
                    });
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses_and_codes() {
        assert_eq!(classify(503, None), StoreErrorKind::Unavailable);
        assert_eq!(classify(503, Some("SlowDown")), StoreErrorKind::Throttled);
        assert_eq!(classify(404, Some("NoSuchKey")), StoreErrorKind::NotFound);
        assert_eq!(
            classify(403, Some("AccessDenied")),
            StoreErrorKind::Unauthorized
        );
        assert_eq!(classify(400, Some("InvalidPart")), StoreErrorKind::Rejected);
        assert_eq!(
            classify(400, Some("RequestTimeout")),
            StoreErrorKind::Timeout
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let b = S3StoreBuilder::new("b").with_credentials("ak", "very-secret");
        assert!(!format!("{b:?}").contains("very-secret"));
    }
}
