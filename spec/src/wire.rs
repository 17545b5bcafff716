//! virtio-tls wire definitions (device specification: `spec/virtio-tls.md`).
//!
//! Every multi-byte field is little-endian on the wire. Each message type is a
//! `#[repr(C)]` struct whose fields are naturally aligned and free of padding,
//! so its in-memory layout on a little-endian machine equals its wire layout;
//! `encode`/`decode` convert explicitly so the code is correct on any host.
//! Section numbers in comments refer to the specification.

// ---------------------------------------------------------------------------
// Device identity (spec 2.1)
// ---------------------------------------------------------------------------

/// Default virtio device id. The range 50..=63 is unassigned by OASIS and the
/// Linux virtio-pci driver binds only ids below 64 (PCI ids 0x1040 + id), so
/// the id is a parameter on both sides; this is the one documented default.
pub const VIRTIO_ID_TLS_DEFAULT: u32 = 63;
/// The PCI vendor id of every virtio device.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// PCI device id of a modern virtio device with the given virtio id.
pub const fn virtio_pci_device_id(virtio_id: u32) -> u16 {
    (0x1040 + virtio_id) as u16
}

// ---------------------------------------------------------------------------
// Feature bits (spec 2.2)
// ---------------------------------------------------------------------------

/// The device connects to IPv6 destinations (`VIRTIO_TLS_AF_INET6`).
pub const VIRTIO_TLS_F_IPV6: u32 = 0;
/// The device resolves host names (`VIRTIO_TLS_AF_HOSTNAME` in CONNECT).
pub const VIRTIO_TLS_F_HOSTNAME: u32 = 1;
/// The device supports server sockets (BIND, LISTEN, ACCEPT).
pub const VIRTIO_TLS_F_SERVER: u32 = 2;
/// The device takes socket options at the levels SOL_SOCKET, IPPROTO_TCP,
/// IPPROTO_IP and IPPROTO_IPV6 (SETSOCKOPT, GETSOCKOPT; spec 2.6.10).
pub const VIRTIO_TLS_F_SOCKOPT: u32 = 3;
/// VIRTIO_F_VERSION_1: the device is a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

// ---------------------------------------------------------------------------
// Virtqueues (spec 2.3)
// ---------------------------------------------------------------------------

/// Control requests, driver to device.
pub const CONTROLQ: u16 = 0;
/// Asynchronous events, device to driver (driver posts writable buffers).
pub const EVENTQ: u16 = 1;
/// Upper bound on data queue pairs a device may offer.
pub const MAX_QUEUE_PAIRS: u16 = 64;

/// Index of the receive queue (device to driver) of data queue pair `pair`.
pub const fn rx_queue(pair: u16) -> u16 {
    2 + 2 * pair
}
/// Index of the transmit queue (driver to device) of data queue pair `pair`.
pub const fn tx_queue(pair: u16) -> u16 {
    3 + 2 * pair
}
/// Total number of virtqueues for `pairs` data queue pairs.
pub const fn num_queues(pairs: u16) -> u16 {
    2 + 2 * pairs
}

// ---------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------

