//! Options a program sets on an IPPROTO_TLS socket (level IPPROTO_TLS).
//!
//! Values arrive as the raw bytes of `setsockopt`; integers are 4-byte
//! little-endian (the wire's encoding of a C `int`). An option can make the
//! operator's policy stricter for this socket, never weaker: a value that
//! would loosen it is refused with EPERM, a malformed one with EINVAL.

use rustls_pki_types::ServerName;
use virtio_tls_spec as wire;

use crate::errno::Errno;
use crate::policy::{Policy, TlsVersion};

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

/// The per-socket settings a program asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    hostname: Option<String>,
    version_min: Option<TlsVersion>,
    version_max: Option<TlsVersion>,
}

impl SocketOptions {
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
            | wire::TLS_CERTIFICATE_CHAIN
            | wire::TLS_PRIVATE_KEY
            | wire::TLS_ALPN
            | wire::TLS_SESSION_TTL
            | wire::TLS_DISABLE_CIPHER
            | wire::TLS_REQUEST_PEER_AUTH
            | wire::TLS_TRUSTED_CIPHERS
            | wire::TLS_REVOCATION_CHECKS
            | wire::TLS_CONTEXT
            | wire::TLS_SESSION_REUSE
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
            _ => None,
        }
    }
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
        assert_eq!(o, SocketOptions::default());
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
        assert_eq!(o.set(&p, Phase::Unconnected, wire::TLS_PRIVATE_KEY, b"k"), Err(Errno::EOPNOTSUPP));
    }
}
