//! `serve` confines itself (docs/operator.md, "The sandbox"): seen from
//! outside in /proc, by what a reload may read, and by what a confined
//! process is refused or killed for.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn vhost_tls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `serve` with a control socket, stopped when dropped.
struct Serving {
    dir: tempfile::TempDir,
    child: Child,
}

impl Serving {
    fn start(sandbox_args: &[&str]) -> Serving {
        let dir = common::backend_dir();
        std::fs::write(dir.path().join("vm1.toml"), "[limits]\nmax_sockets = 16\n").unwrap();
        let child = vhost_tls()
            .args(["serve", "--socket-path"])
            .arg(dir.path().join("vhost.sock"))
            .arg("--policy")
            .arg(dir.path().join("vm1.toml"))
            .arg("--control-socket")
            .arg(dir.path().join("control.sock"))
            .args(sandbox_args)
            .spawn()
            .unwrap();
        Serving::confined(Serving { dir, child })
    }

    /// Waits until the backend is confined: both sockets are bound before
    /// the sandbox closes, but the control socket is served only after, so
    /// an answer to `ctl` means it is closed.
    fn confined(serving: Serving) -> Serving {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(serving.path("control.sock").exists() && serving.path("vhost.sock").exists()) {
            assert!(Instant::now() < deadline, "the sockets never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = serving.ctl(&["metrics"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serving
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ctl(&self, args: &[&str]) -> Output {
        vhost_tls().arg("ctl").arg("--control-socket").arg(self.path("control.sock")).args(args).output().unwrap()
    }

    /// `field:` of /proc/PID/status, whitespace-separated.
    fn status(&self, field: &str) -> Vec<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in\n{status}"));
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A policy file in a directory of its own, readable by anyone (so only
/// the sandbox can keep the backend from it).
fn policy_elsewhere() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let policy = dir.path().join("elsewhere.toml");
    std::fs::write(&policy, "[limits]\nmax_sockets = 8\n").unwrap();
    (dir, policy)
}

fn assert_confined(serving: &Serving) {
    assert_eq!(serving.status("Seccomp"), ["2"], "a seccomp filter is installed");
    assert_eq!(serving.status("NoNewPrivs"), ["1"]);
    assert_eq!(serving.status("CapEff"), ["0000000000000000"]);
    assert_eq!(serving.status("CapPrm"), ["0000000000000000"]);
    if let Some((uid, gid)) = common::sandbox_user_ids() {
        // Started as root: every uid and gid is the unprivileged user's,
        // no supplementary group is left, and neither is a capability to
        // regain through exec.
        assert_eq!(serving.status("Uid"), [uid.to_string(), uid.to_string(), uid.to_string(), uid.to_string()]);
        assert_eq!(serving.status("Gid"), [gid.to_string(), gid.to_string(), gid.to_string(), gid.to_string()]);
        assert_eq!(serving.status("Groups"), [gid.to_string()]);
        assert_eq!(serving.status("CapBnd"), ["0000000000000000"]);
    }
}

#[test]
fn serve_confines_itself_by_default() {
    let serving = Serving::start(&[]);
    assert_confined(&serving);

    // Still works: answers, and reloads its own policy file (its directory
    // stays readable)...
    let out = serving.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("policy generation 2 loaded from "), "{}", text(&out.stdout));
    // ...but nothing outside the directories its policy came from, even a
    // file anyone may read: Landlock refuses it.
    let (_elsewhere, policy) = policy_elsewhere();
    let out = serving.ctl(&["reload", "--policy", policy.to_str().unwrap()]);
    assert!(!out.status.success(), "a policy outside the sandbox was loaded: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read the policy: Permission denied"), "{stderr}");
    let policy_dir = serving.dir.path().display().to_string();
    assert!(stderr.contains(&format!("the sandbox lets a reload read policy files only beneath {policy_dir} as uid")), "{stderr}");

    // It exits cleanly on SIGTERM and still removes its sockets.
    let vhost_socket = serving.path("vhost.sock");
    let control_socket = serving.path("control.sock");
    let dir = serving.dir.path().to_owned();
    let status = serving.stop();
    assert!(status.success(), "{status}");
    assert!(!vhost_socket.exists() && !control_socket.exists(), "sockets left in {}", dir.display());
}

/// The Landlock ABI the backend asks for; `strict` refuses less.
const LANDLOCK_ABI: i64 = 6;

#[test]
fn strict_needs_landlock_and_confines_the_same() {
    if common::landlock_abi() < LANDLOCK_ABI {
        let dir = common::backend_dir();
        std::fs::write(dir.path().join("vm1.toml"), "").unwrap();
        let out = vhost_tls()
            .args(["serve", "--sandbox", "strict", "--socket-path"])
            .arg(dir.path().join("vhost.sock"))
            .arg("--policy")
            .arg(dir.path().join("vm1.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("--sandbox strict: this kernel cannot enforce"), "{}", text(&out.stderr));
        return;
    }
    let serving = Serving::start(&["--sandbox", "strict"]);
    assert_confined(&serving);
    let status = serving.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn sandbox_none_turns_it_off() {
    let serving = Serving::start(&["--sandbox", "none"]);
    assert_eq!(serving.status("Seccomp"), ["0"]);
    assert_eq!(serving.status("NoNewPrivs"), ["0"]);
    if common::sandbox_user_ids().is_some() {
        assert_eq!(serving.status("Uid"), ["0", "0", "0", "0"], "root stays root");
    }
    let (_elsewhere, policy) = policy_elsewhere();
    let out = serving.ctl(&["reload", "--policy", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn serve_refuses_an_unknown_user() {
    if common::sandbox_user_ids().is_none() {
        // Not root: --user is ignored (there is nobody to switch from), so
        // there is nothing to refuse.
        return;
    }
    let dir = common::backend_dir();
    let policy = dir.path().join("vm1.toml");
    std::fs::write(&policy, "").unwrap();
    let socket = dir.path().join("vhost.sock");
    let out = vhost_tls()
        .args(["serve", "--user", "no-such-user-here", "--socket-path"])
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no user \"no-such-user-here\" to run as"), "{}", text(&out.stderr));
    assert!(!socket.exists(), "no vhost-user socket is left behind");
}

/// Set in the child process [`a_confined_process_cannot_open_write_or_exec`]
/// starts: the directory it may read.
const CHILD_DIR: &str = "VHOST_TLS_SANDBOX_TEST_DIR";

/// Runs in a process of its own (this test binary again): confine with the
/// backend's own code, then try what the sandbox forbids. What is refused
/// is printed; the exec at the end must kill the process.
#[test]
fn a_confined_process_cannot_open_write_or_exec() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        confined_child(Path::new(&dir));
    }
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("allowed.txt"), "allowed").unwrap();
    // Writable by anyone: only the sandbox keeps the child from writing it.
    std::fs::set_permissions(dir.path().join("allowed.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_confined_process_cannot_open_write_or_exec", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let mut expected = vec!["read allowed.txt: allowed", "resolve localhost: resolved", "resolve by DNS: ", "exec /bin/true next"];
    if common::landlock_abi() >= LANDLOCK_ABI {
        expected.extend(["read /etc/passwd: denied", "list /etc: denied", "create a file beside allowed.txt: denied", "write allowed.txt: denied"]);
    }
    for line in expected {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}\n{stderr}");
    }
    assert!(!stdout.contains("exec returned"), "{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "killed by seccomp: {}\n{stdout}\n{stderr}", out.status);
}

fn confined_child(dir: &Path) -> ! {
    use std::io::Write;
    use vhost_tls::sandbox::{confine, SandboxMode, SandboxPlan};
    // Without Landlock (an old kernel), what follows checks seccomp alone.
    let landlock = common::landlock_abi() >= LANDLOCK_ABI;
    let plan = SandboxPlan {
        mode: if landlock { SandboxMode::Strict } else { SandboxMode::On },
        user: None,
        policy_dirs: vec![dir.to_owned()],
        socket_dirs: vec![],
        log_dirs: vec![],
        keep_net_bind_service: false,
    };
    confine(&plan).expect("confine");
    let outcome = |result: std::io::Result<String>| match result {
        Ok(what) => what,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".to_owned(),
        Err(e) => format!("failed otherwise: {e}"),
    };
    println!("read allowed.txt: {}", outcome(std::fs::read_to_string(dir.join("allowed.txt"))));
    println!("read /etc/passwd: {}", outcome(std::fs::read_to_string("/etc/passwd")));
    println!("list /etc: {}", outcome(std::fs::read_dir("/etc").map(|_| "listed".to_owned())));
    println!("create a file beside allowed.txt: {}", outcome(std::fs::write(dir.join("new.txt"), "x").map(|_| "created".to_owned())));
    let append = std::fs::OpenOptions::new().append(true).open(dir.join("allowed.txt"));
    println!("write allowed.txt: {}", outcome(append.map(|_| "opened for writing".to_owned())));
    // Host name resolution as the backend does it: getaddrinfo on a thread
    // of its own, from /etc/hosts, then a name only DNS can answer (any
    // answer will do, even none: the point is the process survives it).
    let resolve = |name: &'static str| {
        std::thread::spawn(move || std::net::ToSocketAddrs::to_socket_addrs(&(name, 443)).map(|addrs| addrs.count()))
            .join()
            .unwrap()
    };
    println!("resolve localhost: {}", outcome(resolve("localhost").map(|count| if count > 0 { "resolved" } else { "nothing" }.to_owned())));
    println!("resolve by DNS: {}", outcome(resolve("vhost-tls-sandbox-test.invalid").map(|_| "answered".to_owned()).or_else(|e| Ok(format!("no address ({e})")))));
    println!("exec /bin/true next");
    std::io::stdout().flush().unwrap();
    let error = std::os::unix::process::CommandExt::exec(&mut Command::new("/bin/true"));
    println!("exec returned: {error}");
    std::process::exit(0);
}

/// A free TCP port below 1024 on 127.0.0.1 (binding it proves the tests
/// may), or `None` when there is none or the tests cannot bind one.
fn free_privileged_port() -> Option<u16> {
    (900..1000).rev().find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
}

/// A guest port mapped to a privileged host port: the backend keeps
/// CAP_NET_BIND_SERVICE, and only it, to bind it when the guest listens;
/// a client completes a handshake with the key read before the sandbox
/// closed.
#[test]
fn a_privileged_host_port_keeps_only_net_bind_service() {
    use std::io::{Read, Write};
    use vhost_tls_harness::driver::TlsDevice;
    use vhost_tls_harness::pki::{TestCa, Validity};
    use virtio_tls_spec::{self as wire, SockAddr};
    if common::sandbox_user_ids().is_none() {
        // Not root: no CAP_NET_BIND_SERVICE to keep (nor a port to bind).
        return;
    }
    let port = free_privileged_port().expect("a free port below 1024 on 127.0.0.1");
    let ca = TestCa::new("vhost-tls sandbox CA");
    let dir = common::backend_dir();
    ca.issue(&["localhost"], Validity::Current).write_to(dir.path(), "www").unwrap();
    let policy = format!(
        "[[server.listen]]\nguest_port = 443\nhost = \"127.0.0.1:{port}\"\n\n[[server.identities]]\ncertificate_chain = \"www.pem\"\nprivate_key = \"www.key\"\n"
    );
    std::fs::write(dir.path().join("vm1.toml"), policy).unwrap();
    let child = vhost_tls()
        .args(["serve", "--socket-path"])
        .arg(dir.path().join("vhost.sock"))
        .arg("--policy")
        .arg(dir.path().join("vm1.toml"))
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .spawn()
        .unwrap();
    let serving = Serving::confined(Serving { dir, child });
    assert_eq!(serving.status("Seccomp"), ["2"]);
    // CAP_NET_BIND_SERVICE is capability 10.
    let net_bind_service = format!("{:016x}", 1u64 << 10);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(serving.status(set), std::slice::from_ref(&net_bind_service), "{set}");
    }
    assert_eq!(serving.status("CapInh"), ["0000000000000000"]);
    assert_eq!(serving.status("CapAmb"), ["0000000000000000"]);

    let mut device = TlsDevice::attach(&serving.path("vhost.sock"), 4).unwrap();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], 443)).unwrap();
    device.listen(listener, 8).unwrap();
    let client = std::thread::spawn(move || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connection = rustls::ClientConnection::new(config.into(), "localhost".try_into().unwrap()).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).unwrap();
        answer
    });
    let (accepted, _peer) = device.accept(listener, Duration::from_secs(30)).unwrap();
    assert_eq!(device.read_exact(accepted, 4, Duration::from_secs(30)).unwrap(), b"ping");
    device.send_all(accepted, b"pong", Duration::from_secs(30)).unwrap();
    assert_eq!(&client.join().unwrap(), b"pong");
}

