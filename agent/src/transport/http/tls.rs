//! TLS material for the HTTP transport: the mutual-TLS server configuration, client
//! configurations for the operator client and the control-plane reporter, and the identity of
//! an authenticated peer.
//!
//! Everything is built on the ring provider explicitly, so no process-wide default provider is
//! needed and an accidentally enabled second provider cannot change what is negotiated.
//! Only the configured CA is ever trusted: neither side loads system roots.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSection;
use crate::transport::TransportError;

/// ALPN protocols offered and accepted: HTTP/2 first, HTTP/1.1 as the fallback.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Longest peer identity kept; longer names are cut (they only label logs).
const MAX_IDENTITY_CHARS: usize = 256;

/// The ring crypto provider every configuration here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path)
        .map_err(|e| TransportError::Tls(format!("cannot read {what} {}: {e}", path.display())))
}

/// Loads every certificate of a PEM file; a file without any is an error naming it.
pub(crate) fn load_certs(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Tls(format!("{what} {}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{what} {}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TransportError::Tls(format!(
            "private key {}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// A root store holding exactly the certificates of `path`.
fn roots(path: &Path, what: &str) -> Result<RootCertStore, TransportError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        store.add(cert).map_err(|e| {
            TransportError::Tls(format!(
                "{what} {}: unusable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

/// The server side of mutual TLS: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, and a client
/// certificate chained to `client_ca` required on every connection.
pub(crate) fn server_config(tls: &TlsSection) -> Result<Arc<ServerConfig>, TransportError> {
    let chain = load_certs(&tls.cert, "certificate chain")?;
    let key = load_key(&tls.key)?;
    let client_roots = roots(&tls.client_ca, "client CA bundle")?;
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), Arc::clone(&provider))
            .build()
            .map_err(|e| {
                TransportError::Tls(format!("client CA bundle {}: {e}", tls.client_ca.display()))
            })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TransportError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            TransportError::Tls(format!(
                "certificate chain {} with key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting only `ca` (none: no server is trusted, which is fine for
/// plain `http://` URLs that never use it), presenting `identity` (certificate chain and key
/// files) when given.
pub(crate) fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TransportError> {
    let store = match ca {
        Some(path) => roots(path, "CA bundle")?,
        None => RootCertStore::empty(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TransportError::Tls(format!("protocol versions: {e}")))?
        .with_root_certificates(store);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert, "client certificate")?, load_key(key)?)
            .map_err(|e| {
                TransportError::Tls(format!(
                    "client certificate {} with key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

// DER tags used below.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The name of an authenticated client for logs and [`crate::rpc::RequestContext::peer`]:
/// the certificate's subject common name, else its first DNS, URI, e-mail or IP subject
/// alternative name. Control characters are replaced so a name cannot forge log lines.
///
/// The certificate has been verified against the client CA before this runs; the walk is
/// still bounds-checked throughout and gives `None` for anything unexpected.
pub(crate) fn peer_identity(cert: &[u8]) -> Option<String> {
    let name = subject_name(cert)?;
    let clean: String = name
        .chars()
        .take(MAX_IDENTITY_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// Splits one DER element off `input`: (tag, contents, rest). Only low tag numbers and
/// definite lengths occur in the certificate fields read here.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Contents of the element at the front of `input` if it has tag `want`.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = tlv(input)?;
    (tag == want).then_some((contents, rest))
}

fn subject_name(cert: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((_, after)) = expect(rest, VERSION) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (subject, after_subject) = expect(rest, SEQUENCE)?;
    if let Some(cn) = common_name(subject) {
        return Some(cn);
    }
    // subjectPublicKeyInfo, then the optional unique ids and the extensions.
    let mut rest = tlv(after_subject)?.2;
    while let Some((tag, contents, after)) = tlv(rest) {
        if tag == EXTENSIONS {
            return first_alt_name(contents);
        }
        rest = after;
    }
    None
}

/// The first commonName of a Name (a sequence of sets of type-and-value sequences).
fn common_name(name: &[u8]) -> Option<String> {
    let mut rdns = name;
    while let Some((rdn, after)) = expect(rdns, SET) {
        let mut avas = rdn;
        while let Some((ava, next)) = expect(avas, SEQUENCE) {
            if let Some((oid, value)) = expect(ava, OID)
                && oid == OID_COMMON_NAME
            {
                return directory_string(value);
            }
            avas = next;
        }
        rdns = after;
    }
    None
}

/// A DirectoryString as text: UTF8String, PrintableString, IA5String, TeletexString
/// (treated as Latin-1) or BMPString (UTF-16BE).
fn directory_string(value: &[u8]) -> Option<String> {
    let (tag, bytes, _) = tlv(value)?;
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        0x14 => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        0x1e => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// The first usable GeneralName of the subjectAltName extension in `[3] Extensions`.
fn first_alt_name(explicit: &[u8]) -> Option<String> {
    let (mut exts, _) = expect(explicit, SEQUENCE)?;
    while let Some((ext, after)) = expect(exts, SEQUENCE) {
        let (oid, rest) = expect(ext, OID)?;
        if oid == OID_SUBJECT_ALT_NAME {
            // An optional `critical` BOOLEAN precedes the OCTET STRING.
            let mut rest = rest;
            let value = loop {
                let (tag, contents, after) = tlv(rest)?;
                if tag == OCTET_STRING {
                    break contents;
                }
                rest = after;
            };
            let (mut names, _) = expect(value, SEQUENCE)?;
            while let Some((tag, bytes, after)) = tlv(names) {
                match tag {
                    // rfc822Name, dNSName, uniformResourceIdentifier: IA5String.
                    0x81 | 0x82 | 0x86 => return String::from_utf8(bytes.to_vec()).ok(),
                    0x87 => return ip_address(bytes),
                    _ => names = after,
                }
            }
            return None;
        }
        exts = after;
    }
    None
}

fn ip_address(bytes: &[u8]) -> Option<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(std::net::Ipv4Addr::from(v4).to_string());
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| std::net::Ipv6Addr::from(v6).to_string())
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Example");
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_first() {
        let der = cert(
            Some("trove-taskmanager"),
            vec![SanType::DnsName("x.example".try_into().unwrap())],
        );
        assert_eq!(peer_identity(&der).as_deref(), Some("trove-taskmanager"));
    }

    #[test]
    fn alt_name_without_common_name() {
        let der = cert(
            None,
            vec![SanType::DnsName("ops.example".try_into().unwrap())],
        );
        assert_eq!(peer_identity(&der).as_deref(), Some("ops.example"));
        let der = cert(None, vec![SanType::IpAddress("10.0.0.7".parse().unwrap())]);
        assert_eq!(peer_identity(&der).as_deref(), Some("10.0.0.7"));
        assert_eq!(peer_identity(&cert(None, vec![])), None);
    }

    #[test]
    fn control_characters_are_replaced() {
        let der = cert(Some("evil\nINFO forged"), vec![]);
        assert_eq!(peer_identity(&der).as_deref(), Some("evil?INFO forged"));
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(peer_identity(b""), None);
        assert_eq!(peer_identity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let der = cert(Some("cut"), vec![]);
        for n in 0..der.len() {
            // Every truncation fails cleanly or still finds the name.
            let _ = peer_identity(&der[..n]);
        }
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = TlsSection {
            cert: missing.clone(),
            key: junk.clone(),
            client_ca: junk.clone(),
        };
        let e = server_config(&tls).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("certificate chain"),
            "{e}"
        );
        let tls = TlsSection {
            cert: junk.clone(),
            key: junk.clone(),
            client_ca: junk.clone(),
        };
        let e = server_config(&tls).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let key = KeyPair::generate().unwrap();
        let good = dir.path().join("cert.pem");
        std::fs::write(
            &good,
            CertificateParams::new(vec!["a".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .pem(),
        )
        .unwrap();
        let tls = TlsSection {
            cert: good.clone(),
            key: junk.clone(),
            client_ca: good.clone(),
        };
        let e = server_config(&tls).unwrap_err().to_string();
        assert!(e.contains("private key") && e.contains("junk.pem"), "{e}");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let tls = TlsSection {
            cert: good.clone(),
            key: key_file,
            client_ca: junk,
        };
        let e = server_config(&tls).unwrap_err().to_string();
        assert!(
            e.contains("client CA bundle") && e.contains("junk.pem"),
            "{e}"
        );
    }
}
