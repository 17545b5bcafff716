//! Socket options at SOL_SOCKET, IPPROTO_IP, IPPROTO_TCP and IPPROTO_IPV6
//! on IPPROTO_TLS sockets (spec 2.6.10): which ones reach the host's TCP
//! connection, which the policy refuses, which fail as they would on a TCP
//! socket or by the specification's decision. One table for the device and
//! the user-space library, so that both answer alike.
//!
//! Values themselves are validated by Linux: the caller sets an accepted
//! option on a real TCP socket (the host connection, or a fresh one that
//! stands in for it before it exists) and returns that call's answer. What
//! the caller must remember to apply later is kept in [`HostOptions`].

use virtio_tls_spec as wire;

use crate::errno::Errno;

/// The family of the program's socket (not of the host connection, which
/// may differ when a name resolves to the other family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Set,
    Get,
}

/// What to do with one `setsockopt` / `getsockopt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Set on (read from) the host's TCP socket; Linux validates the value
    /// and its answer is the answer.
    Host,
    /// The operator owns what this changes: EPERM, logged and counted, and
    /// nothing is applied.
    Refused,
    /// Fails with this errno without reaching any socket.
    Fail(Errno),
    /// GET answers IPPROTO_TLS (IP_PROTOCOL, SO_PROTOCOL).
    Protocol,
    /// A SOL_SOCKET option of the program's own socket: the guest kernel's
    /// generic code answers (the device never sees these), and the library
    /// passes it to its TCP socket.
    Own,
}

const SOL_IP: u32 = wire::VIRTIO_TLS_SOL_IP;
const SOL_SOCKET: u32 = wire::VIRTIO_TLS_SOL_SOCKET;
const SOL_TCP: u32 = wire::VIRTIO_TLS_SOL_TCP;
const SOL_IPV6: u32 = wire::VIRTIO_TLS_SOL_IPV6;

/// SO_PRIORITY values Linux lets a process without CAP_NET_ADMIN set
/// (TC_PRIO_BESTEFFORT ..= TC_PRIO_INTERACTIVE).
const UNPRIVILEGED_PRIORITIES: core::ops::RangeInclusive<i32> = 0..=6;

/// The disposition of option `optname` at `level` on a socket of `family`;
/// `value` is the SET value (empty for GET).
pub fn disposition(family: Family, access: Access, level: u32, optname: u32, value: &[u8]) -> Disposition {
    let set = access == Access::Set;
    match level {
        SOL_SOCKET => socket_level(access, optname, value),
        SOL_TCP => tcp_level(set, optname),
        SOL_IP => ip_level(set, optname),
        SOL_IPV6 if family == Family::Inet6 => ipv6_level(set, optname),
        // Another level (IPPROTO_IPV6 on AF_INET included): Linux's TCP
        // hands it to IPv4's or IPv6's code, which knows none. IPv4's
        // answers a read with EOPNOTSUPP (ip_getsockopt).
        _ if family == Family::Inet && !set => Disposition::Fail(Errno::EOPNOTSUPP),
        _ => Disposition::Fail(Errno::ENOPROTOOPT),
    }
}

fn socket_level(access: Access, optname: u32, value: &[u8]) -> Disposition {
    use virtio_tls_spec::wire::*;
    if sockopt_route(SOL_SOCKET, optname) == SockOptRoute::Guest {
        return match optname {
            SO_PROTOCOL if access == Access::Get => Disposition::Protocol,
            // Features of the kernel's TCP data path that the TLS stream
            // does not have; Linux's answer for such a protocol.
            SO_ZEROCOPY | SO_PEEK_OFF => Disposition::Fail(Errno::EOPNOTSUPP),
            _ => Disposition::Own,
        };
    }
    match optname {
        SO_BINDTODEVICE | SO_BINDTOIFINDEX | SO_MARK | SO_ATTACH_REUSEPORT_CBPF | SO_ATTACH_REUSEPORT_EBPF
        | SO_DETACH_REUSEPORT_BPF
            if access == Access::Set =>
        {
            Disposition::Refused
        }
        SO_PRIORITY if access == Access::Set => match int_value(value) {
            Some(priority) if !UNPRIVILEGED_PRIORITIES.contains(&priority) => Disposition::Refused,
            // A short value: Linux's EINVAL.
            _ => Disposition::Host,
        },
        _ => Disposition::Host,
    }
}

