//! libipprototls: the Secure Socket API (`socket(AF_INET, SOCK_STREAM,
//! IPPROTO_TLS)`) in user space, for programs that load it with
//! `LD_PRELOAD` or link it with `-lipprototls`.
//!
//! It answers the same calls the vhost-tls guest driver answers, with the
//! same engine: the policy file format, option handling, destination
//! checks, rustls configuration and error mapping all come from
//! [`tls_engine`]. The program's descriptor is a real kernel TCP socket; the
//! library keeps the TLS state for it and interposes the calls that touch
//! the stream (`read`, `send`, `poll`, ...). Descriptors that are not
//! IPPROTO_TLS sockets pass straight through. See README.md.

mod config;
mod conn;
mod exports;
mod io;
mod readiness;
mod real;
mod server;
mod sockaddr;
mod sockopt;
mod table;

pub use config::{POLICY_ENV, SYSTEM_POLICY};
