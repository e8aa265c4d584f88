//! The HTTPS transport: axum + rustls with mutual TLS.
