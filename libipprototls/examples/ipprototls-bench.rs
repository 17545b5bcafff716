//! Throughput and handshakes per second through libipprototls against plain
//! rustls in the same process, and what the library adds to calls on plain
//! TCP sockets. A benchmark, not a test: it prints and asserts nothing.
//!
//! ```sh
//! cargo build --release -p libipprototls --lib --example ipprototls-bench
//! target/release/examples/ipprototls-bench [MIB] [HANDSHAKES]
//! ```
//!
//! It runs itself again under `LD_PRELOAD=target/release/libipprototls.so`
//! (built by the same command), so both sides run in that one process: the
//! library's through `socket(AF_INET, SOCK_STREAM, 205)` and libc calls,
//! plain rustls over `std::net::TcpStream`, whose calls pass through the
//! library untouched. Peers are rustls servers on 127.0.0.1 with a
//! throwaway CA that the policy trusts.

use std::ffi::{c_int, c_void};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use vhost_tls_harness::bench::{mib_per_s, per_second};
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;

const IPPROTO_TLS: c_int = 205;
const TLS_HOSTNAME: c_int = 85;
const PRELOADED: &str = "IPPROTO_TLS_BENCH_PRELOADED";

fn main() {
    if std::env::var_os(PRELOADED).is_none() {
        rerun_preloaded();
    }
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let handshakes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let total = mib << 20;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("ipprototls bench CA");
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca.pem");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, LOOPBACK_POLICY).expect("write policy");
    // Read at the first IPPROTO_TLS socket, below; nothing else runs yet.
    std::env::set_var("IPPROTO_TLS_POLICY", &policy);

    let identity = ca.issue(&pki::loopback_names(), Validity::Current);
    let versions = [&rustls::version::TLS13];
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let client = pki::client_config(ca.cert_der(), &versions);

    println!("libipprototls benchmark: {mib} MiB each way, {handshakes} handshakes, TLS 1.3, loopback");
    println!("plain = a rustls client over std::net::TcpStream; library = socket(AF_INET, SOCK_STREAM, 205) and libc calls");
    println!("(best of 3 runs each; the machine's other load shows in the numbers)");
    println!();
    println!("{:<28} {:>14} {:>14} {:>8}", "metric", "plain rustls", "library", "ratio");

    let source = RustlsServer::start(loopback, &identity, &versions, Behaviour::Source { total });
    let plain = best_of(3, || mib_per_s(total, || plain_download(&client, source.addr)));
    let library = best_of(3, || mib_per_s(total, || library_download(source.addr)));
    row("download MiB/s", plain, library);

    let sink = RustlsServer::start(loopback, &identity, &versions, Behaviour::Sink);
    let plain = best_of(3, || mib_per_s(total, || plain_upload(&client, sink.addr, total)));
    let library = best_of(3, || mib_per_s(total, || library_upload(sink.addr, total)));
    row("upload MiB/s", plain, library);

    let echo = RustlsServer::start(loopback, &identity, &versions, Behaviour::Echo);
    let plain = best_of(3, || per_second(handshakes, || (0..handshakes).for_each(|_| plain_handshake(&client, echo.addr))));
    let library = best_of(3, || per_second(handshakes, || (0..handshakes).for_each(|_| library_handshake(echo.addr))));
    row("handshakes/s (resumed)", plain, library);

    println!();
    plain_tcp_overhead();
}

/// Runs this program again with the library preloaded.
fn rerun_preloaded() -> ! {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/ipprototls-bench -> target/<profile>/libipprototls.so
    let library = exe.parent().and_then(|examples| examples.parent()).map(|dir| dir.join("libipprototls.so"));
    let library = library.filter(|l| l.exists()).unwrap_or_else(|| {
        eprintln!("libipprototls.so is not next to examples/: build with cargo build --release -p libipprototls --lib --example ipprototls-bench");
        std::process::exit(2);
    });
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_PRELOAD", library)
        .env(PRELOADED, "1")
        .status()
        .expect("run the benchmark");
    std::process::exit(status.code().unwrap_or(1));
}

fn best_of(runs: usize, mut measure: impl FnMut() -> f64) -> f64 {
    (0..runs).map(|_| measure()).fold(0.0, f64::max)
}

fn row(metric: &str, plain: f64, library: f64) {
    println!("{metric:<28} {plain:>14.1} {library:>14.1} {:>7.1}%", 100.0 * library / plain);
}

// ---------------------------------------------------------------------------
// Plain rustls
// ---------------------------------------------------------------------------

