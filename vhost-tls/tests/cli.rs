//! The `vhost-tls` command line as an operator uses it.

mod common;

use std::process::Command;

fn vhost_tls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-tls"))
}

/// `vhost-tls serve` with `policy_text`, in a fresh directory.
fn spawn_serve(policy_text: &str) -> (tempfile::TempDir, std::path::PathBuf, std::process::Child) {
    let dir = common::backend_dir();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let socket = dir.path().join("s.sock");
    let child = vhost_tls().args(["serve", "--socket-path"]).arg(&socket).arg("--policy").arg(&policy).spawn().unwrap();
    (dir, socket, child)
}

fn terminate(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn policy_check_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policy-example.toml");
    let out = vhost_tls().args(["policy", "check", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": OK\n"));
}

#[test]
fn policy_check_names_the_line_of_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm1.toml");
    std::fs::write(&file, "[tls]\nmin_version = \"1.2\"\n\n[limits]\nmax_sockets = 0\n").unwrap();
    let out = vhost_tls().args(["policy", "check"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:5: max_sockets = 0 is outside 1..=65536", file.display())), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_policy_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(&policy, "[destinations]\ndefault = \"sometimes\"\n").unwrap();
    let socket = dir.path().join("s.sock");
    let out = vhost_tls().args(["serve", "--socket-path"]).arg(&socket).arg("--policy").arg(&policy).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:2: unknown action"));
    assert!(!socket.exists());
}

#[test]
fn serve_refuses_a_busy_poll_beyond_a_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policy-example.toml");
    let out = vhost_tls()
        .args(["serve", "--busy-poll-us", "5000", "--policy", example, "--socket-path"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--busy-poll-us") && stderr.contains("5000"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn serve_exits_cleanly_on_sigterm_while_waiting() {
    let (_dir, socket, mut child) = spawn_serve("");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    terminate(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket file is removed");
}

#[test]
fn serve_exits_cleanly_when_the_front_end_disconnects() {
    serve_one_front_end(false);
}

#[test]
fn serve_exits_cleanly_on_sigterm_while_serving() {
    serve_one_front_end(true);
}

fn serve_one_front_end(end_with_sigterm: bool) {
    use vhost::VhostBackend;
    let (_dir, socket, mut child) = spawn_serve("");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let frontend = loop {
        match vhost::vhost_user::Frontend::connect(&socket, 4) {
            Ok(frontend) => break frontend,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    assert_ne!(features & (1 << virtio_tls_spec::VIRTIO_F_VERSION_1), 0);
    if end_with_sigterm {
        terminate(&child);
    } else {
        drop(frontend);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the backend did not exit after the disconnect");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn serve_creates_the_audit_log_0640_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = common::backend_dir();
    std::fs::write(dir.path().join("vm1.toml"), "").unwrap();
    let mut command = common::serve_command(dir.path());
    // SAFETY: umask is async-signal-safe and only sets the child's mask;
    // 0 leaves the mode to serve alone.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let socket = dir.path().join("vhost.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mode = std::fs::metadata(dir.path().join("audit.jsonl")).unwrap().permissions().mode() & 0o7777;
    terminate(&child);
    let _ = child.wait();
    assert_eq!(mode, 0o640, "audit log mode {mode:o}");
}

#[test]
fn qemu_args_prints_the_device_for_a_queue_count_in_both_forms() {
    let run = |args: &[&str]| {
        let out = vhost_tls().arg("qemu-args").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The named device, as operators write it.
    let (code, stdout, stderr) = run(&["--socket", "/run/vhost-tls/vm1.sock"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "-chardev socket,id=vhost-tls0,path=/run/vhost-tls/vm1.sock,reconnect-ms=1000 -device vhost-user-tls-pci,chardev=vhost-tls0\n"
    );
    let (_, stdout, _) = run(&["--socket", "/run/vhost-tls/vm1.sock", "--queue-pairs", "4", "--reconnect-ms", "0"]);
    assert!(stdout.ends_with("path=/run/vhost-tls/vm1.sock -device vhost-user-tls-pci,chardev=vhost-tls0,queue-pairs=4\n"), "{stdout}");

    // The generic device: num_vqs and config_size computed, not by hand.
    let config_size = std::mem::size_of::<virtio_tls_spec::VirtioTlsConfig>();
    let (code, stdout, stderr) =
        run(&["--socket", "/tmp/a dir,x/vm.sock", "--queue-pairs", "3", "--device", "generic", "--memory", "2G", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let arguments: Vec<String> = serde_json::from_str(&stdout).expect("a JSON array of strings");
    assert_eq!(
        arguments,
        [
            "-object",
            "memory-backend-memfd,id=vhost-tls-mem,size=2G,share=on",
            "-numa",
            "node,memdev=vhost-tls-mem",
            "-chardev",
            "socket,id=vhost-tls0,path=/tmp/a dir,,x/vm.sock,reconnect-ms=1000",
            "-device",
            &format!("vhost-user-device-pci,chardev=vhost-tls0,virtio-id=63,num_vqs=8,config_size={config_size}"),
        ]
    );
    // Shell form quotes what needs quoting.
    let (_, stdout, _) = run(&["--socket", "/tmp/a dir/vm.sock"]);
    assert!(stdout.starts_with("-chardev 'socket,id=vhost-tls0,path=/tmp/a dir/vm.sock,reconnect-ms=1000' "), "{stdout}");

    // QEMU's limit (1024 virtqueues) and a policy that does not load.
    let (code, _, stderr) = run(&["--socket", "s", "--queue-pairs", "512"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("512 is not in 1..=511"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vm1.toml");
    std::fs::write(&bad, "[limits]\nmax_sockets = 0\n").unwrap();
    let (code, stdout, stderr) = run(&["--socket", "s", "--policy", bad.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
    assert!(stderr.contains("vm1.toml:2: max_sockets = 0"), "{stderr}");
}
