//! The HTTP API: RPC calls, health, readiness, metrics, status, operations and the OpenAPI
//! document, with one JSON error shape (`{"error": {"type", "message"}}`) on every failure
//! path, transport-level ones included.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guest_agent_api::DatastoreStatus;
use serde_json::{Value, json};

use crate::config::HttpSection;
use crate::rpc::{Dispatcher, RequestContext, RpcError};

/// `POST`: one RPC call.
pub(crate) const RPC: &str = "/v1/rpc/{method}";
/// `GET`: liveness.
pub(crate) const HEALTHZ: &str = "/healthz";
/// `GET`: readiness (the datastore is healthy).
pub(crate) const READYZ: &str = "/readyz";
/// `GET`: Prometheus metrics.
pub(crate) const METRICS: &str = "/metrics";
/// `GET`: agent and datastore status.
pub(crate) const STATUS: &str = "/v1/status";
/// `GET`: one tracked operation.
pub(crate) const OPERATION: &str = "/v1/operations/{id}";
/// `GET`: the OpenAPI document.
pub(crate) const OPENAPI: &str = "/v1/openapi.json";

/// Every route, for the OpenAPI consistency test.
#[cfg(test)]
pub(crate) const PATHS: &[&str] = &[RPC, HEALTHZ, READYZ, METRICS, STATUS, OPERATION, OPENAPI];

/// The checked-in OpenAPI 3.0 document served at [`OPENAPI`].
pub(crate) const OPENAPI_JSON: &str = include_str!("../../../openapi.json");

/// The request id header, honoured when valid and always echoed.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest accepted caller-supplied request id.
const MAX_REQUEST_ID: usize = 128;
/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Who is on the other end of a connection, attached to each of its requests.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The client's address.
    pub(crate) remote: std::net::SocketAddr,
    /// The authenticated identity (certificate CN or SAN), else the address.
    pub(crate) peer: String,
}

/// The request id of the request being served.
#[derive(Debug, Clone)]
struct RequestId(String);

#[derive(Clone)]
struct AppState {
    dispatcher: Arc<Dispatcher>,
    body_limit: usize,
}

/// The router with every route and layer.
pub(crate) fn router(dispatcher: Arc<Dispatcher>, section: &HttpSection) -> Router {
    let state = AppState {
        dispatcher,
        body_limit: section.body_limit_bytes,
    };
    let timeout = Duration::from_secs(section.request_timeout_secs);
    Router::new()
        .route(RPC, post(rpc))
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(METRICS, get(metrics))
        .route(STATUS, get(status))
        .route(OPERATION, get(operation))
        .route(OPENAPI, get(openapi))
        .fallback(not_found)
        .with_state(state)
        // Layers run bottom-up on the way in: the request id is known before anything else,
        // and the JSON rewrite sees the timeout's answer too.
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(request_id))
}

/// `{"error": {"type": kind, "message": message}}` with `status`.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn rpc_error_response(e: &RpcError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.kind(), &e.to_string())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Takes a valid `x-request-id` or makes one, and echoes it on the response.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_request_id(id))
        .map_or_else(|| RequestContext::new("http").request_id, str::to_owned);
    let header = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id));
    let mut resp = next.run(req).await;
    if let Some(h) = header {
        resp.headers_mut().insert(X_REQUEST_ID, h);
    }
    resp
}

/// Answers 504 when a request takes longer than the configured timeout. The operation
/// itself runs in a dispatcher task and is not aborted.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!(
                "no answer within {} s; an operation already started keeps running",
                limit.as_secs()
            ),
        ),
    }
}

/// Rewrites any error response that is not already JSON (axum's 405, for one) into the
/// common error shape, keeping its status and headers such as `Allow`.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(resp.headers()) {
        return resp;
    }
    let kind = match status {
        StatusCode::BAD_REQUEST => "MalformedRequest",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "Timeout",
        s if s.is_server_error() => "InternalError",
        _ => "HttpError",
    };
    let message = status.canonical_reason().unwrap_or("request failed");
    let (mut parts, _) = resp.into_parts();
    let fresh = error_response(status, kind, message);
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.extend(fresh.headers().clone());
    Response::from_parts(parts, fresh.into_body())
}

async fn not_found(req: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

fn too_large(limit: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        &format!("the request body exceeds {limit} bytes"),
    )
}

/// The request context of `req`: its id, and the peer set by the connection.
fn context(req: &Request) -> RequestContext {
    let mut ctx = RequestContext::new("http");
    if let Some(RequestId(id)) = req.extensions().get::<RequestId>() {
        ctx.request_id.clone_from(id);
    }
    ctx.peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.clone());
    ctx
}