/// A backend stopped (SIGSTOP, a debugger, a frozen cgroup) and continued
/// resumes its interrupted timed sleeps through restart_syscall, which the
/// allow-list must have, or it dies of SIGSYS. The sleep here: a resolver
/// thread waiting for a DNS answer (poll with a timeout) from a name
/// server that never answers, on 127.0.0.77, put in the backend's own
/// /etc/resolv.conf by a mount namespace (root only).
#[test]
fn a_stopped_and_continued_backend_keeps_serving() {
    use vhost_tls_harness::driver::TlsDevice;
    use virtio_tls_spec::{self as wire, SockAddr};
    if common::sandbox_user_ids().is_none() {
        eprintln!("skipped: needs root for a mount namespace with its own resolv.conf");
        return;
    }
    let silent_dns = std::net::UdpSocket::bind("127.0.0.77:53").expect("a silent name server on 127.0.0.77:53");
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.77\noptions timeout:10 attempts:1\n").unwrap();
    std::fs::write(dir.path().join("vm1.toml"), "[destinations]\ndefault = \"allow\"\n").unwrap();
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"", "sh"])
        .arg(dir.path().join("resolv.conf"))
        .arg(env!("CARGO_BIN_EXE_vhost-tls"))
        .args(["serve", "--socket-path"])
        .arg(dir.path().join("vhost.sock"))
        .arg("--policy")
        .arg(dir.path().join("vm1.toml"))
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .spawn()
        .unwrap();
    let mut serving = Serving::confined(Serving { dir, child });
    let mut device = TlsDevice::attach(&serving.path("vhost.sock"), 4).unwrap();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.start_connect(id, SockAddr::hostname(b"never-answered.test", 443).unwrap()).unwrap();
    let mut buf = [0u8; 512];
    silent_dns.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    silent_dns.recv_from(&mut buf).expect("the backend asks the name server");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(serving.child.id() as i32, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(serving.child.id() as i32, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(300));
    }
    if let Some(status) = serving.child.try_wait().unwrap() {
        panic!("the backend died after SIGSTOP/SIGCONT: {status} (signal {:?})", status.signal());
    }
    let out = serving.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serving.stop().code(), Some(0));
}