/// Declares a wire struct of integer fields: `#[repr(C)]`, with `SIZE`,
/// `encode` and `decode`, and a compile-time check that it has no padding
/// (so `SIZE` is also the wire size and field order is byte order).
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty ),*
        }

        const _: () = assert!(
            0 $(+ core::mem::size_of::<$ty>())* == core::mem::size_of::<$name>(),
            "wire structs must not contain padding"
        );

        impl $name {
            /// Size of this message on the wire, in bytes.
            pub const SIZE: usize = core::mem::size_of::<$name>();

            /// The little-endian wire bytes of this message.
            pub fn encode(&self) -> [u8; Self::SIZE] {
                let mut out = [0u8; Self::SIZE];
                let mut at = 0;
                $(
                    let bytes = self.$field.to_le_bytes();
                    out[at..at + bytes.len()].copy_from_slice(&bytes);
                    at += bytes.len();
                )*
                let _ = at;
                out
            }

            /// Parses the first `SIZE` bytes; `None` when `bytes` is shorter.
            pub fn decode(bytes: &[u8]) -> Option<Self> {
                if bytes.len() < Self::SIZE {
                    return None;
                }
                let mut at = 0;
                $(
                    let width = core::mem::size_of::<$ty>();
                    let mut raw = [0u8; core::mem::size_of::<$ty>()];
                    raw.copy_from_slice(&bytes[at..at + width]);
                    let $field = $ty::from_le_bytes(raw);
                    at += width;
                )*
                let _ = at;
                Some(Self { $($field),* })
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Device configuration layout (spec 2.4)
// ---------------------------------------------------------------------------

wire_struct! {
    /// Device configuration space (read-only for the driver).
    pub struct VirtioTlsConfig {
        /// Most sockets the driver may have open at once.
        pub max_sockets: u32,
        /// Per-socket receive buffer of the device (its `buf_alloc`), bytes.
        pub socket_buf_size: u32,
        /// Number of data queue pairs the device serves.
        pub num_queue_pairs: u16,
        /// Lowest TLS version the policy allows (`TLS_1_2` or `TLS_1_3`).
        pub tls_version_min: u8,
        /// Highest TLS version the policy allows.
        pub tls_version_max: u8,
        /// `VIRTIO_TLS_POLICY_*` bits: what the current policy permits.
        pub policy_flags: u32,
        /// Longest host name accepted in TLS_HOSTNAME and CONNECT, bytes.
        pub max_hostname_len: u32,
        pub reserved0: u32,
        pub reserved1: u32,
        pub reserved2: u32,
    }
}

/// Policy allows outbound (client) connections.
pub const VIRTIO_TLS_POLICY_CLIENT: u32 = 1 << 0;
/// Policy allows listening sockets.
pub const VIRTIO_TLS_POLICY_SERVER: u32 = 1 << 1;
/// Policy allows guest-supplied certificates and keys.
pub const VIRTIO_TLS_POLICY_APP_IDENTITY: u32 = 1 << 2;

// ---------------------------------------------------------------------------
// Control queue (spec 2.6)
// ---------------------------------------------------------------------------

/// CREATE: payload [`CreateRequest`]; response `socket_id` is the new socket.
pub const VIRTIO_TLS_OP_CREATE: u16 = 1;
/// CLOSE: payload [`CloseRequest`].
pub const VIRTIO_TLS_OP_CLOSE: u16 = 2;
/// SETOPT: payload [`SetOptRequest`] followed by the option value.
pub const VIRTIO_TLS_OP_SETOPT: u16 = 3;
/// GETOPT: payload [`GetOptRequest`]; the value follows the response.
pub const VIRTIO_TLS_OP_GETOPT: u16 = 4;
/// CONNECT: payload [`SockAddr`]; completes with a CONNECT_DONE event.
pub const VIRTIO_TLS_OP_CONNECT: u16 = 5;
/// SHUTDOWN: payload [`ShutdownRequest`].
pub const VIRTIO_TLS_OP_SHUTDOWN: u16 = 6;
/// BIND (`VIRTIO_TLS_F_SERVER`): payload [`SockAddr`], the guest's local
/// address; the policy maps its port to a host address.
pub const VIRTIO_TLS_OP_BIND: u16 = 7;
/// LISTEN (`VIRTIO_TLS_F_SERVER`): payload [`ListenRequest`].
pub const VIRTIO_TLS_OP_LISTEN: u16 = 8;
/// ACCEPT (`VIRTIO_TLS_F_SERVER`): payload [`AcceptRequest`]; response
/// `socket_id` is the accepted socket, its value the client's [`SockAddr`].
pub const VIRTIO_TLS_OP_ACCEPT: u16 = 9;
/// SETSOCKOPT (`VIRTIO_TLS_F_SOCKOPT`): payload [`SockOptRequest`] followed
/// by `len` value bytes; an option at another level than IPPROTO_TLS.
pub const VIRTIO_TLS_OP_SETSOCKOPT: u16 = 10;
/// GETSOCKOPT (`VIRTIO_TLS_F_SOCKOPT`): payload [`SockOptRequest`]; the
/// value (at most `len` bytes) follows the response.
pub const VIRTIO_TLS_OP_GETSOCKOPT: u16 = 11;

wire_struct! {
    /// Header of every control request (device-readable).
    pub struct CtrlHeader {
        /// `VIRTIO_TLS_OP_*`.
        pub op: u16,
        /// Must be zero.
        pub flags: u16,
        /// Socket the request is about; zero for CREATE.
        pub socket_id: u32,
        /// Driver's cookie, echoed in the response and in completion events.
        pub request_id: u64,
    }
}

wire_struct! {
    /// Response to every control request (device-writable).
    pub struct CtrlResponse {
        /// Zero on success, otherwise a `VIRTIO_TLS_E*` error number.
        pub status: u32,
        /// The socket the request was about (CREATE: the new socket).
        pub socket_id: u32,
        /// Bytes of value following this header (GETOPT), else zero.
        pub value_len: u32,
        pub reserved: u32,
    }
}

/// Address families of [`SockAddr`] and [`CreateRequest`].
pub const VIRTIO_TLS_AF_INET: u16 = 1;
pub const VIRTIO_TLS_AF_INET6: u16 = 2;
pub const VIRTIO_TLS_AF_HOSTNAME: u16 = 3;

wire_struct! {
    /// CREATE payload.
    pub struct CreateRequest {
        /// The guest socket's family: `VIRTIO_TLS_AF_INET` or `_INET6`.
        pub family: u16,
        /// Data queue pair that carries this socket's data.
        pub queue_pair: u16,
        /// The driver's receive buffer for this socket (its first
        /// `buf_alloc`, spec 2.8.2): the device may send this many payload
        /// bytes before it hears a CREDIT_UPDATE.
        pub buf_alloc: u32,
    }
}

wire_struct! {
    /// CLOSE payload.
    pub struct CloseRequest {
        /// Total payload bytes the driver queued on the transmit queue for
        /// this socket before this request; the device sends all of them
        /// before close_notify (spec 2.6.4).
        pub tx_bytes: u64,
    }
}

wire_struct! {
    /// SETOPT payload header; `value` bytes follow it.
    pub struct SetOptRequest {
        /// `TLS_*` option number (level IPPROTO_TLS).
        pub optname: u32,
        /// Length of the value that follows.
        pub value_len: u32,
    }
}

wire_struct! {
    /// GETOPT payload.
    pub struct GetOptRequest {
        /// `TLS_*` option number (level IPPROTO_TLS).
        pub optname: u32,
        /// Room the driver has for the value (bytes after the response).
        pub max_len: u32,
    }
}

wire_struct! {
    /// SETSOCKOPT and GETSOCKOPT payload (spec 2.6.10).
    pub struct SockOptRequest {
        /// `VIRTIO_TLS_SOL_*`: Linux's level number.
        pub level: u32,
        /// Linux's option number at that level.
        pub optname: u32,
        /// SETSOCKOPT: bytes of value that follow. GETSOCKOPT: room the
        /// driver has for the value after the response.
        pub len: u32,
        /// Must be zero.
        pub reserved: u32,
    }
}

wire_struct! {
    /// LISTEN payload.
    pub struct ListenRequest {
        /// Most connections waiting for ACCEPT (handshaking or done); the
        /// device may lower it. Zero means the device's default.
        pub backlog: u32,
        pub reserved: u32,
    }
}

wire_struct! {
    /// ACCEPT payload.
    pub struct AcceptRequest {
        /// Data queue pair for the accepted socket.
        pub queue_pair: u16,
        pub reserved0: u16,
        pub reserved1: u32,
    }
}

/// SHUTDOWN `how` values (same meaning as `shutdown(2)`).
pub const VIRTIO_TLS_SHUT_RD: u32 = 0;
pub const VIRTIO_TLS_SHUT_WR: u32 = 1;
pub const VIRTIO_TLS_SHUT_RDWR: u32 = 2;

wire_struct! {
    /// SHUTDOWN payload.
    pub struct ShutdownRequest {
        pub how: u32,
        pub reserved: u32,
        /// As [`CloseRequest::tx_bytes`]: close_notify follows these bytes.
        pub tx_bytes: u64,
    }
}

/// Size of [`SockAddr::addr`].
pub const SOCKADDR_ADDR_LEN: usize = 128;
/// Longest host name a [`SockAddr`] or TLS_HOSTNAME carries (SSA's
/// `struct host_addr` has 120 bytes; one is the terminating NUL there).
pub const MAX_HOSTNAME_LEN: usize = 119;

/// A destination: CONNECT payload (spec 2.6.5).
///
/// `addr` holds 4 bytes (IPv4, network order), 16 bytes (IPv6, network
/// order), or a host name (ASCII, NUL-terminated or filling the field up to
/// `MAX_HOSTNAME_LEN`); unused bytes are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockAddr {
    /// `VIRTIO_TLS_AF_*`.
    pub family: u16,
    /// Destination port.
    pub port: u16,
    /// IPv6 scope id; zero otherwise.
    pub scope_id: u32,
    pub addr: [u8; SOCKADDR_ADDR_LEN],
}

const _: () = assert!(core::mem::size_of::<SockAddr>() == 8 + SOCKADDR_ADDR_LEN);

impl Default for SockAddr {
    fn default() -> Self {
        Self { family: 0, port: 0, scope_id: 0, addr: [0; SOCKADDR_ADDR_LEN] }
    }
}

impl SockAddr {
    pub const SIZE: usize = core::mem::size_of::<SockAddr>();

    pub fn ipv4(octets: [u8; 4], port: u16) -> Self {
        let mut addr = Self { family: VIRTIO_TLS_AF_INET, port, ..Self::default() };
        addr.addr[..4].copy_from_slice(&octets);
        addr
    }

    pub fn ipv6(octets: [u8; 16], port: u16, scope_id: u32) -> Self {
        let mut addr = Self { family: VIRTIO_TLS_AF_INET6, port, scope_id, ..Self::default() };
        addr.addr[..16].copy_from_slice(&octets);
        addr
    }

    /// `None` when the name is empty or longer than `MAX_HOSTNAME_LEN`.
    pub fn hostname(name: &[u8], port: u16) -> Option<Self> {
        if name.is_empty() || name.len() > MAX_HOSTNAME_LEN {
            return None;
        }
        let mut addr = Self { family: VIRTIO_TLS_AF_HOSTNAME, port, ..Self::default() };
        addr.addr[..name.len()].copy_from_slice(name);
        Some(addr)
    }

    /// The host name bytes of a `VIRTIO_TLS_AF_HOSTNAME` address, without
    /// the terminating NUL; `None` for other families or when unterminated.
    pub fn hostname_bytes(&self) -> Option<&[u8]> {
        if self.family != VIRTIO_TLS_AF_HOSTNAME {
            return None;
        }
        let len = self.addr.iter().position(|&b| b == 0).unwrap_or(SOCKADDR_ADDR_LEN);
        (len <= MAX_HOSTNAME_LEN).then(|| &self.addr[..len])
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..2].copy_from_slice(&self.family.to_le_bytes());
        out[2..4].copy_from_slice(&self.port.to_le_bytes());
        out[4..8].copy_from_slice(&self.scope_id.to_le_bytes());
        out[8..].copy_from_slice(&self.addr);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let mut addr = [0u8; SOCKADDR_ADDR_LEN];
        addr.copy_from_slice(&bytes[8..Self::SIZE]);
        Some(Self {
            family: u16::from_le_bytes([bytes[0], bytes[1]]),
            port: u16::from_le_bytes([bytes[2], bytes[3]]),
            scope_id: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            addr,
        })
    }
}

