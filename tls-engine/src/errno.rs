//! Error numbers as they travel on the virtio-tls wire (Linux's values).

use std::fmt;

use virtio_tls_spec as wire;

/// An errno value with Linux numbering, as used on the wire and returned to
/// applications.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    pub const EPERM: Errno = Errno(wire::VIRTIO_TLS_EPERM);
    pub const EBADF: Errno = Errno(wire::VIRTIO_TLS_EBADF);
    pub const EAGAIN: Errno = Errno(wire::VIRTIO_TLS_EAGAIN);
    pub const ENOMEM: Errno = Errno(wire::VIRTIO_TLS_ENOMEM);
    pub const EACCES: Errno = Errno(wire::VIRTIO_TLS_EACCES);
    pub const EFAULT: Errno = Errno(wire::VIRTIO_TLS_EFAULT);
    pub const EINVAL: Errno = Errno(wire::VIRTIO_TLS_EINVAL);
    pub const EMFILE: Errno = Errno(wire::VIRTIO_TLS_EMFILE);
    pub const EPIPE: Errno = Errno(wire::VIRTIO_TLS_EPIPE);
    pub const EPROTO: Errno = Errno(wire::VIRTIO_TLS_EPROTO);
    pub const ENOPROTOOPT: Errno = Errno(wire::VIRTIO_TLS_ENOPROTOOPT);
    pub const EOPNOTSUPP: Errno = Errno(wire::VIRTIO_TLS_EOPNOTSUPP);
    pub const EAFNOSUPPORT: Errno = Errno(wire::VIRTIO_TLS_EAFNOSUPPORT);
    pub const EADDRINUSE: Errno = Errno(wire::VIRTIO_TLS_EADDRINUSE);
    pub const EADDRNOTAVAIL: Errno = Errno(wire::VIRTIO_TLS_EADDRNOTAVAIL);
    pub const ENETUNREACH: Errno = Errno(wire::VIRTIO_TLS_ENETUNREACH);
    pub const ECONNRESET: Errno = Errno(wire::VIRTIO_TLS_ECONNRESET);
    pub const ENOBUFS: Errno = Errno(wire::VIRTIO_TLS_ENOBUFS);
    pub const EISCONN: Errno = Errno(wire::VIRTIO_TLS_EISCONN);
    pub const ENOTCONN: Errno = Errno(wire::VIRTIO_TLS_ENOTCONN);
    pub const ETIMEDOUT: Errno = Errno(wire::VIRTIO_TLS_ETIMEDOUT);
    pub const ECONNREFUSED: Errno = Errno(wire::VIRTIO_TLS_ECONNREFUSED);
    pub const EHOSTUNREACH: Errno = Errno(wire::VIRTIO_TLS_EHOSTUNREACH);
    pub const EALREADY: Errno = Errno(wire::VIRTIO_TLS_EALREADY);

    /// The errno of an I/O error from the host's network stack. On Linux the
    /// numbering is the wire's; anything without an OS code is ECONNRESET,
    /// the closest "the connection is gone" a socket user understands.
    pub fn from_io(error: &std::io::Error) -> Errno {
        match error.raw_os_error() {
            Some(code) if code > 0 => Errno(code as u32),
            _ => match error.kind() {
                std::io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
                std::io::ErrorKind::ConnectionRefused => Errno::ECONNREFUSED,
                _ => Errno::ECONNRESET,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EINVAL => "EINVAL",
            Errno::EMFILE => "EMFILE",
            Errno::EPIPE => "EPIPE",
            Errno::EPROTO => "EPROTO",
            Errno::ENOPROTOOPT => "ENOPROTOOPT",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::EAFNOSUPPORT => "EAFNOSUPPORT",
            Errno::EADDRINUSE => "EADDRINUSE",
            Errno::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            Errno::ENETUNREACH => "ENETUNREACH",
            Errno::ECONNRESET => "ECONNRESET",
            Errno::ENOBUFS => "ENOBUFS",
            Errno::EISCONN => "EISCONN",
            Errno::ENOTCONN => "ENOTCONN",
            Errno::ETIMEDOUT => "ETIMEDOUT",
            Errno::ECONNREFUSED => "ECONNREFUSED",
            Errno::EHOSTUNREACH => "EHOSTUNREACH",
            Errno::EALREADY => "EALREADY",
            _ => "errno",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A failure with an errno for the caller and a reason for `TLS_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub errno: Errno,
    pub reason: String,
}

impl Failure {
    pub fn new(errno: Errno, reason: impl Into<String>) -> Failure {
        Failure { errno, reason: reason.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.errno, self.reason)
    }
}

impl std::error::Error for Failure {}
