//! The backend caches one rustls configuration per distinct set of TLS
//! options (issue 14.2). The options are the guest's to choose (TLS_CONTEXT,
//! TLS_ALPN, TLS_HOSTNAME, TLS_SESSION_TTL), so the caches must be bounded
//! and forget configurations no socket uses any more: a guest looping over
//! CREATE, SETOPT, BIND/CONNECT, CLOSE with a new value each time must not
//! grow the host's memory. Measured as the resident memory of this process,
//! which runs the backend (the harness driver's own memory does not grow
//! per socket).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tls_engine::Errno;
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::pki::{TestCa, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const LOOPS: usize = 100_000;
/// Each client loop is a TCP connection and a ClientHello (about 1.6 ms on
/// a busy 2-core machine): fewer of them, twice the warm-up.
const CLIENT_LOOPS: usize = 10_000;
/// Loops before the baseline is taken: caches, allocator arenas and the
/// harness's own buffers reach their working size.
const WARM_UP: usize = 5_000;
/// How often resident memory is checked, so that an unbounded cache fails
/// the test long before it hurts the machine.
const CHECK_EVERY: usize = 1_000;
const MAX_GROWTH_KIB: u64 = 2 * 1024;
const GUEST_PORT: u16 = 8443;
const TIMEOUT: Duration = Duration::from_secs(30);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in KiB")
}

/// Resident memory is the whole process's: one measurement at a time.
static MEASURING: Mutex<()> = Mutex::new(());

/// Runs `one_loop` `loops` times and fails as soon as resident memory grew
/// more than MAX_GROWTH_KIB past what it was after the warm-up.
fn assert_flat_rss(what: &str, loops: usize, mut one_loop: impl FnMut(usize)) {
    let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let mut baseline = None;
    for i in 0..loops {
        one_loop(i);
        if i + 1 == WARM_UP {
            baseline = Some(rss_kib());
        }
        if let Some(baseline) = baseline.filter(|_| (i + 1) % CHECK_EVERY == 0) {
            let now = rss_kib();
            assert!(
                now <= baseline + MAX_GROWTH_KIB,
                "{what}: resident memory grew from {baseline} KiB to {now} KiB after {} loops ({} past the warm-up)",
                i + 1,
                i + 1 - WARM_UP
            );
        }
    }
    eprintln!("{what}: {loops} loops in {:.1} s, resident memory {} KiB", started.elapsed().as_secs_f64(), rss_kib());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn server_bed(extra_limits: &str) -> Testbed {
    let policy = format!(
        "{}\n{extra_limits}\n[[server.listen]]\nguest_port = {GUEST_PORT}\nhost = \"127.0.0.1:{}\"\n\n\
         [[server.identities]]\ncertificate_chain = \"www.pem\"\nprivate_key = \"www.key\"\n",
        LOOPBACK_POLICY.replace("[limits]", "[limits]\nhandshakes_per_second = 1000000"),
        free_port()
    );
    Testbed::start_with_files(&policy, 1, |ca: &TestCa, dir: &Path| {
        ca.issue(&["www.test", "localhost"], Validity::Current).write_to(dir, "www").unwrap();
    })
}

/// CREATE, SETOPT TLS_CONTEXT (and the other options a listening socket's
/// configuration depends on), BIND, LISTEN: the socket's id.
fn listen_with_context(device: &mut TlsDevice, context: u64) -> Result<u32, (Errno, String)> {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).expect("create");
    device.set_option(id, wire::TLS_CONTEXT, &context.to_le_bytes()).expect("TLS_CONTEXT");
    let alpn = format!("p{context}");
    device.set_option(id, wire::TLS_ALPN, alpn.as_bytes()).expect("TLS_ALPN");
    device.set_option(id, wire::TLS_SESSION_TTL, &((context % 86_400) as u32 + 1).to_le_bytes()).expect("TLS_SESSION_TTL");
    device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap_or_else(|e| panic!("bind: {e}: {}", device.tls_error(id)));
    match device.listen(id, 16) {
        Ok(()) => Ok(id),
        Err(errno) => {
            let reason = device.tls_error(id);
            device.close(id).unwrap();
            Err((errno, reason))
        }
    }
}

#[test]
fn listening_sockets_with_ever_new_options_keep_memory_flat() {
    let bed = server_bed("");
    let mut device = bed.driver();
    assert_flat_rss("CREATE, SETOPT TLS_CONTEXT=i, BIND, LISTEN, CLOSE", LOOPS, |i| {
        let id = listen_with_context(&mut device, i as u64).unwrap_or_else(|(e, reason)| panic!("listen {i}: {e}: {reason}"));
        device.close(id).unwrap();
    });
}

/// A plain TCP peer that takes each connection, waits for the ClientHello
/// (so the backend has built the client's TLS configuration) and resets it.
fn resetting_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let _ = stream.read(&mut [0u8; 1]);
            // A reset rather than a close: no TIME_WAIT left behind, so
            // 100,000 connections do not run out of loopback ports.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    });
    addr
}

