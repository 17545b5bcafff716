//! `getsockopt(fd, IPPROTO_TLS, ...)`: the value of an option for one
//! socket, shaped as getsockopt returns it. Shared by the backend (the
//! device's GETOPT) and the user-space library, so both answer alike.

use virtio_tls_spec as wire;

use crate::errno::Errno;
use crate::options::SocketOptions;
use crate::policy::Policy;
use crate::tls::ConnectionInfo;

/// What a socket knows that options can report.
pub struct SocketState<'a> {
    /// TLS_ID: the socket's number, never 0.
    pub id: u64,
    pub options: &'a SocketOptions,
    /// What the handshake negotiated (empty before it completes).
    pub info: &'a ConnectionInfo,
    /// TLS_ERROR: why the last connect or the connection failed.
    pub error: Option<&'a str>,
    /// For a connection a listening socket accepted: the name the client
    /// asked for (SNI; empty when none). TLS_HOSTNAME reports it.
    pub accepted_for_name: Option<&'a str>,
}

pub use wire::is_string_option;

/// The value of `optname`, at most `room` bytes: text is cut to fit, as
/// getsockopt does; an integer that does not fit is EINVAL. ENOTCONN for
/// what the handshake has not produced yet, ENOPROTOOPT for options with no
/// value to read.
pub fn option_value(policy: &Policy, socket: &SocketState<'_>, optname: u32, room: usize) -> Result<Vec<u8>, Errno> {
    let (value, integer) = match optname {
        wire::TLS_ERROR => (socket.error.unwrap_or_default().as_bytes().to_vec(), false),
        wire::TLS_ID => (socket.id.to_le_bytes().to_vec(), true),
        wire::TLS_HOSTNAME if socket.accepted_for_name.is_some() => {
            (socket.accepted_for_name.unwrap_or_default().as_bytes().to_vec(), false)
        }
        wire::TLS_CHOSEN_VERSION
        | wire::TLS_CHOSEN_CIPHER
        | wire::TLS_PEER_IDENTITY
        | wire::TLS_PEER_CERTIFICATE_CHAIN
        | wire::TLS_RESUMED_SESSION => {
            let value = socket.info.get(optname).ok_or(Errno::ENOTCONN)?;
            (value, matches!(optname, wire::TLS_CHOSEN_VERSION | wire::TLS_RESUMED_SESSION))
        }
        // After the handshake, the protocol agreed on; before, the list set.
        wire::TLS_ALPN if socket.info.version.is_some() => (socket.info.get(optname).unwrap_or_default(), false),
        _ => {
            let value = socket.options.get(policy, optname).ok_or(Errno::ENOPROTOOPT)?;
            (value, !is_string_option(optname))
        }
    };
    if value.len() <= room {
        Ok(value)
    } else if integer {
        Err(Errno::EINVAL)
    } else {
        Ok(value[..room].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsVersion;

    #[test]
    fn values_errors_and_room() {
        let policy = Policy::builtin_default();
        let options = SocketOptions::default();
        let unconnected = ConnectionInfo::default();
        let state = SocketState {
            id: 7,
            options: &options,
            info: &unconnected,
            error: Some("certificate verification failed"),
            accepted_for_name: None,
        };
        assert_eq!(option_value(&policy, &state, wire::TLS_ID, 8).unwrap(), 7u64.to_le_bytes());
        assert_eq!(option_value(&policy, &state, wire::TLS_ID, 4), Err(Errno::EINVAL));
        assert_eq!(option_value(&policy, &state, wire::TLS_ERROR, 11).unwrap(), b"certificate");
        assert_eq!(option_value(&policy, &state, wire::TLS_CHOSEN_VERSION, 4), Err(Errno::ENOTCONN));
        assert_eq!(option_value(&policy, &state, wire::TLS_ALPN, 4).unwrap(), b"", "no ALPN list set");
        assert_eq!(option_value(&policy, &state, wire::TLS_RESUMED_SESSION, 4), Err(Errno::ENOTCONN));
        assert_eq!(option_value(&policy, &state, wire::TLS_CONTEXT, 8).unwrap(), 0u64.to_le_bytes());
        assert_eq!(option_value(&policy, &state, wire::TLS_TRUSTED_CIPHERS, 8), Err(Errno::ENOPROTOOPT));
        let accepted = SocketState { accepted_for_name: Some("api.test"), ..state };
        assert_eq!(option_value(&policy, &accepted, wire::TLS_HOSTNAME, 64).unwrap(), b"api.test");
        let info = ConnectionInfo { version: Some(TlsVersion::Tls13), ..ConnectionInfo::default() };
        let state = SocketState { info: &info, error: None, ..state };
        assert_eq!(option_value(&policy, &state, wire::TLS_RESUMED_SESSION, 4).unwrap(), 0u32.to_le_bytes());
        assert_eq!(option_value(&policy, &state, wire::TLS_CHOSEN_VERSION, 4).unwrap(), 3u32.to_le_bytes());
        assert_eq!(option_value(&policy, &state, wire::TLS_ERROR, 100).unwrap(), b"");
        assert!(is_string_option(wire::TLS_PEER_IDENTITY) && !is_string_option(wire::TLS_ID));
    }
}
