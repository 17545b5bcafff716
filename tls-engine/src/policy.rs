//! The operator's policy: one TOML file per VM (see
//! `vhost-tls/policy-example.toml` for every key). Loading validates
//! everything and names the line of the first problem.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::crypto::CryptoProvider;
use rustls::{RootCertStore, SupportedCipherSuite};
use serde::Deserialize;
use toml::Spanned;

use crate::tls::iana_suite_name;

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

    fn parse(text: &str) -> Option<TlsVersion> {
        match text.trim().to_ascii_lowercase().trim_start_matches("tlsv").trim_start_matches("tls") {
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

/// Resource limits per VM and per socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sockets a VM may have open at once.
    pub max_sockets: u32,
    /// Bytes in flight per socket and direction (the device's buf_alloc).
    pub socket_buffer_bytes: u32,
    pub handshake_timeout_secs: u32,
    pub connect_timeout_secs: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_sockets: 1024, socket_buffer_bytes: 256 * 1024, handshake_timeout_secs: 30, connect_timeout_secs: 30 }
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
}

/// A policy problem, with the line it is on when it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub origin: String,
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

/// Whether a destination may be connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
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
    hosts: Option<Vec<HostPattern>>,
    addresses: Option<Vec<IpNet>>,
    ports: Option<Vec<RangeInclusive<u16>>>,
}

impl Rule {
    fn matches(&self, hostname: Option<&str>, addr: IpAddr, port: u16) -> bool {
        let host_ok = match (&self.hosts, hostname) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(patterns), Some(name)) => patterns.iter().any(|p| p.matches(name)),
        };
        let addr_ok = self.addresses.as_ref().is_none_or(|nets| nets.iter().any(|n| n.contains(&addr)));
        let port_ok = self.ports.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(&port)));
        host_ok && addr_ok && port_ok
    }
}

/// Ordered allow/deny rules; the first that matches decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationPolicy {
    default_allow: bool,
    rules: Vec<Rule>,
}

impl DestinationPolicy {
    pub fn check(&self, hostname: Option<&str>, addr: IpAddr, port: u16) -> Verdict {
        let addr = canonical(addr);
        let hostname = hostname.map(normalize_host);
        for rule in &self.rules {
            if rule.matches(hostname.as_deref(), addr, port) {
                return if rule.allow {
                    Verdict::Allow
                } else {
                    Verdict::Deny(format!("denied by destinations rule {} (line {})", rule.number, rule.line))
                };
            }
        }
        if is_host_local(addr) {
            return Verdict::Deny(format!("host-local address {addr} is denied unless a rule allows it"));
        }
        if self.default_allow {
            Verdict::Allow
        } else {
            Verdict::Deny("no destinations rule allows it and the default is deny".to_owned())
        }
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn is_host_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn normalize_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

// ---------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    trust: TrustSection,
    #[serde(default)]
    destinations: DestinationsSection,
    #[serde(default)]
    limits: LimitsSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    min_version: Option<Spanned<String>>,
    max_version: Option<Spanned<String>>,
    cipher_suites: Option<Spanned<Vec<Spanned<String>>>>,
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
    hosts: Option<Vec<Spanned<String>>>,
    addresses: Option<Vec<Spanned<String>>>,
    ports: Option<Vec<Spanned<PortEntry>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortEntry {
    Number(i64),
    Range(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_sockets: Option<Spanned<i64>>,
    socket_buffer_bytes: Option<Spanned<i64>>,
    handshake_timeout_secs: Option<Spanned<i64>>,
    connect_timeout_secs: Option<Spanned<i64>>,
}

/// Turns byte offsets into line numbers for messages.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn error_at<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> PolicyError {
        PolicyError { origin: self.origin.to_owned(), line: Some(self.line_of(spanned.span().start)), message: message.into() }
    }

    fn error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError { origin: self.origin.to_owned(), line: None, message: message.into() }
    }
}