// ---------------------------------------------------------------------------
// Event queue (spec 2.7)
// ---------------------------------------------------------------------------

/// A CONNECT finished: `status` zero means the handshake completed.
pub const VIRTIO_TLS_EVENT_CONNECT_DONE: u16 = 1;
/// An established socket failed (peer reset, TLS alert, timeout); `status`
/// says why. Data already delivered stays valid; no more data follows.
pub const VIRTIO_TLS_EVENT_SOCKET_ERROR: u16 = 2;

/// A listening socket has a connection whose handshake completed: ACCEPT
/// will not fail with EAGAIN (`status` zero, `request_id` zero).
pub const VIRTIO_TLS_EVENT_ACCEPT_READY: u16 = 3;

wire_struct! {
    /// An asynchronous event (device-writable buffer on the event queue).
    pub struct Event {
        /// `VIRTIO_TLS_EVENT_*`.
        pub event: u16,
        pub reserved0: u16,
        pub socket_id: u32,
        /// `request_id` of the request this completes, else zero.
        pub request_id: u64,
        /// Zero or a `VIRTIO_TLS_E*` error number.
        pub status: u32,
        pub reserved1: u32,
    }
}

// ---------------------------------------------------------------------------
// Data queues (spec 2.8)
// ---------------------------------------------------------------------------

