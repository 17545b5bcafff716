//! Options a program sets on an IPPROTO_TLS socket (level IPPROTO_TLS).
//!
//! Values arrive as the raw bytes of `setsockopt`; integers are 4-byte
//! little-endian (the wire's encoding of a C `int`). An option can make the
//! operator's policy stricter for this socket, never weaker: a value that
//! would loosen it is refused with EPERM, a malformed one with EINVAL.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use virtio_tls_spec as wire;

use crate::errno::Errno;
use crate::policy::{Identity, Policy, TlsVersion};

/// Longest name a DNS host name can have (RFC 1035), without a trailing dot.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Where a socket is in its life, as far as options care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not yet connecting: every option can still change.
    Unconnected,
    /// Connecting or connected: handshake parameters are fixed.
    Connected,
}

/// Longest ALPN protocol name (RFC 7301).
const MAX_ALPN_PROTOCOL_LEN: usize = 255;
/// Longest session lifetime a socket may ask for (TLS_SESSION_TTL): a day.
pub const MAX_SESSION_TTL_SECS: u32 = 24 * 3600;

/// The per-socket settings a program asked for.
#[derive(Clone, Debug, Default)]
pub struct SocketOptions {
    hostname: Option<String>,
    version_min: Option<TlsVersion>,
    version_max: Option<TlsVersion>,
    /// TLS_ALPN, in preference order.
    alpn: Vec<Vec<u8>>,
    /// TLS_SESSION_REUSE = 0 turns resumption off for this socket.
    no_session_reuse: bool,
    /// TLS_CONTEXT: sockets of one context share a session cache, apart
    /// from other contexts' (0, the default, is the VM's shared one).
    context: u64,
    /// TLS_SESSION_TTL: how long a listening socket's sessions resume.
    session_ttl_secs: Option<u32>,
    /// TLS_REQUEST_PEER_AUTH on a listening socket: clients must present
    /// a certificate the policy trusts.
    request_peer_auth: bool,
    /// TLS_CERTIFICATE_CHAIN / TLS_PRIVATE_KEY, when the policy allows
    /// programs their own identity; complete once both are set.
    own_chain: Option<Vec<CertificateDer<'static>>>,
    own_key: Option<Arc<PrivateKeyDer<'static>>>,
    own_identity: Option<Arc<Identity>>,
}

