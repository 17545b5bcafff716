//! The `[server]` part of a policy: which guest ports may listen, where the
//! backend listens for them on the host, and the certificates it presents.
//! Private keys are read here, on the host, and never reach a guest.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self as pki_pem, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::{PolicyError, Source};
use crate::errno::{Errno, Failure};

/// Connections a listening socket holds (handshaking plus handshaken, not
/// yet accepted) when the program asked for no particular backlog, and the
/// most it may ask for. The device and the user-space library alike.
pub const DEFAULT_BACKLOG: usize = 128;
pub const MAX_BACKLOG: usize = 4096;

/// The backlog a listen() asking for `requested` gets: 0 (or less) is the
/// default, anything above [`MAX_BACKLOG`] is capped.
pub fn backlog(requested: i64) -> usize {
    match requested {
        n if n <= 0 => DEFAULT_BACKLOG,
        n => (n as u64).min(MAX_BACKLOG as u64) as usize,
    }
}

/// Guest listening sockets, from the `[server]` section. Empty (no guest
/// may listen) when the section is absent.
#[derive(Clone, Debug, Default)]
pub struct ServerPolicy {
    pub listen: Vec<ListenMapping>,
    /// In the operator's order: the first is presented to clients that send
    /// no server name (SNI) or one no identity carries.
    pub identities: Vec<Arc<Identity>>,
    /// What client certificates are verified against when a listening
    /// socket asks for them (TLS_REQUEST_PEER_AUTH); `None`: the policy's
    /// `[trust]` anchors.
    pub client_roots: Option<Arc<RootCertStore>>,
}

/// The `[client]` part: the certificate client sockets present when a
/// server asks for one (mutual TLS).
#[derive(Clone, Debug, Default)]
pub struct ClientPolicy {
    pub identity: Option<Arc<Identity>>,
}

/// One guest port that may listen, and the host address the backend
/// listens on for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenMapping {
    pub guest_port: u16,
    pub host: SocketAddr,
}

/// A certificate chain with its private key.
#[derive(Debug)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the leaf certificate (subjectAltName), lower case;
    /// `*.example.com` entries kept as written.
    pub names: Vec<String>,
    /// The leaf's subject, for logs and `vhost-tls ctl`.
    pub subject: String,
}

impl ServerPolicy {
    /// Where the backend listens for guest port `port`.
    pub fn mapping(&self, guest_port: u16) -> Option<&ListenMapping> {
        self.listen.iter().find(|m| m.guest_port == guest_port)
    }

    /// Where a socket binding `port` listens, or why it may not (EACCES
    /// and the reason for TLS_ERROR): only the ports the policy lists
    /// under `[[server.listen]]`, never port 0 (an ephemeral port could be
    /// no mapping's).
    pub fn mapping_for_bind(&self, port: u16) -> Result<&ListenMapping, Failure> {
        self.mapping(port).ok_or_else(|| {
            let reason = if port == 0 {
                "the policy maps fixed ports only: bind a port it lists under [[server.listen]]".to_owned()
            } else {
                format!("the policy lets no socket listen on port {port} ([[server.listen]])")
            };
            Failure::new(Errno::EACCES, reason)
        })
    }

    /// The identity for a client that asked for `server_name` (SNI): one
    /// whose certificate is valid for it, else the first.
    pub fn identity_for(&self, server_name: Option<&str>) -> Option<&Arc<Identity>> {
        server_name
            .and_then(|name| self.identities.iter().find(|identity| identity.is_valid_for(name)))
            .or_else(|| self.identities.first())
    }
}

