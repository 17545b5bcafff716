//! The operator's policy: one TOML file per VM (see
//! `vhost-tls/policy-example.toml` for every key). Loading validates
//! everything up front and names the line of the first problem, so a bad
//! policy is refused before the backend serves a guest.
//!
//! The guest is untrusted: nothing here takes input from it except the
//! destination a socket connects to ([`DestinationPolicy::check`]), and
//! per-socket options may only narrow what this policy allows.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::crypto::CryptoProvider;
use rustls::{RootCertStore, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::tls::iana_suite_name;

mod include;
mod server;
mod show;
pub use server::{backlog, ClientPolicy, Identity, ListenMapping, ServerPolicy, DEFAULT_BACKLOG, MAX_BACKLOG};

// ---------------------------------------------------------------------------
// TLS versions
// ---------------------------------------------------------------------------

/// A TLS protocol version a policy or socket can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// SSA's `TLS_1_2` = 2, `TLS_1_3` = 3.
    pub fn wire_value(self) -> u32 {
        match self {
            TlsVersion::Tls12 => virtio_tls_spec::TLS_1_2,
            TlsVersion::Tls13 => virtio_tls_spec::TLS_1_3,
        }
    }

    pub fn from_wire(value: u32) -> Option<TlsVersion> {
        match value {
            virtio_tls_spec::TLS_1_2 => Some(TlsVersion::Tls12),
            virtio_tls_spec::TLS_1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    pub fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }

    /// The policy file's spelling: "1.2", also "TLSv1.2" or "tls1.2".
    fn parse(text: &str) -> Option<TlsVersion> {
        let text = text.trim().to_ascii_lowercase();
        let number = text.strip_prefix("tlsv").or_else(|| text.strip_prefix("tls")).unwrap_or(&text);
        match number.trim() {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        })
    }
}

// ---------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------

/// Resource limits per VM and per socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sockets a VM may have open at once.
    pub max_sockets: u32,
    /// Bytes in flight per socket and direction (the device's buf_alloc).
    pub socket_buffer_bytes: u32,
    /// Longest a TLS handshake may take once TCP is connected.
    pub handshake_timeout_secs: u32,
    /// Longest the TCP connect may take.
    pub connect_timeout_secs: u32,
    /// Handshakes a VM may have in progress at once (client and server).
    pub max_pending_handshakes: u32,
    /// New handshakes a VM may start per second (a token bucket of one
    /// second's worth).
    pub handshakes_per_second: u32,
    /// Memory a VM's sockets may reserve together, in MiB: each socket
    /// reserves `socket_buffer_bytes`, and each distinct TLS configuration
    /// its sockets use is charged too ([`crate::limits::MemoryBudget`]).
    pub vm_buffer_mib: u32,
}

impl Limits {
    /// Accepted values, so that the file format, the messages and any
    /// documentation agree.
    pub const MAX_SOCKETS: RangeInclusive<u32> = 1..=65536;
    /// Below one page the credit scheme degenerates into a message per few
    /// bytes; above 16 MiB one socket could pin a large share of host memory.
    pub const SOCKET_BUFFER_BYTES: RangeInclusive<u32> = 4096..=16 << 20;
    pub const TIMEOUT_SECS: RangeInclusive<u32> = 1..=3600;
    pub const MAX_PENDING_HANDSHAKES: RangeInclusive<u32> = 1..=65536;
    pub const HANDSHAKES_PER_SECOND: RangeInclusive<u32> = 1..=1_000_000;
    pub const VM_BUFFER_MIB: RangeInclusive<u32> = 1..=65536;

    /// Whether `sockets` sockets fit the VM's buffer budget.
    pub fn buffers_fit(&self, sockets: usize) -> bool {
        sockets as u64 * u64::from(self.socket_buffer_bytes) <= u64::from(self.vm_buffer_mib) << 20
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sockets: 1024,
            socket_buffer_bytes: 256 * 1024,
            handshake_timeout_secs: 30,
            connect_timeout_secs: 30,
            max_pending_handshakes: 256,
            handshakes_per_second: 1000,
            // max_sockets sockets of socket_buffer_bytes each, and 16 MiB
            // for TLS configurations (about a thousand distinct ones).
            vm_buffer_mib: 272,
        }
    }
}

