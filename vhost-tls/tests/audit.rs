//! What the operator reads about a VM, from the real `serve --vm-name`:
//! audit records with the VM's name, a session id that never repeats across
//! backend restarts, the ALPN protocol, resumption and the peer
//! certificate's fingerprint; the audit log reopened on SIGHUP after
//! logrotate renamed it; metrics labelled with the VM, with a handshake
//! duration histogram, build information and the last reload's time and
//! result.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::Digest;
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, Identity, TestCa};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;
use tls_engine::Errno;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A `serve --vm-name vm1` in `dir` (common::serve_command's files),
/// killed when dropped.
struct Serving(Child);

impl Serving {
    /// Started, and ready (READY=1) before this returns.
    fn start(dir: &Path) -> Serving {
        let notify_path = dir.join(format!("notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(TIMEOUT)).unwrap();
        let child = common::serve_command(dir).args(["--vm-name", "vm1"]).env("NOTIFY_SOCKET", &notify_path).spawn().unwrap();
        let mut message = [0u8; 64];
        notify.recv(&mut message).expect("READY=1");
        Serving(child)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// Waits for the exit that follows the front end's leaving.
    fn wait(mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "serve did not exit after the front end left");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backend_dir(ca: &TestCa) -> tempfile::TempDir {
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("vm1.toml"), LOOPBACK_POLICY).unwrap();
    dir
}

fn echo_peer(identity: &Identity, alpn: &[&[u8]]) -> RustlsServer {
    RustlsServer::start_with_alpn("127.0.0.1:0".parse().unwrap(), identity, &[&rustls::version::TLS13], Behaviour::Echo, alpn)
}

fn sock_addr(addr: std::net::SocketAddr) -> SockAddr {
    let std::net::SocketAddr::V4(v4) = addr else { panic!("IPv4 peer") };
    SockAddr::ipv4(v4.ip().octets(), v4.port())
}

/// One session through `device` to `peer` offering `alpn`: connect, one
/// echo, close.
fn session(device: &mut TlsDevice, peer: std::net::SocketAddr, alpn: &[u8]) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    if !alpn.is_empty() {
        device.set_option(id, wire::TLS_ALPN, alpn).unwrap();
    }
    device.connect(id, sock_addr(peer), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    device.send_all(id, b"ping", TIMEOUT).unwrap();
    assert_eq!(device.read_exact(id, 4, TIMEOUT).unwrap(), b"ping");
    device.close(id).unwrap();
}

/// A CONNECT the loopback policy denies: its record is written at once.
fn denied_session(device: &mut TlsDevice) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    assert_eq!(device.connect(id, SockAddr::ipv4([192, 0, 2, 1], 443), TIMEOUT), Err(Errno::EACCES));
    device.close(id).unwrap();
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn wait_for_records(path: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = if path.exists() { records(path) } else { Vec::new() };
        if found.len() >= count {
            return found;
        }
        assert!(Instant::now() < deadline, "{} has {} records, not {count}", path.display(), found.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn audit_records_name_the_vm_alpn_resumption_and_peer_certificate_and_session_ids_survive_restarts() {
    let ca = TestCa::new("vhost-tls audit CA");
    let dir = backend_dir(&ca);
    let identity = ca.issue(&pki::loopback_names(), pki::Validity::Current);
    let fingerprint: String = sha2::Sha256::digest(identity.chain[0].as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    let peer = echo_peer(&identity, &[b"h2"]);

    // First backend: a full handshake agreeing on h2, then one that resumes.
    let serving = Serving::start(dir.path());
    let mut device = TlsDevice::attach(&dir.path().join("vhost.sock"), 4).unwrap();
    session(&mut device, peer.addr, b"http/1.1,h2");
    session(&mut device, peer.addr, b"http/1.1,h2");
    drop(device);
    serving.wait();
    // The backend restarted (as Restart=always does): one more session.
    let serving = Serving::start(dir.path());
    let mut device = TlsDevice::attach(&dir.path().join("vhost.sock"), 4).unwrap();
    session(&mut device, peer.addr, b"");
    drop(device);
    serving.wait();

    let records = records(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 3, "{records:?}");
    for record in &records {
        assert_eq!(record["vm"], "vm1", "{record}");
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["peer_certificate_sha256"], fingerprint.as_str(), "{record}");
    }
    assert_eq!((&records[0]["alpn"], &records[0]["resumed"]), (&Value::from("h2"), &Value::from(false)), "{}", records[0]);
    assert_eq!((&records[1]["alpn"], &records[1]["resumed"]), (&Value::from("h2"), &Value::from(true)), "{}", records[1]);
    assert_eq!((&records[2]["alpn"], &records[2]["resumed"]), (&Value::Null, &Value::from(false)), "{}", records[2]);
    // INSTANCE-N: numbered within a backend, a new random instance after a
    // restart, so no id repeats.
    let ids: Vec<(&str, &str)> = records.iter().map(|r| r["session"].as_str().unwrap().rsplit_once('-').unwrap()).collect();
    assert_eq!((ids[0].1, ids[1].1, ids[2].1), ("1", "2", "1"), "{ids:?}");
    assert_eq!(ids[0].0, ids[1].0, "{ids:?}");
    assert_ne!(ids[0].0, ids[2].0, "a restarted backend repeated the session ids of the one before: {ids:?}");
    assert!(ids.iter().all(|(instance, _)| instance.len() == 16 && instance.chars().all(|c| c.is_ascii_hexdigit())), "{ids:?}");
}

#[test]
fn sighup_reopens_the_audit_log_that_logrotate_renamed() {
    let ca = TestCa::new("vhost-tls audit CA");
    let dir = backend_dir(&ca);
    let log = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let serving = Serving::start(dir.path());
    let mut device = TlsDevice::attach(&dir.path().join("vhost.sock"), 4).unwrap();
    denied_session(&mut device);
    wait_for_records(&log, 1);

    // logrotate without copytruncate: rename, then SIGHUP (postrotate).
    std::fs::rename(&log, &rotated).unwrap();
    serving.signal(libc::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    while !log.exists() {
        assert!(Instant::now() < deadline, "SIGHUP did not reopen (create) the audit log");
        std::thread::sleep(Duration::from_millis(20));
    }
    denied_session(&mut device);
    let after = wait_for_records(&log, 1);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["vm"], "vm1");
    assert_eq!(records(&rotated).len(), 1, "the renamed file keeps the record written before the SIGHUP only");
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o640, "the new file is created 0640 too");
    drop(device);
    serving.wait();
}

/// The value of `series` (labels included, as written) in Prometheus text.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

#[test]
fn metrics_carry_the_vm_label_a_handshake_histogram_build_info_and_the_last_reload() {
    let ca = TestCa::new("vhost-tls metrics CA");
    let dir = backend_dir(&ca);
    let identity = ca.issue(&pki::loopback_names(), pki::Validity::Current);
    let peer = echo_peer(&identity, &[]);
    let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    let serving = Serving::start(dir.path());
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
            .arg("ctl")
            .arg("--control-socket")
            .arg(dir.path().join("control.sock"))
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let metrics = ctl(&["metrics"]).1;
    // Every sample carries the VM's name, without ctl --vm.
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        assert!(line.contains("{vm=\"vm1\""), "{line}");
    }
    assert_eq!(value(&metrics, "vhost_tls_handshake_duration_seconds_count{vm=\"vm1\",direction=\"client\"}"), 0.0);
    assert_eq!(value(&metrics, "vhost_tls_policy_last_reload_successful{vm=\"vm1\"}"), 1.0);
    let loaded = value(&metrics, "vhost_tls_policy_last_reload_timestamp_seconds{vm=\"vm1\"}");
    assert!(loaded >= started.floor() && loaded < started + 60.0, "the start's load: {loaded}, started {started}");
    let build = metrics.lines().find(|line| line.starts_with("vhost_tls_build_info{")).expect("build_info");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.ends_with("} 1"), "{build}");
    assert!(metrics.contains("# TYPE vhost_tls_handshake_duration_seconds histogram\n"), "{metrics}");

    // One handshake lands in the histogram.
    let mut device = TlsDevice::attach(&dir.path().join("vhost.sock"), 4).unwrap();
    session(&mut device, peer.addr, b"");
    let metrics = ctl(&["metrics"]).1;
    let series = |suffix: &str, labels: &str| value(&metrics, &format!("vhost_tls_handshake_duration_seconds_{suffix}{{vm=\"vm1\",direction=\"client\"{labels}}}"));
    assert_eq!(series("count", ""), 1.0);
    assert_eq!(series("bucket", ",le=\"+Inf\""), 1.0);
    assert_eq!(series("bucket", ",le=\"10\""), 1.0);
    let sum = series("sum", "");
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
    assert_eq!(value(&metrics, "vhost_tls_handshake_duration_seconds_count{vm=\"vm1\",direction=\"server\"}"), 0.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = metrics
        .lines()
        .filter(|line| line.starts_with("vhost_tls_handshake_duration_seconds_bucket{vm=\"vm1\",direction=\"client\""))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.len() == 13 && buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // A refused reload: its time and result.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(dir.path().join("vm1.toml"), "[limits]\nmax_sockets = 0\n").unwrap();
    assert!(!ctl(&["reload"]).0, "a bad policy was applied");
    let metrics = ctl(&["metrics"]).1;
    assert_eq!(value(&metrics, "vhost_tls_policy_last_reload_successful{vm=\"vm1\"}"), 0.0);
    let refused = value(&metrics, "vhost_tls_policy_last_reload_timestamp_seconds{vm=\"vm1\"}");
    assert!(refused >= loaded + 1.0, "the refused reload's time: {refused}, the start's {loaded}");
    // ctl --vm adds no second vm label to a backend that has one.
    let (ok, labelled) = ctl(&["metrics", "--vm", "other"]);
    assert!(ok && !labelled.contains("vm=\"other\"") && labelled.contains("vhost_tls_sockets_open{vm=\"vm1\"} "), "{labelled}");
    drop(device);
    serving.wait();
}
