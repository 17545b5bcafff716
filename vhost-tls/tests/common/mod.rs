//! Helpers shared by the tests that run the real `vhost-tls serve`.
// Each test crate uses some of these.
#![allow(dead_code)]

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

/// The user `serve` switches to when started as root without `--user`.
pub const SANDBOX_USER: &str = "nobody";

/// A fresh directory for a backend's sockets, policy and audit log, set up
/// as an operator would (systemd's `RuntimeDirectory=`): when the tests run
/// as root, owned by the user `serve` drops to, so that the confined
/// backend can still read its policy for reloads and remove its sockets
/// when it exits.
pub fn backend_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some((uid, gid)) = sandbox_user_ids() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    dir
}

/// The uid and gid of [`SANDBOX_USER`] when the tests run as root (and so
/// `serve` switches to it), else `None`.
pub fn sandbox_user_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new(SANDBOX_USER).unwrap();
    // SAFETY: getpwnam reads a NUL-terminated string; the tests are the only
    // users of its static result, read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "no user {SANDBOX_USER} on this host");
    // SAFETY: non-null, so it points to a valid passwd record.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

/// The kernel's Landlock ABI version, 0 when it has none.
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag, the call
    // only returns the ABI version (or fails); it touches no memory.
    let abi = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION)
    };
    abi.max(0)
}

/// The value of an unlabelled or labelled sample in Prometheus text.
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

/// `vhost-tls serve` as an operator runs it for one VM, everything in
/// `dir`: the vhost-user socket `vhost.sock`, the policy `vm1.toml`, the
/// control socket `control.sock` and the audit log `audit.jsonl`.
pub fn serve_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vhost-tls"));
    command
        .arg("serve")
        .arg("--socket-path")
        .arg(dir.join("vhost.sock"))
        .arg("--policy")
        .arg(dir.join("vm1.toml"))
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"));
    command
}
