//! rustls configuration under a policy, and what a finished handshake
//! reports (TLS_CHOSEN_VERSION, TLS_CHOSEN_CIPHER, TLS_PEER_IDENTITY).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ClientConnection, CommonState, Error as TlsError, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use virtio_tls_spec as wire;

use crate::errno::{Errno, Failure};
use crate::limits::{EvictIdle, MemoryBudget};
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
    budget: Arc<MemoryBudget>,
    configs: Arc<Mutex<ConfigCache<ClientConfigKey, ClientConfig>>>,
}

impl ClientContext {
    /// A context with a memory budget of its own (the library's, per
    /// process), by the policy's `vm_buffer_mib`.
    pub fn new(policy: Arc<Policy>) -> ClientContext {
        let budget = Arc::new(MemoryBudget::new(&policy.limits));
        ClientContext::with_budget(policy, budget)
    }

    /// A context whose cached configurations are charged to `budget` (the
    /// VM's, shared with its socket buffers and its [`ServerContext`]).
    pub fn with_budget(policy: Arc<Policy>, budget: Arc<MemoryBudget>) -> ClientContext {
        let configs = ConfigCache::shared(&policy, budget.clone());
        ClientContext { policy, budget, configs }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The budget the cached configurations are charged to.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
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
                return Ok(config);
            }
        }
        // A program's own identity makes a configuration for that socket
        // alone, never cached: it goes with the socket (max_sockets).
        let charge = match own_identity {
            None => Some(configs.reserve(CONFIG_CHARGE_BYTES)?),
            Some(_) => None,
        };
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
        if let Some(charge) = charge {
            configs.insert(key, config.clone(), charge);
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

impl ServerConfigKey {
    /// What the key's guest-chosen values cost, held twice: in the key and
    /// in the configuration.
    fn heap_bytes(&self) -> u64 {
        let alpn: usize = self.alpn.iter().map(|p| p.len() + std::mem::size_of::<Vec<u8>>()).sum();
        2 * (alpn + self.required_name.as_ref().map_or(0, String::len)) as u64
    }
}

/// Server configurations for one policy, shared by listening sockets alike
/// and by the connections they accept (and with them the session cache).
pub struct ServerContext {
    policy: Arc<Policy>,
    configs: Arc<Mutex<ConfigCache<ServerConfigKey, ServerConfig>>>,
}

impl ServerContext {
    /// A context with a memory budget of its own, by the policy's
    /// `vm_buffer_mib`.
    pub fn new(policy: Arc<Policy>) -> ServerContext {
        let budget = Arc::new(MemoryBudget::new(&policy.limits));
        ServerContext::with_budget(policy, budget)
    }

    /// A context whose cached configurations are charged to `budget`.
    pub fn with_budget(policy: Arc<Policy>, budget: Arc<MemoryBudget>) -> ServerContext {
        let configs = ConfigCache::shared(&policy, budget);
        ServerContext { policy, configs }
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
                return Ok(config);
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
        let charge = match own_identity {
            None => Some(configs.reserve(CONFIG_CHARGE_BYTES + key.heap_bytes())?),
            Some(_) => None,
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
        if let Some(charge) = charge {
            configs.insert(key, config.clone(), charge);
        }
        Ok(config)
    }

    /// A server connection for a client that just connected.
    pub fn accept(&self, options: &SocketOptions) -> Result<ServerConnection, Failure> {
        ServerConnection::new(self.config(options)?)
            .map_err(|e| Failure::new(Errno::EPROTO, format!("cannot start the TLS handshake: {e}")))
    }
}

/// What one cached configuration is charged besides its guest-chosen key
/// values: rustls' configuration with its provider, verifier and resolver,
/// and the session cache's first allocations.
const CONFIG_CHARGE_BYTES: u64 = 16 * 1024;

/// Configurations no socket uses that a cache keeps, the least recently
/// used going first: a program that reconnects finds its session cache
/// (resumption) without the guest being able to pile up unused ones.
const MAX_IDLE_CONFIGS: usize = 32;

/// Configurations by the options they were built for, bounded in number
/// (the policy's `max_sockets`: every configuration in use has a socket)
/// and in bytes (charged to the [`MemoryBudget`]). Sockets hold their
/// configuration (rustls' connections and listening sockets keep the
/// `Arc`), so an entry only the cache holds is in use by no socket and can
/// go.
struct ConfigCache<K, C> {
    entries: HashMap<K, CachedConfig<C>>,
    budget: Arc<MemoryBudget>,
    max_entries: usize,
    vm_buffer_mib: u32,
    /// Counts lookups, for least-recently-used eviction.
    clock: u64,
}

struct CachedConfig<C> {
    config: Arc<C>,
    _charge: Charge,
    last_used: u64,
}

impl<K: Eq + Hash + Clone + Send + 'static, C: Send + Sync + 'static> EvictIdle for Mutex<ConfigCache<K, C>> {
    fn try_evict_idle(&self) -> bool {
        // Never waits: the caller holds its own cache's lock.
        match self.try_lock() {
            Ok(mut cache) => cache.evict_one_idle(),
            Err(_) => false,
        }
    }
}

/// Bytes charged to a budget, released when dropped.
struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl<K: Eq + Hash + Clone + Send + 'static, C: Send + Sync + 'static> ConfigCache<K, C> {
    /// A cache charging `budget`, which may ask it to give up unused
    /// configurations when another cache (the VM's server or client
    /// configurations, or a context before a reload) needs room.
    fn shared(policy: &Policy, budget: Arc<MemoryBudget>) -> Arc<Mutex<ConfigCache<K, C>>> {
        let cache = Arc::new(Mutex::new(ConfigCache {
            entries: HashMap::new(),
            budget: budget.clone(),
            max_entries: policy.limits.max_sockets as usize,
            vm_buffer_mib: policy.limits.vm_buffer_mib,
            clock: 0,
        }));
        let weak: Weak<dyn EvictIdle> = Arc::downgrade(&cache) as Weak<Mutex<ConfigCache<K, C>>>;
        budget.register(weak);
        cache
    }

    fn get(&mut self, key: &K) -> Option<Arc<C>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = self.clock;
        Some(entry.config.clone())
    }

    /// Makes room for a configuration of `bytes` and charges them, evicting
    /// unused configurations as needed; ENOBUFS when the configurations in
    /// use leave no room.
    fn reserve(&mut self, bytes: u64) -> Result<Charge, Failure> {
        while self.idle_count() >= MAX_IDLE_CONFIGS && self.evict_one_idle() {}
        loop {
            if self.entries.len() < self.max_entries && self.budget.try_charge(bytes) {
                return Ok(Charge { budget: self.budget.clone(), bytes });
            }
            // The other caches on the budget (this one is locked, so it
            // is skipped there).
            if !self.evict_one_idle() && !self.budget.evict_idle_elsewhere() {
                let in_use = self.entries.len();
                let charged_kib = self.budget.configs_bytes() / 1024;
                let limit = if in_use >= self.max_entries {
                    format!("max_sockets = {}", self.max_entries)
                } else {
                    format!("vm_buffer_mib = {} is reserved", self.vm_buffer_mib)
                };
                return Err(Failure::new(
                    Errno::ENOBUFS,
                    format!(
                        "too many distinct TLS configurations in use ({in_use}, {charged_kib} KiB; sockets with different \
                         TLS_CONTEXT, TLS_ALPN, TLS_HOSTNAME, TLS_SESSION_TTL or versions need one each): {limit}"
                    ),
                ));
            }
        }
    }

    fn insert(&mut self, key: K, config: Arc<C>, charge: Charge) {
        self.clock += 1;
        self.entries.insert(key, CachedConfig { config, _charge: charge, last_used: self.clock });
    }

    fn idle_count(&self) -> usize {
        self.entries.values().filter(|entry| Arc::strong_count(&entry.config) == 1).count()
    }

    /// Drops the least recently used configuration no socket holds.
    fn evict_one_idle(&mut self) -> bool {
        let idle = self.entries.iter().filter(|(_, entry)| Arc::strong_count(&entry.config) == 1);
        let Some(key) = idle.min_by_key(|(_, entry)| entry.last_used).map(|(key, _)| key.clone()) else {
            return false;
        };
        self.entries.remove(&key);
        true
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

/// A listening socket's session cache: at most SESSION_CACHE_SIZE
/// sessions, the oldest going first, each forgotten after a lifetime
/// (TLS_SESSION_TTL): a session older than that is a full handshake again.
/// It grows with the sessions stored rather than being allocated in full
/// up front (rustls' `ServerSessionMemoryCache` is), since a guest can
/// make many listening configurations that never see a client.
#[derive(Debug)]
struct ExpiringSessionCache {
    sessions: Mutex<Sessions>,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Sessions {
    by_key: HashMap<Vec<u8>, (Vec<u8>, Instant)>,
    /// Keys in the order stored, oldest first; may hold keys taken since.
    order: VecDeque<Vec<u8>>,
}

/// Sessions a listening socket remembers.
const SESSION_CACHE_SIZE: usize = 1024;

impl ExpiringSessionCache {
    fn new(ttl: Duration) -> ExpiringSessionCache {
        ExpiringSessionCache { sessions: Mutex::default(), ttl }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fresh(&self, stored: &(Vec<u8>, Instant)) -> bool {
        stored.1.elapsed() < self.ttl
    }
}

impl rustls::server::StoresServerSessions for ExpiringSessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut sessions = self.sessions();
        let Sessions { by_key, order } = &mut *sessions;
        while by_key.len() >= SESSION_CACHE_SIZE {
            let Some(oldest) = order.pop_front() else { break };
            by_key.remove(&oldest);
        }
        if order.len() >= 2 * SESSION_CACHE_SIZE {
            // Keys taken (resumed) since they were stored.
            order.retain(|key| by_key.contains_key(key));
        }
        if by_key.insert(key.clone(), (value, Instant::now())).is_none() {
            order.push_back(key);
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().by_key.get(key).filter(|stored| self.fresh(stored)).map(|stored| stored.0.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().by_key.remove(key).filter(|stored| self.fresh(stored)).map(|stored| stored.0)
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
    /// SHA-256 of the peer's leaf certificate (DER), lowercase hex; `None`
    /// when the peer presented none (a client not asked for one).
    pub peer_certificate_sha256: Option<String>,
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
        let peer_certificate_sha256 = chain.first().map(|leaf| {
            use sha2::Digest;
            sha2::Sha256::digest(leaf.as_ref()).iter().map(|byte| format!("{byte:02x}")).collect()
        });
        ConnectionInfo { version, cipher, peer_identity, peer_chain_pem, alpn, resumed, peer_certificate_sha256 }
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

    fn with_context(context: u64) -> SocketOptions {
        let mut options = SocketOptions::default();
        let policy = Policy::builtin_default();
        options.set(&policy, crate::options::Phase::Unconnected, wire::TLS_CONTEXT, &context.to_le_bytes()).unwrap();
        options
    }

    #[test]
    fn unused_configs_are_evicted_and_used_ones_bounded() {
        let mut policy = Policy::builtin_default();
        policy.limits.max_sockets = 100;
        let context = ClientContext::new(Arc::new(policy));
        // Ever new contexts, none kept: the cache keeps a few idle ones only.
        for i in 0..1000 {
            context.config(&with_context(i)).unwrap();
        }
        let cached = context.configs.lock().unwrap().entries.len();
        assert!(cached <= MAX_IDLE_CONFIGS + 1, "{cached} configurations cached");
        assert_eq!(context.budget().configs_bytes(), cached as u64 * CONFIG_CHARGE_BYTES);
        // Configurations in use stay, up to max_sockets; then ENOBUFS.
        let held: Vec<_> = (0..100).map(|i| context.config(&with_context(10_000 + i)).unwrap()).collect();
        let refused = context.config(&with_context(20_000)).unwrap_err();
        assert_eq!(refused.errno, Errno::ENOBUFS);
        assert!(refused.reason.contains("TLS configurations in use (100") && refused.reason.contains("max_sockets = 100"), "{}", refused.reason);
        // One in use is still shared.
        assert!(Arc::ptr_eq(&context.config(&with_context(10_000)).unwrap(), &held[0]));
        drop(held);
        context.config(&with_context(20_000)).unwrap();
    }

    #[test]
    fn configs_are_charged_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["www.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("www.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("www.key"), key.serialize_pem()).unwrap();
        let text = "[limits]\nvm_buffer_mib = 1\n[[server.identities]]\ncertificate_chain = \"www.pem\"\nprivate_key = \"www.key\"\n";
        let policy = Arc::new(Policy::from_toml_str(text, "test", dir.path()).unwrap());
        let budget = Arc::new(MemoryBudget::new(&policy.limits));
        let client = ClientContext::with_budget(policy.clone(), budget.clone());
        let server = ServerContext::with_budget(policy, budget.clone());
        // Sockets reserve most of it.
        assert!(budget.socket_fits(2, 256 * 1024));
        let held: Vec<_> = (0..16).map(|i| client.config(&with_context(i)).unwrap()).collect();
        assert_eq!(budget.configs_bytes(), 16 * CONFIG_CHARGE_BYTES);
        let refused = client.config(&with_context(99)).unwrap_err();
        assert_eq!(refused.errno, Errno::ENOBUFS);
        assert!(refused.reason.contains("vm_buffer_mib = 1 is reserved"), "{}", refused.reason);
        assert!(!budget.socket_fits(3, 256 * 1024), "the configurations took the fourth socket's room");
        // The server context shares the budget.
        let refused = server.config(&with_context(1)).unwrap_err();
        assert_eq!(refused.errno, Errno::ENOBUFS, "{}", refused.reason);
        drop(held);
        client.config(&with_context(99)).unwrap();
        let listening = server.config(&with_context(1)).unwrap();
        assert!(budget.configs_bytes() > CONFIG_CHARGE_BYTES, "the server's configuration is charged too");
        drop(listening);
        assert!(budget.configs_bytes() <= (MAX_IDLE_CONFIGS as u64) * CONFIG_CHARGE_BYTES);
    }

    #[test]
    fn session_cache_is_bounded_and_expires() {
        use rustls::server::StoresServerSessions;
        let cache = ExpiringSessionCache::new(Duration::from_secs(60));
        for i in 0..3 * SESSION_CACHE_SIZE as u32 {
            assert!(cache.put(i.to_le_bytes().to_vec(), vec![1; 10]));
            if i % 2 == 0 {
                cache.take(&i.to_le_bytes());
            }
        }
        let sessions = cache.sessions();
        assert!(sessions.by_key.len() <= SESSION_CACHE_SIZE && sessions.order.len() <= 2 * SESSION_CACHE_SIZE);
        drop(sessions);
        let last = (3 * SESSION_CACHE_SIZE as u32 - 1).to_le_bytes();
        assert_eq!(cache.get(&last), Some(vec![1; 10]));
        assert_eq!(cache.get(&0u32.to_le_bytes()), None);
        let expired = ExpiringSessionCache::new(Duration::from_nanos(1));
        expired.put(b"k".to_vec(), b"v".to_vec());
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(expired.get(b"k"), None);
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