/// Payload bytes of the stream follow the header.
pub const VIRTIO_TLS_DATA_OP_RW: u16 = 1;
/// No payload: tells the peer new `buf_alloc`/`fwd_cnt`.
pub const VIRTIO_TLS_DATA_OP_CREDIT_UPDATE: u16 = 2;
/// No payload: asks the peer for a CREDIT_UPDATE.
pub const VIRTIO_TLS_DATA_OP_CREDIT_REQUEST: u16 = 3;

/// Receive direction only: the TLS peer ended its stream (close_notify or
/// an orderly TCP close); no data follows for this socket.
pub const VIRTIO_TLS_DATA_F_EOF: u16 = 1 << 0;

wire_struct! {
    /// Header of every data-queue buffer, in both directions.
    pub struct DataHeader {
        pub socket_id: u32,
        /// `VIRTIO_TLS_DATA_OP_*`.
        pub op: u16,
        /// `VIRTIO_TLS_DATA_F_*`.
        pub flags: u16,
        /// Payload bytes following the header.
        pub len: u32,
        /// Sender's receive buffer for this socket, bytes.
        pub buf_alloc: u32,
        /// Bytes the sender has consumed from that buffer (wrapping).
        pub fwd_cnt: u32,
        pub reserved: u32,
    }
}

/// Most payload bytes in one data-queue buffer.
pub const MAX_DATA_PAYLOAD: u32 = 64 * 1024;

// ---------------------------------------------------------------------------
// Error numbers on the wire (spec 2.9): Linux's values, named here so that
// no side depends on its host's errno numbering.
// ---------------------------------------------------------------------------

pub const VIRTIO_TLS_EPERM: u32 = 1;
pub const VIRTIO_TLS_EBADF: u32 = 9;
pub const VIRTIO_TLS_EAGAIN: u32 = 11;
pub const VIRTIO_TLS_ENOMEM: u32 = 12;
pub const VIRTIO_TLS_EACCES: u32 = 13;
pub const VIRTIO_TLS_EFAULT: u32 = 14;
pub const VIRTIO_TLS_EINVAL: u32 = 22;
pub const VIRTIO_TLS_EMFILE: u32 = 24;
pub const VIRTIO_TLS_EPIPE: u32 = 32;
pub const VIRTIO_TLS_EPROTO: u32 = 71;
pub const VIRTIO_TLS_ENOPROTOOPT: u32 = 92;
pub const VIRTIO_TLS_EOPNOTSUPP: u32 = 95;
pub const VIRTIO_TLS_EAFNOSUPPORT: u32 = 97;
pub const VIRTIO_TLS_EADDRINUSE: u32 = 98;
pub const VIRTIO_TLS_EADDRNOTAVAIL: u32 = 99;
pub const VIRTIO_TLS_ENETUNREACH: u32 = 101;
pub const VIRTIO_TLS_ECONNRESET: u32 = 104;
pub const VIRTIO_TLS_ENOBUFS: u32 = 105;
pub const VIRTIO_TLS_EISCONN: u32 = 106;
pub const VIRTIO_TLS_ENOTCONN: u32 = 107;
pub const VIRTIO_TLS_ETIMEDOUT: u32 = 110;
pub const VIRTIO_TLS_ECONNREFUSED: u32 = 111;
pub const VIRTIO_TLS_EHOSTUNREACH: u32 = 113;
pub const VIRTIO_TLS_EALREADY: u32 = 114;

