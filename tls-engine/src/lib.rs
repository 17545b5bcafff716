//! The TLS and policy engine of vhost-tls.
//!
//! Everything that decides *what* TLS a socket gets lives here, so that the
//! vhost-user backend and the user-space IPPROTO_TLS library behave the
//! same: the operator's [`policy::Policy`], the per-socket options a program
//! may set ([`options::SocketOptions`], which can only tighten the policy),
//! destination checks ([`destination`]), rustls configuration and the mapping
//! of failures to errno values and readable `TLS_ERROR` reasons ([`tls`]).
//! Transport I/O (sockets, event loops) belongs to the callers.

pub mod destination;
pub mod errno;
pub mod getopt;
pub mod limits;
pub mod options;
pub mod policy;
pub mod sockopt;
pub mod tls;

pub use errno::Errno;
pub use policy::{Policy, TlsVersion};
