//! The accept loop: a bounded number of connections, the TLS handshake with a deadline, the
//! peer's identity attached to every request, and a graceful stop.
//!
//! A hand-written loop (tokio-rustls + hyper-util) rather than a server framework, because
//! all four needs meet in one place: the connection limit is a semaphore permit held by the
//! connection task, the identity comes from the finished handshake, and shutdown tells each
//! connection to finish its in-flight requests and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::routes::{self, ConnInfo};
use super::tls;
use crate::config::HttpSection;
use crate::rpc::Dispatcher;
use crate::transport::TransportError;

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a request's headers (and for an idle keep-alive connection's next request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 64;
/// Pause after a failed `accept` (out of file descriptors, mostly) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Extra time, beyond the request timeout, that shutdown waits for connections to close.
const DRAIN_SLACK: Duration = Duration::from_secs(5);

/// A listening HTTP transport, not yet serving: [`BoundHttp::local_addr`] tells the real
/// port when the configured one was 0.
#[derive(Debug)]
pub struct BoundHttp {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    section: HttpSection,
}

impl BoundHttp {
    /// Binds `section.listen` with the TLS configuration already checked and loaded.
    pub(crate) fn bind(
        section: &HttpSection,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, TransportError> {
        let addr = section.listen;
        let bind_err = |source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        // Tokio requires a non-blocking socket; the runtime takes it over in `serve`.
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
            tls,
            section: section.clone(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `dispatcher` until `shutdown` is cancelled, then stops accepting, lets every
    /// connection finish its in-flight requests, and returns once they are closed (or the
    /// request timeout plus a few seconds has passed).
    pub async fn serve(
        self,
        dispatcher: Arc<Dispatcher>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let Self {
            listener,
            local_addr,
            tls,
            section,
        } = self;
        let listener = TcpListener::from_std(listener).map_err(|source| TransportError::Io {
            context: format!("registering the listener on {local_addr}"),
            source,
        })?;
        let app = routes::router(dispatcher, &section);
        let acceptor = tls.map(TlsAcceptor::from);
        let permits = Arc::new(Semaphore::new(section.max_connections.max(1)));
        let connections = TaskTracker::new();
        tracing::info!(listen = %local_addr, tls = acceptor.is_some(), "HTTP transport listening.");

        loop {
            // Waiting for a permit before accepting leaves further clients in the kernel's
            // backlog instead of accepting and then dropping them.
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, remote) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accepting a connection failed.");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        }
                    }
                },
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(peer = %remote, error = %e, "Could not set TCP_NODELAY.");
            }
            connections.spawn(connection(
                stream,
                remote,
                acceptor.clone(),
                app.clone(),
                shutdown.clone(),
                permit,
            ));
        }

        drop(listener);
        connections.close();
        tracing::info!(
            listen = %local_addr,
            connections = connections.len(),
            "HTTP transport stopped accepting; finishing in-flight requests."
        );
        let limit = Duration::from_secs(section.request_timeout_secs) + DRAIN_SLACK;
        if tokio::time::timeout(limit, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                listen = %local_addr,
                connections = connections.len(),
                "HTTP connections still open after the drain limit; leaving them."
            );
        }
        tracing::info!(listen = %local_addr, "HTTP transport stopped.");
        Ok(())
    }
}

/// One connection: handshake (when TLS is on), then HTTP until the client leaves or
/// shutdown asks it to finish. The permit is released when the task ends.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let Some(acceptor) = acceptor else {
        let info = ConnInfo {
            remote,
            peer: remote.to_string(),
        };
        return serve_http(TokioIo::new(stream), info, app, shutdown).await;
    };
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(peer = %remote, error = %e, "TLS handshake refused.");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %remote, "TLS handshake timed out.");
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| tls::peer_identity(cert));
    let info = ConnInfo {
        remote,
        peer: identity.unwrap_or_else(|| remote.to_string()),
    };
    tracing::debug!(peer = %info.peer, address = %remote, "TLS client authenticated.");
    serve_http(TokioIo::new(stream), info, app, shutdown).await;
}

/// Serves HTTP/1.1 or HTTP/2 on `io`, every request carrying `info`.
async fn serve_http<I>(io: TokioIo<I>, info: ConnInfo, app: Router, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = info.remote;
    let service = app.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            // Finish what is in flight, refuse further requests, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %remote, error = %e, "HTTP connection ended with an error.");
    }
}

/// Loads TLS (when configured) and enforces the loopback rule for plaintext.
pub(crate) fn prepare_tls(
    section: &HttpSection,
) -> Result<Option<Arc<rustls::ServerConfig>>, TransportError> {
    match &section.tls {
        Some(t) => tls::server_config(t).map(Some),
        None if section.listen.ip().is_loopback() => {
            tracing::warn!(
                listen = %section.listen,
                "HTTP transport runs without TLS: plaintext, no client authentication; \
                 acceptable on loopback only."
            );
            Ok(None)
        }
        None => Err(TransportError::Tls(
            "plaintext HTTP is allowed only on a loopback address; configure transport.http.tls \
             for mutual TLS"
                .to_owned(),
        )),
    }
}