// ---------------------------------------------------------------------------
// Socket API numbers (SSA's in_tls.h, which include/in_tls.h reproduces for
// guest programs and libipprototls alike; spec 2.10). Option values travel in
// SETOPT/GETOPT unchanged except that integers are 4-byte little-endian.
// ---------------------------------------------------------------------------

/// `IPPROTO_TLS` (715 % 255).
pub const IPPROTO_TLS: u32 = 205;
/// `AF_HOSTNAME` for `struct sockaddr_host`.
pub const AF_HOSTNAME: u32 = 43;

pub const TLS_HOSTNAME: u32 = 85;
/// Older SSA name of `TLS_HOSTNAME`.
pub const TLS_REMOTE_HOSTNAME: u32 = 85;
pub const TLS_TRUSTED_PEER_CERTIFICATES: u32 = 87;
pub const TLS_CERTIFICATE_CHAIN: u32 = 88;
pub const TLS_PRIVATE_KEY: u32 = 89;
pub const TLS_ALPN: u32 = 90;
pub const TLS_SESSION_TTL: u32 = 91;
pub const TLS_DISABLE_CIPHER: u32 = 92;
pub const TLS_PEER_IDENTITY: u32 = 93;
pub const TLS_REQUEST_PEER_AUTH: u32 = 94;
pub const TLS_PEER_CERTIFICATE_CHAIN: u32 = 95;
pub const TLS_ID: u32 = 96;
pub const TLS_TRUSTED_CIPHERS: u32 = 97;
pub const TLS_CHOSEN_CIPHER: u32 = 98;
pub const TLS_ERROR: u32 = 100;
pub const TLS_REVOCATION_CHECKS: u32 = 102;
pub const TLS_CONTEXT: u32 = 107;
pub const TLS_SESSION_REUSE: u32 = 108;
pub const TLS_RESUMED_SESSION: u32 = 109;
pub const TLS_ENABLE_CIPHER: u32 = 110;
pub const TLS_VERSION_MIN: u32 = 111;
pub const TLS_VERSION_MAX: u32 = 112;
pub const TLS_CHOSEN_VERSION: u32 = 113;

/// Values of TLS_VERSION_MIN/MAX/CHOSEN_VERSION.
/// Options whose values are text. Getsockopt gives C callers a
/// terminating NUL for these (the guest driver, the user-space library).
pub const fn is_string_option(optname: u32) -> bool {
    matches!(
        optname,
        TLS_HOSTNAME | TLS_ERROR | TLS_CHOSEN_CIPHER | TLS_PEER_IDENTITY | TLS_PEER_CERTIFICATE_CHAIN | TLS_ALPN
    )
}

pub const TLS_1_2: u32 = 2;
pub const TLS_1_3: u32 = 3;

/// Longest TLS_ERROR reason a device returns, bytes.
pub const MAX_ERROR_LEN: usize = 255;

// ---------------------------------------------------------------------------
// Socket options at other levels (spec 2.6.10, VIRTIO_TLS_F_SOCKOPT).
// Levels and option numbers are Linux's, on every host and guest: the
// guest's numbers are sent unchanged and the device applies them to its own
// (Linux) TCP socket. Every option the specification's table lists has its
// name here; any other number is ENOPROTOOPT.
// ---------------------------------------------------------------------------

pub const VIRTIO_TLS_SOL_IP: u32 = 0;
pub const VIRTIO_TLS_SOL_SOCKET: u32 = 1;
pub const VIRTIO_TLS_SOL_TCP: u32 = 6;
pub const VIRTIO_TLS_SOL_IPV6: u32 = 41;