/// Everything the operator decided.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Allowed suites, in preference order.
    pub cipher_suites: Vec<SupportedCipherSuite>,
    pub roots: Arc<RootCertStore>,
    pub destinations: DestinationPolicy,
    pub limits: Limits,
    /// Guest listening sockets; none may listen without a `[server]`.
    pub server: ServerPolicy,
    /// The client certificate for mutual TLS, if any.
    pub client: ClientPolicy,
    /// Whether programs may bring their own certificate and key
    /// (TLS_CERTIFICATE_CHAIN, TLS_PRIVATE_KEY). Off: keys stay on the host.
    pub application_identities: bool,
    /// Every file this policy was read from: the policy file and the files
    /// it includes (canonical paths), CA bundles, certificate chains and
    /// keys. What a sandboxed backend must still be able to read to reload
    /// it. Empty for the built-in default.
    pub files: Vec<PathBuf>,
}

/// A policy problem, with the line it is on when it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The file (or other source) the policy came from.
    pub origin: String,
    /// 1-based; `None` for problems of the file as a whole.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl Policy {
    /// Reads and validates the policy file at `path` and the files it
    /// includes; relative paths in a file resolve against its directory.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read the policy: {e}"),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Policy::from_toml_str(&text, &origin, &base_dir)
    }

    /// Parses and validates policy text; `origin` names it in messages and
    /// relative paths in it (`ca_files`, `include`, ...) resolve against
    /// `base_dir`.
    pub fn from_toml_str(text: &str, origin: &str, base_dir: &Path) -> Result<Policy, PolicyError> {
        // A (re)load is when the operator expects the host's addresses,
        // which may have changed since the start, to be current.
        crate::host_addresses::refresh();
        let (files, file) = include::load_merged(text, origin, base_dir)?;
        let source = Source { files: &files, resolved: RefCell::new(Vec::new()) };
        let (min_version, max_version) = versions(&file.tls, &source)?;
        let cipher_suites = cipher_suites(&file.tls, min_version..=max_version, &source)?;
        let mut policy = Policy {
            min_version,
            max_version,
            cipher_suites,
            roots: Arc::new(trust_anchors(&file.trust, &source)?),
            destinations: destinations(&file.destinations, &source)?,
            limits: limits(&file.limits, &source)?,
            server: server::parse(&file.server, &source)?,
            client: server::parse_client(&file.client, &source)?,
            application_identities: file.tls.application_identities.as_ref().is_some_and(|v| *v.get_ref()),
            files: files.iter().filter_map(|file| file.canonical.clone()).collect(),
        };
        policy.files.extend(source.resolved.into_inner());
        Ok(policy)
    }

    /// System roots, TLS 1.2 to 1.3, every suite, any destination except
    /// host-local ones.
    pub fn builtin_default() -> Policy {
        crate::host_addresses::refresh();
        Policy {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec(),
            roots: Arc::new(system_roots()),
            destinations: DestinationPolicy::default(),
            limits: Limits::default(),
            server: ServerPolicy::default(),
            client: ClientPolicy::default(),
            application_identities: false,
            files: Vec::new(),
        }
    }

    /// The ring provider restricted to the policy's suites, in its order.
    pub fn crypto_provider(&self) -> Arc<CryptoProvider> {
        Arc::new(CryptoProvider { cipher_suites: self.cipher_suites.clone(), ..rustls::crypto::ring::default_provider() })
    }
}

// ---------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------

/// Whether a destination may be connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Why not, naming the rule that decided, for TLS_ERROR and logs.
    Deny(String),
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// Ordered allow/deny rules; the first that matches decides. Host-local
/// addresses (loopback, link-local, the host's own interface addresses)
/// are denied whatever the default unless an allow rule with `addresses`
/// matches them: an allow rule by name or port alone does not, since a
/// name can resolve to anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationPolicy {
    default_allow: bool,
    rules: Vec<Rule>,
}

impl Default for DestinationPolicy {
    /// Anything but host-local addresses.
    fn default() -> DestinationPolicy {
        DestinationPolicy { default_allow: true, rules: Vec::new() }
    }
}

