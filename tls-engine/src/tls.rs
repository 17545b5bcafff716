//! rustls configuration under a policy, and what a finished handshake
//! reports (TLS_CHOSEN_VERSION, TLS_CHOSEN_CIPHER, TLS_PEER_IDENTITY).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ClientConnection, CommonState, Error as TlsError, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use virtio_tls_spec as wire;

use crate::errno::{Errno, Failure};
use crate::options::SocketOptions;
use crate::policy::{Policy, ServerPolicy, TlsVersion};

/// How long a listening socket's sessions can be resumed unless it sets
/// TLS_SESSION_TTL.
pub const DEFAULT_SESSION_TTL_SECS: u32 = 2 * 3600;

/// What makes two client sockets' configurations differ: version range,
/// resumption, and TLS_CONTEXT (each context has its own session cache).
type ClientConfigKey = ((TlsVersion, TlsVersion), bool, u64);

/// Client configurations for one policy, built once per version range and
/// shared, so that sockets share rustls' session cache (resumption).
pub struct ClientContext {
    policy: Arc<Policy>,
    configs: Mutex<HashMap<ClientConfigKey, Arc<ClientConfig>>>,
}

impl ClientContext {
    pub fn new(policy: Arc<Policy>) -> ClientContext {
        ClientContext { policy, configs: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The configuration for a socket with these options. Sockets alike
    /// share one, and with it the session cache that makes resumption work.
    pub fn config(&self, options: &SocketOptions) -> Result<Arc<ClientConfig>, Failure> {
        let range = options.version_range(&self.policy);
        let own_identity = options.own_identity();
        let key = (range, options.session_reuse(), options.context());
        let mut configs = self.configs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if own_identity.is_none() {
            if let Some(config) = configs.get(&key) {
                return Ok(config.clone());
            }
        }
        let builder = ClientConfig::builder_with_provider(self.policy.crypto_provider())
            .with_protocol_versions(&protocol_versions(range))
            .map_err(|e| Failure::new(Errno::EINVAL, format!("policy leaves no usable TLS configuration: {e}")))?
            .with_root_certificates(self.policy.roots.clone());
        // A program's own identity (if the policy allows one) over the
        // operator's client certificate.
        let mut config = match own_identity.or(self.policy.client.identity.as_ref()) {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(identity.key.clone()))),
            None => builder.with_no_client_auth(),
        };
        if !options.session_reuse() {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let config = Arc::new(config);
        if own_identity.is_none() {
            configs.insert(key, config.clone());
        }
        Ok(config)
    }

    /// A client connection for `server_name` (the TLS_HOSTNAME or, without
    /// one, the address connected to), verified against the policy's roots,
    /// offering the socket's ALPN protocols.
    pub fn connect(&self, options: &SocketOptions, server_name: &str) -> Result<ClientConnection, Failure> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| Failure::new(Errno::EINVAL, format!("'{server_name}' is neither a host name nor an IP address")))?;
        ClientConnection::new_with_alpn(self.config(options)?, name, options.alpn().to_vec())
            .map_err(|e| Failure::new(Errno::EPROTO, format!("cannot start the TLS handshake: {e}")))
    }
}

/// Presents one certificate whenever a server asks for one.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What makes two listening sockets' configurations differ: version range,
/// required name, ALPN, client authentication, resumption and its lifetime.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ServerConfigKey {
    range: (TlsVersion, TlsVersion),
    required_name: Option<String>,
    alpn: Vec<Vec<u8>>,
    request_peer_auth: bool,
    session_ttl_secs: Option<u32>,
    context: u64,
}

/// Server configurations for one policy, shared by listening sockets alike
/// and by the connections they accept (and with them the session cache).
pub struct ServerContext {
    policy: Arc<Policy>,
    configs: Mutex<HashMap<ServerConfigKey, Arc<ServerConfig>>>,
}

impl ServerContext {
    pub fn new(policy: Arc<Policy>) -> ServerContext {
        ServerContext { policy, configs: Mutex::new(HashMap::new()) }
    }

