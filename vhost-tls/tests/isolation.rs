//! One VM cannot reach another's backend (issue 17, deliverable 3): with
//! `--socket-group`, as the systemd units run it, the vhost-user socket is
//! open to the VM's own QEMU only, and the audit log and control socket to
//! the operator only. Checked as other uids, through the real file modes.

mod common;

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The group vm1's QEMU runs with (`vm1-qemu` in the units).
const VM1_QEMU_GID: u32 = 4242;
/// The uid (and own group) of a QEMU: vm2's has no other group, vm1's also
/// has [`VM1_QEMU_GID`].
const QEMU_UID: u32 = 4243;

/// What a process of another uid tries.
enum Attempt {
    Connect(libc::sockaddr_un),
    Read(CString),
}

impl Attempt {
    fn connect(path: &Path) -> Attempt {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: an all-zero sockaddr_un is valid (family set below).
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < address.sun_path.len());
        for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        Attempt::Connect(address)
    }

    fn read(path: &Path) -> Attempt {
        Attempt::Read(CString::new(path.as_os_str().as_encoded_bytes()).unwrap())
    }
}

/// Runs `attempt` in a child process as uid [`QEMU_UID`] with `groups`,
/// and returns 0 if it succeeded, else its errno.
fn as_qemu(groups: &[u32], attempt: &Attempt) -> i32 {
    // Everything the child needs is prepared here: after fork it calls only
    // async-signal-safe system calls and _exit.
    // SAFETY: fork has no preconditions; the child below stays within
    // async-signal-safe calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: (child) plain system calls on live locals; _exit ends it.
        unsafe {
            let errno = || *libc::__errno_location();
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(QEMU_UID, QEMU_UID, QEMU_UID) != 0
                || libc::setresuid(QEMU_UID, QEMU_UID, QEMU_UID) != 0
            {
                libc::_exit(200);
            }
            let rc = match attempt {
                Attempt::Connect(address) => {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                    libc::connect(fd, (address as *const libc::sockaddr_un).cast(), length)
                }
                Attempt::Read(path) => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    if fd < 0 { -1 } else { 0 }
                }
            };
            libc::_exit(if rc == 0 { 0 } else { errno() });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 200, "the child could not become uid {QEMU_UID}");
    code
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn another_vm_s_qemu_is_refused_the_socket_and_nobody_but_the_operator_reads_the_audit_log() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: acting as other uids needs root (scripts/test and CI run as root)");
        return;
    }
    let dir = common::backend_dir();
    // As the units' RuntimeDirectoryMode=0711: any uid may walk to a file in
    // it, whose own mode then decides (a 0700 directory would hide a 0666
    // socket and prove nothing).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::write(dir.path().join("vm1.toml"), "").unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut serve = Running(
        common::serve_command(dir.path())
            .arg("--socket-group")
            .arg(VM1_QEMU_GID.to_string())
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .unwrap(),
    );
    // READY=1 comes once the socket has its group.
    let mut message = [0u8; 64];
    notify.recv(&mut message).expect("READY=1");

    let socket = dir.path().join("vhost.sock");
    let audit_log = dir.path().join("audit.jsonl");
    let control = dir.path().join("control.sock");
    let socket_meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((socket_meta.mode() & 0o777, socket_meta.gid()), (0o660, VM1_QEMU_GID), "the vhost-user socket");
    assert_eq!(std::fs::metadata(&audit_log).unwrap().mode() & 0o777, 0o640, "the audit log");
    assert_eq!(std::fs::metadata(&control).unwrap().mode() & 0o777, 0o600, "the control socket");

    // vm2's QEMU: another uid, not in vm1's group.
    assert_eq!(as_qemu(&[], &Attempt::connect(&socket)), libc::EACCES, "vm2's QEMU connected to vm1's backend");
    assert_eq!(as_qemu(&[], &Attempt::read(&audit_log)), libc::EACCES, "vm2's QEMU read vm1's audit log");
    // vm1's own QEMU reaches neither the operator's control socket nor the log...
    assert_eq!(as_qemu(&[VM1_QEMU_GID], &Attempt::connect(&control)), libc::EACCES, "QEMU used the control socket");
    assert_eq!(as_qemu(&[VM1_QEMU_GID], &Attempt::read(&audit_log)), libc::EACCES, "QEMU read the audit log");
    // ...but does connect to its backend, which then serves it (and, the
    // front end gone at once, exits).
    assert_eq!(as_qemu(&[VM1_QEMU_GID], &Attempt::connect(&socket)), 0, "vm1's QEMU could not connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after vm1's QEMU left");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn socket_group_needs_a_socket_the_backend_makes() {
    // A handed-over socket's group is its maker's (SocketGroup=).
    for args in [&["serve", "--fd", "3"][..], &["serve"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
            .args(args)
            .args(["--socket-group", "4242", "--policy", "/dev/null"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--socket-group") && (stderr.contains("--socket-path") || stderr.contains("--fd")), "{stderr}");
    }
}
