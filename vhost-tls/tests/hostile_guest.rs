//! A guest that misuses the device on purpose (issue 14), against the real
//! `vhost-tls serve` with the test harness as the guest over the
//! vhost-user socket: the backend must stay responsive, bounded and quiet.
//! What the operator sees (the log, `ctl metrics`, the audit log, the
//! process's memory) is what is checked.

mod common;

use common::sample;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tls_engine::Errno;
use vhost_tls_harness::driver::TlsDevice;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Backend {
    dir: tempfile::TempDir,
    child: Child,
}

impl Backend {
    /// `serve` with a control socket and an audit log; its log goes to
    /// `backend.log`.
    fn start(policy: &str) -> Backend {
        let dir = common::backend_dir();
        std::fs::write(dir.path().join("vm1.toml"), policy).unwrap();
        let log = std::fs::File::create(dir.path().join("backend.log")).unwrap();
        let child = common::serve_command(dir.path())
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        let backend = Backend { dir, child };
        let deadline = Instant::now() + TIMEOUT;
        while !(backend.path("vhost.sock").exists() && backend.path("control.sock").exists()) {
            assert!(Instant::now() < deadline, "the backend's sockets never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        backend
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The guest, with one data queue pair (control, event, rx, tx).
    fn attach(&self) -> TlsDevice {
        TlsDevice::attach(&self.path("vhost.sock"), 4).expect("attach the harness as the guest")
    }

    /// `vhost-tls ctl ARGS`, which must answer within `within`: it waits
    /// for the device lock, so a worker that never lets go of it fails here.
    fn ctl_within(&self, args: &[&str], within: Duration) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
            .arg("ctl")
            .arg("--control-socket")
            .arg(self.path("control.sock"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ctl {args:?} got no answer within {within:?}: the backend is stuck");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn metrics(&self) -> String {
        self.ctl_within(&["metrics"], Duration::from_secs(10))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("backend.log")).unwrap()
    }

    fn log_lines_containing(&self, text: &str) -> usize {
        self.log().lines().filter(|line| line.contains(text)).count()
    }

    fn audit_records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.path("audit.jsonl")).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
    }

    /// VmRSS of the backend, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).expect("VmRSS");
        line.trim().trim_end_matches("kB").trim().parse().unwrap()
    }

