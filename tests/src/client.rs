//! A small client for the agent's HTTP API (reqwest on rustls with ring; HTTP/1.1
//! keep-alive).
//!
//! `POST /v1/rpc/{method}` with the keyword arguments as a JSON object answers
//! `{"result": ...}` or `{"error": {"type", "message"}}`; the helpers here turn those into
//! values or panics with the whole reply in the message.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::certs::{CertSet, Identity};

/// How long the helpers poll (an operation, a status) before giving up with a panic. A
/// safety bound against hanging, not a speed expectation.
pub const POLL_BOUND: Duration = Duration::from_secs(120);

/// One HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Body parsed as JSON, or the raw text as a JSON string when it is not JSON.
    pub body: Value,
}

impl Reply {
    /// `error.type`, if the body is an error reply.
    pub fn error_type(&self) -> Option<&str> {
        self.body.get("error")?.get("type")?.as_str()
    }

    /// `error.message`, if the body is an error reply.
    pub fn error_message(&self) -> Option<&str> {
        self.body.get("error")?.get("message")?.as_str()
    }

    /// Panics unless this is an error reply with `status` and `error_type`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error_type: &str) -> &Self {
        assert_eq!(
            (self.status, self.error_type()),
            (status, Some(error_type)),
            "expected {status} {error_type}, got {} {}",
            self.status,
            self.body
        );
        assert!(
            self.error_message().is_some(),
            "error reply without a message: {}",
            self.body
        );
        self
    }
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    base: String,
}

impl RpcClient {
    /// A client for `base` (`https://127.0.0.1:PORT`) that trusts the set's CA and presents
    /// the chosen client identity.
    pub fn mtls(base: &str, certs: &CertSet, who: Identity) -> Self {
        Self::mtls_with(base, certs, who, false)
    }

    /// Like [`RpcClient::mtls`]; with `http2` the client offers HTTP/2 in ALPN. An idle
    /// HTTP/2 connection needs its client's cooperation to close at shutdown, so a test
    /// using one should end with `Agent::terminate().await` while the client still runs.
    pub fn mtls_with(base: &str, certs: &CertSet, who: Identity, http2: bool) -> Self {
        crate::init_crypto();
        let ca = reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).expect("CA pem");
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
            .no_proxy();
        if !http2 {
            // HTTP/1.1 keep-alive: an idle HTTP/1 connection is closed by the agent at
            // shutdown without the client's help, which matters because the tests stop
            // agents from `Drop`, where this client's runtime no longer runs.
            b = b.http1_only();
        }
        let pem = match who {
            Identity::Client => Some(&certs.client_identity_pem),
            Identity::Rogue => Some(&certs.rogue_identity_pem),
            Identity::None => None,
        };
        if let Some(pem) = pem {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity pem"));
        }
        Self {
            http: b.build().expect("build https client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A plaintext client for `base` (`http://127.0.0.1:PORT`).
    pub fn plain(base: &str) -> Self {
        crate::init_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("build http client");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn reply(resp: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, body })
    }

    /// `POST /v1/rpc/{method}` with `args`; transport errors are returned.
    pub async fn try_rpc(&self, method: &str, args: &Value) -> Result<Reply, reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}/v1/rpc/{method}", self.base))
            .json(args)
            .send()
            .await?;
        Self::reply(resp).await
    }

    /// `POST /v1/rpc/{method}`; panics on a transport error.
    pub async fn rpc(&self, method: &str, args: &Value) -> Reply {
        self.try_rpc(method, args)
            .await
            .unwrap_or_else(|e| panic!("POST /v1/rpc/{method}: transport error: {e:?}"))
    }

    /// Calls `method` and returns `result`; panics on an error reply.
    #[track_caller]
    pub fn call<'a>(
        &'a self,
        method: &'a str,
        args: Value,
    ) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let r = self.rpc(method, &args).await;
            match (r.status, r.body.get("result")) {
                (200, Some(v)) => v.clone(),
                _ => panic!(
                    "{method}({args}) failed: {} {} (called at {caller})",
                    r.status, r.body
                ),
            }
        }
    }

    /// Calls `method` and returns the reply, panicking if it succeeded.
    #[track_caller]
    pub fn call_err<'a>(
        &'a self,
        method: &'a str,
        args: Value,
    ) -> impl std::future::Future<Output = Reply> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let r = self.rpc(method, &args).await;
            assert!(
                r.status != 200 && r.body.get("error").is_some(),
                "{method}({args}) should have failed, got {} {} (called at {caller})",
                r.status,
                r.body
            );
            r
        }
    }

    /// `GET path`; transport errors are returned.
    pub async fn try_get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        Self::reply(resp).await
    }

    /// `GET path`; panics on a transport error.
    pub async fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: transport error: {e:?}"))
    }

    /// `POST path` with a raw body and an optional content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
        Self::reply(resp)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: reading body: {e:?}"))
    }

    /// Polls `get_operation` until the operation is no longer running; returns it.
    pub async fn wait_operation(&self, id: &str) -> Value {
        let deadline = Instant::now() + POLL_BOUND;
        loop {
            let op = self.call("get_operation", json!({"id": id})).await;
            if op["state"] != "running" {
                return op;
            }
            assert!(
                Instant::now() < deadline,
                "operation {id} still running: {op}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `prepare` with `args`, waits for the tracked operation and asserts it succeeded.
    pub async fn prepare(&self, args: Value) -> Value {
        let started = self.call("prepare", args).await;
        let id = started["operation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("prepare did not return an operation id: {started}"))
            .to_owned();
        let op = self.wait_operation(&id).await;
        assert_eq!(op["state"], "succeeded", "prepare failed: {op}");
        op
    }

    /// `service_status` of `GET /v1/status`.
    pub async fn service_status(&self) -> String {
        let r = self.get("/v1/status").await;
        assert_eq!(r.status, 200, "GET /v1/status: {}", r.body);
        r.body["service_status"]
            .as_str()
            .unwrap_or_else(|| panic!("no service_status in {}", r.body))
            .to_owned()
    }

    /// Polls `GET /v1/status` until `service_status` is `want`.
    pub async fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + POLL_BOUND;
        loop {
            let got = self.service_status().await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "status is still '{got}', waited for '{want}'"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
