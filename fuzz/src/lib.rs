//! What the fuzz targets share: the policy the device runs under, a TCP
//! peer on loopback that lets connects get somewhere, the framing that cuts
//! one fuzz input into a sequence of requests, and a device session that
//! checks what the device answers.
//!
//! Every target feeds guest-controlled bytes to the backend's own parsing
//! code; a panic, an abort or a broken invariant (below) is a finding.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tempfile::TempDir;
use tls_engine::options::parse_hostname;
use tls_engine::Policy;
use vhost_tls::device::Device;
use vhost_tls::DeviceShape;
use virtio_tls_spec::{self as wire, CtrlHeader, CtrlResponse};

/// Data queue pairs of fuzzed devices; the framing can name pairs beyond
/// them, which the device must refuse.
pub const QUEUE_PAIRS: u16 = 2;
/// Guest port the fuzz policy lets sockets BIND (it maps to a free host
/// port on loopback).
pub const GUEST_LISTEN_PORT: u16 = 443;
/// Where the fixture's TCP peer listens, if the port is free: the only
/// destination the fuzz policy allows.
pub const PEER_PORT: u16 = 47443;
/// The fuzz policy's socket limit: small, so that EMFILE is reached.
pub const MAX_SOCKETS: usize = 8;
/// The fuzz policy's per-socket buffer: the smallest allowed, so that
/// the credit checks are reached with small inputs.
pub const SOCKET_BUFFER_BYTES: u32 = 4096;

/// Files and sockets every target of one process shares.
pub struct Fixture {
    /// The device policy: destinations denied except [`Fixture::peer_port`]
    /// on 127.0.0.1, one guest port that may listen, application
    /// identities allowed (so TLS_CERTIFICATE_CHAIN/TLS_PRIVATE_KEY parse).
    pub policy: Arc<Policy>,
    /// A TCP listener on 127.0.0.1 that accepts connections and holds the
    /// last few without a word: connects to it stay handshaking.
    pub peer_port: u16,
    /// The host port guest port [`GUEST_LISTEN_PORT`] listens on.
    pub listen_port: u16,
    /// Holds `ca.pem`, `server.pem`, `server.key` and `base.toml`, for
    /// policies that name files.
    dir: TempDir,
    /// PEM of a certificate and its key, valid option values.
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Fixture {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The process-wide fixture, made on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(make_fixture)
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn make_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = rcgen::generate_simple_self_signed(vec!["fuzz.test".to_owned()]).expect("self-signed certificate");
    let certificate_pem = identity.cert.pem().into_bytes();
    let key_pem = identity.key_pair.serialize_pem().into_bytes();
    std::fs::write(dir.path().join("ca.pem"), &certificate_pem).expect("write ca.pem");
    std::fs::write(dir.path().join("server.pem"), &certificate_pem).expect("write server.pem");
    std::fs::write(dir.path().join("server.key"), &key_pem).expect("write server.key");
    std::fs::write(dir.path().join("base.toml"), "[tls]\nmin_version = \"1.2\"\n[limits]\nmax_sockets = 4\n")
        .expect("write base.toml");

    // The seed corpus connects to PEER_PORT; any free port will do when
    // it is taken (the seeds then reach the policy's refusal instead).
    let peer = TcpListener::bind(("127.0.0.1", PEER_PORT))
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .expect("bind the peer");
    let peer_port = peer.local_addr().expect("peer address").port();
    std::thread::spawn(move || {
        let held: Mutex<VecDeque<TcpStream>> = Mutex::new(VecDeque::new());
        for stream in peer.incoming().flatten() {
            let mut held = held.lock().expect("only this thread");
            held.push_back(stream);
            if held.len() > 256 {
                held.pop_front();
            }
        }
    });

    let listen_port = free_loopback_port();
    let policy_text = format!(
        r#"
[tls]
min_version = "1.2"
max_version = "1.3"
application_identities = true

[trust]
system_roots = false
ca_files = ["ca.pem"]

[destinations]
default = "deny"

[[destinations.rules]]
action = "allow"
addresses = ["127.0.0.1"]
ports = [{peer_port}]

[limits]
max_sockets = {MAX_SOCKETS}
socket_buffer_bytes = {SOCKET_BUFFER_BYTES}
handshake_timeout_secs = 1
connect_timeout_secs = 1

[[server.listen]]
guest_port = {GUEST_LISTEN_PORT}
host = "127.0.0.1:{listen_port}"

[[server.identities]]
certificate_chain = "server.pem"
private_key = "server.key"
"#
    );
    let policy = Policy::from_toml_str(&policy_text, "fuzz-policy.toml", dir.path()).unwrap_or_else(|e| panic!("fuzz policy: {e}"));
    Fixture { policy: Arc::new(policy), peer_port, listen_port, dir, certificate_pem, key_pem }
}

/// The record kind that stands for no request but a reactor wake-up: the
/// device does the network work that is ready (`handle_network_events`).
pub const NETWORK_EVENTS: u8 = 0xff;

/// Cuts a fuzz input into records: a kind byte, a 2-byte little-endian
/// length, then that many bytes (fewer when the input ends first). The
/// seed corpus (`fuzz/make-corpus`) writes the same framing.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(input: &'a [u8]) -> Records<'a> {
        Records { rest: input }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&kind, rest) = self.rest.split_first()?;
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            _ => (0, &rest[rest.len()..]),
        };
        let len = len.min(rest.len());
        let (record, rest) = rest.split_at(len);
        self.rest = rest;
        Some((kind, record))
    }
}

