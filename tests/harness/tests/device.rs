//! The vhost-tls backend driven end to end through a real vhost-user
//! socket by the harness acting as the guest driver, against real TLS peers
//! on loopback (a rustls server in the test and `openssl s_server`).

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tls_engine::Errno;
use vhost_tls_harness::driver::{Recv, TlsDevice};
use vhost_tls_harness::peers::{Behaviour, OpensslServer, Pattern, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

fn tls13() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13]
}

fn both_versions() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

fn family_of(addr: SocketAddr) -> u16 {
    if addr.is_ipv4() {
        wire::VIRTIO_TLS_AF_INET
    } else {
        wire::VIRTIO_TLS_AF_INET6
    }
}

/// Connects a new socket to `addr`, verifying the peer as `hostname`.
fn connect(device: &mut TlsDevice, addr: SocketAddr, hostname: Option<&str>) -> (u32, Result<(), Errno>) {
    let id = device.create(family_of(addr)).expect("create");
    if let Some(name) = hostname {
        device.set_option(id, wire::TLS_HOSTNAME, name.as_bytes()).expect("TLS_HOSTNAME");
    }
    let result = device.connect(id, addr_of(addr), TIMEOUT);
    (id, result)
}

fn echo_round_trip(device: &mut TlsDevice, id: u32, message: &[u8]) {
    device.send_all(id, message, TIMEOUT).expect("send");
    let reply = device.read_exact(id, message.len(), TIMEOUT).expect("echo");
    assert_eq!(reply, message);
}

#[test]
fn rustls_echo_with_handshake_details() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let mut device = bed.driver();

    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    assert_eq!(device.get_option(id, wire::TLS_CHOSEN_VERSION, 4).unwrap(), wire::TLS_1_3.to_le_bytes());
    let cipher = String::from_utf8(device.get_option(id, wire::TLS_CHOSEN_CIPHER, 64).unwrap()).unwrap();
    assert!(cipher.starts_with("TLS_AES_") || cipher.starts_with("TLS_CHACHA20"), "{cipher}");
    let peer = String::from_utf8(device.get_option(id, wire::TLS_PEER_IDENTITY, 256).unwrap()).unwrap();
    assert!(peer.contains("CN=localhost"), "{peer}");
    assert_eq!(device.get_option(id, wire::TLS_HOSTNAME, 64).unwrap(), b"localhost");
    assert_eq!(device.get_option(id, wire::TLS_ID, 8).unwrap(), u64::from(id).to_le_bytes());
    // A second connect on a connected socket.
    assert_eq!(device.connect(id, addr_of(server.addr), TIMEOUT), Err(Errno::EISCONN));
    // Handshake parameters are fixed once connected.
    assert_eq!(device.set_option(id, wire::TLS_HOSTNAME, b"other.test"), Err(Errno::EISCONN));

    echo_round_trip(&mut device, id, b"hello through virtio-tls");
    echo_round_trip(&mut device, id, &vec![0x5a; 200_000]);

    // SHUT_WR sends close_notify: the echo server answers with its own.
    device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR).unwrap();
    assert_eq!(device.recv(id, 1024, TIMEOUT), Recv::Eof);
    device.close(id).unwrap();
    assert_eq!(device.set_option(id, wire::TLS_HOSTNAME, b"x.test"), Err(Errno::EBADF));
    bed.wait_until_no_sockets();
}

#[test]
fn connect_by_hostname_is_resolved_on_the_host() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&["localhost"], Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let mut device = bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let target = SockAddr::hostname(b"localhost", server.addr.port()).unwrap();
    device.connect(id, target, TIMEOUT).unwrap_or_else(|e| panic!("{e}: {}", device.tls_error(id)));
    echo_round_trip(&mut device, id, b"by name");
    device.close(id).unwrap();
}

#[test]
fn ip_address_hostnames_are_verified_against_ip_sans() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&["127.0.0.1"], Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let mut device = bed.driver();
    // No TLS_HOSTNAME: the address connected to is what is verified.
    let (id, result) = connect(&mut device, server.addr, None);
    result.unwrap_or_else(|e| panic!("{e}: {}", device.tls_error(id)));
    echo_round_trip(&mut device, id, b"ip");
    // The same certificate is not valid for a name.
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    assert_eq!(result, Err(Errno::EPROTO));
    assert!(device.tls_error(id).contains("not valid for 'localhost'"), "{}", device.tls_error(id));
}