fn plain_connect(config: &Arc<ClientConfig>, addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

fn plain_download(config: &Arc<ClientConfig>, addr: SocketAddr) {
    let mut tls = plain_connect(config, addr);
    let mut buf = vec![0u8; 64 * 1024];
    while tls.read(&mut buf).expect("read") > 0 {}
}

fn plain_upload(config: &Arc<ClientConfig>, addr: SocketAddr, total: u64) {
    let mut tls = plain_connect(config, addr);
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        tls.write_all(&chunk[..n]).expect("write");
        sent += n as u64;
    }
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest); // the sink's close_notify: all arrived
}

fn plain_handshake(config: &Arc<ClientConfig>, addr: SocketAddr) {
    let mut tls = plain_connect(config, addr);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

// ---------------------------------------------------------------------------
// Through the library (libc calls, interposed)
// ---------------------------------------------------------------------------

fn check(result: isize, what: &str) -> usize {
    if result < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    result as usize
}

fn library_connect(addr: SocketAddr) -> c_int {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 peers only") };
    // SAFETY: plain libc calls with valid arguments; LD_PRELOAD makes them
    // the library's.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_TLS);
        check(fd as isize, "socket(IPPROTO_TLS)");
        let name = c"localhost";
        let len = name.to_bytes_with_nul().len() as libc::socklen_t;
        libc::setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, name.as_ptr().cast(), len);
        let one: c_int = 1;
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&one as *const c_int).cast(), 4);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        let connected = libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sin) as u32);
        check(connected as isize, "connect through the library");
        fd
    }
}

fn library_download(addr: SocketAddr) {
    let fd = library_connect(addr);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: reading into our buffer.
    while check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }, "read") > 0 {}
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
}

fn library_upload(addr: SocketAddr, total: u64) {
    let fd = library_connect(addr);
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        // SAFETY: writing from our buffer.
        sent += check(unsafe { libc::write(fd, chunk.as_ptr().cast(), n) }, "write") as u64;
    }
    let mut buf = [0u8; 1024];
    // SAFETY: our descriptor and buffer; the sink's close_notify ends it.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
        while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        libc::close(fd);
    }
}

fn library_handshake(addr: SocketAddr) {
    let fd = library_connect(addr);
    // SAFETY: our descriptor; close sends close_notify.
    unsafe { libc::close(fd) };
}

// ---------------------------------------------------------------------------
// Plain TCP: the cost of passing through
// ---------------------------------------------------------------------------

/// The C library's own write(), past the library.
fn libc_write() -> WriteFn {
    // SAFETY: dlopen/dlsym with valid names; libc.so.6 is loaded, and its
    // write has this prototype.
    unsafe {
        let libc_handle = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        assert!(!libc_handle.is_null(), "libc.so.6 is loaded");
        let symbol = libc::dlsym(libc_handle, c"write".as_ptr());
        assert!(!symbol.is_null());
        std::mem::transmute::<*mut c_void, WriteFn>(symbol)
    }
}

type WriteFn = unsafe extern "C" fn(c_int, *const c_void, usize) -> isize;

/// Nanoseconds per 64-byte write() on `fd` through each of `writes`: the
/// fastest of many short alternating batches, so that preemption and the
/// machine's other load (which only ever add time) drop out.
fn ns_per_write(fd: c_int, writes: [WriteFn; 2]) -> [f64; 2] {
    const BATCH: usize = 200;
    const ROUNDS: usize = 10_000;
    let data = [0u8; 64];
    let mut best = [f64::MAX; 2];
    for _ in 0..ROUNDS {
        for (which, write) in writes.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..BATCH {
                // SAFETY: writing 64 bytes from a valid buffer.
                check(unsafe { write(fd, data.as_ptr().cast(), data.len()) }, "write");
            }
            best[which] = best[which].min(start.elapsed().as_nanos() as f64 / BATCH as f64);
        }
    }
    best
}

fn plain_tcp_overhead() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while peer.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let fd = tcp.as_raw_fd();
    let interposed: WriteFn = libc::write;
    println!("plain TCP socket, 64-byte write() calls, ns per call (fastest batches):");
    println!("{:<40} {:>10} {:>10} {:>9}", "", "C library", "library", "overhead");
    // Without any TLS socket the check is one atomic load; with some, a
    // bit test in the descriptor table.
    let mut tls_sockets = Vec::new();
    for label in ["no IPPROTO_TLS socket in the process", "64 IPPROTO_TLS sockets open"] {
        let [direct, through] = ns_per_write(fd, [libc_write(), interposed]);
        println!("{label:<40} {direct:>10.1} {through:>10.1} {:>8.2}%", 100.0 * (through - direct) / direct);
        // SAFETY: socket() with constant arguments (unconnected TLS sockets).
        tls_sockets.extend((0..64).map(|_| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_TLS) }));
    }
    for fd in tls_sockets {
        // SAFETY: our descriptors.
        unsafe { libc::close(fd) };
    }
}
