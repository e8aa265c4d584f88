//! The HTTPS transport: axum routes behind rustls with mutual TLS, plus the matching client
//! ([`HttpClient`]) and the HTTP control-plane reporter ([`HttpControlPlane`]).
//!
//! Invariants: without `tls` the transport serves plaintext on a loopback address only, and
//! with `tls` every connection must present a client certificate chained to `client_ca`
//! (health and metrics included). Every failure, down to an unknown route, answers with
//! `{"error": {"type", "message"}}`. The routes are described by `agent/openapi.json`,
//! served at `GET /v1/openapi.json` and checked against the router by a test.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Transport, TransportError};
use crate::config::HttpSection;
use crate::rpc::Dispatcher;

mod client;
mod control_plane;
mod routes;
mod server;
mod tls;

pub use client::{CallOutcome, ClientTls, HttpClient};
pub use control_plane::HttpControlPlane;
pub use server::BoundHttp;

/// The inbound HTTP(S) transport, configured and checked but not yet listening.
#[derive(Debug)]
pub struct HttpTransport {
    section: HttpSection,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpTransport {
    /// Checks `section` and loads its TLS material; binds nothing yet.
    ///
    /// # Errors
    /// [`TransportError::Tls`] for unreadable or invalid certificate, key or CA files (the
    /// message names the file), and for plaintext on an address other than loopback.
    pub fn new(section: &HttpSection) -> Result<Self, TransportError> {
        let tls = server::prepare_tls(section)?;
        Ok(Self {
            section: section.clone(),
            tls,
        })
    }

    /// Checks `section`, loads its TLS material and binds its listen address, so the caller
    /// learns the real port (for `listen` port 0) before serving.
    ///
    /// # Errors
    /// As [`HttpTransport::new`], and [`TransportError::Bind`] when the address is taken.
    pub fn bind(section: &HttpSection) -> Result<BoundHttp, TransportError> {
        Self::new(section)?.listen()
    }

    /// Binds the configured listen address.
    ///
    /// # Errors
    /// [`TransportError::Bind`] when the address cannot be bound.
    pub fn listen(&self) -> Result<BoundHttp, TransportError> {
        BoundHttp::bind(&self.section, self.tls.clone())
    }
}

#[async_trait]
impl Transport for HttpTransport {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn serve(
        &self,
        dispatcher: Arc<Dispatcher>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        self.listen()?.serve(dispatcher, shutdown).await
    }
}