fn openssl_www(bind: &str) {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let (cert, key) = identity.write_to(bed.dir(), "openssl-server").unwrap();
    let server = OpensslServer::start(bind, &cert, &key, &["-www"]).expect("openssl s_server");
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    device.send_all(id, b"GET / HTTP/1.0\r\n\r\n", TIMEOUT).unwrap();
    let (page, end) = device.read_to_end(id, TIMEOUT);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.0 200 ok"), "{page}");
    // s_server -www reports the session it negotiated with us.
    let cipher = String::from_utf8(device.get_option(id, wire::TLS_CHOSEN_CIPHER, 64).unwrap()).unwrap();
    assert!(page.contains(&format!("New, TLSv1.3, Cipher is {cipher}")), "page does not mention {cipher}: {page}");
    assert!(end.is_ok(), "stream end: {end:?} ({})", device.tls_error(id));
    device.close(id).unwrap();
}

#[test]
fn openssl_s_server_over_ipv4() {
    openssl_www("127.0.0.1:0");
}

#[test]
fn openssl_s_server_over_ipv6() {
    openssl_www("[::1]:0");
}

/// Every way verification or negotiation can fail: EPROTO from connect and
/// a TLS_ERROR that says why.
#[test]
fn failure_matrix() {
    let bed = Testbed::start(&format!("{LOOPBACK_POLICY}\n"));
    let names = pki::loopback_names();
    let stranger = TestCa::new("untrusted test root");
    let cases: Vec<(&str, pki::Identity, Option<&str>, &str)> = vec![
        ("expired certificate", bed.ca.issue(&names, Validity::Expired), Some("localhost"), "expired"),
        ("wrong host name", bed.ca.issue(&names, Validity::Current), Some("wrong.example"), "not valid for 'wrong.example'"),
        ("self-signed", pki::self_signed(&names), Some("localhost"), "not issued by a trusted authority"),
        ("untrusted root", stranger.issue(&names, Validity::Current), Some("localhost"), "not issued by a trusted authority"),
    ];
    let mut device = bed.driver();
    for (case, identity, hostname, expected) in cases {
        let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &both_versions(), Behaviour::Echo);
        let (id, result) = connect(&mut device, server.addr, hostname);
        assert_eq!(result, Err(Errno::EPROTO), "{case}");
        let reason = device.tls_error(id);
        assert!(reason.contains(expected), "{case}: TLS_ERROR is {reason:?}");
        assert!(reason.starts_with("certificate verification failed"), "{case}: {reason}");
        device.close(id).unwrap();
    }
}

#[test]
fn tls12_only_peers_fail_under_a_tls13_policy() {
    let policy = LOOPBACK_POLICY.replace("min_version = \"1.2\"", "min_version = \"1.3\"");
    let bed = Testbed::start(&policy);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let mut device = bed.driver();

    let tls12 = [&rustls::version::TLS12];
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls12, Behaviour::Echo);
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    assert_eq!(result, Err(Errno::EPROTO));
    assert!(device.tls_error(id).contains("no TLS version the policy allows"), "{}", device.tls_error(id));

    let (cert, key) = identity.write_to(bed.dir(), "tls12").unwrap();
    let openssl = OpensslServer::start("127.0.0.1:0", &cert, &key, &["-tls1_2", "-www"]).unwrap();
    let (id, result) = connect(&mut device, openssl.addr, Some("localhost"));
    assert_eq!(result, Err(Errno::EPROTO));
    assert!(device.tls_error(id).contains("TLS version"), "{}", device.tls_error(id));

    // The guest may not lower the minimum below the policy's.
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.set_option(id, wire::TLS_VERSION_MIN, &wire::TLS_1_2.to_le_bytes()), Err(Errno::EPERM));
}

#[test]
fn a_guest_can_raise_the_minimum_version() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS12], Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap_or_else(|e| panic!("{e}: {}", device.tls_error(id)));
    assert_eq!(device.get_option(id, wire::TLS_CHOSEN_VERSION, 4).unwrap(), wire::TLS_1_2.to_le_bytes());
    echo_round_trip(&mut device, id, b"tls 1.2 is allowed by the policy");

    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_VERSION_MIN, &wire::TLS_1_3.to_le_bytes()).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    assert_eq!(device.connect(id, addr_of(server.addr), TIMEOUT), Err(Errno::EPROTO));
}

