//! Socket options at other levels (spec 2.6.10, issue 15) through the real
//! vhost-user socket: what the guest sets with SETSOCKOPT must be on the
//! host's TCP socket. The checks read that socket itself: the device runs
//! in this process, so the test takes a duplicate of the device's
//! descriptor (pidfd_getfd) by its addresses and asks the kernel, never
//! the device.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::net::sockopt;
use tls_engine::Errno;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);
const TCP: u32 = wire::VIRTIO_TLS_SOL_TCP;
const IP: u32 = wire::VIRTIO_TLS_SOL_IP;
const IPV6: u32 = wire::VIRTIO_TLS_SOL_IPV6;
const SOCKET: u32 = wire::VIRTIO_TLS_SOL_SOCKET;

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

fn as_std(addr: &rustix::net::SocketAddrAny) -> Option<SocketAddr> {
    SocketAddr::try_from(addr.clone()).ok()
}

/// A duplicate of this process's TCP socket that matches `wanted` (its
/// local and peer addresses), waiting for it up to a few seconds.
fn host_socket(wanted: impl Fn(Option<SocketAddr>, Option<SocketAddr>) -> bool) -> OwnedFd {
    let me = rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty()).expect("pidfd_open");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            if !target.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(dup) = rustix::process::pidfd_getfd(&me, fd, rustix::process::PidfdGetfdFlags::empty()) else { continue };
            let local = rustix::net::getsockname(&dup).ok().and_then(|a| as_std(&a));
            let peer = rustix::net::getpeername(&dup).ok().flatten().and_then(|a| as_std(&a));
            if wanted(local, peer) {
                return dup;
            }
        }
        assert!(Instant::now() < deadline, "no host socket of the device matches");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host connection the device made to `server`.
fn host_connection_to(server: SocketAddr) -> OwnedFd {
    host_socket(|_, peer| peer == Some(server))
}

fn tls_peer(bed: &Testbed) -> RustlsServer {
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo)
}

fn linger(on: i32, seconds: i32) -> Vec<u8> {
    [on.to_le_bytes(), seconds.to_le_bytes()].concat()
}

#[test]
fn options_set_before_connect_are_on_the_host_connection() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let server = tls_peer(&bed);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_int_option(id, TCP, wire::TCP_NODELAY, 1).unwrap();
    device.set_int_option(id, SOCKET, wire::SO_KEEPALIVE, 1).unwrap();
    device.set_int_option(id, TCP, wire::TCP_KEEPIDLE, 17).unwrap();
    device.set_int_option(id, TCP, wire::TCP_USER_TIMEOUT, 12_345).unwrap();
    device.set_socket_option(id, SOCKET, wire::SO_LINGER, &linger(1, 3)).unwrap();
    device.set_int_option(id, IP, wire::IP_TOS, 0x10).unwrap();
    // Before the connection the device answers from its stand-in socket.
    assert_eq!(device.get_int_option(id, TCP, wire::TCP_KEEPIDLE), Ok(17));
    assert_eq!(device.get_int_option(id, IP, wire::IP_TOS), Ok(0x10));

    device.connect(id, addr_of(server.addr), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    let host = host_connection_to(server.addr);
    assert!(sockopt::tcp_nodelay(&host).unwrap(), "TCP_NODELAY on the host socket");
    assert!(sockopt::socket_keepalive(&host).unwrap(), "SO_KEEPALIVE on the host socket");
    assert_eq!(sockopt::tcp_keepidle(&host).unwrap(), Duration::from_secs(17));
    assert_eq!(sockopt::tcp_user_timeout(&host).unwrap(), 12_345);
    assert_eq!(sockopt::socket_linger(&host).unwrap(), Some(Duration::from_secs(3)));
    assert_eq!(sockopt::ip_tos(&host).unwrap(), 0x10);

    // GETSOCKOPT reads the host socket, not what the guest set: change it
    // behind the device's back and the guest sees the change.
    sockopt::set_tcp_nodelay(&host, false).unwrap();
    assert_eq!(device.get_int_option(id, TCP, wire::TCP_NODELAY), Ok(0));
    // Set on an established connection: at once.
    device.set_int_option(id, TCP, wire::TCP_NODELAY, 1).unwrap();
    assert!(sockopt::tcp_nodelay(&host).unwrap());
    device.set_int_option(id, TCP, wire::TCP_KEEPIDLE, 99).unwrap();
    assert_eq!(sockopt::tcp_keepidle(&host).unwrap(), Duration::from_secs(99));

    // TCP_INFO is the host connection's: tcpi_state is TCP_ESTABLISHED (1).
    let info = device.get_socket_option(id, TCP, wire::TCP_INFO, 512).unwrap();
    assert!(info.len() >= 104, "struct tcp_info, {} bytes", info.len());
    assert_eq!(info[0], 1, "tcpi_state");
    assert_eq!(device.get_socket_option(id, TCP, wire::TCP_INFO, 8).unwrap().len(), 8, "cut to the room given");
    device.close(id).unwrap();
}