impl Policy {
    /// Reads and validates the policy file at `path`; relative `ca_files`
    /// resolve against the file's directory.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError { origin: origin.clone(), line: None, message: format!("cannot read the policy: {e}") })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Policy::from_toml_str(&text, &origin, &base)
    }

    /// Parses and validates policy text; `origin` names it in messages.
    pub fn from_toml_str(text: &str, origin: &str, base_dir: &Path) -> Result<Policy, PolicyError> {
        let source = Source { origin, text };
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError {
            origin: origin.to_owned(),
            line: e.span().map(|span| source.line_of(span.start)),
            message: e.message().trim().to_owned(),
        })?;

        let mut policy = Policy::builtin_default();
        let tls = &file.tls;
        let version = |value: &Option<Spanned<String>>, default: TlsVersion| match value {
            None => Ok(default),
            Some(v) => TlsVersion::parse(v.get_ref())
                .ok_or_else(|| source.error_at(v, format!("unknown TLS version \"{}\": use \"1.2\" or \"1.3\"", v.get_ref()))),
        };
        policy.min_version = version(&tls.min_version, TlsVersion::Tls12)?;
        policy.max_version = version(&tls.max_version, TlsVersion::Tls13)?;
        if policy.min_version > policy.max_version {
            let at = tls.min_version.as_ref().or(tls.max_version.as_ref()).expect("one was set");
            return Err(source.error_at(at, format!("min_version {} is above max_version {}", policy.min_version, policy.max_version)));
        }
        if let Some(names) = &tls.cipher_suites {
            let mut suites = Vec::new();
            for name in names.get_ref() {
                let suite = find_suite(name.get_ref()).ok_or_else(|| {
                    let known: Vec<String> = rustls::crypto::ring::ALL_CIPHER_SUITES.iter().map(|s| iana_suite_name(s.suite())).collect();
                    source.error_at(name, format!("unknown cipher suite \"{}\"; known: {}", name.get_ref(), known.join(", ")))
                })?;
                if !suites.contains(&suite) {
                    suites.push(suite);
                }
            }
            for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
                let in_range = (policy.min_version..=policy.max_version).contains(&version);
                if in_range && !suites.iter().any(|s| s.version() == version.rustls()) {
                    return Err(source.error_at(names, format!("cipher_suites has no suite for {version}, which min/max_version allow")));
                }
            }
            policy.cipher_suites = suites;
        }

        policy.roots = Arc::new(load_roots(&file.trust, &source, base_dir)?);
        policy.destinations = destinations(&file.destinations, &source)?;
        policy.limits = limits(&file.limits, &source)?;
        Ok(policy)
    }

    /// System roots, TLS 1.2 to 1.3, every suite, any destination except
    /// host-local ones.
    pub fn builtin_default() -> Policy {
        Policy {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec(),
            roots: Arc::new(system_roots()),
            destinations: DestinationPolicy { default_allow: true, rules: Vec::new() },
            limits: Limits::default(),
        }
    }

    /// The ring provider restricted to the policy's suites.
    pub fn crypto_provider(&self) -> Arc<CryptoProvider> {
        Arc::new(CryptoProvider { cipher_suites: self.cipher_suites.clone(), ..rustls::crypto::ring::default_provider() })
    }
}