impl DestinationPolicy {
    /// May a socket connect to `addr`:`port`? `hostname` is the name the
    /// guest asked the backend to resolve to `addr` (`None` when it
    /// connected to an address); an IP literal counts as no name, so rules
    /// with `hosts` only ever match connections by name.
    pub fn check(&self, hostname: Option<&str>, addr: IpAddr, port: u16) -> Verdict {
        self.check_with_server_name(hostname, None, addr, port)
    }

    /// [`check`](Self::check) for a socket that also names the server it
    /// will verify (TLS_HOSTNAME), which a guest can set to anything even
    /// when it connects to an address. So that such a claim can neither
    /// dodge a deny rule nor borrow an allow rule: a deny rule's `hosts`
    /// match when either name matches; an allow rule's `hosts` match only
    /// when the backend resolved `hostname` itself and every name given
    /// matches.
    pub fn check_with_server_name(&self, hostname: Option<&str>, server_name: Option<&str>, addr: IpAddr, port: u16) -> Verdict {
        self.verdict(&Names::of(hostname, server_name), addr, port, &crate::host_addresses::current())
    }

    /// The verdict, with `host_addresses` the host's interface addresses.
    /// The reasons never name the address: for a connect by name, that
    /// would tell the guest what the host's resolver answered.
    fn verdict(&self, names: &Names, addr: IpAddr, port: u16, host_addresses: &[IpAddr]) -> Verdict {
        let addr = canonical(addr);
        let host_local = is_host_local(addr) || host_addresses.iter().any(|own| canonical(*own) == addr);
        for rule in &self.rules {
            if !rule.matches(names, addr, port) {
                continue;
            }
            if rule.allow && host_local && rule.addresses.is_none() {
                // Allowed by name or port alone: not explicit enough for
                // the host itself.
                continue;
            }
            return if rule.allow { Verdict::Allow } else { Verdict::Deny(rule.denial()) };
        }
        if host_local {
            return Verdict::Deny(
                "a host-local address (loopback, link-local or one of the host's own) is denied unless a rule allows it by address"
                    .to_owned(),
            );
        }
        self.default_verdict()
    }

    fn default_verdict(&self) -> Verdict {
        if self.default_allow {
            Verdict::Allow
        } else {
            Verdict::Deny("no destinations rule allows it and the default is deny".to_owned())
        }
    }

    /// Whether a connect by name to `hostname`:`port` could be allowed for
    /// some address it might resolve to, decided before resolving it, so
    /// that a name no rule could allow costs no DNS query (and tells the
    /// guest nothing about the name). Deny names the rule (or the default)
    /// that decides for every address; Allow means: resolve, then check
    /// each address.
    pub fn check_name(&self, hostname: &str, server_name: Option<&str>, port: u16) -> Verdict {
        let names = Names::of(Some(hostname), server_name);
        for rule in &self.rules {
            if !rule.matches_names_and_port(&names, port) {
                continue;
            }
            match (rule.allow, rule.addresses.is_some()) {
                // Some address may match it.
                (true, _) => return Verdict::Allow,
                // It decides for every address.
                (false, false) => return Verdict::Deny(rule.denial()),
                // Addresses outside its ranges go on to the next rules.
                (false, true) => {}
            }
        }
        self.default_verdict()
    }
}

/// The names a connection is known by, normalized.
struct Names {
    /// The name the backend resolved to the address.
    resolved: Option<String>,
    /// The name the peer's certificate will be verified against.
    server: Option<String>,
}

impl Names {
    fn of(hostname: Option<&str>, server_name: Option<&str>) -> Names {
        Names { resolved: dns_name(hostname), server: dns_name(server_name) }
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.resolved.iter().chain(self.server.iter()).map(String::as_str)
    }
}

/// `name` lower-cased without its trailing dot, or `None` for an IP literal
/// (or an empty name), which host rules never match.
fn dns_name(name: Option<&str>) -> Option<String> {
    let name = normalize_host(name?.trim());
    (!name.is_empty() && !is_ip_literal(&name)).then_some(name)
}

/// `192.0.2.1`, `::1` or `[::1]`.
fn is_ip_literal(name: &str) -> bool {
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    unbracketed.parse::<IpAddr>().is_ok()
}

fn normalize_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: names with one or more
    /// labels before it, never `example.com` itself.
    Subdomains(String),
}