/// A device with no guest memory, driven request by request, that checks
/// every answer for what the specification promises.
pub struct Session {
    pub device: Device,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Session {
        let device = Device::new(fixture().policy.clone(), DeviceShape::with_pairs(QUEUE_PAIRS)).expect("create a device");
        Session { device }
    }

    /// One control request; panics when the answer breaks the spec.
    pub fn control(&mut self, request: &[u8]) -> (CtrlResponse, Vec<u8>) {
        let request = &*without_name_lookups(request);
        let (response, value) = self.device.handle_control_request(request);
        assert_eq!(response.value_len as usize, value.len(), "value_len says how many value bytes follow");
        assert_eq!(response.reserved, 0, "reserved response bytes are zero");
        let header = CtrlHeader::decode(request);
        // Socket options at other levels answer with the host kernel's
        // errno for what it validates (spec 2.6.10): any Linux errno.
        let host_answers = header.is_some_and(|h| matches!(h.op, wire::VIRTIO_TLS_OP_SETSOCKOPT | wire::VIRTIO_TLS_OP_GETSOCKOPT));
        if response.status != 0 {
            assert!(value.is_empty(), "a failed request carries no value: {response:?}");
            assert!(
                is_wire_errno(response.status) || (host_answers && response.status < 134),
                "status {} is not an errno of spec 2.9",
                response.status
            );
        }
        if let Some(header) = header {
            let payload = &request[CtrlHeader::SIZE..];
            if header.op == wire::VIRTIO_TLS_OP_GETSOCKOPT {
                if let Some(getsockopt) = wire::SockOptRequest::decode(payload) {
                    assert!(value.len() <= getsockopt.len as usize, "GETSOCKOPT value longer than the room the driver gave");
                }
            }
            if header.op == wire::VIRTIO_TLS_OP_GETOPT {
                if let Some(getopt) = wire::GetOptRequest::decode(payload) {
                    assert!(value.len() <= getopt.max_len as usize, "GETOPT value longer than the room the driver gave");
                }
            }
            let creates = matches!(header.op, wire::VIRTIO_TLS_OP_CREATE | wire::VIRTIO_TLS_OP_ACCEPT);
            if creates && response.status == 0 {
                assert_ne!(response.socket_id, 0, "socket id 0 is never handed out");
            } else {
                assert_eq!(response.socket_id, header.socket_id, "the response names the socket the request was about");
            }
        }
        self.check_limits();
        (response, value)
    }

    /// One transmit-queue packet on data queue pair `pair`.
    pub fn data(&mut self, pair: u16, packet: &[u8]) {
        self.device.handle_data_packet(pair, packet);
        self.check_limits();
    }

    /// A reactor wake-up: connects, handshakes, incoming connections and
    /// deadlines make progress.
    pub fn network(&mut self) {
        self.device.handle_network_events();
        self.check_limits();
    }

    /// What the policy bounds holds whatever the guest sent.
    pub fn check_limits(&self) {
        let sockets = self.device.report();
        assert!(sockets.len() <= MAX_SOCKETS, "{} sockets open, the policy allows {MAX_SOCKETS}", sockets.len());
        // The peer never sends, so all a socket holds is what the driver
        // sent, which its credit bounds by the buffer size (spec 2.8.2).
        for socket in &sockets {
            assert!(
                socket.buffered_bytes <= SOCKET_BUFFER_BYTES as usize,
                "socket {} holds {} bytes, the buffer is {SOCKET_BUFFER_BYTES}",
                socket.id,
                socket.buffered_bytes
            );
        }
    }
}