fn find_suite(name: &str) -> Option<SupportedCipherSuite> {
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
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

fn load_roots(trust: &TrustSection, source: &Source<'_>, base_dir: &Path) -> Result<RootCertStore, PolicyError> {
    let system = trust.system_roots.as_ref().is_none_or(|s| *s.get_ref());
    let mut roots = if system { system_roots() } else { RootCertStore::empty() };
    for file in trust.ca_files.as_ref().map(|f| f.get_ref().as_slice()).unwrap_or_default() {
        let path = base_dir.join(file.get_ref());
        let pem = std::fs::read(&path).map_err(|e| source.error_at(file, format!("cannot read CA file {}: {e}", path.display())))?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| source.error_at(file, format!("bad PEM in {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| source.error_at(file, format!("bad certificate in {}: {e}", path.display())))?;
            found += 1;
        }
        if found == 0 {
            return Err(source.error_at(file, format!("{} holds no PEM certificate", path.display())));
        }
    }
    if roots.is_empty() {
        return Err(source.error("no trust anchors: set system_roots = true or name ca_files in [trust]"));
    }
    Ok(roots)
}

fn destinations(section: &DestinationsSection, source: &Source<'_>) -> Result<DestinationPolicy, PolicyError> {
    let action = |value: &Spanned<String>| match value.get_ref().as_str() {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(source.error_at(value, format!("unknown action \"{other}\": use \"allow\" or \"deny\""))),
    };
    let default_allow = match &section.default {
        Some(value) => action(value)?,
        None => true,
    };
    let mut rules = Vec::new();
    for (index, entry) in section.rules.iter().enumerate() {
        let line = source.line_of(entry.span().start);
        let rule = entry.get_ref();
        if rule.hosts.is_none() && rule.addresses.is_none() && rule.ports.is_none() {
            return Err(source.error_at(entry, "a destinations rule needs at least one of hosts, addresses, ports"));
        }
        let hosts = rule
            .hosts
            .as_ref()
            .map(|hosts| hosts.iter().map(|h| host_pattern(h, source)).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        let addresses = rule
            .addresses
            .as_ref()
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|a| {
                        let text = a.get_ref().trim();
                        text.parse::<IpNet>()
                            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                            .map(|net| match net {
                                // Mapped IPv6 forms are checked as IPv4.
                                IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                                    IpNet::new(IpAddr::V4(v6.addr().to_ipv4_mapped().expect("checked")), v6.prefix_len() - 96)
                                        .expect("prefix fits")
                                }
                                other => other,
                            })
                            .map_err(|_| source.error_at(a, format!("\"{text}\" is not an address or CIDR range")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ports = rule
            .ports
            .as_ref()
            .map(|ports| ports.iter().map(|p| port_range(p, source)).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        rules.push(Rule { allow: action(&rule.action)?, number: index + 1, line, hosts, addresses, ports });
    }
    Ok(DestinationPolicy { default_allow, rules })
}

fn host_pattern(value: &Spanned<String>, source: &Source<'_>) -> Result<HostPattern, PolicyError> {
    let name = normalize_host(value.get_ref().trim());
    let (pattern, bare) = match name.strip_prefix("*.") {
        Some(rest) => (HostPattern::Subdomains(format!(".{rest}")), rest.to_owned()),
        None => (HostPattern::Exact(name.clone()), name.clone()),
    };
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err(source.error_at(value, format!("\"{}\" is not a host name or *.domain pattern", value.get_ref())));
    }
    Ok(pattern)
}

fn port_range(value: &Spanned<PortEntry>, source: &Source<'_>) -> Result<RangeInclusive<u16>, PolicyError> {
    let bad = |what: &str| source.error_at(value, format!("{what} is not a port (1-65535) or \"low-high\" range"));
    let port = |n: i64| u16::try_from(n).ok().filter(|&p| p > 0);
    match value.get_ref() {
        PortEntry::Number(n) => port(*n).map(|p| p..=p).ok_or_else(|| bad(&n.to_string())),
        PortEntry::Range(text) => {
            let parse = |s: &str| s.trim().parse::<i64>().ok().and_then(port);
            let (low, high) = match text.split_once('-') {
                Some((low, high)) => (parse(low), parse(high)),
                None => (parse(text), parse(text)),
            };
            match (low, high) {
                (Some(low), Some(high)) if low <= high => Ok(low..=high),
                _ => Err(bad(&format!("\"{text}\""))),
            }
        }
    }
}

fn limits(section: &LimitsSection, source: &Source<'_>) -> Result<Limits, PolicyError> {
    let defaults = Limits::default();
    let bounded = |value: &Option<Spanned<i64>>, default: u32, range: RangeInclusive<i64>, name: &str| match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref() as u32),
        Some(v) => Err(source.error_at(v, format!("{name} = {} is outside {}..={}", v.get_ref(), range.start(), range.end()))),
    };
    Ok(Limits {
        max_sockets: bounded(&section.max_sockets, defaults.max_sockets, 1..=65536, "max_sockets")?,
        socket_buffer_bytes: bounded(&section.socket_buffer_bytes, defaults.socket_buffer_bytes, 4096..=16 << 20, "socket_buffer_bytes")?,
        handshake_timeout_secs: bounded(&section.handshake_timeout_secs, defaults.handshake_timeout_secs, 1..=3600, "handshake_timeout_secs")?,
        connect_timeout_secs: bounded(&section.connect_timeout_secs, defaults.connect_timeout_secs, 1..=3600, "connect_timeout_secs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml_str(text, "p.toml", Path::new("/nonexistent"))
    }

    fn line_of_error(text: &str) -> (Option<usize>, String) {
        let error = parse(text).expect_err("should fail");
        (error.line, error.message)
    }

    #[test]
    fn an_empty_policy_is_the_default() {
        let policy = parse("").unwrap();
        assert_eq!((policy.min_version, policy.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
        assert_eq!(policy.limits, Limits::default());
        assert!(!policy.roots.is_empty());
    }

    #[test]
    fn errors_name_their_line() {
        let cases = [
            ("[tls]\nmin_version = \"1.1\"\n", 2, "unknown TLS version"),
            ("[tls]\nmin_version = \"1.3\"\nmax_version = \"1.2\"\n", 2, "above max_version"),
            ("[tls]\n\ncipher_suites = [\"TLS_FOO\"]\n", 3, "unknown cipher suite \"TLS_FOO\""),
            ("[tls]\nmin_version = \"1.3\"\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n", 3, "no suite for TLSv1.3"),
            ("[trust]\nca_files = [\"missing.pem\"]\n", 2, "cannot read CA file"),
            ("[trust]\nsystem_roots = false\n", 0, "no trust anchors"),
            ("[destinations]\ndefault = \"maybe\"\n", 2, "unknown action"),
            ("[destinations]\n[[destinations.rules]]\naction = \"allow\"\n", 2, "needs at least one of"),
            ("[[destinations.rules]]\naction = \"allow\"\naddresses = [\"10.0.0.0/33\"]\n", 3, "not an address or CIDR"),
            ("[[destinations.rules]]\naction = \"allow\"\nports = [0]\n", 3, "not a port"),
            ("[[destinations.rules]]\naction = \"allow\"\nports = [\"9-1\"]\n", 3, "not a port"),
            ("[[destinations.rules]]\naction = \"allow\"\nhosts = [\"bad name\"]\n", 3, "not a host name"),
            ("[limits]\nmax_sockets = 0\n", 2, "outside 1..=65536"),
            ("[limits]\n\n\nsocket_buffer_bytes = 1\n", 4, "outside 4096"),
            ("[tls]\nminimum = \"1.2\"\n", 2, "unknown field"),
            ("[tls\n", 1, ""),
        ];
        for (text, line, message) in cases {
            let (got_line, got_message) = line_of_error(text);
            let expected_line = if line == 0 { None } else { Some(line) };
            assert_eq!(got_line, expected_line, "{text:?}: {got_message}");
            assert!(got_message.contains(message), "{text:?}: {got_message}");
        }
        let error = parse("[limits]\nmax_sockets = -1\n").unwrap_err();
        assert_eq!(error.to_string(), "p.toml:2: max_sockets = -1 is outside 1..=65536");
    }

    #[test]
    fn ca_files_load_relative_to_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "nothing here").unwrap();
        let policy = Policy::from_toml_str("[trust]\nsystem_roots = false\nca_files = [\"ca.pem\"]\n", "p", dir.path()).unwrap();
        assert_eq!(policy.roots.len(), 1);
        let error = Policy::from_toml_str("[trust]\nca_files = [\"empty.pem\"]\n", "p", dir.path()).unwrap_err();
        assert_eq!(error.line, Some(2));
        assert!(error.message.contains("no PEM certificate"), "{}", error.message);
    }

    #[test]
    fn cipher_suites_accept_both_spellings() {
        let policy = parse("[tls]\ncipher_suites = [\"tls13_aes_128_gcm_sha256\", \"TLS_AES_256_GCM_SHA384\", \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]\n").unwrap();
        let names: Vec<String> = policy.cipher_suites.iter().map(|s| iana_suite_name(s.suite())).collect();
        assert_eq!(names, ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(policy.crypto_provider().cipher_suites.len(), 3);
    }

    #[test]
    fn destination_rules_first_match_wins() {
        let policy = parse(
            r#"
[destinations]
default = "deny"
[[destinations.rules]]
action = "deny"
hosts = ["blocked.example.com"]
[[destinations.rules]]
action = "allow"
hosts = ["*.example.com"]
ports = [443, "8000-8100"]
[[destinations.rules]]
action = "allow"
addresses = ["192.0.2.0/24", "::1", "2001:db8::/32"]
"#,
        )
        .unwrap();
        let d = &policy.destinations;
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let verdict = d.check(Some("blocked.example.com"), public, 443);
        assert!(matches!(&verdict, Verdict::Deny(r) if r.contains("rule 1 (line 4)")), "{verdict:?}");
        assert_eq!(d.check(Some("www.Example.com."), public, 443), Verdict::Allow);
        assert_eq!(d.check(Some("a.b.example.com"), public, 8050), Verdict::Allow);
        assert!(matches!(d.check(Some("example.com"), public, 443), Verdict::Deny(_)), "*. needs a label");
        assert!(matches!(d.check(Some("www.example.com"), public, 80), Verdict::Deny(_)));
        // A rule with hosts never matches an IP-literal connect.
        assert!(matches!(d.check(None, public, 443), Verdict::Deny(_)));
        assert_eq!(d.check(None, "192.0.2.9".parse().unwrap(), 1), Verdict::Allow);
        assert_eq!(d.check(None, "::ffff:192.0.2.9".parse().unwrap(), 1), Verdict::Allow);
        assert_eq!(d.check(None, "::1".parse().unwrap(), 1), Verdict::Allow);
        assert_eq!(d.check(None, "2001:db8::5".parse().unwrap(), 1), Verdict::Allow);
        assert!(matches!(d.check(None, "198.51.100.1".parse().unwrap(), 1), Verdict::Deny(r) if r.contains("default is deny")));
    }

    #[test]
    fn host_local_addresses_need_a_rule() {
        let d = parse("[destinations]\ndefault = \"allow\"\n").unwrap().destinations;
        for local in ["127.0.0.1", "127.9.9.9", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1", "169.254.1.1", "fe80::1"] {
            let verdict = d.check(None, local.parse().unwrap(), 443);
            assert!(matches!(&verdict, Verdict::Deny(r) if r.contains("host-local")), "{local}: {verdict:?}");
        }
        assert_eq!(d.check(None, "198.51.100.1".parse().unwrap(), 443), Verdict::Allow);
        let allowed = parse("[[destinations.rules]]\naction = \"allow\"\naddresses = [\"127.0.0.0/8\"]\nports = [\"8443\"]\n")
            .unwrap()
            .destinations;
        assert_eq!(allowed.check(Some("localhost"), "127.0.0.1".parse().unwrap(), 8443), Verdict::Allow);
        assert!(matches!(allowed.check(None, "127.0.0.1".parse().unwrap(), 8444), Verdict::Deny(_)));
    }
}