impl HostPattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Subdomains(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// 1-based position and line, for messages.
    number: usize,
    line: usize,
    /// The file the rule is written in, when it came from an `include`.
    included_from: Option<String>,
    hosts: Option<Vec<HostPattern>>,
    addresses: Option<Vec<IpNet>>,
    ports: Option<Vec<RangeInclusive<u16>>>,
}

impl Rule {
    /// Every criterion the rule has must match.
    fn matches(&self, names: &Names, addr: IpAddr, port: u16) -> bool {
        let addr_ok = self.addresses.as_ref().is_none_or(|nets| nets.iter().any(|n| n.contains(&addr)));
        addr_ok && self.matches_names_and_port(names, port)
    }

    /// The criteria other than addresses.
    fn matches_names_and_port(&self, names: &Names, port: u16) -> bool {
        let host_ok = self.hosts.as_ref().is_none_or(|patterns| {
            let matched = |name: &str| patterns.iter().any(|p| p.matches(name));
            if self.allow {
                names.resolved.is_some() && names.iter().all(matched)
            } else {
                names.iter().any(matched)
            }
        });
        let port_ok = self.ports.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(&port)));
        host_ok && port_ok
    }

    /// TLS_ERROR's reason when this deny rule decides.
    fn denial(&self) -> String {
        match &self.included_from {
            None => format!("denied by destinations rule {} (line {})", self.number, self.line),
            Some(file) => format!("denied by destinations rule {} ({file}:{})", self.number, self.line),
        }
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address: the kernel connects
/// a dual-stack socket to `::ffff:127.0.0.1` over IPv4 loopback.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that reach the host the backend runs on (or its link) rather
/// than a remote server. 0.0.0.0/8 as a whole, not only 0.0.0.0: Linux
/// connects 0.0.0.0 to the local host and no server lives in "this
/// network" addresses.
fn is_host_local(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0 || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

// ---------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// A base policy this file builds on (see `include.rs` for the rules).
    include: Option<Spanned<String>>,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    trust: TrustSection,
    #[serde(default)]
    destinations: DestinationsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    server: server::ServerSection,
    #[serde(default)]
    client: server::ClientSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    min_version: Option<Spanned<VersionText>>,
    max_version: Option<Spanned<VersionText>>,
    cipher_suites: Option<Spanned<Vec<Spanned<String>>>>,
    application_identities: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TrustSection {
    system_roots: Option<Spanned<bool>>,
    ca_files: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DestinationsSection {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<RuleEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    action: Spanned<String>,
    hosts: Option<Spanned<Vec<Spanned<String>>>>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    ports: Option<Spanned<Vec<Spanned<PortEntry>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    // i64 rather than u32, so that -1 or 0 gets the "outside A..=B" message
    // instead of serde's "expected u32".
    max_sockets: Option<Spanned<i64>>,
    socket_buffer_bytes: Option<Spanned<i64>>,
    handshake_timeout_secs: Option<Spanned<i64>>,
    connect_timeout_secs: Option<Spanned<i64>>,
    max_pending_handshakes: Option<Spanned<i64>>,
    handshakes_per_second: Option<Spanned<i64>>,
    vm_buffer_mib: Option<Spanned<i64>>,
}

/// A version as written; a string so that `1.2` and `1.20` cannot be
/// confused, and a custom visitor so that `min_version = 1.2` is answered
/// with what to write instead.
struct VersionText(String);

impl<'de> Deserialize<'de> for VersionText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<VersionText, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = VersionText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLS version as a string: \"1.2\" or \"1.3\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<VersionText, E> {
                Ok(VersionText(text.to_owned()))
            }
        }
        deserializer.deserialize_str(VersionVisitor)
    }
}

/// `443` or `"8000-9000"` (or `"443"`).
enum PortEntry {
    Number(i64),
    Text(String),
}