const SIGNAL_CHILD: &str = "VHOST_TLS_SANDBOX_SIGNAL_TEST";
const SIGNAL_TARGET: &str = "VHOST_TLS_SANDBOX_SIGNAL_TARGET";

/// One VM's backend must not signal another's (they may run as the same
/// user): a confined process may signal only itself. Seccomp lets tgkill
/// name only its own pid (anything else kills it); where the kernel has
/// Landlock's signal scope (ABI 6), a signal past seccomp (`--sandbox
/// log`) is refused by Landlock too.
#[test]
fn a_confined_process_can_signal_only_itself() {
    if let Some(mode) = std::env::var_os(SIGNAL_CHILD) {
        signalling_child(mode.to_str().unwrap());
    }
    // Another process of the user the backend runs as (another VM's
    // backend, say), outside the sandbox.
    let mut target = Command::new("sleep");
    target.arg("60");
    if let Some((uid, gid)) = common::sandbox_user_ids() {
        std::os::unix::process::CommandExt::uid(&mut target, uid);
        std::os::unix::process::CommandExt::gid(&mut target, gid);
    }
    let mut target = target.spawn().unwrap();
    let run = |mode: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_confined_process_can_signal_only_itself", "--nocapture", "--test-threads=1"])
            .env(SIGNAL_CHILD, mode)
            .env(SIGNAL_TARGET, target.id().to_string())
            .output()
            .unwrap();
        (text(&out.stdout), text(&out.stderr), out.status)
    };
    let (stdout, stderr, status) = run("on");
    assert!(stdout.contains("tgkill self: ok"), "{stdout}\n{stderr}");
    assert!(stdout.contains("tgkill the other process next"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("tgkill the other process returned"), "{stdout}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "killed by seccomp: {status}\n{stdout}\n{stderr}");

    let (stdout, stderr, status) = run("log");
    assert!(stdout.contains("tgkill self: ok"), "{stdout}\n{stderr}");
    if common::landlock_abi() >= LANDLOCK_ABI {
        assert!(stdout.contains("kill the other process: denied"), "Landlock scopes signals:\n{stdout}\n{stderr}");
        assert!(stdout.contains("tgkill the other process returned: denied"), "Landlock scopes signals:\n{stdout}\n{stderr}");
    }
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let _ = target.kill();
    let _ = target.wait();
}

fn signalling_child(mode: &str) -> ! {
    use std::io::Write;
    use vhost_tls::sandbox::{confine, SandboxMode, SandboxPlan};
    let plan = SandboxPlan {
        mode: if mode == "log" { SandboxMode::Log } else { SandboxMode::On },
        user: None,
        policy_dirs: vec![],
        socket_dirs: vec![],
        log_dirs: vec![],
        keep_net_bind_service: false,
    };
    let target: libc::pid_t = std::env::var(SIGNAL_TARGET).unwrap().parse().unwrap();
    confine(&plan).expect("confine");
    let outcome = |rc: libc::c_long| {
        if rc == 0 {
            "ok".to_owned()
        } else {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM) => "denied".to_owned(),
                other => format!("failed otherwise: {other:?}"),
            }
        }
    };
    // SAFETY: signal 0 only checks the target; plain integer arguments.
    let own = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0) };
    println!("tgkill self: {}", outcome(own));
    if mode == "log" {
        // SAFETY: as above.
        println!("kill the other process: {}", outcome(unsafe { libc::kill(target, 0) } as libc::c_long));
    }
    println!("tgkill the other process next");
    std::io::stdout().flush().unwrap();
    // SAFETY: as above.
    let other = unsafe { libc::syscall(libc::SYS_tgkill, target, target, 0) };
    println!("tgkill the other process returned: {}", outcome(other));
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}
