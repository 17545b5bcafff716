//! The operator's tools on the command line: policies built on a shared
//! base (`include`), and `vhost-tls ctl` against a running `serve` through
//! its control socket, reloads by ctl and by SIGHUP.

mod common;

use common::sample;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn vhost_tls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn policy_check_follows_includes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.toml", "[destinations]\ndefault = \"deny\"\n\n[limits]\nmax_sockets = 64\n");
    let vm = write(dir.path(), "vm1.toml", "include = \"base.toml\"\n\n[limits]\nmax_sockets = 8\n");
    let out = vhost_tls().args(["policy", "check"]).arg(&vm).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: OK\n", vm.display()));

    // A mistake in the base is reported in the base, at its line.
    let base = write(dir.path(), "base.toml", "[destinations]\ndefault = \"sometimes\"\n\n[limits]\nmax_sockets = 64\n");
    let out = vhost_tls().args(["policy", "check"]).arg(&vm).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr), format!("{}:2: unknown action \"sometimes\": use \"allow\" or \"deny\"\n", base.display()));

    // A missing base is reported at the include line of the VM's file.
    std::fs::remove_file(&base).unwrap();
    let out = vhost_tls().args(["policy", "check"]).arg(&vm).output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with(&format!("{}:1: cannot read included policy {}", vm.display(), base.display())), "{stderr}");
}

/// A `serve` with a control socket, killed when dropped.
struct Serving {
    dir: tempfile::TempDir,
    child: Child,
}

impl Serving {
    fn start(policy: &str) -> Serving {
        let dir = common::backend_dir();
        let policy = write(dir.path(), "vm1.toml", policy);
        let child = vhost_tls()
            .args(["serve", "--socket-path"])
            .arg(dir.path().join("vhost.sock"))
            .arg("--policy")
            .arg(&policy)
            .arg("--control-socket")
            .arg(dir.path().join("control.sock"))
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .spawn()
            .unwrap();
        let serving = Serving { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serving.control_socket().exists() {
            assert!(Instant::now() < deadline, "the control socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        serving
    }

    fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        vhost_tls().arg("ctl").arg("--control-socket").arg(self.control_socket()).args(args).output().unwrap()
    }

    /// `ctl` that must succeed; its standard output.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "ctl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn policy_file(&self) -> PathBuf {
        self.dir.path().join("vm1.toml")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}


#[test]
fn ctl_reloads_through_the_control_socket_and_refuses_bad_policies() {
    let serving = Serving::start("[tls]\nmin_version = \"1.2\"\n\n[limits]\nmax_sockets = 16\n");

    let policy = serving.ctl_ok(&["policy"]);
    assert!(policy.starts_with("# policy generation 1, from "), "{policy}");
    assert!(policy.contains("min_version = \"1.2\"\n") && policy.contains("max_sockets = 16\n"), "{policy}");
    // No front end yet, so no sockets: only the header.
    assert_eq!(serving.ctl_ok(&["sockets"]).lines().collect::<Vec<_>>(), ["ID  ROLE  STATE  PEER  NAME  VERSION  CIPHER  TO_PEER  FROM_PEER  POLICY"]);

    // The operator edits the file and reloads.
    write(serving.dir.path(), "vm1.toml", "[tls]\nmin_version = \"1.3\"\n\n[limits]\nmax_sockets = 16\n");
    let reloaded = serving.ctl_ok(&["reload"]);
    assert_eq!(reloaded, format!("policy generation 2 loaded from {}: new sessions use it\n", serving.policy_file().display()));
    assert!(serving.ctl_ok(&["policy"]).contains("min_version = \"1.3\"\n"));

    // A broken edit is refused with its file and line; the policy in force stays.
    write(serving.dir.path(), "vm1.toml", "[tls]\nmin_version = \"1.3\"\n\n[limits]\nmax_sockets = 0\n");
    let out = serving.ctl(&["reload"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("the policy in force stays: {}:5: max_sockets = 0 is outside", serving.policy_file().display())), "{stderr}");
    let policy = serving.ctl_ok(&["policy"]);
    assert!(policy.starts_with("# policy generation 2,") && policy.contains("max_sockets = 16\n"), "{policy}");

    // Another file, named relative to where ctl runs.
    let other = write(serving.dir.path(), "other.toml", "[limits]\nmax_sockets = 9\n");
    let out = vhost_tls()
        .current_dir(serving.dir.path())
        .args(["ctl", "--control-socket", "control.sock", "reload", "--policy", "other.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let policy = serving.ctl_ok(&["policy"]);
    assert!(policy.starts_with(&format!("# policy generation 3, from {}\n", other.display())), "{policy}");
    assert!(policy.contains("max_sockets = 9\n"), "{policy}");

    let metrics = serving.ctl_ok(&["metrics"]);
    assert_eq!(sample(&metrics, "vhost_tls_policy_reloads_total{result=\"ok\"}"), 2);
    assert_eq!(sample(&metrics, "vhost_tls_policy_reloads_total{result=\"failed\"}"), 1);
    assert_eq!(sample(&metrics, "vhost_tls_policy_generation"), 3);
    assert_eq!(sample(&metrics, "vhost_tls_sockets_open"), 0);
    let labelled = serving.ctl_ok(&["metrics", "--vm", "vm1"]);
    assert_eq!(sample(&labelled, "vhost_tls_policy_reloads_total{vm=\"vm1\",result=\"ok\"}"), 2);
    assert_eq!(sample(&labelled, "vhost_tls_sockets_open{vm=\"vm1\"}"), 0);
    // The audit log is opened (created) at start, before any session.
    assert_eq!(std::fs::read_to_string(serving.dir.path().join("audit.jsonl")).unwrap(), "");
}

#[test]
fn serve_refuses_paths_it_cannot_use_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "vm1.toml", "");
    let socket = dir.path().join("vhost.sock");
    let nowhere = dir.path().join("no-such-dir");
    for (option, message) in [("--audit-log", "cannot open the audit log"), ("--control-socket", "cannot listen on the control socket")] {
        let out = vhost_tls()
            .args(["serve", "--socket-path"])
            .arg(&socket)
            .arg("--policy")
            .arg(&policy)
            .arg(option)
            .arg(nowhere.join("x"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(message), "{option}: {}", text(&out.stderr));
        assert!(!socket.exists(), "{option}: no vhost-user socket is left behind");
    }
}

#[test]
fn sighup_reloads_the_policy_file() {
    let serving = Serving::start("[limits]\nmax_sockets = 16\n");
    write(serving.dir.path(), "vm1.toml", "[limits]\nmax_sockets = 5\n");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(serving.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let policy = serving.ctl_ok(&["policy"]);
        if policy.starts_with("# policy generation 2,") {
            assert!(policy.contains("max_sockets = 5\n"), "{policy}");
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{policy}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctl_without_a_backend_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let out = vhost_tls().arg("ctl").arg("--control-socket").arg(&missing).arg("metrics").output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).starts_with(&format!("vhost-tls: {}: ", missing.display())), "{}", text(&out.stderr));
}