/// `POST /v1/rpc/{method}`: the body is the keyword arguments (empty means `{}`).
async fn rpc(State(st): State<AppState>, Path(method): Path<String>, req: Request) -> Response {
    let ctx = context(&req);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(st.body_limit).unwrap_or(u64::MAX)) {
        return too_large(st.body_limit);
    }
    let json_type = is_json(req.headers());
    let bytes = match axum::body::to_bytes(req.into_body(), st.body_limit).await {
        Ok(b) => b,
        Err(e) => {
            let over_limit =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over_limit {
                return too_large(st.body_limit);
            }
            return rpc_error_response(&RpcError::Malformed(format!(
                "cannot read the request body: {e}"
            )));
        }
    };
    let args = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else if !json_type {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the request body must be JSON (Content-Type: application/json)",
        );
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return rpc_error_response(&RpcError::Malformed(format!(
                    "the request body is not valid JSON: {e}"
                )));
            }
        }
    };
    // Only an object carries keyword arguments; `null` would otherwise pass as `{}`.
    if !args.is_object() {
        return rpc_error_response(&RpcError::Malformed(
            "the request body must be a JSON object of keyword arguments".to_owned(),
        ));
    }
    match st.dispatcher.dispatch(&method, args, ctx).await {
        Ok(result) => axum::Json(json!({ "result": result })).into_response(),
        Err(e) => rpc_error_response(&e),
    }
}

/// `GET /healthz`: the agent answers.
async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 when the datastore is healthy, 503 otherwise.
async fn readyz(State(st): State<AppState>) -> Response {
    let status = st.dispatcher.current_status().await;
    let code = if status == DatastoreStatus::Healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(json!({"status": status.description()}))).into_response()
}

/// `GET /metrics`.
async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, PROMETHEUS_TEXT)],
        st.dispatcher.metrics().render(),
    )
        .into_response()
}

/// `GET /v1/status`.
async fn status(State(st): State<AppState>) -> Response {
    axum::Json(st.dispatcher.status_json().await).into_response()
}

/// `GET /v1/operations/{id}`: the operation itself, or 404 `NotFound`.
async fn operation(State(st): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let ctx = context(&req);
    match st
        .dispatcher
        .dispatch("get_operation", json!({ "id": id }), ctx)
        .await
    {
        Ok(op) => axum::Json(op).into_response(),
        Err(e) => rpc_error_response(&e),
    }
}

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use guest_agent_api::DriverSettings;
    use guest_agent_api::runtime::ProcessRuntime;
    use tower::ServiceExt as _;

    use super::*;
    use crate::rpc::Request as RpcRequest;
    use crate::state::AgentState;
    use crate::telemetry::Metrics;

    /// A router over the PostgreSQL driver, built but never connected.
    async fn app(dir: &std::path::Path) -> Router {
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
        let dispatcher = Dispatcher::new(
            driver,
            Arc::new(AgentState::load(&state_dir)),
            Arc::new(Metrics::default()),
        );
        router(Arc::new(dispatcher), &HttpSection::default())
    }

    fn doc() -> Value {
        serde_json::from_str(OPENAPI_JSON).unwrap()
    }

    #[test]
    fn openapi_paths_are_the_routes() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        let documented: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let routed: BTreeSet<&str> = PATHS.iter().copied().collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn openapi_method_enum_is_request_methods() {
        let doc = doc();
        let params = doc["paths"][RPC]["post"]["parameters"].as_array().unwrap();
        let method = params.iter().find(|p| p["name"] == "method").unwrap();
        let listed: Vec<&str> = method["schema"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            RpcRequest::METHODS,
            "regenerate the method enum of agent/openapi.json"
        );
        let described: BTreeSet<&str> = doc["x-rpc-methods"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let known: BTreeSet<&str> = RpcRequest::METHODS.iter().copied().collect();
        assert_eq!(described, known, "x-rpc-methods of agent/openapi.json");
    }

    /// Every documented (path, verb) is routed, and every other verb on a routed path is 405.
    #[tokio::test]
    async fn documented_operations_are_routed() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let doc = doc();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let uri = path
                .replace("{method}", "rpc_ping")
                .replace("{id}", "no-such-op");
            for verb in ["get", "post", "put", "delete"] {
                let req = axum::http::Request::builder()
                    .method(verb.to_uppercase().as_str())
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if item.get(verb).is_some() {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{verb} {uri}");
                    let unrouted = body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no route"));
                    assert!(!unrouted, "{verb} {uri} is documented but not routed");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{verb} {uri}");
                    assert_eq!(body["error"]["type"], "MethodNotAllowed", "{verb} {uri}");
                }
            }
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("req-1.2_3"));
        assert!(valid_request_id(&"a".repeat(128)));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id("a\u{e9}"));
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
