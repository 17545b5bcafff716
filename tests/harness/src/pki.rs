//! Throwaway certificates for tests and the demo, made fresh with rcgen:
//! a CA, leaves it signs (valid, expired, for other names), a self-signed
//! leaf, and a second CA nobody trusts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A certificate authority that can sign leaves.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Identity {
    /// An identity read back from the PEM `write_to` wrote (for tools that
    /// run in another process).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, rustls_pki_types::pem::Error> {
        use rustls_pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())?;
        Ok(Identity {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            chain,
            key_der: key.secret_pkcs8_der().to_vec(),
        })
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `NAME.pem` (chain) and `NAME.key` into `dir` for tools like
    /// `openssl s_server`; returns their paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// How a leaf should be (in)valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
}

/// A rustls client (ring) that trusts only `ca` and speaks `versions`: the
/// plain-TLS side of tests and benchmarks.
pub fn client_config(ca: CertificateDer<'static>, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("a test CA certificate");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("ring supports the test versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(30);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` (DNS names or IP literals) signed by this CA.
    pub fn issue(&self, names: &[&str], validity: Validity) -> Identity {
        let key = KeyPair::generate().expect("generate leaf key");
        let params = leaf_params(names, validity);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }
}

/// A leaf that signs itself: no CA vouches for it.
pub fn self_signed(names: &[&str]) -> Identity {
    let key = KeyPair::generate().expect("generate key");
    let cert = leaf_params(names, Validity::Current).self_signed(&key).expect("self-sign");
    Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem(), chain: vec![cert.der().clone()], key_der: key.serialize_der() }
}

fn leaf_params(names: &[&str], validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
    let now = OffsetDateTime::now_utc();
    match validity {
        Validity::Current => {
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(7);
        }
        Validity::Expired => {
            params.not_before = now - Duration::days(30);
            params.not_after = now - Duration::days(1);
        }
    }
    params
}

/// The names a loopback test server answers to.
pub fn loopback_names() -> Vec<&'static str> {
    vec!["localhost", "127.0.0.1", "::1"]
}

/// Whether `name` is an IP literal (rcgen makes those IP SANs).
pub fn is_ip(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
}