// SOL_SOCKET (asm-generic/socket.h: x86, arm64, riscv and most others).
pub const SO_DEBUG: u32 = 1;
pub const SO_REUSEADDR: u32 = 2;
pub const SO_TYPE: u32 = 3;
pub const SO_ERROR: u32 = 4;
pub const SO_DONTROUTE: u32 = 5;
pub const SO_BROADCAST: u32 = 6;
pub const SO_SNDBUF: u32 = 7;
pub const SO_RCVBUF: u32 = 8;
pub const SO_KEEPALIVE: u32 = 9;
pub const SO_OOBINLINE: u32 = 10;
pub const SO_NO_CHECK: u32 = 11;
pub const SO_PRIORITY: u32 = 12;
pub const SO_LINGER: u32 = 13;
pub const SO_BSDCOMPAT: u32 = 14;
pub const SO_REUSEPORT: u32 = 15;
pub const SO_PASSCRED: u32 = 16;
pub const SO_PEERCRED: u32 = 17;
pub const SO_RCVLOWAT: u32 = 18;
pub const SO_SNDLOWAT: u32 = 19;
pub const SO_RCVTIMEO_OLD: u32 = 20;
pub const SO_SNDTIMEO_OLD: u32 = 21;
pub const SO_SECURITY_AUTHENTICATION: u32 = 22;
pub const SO_SECURITY_ENCRYPTION_TRANSPORT: u32 = 23;
pub const SO_SECURITY_ENCRYPTION_NETWORK: u32 = 24;
pub const SO_BINDTODEVICE: u32 = 25;
pub const SO_ATTACH_FILTER: u32 = 26;
pub const SO_DETACH_FILTER: u32 = 27;
pub const SO_PEERNAME: u32 = 28;
pub const SO_TIMESTAMP_OLD: u32 = 29;
pub const SO_ACCEPTCONN: u32 = 30;
pub const SO_PEERSEC: u32 = 31;
pub const SO_SNDBUFFORCE: u32 = 32;
pub const SO_RCVBUFFORCE: u32 = 33;
pub const SO_PASSSEC: u32 = 34;
pub const SO_TIMESTAMPNS_OLD: u32 = 35;
pub const SO_MARK: u32 = 36;
pub const SO_TIMESTAMPING_OLD: u32 = 37;
pub const SO_PROTOCOL: u32 = 38;
pub const SO_DOMAIN: u32 = 39;
pub const SO_RXQ_OVFL: u32 = 40;
pub const SO_WIFI_STATUS: u32 = 41;
pub const SO_PEEK_OFF: u32 = 42;
pub const SO_NOFCS: u32 = 43;
pub const SO_LOCK_FILTER: u32 = 44;
pub const SO_SELECT_ERR_QUEUE: u32 = 45;
pub const SO_BUSY_POLL: u32 = 46;
pub const SO_MAX_PACING_RATE: u32 = 47;
pub const SO_BPF_EXTENSIONS: u32 = 48;
pub const SO_INCOMING_CPU: u32 = 49;
pub const SO_ATTACH_BPF: u32 = 50;
pub const SO_ATTACH_REUSEPORT_CBPF: u32 = 51;
pub const SO_ATTACH_REUSEPORT_EBPF: u32 = 52;
pub const SO_CNX_ADVICE: u32 = 53;
pub const SO_MEMINFO: u32 = 55;
pub const SO_INCOMING_NAPI_ID: u32 = 56;
pub const SO_COOKIE: u32 = 57;
pub const SO_PEERGROUPS: u32 = 59;
pub const SO_ZEROCOPY: u32 = 60;
pub const SO_TXTIME: u32 = 61;
pub const SO_BINDTOIFINDEX: u32 = 62;
pub const SO_TIMESTAMP_NEW: u32 = 63;
pub const SO_TIMESTAMPNS_NEW: u32 = 64;
pub const SO_TIMESTAMPING_NEW: u32 = 65;
pub const SO_RCVTIMEO_NEW: u32 = 66;
pub const SO_SNDTIMEO_NEW: u32 = 67;
pub const SO_DETACH_REUSEPORT_BPF: u32 = 68;
pub const SO_PREFER_BUSY_POLL: u32 = 69;
pub const SO_BUSY_POLL_BUDGET: u32 = 70;
pub const SO_NETNS_COOKIE: u32 = 71;
pub const SO_BUF_LOCK: u32 = 72;
pub const SO_RESERVE_MEM: u32 = 73;
pub const SO_TXREHASH: u32 = 74;
pub const SO_RCVMARK: u32 = 75;
pub const SO_PASSPIDFD: u32 = 76;
pub const SO_PEERPIDFD: u32 = 77;
pub const SO_DEVMEM_LINEAR: u32 = 78;
pub const SO_DEVMEM_DMABUF: u32 = 79;
pub const SO_DEVMEM_DONTNEED: u32 = 80;

