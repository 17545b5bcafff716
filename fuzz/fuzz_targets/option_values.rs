//! `SocketOptions::set` and `get` for every option number, with values of
//! any length and content, before and after connecting, under a policy
//! that allows application identities and one that does not. Input:
//! records; the kind byte's low bit is the phase, the next bit the policy,
//! the rest selects the option number (`option_number`).
//!
//! Checked: a refused value changes nothing (SSA: setsockopt fails
//! without effect); the socket's version range stays inside the policy's
//! and non-empty; every option a socket owns can be read back.
//!
//! With bit 1 of the first byte set, the records are options at the other
//! levels (spec 2.6.10: SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP, IPPROTO_IPV6
//! and a level no socket has) as the device handles them: tls-engine's
//! table decides, Linux validates on a stand-in TCP socket of the guest's
//! family (bit 2: AF_INET6), accepted values are kept. Each record: the
//! kind byte's low 3 bits pick the level, bit 3 GET instead of SET, bit 7
//! a two-byte option number; the value's first byte(s) are the option
//! number, the rest the value (GET: its length is the room). Checked: the
//! table's invariants (guest-routed options never reach the host, nothing
//! is refused to read but the host firewall's numbers, AF_INET sockets
//! have no IPPROTO_IPV6 option), and what was kept applies, in order, to
//! a fresh socket as it did to the stand-in.
#![no_main]

use std::os::fd::AsFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tls_engine::options::{Phase, SocketOptions};
use tls_engine::sockopt::{disposition, protocol_value, Access, Disposition, Family, HostOptions, MAX_KEPT_VALUE};
use vhost_tls::sockopt;
use tls_engine::{Policy, TlsVersion};
use vhost_tls_fuzz::{option_number, Records, OPTION_NUMBERS};
use virtio_tls_spec::{self as wire, SockOptRoute};

fn policies() -> &'static [Policy; 2] {
    static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let strict = vhost_tls_fuzz::fixture().policy.as_ref().clone();
        let mut closed = strict.clone();
        closed.application_identities = false;
        closed.min_version = TlsVersion::Tls13;
        [strict, closed]
    })
}

/// What `get` says of every option, to compare before and after.
fn readable(options: &SocketOptions, policy: &Policy) -> Vec<Option<Vec<u8>>> {
    OPTION_NUMBERS.iter().map(|&optname| options.get(policy, optname)).collect()
}

fn has_identity(options: &SocketOptions) -> bool {
    options.own_identity().is_some()
}

const LEVELS: [u32; 5] =
    [wire::VIRTIO_TLS_SOL_SOCKET, wire::VIRTIO_TLS_SOL_TCP, wire::VIRTIO_TLS_SOL_IP, wire::VIRTIO_TLS_SOL_IPV6, 200];

fn other_levels(family: Family, records: &[u8]) {
    let Ok(stand_in) = sockopt::stand_in(family) else { return };
    let mut kept = HostOptions::default();
    for (kind, value) in Records::new(records) {
        let level = LEVELS[usize::from(kind & 7) % LEVELS.len()];
        let access = if kind & 8 == 0 { Access::Set } else { Access::Get };
        let (optname, value) = match (kind & 0x80 != 0, value) {
            (true, [low, high, rest @ ..]) => (u32::from(*low) | u32::from(*high) << 8, rest),
            (_, [low, rest @ ..]) => (u32::from(*low), rest),
            _ => continue,
        };
        let answer = disposition(family, access, level, optname, value);
        if level == wire::VIRTIO_TLS_SOL_SOCKET && wire::sockopt_route(level, optname) == SockOptRoute::Guest {
            assert!(
                matches!(answer, Disposition::Own | Disposition::Protocol | Disposition::Fail(_)),
                "guest-routed SOL_SOCKET {optname} reached the host: {answer:?}"
            );
        }
        if level == wire::VIRTIO_TLS_SOL_IPV6 && family == Family::Inet {
            assert!(matches!(answer, Disposition::Fail(_)), "IPPROTO_IPV6 {optname} on AF_INET: {answer:?}");
        }
        if access == Access::Get && answer == Disposition::Refused {
            assert!(matches!(optname, 64..=67 | 80 | 96..=99 | 128..=133 | 0x480..=0x4ff), "reading {optname} refused");
        }
        match (answer, access) {
            (Disposition::Host, Access::Set) => {
                if sockopt::set_raw(stand_in.as_fd(), level, optname, value).is_ok() {
                    kept.keep(level, optname, value);
                }
            }
            (Disposition::Host, Access::Get) => {
                if let Ok(read) = sockopt::get_raw(stand_in.as_fd(), level, optname, value.len()) {
                    assert!(read.len() <= value.len(), "GET wrote {} bytes into {}", read.len(), value.len());
                }
            }
            (Disposition::Protocol, Access::Get) => assert!(protocol_value(level, value.len()).len() <= value.len()),
            _ => {}
        }
        assert!(kept.iter().all(|option| option.value.len() <= MAX_KEPT_VALUE));
    }
    // What a host socket created later gets: every kept option applies.
    let Ok(fresh) = sockopt::stand_in(family) else { return };
    for option in kept.iter() {
        let result = sockopt::set_raw(fresh.as_fd(), option.level, option.optname, &option.value);
        assert!(result.is_ok(), "kept option {} at {} does not apply again: {result:?}", option.optname, option.level);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&policy_selector, records)) = input.split_first() else { return };
    if policy_selector & 2 != 0 {
        let family = if policy_selector & 4 != 0 { Family::Inet6 } else { Family::Inet };
        return other_levels(family, records);
    }
    let policy = &policies()[usize::from(policy_selector & 1)];
    let mut options = SocketOptions::default();
    for (kind, value) in Records::new(records) {
        let phase = if kind & 1 == 0 { Phase::Unconnected } else { Phase::Connected };
        let optname = option_number(kind >> 1);
        let before = (readable(&options, policy), has_identity(&options));
        let result = options.set(policy, phase, optname, value);
        let after = (readable(&options, policy), has_identity(&options));
        if result.is_err() {
            assert_eq!(before, after, "a refused TLS option {optname} changed the socket");
        }
        if phase == Phase::Connected {
            assert!(result.is_err(), "option {optname} changed after connecting");
        }
        let (min, max) = options.version_range(policy);
        assert!(min <= max, "option {optname} left no version to negotiate");
        assert!(min >= policy.min_version && max <= policy.max_version, "option {optname} widened the policy's versions");
        for owned in [wire::TLS_HOSTNAME, wire::TLS_VERSION_MIN, wire::TLS_VERSION_MAX, wire::TLS_ALPN, wire::TLS_CONTEXT] {
            assert!(options.get(policy, owned).is_some(), "option {owned} cannot be read back");
        }
        if result.is_ok() && optname == wire::TLS_HOSTNAME {
            let name = options.hostname().expect("set just now");
            assert!(!name.is_empty() && name.len() <= tls_engine::options::MAX_HOSTNAME_LEN, "host name {name:?}");
        }
    }
});