    /// The configuration for a listening socket with these options: the
    /// policy's identities chosen by SNI (or the program's own, where the
    /// policy allows it), restricted to TLS_HOSTNAME when the socket set one.
    pub fn config(&self, options: &SocketOptions) -> Result<Arc<ServerConfig>, Failure> {
        let range = options.version_range(&self.policy);
        let own_identity = options.own_identity();
        let key = ServerConfigKey {
            range,
            required_name: options.hostname().map(str::to_owned),
            alpn: options.alpn().to_vec(),
            request_peer_auth: options.request_peer_auth(),
            session_ttl_secs: if options.session_reuse() { Some(options.session_ttl_secs().unwrap_or(DEFAULT_SESSION_TTL_SECS)) } else { None },
            context: options.context(),
        };
        let mut configs = self.configs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if own_identity.is_none() {
            if let Some(config) = configs.get(&key) {
                return Ok(config.clone());
            }
        }
        let resolver: Arc<dyn ResolvesServerCert> = match own_identity {
            Some(identity) => Arc::new(IdentityResolver {
                server: ServerPolicy { identities: vec![identity.clone()], ..ServerPolicy::default() },
                required_name: key.required_name.clone(),
            }),
            None if self.policy.server.identities.is_empty() => {
                return Err(Failure::new(Errno::EACCES, "the policy names no server identity ([[server.identities]])"));
            }
            None => Arc::new(IdentityResolver { server: self.policy.server.clone(), required_name: key.required_name.clone() }),
        };
        let builder = ServerConfig::builder_with_provider(self.policy.crypto_provider())
            .with_protocol_versions(&protocol_versions(range))
            .map_err(|e| Failure::new(Errno::EINVAL, format!("policy leaves no usable TLS configuration: {e}")))?;
        let builder = if key.request_peer_auth {
            let roots = self.policy.server.client_roots.clone().unwrap_or_else(|| self.policy.roots.clone());
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, self.policy.crypto_provider())
                .build()
                .map_err(|e| Failure::new(Errno::EINVAL, format!("cannot verify client certificates: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = key.alpn.clone();
        config.session_storage = match key.session_ttl_secs {
            Some(ttl) => Arc::new(ExpiringSessionCache::new(Duration::from_secs(u64::from(ttl)))),
            None => Arc::new(rustls::server::NoServerSessionStorage {}),
        };
        let config = Arc::new(config);
        if own_identity.is_none() {
            configs.insert(key, config.clone());
        }
        Ok(config)
    }

    /// A server connection for a client that just connected.
    pub fn accept(&self, options: &SocketOptions) -> Result<ServerConnection, Failure> {
        ServerConnection::new(self.config(options)?)
            .map_err(|e| Failure::new(Errno::EPROTO, format!("cannot start the TLS handshake: {e}")))
    }
}

/// Picks the operator's identity by the client's SNI.
#[derive(Debug)]
struct IdentityResolver {
    server: ServerPolicy,
    /// TLS_HOSTNAME of the listening socket: only clients asking for this
    /// name are served.
    required_name: Option<String>,
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello.server_name().map(|name| name.trim_end_matches('.').to_ascii_lowercase());
        if let Some(required) = &self.required_name {
            if asked.as_deref() != Some(required.as_str()) {
                // No certificate: rustls ends the handshake with an alert.
                tracing::debug!(?asked, %required, "client asked for another name than the listening socket serves");
                return None;
            }
        }
        self.server.identity_for(asked.as_deref()).map(|identity| identity.key.clone())
    }
}

/// rustls' in-memory session cache, with sessions forgotten after a
/// lifetime (TLS_SESSION_TTL): a session older than that is a full
/// handshake again.
#[derive(Debug)]
struct ExpiringSessionCache {
    inner: Arc<rustls::server::ServerSessionMemoryCache>,
    born: Mutex<HashMap<Vec<u8>, Instant>>,
    ttl: Duration,
}

/// Sessions a listening socket remembers.
const SESSION_CACHE_SIZE: usize = 1024;

impl ExpiringSessionCache {
    fn new(ttl: Duration) -> ExpiringSessionCache {
        ExpiringSessionCache { inner: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE), born: Mutex::default(), ttl }
    }

    fn fresh(&self, key: &[u8]) -> bool {
        let born = self.born.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        born.get(key).is_some_and(|at| at.elapsed() < self.ttl)
    }
}

impl rustls::server::StoresServerSessions for ExpiringSessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut born = self.born.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if born.len() >= 4 * SESSION_CACHE_SIZE {
            // The inner cache evicts on its own; keep the birth dates near it.
            born.retain(|_, at| at.elapsed() < self.ttl);
        }
        born.insert(key.clone(), Instant::now());
        drop(born);
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.fresh(key) { self.inner.get(key) } else { None }
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.fresh(key) { self.inner.take(key) } else { None }
    }

    fn can_cache(&self) -> bool {
        !self.ttl.is_zero()
    }
}

fn protocol_versions(range: (TlsVersion, TlsVersion)) -> Vec<&'static rustls::SupportedProtocolVersion> {
    [TlsVersion::Tls12, TlsVersion::Tls13].into_iter().filter(|v| (range.0..=range.1).contains(v)).map(TlsVersion::rustls).collect()
}

