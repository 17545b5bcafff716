//! A backend under test: a throwaway CA, a policy that trusts it, and the
//! vhost-tls device serving on a private vhost-user socket in this process
//! (so tests can look at its sockets while they run).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tls_engine::Policy;
use vhost_tls::{DeviceShape, Server};

use crate::driver::TlsDevice;
use crate::pki::TestCa;

/// A policy for loopback peers: trusts `ca.pem` (the testbed's CA), allows
/// 127.0.0.0/8 and ::1 and nothing else.
pub const LOOPBACK_POLICY: &str = r#"
[tls]
min_version = "1.2"
max_version = "1.3"

[trust]
system_roots = false
ca_files = ["ca.pem"]

[destinations]
default = "deny"

[[destinations.rules]]
action = "allow"
addresses = ["127.0.0.0/8", "::1"]

[limits]
max_sockets = 64
socket_buffer_bytes = 262144
handshake_timeout_secs = 30
connect_timeout_secs = 30
"#;

pub struct Testbed {
    pub ca: TestCa,
    pub server: Server,
    dir: TempDir,
}

impl Testbed {
    /// Starts a backend with `policy_toml` (relative files resolve in the
    /// testbed's directory, which holds `ca.pem`).
    pub fn start(policy_toml: &str) -> Testbed {
        Self::start_with_pairs(policy_toml, 1)
    }

    pub fn start_with_pairs(policy_toml: &str, queue_pairs: u16) -> Testbed {
        Self::start_with_files(policy_toml, queue_pairs, |_, _| {})
    }

    /// Like `start_with_pairs`, with `prepare` writing files the policy
    /// names (server identities, say) into the testbed's directory first.
    pub fn start_with_files(policy_toml: &str, queue_pairs: u16, prepare: impl FnOnce(&TestCa, &Path)) -> Testbed {
        Self::start_with_shape(policy_toml, DeviceShape::with_pairs(queue_pairs), prepare)
    }

    /// The general form: the device's whole shape (queue pairs, busy polling).
    pub fn start_with_shape(policy_toml: &str, shape: DeviceShape, prepare: impl FnOnce(&TestCa, &Path)) -> Testbed {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("vhost-tls test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca.pem");
        prepare(&ca, dir.path());
        let policy = Policy::from_toml_str(policy_toml, "test-policy.toml", dir.path())
            .unwrap_or_else(|e| panic!("test policy: {e}"));
        let socket = dir.path().join("vhost-tls.sock");
        let server = Server::start(&socket, Arc::new(policy), shape).expect("start backend");
        Testbed { ca, server, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> std::path::PathBuf {
        self.dir.path().join("vhost-tls.sock")
    }

    /// The guest side, connected over the vhost-user socket.
    pub fn driver(&self) -> TlsDevice {
        TlsDevice::attach(&self.socket_path(), self.server.num_queues()).expect("connect the harness driver")
    }

    /// Waits until closed sockets have lingered out.
    pub fn wait_until_no_sockets(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.server.sockets().is_empty() {
            assert!(Instant::now() < deadline, "sockets left behind: {:?}", self.server.sockets());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.server.stop();
    }
}