#[test]
fn denied_destinations_fail_before_any_packet() {
    // Only ::1 is allowed: 127.0.0.1 is host-local and matches no rule.
    let policy = r#"
[trust]
ca_files = ["ca.pem"]
[destinations]
default = "deny"
[[destinations.rules]]
action = "allow"
addresses = ["::1"]
"#;
    let bed = Testbed::start(policy);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut device = bed.driver();

    let (id, result) = connect(&mut device, listener.local_addr().unwrap(), Some("localhost"));
    assert_eq!(result, Err(Errno::EACCES));
    assert!(device.tls_error(id).contains("connecting to 127.0.0.1:"), "{}", device.tls_error(id));
    assert!(device.tls_error(id).contains("is not allowed"), "{}", device.tls_error(id));
    // Denied by name too: localhost resolves to 127.0.0.1, which TLS_ERROR
    // does not tell (the guest learns nothing of the host's resolver).
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let result = device.connect(id, SockAddr::hostname(b"localhost", port).unwrap(), TIMEOUT);
    assert_eq!(result, Err(Errno::EACCES));
    let reason = device.tls_error(id);
    assert!(reason.contains("'localhost'") && reason.contains("host-local") && !reason.contains("127.0.0.1"), "{reason}");
    // Nothing reached the listener: not even a SYN was completed.
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
fn bulk_64_mib_each_way_with_checksums() {
    const TOTAL: usize = 64 << 20;
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap();

    let mut pattern = Pattern::new(TOTAL as u64);
    let (mut sent_digest, mut received_digest) = (Sha256::new(), Sha256::new());
    let mut chunk = vec![0u8; 256 * 1024];
    let (mut pending, mut pending_at) = (Vec::new(), 0);
    let (mut sent, mut received) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while received < TOTAL {
        assert!(Instant::now() < deadline, "bulk transfer stalled at {sent} sent, {received} received");
        if pending_at == pending.len() && sent < TOTAL {
            let n = pattern.fill(&mut chunk);
            pending = chunk[..n].to_vec();
            pending_at = 0;
            sent_digest.update(&pending);
        }
        if pending_at < pending.len() {
            let n = device.try_send(id, &pending[pending_at..]).expect("send");
            pending_at += n;
            sent += n;
        }
        match device.try_recv(id, 1 << 20) {
            Recv::Data(data) => {
                received_digest.update(&data);
                received += data.len();
            }
            Recv::WouldBlock => device.wait(Duration::from_millis(20)),
            other => panic!("stream ended early after {received} bytes: {other:?}"),
        }
    }
    assert_eq!(sent, TOTAL);
    assert_eq!(received, TOTAL);
    assert_eq!(sent_digest.finalize(), received_digest.finalize(), "bytes were lost or corrupted");
    device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR).unwrap();
    assert_eq!(device.recv(id, 1024, TIMEOUT), Recv::Eof);
    // The server saw exactly the pattern too.
    let digests = server.stats.received_digests.lock().unwrap().clone();
    assert_eq!(digests, vec![Pattern::digest(TOTAL as u64)]);
    device.close(id).unwrap();
}

/// Sends `total` bytes of [`Pattern`], ends the write side and returns what
/// the peer's answer to that is (Eof: it saw everything, then close_notify).
fn upload_pattern(device: &mut TlsDevice, id: u32, total: u64) -> Recv {
    let mut pattern = Pattern::new(total);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = pattern.fill(&mut chunk);
        if n == 0 {
            break;
        }
        device.send_all(id, &chunk[..n], TIMEOUT).unwrap();
    }
    device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR).unwrap();
    device.recv(id, 1024, Duration::from_secs(20))
}

/// Every byte handed to the device reaches the peer before close_notify,
/// however the last bytes race with TCP back-pressure.
#[test]
fn uploads_end_with_every_byte_then_close_notify() {
    const TOTAL: u64 = 16 << 20;
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let sink = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Sink);
    let mut device = bed.driver();
    for round in 0..6 {
        let (id, result) = connect(&mut device, sink.addr, Some("localhost"));
        result.unwrap();
        let end = upload_pattern(&mut device, id, TOTAL);
        assert_eq!(end, Recv::Eof, "round {round}: {:?}", bed.server.sockets());
        device.close(id).unwrap();
    }
    let digests = sink.stats.received_digests.lock().unwrap().clone();
    assert_eq!(digests, vec![Pattern::digest(TOTAL); 6]);
}

