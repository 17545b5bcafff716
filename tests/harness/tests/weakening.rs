//! A guest cannot weaken the operator's policy (issue 6.3): every option
//! that would loosen versions, cipher suites, verification or destinations
//! is refused, and the connection it aimed at still fails. One test per
//! option; the options that tighten are tested where they are used.

use std::net::SocketAddr;
use std::time::Duration;

use tls_engine::Errno;
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, OpensslServer, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

/// A socket named "localhost", with `optname` = `value` refused as
/// `expected`; then connects it to `server` and returns the outcome.
fn refused_then_connect(device: &mut TlsDevice, optname: u32, value: &[u8], expected: Errno, server: SocketAddr) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    assert_eq!(device.set_option(id, optname, value), Err(expected), "option {optname}");
    let result = device.connect(id, addr_of(server), TIMEOUT);
    (id, result)
}

#[test]
fn version_min_cannot_go_below_the_policy() {
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("min_version = \"1.2\"", "min_version = \"1.3\""));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS12], Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) = refused_then_connect(&mut device, wire::TLS_VERSION_MIN, &wire::TLS_1_2.to_le_bytes(), Errno::EPERM, server.addr);
    assert_eq!(result, Err(Errno::EPROTO), "the TLS 1.2 server stays out of reach");
    assert_eq!(device.get_option(id, wire::TLS_VERSION_MIN, 4).unwrap(), wire::TLS_1_3.to_le_bytes());
}

#[test]
fn version_max_cannot_go_above_the_policy() {
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("max_version = \"1.3\"", "max_version = \"1.2\""));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) = refused_then_connect(&mut device, wire::TLS_VERSION_MAX, &wire::TLS_1_3.to_le_bytes(), Errno::EPERM, server.addr);
    assert_eq!(result, Err(Errno::EPROTO), "the TLS 1.3-only server stays out of reach");
    assert_eq!(device.get_option(id, wire::TLS_VERSION_MAX, 4).unwrap(), wire::TLS_1_2.to_le_bytes());
}

#[test]
fn trusted_peer_certificates_cannot_add_trust() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let stranger = TestCa::new("a root the operator does not trust");
    let identity = stranger.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) =
        refused_then_connect(&mut device, wire::TLS_TRUSTED_PEER_CERTIFICATES, stranger.cert_pem().as_bytes(), Errno::EOPNOTSUPP, server.addr);
    assert_eq!(result, Err(Errno::EPROTO));
    assert!(device.tls_error(id).contains("not issued by a trusted authority"), "{}", device.tls_error(id));
}

#[test]
fn enable_cipher_cannot_add_a_suite() {
    let policy = LOOPBACK_POLICY.replace("max_version = \"1.3\"", "max_version = \"1.3\"\ncipher_suites = [\"TLS_AES_256_GCM_SHA384\", \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]");
    let bed = Testbed::start(&policy);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let (cert, key) = identity.write_to(bed.dir(), "chacha").unwrap();
    let server = OpensslServer::start("127.0.0.1:0", &cert, &key, &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "-www"]).unwrap();
    let mut device = bed.driver();
    let (id, result) = refused_then_connect(&mut device, wire::TLS_ENABLE_CIPHER, b"TLS_CHACHA20_POLY1305_SHA256", Errno::EOPNOTSUPP, server.addr);
    assert_eq!(result, Err(Errno::EPROTO), "no suite in common with a ChaCha20-only server");
    assert!(!device.tls_error(id).is_empty());
}

#[test]
fn trusted_ciphers_cannot_replace_the_policy_list() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.set_option(id, wire::TLS_TRUSTED_CIPHERS, b"TLS_RSA_WITH_RC4_128_SHA"), Err(Errno::EOPNOTSUPP));
}

#[test]
fn revocation_checks_cannot_be_turned_off() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.set_option(id, wire::TLS_REVOCATION_CHECKS, &0u32.to_le_bytes()), Err(Errno::EOPNOTSUPP));
}

#[test]
fn a_claimed_host_name_cannot_reach_a_denied_host() {
    let policy = LOOPBACK_POLICY.replace(
        "[[destinations.rules]]",
        "[[destinations.rules]]\naction = \"deny\"\nhosts = [\"blocked.test\"]\n\n[[destinations.rules]]",
    );
    let bed = Testbed::start(&policy);
    let identity = bed.ca.issue(&["blocked.test", "localhost", "127.0.0.1"], Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();
    // By address, claiming the denied name for verification.
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"Blocked.Test.").unwrap();
    assert_eq!(device.connect(id, addr_of(server.addr), TIMEOUT), Err(Errno::EACCES));
    assert!(device.tls_error(id).contains("rule 1"), "{}", device.tls_error(id));
    // The same address without the claim is fine.
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    device.connect(id, addr_of(server.addr), TIMEOUT).unwrap_or_else(|e| panic!("{e}: {}", device.tls_error(id)));
}

#[test]
fn own_certificates_need_the_policys_consent() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&["app.test"], Validity::Current);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.set_option(id, wire::TLS_CERTIFICATE_CHAIN, identity.cert_pem.as_bytes()), Err(Errno::EPERM));
    assert_eq!(device.set_option(id, wire::TLS_PRIVATE_KEY, identity.key_pem.as_bytes()), Err(Errno::EPERM));
}
