//! Per-VM limits (issue 6.2): handshakes in progress, new handshakes per
//! second and reserved buffer memory. Going over one fails only that
//! request (EAGAIN, ENOBUFS) with a TLS_ERROR naming the limit; sockets
//! already open carry on.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tls_engine::Errno;
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

/// A TCP server that accepts and never answers: handshakes to it hang.
struct Tarpit {
    addr: SocketAddr,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

fn tarpit() -> Tarpit {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    Tarpit { addr, _held: held }
}

fn start_connect(device: &mut TlsDevice, addr: SocketAddr) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    let result = device.start_connect(id, addr_of(addr));
    (id, result)
}

fn echo(device: &mut TlsDevice, id: u32, message: &[u8]) {
    device.send_all(id, message, TIMEOUT).unwrap();
    assert_eq!(device.read_exact(id, message.len(), TIMEOUT).unwrap(), message);
}

#[test]
fn pending_handshakes_are_bounded() {
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("[limits]", "[limits]\nmax_pending_handshakes = 2"));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let pit = tarpit();
    let mut device = bed.driver();
    let (established, result) = start_connect(&mut device, server.addr);
    result.unwrap();
    while device.connect_result(established).is_none() {
        device.poll(Duration::from_millis(10));
    }

    let (first, result) = start_connect(&mut device, pit.addr);
    result.unwrap();
    let (second, result) = start_connect(&mut device, pit.addr);
    result.unwrap();
    let (third, result) = start_connect(&mut device, pit.addr);
    assert_eq!(result, Err(Errno::EAGAIN), "a third handshake at once is refused");
    assert!(device.tls_error(third).contains("max_pending_handshakes = 2"), "{}", device.tls_error(third));
    // The established session is not slowed or failed.
    echo(&mut device, established, &vec![7u8; 100_000]);
    // A slot frees when a pending handshake goes; the refused socket can retry.
    device.close(first).unwrap();
    device.start_connect(third, addr_of(pit.addr)).unwrap();
    assert_eq!(device.connect_result(second), None, "still hanging in the tarpit");
}

#[test]
fn new_handshakes_per_second_are_bounded() {
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("[limits]", "[limits]\nhandshakes_per_second = 3"));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, result) = start_connect(&mut device, server.addr);
        result.unwrap();
        ids.push(id);
    }
    let (refused, result) = start_connect(&mut device, server.addr);
    assert!(started.elapsed() < Duration::from_millis(300), "the test ran the burst within the second");
    assert_eq!(result, Err(Errno::EAGAIN));
    assert!(device.tls_error(refused).contains("handshakes_per_second = 3"), "{}", device.tls_error(refused));
    // The three admitted complete.
    for id in &ids {
        let deadline = Instant::now() + TIMEOUT;
        while device.connect_result(*id).is_none() {
            assert!(Instant::now() < deadline);
            device.poll(Duration::from_millis(10));
        }
        assert_eq!(device.connect_result(*id), Some(Ok(())));
    }
    // A third of a second later there is a token again.
    std::thread::sleep(Duration::from_millis(400));
    device.connect(refused, addr_of(server.addr), TIMEOUT).unwrap_or_else(|e| panic!("{e}: {}", device.tls_error(refused)));
    echo(&mut device, refused, b"after the pause");
}

#[test]
fn reserved_buffer_memory_is_bounded() {
    // 1 MiB for the VM at 64 KiB per socket: 16 sockets.
    let policy = LOOPBACK_POLICY.replace("socket_buffer_bytes = 262144", "socket_buffer_bytes = 65536\nvm_buffer_mib = 1");
    let bed = Testbed::start(&policy);
    let mut device = bed.driver();
    let ids: Vec<u32> = (0..16).map(|_| device.create(wire::VIRTIO_TLS_AF_INET).unwrap()).collect();
    assert_eq!(device.create(wire::VIRTIO_TLS_AF_INET), Err(Errno::ENOBUFS));
    device.close(ids[0]).unwrap();
    device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
}