#[test]
fn bad_values_refusals_and_unknown_options_answer_as_the_spec_says() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    // Linux's validation for a TCP socket.
    assert_eq!(device.set_socket_option(id, SOCKET, wire::SO_LINGER, &[1, 0, 0, 0]), Err(Errno::EINVAL));
    assert_eq!(device.set_socket_option(id, TCP, wire::TCP_NODELAY, &[1, 0]), Err(Errno::EINVAL));
    assert_eq!(device.set_int_option(id, TCP, wire::TCP_KEEPIDLE, 0), Err(Errno::EINVAL));
    assert_eq!(device.set_int_option(id, TCP, wire::TCP_KEEPCNT, 128), Err(Errno::EINVAL));
    assert_eq!(device.set_int_option(id, TCP, wire::TCP_MAXSEG, 10), Err(Errno::EINVAL));
    assert_eq!(device.set_int_option(id, TCP, wire::TCP_INFO, 1), Err(Errno::ENOPROTOOPT), "read-only for TCP too");
    // Malformed requests.
    let request = |len, reserved| wire::SockOptRequest { level: TCP, optname: wire::TCP_NODELAY, len, reserved };
    assert_eq!(device.raw_socket_option(wire::VIRTIO_TLS_OP_SETSOCKOPT, id, request(4, 1), &[1, 0, 0, 0]), Err(Errno::EINVAL));
    assert_eq!(device.raw_socket_option(wire::VIRTIO_TLS_OP_SETSOCKOPT, id, request(8, 0), &[1, 0, 0, 0]), Err(Errno::EINVAL));
    assert_eq!(device.raw_socket_option(wire::VIRTIO_TLS_OP_GETSOCKOPT, id, request(4, 1), &[]), Err(Errno::EINVAL));
    assert_eq!(device.set_int_option(9999, TCP, wire::TCP_NODELAY, 1), Err(Errno::EBADF));
    // Refused by policy, whatever the value.
    for (level, optname, value) in [
        (SOCKET, wire::SO_BINDTODEVICE, b"lo\0".to_vec()),
        (SOCKET, wire::SO_MARK, 7i32.to_le_bytes().to_vec()),
        (SOCKET, wire::SO_PRIORITY, 7i32.to_le_bytes().to_vec()),
        (IP, wire::IP_TRANSPARENT, 1i32.to_le_bytes().to_vec()),
        (IP, wire::IP_FREEBIND, 1i32.to_le_bytes().to_vec()),
        (IP, wire::IP_OPTIONS, vec![1, 1, 1, 0]),
        (TCP, wire::TCP_CONGESTION, b"reno".to_vec()),
        (TCP, wire::TCP_ULP, b"tls".to_vec()),
        (IP, 64, vec![0; 40]),
    ] {
        assert_eq!(device.set_socket_option(id, level, optname, &value), Err(Errno::EPERM), "level {level} option {optname}");
    }
    assert_eq!(device.set_int_option(id, SOCKET, wire::SO_PRIORITY, 6), Ok(()), "unprivileged priorities reach the host");
    // ENOPROTOOPT as a TCP socket answers.
    assert_eq!(device.set_int_option(id, TCP, 99, 1), Err(Errno::ENOPROTOOPT));
    assert_eq!(device.get_socket_option(id, IP, 27, 4), Err(Errno::ENOPROTOOPT));
    assert_eq!(device.set_int_option(id, 200, 1, 1), Err(Errno::ENOPROTOOPT));
    assert_eq!(device.set_int_option(id, IPV6, wire::IPV6_V6ONLY, 1), Err(Errno::ENOPROTOOPT), "an AF_INET socket");
    assert_eq!(device.set_int_option(id, SOCKET, wire::SO_RCVBUF, 1), Err(Errno::ENOPROTOOPT), "the guest's own");
    // Decided differences: the protocol is IPPROTO_TLS.
    assert_eq!(device.get_int_option(id, IP, wire::IP_PROTOCOL), Ok(wire::IPPROTO_TLS as i32));
    assert_eq!(device.set_int_option(id, TCP, wire::TCP_INQ, 1), Err(Errno::EOPNOTSUPP));
    // Fresh TCP socket values before anything was set.
    assert_eq!(device.get_int_option(id, TCP, wire::TCP_NODELAY), Ok(0));
    assert_eq!(device.get_socket_option(id, TCP, wire::TCP_CONGESTION, 16).map(|v| !v.is_empty()), Ok(true));

    let metrics = bed.server.metrics();
    let refused = metrics.lines().find_map(|l| l.strip_prefix("vhost_tls_sockopt_refused_total ")).expect("counter");
    assert_eq!(refused, "9", "every refusal counted");
    device.close(id).unwrap();
}