fn tcp_level(set: bool, optname: u32) -> Disposition {
    use virtio_tls_spec::wire::*;
    match optname {
        TCP_NODELAY | TCP_MAXSEG | TCP_CORK | TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT | TCP_SYNCNT | TCP_LINGER2
        | TCP_DEFER_ACCEPT | TCP_WINDOW_CLAMP | TCP_QUICKACK | TCP_THIN_LINEAR_TIMEOUTS | TCP_THIN_DUPACK
        | TCP_USER_TIMEOUT | TCP_FASTOPEN | TCP_NOTSENT_LOWAT | TCP_SAVE_SYN | TCP_FASTOPEN_NO_COOKIE => {
            Disposition::Host
        }
        // The host connection is not opened with Fast Open (its connect
        // would then wait for a first write that the handshake never
        // starts): Linux's answer when client Fast Open is turned off.
        TCP_FASTOPEN_CONNECT => Disposition::Fail(Errno::EOPNOTSUPP),
        // Read-only for TCP too: Linux answers ENOPROTOOPT to a SET.
        TCP_INFO | TCP_CC_INFO | TCP_SAVED_SYN | TCP_IS_MPTCP => Disposition::Host,
        TCP_CONGESTION | TCP_TIMESTAMP if !set => Disposition::Host,
        TCP_CONGESTION | TCP_TIMESTAMP | TCP_MD5SIG | TCP_MD5SIG_EXT | TCP_REPAIR | TCP_REPAIR_QUEUE | TCP_QUEUE_SEQ
        | TCP_REPAIR_OPTIONS | TCP_REPAIR_WINDOW | TCP_AO_REPAIR | TCP_ULP | TCP_FASTOPEN_KEY | TCP_TX_DELAY
        | TCP_AO_ADD_KEY | TCP_AO_DEL_KEY | TCP_AO_INFO | TCP_AO_GET_KEYS => {
            if set {
                Disposition::Refused
            } else {
                // Reading them reveals nothing the guest set (nothing can be).
                Disposition::Host
            }
        }
        TCP_ZEROCOPY_RECEIVE | TCP_INQ => Disposition::Fail(Errno::EOPNOTSUPP),
        _ => Disposition::Fail(Errno::ENOPROTOOPT),
    }
}

/// Option numbers at IPPROTO_IP that a TCP socket hands to netfilter (the
/// host's firewall: iptables, SO_ORIGINAL_DST, arptables, ebtables, IPVS).
fn is_ip_netfilter(optname: u32) -> bool {
    matches!(optname, 64..=67 | wire::SO_ORIGINAL_DST | 96..=99 | 128..=133 | 0x480..=0x4ff)
}

fn ip_level(set: bool, optname: u32) -> Disposition {
    use virtio_tls_spec::wire::*;
    match optname {
        IP_PROTOCOL if set => Disposition::Fail(Errno::ENOPROTOOPT),
        IP_PROTOCOL => Disposition::Protocol,
        IP_OPTIONS if !set => Disposition::Host,
        IP_OPTIONS | IP_FREEBIND | IP_TRANSPARENT | IP_IPSEC_POLICY | IP_XFRM_POLICY | IP_MULTICAST_IF
        | IP_UNICAST_IF => host_unless_set(set),
        IP_ADD_MEMBERSHIP..=MCAST_MSFILTER => host_unless_set(set),
        IP_TOS | IP_TTL | IP_HDRINCL | IP_NODEFRAG | IP_ROUTER_ALERT | IP_RECVOPTS | IP_RETOPTS | IP_PKTINFO
        | IP_RECVTTL | IP_RECVTOS | IP_RECVERR | IP_PASSSEC | IP_RECVORIGDSTADDR | IP_CHECKSUM
        | IP_RECVERR_RFC4884 | IP_RECVFRAGSIZE | IP_PKTOPTIONS | IP_MTU_DISCOVER | IP_MTU | IP_MINTTL
        | IP_BIND_ADDRESS_NO_PORT | IP_MULTICAST_TTL | IP_MULTICAST_LOOP | IP_MULTICAST_ALL
        | IP_LOCAL_PORT_RANGE => Disposition::Host,
        n if is_ip_netfilter(n) => Disposition::Refused,
        _ => Disposition::Fail(Errno::ENOPROTOOPT),
    }
}

