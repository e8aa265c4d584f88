//! A client of the agent's HTTP API, for operators, scripts, the `guest-agent call`
//! command and benchmarks.
//!
//! It trusts only the CA it is given (no system roots), presents its client certificate,
//! follows no redirects and ignores proxy variables: it talks to one agent directly.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::tls;
use crate::transport::TransportError;

/// Largest response body read; a longer one is an error rather than unbounded memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Upper bound for establishing a connection (TCP and TLS), within the overall timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material of a client: the CA that signed the agent's certificate, and the client's
/// own certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle the agent's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
}

/// An answer from the agent, successful or not.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// HTTP status code.
    pub status: u16,
    /// The JSON body (`{"result": …}` or `{"error": {"type", "message"}}` for calls); a
    /// body that is not JSON (`/metrics`) is a JSON string.
    pub body: Value,
}

impl CallOutcome {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client of one agent's HTTP API.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl HttpClient {
    /// A client for the agent at `url` (`https://host:port`, or `http://` with `tls: None`
    /// for a loopback agent without TLS); every request gives up after `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Tls`] for a bad URL, TLS settings that do not fit its scheme, or
    /// unreadable certificate files (named in the message).
    pub fn new(
        url: &str,
        tls: Option<ClientTls>,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| TransportError::Tls(format!("agent URL {url:?}: {e}")))?;
        let config = match (base.scheme(), &tls) {
            ("https", Some(t)) => {
                tls::client_config(Some(&t.ca), Some((t.cert.as_path(), t.key.as_path())))?
            }
            ("https", None) => {
                return Err(TransportError::Tls(format!(
                    "agent URL {url}: https needs a CA and a client certificate"
                )));
            }
            ("http", None) => tls::client_config(None, None)?,
            ("http", Some(_)) => {
                return Err(TransportError::Tls(format!(
                    "agent URL {url}: TLS settings given for a plain http URL"
                )));
            }
            (other, _) => {
                return Err(TransportError::Tls(format!(
                    "agent URL {url}: unsupported scheme {other:?} (use https or http)"
                )));
            }
        };
        // Joining relative paths must not drop the last segment of a base path.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| TransportError::Tls(format!("building the HTTP client: {}", chain(&e))))?;
        Ok(Self { base, http })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, TransportError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| TransportError::Request {
                url: format!("{}{path}", self.base),
                reason: e.to_string(),
            })
    }

    /// Calls `method` with keyword arguments `args` (`POST /v1/rpc/{method}`).
    ///
    /// # Errors
    /// [`TransportError::Request`] when no readable answer arrives; error answers from the
    /// agent are an `Ok` outcome with their status.
    pub async fn call(&self, method: &str, args: Value) -> Result<CallOutcome, TransportError> {
        let url = self.url(&format!("v1/rpc/{}", escape_segment(method)))?;
        let req = self.http.post(url.clone()).json(&args);
        self.send(url, req).await
    }

    /// `GET`s `path` (`/v1/status`, `/healthz`, `/metrics` ...).
    ///
    /// # Errors
    /// As [`HttpClient::call`].
    pub async fn get(&self, path: &str) -> Result<CallOutcome, TransportError> {
        let url = self.url(path)?;
        let req = self.http.get(url.clone());
        self.send(url, req).await
    }

    async fn send(
        &self,
        url: reqwest::Url,
        req: reqwest::RequestBuilder,
    ) -> Result<CallOutcome, TransportError> {
        let fail = |reason: String| TransportError::Request {
            url: url.to_string(),
            reason,
        };
        let mut resp = req.send().await.map_err(|e| fail(chain(&e)))?;
        let status = resp.status().as_u16();
        let json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(chain(&e)))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(fail(format!(
                    "the answer exceeds {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = if json {
            serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("HTTP {status} with invalid JSON: {e}")))?
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        Ok(CallOutcome { status, body })
    }
}

/// Percent-encodes everything but unreserved characters, so a method name stays one path
/// segment whatever it contains.
fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own text names no cause).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(escape_segment("rpc_ping"), "rpc_ping");
        assert_eq!(escape_segment("../x?y"), "..%2Fx%3Fy");
    }

    #[test]
    fn scheme_and_tls_must_agree() {
        let t = Duration::from_secs(1);
        assert!(HttpClient::new("http://127.0.0.1:1", None, t).is_ok());
        let e = HttpClient::new("https://127.0.0.1:1", None, t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("https needs a CA"), "{e}");
        let tls = ClientTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: "c".into(),
            key: "k".into(),
        };
        let e = HttpClient::new("http://127.0.0.1:1", Some(tls.clone()), t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain http"), "{e}");
        let e = HttpClient::new("https://127.0.0.1:1", Some(tls), t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(HttpClient::new("ftp://x", None, t).is_err());
    }

    #[test]
    fn urls_keep_the_base_path() {
        let c = HttpClient::new("http://127.0.0.1:1/agent", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.url("/v1/status").unwrap().as_str(),
            "http://127.0.0.1:1/agent/v1/status"
        );
    }
}