// IPPROTO_TCP (linux/tcp.h).
pub const TCP_NODELAY: u32 = 1;
pub const TCP_MAXSEG: u32 = 2;
pub const TCP_CORK: u32 = 3;
pub const TCP_KEEPIDLE: u32 = 4;
pub const TCP_KEEPINTVL: u32 = 5;
pub const TCP_KEEPCNT: u32 = 6;
pub const TCP_SYNCNT: u32 = 7;
pub const TCP_LINGER2: u32 = 8;
pub const TCP_DEFER_ACCEPT: u32 = 9;
pub const TCP_WINDOW_CLAMP: u32 = 10;
pub const TCP_INFO: u32 = 11;
pub const TCP_QUICKACK: u32 = 12;
pub const TCP_CONGESTION: u32 = 13;
pub const TCP_MD5SIG: u32 = 14;
pub const TCP_THIN_LINEAR_TIMEOUTS: u32 = 16;
pub const TCP_THIN_DUPACK: u32 = 17;
pub const TCP_USER_TIMEOUT: u32 = 18;
pub const TCP_REPAIR: u32 = 19;
pub const TCP_REPAIR_QUEUE: u32 = 20;
pub const TCP_QUEUE_SEQ: u32 = 21;
pub const TCP_REPAIR_OPTIONS: u32 = 22;
pub const TCP_FASTOPEN: u32 = 23;
pub const TCP_TIMESTAMP: u32 = 24;
pub const TCP_NOTSENT_LOWAT: u32 = 25;
pub const TCP_CC_INFO: u32 = 26;
pub const TCP_SAVE_SYN: u32 = 27;
pub const TCP_SAVED_SYN: u32 = 28;
pub const TCP_REPAIR_WINDOW: u32 = 29;
pub const TCP_FASTOPEN_CONNECT: u32 = 30;
pub const TCP_ULP: u32 = 31;
pub const TCP_MD5SIG_EXT: u32 = 32;
pub const TCP_FASTOPEN_KEY: u32 = 33;
pub const TCP_FASTOPEN_NO_COOKIE: u32 = 34;
pub const TCP_ZEROCOPY_RECEIVE: u32 = 35;
pub const TCP_INQ: u32 = 36;
pub const TCP_TX_DELAY: u32 = 37;
pub const TCP_AO_ADD_KEY: u32 = 38;
pub const TCP_AO_DEL_KEY: u32 = 39;
pub const TCP_AO_INFO: u32 = 40;
pub const TCP_AO_GET_KEYS: u32 = 41;
pub const TCP_AO_REPAIR: u32 = 42;
pub const TCP_IS_MPTCP: u32 = 43;

// IPPROTO_IP (linux/in.h).
pub const IP_TOS: u32 = 1;
pub const IP_TTL: u32 = 2;
pub const IP_HDRINCL: u32 = 3;
pub const IP_OPTIONS: u32 = 4;
pub const IP_ROUTER_ALERT: u32 = 5;
pub const IP_RECVOPTS: u32 = 6;
pub const IP_RETOPTS: u32 = 7;
pub const IP_PKTINFO: u32 = 8;
pub const IP_PKTOPTIONS: u32 = 9;
pub const IP_MTU_DISCOVER: u32 = 10;
pub const IP_RECVERR: u32 = 11;
pub const IP_RECVTTL: u32 = 12;
pub const IP_RECVTOS: u32 = 13;
pub const IP_MTU: u32 = 14;
pub const IP_FREEBIND: u32 = 15;
pub const IP_IPSEC_POLICY: u32 = 16;
pub const IP_XFRM_POLICY: u32 = 17;
pub const IP_PASSSEC: u32 = 18;
pub const IP_TRANSPARENT: u32 = 19;
pub const IP_RECVORIGDSTADDR: u32 = 20;
pub const IP_MINTTL: u32 = 21;
pub const IP_NODEFRAG: u32 = 22;
pub const IP_CHECKSUM: u32 = 23;
pub const IP_BIND_ADDRESS_NO_PORT: u32 = 24;
pub const IP_RECVFRAGSIZE: u32 = 25;
pub const IP_RECVERR_RFC4884: u32 = 26;
pub const IP_MULTICAST_IF: u32 = 32;
pub const IP_MULTICAST_TTL: u32 = 33;
pub const IP_MULTICAST_LOOP: u32 = 34;
pub const IP_ADD_MEMBERSHIP: u32 = 35;
pub const IP_DROP_MEMBERSHIP: u32 = 36;
pub const IP_UNBLOCK_SOURCE: u32 = 37;
pub const IP_BLOCK_SOURCE: u32 = 38;
pub const IP_ADD_SOURCE_MEMBERSHIP: u32 = 39;
pub const IP_DROP_SOURCE_MEMBERSHIP: u32 = 40;
pub const IP_MSFILTER: u32 = 41;
pub const MCAST_JOIN_GROUP: u32 = 42;
pub const MCAST_BLOCK_SOURCE: u32 = 43;
pub const MCAST_UNBLOCK_SOURCE: u32 = 44;
pub const MCAST_LEAVE_GROUP: u32 = 45;
pub const MCAST_JOIN_SOURCE_GROUP: u32 = 46;
pub const MCAST_LEAVE_SOURCE_GROUP: u32 = 47;
pub const MCAST_MSFILTER: u32 = 48;
pub const IP_MULTICAST_ALL: u32 = 49;
pub const IP_UNICAST_IF: u32 = 50;
pub const IP_LOCAL_PORT_RANGE: u32 = 51;
pub const IP_PROTOCOL: u32 = 52;
/// iptables' `SO_ORIGINAL_DST` (level IPPROTO_IP and IPPROTO_IPV6), one of
/// the host firewall's options that a TCP socket passes to netfilter.
pub const SO_ORIGINAL_DST: u32 = 80;

