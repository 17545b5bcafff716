//! QEMU's vhost-user backend conventions and systemd's, against the real
//! binary: `serve --fd` on a socket the caller made, the bare program's
//! `--socket-path` and `--fd`, systemd's socket activation (LISTEN_FDS),
//! `--print-capabilities`, `--fd` and `--socket-path` refused together, and
//! READY=1 on $NOTIFY_SOCKET once the vhost-user socket takes connections.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

fn vhost_tls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
}

/// Kills the child (if still running) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after the front end left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_echo_through(socket: &Path, ca: &TestCa) {
    let identity = ca.issue(&pki::loopback_names(), pki::Validity::Current);
    let peer = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    // One data queue pair: control, event, rx, tx.
    let mut device = TlsDevice::attach(socket, 4).expect("attach the harness as the guest");
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    let std::net::SocketAddr::V4(v4) = peer.addr else { panic!("IPv4 peer") };
    let result = device.connect(id, SockAddr::ipv4(v4.ip().octets(), v4.port()), TIMEOUT);
    result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(id)));
    device.send_all(id, b"through a handed-over socket", TIMEOUT).unwrap();
    assert_eq!(device.read_exact(id, 28, TIMEOUT).unwrap(), b"through a handed-over socket");
    device.close(id).unwrap();
}

/// `vhost-tls ARGS... --policy DIR/vm1.toml` with a listening socket at
/// DIR/vhost.sock, made here as a systemd .socket unit would, handed over
/// as descriptor 3 (the backend never sees the path).
fn spawn_with_fd_3(dir: &Path, args: &[&str]) -> Running {
    let listener = UnixListener::bind(dir.join("vhost.sock")).unwrap();
    let handed_over = listener.as_raw_fd();
    let mut command = vhost_tls();
    command.args(args).arg("--policy").arg(dir.join("vm1.toml"));
    // SAFETY: between fork and exec only dup2 and fcntl, which are
    // async-signal-safe, run; they make fd 3 of the child the listener,
    // inheritable (dup2 onto itself would keep close-on-exec).
    unsafe {
        command.pre_exec(move || {
            let ok = if handed_over == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(handed_over, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Running(command.spawn().unwrap())
}

/// A directory with the policy vm1.toml and the CA its peers use.
fn backend_dir_with_policy() -> (tempfile::TempDir, TestCa) {
    let dir = common::backend_dir();
    let ca = TestCa::new("vhost-tls conventions CA");
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("vm1.toml"), LOOPBACK_POLICY).unwrap();
    (dir, ca)
}

#[test]
fn serve_on_a_listening_socket_handed_over_as_fd_3_serves_a_guest() {
    let (dir, ca) = backend_dir_with_policy();
    let mut serve = spawn_with_fd_3(dir.path(), &["serve", "--fd", "3"]);
    let socket = dir.path().join("vhost.sock");
    tls_echo_through(&socket, &ca);
    let status = wait_for_exit(&mut serve.0);
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "a handed-over socket's file is its maker's: serve must leave it");
}

#[test]
fn the_bare_program_takes_fd_and_socket_path_as_qemu_s_convention_asks() {
    // `vhost-tls --fd 3 --policy ...`, no subcommand.
    let (dir, ca) = backend_dir_with_policy();
    let mut serve = spawn_with_fd_3(dir.path(), &["--fd", "3"]);
    tls_echo_through(&dir.path().join("vhost.sock"), &ca);
    assert!(wait_for_exit(&mut serve.0).success());

    // `vhost-tls --socket-path PATH --policy ...`.
    let (dir, ca) = backend_dir_with_policy();
    let socket = dir.path().join("vhost.sock");
    let mut serve = Running(vhost_tls().arg("--socket-path").arg(&socket).arg("--policy").arg(dir.path().join("vm1.toml")).spawn().unwrap());
    tls_echo_through(&socket, &ca);
    assert!(wait_for_exit(&mut serve.0).success());
    assert!(!socket.exists(), "a socket the backend made is removed at exit");
}

#[test]
fn socket_activation_by_systemd_s_own_tool_serves_a_guest_without_fd() {
    // systemd-socket-activate does what a .socket unit does: it listens,
    // then starts the program with the socket as descriptor 3, LISTEN_FDS=1
    // and LISTEN_PID set to the program's pid. No --fd, no --socket-path.
    let (dir, ca) = backend_dir_with_policy();
    let socket = dir.path().join("vhost.sock");
    let mut serve = Running(
        Command::new("systemd-socket-activate")
            .arg("--listen")
            .arg(&socket)
            .arg(env!("CARGO_BIN_EXE_vhost-tls"))
            .arg("serve")
            .arg("--policy")
            .arg(dir.path().join("vm1.toml"))
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package; scripts/setup installs it)"),
    );
    tls_echo_through(&socket, &ca);
    let status = wait_for_exit(&mut serve.0);
    assert!(status.success(), "{status}");
}

/// `sh -c 'exec env VARS vhost-tls ARGS'`, so that `$$`, the shell's pid,
/// is the backend's; returns the backend's exit code and stderr.
fn run_with_listen_env(vars: &str, args: &str) -> (Option<i32>, String) {
    let dir = backend_dir_with_policy().0;
    let script = format!("exec env {vars} '{}' {args} --policy '{}'", env!("CARGO_BIN_EXE_vhost-tls"), dir.path().join("vm1.toml").display());
    let out = Command::new("sh").arg("-c").arg(script).stdin(std::process::Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn listen_fds_meant_for_another_process_or_more_than_one_socket_are_refused_with_a_sentence() {
    let (code, stderr) = run_with_listen_env("LISTEN_FDS=1 LISTEN_PID=1", "serve");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("LISTEN_FDS=1 is meant for process 1 (LISTEN_PID), not this one"), "{stderr}");
    let (code, stderr) = run_with_listen_env("LISTEN_FDS=2 LISTEN_PID=$$", "serve");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("systemd passed 2 sockets (LISTEN_FDS)"), "{stderr}");
    // Descriptor 3 is checked as --fd's is: here it is not open.
    let (code, stderr) = run_with_listen_env("LISTEN_FDS=1 LISTEN_PID=$$", "");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the socket systemd passed (LISTEN_FDS, descriptor 3): not an open descriptor"), "{stderr}");
}

#[test]
fn serve_refuses_a_descriptor_that_is_not_a_listening_socket() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "").unwrap();
    let out = vhost_tls().args(["serve", "--fd", "0", "--policy"]).arg(&policy).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fd 0: not a socket"), "{stderr}");
}