impl SocketOptions {
    /// TLS_ALPN: the protocols to offer (client) or accept (server), in
    /// preference order.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    pub fn context(&self) -> u64 {
        self.context
    }

    pub fn session_reuse(&self) -> bool {
        !self.no_session_reuse
    }

    pub fn session_ttl_secs(&self) -> Option<u32> {
        self.session_ttl_secs
    }

    pub fn request_peer_auth(&self) -> bool {
        self.request_peer_auth
    }

    /// The program's own certificate and key, once it set both.
    pub fn own_identity(&self) -> Option<&Arc<Identity>> {
        self.own_identity.as_ref()
    }

    /// The name to verify the peer's certificate against (TLS_HOSTNAME).
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// The versions this socket may negotiate: the policy's range narrowed
    /// by TLS_VERSION_MIN/MAX.
    pub fn version_range(&self, policy: &Policy) -> (TlsVersion, TlsVersion) {
        let min = self.version_min.map_or(policy.min_version, |v| v.max(policy.min_version));
        let max = self.version_max.map_or(policy.max_version, |v| v.min(policy.max_version));
        (min, max)
    }

    /// Applies `setsockopt(fd, IPPROTO_TLS, optname, value)`.
    pub fn set(&mut self, policy: &Policy, phase: Phase, optname: u32, value: &[u8]) -> Result<(), Errno> {
        match optname {
            wire::TLS_HOSTNAME => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                self.hostname = Some(parse_hostname(value)?);
                Ok(())
            }
            wire::TLS_VERSION_MIN | wire::TLS_VERSION_MAX => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                let version = TlsVersion::from_wire(parse_int(value)?).ok_or(Errno::EINVAL)?;
                let mut next = self.clone();
                if optname == wire::TLS_VERSION_MIN {
                    if version < policy.min_version {
                        return Err(Errno::EPERM);
                    }
                    next.version_min = Some(version);
                } else {
                    if version > policy.max_version {
                        return Err(Errno::EPERM);
                    }
                    next.version_max = Some(version);
                }
                let (min, max) = next.version_range(policy);
                if min > max {
                    return Err(Errno::EINVAL);
                }
                *self = next;
                Ok(())
            }
            wire::TLS_ALPN => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                self.alpn = parse_alpn(value)?;
                Ok(())
            }
            wire::TLS_SESSION_REUSE | wire::TLS_REQUEST_PEER_AUTH => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                let on = parse_int(value)? != 0;
                if optname == wire::TLS_SESSION_REUSE {
                    self.no_session_reuse = !on;
                } else {
                    self.request_peer_auth = on;
                }
                Ok(())
            }
            wire::TLS_CONTEXT => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                self.context = match value.len() {
                    4 => u64::from(parse_int(value)?),
                    8 => u64::from_le_bytes(value.try_into().expect("8 bytes")),
                    _ => return Err(Errno::EINVAL),
                };
                Ok(())
            }
            wire::TLS_SESSION_TTL => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                let secs = parse_int(value)?;
                if secs > MAX_SESSION_TTL_SECS {
                    return Err(Errno::EINVAL);
                }
                self.session_ttl_secs = Some(secs);
                Ok(())
            }
            wire::TLS_CERTIFICATE_CHAIN | wire::TLS_PRIVATE_KEY => {
                if phase == Phase::Connected {
                    return Err(Errno::EISCONN);
                }
                if !policy.application_identities {
                    // Keys stay on the host unless the operator says otherwise.
                    return Err(Errno::EPERM);
                }
                let mut next = self.clone();
                if optname == wire::TLS_CERTIFICATE_CHAIN {
                    next.own_chain = Some(parse_chain(value)?);
                } else {
                    next.own_key = Some(Arc::new(parse_key(value)?));
                }
                next.own_identity = None;
                if let (Some(chain), Some(key)) = (&next.own_chain, &next.own_key) {
                    // SSA: a key that does not belong to the chain is EPROTO.
                    let identity = Identity::from_der(chain.clone(), key.clone_key()).map_err(|_| Errno::EPROTO)?;
                    next.own_identity = Some(Arc::new(identity));
                }
                *self = next;
                Ok(())
            }
            // Read-only: they report what the handshake chose.
            wire::TLS_ERROR
            | wire::TLS_CHOSEN_VERSION
            | wire::TLS_CHOSEN_CIPHER
            | wire::TLS_PEER_IDENTITY
            | wire::TLS_PEER_CERTIFICATE_CHAIN
            | wire::TLS_RESUMED_SESSION
            | wire::TLS_ID => Err(Errno::ENOPROTOOPT),
            // Known SSA options this device does not offer (yet): refusing
            // them is safer than accepting and ignoring a security setting.
            wire::TLS_TRUSTED_PEER_CERTIFICATES
            | wire::TLS_DISABLE_CIPHER
            | wire::TLS_TRUSTED_CIPHERS
            | wire::TLS_REVOCATION_CHECKS
            | wire::TLS_ENABLE_CIPHER => Err(Errno::EOPNOTSUPP),
            _ => Err(Errno::ENOPROTOOPT),
        }
    }

    /// Values of the options this struct owns; `None` for options answered
    /// from the connection (see [`crate::tls::ConnectionInfo`]).
    pub fn get(&self, policy: &Policy, optname: u32) -> Option<Vec<u8>> {
        let (min, max) = self.version_range(policy);
        match optname {
            wire::TLS_HOSTNAME => Some(self.hostname.clone().unwrap_or_default().into_bytes()),
            wire::TLS_VERSION_MIN => Some(min.wire_value().to_le_bytes().to_vec()),
            wire::TLS_VERSION_MAX => Some(max.wire_value().to_le_bytes().to_vec()),
            wire::TLS_ALPN => Some(self.alpn.join(&b","[..])),
            wire::TLS_SESSION_REUSE => Some(u32::from(self.session_reuse()).to_le_bytes().to_vec()),
            wire::TLS_CONTEXT => Some(self.context.to_le_bytes().to_vec()),
            wire::TLS_REQUEST_PEER_AUTH => Some(u32::from(self.request_peer_auth).to_le_bytes().to_vec()),
            wire::TLS_SESSION_TTL => {
                Some(self.session_ttl_secs.unwrap_or(crate::tls::DEFAULT_SESSION_TTL_SECS).to_le_bytes().to_vec())
            }
            _ => None,
        }
    }
}

/// TLS_ALPN's value: protocol names separated by commas, as SSA takes
/// them ("h2,http/1.1"); an empty value offers none.
fn parse_alpn(value: &[u8]) -> Result<Vec<Vec<u8>>, Errno> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    if value[end..].iter().any(|&b| b != 0) {
        return Err(Errno::EINVAL);
    }
    if end == 0 {
        return Ok(Vec::new());
    }
    value[..end]
        .split(|&b| b == b',')
        .map(|name| {
            let printable = name.iter().all(|b| b.is_ascii_graphic());
            if name.is_empty() || name.len() > MAX_ALPN_PROTOCOL_LEN || !printable {
                Err(Errno::EINVAL)
            } else {
                Ok(name.to_vec())
            }
        })
        .collect()
}