/// With `--busy-poll-us` the worker keeps polling after each wake-up and
/// the guest side polls before sleeping: the same bytes, in order, both
/// ways, with control requests, echoes and an upload that ends in
/// close_notify all working while the worker spins.
#[test]
fn busy_polling_moves_the_same_bytes() {
    const TOTAL: u64 = 8 << 20;
    let busy_poll = Duration::from_micros(200);
    let shape = vhost_tls::DeviceShape { queue_pairs: 1, busy_poll };
    let bed = Testbed::start_with_shape(LOOPBACK_POLICY, shape, |_, _| {});
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let echo = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let sink = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Sink);
    let mut device = bed.driver();
    device.set_busy_poll(busy_poll);

    let (id, result) = connect(&mut device, echo.addr, Some("localhost"));
    result.unwrap();
    for size in [1usize, 64, 1000, 16 * 1024 + 1, 100_000] {
        let message: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        echo_round_trip(&mut device, id, &message);
    }
    assert_eq!(device.get_option(id, wire::TLS_HOSTNAME, 64).unwrap(), b"localhost");
    device.close(id).unwrap();

    let (id, result) = connect(&mut device, sink.addr, Some("localhost"));
    result.unwrap();
    assert_eq!(upload_pattern(&mut device, id, TOTAL), Recv::Eof);
    device.close(id).unwrap();
    assert_eq!(sink.stats.received_digests.lock().unwrap().clone(), vec![Pattern::digest(TOTAL)]);
}

#[test]
fn a_reader_that_stops_bounds_host_buffering() {
    const TOTAL: u64 = 32 << 20;
    let limit = 128 * 1024;
    let policy = LOOPBACK_POLICY.replace("socket_buffer_bytes = 262144", &format!("socket_buffer_bytes = {limit}"));
    let bed = Testbed::start(&policy);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Source { total: TOTAL });
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap();

    let mut digest = Sha256::new();
    let mut received = device.read_exact(id, 1 << 20, TIMEOUT).unwrap();
    digest.update(&received);
    // Stop reading: the device may fill the guest's credit and its own
    // bounded buffers, then must push back on the peer.
    let (mut worst, mut samples) = (0, 0);
    for _ in 0..20 {
        device.wait(Duration::from_millis(100));
        for report in bed.server.sockets() {
            worst = worst.max(report.buffered_bytes);
            samples += 1;
        }
    }
    assert_eq!(samples, 20, "the socket was visible in every sample");
    assert!(worst <= limit, "host buffered {worst} bytes for one socket, limit {limit}");
    let sent_while_stopped = server.stats.bytes_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent_while_stopped < TOTAL / 2, "the peer was not held back: it sent {sent_while_stopped} bytes");

    let (rest, end) = device.read_to_end(id, Duration::from_secs(300));
    end.expect("clean end of stream");
    digest.update(&rest);
    received.extend_from_slice(&rest);
    assert_eq!(received.len() as u64, TOTAL);
    assert_eq!(<[u8; 32]>::from(digest.finalize()), Pattern::digest(TOTAL));
}

