//! The operator's workflow against the real binary: `vhost-tls serve` with
//! a control socket and an audit log, the test harness as the guest, and
//! `vhost-tls ctl` to watch sessions, reload the policy while one is open,
//! and read the metrics.

mod common;

use common::sample;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tls_engine::Errno;
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Backend {
    dir: tempfile::TempDir,
    child: Child,
}

impl Backend {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
            .arg("ctl")
            .arg("--control-socket")
            .arg(self.path("control.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start(ca: &TestCa, policy: &str) -> Backend {
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("vm1.toml"), policy).unwrap();
    let child = common::serve_command(dir.path())
        .spawn()
        .unwrap();
    let backend = Backend { dir, child };
    wait_for(|| backend.path("vhost.sock").exists(), "the vhost-user socket");
    backend
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attach(socket: &Path) -> TlsDevice {
    // One data queue pair: control, event, rx, tx.
    TlsDevice::attach(socket, 4).expect("attach the harness as the guest")
}

fn connect(device: &mut TlsDevice, addr: std::net::SocketAddr) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    let std::net::SocketAddr::V4(v4) = addr else { panic!("IPv4 servers only here") };
    let result = device.connect(id, SockAddr::ipv4(v4.ip().octets(), v4.port()), TIMEOUT);
    (id, result)
}

fn echo(device: &mut TlsDevice, id: u32, message: &[u8]) {
    device.send_all(id, message, TIMEOUT).unwrap();
    assert_eq!(device.read_exact(id, message.len(), TIMEOUT).unwrap(), message);
}


#[test]
fn ctl_reload_under_an_open_session_and_the_audit_log_of_the_binary() {
    let ca = TestCa::new("vhost-tls end-to-end CA");
    let identity = ca.issue(&pki::loopback_names(), Validity::Current);
    let tls12_only = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS12], Behaviour::Echo);
    let backend = start(&ca, LOOPBACK_POLICY);
    let mut device = attach(&backend.path("vhost.sock"));

    let (open, result) = connect(&mut device, tls12_only.addr);
    result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(open)));
    echo(&mut device, open, b"hello");
    let sockets = backend.ctl(&["sockets"]);
    let row: Vec<&str> = sockets.lines().nth(1).expect("one socket").split_whitespace().collect();
    assert_eq!(row[..6], [open.to_string().as_str(), "client", "established", &tls12_only.addr.to_string(), "localhost", "TLSv1.2"], "{sockets}");

    std::fs::write(backend.path("vm1.toml"), LOOPBACK_POLICY.replace("min_version = \"1.2\"", "min_version = \"1.3\"")).unwrap();
    assert!(backend.ctl(&["reload"]).starts_with("policy generation 2 loaded from "));

    echo(&mut device, open, b"the open TLS 1.2 session outlives the reload");
    let (refused, result) = connect(&mut device, tls12_only.addr);
    assert_eq!(result, Err(Errno::EPROTO), "{}", device.tls_error(refused));

    device.close(open).unwrap();
    device.close(refused).unwrap();
    let audit = backend.path("audit.jsonl");
    wait_for(|| std::fs::read_to_string(&audit).unwrap().lines().count() == 2, "two audit records");
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&audit).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let find = |id: u32| records.iter().find(|r| r["socket"] == id).unwrap_or_else(|| panic!("no record for {id}: {records:?}"));
    let (open_record, refused_record) = (find(open), find(refused));
    assert_eq!((open_record["outcome"].as_str(), open_record["policy_generation"].as_u64()), (Some("ok"), Some(1)), "{open_record}");
    assert_eq!(open_record["bytes_from_peer"], "hello".len() + "the open TLS 1.2 session outlives the reload".len());
    assert_eq!((refused_record["errno_name"].as_str(), refused_record["policy_generation"].as_u64()), (Some("EPROTO"), Some(2)));

    let metrics = backend.ctl(&["metrics"]);
    assert_eq!(sample(&metrics, "vhost_tls_handshakes_total{direction=\"client\"}"), 1);
    assert_eq!(sample(&metrics, "vhost_tls_handshake_failures_total{direction=\"client\",reason=\"version\"}"), 1);
    assert_eq!(sample(&metrics, "vhost_tls_policy_reloads_total{result=\"ok\"}"), 1);

    // The VM goes away: serve exits cleanly, as systemd expects.
    drop(device);
    let mut backend = backend;
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = backend.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after the front end left");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!backend.path("control.sock").exists(), "the control socket is removed");
}