#[test]
fn ipv6_sockets_take_ipv6_options() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET6).unwrap();
    device.set_int_option(id, IPV6, wire::IPV6_TCLASS, 0x20).unwrap();
    assert_eq!(device.get_int_option(id, IPV6, wire::IPV6_TCLASS), Ok(0x20));
    device.set_int_option(id, IPV6, wire::IPV6_V6ONLY, 1).unwrap();
    assert_eq!(device.get_int_option(id, IPV6, wire::IPV6_V6ONLY), Ok(1));
    assert_eq!(device.set_socket_option(id, IPV6, wire::IPV6_RTHDR, &[0; 8]), Err(Errno::EPERM));
    // IPPROTO_IP options on an IPv6 socket, as Linux takes them.
    device.set_int_option(id, IP, wire::IP_TOS, 0x08).unwrap();
    device.close(id).unwrap();
}

const GUEST_PORT: u16 = 8443;

fn server_bed() -> (Testbed, SocketAddr) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let policy = format!(
        r#"{LOOPBACK_POLICY}
[[server.listen]]
guest_port = {GUEST_PORT}
host = "127.0.0.1:{port}"

[[server.identities]]
certificate_chain = "www.pem"
private_key = "www.key"
"#
    );
    let bed = Testbed::start_with_files(&policy, 1, |ca: &TestCa, dir: &Path| {
        ca.issue(&["www.test", "127.0.0.1"], Validity::Current).write_to(dir, "www").unwrap();
    });
    (bed, format!("127.0.0.1:{port}").parse().unwrap())
}

#[test]
fn options_before_bind_decide_the_listener_and_accepted_connections_inherit() {
    let (bed, host) = server_bed();
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_int_option(id, SOCKET, wire::SO_REUSEPORT, 1).unwrap();
    device.set_int_option(id, SOCKET, wire::SO_REUSEADDR, 1).unwrap();
    device.set_int_option(id, TCP, wire::TCP_NODELAY, 1).unwrap();
    device.set_int_option(id, TCP, wire::TCP_DEFER_ACCEPT, 5).unwrap();
    device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap_or_else(|e| panic!("bind: {e}: {}", device.tls_error(id)));
    let listener = host_socket(|local, peer| local == Some(host) && peer.is_none());
    assert!(sockopt::socket_reuseport(&listener).unwrap(), "SO_REUSEPORT before the bind");
    assert_eq!(device.get_int_option(id, SOCKET, wire::SO_REUSEPORT), Ok(1), "read from the host listener");
    // SO_REUSEPORT took effect: another socket of this user binds the
    // same address (it could not without it on both).
    let other = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
    sockopt::set_socket_reuseport(&other, true).unwrap();
    rustix::net::bind(&other, &host).expect("a second SO_REUSEPORT socket binds the device's host address");
    drop(other);

    device.listen(id, 8).unwrap();
    // TCP_DEFER_ACCEPT is read back as Linux rounds it (to retransmissions).
    assert!(device.get_int_option(id, TCP, wire::TCP_DEFER_ACCEPT).unwrap() >= 5);
    let client = TcpStream::connect(host).unwrap();
    let accepted = host_socket(|local, peer| local == Some(host) && peer == Some(client.local_addr().unwrap()));
    assert!(sockopt::tcp_nodelay(accepted.as_fd()).unwrap(), "the accepted host connection inherits TCP_NODELAY");
    device.close(id).unwrap();
}

#[test]
fn a_listener_without_reuseport_keeps_its_address() {
    let (bed, host) = server_bed();
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    assert_eq!(device.get_int_option(id, SOCKET, wire::SO_REUSEPORT), Ok(0));
    let other = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
    sockopt::set_socket_reuseport(&other, true).unwrap();
    assert_eq!(rustix::net::bind(&other, &host), Err(rustix::io::Errno::ADDRINUSE));
    device.close(id).unwrap();
}

/// A TLS peer that completes its handshake and then never reads, so what
/// the device sends piles up unacknowledged in the host's send queue.
fn stalled_peer(bed: &Testbed) -> SocketAddr {
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut tls = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while tls.is_handshaking() {
            if tls.complete_io(&mut tcp).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(120));
        drop(tcp);
    });
    addr
}

#[test]
fn a_guest_linger_never_blocks_the_device() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let peer = stalled_peer(&bed);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_socket_option(id, SOCKET, wire::SO_LINGER, &linger(1, 30)).unwrap();
    device.connect(id, addr_of(peer), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    // Fill the peer's window, the host's send buffer and the device's.
    let chunk = vec![0x5a; 64 * 1024];
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(700) {
        if device.try_send(id, &chunk).unwrap() > 0 {
            last_progress = Instant::now();
        } else {
            device.poll(Duration::from_millis(20));
        }
    }
    let host = host_connection_to(peer);
    assert!(sockopt::socket_linger(&host).unwrap().is_some(), "the guest's SO_LINGER is on the host socket");
    drop(host);
    // The front end goes (QEMU quits): the device closes the host socket
    // with unsent data. Linux's close() would wait out the 30 s linger,
    // on the device's only worker thread.
    let closing = Instant::now();
    drop(device);
    bed.server.wait().unwrap();
    drop(bed);
    assert!(closing.elapsed() < Duration::from_secs(10), "the device took {:?} to close", closing.elapsed());
}
