//! Reports to an HTTP control plane: each [`Heartbeat`] is POSTed as JSON to `<url>/heartbeat`,
//! each [`BackupUpdate`] to `<url>/update_backup`.
//!
//! Only the configured CA is trusted (no system roots), a client certificate is presented
//! when configured, redirects are not followed and proxy variables are ignored, so a
//! heartbeat goes to the configured endpoint or nowhere.

use std::time::Duration;

use async_trait::async_trait;

use super::client::chain;
use super::tls;
use crate::config::ControlPlaneHttp;
use crate::transport::{BackupUpdate, ControlPlane, Heartbeat, TransportError};

/// Deadline for one heartbeat; well below the usual 30 s interval, so beats do not pile up.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a rejecting answer's body goes into the error.
const MAX_ERROR_BODY: usize = 512;

/// Reports heartbeats to `<url>/heartbeat` and backups to `<url>/update_backup`.
#[derive(Debug, Clone)]
pub struct HttpControlPlane {
    endpoint: reqwest::Url,
    backups: reqwest::Url,
    http: reqwest::Client,
}

impl HttpControlPlane {
    /// A reporter for `cfg`.
    ///
    /// # Errors
    /// [`TransportError::Tls`] for a bad URL, an `https` URL without `ca`, only one of
    /// `client_cert` and `client_key`, or unreadable certificate files (named).
    pub fn new(cfg: &ControlPlaneHttp) -> Result<Self, TransportError> {
        let url = &cfg.url;
        let mut endpoint = reqwest::Url::parse(url)
            .map_err(|e| TransportError::Tls(format!("control plane URL {url:?}: {e}")))?;
        let identity = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                return Err(TransportError::Tls(
                    "control_plane.http: client_cert and client_key go together".to_owned(),
                ));
            }
        };
        match (endpoint.scheme(), &cfg.ca) {
            ("https", None) => {
                return Err(TransportError::Tls(format!(
                    "control plane URL {url}: https needs control_plane.http.ca (system roots \
                     are not used)"
                )));
            }
            ("https" | "http", _) => {}
            (other, _) => {
                return Err(TransportError::Tls(format!(
                    "control plane URL {url}: unsupported scheme {other:?}"
                )));
            }
        }
        let config = tls::client_config(cfg.ca.as_deref(), identity)?;
        let base = endpoint.path().trim_end_matches('/').to_owned();
        let mut backups = endpoint.clone();
        backups.set_path(&format!("{base}/update_backup"));
        endpoint.set_path(&format!("{base}/heartbeat"));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(HEARTBEAT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| TransportError::Tls(format!("building the HTTP client: {}", chain(&e))))?;
        Ok(Self {
            endpoint,
            backups,
            http,
        })
    }

    /// Where heartbeats go.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }
}

impl HttpControlPlane {
    /// POSTs `body` as JSON to `url`; a non-2xx answer is `Rejected` with the start of its body.
    async fn post<T: serde::Serialize + Sync>(
        &self,
        url: &reqwest::Url,
        body: &T,
    ) -> Result<(), TransportError> {
        let resp = self
            .http
            .post(url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| TransportError::Unreachable(format!("{url}: {}", chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the start of the body: enough to see why, bounded whatever the peer sends.
        let mut resp = resp;
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        let text = String::from_utf8_lossy(&body);
        Err(TransportError::Rejected(format!(
            "{url} answered HTTP {status}: {}",
            text.trim()
        )))
    }
}

#[async_trait]
impl ControlPlane for HttpControlPlane {
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), TransportError> {
        self.post(&self.endpoint, beat).await
    }

    async fn update_backup(&self, update: &BackupUpdate) -> Result<(), TransportError> {
        self.post(&self.backups, update).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ControlPlaneHttp {
        ControlPlaneHttp {
            url: url.to_owned(),
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn endpoint_and_settings() {
        let cp = HttpControlPlane::new(&cfg("http://127.0.0.1:9/trove/")).unwrap();
        assert_eq!(cp.endpoint(), "http://127.0.0.1:9/trove/heartbeat");
        assert_eq!(
            cp.backups.as_str(),
            "http://127.0.0.1:9/trove/update_backup"
        );
        let e = HttpControlPlane::new(&cfg("https://cp.example"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs control_plane.http.ca"), "{e}");
        let mut c = cfg("http://127.0.0.1:9");
        c.client_cert = Some("/x".into());
        assert!(HttpControlPlane::new(&c).is_err());
    }
}
