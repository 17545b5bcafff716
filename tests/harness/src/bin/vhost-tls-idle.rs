//! Host memory per idle socket: the real `vhost-tls serve` binary in its own
//! process, the harness as guest opening N TLS sockets (default 10,000) to
//! an echo server in a third process, then the backend's resident memory
//! (VmRSS) before and after, per socket, against the goal of 64 KiB. A
//! benchmark that prints figures; it asserts only that the sockets work.
//!
//! Usage: vhost-tls-idle [SOCKETS]
//! (`vhost-tls` is taken from next to this binary, or VHOST_TLS_BIN.)

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost_tls_harness::driver::{Recv, TlsDevice};
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;
use virtio_tls_spec::{self as wire, SockAddr};

const GOAL_KIB_PER_SOCKET: f64 = 64.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--echo-server") {
        return echo_server(Path::new(&args[2]));
    }
    let sockets: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("vhost-tls idle benchmark CA");
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
    ca.issue(&pki::loopback_names(), Validity::Current).write_to(dir.path(), "server")?;
    let policy = LOOPBACK_POLICY
        .replace("max_sockets = 64", &format!("max_sockets = {}", sockets + 16))
        .replace("[limits]", "[limits]\nhandshakes_per_second = 1000000\nmax_pending_handshakes = 65536\nvm_buffer_mib = 65536");
    std::fs::write(dir.path().join("policy.toml"), policy)?;

    // The echo server lives in a process of its own, so that the backend's
    // memory is all that is measured.
    let mut server = Command::new(std::env::current_exe()?)
        .arg("--echo-server")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("server stdout")?).read_line(&mut line)?;
    let server_addr: SocketAddr = line.trim().parse()?;

    let backend_bin = std::env::var_os("VHOST_TLS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe().expect("own path").with_file_name("vhost-tls")
    });
    let socket_path = dir.path().join("vhost-tls.sock");
    let mut backend = Command::new(&backend_bin)
        .args(["serve", "--socket-path"])
        .arg(&socket_path)
        .arg("--policy")
        .arg(dir.path().join("policy.toml"))
        .env("RUST_LOG", "warn")
        .spawn()?;
    let guard = Children(vec![]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket_path.exists() {
        if Instant::now() > deadline {
            return Err("vhost-tls did not create its socket".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut device = TlsDevice::attach(&socket_path, wire::num_queues(1) as usize)?;
    // A handful of sockets first, so one-time allocations (rustls' config
    // and session cache, the worker's buffers) are in the baseline.
    let warm: Vec<u32> = (0..16).map(|_| connect(&mut device, server_addr)).collect::<Result<_, _>>()?;
    settle();
    let before = rss_kib(backend.id())?;

    let started = Instant::now();
    let mut ids = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let id = device.create(wire::VIRTIO_TLS_AF_INET).map_err(|e| format!("create: {e}"))?;
        device.set_option(id, wire::TLS_HOSTNAME, b"localhost").map_err(|e| format!("hostname: {e}"))?;
        loop {
            match device.start_connect(id, addr_of(server_addr)) {
                Ok(()) => break,
                // Over the backend's resolution or handshake limits: let
                // some finish.
                Err(tls_engine::Errno::EAGAIN) => device.poll(Duration::from_millis(5)),
                Err(e) => return Err(format!("connect: {e}").into()),
            }
        }
        ids.push(id);
        if ids.len() % 256 == 0 {
            device.poll(Duration::ZERO);
        }
    }
    for &id in &ids {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match device.connect_result(id) {
                Some(Ok(())) => break,
                Some(Err(e)) => return Err(format!("socket {id}: {e}: {}", device.tls_error(id)).into()),
                None if Instant::now() > deadline => return Err("handshakes did not finish".into()),
                None => device.poll(Duration::from_millis(5)),
            }
        }
    }
    let connect_time = started.elapsed();
    // Every socket works: a byte each way on a sample of them.
    for &id in ids.iter().step_by((sockets / 100).max(1)) {
        device.send_all(id, b"x", Duration::from_secs(60)).map_err(|e| format!("send: {e}"))?;
        match device.read_exact(id, 1, Duration::from_secs(60)) {
            Ok(reply) if reply == b"x" => {}
            other => return Err(format!("echo on socket {id}: {other:?}").into()),
        }
    }
    settle();
    let after = rss_kib(backend.id())?;
    let per_socket = (after.saturating_sub(before)) as f64 / sockets as f64;
    println!("vhost-tls idle sockets: {sockets} TLS 1.3 sockets established in {:.1} s (harness as guest)", connect_time.as_secs_f64());
    println!("backend VmRSS: {before} KiB with {} warm sockets, {after} KiB with {} sockets", warm.len(), sockets + warm.len());
    println!(
        "host memory per idle socket: {per_socket:.1} KiB (goal <= {GOAL_KIB_PER_SOCKET} KiB: {:.2} of the goal)",
        per_socket / GOAL_KIB_PER_SOCKET
    );
    drop(device);
    let _ = backend.kill();
    let _ = backend.wait();
    let _ = server.kill();
    let _ = server.wait();
    drop(guard);
    Ok(())
}

/// Kills leftover children if main returns early.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
    }
}

fn connect(device: &mut TlsDevice, server: SocketAddr) -> Result<u32, String> {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).map_err(|e| format!("create: {e}"))?;
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").map_err(|e| format!("hostname: {e}"))?;
    device.connect(id, addr_of(server), Duration::from_secs(60)).map_err(|e| format!("connect: {e}: {}", device.tls_error(id)))?;
    device.send_all(id, b"w", Duration::from_secs(60)).map_err(|e| format!("send: {e}"))?;
    match device.recv(id, 1, Duration::from_secs(60)) {
        Recv::Data(_) => Ok(id),
        other => Err(format!("warm-up echo: {other:?}")),
    }
}

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

/// Gives the backend's allocator a moment after a burst.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

/// The echo server process: prints its address, serves until killed.
fn echo_server(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let cert = std::fs::read_to_string(dir.join("server.pem"))?;
    let key = std::fs::read_to_string(dir.join("server.key"))?;
    let identity = pki::Identity::from_pem(&cert, &key)?;
    let server = RustlsServer::start("127.0.0.1:0".parse()?, &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    println!("{}", server.addr);
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