/// A PEM certificate chain, leaf first; EINVAL when there is none.
fn parse_chain(value: &[u8]) -> Result<Vec<CertificateDer<'static>>, Errno> {
    let chain = CertificateDer::pem_slice_iter(value).collect::<Result<Vec<_>, _>>().map_err(|_| Errno::EINVAL)?;
    if chain.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(chain)
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1); EINVAL when unreadable.
fn parse_key(value: &[u8]) -> Result<PrivateKeyDer<'static>, Errno> {
    let key = PrivateKeyDer::from_pem_slice(value).map_err(|_| Errno::EINVAL)?;
    // Usable by the provider, or it is as good as unreadable.
    rustls::crypto::ring::default_provider().key_provider.load_private_key(key.clone_key()).map_err(|_| Errno::EINVAL)?;
    Ok(key)
}

/// A C `int` option value: exactly 4 bytes, little-endian.
pub fn parse_int(value: &[u8]) -> Result<u32, Errno> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| Errno::EINVAL)?;
    Ok(u32::from_le_bytes(bytes))
}

/// A host name or IP address literal, as `setsockopt(TLS_HOSTNAME)` passes
/// it: optionally NUL-terminated, no interior NUL, a valid DNS name or IP.
pub fn parse_hostname(value: &[u8]) -> Result<String, Errno> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    if value[end..].iter().any(|&b| b != 0) {
        return Err(Errno::EINVAL);
    }
    let name = std::str::from_utf8(&value[..end]).map_err(|_| Errno::EINVAL)?;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOSTNAME_LEN {
        return Err(Errno::EINVAL);
    }
    ServerName::try_from(name).map_err(|_| Errno::EINVAL)?;
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: TlsVersion, max: TlsVersion) -> Policy {
        let mut policy = Policy::builtin_default();
        policy.min_version = min;
        policy.max_version = max;
        policy
    }

    fn int(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    #[test]
    fn hostname_accepts_names_and_ip_literals() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        o.set(&p, Phase::Unconnected, wire::TLS_HOSTNAME, b"Example.COM\0").unwrap();
        assert_eq!(o.hostname(), Some("example.com"));
        o.set(&p, Phase::Unconnected, wire::TLS_HOSTNAME, b"127.0.0.1").unwrap();
        assert_eq!(o.hostname(), Some("127.0.0.1"));
        o.set(&p, Phase::Unconnected, wire::TLS_HOSTNAME, b"::1").unwrap();
        assert_eq!(o.get(&p, wire::TLS_HOSTNAME).unwrap(), b"::1");
    }

    #[test]
    fn hostname_rejects_malformed_values() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        for bad in [&b""[..], b"\0", b"a\0b", b"bad name", b"\xff\xfe", &[b'a'; 300][..]] {
            assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_HOSTNAME, bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(o.hostname(), None);
        assert_eq!(o.set(&p, Phase::Connected, wire::TLS_HOSTNAME, b"x.org"), Err(Errno::EISCONN));
    }

    #[test]
    fn versions_only_tighten() {
        let p = policy(TlsVersion::Tls12, TlsVersion::Tls13);
        let mut o = SocketOptions::default();
        o.set(&p, Phase::Unconnected, wire::TLS_VERSION_MIN, &int(wire::TLS_1_3)).unwrap();
        assert_eq!(o.version_range(&p), (TlsVersion::Tls13, TlsVersion::Tls13));
        // Now max 1.2 would leave nothing to negotiate.
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_VERSION_MAX, &int(wire::TLS_1_2)), Err(Errno::EINVAL));
        assert_eq!(o.version_range(&p), (TlsVersion::Tls13, TlsVersion::Tls13));

        let strict = policy(TlsVersion::Tls13, TlsVersion::Tls13);
        let mut o = SocketOptions::default();
        assert_eq!(o.set(&strict, Phase::Unconnected, wire::TLS_VERSION_MIN, &int(wire::TLS_1_2)), Err(Errno::EPERM));
        let old = policy(TlsVersion::Tls12, TlsVersion::Tls12);
        assert_eq!(o.set(&old, Phase::Unconnected, wire::TLS_VERSION_MAX, &int(wire::TLS_1_3)), Err(Errno::EPERM));
        assert_eq!(o.version_range(&strict), (TlsVersion::Tls13, TlsVersion::Tls13), "refused values change nothing");
        assert_eq!(o.version_range(&old), (TlsVersion::Tls12, TlsVersion::Tls12));
    }

    #[test]
    fn version_values_are_validated() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        for bad in [&int(0)[..], &int(1), &int(4), &int(u32::MAX), &[3], &[3, 0, 0, 0, 0]] {
            assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_VERSION_MIN, bad), Err(Errno::EINVAL));
        }
        assert_eq!(o.get(&p, wire::TLS_VERSION_MAX).unwrap(), int(p.max_version.wire_value()));
    }

    #[test]
    fn read_only_and_unknown_options() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_ERROR, b"x"), Err(Errno::ENOPROTOOPT));
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_CHOSEN_VERSION, &int(3)), Err(Errno::ENOPROTOOPT));
        assert_eq!(o.set(&p, Phase::Unconnected, 12345, b""), Err(Errno::ENOPROTOOPT));
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_TRUSTED_PEER_CERTIFICATES, b"ca"), Err(Errno::EOPNOTSUPP));
    }

    #[test]
    fn alpn_lists() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        o.set(&p, Phase::Unconnected, wire::TLS_ALPN, b"h2,http/1.1\0").unwrap();
        assert_eq!(o.alpn(), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(o.get(&p, wire::TLS_ALPN).unwrap(), b"h2,http/1.1");
        for bad in [&b"h2,"[..], b",h2", b"h2,,x", b"a b", b"h2\0x", &[b'a'; 256][..]] {
            assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_ALPN, bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(o.alpn().len(), 2, "refused values change nothing");
        o.set(&p, Phase::Unconnected, wire::TLS_ALPN, b"").unwrap();
        assert!(o.alpn().is_empty());
        assert_eq!(o.set(&p, Phase::Connected, wire::TLS_ALPN, b"h2"), Err(Errno::EISCONN));
    }

    #[test]
    fn session_options() {
        let p = Policy::builtin_default();
        let mut o = SocketOptions::default();
        assert!(o.session_reuse(), "resumption is on by default");
        o.set(&p, Phase::Unconnected, wire::TLS_SESSION_REUSE, &int(0)).unwrap();
        assert!(!o.session_reuse());
        assert_eq!(o.get(&p, wire::TLS_SESSION_REUSE).unwrap(), int(0));
        assert_eq!(o.get(&p, wire::TLS_SESSION_TTL).unwrap(), int(crate::tls::DEFAULT_SESSION_TTL_SECS));
        o.set(&p, Phase::Unconnected, wire::TLS_SESSION_TTL, &int(60)).unwrap();
        assert_eq!(o.session_ttl_secs(), Some(60));
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_SESSION_TTL, &int(MAX_SESSION_TTL_SECS + 1)), Err(Errno::EINVAL));
        assert_eq!(o.context(), 0);
        o.set(&p, Phase::Unconnected, wire::TLS_CONTEXT, &int(7)).unwrap();
        assert_eq!(o.get(&p, wire::TLS_CONTEXT).unwrap(), 7u64.to_le_bytes());
        o.set(&p, Phase::Unconnected, wire::TLS_CONTEXT, &(1u64 << 40).to_le_bytes()).unwrap();
        assert_eq!(o.context(), 1 << 40);
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_CONTEXT, &[1, 2]), Err(Errno::EINVAL));
        o.set(&p, Phase::Unconnected, wire::TLS_REQUEST_PEER_AUTH, &int(1)).unwrap();
        assert!(o.request_peer_auth());
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_REQUEST_PEER_AUTH, b"1"), Err(Errno::EINVAL));
    }

    fn identity_pem(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    #[test]
    fn application_identities_only_where_the_policy_allows() {
        let (chain, key) = identity_pem(&["app.test"]);
        let (_, other_key) = identity_pem(&["other.test"]);
        let mut o = SocketOptions::default();
        let strict = Policy::builtin_default();
        assert_eq!(o.set(&strict, Phase::Unconnected, wire::TLS_CERTIFICATE_CHAIN, &chain), Err(Errno::EPERM));
        assert_eq!(o.set(&strict, Phase::Unconnected, wire::TLS_PRIVATE_KEY, &key), Err(Errno::EPERM));

        let mut open = Policy::builtin_default();
        open.application_identities = true;
        assert_eq!(o.set(&open, Phase::Unconnected, wire::TLS_CERTIFICATE_CHAIN, b"not pem"), Err(Errno::EINVAL));
        assert_eq!(o.set(&open, Phase::Unconnected, wire::TLS_PRIVATE_KEY, &chain), Err(Errno::EINVAL), "a certificate is no key");
        o.set(&open, Phase::Unconnected, wire::TLS_CERTIFICATE_CHAIN, &chain).unwrap();
        assert!(o.own_identity().is_none(), "incomplete without the key");
        assert_eq!(o.set(&open, Phase::Unconnected, wire::TLS_PRIVATE_KEY, &other_key), Err(Errno::EPROTO), "SSA: a foreign key is EPROTO");
        assert!(o.own_identity().is_none());
        o.set(&open, Phase::Unconnected, wire::TLS_PRIVATE_KEY, &key).unwrap();
        assert_eq!(o.own_identity().unwrap().names, ["app.test"]);
        assert_eq!(o.set(&open, Phase::Connected, wire::TLS_PRIVATE_KEY, &key), Err(Errno::EISCONN));
    }
}