/// Malformed requests fail that request only; an established socket keeps
/// working throughout.
#[test]
fn malformed_requests_fail_alone() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::Echo);
    let mut device = bed.driver();
    let (live, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap();
    echo_round_trip(&mut device, live, b"before");

    // Unknown socket ids.
    assert_eq!(device.set_option(9999, wire::TLS_HOSTNAME, b"a.test"), Err(Errno::EBADF));
    assert_eq!(device.get_option(0, wire::TLS_ERROR, 64), Err(Errno::EBADF));
    assert_eq!(device.close(12345), Err(Errno::EBADF));
    // Truncated header, unknown op, nonzero flags, short payloads.
    assert_eq!(device.raw_control(&[1, 0, 0, 0, 0, 0, 0, 0], 64).status(), Some(Errno::EINVAL.0));
    let header = |op: u16, flags: u16, socket: u32| wire::CtrlHeader { op, flags, socket_id: socket, request_id: 7 }.encode().to_vec();
    assert_eq!(device.raw_control(&header(0x7777, 0, live), 64).status(), Some(Errno::EOPNOTSUPP.0));
    assert_eq!(device.raw_control(&header(wire::VIRTIO_TLS_OP_GETOPT, 1, live), 64).status(), Some(Errno::EINVAL.0));
    assert_eq!(device.raw_control(&header(wire::VIRTIO_TLS_OP_CONNECT, 0, live), 64).status(), Some(Errno::EINVAL.0));
    assert_eq!(device.raw_control(&header(wire::VIRTIO_TLS_OP_CREATE, 0, 0), 64).status(), Some(Errno::EINVAL.0));
    // A SETOPT whose value_len disagrees with the bytes sent.
    let mut setopt = header(wire::VIRTIO_TLS_OP_SETOPT, 0, live);
    setopt.extend_from_slice(&wire::SetOptRequest { optname: wire::TLS_HOSTNAME, value_len: 1000 }.encode());
    setopt.extend_from_slice(b"short");
    assert_eq!(device.raw_control(&setopt, 64).status(), Some(Errno::EINVAL.0));
    // Oversized request.
    let mut huge = header(wire::VIRTIO_TLS_OP_SETOPT, 0, live);
    huge.resize(100 * 1024, 0xaa);
    assert_eq!(device.raw_control(&huge, 64).status(), Some(Errno::EINVAL.0));
    // Bad family, bad queue pair.
    assert_eq!(device.create(77), Err(Errno::EAFNOSUPPORT));
    assert_eq!(device.create_on_pair(wire::VIRTIO_TLS_AF_INET, 40), Err(Errno::EINVAL));
    // A response buffer too small for a response: returned empty.
    assert_eq!(device.raw_control(&header(wire::VIRTIO_TLS_OP_CLOSE, 0, 4242), 8).used_len, 0);
    // Descriptors pointing outside guest memory, readable and writable.
    assert_eq!(device.control_with_outside_request().status(), Some(Errno::EFAULT.0));
    assert_eq!(device.control_with_outside_response().used_len, 0);
    // Data packets: for an unknown socket, and one claiming more payload
    // than it carries, and one pointing outside guest memory.
    device.raw_data(0, 31337, wire::VIRTIO_TLS_DATA_OP_RW, b"nobody's");
    device.data_with_outside_payload(0);

    echo_round_trip(&mut device, live, b"after: the device still serves this socket");
    // A fresh socket works as well.
    let (second, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap();
    echo_round_trip(&mut device, second, b"second");
}

#[test]
fn limits_and_option_errors() {
    let policy = LOOPBACK_POLICY.replace("max_sockets = 64", "max_sockets = 3");
    let bed = Testbed::start(&policy);
    let mut device = bed.driver();
    let config = device.config();
    assert_eq!(config.max_sockets, 3);
    assert_eq!(config.num_queue_pairs, 1);
    let ids: Vec<u32> = (0..3).map(|_| device.create(wire::VIRTIO_TLS_AF_INET).unwrap()).collect();
    assert_eq!(device.create(wire::VIRTIO_TLS_AF_INET), Err(Errno::EMFILE));
    device.close(ids[0]).unwrap();
    let id = device.create(wire::VIRTIO_TLS_AF_INET6).unwrap();
    assert!(!ids.contains(&id), "ids are not reused while the device may still know them");

    assert_eq!(device.set_option(id, wire::TLS_HOSTNAME, b"no spaces allowed"), Err(Errno::EINVAL));
    assert_eq!(device.set_option(id, wire::TLS_VERSION_MIN, &[3]), Err(Errno::EINVAL));
    assert_eq!(device.set_option(id, wire::TLS_CHOSEN_VERSION, &3u32.to_le_bytes()), Err(Errno::ENOPROTOOPT));
    assert_eq!(device.get_option(id, wire::TLS_CHOSEN_CIPHER, 64), Err(Errno::ENOTCONN));
    assert_eq!(device.get_option(id, wire::TLS_VERSION_MIN, 2), Err(Errno::EINVAL));
    assert_eq!(device.get_option(id, 4242, 64), Err(Errno::ENOPROTOOPT));
    assert_eq!(device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR), Err(Errno::ENOTCONN));
    // Port 0 and an IPv4 address with scope: refused, nothing connects.
    assert_eq!(device.connect(id, SockAddr::ipv6([0; 16], 0, 0), TIMEOUT), Err(Errno::EINVAL));
    assert_eq!(device.tls_error(id), "");
}

#[test]
fn connection_refused_is_reported_by_event() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    // A port nobody listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, SocketAddr::from(([127, 0, 0, 1], port)), Some("localhost"));
    assert_eq!(result, Err(Errno::ECONNREFUSED));
    assert!(device.tls_error(id).contains("refused"), "{}", device.tls_error(id));
}

#[test]
fn a_peer_that_drops_mid_stream_is_a_clean_error() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &tls13(), Behaviour::DropAfter { bytes: 1000 });
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, server.addr, Some("localhost"));
    result.unwrap();
    let (data, end) = device.read_to_end(id, TIMEOUT);
    assert_eq!(data.len(), 1000, "data sent before the drop is delivered");
    assert_eq!(end, Err(Errno::ECONNRESET));
    assert!(device.tls_error(id).contains("without close_notify"), "{}", device.tls_error(id));
}