/// `request`, except that a CONNECT to a host name that would need the
/// system resolver names `localhost` instead (same port), after the name
/// went through the parser the device uses. Each lookup runs on a thread
/// of its own for as long as the resolver waits, and the fuzzer makes a
/// device per input, so the per-device bound on lookups (64) would not
/// hold: thousands of threads waiting on DNS, with fuzzed names sent to
/// the network. `localhost` comes from /etc/hosts at once.
pub fn without_name_lookups(request: &[u8]) -> Cow<'_, [u8]> {
    let Some(header) = CtrlHeader::decode(request) else { return Cow::Borrowed(request) };
    let payload = &request[CtrlHeader::SIZE..];
    let Some(addr) = wire::SockAddr::decode(payload) else { return Cow::Borrowed(request) };
    let Some(name) = addr.hostname_bytes() else { return Cow::Borrowed(request) };
    let needs_lookup = parse_hostname(name).is_ok_and(|host| host.parse::<IpAddr>().is_err() && host != "localhost");
    if header.op != wire::VIRTIO_TLS_OP_CONNECT || !needs_lookup {
        return Cow::Borrowed(request);
    }
    let local = wire::SockAddr::hostname(b"localhost", addr.port).expect("a short name");
    let mut rewritten = request.to_vec();
    rewritten[CtrlHeader::SIZE..CtrlHeader::SIZE + wire::SockAddr::SIZE].copy_from_slice(&local.encode());
    Cow::Owned(rewritten)
}

/// Errnos the device may put on the wire (spec 2.9).
pub fn is_wire_errno(status: u32) -> bool {
    [
        wire::VIRTIO_TLS_EPERM,
        wire::VIRTIO_TLS_EBADF,
        wire::VIRTIO_TLS_EAGAIN,
        wire::VIRTIO_TLS_ENOMEM,
        wire::VIRTIO_TLS_EACCES,
        wire::VIRTIO_TLS_EFAULT,
        wire::VIRTIO_TLS_EINVAL,
        wire::VIRTIO_TLS_EMFILE,
        wire::VIRTIO_TLS_EPIPE,
        wire::VIRTIO_TLS_EPROTO,
        wire::VIRTIO_TLS_ENOPROTOOPT,
        wire::VIRTIO_TLS_EOPNOTSUPP,
        wire::VIRTIO_TLS_EAFNOSUPPORT,
        wire::VIRTIO_TLS_EADDRINUSE,
        wire::VIRTIO_TLS_EADDRNOTAVAIL,
        wire::VIRTIO_TLS_ENETUNREACH,
        wire::VIRTIO_TLS_ECONNRESET,
        wire::VIRTIO_TLS_ENOBUFS,
        wire::VIRTIO_TLS_EISCONN,
        wire::VIRTIO_TLS_ENOTCONN,
        wire::VIRTIO_TLS_ETIMEDOUT,
        wire::VIRTIO_TLS_ECONNREFUSED,
        wire::VIRTIO_TLS_EHOSTUNREACH,
        wire::VIRTIO_TLS_EALREADY,
    ]
    .contains(&status)
}

/// Every option number of the socket API (spec 2.10), for targets that
/// pick one by index; indexes past the list give numbers no option has.
pub const OPTION_NUMBERS: [u32; 23] = [
    wire::TLS_HOSTNAME,
    wire::TLS_TRUSTED_PEER_CERTIFICATES,
    wire::TLS_CERTIFICATE_CHAIN,
    wire::TLS_PRIVATE_KEY,
    wire::TLS_ALPN,
    wire::TLS_SESSION_TTL,
    wire::TLS_DISABLE_CIPHER,
    wire::TLS_PEER_IDENTITY,
    wire::TLS_REQUEST_PEER_AUTH,
    wire::TLS_PEER_CERTIFICATE_CHAIN,
    wire::TLS_ID,
    wire::TLS_TRUSTED_CIPHERS,
    wire::TLS_CHOSEN_CIPHER,
    wire::TLS_ERROR,
    wire::TLS_REVOCATION_CHECKS,
    wire::TLS_CONTEXT,
    wire::TLS_SESSION_REUSE,
    wire::TLS_RESUMED_SESSION,
    wire::TLS_ENABLE_CIPHER,
    wire::TLS_VERSION_MIN,
    wire::TLS_VERSION_MAX,
    wire::TLS_CHOSEN_VERSION,
    0,
];

/// The option number a selector byte names: one of [`OPTION_NUMBERS`],
/// or for large selectors a number near them that no option has.
pub fn option_number(selector: u8) -> u32 {
    OPTION_NUMBERS.get(usize::from(selector)).copied().unwrap_or(u32::from(selector))
}
