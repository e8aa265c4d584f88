//! The HTTP transport against a real server on 127.0.0.1 port 0: mutual TLS with
//! certificates made here, every error path's JSON shape, probes, metrics, request ids,
//! the connection limit, graceful shutdown, and the HTTP control-plane reporter.
//!
//! The dispatcher runs the PostgreSQL driver built but never connected: the methods used
//! here (`rpc_ping`, `get_status`, ...) need no database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_agent::config::{ControlPlaneHttp, HttpSection, TlsSection};
use guest_agent::rpc::Dispatcher;
use guest_agent::state::AgentState;
use guest_agent::telemetry::Metrics;
use guest_agent::transport::http::{ClientTls, HttpClient, HttpControlPlane, HttpTransport};
use guest_agent::transport::{ControlPlane, Heartbeat, HeartbeatPayload, TransportError};
use guest_agent_api::runtime::ProcessRuntime;
use guest_agent_api::{DatastoreStatus, DriverSettings};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A CA with a server certificate and a client certificate, plus a client certificate from
/// an unrelated CA, all as PEM files.
struct Pki {
    _dir: TempDir,
    server: TlsSection,
    client: ClientTls,
    rogue: ClientTls,
    /// CA file alone, for a client without a certificate.
    ca: std::path::PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    cn: &str,
    eku: ExtendedKeyUsagePurpose,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trusted = ca("agent test CA");
    let other = ca("unrelated CA");
    let ca_path = d.join("ca.pem");
    std::fs::write(&ca_path, trusted.pem()).unwrap();
    let (cert, key) = leaf(
        d,
        "server",
        &trusted,
        &["127.0.0.1"],
        "agent",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (ccert, ckey) = leaf(
        d,
        "client",
        &trusted,
        &[],
        "trove-operator",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (rcert, rkey) = leaf(
        d,
        "rogue",
        &other,
        &[],
        "trove-operator",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        server: TlsSection {
            cert,
            key,
            client_ca: ca_path.clone(),
        },
        client: ClientTls {
            ca: ca_path.clone(),
            cert: ccert,
            key: ckey,
        },
        rogue: ClientTls {
            ca: ca_path.clone(),
            cert: rcert,
            key: rkey,
        },
        ca: ca_path,
        _dir: dir,
    }
}

/// A dispatcher over the PostgreSQL driver, built but not connected, on a fresh agent state.
async fn dispatcher(dir: &Path) -> Arc<Dispatcher> {
    let state_dir = dir.join("agent");
    std::fs::create_dir_all(&state_dir).unwrap();
    let settings = DriverSettings {
        os_user: Some("postgres".to_owned()),
        ..DriverSettings::new(
            "postgresql",
            dir.join("data"),
            dir.join("run"),
            dir.join("driver"),
            5432,
            Arc::new(ProcessRuntime::new()),
        )
    };
    let driver = (guest_agent_postgres::factory().build)(settings)
        .await
        .unwrap();
    Arc::new(Dispatcher::new(
        driver,
        Arc::new(AgentState::load(&state_dir)),
        Arc::new(Metrics::default()),
    ))
}

/// A running server; dropping it does not stop it, `stop` does.
struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), TransportError>>,
    _dir: TempDir,
}

impl Server {
    async fn start(section: HttpSection) -> Self {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let dispatcher = dispatcher(dir.path()).await;
        let bound = HttpTransport::bind(&section).unwrap();
        let addr = bound.local_addr();
        assert_ne!(addr.port(), 0);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.serve(dispatcher, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn plain() -> Self {
        Self::start(section(None)).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn section(tls: Option<TlsSection>) -> HttpSection {
    HttpSection {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        body_limit_bytes: 1024,
        ..HttpSection::default()
    }
}

fn plain_client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// Status, `x-request-id` and JSON body of a response.
async fn parts(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(
        ctype.as_deref(),
        Some("application/json"),
        "status {status}: {text}"
    );
    (status, rid, serde_json::from_str(&text).unwrap())
}

fn error_type(body: &Value) -> &str {
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {body}"))
}

/// Collects log lines for assertions about what was logged.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn mutual_tls_ping_and_peer_identity() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    // Lock-free probes such as rpc_ping log their completion at debug level.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // The test runtime is single-threaded, so the server's logs land here too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = pki();
    let server = Server::start(section(Some(pki.server.clone()))).await;
    let client = HttpClient::new(
        &format!("https://{}", server.addr),
        Some(pki.client.clone()),
        TIMEOUT,
    )
    .unwrap();
    let out = client.call("rpc_ping", json!({})).await.unwrap();
    assert_eq!(
        (out.status, out.body.clone()),
        (200, json!({"result": true}))
    );
    let out = client.get("/v1/status").await.unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.body["service_status"], "new");
    server.stop().await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("HTTP transport listening."), "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("method=\"rpc_ping\""))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("peer=\"trove-operator\""), "{line}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = pki();
    let server = Server::start(section(Some(pki.server.clone()))).await;
    install_provider();
    // Trusts the server but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca).unwrap();
    for cert in <rustls_pki_types::CertificateDer as PemObject>::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let r = client
        .post(format!("https://{}/v1/rpc/rpc_ping", server.addr))
        .send()
        .await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");