impl Identity {
    /// Whether the certificate names `name` (exactly, or by a wildcard
    /// covering its first label), as a client verifying it would decide.
    pub fn is_valid_for(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.names.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(domain) => name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
            None => *pattern == name,
        })
    }

    /// Loads a chain and key from PEM files. Errors are plain text; the
    /// caller adds where in the policy they were named.
    pub fn load(chain_path: &Path, key_path: &Path) -> Result<Identity, String> {
        let chain_pem = std::fs::read(chain_path).map_err(|e| format!("cannot read {}: {e}", chain_path.display()))?;
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM in {}: {e}", chain_path.display()))?;
        if chain.is_empty() {
            return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", chain_path.display()));
        }
        let key_pem = std::fs::read(key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pki_pem::Error::NoItemsFound => format!("{} holds no PEM private key", key_path.display()),
            e => format!("bad PEM in {}: {e}", key_path.display()),
        })?;
        Identity::from_der(chain, key)
    }

    /// An identity from DER; fails when the key is unusable or is not the
    /// key of the chain's first certificate.
    pub fn from_der(
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<Identity, String> {
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => "the private key does not belong to the chain's first certificate".to_owned(),
            other => format!("unusable certificate or key: {other}"),
        })?;
        let leaf = key.end_entity_cert().map_err(|e| e.to_string())?.clone().into_owned();
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let names = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Identity { key: Arc::new(key), names, subject: parsed.subject().to_string() })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    #[serde(default)]
    pub(super) listen: Vec<Spanned<ListenEntry>>,
    #[serde(default)]
    pub(super) identities: Vec<Spanned<IdentityEntry>>,
    pub(super) client_ca_files: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientSection {
    pub(super) certificate_chain: Option<Spanned<String>>,
    pub(super) private_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenEntry {
    guest_port: Spanned<i64>,
    host: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentityEntry {
    certificate_chain: Spanned<String>,
    private_key: Spanned<String>,
}

pub(super) fn parse(section: &ServerSection, source: &Source<'_>) -> Result<ServerPolicy, PolicyError> {
    let mut listen: Vec<ListenMapping> = Vec::new();
    for entry in &section.listen {
        let fields = entry.get_ref();
        let guest_port = u16::try_from(*fields.guest_port.get_ref())
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| source.error_at(&fields.guest_port, format!("guest_port = {} is not a port (1-65535)", fields.guest_port.get_ref())))?;
        if listen.iter().any(|m| m.guest_port == guest_port) {
            return Err(source.error_at(&fields.guest_port, format!("guest_port {guest_port} is mapped twice")));
        }
        let host: SocketAddr = fields.host.get_ref().trim().parse().map_err(|_| {
            source.error_at(
                &fields.host,
                format!("host = \"{}\" is not an address and port (like \"127.0.0.1:8443\" or \"[::1]:8443\")", fields.host.get_ref()),
            )
        })?;
        if host.port() == 0 {
            return Err(source.error_at(&fields.host, "host needs a port: guests' clients must know where to connect"));
        }
        if listen.iter().any(|m| m.host == host) {
            return Err(source.error_at(&fields.host, format!("host {host} is used by two guest ports")));
        }
        listen.push(ListenMapping { guest_port, host });
    }
    let mut identities = Vec::new();
    for entry in &section.identities {
        let fields = entry.get_ref();
        let identity = Identity::load(&source.resolve(&fields.certificate_chain), &source.resolve(&fields.private_key))
            .map_err(|message| source.error_at(entry, format!("server identity: {message}")))?;
        identities.push(Arc::new(identity));
    }
    if identities.is_empty() {
        if let Some(first) = section.listen.first() {
            return Err(source.error_at(first, "guests may listen but [[server.identities]] names no certificate to present"));
        }
    }
    let client_roots = match &section.client_ca_files {
        None => None,
        Some(files) if files.get_ref().is_empty() => {
            return Err(source.error_at(files, "client_ca_files is empty: list a PEM bundle, or remove it to use [trust]"));
        }
        Some(files) => {
            let mut roots = RootCertStore::empty();
            for file in files.get_ref() {
                super::add_ca_file(&mut roots, file, source)?;
            }
            Some(Arc::new(roots))
        }
    };
    Ok(ServerPolicy { listen, identities, client_roots })
}

pub(super) fn parse_client(section: &ClientSection, source: &Source<'_>) -> Result<ClientPolicy, PolicyError> {
    let identity = match (&section.certificate_chain, &section.private_key) {
        (None, None) => None,
        (Some(chain), Some(key)) => Some(Arc::new(
            Identity::load(&source.resolve(chain), &source.resolve(key))
                .map_err(|message| source.error_at(chain, format!("client identity: {message}")))?,
        )),
        (Some(chain), None) => return Err(source.error_at(chain, "[client] has certificate_chain but no private_key")),
        (None, Some(key)) => return Err(source.error_at(key, "[client] has private_key but no certificate_chain")),
    };
    Ok(ClientPolicy { identity })
}