// IPPROTO_IPV6 (linux/in6.h).
pub const IPV6_ADDRFORM: u32 = 1;
pub const IPV6_2292PKTINFO: u32 = 2;
pub const IPV6_2292HOPOPTS: u32 = 3;
pub const IPV6_2292DSTOPTS: u32 = 4;
pub const IPV6_2292RTHDR: u32 = 5;
pub const IPV6_2292PKTOPTIONS: u32 = 6;
pub const IPV6_CHECKSUM: u32 = 7;
pub const IPV6_2292HOPLIMIT: u32 = 8;
pub const IPV6_NEXTHOP: u32 = 9;
pub const IPV6_AUTHHDR: u32 = 10;
pub const IPV6_FLOWINFO: u32 = 11;
pub const IPV6_UNICAST_HOPS: u32 = 16;
pub const IPV6_MULTICAST_IF: u32 = 17;
pub const IPV6_MULTICAST_HOPS: u32 = 18;
pub const IPV6_MULTICAST_LOOP: u32 = 19;
pub const IPV6_ADD_MEMBERSHIP: u32 = 20;
pub const IPV6_DROP_MEMBERSHIP: u32 = 21;
pub const IPV6_ROUTER_ALERT: u32 = 22;
pub const IPV6_MTU_DISCOVER: u32 = 23;
pub const IPV6_MTU: u32 = 24;
pub const IPV6_RECVERR: u32 = 25;
pub const IPV6_V6ONLY: u32 = 26;
pub const IPV6_JOIN_ANYCAST: u32 = 27;
pub const IPV6_LEAVE_ANYCAST: u32 = 28;
pub const IPV6_MULTICAST_ALL: u32 = 29;
pub const IPV6_ROUTER_ALERT_ISOLATE: u32 = 30;
pub const IPV6_RECVERR_RFC4884: u32 = 31;
pub const IPV6_FLOWLABEL_MGR: u32 = 32;
pub const IPV6_FLOWINFO_SEND: u32 = 33;
pub const IPV6_IPSEC_POLICY: u32 = 34;
pub const IPV6_XFRM_POLICY: u32 = 35;
pub const IPV6_HDRINCL: u32 = 36;
pub const IPV6_RECVPKTINFO: u32 = 49;
pub const IPV6_PKTINFO: u32 = 50;
pub const IPV6_RECVHOPLIMIT: u32 = 51;
pub const IPV6_HOPLIMIT: u32 = 52;
pub const IPV6_RECVHOPOPTS: u32 = 53;
pub const IPV6_HOPOPTS: u32 = 54;
pub const IPV6_RTHDRDSTOPTS: u32 = 55;
pub const IPV6_RECVRTHDR: u32 = 56;
pub const IPV6_RTHDR: u32 = 57;
pub const IPV6_RECVDSTOPTS: u32 = 58;
pub const IPV6_DSTOPTS: u32 = 59;
pub const IPV6_RECVPATHMTU: u32 = 60;
pub const IPV6_PATHMTU: u32 = 61;
pub const IPV6_DONTFRAG: u32 = 62;
pub const IPV6_RECVTCLASS: u32 = 66;
pub const IPV6_TCLASS: u32 = 67;
pub const IPV6_AUTOFLOWLABEL: u32 = 70;
pub const IPV6_ADDR_PREFERENCES: u32 = 72;
pub const IPV6_MINHOPCOUNT: u32 = 73;
pub const IPV6_ORIGDSTADDR: u32 = 74;
pub const IPV6_TRANSPARENT: u32 = 75;
pub const IPV6_UNICAST_IF: u32 = 76;
pub const IPV6_RECVFRAGSIZE: u32 = 77;
pub const IPV6_FREEBIND: u32 = 78;

/// Where a socket option of an IPPROTO_TLS socket is handled (spec 2.6.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockOptRoute {
    /// The driver sends SETSOCKOPT/GETSOCKOPT to the device, which answers
    /// (applies it to the host connection, refuses it, or ENOPROTOOPT).
    Device,
    /// The guest socket's own state: the guest kernel's generic socket code
    /// answers; the device never hears of it.
    Guest,
}

/// The route of option `optname` at `level` (Linux numbers). Levels other
/// than the four of spec 2.6.10 and IPPROTO_TLS are not socket options of an
/// IPPROTO_TLS socket at all; they are routed to the device, which answers
/// ENOPROTOOPT as a TCP socket does.
pub const fn sockopt_route(level: u32, optname: u32) -> SockOptRoute {
    if level != VIRTIO_TLS_SOL_SOCKET {
        return SockOptRoute::Device;
    }
    match optname {
        // Reach the host connection.
        SO_REUSEADDR | SO_REUSEPORT | SO_KEEPALIVE | SO_LINGER | SO_PRIORITY | SO_DONTROUTE
        | SO_MAX_PACING_RATE
        // Refused by the device's policy: they would name the host's
        // interfaces, marks or listening-socket load balancing.
        | SO_BINDTODEVICE | SO_BINDTOIFINDEX | SO_MARK | SO_ATTACH_REUSEPORT_CBPF
        | SO_ATTACH_REUSEPORT_EBPF | SO_DETACH_REUSEPORT_BPF => SockOptRoute::Device,
        _ => SockOptRoute::Guest,
    }
}