fn ipv6_level(set: bool, optname: u32) -> Disposition {
    use virtio_tls_spec::wire::*;
    match optname {
        IPV6_ADDRFORM => Disposition::Fail(Errno::EOPNOTSUPP),
        IPV6_2292HOPOPTS | IPV6_2292DSTOPTS | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS | IPV6_NEXTHOP | IPV6_PKTINFO
        | IPV6_HOPOPTS | IPV6_RTHDRDSTOPTS | IPV6_RTHDR | IPV6_DSTOPTS | IPV6_MULTICAST_IF | IPV6_UNICAST_IF
        | IPV6_ADD_MEMBERSHIP | IPV6_DROP_MEMBERSHIP | IPV6_JOIN_ANYCAST | IPV6_LEAVE_ANYCAST | IPV6_FLOWLABEL_MGR
        | IPV6_IPSEC_POLICY | IPV6_XFRM_POLICY | IPV6_TRANSPARENT | IPV6_FREEBIND => host_unless_set(set),
        MCAST_JOIN_GROUP..=MCAST_MSFILTER => host_unless_set(set),
        IPV6_2292PKTINFO | IPV6_2292HOPLIMIT | IPV6_FLOWINFO | IPV6_RECVERR | IPV6_RECVERR_RFC4884
        | IPV6_RECVPKTINFO | IPV6_RECVHOPLIMIT | IPV6_RECVHOPOPTS | IPV6_RECVRTHDR | IPV6_RECVDSTOPTS
        | IPV6_RECVPATHMTU | IPV6_RECVTCLASS | IPV6_ORIGDSTADDR | IPV6_RECVFRAGSIZE | IPV6_CHECKSUM | IPV6_HDRINCL
        | IPV6_ROUTER_ALERT | IPV6_ROUTER_ALERT_ISOLATE | IPV6_UNICAST_HOPS | IPV6_MULTICAST_HOPS
        | IPV6_MULTICAST_LOOP | IPV6_MULTICAST_ALL | IPV6_MTU_DISCOVER | IPV6_MTU | IPV6_PATHMTU | IPV6_V6ONLY
        | IPV6_FLOWINFO_SEND | IPV6_HOPLIMIT | IPV6_DONTFRAG | IPV6_TCLASS | IPV6_AUTOFLOWLABEL
        | IPV6_ADDR_PREFERENCES | IPV6_MINHOPCOUNT => Disposition::Host,
        // ip6tables and IP6T_SO_ORIGINAL_DST.
        64 | 65 | SO_ORIGINAL_DST => Disposition::Refused,
        _ => Disposition::Fail(Errno::ENOPROTOOPT),
    }
}

/// Refused to set; reading answers from the host socket (which nothing set).
fn host_unless_set(set: bool) -> Disposition {
    if set {
        Disposition::Refused
    } else {
        Disposition::Host
    }
}

/// A C `int` value as Linux reads it for SOL_SOCKET (at least 4 bytes).
fn int_value(value: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(value.get(..4)?.try_into().ok()?))
}