// By hand rather than `#[serde(untagged)]`, whose error is "data did not
// match any variant of untagged enum".
impl<'de> Deserialize<'de> for PortEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortEntry, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"low-high\" range string")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortEntry, E> {
                Ok(PortEntry::Number(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortEntry, E> {
                Ok(PortEntry::Number(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<PortEntry, E> {
                Ok(PortEntry::Text(text.to_owned()))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// The policy's files (the VM's and those it includes), to turn byte
/// offsets into a file and line for messages. Every file was parsed at its
/// own offset of one address space (see `include.rs`), so a span alone
/// says which file it is in.
struct Source<'a> {
    files: &'a [include::SourceFile],
    /// Every path [`Source::resolve`] returned: the files the policy reads.
    resolved: RefCell<Vec<PathBuf>>,
}

impl Source<'_> {
    fn file_at(&self, offset: usize) -> &include::SourceFile {
        self.files.iter().rev().find(|file| file.start <= offset).unwrap_or(&self.files[0])
    }

    fn line_of(&self, offset: usize) -> usize {
        self.file_at(offset).line_of(offset)
    }

    /// The origin of the file a value was written in, when that is not the
    /// VM's own file.
    fn included_origin<T>(&self, spanned: &Spanned<T>) -> Option<String> {
        let file = self.file_at(spanned.span().start);
        (file.start != self.files[0].start).then(|| file.origin.clone())
    }

    /// A path as written in the policy, resolved against the directory of
    /// the file it is written in.
    fn resolve(&self, path: &Spanned<String>) -> PathBuf {
        let resolved = self.file_at(path.span().start).base_dir.join(path.get_ref());
        self.resolved.borrow_mut().push(resolved.clone());
        resolved
    }

    fn error_at<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> PolicyError {
        let offset = spanned.span().start;
        let file = self.file_at(offset);
        PolicyError { origin: file.origin.clone(), line: Some(file.line_of(offset)), message: message.into() }
    }
}

fn versions(tls: &TlsSection, source: &Source<'_>) -> Result<(TlsVersion, TlsVersion), PolicyError> {
    let version = |value: &Option<Spanned<VersionText>>, default: TlsVersion| match value {
        None => Ok(default),
        Some(v) => TlsVersion::parse(&v.get_ref().0)
            .ok_or_else(|| source.error_at(v, format!("unknown TLS version \"{}\": use \"1.2\" or \"1.3\"", v.get_ref().0))),
    };
    let min = version(&tls.min_version, TlsVersion::Tls12)?;
    let max = version(&tls.max_version, TlsVersion::Tls13)?;
    if min > max {
        // One of them was written, since the defaults are in order.
        let at = tls.min_version.as_ref().or(tls.max_version.as_ref()).expect("a version was set");
        return Err(source.error_at(at, format!("min_version {min} is above max_version {max}")));
    }
    Ok((min, max))
}

fn cipher_suites(
    tls: &TlsSection,
    allowed_versions: RangeInclusive<TlsVersion>,
    source: &Source<'_>,
) -> Result<Vec<SupportedCipherSuite>, PolicyError> {
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    let Some(names) = &tls.cipher_suites else {
        return Ok(all.to_vec());
    };
    if names.get_ref().is_empty() {
        return Err(source.error_at(names, "cipher_suites is empty: list at least one suite, or remove it to allow all"));
    }
    let mut suites = Vec::new();
    for name in names.get_ref() {
        let suite = find_suite(name.get_ref()).ok_or_else(|| {
            let known: Vec<String> = all.iter().map(|s| iana_suite_name(s.suite())).collect();
            source.error_at(name, format!("unknown cipher suite \"{}\"; known: {}", name.get_ref(), known.join(", ")))
        })?;
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    // Otherwise a version the policy allows could never be negotiated, and
    // rustls would only say so at the first handshake.
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        if allowed_versions.contains(&version) && !suites.iter().any(|s| s.version() == version.rustls()) {
            return Err(source.error_at(names, format!("cipher_suites has no suite for {version}, which min_version..max_version allow")));
        }
    }
    Ok(suites)
}

/// A suite by its rustls name (`TLS13_AES_128_GCM_SHA256`) or IANA name
/// (`TLS_AES_128_GCM_SHA256`), in any case.
fn find_suite(name: &str) -> Option<SupportedCipherSuite> {
    let name = name.trim();
    rustls::crypto::ring::ALL_CIPHER_SUITES.iter().copied().find(|suite| {
        let rustls_name = suite.suite().as_str().unwrap_or_default();
        name.eq_ignore_ascii_case(rustls_name) || name.eq_ignore_ascii_case(&iana_suite_name(suite.suite()))
    })
}

/// The host's trust store, or Mozilla's (webpki-roots) where the host has
/// none, so the built-in default can always verify public servers.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!("loading the host's CA certificates: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!("ignored {ignored} unparsable certificates of the host's trust store ({added} loaded)");
    }
    if roots.is_empty() {
        tracing::info!("the host has no CA certificates; using the Mozilla roots of webpki-roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

fn trust_anchors(trust: &TrustSection, source: &Source<'_>) -> Result<RootCertStore, PolicyError> {
    let use_system = trust.system_roots.as_ref().is_none_or(|s| *s.get_ref());
    let mut roots = if use_system { system_roots() } else { RootCertStore::empty() };
    for file in trust.ca_files.as_ref().map(|f| f.get_ref().as_slice()).unwrap_or_default() {
        add_ca_file(&mut roots, file, source)?;
    }
    if roots.is_empty() {
        // system_roots() is never empty, so system_roots = false was written.
        let at = trust.system_roots.as_ref().expect("system roots were turned off");
        return Err(source.error_at(at, "no trust anchors: system_roots is false and ca_files names no file"));
    }
    Ok(roots)
}

/// Adds every certificate of one PEM bundle; a file with none is an error,
/// since trusting nothing from it is surely not what the operator meant.
fn add_ca_file(roots: &mut RootCertStore, file: &Spanned<String>, source: &Source<'_>) -> Result<(), PolicyError> {
    let path = source.resolve(file);
    let pem = std::fs::read(&path).map_err(|e| source.error_at(file, format!("cannot read CA file {}: {e}", path.display())))?;
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| source.error_at(file, format!("bad PEM in CA file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| source.error_at(file, format!("bad certificate in CA file {}: {e}", path.display())))?;
        found += 1;
    }
    if found == 0 {
        return Err(source.error_at(file, format!("CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())));
    }
    Ok(())
}

fn destinations(section: &DestinationsSection, source: &Source<'_>) -> Result<DestinationPolicy, PolicyError> {
    let default_allow = match &section.default {
        Some(value) => action(value, source)?,
        None => true,
    };
    let rules = section.rules.iter().enumerate().map(|(index, entry)| rule(index + 1, entry, source)).collect::<Result<_, _>>()?;
    Ok(DestinationPolicy { default_allow, rules })
}

fn action(value: &Spanned<String>, source: &Source<'_>) -> Result<bool, PolicyError> {
    match value.get_ref().as_str() {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(source.error_at(value, format!("unknown action \"{other}\": use \"allow\" or \"deny\""))),
    }
}

fn rule(number: usize, entry: &Spanned<RuleEntry>, source: &Source<'_>) -> Result<Rule, PolicyError> {
    let fields = entry.get_ref();
    if fields.hosts.is_none() && fields.addresses.is_none() && fields.ports.is_none() {
        return Err(source.error_at(entry, "a destinations rule needs at least one of hosts, addresses, ports"));
    }
    // Each criterion is a list; an empty one would silently make the rule
    // match nothing.
    fn criterion<T, U>(
        list: &Option<Spanned<Vec<Spanned<T>>>>,
        key: &str,
        source: &Source<'_>,
        parse: impl Fn(&Spanned<T>) -> Result<U, PolicyError>,
    ) -> Result<Option<Vec<U>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(source.error_at(list, format!("{key} is empty, so the rule could never match: list at least one, or remove {key}")));
        }
        list.get_ref().iter().map(parse).collect::<Result<Vec<U>, _>>().map(Some)
    }
    Ok(Rule {
        allow: action(&fields.action, source)?,
        number,
        line: source.line_of(entry.span().start),
        included_from: source.included_origin(entry),
        hosts: criterion(&fields.hosts, "hosts", source, |h| host_pattern(h, source))?,
        addresses: criterion(&fields.addresses, "addresses", source, |a| address_range(a, source))?,
        ports: criterion(&fields.ports, "ports", source, |p| port_range(p, source))?,
    })
}

fn host_pattern(value: &Spanned<String>, source: &Source<'_>) -> Result<HostPattern, PolicyError> {
    let written = value.get_ref();
    let name = normalize_host(written.trim());
    if is_ip_literal(&name) {
        return Err(
            source.error_at(value, format!("\"{written}\" is an IP address: hosts match names only; put addresses in addresses = [...]"))
        );
    }
    if !name.is_ascii() {
        return Err(source.error_at(value, format!("\"{written}\" is not ASCII: write international names in their xn-- (punycode) form")));
    }
    let (pattern, domain) = match name.strip_prefix("*.") {
        Some(domain) => (HostPattern::Subdomains(format!(".{domain}")), domain),
        None => (HostPattern::Exact(name.clone()), name.as_str()),
    };
    // The same rules TLS_HOSTNAME is checked with, so every name a guest
    // can use can be written here and no pattern is unmatchable.
    if rustls_pki_types::DnsName::try_from(domain).is_err() {
        return Err(source.error_at(value, format!("\"{written}\" is not a host name or \"*.domain\" pattern")));
    }
    Ok(pattern)
}

fn address_range(value: &Spanned<String>, source: &Source<'_>) -> Result<IpNet, PolicyError> {
    let text = value.get_ref().trim();
    let net = text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
        source.error_at(value, format!("\"{text}\" is not an IP address or CIDR range (like \"10.0.0.0/8\" or \"fd00::/8\")"))
    })?;
    // Connections to IPv4-mapped addresses are checked as IPv4, so ranges
    // written in the mapped form must be too.
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("a prefix of 0..=32 fits IPv4"),
            None => net,
        },
        other => other,
    })
}

fn port_range(value: &Spanned<PortEntry>, source: &Source<'_>) -> Result<RangeInclusive<u16>, PolicyError> {
    let bad = |what: &str| source.error_at(value, format!("{what} is not a port (1-65535) or \"low-high\" range"));
    let port = |n: i64| u16::try_from(n).ok().filter(|&p| p > 0);
    match value.get_ref() {
        PortEntry::Number(n) => port(*n).map(|p| p..=p).ok_or_else(|| bad(&n.to_string())),
        PortEntry::Text(text) => {
            let parse = |s: &str| s.trim().parse::<i64>().ok().and_then(port);
            let (low, high) = match text.split_once('-') {
                Some((low, high)) => (parse(low), parse(high)),
                None => (parse(text), parse(text)),
            };
            match (low, high) {
                (Some(low), Some(high)) if low <= high => Ok(low..=high),
                (Some(low), Some(high)) => Err(source.error_at(value, format!("port range \"{text}\" is backwards: {low} > {high}"))),
                _ => Err(bad(&format!("\"{text}\""))),
            }
        }
    }
}

fn limits(section: &LimitsSection, source: &Source<'_>) -> Result<Limits, PolicyError> {
    let defaults = Limits::default();
    let bounded = |value: &Option<Spanned<i64>>, default: u32, range: RangeInclusive<u32>, name: &str| match value {
        None => Ok(default),
        Some(v) => u32::try_from(*v.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| source.error_at(v, format!("{name} = {} is outside {}..={}", v.get_ref(), range.start(), range.end()))),
    };
    Ok(Limits {
        max_sockets: bounded(&section.max_sockets, defaults.max_sockets, Limits::MAX_SOCKETS, "max_sockets")?,
        socket_buffer_bytes: bounded(
            &section.socket_buffer_bytes,
            defaults.socket_buffer_bytes,
            Limits::SOCKET_BUFFER_BYTES,
            "socket_buffer_bytes",
        )?,
        handshake_timeout_secs: bounded(
            &section.handshake_timeout_secs,
            defaults.handshake_timeout_secs,
            Limits::TIMEOUT_SECS,
            "handshake_timeout_secs",
        )?,
        connect_timeout_secs: bounded(
            &section.connect_timeout_secs,
            defaults.connect_timeout_secs,
            Limits::TIMEOUT_SECS,
            "connect_timeout_secs",
        )?,
        max_pending_handshakes: bounded(
            &section.max_pending_handshakes,
            defaults.max_pending_handshakes,
            Limits::MAX_PENDING_HANDSHAKES,
            "max_pending_handshakes",
        )?,
        handshakes_per_second: bounded(
            &section.handshakes_per_second,
            defaults.handshakes_per_second,
            Limits::HANDSHAKES_PER_SECOND,
            "handshakes_per_second",
        )?,
        vm_buffer_mib: bounded(&section.vm_buffer_mib, defaults.vm_buffer_mib, Limits::VM_BUFFER_MIB, "vm_buffer_mib")?,
    })
}

#[cfg(test)]
mod tests;
