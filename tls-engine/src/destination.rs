//! Where a socket may connect: the guest names a destination, the policy
//! decides whether any rule could allow the name before the host resolves
//! it, and then for every address before any packet is sent.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::errno::{Errno, Failure};
use crate::policy::{Policy, Verdict};

/// A destination as a program names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Address(SocketAddr),
    Name { host: String, port: u16 },
}

impl Destination {
    /// The host name for certificate verification when the program set no
    /// TLS_HOSTNAME: the name it connected to, or the IP address itself.
    pub fn server_name(&self) -> String {
        match self {
            Destination::Address(addr) => addr.ip().to_string(),
            Destination::Name { host, .. } => host.clone(),
        }
    }

    /// Whether resolving needs the (blocking) system resolver.
    pub fn needs_resolution(&self) -> bool {
        match self {
            Destination::Address(_) => false,
            Destination::Name { host, .. } => host.parse::<IpAddr>().is_err(),
        }
    }
}

/// Refuses a name that no rule could allow, before anything is resolved:
/// such a name costs no DNS query and tells the guest nothing about it.
/// Addresses, and names some rule may allow, pass.
pub fn refuse_before_resolution(
    policy: &Policy,
    destination: &Destination,
    server_name: Option<&str>,
) -> Result<(), Failure> {
    let Destination::Name { host, port } = destination else { return Ok(()) };
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match policy.destinations.check_name(host, server_name, *port) {
        Verdict::Deny(reason) => Err(Failure::new(Errno::EACCES, format!("connecting to '{host}' is not allowed: {reason}"))),
        Verdict::Allow => Ok(()),
    }
}

/// Resolves `destination` on the host (this blocks for names: call it off
/// the I/O thread) and keeps the addresses the policy allows, in resolver
/// order. Fails with EACCES when the policy denies every address (or, for
/// a name, any address it could resolve to: then it is not resolved), and
/// with EHOSTUNREACH when the name does not resolve. `server_name` is the
/// socket's TLS_HOSTNAME, if set: the policy's host rules see it too, so a
/// guest cannot reach a denied host by connecting to its address.
pub fn resolve(policy: &Policy, destination: &Destination, server_name: Option<&str>) -> Result<Vec<SocketAddr>, Failure> {
    resolve_with(policy, destination, server_name, |host, port| (host, port).to_socket_addrs().map(Iterator::collect))
}

/// [`resolve`] with `lookup` as the host's resolver.
pub fn resolve_with(
    policy: &Policy,
    destination: &Destination,
    server_name: Option<&str>,
    lookup: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> Result<Vec<SocketAddr>, Failure> {
    let (hostname, candidates) = match destination {
        Destination::Address(addr) => (None, vec![*addr]),
        Destination::Name { host, port } => {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, *port)],
                Err(_) => {
                    refuse_before_resolution(policy, destination, server_name)?;
                    lookup(host, *port).map_err(|e| Failure::new(Errno::EHOSTUNREACH, format!("cannot resolve '{host}': {e}")))?
                }
            };
            if addrs.is_empty() {
                return Err(Failure::new(Errno::EHOSTUNREACH, format!("'{host}' has no addresses")));
            }
            (Some(host.as_str()), addrs)
        }
    };
    filter_allowed(policy, hostname, server_name, candidates)
}