#[test]
fn print_capabilities_prints_a_json_object_with_type_and_features() {
    let out = vhost_tls().arg("--print-capabilities").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let capabilities: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(capabilities["type"], "tls", "{capabilities}");
    let features = capabilities["features"].as_array().expect("features is a list");
    assert!(features.iter().all(serde_json::Value::is_string), "{capabilities}");
    // The descriptor shipped for management software names the same type.
    let descriptor = concat!(env!("CARGO_MANIFEST_DIR"), "/../qemu/50-vhost-tls.json");
    let descriptor: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(descriptor).unwrap()).unwrap();
    assert_eq!(descriptor["type"], capabilities["type"]);
    assert!(descriptor["binary"].as_str().is_some_and(|binary| binary.starts_with('/')), "{descriptor}");
    assert!(descriptor["description"].is_string(), "{descriptor}");
}

#[test]
fn fd_and_socket_path_together_are_refused_naming_both() {
    let out = vhost_tls().args(["serve", "--fd", "3", "--socket-path", "/nonexistent/s.sock", "--policy", "/dev/null"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fd") && stderr.contains("--socket-path") && stderr.contains("cannot be used with"), "{stderr}");
    let out = vhost_tls().args(["serve", "--policy", "/dev/null"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--socket-path") && stderr.contains("--fd"), "{stderr}");
}

#[test]
fn ready_reaches_notify_socket_once_the_vhost_user_socket_takes_connections() {
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("vm1.toml"), "").unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let socket = dir.path().join("vhost.sock");
    let serve = vhost_tls()
        .args(["serve", "--socket-path"])
        .arg(&socket)
        .arg("--policy")
        .arg(dir.path().join("vm1.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let mut serve = Running(serve);
    let mut message = [0u8; 256];
    let length = notify.recv(&mut message).expect("READY=1 within the timeout");
    // Straight away and once (the harness's attach would retry): the socket
    // must already take a front end.
    let front_end = std::os::unix::net::UnixStream::connect(&socket);
    assert_eq!(String::from_utf8_lossy(&message[..length]).lines().collect::<Vec<_>>(), ["READY=1"]);
    front_end.expect("the vhost-user socket takes a connection as soon as READY=1 arrives");
    // Nothing else is sent (no second READY=1, no STOPPING=1 mid-way).
    notify.set_nonblocking(true).unwrap();
    assert!(notify.recv(&mut message).is_err());
    drop(serve.0.stdin.take());
}
