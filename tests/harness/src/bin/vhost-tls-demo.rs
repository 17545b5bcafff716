//! The main job, with nothing to configure: an HTTPS server on loopback
//! with a throwaway CA, and a client fetching a page from it by host name
//! through the virtio-tls device, under an embedded policy that trusts
//! that CA.
//!
//! `vhost-tls-demo --vm`: the client is a program in a guest under QEMU,
//! using `socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)` through the Rust guest
//! driver (`qemu/vm` starts the backend and the guest).
//! `vhost-tls-demo`: the client is the test harness playing the guest
//! driver over vhost-user (the real `vhost-tls` binary when it sits beside
//! this one), no VM needed.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{TestCa, Validity};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;
use virtio_tls_spec::{self as wire, SockAddr};

const PAGE: &str = "Hello from the host! This page came through virtio-tls: \
the guest asked for a host name, the hypervisor's backend did the TLS.\n";

fn main() -> ExitCode {
    let in_vm = std::env::args().skip(1).any(|arg| arg == "--vm");
    match if in_vm { run_in_vm() } else { run() } {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vhost-tls-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The backend, as a child process or in this process.
enum Backend {
    Process(Child),
    InProcess(vhost_tls::Server),
}

impl Drop for Backend {
    fn drop(&mut self) {
        match self {
            Backend::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Backend::InProcess(server) => server.stop(),
        }
    }
}

/// The embedded part of the demo: a throwaway CA, the embedded policy
/// trusting it (in `dir`), and an HTTPS server for localhost serving PAGE.
fn page_server(dir: &std::path::Path) -> Result<(RustlsServer, PathBuf), Box<dyn std::error::Error>> {
    let ca = TestCa::new("vhost-tls demo CA (throwaway)");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, LOOPBACK_POLICY)?;
    let identity = ca.issue(&["localhost"], Validity::Current);
    let server = RustlsServer::start(
        "127.0.0.1:0".parse()?,
        &identity,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        Behaviour::Http { body: PAGE.to_owned() },
    );
    println!("HTTPS server on the host: https://localhost:{}/ (certificate from a throwaway CA)", server.addr.port());
    Ok((server, policy_path))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (server, policy_path) = page_server(dir.path())?;

    let socket = dir.path().join("vhost-tls.sock");
    let _backend = match sibling_binary("vhost-tls") {
        Some(binary) => {
            println!("backend:      {} serve --socket-path {} --policy {}", binary.display(), socket.display(), policy_path.display());
            let child = Command::new(binary)
                .args(["serve", "--socket-path"])
                .arg(&socket)
                .arg("--policy")
                .arg(&policy_path)
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .spawn()?;
            Backend::Process(child)
        }
        None => {
            println!("backend:      in process (build the vhost-tls binary to run it separately)");
            let policy = tls_engine::Policy::load(&policy_path)?;
            Backend::InProcess(vhost_tls::Server::start(&socket, Arc::new(policy), vhost_tls::DeviceShape::with_pairs(1))?)
        }
    };

    let mut device = TlsDevice::attach(&socket, wire::num_queues(1) as usize)?;
    println!("guest driver: connected over vhost-user ({} queues)", wire::num_queues(1));
    let id = device.create(wire::VIRTIO_TLS_AF_INET).map_err(|e| format!("create: {e}"))?;
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").map_err(|e| format!("TLS_HOSTNAME: {e}"))?;
    let target = SockAddr::hostname(b"localhost", server.addr.port()).expect("short name");
    if let Err(errno) = device.connect(id, target, Duration::from_secs(30)) {
        return Err(format!("connect: {errno}: {}", device.tls_error(id)).into());
    }
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    device.send_all(id, request.as_bytes(), Duration::from_secs(30)).map_err(|e| format!("send: {e}"))?;
    let (reply, end) = device.read_to_end(id, Duration::from_secs(30));
    end.map_err(|e| format!("reading the reply: {e}: {}", device.tls_error(id)))?;

    let mut text = |opt, len| device.get_option(id, opt, len).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    let cipher = text(wire::TLS_CHOSEN_CIPHER, 64);
    let peer = text(wire::TLS_PEER_IDENTITY, 256);
    let version = match device.get_option(id, wire::TLS_CHOSEN_VERSION, 4) {
        Ok(v) if v == wire::TLS_1_3.to_le_bytes() => "TLSv1.3",
        Ok(v) if v == wire::TLS_1_2.to_le_bytes() => "TLSv1.2",
        _ => "unknown",
    };
    println!("\n--- reply ({} bytes) ---\n{}--- end of reply ---\n", reply.len(), String::from_utf8_lossy(&reply));
    println!("TLS version:   {version}");
    println!("cipher suite:  {cipher}");
    println!("peer identity: {peer}");
    device.close(id).map_err(|e| format!("close: {e}"))?;
    if !String::from_utf8_lossy(&reply).contains(PAGE.trim_end()) {
        return Err("the reply does not contain the page".into());
    }
    Ok(())
}

/// The repository this demo was built from (qemu/, guest-driver/).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `command`, returning the last line it printed.
fn last_line_of(command: &mut Command) -> Result<String, Box<dyn std::error::Error>> {
    let output = command.stderr(std::process::Stdio::inherit()).output()?;
    if !output.status.success() {
        return Err(format!("{command:?} failed ({})", output.status).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

fn run_in_vm() -> Result<(), Box<dyn std::error::Error>> {
    let root = repo_root();
    let dir = tempfile::tempdir()?;
    let (server, policy) = page_server(dir.path())?;

    let module = last_line_of(&mut Command::new(root.join("guest-driver/build-module")))?;
    let fetch = dir.path().join("tls-fetch");
    let compiled = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&fetch)
        .arg(root.join("guest-driver/examples/tls-fetch.c"))
        .status()?;
    if !compiled.success() {
        return Err("cannot compile guest-driver/examples/tls-fetch.c".into());
    }
    let port = server.addr.port().to_string();
    println!("guest:        tls-fetch localhost {port} /   (socket(AF_INET, SOCK_STREAM, IPPROTO_TLS) via virtio_tls.ko)\n");
    let output = Command::new(root.join("qemu/vm"))
        .args(["run", "--strict", "--timeout", "300", "--policy"])
        .arg(&policy)
        .arg("--add")
        .arg(format!("{module}:/lib/modules/virtio_tls.ko"))
        .arg("--add")
        .arg(format!("{}:/bin/tls-fetch", fetch.display()))
        .args(["--", "tls-fetch", "localhost", &port, "/"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    if !output.status.success() {
        return Err(format!("the guest's fetch failed ({})", output.status).into());
    }
    if !text.contains(PAGE.trim_end()) {
        return Err("the guest's reply does not contain the page".into());
    }
    Ok(())
}

/// A binary built into the same directory as this one.
fn sibling_binary(name: &str) -> Option<PathBuf> {
    let candidate = std::env::current_exe().ok()?.parent()?.join(name);
    candidate.is_file().then_some(candidate)
}