    // A certificate from another CA is refused too.
    let rogue = HttpClient::new(
        &format!("https://{}", server.addr),
        Some(pki.rogue.clone()),
        TIMEOUT,
    )
    .unwrap();
    let e = rogue.call("rpc_ping", json!({})).await.unwrap_err();
    assert!(matches!(e, TransportError::Request { .. }), "{e}");

    // The server keeps serving good clients.
    let good = HttpClient::new(
        &format!("https://{}", server.addr),
        Some(pki.client),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(good.call("rpc_ping", json!({})).await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused() {
    let mut s = section(None);
    s.listen = "0.0.0.0:0".parse().unwrap();
    let e = HttpTransport::bind(&s).unwrap_err();
    match e {
        TransportError::Tls(msg) => assert_eq!(
            msg,
            "plaintext HTTP is allowed only on a loopback address; configure transport.http.tls \
             for mutual TLS"
        ),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn missing_tls_files_are_named() {
    let pki = pki();
    let mut tls = pki.server.clone();
    tls.key = "/nonexistent/agent.key".into();
    let e = HttpTransport::bind(&section(Some(tls))).unwrap_err();
    assert!(
        matches!(&e, TransportError::Tls(m) if m.contains("/nonexistent/agent.key")),
        "{e}"
    );
}

#[tokio::test]
async fn bad_requests_answer_json_errors() {
    let server = Server::plain().await;
    let http = plain_client();
    let post = |body: &'static str, ctype: &'static str| {
        http.post(server.url("/v1/rpc/rpc_ping"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };

    let (status, _, body) = parts(post("{", "application/json").await.unwrap()).await;
    assert_eq!((status, error_type(&body)), (400, "MalformedRequest"));
    let (status, _, body) = parts(post("[1]", "application/json").await.unwrap()).await;
    assert_eq!((status, error_type(&body)), (400, "MalformedRequest"));
    let (status, _, body) = parts(post("{}", "text/plain").await.unwrap()).await;
    assert_eq!((status, error_type(&body)), (415, "UnsupportedMediaType"));

    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(4096));
    let r = http
        .post(server.url("/v1/rpc/rpc_ping"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (413, "PayloadTooLarge"));

    let r = http
        .post(server.url("/v1/rpc/get_flux"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (404, "NoSuchMethod"));
    assert_eq!(
        body["error"]["message"],
        "Endpoint does not support RPC method get_flux"
    );

    let r = http.get(server.url("/nowhere")).send().await.unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (404, "NotFound"));
    let r = http
        .get(server.url("/v1/rpc/rpc_ping"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("allow").is_some());
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (405, "MethodNotAllowed"));

    let r = http
        .get(server.url("/v1/operations/no-such-op"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (404, "NotFound"));

    // Invalid arguments name the field.
    let r = http
        .post(server.url("/v1/rpc/get_operation"))
        .json(&json!({"id": 7}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(r).await;
    assert_eq!((status, error_type(&body)), (400, "InvalidArgument"));
    server.stop().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let server = Server::plain().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut req = String::from(
        "POST /v1/rpc/rpc_ping HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..8 {
        req.push_str(&format!("200\r\n{}\r\n", " ".repeat(0x200)));
    }
    req.push_str("0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"PayloadTooLarge\""), "{resp}");
    server.stop().await;
}

#[tokio::test]
async fn probes_metrics_and_request_ids() {
    let server = Server::plain().await;
    let http = plain_client();

    let (status, _, body) = parts(http.get(server.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _, body) = parts(http.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body), (503, json!({"status": "new"})));

    // An empty body is `{}` and needs no content type.
    let r = http
        .post(server.url("/v1/rpc/rpc_ping"))
        .header("x-request-id", "ops-42.a_b")
        .send()
        .await
        .unwrap();
    let (status, rid, body) = parts(r).await;
    assert_eq!((status, body), (200, json!({"result": true})));
    assert_eq!(rid.as_deref(), Some("ops-42.a_b"));

    // An invalid id is replaced, never echoed.
    let r = http
        .get(server.url("/healthz"))
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(rid.starts_with("req-") && rid != "bad id!", "{rid}");
    let r = http.get(server.url("/nowhere")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_some());

    let r = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("guest_agent_operations_total{method=\"rpc_ping\",outcome=\"ok\"} 1"),
        "{text}"
    );

    let (status, _, body) = parts(http.get(server.url("/v1/status")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["prepare"]["phase"], "new");
    let (status, _, body) = parts(
        http.get(server.url("/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["openapi"]), (200, &json!("3.0.3")));
    server.stop().await;
}

/// Sends the head of a POST with a 2-byte body and only its first byte.
async fn half_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/rpc/rpc_ping HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
          Content-Length: 2\r\n\r\n{",
    )
    .await
    .unwrap();
    s
}

async fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = Server::plain().await;
    let mut in_flight = TcpStream::connect(server.addr).await.unwrap();
    in_flight
        .write_all(
            b"POST /v1/rpc/rpc_ping HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    // `100 Continue` comes once the handler reads the body: the request is in flight.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(in_flight.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    server.shutdown.cancel();
    // Once new connections are refused the accept loop is gone; the request is still open.
    while TcpStream::connect(server.addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(!server.task.is_finished());
    in_flight.write_all(b"{}").await.unwrap();
    let resp = read_all(in_flight).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("{\"result\":true}"), "{resp}");
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn slow_request_times_out_with_504() {
    let mut s = section(None);
    s.request_timeout_secs = 1;
    let server = Server::start(s).await;
    let resp = read_all(half_request(server.addr).await).await;
    assert!(resp.starts_with("HTTP/1.1 504"), "{resp}");
    assert!(resp.contains("\"type\":\"Timeout\""), "{resp}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait() {
    let mut s = section(None);
    s.max_connections = 1;
    let server = Server::start(s).await;
    let first = half_request(server.addr).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    // Not served while the first connection holds the only slot.
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(first);
    let rest = read_all(second).await;
    assert!(
        format!("{}{rest}", char::from(byte[0])).contains("200 OK"),
        "{rest}"
    );
    server.stop().await;
}

/// A control plane stub: `/ok/heartbeat` accepts, `/no/heartbeat` rejects; the bodies it
/// received are kept.
async fn control_plane_stub() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/ok/heartbeat",
            post(move |axum::Json(v): axum::Json<Value>| async move {
                keep.lock().unwrap().push(v);
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/no/heartbeat",
            post(|| async { (axum::http::StatusCode::FORBIDDEN, "instance unknown") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn control_plane_heartbeats() {
    let (addr, seen) = control_plane_stub().await;
    let beat = Heartbeat {
        instance_id: "i-1".to_owned(),
        payload: HeartbeatPayload {
            service_status: DatastoreStatus::Healthy,
        },
        sent: 1.5,
    };
    let cfg = |url: String| ControlPlaneHttp {
        url,
        ca: None,
        client_cert: None,
        client_key: None,
    };

    let cp = HttpControlPlane::new(&cfg(format!("http://{addr}/ok"))).unwrap();
    cp.heartbeat(&beat).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[json!({"instance_id": "i-1", "payload": {"service_status": "healthy"}, "sent": 1.5})]
    );

    let cp = HttpControlPlane::new(&cfg(format!("http://{addr}/no/"))).unwrap();
    let e = cp.heartbeat(&beat).await.unwrap_err();
    assert!(
        matches!(&e, TransportError::Rejected(m) if m.contains("403") && m.contains("instance unknown")),
        "{e}"
    );

    // A port nobody listens on: bind one, then free it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cp = HttpControlPlane::new(&cfg(format!("http://{closed}"))).unwrap();
    let e = cp.heartbeat(&beat).await.unwrap_err();
    assert!(matches!(e, TransportError::Unreachable(_)), "{e}");
}
