//! Destination policy holes (issue 14.5), through the device: the host's
//! own interface addresses are host-local; an allow rule by name does not
//! open host-local addresses; a name no rule could allow is refused before
//! the host resolves it, and TLS_ERROR never tells what a name resolved to.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use tls_engine::destination::{self, Destination};
use tls_engine::{Errno, Policy};
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::testbed::Testbed;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(30);

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

/// Whether `reason` mentions any of `addresses` (an IPv6 address in any
/// of its spellings is caught by its compressed form, which Display uses).
fn mentions_an_address(reason: &str, addresses: &[&str]) -> bool {
    addresses.iter().any(|address| reason.contains(address))
}

fn connect_by_name(device: &mut TlsDevice, name: &str, port: u16) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let result = device.connect(id, SockAddr::hostname(name.as_bytes(), port).unwrap(), TIMEOUT);
    (id, result)
}

#[test]
fn a_name_no_rule_could_allow_is_refused_without_telling_its_addresses() {
    let policy = r#"
[trust]
ca_files = ["ca.pem"]
[destinations]
default = "deny"
[[destinations.rules]]
action = "allow"
hosts = ["allowed.test"]
"#;
    let bed = Testbed::start(policy);
    let mut device = bed.driver();
    // localhost resolves from /etc/hosts (no query leaves the machine
    // whatever the code does); no rule could allow it, so the backend must
    // not look it up, and TLS_ERROR names the default that decided.
    let (id, result) = connect_by_name(&mut device, "localhost", 443);
    assert_eq!(result, Err(Errno::EACCES));
    let reason = device.tls_error(id);
    assert!(reason.contains("default is deny"), "{reason}");
    // And CONNECT itself answers, as for a denied address: no resolver
    // thread and no CONNECT_DONE to wait for.
    let again = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.start_connect(again, SockAddr::hostname(b"localhost", 443).unwrap()), Err(Errno::EACCES));
    assert!(!mentions_an_address(&reason, &["127.0.0.1", "::1"]), "TLS_ERROR tells what localhost resolved to: {reason}");
}

#[test]
fn an_allow_rule_by_name_does_not_open_host_local_addresses() {
    // Listens on loopback so that a wrong verdict ends in a connect to
    // loopback only, never elsewhere.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = r#"
[trust]
ca_files = ["ca.pem"]
[destinations]
default = "deny"
[[destinations.rules]]
action = "allow"
hosts = ["localhost"]
"#;
    let bed = Testbed::start(policy);
    let mut device = bed.driver();
    let (id, result) = connect_by_name(&mut device, "localhost", port);
    let reason = device.tls_error(id);
    assert_eq!(result, Err(Errno::EACCES), "{reason}");
    assert!(reason.contains("host-local"), "{reason}");
    assert!(!mentions_an_address(&reason, &["127.0.0.1", "::1"]), "TLS_ERROR tells what localhost resolved to: {reason}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "a connection reached the listener");
}

/// This host's interface addresses as the kernel lists them in /proc
/// (independently of the backend's getifaddrs): the IPv4 addresses of the
/// local routing table (`/32 host LOCAL` in fib_trie) and every IPv6 one.
fn interface_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse::<IpAddr>().ok();
        } else if line.starts_with("/32 host LOCAL") {
            addresses.extend(last);
        }
    }
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in inet6.lines() {
        let hex = line.split_whitespace().next().unwrap_or_default();
        if let Ok(bits) = u128::from_str_radix(hex, 16) {
            addresses.push(IpAddr::V6(bits.into()));
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

#[test]
fn the_hosts_own_interface_addresses_are_denied_by_default() {
    let policy_text = r#"
[trust]
ca_files = ["ca.pem"]
[destinations]
default = "allow"
"#;
    let bed = Testbed::start(policy_text);
    let policy = Policy::from_toml_str(policy_text, "test", bed.dir()).unwrap();
    let own: Vec<IpAddr> = interface_addresses()
        .into_iter()
        .filter(|addr| !addr.is_loopback() && !matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    eprintln!("this host's addresses besides loopback and link-local: {own:?}");
    if own.is_empty() {
        eprintln!("this machine has no interface address besides loopback and link-local: nothing to check");
        return;
    }
    let mut device = bed.driver();
    for addr in own {
        // Port 9 (discard): nothing should be listening even if a connect
        // went out. It must not: the engine's own check comes first, so a
        // backend that would allow the address fails here, before the
        // device is asked to connect anywhere but loopback.
        let target = SocketAddr::new(addr, 9);
        let verdict = destination::resolve(&policy, &Destination::Address(target), None);
        let failure = verdict.expect_err(&format!("{addr} is one of this host's addresses, but the policy allows it"));
        assert_eq!(failure.errno, Errno::EACCES);
        let family = if addr.is_ipv4() { wire::VIRTIO_TLS_AF_INET } else { wire::VIRTIO_TLS_AF_INET6 };
        let id = device.create(family).unwrap();
        assert_eq!(device.start_connect(id, addr_of(target)), Err(Errno::EACCES), "{addr}: refused at CONNECT, before any packet");
        let reason = device.tls_error(id);
        assert!(reason.contains("host-local"), "{addr}: {reason}");
        device.close(id).unwrap();
    }
}