    /// CPU time (user + system) the backend used, all threads.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces): utime is
        // the 14th field, stime the 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the backend died; its log:\n{}", self.log());
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                // A backend stuck holding its device lock cannot stop.
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const POLICY: &str = "[destinations]\ndefault = \"deny\"\n\n[[destinations.rules]]\naction = \"allow\"\naddresses = [\"127.0.0.0/8\"]\n\n[limits]\nmax_sockets = 16\n";

/// What the backend logs once when it gives up on a queue.
const BROKEN_QUEUE_LOG: &str = "the device stops serving a virtqueue the driver broke";

#[test]
fn an_available_index_past_the_queue_size_stops_that_queue_only() {
    let mut backend = Backend::start(POLICY);
    let mut device = backend.attach();
    device.create(wire::VIRTIO_TLS_AF_INET).expect("the device serves before");

    // The transmit queue of pair 0: an index 1000 entries ahead (the queue
    // has 256), kicked several times.
    for _ in 0..5 {
        device.publish_avail_idx_ahead(wire::tx_queue(0), 1000);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The worker is not spinning: ctl gets the device lock, the process
    // idles, and the control queue still answers.
    let metrics = backend.metrics();
    assert!(metrics.contains("vhost_tls_sockets_open 1"), "{metrics}");
    let before = backend.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = backend.cpu_time() - before;
    assert!(spent < Duration::from_millis(300), "the backend used {spent:?} of CPU in an idle second");
    device.create(wire::VIRTIO_TLS_AF_INET).expect("the control queue still serves");
    backend.assert_alive();
    assert_eq!(backend.log_lines_containing(BROKEN_QUEUE_LOG), 1, "said once:\n{}", backend.log());
    assert_eq!(backend.log_lines_containing("Iterator error"), 0, "{}", backend.log());

    // The control queue itself: ctl is unaffected, and once the front end
    // restarts the queue (as on a device reset) it is served again.
    device.publish_avail_idx_ahead(wire::CONTROLQ, 300);
    device.publish_avail_idx_ahead(wire::CONTROLQ, 300);
    let metrics = backend.metrics();
    assert!(metrics.contains("vhost_tls_sockets_open 2"), "{metrics}");
    assert_eq!(backend.log_lines_containing(BROKEN_QUEUE_LOG), 2, "once per broken queue:\n{}", backend.log());
    device.restore_avail_idx(wire::CONTROLQ);
    device.restart_queue(wire::CONTROLQ).expect("restart the control queue");
    device.create(wire::VIRTIO_TLS_AF_INET).expect("the restarted control queue serves");
    backend.assert_alive();
}

#[test]
fn a_million_bad_packets_for_a_failed_socket_keep_the_backend_flat() {
    let mut backend = Backend::start(POLICY);
    // A driver that never posts event buffers: the device must hold events.
    let mut device = TlsDevice::attach_with_event_buffers(&backend.path("vhost.sock"), 4, 0).unwrap();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    // A CREDIT_UPDATE carrying payload is malformed: the socket fails.
    device.raw_data(0, id, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, b"x");
    // Packet by packet, as a guest sending in a loop: the device wakes up
    // for each, and before the fix queued an event each time.
    device.flood_data(0, id, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, b"x", 10_000, 1);
    let before = backend.rss_kib();
    let started = Instant::now();
    device.flood_data(0, id, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, b"x", 1_000_000, 2);
    let took = started.elapsed();
    let after = backend.rss_kib();
    eprintln!("a million bad packets in {took:?}; backend VmRSS {before} KiB -> {after} KiB");
    backend.assert_alive();
    assert!(after < before + 4096, "backend VmRSS grew from {before} KiB to {after} KiB");
    let metrics = backend.metrics();
    assert_eq!(sample(&metrics, "vhost_tls_events_pending"), 1, "one SOCKET_ERROR waits, no more:\n{metrics}");
}

/// A TCP listener that accepts and never answers: a client handshake to
/// it stays pending.
fn tarpit() -> (TcpListener, SockAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, SockAddr::ipv4([127, 0, 0, 1], port))
}

#[test]
fn refusals_are_counted_and_audited_as_one_record_per_burst() {
    let backend = Backend::start(&POLICY.replace("[limits]", "[limits]\nmax_pending_handshakes = 1"));
    let mut device = backend.attach();
    let (_pit, pit) = tarpit();
    let pending = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.start_connect(pending, pit).expect("the one handshake allowed");

    const BURST: u64 = 500;
    let refused = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let unbound = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    for _ in 0..BURST {
        assert_eq!(device.start_connect(refused, pit), Err(Errno::EAGAIN));
        assert_eq!(device.bind(unbound, SockAddr::ipv4([0; 4], 444)), Err(Errno::EACCES));
    }
    let metrics = backend.metrics();
    assert_eq!(sample(&metrics, "vhost_tls_refusals_total{request=\"connect\",errno=\"EAGAIN\"}"), BURST, "{metrics}");
    assert_eq!(sample(&metrics, "vhost_tls_refusals_total{request=\"bind\",errno=\"EACCES\"}"), BURST, "{metrics}");
    assert!(backend.log_lines_containing("max_pending_handshakes") <= 2, "rate-limited:\n{}", backend.log());
    assert!(backend.log_lines_containing("bind refused") <= 2, "rate-limited:\n{}", backend.log());

    // The burst ends after a quiet second: one record each, with the count.
    let deadline = Instant::now() + TIMEOUT;
    let records = loop {
        let records = backend.audit_records();
        if records.len() >= 2 || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(records.len(), 2, "{records:#?}");
    let of = |request: &str| records.iter().find(|r| r["request"] == request).unwrap_or_else(|| panic!("{records:#?}"));
    let connects = of("connect");
    assert_eq!((connects["outcome"].as_str(), connects["count"].as_u64()), (Some("refused"), Some(BURST)), "{connects}");
    assert_eq!(connects["errno_name"], "EAGAIN", "{connects}");
    assert!(connects["reason"].as_str().unwrap().contains("max_pending_handshakes = 1"), "{connects}");
    let binds = of("bind");
    assert_eq!((binds["outcome"].as_str(), binds["count"].as_u64()), (Some("refused"), Some(BURST)), "{binds}");
    assert_eq!(binds["errno_name"], "EACCES", "{binds}");

    // Sessions are still recorded one by one.
    device.close(pending).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while backend.audit_records().len() < 3 {
        assert!(Instant::now() < deadline, "the pending session's record");
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = backend.audit_records();
    assert_eq!(records[2]["outcome"], "abandoned", "{records:#?}");
}

#[test]
fn a_guest_looping_denied_destinations_gets_a_few_records_then_one_with_a_count() {
    let backend = Backend::start(POLICY);
    let mut device = backend.attach();
    // ::1 is host-local and no rule names it (only 127.0.0.0/8): denied
    // before any packet, and loopback even if it were not.
    let mut loopback6 = [0u8; 16];
    loopback6[15] = 1;
    let denied = || SockAddr::ipv6(loopback6, 9, 0);
    const ATTEMPTS: u64 = 300;
    const ONE_BY_ONE: usize = 16;
    let id = device.create(wire::VIRTIO_TLS_AF_INET6).unwrap();
    for _ in 0..ATTEMPTS {
        assert_eq!(device.start_connect(id, denied()), Err(Errno::EACCES));
    }
    let metrics = backend.metrics();
    assert_eq!(sample(&metrics, "vhost_tls_denied_destinations_total"), ATTEMPTS, "every denial counted: {metrics}");

    // The first ones are sessions of their own; the rest of the window is
    // one record with a count once the burst goes quiet.
    let deadline = Instant::now() + TIMEOUT;
    let records = loop {
        let records = backend.audit_records();
        if records.len() > ONE_BY_ONE || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(records.len(), ONE_BY_ONE + 1, "{records:#?}");
    for record in &records[..ONE_BY_ONE] {
        assert_eq!((record["socket"].as_u64(), record["errno_name"].as_str()), (Some(u64::from(id)), Some("EACCES")), "{record}");
    }
    let folded = &records[ONE_BY_ONE];
    assert_eq!((folded["request"].as_str(), folded["outcome"].as_str()), (Some("connect"), Some("refused")), "{folded}");
    assert_eq!(folded["count"].as_u64(), Some(ATTEMPTS - ONE_BY_ONE as u64), "{folded}");
    assert!(folded["reason"].as_str().unwrap().contains("::1"), "{folded}");
}
