//! `SocketOptions::set` and `get` for every option number, with values of
//! any length and content, before and after connecting, under a policy
//! that allows application identities and one that does not. Input:
//! records; the kind byte's low bit is the phase, the next bit the policy,
//! the rest selects the option number (`option_number`).
//!
//! Checked: a refused value changes nothing (SSA: setsockopt fails
//! without effect); the socket's version range stays inside the policy's
//! and non-empty; every option a socket owns can be read back.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tls_engine::options::{Phase, SocketOptions};
use tls_engine::{Policy, TlsVersion};
use vhost_tls_fuzz::{option_number, Records, OPTION_NUMBERS};
use virtio_tls_spec as wire;

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

fuzz_target!(|input: &[u8]| {
    let Some((&policy_selector, records)) = input.split_first() else { return };
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