/// The errno and a readable TLS_ERROR reason for a handshake or record
/// failure. Every TLS failure is EPROTO, as SSA's tests expect.
pub fn describe_error(error: &TlsError, server_name: &str, policy_range: (TlsVersion, TlsVersion)) -> Failure {
    let reason = match error {
        TlsError::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the peer's certificate has expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the peer's certificate is not valid yet".to_owned()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    format!("the peer's certificate is not valid for '{server_name}'")
                }
                CertificateError::UnknownIssuer => {
                    "the peer's certificate is not issued by a trusted authority (self-signed or unknown root)".to_owned()
                }
                CertificateError::Revoked => "the peer's certificate has been revoked".to_owned(),
                CertificateError::BadSignature => "the peer's certificate has a bad signature".to_owned(),
                other => format!("the peer's certificate is invalid ({other:?})"),
            };
            format!("certificate verification failed: {why}")
        }
        TlsError::PeerIncompatible(_) | TlsError::AlertReceived(rustls::AlertDescription::ProtocolVersion) => {
            format!(
                "handshake failed: the peer supports no TLS version the policy allows ({}..{}) [{error}]",
                policy_range.0, policy_range.1
            )
        }
        TlsError::AlertReceived(alert) => format!("handshake failed: the peer sent alert {alert:?}"),
        TlsError::PeerMisbehaved(_) => format!("the peer violated the TLS protocol: {error}"),
        other => format!("TLS failed: {other}"),
    };
    Failure::new(Errno::EPROTO, reason)
}

/// What an established connection negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub version: Option<TlsVersion>,
    /// IANA name of the cipher suite, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: Option<String>,
    /// The peer certificate's subject, e.g. `CN=example.com`.
    pub peer_identity: Option<String>,
    /// The peer's chain as PEM, leaf first (TLS_PEER_CERTIFICATE_CHAIN).
    pub peer_chain_pem: Option<String>,
    /// The ALPN protocol agreed on, empty when none.
    pub alpn: Vec<u8>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

impl ConnectionInfo {
    pub fn of(conn: &CommonState) -> ConnectionInfo {
        let version = conn.protocol_version().and_then(|v| match v {
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        });
        let cipher = conn.negotiated_cipher_suite().map(|s| iana_suite_name(s.suite()));
        let chain = conn.peer_certificates().unwrap_or_default();
        let peer_identity = chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf.as_ref()).ok())
            .map(|(_, cert)| cert.subject().to_string());
        let peer_chain_pem = (!chain.is_empty()).then(|| {
            chain.iter().map(|cert| pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec()))).collect::<String>()
        });
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec).unwrap_or_default();
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        ConnectionInfo { version, cipher, peer_identity, peer_chain_pem, alpn, resumed }
    }

    /// The value of a read-only option, `None` when it is not one of these
    /// or the handshake has not produced it.
    pub fn get(&self, optname: u32) -> Option<Vec<u8>> {
        self.version?;
        match optname {
            wire::TLS_CHOSEN_VERSION => self.version.map(|v| v.wire_value().to_le_bytes().to_vec()),
            wire::TLS_CHOSEN_CIPHER => self.cipher.clone().map(String::into_bytes),
            // Empty when the peer presented no certificate (a client that
            // was not asked for one).
            wire::TLS_PEER_IDENTITY => Some(self.peer_identity.clone().unwrap_or_default().into_bytes()),
            wire::TLS_PEER_CERTIFICATE_CHAIN => Some(self.peer_chain_pem.clone().unwrap_or_default().into_bytes()),
            wire::TLS_ALPN => Some(self.alpn.clone()),
            wire::TLS_RESUMED_SESSION => Some(u32::from(self.resumed).to_le_bytes().to_vec()),
            _ => None,
        }
    }
}

/// rustls spells TLS 1.3 suites `TLS13_*`; applications and OpenSSL's
/// `-ciphersuites` use the IANA names.
pub fn iana_suite_name(suite: rustls::CipherSuite) -> String {
    let name = suite.as_str().map(str::to_owned).unwrap_or_else(|| format!("{suite:?}"));
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_are_iana() {
        assert_eq!(iana_suite_name(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384), "TLS_AES_256_GCM_SHA384");
        assert_eq!(
            iana_suite_name(rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn certificate_failures_are_eproto_with_reasons() {
        let range = (TlsVersion::Tls12, TlsVersion::Tls13);
        let expired = describe_error(&TlsError::InvalidCertificate(CertificateError::Expired), "a.test", range);
        assert_eq!(expired.errno, Errno::EPROTO);
        assert!(expired.reason.contains("expired"), "{}", expired.reason);
        let name = describe_error(&TlsError::InvalidCertificate(CertificateError::NotValidForName), "a.test", range);
        assert!(name.reason.contains("not valid for 'a.test'"), "{}", name.reason);
        let issuer = describe_error(&TlsError::InvalidCertificate(CertificateError::UnknownIssuer), "a.test", range);
        assert!(issuer.reason.contains("trusted authority"), "{}", issuer.reason);
        let version = describe_error(&TlsError::AlertReceived(rustls::AlertDescription::ProtocolVersion), "a", range);
        assert!(version.reason.contains("no TLS version"), "{}", version.reason);
    }

    #[test]
    fn configs_are_shared_per_version_range() {
        let context = ClientContext::new(Arc::new(Policy::builtin_default()));
        let options = SocketOptions::default();
        let a = context.config(&options).unwrap();
        let b = context.config(&options).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(context.connect(&options, "not a name!").is_err());
        assert!(context.connect(&options, "127.0.0.1").is_ok());
    }
}