/// Keeps the addresses the policy allows; EACCES naming the first denial
/// when none is left: with the address when the guest gave it, with the
/// name when the host resolved it (what it resolved to is not the guest's
/// to learn).
pub fn filter_allowed(
    policy: &Policy,
    hostname: Option<&str>,
    server_name: Option<&str>,
    candidates: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Failure> {
    let mut first_denial = None;
    let mut allowed = Vec::with_capacity(candidates.len());
    for addr in candidates {
        match policy.destinations.check_with_server_name(hostname, server_name, addr.ip(), addr.port()) {
            Verdict::Allow => allowed.push(addr),
            Verdict::Deny(reason) => {
                first_denial.get_or_insert_with(|| match hostname {
                    Some(name) => format!("connecting to '{name}' (port {}) is not allowed: {reason}", addr.port()),
                    None => format!("connecting to {addr} is not allowed: {reason}"),
                });
            }
        }
    }
    if allowed.is_empty() {
        let reason = first_denial.unwrap_or_else(|| "no destination address".to_owned());
        return Err(Failure::new(Errno::EACCES, reason));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_is_denied_by_default() {
        let policy = Policy::builtin_default();
        let err = resolve(&policy, &Destination::Address("127.0.0.1:443".parse().unwrap()), None).unwrap_err();
        assert_eq!(err.errno, Errno::EACCES);
        assert!(err.reason.contains("127.0.0.1:443"), "{}", err.reason);
        let err = resolve(&policy, &Destination::Name { host: "::1".into(), port: 443 }, None).unwrap_err();
        assert_eq!(err.errno, Errno::EACCES);
    }

    #[test]
    fn a_claimed_name_cannot_dodge_a_deny_rule() {
        let text = r#"
[destinations]
default = "allow"
[[destinations.rules]]
action = "deny"
hosts = ["blocked.example"]
[[destinations.rules]]
action = "allow"
addresses = ["127.0.0.0/8"]
"#;
        let policy = Policy::from_toml_str(text, "test", std::path::Path::new(".")).unwrap();
        let address = Destination::Address("127.0.0.1:443".parse().unwrap());
        assert!(resolve(&policy, &address, None).is_ok());
        assert!(resolve(&policy, &address, Some("fine.example")).is_ok());
        let err = resolve(&policy, &address, Some("Blocked.Example.")).unwrap_err();
        assert_eq!(err.errno, Errno::EACCES);
        assert!(err.reason.contains("rule 1"), "{}", err.reason);
    }

    #[test]
    fn names_no_rule_allows_are_not_resolved_and_answers_are_not_told() {
        let text = r#"
[destinations]
default = "deny"
[[destinations.rules]]
action = "allow"
hosts = ["allowed.test"]
"#;
        let policy = Policy::from_toml_str(text, "test", std::path::Path::new(".")).unwrap();
        let counter = std::cell::Cell::new(0);
        let lookups = &counter;
        let answer = |addr: &str| {
            let addr: IpAddr = addr.parse().unwrap();
            move |_: &str, port: u16| {
                lookups.set(lookups.get() + 1);
                Ok(vec![SocketAddr::new(addr, port)])
            }
        };
        let probe = Destination::Name { host: "probe.invalid".into(), port: 443 };
        let err = resolve_with(&policy, &probe, None, answer("192.0.2.9")).unwrap_err();
        assert_eq!(err.errno, Errno::EACCES);
        assert_eq!(lookups.get(), 0, "no DNS query for a name no rule allows");
        assert!(err.reason.contains("default is deny") && err.reason.contains("probe.invalid"), "{}", err.reason);
        // A name a rule allows is resolved; what it resolved to is not told.
        let allowed = Destination::Name { host: "allowed.test".into(), port: 443 };
        for (address, why) in [("169.254.169.254", "host-local"), ("127.0.0.1", "host-local")] {
            let err = resolve_with(&policy, &allowed, None, answer(address)).unwrap_err();
            assert_eq!(err.errno, Errno::EACCES);
            assert!(err.reason.contains(why) && !err.reason.contains(address), "{}", err.reason);
        }
        assert_eq!(lookups.get(), 2);
        assert_eq!(resolve_with(&policy, &allowed, None, answer("192.0.2.9")).unwrap(), vec!["192.0.2.9:443".parse().unwrap()]);
    }

    #[test]
    fn server_names() {
        assert_eq!(Destination::Address("[::1]:5".parse().unwrap()).server_name(), "::1");
        assert!(!Destination::Name { host: "10.0.0.1".into(), port: 1 }.needs_resolution());
        assert!(Destination::Name { host: "localhost".into(), port: 1 }.needs_resolution());
    }
}
