//! A throwaway PKI for the mutual-TLS tests, generated with rcgen: a CA, a server
//! certificate for `127.0.0.1`/`localhost`, a client certificate from the same CA, and a
//! client certificate from a second, rogue CA that the agent must refuse.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Which client identity to present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The client certificate signed by the agent's client CA.
    Client,
    /// A client certificate with the same subject, signed by another CA.
    Rogue,
    /// No client certificate at all.
    None,
}

/// Paths (and PEM texts) of the generated certificates and keys.
#[derive(Debug, Clone)]
pub struct CertSet {
    /// CA certificate (trust anchor for both sides).
    pub ca_cert: PathBuf,
    /// Server certificate chain.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Client certificate signed by the rogue CA.
    pub rogue_cert: PathBuf,
    /// Its key.
    pub rogue_key: PathBuf,
    /// The CA certificate as PEM.
    pub ca_pem: String,
    /// Client certificate + key as one PEM (for `reqwest::Identity::from_pem`).
    pub client_identity_pem: String,
    /// Rogue client certificate + key as one PEM.
    pub rogue_identity_pem: String,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "guest-agent e2e");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-sign ca");
    let pem = cert.pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

fn leaf(ca: &Ca, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    crate::set_mode(path, mode);
}

impl CertSet {
    /// Generates the whole set into `dir` (created).
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("create cert dir");
        crate::set_mode(dir, 0o700);
        let good = ca("guest-agent e2e CA");
        let rogue = ca("guest-agent e2e rogue CA");
        let (server_pem, server_key_pem) = leaf(
            &good,
            "guest-agent",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) = leaf(
            &good,
            "trove-control-plane",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (rogue_pem, rogue_key_pem) = leaf(
            &rogue,
            "trove-control-plane",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let set = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            rogue_cert: dir.join("rogue-client.pem"),
            rogue_key: dir.join("rogue-client.key"),
            ca_pem: good.pem.clone(),
            client_identity_pem: format!("{client_pem}{client_key_pem}"),
            rogue_identity_pem: format!("{rogue_pem}{rogue_key_pem}"),
        };
        write(&set.ca_cert, &good.pem, 0o644);
        write(&dir.join("rogue-ca.pem"), &rogue.pem, 0o644);
        write(&set.server_cert, &server_pem, 0o644);
        write(&set.server_key, &server_key_pem, 0o600);
        write(&set.client_cert, &client_pem, 0o644);
        write(&set.client_key, &client_key_pem, 0o600);
        write(&set.rogue_cert, &rogue_pem, 0o644);
        write(&set.rogue_key, &rogue_key_pem, 0o600);
        set
    }
}