#[test]
fn client_sockets_with_ever_new_options_keep_memory_flat() {
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("[limits]", "[limits]\nhandshakes_per_second = 1000000"));
    let peer = resetting_peer();
    let IpAddr::V4(ip) = peer.ip() else { unreachable!() };
    let mut device = bed.driver();
    // Long ALPN lists, as a guest might send to make each entry costly.
    let alpn: Vec<String> = (0..200).map(|n| format!("{n:0>250}")).collect();
    assert_flat_rss("CREATE, SETOPT TLS_ALPN/TLS_HOSTNAME/TLS_CONTEXT=i, CONNECT, CLOSE", CLIENT_LOOPS, |i| {
        let id = device.create(wire::VIRTIO_TLS_AF_INET).expect("create");
        let mut protocols = alpn.clone();
        protocols[0] = format!("{i:0>250}");
        device.set_option(id, wire::TLS_ALPN, protocols.join(",").as_bytes()).expect("TLS_ALPN");
        device.set_option(id, wire::TLS_HOSTNAME, format!("h{i}.test").as_bytes()).expect("TLS_HOSTNAME");
        device.set_option(id, wire::TLS_CONTEXT, &(i as u64).to_le_bytes()).expect("TLS_CONTEXT");
        device.start_connect(id, SockAddr::ipv4(ip.octets(), peer.port())).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        let deadline = Instant::now() + TIMEOUT;
        while device.connect_result(id).is_none() {
            assert!(Instant::now() < deadline, "connect {i} never finished");
            device.poll(Duration::from_millis(1));
        }
        let error = device.tls_error(id);
        assert!(!error.contains("TLS configuration"), "connect {i}: {error}");
        device.close(id).unwrap();
    });
}

/// A TCP server that accepts and never answers: handshakes to it hang, so
/// the client sockets keep their TLS configurations in use. Counts the
/// connections whose ClientHello arrived (the backend built their
/// configuration).
struct Tarpit {
    addr: SocketAddr,
    hellos: Arc<AtomicUsize>,
}

fn tarpit() -> Tarpit {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hellos = Arc::new(AtomicUsize::new(0));
    let counter = hellos.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the connection until the backend drops it.
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    Tarpit { addr, hellos }
}

#[test]
fn configurations_in_use_are_charged_to_the_vm_budget() {
    // Not while another test measures resident memory.
    let _alone = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // 1 MiB for the VM, sockets of 4 KiB: the socket count leaves most of
    // it to TLS configurations, and a guest keeping ever new ones in use
    // reaches it.
    let policy = LOOPBACK_POLICY.replace("max_sockets = 64", "max_sockets = 1024").replace(
        "socket_buffer_bytes = 262144",
        "socket_buffer_bytes = 4096\nvm_buffer_mib = 1\nhandshakes_per_second = 1000000\nmax_pending_handshakes = 1024",
    );
    let bed = Testbed::start(&policy);
    let pit = tarpit();
    let IpAddr::V4(ip) = pit.addr.ip() else { unreachable!() };
    let mut device = bed.driver();
    // The socket, and the ClientHellos the tarpit had seen before it.
    let start = |device: &mut TlsDevice, context: u64| -> (u32, usize) {
        let hellos = pit.hellos.load(Ordering::SeqCst);
        let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap_or_else(|e| panic!("CREATE {context}: {e}"));
        device.set_option(id, wire::TLS_CONTEXT, &context.to_le_bytes()).unwrap();
        device.start_connect(id, SockAddr::ipv4(ip.octets(), pit.addr.port())).unwrap();
        (id, hellos)
    };
    // None once the socket's ClientHello reached the tarpit (it hangs
    // there, its configuration in use), or how its connect ended.
    let settled = |device: &mut TlsDevice, (id, hellos): (u32, usize)| -> Option<Result<(), Errno>> {
        let deadline = Instant::now() + TIMEOUT;
        while pit.hellos.load(Ordering::SeqCst) == hellos {
            if let Some(result) = device.connect_result(id) {
                return Some(result);
            }
            assert!(Instant::now() < deadline, "socket {id}: no ClientHello and no connect result");
            device.poll(Duration::from_millis(1));
        }
        None
    };
    let mut hanging = Vec::new();
    let refused = loop {
        assert!(hanging.len() < 512, "512 distinct TLS configurations in use fit in a 1 MiB budget");
        let started = start(&mut device, hanging.len() as u64);
        match settled(&mut device, started) {
            None => hanging.push(started.0),
            Some(result) => break (started.0, result),
        }
    };
    let (refused_id, result) = refused;
    assert_eq!(result, Err(Errno::ENOBUFS), "{}", device.tls_error(refused_id));
    let reason = device.tls_error(refused_id);
    assert!(reason.contains("TLS configurations") && reason.contains("vm_buffer_mib = 1"), "{reason}");
    assert!(hanging.len() >= 8, "only {} configurations fit", hanging.len());
    // A socket whose options match one in use shares its configuration
    // (the refused socket's reservation makes room for it).
    device.close(refused_id).unwrap();
    let shared = start(&mut device, 0);
    assert_eq!(settled(&mut device, shared), None, "context 0's configuration is shared: {}", device.tls_error(shared.0));
    // Closing sockets frees their configurations for others.
    for id in hanging.drain(..4) {
        device.close(id).unwrap();
    }
    let fresh = start(&mut device, 1_000_000);
    assert_eq!(settled(&mut device, fresh), None, "a freed configuration made room: {}", device.tls_error(fresh.0));
}