/// IPPROTO_TLS as a GET value of `max_len` bytes at `level`, cut as Linux
/// cuts an integer there: IPPROTO_IP gives one byte when the room is 1 to
/// 3 bytes, SOL_SOCKET the first `max_len` bytes.
pub fn protocol_value(level: u32, max_len: usize) -> Vec<u8> {
    let value = wire::IPPROTO_TLS.to_le_bytes();
    match max_len {
        1..=3 if level == SOL_IP => vec![value[0]],
        _ => value[..max_len.min(value.len())].to_vec(),
    }
}

/// Most bytes of one value kept for a later host socket: every option the
/// host takes reads at most 16 (TCP_CONGESTION's name) of what it is given.
pub const MAX_KEPT_VALUE: usize = 64;

/// Host options the program set, in the order it set them (the last
/// setting of each), to apply to a host socket created later (spec
/// 2.6.10: at CONNECT before the connection starts, at BIND before the
/// bind). Bounded: one entry per option number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOptions {
    entries: Vec<KeptOption>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptOption {
    pub level: u32,
    pub optname: u32,
    pub value: Vec<u8>,
}

/// Distinct options kept at most (far more than the table's Host rows).
const MAX_KEPT_OPTIONS: usize = 256;

impl HostOptions {
    /// Remembers an accepted SET; a later setting of the same option
    /// replaces the earlier one and moves to the end, as its effect would.
    pub fn keep(&mut self, level: u32, optname: u32, value: &[u8]) {
        self.entries.retain(|kept| (kept.level, kept.optname) != (level, optname));
        if self.entries.len() >= MAX_KEPT_OPTIONS {
            self.entries.remove(0);
        }
        let value = value[..value.len().min(MAX_KEPT_VALUE)].to_vec();
        self.entries.push(KeptOption { level, optname, value });
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeptOption> {
        self.entries.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The name of a level, for logs.
pub fn level_name(level: u32) -> &'static str {
    match level {
        SOL_SOCKET => "SOL_SOCKET",
        SOL_TCP => "IPPROTO_TCP",
        SOL_IP => "IPPROTO_IP",
        SOL_IPV6 => "IPPROTO_IPV6",
        _ => "another level",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_tls_spec::wire::*;

    fn set(level: u32, optname: u32) -> Disposition {
        disposition(Family::Inet6, Access::Set, level, optname, &1i32.to_le_bytes())
    }

    #[test]
    fn the_issue_options_reach_the_host() {
        for (level, optname) in [
            (SOL_TCP, TCP_NODELAY),
            (SOL_TCP, TCP_CORK),
            (SOL_SOCKET, SO_KEEPALIVE),
            (SOL_TCP, TCP_KEEPIDLE),
            (SOL_TCP, TCP_USER_TIMEOUT),
            (SOL_SOCKET, SO_LINGER),
            (SOL_SOCKET, SO_REUSEADDR),
            (SOL_SOCKET, SO_REUSEPORT),
            (SOL_IPV6, IPV6_V6ONLY),
            (SOL_TCP, TCP_DEFER_ACCEPT),
            (SOL_IP, IP_TOS),
            (SOL_IPV6, IPV6_TCLASS),
        ] {
            assert_eq!(set(level, optname), Disposition::Host, "{} {optname}", level_name(level));
        }
        assert_eq!(disposition(Family::Inet, Access::Get, SOL_TCP, TCP_INFO, &[]), Disposition::Host);
    }

    #[test]
    fn refusals_and_failures() {
        for (level, optname) in [
            (SOL_SOCKET, SO_BINDTODEVICE),
            (SOL_SOCKET, SO_MARK),
            (SOL_IP, IP_TRANSPARENT),
            (SOL_IP, IP_FREEBIND),
            (SOL_IP, IP_OPTIONS),
            (SOL_IP, 64),
            (SOL_TCP, TCP_CONGESTION),
            (SOL_TCP, TCP_ULP),
            (SOL_IPV6, IPV6_RTHDR),
        ] {
            assert_eq!(set(level, optname), Disposition::Refused, "{} {optname}", level_name(level));
        }
        let priority = |p: i32| disposition(Family::Inet, Access::Set, SOL_SOCKET, SO_PRIORITY, &p.to_le_bytes());
        assert_eq!(priority(6), Disposition::Host);
        assert_eq!(priority(7), Disposition::Refused);
        assert_eq!(priority(-1), Disposition::Refused);
        assert_eq!(disposition(Family::Inet, Access::Set, SOL_SOCKET, SO_PRIORITY, &[7]), Disposition::Host, "Linux's EINVAL");
        assert_eq!(disposition(Family::Inet, Access::Set, SOL_IPV6, IPV6_V6ONLY, &[1, 0, 0, 0]), Disposition::Fail(Errno::ENOPROTOOPT));
        assert_eq!(set(SOL_TCP, 99), Disposition::Fail(Errno::ENOPROTOOPT));
        assert_eq!(set(SOL_IP, 27), Disposition::Fail(Errno::ENOPROTOOPT));
        assert_eq!(set(200, 1), Disposition::Fail(Errno::ENOPROTOOPT));
        assert_eq!(disposition(Family::Inet, Access::Get, SOL_IPV6, IPV6_MTU, &[]), Disposition::Fail(Errno::EOPNOTSUPP));
        assert_eq!(disposition(Family::Inet6, Access::Get, 200, 1, &[]), Disposition::Fail(Errno::ENOPROTOOPT));
        assert_eq!(set(SOL_SOCKET, SO_ZEROCOPY), Disposition::Fail(Errno::EOPNOTSUPP));
        assert_eq!(set(SOL_SOCKET, SO_RCVBUF), Disposition::Own);
        assert_eq!(disposition(Family::Inet, Access::Get, SOL_SOCKET, SO_PROTOCOL, &[]), Disposition::Protocol);
        assert_eq!(disposition(Family::Inet, Access::Get, SOL_IP, IP_PROTOCOL, &[]), Disposition::Protocol);
        assert_eq!(disposition(Family::Inet, Access::Get, SOL_IP, IP_OPTIONS, &[]), Disposition::Host);
        assert_eq!(protocol_value(SOL_IP, 4), 205u32.to_le_bytes());
        assert_eq!(protocol_value(SOL_IP, 8), 205u32.to_le_bytes());
        assert_eq!(protocol_value(SOL_IP, 2), [205]);
        assert_eq!(protocol_value(SOL_SOCKET, 2), [205, 0]);
        assert!(protocol_value(SOL_IP, 0).is_empty());
    }

    #[test]
    fn device_routed_socket_options_are_never_own() {
        for optname in 0..200 {
            for access in [Access::Set, Access::Get] {
                let own = disposition(Family::Inet, access, SOL_SOCKET, optname, &[0; 4]) == Disposition::Own;
                let guest = sockopt_route(SOL_SOCKET, optname) == SockOptRoute::Guest;
                assert!(!own || guest, "SO {optname}");
            }
        }
    }

    #[test]
    fn kept_options_are_bounded_and_ordered() {
        let mut kept = HostOptions::default();
        kept.keep(SOL_TCP, TCP_CORK, &1i32.to_le_bytes());
        kept.keep(SOL_TCP, TCP_NODELAY, &1i32.to_le_bytes());
        kept.keep(SOL_TCP, TCP_CORK, &0i32.to_le_bytes());
        let order: Vec<_> = kept.iter().map(|k| (k.optname, k.value.clone())).collect();
        assert_eq!(order, vec![(TCP_NODELAY, 1i32.to_le_bytes().to_vec()), (TCP_CORK, 0i32.to_le_bytes().to_vec())]);
        kept.keep(SOL_TCP, TCP_CONGESTION, &[b'x'; 1000]);
        assert_eq!(kept.iter().last().unwrap().value.len(), MAX_KEPT_VALUE);
        for n in 0..1000 {
            kept.keep(SOL_IP, n, &[1]);
        }
        assert_eq!(kept.len(), MAX_KEPT_OPTIONS);
    }
}
